//! Observe (RFC 7641): who watches which resource, and which notifications
//! are owed.
//!
//! An observer is a client endpoint and a token (§2). Its entry keeps the
//! registration request itself: a notification is that request answered
//! again from the current catalog and tree, so every observable resource
//! (the lookup forms, files and listings of the tree, `/.well-known/core`)
//! notifies through the same code that answers it, and nothing about a
//! resource is stored twice. An entry costs the request's bytes (at most
//! [`MAX_REQUEST_LEN`](super::MAX_REQUEST_LEN)) and about 170 bytes more.
//!
//! The table is bounded (`--max-observers`): a full table drops its oldest
//! registration for a new one, so spoofed registrations from many ports
//! cost at most the bound. Registrations and notifications may allocate;
//! the block path never touches this table.
//!
//! Timing (RFC 7641 §4.5 and RFC 7252 §4.8): notifications are
//! Non-confirmable, except every [`CON_EVERY`]th one and any sent when the
//! observer has not confirmed for [`REFRESH_MS`] (24 hours). An observer
//! that hears nothing for that long is sent its current state again, as a
//! Confirmable probe: the ACK proves it still listens. While a Confirmable
//! notification awaits its ACK, every transmission to the observer counts
//! against it, a retransmission or a newer notification sent in its place
//! (RFC 7641 §4.5.2), and the timeout doubles each time; once the first
//! transmission and [`MAX_RETRANSMIT`] more are out, a change waits for the
//! ACK, and the last timeout without one ends the observation (RFC 7252
//! §4.2), as does an RST to any answer the observer was sent, the
//! registration's included.
//!
//! Observe values come from a clock (RFC 7641 §4.4 allows any source that
//! rises): the wall-clock time in milliseconds, modulo 2^24, taken at the
//! monotonic clock's start and advanced by it ([`Observers::set_clock`]),
//! and one past the last value when two answers to one observer fall in
//! one millisecond. A client compares them as §3.4 says (serial
//! arithmetic over 24 bits, or fresh anyway 128 s after the last), so a
//! client that registers again after a server restart takes the new
//! values as newer than the last of the old process: the time between
//! the two is under 2^23 ms (2.3 hours) or over 128 s. The values wrap
//! every 2^24 ms (4.7 hours), which §3.4's rule absorbs; a wall clock set
//! back across a restart by more than the restart took makes the first
//! new values look stale for at most 128 s.

use super::{Arrival, Peer, Request};
use crate::hash::KeyedBuild;
use std::collections::{HashMap, VecDeque};

/// How long an observer may go without a Confirmable exchange (RFC 7641
/// §4.5: at least one Confirmable notification every 24 hours).
pub(crate) const REFRESH_MS: u64 = 24 * 60 * 60 * 1000;
/// Max-Age of every Observe response, one hour. A change is notified as
/// it happens, so freshness is not what this bounds: a client registers
/// again when Max-Age runs out without news (RFC 7641 §3.3.1), which is
/// what brings observers back within the hour after a server restart
/// (observations live in memory only) or an eviction from a full table.
pub(crate) const OBSERVE_MAX_AGE_S: u32 = 3600;
/// Every this many notifications one is Confirmable (RFC 7641 §4.5).
pub(crate) const CON_EVERY: u8 = 20;
/// RFC 7252 §4.8: ACK_TIMEOUT, spread by ACK_RANDOM_FACTOR 1.5.
const ACK_TIMEOUT_MS: u64 = 2000;
/// RFC 7252 §4.8: MAX_RETRANSMIT.
pub(crate) const MAX_RETRANSMIT: u8 = 4;
/// Observe values are 24-bit (RFC 7641 §3.4).
const SEQ_MASK: u32 = 0x00FF_FFFF;
/// RFC 7641 §3.4: a value is newer when it is ahead by less than 2^23.
const SEQ_HALF: u32 = 1 << 23;
/// After this long without an answer to an observer, the clock's value is
/// sent whatever the last one was: RFC 7641 §3.4 makes any value fresh
/// 128 s after the last, and this is twice that, for network delays.
const FRESH_ANYWAY_MS: u64 = 2 * 128_000;

