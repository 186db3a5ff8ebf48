//! What a device asks `/updates` for: the binary payload
//! of deployed devices and the query form for stock CoAP clients.
//!
//! Pure functions over borrowed bytes: no I/O, no allocation.

use core::fmt;

/// The TYPE number of an application image, written `APP` in file names and queries.
pub const TYPE_APP: u8 = 3;

/// `APP` as a file name writes it (exactly, upper case).
const TYPE_APP_NAME: &[u8] = b"APP";

/// Longest PID in bytes: devices send the PID behind a one-byte length.
pub(crate) const MAX_PID_LEN: usize = 255;

/// Longest device payload: PIDLEN, a 255-byte PID, TYPE, VERSION, OFFSET.
pub const MAX_PAYLOAD_LEN: usize = 1 + MAX_PID_LEN + 1 + 4 + 4;

/// The version number devices compare: `major << 24 | minor << 16 | build`, exactly as the
/// reference server computes it, so `(1, 1, 31)` is `0x0101_001F`.
pub const fn version(major: u8, minor: u8, build: u16) -> u32 {
    (major as u32) << 24 | (minor as u32) << 16 | build as u32
}

/// Formats a version u32 as "M.m.b" (`0x0101_001F` is written `1.1.31`), the form used in
/// file names, queries and log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionText(pub u32);

impl fmt::Display for VersionText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(f, "{}.{}.{}", v >> 24, (v >> 16) & 0xff, v & 0xffff)
    }
}

/// Parses a decimal field: ASCII digits only (no sign, not empty, leading zeros allowed),
/// at most `max`.
pub(crate) fn parse_decimal_field(field: &[u8], max: u32) -> Option<u32> {
    if field.is_empty() {
        return None;
    }
    let mut value: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
    }
    (value <= max).then_some(value)
}

/// Parses a TYPE as it appears in a file name: `APP` (exactly, upper case) is
/// [`TYPE_APP`], else a decimal 0..=255. `None` for anything else.
pub(crate) fn parse_fw_type(field: &[u8]) -> Option<u8> {
    if field == TYPE_APP_NAME {
        return Some(TYPE_APP);
    }
    parse_decimal_field(field, u32::from(u8::MAX)).and_then(|v| u8::try_from(v).ok())
}

/// A PID as file names and device payloads carry it: 1 to 255 printable
/// ASCII bytes without `_` (the name's field separator) or `/`.
pub(crate) fn valid_pid(pid: &[u8]) -> bool {
    (1..=MAX_PID_LEN).contains(&pid.len())
        && pid
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b'_' && b != b'/')
}

/// A device's question: "is there something newer than `version` for my
/// `pid` and `fw_type`?", and for the legacy form where to start sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRequest<'a> {
    /// Product id, matched byte for byte against the catalog.
    pub pid: &'a [u8],
    /// Firmware type (3 = APP).
    pub fw_type: u8,
    /// The version the device runs, `MAJOR << 24 | MINOR << 16 | BUILD`.
    pub version: u32,
    /// Present in the legacy one-request form: the body starts there.
    pub offset: Option<u32>,
}

/// Why a `/updates` payload is not a device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadError {
    /// PIDLEN is 0.
    EmptyPid,
    /// The payload is neither `PIDLEN + 6` nor `PIDLEN + 10` bytes long.
    Length {
        /// PIDLEN from the first byte.
        pid_len: u8,
        /// The payload's length.
        got: usize,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PayloadError::EmptyPid => f.write_str("PIDLEN is 0"),
            PayloadError::Length { pid_len, got } => write!(
                f,
                "payload is {got} bytes; PIDLEN {pid_len} needs {} (lookup) or {} (with OFFSET)",
                usize::from(pid_len) + 6,
                usize::from(pid_len) + 10
            ),
        }
    }
}

