//! Byte-literal fixtures for [`Message::parse`], the Block codec and
//! [`Emitter`], one test per RFC rule (byte fixtures named after their RFC figure). Parse and emit tests
//! come in pairs over the same fixture where both directions exist.

use super::*;
use coap_lite::{CoapOption, MessageClass, MessageType, RequestType, ResponseType};

const GET: MessageClass = MessageClass::Request(RequestType::Get);
const CONTENT: MessageClass = MessageClass::Response(ResponseType::Content);

/// RFC 7252 Appendix A, Figure 16: CON GET coap://server/temperature,
/// MID 0x7d34, empty token; one Uri-Path option (delta 11, length 11).
const FIG16_REQUEST: [u8; 16] = [
    0x40, 0x01, 0x7d, 0x34, 0xbb, b't', b'e', b'm', b'p', b'e', b'r', b'a', b't', b'u', b'r', b'e',
];
/// RFC 7252 Appendix A, Figure 16: the piggybacked ACK 2.05 "22.3 C".
const FIG16_RESPONSE: [u8; 11] = [
    0x60, 0x45, 0x7d, 0x34, 0xff, b'2', b'2', b'.', b'3', b' ', b'C',
];
/// RFC 7252 Appendix A, Figure 17: the same request with Token 0x20.
const FIG17_REQUEST: [u8; 17] = [
    0x41, 0x01, 0x7d, 0x34, 0x20, 0xbb, b't', b'e', b'm', b'p', b'e', b'r', b'a', b't', b'u', b'r',
    b'e',
];
/// RFC 7252 Appendix A, Figure 17: ACK 2.05 with Token 0x20.
const FIG17_RESPONSE: [u8; 12] = [
    0x61, 0x45, 0x7d, 0x34, 0x20, 0xff, b'2', b'2', b'.', b'3', b' ', b'C',
];

/// CON GET /updates/e40c292c, MID 0x0102, token 0xAB 0xCD, Block2 NUM 300
/// M=0 SZX 6 (2 bytes: 300 << 4 | 6 = 0x12C6).
const GET_BLOCK2_NUM300: [u8; 30] = [
    0x42, 0x01, 0x01, 0x02, 0xab, 0xcd, // header, token
    0xb7, b'u', b'p', b'd', b'a', b't', b'e', b's', // Uri-Path (11)
    0x08, b'e', b'4', b'0', b'c', b'2', b'9', b'2', b'c', // Uri-Path (delta 0)
    0xc2, 0x12, 0xc6, // Block2 (23 = 11 + 12), 2 bytes
    0xff, 0x01, 0x02, 0x03, // payload
];

/// RFC 7959 §3.1 Figure 2 (simple block-wise GET): the second of three
/// 128-byte blocks, "2.05 Content, 2:1/1/128", as an ACK with MID 0x1234,
/// token 0x42, ETag 0x0102, Content-Format 42, Block2 1/1/128 (0x1B) and a
/// payload of 4 bytes standing for the block.
const CONTENT_BLOCK2_1_1_128: [u8; 20] = [
    0x61, 0x45, 0x12, 0x34, 0x42, // header, token
    0x42, 0x01, 0x02, // ETag (4), 2 bytes
    0x81, 0x2a, // Content-Format (12) 42
    0xb1, 0x1b, // Block2 (23) 1/1/128
    0xff, b'b', b'l', b'k', b'1', b'.', b'.', b'.',
];

fn format_error(datagram: &[u8]) -> FormatError {
    match Message::parse(datagram) {
        Err(ParseError::Format { error, .. }) => error,
        other => panic!("expected a format error for {datagram:02x?}, got {other:?}"),
    }
}

fn emit_to_vec(build: impl FnOnce(&mut [u8]) -> Result<usize, EmitError>) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let len = build(&mut buf).expect("fits");
    buf[..len].to_vec()
}

// ---- RFC 7252 Appendix A fixtures, parse/emit pairs ----

#[test]
fn parses_rfc7252_figure_16_request() {
    let msg = Message::parse(&FIG16_REQUEST).unwrap();
    assert_eq!(msg.mtype, MessageType::Confirmable);
    assert_eq!(msg.class(), MessageClass::Request(RequestType::Get));
    assert_eq!(msg.mid, 0x7d34);
    assert!(msg.token.is_empty());
    assert_eq!(msg.path.iter().collect::<Vec<_>>(), [&b"temperature"[..]]);
    assert!(msg.query.is_empty());
    assert!(msg.payload.is_empty());
    assert_eq!(msg.unrecognized_critical, None);
}

#[test]
fn emits_rfc7252_figure_16_request() {
    let bytes = emit_to_vec(|buf| {
        let mut e = Emitter::new(buf, MessageType::Confirmable, GET, 0x7d34, &[])?;
        e.option(CoapOption::UriPath.into(), b"temperature")?;
        Ok(e.finish())
    });
    assert_eq!(bytes, FIG16_REQUEST);
}

#[test]
fn parses_rfc7252_figure_16_response() {
    let msg = Message::parse(&FIG16_RESPONSE).unwrap();
    assert_eq!(msg.mtype, MessageType::Acknowledgement);
    assert_eq!(msg.class(), MessageClass::Response(ResponseType::Content));
    assert_eq!(msg.mid, 0x7d34);
    assert_eq!(msg.payload, b"22.3 C");
}

#[test]
fn emits_rfc7252_figure_16_response() {
    let bytes = emit_to_vec(|buf| {
        Emitter::new(
            buf,
            MessageType::Acknowledgement,
            MessageClass::Response(ResponseType::Content),
            0x7d34,
            &[],
        )?
        .payload(b"22.3 C")
    });
    assert_eq!(bytes, FIG16_RESPONSE);
}

#[test]
fn parses_rfc7252_figure_17_token() {
    let request = Message::parse(&FIG17_REQUEST).unwrap();
    assert_eq!(request.token, &[0x20]);
    assert_eq!(
        request.path.iter().collect::<Vec<_>>(),
        [&b"temperature"[..]]
    );
    let response = Message::parse(&FIG17_RESPONSE).unwrap();
    assert_eq!(response.token, &[0x20]);
    assert_eq!(response.payload, b"22.3 C");
}

