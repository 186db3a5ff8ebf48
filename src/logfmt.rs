//! Log lines for whoever collects them: plain stderr lines with an
//! RFC 3339 UTC timestamp (`2026-11-27T19:34:51.123Z INFO  …`), journald's
//! `<N>` priority prefixes (sd-daemon(3)), or one RFC 3164 datagram per
//! line to the local syslog socket (`/dev/log`: OpenWrt's logd, rsyslog,
//! journald).
//!
//! env_logger's own timestamps pull in `jiff` (its `humantime` feature)
//! and its formatter knows no syslog; env_logger is kept only for its
//! `RUST_LOG` filter, and the few lines below write the records.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fmt;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The log target of the lines an operator looks for first, logged at
/// info but kept by `-q` too: the catalog and file tree summaries, the
/// multicast groups joined, each `listening on` line and the final
/// `stopping on a signal` line. `RUST_LOG=summary=off` silences them.
pub const SUMMARY: &str = "summary";

/// The local syslog socket.
pub(crate) const SYSLOG_SOCKET: &str = "/dev/log";

/// Environment variable naming another syslog socket than
/// [`SYSLOG_SOCKET`] (a jail or chroot that has it elsewhere; the tests).
pub(crate) const SYSLOG_SOCKET_ENV: &str = "IOT_OTA_SYSLOG_SOCKET";

/// The tag of syslog lines: the program, whatever its file is called, so
/// that `logread -e iot-ota-server` finds it.
const SYSLOG_TAG: &str = "iot-ota-server";

/// RFC 5424 §6.2.1 facility 3, system daemons.
const FACILITY_DAEMON: u8 = 3;

/// How long a syslog datagram may wait for room in the daemon's queue
/// (Linux queues 10 datagrams per socket by default); past it the line
/// goes to stderr, so that a stuck logger costs the socket loop at most
/// this per line.
const SYSLOG_SEND_TIMEOUT: Duration = Duration::from_millis(50);

/// Where log records go and how they look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// stderr, `TIMESTAMP LEVEL message`: for a terminal or a log file.
    Plain,
    /// stderr, `<N>message` with N the syslog severity and no timestamp:
    /// systemd-journald reads the prefix as the line's priority and
    /// stamps the line itself.
    Journal,
    /// One datagram per record to the local syslog socket,
    /// `<PRI>iot-ota-server[PID]: message`, facility daemon.
    Syslog,
}

impl LogFormat {
    /// The format `--log-format` names: `plain`, `journal` or `syslog`.
    pub fn from_name(name: &str) -> Option<LogFormat> {
        match name {
            "plain" => Some(LogFormat::Plain),
            "journal" => Some(LogFormat::Journal),
            "syslog" => Some(LogFormat::Syslog),
            _ => None,
        }
    }

    /// The format when none is asked for: [`LogFormat::Journal`] when
    /// stderr is the stream systemd connected to the journal (the
    /// `JOURNAL_STREAM` variable names its device and inode), else
    /// [`LogFormat::Plain`].
    pub fn detect() -> LogFormat {
        let journal = std::env::var("JOURNAL_STREAM")
            .ok()
            .zip(stderr_identity())
            .is_some_and(|(stream, (dev, ino))| names_stream(&stream, dev, ino));
        if journal {
            LogFormat::Journal
        } else {
            LogFormat::Plain
        }
    }
}

