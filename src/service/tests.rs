//! Every route and answer of the protocol (README, "Protocol") through
//! [`Service::handle`], over a catalog built with `Catalog::from_files`
//! from deterministic test images. Replies are decoded with
//! [`Message::parse`]; a few are cross-checked with coap-lite.

use super::*;
use crate::catalog::Catalog;
use crate::firmware::version;
use crate::hash::SipKey;
use crate::testkit::{image_bytes, seeded_files, KEYS};
use coap_lite::{Packet, RequestType};

const GET: MessageClass = MessageClass::Request(RequestType::Get);
/// Any start time: the service only compares differences.
const T0: u64 = 10_000_000;
const MID: u16 = 0x1234;
const TOKEN: [u8; 2] = [0xA1, 0xB2];

const SZ0: &str = "SZ0_1_0_0_APP.fmu";
const SZ1: &str = "SZ1_1_0_0_APP.fmu";
const SZ1023: &str = "SZ1023_1_0_0_APP.fmu";
const SZ1024: &str = "SZ1024_1_0_0_APP.fmu";
const SZ1025: &str = "SZ1025_1_0_0_APP.fmu";
const MOTE_OLD: &str = "MOTE_1_0_0_APP.fmu";
const MOTE_NEW: &str = "MOTE_1_1_31_APP_0xF63D0305.fmu";
const MOTE_TYPE7: &str = "MOTE_2_0_0_7.fmu";
const BIG: &str = "BIG_1_0_0_APP.fmu";
/// Past 4 MiB, so 1 KiB block numbers pass 4095.
const BIG_LEN: usize = 4 * 1024 * 1024 + 100;
const MOTE_NEW_LEN: usize = 2000;

const SMALL: [(&str, usize); 8] = [
    (SZ0, 0),
    (SZ1, 1),
    (SZ1023, 1023),
    (SZ1024, 1024),
    (SZ1025, 1025),
    (MOTE_OLD, 100),
    (MOTE_NEW, MOTE_NEW_LEN),
    (MOTE_TYPE7, 50),
];

fn catalog(with_big: bool) -> Catalog {
    let mut files = seeded_files(&SMALL, 1);
    if with_big {
        files.push((BIG.to_owned(), image_bytes(BIG_LEN, 99)));
    }
    let (catalog, skipped) = Catalog::from_files(files).expect("catalog builds");
    assert!(skipped.is_empty(), "{skipped:?}");
    catalog
}

/// A peer `192.0.2.n:port` as the server sees it (IPv4-mapped).
fn peer_port(n: u32, port: u16) -> Peer {
    let mut ip = [0u8; 16];
    ip[10] = 0xff;
    ip[11] = 0xff;
    ip[12..].copy_from_slice(&n.to_be_bytes());
    Peer { ip, port, scope: 0 }
}

fn peer(n: u32) -> Peer {
    peer_port(n, 5683)
}

const A: u32 = 0xC000_0201;
const B: u32 = 0xC000_0202;

/// What a test needs of an image, owned so the service can be borrowed
/// mutably afterwards.
#[derive(Clone)]
struct Img {
    id: String,
    bytes: Vec<u8>,
    etag: [u8; 8],
}

impl Img {
    /// The body from `offset`: the same bytes to index, under that body's
    /// own ETag.
    fn from(&self, offset: u32) -> Img {
        Img {
            etag: crate::hash::body_etag(&self.etag, offset),
            ..self.clone()
        }
    }
}

struct Fx {
    svc: Service,
    out: Vec<u8>,
}

impl Fx {
    fn with(limits: Limits, with_big: bool) -> Fx {
        Fx::with_keys(limits, with_big, KEYS)
    }

    fn with_keys(limits: Limits, with_big: bool, keys: Keys) -> Fx {
        Fx {
            svc: Service::new(catalog(with_big), limits, keys),
            out: vec![0; MAX_REPLY_LEN],
        }
    }

    fn new() -> Fx {
        Fx::with(Limits::default(), false)
    }

    fn img(&self, name: &str) -> Img {
        let image = self
            .svc
            .catalog()
            .images()
            .iter()
            .find(|i| i.file_name == name)
            .expect("image in catalog");
        Img {
            id: image.id_str().to_owned(),
            bytes: image.bytes.to_vec(),
            etag: image.etag,
        }
    }

    /// The reply bytes, or why nothing was sent.
    fn handle(&mut self, peer: Peer, now: u64, datagram: &[u8]) -> Result<Vec<u8>, Dropped> {
        match self.svc.handle(peer, now, datagram, &mut self.out) {
            Action::Reply { len, .. } => {
                assert!(len <= MAX_REPLY_LEN);
                Ok(self.out[..len].to_vec())
            }
            Action::Drop(reason) => Err(reason),
        }
    }

    /// A request from peer A at T0 that must be answered.
    fn ask(&mut self, req: &Req) -> Vec<u8> {
        self.ask_from(A, T0, req)
    }

    fn ask_from(&mut self, n: u32, now: u64, req: &Req) -> Vec<u8> {
        self.handle(peer(n), now, &req.bytes())
            .unwrap_or_else(|d| panic!("no reply ({d:?}) to {req:?}"))
    }
}

/// A request under construction; options are sorted (stably) on emit.
#[derive(Debug, Clone)]
struct Req {
    mtype: MessageType,
    code: MessageClass,
    mid: u16,
    token: Vec<u8>,
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Req {
    /// CON GET with MID and TOKEN; `uri` is `seg/seg?q&q`.
    fn get(uri: &str) -> Req {
        let mut req = Req {
            mtype: MessageType::Confirmable,
            code: GET,
            mid: MID,
            token: TOKEN.to_vec(),
            options: Vec::new(),
            payload: Vec::new(),
        };
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            req = req.option(CoapOption::UriPath.into(), segment.as_bytes());
        }
        for q in query.split('&').filter(|s| !s.is_empty()) {
            req = req.option(CoapOption::UriQuery.into(), q.as_bytes());
        }
        req
    }

    fn non(mut self) -> Req {
        self.mtype = MessageType::NonConfirmable;
        self
    }

    fn mid(mut self, mid: u16) -> Req {
        self.mid = mid;
        self
    }

    fn token(mut self, token: &[u8]) -> Req {
        self.token = token.to_vec();
        self
    }

    fn code(mut self, code: MessageClass) -> Req {
        self.code = code;
        self
    }

    fn option(mut self, number: u16, value: &[u8]) -> Req {
        self.options.push((number, value.to_vec()));
        self
    }

    fn uint(self, number: u16, value: u32) -> Req {
        let mut buf = [0; 4];
        let encoded = wire::encode_uint(value, &mut buf).to_vec();
        self.option(number, &encoded)
    }

    fn block2(self, num: u32, szx: u8) -> Req {
        let mut buf = [0; 4];
        let encoded = Block {
            num,
            more: false,
            szx,
        }
        .encode(&mut buf)
        .to_vec();
        self.option(CoapOption::Block2.into(), &encoded)
    }

    fn payload(mut self, payload: &[u8]) -> Req {
        self.payload = payload.to_vec();
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        options.sort_by_key(|o| o.0);
        let mut buf = vec![0u8; 4096];
        let mut e = Emitter::new(&mut buf, self.mtype, self.code, self.mid, &self.token).unwrap();
        for (number, value) in &options {
            e.option(*number, value).unwrap();
        }
        let len = e.payload(&self.payload).unwrap();
        buf.truncate(len);
        buf
    }
}

/// `PIDLEN | PID | TYPE | VERSION:u32le [| OFFSET:u32le]`, written by hand.
fn device(pid: &[u8], fw_type: u8, version: u32, offset: Option<u32>) -> Vec<u8> {
    let mut p = vec![pid.len() as u8];
    p.extend_from_slice(pid);
    p.push(fw_type);
    p.extend_from_slice(&version.to_le_bytes());
    if let Some(offset) = offset {
        p.extend_from_slice(&offset.to_le_bytes());
    }
    p
}

fn parse(reply: &[u8]) -> Message<'_> {
    Message::parse(reply).expect("reply parses")
}

fn class(reply: &[u8]) -> MessageClass {
    parse(reply).class()
}

/// Checks an error reply's code and its diagnostic payload (non-empty
/// UTF-8, RFC 7252 §5.5.2); returns the text.
fn assert_error(reply: &[u8], code: ResponseType) -> String {
    let msg = parse(reply);
    assert_eq!(
        msg.class(),
        MessageClass::Response(code),
        "reply {reply:02x?}"
    );
    assert!(!msg.payload.is_empty(), "error {code:?} without diagnostic");
    std::str::from_utf8(msg.payload)
        .expect("diagnostic is UTF-8")
        .to_owned()
}

fn block2(reply: &[u8]) -> Block {
    parse(reply)
        .block2
        .expect("Block2 present")
        .expect("valid Block2")
}

/// Checks a 2.05 block reply of an image body and returns its payload.
fn assert_block(reply: &[u8], img: &Img, num: u32, more: bool, szx: u8) -> Vec<u8> {
    let msg = parse(reply);
    assert_eq!(msg.class(), MessageClass::Response(ResponseType::Content));
    assert_eq!(msg.content_format, Some(42), "application/octet-stream");
    assert_eq!(msg.etag, Some(&img.etag[..]));
    assert_eq!(block2(reply), Block { num, more, szx });
    msg.payload.to_vec()
}

fn assert_rst(reply: &[u8], mid: u16) {
    assert_eq!(
        reply,
        [0x70, 0x00, (mid >> 8) as u8, mid as u8],
        "RST for MID {mid:#x}"
    );
}

/// coap-lite's view of a reply agrees with ours on every field we check.
fn cross_check(reply: &[u8]) {
    let ours = parse(reply);
    let theirs = Packet::from_bytes(reply).expect("coap-lite parses the reply");
    assert_eq!(theirs.header.get_type(), ours.mtype);
    assert_eq!(theirs.header.code, ours.class());
    assert_eq!(theirs.header.message_id, ours.mid);
    assert_eq!(theirs.get_token(), ours.token);
    assert_eq!(theirs.payload, ours.payload);
    let first = |o: CoapOption| theirs.get_first_option(o).map(|v| v.as_slice());
    assert_eq!(first(CoapOption::ETag), ours.etag);
    assert_eq!(
        first(CoapOption::ContentFormat).map(|v| wire::decode_uint(v).unwrap() as u16),
        ours.content_format
    );
    assert_eq!(
        first(CoapOption::Size2).and_then(wire::decode_uint),
        ours.size2
    );
    assert_eq!(first(CoapOption::Block2).map(Block::decode), ours.block2);
}

// ---------------------------------------------------------------------------
// §2.1 GET /updates: lookup form

#[test]
fn lookup_form_answers_2_05_text_plain_with_the_newest_id() {
    let mut fx = Fx::new();
    let newest = fx.img(MOTE_NEW);
    for current in [0, version(1, 0, 0), version(1, 1, 30)] {
        let reply = fx.ask(&Req::get("updates").payload(&device(b"MOTE", 3, current, None)));
        let msg = parse(&reply);
        assert_eq!(msg.class(), MessageClass::Response(ResponseType::Content));
        assert_eq!(msg.content_format, Some(0), "text/plain");
        assert_eq!(msg.payload, newest.id.as_bytes());
        assert_eq!(msg.block2, None);
        cross_check(&reply);
    }
    // TYPE selects the image set: type 7 has its own newest.
    let type7 = fx.img(MOTE_TYPE7);
    let reply = fx.ask(&Req::get("updates").payload(&device(b"MOTE", 7, 0, None)));
    assert_eq!(parse(&reply).payload, type7.id.as_bytes());
}

#[test]
fn lookup_form_without_newer_image_is_4_04() {
    let mut fx = Fx::new();
    for payload in [
        device(b"MOTE", 3, version(1, 1, 31), None),
        device(b"MOTE", 3, u32::MAX, None),
        device(b"NOPE", 3, 0, None),
        device(b"MOTE", 4, 0, None),
    ] {
        let reply = fx.ask(&Req::get("updates").payload(&payload));
        assert_error(&reply, ResponseType::NotFound);
    }
}

// §2.1 legacy form

#[test]
fn legacy_form_sends_the_body_from_offset_block_wise() {
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let payload = device(b"MOTE", 3, version(1, 0, 0), Some(0));
    let reply = fx.ask(&Req::get("updates").payload(&payload));
    assert_eq!(assert_block(&reply, &img, 0, true, 6), &img.bytes[..1024]);
    assert_eq!(parse(&reply).size2, Some(MOTE_NEW_LEN as u32));
    cross_check(&reply);
    // The device repeats the request with Block2 for the next block.
    let reply = fx.ask(
        &Req::get("updates")
            .payload(&payload)
            .block2(1, 6)
            .mid(MID + 1),
    );
    assert_eq!(assert_block(&reply, &img, 1, false, 6), &img.bytes[1024..]);
    assert_eq!(
        parse(&reply).size2,
        None,
        "Size2 only on block 0 unless asked"
    );

    // From OFFSET 100 the body is image[100..].
    let payload = device(b"MOTE", 3, version(1, 0, 0), Some(100));
    let reply = fx.ask(&Req::get("updates").payload(&payload));
    assert_eq!(
        assert_block(&reply, &img.from(100), 0, true, 6),
        &img.bytes[100..1124]
    );
    assert_eq!(parse(&reply).size2, Some(MOTE_NEW_LEN as u32 - 100));
    let reply = fx.ask(&Req::get("updates").payload(&payload).block2(1, 6));
    assert_eq!(
        assert_block(&reply, &img.from(100), 1, false, 6),
        &img.bytes[1124..]
    );
}

