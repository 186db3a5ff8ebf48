//! The checks of the fuzz target `handler` (also run by `tests/regressions.rs`
//! under `cargo test`): the whole protocol core, `service::Service`,
//! over a small catalog, fed a few datagrams from a few peers over time.
//!
//! # Input format
//!
//! ```text
//! byte 0  flags: bit 0 --echo; bit 1 rate limit on, bits 2-3 its value - 1
//!         (1..=4 requests a second); bits 4-6 SZX of the server's largest
//!         block (7 means 6: 1024 bytes)
//! byte 1  bits 0-2 continuation table capacity - 1; bits 3-5 rate table
//!         capacity - 1 (small, so that eviction is exercised)
//! then up to 64 frames:
//!         PEER:u8  DT:u8  LEN:u16le  DATAGRAM:LEN bytes (cut at the input's end)
//! ```
//!
//! A frame with an empty datagram (LEN 0) is handled as any other, and
//! then both services swap their catalog for the other of two: the second
//! has two of the images overwritten in place (the same names, so the same
//! ids, with other bytes), so downloads under way keep their old versions
//! (one version per download) and new ones get the new ones.
//!
//! PEER bits 0-1 choose the address (127.0.0.1, 127.0.0.2, ::1, 192.0.2.1,
//! the service sees IPv4 as IPv4-mapped IPv6), bits 2-7 the port. DT
//! advances the injected clock: below 200 by DT * 10 ms, else by
//! (DT - 199) * 30 s, so rate windows (1 s), Echo windows (60 s) and
//! continuation expiry (247 s) are all reached. The service's keys are
//! fixed ([`FUZZ_KEYS`]), so the Echo value a peer is challenged with is a
//! function of the input alone: a fuzzer that traces comparisons learns it
//! and passes the Echo check, and every crash reproduces.
//!
//! # Properties
//!
//! * No panic; every reply is at most `MAX_REPLY_LEN` bytes and parses with
//!   `wire::Message::parse` and with `coap_lite::Packet::from_bytes` to the
//!   same header, token and payload.
//! * Message layer: replies only to version 1 CON/NON datagrams; an RST
//!   with the request's Message ID, to a CON, or to a NON only as the legacy
//!   "no update" signal; otherwise ACK with the same Message ID for a CON,
//!   NON for a NON, and the request's token.
//! * 4.29 carries Max-Age; 4.01 carries Echo.
//! * With `--echo`, a reply to a request without an Echo option is at most
//!   three times the request, or is the Echo challenge itself.
//! * Image bytes only at the requested position: a 2.05 whose ETag is an
//!   image's entity tag must be a Block2 block whose byte position
//!   (NUM * size) is the request's (0 without Block2), and whose payload is
//!   exactly `image[offset + position..][..size]` cut at the end, with M
//!   and Size2 consistent. `offset` is reconstructed from the request as
//!   decoded by coap-lite, independently of the server's parser: 0 for
//!   `/updates/{id}` without payload, its 4-byte LE payload otherwise, the
//!   OFFSET of a legacy `/updates` payload, and for a payload-less
//!   continuation one of the (image, OFFSET) pairs this peer asked for
//!   before, by id or by the legacy protocol (a peer has one transfer
//!   record, whichever form started it). The service's own
//!   `Outcome::Block` must agree.
//! * The fast path answers as the general one: a second service with the
//!   same configuration gets the same datagrams through
//!   `Service::handle_block` first (and `Service::handle` when it declines;
//!   `Service::note_block` after a last block, as the server calls it).
//!   Whenever the fast path answers, its answer (sent or dropped, the reply's
//!   bytes, the block's image, OFFSET and Block2) equals the general
//!   service's; and since every later answer is compared too, a fast path
//!   that declined or answered must have left the same state behind.

use coap_lite::{CoapOption, Packet};
use iot_ota::catalog::Catalog;
use iot_ota::hash::SipKey;
use iot_ota::hash::{body_etag, fnv1a32, fnv1a64};
use iot_ota::service::{
    Action, BlockSent, Dropped, Keys, Limits, Outcome, Peer, Service, MAX_REPLY_LEN,
};
use iot_ota::wire::{self, Block, Message};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

// The generator the integration tests use, dependency-free so that the
// fuzz crate can include it too.
#[path = "../../support/images.rs"]
mod images;

