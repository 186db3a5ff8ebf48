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
//! all sockets at once (`poll`) with a timeout that is the next held-back
//! multicast answer's due time (`leisure`); with one socket and no
//! multicast it blocks in `recvmsg`, as cheap as it gets.

mod leisure;
mod live;

use crate::firmware::{self, VersionText};
use crate::service::{
    Action, Arrival, Dropped, Notification, Outcome, Peer, ResetReason, Service, Transfer, Via,
    MAX_REPLY_LEN, MAX_REQUEST_LEN,
};
use crate::sockio::{self, LocalDest, Received};
use crate::tree::FileTree;
use crate::wire::Message;
use leisure::Leisure;
use live::Live;
use log::{debug, info, log_enabled, trace, warn, Level};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

/// The most listen sockets one server serves (`-l` given more often is a
/// usage error).
pub const MAX_SOCKETS: usize = sockio::MAX_SOCKETS;
/// The longest a blocking wait lasts while the directory is watched, so
/// that timers and signals are seen.
const WAKE_MS: u64 = 1000;
/// How often the counters are logged (at info, when anything changed).
const STATS_INTERVAL_MS: u64 = 300_000;
/// Transfer lines (start, last block) logged at info per second at most:
/// anyone can send block-0 requests, and the log must not become the
/// amplifier; the rest are counted in [`Stats::suppressed_log_lines`].
const TRANSFER_LINES_PER_SECOND: u32 = 20;
/// Notifications sent between two receives at most: a publish that
/// concerns a thousand observers must not keep the loop from requests
/// (nor overrun the socket's send buffer in one burst).
const NOTIFICATIONS_PER_TURN: usize = 32;

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
    /// The coaps socket's index and its DTLS sessions.
    #[cfg(feature = "dtls")]
    dtls: Option<Secure>,
}

/// The coaps side of the loop.
#[cfg(feature = "dtls")]
#[derive(Debug)]
struct Secure {
    /// Which of the sockets speaks DTLS.
    socket: usize,
    front: crate::dtls::Front,
    /// Reread on SIGHUP.
    psk_file: Option<PathBuf>,
    /// The address each session's cookie-bearing ClientHello was sent
    /// to: every record of the session leaves from it, also those sent
    /// on a timer (retransmitted flights, notifications, close_notify),
    /// as a plain reply leaves from its request's destination.
    local_dests: std::collections::HashMap<SocketAddr, LocalDest>,
}

impl Server {
    /// Wraps a bound socket; both buffers are allocated here, once. Asks
    /// the kernel for each datagram's destination address, so that replies
    /// leave from it; where it refuses, warns and replies as `send_to`
    /// does (right on a socket bound to one address, maybe not on a
    /// wildcard one).
    pub fn new(socket: UdpSocket, service: Service) -> Server {
        let destinations = vec![enable_pktinfo(&socket)];
        Server {
            sockets: vec![socket],
            destinations,
            service,
            // One byte more than the largest accepted request, so that a
            // datagram filling it, cut or not, is too long for the service
            // (which answers 4.13).
            rx: vec![0; MAX_REQUEST_LEN + 1],
            tx: vec![0; MAX_REPLY_LEN],
            started: Instant::now(),
            origin_ms: sockio::monotonic_ms(),
            stats: Stats::default(),
            log_budget: LogBudget::default(),
            now_ms: 0,
            deadline_ms: STATS_INTERVAL_MS,
            next_report_ms: STATS_INTERVAL_MS,
            reported: Stats::default(),
            leisure: Leisure::off(),
            live: None,
            poll_start: 0,
            #[cfg(feature = "dtls")]
            dtls: None,
        }
    }

    /// Serves socket `index` (from [`Server::new`] or
    /// [`Server::add_socket`]) over DTLS with `front`'s keys and sessions:
    /// coaps. `psk_file`, when given, is read again on SIGHUP. The loop then
    /// waits with `poll`, for the handshake timers.
    ///
    /// # Errors
    /// As `set_nonblocking`.
    #[cfg(feature = "dtls")]
    pub fn serve_dtls(
        &mut self,
        index: usize,
        front: crate::dtls::Front,
        psk_file: Option<PathBuf>,
    ) -> io::Result<()> {
        // Records are larger than the requests they carry.
        self.rx.resize(self.rx.len().max(2048), 0);
        self.dtls = Some(Secure {
            socket: index,
            front,
            psk_file,
            local_dests: std::collections::HashMap::new(),
        });
        self.refresh_deadline();
        self.sockets
            .iter()
            .try_for_each(|s| s.set_nonblocking(true))
    }

