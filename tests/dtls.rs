//! coaps (DTLS 1.2 with pre-shared keys, `--features dtls`): interop with
//! libcoap's `coap-client-gnutls` and `coap-client-openssl` over 127.0.0.1
//! and [::1] (discovery, lookup, whole downloads by id compared byte for
//! byte, 4.03 for another product's image), handshakes that must fail
//! (wrong key, unknown identity) leaving no session, and a flood of
//! spoofed ClientHellos that must leave no session, no growth of the
//! server's resident set and never an answer larger than themselves;
//! `/status` read by the identity with `@status` from another network
//! namespace and refused to the others, from loopback too, and no longer
//! notified to an observer once SIGHUP took the right away.
#![cfg(feature = "dtls")]

mod support;

use iot_ota::catalog::Catalog;
use iot_ota::dtls::{Front, PskTable, HELLO_VERIFY_LEN};
use iot_ota::server::Server;
use iot_ota::service::{Limits, Service};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::coaps::{observe_lookup, CoapsFixture};
use support::{device_payload, output_text as text, TestServer};

const CLIENTS: [&str; 2] = ["coap-client-gnutls", "coap-client-openssl"];
/// Bound on one coap-client run; its own `-B` gives up sooner.
const RUN_TIMEOUT: Duration = Duration::from_secs(40);
/// Version of the test images (type APP, 3), 1.0.1.
const VERSION_1_0_1: u32 = (1 << 24) | 1;
/// dev1 may fetch DEV images only; ops may fetch all; operator may read
/// /status and fetch nothing.
const PSK_FILE: &str = "# test keys\n\
                        dev1:dev1-secret-key:DEV\n\
                        ops:ops-secret-key\n\
                        operator:operator-key:@status\n";

/// The images of every test here: DEV 5000 bytes (79 blocks of 64, 5 of
/// 1024, the last ones short) and OTHER 3000.
fn fixture(tag: &str) -> CoapsFixture {
    CoapsFixture::new(tag, &[("DEV", 5000), ("OTHER", 3000)], PSK_FILE)
}

/// Runs `client` with `args`, bounded by `-B 10` and RUN_TIMEOUT.
fn run(client: &str, args: &[&str]) -> Output {
    support::run_bounded(
        Command::new(client).arg("-B").arg("10").args(args),
        RUN_TIMEOUT,
    )
}

fn coaps(server: &TestServer, path: &str) -> String {
    format!("coaps://{}/{path}", server.addr)
}

/// GETs `uri` as `identity` at block size `block` into `out`; the body
/// written, and what the client printed.
fn download(
    client: &str,
    identity: &str,
    key: &str,
    block: usize,
    uri: &str,
    out: &Path,
) -> (Vec<u8>, Output) {
    let _ = std::fs::remove_file(out);
    let block = block.to_string();
    let out_text = out.to_string_lossy().into_owned();
    let output = run(
        client,
        &[
            "-u", identity, "-k", key, "-b", &block, "-o", &out_text, uri,
        ],
    );
    (std::fs::read(out).unwrap_or_default(), output)
}

#[test]
fn libcoap_clients_discover_look_up_and_download_by_id_over_coaps() {
    let fx = fixture("dtls-interop");
    let clients: Vec<&str> = CLIENTS
        .into_iter()
        .filter(|c| support::require_program(c))
        .collect();
    let dev = fx.image("DEV");
    let payload = fx
        .out
        .write("lookup", &device_payload("DEV", 3, VERSION_1_0_1 - 1, None));
    let payload = payload.to_string_lossy().into_owned();
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = fx.server(listen, &[]);
        for client in &clients {
            let discovery = run(
                client,
                &[
                    "-u",
                    "dev1",
                    "-k",
                    "dev1-secret-key",
                    &coaps(&server, ".well-known/core"),
                ],
            );
            let listing = String::from_utf8_lossy(&discovery.stdout);
            assert!(
                listing.contains(&format!("</updates/{}>", dev.id)),
                "{client} {listen} discovery: {}",
                text(&discovery)
            );
            let lookup = run(
                client,
                &[
                    "-u",
                    "dev1",
                    "-k",
                    "dev1-secret-key",
                    "-m",
                    "get",
                    "-f",
                    &payload,
                    &coaps(&server, "updates"),
                ],
            );
            assert_eq!(
                String::from_utf8_lossy(&lookup.stdout).trim(),
                dev.id,
                "{client} {listen} lookup: {}",
                text(&lookup)
            );
            for block in [64, 1024] {
                let out = fx.out.path().join(format!("dev-{block}"));
                let (body, output) = download(
                    client,
                    "dev1",
                    "dev1-secret-key",
                    block,
                    &coaps(&server, &format!("updates/{}", dev.id)),
                    &out,
                );
                support::assert_downloaded(
                    &body,
                    &dev.bytes,
                    &format!("{client} {listen} -b {block}"),
                    &output,
                );
            }
        }
    }
}

