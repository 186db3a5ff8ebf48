//! A plain file tree (`--files DIR`): every regular file under a directory,
//! served at its relative path as `aiocoap-fileserver DIR` serves it, for
//! RIOT's SUIT workflow and Zephyr's `coap_download`.
//!
//! Like [`crate::catalog`], a [`FileTree`] is an immutable snapshot: built
//! by walking the directory, looked up without allocation, rebuilt by
//! `FileTree::refresh` (which reuses the bytes of unchanged files and
//! reads new or changed ones only once they have settled, with the
//! stamping, settling and reading of [`crate::snapshot`]) and swapped in
//! whole. It never touches a socket or the logger.
//!
//! Only what the walk found is served: a request's Uri-Path segments are
//! compared with the segments of real files under the directory, so `..`,
//! `.`, empty segments or percent-encoded dots are names that match
//! nothing, and a symbolic link is followed only when its target stays
//! inside the directory.

use crate::catalog::{AttrValue, CoreLink};
use crate::hash::{fnv1a64, fnv1a64_concat, FnvBuild};
use crate::snapshot::{self, io_reason, stamp_of, Admission, Admit, ImageBytes, Stamp};
use coap_lite::link_format::{LINK_ATTR_CONTENT_FORMAT, LINK_ATTR_MAXIMUM_SIZE_ESTIMATE};
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Most segments of a served file's path (directories plus the file name):
/// deeper entries are left out with a warning.
pub(crate) const MAX_DEPTH: usize = 16;
/// Most files a tree serves: past it a refresh fails and the last good
/// tree keeps serving.
pub(crate) const MAX_FILES: usize = 100_000;

/// Content-Format of a file body (application/octet-stream).
const CT_OCTET_STREAM: u32 = 42;
/// Content-Format of a listing (application/link-format).
const CT_LINK_FORMAT: u32 = 40;

/// One served file.
#[derive(Clone)]
pub struct TreeFile {
    /// The path relative to the tree's directory, `/`-joined, e.g.
    /// `fw/app/board/riot.suit.latest.bin`.
    pub path: String,
    /// `path` split at `/`: what a request's Uri-Path segments must equal.
    segments: Box<[Box<[u8]>]>,
    /// The whole file, shared with the snapshots that kept it unchanged; held as the
    /// catalog holds images.
    pub bytes: Arc<ImageBytes>,
    /// Entity tag: `fnv1a64(bytes).to_be_bytes()`, from the content only.
    pub etag: [u8; 8],
    /// Length, modification time, inode and change time when it was read.
    pub stamp: Stamp,
}

impl TreeFile {
    /// The key of the file's path, as the tree's index holds it: what a
    /// peer's download record names.
    pub(crate) fn key(&self) -> u64 {
        key(self.segments.iter())
    }

    /// The path's segments.
    pub(crate) fn segments(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.segments.iter().map(|s| &s[..])
    }
}

impl fmt::Debug for TreeFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TreeFile")
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// One directory of the tree and its listing.
#[derive(Debug)]
pub struct TreeDir {
    /// Relative `/`-joined path, empty for the tree's directory itself.
    pub path: String,
    segments: Box<[Box<[u8]>]>,
    /// The listing in link format (RFC 6690), as `aiocoap-fileserver`
    /// writes it: `</sub/dir/>;ct=40` for sub-directories and `</sub/f>`
    /// for files, targets relative to the tree's root, sorted by name.
    pub listing: Vec<u8>,
    /// FNV-1a 64 of the listing.
    pub etag: [u8; 8],
}

/// An entry left out of the tree, worth a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSkipped {
    /// The relative path (lossy for a name that is not UTF-8).
    pub path: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for TreeSkipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Why a tree could not be built; the last good one keeps serving.
#[derive(Debug)]
pub enum TreeError {
    /// The tree's directory could not be listed or resolved.
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// More than `MAX_FILES` files.
    TooManyFiles,
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::ReadDir { dir, error } => {
                write!(f, "cannot list {}: {error}", dir.display())
            }
            TreeError::TooManyFiles => write!(f, "more than {MAX_FILES} files"),
        }
    }
}

