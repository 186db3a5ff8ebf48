//! The border-router features: listening on several addresses at once and
//! on link-local addresses with a zone, joining the All-CoAP-Nodes groups
//! (`--multicast`) and answering group requests as RFC 7252 §8 asks
//! (NON only, never an error, an RST or an empty answer, a useful answer
//! by unicast after a random delay within `--leisure`), and starting
//! before the listen address exists (IP_FREEBIND, `--strict-bind`).
//!
//! `lo` carries no multicast on Linux, so most tests build two network
//! namespaces joined by a veth pair (root only; CI runs as root), with
//! the server in one and the client in the other. The test process cannot
//! enter a namespace, so the client side is a program run with
//! `ip netns exec`: libcoap's coap-client, our client, or a short Python
//! script that sends raw datagrams (our client sends Confirmable requests
//! only, and a group request must be Non-confirmable).

use std::net::IpAddr;
use std::time::Duration;
use support::{
    can_make_namespaces, client_gets_the_listing, client_socket, device_payload, exchange,
    launched, listening_addrs, require_program, run_bounded, spawn_server, spawn_server_via,
    write_images, NetnsPair, TempDir, TestImage, TestServer, CLIENT_DEV, NETNS_RUN_LIMIT,
    SERVER_BIN, SERVER_DEV,
};

mod support;

/// The `--leisure` of these tests, milliseconds.
const LEISURE_MS: u64 = 400;
/// What a held-back answer may be later than the Leisure period: process
/// start-up, scheduling, the poll timeout's rounding.
const MARGIN_MS: u64 = 300;
/// How long silence is listened for: past the Leisure period and a margin.
const SILENCE_MS: u64 = LEISURE_MS + MARGIN_MS + 500;

/// The server's addresses on its end of the link.
const SERVER_LL: &str = "fe80::1";
const SERVER_ULA: &str = "fd00:1::1";
const SERVER_V4: &str = "192.0.2.1";

/// Sends each datagram (hex) given after `HOST PORT WINDOW_MS` to
/// HOST:PORT (HOST may carry a zone: `ff02::fd%vc`) in turn, and prints
/// every datagram received within WINDOW_MS of each sending as
/// `INDEX SOURCE MS HEX`.
const PROBE: &str = r#"
import socket, sys, time
host, port, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000.0
family = socket.AF_INET6 if ":" in host else socket.AF_INET
dest = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)[0][4]
s = socket.socket(family, socket.SOCK_DGRAM)
for index, text in enumerate(sys.argv[4:]):
    start = time.monotonic()
    s.sendto(bytes.fromhex(text), dest)
    while True:
        left = window - (time.monotonic() - start)
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, source = s.recvfrom(2048)
        except socket.timeout:
            break
        ms = int((time.monotonic() - start) * 1000)
        print(index, source[0].split("%")[0], ms, data.hex(), flush=True)
"#;

// ---------------------------------------------------------------------------
// Requests and replies, encoded and decoded here again.

const CON: u8 = 0;
const NON: u8 = 1;
const ACK: u8 = 2;
const RST: u8 = 3;

/// A GET of `path` with `queries` and `payload`, of type `mtype`, with
/// Message ID `mid` and a two-byte token equal to it.
fn get(mtype: u8, mid: u16, path: &[&str], queries: &[&str], payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0x40 | (mtype << 4) | 2, 0x01];
    d.extend_from_slice(&mid.to_be_bytes());
    d.extend_from_slice(&mid.to_be_bytes());
    let mut last = 0u16;
    let options = path
        .iter()
        .map(|p| (11u16, p.as_bytes()))
        .chain(queries.iter().map(|q| (15u16, q.as_bytes())));
    for (number, value) in options {
        let delta = number - last;
        last = number;
        assert!(delta < 13 && value.len() < 269, "kept simple");
        if value.len() < 13 {
            d.push(((delta as u8) << 4) | value.len() as u8);
        } else {
            d.push(((delta as u8) << 4) | 13);
            d.push((value.len() - 13) as u8);
        }
        d.extend_from_slice(value);
    }
    if !payload.is_empty() {
        d.push(0xFF);
        d.extend_from_slice(payload);
    }
    d
}

