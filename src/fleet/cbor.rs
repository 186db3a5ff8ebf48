//! The little CBOR (RFC 8949) the fleet speaks: a decoder for one flat map
//! of a report, over borrowed bytes, and an encoder for the status view.
//!
//! The decoder takes definite-length items only: a map of at most
//! [`MAX_ENTRIES`] entries whose keys are text or unsigned integers and
//! whose values are unsigned integers, text or byte strings. Anything else
//! (nesting, floats, tags, indefinite lengths, trailing bytes) is an error:
//! a report needs nothing more, and every item costs a bounded amount of
//! work. No allocation, no panic on any input.

use core::fmt;

/// Most entries a report map may have.
pub const MAX_ENTRIES: usize = 16;

/// A key or a value of a report map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// Major type 0.
    Uint(u64),
    /// Major type 3, valid UTF-8.
    Text(&'a str),
    /// Major type 2.
    Bytes(&'a [u8]),
}

/// Why a payload is not a report map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CborError {
    /// The bytes end inside an item.
    Truncated,
    /// The top-level item is not a map.
    NotAMap,
    /// More than [`MAX_ENTRIES`] entries.
    TooManyEntries,
    /// An item of a kind a report cannot hold (a nested array or map, a
    /// negative number, a float, a tag, an indefinite length).
    Unsupported,
    /// A text string that is not UTF-8.
    NotUtf8,
    /// Bytes after the map.
    Trailing,
}

impl fmt::Display for CborError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CborError::Truncated => "CBOR payload ends inside an item",
            CborError::NotAMap => "CBOR payload must be a map",
            CborError::TooManyEntries => "CBOR map has more than 16 entries",
            CborError::Unsupported => {
                "CBOR map keys and values must be unsigned integers or strings"
            }
            CborError::NotUtf8 => "CBOR text string is not UTF-8",
            CborError::Trailing => "bytes after the CBOR map",
        })
    }
}

/// The entries of a map, in the order sent.
#[derive(Debug, Clone, Copy)]
pub struct Map<'a> {
    entries: [(Item<'a>, Item<'a>); MAX_ENTRIES],
    len: usize,
}

impl<'a> Map<'a> {
    /// The entries.
    pub fn entries(&self) -> &[(Item<'a>, Item<'a>)] {
        self.entries.get(..self.len).unwrap_or(&[])
    }
}

