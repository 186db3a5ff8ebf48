//! One version per download: the old versions of the tree's files that
//! devices are still downloading.
//!
//! A device that got block 0 of a file under one ETag gets the rest of
//! that body from the same version, even when the file is replaced in the
//! middle of its download (RIOT's transport does not compare ETags: a
//! spliced image would fail its digest only after minutes of airtime). New
//! downloads get the new version.
//!
//! Memory bound: at most one old version per file, kept only while a
//! peer's record names it (checked when the file is replaced), and dropped
//! when the last download of it ends, or when no block was served from it
//! for `EXCHANGE_LIFETIME` (the download went quiet; the peer's record
//! expires at the same time). A file replaced twice during one download
//! keeps the newer of its old versions; a download of the older one then
//! gets 4.04 and starts again.

use super::peers::Peers;
use crate::tree::{FileTree, TreeFile};
use std::cell::Cell;
use std::collections::HashMap;

/// An old version of a file and when a block was last served from it.
#[derive(Debug)]
struct Old {
    file: TreeFile,
    /// Set through a shared reference: the route that serves a block
    /// reads the versions while the reply borrows them.
    last_used_ms: Cell<u64>,
}

/// The old versions, by the tree's key of their path.
#[derive(Debug, Default)]
pub(crate) struct Versions {
    old: HashMap<u64, Old>,
}

impl Versions {
    /// Keeps, for each file that `next` holds with other bytes than
    /// `current`, the current version if a download of it is under way
    /// (at most one old version per file: it replaces an older one).
    pub(crate) fn on_replace(
        &mut self,
        current: &FileTree,
        next: &FileTree,
        peers: &Peers,
        now_ms: u64,
    ) {
        let downloads = peers.downloads(now_ms);
        if downloads.is_empty() && self.is_empty() {
            return;
        }
        for file in current.files() {
            let key = file.key();
            let replaced = next
                .file(file.segments())
                .map_or(true, |now| now.etag != file.etag);
            if replaced && downloads.binary_search(&(key, file.etag)).is_ok() {
                self.old.insert(
                    key,
                    Old {
                        file: file.clone(),
                        last_used_ms: Cell::new(now_ms),
                    },
                );
            }
        }
        self.retain(&downloads, now_ms);
    }

    /// The old version of file `key` with ETag `etag`, noted as used at
    /// `now_ms`.
    pub(crate) fn get(&self, key: u64, etag: &[u8; 8], now_ms: u64) -> Option<&TreeFile> {
        let old = self.old.get(&key).filter(|old| old.file.etag == *etag)?;
        old.last_used_ms.set(now_ms);
        Some(&old.file)
    }

    /// Drops the old versions no download needs any more: none served a
    /// block within the exchange lifetime, or no live record names them.
    pub(crate) fn expire(&mut self, peers: &Peers, now_ms: u64) {
        if self.is_empty() {
            return;
        }
        self.retain(&peers.downloads(now_ms), now_ms);
    }

    /// Keeps the old versions that `downloads` (sorted) names and that
    /// served a block within the exchange lifetime.
    fn retain(&mut self, downloads: &[(u64, [u8; 8])], now_ms: u64) {
        let lifetime = super::EXCHANGE_LIFETIME_MS;
        self.old.retain(|key, old| {
            now_ms.saturating_sub(old.last_used_ms.get()) < lifetime
                && downloads.binary_search(&(*key, old.file.etag)).is_ok()
        });
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
        self.old
            .values()
            .map(|old| old.file.bytes.len() as u64)
            .sum()
    }
}
