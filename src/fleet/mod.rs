//! The fleet: who is offered an update, who got it, who failed.
//!
//! Sans-IO like `service`, which asks it once per lookup, per report and
//! per first or last block of a body (never per block in between): the
//! rollout policies of the images (`<image>.rollout` files, parsed in
//! [`policy`], held with the patches in an immutable [`FleetFiles`]
//! snapshot the server swaps in as it swaps catalogs), the bounded table of
//! devices and what each last did, the outcome counts that pause a rollout
//! by themselves, and the status view. Time is injected (`now_ms` on the
//! service's clock, and the Unix time of its origin); files, sockets and
//! the logger belong to the server, which drains the [`Event`]s this module
//! queues: one log line per state change, one journal line per durable one.
//!
//! # Bounds
//!
//! - devices: at most `Limits::max_devices` names (default 10,000), about
//!   the least recently seen evicted; an entry is fixed in size (the name
//!   inline), and with the table's room for churn and its eviction queue
//!   10,000 devices measured 5.5 MiB of the server's RSS (`tests/fleet.rs`
//!   holds it under 8 MiB);
//! - the address → name cache of downloads: [`ADDR_SLOTS`] slots, fixed;
//! - rollouts with counted outcomes: one per image with a policy file, at
//!   most [`MAX_ROLLOUTS`];
//! - queued events: [`MAX_EVENTS`] between two drains (the server drains
//!   after every request that may queue one); more are counted and lost.

pub mod cbor;
mod files;
pub mod policy;
pub mod report;
mod status;

use crate::catalog::Image;
use crate::hash::KeyedBuild;
use crate::service::table::BoundedTable;
use core::fmt;
use core::hash::BuildHasher;
pub use files::{FleetFiles, Patch, PolicyFile, PATCH_MARK};
pub use status::StatusFormat;
use std::collections::HashMap;

/// Longest device name (RFC 9176's `ep` is longer; 63 keeps the table's
/// entries fixed and small).
pub const NAME_MAX: usize = 63;
/// Slots of the address → name cache (a lookup's `ep=` remembered for the
/// download that follows from the same address).
pub const ADDR_SLOTS: usize = 1024;
/// Rollouts whose outcomes are counted, at most.
pub const MAX_ROLLOUTS: usize = 4096;
/// Events queued between two drains, at most.
pub const MAX_EVENTS: usize = 64;
/// LwM2M result "Firmware update failed" (8): what an inferred failure is
/// recorded with.
pub const RESULT_FAILED: u8 = 8;
/// LwM2M result "Firmware updated successfully" (1).
pub const RESULT_SUCCESS: u8 = 1;

/// A device's name: an `ep=`, a coaps PSK identity, or the text of its
/// address. 1 to [`NAME_MAX`] bytes of `[A-Za-z0-9._:-]`, held inline so
/// that the table's entries have a fixed size. Equal names have equal
/// (zero) padding, so the derived equality is the names'; hashing reads
/// only the name's bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceName {
    len: u8,
    bytes: [u8; NAME_MAX],
}

impl DeviceName {
    /// `text` as a name, if it follows the grammar.
    pub fn parse(text: &[u8]) -> Option<DeviceName> {
        let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
        if text.is_empty() || text.len() > NAME_MAX || !text.iter().all(ok) {
            return None;
        }
        let mut bytes = [0u8; NAME_MAX];
        bytes.get_mut(..text.len())?.copy_from_slice(text);
        Some(DeviceName {
            len: text.len() as u8,
            bytes,
        })
    }

    /// A coaps PSK identity as a name: the identity when it follows the
    /// grammar, else `psk-` and FNV-1a 32 of it in hex.
    pub fn from_identity(identity: &[u8]) -> DeviceName {
        DeviceName::parse(identity).unwrap_or_else(|| {
            let mut text = *b"psk-00000000";
            let hex = crate::hash::fnv1a32(identity);
            for (i, slot) in text.iter_mut().skip(4).enumerate() {
                *slot = b"0123456789abcdef"[(hex >> (28 - 4 * i)) as usize & 0xf];
            }
            DeviceName::parse(&text).unwrap_or(DeviceName {
                len: 0,
                bytes: [0; NAME_MAX],
            })
        })
    }