/// An observation's identity: the client endpoint and the token (RFC 7641
/// §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ObserverKey {
    peer: Peer,
    token: [u8; 8],
    token_len: u8,
}

impl ObserverKey {
    /// The key of `token` from `peer`; `None` for a token longer than 8
    /// bytes (which a parsed message never has).
    pub(crate) fn new(peer: Peer, token: &[u8]) -> Option<ObserverKey> {
        let mut bytes = [0u8; 8];
        bytes.get_mut(..token.len())?.copy_from_slice(token);
        Some(ObserverKey {
            peer,
            token: bytes,
            token_len: token.len() as u8,
        })
    }

    /// The endpoint.
    pub(crate) fn peer(&self) -> Peer {
        self.peer
    }
}

/// A Confirmable notification waiting for its ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InFlight {
    /// Retransmissions so far.
    pub(crate) attempts: u8,
    /// The current timeout, doubled at each retransmission.
    pub(crate) timeout_ms: u64,
    /// When to retransmit (or give up).
    pub(crate) due_ms: u64,
}

/// One observation.
#[derive(Debug)]
pub(crate) struct Observer {
    /// The registration request, answered again for every notification.
    pub(crate) request: Box<[u8]>,
    /// Which resource the request names (path, query, Accept, payload), so
    /// that a later plain GET of it with the same token ends the
    /// observation and one of another resource does not.
    pub(crate) target: u64,
    /// Where the registration arrived: the notifications leave from there.
    pub(crate) arrival: Arrival,
    /// Observe value of the last response sent.
    pub(crate) seq: u32,
    /// When it was sent.
    sent_ms: u64,
    /// The Observe value of the registration's answer, and when it was
    /// sent: a duplicate of the registration (same bytes, so same Message
    /// ID, within EXCHANGE_LIFETIME) is answered with it, byte for byte.
    answered: (u32, u64),
    /// What identifies the representation last sent (an ETag, an image id).
    pub(crate) tag: u64,
    /// Non-confirmable notifications sent since the last Confirmable one.
    pub(crate) non_since_con: u8,
    /// When the observer last showed it listens: its registration or an
    /// ACK of a Confirmable notification.
    pub(crate) confirmed_ms: u64,
    /// Message ID of the last notification, which an ACK or RST names.
    pub(crate) last_mid: Option<u16>,
    /// The Confirmable notification awaiting its ACK, if one is.
    pub(crate) in_flight: Option<InFlight>,
    /// A change came after the in-flight notification's last
    /// transmission: it is sent when the ACK comes.
    held: bool,
    /// A notification is queued.
    due: bool,
    /// Its place in the eviction order.
    queued: u64,
}

impl Observer {
    /// When its timer next fires: its retransmission, else its refresh.
    fn deadline(&self) -> u64 {
        match self.in_flight {
            Some(f) => f.due_ms,
            None => self.confirmed_ms.saturating_add(REFRESH_MS),
        }
    }
}

/// What a request does to the table, decided before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Nothing.
    None,
    /// Observe 0: register (or refresh) if the answer is observable; the
    /// response carries `seq`.
    Register { key: ObserverKey, seq: u32 },
    /// A duplicate of the registration of `key` (RFC 7252 §4.5): answered
    /// as the first copy was, with its Observe value `seq`; the
    /// observation stays as it is.
    Duplicate { key: ObserverKey, seq: u32 },
    /// Observe 1: end the observation, whatever it observed.
    Deregister(ObserverKey),
    /// A plain GET for a first block: ends the observation with this token
    /// if it observed the same resource.
    PlainGet { key: ObserverKey, target: u64 },
}