/// Parses `PIDLEN:u8 | PID | TYPE:u8 | VERSION:u32le [| OFFSET:u32le]`.
///
/// # Errors
/// [`PayloadError`] for any other shape; the caller answers 4.00 with its
/// text.
pub(crate) fn parse_payload(payload: &[u8]) -> Result<DeviceRequest<'_>, PayloadError> {
    let Some((&pid_len, rest)) = payload.split_first() else {
        return Err(PayloadError::Length { pid_len: 0, got: 0 });
    };
    if pid_len == 0 {
        return Err(PayloadError::EmptyPid);
    }
    let length_error = PayloadError::Length {
        pid_len,
        got: payload.len(),
    };
    let (pid, rest) = rest
        .split_at_checked(usize::from(pid_len))
        .ok_or(length_error)?;
    let (&fw_type, rest) = rest.split_first().ok_or(length_error)?;
    let (version, rest) = rest.split_first_chunk::<4>().ok_or(length_error)?;
    let offset = match rest.len() {
        0 => None,
        4 => rest.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)),
        _ => return Err(length_error),
    };
    Ok(DeviceRequest {
        pid,
        fw_type,
        version: u32::from_le_bytes(*version),
        offset,
    })
}

/// Writes the device payload for `request` into `out` and returns its
/// length, or `None` when `out` is too small or the PID is empty or longer
/// than 255 bytes. The inverse of the server's payload parser, for clients and tests.
pub fn write_payload(request: &DeviceRequest<'_>, out: &mut [u8]) -> Option<usize> {
    let pid_len = u8::try_from(request.pid.len()).ok().filter(|&n| n > 0)?;
    let mut len = 0;
    let mut put = |bytes: &[u8]| -> Option<()> {
        let end = len + bytes.len();
        out.get_mut(len..end)?.copy_from_slice(bytes);
        len = end;
        Some(())
    };
    put(&[pid_len])?;
    put(request.pid)?;
    put(&[request.fw_type])?;
    put(&request.version.to_le_bytes())?;
    if let Some(offset) = request.offset {
        put(&offset.to_le_bytes())?;
    }
    Some(len)
}

/// Why a `/updates?…` query is not a device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryError {
    /// No `pid=`, or an empty one.
    MissingPid,
    /// No `type=`.
    MissingType,
    /// No `version=`.
    MissingVersion,
    /// `type=` is neither `APP` nor a decimal 0..=255.
    BadType,
    /// `version=` is neither `M.m.b` nor a decimal or `0x` hex u32.
    BadVersion,
    /// A key given twice.
    Repeated,
    /// `offset=` is not a decimal u32.
    BadOffset,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryError::MissingPid => "query needs pid=PID",
            QueryError::MissingType => "query needs type=APP or type=0..255",
            QueryError::MissingVersion => "query needs version=M.m.b",
            QueryError::BadType => "type must be APP or a decimal 0..255",
            QueryError::BadVersion => {
                "version must be M.m.b (0..255.0..255.0..65535) or a u32, decimal or 0x hex"
            }
            QueryError::Repeated => "pid, type, version and offset may each appear once",
            QueryError::BadOffset => "offset must be a decimal 0..4294967295",
        })
    }
}

/// The `key=value` pairs of Uri-Query values, split at the first `=`;
/// values without one are left out.
pub(crate) fn query_pairs<'q, 'a>(
    query: &'q [&'a [u8]],
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'q {
    query.iter().filter_map(|&pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        Some((pair.get(..eq)?, pair.get(eq + 1..)?))
    })
}

/// Parses the query form `pid=P&type=APP&version=1.1.2`, one Uri-Query
/// option per pair. Keys other than these three are ignored, as RFC 7252
/// lets a resource do.
///
/// # Errors
/// [`QueryError`] naming the missing or malformed key.
pub(crate) fn parse_query<'a>(query: &[&'a [u8]]) -> Result<DeviceRequest<'a>, QueryError> {
    let (mut pid, mut fw_type, mut version) = (None, None, None);
    for (key, value) in query_pairs(query) {
        let slot_was_set = match key {
            b"pid" => pid.replace(value).is_some(),
            b"type" => fw_type
                .replace(parse_type(value).ok_or(QueryError::BadType)?)
                .is_some(),
            b"version" => version
                .replace(parse_version(value).ok_or(QueryError::BadVersion)?)
                .is_some(),
            _ => false,
        };
        if slot_was_set {
            return Err(QueryError::Repeated);
        }
    }
    let pid = pid
        .filter(|p| !p.is_empty() && p.len() <= 255)
        .ok_or(QueryError::MissingPid)?;
    Ok(DeviceRequest {
        pid,
        fw_type: fw_type.ok_or(QueryError::MissingType)?,
        version: version.ok_or(QueryError::MissingVersion)?,
        offset: None,
    })
}