/// (file name, length, content seed): sizes 0, 1, 100, 1500 and 70000
/// bytes; 70000 bytes at 16-byte blocks need block numbers past 4095.
const FILES: [(&str, usize, u32); 5] = [
    ("Zero_1_0_0_APP.fmu", 0, 1),
    ("One_1_0_0_APP.fmu", 1, 2),
    ("Hundred_1_2_3_APP.fmu", 100, 3),
    ("Mtu_2_0_0_7.fmu", 1500, 4),
    ("Big_1_0_0_APP.fmu", 70_000, 5),
];
/// The second catalog's versions of two of [`FILES`]: overwritten in
/// place (index in `FILES`, content seed).
const OVERWRITTEN: [(usize, u32); 2] = [(2, 13), (4, 15)];
/// The service's secrets: fixed, see the module docs.
pub const FUZZ_KEYS: Keys = Keys {
    echo: SipKey([0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]),
    message_ids: SipKey([1, 2]),
    tables: [3, 4],
};
const MAX_FRAMES: usize = 64;
const CODE_CONTENT: u8 = 0x45;
const CODE_UNAUTHORIZED: u8 = 0x81;
const CODE_TOO_MANY_REQUESTS: u8 = 0x9d;

/// One image as the harness knows it, computed from the file list alone.
struct Known {
    name: &'static str,
    pid: Vec<u8>,
    fw_type: u8,
    version: u32,
    id_hex: Vec<u8>,
    etag: [u8; 8],
    bytes: Vec<u8>,
}

/// Every version of every image: [`FILES`] first, in their order, then
/// the [`OVERWRITTEN`] versions.
fn known() -> &'static [Known] {
    static KNOWN: OnceLock<Vec<Known>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let overwritten = OVERWRITTEN.iter().map(|&(i, seed)| {
            let (name, len, _) = FILES[i];
            (name, len, seed)
        });
        FILES
            .iter()
            .copied()
            .chain(overwritten)
            .map(|(name, len, seed)| {
                let bytes = images::image_bytes(len, seed);
                let stem = name.strip_suffix(".fmu").expect("test names end in .fmu");
                let fields: Vec<&str> = stem.split('_').collect();
                let num = |i: usize| fields[i].parse::<u32>().expect("numeric field");
                let fw_type = if fields[4] == "APP" { 3 } else { num(4) as u8 };
                Known {
                    name,
                    pid: fields[0].as_bytes().to_vec(),
                    fw_type,
                    version: num(1) << 24 | num(2) << 16 | num(3),
                    id_hex: format!("{:08x}", fnv1a32(name.as_bytes())).into_bytes(),
                    etag: fnv1a64(&bytes).to_be_bytes(),
                    bytes,
                }
            })
            .collect()
    })
}

/// What the harness remembers across the datagrams of one input.
#[derive(Default)]
struct Model {
    /// (image index, OFFSET) of every legacy request a peer sent.
    legacy: HashMap<Peer, HashSet<(usize, u32)>>,
    /// (id, OFFSET) of every request by id with an OFFSET payload a peer sent.
    by_id: HashMap<Peer, HashSet<(Vec<u8>, u32)>>,
}

/// A deliberate fault in the fast path's answers, for the test that shows
/// the comparison catches one.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The fast path as it is.
    None,
    /// The last byte of every reply the fast path writes is flipped.
    FlipFastByte,
}

/// Runs every property on one input; panics on a violation.
pub fn check(data: &[u8]) {
    check_with(data, Fault::None);
}

