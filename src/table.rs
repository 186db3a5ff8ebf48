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
/// evicts the key inserted longest ago. Entries older than `lifetime_ms`
/// read as absent.
#[derive(Debug)]
pub struct BoundedTable<K, V> {
    map: HashMap<K, Entry<V>>,
    order: VecDeque<K>,
    capacity: usize,
    lifetime_ms: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    stamp_ms: u64,
}

impl<K: Hash + Eq + Copy, V> BoundedTable<K, V> {
    /// An empty table for up to `capacity` keys (at least 1).
    pub fn new(capacity: usize, lifetime_ms: u64) -> Self {
        let capacity = capacity.max(1);
        BoundedTable {
            // Twice the room: hashbrown then always rehashes in place
            // instead of growing when removals leave tombstones.
            map: HashMap::with_capacity(capacity.saturating_mul(2)),
            order: VecDeque::with_capacity(capacity),
            capacity,
            lifetime_ms,
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
        if let Some(entry) = self.map.get_mut(&key) {
            *entry = Entry {
                value,
                stamp_ms: now_ms,
            };
            return;
        }
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.map.remove(&oldest);
                }
                None => break,
            }
        }
        self.order.push_back(key);
        self.map.insert(
            key,
            Entry {
                value,
                stamp_ms: now_ms,
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
        t.insert(0, 10, 1); // update keeps the slot, no eviction
        assert_eq!(t.len(), 3);
        t.insert(3, 3, 2);
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(&0, 2), None, "oldest key 0 evicted");
        assert_eq!(t.get(&1, 2), Some(&1));
        assert_eq!(t.get(&3, 2), Some(&3));
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
