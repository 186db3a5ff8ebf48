//! Requests and responses: the GET the client sends ([`emit_get`]), the
//! device payload, an answer copied out of its datagram, what a datagram
//! means for one exchange ([`match_reply`], [`classify_reply`]), the order
//! of notifications, and the wait after a 4.29.

use crate::coap::Resource;
use coap_lite::{CoapOption, MessageClass, MessageType, RequestType, ResponseType};
use iot_ota::firmware::{self, DeviceRequest};
use iot_ota::wire::{self, Block, BlockError, Emitter, Message};
use std::time::{Duration, Instant};

/// Wait after a 4.29 without Max-Age, in seconds.
const DEFAULT_RETRY_AFTER_S: u32 = 1;
/// Longest wait after a 4.29, in seconds, whatever its Max-Age says.
const MAX_RETRY_AFTER_S: u32 = 60;

/// One GET as the client sends it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Get<'a> {
    /// Uri-Path and Uri-Query.
    pub(crate) resource: &'a Resource,
    /// Payload (the device payload for `/updates`), empty for none.
    pub(crate) payload: &'a [u8],
    /// Block2 option: the block asked for.
    pub(crate) block2: Option<Block>,
    /// Size2 option (0 asks the server for the body's size, RFC 7959 §4).
    pub(crate) size2: Option<u32>,
    /// Observe option (RFC 7641): 0 registers, 1 deregisters.
    pub(crate) observe: Option<u32>,
}

/// Writes `get` as a Confirmable message with Message ID `mid`, `token`
/// and, when the server asked for one, the Echo value; returns its length.
///
/// # Errors
/// [`wire::EmitError::BufferTooSmall`] when it does not fit `out`.
pub(crate) fn emit_get(
    get: &Get<'_>,
    mid: u16,
    token: &[u8],
    echo: Option<&[u8]>,
    out: &mut [u8],
) -> Result<usize, wire::EmitError> {
    let mut e = Emitter::new(
        out,
        MessageType::Confirmable,
        MessageClass::Request(RequestType::Get),
        mid,
        token,
    )?;
    if let Some(observe) = get.observe {
        e.option_uint(CoapOption::Observe.into(), observe)?;
    }
    for segment in &get.resource.path {
        e.option(CoapOption::UriPath.into(), segment)?;
    }
    for item in &get.resource.query {
        e.option(CoapOption::UriQuery.into(), item)?;
    }
    if let Some(block) = get.block2 {
        e.option_block(CoapOption::Block2.into(), block)?;
    }
    if let Some(size) = get.size2 {
        e.option_uint(CoapOption::Size2.into(), size)?;
    }
    if let Some(echo) = echo {
        e.option(wire::OPTION_ECHO, echo)?;
    }
    e.payload(get.payload)
}

/// A device payload (`PIDLEN PID TYPE VERSION [OFFSET]`), written once into a buffer of the
/// longest size, so that sending it again allocates nothing.
#[derive(Debug, Clone)]
pub(crate) struct DevicePayload {
    bytes: [u8; iot_ota::firmware::MAX_PAYLOAD_LEN],
    len: usize,
}

impl DevicePayload {
    /// The payload of `request`: its OFFSET included when it has one.
    /// `None` when the PID is empty or longer than 255 bytes.
    pub(crate) fn new(request: &DeviceRequest<'_>) -> Option<DevicePayload> {
        let mut bytes = [0u8; iot_ota::firmware::MAX_PAYLOAD_LEN];
        let len = firmware::write_payload(request, &mut bytes)?;
        Some(DevicePayload { bytes, len })
    }

    /// The payload bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// An answer, copied out of the datagram.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Response {
    /// ACK (piggybacked), or CON/NON (a separate response).
    pub(crate) mtype: MessageType,
    /// Response code.
    pub(crate) code: MessageClass,
    /// Block2, `Err` when unusable (SZX 7).
    pub(crate) block2: Option<Result<Block, BlockError>>,
    /// Size2.
    pub(crate) size2: Option<u32>,
    /// ETag.
    pub(crate) etag: Option<Vec<u8>>,
    /// Content-Format.
    pub(crate) content_format: Option<u16>,
    /// Max-Age.
    pub(crate) max_age: Option<u32>,
    /// Echo (RFC 9175).
    pub(crate) echo: Option<Vec<u8>>,
    /// Observe (RFC 7641): present in a notification.
    pub(crate) observe: Option<u32>,
    /// Payload.
    pub(crate) payload: Vec<u8>,
}

