//! CoAP message format (RFC 7252 §3) and the Block option (RFC 7959 §2.2):
//! pure code over byte slices.
//!
//! Two levels, as in smoltcp's `wire`:
//!
//! * [`Message::parse`] is the one checked constructor. It runs every format
//!   check of RFC 7252 §3 in a single pass over the datagram and returns a
//!   view that borrows the token, path, query and payload from the input.
//!   Repeated options are kept in fixed-capacity arrays: nothing is
//!   allocated. Once it returned `Ok`, no accessor of [`Message`] can panic.
//! * [`Emitter`] writes a message into a buffer owned by the caller and
//!   returns its length; it never allocates and fails with
//!   [`EmitError::BufferTooSmall`] instead of writing past the buffer.
//!
//! Options this crate does not act on follow RFC 7252 §5.4.1: an unknown
//! elective option is skipped, an unknown critical one is reported in
//! [`Message::unrecognized_critical`]. A value whose length is outside the
//! range of RFC 7252 §5.10, or a second occurrence of a non-repeatable
//! option, counts as unrecognised (§5.4.3, §5.4.5).
//!
//! This module has no I/O, no clock and no logging.

use coap_lite::{CoapOption, MessageClass, MessageType};
use core::fmt;

/// The only protocol version (RFC 7252 §3): other versions are ignored.
pub const VERSION: u8 = 1;
/// Fixed header length: Ver/T/TKL, Code, Message ID.
pub const HEADER_LEN: usize = 4;
/// Longest token (RFC 7252 §3: TKL 9 to 15 are reserved).
pub const TOKEN_MAX: usize = 8;
/// Byte that separates options from a non-empty payload.
pub const PAYLOAD_MARKER: u8 = 0xFF;
/// Uri-Path segments kept; a longer path matches no resource of ours:
/// the deepest file of a `--files` tree, and the empty segment that asks
/// for a listing after its deepest directory.
pub const MAX_PATH_SEGMENTS: usize = crate::tree::MAX_DEPTH + 1;
/// Uri-Query values kept; more are reported by [`Segments::overflowed`].
pub const MAX_QUERY_SEGMENTS: usize = 4;
/// Echo option (RFC 9175 §2.2), elective; coap-lite has no name for it.
pub const OPTION_ECHO: u16 = 252;
/// Longest Echo value (RFC 9175 §2.2.1).
pub const ECHO_MAX: usize = 40;

/// Why a datagram is not a CoAP message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParseError {
    /// Fewer than four bytes: there is no header to answer.
    TooShort,
    /// Version other than 1: silently ignored (RFC 7252 §3).
    BadVersion(u8),
    /// A format error after a readable header: RFC 7252 §4.2 says a
    /// Confirmable message is then rejected with an RST, which needs the
    /// type and Message ID carried here.
    Format {
        /// What is wrong.
        error: FormatError,
        /// The message type from the header.
        mtype: MessageType,
        /// The Message ID from the header.
        mid: u16,
    },
}

/// The RFC 7252 §3 format errors that leave the header readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// TKL 9 to 15 (reserved).
    TokenLength,
    /// The datagram ends inside the token.
    TruncatedToken,
    /// Option delta nibble 15 that is not the payload marker.
    OptionDelta15,
    /// Option length nibble 15.
    OptionLength15,
    /// The datagram ends inside an option.
    TruncatedOption,
    /// Option number past 65535.
    OptionNumber,
    /// A payload marker followed by no payload.
    EmptyPayload,
    /// Code 0.00 with a token, options or payload (RFC 7252 §4.1).
    NonEmptyEmpty,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooShort => f.write_str("shorter than a CoAP header"),
            ParseError::BadVersion(_) => f.write_str("CoAP version is not 1"),
            ParseError::Format { error, .. } => error.fmt(f),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FormatError::TokenLength => "token length 9 to 15 is reserved",
            FormatError::TruncatedToken => "message ends inside the token",
            FormatError::OptionDelta15 => "option delta 15 is reserved",
            FormatError::OptionLength15 => "option length 15 is reserved",
            FormatError::TruncatedOption => "message ends inside an option",
            FormatError::OptionNumber => "option number past 65535",
            FormatError::EmptyPayload => "payload marker without payload",
            FormatError::NonEmptyEmpty => "empty message with token, options or payload",
        })
    }
}