#[test]
fn an_identity_gets_4_03_for_another_products_image_and_ops_gets_it() {
    let fx = fixture("dtls-forbidden");
    let other = fx.image("OTHER");
    let server = fx.server("127.0.0.1:0", &[]);
    for client in CLIENTS {
        if !support::require_program(client) {
            continue;
        }
        let uri = coaps(&server, &format!("updates/{}", other.id));
        let out = fx.out.path().join("other");
        let (body, output) = download(client, "dev1", "dev1-secret-key", 1024, &uri, &out);
        assert!(body.is_empty(), "{client}: dev1 got OTHER's bytes");
        assert!(
            text(&output).contains("4.03"),
            "{client}: {}",
            text(&output)
        );
        let (body, output) = download(client, "ops", "ops-secret-key", 1024, &uri, &out);
        assert!(body == other.bytes, "{client} ops: {}", text(&output));
    }
}

/// An in-process server with coaps only, served until `stop` is set.
struct InProcess {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Server>>,
}

impl InProcess {
    fn start(fx: &CoapsFixture, max_sessions: usize) -> InProcess {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        let keys = PskTable::read(&fx.psk()).expect("psk file");
        let dir = fx.dir.path().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let catalog = Catalog::load(&dir).expect("catalog").catalog;
            let service = Service::new(catalog, Limits::default(), support::TEST_KEYS);
            let mut server = Server::new(socket, service);
            // Wakes the loop at least once a second.
            server.watch(dir, 0, 200).expect("watch");
            let limits = iot_ota::dtls::Limits {
                max_sessions,
                ..iot_ota::dtls::Limits::default()
            };
            let front = Front::new(
                keys,
                limits,
                Box::new(iot_ota::dtls::os_entropy),
                server.started(),
            );
            server.serve_dtls(0, front, None).expect("dtls");
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stopping.load(Ordering::SeqCst) && Instant::now() < deadline {
                server.serve_one();
            }
            server
        });
        InProcess {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the loop and hands the server back for inspection.
    fn stop(mut self) -> Server {
        self.stop.store(true, Ordering::SeqCst);
        let waker = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let _ = waker.send_to(b"wake", self.addr);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the server thread ran to the end")
    }
}

#[test]
fn a_wrong_key_or_an_unknown_identity_fails_the_handshake_and_leaves_no_session() {
    let fx = fixture("dtls-wrong");
    let dev = fx.image("DEV");
    // The failed handshakes alone on one server: whatever the good
    // sessions later do (their close_notify may still be queued when a
    // loaded machine stops the loop), none of these may stay.
    let server = InProcess::start(&fx, 16);
    let uri = format!("coaps://{}/updates/{}", server.addr, dev.id);
    let mut ran = 0;
    for client in CLIENTS {
        if !support::require_program(client) {
            continue;
        }
        for (identity, key) in [("dev1", "not-the-key"), ("stranger", "dev1-secret-key")] {
            let out = fx.out.path().join("wrong");
            let started = Instant::now();
            let (body, output) = download(client, identity, key, 1024, &uri, &out);
            let took = started.elapsed();
            assert!(body.is_empty(), "{client} {identity}: {}", text(&output));
            // The server's fatal alert (decrypt_error, unknown_psk_identity)
            // ends the client's handshake at once, not its own timeout.
            assert!(
                took < Duration::from_secs(2),
                "{client} {identity} gave up after {took:?}: {}",
                text(&output)
            );
            ran += 1;
        }
    }
    let stopped = server.stop();
    let front = stopped.dtls_front().expect("coaps served");
    assert_eq!(
        front.session_count(),
        0,
        "{ran} failed handshakes left sessions"
    );
    // The right key works on the same set of keys: the failures were the
    // keys'.
    let server = InProcess::start(&fx, 16);
    let uri = format!("coaps://{}/updates/{}", server.addr, dev.id);
    for client in CLIENTS {
        if !support::require_program(client) {
            continue;
        }
        let out = fx.out.path().join("right");
        let (body, output) = download(client, "dev1", "dev1-secret-key", 1024, &uri, &out);
        assert!(body == dev.bytes, "{client}: {}", text(&output));
    }
    drop(server.stop());
}