impl Response {
    /// The answer `msg`, copied.
    pub(crate) fn from_message(msg: &Message<'_>) -> Response {
        Response {
            mtype: msg.mtype,
            code: msg.class(),
            block2: msg.block2,
            size2: msg.size2,
            etag: msg.etag.map(<[u8]>::to_vec),
            content_format: msg.content_format,
            max_age: msg.max_age,
            echo: msg.echo.map(<[u8]>::to_vec),
            observe: msg.observe,
            payload: msg.payload.to_vec(),
        }
    }

    /// The payload as text for an error message (RFC 7252 §5.5.2
    /// diagnostic), lossy and cut at 200 characters.
    pub(crate) fn diagnostic(&self) -> String {
        String::from_utf8_lossy(&self.payload)
            .chars()
            .take(200)
            .collect()
    }

    /// True when the answer has response code `code`.
    pub(crate) fn is(&self, code: ResponseType) -> bool {
        self.code == MessageClass::Response(code)
    }
}

/// What one received datagram means for the exchange `mid`/`token`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Matched {
    /// A piggybacked answer: ACK with our Message ID and token.
    Response(Response),
    /// An empty ACK with our Message ID: the answer follows separately.
    EmptyAck,
    /// An RST with our Message ID: the server rejected the request.
    Reset,
    /// A separate answer (CON or NON with our token); a CON one must be
    /// acknowledged with the Message ID given.
    Separate(Response, Option<u16>),
    /// Anything else: unparsable, another exchange's, a duplicate, a
    /// request. Ignored.
    Stray,
}

/// Classifies a datagram from the server for the exchange `mid`/`token`,
/// copying an answer out of it (see [`classify_reply`]).
pub(crate) fn match_reply(datagram: &[u8], mid: u16, token: &[u8]) -> Matched {
    let Ok(msg) = Message::parse(datagram) else {
        return Matched::Stray;
    };
    match classify_reply(&msg, mid, token) {
        Reply::Piggybacked => Matched::Response(Response::from_message(&msg)),
        Reply::EmptyAck => Matched::EmptyAck,
        Reply::Reset => Matched::Reset,
        Reply::Separate { ack } => Matched::Separate(Response::from_message(&msg), ack),
        Reply::Stray => Matched::Stray,
    }
}

/// What a parsed message is for one exchange; [`Matched`] without the
/// copy, for a caller that must not allocate per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// ACK with our Message ID and token, carrying the answer.
    Piggybacked,
    /// An empty ACK with our Message ID: the answer follows separately.
    EmptyAck,
    /// An RST with our Message ID: the server rejected the request.
    Reset,
    /// A CON or NON answer with our token; a CON one must be acknowledged
    /// with the Message ID in `ack`.
    Separate {
        /// The Message ID to acknowledge, for a CON answer.
        ack: Option<u16>,
    },
    /// Anything else: another exchange's, a duplicate, a request.
    Stray,
}

/// Classifies `msg` for the exchange `mid`/`token` (RFC 7252 §5.3.2: a
/// piggybacked answer matches on both, an RST on the Message ID, a
/// separate answer on the token).
pub(crate) fn classify_reply(msg: &Message<'_>, mid: u16, token: &[u8]) -> Reply {
    let is_response = matches!(msg.class(), MessageClass::Response(_));
    match msg.mtype {
        MessageType::Acknowledgement if msg.mid == mid => match msg.class() {
            MessageClass::Empty => Reply::EmptyAck,
            _ if is_response && msg.token == token => Reply::Piggybacked,
            _ => Reply::Stray,
        },
        MessageType::Reset if msg.mid == mid => Reply::Reset,
        MessageType::Confirmable if is_response && msg.token == token => {
            Reply::Separate { ack: Some(msg.mid) }
        }
        MessageType::NonConfirmable if is_response && msg.token == token => {
            Reply::Separate { ack: None }
        }
        _ => Reply::Stray,
    }
}

