//! The live catalog (README, "Publishing images"): the real server process
//! watches its `-d` directory, and images published, replaced and removed
//! while it runs are served without a restart. Each test here fails against
//! a server that reads the directory once (and dies on SIGHUP).
//!
//! Requests are raw datagrams built with `iot_ota::wire::Emitter`; replies
//! are decoded with `Message::parse`. Expected bytes, ids and content tags
//! are computed here (support::image_bytes, support::image_id, FNV-1a 64),
//! not taken from the server.

mod support;

use coap_lite::{MessageClass, MessageType, ResponseType};
use iot_ota::wire::{Block, Message};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{image_bytes, image_id, spawn_server, TempDir, TestServer};

/// `APP` as a TYPE number.
const TYPE_APP: u8 = 3;
/// Block2 SZX 2: 64-byte blocks, as RIOT's transport asks.
const SZX_64: u8 = 2;
/// How long one request waits for its reply before it is sent again.
const REPLY_TIMEOUT: Duration = Duration::from_millis(1000);
/// Sends of one request before the test gives up.
const ATTEMPTS: usize = 3;
/// Bound on waiting for a log line the server writes within a rescan.
const LOG_WAIT: Duration = Duration::from_secs(5);
/// A little more than the server's interval between rescans caused by
/// requests that miss (250 ms).
const PAST_MISS_INTERVAL: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------- helpers

/// FNV-1a 64 of `bytes` as the 8 bytes of an ETag: the content tag of
/// README, computed here again.
fn content_tag(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
        .to_be_bytes()
        .to_vec()
}

/// Publishes `bytes` as `name` the recommended way: written under an
/// ignored name (dot file, `.tmp`), then renamed into place.
fn publish(dir: &TempDir, name: &str, bytes: &[u8]) {
    let tmp = dir.path().join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write the temporary file");
    std::fs::rename(&tmp, dir.path().join(name)).expect("rename into place");
}

/// A decoded reply, owned.
#[derive(Debug, Clone)]
struct Reply {
    mtype: MessageType,
    code: MessageClass,
    mid: u16,
    etag: Option<Vec<u8>>,
    block2: Option<Block>,
    max_age: Option<u32>,
    payload: Vec<u8>,
}

impl Reply {
    fn is(&self, code: ResponseType) -> bool {
        self.code == MessageClass::Response(code)
    }
}

/// A Confirmable GET of the path `segments`, with an optional Block2 and
/// payload.
fn get(mid: u16, token: &[u8], segments: &[&str], block: Option<Block>, payload: &[u8]) -> Vec<u8> {
    support::coap::con_get(mid, token, segments, block, payload)
}

/// One client socket and its next Message ID.
struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    mid: u16,
}

impl Client {
    fn new(server: &TestServer) -> Client {
        Client {
            socket: support::client_socket(server.addr),
            server: server.addr,
            mid: 0x1000,
        }
    }

    /// Sends `datagram` (retransmitted as CoAP does) and returns the
    /// piggybacked reply with its Message ID `mid`; the test fails without.
    fn call_raw(&self, mid: u16, datagram: &[u8]) -> Reply {
        support::coap::exchange_until(
            &self.socket,
            self.server,
            datagram,
            (ATTEMPTS, REPLY_TIMEOUT),
            |raw| {
                let msg = Message::parse(raw).ok()?;
                (msg.mid == mid && msg.mtype == MessageType::Acknowledgement).then(|| Reply {
                    mtype: msg.mtype,
                    code: msg.class(),
                    mid: msg.mid,
                    etag: msg.etag.map(<[u8]>::to_vec),
                    block2: msg.block2.and_then(Result::ok),
                    max_age: msg.max_age,
                    payload: msg.payload.to_vec(),
                })
            },
        )
        .unwrap_or_else(|| panic!("no reply to Message ID {mid} from {}", self.server))
    }

    /// GET of `segments` with the next Message ID and token `[0x7a]`.
    fn call(&mut self, segments: &[&str], block: Option<Block>, payload: &[u8]) -> Reply {
        self.mid = self.mid.wrapping_add(1);
        let mid = self.mid;
        self.call_raw(mid, &get(mid, &[0x7a], segments, block, payload))
    }

