//! The `iot-ota-client` binary against the real server over loopback
//! (127.0.0.1 and [::1]): downloads byte for byte, the legacy protocol,
//! OFFSET, discovery, exit codes, retransmission over a lossy link, Echo,
//! 4.29 and a server that shrinks the block size.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::{image_bytes, spawn_server, TempDir, TestServer, CLIENT_BIN};

/// Every client run is killed and the test failed past this.
const RUN_LIMIT: Duration = Duration::from_secs(20);

/// The images of the tests: name, length, seed.
const MOTE: (&str, usize, u32) = ("MOTE_1_0_5_APP.fmu", 3000, 1);
const EDGE: (&str, usize, u32) = ("EDGE_1_0_0_APP.fmu", 1024, 2);
const EMPTY: (&str, usize, u32) = ("EMPTY_2_0_0_7.fmu", 0, 3);

/// An updates directory with the three test images.
fn updates_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    for (name, len, seed) in [MOTE, EDGE, EMPTY] {
        dir.write(name, &image_bytes(len, seed));
    }
    dir
}

fn image(which: (&str, usize, u32)) -> Vec<u8> {
    image_bytes(which.1, which.2)
}

/// The servers of a test, one per loopback family.
fn servers(dir: &Path, extra: &[&str]) -> Vec<TestServer> {
    ["127.0.0.1:0", "[::1]:0"]
        .iter()
        .map(|listen| spawn_server(dir, listen, extra))
        .collect()
}