/// RFC 7641 §3.4: whether a notification with Observe `v2` received at
/// `t2` is newer than the last one taken (`v1` at `t1`): the 24-bit
/// sequence moved forward by less than half its range, or 128 seconds
/// passed (after which the numbers may have wrapped).
pub(crate) fn is_newer(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF)
        || (v1 > v2 && v1 - v2 > HALF)
        || t2.saturating_duration_since(t1) > Duration::from_secs(128)
}

/// The reason phrase of a response code, for messages.
pub(crate) fn code_name(code: MessageClass) -> &'static str {
    match code {
        MessageClass::Response(r) => match r {
            ResponseType::Content => "Content",
            ResponseType::BadRequest => "Bad Request",
            ResponseType::Unauthorized => "Unauthorized",
            ResponseType::BadOption => "Bad Option",
            ResponseType::Forbidden => "Forbidden",
            ResponseType::NotFound => "Not Found",
            ResponseType::MethodNotAllowed => "Method Not Allowed",
            ResponseType::NotAcceptable => "Not Acceptable",
            ResponseType::RequestEntityTooLarge => "Request Entity Too Large",
            ResponseType::TooManyRequests => "Too Many Requests",
            ResponseType::InternalServerError => "Internal Server Error",
            ResponseType::ServiceUnavailable => "Service Unavailable",
            _ => "",
        },
        _ => "",
    }
}

