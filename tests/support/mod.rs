//! Shared helpers for the integration tests: a real server process on an
//! ephemeral loopback port with a temporary updates directory, test
//! images, and the skip-or-fail rule for outside programs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod coap;
pub mod coaps;
mod images;
pub mod pki;
#[allow(unused_imports)] // Not every test uses every part of the kit.
pub use images::{image_bytes, XorShift};

/// Fixed secrets for in-process services: Echo values and Message ID
/// starts are the same on every run.
pub const TEST_KEYS: iot_ota::service::Keys = iot_ota::service::Keys {
    echo: iot_ota::hash::SipKey([0x5eed, 0xec40]),
    message_ids: iot_ota::hash::SipKey([0x4d49, 0x4453]),
    tables: [0x7461, 0x626c],
};

/// Path of the server binary cargo built for these tests.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_iot-ota-server");
/// Path of the client binary cargo built for these tests.
pub const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_iot-ota-client");

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh empty directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("iot-ota-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Writes a file into the directory and returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("write test file");
        path
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `iot-ota-server` process, killed when dropped.
pub struct TestServer {
    child: Child,
    /// The address it is listening on (port resolved from its log).
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    syslog: Arc<Mutex<String>>,
    /// Tells the threads that read a stderr file or the syslog socket
    /// to stop.
    stop: Arc<AtomicBool>,
    /// Holds the syslog socket of [`LogSink::Syslog`].
    _syslog_dir: Option<TempDir>,
}

impl TestServer {
    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every datagram the server sent to the syslog socket of
    /// [`LogSink::Syslog`] so far, one per line.
    pub fn syslog(&self) -> String {
        self.syslog.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` for `needle` to appear in the log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The server's process id (for /proc measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on `listen` (e.g. "127.0.0.1:0" or "[::1]:0") over
/// `dir` with extra command-line arguments, and waits for its
/// "listening on" line (at most 20 s).
pub fn spawn_server(dir: &Path, listen: &str, extra: &[&str]) -> TestServer {
    spawn_server_via(&[], dir, listen, extra)
}

/// As [`spawn_server`], with the server started by `launcher` (program and
/// arguments before the server's path, e.g. `["ip", "netns", "exec", NS]`;
/// empty: the server itself). The launcher must exec the server, so that
/// dropping the [`TestServer`] stops it.
pub fn spawn_server_via(launcher: &[&str], dir: &Path, listen: &str, extra: &[&str]) -> TestServer {
    spawn_with(
        launcher,
        Path::new(SERVER_BIN),
        "-d",
        dir,
        listen,
        extra,
        &[],
        None,
    )
}

/// As [`spawn_server_via`] with another build of the server, `program`
/// (e.g. a cross-compiled one from `make dist`, run by qemu-user).
pub fn spawn_program_via(
    launcher: &[&str],
    program: &Path,
    dir: &Path,
    listen: &str,
    extra: &[&str],
) -> TestServer {
    spawn_with(launcher, program, "-d", dir, listen, extra, &[], None)
}

/// As [`spawn_server`] with `--fileserver DIR` and no `-d`: an empty
/// catalog and the file tree under `dir`.
pub fn spawn_fileserver(dir: &Path, listen: &str, extra: &[&str]) -> TestServer {
    spawn_with(
        &[],
        Path::new(SERVER_BIN),
        "--fileserver",
        dir,
        listen,
        extra,
        &[],
        None,
    )
}

/// Where a server started by [`spawn_server_logging`] writes its log,
/// instead of a pipe.
pub enum LogSink<'a> {
    /// stderr is this file (created or truncated), read by the kit as it
    /// grows: a file the test can `stat`, e.g. for `JOURNAL_STREAM`.
    File(&'a Path),
    /// Syslog datagrams go to a Unix datagram socket the kit binds and
    /// names to the server with `IOT_OTA_SYSLOG_SOCKET`
    /// ([`TestServer::syslog`]); stderr is piped as usual.
    Syslog,
}

/// As [`spawn_server`], with `env` set for the server and, with `sink`,
/// its log written there. The server's address is taken from its first
/// "listening on" line, wherever it is written.
pub fn spawn_server_logging(
    dir: &Path,
    listen: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    sink: Option<LogSink<'_>>,
) -> TestServer {
    spawn_with(
        &[],
        Path::new(SERVER_BIN),
        "-d",
        dir,
        listen,
        extra,
        env,
        sink,
    )
}

/// How long a thread reading a stderr file or a syslog socket runs at
/// most, if the test never stops it.
const LOG_READER_LIMIT: Duration = Duration::from_secs(600);

/// Appends each line to `log` and sends the address of the first
/// "listening on" line to `tx`.
struct LineSink {
    log: Arc<Mutex<String>>,
    tx: mpsc::Sender<String>,
    sent: bool,
}

impl LineSink {
    fn line(&mut self, line: &str) {
        // The line first, so that a test woken by the address finds it in
        // the log.
        if let Ok(mut l) = self.log.lock() {
            l.push_str(line);
            l.push('\n');
        }
        if !self.sent {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = self.tx.send(addr);
                self.sent = true;
            }
        }
    }
}

/// Reads `path` as it grows, line by line, until `stop`.
fn tail_file(path: PathBuf, mut sink: LineSink, stop: Arc<AtomicBool>) {
    let Ok(mut file) = std::fs::File::open(&path) else {
        return;
    };
    let deadline = Instant::now() + LOG_READER_LIMIT;
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match file.read(&mut chunk) {
            Ok(0) | Err(_) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    sink.line(String::from_utf8_lossy(&line).trim_end_matches('\n'));
                }
            }
        }
    }
}

/// Receives datagrams on `socket`, one line each, until `stop`.
fn read_syslog(socket: UnixDatagram, mut sink: LineSink, stop: Arc<AtomicBool>) {
    let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
    let deadline = Instant::now() + LOG_READER_LIMIT;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        if let Ok(n) = socket.recv(&mut buf) {
            sink.line(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

// Every spawn_* helper above is this one with some arguments fixed.
#[allow(clippy::too_many_arguments)]
fn spawn_with(
    launcher: &[&str],
    program: &Path,
    dir_option: &str,
    dir: &Path,
    listen: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    sink: Option<LogSink<'_>>,
) -> TestServer {
    let mut command = launched(launcher, program);
    command
        .arg(dir_option)
        .arg(dir)
        .arg("-l")
        .arg(listen)
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let log = Arc::new(Mutex::new(String::new()));
    let syslog = Arc::new(Mutex::new(String::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let line_sink = |log: &Arc<Mutex<String>>| LineSink {
        log: Arc::clone(log),
        tx: tx.clone(),
        sent: false,
    };
    let mut syslog_dir = None;
    let mut stderr_file = None;
    match sink {
        None => {}
        Some(LogSink::File(path)) => {
            let file = std::fs::File::create(path).expect("create the stderr file");
            command.stderr(file);
            stderr_file = Some(path.to_path_buf());
        }
        Some(LogSink::Syslog) => {
            let socket_dir = TempDir::new("syslog");
            let path = socket_dir.path().join("log");
            let socket = UnixDatagram::bind(&path).expect("bind the syslog socket");
            command.env("IOT_OTA_SYSLOG_SOCKET", &path);
            let (sink, stop) = (line_sink(&syslog), Arc::clone(&stop));
            std::thread::spawn(move || read_syslog(socket, sink, stop));
            syslog_dir = Some(socket_dir);
        }
    }
    let mut child = command.spawn().expect("start iot-ota-server");
    match stderr_file {
        Some(path) => {
            let (sink, stop) = (line_sink(&log), Arc::clone(&stop));
            std::thread::spawn(move || tail_file(path, sink, stop));
        }
        None => {
            let stderr = child.stderr.take().expect("server stderr");
            let mut sink = line_sink(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.line(&line);
                }
            });
        }
    }
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => addr.parse().expect("server printed a socket address"),
        Err(_) => {
            stop.store(true, Ordering::SeqCst);
            let _ = child.kill();
            let output = log.lock().map(|l| l.clone()).unwrap_or_default();
            let datagrams = syslog.lock().map(|l| l.clone()).unwrap_or_default();
            panic!("server did not report its address within 20 s; log:\n{output}{datagrams}");
        }
    };
    TestServer {
        child,
        addr,
        log,
        syslog,
        stop,
        _syslog_dir: syslog_dir,
    }
}

/// A client socket on the same loopback family as `server`, with a read
/// timeout so that no test can hang.
pub fn client_socket(server: SocketAddr) -> UdpSocket {
    let bind = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let socket = UdpSocket::bind(bind).expect("bind client socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(2000)))
        .expect("set read timeout");
    socket
}

/// Sends one datagram and returns the first reply, or `None` after the
/// socket's read timeout.
pub fn exchange(socket: &UdpSocket, server: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(datagram, server).expect("send");
    let mut buf = [0u8; 2048];
    match socket.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Resident set size of process `pid` in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// True when `program` can be run. When it cannot: under CI (`CI=true`)
/// the test fails; on a developer's machine it is skipped with a note.
pub fn require_program(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
            panic!("{program} is required under CI=true but was not found");
        }
        eprintln!("SKIPPED: {program} not found (install it to run this test)");
    }
    found
}

/// Runs `f` against a server on 127.0.0.1 and one on [::1] over the
/// same directory.
pub fn on_both_families(dir: &Path, extra: &[&str], mut f: impl FnMut(&TestServer)) {
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = spawn_server(dir, listen, extra);
        f(&server);
    }
}

/// What a finished program printed, both streams, for a failed
/// assertion's message.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts that `body`, what a client wrote, is `expected` byte for
/// byte; on failure says `what`, both lengths and what the client printed.
pub fn assert_downloaded(body: &[u8], expected: &[u8], what: &str, output: &std::process::Output) {
    assert!(
        body == expected,
        "{what}: {} bytes of {}, {}",
        body.len(),
        expected.len(),
        output_text(output)
    );
}

/// Runs `command` to completion with its stdout and stderr captured, but
/// for at most `timeout`: past it the process is killed and the test
/// fails with what it printed, so an outside program that waits for a
/// reply forever cannot hang the suite.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    for (index, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            let _ = tx.send(index);
            bytes
        }));
    }
    // Both pipes reach end of file when the program exits (or closes them).
    let deadline = Instant::now() + timeout;
    let mut closed = 0;
    let mut timed_out = false;
    while closed < 2 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(_) => closed += 1,
            Err(_) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().expect("wait for child");
    let mut outputs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    let stdout = outputs.next().unwrap_or_default();
    let stderr = outputs.next().unwrap_or_default();
    if timed_out {
        panic!(
            "{command:?} ran longer than {timeout:?} and was killed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    }
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// What a client built without the `loadgen` feature says to `bench` and
/// `baseline` (src/bin/iot-ota-client/main.rs).
pub const NO_LOAD_GENERATOR: &str = "is part of the load generator, which this build lacks";

/// How long a client without the load generator may take to refuse
/// `bench` or `baseline`. It exits before reading an option, so this only
/// covers start-up, under qemu-user on a busy machine too; a baseline
/// listens until killed and the bench run asked for lasts 30 s, so either
/// outlives it when present.
const REFUSAL_LIMIT: Duration = Duration::from_secs(5);

/// Asserts that the client at `program` (run by `launcher`, e.g. qemu-user
/// with a router's CPU, or nothing) has no load generator, as the packages
/// ship it: `bench` and `baseline`, with arguments that would start an
/// amplifying responder and a load run in a build that has them, exit at
/// once with status 2 and the one-line message, and hold no UDP socket
/// while they run; `--help` names neither.
pub fn assert_no_load_generator(launcher: &[&str], program: impl AsRef<std::ffi::OsStr>) {
    let program = program.as_ref();
    // A port that was free a moment ago, so that a baseline given it binds
    // and serves (rather than failing with exit 1 on a clash): a client
    // that has one is caught by what it does.
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free UDP port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let runs = [
        vec!["baseline", "--listen", &addr, "--size", "65507"],
        vec![
            "bench",
            &addr,
            "--baseline",
            "--devices",
            "1",
            "--duration-ms",
            "30000",
        ],
    ];
    for args in runs {
        let mut child = launched(launcher, program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?}: {e}"));
        let deadline = Instant::now() + REFUSAL_LIMIT;
        let mut sockets = Vec::new();
        let exited = loop {
            // Looked at while it runs: once it has exited, its sockets are gone.
            for socket in udp_sockets_of(child.id()) {
                if !sockets.contains(&socket) {
                    sockets.push(socket);
                }
            }
            match child.try_wait().expect("wait for the client") {
                Some(_) => break true,
                None if Instant::now() > deadline => break false,
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        if !exited {
            let _ = child.kill();
        }
        let output = child.wait_with_output().expect("the client's output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let shown = format!("{program:?} {}", args.join(" "));
        assert!(
            exited,
            "{shown} still ran after {REFUSAL_LIMIT:?} (UDP sockets {sockets:?}): the client has \
             a load generator\nstderr: {stderr}"
        );
        assert!(
            sockets.is_empty(),
            "{shown} opened UDP sockets {sockets:?}\nstderr: {stderr}"
        );
        assert_eq!(
            output.status.code(),
            Some(2),
            "{shown}: exit status\nstderr: {stderr}"
        );
        assert!(
            stderr.contains(NO_LOAD_GENERATOR) && stderr.lines().count() == 1,
            "{shown}: not the one-line refusal: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{shown} printed to stdout");
    }
    let help = run_bounded(launched(launcher, program).arg("--help"), REFUSAL_LIMIT * 6);
    assert!(help.status.success(), "{program:?} --help: {}", help.status);
    let text = String::from_utf8_lossy(&help.stdout);
    for name in ["bench", "baseline"] {
        assert!(
            !text.contains(name),
            "{program:?} --help offers {name}:\n{text}"
        );
    }
}

/// The UDP sockets process `pid` holds, as `local_address` fields of
/// /proc/net/udp and udp6 (hex address:port): its descriptors' socket
/// inodes looked up there. Empty when it has none, or has exited.
fn udp_sockets_of(pid: u32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) {
                if inodes.iter().any(|i| i == inode) {
                    found.push((*local).to_owned());
                }
            }
        }
    }
    found
}

/// A generated firmware image written into a test updates directory, with
/// what the tests know about it independently of the server's code.
pub struct TestImage {
    /// `{pid}_1_0_1_APP.fmu`.
    pub file_name: String,
    /// The PID field of the name.
    pub pid: String,
    /// FNV-1a 32 of the file name, 8 lowercase hex digits (README, "Images, versions and ids").
    pub id: String,
    /// The content.
    pub bytes: Vec<u8>,
}

/// The image id of README, "Images, versions and ids" (FNV-1a 32 of the file name as 8 lowercase
/// hex digits), computed here again so tests do not take the server's word.
pub fn image_id(file_name: &str) -> String {
    let hash = file_name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08x}")
}

/// Writes one image `{pid}_1_0_1_APP.fmu` (version 1.0.1, type APP) per
/// `(pid, len)` into `dir`, with content `image_bytes(len, seed)` where the
/// seed is the position in `images` plus one (distinct for every image).
pub fn write_images(dir: &TempDir, images: &[(&str, usize)]) -> Vec<TestImage> {
    images
        .iter()
        .zip(1u32..)
        .map(|(&(pid, len), seed)| {
            let file_name = format!("{pid}_1_0_1_APP.fmu");
            let bytes = image_bytes(len, seed);
            dir.write(&file_name, &bytes);
            TestImage {
                id: image_id(&file_name),
                file_name,
                pid: pid.to_owned(),
                bytes,
            }
        })
        .collect()
}

/// A device payload `PIDLEN | PID | TYPE | VERSION:u32le [| OFFSET:u32le]`
/// (README, "Requests and answers"), built here again rather than with `firmware`.
pub fn device_payload(pid: &str, fw_type: u8, version: u32, offset: Option<u32>) -> Vec<u8> {
    device_payload_bytes(pid.as_bytes(), fw_type, version, offset)
}

/// The same device payload as [`device_payload`] for a PID given as bytes
/// (the in-process tests write PIDs as byte strings).
pub fn device_payload_bytes(pid: &[u8], fw_type: u8, version: u32, offset: Option<u32>) -> Vec<u8> {
    let mut payload = vec![u8::try_from(pid.len()).expect("a PID of at most 255 bytes")];
    payload.extend_from_slice(pid);
    payload.push(fw_type);
    payload.extend_from_slice(&version.to_le_bytes());
    if let Some(offset) = offset {
        payload.extend_from_slice(&offset.to_le_bytes());
    }
    payload
}

/// The value of a Block2 option asking for block `num` of size
/// `2^(szx+4)` (the `more` bit is clear, as in a request).
pub fn block2_value(num: u32, szx: u8) -> Vec<u8> {
    iot_ota::wire::Block {
        num,
        more: false,
        szx,
    }
    .encode(&mut [0; 4])
    .to_vec()
}

/// In-memory catalog files `(name, image_bytes(len, first_seed + i))` for
/// the `i`-th `(name, len)` of `files`, for tests that build a `Catalog`
/// without a directory.
pub fn seeded_files(files: &[(&str, usize)], first_seed: u32) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .zip(first_seed..)
        .map(|(&(name, len), seed)| (name.to_owned(), image_bytes(len, seed)))
        .collect()
}

/// Writes images at the block edges, PIDs `SIZE0`, `SIZE1`, `SIZE1023`,
/// `SIZE1024` and `SIZE1025` of that many bytes, then `SIZEBIG` of `big`
/// bytes when given, as [`write_images`] does (same order, same seeds).
pub fn write_size_images(dir: &TempDir, big: Option<usize>) -> Vec<TestImage> {
    let mut sizes = vec![
        ("SIZE0", 0),
        ("SIZE1", 1),
        ("SIZE1023", 1023),
        ("SIZE1024", 1024),
        ("SIZE1025", 1025),
    ];
    if let Some(len) = big {
        sizes.push(("SIZEBIG", len));
    }
    write_images(dir, &sizes)
}

/// The image of `images` with PID `pid`; the test fails without one.
pub fn find_image<'a>(images: &'a [TestImage], pid: &str) -> &'a TestImage {
    images
        .iter()
        .find(|i| i.pid == pid)
        .unwrap_or_else(|| panic!("no test image {pid}"))
}

// ---------------------------------------------------------------------------
// Network namespaces: a server namespace and a client namespace joined by
// a veth pair, for what the loopback cannot show (multicast: `lo` carries
// none on Linux; link-local zones; addresses added after start-up).

/// Bound on one `ip` command or one short outside program.
pub const NETNS_RUN_LIMIT: Duration = Duration::from_secs(30);

/// The server namespace's end of the veth pair of a [`NetnsPair`].
pub const SERVER_DEV: &str = "vs";
/// The client namespace's end of the veth pair of a [`NetnsPair`].
pub const CLIENT_DEV: &str = "vc";

/// True when network namespaces can be made (root and `ip`). When they
/// cannot: under CI (`CI=true`) the test fails; on a developer's machine
/// it prints SKIPPED and the test returns.
pub fn can_make_namespaces() -> bool {
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

/// Runs `ip ARGS`, bounded; the test fails when it does.
pub fn ip(args: &[&str]) {
    let output = run_bounded(Command::new("ip").args(args), NETNS_RUN_LIMIT);
    assert!(
        output.status.success(),
        "ip {}: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `program`, or `launcher` (e.g. `ip netns exec NS`) running it.
pub fn launched(launcher: &[&str], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match launcher.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Runs our client (after `launcher`, e.g. `ip netns exec NS`) for
/// `GET /.well-known/core` of `server_addr`, with a retransmission timeout
/// of `timeout_ms`; the test fails unless it succeeds and the listing names
/// `file_name`, showing the client's output and `server`'s log.
pub fn client_gets_the_listing(
    launcher: &[&str],
    server_addr: &str,
    timeout_ms: u64,
    file_name: &str,
    server: &TestServer,
) {
    let timeout = timeout_ms.to_string();
    let output = run_bounded(
        launched(launcher, CLIENT_BIN).args([
            server_addr,
            "--get",
            "/.well-known/core",
            "--timeout-ms",
            &timeout,
        ]),
        NETNS_RUN_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(file_name),
        "iot-ota-client {server_addr}: {}\nstdout: {stdout}\nstderr: {}\nlog:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
}

/// Two network namespaces, the server's and the client's, joined by a
/// veth pair ([`SERVER_DEV`] in the first, [`CLIENT_DEV`] in the second),
/// both deleted when dropped, also when the test panics. Names are unique
/// per process and call, so tests can run in parallel.
pub struct NetnsPair {
    /// The server's namespace.
    pub server: String,
    /// The client's namespace.
    pub client: String,
}

impl NetnsPair {
    /// Makes the pair, with `server_addrs` on [`SERVER_DEV`] and
    /// `client_addrs` on [`CLIENT_DEV`] (`ADDR/PREFIX`; IPv6 ones without
    /// duplicate address detection), no automatic link-local address, and
    /// both ends and both loopbacks up.
    pub fn new(tag: &str, server_addrs: &[&str], client_addrs: &[&str]) -> NetnsPair {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let pair = NetnsPair {
            server: format!("iotota-{tag}-{pid}-{n}-s"),
            client: format!("iotota-{tag}-{pid}-{n}-c"),
        };
        for ns in [&pair.server, &pair.client] {
            // A namespace left by an earlier run with the same pid goes first.
            delete_netns(ns);
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair.add_link(SERVER_DEV, CLIENT_DEV, server_addrs, client_addrs);
        pair
    }

    /// Adds a veth pair between the namespaces, `server_dev` in the
    /// server's with `server_addrs`, `client_dev` in the client's with
    /// `client_addrs` (as [`NetnsPair::new`] sets its own up), and waits
    /// until both ends are ready.
    pub fn add_link(
        &self,
        server_dev: &str,
        client_dev: &str,
        server_addrs: &[&str],
        client_addrs: &[&str],
    ) {
        ip(&[
            "link",
            "add",
            server_dev,
            "netns",
            &self.server,
            "type",
            "veth",
            "peer",
            "name",
            client_dev,
            "netns",
            &self.client,
        ]);
        for (ns, dev, addrs) in [
            (&self.server, server_dev, server_addrs),
            (&self.client, client_dev, client_addrs),
        ] {
            ip(&["-n", ns, "link", "set", dev, "addrgenmode", "none"]);
            for addr in addrs {
                self.add_addr(ns, dev, addr);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        for (ns, dev) in [(&self.server, server_dev), (&self.client, client_dev)] {
            wait_link_ready(ns, dev);
        }
    }

    /// Adds `addr` (`ADDR/PREFIX`, then optionally more words for
    /// `ip addr add`, e.g. `preferred_lft 0`) to `dev` in namespace `ns`.
    pub fn add_addr(&self, ns: &str, dev: &str, addr: &str) {
        let mut words = addr.split_whitespace();
        let prefix = words.next().expect("an address");
        let mut args = vec!["-n", ns, "addr", "add", prefix, "dev", dev];
        if prefix.contains(':') {
            args.push("nodad");
        }
        args.extend(words);
        ip(&args);
    }

    /// `ip netns exec SERVER`, to put before a program.
    pub fn in_server(&self) -> [&str; 4] {
        ["ip", "netns", "exec", self.server.as_str()]
    }

    /// `ip netns exec CLIENT`, to put before a program.
    pub fn in_client(&self) -> [&str; 4] {
        ["ip", "netns", "exec", self.client.as_str()]
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        delete_netns(&self.server);
        delete_netns(&self.client);
    }
}

/// Waits (at most 10 s) until IPv6 has configured `dev` in `ns`: its
/// multicast route `ff00::/8` appears only once the kernel saw the carrier
/// (the link watch runs up to a second after "up"), and before it a
/// datagram to a group fails with "Network is unreachable".
fn wait_link_ready(ns: &str, dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = run_bounded(
            Command::new("ip").args([
                "-n", ns, "-6", "route", "show", "table", "local", "dev", dev,
            ]),
            NETNS_RUN_LIMIT,
        );
        if String::from_utf8_lossy(&output.stdout).contains("ff00::/8") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dev} in {ns} got no IPv6 multicast route within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delete_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Every address the server logged a "listening on" line for, once
/// `count` of them are there (at most `timeout`); the test fails before.
pub fn listening_addrs(server: &TestServer, count: usize, timeout: Duration) -> Vec<SocketAddr> {
    let deadline = Instant::now() + timeout;
    loop {
        let addrs: Vec<SocketAddr> = server
            .log()
            .lines()
            .filter_map(|line| line.split("listening on ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        if addrs.len() >= count {
            return addrs;
        }
        assert!(
            Instant::now() < deadline,
            "the server logged {} of {count} \"listening on\" lines within {timeout:?}; log:\n{}",
            addrs.len(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Signals and exit status of a server process (tests/live_catalog.rs).

impl TestServer {
    /// Sends `signal` (e.g. `libc::SIGHUP`) to the server process; the
    /// test fails when it cannot.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill has no memory effects; the pid is our own child's,
        // not reaped yet (the Child is still held), so it names no other
        // process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Sends `signal` (SIGTERM or SIGINT), expects exit status 0 within
    /// 10 s and returns the final `stopping on a signal; stats: …` line,
    /// from stderr or from the syslog socket; the test fails otherwise.
    pub fn stop_by_signal(&mut self, signal: libc::c_int) -> String {
        self.signal(signal);
        let status = self.wait_exit(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = format!("{}{}", self.log(), self.syslog());
            let line = logs.lines().find(|l| l.contains("stopping on a signal"));
            if let (Some(line), Some(status)) = (line, status) {
                assert!(status.success(), "exit status {status}; log:\n{logs}");
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no clean stop after signal {signal} (status {status:?}); log:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its
    /// status; `None` when it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