/// [`check`], with `fault` injected into the fast path's answers; returns
/// how many datagrams the fast path answered.
pub fn check_with(data: &[u8], fault: Fault) -> usize {
    let Some((&[flags, sizes], mut rest)) = data.split_first_chunk::<2>() else {
        return 0;
    };
    let server_szx = ((flags >> 4) & 7).min(6);
    let limits = Limits {
        max_block_size: 16 << server_szx,
        continuation_capacity: 1 + usize::from(sizes & 7),
        rate_limit: (flags & 2 != 0).then_some(1 + u32::from((flags >> 2) & 3)),
        rate_table_capacity: 1 + usize::from((sizes >> 3) & 7),
        echo: flags & 1 != 0,
        // The model predicts answers to requests, and an observed lookup
        // answers "no update" with 2.05 rather than 4.04: Observe is
        // exercised by tests/fuzz_no_panic.rs instead.
        max_observers: 0,
        ..Limits::default()
    };
    // The first catalog (`second` false) or the second.
    let catalog = |second: bool| {
        let files = (0..FILES.len())
            .map(|i| {
                let version = OVERWRITTEN
                    .iter()
                    .position(|&(o, _)| o == i && second)
                    .map_or(i, |v| FILES.len() + v);
                let k = &known()[version];
                (k.name.to_owned(), k.bytes.clone())
            })
            .collect();
        let (catalog, skipped) = Catalog::from_files(files).expect("test catalog builds");
        assert!(skipped.is_empty());
        catalog
    };
    let mut second = false;
    let mut service = Service::new(catalog(second), limits, FUZZ_KEYS);
    let mut fast = Service::new(catalog(second), limits, FUZZ_KEYS);
    let mut fast_answers = 0;
    let mut model = Model::default();
    let mut now_ms = 0u64;
    let mut out = vec![0u8; MAX_REPLY_LEN];
    let mut fast_out = vec![0u8; MAX_REPLY_LEN];
    for _ in 0..MAX_FRAMES {
        let Some((&[p, dt, lo, hi], tail)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        now_ms += match dt {
            0..=199 => u64::from(dt) * 10,
            _ => u64::from(dt - 199) * 30_000,
        };
        let peer = peer(p);
        let request = datagram;
        let sent = Sent::decode(request);
        if let Some(sent) = &sent {
            model.note_legacy(peer, sent);
            model.note_by_id(peer, sent);
        }
        let general = answer(service.handle(peer, now_ms, request, &mut out), &out);
        let (answered, fast_answer) = match fast.handle_block(peer, now_ms, request, &mut fast_out)
        {
            Some(action) => {
                // The fleet hears of the fast path's last block from its
                // caller, as the server tells it (else the two services'
                // fleets, and their /status, part).
                let last = match &action {
                    Action::Reply {
                        outcome: Outcome::Block(t),
                        ..
                    } => Some(BlockSent::of(t)).filter(|sent| sent.last),
                    _ => None,
                };
                let mut answer = answer(action, &fast_out);
                if let Some(sent) = last {
                    fast.note_block(peer, sent, now_ms);
                }
                if let (Fault::FlipFastByte, Ok((reply, _))) = (fault, &mut answer) {
                    if let Some(last) = reply.last_mut() {
                        *last ^= 0x01;
                    }
                }
                (true, answer)
            }
            None => (
                false,
                answer(fast.handle(peer, now_ms, request, &mut fast_out), &fast_out),
            ),
        };
        fast_answers += usize::from(answered);
        assert_eq!(
            fast_answer, general,
            "the fast path (answered: {answered}) and the general one differ on {request:02x?}"
        );
        if datagram.is_empty() {
            // An in-place overwrite (or its undoing), at this frame's time
            // for both, as the server tells its service.
            second = !second;
            for svc in [&mut service, &mut fast] {
                svc.set_now(now_ms);
                svc.replace_catalog(catalog(second));
            }
        }
        let Ok((reply, block)) = general else {
            continue;
        };
        let block = block.map(|(etag, offset, len, _)| (etag, offset, len));
        assert!(reply.len() <= MAX_REPLY_LEN);
        check_reply(
            request,
            sent.as_ref(),
            &reply,
            block,
            &limits,
            server_szx,
            peer,
            &mut model,
        );
    }
    fast_answers
}

/// An answer as the comparison of the two paths sees it: the reply's bytes
/// and, for a block, the image's content tag, the OFFSET, the image's
/// length and the Block2 sent; or why nothing was sent.
type Answer = Result<(Vec<u8>, Option<([u8; 8], u32, usize, Block)>), Dropped>;

fn answer(action: Action<'_>, out: &[u8]) -> Answer {
    match action {
        Action::Drop(reason) => Err(reason),
        Action::Reply { len, outcome } => {
            let block = match outcome {
                Outcome::Block(t) => Some((t.image.etag, t.offset, t.image.bytes.len(), t.block)),
                _ => None,
            };
            Ok((out[..len].to_vec(), block))
        }
    }
}

fn peer(p: u8) -> Peer {
    let v4 = |a: [u8; 4]| {
        let mut ip = [0u8; 16];
        ip[10] = 0xff;
        ip[11] = 0xff;
        ip[12..].copy_from_slice(&a);
        ip
    };
    let ip = match p & 3 {
        0 => v4([127, 0, 0, 1]),
        1 => v4([127, 0, 0, 2]),
        2 => {
            let mut ip = [0u8; 16];
            ip[15] = 1;
            ip
        }
        _ => v4([192, 0, 2, 1]),
    };
    Peer {
        ip,
        port: 40_000 + u16::from(p >> 2),
        scope: 0,
    }
}

/// The request as coap-lite decodes it: the harness's own view, so the
/// expected position does not come from the parser under test.
struct Sent {
    path: Vec<Vec<u8>>,
    query: Vec<Vec<u8>>,
    payload: Vec<u8>,
    /// (NUM, SZX) of the first Block2 option, when it is 0 to 3 bytes.
    block2: Option<(u32, u8)>,
    has_echo: bool,
}

impl Sent {
    fn decode(request: &[u8]) -> Option<Sent> {
        let packet = Packet::from_bytes(request).ok()?;
        let path = packet
            .get_option(CoapOption::UriPath)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        let query = packet
            .get_option(CoapOption::UriQuery)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        let block2 = packet
            .get_option(CoapOption::Block2)
            .and_then(|l| l.front())
            .filter(|v| v.len() <= 3)
            .map(|v| {
                let raw = v.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b));
                (raw >> 4, (raw & 7) as u8)
            });
        let has_echo = packet
            .get_option(CoapOption::Unknown(wire::OPTION_ECHO))
            .is_some();
        Some(Sent {
            path,
            query,
            payload: packet.payload,
            block2,
            has_echo,
        })
    }

    /// The OFFSET a `?offset=N` query names, when it is the only query.
    fn offset_query(&self) -> Option<u32> {
        match self.query.as_slice() {
            [q] => std::str::from_utf8(q.strip_prefix(b"offset=")?)
                .ok()?
                .parse()
                .ok(),
            _ => None,
        }
    }

    fn is_updates(&self) -> bool {
        self.path.len() == 1 && self.path[0] == b"updates"
    }

    /// The legacy device payload `PIDLEN PID TYPE VERSION OFFSET`, decoded:
    /// (pid, type, version, offset).
    fn legacy(&self) -> Option<(&[u8], u8, u32, u32)> {
        let (&pid_len, rest) = self.payload.split_first()?;
        let pid_len = usize::from(pid_len);
        if pid_len == 0 || rest.len() != pid_len + 9 {
            return None;
        }
        let (pid, rest) = rest.split_at(pid_len);
        let version = u32::from_le_bytes(rest[1..5].try_into().ok()?);
        let offset = u32::from_le_bytes(rest[5..9].try_into().ok()?);
        Some((pid, rest[0], version, offset))
    }
}

