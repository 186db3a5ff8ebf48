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

/// A Confirmable GET of the Uri-Path `segments` (kept as given, empty ones
/// too), with an optional Block2 and payload, encoded with the crate's own
/// emitter.
pub fn con_get(
    mid: u16,
    token: &[u8],
    segments: &[&str],
    block: Option<iot_ota::wire::Block>,
    payload: &[u8],
) -> Vec<u8> {
    let mut block_value = [0u8; 4];
    let mut options: Vec<(u16, &[u8])> = segments.iter().map(|s| (11, s.as_bytes())).collect();
    if let Some(block) = block {
        options.push((23, block.encode(&mut block_value)));
    }
    con_get_options(mid, token, &options, payload)
}

/// A Confirmable GET with `options` (number and value, in ascending order
/// of number, as the emitter requires) and `payload`.
pub fn con_get_options(
    mid: u16,
    token: &[u8],
    options: &[(u16, &[u8])],
    payload: &[u8],
) -> Vec<u8> {
    con_request(coap_lite::RequestType::Get, mid, token, options, payload)
}

/// A Confirmable request with `method`, `options` (in ascending order of
/// number) and `payload`.
pub fn con_request(
    method: coap_lite::RequestType,
    mid: u16,
    token: &[u8],
    options: &[(u16, &[u8])],
    payload: &[u8],
) -> Vec<u8> {
    use coap_lite::{MessageClass, MessageType};
    let mut buf = vec![0u8; 1280];
    let mut e = iot_ota::wire::Emitter::new(
        &mut buf,
        MessageType::Confirmable,
        MessageClass::Request(method),
        mid,
        token,
    )
    .expect("header");
    for (number, value) in options {
        e.option(*number, value).expect("option");
    }
    let len = e.payload(payload).expect("payload");
    buf.truncate(len);
    buf
}
