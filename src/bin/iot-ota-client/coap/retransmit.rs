//! The RFC 7252 §4.2 retransmission schedule, and the Message IDs, tokens
//! and jitter of an endpoint, from one random source.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Length of the tokens sent.
pub(crate) const TOKEN_LEN: usize = 4;

/// RFC 7252 §4.8 transmission parameters. ACK_RANDOM_FACTOR is fixed at
/// the RFC's 1.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retransmission {
    /// ACK_TIMEOUT: the shortest initial wait for an answer.
    pub(crate) ack_timeout: Duration,
    /// MAX_RETRANSMIT: retransmissions after the first transmission.
    pub(crate) max_retransmit: u32,
}

impl Default for Retransmission {
    /// The RFC's defaults: ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4.
    fn default() -> Self {
        Retransmission {
            ack_timeout: Duration::from_secs(2),
            max_retransmit: 4,
        }
    }
}

impl Retransmission {
    /// The first timeout, in `[ACK_TIMEOUT, ACK_TIMEOUT * 1.5)`, chosen by
    /// `random` spread over the whole `u32` range (RFC 7252 §4.2).
    pub(crate) fn initial_timeout(&self, random: u32) -> Duration {
        let base = self.ack_timeout.as_nanos();
        // base * (1 + 0.5 * random / 2^32)
        let extra = (base * u128::from(random)) >> 33;
        Duration::from_nanos(u64::try_from(base + extra).unwrap_or(u64::MAX))
    }

    /// The waits after each transmission: the initial timeout, doubled
    /// after every retransmission, `MAX_RETRANSMIT + 1` of them. The sum
    /// is at most MAX_TRANSMIT_WAIT (93 s with the defaults).
    pub(crate) fn timeouts(&self, random: u32) -> impl Iterator<Item = Duration> {
        let params = *self;
        (0..=self.max_retransmit).map(move |i| params.timeout(random, i))
    }

    /// The wait after the transmission that follows `retransmissions`
    /// earlier ones: the initial timeout doubled once per retransmission.
    pub(crate) fn timeout(&self, random: u32, retransmissions: u32) -> Duration {
        let doubling = 1u32.checked_shl(retransmissions).unwrap_or(u32::MAX);
        self.initial_timeout(random).saturating_mul(doubling)
    }

    /// MAX_TRANSMIT_WAIT: `ACK_TIMEOUT * (2^(MAX_RETRANSMIT + 1) - 1) *
    /// 1.5`; how long an answer separate from an empty ACK is awaited.
    pub(crate) fn max_transmit_wait(&self) -> Duration {
        let factor = 1u32
            .checked_shl(self.max_retransmit.saturating_add(1))
            .unwrap_or(u32::MAX)
            .saturating_sub(1);
        self.ack_timeout.saturating_mul(factor).saturating_mul(3) / 2
    }
}

/// xorshift64*: Message IDs, tokens and timer jitter. Not cryptographic;
/// enough that clients started together do not act in lockstep and that
/// tokens are not guessable from the outside (RFC 7252 §5.3.1).
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator with a fixed seed (0 is replaced by a constant).
    pub(crate) fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Seeded from std's per-process random SipHash keys, the time and the
    /// process id.
    pub(crate) fn from_entropy() -> XorShift {
        let mut hasher = RandomState::new().build_hasher();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        hasher.write_u128(now);
        hasher.write_u32(std::process::id());
        XorShift::new(hasher.finish())
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next 32 random bits.
    pub(crate) fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A fresh random token (RFC 7252 §5.3.1).
    pub(crate) fn token(&mut self) -> [u8; TOKEN_LEN] {
        self.next_u32().to_be_bytes()
    }
}

/// The Message IDs one endpoint sends to one server: consecutive from a
/// random start (RFC 7252 §4.4), so that endpoints started together do not
/// collide and none repeats before 65536 exchanges.
#[derive(Debug, Clone)]
pub(crate) struct MessageIds {
    next: u16,
}

impl MessageIds {
    /// A sequence that starts at a value drawn from `rng`.
    pub(crate) fn starting_at_random(rng: &mut XorShift) -> MessageIds {
        MessageIds {
            next: rng.next_u32() as u16,
        }
    }

    /// The Message ID of a new exchange.
    pub(crate) fn fresh(&mut self) -> u16 {
        let mid = self.next;
        self.next = mid.wrapping_add(1);
        mid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_timeout_is_in_ack_timeout_times_1_to_1_5() {
        let p = Retransmission::default();
        assert_eq!(p.initial_timeout(0), Duration::from_secs(2));
        assert_eq!(p.initial_timeout(1 << 31), Duration::from_millis(2500));
        let top = p.initial_timeout(u32::MAX);
        assert!(
            top < Duration::from_secs(3) && top > Duration::from_millis(2999),
            "{top:?}"
        );
        let mut rng = XorShift::new(7);
        for _ in 0..1000 {
            let t = p.initial_timeout(rng.next_u32());
            assert!(
                t >= Duration::from_secs(2) && t < Duration::from_secs(3),
                "{t:?}"
            );
        }
    }

    #[test]
    fn timeouts_double_for_max_retransmit_retransmissions() {
        let p = Retransmission::default();
        let secs: Vec<u64> = p.timeouts(0).map(|d| d.as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32]);
        let ms: Vec<u128> = p.timeouts(1 << 31).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [2500, 5000, 10000, 20000, 40000]);
        // The whole wait never exceeds MAX_TRANSMIT_WAIT (93 s).
        assert_eq!(p.max_transmit_wait(), Duration::from_secs(93));
        let total: Duration = p.timeouts(u32::MAX).sum();
        assert!(total < p.max_transmit_wait());
        let fast = Retransmission {
            ack_timeout: Duration::from_millis(100),
            max_retransmit: 1,
        };
        let ms: Vec<u128> = fast.timeouts(0).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200]);
    }

    #[test]
    fn xorshift_is_deterministic_per_seed_and_never_stuck() {
        let a: Vec<u32> = (0..4)
            .scan(XorShift::new(1), |r, _| Some(r.next_u32()))
            .collect();
        let b: Vec<u32> = (0..4)
            .scan(XorShift::new(1), |r, _| Some(r.next_u32()))
            .collect();
        assert_eq!(a, b);
        let mut zero = XorShift::new(0);
        assert_ne!(zero.next_u64(), zero.next_u64());
    }

    #[test]
    fn message_ids_are_consecutive_and_wrap() {
        let mut ids = MessageIds { next: u16::MAX };
        assert_eq!((ids.fresh(), ids.fresh()), (u16::MAX, 0));
        let mut rng = XorShift::new(1);
        let mut a = MessageIds::starting_at_random(&mut rng);
        let mut b = MessageIds::starting_at_random(&mut rng);
        assert_ne!(a.fresh(), b.fresh(), "two endpoints start apart");
    }
}
