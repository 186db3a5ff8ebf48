//! The sources live reload watches, behind one trait: the firmware catalog
//! (`-d DIR`) and the file tree (`--files DIR`).
//!
//! A [`Source`] says where its snapshot is served from, how the next one
//! is built from it, how a miss can tell cheaply whether anything may have
//! changed, and which file on disk is behind a reply; [`super::Live`] does
//! the rest for every source alike: when to rescan, the log lines, the
//! swap. A new reloadable source (a key file, a rollout policy) is one more
//! implementation here and one more entry in [`super::Live::new`]'s list.
//!
//! This module never logs and never decides when to rescan.

use crate::catalog::{self, Catalog, Pending, Skipped};
use crate::service::{Outcome, Service};
use crate::snapshot::{Admission, Refresh, Stamp};
use crate::tree::{self, FileTree, TreeError, TreeSkipped};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A source of immutable snapshots that live reload rescans and swaps in
/// whole (see [`crate::snapshot`]).
pub(super) trait Source {
    /// The immutable snapshot the service serves.
    type Snapshot;
    /// A file found but not served yet because it has not settled.
    type Pending;
    /// An entry left out of the snapshot, worth a warning.
    type Skipped: fmt::Display;
    /// Why no next snapshot could be built; the last good one keeps serving.
    type Error: fmt::Display;

    /// What the summary line of a swap calls the snapshot: `catalog`.
    const NAME: &'static str;
    /// What a problem's warning calls it: "the last good {WHAT} keeps serving".
    const WHAT: &'static str;
    /// Put before an entry's name in the log lines of a change or a skip:
    /// `""` for an image, `"file "` for a file of the tree.
    const KIND: &'static str;
    /// What the summary line counts: `images`.
    const UNITS: &'static str;

    /// The snapshot served now; `None`: none, nothing to rescan.
    fn current<'s>(&self, service: &'s Service) -> Option<&'s Self::Snapshot>;

    /// Where `current` was read from, for log lines.
    fn shown(&self, current: &Self::Snapshot) -> String;

    /// Builds the next snapshot from `current` (which stays as it is),
    /// reusing what did not change, and notes what
    /// [`Source::may_have_changed`] compares with.
    fn refresh(
        &mut self,
        current: &Self::Snapshot,
        now: SystemTime,
        admission: &mut Admission<'_>,
    ) -> Refresh<Self::Snapshot, Self::Pending, Self::Skipped, Self::Error>;

    /// The directories a refresh lists, to be watched with inotify.
    fn dirs(&self) -> Vec<&Path>;

    /// Serves `next` from the next datagram on.
    fn swap(service: &mut Service, next: Self::Snapshot);

    /// How many entries `snapshot` serves, for the summary line.
    fn count(snapshot: &Self::Snapshot) -> usize;

    /// Writes the debug line of a file that has not settled.
    ///
    /// # Errors
    /// As `f`'s writes.
    fn fmt_pending(pending: &Self::Pending, f: &mut fmt::Formatter<'_>) -> fmt::Result;

    /// Whether a rescan may find something new since the last one, cheaply
    /// (a `stat` per directory): a request that missed rescans only then.
    fn may_have_changed(&self) -> bool;

    /// The file on disk behind the reply `outcome`, as (directory, name in
    /// it, stamp when it was read), if this source served it.
    fn file_behind<'o>(&'o self, outcome: &Outcome<'o>) -> Option<(&'o Path, &'o str, Stamp)>;
}

/// The `.fmu` images of the catalog's directory.
#[derive(Debug)]
pub(super) struct CatalogSource {
    /// The catalog's directory.
    pub(super) dir: PathBuf,
    /// The directory's modification time at the last rescan: a file added,
    /// removed or renamed in changes it, so a miss with the same time has
    /// nothing new to find (unless a file was still settling).
    pub(super) dir_mtime: Option<SystemTime>,
}

