//! A device's report, `POST /updates/report`, in its two forms: the query
//! (`?ep=NAME&pid=P&type=T&version=RUNNING&target=V&state=S&result=R`, empty
//! payload) and a CBOR map (Content-Format 60) with the same fields, long or
//! short keys. `state` and `result` are LwM2M Object 5's (Firmware Update,
//! resources 3 and 5).
//!
//! Pure functions over borrowed bytes: no allocation, no I/O.

use super::cbor::{self, CborError, Item};
use super::DeviceName;
use crate::firmware::{parse_type, parse_version, query_pairs, valid_pid};
use core::fmt;

/// Highest LwM2M Firmware Update state: 3, updating.
pub const MAX_STATE: u8 = 3;
/// Highest LwM2M Firmware Update result: 11, deferred.
pub const MAX_RESULT: u8 = 11;

/// The fields of a report; which ones are required is up to the caller
/// (at least `state` or `result`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report<'a> {
    /// `ep` / `e`: the device's name.
    pub ep: Option<DeviceName>,
    /// `pid` / `p`.
    pub pid: Option<&'a [u8]>,
    /// `type` / `y`: `APP` or 0..255.
    pub fw_type: Option<u8>,
    /// `version` / `v`: the version the device runs.
    pub version: Option<u32>,
    /// `target` / `t`: the version it is updating to.
    pub target: Option<u32>,
    /// `state` / `s`: LwM2M state, 0 idle, 1 downloading, 2 downloaded,
    /// 3 updating.
    pub state: Option<u8>,
    /// `result` / `r`: LwM2M result, 0 initial, 1 success, 2 to 9 failure
    /// reasons, 10 cancelled, 11 deferred.
    pub result: Option<u8>,
}

/// Why a report is refused (4.00, with this text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// A field's value is malformed; the field's long name.
    Bad(&'static str),
    /// A field given twice.
    Repeated(&'static str),
    /// A key the report does not have (CBOR; the query ignores unknown
    /// keys, as RFC 7252 lets a resource do).
    UnknownKey,
    /// Neither `state` nor `result`.
    Empty,
    /// The CBOR payload is not a flat map.
    Cbor(CborError),
    /// The query form with a payload.
    PayloadWithoutFormat,
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::Bad("ep") => f.write_str("ep must be 1 to 63 of A-Z a-z 0-9 . _ : -"),
            ReportError::Bad("state") => f.write_str("state must be 0 to 3 (LwM2M)"),
            ReportError::Bad("result") => f.write_str("result must be 0 to 11 (LwM2M)"),
            ReportError::Bad(field) => write!(f, "bad {field}"),
            ReportError::Repeated(field) => write!(f, "{field} given twice"),
            ReportError::UnknownKey => f.write_str(
                "unknown key (ep pid type version target state result, or e p y v t s r)",
            ),
            ReportError::Empty => f.write_str("a report needs state or result"),
            ReportError::Cbor(e) => e.fmt(f),
            ReportError::PayloadWithoutFormat => {
                f.write_str("a report payload must be CBOR (Content-Format 60)")
            }
        }
    }
}

/// The fields, by long name, with their short CBOR keys.
const FIELDS: [(&str, &str); 7] = [
    ("ep", "e"),
    ("pid", "p"),
    ("type", "y"),
    ("version", "v"),
    ("target", "t"),
    ("state", "s"),
    ("result", "r"),
];

/// A field's value as either form gives it.
#[derive(Clone, Copy)]
enum Value<'a> {
    Text(&'a [u8]),
    Uint(u64),
}

