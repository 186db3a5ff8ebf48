//! The firmware catalog: snapshots of the images of the `updates/` directory, held in memory.
//!
//! # Contract
//!
//! - [`Catalog::load`] scans the directory at start-up, before the socket is bound. It reads
//!   every image completely into memory, so no request ever waits for the disk, into memory
//!   of exactly its length ([`ImageBytes`]: pages of its own for an image of whole pages).
//! - [`Catalog::refresh`] lists the directory again and builds the next snapshot: an image
//!   whose file shows the same length and modification time is reused, bytes shared, without
//!   reading it; a new or changed file is read only once it has *settled* (not modified for
//!   the settle time) and only if it did not change while it was read; a removed file goes.
//!   Until a refresh, a file changed or deleted changes nothing. Unchanged, a refresh costs a
//!   listing and one metadata call per image file, and builds nothing.
//! - A built [`Catalog`] is a snapshot that is never mutated: it has no `&mut self` method. A
//!   refresh builds a whole new snapshot, which the server swaps in with one assignment; the
//!   snapshot it replaces stays intact, bytes included, until it is dropped. A refresh whose
//!   result would break the collision rules gives no snapshot, only the error.
//! - Lookups ([`Catalog::by_id_hex`], [`Catalog::newest`], [`Catalog::candidate`],
//!   [`Catalog::pending_retry`]) are O(1) hash lookups whatever the number of images, and
//!   allocate nothing, because they run once per request.
//! - The `/.well-known/core` links (RFC 6690) are prebuilt, one string per link
//!   ([`Catalog::core_links`]), so that query filters (RFC 6690 §4.1) select links and the
//!   blocks of the body are copied link by link without building the body per request.
//! - The result does not depend on the order in which the operating system lists the
//!   directory: files are sorted by name before anything is decided, so [`Catalog::images`],
//!   the discovery body and the files named by a collision error are the same on every run.
//!
//! This module neither logs nor touches sockets or CoAP messages: what happened during a scan
//! (files skipped or ignored) is returned in a [`LoadReport`], and `main` logs it; what a
//! refresh found is returned in a [`Refresh`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, DirEntry, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coap_lite::link_format::{
    LinkFormatWrite, LINK_ATTR_CONTENT_FORMAT, LINK_ATTR_MAXIMUM_SIZE_ESTIMATE,
    LINK_ATTR_RESOURCE_TYPE, LINK_ATTR_TITLE,
};
use coap_lite::ContentFormat;

use crate::firmware::{
    parse_decimal_field, parse_fw_type, valid_pid, version, VersionText, MAX_PID_LEN,
};
use crate::hash::{body_etag, fnv1a32, fnv1a64, fnv1a64_concat, FnvBuild};

/// Largest image the server can address: offsets and Size2 are u32 on the wire.
pub const MAX_IMAGE_LEN: u64 = u32::MAX as u64;

/// Every image file name ends with this suffix (case-sensitive).
pub(crate) const IMAGE_SUFFIX: &str = ".fmu";

/// Path of the resource that lists and finds images; the first link of the discovery body.
pub(crate) const UPDATES_PATH: &str = "/updates";

/// Resource type (`rt`) of [`UPDATES_PATH`] in the discovery body.
pub(crate) const RT_UPDATES: &str = "fw.updates";

/// Resource type (`rt`) of each image resource `/updates/{id}` in the discovery body.
pub(crate) const RT_IMAGE: &str = "fw.image";

const CRC_PREFIX: &[u8] = b"0x";
const CRC_DIGITS: usize = 8;
const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

/// The fields of an image file name `PID_MAJOR_MINOR_BUILD_TYPE[_CRC].fmu`
/// (README, "The catalog").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// Product id, 1 to 255 printable ASCII bytes without `_` or `/`, matched byte for byte
    /// against the PID a device sends.
    pub pid: Vec<u8>,
    /// Firmware type: [`TYPE_APP`](crate::firmware::TYPE_APP) for `APP`, else the decimal number of the name.
    pub fw_type: u8,
    /// MAJOR field, the top byte of the version.
    pub major: u8,
    /// MINOR field, the second byte of the version.
    pub minor: u8,
    /// BUILD field, the low 16 bits of the version.
    pub build: u16,
    /// The optional CRC field; informational only (logged, never checked against the content).
    pub crc: Option<u32>,
}

impl ImageName {
    /// The version devices compare, see [`version`].
    pub fn version(&self) -> u32 {
        version(self.major, self.minor, self.build)
    }
}

/// The field of an image file name that does not follow the name grammar.
///
/// Its `Display` text names the field and the rule, so that the operator can fix the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The name does not end in `.fmu`.
    Extension,
    /// Not 5 or 6 `_`-separated fields before `.fmu`.
    FieldCount,
    /// PID empty, longer than 255 bytes, or with a byte that is not printable ASCII or is `/`.
    Pid,
    /// MAJOR is not a decimal 0..=255.
    Major,
    /// MINOR is not a decimal 0..=255.
    Minor,
    /// BUILD is not a decimal 0..=65535.
    Build,
    /// TYPE is neither `APP` nor a decimal 0..=255.
    Type,
    /// CRC is not `0x` followed by exactly 8 hex digits.
    Crc,
}

impl NameError {
    /// The static text of [`Display`](fmt::Display), for callers that want a `&str`.
    pub fn as_str(self) -> &'static str {
        match self {
            NameError::Extension => "the name must end in .fmu",
            NameError::FieldCount => {
                "the name must be PID_MAJOR_MINOR_BUILD_TYPE[_CRC].fmu, 5 or 6 fields split by _"
            }
            NameError::Pid => "PID must be 1 to 255 printable ASCII characters without _ or /",
            NameError::Major => "MAJOR must be a decimal 0..=255",
            NameError::Minor => "MINOR must be a decimal 0..=255",
            NameError::Build => "BUILD must be a decimal 0..=65535",
            NameError::Type => "TYPE must be APP or a decimal 0..=255",
            NameError::Crc => "CRC must be 0x followed by exactly 8 hex digits",
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for NameError {}

fn parse_crc(field: &[u8]) -> Option<u32> {
    let digits = field.strip_prefix(CRC_PREFIX)?;
    if digits.len() != CRC_DIGITS || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc << 4 | u32::from(hex_value(b)?)))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses an image file name `PID_MAJOR_MINOR_BUILD_TYPE[_CRC].fmu`, e.g.
/// `OTA-STM32L1-SPIRIT1_1_1_31_APP_0xF63D0305.fmu`.
///
/// The PID may contain spaces (printable ASCII is 0x20..=0x7E) but not `_`, which separates
/// fields, nor `/`. The suffix `.fmu` is case-sensitive; so is `APP`. The CRC prefix is `0x`
/// in lower case; its 8 digits may be in either case.
///
/// # Errors
///
/// The first field, from left to right, that breaks the grammar: [`NameError::Extension`]
/// without `.fmu`, [`NameError::FieldCount`] unless there are 5 or 6 fields, then
/// [`NameError::Pid`], [`NameError::Major`], [`NameError::Minor`], [`NameError::Build`],
/// [`NameError::Type`] and [`NameError::Crc`] in that order. Never panics, whatever the input.
pub(crate) fn parse_image_name(name: &str) -> Result<ImageName, NameError> {
    let stem = name
        .strip_suffix(IMAGE_SUFFIX)
        .ok_or(NameError::Extension)?;
    let mut fields: [&[u8]; 6] = [&[]; 6];
    let mut count = 0;
    for field in stem.as_bytes().split(|&b| b == b'_') {
        match fields.get_mut(count) {
            Some(slot) => *slot = field,
            None => return Err(NameError::FieldCount),
        }
        count += 1;
    }
    if count < 5 {
        return Err(NameError::FieldCount);
    }
    let [pid, major, minor, build, fw_type, crc] = fields;
    if !valid_pid(pid) {
        return Err(NameError::Pid);
    }
    let major = parse_decimal_field(major, 255)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or(NameError::Major)?;
    let minor = parse_decimal_field(minor, 255)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or(NameError::Minor)?;
    let build = parse_decimal_field(build, 65535)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or(NameError::Build)?;
    let fw_type = parse_fw_type(fw_type).ok_or(NameError::Type)?;
    let crc = if count == 6 {
        Some(parse_crc(crc).ok_or(NameError::Crc)?)
    } else {
        None
    };
    Ok(ImageName {
        pid: pid.to_vec(),
        fw_type,
        major,
        minor,
        build,
        crc,
    })
}

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
}

/// The length in bytes, the modification time, the inode number and the change time (in
/// nanoseconds) of a file, from one `stat`.
pub type Stamp = (u64, SystemTime, u64, i128);

