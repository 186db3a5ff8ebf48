//! The file tree (README, "Serving a file tree"): `iot-ota-server
//! --fileserver DIR` answers the URLs `aiocoap-fileserver DIR` answers, as
//! RIOT's SUIT workflow and Zephyr's `coap_download` fetch them. The real
//! server process, raw datagrams built with `iot_ota::wire::Emitter`,
//! replies decoded with `Message::parse`; expected bytes and tags are
//! computed here.

mod support;

use coap_lite::{MessageClass, MessageType, ResponseType};
use iot_ota::hash::fnv1a64;
use iot_ota::wire::{Block, Message};
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{image_bytes, spawn_fileserver, TempDir, TestServer};

/// Block2 SZX 2: 64-byte blocks, as RIOT's transport asks.
/// How long a log line may take to reach the test: the server writes it
/// before its reply, but the thread reading its stderr may lag.
const LOG_WAIT: Duration = Duration::from_secs(5);
const SZX_64: u8 = 2;
const REPLY_TIMEOUT: Duration = Duration::from_millis(1000);
const ATTEMPTS: usize = 3;
const SUIT: &str = "fw/app/board/riot.suit.latest.bin";
const SLOT0: &str = "fw/app/board/slot0.5.bin";

/// A Confirmable GET of the Uri-Path `segments` (kept as given, empty
/// ones too), with an optional Block2.
fn get(mid: u16, token: &[u8], segments: &[&str], block: Option<Block>) -> Vec<u8> {
    support::coap::con_get(mid, token, segments, block, &[])
}

/// A reply's fields, owned.
#[derive(Debug)]
struct Reply {
    code: MessageClass,
    etag: Option<Vec<u8>>,
    content_format: Option<u16>,
    block2: Option<Block>,
    payload: Vec<u8>,
}

/// Sends `datagram` (retransmitted as CoAP does) and returns the
/// piggybacked ACK with Message ID `mid`.
fn call(socket: &UdpSocket, server: &TestServer, mid: u16, datagram: &[u8]) -> Reply {
    support::coap::exchange_until(
        socket,
        server.addr,
        datagram,
        (ATTEMPTS, REPLY_TIMEOUT),
        |raw| {
            let msg = Message::parse(raw).ok()?;
            (msg.mid == mid && msg.mtype == MessageType::Acknowledgement).then(|| Reply {
                code: msg.class(),
                etag: msg.etag.map(<[u8]>::to_vec),
                content_format: msg.content_format,
                block2: msg.block2.and_then(Result::ok),
                payload: msg.payload.to_vec(),
            })
        },
    )
    .unwrap_or_else(|| panic!("no reply to MID {mid}; log:\n{}", server.log()))
}

/// Fetches `path` as RIOT does: 64-byte blocks from block 0, an empty
/// token, the Message ID equal to the block number. Checks each block's
/// ETag against `bytes` and returns the body.
fn fetch_riot(socket: &UdpSocket, server: &TestServer, path: &str, bytes: &[u8]) -> Vec<u8> {
    let segments: Vec<&str> = path.split('/').collect();
    let etag = fnv1a64(bytes).to_be_bytes().to_vec();
    let mut body = Vec::new();
    for num in 0u32.. {
        assert!(num < 10_000, "runaway");
        let mid = num as u16;
        let block = Block {
            num,
            more: false,
            szx: SZX_64,
        };
        let reply = call(socket, server, mid, &get(mid, &[], &segments, Some(block)));
        assert_eq!(
            reply.code,
            MessageClass::Response(ResponseType::Content),
            "{path} block {num}: {:?}; log:\n{}",
            String::from_utf8_lossy(&reply.payload),
            server.log()
        );
        assert_eq!(reply.etag.as_deref(), Some(&etag[..]), "{path} block {num}");
        assert_eq!(reply.content_format, Some(42));
        let got = reply.block2.expect("Block2");
        assert_eq!((got.num, got.szx), (num, SZX_64));
        body.extend_from_slice(&reply.payload);
        if !got.more {
            return body;
        }
    }
    unreachable!()
}

/// Writes `bytes` to `root/rel` as a publisher that renames into place.
fn publish(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    let parent = path.parent().expect("parent");
    std::fs::create_dir_all(parent).expect("dirs");
    let tmp = parent.join(".publishing");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
}