#[test]
fn emits_rfc7252_figure_17_token() {
    let bytes = emit_to_vec(|buf| {
        Emitter::new(
            buf,
            MessageType::Acknowledgement,
            MessageClass::Response(ResponseType::Content),
            0x7d34,
            &[0x20],
        )?
        .payload(b"22.3 C")
    });
    assert_eq!(bytes, FIG17_RESPONSE);
}

#[test]
fn parses_get_block2_num300() {
    let msg = Message::parse(&GET_BLOCK2_NUM300).unwrap();
    assert_eq!(msg.mid, 0x0102);
    assert_eq!(msg.token, &[0xab, 0xcd]);
    assert_eq!(
        msg.path.iter().collect::<Vec<_>>(),
        [&b"updates"[..], &b"e40c292c"[..]]
    );
    assert_eq!(
        msg.block2,
        Some(Ok(Block {
            num: 300,
            more: false,
            szx: 6
        }))
    );
    assert_eq!(msg.payload, &[1, 2, 3]);
}

#[test]
fn emits_get_block2_num300() {
    let bytes = emit_to_vec(|buf| {
        let mut e = Emitter::new(buf, MessageType::Confirmable, GET, 0x0102, &[0xab, 0xcd])?;
        e.option(CoapOption::UriPath.into(), b"updates")?;
        e.option(CoapOption::UriPath.into(), b"e40c292c")?;
        e.option_block(
            CoapOption::Block2.into(),
            Block {
                num: 300,
                more: false,
                szx: 6,
            },
        )?;
        e.payload(&[1, 2, 3])
    });
    assert_eq!(bytes, GET_BLOCK2_NUM300);
}

#[test]
fn parses_rfc7959_content_block2() {
    let msg = Message::parse(&CONTENT_BLOCK2_1_1_128).unwrap();
    assert_eq!(msg.class(), MessageClass::Response(ResponseType::Content));
    assert_eq!(msg.etag, Some(&[1u8, 2][..]));
    assert_eq!(msg.content_format, Some(42));
    assert_eq!(
        msg.block2,
        Some(Ok(Block {
            num: 1,
            more: true,
            szx: 3
        }))
    );
    assert_eq!(msg.payload, b"blk1...");
}

#[test]
fn emits_rfc7959_content_block2() {
    let bytes = emit_to_vec(|buf| {
        let mut e = Emitter::new(
            buf,
            MessageType::Acknowledgement,
            MessageClass::Response(ResponseType::Content),
            0x1234,
            &[0x42],
        )?;
        e.option(CoapOption::ETag.into(), &[1, 2])?;
        e.option_uint(CoapOption::ContentFormat.into(), 42)?;
        e.option_block(
            CoapOption::Block2.into(),
            Block {
                num: 1,
                more: true,
                szx: 3,
            },
        )?;
        e.payload(b"blk1...")
    });
    assert_eq!(bytes, CONTENT_BLOCK2_1_1_128);
}

// ---- RFC 7252 §3 format rules ----

#[test]
fn shorter_than_header_is_too_short() {
    for len in 0..HEADER_LEN {
        assert_eq!(
            Message::parse(&FIG16_REQUEST[..len]).unwrap_err(),
            ParseError::TooShort
        );
    }
}

#[test]
fn ignores_version_other_than_1() {
    for version in [0u8, 2, 3] {
        let mut d = FIG16_REQUEST;
        d[0] = (d[0] & 0x3F) | (version << 6);
        assert_eq!(
            Message::parse(&d).unwrap_err(),
            ParseError::BadVersion(version)
        );
    }
}

#[test]
fn rejects_token_length_9_to_15() {
    for tkl in 9u8..=15 {
        let mut d = vec![0x40 | tkl, 0x01, 0xbe, 0xef];
        d.extend_from_slice(&[0xAA; 16]);
        assert_eq!(
            Message::parse(&d).unwrap_err(),
            ParseError::Format {
                error: FormatError::TokenLength,
                mtype: MessageType::Confirmable,
                mid: 0xbeef
            },
            "tkl {tkl}"
        );
    }
    // TKL 8 is the longest valid token.
    let mut d = vec![0x48, 0x01, 0, 1];
    d.extend_from_slice(&[7; 8]);
    assert_eq!(Message::parse(&d).unwrap().token, &[7; 8]);
}

#[test]
fn rejects_truncated_token() {
    // NON, TKL 4 but only 2 token bytes: the header fields an RST needs
    // are still reported.
    let d = [0x54, 0x01, 0x00, 0x07, 0xAA, 0xBB];
    assert_eq!(
        Message::parse(&d).unwrap_err(),
        ParseError::Format {
            error: FormatError::TruncatedToken,
            mtype: MessageType::NonConfirmable,
            mid: 7
        }
    );
}

#[test]
fn rejects_option_delta_15() {
    // 0xF1: delta nibble 15 with length 1 is not the payload marker.
    assert_eq!(
        format_error(&[0x40, 0x01, 0, 1, 0xF1, 0x00]),
        FormatError::OptionDelta15
    );
}

#[test]
fn rejects_option_length_15() {
    assert_eq!(
        format_error(&[0x40, 0x01, 0, 1, 0xBF, b'a']),
        FormatError::OptionLength15
    );
}

#[test]
fn rejects_truncated_option() {
    // Value shorter than its length.
    assert_eq!(
        format_error(&[0x40, 0x01, 0, 1, 0xB3, b'a']),
        FormatError::TruncatedOption
    );
    // Extended delta 13 without its byte; extended delta 14 with one of two.
    assert_eq!(
        format_error(&[0x40, 0x01, 0, 1, 0xD0]),
        FormatError::TruncatedOption
    );
    assert_eq!(
        format_error(&[0x40, 0x01, 0, 1, 0xE0, 0x01]),
        FormatError::TruncatedOption
    );
    // Extended length 13 and 14 without their bytes.
    assert_eq!(
        format_error(&[0x40, 0x01, 0, 1, 0x1D]),
        FormatError::TruncatedOption
    );
    assert_eq!(
        format_error(&[0x40, 0x01, 0, 1, 0x1E, 0x00]),
        FormatError::TruncatedOption
    );
    // Extended length 13 (value 13 + 0) with 12 bytes of value.
    let mut d = vec![0x40, 0x01, 0, 1, 0xBD, 0x00];
    d.extend_from_slice(&[b'x'; 12]);
    assert_eq!(format_error(&d), FormatError::TruncatedOption);
}

