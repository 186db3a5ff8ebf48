//! The real server process over loopback UDP (127.0.0.1 and [::1]), driven
//! with raw datagrams: requests built with `iot_ota::wire::Emitter`, replies
//! decoded with `iot_ota::wire::Message::parse` and cross-checked with
//! coap-lite. Each test covers a part of README's protocol section on both families.
//!
//! Images are generated (support::image_bytes, one seed each) with sizes at
//! block edges, 0, 1, 1023, 1024 and 1025 bytes, and one of 4 MiB + 777
//! bytes so that block numbers pass 4095 (a 3-byte Block2 value).

mod support;

use coap_lite::{CoapOption, MessageClass, MessageType, RequestType, ResponseType};
use iot_ota::wire::{Block, Emitter, Message};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use support::{device_payload, TempDir, TestImage as Image, TestServer, XorShift};

/// The large image: 4 MiB + 777 bytes, 4097 blocks of 1 KiB.
const BIG_LEN: usize = 4 * 1024 * 1024 + 777;
/// Version of every test image, 1.0.1.
const VERSION_1_0_1: u32 = (1 << 24) | 1;
/// `APP` as a TYPE number.
const TYPE_APP: u8 = 3;
/// How long one request waits for its reply before it is sent again.
const REPLY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Sends of one request before the test gives up.
const ATTEMPTS: usize = 3;
/// How long "no reply" is waited for.
const SILENCE: Duration = Duration::from_millis(300);
/// Block sizes the downloads are run with: 16, 64, 256 and 1024 bytes.
const SZXS: [u8; 4] = [0, 2, 4, 6];

// ---------------------------------------------------------------- fixture

/// The updates directory of a test and what is in it.
struct Fixture {
    dir: TempDir,
    images: Vec<Image>,
}

impl Fixture {
    /// The small images, and the 4 MiB one when `big`.
    fn new(tag: &str, big: bool) -> Fixture {
        let dir = TempDir::new(tag);
        let images = support::write_size_images(&dir, big.then_some(BIG_LEN));
        Fixture { dir, images }
    }

    fn image(&self, pid: &str) -> &Image {
        support::find_image(&self.images, pid)
    }

    fn small(&self) -> impl Iterator<Item = &Image> {
        self.images.iter().filter(|i| i.bytes.len() < BIG_LEN)
    }
}

/// The device payload of `image`'s PID with TYPE APP and version 0.0.0:
/// a lookup without `offset`, a legacy download with it.
fn device_of(image: &Image, offset: Option<u32>) -> Vec<u8> {
    device_payload(&image.pid, TYPE_APP, 0, offset)
}

fn offset_u32(offset: usize) -> u32 {
    u32::try_from(offset).expect("offset fits u32")
}

// ---------------------------------------------------------------- messages