impl std::error::Error for TreeError {}

/// The outcome of `FileTree::refresh`: the shared [`snapshot::Refresh`] with the tree's
/// types. Names are paths relative to the tree's directory; `pending` holds new and changed
/// files that have not settled (a changed one keeps serving its old bytes); `skipped` the
/// entries left out.
pub type TreeRefresh = snapshot::Refresh<FileTree, String, TreeSkipped, TreeError>;

/// The immutable snapshot of a file tree; see the module docs.
#[derive(Debug)]
pub struct FileTree {
    /// The directory as given.
    dir: PathBuf,
    /// Sorted by path.
    files: Vec<TreeFile>,
    /// [`key`] of a file's segments → indexes into `files`.
    by_key: HashMap<u64, Vec<usize>, FnvBuild>,
    /// Sorted by path; the root first.
    dirs: Vec<TreeDir>,
    dir_by_key: HashMap<u64, Vec<usize>, FnvBuild>,
    /// Every directory walked and its modification time, for
    /// [`FileTree::dirs_changed`].
    dir_mtimes: Vec<(PathBuf, Option<SystemTime>)>,
    /// `</path>;ct=42;sz=N` per file, for `/.well-known/core`.
    links: Vec<CoreLink>,
    core_etag: [u8; 8],
    total_bytes: u64,
    skipped: Vec<TreeSkipped>,
    /// [`key`] of an unsettled new file → the Max-Age to answer with.
    pending: HashMap<u64, u32, FnvBuild>,
}

/// The lookup key of a path: FNV-1a 64 over each segment followed by `/`,
/// so that `[]`, `[""]` and `["a", ""]` all differ.
fn key<'x, T: AsRef<[u8]> + ?Sized + 'x>(segments: impl IntoIterator<Item = &'x T>) -> u64 {
    fnv1a64_concat(
        segments
            .into_iter()
            .flat_map(|segment| [segment.as_ref(), b"/".as_slice()]),
    )
}

fn same<'x, T: AsRef<[u8]> + ?Sized + 'x>(
    stored: &[Box<[u8]>],
    asked: impl IntoIterator<Item = &'x T>,
) -> bool {
    let mut asked = asked.into_iter();
    stored
        .iter()
        .all(|a| asked.next().is_some_and(|b| a[..] == *b.as_ref()))
        && asked.next().is_none()
}

fn split(path: &str) -> Box<[Box<[u8]>]> {
    if path.is_empty() {
        return Box::new([]);
    }
    path.split('/').map(|s| Box::from(s.as_bytes())).collect()
}

/// Names the walk leaves out without a word: hidden (`.x`, so `.`, `..`
/// and the temporaries of rsync, vim and Emacs too), `*.tmp`, backups
/// `x~` and Emacs auto-saves `#x#`.
fn ignored_name(name: &[u8]) -> bool {
    name.starts_with(b".")
        || name.ends_with(b".tmp")
        || name.ends_with(b"~")
        || (name.len() > 1 && name.starts_with(b"#") && name.ends_with(b"#"))
}

/// A file the walk found.
struct Listed {
    rel: String,
    fs_path: PathBuf,
    stamp: Stamp,
}

/// What a walk collects.
#[derive(Default)]
struct Walk {
    files: Vec<Listed>,
    /// Relative paths of the directories, the root (`""`) included.
    dirs: Vec<String>,
    dir_mtimes: Vec<(PathBuf, Option<SystemTime>)>,
    skipped: Vec<TreeSkipped>,
    /// The resolved paths of the directories being walked, root first: a
    /// link to one of them would loop.
    ancestors: Vec<PathBuf>,
    /// [`MAX_FILES`], lower in tests.
    max_files: usize,
}

