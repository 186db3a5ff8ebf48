//! The counters and the log lines: [`Stats`] and its periodic line, the
//! per-second budget of transfer lines at info, and the text of every
//! per-request line (a transfer's start and end, an outcome, a request's
//! detail at debug), with a peer address shown as an operator reads it.
//!
//! It only formats and counts: it never sends, receives or decides an
//! answer, and logs nothing per packet above debug but the budgeted
//! transfer lines, so hostile traffic cannot flood the log.

use crate::firmware::{self, VersionText};
use crate::service::{Dropped, Outcome, ResetReason, Transfer, Via};
use crate::wire::Message;
use log::{debug, info, log_enabled, trace, Level};
use std::net::SocketAddr;

/// Transfer lines (start, last block) logged at info per second at most:
/// anyone can send block-0 requests, and the log must not become the
/// amplifier; the rest are counted in [`Stats::suppressed_log_lines`].
const TRANSFER_LINES_PER_SECOND: u32 = 20;

/// Counters of what the server did; logged periodically, never per packet
/// above debug, so hostile traffic cannot flood the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Firmware blocks sent.
    pub blocks: u64,
    /// Other 2.05 replies (lookups, discovery).
    pub content: u64,
    /// 4.xx/5.xx replies, Echo challenges and 4.29 included.
    pub errors: u64,
    /// RSTs sent (pings, "no update", rejected messages).
    pub resets: u64,
    /// Malformed, short or foreign-version datagrams dropped.
    pub dropped_malformed: u64,
    /// ACK/RST/other non-requests dropped.
    pub dropped_other: u64,
    /// Receive errors (ICMP errors reported as ECONNREFUSED among them).
    pub receive_errors: u64,
    /// Send errors (unreachable hosts, full buffers).
    pub send_errors: u64,
    /// Transfer log lines left out over the per-second budget.
    pub suppressed_log_lines: u64,
    /// Answers to multicast requests held back for the Leisure period.
    pub multicast_answers: u64,
    /// Answers to multicast requests dropped because the queue was full.
    pub multicast_dropped: u64,
    /// Rescans of the firmware directory.
    pub rescans: u64,
    /// Rescans that changed the catalog.
    pub catalog_changes: u64,
    /// Observe notifications sent (RFC 7641), retransmissions included.
    pub notifications: u64,
}

impl Stats {
    /// Counts an answer by its outcome.
    pub(super) fn count(&mut self, outcome: &Outcome<'_>) {
        match outcome {
            Outcome::Block(_) | Outcome::File { .. } => self.blocks += 1,
            Outcome::Content => self.content += 1,
            Outcome::Error(_) | Outcome::EchoChallenge | Outcome::RateLimited => self.errors += 1,
            Outcome::Reset(_) => self.resets += 1,
        }
    }

    /// Counts a dropped request by its reason.
    pub(super) fn count_drop(&mut self, reason: Dropped) {
        match reason {
            Dropped::TooShort | Dropped::BadVersion | Dropped::Malformed => {
                self.dropped_malformed += 1
            }
            _ => self.dropped_other += 1,
        }
    }
}

/// The per-second budget of transfer lines at info: anyone can send
/// block-0 requests, and the log must not become the amplifier.
#[derive(Debug, Default)]
pub(super) struct LogBudget {
    /// The second the budget is for.
    second: u64,
    /// Lines logged in it.
    used: u32,
}

impl LogBudget {
    /// Logs the start and the end of a transfer while the budget of the
    /// current second lasts; counts the lines left out.
    pub(super) fn log_transfer(
        &mut self,
        from: SocketAddr,
        t: &Transfer<'_>,
        now_ms: u64,
        stats: &mut Stats,
    ) {
        if !(t.is_first() || t.is_last()) || !log_enabled!(Level::Info) {
            return;
        }
        let second = now_ms / 1000;
        if self.second != second {
            *self = LogBudget { second, used: 0 };
        }
        // A one-block body is both first and last: two lines.
        let lines = u32::from(t.is_first()) + u32::from(t.is_last());
        if self.used + lines <= TRANSFER_LINES_PER_SECOND {
            self.used += lines;
            log_transfer(from, t);
        } else {
            stats.suppressed_log_lines += u64::from(lines);
        }
    }
}

