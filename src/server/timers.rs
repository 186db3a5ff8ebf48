//! The loop's timer work and its cached deadline: held-back multicast
//! answers, DTLS timers, rescans of the watched sources, Observe
//! notifications, the counters' log line; and the one deadline, the
//! earliest of them, that a datagram is compared with.
//!
//! It never receives: the loop calls it when the deadline has passed, a
//! wait timed out, or a datagram off the fast path may have moved a timer.
//! Whenever the deadline is computed again, the next wait is fitted to it
//! ([`Server::fit_wait`]): the only socket's read timeout ends a blocking
//! receive by the deadline, and timer work owed at once (notifications
//! left over from a turn) makes the next wait a look without waiting.

use super::live::Live;
use super::reply::{notification_route, send};
#[cfg(feature = "dtls")]
use super::secure::flush;
use super::stats::{Shown, StatsLine};
use super::{Server, STATS_INTERVAL_MS, WAIT_SLACK_MS, WAKE_MS};
use crate::sockio;
use log::{debug, info};
use std::time::Duration;

/// Notifications sent per timer run at most (a turn runs the timers at
/// most twice: before its wait and after its datagram): a publish that
/// concerns thousands of observers must not keep the loop from requests
/// (nor overrun the socket's send buffer in one burst). The rest go out in
/// the next turns, which do not wait for a datagram meanwhile: 1,024
/// observers are told within a few milliseconds.
const NOTIFICATIONS_PER_TURN: usize = 32;
/// The shortest read timeout of the blocking receive: one more than
/// [`WAIT_SLACK_MS`], so that the check after each datagram trips whenever
/// the deadline has passed.
const MIN_WAIT_MS: u64 = WAIT_SLACK_MS + 1;

impl Server {
    /// When the next DTLS handshake timer is due.
    fn secure_timer_ms(&self) -> Option<u64> {
        #[cfg(feature = "dtls")]
        return self.dtls.as_ref().and_then(|s| s.front.next_timer_ms());
        #[cfg(not(feature = "dtls"))]
        None
    }

    /// After a datagram off the fast path: it may have registered an
    /// observer, held back a multicast answer, rescanned (which changes
    /// what observers see) or moved a DTLS timer, so the deadline is
    /// computed again, and the timer work done at once when it is due
    /// (the notifications a rescan made owed among it).
    pub(super) fn after_general(&mut self, now_ms: u64) {
        self.refresh_deadline();
        if now_ms >= self.deadline_ms {
            self.on_timers(now_ms);
        }
    }

    /// Computes the cached deadline again from every timer, and fits the
    /// next wait to it.
    pub(super) fn refresh_deadline(&mut self) {
        self.deadline_ms = [
            self.leisure.next_due_ms(),
            self.live.as_ref().and_then(Live::wake_ms),
            self.service.next_notification_ms(),
            self.secure_timer_ms(),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_report_ms, u64::min);
        self.fit_wait();
    }

    /// After a datagram, when the deadline has passed (the timer work) or
    /// the next blocking receive would overrun it (its read timeout set
    /// again).
    #[inline(never)]
    pub(super) fn on_deadline(&mut self, now_ms: u64) {
        if now_ms >= self.deadline_ms {
            self.on_timers(now_ms);
        } else {
            self.fit_wait();
        }
    }

    /// Fits the next wait to the deadline. With one plain socket and no
    /// multicast, a blocking receive whose read timeout is half of what is
    /// left until the deadline (at least [`MIN_WAIT_MS`], at most
    /// [`WAKE_MS`]), set only when it changes, and fitted again when it
    /// runs out or, on a busy server, when the deadline comes closer than
    /// it less [`WAIT_SLACK_MS`]: a few `setsockopt` per deadline rather
    /// than one per [`WAIT_SLACK_MS`], and a timer at most that late. When
    /// the deadline has already passed (timer work left over, e.g.
    /// notifications beyond one turn's share), no blocking: the next turn
    /// runs the timers and looks for a datagram with `poll` and no
    /// timeout. With several sockets, multicast or coaps, `poll` with the
    /// deadline as its timeout, as always.
    #[inline(never)]
    pub(super) fn fit_wait(&mut self) {
        let single = self.blocks_in_receive();
        let left = self.deadline_ms.saturating_sub(self.clock_ms());
        self.blocking = false;
        self.trip_ms = self.deadline_ms;
        if !single || left == 0 {
            return;
        }
        let want = (left / 2).clamp(MIN_WAIT_MS, WAKE_MS);
        if want != self.read_timeout_ms {
            let Some(socket) = self.sockets.first() else {
                return;
            };
            if let Err(e) = socket.set_read_timeout(Some(Duration::from_millis(want))) {
                // `poll` with the deadline as timeout does as well.
                debug!("cannot set the read timeout ({e}); waiting with poll");
                return;
            }
            self.read_timeout_ms = want;
        }
        self.blocking = true;
        // `want` is above WAIT_SLACK_MS: never after the deadline.
        self.trip_ms = self
            .deadline_ms
            .saturating_add(WAIT_SLACK_MS + 1)
            .saturating_sub(want);
    }