#[test]
fn legacy_form_without_update_is_rst() {
    let mut fx = Fx::new();
    for payload in [
        device(b"MOTE", 3, version(1, 1, 31), Some(0)),
        device(b"UNKNOWN", 3, 0, Some(0)),
    ] {
        let reply = fx.ask(&Req::get("updates").payload(&payload).mid(0x4321));
        assert_rst(&reply, 0x4321);
        cross_check(&reply);
    }
}

#[test]
fn legacy_offset_beyond_the_image_is_4_00_with_diagnostic() {
    let mut fx = Fx::new();
    let payload = device(b"MOTE", 3, 0, Some(MOTE_NEW_LEN as u32 + 1));
    let text = assert_error(
        &fx.ask(&Req::get("updates").payload(&payload)),
        ResponseType::BadRequest,
    );
    assert!(text.contains("OFFSET"), "{text}");
    let payload = device(b"MOTE", 3, 0, Some(u32::MAX));
    assert_error(
        &fx.ask(&Req::get("updates").payload(&payload)),
        ResponseType::BadRequest,
    );
}

#[test]
fn legacy_offset_equal_to_length_is_an_empty_block_0_with_m_clear() {
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let payload = device(b"MOTE", 3, 0, Some(MOTE_NEW_LEN as u32));
    let reply = fx.ask(&Req::get("updates").payload(&payload));
    assert!(assert_block(&reply, &img.from(MOTE_NEW_LEN as u32), 0, false, 6).is_empty());
    assert_eq!(parse(&reply).size2, Some(0));
    // Nothing after the empty block.
    let reply = fx.ask(&Req::get("updates").payload(&payload).block2(1, 6));
    assert_error(&reply, ResponseType::BadOption);
}

// §2.1 payload-less continuation

#[test]
fn continuation_without_payload_continues_the_same_body() {
    let mut fx = Fx::with(Limits::default(), true);
    let img = fx.img(MOTE_NEW);
    let payload = device(b"MOTE", 3, 0, Some(100));
    fx.ask(&Req::get("updates").payload(&payload));
    // node-coap and libcoap send the payload only with block 0, and some
    // change the token on every block.
    let reply = fx.ask_from(
        A,
        T0 + 10,
        &Req::get("updates")
            .block2(1, 6)
            .mid(MID + 1)
            .token(&[0x77; 8]),
    );
    assert_eq!(parse(&reply).token, &[0x77; 8]);
    assert_eq!(parse(&reply).mid, MID + 1);
    assert_eq!(
        assert_block(&reply, &img.from(100), 1, false, 6),
        &img.bytes[100 + 1024..]
    );
    // At a smaller block size too.
    let reply = fx.ask_from(A, T0 + 20, &Req::get("updates").block2(3, 4).token(&[]));
    assert_eq!(
        assert_block(&reply, &img.from(100), 3, true, 4),
        &img.bytes[100 + 768..100 + 1024]
    );

    // A new legacy request replaces the entry: now the 4 MiB image.
    let big = fx.img(BIG);
    fx.ask(&Req::get("updates").payload(&device(b"BIG", 3, 0, Some(0))));
    let reply = fx.ask_from(A, T0 + 30, &Req::get("updates").block2(4096, 6));
    assert_eq!(
        assert_block(&reply, &big, 4096, false, 6),
        &big.bytes[4096 * 1024..]
    );
}

#[test]
fn continuation_from_another_peer_is_4_00() {
    let mut fx = Fx::new();
    fx.ask(&Req::get("updates").payload(&device(b"MOTE", 3, 0, Some(0))));
    let cont = Req::get("updates").block2(1, 6).bytes();
    let other_address = fx.handle(peer(B), T0 + 1, &cont).unwrap();
    let text = assert_error(&other_address, ResponseType::BadRequest);
    assert!(text.contains("no transfer"), "{text}");
    // The same address from another port is another peer.
    let other_port = fx.handle(peer_port(A, 5684), T0 + 1, &cont).unwrap();
    assert_error(&other_port, ResponseType::BadRequest);
    assert_eq!(
        class(&fx.handle(peer(A), T0 + 1, &cont).unwrap()),
        MessageClass::Response(ResponseType::Content)
    );
}

#[test]
fn continuation_after_exchange_lifetime_is_4_00() {
    let mut fx = Fx::new();
    let legacy = Req::get("updates").payload(&device(b"MOTE", 3, 0, Some(0)));
    fx.ask_from(A, T0, &legacy);
    fx.ask_from(B, T0, &legacy);
    let cont = Req::get("updates").block2(1, 6);
    let just_in_time = fx.ask_from(A, T0 + EXCHANGE_LIFETIME_MS - 1, &cont);
    assert_eq!(
        class(&just_in_time),
        MessageClass::Response(ResponseType::Content)
    );
    let too_late = fx.ask_from(B, T0 + EXCHANGE_LIFETIME_MS, &cont);
    assert_error(&too_late, ResponseType::BadRequest);
}

#[test]
fn continuation_in_use_does_not_expire_mid_transfer() {
    // A slow device fetching many blocks with a stock client sends the
    // payload only once; its transfer must outlive EXCHANGE_LIFETIME as
    // long as blocks keep coming.
    let mut fx = Fx::with(Limits::default(), true);
    let big = fx.img(BIG);
    fx.ask_from(
        A,
        T0,
        &Req::get("updates").payload(&device(b"BIG", 3, 0, Some(0))),
    );
    let step = EXCHANGE_LIFETIME_MS / 2;
    for i in 1..=6u32 {
        let reply = fx.ask_from(
            A,
            T0 + u64::from(i) * step,
            &Req::get("updates").block2(i, 6),
        );
        let at = i as usize * 1024;
        assert_eq!(
            assert_block(&reply, &big, i, true, 6),
            &big.bytes[at..at + 1024],
            "block {i}"
        );
    }
    // Idle for a whole lifetime: gone.
    let idle = T0 + 6 * step + EXCHANGE_LIFETIME_MS;
    assert_error(
        &fx.ask_from(A, idle, &Req::get("updates").block2(7, 6)),
        ResponseType::BadRequest,
    );
}

#[test]
fn continuation_needs_block2_num_above_0() {
    let mut fx = Fx::new();
    fx.ask(&Req::get("updates").payload(&device(b"MOTE", 3, 0, Some(0))));
    for req in [
        Req::get("updates").block2(0, 6),
        Req::get("updates").option(23, &[0x17]),
    ] {
        assert_error(&fx.ask(&req), ResponseType::BadRequest);
    }
}

// §2.1 query form

#[test]
fn query_form_answers_like_the_lookup_form() {
    let mut fx = Fx::new();
    let newest = fx.img(MOTE_NEW).id;
    let type7 = fx.img(MOTE_TYPE7).id;
    for (uri, expected) in [
        ("updates?pid=MOTE&type=APP&version=1.0.0", &newest),
        ("updates?pid=MOTE&type=app&version=1.1.30", &newest),
        ("updates?pid=MOTE&type=3&version=0x01000000", &newest),
        ("updates?version=16842752&type=3&pid=MOTE", &newest),
        ("updates?pid=MOTE&type=7&version=0.0.0", &type7),
    ] {
        let reply = fx.ask(&Req::get(uri));
        let msg = parse(&reply);
        assert_eq!(
            msg.class(),
            MessageClass::Response(ResponseType::Content),
            "{uri}"
        );
        assert_eq!(msg.content_format, Some(0));
        assert_eq!(msg.payload, expected.as_bytes(), "{uri}");
    }
    assert_error(
        &fx.ask(&Req::get("updates?pid=MOTE&type=APP&version=1.1.31")),
        ResponseType::NotFound,
    );
}

#[test]
fn query_form_with_missing_or_bad_fields_is_4_00() {
    let mut fx = Fx::new();
    for (uri, needle) in [
        ("updates?type=APP&version=1.0.0", "pid"),
        ("updates?pid=MOTE&version=1.0.0", "type"),
        ("updates?pid=MOTE&type=APP", "version"),
        ("updates?pid=MOTE&type=APP&version=1.2", "version"),
        ("updates?pid=MOTE&type=BOOT&version=1.0.0", "type"),
        (
            "updates?pid=MOTE&type=APP&version=1.0.0&a=1&b=2&c=3&d=4&e=5&f=6",
            "query",
        ),
    ] {
        let text = assert_error(&fx.ask(&Req::get(uri)), ResponseType::BadRequest);
        assert!(text.contains(needle), "{uri}: {text}");
    }
}

#[test]
fn wrong_payload_length_is_4_00_with_diagnostic() {
    let mut fx = Fx::new();
    let mut too_long = device(b"MOTE", 3, 0, Some(0));
    too_long.push(0);
    let text = assert_error(
        &fx.ask(&Req::get("updates").payload(&too_long)),
        ResponseType::BadRequest,
    );
    assert!(text.contains("15 bytes"), "{text}");
    let short = &too_long[..9];
    assert_error(
        &fx.ask(&Req::get("updates").payload(short)),
        ResponseType::BadRequest,
    );
    let text = assert_error(
        &fx.ask(&Req::get("updates").payload(&[0, 3, 0, 0, 0, 0])),
        ResponseType::BadRequest,
    );
    assert!(text.contains("PIDLEN"), "{text}");
}

#[test]
fn neither_payload_nor_query_is_4_00() {
    let mut fx = Fx::new();
    let text = assert_error(&fx.ask(&Req::get("updates")), ResponseType::BadRequest);
    assert!(text.contains("payload"), "{text}");
}

// ---------------------------------------------------------------------------
// §2.2 GET /updates/{id}

#[test]
fn image_by_id_at_block_edges() {
    let mut fx = Fx::new();
    for (name, len) in [
        (SZ0, 0usize),
        (SZ1, 1),
        (SZ1023, 1023),
        (SZ1024, 1024),
        (SZ1025, 1025),
    ] {
        let img = fx.img(name);
        let uri = format!("updates/{}", img.id);
        let reply = fx.ask(&Req::get(&uri));
        let first = assert_block(&reply, &img, 0, len > 1024, 6);
        assert_eq!(first, &img.bytes[..len.min(1024)], "{name}");
        assert_eq!(parse(&reply).size2, Some(len as u32), "{name}");
        cross_check(&reply);
        if len > 1024 {
            let reply = fx.ask(&Req::get(&uri).block2(1, 6));
            assert_eq!(assert_block(&reply, &img, 1, false, 6), &img.bytes[1024..]);
            assert_error(
                &fx.ask(&Req::get(&uri).block2(2, 6)),
                ResponseType::BadOption,
            );
        } else {
            assert_error(
                &fx.ask(&Req::get(&uri).block2(1, 6)),
                ResponseType::BadOption,
            );
        }
    }
}

#[test]
fn image_by_id_with_4_byte_offset_payload() {
    let mut fx = Fx::new();
    let img = fx.img(SZ1025);
    let uri = format!("updates/{}", img.id);
    let reply = fx.ask(&Req::get(&uri).payload(&1000u32.to_le_bytes()));
    assert_eq!(
        assert_block(&reply, &img.from(1000), 0, false, 6),
        &img.bytes[1000..]
    );
    assert_eq!(parse(&reply).size2, Some(25));
    let reply = fx.ask(&Req::get(&uri).payload(&0u32.to_le_bytes()));
    assert_eq!(assert_block(&reply, &img, 0, true, 6), &img.bytes[..1024]);
    let reply = fx.ask(&Req::get(&uri).payload(&1025u32.to_le_bytes()));
    assert!(assert_block(&reply, &img.from(1025), 0, false, 6).is_empty());
    let reply = fx.ask(&Req::get(&uri).payload(&1026u32.to_le_bytes()));
    assert_error(&reply, ResponseType::BadRequest);
}

#[test]
fn image_by_id_with_other_payload_length_is_4_00() {
    let mut fx = Fx::new();
    let uri = format!("updates/{}", fx.img(SZ1025).id);
    for len in [1usize, 2, 3, 5, 8] {
        let text = assert_error(
            &fx.ask(&Req::get(&uri).payload(&vec![0; len])),
            ResponseType::BadRequest,
        );
        assert!(text.contains("OFFSET"), "{text}");
    }
}

