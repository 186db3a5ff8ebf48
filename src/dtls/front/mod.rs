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

mod handshake;
mod session;

use super::cert::DeviceNames;
use super::cert::{self, CertificateAuth, Refusal};
use super::hello::{self, ClientHello, CookieSecrets, HELLO_VERIFY_LEN};
use super::psk::{self, PskTable, Resolver};
use super::records::{self, Alert, Contents, Mode, Screened, ALERT_LEN};
use super::rpk::{Fingerprint, RawKeyAuth, RawPublicKeys};
use super::{Entropy, Limits};
use crate::service::Authorization;
use dimpl::{Dtls, Output};
use handshake::Handshake;
use session::Session;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a cookie secret is current; a cookie is valid for up to two
/// such periods.
const COOKIE_PERIOD_MS: u64 = 30_000;
/// The engine's output buffer: a record of at most [`super::MTU`] bytes,
/// or the peer's certificate, which is no larger than the datagram that
/// carried it ([`Mode::datagram_max`]: handshake messages come whole).
const SCRATCH_LEN: usize = 2048;
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
    /// Certificate or raw public key hellos with a valid cookie dropped
    /// because this second's public key handshakes had started.
    pub deferred: u64,
    /// Datagrams dropped unread.
    pub ignored: u64,
}

impl std::fmt::Display for FrontStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "coaps: hello verifies {} handshakes started {} evicted {} failed {} alerts {} \
             connected {} sessions evicted {} idle {} ignored {} deferred {}",
            self.hello_verifies,
            self.handshakes_started,
            self.handshakes_evicted,
            self.handshakes_failed,
            self.alerts,
            self.connected,
            self.sessions_evicted,
            self.sessions_idle,
            self.ignored,
            self.deferred
        )
    }
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

/// Certificate handshakes: the check of client certificates, the engine
/// configuration, and the wall clock the certificates' dates are read
/// against.
struct Certificates {
    auth: CertificateAuth,
    config: Arc<dimpl::Config>,
    /// Milliseconds since 1970 at millisecond 0 of the caller's clock.
    epoch_unix_ms: u64,
}

/// Raw public key handshakes: the server's key pair and the clients'
/// keys, and the engine configuration (that of certificates).
struct RawKeys {
    auth: RawKeyAuth,
    config: Arc<dimpl::Config>,
}

/// The DTLS front: handshakes, sessions and what is to be sent.
pub struct Front {
    keys: Arc<PskTable>,
    certificates: Option<Certificates>,
    raw_keys: Option<RawKeys>,
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
    /// The second (of the caller's clock) of the public key handshakes
    /// counted in `public_key_started`.
    public_key_second: u64,
    public_key_started: usize,
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
            certificates: None,
            raw_keys: None,
            limits: limits.sane(),
            cookies: CookieSecrets::new(entropy, COOKIE_PERIOD_MS),
            handshakes: HashMap::new(),
            sessions: HashMap::new(),
            timers: BinaryHeap::new(),
            epoch,
            outbox: Outbox::default(),
            inbox: Vec::new(),
            scratch: vec![0; SCRATCH_LEN],
            stats: FrontStats::default(),
            public_key_second: 0,
            public_key_started: 0,
        }
    }

    /// Serves certificate handshakes too, beside the PSK ones: a
    /// ClientHello whose first suite the server can serve is an
    /// ECDHE-ECDSA one gets the server's certificate, and its client must
    /// send one `auth` accepts. `epoch_unix_ms` is the wall clock
    /// (milliseconds since 1970) at millisecond 0 of the caller's clock:
    /// a certificate issued a moment ago is valid from its second on.
    ///
    /// # Errors
    /// The engine's complaint about its configuration.
    pub fn with_certificates(
        mut self,
        auth: CertificateAuth,
        epoch_unix_ms: u64,
    ) -> Result<Front, String> {
        let config = cert::server_config(Duration::from_millis(HANDSHAKE_TIMEOUT_MS))?;
        self.certificates = Some(Certificates {
            auth,
            config,
            epoch_unix_ms,
        });
        Ok(self)
    }

    /// Serves raw public key handshakes too (RFC 7250): a ClientHello
    /// with an ECDHE-ECDSA suite that asks for raw public keys both ways
    /// gets the server's public key, and its client's key must be one of
    /// `auth`'s.
    ///
    /// # Errors
    /// The engine's complaint about its configuration.
    pub fn with_raw_public_keys(mut self, auth: RawKeyAuth) -> Result<Front, String> {
        let config = cert::server_config(Duration::from_millis(HANDSHAKE_TIMEOUT_MS))?;
        self.raw_keys = Some(RawKeys { auth, config });
        Ok(self)
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
            if session.mode != Mode::Psk {
                continue;
            }
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

    /// Uses `names` for certificate devices from now on (SIGHUP): a
    /// certificate session keeps its device's name and gets that name's
    /// products under the new names (none when the file no longer holds
    /// it). Half-open handshakes check their certificate against the new
    /// names. Returns how many sessions were updated; nothing without
    /// certificates.
    pub(crate) fn replace_device_names(&mut self, names: Option<DeviceNames>) -> usize {
        let Some(certificates) = self.certificates.as_mut() else {
            return 0;
        };
        certificates.auth.replace_names(names);
        let mut updated = 0;
        for session in self.sessions.values_mut() {
            if session.mode == Mode::Certificate {
                session.authorization = certificates.auth.authorization_of(&session.identity);
                updated += 1;
            }
        }
        updated
    }

    /// Uses `keys` as the accepted client keys from now on (SIGHUP): the
    /// session of a key no longer listed is ended (with close_notify),
    /// the others take their key's name and products as now listed.
    /// Returns how many sessions were ended; nothing without raw keys.
    pub(crate) fn replace_raw_keys(&mut self, keys: RawPublicKeys) -> usize {
        let Some(raw_keys) = self.raw_keys.as_mut() else {
            return 0;
        };
        raw_keys.auth.replace_clients(keys);
        let mut ended = Vec::new();
        for (addr, session) in &mut self.sessions {
            if session.mode != Mode::RawPublicKey {
                continue;
            }
            match session.key.and_then(|k| raw_keys.auth.listed(&k)) {
                Some((name, authorization)) => {
                    session.identity = name.clone();
                    session.authorization = authorization.clone();
                }
                None => ended.push(*addr),
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

    /// Records that are not a ClientHello: for the peer's half-open
    /// handshake or its established session.
    fn records(&mut self, from: SocketAddr, now_ms: u64, datagram: &[u8]) -> Handled {
        let in_handshake = self.handshakes.contains_key(&from);
        let in_session = self.sessions.contains_key(&from);
        if !in_handshake && !in_session {
            return Handled::Ignored;
        }
        let mode = match (self.handshakes.get(&from), self.sessions.get(&from)) {
            (Some(h), _) => h.mode,
            (None, Some(s)) => s.mode,
            (None, None) => Mode::Psk,
        };
        let screened = records::screen(datagram, mode);
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
        if datagram.len() > mode.datagram_max() {
            return Handled::Ignored;
        }
        self.feed_handshake(from, now_ms, datagram, contents)
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
}

/// The caller's millisecond at or after `at`, rounded up: a timer read
/// back as a millisecond must not come before the engine's own instant,
/// or the engine, woken early, has nothing to do and asks again.
fn ms_after(epoch: Instant, at: Instant) -> u64 {
    let micros = at.saturating_duration_since(epoch).as_micros();
    u64::try_from(micros.div_ceil(1000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
