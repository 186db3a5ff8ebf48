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
//!   ─► service::Service::handle    pure: (peer, now, datagram, catalog) → Action,
//!                                  the reply written into the caller's buffer
//!                                  (tried first: `handle_block`, the fast path
//!                                  of a later block by id, same answers)
//!   ─► server                      sends from the address the request was sent
//!                                  to; counters and log lines
//! ```
//!
//! The layers, lowest first; each uses only those above it in this list:
//!
//! | module | knows | never touches |
//! |---|---|---|
//! | [`hash`] | FNV ids and ETags, keyed hashes (keys from the caller) | randomness, I/O |
//! | [`wire`] | CoAP parse and emit, the Block option and its NUM↔byte math | sockets, files, clocks, log |
//! | [`firmware`] | device payloads, queries, the version/TYPE/PID grammar | sockets, files |
//! | [`catalog`] | a directory → an immutable set of images with O(1) indexes | sockets, CoAP messages |
//! | [`tree`] | a directory tree → an immutable set of files and listings | sockets, CoAP messages |
//! | [`service`] | routes, block slicing, per-peer state, rate limit, Echo | sockets, files, clocks, log, randomness |
//! | [`server`] | the socket loop, counters, log lines | CoAP encoding |
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
pub mod hash;
pub mod iface;
pub mod logfmt;
#[allow(unsafe_code)]
mod pages;
pub mod server;
pub mod service;
#[allow(unsafe_code)]
mod sockio;
#[cfg(test)]
mod testkit;
pub mod tree;
pub mod wire;