/// A DTLS 1.2 ClientHello as libcoap's clients send it first: no cookie,
/// TLS_PSK_WITH_AES_128_CCM_8 and the extended master secret extension,
/// with `random` as its random.
fn client_hello(random: &[u8; 32]) -> Vec<u8> {
    client_hello_with(random, &[], 0)
}

/// As [`client_hello`], with `cookie` and handshake message_seq `seq` (1
/// for the hello that answers a HelloVerifyRequest).
fn client_hello_with(random: &[u8; 32], cookie: &[u8], seq: u8) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(random);
    body.push(0); // session id
    body.push(u8::try_from(cookie.len()).expect("short cookie"));
    body.extend_from_slice(cookie);
    body.extend_from_slice(&[0, 2, 0xc0, 0xa8]); // TLS_PSK_WITH_AES_128_CCM_8
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&[0, 4, 0, 0x17, 0, 0]); // extended_master_secret
    let len = u32::try_from(body.len()).expect("short").to_be_bytes();
    let mut handshake = vec![
        1, len[1], len[2], len[3], 0, seq, 0, 0, 0, len[1], len[2], len[3],
    ];
    handshake.extend_from_slice(&body);
    let record_len = u16::try_from(handshake.len()).expect("short").to_be_bytes();
    let mut record = vec![
        22,
        0xfe,
        0xff,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        record_len[0],
        record_len[1],
    ];
    record.extend_from_slice(&handshake);
    record
}

/// Resident set size of process `pid` in bytes (VmRSS of /proc/PID/status).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// How much the server process may grow over the flood, after its first
/// batch (whose hellos page in the engine's code). A spoofed hello
/// leaves nothing behind: the engine built to answer it is dropped with
/// the answer, and the replay memory (at most 4,096 entries of 16 bytes,
/// 64 KiB) only records hellos that returned a valid cookie. What may
/// still grow is the allocator's free memory kept for reuse and pages of
/// code and tables touched for the first time. 1 MiB is far above that
/// and below what any state kept per hello would cost: 9,900 hellos
/// keeping even 106 bytes each exceed it, an engine or a session (kilobytes
/// each) by far.
const FLOOD_RSS_ALLOWANCE: u64 = 1024 * 1024;

