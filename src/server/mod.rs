//! The socket loop: the only module with a socket, a clock and log lines.
//!
//! One blocking [`UdpSocket`], one receive and one send buffer allocated
//! before the first datagram, and [`Service::handle`] in between. Every
//! error the kernel can return from a receive or a send is counted and the
//! loop goes on: an ICMP port unreachable for an earlier reply can surface
//! as `ECONNREFUSED` on a later `recv_from` or `send_to` (Linux reports it on
//! connected sockets and with IP_RECVERR, other systems on any socket), a
//! send can fail with unreachable hosts or full buffers, a call can be
//! interrupted; a device that vanished mid-download must not stop the others.
//!
//! Each reply leaves from the address its request was sent to (RFC 7252
//! §5.3.2), also on a wildcard socket of a host with several addresses,
//! where `send_to` would let the kernel pick another: `sockio` receives
//! the destination with the datagram and sends from it. A socket bound to
//! one unicast address (not link-local) has one source only, and is
//! served with the plain `recvfrom` and `sendto`.
//!
//! With several listen sockets, or with multicast on, the loop waits on
//! all sockets at once (`poll`) with a timeout that is the cached deadline
//! (`timers`); with one socket and no multicast it blocks in `recvmsg`, as
//! cheap as it gets, with a read timeout that ends the wait by that
//! deadline, and skips the wait while timer work is owed at once (a
//! change concerning more observers than one turn notifies, a published
//! file read in slices, one per turn): `poll` with no timeout then says
//! whether a datagram waits, so that the timer work and the requests
//! interleave. inotify's events interrupt the blocking wait (SIGIO), so a
//! file a writer closed is taken in before the next datagram, and the
//! per-block path pays nothing for the watching.
//!
//! This file holds the [`Server`] and its loop: receiving, the fast and
//! the general path. The rest, one
//! concern a file: `setup` (building and configuring a server, the
//! start-up checks), `reply` (sending from the right address, the
//! bookkeeping of an answer), `stats` (the counters and every log line's
//! text), `timers` (the timer work and the cached deadline), `secure`
//! (the coaps glue, with the `dtls` feature only),
//! `leisure` (held-back multicast answers) and `live` (the watched
//! sources). It never encodes or decides a CoAP answer: the service does.

mod fleet;
mod leisure;
mod live;
mod reply;
#[cfg(feature = "dtls")]
mod secure;
mod setup;
mod stats;
mod timers;

use crate::service::{
    Action, BlockSent, Held, Outcome, Peer, Request, ResetReason, Service, Transfer,
};
use crate::sockio::{self, LocalDest, Received};
use crate::tree::FileTree;
use leisure::Leisure;
use live::Live;
use log::{debug, info, log_enabled, trace, Level};
pub use reply::peer;
use reply::{arrival, deliver, is_multicast, send, Reply};
#[cfg(feature = "dtls")]
use secure::Secure;
pub use setup::{check_dual_stack, install_signal_handlers};
pub use stats::Stats;
use stats::{log_request, Hex, LogBudget, Shown, StatsLine};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

/// The most listen sockets one server serves (`-l` given more often is a
/// usage error).
pub const MAX_SOCKETS: usize = sockio::MAX_SOCKETS;
/// The longest a blocking receive lasts, so that a signal that came just
/// before it blocked is seen within this time.
const WAKE_MS: u64 = 1000;
/// How late past the deadline the blocking receive of the only socket may
/// return: a timer fires at most this late (notifications owed at once
/// are not concerned: they skip the wait).
const WAIT_SLACK_MS: u64 = 50;
/// How often the counters are logged (at info, when anything changed).
const STATS_INTERVAL_MS: u64 = 300_000;

