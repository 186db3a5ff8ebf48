//! The checks of the fuzz target `wire_parse`: `wire::Message::parse` on
//! arbitrary bytes (also run by `tests/regressions.rs` under `cargo test`).
//!
//! Properties checked on every input:
//!
//! * `parse` never panics, and neither does any accessor of the view it
//!   returns (`class`, the path and query segments, `Display` of the error).
//! * Canonical round trip: the fields the view keeps (header, token, ETag,
//!   Uri-Path, Content-Format, Max-Age, Uri-Query, Accept, Block2, Size2,
//!   Echo, payload) are written again with `wire::Emitter`, in option
//!   number order and shortest uint form, and parsed again: every kept
//!   field is equal. A full byte-for-byte round trip is not a sound
//!   property, since the view deliberately drops unknown elective options,
//!   Uri-Host/Uri-Port, later ETags and segments past the fixed capacity.
//! * Oracle: whatever `parse` accepts, `coap_lite::Packet::from_bytes`
//!   accepts too, with the same type, code, Message ID, token and payload;
//!   and the canonical re-emission parses with coap-lite to the same
//!   Uri-Path and Uri-Query values.
//! * The Block option codec: any 0 to 3 byte value that decodes encodes
//!   back to a value that decodes to the same block.
//! * The fast path's parser: whatever `wire::BlockGet::parse` accepts,
//!   `parse` accepts too and reads the same request from it (a CON GET of
//!   `/updates/{8 bytes}` without payload or of `/updates` with the same
//!   payload, Block2 NUM > 0, the same Size2 and Echo, and nothing else:
//!   no query, Observe, Accept, ETag, proxy or unrecognised critical
//!   option).

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use iot_ota::wire::{self, Block, BlockError, Emitter, Message, ParseError};

/// Runs every property on one input; panics on a violation.
pub fn check(data: &[u8]) {
    block_codec(data);
    fast_parser(data);
    let msg = match Message::parse(data) {
        Ok(msg) => msg,
        Err(e) => {
            let _ = e.to_string();
            if let ParseError::Format { mtype, .. } = e {
                // The header was readable: the type is one of the four.
                let _ = format!("{mtype:?}");
            }
            return;
        }
    };
    touch_accessors(&msg);
    against_coap_lite(data, &msg);
    canonical_round_trip(data, &msg);
}

fn fast_parser(data: &[u8]) {
    let Some(fast) = wire::BlockGet::parse(data) else {
        return;
    };
    let msg = Message::parse(data).expect("the general parser accepts what the fast one does");
    assert_eq!(msg.mtype, MessageType::Confirmable);
    assert_eq!(msg.code, 0x01);
    assert_eq!((msg.mid, msg.token), (fast.mid, fast.token));
    match fast.id {
        Some(id) => {
            assert_eq!(msg.path.iter().collect::<Vec<_>>(), [&b"updates"[..], id]);
            assert!(id.len() == 8 && fast.payload.is_empty());
        }
        None => assert_eq!(msg.path.iter().collect::<Vec<_>>(), [&b"updates"[..]]),
    }
    assert!(!msg.path.overflowed());
    assert_eq!(msg.payload, fast.payload);
    assert_eq!(msg.block2, Some(Ok(fast.block)));
    assert!(fast.block.num > 0);
    assert_eq!(msg.size2.is_some(), fast.size2);
    assert_eq!(msg.echo, fast.echo);
    assert!(msg.query.is_empty());
    assert_eq!(
        (
            msg.observe,
            msg.accept,
            msg.etag,
            msg.content_format,
            msg.max_age
        ),
        (None, None, None, None, None)
    );
    assert!(!msg.proxy && msg.unrecognized_critical.is_none());
}

fn touch_accessors(msg: &Message<'_>) {
    let _ = msg.class();
    let _ = format!("{}", msg.class());
    assert!(msg.token.len() <= wire::TOKEN_MAX);
    assert!(msg.path.iter().count() <= wire::MAX_PATH_SEGMENTS);
    assert!(msg.query.as_slice().len() <= wire::MAX_QUERY_SEGMENTS);
    assert_eq!(msg.path.is_empty(), msg.path.iter().next().is_none());
    if msg.path.overflowed() {
        assert_eq!(msg.path.iter().count(), wire::MAX_PATH_SEGMENTS);
    }
    if msg.query.overflowed() {
        assert_eq!(msg.query.as_slice().len(), wire::MAX_QUERY_SEGMENTS);
    }
    if let Some(Ok(block)) = msg.block2 {
        assert!(block.num <= Block::MAX_NUM && block.szx <= Block::MAX_SZX);
        assert!((16..=1024).contains(&block.size()));
    }
    if let Some(etag) = msg.etag {
        assert!((1..=8).contains(&etag.len()));
    }
    if let Some(echo) = msg.echo {
        assert!((1..=wire::ECHO_MAX).contains(&echo.len()));
    }
    if let Some(number) = msg.unrecognized_critical {
        assert!(wire::is_critical(number));
    }
    if msg.code == 0 {
        assert!(msg.token.is_empty() && msg.payload.is_empty() && msg.path.is_empty());
    }
}

fn type_bits(mtype: MessageType) -> u8 {
    match mtype {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    }
}

