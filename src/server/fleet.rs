//! The fleet's side of the loop: the log line of every change the fleet
//! reports, and with `--state-dir` the journal (replayed at start,
//! appended on durable changes, compacted at its bound).
//!
//! The fleet itself (eligibility, devices, outcomes) is the service's;
//! this file only drains its events after a request that may have made
//! some, so that the per-block path never comes here.

use super::Server;
use crate::firmware::VersionText;
use crate::fleet::{Device, DeviceName, Event, State};
use crate::logfmt::SUMMARY;
use crate::state::{Journal, Record};
use log::{debug, info, warn};
use std::io;
use std::path::Path;

/// Device lines logged at info per second at most; the rest at debug (a
/// flood of lookups or reports from made-up names must not become a flood
/// of log lines). Pauses and resumptions are always logged.
const DEVICE_LINES_PER_SECOND: u32 = 50;

/// The per-second budget of device lines.
#[derive(Debug, Default)]
pub(super) struct FleetLog {
    second: u64,
    lines: u32,
    /// The journal's last append failed (logged once until one succeeds).
    journal_failing: bool,
}

impl Server {
    /// Keeps the fleet's state in `dir` (`--state-dir`): replays the
    /// journal there into the fleet, then appends every durable change to
    /// it. Returns the records replayed and the lines skipped.
    ///
    /// # Errors
    /// When the directory or the journal cannot be made, read or opened.
    pub fn keep_state(&mut self, dir: &Path) -> io::Result<(usize, usize)> {
        let (journal, replay) = Journal::open(dir)?;
        let fleet = self.service.fleet_mut();
        for record in &replay.records {
            match *record {
                Record::Device(name, device) => fleet.restore_device(name, device),
                Record::Rollout(image, rollout) => fleet.restore_rollout(image, rollout),
            }
        }
        self.journal = Some(journal);
        Ok((replay.records.len(), replay.skipped))
    }

    /// Logs (and journals) the fleet's events, if any.
    #[inline]
    pub(super) fn fleet_events(&mut self) {
        if self.service.fleet().has_events() {
            self.drain_fleet_events();
        }
    }

    #[inline(never)]
    fn drain_fleet_events(&mut self) {
        let second = self.now_ms / 1000;
        if second != self.fleet_log.second {
            self.fleet_log.second = second;
            self.fleet_log.lines = 0;
        }
        let lost = self.service.fleet_mut().take_lost_events();
        if lost > 0 {
            debug!("fleet: {lost} events not logged (queue full)");
        }
        let mut appended = false;
        while let Some(event) = self.service.fleet_mut().next_event() {
            let record = match event {
                Event::Device {
                    name,
                    device,
                    source,
                    durable,
                } => {
                    self.fleet_log.lines += 1;
                    let loud = self.fleet_log.lines <= DEVICE_LINES_PER_SECOND;
                    let line = DeviceLine(self, &name, &device, source.name());
                    if loud {
                        info!("{line}");
                    } else {
                        debug!("{line}");
                    }
                    durable.then_some(Record::Device(name, device))
                }
                Event::Rollout {
                    image,
                    rollout,
                    paused_now,
                } => {
                    let file = self.image_name(image);
                    if paused_now {
                        let policy = self.service.fleet_files().policy(image);
                        let (max, min) = policy
                            .map_or((0, 0), |p| (p.policy.max_failures, p.policy.min_outcomes));
                        warn!(
                            target: SUMMARY,
                            "fleet rollout={file} paused=auto successes={} failures={} \
                             max-failures={max}% min-outcomes={min}: edit its .rollout file to resume",
                            rollout.successes, rollout.failures
                        );
                    } else {
                        debug!(
                            "fleet rollout={file} successes={} failures={}",
                            rollout.successes, rollout.failures
                        );
                    }
                    Some(Record::Rollout(image, rollout))
                }
                Event::Resumed { image } => {
                    let file = self.image_name(image);
                    info!(target: SUMMARY, "fleet rollout={file} resumed=policy-edited");
                    None
                }
            };
            if let (Some(record), Some(journal)) = (record, self.journal.as_mut()) {
                match journal.append(&record) {
                    Err(e) if !self.fleet_log.journal_failing => {
                        warn!("fleet journal: cannot append (not said again until it can): {e}");
                        self.fleet_log.journal_failing = true;
                    }
                    Err(_) => {}
                    Ok(()) if self.fleet_log.journal_failing => {
                        info!("fleet journal: appending again");
                        self.fleet_log.journal_failing = false;
                    }
                    Ok(()) => {}
                }
                appended = true;
            }
        }
        if appended {
            self.compact_journal();
        }
    }

    /// Rewrites the journal when it has passed its bound.
    fn compact_journal(&mut self) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        if !journal.needs_compaction() {
            return;
        }
        let fleet = self.service.fleet();
        let devices = fleet
            .devices()
            .filter(|(_, d)| d.state != State::Offered)
            .map(|(name, d)| Record::Device(*name, *d));
        let rollouts = fleet
            .rollouts()
            .map(|(image, r)| Record::Rollout(image, *r));
        let before = journal.len();
        match journal.compact(devices.chain(rollouts)) {
            Ok(()) => info!(
                "fleet journal compacted from {before} to {} bytes",
                journal.len()
            ),
            Err(e) => warn!("fleet journal: cannot compact: {e}"),
        }
    }

    /// The file name of the image (or patch's image) with id `image`, or
    /// its id in hex when the catalog no longer has it.
    fn image_name(&self, image: u32) -> String {
        self.service
            .catalog()
            .by_id(image)
            .map_or_else(|| format!("{image:08x}"), |i| i.file_name.clone())
    }
}

/// One structured line per device change:
/// `fleet device=NAME state=STATE result=N running=V target=V image=FILE via=SOURCE [inferred]`.
struct DeviceLine<'a>(&'a Server, &'a DeviceName, &'a Device, &'static str);

impl std::fmt::Display for DeviceLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let DeviceLine(server, name, d, via) = *self;
        write!(
            f,
            "fleet device={name} state={} result={}",
            d.state.name(),
            d.result
        )?;
        if let Some(v) = d.running {
            write!(f, " running={}", VersionText(v))?;
        }
        if let Some(t) = d.target {
            write!(
                f,
                " target={} image={}",
                VersionText(t.version),
                server.image_name(t.image)
            )?;
        }
        write!(f, " via={via}")?;
        if d.inferred {
            f.write_str(" inferred")?;
        }
        Ok(())
    }
}
