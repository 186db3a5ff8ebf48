//! The sans-IO client core shared by the client ([`crate::client`]) and the
//! load generator (`bench`, in builds with the `loadgen` feature), on
//! the library's [`iot_ota::wire`] codec:
//!
//! * [`uri`]: [`Target::parse`] and [`Resource::parse`] read the command
//!   line's SERVER and PATH (`host:port`, `[v6]:port`, `[v6%zone]:port`,
//!   `coap://host[:port]/path?q`), decomposing a URI into Uri-Path and
//!   Uri-Query options as RFC 7252 §6.4 says.
//! * [`retransmit`]: [`Retransmission`] is the RFC 7252 §4.2 schedule,
//!   [`XorShift`] the one random source of Message IDs, tokens and jitter,
//!   [`MessageIds`] the Message IDs of one endpoint.
//! * [`message`]: [`emit_get`] writes a request, [`match_reply`]
//!   classifies a datagram for an exchange (RFC 7252 §5.3.2), [`is_newer`]
//!   orders notifications (RFC 7641 §3.4).
//! * [`blockwise`]: [`BlockCursor`] is the block-wise state machine: which
//!   block to ask for next, following a server that answers with a smaller
//!   block size (RFC 7959 §2.4), and the checks that the body is one
//!   consistent representation (same ETag, expected NUM, full blocks,
//!   Size2).
//!
//! Nothing here touches a socket, a clock or the terminal; that is
//! [`crate::client`]'s and the load generator's work. Callers name the
//! items as `crate::coap::…`: the submodules are re-exported whole.

mod blockwise;
mod message;
mod retransmit;
mod uri;

pub(crate) use blockwise::*;
pub(crate) use message::*;
pub(crate) use retransmit::*;
pub(crate) use uri::*;

/// The test helpers of the socket loop's tests: answers from a server.
#[cfg(test)]
pub(crate) use message::tests::{answer, CONTENT};
