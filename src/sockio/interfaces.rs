//! The network interfaces: an interface's index by name and name by
//! index (`if_nametoindex`, `if_indextoname`), every interface with its
//! flags and addresses (`getifaddrs`), and joining an IPv4 multicast group
//! on one by index (IP_ADD_MEMBERSHIP with `ip_mreqn`), which std cannot.
//!
//! It never receives or sends datagrams, and picks no interface itself
//! (`iface` decides which to use).

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;

/// The index of the interface named `name`, `None` when there is none.
pub(crate) fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string alive for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of interface `index` written into `buf`, `None` when there is
/// none: no allocation, for log lines.
pub(crate) fn interface_name_in(index: u32, buf: &mut [u8; libc::IF_NAMESIZE]) -> Option<&str> {
    // SAFETY: `buf` holds IF_NAMESIZE bytes, the most if_indextoname writes.
    let named = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if named.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    std::str::from_utf8(buf.get(..len)?).ok()
}

/// Room for an interface name.
pub(crate) type NameBuf = [u8; libc::IF_NAMESIZE];

/// The name of interface `index`, `None` when there is none.
pub(crate) fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, the most if_indextoname writes
    // (the name and its NUL).
    let named = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if named.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf.get(..len)?.to_vec()).ok()
}

/// One network interface as `getifaddrs` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interface {
    /// Its name, e.g. `wpan0`.
    pub(crate) name: String,
    /// Its index (the zone of its link-local addresses).
    pub(crate) index: u32,
    /// IFF_MULTICAST is set.
    pub(crate) multicast: bool,
    /// It has at least one IPv4 address.
    pub(crate) has_ipv4: bool,
    /// Its addresses (IPv4 and IPv6).
    pub(crate) addrs: Vec<IpAddr>,
}

/// Every interface with its flags and addresses.
///
/// # Errors
/// As `getifaddrs`.
pub(crate) fn interfaces() -> io::Result<Vec<Interface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list it points
    // to is freed below with freeifaddrs and not used after.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found: Vec<Interface> = Vec::new();
    let mut node = head;
    while !node.is_null() {
        // SAFETY: `node` is an element of the list getifaddrs returned,
        // alive until freeifaddrs.
        let entry = unsafe { &*node };
        node = entry.ifa_next;
        if entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string within the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let addr = if entry.ifa_addr.is_null() {
            None
        } else {
            // SAFETY: ifa_addr points to a sockaddr whose family says how
            // long it is; socket_addr_of checks the family before reading.
            unsafe { socket_addr_of(entry.ifa_addr) }
        };
        let index = match found.iter().position(|i| i.name == name) {
            Some(index) => index,
            None => {
                let Some(ifindex) = interface_index(&name) else {
                    continue;
                };
                found.push(Interface {
                    name,
                    index: ifindex,
                    multicast: entry.ifa_flags & libc::IFF_MULTICAST as libc::c_uint != 0,
                    has_ipv4: false,
                    addrs: Vec::new(),
                });
                found.len() - 1
            }
        };
        if let (Some(interface), Some(addr)) = (found.get_mut(index), addr) {
            interface.has_ipv4 |= addr.is_ipv4();
            interface.addrs.push(addr);
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The address behind a `sockaddr` pointer of any family.
///
/// # Safety
/// `addr` must point to a sockaddr at least as long as its family's
/// structure.
unsafe fn socket_addr_of(addr: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the caller guarantees a readable sockaddr; the family field
    // is at the same place in every variant.
    let family = libc::c_int::from(unsafe { (*addr).sa_family });
    match family {
        libc::AF_INET => {
            // SAFETY: AF_INET: the caller guarantees a sockaddr_in.
            let v4 = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: AF_INET6: the caller guarantees a sockaddr_in6.
            let v6 = unsafe { addr.cast::<libc::sockaddr_in6>().read_unaligned() };
            Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// Joins the IPv4 group `group` on interface `ifindex` (by index, so that
/// an interface whose address is not known yet can be named), also on a
/// dual-stack IPv6 socket, which Linux lets receive IPv4 multicast.
///
/// # Errors
/// As `setsockopt(IP_ADD_MEMBERSHIP)`.
pub(crate) fn join_v4_on(socket: &UdpSocket, group: Ipv4Addr, ifindex: u32) -> io::Result<()> {
    let request = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr {
            s_addr: u32::from(group).to_be(),
        },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: ifindex as libc::c_int,
    };
    // SAFETY: the option value is a live ip_mreqn and its size is given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            std::ptr::from_ref(&request).cast(),
            size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
