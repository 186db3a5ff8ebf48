//! The guards against abuse: the per-address rate limit (4.29, RFC 8516)
//! and the Echo amplification check (RFC 9175 §2.4), both bounded so that
//! their own answers never amplify what they answer.

use super::table::BoundedTable;
use super::{Action, Dropped, Outcome, Peer, ReplyTo, Request};
use crate::hash::SipKey;
use crate::wire;
use coap_lite::{CoapOption, ResponseType};
use core::hash::Hasher;

/// Echo values are valid for this window and the one before it.
const ECHO_WINDOW_MS: u64 = 60_000;
/// Length of the Echo values this server makes.
const ECHO_LEN: usize = 8;
/// RFC 9175 §2.4: an unverified peer gets at most 3 times its request.
const AMPLIFICATION_FACTOR: usize = 3;

/// Requests counted in the current one-second window of an address.
#[derive(Debug, Clone, Copy)]
struct RateWindow {
    second: u64,
    count: u32,
}

/// The rate limiter's table and the Echo key.
#[derive(Debug)]
pub(crate) struct Guard {
    /// `Some(n)`: at most `n` requests a second per address.
    rate_limit: Option<u32>,
    rate: BoundedTable<[u8; 16], RateWindow>,
    /// Challenge unverified peers whose reply would amplify.
    echo: bool,
    echo_key: SipKey,
    /// Wall-clock milliseconds since the Unix epoch at `now_ms` 0: Echo
    /// windows are counted from the epoch, so that every process with the
    /// same key (`--echo-key-file`) cuts them at the same instants and
    /// accepts the others' values.
    echo_clock_ms: u64,
}

impl Guard {
    /// A guard with `rate_limit` requests a second per address (tracking
    /// at most `rate_capacity` addresses) and the Echo check when `echo`.
    pub(crate) fn new(
        rate_limit: Option<u32>,
        rate_capacity: usize,
        table_keys: [u64; 2],
        echo: bool,
        echo_key: SipKey,
    ) -> Guard {
        Guard {
            rate_limit,
            rate: BoundedTable::new(rate_capacity, 1000, table_keys),
            echo,
            echo_key,
            echo_clock_ms: 0,
        }
    }

    /// Counts Echo windows from the Unix epoch: `unix_ms` is the wall-clock
    /// time, in milliseconds since the epoch, at `now_ms` 0.
    pub(crate) fn set_echo_clock(&mut self, unix_ms: u64) {
        self.echo_clock_ms = unix_ms;
    }

    /// The Echo window `now_ms` falls in.
    fn echo_window(&self, now_ms: u64) -> u64 {
        self.echo_clock_ms.saturating_add(now_ms) / ECHO_WINDOW_MS
    }

    /// Addresses the rate limiter tracks.
    pub(crate) fn rate_table_len(&self) -> usize {
        self.rate.len()
    }

