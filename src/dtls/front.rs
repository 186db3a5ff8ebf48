//! The per-peer side of coaps: half-open handshakes and established
//! sessions in two bounded tables, their timers, and what goes out.
//!
//! A datagram from a peer goes one of four ways:
//! * a ClientHello without a valid cookie: a HelloVerifyRequest
//!   ([`super::hello`]), nothing kept;
//! * a ClientHello with a valid cookie: a half-open handshake (a new one
//!   when its random is new, else the engine's retransmission);
//! * records for the peer's half-open handshake, screened first
//!   ([`super::records::screen`]);
//! * records for the peer's established session.
//!
//! Half-open handshakes are capped overall (`max_handshakes`) and per
//! source (IPv4 /32, IPv6 /64); one over either cap evicts the oldest
//! half-open handshake of that source, or overall, never an established
//! session. An established session is replaced only when its
//! replacement finished its handshake (RFC 6347 §4.2.8), ends after
//! `session_idle_ms` without a datagram, and in a full table the least
//! recently used one makes room for a newly authenticated one.
//!
//! Timers live in one binary heap of due times; each datagram costs at
//! most one push per table, whatever the number of sessions.

use super::hello::{self, ClientHello, CookieSecrets, HELLO_VERIFY_LEN};
use super::psk::{self, PskTable, Resolver};
use super::records::{self, Alert, Contents, Screened, ALERT_LEN};
use super::{Entropy, Limits};
use crate::service::Authorization;
use dimpl::{Dtls, Output};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a cookie secret is current; a cookie is valid for up to two
/// such periods.
const COOKIE_PERIOD_MS: u64 = 30_000;
/// The largest datagram a half-open handshake takes: a PSK client's
/// flight (ClientKeyExchange with an identity of at most 128 bytes,
/// ChangeCipherSpec, Finished) is under 300 bytes.
const HANDSHAKE_DATAGRAM_MAX: usize = 512;
/// Datagrams a half-open handshake takes in before it is ended: a
/// client needs one to three (ClientKeyExchange, ChangeCipherSpec and
/// Finished, together or apart), and each again when a flight is lost.
const HANDSHAKE_DATAGRAMS_MAX: u8 = 20;
/// How long a half-open handshake may last (the engine's own limit,
/// checked here too).
const HANDSHAKE_TIMEOUT_MS: u64 = 15_000;

/// What happened to a datagram, for counters and log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Records of an established session were taken in (requests among
    /// them maybe).
    Session,
    /// Records of a half-open handshake were taken in.
    Handshake,
    /// A handshake completed: the peer has a session now.
    Connected,
    /// A ClientHello without a valid cookie: answered with a
    /// HelloVerifyRequest, nothing kept.
    HelloVerify,
    /// A ClientHello with a valid cookie started a half-open handshake.
    Started,
    /// The peer closed its session (close_notify).
    Closed,
    /// The handshake failed (a wrong key or an unknown identity among
    /// the reasons: the peer got a fatal alert) or the session failed,
    /// and it was removed.
    Failed,
    /// Dropped unread: nothing of the peer's, a record no client sends
    /// at that point, or a datagram too large for a handshake.
    Ignored,
}

/// Counters of the front since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrontStats {
    /// HelloVerifyRequests sent.
    pub hello_verifies: u64,
    /// Half-open handshakes started (valid cookie).
    pub handshakes_started: u64,
    /// Half-open handshakes evicted for another (per-source or overall
    /// cap).
    pub handshakes_evicted: u64,
    /// Half-open handshakes ended: timed out, failed, or too many
    /// datagrams that did not complete them.
    pub handshakes_failed: u64,
    /// Handshakes completed.
    pub connected: u64,
    /// Established sessions evicted, least recently used, for a newly
    /// authenticated one.
    pub sessions_evicted: u64,
    /// Established sessions ended after `session_idle_ms` of silence.
    pub sessions_idle: u64,
    /// Fatal alerts sent for failed handshakes.
    pub alerts: u64,
    /// Datagrams dropped unread.
    pub ignored: u64,
}

impl std::fmt::Display for FrontStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "coaps: hello verifies {} handshakes started {} evicted {} failed {} alerts {} \
             connected {} sessions evicted {} idle {} ignored {}",
            self.hello_verifies,
            self.handshakes_started,
            self.handshakes_evicted,
            self.handshakes_failed,
            self.alerts,
            self.connected,
            self.sessions_evicted,
            self.sessions_idle,
            self.ignored
        )
    }
}

