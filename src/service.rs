//! The protocol core: one datagram in, at most one datagram out.
//!
//! [`Service::handle`] is sans-IO in the quinn-proto sense: it gets the
//! datagram, the peer as a plain value and the time as a number, writes any
//! reply into the caller's buffer and returns an [`Action`] saying what to
//! do with it and what happened. It never touches a socket, a clock, a file
//! or the logger, so every case of PROTOCOL.md §2 and §3 is a unit test.
//!
//! Its only state is bounded, each table by `Limits`: the per-peer table
//! (the image and OFFSET its last transfer started with, for clients that
//! send the payload only with block 0; the record of its last continuation
//! request and of recent requests that started a transfer, for duplicates,
//! below; the Message ID of its next NON reply), the optional per-address
//! rate limiter, and the Echo key.
//!
//! Every body a request can get (the whole image, or the image from an
//! OFFSET) has its own ETag, and a block always holds the bytes its ETag
//! names at its position: per-peer state only guesses which body a
//! payload-less block continues, and a wrong guess is visible to the
//! client (see `Ctx::image`).
//! State changes are applied only when the reply is actually sent, so an
//! unverified request answered with an Echo challenge changes nothing.
//!
//! Duplicate Confirmable requests (RFC 7252 §4.5) are answered by
//! deterministic regeneration rather than a cache of replies: the catalog
//! is immutable and a reply is a pure function of the request bytes and the
//! continuation state it was resolved from. A duplicate of a request that
//! started a transfer is recognised (peer, Message ID, fingerprint of its
//! bytes) and does not reset the transfer the peer started since; a
//! duplicate of the peer's last continuation is answered from the state its
//! first copy used. That costs a few dozen bytes per peer, where a cache of
//! 1 KiB replies would cost a kilobyte per device of a fleet. Exceptions:
//! with `--rate-limit` a duplicate counts as a request (and may get 4.29),
//! and with `--echo` it is checked again (Echo values stay valid for one
//! to two minutes, longer than a client retransmits).

use crate::catalog::{fnv1a32, Catalog, Image};
use crate::firmware::{self, DeviceRequest};
use crate::table::BoundedTable;
use crate::wire::{self, Block, BlockError, Emitter, Message, ParseError};
use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, RequestType, ResponseType};
use core::fmt::{self, Write as _};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// RFC 7252 §4.8.2 EXCHANGE_LIFETIME: how long a legacy continuation is
/// remembered for a peer.
pub const EXCHANGE_LIFETIME_MS: u64 = 247_000;
/// Largest request the server accepts; a longer one gets 4.13. Device
/// payloads are at most 265 bytes, so this leaves room for options.
pub const MAX_REQUEST_LEN: usize = 1152;
/// Room a reply needs: header, token, options, a 1024-byte block.
pub const MAX_REPLY_LEN: usize = 1152;
/// Longest diagnostic payload of an error reply (RFC 7252 §5.5.2).
const DIAGNOSTIC_MAX: usize = 120;
/// Echo values are valid for this window and the one before it.
const ECHO_WINDOW_MS: u64 = 60_000;
/// Length of the Echo values this server makes.
const ECHO_LEN: usize = 8;
/// RFC 9175 §2.4: an unverified peer gets at most 3 times its request.
const AMPLIFICATION_FACTOR: usize = 3;

/// Configuration of [`Service`], fixed at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest Block2 size the server sends, 16..=1024, a power of two.
    pub max_block_size: usize,
    /// Peers whose transfer state is remembered (`--peers`): the image and
    /// OFFSET of their last transfer for payload-less continuations
    /// (PROTOCOL §2.1), and what recognises their late duplicates.
    pub continuation_capacity: usize,
    /// `Some(n)`: at most `n` requests a second per peer address (4.29).
    pub rate_limit: Option<u32>,
    /// Addresses the rate limiter tracks.
    pub rate_table_capacity: usize,
    /// Answer unverified peers whose reply would be more than 3 times their
    /// request with a 4.01 Echo challenge (RFC 9175 §2.4).
    pub echo: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_block_size: 1024,
            continuation_capacity: 4096,
            rate_limit: None,
            rate_table_capacity: 4096,
            echo: false,
        }
    }
}

/// A peer as a hashable value: IPv4 addresses as IPv4-mapped IPv6, so the
/// service needs nothing from `std::net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// IPv6 address bytes (or `::ffff:a.b.c.d`).
    pub ip: [u8; 16],
    /// UDP port.
    pub port: u16,
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
    /// Another 2.05: a lookup answer or the discovery listing.
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
    /// True through the legacy `/updates` protocol.
    pub legacy: bool,
}

impl Transfer<'_> {
    /// The first block of the body.
    pub fn is_first(&self) -> bool {
        self.block.num == 0
    }
    /// The last block of the body.
    pub fn is_last(&self) -> bool {
        !self.block.more
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
    /// The reply did not fit the output buffer (a bug, never expected).
    Overflow,
}

/// Per-peer state of a legacy transfer, for payload-less continuations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Continuation {
    image_id: [u8; 8],
    offset: u32,
}

