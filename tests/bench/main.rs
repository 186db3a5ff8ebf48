//! `make bench` (`cargo test --release --features loadgen --test bench -- --bench`): the figures of the issue
//! "Performance and footprint", measured with the release binaries over
//! loopback, and the targets they are held to.
//!
//! * Throughput: `iot-ota-client bench` against the server and against the
//!   raw baseline responder (`iot-ota-client baseline`), at 1, 16 and 256
//!   devices, 1024-byte blocks, for the `/updates/{id}` path and the legacy
//!   path. Runs of all configurations are interleaved, so a change in the
//!   machine's load hits every configuration alike; each figure is the
//!   median of at least 5 runs.
//! * Flat cost: 16 devices with 10,000 images in the catalog, and with
//!   requests spread over 10,000 client ports, against the 1-image row.
//! * Peak RSS (VmHWM) of the server after the 256-device runs.
//! * Peak RSS with 1,000 images of 64 KiB, for the static musl build the
//!   routers run and for the host (glibc) build: the images plus what the
//!   server needs beside them. `--bench --only-memory` runs these rows
//!   alone (`make bench-memory`).
//! * Start-up with 1,000 small images: spawn to the first answer to a
//!   repeated `GET /.well-known/core`.
//! * Binary sizes, including the static musl builds when present
//!   (`make release-musl`, `make release-aarch64`).
//! * coaps against coap, a figure without a target: one server built with
//!   `--features dtls` (by the Makefile, into `dtls/` under the target
//!   directory, so that the default binaries stay as they are) serving
//!   both, sequential downloads of a 1 MiB image over each, alternating:
//!   blocks/s and the server's CPU time per block. `--bench --only-coaps`
//!   runs this row alone (`make bench-coaps`).
//!
//! Benchmarks on a shared machine are noisy, so a missed target is printed
//! as FAIL but does not fail the command; a mismatched block or a failed
//! run does (exit status 1).
//!
//! Knobs for development (not for the figures): `OTA_BENCH_RUNS` (default
//! 5), `OTA_BENCH_MS` (length of one run, default 1500).

use coap_lite::{CoapOption, MessageClass, MessageType, RequestType, ResponseType};
use iot_ota::hash::fnv1a32;
use iot_ota::wire::{Emitter, Message};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// The integration tests' kit: image bytes, temporary directories and the
// binaries' paths are the same here as in every other test.
#[path = "../support/mod.rs"]
mod support;

use support::{image_bytes, TempDir, CLIENT_BIN as CLIENT, SERVER_BIN as SERVER};

/// The image every device downloads: 256 KiB, 256 blocks of 1 KiB.
const IMAGE_LEN: usize = 256 * 1024;
const IMAGE_PID: &str = "BENCH-DEV";
const IMAGE_NAME: &str = "BENCH-DEV_1_0_1_APP.fmu";
/// Version the legacy devices report: older than the image's 1.0.1.
const DEVICE_VERSION: &str = "1.0.0";
const SMALL_IMAGE_LEN: usize = 64;
const FLAT_IMAGES: usize = 10_000;
const FLAT_PORTS: usize = 10_000;
const STARTUP_IMAGES: usize = 1_000;
const DEVICE_COUNTS: [usize; 3] = [1, 16, 256];
const FLAT_DEVICES: usize = 16;
/// Retransmission timeout the generator uses (loopback never needs the
/// RFC's 2 s; a loss shows as a retransmission, not a 2 s stall).
const TIMEOUT_MS: &str = "250";
const MIN_RUNS: usize = 5;
const DEFAULT_RUN_MS: u64 = 1500;
const STARTUP_RUNS: usize = 5;
const STARTUP_LIMIT_MS: f64 = 200.0;
const RSS_ALLOWANCE: u64 = 3 * 1024 * 1024;
/// The memory rows: 1,000 images of 64 KiB, a size firmware padded to
/// flash sectors often has, and one the heap holds badly (see src/pages.rs).
const MEMORY_IMAGES: usize = 1_000;
const MEMORY_IMAGE_LEN: usize = 64 * 1024;
/// How long the memory rows' servers run after their first answer: past
/// one rescan of the directory (every 1000 ms by default).
const MEMORY_SETTLE: Duration = Duration::from_millis(1500);
const BINARY_LIMIT: u64 = 1024 * 1024;
const MUSL_TARGETS: [&str; 2] = ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];
/// Linux reports process CPU time in these ticks a second (USER_HZ).
const USER_HZ: f64 = 100.0;

fn main() -> ExitCode {
    // `make test` runs this target too, without `--bench`: the benchmark
    // takes minutes, so there it only checks its own machinery quickly
    // against the debug binaries, so that `make test` notices when
    // `make bench` would break.
    if !std::env::args().any(|a| a == "--bench") {
        smoke::generator_checks_the_real_server_and_drives_the_baseline();
        smoke::elf_reader_sees_the_interpreter_of_a_dynamic_binary();
        smoke::memory_row_measures_a_running_server();
        println!("bench smoke checks: 3 passed, 0 failed (make bench runs the benchmark)");
        return ExitCode::SUCCESS;
    }
    let result = if std::env::args().any(|a| a == "--only-memory") {
        bench_memory()
    } else if std::env::args().any(|a| a == "--only-coaps") {
        bench_coaps()
    } else {
        bench()
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A child process killed when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Responder {
    Baseline,
    Server,
    ServerFlat,
    /// A second 1-image server for the 10,000-port runs, so that their
    /// per-peer state does not count in the 256-device peak RSS.
    ServerPorts,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Route {
    Id,
    Legacy,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Id => "id",
            Route::Legacy => "legacy",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Case {
    responder: Responder,
    route: Route,
    devices: usize,
    ports: Option<usize>,
}

/// One generator run as its RESULT line and the responder's CPU use.
#[derive(Debug, Clone, Default)]
struct Run {
    blocks_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    retransmissions: u64,
    mismatches: u64,
    failures: u64,
    generator_cpu: f64,
    responder_cpu: f64,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `count` small images named `{prefix}-{n}_1_0_0_APP.fmu` into
/// `dir`, skipping names whose id (FNV-1a 32 of the name) collides with one
/// already taken: the catalog refuses to start on a collision. Returns the
/// bytes written.
fn write_small_images(
    dir: &Path,
    prefix: &str,
    count: usize,
    taken: &mut Vec<u32>,
) -> Result<u64, String> {
    write_images(dir, prefix, (count, SMALL_IMAGE_LEN), taken)
}

/// [`write_small_images`] for `count` images of `len` bytes each.
fn write_images(
    dir: &Path,
    prefix: &str,
    (count, len): (usize, usize),
    taken: &mut Vec<u32>,
) -> Result<u64, String> {
    let mut written = 0;
    let mut total = 0u64;
    let mut n = 0u32;
    while written < count {
        let name = format!("{prefix}-{n:05}_1_0_0_APP.fmu");
        n += 1;
        let id = fnv1a32(name.as_bytes());
        if taken.contains(&id) {
            continue;
        }
        taken.push(id);
        let bytes = image_bytes(len, n);
        std::fs::write(dir.join(&name), &bytes).map_err(|e| format!("write {name}: {e}"))?;
        total += bytes.len() as u64;
        written += 1;
    }
    Ok(total)
}

/// CPUs for the responders and for the generator. Pinned apart, the
/// generator never competes with the responder it measures, and the kernel
/// cannot pull the woken generator onto the responder's CPU (it does, for
/// synchronous wake-ups, and the two then share one core); the generator
/// then polls instead of sleeping, so replies cost the responder no
/// wake-up. `None` when taskset or a second CPU is missing.
#[derive(Debug, Clone, Default)]
struct Pinning {
    responder: Option<String>,
    generator: Option<String>,
}

impl Pinning {
    fn detect() -> Pinning {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_owned();
        let mut cpus = Vec::new();
        for part in list.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                cpus.extend(a..=b);
            }
        }
        let usable = Command::new("taskset")
            .args(["-c", "0", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        match cpus.as_slice() {
            [.., generator, responder] if usable => Pinning {
                responder: Some(responder.to_string()),
                generator: Some(generator.to_string()),
            },
            _ => Pinning::default(),
        }
    }

    fn describe(&self) -> String {
        match (&self.responder, &self.generator) {
            (Some(r), Some(g)) => format!("responders pinned to CPU {r}, generator to CPU {g} (polling)"),
            _ => "not pinned (taskset or a second CPU missing): generator and responder may share a core"
                .to_owned(),
        }
    }
}

/// `program`, under `taskset -c CPU` when `cpu` is given.
fn pinned(program: &str, cpu: Option<&str>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu, program]);
            c
        }
        None => Command::new(program),
    }
}

/// A free loopback UDP port: bound, read, released. The server is given
/// it explicitly, so that the bench need not read the log of a server
/// started with `-q`; the short race with another process is caught by
/// the readiness probe.
fn free_port() -> Result<u16, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    socket
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// `GET /.well-known/core`, Confirmable, until the first 2.05 or the
/// deadline; returns when it arrived.
fn probe(addr: SocketAddr, deadline: Instant) -> Option<Instant> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(1)))
        .ok()?;
    let mut request = [0u8; 64];
    let mut rx = [0u8; 2048];
    let mut mid: u16 = 0x4000;
    while Instant::now() < deadline {
        mid = mid.wrapping_add(1);
        let len = Emitter::new(
            &mut request,
            MessageType::Confirmable,
            MessageClass::Request(RequestType::Get),
            mid,
            b"probe",
        )
        .and_then(|mut e| {
            e.option(CoapOption::UriPath.into(), b".well-known")?;
            e.option(CoapOption::UriPath.into(), b"core")?;
            Ok(e.finish())
        })
        .ok()?;
        let _ = socket.send_to(&request[..len], addr);
        match socket.recv_from(&mut rx) {
            Ok((n, _)) => {
                let answered = Message::parse(&rx[..n]).is_ok_and(|m| {
                    m.mid == mid && m.class() == MessageClass::Response(ResponseType::Content)
                });
                if answered {
                    return Some(Instant::now());
                }
            }
            // Before the server binds, the kernel answers with an ICMP
            // port unreachable, reported at once: pace the probes.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_micros(500))
            }
            Err(_) => {}
        }
    }
    None
}