    /// The DTLS sessions, when coaps is served.
    #[cfg(feature = "dtls")]
    pub fn dtls_front(&self) -> Option<&crate::dtls::Front> {
        self.dtls.as_ref().map(|s| &s.front)
    }

    /// True when a socket speaks DTLS.
    fn secure(&self) -> bool {
        #[cfg(feature = "dtls")]
        return self.dtls.is_some();
        #[cfg(not(feature = "dtls"))]
        false
    }

    /// The DTLS socket's index.
    #[cfg(feature = "dtls")]
    fn secure_socket(&self) -> Option<usize> {
        self.dtls.as_ref().map(|s| s.socket)
    }

    /// When the next DTLS handshake timer is due.
    fn secure_timer_ms(&self) -> Option<u64> {
        #[cfg(feature = "dtls")]
        return self.dtls.as_ref().and_then(|s| s.front.next_timer_ms());
        #[cfg(not(feature = "dtls"))]
        None
    }

    /// Watches `dir` (the directory the catalog was loaded from): rescans
    /// it every `rescan_ms` (0: only on SIGHUP and when a request misses)
    /// and admits a changed file once it has not changed for `settle_ms`.
    /// A single socket gets a read timeout of `rescan_ms`, so that the
    /// blocking receive wakes for the timer.
    ///
    /// # Errors
    /// As `set_read_timeout`.
    pub fn watch(&mut self, dir: PathBuf, rescan_ms: u64, settle_ms: u64) -> io::Result<()> {
        self.watch_dirs(Some(dir), rescan_ms, settle_ms)
    }

    /// As [`Server::watch`], with the catalog's directory optional (`None`:
    /// an empty catalog, nothing to rescan for it); the service's file
    /// tree, if it has one, is rescanned either way.
    ///
    /// # Errors
    /// As `set_read_timeout`.
    pub fn watch_dirs(
        &mut self,
        dir: Option<PathBuf>,
        rescan_ms: u64,
        settle_ms: u64,
    ) -> io::Result<()> {
        let live = Live::new(
            dir,
            self.service.tree(),
            rescan_ms,
            settle_ms,
            self.clock_ms(),
        );
        // The blocking receive wakes at least once a second, for the timer
        // and for a signal that came just before it blocked.
        let wake_ms = match rescan_ms {
            0 => WAKE_MS,
            ms => ms.min(WAKE_MS),
        };
        let timeout = Some(Duration::from_millis(wake_ms));
        self.sockets
            .iter()
            .try_for_each(|s| s.set_read_timeout(timeout))?;
        self.live = Some(live);
        self.refresh_deadline();
        Ok(())
    }

    /// Serves `socket` too (a repeated `-l`). The loop then waits on all
    /// sockets with `poll`, and they are made non-blocking.
    ///
    /// # Errors
    /// As `set_nonblocking`.
    pub fn add_socket(&mut self, socket: UdpSocket) -> io::Result<()> {
        self.destinations.push(enable_pktinfo(&socket));
        self.sockets.push(socket);
        self.sockets
            .iter()
            .try_for_each(|s| s.set_nonblocking(true))
    }

    /// Answers requests that arrive by multicast after a random delay
    /// within `leisure_ms` (RFC 7252 §8.2), holding at most `capacity`
    /// answers at once; `seed` spreads the delays.
    ///
    /// # Errors
    /// As `set_nonblocking`.
    pub fn enable_multicast_answers(
        &mut self,
        leisure_ms: u64,
        capacity: usize,
        seed: u64,
    ) -> io::Result<()> {
        self.leisure = Leisure::new(leisure_ms, capacity, seed);
        self.refresh_deadline();
        self.sockets
            .iter()
            .try_for_each(|s| s.set_nonblocking(true))
    }

