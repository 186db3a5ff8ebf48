//! One version per download: the old versions of the tree's files and of
//! the catalog's images that devices are still downloading.
//!
//! A device that got block 0 of a file or an image under one ETag gets the
//! rest of that body from the same version, even when the file is replaced
//! in the middle of its download (RIOT's transport does not compare ETags:
//! a spliced image would fail its digest only after minutes of airtime).
//! New downloads get the new version. One implementation serves both: a
//! [`Versions`] of [`TreeFile`]s and one of [`Image`]s, keyed as the
//! peers' download records name them (see `peers::Download`).
//!
//! Memory bound: at most one old version per file or image, kept only
//! while a peer's record names it (checked when the snapshot is replaced),
//! and dropped when the last download of it ends, or when no block was
//! served from it for `EXCHANGE_LIFETIME` (the download went quiet; the
//! peer's record expires at the same time). A file replaced twice during
//! one download keeps the newer of its old versions; a download of the
//! older one then gets 4.04 for a file of the tree (and starts again), and
//! the current image under the current ETag for an image.

use crate::catalog::Image;
use crate::tree::TreeFile;
use std::cell::Cell;
use std::collections::HashMap;

/// What can be held as an old version: a file of the tree or an image.
pub(crate) trait Version: Clone {
    /// The content tag of this version's bytes.
    fn etag(&self) -> &[u8; 8];
    /// Its length in bytes.
    fn len(&self) -> u64;
}

impl Version for TreeFile {
    fn etag(&self) -> &[u8; 8] {
        &self.etag
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

impl Version for Image {
    fn etag(&self) -> &[u8; 8] {
        &self.etag
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// An old version and when a block was last served from it.
#[derive(Debug)]
struct Old<V> {
    version: V,
    /// Set through a shared reference: the route that serves a block
    /// reads the versions while the reply borrows them.
    last_used_ms: Cell<u64>,
}

/// The old versions, by the key a download record names them with.
#[derive(Debug)]
pub(crate) struct Versions<V> {
    old: HashMap<u64, Old<V>>,
}

impl<V> Default for Versions<V> {
    fn default() -> Self {
        Versions {
            old: HashMap::new(),
        }
    }
}

impl<V: Version> Versions<V> {
    /// Keeps each of `replaced` (a current version, by key, that the next
    /// snapshot holds with other bytes or not at all) whose download
    /// `downloads` (sorted (key, ETag), live records) names: at most one
    /// old version per key, so it replaces an older one. Then drops what
    /// no download needs any more.
    pub(crate) fn on_replace<'v>(
        &mut self,
        replaced: impl IntoIterator<Item = (u64, &'v V)>,
        downloads: &[(u64, [u8; 8])],
        now_ms: u64,
    ) where
        V: 'v,
    {
        for (key, version) in replaced {
            if downloads.binary_search(&(key, *version.etag())).is_ok() {
                self.old.insert(
                    key,
                    Old {
                        version: version.clone(),
                        last_used_ms: Cell::new(now_ms),
                    },
                );
            }
        }
        self.retain(downloads, now_ms);
    }

    /// The old version `key` with ETag `etag`, noted as used at `now_ms`;
    /// `None` once it went quiet (no block served from it for the exchange
    /// lifetime), even before [`Versions::retain`] drops it.
    pub(crate) fn get(&self, key: u64, etag: &[u8; 8], now_ms: u64) -> Option<&V> {
        let lifetime = super::EXCHANGE_LIFETIME_MS;
        let old = self.old.get(&key).filter(|old| {
            old.version.etag() == etag && now_ms.saturating_sub(old.last_used_ms.get()) < lifetime
        })?;
        old.last_used_ms.set(now_ms);
        Some(&old.version)
    }

    /// Whether an old version of `key` is held.
    pub(crate) fn holds(&self, key: u64) -> bool {
        self.old.contains_key(&key)
    }

    /// Keeps the old versions that `downloads` (sorted) names and that
    /// served a block within the exchange lifetime; true when it dropped
    /// one.
    pub(crate) fn retain(&mut self, downloads: &[(u64, [u8; 8])], now_ms: u64) -> bool {
        let lifetime = super::EXCHANGE_LIFETIME_MS;
        let before = self.old.len();
        self.old.retain(|key, old| {
            now_ms.saturating_sub(old.last_used_ms.get()) < lifetime
                && downloads
                    .binary_search(&(*key, *old.version.etag()))
                    .is_ok()
        });
        self.old.len() != before
    }

    /// Old versions held.
    pub(crate) fn len(&self) -> usize {
        self.old.len()
    }

    /// Whether none is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.old.is_empty()
    }

    /// Bytes held by old versions.
    pub(crate) fn bytes(&self) -> u64 {
        self.old.values().map(|old| old.version.len()).sum()
    }
}
