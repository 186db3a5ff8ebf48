//! Steady state allocates nothing per request (README, "Security and reliability"): a counting
//! global allocator wraps the system one, and after a warm-up, thousands of
//! requests of every kind go through `Service::handle`, then through the
//! real socket loop `Server::serve_one`, without a single allocation.
//!
//! Only allocations made on the thread that armed the counter are
//! counted, so the test harness and tests running in parallel do not
//! disturb the measurement. No logger is installed: log macros then stop
//! at their level check.

use coap_lite::{MessageClass, MessageType};
use iot_ota::catalog::Catalog;
use iot_ota::server::Server;
use iot_ota::service::{
    Action, Dropped, Limits, Outcome, Peer, Service, MAX_REPLY_LEN, MAX_REQUEST_LEN,
};
use iot_ota::wire::{Emitter, Message};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::block2_value as block;

mod support;

/// Allocation and reallocation calls made while armed.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Counting is on for this thread; const-initialised and without a
    /// destructor, so reading it never allocates.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

fn note() {
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is an atomic counter increment.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn arm(on: bool) {
    ARMED.with(|a| a.set(on));
}

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------

const BIG_LEN: usize = 4 * 1024 * 1024 + 100;
const CONTINUATION_CAPACITY: usize = 256;
const PEERS: u32 = 1000;

fn catalog() -> Catalog {
    let sizes = [
        ("SZ0_1_0_0_APP.fmu", 0usize),
        ("SZ1025_1_0_0_APP.fmu", 1025),
        ("MOTE_1_0_0_APP.fmu", 100),
        ("MOTE_1_1_31_APP.fmu", 3000),
        ("BIG_1_0_0_APP.fmu", BIG_LEN),
    ];
    Catalog::from_files(support::seeded_files(&sizes, 1))
        .unwrap()
        .0
}

fn peer(n: u32) -> Peer {
    let mut ip = [0u8; 16];
    ip[10] = 0xff;
    ip[11] = 0xff;
    ip[12..].copy_from_slice(&(0x0A00_0000 + n).to_be_bytes());
    Peer {
        ip,
        port: 5683,
        scope: 0,
    }
}

/// A request: CON unless `non`, options sorted by number.
fn request(non: bool, code: u8, mid: u16, options: &[(u16, &[u8])], payload: &[u8]) -> Vec<u8> {
    let mut sorted = options.to_vec();
    sorted.sort_by_key(|o| o.0);
    let mtype = if non {
        MessageType::NonConfirmable
    } else {
        MessageType::Confirmable
    };
    let mut buf = vec![0u8; 4096];
    let token = mid.to_be_bytes();
    let mut e = Emitter::new(&mut buf, mtype, MessageClass::from(code), mid, &token).unwrap();
    for (number, value) in sorted {
        e.option(number, value).unwrap();
    }
    let len = e.payload(payload).unwrap();
    buf.truncate(len);
    buf
}

/// A device payload of type 3 (APP).
fn device(pid: &[u8], version: u32, offset: Option<u32>) -> Vec<u8> {
    support::device_payload_bytes(pid, 3, version, offset)
}

const PATH: u16 = 11;
const QUERY: u16 = 15;
const ACCEPT: u16 = 17;
const BLOCK2: u16 = 23;
const SIZE2: u16 = 28;
const ECHO: u16 = 252;

/// One request of every kind for one peer (`mid` varies the bytes).
fn requests_of_every_kind(ids: &[String], mid: u16) -> Vec<Vec<u8>> {
    let up: &[u8] = b"updates";
    let core: [(u16, &[u8]); 2] = [(PATH, b".well-known"), (PATH, b"core")];
    // A CON GET of /updates with a device payload (README, "Requests and answers").
    let legacy = |payload: &[u8]| request(false, 1, mid, &[(PATH, up)], payload);
    let mut v = Vec::new();
    for id in ids {
        let id = id.as_bytes();
        v.push(request(false, 1, mid, &[(PATH, up), (PATH, id)], &[]));
        v.push(request(
            true,
            1,
            mid,
            &[(PATH, up), (PATH, id)],
            &7u32.to_le_bytes(),
        ));
        for (num, szx) in [(1u32, 6u8), (4096, 6), (3, 0)] {
            let b = block(num, szx);
            v.push(request(
                false,
                1,
                mid,
                &[(PATH, up), (PATH, id), (BLOCK2, &b), (SIZE2, &[])],
                &[],
            ));
        }
    }
    // Legacy, then a payload-less continuation from the same peer.
    v.push(legacy(&device(b"MOTE", 0, Some(10))));
    v.push(request(
        false,
        1,
        mid,
        &[(PATH, up), (BLOCK2, &block(2, 6))],
        &[],
    ));
    v.push(legacy(&device(b"BIG", 0, Some(0))));
    v.push(request(
        true,
        1,
        mid,
        &[(PATH, up), (BLOCK2, &block(4096, 6))],
        &[],
    ));
    // Lookup, query form, no update (RST), wrong lengths (4.00).
    v.push(legacy(&device(b"MOTE", 0, None)));
    v.push(request(
        false,
        1,
        mid,
        &[
            (PATH, up),
            (QUERY, b"pid=MOTE"),
            (QUERY, b"type=APP"),
            (QUERY, b"version=1.0.0"),
        ],
        &[],
    ));
    v.push(request(
        false,
        1,
        mid,
        &[(PATH, up), (QUERY, b"pid=MOTE"), (QUERY, b"type=APP")],
        &[],
    ));
    v.push(legacy(&device(b"MOTE", u32::MAX, Some(0))));
    v.push(legacy(&device(b"MOTE", 0, Some(5000))));
    v.push(legacy(&[4, b'M', b'O', b'T', b'E', 3, 0]));
    v.push(legacy(&[]));
    // Discovery, whole and filtered, block-wise.
    v.push(request(false, 1, mid, &core, &[]));
    for q in [&b"rt=fw.image"[..], b"title=MOTE*", b"href=/updates"] {
        for num in [0u32, 2] {
            let b = block(num, 0);
            v.push(request(
                true,
                1,
                mid,
                &[core[0], core[1], (QUERY, q), (BLOCK2, &b)],
                &[],
            ));
        }
    }
    // Errors: 4.04, 4.02, 4.05, 4.06, SZX 7, NUM past the end.
    v.push(request(false, 1, mid, &[(PATH, b"nope")], &[]));
    v.push(request(false, 1, mid, &[(PATH, up), (2051, b"x")], &[]));
    v.push(request(false, 2, mid, &[(PATH, up)], &[]));
    v.push(request(
        false,
        1,
        mid,
        &[(PATH, up), (PATH, ids[0].as_bytes()), (ACCEPT, &[0])],
        &[],
    ));
    v.push(request(
        false,
        1,
        mid,
        &[(PATH, up), (PATH, ids[0].as_bytes()), (BLOCK2, &[0x07])],
        &[],
    ));
    v.push(request(
        false,
        1,
        mid,
        &[
            (PATH, up),
            (PATH, ids[0].as_bytes()),
            (BLOCK2, &block(9, 6)),
        ],
        &[],
    ));
    // Message layer: ping (RST), malformed CON (RST), malformed NON and
    // ACK (dropped), a response code, an oversized request (4.13).
    v.push(vec![0x40, 0x00, (mid >> 8) as u8, mid as u8]);
    v.push(vec![0x40, 0x01, 0, 1, 0xB1, b'x', 0xFF]);
    v.push(vec![0x50, 0x01, 0, 1, 0xF1, 0x00]);
    v.push(vec![0x60, 0x00, 0, 1]);
    v.push(vec![0x40, 0x45, 0, 1]);
    let mut oversized = request(false, 1, mid, &[(PATH, up)], &[]);
    oversized.resize(MAX_REQUEST_LEN + 1, 0x11);
    v.push(oversized);
    v
}

/// What the replies were, counted without allocating.
#[derive(Default, Debug)]
struct Tally {
    blocks: u64,
    content: u64,
    errors: u64,
    echo: u64,
    rate_limited: u64,
    resets: u64,
    dropped: u64,
    dropped_rate: u64,
}

impl Tally {
    fn add(&mut self, action: &Action<'_>) {
        match action {
            Action::Reply { outcome, .. } => match outcome {
                Outcome::Block(_) => self.blocks += 1,
                Outcome::Content | Outcome::File { .. } => self.content += 1,
                Outcome::Error(_) => self.errors += 1,
                Outcome::EchoChallenge => self.echo += 1,
                Outcome::RateLimited => self.rate_limited += 1,
                Outcome::Reset(_) => self.resets += 1,
            },
            Action::Drop(Dropped::RateLimited) => self.dropped_rate += 1,
            Action::Drop(_) => self.dropped += 1,
        }
    }
}

/// Runs `plan` through `svc` armed; returns the index of the first
/// request that allocated, if any.
fn run_armed(
    svc: &mut Service,
    plan: &[(Peer, Vec<u8>)],
    now: &mut u64,
    step_ms: u64,
    out: &mut [u8],
    tally: &mut Tally,
) -> Option<usize> {
    let mut first_offender = None;
    arm(true);
    for (i, (peer, datagram)) in plan.iter().enumerate() {
        let before = allocations();
        let action = svc.handle(*peer, *now, datagram, out);
        tally.add(&action);
        if first_offender.is_none() && allocations() != before {
            first_offender = Some(i);
        }
        *now += step_ms;
    }
    arm(false);
    first_offender
}

fn describe(plan: &[(Peer, Vec<u8>)], i: usize) -> String {
    let (peer, datagram) = &plan[i];
    format!(
        "request #{i} from {peer:?}: {:?} {datagram:02x?}",
        Message::parse(datagram).map(|m| m.class())
    )
}

fn ids(svc: &Service) -> Vec<String> {
    svc.catalog()
        .images()
        .iter()
        .map(|i| i.id_str().to_owned())
        .collect()
}

#[test]
fn service_handle_allocates_nothing_in_steady_state() {
    let limits = Limits {
        continuation_capacity: CONTINUATION_CAPACITY,
        ..Limits::default()
    };
    let mut svc = Service::new(catalog(), limits, support::TEST_KEYS);
    let ids = ids(&svc);
    let mut plan: Vec<(Peer, Vec<u8>)> = Vec::new();
    for n in 0..PEERS {
        // Every peer: a legacy request, its continuation, and every other
        // kind in turn, so the continuation table (256) keeps evicting.
        let kinds = requests_of_every_kind(&ids, n as u16);
        plan.push((peer(n), kinds[ids.len() * 5].clone()));
        plan.push((peer(n), kinds[ids.len() * 5 + 1].clone()));
        plan.push((peer(n), kinds[n as usize % kinds.len()].clone()));
    }
    for datagram in requests_of_every_kind(&ids, 0xFFFF) {
        plan.push((peer(0), datagram));
    }
    // A continuation from a peer evicted long ago: 4.00.
    plan.push((
        peer(1),
        request(
            false,
            1,
            1,
            &[(PATH, b"updates"), (BLOCK2, &block(2, 6))],
            &[],
        ),
    ));

    let mut out = vec![0u8; MAX_REPLY_LEN];
    let mut now = 1_000_000;
    let mut warm = Tally::default();
    // Warm-up, not counted: whatever is lazily set up happens here.
    for (peer, datagram) in &plan {
        let action = svc.handle(*peer, now, datagram, &mut out);
        warm.add(&action);
        now += 1;
    }
    let mut tally = Tally::default();
    let before = allocations();
    for round in 0..3 {
        if let Some(i) = run_armed(&mut svc, &plan, &mut now, 1, &mut out, &mut tally) {
            panic!("round {round}: allocation in {}", describe(&plan, i));
        }
    }
    assert_eq!(
        allocations(),
        before,
        "allocations during {} requests",
        3 * plan.len()
    );
    assert!(svc.continuation_count() <= CONTINUATION_CAPACITY);
    assert!(
        tally.blocks > 1000 && tally.content > 100 && tally.errors > 100,
        "{tally:?}"
    );
    assert!(tally.resets > 0 && tally.dropped > 0, "{tally:?}");
}

#[test]
fn echo_and_rate_limited_requests_allocate_nothing() {
    let limits = Limits {
        continuation_capacity: CONTINUATION_CAPACITY,
        rate_limit: Some(2),
        rate_table_capacity: 128,
        echo: true,
        ..Limits::default()
    };
    let mut svc = Service::new(catalog(), limits, support::TEST_KEYS);
    let ids = ids(&svc);
    let mut out = vec![0u8; MAX_REPLY_LEN];
    // Window-aligned start: Echo values stay valid for the whole test.
    let start = 600_000_000u64;
    let big_block = request(
        false,
        1,
        1,
        &[(PATH, b"updates"), (PATH, ids[0].as_bytes())],
        &[],
    );
    let mut plan: Vec<(Peer, Vec<u8>)> = Vec::new();
    for n in 0..PEERS {
        let p = peer(n);
        // Fetch this peer's Echo value (not measured).
        let echo = match svc.handle(p, start, &big_block, &mut out) {
            Action::Reply {
                len,
                outcome: Outcome::EchoChallenge,
            } => Message::parse(&out[..len]).unwrap().echo.unwrap().to_vec(),
            other => panic!("expected a challenge, got {other:?}"),
        };
        let with_echo = request(
            false,
            1,
            2,
            &[(PATH, b"updates"), (PATH, ids[0].as_bytes()), (ECHO, &echo)],
            &[],
        );
        let wrong_echo = request(
            false,
            1,
            3,
            &[
                (PATH, b"updates"),
                (PATH, ids[0].as_bytes()),
                (ECHO, &[0; 8]),
            ],
            &[],
        );
        let tiny = vec![0x48, 0x01, 0, 4, 1, 2, 3, 4, 5, 6, 7, 8]; // 4.29 would be larger: dropped
                                                                   // Two requests a second are served (a challenge, then the
                                                                   // verified block); the rest of the second is 4.29 or dropped.
        let challenged = if n % 2 == 0 {
            big_block.clone()
        } else {
            wrong_echo
        };
        let nope = request(false, 1, 5, &[(PATH, b"nope")], &[]);
        for datagram in [challenged, with_echo, nope, tiny] {
            plan.push((p, datagram));
        }
    }
    let mut now = start + 1000;
    let mut warm = Tally::default();
    for (peer, datagram) in &plan {
        let action = svc.handle(*peer, now, datagram, &mut out);
        warm.add(&action);
        now += 1;
    }
    let mut tally = Tally::default();
    let before = allocations();
    for round in 0..3 {
        if let Some(i) = run_armed(&mut svc, &plan, &mut now, 1, &mut out, &mut tally) {
            panic!("round {round}: allocation in {}", describe(&plan, i));
        }
    }
    assert_eq!(allocations(), before);
    assert!(now < start + 60_000, "Echo values stayed in their window");
    assert!(svc.rate_table_len() <= 128);
    assert!(tally.echo > 100 && tally.blocks > 100, "{tally:?}");
    assert!(
        tally.rate_limited > 100 && tally.dropped_rate > 100,
        "{tally:?}"
    );
}

#[test]
fn server_serve_one_allocates_nothing_in_steady_state() {
    let timeout = Some(Duration::from_secs(5));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(timeout).unwrap();
    let limits = Limits {
        continuation_capacity: 4,
        ..Limits::default()
    };
    let mut server = Server::new(socket, Service::new(catalog(), limits, support::TEST_KEYS));
    let server_addr: SocketAddr = server.local_addr().unwrap();
    let ids = ids(server.service());
    // Eight clients, so the 4-entry continuation table keeps evicting.
    let clients: Vec<UdpSocket> = (0..8)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(timeout).unwrap();
            c
        })
        .collect();
    let plan: Vec<(usize, Vec<u8>)> = (0..clients.len())
        .flat_map(|c| {
            requests_of_every_kind(&ids, c as u16)
                .into_iter()
                .map(move |d| (c, d))
        })
        .collect();
    let mut reply = vec![0u8; 2048];
    let mut exchange = |server: &mut Server, c: usize, datagram: &[u8], armed: bool| -> bool {
        clients[c].send_to(datagram, server_addr).unwrap();
        let sent_before = server.stats().sent;
        let counted_before = allocations();
        arm(armed);
        server.serve_one();
        arm(false);
        let allocated = allocations() != counted_before;
        if server.stats().sent > sent_before {
            let (len, from) = clients[c].recv_from(&mut reply).expect("reply arrives");
            assert_eq!(from, server_addr);
            assert!(Message::parse(&reply[..len]).is_ok());
        }
        allocated
    };
    for (c, datagram) in &plan {
        exchange(&mut server, *c, datagram, false);
    }
    let before = allocations();
    for round in 0..3 {
        for (i, (c, datagram)) in plan.iter().enumerate() {
            if exchange(&mut server, *c, datagram, true) {
                panic!(
                    "round {round}: serve_one allocated for request #{i} from client {c}: {datagram:02x?}"
                );
            }
        }
    }
    assert_eq!(allocations(), before);
    let stats = server.stats();
    assert_eq!(stats.received, 4 * plan.len() as u64);
    assert!(
        stats.blocks > 0 && stats.errors > 0 && stats.resets > 0 && stats.dropped_malformed > 0
    );
    assert_eq!((stats.receive_errors, stats.send_errors), (0, 0));
}

