//! Network interfaces and scoped addresses: what a border router's
//! operator writes (`[fe80::1%wpan0]:5683`, `--multicast wpan0`) turned
//! into what sockets take (interface indexes, scope ids).

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

/// The index of interface `name`, or of the decimal index itself.
pub fn index_of(name_or_index: &str) -> Option<u32> {
    match name_or_index.parse::<u32>() {
        Ok(index) => Some(index),
        Err(_) => crate::sockio::interface_index(name_or_index),
    }
}

/// The name of interface `index`, for log lines and messages.
pub fn name_of(index: u32) -> Option<String> {
    crate::sockio::interface_name(index)
}

/// An interface that can take part in multicast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Whether it has an IPv4 address (a 6LoWPAN interface has none).
    pub has_ipv4: bool,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

/// Every interface with the multicast flag set.
///
/// # Errors
/// When the system cannot list its interfaces.
pub fn multicast_interfaces() -> std::io::Result<Vec<Interface>> {
    Ok(crate::sockio::interfaces()?
        .into_iter()
        .filter(|i| i.multicast)
        .map(|i| Interface {
            name: i.name,
            index: i.index,
            has_ipv4: i.has_ipv4,
            addrs: i.addrs,
        })
        .collect())
}

/// The All-CoAP-Nodes groups of RFC 7252 §12.8: link-local and
/// site-local IPv6, and IPv4.
pub(crate) const ALL_COAP_NODES_V6: [std::net::Ipv6Addr; 2] = [
    std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfd),
    std::net::Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0, 0xfd),
];
/// The IPv4 All-CoAP-Nodes group.
pub(crate) const ALL_COAP_NODES_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(224, 0, 1, 187);

/// Joins the All-CoAP-Nodes groups on `interface` that `socket` can
/// receive: the IPv6 ones on an IPv6 socket, and the IPv4 one when the
/// socket serves IPv4 (an IPv4 socket, or a dual-stack wildcard) and the
/// interface has an IPv4 address. Returns the groups joined.
///
/// # Errors
/// The first membership the kernel refuses.
pub fn join_all_coap_nodes(
    socket: &std::net::UdpSocket,
    interface: &Interface,
) -> std::io::Result<Vec<IpAddr>> {
    let local = socket.local_addr()?;
    let mut joined = Vec::new();
    if let SocketAddr::V6(v6) = local {
        for group in ALL_COAP_NODES_V6 {
            socket.join_multicast_v6(&group, interface.index)?;
            joined.push(IpAddr::V6(group));
        }
        if !v6.ip().is_unspecified() {
            return Ok(joined);
        }
    }
    if interface.has_ipv4 {
        crate::sockio::join_v4_on(socket, ALL_COAP_NODES_V4, interface.index)?;
        joined.push(IpAddr::V4(ALL_COAP_NODES_V4));
    }
    Ok(joined)
}

/// How [`bind`] binds a listening socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Bind although no interface has the address yet (IP_FREEBIND): at
    /// boot a border router's server may start before its ULA is
    /// configured; datagrams arrive once it is.
    pub before_configured: bool,
    /// Share the address and port with the other sockets of the same user
    /// that ask for it too (SO_REUSEPORT): several server processes on one
    /// port, the kernel keeping each peer (by its address and port) on one
    /// of them while the set of processes is unchanged.
    pub reuse_port: bool,
}

/// A UDP socket bound to `addr` as `options` say.
///
/// # Errors
/// As `socket`, `setsockopt` and `bind` (`AddrNotAvailable` for an address
/// no interface has, without `before_configured`; `AddrInUse` when another
/// socket holds the port and one of the two did not ask for `reuse_port`).
pub fn bind(addr: SocketAddr, options: BindOptions) -> std::io::Result<std::net::UdpSocket> {
    crate::sockio::bind_with(addr, options.before_configured, options.reuse_port)
}

/// Why a scoped address did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    /// Not `IP:PORT` / `[IPv6%ZONE]:PORT`.
    Syntax,
    /// The zone names no interface.
    UnknownZone(String),
}

impl std::fmt::Display for ScopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScopeError::Syntax => f.write_str("expected IP:PORT or [IPv6%ZONE]:PORT"),
            ScopeError::UnknownZone(zone) => write!(f, "no interface named '{zone}'"),
        }
    }
}

impl std::error::Error for ScopeError {}