impl Model {
    /// A legacy request may leave a continuation entry for its peer: note
    /// the (image, OFFSET) it names whatever the reply turns out to be.
    fn note_legacy(&mut self, peer: Peer, sent: &Sent) {
        if !sent.is_updates() {
            return;
        }
        let Some((pid, fw_type, version, offset)) = sent.legacy() else {
            return;
        };
        if let Some(index) = candidate(pid, fw_type, version) {
            self.legacy.entry(peer).or_default().insert((index, offset));
        }
    }

    /// The OFFSETs `peer` named for image `index` before, by the legacy
    /// protocol or by id with an OFFSET payload: the bodies its one
    /// transfer record may name, which a payload-less continuation of
    /// either form continues.
    fn named(&self, peer: Peer, index: usize) -> impl Iterator<Item = u32> + '_ {
        let id = &known()[index].id_hex;
        let legacy = self.legacy.get(&peer).into_iter().flatten();
        let by_id = self.by_id.get(&peer).into_iter().flatten();
        legacy
            .filter(move |(i, _)| *i == index)
            .map(|&(_, o)| o)
            .chain(by_id.filter(move |(i, _)| i == id).map(|&(_, o)| o))
    }

    /// A request by id with an OFFSET payload may be remembered for its
    /// peer's payload-less continuations: note the (id, OFFSET).
    fn note_by_id(&mut self, peer: Peer, sent: &Sent) {
        if let ([updates, id], &[a, b, c, d]) = (sent.path.as_slice(), sent.payload.as_slice()) {
            if updates.as_slice() == b"updates" {
                let offset = u32::from_le_bytes([a, b, c, d]);
                self.by_id
                    .entry(peer)
                    .or_default()
                    .insert((id.clone(), offset));
            }
        }
    }
}

