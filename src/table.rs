//! A bounded, expiring map for per-peer state (legacy continuations, rate
//! limits): everything that grows with the number of peers goes through it,
//! so a flood of spoofed sources costs at most `capacity` entries.
//!
//! All storage is allocated in [`BoundedTable::new`]; inserting, updating
//! and evicting never allocate afterwards. Time is injected (milliseconds
//! on any monotonic clock the caller likes), so the table is sans-IO.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A map of at most `capacity` entries; when full, inserting a new key
/// evicts the key written longest ago (an insert of an existing key counts
/// as a write), so a peer in the middle of a download is not pushed out by
/// idle ones. Entries older than `lifetime_ms` read as absent.
#[derive(Debug)]
pub struct BoundedTable<K, V> {
    map: HashMap<K, Entry<V>>,
    /// Keys in write order, each with the write's sequence number; a key
    /// written again is queued again and its older queue slots go stale
    /// (their sequence number no longer matches the entry's).
    order: VecDeque<(K, u64)>,
    capacity: usize,
    lifetime_ms: u64,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    stamp_ms: u64,
    seq: u64,
}

impl<K: Hash + Eq + Copy, V> BoundedTable<K, V> {
    /// An empty table for up to `capacity` keys (at least 1).
    pub fn new(capacity: usize, lifetime_ms: u64) -> Self {
        let capacity = capacity.max(1);
        BoundedTable {
            // Twice the room: hashbrown then always rehashes in place
            // instead of growing when removals leave tombstones.
            map: HashMap::with_capacity(capacity.saturating_mul(2)),
            // Room for one stale slot per live key before compaction.
            order: VecDeque::with_capacity(capacity.saturating_mul(2)),
            capacity,
            lifetime_ms,
            next_seq: 0,
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
    /// table evicts the oldest-inserted key first.
    pub fn insert(&mut self, key: K, value: V, now_ms: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.order.len() >= self.order.capacity() {
            // Drop stale slots in place (no allocation): at most one live
            // slot per key remains, so at most `capacity`.
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|entry| entry.seq == *s));
        }
        if let Some(entry) = self.map.get_mut(&key) {
            *entry = Entry {
                value,
                stamp_ms: now_ms,
                seq,
            };
            self.order.push_back((key, seq));
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some((oldest, s)) => {
                    if self.map.get(&oldest).is_some_and(|entry| entry.seq == s) {
                        self.map.remove(&oldest);
                    }
                }
                None => break,
            }
        }
        self.order.push_back((key, seq));
        self.map.insert(
            key,
            Entry {
                value,
                stamp_ms: now_ms,
                seq,
            },
        );
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
        // Key 0 is written again (a peer still downloading): 1 is now the
        // least recently written and goes first.
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
        assert!(t.order.len() <= t.order.capacity());
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