#[test]
fn unknown_image_id_is_4_04() {
    let mut fx = Fx::new();
    let upper = fx.img(SZ1).id.to_uppercase();
    for id in ["00000000", upper.as_str(), "xyz", "0123456789"] {
        assert_error(
            &fx.ask(&Req::get(&format!("updates/{id}"))),
            ResponseType::NotFound,
        );
    }
}

// ---------------------------------------------------------------------------
// §2.3 GET /.well-known/core

fn link(img: &Img, name: &str) -> String {
    format!(
        "</updates/{}>;rt=\"fw.image\";ct=42;sz={};title=\"{name}\"",
        img.id,
        img.bytes.len()
    )
}

/// The expected filtered listing, built independently of the catalog.
fn expected_links(fx: &Fx, names: &[&str], with_updates: bool) -> String {
    let mut links: Vec<String> = Vec::new();
    if with_updates {
        links.push("</updates>;rt=\"fw.updates\"".to_owned());
    }
    let mut sorted = names.to_vec();
    sorted.sort();
    for name in sorted {
        links.push(link(&fx.img(name), name));
    }
    links.join(",")
}

/// Fetches every block of a discovery listing at `szx` and checks each.
fn fetch_listing(fx: &mut Fx, uri: &str, szx: u8) -> Vec<u8> {
    let mut body = Vec::new();
    let etag = match fx.svc.tree() {
        None => fx.svc.catalog().core_etag(),
        Some(tree) => {
            crate::hash::fnv1a64_concat([&fx.svc.catalog().core_etag()[..], &tree.core_etag()[..]])
                .to_be_bytes()
        }
    };
    for num in 0.. {
        assert!(num < 10_000, "runaway");
        let reply = fx.ask(&Req::get(uri).block2(num, szx).mid(num as u16));
        let msg = parse(&reply);
        assert_eq!(
            msg.class(),
            MessageClass::Response(ResponseType::Content),
            "{uri} #{num}"
        );
        assert_eq!(msg.content_format, Some(40));
        assert_eq!(msg.etag, Some(&etag[..]));
        let block = block2(&reply);
        assert_eq!((block.num, block.szx), (num, szx));
        if block.more {
            assert_eq!(msg.payload.len(), 16 << szx, "full block {num} of {uri}");
        } else {
            assert!(msg.payload.len() <= 16 << szx);
        }
        body.extend_from_slice(msg.payload);
        if !block.more {
            if num == 0 {
                assert_eq!(msg.size2, Some(body.len() as u32));
            }
            return body;
        }
    }
    unreachable!()
}

#[test]
fn discovery_is_the_catalog_core_body_as_link_format() {
    let mut fx = Fx::new();
    let core_body = fx.svc.catalog().core_body().to_vec();
    assert!(core_body.len() <= 1024, "fits one block");
    let reply = fx.ask(&Req::get(".well-known/core"));
    let msg = parse(&reply);
    assert_eq!(msg.class(), MessageClass::Response(ResponseType::Content));
    assert_eq!(msg.content_format, Some(40));
    assert_eq!(msg.payload, &core_body[..]);
    assert_eq!(msg.size2, Some(core_body.len() as u32));
    assert_eq!(msg.etag, Some(&fx.svc.catalog().core_etag()[..]));
    cross_check(&reply);
    let names: Vec<&str> = SMALL.iter().map(|s| s.0).collect();
    assert_eq!(
        String::from_utf8(core_body).unwrap(),
        expected_links(&fx, &names, true)
    );
}

#[test]
fn discovery_filters_by_rt_title_and_href() {
    let mut fx = Fx::new();
    let all: Vec<&str> = SMALL.iter().map(|s| s.0).collect();
    let sz1 = fx.img(SZ1);
    let cases: [(String, String); 6] = [
        ("rt=fw.image".into(), expected_links(&fx, &all, false)),
        ("rt=fw.updates".into(), expected_links(&fx, &[], true)),
        (
            "title=SZ102*".into(),
            expected_links(&fx, &[SZ1023, SZ1024, SZ1025], false),
        ),
        (
            "title=MOTE*".into(),
            expected_links(&fx, &[MOTE_OLD, MOTE_NEW, MOTE_TYPE7], false),
        ),
        (
            format!("href=/updates/{}", sz1.id),
            expected_links(&fx, &[SZ1], false),
        ),
        ("title=NOTHING*".into(), String::new()),
    ];
    for (query, expected) in cases {
        let reply = fx.ask(&Req::get(&format!(".well-known/core?{query}")));
        let msg = parse(&reply);
        assert_eq!(
            msg.class(),
            MessageClass::Response(ResponseType::Content),
            "{query}"
        );
        assert_eq!(msg.content_format, Some(40));
        assert_eq!(
            std::str::from_utf8(msg.payload).unwrap(),
            expected,
            "{query}"
        );
        assert_eq!(msg.size2, Some(expected.len() as u32));
    }
}

#[test]
fn discovery_with_more_filters_than_kept_is_4_00() {
    let mut fx = Fx::new();
    let five = ".well-known/core?rt=fw.image&rt=fw.image&rt=fw.image&rt=fw.image&title=SZ0*";
    let text = assert_error(&fx.ask(&Req::get(five)), ResponseType::BadRequest);
    assert!(text.contains("query"), "{text}");
    let four = ".well-known/core?rt=fw.image&rt=fw.image&rt=fw.image&title=SZ0*";
    let reply = fx.ask(&Req::get(four));
    assert_eq!(
        parse(&reply).payload,
        expected_links(&fx, &[SZ0], false).as_bytes()
    );
}

#[test]
fn discovery_is_block_wise_and_slices_filtered_links_correctly() {
    let mut fx = Fx::new();
    let all: Vec<&str> = SMALL.iter().map(|s| s.0).collect();
    let core_body = fx.svc.catalog().core_body().to_vec();
    for (query, expected) in [
        ("", String::from_utf8(core_body).unwrap()),
        ("rt=fw.image", expected_links(&fx, &all, false)),
        (
            "title=SZ*",
            expected_links(&fx, &[SZ0, SZ1, SZ1023, SZ1024, SZ1025], false),
        ),
        (
            "title=MOTE_1*",
            expected_links(&fx, &[MOTE_OLD, MOTE_NEW], false),
        ),
    ] {
        let uri = format!(".well-known/core?{query}");
        for szx in [0u8, 1, 2] {
            let body = fetch_listing(&mut fx, &uri, szx);
            assert_eq!(
                String::from_utf8(body).unwrap(),
                expected,
                "{query} at {} bytes",
                16 << szx
            );
        }
    }
}

#[test]
fn discovery_longer_than_the_server_block_is_block_wise() {
    let limits = Limits {
        max_block_size: 64,
        ..Limits::default()
    };
    let mut fx = Fx::with(limits, false);
    let core_body = fx.svc.catalog().core_body().to_vec();
    let reply = fx.ask(&Req::get(".well-known/core"));
    assert_eq!(
        block2(&reply),
        Block {
            num: 0,
            more: true,
            szx: 2
        }
    );
    assert_eq!(parse(&reply).payload, &core_body[..64]);
    assert_eq!(parse(&reply).size2, Some(core_body.len() as u32));
    assert_eq!(fetch_listing(&mut fx, ".well-known/core", 2), core_body);
}

// ---------------------------------------------------------------------------
// §2.4 Block2

#[test]
fn block2_szx_above_server_max_answers_the_same_byte_position() {
    let limits = Limits {
        max_block_size: 64,
        ..Limits::default()
    };
    let mut fx = Fx::with(limits, true);
    let img = fx.img(SZ1025);
    // Client asks NUM 1 at 1024 bytes: byte 1024, which is NUM 16 at 64.
    let reply = fx.ask(&Req::get(&format!("updates/{}", img.id)).block2(1, 6));
    assert_eq!(assert_block(&reply, &img, 16, false, 2), &img.bytes[1024..]);
    // No Block2 at all: the server's own size.
    let reply = fx.ask(&Req::get(&format!("updates/{}", img.id)));
    assert_eq!(assert_block(&reply, &img, 0, true, 2), &img.bytes[..64]);
    // Past 4 MiB: NUM 4096 at 1024 is NUM 65536 at 64.
    let big = fx.img(BIG);
    let reply = fx.ask(&Req::get(&format!("updates/{}", big.id)).block2(4096, 6));
    let at = 4096 * 1024;
    assert_eq!(
        assert_block(&reply, &big, 65536, true, 2),
        &big.bytes[at..at + 64]
    );
}

#[test]
fn block2_szx_below_server_max_is_honoured() {
    let mut fx = Fx::new();
    let img = fx.img(SZ1025);
    let reply = fx.ask(&Req::get(&format!("updates/{}", img.id)).block2(5, 0));
    assert_eq!(assert_block(&reply, &img, 5, true, 0), &img.bytes[80..96]);
    let reply = fx.ask(&Req::get(&format!("updates/{}", img.id)).block2(64, 0));
    assert_eq!(assert_block(&reply, &img, 64, false, 0), &img.bytes[1024..]);
}

#[test]
fn block2_szx_7_is_4_00() {
    let mut fx = Fx::new();
    let uri = format!("updates/{}", fx.img(SZ1025).id);
    for value in [&[0x07][..], &[0x1F], &[0x01, 0x0F]] {
        let reply = fx.ask(&Req::get(&uri).option(CoapOption::Block2.into(), value));
        assert_error(&reply, ResponseType::BadRequest);
    }
}

#[test]
fn block2_num_past_the_end_is_4_02() {
    let mut fx = Fx::with(Limits::default(), true);
    for (name, num) in [
        (SZ1024, 1u32),
        (SZ1025, 2),
        (SZ0, 1),
        (BIG, 4097),
        (BIG, Block::MAX_NUM),
    ] {
        let uri = format!("updates/{}", fx.img(name).id);
        let text = assert_error(
            &fx.ask(&Req::get(&uri).block2(num, 6)),
            ResponseType::BadOption,
        );
        assert!(text.contains("NUM"), "{text}");
    }
}

#[test]
fn block2_num_above_4095_on_a_4_mib_image_returns_the_right_bytes() {
    let mut fx = Fx::with(Limits::default(), true);
    let big = fx.img(BIG);
    let uri = format!("updates/{}", big.id);
    let reply = fx.ask(&Req::get(&uri));
    assert_eq!(parse(&reply).size2, Some(BIG_LEN as u32));
    for num in [4094u32, 4095] {
        let reply = fx.ask(&Req::get(&uri).block2(num, 6));
        let at = num as usize * 1024;
        assert_eq!(
            assert_block(&reply, &big, num, true, 6),
            &big.bytes[at..at + 1024]
        );
    }
    let reply = fx.ask(&Req::get(&uri).block2(4096, 6));
    assert_eq!(
        assert_block(&reply, &big, 4096, false, 6),
        &big.bytes[4 * 1024 * 1024..]
    );
    cross_check(&reply);
    // At 16-byte blocks NUM reaches 2^18 + 6.
    let num = (BIG_LEN / 16) as u32;
    let reply = fx.ask(&Req::get(&uri).block2(num, 0));
    assert_eq!(
        assert_block(&reply, &big, num, false, 0),
        &big.bytes[num as usize * 16..]
    );
}

#[test]
fn size2_on_block_0_and_when_requested() {
    let mut fx = Fx::new();
    let img = fx.img(SZ1025);
    let uri = format!("updates/{}", img.id);
    assert_eq!(parse(&fx.ask(&Req::get(&uri))).size2, Some(1025));
    assert_eq!(parse(&fx.ask(&Req::get(&uri).block2(1, 6))).size2, None);
    let asked = Req::get(&uri)
        .block2(1, 6)
        .uint(CoapOption::Size2.into(), 0);
    assert_eq!(parse(&fx.ask(&asked)).size2, Some(1025));
}

#[test]
fn etag_is_the_image_etag_on_every_block() {
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let uri = format!("updates/{}", img.id);
    for (num, szx) in [(0u32, 6u8), (1, 6), (3, 4), (100, 0)] {
        let reply = fx.ask(&Req::get(&uri).block2(num, szx));
        assert_eq!(parse(&reply).etag, Some(&img.etag[..]));
    }
    // Content, not name: the same bytes under two names share the ETag.
    let (catalog, _) = Catalog::from_files(vec![
        ("X_1_0_0_APP.fmu".into(), vec![1, 2, 3]),
        ("Y_1_0_0_APP.fmu".into(), vec![1, 2, 3]),
    ])
    .unwrap();
    assert_eq!(catalog.images()[0].etag, catalog.images()[1].etag);
}

// ---------------------------------------------------------------------------
// §2.5 everything else

