//! The catalog's rescan: [`Catalog::refresh`] lists the directory again and builds the next
//! snapshot, reusing the images whose files did not change and reading new or changed ones
//! once they have settled. The stamping, settling and reading it shares with the file tree
//! are in [`crate::snapshot`].
//!
//! What a refresh found is returned in a [`Refresh`], never logged.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::scan::{list_entry, lossy, Listed};
use super::*;
use crate::snapshot;
use crate::snapshot::{io_reason, stamp_of, stat_followed, Admission, Admit};

/// A new image file that has not settled yet: `Catalog::refresh` does not read it, and
/// the snapshot answers requests for its id with `Catalog::pending_retry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The file name.
    pub file: String,
    /// The id the image will have, as in [`Image::id_hex`].
    pub id_hex: [u8; 8],
    /// Milliseconds from the `now` of the refresh until the file can have settled, if it is
    /// not written again (0 when it was seen changing while it was read).
    pub wait_ms: u64,
}

impl Pending {
    fn new(file: String, wait: Duration) -> Pending {
        Pending {
            id_hex: hex8(fnv1a32(file.as_bytes())),
            file,
            wait_ms: u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
        }
    }

    /// The wait in whole seconds, rounded up, at least 1: a Max-Age (RFC 7252 §5.10.5).
    fn retry_secs(&self) -> u32 {
        u32::try_from(self.wait_ms.div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: not served until it has not changed for the settle time ({} ms to go)",
            self.file, self.wait_ms
        )
    }
}

/// The outcome of `Catalog::refresh`: the shared [`snapshot::Refresh`] with the catalog's
/// types. Names are image file names; `pending` holds only new files (a changed file that
/// has not settled keeps its old image, unreported); `skipped` holds `.fmu` candidates left
/// out, as in [`LoadReport::skipped`]; `error` is [`Error::ReadDir`] when the directory
/// could not be listed, or [`Error::DuplicateId`] or [`Error::DuplicateVersion`] when the
/// new set of files has a collision (no new file was read).
pub type Refresh = snapshot::Refresh<Catalog, Pending, Skipped, Error>;

/// A listed candidate whose stamp differs from the snapshot's image of that name, or that
/// the snapshot does not have.
struct Changed {
    file_name: String,
    name: ImageName,
    path: PathBuf,
    stamp: Stamp,
    /// The index of the snapshot's image of that name.
    old: Option<usize>,
}

impl Catalog {
    /// Lists `dir` again and builds the next snapshot from what changed, reusing the images
    /// whose files did not change; `self` is left as it is.
    ///
    /// Entries are judged as [`Catalog::load`] judges them, with one metadata call each
    /// (following symbolic links; ignored names cost none). Then, per candidate file name:
    ///
    /// - same length and modification time as the image of that name in `self`: the image is
    ///   reused, bytes (the same [`Arc`]), id and ETag; nothing is read;
    /// - new or changed, and *settled*, modified at least `settle` before `now`: read
    ///   completely, then checked to still have the length and modification time it was
    ///   listed with, before and after the read; a mismatch means it is still being written,
    ///   so it counts as not settled. (Publishing by rename keeps the time of the write: the
    ///   file is admitted once `settle` has passed since it was written.)
    /// - changed but not settled: the image of that name in `self` stays;
    /// - new and not settled: listed in [`Refresh::pending`], not served, and known to
    ///   [`Catalog::pending_retry`] of the next snapshot;
    /// - gone, or now skipped: not in the next snapshot.
    ///
    /// Collisions are checked on the file names before any file is read, so a colliding new
    /// file costs nothing per refresh; then the whole set is checked again as built.
    ///
    /// The next snapshot is built only when the images served, the set of pending file
    /// names or the skipped list differ from `self`'s. With nothing changed the cost is one
    /// `read_dir` and one metadata call per candidate, and allocations proportional to the
    /// number of entries, never to image sizes.
    #[cfg(test)]
    pub(crate) fn refresh(&self, dir: &Path, now: SystemTime, settle: Duration) -> Refresh {
        self.refresh_with(dir, now, &mut Admission::settle_only(settle), &mut || {})
    }

    /// [`Catalog::refresh`], with new and changed files admitted as `admission` says: at
    /// once when their writer closed them, in slices when they are long.
    pub(crate) fn refresh_admitting(
        &self,
        dir: &Path,
        now: SystemTime,
        admission: &mut Admission<'_>,
    ) -> Refresh {
        self.refresh_with(dir, now, admission, &mut || {})
    }