fn assert_code(reply: &Reply, code: ResponseType, what: &str) {
    assert_eq!(
        reply.code,
        MessageClass::Response(code),
        "{what}: {:?}",
        String::from_utf8_lossy(&reply.payload)
    );
}

#[test]
fn riot_publishes_while_the_server_runs_and_fetches_at_once() {
    let dir = TempDir::new("tree-riot");
    // No timed rescans: only a miss or SIGHUP can show the new files.
    let server = spawn_fileserver(
        dir.path(),
        "127.0.0.1:0",
        &["--settle", "0", "--rescan", "0"],
    );
    let socket = support::client_socket(server.addr);
    let suit = image_bytes(300, 11);
    let slot = image_bytes(4000, 12);
    publish(dir.path(), SUIT, &suit);
    publish(dir.path(), SLOT0, &slot);
    // At once: the first request misses and rescans.
    assert_eq!(fetch_riot(&socket, &server, SUIT, &suit), suit);
    assert_eq!(fetch_riot(&socket, &server, SLOT0, &slot), slot);

    // Republished under the same names and fetched at once, still
    // without timed rescans: the first block of each finds its file
    // replaced, and the new bytes come under new ETags.
    let suit2 = image_bytes(310, 21);
    let slot2 = image_bytes(3000, 22);
    std::thread::sleep(Duration::from_millis(300)); // past the rescan rate limit
    publish(dir.path(), SUIT, &suit2);
    publish(dir.path(), SLOT0, &slot2);
    assert_eq!(fetch_riot(&socket, &server, SUIT, &suit2), suit2);
    assert_eq!(fetch_riot(&socket, &server, SLOT0, &slot2), slot2);
    // inotify saw each rename (or, without it, the first block found its
    // file replaced): either way the log says the file was replaced.
    assert!(server.wait_for_log("replaced file fw/app/board/slot0.5.bin", LOG_WAIT));
}

#[test]
fn two_files_from_one_port_with_message_ids_restarting_at_0() {
    let dir = TempDir::new("tree-mids");
    let suit = image_bytes(200, 31);
    let slot = image_bytes(1000, 32);
    publish(dir.path(), SUIT, &suit);
    publish(dir.path(), SLOT0, &slot);
    let server = spawn_fileserver(dir.path(), "127.0.0.1:0", &[]);
    let socket = support::client_socket(server.addr);
    // The same MIDs (0, 1, ...) for both files, from the same port: the
    // second file's requests are new requests, not duplicates.
    assert_eq!(fetch_riot(&socket, &server, SUIT, &suit), suit);
    assert_eq!(fetch_riot(&socket, &server, SLOT0, &slot), slot);
}