#[test]
fn unknown_path_is_4_04() {
    let mut fx = Fx::new();
    for uri in [
        "",
        "nope",
        "updates/a/b",
        ".well-known",
        "updates/a/b/c/d/e",
        "UPDATES",
    ] {
        let text = assert_error(&fx.ask(&Req::get(uri)), ResponseType::NotFound);
        assert!(!text.is_empty(), "{uri}");
    }
    // Five segments whose first four would match nothing anyway, and a
    // path that would match if cut at four segments.
    let id = fx.img(SZ1).id;
    let long = format!("updates/{id}/x/y/z");
    assert_error(&fx.ask(&Req::get(&long)), ResponseType::NotFound);
}

#[test]
fn other_methods_on_known_paths_are_4_05() {
    let mut fx = Fx::new();
    let id = fx.img(SZ1).id;
    for uri in [
        "updates".to_owned(),
        format!("updates/{id}"),
        ".well-known/core".to_owned(),
    ] {
        for method in [
            RequestType::Post,
            RequestType::Put,
            RequestType::Delete,
            RequestType::Fetch,
        ] {
            let reply = fx.ask(&Req::get(&uri).code(MessageClass::Request(method)));
            assert_error(&reply, ResponseType::MethodNotAllowed);
        }
        // An unassigned method code (0.08..0.31) is a request too
        // (RFC 7252 §5.8: 4.05).
        let reply = fx.ask(&Req::get(&uri).code(MessageClass::from(0x08)));
        assert_error(&reply, ResponseType::MethodNotAllowed);
    }
    assert_error(
        &fx.ask(&Req::get("nope").code(MessageClass::Request(RequestType::Post))),
        ResponseType::NotFound,
    );
}

#[test]
fn unknown_critical_option_is_4_02() {
    let mut fx = Fx::new();
    let uri = format!("updates/{}", fx.img(SZ1).id);
    let text = assert_error(
        &fx.ask(&Req::get(&uri).option(2049, b"x")),
        ResponseType::BadOption,
    );
    assert!(text.contains("2049"), "{text}");
    // If-Match (1) is not implemented; a second Block2 is unrecognised.
    assert_error(
        &fx.ask(&Req::get(&uri).option(1, b"x")),
        ResponseType::BadOption,
    );
    let twice = Req::get(&uri).block2(0, 6).block2(0, 6);
    let text = assert_error(&fx.ask(&twice), ResponseType::BadOption);
    assert!(text.contains("23"), "{text}");
    // A 4-byte Block2 is out of range: unrecognised too.
    let reply = fx.ask(&Req::get(&uri).option(23, &[0, 0, 0, 6]));
    assert_error(&reply, ResponseType::BadOption);
    // Even on an unknown path the critical option wins (RFC 7252 §5.4.1).
    assert_error(
        &fx.ask(&Req::get("nope").option(2049, b"")),
        ResponseType::BadOption,
    );
}

#[test]
fn unknown_elective_options_are_ignored() {
    let mut fx = Fx::new();
    let img = fx.img(SZ1);
    let uri = format!("updates/{}", img.id);
    let req = Req::get(&uri)
        .option(2048, b"x")
        .option(6, &[]) // Observe
        .option(CoapOption::ContentFormat.into(), &[0])
        .option(CoapOption::ContentFormat.into(), &[1]) // repeated elective
        .uint(CoapOption::Size2.into(), 0)
        .uint(CoapOption::Size2.into(), 5); // repeated elective
    let reply = fx.ask(&req);
    assert_eq!(assert_block(&reply, &img, 0, false, 6), img.bytes);
}

#[test]
fn accept_mismatch_is_4_06() {
    let mut fx = Fx::new();
    let img = fx.img(SZ1);
    let uri = format!("updates/{}", img.id);
    let accept: u16 = CoapOption::Accept.into();
    assert_error(
        &fx.ask(&Req::get(&uri).uint(accept, 0)),
        ResponseType::NotAcceptable,
    );
    assert_eq!(
        class(&fx.ask(&Req::get(&uri).uint(accept, 42))),
        MessageClass::Response(ResponseType::Content)
    );
    let lookup = Req::get("updates").payload(&device(b"MOTE", 3, 0, None));
    assert_error(
        &fx.ask(&lookup.clone().uint(accept, 42)),
        ResponseType::NotAcceptable,
    );
    assert_eq!(
        class(&fx.ask(&lookup.uint(accept, 0))),
        MessageClass::Response(ResponseType::Content)
    );
    let core = Req::get(".well-known/core");
    assert_error(
        &fx.ask(&core.clone().uint(accept, 42)),
        ResponseType::NotAcceptable,
    );
    assert_eq!(
        class(&fx.ask(&core.uint(accept, 40))),
        MessageClass::Response(ResponseType::Content)
    );
}

// ---------------------------------------------------------------------------
// §3 message layer

#[test]
fn con_request_gets_ack_with_the_same_mid_and_token() {
    let mut fx = Fx::new();
    let id = fx.img(SZ1).id;
    for (uri, mid, token) in [
        (format!("updates/{id}"), 0u16, &[][..]),
        ("nope".to_owned(), 0xFFFF, &[1, 2, 3, 4, 5, 6, 7, 8][..]),
        (".well-known/core".to_owned(), 0x8000, &[9][..]),
    ] {
        let reply = fx.ask(&Req::get(&uri).mid(mid).token(token));
        let msg = parse(&reply);
        assert_eq!(msg.mtype, MessageType::Acknowledgement);
        assert_eq!(msg.mid, mid);
        assert_eq!(msg.token, token);
        cross_check(&reply);
    }
}

#[test]
fn non_request_gets_non_with_fresh_mids_and_the_same_token() {
    let mut fx = Fx::new();
    let id = fx.img(SZ1025).id;
    let mut mids = Vec::new();
    for uri in [
        format!("updates/{id}"),
        "nope".to_owned(),
        format!("updates/{id}"),
        ".well-known/core".into(),
    ] {
        let reply = fx.ask(&Req::get(&uri).non().mid(7).token(&[0xEE, 0xFF]));
        let msg = parse(&reply);
        assert_eq!(msg.mtype, MessageType::NonConfirmable);
        assert_eq!(msg.token, &[0xEE, 0xFF]);
        mids.push(msg.mid);
    }
    for pair in mids.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "consecutive NON replies share a MID: {mids:?}"
        );
    }
}

#[test]
fn empty_con_is_answered_with_rst() {
    let mut fx = Fx::new();
    let reply = fx.handle(peer(A), T0, &[0x40, 0x00, 0xAB, 0xCD]).unwrap();
    assert_rst(&reply, 0xABCD);
    cross_check(&reply);
}

#[test]
fn empty_non_ack_and_rst_get_nothing() {
    let mut fx = Fx::new();
    assert_eq!(
        fx.handle(peer(A), T0, &[0x50, 0x00, 0, 1]),
        Err(Dropped::NotARequest)
    );
    assert_eq!(
        fx.handle(peer(A), T0, &[0x60, 0x00, 0, 1]),
        Err(Dropped::AckOrReset)
    );
    assert_eq!(
        fx.handle(peer(A), T0, &[0x70, 0x00, 0, 1]),
        Err(Dropped::AckOrReset)
    );
    // An ACK or RST carrying a request code is not a request either.
    let ack = Req::get("nope").mid(3);
    let mut bytes = ack.bytes();
    bytes[0] = (bytes[0] & 0xCF) | 0x20;
    assert_eq!(fx.handle(peer(A), T0, &bytes), Err(Dropped::AckOrReset));
}

#[test]
fn response_code_in_con_is_rst_and_in_non_dropped() {
    let mut fx = Fx::new();
    for code in [0x45u8, 0x84, 0x20, 0xE0] {
        let reply = fx.handle(peer(A), T0, &[0x40, code, 0x01, 0x02]).unwrap();
        assert_rst(&reply, 0x0102);
        assert_eq!(
            fx.handle(peer(A), T0, &[0x50, code, 0x01, 0x02]),
            Err(Dropped::NotARequest)
        );
    }
}

#[test]
fn format_error_in_con_is_rst_and_in_non_dropped() {
    let mut fx = Fx::new();
    let bodies: [&[u8]; 6] = [
        &[0xB1, b'x', 0xFF], // payload marker, no payload
        &[0xF1, 0x00],       // delta 15
        &[0xBF, b'x'],       // length 15
        &[0xB5, b'x'],       // truncated option
        &[0xE0, 0xFF, 0xFF], // option number past 65535
        &[0xE0, 0x01],       // truncated extension
    ];
    for body in bodies {
        let mut con = vec![0x40, 0x01, 0x55, 0x66];
        con.extend_from_slice(body);
        assert_rst(&fx.handle(peer(A), T0, &con).unwrap(), 0x5566);
        con[0] = 0x50;
        assert_eq!(
            fx.handle(peer(A), T0, &con),
            Err(Dropped::Malformed),
            "{body:02x?}"
        );
    }
    // TKL 9 and truncated token: header readable, so CON gets an RST.
    assert_rst(&fx.handle(peer(A), T0, &[0x49, 0x01, 0, 9]).unwrap(), 9);
    assert_rst(
        &fx.handle(peer(A), T0, &[0x42, 0x01, 0, 10, 0xAA]).unwrap(),
        10,
    );
    // Empty message with a token.
    assert_rst(
        &fx.handle(peer(A), T0, &[0x41, 0x00, 0, 11, 0xAA]).unwrap(),
        11,
    );
    // No header, or another version: nothing.
    assert_eq!(
        fx.handle(peer(A), T0, &[0x40, 0x01, 0]),
        Err(Dropped::TooShort)
    );
    assert_eq!(fx.handle(peer(A), T0, &[]), Err(Dropped::TooShort));
    assert_eq!(
        fx.handle(peer(A), T0, &[0x80, 0x01, 0, 1]),
        Err(Dropped::BadVersion)
    );
    // The service keeps serving afterwards.
    let id = fx.img(SZ1).id;
    assert_eq!(
        class(&fx.ask(&Req::get(&format!("updates/{id}")))),
        MessageClass::Response(ResponseType::Content)
    );
}

#[test]
fn duplicate_con_gets_a_byte_identical_reply() {
    let mut fx = Fx::with(Limits::default(), false);
    let id = fx.img(SZ1025).id;
    let legacy_a = Req::get("updates")
        .payload(&device(b"MOTE", 3, 0, Some(10)))
        .mid(100);
    let legacy_b = Req::get("updates")
        .payload(&device(b"SZ1025", 3, 0, Some(0)))
        .mid(100);
    let requests = [
        Req::get(&format!("updates/{id}")).block2(1, 6).mid(1),
        Req::get("updates")
            .payload(&device(b"MOTE", 3, 0, None))
            .mid(2),
        Req::get("updates?pid=MOTE&type=APP&version=1.0.0").mid(3),
        Req::get(".well-known/core?rt=fw.image").block2(1, 0).mid(4),
        Req::get("nope").mid(5),
        Req::get("updates")
            .payload(&device(b"MOTE", 3, u32::MAX, Some(0)))
            .mid(6),
        legacy_a.clone(),
        Req::get("updates").block2(1, 6).mid(101),
    ];
    for req in &requests {
        let bytes = req.bytes();
        let first = fx.handle(peer(A), T0, &bytes).unwrap();
        let second = fx.handle(peer(A), T0 + 2_000, &bytes).unwrap();
        assert_eq!(first, second, "{req:?}");
    }
    // Interleaved with another peer's transfer of another image.
    let first = fx.handle(peer(A), T0, &legacy_a.bytes()).unwrap();
    let cont_a = Req::get("updates").block2(1, 6).mid(102).bytes();
    let first_cont = fx.handle(peer(A), T0 + 1, &cont_a).unwrap();
    fx.handle(peer(B), T0 + 2, &legacy_b.bytes()).unwrap();
    fx.handle(
        peer(B),
        T0 + 3,
        &Req::get("updates").block2(1, 6).mid(102).bytes(),
    )
    .unwrap();
    assert_eq!(
        fx.handle(peer(A), T0 + 4, &legacy_a.bytes()).unwrap(),
        first
    );
    assert_eq!(fx.handle(peer(A), T0 + 5, &cont_a).unwrap(), first_cont);
}

/// A request of exactly `len` bytes: CON GET /updates/{id} padded with an
/// elective option.
fn padded_request(mtype_bits: u8, tkl: u8, len: usize) -> Vec<u8> {
    let mut d = vec![0x40 | (mtype_bits << 4) | tkl, 0x01, 0x0A, 0x0B];
    d.extend_from_slice(&vec![0xCC; usize::from(tkl)]);
    // Option 2048, elective, with extended length 14.
    let value_len = len - d.len() - 5;
    let delta = (2048u16 - 269).to_be_bytes();
    let length = (value_len as u16 - 269).to_be_bytes();
    d.extend_from_slice(&[0xEE, delta[0], delta[1], length[0], length[1]]);
    d.extend_from_slice(&vec![0x11; value_len]);
    assert_eq!(d.len(), len);
    d
}