/// Up to `N` repeated option values (Uri-Path, Uri-Query), borrowed from
/// the datagram. Values past `N` are counted, not stored.
#[derive(Debug, Clone, Copy)]
pub struct Segments<'a, const N: usize> {
    values: [&'a [u8]; N],
    len: usize,
    total: usize,
}

impl<'a, const N: usize> Segments<'a, N> {
    const EMPTY: Self = Segments {
        values: [&[]; N],
        len: 0,
        total: 0,
    };

    fn push(&mut self, value: &'a [u8]) {
        if let Some(slot) = self.values.get_mut(self.len) {
            *slot = value;
            self.len += 1;
        }
        self.total = self.total.saturating_add(1);
    }

    /// The stored values, in message order.
    pub fn as_slice(&self) -> &[&'a [u8]] {
        self.values.get(..self.len).unwrap_or(&[])
    }

    /// True when the message had more than `N` values: the stored ones are
    /// then only the first `N`.
    pub fn overflowed(&self) -> bool {
        self.total > self.len
    }

    /// True when the message had no value at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// The Uri-Path of a request.
pub type Path<'a> = Segments<'a, MAX_PATH_SEGMENTS>;
/// The Uri-Query values of a request.
pub type Query<'a> = Segments<'a, MAX_QUERY_SEGMENTS>;

/// A parsed CoAP message: the header fields, the options this server or
/// its client act on, and borrowed token and payload.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// CON, NON, ACK or RST.
    pub mtype: MessageType,
    /// The raw code byte (class << 5 | detail).
    pub code: u8,
    /// Message ID.
    pub mid: u16,
    /// Token, 0 to 8 bytes.
    pub token: &'a [u8],
    /// Uri-Path segments.
    pub path: Path<'a>,
    /// Uri-Query values.
    pub query: Query<'a>,
    /// Block2 (RFC 7959): `Err` when its SZX is the reserved 7.
    pub block2: Option<Result<Block, BlockError>>,
    /// Size2 (RFC 7959 §4).
    pub size2: Option<u32>,
    /// ETag (the first one; requests may carry several).
    pub etag: Option<&'a [u8]>,
    /// Content-Format.
    pub content_format: Option<u16>,
    /// Accept.
    pub accept: Option<u16>,
    /// Max-Age.
    pub max_age: Option<u32>,
    /// Echo (RFC 9175).
    pub echo: Option<&'a [u8]>,
    /// Observe (RFC 7641): 0 registers, 1 deregisters in a GET.
    pub observe: Option<u32>,
    /// Proxy-Uri or Proxy-Scheme is present: a forward-proxy request,
    /// answered 5.05 by an endpoint that is no proxy (RFC 7252 §5.10.2).
    pub proxy: bool,
    /// The first critical option that is unknown, repeated although not
    /// repeatable, or of a length outside its range: a request carrying it
    /// gets 4.02 Bad Option (RFC 7252 §5.4.1).
    pub unrecognized_critical: Option<u16>,
    /// Payload, empty when there is none.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parses one datagram, with every format check of RFC 7252 §3.
    ///
    /// # Errors
    /// [`ParseError::TooShort`] and [`ParseError::BadVersion`] when nothing
    /// may be answered; [`ParseError::Format`] with the header fields a
    /// reset needs otherwise.
    pub fn parse(datagram: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let (
            Header {
                mtype,
                code,
                mid,
                token,
            },
            mut rest,
        ) = Header::parse(datagram)?;
        let format = |error| ParseError::Format { error, mtype, mid };

        let mut msg = Message {
            mtype,
            code,
            mid,
            token,
            path: Segments::EMPTY,
            query: Segments::EMPTY,
            block2: None,
            size2: None,
            etag: None,
            content_format: None,
            accept: None,
            max_age: None,
            echo: None,
            observe: None,
            proxy: false,
            unrecognized_critical: None,
            payload: &[],
        };

        let mut number: u32 = 0;
        let mut seen = Seen::default();
        while let Some((&first, after)) = rest.split_first() {
            if first == PAYLOAD_MARKER {
                if after.is_empty() {
                    return Err(format(FormatError::EmptyPayload));
                }
                msg.payload = after;
                break;
            }
            let (delta, after) = option_field(first >> 4, after)
                .map_err(|e| format(e.with_nibble(FormatError::OptionDelta15)))?;
            let (length, after) = option_field(first & 0x0F, after)
                .map_err(|e| format(e.with_nibble(FormatError::OptionLength15)))?;
            number += delta;
            let number16 = u16::try_from(number).map_err(|_| format(FormatError::OptionNumber))?;
            let (value, after) = after
                .split_at_checked(length as usize)
                .ok_or(format(FormatError::TruncatedOption))?;
            msg.take_option(number16, value, &mut seen);
            rest = after;
        }
        Ok(msg)
    }