/// A handshake in progress: the peer proved it receives at its address
/// (the cookie), nothing more.
struct Handshake {
    dtls: Dtls,
    resolver: Arc<Resolver>,
    /// The ClientHello's random: the same again is a retransmission, a
    /// new one a client that started over.
    random: [u8; 32],
    started_ms: u64,
    /// Datagrams given to the engine.
    datagrams: u8,
    /// A ClientKeyExchange reached the engine: a ChangeCipherSpec may
    /// follow (before it one is noise, kept in the engine's queue).
    key_exchange_seen: bool,
    /// A ChangeCipherSpec reached the engine: encrypted records may be
    /// the Finished (before it the engine drops them anyway).
    change_cipher_spec_seen: bool,
    /// Encrypted records that failed to decrypt without a
    /// ChangeCipherSpec beside them.
    decrypt_failures: u8,
    /// The last epoch-0 record number the engine wrote, so that an alert
    /// follows it.
    last_sequence: u64,
    /// When the engine wants [`Dtls::handle_timeout`].
    engine_ms: Option<u64>,
    /// The earliest due time this handshake has in the timer heap.
    scheduled_ms: Option<u64>,
}

/// An established session.
struct Session {
    dtls: Dtls,
    /// The random of the ClientHello that started it: a late copy of that
    /// hello is not a new handshake.
    random: [u8; 32],
    identity: Vec<u8>,
    /// What the identity may fetch.
    authorization: Authorization,
    /// Milliseconds of the last datagram from the peer.
    last_ms: u64,
    /// When the engine wants [`Dtls::handle_timeout`].
    engine_ms: Option<u64>,
    /// The earliest due time this session has in the timer heap.
    scheduled_ms: Option<u64>,
}

/// Records to send: their bytes one after another, each with its
/// destination and where it ends.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    records: Vec<(SocketAddr, usize)>,
}

impl Outbox {
    fn push(&mut self, to: SocketAddr, record: &[u8]) {
        self.bytes.extend_from_slice(record);
        self.records.push((to, self.bytes.len()));
    }
}

/// Which table a timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Handshakes,
    Sessions,
}