/// The server (`-q`) over `dir` on `addr`, under `taskset` when `cpu` is
/// given, without input or output; the caller decides on stderr.
fn server_command(dir: &Path, addr: SocketAddr, cpu: Option<&str>) -> Command {
    server_command_of(SERVER, dir, addr, cpu)
}

/// [`server_command`] for the server binary at `program`.
fn server_command_of(program: &str, dir: &Path, addr: SocketAddr, cpu: Option<&str>) -> Command {
    let mut command = pinned(program, cpu);
    command
        .arg("-q")
        .arg("-d")
        .arg(dir)
        .arg("-l")
        .arg(addr.to_string())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// Starts the server (release build, `-q`) over `dir` on a free port and
/// waits until it answers.
fn start_server(dir: &Path, cpu: Option<&str>) -> Result<Proc, String> {
    start_server_of(SERVER, dir, cpu)
}

/// [`start_server`] for the server binary at `program`.
fn start_server_of(program: &str, dir: &Path, cpu: Option<&str>) -> Result<Proc, String> {
    for _attempt in 0..3 {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = server_command_of(program, dir, addr, cpu)
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let mut proc = Proc { child, addr };
        if probe(addr, Instant::now() + Duration::from_secs(30)).is_some() {
            return Ok(proc);
        }
        if matches!(proc.child.try_wait(), Ok(Some(_))) {
            continue; // The port was taken in between: try another.
        }
        return Err(format!("the server on {addr} did not answer within 30 s"));
    }
    Err("the server could not bind a free port in 3 attempts".to_owned())
}

/// Starts `iot-ota-client baseline` on 127.0.0.1:0 and reads its address
/// from its "listening on" line.
fn start_baseline(cpu: Option<&str>) -> Result<Proc, String> {
    let mut child = pinned(CLIENT, cpu)
        .args(["baseline", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {CLIENT} baseline: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                let _ = tx.send(line.clone());
                sent = line.contains("listening on ");
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            let addr = addr
                .parse()
                .map_err(|_| format!("baseline printed '{line}'"))?;
            return Ok(Proc { child, addr });
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!(
        "`iot-ota-client baseline` did not report its address (does the client dispatch it?):\n{seen}"
    ))
}

/// User plus system CPU ticks of a process.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs the generator once against `responder` and parses its RESULT line.
fn run_generator(
    args: &[String],
    responder: &Proc,
    raise_fd_limit: bool,
    cpu: Option<&str>,
) -> Result<Run, String> {
    let mut command = if raise_fd_limit {
        // 10,000 sockets need more descriptors than some shells allow; the
        // crate has no libc binding to raise RLIMIT_NOFILE itself.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("ulimit -n 20000 2>/dev/null; exec \"$0\" \"$@\"");
        match cpu {
            Some(cpu) => c.args(["taskset", "-c", cpu, CLIENT]),
            None => c.arg(CLIENT),
        };
        c
    } else {
        pinned(CLIENT, cpu)
    };
    command.arg("bench").args(args);
    if cpu.is_some() {
        // A CPU of its own: poll, so that replies wake nobody up.
        command.arg("--spin");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let pid = responder.child.id();
    let before = cpu_ticks(pid);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {CLIENT} bench: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        (out, err)
    });
    // The generator stops itself after its duration; this bound only
    // guards against a hung process.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "generator did not finish: bench {}",
                    args.join(" ")
                ));
            }
        }
    };
    let after = cpu_ticks(pid);
    let (out, err) = reader.join().map_err(|_| "reader thread panicked")?;
    let Some(line) = out.lines().find(|l| l.starts_with("RESULT ")) else {
        return Err(format!(
            "generator printed no RESULT line ({status}): bench {}\n{out}{err}",
            args.join(" ")
        ));
    };
    let fields: HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let number = |key: &str| fields.get(key).and_then(|v| v.parse::<f64>().ok());
    let secs = number("secs").unwrap_or(0.0);
    let run = Run {
        blocks_per_s: number("blocks_per_s").unwrap_or(0.0),
        p50_us: number("p50_us").unwrap_or(0.0),
        p99_us: number("p99_us").unwrap_or(0.0),
        retransmissions: number("retransmissions").unwrap_or(0.0) as u64,
        mismatches: number("mismatches").unwrap_or(0.0) as u64,
        failures: number("failures").unwrap_or(0.0) as u64,
        generator_cpu: number("cpu_pct").unwrap_or(f64::NAN),
        responder_cpu: match (before, after) {
            (Some(b), Some(a)) if secs > 0.0 => a.saturating_sub(b) as f64 / USER_HZ / secs * 100.0,
            _ => f64::NAN,
        },
    };
    if run.mismatches > 0 {
        eprintln!("MISMATCH: bench {}\n{out}{err}", args.join(" "));
    }
    Ok(run)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Medians over the runs of one case, and the sums that must be zero.
