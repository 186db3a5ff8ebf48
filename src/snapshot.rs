//! The snapshot machinery the catalog and the file tree share: how a file on disk becomes
//! bytes in a snapshot, and when.
//!
//! - *Stamping*: a file is known by its [`Stamp`] (length, modification time, inode, change
//!   time) from one `stat`; a rescan reuses the bytes of a file whose stamp is unchanged.
//! - *Settling*: a new or changed file is read only once it has not been modified for the
//!   settle time (`settle_wait`).
//! - *Reading*: `read_settled` reads a whole file, and only if it still shows the stamp it
//!   was listed with, before and after the read, into memory of exactly its length
//!   ([`ImageBytes`]: pages of its own for a file of whole pages, else the heap).
//!
//! This module never logs, never touches a socket or a CoAP message, and never decides what a
//! snapshot serves: the catalog and the tree list their directories and build their own
//! snapshots with these pieces.

use std::cmp::Ordering;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::catalog::SkipReason;

/// Largest image the server can address: offsets and Size2 are u32 on the wire.
pub const MAX_IMAGE_LEN: u64 = u32::MAX as u64;

/// The length in bytes, the modification time, the inode number and the change time (in
/// nanoseconds) of a file, from one `stat`.
pub type Stamp = (u64, SystemTime, u64, i128);

/// The stamp of `meta` with modification time `mtime`.
pub(crate) fn stamp(meta: &fs::Metadata, mtime: SystemTime) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let ctime = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
    (meta.len(), mtime, meta.ino(), ctime)
}

/// The bytes of one image, immutable once read, where they cost the least memory: an image
/// whose length is within 1/64 of whole pages gets pages of its own (see
/// `ImageBytes::wants_own_pages`), any other one a block of the heap. Dereferences to the
/// bytes.
pub struct ImageBytes(Storage);

enum Storage {
    Heap(Box<[u8]>),
    Pages(crate::pages::Pages),
}

impl ImageBytes {
    /// Whether an image of `len` bytes is held in pages of its own rather than on the heap,
    /// for pages of `page` bytes: when rounding it up to whole pages adds at most 1/64 of its
    /// length, so from 64 pages (256 KiB for 4 KiB pages) always, below only near a page
    /// boundary (firmware padded to flash sectors, as 64 KiB images are). A heap block of
    /// whole pages costs a page more (the allocator's header spills into it: musl's malloc
    /// for most blocks of a few KiB and more, glibc's from 128 KiB), and musl rounds such
    /// blocks to size classes on top; for other lengths the heap packs blocks closer than
    /// pages can.
    pub(crate) fn wants_own_pages(len: usize, page: usize) -> bool {
        let rounded = len.checked_next_multiple_of(page.max(1));
        len >= page && rounded.is_some_and(|rounded| rounded - len <= len / 64)
    }

    /// `len` zero bytes, to be filled with [`ImageBytes::as_mut_slice`] before the image is
    /// built.
    ///
    /// # Errors
    /// When the memory cannot be had: `OutOfMemory` from the heap, as `mmap` for pages.
    pub(crate) fn zeroed(len: usize) -> io::Result<ImageBytes> {
        if ImageBytes::wants_own_pages(len, crate::pages::page_size()) {
            return crate::pages::Pages::zeroed(len).map(|pages| ImageBytes(Storage::Pages(pages)));
        }
        let mut heap = Vec::new();
        heap.try_reserve_exact(len)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        heap.resize(len, 0);
        Ok(ImageBytes(Storage::Heap(heap.into_boxed_slice())))
    }

    /// The same bytes held as [`ImageBytes::zeroed`] would hold them: [`crate::catalog::Catalog::from_files`]
    /// gets them in a `Vec`.
    pub(crate) fn from_vec(bytes: Vec<u8>) -> io::Result<ImageBytes> {
        if !ImageBytes::wants_own_pages(bytes.len(), crate::pages::page_size()) {
            return Ok(ImageBytes(Storage::Heap(bytes.into_boxed_slice())));
        }
        let mut held = ImageBytes::zeroed(bytes.len())?;
        held.as_mut_slice().copy_from_slice(&bytes);
        Ok(held)
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Storage::Heap(heap) => heap,
            Storage::Pages(pages) => pages.as_mut_slice(),
        }
    }

    /// Whether the bytes are in pages of their own rather than on the heap.
    pub(crate) fn in_own_pages(&self) -> bool {
        matches!(self.0, Storage::Pages(_))
    }
}