/// NON `GET /.well-known/core`.
fn non_discovery(mid: u16) -> Vec<u8> {
    get(NON, mid, &[".well-known", "core"], &[], &[])
}

/// A decoded reply.
#[derive(Debug)]
struct Reply {
    /// Which datagram of the probe it followed.
    request: usize,
    /// Its source address.
    from: IpAddr,
    /// Milliseconds after its request was sent.
    ms: u64,
    mtype: u8,
    code: u8,
    token: Vec<u8>,
    content_format: Option<u32>,
    payload: Vec<u8>,
}

impl Reply {
    fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// One `INDEX SOURCE MS HEX` line of [`PROBE`].
fn parse_reply_line(line: &str) -> Reply {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [index, from, ms, hex] = fields[..] else {
        panic!("probe printed {line:?}");
    };
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    assert!(bytes.len() >= 4 && bytes[0] >> 6 == 1, "not CoAP: {hex}");
    let tkl = usize::from(bytes[0] & 0x0F);
    let token = bytes[4..4 + tkl].to_vec();
    let mut at = 4 + tkl;
    let mut number = 0u32;
    let mut content_format = None;
    let mut payload = Vec::new();
    while at < bytes.len() {
        if bytes[at] == 0xFF {
            payload = bytes[at + 1..].to_vec();
            break;
        }
        let (delta, len) = (u32::from(bytes[at] >> 4), usize::from(bytes[at] & 0x0F));
        at += 1;
        let extend = |nibble: u32, at: &mut usize| match nibble {
            13 => {
                *at += 1;
                u32::from(bytes[*at - 1]) + 13
            }
            14 => {
                *at += 2;
                u32::from(u16::from_be_bytes([bytes[*at - 2], bytes[*at - 1]])) + 269
            }
            n => n,
        };
        number += extend(delta, &mut at);
        let len = extend(len as u32, &mut at) as usize;
        let value = &bytes[at..at + len];
        at += len;
        if number == 12 {
            content_format = Some(value.iter().fold(0, |v, b| (v << 8) | u32::from(*b)));
        }
    }
    Reply {
        request: index.parse().expect("index"),
        from: from.parse().expect("source address"),
        ms: ms.parse().expect("milliseconds"),
        mtype: (bytes[0] >> 4) & 3,
        code: bytes[1],
        token,
        content_format,
        payload,
    }
}

// ---------------------------------------------------------------------------
// Set-up.

/// True when the namespaces and the programs the namespace tests run are
/// there (skip-or-fail as `require_program`).
fn namespace_tools() -> bool {
    can_make_namespaces() && require_program("python3")
}

/// A link with the usual addresses: link-local and ULA on both ends, and
/// IPv4 when `ipv4` (with a route for IPv4 multicast out of the client's
/// end).
fn link(tag: &str, ipv4: bool) -> NetnsPair {
    let mut server = vec!["fe80::1/64", "fd00:1::1/64"];
    let mut client = vec!["fe80::2/64", "fd00:1::2/64"];
    if ipv4 {
        server.push("192.0.2.1/24");
        client.push("192.0.2.2/24");
    }
    let pair = NetnsPair::new(tag, &server, &client);
    if ipv4 {
        support::ip(&[
            "-n",
            &pair.client,
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            CLIENT_DEV,
        ]);
    }
    pair
}

/// An updates directory with one image of 3000 bytes.
fn updates(tag: &str) -> (TempDir, TestImage) {
    let dir = TempDir::new(tag);
    let image = write_images(&dir, &[("OTA-BR-MOTE", 3000)]).remove(0);
    (dir, image)
}

/// Runs [`PROBE`] in the client namespace: each datagram sent to
/// `host`:5683 in turn, and what came back within `window_ms` of each.
fn probe(pair: &NetnsPair, host: &str, window_ms: u64, datagrams: &[Vec<u8>]) -> Vec<Reply> {
    let window = window_ms.to_string();
    let mut args = vec!["-c".to_owned(), PROBE.to_owned(), host.to_owned()];
    args.extend(["5683".to_owned(), window]);
    args.extend(datagrams.iter().map(|d| hex(d)));
    let output = run_bounded(
        launched(&pair.in_client(), "python3").args(&args),
        NETNS_RUN_LIMIT + Duration::from_millis(window_ms * datagrams.len() as u64),
    );
    assert!(
        output.status.success(),
        "probe to {host}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(parse_reply_line)
        .collect()
}

/// The server in the server namespace on `[::]:5683`, joined to the
/// groups on its end of the link, with a short Leisure.
fn multicast_server(pair: &NetnsPair, dir: &TempDir) -> support::TestServer {
    let leisure = LEISURE_MS.to_string();
    let server = spawn_server_via(
        &pair.in_server(),
        dir.path(),
        "[::]:5683",
        &["--multicast", SERVER_DEV, "--leisure", &leisure, "-v"],
    );
    expect_log(&server, "joined ff02::fd, ff05::fd");
    server
}

/// Our client in the client namespace gets the listing from
/// `server_addr`, naming the image of [`updates`].
fn our_client_gets_the_listing(pair: &NetnsPair, server_addr: &str, server: &TestServer) {
    client_gets_the_listing(
        &pair.in_client(),
        server_addr,
        300,
        "OTA-BR-MOTE_1_0_1_APP.fmu",
        server,
    );
}

/// The set-up of the multicast tests: a [`link`], an [`updates`] directory
/// and the [`multicast_server`] on them; `None` (skip-or-fail) without the
/// namespace tools.
fn multicast_setup(tag: &str, ipv4: bool) -> Option<(NetnsPair, TempDir, TestImage, TestServer)> {
    if !namespace_tools() {
        return None;
    }
    let pair = link(tag, ipv4);
    let (dir, image) = updates(tag);
    let server = multicast_server(&pair, &dir);
    Some((pair, dir, image, server))
}

/// Waits (at most 5 s) for `needle` in the server's log; the test fails
/// without, showing the log.
fn expect_log(server: &TestServer, needle: &str) {
    assert!(
        server.wait_for_log(needle, Duration::from_secs(5)),
        "no {needle:?} in the log within 5 s; log:\n{}",
        server.log()
    );
}

/// Asserts `replies` is one 2.05 answer, from `from`.
fn assert_one_content_from(replies: &[Reply], from: &str, server: &TestServer) {
    assert!(
        replies.len() == 1
            && replies[0].code == 0x45
            && replies[0].from == from.parse::<IpAddr>().unwrap(),
        "{replies:#?}\nlog:\n{}",
        server.log()
    );
}

/// `[ff02::fd%vc]`, the link-local All-CoAP-Nodes group seen from the
/// client namespace.
fn group() -> String {
    format!("ff02::fd%{CLIENT_DEV}")
}

// ---------------------------------------------------------------------------
// Multicast.

#[test]
fn multicast_discovery_is_answered_by_unicast_after_a_delay_within_leisure() {
    let Some((pair, _dir, image, server)) = multicast_setup("mcdisc", false) else {
        return;
    };
    let requests: Vec<Vec<u8>> = (0..5).map(|i| non_discovery(0x7100 + i)).collect();
    let replies = probe(&pair, &group(), LEISURE_MS + MARGIN_MS + 1500, &requests);
    let log = server.log();
    assert_eq!(
        replies.len(),
        requests.len(),
        "one answer per group request: {replies:#?}\nlog:\n{log}"
    );
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.request, i, "{replies:#?}");
        assert_eq!(
            reply.from,
            SERVER_LL.parse::<IpAddr>().unwrap(),
            "answered from {} rather than the link's unicast address: {reply:#?}",
            reply.from
        );
        assert!(!reply.from.is_multicast());
        assert_eq!(
            (reply.mtype, reply.code),
            (NON, 0x45),
            "NON 2.05: {reply:#?}"
        );
        assert_eq!(reply.token, (0x7100 + i as u16).to_be_bytes());
        assert_eq!(reply.content_format, Some(40), "link format: {reply:#?}");
        let text = reply.payload_text();
        assert!(
            text.contains("</updates>") && text.contains(&image.file_name),
            "{text}"
        );
        assert!(
            reply.ms <= LEISURE_MS + MARGIN_MS,
            "answered after {} ms, more than the Leisure of {LEISURE_MS} ms and {MARGIN_MS} ms: {replies:#?}",
            reply.ms
        );
    }
    // Random delays within the period, not one fixed delay nor none.
    let delays: Vec<u64> = replies.iter().map(|r| r.ms).collect();
    let spread = delays.iter().max().unwrap() - delays.iter().min().unwrap();
    assert!(
        spread > 20,
        "the delays {delays:?} ms are not spread over the Leisure period"
    );
    eprintln!("multicast discovery answered after {delays:?} ms (leisure {LEISURE_MS} ms)");
}

