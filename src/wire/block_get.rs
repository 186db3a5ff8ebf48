//! The fast path's parser and emitter: [`BlockGet::parse`] for the one
//! request form it answers, [`emit_block_ack`] for its reply.

use super::{
    message_type_bits, option_field, Block, EmitError, ECHO_MAX, OPTION_ECHO, PAYLOAD_MARKER,
    TOKEN_MAX, VERSION,
};
#[cfg(doc)]
use super::{Emitter, Message};
use coap_lite::MessageType;

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
pub(crate) fn emit_block_ack(
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