/// A peer's last served continuation request: its Message ID, a
/// fingerprint of its bytes (so that a new request that merely reuses the
/// Message ID, as a rebooted device restarting its counter does, is not
/// taken for a duplicate) and the transfer state it was answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exchange {
    mid: u16,
    fingerprint: u32,
    entry: Continuation,
}

/// Everything remembered about one peer, in one table entry so that a
/// request costs at most one lookup and one update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PeerState {
    /// The image and OFFSET the peer's last transfer started with.
    transfer: Option<Continuation>,
    /// The peer's last payload-less continuation request.
    last_continuation: Option<Exchange>,
    /// The peer's two latest Confirmable requests that started a transfer
    /// (Message ID, fingerprint), newest first: a late duplicate of one is
    /// answered again without resetting a transfer started since.
    starts: [Option<(u16, u32)>; 2],
    /// The Message ID of the next NON reply to this peer (RFC 7252 §4.4).
    next_mid: Option<u16>,
}

/// State changes a request asks for, applied only once its reply is
/// actually sent: an unverified request answered with an Echo challenge
/// changes nothing.
#[derive(Debug, Clone, Copy, Default)]
struct Writes {
    /// The peer's new state (stored, and restamped).
    state: Option<PeerState>,
}

/// Requests counted in the current one-second window of an address.
#[derive(Debug, Clone, Copy)]
struct RateWindow {
    second: u64,
    count: u32,
}

/// The protocol core with its bounded state; see the module docs.
#[derive(Debug)]
pub struct Service {
    catalog: Catalog,
    limits: Limits,
    server_szx: u8,
    peers: BoundedTable<Peer, PeerState>,
    rate: BoundedTable<[u8; 16], RateWindow>,
    echo_key: RandomState,
}

/// Where the OFFSET of a `/updates/{id}` request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// `?offset=N` (and maybe an agreeing payload).
    Query(u32),
    /// A 4-byte OFFSET payload.
    Payload(u32),
    /// Neither: block 0 of the whole image, or a continuation.
    Neither,
}

/// Where a request is going.
enum Route<'a> {
    Updates,
    Image(&'a [u8]),
    Discovery,
}

/// The answer chosen for a request before it is written.
type Reply<'c> = Result<(usize, Outcome<'c>), Failure>;

/// Why a request cannot be served as asked: one variant per reply that
/// is not a 2.05 or a block.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Error(ResponseType, Diagnostic),
    NoUpdate,
    Ignore(Dropped),
    Overflow,
}

/// Diagnostic payloads, formatted only when an error is sent.
#[derive(Debug, Clone, Copy)]
enum Diagnostic {
    Text(&'static str),
    Payload(firmware::PayloadError),
    Query(firmware::QueryError),
    Critical(u16),
    TooLarge(usize),
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnostic::Text(text) => f.write_str(text),
            Diagnostic::Payload(e) => e.fmt(f),
            Diagnostic::Query(e) => e.fmt(f),
            Diagnostic::Critical(n) => write!(f, "unrecognized critical option {n}"),
            Diagnostic::TooLarge(max) => write!(f, "request larger than {max} bytes"),
        }
    }
}

fn error(code: ResponseType, text: &'static str) -> Failure {
    Failure::Error(code, Diagnostic::Text(text))
}

impl From<wire::EmitError> for Failure {
    fn from(_: wire::EmitError) -> Self {
        Failure::Overflow
    }
}

impl Service {
    /// A service over `catalog`.
    ///
    /// # Panics
    /// When `limits.max_block_size` is not a power of two in 16..=1024:
    /// `main` validates it first.
    pub fn new(catalog: Catalog, limits: Limits) -> Service {
        let server_szx = Block::szx_for_size(limits.max_block_size)
            .expect("max_block_size is a power of two in 16..=1024");
        Service {
            catalog,
            limits,
            server_szx,
            peers: BoundedTable::new(limits.continuation_capacity, EXCHANGE_LIFETIME_MS),
            rate: BoundedTable::new(limits.rate_table_capacity, 1000),
            echo_key: RandomState::new(),
        }
    }

    /// The catalog served.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Peers with remembered transfer state (bounded by
    /// [`Limits::continuation_capacity`]).
    pub fn continuation_count(&self) -> usize {
        self.peers.len()
    }

    /// Addresses tracked by the rate limiter (bounded by
    /// [`Limits::rate_table_capacity`]).
    pub fn rate_table_len(&self) -> usize {
        self.rate.len()
    }

