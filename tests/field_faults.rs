//! Faults seen in the field, against the real server process over loopback:
//! a device that mixes `?offset=` and plain requests on one endpoint, a
//! server restart, a NAT rebinding or a peer-table eviction in the middle
//! of a download that sent its OFFSET with block 0 only (as libcoap's
//! `coap-client -f` and node-coap do), interleaved legacy transfers,
//! Proxy-Uri / Proxy-Scheme, and NON Message IDs per endpoint.
//!
//! The invariant every block-wise reply is held to here: **an ETag names
//! exactly one body**. The whole image carries its content tag (FNV-1a 64
//! of the file, 8 bytes big-endian); the body from OFFSET o > 0 carries
//! FNV-1a 64 over `content_tag ++ o.to_le_bytes()`. The tags are computed
//! here again (the oracle below), not taken from the server, and requests
//! are encoded by hand and replies decoded with coap-lite, so these tests
//! depend on no code under `src/`.

mod support;

use coap_lite::{CoapOption, Packet};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::{spawn_server, TempDir, TestServer};

/// SZX of the 1 KiB blocks every download here asks for.
const SZX: u8 = 6;
/// Bytes in a block of SZX 6.
const BLOCK: usize = 1024;
/// Length of the test images.
const IMAGE_LEN: usize = 20_000;
/// `APP` as a TYPE number.
const TYPE_APP: u8 = 3;

/// Message types (RFC 7252 §3).
const CON: u8 = 0;
const NON: u8 = 1;
const ACK: u8 = 2;
const RST: u8 = 3;

/// Response codes.
const CONTENT: u8 = 0x45;
const PROXYING_NOT_SUPPORTED: u8 = 0xA5;

/// Option numbers.
const OPT_URI_PATH: u16 = 11;
const OPT_URI_QUERY: u16 = 15;
const OPT_BLOCK2: u16 = 23;
const OPT_PROXY_URI: u16 = 35;
const OPT_PROXY_SCHEME: u16 = 39;

/// How long one CON request waits for its ACK before it is sent again.
const REPLY_TIMEOUT: Duration = Duration::from_millis(1000);
/// Sends of one request before a test gives up.
const ATTEMPTS: usize = 4;

// ---------------------------------------------------------------- the ETag oracle

/// FNV-1a 64.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The whole image's ETag: FNV-1a 64 of its bytes, big-endian.
fn content_tag(image: &[u8]) -> [u8; 8] {
    fnv1a64(image).to_be_bytes()
}

/// The ETag of the body `image[offset..]`: the content tag for offset 0,
/// else FNV-1a 64 over `content_tag ++ offset.to_le_bytes()`, big-endian.
fn body_tag(image: &[u8], offset: u32) -> [u8; 8] {
    let content = content_tag(image);
    if offset == 0 {
        return content;
    }
    let mut input = content.to_vec();
    input.extend_from_slice(&offset.to_le_bytes());
    fnv1a64(&input).to_be_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn code_text(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1f)
}

/// Number of SZX 6 blocks of a body of `len` bytes.
fn blocks_of(len: usize) -> u32 {
    u32::try_from(len.div_ceil(BLOCK)).expect("block count fits u32")
}

// ---------------------------------------------------------------- requests

/// Minimal big-endian unsigned option value (RFC 7252 §3.2).
fn uint_value(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[skip..].to_vec()
}

