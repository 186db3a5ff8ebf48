//! iot-ota-server: an over-the-air firmware update server for constrained
//! devices, speaking CoAP (RFC 7252) over UDP with block-wise transfer
//! (RFC 7959). This library is the server core; the binaries
//! `iot-ota-server` (options and logging) and `iot-ota-client` (device
//! emulator, operator tool, load generator) are built on it.
//!
//! # Architecture
//!
//! One process, one thread, one blocking loop. Data flows one way:
//!
//! ```text
//!  datagram + peer + destination   sockio::recv_with_dest (recvmsg, packet info)
//!   ─► wire::Message::parse        borrowed view over the receive buffer,
//!                                  every RFC 7252 §3 check in one pass
//!   ─► service::Service::handle_request
//!                                  pure: one `Request` (peer, arrival, now,
//!                                  datagram, coaps authorization) and the
//!                                  snapshot → Action, the reply written into
//!                                  the caller's buffer (tried first:
//!                                  `handle_block`, the fast path of a later
//!                                  block, same answers byte for byte)
//!   ─► server                      sends from the address the request was sent
//!                                  to; counters and log lines
//! ```
//!
//! With `--features dtls` a coaps socket feeds `dtls::Front` first:
//! records → decrypted datagrams for the same `service`, and the answers
//! encrypted back; it keeps the handshakes and sessions, bounded.
//!
//! The layers, lowest first; each uses only those above it in this list:
//!
//! | module | knows | never touches |
//! |---|---|---|
//! | [`hash`] | FNV ids and ETags, keyed hashes (keys from the caller) | randomness, I/O |
//! | [`wire`] | CoAP parse and emit, the Block option and its NUM↔byte math | sockets, files, clocks, log |
//! | [`firmware`] | device payloads, queries, the version/TYPE/PID grammar | sockets, files |
//! | [`snapshot`] | a file's stamp, settling, whole reads, the `Refresh` outcome that the catalog and the tree share | sockets, CoAP messages, log |
//! | [`catalog`] | a directory → an immutable set of images with O(1) indexes | sockets, CoAP messages |
//! | [`tree`] | a directory tree → an immutable set of files and listings | sockets, CoAP messages |
//! | [`fleet`] | rollout policies and eligibility, the device table (the bounded table of `service`, its one use of a lower layer), reports, the status view | sockets, files, clocks (time injected), log |
//! | [`service`] | routes, block slicing, per-peer state, rate limit, Echo, Observe; asks `fleet` per lookup and report | sockets, files, clocks, log, randomness |
//! | [`state`] | the fleet's journal under `--state-dir`: replay, append, compaction | sockets, CoAP |
//! | `dtls` (feature) | cookies, handshakes, sessions, what may reach an engine, keys, certificates and their check | sockets, files, clocks (time injected) |
//! | [`server`] | the socket loop, live reload of the watched sources, counters, log lines | CoAP encoding |
//!
//! # Where new things go
//!
//! * **A resource**: a route in `service/routes.rs`, with a unit test per
//!   case in `service/tests`.
//! * **A per-request decision** (authorization, eligibility): a field of
//!   `service::Request`, filled by the caller (as the coaps identity's
//!   `service::Authorization` is) and read by the route that needs it, not
//!   another argument down the layers.
//! * **A watched source** (a file reloaded while the server runs: a key
//!   file, a rollout policy): one `impl Source` in
//!   `server/live/sources.rs` and one entry in `Live::new`'s list; it
//!   builds an immutable snapshot with the pieces of [`snapshot`], and live
//!   reload decides when to rescan, logs and swaps it in.
//! * **An outcome**: one `service::Outcome` variant, one counter in
//!   `server::Stats`, one log line in `server`.
//! * **A limit on what the unauthenticated can make the server keep**: a
//!   bounded table with an eviction rule, a count in the front's or the
//!   service's counters, and a test that holds it under attack.
//!
//! The per-request path allocates nothing: buffers and bounded tables are
//! allocated before the first datagram. `wire`, `firmware`, `catalog` and
//! `service` never touch a socket, a clock or the logger, so every protocol
//! case is a unit test and a reproducible fuzz input. The crate's only
//! unsafe code is in two private modules: `sockio`, the `recvmsg`/`sendmsg`
//! calls that learn each request's destination address, which std cannot,
//! and `pages`, the `mmap` that holds a large image in whole pages of its
//! own, which the heap cannot.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod catalog;
#[cfg(feature = "dtls")]
pub mod dtls;
pub mod firmware;
pub mod fleet;
pub mod hash;
pub mod iface;
pub mod logfmt;
#[allow(unsafe_code)]
mod pages;
pub mod server;
pub mod service;
pub mod snapshot;
#[allow(unsafe_code)]
mod sockio;
pub mod state;
#[cfg(test)]
mod testkit;
pub mod tree;
pub mod wire;
