//! The load generator behind `iot-ota-client bench`, used by `make bench`.
//! The protocol is the client's ([`crate::coap`]: requests, reply matching,
//! the block cursor, Message IDs, the retransmission schedule); what is
//! its own is the single-thread scheduling of many devices and the
//! byte-for-byte check against the image. It never allocates per request.
//!
//! The generator simulates N devices. Each runs a stop-and-wait Confirmable
//! download of a whole image, block by block (RFC 7252 §4.2, RFC 7959
//! Block2), with its own Message IDs and token, and every block is checked
//! byte for byte against the image file. All devices share one thread and
//! non-blocking sockets: each device has its own socket, or, with
//! `--ports P`, each request leaves from the next socket of a pool of P, so
//! a server whose cost grew with the number of client ports would show it.
//!
//! Waiting without epoll (std has none, and the crate no libc): a
//! single-socket server answers in the order the requests arrived, so the
//! loop receives on the socket of the oldest outstanding request (the
//! head). When that has nothing yet, it polls a few times, looks at the
//! next requests' sockets, and then blocks on the head in the kernel for at
//! most a millisecond, so an idle generator leaves the CPU to the responder
//! it measures; `--spin` never blocks, for a generator with a CPU of its
//! own. A head found unanswered after a younger request was answered was
//! lost (with 256 devices a responder's default socket buffer overflows):
//! it leaves this fast path, and a sweep of every outstanding socket, run
//! on a coarse timer, catches late replies and retransmits. `make bench`
//! shows the responder's CPU use, so a generator-bound run is visible.
//! Against a server that answers out of order the generator stays correct,
//! only slower.
//!
//! `bench --baseline` drives [`crate::baseline`], the ceiling for a
//! single-thread request/response server on the machine at hand, with the
//! same loop and the same requests, minus the CoAP checks.

use crate::client::bind_ephemeral;
use crate::coap::{
    classify_reply, emit_get, BlockCursor, DevicePayload, Get, MessageIds, Reply, Resource,
    Retransmission, Target, XorShift, TOKEN_LEN,
};
use crate::options::{number, parse_subcommand};
use crate::{usage_error, ERROR_EXIT};
use coap_lite::{MessageClass, MessageType, ResponseType};
use getopts::{Matches, Options};
use iot_ota::firmware::{self, DeviceRequest};
use iot_ota::wire::{Block, Message};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The command name in messages.
const COMMAND: &str = "iot-ota-client bench";
/// Room for the largest request: header, token, two Uri-Path options,
/// Block2 and a legacy payload with a 255-byte PID.
const REQUEST_MAX: usize = 320;
/// Larger than any reply a 1 KiB block makes, and than the baseline's.
const RECEIVE_MAX: usize = 2048;
/// Non-blocking polls of the head socket before blocking on it: a reply
/// within a few microseconds is cheaper to catch than to be woken for.
const SPIN_POLLS: u32 = 8;
/// Longest block on the head socket (the kernel rounds it up to its
/// tick); then every outstanding socket is swept.
const HEAD_WAIT: Duration = Duration::from_millis(1);
/// Requests after the head polled before blocking on it.
const LOOK_AHEAD: usize = 16;
/// Sweep at least this often (retransmission timers).
const TIMER_SWEEP: Duration = Duration::from_millis(5);
/// Blocks a baseline "download" has when no image is given.
const BASELINE_BLOCKS: usize = 256;
/// Upper bound of `--devices` and `--ports` (each is a file descriptor).
const MAX_SOCKETS: usize = 60_000;
/// Linux reports process CPU time in these ticks a second (USER_HZ).
const USER_HZ: f64 = 100.0;

/// What the devices download.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// `GET /updates/{id}`, OFFSET as a 4-byte payload when not 0.
    Id([u8; 8]),
    /// The legacy one-request protocol: the device payload with OFFSET in
    /// every request (the reference protocol's devices do).
    Legacy {
        pid: Vec<u8>,
        fw_type: u8,
        version: u32,
    },
}

impl Route {
    fn name(&self) -> &'static str {
        match self {
            Route::Id(_) => "id",
            Route::Legacy { .. } => "legacy",
        }
    }
}

/// Everything `bench` needs, from the command line.
#[derive(Debug, Clone)]
struct BenchConfig {
    server: SocketAddr,
    devices: usize,
    /// `Some(P)`: requests leave round-robin from a pool of P sockets.
    ports: Option<usize>,
    route: Route,
    offset: u32,
    szx: u8,
    /// The expected body, `image[offset..]`; empty in baseline mode when no
    /// image was given.
    body: Vec<u8>,
    baseline: bool,
    /// Never block: poll the head socket continuously.
    spin: bool,
    duration: Duration,
    downloads: Option<u32>,
    /// ACK_TIMEOUT from `--timeout-ms`; MAX_RETRANSMIT as RFC 7252 says.
    retransmission: Retransmission,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
struct Report {
    blocks: u64,
    bytes: u64,
    secs: f64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    retransmissions: u64,
    failures: u64,
    mismatches: u64,
    stale: u64,
    downloads: u64,
    /// Requests taken out of the fast path as late or lost.
    late_heads: u64,
    sweeps: u64,
    cpu_pct: Option<f64>,
    first_mismatch: Option<String>,
}

impl Report {
    fn blocks_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.blocks as f64 / self.secs
        } else {
            0.0
        }
    }
}