/// Whether a walk stopped at [`MAX_FILES`].
fn too_many(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<TreeError>())
        .is_some_and(|e| matches!(e, TreeError::TooManyFiles))
}

impl Walk {
    fn skip(&mut self, path: String, reason: impl Into<String>) {
        self.skipped.push(TreeSkipped {
            path,
            reason: reason.into(),
        });
    }

    /// Walks `fs_dir` (relative path `rel`, `depth` segments deep).
    fn dir(&mut self, root: &Path, fs_dir: &Path, rel: &str, depth: usize) -> io::Result<()> {
        let entries = fs::read_dir(fs_dir)?;
        self.ancestors.push(fs::canonicalize(fs_dir)?);
        self.dirs.push(rel.to_owned());
        self.dir_mtimes.push((
            fs_dir.to_path_buf(),
            fs::metadata(fs_dir).and_then(|m| m.modified()).ok(),
        ));
        let walked = self.entries(root, entries, rel, depth);
        self.ancestors.pop();
        walked
    }

    fn entries(
        &mut self,
        root: &Path,
        entries: fs::ReadDir,
        rel: &str,
        depth: usize,
    ) -> io::Result<()> {
        for entry in entries {
            let entry = entry?;
            let os_name = entry.file_name();
            if ignored_name(os_name.as_encoded_bytes()) {
                continue;
            }
            let Some(name) = os_name.to_str() else {
                let lossy = os_name.to_string_lossy();
                self.skip(join(rel, &lossy), "the name is not UTF-8");
                continue;
            };
            let child_rel = join(rel, name);
            if depth + 1 > MAX_DEPTH {
                self.skip(child_rel, format!("deeper than {MAX_DEPTH} path segments"));
                continue;
            }
            let fs_path = entry.path();
            let is_symlink = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            if is_symlink {
                match fs::canonicalize(&fs_path) {
                    Ok(target) if self.ancestors.contains(&target) => {
                        self.skip(
                            child_rel,
                            "a symbolic link to a directory above it (a loop)",
                        );
                        continue;
                    }
                    Ok(target) if target.starts_with(root) => {}
                    Ok(_) => {
                        self.skip(child_rel, "a symbolic link out of the directory");
                        continue;
                    }
                    Err(e) => {
                        self.skip(child_rel, format!("a dangling symbolic link: {e}"));
                        continue;
                    }
                }
            }
            let meta = match fs::metadata(&fs_path) {
                Ok(meta) => meta,
                Err(e) => {
                    self.skip(child_rel, io_reason(&e).to_string());
                    continue;
                }
            };
            if meta.is_dir() {
                match self.dir(root, &fs_path, &child_rel, depth + 1) {
                    Err(e) if too_many(&e) => return Err(e),
                    Err(e) => self.skip(child_rel, format!("cannot list: {e}")),
                    Ok(()) => {}
                }
                continue;
            }
            match stamp_of(&meta) {
                Ok(stamp) => {
                    if self.files.len() >= self.max_files {
                        return Err(io::Error::other(TreeError::TooManyFiles));
                    }
                    self.files.push(Listed {
                        rel: child_rel,
                        fs_path,
                        stamp,
                    });
                }
                Err(reason) => self.skip(child_rel, reason.to_string()),
            }
        }
        Ok(())
    }
}

