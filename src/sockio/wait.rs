//! Waiting on several sockets at once (`poll`), and the monotonic clock
//! the loop reads once per datagram (`clock_gettime`).
//!
//! It never receives or sends: it only says which socket is readable.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// The most sockets [`wait_readable`] waits on.
pub(crate) const MAX_SOCKETS: usize = 16;

/// Waits until one of `sockets` is readable or `timeout_ms` passed
/// (`None`: no timeout); returns the index of a readable one, the first at
/// or after `start` (taken modulo the count), so that callers can rotate.
/// Interrupted waits return `None` like timeouts.
pub(crate) fn wait_readable(
    sockets: &[UdpSocket],
    timeout_ms: Option<u64>,
    start: usize,
) -> Option<usize> {
    let mut fds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_SOCKETS];
    let count = sockets.len().min(MAX_SOCKETS);
    for (slot, socket) in fds.iter_mut().zip(sockets) {
        slot.fd = socket.as_raw_fd();
        slot.events = libc::POLLIN;
    }
    let timeout = timeout_ms.map_or(-1, |ms| {
        libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `fds` holds `count` initialised pollfd entries, alive for the
    // call; poll writes only their revents.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), count as libc::nfds_t, timeout) };
    if rc <= 0 {
        return None;
    }
    let ready = |i: &usize| {
        fds.get(*i)
            .is_some_and(|slot| slot.revents & (libc::POLLIN | libc::POLLERR) != 0)
    };
    (0..count).map(|k| (start + k) % count).find(ready)
}

/// CLOCK_MONOTONIC in milliseconds: the clock `Instant` reads on Linux,
/// without `Instant`'s `Duration` arithmetic (a subtraction with its
/// checks and a 128-bit millisecond count), as the loop reads it once per
/// datagram. 0 if the clock cannot be read, which POSIX rules out for
/// CLOCK_MONOTONIC.
pub(crate) fn monotonic_ms() -> u64 {
    // SAFETY: timespec is plain data (with padding fields on some 32-bit
    // musl targets, which is why it is not built with a literal); all
    // zeroes is a valid value.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a live timespec, which the call only writes.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return 0;
    }
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    seconds.saturating_mul(1000).saturating_add(millis)
}