    /// The code as coap-lite's vocabulary.
    pub fn class(&self) -> MessageClass {
        MessageClass::from(self.code)
    }

    /// Records one option; anything not understood becomes
    /// `unrecognized_critical` when its number is odd (critical).
    fn take_option(&mut self, number: u16, value: &'a [u8], seen: &mut Seen) {
        let len = value.len();
        let understood = match CoapOption::from(number) {
            CoapOption::UriHost if (1..=255).contains(&len) && !seen.host => {
                seen.host = true;
                true
            }
            CoapOption::UriPort if len <= 2 && !seen.port => {
                seen.port = true;
                true
            }
            CoapOption::UriPath if len <= 255 => {
                self.path.push(value);
                true
            }
            CoapOption::UriQuery if len <= 255 => {
                self.query.push(value);
                true
            }
            CoapOption::Accept if len <= 2 && self.accept.is_none() => {
                self.accept = decode_uint(value).and_then(|v| u16::try_from(v).ok());
                true
            }
            CoapOption::Block2 if len <= 3 && self.block2.is_none() => {
                self.block2 = Some(Block::decode(value));
                true
            }
            CoapOption::Size2 if len <= 4 && self.size2.is_none() => {
                self.size2 = decode_uint(value);
                true
            }
            CoapOption::ETag if (1..=8).contains(&len) => {
                self.etag.get_or_insert(value);
                true
            }
            CoapOption::ContentFormat if len <= 2 && self.content_format.is_none() => {
                self.content_format = decode_uint(value).and_then(|v| u16::try_from(v).ok());
                true
            }
            CoapOption::Observe if len <= 3 && self.observe.is_none() => {
                self.observe = decode_uint(value);
                true
            }
            CoapOption::MaxAge if len <= 4 && self.max_age.is_none() => {
                self.max_age = decode_uint(value);
                true
            }
            // RFC 7252 §5.10.2: recognised, so that the request is answered
            // 5.05 rather than 4.02.
            CoapOption::ProxyUri if (1..=1034).contains(&len) => {
                self.proxy = true;
                true
            }
            CoapOption::ProxyScheme if (1..=255).contains(&len) => {
                self.proxy = true;
                true
            }
            CoapOption::Unknown(OPTION_ECHO) if (1..=ECHO_MAX).contains(&len) => {
                if self.echo.is_none() {
                    self.echo = Some(value);
                }
                true
            }
            _ => false,
        };
        if !understood && is_critical(number) && self.unrecognized_critical.is_none() {
            self.unrecognized_critical = Some(number);
        }
    }
}

/// The fixed header and the token: all a reply needs to be addressed,
/// readable even from a datagram whose options are not (a truncated one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header<'a> {
    /// CON, NON, ACK or RST.
    pub mtype: MessageType,
    /// The raw code byte.
    pub code: u8,
    /// Message ID.
    pub mid: u16,
    /// Token, 0 to 8 bytes.
    pub token: &'a [u8],
}

impl<'a> Header<'a> {
    /// Parses the first 4 bytes and the token, with the RFC 7252 §3 checks
    /// that concern them; returns the header and the bytes after the token.
    ///
    /// # Errors
    /// As [`Message::parse`], for the header and token only.
    pub fn parse(datagram: &'a [u8]) -> Result<(Header<'a>, &'a [u8]), ParseError> {
        let (header, rest) = datagram
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(ParseError::TooShort)?;
        let version = header[0] >> 6;
        if version != VERSION {
            return Err(ParseError::BadVersion(version));
        }
        let mtype = message_type(header[0] >> 4);
        let tkl = usize::from(header[0] & 0x0F);
        let code = header[1];
        let mid = u16::from_be_bytes([header[2], header[3]]);
        let format = |error| ParseError::Format { error, mtype, mid };
        if tkl > TOKEN_MAX {
            return Err(format(FormatError::TokenLength));
        }
        if code == 0 && !(tkl == 0 && rest.is_empty()) {
            return Err(format(FormatError::NonEmptyEmpty));
        }
        let (token, rest) = rest
            .split_at_checked(tkl)
            .ok_or(format(FormatError::TruncatedToken))?;
        Ok((
            Header {
                mtype,
                code,
                mid,
                token,
            },
            rest,
        ))
    }

