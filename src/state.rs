//! The fleet's state on disk (`--state-dir DIR`): an append-only journal,
//! `DIR/fleet.journal`, of the changes worth keeping across a restart (a
//! device's state other than `offered`, a rollout's outcome counts and
//! automatic pause), one text line each, replayed at start.
//!
//! Written by the server only when such a change happens: never per block,
//! never per lookup that changes nothing, so flash is written about as
//! often as devices change state. Each line is one `write` to a file opened
//! for appending, without `fsync`: a crash may lose the last lines the
//! kernel had not written back, never corrupt earlier ones (a torn last
//! line is skipped at replay).
//!
//! Bounded: when the journal passes [`COMPACT_AT`] bytes (or twice its
//! size after the last compaction, if that is more), it is rewritten with
//! one line per device and rollout the fleet holds (a new file renamed over
//! the old one), so the directory never holds more than the bound plus one
//! compacted copy, and the compacted copy is at most one line (about 110
//! bytes) per device of the table: about 1.1 MB for 10,000 devices. A
//! compaction that fails (a directory no longer writable) is tried again
//! after each further [`COMPACT_AT`]` / 4` bytes, not on every line, and
//! appends stop at twice the bound: a journal that cannot be compacted
//! never fills the disk.

use crate::fleet::{Counted, Device, DeviceName, Rollout, State, Target};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// The journal's file name in the state directory.
pub const JOURNAL_NAME: &str = "fleet.journal";
/// Size at which the journal is compacted: 4 MiB.
pub const COMPACT_AT: u64 = 4 << 20;
/// Longest line read back; a longer one is skipped.
const MAX_LINE: usize = 512;

/// One journal line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A device as it is after a change.
    Device(DeviceName, Device),
    /// A rollout's counts after a change.
    Rollout(u32, Rollout),
}

impl Record {
    /// The line, without its newline:
    /// `D NAME STATE RESULT RUNNING IMAGE TARGET DOWNLOADS INFERRED COUNTED CHANGED SEEN`
    /// (versions and the image id in hex, `-` for none, times in Unix ms)
    /// or `R IMAGE GENERATION SUCCESSES FAILURES PAUSED`.
    pub fn line(&self) -> String {
        match self {
            Record::Device(name, d) => {
                let hex = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:x}"));
                format!(
                    "D {name} {} {} {} {} {} {} {} {} {} {}",
                    d.state.name(),
                    d.result,
                    hex(d.running),
                    hex(d.target.map(|t| t.image)),
                    hex(d.target.map(|t| t.version)),
                    d.downloads,
                    u8::from(d.inferred),
                    match d.counted {
                        Counted::Nothing => "n",
                        Counted::Success => "s",
                        Counted::Failure => "f",
                    },
                    d.changed_unix_ms,
                    d.seen_unix_ms
                )
            }
            Record::Rollout(image, r) => format!(
                "R {image:x} {:x} {} {} {}",
                r.generation,
                r.successes,
                r.failures,
                u8::from(r.paused)
            ),
        }
    }

    /// The record a line holds; `None` for anything else.
    pub fn parse(line: &str) -> Option<Record> {
        let mut w = line.split(' ');
        let hex = |s: &str| match s {
            "-" => Some(None),
            s => u32::from_str_radix(s, 16).ok().map(Some),
        };
        let record = match w.next()? {
            "D" => {
                let name = DeviceName::parse(w.next()?.as_bytes())?;
                let state = State::from_name(w.next()?)?;
                let result = w.next()?.parse().ok()?;
                let running = hex(w.next()?)?;
                let image = hex(w.next()?)?;
                let version = hex(w.next()?)?;
                let target = match (image, version) {
                    (Some(image), Some(version)) => Some(Target { image, version }),
                    (None, None) => None,
                    _ => return None,
                };
                let downloads = w.next()?.parse().ok()?;
                let inferred = w.next()? == "1";
                let counted = match w.next()? {
                    "n" => Counted::Nothing,
                    "s" => Counted::Success,
                    "f" => Counted::Failure,
                    _ => return None,
                };
                let changed_unix_ms = w.next()?.parse().ok()?;
                let seen_unix_ms = w.next()?.parse().ok()?;
                Record::Device(
                    name,
                    Device {
                        state,
                        result,
                        running,
                        target,
                        downloads,
                        inferred,
                        counted,
                        changed_unix_ms,
                        seen_unix_ms,
                    },
                )
            }
            "R" => Record::Rollout(
                u32::from_str_radix(w.next()?, 16).ok()?,
                Rollout {
                    generation: u64::from_str_radix(w.next()?, 16).ok()?,
                    successes: w.next()?.parse().ok()?,
                    failures: w.next()?.parse().ok()?,
                    paused: w.next()? == "1",
                },
            ),
            _ => return None,
        };
        w.next().is_none().then_some(record)
    }
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    compact_at: u64,
    /// Appends stop at this length, until a compaction succeeds.
    cap: u64,
    /// Bytes of the lines refused at the cap since the last compaction:
    /// they count towards the next attempt as written ones do.
    refused: u64,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// The records, oldest first.
    pub records: Vec<Record>,
    /// Lines that were not records (a torn last line after a crash).
    pub skipped: usize,
}