/// A request to encode: everything a test varies.
#[derive(Debug, Clone)]
struct Req {
    mtype: MessageType,
    code: MessageClass,
    token: Vec<u8>,
    path: Vec<String>,
    query: Vec<String>,
    block2: Option<Block>,
    /// Further options as raw (number, value) pairs.
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Req {
    /// A Confirmable GET of `path` ("updates/1234abcd").
    fn get(path: &str) -> Req {
        Req {
            mtype: MessageType::Confirmable,
            code: MessageClass::Request(RequestType::Get),
            token: vec![0x7a],
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

    fn block(mut self, block: Block) -> Req {
        self.block2 = Some(block);
        self
    }

    fn payload(mut self, payload: Vec<u8>) -> Req {
        self.payload = payload;
        self
    }

    fn token(mut self, token: &[u8]) -> Req {
        self.token = token.to_vec();
        self
    }

    fn query(mut self, query: &[&str]) -> Req {
        self.query = query.iter().map(|&q| q.to_owned()).collect();
        self
    }

    fn option(mut self, number: u16, value: &[u8]) -> Req {
        self.options.push((number, value.to_vec()));
        self
    }

    fn code(mut self, code: RequestType) -> Req {
        self.code = MessageClass::Request(code);
        self
    }

    fn non(mut self) -> Req {
        self.mtype = MessageType::NonConfirmable;
        self
    }

    /// The datagram, with Message ID `mid`.
    fn encode(&self, mid: u16) -> Vec<u8> {
        let mut options: Vec<(u16, Vec<u8>)> = Vec::new();
        for segment in &self.path {
            options.push((CoapOption::UriPath.into(), segment.as_bytes().to_vec()));
        }
        for q in &self.query {
            options.push((CoapOption::UriQuery.into(), q.as_bytes().to_vec()));
        }
        if let Some(block) = self.block2 {
            let mut raw = [0; 4];
            options.push((CoapOption::Block2.into(), block.encode(&mut raw).to_vec()));
        }
        options.extend(self.options.iter().cloned());
        // Stable: repeated options keep their order.
        options.sort_by_key(|&(number, _)| number);
        let mut buf = vec![0u8; 4096];
        let mut e =
            Emitter::new(&mut buf, self.mtype, self.code, mid, &self.token).expect("header fits");
        for (number, value) in &options {
            e.option(*number, value).expect("option fits");
        }
        let len = e.payload(&self.payload).expect("payload fits");
        buf.truncate(len);
        buf
    }
}

/// A reply, decoded and owned.
#[derive(Debug, Clone)]
struct Resp {
    raw: Vec<u8>,
    mtype: MessageType,
    code: MessageClass,
    mid: u16,
    token: Vec<u8>,
    block2: Option<Block>,
    size2: Option<u32>,
    etag: Option<Vec<u8>>,
    content_format: Option<u16>,
    payload: Vec<u8>,
}

impl Resp {
    /// Decodes a datagram the server sent; it must be well formed for both
    /// our parser and coap-lite (the oracle).
    fn decode(raw: &[u8]) -> Resp {
        let m = Message::parse(raw)
            .unwrap_or_else(|e| panic!("server sent a malformed reply ({e}): {raw:02x?}"));
        let oracle = coap_lite::Packet::from_bytes(raw)
            .unwrap_or_else(|e| panic!("coap-lite rejects the server's reply ({e:?}): {raw:02x?}"));
        assert_eq!(
            oracle.header.message_id, m.mid,
            "coap-lite disagrees on the MID"
        );
        assert_eq!(
            oracle.payload, m.payload,
            "coap-lite disagrees on the payload"
        );
        assert_eq!(
            oracle.get_token(),
            m.token,
            "coap-lite disagrees on the token"
        );
        let block2 = m
            .block2
            .map(|b| b.unwrap_or_else(|e| panic!("server sent a bad Block2 ({e:?})")));
        Resp {
            raw: raw.to_vec(),
            mtype: m.mtype,
            code: m.class(),
            mid: m.mid,
            token: m.token.to_vec(),
            block2,
            size2: m.size2,
            etag: m.etag.map(<[u8]>::to_vec),
            content_format: m.content_format,
            payload: m.payload.to_vec(),
        }
    }

    fn is(&self, code: ResponseType) -> bool {
        self.code == MessageClass::Response(code)
    }

    /// The payload as text (diagnostics, ids, link format).
    fn text(&self) -> String {
        String::from_utf8(self.payload.clone())
            .unwrap_or_else(|_| panic!("payload is not UTF-8: {self:?}"))
    }

    /// Asserts an error reply: the code and a non-empty UTF-8 diagnostic
    /// (RFC 7252 §5.5.2).
    fn assert_error(&self, code: ResponseType, what: &str) {
        assert!(
            self.is(code),
            "{what}: expected {}, got {} {:?}",
            MessageClass::Response(code),
            self.code,
            String::from_utf8_lossy(&self.payload)
        );
        assert!(
            !self.text().trim().is_empty(),
            "{what}: {} without a diagnostic payload",
            self.code
        );
    }
}

// ---------------------------------------------------------------- client

/// A client socket with Message ID and token counters.
struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    next_mid: u16,
    next_token: u32,
}

impl Client {
    fn new(server: &TestServer) -> Client {
        Client {
            socket: support::client_socket(server.addr),
            server: server.addr,
            next_mid: 0x4000,
            next_token: 0x0100_0000,
        }
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// A fresh 4-byte token.
    fn fresh_token(&mut self) -> Vec<u8> {
        self.next_token = self.next_token.wrapping_add(1);
        self.next_token.to_be_bytes().to_vec()
    }

    fn send(&self, datagram: &[u8]) {
        self.socket
            .send_to(datagram, self.server)
            .expect("send to server");
    }

    /// The next datagram from the server within `within`, or `None`.
    fn receive(&self, within: Duration) -> Option<Vec<u8>> {
        support::coap::receive_from(&self.socket, self.server, within)
    }

    /// Sends `datagram` and waits for the reply whose MID is `mid` (CON) or
    /// whose token is `token` (NON); other datagrams are skipped. The
    /// datagram is sent again after each REPLY_TIMEOUT, ATTEMPTS times.
    fn exchange(&self, datagram: &[u8], mtype: MessageType, mid: u16, token: &[u8]) -> Resp {
        let limits = (ATTEMPTS, REPLY_TIMEOUT);
        support::coap::exchange_until(&self.socket, self.server, datagram, limits, |raw| {
            let reply = Resp::decode(raw);
            let matches = match mtype {
                MessageType::Confirmable => {
                    reply.mid == mid
                        && matches!(
                            reply.mtype,
                            MessageType::Acknowledgement | MessageType::Reset
                        )
                }
                _ => reply.token == token && reply.mtype != MessageType::Acknowledgement,
            };
            matches.then_some(reply)
        })
        .unwrap_or_else(|| panic!("no reply to {datagram:02x?} after {ATTEMPTS} attempts"))
    }

    /// Sends `req` with a fresh Message ID and returns the reply.
    fn call(&mut self, req: &Req) -> Resp {
        let mid = self.mid();
        let reply = self.exchange(&req.encode(mid), req.mtype, mid, &req.token);
        if reply.mtype == MessageType::Acknowledgement {
            assert_eq!(
                reply.token, req.token,
                "piggybacked reply with another token"
            );
        }
        reply
    }

    /// Sends `datagram` and asserts that nothing comes back for SILENCE.
    fn assert_silent(&self, datagram: &[u8], what: &str) {
        self.send(datagram);
        if let Some(raw) = self.receive(SILENCE) {
            panic!("{what}: expected no reply, got {raw:02x?}");
        }
    }
}

// ---------------------------------------------------------------- block-wise

/// What a block-wise fetch brought back.
#[derive(Debug, Default)]
struct Fetched {
    body: Vec<u8>,
    /// The body's length from Size2 on block 0.
    size2: Option<u32>,
    etag: Option<Vec<u8>>,
    content_format: Option<u16>,
    /// Blocks received.
    blocks: usize,
    /// The last block's Block2 value.
    last: Option<Block>,
    /// The body ended (a block with M clear came).
    complete: bool,
}

/// Stop-and-wait Block2 transfer starting at `first`: `make` builds the
/// request for a block (its Block2 value and its index in this transfer).
/// The size the server answers with is used from then on (RFC 7959 §2.4);
/// every block must sit at the byte position asked for. Stops at the last
/// block or after `max_blocks`.
fn fetch(
    client: &mut Client,
    first: Block,
    max_blocks: usize,
    mut make: impl FnMut(Block, usize) -> Req,
) -> Result<Fetched, String> {
    let mut got = Fetched::default();
    let mut ask = first;
    for index in 0..max_blocks {
        let req = make(ask, index);
        let reply = client.call(&req);
        if !reply.is(ResponseType::Content) {
            return Err(format!(
                "block {} (szx {}) of {req:?}: {} {:?}",
                ask.num,
                ask.szx,
                reply.code,
                String::from_utf8_lossy(&reply.payload)
            ));
        }
        let block = reply
            .block2
            .ok_or_else(|| format!("2.05 without Block2: {reply:?}"))?;
        let asked_at = u64::from(ask.num) * ask.size() as u64;
        let got_at = u64::from(block.num) * block.size() as u64;
        if got_at != asked_at || block.szx > ask.szx {
            return Err(format!(
                "asked {ask:?} (byte {asked_at}), got {block:?} (byte {got_at})"
            ));
        }
        if block.more && reply.payload.len() != block.size() {
            return Err(format!(
                "block {block:?} with M set carries {} bytes",
                reply.payload.len()
            ));
        }
        if reply.payload.len() > block.size() {
            return Err(format!(
                "block {block:?} carries {} bytes",
                reply.payload.len()
            ));
        }
        if index == 0 {
            got.size2 = reply.size2;
            got.etag = reply.etag.clone();
            got.content_format = reply.content_format;
            if block.num == 0 && reply.size2.is_none() {
                return Err("block 0 without Size2".to_owned());
            }
        } else {
            if reply.etag != got.etag {
                return Err(format!(
                    "ETag changed at {block:?}: {:?} vs {:?}",
                    reply.etag, got.etag
                ));
            }
            if reply.content_format != got.content_format {
                return Err(format!("Content-Format changed at {block:?}"));
            }
        }
        got.body.extend_from_slice(&reply.payload);
        got.blocks += 1;
        got.last = Some(block);
        if !block.more {
            got.complete = true;
            return Ok(got);
        }
        ask = Block {
            num: block.num + 1,
            more: false,
            szx: block.szx,
        };
    }
    Ok(got)
}

/// A whole body: the fetch must end within the number of blocks a body of
/// `len` bytes can have at 16 bytes, plus one.
fn fetch_whole(
    client: &mut Client,
    first: Block,
    len: usize,
    make: impl FnMut(Block, usize) -> Req,
) -> Result<Fetched, String> {
    let got = fetch(client, first, len / 16 + 2, make)?;
    if !got.complete {
        return Err(format!("body did not end after {} blocks", got.blocks));
    }
    Ok(got)
}

fn block(num: u32, szx: u8) -> Block {
    Block {
        num,
        more: false,
        szx,
    }
}

/// Asserts a fetched body is `expected` with Size2 and Content-Format 42.
fn assert_body(got: &Fetched, expected: &[u8], what: &str) {
    assert!(
        got.body == expected,
        "{what}: body of {} bytes differs from the expected {} bytes (first difference at {:?})",
        got.body.len(),
        expected.len(),
        got.body.iter().zip(expected).position(|(a, b)| a != b)
    );
    assert_eq!(got.size2, Some(offset_u32(expected.len())), "{what}: Size2");
    assert_eq!(got.content_format, Some(42), "{what}: Content-Format");
    assert!(
        got.etag.as_ref().is_some_and(|e| !e.is_empty()),
        "{what}: no ETag"
    );
}

/// The legacy protocol as deployed devices run it: the same payload (with
/// OFFSET) and token on every block.
fn legacy_req(image: &Image, offset: u32) -> impl FnMut(Block, usize) -> Req + '_ {
    move |b, _| {
        Req::get("updates")
            .token(&[0xd0, 0x01])
            .payload(device_of(image, Some(offset)))
            .block(b)
    }
}

/// `GET /updates/{id}` with Block2, and an OFFSET payload when not 0.
fn id_req(id: &str, offset: u32) -> impl FnMut(Block, usize) -> Req + '_ {
    move |b, _| {
        let payload = if offset == 0 {
            Vec::new()
        } else {
            offset.to_le_bytes().to_vec()
        };
        Req::get(&format!("updates/{id}")).payload(payload).block(b)
    }
}

/// The id a lookup-form request returns (2.05, Content-Format 0).
fn lookup(client: &mut Client, req: &Req) -> String {
    let reply = client.call(req);
    assert!(reply.is(ResponseType::Content), "lookup {req:?}: {reply:?}");
    assert_eq!(reply.content_format, Some(0), "lookup answers text/plain");
    reply.text()
}

// ---------------------------------------------------------------- downloads

#[test]
fn small_images_download_whole_in_every_form_and_block_size() {
    let fx = Fixture::new("loop-small", false);
    let mut etags: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        for image in fx.small() {
            let len = image.bytes.len();
            // Lookup and query forms name the image.
            let by_payload = lookup(&mut c, &Req::get("updates").payload(device_of(image, None)));
            assert_eq!(by_payload, image.id, "lookup of {}", image.pid);
            let pid_query = format!("pid={}", image.pid);
            let by_query = lookup(
                &mut c,
                &Req::get("updates").query(&[pid_query.as_str(), "type=APP", "version=0.0.0"]),
            );
            assert_eq!(by_query, image.id, "query lookup of {}", image.pid);

            for szx in SZXS {
                let what =
                    |form: &str| format!("{} {form} szx {szx} on {}", image.pid, server.addr);
                let legacy = fetch_whole(&mut c, block(0, szx), len, legacy_req(image, 0))
                    .unwrap_or_else(|e| panic!("{}: {e}", what("legacy")));
                assert_body(&legacy, &image.bytes, &what("legacy"));

                let by_id = fetch_whole(&mut c, block(0, szx), len, id_req(&by_payload, 0))
                    .unwrap_or_else(|e| panic!("{}: {e}", what("lookup + id")));
                assert_body(&by_id, &image.bytes, &what("lookup + id"));
                assert_eq!(
                    legacy.etag,
                    by_id.etag,
                    "{}: one image, one ETag",
                    what("id")
                );

                let by_query_id = fetch_whole(&mut c, block(0, szx), len, id_req(&by_query, 0))
                    .unwrap_or_else(|e| panic!("{}: {e}", what("query + id")));
                assert_body(&by_query_id, &image.bytes, &what("query + id"));

                // libcoap's coap-client -f: payload and Block2 on block 0,
                // Block2 alone after, a new token on every block.
                let continued = fetch_whole(&mut c, block(0, szx), len, |b, i| {
                    let token = (0xc000_0000u32 + i as u32).to_be_bytes();
                    let req = Req::get("updates").token(&token).block(b);
                    if i == 0 {
                        req.payload(device_of(image, Some(0)))
                    } else {
                        req
                    }
                })
                .unwrap_or_else(|e| panic!("{}: {e}", what("continuation")));
                assert_body(&continued, &image.bytes, &what("continuation"));
                assert_eq!(continued.etag, legacy.etag);
            }

            // Without Block2 on the first request the server picks its own
            // size (1024); node-coap's agent then continues without payload.
            let node_style = fetch_whole(&mut c, block(0, 6), len, |b, i| {
                if i == 0 {
                    Req::get("updates").payload(device_of(image, Some(0)))
                } else {
                    Req::get("updates").block(b)
                }
            })
            .unwrap_or_else(|e| panic!("{} node-style continuation: {e}", image.pid));
            assert_body(&node_style, &image.bytes, "node-style continuation");
            let no_block2 = fetch_whole(&mut c, block(0, 6), len, |b, i| {
                let req = Req::get(&format!("updates/{}", image.id));
                if i == 0 {
                    req
                } else {
                    req.block(b)
                }
            })
            .unwrap_or_else(|e| panic!("{} by id without Block2: {e}", image.pid));
            assert_body(
                &no_block2,
                &image.bytes,
                "by id, first request without Block2",
            );
            etags.push((image.pid.clone(), no_block2.etag));
        }
    });
    // README, "Images, versions and ids": the ETag derives from the content, the same on every
    // server that holds the file.
    let (v4, v6) = etags.split_at(etags.len() / 2);
    assert_eq!(v4, v6, "ETags differ between the two server processes");
}