/// The `offset=N` value of an `/updates/{id}` query (decimal u32), if
/// any; other keys are ignored.
///
/// # Errors
/// [`QueryError::BadOffset`] or [`QueryError::Repeated`].
pub(crate) fn parse_offset_query(query: &[&[u8]]) -> Result<Option<u32>, QueryError> {
    let mut offset = None;
    for pair in query {
        if let Some(value) = pair.strip_prefix(b"offset=") {
            let parsed = parse_decimal(value).ok_or(QueryError::BadOffset)?;
            if offset.replace(parsed).is_some() {
                return Err(QueryError::Repeated);
            }
        }
    }
    Ok(offset)
}

/// `APP` in any case (a query is typed by people), else as a file name's
/// TYPE field: a decimal 0..=255.
pub fn parse_type(text: &[u8]) -> Option<u8> {
    if text.eq_ignore_ascii_case(b"APP") {
        return Some(TYPE_APP);
    }
    parse_fw_type(text)
}

/// `M.m.b` with decimal fields (0..=255, 0..=255, 0..=65535), or one u32
/// in decimal or `0x` hex, as the catalog computes versions.
pub fn parse_version(text: &[u8]) -> Option<u32> {
    let mut fields = text.split(|&b| b == b'.');
    let first = fields.next()?;
    let Some(minor) = fields.next() else {
        return match first
            .strip_prefix(b"0x")
            .or_else(|| first.strip_prefix(b"0X"))
        {
            Some(hex) => parse_hex(hex),
            None => parse_decimal(first),
        };
    };
    let build = fields.next()?;
    if fields.next().is_some() {
        return None;
    }
    let major = u8::try_from(parse_decimal(first)?).ok()?;
    let minor = u8::try_from(parse_decimal(minor)?).ok()?;
    let build = u16::try_from(parse_decimal(build)?).ok()?;
    Some(version(major, minor, build))
}

/// 1 to 10 decimal digits that fit a u32: the file-name grammar's
/// numbers, bounded in length as a query value is.
fn parse_decimal(text: &[u8]) -> Option<u32> {
    if text.len() > 10 {
        return None;
    }
    parse_decimal_field(text, u32::MAX)
}