#[test]
fn datagram_longer_than_max_request_len_is_4_13_with_size1() {
    let mut fx = Fx::new();
    for len in [MAX_REQUEST_LEN + 1, 4000] {
        let con = padded_request(0, 3, len);
        let reply = fx.handle(peer(A), T0, &con).unwrap();
        let text = assert_error(&reply, ResponseType::RequestEntityTooLarge);
        assert!(text.contains(&MAX_REQUEST_LEN.to_string()), "{text}");
        let msg = parse(&reply);
        assert_eq!(
            (msg.mtype, msg.mid, msg.token),
            (MessageType::Acknowledgement, 0x0A0B, &[0xCC; 3][..])
        );
        let coap = Packet::from_bytes(&reply).unwrap();
        let size1 = coap.get_first_option(CoapOption::Size1).expect("Size1");
        assert_eq!(wire::decode_uint(size1), Some(MAX_REQUEST_LEN as u32));

        let non = padded_request(1, 0, len);
        let msg_bytes = fx.handle(peer(A), T0, &non).unwrap();
        let msg = parse(&msg_bytes);
        assert_eq!(msg.mtype, MessageType::NonConfirmable);
        assert_eq!(
            msg.class(),
            MessageClass::Response(ResponseType::RequestEntityTooLarge)
        );
    }
    // Unreadable or unanswerable headers: dropped.
    let mut bad_version = padded_request(0, 0, 2000);
    bad_version[0] &= 0x3F;
    assert!(fx.handle(peer(A), T0, &bad_version).is_err());
    let mut tkl9 = padded_request(0, 0, 2000);
    tkl9[0] |= 9;
    assert!(fx.handle(peer(A), T0, &tkl9).is_err());
    let ack = padded_request(2, 0, 2000);
    assert!(fx.handle(peer(A), T0, &ack).is_err());
    let mut response = padded_request(0, 0, 2000);
    response[1] = 0x45;
    assert!(fx.handle(peer(A), T0, &response).is_err());
    // Exactly MAX_REQUEST_LEN is served (here: 4.04 for an empty path).
    let max = padded_request(0, 0, MAX_REQUEST_LEN);
    assert_error(
        &fx.handle(peer(A), T0, &max).unwrap(),
        ResponseType::NotFound,
    );
}

// ---------------------------------------------------------------------------
// Echo (RFC 9175 §2.4)

fn echo_of(reply: &[u8]) -> Vec<u8> {
    let msg = parse(reply);
    assert_eq!(
        msg.class(),
        MessageClass::Response(ResponseType::Unauthorized)
    );
    msg.echo.expect("Echo option").to_vec()
}

#[test]
fn echo_challenges_an_unverified_peer_whose_reply_would_amplify() {
    let limits = Limits {
        echo: true,
        ..Limits::default()
    };
    let mut fx = Fx::with(limits, false);
    let img = fx.img(SZ1024);
    let req = Req::get(&format!("updates/{}", img.id));
    let request_len = req.bytes().len();
    let challenge = fx.ask(&req);
    let echo = echo_of(&challenge);
    assert!(
        challenge.len() <= 3 * request_len,
        "the challenge itself must not amplify"
    );
    let msg = parse(&challenge);
    assert_eq!(
        (msg.mtype, msg.mid, msg.token),
        (MessageType::Acknowledgement, MID, &TOKEN[..])
    );
    cross_check(&challenge);
    let coap = Packet::from_bytes(&challenge).unwrap();
    assert_eq!(
        coap.get_first_option(CoapOption::Unknown(wire::OPTION_ECHO)),
        Some(&echo)
    );

    // Repeating with the Echo value is served.
    let reply = fx.ask(&req.clone().option(wire::OPTION_ECHO, &echo));
    assert_eq!(assert_block(&reply, &img, 0, false, 6), img.bytes);
    // Still valid in the next window, not two windows later.
    let later = fx.ask_from(
        A,
        T0 + 61_000,
        &req.clone().option(wire::OPTION_ECHO, &echo),
    );
    assert_eq!(class(&later), MessageClass::Response(ResponseType::Content));
    let stale = fx.ask_from(
        A,
        T0 + 200_000,
        &req.clone().option(wire::OPTION_ECHO, &echo),
    );
    echo_of(&stale);

    // A wrong Echo, or another address's Echo, is challenged again.
    let mut wrong = echo.clone();
    wrong[0] ^= 1;
    echo_of(&fx.ask(&req.clone().option(wire::OPTION_ECHO, &wrong)));
    echo_of(&fx.ask_from(B, T0, &req.clone().option(wire::OPTION_ECHO, &echo)));
}

#[test]
fn echo_does_not_challenge_small_replies() {
    let limits = Limits {
        echo: true,
        ..Limits::default()
    };
    let mut fx = Fx::with(limits, false);
    assert_error(&fx.ask(&Req::get("nope")), ResponseType::NotFound);
    let lookup = fx.ask(&Req::get("updates").payload(&device(b"MOTE", 3, 0, None)));
    assert_eq!(
        class(&lookup),
        MessageClass::Response(ResponseType::Content)
    );
    // A small image's block: 1 byte of body.
    let id = fx.img(SZ1).id;
    assert_eq!(
        class(&fx.ask(&Req::get(&format!("updates/{id}")))),
        MessageClass::Response(ResponseType::Content)
    );
    assert_rst(&fx.handle(peer(A), T0, &[0x40, 0, 0, 5]).unwrap(), 5);
}

#[test]
fn echo_challenges_legacy_continuations_then_serves_them() {
    let limits = Limits {
        echo: true,
        ..Limits::default()
    };
    let mut fx = Fx::with(limits, false);
    let img = fx.img(MOTE_NEW);
    let legacy = Req::get("updates").payload(&device(b"MOTE", 3, 0, Some(0)));
    let echo = echo_of(&fx.ask(&legacy));
    let reply = fx.ask(&legacy.option(wire::OPTION_ECHO, &echo));
    assert_eq!(assert_block(&reply, &img, 0, true, 6), &img.bytes[..1024]);
    let cont = Req::get("updates").block2(1, 6);
    echo_of(&fx.ask(&cont));
    let reply = fx.ask(&cont.option(wire::OPTION_ECHO, &echo));
    assert_eq!(assert_block(&reply, &img, 1, false, 6), &img.bytes[1024..]);
}

// ---------------------------------------------------------------------------
// Rate limit (RFC 8516 4.29)

fn rate_limited(limit: u32, capacity: usize) -> Fx {
    let limits = Limits {
        rate_limit: Some(limit),
        rate_table_capacity: capacity,
        ..Limits::default()
    };
    Fx::with(limits, false)
}

#[test]
fn third_request_in_the_same_second_is_4_29_with_max_age() {
    let mut fx = rate_limited(2, 64);
    let id = fx.img(SZ1).id;
    let req = Req::get(&format!("updates/{id}"));
    for t in [T0, T0 + 300] {
        assert_eq!(
            class(&fx.ask_from(A, t, &req)),
            MessageClass::Response(ResponseType::Content)
        );
    }
    let reply = fx.ask_from(A, T0 + 999, &req.clone().mid(77));
    let msg = parse(&reply);
    assert_eq!(
        msg.class(),
        MessageClass::Response(ResponseType::TooManyRequests)
    );
    assert_eq!(
        (msg.mtype, msg.mid, msg.token),
        (MessageType::Acknowledgement, 77, &TOKEN[..])
    );
    assert_eq!(msg.max_age, Some(1));
    assert!(
        reply.len() <= req.bytes().len(),
        "4.29 is no larger than the request"
    );
    cross_check(&reply);
    // Another address is not affected; the next second is served again.
    assert_eq!(
        class(&fx.ask_from(B, T0 + 999, &req)),
        MessageClass::Response(ResponseType::Content)
    );
    assert_eq!(
        class(&fx.ask_from(A, T0 + 1000, &req)),
        MessageClass::Response(ResponseType::Content)
    );
    // NON: a NON 4.29 with the same token.
    let non = req.non();
    fx.ask_from(A, T0 + 1001, &non);
    let reply = fx.ask_from(A, T0 + 1002, &non);
    let msg = parse(&reply);
    assert_eq!(
        (msg.mtype, msg.class()),
        (
            MessageType::NonConfirmable,
            MessageClass::Response(ResponseType::TooManyRequests)
        )
    );
    assert_eq!(msg.token, &TOKEN);
}

#[test]
fn rate_limited_request_smaller_than_its_4_29_is_dropped() {
    let mut fx = rate_limited(2, 64);
    // 12 bytes: header and an 8-byte token, no path (4.04). Its 4.29
    // would be 14 bytes.
    let tiny = Req::get("").token(&[1; 8]).bytes();
    assert_eq!(tiny.len(), 12);
    for _ in 0..2 {
        assert_error(
            &fx.handle(peer(A), T0, &tiny).unwrap(),
            ResponseType::NotFound,
        );
    }
    assert_eq!(fx.handle(peer(A), T0, &tiny), Err(Dropped::RateLimited));
}

#[test]
fn rate_limit_counts_per_address_not_per_port() {
    let mut fx = rate_limited(2, 64);
    let req = Req::get("nope").bytes();
    fx.handle(peer_port(A, 1000), T0, &req).unwrap();
    fx.handle(peer_port(A, 2000), T0, &req).unwrap();
    let reply = fx.handle(peer_port(A, 3000), T0, &req).unwrap();
    assert_eq!(
        class(&reply),
        MessageClass::Response(ResponseType::TooManyRequests)
    );
}

#[test]
fn rate_limit_window_does_not_reopen_within_a_second() {
    // First request late in second 9, then three in second 10: the third
    // of those is over the limit, and so is a fourth just before second
    // 11, 1000 ms after the address was first seen.
    let mut fx = rate_limited(2, 64);
    let req = Req::get("nope").bytes();
    let second = |ms: u64| 10_000 + ms;
    assert_ne!(
        class(&fx.handle(peer(A), second(0) - 1, &req).unwrap()),
        MessageClass::Response(ResponseType::TooManyRequests)
    );
    for t in [second(0), second(500)] {
        assert_error(
            &fx.handle(peer(A), t, &req).unwrap(),
            ResponseType::NotFound,
        );
    }
    for t in [second(998), second(999)] {
        let reply = fx.handle(peer(A), t, &req).unwrap();
        assert_eq!(
            class(&reply),
            MessageClass::Response(ResponseType::TooManyRequests),
            "at {t}"
        );
    }
    assert_error(
        &fx.handle(peer(A), second(1000), &req).unwrap(),
        ResponseType::NotFound,
    );
}

#[test]
fn rate_table_never_exceeds_its_capacity() {
    let mut fx = rate_limited(2, 128);
    let req = Req::get("nope").bytes();
    for n in 0..10_000u32 {
        fx.handle(peer(n), T0 + u64::from(n / 100), &req).unwrap();
        assert!(fx.svc.rate_table_len() <= 128);
    }
    assert_eq!(fx.svc.rate_table_len(), 128);
}

#[test]
fn continuation_table_never_exceeds_its_capacity() {
    let limits = Limits {
        continuation_capacity: 256,
        ..Limits::default()
    };
    let mut fx = Fx::with(limits, false);
    let legacy = Req::get("updates")
        .payload(&device(b"MOTE", 3, 0, Some(0)))
        .bytes();
    let cont = Req::get("updates").block2(1, 6).bytes();
    for n in 0..10_000u32 {
        fx.handle(peer(n), T0, &legacy).unwrap();
        assert!(fx.svc.continuation_count() <= 256);
    }
    assert_eq!(fx.svc.continuation_count(), 256);
    // The newest peers are remembered, the oldest evicted.
    assert_eq!(
        class(&fx.handle(peer(9_999), T0, &cont).unwrap()),
        MessageClass::Response(ResponseType::Content)
    );
    assert_error(
        &fx.handle(peer(0), T0, &cont).unwrap(),
        ResponseType::BadRequest,
    );
}

#[test]
fn image_offset_query_resumes_on_every_block_without_payload() {
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let uri = format!("updates/{}?offset=100", img.id);
    let body = img.from(100);
    let first = fx.ask(&Req::get(&uri).block2(0, 4));
    assert_eq!(
        assert_block(&first, &body, 0, true, 4),
        &img.bytes[100..356]
    );
    // Stock clients send the query again, and no payload, with block 1.
    let second = fx.ask(&Req::get(&uri).block2(1, 4).mid(MID + 1).token(&[9]));
    assert_eq!(
        assert_block(&second, &body, 1, true, 4),
        &img.bytes[356..612]
    );
    // A payload and a query that agree are served; that disagree, 4.00.
    let agree = Req::get(&uri)
        .block2(0, 4)
        .payload(&100u32.to_le_bytes())
        .mid(MID + 2);
    assert_eq!(fx.ask(&agree), {
        let mut same = first.clone();
        same[2..4].copy_from_slice(&(MID + 2).to_be_bytes());
        same
    });
    let disagree = Req::get(&uri).payload(&7u32.to_le_bytes()).mid(MID + 3);
    assert_error(&fx.ask(&disagree), ResponseType::BadRequest);
    for bad in ["offset=x", "offset=4294967296", "offset=1&offset=1"] {
        let req = Req::get(&format!("updates/{}?{bad}", img.id)).mid(MID + 4);
        assert_error(&fx.ask(&req), ResponseType::BadRequest);
    }
    let past = Req::get(&format!("updates/{}?offset={}", img.id, MOTE_NEW_LEN + 1)).mid(MID + 5);
    assert_error(&fx.ask(&past), ResponseType::BadRequest);
}