#[test]
fn rejects_option_number_past_65535() {
    // One option: delta 14 with extension 0xFFFF is 65535 + 269.
    assert_eq!(
        format_error(&[0x40, 0x01, 0, 1, 0xE0, 0xFF, 0xFF]),
        FormatError::OptionNumber
    );
    // Two options: 65000 (elective, ignored) then delta 781 reaching 65781.
    let first = (65000u16 - 269).to_be_bytes();
    let second = (781u16 - 269).to_be_bytes();
    let d = [
        0x40, 0x01, 0, 1, 0xE0, first[0], first[1], 0xE0, second[0], second[1],
    ];
    assert_eq!(format_error(&d), FormatError::OptionNumber);
    // 65535 itself is a valid option number (odd: an unknown critical one).
    let last = (65535u16 - 269).to_be_bytes();
    let d = [0x40, 0x01, 0, 1, 0xE0, last[0], last[1]];
    let msg = Message::parse(&d).unwrap();
    assert_eq!(msg.unrecognized_critical, Some(65535));
}

#[test]
fn rejects_payload_marker_without_payload() {
    let mut d = FIG16_REQUEST.to_vec();
    d.push(PAYLOAD_MARKER);
    assert_eq!(format_error(&d), FormatError::EmptyPayload);
    // Directly after the header too.
    assert_eq!(
        format_error(&[0x50, 0x01, 0, 1, 0xFF]),
        FormatError::EmptyPayload
    );
}

#[test]
fn rejects_empty_message_with_token_options_or_payload() {
    // RFC 7252 §4.1: code 0.00 is header only.
    assert_eq!(
        format_error(&[0x41, 0x00, 0, 1, 0x20]),
        FormatError::NonEmptyEmpty
    );
    assert_eq!(
        format_error(&[0x40, 0x00, 0, 1, 0xB1, b'a']),
        FormatError::NonEmptyEmpty
    );
    assert_eq!(
        format_error(&[0x40, 0x00, 0, 1, 0xFF, 0x01]),
        FormatError::NonEmptyEmpty
    );
    assert_eq!(
        format_error(&[0x70, 0x00, 0, 1, 0x00]),
        FormatError::NonEmptyEmpty
    );
    // The bare header is a valid empty message (a CoAP ping).
    let ping = Message::parse(&[0x40, 0x00, 0x12, 0x34]).unwrap();
    assert_eq!(ping.class(), MessageClass::Empty);
    assert_eq!(ping.mid, 0x1234);
}

#[test]
fn parses_extended_delta_13_and_14_forms() {
    // Size2 (28): delta 28 = 13 + 15; Echo (252): delta 224 = 13 + 211;
    // option 2000 (elective, unknown): delta 1748 = 269 + 0x05C7.
    let d = [
        0x40, 0x01, 0, 1, // header
        0xD1, 15, 0x05, // Size2 = 5
        0xD2, 211, 0xE1, 0xC0, // Echo = E1 C0
        0xE1, 0x05, 0xC7, 0x09, // option 2000 = 09
        0xFF, b'p',
    ];
    let msg = Message::parse(&d).unwrap();
    assert_eq!(msg.size2, Some(5));
    assert_eq!(msg.echo, Some(&[0xE1, 0xC0][..]));
    assert_eq!(msg.unrecognized_critical, None);
    assert_eq!(msg.payload, b"p");
}

#[test]
fn parses_extended_length_13_and_14_forms() {
    // Uri-Query of 13 bytes (length 13 + 0) and of 255 bytes (13 + 242),
    // then an elective option 2048 of 300 bytes (length 14: 269 + 31).
    let mut d = vec![0x40, 0x01, 0, 1];
    d.extend_from_slice(&[0xDD, 2, 0x00]); // delta 15 = 13 + 2, length 13 + 0
    d.extend_from_slice(b"pid=ABCDEFGHI");
    d.extend_from_slice(&[0x0D, 242]);
    d.extend_from_slice(&[b'q'; 255]);
    let delta = (2048u16 - 15 - 269).to_be_bytes();
    d.extend_from_slice(&[0xEE, delta[0], delta[1], 0x00, 31]);
    d.extend_from_slice(&[0x55; 300]);
    d.extend_from_slice(&[0xFF, 0x01]);
    let msg = Message::parse(&d).unwrap();
    assert_eq!(
        msg.query.as_slice(),
        &[&b"pid=ABCDEFGHI"[..], &[b'q'; 255][..]]
    );
    assert_eq!(msg.unrecognized_critical, None);
    assert_eq!(msg.payload, &[0x01]);
}

#[test]
fn repeated_block2_is_unrecognized_critical() {
    // RFC 7252 §5.4.5: the second Block2 is an unrecognised critical option.
    let d = [0x40, 0x01, 0, 1, 0xD1, 10, 0x16, 0x01, 0x26];
    let msg = Message::parse(&d).unwrap();
    assert_eq!(msg.unrecognized_critical, Some(23));
    assert_eq!(
        msg.block2,
        Some(Ok(Block {
            num: 1,
            more: false,
            szx: 6
        })),
        "the first occurrence is kept"
    );
}

#[test]
fn repeated_uri_host_is_unrecognized_critical() {
    let d = [0x40, 0x01, 0, 1, 0x31, b'a', 0x01, b'b'];
    assert_eq!(Message::parse(&d).unwrap().unrecognized_critical, Some(3));
    let once = [0x40, 0x01, 0, 1, 0x31, b'a'];
    assert_eq!(Message::parse(&once).unwrap().unrecognized_critical, None);
}

#[test]
fn repeated_size2_is_ignored() {
    let d = [0x40, 0x01, 0, 1, 0xD1, 15, 0x07, 0x01, 0x09];
    let msg = Message::parse(&d).unwrap();
    assert_eq!(msg.size2, Some(7), "first kept");
    assert_eq!(msg.unrecognized_critical, None);
}