#[test]
fn big_image_downloads_whole_at_1024_by_legacy_and_by_id() {
    let fx = Fixture::new("loop-big", true);
    let big = fx.image("SIZEBIG");
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        let legacy = fetch_whole(&mut c, block(0, 6), BIG_LEN, legacy_req(big, 0))
            .unwrap_or_else(|e| panic!("legacy on {}: {e}", server.addr));
        assert_body(&legacy, &big.bytes, "legacy 4 MiB at 1024");
        assert_eq!(legacy.blocks, 4097);
        assert_eq!(
            legacy.last,
            Some(block(4096, 6)),
            "the last block is NUM 4096, past 4095"
        );

        let by_id = fetch_whole(&mut c, block(0, 6), BIG_LEN, id_req(&big.id, 0))
            .unwrap_or_else(|e| panic!("by id on {}: {e}", server.addr));
        assert_body(&by_id, &big.bytes, "by id 4 MiB at 1024");
        assert_eq!(by_id.last, Some(block(4096, 6)));
        assert_eq!(by_id.etag, legacy.etag);
    });
}

#[test]
fn big_image_blocks_past_num_4095_at_16_and_64_bytes() {
    let fx = Fixture::new("loop-bignum", true);
    let big = fx.image("SIZEBIG");
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        for (szx, form) in [(0u8, "id"), (2, "id"), (0, "legacy"), (2, "legacy")] {
            let size = 16usize << szx;
            let got = match form {
                "id" => fetch(&mut c, block(4093, szx), 6, id_req(&big.id, 0)),
                _ => fetch(&mut c, block(4093, szx), 6, legacy_req(big, 0)),
            }
            .unwrap_or_else(|e| panic!("{form} szx {szx} on {}: {e}", server.addr));
            assert_eq!(got.blocks, 6);
            assert_eq!(
                got.last,
                Some(Block {
                    num: 4098,
                    more: true,
                    szx
                })
            );
            assert!(
                got.body == big.bytes[4093 * size..4099 * size],
                "{form} szx {szx}: wrong bytes"
            );
        }

        // The payload-less continuation far past 4095: block 0 with the
        // device payload, then Block2 alone at NUM 200000.
        let first = c.call(
            &Req::get("updates")
                .payload(device_of(big, Some(0)))
                .block(block(0, 0)),
        );
        assert!(first.is(ResponseType::Content), "{first:?}");
        let got = fetch(&mut c, block(200_000, 0), 3, |b, _| {
            Req::get("updates").token(&[9, 9]).block(b)
        })
        .expect("continuation at NUM 200000");
        assert!(got.body == big.bytes[200_000 * 16..200_003 * 16]);

        // The last 16-byte block (NUM 262192, 9 bytes) and one past it.
        let last_num = u32::try_from((BIG_LEN - 1) / 16).expect("fits");
        let last = c.call(&Req::get(&format!("updates/{}", big.id)).block(block(last_num, 0)));
        assert!(last.is(ResponseType::Content), "{last:?}");
        assert_eq!(
            last.block2,
            Some(block(last_num, 0)),
            "M clear on the last block"
        );
        assert_eq!(last.payload, big.bytes[last_num as usize * 16..]);
        assert_eq!(last.payload.len(), 9);
        c.call(&Req::get(&format!("updates/{}", big.id)).block(block(last_num + 1, 0)))
            .assert_error(ResponseType::BadOption, "Block2 NUM past the end");

        // A resumed legacy download near the end, at 16-byte blocks.
        let offset = BIG_LEN - 100;
        let tail = fetch_whole(
            &mut c,
            block(0, 0),
            100,
            legacy_req(big, offset_u32(offset)),
        )
        .expect("legacy resumed near the end");
        assert_body(&tail, &big.bytes[offset..], "legacy from BIG_LEN - 100");
        assert_eq!(tail.blocks, 7);
    });
}

