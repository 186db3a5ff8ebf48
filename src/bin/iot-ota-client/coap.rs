//! The sans-IO client core shared by the client ([`crate::client`]) and the
//! load generator (`bench.rs`, in builds with the `loadgen` feature), on
//! the library's [`iot_ota::wire`] codec:
//!
//! * [`Target::parse`] and [`Resource::parse`] read the command line's
//!   SERVER and PATH (`host:port`, `[v6]:port`, `[v6%zone]:port`,
//!   `coap://host[:port]/path?q`), decomposing a URI into Uri-Path and
//!   Uri-Query options as RFC 7252 §6.4 says.
//! * [`Retransmission`] is the RFC 7252 §4.2 schedule, [`XorShift`] the one
//!   random source of Message IDs, tokens and jitter.
//! * [`emit_get`] writes a request, [`match_reply`] classifies a datagram
//!   for an exchange (RFC 7252 §5.3.2).
//! * [`BlockCursor`] is the block-wise state machine: which block to ask
//!   for next, following a server that answers with a smaller block size
//!   (RFC 7959 §2.4), and the checks that the body is one consistent
//!   representation (same ETag, expected NUM, full blocks, Size2).
//!
//! Nothing here touches a socket, a clock or the terminal; that is
//! [`crate::client`]'s and the load generator's work.

use coap_lite::{CoapOption, MessageClass, MessageType, RequestType, ResponseType};
use core::fmt;
use iot_ota::firmware::{self, DeviceRequest};
use iot_ota::wire::{self, Block, BlockError, Emitter, Message};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// The CoAP default port (RFC 7252 §6.1).
pub(crate) const DEFAULT_PORT: u16 = 5683;
/// The coaps default port (RFC 7252 §6.2).
pub(crate) const DEFAULT_SECURE_PORT: u16 = 5684;
/// Block size asked for unless told otherwise: the largest of RFC 7959.
pub(crate) const DEFAULT_BLOCK_SIZE: usize = 1024;
/// Wait after a 4.29 without Max-Age, in seconds.
const DEFAULT_RETRY_AFTER_S: u32 = 1;
/// Longest wait after a 4.29, in seconds, whatever its Max-Age says.
const MAX_RETRY_AFTER_S: u32 = 60;
/// Length of the tokens sent.
pub(crate) const TOKEN_LEN: usize = 4;
/// Longest ETag (RFC 7252 §5.10.6).
const MAX_ETAG_LEN: usize = 8;

// ---------------------------------------------------------------------------
// SERVER and PATH arguments
// ---------------------------------------------------------------------------

/// Why a SERVER or PATH argument cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UriError {
    /// A scheme other than `coap://` and `coaps://`.
    Scheme,
    /// No host.
    EmptyHost,
    /// Port not a decimal 1..=65535.
    Port,
    /// `user@host`: CoAP URIs have no user information.
    UserInfo,
    /// An IPv6 address without brackets (`::1:5683` is ambiguous).
    UnbracketedIpv6,
    /// `[...]` that is not an IPv6 address, or text after `]` other than a
    /// port.
    BadIpv6,
    /// A `%` not followed by two hex digits.
    Percent,
    /// A path segment or query item longer than 255 bytes (the longest
    /// Uri-Path or Uri-Query option, RFC 7252 §5.10).
    SegmentTooLong,
    /// A path given in the `host:port` form, which has none.
    PathWithoutScheme,
    /// `[fe80::1%]`, or `%25` with nothing after it in a URI.
    EmptyZone,
    /// A zone after an IPv4 address or a host name: only IPv6 addresses
    /// have zones, and only in brackets.
    ZoneWithoutIpv6,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UriError::Scheme => "only coap:// and coaps:// URIs are supported",
            UriError::EmptyHost => "no host",
            UriError::Port => "port must be a number 1..65535",
            UriError::UserInfo => "CoAP URIs have no user@ part",
            UriError::UnbracketedIpv6 => "write IPv6 addresses in brackets, e.g. [::1]:5683",
            UriError::BadIpv6 => "not an IPv6 address in [...], or text after ] that is not :PORT",
            UriError::Percent => "% must be followed by two hex digits",
            UriError::SegmentTooLong => "a path segment or query item is longer than 255 bytes",
            UriError::PathWithoutScheme => "a path needs the coap://host:port/path form",
            UriError::EmptyZone => {
                "no zone after %: write [fe80::1%eth0]:5683, or coap://[fe80::1%25eth0]/ in a URI"
            }
            UriError::ZoneWithoutIpv6 => {
                "a zone (%IFACE) goes with an IPv6 address in brackets, e.g. [fe80::1%eth0]:5683"
            }
        })
    }
}

/// A server to talk to, and the resource when the argument was a URI with
/// a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host name or IP address, without brackets or zone.
    pub(crate) host: String,
    /// The zone of an IPv6 literal (`[fe80::1%eth0]`): an interface name
    /// or decimal index, as written (in a URI, after the RFC 6874 `%25`,
    /// percent-decoded). Never sent: it is the scope id of the address
    /// sent to, which the socket side looks up.
    pub(crate) zone: Option<String>,
    /// UDP port.
    pub(crate) port: u16,
    /// The URI's path and query, `None` when it had neither (or just `/`).
    pub(crate) resource: Option<Resource>,
    /// A `coaps://` URI: CoAP over DTLS.
    pub(crate) secure: bool,
}