/// The bounded table of observers; see the module docs.
#[derive(Debug)]
pub(crate) struct Observers {
    map: HashMap<ObserverKey, Observer, KeyedBuild>,
    /// Keys in registration order, each with the number it was queued at;
    /// a slot whose number no longer matches its entry's is stale.
    order: VecDeque<(ObserverKey, u64)>,
    /// The observer each recent notification's Message ID belongs to.
    by_mid: HashMap<(Peer, u16), ObserverKey, KeyedBuild>,
    /// Observers owed a notification, oldest first.
    due: VecDeque<ObserverKey>,
    capacity: usize,
    next_queued: u64,
    /// The catalog or the tree changed since the last comparison.
    changed: bool,
    /// The earliest retransmission or refresh; `u64::MAX` when none.
    next_timer_ms: u64,
    /// The wall-clock time, in ms since the Unix epoch, at `now_ms` 0.
    clock_origin_ms: u64,
}

impl Observers {
    /// An empty table for up to `capacity` observers (0: Observe is off),
    /// hashed with the secret `keys`.
    pub(crate) fn new(capacity: usize, keys: [u64; 2]) -> Observers {
        Observers {
            map: HashMap::with_hasher(KeyedBuild::new(keys)),
            order: VecDeque::new(),
            by_mid: HashMap::with_hasher(KeyedBuild::new(keys)),
            due: VecDeque::new(),
            capacity,
            next_queued: 0,
            changed: false,
            next_timer_ms: u64::MAX,
            clock_origin_ms: 0,
        }
    }

    /// Derives Observe values from the wall clock: `unix_ms` is the time,
    /// in milliseconds since the Unix epoch, at `now_ms` 0. Without it the
    /// values count from the first `now_ms` 0, which is fresh for clients
    /// of one process only.
    pub(crate) fn set_clock(&mut self, unix_ms: u64) {
        self.clock_origin_ms = unix_ms;
    }

    /// The clock's Observe value at `now_ms`.
    fn clock_seq(&self, now_ms: u64) -> u32 {
        // Modulo 2^24: the mask keeps the low 24 bits.
        (self.clock_origin_ms.wrapping_add(now_ms) & u64::from(SEQ_MASK)) as u32
    }

    /// Whether registrations are accepted at all.
    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Observers registered.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// No observer is registered.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The Observe value of the next response to `key` at `now_ms`: the
    /// clock's, or one past the last sent to it when the clock's would not
    /// read as newer than that (two in one millisecond) and the last is
    /// recent enough for the client to compare them (§3.4).
    pub(crate) fn next_seq(&self, key: &ObserverKey, now_ms: u64) -> u32 {
        let clock = self.clock_seq(now_ms);
        match self.map.get(key) {
            Some(o)
                if !seq_newer(clock, o.seq)
                    && now_ms.saturating_sub(o.sent_ms) < FRESH_ANYWAY_MS =>
            {
                o.seq.wrapping_add(1) & SEQ_MASK
            }
            _ => clock,
        }
    }

    /// The Observe value of the registration's answer, when `datagram`
    /// from `key`'s endpoint is a duplicate of the registration (the same
    /// bytes within EXCHANGE_LIFETIME of its answer).
    pub(crate) fn duplicate(&self, key: &ObserverKey, datagram: &[u8], now_ms: u64) -> Option<u32> {
        let o = self.map.get(key)?;
        let (seq, at) = o.answered;
        (now_ms.saturating_sub(at) < super::EXCHANGE_LIFETIME_MS && *o.request == *datagram)
            .then_some(seq)
    }

    /// The observation of `key`, if there is one.
    pub(crate) fn get(&self, key: &ObserverKey) -> Option<&Observer> {
        self.map.get(key)
    }