#[test]
fn resumed_downloads_start_at_the_offset() {
    let fx = Fixture::new("loop-offset", false);
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        for pid in ["SIZE1025", "SIZE1024", "SIZE1"] {
            let image = fx.image(pid);
            let len = image.bytes.len();
            for offset in [0, 1, 15, 16, 1000, 1023, 1024, len.saturating_sub(1), len] {
                if offset > len {
                    continue;
                }
                let expected = &image.bytes[offset..];
                for szx in [0, 6] {
                    let what = format!("{pid} offset {offset} szx {szx} on {}", server.addr);
                    let legacy = fetch_whole(
                        &mut c,
                        block(0, szx),
                        len,
                        legacy_req(image, offset_u32(offset)),
                    )
                    .unwrap_or_else(|e| panic!("legacy {what}: {e}"));
                    assert_body(&legacy, expected, &format!("legacy {what}"));
                    let by_id = fetch_whole(
                        &mut c,
                        block(0, szx),
                        len,
                        id_req(&image.id, offset_u32(offset)),
                    )
                    .unwrap_or_else(|e| panic!("by id {what}: {e}"));
                    assert_body(&by_id, expected, &format!("by id {what}"));
                    if offset == len {
                        // An empty body: block 0, no payload, M clear.
                        assert_eq!(by_id.last, Some(block(0, szx)), "{what}");
                        assert_eq!(by_id.blocks, 1);
                    }
                }
            }
            let beyond = offset_u32(len + 1);
            c.call(&legacy_req(image, beyond)(block(0, 6), 0))
                .assert_error(ResponseType::BadRequest, "legacy OFFSET beyond the image");
            c.call(&id_req(&image.id, beyond)(block(0, 6), 0))
                .assert_error(ResponseType::BadRequest, "id OFFSET beyond the image");
        }
    });
}