/// The server as `iot-ota-server` runs with the shipped defaults (a
/// watched directory rescanned every second, `--settle 200`, default
/// limits): later blocks by id (the fast path, its last blocks, a
/// duplicate, Size2), a NON block, legacy blocks with the device payload,
/// a body from an OFFSET and its payload-less continuation go through
/// `serve_one` without an allocation. A timed rescan reads the directory
/// and may allocate: a datagram whose turn ran one is not held to it (the
/// test waits for the timer once, so there are one to three).
#[test]
fn server_with_the_default_options_allocates_nothing_per_block() {
    let dir = support::TempDir::new("no-alloc-defaults");
    let images = support::write_images(&dir, &[("MOTE", 5000), ("BIG", 70_000)]);
    let catalog = Catalog::load(dir.path()).expect("catalog").catalog;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut server = Server::new(
        socket,
        Service::new(catalog, Limits::default(), support::TEST_KEYS),
    );
    server
        .watch(dir.path().to_path_buf(), 1000, 200)
        .expect("watch");
    let server_addr: SocketAddr = server.local_addr().unwrap();
    let clients: Vec<UdpSocket> = (0..5)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .collect();
    let up: &[u8] = b"updates";
    let (mote, big) = (images[0].id.as_bytes(), images[1].id.as_bytes());
    let by_id = |mid: u16, id: &[u8], num: u32, extra: &[(u16, &[u8])]| {
        let b = block(num, 6);
        let mut options = vec![(PATH, up), (PATH, id), (BLOCK2, &b[..])];
        options.extend_from_slice(extra);
        request(false, 1, mid, &options, &[])
    };
    let mut per_client = Vec::new();
    for num in 1..5 {
        per_client.push(by_id(num as u16, mote, num, &[]));
    }
    for num in [1, 2, 3, 30, 68] {
        per_client.push(by_id(100 + num as u16, big, num, &[]));
    }
    per_client.push(by_id(103, big, 3, &[])); // a duplicate
    per_client.push(by_id(200, big, 5, &[(SIZE2, &[])]));
    let b = block(2, 6);
    per_client.push(request(
        true,
        1,
        201,
        &[(PATH, up), (PATH, big), (BLOCK2, &b)],
        &[],
    ));
    for num in [1u32, 2] {
        let b = block(num, 6);
        let payload = device(b"MOTE", 0, Some(0));
        per_client.push(request(
            false,
            1,
            300 + num as u16,
            &[(PATH, up), (BLOCK2, &b)],
            &payload,
        ));
    }
    // A body from an OFFSET and its payload-less continuation, from a
    // client of their own (its later payload-less blocks of the image
    // continue that body).
    let b1 = block(1, 6);
    let b2 = block(2, 6);
    let offset = 1000u32.to_le_bytes();
    let offset_flow = [
        request(
            false,
            1,
            400,
            &[(PATH, up), (PATH, big), (BLOCK2, &b1)],
            &offset,
        ),
        request(
            false,
            1,
            401,
            &[(PATH, up), (PATH, big), (BLOCK2, &b2)],
            &[],
        ),
    ];
    let last = clients.len() - 1;
    let plan: Vec<(usize, &Vec<u8>)> = (0..last)
        .flat_map(|c| per_client.iter().map(move |d| (c, d)))
        .chain(offset_flow.iter().map(|d| (last, d)))
        .collect();

    let mut reply = vec![0u8; 2048];
    // Sends one datagram and serves it; whether serving it allocated, and
    // whether a rescan ran in its turn.
    let mut exchange = |server: &mut Server, c: usize, datagram: &[u8], armed: bool| {
        clients[c].send_to(datagram, server_addr).unwrap();
        let before = server.stats();
        let counted_before = allocations();
        arm(armed);
        server.serve_one();
        arm(false);
        let after = server.stats();
        assert_eq!(after.sent, before.sent + 1, "no answer to {datagram:02x?}");
        let (len, _) = clients[c].recv_from(&mut reply).expect("reply arrives");
        let answer = Message::parse(&reply[..len]).expect("reply parses");
        assert_eq!(answer.code, 0x45, "2.05 for {datagram:02x?}");
        (
            allocations() != counted_before,
            after.rescans != before.rescans,
        )
    };
    // Warm-up: each client's whole downloads first (block 0 checks the
    // file on disk, which builds its path), then the plan.
    for (c, _) in clients.iter().enumerate() {
        for (id, blocks) in [(mote, 5u32), (big, 69)] {
            for num in 0..blocks {
                exchange(&mut server, c, &by_id(num as u16, id, num, &[]), false);
            }
        }
    }
    for &(c, datagram) in &plan {
        exchange(&mut server, c, datagram, false);
    }
    let (mut checked, mut rescanned) = (0, 0);
    for round in 0..5 {
        if round == 3 {
            // Past the rescan timer: the next datagram's turn rescans, and
            // the ones after it are held to the rule again.
            std::thread::sleep(Duration::from_millis(1100));
        }
        for (i, &(c, datagram)) in plan.iter().enumerate() {
            match exchange(&mut server, c, datagram, true) {
                (_, true) => rescanned += 1,
                (true, false) => panic!(
                    "round {round}: serve_one allocated for request #{i} from client {c}: {datagram:02x?}"
                ),
                (false, false) => checked += 1,
            }
        }
    }
    assert!((1..=3).contains(&rescanned), "{rescanned} rescans");
    assert!(checked >= 5 * plan.len() - 3);
    let stats = server.stats();
    assert_eq!((stats.receive_errors, stats.send_errors), (0, 0));
}