    /// Registers (or refreshes) the observation of `key` made by `request`
    /// (kept, to be answered again), whose response carried `seq` and the
    /// representation `tag`, and had Message ID `reply_mid` when it was a
    /// NON (an RST naming it ends the observation). A new key in a full
    /// table evicts the oldest registration.
    pub(crate) fn register(
        &mut self,
        key: ObserverKey,
        request: &Request<'_>,
        target: u64,
        (seq, tag): (u32, u64),
        reply_mid: Option<u16>,
    ) {
        let (arrival, now_ms) = (request.arrival, request.now_ms);
        if !self.enabled() {
            return;
        }
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.capacity {
                let Some((oldest, queued)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&oldest).is_some_and(|o| o.queued == queued) {
                    self.remove(&oldest);
                }
            }
        } else {
            self.remove(&key);
        }
        let queued = self.next_queued;
        self.next_queued += 1;
        if self.order.len() >= self.capacity.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, q)| map.get(k).is_some_and(|o| o.queued == *q));
        }
        self.order.push_back((key, queued));
        self.map.insert(
            key,
            Observer {
                request: request.datagram.into(),
                target,
                arrival,
                seq,
                sent_ms: now_ms,
                answered: (seq, now_ms),
                tag,
                non_since_con: 0,
                confirmed_ms: now_ms,
                last_mid: reply_mid,
                in_flight: None,
                held: false,
                due: false,
                queued,
            },
        );
        if let Some(mid) = reply_mid {
            self.by_mid.insert((key.peer, mid), key);
        }
        self.next_timer_ms = self.next_timer_ms.min(now_ms.saturating_add(REFRESH_MS));
    }

    /// Ends the observation of `key`, if there is one.
    pub(crate) fn remove(&mut self, key: &ObserverKey) {
        if let Some(o) = self.map.remove(key) {
            if let Some(mid) = o.last_mid {
                self.by_mid.remove(&(key.peer, mid));
            }
        }
    }

    /// Ends the observation of `key` when it observes `target`.
    pub(crate) fn remove_if_target(&mut self, key: &ObserverKey, target: u64) {
        if self.map.get(key).is_some_and(|o| o.target == target) {
            self.remove(key);
        }
    }

    /// An ACK from `peer`: the Confirmable notification with Message ID
    /// `mid` arrived, and its observer listens.
    pub(crate) fn on_ack(&mut self, peer: Peer, mid: u16, now_ms: u64) {
        let Some(key) = self.by_mid.get(&(peer, mid)).copied() else {
            return;
        };
        if let Some(o) = self.map.get_mut(&key) {
            if o.last_mid == Some(mid) && o.in_flight.is_some() {
                o.in_flight = None;
                o.confirmed_ms = now_ms;
                o.non_since_con = 0;
                // The change that waited for this ACK goes out now.
                if std::mem::take(&mut o.held) && !o.due {
                    o.due = true;
                    self.due.push_back(key);
                }
                // Only an ACK of a notification in flight gets here (a
                // forged one is a hash lookup): the scan is affordable.
                self.next_timer_ms = self
                    .map
                    .values()
                    .map(Observer::deadline)
                    .min()
                    .unwrap_or(u64::MAX);
            }
        }
    }

    /// An RST from `peer` for the notification (or the NON answer to the
    /// registration) with Message ID `mid`: the client no longer knows the
    /// observation (RFC 7641 §3.6).
    pub(crate) fn on_reset(&mut self, peer: Peer, mid: u16) {
        if let Some(key) = self.by_mid.get(&(peer, mid)).copied() {
            self.remove(&key);
        }
    }

    /// The catalog or the tree changed: every observer's representation is
    /// compared again at the next poll.
    pub(crate) fn mark_changed(&mut self) {
        if !self.map.is_empty() {
            self.changed = true;
        }
    }

    /// Takes the "changed" mark.
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every key, for the comparison after a change.
    pub(crate) fn keys(&self) -> impl Iterator<Item = ObserverKey> + '_ {
        self.map.keys().copied()
    }

    /// Queues a notification for `key`.
    pub(crate) fn make_due(&mut self, key: ObserverKey) {
        if let Some(o) = self.map.get_mut(&key) {
            if !o.due {
                o.due = true;
                self.due.push_back(key);
            }
        }
    }

    /// When a notification is owed: now when one is queued or a change is
    /// to be compared, else the next retransmission or refresh.
    #[inline]
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        if self.map.is_empty() {
            return None;
        }
        if self.changed || !self.due.is_empty() {
            return Some(0);
        }
        (self.next_timer_ms != u64::MAX).then_some(self.next_timer_ms)
    }

    /// Queues the retransmissions and refreshes due at `now_ms`, and ends
    /// the observations whose Confirmable notification went unanswered;
    /// returns how many ended.
    pub(crate) fn run_timers(&mut self, now_ms: u64) -> usize {
        if now_ms < self.next_timer_ms {
            return 0;
        }
        let mut next = u64::MAX;
        let mut expired = Vec::new();
        for (key, o) in &mut self.map {
            let deadline = match o.in_flight {
                Some(f) if f.due_ms <= now_ms && f.attempts >= MAX_RETRANSMIT => {
                    expired.push(*key);
                    continue;
                }
                Some(f) if f.due_ms <= now_ms => None,
                Some(f) => Some(f.due_ms),
                None if now_ms.saturating_sub(o.confirmed_ms) >= REFRESH_MS => None,
                None => Some(o.confirmed_ms.saturating_add(REFRESH_MS)),
            };
            match deadline {
                Some(at) => next = next.min(at),
                None if !o.due => {
                    o.due = true;
                    self.due.push_back(*key);
                }
                None => {}
            }
        }
        self.next_timer_ms = next;
        for key in &expired {
            self.remove(key);
        }
        expired.len()
    }

    /// Holds the change owed to `key` until the ACK of the notification in
    /// flight, whose transmissions are all out.
    pub(crate) fn hold(&mut self, key: &ObserverKey) {
        if let Some(o) = self.map.get_mut(key) {
            o.held = true;
        }
    }

    /// The next observer owed a notification.
    pub(crate) fn pop_due(&mut self) -> Option<ObserverKey> {
        while let Some(key) = self.due.pop_front() {
            if let Some(o) = self.map.get_mut(&key) {
                if o.due {
                    o.due = false;
                    return Some(key);
                }
            }
        }
        None
    }

    /// Records a notification sent to `key`: Message ID `mid`, Observe
    /// value `seq`, representation `tag`, Confirmable when `confirmable`.
    /// A retransmission repeats the last notification's `mid` and `seq`;
    /// a newer notification in its place has its own.
    pub(crate) fn record_sent(
        &mut self,
        key: ObserverKey,
        mid: u16,
        seq: u32,
        tag: u64,
        confirmable: bool,
        now_ms: u64,
    ) {
        let Some(o) = self.map.get_mut(&key) else {
            return;
        };
        if let Some(old) = o.last_mid.replace(mid) {
            if old != mid {
                self.by_mid.remove(&(key.peer, old));
            }
        }
        self.by_mid.insert((key.peer, mid), key);
        o.seq = seq;
        o.sent_ms = now_ms;
        o.tag = tag;
        if confirmable {
            o.non_since_con = 0;
            // Every transmission while one awaits its ACK counts, a
            // retransmission or a newer notification in its place (RFC
            // 7641 §4.5.2), so that changes cannot keep an observer that
            // never answers (RFC 7252 §4.2).
            let flight = match o.in_flight {
                Some(f) => InFlight {
                    attempts: f.attempts.saturating_add(1),
                    timeout_ms: f.timeout_ms.saturating_mul(2),
                    due_ms: now_ms.saturating_add(f.timeout_ms.saturating_mul(2)),
                },
                None => {
                    // ACK_TIMEOUT spread over [1, 1.5) by the Message ID,
                    // which is itself keyed-random per peer.
                    let timeout_ms = ACK_TIMEOUT_MS + u64::from(mid) % (ACK_TIMEOUT_MS / 2);
                    InFlight {
                        attempts: 0,
                        timeout_ms,
                        due_ms: now_ms.saturating_add(timeout_ms),
                    }
                }
            };
            o.in_flight = Some(flight);
            self.next_timer_ms = self.next_timer_ms.min(flight.due_ms);
        } else {
            o.non_since_con = o.non_since_con.saturating_add(1);
        }
    }
}

