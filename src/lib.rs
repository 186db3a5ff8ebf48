//! iot-ota-server: an over-the-air firmware update server for constrained
//! devices, speaking CoAP (RFC 7252) over UDP with block-wise transfer
//! (RFC 7959).
//!
//! Data flows one way, one module per step:
//!
//! ```text
//!  datagram ─► wire::Message::parse   borrowed view, every RFC 7252 §3 check
//!           ─► service::Service::handle   pure: request, peer, now → Action
//!           ─► wire::Emitter          reply written into the caller's buffer
//!           ─► server                 socket, counters, log lines
//! ```
//!
//! `wire`, `firmware`, `catalog` and `service` never touch a socket, a clock
//! or the logger; only `server` and the binaries do. `sockio` holds the
//! crate's only unsafe code: the system calls behind `server`'s replies
//! from the address each request was sent to.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod catalog;
pub mod client;
pub mod firmware;
pub mod hash;
pub mod loadgen;
pub mod logfmt;
pub mod server;
pub mod service;
// recvmsg/sendmsg with packet information: the only unsafe code.
#[allow(unsafe_code)]
pub mod sockio;
#[cfg(test)]
mod testkit;
pub mod wire;