#[test]
fn repeated_content_format_is_ignored() {
    let d = [0x60, 0x45, 0, 1, 0xC1, 42, 0x01, 0x00];
    let msg = Message::parse(&d).unwrap();
    assert_eq!(msg.content_format, Some(42), "first kept");
    assert_eq!(msg.unrecognized_critical, None);
}

#[test]
fn block2_of_4_bytes_is_unrecognized_critical() {
    // RFC 7959 §2.2: Block2 is 0 to 3 bytes; RFC 7252 §5.4.3 treats a
    // length out of range like an unrecognised option, and Block2 is
    // critical.
    let d = [0x40, 0x01, 0, 1, 0xD4, 10, 0, 0, 0x01, 0x06];
    let msg = Message::parse(&d).unwrap();
    assert_eq!(msg.unrecognized_critical, Some(23));
    assert_eq!(msg.block2, None);
}

#[test]
fn etag_of_9_bytes_in_a_response_is_ignored() {
    // ETag is elective and 1 to 8 bytes: a 9-byte one is skipped.
    let mut d = vec![0x60, 0x45, 0, 1, 0x49];
    d.extend_from_slice(&[0xEE; 9]);
    d.extend_from_slice(&[0xFF, b'x']);
    let msg = Message::parse(&d).unwrap();
    assert_eq!(msg.etag, None);
    assert_eq!(msg.unrecognized_critical, None);
    assert_eq!(msg.payload, b"x");
}

#[test]
fn unknown_elective_option_is_ignored() {
    // Option 2048 (even: elective), after an Observe (6) of 0.
    let delta = (2048u16 - 11 - 269).to_be_bytes();
    let d = [
        0x40, 0x01, 0, 1, 0x60, 0x57, b'u', b'p', b'd', b'a', b't', b'e', b's', 0xE1, delta[0],
        delta[1], 0x00,
    ];
    let msg = Message::parse(&d).unwrap();
    assert_eq!(msg.unrecognized_critical, None);
    assert_eq!(msg.path.iter().collect::<Vec<_>>(), [&b"updates"[..]]);
    assert_eq!(msg.observe, Some(0));
}

#[test]
fn unknown_critical_option_is_reported() {
    // Option 2049 (odd: critical), after Uri-Path.
    let delta = (2049u16 - 11 - 269).to_be_bytes();
    let d = [0x40, 0x01, 0, 1, 0xB1, b'x', 0xE0, delta[0], delta[1]];
    assert_eq!(
        Message::parse(&d).unwrap().unrecognized_critical,
        Some(2049)
    );
    // If-Match (1) is critical and not implemented.
    let d = [0x40, 0x01, 0, 1, 0x11, 0x00];
    assert_eq!(Message::parse(&d).unwrap().unrecognized_critical, Some(1));
    // The first one is reported.
    let d = [0x40, 0x01, 0, 1, 0x10, 0x80];
    assert_eq!(Message::parse(&d).unwrap().unrecognized_critical, Some(1));
    assert!(is_critical(1) && is_critical(23) && !is_critical(4) && !is_critical(28));
}

#[test]
fn uri_path_beyond_max_path_segments_overflows() {
    let mut d = vec![0x40, 0x01, 0, 1, 0xB1, b'a'];
    for _ in 1..=MAX_PATH_SEGMENTS {
        d.extend_from_slice(&[0x01, b'b']);
    }
    let msg = Message::parse(&d).unwrap();
    assert!(msg.path.overflowed());
    assert_eq!(msg.path.iter().count(), MAX_PATH_SEGMENTS);
    assert_eq!(msg.path.get(0), Some(&b"a"[..]));
    assert_eq!(
        msg.unrecognized_critical, None,
        "a long path is not a format error"
    );

    // Exactly MAX_PATH_SEGMENTS does not overflow.
    let exact = &d[..d.len() - 2];
    let msg = Message::parse(exact).unwrap();
    assert!(!msg.path.overflowed());
    assert_eq!(msg.path.iter().count(), MAX_PATH_SEGMENTS);
}

#[test]
fn uri_query_beyond_max_query_segments_overflows() {
    let mut d = vec![0x40, 0x01, 0, 1, 0xD1, 2, b'a']; // Uri-Query (15 = 13 + 2)
    for _ in 1..=MAX_QUERY_SEGMENTS {
        d.extend_from_slice(&[0x01, b'b']);
    }
    let msg = Message::parse(&d).unwrap();
    assert!(msg.query.overflowed());
    assert_eq!(msg.query.as_slice().len(), MAX_QUERY_SEGMENTS);
}

#[test]
fn option_values_outside_their_range_count_as_unrecognised() {
    // Uri-Host of 0 bytes (range 1..255): critical.
    assert_eq!(
        Message::parse(&[0x40, 0x01, 0, 1, 0x30])
            .unwrap()
            .unrecognized_critical,
        Some(3)
    );
    // Uri-Port of 3 bytes (range 0..2): critical.
    assert_eq!(
        Message::parse(&[0x40, 0x01, 0, 1, 0x73, 0, 0x16, 0x33])
            .unwrap()
            .unrecognized_critical,
        Some(7)
    );
    // Accept of 3 bytes: critical.
    assert_eq!(
        Message::parse(&[0x40, 0x01, 0, 1, 0xD3, 4, 0, 0, 42])
            .unwrap()
            .unrecognized_critical,
        Some(17)
    );
    // Content-Format of 3 bytes: elective, ignored.
    let msg = Message::parse(&[0x40, 0x01, 0, 1, 0xC3, 0, 0, 42]).unwrap();
    assert_eq!(
        (msg.content_format, msg.unrecognized_critical),
        (None, None)
    );
    // Echo of 41 bytes: elective, ignored.
    let mut d = vec![0x40, 0x01, 0, 1, 0xDD, 239, 41 - 13];
    d.extend_from_slice(&[1; 41]);
    let msg = Message::parse(&d).unwrap();
    assert_eq!((msg.echo, msg.unrecognized_critical), (None, None));
}

