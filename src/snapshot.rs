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
//! - *Admission* ([`Admission`]): a file a writer is known to have closed (inotify, in
//!   `server`) is read at once, one known to be written is not, and only a file nobody
//!   reported on waits for the settle time. A file larger than [`INLINE_READ_MAX`] is read in
//!   slices of [`SLICE`] bytes between datagrams ([`Reads`]), so that publishing a large image
//!   never holds up the answers to other devices.
//!
//! This module never logs, never touches a socket or a CoAP message, and never decides what a
//! snapshot serves: the catalog and the tree list their directories and build their own
//! snapshots with these pieces.

use std::cmp::Ordering;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::catalog::SkipReason;
use crate::hash::fnv1a64;

/// A new or changed file at most this long is read whole when a rescan admits it (a few
/// hundred microseconds from the page cache): a manifest or a slot image is served from the
/// first request after its copy ends. A longer one is read in slices between datagrams.
pub const INLINE_READ_MAX: u64 = 256 * 1024;

/// The most bytes [`Reads::step`] reads (and hashes) between two datagrams: a fraction of a
/// millisecond of work, so that the blocks to other devices keep flowing while a large file
/// is taken in.
pub const SLICE: usize = 64 * 1024;

/// What is known of a file's writers, from inotify (see `server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// A writer closed it (or it was renamed into place) and nobody wrote to it since: it is
    /// complete, and read at once.
    Done,
    /// It was created or written to and not closed since: it is being written, and not read.
    Writing,
    /// Nothing is known (no inotify, the watch limit reached, events lost, or the file was
    /// there before its directory was watched): it is read once it has settled.
    Unknown,
}

/// How a rescan admits new and changed files: the settle time for files nobody reported on,
/// what inotify knows of writers, and where long files are read in slices (`None`: read
/// whole at once, as at start-up).
pub struct Admission<'a> {
    /// How long a file of unknown state must go unmodified before it is read.
    pub settle: Duration,
    /// The state of the writers of a file, by the path the rescan found it at.
    pub writer: &'a dyn Fn(&Path) -> Writer,
    /// The reads in slices, if files longer than [`INLINE_READ_MAX`] are read that way.
    pub reads: Option<&'a mut Reads>,
}

impl fmt::Debug for Admission<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

/// What [`Admission::admit`] decided for a file.
pub(crate) enum Admit {
    /// Its bytes and their entity tag (`fnv1a64`).
    Ready(ImageBytes, [u8; 8]),
    /// Not yet: being written, not settled, or being read in slices; try again after the
    /// wait (a Max-Age for a new file).
    Wait(Duration),
    /// Left out, and why.
    Skip(SkipReason),
}

/// The unknown state for every file: the settle rule alone.
fn unknown(_: &Path) -> Writer {
    Writer::Unknown
}

impl Admission<'static> {
    /// The settle rule alone, every file read whole: no inotify, no slices.
    pub fn settle_only(settle: Duration) -> Admission<'static> {
        Admission {
            settle,
            writer: &unknown,
            reads: None,
        }
    }
}

impl Admission<'_> {
    /// Decides for the new or changed file at `path`, listed with `stamp`, at `now`; reads it
    /// when it may be read (see [`Writer`]).
    pub(crate) fn admit(&mut self, path: &Path, stamp: Stamp, now: SystemTime) -> Admit {
        match self.wait(path, stamp, now) {
            Some(wait) => Admit::Wait(wait),
            None => self.read(path, stamp, now),
        }
    }

    /// How long the file at `path`, listed with `stamp`, must wait before it may be read at
    /// `now`; `None`: it may be read now.
    pub(crate) fn wait(&self, path: &Path, stamp: Stamp, now: SystemTime) -> Option<Duration> {
        match (self.writer)(path) {
            Writer::Writing => Some(Duration::from_secs(1)),
            Writer::Done => None,
            Writer::Unknown => settle_wait(stamp.1, now, self.settle),
        }
    }

    /// Reads the file at `path`, listed with `stamp`, which [`Admission::wait`] let through:
    /// whole at once, or its slices started (or taken, once read).
    pub(crate) fn read(&mut self, path: &Path, stamp: Stamp, now: SystemTime) -> Admit {
        if let Some(reads) = self.reads.as_deref_mut() {
            if let Some((bytes, etag)) = reads.take(path, stamp) {
                return Admit::Ready(bytes, etag);
            }
            if stamp.0 > INLINE_READ_MAX {
                return match reads.start(path, stamp) {
                    Ok(()) => Admit::Wait(Duration::from_secs(1)),
                    Err(Unread::Unsettled(_)) => Admit::Wait(Duration::from_secs(1)),
                    Err(Unread::Skip(reason)) => Admit::Skip(reason),
                };
            }
        }
        match read_settled(path, stamp) {
            Ok(bytes) => {
                let etag = fnv1a64(&bytes).to_be_bytes();
                Admit::Ready(bytes, etag)
            }
            Err(Unread::Unsettled(latest)) => {
                Admit::Wait(settle_wait(latest.1, now, self.settle).unwrap_or(Duration::ZERO))
            }
            Err(Unread::Skip(reason)) => Admit::Skip(reason),
        }
    }
}