fn bench_options() -> Options {
    let mut o = Options::new();
    o.optopt(
        "n",
        "devices",
        "simulated devices, 1..60000 (default: 16)",
        "N",
    );
    o.optopt(
        "",
        "ports",
        "spread requests round-robin over P client sockets, P >= N (id path only; default: one socket per device)",
        "P",
    );
    o.optopt(
        "",
        "path",
        "id (GET /updates/{id}, default) or legacy (GET /updates with the device payload)",
        "PATH",
    );
    o.optopt("", "id", "image id, 8 hex digits (--path id)", "HEX");
    o.optopt(
        "",
        "pid",
        "product id the devices report (--path legacy)",
        "PID",
    );
    o.optopt(
        "",
        "type",
        "firmware type, APP or 0..255 (--path legacy; default: APP)",
        "TYPE",
    );
    o.optopt(
        "",
        "version",
        "version the devices run, M.m.b or a number (--path legacy; default: 0.0.0)",
        "V",
    );
    o.optopt(
        "",
        "offset",
        "byte offset the body starts at (default: 0)",
        "BYTES",
    );
    o.optopt(
        "",
        "expect",
        "the image file: every block is compared with it",
        "FILE",
    );
    o.optopt(
        "b",
        "block-size",
        "Block2 size asked for, 16..1024 (default: 1024)",
        "BYTES",
    );
    o.optflag(
        "",
        "baseline",
        "the target is `iot-ota-client baseline`: any reply completes a request, nothing is checked",
    );
    o.optflag(
        "",
        "spin",
        "never sleep while waiting for a reply (when the generator has a CPU of its own, e.g. under taskset)",
    );
    o.optopt(
        "",
        "duration-ms",
        "length of the run (default: 2000; with --downloads a cap, default 60000)",
        "MS",
    );
    o.optopt(
        "",
        "downloads",
        "stop each device after K whole downloads",
        "K",
    );
    o.optopt(
        "",
        "timeout-ms",
        "first retransmission timeout, doubled after each (default: 2000, RFC 7252 ACK_TIMEOUT)",
        "MS",
    );
    o.optflag("h", "help", "print this help");
    o
}

/// The help text above the options.
const BENCH_BRIEF: &str = "Usage: iot-ota-client bench SERVER [--devices N] [--ports P] [--path id|legacy] \
                 [--id HEX | --pid PID --type T --version V] [--offset BYTES] [--expect FILE] \
                 [--block-size BYTES] [--baseline] [--spin] [--duration-ms MS | --downloads K] [--timeout-ms MS]\n\n\
                 Simulates N devices, each downloading a whole image block by block with Confirmable \
                 requests (stop-and-wait, its own Message IDs and token), all in one thread, and checks \
                 every block against FILE. SERVER is HOST:PORT (port 5683 when omitted).\n\
                 Prints one human line, then one machine-readable line:\n  \
                 RESULT mode=.. target=.. devices=.. ports=.. block_size=.. blocks=.. secs=.. blocks_per_s=.. \
                 p50_us=.. p99_us=.. max_us=.. retransmissions=.. failures=.. mismatches=.. stale=.. downloads=.. \
                 late_heads=.. sweeps=.. cpu_pct=..\n\
                 (latency: first transmission to checked reply; failures: exchanges given up after 4 \
                 retransmissions; stale: duplicate or unmatched replies; late_heads: requests found lost; \
                 cpu_pct: the generator's own CPU use)\n\
                 Exit status: 0 when every block matched, 1 on a mismatch or when no block arrived, 2 on a usage error.";

/// `iot-ota-client bench SERVER ...`: runs the load generator and prints a
/// human line and a `RESULT key=value ...` line on stdout.
///
/// `args` are the arguments after `bench`. Exit status 0 when every block
/// matched, 1 on a mismatch, a failed run or no block at all, 2 on a usage
/// error.
pub(crate) fn bench_main(args: &[String]) -> ExitCode {
    let matches = match parse_subcommand(COMMAND, &bench_options(), args, BENCH_BRIEF) {
        Ok(m) => m,
        Err(done) => return done,
    };
    let config = match bench_config(&matches) {
        Ok(config) => config,
        Err(message) => return usage_error(COMMAND, &message),
    };
    let report = match run(&config) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("{COMMAND}: {e}");
            return ExitCode::from(ERROR_EXIT);
        }
    };
    println!("{}", human_line(&config, &report));
    println!("{}", result_line(&config, &report));
    if let Some(first) = &report.first_mismatch {
        eprintln!("{COMMAND}: first mismatch: {first}");
    }
    if report.mismatches > 0 || report.blocks == 0 {
        ExitCode::from(ERROR_EXIT)
    } else {
        ExitCode::SUCCESS
    }
}

