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
//! This module has no I/O, no clock and no logging. One file per concern:
//! `message` ([`Message`], [`Header`]), `emit` ([`Emitter`]), `block`
//! ([`Block`]), `block_get` (the fast path's [`BlockGet`] and
//! `emit_block_ack`); the constants, errors and the option and uint
//! codec they share are here.

mod block;
mod block_get;
mod emit;
mod message;

pub use block::{Block, BlockError};
pub(crate) use block_get::emit_block_ack;
pub use block_get::BlockGet;
pub use emit::{emit_empty, EmitError, Emitter};
pub use message::{Header, Message, Path, PathIter, Query, Segments};

use coap_lite::MessageType;
use core::fmt;

/// The only protocol version (RFC 7252 §3): other versions are ignored.
pub const VERSION: u8 = 1;
/// Fixed header length: Ver/T/TKL, Code, Message ID.
pub const HEADER_LEN: usize = 4;
/// Longest token (RFC 7252 §3: TKL 9 to 15 are reserved).
pub const TOKEN_MAX: usize = 8;
/// Byte that separates options from a non-empty payload.
pub(crate) const PAYLOAD_MARKER: u8 = 0xFF;
/// Uri-Path segments read; a longer path matches no resource of ours:
/// the deepest file of a `--files` tree, and the empty segment that asks
/// for a listing after its deepest directory.
pub const MAX_PATH_SEGMENTS: usize = crate::tree::MAX_DEPTH + 1;
/// Uri-Query values kept; more are reported by [`Segments::overflowed`].
/// Eight: a report's query form has seven fields
/// (`ep pid type version target state result`).
pub const MAX_QUERY_SEGMENTS: usize = 8;
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

#[cfg(test)]
#[path = "../wire_tests.rs"]
mod tests;