/// The server: socket, buffers, service and counters.
#[derive(Debug)]
pub struct Server {
    sockets: Vec<UdpSocket>,
    /// Per socket: the kernel gives each datagram's destination (packet
    /// info), received with `recvmsg`; else `recvfrom` is enough.
    destinations: Vec<bool>,
    service: Service,
    rx: Vec<u8>,
    tx: Vec<u8>,
    started: Instant,
    /// [`sockio::monotonic_ms`] at `started`: the loop's clock counts from
    /// it.
    origin_ms: u64,
    stats: Stats,
    log_budget: LogBudget,
    /// Milliseconds since start at the last received datagram.
    now_ms: u64,
    /// The earliest time any timer wants the loop (rescans, held-back
    /// multicast answers, notifications, DTLS timers, the counters' log
    /// line): `u64::MAX` for none. Kept up to date whenever a timer may
    /// have moved (timer work, a datagram off the fast path, a signal), so
    /// that a datagram costs one comparison with it instead of a look at
    /// every timer, as smoltcp's `poll_at`.
    deadline_ms: u64,
    /// When the counters are next logged, if they changed.
    next_report_ms: u64,
    /// The counters as last logged.
    reported: Stats,
    /// Held-back answers to multicast requests.
    leisure: Leisure,
    /// The firmware directory, when it is watched for changes.
    live: Option<Live>,
    /// Where the next wait on several sockets starts looking.
    poll_start: usize,
    /// The next wait is a blocking receive on the only socket (no
    /// multicast, no coaps, no timer work owed at once); else `poll`.
    blocking: bool,
    /// From when a datagram's time calls for [`Server::on_deadline`]: the
    /// deadline itself, or earlier by what the next blocking receive would
    /// overrun it by (its read timeout, less [`WAIT_SLACK_MS`]); computed
    /// with the deadline, so that a datagram costs one comparison.
    trip_ms: u64,
    /// The only socket's read timeout as last set, in ms (0: none).
    read_timeout_ms: u64,
    /// With `--state-dir`: the fleet's journal.
    journal: Option<crate::state::Journal>,
    /// The per-second budget of the fleet's device lines.
    fleet_log: fleet::FleetLog,
    /// Whether [`Server::watch`] uses inotify.
    inotify: bool,
    /// The coaps socket's index and its DTLS sessions.
    #[cfg(feature = "dtls")]
    dtls: Option<Secure>,
}

impl Server {
    /// True when a socket speaks DTLS.
    fn secure(&self) -> bool {
        #[cfg(feature = "dtls")]
        return self.dtls.is_some();
        #[cfg(not(feature = "dtls"))]
        false
    }