fn bench_config(m: &Matches) -> Result<BenchConfig, String> {
    let server_text = match m.free.as_slice() {
        [one] => one,
        [] => return Err("missing SERVER (e.g. 127.0.0.1:5683)".to_owned()),
        [_, extra, ..] => return Err(format!("unexpected argument '{extra}'")),
    };
    let server = Target::parse(server_text)
        .map_err(|e| e.to_string())
        .and_then(|target| match target.secure {
            // One DTLS session per simulated device is not what the load
            // generator measures.
            true => Err("the load generator speaks plain coap only".to_owned()),
            false => target.resolve().map_err(|e| e.to_string()),
        })
        .map_err(|e| format!("cannot resolve SERVER '{server_text}': {e}"))?;
    let devices = number(m, "devices", 16usize, |n| (1..=MAX_SOCKETS).contains(n))?;
    let ports = match m.opt_str("ports") {
        None => None,
        Some(_) => Some(
            number(m, "ports", 0usize, |p| (devices..=MAX_SOCKETS).contains(p)).map_err(|e| {
                format!("{e}: use at least as many ports as devices ({devices}) and at most {MAX_SOCKETS}")
            })?,
        ),
    };
    let baseline = m.opt_present("baseline");
    let route = match m.opt_str("path").as_deref().unwrap_or("id") {
        "id" => {
            let id = match m.opt_str("id") {
                Some(text) => {
                    parse_id(&text).ok_or_else(|| format!("invalid --id '{text}': 8 hex digits"))?
                }
                None if baseline => *b"00000000",
                None => return Err("--path id needs --id HEX".to_owned()),
            };
            Route::Id(id)
        }
        "legacy" => {
            let pid = m.opt_str("pid").map(String::into_bytes);
            let pid = match pid {
                Some(pid) if (1..=255).contains(&pid.len()) => pid,
                Some(_) => return Err("--pid must be 1 to 255 bytes".to_owned()),
                None if baseline => b"BASELINE".to_vec(),
                None => return Err("--path legacy needs --pid PID".to_owned()),
            };
            let fw_type = match m.opt_str("type") {
                None => firmware::TYPE_APP,
                Some(t) => firmware::parse_type(t.as_bytes())
                    .ok_or_else(|| format!("invalid --type '{t}': APP or 0..255"))?,
            };
            let version = match m.opt_str("version") {
                None => 0,
                Some(v) => firmware::parse_version(v.as_bytes())
                    .ok_or_else(|| format!("invalid --version '{v}': M.m.b or a number"))?,
            };
            Route::Legacy {
                pid,
                fw_type,
                version,
            }
        }
        other => return Err(format!("invalid --path '{other}': id or legacy")),
    };
    if ports.is_some() && matches!(route, Route::Legacy { .. }) {
        return Err(
            "--ports needs --path id: a legacy continuation belongs to one client port".to_owned(),
        );
    }
    let offset = number(m, "offset", 0u32, |_| true)?;
    let block_size = number(m, "block-size", 1024usize, |b| {
        Block::szx_for_size(*b).is_some()
    })
    .map_err(|e| format!("{e}: use 16, 32, 64, 128, 256, 512 or 1024"))?;
    let szx = Block::szx_for_size(block_size).unwrap_or(Block::MAX_SZX);
    let body = match m.opt_str("expect") {
        Some(file) => {
            let image = std::fs::read(PathBuf::from(&file))
                .map_err(|e| format!("cannot read --expect {file}: {e}"))?;
            image
                .get(offset as usize..)
                .ok_or_else(|| {
                    format!(
                        "--offset {offset} is beyond the {} bytes of {file}",
                        image.len()
                    )
                })?
                .to_vec()
        }
        None if baseline => Vec::new(),
        None => {
            return Err(
                "--expect FILE is needed to check the blocks (or use --baseline)".to_owned(),
            )
        }
    };
    let downloads = match m.opt_str("downloads") {
        None => None,
        Some(_) => Some(number(m, "downloads", 1u32, |k| *k > 0)?),
    };
    let default_ms = if downloads.is_some() { 60_000 } else { 2_000 };
    let duration = Duration::from_millis(number(m, "duration-ms", default_ms, |ms| *ms > 0)?);
    let ack_timeout = Duration::from_millis(number(m, "timeout-ms", 2_000u64, |ms| {
        (1..=60_000).contains(ms)
    })?);
    Ok(BenchConfig {
        server,
        devices,
        ports,
        route,
        offset,
        szx,
        body,
        baseline,
        spin: m.opt_present("spin"),
        duration,
        downloads,
        retransmission: Retransmission {
            ack_timeout,
            ..Retransmission::default()
        },
    })
}

fn parse_id(text: &str) -> Option<[u8; 8]> {
    let bytes: [u8; 8] = text.as_bytes().try_into().ok()?;
    bytes
        .iter()
        .all(u8::is_ascii_hexdigit)
        .then(|| bytes.map(|b| b.to_ascii_lowercase()))
}

/// One simulated device and its outstanding exchange.
#[derive(Debug)]
struct Device {
    /// The device index, big-endian, rather than a random token: a reply
    /// that arrives on any pool socket finds its device without a search.
    token: [u8; TOKEN_LEN],
    /// Message ID of the outstanding request.
    mid: u16,
    /// The device's own Message IDs (without `--ports`).
    mids: MessageIds,
    /// Socket the outstanding request left from.
    socket: usize,
    /// Where the download stands: the block to ask for next.
    cursor: BlockCursor,
    /// NUM of the block the outstanding request asks for (for messages).
    asked_num: u32,
    request: [u8; REQUEST_MAX],
    request_len: usize,
    first_sent: Instant,
    last_sent: Instant,
    /// Retransmissions of the outstanding request so far.
    retransmits: u32,
    /// Sequence number of its latest transmission (one counter for all
    /// devices); queue entries with another value are stale.
    seq: u64,
    outstanding: bool,
    downloads: u32,
}

/// The generator's state during one run.
struct Generator<'c> {
    config: &'c BenchConfig,
    sockets: Vec<UdpSocket>,
    /// Device whose request last left from each socket (baseline replies
    /// carry no token).
    owner: Vec<usize>,
    next_socket: usize,
    /// Message IDs for `--ports`: one sequence, so no two requests from one
    /// port share an ID (RFC 7252 §4.4).
    shared_mids: MessageIds,
    /// Resource and payload of every request.
    requests: Requests,
    devices: Vec<Device>,
    /// (device, seq) in transmission order: the oldest outstanding request
    /// is at the front once stale entries are skipped.
    queue: VecDeque<(usize, u64)>,
    /// Last transmission sequence number given out.
    next_seq: u64,
    /// Highest sequence number answered so far: proof that older requests
    /// found unanswered afterwards were lost.
    answered_seq: u64,
    /// The order of a sweep, kept to reuse its allocation.
    order: Vec<usize>,
    latencies_us: Vec<u32>,
    report: Report,
    /// Body length used to wrap block numbers in baseline mode.
    body_len: usize,
    active: usize,
}

/// One blocking receive on a non-blocking socket, bounded by its read
/// timeout (HEAD_WAIT, set at creation).
fn wait_on(socket: &UdpSocket, rx: &mut [u8]) -> Option<(usize, SocketAddr)> {
    socket.set_nonblocking(false).ok()?;
    let received = socket.recv_from(rx).ok();
    // Should this fail, the socket stays blocking, bounded by HEAD_WAIT:
    // slower sweeps, never a hang.
    let _ = socket.set_nonblocking(true);
    received
}