/// Whether one of `dirs` (as [`FileTree::dir_mtimes`]) has another
/// modification time now: one `stat` per directory.
pub(crate) fn dirs_changed(dirs: &[(PathBuf, Option<SystemTime>)]) -> bool {
    dirs.iter()
        .any(|(path, mtime)| fs::metadata(path).and_then(|m| m.modified()).ok() != *mtime)
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn max_age(wait: Duration) -> u32 {
    u32::try_from(wait.as_millis().div_ceil(1000))
        .unwrap_or(u32::MAX)
        .max(1)
}

impl FileTree {
    /// An empty tree over `dir`: what [`FileTree::load`] refreshes.
    pub fn empty(dir: &Path) -> FileTree {
        FileTree::assemble(
            dir,
            Vec::new(),
            vec![String::new()],
            Vec::new(),
            Vec::new(),
            HashMap::default(),
        )
    }

    /// Walks `dir` and reads every file in it whose modification time is
    /// not in the future (`now` is the current time).
    ///
    /// # Errors
    ///
    /// [`TreeError`] when `dir` cannot be listed or holds too many files.
    pub fn load(dir: &Path, now: SystemTime) -> Result<TreeRefresh, TreeError> {
        let mut refresh = FileTree::empty(dir).refresh(now, Duration::ZERO);
        match refresh.error.take() {
            Some(error) => Err(error),
            None => {
                if refresh.next.is_none() {
                    refresh.next = Some(FileTree::empty(dir));
                }
                Ok(refresh)
            }
        }
    }

    /// Walks the directory again: files whose stamp is unchanged keep their
    /// bytes (the same `Arc`), new or changed ones are read once they have
    /// not changed for `settle` (until then a changed file keeps serving
    /// its old bytes and a new one answers 5.03).
    pub(crate) fn refresh(&self, now: SystemTime, settle: Duration) -> TreeRefresh {
        self.refresh_limited(now, &mut Admission::settle_only(settle), MAX_FILES)
    }

    /// [`FileTree::refresh`], with new and changed files admitted as `admission` says: at
    /// once when their writer closed them, in slices when they are long.
    pub(crate) fn refresh_admitting(
        &self,
        now: SystemTime,
        admission: &mut Admission<'_>,
    ) -> TreeRefresh {
        self.refresh_limited(now, admission, MAX_FILES)
    }

    fn refresh_limited(
        &self,
        now: SystemTime,
        admission: &mut Admission<'_>,
        max_files: usize,
    ) -> TreeRefresh {
        let mut out = TreeRefresh::default();
        let mut walk = Walk {
            max_files,
            ..Walk::default()
        };
        let root = match fs::canonicalize(&self.dir) {
            Ok(root) => root,
            Err(error) => {
                out.error = Some(TreeError::ReadDir {
                    dir: self.dir.clone(),
                    error,
                });
                return out;
            }
        };
        if let Err(error) = walk.dir(&root, &self.dir, "", 0) {
            out.error = Some(
                match error.get_ref().and_then(|e| e.downcast_ref::<TreeError>()) {
                    Some(TreeError::TooManyFiles) => TreeError::TooManyFiles,
                    _ => TreeError::ReadDir {
                        dir: self.dir.clone(),
                        error,
                    },
                },
            );
            return out;
        }
        let mut files = Vec::with_capacity(walk.files.len());
        let mut pending = HashMap::default();
        for listed in walk.files {
            let segments = split(&listed.rel);
            let old = self.file(segments.iter());
            if let Some(old) = old.filter(|old| old.stamp == listed.stamp) {
                files.push(old.clone());
                continue;
            }
            let wait = match admission.admit(&listed.fs_path, listed.stamp, now) {
                Admit::Ready(bytes, etag) => Ok((bytes, etag)),
                Admit::Wait(wait) => Err(Some(wait)),
                Admit::Skip(reason) => {
                    walk.skipped.push(TreeSkipped {
                        path: listed.rel.clone(),
                        reason: reason.to_string(),
                    });
                    Err(None)
                }
            };
            match wait {
                Ok((bytes, etag)) => files.push(TreeFile {
                    etag,
                    bytes: Arc::new(bytes),
                    path: listed.rel,
                    segments,
                    stamp: listed.stamp,
                }),
                Err(Some(wait)) => {
                    out.pending.push(listed.rel.clone());
                    match old {
                        Some(old) => files.push(old.clone()),
                        None => {
                            pending.insert(key(&segments), max_age(wait));
                        }
                    }
                }
                Err(None) => {}
            }
        }
        walk.skipped.sort_by(|a, b| a.path.cmp(&b.path));
        out.pending.sort();
        out.skipped = walk.skipped.clone();
        let next = FileTree::assemble(
            &self.dir,
            files,
            walk.dirs,
            walk.dir_mtimes,
            walk.skipped,
            pending,
        );
        out.note_changes(&self.files, &next.files, |file| {
            (file.path.as_str(), &file.bytes)
        });
        let same_dirs = next.dirs.len() == self.dirs.len()
            && next
                .dirs
                .iter()
                .zip(&self.dirs)
                .all(|(a, b)| a.path == b.path);
        let same_pending = next.pending == self.pending;
        let unchanged = out.added.is_empty()
            && out.replaced.is_empty()
            && out.removed.is_empty()
            && same_dirs
            && same_pending
            && next.skipped == self.skipped
            && next.dir_mtimes == self.dir_mtimes;
        if !unchanged {
            out.next = Some(next);
        }
        out
    }

    fn assemble(
        dir: &Path,
        mut files: Vec<TreeFile>,
        mut dirs: Vec<String>,
        dir_mtimes: Vec<(PathBuf, Option<SystemTime>)>,
        skipped: Vec<TreeSkipped>,
        pending: HashMap<u64, u32, FnvBuild>,
    ) -> FileTree {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        dirs.sort();
        let mut by_key: HashMap<u64, Vec<usize>, FnvBuild> = HashMap::default();
        for (index, file) in files.iter().enumerate() {
            by_key.entry(key(&file.segments)).or_default().push(index);
        }
        let mut tree_dirs = Vec::with_capacity(dirs.len());
        let mut dir_by_key: HashMap<u64, Vec<usize>, FnvBuild> = HashMap::default();
        for (index, path) in dirs.iter().enumerate() {
            let segments = split(path);
            // Children: files and sub-directories one segment deeper.
            let mut children: Vec<(&str, bool)> = Vec::new();
            let is_child = |child: &[Box<[u8]>]| {
                child.len() == segments.len() + 1 && child.starts_with(&segments)
            };
            for file in &files {
                if is_child(&file.segments) {
                    children.push((&file.path, false));
                }
            }
            for sub in &dirs {
                if !sub.is_empty() && is_child(&split(sub)) {
                    children.push((sub, true));
                }
            }
            children.sort();
            let links: Vec<CoreLink> = children
                .iter()
                .map(|(child, is_dir)| {
                    if *is_dir {
                        CoreLink::new(
                            &format!("/{child}/"),
                            vec![(LINK_ATTR_CONTENT_FORMAT, AttrValue::Number(CT_LINK_FORMAT))],
                        )
                    } else {
                        CoreLink::new(&format!("/{child}"), Vec::new())
                    }
                })
                .collect();
            let listing: Vec<u8> = links
                .iter()
                .enumerate()
                .flat_map(|(i, link)| {
                    let separator: &[u8] = if i > 0 { b"," } else { b"" };
                    separator.iter().chain(link.text.iter()).copied()
                })
                .collect();
            dir_by_key.entry(key(&segments)).or_default().push(index);
            tree_dirs.push(TreeDir {
                path: path.clone(),
                etag: fnv1a64(&listing).to_be_bytes(),
                segments,
                listing,
            });
        }
        let links: Vec<CoreLink> = files
            .iter()
            .map(|file| {
                CoreLink::new(
                    &format!("/{}", file.path),
                    vec![
                        (LINK_ATTR_CONTENT_FORMAT, AttrValue::Number(CT_OCTET_STREAM)),
                        (
                            LINK_ATTR_MAXIMUM_SIZE_ESTIMATE,
                            AttrValue::Number(u32::try_from(file.bytes.len()).unwrap_or(u32::MAX)),
                        ),
                    ],
                )
            })
            .collect();
        let core_etag = fnv1a64_concat(links.iter().enumerate().flat_map(|(i, link)| {
            let separator: &[u8] = if i > 0 { b"," } else { b"" };
            [separator, &link.text[..]]
        }))
        .to_be_bytes();
        FileTree {
            dir: dir.to_path_buf(),
            total_bytes: files.iter().map(|f| f.bytes.len() as u64).sum(),
            files,
            by_key,
            dirs: tree_dirs,
            dir_by_key,
            dir_mtimes,
            links,
            core_etag,
            skipped,
            pending,
        }
    }

    /// The file at the path `segments` (Uri-Path values: a slice, or a
    /// request's [`Path::iter`](crate::wire::Path::iter), walked as it
    /// is decoded). O(1), no allocation.
    pub fn file<'x, T, I>(&self, segments: I) -> Option<&TreeFile>
    where
        T: AsRef<[u8]> + ?Sized + 'x,
        I: IntoIterator<Item = &'x T> + Clone,
    {
        self.by_key
            .get(&key(segments.clone()))?
            .iter()
            .filter_map(|&i| self.files.get(i))
            .find(|file| same(&file.segments, segments.clone()))
    }

    /// The directory at the path `segments` (`[]`: the root), given as to
    /// [`FileTree::file`]. O(1), no allocation.
    pub fn dir<'x, T, I>(&self, segments: I) -> Option<&TreeDir>
    where
        T: AsRef<[u8]> + ?Sized + 'x,
        I: IntoIterator<Item = &'x T> + Clone,
    {
        self.dir_by_key
            .get(&key(segments.clone()))?
            .iter()
            .filter_map(|&i| self.dirs.get(i))
            .find(|dir| same(&dir.segments, segments.clone()))
    }

    /// For a path the tree does not serve: the Max-Age of a 5.03 when it is
    /// a new file that had not settled when this snapshot was built.
    pub(crate) fn pending_retry<'x, T: AsRef<[u8]> + ?Sized + 'x>(
        &self,
        segments: impl IntoIterator<Item = &'x T>,
    ) -> Option<u32> {
        self.pending.get(&key(segments)).copied()
    }

    /// Whether a new file had not settled when this snapshot was built.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Every directory walked and its modification time then, for
    /// [`dirs_changed`].
    pub(crate) fn dir_mtimes(&self) -> &[(PathBuf, Option<SystemTime>)] {
        &self.dir_mtimes
    }

    /// The files, sorted by path.
    pub fn files(&self) -> &[TreeFile] {
        &self.files
    }

    /// The directory the tree was walked from.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// One `/.well-known/core` link per file: `</path>;ct=42;sz=N`.
    pub(crate) fn core_links(&self) -> &[CoreLink] {
        &self.links
    }

    /// FNV-1a 64 of the links joined by `,`.
    pub(crate) fn core_etag(&self) -> [u8; 8] {
        self.core_etag
    }

    /// Sum of the file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let path =
                std::env::temp_dir().join(format!("iot-ota-tree-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }

        fn write(&self, rel: &str, bytes: &[u8]) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            fs::write(path, bytes).expect("write");
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn far_future() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    fn load(dir: &Dir) -> (FileTree, TreeRefresh) {
        let mut refresh = FileTree::load(&dir.0, far_future()).expect("loads");
        (refresh.next.take().expect("a tree"), refresh)
    }

    fn segs(path: &str) -> Vec<&[u8]> {
        path.split('/').map(str::as_bytes).collect()
    }

    #[test]
    fn files_are_found_at_their_relative_paths() {
        let dir = Dir::new("paths");
        dir.write("fw/app/board/riot.suit.latest.bin", b"suit");
        dir.write("fw/app/board/slot0.5.bin", b"slot0");
        dir.write("top", b"t");
        let (tree, report) = load(&dir);
        assert_eq!(
            report.added,
            [
                "fw/app/board/riot.suit.latest.bin",
                "fw/app/board/slot0.5.bin",
                "top"
            ]
        );
        let file = tree
            .file(&segs("fw/app/board/slot0.5.bin"))
            .expect("served");
        assert_eq!(&file.bytes[..], b"slot0");
        assert_eq!(file.etag, fnv1a64(b"slot0").to_be_bytes());
        assert!(tree.file(&segs("fw/app/board")).is_none());
        assert!(tree
            .file(&["fw/app/board/slot0.5.bin".as_bytes()])
            .is_none());
        assert!(tree.dir(&segs("fw/app/board")).is_some());
        assert!(tree.dir::<&[u8], _>(&[]).is_some());
        assert!(tree.dir(&[b"".as_slice()]).is_none());
    }

    #[test]
    fn listings_are_aiocoap_link_format() {
        let dir = Dir::new("listing");
        dir.write("fw/a.bin", b"a");
        dir.write("fw/sub/b.bin", b"b");
        dir.write("top", b"t");
        let (tree, _) = load(&dir);
        let root = tree.dir::<&[u8], _>(&[]).expect("root");
        assert_eq!(root.listing, b"</fw/>;ct=40,</top>");
        let fw = tree.dir(&segs("fw")).expect("fw");
        assert_eq!(fw.listing, b"</fw/a.bin>,</fw/sub/>;ct=40");
        let links: Vec<&[u8]> = tree.core_links().iter().map(|l| &l.text[..]).collect();
        assert_eq!(
            links,
            [
                b"</fw/a.bin>;ct=42;sz=1".as_slice(),
                b"</fw/sub/b.bin>;ct=42;sz=1",
                b"</top>;ct=42;sz=1"
            ]
        );
    }

    #[test]
    fn escapes_and_odd_segments_match_nothing() {
        let dir = Dir::new("escapes");
        dir.write("fw/a.bin", b"a");
        let (tree, _) = load(&dir);
        for path in [
            &["fw", "..", "fw", "a.bin"][..],
            &["..", "etc", "passwd"],
            &["fw", ".", "a.bin"],
            &[".", "fw", "a.bin"],
            &["fw", "", "a.bin"],
            &["", "fw", "a.bin"],
            &["%2e%2e", "fw", "a.bin"],
            &["fw", "%2e", "a.bin"],
            &["fw/a.bin"],
        ] {
            assert!(tree.file(path).is_none(), "{path:?}");
            assert!(tree.dir(path).is_none(), "{path:?}");
        }
    }

    #[test]
    fn hidden_temporary_and_outside_links_are_left_out() {
        let dir = Dir::new("ignored");
        let outside = Dir::new("ignored-outside");
        outside.write("secret", b"s");
        dir.write("fw/a.bin", b"a");
        dir.write(".hidden", b"h");
        dir.write(".git/config", b"h");
        dir.write("fw/a.bin.tmp", b"h");
        dir.write("fw/a.bin~", b"h");
        dir.write("fw/#a.bin#", b"h");
        symlink(outside.0.join("secret"), dir.0.join("fw/out")).expect("link");
        symlink(&outside.0, dir.0.join("outdir")).expect("link");
        symlink(dir.0.join("fw/a.bin"), dir.0.join("inside")).expect("link");
        let (tree, report) = load(&dir);
        let paths: Vec<&str> = tree.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["fw/a.bin", "inside"]);
        let skipped: Vec<&str> = report.skipped.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(skipped, ["fw/out", "outdir"]);
    }

    #[test]
    fn symbolic_link_loops_are_cut() {
        let dir = Dir::new("loops");
        dir.write("fw/a.bin", b"a");
        symlink(&dir.0, dir.0.join("fw/up")).expect("link");
        symlink("..", dir.0.join("fw/parent")).expect("link");
        symlink(".", dir.0.join("fw/self")).expect("link");
        symlink(dir.0.join("fw"), dir.0.join("again")).expect("link");
        let (tree, report) = load(&dir);
        let paths: Vec<&str> = tree.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["again/a.bin", "fw/a.bin"]);
        let skipped: Vec<&str> = report.skipped.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            skipped,
            [
                "again/parent",
                "again/self",
                "again/up",
                "fw/parent",
                "fw/self",
                "fw/up"
            ]
        );
    }

    #[test]
    fn too_many_files_fail_the_refresh_and_keep_the_last_tree() {
        let dir = Dir::new("too-many");
        dir.write("a/1", b"1");
        dir.write("a/2", b"2");
        let (tree, _) = load(&dir);
        dir.write("b/c/3", b"3");
        dir.write("b/c/4", b"4");
        let refresh =
            tree.refresh_limited(far_future(), &mut Admission::settle_only(Duration::ZERO), 3);
        assert!(matches!(refresh.error, Some(TreeError::TooManyFiles)));
        assert!(refresh.next.is_none());
        assert!(refresh.skipped.is_empty(), "{:?}", refresh.skipped);
        let fine =
            tree.refresh_limited(far_future(), &mut Admission::settle_only(Duration::ZERO), 4);
        assert_eq!(fine.next.expect("changed").files().len(), 4);
    }

    #[test]
    fn depth_is_bounded() {
        let dir = Dir::new("depth");
        let deep = vec!["d"; MAX_DEPTH].join("/");
        dir.write(&format!("{deep}/f"), b"f");
        let ok = vec!["d"; MAX_DEPTH - 1].join("/");
        dir.write(&format!("{ok}/f"), b"f");
        let (tree, report) = load(&dir);
        assert_eq!(tree.files().len(), 1);
        assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    }

    #[test]
    fn refresh_reuses_unchanged_bytes_and_reports_changes() {
        let dir = Dir::new("refresh");
        dir.write("a", b"a");
        dir.write("b", b"b");
        let (tree, _) = load(&dir);
        let again = tree.refresh(far_future(), Duration::ZERO);
        assert!(again.next.is_none(), "nothing changed");
        // A new inode for "b": rename over it.
        dir.write("c.new", b"B2");
        fs::rename(dir.0.join("c.new"), dir.0.join("b")).expect("rename");
        fs::remove_file(dir.0.join("a")).expect("remove");
        dir.write("sub/c", b"c");
        let refresh = tree.refresh(far_future(), Duration::ZERO);
        assert_eq!(refresh.added, ["sub/c"]);
        assert_eq!(refresh.replaced, ["b"]);
        assert_eq!(refresh.removed, ["a"]);
        let next = refresh.next.expect("changed");
        assert_eq!(&next.file(&["b"]).expect("b").bytes[..], b"B2");
        dir.write("d", b"d");
        let more = next.refresh(far_future(), Duration::ZERO);
        let last = more.next.expect("changed");
        assert!(Arc::ptr_eq(
            &next.file(&["b"]).expect("b").bytes,
            &last.file(&["b"]).expect("b").bytes
        ));
    }

    #[test]
    fn new_files_wait_until_settled() {
        let dir = Dir::new("settle");
        let (tree, _) = load(&dir);
        dir.write("fw/new", b"n");
        let refresh = tree.refresh(SystemTime::now(), Duration::from_secs(60));
        assert_eq!(refresh.pending, ["fw/new"]);
        let next = refresh.next.expect("the pending set changed");
        assert!(next.file(&segs("fw/new")).is_none());
        assert!(next.pending_retry(&segs("fw/new")).is_some_and(|s| s >= 1));
        assert!(next.has_pending());
        let settled = next.refresh(far_future(), Duration::from_secs(60));
        assert_eq!(settled.added, ["fw/new"]);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = Dir::new("missing");
        let gone = dir.0.join("nope");
        assert!(matches!(
            FileTree::load(&gone, SystemTime::now()),
            Err(TreeError::ReadDir { .. })
        ));
    }

    #[test]
    fn dirs_changed_sees_a_file_added_deep_down() {
        let dir = Dir::new("dirs-changed");
        dir.write("fw/app/x", b"x");
        let (tree, _) = load(&dir);
        assert!(!dirs_changed(tree.dir_mtimes()));
        std::thread::sleep(Duration::from_millis(20));
        dir.write("fw/app/y", b"y");
        assert!(dirs_changed(tree.dir_mtimes()));
    }
}