#[test]
fn libcoap_fetches_a_file_byte_exact() {
    if !support::require_program("coap-client-notls") {
        return;
    }
    let dir = TempDir::new("tree-libcoap");
    let out = TempDir::new("tree-libcoap-out");
    let slot = image_bytes(5000, 41);
    publish(dir.path(), SLOT0, &slot);
    let server = spawn_fileserver(dir.path(), "127.0.0.1:0", &[]);
    let out_file = out.path().join("out");
    let uri = format!("coap://{}/{SLOT0}", server.addr);
    let output = support::run_bounded(
        Command::new("coap-client-notls")
            .args(["-B", "10", "-m", "get", "-b", "64", "-o"])
            .arg(&out_file)
            .arg(&uri),
        Duration::from_secs(40),
    );
    assert!(
        output.status.success(),
        "coap-client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(&out_file).expect("out written"), slot);
}

#[test]
fn aiocoap_client_fetches_what_riot_publishes_and_republishes() {
    if !support::require_program("aiocoap-client") {
        return;
    }
    let dir = TempDir::new("tree-aiocoap");
    let server = spawn_fileserver(dir.path(), "[::1]:0", &[]);
    let port = server.addr.port();
    let fetch = |path: &str| {
        let output = support::run_bounded(
            Command::new("aiocoap-client").arg(format!("coap://[::1]:{port}/{path}")),
            Duration::from_secs(40),
        );
        assert!(
            output.status.success(),
            "aiocoap-client {path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    // Published while the server runs, fetched at once; then the same
    // names with new bytes. Written a second ago, so that the settle time
    // plays no part: the first request sees the new bytes because the
    // server looks at the file behind every first block.
    let settled = |rel: &str| {
        let past = std::time::SystemTime::now() - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(rel))
            .and_then(|f| f.set_modified(past))
            .expect("set mtime");
    };
    for seed in [51, 52] {
        let suit = image_bytes(300, seed);
        let slot = image_bytes(3000, seed + 10);
        publish(dir.path(), SUIT, &suit);
        publish(dir.path(), SLOT0, &slot);
        settled(SUIT);
        settled(SLOT0);
        assert_eq!(fetch(SUIT), suit, "manifest, seed {seed}");
        assert_eq!(fetch(SLOT0), slot, "image, seed {seed}");
    }
    let listing = String::from_utf8(fetch("fw/app/board/")).expect("text");
    assert_eq!(
        listing,
        "</fw/app/board/riot.suit.latest.bin>,</fw/app/board/slot0.5.bin>"
    );
    let core = String::from_utf8(fetch(".well-known/core")).expect("text");
    assert!(
        core.contains("</fw/app/board/slot0.5.bin>;ct=42;sz=3000"),
        "{core}"
    );
}

#[test]
fn listings_escapes_and_discovery() {
    let dir = TempDir::new("tree-paths");
    let outside = TempDir::new("tree-paths-outside");
    std::fs::write(outside.path().join("secret"), b"secret").expect("write");
    publish(dir.path(), SUIT, b"suit");
    publish(dir.path(), SLOT0, b"slot0");
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("fw/leak"))
        .expect("symlink");
    let server = spawn_fileserver(dir.path(), "127.0.0.1:0", &[]);
    let socket = support::client_socket(server.addr);
    let mut mid = 100u16;
    let mut ask = |segments: &[&str]| {
        mid += 1;
        call(&socket, &server, mid, &get(mid, b"t", segments, None))
    };

    let board = ask(&["fw", "app", "board", ""]);
    assert_code(&board, ResponseType::Content, "listing");
    assert_eq!(board.content_format, Some(40));
    assert_eq!(
        board.payload,
        b"</fw/app/board/riot.suit.latest.bin>,</fw/app/board/slot0.5.bin>"
    );
    let root = ask(&[]);
    assert_eq!(root.payload, b"</fw/>;ct=40");
    let fw = ask(&["fw", ""]);
    assert_eq!(fw.payload, b"</fw/app/>;ct=40", "no link to the outside");
    assert_code(&ask(&["fw", "app"]), ResponseType::BadRequest, "no slash");

    for path in [
        &["..", "..", "..", "etc", "passwd"][..],
        &["fw", "..", "..", "etc", "passwd"],
        &["fw", "leak"],
        &["%2e%2e", "%2e%2e", "etc", "passwd"],
        &["fw", "%2e%2e", "fw", "app", "board", "slot0.5.bin"],
        &["fw", ".", "app", "board", "slot0.5.bin"],
        &["fw", "", "app", "board", "slot0.5.bin"],
    ] {
        assert_code(&ask(path), ResponseType::NotFound, &format!("{path:?}"));
    }

    let core = ask(&[".well-known", "core"]);
    assert_code(&core, ResponseType::Content, "discovery");
    let core = String::from_utf8(core.payload).expect("utf-8");
    assert!(
        core.ends_with(
            "</fw/app/board/riot.suit.latest.bin>;ct=42;sz=4,</fw/app/board/slot0.5.bin>;ct=42;sz=5"
        ),
        "{core}"
    );
    assert!(
        server.wait_for_log("skipped file fw/leak", LOG_WAIT),
        "{}",
        server.log()
    );
}

#[test]
fn files_beside_a_catalog_with_d_and_files() {
    let updates = TempDir::new("tree-beside-updates");
    let images = support::write_images(&updates, &[("APPX", 100)]);
    let tree = TempDir::new("tree-beside-files");
    publish(tree.path(), SLOT0, b"slot0");
    let tree_arg = tree.path().to_str().expect("utf-8 path").to_owned();
    let server = support::spawn_server(updates.path(), "127.0.0.1:0", &["--files", &tree_arg]);
    let socket = support::client_socket(server.addr);
    assert_eq!(fetch_riot(&socket, &server, SLOT0, b"slot0"), b"slot0");
    let id = images[0].id.clone();
    let reply = call(&socket, &server, 7, &get(7, b"u", &["updates", &id], None));
    assert_code(&reply, ResponseType::Content, "the catalog still serves");
    assert_eq!(reply.payload, images[0].bytes);
}