    /// The addresses of the sockets served.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The first socket's address (useful with port 0).
    ///
    /// # Errors
    /// As [`UdpSocket::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sockets
            .first()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
            .local_addr()
    }

    /// The instant the loop's millisecond clock counts from.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The protocol core, for inspection.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Serves until SIGTERM or SIGINT (installed here: the handlers only
    /// set flags), then logs the counters and returns.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn run(&mut self) -> io::Result<()> {
        sockio::install_signal_flags()?;
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
        match self.live.as_mut() {
            Some(live) => {
                self.stats.rescans += 1;
                if live.rescan(&mut self.service, "SIGHUP") {
                    self.stats.catalog_changes += 1;
                }
            }
            None => info!("SIGHUP: the directory is not watched (--rescan is off)"),
        }
        self.refresh_deadline();
    }

    /// Receives one datagram (blocking, or until the socket's read timeout)
    /// and answers it; the timer work (held-back multicast answers, rescans,
    /// notifications, DTLS timers, the counters' log line) runs first when
    /// the cached deadline has passed. Never fails: errors are counted and
    /// logged at debug.
    pub fn serve_one(&mut self) {
        let index = if self.sockets.len() == 1 && !self.leisure.is_on() && !self.secure() {
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
        if self.now_ms >= self.deadline_ms {
            self.on_timers(self.now_ms);
        }
        let Some(Received {
            len,
            from,
            dest,
            truncated,
        }) = received
        else {
            return;
        };
        #[cfg(feature = "dtls")]
        if self.secure_socket() == Some(index) {
            self.serve_secure(index, from, dest, len);
            return self.after_general(self.now_ms);
        }
        let source = peer(from);
        if self.serve_fast(index, from, source, dest, len) {
            return;
        }
        if self.serve_general(index, from, source, dest, len, truncated) {
            self.after_general(self.now_ms);
        }
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
            action => deliver(
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
            ),
        }
        true
    }

    /// A datagram of the plain sockets through `Service::handle_arrival`,
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
        let request = crate::service::Request::new(source, self.now_ms, datagram).arrived(arrival);
        let mut action = self.service.handle_request(&request, &mut self.tx);
        // Why to look at the directory before answering: the image asked
        // for may have been published since the last scan, or the file
        // behind a first block replaced since it was read.
        let rescan_for = match (self.live.as_mut(), &action) {
            (Some(live), action) if missed(action) => live
                .may_rescan_on_miss(settling, self.now_ms)
                .then_some("a request missed"),
            (Some(live), Action::Reply { outcome, .. }) => live
                .may_rescan_on_stale(outcome, self.now_ms)
                .then_some("a file changed"),
            _ => None,
        };
        let rescanned = rescan_for.is_some();
        if let (Some(why), Some(live)) = (rescan_for, self.live.as_mut()) {
            self.stats.rescans += 1;
            if live.rescan(&mut self.service, why) {
                self.stats.catalog_changes += 1;
            }
            // Answered from what is there now.
            action = self.service.handle_again(&request, &mut self.tx);
        }
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

    /// After a datagram off the fast path: it may have registered an
    /// observer, held back a multicast answer, rescanned (which changes
    /// what observers see) or moved a DTLS timer, so the deadline is
    /// computed again, and the timer work done at once when it is due
    /// (the notifications a rescan made owed among it).
    fn after_general(&mut self, now_ms: u64) {
        self.refresh_deadline();
        if now_ms >= self.deadline_ms {
            self.on_timers(now_ms);
        }
    }

    /// Computes the cached deadline again from every timer.
    fn refresh_deadline(&mut self) {
        self.deadline_ms = [
            self.leisure.next_due_ms(),
            self.live.as_ref().and_then(Live::next_due_ms),
            self.service.next_notification_ms(),
            self.secure_timer_ms(),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_report_ms, u64::min);
    }

    /// Sends the Observe notifications owed at `now_ms`, at most
    /// [`NOTIFICATIONS_PER_TURN`]; the rest stay queued for the next turn,
    /// which the wait's timeout then makes immediate.
    #[inline]
    fn send_notifications(&mut self, now_ms: u64) {
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
    fn on_timers(&mut self, now_ms: u64) {
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
        if let Some(live) = self.live.as_mut() {
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

#[cfg(feature = "dtls")]
impl Server {
    /// One datagram of the coaps socket: records into its session (or a
    /// HelloVerifyRequest for a ClientHello), every request they carried
    /// answered by the service with what the session's identity may fetch,
    /// the answers encrypted back.
    fn serve_secure(
        &mut self,
        index: usize,
        from: SocketAddr,
        dest: Option<LocalDest>,
        len: usize,
    ) {
        let now_ms = self.now_ms;
        let Some(secure) = self.dtls.as_mut() else {
            return;
        };
        let datagram = self.rx.get(..len).unwrap_or(&[]);
        let handled = secure.front.receive(from, now_ms, datagram);
        if handled == crate::dtls::Handled::Started {
            match dest {
                Some(dest) => secure.local_dests.insert(from, dest),
                None => secure.local_dests.remove(&from),
            };
        }
        match handled {
            crate::dtls::Handled::Connected => debug!(
                "{} coaps session established for identity '{}'",
                Shown(from),
                String::from_utf8_lossy(secure.front.identity(from).unwrap_or_default())
            ),
            crate::dtls::Handled::Failed => {
                debug!(
                    "{} coaps handshake or record failed: session removed",
                    Shown(from)
                )
            }
            crate::dtls::Handled::Closed => {
                debug!("{} coaps session closed by the peer", Shown(from))
            }
            other => trace!("{} coaps {other:?}", Shown(from)),
        }
        let requests = secure.front.take_requests();
        let authorization = secure
            .front
            .authorization(from)
            .cloned()
            .unwrap_or_default();
        for request in requests {
            if log_enabled!(Level::Debug) {
                log_request(from, &request);
            }
            let incoming = crate::service::Request::new(peer(from), now_ms, &request)
                .arrived(arrival(index, dest))
                .authorized(&authorization);
            let action = self.service.handle_request(&incoming, &mut self.tx);
            match action {
                Action::Reply { len, outcome } => {
                    self.stats.count(&outcome);
                    if let Outcome::Block(t) = &outcome {
                        self.log_budget
                            .log_transfer(from, t, now_ms, &mut self.stats);
                    }
                    log_outcome(from, &outcome);
                    let reply = self.tx.get(..len).unwrap_or(&[]);
                    secure.front.send(from, reply);
                }
                Action::Drop(reason) => {
                    self.stats.count_drop(reason);
                    trace!("{} dropped: {reason:?}", Shown(from));
                }
            }
        }
        flush(&self.sockets, secure, dest, &mut self.stats);
        self.send_notifications(now_ms);
    }

    /// SIGHUP: the PSK file read again; on an error the keys in use stay.
    fn reload_keys(&mut self) {
        let Some(secure) = self.dtls.as_mut() else {
            return;
        };
        let Some(path) = secure.psk_file.clone() else {
            return;
        };
        match crate::dtls::PskTable::read(&path) {
            Ok(keys) => {
                let count = keys.len();
                let ended = secure.front.replace_keys(keys);
                info!(
                    "SIGHUP: {count} PSK identities from {}{}",
                    path.display(),
                    if ended > 0 {
                        format!(", {ended} sessions of changed or removed identities ended")
                    } else {
                        String::new()
                    }
                );
                flush(&self.sockets, secure, None, &mut self.stats);
            }
            Err(e) => warn!("SIGHUP: {e}; the keys in use are kept"),
        }
    }

    /// Ends every session with close_notify (the server is stopping).
    fn close_sessions(&mut self) {
        if let Some(secure) = self.dtls.as_mut() {
            info!(
                target: crate::logfmt::SUMMARY,
                "{}",
                secure.front.stats()
            );
            secure.front.close_all();
            flush(&self.sockets, secure, None, &mut self.stats);
        }
    }
}

/// Sends the records the DTLS front has for its peers from the coaps
/// socket: from the address the session's handshake was sent to, else
/// from `dest` (the address of the datagram just received: a
/// HelloVerifyRequest's) when it is known.
#[cfg(feature = "dtls")]
fn flush(sockets: &[UdpSocket], secure: &mut Secure, dest: Option<LocalDest>, stats: &mut Stats) {
    let local_dests = &secure.local_dests;
    let socket = secure.socket;
    secure.front.drain_outgoing(|to, record| {
        let from = local_dests.get(&to).copied().or(dest);
        send(sockets, socket, record, to, from, stats);
    });
    // Sessions ended (closed, failed, timed out, evicted): their entries
    // go too. Checked by count, so that the usual flush costs nothing.
    if secure.local_dests.len() > secure.front.session_count() {
        let front = &secure.front;
        secure
            .local_dests
            .retain(|peer, _| front.has_session(*peer));
    }
}

/// Installs the SIGHUP, SIGTERM and SIGINT handlers (they only set flags
/// the loop reads). [`Server::run`] does it too; a caller may do it
/// earlier, so that a SIGHUP during a slow start-up does not end the
/// process.
///
/// # Errors
/// As `sigaction`.
pub fn install_signal_handlers() -> io::Result<()> {
    sockio::install_signal_flags()
}

/// Asks the kernel for each datagram's destination address, so that
/// replies leave from it; where it refuses, warns: replies then leave as
/// `send_to` sends them (right on a socket bound to one address, maybe not
/// on a wildcard one). A socket bound to one unicast address needs none of
/// it: it receives only what was sent to that address and sends from it,
/// and the packet info would cost a control message on every receive and
/// send.
/// True when the kernel gives each datagram's destination.
fn enable_pktinfo(socket: &UdpSocket) -> bool {
    if socket.local_addr().is_ok_and(bound_to_one_address) {
        return false;
    }
    match sockio::enable_pktinfo(socket) {
        Ok(()) => true,
        Err(e) => {
            warn!("cannot learn the destination address of requests ({e}): on a host with several addresses, replies may leave from another address than the one asked");
            false
        }
    }
}

/// True for a socket address naming one unicast address that is not
/// link-local: where a request arrived and which interface it came in on
/// are then known without asking (a link-local one keeps the packet info,
/// for the interface its peers' zones need).
fn bound_to_one_address(addr: SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_link_local())
        }
        IpAddr::V6(v6) => {
            let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
            let mapped = v6.to_ipv4_mapped();
            !(v6.is_unspecified() || v6.is_multicast() || link_local)
                && mapped.map_or(true, |v4| bound_to_one_address(SocketAddr::from((v4, 0))))
        }
    }
}