#[test]
fn reads_every_message_type() {
    for (bits, mtype) in [
        (0u8, MessageType::Confirmable),
        (1, MessageType::NonConfirmable),
        (2, MessageType::Acknowledgement),
        (3, MessageType::Reset),
    ] {
        let d = [0x40 | (bits << 4), 0x00, 0, 9];
        let msg = Message::parse(&d).unwrap();
        assert_eq!(msg.mtype, mtype);
        let len = emit_empty(&mut [0u8; 4], mtype, 9).unwrap();
        assert_eq!(len, 4);
    }
}

// ---- RFC 7959 §2.2 Block option codec ----

#[test]
fn block_of_0_bytes_is_num_0_more_clear_16_bytes() {
    let b = Block::decode(&[]).unwrap();
    assert_eq!(
        b,
        Block {
            num: 0,
            more: false,
            szx: 0
        }
    );
    assert_eq!(b.size(), 16);
    assert_eq!(b.encode(&mut [0; 4]), &[] as &[u8]);
}

#[test]
fn block_of_1_byte() {
    // RFC 7959 §3.1 Figure 2: 2:0/1/128 is 0x0B, 2:2/0/128 is 0x23.
    let b = Block::decode(&[0x0B]).unwrap();
    assert_eq!(
        b,
        Block {
            num: 0,
            more: true,
            szx: 3
        }
    );
    assert_eq!(b.size(), 128);
    assert_eq!(b.encode(&mut [0; 4]), &[0x0B]);
    let b = Block::decode(&[0x23]).unwrap();
    assert_eq!((b.num, b.more, b.szx), (2, false, 3));
    // NUM 15 is the largest 1-byte number.
    let b = Block {
        num: 15,
        more: true,
        szx: 6,
    };
    assert_eq!(b.encode(&mut [0; 4]), &[0xFE]);
}

#[test]
fn block_of_2_bytes() {
    let b = Block::decode(&[0x01, 0x0B]).unwrap();
    assert_eq!((b.num, b.more, b.szx), (16, true, 3));
    assert_eq!(b.encode(&mut [0; 4]), &[0x01, 0x0B]);
}

#[test]
fn block_of_3_bytes() {
    let b = Block::decode(&[0x01, 0x00, 0x06]).unwrap();
    assert_eq!((b.num, b.more, b.szx), (4096, false, 6));
    assert_eq!(b.encode(&mut [0; 4]), &[0x01, 0x00, 0x06]);
    // Leading zero bytes are allowed on input.
    assert_eq!(
        Block::decode(&[0x00, 0x00, 0x1E]).unwrap(),
        Block::decode(&[0x1E]).unwrap()
    );
}

#[test]
fn block_num_4095_roundtrips_in_2_bytes() {
    let b = Block {
        num: 4095,
        more: true,
        szx: 6,
    };
    let mut out = [0; 4];
    let encoded = b.encode(&mut out);
    assert_eq!(encoded, &[0xFF, 0xFE]);
    assert_eq!(Block::decode(encoded).unwrap(), b);
}

#[test]
fn block_num_4096_roundtrips_in_3_bytes() {
    // coap-lite's BlockValue wraps here; ours must not.
    let b = Block {
        num: 4096,
        more: true,
        szx: 6,
    };
    let mut out = [0; 4];
    let encoded = b.encode(&mut out);
    assert_eq!(encoded, &[0x01, 0x00, 0x0E]);
    assert_eq!(Block::decode(encoded).unwrap(), b);
}

#[test]
fn block_num_2_pow_20_minus_1_roundtrips() {
    let b = Block {
        num: Block::MAX_NUM,
        more: false,
        szx: 0,
    };
    let mut out = [0; 4];
    let encoded = b.encode(&mut out);
    assert_eq!(encoded, &[0xFF, 0xFF, 0xF0]);
    assert_eq!(Block::decode(encoded).unwrap(), b);
    // Every NUM and flag combination survives a round trip.
    for num in (0..=Block::MAX_NUM).step_by(997).chain([Block::MAX_NUM]) {
        for szx in 0..=Block::MAX_SZX {
            for more in [false, true] {
                let b = Block { num, more, szx };
                assert_eq!(Block::decode(b.encode(&mut [0; 4])).unwrap(), b);
            }
        }
    }
}

#[test]
fn block_szx_7_is_reserved() {
    assert_eq!(Block::decode(&[0x07]), Err(BlockError::ReservedSzx));
    assert_eq!(Block::decode(&[0x01, 0x0F]), Err(BlockError::ReservedSzx));
    assert_eq!(
        Block::decode(&[0xFF, 0xFF, 0xFF]),
        Err(BlockError::ReservedSzx)
    );
}

#[test]
fn block_longer_than_3_bytes_is_too_long() {
    assert_eq!(Block::decode(&[0, 0, 0, 6]), Err(BlockError::TooLong));
    assert_eq!(Block::decode(&[0; 5]), Err(BlockError::TooLong));
}

#[test]
fn block_encode_masks_num_and_caps_szx() {
    let b = Block {
        num: Block::MAX_NUM + 1,
        more: false,
        szx: 7,
    };
    let mut out = [0; 4];
    let encoded = b.encode(&mut out);
    assert_eq!(encoded, &[0x06], "NUM masked to 0, SZX capped at 6");
    assert!(encoded.len() <= 3);
}

#[test]
fn block_size_and_szx_for_size() {
    for szx in 0..=6u8 {
        let size = 16usize << szx;
        assert_eq!(Block::szx_for_size(size), Some(szx));
        assert_eq!(
            Block {
                num: 0,
                more: false,
                szx
            }
            .size(),
            size
        );
    }
    for size in [0, 8, 15, 17, 48, 2048] {
        assert_eq!(Block::szx_for_size(size), None);
    }
}

// ---- RFC 7252 §3.2 uint ----

#[test]
fn uint_encodes_in_fewest_bytes() {
    let cases: [(u32, &[u8]); 9] = [
        (0, &[]),
        (1, &[1]),
        (255, &[255]),
        (256, &[1, 0]),
        (65535, &[255, 255]),
        (65536, &[1, 0, 0]),
        (0x00FF_FFFF, &[255, 255, 255]),
        (0x0100_0000, &[1, 0, 0, 0]),
        (u32::MAX, &[255, 255, 255, 255]),
    ];
    for (value, bytes) in cases {
        assert_eq!(encode_uint(value, &mut [0; 4]), bytes, "{value}");
        assert_eq!(decode_uint(bytes), Some(value));
    }
}

