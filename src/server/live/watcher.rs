//! What inotify tells about the watched directories: whether anything
//! changed that a rescan should take in (a file closed by its writer or
//! renamed in, created, deleted, a directory gone, events lost), and which
//! files a writer closed or is writing. Whether a new or changed file is
//! complete is asked of the kernel first (a read lease is granted only
//! while nobody has the file open for writing: it knows of writers that
//! began before a directory was watched, as `mkdir -p` then `cp` races the
//! new watch); where it will not say (another user's file and no
//! `CAP_LEASE`), the events answer; where they cannot (a watch not added
//! because of the watch limit, events lost to a queue overflow, a file
//! there before its directory was watched) the answer is
//! [`Writer::Unknown`] and the settle rule decides.

use crate::snapshot::Writer;
use crate::sockio::inotify::{self, Inotify};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The most files remembered as closed or being written; past it both
/// are forgotten (unknown: the settle rule), so that a writer touching
/// many files cannot grow them without bound.
const MAX_TRACKED: usize = 8192;

/// The inotify instance, its watches and what its events said.
#[derive(Debug)]
pub(super) struct Watcher {
    inotify: Inotify,
    /// Watch descriptor → the directory, as the rescans list it.
    dirs: HashMap<i32, PathBuf>,
    /// The reverse of `dirs`.
    wds: HashMap<PathBuf, i32>,
    /// Files created or written to and not closed since.
    writing: HashSet<PathBuf>,
    /// Files a writer closed, or renamed into place, and nobody wrote to since.
    closed: HashSet<PathBuf>,
    /// The directories that could not be watched, last time (logged once).
    unwatched: usize,
    buf: Vec<u8>,
}

/// The outcome of [`Watcher::watch_only`]: how many directories could not
/// be watched, and the first reason, when that count changed.
pub(super) struct Unwatched {
    pub(super) count: usize,
    pub(super) error: io::Error,
}

impl Watcher {
    /// A watcher without watches yet.
    ///
    /// # Errors
    /// When inotify cannot be had (an old kernel, the instance limit).
    pub(super) fn new() -> io::Result<Watcher> {
        Ok(Watcher {
            inotify: Inotify::new()?,
            dirs: HashMap::new(),
            wds: HashMap::new(),
            writing: HashSet::new(),
            closed: HashSet::new(),
            unwatched: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Directs inotify's SIGIO at the calling thread, the loop's.
    ///
    /// # Errors
    /// As `fcntl`.
    pub(super) fn signal_this_thread(&self) -> io::Result<()> {
        self.inotify.signal_this_thread()
    }

    /// Watches exactly `dirs`: adds the new ones, removes those gone. A new
    /// watch sees only what happens from now on: its files of unknown state
    /// settle. Reports the directories that could not be watched (the
    /// watch limit) when their count changed.
    pub(super) fn watch_only(&mut self, dirs: &[&Path]) -> Option<Unwatched> {
        let wanted: HashSet<&Path> = dirs.iter().copied().collect();
        let gone: Vec<(PathBuf, i32)> = self
            .wds
            .iter()
            .filter(|(dir, _)| !wanted.contains(dir.as_path()))
            .map(|(dir, wd)| (dir.clone(), *wd))
            .collect();
        for (dir, wd) in gone {
            self.wds.remove(&dir);
            // A watch shared by two paths of one directory stays while
            // the path that names its events is wanted.
            if self.dirs.get(&wd) == Some(&dir) {
                self.inotify.remove_watch(wd);
                self.dirs.remove(&wd);
            }
        }
        let mut failed = 0;
        let mut first_error = None;
        for dir in dirs {
            if self.wds.contains_key(*dir) {
                continue;
            }
            match self.inotify.add_watch(dir) {
                Ok(wd) => {
                    // Two paths of one directory (a link inside the tree)
                    // share a watch: the first path names its events.
                    self.dirs.entry(wd).or_insert_with(|| dir.to_path_buf());
                    self.wds.insert(dir.to_path_buf(), wd);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        let changed = failed != self.unwatched;
        self.unwatched = failed;
        match first_error {
            Some(error) if changed => Some(Unwatched {
                count: failed,
                error,
            }),
            _ => None,
        }
    }

    /// Reads every queued event; true when one of them changes what a
    /// rescan finds (a file closed, renamed, created or deleted, a
    /// directory gone, events lost). A write alone changes nothing served:
    /// it only marks its file as being written.
    pub(super) fn drain(&mut self) -> bool {
        let mut rescan = false;
        // Bounded: the queue holds at most max_queued_events.
        for _ in 0..1024 {
            let n = match self.inotify.read(&mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let bytes = std::mem::take(&mut self.buf);
            for event in inotify::events(bytes.get(..n).unwrap_or(&[])) {
                rescan |= self.on_event(event);
            }
            self.buf = bytes;
        }
        if self.writing.len() + self.closed.len() > MAX_TRACKED {
            self.forget();
        }
        rescan
    }

    /// Takes in one event; true when a rescan should follow.
    fn on_event(&mut self, event: inotify::Event<'_>) -> bool {
        if event.mask & libc::IN_Q_OVERFLOW != 0 {
            self.forget();
            return true;
        }
        if event.mask & libc::IN_IGNORED != 0 {
            if let Some(dir) = self.dirs.remove(&event.wd) {
                self.wds.remove(&dir);
            }
            return true;
        }
        let Some(dir) = self.dirs.get(&event.wd) else {
            return false;
        };
        if event.name.is_empty() {
            // The directory itself was removed or moved.
            return true;
        }
        let path = dir.join(std::ffi::OsStr::from_bytes(event.name));
        let is_dir = event.mask & libc::IN_ISDIR != 0;
        if event.mask & libc::IN_MODIFY != 0 {
            self.closed.remove(&path);
            self.writing.insert(path);
            return false;
        }
        if event.mask & libc::IN_CREATE != 0 {
            // A new name: a writer may have begun (`cp`), or not (a link);
            // until a write or a close says more, its state is the
            // kernel's answer, or unknown.
            self.closed.remove(&path);
            return true;
        }
        if event.mask & (libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO) != 0 {
            self.writing.remove(&path);
            if !is_dir {
                self.closed.insert(path);
            }
            return true;
        }
        // Deleted or renamed away.
        self.writing.remove(&path);
        self.closed.remove(&path);
        true
    }

    /// Forgets what the events said: every file is of unknown state.
    fn forget(&mut self) {
        self.writing.clear();
        self.closed.clear();
    }

    /// Whether the file at `path` is being written: what the kernel says of
    /// its writers now ([`inotify::has_writer`]: it also knows of a writer
    /// that began before the directory was watched, as `mkdir -p` then
    /// `cp` races the new watch), else what the events said.
    pub(super) fn writer(&self, path: &Path) -> Writer {
        match inotify::has_writer(path) {
            Some(true) => Writer::Writing,
            Some(false) => Writer::Done,
            None if self.writing.contains(path) => Writer::Writing,
            None if self.closed.contains(path) => Writer::Done,
            None => Writer::Unknown,
        }
    }
}
