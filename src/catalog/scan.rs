//! Reading the catalog's directory: which entries are candidates, which are ignored or
//! skipped and why, and the first complete read of every image ([`Catalog::load`],
//! [`Catalog::from_files`]).
//!
//! Per-file problems are returned ([`Skipped`], [`LoadReport`]), never logged; this module
//! never touches a socket or a CoAP message.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, DirEntry};
use std::path::Path;

use super::*;
use crate::snapshot::{check_regular, io_reason, open_regular, read_whole, stamp, stat_followed};

/// Why a `.fmu` candidate was left out of the catalog; the server still starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The file name does not follow the grammar; the error names the field.
    BadName(NameError),
    /// The file name is not valid UTF-8, so it cannot be a title in the discovery body.
    NotUtf8,
    /// Opening or reading failed (permissions, I/O error, out of memory); the text is the
    /// operating system's.
    Unreadable(String),
    /// The file was listed but had disappeared when it was opened.
    Vanished,
    /// Not a regular file: a symbolic link to a directory, a dangling symbolic link, a FIFO,
    /// a socket or a device. (Real sub-directories are ignored, not skipped.)
    NotRegularFile,
    /// Longer than [`MAX_IMAGE_LEN`] bytes (the length is given); never read.
    TooLarge(u64),
    /// The length read differs from the length the file had when it was opened, e.g. a copy
    /// still in progress. A partial image is never served.
    ChangedWhileReading,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::BadName(e) => write!(f, "bad file name: {e}"),
            SkipReason::NotUtf8 => f.write_str("file name is not valid UTF-8"),
            SkipReason::Unreadable(e) => write!(f, "cannot read the file: {e}"),
            SkipReason::Vanished => f.write_str("the file disappeared while it was being loaded"),
            SkipReason::NotRegularFile => f.write_str(
                "not a regular file (a directory, a special file or a dangling symbolic link)",
            ),
            SkipReason::TooLarge(len) => write!(
                f,
                "{len} bytes is more than the {MAX_IMAGE_LEN} bytes that CoAP offsets and Size2 \
                 can address"
            ),
            SkipReason::ChangedWhileReading => f.write_str(
                "the file changed size while it was being read (copy still in progress?)",
            ),
        }
    }
}

/// A `.fmu` file that was left out of the catalog, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file name, lossily converted to UTF-8 for display.
    pub file: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.reason)
    }
}

/// The outcome of [`Catalog::load`]: the catalog plus what the operator should hear about.
#[derive(Debug)]
pub struct LoadReport {
    /// The images that were loaded (possibly none).
    pub catalog: Catalog,
    /// `.fmu` candidates left out, sorted by file name: worth a warning each.
    pub skipped: Vec<Skipped>,
    /// Entries that are not candidates (no `.fmu` suffix, hidden, sub-directories), sorted
    /// lossy names: worth a debug line each.
    pub ignored: Vec<String>,
}

/// A candidate that passed every check except the collision rules.
pub(super) struct Found {
    pub(super) file_name: String,
    pub(super) name: ImageName,
    pub(super) bytes: ImageBytes,
    pub(super) stamp: Option<Stamp>,
}

impl Catalog {
    /// Scan `dir`. Fails only when the directory cannot be listed or on a collision.
    ///
    /// Candidates are the entries whose name ends in `.fmu` and does not start with `.`; all
    /// other entries (so `X.fmu.tmp`, `X.fmu~`, `#X.fmu#`, `.#X.fmu` too), and real
    /// sub-directories, go to [`LoadReport::ignored`]. Symbolic links
    /// are followed to regular files only. A candidate is skipped (see [`SkipReason`]) when its
    /// name is not UTF-8 or breaks the grammar, it is not a regular file (a dangling link
    /// counts as such), it is larger than [`MAX_IMAGE_LEN`] (checked before reading), it
    /// cannot be opened or read, it disappeared after the listing, or its length changed while
    /// it was read. Zero-byte images are loaded. Each file is read once, completely.
    ///
    /// # Errors
    ///
    /// [`Error::ReadDir`] when `dir` cannot be listed; [`Error::DuplicateId`] or
    /// [`Error::DuplicateVersion`] naming both files, in sorted order, on a collision.
    pub fn load(dir: &Path) -> Result<LoadReport, Error> {
        let read_dir_error = |error| Error::ReadDir {
            dir: dir.to_path_buf(),
            error,
        };
        let mut found = Vec::new();
        let mut skipped = Vec::new();
        let mut ignored = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_dir_error)? {
            let entry = entry.map_err(read_dir_error)?;
            match scan_entry(&entry) {
                Scan::Ignored => ignored.push(lossy(&entry.file_name())),
                Scan::Skipped(reason) => skipped.push(Skipped {
                    file: lossy(&entry.file_name()),
                    reason,
                }),
                Scan::Found(image) => found.push(image),
            }
        }
        skipped.sort_by(|a, b| a.file.cmp(&b.file));
        ignored.sort();
        Ok(LoadReport {
            catalog: Catalog::build(found, skipped.clone())?,
            skipped,
            ignored,
        })
    }

    /// Build from in-memory (file name, bytes) pairs: same grammar and collision rules, for
    /// tests and benchmarks.
    ///
    /// A name that breaks the grammar (including one without `.fmu`) and bytes longer than
    /// [`MAX_IMAGE_LEN`] are skipped, as [`Catalog::load`] would; the skipped list is sorted by
    /// file name. There is no notion of hidden or ignored files here.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateId`] (including the same name given twice) or
    /// [`Error::DuplicateVersion`], naming both files in sorted order.
    pub fn from_files(files: Vec<(String, Vec<u8>)>) -> Result<(Catalog, Vec<Skipped>), Error> {
        let mut found = Vec::new();
        let mut skipped = Vec::new();
        for (file_name, bytes) in files {
            let len = bytes.len() as u64;
            let reason = match parse_image_name(&file_name) {
                Err(e) => SkipReason::BadName(e),
                Ok(_) if len > MAX_IMAGE_LEN => SkipReason::TooLarge(len),
                Ok(name) => match ImageBytes::from_vec(bytes) {
                    Ok(bytes) => {
                        found.push(Found {
                            file_name,
                            name,
                            bytes,
                            stamp: None,
                        });
                        continue;
                    }
                    Err(e) => SkipReason::Unreadable(e.to_string()),
                },
            };
            skipped.push(Skipped {
                file: file_name,
                reason,
            });
        }
        skipped.sort_by(|a, b| a.file.cmp(&b.file));
        Ok((Catalog::build(found, skipped.clone())?, skipped))
    }
}