    /// True for a request code: any non-empty code of class 0, assigned
    /// or not (RFC 7252 §5.8: an unassigned method is answered 4.05).
    pub fn is_request(&self) -> bool {
        self.code != 0 && self.code >> 5 == 0
    }
}

/// The request forms the server's fast path answers: a Confirmable GET of
/// a block after the first, of `/updates/{id}` or of `/updates` (the
/// legacy protocol, with or without the device payload), with nothing
/// else that needs a decision. [`BlockGet::parse`] accepts a datagram only
/// when [`Message::parse`] accepts it too and reads the same request from
/// it, so that the fast path can answer it as the general one would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGet<'a> {
    /// Message ID.
    pub mid: u16,
    /// Token, 0 to 8 bytes.
    pub token: &'a [u8],
    /// `Some`: the second Uri-Path segment of `/updates/{id}`, exactly 8
    /// bytes (an image id's form); `None`: `/updates`.
    pub id: Option<&'a [u8]>,
    /// Block2, with NUM > 0 and a valid SZX.
    pub block: Block,
    /// A Size2 option was present (RFC 7959 §4: the reply then carries the
    /// body's size).
    pub size2: bool,
    /// Echo (RFC 9175), when present once.
    pub echo: Option<&'a [u8]>,
    /// The payload: always empty for `/updates/{id}`.
    pub payload: &'a [u8],
}