/// Sends `reply` to `to` from socket `index`, from the address the request
/// arrived at; a failure is counted and the loop goes on.
#[inline]
fn send(
    sockets: &[UdpSocket],
    index: usize,
    reply: &[u8],
    to: SocketAddr,
    dest: Option<LocalDest>,
    stats: &mut Stats,
) {
    let Some(socket) = sockets.get(index) else {
        return;
    };
    match sockio::send_from(socket, reply, to, dest) {
        Ok(_) => stats.sent += 1,
        Err(e) => {
            stats.send_errors += 1;
            debug!("{} send failed (ignored): {e}", Shown(to));
        }
    }
}

/// Where a reply goes and when it was asked for: what [`deliver`] needs
/// beside the answer.
#[derive(Debug, Clone, Copy)]
struct Reply {
    /// The socket the request arrived on.
    index: usize,
    from: SocketAddr,
    dest: Option<LocalDest>,
    arrival: Arrival,
    now_ms: u64,
}

/// Sends an answer (after the Leisure period, for a multicast request) and
/// does its bookkeeping: counters, the transfer lines at info, the
/// per-reply detail at trace.
#[allow(clippy::too_many_arguments)]
fn deliver(
    action: Action<'_>,
    to: Reply,
    sockets: &[UdpSocket],
    tx: &[u8],
    stats: &mut Stats,
    log_budget: &mut LogBudget,
    leisure: &mut Leisure,
) {
    let Reply {
        index,
        from,
        dest,
        arrival,
        now_ms,
    } = to;
    match action {
        Action::Reply { len, outcome } => {
            stats.count(&outcome);
            if let Outcome::Block(t) = &outcome {
                log_budget.log_transfer(from, t, now_ms, stats);
            }
            log_outcome(from, &outcome);
            let reply = tx.get(..len).unwrap_or(&[]);
            if !arrival.multicast {
                send(sockets, index, reply, from, dest, stats);
            } else if leisure.schedule(now_ms, index, from, dest, reply) {
                stats.multicast_answers += 1;
            } else {
                stats.multicast_dropped += 1;
            }
        }
        Action::Drop(reason) => {
            stats.count_drop(reason);
            trace!("{} dropped: {reason:?}", Shown(from));
        }
    }
}

