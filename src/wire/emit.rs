//! Writing a message into the caller's buffer: [`Emitter`].

use super::{encode_uint, message_type_bits, Block, PAYLOAD_MARKER, TOKEN_MAX, VERSION};
use coap_lite::{MessageClass, MessageType};
use core::fmt;

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
/// `Emitter::payload_with`, which return the message length.
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
    pub(crate) fn payload_with(
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