#[test]
fn ten_thousand_spoofed_client_hellos_leave_no_session_and_get_no_larger_answer() {
    const HELLOS: usize = 10_000;
    /// Sockets open at once: each hello comes from a port of its own.
    const BATCH: usize = 100;
    let fx = fixture("dtls-spoof");
    // Every hello goes to two servers: the in-process one, whose session
    // table the test reads, and a server process of its own, whose
    // resident set is measured (the test process's is shared with the
    // tests running beside this one).
    let server = InProcess::start(&fx, 16);
    let process = fx.server("127.0.0.1:0", &[]);
    let rss_at_start = rss_bytes(process.pid());
    let mut rss_after_first_batch = None;
    let mut answered = 0;
    let mut answered_by_process = 0;
    let mut sent = 0;
    let mut largest_answer = 0;
    let mut smallest_hello = usize::MAX;
    let mut ports = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    // Ports below the ephemeral range, one per hello; one in use by
    // someone else is skipped.
    let mut next_port: u16 = 20_000;
    while sent < HELLOS {
        assert!(Instant::now() < deadline, "the flood took too long");
        let mut sockets = Vec::with_capacity(BATCH);
        while sockets.len() < BATCH.min(HELLOS - sent) && next_port < 32_000 {
            if let Ok(socket) = UdpSocket::bind(("127.0.0.1", next_port)) {
                sockets.push(socket);
            }
            next_port += 1;
        }
        assert!(!sockets.is_empty(), "no free port left below 32000");
        for socket in &sockets {
            let mut random = [0u8; 32];
            random[..8].copy_from_slice(&(sent as u64).to_le_bytes());
            let hello = client_hello(&random);
            smallest_hello = smallest_hello.min(hello.len());
            ports.insert(socket.local_addr().expect("addr").port());
            socket.send_to(&hello, server.addr).expect("send");
            socket.send_to(&hello, process.addr).expect("send");
            sent += 1;
        }
        for socket in &sockets {
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 2048];
            // Two answers expected, one from each server, in any order.
            for _ in 0..2 {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    break;
                };
                largest_answer = largest_answer.max(len);
                assert_eq!(buf[0], 22, "a handshake record from {from}");
                assert_eq!(buf.get(13), Some(&3), "a HelloVerifyRequest from {from}");
                if from == server.addr {
                    answered += 1;
                } else if from == process.addr {
                    answered_by_process += 1;
                }
            }
        }
        if rss_after_first_batch.is_none() {
            // The first hellos, answered by now, paged in the engine's
            // code (file pages, 1.8 MiB of the debug build): the growth
            // is measured from here on.
            rss_after_first_batch = Some(rss_bytes(process.pid()));
        }
    }
    let rss_after = rss_bytes(process.pid());
    let rss_before = rss_after_first_batch.expect("a first batch");
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "server process VmRSS: {} KiB at start, {} KiB after the first {BATCH} spoofed hellos, \
         {} KiB after all {HELLOS}: grew {} KiB over the last {} (allowed {} KiB)",
        rss_at_start / 1024,
        rss_before / 1024,
        rss_after / 1024,
        growth / 1024,
        HELLOS - BATCH,
        FLOOD_RSS_ALLOWANCE / 1024
    );
    let server = server.stop();
    let front = server.dtls_front().expect("coaps served");
    assert_eq!(front.session_count(), 0, "spoofed hellos created sessions");
    assert_eq!(ports.len(), HELLOS, "hellos from as many ports");
    assert_eq!(answered, HELLOS, "every hello got its HelloVerifyRequest");
    assert_eq!(
        answered_by_process, HELLOS,
        "every hello got its HelloVerifyRequest from the server process"
    );
    assert_eq!(largest_answer, HELLO_VERIFY_LEN);
    assert!(
        largest_answer <= smallest_hello,
        "an answer of {largest_answer} bytes to a hello of {smallest_hello}"
    );
    assert!(
        growth < FLOOD_RSS_ALLOWANCE,
        "the server process grew by {growth} bytes over {} spoofed hellos \
         ({rss_before} to {rss_after})",
        HELLOS - BATCH
    );
}

#[test]
fn a_psk_file_readable_by_others_is_refused_with_a_clear_error() {
    let fx = fixture("dtls-mode");
    let psk = fx.psk();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = support::run_bounded(
        Command::new(support::SERVER_BIN)
            .arg("-d")
            .arg(fx.dir.path())
            .args(["-l", "none", "--dtls-listen", "127.0.0.1:0", "--psk-file"])
            .arg(&psk),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is open to other users (mode 644)") && stderr.contains("chmod o-rwx"),
        "{stderr}"
    );
}

/// Runs our client with `args`, bounded by RUN_TIMEOUT.
fn our_client(args: &[&str]) -> Output {
    support::run_bounded(Command::new(support::CLIENT_BIN).args(args), RUN_TIMEOUT)
}