/// How long to wait after a 4.29: Max-Age seconds, 1 without, at most 60.
pub(crate) fn retry_after(response: &Response) -> Duration {
    let seconds = response
        .max_age
        .unwrap_or(DEFAULT_RETRY_AFTER_S)
        .min(MAX_RETRY_AFTER_S);
    Duration::from_secs(u64::from(seconds))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn emitted_get_parses_with_coap_lite_oracle() {
        let resource = Resource::parse("/updates/0d0ad509?x=1").unwrap();
        let get = Get {
            resource: &resource,
            payload: &[0, 4, 0, 0],
            block2: Some(Block {
                num: 300,
                more: false,
                szx: 2,
            }),
            size2: Some(0),
            observe: None,
        };
        let mut out = [0u8; 128];
        let len = emit_get(&get, 0x1234, &[1, 2, 3, 4], Some(b"echo"), &mut out).unwrap();
        let packet = coap_lite::Packet::from_bytes(&out[..len]).unwrap();
        assert_eq!(packet.header.message_id, 0x1234);
        assert_eq!(packet.header.get_type(), MessageType::Confirmable);
        assert_eq!(packet.header.code, MessageClass::Request(RequestType::Get));
        assert_eq!(packet.get_token(), &[1, 2, 3, 4]);
        let path: Vec<&Vec<u8>> = packet
            .get_option(CoapOption::UriPath)
            .unwrap()
            .iter()
            .collect();
        assert_eq!(path, [&b"updates".to_vec(), &b"0d0ad509".to_vec()]);
        let block = packet
            .get_option(CoapOption::Block2)
            .unwrap()
            .front()
            .unwrap();
        assert_eq!(block, &vec![0x12, 0xC2]); // NUM 300, M 0, SZX 2
        let size2 = packet
            .get_option(CoapOption::Size2)
            .unwrap()
            .front()
            .unwrap();
        assert!(size2.is_empty()); // uint 0 is the empty string
        let echo = packet
            .get_option(CoapOption::Unknown(wire::OPTION_ECHO))
            .unwrap();
        assert_eq!(echo.front().unwrap(), b"echo");
        assert_eq!(packet.payload, [0, 4, 0, 0]);
        // And with the crate's own parser.
        let msg = Message::parse(&out[..len]).unwrap();
        assert_eq!(msg.query.as_slice(), &[&b"x=1"[..]]);
    }

    #[test]
    fn emit_get_fails_cleanly_when_the_buffer_is_short() {
        let resource = Resource::updates();
        let get = Get {
            resource: &resource,
            payload: &[1; 40],
            block2: None,
            size2: None,
            observe: None,
        };
        let mut out = [0u8; 20];
        assert_eq!(
            emit_get(&get, 1, &[], None, &mut out),
            Err(wire::EmitError::BufferTooSmall)
        );
    }

    /// An answer from the server: `mtype`, `code`, mid, token, options.
    pub(crate) fn answer(
        mtype: MessageType,
        code: MessageClass,
        mid: u16,
        token: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = [0u8; 256];
        let e = Emitter::new(&mut out, mtype, code, mid, token).unwrap();
        let len = e.payload(payload).unwrap();
        out[..len].to_vec()
    }

    pub(crate) const CONTENT: MessageClass = MessageClass::Response(ResponseType::Content);

    #[test]
    fn piggybacked_answer_matches_on_mid_and_token() {
        let ack = MessageType::Acknowledgement;
        let ok = answer(ack, CONTENT, 7, b"tok", b"hi");
        match match_reply(&ok, 7, b"tok") {
            Matched::Response(r) => assert_eq!(r.payload, b"hi"),
            other => panic!("{other:?}"),
        }
        // Another exchange's answer (old MID: a late duplicate), or our MID
        // with a foreign token: ignored.
        assert_eq!(
            match_reply(&answer(ack, CONTENT, 6, b"tok", b"x"), 7, b"tok"),
            Matched::Stray
        );
        assert_eq!(
            match_reply(&answer(ack, CONTENT, 7, b"tik", b"x"), 7, b"tok"),
            Matched::Stray
        );
        // Not CoAP, or a request.
        assert_eq!(match_reply(b"\xFF\x00", 7, b"tok"), Matched::Stray);
        let get = MessageClass::Request(RequestType::Get);
        assert_eq!(
            match_reply(&answer(ack, get, 7, b"tok", b""), 7, b"tok"),
            Matched::Stray
        );
    }

    #[test]
    fn empty_ack_reset_and_separate_answers_are_told_apart() {
        let mut buf = [0u8; 4];
        let n = wire::emit_empty(&mut buf, MessageType::Acknowledgement, 9).unwrap();
        assert_eq!(match_reply(&buf[..n], 9, b"t"), Matched::EmptyAck);
        let n = wire::emit_empty(&mut buf, MessageType::Reset, 9).unwrap();
        assert_eq!(match_reply(&buf[..n], 9, b"t"), Matched::Reset);
        assert_eq!(match_reply(&buf[..n], 10, b"t"), Matched::Stray);
        let con = answer(MessageType::Confirmable, CONTENT, 500, b"t", b"late");
        assert!(matches!(
            match_reply(&con, 9, b"t"),
            Matched::Separate(_, Some(500))
        ));
        let non = answer(MessageType::NonConfirmable, CONTENT, 501, b"t", b"late");
        assert!(matches!(
            match_reply(&non, 9, b"t"),
            Matched::Separate(_, None)
        ));
        assert_eq!(match_reply(&non, 9, b"other"), Matched::Stray);
    }

    #[test]
    fn retry_after_uses_max_age_default_1_cap_60() {
        let mut r = match match_reply(
            &answer(MessageType::Acknowledgement, CONTENT, 1, b"", b""),
            1,
            b"",
        ) {
            Matched::Response(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(retry_after(&r), Duration::from_secs(1));
        r.max_age = Some(5);
        assert_eq!(retry_after(&r), Duration::from_secs(5));
        r.max_age = Some(3600);
        assert_eq!(retry_after(&r), Duration::from_secs(60));
    }

    #[test]
    fn device_payload_is_the_firmware_encoding() {
        let request = DeviceRequest {
            pid: b"PID",
            fw_type: 3,
            version: 0x0102_0003,
            offset: Some(0),
        };
        let payload = DevicePayload::new(&request).unwrap();
        assert_eq!(
            payload.as_bytes(),
            [3, b'P', b'I', b'D', 3, 3, 0, 2, 1, 0, 0, 0, 0]
        );
        let long = [b'x'; 255];
        let longest = DeviceRequest {
            pid: &long,
            ..request
        };
        assert_eq!(
            DevicePayload::new(&longest).unwrap().as_bytes().len(),
            iot_ota::firmware::MAX_PAYLOAD_LEN
        );
        assert!(DevicePayload::new(&DeviceRequest {
            pid: b"",
            ..request
        })
        .is_none());
    }
}
