//! Observe (README, "Observe") over real UDP against the server process:
//! a device waiting on the lookup hears of a published image, libcoap's
//! `coap-client -s` and our client follow a file of the tree as it is
//! replaced, and an observation ends on RST, on Observe 1 and by eviction
//! from a full table. Datagrams are built with `iot_ota::wire::Emitter`
//! and decoded with `Message::parse`.

mod support;

use coap_lite::{MessageClass, MessageType, RequestType, ResponseType};
use iot_ota::hash::fnv1a64;
use iot_ota::wire::{Block, Emitter, Message};
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{image_bytes, spawn_fileserver, spawn_server, TempDir, TestServer, CLIENT_BIN};

const OBSERVE: u16 = 6;
const URI_PATH: u16 = 11;
const BLOCK2: u16 = 23;
/// How long a notification may take: a timed rescan (every 200 ms in these
/// tests) and the settle time (200 ms) on a busy machine.
const NOTIFY_WITHIN: Duration = Duration::from_secs(5);
/// How long silence must last to count as "no notification".
const QUIET: Duration = Duration::from_millis(1500);
const FILE: &str = "fw/app/board/riot.suit.latest.bin";

/// A GET of `segments` of type `mtype` with an optional Observe value and
/// Block2.
fn get(
    mtype: MessageType,
    mid: u16,
    token: &[u8],
    segments: &[&str],
    observe: Option<u32>,
    block: Option<Block>,
) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut e = Emitter::new(
        &mut buf,
        mtype,
        MessageClass::Request(RequestType::Get),
        mid,
        token,
    )
    .unwrap();
    if let Some(value) = observe {
        e.option_uint(OBSERVE, value).unwrap();
    }
    for segment in segments {
        e.option(URI_PATH, segment.as_bytes()).unwrap();
    }
    if let Some(block) = block {
        e.option_block(BLOCK2, block).unwrap();
    }
    let len = e.payload(&[]).unwrap();
    buf.truncate(len);
    buf
}

/// An empty ACK or RST.
fn empty(mtype: MessageType, mid: u16) -> Vec<u8> {
    let mut buf = [0u8; 4];
    let len = iot_ota::wire::emit_empty(&mut buf, mtype, mid).unwrap();
    buf[..len].to_vec()
}

/// A file written beside its target and renamed over it, as publishers
/// should (README, "Publishing images"), with an mtime in the past so that
/// it counts as settled at once.
fn publish(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::fs::rename(&temp, &path).unwrap();
}

/// A CON request answered by a piggybacked ACK, retransmitted up to 3
/// times.
fn call(socket: &UdpSocket, server: &TestServer, mid: u16, request: &[u8]) -> Vec<u8> {
    support::coap::exchange_until(
        socket,
        server.addr,
        request,
        (3, Duration::from_millis(1000)),
        |raw| {
            let msg = Message::parse(raw).ok()?;
            (msg.mtype == MessageType::Acknowledgement && msg.mid == mid).then(|| raw.to_vec())
        },
    )
    .unwrap_or_else(|| panic!("no answer to MID {mid}; log:\n{}", server.log()))
}

/// A CON GET of `path` with token `token` and Observe `observe`, answered
/// by a piggybacked ACK; its Observe option and payload.
fn observe_call(
    socket: &UdpSocket,
    server: &TestServer,
    mid: u16,
    token: &[u8],
    path: &[&str],
    observe: u32,
) -> (Option<u32>, Vec<u8>) {
    let request = get(
        MessageType::Confirmable,
        mid,
        token,
        path,
        Some(observe),
        None,
    );
    let reply = call(socket, server, mid, &request);
    let msg = Message::parse(&reply).unwrap();
    (msg.observe, msg.payload.to_vec())
}

/// The next notification for `token` within `within`, acknowledged when
/// Confirmable.
fn notification(
    socket: &UdpSocket,
    server: &TestServer,
    token: &[u8],
    within: Duration,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let raw = support::coap::receive_from(socket, server.addr, left)?;
        let Ok(msg) = Message::parse(&raw) else {
            continue;
        };
        if msg.token != token || !matches!(msg.class(), MessageClass::Response(_)) {
            continue;
        }
        if msg.mtype == MessageType::Confirmable {
            socket
                .send_to(&empty(MessageType::Acknowledgement, msg.mid), server.addr)
                .unwrap();
        }
        return Some(raw);
    }
}

