//! The firmware catalog: snapshots of the images of the `updates/` directory, held in memory.
//!
//! # Contract
//!
//! - [`Catalog::load`] scans the directory at start-up, before the socket is bound. It reads
//!   every image completely into memory, so no request ever waits for the disk, into memory
//!   of exactly its length ([`ImageBytes`]: pages of its own for an image of whole pages).
//! - `Catalog::refresh` lists the directory again and builds the next snapshot: an image
//!   whose file shows the same length and modification time is reused, bytes shared, without
//!   reading it; a new or changed file is read only once it has *settled* (not modified for
//!   the settle time) and only if it did not change while it was read; a removed file goes.
//!   Until a refresh, a file changed or deleted changes nothing. Unchanged, a refresh costs a
//!   listing and one metadata call per image file, and builds nothing.
//! - A built [`Catalog`] is a snapshot that is never mutated, but for one flag per image that
//!   the service sets on the snapshot it serves (`Catalog::mark_held`: an old version of the
//!   image is kept for downloads under way; its bytes, ids and indexes never change). A
//!   refresh builds a whole new snapshot, which the server swaps in with one assignment; the
//!   snapshot it replaces stays intact, bytes included, until it is dropped. A refresh whose
//!   result would break the collision rules gives no snapshot, only the error.
//! - Lookups (`Catalog::by_id_hex`, [`Catalog::newest`], [`Catalog::candidate`],
//!   `Catalog::pending_retry`) are O(1) hash lookups whatever the number of images, and
//!   allocate nothing, because they run once per request.
//! - The `/.well-known/core` links (RFC 6690) are prebuilt, one string per link
//!   (`Catalog::core_links`), so that query filters (RFC 6690 §4.1) select links and the
//!   blocks of the body are copied link by link without building the body per request.
//! - The result does not depend on the order in which the operating system lists the
//!   directory: files are sorted by name before anything is decided, so [`Catalog::images`],
//!   the discovery body and the files named by a collision error are the same on every run.
//!
//! This module neither logs nor touches sockets or CoAP messages: what happened during a scan
//! (files skipped or ignored) is returned in a [`LoadReport`], and `main` logs it; what a
//! refresh found is returned in a [`Refresh`].
//!
//! # Layout
//!
//! This file holds the snapshot itself ([`Catalog`], [`Image`]) and its lookups; the name
//! grammar is in `grammar.rs`, the discovery links in `links.rs`, the directory scan of
//! [`Catalog::load`] in `scan.rs`, the rescan of `Catalog::refresh` in `refresh.rs`, and the
//! stamping, settling and reading shared with [`crate::tree`] in [`crate::snapshot`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::firmware::{VersionText, MAX_PID_LEN};
use crate::hash::{body_etag, fnv1a32, fnv1a64, fnv1a64_concat, FnvBuild};

mod grammar;
mod links;
mod refresh;
mod scan;

pub use crate::snapshot::{ImageBytes, Stamp, MAX_IMAGE_LEN};
pub(crate) use grammar::parse_image_name;
use grammar::IMAGE_SUFFIX;
pub use grammar::{ImageName, NameError};
pub(crate) use links::AttrValue;
pub use links::CoreLink;
use links::{image_link, joined, updates_link};
pub use refresh::{Pending, Refresh};
use scan::Found;
pub use scan::{LoadReport, SkipReason, Skipped};

const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

/// One firmware image, held whole in memory.
///
/// Cloning is cheap: the bytes are shared, not copied.
#[derive(Clone)]
pub struct Image {
    /// The file name (valid UTF-8 by construction: other names are skipped).
    pub file_name: String,
    /// The parsed file name.
    pub name: ImageName,
    /// `name.version()`, kept here because every lookup compares it.
    pub version: u32,
    /// FNV-1a 32 of the file name bytes: renaming the file changes the id.
    pub id: u32,
    /// `id` as 8 lowercase ASCII hex digits, e.g. `*b"e40c292c"`: the last segment of
    /// `/updates/{id}` and the payload of a lookup reply.
    pub id_hex: [u8; 8],
    /// Entity tag: `fnv1a64(bytes).to_be_bytes()`, derived from the content only.
    pub etag: [u8; 8],
    /// The whole image; at most [`MAX_IMAGE_LEN`] bytes, possibly empty. Shared, so that a
    /// catalog rebuilt from the same directory reuses an unchanged image without copying it,
    /// while the catalog it replaces keeps its own reference until it is dropped.
    pub bytes: Arc<ImageBytes>,
    /// The length, modification time, inode and change time the file had when it was opened
    /// to be read (the target's, for a symbolic link); `None` for [`Catalog::from_files`], or
    /// where the file system gives no modification time. A rescan reuses the image while the
    /// file still shows the same stamp: a file renamed over it (a new inode, a new change
    /// time) is read again even when its length and modification time are the same, as
    /// `cp -p`, `rsync -t` or reproducible builds make them.
    pub stamp: Option<Stamp>,
    /// An old version of this image (same file name, other bytes) is kept
    /// for downloads that began before it was replaced: a later block of
    /// it takes the service's general path, which decides which version a
    /// peer gets. Set by the service on the snapshot it serves
    /// (`Catalog::mark_held`).
    pub(crate) held: bool,
}