/// A peer address as an operator reads it: `::ffff:a.b.c.d` as `a.b.c.d`,
/// a link-local address with its zone by interface name.
pub(super) struct Shown(pub(super) SocketAddr);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::iface::Zoned(self.0).fmt(f)
    }
}

/// Info lines in the reference server's spirit: one when a device starts
/// a transfer, one when it fetches the last block.
fn log_transfer(from: SocketAddr, t: &Transfer<'_>) {
    let body = t.image.bytes.len().saturating_sub(t.offset as usize);
    let how = match t.via {
        Via::Legacy => "legacy",
        Via::ById => "by id",
    };
    if t.is_first() {
        info!(
            "{} starts {} v{} at offset {} ({body} bytes, {} B blocks, {how})",
            Shown(from),
            t.image.file_name,
            VersionText(t.image.version),
            t.offset,
            t.block.size(),
        );
    }
    if t.is_last() {
        info!(
            "{} fetched the last block of {} (block {}, {body} bytes from offset {})",
            Shown(from),
            t.image.file_name,
            t.block.num,
            t.offset
        );
    }
}

/// Per-reply detail at debug and trace.
pub(super) fn log_outcome(from: SocketAddr, outcome: &Outcome<'_>) {
    match outcome {
        Outcome::Reset(ResetReason::NoUpdate) => debug!("{} no update: RST", Shown(from)),
        other => trace!("{} reply {other:?}", Shown(from)),
    }
}

/// Debug detail of a request: path, options, payload in hex and the
/// decoded device request. Parsed a second time, only when debug is on.
pub(super) fn log_request(from: SocketAddr, datagram: &[u8]) {
    let Ok(msg) = Message::parse(datagram) else {
        debug!(
            "{} malformed datagram of {} bytes",
            Shown(from),
            datagram.len()
        );
        return;
    };
    let mut path = String::new();
    for segment in msg.path.iter() {
        path.push('/');
        path.push_str(&String::from_utf8_lossy(segment));
    }
    let query: Vec<_> = msg
        .query
        .as_slice()
        .iter()
        .map(|q| String::from_utf8_lossy(q))
        .collect();
    let device = match (path.as_str(), firmware::parse_payload(msg.payload)) {
        ("/updates", Ok(d)) => format!(
            " device pid={} type={} version={}{}",
            String::from_utf8_lossy(d.pid),
            d.fw_type,
            VersionText(d.version),
            d.offset.map(|o| format!(" offset={o}")).unwrap_or_default()
        ),
        _ => String::new(),
    };
    debug!(
        "{} {:?} {} mid={} token={} path={path} query={query:?} block2={:?} size2={:?} accept={:?} echo={} payload={}{device}",
        Shown(from),
        msg.mtype,
        msg.class(),
        msg.mid,
        Hex(msg.token),
        msg.block2,
        msg.size2,
        msg.accept,
        msg.echo.is_some(),
        Hex(msg.payload),
    );
}

/// Bytes as lowercase hex.
pub(super) struct Hex<'a>(pub(super) &'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The counters as one log line.
pub(super) struct StatsLine<'a>(pub(super) &'a Stats);

impl std::fmt::Display for StatsLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        write!(
            f,
            "stats: received {} sent {} blocks {} content {} errors {} resets {} dropped malformed {} other {} receive errors {} send errors {} log lines suppressed {} multicast answers {} dropped {} rescans {} catalog changes {} notifications {}",
            s.received, s.sent, s.blocks, s.content, s.errors, s.resets, s.dropped_malformed, s.dropped_other, s.receive_errors, s.send_errors, s.suppressed_log_lines, s.multicast_answers, s.multicast_dropped, s.rescans, s.catalog_changes, s.notifications
        )
    }
}