/// Our client with `args`, as dev1 (its key on the command line), a short
/// retransmission timeout, the body to `out`.
fn our_client_as_dev1(args: &[&str], out: &Path) -> Output {
    let out_text = out.to_string_lossy().into_owned();
    let mut all = args.to_vec();
    all.extend(["-o", &out_text]);
    our_client_as(&[], "dev1", "dev1-secret-key", &all)
}

#[test]
fn our_client_downloads_over_coaps_in_device_mode_and_by_query() {
    let fx = fixture("dtls-client");
    let dev = fx.image("DEV");
    // The client's key file: one identity:key line, owner only.
    let client_psk = fx.keys.write("client-psk", b"dev1:dev1-secret-key\n");
    std::fs::set_permissions(&client_psk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let client_psk = client_psk.to_string_lossy().into_owned();
    // One version before the images' 1.0.1.
    let version = "1.0.0";
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = fx.server(listen, &[]);
        let base = format!("coaps://{}", server.addr);
        for block in ["64", "1024"] {
            let out = fx.out.path().join(format!("device-{block}"));
            let out_text = out.to_string_lossy().into_owned();
            let _ = std::fs::remove_file(&out);
            let output = our_client(&[
                &base,
                "--pid",
                "DEV",
                "--type",
                "3",
                "--version",
                version,
                "--psk-identity",
                "dev1",
                "--psk-key",
                "dev1-secret-key",
                "-b",
                block,
                "--timeout-ms",
                "300",
                "-o",
                &out_text,
            ]);
            assert_eq!(
                output.status.code(),
                Some(0),
                "{listen} -b {block}: {}",
                text(&output)
            );
            assert!(
                std::fs::read(&out).unwrap_or_default() == dev.bytes,
                "{listen} -b {block}: not the image, {}",
                text(&output)
            );
        }
        // The lookup's query form, with the key from a file: the id.
        let uri = format!("{base}/updates?pid=DEV&type=3&version={version}");
        let output = our_client(&[&uri, "--psk-file", &client_psk, "--timeout-ms", "300"]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{listen} query: {}",
            text(&output)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            dev.id,
            "{listen} query: {}",
            text(&output)
        );
        // Already up to date: exit 3, as over coap.
        let output = our_client(&[
            &base,
            "--pid",
            "DEV",
            "--type",
            "3",
            "--version",
            "1.0.1",
            "--psk-file",
            &client_psk,
            "--timeout-ms",
            "300",
        ]);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{listen} up to date: {}",
            text(&output)
        );
    }
}

#[test]
fn our_client_gets_4_03_for_another_product_and_fails_clearly_with_a_wrong_key() {
    let fx = fixture("dtls-client-refused");
    let other = fx.image("OTHER");
    let server = fx.server("127.0.0.1:0", &[]);
    let uri = format!("coaps://{}/updates/{}", server.addr, other.id);
    let out = fx.out.path().join("other");
    let out_text = out.to_string_lossy().into_owned();
    let as_dev1 = our_client_as_dev1(&[&uri], &out);
    assert_eq!(as_dev1.status.code(), Some(1), "{}", text(&as_dev1));
    assert!(
        text(&as_dev1).contains("4.03 Forbidden"),
        "{}",
        text(&as_dev1)
    );
    assert!(!out.exists(), "dev1 got OTHER's image");
    let as_ops = our_client(&[
        &uri,
        "--psk-identity",
        "ops",
        "--psk-key",
        "ops-secret-key",
        "--timeout-ms",
        "300",
        "-o",
        &out_text,
    ]);
    assert_eq!(as_ops.status.code(), Some(0), "{}", text(&as_ops));
    assert!(std::fs::read(&out).unwrap_or_default() == other.bytes);

    // A wrong key: the handshake fails, the error says why it may have.
    let wrong = our_client(&[
        &uri,
        "--psk-identity",
        "ops",
        "--psk-key",
        "not-the-key",
        "--timeout-ms",
        "100",
    ]);
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("no coaps session as 'ops'") && stderr.contains("a wrong key or identity"),
        "{stderr}"
    );
    assert!(wrong.stdout.is_empty());
}