    /// Handles one datagram from `peer` received at `now_ms` (any monotonic
    /// millisecond clock). A datagram longer than [`MAX_REQUEST_LEN`] is
    /// taken as truncated and answered 4.13. `out` should hold
    /// [`MAX_REPLY_LEN`] bytes.
    pub fn handle(
        &mut self,
        peer: Peer,
        now_ms: u64,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Action<'_> {
        if datagram.len() > MAX_REQUEST_LEN {
            return self.too_large(peer, now_ms, datagram, out);
        }
        let msg = match Message::parse(datagram) {
            Ok(msg) => msg,
            Err(ParseError::TooShort) => return Action::Drop(Dropped::TooShort),
            Err(ParseError::BadVersion(_)) => return Action::Drop(Dropped::BadVersion),
            Err(ParseError::Format { mtype, mid, .. }) => {
                return reject(mtype, mid, out, Dropped::Malformed)
            }
        };
        match (msg.mtype, msg.class()) {
            (MessageType::Acknowledgement | MessageType::Reset, _) => {
                return Action::Drop(Dropped::AckOrReset)
            }
            (MessageType::Confirmable, MessageClass::Empty) => {
                return reset(msg.mid, out, ResetReason::Ping)
            }
            (_, MessageClass::Request(_)) => {}
            // RFC 7252 §5.8: an unassigned method code (0.08..0.31) is
            // still a request, answered 4.05 rather than reset.
            (_, MessageClass::Reserved(code)) if code >> 5 == 0 => {}
            (mtype, _) => return reject(mtype, msg.mid, out, Dropped::NotARequest),
        }
        let reply_to = self.reply_to(peer, now_ms, msg.mtype, msg.mid, msg.token);
        if let Some(limited) = self.rate_limit(reply_to, peer, now_ms, datagram.len(), out) {
            return limited;
        }
        let Service {
            ref catalog,
            ref limits,
            server_szx,
            ref mut peers,
            ref echo_key,
            ..
        } = *self;
        let mut ctx = Ctx {
            catalog,
            server_szx,
            peers: &*peers,
            writes: Writes::default(),
            peer,
            datagram,
            now_ms,
            msg: &msg,
            reply_to,
        };
        let reply = ctx.route(out);
        let (len, outcome) = match reply {
            Ok(done) => done,
            Err(Failure::NoUpdate) => return reset(msg.mid, out, ResetReason::NoUpdate),
            Err(Failure::Ignore(reason)) => return Action::Drop(reason),
            Err(Failure::Error(code, diagnostic)) => match ctx.error(code, diagnostic, out) {
                Ok(len) => (len, Outcome::Error(code)),
                Err(_) => return Action::Drop(Dropped::Overflow),
            },
            Err(Failure::Overflow) => return Action::Drop(Dropped::Overflow),
        };
        if limits.echo && len > AMPLIFICATION_FACTOR.saturating_mul(datagram.len()) {
            let verified = msg
                .echo
                .is_some_and(|echo| echo_is_valid(echo_key, &peer, now_ms, echo));
            if !verified {
                return echo_challenge(echo_key, reply_to, &peer, now_ms, datagram.len(), out);
            }
        }
        let writes = ctx.writes;
        if let Some(state) = writes.state {
            peers.insert(peer, state, now_ms);
        }
        Action::Reply { len, outcome }
    }

