//! A deterministic, dependency-free mutation fuzzer: valid
//! requests of every form of README's protocol section plus random bytes, mutated by
//! bit flips, byte insertion and deletion, truncation, option length and
//! delta nibble tweaks and splicing, go through `wire::Message::parse` and
//! through `Service::handle` with the Echo and rate limits off and on.
//!
//! Asserted for every input: no panic; every reply fits MAX_REPLY_LEN and
//! parses with both `coap_lite::Packet::from_bytes` and
//! `wire::Message::parse`; the message layer of RFC 7252 holds (ACK with
//! the request's MID and token, nothing for ACK/RST/foreign versions);
//! error replies carry a UTF-8 diagnostic; and every 2.05 block of an
//! image carries exactly the image bytes at the position its Block2 option
//! names. Each service has a twin that gets every datagram through the
//! fast path first (`Service::handle_block`, then `Service::handle` when it
//! declines, and `Service::note_block` after a last block, as the server
//! does): the twins' answers and notifications must be byte for byte the
//! same, `/status` (asked from loopback) included, so their fleets too.
//! Reports in both forms and `/status` in each format are among the seeds.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};
use iot_ota::catalog::Catalog;
use iot_ota::service::{
    Action, BlockSent, Held, Limits, Outcome, Peer, Service, MAX_REPLY_LEN, MAX_REQUEST_LEN,
};
use iot_ota::wire::{Block, Emitter, Message, ParseError};
use std::time::Instant;
use support::{block2_value as block, device_payload_bytes as device};

mod support;

const INPUTS: usize = 100_000;
const BIG_LEN: usize = 4 * 1024 * 1024 + 100;

/// The kit's xorshift32, two draws at a time: deterministic, good enough
/// to pick mutations.
struct Rng(support::XorShift);