/// The stamp of `meta` with modification time `mtime`.
fn stamp(meta: &fs::Metadata, mtime: SystemTime) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let ctime = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
    (meta.len(), mtime, meta.ino(), ctime)
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

    fn new(file_name: String, name: ImageName, bytes: ImageBytes, stamp: Option<Stamp>) -> Image {
        let id = fnv1a32(file_name.as_bytes());
        Image {
            version: name.version(),
            id,
            id_hex: hex8(id),
            etag: fnv1a64(&bytes).to_be_bytes(),
            file_name,
            name,
            bytes: Arc::new(bytes),
            stamp,
        }
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

/// The bytes of one image, immutable once read, where they cost the least memory: an image
/// whose length is within 1/64 of whole pages gets pages of its own (see
/// [`ImageBytes::wants_own_pages`]), any other one a block of the heap. Dereferences to the
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
    pub fn wants_own_pages(len: usize, page: usize) -> bool {
        let rounded = len.checked_next_multiple_of(page.max(1));
        len >= page && rounded.is_some_and(|rounded| rounded - len <= len / 64)
    }

    /// `len` zero bytes, to be filled with [`ImageBytes::as_mut_slice`] before the image is
    /// built.
    ///
    /// # Errors
    /// When the memory cannot be had: `OutOfMemory` from the heap, as `mmap` for pages.
    fn zeroed(len: usize) -> io::Result<ImageBytes> {
        if ImageBytes::wants_own_pages(len, crate::pages::page_size()) {
            return crate::pages::Pages::zeroed(len).map(|pages| ImageBytes(Storage::Pages(pages)));
        }
        let mut heap = Vec::new();
        heap.try_reserve_exact(len)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        heap.resize(len, 0);
        Ok(ImageBytes(Storage::Heap(heap.into_boxed_slice())))
    }

    /// The same bytes held as [`ImageBytes::zeroed`] would hold them: [`Catalog::from_files`]
    /// gets them in a `Vec`.
    fn from_vec(bytes: Vec<u8>) -> io::Result<ImageBytes> {
        if !ImageBytes::wants_own_pages(bytes.len(), crate::pages::page_size()) {
            return Ok(ImageBytes(Storage::Heap(bytes.into_boxed_slice())));
        }
        let mut held = ImageBytes::zeroed(bytes.len())?;
        held.as_mut_slice().copy_from_slice(&bytes);
        Ok(held)
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Storage::Heap(heap) => heap,
            Storage::Pages(pages) => pages.as_mut_slice(),
        }
    }

    /// Whether the bytes are in pages of their own rather than on the heap.
    pub fn in_own_pages(&self) -> bool {
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

fn hex8(value: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, slot) in out.iter_mut().enumerate() {
        let nibble = (value >> (28 - 4 * i)) & 0xf;
        *slot = LOWER_HEX[nibble as usize];
    }
    out
}

/// One link of the /.well-known/core body (RFC 6690), kept apart so that
/// query filters can select links without rebuilding strings per request.
#[derive(Debug)]
pub struct CoreLink {
    /// The whole link as written in the body, e.g.
    /// `</updates/e40c292c>;rt="fw.image";ct=42;sz=3;title="a.fmu"`.
    pub text: Vec<u8>,
    /// The link target between `<` and `>`, e.g. `/updates/e40c292c`.
    target: Box<[u8]>,
    /// The attributes of the link, names as written, values unquoted and unescaped.
    attrs: Vec<(&'static str, Box<[u8]>)>,
}

impl CoreLink {
    pub(crate) fn new(target: &str, attrs: Vec<(&'static str, AttrValue)>) -> CoreLink {
        let mut text = String::new();
        let mut writer = LinkFormatWrite::new(&mut text);
        let mut link = writer.link(target);
        for (name, value) in &attrs {
            link = match value {
                AttrValue::Quoted(s) => link.attr_quoted(name, s),
                AttrValue::Number(n) => link.attr_u32(name, *n),
            };
        }
        // Writing into a String cannot fail, so there is no error to report.
        let _ = link.finish();
        CoreLink {
            text: text.into_bytes(),
            target: target.as_bytes().into(),
            attrs: attrs
                .into_iter()
                .map(|(name, value)| {
                    let raw = match value {
                        AttrValue::Quoted(s) => s.into_bytes(),
                        AttrValue::Number(n) => n.to_string().into_bytes(),
                    };
                    (name, raw.into_boxed_slice())
                })
                .collect(),
        }
    }

    /// RFC 6690 §4.1 filter: whether this link passes the query `query`, one Uri-Query value
    /// `name=value` or `name=prefix*`.
    ///
    /// - `href` compares with the link target (`/updates/e40c292c`).
    /// - `rt`, `if`, `rel` and `ct` hold space-separated values (RFC 6690 §3.1, RFC 7252
    ///   §7.2.1): the link passes if any one token matches.
    /// - A value ending in `*` is a prefix match (`rt=fw.*`, `title=OTA-*`; `rt=*` passes
    ///   every link that has an `rt`); otherwise the match is exact, byte for byte, on the
    ///   unquoted attribute value (`sz=3` passes, `sz=03` does not).
    /// - Attribute names compare ASCII case-insensitively.
    /// - A query without `=`, or naming an attribute the link lacks, does not match.
    ///
    /// Allocates nothing: it runs once per link for every filtered discovery request.
    pub fn matches(&self, query: &[u8]) -> bool {
        let Some(eq) = query.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (name, value) = (&query[..eq], &query[eq + 1..]);
        let pattern = match value.strip_suffix(b"*") {
            Some(prefix) => Pattern::Prefix(prefix),
            None => Pattern::Exact(value),
        };
        if name.eq_ignore_ascii_case(b"href") {
            return pattern.matches(&self.target);
        }
        let multi = [b"rt".as_slice(), b"if", b"rel", b"ct"]
            .iter()
            .any(|m| name.eq_ignore_ascii_case(m));
        self.attrs
            .iter()
            .filter(|(attr, _)| name.eq_ignore_ascii_case(attr.as_bytes()))
            .any(|(_, attr_value)| {
                if multi {
                    attr_value
                        .split(|&b| b == b' ')
                        .filter(|token| !token.is_empty())
                        .any(|token| pattern.matches(token))
                } else {
                    pattern.matches(attr_value)
                }
            })
    }
}

pub(crate) enum AttrValue {
    Quoted(String),
    Number(u32),
}

enum Pattern<'a> {
    Exact(&'a [u8]),
    Prefix(&'a [u8]),
}

impl Pattern<'_> {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            Pattern::Exact(exact) => value == *exact,
            Pattern::Prefix(prefix) => value.starts_with(prefix),
        }
    }
}

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

/// A new image file that has not settled yet: [`Catalog::refresh`] does not read it, and
/// the snapshot answers requests for its id with [`Catalog::pending_retry`].
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

/// The outcome of [`Catalog::refresh`].
///
/// `added`, `replaced` and `removed` compare the image files `next` serves with those the
/// refreshed catalog serves, by file name, sorted; they are empty when `next` is `None`.
/// `pending` and `skipped` describe the directory as this refresh saw it, whether or not
/// `next` is `Some`, sorted by file name.
#[derive(Debug, Default)]
pub struct Refresh {
    /// The catalog to swap in; `None` when nothing changed (keep the current one, log
    /// nothing) or when `error` is set (keep serving the current one).
    pub next: Option<Catalog>,
    /// Files `next` serves and the refreshed catalog does not.
    pub added: Vec<String>,
    /// Files both serve, read again because their length or modification time changed.
    /// The ETag changes only if the content did.
    pub replaced: Vec<String>,
    /// Files the refreshed catalog serves and `next` does not: deleted, renamed, or now
    /// skipped.
    pub removed: Vec<String>,
    /// New files not read yet because they have not settled; not served.
    pub pending: Vec<Pending>,
    /// `.fmu` candidates left out, as in [`LoadReport::skipped`].
    pub skipped: Vec<Skipped>,
    /// Why there is no `next` although something may have changed: the directory could not
    /// be listed ([`Error::ReadDir`]), or the new set of files has a collision
    /// ([`Error::DuplicateId`], [`Error::DuplicateVersion`]; no new file was read).
    pub error: Option<Error>,
}

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

/// A candidate that passed every check except the collision rules.
struct Found {
    file_name: String,
    name: ImageName,
    bytes: ImageBytes,
    stamp: Option<Stamp>,
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