    /// Counts the request against its address; `Some` when it is over the
    /// limit and must be answered 4.29 or dropped.
    fn rate_limit(
        &mut self,
        reply_to: ReplyTo<'_>,
        peer: Peer,
        now_ms: u64,
        request_len: usize,
        out: &mut [u8],
    ) -> Option<Action<'static>> {
        let limit = self.limits.rate_limit?;
        let second = now_ms / 1000;
        let over = match self.rate.get_mut(&peer.ip, now_ms) {
            Some(window) if window.second == second => {
                window.count = window.count.saturating_add(1);
                window.count > limit
            }
            // A new second: a fresh window, stamped now, so that the entry
            // cannot expire (and its count restart) before the second ends.
            _ => {
                self.rate
                    .insert(peer.ip, RateWindow { second, count: 1 }, now_ms);
                false
            }
        };
        if !over {
            return None;
        }
        let written = reply_to
            .emitter(ResponseType::TooManyRequests, out)
            .and_then(|mut e| {
                e.option_uint(CoapOption::MaxAge.into(), 1)?;
                Ok(e.finish())
            });
        // A 4.29 larger than the request would amplify a spoofed flood.
        Some(bounded(
            written,
            request_len,
            Outcome::RateLimited,
            Dropped::RateLimited,
        ))
    }

    /// Where a reply to a request of type `mtype` goes: a piggybacked ACK
    /// with the request's Message ID for a CON, else a NON with a fresh one.
    fn reply_to<'m>(
        &mut self,
        peer: Peer,
        now_ms: u64,
        mtype: MessageType,
        mid: u16,
        token: &'m [u8],
    ) -> ReplyTo<'m> {
        match mtype {
            MessageType::Confirmable => ReplyTo {
                mtype: MessageType::Acknowledgement,
                mid,
                token,
            },
            _ => ReplyTo {
                mtype: MessageType::NonConfirmable,
                mid: self.next_non_mid(peer, now_ms),
                token,
            },
        }
    }

    /// The Message ID of a NON reply to `peer`: RFC 7252 §4.4 forbids
    /// reusing one with the same endpoint within EXCHANGE_LIFETIME. Each
    /// peer counts up from a keyed-random start kept in its table entry,
    /// so traffic from other endpoints never moves it and a restart (new
    /// key) starts elsewhere. Drawn when the reply is written, whether or
    /// not it is then sent: skipping an ID is harmless.
    ///
    /// Residual risk: when the entry is gone (the server restarted, or more
    /// than `--peers` endpoints were active within EXCHANGE_LIFETIME and
    /// this one was evicted) the peer gets a new random start, which meets
    /// one of the `k` IDs it was sent in the last 247 s with a chance of
    /// about `k / 65536`.
    fn next_non_mid(&mut self, peer: Peer, now_ms: u64) -> u16 {
        let mut state = self.peers.get(&peer, now_ms).copied().unwrap_or_default();
        let mid = state.next_mid.unwrap_or_else(|| {
            let mut hasher = self.echo_key.build_hasher();
            hasher.write(b"non-mid");
            hasher.write(&peer.ip);
            hasher.write_u16(peer.port);
            hasher.write_u64(now_ms);
            hasher.finish() as u16
        });
        state.next_mid = Some(mid.wrapping_add(1));
        self.peers.insert(peer, state, now_ms);
        mid
    }

    /// 4.13 for a datagram longer than [`MAX_REQUEST_LEN`], when its header
    /// and token can be read and it is a request.
    fn too_large<'c>(
        &mut self,
        peer: Peer,
        now_ms: u64,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Action<'c> {
        let header = match wire::Header::parse(datagram) {
            Ok((header, _)) => header,
            Err(ParseError::TooShort) => return Action::Drop(Dropped::TooShort),
            Err(ParseError::BadVersion(_)) => return Action::Drop(Dropped::BadVersion),
            Err(ParseError::Format {
                mtype: MessageType::Acknowledgement | MessageType::Reset,
                ..
            }) => return Action::Drop(Dropped::AckOrReset),
            Err(ParseError::Format { .. }) => return Action::Drop(Dropped::Malformed),
        };
        match header.mtype {
            MessageType::Acknowledgement | MessageType::Reset => {
                return Action::Drop(Dropped::AckOrReset)
            }
            _ if !header.is_request() => return Action::Drop(Dropped::Malformed),
            _ => {}
        }
        let code = ResponseType::RequestEntityTooLarge;
        let written = self
            .reply_to(peer, now_ms, header.mtype, header.mid, header.token)
            .emitter(code, out)
            .and_then(|mut e| {
                e.option_uint(CoapOption::Size1.into(), MAX_REQUEST_LEN as u32)?;
                write_diagnostic(e, Diagnostic::TooLarge(MAX_REQUEST_LEN))
            });
        match written {
            Ok(len) => Action::Reply {
                len,
                outcome: Outcome::Error(code),
            },
            Err(_) => Action::Drop(Dropped::Overflow),
        }
    }
}

/// The type, Message ID and token a reply carries.
#[derive(Debug, Clone, Copy)]
struct ReplyTo<'m> {
    mtype: MessageType,
    mid: u16,
    token: &'m [u8],
}

impl ReplyTo<'_> {
    /// An emitter for a reply with `code`.
    fn emitter<'o>(
        &self,
        code: ResponseType,
        out: &'o mut [u8],
    ) -> Result<Emitter<'o>, wire::EmitError> {
        Emitter::new(
            out,
            self.mtype,
            MessageClass::Response(code),
            self.mid,
            self.token,
        )
    }
}

/// A reply sent only when it is at most `max_len` bytes: the Echo
/// challenge and the 4.29 must not amplify what they answer.
fn bounded<'c>(
    written: Result<usize, wire::EmitError>,
    max_len: usize,
    outcome: Outcome<'c>,
    too_big: Dropped,
) -> Action<'c> {
    match written {
        Ok(len) if len <= max_len => Action::Reply { len, outcome },
        Ok(_) => Action::Drop(too_big),
        Err(_) => Action::Drop(Dropped::Overflow),
    }
}

/// Ends an error reply with its diagnostic text (RFC 7252 §5.5.2), cut at
/// [`DIAGNOSTIC_MAX`] bytes.
fn write_diagnostic(e: Emitter<'_>, diagnostic: Diagnostic) -> Result<usize, wire::EmitError> {
    e.payload_with(DIAGNOSTIC_MAX, |room| {
        let mut writer = SliceWriter { buf: room, len: 0 };
        // A diagnostic cut short at DIAGNOSTIC_MAX is still useful.
        let _ = write!(writer, "{diagnostic}");
        writer.len
    })
}

/// The Echo value for `peer` in the window `window`: a keyed SipHash
/// (std's RandomState, keyed at start-up) of the address and the
/// window number. Stateless: nothing is stored per challenged peer.
fn echo_value(key: &RandomState, peer: &Peer, window: u64) -> [u8; ECHO_LEN] {
    let mut hasher = key.build_hasher();
    hasher.write(&peer.ip);
    hasher.write_u64(window);
    hasher.finish().to_be_bytes()
}

fn echo_is_valid(key: &RandomState, peer: &Peer, now_ms: u64, echo: &[u8]) -> bool {
    let window = now_ms / ECHO_WINDOW_MS;
    echo == echo_value(key, peer, window)
        || (window > 0 && echo == echo_value(key, peer, window - 1))
}

