//! The rollout policy of one image: the text of `<image>.rollout`, parsed,
//! and the eligibility rule (a stable hash of device name and image).
//!
//! A pure parser over the file's bytes: no I/O, no log. An error names the
//! line, so the operator's log line can point at it.

use super::DeviceName;
use crate::hash::fnv1a64_concat;
use core::fmt;

/// The suffix that makes a file the policy of the image it is named after.
pub const POLICY_SUFFIX: &str = ".rollout";
/// Most canaries one policy names; more is an error (the list is searched
/// per lookup).
pub const MAX_CANARIES: usize = 256;
/// The eligible share is kept in hundredths of a percent: `percent = 0.5`
/// is 50 of 10,000.
pub const SHARE_SCALE: u32 = 10_000;

/// A parsed `.rollout` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Eligible share in hundredths of a percent, 0..=10,000 (default
    /// 10,000: everyone).
    pub share: u32,
    /// Names always eligible (unless paused).
    pub canaries: Vec<DeviceName>,
    /// `pause = yes`: no new device is offered the image.
    pub pause: bool,
    /// Failure share, in percent, that pauses the rollout by itself
    /// (default 30).
    pub max_failures: u32,
    /// Outcomes needed before the failure share is judged (default 5).
    pub min_outcomes: u32,
    /// FNV-1a 64 of the file's bytes: the rollout's generation. Editing the
    /// file changes it, which resumes an automatic pause and starts a new
    /// count of outcomes.
    pub generation: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            share: SHARE_SCALE,
            canaries: Vec::new(),
            pause: false,
            max_failures: 30,
            min_outcomes: 5,
            generation: 0,
        }
    }
}

/// Why a policy file was refused, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The line at fault.
    pub line: usize,
    /// What is wrong with it.
    pub what: PolicyProblem,
}

/// What is wrong with a policy line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyProblem {
    /// Not `key = value`.
    NotKeyValue,
    /// A key this server does not know (the text, cut at 32 bytes).
    UnknownKey(String),
    /// A key given twice.
    Repeated(&'static str),
    /// `percent` not a number in 0..100 with at most two decimals.
    BadPercent,
    /// `pause` neither `yes` nor `no`.
    BadPause,
    /// `max-failures` not `N%` with N in 0..100.
    BadMaxFailures,
    /// `min-outcomes` not a number in 1..1,000,000.
    BadMinOutcomes,
    /// A canary name outside `[A-Za-z0-9._:-]{1,63}`, or more than
    /// [`MAX_CANARIES`].
    BadCanary,
    /// The file is not UTF-8.
    NotUtf8,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.what {
            PolicyProblem::NotKeyValue => f.write_str("expected key = value"),
            PolicyProblem::UnknownKey(key) => write!(
                f,
                "unknown key {key:?} (known: percent, canary, pause, max-failures, min-outcomes)"
            ),
            PolicyProblem::Repeated(key) => write!(f, "{key} given twice"),
            PolicyProblem::BadPercent => {
                f.write_str("percent must be 0 to 100, at most two decimals")
            }
            PolicyProblem::BadPause => f.write_str("pause must be yes or no"),
            PolicyProblem::BadMaxFailures => f.write_str("max-failures must be N% with N 0 to 100"),
            PolicyProblem::BadMinOutcomes => f.write_str("min-outcomes must be 1 to 1000000"),
            PolicyProblem::BadCanary => write!(
                f,
                "canary names are 1 to 63 characters of A-Z a-z 0-9 . _ : -, at most \
                 {MAX_CANARIES}"
            ),
            PolicyProblem::NotUtf8 => f.write_str("the file is not UTF-8 text"),
        }
    }
}

