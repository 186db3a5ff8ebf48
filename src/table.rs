//! A bounded, expiring map for per-peer state (transfers, rate limits):
//! everything that grows with the number of peers goes through it, so a
//! flood of spoofed sources costs at most `capacity` entries.
//!
//! Storage grows on demand up to what `capacity` keys need and never
//! beyond, so a server with few devices stays small; once grown (after
//! warm-up, or after a flood), inserting, updating and evicting never
//! allocate. Time is injected (milliseconds on any monotonic clock the
//! caller likes), so the table is sans-IO.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

/// Keys for [`KeyedHasher`], drawn from the operating system's randomness
/// (through std's `RandomState`) once per table.
#[derive(Debug, Clone, Copy)]
pub struct KeyedBuild {
    seed: u64,
    key: u64,
}

impl KeyedBuild {
    /// Fresh random keys.
    pub fn new() -> KeyedBuild {
        let random = RandomState::new();
        KeyedBuild {
            seed: random.hash_one(0x5eed_u64),
            key: random.hash_one(0x006b_6579_u64) | 1,
        }
    }
}

impl Default for KeyedBuild {
    fn default() -> Self {
        KeyedBuild::new()
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
/// an attacker chooses: a folded 64x64→128-bit multiply per 8 bytes with
/// secret random keys, so collisions cannot be computed offline, at a
/// fraction of SipHash's cost for an 18-byte peer. (The same construction
/// as the fast hashers of hashbrown's ecosystem; the Echo MAC, which must
/// be unforgeable, keeps SipHash.)
#[derive(Debug, Clone, Copy)]
pub struct KeyedHasher {
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

/// A map of at most `capacity` entries. When full, inserting a new key
/// evicts about the least recently written one: a key is queued again when
/// it is written after half a table's worth of other writes, so a peer in
/// the middle of a download is not pushed out by idle ones, and an update
/// costs one hash lookup. Entries older than `lifetime_ms` read as absent.
#[derive(Debug)]
pub struct BoundedTable<K, V> {
    map: HashMap<K, Entry<V>, KeyedBuild>,
    /// Keys in queue order, each with the sequence number it was queued
    /// at; a slot whose number no longer matches its entry's is stale.
    order: VecDeque<(K, u64)>,
    capacity: usize,
    lifetime_ms: u64,
    next_seq: u64,
    /// Storage reserved for good the first time the table was full (not
    /// judged by `HashMap::capacity()`, which tombstones make fluctuate).
    settled: bool,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    stamp_ms: u64,
    queued_seq: u64,
}

impl<K: Hash + Eq + Copy, V> BoundedTable<K, V> {
    /// An empty table for up to `capacity` keys (at least 1).
    pub fn new(capacity: usize, lifetime_ms: u64) -> Self {
        BoundedTable {
            map: HashMap::with_hasher(KeyedBuild::new()),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            lifetime_ms,
            next_seq: 0,
            settled: false,
        }
    }

    /// The live value for `key`, if one was stored within the lifetime.
    pub fn get(&self, key: &K, now_ms: u64) -> Option<&V> {
        self.map
            .get(key)
            .filter(|e| now_ms.saturating_sub(e.stamp_ms) < self.lifetime_ms)
            .map(|e| &e.value)
    }

    /// The live value for `key` to change in place; its age is unchanged.
    pub fn get_mut(&mut self, key: &K, now_ms: u64) -> Option<&mut V> {
        let lifetime = self.lifetime_ms;
        self.map
            .get_mut(key)
            .filter(|e| now_ms.saturating_sub(e.stamp_ms) < lifetime)
            .map(|e| &mut e.value)
    }

    /// Stores `value` for `key`, stamped `now_ms`. A new key in a full
    /// table evicts about the least recently written key first.
    pub fn insert(&mut self, key: K, value: V, now_ms: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let requeue_after = (self.capacity / 2) as u64;
        if let Some(entry) = self.map.get_mut(&key) {
            entry.value = value;
            entry.stamp_ms = now_ms;
            if seq.saturating_sub(entry.queued_seq) > requeue_after {
                entry.queued_seq = seq;
                self.queue(key, seq);
            }
            return;
        }
        if self.map.len() >= self.capacity && !self.settled {
            self.settled = true;
            // Full for the first time: room for twice the bound, so that
            // churn from here on only ever rehashes in place (hashbrown
            // grows a map whose tombstones run out only while it is more
            // than half full), and the queue its full length: from now on
            // nothing allocates.
            self.map.reserve(self.capacity);
            self.order.reserve(
                self.capacity
                    .saturating_mul(2)
                    .saturating_sub(self.order.len())
                    + 1,
            );
        }
        while self.map.len() >= self.capacity {
            let Some((oldest, queued)) = self.order.pop_front() else {
                break;
            };
            if self
                .map
                .get(&oldest)
                .is_some_and(|e| e.queued_seq == queued)
            {
                self.map.remove(&oldest);
            }
        }
        self.queue(key, seq);
        self.map.insert(
            key,
            Entry {
                value,
                stamp_ms: now_ms,
                queued_seq: seq,
            },
        );
    }

    /// Queues a slot; drops the stale ones in place first when the queue
    /// holds twice as many slots as keys may live.
    fn queue(&mut self, key: K, seq: u64) {
        if self.order.len() >= self.capacity.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|e| e.queued_seq == *s));
        }
        self.order.push_back((key, seq));
    }