    /// The lookup form of `GET /updates` for a device of `pid`, TYPE APP,
    /// version 0.0.0: `Some(id)` on 2.05, `None` on 4.04.
    fn lookup(&mut self, pid: &str) -> Option<String> {
        let reply = self.call(
            &["updates"],
            None,
            &support::device_payload(pid, TYPE_APP, 0, None),
        );
        if reply.is(ResponseType::NotFound) {
            return None;
        }
        assert_is(&reply, ResponseType::Content, &format!("lookup for {pid}"));
        Some(String::from_utf8(reply.payload).expect("an id is ASCII"))
    }

    /// Block `num` (64 bytes) of `/updates/{id}`.
    fn block(&mut self, id: &str, num: u32) -> Reply {
        self.call(&["updates", id], Some(block64(num)), &[])
    }

    /// The whole image `id` by 64-byte blocks; every block must be 2.05
    /// under the ETag of block 0. Returns the body and that ETag.
    fn download(&mut self, id: &str) -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::new();
        let mut etag = None;
        for num in 0..100_000 {
            let reply = self.block(id, num);
            assert_is(
                &reply,
                ResponseType::Content,
                &format!("block {num} of {id}"),
            );
            let tag = reply.etag.clone().expect("a block carries an ETag");
            assert_eq!(
                etag.get_or_insert_with(|| tag.clone()),
                &tag,
                "the ETag changed at block {num} of {id}"
            );
            body.extend_from_slice(&reply.payload);
            let block = reply.block2.expect("a block carries Block2");
            if !block.more {
                return (body, tag);
            }
        }
        panic!("{id} did not end within 100000 blocks");
    }
}

fn block64(num: u32) -> Block {
    Block {
        num,
        more: false,
        szx: SZX_64,
    }
}

/// The server on an ephemeral loopback port with `--settle SETTLE` and
/// `--rescan RESCAN` (milliseconds), without inotify: these tests hold the
/// fallback (timed rescans, misses, SIGHUP, the settle rule);
/// `tests/file_tree.rs` holds publishing with inotify.
fn live_server(dir: &TempDir, settle: &str, rescan: &str) -> TestServer {
    spawn_server(
        dir.path(),
        "127.0.0.1:0",
        &["--settle", settle, "--rescan", rescan, "--no-inotify"],
    )
}

/// Waits (at most [`LOG_WAIT`]) for `needle` in the server's log; the test
/// fails without, saying `what` and showing the log.
fn expect_log(server: &TestServer, needle: &str, what: &str) {
    assert!(
        server.wait_for_log(needle, LOG_WAIT),
        "{what}: no {needle:?} in the log within {LOG_WAIT:?}; log:\n{}",
        server.log()
    );
}

/// Asserts `reply` has the response code `code`, naming `what` and showing
/// the code and payload received.
fn assert_is(reply: &Reply, code: ResponseType, what: &str) {
    assert!(
        reply.is(code),
        "{what}: {} {:?}",
        reply.code,
        String::from_utf8_lossy(&reply.payload)
    );
}

/// Asserts `got` is `expected` byte for byte, naming the first difference.
fn assert_bytes(got: &[u8], expected: &[u8], what: &str) {
    assert!(
        got == expected,
        "{what}: {} bytes received, {} expected, first difference at {:?}",
        got.len(),
        expected.len(),
        got.iter().zip(expected).position(|(a, b)| a != b)
    );
}