/// True when `journal_stream`, `JOURNAL_STREAM`'s value (`DEVICE:INODE`,
/// both decimal, as systemd.exec(5) describes), names the file with
/// device `dev` and inode `ino`. A service whose stderr was redirected
/// elsewhere inherits the variable but not the stream, so both must match.
pub(crate) fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// Device and inode of the file stderr is (fstat on a duplicate of fd 2,
/// which needs no /proc); `None` when stderr is closed.
fn stderr_identity() -> Option<(u64, u64)> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(fd).metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// The syslog severity of a level (RFC 5424 §6.2.1, the `<N>` of
/// sd-daemon(3)): error 3, warning 4, info 6, debug and trace 7.
pub(crate) fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One record as a line in `format` (without the final newline; a
/// syslog datagram has none). Syslog lines carry no timestamp: the local
/// daemon stamps them, as it does glibc's when they omit it, and with the
/// fixed tag OpenWrt's logd, which strips 16 bytes when the 16th is a
/// space, never takes part of the tag for a timestamp.
pub(crate) fn format_line(
    format: LogFormat,
    now: Timestamp,
    pid: u32,
    level: Level,
    message: &fmt::Arguments<'_>,
) -> String {
    match format {
        LogFormat::Plain => format!("{now} {level:<5} {message}"),
        LogFormat::Journal => format!("<{}>{message}", severity(level)),
        LogFormat::Syslog => format!(
            "<{}>{SYSLOG_TAG}[{pid}]: {message}",
            FACILITY_DAEMON * 8 + severity(level)
        ),
    }
}

/// The process's logger: the `RUST_LOG`-style filter, then one line per
/// record to stderr or to the syslog socket.
struct Logger {
    filter: env_logger::Logger,
    format: LogFormat,
    /// With [`LogFormat::Syslog`]: an unbound socket and the daemon's
    /// path, addressed per datagram, so that a restarted daemon is
    /// reached at its new socket.
    syslog: Option<(UnixDatagram, PathBuf)>,
    pid: u32,
}

impl Logger {
    /// Writes `line` and a newline to stderr in one write, so that a line
    /// is never interleaved with another writer's.
    fn to_stderr(mut line: String) {
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        let line = format_line(
            self.format,
            Timestamp::now(),
            self.pid,
            record.level(),
            record.args(),
        );
        match &self.syslog {
            Some((socket, path)) => {
                if socket.send_to(line.as_bytes(), path).is_err() {
                    // Not lost: the daemon is gone or stuck, stderr may
                    // still reach someone.
                    let plain = format_line(
                        LogFormat::Plain,
                        Timestamp::now(),
                        self.pid,
                        record.level(),
                        record.args(),
                    );
                    Logger::to_stderr(plain);
                }
            }
            None => Logger::to_stderr(line),
        }
    }

    fn flush(&self) {}
}

/// Installs the process's logger: records at `level` and above (plus the
/// [`SUMMARY`] lines, at info, whatever `level`), `RUST_LOG` overriding,
/// written in `format` (`None`: [`LogFormat::detect`]). When the syslog
/// socket cannot be reached, lines go to stderr in the detected format,
/// after a warning naming the socket and the error.
pub fn init(format: Option<LogFormat>, level: LevelFilter) {
    let filter = env_logger::Builder::new()
        .filter_level(level)
        .filter_module(SUMMARY, level.max(LevelFilter::Info))
        // The DTLS engine (feature dtls) logs each handshake step at debug,
        // a spoofed ClientHello included: shown with -vv only.
        .filter_module(
            "dimpl",
            match level {
                LevelFilter::Trace => LevelFilter::Debug,
                other => other.min(LevelFilter::Warn),
            },
        )
        .parse_default_env()
        .build();
    let mut format = format.unwrap_or_else(LogFormat::detect);
    let mut unreachable = None;
    let syslog = match format {
        LogFormat::Syslog => {
            let path = std::env::var_os(SYSLOG_SOCKET_ENV)
                .map_or_else(|| PathBuf::from(SYSLOG_SOCKET), PathBuf::from);
            match syslog_socket(&path) {
                Ok(socket) => Some((socket, path)),
                Err(e) => {
                    unreachable = Some(format!("{}: {e}", path.display()));
                    format = LogFormat::detect();
                    None
                }
            }
        }
        LogFormat::Plain | LogFormat::Journal => None,
    };
    let max_level = filter.filter();
    let logger = Logger {
        filter,
        format,
        syslog,
        pid: std::process::id(),
    };
    // A second call (none is made) would keep the first logger.
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(max_level);
    }
    if let Some(why) = unreachable {
        log::warn!("cannot reach the syslog socket {why}: logging to stderr instead");
    }
}

/// A socket for datagrams to the syslog daemon at `path`, checked by a
/// connect (which fails when nothing listens there).
fn syslog_socket(path: &std::path::Path) -> std::io::Result<UnixDatagram> {
    UnixDatagram::unbound()?.connect(path)?;
    let socket = UnixDatagram::unbound()?;
    socket.set_write_timeout(Some(SYSLOG_SEND_TIMEOUT))?;
    Ok(socket)
}

/// A point in time shown as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub unix_ms: u64,
}

impl Timestamp {
    /// The current time (a clock before 1970 shows as the epoch).
    pub fn now() -> Timestamp {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp { unix_ms }
    }
}

/// Year, month and day of a count of days since 1970-01-01, by the
/// proleptic Gregorian calendar (the era arithmetic of H. Hinnant's
/// public-domain `civil_from_days`, restated).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.unix_ms / 1000;
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let (year, month, day) = civil_from_days(days);
        let in_day = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            in_day / 3600,
            in_day / 60 % 60,
            in_day % 60,
            self.unix_ms % 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_and_known_dates() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_798_400_091_123, "2026-12-27T19:34:51.123Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ];
        for (unix_ms, text) in cases {
            assert_eq!(Timestamp { unix_ms }.to_string(), text);
        }
    }

    #[test]
    fn each_format_writes_the_priority_its_reader_expects() {
        let now = Timestamp {
            unix_ms: 1_798_400_091_123,
        };
        let line = |format, level| format_line(format, now, 4242, level, &format_args!("up {}", 1));
        assert_eq!(
            line(LogFormat::Plain, Level::Warn),
            "2026-12-27T19:34:51.123Z WARN  up 1"
        );
        // sd-daemon(3): err 3, warning 4, info 6, debug 7; trace has none
        // of its own.
        let journal: Vec<String> = [
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ]
        .into_iter()
        .map(|level| line(LogFormat::Journal, level))
        .collect();
        assert_eq!(
            journal,
            ["<3>up 1", "<4>up 1", "<6>up 1", "<7>up 1", "<7>up 1"]
        );
        // Facility daemon (3): PRI = 3 * 8 + severity.
        assert_eq!(
            line(LogFormat::Syslog, Level::Error),
            "<27>iot-ota-server[4242]: up 1"
        );
        assert_eq!(
            line(LogFormat::Syslog, Level::Info),
            "<30>iot-ota-server[4242]: up 1"
        );
    }

    #[test]
    fn journal_stream_must_name_both_device_and_inode() {
        assert!(names_stream("64769:123456", 64769, 123456));
        assert!(!names_stream("64769:123457", 64769, 123456));
        assert!(!names_stream("64768:123456", 64769, 123456));
        assert!(!names_stream("64769", 64769, 123456));
        assert!(!names_stream("", 64769, 123456));
        assert!(!names_stream("64769:123456:7", 64769, 123456));
    }

    #[test]
    fn format_names_are_the_options_values() {
        assert_eq!(LogFormat::from_name("plain"), Some(LogFormat::Plain));
        assert_eq!(LogFormat::from_name("journal"), Some(LogFormat::Journal));
        assert_eq!(LogFormat::from_name("syslog"), Some(LogFormat::Syslog));
        assert_eq!(LogFormat::from_name("Syslog"), None);
    }
}
