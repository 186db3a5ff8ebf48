//! A UDP socket bound with options that must be set before the bind,
//! which std's `UdpSocket::bind` cannot: IP_FREEBIND and SO_REUSEPORT.
//!
//! It never receives, sends or chooses an address.

use super::pktinfo::raw_addr;
use std::io;
use std::net::{SocketAddr, UdpSocket};

/// A UDP socket bound to `addr`, with options std's `UdpSocket::bind`
/// cannot set because they must precede the bind:
/// - `freebind` (IP_FREEBIND): the bind succeeds although the address is
///   not configured on any interface yet (a border router at boot), and
///   datagrams arrive once it is;
/// - `reuse_port` (SO_REUSEPORT): other sockets of the same user that set
///   it too may bind the same address and port; the kernel hands each
///   datagram to one of them by a hash of its addresses and ports, so a
///   peer stays with one socket while the group is unchanged.
///
/// # Errors
/// As `socket`, `setsockopt` and `bind`.
pub(crate) fn bind_with(
    addr: SocketAddr,
    freebind: bool,
    reuse_port: bool,
) -> io::Result<UdpSocket> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain system call; the descriptor is owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns; OwnedFd closes
    // it on every early return.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if freebind {
        // IP_FREEBIND at the IP level covers IPv6 sockets too (Linux checks
        // the same flag in both binds).
        super::set_flag(&owned, libc::IPPROTO_IP, libc::IP_FREEBIND)?;
    }
    if reuse_port {
        super::set_flag(&owned, libc::SOL_SOCKET, libc::SO_REUSEPORT)?;
    }
    let (name, name_len) = raw_addr(addr);
    // SAFETY: `name` is a sockaddr of the length given, alive for the call.
    let rc = unsafe { libc::bind(fd, std::ptr::from_ref(&name).cast(), name_len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(owned))
}