impl Target {
    /// Parses `host:port`, `[v6]:port`, `host`, `[v6]` or
    /// `coap://host[:port][/path][?query]`; the port defaults to 5683,
    /// 5684 for `coaps://`.
    /// An IPv6 address may carry a zone: `[fe80::1%eth0]:5683`, and in a
    /// URI `coap://[fe80::1%25eth0]/` (RFC 6874), or leniently
    /// `coap://[fe80::1%eth0]/` as browsers and libcoap take it.
    ///
    /// # Errors
    /// [`UriError`] naming what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Target, UriError> {
        let scheme = split_scheme(text)?;
        let is_uri = scheme.is_some();
        let secure = matches!(scheme, Some((true, _)));
        let (authority, rest) = match scheme {
            Some((_, after)) => {
                // A fragment is never sent (RFC 7252 §6.4 step 7).
                let after = after.split('#').next().unwrap_or("");
                let end = after.find(['/', '?']).unwrap_or(after.len());
                after.split_at(end)
            }
            None if text.contains(['/', '?']) => return Err(UriError::PathWithoutScheme),
            None => (text, ""),
        };
        if authority.contains('@') {
            return Err(UriError::UserInfo);
        }
        let default_port = if secure {
            DEFAULT_SECURE_PORT
        } else {
            DEFAULT_PORT
        };
        let (host, zone, port) = split_host_port(authority, is_uri, default_port)?;
        let resource = Resource::parse(rest)?;
        let resource = (!resource.is_root()).then_some(resource);
        Ok(Target {
            host: host.to_owned(),
            zone,
            port,
            resource,
            secure,
        })
    }

    /// `host:port`, with brackets around an IPv6 address and its zone
    /// (`[fe80::1%eth0]:5683`).
    pub(crate) fn authority(&self) -> String {
        if let Some(zone) = &self.zone {
            format!("[{}%{zone}]:{}", self.host, self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `Some((secure, rest))` after `coap://` or `coaps://` (any case),
/// `None` without a scheme.
fn split_scheme(text: &str) -> Result<Option<(bool, &str)>, UriError> {
    let Some(colon) = text.find("://") else {
        return Ok(None);
    };
    let (scheme, rest) = text.split_at(colon);
    let rest = rest.get(3..).unwrap_or("");
    if scheme.eq_ignore_ascii_case("coap") {
        Ok(Some((false, rest)))
    } else if scheme.eq_ignore_ascii_case("coaps") {
        Ok(Some((true, rest)))
    } else {
        Err(UriError::Scheme)
    }
}

/// `host[:port]` → (host, zone, port). `is_uri`: the authority of a
/// `coap://` URI, where the zone is written `%25ZONE` (RFC 6874).
fn split_host_port(
    authority: &str,
    is_uri: bool,
    default_port: u16,
) -> Result<(&str, Option<String>, u16), UriError> {
    let (host, zone, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').ok_or(UriError::BadIpv6)?;
        let (host, zone) = match inside.split_once('%') {
            Some((host, zone)) => (host, Some(parse_zone(zone, is_uri)?)),
            None => (inside, None),
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UriError::BadIpv6);
        }
        match after {
            "" => (host, zone, None),
            _ => (
                host,
                zone,
                Some(after.strip_prefix(':').ok_or(UriError::BadIpv6)?),
            ),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => return Err(UriError::UnbracketedIpv6),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        // `127.0.0.1%lo`: a zone where there can be none (and in a URI
        // not a percent-encoded name either: an address is no reg-name).
        if let Some((ip, _)) = host.split_once('%') {
            if ip.parse::<std::net::IpAddr>().is_ok() {
                return Err(UriError::ZoneWithoutIpv6);
            }
        }
        (host, None, port)
    };
    if host.is_empty() {
        return Err(UriError::EmptyHost);
    }
    let port = match port {
        // `coap://host:/` has an empty port: the default (RFC 3986 §3.2.3).
        None | Some("") => default_port,
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(UriError::Port)?,
    };
    Ok((host, zone, port))
}

/// The zone after the `%` of `[IPv6%...]`. In a URI the `%` is itself
/// percent-encoded (`%25eth0`, RFC 6874 §2) and the zone may hold
/// percent-encoded bytes; a bare `%eth0` is taken too, as browsers and
/// libcoap do. Outside URIs the zone is taken as written.
fn parse_zone(text: &str, is_uri: bool) -> Result<String, UriError> {
    let zone = if is_uri {
        let encoded = match text.strip_prefix("25") {
            Some("") => return Err(UriError::EmptyZone),
            Some(rfc6874) => rfc6874,
            None => text,
        };
        String::from_utf8(percent_decode(encoded)?).map_err(|_| UriError::BadIpv6)?
    } else {
        text.to_owned()
    };
    if zone.is_empty() {
        return Err(UriError::EmptyZone);
    }
    Ok(zone)
}

/// A resource as Uri-Path and Uri-Query option values (percent-decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Resource {
    /// One value per path segment.
    pub(crate) path: Vec<Vec<u8>>,
    /// One value per `&`-separated query item.
    pub(crate) query: Vec<Vec<u8>>,
}

impl Resource {
    /// Parses `/a/b?x=1&y=2` (a missing leading `/` is assumed): every
    /// segment and query item percent-decoded, as RFC 7252 §6.4 steps 8-9.
    ///
    /// # Errors
    /// [`UriError::Percent`] or [`UriError::SegmentTooLong`].
    pub(crate) fn parse(text: &str) -> Result<Resource, UriError> {
        let (path, query) = text.split_once('?').unwrap_or((text, ""));
        let path = path.strip_prefix('/').unwrap_or(path);
        let mut resource = Resource::default();
        if !path.is_empty() {
            for segment in path.split('/') {
                resource.path.push(percent_decode(segment)?);
            }
        }
        if !query.is_empty() {
            for item in query.split('&') {
                resource.query.push(percent_decode(item)?);
            }
        }
        Ok(resource)
    }

    /// `/updates`, where devices ask for updates.
    pub(crate) fn updates() -> Resource {
        Resource {
            path: vec![b"updates".to_vec()],
            query: Vec::new(),
        }
    }

    /// `/updates/{id}`, one image.
    pub(crate) fn image(id: &[u8]) -> Resource {
        Resource {
            path: vec![b"updates".to_vec(), id.to_vec()],
            query: Vec::new(),
        }
    }

    /// True for `/` (or nothing): no Uri-Path, no Uri-Query.
    pub(crate) fn is_root(&self) -> bool {
        self.path.is_empty() && self.query.is_empty()
    }
}

impl fmt::Display for Resource {
    /// The resource as a path for messages (not re-encoded).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str("/")?;
        }
        for segment in &self.path {
            write!(f, "/{}", String::from_utf8_lossy(segment))?;
        }
        for (i, item) in self.query.iter().enumerate() {
            let separator = if i == 0 { '?' } else { '&' };
            write!(f, "{separator}{}", String::from_utf8_lossy(item))?;
        }
        Ok(())
    }
}

fn percent_decode(text: &str) -> Result<Vec<u8>, UriError> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(|h| char::from(h).to_digit(16));
            let lo = bytes.next().and_then(|l| char::from(l).to_digit(16));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(UriError::Percent),
            }
        } else {
            out.push(b);
        }
    }
    if out.len() > 255 {
        return Err(UriError::SegmentTooLong);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Retransmission and randomness
// ---------------------------------------------------------------------------

/// RFC 7252 §4.8 transmission parameters. ACK_RANDOM_FACTOR is fixed at
/// the RFC's 1.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retransmission {
    /// ACK_TIMEOUT: the shortest initial wait for an answer.
    pub(crate) ack_timeout: Duration,
    /// MAX_RETRANSMIT: retransmissions after the first transmission.
    pub(crate) max_retransmit: u32,
}

impl Default for Retransmission {
    /// The RFC's defaults: ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4.
    fn default() -> Self {
        Retransmission {
            ack_timeout: Duration::from_secs(2),
            max_retransmit: 4,
        }
    }
}

impl Retransmission {
    /// The first timeout, in `[ACK_TIMEOUT, ACK_TIMEOUT * 1.5)`, chosen by
    /// `random` spread over the whole `u32` range (RFC 7252 §4.2).
    pub(crate) fn initial_timeout(&self, random: u32) -> Duration {
        let base = self.ack_timeout.as_nanos();
        // base * (1 + 0.5 * random / 2^32)
        let extra = (base * u128::from(random)) >> 33;
        Duration::from_nanos(u64::try_from(base + extra).unwrap_or(u64::MAX))
    }

    /// The waits after each transmission: the initial timeout, doubled
    /// after every retransmission, `MAX_RETRANSMIT + 1` of them. The sum
    /// is at most MAX_TRANSMIT_WAIT (93 s with the defaults).
    pub(crate) fn timeouts(&self, random: u32) -> impl Iterator<Item = Duration> {
        let params = *self;
        (0..=self.max_retransmit).map(move |i| params.timeout(random, i))
    }

    /// The wait after the transmission that follows `retransmissions`
    /// earlier ones: the initial timeout doubled once per retransmission.
    pub(crate) fn timeout(&self, random: u32, retransmissions: u32) -> Duration {
        let doubling = 1u32.checked_shl(retransmissions).unwrap_or(u32::MAX);
        self.initial_timeout(random).saturating_mul(doubling)
    }