#[test]
fn our_client_refuses_coaps_without_a_key_and_keys_without_coaps() {
    let fx = fixture("dtls-client-usage");
    let open_psk = fx.keys.write("open-psk", b"dev1:dev1-secret-key\n");
    std::fs::set_permissions(&open_psk, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open_psk = open_psk.to_string_lossy().into_owned();
    for (args, expected) in [
        (
            &["coaps://127.0.0.1/x"][..],
            "coaps:// needs a pre-shared key",
        ),
        (
            &["coaps://127.0.0.1/x", "--psk-identity", "a"],
            "--psk-identity needs --psk-key",
        ),
        (
            &[
                "coap://127.0.0.1/x",
                "--psk-identity",
                "a",
                "--psk-key",
                "k",
            ],
            "go with a coaps:// URI",
        ),
        (
            &[
                "coaps://127.0.0.1/x",
                "--psk-identity",
                "a",
                "--psk-key",
                "0x1",
            ],
            "the key is invalid",
        ),
        (
            &["coaps://127.0.0.1/x", "--psk-file", &open_psk],
            "is open to other users",
        ),
    ] {
        let output = our_client(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(
            text(&output).contains(expected),
            "{args:?}: {}",
            text(&output)
        );
    }
}

/// Moves `bytes` into `dir/name` in one rename, dated in the past so that
/// the server takes it at its next rescan without waiting for it to settle.
fn publish(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes).expect("write");
    let old = std::time::SystemTime::now() - Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&temp)
        .and_then(|f| f.set_modified(old))
        .expect("date");
    std::fs::rename(&temp, &path).expect("rename");
}

