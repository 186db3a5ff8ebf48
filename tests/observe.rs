//! Observe (README, "Observe") over real UDP against the server process:
//! a device waiting on the lookup hears of a published image, libcoap's
//! `coap-client -s` and our client follow a file of the tree as it is
//! replaced, and an observation ends on RST, on Observe 1 and by eviction
//! from a full table. The timing a fleet relies on is measured (the issue
//! asks these tests to: 1,024 observers within a second of a change, one
//! within 250 ms of a SIGHUP), and the message layer checked: dead
//! observers dropped, values fresh across a restart, duplicates answered
//! alike. Datagrams are built with `iot_ota::wire::Emitter` and decoded
//! with `Message::parse`.

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
    let (registered, body) = observe_call(&socket, &server, 1, b"A", &path, 0);
    assert_eq!(body, b"one");
    publish(dir.path(), FILE, b"two");
    let raw = notification(&socket, &server, b"A", NOTIFY_WITHIN).expect("a notification");
    let note = Message::parse(&raw).unwrap();
    assert_eq!(note.payload, b"two");
    assert!(fresh(
        registered.unwrap(),
        note.observe.unwrap(),
        Duration::ZERO
    ));
    assert_eq!(note.etag, Some(&fnv1a64(b"two").to_be_bytes()[..]));
    // The client forgot it: RST. The next change is not sent.
    socket
        .send_to(&empty(MessageType::Reset, note.mid), server.addr)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    publish(dir.path(), FILE, b"three");
    assert_eq!(notification(&socket, &server, b"A", QUIET), None);

    // Registered with token B; Observe 1 ends it (answered as a plain GET).
    assert!(observe_call(&socket, &server, 2, b"B", &path, 0)
        .0
        .is_some());
    let deregistered = observe_call(&socket, &server, 3, b"B", &path, 1);
    assert_eq!(deregistered, (None, b"three".to_vec()));
    publish(dir.path(), FILE, b"four");
    assert_eq!(notification(&socket, &server, b"B", QUIET), None);

    // A removed file: its observer gets a last 4.04, without Observe.
    assert!(observe_call(&socket, &server, 4, b"C", &path, 0)
        .0
        .is_some());
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
        assert!(observe.is_some());
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
        assert!(msg.observe.is_some());
        tokens.push(u16::from_be_bytes(msg.token.try_into().unwrap()));
        assert!(tokens.len() <= 8, "more notifications than observers kept");
    }
    tokens.sort_unstable();
    assert_eq!(tokens, (192..200).collect::<Vec<u16>>(), "{}", server.log());
}

/// RFC 7641 §3.4: whether a notification with Observe value `v2`, received
/// `elapsed` after one with `v1`, is newer (24-bit serial arithmetic, or
/// fresh anyway after 128 s).
fn fresh(v1: u32, v2: u32, elapsed: Duration) -> bool {
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || elapsed > Duration::from_secs(128)
}

/// A file server over a new directory holding `FILE` with `body`,
/// rescanning every `rescan` ms, and a client socket observing `FILE` with
/// `token` (registered with Message ID 1).
struct Observed {
    dir: TempDir,
    server: TestServer,
    socket: UdpSocket,
    /// The Observe value of the registration's answer.
    registered: u32,
}

fn observing(tag: &str, body: &[u8], rescan: &str, token: &[u8]) -> Observed {
    let (dir, server, socket) = serving(tag, body, rescan);
    let path: Vec<&str> = FILE.split('/').collect();
    let (registered, _) = observe_call(&socket, &server, 1, token, &path, 0);
    Observed {
        dir,
        server,
        socket,
        registered: registered.expect("registered"),
    }
}

/// A file server over a new directory holding `FILE` with `body`,
/// rescanning every `rescan` ms, and a client socket for it.
fn serving(tag: &str, body: &[u8], rescan: &str) -> (TempDir, TestServer, UdpSocket) {
    let dir = TempDir::new(tag);
    publish(dir.path(), FILE, body);
    let server = spawn_fileserver(dir.path(), "127.0.0.1:0", &["--rescan", rescan]);
    let socket = support::client_socket(server.addr);
    (dir, server, socket)
}