#[test]
fn server_block_size_64_answers_1024_requests_at_the_same_byte_position() {
    let fx = Fixture::new("loop-b64", false);
    support::on_both_families(fx.dir.path(), &["-b", "64"], |server| {
        let mut c = Client::new(server);
        let image = fx.image("SIZE1025");
        // Block 1 at 1024 bytes is byte 1024: block 16 at 64 bytes.
        let reply = c.call(&id_req(&image.id, 0)(block(1, 6), 0));
        assert!(reply.is(ResponseType::Content), "{reply:?}");
        assert_eq!(reply.block2, Some(block(16, 2)));
        assert_eq!(reply.payload, image.bytes[1024..]);
        let reply = c.call(&legacy_req(image, 0)(block(0, 6), 0));
        assert_eq!(
            reply.block2,
            Some(Block {
                num: 0,
                more: true,
                szx: 2
            })
        );
        assert_eq!(reply.payload, image.bytes[..64]);
        // No Block2 at all: the server's own size.
        let reply = c.call(&Req::get(&format!("updates/{}", image.id)));
        assert_eq!(
            reply.block2,
            Some(Block {
                num: 0,
                more: true,
                szx: 2
            })
        );

        for image in fx.small() {
            let len = image.bytes.len();
            let legacy = fetch_whole(&mut c, block(0, 6), len, legacy_req(image, 0))
                .unwrap_or_else(|e| panic!("legacy {} with -b 64: {e}", image.pid));
            assert_body(&legacy, &image.bytes, "legacy with -b 64");
            let by_id = fetch_whole(&mut c, block(0, 6), len, id_req(&image.id, 0))
                .unwrap_or_else(|e| panic!("by id {} with -b 64: {e}", image.pid));
            assert_body(&by_id, &image.bytes, "by id with -b 64");
            assert!(by_id.last.is_some_and(|b| b.szx == 2), "{:?}", by_id.last);
            let continued = fetch_whole(&mut c, block(0, 6), len, |b, i| {
                if i == 0 {
                    Req::get("updates")
                        .payload(device_of(image, Some(0)))
                        .block(b)
                } else {
                    Req::get("updates").block(b)
                }
            })
            .unwrap_or_else(|e| panic!("continuation {} with -b 64: {e}", image.pid));
            assert_body(&continued, &image.bytes, "continuation with -b 64");
        }
    });
}

// ---------------------------------------------------------------- errors

/// An error case: the request, the code it must get and what it is.
type ErrorCase = (Req, ResponseType, &'static str);

/// The driver of the error tests: on both families, each request `cases`
/// builds for the SIZE1025 image (and its `updates/{id}` path) gets its
/// code with a diagnostic payload.
fn assert_error_cases(tag: &str, cases: impl Fn(&Image, &str) -> Vec<ErrorCase>) {
    let fx = Fixture::new(tag, false);
    let image = fx.image("SIZE1025");
    let cases = cases(image, &format!("updates/{}", image.id));
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        for (req, code, what) in &cases {
            c.call(req).assert_error(*code, what);
        }
    });
}

#[test]
fn no_update_in_the_legacy_form_is_a_bare_reset() {
    let fx = Fixture::new("loop-errors-rst", false);
    let image = fx.image("SIZE1025");
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);

        // Legacy form with the version the device already runs: an RST
        // with the request's MID, nothing else.
        let mid = c.mid();
        let req = Req::get("updates").payload(device_payload(
            &image.pid,
            TYPE_APP,
            VERSION_1_0_1,
            Some(0),
        ));
        let reply = c.exchange(&req.encode(mid), MessageType::Confirmable, mid, &req.token);
        let [hi, lo] = mid.to_be_bytes();
        assert_eq!(reply.raw, [0x70, 0x00, hi, lo], "no update: a bare RST");
        // The same for a PID the catalog does not have.
        let reply =
            c.call(&Req::get("updates").payload(device_payload("NOPE", TYPE_APP, 0, Some(0))));
        assert_eq!(
            reply.mtype,
            MessageType::Reset,
            "unknown PID, legacy form: {reply:?}"
        );
    });
}

#[test]
fn what_is_not_there_is_4_04() {
    assert_error_cases("loop-errors-404", |image, _| {
        vec![
            (
                Req::get("updates").payload(device_payload(
                    &image.pid,
                    TYPE_APP,
                    VERSION_1_0_1,
                    None,
                )),
                ResponseType::NotFound,
                "lookup, no newer image",
            ),
            (
                Req::get("updates").payload(device_payload(&image.pid, 7, 0, None)),
                ResponseType::NotFound,
                "lookup, other TYPE",
            ),
            (
                Req::get("updates").query(&["pid=SIZE1025", "type=APP", "version=1.0.1"]),
                ResponseType::NotFound,
                "query, no newer image",
            ),
            (Req::get("nothing"), ResponseType::NotFound, "unknown path"),
            (
                Req::get("updates/x/y"),
                ResponseType::NotFound,
                "unknown sub-path",
            ),
            (Req::get(""), ResponseType::NotFound, "root path"),
            (
                Req::get("updates/00000000"),
                ResponseType::NotFound,
                "unknown id",
            ),
            (
                Req::get("updates/zz").block(block(0, 6)),
                ResponseType::NotFound,
                "malformed id",
            ),
        ]
    });
}

#[test]
fn methods_other_than_get_are_4_05() {
    assert_error_cases("loop-errors-405", |image, image_path| {
        vec![
            (
                Req::get(image_path).code(RequestType::Post),
                ResponseType::MethodNotAllowed,
                "POST image",
            ),
            (
                Req::get("updates")
                    .code(RequestType::Post)
                    .payload(device_of(image, Some(0))),
                ResponseType::MethodNotAllowed,
                "POST /updates",
            ),
            (
                Req::get(".well-known/core").code(RequestType::Put),
                ResponseType::MethodNotAllowed,
                "PUT discovery",
            ),
            (
                Req::get(image_path).code(RequestType::Delete),
                ResponseType::MethodNotAllowed,
                "DELETE image",
            ),
        ]
    });
}

#[test]
fn unknown_critical_options_and_bad_block2_are_4_02() {
    assert_error_cases("loop-errors-402", |image, image_path| {
        vec![
            (
                Req::get(image_path).option(2049, b"x"),
                ResponseType::BadOption,
                "critical option 2049",
            ),
            (
                Req::get(image_path).option(9, b""),
                ResponseType::BadOption,
                "critical option 9",
            ),
            (
                legacy_req(image, 0)(block(0, 6), 0).option(65001, b"zz"),
                ResponseType::BadOption,
                "critical option 65001 on legacy",
            ),
            (
                Req::get(image_path).block(block(0, 6)).option(23, &[0x16]),
                ResponseType::BadOption,
                "second Block2",
            ),
            (
                Req::get(image_path).block(block(65, 4)),
                ResponseType::BadOption,
                "Block2 NUM past the end",
            ),
        ]
    });
}

