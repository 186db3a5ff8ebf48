//! Live reload: the watched sources (the firmware directory, the `--files`
//! tree; see [`sources`]) are scanned again when inotify says a writer
//! closed a file or renamed one into place (see [`watcher`]), on a timer
//! (the backstop), on SIGHUP and when a request misses, and a changed
//! snapshot replaces the served one between two datagrams (each source's
//! `refresh` does the reading and decides what changed; this module
//! decides when, and logs). A file longer than `snapshot::INLINE_READ_MAX`
//! is read in slices, one per turn of the loop ([`Live::read_slice`]), and
//! taken in by the rescan after its last slice.

mod fleet_source;
mod sources;
mod watcher;

pub(super) use fleet_source::read_fleet_files;

use crate::hash::fnv1a64;
use crate::service::{Outcome, Service};
use crate::snapshot::{stamp_of, Admission, Reads, Stamp, Writer, SLICE};
use crate::tree::FileTree;
use log::{debug, info, warn};
use sources::{CatalogSource, Source, TreeSource};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use watcher::{Unwatched, Watcher};

/// A request that missed (no image with this id, no newer image) rescans
/// at once, at most this often: publish-then-notify works on the first
/// request, and a device polling for updates cannot make the server scan
/// its directory in a loop.
const MISS_RESCAN_INTERVAL_MS: u64 = 250;
/// The file behind a first block is looked at (one `stat`) at most this
/// often while the requests are for the same file, so that a device or a
/// load test fetching one small file over and over does not `stat` it for
/// every answer.
const STALE_CHECK_INTERVAL_MS: u64 = 100;

/// When and where to rescan, and what was last reported.
pub(super) struct Live {
    /// The watched sources, in the order they are rescanned: the file
    /// tree, then the catalog (absent with `--fileserver` alone: an empty
    /// catalog, only the tree watched).
    sources: Vec<Box<dyn Watched + Send>>,
    /// Milliseconds between timed rescans; 0: only SIGHUP and misses.
    period_ms: u64,
    settle: Duration,
    /// Loop time of the next timed rescan.
    next_due_ms: u64,
    /// Loop time of the last rescan caused by a miss.
    last_miss_ms: Option<u64>,
    /// Which file (a hash of its path) was last checked for a replacement
    /// after a first block, and when.
    last_stale_check: Option<(u64, u64)>,
    /// inotify, when the system gives it: `None` means the settle rule
    /// decides for every file.
    watcher: Option<Watcher>,
    /// Files being read in slices.
    reads: Reads,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("sources", &self.sources.len())
            .field("period_ms", &self.period_ms)
            .field("next_due_ms", &self.next_due_ms)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Watches `dir`, rescanning every `period_ms` (0: never on a timer) and
    /// admitting a file once its writer closed it (with `inotify`), else
    /// once it has not changed for `settle_ms`.
    /// `tree` is the file tree served at the start, if any.
    pub(super) fn new(
        dir: Option<PathBuf>,
        tree: Option<&FileTree>,
        period_ms: u64,
        settle_ms: u64,
        now_ms: u64,
        inotify: bool,
    ) -> Live {
        let tree = TreeSource {
            root: tree.map(|t| t.path().to_path_buf()),
            dirs: tree.map(|t| t.dir_mtimes().to_vec()).unwrap_or_default(),
        };
        let mut sources: Vec<Box<dyn Watched + Send>> = vec![Box::new(Watch::new(tree))];
        if let Some(dir) = dir {
            sources.push(Box::new(Watch::new(CatalogSource {
                dir: dir.clone(),
                dir_mtime: None,
            })));
            // After the catalog: a policy names an image the rescan may
            // just have published.
            sources.push(Box::new(Watch::new(fleet_source::FleetSource {
                dir,
                dir_mtime: None,
            })));
        }
        let watcher = match inotify.then(Watcher::new) {
            None => None,
            Some(Ok(watcher)) => Some(watcher),
            Some(Err(e)) => {
                warn!(
                    "no inotify ({e}): a new or changed file is served once it has not \
                     changed for {settle_ms} ms (--settle)"
                );
                None
            }
        };
        let mut live = Live {
            sources,
            period_ms,
            settle: Duration::from_millis(settle_ms),
            next_due_ms: now_ms.saturating_add(period_ms),
            last_miss_ms: None,
            last_stale_check: None,
            watcher,
            reads: Reads::default(),
        };
        live.watch_dirs();
        live
    }

    /// Directs inotify's signal at the calling thread, the one that runs
    /// the loop (the server may have been set up on another one).
    pub(super) fn claim_signals(&self) {
        if let Some(Err(e)) = self.watcher.as_ref().map(Watcher::signal_this_thread) {
            debug!("inotify's signal goes to the process, not the loop's thread: {e}");
        }
    }

    /// Watches the directories the sources list now (after a rescan, which
    /// may have found new ones or lost some).
    fn watch_dirs(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let dirs: Vec<&Path> = self.sources.iter().flat_map(|s| s.dirs()).collect();
        if let Some(Unwatched { count, error }) = watcher.watch_only(&dirs) {
            warn!(
                "{count} directories are not watched by inotify ({error}; raise \
                 fs.inotify.max_user_watches): files there are served once they have not \
                 changed for the settle time"
            );
        }
    }