/// Decodes `bytes` as one map.
///
/// # Errors
/// [`CborError`] for anything but a flat map of the items [`Item`] names.
pub fn decode_map(bytes: &[u8]) -> Result<Map<'_>, CborError> {
    let mut cursor = Cursor { bytes, at: 0 };
    let (major, count) = cursor.head()?;
    if major != 5 {
        return Err(CborError::NotAMap);
    }
    let count = usize::try_from(count).map_err(|_| CborError::TooManyEntries)?;
    if count > MAX_ENTRIES {
        return Err(CborError::TooManyEntries);
    }
    let mut map = Map {
        entries: [(Item::Uint(0), Item::Uint(0)); MAX_ENTRIES],
        len: count,
    };
    for slot in map.entries.iter_mut().take(count) {
        *slot = (cursor.item()?, cursor.item()?);
    }
    if cursor.at != bytes.len() {
        return Err(CborError::Trailing);
    }
    Ok(map)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, CborError> {
        let b = *self.bytes.get(self.at).ok_or(CborError::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CborError> {
        let n = usize::try_from(n).map_err(|_| CborError::Truncated)?;
        let end = self.at.checked_add(n).ok_or(CborError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(CborError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    /// The major type and argument of the next item's head.
    fn head(&mut self) -> Result<(u8, u64), CborError> {
        let initial = self.byte()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let argument = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let raw = self.take(1 << (info - 24))?;
                raw.iter().fold(0u64, |v, &b| v << 8 | u64::from(b))
            }
            _ => return Err(CborError::Unsupported),
        };
        Ok((major, argument))
    }

    fn item(&mut self) -> Result<Item<'a>, CborError> {
        match self.head()? {
            (0, n) => Ok(Item::Uint(n)),
            (2, len) => Ok(Item::Bytes(self.take(len)?)),
            (3, len) => core::str::from_utf8(self.take(len)?)
                .map(Item::Text)
                .map_err(|_| CborError::NotUtf8),
            _ => Err(CborError::Unsupported),
        }
    }
}

/// Appends CBOR items to a `Vec` (the status view, built per request).
#[derive(Debug, Default)]
pub struct Encoder {
    /// The bytes so far.
    pub out: Vec<u8>,
}

impl Encoder {
    fn head(&mut self, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => self.out.push(m | n as u8),
            24..=0xff => self.out.extend_from_slice(&[m | 24, n as u8]),
            0x100..=0xffff => {
                self.out.push(m | 25);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.out.push(m | 26);
                self.out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                self.out.push(m | 27);
                self.out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    /// An unsigned integer.
    pub fn uint(&mut self, n: u64) {
        self.head(0, n);
    }

    /// A text string.
    pub fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }

    /// The head of an array of `n` items.
    pub fn array(&mut self, n: usize) {
        self.head(4, n as u64);
    }

    /// The head of a map of `n` pairs.
    pub fn map(&mut self, n: usize) {
        self.head(5, n as u64);
    }

    /// `true` or `false`.
    pub fn bool(&mut self, b: bool) {
        self.out.push(if b { 0xf5 } else { 0xf4 });
    }

    /// `null`.
    pub fn null(&mut self) {
        self.out.push(0xf6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_report_map() {
        // {"e": "d1", "s": 2, "r": 0, "t": "1.0.2"} (RFC 8949 encoding, by hand)
        let bytes = [
            0xa4, 0x61, b'e', 0x62, b'd', b'1', 0x61, b's', 0x02, 0x61, b'r', 0x00, 0x61, b't',
            0x65, b'1', b'.', b'0', b'.', b'2',
        ];
        let map = decode_map(&bytes).unwrap();
        assert_eq!(
            map.entries(),
            &[
                (Item::Text("e"), Item::Text("d1")),
                (Item::Text("s"), Item::Uint(2)),
                (Item::Text("r"), Item::Uint(0)),
                (Item::Text("t"), Item::Text("1.0.2")),
            ]
        );
    }

    #[test]
    fn decodes_long_arguments_and_integer_keys() {
        // {1: 0x01000002, 2: h'ab'}
        let bytes = [0xa2, 0x01, 0x1a, 0x01, 0x00, 0x00, 0x02, 0x02, 0x41, 0xab];
        let map = decode_map(&bytes).unwrap();
        assert_eq!(map.entries()[0], (Item::Uint(1), Item::Uint(0x0100_0002)));
        assert_eq!(map.entries()[1], (Item::Uint(2), Item::Bytes(&[0xab])));
    }

    #[test]
    fn refuses_what_a_report_cannot_hold() {
        for (bytes, error) in [
            (&[][..], CborError::Truncated),
            (&[0x80], CborError::NotAMap),
            (&[0xa1, 0x01], CborError::Truncated),
            (&[0xa1, 0x01, 0xa0], CborError::Unsupported),
            (&[0xa1, 0x01, 0x20], CborError::Unsupported),
            (&[0xa1, 0x01, 0xf9, 0, 0], CborError::Unsupported),
            (&[0xbf, 0xff], CborError::Unsupported),
            (&[0xa1, 0x01, 0x62, 0xff, 0xfe], CborError::NotUtf8),
            (&[0xa0, 0x00], CborError::Trailing),
            (&[0xb1], CborError::TooManyEntries),
            (
                &[
                    0xa1, 0x01, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ],
                CborError::Truncated,
            ),
        ] {
            assert_eq!(decode_map(bytes).unwrap_err(), error, "{bytes:02x?}");
        }
    }

    #[test]
    fn no_input_panics() {
        let mut x = 0x1234_5678u32;
        for _ in 0..20_000 {
            let mut bytes = [0u8; 12];
            for b in &mut bytes {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            bytes[0] = 0xa0 | (bytes[0] & 0x1f);
            let _ = decode_map(&bytes[..(x as usize % 13)]);
        }
    }

    #[test]
    fn encodes_what_it_decodes() {
        let mut e = Encoder::default();
        e.map(2);
        e.text("s");
        e.uint(300);
        e.text("e");
        e.text("x");
        let map = decode_map(&e.out).unwrap();
        assert_eq!(map.entries()[0], (Item::Text("s"), Item::Uint(300)));
    }
}