/// A client socket for the generator's loop: non-blocking, with HEAD_WAIT
/// as the bound of [`wait_on`].
fn bind_socket(server: SocketAddr) -> io::Result<UdpSocket> {
    let socket = bind_ephemeral(server).map_err(|e| {
        if e.raw_os_error() == Some(24) {
            io::Error::new(e.kind(), format!("{e}: raise the limit with `ulimit -n`"))
        } else {
            e
        }
    })?;
    socket.set_read_timeout(Some(HEAD_WAIT))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Runs the generator once.
///
/// # Errors
/// When a socket cannot be created (too many open files, no such address
/// family).
fn run(config: &BenchConfig) -> io::Result<Report> {
    let socket_count = config.ports.unwrap_or(config.devices);
    let mut sockets = Vec::with_capacity(socket_count);
    for _ in 0..socket_count {
        sockets.push(bind_socket(config.server)?);
    }
    let requests = Requests::new(config)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the request does not fit"))?;
    let mut rng = XorShift::from_entropy();
    let now = Instant::now();
    let devices = (0..config.devices)
        .map(|i| Device {
            token: (i as u32).to_be_bytes(),
            mid: 0,
            mids: MessageIds::starting_at_random(&mut rng),
            socket: i % socket_count,
            cursor: BlockCursor::new(config.szx),
            asked_num: 0,
            request: [0; REQUEST_MAX],
            request_len: 0,
            first_sent: now,
            last_sent: now,
            retransmits: 0,
            seq: 0,
            outstanding: false,
            downloads: 0,
        })
        .collect();
    let body_len = if config.baseline && config.body.is_empty() {
        BASELINE_BLOCKS << (config.szx + 4)
    } else {
        config.body.len()
    };
    let mut generator = Generator {
        config,
        owner: vec![0; sockets.len()],
        sockets,
        next_socket: 0,
        shared_mids: MessageIds::starting_at_random(&mut rng),
        requests,
        devices,
        queue: VecDeque::with_capacity(config.devices * 4),
        next_seq: 0,
        answered_seq: 0,
        order: Vec::with_capacity(config.devices),
        latencies_us: Vec::with_capacity(1 << 20),
        report: Report::default(),
        body_len,
        active: 0,
    };
    let cpu_before = process_cpu_ticks();
    let mut report = generator.run_loop();
    if let (Some(before), Some(after)) = (cpu_before, process_cpu_ticks()) {
        if report.secs > 0.0 {
            report.cpu_pct =
                Some(after.saturating_sub(before) as f64 / USER_HZ / report.secs * 100.0);
        }
    }
    Ok(report)
}

impl Generator<'_> {
    fn run_loop(&mut self) -> Report {
        let start = Instant::now();
        let deadline = start + self.config.duration;
        for d in 0..self.devices.len() {
            self.send_new(d, start);
        }
        let mut rx = vec![0u8; RECEIVE_MAX];
        let mut last_sweep = start;
        let mut polls = 0u32;
        let mut now = start;
        while now < deadline && self.active > 0 {
            if now.duration_since(last_sweep) >= TIMER_SWEEP {
                self.sweep(now, &mut rx);
                last_sweep = now;
            }
            let Some(head) = self.head() else {
                // Every outstanding request left the fast path as late:
                // wait on one of them, then sweep them all.
                let socket = self
                    .devices
                    .iter()
                    .find(|dev| dev.outstanding)
                    .map(|dev| dev.socket);
                if let Some(socket) = socket {
                    self.receive(socket, &mut rx, true);
                }
                now = Instant::now();
                self.sweep(now, &mut rx);
                last_sweep = now;
                continue;
            };
            let (socket, head_seq) = self
                .devices
                .get(head)
                .map_or((0, 0), |dev| (dev.socket, dev.seq));
            let answered_before = self.answered_seq;
            if self.receive(socket, &mut rx, false) {
                polls = 0;
                now = Instant::now();
                continue;
            }
            now = Instant::now();
            if head_seq < answered_before {
                // A younger request was answered before this poll found
                // nothing: the server answers in order, so the head was
                // lost (a full server queue drops requests). It leaves the
                // fast path; sweeps and its retransmission timer cover it.
                self.queue.pop_front();
                self.report.late_heads += 1;
                continue;
            }
            polls += 1;
            if polls >= SPIN_POLLS {
                polls = 0;
                // Before sleeping on the head, look for such proof.
                if !self.look_ahead(&mut rx) && !self.config.spin {
                    // Sleep in the kernel until the reply or HEAD_WAIT.
                    if !self.receive(socket, &mut rx, true) {
                        now = Instant::now();
                        self.sweep(now, &mut rx);
                        last_sweep = now;
                    }
                }
                now = Instant::now();
            }
        }
        let mut report = std::mem::take(&mut self.report);
        report.secs = now.duration_since(start).as_secs_f64();
        self.latencies_us.sort_unstable();
        report.p50_us = percentile(&self.latencies_us, 50);
        report.p99_us = percentile(&self.latencies_us, 99);
        report.max_us = self.latencies_us.last().copied().unwrap_or(0);
        report
    }

    /// One receive on `socket` (blocking up to HEAD_WAIT when `block`),
    /// the datagram handled; true when one arrived.
    fn receive(&mut self, socket: usize, rx: &mut [u8], block: bool) -> bool {
        let received = match self.sockets.get(socket) {
            Some(s) if block => wait_on(s, rx),
            Some(s) => s.recv_from(rx).ok(),
            None => None,
        };
        match received {
            Some((len, _)) => {
                self.on_datagram(socket, rx.get(..len).unwrap_or(&[]), Instant::now());
                true
            }
            None => false,
        }
    }

    /// Polls the sockets of the requests after the head; true when a
    /// reply was there.
    fn look_ahead(&mut self, rx: &mut [u8]) -> bool {
        let mut sockets = [0usize; LOOK_AHEAD];
        let mut count = 0;
        for &(d, seq) in self.queue.iter().skip(1) {
            if count == LOOK_AHEAD {
                break;
            }
            if let Some(dev) = self
                .devices
                .get(d)
                .filter(|dev| dev.outstanding && dev.seq == seq)
            {
                if let Some(slot) = sockets.get_mut(count) {
                    *slot = dev.socket;
                    count += 1;
                }
            }
        }
        let mut found = false;
        for &socket in sockets.get(..count).unwrap_or(&[]) {
            found |= self.receive(socket, rx, false);
        }
        found
    }

    /// The device with the oldest outstanding request.
    fn head(&mut self) -> Option<usize> {
        while let Some(&(d, seq)) = self.queue.front() {
            match self.devices.get(d) {
                Some(dev) if dev.outstanding && dev.seq == seq => return Some(d),
                _ => {
                    self.queue.pop_front();
                }
            }
        }
        None
    }

    /// Receives whatever waits on every outstanding socket and retransmits
    /// what timed out.
    fn sweep(&mut self, now: Instant, rx: &mut [u8]) {
        self.report.sweeps += 1;
        // Oldest first, as the server answered: the late requests (older
        // than anything in the queue), then the queue in order. A younger
        // reply handled first would mark older answered requests late.
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        let front = self.queue.front().map_or(u64::MAX, |&(_, seq)| seq);
        order.extend(
            self.devices
                .iter()
                .enumerate()
                .filter(|(_, dev)| dev.outstanding && dev.seq < front)
                .map(|(d, _)| d),
        );
        order.sort_unstable_by_key(|&d| self.devices.get(d).map_or(0, |dev| dev.seq));
        order.extend(
            self.queue
                .iter()
                .filter(|&&(d, seq)| {
                    self.devices
                        .get(d)
                        .is_some_and(|dev| dev.outstanding && dev.seq == seq)
                })
                .map(|&(d, _)| d),
        );
        for &d in &order {
            let Some(dev) = self.devices.get(d) else {
                break;
            };
            if !dev.outstanding {
                continue;
            }
            let socket = dev.socket;
            // A bounded drain: stale duplicates may sit before the reply.
            for _ in 0..4 {
                let Some(Ok((len, _))) = self.sockets.get(socket).map(|s| s.recv_from(rx)) else {
                    break;
                };
                self.on_datagram(socket, rx.get(..len).unwrap_or(&[]), now);
            }
            let Some(dev) = self.devices.get(d) else {
                break;
            };
            if dev.outstanding && now.duration_since(dev.last_sent) >= self.timeout(dev) {
                self.retransmit(d, now);
            }
        }
        self.order = order;
    }

    /// Sends the request for the device's current block with a new Message
    /// ID.
    fn send_new(&mut self, d: usize, now: Instant) {
        let socket = match self.config.ports {
            Some(p) => {
                let s = self.next_socket;
                self.next_socket = (s + 1) % p.max(1);
                s
            }
            None => d,
        };
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        dev.mid = match self.config.ports {
            Some(_) => self.shared_mids.fresh(),
            None => dev.mids.fresh(),
        };
        dev.socket = socket;
        // A block past NUM 2^20 - 1 was refused in `check`; an empty
        // request would just time out.
        dev.request_len = dev
            .cursor
            .next_block()
            .ok()
            .and_then(|block| {
                dev.asked_num = block.num;
                let get = self.requests.get(block);
                emit_get(&get, dev.mid, &dev.token, None, &mut dev.request).ok()
            })
            .unwrap_or(0);
        dev.first_sent = now;
        dev.retransmits = 0;
        if !dev.outstanding {
            dev.outstanding = true;
            self.active += 1;
        }
        if let Some(owner) = self.owner.get_mut(socket) {
            *owner = d;
        }
        self.transmit(d, now);
    }

    /// How long the device's outstanding request waits for an answer: the
    /// RFC 7252 §4.2 doubling, without the random factor, so that runs
    /// compare and `--timeout-ms` is the first wait exactly.
    fn timeout(&self, dev: &Device) -> Duration {
        self.config.retransmission.timeout(0, dev.retransmits)
    }

    /// Sends the device's request bytes again (same Message ID); after
    /// MAX_RETRANSMIT the exchange fails and the device starts its
    /// download again.
    fn retransmit(&mut self, d: usize, now: Instant) {
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        if dev.retransmits >= self.config.retransmission.max_retransmit {
            self.report.failures += 1;
            dev.cursor = BlockCursor::new(self.config.szx);
            self.send_new(d, now);
            return;
        }
        dev.retransmits += 1;
        self.report.retransmissions += 1;
        self.transmit(d, now);
    }

    fn transmit(&mut self, d: usize, now: Instant) {
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        dev.last_sent = now;
        self.next_seq += 1;
        dev.seq = self.next_seq;
        self.queue.push_back((d, dev.seq));
        let bytes = dev.request.get(..dev.request_len).unwrap_or(&[]);
        if let Some(socket) = self.sockets.get(dev.socket) {
            // A failed send (a full buffer, an ICMP error reported late)
            // is a loss like any other: the timer retransmits.
            let _ = socket.send_to(bytes, self.config.server);
        }
    }

    /// A datagram arrived on `socket`: find its device, check it, move on.
    fn on_datagram(&mut self, socket: usize, datagram: &[u8], now: Instant) {
        if self.config.baseline {
            self.on_baseline_reply(socket, datagram.len(), now);
            return;
        }
        let Ok(msg) = Message::parse(datagram) else {
            self.report.stale += 1;
            return;
        };
        let device = match msg.mtype {
            // An RST carries no token: look for the Message ID.
            MessageType::Reset => self
                .devices
                .iter()
                .position(|dev| dev.outstanding && dev.mid == msg.mid && dev.socket == socket),
            _ => <[u8; TOKEN_LEN]>::try_from(msg.token)
                .ok()
                .map(|t| u32::from_be_bytes(t) as usize),
        };
        let reply = device
            .and_then(|d| self.devices.get(d))
            .filter(|dev| dev.outstanding)
            .map_or(Reply::Stray, |dev| {
                classify_reply(&msg, dev.mid, &dev.token)
            });
        let d = device.unwrap_or(0);
        let checked = match reply {
            Reply::Piggybacked => self.check(d, &msg),
            Reply::Reset => Err(format!("{:?} instead of a piggybacked ACK", msg.mtype)),
            // A duplicate answer to a retransmitted request, or noise.
            Reply::EmptyAck | Reply::Separate { .. } | Reply::Stray => {
                self.report.stale += 1;
                return;
            }
        };
        match checked {
            Ok(more) => self.complete(d, now, msg.payload.len(), more),
            Err(problem) => self.mismatch(d, &msg, &problem, now),
        }
    }

    /// A baseline reply on `socket` completes the request of the device
    /// that last sent from it (baseline replies carry no token); its
    /// content is not looked at, only its length counted.
    fn on_baseline_reply(&mut self, socket: usize, len: usize, now: Instant) {
        let d = self.owner.get(socket).copied().unwrap_or(0);
        let body_len = self.body_len as u64;
        let more = match self.devices.get_mut(d) {
            Some(dev) if dev.outstanding && dev.socket == socket => {
                let start = dev.cursor.progress().bytes;
                dev.cursor.next_block().and_then(|block| {
                    // The block a CoAP server would have sent there.
                    let len = (block.size() as u64).min(body_len.saturating_sub(start));
                    let more = start + len < body_len;
                    let answer = Block { more, ..block };
                    dev.cursor
                        .accept(Some(Ok(answer)), None, None, len as usize)
                })
            }
            _ => {
                self.report.stale += 1;
                return;
            }
        };
        match more {
            Ok(more) => self.complete(d, now, len, more),
            // Past 2^20 blocks: start over as a device would.
            Err(_) => self.complete(d, now, len, false),
        }
    }

    /// Checks a piggybacked answer matched to device `d` against the
    /// expected body; returns whether more blocks follow. The block-wise
    /// rules are the client's ([`BlockCursor::accept`]); what is added here
    /// is the byte-for-byte comparison with the image.
    fn check(&mut self, d: usize, msg: &Message<'_>) -> Result<bool, String> {
        let body = &self.config.body;
        let dev = self.devices.get_mut(d).ok_or("no such device")?;
        if msg.class() != MessageClass::Response(ResponseType::Content) {
            return Err("not 2.05 Content".to_owned());
        }
        // Every request asks for a block: an answer without one is wrong
        // here, although the client takes it as a whole body.
        if !matches!(msg.block2, Some(Ok(_))) {
            return Err("no valid Block2 option".to_owned());
        }
        let start = dev.cursor.progress().bytes;
        let more = dev
            .cursor
            .accept(msg.block2, msg.etag, msg.size2, msg.payload.len())
            .map_err(|e| e.to_string())?;
        let start = usize::try_from(start).map_err(|_| "position overflow")?;
        let end = start
            .saturating_add(dev.cursor.progress().block_size)
            .min(body.len());
        let expected = body.get(start..end).unwrap_or(&[]);
        if msg.payload != expected {
            let at = msg
                .payload
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(msg.payload.len().min(expected.len()));
            return Err(format!(
                "payload of {} bytes differs from the image's {} bytes at byte {}",
                msg.payload.len(),
                expected.len(),
                start + at
            ));
        }
        if more != (end < body.len()) {
            return Err(format!("M flag {more} at byte {end} of {}", body.len()));
        }
        if more {
            dev.cursor.next_block().map_err(|e| e.to_string())?;
        }
        Ok(more)
    }

    /// Counts a wrong answer, keeps the first one's description, and
    /// starts the device over: a device that got a wrong block cannot go
    /// on.
    fn mismatch(&mut self, d: usize, msg: &Message<'_>, problem: &str, now: Instant) {
        self.report.mismatches += 1;
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        if self.report.first_mismatch.is_none() {
            self.report.first_mismatch = Some(format!(
                "device {d} block {} (code {}, {} byte payload): {problem}",
                dev.asked_num,
                msg.class(),
                msg.payload.len()
            ));
        }
        dev.cursor = BlockCursor::new(self.config.szx);
        self.send_new(d, now);
    }

    /// Records a completed block and sends the device's next request.
    fn complete(&mut self, d: usize, now: Instant, len: usize, more: bool) {
        let downloads_wanted = self.config.downloads;
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        self.answered_seq = self.answered_seq.max(dev.seq);
        let micros = now.duration_since(dev.first_sent).as_micros();
        self.latencies_us
            .push(u32::try_from(micros).unwrap_or(u32::MAX));
        self.report.blocks += 1;
        self.report.bytes += len as u64;
        if !more {
            dev.downloads += 1;
            self.report.downloads += 1;
            dev.cursor = BlockCursor::new(self.config.szx);
            if downloads_wanted.is_some_and(|k| dev.downloads >= k) {
                dev.outstanding = false;
                self.active -= 1;
                return;
            }
        }
        self.send_new(d, now);
    }
}