#[derive(Debug, Clone, Default)]
struct Summary {
    blocks_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    retransmissions: u64,
    mismatches: u64,
    failures: u64,
    generator_cpu: f64,
    responder_cpu: f64,
}

fn summarize(runs: &[Run]) -> Summary {
    let med = |f: fn(&Run) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    Summary {
        blocks_per_s: med(|r| r.blocks_per_s),
        p50_us: med(|r| r.p50_us),
        p99_us: med(|r| r.p99_us),
        retransmissions: runs.iter().map(|r| r.retransmissions).sum(),
        mismatches: runs.iter().map(|r| r.mismatches).sum(),
        failures: runs.iter().map(|r| r.failures).sum(),
        generator_cpu: med(|r| r.generator_cpu),
        responder_cpu: med(|r| r.responder_cpu),
    }
}

/// ELF facts of a binary: machine name and whether it has an interpreter
/// (PT_INTERP), i.e. is dynamically linked.
fn elf_info(path: &Path) -> Option<(&'static str, bool)> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
        return None; // Only 64-bit little-endian is expected here.
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let machine = match u16_at(18)? {
        62 => "x86_64",
        183 => "aarch64",
        _ => "other",
    };
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    const PT_INTERP: u32 = 3;
    let dynamic = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP));
    Some((machine, dynamic))
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes.div_ceil(1024))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The three updates directories of the benchmark.
struct Catalogs {
    /// The 256 KiB image alone.
    one: PathBuf,
    /// The same image and FLAT_IMAGES small ones.
    flat: PathBuf,
    /// STARTUP_IMAGES small images.
    startup: PathBuf,
    /// MEMORY_IMAGES images of MEMORY_IMAGE_LEN bytes, and their total.
    memory: PathBuf,
    memory_total: u64,
    /// The image every device downloads, and its id.
    image_path: PathBuf,
    image_id: String,
    /// Bytes of all images in `flat`.
    flat_total: u64,
}

impl Catalogs {
    fn write(root: &Path) -> Result<Catalogs, String> {
        let one = root.join("one");
        let flat = root.join("flat");
        let startup = root.join("startup");
        let memory = root.join("memory");
        for dir in [&one, &flat, &startup, &memory] {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let image = image_bytes(IMAGE_LEN, 7);
        let image_path = one.join(IMAGE_NAME);
        std::fs::write(&image_path, &image).map_err(|e| e.to_string())?;
        std::fs::write(flat.join(IMAGE_NAME), &image).map_err(|e| e.to_string())?;
        let image_id = format!("{:08x}", fnv1a32(IMAGE_NAME.as_bytes()));
        let mut taken = vec![fnv1a32(IMAGE_NAME.as_bytes())];
        let flat_total =
            IMAGE_LEN as u64 + write_small_images(&flat, "FLAT", FLAT_IMAGES, &mut taken)?;
        write_small_images(&startup, "START", STARTUP_IMAGES, &mut Vec::new())?;
        let memory_total = write_images(
            &memory,
            "MEM",
            (MEMORY_IMAGES, MEMORY_IMAGE_LEN),
            &mut Vec::new(),
        )?;
        Ok(Catalogs {
            one,
            flat,
            startup,
            memory,
            memory_total,
            image_path,
            image_id,
            flat_total,
        })
    }
}

/// The running responders; dropped (stopped) in declaration order.
struct Responders {
    server: Proc,
    server_ports: Proc,
    server_flat: Proc,
    baseline: Proc,
}

impl Responders {
    fn start(catalogs: &Catalogs, cpu: Option<&str>) -> Result<Responders, String> {
        eprintln!(
            "bench: starting the servers (1 image; 1 image for the port spread; {FLAT_IMAGES} + 1 images) and the baseline"
        );
        Ok(Responders {
            server: start_server(&catalogs.one, cpu)?,
            server_ports: start_server(&catalogs.one, cpu)?,
            server_flat: start_server(&catalogs.flat, cpu)?,
            baseline: start_baseline(cpu)?,
        })
    }

    fn get(&self, responder: Responder) -> &Proc {
        match responder {
            Responder::Baseline => &self.baseline,
            Responder::Server => &self.server,
            Responder::ServerFlat => &self.server_flat,
            Responder::ServerPorts => &self.server_ports,
        }
    }

    fn peaks(&self) -> Peaks {
        Peaks {
            server: status_bytes(self.server.child.id(), "VmHWM:"),
            flat: status_bytes(self.server_flat.child.id(), "VmHWM:"),
            ports: status_bytes(self.server_ports.child.id(), "VmHWM:"),
        }
    }
}

/// Peak RSS (VmHWM) of the servers after their runs.
struct Peaks {
    server: Option<u64>,
    flat: Option<u64>,
    ports: Option<u64>,
}

/// Flat cost: 16 devices against the 10,000 + 1-image catalog.
const FLAT_IMAGES_CASE: Case = Case {
    responder: Responder::ServerFlat,
    route: Route::Id,
    devices: FLAT_DEVICES,
    ports: None,
};
/// Flat cost: 16 devices spread over 10,000 client ports.
const FLAT_PORTS_CASE: Case = Case {
    responder: Responder::ServerPorts,
    route: Route::Id,
    devices: FLAT_DEVICES,
    ports: Some(FLAT_PORTS),
};
/// The same spread against the baseline: what the kernel and the
/// generator lose with 10,000 sockets, whatever the responder.
const FLAT_PORTS_BASELINE_CASE: Case = Case {
    responder: Responder::Baseline,
    ..FLAT_PORTS_CASE
};

/// Every configuration: each route and device count against the baseline
/// and the server, then the flat-cost cases.
fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for route in [Route::Id, Route::Legacy] {
        for devices in DEVICE_COUNTS {
            for responder in [Responder::Baseline, Responder::Server] {
                cases.push(Case {
                    responder,
                    route,
                    devices,
                    ports: None,
                });
            }
        }
    }
    cases.extend([FLAT_IMAGES_CASE, FLAT_PORTS_CASE, FLAT_PORTS_BASELINE_CASE]);
    cases
}

/// The generator's arguments for one run of `case` against `addr`.
fn generator_args(
    case: &Case,
    addr: SocketAddr,
    duration_ms: u64,
    catalogs: &Catalogs,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        addr.to_string(),
        "--devices".into(),
        case.devices.to_string(),
        "--duration-ms".into(),
        duration_ms.to_string(),
        "--timeout-ms".into(),
        TIMEOUT_MS.into(),
        "--block-size".into(),
        "1024".into(),
        "--expect".into(),
        catalogs.image_path.display().to_string(),
        "--path".into(),
        case.route.name().into(),
    ];
    match case.route {
        Route::Id => a.extend(["--id".into(), catalogs.image_id.clone()]),
        Route::Legacy => a.extend([
            "--pid".into(),
            IMAGE_PID.into(),
            "--type".into(),
            "APP".into(),
            "--version".into(),
            DEVICE_VERSION.into(),
        ]),
    }
    if let Some(p) = case.ports {
        a.extend(["--ports".into(), p.to_string()]);
    }
    if case.responder == Responder::Baseline {
        a.push("--baseline".into());
    }
    a
}