/// The client's exit status, within 20 s.
fn wait_client(client: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = client.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the client still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The counters line the server prints when it stops on SIGTERM.
fn final_stats(mut server: TestServer) -> String {
    server.stop_by_signal(libc::SIGTERM)
}

fn counter(stats: &str, name: &str) -> u64 {
    stats
        .split(&format!("{name} "))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no '{name}' in {stats}"))
}

#[test]
fn an_observer_of_the_lookup_hears_of_a_published_image_and_downloads_it() {
    let dir = TempDir::new("observe-lookup");
    let old = image_bytes(3000, 1);
    publish(dir.path(), "OBS_1_0_0_APP.fmu", &old);
    let server = spawn_server(dir.path(), "[::1]:0", &["--rescan", "200"]);
    let out = dir.path().join("downloaded.bin");
    let mut client = Command::new(CLIENT_BIN)
        .arg(server.addr.to_string())
        .args(["--pid", "OBS", "--version", "1.0.0", "--observe", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line is the current answer: nothing newer yet.
    let stdout = client.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10));
    assert_eq!(first.as_deref(), Ok("no update"));

    let new = image_bytes(20_000, 2);
    publish(dir.path(), "OBS_1_1_0_APP.fmu", &new);
    let id = support::image_id("OBS_1_1_0_APP.fmu");
    let second = rx.recv_timeout(NOTIFY_WITHIN);
    assert_eq!(second, Ok(format!("update {id}")), "{}", server.log());
    assert!(wait_client(&mut client).success());
    assert_eq!(std::fs::read(&out).unwrap(), new);
    // It deregistered before exiting.
    let stats = final_stats(server);
    assert_eq!(counter(&stats, "notifications"), 1, "{stats}");
}

#[test]
fn libcoap_follows_a_file_of_the_tree_as_it_is_replaced() {
    if !support::require_program("coap-client-notls") {
        return;
    }
    let dir = TempDir::new("observe-libcoap");
    let v1 = image_bytes(300, 3);
    publish(dir.path(), FILE, &v1);
    let server = spawn_fileserver(dir.path(), "[::1]:0", &["--rescan", "200"]);
    let uri = format!("coap://[::1]:{}/{FILE}", server.addr.port());
    // Every representation libcoap takes is appended to the file.
    let out = dir.path().join("libcoap.out");
    let out_arg = out.to_string_lossy().into_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let output = support::run_bounded(
            Command::new("coap-client-notls")
                .args(["-m", "get", "-b", "64", "-s", "6", "-o", &out_arg, &uri]),
            Duration::from_secs(30),
        );
        let _ = tx.send(output);
    });
    // Replaced twice while libcoap observes (block-wise, 64-byte blocks).
    std::thread::sleep(Duration::from_millis(1500));
    let v2 = image_bytes(2000, 4);
    publish(dir.path(), FILE, &v2);
    std::thread::sleep(Duration::from_millis(1500));
    let v3 = image_bytes(100, 5);
    publish(dir.path(), FILE, &v3);
    let output = rx
        .recv_timeout(Duration::from_secs(40))
        .expect("coap-client ends");
    let got = std::fs::read(&out).unwrap_or_default();
    let expected = [&v1[..], &v2[..], &v3[..]].concat();
    assert!(
        got == expected,
        "libcoap wrote {} bytes, expected {} (v1 {} + v2 {} + v3 {}); stderr: {}; log:\n{}",
        got.len(),
        expected.len(),
        v1.len(),
        v2.len(),
        v3.len(),
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    let stats = final_stats(server);
    assert_eq!(counter(&stats, "notifications"), 2, "{stats}");
}