#[test]
fn duplicate_continuation_is_answered_from_its_first_state_but_a_reused_mid_is_new() {
    let mut fx = Fx::with(Limits::default(), true);
    let mote = fx.img(MOTE_NEW);
    let big = fx.img(BIG);
    fx.ask(&Req::get("updates").payload(&device(b"MOTE", 3, 0, Some(0))));
    let cont = Req::get("updates").block2(1, 4).mid(MID + 1);
    let first = fx.ask_from(A, T0 + 1, &cont);
    assert_eq!(
        assert_block(&first, &mote, 1, true, 4),
        &mote.bytes[256..512]
    );
    // The peer starts another transfer; a late duplicate of the old
    // continuation still gets the bytes it got the first time.
    fx.ask_from(
        A,
        T0 + 2,
        &Req::get("updates")
            .payload(&device(b"BIG", 3, 0, Some(0)))
            .mid(MID + 2),
    );
    assert_eq!(fx.ask_from(A, T0 + 3, &cont), first);
    // The same MID with other bytes (a rebooted device) is a new request.
    let reused = Req::get("updates").block2(2, 4).mid(MID + 1);
    let reply = fx.ask_from(A, T0 + 4, &reused);
    assert_eq!(assert_block(&reply, &big, 2, true, 4), &big.bytes[512..768]);
}

#[test]
fn image_offset_payload_sent_only_with_block_0_continues_from_that_offset() {
    // libcoap's `-f` and node-coap send the payload with block 0 only.
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let uri = format!("updates/{}", img.id);
    let first = fx.ask(&Req::get(&uri).block2(0, 4).payload(&1000u32.to_le_bytes()));
    assert_eq!(
        assert_block(&first, &img.from(1000), 0, true, 4),
        &img.bytes[1000..1256]
    );
    let next = fx.ask(&Req::get(&uri).block2(1, 4).mid(MID + 1).token(&[3]));
    assert_eq!(
        assert_block(&next, &img.from(1000), 1, true, 4),
        &img.bytes[1256..1512]
    );
    // Another peer, or a new download from block 0, starts at 0.
    let other = fx.ask_from(B, T0, &Req::get(&uri).block2(1, 4).mid(MID + 2));
    assert_eq!(assert_block(&other, &img, 1, true, 4), &img.bytes[256..512]);
    fx.ask(&Req::get(&uri).block2(0, 4).mid(MID + 3));
    let fresh = fx.ask(&Req::get(&uri).block2(1, 4).mid(MID + 4));
    assert_eq!(assert_block(&fresh, &img, 1, true, 4), &img.bytes[256..512]);
}

#[test]
fn late_duplicate_of_an_older_start_does_not_reset_the_transfer() {
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let old_start = Req::get("updates")
        .payload(&device(b"MOTE", 3, 0, Some(0)))
        .block2(0, 4);
    fx.ask_from(A, T0, &old_start);
    let new_start = old_start
        .clone()
        .payload(&device(b"MOTE", 3, 0, Some(700)))
        .mid(MID + 1);
    fx.ask_from(A, T0 + 1, &new_start);
    // The network delivers a late copy of the first request: answered
    // again, byte for byte, but the peer's transfer stays at OFFSET 700.
    fx.ask_from(A, T0 + 2, &old_start);
    let cont = fx.ask_from(A, T0 + 3, &Req::get("updates").block2(1, 4).mid(MID + 2));
    assert_eq!(
        assert_block(&cont, &img.from(700), 1, true, 4),
        &img.bytes[956..1212]
    );
}

#[test]
fn echo_challenged_request_changes_no_state() {
    let limits = Limits {
        echo: true,
        ..Limits::default()
    };
    let mut fx = Fx::with(limits, false);
    let img = fx.img(MOTE_NEW);
    let start = Req::get("updates")
        .payload(&device(b"MOTE", 3, 0, Some(0)))
        .block2(0, 4);
    let echo = echo_of(&fx.ask(&start));
    fx.ask(&start.clone().option(wire::OPTION_ECHO, &echo).mid(MID + 1));
    // A spoofed request from the same address and port without Echo asks
    // for OFFSET 7: challenged, and the victim's transfer is untouched.
    let spoofed = start
        .clone()
        .payload(&device(b"MOTE", 3, 0, Some(7)))
        .mid(MID + 2);
    echo_of(&fx.ask(&spoofed));
    let cont = Req::get("updates")
        .block2(1, 4)
        .mid(MID + 3)
        .option(wire::OPTION_ECHO, &echo);
    let reply = fx.ask(&cont);
    assert_eq!(assert_block(&reply, &img, 1, true, 4), &img.bytes[256..512]);
}

#[test]
fn non_request_with_unknown_critical_option_is_rejected_silently() {
    // RFC 7252 §5.4.1: rejected (§4.3), where a CON one gets 4.02.
    let mut fx = Fx::new();
    let req = Req::get("updates").option(2049, b"x");
    assert_eq!(
        fx.handle(peer(A), T0, &req.clone().non().bytes()),
        Err(Dropped::BadOptionNon)
    );
    assert_error(&fx.ask(&req), ResponseType::BadOption);
}

#[test]
fn echo_challenge_is_not_sent_when_it_would_amplify_itself() {
    let limits = Limits {
        echo: true,
        ..Limits::default()
    };
    let mut fx = Fx::with(limits, false);
    // A bare 4-byte GET: its 4.04 would be 5 times larger, the 4.01 with an
    // 8-byte Echo still 3.5 times: nothing is sent.
    assert_eq!(
        fx.handle(peer(A), T0, &[0x40, 0x01, 0x00, 0x01]),
        Err(Dropped::Unverified)
    );
}

#[test]
fn image_offset_payload_on_a_resumed_block_continues_from_that_offset() {
    // node-coap resuming: the payload travels with the first block it asks
    // for, which is not block 0, and the later blocks carry none.
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let uri = format!("updates/{}", img.id);
    let body = img.from(100);
    let first = fx.ask(&Req::get(&uri).block2(2, 4).payload(&100u32.to_le_bytes()));
    assert_eq!(
        assert_block(&first, &body, 2, true, 4),
        &img.bytes[612..868]
    );
    let next = fx.ask(&Req::get(&uri).block2(3, 4).mid(MID + 1));
    assert_eq!(
        assert_block(&next, &body, 3, true, 4),
        &img.bytes[868..1124]
    );
}

// ---------------------------------------------------------------------------
// One ETag, one body: a wrong guess of the body is always visible

#[test]
fn every_body_has_its_own_etag_and_the_whole_image_keeps_the_content_tag() {
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let uri = format!("updates/{}", img.id);
    let whole = parse(&fx.ask(&Req::get(&uri))).etag.map(<[u8]>::to_vec);
    assert_eq!(whole.as_deref(), Some(&img.etag[..]));
    let mut tags = vec![img.etag];
    for offset in [1u32, 100, 1000, MOTE_NEW_LEN as u32] {
        let reply = fx.ask(&Req::get(&uri).payload(&offset.to_le_bytes()).mid(MID + 1));
        let tag: [u8; 8] = parse(&reply).etag.unwrap().try_into().unwrap();
        assert_eq!(tag, img.from(offset).etag);
        assert!(!tags.contains(&tag), "OFFSET {offset} shares a tag");
        tags.push(tag);
    }
}

#[test]
fn offset_query_changes_no_state_a_plain_download_beside_it_could_pick_up() {
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let queried = format!("updates/{}?offset=1000", img.id);
    let plain = format!("updates/{}", img.id);
    fx.ask(&Req::get(&queried).block2(0, 6));
    fx.ask(&Req::get(&plain).block2(0, 6).mid(MID + 1));
    fx.ask(&Req::get(&queried).block2(0, 6).mid(MID + 2));
    let reply = fx.ask(&Req::get(&plain).block2(1, 6).mid(MID + 3));
    assert_eq!(
        assert_block(&reply, &img, 1, false, 6),
        &img.bytes[1024..2000]
    );
}

#[test]
fn plain_block_0_forgets_the_peers_remembered_offset() {
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let uri = format!("updates/{}", img.id);
    fx.ask(&Req::get(&uri).block2(0, 4).payload(&500u32.to_le_bytes()));
    fx.ask(&Req::get(&uri).block2(0, 4).mid(MID + 1));
    let reply = fx.ask(&Req::get(&uri).block2(1, 4).mid(MID + 2));
    assert_eq!(assert_block(&reply, &img, 1, true, 4), &img.bytes[256..512]);
}

#[test]
fn remembered_offset_is_forgotten_after_its_last_block() {
    // An OFFSET download run to its end, then a plain resume at block 5
    // from the same endpoint: the whole image, not the old OFFSET body.
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let uri = format!("updates/{}", img.id);
    fx.ask(&Req::get(&uri).block2(0, 4).payload(&1000u32.to_le_bytes()));
    let mut mid = MID;
    for num in 1..4 {
        mid += 1;
        fx.ask(&Req::get(&uri).block2(num, 4).mid(mid));
    }
    let last = fx.ask(&Req::get(&uri).block2(3, 4).mid(mid));
    assert!(
        !block2(&last).more,
        "block 3 of 1000 bytes at 256 is the last"
    );
    let resumed = fx.ask(&Req::get(&uri).block2(5, 4).mid(mid + 1));
    assert_eq!(
        assert_block(&resumed, &img, 5, true, 4),
        &img.bytes[1280..1536]
    );
    // Also when the device repeated its payload on every block.
    let with_payload = |num: u32, mid: u16| {
        Req::get(&uri)
            .block2(num, 6)
            .payload(&100u32.to_le_bytes())
            .mid(mid)
    };
    fx.ask(&with_payload(0, mid + 2));
    fx.ask(&with_payload(1, mid + 3));
    let resumed = fx.ask(&Req::get(&uri).block2(1, 6).mid(mid + 4));
    assert_eq!(
        assert_block(&resumed, &img, 1, false, 6),
        &img.bytes[1024..]
    );
}

#[test]
fn continuation_without_state_is_the_whole_image_under_its_own_tag() {
    // The state of an OFFSET-on-block-0 download is lost (restart,
    // eviction, a new NAT port): the next payload-less block is the whole
    // image's, under the whole image's tag, so the client sees the change.
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let uri = format!("updates/{}", img.id);
    let first = fx.ask(&Req::get(&uri).block2(0, 4).payload(&1000u32.to_le_bytes()));
    let first_tag = parse(&first).etag.unwrap().to_vec();
    let rebound = peer_port(A, 40_000);
    let next = fx
        .handle(
            rebound,
            T0 + 1,
            &Req::get(&uri).block2(1, 4).mid(MID + 1).bytes(),
        )
        .unwrap();
    assert_eq!(assert_block(&next, &img, 1, true, 4), &img.bytes[256..512]);
    assert_ne!(parse(&next).etag.unwrap(), &first_tag[..]);
}

#[test]
fn interleaved_legacy_transfers_keep_one_tag_per_body() {
    let mut fx = Fx::with(Limits::default(), true);
    let mote = fx.img(MOTE_NEW);
    let big = fx.img(BIG);
    let a = fx.ask(&Req::get("updates").payload(&device(b"MOTE", 3, 0, Some(0))));
    let b = fx.ask(
        &Req::get("updates")
            .payload(&device(b"BIG", 3, 0, Some(500)))
            .mid(MID + 1),
    );
    assert_ne!(parse(&a).etag, parse(&b).etag);
    let next = fx.ask(&Req::get("updates").block2(1, 6).mid(MID + 2));
    assert_eq!(
        assert_block(&next, &big.from(500), 1, true, 6),
        &big.bytes[500 + 1024..500 + 2048]
    );
    assert_ne!(parse(&next).etag, Some(&mote.etag[..]));
}

// ---------------------------------------------------------------------------
// RFC 7252 §5.10.2 and §4.4

#[test]
fn proxy_uri_and_proxy_scheme_are_5_05_for_con_and_non() {
    let mut fx = Fx::new();
    for (number, value) in [(35u16, &b"coap://example.org/x"[..]), (39, b"coap")] {
        let req = Req::get("updates").option(number, value);
        let reply = fx.ask(&req);
        assert_error(&reply, ResponseType::ProxyingNotSupported);
        assert_eq!(parse(&reply).mtype, MessageType::Acknowledgement);
        let reply = fx.ask(&req.clone().non());
        assert_error(&reply, ResponseType::ProxyingNotSupported);
        assert_eq!(parse(&reply).mtype, MessageType::NonConfirmable);
    }
}