    /// When the next timed rescan is due, if there are timed rescans.
    pub(super) fn next_due_ms(&self) -> Option<u64> {
        (self.period_ms > 0).then_some(self.next_due_ms)
    }

    /// When the loop must next come here: at once while a file is read in
    /// slices, else at the next timed rescan.
    pub(super) fn wake_ms(&self) -> Option<u64> {
        if self.reads.busy() {
            return Some(0);
        }
        self.next_due_ms()
    }

    /// Whether a file is being read in slices: the loop must not block.
    pub(super) fn busy(&self) -> bool {
        self.reads.busy()
    }

    /// Reads the next slice of a file being read; once one is read whole,
    /// rescans to serve it. True when a snapshot changed.
    pub(super) fn read_slice(&mut self, service: &mut Service) -> bool {
        if self.reads.step(SLICE) {
            return self.rescan(service, "a file was read");
        }
        false
    }

    /// After SIGIO, or before a request is answered: takes in the inotify
    /// events queued, and rescans at once when one of them changes what is
    /// served (a writer closed a file, a file was renamed in or removed).
    /// True when it rescanned; `changed` tells whether a snapshot changed.
    pub(super) fn on_files_changed(&mut self, service: &mut Service, changed: &mut bool) -> bool {
        let Some(watcher) = self.watcher.as_mut() else {
            return false;
        };
        if !watcher.drain() {
            return false;
        }
        *changed |= self.rescan(service, "inotify");
        true
    }

    /// Rescans when the timer is due; true when the catalog changed.
    pub(super) fn on_timer(&mut self, service: &mut Service, now_ms: u64) -> bool {
        if self.period_ms == 0 || now_ms < self.next_due_ms {
            return false;
        }
        self.next_due_ms = now_ms.saturating_add(self.period_ms);
        self.rescan(service, "timer")
    }

    /// Whether a request that missed may rescan now (and notes that it
    /// does): not within [`MISS_RESCAN_INTERVAL_MS`] of the last one, and
    /// only when the directory changed since the last rescan or a file is
    /// still settling (`settling`), so that devices polling for an update that is not
    /// there cost one `stat` of the directory, not a scan.
    /// A file tree counts as changed when one of its directories did.
    pub(super) fn may_rescan_on_miss(&mut self, settling: bool, now_ms: u64) -> bool {
        if self.finish_reads() {
            return true;
        }
        let recent = self
            .last_miss_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < MISS_RESCAN_INTERVAL_MS);
        if recent {
            return false;
        }
        if !settling && !self.sources.iter().any(|source| source.may_have_changed()) {
            return false;
        }
        self.last_miss_ms = Some(now_ms);
        true
    }

    /// Whether the reply `outcome` is the first block of a file that was
    /// replaced on disk since the snapshot read it (one `stat`), and a
    /// rescan may run for it now: a file republished under the same name
    /// (RIOT's `riot.suit.latest.bin`) is then taken in before the device's
    /// first request is answered, as a miss is for a new name. Blocks
    /// after the first never look at the disk. Rate-limited like misses,
    /// and one file asked for again and again is looked at only every
    /// [`STALE_CHECK_INTERVAL_MS`].
    #[inline]
    pub(super) fn may_rescan_on_stale(&mut self, outcome: &Outcome<'_>, now_ms: u64) -> bool {
        let first_block = match outcome {
            Outcome::Block(t) => t.is_first(),
            Outcome::File { block, .. } => block.num == 0,
            _ => false,
        };
        first_block && self.first_block_replaced(outcome, now_ms)
    }

    /// Reads the files being read in slices to their end at once, for a
    /// request that missed and may be asking for one (which would
    /// otherwise get 5.03 although the file is complete on disk): true when
    /// there were some, and a rescan should take them in.
    fn finish_reads(&mut self) -> bool {
        if !self.reads.busy() {
            return false;
        }
        debug!("a request may ask for a file being read: reading it to the end now");
        self.reads.finish_all();
        true
    }

    /// The rest of [`Live::may_rescan_on_stale`], for first blocks only.
    #[inline(never)]
    fn first_block_replaced(&mut self, outcome: &Outcome<'_>, now_ms: u64) -> bool {
        // Where the file is, as (directory, relative name): the path is
        // only built, and allocated, when the file is looked at.
        let Some((index, (base, name, stamp))) = self
            .sources
            .iter()
            .enumerate()
            .find_map(|(index, source)| Some((index, source.file_behind(outcome)?)))
        else {
            return false;
        };
        let key = fnv1a64(name.as_bytes()) ^ index as u64;
        let recent = self.last_stale_check.is_some_and(|(last, at)| {
            last == key && now_ms.saturating_sub(at) < STALE_CHECK_INTERVAL_MS
        });
        let rescanned_lately = self
            .last_miss_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < MISS_RESCAN_INTERVAL_MS);
        if recent || rescanned_lately {
            return false;
        }
        self.last_stale_check = Some((key, now_ms));
        let path = base.join(name);
        if !replaced(&path, stamp) {
            return false;
        }
        // Its new version may be being read in slices: finished now, so
        // that the rescan serves it to this new download.
        self.reads.finish(&path);
        self.last_miss_ms = Some(now_ms);
        true
    }

    /// Rescans every source and swaps each changed snapshot in; true when
    /// one changed. Logs one line per added, replaced and removed entry,
    /// each skipped entry once (a snapshot is only built when the set of
    /// skipped entries changed), and a problem (a collision, a listing
    /// error) once until it changes: the last good snapshot keeps serving.
    pub(super) fn rescan(&mut self, service: &mut Service, why: &str) -> bool {
        let mut changed = false;
        let watcher = self.watcher.as_ref();
        let writer = |path: &Path| watcher.map_or(Writer::Unknown, |w| w.writer(path));
        let mut admission = Admission {
            settle: self.settle,
            writer: &writer,
            reads: Some(&mut self.reads),
        };
        for source in &mut self.sources {
            changed |= source.rescan(service, &mut admission, why);
        }
        // A file read whole that no source took is gone or changed since.
        self.reads.clear_done();
        self.watch_dirs();
        changed
    }
}