    /// Serves until SIGTERM or SIGINT (installed here: the handlers only
    /// set flags), then logs the counters and returns.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn run(&mut self) -> io::Result<()> {
        sockio::install_signal_flags()?;
        if let Some(live) = self.live.as_ref() {
            live.claim_signals();
        }
        loop {
            if sockio::terminating() {
                #[cfg(feature = "dtls")]
                self.close_sessions();
                info!(
                    target: crate::logfmt::SUMMARY,
                    "stopping on a signal; {}",
                    StatsLine(&self.stats)
                );
                return Ok(());
            }
            if sockio::take_hangup() {
                self.on_hangup();
                // A SIGTERM that came during the rescan must not wait for
                // the next datagram.
                continue;
            }
            self.serve_one();
        }
    }

    /// SIGHUP: rescan now, and read the PSK file again.
    fn on_hangup(&mut self) {
        #[cfg(feature = "dtls")]
        self.reload_keys();
        self.service.set_now(self.clock_ms());
        match self.live.as_mut() {
            Some(live) => {
                self.stats.rescans += 1;
                if live.rescan(&mut self.service, "SIGHUP") {
                    self.stats.catalog_changes += 1;
                }
            }
            None => info!("SIGHUP: the directory is not watched (--rescan is off)"),
        }
        // The notifications a change made owed are due at once: the next
        // turn sends them before it waits.
        self.fleet_events();
        self.refresh_deadline();
    }

    /// Whether the loop blocks in the receive of its one socket (no
    /// multicast, no coaps) rather than waiting with `poll`.
    #[inline]
    fn blocks_in_receive(&self) -> bool {
        self.sockets.len() == 1 && !self.leisure.is_on() && !self.secure()
    }

    /// SIGIO: inotify has events; a file a writer closed is taken in now,
    /// before the next datagram that could ask for it. Looked at when the
    /// receive was interrupted (as SIGIO does), before a request off the
    /// fast path, and with the timers: a later block of a download, which
    /// the fast path answers, never needs a new file.
    fn on_files_changed(&mut self) {
        let now_ms = self.clock_ms();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        self.service.set_now(now_ms);
        let mut changed = false;
        if live.on_files_changed(&mut self.service, &mut changed) {
            self.stats.rescans += 1;
            self.stats.catalog_changes += u64::from(changed);
        }
        self.refresh_deadline();
    }

    /// Receives one datagram (blocking, or until the socket's read timeout)
    /// and answers it; the timer work (held-back multicast answers, rescans,
    /// notifications, DTLS timers, the counters' log line) runs first when
    /// the cached deadline has passed. Never fails: errors are counted and
    /// logged at debug.
    pub fn serve_one(&mut self) {
        let index = if self.blocking {
            0
        } else {
            let now = self.clock_ms();
            if now >= self.deadline_ms {
                self.on_timers(now);
            }
            let timeout = match self.deadline_ms {
                u64::MAX => self.live.as_ref().map(|_| WAKE_MS),
                due => Some(due.saturating_sub(now)),
            };
            // Start the scan after the socket served last, so that a flood
            // on one socket cannot starve the others.
            self.poll_start = self.poll_start.wrapping_add(1);
            match sockio::wait_readable(&self.sockets, timeout, self.poll_start) {
                Some(index) => index,
                None => return self.on_timers(self.clock_ms()),
            }
        };
        let received = self.receive(index);
        // One clock read per datagram, shared by the timers and the service.
        self.now_ms = self.clock_ms();
        // One comparison: the deadline passed, or the next blocking receive
        // would wait past it.
        if self.now_ms >= self.trip_ms {
            self.on_deadline(self.now_ms);
        }
        let Some(Received {
            len,
            from,
            dest,
            truncated,
        }) = received
        else {
            // Interrupted (SIGIO: inotify has news): what a rescan made
            // owed (notifications) goes out now, not after the next
            // datagram. Else a read timeout, which ends at half of what
            // was left: wait again, for what is left now.
            if sockio::take_files_changed() {
                self.on_files_changed();
                self.after_general(self.clock_ms());
            } else if self.blocking {
                self.fit_wait();
            }
            return;
        };
        #[cfg(feature = "dtls")]
        if self.secure_socket() == Some(index) {
            self.serve_secure(index, from, dest, len);
            self.fleet_events();
            return self.after_general(self.now_ms);
        }
        let source = peer(from);
        if self.serve_fast(index, from, source, dest, len) {
            return;
        }
        if self.serve_general(index, from, source, dest, len, truncated) {
            self.after_general(self.now_ms);
        }
        self.fleet_events();
    }

    /// The fast path (`Service::handle_block`) for a unicast datagram of
    /// the plain sockets, while debug logging (which shows every request)
    /// is off; false when the datagram needs the general path. A block in
    /// the middle of a body costs a counter and a send; the rest of what it
    /// may answer (the last block, which is logged, a 4.29, an Echo
    /// challenge) goes through the general path's bookkeeping. Nothing it
    /// answers moves a timer, a rescan or a notification: the deadline
    /// stays as it is.
    #[inline]
    fn serve_fast(
        &mut self,
        index: usize,
        from: SocketAddr,
        source: Peer,
        dest: Option<LocalDest>,
        len: usize,
    ) -> bool {
        if dest.is_some_and(|d| is_multicast(d.addr)) || log_enabled!(Level::Debug) {
            return false;
        }
        let datagram = self.rx.get(..len).unwrap_or(&[]);
        let Some(action) = self
            .service
            .handle_block(source, self.now_ms, datagram, &mut self.tx)
        else {
            return false;
        };
        match action {
            Action::Reply {
                len,
                outcome: Outcome::Block(t),
            } if !t.is_last() => {
                self.stats.blocks += 1;
                let reply = self.tx.get(..len).unwrap_or(&[]);
                send(&self.sockets, index, reply, from, dest, &mut self.stats);
            }
            action => {
                // The last block: the fleet counts a whole download.
                let last = match &action {
                    Action::Reply {
                        outcome: Outcome::Block(t),
                        ..
                    } => Some(BlockSent::of(t)),
                    _ => None,
                };
                deliver(
                    action,
                    Reply {
                        index,
                        from,
                        dest,
                        arrival: arrival(index, dest),
                        now_ms: self.now_ms,
                    },
                    &self.sockets,
                    &self.tx,
                    &mut self.stats,
                    &mut self.log_budget,
                    &mut self.leisure,
                );
                if let Some(last) = last {
                    self.service.note_block(source, last, self.now_ms);
                    self.fleet_events();
                }
            }
        }
        true
    }

    /// A datagram of the plain sockets through `Service::handle_request`,
    /// with a rescan first when it missed or found a replaced file. True
    /// when it may have moved a timer: it rescanned (which changes what
    /// observers see), was sent to a group (its answer is held back), or
    /// there are observers (it may have registered or ended one, or
    /// acknowledged a notification). Anything else changes no timer.
    fn serve_general(
        &mut self,
        index: usize,
        from: SocketAddr,
        source: Peer,
        dest: Option<LocalDest>,
        len: usize,
        truncated: bool,
    ) -> bool {
        // A writer's close that came with this datagram is seen first: the
        // request after `cp` returned gets the file.
        if sockio::take_files_changed() {
            self.on_files_changed();
        }
        let datagram = self.rx.get(..len).unwrap_or(&[]);
        if truncated {
            trace!("{} datagram cut at {len} bytes", Shown(from));
        }
        if log_enabled!(Level::Debug) {
            log_request(from, datagram);
        }
        let arrival = arrival(index, dest);
        let settling = self.service.catalog().has_pending()
            || self.service.tree().is_some_and(FileTree::has_pending);
        let request = Request::new(source, self.now_ms, datagram).arrived(arrival);
        let mut action = self.service.handle_request(&request, &mut self.tx);
        let rescan_for = rescan_reason(self.live.as_mut(), &action, settling, self.now_ms);
        let rescanned = rescan_for.is_some();
        if let (Some(why), Some(live)) = (rescan_for, self.live.as_mut()) {
            self.stats.rescans += 1;
            if live.rescan(&mut self.service, why) {
                self.stats.catalog_changes += 1;
            }
            // Answered from what is there now.
            action = self.service.handle_again(&request, &mut self.tx);
        }
        log_held(from, &action);
        deliver(
            action,
            Reply {
                index,
                from,
                dest,
                arrival,
                now_ms: self.now_ms,
            },
            &self.sockets,
            &self.tx,
            &mut self.stats,
            &mut self.log_budget,
            &mut self.leisure,
        );
        rescanned || arrival.multicast || self.service.observer_count() > 0
    }

    /// Milliseconds since start.
    fn clock_ms(&self) -> u64 {
        sockio::monotonic_ms().saturating_sub(self.origin_ms)
    }

    /// The next datagram of socket `index`, or `None` after a timeout, an
    /// interruption or a counted receive error.
    fn receive(&mut self, index: usize) -> Option<Received> {
        let socket = self.sockets.get(index)?;
        let received = match self.destinations.get(index) {
            Some(true) => sockio::recv_with_dest(socket, &mut self.rx),
            _ => sockio::recv_plain(socket, &mut self.rx),
        };
        match received {
            Ok(received) => {
                self.stats.received += 1;
                Some(received)
            }
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) {
                    self.stats.receive_errors += 1;
                    debug!("receive error (ignored): {e}");
                }
                None
            }
        }
    }
}

