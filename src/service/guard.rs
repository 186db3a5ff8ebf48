//! The guards against abuse: the per-address rate limit (4.29, RFC 8516)
//! and the Echo amplification check (RFC 9175 §2.4), both bounded so that
//! their own answers never amplify what they answer.

use super::table::BoundedTable;
use super::{Action, Dropped, Outcome, Peer, ReplyTo};
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
        }
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

    /// With `--echo`, a reply of `reply_len` bytes to an unverified request
    /// of `request_len` bytes that would be more than 3 times larger is
    /// replaced by a 4.01 Echo challenge (or nothing, if even that would
    /// amplify): `Some` is what to do instead of sending the reply.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_echo(
        &self,
        reply_to: ReplyTo<'_>,
        peer: &Peer,
        now_ms: u64,
        echo: Option<&[u8]>,
        request_len: usize,
        reply_len: usize,
        out: &mut [u8],
    ) -> Option<Action<'static>> {
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
        let window = now_ms / ECHO_WINDOW_MS;
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
        let echo = self.echo_value(peer, now_ms / ECHO_WINDOW_MS);
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