/// What every request of a run shares, built once: a request is then only
/// a Message ID, a token and a Block2 option away, and costs no allocation.
#[derive(Debug)]
struct Requests {
    resource: Resource,
    /// OFFSET (little-endian, none when 0) or the legacy device payload.
    payload: Vec<u8>,
}

impl Requests {
    /// The requests of `config`'s route; `None` when a legacy PID does not
    /// make a device payload (the command line checks it first).
    fn new(config: &BenchConfig) -> Option<Requests> {
        let (resource, payload) = match &config.route {
            Route::Id(id) => {
                let offset = match config.offset {
                    0 => Vec::new(),
                    offset => offset.to_le_bytes().to_vec(),
                };
                (Resource::image(id), offset)
            }
            Route::Legacy {
                pid,
                fw_type,
                version,
            } => {
                let device = DeviceRequest {
                    pid,
                    fw_type: *fw_type,
                    version: *version,
                    offset: Some(config.offset),
                };
                let payload = DevicePayload::new(&device)?;
                (Resource::updates(), payload.as_bytes().to_vec())
            }
        };
        Some(Requests { resource, payload })
    }

    /// The Confirmable GET of `block`.
    fn get(&self, block: Block) -> Get<'_> {
        Get {
            resource: &self.resource,
            payload: &self.payload,
            block2: Some(block),
            size2: None,
            observe: None,
        }
    }
}