    /// The text of an address (IPv4-mapped addresses as IPv4), as the name
    /// of a device that gives none.
    pub fn from_ip(ip: [u8; 16]) -> DeviceName {
        let v6 = core::net::Ipv6Addr::from(ip);
        let mut writer = Text {
            bytes: [0; NAME_MAX],
            len: 0,
        };
        let _ = match v6.to_ipv4_mapped() {
            Some(v4) => fmt::Write::write_fmt(&mut writer, format_args!("{v4}")),
            None => fmt::Write::write_fmt(&mut writer, format_args!("{v6}")),
        };
        DeviceName {
            len: writer.len as u8,
            bytes: writer.bytes,
        }
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The name as text (always ASCII).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl core::hash::Hash for DeviceName {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

impl fmt::Debug for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `fmt::Write` into a name's inline bytes.
struct Text {
    bytes: [u8; NAME_MAX],
    len: usize,
}

impl fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.bytes
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Where a device is with its update, as reports (LwM2M Object 5) say or
/// the server infers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Seen, nothing offered (or LwM2M state 0).
    #[default]
    Idle,
    /// Its lookup was answered with an image.
    Offered,
    /// Block 0 of the image was sent (or LwM2M state 1).
    Downloading,
    /// The last block was sent (or LwM2M state 2).
    Downloaded,
    /// LwM2M state 3.
    Updating,
    /// Runs the target version: a success report (result 1), or a lookup
    /// reporting that version.
    Updated,
    /// A failure report (result 2 to 9), or still on the old version after
    /// downloading the image twice.
    Failed,
}

impl State {
    /// Every state, in the order the status view counts them.
    pub const ALL: [State; 7] = [
        State::Idle,
        State::Offered,
        State::Downloading,
        State::Downloaded,
        State::Updating,
        State::Updated,
        State::Failed,
    ];

    /// The state's name in log lines, the journal and the status view.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Offered => "offered",
            State::Downloading => "downloading",
            State::Downloaded => "downloaded",
            State::Updating => "updating",
            State::Updated => "updated",
            State::Failed => "failed",
        }
    }

    /// The state named `name`.
    pub fn from_name(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The image a device is being updated to: its id and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The image's id (FNV-1a 32 of its file name).
    pub image: u32,
    /// Its version.
    pub version: u32,
}

impl Target {
    /// The target `image` is.
    pub fn of(image: &Image) -> Target {
        Target {
            image: image.id,
            version: image.version,
        }
    }
}

/// Which outcome of a device's current target is counted in its rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counted {
    /// None yet.
    #[default]
    Nothing,
    /// A success.
    Success,
    /// A failure.
    Failure,
}

/// What the fleet knows of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Device {
    /// Where it is.
    pub state: State,
    /// The last LwM2M result (0 when none was reported or inferred).
    pub result: u8,
    /// The version it last said it runs.
    pub running: Option<u32>,
    /// The image it was offered or is downloading.
    pub target: Option<Target>,
    /// Whole downloads of the target (last blocks sent after a block 0).
    pub downloads: u8,
    /// The last change was inferred, not reported.
    pub inferred: bool,
    /// Which outcome of the target its rollout counted.
    pub counted: Counted,
    /// Unix time (ms) of the last change of state or result.
    pub changed_unix_ms: u64,
    /// Unix time (ms) it was last heard from.
    pub seen_unix_ms: u64,
}

/// The outcomes counted for one image's rollout since its policy file was
/// last edited (its generation), and whether they paused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rollout {
    /// The policy's generation the counts are for.
    pub generation: u64,
    /// Devices updated.
    pub successes: u32,
    /// Devices failed.
    pub failures: u32,
    /// The failure share reached `max-failures`: paused until the file is
    /// edited.
    pub paused: bool,
}

impl Rollout {
    /// The policy's generation is now `generation`: a paused rollout
    /// resumes with its counts started over, a running one keeps them.
    fn renew(&mut self, generation: u64) {
        if self.paused {
            *self = Rollout {
                generation,
                ..Rollout::default()
            };
        } else {
            self.generation = generation;
        }
    }
}

/// Why an image is not offered to new devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// `pause = yes` in its policy.
    File,
    /// Its policy file was refused at its first load: no good policy yet.
    Invalid,
    /// The failure share reached `max-failures`.
    Auto {
        /// Successes counted.
        successes: u32,
        /// Failures counted.
        failures: u32,
    },
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pause::File => f.write_str("pause = yes"),
            Pause::Invalid => f.write_str("the policy file is invalid"),
            Pause::Auto {
                successes,
                failures,
            } => write!(
                f,
                "{failures} of {} outcomes failed",
                successes.saturating_add(*failures)
            ),
        }
    }
}