#[test]
fn uint_decodes_leading_zeros_and_rejects_more_than_4_bytes() {
    assert_eq!(decode_uint(&[0, 0, 1]), Some(1));
    assert_eq!(decode_uint(&[0, 0, 0, 0]), Some(0));
    assert_eq!(decode_uint(&[0, 0, 0, 0, 1]), None);
}

// ---- Emitter ----

#[test]
fn emits_options_in_order_with_delta_and_length_extensions() {
    let long13 = [b'a'; 13];
    let long300 = [b'z'; 300];
    let bytes = emit_to_vec(|buf| {
        let mut e = Emitter::new(buf, MessageType::NonConfirmable, GET, 0xA1B2, &[9])?;
        e.option(CoapOption::UriPath.into(), &long13)?; // delta 11, length 13 + 0
        e.option_uint(CoapOption::Size2.into(), 1025)?; // delta 17 = 13 + 4
        e.option(OPTION_ECHO, &[0xEC])?; // delta 224 = 13 + 211
        e.option(2000, &long300)?; // delta 1748 = 269 + 0x05C7, length 269 + 31
        e.payload(b"!")
    });
    let mut expected = vec![0x51, 0x01, 0xA1, 0xB2, 9];
    expected.extend_from_slice(&[0xBD, 0x00]);
    expected.extend_from_slice(&long13);
    expected.extend_from_slice(&[0xD2, 4, 0x04, 0x01]);
    expected.extend_from_slice(&[0xD1, 211, 0xEC]);
    expected.extend_from_slice(&[0xEE, 0x05, 0xC7, 0x00, 31]);
    expected.extend_from_slice(&long300);
    expected.extend_from_slice(&[0xFF, b'!']);
    assert_eq!(bytes, expected);

    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(msg.path.iter().collect::<Vec<_>>(), [&long13[..]]);
    assert_eq!(msg.size2, Some(1025));
    assert_eq!(msg.echo, Some(&[0xEC][..]));
    assert_eq!(msg.unrecognized_critical, None);
    assert_eq!(msg.payload, b"!");
}

#[test]
fn emits_delta_and_length_boundaries_12_13_268_269() {
    // Each value round-trips through the parser at the nibble boundaries.
    for n in [0usize, 12, 13, 268, 269, 1000] {
        let value = vec![b'v'; n];
        let number = 2u16 + 2 * n as u16; // even: elective, ignored by parse
        let bytes = emit_to_vec(|buf| {
            let mut e = Emitter::new(buf, MessageType::Confirmable, GET, 1, &[])?;
            e.option(number, &value)?;
            e.option(number + 256, &[])?;
            e.payload(&[0xAB])
        });
        let header = bytes[4];
        let expected_len_nibble = match n {
            0..=12 => n as u8,
            13..=268 => 13,
            _ => 14,
        };
        assert_eq!(header & 0x0F, expected_len_nibble, "length {n}");
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(msg.payload, &[0xAB]);
        let coap = coap_lite::Packet::from_bytes(&bytes).unwrap();
        let got = coap.get_first_option(CoapOption::Unknown(number)).unwrap();
        assert_eq!(got.len(), n);
        assert!(coap.get_option(CoapOption::Unknown(number + 256)).is_some());
    }
}

#[test]
fn payload_marker_only_when_payload_non_empty() {
    let header_only = emit_to_vec(|buf| {
        Emitter::new(buf, MessageType::Acknowledgement, CONTENT, 5, &[])?.payload(&[])
    });
    assert_eq!(header_only, [0x60, 0x45, 0, 5]);
    let filled_nothing = emit_to_vec(|buf| {
        Emitter::new(buf, MessageType::Acknowledgement, CONTENT, 5, &[])?.payload_with(10, |_| 0)
    });
    assert_eq!(filled_nothing, [0x60, 0x45, 0, 5]);
    let filled = emit_to_vec(|buf| {
        Emitter::new(buf, MessageType::Acknowledgement, CONTENT, 5, &[])?.payload_with(10, |room| {
            room[..3].copy_from_slice(b"abc");
            3
        })
    });
    assert_eq!(filled, [0x60, 0x45, 0, 5, 0xFF, b'a', b'b', b'c']);
    // A fill that claims more than `max` is cut at `max`.
    let clamped = emit_to_vec(|buf| {
        Emitter::new(buf, MessageType::Acknowledgement, CONTENT, 5, &[])?.payload_with(2, |room| {
            room.fill(b'q');
            99
        })
    });
    assert_eq!(clamped, [0x60, 0x45, 0, 5, 0xFF, b'q', b'q']);
}

/// The message of `emits_options_in_order_…`, shortened, written into a
/// buffer of `len` bytes.
fn emit_sample(buf: &mut [u8]) -> Result<usize, EmitError> {
    let mut e = Emitter::new(
        buf,
        MessageType::Acknowledgement,
        CONTENT,
        0x0102,
        &[1, 2, 3, 4],
    )?;
    e.option(CoapOption::ETag.into(), &[8; 8])?;
    e.option_uint(CoapOption::ContentFormat.into(), 42)?;
    e.option_block(
        CoapOption::Block2.into(),
        Block {
            num: 4096,
            more: true,
            szx: 6,
        },
    )?;
    e.option_uint(CoapOption::Size2.into(), 5_000_000)?;
    e.option(OPTION_ECHO, &[3; 20])?;
    e.payload(&[0x77; 64])
}

#[test]
fn buffer_too_small_never_panics_and_never_writes_past_the_buffer() {
    let full = emit_to_vec(emit_sample);
    const SENTINEL: u8 = 0xA5;
    for len in 0..full.len() {
        let mut backing = [SENTINEL; 256];
        let result = emit_sample(&mut backing[..len]);
        assert_eq!(result, Err(EmitError::BufferTooSmall), "buffer of {len}");
        assert!(
            backing[len..].iter().all(|&b| b == SENTINEL),
            "wrote past {len}"
        );
    }
    let mut exact = vec![0u8; full.len()];
    assert_eq!(emit_sample(&mut exact), Ok(full.len()));
    assert_eq!(exact, full);

    // payload_with needs room for `max` bytes even if it fills fewer.
    let mut small = [0u8; 8];
    let e = Emitter::new(&mut small, MessageType::Acknowledgement, CONTENT, 1, &[]).unwrap();
    assert_eq!(e.payload_with(4, |_| 1), Err(EmitError::BufferTooSmall));
    assert_eq!(
        emit_empty(&mut [0u8; 3], MessageType::Reset, 1),
        Err(EmitError::BufferTooSmall)
    );
}