impl<'a> Report<'a> {
    /// The query form: one `key=value` per Uri-Query option; other keys
    /// are ignored.
    ///
    /// # Errors
    /// The first bad or repeated field, or [`ReportError::Empty`].
    pub fn from_query(query: &[&'a [u8]]) -> Result<Report<'a>, ReportError> {
        let mut report = Report::default();
        for (key, value) in query_pairs(query) {
            if let Some(index) = FIELDS.iter().position(|(long, _)| long.as_bytes() == key) {
                report.set(index, Value::Text(value))?;
            }
        }
        report.check()
    }

    /// The CBOR form: a map with text keys, long (`"state"`) or short
    /// (`"s"`); numbers as unsigned integers or text, versions also as
    /// `"M.m.b"`.
    ///
    /// # Errors
    /// A malformed map, an unknown key, a bad or repeated field, or
    /// [`ReportError::Empty`].
    pub fn from_cbor(payload: &'a [u8]) -> Result<Report<'a>, ReportError> {
        let map = cbor::decode_map(payload).map_err(ReportError::Cbor)?;
        let mut report = Report::default();
        for &(key, value) in map.entries() {
            let Item::Text(key) = key else {
                return Err(ReportError::UnknownKey);
            };
            let index = FIELDS
                .iter()
                .position(|&(long, short)| key == long || key == short)
                .ok_or(ReportError::UnknownKey)?;
            let value = match value {
                Item::Text(text) => Value::Text(text.as_bytes()),
                Item::Bytes(bytes) => Value::Text(bytes),
                Item::Uint(n) => Value::Uint(n),
            };
            report.set(index, value)?;
        }
        report.check()
    }

    fn set(&mut self, index: usize, value: Value<'a>) -> Result<(), ReportError> {
        let (field, _) = FIELDS.get(index).copied().unwrap_or(("?", "?"));
        let bad = ReportError::Bad(field);
        let small = |max: u8| match value {
            Value::Uint(n) => u8::try_from(n).ok().filter(|&n| n <= max),
            Value::Text(t) => crate::firmware::parse_decimal_field(t, u32::from(max))
                .and_then(|n| u8::try_from(n).ok()),
        };
        let version = || match value {
            Value::Uint(n) => u32::try_from(n).ok(),
            Value::Text(t) => parse_version(t),
        };
        let repeated = match index {
            0 => {
                let Value::Text(t) = value else {
                    return Err(bad);
                };
                self.ep.replace(DeviceName::parse(t).ok_or(bad)?).is_some()
            }
            1 => {
                let Value::Text(t) = value else {
                    return Err(bad);
                };
                if !valid_pid(t) {
                    return Err(bad);
                }
                self.pid.replace(t).is_some()
            }
            2 => {
                let fw_type = match value {
                    Value::Uint(n) => u8::try_from(n).ok(),
                    Value::Text(t) => parse_type(t),
                };
                self.fw_type.replace(fw_type.ok_or(bad)?).is_some()
            }
            3 => self.version.replace(version().ok_or(bad)?).is_some(),
            4 => self.target.replace(version().ok_or(bad)?).is_some(),
            5 => self.state.replace(small(MAX_STATE).ok_or(bad)?).is_some(),
            _ => self.result.replace(small(MAX_RESULT).ok_or(bad)?).is_some(),
        };
        if repeated {
            return Err(ReportError::Repeated(field));
        }
        Ok(())
    }

    fn check(self) -> Result<Report<'a>, ReportError> {
        if self.state.is_none() && self.result.is_none() {
            return Err(ReportError::Empty);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_form() {
        let q: [&[u8]; 6] = [
            b"ep=d1",
            b"pid=OTA-X",
            b"type=APP",
            b"version=1.0.1",
            b"target=1.0.2",
            b"result=8",
        ];
        let r = Report::from_query(&q).unwrap();
        assert_eq!(r.ep, DeviceName::parse(b"d1"));
        assert_eq!(r.pid, Some(&b"OTA-X"[..]));
        assert_eq!(r.fw_type, Some(3));
        assert_eq!(r.version, Some(0x0100_0001));
        assert_eq!(r.target, Some(0x0100_0002));
        assert_eq!((r.state, r.result), (None, Some(8)));
    }

    #[test]
    fn query_errors() {
        let cases: [(&[&[u8]], ReportError); 5] = [
            (&[b"state=4"], ReportError::Bad("state")),
            (&[b"result=12"], ReportError::Bad("result")),
            (&[b"ep=a/b", b"state=1"], ReportError::Bad("ep")),
            (&[b"state=1", b"state=2"], ReportError::Repeated("state")),
            (&[b"ep=d1"], ReportError::Empty),
        ];
        for (q, e) in cases {
            assert_eq!(Report::from_query(q).unwrap_err(), e);
        }
    }

    #[test]
    fn cbor_form_with_short_keys() {
        // {"e": "d2", "s": 2, "r": 1, "v": 0x01000002}
        let bytes = [
            0xa4, 0x61, b'e', 0x62, b'd', b'2', 0x61, b's', 0x02, 0x61, b'r', 0x01, 0x61, b'v',
            0x1a, 0x01, 0x00, 0x00, 0x02,
        ];
        let r = Report::from_cbor(&bytes).unwrap();
        assert_eq!(r.ep, DeviceName::parse(b"d2"));
        assert_eq!(
            (r.state, r.result, r.version),
            (Some(2), Some(1), Some(0x0100_0002))
        );
    }

    #[test]
    fn cbor_unknown_key_is_refused() {
        // {"x": 1}
        assert_eq!(
            Report::from_cbor(&[0xa1, 0x61, b'x', 0x01]).unwrap_err(),
            ReportError::UnknownKey
        );
        assert!(matches!(
            Report::from_cbor(&[0x01]).unwrap_err(),
            ReportError::Cbor(CborError::NotAMap)
        ));
    }
}