/// Warm-up, then `runs` interleaved rounds over all `cases`: the runs of
/// each case, and false when a run failed.
fn measure(
    cases: &[Case],
    responders: &Responders,
    catalogs: &Catalogs,
    (runs, run_ms): (usize, u64),
    generator_cpu: Option<&str>,
) -> Result<(HashMap<Case, Vec<Run>>, bool), String> {
    let run = |case: &Case, duration_ms: u64| {
        let proc = responders.get(case.responder);
        let args = generator_args(case, proc.addr, duration_ms, catalogs);
        run_generator(&args, proc, case.ports.is_some(), generator_cpu)
    };
    // Warm-up: page in the binaries and the image, settle the CPUs.
    for case in cases
        .iter()
        .filter(|c| c.devices == FLAT_DEVICES && c.ports.is_none())
    {
        run(case, 200)?;
    }
    let mut results: HashMap<Case, Vec<Run>> = HashMap::new();
    let mut ok = true;
    for rep in 0..runs {
        eprintln!(
            "bench: round {} of {runs} ({} configurations)",
            rep + 1,
            cases.len()
        );
        for case in cases {
            match run(case, run_ms) {
                Ok(run) => results.entry(*case).or_default().push(run),
                Err(e) => {
                    eprintln!("bench: {e}");
                    ok = false;
                }
            }
        }
    }
    Ok((results, ok))
}

/// Start-up with STARTUP_IMAGES images: spawn to the first answer, in ms,
/// for each run that got one.
fn measure_startup(startup: &Path) -> Result<Vec<f64>, String> {
    let mut startup_ms = Vec::new();
    for _ in 0..STARTUP_RUNS {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let t0 = Instant::now();
        let child = server_command(startup, addr, None)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {SERVER}: {e}"))?;
        let proc = Proc { child, addr };
        if let Some(t1) = probe(proc.addr, t0 + Duration::from_secs(10)) {
            startup_ms.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
        }
    }
    Ok(startup_ms)
}

/// One memory row: which build, and its memory or why there is none.
struct MemoryRow {
    build: String,
    /// The static build routers run is held to the target; the host build
    /// is shown beside it, since its RSS counts the pages of the shared C
    /// library, which other processes share.
    held_to_target: bool,
    memory: Result<Memory, String>,
}

/// A server's memory after start-up, in bytes.
struct Memory {
    /// Peak RSS (VmHWM).
    peak: u64,
    /// RSS backed by files (RssFile): the binary and shared libraries.
    file_backed: u64,
}

/// The servers the memory rows measure: the static musl build for this
/// machine's CPU, when built (`make release-musl` on x86_64), and the host
/// build the rest of the benchmark runs (glibc).
fn memory_servers() -> Vec<(String, bool, Option<PathBuf>)> {
    let arch = std::env::consts::ARCH;
    let triple = format!("{arch}-unknown-linux-musl");
    vec![
        (
            format!("static musl {arch}"),
            true,
            musl_server(&triple).filter(|p| p.exists()),
        ),
        (
            format!("host glibc {arch}"),
            false,
            Some(PathBuf::from(SERVER)),
        ),
    ]
}

/// Starts `program` over `dir`, waits for its first answer and one rescan,
/// and reads its memory.
fn measure_memory(program: &Path, dir: &Path) -> Result<Memory, String> {
    let program = program.to_str().ok_or("binary path is not UTF-8")?;
    let server = start_server_of(program, dir, None)?;
    std::thread::sleep(MEMORY_SETTLE);
    let pid = server.child.id();
    Ok(Memory {
        peak: status_bytes(pid, "VmHWM:").ok_or("VmHWM unreadable")?,
        file_backed: status_bytes(pid, "RssFile:").ok_or("RssFile unreadable")?,
    })
}

/// The memory rows for the images in `dir`.
fn measure_memory_rows(dir: &Path) -> Vec<MemoryRow> {
    memory_servers()
        .into_iter()
        .map(|(build, held_to_target, program)| MemoryRow {
            memory: match program {
                Some(program) => measure_memory(&program, dir),
                None => Err("not built (make release-musl builds it)".to_owned()),
            },
            build,
            held_to_target,
        })
        .collect()
}

/// `--only-memory`: the memory rows alone, in seconds rather than minutes.
fn bench_memory() -> Result<bool, String> {
    let root = TempDir::new("bench-memory");
    let images = write_images(
        root.path(),
        "MEM",
        (MEMORY_IMAGES, MEMORY_IMAGE_LEN),
        &mut Vec::new(),
    )?;
    let rows = measure_memory_rows(root.path());
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<74} {:>14} {:>30}  result",
        "Target", "measured", "required"
    );
    let notes = write_memory_targets(&mut out, &rows, images);
    let _ = writeln!(out);
    for line in notes {
        let _ = writeln!(out, "  {line}");
    }
    print!("{out}");
    Ok(rows.iter().all(|row| row.memory.is_ok()))
}

/// Runs everything and prints the table; Ok(false) when a block
/// mismatched or a run failed.
fn bench() -> Result<bool, String> {
    let runs = usize::try_from(env_number("OTA_BENCH_RUNS", MIN_RUNS as u64))
        .unwrap_or(MIN_RUNS)
        .max(1);
    let run_ms = env_number("OTA_BENCH_MS", DEFAULT_RUN_MS).max(100);
    let started = Instant::now();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);

    let root = TempDir::new("bench");
    let catalogs = Catalogs::write(root.path())?;
    let pinning = Pinning::detect();
    let responders = Responders::start(&catalogs, pinning.responder.as_deref())?;
    let cases = all_cases();
    let (results, ok) = measure(
        &cases,
        &responders,
        &catalogs,
        (runs, run_ms),
        pinning.generator.as_deref(),
    )?;
    let summary: HashMap<Case, Summary> = results.iter().map(|(c, r)| (*c, summarize(r))).collect();
    let peaks = responders.peaks();
    drop(responders);
    let coaps = measure_coaps(root.path(), &pinning)?;
    let coaps_ok = coaps.mismatches == 0 && coaps.failures == 0;
    let mut startup_ms = measure_startup(&catalogs.startup)?;
    // Sorts the runs too: the report lists them in order.
    let startup_median = median(&mut startup_ms);
    let memory = measure_memory_rows(&catalogs.memory);

    let figures = Figures {
        runs,
        run_ms,
        cpus,
        load_before,
        pinning,
        summary,
        peaks,
        startup_ms,
        startup_median,
        memory,
        memory_total: catalogs.memory_total,
        flat_total: catalogs.flat_total,
        coaps,
        started,
    };
    let (out, mismatches) = report(&figures);
    print!("{out}");
    Ok(ok && coaps_ok && mismatches == 0)
}

// ---------------------------------------------------------------- the report

/// Everything the report prints.
struct Figures {
    runs: usize,
    run_ms: u64,
    cpus: usize,
    load_before: String,
    pinning: Pinning,
    summary: HashMap<Case, Summary>,
    peaks: Peaks,
    /// Sorted.
    startup_ms: Vec<f64>,
    startup_median: f64,
    memory: Vec<MemoryRow>,
    /// Bytes of the images the memory rows serve.
    memory_total: u64,
    flat_total: u64,
    coaps: CoapsRow,
    started: Instant,
}