#[test]
fn non_message_ids_count_per_endpoint_from_a_keyed_start() {
    let mut fx = Fx::new();
    let req = Req::get("nope").non();
    let mid_to = |fx: &mut Fx, p: Peer| parse(&fx.handle(p, T0, &req.bytes()).unwrap()).mid;
    let x = peer_port(A, 1000);
    let first = mid_to(&mut fx, x);
    // 70,000 NON replies to others, more than the Message ID space, do not
    // move this endpoint's counter.
    for i in 0..70_000u32 {
        mid_to(&mut fx, peer_port(B, (i % 4) as u16 + 1));
    }
    assert_eq!(mid_to(&mut fx, x), first.wrapping_add(1));
    // Another endpoint and another service (a restart) start elsewhere.
    let y = peer_port(A, 1001);
    assert_ne!(mid_to(&mut fx, y), first);
    let restarted_keys = Keys {
        message_ids: SipKey([7, 8]),
        ..KEYS
    };
    let mut restarted = Fx::with_keys(Limits::default(), false, restarted_keys);
    assert_ne!(mid_to(&mut restarted, x), first);
}

// ---------------------------------------------------------------------------
// RFC 7252 §8: requests sent to a multicast group

/// The reply to `req` sent to a group, or why there is none.
fn by_multicast(fx: &mut Fx, req: &Req) -> Result<Vec<u8>, Dropped> {
    let arrival = Arrival {
        multicast: true,
        ifindex: 3,
        ..Arrival::default()
    };
    match fx.svc.handle_request(
        &Request::new(peer(A), T0, &req.bytes()).arrived(arrival),
        &mut fx.out,
    ) {
        Action::Reply { len, .. } => Ok(fx.out[..len].to_vec()),
        Action::Drop(reason) => Err(reason),
    }
}

#[test]
fn multicast_non_discovery_and_a_found_lookup_are_answered() {
    let mut fx = Fx::new();
    let listing = by_multicast(&mut fx, &Req::get(".well-known/core?rt=fw.image").non()).unwrap();
    assert!(!parse(&listing).payload.is_empty());
    let lookup = Req::get("updates")
        .payload(&device(b"MOTE", 3, 0, None))
        .non();
    let reply = by_multicast(&mut fx, &lookup).unwrap();
    assert_eq!(parse(&reply).payload, fx.img(MOTE_NEW).id.as_bytes());
}

#[test]
fn multicast_gets_no_error_no_rst_no_empty_answer_and_no_con() {
    let mut fx = Fx::new();
    let silent = [
        Req::get("nothing").non(),
        Req::get(".well-known/core?rt=no-such-type").non(),
        Req::get("updates")
            .payload(&device(b"MOTE", 3, u32::MAX, Some(0)))
            .non(),
        Req::get("updates")
            .payload(&device(b"MOTE", 3, u32::MAX, None))
            .non(),
        Req::get(".well-known/core"),
    ];
    for req in &silent {
        assert_eq!(
            by_multicast(&mut fx, req),
            Err(Dropped::Multicast),
            "{req:?}"
        );
    }
    // A malformed Confirmable message or a ping sent to a group: no RST.
    let mut fx = Fx::new();
    for datagram in [
        &[0x40u8, 0x00, 0x00, 0x01][..],
        &[0x40, 0x01, 0x00, 0x02, 0xFF],
    ] {
        let got = fx.svc.handle_request(
            &Request::new(peer(A), T0, datagram).arrived(Arrival {
                multicast: true,
                ifindex: 3,
                ..Arrival::default()
            }),
            &mut fx.out,
        );
        assert!(matches!(got, Action::Drop(_)), "{datagram:?}: {got:?}");
    }
    // The same requests by unicast are answered.
    assert_error(&fx.ask(&Req::get("nothing").non()), ResponseType::NotFound);
}

// The `--files` tree: every other path is a file or a listing of it.

/// A temporary directory holding a file tree, removed on drop.
struct TreeDir(std::path::PathBuf);