/// Polls `lookup(pid)` every 50 ms until it answers `id`, for at most
/// `within`; returns how long it took.
fn lookup_until(client: &mut Client, pid: &str, id: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = client.lookup(pid);
        if got.as_deref() == Some(id) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "the lookup for {pid} answered {got:?}, not {id}, for {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `iot-ota-client` as a device of `pid` at version 0.0.0, body to `out`,
/// with a short retransmission timeout; its exit code.
fn run_client(server: &TestServer, pid: &str, out: &Path) -> Option<i32> {
    let output = support::run_bounded(
        Command::new(support::CLIENT_BIN)
            .arg(server.addr.to_string())
            .args(["--pid", pid, "--version", "0.0.0", "-b", "64"])
            .args(["--timeout-ms", "300", "-o"])
            .arg(out),
        Duration::from_secs(30),
    );
    output.status.code()
}

// ---------------------------------------------------------------- tests

#[test]
fn publish_then_lookup_finds_it_without_restart() {
    let dir = TempDir::new("live-publish");
    let name = "LIVEPUB_1_0_0_APP.fmu";
    let bytes = image_bytes(3000, 11);
    let id = image_id(name);
    let out = dir.path().join("body.out");
    {
        let server = live_server(&dir, "0", "0");
        let mut client = Client::new(&server);
        assert_eq!(client.lookup("LIVEPUB"), None, "nothing published yet");
        assert_eq!(
            run_client(&server, "LIVEPUB", &out),
            Some(3),
            "the client reports no update"
        );
        publish(&dir, name, &bytes);
        std::thread::sleep(PAST_MISS_INTERVAL);
        // The first request after publishing finds it: the miss rescans
        // and is answered from the new snapshot.
        assert_eq!(client.lookup("LIVEPUB").as_deref(), Some(id.as_str()));
        assert!(server.wait_for_log(&format!("published {name}"), LOG_WAIT));
        assert_eq!(run_client(&server, "LIVEPUB", &out), Some(0));
        let got = std::fs::read(&out).expect("the client wrote the body");
        assert_bytes(&got, &bytes, "download after publishing");
        let (body, tag) = client.download(&id);
        assert_bytes(&body, &bytes, "raw download after publishing");
        assert_eq!(tag, content_tag(&bytes));
    }

    // Default --rescan and --settle: found within about 1.5 s.
    let dir = TempDir::new("live-publish-default");
    let server = spawn_server(dir.path(), "127.0.0.1:0", &[]);
    let mut client = Client::new(&server);
    assert_eq!(client.lookup("LIVEPUB"), None);
    publish(&dir, name, &bytes);
    let took = lookup_until(&mut client, "LIVEPUB", &id, Duration::from_millis(1500));
    eprintln!("found with the default --rescan and --settle after {took:?}");
    let (body, _) = client.download(&id);
    assert_bytes(&body, &bytes, "download with the defaults");
}

#[test]
fn in_flight_download_of_the_old_image_finishes_byte_exact_while_a_newer_one_is_published() {
    let dir = TempDir::new("live-inflight");
    let old_name = "INFLIGHT_1_0_0_APP.fmu";
    let new_name = "INFLIGHT_1_0_1_APP.fmu";
    let old = image_bytes(20_000, 21);
    let new = image_bytes(20_500, 22);
    dir.write(old_name, &old);
    let server = live_server(&dir, "0", "100");
    let mut client = Client::new(&server);
    let old_id = image_id(old_name);
    assert_eq!(client.lookup("INFLIGHT").as_deref(), Some(old_id.as_str()));

    let tag = content_tag(&old);
    let blocks = old.len().div_ceil(64) as u32;
    let mut body = Vec::new();
    for num in 0..blocks {
        if num == blocks / 3 {
            publish(&dir, new_name, &new);
            expect_log(
                &server,
                &format!("published {new_name}"),
                "the new image was not published",
            );
        }
        let reply = client.block(&old_id, num);
        assert!(reply.is(ResponseType::Content), "block {num}: {reply:?}");
        assert_eq!(reply.etag.as_deref(), Some(&tag[..]), "ETag of block {num}");
        let at = num as usize * 64;
        assert_bytes(
            &reply.payload,
            &old[at..(at + 64).min(old.len())],
            &format!("block {num} of the old image"),
        );
        assert_eq!(reply.block2.map(|b| b.more), Some(num + 1 < blocks));
        body.extend_from_slice(&reply.payload);
    }
    assert_bytes(&body, &old, "the old image, downloaded across the publish");
    assert_eq!(
        client.lookup("INFLIGHT").as_deref(),
        Some(image_id(new_name).as_str()),
        "the lookup offers the newer image"
    );
    let (body, tag) = client.download(&image_id(new_name));
    assert_bytes(&body, &new, "the newer image");
    assert_eq!(tag, content_tag(&new));
}

/// The writer pauses half-way for 400 ms, less than the settle time: a
/// file is admitted once its modification time is `--settle` old, so a
/// pause longer than the settle time would let the half-written state in
/// (README, "Publishing images": publish by rename).
#[test]
fn slow_in_place_overwrite_is_never_served_half_written() {
    const PAUSE: Duration = Duration::from_millis(400);
    let dir = TempDir::new("live-overwrite");
    let name = "OVERWRITE_1_0_0_APP.fmu";
    let id = image_id(name);
    let old = image_bytes(4096, 31);
    let new = image_bytes(4096, 32);
    let old_tag = content_tag(&old);
    let new_tag = content_tag(&new);
    let path = dir.write(name, &old);
    let server = live_server(&dir, "1500", "100");

    let written = Arc::new(AtomicBool::new(false));
    let writer = {
        let new = new.clone();
        let written = Arc::clone(&written);
        std::thread::spawn(move || {
            use std::io::Write;
            std::thread::sleep(Duration::from_millis(200));
            // As cp and a shell's > do: truncate, then write.
            let mut file = std::fs::File::create(&path).expect("open for writing");
            file.write_all(&new[..new.len() / 2]).expect("write half");
            std::thread::sleep(PAUSE);
            file.write_all(&new[new.len() / 2..])
                .expect("write the rest");
            drop(file);
            written.store(true, Ordering::SeqCst);
        })
    };

    let mut client = Client::new(&server);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut olds, mut news, mut restarts) = (0usize, 0usize, 0usize);
    'downloads: loop {
        assert!(
            Instant::now() < deadline,
            "the new image was not served within 20 s ({olds} old bodies, {news} new); log:\n{}",
            server.log()
        );
        let mut body = Vec::new();
        let mut body_tag: Option<Vec<u8>> = None;
        for num in 0.. {
            let reply = client.block(&id, num);
            assert_is(&reply, ResponseType::Content, &format!("block {num}"));
            let tag = reply.etag.clone().expect("ETag");
            let at = num as usize * 64;
            let expected = if tag == old_tag {
                &old
            } else if tag == new_tag {
                &new
            } else {
                panic!(
                    "block {num} under ETag {tag:02x?}, neither the old nor the new content tag: a half-written file was served; log:\n{}",
                    server.log()
                );
            };
            assert_bytes(
                &reply.payload,
                &expected[at..(at + 64).min(expected.len())],
                &format!("block {num} under its ETag"),
            );
            if body_tag.get_or_insert_with(|| tag.clone()) != &tag {
                // Replaced mid-download: a client checking ETags starts over.
                restarts += 1;
                continue 'downloads;
            }
            body.extend_from_slice(&reply.payload);
            if !reply.block2.expect("Block2").more {
                break;
            }
        }
        let tag = body_tag.expect("at least one block");
        assert_eq!(content_tag(&body), tag, "a body matches its content tag");
        if body == old {
            olds += 1;
        } else if body == new {
            news += 1;
            if written.load(Ordering::SeqCst) {
                break;
            }
        } else {
            panic!("a body of {} bytes that is neither image", body.len());
        }
    }
    writer.join().expect("writer");
    eprintln!("{olds} old bodies, {news} new, {restarts} restarted on a new ETag");
    assert!(
        olds > 0,
        "the old image was served while the file was written"
    );
    assert!(server.wait_for_log(&format!("replaced {name}"), LOG_WAIT));
}