impl<'a> BlockGet<'a> {
    /// The fast path's request, or `None` for anything else; precisely,
    /// `Some` only for a datagram that
    ///
    /// - has version 1, type CON, code 0.01 (GET) and a token of 0 to 8 bytes;
    /// - carries exactly these options: Uri-Path `updates`, optionally a
    ///   second Uri-Path of 8 bytes, one Block2 of at most 3 bytes with
    ///   NUM > 0 and SZX 0 to 6, and optionally one Size2 (at most 4
    ///   bytes) and one Echo (1 to 40 bytes): no Uri-Query, Observe,
    ///   Accept, ETag, Uri-Host, Uri-Port, proxy option, unknown option
    ///   (elective or critical) or repeated one;
    /// - has no payload when it names an id (a payload after `/updates`
    ///   is taken as it is: what it says is for the service to decide),
    ///   and is well formed to its last byte.
    ///
    /// Everything else, malformed datagrams included, is left to
    /// [`Message::parse`] and the general path, which also decides what to
    /// answer to them. The walk reads each option header with the same
    /// code as [`Message::parse`].
    pub fn parse(datagram: &'a [u8]) -> Option<BlockGet<'a>> {
        // The header as bytes: version 1, CON, a token of at most 8 bytes,
        // GET; what `Header::parse` checks besides is then true (code 0.01
        // is no empty message), so every datagram that is not this form
        // costs a few comparisons here.
        let ([first, code, mid_hi, mid_lo], rest) = datagram.split_first_chunk::<4>()?;
        let tkl = usize::from(first & 0x0F);
        if first & 0xF0 != (VERSION << 6) || *code != GET || tkl > TOKEN_MAX {
            return None;
        }
        let (token, rest) = rest.split_at_checked(tkl)?;
        // The options up to Block2, compared as bytes: an option whose
        // delta and length are below 13 has one encoding only (RFC 7252
        // §3.1), and any other option before Block2 (numbers 1 to 22)
        // would not be accepted anyway, so this reads what the walk of
        // `Message::parse` reads. Uri-Path `updates`, then maybe a
        // Uri-Path of 8 bytes:
        let (updates, rest) = rest.split_first_chunk::<8>()?;
        if updates != b"\xB7updates" {
            return None;
        }
        let (id, rest) = match rest.split_first_chunk::<9>() {
            Some(([0x08, id @ ..], rest)) => (Some(&id[..]), rest),
            _ => (None, rest),
        };
        // Block2 (delta 12) of 1 to 3 bytes (0 bytes is NUM 0).
        let (&first, rest) = rest.split_first()?;
        let (value, rest) = match first {
            0xC1..=0xC3 => rest.split_at_checked(usize::from(first & 0x0F))?,
            _ => return None,
        };
        let block = Block::decode(value).ok().filter(|b| b.num > 0)?;
        // The rest, option by option: Size2 and Echo only, once each.
        let mut rest = rest;
        let mut number = BLOCK2;
        let mut size2 = false;
        let mut echo = None;
        let mut payload: &[u8] = &[];
        while let Some((&first, after)) = rest.split_first() {
            if first == PAYLOAD_MARKER {
                // Not after an id; never empty (a format error).
                if id.is_some() || after.is_empty() {
                    return None;
                }
                payload = after;
                break;
            }
            let (delta, after) = option_field(first >> 4, after).ok()?;
            let (length, after) = option_field(first & 0x0F, after).ok()?;
            // At most 252 before (any larger number returned below), so
            // this stays far from overflow.
            number = number.saturating_add(delta);
            let (value, after) = after.split_at_checked(length as usize)?;
            match number {
                SIZE2 if !size2 && value.len() <= 4 => size2 = true,
                ECHO if echo.is_none() && (1..=ECHO_MAX).contains(&value.len()) => {
                    echo = Some(value)
                }
                _ => return None,
            }
            rest = after;
        }
        Some(BlockGet {
            mid: u16::from_be_bytes([*mid_hi, *mid_lo]),
            token,
            id,
            block,
            size2,
            echo,
            payload,
        })
    }
}

/// Writes the 2.05 reply to a [`BlockGet`]: the bytes [`Emitter`] writes
/// for a block of an `application/octet-stream` body (an ACK with `mid`
/// and `token`, then ETag `etag`, Content-Format 42, Block2 `block`, Size2
/// `size2` when given, and the payload), with one bounds check for all of
/// them rather than one per option. Returns the length.
///
/// # Errors
/// [`EmitError::BufferTooSmall`] when `out` cannot hold the reply or the
/// token is longer than 8 bytes; nothing is written then.
pub fn emit_block_ack(
    out: &mut [u8],
    mid: u16,
    token: &[u8],
    etag: &[u8; 8],
    block: Block,
    size2: Option<u32>,
    payload: &[u8],
) -> Result<usize, EmitError> {
    if token.len() > TOKEN_MAX {
        return Err(EmitError::BufferTooSmall);
    }
    // Everything before the payload (at most 4 + 8 + 11 + 4 + 5 + 1
    // bytes), written on the stack in fixed-size pieces, some wider than
    // their field (the next piece writes over the rest), then copied once.
    let mut head = [0u8; 40];
    let [mid_hi, mid_lo] = mid.to_be_bytes();
    let first = (VERSION << 6) | (message_type_bits(MessageType::Acknowledgement) << 4);
    let mut padded_token = [0u8; TOKEN_MAX];
    for (dst, src) in padded_token.iter_mut().zip(token) {
        *dst = *src;
    }
    let mut pos = put(
        &mut head,
        0,
        [first | token.len() as u8, CONTENT, mid_hi, mid_lo],
        4,
    )?;
    pos = put(&mut head, pos, padded_token, token.len())?;
    // ETag (4): delta 4, length 8; Content-Format (12): delta 8, length 1.
    let [e0, e1, e2, e3, e4, e5, e6, e7] = *etag;
    let options = [0x48, e0, e1, e2, e3, e4, e5, e6, e7, 0x81, OCTET_STREAM];
    pos = put(&mut head, pos, options, options.len())?;
    // Block2 (23): delta 11, a value of 0 to 3 bytes.
    let (value, len) = uint_bytes(block.raw());
    let [v0, v1, v2, _] = value;
    pos = put(&mut head, pos, [0xB0 | len as u8, v0, v1, v2], 1 + len)?;
    // Size2 (28): delta 5.
    if let Some(size) = size2 {
        let (value, len) = uint_bytes(size);
        let [v0, v1, v2, v3] = value;
        pos = put(&mut head, pos, [0x50 | len as u8, v0, v1, v2, v3], 1 + len)?;
    }
    if !payload.is_empty() {
        pos = put(&mut head, pos, [PAYLOAD_MARKER], 1)?;
    }
    let total = pos
        .checked_add(payload.len())
        .ok_or(EmitError::BufferTooSmall)?;
    let (dst_head, dst_payload) = out
        .get_mut(..total)
        .and_then(|reply| reply.split_at_mut_checked(pos))
        .ok_or(EmitError::BufferTooSmall)?;
    dst_head.copy_from_slice(head.get(..pos).ok_or(EmitError::BufferTooSmall)?);
    dst_payload.copy_from_slice(payload);
    Ok(total)
}

/// Writes all `N` bytes of `bytes` at `pos` of `buf` and returns the
/// position after the first `used` of them: a copy of a size known at
/// compile time, with one bounds check.
#[inline(always)]
fn put<const N: usize>(
    buf: &mut [u8],
    pos: usize,
    bytes: [u8; N],
    used: usize,
) -> Result<usize, EmitError> {
    let room = buf
        .get_mut(pos..)
        .and_then(|rest| rest.first_chunk_mut::<N>())
        .ok_or(EmitError::BufferTooSmall)?;
    *room = bytes;
    Ok(pos + used.min(N))
}

/// An RFC 7252 §3.2 uint in its fewest bytes, at the start of the array,
/// and how many bytes that is (0 for zero).
#[inline(always)]
fn uint_bytes(value: u32) -> ([u8; 4], usize) {
    let skip = value.leading_zeros() / 8;
    let shifted = value.checked_shl(skip * 8).unwrap_or(0);
    (shifted.to_be_bytes(), 4 - skip as usize)
}

/// The code byte of 2.05 Content.
const CONTENT: u8 = 0x45;
/// Content-Format `application/octet-stream` (RFC 7252 §12.3).
const OCTET_STREAM: u8 = 42;

/// The code byte of GET (0.01).
const GET: u8 = 0x01;
/// Option numbers [`BlockGet::parse`] matches on (RFC 7959 §2.1, §4,
/// RFC 9175 §2.2), as the `u32` its walk counts in.
const BLOCK2: u32 = 23;
const SIZE2: u32 = 28;
const ECHO: u32 = OPTION_ECHO as u32;

/// Non-repeatable options accepted once but not kept in [`Message`]
/// (this server has no virtual hosts).
#[derive(Default)]
struct Seen {
    host: bool,
    port: bool,
}

/// RFC 7252 §5.4.6: odd option numbers are critical.
pub fn is_critical(number: u16) -> bool {
    number & 1 == 1
}

fn message_type(bits: u8) -> MessageType {
    match bits & 0b11 {
        0 => MessageType::Confirmable,
        1 => MessageType::NonConfirmable,
        2 => MessageType::Acknowledgement,
        _ => MessageType::Reset,
    }
}

fn message_type_bits(mtype: MessageType) -> u8 {
    match mtype {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    }
}

/// An extended option delta or length could not be read: which nibble
/// value was at fault is decided by the caller.
#[derive(Debug, Clone, Copy)]
enum FieldError {
    Nibble15,
    Truncated,
}

impl FieldError {
    fn with_nibble(self, nibble15: FormatError) -> FormatError {
        match self {
            FieldError::Nibble15 => nibble15,
            FieldError::Truncated => FormatError::TruncatedOption,
        }
    }
}

/// Decodes an option delta or length nibble and its extension bytes
/// (RFC 7252 §3.1).
fn option_field(nibble: u8, rest: &[u8]) -> Result<(u32, &[u8]), FieldError> {
    match nibble {
        0..=12 => Ok((u32::from(nibble), rest)),
        13 => {
            let (&ext, rest) = rest.split_first().ok_or(FieldError::Truncated)?;
            Ok((u32::from(ext) + 13, rest))
        }
        14 => {
            let (ext, rest) = rest.split_first_chunk::<2>().ok_or(FieldError::Truncated)?;
            Ok((u32::from(u16::from_be_bytes(*ext)) + 269, rest))
        }
        _ => Err(FieldError::Nibble15),
    }
}

/// Decodes an RFC 7252 §3.2 uint of 0 to 4 bytes (leading zeros allowed).
pub fn decode_uint(value: &[u8]) -> Option<u32> {
    if value.len() > 4 {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

/// Encodes `value` as an RFC 7252 §3.2 uint in the fewest bytes (zero is
/// the empty string); returns the used tail of `out`.
pub fn encode_uint(value: u32, out: &mut [u8; 4]) -> &[u8] {
    *out = value.to_be_bytes();
    let skip = (value.leading_zeros() / 8) as usize;
    out.get(skip..).unwrap_or(&[])
}

/// Why a Block option value is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// SZX 7 is reserved (RFC 7959 §2.2): 4.00 Bad Request.
    ReservedSzx,
    /// More than 3 bytes.
    TooLong,
}

/// A Block1/Block2 option value (RFC 7959 §2.2).
///
/// NUM has 20 bits, so a 3-byte value addresses 2^20 blocks: past 4 MiB at
/// 1 KiB blocks. coap-lite's `BlockValue` stops at 12 bits and wraps
/// silently, which is why this codec exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Block number.
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: the block holds `2^(szx + 4)` bytes, 0 to 6.
    pub szx: u8,
}

impl Block {
    /// Largest block number a 3-byte option can carry.
    pub const MAX_NUM: u32 = (1 << 20) - 1;
    /// Largest valid SZX (1024-byte blocks).
    pub const MAX_SZX: u8 = 6;

