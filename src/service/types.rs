//! The service's values: its configuration and secrets, what a request
//! is and where it came from, and what the caller is told to do with it.

#[cfg(doc)]
use super::Service;
use crate::catalog::Image;
use crate::firmware;
use crate::hash::SipKey;
use crate::wire::{self, Block};
use coap_lite::ResponseType;
use core::fmt;

/// RFC 7252 §4.8.2 EXCHANGE_LIFETIME: how long per-peer state is kept
/// after the peer's last request that used it.
pub(crate) const EXCHANGE_LIFETIME_MS: u64 = 247_000;
/// Largest request the server accepts; a longer one gets 4.13. Device
/// payloads are at most [`firmware::MAX_PAYLOAD_LEN`] bytes, so this
/// leaves room for options.
pub const MAX_REQUEST_LEN: usize = 1152;
/// Room a reply needs: header, token, options, a 1024-byte block.
pub const MAX_REPLY_LEN: usize = 1152;
/// The code byte of a GET request (0.01).
pub(super) const GET_CODE: u8 = 0x01;
/// Longest diagnostic payload of an error reply (RFC 7252 §5.5.2).
pub(super) const DIAGNOSTIC_MAX: usize = 120;

/// The secrets of a [`Service`], drawn by the caller: `main` from the
/// operating system at every start, tests and fuzzers fixed, so that Echo
/// values, Message ID starts and table layouts are reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// The Echo MAC (RFC 9175): unforgeable without it.
    pub echo: SipKey,
    /// The random start of each peer's NON Message IDs.
    pub message_ids: SipKey,
    /// The hash of the per-peer tables, whose keys attackers choose.
    pub tables: [u64; 2],
}

impl Keys {
    /// Keys spread from 48 bytes of secret randomness.
    pub fn from_bytes(random: [u8; 48]) -> Keys {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            if let Some(src) = random.get(i * 8..i * 8 + 8) {
                w.copy_from_slice(src);
            }
            u64::from_le_bytes(w)
        };
        Keys {
            echo: SipKey([word(0), word(1)]),
            message_ids: SipKey([word(2), word(3)]),
            tables: [word(4), word(5)],
        }
    }
}

/// Configuration of [`Service`], fixed at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest Block2 size the server sends, 16..=1024, a power of two.
    pub max_block_size: usize,
    /// Peers whose state is remembered (`--peers`): the image and OFFSET
    /// of their last transfer for payload-less continuations, what
    /// recognises their late duplicates, their next NON Message ID.
    pub continuation_capacity: usize,
    /// `Some(n)`: at most `n` requests a second per peer address (4.29).
    pub rate_limit: Option<u32>,
    /// Addresses the rate limiter tracks.
    pub rate_table_capacity: usize,
    /// Answer unverified peers whose reply would be more than 3 times their
    /// request with a 4.01 Echo challenge (RFC 9175 §2.4).
    pub echo: bool,
    /// Observations kept at most (`--max-observers`; 0 turns Observe off):
    /// a new one in a full table ends the oldest.
    pub max_observers: usize,
    /// Devices the fleet remembers (`--devices`), about the least recently
    /// seen evicted.
    pub max_devices: usize,
    /// Sources allowed to read `/status` besides loopback and link-local
    /// addresses (`--status-from`).
    pub status_from: [Option<Prefix>; MAX_STATUS_FROM],
}

/// How many `--status-from` prefixes a server takes.
pub const MAX_STATUS_FROM: usize = 8;

/// An address prefix (IPv4 as IPv4-mapped IPv6, its length plus 96).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// The address.
    pub ip: [u8; 16],
    /// Leading bits that must match, 0..=128.
    pub len: u8,
}

impl Prefix {
    /// Whether `ip` is within the prefix.
    pub fn contains(&self, ip: &[u8; 16]) -> bool {
        let a = u128::from_be_bytes(self.ip);
        let b = u128::from_be_bytes(*ip);
        let mask = match self.len {
            0 => 0,
            n => u128::MAX << (128 - u32::from(n.min(128))),
        };
        a & mask == b & mask
    }
}

/// Whether `ip` is a loopback (`::1`, `127.0.0.0/8`) or link-local
/// (`fe80::/10`, `169.254.0.0/16`) address: the sources `/status` answers
/// without `--status-from`.
pub fn is_local_source(ip: &[u8; 16]) -> bool {
    let v6 = u128::from_be_bytes(*ip);
    let mapped = |bits: u32, prefix: u128| v6 >> (128 - bits) == prefix >> (128 - bits);
    v6 == 1
        || mapped(104, 0xffff_7f00_0000)
        || mapped(10, 0xfe80u128 << 112)
        || mapped(112, 0xffff_a9fe_0000)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_block_size: 1024,
            continuation_capacity: 4096,
            rate_limit: None,
            rate_table_capacity: 4096,
            echo: false,
            max_observers: 1024,
            max_devices: 10_000,
            status_from: [None; MAX_STATUS_FROM],
        }
    }
}

