//! Raw CoAP exchanges over a UDP socket, with bounded waits: the part of a
//! client every test that speaks datagrams needs, whatever encoder and
//! decoder it checks the server with.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Datagrams from other senders skipped by one [`receive_from`] at most.
const MAX_SKIPPED: usize = 64;

/// The next datagram from `server` on `socket` within `within`, or `None`.
/// Datagrams from other addresses are skipped. Changes the socket's read
/// timeout.
pub fn receive_from(socket: &UdpSocket, server: SocketAddr, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    for _ in 0..MAX_SKIPPED {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set read timeout");
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == server => return Some(buf[..n].to_vec()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Sends `datagram` to `server` and returns the first reply `accept` takes
/// (decoded as it likes); other replies are skipped. The datagram is sent
/// again after each `reply_timeout`, `attempts` times in all; `None` when
/// nothing was accepted.
pub fn exchange_until<T>(
    socket: &UdpSocket,
    server: SocketAddr,
    datagram: &[u8],
    (attempts, reply_timeout): (usize, Duration),
    mut accept: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    for _ in 0..attempts {
        socket.send_to(datagram, server).expect("send to server");
        let deadline = Instant::now() + reply_timeout;
        while let Some(raw) = receive_from(
            socket,
            server,
            deadline.saturating_duration_since(Instant::now()),
        ) {
            if let Some(reply) = accept(&raw) {
                return Some(reply);
            }
        }
    }
    None
}