#[test]
fn malformed_payloads_queries_and_szx_are_4_00() {
    assert_error_cases("loop-errors-400", |image, image_path| {
        vec![
            (
                Req::get("updates").payload(vec![5, b'A', b'B']),
                ResponseType::BadRequest,
                "payload length",
            ),
            (
                Req::get("updates").payload(vec![0, 3, 0, 0, 0, 0]),
                ResponseType::BadRequest,
                "PIDLEN 0",
            ),
            (
                Req::get("updates").payload({
                    let mut p = device_of(image, Some(0));
                    p.push(0);
                    p
                }),
                ResponseType::BadRequest,
                "payload one byte too long",
            ),
            (
                Req::get(image_path).option(23, &[0x07]),
                ResponseType::BadRequest,
                "SZX 7",
            ),
            (
                Req::get("updates")
                    .payload(device_of(image, Some(0)))
                    .option(23, &[0x1f]),
                ResponseType::BadRequest,
                "SZX 7 on legacy",
            ),
            (
                Req::get("updates"),
                ResponseType::BadRequest,
                "neither payload nor query",
            ),
            (
                Req::get("updates").block(block(0, 6)),
                ResponseType::BadRequest,
                "Block2 0 without payload",
            ),
            (
                Req::get("updates").block(block(3, 6)),
                ResponseType::BadRequest,
                "continuation without a transfer",
            ),
            (
                Req::get("updates").query(&["pid=SIZE1025", "type=BOOT", "version=0.0.0"]),
                ResponseType::BadRequest,
                "query with a bad type",
            ),
            (
                Req::get("updates").query(&["pid=SIZE1025", "type=APP"]),
                ResponseType::BadRequest,
                "query without version",
            ),
            (
                Req::get(image_path).payload(vec![1, 2, 3]),
                ResponseType::BadRequest,
                "3-byte OFFSET",
            ),
        ]
    });
}

#[test]
fn unknown_elective_options_are_ignored() {
    let fx = Fixture::new("loop-errors-elective", false);
    let image_path = format!("updates/{}", fx.image("SIZE1025").id);
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        let reply = c.call(&Req::get(&image_path).option(2048, b"x").option(65000, b"y"));
        assert!(
            reply.is(ResponseType::Content),
            "elective options: {reply:?}"
        );
    });
}

#[test]
fn an_oversized_request_is_4_13_with_its_mid_and_token() {
    let fx = Fixture::new("loop-errors-413", false);
    let image_path = format!("updates/{}", fx.image("SIZE1025").id);
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        // A request longer than the server accepts: 4.13, same MID and token.
        let req = Req::get(&image_path)
            .token(&[1, 2, 3, 4])
            .payload(vec![0x55; 1300]);
        let mid = c.mid();
        let datagram = req.encode(mid);
        assert!(datagram.len() > 1300);
        let reply = c.exchange(&datagram, MessageType::Confirmable, mid, &req.token);
        assert_eq!(reply.mtype, MessageType::Acknowledgement);
        assert_eq!(reply.token, [1, 2, 3, 4]);
        reply.assert_error(ResponseType::RequestEntityTooLarge, "1300-byte request");
        let reply = c.call(&req.clone().non());
        assert_eq!(reply.mtype, MessageType::NonConfirmable);
        reply.assert_error(ResponseType::RequestEntityTooLarge, "1300-byte NON request");
    });
}

// ---------------------------------------------------------------- message layer

#[test]
fn pings_empty_messages_and_foreign_versions() {
    let fx = Fixture::new("loop-ping", false);
    support::on_both_families(fx.dir.path(), &[], |server| {
        let c = Client::new(server);
        // An empty CON is a ping: RST with the same MID.
        let reply = c.exchange(
            &[0x40, 0x00, 0x12, 0x34],
            MessageType::Confirmable,
            0x1234,
            &[],
        );
        assert_eq!(reply.raw, [0x70, 0x00, 0x12, 0x34]);
        c.assert_silent(&[0x50, 0x00, 0x12, 0x35], "empty NON");
        c.assert_silent(&[0x60, 0x00, 0x12, 0x36], "empty ACK");
        c.assert_silent(&[0x70, 0x00, 0x12, 0x37], "empty RST");
        // Version 2, 0 and 3 of an otherwise valid GET: ignored.
        let get = Req::get(".well-known/core").encode(0x1238);
        for version in [0u8, 2, 3] {
            let mut foreign = get.clone();
            foreign[0] = (foreign[0] & 0x3f) | (version << 6);
            c.assert_silent(&foreign, &format!("version {version}"));
        }
        c.assert_silent(&[0x40, 0x01], "2-byte datagram");
        // A malformed CON (payload marker without payload): RST; NON: nothing.
        let reply = c.exchange(
            &[0x40, 0x01, 0x12, 0x39, 0xff],
            MessageType::Confirmable,
            0x1239,
            &[],
        );
        assert_eq!(reply.raw, [0x70, 0x00, 0x12, 0x39]);
        c.assert_silent(&[0x50, 0x01, 0x12, 0x3a, 0xff], "malformed NON");
        // A CON that is not a request (a response code, a 7.xx signal, a
        // reserved token length): RST with its MID.
        for (datagram, mid) in [
            ([0x40u8, 0x45, 0x22, 0x22], 0x2222u16),
            ([0x40, 0xe1, 0x22, 0x23], 0x2223),
            ([0x49, 0x01, 0x22, 0x24], 0x2224),
        ] {
            let reply = c.exchange(&datagram, MessageType::Confirmable, mid, &[]);
            let [hi, lo] = mid.to_be_bytes();
            assert_eq!(reply.raw, [0x70, 0x00, hi, lo], "{datagram:02x?}");
        }
        c.assert_silent(&[0x50, 0x45, 0x22, 0x25], "NON with a response code");
        // The server still answers.
        let reply = c.exchange(&get, MessageType::Confirmable, 0x1238, &[0x7a]);
        assert!(reply.is(ResponseType::Content), "{reply:?}");
    });
}

