//! The Block1/Block2 option value (RFC 7959 §2.2).

use super::{decode_uint, encode_uint};

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
    pub(super) fn raw(&self) -> u32 {
        ((self.num & Self::MAX_NUM) << 4)
            | (u32::from(self.more) << 3)
            | u32::from(self.szx.min(Self::MAX_SZX))
    }
}