/// How a device's change came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Its own report.
    Report,
    /// A lookup (offered, or inferred updated or failed).
    Lookup,
    /// A block sent (inferred downloading or downloaded).
    Block,
}

impl Source {
    /// The name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Source::Report => "report",
            Source::Lookup => "lookup",
            Source::Block => "block",
        }
    }
}

/// A change the server logs and, when `durable`, journals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A device's state, result or target changed.
    Device {
        /// The device.
        name: DeviceName,
        /// What it is now.
        device: Device,
        /// How it was learnt.
        source: Source,
        /// Worth a journal line: any state but `offered`, which every
        /// lookup may make and a restart can forget.
        durable: bool,
    },
    /// The outcome counts of an image's rollout changed.
    Rollout {
        /// The image's id.
        image: u32,
        /// The counts.
        rollout: Rollout,
        /// This change paused it.
        paused_now: bool,
    },
    /// An automatic pause ended because the policy file was edited.
    Resumed {
        /// The image's id.
        image: u32,
    },
}

/// What a request told the fleet, applied once its answer is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Note {
    /// A lookup from a device running `running`; `offered` is the image its
    /// answer named, if any.
    Lookup {
        name: DeviceName,
        ip: [u8; 16],
        named: bool,
        running: u32,
        offered: Option<Target>,
    },
    /// The first and/or last block of a body of `target`.
    Block {
        name: DeviceName,
        target: Target,
        first: bool,
        last: bool,
    },
    /// A report.
    Report {
        name: DeviceName,
        running: Option<u32>,
        target: Option<Target>,
        state: Option<u8>,
        result: Option<u8>,
    },
}

/// The fleet's state; see the module docs.
pub struct Fleet {
    devices: BoundedTable<DeviceName, Device>,
    addrs: Vec<Option<([u8; 16], DeviceName)>>,
    addr_hash: KeyedBuild,
    rollouts: HashMap<u32, Rollout>,
    events: Vec<Event>,
    lost_events: u64,
    unix_origin_ms: u64,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("devices", &self.devices.len())
            .field("rollouts", &self.rollouts.len())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A fleet of at most `max_devices` names, hashed with the secret
    /// `keys`, without policies.
    pub fn new(max_devices: usize, keys: [u64; 2]) -> Fleet {
        let mut devices = BoundedTable::new(max_devices, u64::MAX, keys);
        // Every lookup rewrites its device: without this the table's
        // queue would keep allocating in steady state.
        devices.reserve_queue();
        Fleet {
            devices,
            addrs: vec![None; ADDR_SLOTS],
            addr_hash: KeyedBuild::new([keys[1], keys[0]]),
            rollouts: HashMap::new(),
            events: Vec::with_capacity(MAX_EVENTS),
            lost_events: 0,
            unix_origin_ms: 0,
        }
    }

    /// The Unix time, in ms, at the service's `now_ms` 0: device times are
    /// kept and shown in Unix time.
    pub fn set_clock(&mut self, unix_origin_ms: u64) {
        self.unix_origin_ms = unix_origin_ms;
    }

    /// The Unix time of `now_ms`.
    pub fn unix_ms(&self, now_ms: u64) -> u64 {
        self.unix_origin_ms.saturating_add(now_ms)
    }

    /// The policies and patches are now `files` (the snapshot the service
    /// serves from the next request on): a rollout paused by its outcomes
    /// whose policy file changed resumes (an [`Event::Resumed`]) and
    /// counts its outcomes afresh; one that is not paused keeps its counts
    /// (raising the share does not forget the canaries' outcomes).
    pub fn files_changed(&mut self, files: &FleetFiles) {
        let mut resumed = Vec::new();
        for (&image, rollout) in &mut self.rollouts {
            let generation = files.policy(image).map(|p| p.policy.generation);
            if generation != Some(rollout.generation) {
                if rollout.paused {
                    resumed.push(image);
                }
                rollout.renew(generation.unwrap_or(0));
            }
        }
        for image in resumed {
            self.push(Event::Resumed { image });
        }
    }