    /// MAX_TRANSMIT_WAIT: `ACK_TIMEOUT * (2^(MAX_RETRANSMIT + 1) - 1) *
    /// 1.5`; how long an answer separate from an empty ACK is awaited.
    pub(crate) fn max_transmit_wait(&self) -> Duration {
        let factor = 1u32
            .checked_shl(self.max_retransmit.saturating_add(1))
            .unwrap_or(u32::MAX)
            .saturating_sub(1);
        self.ack_timeout.saturating_mul(factor).saturating_mul(3) / 2
    }
}

/// xorshift64*: Message IDs, tokens and timer jitter. Not cryptographic;
/// enough that clients started together do not act in lockstep and that
/// tokens are not guessable from the outside (RFC 7252 §5.3.1).
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator with a fixed seed (0 is replaced by a constant).
    pub(crate) fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Seeded from std's per-process random SipHash keys, the time and the
    /// process id.
    pub(crate) fn from_entropy() -> XorShift {
        let mut hasher = RandomState::new().build_hasher();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        hasher.write_u128(now);
        hasher.write_u32(std::process::id());
        XorShift::new(hasher.finish())
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next 32 random bits.
    pub(crate) fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A fresh random token (RFC 7252 §5.3.1).
    pub(crate) fn token(&mut self) -> [u8; TOKEN_LEN] {
        self.next_u32().to_be_bytes()
    }
}

/// RFC 7641 §3.4: whether a notification with Observe `v2` received at
/// `t2` is newer than the last one taken (`v1` at `t1`): the 24-bit
/// sequence moved forward by less than half its range, or 128 seconds
/// passed (after which the numbers may have wrapped).
pub(crate) fn is_newer(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF)
        || (v1 > v2 && v1 - v2 > HALF)
        || t2.saturating_duration_since(t1) > Duration::from_secs(128)
}

/// The Message IDs one endpoint sends to one server: consecutive from a
/// random start (RFC 7252 §4.4), so that endpoints started together do not
/// collide and none repeats before 65536 exchanges.
#[derive(Debug, Clone)]
pub(crate) struct MessageIds {
    next: u16,
}

impl MessageIds {
    /// A sequence that starts at a value drawn from `rng`.
    pub(crate) fn starting_at_random(rng: &mut XorShift) -> MessageIds {
        MessageIds {
            next: rng.next_u32() as u16,
        }
    }

    /// The Message ID of a new exchange.
    pub(crate) fn fresh(&mut self) -> u16 {
        let mid = self.next;
        self.next = mid.wrapping_add(1);
        mid
    }
}

// ---------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------

/// One GET as the client sends it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Get<'a> {
    /// Uri-Path and Uri-Query.
    pub(crate) resource: &'a Resource,
    /// Payload (the device payload for `/updates`), empty for none.
    pub(crate) payload: &'a [u8],
    /// Block2 option: the block asked for.
    pub(crate) block2: Option<Block>,
    /// Size2 option (0 asks the server for the body's size, RFC 7959 §4).
    pub(crate) size2: Option<u32>,
    /// Observe option (RFC 7641): 0 registers, 1 deregisters.
    pub(crate) observe: Option<u32>,
}

/// Writes `get` as a Confirmable message with Message ID `mid`, `token`
/// and, when the server asked for one, the Echo value; returns its length.
///
/// # Errors
/// [`wire::EmitError::BufferTooSmall`] when it does not fit `out`.
pub(crate) fn emit_get(
    get: &Get<'_>,
    mid: u16,
    token: &[u8],
    echo: Option<&[u8]>,
    out: &mut [u8],
) -> Result<usize, wire::EmitError> {
    let mut e = Emitter::new(
        out,
        MessageType::Confirmable,
        MessageClass::Request(RequestType::Get),
        mid,
        token,
    )?;
    if let Some(observe) = get.observe {
        e.option_uint(CoapOption::Observe.into(), observe)?;
    }
    for segment in &get.resource.path {
        e.option(CoapOption::UriPath.into(), segment)?;
    }
    for item in &get.resource.query {
        e.option(CoapOption::UriQuery.into(), item)?;
    }
    if let Some(block) = get.block2 {
        e.option_block(CoapOption::Block2.into(), block)?;
    }
    if let Some(size) = get.size2 {
        e.option_uint(CoapOption::Size2.into(), size)?;
    }
    if let Some(echo) = echo {
        e.option(wire::OPTION_ECHO, echo)?;
    }
    e.payload(get.payload)
}

/// A device payload (`PIDLEN PID TYPE VERSION [OFFSET]`), written once into a buffer of the
/// longest size, so that sending it again allocates nothing.
#[derive(Debug, Clone)]
pub(crate) struct DevicePayload {
    bytes: [u8; iot_ota::firmware::MAX_PAYLOAD_LEN],
    len: usize,
}

impl DevicePayload {
    /// The payload of `request`: its OFFSET included when it has one.
    /// `None` when the PID is empty or longer than 255 bytes.
    pub(crate) fn new(request: &DeviceRequest<'_>) -> Option<DevicePayload> {
        let mut bytes = [0u8; iot_ota::firmware::MAX_PAYLOAD_LEN];
        let len = firmware::write_payload(request, &mut bytes)?;
        Some(DevicePayload { bytes, len })
    }

    /// The payload bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// An answer, copied out of the datagram.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Response {
    /// ACK (piggybacked), or CON/NON (a separate response).
    pub(crate) mtype: MessageType,
    /// Response code.
    pub(crate) code: MessageClass,
    /// Block2, `Err` when unusable (SZX 7).
    pub(crate) block2: Option<Result<Block, BlockError>>,
    /// Size2.
    pub(crate) size2: Option<u32>,
    /// ETag.
    pub(crate) etag: Option<Vec<u8>>,
    /// Content-Format.
    pub(crate) content_format: Option<u16>,
    /// Max-Age.
    pub(crate) max_age: Option<u32>,
    /// Echo (RFC 9175).
    pub(crate) echo: Option<Vec<u8>>,
    /// Observe (RFC 7641): present in a notification.
    pub(crate) observe: Option<u32>,
    /// Payload.
    pub(crate) payload: Vec<u8>,
}

impl Response {
    /// The answer `msg`, copied.
    pub(crate) fn from_message(msg: &Message<'_>) -> Response {
        Response {
            mtype: msg.mtype,
            code: msg.class(),
            block2: msg.block2,
            size2: msg.size2,
            etag: msg.etag.map(<[u8]>::to_vec),
            content_format: msg.content_format,
            max_age: msg.max_age,
            echo: msg.echo.map(<[u8]>::to_vec),
            observe: msg.observe,
            payload: msg.payload.to_vec(),
        }
    }

    /// The payload as text for an error message (RFC 7252 §5.5.2
    /// diagnostic), lossy and cut at 200 characters.
    pub(crate) fn diagnostic(&self) -> String {
        String::from_utf8_lossy(&self.payload)
            .chars()
            .take(200)
            .collect()
    }

    /// True when the answer has response code `code`.
    pub(crate) fn is(&self, code: ResponseType) -> bool {
        self.code == MessageClass::Response(code)
    }
}

/// What one received datagram means for the exchange `mid`/`token`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Matched {
    /// A piggybacked answer: ACK with our Message ID and token.
    Response(Response),
    /// An empty ACK with our Message ID: the answer follows separately.
    EmptyAck,
    /// An RST with our Message ID: the server rejected the request.
    Reset,
    /// A separate answer (CON or NON with our token); a CON one must be
    /// acknowledged with the Message ID given.
    Separate(Response, Option<u16>),
    /// Anything else: unparsable, another exchange's, a duplicate, a
    /// request. Ignored.
    Stray,
}

