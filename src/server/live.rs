//! The live catalog: the firmware directory (and the `--files` tree) is
//! scanned again on a timer, on SIGHUP and when a request misses, and a
//! changed snapshot replaces the served one between two datagrams
//! (`Catalog::refresh` and `FileTree::refresh` do the reading and decide
//! what changed; this module decides when, and logs).

use crate::hash::fnv1a64;
use crate::service::{Outcome, Service};
use crate::snapshot::{stamp_of, Stamp};
use crate::tree::{self, FileTree};
use log::{debug, info, warn};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
#[derive(Debug)]
pub(super) struct Live {
    /// The catalog's directory; `None` with `--fileserver` alone (an empty
    /// catalog, only the tree watched).
    dir: Option<PathBuf>,
    /// Milliseconds between timed rescans; 0: only SIGHUP and misses.
    period_ms: u64,
    settle: Duration,
    /// Loop time of the next timed rescan.
    next_due_ms: u64,
    /// Loop time of the last rescan caused by a miss.
    last_miss_ms: Option<u64>,
    /// The directory's modification time at the last rescan: a file added,
    /// removed or renamed in changes it, so a miss with the same time has
    /// nothing new to find (unless a file was still settling).
    dir_mtime: Option<SystemTime>,
    /// The last collision or listing error, logged once until it changes.
    last_problem: Option<String>,
    /// The same for the file tree.
    last_tree_problem: Option<String>,
    /// The served tree's directories and their modification times, so
    /// that a miss can tell whether the tree may have changed.
    tree_dirs: Vec<(PathBuf, Option<SystemTime>)>,
    /// Which file (a hash of its path) was last checked for a replacement
    /// after a first block, and when.
    last_stale_check: Option<(u64, u64)>,
    /// The file tree's directory, if one is served.
    tree_root: Option<PathBuf>,
}

impl Live {
    /// Watches `dir`, rescanning every `period_ms` (0: never on a timer) and
    /// admitting a changed file once it has not changed for `settle_ms`.
    /// `tree` is the file tree served at the start, if any.
    pub(super) fn new(
        dir: Option<PathBuf>,
        tree: Option<&FileTree>,
        period_ms: u64,
        settle_ms: u64,
        now_ms: u64,
    ) -> Live {
        Live {
            dir,
            period_ms,
            settle: Duration::from_millis(settle_ms),
            next_due_ms: now_ms.saturating_add(period_ms),
            last_miss_ms: None,
            dir_mtime: None,
            last_problem: None,
            last_tree_problem: None,
            tree_dirs: tree.map(|t| t.dir_mtimes().to_vec()).unwrap_or_default(),
            last_stale_check: None,
            tree_root: tree.map(|t| t.path().to_path_buf()),
        }
    }

    /// When the next timed rescan is due, if there are timed rescans.
    pub(super) fn next_due_ms(&self) -> Option<u64> {
        (self.period_ms > 0).then_some(self.next_due_ms)
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
        let recent = self
            .last_miss_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < MISS_RESCAN_INTERVAL_MS);
        if recent {
            return false;
        }
        let unchanged = match &self.dir {
            Some(dir) => self.dir_mtime.is_some() && self.dir_mtime == dir_mtime(dir),
            None => true,
        };
        let tree_changed = || tree::dirs_changed(&self.tree_dirs);
        if unchanged && !settling && !tree_changed() {
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

    /// The rest of [`Live::may_rescan_on_stale`], for first blocks only.
    #[inline(never)]
    fn first_block_replaced(&mut self, outcome: &Outcome<'_>, now_ms: u64) -> bool {
        // Where the file is, as (directory, relative name): the path is
        // only built, and allocated, when the file is looked at.
        let (base, name, stamp) = match outcome {
            Outcome::Block(t) => match (&self.dir, t.image.stamp) {
                (Some(dir), Some(stamp)) => (dir, t.image.file_name.as_str(), stamp),
                _ => return false,
            },
            Outcome::File { file, .. } => match &self.tree_root {
                Some(root) => (root, file.path.as_str(), file.stamp),
                None => return false,
            },
            _ => return false,
        };
        let in_tree = matches!(outcome, Outcome::File { .. });
        let key = fnv1a64(name.as_bytes()) ^ u64::from(in_tree);
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
        if !replaced(&base.join(name), stamp) {
            return false;
        }
        self.last_miss_ms = Some(now_ms);
        true
    }

    /// Scans the directory and swaps a changed snapshot in; true when the
    /// catalog changed. Logs one line per added, replaced and removed
    /// image, each skipped file once (a snapshot is only built when the
    /// set of skipped files changed), and a collision once until it
    /// changes: the last good snapshot keeps serving.
    pub(super) fn rescan(&mut self, service: &mut Service, why: &str) -> bool {
        let tree_changed = self.rescan_tree(service, why);
        let catalog_changed = match self.dir.clone() {
            Some(dir) => self.rescan_catalog(&dir, service, why),
            None => false,
        };
        tree_changed || catalog_changed
    }

    /// Walks the file tree, if one is served, and swaps a changed snapshot
    /// in; logs like the catalog's rescan.
    fn rescan_tree(&mut self, service: &mut Service, why: &str) -> bool {
        let Some(tree) = service.tree() else {
            return false;
        };
        let refresh = tree.refresh(SystemTime::now(), self.settle);
        let shown = tree.path().display().to_string();
        if let Some(next) = &refresh.next {
            self.tree_dirs = next.dir_mtimes().to_vec();
        }
        report_problem(
            &mut self.last_tree_problem,
            &shown,
            "tree",
            refresh.error.as_ref(),
        );
        let Some(next) = refresh.next else {
            return false;
        };
        log_changes("file ", &refresh.added, &refresh.replaced, &refresh.removed);
        for skipped in &refresh.skipped {
            warn!("skipped file {skipped}");
        }
        for path in &refresh.pending {
            debug!("file {path}: not served until it has settled");
        }
        let files = next.files().len();
        service.replace_tree(Some(next));
        info!("file tree ({why}): {files} files");
        true
    }

    /// The catalog's part of [`Live::rescan`].
    fn rescan_catalog(&mut self, dir: &std::path::Path, service: &mut Service, why: &str) -> bool {
        // Read before the listing: a change during the scan shows at the
        // next miss.
        self.dir_mtime = dir_mtime(dir);
        let refresh = service
            .catalog()
            .refresh(dir, SystemTime::now(), self.settle);
        report_problem(
            &mut self.last_problem,
            &dir.display().to_string(),
            "catalog",
            refresh.error.as_ref(),
        );
        let Some(next) = refresh.next else {
            return false;
        };
        log_changes("", &refresh.added, &refresh.replaced, &refresh.removed);
        for skipped in &refresh.skipped {
            warn!("skipped {}: {}", skipped.file, skipped.reason);
        }
        for pending in &refresh.pending {
            debug!("{pending}");
        }
        let images = next.images().len();
        service.replace_catalog(next);
        info!("catalog ({why}): {images} images");
        true
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

/// The modification time of `dir`, `None` when it cannot be read.
fn dir_mtime(dir: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}