impl Journal {
    /// Opens (creating it and the directory if needed) the journal in
    /// `dir` and reads it back.
    ///
    /// # Errors
    /// When the directory or the file cannot be made, read or opened for
    /// appending.
    pub fn open(dir: &Path) -> io::Result<(Journal, Replay)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(JOURNAL_NAME);
        let mut replay = Replay::default();
        // Whether the file ends inside a line (a crash tore the last one).
        let mut torn = false;
        if let Ok(file) = File::open(&path) {
            let mut reader = BufReader::new(file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader
                    .by_ref()
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                let text = std::str::from_utf8(&line).unwrap_or("");
                match text.strip_suffix('\n').and_then(Record::parse) {
                    Some(record) => replay.records.push(record),
                    None => {
                        replay.skipped += 1;
                        // The rest of an over-long line, skipped in place:
                        // a corrupt file without newlines must not be read
                        // into memory whole.
                        if !line.ends_with(b"\n") {
                            torn = !skip_line(&mut reader)?;
                        }
                    }
                }
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        if torn {
            // End the torn line, or the first record appended after it
            // would join it and be skipped at the next replay.
            file.write_all(b"\n")?;
        }
        let len = file.metadata()?.len();
        Ok((
            Journal {
                path,
                file,
                len,
                compact_at: COMPACT_AT,
                cap: COMPACT_AT.max(len).saturating_mul(2),
                refused: 0,
            },
            replay,
        ))
    }

    /// Appends `record` (one write).
    ///
    /// # Errors
    /// As the write.
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        if self.len >= self.cap {
            let line = record.line().len() as u64 + 1;
            self.refused = self.refused.saturating_add(line);
            return Err(io::Error::other(format!(
                "the journal has reached {} bytes and could not be compacted",
                self.len
            )));
        }
        let mut line = record.line();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Whether the journal has grown past its bound and should be
    /// compacted.
    pub fn needs_compaction(&self) -> bool {
        self.len.saturating_add(self.refused) >= self.compact_at
    }

    /// The journal's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the journal is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rewrites the journal as `records` (the fleet's state now): written
    /// to a new file, synced, renamed over the journal.
    ///
    /// # Errors
    /// As the writes and the rename; the old journal is then kept, and
    /// compaction is due again after [`COMPACT_AT`]` / 4` more bytes.
    pub fn compact(&mut self, records: impl Iterator<Item = Record>) -> io::Result<()> {
        let result = self.rewrite(records);
        if result.is_err() {
            self.compact_at =
                (self.len.saturating_add(self.refused)).saturating_add(COMPACT_AT / 4);
        }
        result
    }

    fn rewrite(&mut self, records: impl Iterator<Item = Record>) -> io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        for record in records {
            writeln!(out, "{}", record.line())?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = self.file.metadata()?.len();
        self.compact_at = COMPACT_AT.max(self.len.saturating_mul(2));
        self.cap = self.compact_at.saturating_mul(2);
        self.refused = 0;
        Ok(())
    }
}

/// Skips what is left of a line, its newline included, without keeping
/// it; false when the file ends before a newline.
fn skip_line(reader: &mut impl BufRead) -> io::Result<bool> {
    // Bounded: each turn consumes at least one byte or ends.
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(true);
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let name = DeviceName::parse(b"d1").unwrap();
        let d = Device {
            state: State::Downloaded,
            result: 0,
            running: Some(0x0100_0001),
            target: Some(Target {
                image: 0x0d0a_d509,
                version: 0x0100_0002,
            }),
            downloads: 2,
            inferred: true,
            counted: Counted::Failure,
            changed_unix_ms: 1_765_000_000_000,
            seen_unix_ms: 1_765_000_000_100,
        };
        for record in [
            Record::Device(name, d),
            Record::Device(name, Device::default()),
            Record::Rollout(
                7,
                Rollout {
                    generation: u64::MAX,
                    successes: 2,
                    failures: 3,
                    paused: true,
                },
            ),
        ] {
            assert_eq!(
                Record::parse(&record.line()),
                Some(record),
                "{}",
                record.line()
            );
        }
        assert_eq!(Record::parse("D d1 updated"), None);
        assert_eq!(Record::parse("R 7 0 1 2 0 extra"), None);
    }