    /// Why `image` is not offered to new devices, if it is not.
    pub fn pause(&self, files: &FleetFiles, image: u32) -> Option<Pause> {
        let file = files.policy(image)?;
        if file.invalid {
            return Some(Pause::Invalid);
        }
        if file.policy.pause {
            return Some(Pause::File);
        }
        self.rollouts
            .get(&image)
            .filter(|r| r.paused && r.generation == file.policy.generation)
            .map(|r| Pause::Auto {
                successes: r.successes,
                failures: r.failures,
            })
    }

    /// Whether `name` is offered `image`: always without a policy file;
    /// with one, a canary or a name whose hash falls within the share,
    /// unless the rollout is paused, when only a device whose download of
    /// it began keeps being answered.
    pub fn offers(&self, files: &FleetFiles, name: &DeviceName, image: &Image) -> bool {
        let Some(file) = files.policy(image.id) else {
            return true;
        };
        if self.pause(files, image.id).is_some() {
            return self.devices.get(name, 0).is_some_and(|d| {
                d.target == Some(Target::of(image))
                    && matches!(d.state, State::Downloading | State::Downloaded)
            });
        }
        file.policy.is_canary(name) || file.policy.in_share(name, &image.file_name)
    }

    /// The name a lookup with `ep=` from `ip` gave, for the download that
    /// follows from the same address without one.
    pub fn name_of(&self, ip: [u8; 16]) -> Option<DeviceName> {
        let slot = self.addr_slot(ip);
        match self.addrs.get(slot) {
            Some(Some((at, name))) if *at == ip => Some(*name),
            _ => None,
        }
    }

    fn addr_slot(&self, ip: [u8; 16]) -> usize {
        (self.addr_hash.hash_one(ip) % ADDR_SLOTS as u64) as usize
    }

    /// What the fleet knows of `name`.
    pub fn device(&self, name: &DeviceName) -> Option<&Device> {
        self.devices.get(name, 0)
    }

    /// Every device known, in no order.
    pub fn devices(&self) -> impl Iterator<Item = (&DeviceName, &Device)> {
        self.devices.iter()
    }

    /// Devices known (at most the table's capacity).
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The outcome counts of every rollout that has some.
    pub fn rollouts(&self) -> impl Iterator<Item = (u32, &Rollout)> {
        self.rollouts.iter().map(|(&id, r)| (id, r))
    }

    /// Puts a device back as a journal recorded it (at start).
    pub fn restore_device(&mut self, name: DeviceName, device: Device) {
        self.devices.insert(name, device, 0);
    }

    /// Puts a rollout's counts back as a journal recorded them (at start);
    /// counts of another generation than the policy's now are dropped.
    pub fn restore_rollout(&mut self, image: u32, rollout: Rollout) {
        if self.rollouts.len() < MAX_ROLLOUTS || self.rollouts.contains_key(&image) {
            self.rollouts.insert(image, rollout);
        }
    }

