//! Receiving a datagram with the address it was sent to, and sending a
//! reply from that address: `recvmsg` and `sendmsg` with IP_PKTINFO and
//! IPV6_PKTINFO. It never lists interfaces, binds, waits or handles
//! signals (the sibling modules do).
//!
//! RFC 7252 §5.3.2: "The source endpoint of the response MUST be the same
//! as the destination endpoint of the original request." A socket bound to
//! a wildcard address (`[::]`, `0.0.0.0`) answering with `send_to` lets the
//! kernel pick the source by route, which on a host with several addresses
//! can be another one than the client asked; libcoap drops such a reply and
//! a connected client socket never sees it. `std` has no way to learn a
//! datagram's destination or to choose a reply's source, hence the `libc`
//! calls. A socket bound to one unicast address needs neither: it is
//! served with `recvfrom` ([`recv_plain`]) and `sendto`, which cost the
//! kernel less than the message-header calls (no header to copy in, no
//! control message either way).
//!
//! Linux only (glibc and musl): only `libc` items both provide are used,
//! and fields whose types differ between them (`msg_iovlen`,
//! `msg_controllen`, `cmsg_len`) are assigned with `as _`. Nothing here
//! allocates: the address and control buffers live on the stack.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Where a datagram arrived: its destination address and the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalDest {
    /// The address the datagram was sent to, in the form the socket reports
    /// it: `IpAddr::V4` from IP_PKTINFO on an IPv4 socket, `IpAddr::V6` from
    /// IPV6_PKTINFO on an IPv6 socket (IPv4 traffic on a dual-stack socket
    /// as IPv4-mapped IPv6). [`send_from`] answers with the same kind.
    pub(crate) addr: IpAddr,
    /// Index of the interface it arrived on.
    pub(crate) ifindex: u32,
}

/// One received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// Bytes written into the buffer.
    pub(crate) len: usize,
    /// The sender.
    pub(crate) from: SocketAddr,
    /// Where it was sent to; `None` when packet information is not enabled
    /// on the socket (or the kernel gave none).
    pub(crate) dest: Option<LocalDest>,
    /// The datagram was longer than the buffer and cut (MSG_TRUNC).
    pub(crate) truncated: bool,
}

/// Room for the one control message asked for (`in6_pktinfo`, 20 bytes,
/// is the larger) with its header, and spare room: if the kernel ever adds
/// another message, it is cut (MSG_CTRUNC) rather than overflowing.
const CONTROL_LEN: usize = 128;

/// A control message buffer aligned as `cmsghdr` needs (its `size_t`
/// length field: 8 bytes at most on the supported targets).
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// Asks the kernel to report each datagram's destination address and
/// interface: IPV6_RECVPKTINFO on an IPv6 socket (on Linux this covers
/// IPv4 traffic of a dual-stack socket too), IP_PKTINFO on an IPv4 one.
///
/// # Errors
/// As `getsockname` and `setsockopt`.
pub(crate) fn enable_pktinfo(socket: &UdpSocket) -> io::Result<()> {
    let (level, name) = match socket.local_addr()? {
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
    };
    super::set_flag(socket, level, name)
}