/// The report's text, and the number of mismatched blocks.
fn report(f: &Figures) -> (String, u64) {
    let mut out = String::new();
    let w = &mut out;
    let mismatches: u64 = f.summary.values().map(|s| s.mismatches).sum();
    let failures: u64 = f.summary.values().map(|s| s.failures).sum();
    write_header(w, f);
    let ratios = write_throughput(w, &f.summary);
    let flat_ratios = write_flat_cost(w, &f.summary);
    write_coaps(w, &f.coaps);
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<74} {:>14} {:>30}  result",
        "Target", "measured", "required"
    );
    write_ratio_targets(w, &ratios, &flat_ratios);
    write_rss_target(w, f.peaks.server);
    let memory_notes = write_memory_targets(w, &f.memory, f.memory_total);
    write_startup_target(w, &f.startup_ms, f.startup_median);
    let mut info = write_binary_targets(w);
    info.extend(memory_notes);
    let _ = writeln!(w);
    info.extend(notes(f, mismatches, failures));
    for line in info {
        let _ = writeln!(w, "  {line}");
    }
    (out, mismatches)
}

/// The title, the machine and the rules.
fn write_header(w: &mut String, f: &Figures) {
    let runs = f.runs;
    let run_ms = f.run_ms;
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "== iot-ota-server benchmark: median of {runs} runs of {run_ms} ms per figure, loopback, \
         {IMAGE_LEN}-byte image, 1024-byte blocks =="
    );
    let _ = writeln!(
        w,
        "machine: {} CPUs, load average at start {}; {}",
        f.cpus,
        f.load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        f.pinning.describe()
    );
    if runs < MIN_RUNS {
        let _ = writeln!(
            w,
            "NOTE: OTA_BENCH_RUNS={runs} is below {MIN_RUNS}: not a valid report"
        );
    }
    let _ = writeln!(
        w,
        "Benchmarks on a shared machine are noisy: a FAIL is reported, not fatal; the exit status is \
         non-zero only when a block mismatched or a run failed."
    );
    let _ = writeln!(w);
}

/// One row of the throughput and flat-cost tables.
fn row(w: &mut String, route: &str, devices: String, label: &str, s: &Summary, ratio: String) {
    let _ = writeln!(
        w,
        "{:<7} {:>7} {:<9} {:>10.0} {:>8.0} {:>8.0} {:>5} {:>8.0}% {:>7.0}% {:>16}",
        route,
        devices,
        label,
        s.blocks_per_s,
        s.p50_us,
        s.p99_us,
        s.retransmissions,
        s.responder_cpu,
        s.generator_cpu,
        ratio
    );
}

/// The throughput table; returns server / baseline blocks/s by route and
/// device count.
fn write_throughput(
    w: &mut String,
    summary: &HashMap<Case, Summary>,
) -> HashMap<(Route, usize), f64> {
    let _ = writeln!(
        w,
        "Throughput. resp CPU: the responder's CPU use during the run (near 100% means the responder, \
         not the generator, is the limit); retx: retransmissions, all runs."
    );
    let _ = writeln!(
        w,
        "{:<7} {:>7} {:<9} {:>10} {:>8} {:>8} {:>5} {:>9} {:>8} {:>16}",
        "path",
        "devices",
        "responder",
        "blocks/s",
        "p50 us",
        "p99 us",
        "retx",
        "resp CPU",
        "gen CPU",
        "server/baseline"
    );
    let mut ratios = HashMap::new();
    for route in [Route::Id, Route::Legacy] {
        for devices in DEVICE_COUNTS {
            let get = |responder| {
                summary.get(&Case {
                    responder,
                    route,
                    devices,
                    ports: None,
                })
            };
            let (Some(b), Some(s)) = (get(Responder::Baseline), get(Responder::Server)) else {
                let _ = writeln!(w, "{:<7} {devices:>7} (no result)", route.name());
                continue;
            };
            let ratio = s.blocks_per_s / b.blocks_per_s;
            ratios.insert((route, devices), ratio);
            let n = devices.to_string();
            row(w, route.name(), n.clone(), "baseline", b, String::new());
            row(w, route.name(), n, "server", s, format!("{ratio:.3}"));
        }
    }
    ratios
}

/// The flat-cost table; returns (label, ratio) pairs judged within 10%.
fn write_flat_cost(w: &mut String, summary: &HashMap<Case, Summary>) -> Vec<(String, f64)> {
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Flat cost ({FLAT_DEVICES} devices, id path; ratio to the 1-image, 1-port-per-device row)"
    );
    let at16 = |responder| {
        summary.get(&Case {
            responder,
            route: Route::Id,
            devices: FLAT_DEVICES,
            ports: None,
        })
    };
    let mut flat_ratios: Vec<(String, f64)> = Vec::new();
    if let (Some(server_ref), Some(baseline_ref)) =
        (at16(Responder::Server), at16(Responder::Baseline))
    {
        let n = FLAT_DEVICES.to_string();
        row(
            w,
            "id",
            n.clone(),
            "server",
            server_ref,
            "reference".to_owned(),
        );
        if let Some(s) = summary.get(&FLAT_IMAGES_CASE) {
            let ratio = s.blocks_per_s / server_ref.blocks_per_s;
            flat_ratios.push((
                format!("{FLAT_IMAGES} images in the catalog / 1 image"),
                ratio,
            ));
            let label = format!("{FLAT_IMAGES} images {ratio:.3}");
            row(w, "id", n.clone(), "server", s, label);
        }
        let spread = (
            summary.get(&FLAT_PORTS_CASE),
            summary.get(&FLAT_PORTS_BASELINE_CASE),
        );
        if let (Some(s), Some(b)) = spread {
            let ratio = s.blocks_per_s / server_ref.blocks_per_s;
            let kernel = b.blocks_per_s / baseline_ref.blocks_per_s;
            let label = format!("{FLAT_PORTS} ports {ratio:.3}");
            row(w, "id", n.clone(), "server", s, label);
            let reference = "reference".to_owned();
            row(w, "id", n.clone(), "baseline", baseline_ref, reference);
            let label = format!("{FLAT_PORTS} ports {kernel:.3}");
            row(w, "id", n, "baseline", b, label);
            flat_ratios.push((
                format!("{FLAT_PORTS} client ports / 1 port per device"),
                ratio,
            ));
            flat_ratios.push((
                format!("{FLAT_PORTS} ports, server's own share (server / baseline)"),
                ratio / kernel,
            ));
        }
    }
    let _ = writeln!(
        w,
        "(The baseline rows show what 10,000 client sockets cost the kernel and the generator alone; \
         the server's own share is its ratio divided by the baseline's.)"
    );
    flat_ratios
}

/// One row of the targets table.
fn target(w: &mut String, name: String, measured: String, required: String, pass: bool) {
    let _ = writeln!(
        w,
        "{name:<74} {measured:>14} {required:>30}  {}",
        verdict(pass)
    );
}

/// The throughput floors and the flat-cost band.
fn write_ratio_targets(
    w: &mut String,
    ratios: &HashMap<(Route, usize), f64>,
    flat_ratios: &[(String, f64)],
) {
    for route in [Route::Id, Route::Legacy] {
        for (devices, floor) in [(16, 0.90), (256, 0.85)] {
            let ratio = ratios.get(&(route, devices)).copied().unwrap_or(f64::NAN);
            target(
                w,
                format!(
                    "{} path, {devices} devices: server / baseline blocks/s",
                    route.name()
                ),
                format!("{ratio:.3}"),
                format!(">= {floor:.2}"),
                ratio >= floor,
            );
        }
    }
    for (label, ratio) in flat_ratios {
        target(
            w,
            format!("flat cost, {FLAT_DEVICES} devices: {label}"),
            format!("{ratio:.3}"),
            "within 10% (0.90..1.10)".to_owned(),
            (ratio - 1.0).abs() <= 0.10,
        );
    }
}

