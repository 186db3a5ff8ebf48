//! Sending an answer from the right address, and the address forms the
//! loop hands between the socket layer and the service: a reply leaves
//! from the address its request was sent to (RFC 7252 §5.3.2), a
//! multicast request's answer is held back for its Leisure, a
//! notification goes where its registration came from.
//!
//! It never decides an answer (the service does) and never receives.

use super::leisure::Leisure;
use super::stats::{log_outcome, LogBudget, Shown, Stats};
use crate::service::{Action, Arrival, Notification, Outcome, Peer};
use crate::sockio::{self, LocalDest};
use log::{debug, trace};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};

/// Sends `reply` to `to` from socket `index`, from the address the request
/// arrived at; a failure is counted and the loop goes on.
#[inline]
pub(super) fn send(
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
pub(super) struct Reply {
    /// The socket the request arrived on.
    pub(super) index: usize,
    /// The peer: where the reply goes.
    pub(super) from: SocketAddr,
    /// The request's destination: where the reply leaves from.
    pub(super) dest: Option<LocalDest>,
    /// The same, as the service saw it (multicast or not).
    pub(super) arrival: Arrival,
    /// When the request arrived.
    pub(super) now_ms: u64,
}

/// Sends an answer (after the Leisure period, for a multicast request) and
/// does its bookkeeping: counters, the transfer lines at info, the
/// per-reply detail at trace.
#[allow(clippy::too_many_arguments)]
pub(super) fn deliver(
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
    let Some(len) = account(action, from, now_ms, stats, log_budget) else {
        return;
    };
    let reply = tx.get(..len).unwrap_or(&[]);
    if !arrival.multicast {
        send(sockets, index, reply, from, dest, stats);
    } else if leisure.schedule(now_ms, index, from, dest, reply) {
        stats.multicast_answers += 1;
    } else {
        stats.multicast_dropped += 1;
    }
}

/// The bookkeeping of an answer to a request from `from`, plain or coaps,
/// before it is sent: counters, the transfer lines at info, the per-reply
/// detail at trace. The length of the reply written into the send buffer,
/// `None` for a dropped request (counted, nothing to send).
#[inline]
pub(super) fn account(
    action: Action<'_>,
    from: SocketAddr,
    now_ms: u64,
    stats: &mut Stats,
    log_budget: &mut LogBudget,
) -> Option<usize> {
    match action {
        Action::Reply { len, outcome } => {
            stats.count(&outcome);
            if let Outcome::Block(t) = &outcome {
                log_budget.log_transfer(from, t, now_ms, stats);
            }
            log_outcome(from, &outcome);
            Some(len)
        }
        Action::Drop(reason) => {
            stats.count_drop(reason);
            trace!("{} dropped: {reason:?}", Shown(from));
            None
        }
    }
}

/// A multicast group address, IPv4, IPv6 or IPv4-mapped.
pub(super) fn is_multicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_multicast(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_multicast(), |v4| v4.is_multicast()),
    }
}

/// Where a notification goes and the address it leaves from, in the form
/// the socket uses (an IPv4 socket takes IPv4 addresses, a dual-stack one
/// IPv4-mapped IPv6); a link-local observer gets the zone of the interface
/// its registration arrived on.
pub(super) fn notification_route(
    n: &Notification,
    ipv4_socket: bool,
) -> (SocketAddr, Option<LocalDest>) {
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
pub(super) fn arrival(socket: usize, dest: Option<LocalDest>) -> Arrival {
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

/// The peer as the service sees it: IPv4 as IPv4-mapped IPv6, an IPv6
/// address with its zone. Public so that whatever drives the service
/// beside the loop (the fuzz checks) names peers as the loop does.
#[inline]
pub fn peer(addr: SocketAddr) -> Peer {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let scope = match addr {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    Peer {
        ip: ip.octets(),
        port: addr.port(),
        scope,
    }
}