/// The newest image for (pid, type) if newer than `version`, as its index
/// in [`FILES`]. Every PID of the test catalog has one image, so that is
/// the only one to look at.
fn candidate(pid: &[u8], fw_type: u8, version: u32) -> Option<usize> {
    known()[..FILES.len()]
        .iter()
        .position(|k| k.pid == pid && k.fw_type == fw_type && k.version > version)
}

/// The index in [`FILES`] of the image whose version `index` of
/// [`known`] is: an overwritten version is one of the same image.
fn image_of(index: usize) -> usize {
    index
        .checked_sub(FILES.len())
        .map_or(index, |v| OVERWRITTEN[v].0)
}

#[allow(clippy::too_many_arguments)]
fn check_reply(
    request: &[u8],
    sent: Option<&Sent>,
    reply: &[u8],
    block: Option<([u8; 8], u32, usize)>,
    limits: &Limits,
    server_szx: u8,
    peer: Peer,
    model: &mut Model,
) {
    let r = Message::parse(reply)
        .unwrap_or_else(|e| panic!("reply does not parse ({e}): {reply:02x?}"));
    let lite =
        Packet::from_bytes(reply).unwrap_or_else(|e| panic!("coap-lite rejects reply: {e:?}"));
    assert_eq!(lite.header.message_id, r.mid);
    assert_eq!(lite.get_token(), r.token);
    assert_eq!(lite.payload, r.payload);
    assert_eq!(u8::from(lite.header.code), r.code);

    // Message layer: only a readable version-1 CON or NON is answered.
    assert!(request.len() >= 4, "reply to a datagram without a header");
    assert_eq!(request[0] >> 6, 1, "reply to a foreign version");
    let req_type = (request[0] >> 4) & 3;
    let req_mid = u16::from_be_bytes([request[2], request[3]]);
    let tkl = usize::from(request[0] & 0x0f);
    assert!(req_type <= 1, "reply to an ACK or RST");
    let r_type = reply[0] >> 4 & 3;
    if r_type == 3 {
        assert_eq!(r.mid, req_mid);
        assert_eq!(r.code, 0);
        // An RST rejects a CON (RFC 7252 §4.2); a NON gets one only as the
        // legacy protocol's "no update" signal (README, "Continuations without payload"), which
        // RFC 7252 §4.3 allows ("MAY involve sending a matching Reset").
        if req_type == 1 {
            let no_update = sent.is_some_and(|s| {
                s.is_updates()
                    && s.legacy().is_some_and(|(pid, fw_type, version, _)| {
                        candidate(pid, fw_type, version).is_none()
                    })
            });
            assert!(
                no_update,
                "RST to a non-confirmable message other than a legacy request without update"
            );
        }
        return;
    }
    assert!(tkl <= 8 && request.len() >= 4 + tkl);
    assert_eq!(r.token, &request[4..4 + tkl], "reply token");
    match req_type {
        0 => {
            assert_eq!(r_type, 2, "CON answered by ACK");
            assert_eq!(r.mid, req_mid);
        }
        _ => assert_eq!(r_type, 1, "NON answered by NON"),
    }
    assert!(r.code >= 0x40, "reply code is a response");

    match r.code {
        CODE_TOO_MANY_REQUESTS => assert!(r.max_age.is_some(), "4.29 without Max-Age"),
        CODE_UNAUTHORIZED => assert!(r.echo.is_some(), "4.01 carries Echo"),
        _ => {}
    }

    // RFC 9175 §2.4: no more than 3 times the request to an unverified peer,
    // the challenge itself (a few bytes) aside.
    let has_echo = sent.is_some_and(|s| s.has_echo);
    if limits.echo && !has_echo && reply.len() > 3 * request.len() {
        assert!(
            r.code == CODE_UNAUTHORIZED && r.echo.is_some() && r.payload.is_empty(),
            "amplification: {} byte reply to {} byte request without Echo",
            reply.len(),
            request.len()
        );
    }

    // Every body has its own ETag: the whole image its content tag, a body
    // from OFFSET o > 0 a tag derived from both. The tag alone must name
    // the image and the body whose bytes the block holds.
    let outcome_offset = block.map_or(0, |(_, offset, _)| offset);
    let image_index = r.etag.and_then(|etag| {
        known()
            .iter()
            .position(|k| body_etag(&k.etag, outcome_offset) == etag)
    });
    match (r.code, image_index) {
        (CODE_CONTENT, Some(index)) => {
            let (etag, offset, len) = block.expect("a 2.05 with an image ETag is a block outcome");
            assert_eq!(etag, known()[index].etag);
            assert_eq!(len, known()[index].bytes.len());
            let sent = sent.expect("a served block's request decodes with coap-lite");
            check_block(sent, &r, index, offset, server_szx, peer, model);
        }
        _ => assert!(block.is_none(), "block outcome without a 2.05 image reply"),
    }
}