    /// Block size in bytes, `16 << szx`.
    pub fn size(&self) -> usize {
        16usize << self.szx.min(Self::MAX_SZX)
    }

    /// The byte position of the block's first byte in the body:
    /// `num * 2^(szx + 4)`. The only NUM-to-byte arithmetic of the crate;
    /// at most `(2^20 - 1) * 1024`, so it never overflows a `u64`.
    pub fn position(&self) -> u64 {
        u64::from(self.num) << (u32::from(self.szx.min(Self::MAX_SZX)) + 4)
    }

    /// The block of size `2^(szx + 4)` that starts at or contains byte
    /// `position` (RFC 7959 §2.4: a server answering with smaller blocks
    /// than asked keeps the byte position). `None` when its number would
    /// not fit the 20 bits of a Block option. `more` is left clear: only
    /// the body's length tells.
    pub fn at(position: u64, szx: u8) -> Option<Block> {
        let szx = szx.min(Self::MAX_SZX);
        let num = u32::try_from(position >> (u32::from(szx) + 4)).ok()?;
        (num <= Self::MAX_NUM).then_some(Block {
            num,
            more: false,
            szx,
        })
    }

    /// The SZX of a power-of-two block size 16..=1024, `None` otherwise.
    pub fn szx_for_size(size: usize) -> Option<u8> {
        match size {
            16 => Some(0),
            32 => Some(1),
            64 => Some(2),
            128 => Some(3),
            256 => Some(4),
            512 => Some(5),
            1024 => Some(6),
            _ => None,
        }
    }