    /// The oldest event queued, taken from the queue.
    pub fn next_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            return None;
        }
        Some(self.events.remove(0))
    }

    /// How many events were lost since the last call because the queue
    /// was full.
    pub fn take_lost_events(&mut self) -> u64 {
        std::mem::take(&mut self.lost_events)
    }

    /// Whether events are queued.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn push(&mut self, event: Event) {
        if self.events.len() < MAX_EVENTS {
            self.events.push(event);
        } else {
            self.lost_events += 1;
        }
    }

    /// Applies what a request told, at `now_ms`, under the policies of
    /// `files`.
    pub(crate) fn apply(&mut self, files: &FleetFiles, note: Note, now_ms: u64) {
        let now = self.unix_ms(now_ms);
        let (name, source) = match note {
            Note::Lookup { name, .. } => (name, Source::Lookup),
            Note::Block { name, .. } => (name, Source::Block),
            Note::Report { name, .. } => (name, Source::Report),
        };
        let before = self.devices.get(&name, 0).copied().unwrap_or_default();
        let mut d = before;
        d.seen_unix_ms = now;
        match note {
            Note::Lookup {
                ip,
                named,
                running,
                offered,
                ..
            } => {
                if named {
                    let slot = self.addr_slot(ip);
                    if let Some(entry) = self.addrs.get_mut(slot) {
                        *entry = Some((ip, name));
                    }
                }
                d.running = Some(running);
                if let Some(t) = d.target {
                    if running >= t.version && d.state != State::Updated {
                        (d.state, d.result, d.inferred) = (State::Updated, RESULT_SUCCESS, true);
                    } else if running < t.version
                        && d.state == State::Downloaded
                        && d.downloads >= 2
                    {
                        (d.state, d.result, d.inferred) = (State::Failed, RESULT_FAILED, true);
                    }
                }
                if let Some(o) = offered {
                    if d.target != Some(o) {
                        retarget(&mut d, o);
                        d.state = State::Offered;
                    } else if d.state == State::Idle {
                        d.state = State::Offered;
                    }
                }
            }
            Note::Block {
                target,
                first,
                last,
                ..
            } => {
                if first && !(d.state == State::Downloading && d.target == Some(target)) {
                    if d.target != Some(target) {
                        retarget(&mut d, target);
                    }
                    (d.state, d.inferred) = (State::Downloading, true);
                }
                if last && d.state == State::Downloading && d.target == Some(target) {
                    d.state = State::Downloaded;
                    d.downloads = d.downloads.saturating_add(1);
                }
            }
            Note::Report {
                running,
                target,
                state,
                result,
                ..
            } => {
                if running.is_some() {
                    d.running = running;
                }
                if let Some(t) = target.filter(|&t| d.target != Some(t)) {
                    retarget(&mut d, t);
                }
                d.state = match (result, state) {
                    (Some(RESULT_SUCCESS), _) => State::Updated,
                    (Some(2..=9), _) => State::Failed,
                    (Some(10), _) | (_, Some(0)) => State::Idle,
                    (_, Some(1)) => State::Downloading,
                    (_, Some(2)) => State::Downloaded,
                    (_, Some(3)) => State::Updating,
                    _ => d.state,
                };
                if let Some(result) = result {
                    d.result = result;
                }
                d.inferred = false;
            }
        }
        let changed =
            d.state != before.state || d.result != before.result || d.target != before.target;
        if changed {
            d.changed_unix_ms = now;
        }
        self.count_outcome(files, &mut d);
        self.devices.insert(name, d, 0);
        if changed {
            self.push(Event::Device {
                name,
                device: d,
                source,
                durable: d.state != State::Offered,
            });
        }
    }

    /// Counts a device's new outcome of its target in the target's rollout
    /// (only images with a policy file have one), moving a failure to the
    /// successes when a failed device later succeeds, and pauses the
    /// rollout when the failure share reaches `max-failures`.
    fn count_outcome(&mut self, files: &FleetFiles, d: &mut Device) {
        let now = match d.state {
            State::Updated => Counted::Success,
            State::Failed => Counted::Failure,
            _ => return,
        };
        let Some(target) = d.target else { return };
        if d.counted == now {
            return;
        }
        let Some(file) = files.policy(target.image) else {
            return;
        };
        let policy = &file.policy;
        if self.rollouts.len() >= MAX_ROLLOUTS && !self.rollouts.contains_key(&target.image) {
            return;
        }
        let rollout = self.rollouts.entry(target.image).or_default();
        if rollout.generation != policy.generation {
            // Counts restored from a journal written under another
            // version of the file.
            rollout.renew(policy.generation);
        }
        match d.counted {
            Counted::Success => rollout.successes = rollout.successes.saturating_sub(1),
            Counted::Failure => rollout.failures = rollout.failures.saturating_sub(1),
            Counted::Nothing => {}
        }
        match now {
            Counted::Success => rollout.successes = rollout.successes.saturating_add(1),
            _ => rollout.failures = rollout.failures.saturating_add(1),
        }
        d.counted = now;
        let total = u64::from(rollout.successes) + u64::from(rollout.failures);
        let pause_now = !rollout.paused
            && total >= u64::from(policy.min_outcomes)
            && u64::from(rollout.failures) * 100 >= u64::from(policy.max_failures) * total;
        rollout.paused |= pause_now;
        let event = Event::Rollout {
            image: target.image,
            rollout: *rollout,
            paused_now: pause_now,
        };
        self.push(event);
    }
}

/// `d` now aims at `target`: its downloads and counted outcome start over.
fn retarget(d: &mut Device, target: Target) {
    d.target = Some(target);
    d.downloads = 0;
    d.counted = Counted::Nothing;
}

#[cfg(test)]
mod tests;