    /// Number of stored keys, live or expired: never more than `capacity`.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bound given to [`BoundedTable::new`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_hash_spreads_neighbouring_peers_and_depends_on_the_key() {
        let build = KeyedBuild::new();
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
        let other = KeyedBuild::new();
        assert_ne!(build.hash_one(1u64), other.hash_one(1u64));
        assert_ne!(build.hash_one([1u8]), build.hash_one([1u8, 0]));
    }

    #[test]
    fn entries_expire_after_lifetime() {
        let mut t = BoundedTable::new(4, 1000);
        t.insert(1u32, "a", 0);
        assert_eq!(t.get(&1, 999), Some(&"a"));
        assert_eq!(t.get(&1, 1000), None);
    }

    #[test]
    fn full_table_evicts_oldest_inserted() {
        let mut t = BoundedTable::new(3, u64::MAX);
        for k in 0..3u32 {
            t.insert(k, k, 0);
        }
        t.insert(3, 3, 2);
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(&0, 2), None, "oldest key 0 evicted");
        assert_eq!(t.get(&1, 2), Some(&1));
        assert_eq!(t.get(&3, 2), Some(&3));
    }

    #[test]
    fn a_rewritten_key_is_evicted_last() {
        let mut t = BoundedTable::new(3, u64::MAX);
        for k in 0..3u32 {
            t.insert(k, k, 0);
        }
        // Key 0 is written again after more than half a table of writes
        // (a peer still downloading): 1 is now the least recently queued.
        t.insert(2, 2, 0);
        t.insert(0, 10, 1);
        t.insert(3, 3, 2);
        assert_eq!(t.get(&0, 2), Some(&10));
        assert_eq!(t.get(&1, 2), None);
        assert_eq!(t.get(&2, 2), Some(&2));
        // Many rewrites of one key neither grow the queue past its room nor
        // lose the other keys.
        for n in 0..10_000u32 {
            t.insert(3, n, 3);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(&2, 3), Some(&2));
        assert!(t.order.len() <= 2 * t.capacity());
    }

    #[test]
    fn storage_stops_growing_once_the_table_has_been_full() {
        // Random hash keys make hashbrown's tombstones fall differently on
        // every run: whatever they do, a full table must never reallocate.
        for _ in 0..20 {
            let mut t = BoundedTable::new(256, u64::MAX);
            for k in 0..257u32 {
                t.insert(k, k, 0);
            }
            // (HashMap::capacity() shrinks as tombstones use up room and
            // comes back on a rehash in place; only a reallocation raises it.)
            let (map_room, queue_room) = (t.map.capacity(), t.order.capacity());
            for k in 257..50_000u32 {
                t.insert(k, k, 0);
                t.insert(k - 7, k, 0);
                assert!(t.map.capacity() <= map_room && t.order.capacity() == queue_room);
            }
        }
    }

    #[test]
    fn never_grows_past_capacity_under_churn() {
        let mut t = BoundedTable::new(100, 50);
        for k in 0..100_000u32 {
            t.insert(k, (), u64::from(k));
            assert!(t.len() <= 100);
        }
        assert_eq!(t.capacity(), 100);
    }
}