#[test]
fn new_file_not_settled_gets_5_03_with_max_age() {
    let dir = TempDir::new("live-settle");
    let server = live_server(&dir, "3000", "200");
    let mut client = Client::new(&server);
    let name = "SETTLE_1_0_0_APP.fmu";
    let id = image_id(name);
    let bytes = image_bytes(700, 41);
    let written_at = Instant::now();
    dir.write(name, &bytes);
    let reply = client.block(&id, 0);
    assert_is(
        &reply,
        ResponseType::ServiceUnavailable,
        "a new file not settled",
    );
    let max_age = reply.max_age.expect("5.03 carries Max-Age");
    assert!((1..=3).contains(&max_age), "Max-Age {max_age}");
    assert!(!reply.payload.is_empty(), "5.03 carries a diagnostic");
    eprintln!(
        "5.03 Max-Age {max_age}: {}",
        String::from_utf8_lossy(&reply.payload)
    );
    assert_eq!(
        client.lookup("SETTLE"),
        None,
        "not offered before it settled"
    );

    loop {
        let reply = client.block(&id, 0);
        if reply.is(ResponseType::Content) {
            break;
        }
        assert!(reply.is(ResponseType::ServiceUnavailable), "{reply:?}");
        assert!(
            written_at.elapsed() < Duration::from_secs(8),
            "not served 8 s after it was written; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let waited = written_at.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "served after {waited:?}"
    );
    let (body, tag) = client.download(&id);
    assert_bytes(&body, &bytes, "the settled image");
    assert_eq!(tag, content_tag(&bytes));
    assert_eq!(client.lookup("SETTLE").as_deref(), Some(id.as_str()));
}

#[test]
fn collision_on_rescan_keeps_the_last_good_catalog() {
    const WARNING: &str = "the last good catalog keeps serving";
    let dir = TempDir::new("live-collision");
    let name = "COLLIDE_1_0_0_APP.fmu";
    let twin = "COLLIDE_1_0_0_APP_0x12345678.fmu";
    let newer = "COLLIDE_1_0_1_APP.fmu";
    let id = image_id(name);
    let bytes = image_bytes(1000, 51);
    dir.write(name, &bytes);
    let server = live_server(&dir, "0", "100");
    let mut client = Client::new(&server);

    publish(&dir, twin, &image_bytes(900, 52));
    expect_log(&server, WARNING, "no warning about the collision");
    // Several rescans see the same collision: one warning.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(client.lookup("COLLIDE").as_deref(), Some(id.as_str()));
    let (body, _) = client.download(&id);
    assert_bytes(&body, &bytes, "the image of the last good catalog");
    let reply = client.block(&image_id(twin), 0);
    assert!(reply.is(ResponseType::NotFound), "the twin: {reply:?}");
    let log = server.log();
    assert_eq!(log.matches(WARNING).count(), 1, "log:\n{log}");
    assert!(
        log.contains(twin),
        "the warning names the files; log:\n{log}"
    );

    std::fs::remove_file(dir.path().join(twin)).expect("remove the twin");
    expect_log(&server, "the problem is gone", "the twin removed");
    assert_eq!(client.lookup("COLLIDE").as_deref(), Some(id.as_str()));
    let (body, _) = client.download(&id);
    assert_bytes(&body, &bytes, "after the collision was fixed");

    let newer_bytes = image_bytes(1100, 53);
    publish(&dir, newer, &newer_bytes);
    expect_log(&server, &format!("published {newer}"), "the newer image");
    assert_eq!(
        client.lookup("COLLIDE").as_deref(),
        Some(image_id(newer).as_str())
    );
    let (body, _) = client.download(&image_id(newer));
    assert_bytes(&body, &newer_bytes, "published after the collision");
    assert_eq!(server.log().matches(WARNING).count(), 1);
}

#[test]
fn removed_image_gives_4_04_for_later_blocks() {
    let dir = TempDir::new("live-remove");
    let name = "REMOVE_1_0_0_APP.fmu";
    let id = image_id(name);
    let bytes = image_bytes(2000, 61);
    dir.write(name, &bytes);
    let server = live_server(&dir, "0", "100");
    let mut client = Client::new(&server);
    for num in 0..2 {
        let reply = client.block(&id, num);
        assert!(reply.is(ResponseType::Content), "block {num}: {reply:?}");
        let at = num as usize * 64;
        assert_bytes(&reply.payload, &bytes[at..at + 64], "before the removal");
    }
    std::fs::remove_file(dir.path().join(name)).expect("remove");
    expect_log(&server, &format!("removed {name}"), "the removal");
    let reply = client.block(&id, 2);
    assert_is(&reply, ResponseType::NotFound, "block 2 after the removal");
    assert_eq!(client.lookup("REMOVE"), None, "nothing offered");
    let reply = client.block(&id, 0);
    assert!(reply.is(ResponseType::NotFound), "block 0: {reply:?}");
}

#[test]
fn sighup_rescans_and_sigterm_exits_cleanly() {
    for (stop, what) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = TempDir::new("live-signals");
        let name = "SIGNAL_1_0_0_APP.fmu";
        let mut server = live_server(&dir, "0", "0");
        let mut client = Client::new(&server);
        // Answered: the loop runs, its signal handlers are installed.
        assert_eq!(client.lookup("SIGNAL"), None);
        let bytes = image_bytes(500, 71);
        publish(&dir, name, &bytes);
        server.signal(libc::SIGHUP);
        expect_log(
            &server,
            &format!("published {name}"),
            "SIGHUP did not rescan",
        );
        assert!(server.wait_for_log("catalog (SIGHUP): 1 images", LOG_WAIT));
        assert!(server.is_running(), "SIGHUP stopped the server");
        let (body, _) = client.download(&image_id(name));
        assert_bytes(&body, &bytes, "after SIGHUP");

        let stats = stop_with(&mut server, stop, what);
        assert!(
            stats.contains("rescans ") && stats.contains("catalog changes 1"),
            "{stats}"
        );
    }
}