    /// Decodes an option value of 0 to 3 bytes.
    ///
    /// # Errors
    /// [`BlockError::TooLong`] past 3 bytes, [`BlockError::ReservedSzx`]
    /// for SZX 7.
    pub fn decode(value: &[u8]) -> Result<Block, BlockError> {
        if value.len() > 3 {
            return Err(BlockError::TooLong);
        }
        let raw = decode_uint(value).ok_or(BlockError::TooLong)?;
        let szx = (raw & 0x07) as u8;
        if szx == 7 {
            return Err(BlockError::ReservedSzx);
        }
        Ok(Block {
            num: raw >> 4,
            more: raw & 0x08 != 0,
            szx,
        })
    }

    /// Encodes into the fewest bytes; `num` is masked to 20 bits and `szx`
    /// capped at 6, so the result is always a valid 0 to 3 byte value.
    pub fn encode<'o>(&self, out: &'o mut [u8; 4]) -> &'o [u8] {
        encode_uint(self.raw(), out)
    }

    /// The option value as a number: NUM, M and SZX (below 2^24).
    fn raw(&self) -> u32 {
        ((self.num & Self::MAX_NUM) << 4)
            | (u32::from(self.more) << 3)
            | u32::from(self.szx.min(Self::MAX_SZX))
    }
}

/// The output buffer was too small for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitError {
    /// Not enough room; nothing valid was produced.
    BufferTooSmall,
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("output buffer too small for the message")
    }
}

/// Writes one CoAP message into a caller-owned buffer.
///
/// Options must be added in ascending number order (RFC 7252 §3.1 encodes
/// deltas); a debug build asserts it. Finish with [`Emitter::payload`] or
/// [`Emitter::payload_with`], which return the message length.
#[derive(Debug)]
pub struct Emitter<'b> {
    buf: &'b mut [u8],
    len: usize,
    last_option: u16,
}

