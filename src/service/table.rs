//! A bounded, expiring map for per-peer state (transfers, rate limits):
//! everything that grows with the number of peers goes through it, so a
//! flood of spoofed sources costs at most `capacity` entries.
//!
//! Storage grows on demand up to what `capacity` keys need and never
//! beyond, so a server with few devices stays small; once grown (after
//! warm-up, or after a flood), inserting, updating and evicting never
//! allocate. Time is injected (milliseconds on any monotonic clock the
//! caller likes), so the table is sans-IO.

use crate::hash::KeyedBuild;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A map of at most `capacity` entries. When full, inserting a new key
/// evicts about the least recently written one: a key is queued again when
/// it is written after half a table's worth of other writes, so a peer in
/// the middle of a download is not pushed out by idle ones, and an update
/// costs one hash lookup. Entries older than `lifetime_ms` read as absent.
#[derive(Debug)]
pub(crate) struct BoundedTable<K, V> {
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
    /// An empty table for up to `capacity` keys (at least 1), hashed with
    /// the secret `keys`.
    pub(crate) fn new(capacity: usize, lifetime_ms: u64, keys: [u64; 2]) -> Self {
        BoundedTable {
            map: HashMap::with_hasher(KeyedBuild::new(keys)),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            lifetime_ms,
            next_seq: 0,
            settled: false,
        }
    }

    /// Reserves the eviction queue's full length now (twice the capacity),
    /// for a table whose keys are rewritten all the time: its queue would
    /// otherwise grow in steps long after the set of keys stopped growing.
    /// Pages of it are only touched as it fills.
    pub(crate) fn reserve_queue(&mut self) {
        self.order
            .reserve(self.capacity.saturating_mul(2).saturating_add(1));
    }

    /// The live value for `key`, if one was stored within the lifetime.
    pub(crate) fn get(&self, key: &K, now_ms: u64) -> Option<&V> {
        self.map
            .get(key)
            .filter(|e| now_ms.saturating_sub(e.stamp_ms) < self.lifetime_ms)
            .map(|e| &e.value)
    }

    /// The live value for `key` to change in place; its age is unchanged.
    pub(crate) fn get_mut(&mut self, key: &K, now_ms: u64) -> Option<&mut V> {
        let lifetime = self.lifetime_ms;
        self.map
            .get_mut(key)
            .filter(|e| now_ms.saturating_sub(e.stamp_ms) < lifetime)
            .map(|e| &mut e.value)
    }

    /// Stores `value` for `key`, stamped `now_ms`. A new key in a full
    /// table evicts about the least recently written key first.
    pub(crate) fn insert(&mut self, key: K, value: V, now_ms: u64) {
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

    /// Calls `visit` with every live value (stored within the lifetime): a
    /// walk over the whole table, for rare questions (a file replaced, a
    /// download ended), never per request.
    pub(crate) fn for_each_live(&self, now_ms: u64, mut visit: impl FnMut(&V)) {
        for e in self.map.values() {
            if now_ms.saturating_sub(e.stamp_ms) < self.lifetime_ms {
                visit(&e.value);
            }
        }
    }

    /// Number of stored keys, live or expired: never more than `capacity`.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Every stored key and its value, live or expired, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, e)| (k, &e.value))
    }

    /// The bound given to [`BoundedTable::new`].
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [u64; 2] = [0x1234_5678, 0x9abc_def0];

    #[test]
    fn entries_expire_after_lifetime() {
        let mut t = BoundedTable::new(4, 1000, KEYS);
        t.insert(1u32, "a", 0);
        assert_eq!(t.get(&1, 999), Some(&"a"));
        assert_eq!(t.get(&1, 1000), None);
    }

    #[test]
    fn full_table_evicts_oldest_inserted() {
        let mut t = BoundedTable::new(3, u64::MAX, KEYS);
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
        let mut t = BoundedTable::new(3, u64::MAX, KEYS);
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
            let mut t = BoundedTable::new(256, u64::MAX, KEYS);
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
        let mut t = BoundedTable::new(100, 50, KEYS);
        for k in 0..100_000u32 {
            t.insert(k, (), u64::from(k));
            assert!(t.len() <= 100);
        }
        assert_eq!(t.capacity(), 100);
    }
}