#[test]
fn token_longer_than_8_bytes_is_refused() {
    let mut buf = [0u8; 64];
    assert_eq!(
        Emitter::new(&mut buf, MessageType::Confirmable, GET, 1, &[0; 9]).unwrap_err(),
        EmitError::BufferTooSmall
    );
}

#[test]
fn emits_empty_rst() {
    let mut buf = [0u8; 4];
    assert_eq!(emit_empty(&mut buf, MessageType::Reset, 0xBEEF), Ok(4));
    assert_eq!(buf, [0x70, 0x00, 0xBE, 0xEF]);
    let msg = Message::parse(&buf).unwrap();
    assert_eq!(
        (msg.mtype, msg.class(), msg.mid),
        (MessageType::Reset, MessageClass::Empty, 0xBEEF)
    );
}

#[test]
fn display_texts_are_static_and_non_empty() {
    for e in [
        FormatError::TokenLength,
        FormatError::TruncatedToken,
        FormatError::OptionDelta15,
        FormatError::OptionLength15,
        FormatError::TruncatedOption,
        FormatError::OptionNumber,
        FormatError::EmptyPayload,
        FormatError::NonEmptyEmpty,
    ] {
        assert!(!e.to_string().is_empty());
    }
    assert!(!ParseError::TooShort.to_string().is_empty());
    assert!(!EmitError::BufferTooSmall.to_string().is_empty());
}

/// RFC 7252 §5.10.2: Proxy-Uri (35) and Proxy-Scheme (39) are understood,
/// so that a non-proxy answers 5.05 instead of 4.02; outside their length
/// ranges they are unrecognised critical options like any other.
#[test]
fn proxy_uri_and_proxy_scheme_are_recognised_for_a_5_05() {
    // CON GET, MID 1, no token; option 35 (delta 13, ext 22) "coap://h/x".
    let mut proxy_uri = vec![0x40, 0x01, 0x00, 0x01, 0xDA, 35 - 13];
    proxy_uri.extend_from_slice(b"coap://h/x");
    let msg = Message::parse(&proxy_uri).unwrap();
    assert!(msg.proxy);
    assert_eq!(msg.unrecognized_critical, None);
    // Option 39 (delta 13, ext 26) "coap".
    let mut proxy_scheme = vec![0x40, 0x01, 0x00, 0x01, 0xD4, 39 - 13];
    proxy_scheme.extend_from_slice(b"coap");
    let msg = Message::parse(&proxy_scheme).unwrap();
    assert!(msg.proxy);
    assert_eq!(msg.unrecognized_critical, None);
    // An empty Proxy-Scheme is outside 1..=255.
    let empty = [0x40, 0x01, 0x00, 0x01, 0xD0, 39 - 13];
    let msg = Message::parse(&empty).unwrap();
    assert!(!msg.proxy);
    assert_eq!(msg.unrecognized_critical, Some(39));
}

/// RFC 7959 §2.2: NUM counts blocks of the size SZX gives, so the byte
/// position is NUM << (SZX + 4); a smaller size keeps the position.
#[test]
fn block_position_and_block_at_keep_the_byte_position() {
    let b = Block {
        num: 300,
        more: true,
        szx: 6,
    };
    assert_eq!(b.position(), 300 * 1024);
    let smaller = Block::at(b.position(), 4).unwrap();
    assert_eq!((smaller.num, smaller.szx, smaller.more), (1200, 4, false));
    assert_eq!(smaller.position(), b.position());
    // Inside a block: the block that holds the byte.
    assert_eq!(Block::at(1500, 6).unwrap().num, 1);
    // NUM past 20 bits cannot be expressed.
    let last = u64::from(Block::MAX_NUM) * 16;
    assert_eq!(Block::at(last, 0).unwrap().num, Block::MAX_NUM);
    assert_eq!(Block::at(last + 16, 0), None);
    assert_eq!(Block::at(u64::MAX, 0), None);
}

// ---------------------------------------------------------------------------
// The fast path's parser and emitter (`BlockGet`, `emit_block_ack`)