/// A GET request, encoded by hand here.
#[derive(Debug, Clone)]
struct Req {
    non: bool,
    path: Vec<String>,
    query: Vec<String>,
    block2: Option<u32>,
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Req {
    /// A Confirmable GET of `path` ("updates/1234abcd"; "" for none).
    fn get(path: &str) -> Req {
        Req {
            non: false,
            path: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            query: Vec::new(),
            block2: None,
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Asks for block `num` of SZX 6.
    fn block(mut self, num: u32) -> Req {
        self.block2 = Some(num);
        self
    }

    fn query(mut self, query: &str) -> Req {
        self.query.push(query.to_owned());
        self
    }

    fn payload(mut self, payload: &[u8]) -> Req {
        self.payload = payload.to_vec();
        self
    }

    fn option(mut self, number: u16, value: &[u8]) -> Req {
        self.options.push((number, value.to_vec()));
        self
    }

    fn non(mut self) -> Req {
        self.non = true;
        self
    }

    /// The datagram with Message ID `mid` and `token`.
    fn encode(&self, mid: u16, token: &[u8]) -> Vec<u8> {
        let mtype = if self.non { NON } else { CON };
        let tkl = u8::try_from(token.len()).expect("token of at most 8 bytes");
        let mut out = vec![0x40 | (mtype << 4) | tkl, 0x01];
        out.extend_from_slice(&mid.to_be_bytes());
        out.extend_from_slice(token);
        let mut options: Vec<(u16, Vec<u8>)> = Vec::new();
        options.extend(
            self.path
                .iter()
                .map(|s| (OPT_URI_PATH, s.as_bytes().to_vec())),
        );
        options.extend(
            self.query
                .iter()
                .map(|s| (OPT_URI_QUERY, s.as_bytes().to_vec())),
        );
        if let Some(num) = self.block2 {
            options.push((OPT_BLOCK2, uint_value((num << 4) | u32::from(SZX))));
        }
        options.extend(self.options.iter().cloned());
        // Stable: repeated options keep their order.
        options.sort_by_key(|&(number, _)| number);
        let mut previous = 0u16;
        for (number, value) in &options {
            let delta = usize::from(number - previous);
            previous = *number;
            let (delta_nibble, delta_ext) = option_nibble(delta);
            let (len_nibble, len_ext) = option_nibble(value.len());
            out.push((delta_nibble << 4) | len_nibble);
            out.extend_from_slice(&delta_ext);
            out.extend_from_slice(&len_ext);
            out.extend_from_slice(value);
        }
        if !self.payload.is_empty() {
            out.push(0xff);
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

/// The 4-bit field and extended bytes of an option delta or length.
fn option_nibble(v: usize) -> (u8, Vec<u8>) {
    if v < 13 {
        (u8::try_from(v).expect("small"), Vec::new())
    } else if v < 269 {
        (13, vec![u8::try_from(v - 13).expect("one byte")])
    } else {
        let ext = u16::try_from(v - 269).expect("two bytes");
        (14, ext.to_be_bytes().to_vec())
    }
}

// ---------------------------------------------------------------- replies

/// A reply, decoded with coap-lite.
#[derive(Debug, Clone)]
struct Reply {
    mtype: u8,
    code: u8,
    mid: u16,
    token: Vec<u8>,
    etag: Option<Vec<u8>>,
    /// (NUM, M, SZX)
    block2: Option<(u32, bool, u8)>,
    payload: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let packet = Packet::from_bytes(raw)
            .unwrap_or_else(|e| panic!("coap-lite rejects the server's reply ({e:?}): {raw:02x?}"));
        let block2 = packet.get_first_option(CoapOption::Block2).map(|v| {
            assert!(v.len() <= 3, "Block2 value of {} bytes", v.len());
            let value = v.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
            (
                value >> 4,
                value & 0x8 != 0,
                u8::try_from(value & 0x7).expect("3 bits"),
            )
        });
        Reply {
            mtype: (raw[0] >> 4) & 0x3,
            code: raw[1],
            mid: u16::from_be_bytes([raw[2], raw[3]]),
            token: packet.get_token().to_vec(),
            etag: packet.get_first_option(CoapOption::ETag).cloned(),
            block2,
            payload: packet.payload,
        }
    }

    fn etag_hex(&self) -> String {
        self.etag
            .as_deref()
            .map(hex)
            .unwrap_or_else(|| "none".into())
    }

    fn summary(&self) -> String {
        format!(
            "{} ETag {} Block2 {:?}, {} bytes {:02x?}..",
            code_text(self.code),
            self.etag_hex(),
            self.block2,
            self.payload.len(),
            &self.payload[..self.payload.len().min(8)]
        )
    }
}

// ---------------------------------------------------------------- a device

/// A device: one UDP socket (one endpoint) with its own Message IDs and
/// tokens.
struct Dev {
    name: String,
    socket: UdpSocket,
    server: SocketAddr,
    next_mid: u16,
    next_token: u32,
}

impl Dev {
    fn new(name: &str, server: SocketAddr) -> Dev {
        let seed = u16::try_from(fnv1a64(name.as_bytes()) & 0xffff).expect("16 bits");
        Dev {
            name: name.to_owned(),
            socket: support::client_socket(server),
            server,
            next_mid: seed,
            next_token: 0x0100_0000 ^ u32::from(seed),
        }
    }

    /// Sends `req` with a fresh Message ID and token and returns the reply
    /// (the ACK or RST with that Message ID for CON, the non-ACK with that
    /// token for NON), sending again after REPLY_TIMEOUT.
    fn call(&mut self, req: &Req) -> Reply {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_token = self.next_token.wrapping_add(1);
        let (mid, token) = (self.next_mid, self.next_token.to_be_bytes());
        let datagram = req.encode(mid, &token);
        let limits = (ATTEMPTS, REPLY_TIMEOUT);
        support::coap::exchange_until(&self.socket, self.server, &datagram, limits, |raw| {
            let reply = Reply::parse(raw);
            let matches = if req.non {
                reply.token == token && reply.mtype != ACK
            } else {
                reply.mid == mid && (reply.mtype == ACK || reply.mtype == RST)
            };
            matches.then_some(reply)
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no reply to {req:?} from {} after {ATTEMPTS} attempts",
                self.name, self.server
            )
        })
    }
}

// ---------------------------------------------------------------- the invariant

/// An image a test serves and the OFFSETs that test asked for it.
struct Candidate<'a> {
    label: &'a str,
    image: &'a [u8],
    offsets: &'a [u32],
}

/// The body a reply's ETag named: candidate index and OFFSET (0: whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BodyRef {
    candidate: usize,
    offset: u32,
}

/// Where the first bytes of `payload` occur in the candidates' images, for
/// failure messages ("image[7120..]").
fn locate(payload: &[u8], candidates: &[Candidate]) -> String {
    let probe = &payload[..payload.len().min(32)];
    if probe.is_empty() {
        return "an empty payload".into();
    }
    let found: Vec<String> = candidates
        .iter()
        .flat_map(|c| {
            c.image
                .windows(probe.len())
                .enumerate()
                .filter(|(_, w)| *w == probe)
                .map(move |(i, _)| format!("{}[{i}..]", c.label))
        })
        .take(4)
        .collect();
    if found.is_empty() {
        "bytes found in no image".into()
    } else {
        format!("bytes that are {}", found.join(" or "))
    }
}

/// The rule under test: a 2.05 block-wise reply carries an ETag that names
/// exactly one body (one image from one OFFSET), and its payload is that
/// body's bytes at the reply's Block2 position, with M set exactly when
/// more of that body follows. A tag that names no body this test asked for
/// fails. Returns the body named.
fn assert_block_matches_its_etag(reply: &Reply, candidates: &[Candidate], what: &str) -> BodyRef {
    assert!(
        reply.code == CONTENT,
        "{what}: expected 2.05, got {} {:?}",
        code_text(reply.code),
        String::from_utf8_lossy(&reply.payload)
    );
    let etag = reply
        .etag
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: a body without an ETag: {}", reply.summary()));
    let (num, more, szx) = reply
        .block2
        .unwrap_or_else(|| panic!("{what}: a body without Block2: {}", reply.summary()));
    let mut named = None;
    let mut known = Vec::new();
    for (index, c) in candidates.iter().enumerate() {
        let mut offsets = vec![0];
        offsets.extend(c.offsets.iter().copied().filter(|&o| o != 0));
        for offset in offsets {
            let tag = body_tag(c.image, offset);
            known.push(format!("{}@{offset}={}", c.label, hex(&tag)));
            if tag == etag {
                named = Some(BodyRef {
                    candidate: index,
                    offset,
                });
            }
        }
    }
    let named = named.unwrap_or_else(|| {
        panic!(
            "{what}: ETag {} names no body this test asked for (known: {}); block {num}, {}",
            hex(etag),
            known.join(", "),
            locate(&reply.payload, candidates)
        )
    });
    let c = &candidates[named.candidate];
    let body = &c.image[usize::try_from(named.offset).expect("offset fits usize")..];
    let size = 16usize << szx;
    let start = usize::try_from(num).expect("num fits usize") * size;
    assert!(
        start < body.len(),
        "{what}: block {num} of {size} B starts past the end of {}@{} ({} bytes)",
        c.label,
        named.offset,
        body.len()
    );
    let end = (start + size).min(body.len());
    assert!(
        reply.payload == body[start..end],
        "{what}: ETag {} names {} from OFFSET {}, so block {num} must be {}[{}..{}], \
         but the payload ({} bytes) holds {}",
        hex(etag),
        c.label,
        named.offset,
        c.label,
        start + usize::try_from(named.offset).expect("fits"),
        end + usize::try_from(named.offset).expect("fits"),
        reply.payload.len(),
        locate(&reply.payload, candidates)
    );
    assert_eq!(
        more,
        end < body.len(),
        "{what}: M bit of block {num} of {}@{} ({} bytes)",
        c.label,
        named.offset,
        body.len()
    );
    named
}

// ---------------------------------------------------------------- fixture

/// One image `FLD_1_0_1_APP.fmu` of IMAGE_LEN bytes in a fresh directory.
struct Fixture {
    dir: TempDir,
    id: String,
    image: Vec<u8>,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = TempDir::new(tag);
        let images = support::write_images(&dir, &[("FLD", IMAGE_LEN)]);
        let image = images.into_iter().next().expect("one image");
        Fixture {
            dir,
            id: image.id,
            image: image.bytes,
        }
    }

    /// Block `num` of `/updates/{id}`, no payload, no query.
    fn plain(&self, num: u32) -> Req {
        Req::get(&format!("updates/{}", self.id)).block(num)
    }

    /// Block `num` of `/updates/{id}` with OFFSET as a 4-byte payload.
    fn with_payload(&self, num: u32, offset: u32) -> Req {
        self.plain(num).payload(&offset.to_le_bytes())
    }

    /// Block `num` of `/updates/{id}?offset=OFFSET`.
    fn with_query(&self, num: u32, offset: u32) -> Req {
        self.plain(num).query(&format!("offset={offset}"))
    }

    fn candidate<'a>(&'a self, offsets: &'a [u32]) -> Candidate<'a> {
        Candidate {
            label: "image",
            image: &self.image,
            offsets,
        }
    }
}

/// Starts a download of `fx`'s image from `offset` the way libcoap's
/// `coap-client -f` does: the OFFSET payload with block 0 only, then
/// payload-less blocks 1..=`last`. Every block must be the offset body
/// under its tag.
fn offset_download_on_block_0(dev: &mut Dev, fx: &Fixture, offset: u32, last: u32) {
    let offsets = [offset];
    let candidates = [fx.candidate(&offsets)];
    for num in 0..=last {
        let req = if num == 0 {
            fx.with_payload(0, offset)
        } else {
            fx.plain(num)
        };
        let reply = dev.call(&req);
        let what = format!("{}: OFFSET {offset} block {num}", dev.name);
        let body = assert_block_matches_its_etag(&reply, &candidates, &what);
        assert_eq!(
            body.offset,
            offset,
            "{what}: expected the body from OFFSET {offset}, got {}",
            reply.summary()
        );
    }
}

/// After the server lost `dev`'s remembered OFFSET (restart, new source
/// port, eviction), the payload-less continuation: whatever comes back
/// must be the body its ETag names, and the tag must not be the offset
/// body's unless the bytes are (the client can tell the body changed).
fn continuation_after_loss(dev: &mut Dev, fx: &Fixture, offset: u32, num: u32, how: &str) {
    let offsets = [offset];
    let candidates = [fx.candidate(&offsets)];
    let reply = dev.call(&fx.plain(num));
    eprintln!(
        "{how}: payload-less block {num} after OFFSET {offset} on block 0 got {} ({})",
        reply.summary(),
        locate(&reply.payload, &candidates)
    );
    let what = format!("{how}: payload-less block {num}");
    let body = assert_block_matches_its_etag(&reply, &candidates, &what);
    if body.offset == 0 {
        assert_ne!(
            reply.etag.as_deref(),
            Some(&body_tag(&fx.image, offset)[..]),
            "{what}: the whole-image body under the offset body's tag"
        );
    }
}

/// Kills `server` and starts a new one over `dir` on the same address.
fn restart(server: TestServer, dir: &TempDir, extra: &[&str]) -> TestServer {
    let addr = server.addr;
    drop(server);
    spawn_server(dir.path(), &addr.to_string(), extra)
}

// ---------------------------------------------------------------- tests

/// Rule 2: `?offset=N` requests neither read nor write per-peer state, so a
/// device (or two apps behind one NAT mapping) alternating a resumed
/// download by query and a plain download on one endpoint gets two
/// consistent bodies.
#[test]
fn offset_query_and_plain_download_interleaved_on_one_endpoint() {
    const OFFSET: u32 = 1000;
    let fx = Fixture::new("ff-interleave");
    let server = spawn_server(fx.dir.path(), "127.0.0.1:0", &[]);
    let mut dev = Dev::new("interleave", server.addr);
    let offsets = [OFFSET];
    let candidates = [fx.candidate(&offsets)];
    let offset_blocks = blocks_of(IMAGE_LEN - OFFSET as usize);
    for num in 0..blocks_of(IMAGE_LEN) {
        if num < offset_blocks {
            let reply = dev.call(&fx.with_query(num, OFFSET));
            let what = format!("?offset={OFFSET} block {num}");
            let body = assert_block_matches_its_etag(&reply, &candidates, &what);
            assert_eq!(body.offset, OFFSET, "{what}: {}", reply.summary());
            if num < 2 {
                eprintln!("{what}: {}", reply.summary());
            }
        }
        let reply = dev.call(&fx.plain(num));
        let what = format!("plain block {num} (after ?offset={OFFSET} block {num})");
        if num < 2 {
            eprintln!("{what}: {}", reply.summary());
        }
        let body = assert_block_matches_its_etag(&reply, &candidates, &what);
        assert_eq!(body.offset, 0, "{what}: {}", reply.summary());
    }
}

/// Rule 3: the last block of a remembered OFFSET body served to a
/// payload-less continuation ends it; a later plain request is the whole
/// image (the old server served image[7120..] under the content tag).
#[test]
fn plain_resume_after_an_offset_download_gets_the_whole_image_body() {
    const OFFSET: u32 = 2000;
    let fx = Fixture::new("ff-after-offset");
    let server = spawn_server(fx.dir.path(), "127.0.0.1:0", &[]);
    let mut dev = Dev::new("after-offset", server.addr);
    let last = blocks_of(IMAGE_LEN - OFFSET as usize) - 1;
    offset_download_on_block_0(&mut dev, &fx, OFFSET, last);
    let offsets = [OFFSET];
    let candidates = [fx.candidate(&offsets)];
    let reply = dev.call(&fx.plain(5));
    eprintln!(
        "plain block 5 after a complete OFFSET {OFFSET} download: {} ({})",
        reply.summary(),
        locate(&reply.payload, &candidates)
    );
    let what = "plain block 5 after the OFFSET download completed";
    let body = assert_block_matches_its_etag(&reply, &candidates, what);
    assert_eq!(body.offset, 0, "{what}: {}", reply.summary());
    assert_eq!(reply.payload, fx.image[5 * BLOCK..6 * BLOCK], "{what}");
    assert_eq!(reply.etag.as_deref(), Some(&content_tag(&fx.image)[..]));
}

/// Rule 4: a restart loses the remembered OFFSET; the continuation's ETag
/// tells the client the body changed.
#[test]
fn offset_on_block_0_across_server_restart() {
    const OFFSET: u32 = 3000;
    let fx = Fixture::new("ff-restart");
    let server = spawn_server(fx.dir.path(), "127.0.0.1:0", &[]);
    let mut dev = Dev::new("restart", server.addr);
    offset_download_on_block_0(&mut dev, &fx, OFFSET, 3);
    let server = restart(server, &fx.dir, &[]);
    assert_eq!(server.addr, dev.server, "restarted on the same address");
    continuation_after_loss(&mut dev, &fx, OFFSET, 4, "after a server restart");
}

/// Rule 4: a new source port (NAT rebinding) is a new peer.
#[test]
fn offset_on_block_0_after_nat_rebinding() {
    const OFFSET: u32 = 3000;
    let fx = Fixture::new("ff-nat");
    let server = spawn_server(fx.dir.path(), "127.0.0.1:0", &[]);
    let mut dev = Dev::new("nat-before", server.addr);
    offset_download_on_block_0(&mut dev, &fx, OFFSET, 3);
    let mut rebound = Dev::new("nat-after", server.addr);
    rebound.next_mid = dev.next_mid;
    continuation_after_loss(&mut rebound, &fx, OFFSET, 4, "after a NAT rebinding");
}

/// Rule 4: with `--peers 2`, three other devices starting downloads evict
/// device A's remembered OFFSET.
#[test]
fn offset_on_block_0_after_eviction() {
    let fx = Fixture::new("ff-evict");
    let server = spawn_server(fx.dir.path(), "127.0.0.1:0", &["--peers", "2"]);
    let mut a = Dev::new("A", server.addr);
    offset_download_on_block_0(&mut a, &fx, 3000, 1);
    for (name, offset) in [("B", 4000), ("C", 5000), ("D", 6000)] {
        let mut other = Dev::new(name, server.addr);
        offset_download_on_block_0(&mut other, &fx, offset, 1);
    }
    // The invariant over every body this test started; A must get its own
    // body or the whole image, never another device's.
    let offsets = [3000, 4000, 5000, 6000];
    let candidates = [fx.candidate(&offsets)];
    let reply = a.call(&fx.plain(2));
    eprintln!(
        "after eviction: A's payload-less block 2 got {} ({})",
        reply.summary(),
        locate(&reply.payload, &candidates)
    );
    let what = "A's payload-less block 2 after B, C, D with --peers 2";
    let body = assert_block_matches_its_etag(&reply, &candidates, what);
    assert!(
        body.offset == 0 || body.offset == 3000,
        "{what}: A got the body from OFFSET {} of another device",
        body.offset
    );
}

/// Rules 1 and 3 on the legacy `/updates` form: one endpoint starts AAA at
/// OFFSET 0 and then BBB at OFFSET 500; the payload-less continuation must
/// be the body its ETag names (never one image's tag on the other's bytes).
#[test]
fn interleaved_legacy_transfers_on_one_endpoint() {
    let dir = TempDir::new("ff-legacy");
    let aaa = support::image_bytes(IMAGE_LEN, 101);
    let bbb = support::image_bytes(IMAGE_LEN, 202);
    dir.write("AAA_1_0_0_APP.fmu", &aaa);
    dir.write("BBB_1_0_0_APP.fmu", &bbb);
    let server = spawn_server(dir.path(), "127.0.0.1:0", &[]);
    let mut dev = Dev::new("legacy", server.addr);
    let (aaa_offsets, bbb_offsets) = ([0u32], [500u32]);
    let candidates = [
        Candidate {
            label: "AAA",
            image: &aaa,
            offsets: &aaa_offsets,
        },
        Candidate {
            label: "BBB",
            image: &bbb,
            offsets: &bbb_offsets,
        },
    ];
    let legacy = |pid: &str, offset: u32| {
        Req::get("updates")
            .block(0)
            .payload(&support::device_payload(pid, TYPE_APP, 0, Some(offset)))
    };
    let reply = dev.call(&legacy("AAA", 0));
    eprintln!("legacy AAA@0 block 0: {}", reply.summary());
    let body = assert_block_matches_its_etag(&reply, &candidates, "legacy AAA@0 block 0");
    assert_eq!(
        body,
        BodyRef {
            candidate: 0,
            offset: 0
        },
        "{}",
        reply.summary()
    );
    let reply = dev.call(&legacy("BBB", 500));
    eprintln!("legacy BBB@500 block 0: {}", reply.summary());
    let body = assert_block_matches_its_etag(&reply, &candidates, "legacy BBB@500 block 0");
    assert_eq!(
        body,
        BodyRef {
            candidate: 1,
            offset: 500
        },
        "{}",
        reply.summary()
    );
    let reply = dev.call(&Req::get("updates").block(1));
    eprintln!(
        "payload-less GET /updates block 1: {} ({})",
        reply.summary(),
        locate(&reply.payload, &candidates)
    );
    let body = assert_block_matches_its_etag(
        &reply,
        &candidates,
        "payload-less GET /updates block 1 after AAA@0 then BBB@500",
    );
    eprintln!(
        "  its ETag names {}@{}",
        candidates[body.candidate].label, body.offset
    );
}

// ---------------------------------------------------------------- libcoap through a restart

/// The relay's account of what it did.
#[derive(Debug, Default)]
struct RelayReport {
    to_server: usize,
    to_client: usize,
    dropped: usize,
    restarted_at: Option<usize>,
    traced: usize,
    started: Option<Instant>,
    events: Vec<String>,
}

/// Records a datagram the relay passed on (around the restart and at the
/// end of the transfer), decoded: type, code, MID, Block2, ETag, payload.
fn trace(report: &mut RelayReport, direction: &str, raw: &[u8]) {
    let n = report.to_server + report.to_client;
    let near_restart = match report.restarted_at {
        None => report.to_client + 4 >= 300,
        Some(_) => report.traced < 40,
    };
    // The last block of a body (M clear) is always worth a line.
    let last_block = raw.len() > 4 && raw[1] == CONTENT && {
        Packet::from_bytes(raw)
            .ok()
            .and_then(|p| p.get_first_option(CoapOption::Block2).cloned())
            .is_some_and(|v| v.last().is_some_and(|b| b & 8 == 0))
    };
    if !(near_restart || last_block) || report.traced >= 200 {
        return;
    }
    report.traced += 1;
    let text = match Packet::from_bytes(raw) {
        Ok(p) => {
            let block2 = p.get_first_option(CoapOption::Block2).map(|v| {
                let value = v.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
                format!(
                    "{}/{}/{}",
                    value >> 4,
                    u8::from(value & 8 != 0),
                    16 << (value & 7)
                )
            });
            format!(
                "type {} code {} MID {} token {} Block2 {} ETag {} payload {} bytes {:02x?}",
                (raw[0] >> 4) & 3,
                code_text(raw[1]),
                p.header.message_id,
                hex(p.get_token()),
                block2.unwrap_or_else(|| "-".into()),
                p.get_first_option(CoapOption::ETag)
                    .map(|t| hex(t))
                    .unwrap_or_else(|| "-".into()),
                p.payload.len(),
                &p.payload[..p.payload.len().min(4)]
            )
        }
        Err(e) => format!("undecodable ({e:?}) {raw:02x?}"),
    };
    let at = report.started.map(|t| t.elapsed()).unwrap_or_default();
    report
        .events
        .push(format!("#{n} {at:.2?} {direction} {text}"));
}

/// Stops the relay thread and joins it when dropped, so that a failing
/// test does not leave a server process behind.
struct Relay {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(RelayReport, Option<TestServer>)>>,
}

impl Relay {
    fn finish(mut self) -> (RelayReport, Option<TestServer>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("relay running")
            .join()
            .expect("relay thread panicked")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A UDP relay: datagrams to `front` go to the current server from `back`,
/// the server's replies go back to the client. After `restart_after`
/// replies it kills the server and starts a new one over `dir` on a fresh
/// port, dropping what the client sends meanwhile. Runs until `stop` or
/// for at most `limit`.
fn start_relay(
    dir: PathBuf,
    server: TestServer,
    front: UdpSocket,
    restart_after: usize,
    limit: Duration,
) -> Relay {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind relay back socket");
        for socket in [&front, &back] {
            socket
                .set_read_timeout(Some(Duration::from_millis(1)))
                .expect("set read timeout");
        }
        let mut report = RelayReport {
            started: Some(Instant::now()),
            ..RelayReport::default()
        };
        let mut server = Some(server);
        let mut target = server.as_ref().map(|s| s.addr);
        let mut client: Option<SocketAddr> = None;
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + limit;
        // At most one datagram a direction a round; the cap is far above a
        // 1270-block download with retransmissions.
        for _ in 0..20_000_000u32 {
            if stopped.load(Ordering::SeqCst) || Instant::now() >= deadline {
                break;
            }
            match front.recv_from(&mut buf) {
                Ok((n, from)) => {
                    client = Some(from);
                    match target {
                        Some(to) => {
                            let _ = back.send_to(&buf[..n], to);
                            report.to_server += 1;
                            trace(&mut report, "->", &buf[..n]);
                        }
                        None => report.dropped += 1,
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => report.events.push(format!("front: {e}")),
            }
            match back.recv_from(&mut buf) {
                Ok((n, from)) if Some(from) == target => {
                    if let Some(to) = client {
                        let _ = front.send_to(&buf[..n], to);
                        report.to_client += 1;
                        trace(&mut report, "<-", &buf[..n]);
                    }
                    if report.to_client == restart_after && report.restarted_at.is_none() {
                        let old = server.take().expect("a server is up");
                        report.events.push(format!(
                            "after {} replies: killing the server on {}",
                            report.to_client, old.addr
                        ));
                        drop(old);
                        let new = spawn_server(&dir, "127.0.0.1:0", &[]);
                        // What the client sent while no server was up is lost.
                        while front.recv_from(&mut buf).is_ok() {
                            report.dropped += 1;
                            if report.dropped > 10_000 {
                                break;
                            }
                        }
                        report.events.push(format!(
                            "new server on {}; {} client datagrams dropped meanwhile",
                            new.addr, report.dropped
                        ));
                        target = Some(new.addr);
                        server = Some(new);
                        report.restarted_at = Some(report.to_client);
                    }
                }
                Ok((_, from)) => report.events.push(format!("stray datagram from {from}")),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => report.events.push(format!("back: {e}")),
            }
        }
        (report, server)
    });
    Relay {
        stop,
        handle: Some(handle),
    }
}

/// libcoap's coap-client sends the OFFSET payload (`-f`) with block 0 only.
/// When the server restarts mid-download, the payload-less continuation
/// can no longer be the offset body: it is answered with the whole image
/// under the whole image's ETag, libcoap sees the change ("Data body
/// updated during receipt"), and no byte of another body reaches its file.
///
/// What libcoap 4.3.1 does next is its own: it restarts from block 0
/// *without* the `-f` payload, fetches the whole image, does not write it,
/// and exits 0 after its `-B` wait with the offset body's first part only
/// (it exits 0 on error replies too). So the test holds the server to what
/// it can guarantee: the file is a prefix of image[OFFSET..], never a
/// splice (the old server's exit-0 file was image[200000..507200] followed
/// by image[307200..]); and a complete file is exactly the body.
#[test]
fn libcoap_offset_download_through_a_server_restart_never_writes_a_wrong_byte() {
    const PROGRAM: &str = "coap-client-notls";
    const LEN: usize = 1_500_000;
    const OFFSET: u32 = 200_000;
    if !support::require_program(PROGRAM) {
        return;
    }
    let dir = TempDir::new("ff-libcoap");
    let images = support::write_images(&dir, &[("BIGFLD", LEN)]);
    let image = &images[0];
    let work = TempDir::new("ff-libcoap-out");
    let off = work.write("off.bin", &OFFSET.to_le_bytes());
    let out = work.path().join("out.bin");
    let server = spawn_server(dir.path(), "127.0.0.1:0", &[]);
    let front = UdpSocket::bind("127.0.0.1:0").expect("bind relay front socket");
    let relay_addr = front.local_addr().expect("relay address");
    let relay = start_relay(
        dir.path().to_path_buf(),
        server,
        front,
        300,
        Duration::from_secs(130),
    );
    let uri = format!("coap://{relay_addr}/updates/{}", image.id);
    let started = Instant::now();
    let output = support::run_bounded(
        Command::new(PROGRAM)
            .args(["-v", "6", "-B", "8", "-m", "get", "-b", "1024", "-f"])
            .arg(&off)
            .arg("-o")
            .arg(&out)
            .arg(&uri),
        Duration::from_secs(120),
    );
    let elapsed = started.elapsed();
    let (report, _server) = relay.finish();
    let body = std::fs::read(&out).unwrap_or_default();
    let expected = &image.bytes[OFFSET as usize..];
    let first_difference = body.iter().zip(expected).position(|(a, b)| a != b);
    eprintln!(
        "coap-client -f off.bin (OFFSET {OFFSET}) {uri}: {:?} after {elapsed:.1?}; \
         out.bin {} bytes ({} expected), first difference at {first_difference:?}, \
         equal: {}",
        output.status,
        body.len(),
        expected.len(),
        body == expected
    );
    eprintln!(
        "relay: {} requests forwarded, {} replies relayed, {} dropped, restart after {:?} replies",
        report.to_server, report.to_client, report.dropped, report.restarted_at
    );
    for event in &report.events {
        eprintln!("relay: {event}");
    }
    // libcoap logs warnings and info (-v 6) to stdout, errors to stderr,
    // between dumps of every PDU: only its log lines are shown.
    for (name, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                [
                    " EMRG ", " ALRT ", " CRIT ", " ERR ", " WARN ", " NOTE ", " INFO ",
                ]
                .iter()
                .any(|level| l.contains(level))
            })
            .take(20)
            .collect();
        eprintln!("coap-client {name} log lines:\n{}", lines.join("\n"));
    }
    if body.len() >= 64 && body != expected {
        let probe = &body[body.len() - 64..];
        let at = image.bytes.windows(64).position(|w| w == probe);
        eprintln!("out.bin's last 64 bytes are image[{at:?}..]");
        let probe = &body[first_difference.unwrap_or(0)..][..64.min(body.len())];
        let at = image.bytes.windows(probe.len()).position(|w| w == probe);
        eprintln!("out.bin at the first difference holds image[{at:?}..]");
    }
    assert!(
        report.restarted_at.is_some(),
        "the server was never restarted ({} replies relayed): the test proved nothing",
        report.to_client
    );
    assert!(
        expected.starts_with(&body),
        "out.bin ({} bytes) is not a prefix of image[{OFFSET}..]: first difference at \
         {first_difference:?}, a spliced body",
        body.len()
    );
    if output.status.success() && body.len() == expected.len() {
        assert!(body == expected, "a complete file must be exactly the body");
    }
    let said = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("Data body updated during receipt"),
        "libcoap did not see the body change across the restart: the ETag did not tell it"
    );
}