#[test]
fn duplicate_confirmable_requests_get_byte_identical_replies() {
    let fx = Fixture::new("loop-dup", false);
    let image = fx.image("SIZE1025");
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        let requests = [
            legacy_req(image, 7)(block(3, 4), 0),
            id_req(&image.id, 0)(block(5, 2), 0),
            Req::get("updates").payload(device_of(image, None)),
            Req::get("updates/00000000"),
            Req::get(".well-known/core").block(block(2, 0)),
            Req::get("updates").token(&[4, 4]).block(block(2, 4)),
        ];
        for req in &requests {
            let mid = c.mid();
            let datagram = req.encode(mid);
            let first = c.exchange(&datagram, req.mtype, mid, &req.token);
            let second = c.exchange(&datagram, req.mtype, mid, &req.token);
            assert_eq!(first.raw, second.raw, "duplicate of {req:?}");
            assert_eq!(
                first.mtype,
                MessageType::Acknowledgement,
                "{req:?}: {first:?}"
            );
        }
    });
}

#[test]
fn non_confirmable_requests_get_non_replies_with_their_token() {
    let fx = Fixture::new("loop-non", false);
    let image = fx.image("SIZE1023");
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        let cases = [
            (id_req(&image.id, 0)(block(1, 4), 0), ResponseType::Content),
            (legacy_req(image, 0)(block(0, 6), 0), ResponseType::Content),
            (Req::get("updates/00000000"), ResponseType::NotFound),
        ];
        for (req, code) in cases {
            let token = c.fresh_token();
            let reply = c.call(&req.token(&token).non());
            assert_eq!(reply.mtype, MessageType::NonConfirmable, "{reply:?}");
            assert_eq!(reply.token, token);
            assert!(reply.is(code), "{reply:?}");
        }
        // A whole NON download.
        let got = fetch_whole(&mut c, block(0, 2), image.bytes.len(), |b, _| {
            id_req(&image.id, 0)(b, 0).token(&b.num.to_be_bytes()).non()
        })
        .expect("NON download");
        assert_body(&got, &image.bytes, "NON download");
    });
}

/// README, "Message layer": "A duplicate Confirmable request (same peer, same Message
/// ID, within EXCHANGE_LIFETIME) gets a byte-identical answer." The server
/// regenerates answers instead of caching them, and a payload-less
/// continuation reads the peer's continuation entry, which a later legacy
/// request of the same peer has replaced: the duplicate then gets a block of
/// the other image under the old Message ID.
#[test]
fn duplicate_continuation_is_identical_after_the_peer_started_another_transfer() {
    let fx = Fixture::new("loop-dup-cont", false);
    let (first_image, second_image) = (fx.image("SIZE1025"), fx.image("SIZE1023"));
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        let reply = c.call(&legacy_req(first_image, 0)(block(0, 4), 0));
        assert!(reply.is(ResponseType::Content), "{reply:?}");
        let mid = c.mid();
        let continuation = Req::get("updates")
            .token(&[5])
            .block(block(1, 4))
            .encode(mid);
        let answer = c.exchange(&continuation, MessageType::Confirmable, mid, &[5]);
        assert_eq!(answer.payload, first_image.bytes[256..512]);
        let reply = c.call(&legacy_req(second_image, 0)(block(0, 4), 0));
        assert!(reply.is(ResponseType::Content), "{reply:?}");
        let duplicate = c.exchange(&continuation, MessageType::Confirmable, mid, &[5]);
        assert!(
            duplicate.raw == answer.raw,
            "duplicate of MID {mid} answered with other bytes: {:02x?} then {:02x?}",
            &answer.payload[..8],
            &duplicate.payload[..8]
        );
    });
}

// ---------------------------------------------------------------- discovery

/// The link of one image, as README, "Requests and answers" writes it.
fn image_link(image: &Image) -> String {
    format!(
        "</updates/{}>;rt=\"fw.image\";ct=42;sz={};title=\"{}\"",
        image.id,
        image.bytes.len(),
        image.file_name
    )
}

#[test]
fn well_known_core_lists_every_image_and_filters_whole_at_16_byte_blocks() {
    let fx = Fixture::new("loop-core", true);
    let mut sorted: Vec<&Image> = fx.images.iter().collect();
    sorted.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    let links = |filter: &dyn Fn(&Image) -> bool| -> String {
        sorted
            .iter()
            .filter(|i| filter(i))
            .map(|i| image_link(i))
            .collect::<Vec<_>>()
            .join(",")
    };
    let updates_link = "</updates>;rt=\"fw.updates\"";
    let all = format!("{updates_link},{}", links(&|_| true));
    let big = fx.image("SIZEBIG");
    let href = format!("href=/updates/{}", big.id);
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec![], all.clone()),
        (vec!["rt=fw.image"], links(&|_| true)),
        (vec!["rt=fw.updates"], updates_link.to_owned()),
        (vec!["title=SIZE1*"], links(&|i| i.pid.starts_with("SIZE1"))),
        (vec![href.as_str()], image_link(big)),
        (
            vec!["rt=fw.image", "sz=1024"],
            image_link(fx.image("SIZE1024")),
        ),
        (vec!["title=NOTHING*"], String::new()),
    ];
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        for (query, expected) in &cases {
            let what = format!("/.well-known/core?{} on {}", query.join("&"), server.addr);
            let got = fetch_whole(&mut c, block(0, 0), expected.len(), |b, _| {
                Req::get(".well-known/core").query(query).block(b)
            })
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                String::from_utf8_lossy(&got.body),
                expected.as_str(),
                "{what}"
            );
            assert_eq!(got.content_format, Some(40), "{what}");
            assert_eq!(got.size2, Some(offset_u32(expected.len())), "{what}: Size2");
            assert_eq!(
                got.blocks,
                expected.len().div_ceil(16).max(1),
                "{what}: 16-byte blocks"
            );
        }
        // In one datagram when it fits the default block size.
        let got = fetch_whole(&mut c, block(0, 6), all.len(), |b, i| {
            let req = Req::get(".well-known/core");
            if i == 0 {
                req
            } else {
                req.block(b)
            }
        })
        .expect("whole listing");
        assert_eq!(String::from_utf8_lossy(&got.body), all.as_str());
    });
}

// ---------------------------------------------------------------- robustness