impl Image {
    /// The entity tag of the body `bytes[offset..]`: the content tag for
    /// the whole image, else FNV-1a 64 of the content tag followed by
    /// `offset` (little-endian). Each body a device can be sent is a
    /// representation of its own: a block served under a tag always holds
    /// the bytes of the one body that tag names (RFC 7959 §2.4), so a
    /// client that checks ETags notices when a download it resumes is
    /// answered from another body. Computed per request from 12 bytes.
    pub fn body_etag(&self, offset: u32) -> [u8; 8] {
        body_etag(&self.etag, offset)
    }

    /// `etag` is `fnv1a64(&bytes)`, computed by the caller (as the bytes were read, for a
    /// file read in slices).
    fn new(
        file_name: String,
        name: ImageName,
        bytes: ImageBytes,
        etag: [u8; 8],
        stamp: Option<Stamp>,
    ) -> Image {
        let id = fnv1a32(file_name.as_bytes());
        Image {
            version: name.version(),
            id,
            id_hex: hex8(id),
            etag,
            file_name,
            name,
            bytes: Arc::new(bytes),
            stamp,
            held: false,
        }
    }

    /// Whether an old version of this image is kept for downloads under
    /// way (see the field's docs).
    pub fn has_held_version(&self) -> bool {
        self.held
    }

    /// `id_hex` as a `&str`. Always 8 characters for an image built by the catalog; empty
    /// only if someone stored non-ASCII bytes in `id_hex` by hand.
    pub fn id_str(&self) -> &str {
        std::str::from_utf8(&self.id_hex).unwrap_or("")
    }
}

/// Shows the length of `bytes` instead of the bytes, which may be megabytes.
impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("file_name", &self.file_name)
            .field("name", &self.name)
            .field("version", &format_args!("{}", VersionText(self.version)))
            .field("id", &self.id_str())
            .field(
                "etag",
                &format_args!("{:016x}", u64::from_be_bytes(self.etag)),
            )
            .field("len", &self.bytes.len())
            .field("stamp", &self.stamp)
            .finish()
    }
}

fn hex8(value: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, slot) in out.iter_mut().enumerate() {
        let nibble = (value >> (28 - 4 * i)) & 0xf;
        *slot = LOWER_HEX[nibble as usize];
    }
    out
}

/// Why no catalog could be built. The server must not start with a catalog it cannot trust.
#[derive(Debug)]
pub enum Error {
    /// The directory could not be listed (missing, not a directory, no permission). The
    /// operating system's error is included in the `Display` text.
    ReadDir {
        /// The directory given to [`Catalog::load`].
        dir: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// Two file names hash to the same FNV-1a 32 id, so `/updates/{id}` would be ambiguous.
    /// `first` sorts before `second`.
    DuplicateId {
        /// The file that sorts first.
        first: String,
        /// The file that sorts second.
        second: String,
        /// The id they share.
        id: u32,
    },
    /// Two files have the same PID, TYPE and version, so a device's request would be
    /// ambiguous. `first` sorts before `second`.
    DuplicateVersion {
        /// The file that sorts first.
        first: String,
        /// The file that sorts second.
        second: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ReadDir { dir, error } => {
                write!(
                    f,
                    "cannot list the firmware directory {}: {error}",
                    dir.display()
                )
            }
            Error::DuplicateId { first, second, id } => write!(
                f,
                "firmware images {first} and {second} have the same id {id:08x}; rename one of them"
            ),
            Error::DuplicateVersion { first, second } => write!(
                f,
                "firmware images {first} and {second} have the same PID, TYPE and version; \
                 remove one of them"
            ),
        }
    }
}

/// `source()` is `None`: the I/O error of [`Error::ReadDir`] is already part of the
/// `Display` text, and reporting it twice would repeat it in error chains.
impl std::error::Error for Error {}

