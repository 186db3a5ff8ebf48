//! The image file name grammar, `PID_MAJOR_MINOR_BUILD_TYPE[_CRC].fmu`: parsing a name into
//! its fields, and why a name is refused.
//!
//! Pure functions over bytes: this module never touches a file, a clock or the logger.

use std::fmt;

use crate::firmware::{parse_decimal_field, parse_fw_type, valid_pid, version};

/// Every image file name ends with this suffix (case-sensitive).
pub(crate) const IMAGE_SUFFIX: &str = ".fmu";

const CRC_PREFIX: &[u8] = b"0x";
const CRC_DIGITS: usize = 8;

/// The fields of an image file name `PID_MAJOR_MINOR_BUILD_TYPE[_CRC].fmu`
/// (README, "The catalog").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// Product id, 1 to 255 printable ASCII bytes without `_` or `/`, matched byte for byte
    /// against the PID a device sends.
    pub pid: Vec<u8>,
    /// Firmware type: [`TYPE_APP`](crate::firmware::TYPE_APP) for `APP`, else the decimal number of the name.
    pub fw_type: u8,
    /// MAJOR field, the top byte of the version.
    pub major: u8,
    /// MINOR field, the second byte of the version.
    pub minor: u8,
    /// BUILD field, the low 16 bits of the version.
    pub build: u16,
    /// The optional CRC field; informational only (logged, never checked against the content).
    pub crc: Option<u32>,
}

impl ImageName {
    /// The version devices compare, see [`version`].
    pub fn version(&self) -> u32 {
        version(self.major, self.minor, self.build)
    }
}

/// The field of an image file name that does not follow the name grammar.
///
/// Its `Display` text names the field and the rule, so that the operator can fix the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The name does not end in `.fmu`.
    Extension,
    /// Not 5 or 6 `_`-separated fields before `.fmu`.
    FieldCount,
    /// PID empty, longer than 255 bytes, or with a byte that is not printable ASCII or is `/`.
    Pid,
    /// MAJOR is not a decimal 0..=255.
    Major,
    /// MINOR is not a decimal 0..=255.
    Minor,
    /// BUILD is not a decimal 0..=65535.
    Build,
    /// TYPE is neither `APP` nor a decimal 0..=255.
    Type,
    /// CRC is not `0x` followed by exactly 8 hex digits.
    Crc,
}