/// Runs the client with `args`, captured, for at most [`RUN_LIMIT`].
fn client(args: &[&str]) -> Output {
    let mut child = Command::new(CLIENT_BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iot-ota-client");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut v);
        v
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for client") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("iot-ota-client {args:?} ran longer than {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs the client for an update of MOTE from `version` at `target`, with
/// `extra` arguments after the version.
fn client_mote(target: &str, version: &str, extra: &[&str]) -> Output {
    let mut args = vec![target, "--pid", "MOTE", "--version", version];
    args.extend_from_slice(extra);
    client(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit code `code` and returns stderr.
fn expect_exit(out: &Output, code: i32, what: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{what}: stderr:\n{err}");
    err
}

fn addr(server: &TestServer) -> String {
    server.addr.to_string()
}

#[test]
fn lookup_and_download_by_id_equals_the_image_at_16_and_1024_byte_blocks() {
    let dir = updates_dir("cli-download");
    let out_dir = TempDir::new("cli-download-out");
    let mote = image(MOTE);
    for server in servers(dir.path(), &[]) {
        let a = addr(&server);
        // 16-byte blocks into a file.
        let file = out_dir.0.join("mote.bin");
        let file_arg = file.to_string_lossy().into_owned();
        let out = client_mote(&a, "1.0.4", &["-b", "16", "-o", &file_arg]);
        let err = expect_exit(&out, 0, "download -b 16");
        assert!(out.stdout.is_empty(), "the body went to the file");
        assert_eq!(std::fs::read(&file).unwrap(), mote, "{a}: -b 16");
        assert!(err.contains("downloaded 3000 bytes of MOTE id "), "{err}");
        assert!(err.contains("in 188 blocks"), "{err}");
        // 1024-byte blocks (the default) to standard output, type by number.
        let out = client(&[
            &a,
            "--pid",
            "MOTE",
            "--type",
            "3",
            "--version",
            "0.9.0",
            "-o",
            "-",
        ]);
        let err = expect_exit(&out, 0, "download -b 1024");
        assert_eq!(out.stdout, mote, "{a}: -b 1024");
        assert!(
            err.contains("in 3 blocks") && err.contains("etag "),
            "{err}"
        );
        // Block edges: exactly one full block, and an empty image.
        let out = client(&[&a, "--pid", "EDGE", "--version", "0.0.0", "-b", "1024"]);
        expect_exit(&out, 0, "1024-byte image");
        assert_eq!(out.stdout, image(EDGE));
        let out = client(&[&a, "--pid", "EMPTY", "--type", "7", "--version", "1.0.0"]);
        let err = expect_exit(&out, 0, "empty image");
        assert!(out.stdout.is_empty());
        assert!(
            err.contains("downloaded 0 bytes") && err.contains("in 1 block,"),
            "{err}"
        );
    }
}

#[test]
fn legacy_protocol_equals_the_image() {
    let dir = updates_dir("cli-legacy");
    let mote = image(MOTE);
    for server in servers(dir.path(), &[]) {
        let a = addr(&server);
        for size in ["16", "1024"] {
            let out = client_mote(&a, "1.0.0", &["--legacy", "-b", size]);
            let err = expect_exit(&out, 0, "legacy");
            assert_eq!(out.stdout, mote, "{a}: legacy -b {size}");
            assert!(err.contains("(legacy protocol)"), "{err}");
        }
        let out = client_mote(&a, "1.0.0", &["--legacy", "--offset", "2999", "-b", "64"]);
        expect_exit(&out, 0, "legacy offset");
        assert_eq!(out.stdout, &mote[2999..]);
    }
}

#[test]
fn offset_gives_the_image_from_that_byte() {
    let dir = updates_dir("cli-offset");
    let mote = image(MOTE);
    for server in servers(dir.path(), &[]) {
        let a = addr(&server);
        for (offset, size) in [(1000usize, "1024"), (1, "16"), (2048, "512")] {
            let n = offset.to_string();
            let out = client_mote(&a, "1.0.0", &["--offset", &n, "-b", size]);
            let err = expect_exit(&out, 0, "offset");
            assert_eq!(
                out.stdout,
                &mote[offset..],
                "{a}: --offset {offset} -b {size}"
            );
            assert!(err.contains(&format!("from offset {offset}")), "{err}");
        }
        // At the end: an empty body. Past it: the server's 4.00, exit 1.
        let out = client_mote(&a, "1.0.0", &["--offset", "3000"]);
        expect_exit(&out, 0, "offset at the end");
        assert!(out.stdout.is_empty());
        let out = client_mote(&a, "1.0.0", &["--offset", "3001"]);
        let err = expect_exit(&out, 1, "offset past the end");
        assert!(err.contains("4.00"), "{err}");
    }
}

#[test]
fn get_well_known_core_prints_the_listing() {
    let dir = updates_dir("cli-core");
    for server in servers(dir.path(), &[]) {
        let a = addr(&server);
        let uri = format!("coap://{a}/.well-known/core");
        let runs = [
            client(&[&a, "--get", "/.well-known/core"]),
            client(&[&a, "--get", "/.well-known/core", "-b", "16"]),
            client(&["--get", &uri]),
            client(&[&uri, "-b", "32"]),
        ];
        let first = runs[0].stdout.clone();
        let listing = String::from_utf8(first.clone()).expect("UTF-8 listing");
        assert!(
            listing.contains(r#"</updates>;rt="fw.updates""#),
            "{listing}"
        );
        assert!(
            listing.contains(r#"title="MOTE_1_0_5_APP.fmu""#),
            "{listing}"
        );
        assert!(listing.contains("sz=3000"), "{listing}");
        for (i, out) in runs.iter().enumerate() {
            let err = expect_exit(out, 0, "--get");
            assert_eq!(out.stdout, first, "{a}: run {i} differs");
            assert!(err.contains("of /.well-known/core"), "{err}");
        }
        // A query is sent as Uri-Query options: the filter of RFC 6690.
        let out = client(&[&a, "--get", "/.well-known/core?title=EDGE*"]);
        expect_exit(&out, 0, "filtered");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("EDGE_1_0_0_APP.fmu") && !text.contains("MOTE"),
            "{text}"
        );
        // The query form of /updates answers the id as text.
        let out = client(&[&a, "--get", "/updates?pid=MOTE&type=APP&version=1.0.0"]);
        expect_exit(&out, 0, "query lookup");
        assert_eq!(out.stdout.len(), 8, "an 8-digit id: {:?}", out.stdout);
        // An unknown path is the server's 4.04, which for --get is an error.
        let out = client(&[&a, "--get", "/nothing"]);
        let err = expect_exit(&out, 1, "4.04 to --get");
        assert!(err.contains("4.04"), "{err}");
    }
}

#[test]
fn no_update_exits_3_for_lookup_and_legacy() {
    let dir = updates_dir("cli-none");
    for server in servers(dir.path(), &[]) {
        let a = addr(&server);
        for extra in [&[][..], &["--legacy"][..]] {
            for (pid, version) in [("MOTE", "1.0.5"), ("MOTE", "2.0.0"), ("NOSUCH", "0.0.0")] {
                let mut args = vec![a.as_str(), "--pid", pid, "--version", version];
                args.extend_from_slice(extra);
                let out = client(&args);
                let err = expect_exit(&out, 3, "no update");
                assert!(err.contains("no update available"), "{err}");
                assert!(out.stdout.is_empty());
            }
        }
    }
}

/// A port with nothing behind it: bound, then closed again.
fn closed_port(loopback: &str) -> SocketAddr {
    let socket = UdpSocket::bind(loopback).expect("bind");
    socket.local_addr().expect("local address")
}

#[test]
fn closed_port_fails_with_exit_1_quickly() {
    for loopback in ["127.0.0.1:0", "[::1]:0"] {
        let target = closed_port(loopback).to_string();
        let started = Instant::now();
        let out = client_mote(&target, "1.0.0", &["--timeout-ms", "100"]);
        let err = expect_exit(&out, 1, "closed port");
        // The ICMP port unreachable ends it at once; without it the
        // retransmissions would end it within 4.65 s.
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        assert!(err.contains(&target), "{err}");
    }
}

#[test]
fn silent_server_gets_5_transmissions_then_exit_1() {
    for loopback in ["127.0.0.1:0", "[::1]:0"] {
        let silent = UdpSocket::bind(loopback).expect("bind");
        silent
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        let target = silent.local_addr().unwrap().to_string();
        let started = Instant::now();
        let out = client(&[&target, "--get", "/x", "--timeout-ms", "100"]);
        let elapsed = started.elapsed();
        let err = expect_exit(&out, 1, "silent server");
        assert!(err.contains("no answer after 5 transmissions"), "{err}");
        // 100 + 200 + 400 + 800 + 1600 ms, times 1 to 1.5.
        assert!(elapsed >= Duration::from_millis(3100), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(8000), "{elapsed:?}");
        silent.set_nonblocking(true).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = silent.recv(&mut buf) {
            seen.push(buf[..n].to_vec());
        }
        assert_eq!(seen.len(), 5, "1 transmission + MAX_RETRANSMIT 4");
        assert!(
            seen.iter().all(|d| d == &seen[0]),
            "retransmissions repeat the same message"
        );
    }
}

#[test]
fn bad_options_exit_2_with_a_hint() {
    let cases: [&[&str]; 12] = [
        &["--bogus"],
        &[],
        &["127.0.0.1:5683"],
        &["127.0.0.1:5683", "--pid", "A"],
        &["127.0.0.1:5683", "--pid", "A", "--version"],
        &["127.0.0.1:5683", "--pid", "A", "--version", "1.256.0"],
        &[
            "127.0.0.1:5683",
            "--pid",
            "A",
            "--version",
            "1.0.0",
            "-b",
            "100",
        ],
        &["127.0.0.1:5683", "--get", "/x", "--pid", "A"],
        &["127.0.0.1:5683", "--get", "/x", "--timeout-ms", "0"],
        &["coap://h/x", "--get", "/y"],
        &["::1", "--get", "/x"],
        &["a:1", "b:2", "--get", "/x"],
    ];
    for args in cases {
        let out = client(args);
        let err = expect_exit(&out, 2, &format!("{args:?}"));
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {err}");
        assert!(lines[0].starts_with("iot-ota-client: "), "{err}");
        assert!(lines[1].contains("--help"), "{err}");
    }
}

#[test]
fn help_lists_every_option_and_v_prints_the_version() {
    let out = client(&["--help"]);
    expect_exit(&out, 0, "--help");
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--pid",
        "--type",
        "--version",
        "--offset",
        "--legacy",
        "--get",
        "--output",
        "--block-size",
        "--timeout-ms",
        "-V",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
    let out = client(&["-V"]);
    expect_exit(&out, 0, "-V");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("iot-ota-client {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The client as `cargo build` and the packages build it has no load
/// generator: `bench` and `baseline` (an amplifier: 1 KiB or more for any
/// datagram) are refused at once, open nothing, and are not in `--help`.
/// Built with `--features loadgen`, they are there, as `make bench` needs.
#[cfg(not(feature = "loadgen"))]
#[test]
fn the_default_build_refuses_bench_and_baseline() {
    support::assert_no_load_generator(&[], CLIENT_BIN);
}

/// A UDP relay between the client and the server that drops every
/// `drop_up`-th request and every `drop_down`-th answer, and sends every
/// `dup_down`-th answer twice.
struct LossyLink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl LossyLink {
    fn new(server: SocketAddr, drop_up: usize, drop_down: usize, dup_down: usize) -> LossyLink {
        let loopback = if server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let down = UdpSocket::bind(loopback).unwrap();
        let up = UdpSocket::bind(loopback).unwrap();
        up.connect(server).unwrap();
        for s in [&down, &up] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = down.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let peer: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let (stop1, stop2, peer2) = (Arc::clone(&stop), Arc::clone(&stop), Arc::clone(&peer));
        let requests = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut n = 0;
            while !stop1.load(Ordering::Relaxed) {
                if let Ok((len, from)) = down.recv_from(&mut buf) {
                    *peer.lock().unwrap() = Some(from);
                    n += 1;
                    if n % drop_up != 0 {
                        let _ = up.send(&buf[..len]);
                    }
                }
            }
        });
        let answers = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut n = 0;
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(len) = up2.recv(&mut buf) {
                    n += 1;
                    let Some(to) = *peer2.lock().unwrap() else {
                        continue;
                    };
                    if n % drop_down == 0 {
                        continue;
                    }
                    let _ = down2.send_to(&buf[..len], to);
                    if n % dup_down == 0 {
                        let _ = down2.send_to(&buf[..len], to);
                    }
                }
            }
        });
        LossyLink {
            addr,
            stop,
            threads: vec![requests, answers],
        }
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn lossy_link_is_survived_by_retransmission() {
    let dir = updates_dir("cli-lossy");
    let mote = image(MOTE);
    for server in servers(dir.path(), &[]) {
        let link = LossyLink::new(server.addr, 4, 5, 3);
        let a = link.addr.to_string();
        for legacy in [false, true] {
            let mut extra = vec!["-b", "256", "--timeout-ms", "50"];
            if legacy {
                extra.push("--legacy");
            }
            let out = client_mote(&a, "1.0.0", &extra);
            let err = expect_exit(&out, 0, "lossy link");
            assert_eq!(out.stdout, mote, "{a} legacy={legacy}");
            assert!(
                !err.contains(" 0 retransmissions"),
                "drops cost retransmissions: {err}"
            );
        }
    }
}

#[test]
fn echo_challenge_is_answered() {
    let dir = updates_dir("cli-echo");
    let mote = image(MOTE);
    for server in servers(dir.path(), &["--echo"]) {
        let a = addr(&server);
        let out = client_mote(&a, "1.0.0", &[]);
        let err = expect_exit(&out, 0, "echo");
        assert_eq!(out.stdout, mote);
        assert!(err.contains("1 Echo challenge"), "{err}");
    }
}

#[test]
fn rate_limited_requests_wait_and_complete() {
    let dir = updates_dir("cli-rate");
    let mote = image(MOTE);
    let server = spawn_server(dir.path(), "127.0.0.1:0", &["--rate-limit", "1"]);
    // A lookup and 3 blocks in quick succession: however they fall into
    // the server's one-second windows, one window sees two of them.
    let out = client_mote(&addr(&server), "1.0.0", &["-b", "1024"]);
    let err = expect_exit(&out, 0, "rate limit");
    assert_eq!(out.stdout, mote);
    assert!(err.contains("after 4.29"), "{err}");
}

#[test]
fn smaller_server_block_size_is_followed() {
    let dir = updates_dir("cli-shrink");
    let mote = image(MOTE);
    for server in servers(dir.path(), &["-b", "64"]) {
        let a = addr(&server);
        for extra in [&[][..], &["--legacy"][..], &["--offset", "100"][..]] {
            let out = client_mote(&a, "1.0.0", &[&["-b", "1024"][..], extra].concat());
            let err = expect_exit(&out, 0, "shrinking server");
            let start = if extra.contains(&"--offset") { 100 } else { 0 };
            assert_eq!(out.stdout, &mote[start..], "{a} {extra:?}");
            assert!(err.contains("(server block size 64 B)"), "{err}");
        }
    }
}