/// Why to look at the directories before answering `action`, if at all:
/// the image or file asked for may have been published since the last
/// scan (a miss), or the file behind a first block replaced since it was
/// read. `settling`: a new file was still settling at the last scan.
/// Shared by the plain and the coaps requests.
fn rescan_reason(
    live: Option<&mut Live>,
    action: &Action<'_>,
    settling: bool,
    now_ms: u64,
) -> Option<&'static str> {
    match (live, action) {
        (Some(live), action) if missed(action) => live
            .may_rescan_on_miss(settling, now_ms)
            .then_some("a request missed"),
        (Some(live), Action::Reply { outcome, .. }) => live
            .may_rescan_on_stale(outcome, now_ms)
            .then_some("a file changed"),
        _ => None,
    }
}

/// Logs a download held on the version it began with, at its first block
/// served from that version (the file or image was replaced since).
pub(super) fn log_held(from: SocketAddr, action: &Action<'_>) {
    let Action::Reply { outcome, .. } = action else {
        return;
    };
    let (what, etag) = match outcome {
        Outcome::File {
            file,
            held: Held::First,
            ..
        } => (format!("file {}", file.path), &file.etag),
        Outcome::Block(Transfer {
            image,
            held: Held::First,
            ..
        }) => (format!("image {}", image.file_name), &image.etag),
        _ => return,
    };
    info!(
        "{} download of {what} held on the version it began with (ETag {}): it was replaced \
         since; new downloads get the new version",
        Shown(from),
        Hex(etag)
    );
}

/// A request that found nothing (no image with its id, no newer image) or
/// an image still settling: a live catalog rescans before answering it, so
/// a file published since the last scan, or settled since, is served
/// even with timed rescans off.
fn missed(action: &Action<'_>) -> bool {
    matches!(
        action,
        Action::Reply {
            outcome: Outcome::Error(
                coap_lite::ResponseType::NotFound | coap_lite::ResponseType::ServiceUnavailable
            ) | Outcome::Reset(ResetReason::NoUpdate),
            ..
        }
    )
}