#[test]
fn our_client_observes_the_lookup_over_coaps_and_downloads_the_published_image() {
    let fx = fixture("dtls-observe");
    let psk = fx.psk();
    let server = support::spawn_server(
        fx.dir.path(),
        "none",
        &[
            "--psk-file",
            psk.to_str().expect("utf-8"),
            "--dtls-listen",
            "[::1]:0",
            "--rescan",
            "200",
        ],
    );
    let out = fx.out.path().join("observed");
    let (mut client, rx) = observe_lookup(server.addr, "dev1", "dev1-secret-key", &out);
    let first = rx.recv_timeout(Duration::from_secs(10));
    assert_eq!(first.as_deref(), Ok("no update"), "{}", server.log());
    // A newer DEV image: the notification travels in the session.
    let new = support::image_bytes(7000, 9);
    let name = "DEV_1_1_0_APP.fmu";
    publish(fx.dir.path(), name, &new);
    let id = support::image_id(name);
    let second = rx.recv_timeout(Duration::from_secs(10));
    assert_eq!(second, Ok(format!("update {id}")), "{}", server.log());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = client.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = client.kill();
            panic!("the client still runs: {}", server.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{}", server.log());
    assert!(std::fs::read(&out).unwrap_or_default() == new);
}

#[test]
fn handshake_retransmissions_leave_from_the_address_the_hello_was_sent_to() {
    let fx = fixture("dtls-reply-from");
    // A wildcard socket: the kernel would pick 127.0.0.1 as the source of
    // a datagram to 127.0.0.1 unless told otherwise.
    let server = fx.server("0.0.0.0:0", &[]);
    let to: SocketAddr = format!("127.0.0.2:{}", server.addr.port())
        .parse()
        .expect("addr");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let random = [0x42; 32];
    socket.send_to(&client_hello(&random), to).expect("send");
    let mut buf = [0u8; 2048];
    let (len, from) = socket.recv_from(&mut buf).expect("a HelloVerifyRequest");
    assert_eq!(from, to);
    assert_eq!(buf.get(13), Some(&3), "a HelloVerifyRequest");
    let cookie_len = usize::from(buf[27]);
    let cookie = buf.get(28..28 + cookie_len).expect("cookie").to_vec();
    assert!(28 + cookie_len <= len);
    socket
        .send_to(&client_hello_with(&random, &cookie, 1), to)
        .expect("send");
    // The server's flight, answering the hello, then the same flight
    // again on the server's timer, as the client never goes on: every
    // datagram from the address asked.
    let mut flights = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first_seen: Option<Vec<u8>> = None;
    while Instant::now() < deadline {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            // A signal to the test process (another test's child ending)
            // is not the server's silence.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        assert_eq!(from, to, "a record left from another address");
        let datagram = buf[..len].to_vec();
        assert_eq!(datagram.first(), Some(&22), "a handshake record");
        match &first_seen {
            None => first_seen = Some(datagram),
            // The ServerHello's datagram again: a retransmission.
            Some(first) if first.get(13) == datagram.get(13) && datagram.get(13) == Some(&2) => {
                flights += 1;
                break;
            }
            Some(_) => {}
        }
    }
    assert_eq!(flights, 1, "no retransmitted flight within 10 s");
}

#[test]
fn a_coaps_device_is_named_by_its_psk_identity_in_the_fleet() {
    let fx = fixture("dtls-fleet");
    let server = fx.server("127.0.0.1:0", &[]);
    let base = format!("coaps://{}", server.addr);
    let out = fx.out.path().join("fleet-device");
    let out_text = out.to_string_lossy().into_owned();
    let device = our_client_as(
        &[],
        "dev1",
        "dev1-secret-key",
        &[&base, "--pid", "DEV", "--version", "1.0.0", "-o", &out_text],
    );
    assert_eq!(device.status.code(), Some(0), "{}", text(&device));
    // No ep= and no report: the lookup and the blocks are dev1's, as the
    // operator reads over coaps.
    let status = get_as(&base, "/status?ep=dev1", "operator", "operator-key");
    // ops may fetch every image but not read /status, from loopback too.
    let refused = get_as(&base, "/status?ep=dev1", "ops", "ops-secret-key");
    assert!(text(&refused).contains("4.03"), "{}", text(&refused));
    let shown = text(&status);
    assert_eq!(status.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains(
            "device dev1 state downloaded result 0 (inferred) running 1.0.0 target 1.0.1"
        ),
        "{shown}"
    );
}

/// A coaps request that misses rescans first, as a plain one does: with
/// no timed rescans and no inotify, an image published since the last
/// scan is found by the device's first lookup over coaps.
#[test]
fn a_coaps_lookup_that_misses_rescans_first_as_over_coap() {
    let fx = fixture("dtls-miss");
    let server = fx.server(
        "127.0.0.1:0",
        &["--rescan", "0", "--no-inotify", "--settle", "0"],
    );
    let base = format!("coaps://{}", server.addr);
    let device = [&base, "--pid", "DEV", "--type", "3", "--version", "1.0.1"];
    let lookup = |out: &Path| our_client_as_dev1(&device, out);
    let out = fx.out.path().join("published");
    let output = lookup(&out);
    assert_eq!(
        output.status.code(),
        Some(3),
        "up to date: {}",
        text(&output)
    );
    // Past the rate limit of rescans on a miss (250 ms).
    std::thread::sleep(Duration::from_millis(300));
    let new = support::image_bytes(3000, 21);
    publish(fx.dir.path(), "DEV_1_2_0_APP.fmu", &new);
    let output = lookup(&out);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}; log:\n{}",
        text(&output),
        server.log()
    );
    assert!(
        std::fs::read(&out).unwrap_or_default() == new,
        "not the new image"
    );
}

/// Our client with `args`, over coaps as `identity` with `key` (a 300 ms
/// first timeout), started by `launcher` (empty: here).
fn our_client_as(launcher: &[&str], identity: &str, key: &str, args: &[&str]) -> Output {
    support::run_bounded(
        support::launched(launcher, support::CLIENT_BIN)
            .args(args)
            .args(["--psk-identity", identity, "--psk-key", key])
            .args(["--timeout-ms", "300"]),
        RUN_TIMEOUT,
    )
}

/// `iot-ota-client BASE --get PATH` as `identity`, started by `launcher`.
fn get_as_via(launcher: &[&str], base: &str, path: &str, identity: &str, key: &str) -> Output {
    our_client_as(launcher, identity, key, &[base, "--get", path])
}

fn get_as(base: &str, path: &str, identity: &str, key: &str) -> Output {
    get_as_via(&[], base, path, identity, key)
}