/// The immutable set of firmware images, with O(1) indexes and the prebuilt discovery body.
#[derive(Debug)]
pub struct Catalog {
    /// Sorted by file name.
    images: Vec<Image>,
    /// Images by id, keyed by the id's 8 ASCII digits read as one u64: the
    /// path segment of a request is looked up without parsing it (only ids
    /// written as 8 lowercase hex digits are keys, so any other text misses).
    by_id_text: HashMap<u64, usize, FnvBuild>,
    /// `[fw_type] ++ pid` → index of the image with the highest version.
    newest: HashMap<Box<[u8]>, usize, FnvBuild>,
    links: Vec<CoreLink>,
    core_etag: [u8; 8],
    total_bytes: u64,
    /// The candidates left out when this snapshot was built, so that a refresh that finds
    /// the same ones has nothing new to report.
    skipped: Vec<Skipped>,
    /// New files not settled when this snapshot was built: their id's text (as in
    /// `by_id_text`) → the Max-Age in seconds, as of that refresh.
    pending: HashMap<u64, u32, FnvBuild>,
}

impl Catalog {
    /// Hashes the images read and assembles them; `skipped` is kept for later refreshes.
    fn build(found: Vec<Found>, skipped: Vec<Skipped>) -> Result<Catalog, Error> {
        let images = found
            .into_iter()
            .map(|f| {
                let etag = fnv1a64(&f.bytes).to_be_bytes();
                Image::new(f.file_name, f.name, f.bytes, etag, f.stamp)
            })
            .collect();
        Catalog::assemble(images, skipped, HashMap::default())
    }

    /// Sorts, checks collisions, builds the indexes and the discovery body. Reads no image
    /// bytes: the content tags are already in the images.
    fn assemble(
        mut images: Vec<Image>,
        skipped: Vec<Skipped>,
        pending: HashMap<u64, u32, FnvBuild>,
    ) -> Result<Catalog, Error> {
        images.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        let names: Vec<(&str, &ImageName)> = images
            .iter()
            .map(|image| (image.file_name.as_str(), &image.name))
            .collect();
        check_collisions(&names)?;

        let mut newest: HashMap<Box<[u8]>, usize, FnvBuild> = HashMap::default();
        for (index, image) in images.iter().enumerate() {
            let mut key = Vec::with_capacity(1 + image.name.pid.len());
            key.push(image.name.fw_type);
            key.extend_from_slice(&image.name.pid);
            let slot = newest.entry(key.into_boxed_slice()).or_insert(index);
            let kept_is_newer = images
                .get(*slot)
                .is_some_and(|kept| kept.version > image.version);
            if !kept_is_newer {
                *slot = index;
            }
        }

        let mut links = Vec::with_capacity(1 + images.len());
        links.push(updates_link());
        for image in &images {
            links.push(image_link(image));
        }
        let core_etag = fnv1a64_concat(joined(&links)).to_be_bytes();
        let total_bytes = images.iter().map(|i| i.bytes.len() as u64).sum();
        let by_id_text = images
            .iter()
            .enumerate()
            .map(|(index, image)| (u64::from_le_bytes(image.id_hex), index))
            .collect();
        Ok(Catalog {
            images,
            by_id_text,
            newest,
            links,
            core_etag,
            total_bytes,
            skipped,
            pending,
        })
    }
    /// The index of the image named `file_name`: O(1) through the id index.
    fn index_of(&self, file_name: &str) -> Option<usize> {
        let key = u64::from_le_bytes(hex8(fnv1a32(file_name.as_bytes())));
        let index = *self.by_id_text.get(&key)?;
        self.images
            .get(index)
            .filter(|image| image.file_name == file_name)
            .map(|_| index)
    }

    /// The image named `file_name`; only tests ask.
    #[cfg(test)]
    fn by_file_name(&self, file_name: &str) -> Option<&Image> {
        self.images.get(self.index_of(file_name)?)
    }

    /// For a request for `/updates/{id_hex}` that [`Catalog::by_id_hex`] does not know: if
    /// `id_hex` is the id of a new file that was still being written (not settled) when
    /// this snapshot was built, the seconds after which to ask again, for a 5.03 Service
    /// Unavailable with that Max-Age; else `None` (a 4.04). At least 1; counted from the
    /// refresh that built this snapshot, so possibly more than the time left now. O(1), no
    /// allocation.
    pub(crate) fn pending_retry(&self, id_hex: &[u8]) -> Option<u32> {
        let text = <[u8; 8]>::try_from(id_hex).ok()?;
        self.pending.get(&u64::from_le_bytes(text)).copied()
    }