/// The DTLS front: handshakes, sessions and what is to be sent.
pub struct Front {
    keys: Arc<PskTable>,
    limits: Limits,
    cookies: CookieSecrets,
    handshakes: HashMap<SocketAddr, Handshake>,
    sessions: HashMap<SocketAddr, Session>,
    /// Due times, earliest first; an entry whose peer has another
    /// `scheduled_ms` is stale and skipped.
    timers: BinaryHeap<Reverse<(u64, Table, SocketAddr)>>,
    /// The instant of millisecond 0 of the caller's clock.
    epoch: Instant,
    /// Records to send, with their destination.
    outbox: Outbox,
    /// Decrypted datagrams of the last [`Front::receive`].
    inbox: Vec<Vec<u8>>,
    /// The engine's output buffer.
    scratch: Vec<u8>,
    stats: FrontStats,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("identities", &self.keys.len())
            .field("handshakes", &self.handshakes.len())
            .field("sessions", &self.sessions.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Front {
    /// A front with the keys of `keys` and the bounds of `limits`; cookie
    /// secrets are drawn from `entropy` (the operating system's random
    /// source in the server) and rotated every 30 s; millisecond 0 of the
    /// caller's clock is `epoch`.
    pub fn new(keys: PskTable, limits: Limits, entropy: Entropy, epoch: Instant) -> Front {
        Front {
            keys: Arc::new(keys),
            limits: limits.sane(),
            cookies: CookieSecrets::new(entropy, COOKIE_PERIOD_MS),
            handshakes: HashMap::new(),
            sessions: HashMap::new(),
            timers: BinaryHeap::new(),
            epoch,
            outbox: Outbox::default(),
            inbox: Vec::new(),
            scratch: vec![0; super::MTU + 64],
            stats: FrontStats::default(),
        }
    }

    /// Uses `keys` from now on (SIGHUP). A session whose identity is gone
    /// or whose key changed is ended; the others get their identity's new
    /// PIDs. Half-open handshakes finish with the key they resolved and
    /// are checked against the new keys when they complete. Returns how
    /// many sessions were ended.
    pub(crate) fn replace_keys(&mut self, keys: PskTable) -> usize {
        let old = std::mem::replace(&mut self.keys, Arc::new(keys));
        let mut ended = Vec::new();
        for (addr, session) in &mut self.sessions {
            let id = session.identity.as_slice();
            match (old.key(id), self.keys.key(id), self.keys.authorization(id)) {
                (Some(before), Some(now), Some(authorization)) if before == now => {
                    session.authorization = authorization.clone();
                }
                _ => ended.push(*addr),
            }
        }
        for addr in &ended {
            self.close(*addr);
        }
        ended.len()
    }

    /// The number of established sessions and half-open handshakes.
    pub fn session_count(&self) -> usize {
        self.sessions.len() + self.handshakes.len()
    }

    /// The number of half-open handshakes.
    pub fn handshake_count(&self) -> usize {
        self.handshakes.len()
    }

    /// The front's counters since start.
    pub fn stats(&self) -> FrontStats {
        self.stats
    }

    /// Established sessions evicted for new ones since start.
    pub fn evicted(&self) -> u64 {
        self.stats.sessions_evicted
    }

    /// True when `peer` has an established session or a half-open
    /// handshake.
    pub fn has_session(&self, peer: SocketAddr) -> bool {
        self.sessions.contains_key(&peer) || self.handshakes.contains_key(&peer)
    }

    /// The authenticated identity of `peer`'s session, if it has one.
    pub fn identity(&self, peer: SocketAddr) -> Option<&[u8]> {
        self.sessions.get(&peer).map(|s| s.identity.as_slice())
    }

    /// What `peer`'s session may fetch, once it is established.
    pub fn authorization(&self, peer: SocketAddr) -> Option<&Authorization> {
        self.sessions.get(&peer).map(|s| &s.authorization)
    }

    /// Takes in one datagram from `from` at `now_ms`; the requests it
    /// carried are then in [`Front::take_requests`], the records to send
    /// in [`Front::take_outgoing`].
    pub fn receive(&mut self, from: SocketAddr, now_ms: u64, datagram: &[u8]) -> Handled {
        self.inbox.clear();
        let handled = match ClientHello::parse(datagram) {
            Some(hello) => self.hello(from, now_ms, datagram, &hello),
            None => self.records(from, now_ms, datagram),
        };
        if handled == Handled::Ignored {
            self.stats.ignored += 1;
        }
        handled
    }

    /// The requests the last [`Front::receive`] decrypted, oldest first.
    pub fn take_requests(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.inbox)
    }

    /// Gives each record to send, with its destination, to `send`, and
    /// forgets them; the buffers stay for the next, so that answering a
    /// ClientHello allocates nothing.
    pub fn drain_outgoing(&mut self, mut send: impl FnMut(SocketAddr, &[u8])) {
        let mut start = 0;
        for &(to, end) in &self.outbox.records {
            if let Some(record) = self.outbox.bytes.get(start..end) {
                send(to, record);
            }
            start = end;
        }
        self.outbox.records.clear();
        self.outbox.bytes.clear();
    }

    /// The records to send, with their destinations, as owned values (for
    /// tests and tools; the server uses [`Front::drain_outgoing`]).
    pub fn take_outgoing(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut records = Vec::new();
        self.drain_outgoing(|to, record| records.push((to, record.to_vec())));
        records
    }

    /// Encrypts `plaintext` for `to`'s established session; false when
    /// there is none (the datagram is not sent).
    pub fn send(&mut self, to: SocketAddr, plaintext: &[u8]) -> bool {
        let Some(session) = self.sessions.get_mut(&to) else {
            return false;
        };
        if session.dtls.send_application_data(plaintext).is_err() {
            self.sessions.remove(&to);
            return false;
        }
        self.drain_session(to);
        true
    }

    /// The earliest millisecond a timer is due: a handshake's
    /// retransmission or end, a session's idle end. May be early (an
    /// entry whose peer moved on); never late.
    pub fn next_timer_ms(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Runs the timers due at `now_ms`.
    pub fn on_timers(&mut self, now_ms: u64) {
        // Bounded: each entry is popped once; those pushed again are due
        // later than now.
        for _ in 0..self.timers.len() {
            let Some(Reverse((due, table, addr))) = self.timers.peek().copied() else {
                break;
            };
            if due > now_ms {
                break;
            }
            self.timers.pop();
            match table {
                Table::Handshakes => self.handshake_timer(addr, due, now_ms),
                Table::Sessions => self.session_timer(addr, due, now_ms),
            }
        }
    }

    /// Ends `peer`'s session, sending close_notify, and its half-open
    /// handshake if it has one.
    pub fn close(&mut self, peer: SocketAddr) {
        self.handshakes.remove(&peer);
        self.end_session(peer);
    }

    /// Ends `peer`'s established session with close_notify.
    fn end_session(&mut self, peer: SocketAddr) {
        if let Some(mut session) = self.sessions.remove(&peer) {
            if session.dtls.close().is_ok() {
                drain_packets(&mut session.dtls, &mut self.scratch, |p| {
                    self.outbox.push(peer, p)
                });
            }
        }
    }

    /// Ends every session (the server is stopping).
    pub(crate) fn close_all(&mut self) {
        let peers: Vec<SocketAddr> = self.sessions.keys().copied().collect();
        for peer in peers {
            self.close(peer);
        }
        self.handshakes.clear();
        self.timers.clear();
    }

    /// A ClientHello: challenged without a valid cookie, else a half-open
    /// handshake (or the retransmission of the one under way).
    fn hello(
        &mut self,
        from: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        hello: &ClientHello,
    ) -> Handled {
        if !self.cookies.verify(from, hello, datagram, now_ms) {
            return self.hello_verify(from, now_ms, datagram, hello);
        }
        if self
            .sessions
            .get(&from)
            .is_some_and(|s| s.random == hello.random)
        {
            // A late copy of the hello that started the session.
            return Handled::Ignored;
        }
        if self
            .handshakes
            .get(&from)
            .is_some_and(|h| h.random == hello.random)
        {
            // The client did not hear the ServerHello flight: the engine
            // sends it again.
            let contents = Contents {
                plaintext: true,
                ..Contents::default()
            };
            return self.feed_handshake(from, now_ms, hello.record(datagram), contents);
        }
        self.start(from, now_ms, datagram, hello)
    }

    /// Answers a hello without a valid cookie with a HelloVerifyRequest,
    /// built here: nothing allocated, nothing kept.
    fn hello_verify(
        &mut self,
        from: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        hello: &ClientHello,
    ) -> Handled {
        let Some(cookie) = self.cookies.make(from, hello, datagram, now_ms) else {
            return Handled::Ignored;
        };
        let mut answer = [0u8; HELLO_VERIFY_LEN];
        let len = hello::write_hello_verify(hello, &cookie, &mut answer);
        // Never more than was sent: the server is no amplifier.
        if len > datagram.len() {
            return Handled::Ignored;
        }
        self.outbox.push(from, &answer);
        self.stats.hello_verifies += 1;
        Handled::HelloVerify
    }

    /// A hello with a valid cookie and a new random: a half-open handshake
    /// in its own table, beside the peer's established session if it has
    /// one.
    fn start(
        &mut self,
        from: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        hello: &ClientHello,
    ) -> Handled {
        let now = self.instant(now_ms);
        let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
        let Ok((mut dtls, resolver)) =
            psk::server_engine(&self.keys, timeout, now, hello.record_sequence)
        else {
            return Handled::Ignored;
        };
        if dtls.handle_packet(hello.record(datagram)).is_err() {
            return Handled::Ignored;
        }
        let mut answer = Vec::new();
        let mut engine_ms = None;
        // Bounded: an engine yields a flight and then its timer.
        for _ in 0..64 {
            match dtls.poll_output(&mut self.scratch) {
                Output::Packet(p) => answer.push(p.to_vec()),
                Output::Timeout(t) => {
                    engine_ms = Some(self.ms_of(t));
                    break;
                }
                Output::BufferTooSmall { needed } => self.scratch.resize(needed, 0),
                _ => {}
            }
        }
        // Only a ServerHello shows the engine took the hello: one that it
        // dropped (no suite in common, no extended master secret) answers
        // nothing, and must not hold a place.
        if !answer.first().is_some_and(|p| is_server_hello(p)) {
            return Handled::Ignored;
        }
        self.make_room_for_handshake(from);
        let last_sequence = answer
            .iter()
            .filter_map(|p| records::last_plaintext_sequence(p))
            .max()
            .unwrap_or(hello.record_sequence);
        for p in &answer {
            self.outbox.push(from, p);
        }
        self.handshakes.insert(
            from,
            Handshake {
                dtls,
                resolver,
                random: hello.random,
                started_ms: now_ms,
                datagrams: 0,
                key_exchange_seen: false,
                change_cipher_spec_seen: false,
                decrypt_failures: 0,
                last_sequence,
                engine_ms,
                scheduled_ms: None,
            },
        );
        self.schedule_handshake(from);
        self.stats.handshakes_started += 1;
        Handled::Started
    }

    /// Records that are not a ClientHello: for the peer's half-open
    /// handshake or its established session.
    fn records(&mut self, from: SocketAddr, now_ms: u64, datagram: &[u8]) -> Handled {
        let in_handshake = self.handshakes.contains_key(&from);
        let in_session = self.sessions.contains_key(&from);
        if !in_handshake && !in_session {
            return Handled::Ignored;
        }
        let screened = records::screen(datagram);
        if in_session {
            // A new handshake's flight carries plaintext records (its
            // ClientKeyExchange, its ChangeCipherSpec); anything else of
            // an established peer is the session's. The new handshake's
            // Finished, when it comes alone, fails to decrypt in the
            // session, which drops it, and goes on to the handshake.
            let for_handshake = in_handshake
                && matches!(
                    screened,
                    Screened::Handshake(Contents {
                        plaintext: true,
                        ..
                    })
                );
            if !for_handshake {
                let handled = self.feed_session(from, now_ms, datagram);
                if !in_handshake || !self.inbox.is_empty() || handled != Handled::Session {
                    return handled;
                }
                // Nothing came of it for the session: the handshake's
                // Finished, sent apart from its ChangeCipherSpec.
            }
        }
        let Screened::Handshake(contents) = screened else {
            return Handled::Ignored;
        };
        if datagram.len() > HANDSHAKE_DATAGRAM_MAX {
            return Handled::Ignored;
        }
        self.feed_handshake(from, now_ms, datagram, contents)
    }

    /// Records for `from`'s half-open handshake, which hold `contents`.
    ///
    /// What cannot advance the handshake yet is dropped before the engine
    /// and not counted, because anyone who knows the device's address and
    /// port can send it: a ChangeCipherSpec before any ClientKeyExchange
    /// (it would wait in the engine's queue), encrypted records before any
    /// ChangeCipherSpec (the engine would drop them). An encrypted record
    /// that fails to decrypt is the client's Finished under a wrong key
    /// when it is a handshake record after the ChangeCipherSpec, or when
    /// it happens a third time; else it is dropped as noise.
    fn feed_handshake(
        &mut self,
        from: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        contents: Contents,
    ) -> Handled {
        let now = self.instant(now_ms);
        let Some(hs) = self.handshakes.get_mut(&from) else {
            return Handled::Ignored;
        };
        let key_exchange = hs.key_exchange_seen || contents.key_exchange;
        let change_cipher_spec = hs.change_cipher_spec_seen || contents.change_cipher_spec;
        if (contents.change_cipher_spec && !key_exchange)
            || (contents.encrypted && !change_cipher_spec)
        {
            return Handled::Ignored;
        }
        hs.datagrams = hs.datagrams.saturating_add(1);
        if hs.datagrams > HANDSHAKE_DATAGRAMS_MAX {
            self.handshakes.remove(&from);
            self.stats.handshakes_failed += 1;
            return Handled::Failed;
        }
        // The client's Finished: an encrypted handshake record with its
        // ChangeCipherSpec, or after it (GnuTLS sends them apart).
        let finished_after_its_change_cipher_spec = contents.encrypted_handshake
            && (contents.change_cipher_spec || hs.change_cipher_spec_seen);
        let result = hs
            .dtls
            .handle_timeout(now)
            .and_then(|()| hs.dtls.handle_packet(datagram));
        match result {
            Ok(()) => {
                hs.key_exchange_seen = key_exchange;
                hs.change_cipher_spec_seen = change_cipher_spec;
            }
            // A full queue is a spoofer's doing or a client's overlong
            // flight: the datagram is dropped, the handshake goes on.
            Err(dimpl::Error::ReceiveQueueFull) => return Handled::Ignored,
            Err(dimpl::Error::CryptoError(_))
                if !finished_after_its_change_cipher_spec
                    && !unknown_identity(&hs.resolver)
                    && hs.decrypt_failures < 2 =>
            {
                hs.decrypt_failures += 1;
                return Handled::Ignored;
            }
            Err(e) => {
                let alert = match e {
                    _ if unknown_identity(&hs.resolver) => Alert::UnknownPskIdentity,
                    dimpl::Error::CryptoError(_) => Alert::DecryptError,
                    _ => Alert::HandshakeFailure,
                };
                self.fail_handshake(from, alert);
                return Handled::Failed;
            }
        }
        self.drain_handshake(from, now_ms)
    }

    /// Ends `from`'s half-open handshake with a fatal alert: it proved
    /// its address with the cookie, so the alert goes to someone who
    /// asked, and it is smaller than the flight it answers.
    fn fail_handshake(&mut self, from: SocketAddr, alert: Alert) {
        let Some(hs) = self.handshakes.remove(&from) else {
            return;
        };
        let mut record = [0u8; ALERT_LEN];
        records::write_alert(alert, hs.last_sequence.saturating_add(1), &mut record);
        self.outbox.push(from, &record);
        self.stats.alerts += 1;
        self.stats.handshakes_failed += 1;
    }

    /// Collects a half-open handshake's output; on Connected the session
    /// moves to the established table.
    fn drain_handshake(&mut self, peer: SocketAddr, now_ms: u64) -> Handled {
        let Some(hs) = self.handshakes.get_mut(&peer) else {
            return Handled::Ignored;
        };
        let mut connected = false;
        hs.engine_ms = None;
        // Bounded: an engine yields its records and events, then its timer.
        for _ in 0..64 {
            match hs.dtls.poll_output(&mut self.scratch) {
                Output::Packet(p) => {
                    if let Some(seq) = records::last_plaintext_sequence(p) {
                        hs.last_sequence = hs.last_sequence.max(seq);
                    }
                    self.outbox.push(peer, p);
                }
                Output::Connected => connected = true,
                Output::Timeout(t) => {
                    hs.engine_ms = Some(ms_after(self.epoch, t));
                    break;
                }
                Output::BufferTooSmall { needed } => self.scratch.resize(needed, 0),
                // Nothing is taken from a peer before it authenticated.
                _ => {}
            }
        }
        if !connected {
            self.schedule_handshake(peer);
            return Handled::Handshake;
        }
        let Some(hs) = self.handshakes.remove(&peer) else {
            return Handled::Ignored;
        };
        self.establish(peer, hs, now_ms)
    }

    /// A completed handshake becomes the peer's session, replacing the
    /// one it had; in a full table the least recently used session makes
    /// room. The identity must still have the key the handshake used.
    fn establish(&mut self, peer: SocketAddr, hs: Handshake, now_ms: u64) -> Handled {
        let identity = hs.resolver.asked.lock().ok().and_then(|mut a| a.take());
        // The handshake used the key of the table it started with: the
        // identity must still have that key now.
        let authorization = identity.as_deref().and_then(|i| {
            let used = hs.resolver.table.key(i)?;
            (self.keys.key(i)? == used).then(|| self.keys.authorization(i))?
        });
        let (Some(identity), Some(authorization)) = (identity, authorization.cloned()) else {
            self.stats.handshakes_failed += 1;
            return Handled::Failed;
        };
        if self.sessions.remove(&peer).is_none() && self.sessions.len() >= self.limits.max_sessions
        {
            // Only a peer that authenticated gets here: the scan is paid
            // per completed handshake, never per datagram.
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(addr, _)| *addr);
            if let Some(addr) = oldest {
                // With close_notify, so the device starts over at once
                // rather than after its retransmissions.
                self.end_session(addr);
                self.stats.sessions_evicted += 1;
            }
        }
        self.sessions.insert(
            peer,
            Session {
                dtls: hs.dtls,
                random: hs.random,
                identity,
                authorization,
                last_ms: now_ms,
                engine_ms: hs.engine_ms,
                scheduled_ms: None,
            },
        );
        self.schedule_session(peer);
        self.stats.connected += 1;
        Handled::Connected
    }

    /// Records for `from`'s established session.
    fn feed_session(&mut self, from: SocketAddr, now_ms: u64, datagram: &[u8]) -> Handled {
        let now = self.instant(now_ms);
        let Some(session) = self.sessions.get_mut(&from) else {
            return Handled::Ignored;
        };
        if records::screen(datagram) == Screened::Refused {
            return Handled::Ignored;
        }
        if let Err(_e) = session
            .dtls
            .handle_timeout(now)
            .and_then(|()| session.dtls.handle_packet(datagram))
        {
            self.sessions.remove(&from);
            return Handled::Failed;
        }
        let handled = self.drain_session(from);
        // Only what decrypted counts as the peer's: a spoofer's records
        // must not keep a dead session from its idle end.
        if !self.inbox.is_empty() {
            if let Some(session) = self.sessions.get_mut(&from) {
                session.last_ms = now_ms;
            }
        }
        handled
    }

    /// Collects a session's output: records to send, requests, events.
    fn drain_session(&mut self, peer: SocketAddr) -> Handled {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return Handled::Ignored;
        };
        let mut handled = Handled::Session;
        let mut closed = false;
        session.engine_ms = None;
        // Bounded: an engine yields its records and events, then its timer.
        for _ in 0..256 {
            match session.dtls.poll_output(&mut self.scratch) {
                Output::Packet(p) => self.outbox.push(peer, p),
                Output::ApplicationData(data) => self.inbox.push(data.to_vec()),
                Output::CloseNotify => {
                    closed = true;
                    handled = Handled::Closed;
                }
                Output::Timeout(t) => {
                    session.engine_ms = Some(ms_after(self.epoch, t));
                    break;
                }
                Output::BufferTooSmall { needed } => self.scratch.resize(needed, 0),
                _ => {}
            }
        }
        if closed {
            // The engine answered the peer's close_notify with its own
            // (RFC 5246 §7.2.1); the records are out above.
            self.sessions.remove(&peer);
            return handled;
        }
        self.schedule_session(peer);
        handled
    }

