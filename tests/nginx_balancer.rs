//! Debian's nginx with the stream module (`libnginx-mod-stream`) as the L4
//! balancer of README, "Scaling out", in front of two server processes on
//! loopback: libcoap's coap-client and `iot-ota-client` download byte for
//! byte through it, the payload-less continuation included (nginx keeps
//! one upstream source port per device session); a backend killed
//! mid-fleet sends its devices to the other one, where the by-id and
//! query forms resume; and with `proxy_responses 1`, a backend that stops
//! answering without an ICMP error (a hung process) is failed over too.
//!
//! Every loopback client has the source address 127.0.0.1, so
//! `hash $remote_addr consistent` sends them all to one backend: that is
//! the one the tests find in the logs and kill.
//!
//! nginx runs from a configuration the test writes into a temporary
//! directory (its prefix, pid file and error log there or on stderr); no
//! system configuration is read or touched.

mod support;

use iot_ota::wire::{Block, Message};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::coap::{con_get, exchange_until};
use support::{device_payload, run_bounded, spawn_server, TempDir, TestImage, TestServer};

/// Where Debian (and Ubuntu) install the dynamic stream module, then
/// Fedora and RHEL.
const STREAM_MODULES: [&str; 2] = [
    "/usr/lib/nginx/modules/ngx_stream_module.so",
    "/usr/lib64/nginx/modules/ngx_stream_module.so",
];
/// libcoap's client without DTLS (Debian libcoap3-bin).
const COAP_CLIENT: &str = "coap-client-notls";
/// The image behind the balancer: 313 blocks of 64 bytes and a bit.
const IMAGE_LEN: usize = 20_000;
/// Firmware type APP.
const APP: u8 = 3;
/// The devices run 1.0.0; the image is 1.0.1.
const VERSION_1_0_0: u32 = 1 << 24;
/// 64-byte blocks: many requests per download.
const SZX_64: u8 = 2;
/// ACK_TIMEOUT of the `iot-ota-client` runs, in milliseconds. A device
/// whose backend died gets through on its third retransmission: nginx
/// reads the ICMP error its request caused, forwards the first
/// retransmission, fails the session when it forwards the second (the
/// send returns the error the first caused), and opens a session to the
/// other backend for the third. The client sends up to four, 1 to 1.5
/// times this apart and doubling.
const CLIENT_TIMEOUT_MS: &str = "500";
/// Bound on one run of an outside client.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Devices of the fleet, each running one client after the other.
const FLEET: usize = 6;
/// Most runs one fleet member makes.
const MAX_RUNS_PER_MEMBER: usize = 40;
/// Runs each member makes once the backend is dead (one of each form).
const RUNS_AFTER_THE_KILL: usize = 2;
/// Bound on the whole fleet.
const FLEET_LIMIT: Duration = Duration::from_secs(240);
/// The raw device's retransmissions behind a backend that died: 10
/// sends, 500 ms apart (the fourth reaches the other backend, as above).
const RAW_AFTER_A_DEATH: (usize, Duration) = (10, Duration::from_millis(500));
/// Its retransmissions behind a backend that hangs: 8 sends, 1.5 s
/// apart, longer than `proxy_timeout 1s`, so that nginx times the
/// session out between two of them (a retransmission within it would
/// keep the session to the hung backend alive).
const RAW_AFTER_A_HANG: (usize, Duration) = (8, Duration::from_millis(1500));

/// The session directives of README, "Scaling out": a device keeps its
/// session, and so its source port at the backend, while it is heard
/// from at least every 30 s.
const SESSIONS: &str = "        proxy_timeout 30s;\n";
/// A session per request, that fails its backend when no answer came
/// within a second.
const ONE_ANSWER_SESSIONS: &str = "        proxy_responses 1;\n        proxy_timeout 1s;\n";