/// RIOT's CoAP transport: Message ID = block number, restarting at 0 for
/// every download, an empty token, 64-byte blocks, all from one port. B is
/// published after A was downloaded; its requests reuse A's Message IDs
/// but differ in bytes, so they are new requests, not duplicates.
#[test]
fn message_ids_restarting_at_0_from_one_port_are_new_requests() {
    let dir = TempDir::new("live-riot");
    let a_name = "RIOTA_1_0_0_APP.fmu";
    let b_name = "RIOTB_1_0_0_APP.fmu";
    let a = image_bytes(1000, 81);
    let b = image_bytes(1500, 82);
    dir.write(a_name, &a);
    let server = live_server(&dir, "0", "0");
    let client = Client::new(&server);

    let riot_download = |id: &str, expected: &[u8], what: &str| {
        let mut body = Vec::new();
        for num in 0u16..1000 {
            let datagram = get(num, &[], &["updates", id], Some(block64(num.into())), &[]);
            let reply = client.call_raw(num, &datagram);
            assert_eq!(reply.mid, num);
            assert_eq!(reply.mtype, MessageType::Acknowledgement);
            assert_is(
                &reply,
                ResponseType::Content,
                &format!("{what} block {num}"),
            );
            assert_eq!(
                reply.etag,
                Some(content_tag(expected)),
                "{what} block {num}"
            );
            body.extend_from_slice(&reply.payload);
            if !reply.block2.expect("Block2").more {
                break;
            }
        }
        assert_bytes(&body, expected, what);
    };
    riot_download(&image_id(a_name), &a, "image A");
    publish(&dir, b_name, &b);
    riot_download(&image_id(b_name), &b, "image B, Message IDs from 0 again");
    // And A again, from the same port with the same Message IDs.
    riot_download(&image_id(a_name), &a, "image A again");
}