    /// Counts the request against its address; `Some` when it is over the
    /// limit and must be answered 4.29 or dropped.
    pub(crate) fn rate_limit(
        &mut self,
        reply_to: ReplyTo<'_>,
        peer: Peer,
        now_ms: u64,
        request_len: usize,
        out: &mut [u8],
    ) -> Option<Action<'static>> {
        let limit = self.rate_limit?;
        let second = now_ms / 1000;
        let over = match self.rate.get_mut(&peer.ip, now_ms) {
            Some(window) if window.second == second => {
                window.count = window.count.saturating_add(1);
                window.count > limit
            }
            // A new second: a fresh window, stamped now, so that the entry
            // cannot expire (and its count restart) before the second ends.
            _ => {
                self.rate
                    .insert(peer.ip, RateWindow { second, count: 1 }, now_ms);
                false
            }
        };
        if !over {
            return None;
        }
        let written = reply_to
            .emitter(ResponseType::TooManyRequests, out)
            .and_then(|mut e| {
                e.option_uint(CoapOption::MaxAge.into(), 1)?;
                Ok(e.finish())
            });
        // A 4.29 larger than the request would amplify a spoofed flood.
        Some(bounded(
            written,
            request_len,
            Outcome::RateLimited,
            Dropped::RateLimited,
        ))
    }

    /// With `--echo`, a reply of `reply_len` bytes to an unverified
    /// `request` (whose Echo option is `echo`) that would be more than 3 times larger is
    /// replaced by a 4.01 Echo challenge (or nothing, if even that would
    /// amplify): `Some` is what to do instead of sending the reply.
    pub(crate) fn check_echo(
        &self,
        reply_to: ReplyTo<'_>,
        request: &Request<'_>,
        echo: Option<&[u8]>,
        reply_len: usize,
        out: &mut [u8],
    ) -> Option<Action<'static>> {
        let (peer, now_ms, request_len) = (&request.peer, request.now_ms, request.datagram.len());
        if !self.echo || reply_len <= AMPLIFICATION_FACTOR.saturating_mul(request_len) {
            return None;
        }
        if echo.is_some_and(|echo| self.echo_is_valid(peer, now_ms, echo)) {
            return None;
        }
        Some(self.echo_challenge(reply_to, peer, now_ms, request_len, out))
    }

    /// The Echo value for `peer` in the window `window`: SipHash, keyed at
    /// start-up, of the address and the window number. Stateless: nothing
    /// is stored per challenged peer.
    fn echo_value(&self, peer: &Peer, window: u64) -> [u8; ECHO_LEN] {
        let mut hasher = self.echo_key.hasher();
        hasher.write(&peer.ip);
        hasher.write_u64(window);
        hasher.finish().to_be_bytes()
    }

    fn echo_is_valid(&self, peer: &Peer, now_ms: u64, echo: &[u8]) -> bool {
        let window = self.echo_window(now_ms);
        echo == self.echo_value(peer, window)
            || (window > 0 && echo == self.echo_value(peer, window - 1))
    }

    fn echo_challenge(
        &self,
        reply_to: ReplyTo<'_>,
        peer: &Peer,
        now_ms: u64,
        request_len: usize,
        out: &mut [u8],
    ) -> Action<'static> {
        let echo = self.echo_value(peer, self.echo_window(now_ms));
        let written = reply_to
            .emitter(ResponseType::Unauthorized, out)
            .and_then(|mut e| {
                e.option(wire::OPTION_ECHO, &echo)?;
                Ok(e.finish())
            });
        // The challenge must not amplify either: a request too small to
        // carry a path is not worth one.
        bounded(
            written,
            AMPLIFICATION_FACTOR.saturating_mul(request_len),
            Outcome::EchoChallenge,
            Dropped::Unverified,
        )
    }
}

/// A reply sent only when it is at most `max_len` bytes: the Echo
/// challenge and the 4.29 must not amplify what they answer.
fn bounded<'c>(
    written: Result<usize, wire::EmitError>,
    max_len: usize,
    outcome: Outcome<'c>,
    too_big: Dropped,
) -> Action<'c> {
    match written {
        Ok(len) if len <= max_len => Action::Reply { len, outcome },
        Ok(_) => Action::Drop(too_big),
        Err(_) => Action::Drop(Dropped::Overflow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes sharing the Echo key but started at different times
    /// accept each other's values: windows follow the wall clock.
    #[test]
    fn echo_windows_follow_the_wall_clock_not_the_process_start() {
        let key = SipKey([0x5eed, 0xec40]);
        let peer = Peer {
            ip: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            port: 5683,
            scope: 0,
        };
        let started_at = |unix_ms| {
            let mut guard = Guard::new(None, 16, [1, 2], true, key);
            guard.set_echo_clock(unix_ms);
            guard
        };
        // Process a started 45.5 s before process b; both now read the same
        // wall-clock time, 1_798_400_091_123 ms.
        let a = started_at(1_798_400_000_000);
        let b = started_at(1_798_400_045_500);
        let (a_now, b_now) = (91_123, 45_623);
        let from_a = a.echo_value(&peer, a.echo_window(a_now));
        assert!(b.echo_is_valid(&peer, b_now, &from_a));
        // And in the next window still, not in the one after.
        assert!(b.echo_is_valid(&peer, b_now + ECHO_WINDOW_MS, &from_a));
        assert!(!b.echo_is_valid(&peer, b_now + 2 * ECHO_WINDOW_MS, &from_a));
        // Another key: refused.
        let mut other = Guard::new(None, 16, [1, 2], true, SipKey([1, 2]));
        other.set_echo_clock(1_798_400_045_500);
        assert!(!other.echo_is_valid(&peer, b_now, &from_a));
    }
}
