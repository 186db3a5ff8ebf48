//! Block-wise transfer (RFC 7959 Block2): [`BlockCursor`], the state of
//! one download without I/O, and what can go wrong with one.

use core::fmt;
use iot_ota::wire::{Block, BlockError};

/// Block size asked for unless told otherwise: the largest of RFC 7959.
pub(crate) const DEFAULT_BLOCK_SIZE: usize = 1024;
/// Longest ETag (RFC 7252 §5.10.6).
const MAX_ETAG_LEN: usize = 8;

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

#[cfg(test)]
mod tests {
    use super::*;

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