/// True when nginx and its stream module are there. When they are not:
/// under CI (`CI=true`) the test fails; elsewhere it is skipped.
fn require_nginx_stream() -> bool {
    if !support::require_program("nginx") {
        return false;
    }
    if stream_module_line().is_some() {
        return true;
    }
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    assert!(
        !ci,
        "nginx has no stream module under CI=true (apt-get install libnginx-mod-stream)"
    );
    eprintln!("SKIPPED: nginx has no stream module (install libnginx-mod-stream)");
    false
}

/// The `load_module` line the configuration needs: empty when the stream
/// module is built in, `None` when nginx has none.
fn stream_module_line() -> Option<String> {
    let output = run_bounded(Command::new("nginx").arg("-V"), RUN_LIMIT);
    // nginx -V prints its configure arguments on stderr.
    let configure = String::from_utf8_lossy(&output.stderr).into_owned();
    let words: Vec<&str> = configure.split_whitespace().collect();
    if words.contains(&"--with-stream") {
        return Some(String::new());
    }
    if !words.contains(&"--with-stream=dynamic") {
        return None;
    }
    STREAM_MODULES
        .iter()
        .find(|path| Path::new(path).exists())
        .map(|path| format!("load_module {path};"))
}

/// An nginx master process and its workers, stopped when dropped.
struct Nginx {
    child: Child,
    /// The balancer's address, as devices know it.
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// The prefix, configuration and pid file.
    _dir: TempDir,
}