/// Classifies a datagram from the server for the exchange `mid`/`token`,
/// copying an answer out of it (see [`classify_reply`]).
pub(crate) fn match_reply(datagram: &[u8], mid: u16, token: &[u8]) -> Matched {
    let Ok(msg) = Message::parse(datagram) else {
        return Matched::Stray;
    };
    match classify_reply(&msg, mid, token) {
        Reply::Piggybacked => Matched::Response(Response::from_message(&msg)),
        Reply::EmptyAck => Matched::EmptyAck,
        Reply::Reset => Matched::Reset,
        Reply::Separate { ack } => Matched::Separate(Response::from_message(&msg), ack),
        Reply::Stray => Matched::Stray,
    }
}

/// What a parsed message is for one exchange; [`Matched`] without the
/// copy, for a caller that must not allocate per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// ACK with our Message ID and token, carrying the answer.
    Piggybacked,
    /// An empty ACK with our Message ID: the answer follows separately.
    EmptyAck,
    /// An RST with our Message ID: the server rejected the request.
    Reset,
    /// A CON or NON answer with our token; a CON one must be acknowledged
    /// with the Message ID in `ack`.
    Separate {
        /// The Message ID to acknowledge, for a CON answer.
        ack: Option<u16>,
    },
    /// Anything else: another exchange's, a duplicate, a request.
    Stray,
}

/// Classifies `msg` for the exchange `mid`/`token` (RFC 7252 §5.3.2: a
/// piggybacked answer matches on both, an RST on the Message ID, a
/// separate answer on the token).
pub(crate) fn classify_reply(msg: &Message<'_>, mid: u16, token: &[u8]) -> Reply {
    let is_response = matches!(msg.class(), MessageClass::Response(_));
    match msg.mtype {
        MessageType::Acknowledgement if msg.mid == mid => match msg.class() {
            MessageClass::Empty => Reply::EmptyAck,
            _ if is_response && msg.token == token => Reply::Piggybacked,
            _ => Reply::Stray,
        },
        MessageType::Reset if msg.mid == mid => Reply::Reset,
        MessageType::Confirmable if is_response && msg.token == token => {
            Reply::Separate { ack: Some(msg.mid) }
        }
        MessageType::NonConfirmable if is_response && msg.token == token => {
            Reply::Separate { ack: None }
        }
        _ => Reply::Stray,
    }
}

// ---------------------------------------------------------------------------
// Block-wise transfer
// ---------------------------------------------------------------------------

/// An ETag kept in place, so that a download (of the load generator, many
/// a second) allocates nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredEtag {
    bytes: [u8; MAX_ETAG_LEN],
    len: usize,
}

impl StoredEtag {
    /// `None` for an ETag longer than RFC 7252 allows.
    fn new(etag: &[u8]) -> Option<StoredEtag> {
        let mut bytes = [0u8; MAX_ETAG_LEN];
        bytes.get_mut(..etag.len())?.copy_from_slice(etag);
        Some(StoredEtag {
            bytes,
            len: etag.len(),
        })
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// Why a block-wise body is not one consistent representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferError {
    /// A later block came without Block2.
    MissingBlock2,
    /// An ETag longer than the 8 bytes RFC 7252 §5.10.6 allows.
    BadEtag,
    /// Block2 with the reserved SZX 7 or longer than 3 bytes.
    BadBlock2,
    /// The server raised the block size, which RFC 7959 §2.4 does not allow.
    SizeIncreased {
        /// SZX asked for.
        asked: u8,
        /// SZX answered.
        got: u8,
    },
    /// The answer is for another block.
    UnexpectedNum {
        /// NUM expected.
        expected: u32,
        /// NUM answered.
        got: u32,
    },
    /// A block with M set that is not full, or any block larger than its
    /// size.
    BlockLength {
        /// NUM of the block.
        num: u32,
        /// Its payload length.
        len: usize,
        /// Its SZX's size.
        size: usize,
    },
    /// The ETag differs from the first block's: the resource changed during
    /// the download.
    EtagChanged,
    /// Size2 differs from an earlier block's.
    Size2Changed {
        /// Size2 first seen.
        before: u32,
        /// Size2 now.
        now: u32,
    },
    /// The body's length is not the announced Size2.
    SizeMismatch {
        /// Size2.
        size2: u32,
        /// Bytes received.
        got: u64,
    },
    /// The next block number would not fit the 20 bits of NUM.
    TooManyBlocks,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TransferError::MissingBlock2 => f.write_str("a block came without Block2 option"),
            TransferError::BadBlock2 => f.write_str("the server sent an invalid Block2 option"),
            TransferError::BadEtag => f.write_str("the server sent an ETag longer than 8 bytes"),
            TransferError::SizeIncreased { asked, got } => write!(
                f,
                "the server answered {}-byte blocks to a request for {}-byte blocks",
                16usize << got.min(7),
                16usize << asked.min(7)
            ),
            TransferError::UnexpectedNum { expected, got } => {
                write!(f, "asked for block {expected}, got block {got}")
            }
            TransferError::BlockLength { num, len, size } => {
                write!(f, "block {num} has {len} bytes, not the {size} of its size")
            }
            TransferError::EtagChanged => {
                f.write_str("the ETag changed during the download: the image changed on the server")
            }
            TransferError::Size2Changed { before, now } => {
                write!(
                    f,
                    "Size2 changed from {before} to {now} during the download"
                )
            }
            TransferError::SizeMismatch { size2, got } => {
                write!(f, "received {got} bytes but Size2 announced {size2}")
            }
            TransferError::TooManyBlocks => f.write_str("body longer than 2^20 blocks"),
        }
    }
}

/// How far a block-wise download got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Bytes received.
    pub(crate) bytes: u64,
    /// Blocks received.
    pub(crate) blocks: u32,
    /// The body's length when the server said (Size2).
    pub(crate) total: Option<u32>,
    /// Current block size.
    pub(crate) block_size: usize,
}

impl Progress {
    /// Blocks the whole body takes at the current size, when known. Blocks
    /// already received at a larger size count as they were.
    pub(crate) fn total_blocks(&self) -> Option<u64> {
        let total = u64::from(self.total?);
        let size = self.block_size.max(1) as u64;
        let remaining = total.saturating_sub(self.bytes).div_ceil(size);
        Some(u64::from(self.blocks) + remaining)
    }
}

impl fmt::Display for Progress {
    /// `  45%  13/29 blocks  13312/30000 B`, or `  13 blocks  13312 B`
    /// without a known total.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.total, self.total_blocks()) {
            (Some(total), Some(blocks)) => {
                let percent = match total {
                    0 => 100,
                    t => self.bytes.saturating_mul(100) / u64::from(t),
                };
                write!(
                    f,
                    "{percent:>4}%  {}/{blocks} blocks  {}/{total} B",
                    self.blocks, self.bytes
                )
            }
            _ => {
                let noun = if self.blocks == 1 { "block" } else { "blocks" };
                write!(f, "  {} {noun}  {} B", self.blocks, self.bytes)
            }
        }
    }
}

/// The Block2 state of one download, without I/O: ask [`next_block`]
/// for the option to send, hand each answer to [`accept`].
///
/// [`next_block`]: BlockCursor::next_block
/// [`accept`]: BlockCursor::accept
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockCursor {
    position: u64,
    szx: u8,
    blocks: u32,
    etag: Option<StoredEtag>,
    size2: Option<u32>,
    done: bool,
}

