//! What the unit tests of several modules share: deterministic image
//! bytes, a temporary directory and fixed service keys. Test builds only.
//!
//! The generator is `tests/support/images.rs`, included rather than
//! copied, so unit tests, integration tests, the bench and the fuzz checks
//! all see the same bytes for the same seed.

use crate::hash::SipKey;
use crate::service::Keys;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// Shared with the integration tests, whose items are `pub`.
#[allow(unreachable_pub)]
#[path = "../tests/support/images.rs"]
mod images;
#[allow(unused_imports)] // Not every test uses every part of the kit.
pub(crate) use images::{image_bytes, XorShift};

/// Fixed secrets: Echo values and Message ID starts are reproducible.
pub(crate) const KEYS: Keys = Keys {
    echo: SipKey([1, 2]),
    message_ids: SipKey([3, 4]),
    tables: [5, 6],
};

/// In-memory catalog files `(name, image_bytes(len, first_seed + i))` for
/// the `i`-th `(name, len)` of `files`, for `Catalog::from_files`.
pub(crate) fn seeded_files(files: &[(&str, usize)], first_seed: u32) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .zip(first_seed..)
        .map(|(&(name, len), seed)| (name.to_owned(), image_bytes(len, seed)))
        .collect()
}

/// A directory removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A fresh empty directory under the system temp dir.
    pub(crate) fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("iot-ota-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Writes a file into the directory and returns its path.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("write test file");
        path
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