/// Receives one datagram into `buf` with its sender and, when
/// [`enable_pktinfo`] succeeded, its destination. Blocks as `recv_from`
/// does (the socket's read timeout applies).
///
/// # Errors
/// As `recvmsg` (`WouldBlock` on a read timeout); `InvalidData` for a
/// sender address of a family other than IPv4 or IPv6.
pub(crate) fn recv_with_dest(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = Control([0; CONTROL_LEN]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data (pointers, integers, and private padding
    // fields on musl, which is why it is not built with a literal); all
    // zeroes is a valid, empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = std::ptr::from_mut(&mut name).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN as _;
    // SAFETY: every pointer in `msg` points to a live local or to `buf`, with
    // the lengths given beside them; the kernel writes within those lengths
    // and nothing else keeps the pointers past this call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    let len = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let from = socket_addr(&name, msg.msg_namelen)?;
    Ok(Received {
        // The kernel reports at most the buffer's length; min() only so that
        // no caller can index past `buf` whatever it returns.
        len: len.min(buf.len()),
        from,
        dest: destination(&msg),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    })
}

/// One datagram of `socket` into `buf`, without its destination: for a
/// socket that does not ask for packet information, `recvfrom` rather
/// than `recvmsg`, with no message header or control buffer. MSG_TRUNC
/// makes Linux return the datagram's real length, so that a cut one is
/// told as [`recv_with_dest`] tells it.
///
/// # Errors
/// As `recvfrom`.
pub(crate) fn recv_plain(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut name_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` and `name` are live for the call, with the lengths
    // given; the kernel writes within them.
    let n = unsafe {
        libc::recvfrom(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
            std::ptr::from_mut(&mut name).cast(),
            &mut name_len,
        )
    };
    let len = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    Ok(Received {
        len: len.min(buf.len()),
        from: socket_addr(&name, name_len)?,
        dest: None,
        truncated: len > buf.len(),
    })
}

/// The sender address recvmsg or recvfrom wrote into `name`.
fn socket_addr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> io::Result<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family and length
            // checked); sockaddr_storage is larger and at least as aligned.
            let a = unsafe { std::ptr::from_ref(name).cast::<libc::sockaddr_in6>().read() };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: as above, for a sockaddr_in.
            let a = unsafe { std::ptr::from_ref(name).cast::<libc::sockaddr_in>().read() };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        // Not for UDP over IP; no message, so that nothing is allocated.
        _ => Err(io::ErrorKind::InvalidData.into()),
    }
}

/// The IP_PKTINFO or IPV6_PKTINFO control message of a received header.
fn destination(msg: &libc::msghdr) -> Option<LocalDest> {
    // SAFETY: `msg` is the header recvmsg filled in; its control pointer
    // and the length the kernel set describe the live control buffer.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a header that
        // lies within the control buffer; read unaligned to rely on nothing.
        let header = unsafe { cmsg.read_unaligned() };
        let data_len = (header.cmsg_len as usize).saturating_sub(cmsg_len(0));
        match (header.cmsg_level, header.cmsg_type) {
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                if data_len >= size_of::<libc::in6_pktinfo>() =>
            {
                // SAFETY: the message's length covers an in6_pktinfo after
                // the header; CMSG_DATA points there, maybe unaligned.
                let info = unsafe {
                    libc::CMSG_DATA(cmsg)
                        .cast::<libc::in6_pktinfo>()
                        .read_unaligned()
                };
                return Some(LocalDest {
                    addr: IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
                    ifindex: info.ipi6_ifindex,
                });
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data_len >= size_of::<libc::in_pktinfo>() => {
                // SAFETY: as above, for an in_pktinfo.
                let info = unsafe {
                    libc::CMSG_DATA(cmsg)
                        .cast::<libc::in_pktinfo>()
                        .read_unaligned()
                };
                return Some(LocalDest {
                    // ipi_addr, the header's destination: for a multicast
                    // or broadcast request ipi_spec_dst holds a unicast
                    // address of the interface, which would hide that the
                    // request went to a group; source_for leaves the reply's
                    // source to the kernel for those.
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))),
                    ifindex: u32::try_from(info.ipi_ifindex).unwrap_or(0),
                });
            }
            _ => {}
        }
        // SAFETY: `cmsg` is a header within the buffer `msg` describes;
        // CMSG_NXTHDR checks the next one against the buffer's end.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    None
}

/// CMSG_LEN for `data` bytes.
fn cmsg_len(data: usize) -> usize {
    // SAFETY: CMSG_LEN is arithmetic on its argument (unsafe in libc only
    // because it is a C macro's port); the sizes here are a few bytes.
    unsafe { libc::CMSG_LEN(data as libc::c_uint) as usize }
}

/// CMSG_SPACE for `data` bytes.
fn cmsg_space(data: usize) -> usize {
    // SAFETY: arithmetic only, as for cmsg_len.
    unsafe { libc::CMSG_SPACE(data as libc::c_uint) as usize }
}

/// The source to ask for in the reply to a datagram that arrived at `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// IP_PKTINFO: `ipi_spec_dst`.
    V4(Ipv4Addr),
    /// IPV6_PKTINFO: `ipi6_addr` (maybe IPv4-mapped) and `ipi6_ifindex`.
    V6(Ipv6Addr, u32),
}

/// Pins the source address to the request's destination. A multicast
/// destination is no valid source (RFC 7252 §8.2: the reply comes from a
/// unicast address), so there the address is left unspecified for the
/// kernel to choose.
///
/// The interface is pinned only for an IPv6 link-local address, the one
/// case where the address alone is ambiguous. Elsewhere the routing table
/// chooses it: Linux sends a reply pinned to an interface out of that
/// interface even when the route back to the client leaves by another
/// (asymmetric routing), and without a route there it assumes the client is
/// on that link; the address is what RFC 7252 §5.3.2 requires.
fn source_for(dest: LocalDest) -> Source {
    match dest.addr {
        IpAddr::V4(v4) if v4.is_multicast() || v4.is_broadcast() => {
            Source::V4(Ipv4Addr::UNSPECIFIED)
        }
        IpAddr::V4(v4) => Source::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_multicast() || v4.is_broadcast() => {
                Source::V6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), 0)
            }
            Some(_) => Source::V6(v6, 0),
            // Link-scoped multicast (ff02::1) needs the interface too.
            None if v6.is_multicast() => Source::V6(Ipv6Addr::UNSPECIFIED, dest.ifindex),
            None if v6.segments()[0] & 0xffc0 == 0xfe80 => Source::V6(v6, dest.ifindex),
            None => Source::V6(v6, 0),
        },
    }
}

