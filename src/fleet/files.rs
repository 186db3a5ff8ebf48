//! The fleet's files beside the images, as one immutable snapshot: the
//! rollout policies (`<image>.rollout`) and the prebuilt patches
//! (`<image>.from-<M.m.b>.<format>`), with O(1) indexes. The server lists
//! and reads the directory and swaps a new snapshot in as it does catalogs;
//! this module only names, parses and indexes (no I/O).

use super::policy::{Policy, PolicyError, POLICY_SUFFIX};
use crate::catalog::{parse_image_name, AttrValue, CoreLink, Image, ImageBytes, Stamp};
use crate::firmware::VersionText;
use crate::hash::{fnv1a32, fnv1a64, FnvBuild};
use std::collections::HashMap;
use std::sync::Arc;

/// What separates an image's file name from a patch's base version:
/// `OTA-X_1_0_2_APP.fmu.from-1.0.1.detools` is a detools patch that makes
/// `OTA-X_1_0_2_APP.fmu` from 1.0.1.
pub const PATCH_MARK: &str = ".from-";
/// Longest patch format name (`detools`, `bsdiff`, `vcdiff`...).
pub(super) const MAX_FORMAT_LEN: usize = 16;
/// Resource type (`rt`) of a patch in `/.well-known/core`.
pub(super) const RT_PATCH: &str = "fw.patch";

/// One `.rollout` file.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// Its file name, `<image>.rollout`.
    pub file_name: String,
    /// The image it governs (which may not exist yet).
    pub image_file: String,
    /// The id that image has or will have.
    pub image_id: u32,
    /// The policy in force: the file's, or the last good one when the file
    /// was refused.
    pub policy: Policy,
    /// Why the file as it is now was refused, if it was.
    pub error: Option<PolicyError>,
    /// Refused with no good version before it: the image is paused.
    pub invalid: bool,
    /// The file's stamp when read.
    pub stamp: Option<Stamp>,
}

impl PolicyFile {
    /// The policy file `file_name` with contents `text`; `previous` is the
    /// one the served snapshot holds for the same name, whose policy stays
    /// in force when `text` is refused. `None` when `file_name` is not a
    /// policy's name.
    pub fn new(
        file_name: &str,
        text: &[u8],
        stamp: Option<Stamp>,
        previous: Option<&PolicyFile>,
    ) -> Option<PolicyFile> {
        let image_file = file_name.strip_suffix(POLICY_SUFFIX)?;
        parse_image_name(image_file).ok()?;
        let (policy, error, invalid) = match (Policy::parse(text), previous) {
            (Ok(policy), _) => (policy, None, false),
            (Err(e), Some(previous)) => (previous.policy.clone(), Some(e), previous.invalid),
            (Err(e), None) => (
                Policy {
                    pause: true,
                    generation: fnv1a64(text),
                    ..Policy::default()
                },
                Some(e),
                true,
            ),
        };
        Some(PolicyFile {
            file_name: file_name.to_owned(),
            image_file: image_file.to_owned(),
            image_id: fnv1a32(image_file.as_bytes()),
            policy,
            error,
            invalid,
            stamp,
        })
    }
}

/// One prebuilt patch, served by id as images are.
#[derive(Debug, Clone)]
pub struct Patch {
    /// The image the patch builds.
    pub image_file: String,
    /// That image's id.
    pub image_id: u32,
    /// The version the patch applies to.
    pub base: u32,
    /// Its format, as a lookup's `delta=` names it.
    pub format: String,
    /// The patch as a body: its own file name, id and ETag, and the PID,
    /// TYPE and version of the image it builds.
    pub body: Image,
}

impl Patch {
    /// The patch `file_name` with contents `bytes`; `None` when the name is
    /// not `<image>.from-<M.m.b>.<format>` with a valid image name, a
    /// version and a format of 1 to 16 lowercase letters and digits.
    pub fn new(file_name: &str, bytes: Arc<ImageBytes>, stamp: Option<Stamp>) -> Option<Patch> {
        let (image_file, rest) = file_name.split_once(PATCH_MARK)?;
        let (base, format) = rest.rsplit_once('.')?;
        let format_ok = (1..=MAX_FORMAT_LEN).contains(&format.len())
            && format
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let name = parse_image_name(image_file).ok()?;
        let base = crate::firmware::parse_version(base.as_bytes()).filter(|_| format_ok)?;
        let id = fnv1a32(file_name.as_bytes());
        let body = Image {
            file_name: file_name.to_owned(),
            version: name.version(),
            name,
            id,
            id_hex: hex8(id),
            etag: fnv1a64(&bytes).to_be_bytes(),
            bytes,
            stamp,
            held: false,
        };
        Some(Patch {
            image_file: image_file.to_owned(),
            image_id: fnv1a32(image_file.as_bytes()),
            base,
            format: format.to_owned(),
            body,
        })
    }