/// RFC 7641 §3.4 without the time rule: `a` is newer than `b` in 24-bit
/// serial arithmetic.
pub(crate) fn seq_newer(a: u32, b: u32) -> bool {
    let ahead = a.wrapping_sub(b) & SEQ_MASK;
    ahead != 0 && ahead < SEQ_HALF
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, token: &[u8]) -> ObserverKey {
        ObserverKey::new(
            Peer {
                ip: [0; 16],
                port,
                scope: 0,
            },
            token,
        )
        .unwrap()
    }

    fn table(capacity: usize) -> Observers {
        Observers::new(capacity, [5, 6])
    }

    fn add(t: &mut Observers, k: ObserverKey, now: u64) {
        t.register(k, &Request::new(k.peer(), now, b"req"), 7, (0, 1), None);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_registration() {
        let mut t = table(3);
        for port in 1..=3 {
            add(&mut t, key(port, b"t"), 0);
        }
        // Port 1 registers again: it is now the newest.
        add(&mut t, key(1, b"t"), 1);
        add(&mut t, key(4, b"t"), 2);
        assert_eq!(t.len(), 3);
        assert!(t.get(&key(2, b"t")).is_none(), "oldest evicted");
        for port in [1, 3, 4] {
            assert!(t.get(&key(port, b"t")).is_some());
        }
        // Churn never grows the table or its queue past their bounds.
        for port in 5..10_000 {
            add(&mut t, key(port, b"t"), 3);
            assert!(t.len() <= 3 && t.order.len() <= 7);
        }
    }

    #[test]
    fn tokens_tell_observations_of_one_endpoint_apart() {
        let mut t = table(8);
        add(&mut t, key(1, b""), 0);
        add(&mut t, key(1, b"a"), 0);
        assert_eq!(t.len(), 2);
        assert!(ObserverKey::new(
            Peer {
                ip: [0; 16],
                port: 1,
                scope: 0,
            },
            &[0; 9]
        )
        .is_none());
    }

    #[test]
    fn an_ack_confirms_and_an_rst_ends() {
        let mut t = table(8);
        let k = key(1, b"t");
        add(&mut t, k, 0);
        t.record_sent(k, 100, 1, 2, true, 10);
        assert!(t.get(&k).unwrap().in_flight.is_some());
        // An ACK from another endpoint or for another ID changes nothing.
        t.on_ack(key(2, b"t").peer(), 100, 20);
        t.on_ack(k.peer(), 99, 20);
        assert!(t.get(&k).unwrap().in_flight.is_some());
        t.on_ack(k.peer(), 100, 20);
        let o = t.get(&k).unwrap();
        assert_eq!((o.in_flight, o.confirmed_ms), (None, 20));
        t.record_sent(k, 101, 2, 3, false, 30);
        t.on_reset(k.peer(), 101);
        assert!(t.get(&k).is_none());
        assert!(t.by_mid.is_empty());
    }

    #[test]
    fn an_unanswered_confirmable_notification_ends_the_observation() {
        let mut t = table(8);
        let k = key(1, b"t");
        add(&mut t, k, 0);
        t.record_sent(k, 7, 1, 2, true, 0);
        let mut now = 0;
        let mut sends = 1;
        for _ in 0..10 {
            now = t.next_due_ms().unwrap();
            if t.run_timers(now) == 1 {
                break;
            }
            let due = t.pop_due().unwrap();
            t.record_sent(due, 7, 1, 2, true, now);
            sends += 1;
        }
        assert!(t.get(&k).is_none());
        // The first transmission and MAX_RETRANSMIT more, the timeouts
        // doubling from 2 to 3 s: gone within 2 * (2+4+8+16) * 1.5 s.
        assert_eq!(sends, 1 + MAX_RETRANSMIT as usize);
        assert!((60_000..=93_000).contains(&now), "{now}");
    }

    #[test]
    fn a_silent_observer_is_refreshed_after_a_day() {
        let mut t = table(8);
        let k = key(1, b"t");
        add(&mut t, k, 1000);
        assert_eq!(t.next_due_ms(), Some(1000 + REFRESH_MS));
        assert_eq!(t.run_timers(REFRESH_MS), 0);
        assert_eq!(t.pop_due(), None);
        t.run_timers(1000 + REFRESH_MS);
        assert_eq!(t.pop_due(), Some(k));
    }

    #[test]
    fn observe_values_are_the_wall_clock_in_milliseconds_modulo_2_24() {
        let mut t = table(2);
        let k = key(1, b"t");
        // 2026-12-07T08:00:00Z, and 2^24 ms later: the same value.
        let unix_ms = 1_796_630_400_000;
        t.set_clock(unix_ms);
        let at = |now: u64| ((unix_ms + now) % (1 << 24)) as u32;
        assert_eq!(t.next_seq(&k, 0), at(0));
        assert_eq!(t.next_seq(&k, 1 << 24), at(0));
        add(&mut t, k, 0);
        t.record_sent(k, 1, at(5000), 0, false, 5000);
        assert_eq!(t.next_seq(&k, 9000), at(9000));
    }

    #[test]
    fn two_values_in_one_millisecond_still_rise() {
        let mut t = table(2);
        let k = key(1, b"t");
        add(&mut t, k, 0);
        // The clock is 7 at now 7; two values already went out at 7.
        t.record_sent(k, 1, 8, 0, false, 7);
        assert_eq!(t.next_seq(&k, 7), 9);
        // Wrapping at 24 bits: after 0xFFFFFF comes 0.
        t.set_clock(u64::from(SEQ_MASK) - 7);
        t.record_sent(k, 2, SEQ_MASK, 0, false, 7);
        assert_eq!(t.next_seq(&k, 7), 0);
        assert!(seq_newer(0, SEQ_MASK) && !seq_newer(SEQ_MASK, 0));
    }

    #[test]
    fn after_a_long_silence_the_clock_value_is_sent_whatever_it_reads_as() {
        let mut t = table(2);
        let k = key(1, b"t");
        add(&mut t, k, 0);
        // 3 hours later the clock is more than 2^23 ahead, which reads as
        // older; the client takes it anyway, more than 128 s having passed
        // (RFC 7641 §3.4), and the values keep following the clock, as a
        // restart's will.
        let later = 3 * 3_600_000;
        assert!(!seq_newer((later & 0xFF_FFFF) as u32, 0));
        assert_eq!(t.next_seq(&k, later), (later & 0xFF_FFFF) as u32);
    }

    #[test]
    fn a_replacement_counts_as_a_transmission() {
        let mut t = table(2);
        let k = key(1, b"t");
        add(&mut t, k, 0);
        t.record_sent(k, 10, 1, 1, true, 0);
        let first = t.get(&k).unwrap().in_flight.unwrap();
        // A newer notification 1.5 s later, before the timeout.
        t.record_sent(k, 11, 2, 2, true, 1500);
        let second = t.get(&k).unwrap().in_flight.unwrap();
        assert_eq!(second.attempts, 1);
        assert_eq!(second.timeout_ms, 2 * first.timeout_ms);
        assert_eq!(second.due_ms, 1500 + 2 * first.timeout_ms);
        // The replaced one's ID no longer names the observation.
        t.on_ack(k.peer(), 10, 1600);
        assert!(t.get(&k).unwrap().in_flight.is_some());
    }

    #[test]
    fn an_rst_to_a_non_registration_answer_ends_it() {
        let mut t = table(2);
        let k = key(1, b"t");
        t.register(k, &Request::new(k.peer(), 0, b"req"), 7, (0, 1), Some(42));
        t.on_reset(k.peer(), 41);
        assert!(t.get(&k).is_some());
        t.on_reset(k.peer(), 42);
        assert!(t.get(&k).is_none());
        assert!(t.by_mid.is_empty());
    }

    #[test]
    fn a_duplicate_registration_is_known_within_the_exchange_lifetime() {
        let mut t = table(2);
        let k = key(1, b"t");
        t.register(k, &Request::new(k.peer(), 100, b"req"), 7, (1234, 1), None);
        t.record_sent(k, 1, 2000, 2, false, 2000);
        assert_eq!(t.duplicate(&k, b"req", 2000), Some(1234));
        assert_eq!(t.duplicate(&k, b"other", 2000), None);
        let late = 100 + super::super::EXCHANGE_LIFETIME_MS;
        assert_eq!(t.duplicate(&k, b"req", late), None);
        assert_eq!(t.duplicate(&key(2, b"t"), b"req", 2000), None);
    }
}