    /// Whether some file of the directory was found but has not settled yet.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// All images, sorted by file name (byte order), the same on every run.
    pub fn images(&self) -> &[Image] {
        &self.images
    }

    /// The image whose id is `id_hex`, the last segment of `/updates/{id}`.
    ///
    /// `None` unless `id_hex` is exactly 8 lowercase hex digits naming an image: ids are
    /// always written in lower case, so `E40C292C` is an unknown path like any other. O(1),
    /// no allocation.
    pub(crate) fn by_id_hex(&self, id_hex: &[u8]) -> Option<&Image> {
        let text = <[u8; 8]>::try_from(id_hex).ok()?;
        self.images
            .get(*self.by_id_text.get(&u64::from_le_bytes(text))?)
    }

    /// The image whose id is `id`. O(1).
    pub fn by_id(&self, id: u32) -> Option<&Image> {
        self.by_id_hex(&hex8(id))
    }

    /// The image with this PID (byte for byte) and TYPE that has the highest version, whatever
    /// its version. `None` when there is none, or when `pid` is longer than 255 bytes (no image
    /// can have such a PID). O(1) and allocation-free: the index key is built on the stack.
    pub fn newest(&self, pid: &[u8], fw_type: u8) -> Option<&Image> {
        let mut key = [0u8; 1 + MAX_PID_LEN];
        let key = key.get_mut(..1 + pid.len())?;
        let (first, rest) = key.split_first_mut()?;
        *first = fw_type;
        rest.copy_from_slice(pid);
        self.images.get(*self.newest.get(&*key)?)
    }

    /// The image a device running version `current` should get: [`Catalog::newest`] for its
    /// PID and TYPE, if that version is strictly greater than `current`. `None` means "no
    /// update". O(1), no allocation.
    pub fn candidate(&self, pid: &[u8], fw_type: u8, current: u32) -> Option<&Image> {
        self.newest(pid, fw_type)
            .filter(|image| image.version > current)
    }

    /// The links of the discovery body: first `</updates>;rt="fw.updates"`, then one per image
    /// in [`Catalog::images`] order:
    /// `</updates/{id}>;rt="fw.image";ct=42;sz={size};title="{file name}"`.
    pub(crate) fn core_links(&self) -> &[CoreLink] {
        &self.links
    }

    /// The whole `/.well-known/core` body (Content-Format 40): [`Catalog::core_links`] joined by
    /// `,`. Only tests build it: discovery streams the links into each block.
    #[cfg(test)]
    pub(crate) fn core_body(&self) -> Vec<u8> {
        joined(&self.links).flatten().copied().collect()
    }

    /// Entity tag of the whole `/.well-known/core` body: FNV-1a 64 of the links joined by `,`.
    pub(crate) fn core_etag(&self) -> [u8; 8] {
        self.core_etag
    }

    /// Sum of the image sizes in bytes, for the start-up summary.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Marks each image for which `held` says that an old version of it is kept for
    /// downloads under way ([`Image::has_held_version`]), and unmarks the others. The one
    /// change made to a built snapshot: the service makes it on the snapshot it serves, when
    /// it swaps one in and when an old version is dropped, so that the per-block fast path
    /// knows from the image it found whether it may answer. O(images).
    pub(crate) fn mark_held(&mut self, held: impl Fn(&Image) -> bool) {
        for image in &mut self.images {
            image.held = held(image);
        }
    }
}

/// The collision rules over `sorted`, (file name, parsed name) pairs sorted by file name:
/// first any two names with the same id, then any two with the same PID, TYPE and version,
/// each naming the file that sorts first as `first`.
fn check_collisions(sorted: &[(&str, &ImageName)]) -> Result<(), Error> {
    let mut by_id: HashMap<u32, &str, FnvBuild> =
        HashMap::with_capacity_and_hasher(sorted.len(), FnvBuild::default());
    for &(file_name, _) in sorted {
        let id = fnv1a32(file_name.as_bytes());
        if let Some(first) = by_id.insert(id, file_name) {
            return Err(Error::DuplicateId {
                first: first.to_owned(),
                second: file_name.to_owned(),
                id,
            });
        }
    }
    let mut by_version: HashMap<(&[u8], u8, u32), &str, FnvBuild> =
        HashMap::with_capacity_and_hasher(sorted.len(), FnvBuild::default());
    for &(file_name, name) in sorted {
        let key = (name.pid.as_slice(), name.fw_type, name.version());
        if let Some(first) = by_version.insert(key, file_name) {
            return Err(Error::DuplicateVersion {
                first: first.to_owned(),
                second: file_name.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