fn against_coap_lite(data: &[u8], msg: &Message<'_>) {
    let packet = match Packet::from_bytes(data) {
        Ok(packet) => packet,
        Err(e) => panic!("wire accepted a message coap-lite rejects: {e:?}"),
    };
    assert_eq!(type_bits(packet.header.get_type()), type_bits(msg.mtype));
    assert_eq!(u8::from(packet.header.code), msg.code);
    assert_eq!(packet.header.message_id, msg.mid);
    assert_eq!(packet.get_token(), msg.token);
    assert_eq!(packet.payload, msg.payload);
    // The Uri-Path values the view stored are, in order, the first ones
    // coap-lite saw of a valid length (RFC 7252 §5.10: 0 to 255 bytes; a
    // longer one is an unrecognised critical option, not a segment).
    let lite_path: Vec<&[u8]> = packet
        .get_option(CoapOption::UriPath)
        .map(|l| {
            l.iter()
                .map(|v| v.as_slice())
                .filter(|v| v.len() <= 255)
                .collect()
        })
        .unwrap_or_default();
    let stored: Vec<_> = msg.path.iter().collect();
    assert!(lite_path.len() >= stored.len());
    assert_eq!(&lite_path[..stored.len()], stored);
}

fn canonical_round_trip(data: &[u8], msg: &Message<'_>) {
    let mut buf = vec![0u8; data.len() + 512];
    let len = emit_canonical(msg, &mut buf).expect("canonical message fits its buffer");
    let again = Message::parse(&buf[..len]).expect("canonical message parses");
    assert_eq!(type_bits(again.mtype), type_bits(msg.mtype));
    assert_eq!(again.code, msg.code);
    assert_eq!(again.mid, msg.mid);
    assert_eq!(again.token, msg.token);
    assert_eq!(
        again.path.iter().collect::<Vec<_>>(),
        msg.path.iter().collect::<Vec<_>>()
    );
    assert_eq!(again.query.as_slice(), msg.query.as_slice());
    assert_eq!(again.block2, msg.block2);
    assert_eq!(again.size2, msg.size2);
    assert_eq!(again.etag, msg.etag);
    assert_eq!(again.content_format, msg.content_format);
    assert_eq!(again.accept, msg.accept);
    assert_eq!(again.max_age, msg.max_age);
    assert_eq!(again.echo, msg.echo);
    assert_eq!(again.payload, msg.payload);
    assert_eq!(
        again.unrecognized_critical, None,
        "only understood options were emitted"
    );
    assert!(!again.path.overflowed() && !again.query.overflowed());

    let packet = Packet::from_bytes(&buf[..len]).expect("coap-lite parses the canonical message");
    let lite = |option| -> Vec<Vec<u8>> {
        packet
            .get_option(option)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    };
    let ours = |values: &[&[u8]]| -> Vec<Vec<u8>> { values.iter().map(|v| v.to_vec()).collect() };
    assert_eq!(
        lite(CoapOption::UriPath),
        ours(&msg.path.iter().collect::<Vec<_>>())
    );
    assert_eq!(lite(CoapOption::UriQuery), ours(msg.query.as_slice()));
    assert_eq!(packet.payload, msg.payload);
}

/// Writes the kept fields of `msg` again, options in ascending number
/// order: ETag 4, Uri-Path 11, Content-Format 12, Max-Age 14, Uri-Query 15,
/// Accept 17, Block2 23, Size2 28, Echo 252.
fn emit_canonical(msg: &Message<'_>, buf: &mut [u8]) -> Result<usize, wire::EmitError> {
    let mut e = Emitter::new(
        buf,
        msg.mtype,
        MessageClass::from(msg.code),
        msg.mid,
        msg.token,
    )?;
    if let Some(etag) = msg.etag {
        e.option(CoapOption::ETag.into(), etag)?;
    }
    for segment in msg.path.iter() {
        e.option(CoapOption::UriPath.into(), segment)?;
    }
    if let Some(format) = msg.content_format {
        e.option_uint(CoapOption::ContentFormat.into(), u32::from(format))?;
    }
    if let Some(age) = msg.max_age {
        e.option_uint(CoapOption::MaxAge.into(), age)?;
    }
    for value in msg.query.as_slice() {
        e.option(CoapOption::UriQuery.into(), value)?;
    }
    if let Some(accept) = msg.accept {
        e.option_uint(CoapOption::Accept.into(), u32::from(accept))?;
    }
    match msg.block2 {
        Some(Ok(block)) => e.option_block(CoapOption::Block2.into(), block)?,
        // The smallest value with the reserved SZX 7 (a 4-byte value is
        // not understood at all, so TooLong cannot come out of parse).
        Some(Err(BlockError::ReservedSzx)) => e.option(CoapOption::Block2.into(), &[0x07])?,
        Some(Err(BlockError::TooLong)) => panic!("parse kept a Block2 value longer than 3 bytes"),
        None => {}
    }
    if let Some(size) = msg.size2 {
        e.option_uint(CoapOption::Size2.into(), size)?;
    }
    if let Some(echo) = msg.echo {
        e.option(wire::OPTION_ECHO, echo)?;
    }
    e.payload(msg.payload)
}

fn block_codec(data: &[u8]) {
    let value = &data[..data.len().min(3)];
    if let Ok(block) = Block::decode(value) {
        let mut out = [0u8; 4];
        let encoded = block.encode(&mut out);
        assert!(encoded.len() <= 3);
        assert_eq!(Block::decode(encoded), Ok(block));
    }
    let mut out = [0u8; 4];
    if let Some(value) = wire::decode_uint(&data[..data.len().min(4)]) {
        let encoded = wire::encode_uint(value, &mut out);
        assert_eq!(wire::decode_uint(encoded), Some(value));
        assert!(
            encoded.first() != Some(&0),
            "shortest form has no leading zero"
        );
    }
}