    fn link(&self) -> CoreLink {
        let size = u32::try_from(self.body.bytes.len()).unwrap_or(u32::MAX);
        CoreLink::new(
            &format!("/updates/{}", self.body.id_str()),
            vec![
                ("rt", AttrValue::Quoted(RT_PATCH.to_owned())),
                ("ct", AttrValue::Number(42)),
                ("sz", AttrValue::Number(size)),
                ("title", AttrValue::Quoted(self.body.file_name.clone())),
                (
                    "base",
                    AttrValue::Quoted(VersionText(self.base).to_string()),
                ),
            ],
        )
    }
}

fn hex8(value: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = b"0123456789abcdef"[(value >> (28 - 4 * i)) as usize & 0xf];
    }
    out
}

/// The snapshot: policies and patches, sorted by file name, indexed.
#[derive(Debug, Default)]
pub struct FleetFiles {
    policies: Vec<PolicyFile>,
    by_image: HashMap<u32, usize, FnvBuild>,
    patches: Vec<Patch>,
    /// Patch by the text of its id, as the catalog indexes images.
    by_id_text: HashMap<u64, usize, FnvBuild>,
    /// Patch by (image id, base version).
    by_base: HashMap<(u32, u32), Vec<usize>, FnvBuild>,
    links: Vec<CoreLink>,
}

impl FleetFiles {
    /// The snapshot of `policies` and `patches` (in any order). Of two
    /// patches with the same id the first by name is kept.
    pub fn new(mut policies: Vec<PolicyFile>, mut patches: Vec<Patch>) -> FleetFiles {
        policies.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        patches.sort_by(|a, b| a.body.file_name.cmp(&b.body.file_name));
        patches.dedup_by_key(|p| p.body.id);
        let by_image = policies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.image_id, i))
            .collect();
        let by_id_text = patches
            .iter()
            .enumerate()
            .map(|(i, p)| (u64::from_le_bytes(p.body.id_hex), i))
            .collect();
        let mut by_base: HashMap<(u32, u32), Vec<usize>, FnvBuild> = HashMap::default();
        for (i, p) in patches.iter().enumerate() {
            by_base.entry((p.image_id, p.base)).or_default().push(i);
        }
        let links = patches.iter().map(Patch::link).collect();
        FleetFiles {
            policies,
            by_image,
            patches,
            by_id_text,
            by_base,
            links,
        }
    }

    /// The policy file of the image with id `image`, if there is one.
    pub fn policy(&self, image: u32) -> Option<&PolicyFile> {
        self.policies.get(*self.by_image.get(&image)?)
    }

    /// Every policy file, sorted by name.
    pub fn policies(&self) -> &[PolicyFile] {
        &self.policies
    }

    /// Every patch, sorted by name.
    pub fn patches(&self) -> &[Patch] {
        &self.patches
    }

    /// The patch in `format` that builds the image with id `image` from
    /// version `base`. O(1).
    pub fn patch_for(&self, image: u32, base: u32, format: &[u8]) -> Option<&Patch> {
        self.by_base
            .get(&(image, base))?
            .iter()
            .filter_map(|&i| self.patches.get(i))
            .find(|p| p.format.as_bytes() == format)
    }

    /// The patch whose id is `id_hex`, served at `/updates/{id}`.
    pub fn patch_by_id_hex(&self, id_hex: &[u8]) -> Option<&Image> {
        let text = <[u8; 8]>::try_from(id_hex).ok()?;
        self.patches
            .get(*self.by_id_text.get(&u64::from_le_bytes(text))?)
            .map(|p| &p.body)
    }

    /// The image a patch with id `patch` builds, if `patch` is a patch's.
    pub fn patch_target(&self, patch: u32) -> Option<u32> {
        self.patches
            .get(*self.by_id_text.get(&u64::from_le_bytes(hex8(patch)))?)
            .map(|p| p.image_id)
    }

    /// The patches' `/.well-known/core` links.
    pub(crate) fn core_links(&self) -> &[CoreLink] {
        &self.links
    }

    /// Whether `other` holds the same files as they were read (same names
    /// and stamps, same policies).
    pub fn same_as(&self, other: &FleetFiles) -> bool {
        self.policies.len() == other.policies.len()
            && self.patches.len() == other.patches.len()
            && self
                .policies
                .iter()
                .zip(&other.policies)
                .all(|(a, b)| a.file_name == b.file_name && a.stamp == b.stamp)
            && self
                .patches
                .iter()
                .zip(&other.patches)
                .all(|(a, b)| a.body.file_name == b.body.file_name && a.body.stamp == b.body.stamp)
    }
}