    /// [`Catalog::refresh`], calling `between` after the listing and before any read: tests
    /// change files there.
    pub(super) fn refresh_with(
        &self,
        dir: &Path,
        now: SystemTime,
        admission: &mut Admission<'_>,
        between: &mut dyn FnMut(),
    ) -> Refresh {
        let mut out = Refresh::default();
        // Indexes into self.images of the images the next snapshot keeps as they are.
        let mut kept: Vec<usize> = Vec::new();
        let mut changed: Vec<Changed> = Vec::new();
        if let Err(error) = self.list(dir, &mut kept, &mut changed, &mut out.skipped) {
            out.skipped.clear();
            out.error = Some(error);
            return out;
        }
        between();
        changed.sort_by(|a, b| a.file_name.cmp(&b.file_name));

        let mut to_read = Vec::new();
        for c in changed {
            match (admission.wait(&c.path, c.stamp, now), c.old) {
                (None, _) => to_read.push(c),
                (Some(_), Some(old)) => kept.push(old),
                (Some(wait), None) => out.pending.push(Pending::new(c.file_name, wait)),
            }
        }
        out.skipped.sort_by(|a, b| a.file.cmp(&b.file));
        out.pending.sort_by(|a, b| a.file.cmp(&b.file));

        // Images of self alone cannot collide: check only when there is something to read.
        if !to_read.is_empty() {
            let mut names: Vec<(&str, &ImageName)> = kept
                .iter()
                .filter_map(|&index| self.images.get(index))
                .map(|image| (image.file_name.as_str(), &image.name))
                .chain(to_read.iter().map(|c| (c.file_name.as_str(), &c.name)))
                .collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            if let Err(error) = check_collisions(&names) {
                out.error = Some(error);
                return out;
            }
        }

        let mut fresh = Vec::new();
        for c in to_read {
            match admission.read(&c.path, c.stamp, now) {
                Admit::Ready(bytes, etag) => {
                    fresh.push(Image::new(c.file_name, c.name, bytes, etag, Some(c.stamp)));
                }
                Admit::Wait(wait) => match c.old {
                    Some(old) => kept.push(old),
                    None => out.pending.push(Pending::new(c.file_name, wait)),
                },
                Admit::Skip(reason) => out.skipped.push(Skipped {
                    file: c.file_name,
                    reason,
                }),
            }
        }
        // Reads may have added to both.
        out.skipped.sort_by(|a, b| a.file.cmp(&b.file));
        out.pending.sort_by(|a, b| a.file.cmp(&b.file));

        let pending: HashMap<u64, u32, FnvBuild> = out
            .pending
            .iter()
            .map(|p| (u64::from_le_bytes(p.id_hex), p.retry_secs()))
            .collect();
        let same_pending = pending.len() == self.pending.len()
            && pending.keys().all(|key| self.pending.contains_key(key));
        // Every kept index names a distinct image of self: the same count is the same set.
        if fresh.is_empty()
            && kept.len() == self.images.len()
            && same_pending
            && out.skipped == self.skipped
        {
            return out;
        }

        let mut images: Vec<Image> = kept
            .iter()
            .filter_map(|&index| self.images.get(index).cloned())
            .collect();
        images.extend(fresh);
        let next = match Catalog::assemble(images, out.skipped.clone(), pending) {
            Ok(next) => next,
            Err(error) => {
                out.error = Some(error);
                return out;
            }
        };
        out.note_changes(&self.images, &next.images, |image| {
            (image.file_name.as_str(), &image.bytes)
        });
        out.next = Some(next);
        out
    }

    /// The listing step of a refresh: sorts each candidate into `kept` (unchanged, by index)
    /// or `changed`, and per-file problems into `skipped`.
    fn list(
        &self,
        dir: &Path,
        kept: &mut Vec<usize>,
        changed: &mut Vec<Changed>,
        skipped: &mut Vec<Skipped>,
    ) -> Result<(), Error> {
        let read_dir_error = |error| Error::ReadDir {
            dir: dir.to_path_buf(),
            error,
        };
        for entry in fs::read_dir(dir).map_err(read_dir_error)? {
            let entry = entry.map_err(read_dir_error)?;
            let os_name = entry.file_name();
            let (file_name, is_symlink) = match list_entry(&entry, &os_name) {
                Listed::Ignored => continue,
                Listed::Skipped(reason) => {
                    skipped.push(Skipped {
                        file: lossy(&os_name),
                        reason,
                    });
                    continue;
                }
                Listed::Candidate(file_name, is_symlink) => (file_name, is_symlink),
            };
            let old = self.index_of(file_name);
            // A name the snapshot serves has been parsed already.
            let parsed = match old {
                Some(_) => None,
                None => match parse_image_name(file_name) {
                    Ok(name) => Some(name),
                    Err(e) => {
                        skipped.push(Skipped {
                            file: file_name.to_owned(),
                            reason: SkipReason::BadName(e),
                        });
                        continue;
                    }
                },
            };
            // One metadata call: relative to the open directory where possible (cheaper than
            // resolving the whole path), through the path for a link, to follow it.
            let meta = if is_symlink {
                stat_followed(&entry.path())
            } else {
                entry.metadata().map_err(|e| io_reason(&e))
            };
            let stamp = match meta.and_then(|meta| stamp_of(&meta)) {
                Ok(stamp) => stamp,
                Err(reason) => {
                    skipped.push(Skipped {
                        file: file_name.to_owned(),
                        reason,
                    });
                    continue;
                }
            };
            let old_image = old.and_then(|index| self.images.get(index));
            if let (Some(index), Some(image)) = (old, old_image) {
                if image.stamp == Some(stamp) {
                    kept.push(index);
                    continue;
                }
            }
            // Either parsed here or the old image's: one of them is there.
            let Some(name) = parsed.or_else(|| old_image.map(|image| image.name.clone())) else {
                continue;
            };
            changed.push(Changed {
                file_name: file_name.to_owned(),
                name,
                path: entry.path(),
                stamp,
                old,
            });
        }
        Ok(())
    }
}