    /// Makes room for `peer`'s new half-open handshake: its old one goes
    /// (the client started over), then one over the per-source cap
    /// evicts that source's oldest, and one over the overall cap the
    /// oldest of all. Established sessions are never touched. The scans
    /// cover at most `max_handshakes` entries.
    fn make_room_for_handshake(&mut self, peer: SocketAddr) {
        self.handshakes.remove(&peer);
        let source = source_prefix(peer.ip());
        let same_source = self
            .handshakes
            .iter()
            .filter(|(addr, _)| source_prefix(addr.ip()) == source);
        if same_source.clone().count() >= self.limits.handshakes_per_source {
            if let Some(addr) = same_source
                .min_by_key(|(_, h)| h.started_ms)
                .map(|(a, _)| *a)
            {
                self.handshakes.remove(&addr);
                self.stats.handshakes_evicted += 1;
            }
        }
        if self.handshakes.len() >= self.limits.max_handshakes {
            let oldest = self
                .handshakes
                .iter()
                .min_by_key(|(_, h)| h.started_ms)
                .map(|(addr, _)| *addr);
            if let Some(addr) = oldest {
                self.handshakes.remove(&addr);
                self.stats.handshakes_evicted += 1;
            }
        }
    }

    /// A half-open handshake's timer: the engine's retransmission, or its
    /// end after [`HANDSHAKE_TIMEOUT_MS`].
    fn handshake_timer(&mut self, addr: SocketAddr, due: u64, now_ms: u64) {
        let now = self.instant(now_ms);
        let Some(hs) = self.handshakes.get_mut(&addr) else {
            return;
        };
        if hs.scheduled_ms != Some(due) {
            return;
        }
        hs.scheduled_ms = None;
        if now_ms >= hs.started_ms.saturating_add(HANDSHAKE_TIMEOUT_MS) {
            self.handshakes.remove(&addr);
            self.stats.handshakes_failed += 1;
            return;
        }
        if hs.engine_ms.is_some_and(|t| t <= now_ms) {
            if hs.dtls.handle_timeout(now).is_err() {
                self.handshakes.remove(&addr);
                self.stats.handshakes_failed += 1;
                return;
            }
            self.drain_handshake(addr, now_ms);
            return;
        }
        self.schedule_handshake(addr);
    }

