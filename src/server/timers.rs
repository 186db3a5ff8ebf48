//! The loop's timer work and its cached deadline: held-back multicast
//! answers, DTLS timers, rescans of the watched sources, Observe
//! notifications, the counters' log line; and the one deadline, the
//! earliest of them, that a datagram is compared with.
//!
//! It never receives: the loop calls it when the deadline has passed, a
//! wait timed out, or a datagram off the fast path may have moved a timer.

use super::live::Live;
use super::reply::{notification_route, send};
#[cfg(feature = "dtls")]
use super::secure::flush;
use super::stats::{Shown, StatsLine};
use super::{Server, STATS_INTERVAL_MS};
use crate::sockio;
use log::{debug, info};

/// Notifications sent between two receives at most: a publish that
/// concerns a thousand observers must not keep the loop from requests
/// (nor overrun the socket's send buffer in one burst).
const NOTIFICATIONS_PER_TURN: usize = 32;

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

    /// Computes the cached deadline again from every timer.
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
        self.set_hurry(self.live.as_ref().is_some_and(Live::busy));
    }

    /// While a file is read in slices (`hurry`), a loop that blocks in its
    /// receive must not: its socket is made non-blocking, so that each
    /// turn reads a slice and then serves what datagrams came, and made
    /// blocking again after the last slice. Nothing on the per-datagram
    /// path looks at it.
    fn set_hurry(&mut self, hurry: bool) {
        if hurry == self.hurry {
            return;
        }
        self.hurry = hurry;
        if self.blocks_in_receive() {
            for socket in &self.sockets {
                if let Err(e) = socket.set_nonblocking(hurry) {
                    debug!("cannot make the socket (non-)blocking: {e}");
                }
            }
        }
    }

    /// Sends the Observe notifications owed at `now_ms`, at most
    /// [`NOTIFICATIONS_PER_TURN`]; the rest stay queued for the next turn,
    /// which the wait's timeout then makes immediate.
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
                // one (closed, evicted) the notification is not sent.
                let reply = self.tx.get(..n.len).unwrap_or(&[]);
                if let Some(secure) = self.dtls.as_mut() {
                    if secure.front.send(to, reply) {
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