/// `count` observers of `FILE` (tokens on 64 sockets) registered with
/// the server at `server`, each socket with its tokens.
fn register_fleet(server: &TestServer, count: u16) -> Vec<(UdpSocket, Vec<u16>)> {
    let path: Vec<&str> = FILE.split('/').collect();
    let mut fleet: Vec<(UdpSocket, Vec<u16>)> = (0..64)
        .map(|_| (support::client_socket(server.addr), Vec::new()))
        .collect();
    for n in 0..count {
        let (socket, tokens) = &mut fleet[usize::from(n) % 64];
        let (observe, _) = observe_call(socket, server, n, &n.to_be_bytes(), &path, 0);
        assert!(observe.is_some(), "observer {n} registered");
        tokens.push(n);
    }
    fleet
}

/// When each observer of `fleet` heard of a change (within 5 s), as time
/// since `since`; fails when one was not told.
fn fleet_notified(
    server: &TestServer,
    fleet: &[(UdpSocket, Vec<u16>)],
    since: Instant,
) -> Vec<Duration> {
    let total: usize = fleet.iter().map(|(_, t)| t.len()).sum();
    let mut heard = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    for (socket, _) in fleet {
        socket.set_nonblocking(true).unwrap();
    }
    let mut buf = [0u8; 2048];
    while heard.len() < total && Instant::now() < deadline {
        let mut idle = true;
        for (socket, _) in fleet {
            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                idle = false;
                let msg = Message::parse(&buf[..n]).unwrap();
                let token = u16::from_be_bytes(msg.token.try_into().unwrap());
                heard.entry(token).or_insert_with(|| since.elapsed());
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert_eq!(
        heard.len(),
        total,
        "{} of {total} observers notified; log:\n{}",
        heard.len(),
        server.log()
    );
    let mut times: Vec<Duration> = heard.into_values().collect();
    times.sort_unstable();
    times
}

#[test]
fn a_thousand_observers_hear_of_a_change_within_a_second() {
    // One socket (a blocking receive), then two (poll).
    for extra in [&[][..], &["-l", "127.0.0.1:0"][..]] {
        let dir = TempDir::new("observe-fleet");
        publish(dir.path(), FILE, b"v1");
        let mut args = vec!["--rescan", "100"];
        args.extend_from_slice(extra);
        let server = spawn_fileserver(dir.path(), "127.0.0.1:0", &args);
        let fleet = register_fleet(&server, 1024);
        let changed = Instant::now();
        publish(dir.path(), FILE, b"v2");
        let times = fleet_notified(&server, &fleet, changed);
        let (first, last) = (times[0], times[times.len() - 1]);
        println!(
            "{} socket(s): 1024 observers told {:?} to {:?} after the change (spread {:?}, rescans every 100 ms)",
            1 + extra.len() / 2,
            first,
            last,
            last - first
        );
        assert!(last < Duration::from_secs(1), "the last one after {last:?}");
    }
}

#[test]
fn an_observer_hears_of_a_sighup_within_250_ms() {
    let observed = observing("observe-sighup", b"v1", "1000", b"H");
    let (dir, server, socket) = (&observed.dir, &observed.server, &observed.socket);
    // The change and the signal within microseconds: the SIGHUP's rescan
    // is (all but always) the one that sees it.
    let changed = Instant::now();
    publish(dir.path(), FILE, b"v2");
    server.signal(libc::SIGHUP);
    let raw = notification(socket, server, b"H", Duration::from_secs(5)).expect("a notification");
    let took = changed.elapsed();
    println!("notified {took:?} after the change and SIGHUP (--rescan 1000)");
    assert_eq!(Message::parse(&raw).unwrap().payload, b"v2");
    assert!(
        took < Duration::from_millis(250),
        "{took:?}; log:\n{}",
        server.log()
    );
}

#[test]
fn an_observer_that_never_acknowledges_gets_at_most_five_confirmable_notifications() {
    let observed = observing("observe-silent", b"v0", "50", b"S");
    let (dir, server, socket) = (&observed.dir, &observed.server, &observed.socket);
    let receive = |within: Duration| {
        support::coap::receive_from(socket, server.addr, within)
            .map(|raw| Message::parse(&raw).unwrap().mtype)
    };
    // Nineteen quick changes, each told by a NON (which needs no answer):
    // the next notification is the twentieth, Confirmable (RFC 7641 §4.5).
    for i in 1..20 {
        publish(dir.path(), FILE, format!("v{i}").as_bytes());
        assert_eq!(
            receive(NOTIFY_WITHIN),
            Some(MessageType::NonConfirmable),
            "change {i}"
        );
    }
    // Then a change every 1.5 s for 12 s; the observer never answers.
    let mut cons = Vec::new();
    let start = Instant::now();
    for i in 20..28 {
        publish(dir.path(), FILE, format!("v{i}").as_bytes());
        let next = start + Duration::from_millis(1500) * (i - 19);
        while let Some(mtype) = receive(next.saturating_duration_since(Instant::now())) {
            assert_eq!(mtype, MessageType::Confirmable);
            cons.push(start.elapsed());
        }
    }
    println!("Confirmable notifications at {cons:?} after the first change every 1.5 s");
    // The first transmission and MAX_RETRANSMIT (4) more, then silence
    // while three more changes come (the last one's timeout is 32 s at
    // least, and ends the observation).
    assert_eq!(cons.len(), 5, "{cons:?}; log:\n{}", server.log());
    assert!(cons[4] < Duration::from_millis(7500), "{cons:?}");
}

#[test]
fn a_client_registering_again_after_a_restart_takes_the_new_values_as_fresh() {
    let Observed {
        dir,
        server,
        socket,
        registered,
    } = observing("observe-restart", b"old", "100", b"R");
    let path: Vec<&str> = FILE.split('/').collect();
    publish(dir.path(), FILE, b"old, changed");
    let raw = notification(&socket, &server, b"R", NOTIFY_WITHIN).expect("a notification");
    let last_old = Message::parse(&raw).unwrap().observe.expect("Observe");
    let last_old_at = Instant::now();
    assert!(fresh(registered, last_old, Duration::ZERO));

    // Restarted on the same address; the client registers again with the
    // same token well within 128 s.
    let addr = server.addr;
    drop(server);
    let server = spawn_fileserver(dir.path(), &addr.to_string(), &["--rescan", "100"]);
    assert_eq!(server.addr, addr);
    let (again, body) = observe_call(&socket, &server, 2, b"R", &path, 0);
    let again = again.expect("Observe");
    let elapsed = last_old_at.elapsed();
    assert!(elapsed < Duration::from_secs(100), "{elapsed:?}");
    println!(
        "last value before the restart {last_old:#x}, first after {again:#x}, {elapsed:?} apart"
    );
    assert_eq!(body, b"old, changed");
    assert!(
        fresh(last_old, again, elapsed),
        "{again:#x} after {last_old:#x} reads as stale (RFC 7641 §3.4)"
    );
    // And the notifications after it are newer still.
    publish(dir.path(), FILE, b"new");
    let raw = notification(&socket, &server, b"R", NOTIFY_WITHIN).expect("a notification");
    let next = Message::parse(&raw).unwrap().observe.expect("Observe");
    assert!(
        fresh(again, next, Duration::ZERO),
        "{next:#x} after {again:#x}"
    );
}

#[test]
fn a_duplicated_confirmable_registration_gets_the_same_ack() {
    let (_dir, server, socket) = serving("observe-duplicate", b"one", "200");
    let path: Vec<&str> = FILE.split('/').collect();
    let request = get(MessageType::Confirmable, 9, b"D", &path, Some(0), None);
    let first = call(&socket, &server, 9, &request);
    std::thread::sleep(Duration::from_millis(50));
    let again = call(&socket, &server, 9, &request);
    assert_eq!(again, first, "the duplicate's ACK differs");
    assert!(Message::parse(&first).unwrap().observe.is_some());
}

#[test]
fn an_rst_to_the_answer_of_a_non_registration_ends_it() {
    let (dir, server, socket) = serving("observe-non-rst", b"one", "100");
    let path: Vec<&str> = FILE.split('/').collect();
    let request = get(MessageType::NonConfirmable, 5, b"N", &path, Some(0), None);
    socket.send_to(&request, server.addr).unwrap();
    let raw = notification(&socket, &server, b"N", NOTIFY_WITHIN).expect("an answer");
    let answer = Message::parse(&raw).unwrap();
    assert_eq!(answer.mtype, MessageType::NonConfirmable);
    assert!(answer.observe.is_some(), "registered");
    // The client does not know the token (any more): RST.
    socket
        .send_to(&empty(MessageType::Reset, answer.mid), server.addr)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    publish(dir.path(), FILE, b"two");
    assert_eq!(notification(&socket, &server, b"N", QUIET), None);
}