impl BlockCursor {
    /// A download that asks for `2^(szx + 4)`-byte blocks (SZX capped at 6).
    pub(crate) fn new(szx: u8) -> BlockCursor {
        BlockCursor {
            position: 0,
            szx: szx.min(Block::MAX_SZX),
            blocks: 0,
            etag: None,
            size2: None,
            done: false,
        }
    }

    /// The Block2 option for the next request: the block that starts at
    /// the byte position reached, at the current size (RFC 7959 §2.4).
    ///
    /// # Errors
    /// [`TransferError::TooManyBlocks`] past NUM 2^20 - 1.
    pub(crate) fn next_block(&self) -> Result<Block, TransferError> {
        Block::at(self.position, self.szx).ok_or(TransferError::TooManyBlocks)
    }

    /// Takes the answer to the request for [`BlockCursor::next_block`];
    /// returns true when more blocks follow. The payload belongs to the
    /// body once this returned `Ok`.
    ///
    /// An answer without Block2 to the first request is the whole body.
    ///
    /// # Errors
    /// A [`TransferError`] when the answer is not the next part of the
    /// same body; the download must stop.
    pub(crate) fn accept(
        &mut self,
        block2: Option<Result<Block, BlockError>>,
        etag: Option<&[u8]>,
        size2: Option<u32>,
        payload_len: usize,
    ) -> Result<bool, TransferError> {
        let block = match block2 {
            None if self.blocks == 0 => None,
            None => return Err(TransferError::MissingBlock2),
            Some(Err(_)) => return Err(TransferError::BadBlock2),
            Some(Ok(block)) => Some(block),
        };
        if let Some(block) = block {
            if block.szx > self.szx {
                return Err(TransferError::SizeIncreased {
                    asked: self.szx,
                    got: block.szx,
                });
            }
            // The position reached is a multiple of every size up to the
            // current one, so an answer at a smaller size starts exactly
            // there too.
            if block.position() != self.position {
                let expected = Block::at(self.position, block.szx);
                return Err(TransferError::UnexpectedNum {
                    expected: expected.map_or(u32::MAX, |b| b.num),
                    got: block.num,
                });
            }
            let size = block.size();
            if payload_len > size || (block.more && payload_len != size) {
                return Err(TransferError::BlockLength {
                    num: block.num,
                    len: payload_len,
                    size,
                });
            }
        }
        if self.blocks == 0 {
            self.etag = match etag {
                Some(etag) => Some(StoredEtag::new(etag).ok_or(TransferError::BadEtag)?),
                None => None,
            };
        } else if self.etag() != etag {
            return Err(TransferError::EtagChanged);
        }
        if let Some(now) = size2 {
            match self.size2 {
                Some(before) if before != now => {
                    return Err(TransferError::Size2Changed { before, now })
                }
                _ => self.size2 = Some(now),
            }
        }
        let position = self.position.saturating_add(payload_len as u64);
        if let Some(size2) = self.size2 {
            if position > u64::from(size2) {
                return Err(TransferError::SizeMismatch {
                    size2,
                    got: position,
                });
            }
        }
        let more = block.is_some_and(|b| b.more);
        if !more {
            if let Some(size2) = self.size2.filter(|s| u64::from(*s) != position) {
                return Err(TransferError::SizeMismatch {
                    size2,
                    got: position,
                });
            }
        }
        self.position = position;
        if let Some(block) = block {
            self.szx = block.szx;
        }
        self.blocks = self.blocks.saturating_add(1);
        self.done = !more;
        Ok(more)
    }

    /// Where the download stands.
    pub(crate) fn progress(&self) -> Progress {
        Progress {
            bytes: self.position,
            blocks: self.blocks,
            total: self.size2,
            block_size: 16 << self.szx,
        }
    }

    /// The ETag of the body, once the first block came.
    pub(crate) fn etag(&self) -> Option<&[u8]> {
        self.etag.as_ref().map(StoredEtag::as_bytes)
    }

    /// True once the last block was accepted.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }
}

/// The reason phrase of a response code, for messages.
pub(crate) fn code_name(code: MessageClass) -> &'static str {
    match code {
        MessageClass::Response(r) => match r {
            ResponseType::Content => "Content",
            ResponseType::BadRequest => "Bad Request",
            ResponseType::Unauthorized => "Unauthorized",
            ResponseType::BadOption => "Bad Option",
            ResponseType::Forbidden => "Forbidden",
            ResponseType::NotFound => "Not Found",
            ResponseType::MethodNotAllowed => "Method Not Allowed",
            ResponseType::NotAcceptable => "Not Acceptable",
            ResponseType::RequestEntityTooLarge => "Request Entity Too Large",
            ResponseType::TooManyRequests => "Too Many Requests",
            ResponseType::InternalServerError => "Internal Server Error",
            ResponseType::ServiceUnavailable => "Service Unavailable",
            _ => "",
        },
        _ => "",
    }
}