impl std::ops::Deref for ImageBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Storage::Heap(heap) => heap,
            Storage::Pages(pages) => pages.as_slice(),
        }
    }
}

/// Shows the length and where the bytes are held, not the bytes.
impl fmt::Debug for ImageBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageBytes")
            .field("len", &self.len())
            .field("in_own_pages", &self.in_own_pages())
            .finish()
    }
}

pub(crate) fn io_reason(e: &io::Error) -> SkipReason {
    match e.kind() {
        io::ErrorKind::NotFound => SkipReason::Vanished,
        _ => SkipReason::Unreadable(e.to_string()),
    }
}

/// The metadata of `path`, following symbolic links, or why it is no image.
pub(crate) fn stat_followed(path: &Path) -> Result<fs::Metadata, SkipReason> {
    fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound && fs::symlink_metadata(path).is_ok() {
            SkipReason::NotRegularFile // the link exists, its target does not
        } else {
            io_reason(&e)
        }
    })
}

/// The stamp of a regular file of at most [`MAX_IMAGE_LEN`] bytes, or why it is no image.
pub(crate) fn stamp_of(meta: &fs::Metadata) -> Result<Stamp, SkipReason> {
    check_regular(meta)?;
    let mtime = meta
        .modified()
        .map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    Ok(stamp(meta, mtime))
}

/// Fills `out` from `source` and reads one byte more: `Ok(true)` when `source` held exactly
/// `out.len()` bytes, `Ok(false)` when it ended sooner or has more (a file being written,
/// whatever is in `out` then). The extra byte notices a growing file without reading it all.
///
/// # Errors
/// As `source`'s reads, except `Interrupted`, which is retried.
fn fill_exactly(source: &mut impl Read, out: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    let mut probe = [0u8; 1];
    loop {
        let room = match out.get_mut(filled..) {
            Some(room) if !room.is_empty() => room,
            _ => &mut probe[..],
        };
        let n = match source.read(room) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if filled == out.len() {
            return Ok(n == 0);
        }
        if n == 0 {
            return Ok(false);
        }
        filled += n;
    }
}

/// Reads the whole of `file`, expected to be `expected` bytes long, into memory of exactly
/// that length; `None` when it turned out to have another length.
pub(crate) fn read_whole(file: &File, expected: u64) -> Result<Option<ImageBytes>, SkipReason> {
    let len = usize::try_from(expected).map_err(|_| SkipReason::TooLarge(expected))?;
    let mut bytes = ImageBytes::zeroed(len).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    let mut reader = file;
    let whole = fill_exactly(&mut reader, bytes.as_mut_slice()).map_err(|e| io_reason(&e))?;
    Ok(whole.then_some(bytes))
}

/// Why [`read_settled`] returned no bytes.
pub(crate) enum Unread {
    /// The file's stamp is not the one it was listed with, or changed while it was read: it
    /// is still being written. The stamp is the latest seen.
    Unsettled(Stamp),
    /// A per-file problem, as [`crate::catalog::Catalog::load`] reports it.
    Skip(SkipReason),
}

impl From<SkipReason> for Unread {
    fn from(reason: SkipReason) -> Unread {
        Unread::Skip(reason)
    }
}

/// Reads the file `listed` describes completely, if it still shows the stamp `listed` it
/// was listed with, before and after the read.
pub(crate) fn read_settled(path: &Path, listed: Stamp) -> Result<ImageBytes, Unread> {
    let file = File::open(path).map_err(|e| io_reason(&e))?;
    let before = stamp_of(&file.metadata().map_err(|e| io_reason(&e))?)?;
    if before != listed {
        return Err(Unread::Unsettled(before));
    }
    let bytes = read_whole(&file, listed.0)?;
    let after = stamp_of(&file.metadata().map_err(|e| io_reason(&e))?)?;
    match bytes {
        Some(bytes) if after == listed => Ok(bytes),
        _ => Err(Unread::Unsettled(after)),
    }
}

