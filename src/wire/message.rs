//! The checked view of a whole message, [`Message::parse`], and of its
//! header alone, [`Header::parse`].

use super::{
    decode_uint, is_critical, message_type, option_field, Block, BlockError, FormatError,
    ParseError, ECHO_MAX, HEADER_LEN, MAX_PATH_SEGMENTS, MAX_QUERY_SEGMENTS, OPTION_ECHO,
    PAYLOAD_MARKER, TOKEN_MAX, VERSION,
};
use coap_lite::{CoapOption, MessageClass, MessageType};

/// Uri-Path (RFC 7252 §5.10).
const OPTION_URI_PATH: u16 = 11;

/// Up to `N` repeated option values (Uri-Query), borrowed from
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

/// The Uri-Path of a request: a view of its options in the datagram,
/// decoded when read, so that a message reserves no room per segment.
///
/// Options are sorted by number, so the Uri-Path options (11) of a message
/// are consecutive: the first with its delta, the others with delta 0.
/// The view holds the bytes of those options and how many were kept; a
/// Uri-Path value longer than 255 bytes is skipped (the parser reports it
/// as an unrecognised critical option). Only the first
/// [`MAX_PATH_SEGMENTS`] values are read; more are reported by
/// [`Path::overflowed`].
#[derive(Clone, Copy, Default)]
pub struct Path<'a> {
    /// The encoded Uri-Path options, headers included.
    options: &'a [u8],
    /// How many values of at most 255 bytes they hold.
    total: usize,
}

impl<'a> Path<'a> {
    /// How many segments [`Path::iter`] yields: at most
    /// [`MAX_PATH_SEGMENTS`].
    pub fn len(&self) -> usize {
        self.total.min(MAX_PATH_SEGMENTS)
    }

    /// True when the message had no Uri-Path at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// True when the message had more than [`MAX_PATH_SEGMENTS`] segments:
    /// the view then reads only the first ones.
    pub fn overflowed(&self) -> bool {
        self.total > MAX_PATH_SEGMENTS
    }

    /// The segments, in message order.
    pub fn iter(&self) -> PathIter<'a> {
        PathIter {
            rest: self.options,
            left: self.len(),
        }
    }

    /// The segment at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        self.iter().nth(index)
    }
}

impl<'a> IntoIterator for Path<'a> {
    type Item = &'a [u8];
    type IntoIter = PathIter<'a>;

    fn into_iter(self) -> PathIter<'a> {
        self.iter()
    }
}

impl core::fmt::Debug for Path<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut list = f.debug_list();
        list.entries(self.iter());
        if self.overflowed() {
            list.entry(&format_args!("(+{})", self.total - MAX_PATH_SEGMENTS));
        }
        list.finish()
    }
}

/// The segments of a [`Path`], decoded one option at a time.
#[derive(Debug, Clone)]
pub struct PathIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for PathIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.left > 0 {
            let Some(value) = self.next_option() else {
                // Unreachable for a view built by the parser.
                self.left = 0;
                return None;
            };
            if value.len() <= 255 {
                self.left -= 1;
                return Some(value);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

impl<'a> PathIter<'a> {
    /// The value of the next option; its delta is skipped (the first
    /// option's delta leads to 11, the others' are 0).
    fn next_option(&mut self) -> Option<&'a [u8]> {
        let (&first, rest) = self.rest.split_first()?;
        let (_, rest) = option_field(first >> 4, rest).ok()?;
        let (length, rest) = option_field(first & 0x0F, rest).ok()?;
        let (value, rest) = rest.split_at_checked(usize::try_from(length).ok()?)?;
        self.rest = rest;
        Some(value)
    }
}

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
            path: Path::default(),
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
        // Where the Uri-Path options start and end in the datagram.
        let mut path_range: Option<(usize, usize)> = None;
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
            if number16 == OPTION_URI_PATH {
                let end = datagram.len() - after.len();
                let start = path_range.map_or(datagram.len() - rest.len(), |(start, _)| start);
                path_range = Some((start, end));
            }
            msg.take_option(number16, value, &mut seen);
            rest = after;
        }
        if let Some((start, end)) = path_range {
            msg.path.options = datagram.get(start..end).unwrap_or_default();
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
                self.path.total = self.path.total.saturating_add(1);
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
    pub(crate) fn is_request(&self) -> bool {
        self.code != 0 && self.code >> 5 == 0
    }
}

/// Non-repeatable options accepted once but not kept in [`Message`]
/// (this server has no virtual hosts).
#[derive(Default)]
struct Seen {
    host: bool,
    port: bool,
}