    /// An established session's timer: the engine's, or its end after
    /// `session_idle_ms` of silence (with close_notify).
    fn session_timer(&mut self, addr: SocketAddr, due: u64, now_ms: u64) {
        let now = self.instant(now_ms);
        let idle_ms = self.limits.session_idle_ms;
        let Some(session) = self.sessions.get_mut(&addr) else {
            return;
        };
        if session.scheduled_ms != Some(due) {
            return;
        }
        session.scheduled_ms = None;
        if now_ms >= session.last_ms.saturating_add(idle_ms) {
            self.stats.sessions_idle += 1;
            self.close(addr);
            return;
        }
        if session.engine_ms.is_some_and(|t| t <= now_ms) {
            if session.dtls.handle_timeout(now).is_err() {
                self.sessions.remove(&addr);
                return;
            }
            self.drain_session(addr);
            return;
        }
        self.schedule_session(addr);
    }

    /// Puts the handshake's next due time in the heap, unless an entry at
    /// least as early is there already.
    fn schedule_handshake(&mut self, addr: SocketAddr) {
        let Some(hs) = self.handshakes.get_mut(&addr) else {
            return;
        };
        let end = hs.started_ms.saturating_add(HANDSHAKE_TIMEOUT_MS);
        let due = hs.engine_ms.map_or(end, |t| t.min(end));
        if hs.scheduled_ms.is_some_and(|s| s <= due) {
            return;
        }
        hs.scheduled_ms = Some(due);
        self.push_timer(due, Table::Handshakes, addr);
    }