/// With timed rescans off, a file that was still settling when first
/// asked for is served once it has settled: the 5.03 answers count as
/// misses, so a later request rescans.
#[test]
fn with_timed_rescans_off_a_settling_file_is_served_once_settled() {
    let dir = TempDir::new("live-settle-off");
    let server = live_server(&dir, "1000", "0");
    let mut client = Client::new(&server);
    let name = "OFFSETTLE_1_0_0_APP.fmu";
    let id = image_id(name);
    let bytes = image_bytes(500, 43);
    let written_at = Instant::now();
    dir.write(name, &bytes);
    // The first request rescans on its miss and finds the file unsettled.
    assert_is(
        &client.block(&id, 0),
        ResponseType::ServiceUnavailable,
        "unsettled",
    );
    loop {
        std::thread::sleep(PAST_MISS_INTERVAL);
        let reply = client.block(&id, 0);
        if reply.is(ResponseType::Content) {
            break;
        }
        assert!(
            written_at.elapsed() < Duration::from_secs(6),
            "still {reply:?} 6 s after it was written with --settle 1000 --rescan 0; log:\n{}",
            server.log()
        );
    }
    let (body, _) = client.download(&id);
    assert_bytes(&body, &bytes, "the settled image");
}

/// A file renamed over an image with the same length and modification time
/// (what `cp -p`, `rsync -t` or a reproducible build leave) is a new file:
/// its inode and change time differ, and the next rescan serves it.
#[test]
fn replacement_with_the_same_length_and_mtime_is_seen() {
    let dir = TempDir::new("live-same-stamp");
    let name = "STAMP_1_0_0_APP.fmu";
    let old = image_bytes(900, 44);
    let new = image_bytes(900, 45);
    let path = dir.write(name, &old);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let server = live_server(&dir, "0", "100");
    let mut client = Client::new(&server);
    let id = image_id(name);
    assert_eq!(client.download(&id).1, content_tag(&old));
    let staged = dir.write(".staged.tmp", &new);
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&staged, &path).unwrap();
    expect_log(
        &server,
        &format!("replaced {name}"),
        "the rename over the image",
    );
    let (body, tag) = client.download(&id);
    assert_bytes(&body, &new, "the replacement");
    assert_eq!(tag, content_tag(&new));
}

/// With `--rate-limit 1`, a request that misses and makes the server
/// rescan is counted once: it gets its 4.04, not a 4.29.
#[test]
fn a_miss_that_rescans_counts_once_against_the_rate_limit() {
    let dir = TempDir::new("live-rate");
    let server = spawn_server(
        dir.path(),
        "127.0.0.1:0",
        &["--rescan", "0", "--rate-limit", "1"],
    );
    let mut client = Client::new(&server);
    let reply = client.block("deadbeef", 0);
    assert_is(&reply, ResponseType::NotFound, "an unknown id, once");
}