/// A multicast group address, IPv4, IPv6 or IPv4-mapped.
fn is_multicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_multicast(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_multicast(), |v4| v4.is_multicast()),
    }
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

/// Where a notification goes and the address it leaves from, in the form
/// the socket uses (an IPv4 socket takes IPv4 addresses, a dual-stack one
/// IPv4-mapped IPv6); a link-local observer gets the zone of the interface
/// its registration arrived on.
fn notification_route(n: &Notification, ipv4_socket: bool) -> (SocketAddr, Option<LocalDest>) {
    let ip = Ipv6Addr::from(n.peer.ip);
    let to = match ip.to_ipv4_mapped() {
        Some(v4) if ipv4_socket => SocketAddr::new(IpAddr::V4(v4), n.peer.port),
        _ => {
            // fe80::/10 (`is_unicast_link_local` is newer than our MSRV).
            let scope = if ip.segments()[0] & 0xffc0 == 0xfe80 {
                n.arrival.ifindex
            } else {
                0
            };
            SocketAddr::V6(SocketAddrV6::new(ip, n.peer.port, 0, scope))
        }
    };
    let dest = n.arrival.local.map(|local| {
        let local = Ipv6Addr::from(local);
        let addr = match local.to_ipv4_mapped() {
            Some(v4) if ipv4_socket => IpAddr::V4(v4),
            _ => IpAddr::V6(local),
        };
        LocalDest {
            addr,
            ifindex: n.arrival.ifindex,
        }
    });
    (to, dest)
}