impl Source for CatalogSource {
    type Snapshot = Catalog;
    type Pending = Pending;
    type Skipped = Skipped;
    type Error = catalog::Error;

    const NAME: &'static str = "catalog";
    const WHAT: &'static str = "catalog";
    const KIND: &'static str = "";
    const UNITS: &'static str = "images";

    fn current<'s>(&self, service: &'s Service) -> Option<&'s Catalog> {
        Some(service.catalog())
    }

    fn shown(&self, _: &Catalog) -> String {
        self.dir.display().to_string()
    }

    fn refresh(
        &mut self,
        current: &Catalog,
        now: SystemTime,
        admission: &mut Admission<'_>,
    ) -> catalog::Refresh {
        // Read before the listing: a change during the scan shows at the
        // next miss.
        self.dir_mtime = dir_mtime(&self.dir);
        current.refresh_admitting(&self.dir, now, admission)
    }

    fn dirs(&self) -> Vec<&Path> {
        vec![&self.dir]
    }

    fn swap(service: &mut Service, next: Catalog) {
        service.replace_catalog(next);
    }

    fn count(snapshot: &Catalog) -> usize {
        snapshot.images().len()
    }

    fn fmt_pending(pending: &Pending, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{pending}")
    }

    fn may_have_changed(&self) -> bool {
        self.dir_mtime.is_none() || self.dir_mtime != dir_mtime(&self.dir)
    }

    fn file_behind<'o>(&'o self, outcome: &Outcome<'o>) -> Option<(&'o Path, &'o str, Stamp)> {
        match outcome {
            Outcome::Block(t) => Some((&self.dir, t.image.file_name.as_str(), t.image.stamp?)),
            _ => None,
        }
    }
}

/// The files of the `--files` tree, rescanned whenever the service has one.
#[derive(Debug)]
pub(super) struct TreeSource {
    /// The tree's directory, if one was served when watching started.
    pub(super) root: Option<PathBuf>,
    /// The served tree's directories and their modification times, so
    /// that a miss can tell whether the tree may have changed.
    pub(super) dirs: Vec<(PathBuf, Option<SystemTime>)>,
}

impl Source for TreeSource {
    type Snapshot = FileTree;
    type Pending = String;
    type Skipped = TreeSkipped;
    type Error = TreeError;

    const NAME: &'static str = "file tree";
    const WHAT: &'static str = "tree";
    const KIND: &'static str = "file ";
    const UNITS: &'static str = "files";

    fn current<'s>(&self, service: &'s Service) -> Option<&'s FileTree> {
        service.tree()
    }

    fn shown(&self, current: &FileTree) -> String {
        current.path().display().to_string()
    }

    fn refresh(
        &mut self,
        current: &FileTree,
        now: SystemTime,
        admission: &mut Admission<'_>,
    ) -> tree::TreeRefresh {
        let refresh = current.refresh_admitting(now, admission);
        if let Some(next) = &refresh.next {
            self.dirs = next.dir_mtimes().to_vec();
        }
        refresh
    }

    fn dirs(&self) -> Vec<&Path> {
        self.dirs.iter().map(|(dir, _)| dir.as_path()).collect()
    }

    fn swap(service: &mut Service, next: FileTree) {
        service.replace_tree(Some(next));
    }

    fn count(snapshot: &FileTree) -> usize {
        snapshot.files().len()
    }

    fn fmt_pending(path: &String, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file {path}: not served until it has settled")
    }

    fn may_have_changed(&self) -> bool {
        tree::dirs_changed(&self.dirs)
    }

    fn file_behind<'o>(&'o self, outcome: &Outcome<'o>) -> Option<(&'o Path, &'o str, Stamp)> {
        match (outcome, &self.root) {
            (Outcome::File { file, .. }, Some(root)) => {
                Some((root, file.path.as_str(), file.stamp))
            }
            _ => None,
        }
    }
}

/// The modification time of `dir`, `None` when it cannot be read.
pub(super) fn dir_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}