/// Devices polling for an update that is not there do not make the server
/// scan its directory on every poll: a miss rescans only when the
/// directory changed since the last scan (README, "Publishing images").
#[test]
fn polling_misses_on_an_unchanged_directory_rescan_once() {
    let dir = TempDir::new("live-poll");
    let mut server = live_server(&dir, "0", "0");
    let mut client = Client::new(&server);
    for _ in 0..4 {
        assert_eq!(client.lookup("POLLED"), None, "no image yet");
        std::thread::sleep(PAST_MISS_INTERVAL);
    }
    // A change is still found by the next miss.
    publish(&dir, "POLLED_1_0_0_APP.fmu", &image_bytes(100, 46));
    std::thread::sleep(PAST_MISS_INTERVAL);
    assert!(client.lookup("POLLED").is_some(), "published image found");
    let stats = stop_with(&mut server, libc::SIGTERM, "SIGTERM");
    // The first miss scans (nothing is known of the directory yet), the
    // three polls after it on the unchanged directory do not, the miss
    // after the publication does.
    assert!(
        stats.contains("rescans 2 catalog changes 1"),
        "{stats}\nlog:\n{}",
        server.log()
    );
}

/// Overwrites `name` in `dir` in place with `bytes` (as `cp` over it does:
/// same file, truncated and written), then waits until a fresh download's
/// block 0 from another socket comes under `new_tag`: from then on the
/// server serves the new version to new downloads.
fn overwrite_and_wait(
    server: &TestServer,
    dir: &TempDir,
    name: &str,
    bytes: &[u8],
    new_tag: &[u8],
) {
    dir.write(name, bytes);
    let mut probe = Client::new(server);
    let id = image_id(name);
    let start = Instant::now();
    while probe.block(&id, 0).etag.as_deref() != Some(new_tag) {
        assert!(
            start.elapsed() < LOG_WAIT,
            "the overwrite of {name} was not taken in within {LOG_WAIT:?}; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One paced download, block by block at SZX 2: `request(num)` is the
/// datagram for block `num` (with Message ID `mid(num)`), and `between(num)`
/// runs after block `num` arrived. Every block must be 2.05; returns the
/// body and the ETag of every block.
fn paced_download(
    client: &Client,
    mid: impl Fn(u32) -> u16,
    request: impl Fn(u32) -> Vec<u8>,
    mut between: impl FnMut(u32),
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (mut body, mut tags) = (Vec::new(), Vec::new());
    for num in 0..10_000 {
        let reply = client.call_raw(mid(num), &request(num));
        assert_is(&reply, ResponseType::Content, &format!("block {num}"));
        tags.push(reply.etag.clone().expect("a block carries an ETag"));
        body.extend_from_slice(&reply.payload);
        if !reply.block2.expect("a block carries Block2").more {
            return (body, tags);
        }
        between(num);
    }
    panic!("the download did not end within 10000 blocks");
}

/// Asserts the download `got` (body, ETag of every block) is `expected`
/// whole under its content tag, naming `what`.
fn assert_download(got: &(Vec<u8>, Vec<Vec<u8>>), expected: &[u8], what: &str) {
    let tag = content_tag(expected);
    if let Some(num) = got.1.iter().position(|t| *t != tag) {
        panic!(
            "{what}: block {num} under ETag {:02x?}, not {tag:02x?}",
            got.1[num]
        );
    }
    assert_bytes(&got.0, expected, what);
}

/// README, "Publishing images": an image overwritten in place (same name,
/// so the same id) during a paced download by id (SZX 2, a new token on
/// every block, as libcoap's `coap-client` sends them): the download ends
/// byte-exact with the version it began with, every block under that
/// version's ETag; a download begun after the overwrite gets the new
/// version; the log says the download was held.
#[test]
fn an_overwrite_in_place_during_a_paced_download_by_id_keeps_its_version() {
    let dir = TempDir::new("live-hold-by-id");
    let name = "HOLD_1_0_0_APP.fmu";
    let id = image_id(name);
    let old = image_bytes(4096, 61);
    let new = image_bytes(4096, 62);
    dir.write(name, &old);
    let server = live_server(&dir, "100", "50");
    let client = Client::new(&server);
    let request = |num: u32| {
        let token = (0x5100 + num).to_be_bytes();
        get(
            0x100 + num as u16,
            &token,
            &["updates", &id],
            Some(block64(num)),
            &[],
        )
    };
    let got = paced_download(
        &client,
        |num| 0x100 + num as u16,
        request,
        |num| {
            std::thread::sleep(Duration::from_millis(2));
            if num == 20 {
                overwrite_and_wait(&server, &dir, name, &new, &content_tag(&new));
            }
        },
    );
    assert_download(&got, &old, "the download begun before the overwrite");
    expect_log(
        &server,
        &format!("download of image {name} held on the version it began with"),
        "the held download",
    );
    let mut after = Client::new(&server);
    let (body, tag) = after.download(&id);
    assert_download(&(body, vec![tag]), &new, "a download begun after");
}

/// The legacy form likewise, in two downloads side by side begun before
/// the overwrite: a device that repeats its payload on every block, and a
/// stock client that sends it with block 0 only and a new token on every
/// block (payload-less continuations). Both end with the old version; a
/// device that starts after the overwrite gets the new one.
#[test]
fn an_overwrite_in_place_during_paced_legacy_downloads_keeps_their_version() {
    let dir = TempDir::new("live-hold-legacy");
    let name = "HOLDL_1_0_0_APP.fmu";
    let old = image_bytes(4096, 63);
    let new = image_bytes(4096, 64);
    dir.write(name, &old);
    let server = live_server(&dir, "100", "50");
    let payload = support::device_payload("HOLDL", TYPE_APP, 0, Some(0));
    let repeating = Client::new(&server);
    let stock = Client::new(&server);
    let repeat = |num: u32| {
        get(
            0x200 + num as u16,
            b"d",
            &["updates"],
            Some(block64(num)),
            &payload,
        )
    };
    let once = |num: u32| {
        let token = (0x5200 + num).to_be_bytes();
        let body: &[u8] = if num == 0 { &payload } else { &[] };
        get(
            0x300 + num as u16,
            &token,
            &["updates"],
            Some(block64(num)),
            body,
        )
    };
    // The stock client gets its blocks between the device's, and the
    // rest after.
    let mut stock_got = (Vec::new(), Vec::new());
    let mut stock_num = 0u32;
    let mut stock_more = true;
    let mut stock_block = || {
        let reply = stock.call_raw(0x300 + stock_num as u16, &once(stock_num));
        assert_is(
            &reply,
            ResponseType::Content,
            &format!("stock block {stock_num}"),
        );
        stock_got.1.push(reply.etag.clone().expect("ETag"));
        stock_got.0.extend_from_slice(&reply.payload);
        stock_more = reply.block2.expect("Block2").more;
        stock_num += 1;
        stock_more
    };
    let got = paced_download(
        &repeating,
        |num| 0x200 + num as u16,
        repeat,
        |num| {
            std::thread::sleep(Duration::from_millis(2));
            stock_block();
            if num == 20 {
                overwrite_and_wait(&server, &dir, name, &new, &content_tag(&new));
            }
        },
    );
    assert_download(&got, &old, "the device repeating its payload");
    let mut rest = 0;
    while stock_block() {
        rest += 1;
        assert!(rest < 10_000, "the stock client's download did not end");
    }
    assert_download(
        &stock_got,
        &old,
        "the stock client (payload with block 0 only)",
    );
    expect_log(
        &server,
        &format!("download of image {name} held on the version it began with"),
        "the held downloads",
    );
    let late = Client::new(&server);
    let late_got = paced_download(
        &late,
        |num| 0x400 + num as u16,
        |num| {
            get(
                0x400 + num as u16,
                b"n",
                &["updates"],
                Some(block64(num)),
                &payload,
            )
        },
        |_| {},
    );
    assert_download(&late_got, &new, "a device that starts after the overwrite");
}

/// Sends `signal` (named `what`), expects exit status 0 within
/// [`LOG_WAIT`] and returns the final counters line.
fn stop_with(server: &mut TestServer, signal: i32, what: &str) -> String {
    server.signal(signal);
    let status = server
        .wait_exit(LOG_WAIT)
        .unwrap_or_else(|| panic!("still running 5 s after {what}"));
    assert_eq!(status.code(), Some(0), "exit status after {what}");
    expect_log(server, "stopping on a signal", &format!("after {what}"));
    server
        .log()
        .lines()
        .find(|l| l.contains("stopping on a signal"))
        .expect("the line")
        .to_owned()
}