impl TreeDir {
    fn new(tag: &str) -> TreeDir {
        let path =
            std::env::temp_dir().join(format!("iot-ota-service-tree-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TreeDir(path)
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(path, bytes).expect("write");
    }
}

impl Drop for TreeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SUIT: &str = "fw/app/board/riot.suit.latest.bin";
const SLOT0: &str = "fw/app/board/slot0.5.bin";

/// A service over the usual catalog and a tree with the RIOT files (the
/// slot 200 bytes, the manifest 5) and `top` (1 byte).
fn tree_fx(tag: &str) -> (Fx, TreeDir, Vec<u8>) {
    let dir = TreeDir::new(tag);
    let slot = image_bytes(200, 7);
    dir.write(SLOT0, &slot);
    dir.write(SUIT, b"suit!");
    dir.write("top", b"t");
    let far = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let tree = crate::tree::FileTree::load(&dir.0, far)
        .expect("tree loads")
        .next
        .expect("a tree");
    let mut fx = Fx::new();
    fx.svc.replace_tree(Some(tree));
    (fx, dir, slot)
}

/// CON GET of the Uri-Path segments `segments`, kept as given (empty ones
/// too).
fn get_segments(segments: &[&str]) -> Req {
    segments.iter().fold(Req::get(""), |req, s| {
        req.option(CoapOption::UriPath.into(), s.as_bytes())
    })
}

fn segments_of(path: &str) -> Vec<&str> {
    path.split('/').collect()
}

/// The tree of `dir` as it is now, read whole.
fn load_tree(dir: &TreeDir) -> crate::tree::FileTree {
    let far = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    crate::tree::FileTree::load(&dir.0, far)
        .expect("tree loads")
        .next
        .expect("a tree")
}

/// One version per download: a peer that got block 0 of a file under one
/// ETag gets the rest from that version after the file was replaced, and
/// another peer's new download gets the new one; the old version is held
/// only while a download needs it.
#[test]
fn a_download_keeps_the_version_its_block_0_had_when_the_file_is_replaced() {
    let (mut fx, dir, old) = tree_fx("versions");
    let old_etag = crate::hash::fnv1a64(&old).to_be_bytes();
    let segments = segments_of(SLOT0);
    let block = |num: u32| get_segments(&segments).block2(num, 2).mid(num as u16);
    let first = fx.ask_from(A, T0, &block(0));
    assert_eq!(parse(&first).etag, Some(&old_etag[..]));

    let new = image_bytes(200, 8);
    let new_etag = crate::hash::fnv1a64(&new).to_be_bytes();
    dir.write(SLOT0, &new);
    fx.svc.replace_tree(Some(load_tree(&dir)));
    assert_eq!(fx.svc.old_versions(), (1, 200), "held for A's download");

    let other = fx.ask_from(B, T0 + 1, &block(0));
    assert_eq!(parse(&other).etag, Some(&new_etag[..]));
    assert_eq!(parse(&other).payload, &new[..64]);
    for num in 1..4u32 {
        let reply = fx.ask_from(A, T0 + 2, &block(num));
        let msg = parse(&reply);
        assert_eq!(msg.etag, Some(&old_etag[..]), "block {num}");
        let at = num as usize * 64;
        assert_eq!(msg.payload, &old[at..(at + 64).min(200)], "block {num}");
    }
    // A's download ended: the next request drops the old version.
    fx.ask_from(B, T0 + 3, &block(1));
    assert_eq!(fx.svc.old_versions(), (0, 0));

    // B's download ends too; then replaced while nobody downloads it:
    // nothing is held.
    for num in 2..4u32 {
        let reply = fx.ask_from(B, T0 + 4, &block(num));
        assert_eq!(parse(&reply).etag, Some(&new_etag[..]), "B's block {num}");
    }
    dir.write(SLOT0, &image_bytes(200, 9));
    fx.svc.replace_tree(Some(load_tree(&dir)));
    assert_eq!(fx.svc.old_versions(), (0, 0));
}

/// The old version a download needs is dropped once the download went
/// quiet for the exchange lifetime.
#[test]
fn an_old_version_is_dropped_when_its_download_goes_quiet() {
    let (mut fx, dir, _) = tree_fx("versions-quiet");
    let block0 = get_segments(&segments_of(SLOT0)).block2(0, 2);
    fx.ask_from(A, T0, &block0);
    dir.write(SLOT0, &image_bytes(200, 10));
    fx.svc.replace_tree(Some(load_tree(&dir)));
    assert_eq!(fx.svc.old_versions().0, 1);
    fx.svc.expire_versions(T0 + EXCHANGE_LIFETIME_MS - 1);
    assert_eq!(fx.svc.old_versions().0, 1, "not quiet long enough");
    fx.svc.expire_versions(T0 + EXCHANGE_LIFETIME_MS);
    assert_eq!(fx.svc.old_versions().0, 0);
}

/// The usual catalog with `MOTE_NEW` overwritten in place: same file name
/// (so the same id), `seed`'s bytes.
fn catalog_with_mote_new(seed: u32) -> Catalog {
    let files = seeded_files(&SMALL, 1)
        .into_iter()
        .map(|(name, bytes)| match name == MOTE_NEW {
            true => (name, image_bytes(MOTE_NEW_LEN, seed)),
            false => (name, bytes),
        })
        .collect();
    Catalog::from_files(files).expect("catalog builds").0
}

/// Whether the served `MOTE_NEW` is marked as having an old version held.
fn mote_new_held(fx: &Fx) -> bool {
    let id = crate::hash::fnv1a32(MOTE_NEW.as_bytes());
    fx.svc
        .catalog()
        .by_id(id)
        .expect("MOTE_NEW served")
        .has_held_version()
}

/// Asserts that `reply` is block `num` (64 bytes) of `img` under its ETag.
fn assert_block_of(reply: &[u8], img: &Img, num: u32, what: &str) {
    let msg = parse(reply);
    assert_eq!(msg.etag, Some(&img.etag[..]), "{what}: block {num}'s ETag");
    let at = num as usize * 64;
    let end = (at + 64).min(img.bytes.len());
    assert_eq!(msg.payload, &img.bytes[at..end], "{what}: block {num}");
}

/// One version per download for images: a peer that got block 0 of an
/// image by id under one ETag gets the rest of it from that version after
/// the image was overwritten in place (same id), whatever its token;
/// another peer's download begun after gets the new version; the old one
/// is held (and the image marked for the fast path) only while a
/// download needs it.
#[test]
fn a_download_by_id_keeps_the_image_version_its_block_0_had() {
    let mut fx = Fx::new();
    let old = fx.img(MOTE_NEW);
    let block = |num: u32| {
        Req::get(&format!("updates/{}", old.id))
            .block2(num, 2)
            .mid(num as u16)
            .token(&num.to_be_bytes())
    };
    assert_block_of(&fx.ask_from(A, T0, &block(0)), &old, 0, "A before");
    fx.svc.replace_catalog(catalog_with_mote_new(77));
    let new = fx.img(MOTE_NEW);
    assert_eq!(new.id, old.id);
    assert_ne!(new.etag, old.etag);
    assert_eq!(fx.svc.old_versions(), (1, MOTE_NEW_LEN as u64));
    assert!(mote_new_held(&fx));

    assert_block_of(&fx.ask_from(B, T0 + 1, &block(0)), &new, 0, "B after");
    let last = (MOTE_NEW_LEN as u32).div_ceil(64) - 1;
    for num in 1..=last {
        let reply = fx.ask_from(A, T0 + 2, &block(num));
        assert_block_of(&reply, &old, num, "A after the overwrite");
    }
    // A's download ended: the next request drops the old version and
    // the mark.
    assert_block_of(&fx.ask_from(B, T0 + 3, &block(1)), &new, 1, "B");
    assert_eq!(fx.svc.old_versions(), (0, 0));
    assert!(!mote_new_held(&fx));

    // B's download ends too (on blocks that record nothing, as on the fast
    // path: its record names the version until it expires); overwritten a
    // lifetime later, nothing is held.
    for num in 2..=last {
        assert_block_of(&fx.ask_from(B, T0 + 4, &block(num)), &new, num, "B");
    }
    fx.svc.set_now(T0 + 1 + EXCHANGE_LIFETIME_MS);
    fx.svc.replace_catalog(catalog_with_mote_new(78));
    assert_eq!(fx.svc.old_versions(), (0, 0));
    assert!(!mote_new_held(&fx));
}

/// The legacy form likewise: a device repeating its payload on every block
/// and a stock client sending it with block 0 only (payload-less
/// continuations, another token each time) keep the version (and the
/// body from OFFSET, under that version's ETag) their block 0 had.
#[test]
fn a_legacy_download_keeps_the_image_version_its_block_0_had() {
    let mut fx = Fx::new();
    let old = fx.img(MOTE_NEW);
    let payload = |offset| device(b"MOTE", 3, version(1, 0, 0), Some(offset));
    let legacy = |num: u32, offset: u32| {
        Req::get("updates")
            .block2(num, 2)
            .mid(num as u16)
            .payload(&payload(offset))
    };
    let bare = |num: u32| {
        Req::get("updates")
            .block2(num, 2)
            .mid(0x100 + num as u16)
            .token(&num.to_be_bytes())
    };
    let from_100 = Img {
        bytes: old.bytes[100..].to_vec(),
        ..old.from(100)
    };
    assert_block_of(&fx.ask_from(A, T0, &legacy(0, 0)), &old, 0, "A");
    assert_block_of(&fx.ask_from(B, T0, &legacy(0, 100)), &from_100, 0, "B");
    fx.svc.replace_catalog(catalog_with_mote_new(77));
    assert_eq!(fx.svc.old_versions().0, 1);
    for num in 1..4 {
        let reply = fx.ask_from(A, T0 + 1, &legacy(num, 0));
        assert_block_of(&reply, &old, num, "A, payload on every block");
        let reply = fx.ask_from(B, T0 + 1, &bare(num));
        assert_block_of(&reply, &from_100, num, "B, payload-less");
    }
    // A device that starts now gets the new version.
    let new = fx.img(MOTE_NEW);
    let c = 0xC000_0203;
    assert_block_of(&fx.ask_from(c, T0 + 2, &legacy(0, 0)), &new, 0, "C");
    assert_block_of(&fx.ask_from(c, T0 + 2, &legacy(1, 0)), &new, 1, "C");
}

/// Without a record of the download (never seen, evicted, a restart) a
/// later block is cut from the current version under its own ETag; so is
/// one of a download whose old version went quiet and was dropped.
#[test]
fn without_its_record_or_its_old_version_a_download_gets_the_current_image() {
    let mut fx = Fx::new();
    let old = fx.img(MOTE_NEW);
    let block = |num: u32| Req::get(&format!("updates/{}", old.id)).block2(num, 2);
    fx.ask_from(A, T0, &block(0));
    fx.svc.replace_catalog(catalog_with_mote_new(77));
    let new = fx.img(MOTE_NEW);
    let c = 0xC000_0203;
    assert_block_of(&fx.ask_from(c, T0 + 1, &block(5)), &new, 5, "no record");
    assert_block_of(&fx.ask_from(A, T0 + 1, &block(1)), &old, 1, "A held");

    let quiet = T0 + 1 + EXCHANGE_LIFETIME_MS;
    fx.svc.expire_versions(quiet - 1);
    assert_eq!(fx.svc.old_versions().0, 1, "not quiet long enough");
    fx.svc.expire_versions(quiet);
    assert_eq!(fx.svc.old_versions().0, 0);
    assert!(!mote_new_held(&fx));
    let reply = fx.ask_from(A, quiet, &block(2));
    assert_block_of(&reply, &new, 2, "A after its old version was dropped");
}

/// A body from an OFFSET by id keeps its version too: named by `?offset=N`
/// on every block, or by an OFFSET payload with block 0 only.
#[test]
fn a_download_by_id_from_an_offset_keeps_the_image_version_its_block_0_had() {
    let mut fx = Fx::new();
    let old = fx.img(MOTE_NEW);
    let from_100 = Img {
        bytes: old.bytes[100..].to_vec(),
        ..old.from(100)
    };
    let query = |num: u32| {
        Req::get(&format!("updates/{}?offset=100", old.id))
            .block2(num, 2)
            .mid(num as u16)
    };
    let payload = |num: u32| {
        let req = Req::get(&format!("updates/{}", old.id))
            .block2(num, 2)
            .mid(0x100 + num as u16);
        match num {
            0 => req.payload(&100u32.to_le_bytes()),
            _ => req,
        }
    };
    assert_block_of(&fx.ask_from(A, T0, &query(0)), &from_100, 0, "A");
    assert_block_of(&fx.ask_from(B, T0, &payload(0)), &from_100, 0, "B");
    fx.svc.replace_catalog(catalog_with_mote_new(77));
    for num in 1..4 {
        let reply = fx.ask_from(A, T0 + 1, &query(num));
        assert_block_of(&reply, &from_100, num, "A, ?offset= on every block");
        let reply = fx.ask_from(B, T0 + 1, &payload(num));
        assert_block_of(&reply, &from_100, num, "B, OFFSET with block 0 only");
    }
}

/// At most one old version per image: overwritten twice during a download,
/// the image keeps the version the live records name, the newer one when
/// both are named.
#[test]
fn an_image_overwritten_twice_keeps_one_old_version() {
    let mut fx = Fx::new();
    let first = fx.img(MOTE_NEW);
    let block = |num: u32| Req::get(&format!("updates/{}", first.id)).block2(num, 2);
    fx.ask_from(A, T0, &block(0));
    fx.svc.replace_catalog(catalog_with_mote_new(77));
    let second = fx.img(MOTE_NEW);
    fx.ask_from(B, T0 + 1, &block(0));
    fx.svc.replace_catalog(catalog_with_mote_new(78));
    let third = fx.img(MOTE_NEW);
    assert_eq!(fx.svc.old_versions(), (1, MOTE_NEW_LEN as u64));
    assert_block_of(&fx.ask_from(B, T0 + 2, &block(1)), &second, 1, "B");
    // A's version is gone: the current one, under its own ETag.
    assert_block_of(&fx.ask_from(A, T0 + 2, &block(1)), &third, 1, "A");
}

/// Two peers with the same link-local address and port on two interfaces
/// (zones) keep separate transfers.
#[test]
fn peers_in_two_zones_keep_separate_transfers() {
    let mut fx = Fx::new();
    let one = fx.img(MOTE_NEW);
    let two = fx.img(SZ1025);
    let mut link_local = [0u8; 16];
    link_local[0] = 0xfe;
    link_local[1] = 0x80;
    link_local[15] = 2;
    let zone = |scope| Peer {
        ip: link_local,
        port: 40_000,
        scope,
    };
    // Each starts a body at its own OFFSET, sent with block 0 only.
    let offsets = [(1, &one, 100usize), (2, &two, 200)];
    for (scope, img, offset) in offsets {
        let start = get_segments(&["updates", &img.id])
            .block2(0, 2)
            .payload(&(offset as u32).to_le_bytes());
        fx.handle(zone(scope), T0, &start.bytes()).expect("a reply");
    }
    for (scope, img, offset) in offsets {
        let next = get_segments(&["updates", &img.id]).block2(1, 2).mid(2);
        let reply = fx.handle(zone(scope), T0, &next.bytes()).expect("a reply");
        let at = offset + 64;
        assert_eq!(
            parse(&reply).payload,
            &img.bytes[at..at + 64],
            "zone {scope}"
        );
    }
}

#[test]
fn tree_file_is_served_block_wise_with_its_content_etag() {
    let (mut fx, _dir, slot) = tree_fx("blocks");
    let etag = crate::hash::fnv1a64(&slot).to_be_bytes();
    let mut got = Vec::new();
    for num in 0..4 {
        let reply = fx.ask(
            &get_segments(&segments_of(SLOT0))
                .block2(num, 2)
                .mid(num as u16),
        );
        let msg = parse(&reply);
        assert_eq!(msg.class(), MessageClass::Response(ResponseType::Content));
        assert_eq!(msg.content_format, Some(42));
        assert_eq!(msg.etag, Some(&etag[..]));
        assert_eq!(
            block2(&reply),
            Block {
                num,
                more: num < 3,
                szx: 2
            }
        );
        assert_eq!(msg.size2.is_some(), num == 0, "Size2 on block 0 only");
        if num == 0 {
            assert_eq!(msg.size2, Some(200));
        }
        got.extend_from_slice(msg.payload);
    }
    assert_eq!(got, slot);
    let past = fx.ask(&get_segments(&segments_of(SLOT0)).block2(4, 2));
    assert_error(&past, ResponseType::BadOption);
}

#[test]
fn tree_file_without_block2_uses_the_server_block_size() {
    let (mut fx, _dir, _) = tree_fx("whole");
    let reply = fx.ask(&get_segments(&segments_of(SUIT)));
    let msg = parse(&reply);
    assert_eq!(msg.payload, b"suit!");
    assert_eq!(
        block2(&reply),
        Block {
            num: 0,
            more: false,
            szx: 6
        }
    );
}

#[test]
fn tree_listings_are_link_format_and_need_the_trailing_slash() {
    let (mut fx, _dir, _) = tree_fx("listing");
    let reply = fx.ask(&get_segments(&["fw", "app", "board", ""]));
    let msg = parse(&reply);
    assert_eq!(msg.content_format, Some(40));
    assert_eq!(
        msg.payload,
        b"</fw/app/board/riot.suit.latest.bin>,</fw/app/board/slot0.5.bin>"
    );
    for root in [get_segments(&[]), get_segments(&[""])] {
        let reply = fx.ask(&root);
        assert_eq!(parse(&reply).payload, b"</fw/>;ct=40,</top>");
    }
    // As aiocoap-fileserver: a directory without the slash, or a file
    // with one, is 4.00.
    let reply = fx.ask(&get_segments(&["fw", "app"]));
    assert_error(&reply, ResponseType::BadRequest);
    let reply = fx.ask(&get_segments(&["top", ""]));
    assert_error(&reply, ResponseType::BadRequest);
}

#[test]
fn tree_listing_longer_than_a_block_is_block_wise() {
    let (mut fx, _dir, _) = tree_fx("listing-blocks");
    let whole = b"</fw/app/board/riot.suit.latest.bin>,</fw/app/board/slot0.5.bin>";
    let mut got = Vec::new();
    let blocks = whole.len().div_ceil(16) as u32;
    for num in 0..blocks {
        let reply = fx.ask(&get_segments(&["fw", "app", "board", ""]).block2(num, 0));
        assert_eq!(block2(&reply).more, num + 1 < blocks);
        got.extend_from_slice(parse(&reply).payload);
    }
    assert_eq!(got, whole);
    let past = fx.ask(&get_segments(&["fw", "app", "board", ""]).block2(blocks, 0));
    assert_error(&past, ResponseType::BadOption);
}

#[test]
fn tree_paths_never_escape_the_directory() {
    let (mut fx, _dir, _) = tree_fx("escape");
    for path in [
        &["..", "etc", "passwd"][..],
        &["fw", "..", "..", "etc", "passwd"],
        &["fw", "app", "..", "app", "board", "slot0.5.bin"],
        &["fw", ".", "app", "board", "slot0.5.bin"],
        &[".", "top"],
        &["fw", "", "app", "board", "slot0.5.bin"],
        &["", "top"],
        &["%2e%2e", "etc", "passwd"],
        &["fw", "%2e%2e", "fw", "app", "board", "slot0.5.bin"],
        &["fw/app/board/slot0.5.bin"],
        &["missing"],
    ] {
        let reply = fx.ask(&get_segments(path));
        assert_error(&reply, ResponseType::NotFound);
    }
}

#[test]
fn tree_answers_only_get() {
    let (mut fx, _dir, _) = tree_fx("methods");
    let post = MessageClass::Request(RequestType::Post);
    let reply = fx.ask(&get_segments(&segments_of(SLOT0)).code(post));
    assert_error(&reply, ResponseType::MethodNotAllowed);
}

#[test]
fn tree_leaves_updates_paths_to_the_catalog() {
    let (mut fx, dir, _) = tree_fx("updates");
    dir.write("updates/x/y", b"shadowed");
    let reply = fx.ask(&get_segments(&["updates", "x", "y"]));
    assert_error(&reply, ResponseType::NotFound);
    let id = fx.img(SZ1).id;
    let reply = fx.ask(&Req::get(&format!("updates/{id}")));
    assert_eq!(parse(&reply).payload, fx.img(SZ1).bytes);
}

#[test]
fn discovery_lists_the_tree_after_the_images_and_filters_them() {
    let (mut fx, _dir, _) = tree_fx("discovery");
    let catalog = String::from_utf8(fx.svc.catalog().core_body()).expect("utf-8");
    let body = fetch_listing(&mut fx, ".well-known/core", 6);
    let expected = format!(
        "{catalog},</fw/app/board/riot.suit.latest.bin>;ct=42;sz=5,\
         </fw/app/board/slot0.5.bin>;ct=42;sz=200,</top>;ct=42;sz=1"
    );
    assert_eq!(String::from_utf8(body).expect("utf-8"), expected);
    let filtered = fetch_listing(&mut fx, ".well-known/core?href=/fw*", 6);
    assert_eq!(
        filtered,
        b"</fw/app/board/riot.suit.latest.bin>;ct=42;sz=5,</fw/app/board/slot0.5.bin>;ct=42;sz=200"
    );
}

#[test]
fn without_a_tree_other_paths_stay_4_04() {
    let mut fx = Fx::new();
    let reply = fx.ask(&get_segments(&["top"]));
    assert_error(&reply, ResponseType::NotFound);
    let reply = fx.ask(&get_segments(&[]));
    assert_error(&reply, ResponseType::NotFound);
}

mod observe;

mod fast;

mod fleet;