/// Peak RSS of the server after the 256-device runs.
fn write_rss_target(w: &mut String, rss_peak: Option<u64>) {
    let rss_limit = IMAGE_LEN as u64 + RSS_ALLOWANCE;
    match rss_peak {
        Some(peak) => target(
            w,
            "peak RSS (VmHWM) of the server after its 1-, 16- and 256-device runs".to_owned(),
            mib(peak),
            format!("<= {} (images + 3 MiB)", mib(rss_limit)),
            peak <= rss_limit,
        ),
        None => target(
            w,
            "peak RSS".to_owned(),
            "unreadable".to_owned(),
            String::new(),
            false,
        ),
    }
}

/// Peak RSS with MEMORY_IMAGES images of MEMORY_IMAGE_LEN bytes, per build:
/// what the server holds beyond the images. The rows held to the target go
/// to the table (one not measured fails); returns the notes: every build's
/// file-backed share, and the rows shown for comparison.
fn write_memory_targets(w: &mut String, rows: &[MemoryRow], images: u64) -> Vec<String> {
    let mut notes = Vec::new();
    for row in rows {
        let name = format!(
            "peak RSS beyond the images, {MEMORY_IMAGES} images of {} KiB, {}",
            MEMORY_IMAGE_LEN / 1024,
            row.build
        );
        match (&row.memory, row.held_to_target) {
            (Ok(memory), held) => {
                let beyond = memory.peak.saturating_sub(images);
                if held {
                    target(
                        w,
                        name.clone(),
                        mib(beyond),
                        format!("<= {}", mib(RSS_ALLOWANCE)),
                        beyond <= RSS_ALLOWANCE,
                    );
                }
                notes.push(format!(
                    "{name}: {} ({} of images, peak {}; {} of it file pages: the binary{})",
                    mib(beyond),
                    mib(images),
                    mib(memory.peak),
                    mib(memory.file_backed),
                    if held {
                        ""
                    } else {
                        " and the shared C library"
                    }
                ));
            }
            (Err(why), true) => target(w, name, why.clone(), String::new(), false),
            (Err(why), false) => notes.push(format!("{name}: {why}")),
        }
    }
    notes
}

/// Start-up: every run answered, and the median below the limit.
fn write_startup_target(w: &mut String, startup_ms: &[f64], startup_median: f64) {
    let startup_ok = startup_ms.len() == STARTUP_RUNS && startup_median < STARTUP_LIMIT_MS;
    target(
        w,
        format!(
            "start-up, {STARTUP_IMAGES} images: spawn to first answer ({} of {STARTUP_RUNS} ok)",
            startup_ms.len()
        ),
        format!("{startup_median:.1} ms"),
        format!("< {STARTUP_LIMIT_MS:.0} ms"),
        startup_ok,
    );
}

/// Where `make release-musl` (or `make release-aarch64`) puts the static
/// server for `triple`: beside the host build, in the same target directory.
fn musl_server(triple: &str) -> Option<PathBuf> {
    let target_dir = Path::new(SERVER).parent().and_then(Path::parent)?;
    Some(
        target_dir
            .join(triple)
            .join("release")
            .join("iot-ota-server"),
    )
}

/// Size and linking of the static musl builds; returns a note for each
/// one not built.
fn write_binary_targets(w: &mut String) -> Vec<String> {
    let mut info = Vec::new();
    for triple in MUSL_TARGETS {
        let path = musl_server(triple);
        match path
            .as_ref()
            .and_then(|p| Some((std::fs::metadata(p).ok()?.len(), elf_info(p))))
        {
            Some((size, elf)) => {
                let linked = match elf {
                    Some((_, false)) => "static",
                    Some((_, true)) => "dynamic",
                    None => "not ELF64",
                };
                target(
                    w,
                    format!("{triple} release server binary ({linked})"),
                    kib(size),
                    "<= 1024 KiB, static".to_owned(),
                    size <= BINARY_LIMIT && linked == "static",
                );
            }
            None => info.push(format!(
                "{triple}: not built (make release-musl / make release-aarch64 build it)"
            )),
        }
    }
    info
}