impl Rng {
    fn next(&mut self) -> u64 {
        u64::from(self.0.next()) << 32 | u64::from(self.0.next())
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn files() -> Vec<(String, Vec<u8>)> {
    let sizes = [
        ("SZ0_1_0_0_APP.fmu", 0usize),
        ("SZ1_1_0_0_APP.fmu", 1),
        ("SZ1023_1_0_0_APP.fmu", 1023),
        ("SZ1024_1_0_0_APP.fmu", 1024),
        ("SZ1025_1_0_0_APP.fmu", 1025),
        ("MOTE_1_0_0_APP.fmu", 100),
        ("MOTE_1_1_31_APP.fmu", 3000),
        ("MOTE_2_0_0_7.fmu", 50),
        ("BIG_1_0_0_APP.fmu", BIG_LEN),
    ];
    support::seeded_files(&sizes, 7)
}

/// One request written with our emitter (options in any order: sorted).
fn request(
    mtype: u8,
    code: u8,
    mid: u16,
    token: &[u8],
    options: &[(u16, &[u8])],
    payload: &[u8],
) -> Vec<u8> {
    let mut sorted = options.to_vec();
    sorted.sort_by_key(|o| o.0);
    let mtype = match mtype {
        0 => MessageType::Confirmable,
        1 => MessageType::NonConfirmable,
        2 => MessageType::Acknowledgement,
        _ => MessageType::Reset,
    };
    let mut buf = vec![0u8; 4096];
    let mut e = Emitter::new(&mut buf, mtype, MessageClass::from(code), mid, token).unwrap();
    for (number, value) in sorted {
        e.option(number, value).unwrap();
    }
    let len = e.payload(payload).unwrap();
    buf.truncate(len);
    buf
}

/// Valid requests of every form of README's protocol section.
fn seeds(ids: &[String]) -> Vec<Vec<u8>> {
    const PATH: u16 = 11;
    const QUERY: u16 = 15;
    const BLOCK2: u16 = 23;
    const CONTENT_FORMAT: u16 = 12;
    const ACCEPT: u16 = 17;
    let updates: &[u8] = b"updates";
    let mut seeds = Vec::new();
    let tok: &[u8] = &[0xA1, 0xB2, 0xC3];
    for (i, id) in ids.iter().enumerate() {
        let id = id.as_bytes();
        let mid = i as u16;
        seeds.push(request(0, 1, mid, tok, &[(PATH, updates), (PATH, id)], &[]));
        seeds.push(request(
            1,
            1,
            mid,
            tok,
            &[(PATH, updates), (PATH, id)],
            &1000u32.to_le_bytes(),
        ));
        for (num, szx) in [(1u32, 6u8), (4095, 6), (4096, 6), (262_150, 0), (3, 2)] {
            let b = block(num, szx);
            seeds.push(request(
                0,
                1,
                mid,
                tok,
                &[(PATH, updates), (PATH, id), (BLOCK2, &b), (28, &[])],
                &[],
            ));
        }
    }
    for (pid, fw_type, version, offset) in [
        (&b"MOTE"[..], 3u8, 0u32, None),
        (b"MOTE", 3, 0x0101_001F, None),
        (b"MOTE", 7, 0, None),
        (b"MOTE", 3, 0, Some(0)),
        (b"MOTE", 3, 0, Some(1500)),
        (b"MOTE", 3, 0, Some(3000)),
        (b"MOTE", 3, 0, Some(3001)),
        (b"BIG", 3, 0, Some(0)),
        (b"SZ1025", 3, 0, Some(1)),
        (b"NONE", 3, 0, Some(0)),
    ] {
        let payload = device(pid, fw_type, version, offset);
        seeds.push(request(0, 1, 9, tok, &[(PATH, updates)], &payload));
        let b = block(2, 4);
        seeds.push(request(
            1,
            1,
            9,
            &[],
            &[(PATH, updates), (BLOCK2, &b)],
            &payload,
        ));
    }
    for num in [1u32, 2, 4096] {
        let b = block(num, 6);
        seeds.push(request(
            0,
            1,
            10,
            &[7; 8],
            &[(PATH, updates), (BLOCK2, &b)],
            &[],
        ));
    }
    for q in [
        &[&b"pid=MOTE"[..], b"type=APP", b"version=1.0.0"][..],
        &[b"pid=MOTE", b"type=7", b"version=0x00000000"],
        &[b"pid=BIG", b"type=3"],
    ] {
        let mut options = vec![(PATH, updates)];
        options.extend(q.iter().map(|v| (QUERY, *v)));
        seeds.push(request(0, 1, 11, tok, &options, &[]));
    }
    let core: [(u16, &[u8]); 2] = [(PATH, b".well-known"), (PATH, b"core")];
    seeds.push(request(0, 1, 12, tok, &core, &[]));
    for q in [
        &b"rt=fw.image"[..],
        b"title=MOTE*",
        b"href=/updates",
        b"rt=*",
    ] {
        for num in [0u32, 3] {
            let b = block(num, 0);
            let options = [core[0], core[1], (QUERY, q), (BLOCK2, &b)];
            seeds.push(request(1, 1, 13, tok, &options, &[]));
        }
    }
    // Observe registrations (option 6) and deregistrations, on every
    // observable resource; RSTs and ACKs that may name a notification.
    const OBSERVE: u16 = 6;
    for value in [&[][..], &[1]] {
        seeds.push(request(
            1,
            1,
            14,
            tok,
            &[core[0], core[1], (OBSERVE, value)],
            &[],
        ));
        let lookup = [
            (PATH, updates),
            (OBSERVE, value),
            (QUERY, &b"pid=MOTE"[..]),
            (QUERY, b"type=APP"),
            (QUERY, b"version=1.1.31"),
        ];
        seeds.push(request(0, 1, 15, &[], &lookup, &[]));
        let payload = device(b"MOTE", 3, 0, None);
        seeds.push(request(
            0,
            1,
            16,
            &[9],
            &[(PATH, updates), (OBSERVE, value)],
            &payload,
        ));
    }
    // The fleet's routes: reports in both forms, /status in each format.
    let report: [(u16, &[u8]); 2] = [(PATH, updates), (PATH, b"report")];
    for q in [
        &[&b"ep=d1"[..], b"state=1"][..],
        &[
            b"ep=d1",
            b"pid=MOTE",
            b"type=APP",
            b"target=1.1.31",
            b"result=1",
        ],
        &[b"result=8", b"version=1.0.0"],
    ] {
        let mut options = report.to_vec();
        options.extend(q.iter().map(|v| (QUERY, *v)));
        seeds.push(request(0, 2, 17, tok, &options, &[]));
    }
    for payload in cbor_reports() {
        let mut options = report.to_vec();
        options.push((CONTENT_FORMAT, &[60]));
        seeds.push(request(0, 2, 18, tok, &options, &payload));
    }
    for accept in [&[][..], &[50], &[60], &[41]] {
        for q in [None, Some(&b"ep=d1"[..]), Some(b"ep=nobody")] {
            let mut options = vec![(PATH, &b"status"[..]), (ACCEPT, accept)];
            options.extend(q.map(|q| (QUERY, q)));
            seeds.push(request(0, 1, 19, tok, &options, &[]));
        }
    }
    let b = block(1, 0);
    seeds.push(request(
        0,
        1,
        20,
        tok,
        &[(PATH, b"status"), (BLOCK2, &b)],
        &[],
    ));
    for mid in [0u16, 1, 0x1234] {
        let [hi, lo] = mid.to_be_bytes();
        seeds.push(vec![0x70, 0x00, hi, lo]); // RST
        seeds.push(vec![0x60, 0x00, hi, lo]); // empty ACK
    }
    // Message layer and error cases.
    seeds.push(vec![0x40, 0x00, 0x12, 0x34]); // ping
    seeds.push(vec![0x60, 0x00, 0x12, 0x34]); // empty ACK
    seeds.push(request(0, 0x45, 1, tok, &[(12, &[42])], b"payload"));
    seeds.push(request(0, 2, 1, tok, &[(PATH, updates)], b"post"));
    seeds.push(request(
        0,
        1,
        1,
        tok,
        &[(PATH, updates), (2051, b"crit")],
        &[],
    ));
    seeds.push(request(0, 1, 1, tok, &[(PATH, updates), (17, &[0])], &[]));
    seeds.push(request(0, 1, 1, tok, &[(PATH, b"nope")], &[]));
    seeds.push(request(
        0,
        1,
        1,
        tok,
        &[(PATH, updates), (PATH, ids[0].as_bytes()), (252, &[1; 8])],
        &[],
    ));
    seeds.push(request(
        0,
        1,
        1,
        tok,
        &[(PATH, updates), (BLOCK2, &[0x07])],
        &[],
    ));
    seeds
}

/// Valid CBOR reports (RFC 8949 by hand): short and long keys, numbers
/// as integers and text, versions as text and integers.
fn cbor_reports() -> Vec<Vec<u8>> {
    vec![
        // {"e": "d1", "s": 2, "r": 0, "t": "1.0.2"}
        vec![
            0xa4, 0x61, b'e', 0x62, b'd', b'1', 0x61, b's', 0x02, 0x61, b'r', 0x00, 0x61, b't',
            0x65, b'1', b'.', b'0', b'.', b'2',
        ],
        // {"ep": "d2", "pid": "MOTE", "type": "APP", "target": 0x0101001f, "result": 8}
        vec![
            0xa5, 0x62, b'e', b'p', 0x62, b'd', b'2', 0x63, b'p', b'i', b'd', 0x64, b'M', b'O',
            b'T', b'E', 0x64, b't', b'y', b'p', b'e', 0x63, b'A', b'P', b'P', 0x66, b't', b'a',
            b'r', b'g', b'e', b't', 0x1a, 0x01, 0x01, 0x00, 0x1f, 0x66, b'r', b'e', b's', b'u',
            b'l', b't', 0x08,
        ],
        // {"state": "3", "v": h'312e302e30'}
        vec![
            0xa2, 0x65, b's', b't', b'a', b't', b'e', 0x61, b'3', 0x61, b'v', 0x45, b'1', b'.',
            b'0', b'.', b'0',
        ],
    ]
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let rounds = if rng.chance(60) { 1 } else { 2 + rng.below(3) };
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                let b = rng.byte();
                input.insert(i, b);
            }
            2 if len > 0 => {
                input.remove(rng.below(len));
            }
            3 => input.truncate(rng.below(len + 1)),
            4 if len > 4 => {
                // Tweak an option header nibble to an extension value.
                let i = 4 + rng.below(len - 4);
                let nibble = [12u8, 13, 14, 15][rng.below(4)];
                input[i] = if rng.chance(50) {
                    (input[i] & 0x0F) | (nibble << 4)
                } else {
                    (input[i] & 0xF0) | nibble
                };
            }
            5 => {
                // Splice: our prefix with another seed's suffix.
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => {
                // Header fields: type, TKL, code, version.
                let i = rng.below(len.min(4));
                input[i] = rng.byte();
            }
            7 => {
                // Grow, sometimes past MAX_REQUEST_LEN.
                let n = if rng.chance(20) {
                    MAX_REQUEST_LEN + rng.below(64)
                } else {
                    rng.below(32)
                };
                let b = rng.byte();
                input.extend_from_slice(&vec![b; n]);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.byte();
            }
            _ => {}
        }
    }
}