fn check_block(
    sent: &Sent,
    r: &Message<'_>,
    index: usize,
    outcome_offset: u32,
    server_szx: u8,
    peer: Peer,
    model: &Model,
) {
    let image = &known()[index];
    let block = match r.block2 {
        Some(Ok(block)) => block,
        other => panic!("image bytes without a valid Block2 option: {other:?}"),
    };
    assert!(block.szx <= server_szx, "block larger than the server's");
    let position = u64::from(block.num) << (block.szx + 4);
    let asked = match sent.block2 {
        Some((num, szx)) => {
            assert!(block.szx <= szx, "block larger than the client asked for");
            u64::from(num) << (szx + 4)
        }
        None => 0,
    };
    assert_eq!(
        position, asked,
        "block position differs from the requested one"
    );

    // Where the body starts, from the request alone.
    let offsets: Vec<u32> = match sent.path.as_slice() {
        [updates, id] if updates.as_slice() == b"updates" => {
            assert_eq!(id, &image.id_hex, "image served for another id");
            match (sent.payload.as_slice(), sent.offset_query()) {
                ([], Some(offset)) => vec![offset],
                // A continuation: the whole image, or an OFFSET this peer
                // named for this image before, by id or by the legacy
                // protocol (the peer has one transfer record, whichever
                // form started it).
                ([], None) => std::iter::once(0)
                    .chain(model.named(peer, image_of(index)))
                    .collect(),
                (&[a, b, c, d], _) => vec![u32::from_le_bytes([a, b, c, d])],
                (other, _) => panic!("block served for a payload of {} bytes", other.len()),
            }
        }
        [updates] if updates.as_slice() == b"updates" && !sent.payload.is_empty() => {
            let (pid, fw_type, version, offset) =
                sent.legacy().expect("block served for a lookup payload");
            assert_eq!(
                candidate(pid, fw_type, version),
                Some(image_of(index)),
                "wrong image for the device"
            );
            vec![offset]
        }
        // A legacy continuation: an OFFSET this peer named for this image
        // before, by either form.
        [updates] if updates.as_slice() == b"updates" => {
            let seen: Vec<u32> = model.named(peer, image_of(index)).collect();
            assert!(
                !seen.is_empty(),
                "continuation without an earlier request naming an OFFSET"
            );
            seen
        }
        other => panic!("image bytes on path {other:?}"),
    };
    assert!(
        offsets.contains(&outcome_offset),
        "outcome offset not requested"
    );

    let size = block.size();
    let body = &image.bytes[outcome_offset as usize..];
    let start = position as usize;
    assert!(
        start < body.len() || (start == 0 && body.is_empty()),
        "block past the body"
    );
    let end = (start + size).min(body.len());
    assert_eq!(
        r.payload,
        &body[start..end],
        "payload is not image[offset + position..][..size]"
    );
    assert_eq!(block.more, end < body.len(), "M flag");
    if let Some(size2) = r.size2 {
        assert_eq!(size2 as usize, body.len(), "Size2 is the body length");
    }
    if block.num == 0 {
        assert!(r.size2.is_some(), "Size2 on block 0");
    }
    assert!(
        r.payload.len()
            <= Block {
                num: 0,
                more: false,
                szx: server_szx
            }
            .size()
    );
}