// ---------------------------------------------------------------- Proxy-Uri, Proxy-Scheme

/// Rule 5: a request with Proxy-Uri or Proxy-Scheme, CON or NON, gets 5.05
/// Proxying Not Supported with a diagnostic.
#[test]
fn proxy_uri_and_proxy_scheme_get_5_05() {
    let fx = Fixture::new("ff-proxy");
    let server = spawn_server(fx.dir.path(), "127.0.0.1:0", &[]);
    let mut dev = Dev::new("proxy", server.addr);
    let cases = [
        (
            "Proxy-Uri coap://…/updates",
            Req::get("").option(
                OPT_PROXY_URI,
                format!("coap://{}/updates", server.addr).as_bytes(),
            ),
        ),
        (
            "Proxy-Uri coap://…/.well-known/core",
            Req::get("").option(
                OPT_PROXY_URI,
                format!("coap://{}/.well-known/core", server.addr).as_bytes(),
            ),
        ),
        (
            "Proxy-Scheme coap, /updates",
            Req::get("updates").option(OPT_PROXY_SCHEME, b"coap"),
        ),
        (
            "Proxy-Scheme coap, /.well-known/core",
            Req::get(".well-known/core").option(OPT_PROXY_SCHEME, b"coap"),
        ),
    ];
    for (what, req) in cases {
        for non in [false, true] {
            let req = if non { req.clone().non() } else { req.clone() };
            let what = format!("{} {what}", if non { "NON" } else { "CON" });
            let expected_mid = dev.next_mid.wrapping_add(1);
            let reply = dev.call(&req);
            eprintln!(
                "{what}: {} {:?}",
                code_text(reply.code),
                String::from_utf8_lossy(&reply.payload)
            );
            assert_eq!(
                reply.code,
                PROXYING_NOT_SUPPORTED,
                "{what}: expected 5.05, got {} {:?}",
                code_text(reply.code),
                String::from_utf8_lossy(&reply.payload)
            );
            let text = String::from_utf8(reply.payload.clone()).expect("UTF-8 diagnostic");
            assert!(!text.trim().is_empty(), "{what}: 5.05 without a diagnostic");
            if non {
                assert_eq!(reply.mtype, NON, "{what}: a NON request gets a NON reply");
            } else {
                assert_eq!(reply.mtype, ACK, "{what}: a CON request gets an ACK");
                assert_eq!(reply.mid, expected_mid, "{what}: the ACK's Message ID");
            }
        }
    }
}

