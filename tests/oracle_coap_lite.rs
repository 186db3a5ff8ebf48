//! coap-lite as a differential oracle, both ways:
//!
//! (a) replies written by `Service::handle` (blocks, errors, lookups,
//!     discovery, RST, Echo, 4.29, 4.13) decode with
//!     `coap_lite::Packet::from_bytes` to exactly the fields
//!     `wire::Message::parse` reports, and re-encode with coap-lite to the
//!     same bytes (our encoding is the canonical one);
//! (b) requests built with `coap_lite::Packet` and `to_bytes()` parse with
//!     `wire::Message::parse` to the same fields, including option numbers
//!     past 268 (extended delta 14) and long values (extended length 14).

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use iot_ota::catalog::Catalog;
use iot_ota::service::{Action, Limits, Peer, Service, MAX_REPLY_LEN, MAX_REQUEST_LEN};
use iot_ota::wire::{self, Block, Message};
use support::{block2_value as block2, device_payload_bytes as device, image_bytes};

mod support;

const BIG_LEN: usize = 4 * 1024 * 1024 + 100;
const NOW: u64 = 5_000_000;

fn catalog() -> Catalog {
    let files = vec![
        ("MOTE_1_0_0_APP.fmu".to_owned(), image_bytes(100, 1)),
        ("MOTE_1_1_31_APP.fmu".to_owned(), image_bytes(2000, 2)),
        ("EMPTY_1_0_0_APP.fmu".to_owned(), Vec::new()),
        ("BIG_2_0_0_7.fmu".to_owned(), image_bytes(BIG_LEN, 3)),
    ];
    Catalog::from_files(files).expect("catalog").0
}

fn peer(n: u8) -> Peer {
    Peer {
        ip: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n],
        port: 40_000 + u16::from(n),
        scope: 0,
    }
}

/// A request built with coap-lite.
fn packet(mtype: MessageType, code: MessageClass, mid: u16, token: &[u8]) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(mtype);
    p.header.code = code;
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    p
}

fn get(path: &[&str], mid: u16) -> Packet {
    let mut p = packet(
        MessageType::Confirmable,
        MessageClass::Request(RequestType::Get),
        mid,
        &mid.to_be_bytes(),
    );
    for segment in path {
        p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    p
}

fn handle(svc: &mut Service, from: Peer, datagram: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; MAX_REPLY_LEN];
    match svc.handle(from, NOW, datagram, &mut out) {
        Action::Reply { len, .. } => Some(out[..len].to_vec()),
        Action::Drop(_) => None,
    }
}

/// coap-lite and wire agree on every header field, option and the payload
/// of `reply`; returns coap-lite's packet.
fn assert_agree(reply: &[u8]) -> Packet {
    let ours = Message::parse(reply).unwrap_or_else(|e| panic!("wire rejects {reply:02x?}: {e}"));
    let theirs = Packet::from_bytes(reply)
        .unwrap_or_else(|e| panic!("coap-lite rejects {reply:02x?}: {e:?}"));
    assert_eq!(theirs.header.get_version(), 1);
    assert_eq!(theirs.header.get_type(), ours.mtype);
    assert_eq!(u8::from(theirs.header.code), ours.code);
    assert_eq!(theirs.header.message_id, ours.mid);
    assert_eq!(theirs.get_token(), ours.token);
    assert_eq!(theirs.payload, ours.payload);

    let mut seen = Vec::new();
    for (&number, values) in theirs.options() {
        seen.push(number);
        assert_eq!(values.len(), 1, "option {number} repeated in a reply");
        let value = values.front().unwrap().as_slice();
        match CoapOption::from(number) {
            CoapOption::ETag => assert_eq!(Some(value), ours.etag),
            CoapOption::ContentFormat => {
                assert_eq!(
                    wire::decode_uint(value).map(|v| v as u16),
                    ours.content_format
                )
            }
            CoapOption::MaxAge => assert_eq!(wire::decode_uint(value), ours.max_age),
            CoapOption::Block2 => {
                let block = ours.block2.expect("wire sees Block2").expect("valid");
                assert_eq!(Block::decode(value), Ok(block));
                let mut buf = [0; 4];
                assert_eq!(block.encode(&mut buf), value, "Block2 in its shortest form");
            }
            CoapOption::Size2 => assert_eq!(wire::decode_uint(value), ours.size2),
            CoapOption::Size1 => assert_eq!(wire::decode_uint(value), Some(MAX_REQUEST_LEN as u32)),
            CoapOption::Unknown(wire::OPTION_ECHO) => assert_eq!(Some(value), ours.echo),
            other => panic!("unexpected option {other:?} in a reply"),
        }
    }
    // Nothing wire saw is missing from coap-lite's view.
    let has = |o: CoapOption| seen.contains(&u16::from(o));
    assert_eq!(ours.etag.is_some(), has(CoapOption::ETag));
    assert_eq!(
        ours.content_format.is_some(),
        has(CoapOption::ContentFormat)
    );
    assert_eq!(ours.block2.is_some(), has(CoapOption::Block2));
    assert_eq!(ours.size2.is_some(), has(CoapOption::Size2));
    assert_eq!(ours.max_age.is_some(), has(CoapOption::MaxAge));
    assert_eq!(
        ours.echo.is_some(),
        has(CoapOption::Unknown(wire::OPTION_ECHO))
    );
    assert_eq!(ours.unrecognized_critical, None);

    // coap-lite writes the same message back byte for byte.
    assert_eq!(theirs.to_bytes().unwrap(), reply, "canonical encoding");
    theirs
}