#[test]
fn the_counter_sees_allocations() {
    // The instrument works: an armed allocation is counted.
    let before = allocations();
    arm(true);
    let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(64));
    arm(false);
    drop(v);
    assert_eq!(allocations(), before + 1);
}

#[test]
fn file_tree_requests_allocate_nothing() {
    let dir = support::TempDir::new("no-alloc-tree");
    for (rel, len) in [
        ("fw/app/board/riot.suit.latest.bin", 300),
        ("fw/app/board/slot0.5.bin", 5000),
        ("top", 1),
    ] {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(path, support::image_bytes(len, len as u32)).expect("write");
    }
    let far = std::time::SystemTime::now() + Duration::from_secs(3600);
    let tree = iot_ota::tree::FileTree::load(dir.path(), far)
        .expect("tree")
        .next
        .expect("a tree");
    let mut svc = Service::new(catalog(), Limits::default(), support::TEST_KEYS);
    svc.replace_tree(Some(tree));
    let paths: [&[&[u8]]; 9] = [
        &[b"fw", b"app", b"board", b"slot0.5.bin"],
        &[b"fw", b"app", b"board", b"riot.suit.latest.bin"],
        &[b"fw", b"app", b"board", b""],
        &[],
        &[b"fw", b"app"],
        &[b"..", b"etc", b"passwd"],
        &[b"%2e%2e", b"top"],
        &[b"missing"],
        &[b".well-known", b"core"],
    ];
    let mut plan = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        for num in 0..4u32 {
            let block = block(num, 2);
            let mut options: Vec<(u16, &[u8])> = path.iter().map(|s| (PATH, *s)).collect();
            options.push((BLOCK2, &block));
            let mid = (i * 16 + num as usize) as u16;
            plan.push((peer(i as u32), request(false, 1, mid, &options, &[])));
        }
    }
    let mut out = vec![0u8; MAX_REPLY_LEN];
    let mut now = 1_000_000;
    let mut warm = Tally::default();
    for (peer, datagram) in &plan {
        warm.add(&svc.handle(*peer, now, datagram, &mut out));
        now += 1;
    }
    let mut tally = Tally::default();
    for round in 0..3 {
        if let Some(i) = run_armed(&mut svc, &plan, &mut now, 1, &mut out, &mut tally) {
            panic!("round {round}: allocation in {}", describe(&plan, i));
        }
    }
    assert!(tally.content > 30 && tally.errors > 30, "{tally:?}");
}