    /// Hashes the images read and assembles them; `skipped` is kept for later refreshes.
    fn build(found: Vec<Found>, skipped: Vec<Skipped>) -> Result<Catalog, Error> {
        let images = found
            .into_iter()
            .map(|f| Image::new(f.file_name, f.name, f.bytes, f.stamp))
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
        links.push(CoreLink::new(
            UPDATES_PATH,
            vec![(
                LINK_ATTR_RESOURCE_TYPE,
                AttrValue::Quoted(RT_UPDATES.to_owned()),
            )],
        ));
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
    pub fn refresh(&self, dir: &Path, now: SystemTime, settle: Duration) -> Refresh {
        self.refresh_with(dir, now, settle, &mut || {})
    }

    /// [`Catalog::refresh`], calling `between` after the listing and before any read: tests
    /// change files there.
    fn refresh_with(
        &self,
        dir: &Path,
        now: SystemTime,
        settle: Duration,
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
            match (settle_wait(c.stamp.1, now, settle), c.old) {
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
            match read_settled(&c.path, c.stamp) {
                Ok(bytes) => fresh.push(Image::new(c.file_name, c.name, bytes, Some(c.stamp))),
                Err(Unread::Unsettled(stamp)) => match c.old {
                    Some(old) => kept.push(old),
                    None => {
                        let wait = settle_wait(stamp.1, now, settle).unwrap_or_default();
                        out.pending.push(Pending::new(c.file_name, wait));
                    }
                },
                Err(Unread::Skip(reason)) => out.skipped.push(Skipped {
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
        for image in &next.images {
            match self.by_file_name(&image.file_name) {
                None => out.added.push(image.file_name.clone()),
                Some(old) if !Arc::ptr_eq(&old.bytes, &image.bytes) => {
                    out.replaced.push(image.file_name.clone());
                }
                Some(_) => {}
            }
        }
        for image in &self.images {
            if next.by_file_name(&image.file_name).is_none() {
                out.removed.push(image.file_name.clone());
            }
        }
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

    /// The index of the image named `file_name`: O(1) through the id index.
    fn index_of(&self, file_name: &str) -> Option<usize> {
        let key = u64::from_le_bytes(hex8(fnv1a32(file_name.as_bytes())));
        let index = *self.by_id_text.get(&key)?;
        self.images
            .get(index)
            .filter(|image| image.file_name == file_name)
            .map(|_| index)
    }

    fn by_file_name(&self, file_name: &str) -> Option<&Image> {
        self.images.get(self.index_of(file_name)?)
    }

    /// For a request for `/updates/{id_hex}` that [`Catalog::by_id_hex`] does not know: if
    /// `id_hex` is the id of a new file that was still being written (not settled) when
    /// this snapshot was built, the seconds after which to ask again, for a 5.03 Service
    /// Unavailable with that Max-Age; else `None` (a 4.04). At least 1; counted from the
    /// refresh that built this snapshot, so possibly more than the time left now. O(1), no
    /// allocation.
    pub fn pending_retry(&self, id_hex: &[u8]) -> Option<u32> {
        let text = <[u8; 8]>::try_from(id_hex).ok()?;
        self.pending.get(&u64::from_le_bytes(text)).copied()
    }

    /// Whether some file of the directory was found but has not settled yet.
    pub fn has_pending(&self) -> bool {
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
    pub fn by_id_hex(&self, id_hex: &[u8]) -> Option<&Image> {
        let text = <[u8; 8]>::try_from(id_hex).ok()?;
        self.images
            .get(*self.by_id_text.get(&u64::from_le_bytes(text))?)
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
    pub fn core_links(&self) -> &[CoreLink] {
        &self.links
    }

    /// The whole `/.well-known/core` body (Content-Format 40): [`Catalog::core_links`] joined by
    /// `,`. Only tests build it: discovery streams the links into each block.
    #[cfg(test)]
    pub(crate) fn core_body(&self) -> Vec<u8> {
        joined(&self.links).flatten().copied().collect()
    }

    /// Entity tag of the whole `/.well-known/core` body: FNV-1a 64 of the links joined by `,`.
    pub fn core_etag(&self) -> [u8; 8] {
        self.core_etag
    }

    /// Sum of the image sizes in bytes, for the start-up summary.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

/// The parts of the discovery body in order: the links with `,` between.
fn joined(links: &[CoreLink]) -> impl Iterator<Item = &[u8]> {
    links
        .iter()
        .enumerate()
        .flat_map(|(i, link)| [if i > 0 { &b","[..] } else { &[][..] }, &link.text[..]])
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

fn image_link(image: &Image) -> CoreLink {
    let target = format!("{UPDATES_PATH}/{}", image.id_str());
    // Images are at most MAX_IMAGE_LEN = u32::MAX bytes, so the length always fits.
    let size = u32::try_from(image.bytes.len()).unwrap_or(u32::MAX);
    let ct = u32::try_from(usize::from(ContentFormat::ApplicationOctetStream)).unwrap_or(42);
    CoreLink::new(
        &target,
        vec![
            (
                LINK_ATTR_RESOURCE_TYPE,
                AttrValue::Quoted(RT_IMAGE.to_owned()),
            ),
            (LINK_ATTR_CONTENT_FORMAT, AttrValue::Number(ct)),
            (LINK_ATTR_MAXIMUM_SIZE_ESTIMATE, AttrValue::Number(size)),
            (LINK_ATTR_TITLE, AttrValue::Quoted(image.file_name.clone())),
        ],
    )
}

fn lossy(name: &OsStr) -> String {
    name.to_string_lossy().into_owned()
}

enum Scan {
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
fn ignored_name(raw: &[u8]) -> bool {
    raw.starts_with(b".") || !raw.ends_with(IMAGE_SUFFIX.as_bytes())
}

/// What a directory entry's name and type decide, before any metadata call.
enum Listed<'a> {
    Ignored,
    Skipped(SkipReason),
    /// A UTF-8 name ending in `.fmu`; its grammar is not checked yet. The flag says whether
    /// the entry is a symbolic link.
    Candidate(&'a str, bool),
}

/// `os_name` is `entry.file_name()`, passed in so that the caller keeps it.
fn list_entry<'a>(entry: &DirEntry, os_name: &'a OsStr) -> Listed<'a> {
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

fn scan_entry(entry: &DirEntry) -> Scan {
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

pub(crate) fn io_reason(e: &io::Error) -> SkipReason {
    match e.kind() {
        io::ErrorKind::NotFound => SkipReason::Vanished,
        _ => SkipReason::Unreadable(e.to_string()),
    }
}

/// The metadata of `path`, following symbolic links, or why it is no image.
fn stat_followed(path: &Path) -> Result<fs::Metadata, SkipReason> {
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
fn read_whole(file: &File, expected: u64) -> Result<Option<ImageBytes>, SkipReason> {
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
    /// A per-file problem, as [`Catalog::load`] reports it.
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

/// Reads one regular file completely, or says why not. Never returns a partial image.
///
/// The stamp is the one the open file had before it was read: if the file changes while it
/// is read without changing length, the stamp is already out of date, so a rescan reads the
/// file again rather than keeping what may be a mix of two versions.
fn read_image(path: &Path) -> Result<(ImageBytes, Option<Stamp>), SkipReason> {
    // Follows symbolic links, and is checked before opening: opening a FIFO would block.
    check_regular(&stat_followed(path)?)?;
    let file = File::open(path).map_err(|e| io_reason(&e))?;
    // Again on the open file: the path may have been replaced since the first check.
    let meta = file.metadata().map_err(|e| io_reason(&e))?;
    check_regular(&meta)?;
    let expected = meta.len();
    let stamp = meta.modified().ok().map(|mtime| stamp(&meta, mtime));
    let bytes = read_whole(&file, expected)?.ok_or(SkipReason::ChangedWhileReading)?;
    Ok((bytes, stamp))
}

fn check_regular(meta: &fs::Metadata) -> Result<(), SkipReason> {
    if !meta.is_file() {
        return Err(SkipReason::NotRegularFile);
    }
    if meta.len() > MAX_IMAGE_LEN {
        return Err(SkipReason::TooLarge(meta.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::TYPE_APP;
    use crate::testkit::TempDir;

    fn name(pid: &str, major: u8, minor: u8, build: u16, fw_type: u8) -> ImageName {
        ImageName {
            pid: pid.as_bytes().to_vec(),
            fw_type,
            major,
            minor,
            build,
            crc: None,
        }
    }

    fn catalog(files: &[(&str, &[u8])]) -> Catalog {
        let files = files
            .iter()
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect();
        let (catalog, skipped) = Catalog::from_files(files).expect("catalog builds");
        assert!(skipped.is_empty(), "{skipped:?}");
        catalog
    }

    // ---- file-name grammar ----

    #[test]
    fn name_with_crc_parses() {
        let parsed = parse_image_name("OTA-STM32L1-SPIRIT1_1_1_31_APP_0xF63D0305.fmu").unwrap();
        assert_eq!(
            parsed,
            ImageName {
                crc: Some(0xF63D_0305),
                ..name("OTA-STM32L1-SPIRIT1", 1, 1, 31, TYPE_APP)
            }
        );
        assert_eq!(parsed.version(), 0x0101_001F);
    }

    #[test]
    fn name_without_crc_parses() {
        assert_eq!(
            parse_image_name("OTA-DEMO_2_0_7_APP.fmu"),
            Ok(name("OTA-DEMO", 2, 0, 7, TYPE_APP))
        );
    }

    #[test]
    fn crc_digits_may_be_lower_case() {
        assert_eq!(
            parse_image_name("P_1_1_1_APP_0xdeadbeef.fmu").map(|n| n.crc),
            Ok(Some(0xdead_beef))
        );
    }

    #[test]
    fn type_may_be_a_decimal_number() {
        assert_eq!(parse_image_name("P_1_2_3_7.fmu").map(|n| n.fw_type), Ok(7));
        assert_eq!(
            parse_image_name("P_1_2_3_255.fmu").map(|n| n.fw_type),
            Ok(255)
        );
        assert_eq!(
            parse_image_name("P_1_2_3_3.fmu"),
            parse_image_name("P_1_2_3_APP.fmu")
        );
    }

    #[test]
    fn leading_zeros_are_accepted() {
        assert_eq!(
            parse_image_name("P_001_0002_00000000031_003.fmu"),
            Ok(name("P", 1, 2, 31, TYPE_APP))
        );
    }

    #[test]
    fn pid_may_hold_any_printable_ascii_but_underscore_and_slash() {
        assert_eq!(
            parse_image_name("My Mote (v2)!_1_0_0_APP.fmu").map(|n| n.pid),
            Ok(b"My Mote (v2)!".to_vec())
        );
        let longest = "A".repeat(255);
        assert!(parse_image_name(&format!("{longest}_1_0_0_APP.fmu")).is_ok());
    }

    #[test]
    fn empty_pid_is_rejected() {
        assert_eq!(parse_image_name("_1_1_31_APP.fmu"), Err(NameError::Pid));
    }

    #[test]
    fn pid_with_slash_is_rejected() {
        assert_eq!(parse_image_name("a/b_1_1_31_APP.fmu"), Err(NameError::Pid));
    }

    #[test]
    fn pid_of_256_chars_is_rejected() {
        let pid = "A".repeat(256);
        assert_eq!(
            parse_image_name(&format!("{pid}_1_1_31_APP.fmu")),
            Err(NameError::Pid)
        );
    }

    #[test]
    fn pid_with_control_or_non_ascii_is_rejected() {
        assert_eq!(parse_image_name("a\tb_1_1_31_APP.fmu"), Err(NameError::Pid));
        assert_eq!(parse_image_name("é_1_1_31_APP.fmu"), Err(NameError::Pid));
    }

    #[test]
    fn major_256_is_rejected() {
        assert_eq!(
            parse_image_name("P_256_1_31_APP.fmu"),
            Err(NameError::Major)
        );
    }

    #[test]
    fn signed_or_empty_numbers_are_rejected() {
        assert_eq!(parse_image_name("P_+1_1_31_APP.fmu"), Err(NameError::Major));
        assert_eq!(parse_image_name("P_1__31_APP.fmu"), Err(NameError::Minor));
        assert_eq!(parse_image_name("P_1_1_-31_APP.fmu"), Err(NameError::Build));
        // Overflows u32 while accumulating: still an error, not a panic.
        assert_eq!(
            parse_image_name("P_99999999999999999999_1_31_APP.fmu"),
            Err(NameError::Major)
        );
    }

    #[test]
    fn minor_not_decimal_is_rejected() {
        assert_eq!(parse_image_name("P_1_x_31_APP.fmu"), Err(NameError::Minor));
    }

    #[test]
    fn build_65536_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_65536_APP.fmu"),
            Err(NameError::Build)
        );
        assert!(parse_image_name("P_1_1_65535_APP.fmu").is_ok());
    }

    #[test]
    fn type_appx_is_rejected() {
        assert_eq!(parse_image_name("P_1_1_31_APPX.fmu"), Err(NameError::Type));
        assert_eq!(parse_image_name("P_1_1_31_app.fmu"), Err(NameError::Type));
        assert_eq!(parse_image_name("P_1_1_31_256.fmu"), Err(NameError::Type));
    }

    #[test]
    fn crc_with_3_digits_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0x123.fmu"),
            Err(NameError::Crc)
        );
    }

    #[test]
    fn crc_with_9_digits_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0x123456789.fmu"),
            Err(NameError::Crc)
        );
    }

    #[test]
    fn crc_without_0x_or_with_non_hex_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP_F63D0305.fmu"),
            Err(NameError::Crc)
        );
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0xF63D030G.fmu"),
            Err(NameError::Crc)
        );
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0x+63D0305.fmu"),
            Err(NameError::Crc)
        );
    }

    #[test]
    fn four_fields_is_field_count() {
        assert_eq!(parse_image_name("P_1_1_31.fmu"), Err(NameError::FieldCount));
    }

    #[test]
    fn seven_fields_is_field_count() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0xF63D0305_x.fmu"),
            Err(NameError::FieldCount)
        );
    }

    #[test]
    fn other_extension_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP.bin"),
            Err(NameError::Extension)
        );
        assert_eq!(
            parse_image_name("P_1_1_31_APP.FMU"),
            Err(NameError::Extension)
        );
        assert_eq!(parse_image_name(""), Err(NameError::Extension));
        assert_eq!(parse_image_name(".fmu"), Err(NameError::FieldCount));
    }

    #[test]
    fn name_error_text_names_the_field() {
        assert_eq!(
            NameError::Major.to_string(),
            "MAJOR must be a decimal 0..=255"
        );
        assert!(NameError::Crc.to_string().starts_with("CRC"));
    }

    // ---- versions, ids, entity tags ----

    #[test]
    fn version_is_major_minor_build_packed() {
        assert_eq!(version(1, 1, 31), 0x0101_001F);
        assert_eq!(version(255, 255, 65535), 0xFFFF_FFFF);
        assert_eq!(version(0, 0, 0), 0);
    }

    #[test]
    fn version_text_is_dotted_decimal() {
        assert_eq!(VersionText(0x0101_001F).to_string(), "1.1.31");
        assert_eq!(VersionText(u32::MAX).to_string(), "255.255.65535");
    }

    #[test]
    fn image_ids_are_8_lowercase_hex_digits() {
        assert_eq!(hex8(0xe40c_292c), *b"e40c292c");
        assert_eq!(hex8(0x0000_00ff), *b"000000ff");
    }

    #[test]
    fn image_id_is_fnv1a32_of_file_name_and_etag_fnv1a64_of_content() {
        let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"a")]);
        let image = &c.images()[0];
        assert_eq!(image.id, 0x7b42_38ed);
        assert_eq!(image.id_str(), "7b4238ed");
        assert_eq!(image.etag, 0xaf63_dc4c_8601_ec8c_u64.to_be_bytes());
        assert_eq!(image.version, version(1, 0, 0));
    }

    #[test]
    fn by_id_hex_takes_exactly_8_lowercase_hex_digits() {
        let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"a")]);
        assert_eq!(
            c.by_id_hex(b"7b4238ed").map(|i| i.file_name.as_str()),
            Some("OTA-A_1_0_0_APP.fmu")
        );
        assert!(c.by_id_hex(b"7B4238ED").is_none());
        assert!(c.by_id_hex(b"7b4238e").is_none());
        assert!(c.by_id_hex(b"7b4238ed0").is_none());
        assert!(c.by_id_hex(b"+b4238ed").is_none());
        assert!(c.by_id_hex(b"00000000").is_none());
        assert!(c.by_id_hex(b"").is_none());
    }

    // ---- lookups and collisions ----

    #[test]
    fn newest_picks_highest_version_per_pid_and_type() {
        let c = catalog(&[
            ("M_1_0_9_APP.fmu", b"1"),
            ("M_1_2_0_APP.fmu", b"2"),
            ("M_1_1_500_APP.fmu", b"3"),
            ("M_9_0_0_4.fmu", b"4"),
            ("N_5_0_0_APP.fmu", b"5"),
        ]);
        let newest = |pid: &[u8], t| c.newest(pid, t).map(|i| i.file_name.as_str());
        assert_eq!(newest(b"M", TYPE_APP), Some("M_1_2_0_APP.fmu"));
        assert_eq!(newest(b"M", 4), Some("M_9_0_0_4.fmu"));
        assert_eq!(newest(b"N", TYPE_APP), Some("N_5_0_0_APP.fmu"));
        assert_eq!(newest(b"N", 4), None);
        assert_eq!(newest(b"m", TYPE_APP), None);
        assert_eq!(newest(b"", TYPE_APP), None);
        assert_eq!(newest(&[b'M'; 300], TYPE_APP), None);
    }

    #[test]
    fn candidate_only_when_strictly_newer_and_same_type() {
        let c = catalog(&[("M_1_2_0_APP.fmu", b"1"), ("M_9_0_0_4.fmu", b"2")]);
        let cand = |t, v| c.candidate(b"M", t, v).map(|i| i.file_name.as_str());
        assert_eq!(
            cand(TYPE_APP, version(1, 1, 65535)),
            Some("M_1_2_0_APP.fmu")
        );
        assert_eq!(cand(TYPE_APP, version(1, 2, 0)), None);
        assert_eq!(cand(TYPE_APP, version(2, 0, 0)), None);
        // The type-4 image is newer, but not for APP devices.
        assert_eq!(cand(TYPE_APP, version(1, 2, 0)), None);
        assert_eq!(cand(4, version(1, 2, 0)), Some("M_9_0_0_4.fmu"));
    }

    #[test]
    fn duplicate_version_is_an_error_naming_both_files_in_sorted_order() {
        // Same PID, TYPE (APP = 3) and version, different names (leading zeros, CRC).
        let files = vec![
            ("M_1_0_0_3.fmu".to_string(), b"x".to_vec()),
            ("M_01_0_0_APP_0x00000000.fmu".to_string(), b"y".to_vec()),
        ];
        match Catalog::from_files(files) {
            Err(Error::DuplicateVersion { first, second }) => {
                assert_eq!(first, "M_01_0_0_APP_0x00000000.fmu");
                assert_eq!(second, "M_1_0_0_3.fmu");
                let text = Error::DuplicateVersion { first, second }.to_string();
                assert!(text.contains("M_01_0_0_APP_0x00000000.fmu"), "{text}");
                assert!(text.contains("M_1_0_0_3.fmu"), "{text}");
            }
            other => panic!("expected DuplicateVersion, got {other:?}"),
        }
    }

    #[test]
    fn same_file_name_twice_is_a_duplicate_id() {
        let files = vec![
            ("M_1_0_0_APP.fmu".to_string(), b"x".to_vec()),
            ("M_1_0_0_APP.fmu".to_string(), b"y".to_vec()),
        ];
        assert!(matches!(
            Catalog::from_files(files),
            Err(Error::DuplicateId { id, .. }) if id == fnv1a32(b"M_1_0_0_APP.fmu")
        ));
    }

    #[test]
    fn from_files_skips_bad_names_sorted() {
        let files = vec![
            ("z.bin".to_string(), vec![]),
            ("M_1_0_0_APP.fmu".to_string(), vec![1]),
            ("M_x_0_0_APP.fmu".to_string(), vec![]),
        ];
        let (c, skipped) = Catalog::from_files(files).unwrap();
        assert_eq!(c.images().len(), 1);
        assert_eq!(
            skipped,
            vec![
                Skipped {
                    file: "M_x_0_0_APP.fmu".into(),
                    reason: SkipReason::BadName(NameError::Major)
                },
                Skipped {
                    file: "z.bin".into(),
                    reason: SkipReason::BadName(NameError::Extension)
                },
            ]
        );
    }

    #[test]
    fn empty_catalog_is_allowed() {
        let (c, skipped) = Catalog::from_files(vec![]).unwrap();
        assert!(c.images().is_empty() && skipped.is_empty());
        assert_eq!(c.total_bytes(), 0);
        assert_eq!(c.core_body(), br#"</updates>;rt="fw.updates""#);
        assert!(c.newest(b"M", TYPE_APP).is_none());
    }

    // ---- discovery (RFC 6690) ----

    #[test]
    fn core_body_lists_updates_then_images_in_name_order() {
        // Given in reverse order: the body follows file-name order regardless.
        let c = catalog(&[
            ("OTA-A_1_0_1_APP.fmu", b""),
            ("OTA-A_1_0_0_APP.fmu", b"abc"),
        ]);
        let expected = concat!(
            r#"</updates>;rt="fw.updates","#,
            r#"</updates/7b4238ed>;rt="fw.image";ct=42;sz=3;title="OTA-A_1_0_0_APP.fmu","#,
            r#"</updates/1d734daa>;rt="fw.image";ct=42;sz=0;title="OTA-A_1_0_1_APP.fmu""#,
        );
        assert_eq!(std::str::from_utf8(&c.core_body()), Ok(expected));
        assert_eq!(c.core_etag(), fnv1a64(expected.as_bytes()).to_be_bytes());
        assert_eq!(c.core_links().len(), 3);
        assert_eq!(
            c.core_links()[1].text,
            c.core_body()[27..27 + c.core_links()[1].text.len()]
        );
        assert_eq!(c.total_bytes(), 3);
    }

    #[test]
    fn title_quotes_are_escaped_in_the_body_and_matched_unescaped() {
        let c = catalog(&[(r#"a"b_1_0_0_APP.fmu"#, b"")]);
        let link = &c.core_links()[1];
        assert!(link.text.ends_with(br#";title="a\"b_1_0_0_APP.fmu""#));
        assert!(link.matches(br#"title=a"b*"#));
    }

    #[test]
    fn link_filter_rt_exact_and_prefix() {
        let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"abc")]);
        let [updates, image] = c.core_links() else {
            panic!("two links expected")
        };
        assert!(image.matches(b"rt=fw.image"));
        assert!(!updates.matches(b"rt=fw.image"));
        assert!(updates.matches(b"rt=fw.updates"));
        assert!(image.matches(b"rt=fw.*") && updates.matches(b"rt=fw.*"));
        assert!(image.matches(b"rt=*"));
        assert!(!image.matches(b"rt=fw"));
        assert!(!image.matches(b"rt=fw.image2"));
    }

    #[test]
    fn link_filter_title_href_sz_ct() {
        let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"abc")]);
        let [updates, image] = c.core_links() else {
            panic!("two links expected")
        };
        assert!(image.matches(b"title=OTA-*"));
        assert!(image.matches(b"title=OTA-A_1_0_0_APP.fmu"));
        assert!(!image.matches(b"title=OTA-"));
        assert!(!image.matches(b"title=XOTA-*"));
        assert!(image.matches(b"href=/updates/*"));
        assert!(image.matches(b"href=/updates/7b4238ed"));
        assert!(!updates.matches(b"href=/updates/*"));
        assert!(updates.matches(b"href=/updates"));
        assert!(image.matches(b"sz=3"));
        assert!(!image.matches(b"sz=03"));
        assert!(image.matches(b"ct=42"));
        assert!(image.matches(b"RT=fw.image"));
    }

    #[test]
    fn link_filter_without_equals_or_missing_attribute_does_not_match() {
        let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"abc")]);
        let [updates, image] = c.core_links() else {
            panic!("two links expected")
        };
        assert!(!image.matches(b"rt"));
        assert!(!image.matches(b""));
        assert!(!image.matches(b"=fw.image"));
        assert!(!image.matches(b"if=*"));
        assert!(!updates.matches(b"title=*"));
        assert!(!updates.matches(b"sz=3"));
        assert!(!image.matches(b"rt="));
    }

    #[test]
    fn link_filter_any_space_separated_rt_token_matches() {
        let link = CoreLink::new(
            "/x",
            vec![(
                LINK_ATTR_RESOURCE_TYPE,
                AttrValue::Quoted("core.a fw.image".into()),
            )],
        );
        assert_eq!(link.text, br#"</x>;rt="core.a fw.image""#);
        assert!(link.matches(b"rt=fw.image"));
        assert!(link.matches(b"rt=core.*"));
        assert!(!link.matches(b"rt=core.a fw*"));
    }

    // ---- Catalog::load on a real directory ----

    fn reason_of<'a>(report: &'a LoadReport, file: &str) -> Option<&'a SkipReason> {
        report
            .skipped
            .iter()
            .find(|s| s.file == file)
            .map(|s| &s.reason)
    }

    #[test]
    fn load_of_missing_directory_is_read_dir_error() {
        let dir = TempDir::new("catalog-test");
        let missing = dir.path().join("nope");
        match Catalog::load(&missing) {
            Err(e @ Error::ReadDir { .. }) => assert!(e.to_string().contains("nope"), "{e}"),
            other => panic!("expected ReadDir, got {other:?}"),
        }
    }

    #[test]
    fn load_of_empty_directory_gives_empty_catalog() {
        let dir = TempDir::new("catalog-test");
        let report = Catalog::load(dir.path()).unwrap();
        assert!(report.catalog.images().is_empty());
        assert!(report.skipped.is_empty() && report.ignored.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn load_applies_every_directory_rule() {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::{symlink, PermissionsExt};

        let dir = TempDir::new("catalog-test");
        let target_dir = TempDir::new("catalog-test");
        dir.write("A_1_0_0_APP.fmu", b"abc");
        dir.write("Empty_1_0_0_APP.fmu", b"");
        dir.write(".Hidden_1_0_0_APP.fmu", b"h");
        dir.write("notes.txt", b"t");
        dir.write("Bad_x_0_0_APP.fmu", b"b");
        fs::create_dir(dir.path().join("Sub_1_0_0_APP.fmu")).unwrap();
        let real = target_dir.write("Real_1_0_0_APP.fmu", b"link");
        symlink(&real, dir.path().join("Linked_1_0_0_APP.fmu")).unwrap();
        symlink(target_dir.path(), dir.path().join("x_1_1_1_APP.fmu")).unwrap();
        symlink(
            dir.path().join("missing"),
            dir.path().join("Dangling_1_0_0_APP.fmu"),
        )
        .unwrap();
        let locked = dir.write("Locked_1_0_0_APP.fmu", b"l");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let locked_is_readable = fs::read(&locked).is_ok(); // true when running as root
        let non_utf8 = OsStr::from_bytes(b"Bad\xff_1_0_0_APP.fmu");
        // Some file systems refuse such names; then there is nothing to test.
        let made_non_utf8 = fs::write(dir.path().join(non_utf8), b"n").is_ok();

        let report = Catalog::load(dir.path()).unwrap();

        let loaded: Vec<&str> = report
            .catalog
            .images()
            .iter()
            .map(|i| i.file_name.as_str())
            .collect();
        let mut expected = vec![
            "A_1_0_0_APP.fmu",
            "Empty_1_0_0_APP.fmu",
            "Linked_1_0_0_APP.fmu",
        ];
        if locked_is_readable {
            expected.push("Locked_1_0_0_APP.fmu");
        }
        assert_eq!(loaded, expected);
        let linked = report.catalog.newest(b"Linked", TYPE_APP).unwrap();
        assert_eq!(linked.bytes[..], b"link"[..]);
        assert!(report
            .catalog
            .newest(b"Empty", TYPE_APP)
            .unwrap()
            .bytes
            .is_empty());

        assert_eq!(
            report.ignored,
            vec![".Hidden_1_0_0_APP.fmu", "Sub_1_0_0_APP.fmu", "notes.txt"]
        );
        assert_eq!(
            reason_of(&report, "Bad_x_0_0_APP.fmu"),
            Some(&SkipReason::BadName(NameError::Major))
        );
        assert_eq!(
            reason_of(&report, "x_1_1_1_APP.fmu"),
            Some(&SkipReason::NotRegularFile)
        );
        assert_eq!(
            reason_of(&report, "Dangling_1_0_0_APP.fmu"),
            Some(&SkipReason::NotRegularFile)
        );
        if !locked_is_readable {
            assert!(matches!(
                reason_of(&report, "Locked_1_0_0_APP.fmu"),
                Some(SkipReason::Unreadable(_))
            ));
        }
        if made_non_utf8 {
            assert_eq!(
                reason_of(&report, "Bad\u{fffd}_1_0_0_APP.fmu"),
                Some(&SkipReason::NotUtf8)
            );
        }
        let expected_skips = 3 + usize::from(!locked_is_readable) + usize::from(made_non_utf8);
        assert_eq!(report.skipped.len(), expected_skips, "{:?}", report.skipped);
        let mut sorted = report.skipped.clone();
        sorted.sort_by(|a, b| a.file.cmp(&b.file));
        assert_eq!(report.skipped, sorted);
    }

    #[test]
    fn load_skips_file_larger_than_max_image_len_without_reading_it() {
        let dir = TempDir::new("catalog-test");
        let path = dir.path().join("Huge_1_0_0_APP.fmu");
        let file = File::create(&path).unwrap();
        // A sparse file: no data blocks are written. Where the file system
        // refuses one the test says so, and fails under CI rather than
        // passing without having checked anything.
        if let Err(e) = file.set_len(MAX_IMAGE_LEN + 1) {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "cannot make a sparse file of 4 GiB + 1 under CI: {e}"
            );
            eprintln!("SKIPPED: this file system refuses a sparse file of 4 GiB + 1: {e}");
            return;
        }
        drop(file);
        let report = Catalog::load(dir.path()).unwrap();
        assert!(report.catalog.images().is_empty());
        assert_eq!(
            reason_of(&report, "Huge_1_0_0_APP.fmu"),
            Some(&SkipReason::TooLarge(MAX_IMAGE_LEN + 1))
        );
    }

    #[test]
    fn file_that_vanishes_between_listing_and_reading_is_skipped_as_vanished() {
        let dir = TempDir::new("catalog-test");
        dir.write("GONE_1_0_0_APP.fmu", b"soon gone");
        let entry = fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap();
        // Listed, then deleted before it is read: the race load() can meet.
        fs::remove_file(entry.path()).unwrap();
        match scan_entry(&entry) {
            Scan::Skipped(reason) => assert_eq!(reason, SkipReason::Vanished),
            Scan::Found(_) => panic!("a vanished file was loaded"),
            Scan::Ignored => panic!("a vanished image was ignored, not reported"),
        }
    }

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
    fn images_are_held_byte_exact_in_own_pages_or_on_the_heap_and_shared_by_refreshes() {
        let page = crate::pages::page_size();
        let dir = TempDir::new("catalog-test");
        let big: Vec<u8> = (0..16 * page).map(|i| (i % 251) as u8).collect();
        let odd: Vec<u8> = (0..16 * page - page / 2).map(|i| (i % 241) as u8).collect();
        write_at(&dir, "BIG_1_0_0_APP.fmu", &big, at(0));
        write_at(&dir, "ODD_1_0_0_APP.fmu", &odd, at(0));
        write_at(&dir, "NIL_1_0_0_APP.fmu", b"", at(0));
        let current = loaded(&dir);
        let held = |catalog: &Catalog, file: &str| image(catalog, file).bytes.clone();
        assert!(held(&current, "BIG_1_0_0_APP.fmu").in_own_pages());
        assert_eq!(held(&current, "BIG_1_0_0_APP.fmu")[..], big[..]);
        assert!(!held(&current, "ODD_1_0_0_APP.fmu").in_own_pages());
        assert_eq!(held(&current, "ODD_1_0_0_APP.fmu")[..], odd[..]);
        assert!(held(&current, "NIL_1_0_0_APP.fmu").is_empty());
        assert_eq!(
            image(&current, "BIG_1_0_0_APP.fmu").etag,
            fnv1a64(&big).to_be_bytes()
        );

        // A new image in pages of its own; the unchanged one keeps its pages, shared.
        let new: Vec<u8> = (0..16 * page).map(|i| (i % 239) as u8).collect();
        write_at(&dir, "NEW_1_0_0_APP.fmu", &new, at(10));
        let next = current.refresh(dir.path(), at(100), SETTLE).next.unwrap();
        assert!(Arc::ptr_eq(
            &held(&current, "BIG_1_0_0_APP.fmu"),
            &held(&next, "BIG_1_0_0_APP.fmu")
        ));
        assert!(held(&next, "NEW_1_0_0_APP.fmu").in_own_pages());
        assert_eq!(held(&next, "NEW_1_0_0_APP.fmu")[..], new[..]);

        // Replaced: the next snapshot has the new bytes, the old one keeps its own until
        // it is dropped, and the other images' pages are still shared.
        write_at(&dir, "BIG_1_0_0_APP.fmu", &new, at(20));
        let last = next.refresh(dir.path(), at(100), SETTLE).next.unwrap();
        assert_eq!(held(&last, "BIG_1_0_0_APP.fmu")[..], new[..]);
        assert_eq!(held(&next, "BIG_1_0_0_APP.fmu")[..], big[..]);
        drop(current);
        drop(next);
        assert_eq!(held(&last, "NEW_1_0_0_APP.fmu")[..], new[..]);

        // from_files holds its bytes the same way.
        let (built, _) = Catalog::from_files(vec![("B_1_0_0_APP.fmu".into(), big.clone())])
            .expect("catalog builds");
        assert!(built.images()[0].bytes.in_own_pages());
        assert_eq!(built.images()[0].bytes[..], big[..]);
    }

    #[test]
    fn load_stamps_each_image_with_its_length_and_mtime() {
        let dir = TempDir::new("catalog-test");
        let path = dir.write("A_1_0_0_APP.fmu", b"abc");
        let meta = fs::metadata(&path).unwrap();
        let report = Catalog::load(dir.path()).unwrap();
        let image = &report.catalog.images()[0];
        assert_eq!(image.stamp, Some(stamp(&meta, meta.modified().unwrap())));
        assert_eq!(image.stamp.map(|s| s.0), Some(3));
        assert_eq!(
            catalog(&[("A_1_0_0_APP.fmu", b"abc")]).images()[0].stamp,
            None
        );
    }

    #[test]
    fn load_collision_names_both_files() {
        let dir = TempDir::new("catalog-test");
        dir.write("M_1_0_0_APP.fmu", b"x");
        dir.write("M_1_0_0_3.fmu", b"y");
        match Catalog::load(dir.path()) {
            Err(Error::DuplicateVersion { first, second }) => {
                assert_eq!(
                    (first.as_str(), second.as_str()),
                    ("M_1_0_0_3.fmu", "M_1_0_0_APP.fmu")
                );
            }
            other => panic!("expected DuplicateVersion, got {other:?}"),
        }
    }

    // ---- Catalog::refresh ----

    const SETTLE: Duration = Duration::from_secs(2);

    /// A fixed wall-clock time, `secs` seconds after an arbitrary origin.
    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn set_mtime(path: &Path, mtime: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    /// Writes a file and sets its modification time.
    fn write_at(dir: &TempDir, name: &str, bytes: &[u8], mtime: SystemTime) -> PathBuf {
        let path = dir.write(name, bytes);
        set_mtime(&path, mtime);
        path
    }

    fn loaded(dir: &TempDir) -> Catalog {
        Catalog::load(dir.path()).unwrap().catalog
    }

    fn image<'a>(c: &'a Catalog, file_name: &str) -> &'a Image {
        c.by_file_name(file_name).expect("image in catalog")
    }

    fn id_of(file_name: &str) -> [u8; 8] {
        hex8(fnv1a32(file_name.as_bytes()))
    }

    /// A refresh that must find nothing to do.
    fn assert_unchanged(r: &Refresh) {
        assert!(r.next.is_none(), "{:?}", r.next);
        assert!(r.added.is_empty() && r.replaced.is_empty() && r.removed.is_empty());
        assert!(r.error.is_none(), "{:?}", r.error);
    }

    #[test]
    fn refresh_of_an_unchanged_directory_has_no_next_and_reads_nothing() {
        let dir = TempDir::new("catalog-refresh");
        write_at(&dir, "A_1_0_0_APP.fmu", b"aaa", at(0));
        write_at(&dir, "B_1_0_0_APP.fmu", b"", at(0));
        let current = loaded(&dir);
        let r = current.refresh(dir.path(), at(100), SETTLE);
        assert_unchanged(&r);
        assert!(r.pending.is_empty() && r.skipped.is_empty());
        // Even right after the write: an unchanged stamp needs no settling.
        assert_unchanged(&current.refresh(dir.path(), at(0), SETTLE));
    }

    #[test]
    fn refresh_shares_the_bytes_of_unchanged_images() {
        let dir = TempDir::new("catalog-refresh");
        write_at(&dir, "A_1_0_0_APP.fmu", b"aaa", at(0));
        let current = loaded(&dir);
        write_at(&dir, "B_1_0_0_APP.fmu", b"bb", at(0));
        let r = current.refresh(dir.path(), at(100), SETTLE);
        let next = r.next.expect("a new snapshot");
        let (old_a, new_a) = (
            image(&current, "A_1_0_0_APP.fmu"),
            image(&next, "A_1_0_0_APP.fmu"),
        );
        assert!(Arc::ptr_eq(&old_a.bytes, &new_a.bytes));
        assert_eq!((old_a.id, old_a.etag), (new_a.id, new_a.etag));
        assert_eq!(r.added, vec!["B_1_0_0_APP.fmu"]);
        assert!(r.replaced.is_empty() && r.removed.is_empty());
    }

    #[test]
    fn refresh_adds_a_new_file_written_long_enough_ago() {
        let dir = TempDir::new("catalog-refresh");
        let current = loaded(&dir);
        write_at(&dir, "N_1_0_0_APP.fmu", b"new", at(10));
        let r = current.refresh(dir.path(), at(12), SETTLE);
        assert_eq!(r.added, vec!["N_1_0_0_APP.fmu"]);
        assert!(r.pending.is_empty() && r.error.is_none());
        let next = r.next.expect("a new snapshot");
        let n = next.candidate(b"N", TYPE_APP, 0).expect("served");
        assert_eq!(&n.bytes[..], b"new");
        assert_eq!(n.etag, fnv1a64(b"new").to_be_bytes());
        assert_eq!(next.core_links().len(), 2);
        assert_eq!(next.total_bytes(), 3);
        // And the snapshot after it sees nothing new.
        assert_unchanged(&next.refresh(dir.path(), at(13), SETTLE));
    }

    #[test]
    fn refresh_holds_a_new_file_until_it_has_settled() {
        let dir = TempDir::new("catalog-refresh");
        let current = loaded(&dir);
        let file = "N_1_0_0_APP.fmu";
        let id = id_of(file);
        let now = at(10) + Duration::from_millis(500);
        write_at(&dir, file, b"new", at(10));

        let r = current.refresh(dir.path(), now, SETTLE);
        assert_eq!(
            r.pending,
            vec![Pending {
                file: file.into(),
                id_hex: id,
                wait_ms: 1500
            }]
        );
        assert!(r.added.is_empty() && r.error.is_none());
        // A snapshot that knows the file is coming, without serving it.
        let waiting = r.next.expect("the pending set changed");
        assert!(waiting.images().is_empty());
        assert!(waiting.by_id_hex(&id).is_none());
        assert_eq!(waiting.pending_retry(&id), Some(2));
        assert_eq!(current.pending_retry(&id), None);
        assert_eq!(waiting.pending_retry(b"00000000"), None);
        assert_eq!(waiting.pending_retry(b"short"), None);

        // Still pending: the same pending set is no change.
        let r = waiting.refresh(dir.path(), at(11), SETTLE);
        assert_unchanged(&r);
        assert_eq!(r.pending.len(), 1);
        assert_eq!(r.pending[0].wait_ms, 1000);

        let r = waiting.refresh(dir.path(), at(12), SETTLE);
        assert_eq!(r.added, vec![file]);
        assert!(r.pending.is_empty());
        let next = r.next.expect("admitted");
        assert_eq!(next.by_id_hex(&id).map(|i| &i.bytes[..]), Some(&b"new"[..]));
        assert_eq!(next.pending_retry(&id), None);
    }

    #[test]
    fn a_file_still_being_written_keeps_waiting() {
        let dir = TempDir::new("catalog-refresh");
        let current = loaded(&dir);
        let file = "N_1_0_0_APP.fmu";
        write_at(&dir, file, b"par", at(10));
        let r = current.refresh(dir.path(), at(11), SETTLE);
        let waiting = r.next.expect("pending");
        // Written again: a fresh mtime starts the wait again.
        write_at(&dir, file, b"partial", at(12));
        let r = waiting.refresh(dir.path(), at(13), SETTLE);
        assert_unchanged(&r);
        assert_eq!(r.pending[0].wait_ms, 1000);
        // An mtime ahead of `now` waits for the difference and the settle time.
        set_mtime(&dir.path().join(file), at(20));
        let r = waiting.refresh(dir.path(), at(13), SETTLE);
        assert_eq!(r.pending[0].wait_ms, 9000);
        let r = waiting.refresh(dir.path(), at(22), SETTLE);
        assert_eq!(r.added, vec![file]);
    }

    #[test]
    fn refresh_replaces_a_changed_file_and_the_old_snapshot_keeps_its_bytes() {
        let dir = TempDir::new("catalog-refresh");
        let file = "A_1_0_0_APP.fmu";
        write_at(&dir, file, b"one", at(0));
        let current = loaded(&dir);
        // Same length, new content and mtime.
        write_at(&dir, file, b"two", at(50));

        // Not settled yet: the previous version stays, and that is no change.
        let r = current.refresh(dir.path(), at(51), SETTLE);
        assert_unchanged(&r);
        assert!(r.pending.is_empty(), "a replacement is not pending");

        let r = current.refresh(dir.path(), at(52), SETTLE);
        assert_eq!(r.replaced, vec![file]);
        assert!(r.added.is_empty() && r.removed.is_empty());
        let next = r.next.expect("a new snapshot");
        let (old, new) = (image(&current, file), image(&next, file));
        assert_eq!(&old.bytes[..], b"one");
        assert_eq!(&new.bytes[..], b"two");
        assert_ne!(old.etag, new.etag);
        assert_eq!(old.id, new.id, "the id follows the name");
        // Same name and length: the discovery body, and so its ETag, is the same.
        assert_eq!(current.core_etag(), next.core_etag());
        assert_unchanged(&next.refresh(dir.path(), at(53), SETTLE));
    }

    #[test]
    fn a_touched_file_is_read_again_and_keeps_its_etag() {
        let dir = TempDir::new("catalog-refresh");
        let file = "A_1_0_0_APP.fmu";
        let path = write_at(&dir, file, b"one", at(0));
        let current = loaded(&dir);
        set_mtime(&path, at(50));
        let r = current.refresh(dir.path(), at(60), SETTLE);
        assert_eq!(r.replaced, vec![file]);
        let next = r.next.expect("the stamp changed");
        assert_eq!(image(&next, file).etag, image(&current, file).etag);
        assert_eq!(next.core_etag(), current.core_etag());
        assert_unchanged(&next.refresh(dir.path(), at(61), SETTLE));
    }

    #[test]
    fn refresh_drops_a_removed_file() {
        let dir = TempDir::new("catalog-refresh");
        write_at(&dir, "A_1_0_0_APP.fmu", b"a", at(0));
        let gone = write_at(&dir, "B_1_0_0_APP.fmu", b"b", at(0));
        let current = loaded(&dir);
        fs::remove_file(gone).unwrap();
        let r = current.refresh(dir.path(), at(1), SETTLE);
        assert_eq!(r.removed, vec!["B_1_0_0_APP.fmu"]);
        let next = r.next.expect("a new snapshot");
        assert!(next.newest(b"B", TYPE_APP).is_none());
        assert!(next.newest(b"A", TYPE_APP).is_some());
        assert!(
            current.newest(b"B", TYPE_APP).is_some(),
            "the old snapshot is intact"
        );
    }

    #[test]
    fn refresh_with_a_collision_keeps_the_current_snapshot_and_says_why() {
        let dir = TempDir::new("catalog-refresh");
        write_at(&dir, "M_1_0_0_APP.fmu", b"x", at(0));
        let current = loaded(&dir);
        write_at(&dir, "M_1_0_0_3.fmu", b"y", at(0));
        write_at(&dir, "Other_1_0_0_APP.fmu", b"z", at(0));
        let r = current.refresh(dir.path(), at(100), SETTLE);
        assert!(r.next.is_none());
        assert!(r.added.is_empty());
        match r.error {
            Some(Error::DuplicateVersion { first, second }) => assert_eq!(
                (first.as_str(), second.as_str()),
                ("M_1_0_0_3.fmu", "M_1_0_0_APP.fmu")
            ),
            other => panic!("expected DuplicateVersion, got {other:?}"),
        }
        // What else the directory holds is still reported, sorted.
        write_at(&dir, "Z_x_0_0_APP.fmu", b"bad", at(0));
        write_at(&dir, "B_x_0_0_APP.fmu", b"bad", at(0));
        write_at(&dir, "P_1_0_0_APP.fmu", b"soon", at(100));
        let r = current.refresh(dir.path(), at(100), SETTLE);
        assert!(r.next.is_none() && r.error.is_some());
        let files: Vec<&str> = r.skipped.iter().map(|s| s.file.as_str()).collect();
        assert_eq!(files, ["B_x_0_0_APP.fmu", "Z_x_0_0_APP.fmu"]);
        assert_eq!(r.pending.len(), 1);
        fs::remove_file(dir.path().join("Z_x_0_0_APP.fmu")).unwrap();
        fs::remove_file(dir.path().join("B_x_0_0_APP.fmu")).unwrap();
        fs::remove_file(dir.path().join("P_1_0_0_APP.fmu")).unwrap();
        // Once the operator removes one, the rest goes in.
        fs::remove_file(dir.path().join("M_1_0_0_3.fmu")).unwrap();
        let r = current.refresh(dir.path(), at(101), SETTLE);
        assert_eq!(r.added, vec!["Other_1_0_0_APP.fmu"]);
    }

    #[test]
    fn refresh_of_a_missing_directory_keeps_the_current_snapshot() {
        let dir = TempDir::new("catalog-refresh");
        write_at(&dir, "A_1_0_0_APP.fmu", b"a", at(0));
        let current = loaded(&dir);
        let r = current.refresh(&dir.path().join("nope"), at(1), SETTLE);
        assert!(r.next.is_none());
        assert!(
            matches!(r.error, Some(Error::ReadDir { .. })),
            "{:?}",
            r.error
        );
    }

    #[test]
    fn temporary_hidden_and_editor_files_are_ignored_by_load_and_refresh() {
        let dir = TempDir::new("catalog-refresh");
        let droppings = [
            ".A_1_0_0_APP.fmu",
            ".#A_1_0_0_APP.fmu",
            "#A_1_0_0_APP.fmu#",
            "A_1_0_0_APP.fmu.tmp",
            "A_1_0_0_APP.fmu~",
            "A_1_0_0_APP.tmp",
        ];
        for name in droppings {
            write_at(&dir, name, b"x", at(0));
        }
        let report = Catalog::load(dir.path()).unwrap();
        assert!(report.catalog.images().is_empty() && report.skipped.is_empty());
        let mut expected = droppings.to_vec();
        expected.sort_unstable();
        assert_eq!(report.ignored, expected);
        let empty = loaded(&TempDir::new("catalog-refresh"));
        let r = empty.refresh(dir.path(), at(100), SETTLE);
        assert_unchanged(&r);
        assert!(r.pending.is_empty() && r.skipped.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn refresh_judges_links_and_odd_entries_as_load_does() {
        use std::os::unix::fs::symlink;

        let dir = TempDir::new("catalog-refresh");
        let elsewhere = TempDir::new("catalog-refresh");
        let real = write_at(&elsewhere, "Real_1_0_0_APP.fmu", b"link", at(0));
        symlink(&real, dir.path().join("Linked_1_0_0_APP.fmu")).unwrap();
        symlink(elsewhere.path(), dir.path().join("x_1_1_1_APP.fmu")).unwrap();
        symlink(
            dir.path().join("missing"),
            dir.path().join("Dangling_1_0_0_APP.fmu"),
        )
        .unwrap();
        fs::create_dir(dir.path().join("Sub_1_0_0_APP.fmu")).unwrap();
        write_at(&dir, "Bad_x_0_0_APP.fmu", b"b", at(0));
        let report = Catalog::load(dir.path()).unwrap();
        assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);

        let r = report.catalog.refresh(dir.path(), at(100), SETTLE);
        assert_unchanged(&r);
        assert_eq!(r.skipped, report.skipped);

        // A new target behind the same link is a changed file.
        fs::remove_file(&real).unwrap();
        write_at(&elsewhere, "Real_1_0_0_APP.fmu", b"linked again", at(50));
        let r = report.catalog.refresh(dir.path(), at(100), SETTLE);
        assert_eq!(r.replaced, vec!["Linked_1_0_0_APP.fmu"]);
    }

    #[test]
    fn a_new_bad_file_is_reported_once() {
        let dir = TempDir::new("catalog-refresh");
        write_at(&dir, "A_1_0_0_APP.fmu", b"a", at(0));
        let current = loaded(&dir);
        write_at(&dir, "A_x_0_0_APP.fmu", b"bad", at(0));
        let r = current.refresh(dir.path(), at(1), SETTLE);
        assert_eq!(
            r.skipped,
            vec![Skipped {
                file: "A_x_0_0_APP.fmu".into(),
                reason: SkipReason::BadName(NameError::Major)
            }]
        );
        // A new snapshot (serving the same images) so that the caller reports it, once.
        let next = r.next.expect("the skipped list changed");
        assert!(Arc::ptr_eq(
            &image(&current, "A_1_0_0_APP.fmu").bytes,
            &image(&next, "A_1_0_0_APP.fmu").bytes
        ));
        assert!(r.added.is_empty() && r.replaced.is_empty() && r.removed.is_empty());
        let r = next.refresh(dir.path(), at(2), SETTLE);
        assert_unchanged(&r);
        assert_eq!(r.skipped.len(), 1);
    }

    #[test]
    fn a_file_whose_length_changes_between_list_and_read_is_not_admitted() {
        let dir = TempDir::new("catalog-refresh");
        write_at(&dir, "A_1_0_0_APP.fmu", b"old", at(0));
        let current = loaded(&dir);
        let new = write_at(&dir, "N_1_0_0_APP.fmu", b"first", at(10));
        let changed = write_at(&dir, "A_1_0_0_APP.fmu", b"newer", at(10));
        // Both grow after the listing; the mtime is put back, so only the length tells.
        let mut grow = || {
            for path in [&new, &changed] {
                fs::write(path, b"first part and more").unwrap();
                set_mtime(path, at(10));
            }
        };
        let r = current.refresh_with(dir.path(), at(100), SETTLE, &mut grow);
        assert!(r.added.is_empty() && r.replaced.is_empty(), "{r:?}");
        assert_eq!(
            r.pending,
            vec![Pending {
                file: "N_1_0_0_APP.fmu".into(),
                id_hex: id_of("N_1_0_0_APP.fmu"),
                wait_ms: 0
            }]
        );
        let waiting = r.next.expect("the pending set changed");
        assert_eq!(&image(&waiting, "A_1_0_0_APP.fmu").bytes[..], b"old");
        assert_eq!(waiting.pending_retry(&id_of("N_1_0_0_APP.fmu")), Some(1));
        // The next look sees the new length and reads both.
        let r = waiting.refresh(dir.path(), at(101), SETTLE);
        assert_eq!(r.added, vec!["N_1_0_0_APP.fmu"]);
        assert_eq!(r.replaced, vec!["A_1_0_0_APP.fmu"]);
        let next = r.next.unwrap();
        assert_eq!(
            &image(&next, "N_1_0_0_APP.fmu").bytes[..],
            b"first part and more"
        );
    }

    #[test]
    fn a_file_removed_between_list_and_read_is_skipped_as_vanished() {
        let dir = TempDir::new("catalog-refresh");
        let current = loaded(&dir);
        let path = write_at(&dir, "N_1_0_0_APP.fmu", b"n", at(0));
        let mut remove = || fs::remove_file(&path).unwrap();
        let r = current.refresh_with(dir.path(), at(100), SETTLE, &mut remove);
        assert!(r.added.is_empty() && r.pending.is_empty());
        assert_eq!(r.skipped[0].reason, SkipReason::Vanished);
    }

    #[test]
    fn settle_wait_counts_from_the_mtime() {
        assert_eq!(settle_wait(at(0), at(2), SETTLE), None);
        assert_eq!(settle_wait(at(0), at(5), SETTLE), None);
        assert_eq!(
            settle_wait(at(0), at(1), SETTLE),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            settle_wait(at(10), at(1), SETTLE),
            Some(Duration::from_secs(11))
        );
        assert_eq!(settle_wait(at(0), at(0), Duration::ZERO), None);
    }

    /// Times an unchanged refresh of 10,000 small images:
    /// `cargo test --release --lib -- --ignored --nocapture refresh_cost`.
    #[test]
    #[ignore = "a measurement: creates 10,000 files"]
    fn refresh_cost_of_10000_unchanged_images() {
        const COUNT: usize = 10_000;
        let dir = TempDir::new("catalog-refresh-cost");
        for i in 0..COUNT {
            write_at(
                &dir,
                &format!("P{i:05}_1_0_0_APP.fmu"),
                &crate::testkit::image_bytes(64, i as u32),
                at(0),
            );
        }
        let current = loaded(&dir);
        assert_eq!(current.images().len(), COUNT);
        let mut times = Vec::new();
        for _ in 0..20 {
            let start = std::time::Instant::now();
            let r = current.refresh(dir.path(), at(100), SETTLE);
            times.push(start.elapsed());
            assert_unchanged(&r);
        }
        times.sort_unstable();
        // For comparison: one listing and one stat by path per file, nothing else.
        let mut floor = Vec::new();
        for _ in 0..20 {
            let start = std::time::Instant::now();
            for entry in fs::read_dir(dir.path()).unwrap() {
                fs::metadata(entry.unwrap().path()).unwrap();
            }
            floor.push(start.elapsed());
        }
        floor.sort_unstable();
        let start = std::time::Instant::now();
        let r = loaded(&dir);
        let load = start.elapsed();
        assert_eq!(r.images().len(), COUNT);
        println!(
            "unchanged refresh of {COUNT} images: min {:?}, median {:?}, max {:?}; \
             read_dir + stat by path alone: median {:?}; Catalog::load: {load:?}",
            times[0],
            times[times.len() / 2],
            times[times.len() - 1],
            floor[floor.len() / 2],
        );
    }

    #[test]
    fn skip_reason_texts_are_operator_friendly() {
        assert_eq!(
            Skipped {
                file: "P_x_0_0_APP.fmu".into(),
                reason: SkipReason::BadName(NameError::Major)
            }
            .to_string(),
            "P_x_0_0_APP.fmu: bad file name: MAJOR must be a decimal 0..=255"
        );
        assert!(SkipReason::TooLarge(5_000_000_000)
            .to_string()
            .contains("5000000000"));
    }
}