#[test]
fn block_get_reads_a_later_block_by_id_and_nothing_else() {
    // The fixture without its payload; with it, it is not a fast request.
    assert!(BlockGet::parse(&GET_BLOCK2_NUM300).is_none());
    let block_request: [u8; 26] = GET_BLOCK2_NUM300[..26].try_into().unwrap();
    let get = BlockGet::parse(&block_request).expect("a fast request");
    assert_eq!(get.mid, 0x0102);
    assert_eq!(get.token, [0xAB, 0xCD]);
    assert_eq!(get.id, Some(&b"e40c292c"[..]));
    assert!(get.payload.is_empty());
    assert_eq!(
        get.block,
        Block {
            num: 300,
            more: false,
            szx: 6
        }
    );
    assert!(!get.size2 && get.echo.is_none());
    let with = |extra: &[(u16, &[u8])], payload: &[u8], num: u32| {
        let mut buf = [0u8; 128];
        let mut e = Emitter::new(&mut buf, MessageType::Confirmable, GET, 7, &[1]).unwrap();
        let mut options: Vec<(u16, &[u8])> = vec![(11, b"updates"), (11, b"e40c292c")];
        options.extend_from_slice(extra);
        options.push((23, &[]));
        options.sort_by_key(|o| o.0);
        for (number, value) in options {
            if number == 23 {
                e.option_block(
                    23,
                    Block {
                        num,
                        more: false,
                        szx: 6,
                    },
                )
                .unwrap();
            } else {
                e.option(number, value).unwrap();
            }
        }
        let len = e.payload(payload).unwrap();
        BlockGet::parse(&buf[..len]).map(|g| (g.size2, g.echo.map(<[u8]>::to_vec)))
    };
    let fast = with(&[(28, &[]), (OPTION_ECHO, b"echo")], &[], 1).expect("Size2 and Echo");
    assert!(fast.0);
    assert_eq!(fast.1.as_deref(), Some(&b"echo"[..]));
    for (extra, payload, num) in [
        (&[][..], &[][..], 0),
        (&[(6, &[][..])], &[][..], 1),
        (&[(15, &b"offset=1"[..])], &[], 1),
        (&[(17, &[42][..])], &[], 1),
        (&[(28, &[][..]), (28, &[][..])], &[], 1),
        (&[(2048, &b"x"[..])], &[], 1),
        (&[], &[1, 0, 0, 0][..], 1),
    ] {
        assert!(with(extra, payload, num).is_none(), "{extra:?} {payload:?}");
    }
    // The legacy form: `/updates` and Block2, with a payload or without.
    let legacy = [
        0x40, 0x01, 0x00, 0x07, 0xb7, b'u', b'p', b'd', b'a', b't', b'e', b's', 0xc1, 0x16, 0xff,
        0x01, b'P', 0x03,
    ];
    let get = BlockGet::parse(&legacy).expect("legacy with a payload");
    assert_eq!((get.id, get.payload), (None, &[0x01, b'P', 0x03][..]));
    assert_eq!(get.block.num, 1);
    let get = BlockGet::parse(&legacy[..14]).expect("legacy without a payload");
    assert_eq!((get.id, get.payload), (None, &[][..]));
    assert!(
        BlockGet::parse(&legacy[..15]).is_none(),
        "marker without payload"
    );
    // A NON, or anything cut short.
    let mut non = block_request;
    non[0] |= 0x10;
    assert!(BlockGet::parse(&non).is_none());
    for cut in 0..block_request.len() {
        assert!(BlockGet::parse(&block_request[..cut]).is_none());
    }
}

#[test]
fn emit_block_ack_writes_what_the_emitter_writes() {
    let payload: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
    let etag = [0xE7, 0, 1, 2, 3, 4, 5, 0xFF];
    for token_len in 0..=8usize {
        let token: Vec<u8> = (0..token_len as u8).map(|b| b ^ 0x5A).collect();
        for (num, szx, more) in [
            (1u32, 6u8, true),
            (15, 0, false),
            (4095, 2, true),
            (Block::MAX_NUM, 6, false),
        ] {
            let block = Block { num, more, szx };
            for size2 in [None, Some(0), Some(255), Some(70_000), Some(u32::MAX)] {
                for payload in [&payload[..], &payload[..1], &[]] {
                    let expected = emit_to_vec(|buf| {
                        let mut e = Emitter::new(
                            buf,
                            MessageType::Acknowledgement,
                            CONTENT,
                            0xBEEF,
                            &token,
                        )?;
                        e.option(4, &etag)?;
                        e.option_uint(12, 42)?;
                        e.option_block(23, block)?;
                        if let Some(size) = size2 {
                            e.option_uint(28, size)?;
                        }
                        e.payload(payload)
                    });
                    let got = emit_to_vec(|buf| {
                        emit_block_ack(buf, 0xBEEF, &token, &etag, block, size2, payload)
                    });
                    assert_eq!(got, expected, "{token_len} {block:?} {size2:?}");
                    // One byte less room: refused, not cut.
                    let mut small = vec![0u8; expected.len() - 1];
                    assert_eq!(
                        emit_block_ack(&mut small, 0xBEEF, &token, &etag, block, size2, payload),
                        Err(EmitError::BufferTooSmall)
                    );
                }
            }
        }
    }
    let mut buf = [0u8; 64];
    assert_eq!(
        emit_block_ack(
            &mut buf,
            1,
            &[0; 9],
            &etag,
            Block {
                num: 1,
                more: false,
                szx: 6
            },
            None,
            &[]
        ),
        Err(EmitError::BufferTooSmall)
    );
}

#[test]
fn path_is_a_view_of_its_options_not_an_array_of_segments() {
    // The parsed message reserves no slot per segment: the path is a
    // slice and a count.
    assert!(std::mem::size_of::<Path<'static>>() <= 3 * std::mem::size_of::<usize>());
    // Segments of 0, 13 and 255 bytes (length nibble 13), two longer ones
    // skipped as unrecognised (269 bytes: nibble 14; 256), one of 1 byte,
    // then Uri-Query and Block2.
    let long13 = [b'm'; 13];
    let long255 = [b'l'; 255];
    let mut d = vec![0x40, 0x01, 0, 1, 0xB0, 0x0D, 0];
    d.extend_from_slice(&long13);
    d.extend_from_slice(&[0x0D, 242]); // 13 + 242 = 255
    d.extend_from_slice(&long255);
    d.extend_from_slice(&[0x0E, 0, 0]); // 269 + 0
    d.extend_from_slice(&[b'y'; 269]);
    d.extend_from_slice(&[0x0D, 243]); // 13 + 243 = 256
    d.extend_from_slice(&[b'x'; 256]);
    d.extend_from_slice(&[0x01, b'z', 0x41, b'q', 0x81, 0x02]);
    let msg = Message::parse(&d).unwrap();
    assert_eq!(msg.unrecognized_critical, Some(11));
    assert_eq!(
        msg.path.iter().collect::<Vec<_>>(),
        [&b""[..], &long13[..], &long255[..], b"z"]
    );
    assert_eq!(
        (msg.path.len(), msg.path.get(3), msg.path.get(4)),
        (4, Some(&b"z"[..]), None)
    );
    assert_eq!(msg.query.as_slice(), [b"q"]);
    assert!(matches!(msg.block2, Some(Ok(_))));
    assert_eq!(
        format!("{:?}", Message::parse(&FIG16_REQUEST).unwrap().path),
        format!("{:?}", [b"temperature"])
    );
    // No Uri-Path: an empty view.
    let msg = Message::parse(&[0x40, 0x01, 0, 1]).unwrap();
    assert!(msg.path.is_empty() && msg.path.iter().next().is_none() && msg.path.get(0).is_none());
}
