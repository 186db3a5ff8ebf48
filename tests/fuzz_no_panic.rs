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
//! declines): the twins' answers and notifications must be byte for byte
//! the same.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};
use iot_ota::catalog::Catalog;
use iot_ota::service::{
    Action, Held, Limits, Outcome, Peer, Service, MAX_REPLY_LEN, MAX_REQUEST_LEN,
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
        let peer = Peer {
            ip: [
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0xff,
                0xff,
                10,
                0,
                0,
                rng.below(6) as u8,
            ],
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
                    answer(action, &twin_out)
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