impl Policy {
    /// Parses the text of a `.rollout` file: `key = value` lines, `#`
    /// comments (whole lines or after a value), blank lines. `canary` may
    /// be given on several lines; every other key once.
    ///
    /// # Errors
    /// The first line at fault.
    pub fn parse(text: &[u8]) -> Result<Policy, PolicyError> {
        let mut policy = Policy {
            generation: crate::hash::fnv1a64(text),
            ..Policy::default()
        };
        let text = core::str::from_utf8(text).map_err(|_| PolicyError {
            line: 1,
            what: PolicyProblem::NotUtf8,
        })?;
        let mut seen = [false; 4];
        for (index, raw) in text.lines().enumerate() {
            let fail = |what| PolicyError {
                line: index + 1,
                what,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or(fail(PolicyProblem::NotKeyValue))?;
            let (key, value) = (key.trim(), value.trim());
            let slot = match key {
                "percent" => 0,
                "pause" => 1,
                "max-failures" => 2,
                "min-outcomes" => 3,
                "canary" => 4,
                _ => {
                    let shown: String = key.chars().take(32).collect();
                    return Err(fail(PolicyProblem::UnknownKey(shown)));
                }
            };
            if let Some(seen) = seen.get_mut(slot) {
                if *seen {
                    const KEYS: [&str; 4] = ["percent", "pause", "max-failures", "min-outcomes"];
                    let key = KEYS.get(slot).copied().unwrap_or("a key");
                    return Err(fail(PolicyProblem::Repeated(key)));
                }
                *seen = true;
            }
            match slot {
                0 => policy.share = parse_share(value).ok_or(fail(PolicyProblem::BadPercent))?,
                1 => {
                    policy.pause = match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(fail(PolicyProblem::BadPause)),
                    }
                }
                2 => {
                    policy.max_failures = value
                        .strip_suffix('%')
                        .and_then(|n| n.trim().parse::<u32>().ok())
                        .filter(|&n| n <= 100)
                        .ok_or(fail(PolicyProblem::BadMaxFailures))?
                }
                3 => {
                    policy.min_outcomes = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1_000_000).contains(n))
                        .ok_or(fail(PolicyProblem::BadMinOutcomes))?
                }
                _ => {
                    for name in value.split_whitespace() {
                        let name = DeviceName::parse(name.as_bytes())
                            .filter(|_| policy.canaries.len() < MAX_CANARIES)
                            .ok_or(fail(PolicyProblem::BadCanary))?;
                        policy.canaries.push(name);
                    }
                }
            }
        }
        Ok(policy)
    }

    /// Whether the hash of (`name`, `image_file`) falls within the share:
    /// the same answer in every process and after every restart, and a
    /// larger share only adds devices.
    pub fn in_share(&self, name: &DeviceName, image_file: &str) -> bool {
        bucket(name, image_file) < self.share
    }

    /// Whether `name` is one of the canaries.
    pub fn is_canary(&self, name: &DeviceName) -> bool {
        self.canaries.contains(name)
    }
}

/// Where (`name`, `image_file`) falls in 0..[`SHARE_SCALE`]: FNV-1a 64 over
/// the name, a NUL and the image's file name, mixed by the MurmurHash3
/// finalizer (so that names differing in their last character spread
/// evenly), modulo 10,000.
pub fn bucket(name: &DeviceName, image_file: &str) -> u32 {
    let mut h = fnv1a64_concat([name.as_bytes(), b"\0", image_file.as_bytes()]);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(SHARE_SCALE)) as u32
}

/// `10`, `12.5`, `0.25` → hundredths of a percent.
fn parse_share(value: &str) -> Option<u32> {
    let value = value.strip_suffix('%').unwrap_or(value).trim();
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if whole.is_empty() || fraction.len() > 2 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u32 = whole.parse().ok().filter(|&w| w <= 100)?;
    let mut hundredths = 0u32;
    for (i, digit) in fraction.bytes().enumerate() {
        hundredths += u32::from(digit - b'0') * if i == 0 { 10 } else { 1 };
    }
    let share = whole * 100 + hundredths;
    (share <= SHARE_SCALE).then_some(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> DeviceName {
        DeviceName::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn parses_every_key() {
        let p = Policy::parse(
            b"# staged\npercent = 12.5\ncanary = a b\ncanary = c # lab\npause = no\n\
              max-failures = 20%\nmin-outcomes = 3\n",
        )
        .unwrap();
        assert_eq!(p.share, 1250);
        assert_eq!(p.canaries, vec![name("a"), name("b"), name("c")]);
        assert!(!p.pause);
        assert_eq!((p.max_failures, p.min_outcomes), (20, 3));
        assert_ne!(p.generation, 0);
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let p = Policy::parse(b"").unwrap();
        assert_eq!(
            (p.share, p.pause, p.max_failures, p.min_outcomes),
            (10_000, false, 30, 5)
        );
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let e = Policy::parse(b"percent = 10\n\nprecent = 20\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.what, PolicyProblem::UnknownKey("precent".into()));
        assert!(e.to_string().starts_with("line 3: unknown key"));
    }

    #[test]
    fn bad_values_are_refused() {
        for (text, what) in [
            (&b"percent = 101"[..], PolicyProblem::BadPercent),
            (b"percent = 1.234", PolicyProblem::BadPercent),
            (b"percent = -1", PolicyProblem::BadPercent),
            (b"pause = maybe", PolicyProblem::BadPause),
            (b"max-failures = 30", PolicyProblem::BadMaxFailures),
            (b"min-outcomes = 0", PolicyProblem::BadMinOutcomes),
            (b"canary = a/b", PolicyProblem::BadCanary),
            (b"percent", PolicyProblem::NotKeyValue),
            (b"pause = no\npause = yes", PolicyProblem::Repeated("pause")),
        ] {
            assert_eq!(Policy::parse(text).unwrap_err().what, what, "{text:?}");
        }
    }

    #[test]
    fn share_is_stable_and_monotonic() {
        let ten = Policy::parse(b"percent = 10").unwrap();
        let fifty = Policy::parse(b"percent = 50").unwrap();
        let image = "OTA-DEMO-MOTE_1_0_2_APP.fmu";
        let mut in_ten = 0;
        for i in 1..=1000 {
            let n = name(&format!("d{i}"));
            if ten.in_share(&n, image) {
                in_ten += 1;
                assert!(fifty.in_share(&n, image));
            }
        }
        assert!((70..=130).contains(&in_ten), "{in_ten}");
        assert_eq!(bucket(&name("d1"), image), bucket(&name("d1"), image));
    }
}