/// Parses `IP:PORT`, `[IPv6]:PORT` and `[IPv6%ZONE]:PORT`, where ZONE is
/// an interface name (`wpan0`) or index (`5`); `%25` (RFC 6874, as URIs
/// write it) is accepted before the zone too.
///
/// # Errors
/// [`ScopeError::Syntax`] for anything else, [`ScopeError::UnknownZone`]
/// when the named interface does not exist.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, ScopeError> {
    let Some((ip, zone, port)) = split_zone(text) else {
        return text.parse().map_err(|_| ScopeError::Syntax);
    };
    let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| ScopeError::Syntax)?;
    let port: u16 = port.parse().map_err(|_| ScopeError::Syntax)?;
    let scope = index_of(zone).ok_or_else(|| ScopeError::UnknownZone(zone.to_owned()))?;
    Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
}

/// `[IP%ZONE]:PORT` → (IP, ZONE, PORT), with `%25` taken as `%`.
fn split_zone(text: &str) -> Option<(&str, &str, &str)> {
    let rest = text.strip_prefix('[')?;
    let (inside, port) = rest.split_once("]:")?;
    let (ip, zone) = inside.split_once('%')?;
    let zone = zone
        .strip_prefix("25")
        .filter(|z| !z.is_empty() && index_of(zone).is_none())
        .unwrap_or(zone);
    (!zone.is_empty()).then_some((ip, zone, port))
}

/// `addr` as an operator reads it, written without allocating: see
/// [`display`].
#[derive(Debug, Clone, Copy)]
pub struct Zoned(pub SocketAddr);

impl std::fmt::Display for Zoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => write!(f, "{v4}:{}", v6.port()),
                None if v6.scope_id() != 0 => {
                    let mut buf: crate::sockio::NameBuf = [0; libc::IF_NAMESIZE];
                    match crate::sockio::interface_name_in(v6.scope_id(), &mut buf) {
                        Some(zone) => write!(f, "[{}%{zone}]:{}", v6.ip(), v6.port()),
                        None => write!(f, "[{}%{}]:{}", v6.ip(), v6.scope_id(), v6.port()),
                    }
                }
                None => write!(f, "{v6}"),
            },
            SocketAddr::V4(v4) => write!(f, "{v4}"),
        }
    }
}

/// `addr` as an operator reads it: IPv4-mapped IPv6 as IPv4, and the zone
/// of a scoped IPv6 address by interface name.
pub fn display(addr: SocketAddr) -> String {
    Zoned(addr).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_by_name_index_and_rfc6874_escape() {
        let lo = index_of("lo").expect("every Linux host has lo");
        for text in ["[fe80::1%lo]:5683", "[fe80::1%25lo]:5683"] {
            let SocketAddr::V6(v6) = parse_socket_addr(text).unwrap() else {
                panic!("{text} is IPv6");
            };
            assert_eq!((v6.scope_id(), v6.port()), (lo, 5683), "{text}");
        }
        let text = format!("[fe80::1%{lo}]:1");
        let SocketAddr::V6(v6) = parse_socket_addr(&text).unwrap() else {
            panic!("IPv6");
        };
        assert_eq!(v6.scope_id(), lo);
        assert_eq!(parse_socket_addr("127.0.0.1:5683").unwrap().port(), 5683);
        assert_eq!(
            parse_socket_addr("[fe80::1%no-such-if0]:1"),
            Err(ScopeError::UnknownZone("no-such-if0".into()))
        );
        assert_eq!(parse_socket_addr("[fe80::1%]:1"), Err(ScopeError::Syntax));
        assert_eq!(parse_socket_addr("fe80::1%lo:1"), Err(ScopeError::Syntax));
    }

    #[test]
    fn display_names_the_zone_and_unmaps_ipv4() {
        let lo = index_of("lo").unwrap();
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 7, 0, lo));
        assert_eq!(display(scoped), "[fe80::1%lo]:7");
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:9".parse().unwrap();
        assert_eq!(display(mapped), "10.0.0.1:9");
    }

    #[test]
    fn lo_is_listed_with_its_addresses() {
        let all = crate::sockio::interfaces().unwrap();
        let lo = all.iter().find(|i| i.name == "lo").expect("lo listed");
        assert!(lo.addrs.contains(&IpAddr::from([127, 0, 0, 1])));
    }
}