impl NameError {
    /// The static text of [`Display`](fmt::Display), for callers that want a `&str`.
    pub fn as_str(self) -> &'static str {
        match self {
            NameError::Extension => "the name must end in .fmu",
            NameError::FieldCount => {
                "the name must be PID_MAJOR_MINOR_BUILD_TYPE[_CRC].fmu, 5 or 6 fields split by _"
            }
            NameError::Pid => "PID must be 1 to 255 printable ASCII characters without _ or /",
            NameError::Major => "MAJOR must be a decimal 0..=255",
            NameError::Minor => "MINOR must be a decimal 0..=255",
            NameError::Build => "BUILD must be a decimal 0..=65535",
            NameError::Type => "TYPE must be APP or a decimal 0..=255",
            NameError::Crc => "CRC must be 0x followed by exactly 8 hex digits",
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for NameError {}

fn parse_crc(field: &[u8]) -> Option<u32> {
    let digits = field.strip_prefix(CRC_PREFIX)?;
    if digits.len() != CRC_DIGITS || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc << 4 | u32::from(hex_value(b)?)))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses an image file name `PID_MAJOR_MINOR_BUILD_TYPE[_CRC].fmu`, e.g.
/// `OTA-STM32L1-SPIRIT1_1_1_31_APP_0xF63D0305.fmu`.
///
/// The PID may contain spaces (printable ASCII is 0x20..=0x7E) but not `_`, which separates
/// fields, nor `/`. The suffix `.fmu` is case-sensitive; so is `APP`. The CRC prefix is `0x`
/// in lower case; its 8 digits may be in either case.
///
/// # Errors
///
/// The first field, from left to right, that breaks the grammar: [`NameError::Extension`]
/// without `.fmu`, [`NameError::FieldCount`] unless there are 5 or 6 fields, then
/// [`NameError::Pid`], [`NameError::Major`], [`NameError::Minor`], [`NameError::Build`],
/// [`NameError::Type`] and [`NameError::Crc`] in that order. Never panics, whatever the input.
pub(crate) fn parse_image_name(name: &str) -> Result<ImageName, NameError> {
    let stem = name
        .strip_suffix(IMAGE_SUFFIX)
        .ok_or(NameError::Extension)?;
    let mut fields: [&[u8]; 6] = [&[]; 6];
    let mut count = 0;
    for field in stem.as_bytes().split(|&b| b == b'_') {
        match fields.get_mut(count) {
            Some(slot) => *slot = field,
            None => return Err(NameError::FieldCount),
        }
        count += 1;
    }
    if count < 5 {
        return Err(NameError::FieldCount);
    }
    let [pid, major, minor, build, fw_type, crc] = fields;
    if !valid_pid(pid) {
        return Err(NameError::Pid);
    }
    let major = parse_decimal_field(major, 255)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or(NameError::Major)?;
    let minor = parse_decimal_field(minor, 255)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or(NameError::Minor)?;
    let build = parse_decimal_field(build, 65535)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or(NameError::Build)?;
    let fw_type = parse_fw_type(fw_type).ok_or(NameError::Type)?;
    let crc = if count == 6 {
        Some(parse_crc(crc).ok_or(NameError::Crc)?)
    } else {
        None
    };
    Ok(ImageName {
        pid: pid.to_vec(),
        fw_type,
        major,
        minor,
        build,
        crc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::TYPE_APP;

    fn name(pid: &str, major: u8, minor: u8, build: u16, fw_type: u8) -> ImageName {
        ImageName {
            pid: pid.as_bytes().to_vec(),
            fw_type,
            major,
            minor,
            build,
            crc: None,
        }
    }

    // ---- file-name grammar ----

    #[test]
    fn name_with_crc_parses() {
        let parsed = parse_image_name("OTA-STM32L1-SPIRIT1_1_1_31_APP_0xF63D0305.fmu").unwrap();
        assert_eq!(
            parsed,
            ImageName {
                crc: Some(0xF63D_0305),
                ..name("OTA-STM32L1-SPIRIT1", 1, 1, 31, TYPE_APP)
            }
        );
        assert_eq!(parsed.version(), 0x0101_001F);
    }

    #[test]
    fn name_without_crc_parses() {
        assert_eq!(
            parse_image_name("OTA-DEMO_2_0_7_APP.fmu"),
            Ok(name("OTA-DEMO", 2, 0, 7, TYPE_APP))
        );
    }

    #[test]
    fn crc_digits_may_be_lower_case() {
        assert_eq!(
            parse_image_name("P_1_1_1_APP_0xdeadbeef.fmu").map(|n| n.crc),
            Ok(Some(0xdead_beef))
        );
    }

    #[test]
    fn type_may_be_a_decimal_number() {
        assert_eq!(parse_image_name("P_1_2_3_7.fmu").map(|n| n.fw_type), Ok(7));
        assert_eq!(
            parse_image_name("P_1_2_3_255.fmu").map(|n| n.fw_type),
            Ok(255)
        );
        assert_eq!(
            parse_image_name("P_1_2_3_3.fmu"),
            parse_image_name("P_1_2_3_APP.fmu")
        );
    }

    #[test]
    fn leading_zeros_are_accepted() {
        assert_eq!(
            parse_image_name("P_001_0002_00000000031_003.fmu"),
            Ok(name("P", 1, 2, 31, TYPE_APP))
        );
    }

    #[test]
    fn pid_may_hold_any_printable_ascii_but_underscore_and_slash() {
        assert_eq!(
            parse_image_name("My Mote (v2)!_1_0_0_APP.fmu").map(|n| n.pid),
            Ok(b"My Mote (v2)!".to_vec())
        );
        let longest = "A".repeat(255);
        assert!(parse_image_name(&format!("{longest}_1_0_0_APP.fmu")).is_ok());
    }

    #[test]
    fn empty_pid_is_rejected() {
        assert_eq!(parse_image_name("_1_1_31_APP.fmu"), Err(NameError::Pid));
    }

    #[test]
    fn pid_with_slash_is_rejected() {
        assert_eq!(parse_image_name("a/b_1_1_31_APP.fmu"), Err(NameError::Pid));
    }

    #[test]
    fn pid_of_256_chars_is_rejected() {
        let pid = "A".repeat(256);
        assert_eq!(
            parse_image_name(&format!("{pid}_1_1_31_APP.fmu")),
            Err(NameError::Pid)
        );
    }

    #[test]
    fn pid_with_control_or_non_ascii_is_rejected() {
        assert_eq!(parse_image_name("a\tb_1_1_31_APP.fmu"), Err(NameError::Pid));
        assert_eq!(parse_image_name("é_1_1_31_APP.fmu"), Err(NameError::Pid));
    }

    #[test]
    fn major_256_is_rejected() {
        assert_eq!(
            parse_image_name("P_256_1_31_APP.fmu"),
            Err(NameError::Major)
        );
    }

    #[test]
    fn signed_or_empty_numbers_are_rejected() {
        assert_eq!(parse_image_name("P_+1_1_31_APP.fmu"), Err(NameError::Major));
        assert_eq!(parse_image_name("P_1__31_APP.fmu"), Err(NameError::Minor));
        assert_eq!(parse_image_name("P_1_1_-31_APP.fmu"), Err(NameError::Build));
        // Overflows u32 while accumulating: still an error, not a panic.
        assert_eq!(
            parse_image_name("P_99999999999999999999_1_31_APP.fmu"),
            Err(NameError::Major)
        );
    }

    #[test]
    fn minor_not_decimal_is_rejected() {
        assert_eq!(parse_image_name("P_1_x_31_APP.fmu"), Err(NameError::Minor));
    }

    #[test]
    fn build_65536_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_65536_APP.fmu"),
            Err(NameError::Build)
        );
        assert!(parse_image_name("P_1_1_65535_APP.fmu").is_ok());
    }

    #[test]
    fn type_appx_is_rejected() {
        assert_eq!(parse_image_name("P_1_1_31_APPX.fmu"), Err(NameError::Type));
        assert_eq!(parse_image_name("P_1_1_31_app.fmu"), Err(NameError::Type));
        assert_eq!(parse_image_name("P_1_1_31_256.fmu"), Err(NameError::Type));
    }

    #[test]
    fn crc_with_3_digits_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0x123.fmu"),
            Err(NameError::Crc)
        );
    }

    #[test]
    fn crc_with_9_digits_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0x123456789.fmu"),
            Err(NameError::Crc)
        );
    }

    #[test]
    fn crc_without_0x_or_with_non_hex_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP_F63D0305.fmu"),
            Err(NameError::Crc)
        );
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0xF63D030G.fmu"),
            Err(NameError::Crc)
        );
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0x+63D0305.fmu"),
            Err(NameError::Crc)
        );
    }

    #[test]
    fn four_fields_is_field_count() {
        assert_eq!(parse_image_name("P_1_1_31.fmu"), Err(NameError::FieldCount));
    }

    #[test]
    fn seven_fields_is_field_count() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP_0xF63D0305_x.fmu"),
            Err(NameError::FieldCount)
        );
    }

    #[test]
    fn other_extension_is_rejected() {
        assert_eq!(
            parse_image_name("P_1_1_31_APP.bin"),
            Err(NameError::Extension)
        );
        assert_eq!(
            parse_image_name("P_1_1_31_APP.FMU"),
            Err(NameError::Extension)
        );
        assert_eq!(parse_image_name(""), Err(NameError::Extension));
        assert_eq!(parse_image_name(".fmu"), Err(NameError::FieldCount));
    }

    #[test]
    fn name_error_text_names_the_field() {
        assert_eq!(
            NameError::Major.to_string(),
            "MAJOR must be a decimal 0..=255"
        );
        assert!(NameError::Crc.to_string().starts_with("CRC"));
    }
}
