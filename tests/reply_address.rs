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
use std::process::Command;
use std::time::Duration;
use support::{
    require_program, run_bounded, spawn_server, spawn_server_via, write_images, TempDir, CLIENT_BIN,
};

mod support;

/// Bound on any one outside program (each bounds its own wait too).
const RUN_LIMIT: Duration = Duration::from_secs(30);

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

/// `program`, or `launcher` (e.g. `ip netns exec NS`) running it.
fn launched(launcher: &[&str], program: &str) -> Command {
    match launcher.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Our client's socket is connected: it hears only its server's address.
fn our_client_gets_the_listing(launcher: &[&str], server: &str) {
    let output = run_bounded(
        launched(launcher, CLIENT_BIN).args([
            server,
            "--get",
            "/.well-known/core",
            "--timeout-ms",
            "200",
        ]),
        RUN_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("OTA-REPLY_1_0_1_APP.fmu"),
        "iot-ota-client {server}: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// libcoap's coap-client drops a reply from another address than it asked.
fn libcoap_gets_the_listing(launcher: &[&str], uri: &str) {
    let output = run_bounded(
        launched(launcher, "coap-client-notls").args(["-m", "get", "-B", "5", uri]),
        RUN_LIMIT,
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
    our_client_gets_the_listing(&[], &format!("127.0.0.2:{port}"));
    if require_program("coap-client-notls") {
        libcoap_gets_the_listing(&[], &format!("coap://127.0.0.2:{port}/.well-known/core"));
    }
}

// ---------------------------------------------------------------------------
// Two network namespaces: the server's with two addresses of each kind on
// one veth end, the client's on the other.

/// Network namespaces deleted when dropped (their veth pair goes with them).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Runs `ip ARGS`, bounded; the test fails when it does.
fn ip(args: &[&str]) {
    let output = run_bounded(Command::new("ip").args(args), RUN_LIMIT);
    assert!(
        output.status.success(),
        "ip {}: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Root (and `ip`) is needed to make namespaces: without, the test is
/// skipped on a developer's machine and fails under CI=true.
fn can_make_namespaces() -> bool {
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    if !require_program("ip") {
        return false;
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if uid != "0" {
        assert!(!ci, "this test needs root under CI=true (uid {uid:?})");
        eprintln!("SKIPPED: network namespaces need root");
        return false;
    }
    true
}

#[test]
fn replies_leave_from_the_address_asked_across_a_link_ipv6_and_ipv4() {
    if !can_make_namespaces() {
        return;
    }
    let pid = std::process::id();
    let (s, c) = (
        format!("iotota-reply-{pid}-s"),
        format!("iotota-reply-{pid}-c"),
    );
    let namespaces = Namespaces(vec![s.clone(), c.clone()]);
    for ns in &namespaces.0 {
        // A namespace left by an earlier run with the same pid goes first.
        drop(Namespaces(vec![ns.clone()]));
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ip(&[
        "link", "add", "veth-s", "netns", &s, "type", "veth", "peer", "name", "veth-c", "netns", &c,
    ]);
    // The server's first address of each kind is the one the kernel would
    // pick for a reply; the second, the one asked, is never picked (IPv6:
    // deprecated; IPv4: secondary). No automatic link-local address, no
    // duplicate address detection: nothing tentative, nothing to wait for.
    for (ns, dev, addrs) in [
        (
            &s,
            "veth-s",
            &[
                "fd00:1::1/64",
                "fd00:1::2/64 preferred_lft 0",
                "fe80::1/64",
                "fe80::2/64 preferred_lft 0",
                "192.0.2.1/24",
                "192.0.2.2/24",
            ][..],
        ),
        (
            &c,
            "veth-c",
            &["fd00:1::10/64", "fe80::10/64", "192.0.2.10/24"][..],
        ),
    ] {
        ip(&["-n", ns, "link", "set", dev, "addrgenmode", "none"]);
        for addr in addrs {
            let mut args = vec!["-n", ns.as_str(), "addr", "add"];
            args.extend(addr.split(' ').take(1));
            args.extend(["dev", dev]);
            if addr.contains(':') {
                args.push("nodad");
            }
            args.extend(addr.split(' ').skip(1));
            ip(&args);
        }
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    let dir = updates_dir("reply-netns");
    let in_s = ["ip", "netns", "exec", s.as_str()];
    let in_c = ["ip", "netns", "exec", c.as_str()];
    let server = spawn_server_via(&in_s, dir.path(), "[::]:5683", &[]);
    assert_eq!(server.addr.port(), 5683);
    for target in ["[fd00:1::2]:5683", "192.0.2.2:5683", "[fd00:1::1]:5683"] {
        our_client_gets_the_listing(&in_c, target);
    }
    if require_program("coap-client-notls") {
        for host in ["[fd00:1::2]", "192.0.2.2", "[fe80::2%veth-c]"] {
            libcoap_gets_the_listing(&in_c, &format!("coap://{host}:5683/.well-known/core"));
        }
    }
    let log = server.log();
    assert!(!log.contains("WARN"), "{log}");
    // Dropped in reverse order: the server, then the namespaces.
}