    /// Sends the Observe notifications owed at `now_ms`, at most
    /// [`NOTIFICATIONS_PER_TURN`]; the rest stay queued for the next turn,
    /// which then does not wait for a datagram (the deadline stays passed).
    #[inline]
    pub(super) fn send_notifications(&mut self, now_ms: u64) {
        if self
            .service
            .next_notification_ms()
            .is_some_and(|due| due <= now_ms)
        {
            self.send_due_notifications(now_ms);
        }
    }

    /// The part of [`Server::send_notifications`] that runs when some are
    /// due: kept out of line, so that the check stays cheap.
    #[inline(never)]
    fn send_due_notifications(&mut self, now_ms: u64) {
        for _ in 0..NOTIFICATIONS_PER_TURN {
            let Some(n) = self.service.poll_notification(now_ms, &mut self.tx) else {
                break;
            };
            let Some(socket) = self.sockets.get(n.arrival.socket) else {
                continue;
            };
            let ipv4_socket = socket.local_addr().is_ok_and(|a| a.is_ipv4());
            let (to, dest) = notification_route(&n, ipv4_socket);
            #[cfg(feature = "dtls")]
            if self.secure_socket() == Some(n.arrival.socket) {
                // An observer over coaps hears over its session; without
                // one (closed, evicted), or for /status without the right
                // (a SIGHUP took it away), the notification is not sent;
                // the observation ends with the first Confirmable one that
                // goes unacknowledged.
                let reply = self.tx.get(..n.len).unwrap_or(&[]);
                if let Some(secure) = self.dtls.as_mut() {
                    let allowed = !n.of_status
                        || secure
                            .front
                            .authorization(to)
                            .is_some_and(crate::service::Authorization::reads_status);
                    if allowed && secure.front.send(to, reply) {
                        self.stats.notifications += 1;
                    }
                    flush(&self.sockets, secure, dest, &mut self.stats);
                }
                continue;
            }
            debug!(
                "{} notification ({}{})",
                Shown(to),
                if n.confirmable { "CON" } else { "NON" },
                if n.last { ", last" } else { "" }
            );
            let reply = self.tx.get(..n.len).unwrap_or(&[]);
            send(
                &self.sockets,
                n.arrival.socket,
                reply,
                to,
                dest,
                &mut self.stats,
            );
            self.stats.notifications += 1;
        }
    }

    /// The timer work: sends the held-back multicast answers that are due,
    /// runs the DTLS timers, rescans the directory when its timer is due,
    /// sends the notifications owed, logs the counters every
    /// [`STATS_INTERVAL_MS`] when they changed; then computes the deadline
    /// again. Kept out of the per-datagram path: called when the deadline
    /// has passed or a wait timed out.
    #[inline(never)]
    pub(super) fn on_timers(&mut self, now_ms: u64) {
        self.service.set_now(now_ms);
        self.send_due_answers(now_ms);
        #[cfg(feature = "dtls")]
        if let Some(secure) = self.dtls.as_mut() {
            if secure
                .front
                .next_timer_ms()
                .is_some_and(|due| due <= now_ms)
            {
                secure.front.on_timers(now_ms);
                flush(&self.sockets, secure, None, &mut self.stats);
            }
        }
        if sockio::take_files_changed() {
            self.on_files_changed();
        }
        if let Some(live) = self.live.as_mut() {
            if live.busy() && live.read_slice(&mut self.service) {
                self.stats.catalog_changes += 1;
            }
            self.service.expire_versions(now_ms);
            if live.next_due_ms().is_some_and(|due| now_ms >= due) {
                self.stats.rescans += 1;
                if live.on_timer(&mut self.service, now_ms) {
                    self.stats.catalog_changes += 1;
                }
                // An edited policy may have resumed a rollout; /status
                // observers are compared once a period.
                self.fleet_events();
                self.service.notice_fleet_changes();
            }
        }
        self.send_notifications(now_ms);
        if now_ms >= self.next_report_ms {
            if self.stats != self.reported {
                info!("{}", StatsLine(&self.stats));
                self.reported = self.stats;
            }
            self.next_report_ms = now_ms.saturating_add(STATS_INTERVAL_MS);
        }
        self.refresh_deadline();
    }

    /// Sends the held-back multicast answers whose time has come.
    fn send_due_answers(&mut self, now: u64) {
        while let Some(due) = self.leisure.take_due(now) {
            send(
                &self.sockets,
                due.socket,
                due.bytes,
                due.to,
                due.dest,
                &mut self.stats,
            );
        }
    }
}