/// Value at `pct` percent of a sorted slice (nearest rank), 0 when empty.
fn percentile(sorted: &[u32], pct: usize) -> u32 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0;
    };
    sorted.get(last * pct / 100).copied().unwrap_or(0)
}

/// User plus system CPU time of this process in clock ticks, from
/// `/proc/self/stat` (Linux); `None` elsewhere.
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may contain spaces, in
    // parentheses: utime and stime are fields 14 and 15 of the line.
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn human_line(config: &BenchConfig, r: &Report) -> String {
    let target = if config.baseline {
        "baseline"
    } else {
        "server"
    };
    let ports = match config.ports {
        Some(p) => format!(" over {p} client ports"),
        None => String::new(),
    };
    format!(
        "{} devices{ports}, {} path, {target} {}: {} blocks in {:.2} s = {:.0} blocks/s ({:.1} MB/s), \
         latency p50 {} us p99 {} us, {} retransmissions, {} failed exchanges, {} mismatches",
        config.devices,
        config.route.name(),
        iot_ota::iface::display(config.server),
        r.blocks,
        r.secs,
        r.blocks_per_s(),
        r.bytes as f64 / r.secs.max(f64::MIN_POSITIVE) / 1e6,
        r.p50_us,
        r.p99_us,
        r.retransmissions,
        r.failures,
        r.mismatches
    )
}