/// Checks one reply of `svc` to `datagram`.
/// A notification is a response with a token, parsed alike by both
/// parsers.
fn check_notification(bytes: &[u8]) {
    assert!(bytes.len() <= MAX_REPLY_LEN);
    let ours = Message::parse(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
    let theirs = Packet::from_bytes(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e:?}"));
    assert!(matches!(ours.class(), MessageClass::Response(_)));
    assert!(matches!(
        ours.mtype,
        MessageType::Confirmable | MessageType::NonConfirmable
    ));
    assert_eq!(theirs.payload, ours.payload);
}

fn check_reply(datagram: &[u8], reply: &[u8], outcome: &Outcome<'_>) {
    assert!(
        reply.len() <= MAX_REPLY_LEN,
        "reply of {} bytes",
        reply.len()
    );
    let ours =
        Message::parse(reply).unwrap_or_else(|e| panic!("wire rejects reply {reply:02x?}: {e}"));
    let theirs = Packet::from_bytes(reply)
        .unwrap_or_else(|e| panic!("coap-lite rejects reply {reply:02x?}: {e:?}"));
    assert_eq!(theirs.header.message_id, ours.mid);
    assert_eq!(theirs.get_token(), ours.token);
    assert_eq!(theirs.payload, ours.payload);
    assert_eq!(
        ours.unrecognized_critical, None,
        "a reply with a critical option we do not know"
    );

    let request = Message::parse(datagram);
    if datagram.len() <= MAX_REQUEST_LEN {
        match request {
            Err(ParseError::TooShort | ParseError::BadVersion(_)) => {
                panic!("answered a headerless datagram")
            }
            Err(ParseError::Format { mtype, mid, .. }) => {
                assert_eq!(
                    mtype,
                    MessageType::Confirmable,
                    "answered a malformed non-CON"
                );
                assert_eq!(
                    reply,
                    [0x70, 0, (mid >> 8) as u8, mid as u8],
                    "malformed CON gets RST"
                );
            }
            Ok(_) => {}
        }
    }
    match ours.mtype {
        MessageType::Reset => assert!(reply.len() == 4 && ours.code == 0, "RST is empty"),
        MessageType::Acknowledgement | MessageType::NonConfirmable => {
            assert!(
                matches!(ours.class(), MessageClass::Response(_)),
                "reply is a response"
            );
            if let Ok(req) = &request {
                assert_eq!(ours.token, req.token, "token echoed");
                if req.mtype == MessageType::Confirmable {
                    assert_eq!(ours.mtype, MessageType::Acknowledgement);
                    assert_eq!(ours.mid, req.mid);
                } else {
                    assert_eq!(ours.mtype, MessageType::NonConfirmable);
                }
            }
        }
        MessageType::Confirmable => panic!("the server never sends CON"),
    }
    if let Ok(req) = &request {
        assert!(
            matches!(
                req.mtype,
                MessageType::Confirmable | MessageType::NonConfirmable
            ),
            "answered an ACK/RST"
        );
    }
    if let MessageClass::Response(code) = ours.class() {
        let exempt = matches!(
            code,
            ResponseType::Unauthorized | ResponseType::TooManyRequests
        );
        if code.is_error() && !exempt {
            assert!(!ours.payload.is_empty(), "{code:?} without diagnostic");
            assert!(
                std::str::from_utf8(ours.payload).is_ok(),
                "diagnostic is not UTF-8"
            );
        }
    }

    if let Outcome::Block(t) = outcome {
        assert_eq!(ours.class(), MessageClass::Response(ResponseType::Content));
        assert_eq!(ours.content_format, Some(42));
        assert_eq!(ours.etag, Some(&t.image.body_etag(t.offset)[..]));
        let b = ours.block2.expect("Block2").expect("valid Block2");
        let raw = theirs
            .get_first_option(CoapOption::Block2)
            .expect("coap-lite sees Block2");
        assert_eq!(Block::decode(raw), Ok(b));
        let start = t.offset as usize + b.num as usize * b.size();
        let end = (start + b.size()).min(t.image.bytes.len());
        assert!(start <= t.image.bytes.len(), "block starts past the image");
        assert_eq!(
            ours.payload,
            &t.image.bytes[start..end],
            "wrong bytes for {b:?} at offset {}",
            t.offset
        );
        assert_eq!(b.more, end < t.image.bytes.len(), "M bit");
        assert_eq!(
            (b.num, b.szx, b.more),
            (t.block.num, t.block.szx, t.block.more)
        );
    }
}

/// An answer as the twins are compared: the reply's bytes and, for a
/// block, its image id, OFFSET and Block2; or why nothing was sent.
type Answer = Result<(Vec<u8>, Option<(u32, u32, Block)>), iot_ota::service::Dropped>;

fn answer(action: Action<'_>, out: &[u8]) -> Answer {
    match action {
        Action::Drop(reason) => Err(reason),
        Action::Reply { len, outcome } => {
            let block = match outcome {
                Outcome::Block(t) => Some((t.image.id, t.offset, t.block)),
                _ => None,
            };
            Ok((out[..len].to_vec(), block))
        }
    }
}

#[test]
fn malformed_and_mutated_datagrams_never_panic_and_replies_are_well_formed() {
    let started = Instant::now();
    let files = files();
    let catalog = || Catalog::from_files(files.clone()).unwrap().0;
    let configurations = [
        Limits::default(),
        Limits {
            max_block_size: 64,
            continuation_capacity: 8,
            rate_limit: Some(3),
            rate_table_capacity: 8,
            echo: true,
            max_observers: 4,
            max_devices: 8,
            ..Limits::default()
        },
    ];
    let mut services = configurations.map(|l| Service::new(catalog(), l, support::TEST_KEYS));
    let mut twins = configurations.map(|l| Service::new(catalog(), l, support::TEST_KEYS));
    let mut twin_out = vec![0u8; MAX_REPLY_LEN];
    let mut fast_answers = 0usize;
    // Per twin, a spare catalog of each content (below).
    let mut spares: [[Option<Catalog>; 2]; 2] = Default::default();
    let ids: Vec<String> = services[0]
        .catalog()
        .images()
        .iter()
        .map(|i| i.id_str().to_owned())
        .collect();
    let seeds = seeds(&ids);
    let mut rng = Rng(support::XorShift::seeded(0x9E37_79B9));
    let mut out = vec![0u8; MAX_REPLY_LEN];
    let mut now = 1_000_000u64;
    let (mut replies, mut blocks, mut parsed) = (0usize, 0usize, 0usize);
    let mut notifications = 0usize;
    // The catalog with one image more, which changes what lookups and
    // discovery answer, and two images overwritten in place (same names,
    // other bytes), which downloads under way keep their versions of.
    let other_catalog = || {
        let mut more: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(name, bytes)| match name.as_str() {
                "MOTE_1_1_31_APP.fmu" | "SZ1025_1_0_0_APP.fmu" => {
                    (name.clone(), bytes.iter().map(|b| b ^ 0x5a).collect())
                }
                _ => (name.clone(), bytes.clone()),
            })
            .collect();
        more.push(("MOTE_9_0_0_APP.fmu".to_owned(), vec![7; 300]));
        Catalog::from_files(more).unwrap().0
    };
    let mut held_blocks = 0usize;

    for n in 0..INPUTS {
        let mut input = if rng.chance(5) {
            (0..rng.below(64)).map(|_| rng.byte()).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        if n >= seeds.len() && rng.chance(80) {
            mutate(&mut rng, &mut input, &seeds);
        }
        now += rng.below(1500) as u64;
        // One peer in seven is on loopback, to which /status answers.
        let host = rng.below(7) as u8;
        let net = if host == 6 {
            [127, 0, 0, 1]
        } else {
            [10, 0, 0, host]
        };
        let mut ip = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
        ip[12..].copy_from_slice(&net);
        let peer = Peer {
            ip,
            port: 5683 + rng.below(2) as u16,
            scope: 0,
        };

        // The parser alone.
        match Message::parse(&input) {
            Ok(msg) => {
                parsed += 1;
                let _ = (
                    msg.class(),
                    msg.path.iter().collect::<Vec<_>>(),
                    msg.query.as_slice(),
                    msg.path.overflowed(),
                );
            }
            Err(ParseError::TooShort) => assert!(input.len() < 4),
            Err(_) => {}
        }

        for ((svc, twin), twin_spares) in services
            .iter_mut()
            .zip(twins.iter_mut())
            .zip(spares.iter_mut())
        {
            let twin_answer = match twin.handle_block(peer, now, &input, &mut twin_out) {
                Some(action) => {
                    fast_answers += 1;
                    // The fleet hears of the fast path's last block from
                    // its caller, as the server tells it.
                    let last = match &action {
                        Action::Reply {
                            outcome: Outcome::Block(t),
                            ..
                        } => Some(BlockSent::of(t)).filter(|sent| sent.last),
                        _ => None,
                    };
                    let answer = answer(action, &twin_out);
                    if let Some(sent) = last {
                        twin.note_block(peer, sent, now);
                    }
                    answer
                }
                None => answer(twin.handle(peer, now, &input, &mut twin_out), &twin_out),
            };
            let action = svc.handle(peer, now, &input, &mut out);
            assert_eq!(
                answer(action, &out),
                twin_answer,
                "the fast path's twin answers otherwise: {input:02x?}"
            );
            match action {
                Action::Reply { len, outcome } => {
                    replies += 1;
                    if let Outcome::Block(t) = outcome {
                        blocks += 1;
                        held_blocks += usize::from(t.held != Held::No);
                    }
                    check_reply(&input, &out[..len], &outcome);
                }
                Action::Drop(_) => {
                    if let Ok(req) = Message::parse(&input) {
                        let reply_due = req.mtype == MessageType::Confirmable
                            && input.len() <= MAX_REQUEST_LEN
                            && svc.limits().rate_limit.is_none();
                        assert!(
                            !reply_due,
                            "a Confirmable message went unanswered: {input:02x?}"
                        );
                    }
                }
            }
            assert!(svc.continuation_count() <= svc.limits().continuation_capacity);
            assert!(svc.rate_table_len() <= svc.limits().rate_table_capacity);
            // Notifications owed after a change, a timer or a re-registration
            // are well-formed responses too.
            if n % 500 == 0 {
                let next = if n % 1000 == 0 {
                    catalog()
                } else {
                    other_catalog()
                };
                // As the server does: the time of the swap, which the
                // fast path does not note.
                svc.set_now(now);
                twin.set_now(now);
                svc.replace_catalog(next);
                // The twin's catalogs are built once and then swapped back
                // and forth (building one hashes a 4 MiB image).
                let kind = usize::from(n % 1000 != 0);
                let spare = twin_spares[kind].take();
                let next = spare.unwrap_or_else(|| {
                    if kind == 0 {
                        catalog()
                    } else {
                        other_catalog()
                    }
                });
                let old = twin.replace_catalog(next);
                // The content it had: the first catalog's until n = 500,
                // then the other one's of the two.
                let old_kind = if n == 0 { 0 } else { 1 - kind };
                if let Some(slot) = twin_spares.get_mut(old_kind) {
                    slot.get_or_insert(old);
                }
            }
            for _ in 0..=svc.limits().max_observers {
                let note = svc.poll_notification(now, &mut out);
                let twin_note = twin.poll_notification(now, &mut twin_out);
                assert_eq!(note, twin_note);
                let Some(note) = note else {
                    break;
                };
                assert_eq!(out[..note.len], twin_out[..note.len]);
                notifications += 1;
                check_notification(&out[..note.len]);
            }
            assert!(svc.observer_count() <= svc.limits().max_observers);
        }
    }
    // The loop reached every layer, not only the parser's error paths.
    assert!(parsed > INPUTS / 10, "parsed {parsed}");
    assert!(replies > INPUTS / 4, "replies {replies}");
    assert!(blocks > INPUTS / 20, "blocks {blocks}");
    assert!(notifications > 0, "no notification was ever sent");
    assert!(
        fast_answers > INPUTS / 100,
        "fast path answers {fast_answers}"
    );
    assert!(held_blocks > 0, "no block was served from a held version");
    eprintln!(
        "{INPUTS} inputs: {parsed} parsed, {replies} replies, {blocks} blocks ({held_blocks} from held versions), {fast_answers} answered by the fast path in {:?}",
        started.elapsed()
    );
}

#[test]
fn every_truncation_of_every_seed_is_handled() {
    let catalog = Catalog::from_files(files()).unwrap().0;
    let ids: Vec<String> = catalog
        .images()
        .iter()
        .map(|i| i.id_str().to_owned())
        .collect();
    let mut svc = Service::new(catalog, Limits::default(), support::TEST_KEYS);
    let mut out = vec![0u8; MAX_REPLY_LEN];
    let peer = Peer {
        ip: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        port: 1,
        scope: 0,
    };
    for seed in seeds(&ids) {
        for cut in 0..=seed.len() {
            let input = &seed[..cut];
            let _ = Message::parse(input);
            if let Action::Reply { len, outcome } = svc.handle(peer, 1, input, &mut out) {
                check_reply(input, &out[..len], &outcome);
            }
        }
    }
    // The output buffer given is the only one written: a reply never
    // needs more than MAX_REPLY_LEN, and a shorter buffer is refused, not
    // overrun.
    let mut small = [0u8; 16];
    let request = request(
        0,
        1,
        1,
        &[],
        &[(11, b"updates"), (11, ids[0].as_bytes())],
        &[],
    );
    assert!(matches!(
        svc.handle(peer, 2, &request, &mut small),
        Action::Drop(iot_ota::service::Dropped::Overflow)
    ));
}

/// A CBOR head of major type `major` with argument `n`, shortest form.
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

/// A payload that is mostly a report map: the report's keys, long and
/// short, with numbers, text and byte strings good and bad, items a
/// report cannot hold, and entry counts and bytes that lie.
fn random_cbor(rng: &mut Rng) -> Vec<u8> {
    const KEYS: [&[u8]; 15] = [
        b"e", b"ep", b"s", b"state", b"r", b"result", b"v", b"version", b"t", b"target", b"p",
        b"pid", b"y", b"type", b"x",
    ];
    const TEXTS: [&[u8]; 14] = [
        b"d1",
        b"d2",
        b"MOTE",
        b"APP",
        b"1.0.0",
        b"1.1.31",
        b"0",
        b"1",
        b"3",
        b"8",
        b"12",
        b"",
        b"a/b",
        b"\xff\xfe",
    ];
    const NUMBERS: [u64; 9] = [0, 1, 2, 3, 8, 11, 24, 0x0101_001f, u64::MAX];
    const ODD: [&[u8]; 9] = [
        &[0xa0],
        &[0x80],
        &[0x20],
        &[0xf5],
        &[0xf6],
        &[0xf9, 0, 0],
        &[0xc0, 0x01],
        &[0x5f, 0xff],
        &[0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ];
    let mut out = Vec::new();
    let entries = if rng.chance(5) {
        17 + rng.below(100) as u64
    } else {
        rng.below(8) as u64
    };
    cbor_head(&mut out, if rng.chance(5) { 4 } else { 5 }, entries);
    for i in 0..entries.min(20) * 2 {
        match rng.below(12) {
            0..=5 if i % 2 == 0 => {
                let key = KEYS[rng.below(KEYS.len())];
                cbor_head(&mut out, 3, key.len() as u64);
                out.extend_from_slice(key);
            }
            0..=3 => {
                let text = TEXTS[rng.below(TEXTS.len())];
                cbor_head(&mut out, 3, text.len() as u64);
                out.extend_from_slice(text);
            }
            4..=7 => cbor_head(&mut out, 0, NUMBERS[rng.below(NUMBERS.len())]),
            8 => {
                let text = TEXTS[rng.below(TEXTS.len())];
                cbor_head(&mut out, 2, text.len() as u64);
                out.extend_from_slice(text);
            }
            9 => cbor_head(&mut out, 0, rng.next()),
            10 => out.extend_from_slice(ODD[rng.below(ODD.len())]),
            _ => out.push(rng.byte()),
        }
    }
    if rng.chance(10) && !out.is_empty() {
        let at = rng.below(out.len());
        out[at] ^= 1 << rng.below(8);
    }
    if rng.chance(10) {
        out.truncate(rng.below(out.len() + 1));
    }
    if rng.chance(5) {
        out.push(rng.byte());
    }
    out
}

/// A Uri-Query of up to four pairs of the report's and /status' keys
/// with values good and bad.
fn random_query(rng: &mut Rng) -> Vec<Vec<u8>> {
    const KEYS: [&str; 10] = [
        "ep", "pid", "type", "version", "target", "state", "result", "delta", "x", "",
    ];
    const VALUES: [&str; 16] = [
        "d1",
        "d2",
        "MOTE",
        "APP",
        "7",
        "1.0.0",
        "1.1.31",
        "0",
        "1",
        "3",
        "4",
        "8",
        "12",
        "",
        "a/b",
        "0x01010001f",
    ];
    (0..rng.below(5))
        .map(|_| {
            let mut pair = KEYS[rng.below(KEYS.len())].as_bytes().to_vec();
            if !rng.chance(5) {
                pair.push(b'=');
            }
            pair.extend_from_slice(VALUES[rng.below(VALUES.len())].as_bytes());
            if rng.chance(3) {
                pair.push(rng.byte());
            }
            pair
        })
        .collect()
}

/// A CoAP uint option value: big-endian, no leading zero bytes.
fn uint_option(value: u16) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// Every device the service's fleet knows, by name.
fn fleet_of(svc: &Service) -> Vec<(String, iot_ota::fleet::Device)> {
    let mut devices: Vec<_> = svc
        .fleet()
        .devices()
        .map(|(name, d)| (name.to_string(), *d))
        .collect();
    devices.sort_by(|a, b| a.0.cmp(&b.0));
    devices
}

/// Random report payloads (mostly CBOR maps, true and lying) with every
/// Content-Format, and random queries, on `POST /updates/report`; random
/// queries and Accept values on `GET /status`, from loopback. A report
/// the decoder refuses is 4.00 with the decoder's diagnostic and changes
/// no device; a payload without Content-Format is 4.00, another format
/// than CBOR with one 4.15, and neither changes anything; a report the
/// decoder takes is 2.04 (or 4.00 for a target no image has, changing
/// nothing). `/status` is 2.05 in the format asked for, or 4.00, 4.04 or
/// 4.06 with a diagnostic, and never changes the fleet.
#[test]
fn reports_and_status_answer_random_payloads_and_queries_as_documented() {
    use iot_ota::fleet::report::Report;
    const ROUNDS: usize = 40_000;
    const PATH: u16 = 11;
    const CONTENT_FORMAT: u16 = 12;
    const QUERY: u16 = 15;
    const ACCEPT: u16 = 17;
    let started = Instant::now();
    let catalog = Catalog::from_files(files()).unwrap().0;
    let limits = Limits {
        max_devices: 32,
        ..Limits::default()
    };
    let mut svc = Service::new(catalog, limits, support::TEST_KEYS);
    let mut rng = Rng(support::XorShift::seeded(0x5EED_CB0E));
    let mut out = vec![0u8; MAX_REPLY_LEN];
    let peer = Peer {
        ip: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
        port: 5683,
        scope: 0,
    };
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..ROUNDS {
        let now = 1_000_000 + n as u64 * 7;
        let before = fleet_of(&svc);
        let query = random_query(&mut rng);
        let mut options: Vec<(u16, Vec<u8>)> = query.iter().map(|q| (QUERY, q.clone())).collect();
        let status = rng.chance(30);
        let (code, payload, format) = if status {
            let accept = match rng.below(6) {
                0 => None,
                1 => Some(0),
                2 => Some(50),
                3 => Some(60),
                4 => Some(41),
                _ => Some(rng.next() as u16),
            };
            options.push((PATH, b"status".to_vec()));
            options.extend(accept.map(|a| (ACCEPT, uint_option(a))));
            (1, Vec::new(), accept)
        } else {
            let format = match rng.below(8) {
                0..=3 => Some(60),
                4 => Some(0),
                5 => None,
                6 => Some(50),
                _ => Some(rng.next() as u16),
            };
            let payload = match (format, rng.below(4)) {
                (Some(60), _) | (_, 0) => random_cbor(&mut rng),
                _ => Vec::new(),
            };
            options.push((PATH, b"updates".to_vec()));
            options.push((PATH, b"report".to_vec()));
            options.extend(format.map(|f| (CONTENT_FORMAT, uint_option(f))));
            (2, payload, format)
        };
        let refs: Vec<(u16, &[u8])> = options.iter().map(|(n, v)| (*n, &v[..])).collect();
        let datagram = request(0, code, n as u16, &[7], &refs, &payload);
        let Action::Reply { len, outcome } = svc.handle(peer, now, &datagram, &mut out) else {
            panic!("no reply to {datagram:02x?}");
        };
        check_reply(&datagram, &out[..len], &outcome);
        let reply = Message::parse(&out[..len]).unwrap();
        let MessageClass::Response(answer) = reply.class() else {
            panic!("not a response");
        };
        let diagnostic = std::str::from_utf8(reply.payload).unwrap_or("");
        let changed = fleet_of(&svc) != before;
        let what = if status {
            assert!(!changed, "/status changed the fleet: {datagram:02x?}");
            match answer {
                ResponseType::Content => {
                    let want = format.filter(|f| *f != 0).unwrap_or(0);
                    assert_eq!(reply.content_format, Some(want), "{datagram:02x?}");
                }
                ResponseType::BadRequest | ResponseType::NotFound => {}
                ResponseType::NotAcceptable => {
                    assert!(!matches!(format, None | Some(0 | 50 | 60)))
                }
                other => panic!("/status answered {other:?}: {datagram:02x?}"),
            }
            format!("status {answer:?}")
        } else {
            let queries: Vec<&[u8]> = query.iter().map(|q| &q[..]).collect();
            let expected = match (format, payload.is_empty()) {
                (Some(60), _) => Some(Report::from_cbor(&payload).map(|_| ())),
                (Some(0) | None, true) => Some(Report::from_query(&queries).map(|_| ())),
                (None, false) => None,
                (Some(_), _) => {
                    assert_eq!(answer, ResponseType::UnsupportedContentFormat);
                    None
                }
            };
            match expected {
                Some(Err(e)) => {
                    assert_eq!(answer, ResponseType::BadRequest, "{datagram:02x?}");
                    assert_eq!(diagnostic, e.to_string(), "{datagram:02x?}");
                }
                Some(Ok(())) if answer == ResponseType::BadRequest => {
                    assert_eq!(
                        diagnostic, "no image of this pid, type and target version",
                        "{datagram:02x?}"
                    );
                }
                Some(Ok(())) => assert_eq!(answer, ResponseType::Changed, "{datagram:02x?}"),
                None if format.is_none() => {
                    assert_eq!(answer, ResponseType::BadRequest, "{datagram:02x?}");
                }
                None => {}
            }
            if answer != ResponseType::Changed {
                assert!(
                    !changed,
                    "a refused report changed the fleet: {datagram:02x?}"
                );
            }
            format!("report {answer:?}")
        };
        *seen.entry(what).or_default() += 1;
    }
    // Every kind of answer was reached, not only the decoder's refusals.
    for what in [
        "report Changed",
        "report BadRequest",
        "report UnsupportedContentFormat",
        "status Content",
        "status BadRequest",
        "status NotFound",
        "status NotAcceptable",
    ] {
        assert!(
            seen.get(what).copied().unwrap_or(0) > 20,
            "{what}: {seen:?}"
        );
    }
    eprintln!(
        "{ROUNDS} reports and status requests in {:?}: {seen:?}",
        started.elapsed()
    );
}