pub(super) fn lossy(name: &OsStr) -> String {
    name.to_string_lossy().into_owned()
}

pub(super) enum Scan {
    Ignored,
    Skipped(SkipReason),
    Found(Found),
}

/// Whether an entry's name alone says it is not an image, for [`Catalog::load`] and
/// [`Catalog::refresh`] alike:
///
/// - hidden names, starting with `.`: `cp fw.bin .tmp && mv .tmp X.fmu` publishes safely,
///   and so do the temporaries of rsync (`.X.fmu.Ab12Cd`), vim (`.X.fmu.swp`) and Emacs
///   locks (`.#X.fmu`);
/// - names not ending in `.fmu`, which covers every other temporary or leftover name:
///   `X.fmu.tmp`, backups `X.fmu~`, Emacs auto-saves `#X.fmu#`, `X.fmu.part`.
///
/// `raw` is the name's raw bytes on Unix; ASCII prefixes and suffixes survive the encoding
/// elsewhere too.
pub(super) fn ignored_name(raw: &[u8]) -> bool {
    raw.starts_with(b".") || !raw.ends_with(IMAGE_SUFFIX.as_bytes())
}

/// What a directory entry's name and type decide, before any metadata call.
pub(super) enum Listed<'a> {
    Ignored,
    Skipped(SkipReason),
    /// A UTF-8 name ending in `.fmu`; its grammar is not checked yet. The flag says whether
    /// the entry is a symbolic link.
    Candidate(&'a str, bool),
}

/// `os_name` is `entry.file_name()`, passed in so that the caller keeps it.
pub(super) fn list_entry<'a>(entry: &DirEntry, os_name: &'a OsStr) -> Listed<'a> {
    if ignored_name(os_name.as_encoded_bytes()) {
        return Listed::Ignored;
    }
    // file_type() does not follow symbolic links (and needs no system call where the
    // directory listing gives the type): a real directory is ignored, a link to one is
    // skipped when its metadata is read.
    match entry.file_type() {
        Ok(file_type) if file_type.is_dir() => Listed::Ignored,
        Ok(file_type) => match os_name.to_str() {
            Some(file_name) => Listed::Candidate(file_name, file_type.is_symlink()),
            None => Listed::Skipped(SkipReason::NotUtf8),
        },
        Err(e) => Listed::Skipped(io_reason(&e)),
    }
}

pub(super) fn scan_entry(entry: &DirEntry) -> Scan {
    let os_name = entry.file_name();
    let file_name = match list_entry(entry, &os_name) {
        Listed::Ignored => return Scan::Ignored,
        Listed::Skipped(reason) => return Scan::Skipped(reason),
        Listed::Candidate(file_name, _) => file_name,
    };
    let name = match parse_image_name(file_name) {
        Ok(name) => name,
        Err(e) => return Scan::Skipped(SkipReason::BadName(e)),
    };
    match read_image(&entry.path()) {
        Ok((bytes, stamp)) => Scan::Found(Found {
            file_name: file_name.to_owned(),
            name,
            bytes,
            stamp,
        }),
        Err(reason) => Scan::Skipped(reason),
    }
}

/// Reads one regular file completely, or says why not. Never returns a partial image.
///
/// The stamp is the one the open file had before it was read: if the file changes while it
/// is read without changing length, the stamp is already out of date, so a rescan reads the
/// file again rather than keeping what may be a mix of two versions.
fn read_image(path: &Path) -> Result<(ImageBytes, Option<Stamp>), SkipReason> {
    // Follows symbolic links, and is checked before opening: opening a FIFO would block.
    check_regular(&stat_followed(path)?)?;
    // Without blocking, and checked again on the open file: the path may have been
    // replaced since the first check.
    let file = open_regular(path)?;
    let meta = file.metadata().map_err(|e| io_reason(&e))?;
    let expected = meta.len();
    let stamp = meta.modified().ok().map(|mtime| stamp(&meta, mtime));
    let bytes = read_whole(&file, expected)?.ok_or(SkipReason::ChangedWhileReading)?;
    Ok((bytes, stamp))
}