/// Sends `buf` to `to`, from the address (see [`LocalDest`]) a request
/// arrived at when `from` is given, else from whatever the kernel picks
/// (as `send_to`). If the kernel refuses that source (EINVAL,
/// EADDRNOTAVAIL: a request to a subnet broadcast address on a dual-stack
/// socket, or an address removed since), the datagram is sent once more
/// without it.
///
/// # Errors
/// As `sendmsg`.
pub(crate) fn send_from(
    socket: &UdpSocket,
    buf: &[u8],
    to: SocketAddr,
    from: Option<LocalDest>,
) -> io::Result<usize> {
    match from.map(source_for) {
        Some(source) => match sendmsg(socket, buf, to, Some(source)) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EADDRNOTAVAIL)
                ) =>
            {
                sendmsg(socket, buf, to, None)
            }
            result => result,
        },
        // No source to name: sendto, without a message header to build
        // and for the kernel to copy in.
        None => socket.send_to(buf, to),
    }
}

/// A destination in the C layout; which variant is given by `len`.
#[repr(C)]
pub(super) union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// `addr` in the C layout, with its length.
pub(super) fn raw_addr(addr: SocketAddr) -> (RawAddr, libc::socklen_t) {
    match addr {
        SocketAddr::V4(a) => (
            RawAddr {
                v4: libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                },
            },
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ),
        SocketAddr::V6(a) => (
            RawAddr {
                v6: libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                },
            },
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ),
    }
}