/// How long a file last modified at `mtime` still has to wait, at `now`, before it has gone
/// `settle` without change; `None` when it has settled. An mtime in the future (a clock
/// set back, a copy that kept a foreign time) waits until it is `settle` in the past.
pub(crate) fn settle_wait(
    mtime: SystemTime,
    now: SystemTime,
    settle: Duration,
) -> Option<Duration> {
    let Some(deadline) = mtime.checked_add(settle) else {
        return Some(Duration::MAX); // a time past what the clock can say: never settles
    };
    deadline
        .duration_since(now)
        .ok()
        .filter(|wait| !wait.is_zero())
}

pub(crate) fn check_regular(meta: &fs::Metadata) -> Result<(), SkipReason> {
    if !meta.is_file() {
        return Err(SkipReason::NotRegularFile);
    }
    if meta.len() > MAX_IMAGE_LEN {
        return Err(SkipReason::TooLarge(meta.len()));
    }
    Ok(())
}

/// The outcome of one rescan of a watched source, the catalog's
/// ([`crate::catalog::Refresh`]) and the file tree's ([`crate::tree::TreeRefresh`]) alike:
/// the snapshot to swap in, if any, and what the operator should hear about.
///
/// `added`, `replaced` and `removed` compare the entries `next` serves with those the
/// refreshed snapshot serves, by name, sorted; they are empty when `next` is `None`.
/// `pending` and `skipped` describe the source as this refresh saw it, whether or not `next`
/// is `Some`, sorted by name.
///
/// `T` is the snapshot, `P` a file not served yet because it has not settled, `K` an entry
/// left out and `E` why no snapshot could be built.
#[derive(Debug)]
pub struct Refresh<T, P, K, E> {
    /// The snapshot to swap in; `None` when nothing changed (keep the current one, log
    /// nothing) or when `error` is set (keep serving the current one).
    pub next: Option<T>,
    /// Names `next` serves and the refreshed snapshot does not.
    pub added: Vec<String>,
    /// Names both serve whose file was read again because its stamp changed. The ETag
    /// changes only if the content did.
    pub replaced: Vec<String>,
    /// Names the refreshed snapshot serves and `next` does not: deleted, renamed, or now
    /// skipped.
    pub removed: Vec<String>,
    /// New (for the file tree: also changed) files not read yet because they have not
    /// settled; a new one is not served.
    pub pending: Vec<P>,
    /// Entries left out, each worth a warning.
    pub skipped: Vec<K>,
    /// Why there is no `next` although something may have changed: the source could not be
    /// listed, or what it holds now breaks a rule of the snapshot (a catalog collision, too
    /// many files).
    pub error: Option<E>,
}

/// Empty: no snapshot, nothing found, no error.
impl<T, P, K, E> Default for Refresh<T, P, K, E> {
    fn default() -> Self {
        Refresh {
            next: None,
            added: Vec::new(),
            replaced: Vec::new(),
            removed: Vec::new(),
            pending: Vec::new(),
            skipped: Vec::new(),
            error: None,
        }
    }
}