fn code(p: &Packet) -> MessageClass {
    p.header.code
}

// (a) replies ---------------------------------------------------------------

#[test]
fn replies_decode_identically_with_coap_lite() {
    let mut svc = Service::new(catalog(), Limits::default(), support::TEST_KEYS);
    let (mote, big, empty) = {
        let images = svc.catalog().images();
        let find = |name: &str| images.iter().find(|i| i.file_name == name).unwrap();
        (
            find("MOTE_1_1_31_APP.fmu").id_str().to_owned(),
            find("BIG_2_0_0_7.fmu").id_str().to_owned(),
            find("EMPTY_1_0_0_APP.fmu").id_str().to_owned(),
        )
    };
    let content = MessageClass::Response(ResponseType::Content);
    let mut table: Vec<(&str, Packet, MessageClass)> = Vec::new();

    table.push(("block 0", get(&["updates", &mote], 1), content));
    let mut p = get(&["updates", &mote], 2);
    p.add_option(CoapOption::Block2, block2(1, 6));
    table.push(("last block", p, content));
    let mut p = get(&["updates", &big], 3);
    p.add_option(CoapOption::Block2, block2(4095, 6));
    table.push(("block 4095", p, content));
    let mut p = get(&["updates", &big], 4);
    p.add_option(CoapOption::Block2, block2(4096, 6));
    p.add_option(CoapOption::Size2, vec![]);
    table.push(("block 4096 with Size2", p, content));
    let mut p = get(&["updates", &big], 5);
    p.add_option(CoapOption::Block2, block2((BIG_LEN / 16) as u32, 0));
    table.push(("block 262150 at 16 bytes", p, content));
    table.push(("empty image", get(&["updates", &empty], 6), content));
    let mut p = get(&["updates"], 7);
    p.payload = device(b"MOTE", 3, 0, Some(1500));
    table.push(("legacy from OFFSET", p, content));
    let mut p = get(&["updates"], 8);
    p.payload = device(b"MOTE", 3, 0, None);
    table.push(("lookup", p, content));
    let mut p = get(&["updates"], 9);
    for q in ["pid=BIG", "type=7", "version=1.0.0"] {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    table.push(("query lookup", p, content));
    table.push(("discovery", get(&[".well-known", "core"], 10), content));
    let mut p = get(&[".well-known", "core"], 11);
    p.add_option(CoapOption::UriQuery, b"rt=fw.image".to_vec());
    p.add_option(CoapOption::Block2, block2(2, 0));
    table.push(("filtered discovery block", p, content));

    let error = |r| MessageClass::Response(r);
    table.push((
        "4.04 path",
        get(&["nope"], 20),
        error(ResponseType::NotFound),
    ));
    table.push((
        "4.04 id",
        get(&["updates", "00000000"], 21),
        error(ResponseType::NotFound),
    ));
    let mut p = get(&["updates"], 22);
    p.payload = device(b"MOTE", 3, 0, None);
    p.payload.push(1);
    table.push(("4.00 payload", p, error(ResponseType::BadRequest)));
    let mut p = get(&["updates", &mote], 23);
    p.add_option(CoapOption::Block2, vec![0x07]);
    table.push(("4.00 SZX 7", p, error(ResponseType::BadRequest)));
    let mut p = get(&["updates", &mote], 24);
    p.add_option(CoapOption::Block2, block2(2, 6));
    table.push(("4.02 past end", p, error(ResponseType::BadOption)));
    let mut p = get(&["updates", &mote], 25);
    p.add_option(CoapOption::Unknown(2051), vec![1]);
    table.push(("4.02 critical", p, error(ResponseType::BadOption)));
    let mut p = get(&["updates"], 26);
    p.header.code = MessageClass::Request(RequestType::Post);
    table.push(("4.05", p, error(ResponseType::MethodNotAllowed)));
    let mut p = get(&["updates", &mote], 27);
    p.add_option(CoapOption::Accept, vec![0]);
    table.push(("4.06", p, error(ResponseType::NotAcceptable)));

    for (name, request, expected) in &table {
        let bytes = request.to_bytes().unwrap();
        let reply = handle(&mut svc, peer(1), &bytes).unwrap_or_else(|| panic!("{name}: no reply"));
        let theirs = assert_agree(&reply);
        assert_eq!(code(&theirs), *expected, "{name}");
        assert_eq!(
            theirs.header.get_type(),
            MessageType::Acknowledgement,
            "{name}"
        );
        assert_eq!(
            theirs.header.message_id, request.header.message_id,
            "{name}"
        );
        assert_eq!(theirs.get_token(), request.get_token(), "{name}");
        if let MessageClass::Response(r) = expected {
            if r.is_error() {
                let text = String::from_utf8(theirs.payload.clone()).expect("UTF-8 diagnostic");
                assert!(!text.is_empty(), "{name}: empty diagnostic");
            }
        }
    }
}

#[test]
fn block_replies_carry_the_image_bytes_coap_lite_sees() {
    let mut svc = Service::new(catalog(), Limits::default(), support::TEST_KEYS);
    let (id, bytes, etag) = {
        let image = svc
            .catalog()
            .images()
            .iter()
            .find(|i| i.file_name == "BIG_2_0_0_7.fmu")
            .unwrap();
        (image.id_str().to_owned(), image.bytes.clone(), image.etag)
    };
    for num in [0u32, 1, 4095, 4096] {
        let mut p = get(&["updates", &id], num as u16);
        p.add_option(CoapOption::Block2, block2(num, 6));
        let reply = handle(&mut svc, peer(2), &p.to_bytes().unwrap()).unwrap();
        let theirs = assert_agree(&reply);
        let at = num as usize * 1024;
        assert_eq!(theirs.payload, &bytes[at..(at + 1024).min(bytes.len())]);
        assert_eq!(theirs.get_first_option(CoapOption::ETag).unwrap(), &etag);
        assert_eq!(
            theirs.get_first_option(CoapOption::ContentFormat).unwrap(),
            &[42]
        );
        if num == 0 {
            let size2 = theirs.get_first_option(CoapOption::Size2).unwrap();
            assert_eq!(wire::decode_uint(size2), Some(BIG_LEN as u32));
        } else {
            assert!(theirs.get_first_option(CoapOption::Size2).is_none());
        }
    }
}

#[test]
fn message_layer_replies_decode_identically_with_coap_lite() {
    let mut svc = Service::new(catalog(), Limits::default(), support::TEST_KEYS);
    // Ping: empty CON built with coap-lite gets an RST.
    let ping = packet(MessageType::Confirmable, MessageClass::Empty, 0x0BAD, &[]);
    let rst = handle(&mut svc, peer(3), &ping.to_bytes().unwrap()).unwrap();
    let theirs = assert_agree(&rst);
    assert_eq!(theirs.header.get_type(), MessageType::Reset);
    assert_eq!(theirs.header.code, MessageClass::Empty);
    assert_eq!(theirs.header.message_id, 0x0BAD);
    // Legacy "no update": RST.
    let mut p = get(&["updates"], 0x0C0C);
    p.payload = device(b"MOTE", 3, u32::MAX, Some(0));
    let rst = handle(&mut svc, peer(3), &p.to_bytes().unwrap()).unwrap();
    assert_eq!(assert_agree(&rst).header.get_type(), MessageType::Reset);
    // NON request: NON reply, same token.
    let mut p = get(&["nope"], 0x0D0D);
    p.header.set_type(MessageType::NonConfirmable);
    let reply = handle(&mut svc, peer(3), &p.to_bytes().unwrap()).unwrap();
    let theirs = assert_agree(&reply);
    assert_eq!(theirs.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(theirs.get_token(), p.get_token());
    // 4.13 with Size1 for an oversized request.
    let mut p = get(&["updates"], 0x0E0E);
    p.payload = vec![0x5A; MAX_REQUEST_LEN];
    let reply = handle(&mut svc, peer(3), &p.to_bytes().unwrap()).unwrap();
    let theirs = assert_agree(&reply);
    assert_eq!(
        theirs.header.code,
        MessageClass::Response(ResponseType::RequestEntityTooLarge)
    );
    assert!(theirs.get_first_option(CoapOption::Size1).is_some());
}

#[test]
fn echo_and_rate_limit_replies_decode_identically_with_coap_lite() {
    let limits = Limits {
        echo: true,
        rate_limit: Some(1),
        ..Limits::default()
    };
    let mut svc = Service::new(catalog(), limits, support::TEST_KEYS);
    let id = svc.catalog().images()[0].id_str().to_owned();
    let request = get(&["updates", &id], 0x0F0F).to_bytes().unwrap();
    let challenge = handle(&mut svc, peer(4), &request).unwrap();
    let theirs = assert_agree(&challenge);
    assert_eq!(
        theirs.header.code,
        MessageClass::Response(ResponseType::Unauthorized)
    );
    assert_eq!(
        theirs
            .get_first_option(CoapOption::Unknown(wire::OPTION_ECHO))
            .map(Vec::len),
        Some(8)
    );
    let limited = handle(&mut svc, peer(4), &request).unwrap();
    let theirs = assert_agree(&limited);
    assert_eq!(
        theirs.header.code,
        MessageClass::Response(ResponseType::TooManyRequests)
    );
    assert_eq!(theirs.get_first_option(CoapOption::MaxAge), Some(&vec![1]));
}

// (b) requests --------------------------------------------------------------

/// wire reads a coap-lite request exactly as coap-lite wrote it.
fn assert_parses_like_coap_lite(p: &Packet) -> Vec<u8> {
    let bytes = p.to_bytes_unlimited().unwrap();
    let ours = Message::parse(&bytes).unwrap_or_else(|e| panic!("wire rejects {bytes:02x?}: {e}"));
    assert_eq!(ours.mtype, p.header.get_type());
    assert_eq!(ours.class(), p.header.code);
    assert_eq!(ours.mid, p.header.message_id);
    assert_eq!(ours.token, p.get_token());
    assert_eq!(ours.payload, &p.payload[..]);
    let values = |o: CoapOption| -> Vec<&[u8]> {
        p.get_option(o)
            .map(|l| l.iter().map(Vec::as_slice).collect())
            .unwrap_or_default()
    };
    let uri_path = values(CoapOption::UriPath);
    if uri_path.len() <= wire::MAX_PATH_SEGMENTS {
        assert_eq!(ours.path.iter().collect::<Vec<_>>(), &uri_path[..]);
    }
    let in_range: Vec<&[u8]> = values(CoapOption::UriQuery)
        .into_iter()
        .filter(|q| q.len() <= 255)
        .collect();
    assert_eq!(ours.query.as_slice(), &in_range[..]);
    let first = |o: CoapOption| values(o).first().copied();
    assert_eq!(
        ours.accept,
        first(CoapOption::Accept)
            .and_then(wire::decode_uint)
            .map(|v| v as u16)
    );
    assert_eq!(
        ours.content_format,
        first(CoapOption::ContentFormat)
            .and_then(wire::decode_uint)
            .map(|v| v as u16)
    );
    assert_eq!(
        ours.size2,
        first(CoapOption::Size2).and_then(wire::decode_uint)
    );
    assert_eq!(ours.block2, first(CoapOption::Block2).map(Block::decode));
    assert_eq!(ours.etag, first(CoapOption::ETag));
    assert_eq!(ours.echo, first(CoapOption::Unknown(wire::OPTION_ECHO)));
    bytes
}

/// The option headers of a message: (delta nibble, length nibble) per
/// option, walked independently of both parsers.
fn option_nibbles(bytes: &[u8]) -> Vec<(u8, u8)> {
    let mut i = 4 + usize::from(bytes[0] & 0x0F);
    let mut nibbles = Vec::new();
    while i < bytes.len() && bytes[i] != 0xFF {
        let (d, l) = (bytes[i] >> 4, bytes[i] & 0x0F);
        nibbles.push((d, l));
        i += 1;
        let ext = |n: u8| match n {
            13 => 1,
            14 => 2,
            _ => 0,
        };
        let delta_ext = ext(d);
        let length = match l {
            13 => usize::from(bytes[i + delta_ext]) + 13,
            14 => {
                usize::from(u16::from_be_bytes([
                    bytes[i + delta_ext],
                    bytes[i + delta_ext + 1],
                ])) + 269
            }
            n => usize::from(n),
        };
        i += delta_ext + ext(l) + length;
    }
    nibbles
}

#[test]
fn coap_lite_requests_parse_to_the_same_fields() {
    let mut p = packet(
        MessageType::Confirmable,
        MessageClass::Request(RequestType::Get),
        0xBEEF,
        &[1, 2, 3, 4, 5, 6, 7, 8],
    );
    p.add_option(CoapOption::UriPath, b"updates".to_vec());
    p.add_option(CoapOption::UriPath, b"e40c292c".to_vec());
    p.add_option(CoapOption::ETag, vec![9; 8]);
    p.add_option(CoapOption::ContentFormat, vec![]);
    p.add_option(CoapOption::UriQuery, b"a=b".to_vec());
    p.add_option(CoapOption::UriQuery, b"c".to_vec());
    p.add_option(CoapOption::Accept, vec![42]);
    p.add_option(CoapOption::Block2, block2(4096, 6));
    p.add_option(CoapOption::Size2, vec![0x01, 0x00]);
    p.add_option(CoapOption::Unknown(wire::OPTION_ECHO), vec![0xEC; 8]);
    p.add_option(CoapOption::Unknown(2050), b"elective, past 268".to_vec());
    p.payload = vec![0, 0, 0x10, 0];
    let bytes = assert_parses_like_coap_lite(&p);
    let ours = Message::parse(&bytes).unwrap();
    assert_eq!(ours.unrecognized_critical, None);
    assert_eq!(
        ours.block2,
        Some(Ok(Block {
            num: 4096,
            more: false,
            szx: 6
        }))
    );
    // Echo after Size2 is delta 224 (13 form); 2050 is delta 1798 (14 form).
    let nibbles = option_nibbles(&bytes);
    assert_eq!(nibbles[nibbles.len() - 2].0, 13);
    assert_eq!(nibbles[nibbles.len() - 1].0, 14);
}

#[test]
fn coap_lite_request_with_critical_option_past_268_is_reported() {
    let mut p = get(&["updates"], 1);
    p.add_option(CoapOption::Unknown(2051), vec![]);
    let bytes = assert_parses_like_coap_lite(&p);
    assert_eq!(option_nibbles(&bytes).last().unwrap().0, 14);
    assert_eq!(
        Message::parse(&bytes).unwrap().unrecognized_critical,
        Some(2051)
    );
    // And the service answers 4.02 for it.
    let mut svc = Service::new(catalog(), Limits::default(), support::TEST_KEYS);
    let reply = handle(&mut svc, peer(5), &bytes).unwrap();
    assert_eq!(
        assert_agree(&reply).header.code,
        MessageClass::Response(ResponseType::BadOption)
    );
}

#[test]
fn coap_lite_request_with_long_uri_query_uses_extended_length_14() {
    // 255 bytes is the longest Uri-Query (RFC 7252 §5.10): extended
    // length 13. Past 268 bytes coap-lite uses extended length 14, and
    // the value is out of range: an unrecognised critical option
    // (RFC 7252 §5.4.3), while the fields around it still parse.
    let longest = vec![b'q'; 255];
    let too_long = vec![b'x'; 300];
    let mut p = get(&["updates"], 2);
    p.add_option(CoapOption::UriQuery, longest.clone());
    p.add_option(CoapOption::UriQuery, too_long);
    p.add_option(CoapOption::Block2, block2(7, 2));
    p.payload = b"after the long option".to_vec();
    let bytes = assert_parses_like_coap_lite(&p);
    let nibbles = option_nibbles(&bytes);
    assert_eq!(nibbles[1].1, 13, "255-byte value: extended length 13");
    assert_eq!(nibbles[2].1, 14, "300-byte value: extended length 14");
    let ours = Message::parse(&bytes).unwrap();
    assert_eq!(ours.query.as_slice(), &[&longest[..]]);
    assert_eq!(ours.unrecognized_critical, Some(15));
    assert_eq!(ours.block2.unwrap().unwrap().num, 7);

    // A long elective option (extended length 14) is skipped cleanly.
    let mut p = get(&["updates"], 3);
    p.add_option(CoapOption::UriQuery, b"pid=MOTE".to_vec());
    p.add_option(CoapOption::Unknown(2050), vec![0xAB; 1000]);
    p.payload = vec![1, 2, 3];
    let bytes = assert_parses_like_coap_lite(&p);
    assert_eq!(option_nibbles(&bytes)[2], (14, 14));
    assert_eq!(Message::parse(&bytes).unwrap().unrecognized_critical, None);
}

#[test]
fn coap_lite_requests_are_served() {
    let mut svc = Service::new(catalog(), Limits::default(), support::TEST_KEYS);
    // Legacy request as a device would send it, then a payload-less
    // continuation with a new token, both built with coap-lite.
    let mut p = get(&["updates"], 0x100);
    p.payload = device(b"MOTE", 3, 0, Some(0));
    let first = assert_agree(&handle(&mut svc, peer(6), &p.to_bytes().unwrap()).unwrap());
    assert_eq!(first.payload.len(), 1024);
    let mut p = get(&["updates"], 0x101);
    p.add_option(CoapOption::Block2, block2(1, 6));
    let second = assert_agree(&handle(&mut svc, peer(6), &p.to_bytes().unwrap()).unwrap());
    assert_eq!(second.payload.len(), 2000 - 1024);
    assert_eq!(
        second.get_first_option(CoapOption::ETag),
        first.get_first_option(CoapOption::ETag)
    );
    // Every request form round-trips: NON and CON, with and without token.
    for (mtype, token) in [
        (MessageType::Confirmable, &[][..]),
        (MessageType::NonConfirmable, &[0xFF; 8][..]),
    ] {
        let mut p = packet(mtype, MessageClass::Request(RequestType::Get), 0x200, token);
        p.add_option(CoapOption::UriPath, b".well-known".to_vec());
        p.add_option(CoapOption::UriPath, b"core".to_vec());
        p.add_option(CoapOption::UriQuery, b"title=MOTE*".to_vec());
        assert_parses_like_coap_lite(&p);
        let reply = assert_agree(&handle(&mut svc, peer(7), &p.to_bytes().unwrap()).unwrap());
        assert_eq!(reply.get_token(), token);
        assert!(String::from_utf8(reply.payload)
            .unwrap()
            .contains("title=\"MOTE_1_1_31_APP.fmu\""));
    }
}
