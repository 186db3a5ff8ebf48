//! The generator's loop: N simulated devices on one thread, their
//! requests, the reply matching and the byte-for-byte checks.
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

use super::options::{BenchConfig, Route};
use super::report::{percentile, process_cpu_ticks, Report, USER_HZ};
use crate::client::bind_ephemeral;
use crate::coap::{
    classify_reply, emit_get, BlockCursor, DevicePayload, Get, MessageIds, Reply, Resource,
    XorShift, TOKEN_LEN,
};
use coap_lite::{MessageClass, MessageType, ResponseType};
use iot_ota::firmware::DeviceRequest;
use iot_ota::wire::{Block, Message};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

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
pub(crate) fn run(config: &BenchConfig) -> io::Result<Report> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::options::parse_id;
    use crate::coap::Retransmission;
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
        assert_eq!(msg.path.iter().collect::<Vec<_>>(), [b"updates"]);
        assert_eq!(
            msg.block2,
            Some(Ok(Block {
                num: 300,
                more: false,
                szx: 6
            }))
        );
    }
}