#[test]
fn multicast_gets_no_rst_no_error_no_empty_answer_and_con_is_dropped() {
    let Some((pair, _dir, image, server)) = multicast_setup("mcquiet", false) else {
        return;
    };
    // The group is joined and answers what is useful: the silence below
    // is not just a deaf server.
    let control = probe(&pair, &group(), SILENCE_MS, &[non_discovery(0x7200)]);
    assert!(
        control.len() == 1 && control[0].code == 0x45,
        "{control:#?}\nlog:\n{}",
        server.log()
    );
    let no_update = device_payload(&image.pid, 3, u32::MAX, Some(0));
    let no_newer = device_payload(&image.pid, 3, u32::MAX, None);
    let requests = [
        ("NON GET /nothing", get(NON, 0x7201, &["nothing"], &[], &[])),
        (
            "NON discovery matching nothing",
            get(NON, 0x7202, &[".well-known", "core"], &["rt=no-such"], &[]),
        ),
        (
            "NON legacy request with no update",
            get(NON, 0x7203, &["updates"], &[], &no_update),
        ),
        (
            "NON lookup with no newer image",
            get(NON, 0x7204, &["updates"], &[], &no_newer),
        ),
        (
            "CON discovery",
            get(CON, 0x7205, &[".well-known", "core"], &[], &[]),
        ),
    ];
    let datagrams: Vec<Vec<u8>> = requests.iter().map(|(_, d)| d.clone()).collect();
    let to_group = probe(&pair, &group(), SILENCE_MS, &datagrams);
    assert!(
        to_group.is_empty(),
        "group requests answered: {}\nlog:\n{}",
        to_group
            .iter()
            .map(|r| format!("{}: {r:?}", requests[r.request].0))
            .collect::<Vec<_>>()
            .join("\n"),
        server.log()
    );
    // The same requests by unicast are answered: the silence above is the
    // multicast rule, not the requests.
    let unicast = probe(
        &pair,
        &format!("{SERVER_LL}%{CLIENT_DEV}"),
        1500,
        &datagrams,
    );
    let answer = |i: usize| {
        unicast
            .iter()
            .find(|r| r.request == i)
            .unwrap_or_else(|| panic!("no answer to {} by unicast: {unicast:#?}", requests[i].0))
    };
    assert_eq!((answer(0).mtype, answer(0).code), (NON, 0x84), "4.04");
    let _ = answer(1);
    assert_eq!(answer(2).mtype, RST, "no update: RST");
    assert_eq!((answer(3).mtype, answer(3).code), (NON, 0x84), "4.04");
    assert_eq!((answer(4).mtype, answer(4).code), (ACK, 0x45), "ACK 2.05");
    assert!(unicast.iter().all(|r| r.ms < 500), "{unicast:#?}");
}