fn result_line(config: &BenchConfig, r: &Report) -> String {
    let cpu = r
        .cpu_pct
        .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
    format!(
        "RESULT mode={} target={} devices={} ports={} block_size={} blocks={} secs={:.6} blocks_per_s={:.1} \
         p50_us={} p99_us={} max_us={} retransmissions={} failures={} mismatches={} stale={} downloads={} late_heads={} sweeps={} cpu_pct={cpu}",
        config.route.name(),
        if config.baseline { "baseline" } else { "server" },
        config.devices,
        config.ports.unwrap_or(config.devices),
        16usize << config.szx,
        r.blocks,
        r.secs,
        r.blocks_per_s(),
        r.p50_us,
        r.p99_us,
        r.max_us,
        r.retransmissions,
        r.failures,
        r.mismatches,
        r.stale,
        r.downloads,
        r.late_heads,
        r.sweeps,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_ota::catalog::Catalog;
    use iot_ota::hash::fnv1a32;
    use iot_ota::server::Server;
    use iot_ota::service::{Keys, Limits, Service};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const IMAGE_NAME: &str = "LOADGEN-TEST_1_0_1_APP.fmu";

    /// A deterministic image of `len` bytes.
    fn image(len: usize) -> Vec<u8> {
        let mut rng = XorShift::new(0x1234_5678);
        (0..len).map(|_| rng.next_u32() as u8).collect()
    }

    /// A real server on 127.0.0.1:0 in a thread, stopped when dropped.
    struct Running {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn spawn_server(bytes: Vec<u8>, block_size: usize) -> Running {
        let (catalog, skipped) = Catalog::from_files(vec![(IMAGE_NAME.to_owned(), bytes)]).unwrap();
        assert!(skipped.is_empty());
        let limits = Limits {
            max_block_size: block_size,
            ..Limits::default()
        };
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = Server::new(
            socket,
            Service::new(catalog, limits, Keys::from_bytes([7; 48])),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                server.serve_one();
            }
        });
        Running {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn id() -> [u8; 8] {
        parse_id(&format!("{:08x}", fnv1a32(IMAGE_NAME.as_bytes()))).unwrap()
    }

    fn config(server: SocketAddr, route: Route, body: Vec<u8>) -> BenchConfig {
        BenchConfig {
            server,
            devices: 4,
            ports: None,
            route,
            offset: 0,
            szx: 6,
            body,
            baseline: false,
            spin: false,
            duration: Duration::from_secs(10),
            downloads: Some(2),
            retransmission: Retransmission {
                ack_timeout: Duration::from_millis(250),
                ..Retransmission::default()
            },
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn downloads_whole_images_by_id_and_checks_every_byte() {
        let bytes = image(5000);
        let server = spawn_server(bytes.clone(), 1024);
        let report = run(&config(server.addr, Route::Id(id()), bytes)).unwrap();
        // 5000 bytes at 1 KiB: 5 blocks, 4 devices, 2 downloads each.
        assert_eq!(report.blocks, 40);
        assert_eq!(report.downloads, 8);
        assert_eq!(report.mismatches, 0, "{:?}", report.first_mismatch);
        assert_eq!(report.bytes, 4 * 2 * 5000);
    }

    #[test]
    fn legacy_path_with_offset_and_smaller_server_blocks() {
        let bytes = image(3000);
        // The server caps blocks at 256 bytes: the generator follows.
        let server = spawn_server(bytes.clone(), 256);
        let route = Route::Legacy {
            pid: b"LOADGEN-TEST".to_vec(),
            fw_type: 3,
            version: 0,
        };
        let mut c = config(server.addr, route, bytes.get(100..).unwrap().to_vec());
        c.offset = 100;
        let report = run(&c).unwrap();
        // 2900 bytes at 256: 12 blocks.
        assert_eq!(report.blocks, 4 * 2 * 12);
        assert_eq!(report.mismatches, 0, "{:?}", report.first_mismatch);
    }

    #[test]
    fn wrong_expected_bytes_are_mismatches() {
        let bytes = image(2048);
        let server = spawn_server(bytes.clone(), 1024);
        let mut wrong = bytes;
        wrong[1500] ^= 1;
        let mut c = config(server.addr, Route::Id(id()), wrong);
        c.devices = 1;
        c.downloads = None;
        c.duration = Duration::from_millis(100);
        let report = run(&c).unwrap();
        assert!(report.mismatches > 0);
        let first = report.first_mismatch.unwrap();
        assert!(first.contains("at byte 1500"), "{first}");
    }

    #[test]
    fn spreads_requests_over_a_pool_of_ports() {
        let bytes = image(4096);
        let server = spawn_server(bytes.clone(), 1024);
        let mut c = config(server.addr, Route::Id(id()), bytes);
        c.ports = Some(50);
        let report = run(&c).unwrap();
        assert_eq!(report.blocks, 4 * 2 * 4);
        assert_eq!(report.mismatches, 0, "{:?}", report.first_mismatch);
    }

    #[test]
    fn unknown_id_is_a_mismatch_not_a_hang() {
        let server = spawn_server(image(100), 1024);
        let mut c = config(server.addr, Route::Id(*b"00000000"), image(100));
        c.downloads = None;
        c.duration = Duration::from_millis(100);
        let report = run(&c).unwrap();
        assert_eq!(report.blocks, 0);
        assert!(report.mismatches > 0);
        assert!(report.first_mismatch.unwrap().contains("4.04"));
    }

    #[test]
    fn lost_requests_are_retransmitted() {
        // Nobody answers: every timeout is a retransmission, then a failure.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = config(silent.local_addr().unwrap(), Route::Id(id()), image(10));
        c.devices = 2;
        c.downloads = None;
        c.retransmission.ack_timeout = Duration::from_millis(5);
        c.duration = Duration::from_millis(400);
        let report = run(&c).unwrap();
        assert_eq!(report.blocks, 0);
        // 5 + 10 + 20 + 40 + 80 ms and the last wait: one failure per
        // device in 400 ms, 4 retransmissions before it.
        assert!(report.retransmissions >= 8, "{report:?}");
        assert!(report.failures >= 2, "{report:?}");
    }

    #[test]
    fn baseline_responder_completes_requests_without_checks() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let responder =
            std::thread::spawn(move || crate::baseline::serve_baseline(&socket, 1024, Some(30)));
        let mut c = config(addr, Route::Id(*b"00000000"), Vec::new());
        c.baseline = true;
        c.devices = 3;
        c.downloads = Some(10);
        c.szx = 6;
        // Baseline "downloads" are 256 blocks: stop by duration instead,
        // after the responder's 30 answers.
        c.downloads = None;
        c.duration = Duration::from_millis(300);
        let report = run(&c).unwrap();
        assert_eq!(responder.join().unwrap(), 30);
        assert_eq!(report.blocks, 30);
        assert_eq!(report.bytes, 30 * 1024);
        assert_eq!(report.mismatches, 0);
    }

    #[test]
    fn requests_parse_as_coap_with_the_device_payload() {
        let c = config(
            "127.0.0.1:5683".parse().unwrap(),
            Route::Legacy {
                pid: b"PID".to_vec(),
                fw_type: 3,
                version: 0x0102_0003,
            },
            Vec::new(),
        );
        let requests = Requests::new(&c).unwrap();
        let block = Block {
            num: 300,
            more: false,
            szx: 6,
        };
        let mut request = [0u8; REQUEST_MAX];
        let token = 7u32.to_be_bytes();
        let len = emit_get(&requests.get(block), 0xBEEF, &token, None, &mut request).unwrap();
        let packet = coap_lite::Packet::from_bytes(&request[..len]).unwrap();
        assert_eq!(packet.header.message_id, 0xBEEF);
        assert_eq!(packet.get_token(), &[0, 0, 0, 7]);
        assert_eq!(
            packet.payload,
            [3, b'P', b'I', b'D', 3, 3, 0, 2, 1, 0, 0, 0, 0]
        );
        let msg = Message::parse(&request[..len]).unwrap();
        assert_eq!(msg.path.as_slice(), [b"updates"]);
        assert_eq!(
            msg.block2,
            Some(Ok(Block {
                num: 300,
                more: false,
                szx: 6
            }))
        );
    }

    #[test]
    fn options_are_checked() {
        let parse = |list: &[&str]| {
            let m = bench_options().parse(args(list)).unwrap();
            bench_config(&m)
        };
        assert!(parse(&[]).unwrap_err().contains("missing SERVER"));
        assert!(parse(&["127.0.0.1:1"]).unwrap_err().contains("--id"));
        assert!(parse(&["127.0.0.1:1", "--id", "xyz"])
            .unwrap_err()
            .contains("8 hex"));
        assert!(parse(&["127.0.0.1:1", "--baseline", "-b", "100"])
            .unwrap_err()
            .contains("1024"));
        assert!(
            parse(&["127.0.0.1:1", "--baseline", "-n", "8", "--ports", "4"])
                .unwrap_err()
                .contains("at least as many")
        );
        assert!(parse(&[
            "127.0.0.1:1",
            "--baseline",
            "--path",
            "legacy",
            "--ports",
            "20"
        ])
        .unwrap_err()
        .contains("--path id"));
        let ok = parse(&[
            "127.0.0.1",
            "--baseline",
            "--path",
            "legacy",
            "--version",
            "1.2.3",
        ])
        .unwrap();
        assert_eq!(ok.server.port(), crate::coap::DEFAULT_PORT);
        assert!(matches!(
            ok.route,
            Route::Legacy {
                version: 0x0102_0003,
                fw_type: 3,
                ..
            }
        ));
        assert_eq!(bench_main(&args(&["--help"])), ExitCode::SUCCESS);
        assert_eq!(
            bench_main(&args(&["--bogus"])),
            ExitCode::from(crate::USAGE_EXIT)
        );
        assert_eq!(
            crate::baseline::baseline_main(&args(&["--size", "0"])),
            ExitCode::from(crate::USAGE_EXIT)
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentile(&[], 50), 0);
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
    }
}