/// A watched source as [`Live`] holds it, whatever its snapshot: see
/// [`Watch`], the one implementation.
trait Watched {
    /// Rescans the source, swaps a changed snapshot into `service` and
    /// logs; true when it changed.
    fn rescan(&mut self, service: &mut Service, admission: &mut Admission<'_>, why: &str) -> bool;

    /// As [`Source::dirs`].
    fn dirs(&self) -> Vec<&Path>;

    /// As [`Source::may_have_changed`].
    fn may_have_changed(&self) -> bool;

    /// As [`Source::file_behind`].
    fn file_behind<'o>(&'o self, outcome: &Outcome<'o>) -> Option<(&'o Path, &'o str, Stamp)>;
}

/// A [`Source`] and the last problem logged for it.
struct Watch<S> {
    source: S,
    /// The last collision or listing error, logged once until it changes.
    last_problem: Option<String>,
}

impl<S> Watch<S> {
    fn new(source: S) -> Watch<S> {
        Watch {
            source,
            last_problem: None,
        }
    }
}

impl<S: Source> Watched for Watch<S> {
    fn rescan(&mut self, service: &mut Service, admission: &mut Admission<'_>, why: &str) -> bool {
        let Some(current) = self.source.current(service) else {
            return false;
        };
        let shown = self.source.shown(current);
        let refresh = self.source.refresh(current, SystemTime::now(), admission);
        report_problem(
            &mut self.last_problem,
            &shown,
            S::WHAT,
            refresh.error.as_ref(),
        );
        let Some(next) = refresh.next else {
            return false;
        };
        log_changes(S::KIND, &refresh.added, &refresh.replaced, &refresh.removed);
        for skipped in &refresh.skipped {
            warn!("skipped {}{skipped}", S::KIND);
        }
        for pending in &refresh.pending {
            debug!("{}", PendingLine::<S>(pending, PhantomData));
        }
        let count = S::count(&next);
        S::swap(service, next);
        info!("{} ({why}): {count} {}", S::NAME, S::UNITS);
        true
    }

    fn dirs(&self) -> Vec<&Path> {
        self.source.dirs()
    }

    fn may_have_changed(&self) -> bool {
        self.source.may_have_changed()
    }

    fn file_behind<'o>(&'o self, outcome: &Outcome<'o>) -> Option<(&'o Path, &'o str, Stamp)> {
        self.source.file_behind(outcome)
    }
}

/// The debug line of a file that has not settled, as its source writes it.
struct PendingLine<'p, S: Source>(&'p S::Pending, PhantomData<S>);

impl<S: Source> fmt::Display for PendingLine<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        S::fmt_pending(self.0, f)
    }
}

/// Logs a rescan's problem (a collision, a listing error) once until it
/// changes, and its end once; `last` remembers what was logged.
fn report_problem(
    last: &mut Option<String>,
    shown: &str,
    what: &str,
    error: Option<&impl std::fmt::Display>,
) {
    match error {
        Some(error) => {
            let problem = error.to_string();
            if last.as_deref() != Some(problem.as_str()) {
                warn!("rescan of {shown}: {problem}; the last good {what} keeps serving");
                *last = Some(problem);
            }
        }
        None => {
            if last.take().is_some() {
                info!("rescan of {shown}: the problem is gone");
            }
        }
    }
}

/// One info line per published, replaced and removed name.
fn log_changes(kind: &str, added: &[String], replaced: &[String], removed: &[String]) {
    for name in added {
        info!("published {kind}{name}");
    }
    for name in replaced {
        info!("replaced {kind}{name}");
    }
    for name in removed {
        info!("removed {kind}{name}");
    }
}

/// Whether the file at `path` is no longer the one whose stamp was
/// `stamp` (replaced, rewritten or removed).
fn replaced(path: &Path, stamp: Stamp) -> bool {
    std::fs::metadata(path)
        .ok()
        .and_then(|meta| stamp_of(&meta).ok())
        != Some(stamp)
}