    #[test]
    fn replays_appends_and_compacts() {
        let dir = crate::testkit::TempDir::new("journal");
        let name = DeviceName::parse(b"d1").unwrap();
        let (mut j, replay) = Journal::open(dir.path()).unwrap();
        assert!(replay.records.is_empty());
        let d = Device {
            state: State::Updated,
            ..Device::default()
        };
        j.append(&Record::Device(name, d)).unwrap();
        j.append(&Record::Rollout(1, Rollout::default())).unwrap();
        drop(j);
        // A torn line, as a crash leaves it.
        let path = dir.path().join(JOURNAL_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"D d2 upd").unwrap();
        let (mut j, replay) = Journal::open(dir.path()).unwrap();
        assert_eq!(replay.records.len(), 2);
        assert_eq!(replay.skipped, 1);
        j.compact([Record::Device(name, d)].into_iter()).unwrap();
        let (_, replay) = Journal::open(dir.path()).unwrap();
        assert_eq!(replay.records, vec![Record::Device(name, d)]);
        assert_eq!(replay.skipped, 0);
    }

    #[test]
    fn a_journal_that_cannot_be_compacted_is_retried_sparingly_and_stops_at_its_cap() {
        let dir = crate::testkit::TempDir::new("journal-stuck");
        let name = DeviceName::parse(b"d1").unwrap();
        let record = Record::Device(name, Device::default());
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        // The new file cannot be made: its name is a directory's.
        fs::create_dir(dir.path().join("fleet.journal.tmp")).unwrap();
        let line = record.line().len() as u64 + 1;
        let (mut attempts, mut refused, mut attempts_at_cap) = (0, 0, 0);
        // Bounded: 3 MiB past the 8 MiB cap, about 260,000 lines.
        for _ in 0..((2 * COMPACT_AT + 3 * COMPACT_AT / 4) / line) {
            let at_cap = j.append(&record).is_err();
            refused += usize::from(at_cap);
            if j.needs_compaction() {
                attempts += 1;
                attempts_at_cap += usize::from(at_cap);
                assert!(j.compact([record].into_iter()).is_err());
            }
        }
        // At the bound, then once per COMPACT_AT / 4 more lines, written
        // or refused: seven times in all, not once per line.
        assert!((5..=9).contains(&attempts), "{attempts} attempts");
        assert!(attempts_at_cap >= 1, "never tried again at the cap");
        assert!(refused > 10_000, "{refused} appends refused");
        assert!(j.len() < 2 * COMPACT_AT + line, "{} bytes", j.len());
        let on_disk = fs::metadata(dir.path().join(JOURNAL_NAME)).unwrap().len();
        assert_eq!(on_disk, j.len());
        // Once it can be compacted, appends go on.
        fs::remove_dir(dir.path().join("fleet.journal.tmp")).unwrap();
        j.compact([record].into_iter()).unwrap();
        j.append(&record).unwrap();
        assert_eq!(j.len(), 2 * line);
        assert!(!j.needs_compaction());
    }

    #[test]
    fn a_record_appended_after_a_torn_line_is_replayed() {
        let name = DeviceName::parse(b"d1").unwrap();
        let d = Device {
            state: State::Failed,
            ..Device::default()
        };
        // A line torn by a crash: short, and an over-long one without
        // any newline (a tail of garbage), each the file's end.
        for tail in [b"D d2 upd".to_vec(), vec![b'x'; 100_000]] {
            let dir = crate::testkit::TempDir::new("journal-torn");
            let path = dir.path().join(JOURNAL_NAME);
            let mut text = Record::Device(name, Device::default()).line().into_bytes();
            text.push(b'\n');
            text.extend_from_slice(&tail);
            fs::write(&path, &text).unwrap();
            let (mut j, replay) = Journal::open(dir.path()).unwrap();
            assert_eq!((replay.records.len(), replay.skipped), (1, 1));
            j.append(&Record::Device(name, d)).unwrap();
            drop(j);
            let (_, replay) = Journal::open(dir.path()).unwrap();
            assert_eq!(
                replay.records.last(),
                Some(&Record::Device(name, d)),
                "the record after a torn line of {} bytes",
                tail.len()
            );
            assert_eq!(replay.skipped, 1);
        }
    }
}