/// One file being read in slices.
struct Job {
    path: PathBuf,
    stamp: Stamp,
    file: File,
    bytes: ImageBytes,
    filled: usize,
    /// FNV-1a 64 of `bytes[..filled]`, so that the entity tag is ready with the last slice.
    hash: u64,
}

/// A file read whole by [`Reads`], waiting for the next rescan to take it.
struct Loaded {
    path: PathBuf,
    stamp: Stamp,
    bytes: ImageBytes,
    etag: [u8; 8],
}

/// The files longer than [`INLINE_READ_MAX`] being read in slices of [`SLICE`] bytes, one
/// slice per turn of the loop, and those read whole that the next rescan takes in. Memory:
/// each file's bytes once, as the snapshot will hold them.
#[derive(Default)]
pub struct Reads {
    jobs: Vec<Job>,
    done: Vec<Loaded>,
}

impl fmt::Debug for Reads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reads")
            .field("jobs", &self.jobs.len())
            .field("done", &self.done.len())
            .finish()
    }
}

/// FNV-1a 64 of `bytes` continued from `hash`.
fn fnv1a64_more(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Reads {
    /// Whether a file is being read: the loop then takes a slice every turn.
    pub fn busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Whether a file was read whole and waits for a rescan to take it in.
    pub fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// Reads at most `budget` bytes of the oldest file being read; true when a file was read
    /// whole by it (a rescan takes it in). A file that changed while it was read is dropped:
    /// its writer's next close brings it back.
    pub fn step(&mut self, budget: usize) -> bool {
        let Some(job) = self.jobs.first_mut() else {
            return false;
        };
        let room = job.bytes.len().saturating_sub(job.filled).min(budget);
        let outcome = if room == 0 {
            Ok(true)
        } else {
            let from = job.filled;
            let slot = job.bytes.as_mut_slice().get_mut(from..from + room);
            match slot.map(|slot| (&job.file).read(slot)) {
                Some(Ok(0)) | None => Err(()), // shorter than listed: being written
                Some(Ok(n)) => {
                    let read = job.bytes.get(from..from + n).unwrap_or(&[]);
                    job.hash = fnv1a64_more(job.hash, read);
                    job.filled += n;
                    Ok(job.filled == job.bytes.len())
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
                Some(Err(_)) => Err(()),
            }
        };
        match outcome {
            Ok(false) => false,
            Ok(true) => {
                let job = self.jobs.remove(0);
                let mut probe = [0u8; 1];
                let ended = matches!((&job.file).read(&mut probe), Ok(0));
                let same = job
                    .file
                    .metadata()
                    .ok()
                    .and_then(|meta| stamp_of(&meta).ok())
                    == Some(job.stamp);
                if ended && same {
                    self.done.push(Loaded {
                        etag: job.hash.to_be_bytes(),
                        path: job.path,
                        stamp: job.stamp,
                        bytes: job.bytes,
                    });
                    return true;
                }
                false
            }
            Err(()) => {
                self.jobs.remove(0);
                false
            }
        }
    }

    /// Reads every file being read to its end, at once: for a request that asks for one of
    /// them, which would otherwise be answered 5.03 although the file is complete.
    pub fn finish_all(&mut self) {
        // Each step reads SLICE bytes or ends a job: bounded by the files' lengths.
        while self.busy() {
            self.step(usize::MAX);
        }
    }

    /// Reads the file at `path` to its end at once, if it is being read: for
    /// a download that begins while its new version is read, which would
    /// otherwise get the old one.
    pub fn finish(&mut self, path: &Path) {
        let Some(at) = self.jobs.iter().position(|j| j.path == path) else {
            return;
        };
        self.jobs.swap(0, at);
        // Each step reads or ends the first job: bounded by its length.
        while self.jobs.first().is_some_and(|j| j.path == path) {
            self.step(usize::MAX);
        }
    }

    /// Forgets the files read whole that no rescan took (removed or changed since).
    pub fn clear_done(&mut self) {
        self.done.clear();
    }

    /// The bytes and entity tag of `path` read whole with `stamp`, taken out.
    fn take(&mut self, path: &Path, stamp: Stamp) -> Option<(ImageBytes, [u8; 8])> {
        let at = self
            .done
            .iter()
            .position(|l| l.path == path && l.stamp == stamp)?;
        let loaded = self.done.swap_remove(at);
        Some((loaded.bytes, loaded.etag))
    }

    /// Starts reading `path` (listed with `stamp`) in slices, unless it is being read with
    /// that stamp already; a read of an older version of it is dropped.
    fn start(&mut self, path: &Path, stamp: Stamp) -> Result<(), Unread> {
        if let Some(at) = self.jobs.iter().position(|j| j.path == path) {
            if self.jobs.get(at).is_some_and(|j| j.stamp == stamp) {
                return Ok(());
            }
            self.jobs.remove(at);
        }
        let file = open_regular(path)?;
        let now = stamp_of(&file.metadata().map_err(|e| io_reason(&e))?)?;
        if now != stamp {
            return Err(Unread::Unsettled(now));
        }
        let len = usize::try_from(stamp.0).map_err(|_| SkipReason::TooLarge(stamp.0))?;
        let bytes = ImageBytes::zeroed(len).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
        self.jobs.push(Job {
            path: path.to_path_buf(),
            stamp,
            file,
            bytes,
            filled: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        });
        Ok(())
    }
}

/// Opens `path` for reading without blocking (`O_NONBLOCK`: a FIFO or a device put in place
/// of a file after it was listed cannot hold the loop) and checks that it is a regular file.
pub(crate) fn open_regular(path: &Path) -> Result<File, SkipReason> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_reason(&e))?;
    check_regular(&file.metadata().map_err(|e| io_reason(&e))?)?;
    Ok(file)
}

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
    let file = open_regular(path)?;
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

    /// A FIFO put where a listed file was (after the listing, before the
    /// read): the read gives up at once, it does not wait for a writer.
    #[test]
    fn a_fifo_swapped_in_after_the_listing_is_not_waited_for() {
        let dir = std::env::temp_dir().join(format!("iotota-fifo-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("slot0.bin");
        fs::write(&path, b"image").unwrap();
        let listed = stamp_of(&fs::metadata(&path).unwrap()).unwrap();
        fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(matches!(
                read_settled(&reader, listed),
                Err(Unread::Skip(SkipReason::NotRegularFile))
            ));
        });
        let answered = rx.recv_timeout(Duration::from_secs(5));
        if answered.is_err() {
            // Let the stuck open go (a writer pairs with it) before failing.
            let _ = fs::OpenOptions::new().write(true).open(&path);
        }
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            answered,
            Ok(true),
            "the read waited for a writer, or read the FIFO"
        );
    }

    #[test]
    fn reads_in_slices_give_the_bytes_and_the_tag_of_a_whole_read() {
        let dir = std::env::temp_dir().join(format!("iotota-slices-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.bin");
        let data: Vec<u8> = (0..(3 * SLICE + 17)).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let stamp = stamp_of(&fs::metadata(&path).unwrap()).unwrap();
        let mut reads = Reads::default();
        reads.start(&path, stamp).map_err(|_| "start").unwrap();
        let mut steps = 0;
        while reads.busy() {
            assert!(!reads.has_done(), "done before the last slice");
            reads.step(SLICE);
            steps += 1;
            assert!(steps <= 4, "more slices than the length needs");
        }
        let (bytes, etag) = reads.take(&path, stamp).expect("read whole");
        assert_eq!(steps, 4);
        assert!(bytes[..] == data[..]);
        assert_eq!(etag, fnv1a64(&data).to_be_bytes());

        // Two files being read: the one a download asks for is finished
        // at once, the other one goes on slice by slice.
        let other = dir.join("other.bin");
        fs::write(&other, &data[..2 * SLICE]).unwrap();
        let other_stamp = stamp_of(&fs::metadata(&other).unwrap()).unwrap();
        reads.start(&path, stamp).map_err(|_| "start").unwrap();
        reads
            .start(&other, other_stamp)
            .map_err(|_| "start")
            .unwrap();
        reads.finish(&other);
        assert!(
            reads.take(&other, other_stamp).is_some(),
            "finished at once"
        );
        assert!(reads.take(&path, stamp).is_none(), "still being read");
        assert!(reads.busy());
        fs::remove_dir_all(&dir).unwrap();
    }
}