/// A peer as a hashable value: IPv4 addresses as IPv4-mapped IPv6, so the
/// service needs nothing from `std::net`. The zone is part of it: two
/// devices with the same link-local address on two interfaces (two 6LoWPAN
/// border routers, each with its own `fe80::2`) are two peers, with their
/// own transfers and observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// IPv6 address bytes (or `::ffff:a.b.c.d`).
    pub ip: [u8; 16],
    /// UDP port.
    pub port: u16,
    /// The IPv6 zone (scope id: the interface index) of a link-local
    /// address; 0 for any other address.
    pub scope: u32,
}

/// Whether a block of a file or an image came from an old version (see
/// [`Outcome::File`] and [`Transfer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// From the file or image as served now.
    No,
    /// From the version the peer's download began with, replaced since:
    /// the first such block of this download (worth a log line).
    First,
    /// As `First`, a later block.
    Again,
}

/// What the caller does with a datagram once handled.
#[derive(Debug, Clone, Copy)]
pub enum Action<'c> {
    /// Send `out[..len]` back to the peer.
    Reply {
        /// Length written into the caller's buffer.
        len: usize,
        /// What the reply is, for counters and log lines.
        outcome: Outcome<'c>,
    },
    /// Send nothing.
    Drop(Dropped),
}

/// What a reply is.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'c> {
    /// One block of a firmware body.
    Block(Transfer<'c>),
    /// One block of a file of the `--files` tree.
    File {
        /// The file (the version the block was cut from).
        file: &'c crate::tree::TreeFile,
        /// The block sent.
        block: Block,
        /// Whether the block came from an old version of the file, for a
        /// download that began before the file was replaced.
        held: Held,
    },
    /// Another 2.05: a lookup answer, the discovery listing or a block of
    /// a directory listing.
    Content,
    /// An error response; its code.
    Error(ResponseType),
    /// A 4.01 with an Echo option (RFC 9175).
    EchoChallenge,
    /// A 4.29 (RFC 8516).
    RateLimited,
    /// An RST; why.
    Reset(ResetReason),
}

/// Why an RST was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// An empty Confirmable message: a CoAP ping.
    Ping,
    /// The legacy protocol's "no update" signal.
    NoUpdate,
    /// A Confirmable message that could not be parsed or is not a request.
    Rejected,
}

/// One block of a firmware body on its way to a device.
#[derive(Debug, Clone, Copy)]
pub struct Transfer<'c> {
    /// The image.
    pub image: &'c Image,
    /// Where the body starts in the image.
    pub offset: u32,
    /// The block sent.
    pub block: Block,
    /// Bytes of the image in this block.
    pub block_len: usize,
    /// The request form that asked for it.
    pub via: Via,
    /// Whether the block came from an old version of the image, for a
    /// download that began before the image was replaced in place.
    pub held: Held,
}

impl Transfer<'_> {
    /// The first block of the body.
    pub(crate) fn is_first(&self) -> bool {
        self.block.num == 0
    }
    /// The last block of the body.
    pub(crate) fn is_last(&self) -> bool {
        !self.block.more
    }
}

/// Which request form a body is sent through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The reference server's one-request protocol, `GET /updates` with
    /// the device payload (or its payload-less continuation).
    Legacy,
    /// `GET /updates/{id}`.
    ById,
}

/// How a request arrived, beyond its sender: what the socket layer learns
/// from the datagram's destination. An observation keeps it, so that its
/// notifications leave from where the registration arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrival {
    /// It was sent to a multicast group (RFC 7252 §8).
    pub multicast: bool,
    /// The index of the interface it arrived on; 0 when unknown.
    pub ifindex: u32,
    /// Which of the caller's sockets it arrived on.
    pub socket: usize,
    /// The address it was sent to (IPv4 as IPv4-mapped IPv6), when known.
    pub local: Option<[u8; 16]>,
}