impl<'b> Emitter<'b> {
    /// Writes the header and token.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] when `buf` cannot hold them or the
    /// token is longer than 8 bytes.
    pub fn new(
        buf: &'b mut [u8],
        mtype: MessageType,
        code: MessageClass,
        mid: u16,
        token: &[u8],
    ) -> Result<Emitter<'b>, EmitError> {
        if token.len() > TOKEN_MAX {
            return Err(EmitError::BufferTooSmall);
        }
        let mut e = Emitter {
            buf,
            len: 0,
            last_option: 0,
        };
        let [mid_hi, mid_lo] = mid.to_be_bytes();
        e.put(&[
            (VERSION << 6) | (message_type_bits(mtype) << 4) | token.len() as u8,
            u8::from(code),
            mid_hi,
            mid_lo,
        ])?;
        e.put(token)?;
        Ok(e)
    }

    /// Appends bytes or fails without writing.
    fn put(&mut self, bytes: &[u8]) -> Result<(), EmitError> {
        let end = self
            .len
            .checked_add(bytes.len())
            .ok_or(EmitError::BufferTooSmall)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(EmitError::BufferTooSmall)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Appends one option.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`]; the message is then unusable.
    pub fn option(&mut self, number: u16, value: &[u8]) -> Result<(), EmitError> {
        debug_assert!(number >= self.last_option, "options out of order");
        let delta = number.saturating_sub(self.last_option);
        if delta < 13 && value.len() < 13 {
            // Every option a reply carries: one header byte, no extensions.
            let end = self
                .len
                .checked_add(1 + value.len())
                .ok_or(EmitError::BufferTooSmall)?;
            let (header, rest) = self
                .buf
                .get_mut(self.len..end)
                .and_then(|room| room.split_first_mut())
                .ok_or(EmitError::BufferTooSmall)?;
            *header = ((delta as u8) << 4) | value.len() as u8;
            rest.copy_from_slice(value);
            self.len = end;
            self.last_option = number;
            return Ok(());
        }
        let length = u16::try_from(value.len()).map_err(|_| EmitError::BufferTooSmall)?;
        let (delta_nibble, delta_ext, delta_ext_len) = extended(delta);
        let (length_nibble, length_ext, length_ext_len) = extended(length);
        self.put(&[(delta_nibble << 4) | length_nibble])?;
        self.put(delta_ext.get(..delta_ext_len).unwrap_or(&[]))?;
        self.put(length_ext.get(..length_ext_len).unwrap_or(&[]))?;
        self.put(value)?;
        self.last_option = number;
        Ok(())
    }

    /// Appends an option with a uint value in its shortest form.
    ///
    /// # Errors
    /// As [`Emitter::option`].
    pub fn option_uint(&mut self, number: u16, value: u32) -> Result<(), EmitError> {
        let mut bytes = [0; 4];
        let encoded = encode_uint(value, &mut bytes);
        self.option(number, encoded)
    }

    /// Appends a Block option.
    ///
    /// # Errors
    /// As [`Emitter::option`].
    pub fn option_block(&mut self, number: u16, block: Block) -> Result<(), EmitError> {
        let mut bytes = [0; 4];
        let encoded = block.encode(&mut bytes);
        self.option(number, encoded)
    }

    /// Ends the message with `payload` (no marker when it is empty) and
    /// returns the message length.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`].
    pub fn payload(mut self, payload: &[u8]) -> Result<usize, EmitError> {
        if !payload.is_empty() {
            self.put(&[PAYLOAD_MARKER])?;
            self.put(payload)?;
        }
        Ok(self.len)
    }

    /// Ends the message with a payload of at most `max` bytes that `fill`
    /// writes into the slice it is given and returns the length of; the
    /// marker is dropped again when it wrote nothing.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] when `max` bytes do not fit.
    pub fn payload_with(
        mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<usize, EmitError> {
        let start = self.len.checked_add(1).ok_or(EmitError::BufferTooSmall)?;
        let end = start.checked_add(max).ok_or(EmitError::BufferTooSmall)?;
        let room = self
            .buf
            .get_mut(start..end)
            .ok_or(EmitError::BufferTooSmall)?;
        let written = fill(room).min(max);
        if written > 0 {
            if let Some(marker) = self.buf.get_mut(self.len) {
                *marker = PAYLOAD_MARKER;
            }
            self.len = start + written;
        }
        Ok(self.len)
    }

    /// Ends a message without payload and returns its length.
    pub fn finish(self) -> usize {
        self.len
    }
}

/// Splits a delta or length into its nibble and extension bytes.
fn extended(value: u16) -> (u8, [u8; 2], usize) {
    match value {
        0..=12 => (value as u8, [0, 0], 0),
        13..=268 => (13, [(value - 13) as u8, 0], 1),
        _ => (14, (value - 269).to_be_bytes(), 2),
    }
}

/// Writes an empty message (code 0.00, no token): an RST or an empty ACK.
///
/// # Errors
/// [`EmitError::BufferTooSmall`] when `buf` is shorter than 4 bytes.
pub fn emit_empty(buf: &mut [u8], mtype: MessageType, mid: u16) -> Result<usize, EmitError> {
    Emitter::new(buf, mtype, MessageClass::Empty, mid, &[]).map(Emitter::finish)
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