    /// Puts the session's next due time in the heap, unless an entry at
    /// least as early is there already: a datagram that only moves the
    /// idle end later costs nothing here.
    fn schedule_session(&mut self, addr: SocketAddr) {
        let idle_ms = self.limits.session_idle_ms;
        let Some(session) = self.sessions.get_mut(&addr) else {
            return;
        };
        let end = session.last_ms.saturating_add(idle_ms);
        let due = session.engine_ms.map_or(end, |t| t.min(end));
        if session.scheduled_ms.is_some_and(|s| s <= due) {
            return;
        }
        session.scheduled_ms = Some(due);
        self.push_timer(due, Table::Sessions, addr);
    }

    /// Pushes an entry; when stale entries pile up (due times that moved
    /// earlier again and again), the heap is rebuilt from the tables.
    fn push_timer(&mut self, due: u64, table: Table, addr: SocketAddr) {
        self.timers.push(Reverse((due, table, addr)));
        let live = self.handshakes.len() + self.sessions.len();
        if self.timers.len() > 4 * live + 64 {
            let handshakes = self
                .handshakes
                .iter()
                .filter_map(|(a, h)| Some(Reverse((h.scheduled_ms?, Table::Handshakes, *a))));
            let sessions = self
                .sessions
                .iter()
                .filter_map(|(a, s)| Some(Reverse((s.scheduled_ms?, Table::Sessions, *a))));
            self.timers = handshakes.chain(sessions).collect();
        }
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn ms_of(&self, at: Instant) -> u64 {
        ms_after(self.epoch, at)
    }
}

/// The caller's millisecond at or after `at`, rounded up: a timer read
/// back as a millisecond must not come before the engine's own instant,
/// or the engine, woken early, has nothing to do and asks again.
fn ms_after(epoch: Instant, at: Instant) -> u64 {
    let micros = at.saturating_duration_since(epoch).as_micros();
    u64::try_from(micros.div_ceil(1000)).unwrap_or(u64::MAX)
}

/// True when the identity the client named is not in the keys the
/// handshake started with.
fn unknown_identity(resolver: &Resolver) -> bool {
    resolver
        .asked
        .lock()
        .ok()
        .and_then(|asked| asked.as_ref().map(|id| resolver.table.key(id).is_none()))
        .unwrap_or(false)
}

/// The part of an address that counts as one source: an IPv4 address,
/// or an IPv6 /64 (what one host or one site gets).
fn source_prefix(ip: IpAddr) -> [u8; 8] {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [0, 0, 0, 4, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => source_prefix(IpAddr::V4(v4)),
            None => {
                let o = v6.octets();
                [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]
            }
        },
    }
}

/// Sends every record `dtls` has to `each`, up to its timer.
fn drain_packets(dtls: &mut Dtls, scratch: &mut Vec<u8>, mut each: impl FnMut(&[u8])) {
    // Bounded: an engine yields a flight and then its timer.
    for _ in 0..64 {
        match dtls.poll_output(scratch) {
            Output::Packet(p) => each(p),
            Output::Timeout(_) => break,
            Output::BufferTooSmall { needed } => scratch.resize(needed, 0),
            _ => {}
        }
    }
}

/// True when `record` is a plaintext ServerHello.
fn is_server_hello(record: &[u8]) -> bool {
    matches!(record, [22, _, _, 0, 0, _, _, _, _, _, _, _, _, 2, ..])
}

#[cfg(test)]
#[path = "front_tests.rs"]
mod tests;
