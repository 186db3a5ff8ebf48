//! `iot-ota-client baseline`: the raw UDP responder that `make bench`
//! measures the server against. A blocking single-thread loop with buffers
//! allocated once that answers every datagram with the same fixed datagram
//! (1 KiB by default), whatever it holds: the ceiling for a
//! request/response server on the machine at hand. It never parses CoAP.
//!
//! Answering anything with more than it received makes it an amplifier,
//! so it is built only with the `loadgen` feature (never in the packages)
//! and listens on loopback unless `--listen` says otherwise.

use crate::options::{number, parse_subcommand};
use crate::{usage_error, ERROR_EXIT};
use getopts::Options;
use std::net::{ToSocketAddrs, UdpSocket};
use std::process::ExitCode;

/// The command name in messages.
const COMMAND: &str = "iot-ota-client baseline";
/// Default length of a baseline reply: a fixed 1 KiB datagram.
const BASELINE_REPLY_LEN: usize = 1024;
/// Where it answers without `--listen`: loopback, where `make bench`
/// measures, so that no other host can make it reflect 1 KiB at a forged
/// source address (`make bench` asks for 127.0.0.1:0).
const DEFAULT_LISTEN: &str = "127.0.0.1:5684";
/// Largest UDP payload over IPv4.
const UDP_MAX: usize = 65_507;
/// Larger than any request the load generator sends.
const RECEIVE_MAX: usize = 2048;

/// The help text above the options.
const BASELINE_BRIEF: &str =
    "Usage: iot-ota-client baseline [-l ADDR] [--size BYTES] [--count N]\n\n\
     A minimal single-thread blocking UDP responder: every datagram is answered with \
     one fixed datagram (1 KiB by default), so `iot-ota-client bench --baseline` \
     measures what the kernel's UDP path allows a request/response server here.";

fn baseline_options() -> Options {
    let mut o = Options::new();
    o.optopt(
        "l",
        "listen",
        "UDP address to answer on (default: 127.0.0.1:5684); on a public address any host \
         can make it send 1 KiB or more to a forged source",
        "ADDR",
    );
    o.optopt(
        "",
        "size",
        "length of every reply in bytes (default: 1024)",
        "BYTES",
    );
    o.optopt(
        "",
        "count",
        "exit after answering N datagrams (default: never)",
        "N",
    );
    o.optflag("h", "help", "print this help");
    o
}

/// `iot-ota-client baseline --listen ADDR`: the raw ceiling for `make
/// bench`. A blocking single-thread loop with buffers allocated once that
/// answers every datagram with the same fixed 1 KiB datagram, whatever it
/// holds. Prints `listening on ADDR` on stderr (useful with port 0) and
/// serves until killed (or `--count` datagrams).
///
/// `args` are the arguments after `baseline`. Exit status 1 when the
/// address cannot be bound, 2 on a usage error.
pub(crate) fn baseline_main(args: &[String]) -> ExitCode {
    let m = match parse_subcommand(COMMAND, &baseline_options(), args, BASELINE_BRIEF) {
        Ok(m) => m,
        Err(done) => return done,
    };
    if let Some(extra) = m.free.first() {
        return usage_error(COMMAND, &format!("unexpected argument '{extra}'"));
    }
    let listen_text = m.opt_str("l").unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let Some(listen) = listen_text
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return usage_error(COMMAND, &format!("invalid listen address '{listen_text}'"));
    };
    let size = match number(&m, "size", BASELINE_REPLY_LEN, |n| {
        (1..=UDP_MAX).contains(n)
    }) {
        Ok(size) => size,
        Err(e) => return usage_error(COMMAND, &format!("{e}: 1..{UDP_MAX}")),
    };
    let count = match m.opt_str("count") {
        None => None,
        Some(_) => match number(&m, "count", 0u64, |n| *n > 0) {
            Ok(n) => Some(n),
            Err(e) => return usage_error(COMMAND, &e),
        },
    };
    let socket = match UdpSocket::bind(listen) {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("{COMMAND}: cannot listen on {listen}: {e}");
            return ExitCode::from(ERROR_EXIT);
        }
    };
    let local = socket
        .local_addr()
        .map_or_else(|_| listen.to_string(), |a| a.to_string());
    eprintln!("{COMMAND}: listening on {local} (fixed {size}-byte replies)");
    let answered = serve_baseline(&socket, size, count);
    eprintln!("{COMMAND}: answered {answered} datagrams");
    ExitCode::SUCCESS
}

/// The baseline loop: receive, send the fixed reply, repeat; returns the
/// number of datagrams answered (only when `count` is reached). Errors are
/// ignored as the server ignores them: an ICMP error for an earlier reply
/// must not stop it.
pub(crate) fn serve_baseline(socket: &UdpSocket, size: usize, count: Option<u64>) -> u64 {
    let reply: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut rx = vec![0u8; RECEIVE_MAX];
    let mut answered = 0u64;
    loop {
        if count.is_some_and(|n| answered >= n) {
            return answered;
        }
        if let Ok((_, from)) = socket.recv_from(&mut rx) {
            if socket.send_to(&reply, from).is_ok() {
                answered += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_listen_it_answers_on_loopback_only() {
        let addr: std::net::SocketAddr = DEFAULT_LISTEN.parse().expect("an address");
        assert!(addr.ip().is_loopback(), "{addr}");
    }
}