/// What the service needs of where a datagram arrived.
fn arrival(socket: usize, dest: Option<LocalDest>) -> Arrival {
    let Some(dest) = dest else {
        return Arrival {
            socket,
            ..Arrival::default()
        };
    };
    Arrival {
        multicast: is_multicast(dest.addr),
        ifindex: dest.ifindex,
        socket,
        local: Some(match dest.addr {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }),
    }
}

impl Stats {
    fn count(&mut self, outcome: &Outcome<'_>) {
        match outcome {
            Outcome::Block(_) | Outcome::File { .. } => self.blocks += 1,
            Outcome::Content => self.content += 1,
            Outcome::Error(_) | Outcome::EchoChallenge | Outcome::RateLimited => self.errors += 1,
            Outcome::Reset(_) => self.resets += 1,
        }
    }

    fn count_drop(&mut self, reason: Dropped) {
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
struct LogBudget {
    /// The second the budget is for.
    second: u64,
    /// Lines logged in it.
    used: u32,
}

impl LogBudget {
    /// Logs the start and the end of a transfer while the budget of the
    /// current second lasts; counts the lines left out.
    fn log_transfer(&mut self, from: SocketAddr, t: &Transfer<'_>, now_ms: u64, stats: &mut Stats) {
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

/// The peer as the service sees it: IPv4 as IPv4-mapped IPv6.
fn peer(addr: SocketAddr) -> Peer {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Peer {
        ip: ip.octets(),
        port: addr.port(),
    }
}

/// A peer address as an operator reads it: `::ffff:a.b.c.d` as `a.b.c.d`,
/// a link-local address with its zone by interface name.
struct Shown(SocketAddr);

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
fn log_outcome(from: SocketAddr, outcome: &Outcome<'_>) {
    match outcome {
        Outcome::Reset(ResetReason::NoUpdate) => debug!("{} no update: RST", Shown(from)),
        other => trace!("{} reply {other:?}", Shown(from)),
    }
}

/// Debug detail of a request: path, options, payload in hex and the
/// decoded device request. Parsed a second time, only when debug is on.
fn log_request(from: SocketAddr, datagram: &[u8]) {
    let Ok(msg) = Message::parse(datagram) else {
        debug!(
            "{} malformed datagram of {} bytes",
            Shown(from),
            datagram.len()
        );
        return;
    };
    let mut path = String::new();
    for segment in msg.path.as_slice() {
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
struct Hex<'a>(&'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The counters as one log line.
struct StatsLine<'a>(&'a Stats);

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

/// Warns once when an IPv6 wildcard socket may not accept IPv4 (the
/// `net.ipv6.bindv6only` sysctl set to 1).
pub fn check_dual_stack(addr: SocketAddr) {
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        if let Ok(v) = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only") {
            if v.trim() == "1" {
                warn!("net.ipv6.bindv6only is 1: {addr} serves IPv6 only; use -l 0.0.0.0:PORT for IPv4");
            }
        }
    }
}