/// One `sendmsg` of `buf` to `to`, with an IP_PKTINFO or IPV6_PKTINFO
/// control message naming `source` when there is one.
fn sendmsg(
    socket: &UdpSocket,
    buf: &[u8],
    to: SocketAddr,
    source: Option<Source>,
) -> io::Result<usize> {
    let (mut name, name_len) = raw_addr(to);
    let mut control = Control([0; CONTROL_LEN]);
    let mut iov = libc::iovec {
        // sendmsg only reads through it; iovec has one pointer type for both.
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in recv_with_dest: plain data, all zeroes is empty.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = std::ptr::from_mut(&mut name).cast();
    msg.msg_namelen = name_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(source) = source {
        let (level, kind, data_len) = match source {
            Source::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                size_of::<libc::in_pktinfo>(),
            ),
            Source::V6(..) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                size_of::<libc::in6_pktinfo>(),
            ),
        };
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(data_len) as _;
        // SAFETY: the control buffer is CONTROL_LEN bytes, aligned for
        // cmsghdr and larger than CMSG_SPACE of either pktinfo, so
        // CMSG_FIRSTHDR is non-null and the header and its data fit in it;
        // all writes are unaligned-safe.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            std::ptr::addr_of_mut!((*cmsg).cmsg_level).write_unaligned(level);
            std::ptr::addr_of_mut!((*cmsg).cmsg_type).write_unaligned(kind);
            std::ptr::addr_of_mut!((*cmsg).cmsg_len).write_unaligned(cmsg_len(data_len) as _);
            let data = libc::CMSG_DATA(cmsg);
            match source {
                Source::V4(addr) => {
                    data.cast::<libc::in_pktinfo>()
                        .write_unaligned(libc::in_pktinfo {
                            ipi_ifindex: 0,
                            ipi_spec_dst: libc::in_addr {
                                s_addr: u32::from(addr).to_be(),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        })
                }
                Source::V6(addr, ifindex) => {
                    data.cast::<libc::in6_pktinfo>()
                        .write_unaligned(libc::in6_pktinfo {
                            ipi6_addr: libc::in6_addr {
                                s6_addr: addr.octets(),
                            },
                            ipi6_ifindex: ifindex,
                        })
                }
            }
        }
    }
    // SAFETY: every pointer in `msg` points to a live local or to `buf`, with
    // the lengths given beside them; the kernel only reads them.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(addr: &str, ifindex: u32) -> LocalDest {
        LocalDest {
            addr: addr.parse().unwrap(),
            ifindex,
        }
    }

    #[test]
    fn the_source_is_the_destination_and_the_interface_only_where_scoped() {
        assert_eq!(
            source_for(dest("127.0.0.2", 1)),
            Source::V4(Ipv4Addr::new(127, 0, 0, 2))
        );
        assert_eq!(
            source_for(dest("::ffff:127.0.0.2", 1)),
            Source::V6("::ffff:127.0.0.2".parse().unwrap(), 0)
        );
        assert_eq!(
            source_for(dest("fd00:1::2", 3)),
            Source::V6("fd00:1::2".parse().unwrap(), 0)
        );
        assert_eq!(
            source_for(dest("fe80::2", 3)),
            Source::V6("fe80::2".parse().unwrap(), 3)
        );
    }

    #[test]
    fn multicast_and_broadcast_destinations_leave_the_source_to_the_kernel() {
        assert_eq!(
            source_for(dest("224.0.0.1", 2)),
            Source::V4(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(
            source_for(dest("255.255.255.255", 2)),
            Source::V4(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(
            source_for(dest("::ffff:224.0.1.187", 2)),
            Source::V6("::ffff:0.0.0.0".parse().unwrap(), 0)
        );
        assert_eq!(
            source_for(dest("ff02::fd", 2)),
            Source::V6(Ipv6Addr::UNSPECIFIED, 2)
        );
    }

    #[test]
    fn the_kernel_reports_the_destination_on_both_families() {
        for (bind, to) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1")] {
            let server = UdpSocket::bind(bind).unwrap();
            enable_pktinfo(&server).unwrap();
            let port = server.local_addr().unwrap().port();
            let client = UdpSocket::bind(SocketAddr::new(to.parse().unwrap(), 0)).unwrap();
            client.send_to(b"ping", (to, port)).unwrap();
            let mut buf = [0u8; 3];
            let got = recv_with_dest(&server, &mut buf).unwrap();
            assert_eq!(got.from, client.local_addr().unwrap());
            assert_eq!((got.len, got.truncated), (3, true));
            let d = got.dest.expect("packet information");
            assert_eq!(d.addr, to.parse::<IpAddr>().unwrap());
            assert_ne!(d.ifindex, 0);
            send_from(&server, b"pong", got.from, got.dest).unwrap();
            let mut reply = [0u8; 8];
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let (n, from) = client.recv_from(&mut reply).unwrap();
            assert_eq!(
                (&reply[..n], from),
                (&b"pong"[..], server.local_addr().unwrap())
            );
        }
    }
}
