//! Building and configuring a [`Server`] before its loop runs: the
//! sockets and what is asked of the kernel for them, the watched
//! directories, multicast answers, the signal handlers, the start-up
//! checks, and the read-only accessors.
//!
//! Nothing here runs per datagram.

use super::leisure::Leisure;
use super::live::{read_fleet_files, Live};
use super::stats::{LogBudget, Stats};
use super::{Server, STATS_INTERVAL_MS};
use crate::service::{Service, MAX_REPLY_LEN, MAX_REQUEST_LEN};
use crate::sockio;
use log::warn;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Instant;

impl Server {
    /// Wraps a bound socket; both buffers are allocated here, once. Asks
    /// the kernel for each datagram's destination address, so that replies
    /// leave from it; where it refuses, warns and replies as `send_to`
    /// does (right on a socket bound to one address, maybe not on a
    /// wildcard one).
    pub fn new(socket: UdpSocket, service: Service) -> Server {
        let destinations = vec![enable_pktinfo(&socket)];
        let mut server = Server {
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
            blocking: false,
            trip_ms: 0,
            read_timeout_ms: 0,
            journal: None,
            fleet_log: Default::default(),
            inotify: true,
            #[cfg(feature = "dtls")]
            dtls: None,
        };
        // The read timeout that ends the first wait by the deadline.
        server.refresh_deadline();
        server
    }

    /// Watches without inotify from the next [`Server::watch`] on: every
    /// new or changed file is served once it has not changed for the
    /// settle time, as where inotify cannot see the writers (a network
    /// file system).
    pub fn without_inotify(&mut self) {
        self.inotify = false;
    }

    /// Watches `dir` (the directory the catalog was loaded from): rescans
    /// it every `rescan_ms` (0: only on SIGHUP and when a request misses)
    /// and admits a changed file once it has not changed for `settle_ms`.
    /// The rescan timer is one of the deadline's, which the wait ends by.
    ///
    /// # Errors
    /// None today; kept for callers that handle the socket set-up's.
    pub fn watch(&mut self, dir: PathBuf, rescan_ms: u64, settle_ms: u64) -> io::Result<()> {
        self.watch_dirs(Some(dir), rescan_ms, settle_ms)
    }

    /// As [`Server::watch`], with the catalog's directory optional (`None`:
    /// an empty catalog, nothing to rescan for it); the service's file
    /// tree, if it has one, is rescanned either way.
    ///
    /// # Errors
    /// None today; kept for callers that handle the socket set-up's.
    pub fn watch_dirs(
        &mut self,
        dir: Option<PathBuf>,
        rescan_ms: u64,
        settle_ms: u64,
    ) -> io::Result<()> {
        let live = Live::new(
            dir.clone(),
            self.service.tree(),
            rescan_ms,
            settle_ms,
            self.clock_ms(),
            self.inotify,
        );
        // The rollout policies and patches beside the images: read now,
        // before the first request, whole, as the catalog was (no settle
        // time); the rescans take changes from there.
        if let Some(dir) = &dir {
            let start = read_fleet_files(
                dir,
                self.service.fleet_files(),
                std::time::SystemTime::now(),
                &crate::snapshot::Admission::settle_only(std::time::Duration::ZERO),
            );
            for skipped in &start.skipped {
                log::warn!("{skipped}");
            }
            if let Some(error) = &start.error {
                log::warn!("{error}");
            }
            if let Some(next) = start.next {
                log::info!(
                    target: crate::logfmt::SUMMARY,
                    "fleet: {} rollout policies and {} patches from {}",
                    next.policies().len(),
                    next.patches().len(),
                    dir.display()
                );
                self.service.replace_fleet_files(next);
            }
        }
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
        self.refresh_deadline();
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

    /// The service, to set it up before serving (the fleet's clock).
    pub fn service_mut(&mut self) -> &mut Service {
        &mut self.service
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
/// send. True when the kernel gives each datagram's destination.
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