/// What anyone can send to the coaps port before it proved its address
/// (RFC 6347 §4.2.1): ClientHellos without a cookie or with a forged or
/// stale one, from ever new addresses and ports, and records for peers
/// without a session. Each is answered with a HelloVerifyRequest or
/// dropped, and none allocates once the front's buffers are warm.
#[cfg(feature = "dtls")]
#[test]
fn spoofed_client_hellos_and_strangers_records_allocate_nothing() {
    use iot_ota::dtls::{Front, Handled, Limits as DtlsLimits, PskTable};
    use std::net::SocketAddr;
    use std::time::Instant;

    let keys = PskTable::parse("dev1:dev1-secret-key\n").unwrap();
    let mut n = 0u8;
    let entropy = Box::new(move |secret: &mut [u8; 32]| {
        n = n.wrapping_add(1);
        *secret = [n; 32];
    });
    let mut front = Front::new(keys, DtlsLimits::default(), entropy, Instant::now());
    let hello = |random: u32, cookie: &[u8]| -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[0x11; 28]);
        body.extend_from_slice(&random.to_be_bytes());
        body.push(0);
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0, 0, 4, 0, 0x17, 0, 0]);
        let len = (body.len() as u32).to_be_bytes();
        let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
        record.extend_from_slice(&((body.len() + 12) as u16).to_be_bytes());
        record.extend_from_slice(&[1, len[1], len[2], len[3], 0, 0, 0, 0, 0]);
        record.extend_from_slice(&[len[1], len[2], len[3]]);
        record.extend_from_slice(&body);
        record
    };
    let plan: Vec<(SocketAddr, Vec<u8>)> = (0..3000u32)
        .map(|i| {
            let from = SocketAddr::from(([198, 51, (i >> 8) as u8, i as u8], 1024 + i as u16));
            let datagram = match i % 3 {
                0 => hello(i, &[]),
                1 => hello(i, &[i as u8; 32]),
                _ => vec![
                    23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,
                ],
            };
            (from, datagram)
        })
        .collect();
    let mut answered = 0usize;
    let round = |front: &mut Front, now_ms: u64, answered: &mut usize| {
        for (from, datagram) in &plan {
            let handled = front.receive(*from, now_ms, datagram);
            assert!(matches!(handled, Handled::HelloVerify | Handled::Ignored));
            front.drain_outgoing(|to, record| {
                assert_eq!(to, *from);
                assert!(record.len() <= datagram.len());
                *answered += 1;
            });
        }
    };
    round(&mut front, 1, &mut answered);
    arm(true);
    let before = allocations();
    // Across a rotation of the cookie secret too.
    for now_ms in [2, 40_000, 95_000] {
        round(&mut front, now_ms, &mut answered);
    }
    let made = allocations() - before;
    arm(false);
    assert_eq!(made, 0, "{made} allocations for spoofed datagrams");
    assert_eq!(front.session_count(), 0);
    assert_eq!(answered, 4 * 2000, "every hello is challenged");
}