/// The figures without a target: host binary sizes, the other peaks, the
/// start-up runs, the error counts and the time taken.
fn notes(f: &Figures, mismatches: u64, failures: u64) -> Vec<String> {
    let mut info = Vec::new();
    for (name, path) in [("iot-ota-server", SERVER), ("iot-ota-client", CLIENT)] {
        if let Ok(meta) = std::fs::metadata(path) {
            info.push(format!(
                "{name} release binary (host, glibc): {}",
                kib(meta.len())
            ));
        }
    }
    if let Some(peak) = f.peaks.ports {
        info.push(format!(
            "peak RSS of the 1-image server after the {FLAT_PORTS}-port runs (per-peer tables at their bound): {}",
            mib(peak)
        ));
    }
    if let Some(peak) = f.peaks.flat {
        info.push(format!(
            "peak RSS of the server with {FLAT_IMAGES} + 1 images ({} of images): {} (images + {})",
            mib(f.flat_total),
            mib(peak),
            mib(peak.saturating_sub(f.flat_total))
        ));
    }
    info.push(format!(
        "start-up runs: {}",
        f.startup_ms
            .iter()
            .map(|m| format!("{m:.1} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    info.push(format!(
        "mismatched blocks: {mismatches}; failed exchanges: {failures}"
    ));
    info.push(format!(
        "bench took {:.0} s",
        f.started.elapsed().as_secs_f64()
    ));
    info
}

/// Quick checks of the bench machinery, run by `make test` (see `main`).
mod smoke {
    pub fn generator_checks_the_real_server_and_drives_the_baseline() {
        use super::*;
        let root = TempDir::new("bench-test");
        let image = image_bytes(20_000, 3);
        let path = root.path().join(IMAGE_NAME);
        std::fs::write(&path, &image).unwrap();
        let id = format!("{:08x}", fnv1a32(IMAGE_NAME.as_bytes()));
        let server = start_server(root.path(), None).unwrap();
        let baseline = start_baseline(None).unwrap();
        let args = |server: &Proc, image: &Path, extra: &[&str]| -> Vec<String> {
            let mut a = vec![
                server.addr.to_string(),
                "--duration-ms".to_owned(),
                "300".to_owned(),
                "--timeout-ms".to_owned(),
                TIMEOUT_MS.to_owned(),
                "--expect".to_owned(),
                image.display().to_string(),
            ];
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let legacy = [
            "--path",
            "legacy",
            "--pid",
            IMAGE_PID,
            "--version",
            DEVICE_VERSION,
        ];
        for (responder, extra) in [
            (&server, vec!["--devices", "4", "--id", &id]),
            (&server, [&["--devices", "4"][..], &legacy].concat()),
            (
                &server,
                vec!["--devices", "4", "--ports", "64", "--id", &id],
            ),
            (&baseline, vec!["--devices", "4", "--baseline"]),
        ] {
            let run =
                run_generator(&args(responder, &path, &extra), responder, false, None).unwrap();
            assert!(run.blocks_per_s > 0.0, "{extra:?}: {run:?}");
            assert_eq!(run.mismatches, 0, "{extra:?}");
            assert_eq!(run.failures, 0, "{extra:?}");
        }
        // A wrong expectation is caught, block by block.
        let other = root.path().join("other.bin");
        std::fs::write(&other, image_bytes(20_000, 4)).unwrap();
        let run =
            run_generator(&args(&server, &other, &["--id", &id]), &server, false, None).unwrap();
        assert!(run.mismatches > 0, "{run:?}");
    }

    pub fn memory_row_measures_a_running_server() {
        use super::*;
        let root = TempDir::new("bench-memory-test");
        let images = write_images(root.path(), "MEM", (3, 5000), &mut Vec::new()).unwrap();
        assert_eq!(images, 15_000);
        let memory = measure_memory(Path::new(SERVER), root.path()).unwrap();
        // The debug server with three small images: more than its images,
        // less than any machine's memory, partly its mapped binary.
        assert!(
            memory.peak > images && memory.peak < 1 << 30,
            "{}",
            memory.peak
        );
        assert!(memory.file_backed > 0 && memory.file_backed < memory.peak);
        let mut out = String::new();
        let row = |build: &str, held_to_target, memory| MemoryRow {
            build: build.to_owned(),
            held_to_target,
            memory,
        };
        let over = || {
            Ok(Memory {
                peak: images + RSS_ALLOWANCE + 1,
                file_backed: 4096,
            })
        };
        let notes = write_memory_targets(
            &mut out,
            &[
                row("held", true, over()),
                row("missing", true, Err("not built".to_owned())),
                row("shown", false, over()),
                row("absent", false, Err("no binary".to_owned())),
            ],
            images,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains("held") && lines[0].contains("3.00 MiB"));
        assert!(lines[0].ends_with("FAIL"), "{out}");
        assert!(lines[1].contains("not built") && lines[1].ends_with("FAIL"));
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("held") && notes[1].contains("shown"));
        assert!(notes[2].ends_with("no binary"));
    }

    pub fn elf_reader_sees_the_interpreter_of_a_dynamic_binary() {
        use super::*;
        // The host release or debug build links glibc dynamically.
        let (machine, dynamic) = elf_info(Path::new(SERVER)).unwrap();
        assert_eq!(machine, std::env::consts::ARCH);
        assert!(dynamic);
        assert!(elf_info(Path::new("Cargo.toml")).is_none());
    }
}

// ------------------------------------------------------------- the coaps row

/// The coaps row's image: 1 MiB, 1024 blocks of 1 KiB, so that the one
/// handshake of a download weighs little beside its blocks.
const COAPS_IMAGE_LEN: usize = 1024 * 1024;
const COAPS_IMAGE_NAME: &str = "COAPS-DEV_1_0_1_APP.fmu";
/// Downloads of each kind, alternating; the figures are their medians.
const COAPS_DOWNLOADS: usize = 11;
/// Sessions measured alone (handshake, one small request, close).
const COAPS_SESSIONS: usize = 11;
const COAPS_IDENTITY: &str = "bench";
const COAPS_KEY: &str = "bench-secret-key";
/// Bound on one client run (a download takes well under a second).
const COAPS_RUN_LIMIT: Duration = Duration::from_secs(60);
/// Where the Makefile builds the server and the client with `--features
/// dtls` (`--target-dir`, under the target directory of this build), so
/// that they do not replace the default binaries the other rows measure.
const DTLS_TARGET_SUBDIR: &str = "dtls";

/// The server and client built with `--features dtls` for the coaps row,
/// when built.
fn dtls_binaries() -> Option<(PathBuf, PathBuf)> {
    let target_dir = Path::new(SERVER).parent().and_then(Path::parent)?;
    let release = target_dir.join(DTLS_TARGET_SUBDIR).join("release");
    let server = release.join("iot-ota-server");
    let client = release.join("iot-ota-client");
    (server.exists() && client.exists()).then_some((server, client))
}

/// CPU time of a process in nanoseconds: /proc/PID/schedstat (exact),
/// else utime + stime from /proc/PID/stat (in 10 ms ticks).
fn cpu_ns(pid: u32) -> Option<u64> {
    let exact = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    exact.or_else(|| Some((cpu_ticks(pid)? as f64 * 1e9 / USER_HZ) as u64))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Coap,
    Coaps,
}

/// One client run against the dtls server.
#[derive(Debug, Clone, Copy, Default)]
struct ClientRun {
    secs: f64,
    server_cpu_ns: u64,
    retransmissions: u64,
}

/// The coaps row's figures, or why there are none.
#[derive(Debug, Default)]
struct CoapsRow {
    /// Why the row was not measured (the dtls build is missing).
    missing: Option<String>,
    /// Where the server and the client ran.
    placement: String,
    coap: Vec<ClientRun>,
    coaps: Vec<ClientRun>,
    /// Handshake, `GET /.well-known/core`, close: the cost of a session.
    sessions: Vec<ClientRun>,
    mismatches: u64,
    failures: u64,
}

/// The dtls server with plain coap on one port and coaps on another, and
/// the client and key that reach it.
struct DtlsBench {
    server: Proc,
    coaps_addr: SocketAddr,
    client: PathBuf,
    image: Vec<u8>,
    image_id: String,
    out: PathBuf,
}

impl DtlsBench {
    fn start(
        root: &Path,
        (server, client): (PathBuf, PathBuf),
        cpu: Option<&str>,
    ) -> Result<DtlsBench, String> {
        let images = root.join("coaps");
        let keys = root.join("coaps-keys");
        for dir in [&images, &keys] {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let image = image_bytes(COAPS_IMAGE_LEN, 11);
        std::fs::write(images.join(COAPS_IMAGE_NAME), &image).map_err(|e| e.to_string())?;
        let psk = keys.join("psk");
        std::fs::write(&psk, format!("{COAPS_IDENTITY}:{COAPS_KEY}\n"))
            .map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        let program = server.to_str().ok_or("binary path is not UTF-8")?;
        for _attempt in 0..3 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let coaps_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let child = server_command_of(program, &images, addr, cpu)
                .arg("--dtls-listen")
                .arg(coaps_addr.to_string())
                .arg("--psk-file")
                .arg(&psk)
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start {program}: {e}"))?;
            let mut proc = Proc { child, addr };
            if probe(addr, Instant::now() + Duration::from_secs(30)).is_some() {
                return Ok(DtlsBench {
                    server: proc,
                    coaps_addr,
                    client,
                    image,
                    image_id: format!("{:08x}", fnv1a32(COAPS_IMAGE_NAME.as_bytes())),
                    out: root.join("coaps-download.bin"),
                });
            }
            if matches!(proc.child.try_wait(), Ok(Some(_))) {
                continue; // A port was taken in between: try others.
            }
            return Err(format!(
                "the dtls server on {addr} did not answer within 30 s"
            ));
        }
        Err("the dtls server could not bind free ports in 3 attempts".to_owned())
    }

    /// One run of the dtls client: the whole image by id over
    /// `transport`, or with `session_only` a coaps session that fetches
    /// `/.well-known/core`. Err when it failed; Ok(None) when the body
    /// differs from the image.
    fn run(
        &self,
        transport: Transport,
        session_only: bool,
        cpu: Option<&str>,
    ) -> Result<Option<ClientRun>, String> {
        let client = self.client.to_str().ok_or("binary path is not UTF-8")?;
        let path = if session_only {
            ".well-known/core".to_owned()
        } else {
            format!("updates/{}", self.image_id)
        };
        let uri = match transport {
            Transport::Coap => format!("coap://{}/{path}", self.server.addr),
            Transport::Coaps => format!("coaps://{}/{path}", self.coaps_addr),
        };
        let _ = std::fs::remove_file(&self.out);
        let mut command = pinned(client, cpu);
        command
            .arg(&uri)
            .args(["-b", "1024", "--timeout-ms", TIMEOUT_MS, "-o"])
            .arg(&self.out)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if transport == Transport::Coaps {
            command.args(["--psk-identity", COAPS_IDENTITY, "--psk-key", COAPS_KEY]);
        }
        let pid = self.server.child.id();
        let before = cpu_ns(pid).ok_or("server CPU time unreadable")?;
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {client}: {e}"))?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let reader = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            err
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < COAPS_RUN_LIMIT => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{uri}: the client did not finish"));
                }
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let after = cpu_ns(pid).ok_or("server CPU time unreadable")?;
        let err = reader.join().map_err(|_| "reader thread panicked")?;
        if !status.success() {
            return Err(format!("{uri}: the client exited with {status}: {err}"));
        }
        // "..., N retransmissions, S s" on the summary line.
        let retransmissions = err
            .split(", ")
            .find_map(|part| {
                part.strip_suffix(" retransmissions")
                    .or(part.strip_suffix(" retransmission"))
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if !session_only {
            let body = std::fs::read(&self.out).unwrap_or_default();
            if body != self.image {
                eprintln!("MISMATCH: {uri}: {} bytes, not the image", body.len());
                return Ok(None);
            }
        }
        Ok(Some(ClientRun {
            secs,
            server_cpu_ns: after.saturating_sub(before),
            retransmissions,
        }))
    }
}

/// The coaps row: alternating downloads of the 1 MiB image over coap and
/// coaps from the one dtls server, then coaps sessions alone.
fn measure_coaps(root: &Path, pinning: &Pinning) -> Result<CoapsRow, String> {
    let Some(binaries) = dtls_binaries() else {
        return Ok(CoapsRow {
            missing: Some(format!(
                "not built: make bench and make bench-coaps build the server and client with --features dtls into {DTLS_TARGET_SUBDIR}/ under the target directory"
            )),
            ..CoapsRow::default()
        });
    };
    eprintln!("bench: coaps row: {COAPS_DOWNLOADS} downloads of {COAPS_IMAGE_LEN} bytes over coap and over coaps, alternating, then {COAPS_SESSIONS} coaps sessions");
    let bench = DtlsBench::start(root, binaries, pinning.responder.as_deref())?;
    let cpu = pinning.generator.as_deref();
    let mut row = CoapsRow {
        placement: match (&pinning.responder, &pinning.generator) {
            (Some(r), Some(g)) => format!(
                "server pinned to CPU {r}, client to CPU {g} (waiting for each reply in the kernel, not polling)"
            ),
            _ => "not pinned (taskset or a second CPU missing)".to_owned(),
        },
        ..CoapsRow::default()
    };
    // Warm-up: page in both binaries and the image, and a first handshake.
    for transport in [Transport::Coap, Transport::Coaps] {
        bench.run(transport, false, cpu)?;
    }
    let mut record =
        |runs: &mut Vec<ClientRun>, result: Result<Option<ClientRun>, String>| match result {
            Ok(Some(run)) => runs.push(run),
            Ok(None) => row.mismatches += 1,
            Err(e) => {
                eprintln!("bench: {e}");
                row.failures += 1;
            }
        };
    let (mut coap, mut coaps, mut sessions) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..COAPS_DOWNLOADS {
        // Alternating which goes first, so that neither always follows
        // the other.
        let order = if round % 2 == 0 {
            [Transport::Coap, Transport::Coaps]
        } else {
            [Transport::Coaps, Transport::Coap]
        };
        for transport in order {
            let runs = match transport {
                Transport::Coap => &mut coap,
                Transport::Coaps => &mut coaps,
            };
            record(runs, bench.run(transport, false, cpu));
        }
    }
    for _ in 0..COAPS_SESSIONS {
        record(&mut sessions, bench.run(Transport::Coaps, true, cpu));
    }
    row.coap = coap;
    row.coaps = coaps;
    row.sessions = sessions;
    Ok(row)
}

/// `--only-coaps`: the coaps row alone.
fn bench_coaps() -> Result<bool, String> {
    let root = TempDir::new("bench-coaps");
    let pinning = Pinning::detect();
    let row = measure_coaps(root.path(), &pinning)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "machine: {} CPUs, load average at the end {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    write_coaps(&mut out, &row);
    print!("{out}");
    Ok(row.missing.is_none() && row.mismatches == 0 && row.failures == 0)
}

/// Median blocks/s and median server CPU per block (µs) of `runs`.
fn coaps_medians(runs: &[ClientRun], blocks: f64) -> (f64, f64) {
    let mut rates: Vec<f64> = runs.iter().map(|r| blocks / r.secs).collect();
    let mut cpu: Vec<f64> = runs
        .iter()
        .map(|r| r.server_cpu_ns as f64 / 1000.0 / blocks)
        .collect();
    (median(&mut rates), median(&mut cpu))
}

/// The coaps section of the report: a figure, not a target.
fn write_coaps(w: &mut String, row: &CoapsRow) {
    let blocks = COAPS_IMAGE_LEN.div_ceil(1024) as f64;
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "coaps (DTLS 1.2 PSK, AES-128-CCM-8) against coap: one server built with --features dtls serving both, \
         {COAPS_DOWNLOADS} downloads each of a {COAPS_IMAGE_LEN}-byte image by id in 1 KiB blocks, one client at a time, \
         alternating; medians. A figure, not a target."
    );
    if let Some(why) = &row.missing {
        let _ = writeln!(w, "  coaps row {why}");
        return;
    }
    let _ = writeln!(w, "{}", row.placement);
    let _ = writeln!(
        w,
        "{:<9} {:>9} {:>10} {:>22} {:>5}",
        "transport", "downloads", "blocks/s", "server CPU us/block", "retx"
    );
    let mut medians = Vec::new();
    for (name, runs) in [("coap", &row.coap), ("coaps", &row.coaps)] {
        let (rate, cpu) = coaps_medians(runs, blocks);
        let retx: u64 = runs.iter().map(|r| r.retransmissions).sum();
        let _ = writeln!(
            w,
            "{name:<9} {:>9} {rate:>10.0} {cpu:>22.2} {retx:>5}",
            runs.len()
        );
        medians.push((rate, cpu));
    }
    let mut session_us: Vec<f64> = row
        .sessions
        .iter()
        .map(|r| r.server_cpu_ns as f64 / 1000.0)
        .collect();
    let session_us = median(&mut session_us);
    if let [(coap_rate, coap_cpu), (coaps_rate, coaps_cpu)] = medians[..] {
        let _ = writeln!(
            w,
            "coaps / coap blocks/s: {:.3}; server CPU per block: coaps {coaps_cpu:.2} us, coap {coap_cpu:.2} us, \
             DTLS {:.2} us a block (including the download's one handshake, {:.2} us a block)",
            coaps_rate / coap_rate,
            coaps_cpu - coap_cpu,
            session_us / blocks
        );
    }
    let _ = writeln!(
        w,
        "server CPU of a whole coaps session (handshake, GET /.well-known/core, close; median of {}): {session_us:.0} us",
        row.sessions.len()
    );
    let _ = writeln!(
        w,
        "mismatched downloads: {}; failed runs: {}",
        row.mismatches, row.failures
    );
}
