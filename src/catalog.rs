//! The firmware catalog: the images of the `updates/` directory, read once.
//!
//! # Contract
//!
//! - [`Catalog::load`] scans the directory once, at start-up, before the socket is bound. It
//!   reads every image completely into memory, so the server never reads the disk while it
//!   serves, and a file changed or deleted afterwards changes nothing until the next start.
//! - A built [`Catalog`] is never mutated: it has no `&mut self` method. A reload (a later
//!   feature) builds a whole new catalog and swaps it in one assignment.
//! - Lookups ([`Catalog::by_id_hex`], [`Catalog::newest`], [`Catalog::candidate`]) are O(1)
//!   hash lookups whatever the number of images, and allocate nothing, because they run once
//!   per request.
//! - The `/.well-known/core` links (RFC 6690) are prebuilt, one string per link
//!   ([`Catalog::core_links`]), so that query filters (RFC 6690 §4.1) select links and the
//!   blocks of the body are copied link by link without building the body per request.
//! - The result does not depend on the order in which the operating system lists the
//!   directory: files are sorted by name before anything is decided, so [`Catalog::images`],
//!   the discovery body and the files named by a collision error are the same on every run.
//!
//! This module neither logs nor touches sockets or CoAP messages: what happened during a scan
//! (files skipped or ignored) is returned in a [`LoadReport`], and `main` logs it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, DirEntry, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

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
    pub bytes: Arc<Vec<u8>>,
    /// The length and modification time the file had when it was opened to be read (the
    /// target's, for a symbolic link); `None` for [`Catalog::from_files`], or where the file
    /// system gives no modification time. A rescan reuses the image while the file still
    /// shows the same stamp.
    pub stamp: Option<Stamp>,
}

/// The length in bytes and the modification time of a file, from one `stat`.
pub type Stamp = (u64, SystemTime);

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

    fn new(file_name: String, name: ImageName, bytes: Vec<u8>, stamp: Option<Stamp>) -> Image {
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
    fn new(target: &str, attrs: Vec<(&'static str, AttrValue)>) -> CoreLink {
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

enum AttrValue {
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
}

/// A candidate that passed every check except the collision rules.
struct Found {
    file_name: String,
    name: ImageName,
    bytes: Vec<u8>,
    stamp: Option<Stamp>,
}

impl Catalog {
    /// Scan `dir`. Fails only when the directory cannot be listed or on a collision.
    ///
    /// Candidates are the entries whose name ends in `.fmu` and does not start with `.`; all
    /// other entries, and real sub-directories, go to [`LoadReport::ignored`]. Symbolic links
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
            catalog: Catalog::build(found)?,
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
                Ok(name) => {
                    found.push(Found {
                        file_name,
                        name,
                        bytes,
                        stamp: None,
                    });
                    continue;
                }
            };
            skipped.push(Skipped {
                file: file_name,
                reason,
            });
        }
        skipped.sort_by(|a, b| a.file.cmp(&b.file));
        Ok((Catalog::build(found)?, skipped))
    }

    /// Sorts, checks collisions, builds the indexes and the discovery body.
    fn build(mut found: Vec<Found>) -> Result<Catalog, Error> {
        found.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        let mut images: Vec<Image> = Vec::with_capacity(found.len());
        let mut by_id = HashMap::with_capacity_and_hasher(found.len(), FnvBuild::default());
        let mut by_version: HashMap<(&[u8], u8, u32), usize> = HashMap::new();
        for f in found {
            let image = Image::new(f.file_name, f.name, f.bytes, f.stamp);
            if let Some(&first) = by_id.get(&image.id) {
                return Err(Error::DuplicateId {
                    first: file_name_at(&images, first),
                    second: image.file_name,
                    id: image.id,
                });
            }
            by_id.insert(image.id, images.len());
            images.push(image);
        }
        for (index, image) in images.iter().enumerate() {
            let key = (image.name.pid.as_slice(), image.name.fw_type, image.version);
            if let Some(&first) = by_version.get(&key) {
                return Err(Error::DuplicateVersion {
                    first: file_name_at(&images, first),
                    second: image.file_name.clone(),
                });
            }
            by_version.insert(key, index);
        }

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
        })
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

fn file_name_at(images: &[Image], index: usize) -> String {
    images
        .get(index)
        .map(|image| image.file_name.clone())
        .unwrap_or_default()
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

fn scan_entry(entry: &DirEntry) -> Scan {
    let os_name = entry.file_name();
    // The raw bytes on Unix; ASCII prefixes and suffixes survive the encoding elsewhere too.
    let raw = os_name.as_encoded_bytes();
    if raw.starts_with(b".") || !raw.ends_with(IMAGE_SUFFIX.as_bytes()) {
        return Scan::Ignored;
    }
    // file_type() does not follow symbolic links: a real directory is ignored, a link to one
    // is skipped below.
    match entry.file_type() {
        Ok(file_type) if file_type.is_dir() => return Scan::Ignored,
        Ok(_) => {}
        Err(e) => return Scan::Skipped(io_reason(&e)),
    }
    let Some(file_name) = os_name.to_str() else {
        return Scan::Skipped(SkipReason::NotUtf8);
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

fn io_reason(e: &io::Error) -> SkipReason {
    match e.kind() {
        io::ErrorKind::NotFound => SkipReason::Vanished,
        _ => SkipReason::Unreadable(e.to_string()),
    }
}

/// Reads one regular file completely, or says why not. Never returns a partial image.
///
/// The stamp is the one the open file had before it was read: if the file changes while it
/// is read without changing length, the stamp is already out of date, so a rescan reads the
/// file again rather than keeping what may be a mix of two versions.
fn read_image(path: &Path) -> Result<(Vec<u8>, Option<Stamp>), SkipReason> {
    // Follows symbolic links, and is checked before opening: opening a FIFO would block.
    let meta = fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound && fs::symlink_metadata(path).is_ok() {
            SkipReason::NotRegularFile // the link exists, its target does not
        } else {
            io_reason(&e)
        }
    })?;
    check_regular(&meta)?;
    let file = File::open(path).map_err(|e| io_reason(&e))?;
    // Again on the open file: the path may have been replaced since the first check.
    let meta = file.metadata().map_err(|e| io_reason(&e))?;
    check_regular(&meta)?;
    let expected = meta.len();
    let stamp = meta.modified().ok().map(|mtime| (expected, mtime));
    let capacity = usize::try_from(expected).map_err(|_| SkipReason::TooLarge(expected))?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(capacity)
        .map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    // One byte more than expected, so that a growing file is noticed without reading it all.
    file.take(expected + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_reason(&e))?;
    if bytes.len() as u64 != expected {
        return Err(SkipReason::ChangedWhileReading);
    }
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

    #[test]
    fn load_stamps_each_image_with_its_length_and_mtime() {
        let dir = TempDir::new("catalog-test");
        let path = dir.write("A_1_0_0_APP.fmu", b"abc");
        let meta = fs::metadata(&path).unwrap();
        let report = Catalog::load(dir.path()).unwrap();
        let image = &report.catalog.images()[0];
        assert_eq!(image.stamp, Some((3, meta.modified().unwrap())));
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