/// How long to wait after a 4.29: Max-Age seconds, 1 without, at most 60.
pub(crate) fn retry_after(response: &Response) -> Duration {
    let seconds = response
        .max_age
        .unwrap_or(DEFAULT_RETRY_AFTER_S)
        .min(MAX_RETRY_AFTER_S);
    Duration::from_secs(u64::from(seconds))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // -- SERVER and PATH ---------------------------------------------------

    fn target(text: &str) -> Target {
        Target::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn host_port_forms_default_to_port_5683() {
        let t = target("127.0.0.1:5684");
        assert_eq!(
            (t.host.as_str(), t.port, t.resource),
            ("127.0.0.1", 5684, None)
        );
        let t = target("[::1]:61616");
        assert_eq!((t.host.as_str(), t.port), ("::1", 61616));
        assert_eq!(t.authority(), "[::1]:61616");
        assert_eq!(target("localhost").port, DEFAULT_PORT);
        assert_eq!(target("[fe80::1]").port, DEFAULT_PORT);
        assert_eq!(target("example.org:1").authority(), "example.org:1");
    }

    #[test]
    fn coap_uri_gives_host_port_and_resource() {
        let t = target("coap://[::1]:5683/.well-known/core");
        assert_eq!((t.host.as_str(), t.port), ("::1", 5683));
        let r = t.resource.unwrap();
        assert_eq!(r.path, vec![b".well-known".to_vec(), b"core".to_vec()]);
        assert!(r.query.is_empty());

        let t = target("COAP://example.org/updates?pid=A%20B&type=APP#frag");
        assert_eq!((t.host.as_str(), t.port), ("example.org", DEFAULT_PORT));
        let r = t.resource.unwrap();
        assert_eq!(r.path, vec![b"updates".to_vec()]);
        assert_eq!(r.query, vec![b"pid=A B".to_vec(), b"type=APP".to_vec()]);
        assert_eq!(r.to_string(), "/updates?pid=A B&type=APP");
    }

    #[test]
    fn coaps_uris_are_secure_with_their_own_default_port() {
        let t = target("coaps://[::1]/updates/x");
        assert!(t.secure);
        assert_eq!(t.port, DEFAULT_SECURE_PORT);
        assert_eq!(t.resource.unwrap().to_string(), "/updates/x");
        let t = target("CoAPs://h:7");
        assert!(t.secure);
        assert_eq!(t.port, 7);
        assert!(!target("coap://h").secure);
        assert!(!target("h:5684").secure);
    }

    #[test]
    fn root_path_or_none_means_no_resource() {
        for text in ["coap://h", "coap://h/", "coap://h:7/", "coap://h:/"] {
            assert_eq!(target(text).resource, None, "{text}");
        }
        assert_eq!(target("coap://h:/").port, DEFAULT_PORT);
        assert_eq!(
            target("coap://h?x").resource.unwrap().query,
            vec![b"x".to_vec()]
        );
    }

    #[test]
    fn bad_server_arguments_say_why() {
        let cases = [
            ("coapss://h", UriError::Scheme),
            ("http://h/", UriError::Scheme),
            ("", UriError::EmptyHost),
            (":5683", UriError::EmptyHost),
            ("coap://", UriError::EmptyHost),
            ("h:0", UriError::Port),
            ("h:65536", UriError::Port),
            ("h:+80", UriError::Port),
            ("h:x", UriError::Port),
            ("::1", UriError::UnbracketedIpv6),
            ("::1:5683", UriError::UnbracketedIpv6),
            ("[::1", UriError::BadIpv6),
            ("[not-v6]:1", UriError::BadIpv6),
            ("[::1]5683", UriError::BadIpv6),
            ("coap://u@h/", UriError::UserInfo),
            ("h:5683/updates", UriError::PathWithoutScheme),
            ("coap://h/%zz", UriError::Percent),
            ("coap://h/%4", UriError::Percent),
        ];
        for (text, expected) in cases {
            assert_eq!(Target::parse(text), Err(expected), "{text}");
        }
        let long = format!("coap://h/{}", "a".repeat(256));
        assert_eq!(Target::parse(&long), Err(UriError::SegmentTooLong));
        let max = format!("coap://h/{}", "a".repeat(255));
        assert!(Target::parse(&max).is_ok());
    }

    #[test]
    fn ipv6_zones_plain_and_in_uris_rfc6874() {
        // (argument, zone, port, path)
        let cases: [(&str, &str, u16, &str); 9] = [
            ("[fe80::1%eth0]:5683", "eth0", 5683, "/"),
            ("[fe80::1%5]:5683", "5", 5683, "/"),
            ("[fe80::1%eth0]", "eth0", DEFAULT_PORT, "/"),
            // Outside URIs the zone is as written (the socket side takes
            // a `25` copied from a URI leniently).
            ("[fe80::1%25eth0]:1", "25eth0", 1, "/"),
            ("coap://[fe80::1%25eth0]:5683/a/b", "eth0", 5683, "/a/b"),
            ("coap://[fe80::1%25eth0]/a?q", "eth0", DEFAULT_PORT, "/a?q"),
            ("coap://[fe80::1%25en%30]/", "en0", DEFAULT_PORT, "/"),
            // Bare `%` in a URI, as browsers and libcoap take it.
            ("coap://[fe80::1%eth0]/a", "eth0", DEFAULT_PORT, "/a"),
            ("coap://[fe80::1%7]:9/", "7", 9, "/"),
        ];
        for (text, zone, port, path) in cases {
            let t = target(text);
            assert_eq!(t.host, "fe80::1", "{text}");
            assert_eq!(t.zone.as_deref(), Some(zone), "{text}");
            assert_eq!(t.port, port, "{text}");
            assert_eq!(t.resource.unwrap_or_default().to_string(), path, "{text}");
        }
        assert_eq!(target("[fe80::1%eth0]").authority(), "[fe80::1%eth0]:5683");
        assert_eq!(
            target("coap://[fe80::1%25wpan0]:7/").authority(),
            "[fe80::1%wpan0]:7"
        );
        assert_eq!(target("[fe80::1]:1").zone, None);
        assert_eq!(target("coap://h/").zone, None);
    }

    #[test]
    fn bad_zones_say_why() {
        let cases = [
            ("[fe80::1%]:5683", UriError::EmptyZone),
            ("[fe80::1%]", UriError::EmptyZone),
            ("coap://[fe80::1%25]/", UriError::EmptyZone),
            ("coap://[fe80::1%]/", UriError::EmptyZone),
            ("coap://[fe80::1%25e%zz]/", UriError::Percent),
            ("[not-v6%eth0]:1", UriError::BadIpv6),
            ("[fe80::1%eth0]5683", UriError::BadIpv6),
            ("[fe80::1%eth0]:0", UriError::Port),
            ("fe80::1%eth0:5683", UriError::UnbracketedIpv6),
            ("127.0.0.1%lo:5683", UriError::ZoneWithoutIpv6),
            ("127.0.0.1%lo", UriError::ZoneWithoutIpv6),
            ("coap://127.0.0.1%25lo/", UriError::ZoneWithoutIpv6),
        ];
        for (text, expected) in cases {
            assert_eq!(Target::parse(text), Err(expected), "{text}");
        }
    }

    #[test]
    fn a_zoned_literal_sends_no_uri_host_rfc7252_section_6_4() {
        // An IP-literal host is the destination address: no Uri-Host, and
        // the zone, local to this host, goes nowhere on the wire.
        let t = target("coap://[fe80::1%25lo]:5683/.well-known/core");
        let resource = t.resource.unwrap();
        let mut out = [0u8; 128];
        let len = emit_get(&plain(&resource), 1, b"t", None, &mut out).unwrap();
        let packet = coap_lite::Packet::from_bytes(&out[..len]).unwrap();
        assert!(packet.get_option(CoapOption::UriHost).is_none());
        assert!(packet.get_option(CoapOption::UriPort).is_none());
        assert!(!out[..len].windows(2).any(|w| w == b"lo"));
    }

    fn plain(resource: &Resource) -> Get<'_> {
        Get {
            resource,
            payload: &[],
            block2: None,
            size2: None,
            observe: None,
        }
    }

    #[test]
    fn path_is_split_into_options_as_rfc7252_section_6_4() {
        let r = Resource::parse("/a//b%2Fc?x=1&&y").unwrap();
        assert_eq!(r.path, vec![b"a".to_vec(), b"".to_vec(), b"b/c".to_vec()]);
        assert_eq!(r.query, vec![b"x=1".to_vec(), b"".to_vec(), b"y".to_vec()]);
        assert_eq!(Resource::parse("updates").unwrap(), Resource::updates());
        assert!(Resource::parse("/").unwrap().is_root());
        assert!(Resource::parse("").unwrap().is_root());
        assert_eq!(
            Resource::image(b"0d0ad509").to_string(),
            "/updates/0d0ad509"
        );
        assert_eq!(Resource::default().to_string(), "/");
    }

    // -- retransmission schedule -------------------------------------------

    #[test]
    fn initial_timeout_is_in_ack_timeout_times_1_to_1_5() {
        let p = Retransmission::default();
        assert_eq!(p.initial_timeout(0), Duration::from_secs(2));
        assert_eq!(p.initial_timeout(1 << 31), Duration::from_millis(2500));
        let top = p.initial_timeout(u32::MAX);
        assert!(
            top < Duration::from_secs(3) && top > Duration::from_millis(2999),
            "{top:?}"
        );
        let mut rng = XorShift::new(7);
        for _ in 0..1000 {
            let t = p.initial_timeout(rng.next_u32());
            assert!(
                t >= Duration::from_secs(2) && t < Duration::from_secs(3),
                "{t:?}"
            );
        }
    }

    #[test]
    fn timeouts_double_for_max_retransmit_retransmissions() {
        let p = Retransmission::default();
        let secs: Vec<u64> = p.timeouts(0).map(|d| d.as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32]);
        let ms: Vec<u128> = p.timeouts(1 << 31).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [2500, 5000, 10000, 20000, 40000]);
        // The whole wait never exceeds MAX_TRANSMIT_WAIT (93 s).
        assert_eq!(p.max_transmit_wait(), Duration::from_secs(93));
        let total: Duration = p.timeouts(u32::MAX).sum();
        assert!(total < p.max_transmit_wait());
        let fast = Retransmission {
            ack_timeout: Duration::from_millis(100),
            max_retransmit: 1,
        };
        let ms: Vec<u128> = fast.timeouts(0).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200]);
    }

    #[test]
    fn xorshift_is_deterministic_per_seed_and_never_stuck() {
        let a: Vec<u32> = (0..4)
            .scan(XorShift::new(1), |r, _| Some(r.next_u32()))
            .collect();
        let b: Vec<u32> = (0..4)
            .scan(XorShift::new(1), |r, _| Some(r.next_u32()))
            .collect();
        assert_eq!(a, b);
        let mut zero = XorShift::new(0);
        assert_ne!(zero.next_u64(), zero.next_u64());
    }

    // -- messages ------------------------------------------------------------

    #[test]
    fn emitted_get_parses_with_coap_lite_oracle() {
        let resource = Resource::parse("/updates/0d0ad509?x=1").unwrap();
        let get = Get {
            resource: &resource,
            payload: &[0, 4, 0, 0],
            block2: Some(Block {
                num: 300,
                more: false,
                szx: 2,
            }),
            size2: Some(0),
            observe: None,
        };
        let mut out = [0u8; 128];
        let len = emit_get(&get, 0x1234, &[1, 2, 3, 4], Some(b"echo"), &mut out).unwrap();
        let packet = coap_lite::Packet::from_bytes(&out[..len]).unwrap();
        assert_eq!(packet.header.message_id, 0x1234);
        assert_eq!(packet.header.get_type(), MessageType::Confirmable);
        assert_eq!(packet.header.code, MessageClass::Request(RequestType::Get));
        assert_eq!(packet.get_token(), &[1, 2, 3, 4]);
        let path: Vec<&Vec<u8>> = packet
            .get_option(CoapOption::UriPath)
            .unwrap()
            .iter()
            .collect();
        assert_eq!(path, [&b"updates".to_vec(), &b"0d0ad509".to_vec()]);
        let block = packet
            .get_option(CoapOption::Block2)
            .unwrap()
            .front()
            .unwrap();
        assert_eq!(block, &vec![0x12, 0xC2]); // NUM 300, M 0, SZX 2
        let size2 = packet
            .get_option(CoapOption::Size2)
            .unwrap()
            .front()
            .unwrap();
        assert!(size2.is_empty()); // uint 0 is the empty string
        let echo = packet
            .get_option(CoapOption::Unknown(wire::OPTION_ECHO))
            .unwrap();
        assert_eq!(echo.front().unwrap(), b"echo");
        assert_eq!(packet.payload, [0, 4, 0, 0]);
        // And with the crate's own parser.
        let msg = Message::parse(&out[..len]).unwrap();
        assert_eq!(msg.query.as_slice(), &[&b"x=1"[..]]);
    }

    #[test]
    fn emit_get_fails_cleanly_when_the_buffer_is_short() {
        let resource = Resource::updates();
        let get = Get {
            resource: &resource,
            payload: &[1; 40],
            block2: None,
            size2: None,
            observe: None,
        };
        let mut out = [0u8; 20];
        assert_eq!(
            emit_get(&get, 1, &[], None, &mut out),
            Err(wire::EmitError::BufferTooSmall)
        );
    }

    /// An answer from the server: `mtype`, `code`, mid, token, options.
    pub(crate) fn answer(
        mtype: MessageType,
        code: MessageClass,
        mid: u16,
        token: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = [0u8; 256];
        let e = Emitter::new(&mut out, mtype, code, mid, token).unwrap();
        let len = e.payload(payload).unwrap();
        out[..len].to_vec()
    }

    pub(crate) const CONTENT: MessageClass = MessageClass::Response(ResponseType::Content);

    #[test]
    fn piggybacked_answer_matches_on_mid_and_token() {
        let ack = MessageType::Acknowledgement;
        let ok = answer(ack, CONTENT, 7, b"tok", b"hi");
        match match_reply(&ok, 7, b"tok") {
            Matched::Response(r) => assert_eq!(r.payload, b"hi"),
            other => panic!("{other:?}"),
        }
        // Another exchange's answer (old MID: a late duplicate), or our MID
        // with a foreign token: ignored.
        assert_eq!(
            match_reply(&answer(ack, CONTENT, 6, b"tok", b"x"), 7, b"tok"),
            Matched::Stray
        );
        assert_eq!(
            match_reply(&answer(ack, CONTENT, 7, b"tik", b"x"), 7, b"tok"),
            Matched::Stray
        );
        // Not CoAP, or a request.
        assert_eq!(match_reply(b"\xFF\x00", 7, b"tok"), Matched::Stray);
        let get = MessageClass::Request(RequestType::Get);
        assert_eq!(
            match_reply(&answer(ack, get, 7, b"tok", b""), 7, b"tok"),
            Matched::Stray
        );
    }

    #[test]
    fn empty_ack_reset_and_separate_answers_are_told_apart() {
        let mut buf = [0u8; 4];
        let n = wire::emit_empty(&mut buf, MessageType::Acknowledgement, 9).unwrap();
        assert_eq!(match_reply(&buf[..n], 9, b"t"), Matched::EmptyAck);
        let n = wire::emit_empty(&mut buf, MessageType::Reset, 9).unwrap();
        assert_eq!(match_reply(&buf[..n], 9, b"t"), Matched::Reset);
        assert_eq!(match_reply(&buf[..n], 10, b"t"), Matched::Stray);
        let con = answer(MessageType::Confirmable, CONTENT, 500, b"t", b"late");
        assert!(matches!(
            match_reply(&con, 9, b"t"),
            Matched::Separate(_, Some(500))
        ));
        let non = answer(MessageType::NonConfirmable, CONTENT, 501, b"t", b"late");
        assert!(matches!(
            match_reply(&non, 9, b"t"),
            Matched::Separate(_, None)
        ));
        assert_eq!(match_reply(&non, 9, b"other"), Matched::Stray);
    }

    #[test]
    fn retry_after_uses_max_age_default_1_cap_60() {
        let mut r = match match_reply(
            &answer(MessageType::Acknowledgement, CONTENT, 1, b"", b""),
            1,
            b"",
        ) {
            Matched::Response(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(retry_after(&r), Duration::from_secs(1));
        r.max_age = Some(5);
        assert_eq!(retry_after(&r), Duration::from_secs(5));
        r.max_age = Some(3600);
        assert_eq!(retry_after(&r), Duration::from_secs(60));
    }

    // -- block continuation --------------------------------------------------

    fn block(num: u32, more: bool, szx: u8) -> Option<Result<Block, BlockError>> {
        Some(Ok(Block { num, more, szx }))
    }

    const ETAG: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];

    #[test]
    fn blocks_follow_one_another_at_the_asked_size() {
        let mut c = BlockCursor::new(6);
        assert_eq!(
            c.next_block().unwrap(),
            Block {
                num: 0,
                more: false,
                szx: 6
            }
        );
        assert_eq!(
            c.accept(block(0, true, 6), Some(ETAG), Some(2000), 1024),
            Ok(true)
        );
        assert_eq!(c.next_block().unwrap().num, 1);
        assert_eq!(
            c.accept(block(1, false, 6), Some(ETAG), None, 976),
            Ok(false)
        );
        assert!(c.is_done());
        let p = c.progress();
        assert_eq!((p.bytes, p.blocks, p.total), (2000, 2, Some(2000)));
        assert_eq!(c.etag(), Some(ETAG));
    }

    #[test]
    fn smaller_server_size_continues_from_the_byte_position_rfc7959_2_4() {
        // Asked for 1024, the server answers 256-byte block 0: the next
        // request is block 1 at 256 bytes (byte 256), not block 1 at 1024.
        let mut c = BlockCursor::new(6);
        assert_eq!(
            c.accept(block(0, true, 4), Some(ETAG), Some(1000), 256),
            Ok(true)
        );
        assert_eq!(
            c.next_block().unwrap(),
            Block {
                num: 1,
                more: false,
                szx: 4
            }
        );
        // Shrinking again mid-way: byte 512 is block 8 at 64 bytes.
        assert_eq!(c.accept(block(1, true, 4), Some(ETAG), None, 256), Ok(true));
        assert_eq!(c.accept(block(8, true, 2), Some(ETAG), None, 64), Ok(true));
        assert_eq!(
            c.next_block().unwrap(),
            Block {
                num: 9,
                more: false,
                szx: 2
            }
        );
        assert_eq!(c.progress().block_size, 64);
    }

    #[test]
    fn a_larger_block_from_the_server_is_refused() {
        let mut c = BlockCursor::new(4);
        assert_eq!(
            c.accept(block(0, true, 6), Some(ETAG), None, 1024),
            Err(TransferError::SizeIncreased { asked: 4, got: 6 })
        );
    }

    #[test]
    fn an_answer_for_another_block_is_refused() {
        let mut c = BlockCursor::new(0);
        c.accept(block(0, true, 0), Some(ETAG), None, 16).unwrap();
        assert_eq!(
            c.accept(block(0, true, 0), Some(ETAG), None, 16),
            Err(TransferError::UnexpectedNum {
                expected: 1,
                got: 0
            })
        );
        // The refused answer changed nothing.
        assert_eq!(c.next_block().unwrap().num, 1);
    }

    #[test]
    fn etag_change_between_blocks_is_an_error() {
        let mut c = BlockCursor::new(0);
        c.accept(block(0, true, 0), Some(ETAG), None, 16).unwrap();
        let other: &[u8] = &[9; 8];
        assert_eq!(
            c.accept(block(1, false, 0), Some(other), None, 3),
            Err(TransferError::EtagChanged)
        );
        assert_eq!(
            c.accept(block(1, false, 0), None, None, 3),
            Err(TransferError::EtagChanged)
        );
        assert_eq!(c.accept(block(1, false, 0), Some(ETAG), None, 3), Ok(false));
    }

    #[test]
    fn an_etag_longer_than_8_bytes_is_refused() {
        let mut c = BlockCursor::new(0);
        assert_eq!(
            c.accept(block(0, true, 0), Some(&[7; 9]), None, 16),
            Err(TransferError::BadEtag)
        );
    }

    #[test]
    fn message_ids_are_consecutive_and_wrap() {
        let mut ids = MessageIds { next: u16::MAX };
        assert_eq!((ids.fresh(), ids.fresh()), (u16::MAX, 0));
        let mut rng = XorShift::new(1);
        let mut a = MessageIds::starting_at_random(&mut rng);
        let mut b = MessageIds::starting_at_random(&mut rng);
        assert_ne!(a.fresh(), b.fresh(), "two endpoints start apart");
    }

    #[test]
    fn device_payload_is_the_firmware_encoding() {
        let request = DeviceRequest {
            pid: b"PID",
            fw_type: 3,
            version: 0x0102_0003,
            offset: Some(0),
        };
        let payload = DevicePayload::new(&request).unwrap();
        assert_eq!(
            payload.as_bytes(),
            [3, b'P', b'I', b'D', 3, 3, 0, 2, 1, 0, 0, 0, 0]
        );
        let long = [b'x'; 255];
        let longest = DeviceRequest {
            pid: &long,
            ..request
        };
        assert_eq!(
            DevicePayload::new(&longest).unwrap().as_bytes().len(),
            iot_ota::firmware::MAX_PAYLOAD_LEN
        );
        assert!(DevicePayload::new(&DeviceRequest {
            pid: b"",
            ..request
        })
        .is_none());
    }

    #[test]
    fn total_must_match_size2() {
        let mut c = BlockCursor::new(0);
        c.accept(block(0, true, 0), Some(ETAG), Some(20), 16)
            .unwrap();
        assert_eq!(
            c.accept(block(1, false, 0), Some(ETAG), None, 3),
            Err(TransferError::SizeMismatch { size2: 20, got: 19 })
        );
        let mut c = BlockCursor::new(0);
        c.accept(block(0, true, 0), Some(ETAG), Some(20), 16)
            .unwrap();
        assert_eq!(
            c.accept(block(1, true, 0), Some(ETAG), None, 16),
            Err(TransferError::SizeMismatch { size2: 20, got: 32 })
        );
        let mut c = BlockCursor::new(0);
        c.accept(block(0, true, 0), Some(ETAG), Some(20), 16)
            .unwrap();
        assert_eq!(
            c.accept(block(1, false, 0), Some(ETAG), Some(21), 4),
            Err(TransferError::Size2Changed {
                before: 20,
                now: 21
            })
        );
    }

    #[test]
    fn short_or_oversized_blocks_are_refused() {
        let mut c = BlockCursor::new(0);
        assert_eq!(
            c.accept(block(0, true, 0), Some(ETAG), None, 15),
            Err(TransferError::BlockLength {
                num: 0,
                len: 15,
                size: 16
            })
        );
        assert_eq!(
            c.accept(block(0, false, 0), Some(ETAG), None, 17),
            Err(TransferError::BlockLength {
                num: 0,
                len: 17,
                size: 16
            })
        );
        // An empty last block is a valid empty body.
        assert_eq!(
            c.accept(block(0, false, 0), Some(ETAG), Some(0), 0),
            Ok(false)
        );
        assert_eq!(c.progress().to_string(), " 100%  1/1 blocks  0/0 B");
    }

    #[test]
    fn answer_without_block2_is_the_whole_body_only_first() {
        let mut c = BlockCursor::new(6);
        assert_eq!(c.accept(None, None, None, 8), Ok(false));
        assert_eq!(c.progress().bytes, 8);
        let mut c = BlockCursor::new(0);
        c.accept(block(0, true, 0), None, None, 16).unwrap();
        assert_eq!(
            c.accept(None, None, None, 8),
            Err(TransferError::MissingBlock2)
        );
        assert_eq!(
            c.accept(Some(Err(BlockError::ReservedSzx)), None, None, 8),
            Err(TransferError::BadBlock2)
        );
    }

    #[test]
    fn block_numbers_stop_at_20_bits() {
        let mut c = BlockCursor::new(0);
        c.position = u64::from(Block::MAX_NUM) * 16;
        assert_eq!(c.next_block().unwrap().num, Block::MAX_NUM);
        c.position += 16;
        assert_eq!(c.next_block(), Err(TransferError::TooManyBlocks));
    }

    #[test]
    fn progress_line_shows_percent_blocks_and_bytes() {
        let p = Progress {
            bytes: 13312,
            blocks: 13,
            total: Some(30000),
            block_size: 1024,
        };
        assert_eq!(p.to_string(), "  44%  13/30 blocks  13312/30000 B");
        let p = Progress { total: None, ..p };
        assert_eq!(p.to_string(), "  13 blocks  13312 B");
        let p = Progress {
            blocks: 1,
            bytes: 8,
            ..p
        };
        assert_eq!(p.to_string(), "  1 block  8 B");
    }
}