#[test]
fn server_keeps_serving_after_a_burst_of_garbage() {
    let fx = Fixture::new("loop-garbage", false);
    let image = fx.image("SIZE1025");
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let mut server = support::spawn_server(fx.dir.path(), listen, &[]);
        let noise = support::client_socket(server.addr);
        let mut rng = XorShift(0x9e37_79b9);
        let valid = legacy_req(image, 0)(block(1, 4), 0).encode(0x4242);
        for i in 0..1000u32 {
            let len = (rng.next() % 1400) as usize;
            let mut datagram: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            match i % 4 {
                // A version-1 header, so the parser gets past it.
                0 | 1 if len >= 4 => datagram[0] = 0x40 | (datagram[0] & 0x3f),
                // A valid request with a few bytes flipped.
                2 => {
                    datagram = valid.clone();
                    for _ in 0..1 + rng.next() % 3 {
                        let at = rng.next() as usize % datagram.len();
                        datagram[at] ^= 1 << (rng.next() % 8);
                    }
                }
                _ => {}
            }
            noise.send_to(&datagram, server.addr).expect("send garbage");
        }
        // Whatever came back must be well-formed CoAP (Resp::decode checks).
        noise
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        let mut replies = 0;
        while let Ok((n, _)) = noise.recv_from(&mut buf) {
            let reply = Resp::decode(&buf[..n]);
            assert_ne!(
                reply.mtype,
                MessageType::Confirmable,
                "the server never sends CON"
            );
            replies += 1;
            assert!(replies <= 1000, "more replies than datagrams sent");
        }
        assert!(
            replies > 0,
            "the CON-shaped garbage got no RST or error at all"
        );

        let mut c = Client::new(&server);
        let got = fetch_whole(&mut c, block(0, 6), image.bytes.len(), legacy_req(image, 0))
            .expect("a download after the garbage");
        assert_body(&got, &image.bytes, "after garbage");
        assert!(server.is_running(), "the server exited");
        assert!(!server.log().contains("panicked"), "{}", server.log());
    }
}

#[test]
fn options_the_server_understands_or_ignores() {
    let fx = Fixture::new("loop-options", false);
    let image = fx.image("SIZE1025");
    let image_path = format!("updates/{}", image.id);
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        // Size2 in a request (RFC 7959 §4): the body's size on any block.
        let reply = c.call(&id_req(&image.id, 0)(block(2, 4), 0).option(28, &[]));
        assert_eq!(reply.size2, Some(1025), "{reply:?}");
        assert_eq!(reply.payload, image.bytes[512..768]);
        // M in a request's Block2 has no meaning (RFC 7959 §2.2).
        let reply = c.call(&id_req(&image.id, 0)(
            Block {
                num: 1,
                more: true,
                szx: 4,
            },
            0,
        ));
        assert_eq!(
            reply.block2,
            Some(Block {
                num: 1,
                more: true,
                szx: 4
            })
        );
        assert_eq!(reply.payload, image.bytes[256..512]);
        // A zero-length Block2 is NUM 0, SZX 0 (RFC 7252 §3.2 uint).
        let reply = c.call(&Req::get(&image_path).option(23, &[]));
        assert_eq!(
            reply.block2,
            Some(Block {
                num: 0,
                more: true,
                szx: 0
            })
        );
        assert_eq!(reply.payload, image.bytes[..16]);
        // Accept: the resource's format passes, another is 4.06.
        let reply = c.call(&Req::get(&image_path).option(17, &[42]));
        assert!(reply.is(ResponseType::Content), "{reply:?}");
        c.call(&Req::get(&image_path).option(17, &[]))
            .assert_error(ResponseType::NotAcceptable, "Accept 0 on an image");
        let reply = c.call(
            &Req::get("updates")
                .payload(device_of(image, None))
                .option(17, &[]),
        );
        assert_eq!(reply.text(), image.id);
        // Uri-Host, Uri-Port (understood), Observe, an 8-byte token.
        for (number, value) in [
            (3u16, b"localhost".as_slice()),
            (7, &[0x16, 0x33]),
            (6, &[]),
        ] {
            let reply = c.call(&Req::get(&image_path).option(number, value));
            assert!(
                reply.is(ResponseType::Content),
                "option {number}: {reply:?}"
            );
        }
        let reply = c.call(&Req::get(&image_path).token(&[1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(reply.token, [1, 2, 3, 4, 5, 6, 7, 8]);
        // Query form with a numeric type and a hex version.
        let reply =
            c.call(&Req::get("updates").query(&["pid=SIZE1", "type=3", "version=0x00000000"]));
        assert_eq!(reply.text(), fx.image("SIZE1").id);

        // Out of range or not understood.
        c.call(&Req::get(&image_path).option(23, &[0, 0, 0, 0x16]))
            .assert_error(ResponseType::BadOption, "4-byte Block2");
        c.call(&Req::get(".well-known/core").block(block(100, 0)))
            .assert_error(ResponseType::BadOption, "discovery Block2 past the end");
        c.call(&Req::get(&image_path).code(RequestType::Fetch))
            .assert_error(ResponseType::MethodNotAllowed, "FETCH");
        c.call(&Req::get("updates/a/b/c/d"))
            .assert_error(ResponseType::NotFound, "5 path segments");
        c.call(&Req::get(&format!("updates/{}", image.id.to_uppercase())))
            .assert_error(ResponseType::NotFound, "id in upper case");
        c.call(&Req::get("updates").query(&[
            "pid=SIZE1",
            "type=APP",
            "version=0.0.0",
            "a=b",
            "c=d",
            "e=f",
            "g=h",
            "i=j",
            "k=l",
        ]))
        .assert_error(ResponseType::BadRequest, "9 query options on /updates");
    });
}

/// Every filter applies, the fifth too: discovery combines four filters at
/// most and refuses more with 4.00 (`wire` keeps eight Uri-Query values
/// and reports more with `Segments::overflowed`); a filter silently
/// dropped would make the answer wider than asked. Either the filtered
/// listing or a 4.00 is right; a wider listing is not.
#[test]
fn discovery_with_five_filters_applies_them_all_or_refuses() {
    let fx = Fixture::new("loop-core5", false);
    let query = [
        "rt=fw.image",
        "rt=fw.image",
        "rt=fw.image",
        "rt=fw.image",
        "title=SIZE0*",
    ];
    let expected = image_link(fx.image("SIZE0"));
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut c = Client::new(server);
        let first = c.call(
            &Req::get(".well-known/core")
                .query(&query)
                .block(block(0, 6)),
        );
        if first.is(ResponseType::BadRequest) {
            first.assert_error(ResponseType::BadRequest, "five filters");
            return;
        }
        let got = fetch_whole(&mut c, block(0, 6), 4096, |b, _| {
            Req::get(".well-known/core").query(&query).block(b)
        })
        .expect("listing with five filters");
        assert_eq!(
            String::from_utf8_lossy(&got.body),
            expected.as_str(),
            "on {}",
            server.addr
        );
    });
}
