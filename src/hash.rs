//! Hashes: content-derived ids and entity tags, and the keyed hashes of
//! the per-peer tables and the Echo MAC.
//!
//! Nothing here draws randomness: every key comes from the caller, so
//! tests and fuzzers reproduce Echo values and table layouts exactly.

use core::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// FNV-1a, 32-bit, over `bytes`: the image id is this hash of the file name.
///
/// Chosen because it is tiny, dependency-free and stable across platforms and releases
/// (`fnv1a32(b"a") == 0xe40c292c`); it is not a cryptographic hash.
pub const fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

/// FNV-1a, 64-bit, over `bytes`: the entity tag of an image is this hash of its content.
///
/// Content-derived, so the tag is identical on every server and across restarts for the same
/// file (`fnv1a64(b"a") == 0xaf63dc4c8601ec8c`). It detects a replaced image, not an attack.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// FNV-1a 64 over the concatenation of `parts`, without building it.
pub(crate) fn fnv1a64_concat<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.into_iter().flatten() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// See [`Image::body_etag`](crate::catalog::Image::body_etag).
pub const fn body_etag(content_tag: &[u8; 8], offset: u32) -> [u8; 8] {
    if offset == 0 {
        return *content_tag;
    }
    let o = offset.to_le_bytes();
    let t = content_tag;
    let input = [
        t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], o[0], o[1], o[2], o[3],
    ];
    fnv1a64(&input).to_be_bytes()
}

/// FNV-1a 64 as a `Hasher`, for the catalog's maps. Their keys come from
/// the operator's file names, fixed at start-up: a request can look keys
/// up but never add one, so SipHash's resistance to crafted collisions
/// buys nothing here, and FNV over 4 to 256 bytes is several times cheaper
/// per lookup on the hot path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FnvHasher(u64);

impl Default for FnvHasher {
    fn default() -> Self {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// A u64 key (an id's 8 ASCII digits) in one folded multiply instead
    /// of eight FNV rounds.
    fn write_u64(&mut self, n: u64) {
        let product = u128::from(self.0 ^ n) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`FnvHasher`]s for the catalog's maps.
pub(crate) type FnvBuild = BuildHasherDefault<FnvHasher>;

/// Builds [`KeyedHasher`]s from two secret keys that the caller draws
/// (`main` from the operating system; tests and fuzzers pass fixed ones).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedBuild {
    seed: u64,
    key: u64,
}

impl KeyedBuild {
    /// A hasher family keyed by `keys`.
    pub(crate) fn new(keys: [u64; 2]) -> KeyedBuild {
        KeyedBuild {
            seed: keys[0],
            // Odd, so that the multiply is a bijection.
            key: keys[1] | 1,
        }
    }
}

impl BuildHasher for KeyedBuild {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            acc: self.seed,
            key: self.key,
        }
    }
}

/// A keyed hash for per-peer tables, whose keys (source address and port)
/// an attacker chooses.
///
/// Why not SipHash here: the table is looked up on every block, and for an
/// 18-byte peer SipHash costs several times this hash. Why this is still
/// safe: a table only needs collisions to be unpredictable, not a MAC.
/// Each 8-byte word is mixed by a folded 64x64→128-bit multiply with a
/// secret odd key (the construction of foldhash and aHash's fallback), so
/// an attacker who cannot see the keys cannot compute colliding addresses
/// offline, and the only feedback a remote one gets is timing of a
/// bounded table whose worst case is a longer probe sequence, never more
/// memory (the table's capacity is fixed). The Echo MAC, which must be
/// unforgeable, uses SipHash ([`SipKey`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedHasher {
    acc: u64,
    key: u64,
}

/// The high and low halves of a 128-bit product, folded.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.acc = folded_multiply(self.acc ^ u64::from_le_bytes(word), self.key);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            if let Some(head) = word.get_mut(..rest.len()) {
                head.copy_from_slice(rest);
            }
            // The length keeps [1] and [1, 0] apart.
            let tail = u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59);
            self.acc = folded_multiply(self.acc ^ tail, self.key);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.acc = folded_multiply(self.acc ^ u64::from(n) ^ (1 << 62), self.key);
    }

    fn finish(&self) -> u64 {
        folded_multiply(self.acc, self.key.rotate_left(32) | 1)
    }
}

/// A secret key for SipHash-2-4, the Echo MAC (RFC 9175) and the random
/// start of each peer's Message IDs: values a remote peer sees and must not
/// be able to predict or forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipKey(pub [u64; 2]);

impl SipKey {
    /// A SipHash-2-4 hasher with this key.
    pub fn hasher(&self) -> impl Hasher {
        // std's keyed SipHash is deprecated only in favour of crates with
        // more variants; SipHash-2-4 itself is what std's maps use.
        #[allow(deprecated)]
        std::hash::SipHasher::new_with_keys(self.0[0], self.0[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_of_a_is_e40c292c() {
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
    }

    #[test]
    fn fnv1a64_of_a_is_af63dc4c8601ec8c() {
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        let parts: [&[u8]; 3] = [b"ab", b"", b"c"];
        assert_eq!(fnv1a64_concat(parts), fnv1a64(b"abc"));
    }

    #[test]
    fn body_etag_of_offset_0_is_the_content_tag_and_differs_otherwise() {
        let tag = fnv1a64(b"image").to_be_bytes();
        assert_eq!(body_etag(&tag, 0), tag);
        let mut input = tag.to_vec();
        input.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(body_etag(&tag, 7), fnv1a64(&input).to_be_bytes());
        assert_ne!(body_etag(&tag, 7), body_etag(&tag, 8));
    }

    #[test]
    fn keyed_hash_spreads_neighbouring_peers_and_depends_on_the_key() {
        let build = KeyedBuild::new([11, 12]);
        let mut seen = std::collections::HashSet::new();
        for port in 0..4096u16 {
            let key = (
                [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
                port,
            );
            // Bucket index bits (low) and hashbrown's tag bits (top 7).
            let h = build.hash_one(key);
            seen.insert((h & 0xfff, h >> 57));
        }
        assert!(seen.len() > 3900, "{} distinct of 4096", seen.len());
        let other = KeyedBuild::new([11, 14]);
        assert_ne!(build.hash_one(1u64), other.hash_one(1u64));
        assert_ne!(build.hash_one([1u8]), build.hash_one([1u8, 0]));
    }

    #[test]
    fn keyed_hashes_depend_on_their_keys_only() {
        let hash = |keys: [u64; 2]| {
            let mut h = core::hash::BuildHasher::build_hasher(&KeyedBuild::new(keys));
            h.write(b"peer address and port");
            h.finish()
        };
        assert_eq!(hash([1, 2]), hash([1, 2]));
        assert_ne!(hash([1, 2]), hash([1, 4]));
        let sip = |key: SipKey| {
            let mut h = key.hasher();
            h.write(b"echo");
            h.finish()
        };
        assert_eq!(sip(SipKey([3, 4])), sip(SipKey([3, 4])));
        assert_ne!(sip(SipKey([3, 4])), sip(SipKey([4, 3])));
    }
}
