//! Log line timestamps without a date library: RFC 3339 UTC with
//! milliseconds, e.g. `2026-11-27T19:34:51.123Z`.
//!
//! env_logger's own timestamps pull in `jiff` (its `humantime` feature);
//! these few lines do the same job for a router-sized binary.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time shown as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub unix_ms: u64,
}

impl Timestamp {
    /// The current time (a clock before 1970 shows as the epoch).
    pub fn now() -> Timestamp {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp { unix_ms }
    }
}

/// Year, month and day of a count of days since 1970-01-01, by the
/// proleptic Gregorian calendar (the era arithmetic of H. Hinnant's
/// public-domain `civil_from_days`, restated).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.unix_ms / 1000;
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let (year, month, day) = civil_from_days(days);
        let in_day = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            in_day / 3600,
            in_day / 60 % 60,
            in_day % 60,
            self.unix_ms % 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_and_known_dates() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_798_400_091_123, "2026-12-27T19:34:51.123Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ];
        for (unix_ms, text) in cases {
            assert_eq!(Timestamp { unix_ms }.to_string(), text);
        }
    }
}