// ---------------------------------------------------------------- NON Message IDs

/// Sends `count` NON requests from `dev` and returns the replies' MIDs.
fn non_mids(dev: &mut Dev, count: usize) -> Vec<u16> {
    (0..count)
        .map(|_| {
            let reply = dev.call(&Req::get("nope").non());
            assert_eq!(reply.mtype, NON, "NON reply: {}", reply.summary());
            reply.mid
        })
        .collect()
}

/// Rule 6: NON replies' Message IDs are unique per endpoint within
/// EXCHANGE_LIFETIME, whatever other endpoints do, and start at random (so
/// also after a restart).
#[test]
fn non_message_ids_are_unique_per_endpoint() {
    // X's 20 MIDs, then FLOOD NON replies to other endpoints, then X's 20
    // more. FLOOD = 65536 - 10: a single counter shared by all endpoints
    // (the old server's) comes back to X's first MIDs exactly then, so X's
    // second 20 would overlap the first 20 by ten; per-endpoint counters
    // give 40 distinct MIDs.
    const FLOOD: usize = 65_536 - 10;
    let fx = Fixture::new("ff-mids");
    let server = spawn_server(fx.dir.path(), "127.0.0.1:0", &[]);
    let mut x = Dev::new("X", server.addr);
    let mut before = non_mids(&mut x, 20);

    let others: Vec<UdpSocket> = (0..4)
        .map(|_| {
            let s = support::client_socket(server.addr);
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("set read timeout");
            s
        })
        .collect();
    let started = Instant::now();
    let mut lost = 0usize;
    let mut sent = 0usize;
    let mut buf = [0u8; 2048];
    for i in 0..FLOOD {
        if started.elapsed() > Duration::from_secs(40) {
            break;
        }
        let socket = &others[i % others.len()];
        let mid = u16::try_from(i % 65_536).expect("16 bits");
        let token = u32::try_from(i).expect("fits").to_be_bytes();
        socket
            .send_to(&Req::get("nope").non().encode(mid, &token), server.addr)
            .expect("send");
        sent += 1;
        if socket.recv_from(&mut buf).is_err() {
            lost += 1;
        }
    }
    eprintln!(
        "flood: {sent} NON requests from 4 other endpoints in {:.1?}, {lost} replies not seen",
        started.elapsed()
    );
    assert_eq!(sent, FLOOD, "the flood did not finish within 40 s");

    before.extend(non_mids(&mut x, 20));
    eprintln!("X's 40 MIDs before restart: {before:?}");
    let mut distinct = before.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let repeated: Vec<u16> = before
        .iter()
        .copied()
        .filter(|m| before.iter().filter(|n| *n == m).count() > 1)
        .collect();
    assert_eq!(
        distinct.len(),
        before.len(),
        "X's NON reply MIDs repeat within EXCHANGE_LIFETIME: {repeated:?} among {before:?}"
    );

    let server = restart(server, &fx.dir, &[]);
    assert_eq!(server.addr, x.server);
    let after = non_mids(&mut x, 20);
    eprintln!("X's 20 MIDs after restart: {after:?}");
    // A random start per endpoint: the first MID after the restart must
    // differ from the first before (chance 1/65536 of a false failure),
    // and the two runs may share at most 2 MIDs. Asserting no overlap at
    // all would fail falsely about 1 time in 1000 for consecutive MIDs
    // (two runs of 40 and 20 overlap when the random starts fall within
    // ~59 of each other: 59/65536) and about 1% for random MIDs
    // (40 * 20 / 65536); overlap > 2 is rarer still (~56/65536 for
    // consecutive MIDs), while a counter that restarts where it started
    // overlaps all 20.
    assert_ne!(
        after[0], before[0],
        "the first NON MID after a restart equals the first before it: no random start"
    );
    let overlap = after.iter().filter(|m| before.contains(m)).count();
    assert!(
        overlap <= 2,
        "{overlap} of X's MIDs after the restart repeat MIDs from before it: {after:?} vs {before:?}"
    );
}