fn echo_challenge(
    key: &RandomState,
    reply_to: ReplyTo<'_>,
    peer: &Peer,
    now_ms: u64,
    request_len: usize,
    out: &mut [u8],
) -> Action<'static> {
    let echo = echo_value(key, peer, now_ms / ECHO_WINDOW_MS);
    let written = reply_to
        .emitter(ResponseType::Unauthorized, out)
        .and_then(|mut e| {
            e.option(wire::OPTION_ECHO, &echo)?;
            Ok(e.finish())
        });
    // The challenge must not amplify either: a request too small to carry
    // a path is not worth one.
    bounded(
        written,
        AMPLIFICATION_FACTOR.saturating_mul(request_len),
        Outcome::EchoChallenge,
        Dropped::Unverified,
    )
}

/// One request being answered: what `route` and its helpers need.
struct Ctx<'s, 't, 'm> {
    catalog: &'s Catalog,
    server_szx: u8,
    peers: &'t BoundedTable<Peer, PeerState>,
    writes: Writes,
    peer: Peer,
    datagram: &'m [u8],
    now_ms: u64,
    msg: &'m Message<'m>,
    reply_to: ReplyTo<'m>,
}

impl<'s> Ctx<'s, '_, '_> {
    fn route(&mut self, out: &mut [u8]) -> Reply<'s> {
        // RFC 7252 §5.10.2: an endpoint that is no forward-proxy answers
        // 5.05, whatever else the request carries.
        if self.msg.proxy {
            return Err(error(
                ResponseType::ProxyingNotSupported,
                "this server is not a proxy",
            ));
        }
        if let (Some(_), MessageType::NonConfirmable) =
            (self.msg.unrecognized_critical, self.msg.mtype)
        {
            return Err(Failure::Ignore(Dropped::BadOptionNon));
        }
        if let Some(option) = self.msg.unrecognized_critical {
            return Err(Failure::Error(
                ResponseType::BadOption,
                Diagnostic::Critical(option),
            ));
        }
        let route = match self.msg.path.as_slice() {
            _ if self.msg.path.overflowed() => None,
            [b"updates"] => Some(Route::Updates),
            [b"updates", id] => Some(Route::Image(id)),
            [b".well-known", b"core"] => Some(Route::Discovery),
            _ => None,
        };
        let Some(route) = route else {
            return Err(error(ResponseType::NotFound, "no such resource"));
        };
        if self.msg.class() != MessageClass::Request(RequestType::Get) {
            return Err(error(ResponseType::MethodNotAllowed, "only GET is allowed"));
        }
        match route {
            Route::Updates => self.updates(out),
            Route::Image(id) => self.image(id, out),
            Route::Discovery => self.discovery(out),
        }
    }

    /// `GET /updates`: the three forms of PROTOCOL §2.1.
    fn updates(&mut self, out: &mut [u8]) -> Reply<'s> {
        let msg = self.msg;
        if !msg.payload.is_empty() {
            let request = firmware::parse_payload(msg.payload)
                .map_err(|e| Failure::Error(ResponseType::BadRequest, Diagnostic::Payload(e)))?;
            return match request.offset {
                None => self.lookup(&request, out),
                Some(offset) => self.legacy(&request, offset, out),
            };
        }
        if !msg.query.is_empty() {
            if msg.query.overflowed() {
                return Err(error(ResponseType::BadRequest, "too many query options"));
            }
            let request = firmware::parse_query(msg.query.as_slice())
                .map_err(|e| Failure::Error(ResponseType::BadRequest, Diagnostic::Query(e)))?;
            return self.lookup(&request, out);
        }
        let continued = matches!(msg.block2, Some(Ok(block)) if block.num > 0);
        if !continued {
            return Err(error(
                ResponseType::BadRequest,
                "GET /updates needs a device payload or ?pid=&type=&version=",
            ));
        }
        let entry = self.continued(None).ok_or(error(
            ResponseType::BadRequest,
            "no transfer in progress for this peer: send the device payload",
        ))?;
        let image = self.catalog.by_id_hex(&entry.image_id).ok_or(error(
            ResponseType::NotFound,
            "the image of this transfer is gone",
        ))?;
        self.body(image, entry.offset, true, out)
    }

    /// The transfer a payload-less request with Block2 NUM > 0 continues,
    /// if the peer has one (of the image `image_id`, when given), and the
    /// writes that keep it: a duplicate of the peer's last continuation is
    /// answered from the state its first copy was, not from a transfer the
    /// peer started since; the entry is restamped, so it expires
    /// EXCHANGE_LIFETIME after the peer's last block, not its first.
    fn continued(&mut self, image_id: Option<&[u8; 8]>) -> Option<Continuation> {
        let msg = self.msg;
        let mut state = self.peers.get(&self.peer, self.now_ms).copied()?;
        let confirmable = msg.mtype == MessageType::Confirmable;
        let fingerprint = fingerprint(self.datagram);
        let repeated = state
            .last_continuation
            .filter(|last| confirmable && last.mid == msg.mid && last.fingerprint == fingerprint)
            .map(|last| last.entry);
        let entry = repeated
            .or(state.transfer)
            .filter(|entry| image_id.map_or(true, |id| *id == entry.image_id))?;
        if confirmable {
            state.last_continuation = Some(Exchange {
                mid: msg.mid,
                fingerprint,
                entry,
            });
        }
        self.writes.state = Some(state);
        Some(entry)
    }

    /// Records a request that starts a transfer of `image` at `offset`,
    /// unless it is a late duplicate of one of the peer's recent starts.
    fn start(&mut self, image: &Image, offset: u32) {
        let mut state = self.pending_state().unwrap_or_default();
        let transfer = Continuation {
            image_id: image.id_hex,
            offset,
        };
        if state.transfer == Some(transfer) {
            // The transfer in force already (a device repeating its payload
            // on every block): nothing to record, and a late duplicate of
            // this request could only name it again.
            return;
        }
        let fingerprint = fingerprint(self.datagram);
        if self.msg.mtype == MessageType::Confirmable {
            let this = Some((self.msg.mid, fingerprint));
            if state.starts.contains(&this) {
                return;
            }
            state.starts = [this, state.starts[0]];
        }
        state.transfer = Some(transfer);
        self.writes.state = Some(state);
    }

    /// Lookup and query forms: the candidate's id as text/plain.
    fn lookup(&self, request: &DeviceRequest<'_>, out: &mut [u8]) -> Reply<'s> {
        let image = self
            .catalog
            .candidate(request.pid, request.fw_type, request.version)
            .ok_or(error(ResponseType::NotFound, "no newer image"))?;
        self.check_accept(ContentFormat::TextPlain)?;
        let mut e = self.emitter(ResponseType::Content, out)?;
        e.option_uint(
            CoapOption::ContentFormat.into(),
            content_format(ContentFormat::TextPlain),
        )?;
        Ok((e.payload(&image.id_hex)?, Outcome::Content))
    }

    /// The legacy one-request protocol: the body from OFFSET, and the
    /// peer remembered for payload-less continuations.
    fn legacy(&mut self, request: &DeviceRequest<'_>, offset: u32, out: &mut [u8]) -> Reply<'s> {
        let catalog = self.catalog;
        let image = catalog
            .candidate(request.pid, request.fw_type, request.version)
            .ok_or(Failure::NoUpdate)?;
        let reply = self.body(image, offset, true, out)?;
        // Every legacy request names its transfer: deployed devices repeat
        // it on every block, node-coap sends it with the first block it
        // asks for (which may be a resumed NUM > 0).
        self.start(image, offset);
        Ok(reply)
    }

    /// True when the request asks for a block after the first.
    fn continuing(&self) -> bool {
        matches!(self.msg.block2, Some(Ok(block)) if block.num > 0)
    }

    /// `GET /updates/{id}` with an optional 4-byte OFFSET payload or
    /// `?offset=N`.
    ///
    /// Which body (`image[OFFSET..]`) a request gets:
    /// - `?offset=N` is repeated by stock clients on every block: served
    ///   from what it carries, and it neither reads nor writes peer state;
    /// - an OFFSET payload is served from what it carries, and remembered
    ///   for the peer, because stock clients send it with block 0 only
    ///   (or with the first block of a resume) and not with later blocks;
    /// - a request with neither, for block 0, is a whole-image download
    ///   and makes the peer's remembered OFFSET of this image forgotten;
    /// - a request with neither, for a later block, continues the peer's
    ///   remembered OFFSET of this image, else the whole image.
    ///
    /// That last case is a guess: the peer's state may be lost (restart,
    /// eviction, a NAT rebinding the client's port) or belong to another
    /// download from the same endpoint. It is made safe by the invariant
    /// that every body carries its own ETag ([`Image::body_etag`]): the
    /// block sent holds exactly the bytes that its ETag names at its
    /// position, so a client checking ETags (RFC 7959 §2.4) sees a wrong
    /// guess and starts over, and none can splice two bodies under one
    /// tag. Once the last block of a remembered body was served, the body
    /// is forgotten, so a later plain download is not taken for it.
    fn image(&mut self, id: &[u8], out: &mut [u8]) -> Reply<'s> {
        if self.msg.query.overflowed() {
            return Err(error(ResponseType::BadRequest, "too many query options"));
        }
        let queried = firmware::parse_offset_query(self.msg.query.as_slice())
            .map_err(|e| Failure::Error(ResponseType::BadRequest, Diagnostic::Query(e)))?;
        let named = match (self.msg.payload, queried) {
            ([], None) => Named::Neither,
            ([], Some(q)) => Named::Query(q),
            (&[a, b, c, d], None) => Named::Payload(u32::from_le_bytes([a, b, c, d])),
            (&[a, b, c, d], Some(q)) if q == u32::from_le_bytes([a, b, c, d]) => Named::Query(q),
            (&[_, _, _, _], Some(_)) => {
                return Err(error(
                    ResponseType::BadRequest,
                    "OFFSET payload and ?offset= disagree",
                ))
            }
            _ => {
                return Err(error(
                    ResponseType::BadRequest,
                    "payload must be empty or a 4-byte little-endian OFFSET",
                ))
            }
        };
        let image = self
            .catalog
            .by_id_hex(id)
            .ok_or(error(ResponseType::NotFound, "no image with this id"))?;
        let continuing = self.continuing();
        let (offset, remembered) = match named {
            Named::Query(offset) | Named::Payload(offset) => (offset, false),
            Named::Neither if continuing => match self.continued(Some(&image.id_hex)) {
                Some(entry) => (entry.offset, true),
                None => (0, false),
            },
            Named::Neither => (0, false),
        };
        let reply = self.body(image, offset, false, out)?;
        let last = matches!(reply.1, Outcome::Block(t) if t.is_last());
        let payload = matches!(named, Named::Payload(_));
        if last && (payload || remembered) {
            self.forget(image, Some(offset));
        } else if payload {
            self.start(image, offset);
        } else if named == Named::Neither && !continuing {
            self.forget(image, None);
        }
        Ok(reply)
    }

    /// The peer's state as this request has changed it so far.
    fn pending_state(&self) -> Option<PeerState> {
        self.writes
            .state
            .or_else(|| self.peers.get(&self.peer, self.now_ms).copied())
    }

    /// Forgets the peer's remembered transfer when it is of `image` (and
    /// starts at `offset`, when given); keeps the duplicate records.
    fn forget(&mut self, image: &Image, offset: Option<u32>) {
        let Some(mut state) = self.pending_state() else {
            return;
        };
        let Some(transfer) = state.transfer else {
            return;
        };
        if transfer.image_id == image.id_hex && offset.map_or(true, |o| o == transfer.offset) {
            state.transfer = None;
            self.writes.state = Some(state);
        }
    }

    /// One Block2 block of `image[offset..]`.
    fn body(&self, image: &'s Image, offset: u32, legacy: bool, out: &mut [u8]) -> Reply<'s> {
        let body = image.bytes.get(offset as usize..).ok_or(error(
            ResponseType::BadRequest,
            "OFFSET is beyond the end of the image",
        ))?;
        self.check_accept(ContentFormat::ApplicationOctetStream)?;
        let (block, range) = self.block_for(body.len())?;
        let chunk = body.get(range).ok_or(Failure::Overflow)?;
        let len = self.emit_block(
            out,
            &image.body_etag(offset),
            ContentFormat::ApplicationOctetStream,
            block,
            body.len(),
            chunk,
        )?;
        let transfer = Transfer {
            image,
            offset,
            block,
            block_len: chunk.len(),
            legacy,
        };
        Ok((len, Outcome::Block(transfer)))
    }

    /// `GET /.well-known/core`, whole or filtered (RFC 6690 §4.1): the
    /// filtered body is never built; its blocks are copied link by link.
    fn discovery(&self, out: &mut [u8]) -> Reply<'s> {
        // Filters past the kept ones would be silently dropped, and the
        // listing would be wider than asked: refuse instead.
        if self.msg.query.overflowed() {
            return Err(error(ResponseType::BadRequest, "too many query options"));
        }
        let links = self.catalog.core_links();
        let query = self.msg.query.as_slice();
        let selected = |link: &&crate::catalog::CoreLink| query.iter().all(|q| link.matches(q));
        let total = links
            .iter()
            .filter(selected)
            .enumerate()
            .map(|(i, link)| link.text.len() + usize::from(i > 0))
            .sum::<usize>();
        self.check_accept(ContentFormat::ApplicationLinkFormat)?;
        let (block, range) = self.block_for(total)?;
        let etag = self.catalog.core_etag();
        let mut e = self.emitter(ResponseType::Content, out)?;
        block_options(
            &mut e,
            &etag,
            ContentFormat::ApplicationLinkFormat,
            block,
            total,
            self.msg.size2.is_some(),
        )?;
        let len = e.payload_with(range.len(), |room| {
            let mut position = 0usize;
            let mut written = 0usize;
            for (i, link) in links.iter().filter(selected).enumerate() {
                let separator: &[u8] = if i > 0 { b"," } else { b"" };
                for part in [separator, &link.text[..]] {
                    written += copy_overlap(part, position, &range, room, written);
                    position += part.len();
                }
                if position >= range.end {
                    break;
                }
            }
            written
        })?;
        Ok((len, Outcome::Content))
    }

    /// RFC 7252 §5.10.4: an Accept the resource cannot meet is 4.06.
    fn check_accept(&self, format: ContentFormat) -> Result<(), Failure> {
        match self.msg.accept {
            Some(accept) if u32::from(accept) != content_format(format) => Err(error(
                ResponseType::NotAcceptable,
                "Accept does not match the resource's format",
            )),
            _ => Ok(()),
        }
    }

    /// The block to send of a body of `body_len` bytes and its byte range,
    /// after SZX negotiation (PROTOCOL §2.4).
    fn block_for(&self, body_len: usize) -> Result<(Block, core::ops::Range<usize>), Failure> {
        let requested = match self.msg.block2 {
            None => Block {
                num: 0,
                more: false,
                szx: self.server_szx,
            },
            Some(Ok(block)) => block,
            Some(Err(BlockError::ReservedSzx)) => {
                return Err(error(ResponseType::BadRequest, "Block2 SZX 7 is reserved"))
            }
            Some(Err(BlockError::TooLong)) => {
                return Err(error(
                    ResponseType::BadOption,
                    "Block2 value longer than 3 bytes",
                ))
            }
        };
        // The byte position the client asked for, kept when the server
        // answers with smaller blocks (RFC 7959 §2.4).
        let start = requested.position();
        let past_end = start >= body_len as u64 && !(start == 0 && body_len == 0);
        let Some(mut block) =
            Block::at(start, requested.szx.min(self.server_szx)).filter(|_| !past_end)
        else {
            return Err(error(
                ResponseType::BadOption,
                "Block2 NUM is past the end of the body",
            ));
        };
        let end = start
            .saturating_add(block.size() as u64)
            .min(body_len as u64);
        block.more = end < body_len as u64;
        Ok((block, start as usize..end as usize))
    }

    fn emitter<'o>(&self, code: ResponseType, out: &'o mut [u8]) -> Result<Emitter<'o>, Failure> {
        Ok(self.reply_to.emitter(code, out)?)
    }

    fn emit_block(
        &self,
        out: &mut [u8],
        etag: &[u8; 8],
        format: ContentFormat,
        block: Block,
        body_len: usize,
        chunk: &[u8],
    ) -> Result<usize, Failure> {
        let mut e = self.emitter(ResponseType::Content, out)?;
        block_options(
            &mut e,
            etag,
            format,
            block,
            body_len,
            self.msg.size2.is_some(),
        )?;
        Ok(e.payload(chunk)?)
    }

    /// An error response with its diagnostic payload.
    fn error(
        &self,
        code: ResponseType,
        diagnostic: Diagnostic,
        out: &mut [u8],
    ) -> Result<usize, Failure> {
        Ok(write_diagnostic(self.emitter(code, out)?, diagnostic)?)
    }
}