#[test]
fn over_coaps_status_is_read_by_identities_with_at_status_from_any_address() {
    if !support::can_make_namespaces() {
        return;
    }
    let fx = fixture("dtls-status");
    let pair = support::NetnsPair::new("dtlsstat", &["10.78.0.1/24"], &["10.78.0.2/24"]);
    // --status-from opens plain CoAP to the client's prefix, not coaps.
    let server = fx.server_via(
        &pair.in_server(),
        "0.0.0.0:5684",
        &["--status-from", "10.78.0.0/24"],
    );
    let base = "coaps://10.78.0.1:5684";
    let from_afar = |path, identity, key| get_as_via(&pair.in_client(), base, path, identity, key);
    let operator = from_afar("/status", "operator", "operator-key");
    let shown = text(&operator);
    assert_eq!(operator.status.code(), Some(0), "{shown}\n{}", server.log());
    assert!(shown.contains(&fx.image("DEV").file_name), "{shown}");
    let one = from_afar("/status?ep=dev1", "operator", "operator-key");
    // dev1 never asked: 4.04 (no such device), past the right's check.
    assert!(text(&one).contains("4.04"), "{}", text(&one));
    for (identity, key) in [("ops", "ops-secret-key"), ("dev1", "dev1-secret-key")] {
        let refused = from_afar("/status", identity, key);
        let shown = text(&refused);
        assert_eq!(refused.status.code(), Some(1), "{identity}: {shown}");
        assert!(
            shown.contains("4.03") && shown.contains("@status"),
            "{shown}"
        );
    }
    // From the server's own loopback (a tunnel's end looks the same):
    // the identity decides there too.
    let local = "coaps://127.0.0.1:5684";
    let server_ns = pair.in_server();
    let refused = get_as_via(&server_ns, local, "/status", "ops", "ops-secret-key");
    assert!(text(&refused).contains("4.03"), "{}", text(&refused));
    let allowed = get_as_via(&server_ns, local, "/status", "operator", "operator-key");
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed));
}

#[test]
fn a_status_observer_whose_right_a_sighup_removes_is_no_longer_notified() {
    let fx = fixture("dtls-status-revoked");
    let server = fx.server("127.0.0.1:0", &["--rescan", "200"]);
    let base = format!("coaps://{}", server.addr);
    /// The observing client, ended however the test ends.
    struct Observer(std::process::Child);
    impl Drop for Observer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut observer = Observer(
        Command::new(support::CLIENT_BIN)
            .arg(format!("{base}/status"))
            .args(["--observe", "--psk-identity", "operator"])
            .args(["--psk-key", "operator-key"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("client"),
    );
    let stderr = observer.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The lines the observer printed within `wait`.
    let lines_within = |wait: Duration| {
        let until = Instant::now() + wait;
        let mut lines = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines.join("\n")
    };
    let a_lookup_as = |identity: &str, key: &str| {
        let lookup_args = [base.as_str(), "--pid", "DEV", "--version", "1.0.0"];
        let lookup = our_client_as(&[], identity, key, &lookup_args);
        assert_eq!(lookup.status.code(), Some(0), "{}", text(&lookup));
    };
    // With the right: the registration's answer, then a notification
    // after a device appears.
    let seen = lines_within(Duration::from_secs(3));
    assert!(seen.contains("notification 0:"), "{seen}");
    a_lookup_as("dev1", "dev1-secret-key");
    let seen = lines_within(Duration::from_secs(5));
    assert!(seen.contains("notification 1:"), "{seen}\n{}", server.log());
    // The right taken away: the session stays (same key), the
    // observation is no longer fed.
    let psk = PSK_FILE.replace("operator-key:@status", "operator-key:DEV");
    std::fs::write(fx.psk(), psk).expect("rewrite the PSK file");
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_for_log("SIGHUP: 3 PSK identities", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    a_lookup_as("ops", "ops-secret-key");
    let seen = lines_within(Duration::from_secs(3));
    drop(observer);
    assert!(
        !seen.contains("notification 2:"),
        "{seen}\n{}",
        server.log()
    );
}