/// 1 to 8 hex digits.
fn parse_hex(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 8 {
        return None;
    }
    text.iter().try_fold(0u32, |acc, &b| {
        Some((acc << 4) | char::from(b).to_digit(16)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PIDLEN 4 "MOTE", TYPE 3, VERSION 0x0101001F little-endian.
    const LOOKUP: [u8; 10] = [4, b'M', b'O', b'T', b'E', 3, 0x1F, 0x00, 0x01, 0x01];
    /// The same with OFFSET 1024.
    const LEGACY: [u8; 14] = [
        4, b'M', b'O', b'T', b'E', 3, 0x1F, 0x00, 0x01, 0x01, 0x00, 0x04, 0x00, 0x00,
    ];

    #[test]
    fn lookup_payload_is_pidlen_plus_6() {
        let r = parse_payload(&LOOKUP).unwrap();
        assert_eq!(r.pid, b"MOTE");
        assert_eq!(r.fw_type, 3);
        assert_eq!(r.version, 0x0101_001F);
        assert_eq!(r.offset, None);
    }

    #[test]
    fn legacy_payload_is_pidlen_plus_10_with_le_offset() {
        let r = parse_payload(&LEGACY).unwrap();
        assert_eq!(r.offset, Some(1024));
        assert_eq!(r.version, 0x0101_001F);
    }

    #[test]
    fn write_payload_is_the_inverse_of_parse() {
        let mut out = [0u8; 32];
        for fixture in [&LOOKUP[..], &LEGACY[..]] {
            let r = parse_payload(fixture).unwrap();
            let n = write_payload(&r, &mut out).unwrap();
            assert_eq!(&out[..n], fixture);
        }
        assert_eq!(
            write_payload(&parse_payload(&LEGACY).unwrap(), &mut out[..5]),
            None
        );
    }

    #[test]
    fn any_other_payload_length_is_rejected_with_reason() {
        for len in [0, 1, 5, 9, 11, 12, 13, 15, 20] {
            let mut p = LEGACY.to_vec();
            p.resize(len, 0);
            if !p.is_empty() {
                p[0] = 4;
            }
            let err = parse_payload(&p).unwrap_err();
            assert!(
                matches!(err, PayloadError::Length { got, .. } if got == len),
                "{len}"
            );
        }
        let text = PayloadError::Length { pid_len: 4, got: 9 }.to_string();
        assert!(text.contains("9 bytes") && text.contains("10") && text.contains("14"));
    }

    #[test]
    fn zero_pidlen_is_rejected() {
        assert_eq!(
            parse_payload(&[0, 3, 0, 0, 0, 0]),
            Err(PayloadError::EmptyPid)
        );
    }

    #[test]
    fn query_form_parses_type_by_name_or_number_and_version_forms() {
        let q: [&[u8]; 3] = [b"pid=MOTE", b"type=APP", b"version=1.1.31"];
        let r = parse_query(&q).unwrap();
        assert_eq!(
            (r.pid, r.fw_type, r.version),
            (&b"MOTE"[..], 3, 0x0101_001F)
        );
        let q: [&[u8]; 4] = [b"version=0x0101001F", b"x=1", b"type=3", b"pid=MOTE"];
        assert_eq!(parse_query(&q).unwrap().version, 0x0101_001F);
        let q: [&[u8]; 3] = [b"version=16842783", b"type=7", b"pid=M"];
        let r = parse_query(&q).unwrap();
        assert_eq!((r.fw_type, r.version), (7, 16_842_783));
    }

    #[test]
    fn query_form_names_what_is_missing_or_wrong() {
        let cases: [(&[&[u8]], QueryError); 7] = [
            (&[b"type=APP", b"version=1.0.0"], QueryError::MissingPid),
            (
                &[b"pid=", b"type=APP", b"version=1.0.0"],
                QueryError::MissingPid,
            ),
            (&[b"pid=A", b"version=1.0.0"], QueryError::MissingType),
            (&[b"pid=A", b"type=APP"], QueryError::MissingVersion),
            (
                &[b"pid=A", b"type=256", b"version=1.0.0"],
                QueryError::BadType,
            ),
            (
                &[b"pid=A", b"type=APP", b"version=1.256.0"],
                QueryError::BadVersion,
            ),
            (
                &[b"pid=A", b"pid=B", b"type=APP", b"version=1.0.0"],
                QueryError::Repeated,
            ),
        ];
        for (query, expected) in cases {
            assert_eq!(parse_query(query), Err(expected));
        }
    }

    #[test]
    fn offset_query_is_a_decimal_u32_given_once() {
        let q: [&[u8]; 2] = [b"x=1", b"offset=1024"];
        assert_eq!(parse_offset_query(&q), Ok(Some(1024)));
        assert_eq!(parse_offset_query(&[]), Ok(None));
        assert_eq!(
            parse_offset_query(&[b"offset=-1"]),
            Err(QueryError::BadOffset)
        );
        assert_eq!(
            parse_offset_query(&[b"offset=4294967296"]),
            Err(QueryError::BadOffset)
        );
        assert_eq!(
            parse_offset_query(&[b"offset=1", b"offset=1"]),
            Err(QueryError::Repeated)
        );
    }

    #[test]
    fn version_text_forms() {
        assert_eq!(parse_version(b"255.255.65535"), Some(u32::MAX));
        assert_eq!(parse_version(b"0xFFFFFFFF"), Some(u32::MAX));
        assert_eq!(parse_version(b"4294967296"), None);
        assert_eq!(parse_version(b"1.2"), None);
        assert_eq!(parse_version(b"1.2.3.4"), None);
        assert_eq!(parse_version(b"1.2.65536"), None);
        assert_eq!(parse_version(b"0x"), None);
        assert_eq!(parse_version(b"-1"), None);
    }
}