impl<T, P, K, E> Refresh<T, P, K, E> {
    /// Fills `added`, `replaced` and `removed` from the entries of the refreshed snapshot
    /// (`old`) and of the next one (`next`), both sorted by name (byte order), names unique;
    /// `entry` gives an entry's name and bytes. An entry of both is replaced when its bytes
    /// are not the same allocation: unchanged files share theirs. One merge, no allocation
    /// but the names reported.
    pub(crate) fn note_changes<'a, X: 'a>(
        &mut self,
        old: &'a [X],
        next: &'a [X],
        entry: impl Fn(&'a X) -> (&'a str, &'a Arc<ImageBytes>),
    ) {
        let mut old = old.iter().map(&entry).peekable();
        let mut next = next.iter().map(&entry).peekable();
        loop {
            match (old.peek(), next.peek()) {
                (None, None) => return,
                (Some(&(gone, _)), None) => {
                    self.removed.push(gone.to_owned());
                    old.next();
                }
                (None, Some(&(new, _))) => {
                    self.added.push(new.to_owned());
                    next.next();
                }
                (Some(&(was, was_bytes)), Some(&(now, now_bytes))) => match was.cmp(now) {
                    Ordering::Less => {
                        self.removed.push(was.to_owned());
                        old.next();
                    }
                    Ordering::Greater => {
                        self.added.push(now.to_owned());
                        next.next();
                    }
                    Ordering::Equal => {
                        if !Arc::ptr_eq(was_bytes, now_bytes) {
                            self.replaced.push(now.to_owned());
                        }
                        old.next();
                        next.next();
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes a call, and fails once with
    /// `Interrupted` before each, as a read cut by a signal does.
    struct Trickle<'a> {
        rest: &'a [u8],
        step: usize,
        interrupt_next: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.interrupt_next = !self.interrupt_next;
            if !self.interrupt_next {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(out.len()).min(self.rest.len());
            let (now, later) = self.rest.split_at(n);
            out[..n].copy_from_slice(now);
            self.rest = later;
            Ok(n)
        }
    }

    #[test]
    fn fill_exactly_accepts_only_a_source_of_exactly_the_length() {
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        for step in [1, 7, 4096, 10_000] {
            for (source_len, whole) in [
                (5000, true),
                (4999, false),
                (5001, false),
                (9000, false),
                (0, false),
            ] {
                let source: Vec<u8> = (0..=255u8).cycle().take(source_len).collect();
                let mut reader = Trickle {
                    rest: &source,
                    step,
                    interrupt_next: false,
                };
                let mut out = vec![0u8; 5000];
                let got = fill_exactly(&mut reader, &mut out).unwrap();
                assert_eq!(got, whole, "source {source_len} bytes, step {step}");
                if whole {
                    assert_eq!(out, data);
                }
                // At most one byte past the length is read, whatever the source holds.
                assert!(reader.rest.len() >= source_len.saturating_sub(5001));
            }
        }
        let mut nothing: &[u8] = &[];
        assert!(fill_exactly(&mut nothing, &mut []).unwrap());
        let mut one: &[u8] = b"x";
        assert!(!fill_exactly(&mut one, &mut []).unwrap());
    }

    #[test]
    fn own_pages_when_rounding_up_wastes_at_most_a_64th() {
        const PAGE: usize = 4096;
        for (len, own) in [
            (0, false),
            (1, false),
            (PAGE - 1, false), // a page would be 1/4096 more, but below one page: heap
            (PAGE, true),
            (PAGE + 1, false),
            (16 * PAGE, true), // 64 KiB firmware: exactly 16 pages
            (16 * PAGE - 1000, true),
            (16 * PAGE - 1100, false),
            (50_000, false),
            (64 * PAGE - 1, true), // from 64 pages a part page is at most a 64th
            (64 * PAGE + 1, true),
            (1_000_001, true),
            (usize::MAX, false), // cannot be rounded up
        ] {
            assert_eq!(ImageBytes::wants_own_pages(len, PAGE), own, "{len}");
        }
        // 16 KiB pages (some arm64 kernels): 64 KiB is 4 of them.
        assert!(ImageBytes::wants_own_pages(64 * 1024, 16 * 1024));
        assert!(!ImageBytes::wants_own_pages(60 * 1024, 16 * 1024));
    }

    #[test]
    fn note_changes_merges_two_sorted_lists_by_name_and_bytes() {
        let bytes = |b: &[u8]| Arc::new(ImageBytes::from_vec(b.to_vec()).expect("memory"));
        let a = bytes(b"a");
        let old = [("a", a.clone()), ("b", bytes(b"b")), ("d", bytes(b"d"))];
        // "a" kept (same bytes), "b" read again (same content, new bytes), "c" new, "d" gone.
        let next = [("a", a), ("b", bytes(b"b")), ("c", bytes(b"c"))];
        let mut out = Refresh::<(), (), (), ()>::default();
        out.note_changes(&old, &next, |(name, bytes)| (*name, bytes));
        assert_eq!(out.added, ["c"]);
        assert_eq!(out.replaced, ["b"]);
        assert_eq!(out.removed, ["d"]);
        let mut none = Refresh::<(), (), (), ()>::default();
        none.note_changes(&old, &old, |(name, bytes)| (*name, bytes));
        assert!(none.added.is_empty() && none.replaced.is_empty() && none.removed.is_empty());
    }
}