#[test]
fn our_client_follows_a_file_on_sighup_and_stops_after_count() {
    let dir = TempDir::new("observe-client");
    publish(dir.path(), FILE, b"v1");
    // No timed rescans and no inotify: SIGHUP publishes.
    let server = spawn_fileserver(
        dir.path(),
        "127.0.0.1:0",
        &["--rescan", "0", "--no-inotify"],
    );
    let out = dir.path().join("followed.bin");
    let uri = format!("coap://127.0.0.1:{}/{FILE}", server.addr.port());
    let mut client = Command::new(CLIENT_BIN)
        .args([uri.as_str(), "--observe", "--count", "1", "-b", "64", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The registration's answer is written first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(&out).ok().as_deref() != Some(&b"v1"[..]) {
        assert!(Instant::now() < deadline, "no first body");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v2 = image_bytes(1000, 6);
    publish(dir.path(), FILE, &v2);
    server.signal(libc::SIGHUP);
    assert!(wait_client(&mut client).success());
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    // Deregistered: a further change notifies nobody.
    publish(dir.path(), FILE, b"v3");
    server.signal(libc::SIGHUP);
    assert!(server.wait_for_log("file tree (SIGHUP)", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(300));
    let stats = final_stats(server);
    assert_eq!(counter(&stats, "notifications"), 1, "{stats}");
}

#[test]
fn an_rst_and_observe_1_end_observations() {
    let dir = TempDir::new("observe-end");
    publish(dir.path(), FILE, b"one");
    let server = spawn_fileserver(dir.path(), "[::1]:0", &["--rescan", "200"]);
    let socket = support::client_socket(server.addr);
    let path: Vec<&str> = FILE.split('/').collect();

    // Registered with token A; the first change is notified.
    let registered = observe_call(&socket, &server, 1, b"A", &path, 0);
    assert_eq!(registered, (Some(0), b"one".to_vec()));
    publish(dir.path(), FILE, b"two");
    let raw = notification(&socket, &server, b"A", NOTIFY_WITHIN).expect("a notification");
    let note = Message::parse(&raw).unwrap();
    assert_eq!((note.observe, note.payload), (Some(1), &b"two"[..]));
    assert_eq!(note.etag, Some(&fnv1a64(b"two").to_be_bytes()[..]));
    // The client forgot it: RST. The next change is not sent.
    socket
        .send_to(&empty(MessageType::Reset, note.mid), server.addr)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    publish(dir.path(), FILE, b"three");
    assert_eq!(notification(&socket, &server, b"A", QUIET), None);

    // Registered with token B; Observe 1 ends it (answered as a plain GET).
    assert_eq!(observe_call(&socket, &server, 2, b"B", &path, 0).0, Some(0));
    let deregistered = observe_call(&socket, &server, 3, b"B", &path, 1);
    assert_eq!(deregistered, (None, b"three".to_vec()));
    publish(dir.path(), FILE, b"four");
    assert_eq!(notification(&socket, &server, b"B", QUIET), None);

    // A removed file: its observer gets a last 4.04, without Observe.
    assert_eq!(observe_call(&socket, &server, 4, b"C", &path, 0).0, Some(0));
    std::fs::remove_file(dir.path().join(FILE)).unwrap();
    let raw = notification(&socket, &server, b"C", NOTIFY_WITHIN).expect("a last notification");
    let last = Message::parse(&raw).unwrap();
    assert_eq!(last.class(), MessageClass::Response(ResponseType::NotFound));
    assert_eq!(last.observe, None);
}

#[test]
fn a_full_table_keeps_the_newest_registrations() {
    let dir = TempDir::new("observe-bound");
    publish(dir.path(), "a.bin", b"a");
    let server = spawn_fileserver(
        dir.path(),
        "127.0.0.1:0",
        &["--rescan", "200", "--max-observers", "8"],
    );
    let socket = support::client_socket(server.addr);
    // 200 registrations on discovery, each with its own token.
    for n in 0..200u16 {
        let core = [".well-known", "core"];
        let (observe, _) = observe_call(&socket, &server, n, &n.to_be_bytes(), &core, 0);
        assert_eq!(observe, Some(0));
    }
    // A new file changes the listing: exactly the 8 newest hear of it.
    publish(dir.path(), "b.bin", b"b");
    let mut tokens = Vec::new();
    let deadline = Instant::now() + NOTIFY_WITHIN;
    while let Some(raw) = support::coap::receive_from(
        &socket,
        server.addr,
        if tokens.len() < 8 {
            deadline.saturating_duration_since(Instant::now())
        } else {
            QUIET
        },
    ) {
        let msg = Message::parse(&raw).unwrap();
        if msg.mtype == MessageType::Confirmable {
            socket
                .send_to(&empty(MessageType::Acknowledgement, msg.mid), server.addr)
                .unwrap();
        }
        assert_eq!(msg.observe, Some(1));
        tokens.push(u16::from_be_bytes(msg.token.try_into().unwrap()));
        assert!(tokens.len() <= 8, "more notifications than observers kept");
    }
    tokens.sort_unstable();
    assert_eq!(tokens, (192..200).collect::<Vec<u16>>(), "{}", server.log());
}