/// One datagram to handle, with everything the service is told about it:
/// who sent it, how it arrived, when, and (over a secure channel) what its
/// sender may fetch. Built once by the caller and passed by reference
/// through every layer that needs any of it, so that a new per-request
/// fact is one more field rather than one more argument everywhere.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The sender.
    pub peer: Peer,
    /// How it arrived: multicast or not, on which socket and interface.
    pub arrival: Arrival,
    /// When it arrived, on any monotonic millisecond clock.
    pub now_ms: u64,
    /// The datagram's bytes.
    pub datagram: &'a [u8],
    /// `Some` for a request that arrived over a secure channel (coaps):
    /// what its authenticated sender may fetch and read. `None` on plain
    /// CoAP.
    pub authorization: Option<&'a Authorization>,
    /// Over coaps, the sender's PSK identity: the device's name for the
    /// fleet when its lookup gives no `ep=`.
    pub identity: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// A unicast datagram on the plain socket from `peer` at `now_ms`.
    #[inline]
    pub fn new(peer: Peer, now_ms: u64, datagram: &'a [u8]) -> Request<'a> {
        Request {
            peer,
            arrival: Arrival::default(),
            now_ms,
            datagram,
            authorization: None,
            identity: None,
        }
    }

    /// The same request, from a sender authenticated as `identity`.
    #[inline]
    pub fn identified(self, identity: &'a [u8]) -> Request<'a> {
        Request {
            identity: Some(identity),
            ..self
        }
    }

    /// The same request, arrived as `arrival` says.
    #[inline]
    pub fn arrived(self, arrival: Arrival) -> Request<'a> {
        Request { arrival, ..self }
    }

    /// The same request, arrived over a secure channel from a peer
    /// authenticated as allowed to fetch (and read) what `authorization`
    /// says.
    #[inline]
    pub fn authorized(self, authorization: &'a Authorization) -> Request<'a> {
        Request {
            authorization: Some(authorization),
            ..self
        }
    }
}

/// A notification (RFC 7641) written by [`Service::poll_notification`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification {
    /// Length written into the caller's buffer.
    pub len: usize,
    /// The observer.
    pub peer: Peer,
    /// Where its registration arrived: the notification leaves from there.
    pub arrival: Arrival,
    /// A Confirmable message (a retransmission among them).
    pub confirmable: bool,
    /// The resource can no longer be observed (a file was removed): this
    /// error response ended the observation.
    pub last: bool,
    /// A notification of `/status`. Over coaps the caller sends it only
    /// while the observer's session has the status right
    /// ([`Authorization::reads_status`]): the key files may have taken it
    /// away since the registration.
    pub of_status: bool,
}

/// What an authenticated peer may do (a coaps identity's rights): fetch
/// images of its PIDs only (a request over the secure channel for an
/// image of another product gets 4.03 Forbidden), and read `/status`
/// only with the status right (`@status` in its key file's list), whatever
/// its address. Files of the `--files` tree and discovery are open to
/// every authenticated peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorization {
    /// `None`: images of every PID.
    pids: Option<Vec<Box<[u8]>>>,
    /// `/status` may be read.
    status: bool,
}

impl Authorization {
    /// Images of every product; not `/status`.
    pub fn any_pid() -> Authorization {
        Authorization {
            pids: None,
            status: false,
        }
    }

    /// Images of these products only; not `/status`.
    pub fn only_pids<I, P>(pids: I) -> Authorization
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        Authorization {
            pids: Some(pids.into_iter().map(|p| p.as_ref().into()).collect()),
            status: false,
        }
    }

    /// The same, and `/status` (with `?ep=`) may be read too: an
    /// operator's identity.
    pub fn with_status(self) -> Authorization {
        Authorization {
            status: true,
            ..self
        }
    }

    /// True when images of `pid` may be fetched.
    pub fn allows(&self, pid: &[u8]) -> bool {
        self.pids
            .as_ref()
            .map_or(true, |pids| pids.iter().any(|allowed| **allowed == *pid))
    }

    /// True when `/status` may be read.
    pub fn reads_status(&self) -> bool {
        self.status
    }
}

/// Why nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a header.
    TooShort,
    /// Version other than 1.
    BadVersion,
    /// A malformed message that is not Confirmable.
    Malformed,
    /// An ACK or RST from a client: nothing to answer.
    AckOrReset,
    /// A Non-confirmable message that is empty or not a request.
    NotARequest,
    /// A rate-limited request whose 4.29 would be larger than it.
    RateLimited,
    /// With `--echo`, an unverified request so small that even the 4.01
    /// challenge would be more than 3 times its size.
    Unverified,
    /// A Non-confirmable request with an unrecognized critical option:
    /// RFC 7252 §5.4.1 has it rejected, i.e. ignored (§4.3).
    BadOptionNon,
    /// A request sent to a multicast group that gets no answer: a
    /// Confirmable one, or one whose answer would be an error, an RST or
    /// empty (RFC 7252 §8).
    Multicast,
    /// The reply did not fit the output buffer (a bug, never expected).
    Overflow,
}

/// Why a request cannot be served as asked: one variant per reply that
/// is not a 2.05 or a block.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure {
    Error(ResponseType, Diagnostic),
    /// 5.03 with Max-Age: the image exists but is still being written.
    Unavailable {
        max_age: u32,
    },
    NoUpdate,
    Ignore(Dropped),
    Overflow,
}

/// Diagnostic payloads, formatted only when an error is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Diagnostic {
    Text(&'static str),
    Payload(firmware::PayloadError),
    Query(firmware::QueryError),
    Report(crate::fleet::report::ReportError),
    Critical(u16),
    TooLarge(usize),
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnostic::Text(text) => f.write_str(text),
            Diagnostic::Payload(e) => e.fmt(f),
            Diagnostic::Query(e) => e.fmt(f),
            Diagnostic::Report(e) => e.fmt(f),
            Diagnostic::Critical(n) => write!(f, "unrecognized critical option {n}"),
            Diagnostic::TooLarge(max) => write!(f, "request larger than {max} bytes"),
        }
    }
}

pub(crate) fn error(code: ResponseType, text: &'static str) -> Failure {
    Failure::Error(code, Diagnostic::Text(text))
}

impl From<wire::EmitError> for Failure {
    fn from(_: wire::EmitError) -> Self {
        Failure::Overflow
    }
}