/// Tells a duplicate from a new request that reuses its Message ID: 32
/// bits, so a per-peer record stays small; a false match needs the same
/// peer, Message ID and a 1 in 2^32 hash collision within 247 s.
fn fingerprint(datagram: &[u8]) -> u32 {
    fnv1a32(datagram)
}

/// ETag, Content-Format, Block2 and Size2 of a block response, in option
/// number order.
fn block_options(
    e: &mut Emitter<'_>,
    etag: &[u8; 8],
    format: ContentFormat,
    block: Block,
    body_len: usize,
    size2_asked: bool,
) -> Result<(), Failure> {
    e.option(CoapOption::ETag.into(), etag)?;
    e.option_uint(CoapOption::ContentFormat.into(), content_format(format))?;
    e.option_block(CoapOption::Block2.into(), block)?;
    if block.num == 0 || size2_asked {
        let size = u32::try_from(body_len).map_err(|_| Failure::Overflow)?;
        e.option_uint(CoapOption::Size2.into(), size)?;
    }
    Ok(())
}

/// Copies the part of `part` (at body position `position`) that falls in
/// `range` into `room` after `written` bytes; returns how many it copied.
fn copy_overlap(
    part: &[u8],
    position: usize,
    range: &core::ops::Range<usize>,
    room: &mut [u8],
    written: usize,
) -> usize {
    let from = range.start.max(position);
    let to = range.end.min(position + part.len());
    if from >= to {
        return 0;
    }
    let (Some(src), Some(dst)) = (
        part.get(from - position..to - position),
        room.get_mut(written..written + (to - from)),
    ) else {
        return 0;
    };
    dst.copy_from_slice(src);
    to - from
}

fn content_format(format: ContentFormat) -> u32 {
    usize::from(format) as u32
}

fn reset<'c>(mid: u16, out: &mut [u8], reason: ResetReason) -> Action<'c> {
    match wire::emit_empty(out, MessageType::Reset, mid) {
        Ok(len) => Action::Reply {
            len,
            outcome: Outcome::Reset(reason),
        },
        Err(_) => Action::Drop(Dropped::Overflow),
    }
}

/// RFC 7252 §4.2/§4.3: a Confirmable message that cannot be processed is
/// rejected with an RST; anything else is silently ignored.
fn reject<'c>(mtype: MessageType, mid: u16, out: &mut [u8], dropped: Dropped) -> Action<'c> {
    match mtype {
        MessageType::Confirmable => reset(mid, out, ResetReason::Rejected),
        _ => Action::Drop(dropped),
    }
}

/// `fmt::Write` into a byte slice, silently cut at its end.
struct SliceWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len().saturating_sub(self.len);
        let n = s.len().min(room);
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + n),
            s.as_bytes().get(..n),
        ) {
            dst.copy_from_slice(src);
            self.len += n;
        }
        if n < s.len() {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