#[test]
fn libcoap_discovers_by_multicast_and_downloads_over_link_local_and_ula() {
    if !require_program("coap-client-notls") {
        return;
    }
    let Some((pair, _dir, image, server)) = multicast_setup("mclibcoap", false) else {
        return;
    };
    let output = run_bounded(
        launched(&pair.in_client(), "coap-client-notls").args([
            "-N",
            "-B",
            "3",
            "-m",
            "get",
            &format!("coap://[ff02::fd%{CLIENT_DEV}]/.well-known/core"),
        ]),
        NETNS_RUN_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("</updates/{}>", image.id)),
        "coap-client-notls by multicast: {}\nstdout: {stdout}\nstderr: {}\nlog:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    eprintln!("{stdout}");
    let out = TempDir::new("mclibcoap-out");
    for host in [
        format!("[{SERVER_LL}%{CLIENT_DEV}]"),
        format!("[{SERVER_ULA}]"),
    ] {
        let file = out.path().join("out.bin");
        let _ = std::fs::remove_file(&file);
        let uri = format!("coap://{host}/updates/{}", image.id);
        let output = run_bounded(
            launched(&pair.in_client(), "coap-client-notls")
                .args(["-m", "get", "-b", "1024", "-o"])
                .arg(&file)
                .arg(&uri),
            NETNS_RUN_LIMIT,
        );
        let got = std::fs::read(&file).unwrap_or_default();
        assert!(
            got == image.bytes,
            "{uri}: {} bytes of {}, {}\nstderr: {}\nlog:\n{}",
            got.len(),
            image.bytes.len(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            server.log()
        );
    }
}

#[test]
fn ipv4_multicast_group_is_joined_when_the_interface_has_ipv4() {
    let Some((pair, _dir, _image, server)) = multicast_setup("mcv4", true) else {
        return;
    };
    assert!(
        server.log().contains(&format!(
            "joined ff02::fd, ff05::fd, 224.0.1.187 on {SERVER_DEV}"
        )),
        "{}",
        server.log()
    );
    let replies = probe(&pair, "224.0.1.187", SILENCE_MS, &[non_discovery(0x7300)]);
    assert_one_content_from(&replies, SERVER_V4, &server);
}

#[test]
fn server_starts_on_an_interface_without_ipv4() {
    let Some((pair, _dir, _image, server)) = multicast_setup("mcv6only", false) else {
        return;
    };
    let log = server.log();
    let joined: Vec<&str> = log.lines().filter(|l| l.contains("joined")).collect();
    assert!(
        joined.len() == 1
            && joined[0].ends_with(&format!("joined ff02::fd, ff05::fd on {SERVER_DEV}")),
        "an interface without IPv4 joins the IPv6 groups only:\n{log}"
    );
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
    let replies = probe(&pair, &group(), SILENCE_MS, &[non_discovery(0x7400)]);
    assert_one_content_from(&replies, SERVER_LL, &server);
}

// ---------------------------------------------------------------------------
// Listen addresses.

#[test]
fn boot_race_listen_address_added_later_is_served() {
    if !namespace_tools() {
        return;
    }
    let pair = NetnsPair::new("bootrace", &["fe80::1/64"], &["fe80::2/64", "fd00:2::2/64"]);
    let (dir, _image) = updates("bootrace");
    let server = spawn_server_via(&pair.in_server(), dir.path(), "[fd00:2::1]:5683", &[]);
    let mut server = server;
    expect_log(
        &server,
        "[fd00:2::1]:5683 is not configured on any interface yet: waiting for it",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(server.is_running(), "exited:\n{}", server.log());
    pair.add_addr(&pair.server, SERVER_DEV, "fd00:2::1/64");
    our_client_gets_the_listing(&pair, "[fd00:2::1]:5683", &server);
    drop(server);
    // --strict-bind: exit 1 at once, naming the address.
    let output = run_bounded(
        launched(&pair.in_server(), SERVER_BIN)
            .arg("-d")
            .arg(dir.path())
            .args(["-l", "[fd00:3::1]:5683", "--strict-bind"]),
        NETNS_RUN_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[fd00:3::1]:5683"), "{stderr}");
    assert!(!stderr.contains("waiting for it"), "{stderr}");
}

#[test]
fn two_listen_addresses_one_loop() {
    let (dir, image) = updates("twolisten");
    let server = spawn_server(dir.path(), "127.0.0.1:0", &["-l", "[::1]:0"]);
    let addrs = listening_addrs(&server, 2, Duration::from_secs(10));
    assert_eq!(addrs.len(), 2, "{}", server.log());
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");
    // Alternately, so that neither socket waits behind the other.
    for round in 0..3u16 {
        for (i, addr) in addrs.iter().enumerate() {
            let mid = 0x7500 + round * 2 + i as u16;
            let socket = client_socket(*addr);
            let reply = exchange(
                &socket,
                *addr,
                &get(CON, mid, &[".well-known", "core"], &[], &[]),
            )
            .unwrap_or_else(|| panic!("{addr} did not answer; log:\n{}", server.log()));
            assert_eq!(reply[0] >> 4, 0x6, "ACK from {addr}: {reply:02x?}");
            assert_eq!(reply[1], 0x45, "2.05 from {addr}: {reply:02x?}");
            assert!(
                String::from_utf8_lossy(&reply).contains(&image.file_name),
                "{reply:02x?}"
            );
        }
    }
}

#[test]
fn listen_with_a_zone_by_interface_name() {
    if !namespace_tools() {
        return;
    }
    let pair = link("zone", false);
    let (dir, _image) = updates("zone");
    let server = spawn_server_via(
        &pair.in_server(),
        dir.path(),
        &format!("[{SERVER_LL}%{SERVER_DEV}]:5683"),
        &[],
    );
    expect_log(&server, &format!("(coap, on {SERVER_DEV}, "));
    our_client_gets_the_listing(&pair, &format!("[{SERVER_LL}%{CLIENT_DEV}]:5683"), &server);
    // And the raw datagram from the test's own probe: the reply comes from
    // the link-local address asked.
    let replies = probe(
        &pair,
        &format!("{SERVER_LL}%{CLIENT_DEV}"),
        1500,
        &[non_discovery(0x7600)],
    );
    assert_one_content_from(&replies, SERVER_LL, &server);
}

/// An IPv4 socket (`-l 0.0.0.0:5683`) learns the group from the header's
/// destination, not from the interface address IP_PKTINFO also reports:
/// a CON or an error-answered request to 224.0.1.187 gets nothing, a NON
/// discovery a delayed unicast answer.
#[test]
fn ipv4_socket_applies_the_multicast_rules_to_224_0_1_187() {
    if !namespace_tools() {
        return;
    }
    let pair = link("mcv4sock", true);
    let (dir, _image) = updates("mcv4sock");
    let leisure = LEISURE_MS.to_string();
    let server = spawn_server_via(
        &pair.in_server(),
        dir.path(),
        "0.0.0.0:5683",
        &["--multicast", SERVER_DEV, "--leisure", &leisure, "-v"],
    );
    expect_log(&server, "joined 224.0.1.187");
    let silent = [
        get(CON, 0x7501, &[".well-known", "core"], &[], &[]),
        get(NON, 0x7502, &["nothing"], &[], &[]),
    ];
    let replies = probe(&pair, "224.0.1.187", SILENCE_MS, &silent);
    assert!(
        replies.is_empty(),
        "a CON and an error to the IPv4 group were answered: {replies:#?}\nlog:\n{}",
        server.log()
    );
    let replies = probe(&pair, "224.0.1.187", SILENCE_MS, &[non_discovery(0x7503)]);
    assert_one_content_from(&replies, SERVER_V4, &server);
}

/// Two sockets with one address and port on two interfaces of the client
/// namespace (`argv[2]` and `argv[3]`: `fe80::2` port 40000 on each);
/// each later argument `N:HEX` sends the datagram HEX from socket N
/// (0 or 1) to `argv[1]` (the server's link-local address) on that
/// interface and prints `N REPLYHEX` (or `N timeout`).
const TWIN_PEERS: &str = r#"
import socket, sys
server = sys.argv[1]
socks = []
for dev in sys.argv[2:4]:
    index = socket.if_nametoindex(dev)
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("fe80::2", 40000, 0, index))
    s.settimeout(2.0)
    socks.append((s, index))
for item in sys.argv[4:]:
    n, text = item.split(":")
    s, index = socks[int(n)]
    s.sendto(bytes.fromhex(text), (server, 5683, 0, index))
    try:
        print(n, s.recv(2048).hex(), flush=True)
    except socket.timeout:
        print(n, "timeout", flush=True)
"#;

/// Two devices with the same link-local address and port behind two
/// interfaces of the server (two border routers, each with its `fe80::2`)
/// keep separate state: each starts a legacy download of its own image
/// (the OFFSET payload with block 0 only, as stock clients send it, and
/// the same Message ID), and each payload-less continuation gets a block
/// of its own image, not the other's.
#[test]
fn two_link_local_peers_with_one_address_on_two_interfaces_keep_separate_state() {
    if !namespace_tools() {
        return;
    }
    const SECOND_SERVER_DEV: &str = "vs1";
    const SECOND_CLIENT_DEV: &str = "vc1";
    let pair = NetnsPair::new("twins", &["fe80::1/64"], &["fe80::2/64"]);
    pair.add_link(
        SECOND_SERVER_DEV,
        SECOND_CLIENT_DEV,
        &["fe80::1/64"],
        &["fe80::2/64"],
    );
    let dir = TempDir::new("twins");
    let images = write_images(&dir, &[("TWIN-A", 3000), ("TWIN-B", 3000)]);
    let server = spawn_server_via(&pair.in_server(), dir.path(), "[::]:5683", &[]);
    listening_addrs(&server, 1, Duration::from_secs(10));
    let start = |pid: &str| {
        let payload = device_payload(pid, 3, 0, Some(0));
        let block = support::block2_value(0, 2);
        hex(&get_with_block(1, &["updates"], &block, &payload))
    };
    let next = hex(&get_with_block(
        2,
        &["updates"],
        &support::block2_value(1, 2),
        &[],
    ));
    let args = [
        SERVER_LL.to_owned(),
        CLIENT_DEV.to_owned(),
        SECOND_CLIENT_DEV.to_owned(),
        format!("0:{}", start("TWIN-A")),
        format!("1:{}", start("TWIN-B")),
        format!("0:{next}"),
        format!("1:{next}"),
    ];
    let output = run_bounded(
        launched(&pair.in_client(), "python3")
            .args(["-c", TWIN_PEERS])
            .args(&args),
        NETNS_RUN_LIMIT + Duration::from_secs(10),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replies: Vec<(usize, Vec<u8>)> = stdout
        .lines()
        .map(|line| {
            let (n, text) = line.split_once(' ').expect("N HEX");
            let bytes = (0..text.len())
                .step_by(2)
                .filter_map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect();
            (n.parse().expect("N"), bytes)
        })
        .collect();
    assert_eq!(replies.len(), 4, "{stdout}; log:\n{}", server.log());
    for (step, (n, reply)) in replies.iter().enumerate() {
        let image = &images[*n];
        let num = step / 2;
        let msg = iot_ota::wire::Message::parse(reply)
            .unwrap_or_else(|e| panic!("step {step}: {e:?} in {stdout}"));
        assert!(
            msg.payload == &image.bytes[num * 64..num * 64 + 64],
            "step {step}: device {n} did not get block {num} of {}; log:\n{}",
            image.pid,
            server.log()
        );
    }
}

/// A Confirmable GET of `path` with the Block2 value `block` and `payload`.
fn get_with_block(mid: u16, path: &[&str], block: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut options: Vec<(u16, &[u8])> = path.iter().map(|s| (11u16, s.as_bytes())).collect();
    options.push((23, block));
    support::coap::con_get_options(mid, b"", &options, payload)
}

/// `bytes` as lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
