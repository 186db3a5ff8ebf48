//! Every reply leaves from the address its request was sent to (RFC 7252
//! §5.3.2: "The source endpoint of the response MUST be the same as the
//! destination endpoint of the original request"), also when the server
//! listens on a wildcard address of a host with several addresses.
//!
//! IPv4 on the loopback has them everywhere (127.0.0.1 and 127.0.0.2). For
//! IPv6, and for a real interface, the last test builds two network
//! namespaces joined by a veth pair: as root only (CI runs as root), and
//! without touching the host's own interfaces.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use support::{
    can_make_namespaces, client_gets_the_listing, launched, require_program, run_bounded,
    spawn_server, spawn_server_via, write_images, NetnsPair, TempDir, TestServer, CLIENT_DEV,
    NETNS_RUN_LIMIT,
};

mod support;

/// `GET /.well-known/core`, Confirmable, no token.
fn discovery_get(mid: u16) -> Vec<u8> {
    let mut d = vec![0x40, 0x01];
    d.extend_from_slice(&mid.to_be_bytes());
    d.push(0xBB); // Uri-Path (11), 11 bytes
    d.extend_from_slice(b".well-known");
    d.push(0x04); // Uri-Path again, 4 bytes
    d.extend_from_slice(b"core");
    d
}

/// A server directory with one image, so the listing has a link in it.
fn updates_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    write_images(&dir, &[("OTA-REPLY", 100)]);
    dir
}

/// Sends a discovery GET from a socket bound to `client_ip` to `to` and
/// returns where the piggybacked 2.05 came from.
fn reply_source(client_ip: &str, to: SocketAddr, mid: u16) -> SocketAddr {
    let socket = UdpSocket::bind((client_ip, 0)).expect("bind client socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("set read timeout");
    socket.send_to(&discovery_get(mid), to).expect("send");
    let mut buf = [0u8; 2048];
    let (len, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no reply to {to} within 3 s: {e}"));
    let reply = &buf[..len];
    assert!(len >= 4, "short reply {reply:02x?}");
    // ACK, 2.05, the request's Message ID.
    assert_eq!(reply[0] >> 4, 0x6, "not an ACK: {reply:02x?}");
    assert_eq!(reply[1], 0x45, "not 2.05: {reply:02x?}");
    assert_eq!(&reply[2..4], &mid.to_be_bytes(), "{reply:02x?}");
    from
}

/// Requests to 127.0.0.1 and to 127.0.0.2 are answered from each.
fn check_loopback_destinations(listen: &str) {
    let dir = updates_dir("reply-lo");
    let server = spawn_server(dir.path(), listen, &[]);
    let port = server.addr.port();
    for (mid, (client, dest)) in [
        ("127.0.0.1", "127.0.0.2"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.2"),
    ]
    .into_iter()
    .enumerate()
    {
        let to = SocketAddr::new(dest.parse().unwrap(), port);
        let from = reply_source(client, to, 0x100 + mid as u16);
        assert_eq!(
            from,
            to,
            "{listen}: a request from {client} to {to} was answered from {from}; log:\n{}",
            server.log()
        );
    }
}

#[test]
fn dual_stack_wildcard_answers_ipv4_from_the_address_asked() {
    check_loopback_destinations("[::]:0");
}

#[test]
fn ipv4_wildcard_answers_from_the_address_asked() {
    check_loopback_destinations("0.0.0.0:0");
}

/// Our client's socket is connected: it hears only its server's address.
fn our_client_gets_the_listing(launcher: &[&str], server_addr: &str, server: &TestServer) {
    client_gets_the_listing(
        launcher,
        server_addr,
        200,
        "OTA-REPLY_1_0_1_APP.fmu",
        server,
    );
}

/// libcoap's coap-client drops a reply from another address than it asked.
fn libcoap_gets_the_listing(launcher: &[&str], uri: &str) {
    let output = run_bounded(
        launched(launcher, "coap-client-notls").args(["-m", "get", "-B", "5", uri]),
        NETNS_RUN_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("OTA-REPLY_1_0_1_APP.fmu"),
        "coap-client-notls {uri}: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn our_client_and_libcoap_get_answers_from_the_second_loopback_address() {
    let dir = updates_dir("reply-clients");
    let server = spawn_server(dir.path(), "[::]:0", &[]);
    let port = server.addr.port();
    our_client_gets_the_listing(&[], &format!("127.0.0.2:{port}"), &server);
    if require_program("coap-client-notls") {
        libcoap_gets_the_listing(&[], &format!("coap://127.0.0.2:{port}/.well-known/core"));
    }
}

// ---------------------------------------------------------------------------
// Two network namespaces: the server's with two addresses of each kind on
// one veth end, the client's on the other.

#[test]
fn replies_leave_from_the_address_asked_across_a_link_ipv6_and_ipv4() {
    if !can_make_namespaces() {
        return;
    }
    // The server's first address of each kind is the one the kernel would
    // pick for a reply; the second, the one asked, is never picked (IPv6:
    // deprecated; IPv4: secondary). No automatic link-local address, no
    // duplicate address detection: nothing tentative, nothing to wait for.
    let pair = NetnsPair::new(
        "reply",
        &[
            "fd00:1::1/64",
            "fd00:1::2/64 preferred_lft 0",
            "fe80::1/64",
            "fe80::2/64 preferred_lft 0",
            "192.0.2.1/24",
            "192.0.2.2/24",
        ],
        &["fd00:1::10/64", "fe80::10/64", "192.0.2.10/24"],
    );
    let dir = updates_dir("reply-netns");
    let server = spawn_server_via(&pair.in_server(), dir.path(), "[::]:5683", &[]);
    assert_eq!(server.addr.port(), 5683);
    for target in ["[fd00:1::2]:5683", "192.0.2.2:5683", "[fd00:1::1]:5683"] {
        our_client_gets_the_listing(&pair.in_client(), target, &server);
    }
    if require_program("coap-client-notls") {
        let link_local = format!("[fe80::2%{CLIENT_DEV}]");
        for host in ["[fd00:1::2]", "192.0.2.2", &link_local] {
            libcoap_gets_the_listing(
                &pair.in_client(),
                &format!("coap://{host}:5683/.well-known/core"),
            );
        }
    }
    let log = server.log();
    assert!(!log.contains("WARN"), "{log}");
    // Dropped in reverse order: the server, then the namespaces.
}