impl Nginx {
    /// Everything nginx wrote to its error log (stderr) so far.
    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would leave
        // them running.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory effects; the pid is our own
            // child's, not reaped yet (the Child is still held).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration of README, "Scaling out", on loopback: `listen` on
/// `port`, the two `backends`, and `extra` directives for the server
/// block. Two workers, as on a machine with cores to spare: `reuseport`
/// keeps each device on one of them.
fn nginx_conf(
    prefix: &Path,
    load_module: &str,
    port: u16,
    backends: &[SocketAddr],
    extra: &str,
) -> String {
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    format!(
        "{load_module}
daemon off;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log stderr info;
events {{ worker_connections 256; }}
stream {{
    upstream iot_ota {{
        zone iot_ota 64k;
        hash $remote_addr consistent;
{servers}    }}
    server {{
        listen 127.0.0.1:{port} udp reuseport;
        proxy_pass iot_ota;
{extra}    }}
}}
",
        prefix = prefix.display()
    )
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral UDP port")
}

/// Starts nginx in front of `backends` with `extra` server directives and
/// waits (at most 20 s) until its workers run; a port taken meanwhile is
/// replaced by another, 5 times at most.
fn start_nginx(backends: &[SocketAddr], extra: &str) -> Nginx {
    let load_module = stream_module_line().expect("nginx has the stream module");
    let mut last_log = String::new();
    for _ in 0..5 {
        let dir = TempDir::new("nginx");
        let port = free_udp_port();
        let conf = dir.write(
            "nginx.conf",
            nginx_conf(dir.path(), &load_module, port, backends, extra).as_bytes(),
        );
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            // Not the compiled-in /var/log/nginx/error.log, even while the
            // configuration is read.
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("nginx stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut nginx = Nginx {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if nginx.log().matches("start worker process").count() >= 2 {
                return nginx;
            }
            let exited = matches!(nginx.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                // Give the reader thread a moment to take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                last_log = nginx.log();
                assert!(
                    exited && last_log.contains("Address already in use"),
                    "nginx did not start (exited: {exited}); log:\n{last_log}"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("nginx found no free port in 5 tries; log:\n{last_log}");
}

/// Two backends over `dir` and nginx in front of them.
struct Fleet {
    backends: [TestServer; 2],
    nginx: Nginx,
}

fn start_fleet(dir: &TempDir, extra: &str) -> Fleet {
    let backends = [
        spawn_server(dir.path(), "127.0.0.1:0", &[]),
        spawn_server(dir.path(), "127.0.0.1:0", &[]),
    ];
    let nginx = start_nginx(&[backends[0].addr, backends[1].addr], extra);
    Fleet { backends, nginx }
}

impl Fleet {
    /// Index of the backend that logged the start of a transfer (at most
    /// 5 s): all loopback devices hash to that one.
    fn serving_backend(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(index) = self
                .backends
                .iter()
                .position(|b| b.log().contains(" starts "))
            {
                return index;
            }
            assert!(
                Instant::now() < deadline,
                "no backend logged a transfer; nginx:\n{}",
                self.nginx.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The one image, `BALANCED_1_0_1_APP.fmu`.
fn one_image(dir: &TempDir) -> TestImage {
    support::write_images(dir, &[("BALANCED", IMAGE_LEN)]).remove(0)
}

/// `pid=..&type=APP&version=1.0.0`: the query form of the lookup.
fn lookup_query(image: &TestImage) -> String {
    format!("pid={}&type=APP&version=1.0.0", image.pid)
}

fn assert_same(got: &[u8], expected: &[u8], what: &str, output: &Output) {
    assert!(
        got == expected,
        "{what}: {} bytes received, {} expected, first difference at {:?}\nstatus: {}\nstdout: {}\nstderr: {}",
        got.len(),
        expected.len(),
        got.iter().zip(expected).position(|(a, b)| a != b),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// coap-client-notls GETs `coap://ADDR/{path}` at `block` bytes (with the
/// `-f` payload when given) into `out`, waiting `-B wait` seconds at most;
/// returns what it wrote (no file for an empty body) and its output.
fn coap_client(
    addr: SocketAddr,
    path: &str,
    block: usize,
    payload: Option<&Path>,
    wait: u32,
    out: &Path,
) -> (Vec<u8>, Output) {
    let _ = std::fs::remove_file(out);
    let mut command = Command::new(COAP_CLIENT);
    command
        .args([
            "-B",
            &wait.to_string(),
            "-m",
            "get",
            "-b",
            &block.to_string(),
            "-o",
        ])
        .arg(out);
    if let Some(payload) = payload {
        command.arg("-f").arg(payload);
    }
    command.arg(format!("coap://{addr}/{path}"));
    let output = run_bounded(&mut command, RUN_LIMIT);
    assert!(
        output.status.success(),
        "{COAP_CLIENT} {path}: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (std::fs::read(out).unwrap_or_default(), output)
}

/// The two forms an `iot-ota-client` run takes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// Device mode: the lookup by device payload, then the image by id.
    Device,
    /// `--get /updates?QUERY` for the id, then `--get /updates/{id}`.
    Query,
}

/// Runs `iot-ota-client ADDR ARGS` at 64-byte blocks with the short
/// ACK_TIMEOUT, bounded.
fn iot_ota_client(addr: SocketAddr, args: &[&str]) -> Output {
    run_bounded(
        Command::new(support::CLIENT_BIN)
            .arg(addr.to_string())
            .args(args)
            .args(["-b", "64", "--timeout-ms", CLIENT_TIMEOUT_MS]),
        RUN_LIMIT,
    )
}

/// One download with `iot-ota-client` in `form` into `out`; `Err` says
/// what went wrong, with the client's output.
fn download(addr: SocketAddr, form: Form, image: &TestImage, out: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(out);
    let out_text = out.to_string_lossy().into_owned();
    let failed = |what: &str, output: &Output| {
        format!(
            "{form:?}: {what}: {}\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let output = match form {
        Form::Device => iot_ota_client(
            addr,
            &["--pid", &image.pid, "--version", "1.0.0", "-o", &out_text],
        ),
        Form::Query => {
            let path = format!("/updates?{}", lookup_query(image));
            let lookup = iot_ota_client(addr, &["--get", &path]);
            if !lookup.status.success() || lookup.stdout != image.id.as_bytes() {
                return Err(failed("the lookup", &lookup));
            }
            let path = format!("/updates/{}", image.id);
            iot_ota_client(addr, &["--get", &path, "-o", &out_text])
        }
    };
    let body = std::fs::read(out).unwrap_or_default();
    if !output.status.success() || body != image.bytes {
        return Err(failed(
            &format!(
                "{} bytes written, {} expected",
                body.len(),
                image.bytes.len()
            ),
            &output,
        ));
    }
    Ok(())
}

#[test]
fn libcoap_and_the_client_download_byte_exact_through_nginx() {
    if !require_nginx_stream() || !support::require_program(COAP_CLIENT) {
        return;
    }
    let dir = TempDir::new("nginx-stock");
    let image = one_image(&dir);
    let out = TempDir::new("nginx-stock-out");
    let fleet = start_fleet(&dir, SESSIONS);
    let addr = fleet.nginx.addr;
    let file = out.path().join("image.bin");

    for block in [64, 1024] {
        let (body, output) = coap_client(
            addr,
            &format!("updates/{}", image.id),
            block,
            None,
            10,
            &file,
        );
        assert_same(
            &body,
            &image.bytes,
            &format!("libcoap by id at {block}"),
            &output,
        );
    }
    let (body, output) = coap_client(
        addr,
        &format!("updates?{}", lookup_query(&image)),
        1024,
        None,
        10,
        &file,
    );
    assert_same(&body, image.id.as_bytes(), "libcoap query form", &output);
    // The device payload with block 0 only, then payload-less
    // continuations: they reach the backend from the same nginx source
    // port, which remembers the transfer.
    let payload = out.write(
        "device.bin",
        &device_payload(&image.pid, APP, VERSION_1_0_0, Some(0)),
    );
    let (body, output) = coap_client(addr, "updates", 64, Some(&payload), 10, &file);
    assert_same(&body, &image.bytes, "libcoap legacy continuation", &output);

    for form in [Form::Device, Form::Query] {
        if let Err(e) = download(addr, form, &image, &file) {
            panic!("through nginx {addr}: {e}\nnginx:\n{}", fleet.nginx.log());
        }
    }
}

/// A device that speaks raw CoAP through the balancer from one source
/// port, so that the test decides when its download is cut.
struct RawDevice {
    socket: UdpSocket,
    balancer: SocketAddr,
    retransmission: (usize, Duration),
    mid: u16,
    body: Vec<u8>,
    etag: Option<Vec<u8>>,
    next_block: u32,
}

impl RawDevice {
    /// A device that sends each request `retransmission.0` times at
    /// most, `retransmission.1` apart.
    fn new(balancer: SocketAddr, retransmission: (usize, Duration)) -> RawDevice {
        RawDevice {
            socket: support::client_socket(balancer),
            balancer,
            retransmission,
            mid: 0x5100,
            body: Vec::new(),
            etag: None,
            next_block: 0,
        }
    }

    /// Downloads blocks of `/updates/{id}` until `until` bytes or the
    /// end, retransmitting each request as the device was told.
    /// Every block must carry the first block's ETag.
    fn download_by_id(&mut self, id: &str, until: usize) {
        while self.body.len() < until {
            self.mid = self.mid.wrapping_add(1);
            let mid = self.mid;
            let block = Block {
                num: self.next_block,
                more: false,
                szx: SZX_64,
            };
            let request = con_get(mid, &[0xba, 0x1a], &["updates", id], Some(block), &[]);
            let (code, more, etag, payload) = exchange_until(
                &self.socket,
                self.balancer,
                &request,
                self.retransmission,
                |raw| {
                    let msg = Message::parse(raw).ok().filter(|m| m.mid == mid)?;
                    let more = msg.block2.and_then(Result::ok).is_some_and(|b| b.more);
                    Some((
                        msg.code,
                        more,
                        msg.etag.map(<[u8]>::to_vec),
                        msg.payload.to_vec(),
                    ))
                },
            )
            .unwrap_or_else(|| {
                panic!(
                    "no answer to block {} through {}",
                    self.next_block, self.balancer
                )
            });
            assert_eq!(code, 0x45, "2.05 for block {}", self.next_block);
            match &self.etag {
                None => self.etag = etag,
                Some(first) => assert_eq!(
                    etag.as_ref(),
                    Some(first),
                    "ETag of block {}",
                    self.next_block
                ),
            }
            self.body.extend_from_slice(&payload);
            self.next_block += 1;
            if !more {
                return;
            }
        }
    }
}

/// The `received N` counter of a final stats line.
fn received(stats: &str) -> u64 {
    stats
        .split("received ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no received counter in {stats:?}"))
}

/// What one fleet member's run did, and when.
struct Run {
    form: Form,
    started: Instant,
    ended: Instant,
    result: Result<(), String>,
}

/// A fleet member: runs `iot-ota-client` downloads one after the other,
/// device mode and query form in turn, until it has made
/// [`RUNS_AFTER_THE_KILL`] runs started after `killed_at` is set (or
/// [`MAX_RUNS_PER_MEMBER`] runs, or [`FLEET_LIMIT`] passed).
fn fleet_member(
    member: usize,
    addr: SocketAddr,
    image: Arc<TestImage>,
    out: PathBuf,
    finished: Arc<AtomicUsize>,
    killed_at: Arc<Mutex<Option<Instant>>>,
) -> Vec<Run> {
    let deadline = Instant::now() + FLEET_LIMIT;
    let mut runs = Vec::new();
    let forms = [Form::Device, Form::Query];
    for n in 0..MAX_RUNS_PER_MEMBER {
        let form = forms[(member + n) % forms.len()];
        let started = Instant::now();
        let result = download(addr, form, &image, &out);
        runs.push(Run {
            form,
            started,
            ended: Instant::now(),
            result,
        });
        finished.fetch_add(1, Ordering::SeqCst);
        let kill = killed_at.lock().map(|k| *k).unwrap_or_default();
        let after = kill.map_or(0, |kill| runs.iter().filter(|r| r.started > kill).count());
        if after >= RUNS_AFTER_THE_KILL || Instant::now() >= deadline {
            break;
        }
    }
    runs
}

#[test]
fn a_backend_killed_mid_fleet_sends_its_devices_to_the_other() {
    if !require_nginx_stream() || !support::require_program(COAP_CLIENT) {
        return;
    }
    let dir = TempDir::new("nginx-kill");
    let image = Arc::new(one_image(&dir));
    let out = TempDir::new("nginx-kill-out");
    let mut fleet = start_fleet(&dir, SESSIONS);
    let addr = fleet.nginx.addr;

    // A device half-way through its download by id.
    let mut device = RawDevice::new(addr, RAW_AFTER_A_DEATH);
    device.download_by_id(&image.id, IMAGE_LEN / 2);
    let serving = fleet.serving_backend();

    // The fleet, under way on that backend.
    let finished = Arc::new(AtomicUsize::new(0));
    let killed_at = Arc::new(Mutex::new(None));
    let members: Vec<_> = (0..FLEET)
        .map(|member| {
            let image = Arc::clone(&image);
            let file = out.path().join(format!("member-{member}.bin"));
            let (finished, killed_at) = (Arc::clone(&finished), Arc::clone(&killed_at));
            std::thread::spawn(move || fleet_member(member, addr, image, file, finished, killed_at))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished.load(Ordering::SeqCst) < FLEET {
        assert!(
            Instant::now() < deadline,
            "the fleet made fewer than {FLEET} runs in 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Kill it without a word, as a crash would.
    fleet.backends[serving].signal(libc::SIGKILL);
    let kill = Instant::now();
    *killed_at.lock().expect("kill time") = Some(kill);
    assert!(
        fleet.backends[serving]
            .wait_exit(Duration::from_secs(10))
            .is_some(),
        "the killed backend still runs"
    );

    // The device goes on from the same source port: its next block comes
    // from the other backend, with the same ETag.
    device.download_by_id(&image.id, usize::MAX);
    assert!(
        device.body == image.bytes,
        "the raw device's body differs from the image ({} bytes)",
        device.body.len()
    );

    let runs: Vec<Run> = members
        .into_iter()
        .flat_map(|m| m.join().expect("a fleet member panicked"))
        .collect();
    let failures: Vec<&String> = runs
        .iter()
        .filter_map(|r| r.result.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} runs failed; first: {}\nnginx:\n{}",
        failures.len(),
        runs.len(),
        failures.first().map_or("", |f| f.as_str()),
        fleet.nginx.log()
    );
    let across = runs
        .iter()
        .filter(|r| r.started < kill && r.ended > kill)
        .count();
    assert!(
        across > 0,
        "no run was under way when the backend was killed"
    );
    for form in [Form::Device, Form::Query] {
        assert!(
            runs.iter().any(|r| r.form == form && r.started > kill),
            "no {form:?} run after the kill"
        );
    }
    assert!(
        fleet
            .nginx
            .log()
            .contains("upstream server temporarily disabled"),
        "nginx never took the dead backend out:\n{}",
        fleet.nginx.log()
    );

    // Stock clients after the kill, by id and query form.
    let file = out.path().join("after.bin");
    let (body, output) = coap_client(addr, &format!("updates/{}", image.id), 64, None, 30, &file);
    assert_same(&body, &image.bytes, "libcoap by id after the kill", &output);
    let (body, output) = coap_client(
        addr,
        &format!("updates?{}", lookup_query(&image)),
        1024,
        None,
        30,
        &file,
    );
    assert_same(
        &body,
        image.id.as_bytes(),
        "libcoap query form after the kill",
        &output,
    );

    // All of it was served by the other backend.
    let other = 1 - serving;
    let stats = fleet.backends[other].stop_by_signal(libc::SIGTERM);
    assert!(
        received(&stats) > 0,
        "the other backend received nothing: {stats}"
    );
    eprintln!(
        "{} runs, {across} under way at the kill; survivor: {stats}",
        runs.len()
    );
}

#[test]
fn with_proxy_responses_1_a_backend_that_stops_answering_is_failed_over() {
    if !require_nginx_stream() {
        return;
    }
    let dir = TempDir::new("nginx-hung");
    let image = one_image(&dir);
    let out = TempDir::new("nginx-hung-out");
    let mut fleet = start_fleet(&dir, ONE_ANSWER_SESSIONS);
    let addr = fleet.nginx.addr;

    let mut device = RawDevice::new(addr, RAW_AFTER_A_HANG);
    device.download_by_id(&image.id, IMAGE_LEN / 2);
    let serving = fleet.serving_backend();
    // Alive, silent: no ICMP error tells nginx.
    fleet.backends[serving].signal(libc::SIGSTOP);

    device.download_by_id(&image.id, usize::MAX);
    assert!(
        device.body == image.bytes,
        "the raw device's body differs from the image ({} bytes)",
        device.body.len()
    );
    let file = out.path().join("image.bin");
    for form in [Form::Device, Form::Query] {
        if let Err(e) = download(addr, form, &image, &file) {
            panic!("after the backend hung: {e}\nnginx:\n{}", fleet.nginx.log());
        }
    }
    assert!(
        fleet.nginx.log().contains("upstream timed out"),
        "nginx never timed the hung backend out:\n{}",
        fleet.nginx.log()
    );
    let other = 1 - serving;
    let stats = fleet.backends[other].stop_by_signal(libc::SIGTERM);
    assert!(
        received(&stats) > 0,
        "the other backend received nothing: {stats}"
    );
}
