//! The fleet's files beside the images (`<image>.rollout` policies and
//! `<image>.from-<M.m.b>.<format>` patches) as a watched source: listed,
//! stamped, settled and read like images, reused while their stamp is the
//! same, swapped in whole ([`FleetFiles`]).

use super::sources::{dir_mtime, Source};
use crate::catalog::{ImageBytes, MAX_IMAGE_LEN};
use crate::fleet::policy::POLICY_SUFFIX;
use crate::fleet::{FleetFiles, Patch, PolicyFile, PATCH_MARK};
use crate::service::{Outcome, Service};
use crate::snapshot::{stamp_of, Admission, Refresh, Stamp};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Largest policy file read: a policy is a few lines.
const MAX_POLICY_LEN: u64 = 64 * 1024;

/// The policies and patches of the catalog's directory.
#[derive(Debug)]
pub(in crate::server) struct FleetSource {
    /// The catalog's directory.
    pub(in crate::server) dir: PathBuf,
    /// Its modification time at the last rescan.
    pub(in crate::server) dir_mtime: Option<SystemTime>,
}

/// A refresh of the fleet's files: pending and skipped entries as text.
pub(in crate::server) type FleetRefresh = Refresh<FleetFiles, String, String, String>;

impl Source for FleetSource {
    type Snapshot = FleetFiles;
    type Pending = String;
    type Skipped = String;
    type Error = String;

    const NAME: &'static str = "rollout policies and patches";
    const WHAT: &'static str = "policies and patches";
    const KIND: &'static str = "";
    const UNITS: &'static str = "files";

    fn current<'s>(&self, service: &'s Service) -> Option<&'s FleetFiles> {
        Some(service.fleet_files())
    }

    fn shown(&self, _: &FleetFiles) -> String {
        self.dir.display().to_string()
    }

    fn refresh(
        &mut self,
        current: &FleetFiles,
        now: SystemTime,
        admission: &mut Admission<'_>,
    ) -> FleetRefresh {
        self.dir_mtime = dir_mtime(&self.dir);
        read_fleet_files(&self.dir, current, now, admission)
    }

    fn dirs(&self) -> Vec<&Path> {
        vec![self.dir.as_path()]
    }

    fn swap(service: &mut Service, next: FleetFiles) {
        service.replace_fleet_files(next);
    }

    fn count(snapshot: &FleetFiles) -> usize {
        snapshot.policies().len() + snapshot.patches().len()
    }

    fn fmt_pending(name: &String, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{name}: not read until it has settled")
    }

    fn may_have_changed(&self) -> bool {
        self.dir_mtime.is_none() || self.dir_mtime != dir_mtime(&self.dir)
    }

    fn file_behind<'o>(&'o self, _: &Outcome<'o>) -> Option<(&'o Path, &'o str, Stamp)> {
        None
    }
}

/// The next snapshot of the fleet's files in `dir` after `current`, or
/// `next: None` when nothing changed. A file a writer closed is read at
/// once, one still written waits, one nothing is known of waits for the
/// settle time (`admission`); these files are small and read whole. A policy file that is refused keeps
/// the last good policy in force (or, new, pauses its image) and is
/// reported in `skipped`.
pub(in crate::server) fn read_fleet_files(
    dir: &Path,
    current: &FleetFiles,
    now: SystemTime,
    admission: &Admission<'_>,
) -> FleetRefresh {
    let mut r = FleetRefresh::default();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            r.error = Some(format!("cannot list {}: {e}", dir.display()));
            return r;
        }
    };
    let mut policies = Vec::new();
    let mut patches = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_policy = name.ends_with(POLICY_SUFFIX);
        let is_patch = !is_policy && name.contains(PATCH_MARK);
        if name.starts_with('.') || !(is_policy || is_patch) {
            continue;
        }
        let path = dir.join(&name);
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let Ok(stamp) = stamp_of(&meta) else { continue };
        if !meta.is_file() {
            continue;
        }
        let old_policy = current.policies().iter().find(|p| p.file_name == name);
        let old_patch = current.patches().iter().find(|p| p.body.file_name == name);
        let keep_old = |policies: &mut Vec<PolicyFile>, patches: &mut Vec<Patch>| {
            policies.extend(old_policy.cloned());
            patches.extend(old_patch.cloned());
        };
        let unchanged = old_policy.is_some_and(|p| p.stamp == Some(stamp))
            || old_patch.is_some_and(|p| p.body.stamp == Some(stamp));
        if unchanged {
            keep_old(&mut policies, &mut patches);
            continue;
        }
        if admission.wait(&path, stamp, now).is_some() {
            r.pending.push(name);
            keep_old(&mut policies, &mut patches);
            continue;
        }
        let limit = if is_policy {
            MAX_POLICY_LEN
        } else {
            MAX_IMAGE_LEN
        };
        if meta.len() > limit {
            r.skipped.push(format!("{name}: larger than {limit} bytes"));
            keep_old(&mut policies, &mut patches);
            continue;
        }
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                r.skipped.push(format!("{name}: cannot read it: {e}"));
                keep_old(&mut policies, &mut patches);
                continue;
            }
        };
        if is_policy {
            match PolicyFile::new(&name, &bytes, Some(stamp), old_policy) {
                Some(policy) => {
                    if let Some(e) = &policy.error {
                        let then = if policy.invalid {
                            "its image is offered to no device until it is fixed"
                        } else {
                            "the last good policy stays in force"
                        };
                        r.skipped.push(format!("policy {name}: {e}; {then}"));
                    }
                    policies.push(policy);
                }
                None => r.skipped.push(format!(
                    "{name}: not named after an image (PID_M_m_b_TYPE.fmu.rollout)"
                )),
            }
        } else {
            let bytes = match ImageBytes::from_vec(bytes) {
                Ok(bytes) => Arc::new(bytes),
                Err(e) => {
                    r.skipped.push(format!("{name}: {e}"));
                    continue;
                }
            };
            match Patch::new(&name, bytes, Some(stamp)) {
                Some(patch) => patches.push(patch),
                None => r.skipped.push(format!(
                    "{name}: not a patch name (IMAGE.fmu.from-M.m.b.FORMAT)"
                )),
            }
        }
    }
    let next = FleetFiles::new(policies, patches);
    if next.same_as(current) {
        return r;
    }
    let names = |files: &FleetFiles| -> Vec<(String, Option<Stamp>)> {
        let mut names: Vec<_> = files
            .policies()
            .iter()
            .map(|p| (p.file_name.clone(), p.stamp))
            .chain(
                files
                    .patches()
                    .iter()
                    .map(|p| (p.body.file_name.clone(), p.body.stamp)),
            )
            .collect();
        names.sort();
        names
    };
    let (old, new) = (names(current), names(&next));
    for (name, stamp) in &new {
        match old.iter().find(|(n, _)| n == name) {
            None => r.added.push(name.clone()),
            Some((_, s)) if s != stamp => r.replaced.push(name.clone()),
            Some(_) => {}
        }
    }
    for (name, _) in &old {
        if !new.iter().any(|(n, _)| n == name) {
            r.removed.push(name.clone());
        }
    }
    r.next = Some(next);
    r
}
