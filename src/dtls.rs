//! coaps: DTLS 1.2 with pre-shared keys (RFC 7252 §9.1.3.1,
//! TLS_PSK_WITH_AES_128_CCM_8) in front of the service, sans-IO like the
//! service: datagrams in, records to send and decrypted requests out, and
//! a timer the loop wakes for. The record layer and the handshake are the
//! `dimpl` crate's; this module keeps the per-peer sessions in a bounded
//! table, answers ClientHellos without keeping anything, and knows which
//! identity each session authenticated.
//!
//! # Stateless cookies
//!
//! A ClientHello without a valid cookie gets a HelloVerifyRequest and
//! leaves no trace (RFC 6347 §4.2.1): an address that cannot receive
//! cannot make the server keep a session, and the answer (60 bytes) is
//! smaller than any ClientHello. The engine makes each session's cookie
//! from a secret drawn from its seeded random generator, so the seed of
//! the engine that answers a ClientHello is a keyed hash of the peer's
//! address, the hello's random and a 30-second window: the engine built
//! for the cookie-bearing second hello has the same seed and accepts the
//! cookie. Cookies are valid for the window they were made in and the
//! next. A seed that already started a session is refused for as long as
//! its cookie is valid, so that a recorded handshake cannot be replayed
//! into a session with the same keys.
//!
//! Why a seed and not a cookie secret: dimpl 0.9 draws its cookie secret
//! from the engine's generator when the engine is built and offers no
//! setting for it, and with `use_server_cookie(false)` the engine would
//! answer the first hello with its ServerHello (state for every spoofed
//! hello). Residual risks of the seed, which everything the engine draws
//! comes from (cookie secret, the 28 random bytes of the ServerHello
//! random, the 8-byte explicit nonce of every AES-CCM record):
//!
//! * Key and nonce reuse. The server's randomness is a function of the
//!   seed (64 bits, SipHash-2-4 under a 128-bit key drawn at start,
//!   expanded by the engine's StdRng) and of the Unix second (the first 4
//!   bytes of the ServerHello random). Two handshakes with the same peer
//!   address, client random and window started in the same second get
//!   the same server random, hence the same keys (PSK, both randoms) and
//!   the same record nonces: AES-CCM under a repeated key and nonce leaks
//!   the XOR of the plaintexts and allows forgeries. Only a replay of the
//!   cookie-bearing hello (or a client whose randoms repeat) makes such a
//!   pair; the replay memory refuses it for 60 s in this process, and a
//!   new process has a new key. Handshakes with different inputs get
//!   independent-looking randoms (a seed collision needs about 2^32
//!   handshakes and then still differs in the client random).
//! * Nonces within a session are random 64-bit draws, as dimpl makes them
//!   unseeded: a collision among n records has probability about
//!   n²/2^65 (below 10^-12 for a few thousand blocks).
//! * Availability: when the replay memory is full (4096 handshakes
//!   started within 60 s, which one host able to receive can cause) new
//!   handshakes are refused until entries age out; established sessions
//!   are not affected. Since the keys differ as soon as the second
//!   differs, a memory of two seconds would be enough for the first risk;
//!   the 60 s kept are the conservative choice.

use crate::hash::SipKey;
use crate::service::Authorization;
use dimpl::crypto::{rust_crypto, CryptoProvider, Dtls12CipherSuite, SupportedDtls12CipherSuite};
use dimpl::{Config, Dtls, Output, PskResolver};
use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The coaps port (RFC 7252 §6.2).
pub const DEFAULT_PORT: u16 = 5684;
/// Sessions kept by default (`--max-sessions`).
pub const DEFAULT_MAX_SESSIONS: usize = 1024;
/// How long a cookie window lasts; a cookie is valid in its window and
/// the next.
const COOKIE_WINDOW_MS: u64 = 30_000;
/// Handshakes remembered against replay: more started within two cookie
/// windows are refused until older ones age out.
const REPLAY_MEMORY: usize = 4096;
/// Largest record the engine writes: a CoAP reply of
/// [`crate::service::MAX_REPLY_LEN`] bytes plus the record header, the
/// explicit nonce and the CCM-8 tag.
const MTU: usize = 1400;
/// The length of the HelloVerifyRequest datagram the front answers a
/// ClientHello with: record header 13, handshake header 12, version 2,
/// cookie length 1, cookie 32.
pub const HELLO_VERIFY_LEN: usize = 60;
/// The longest identity or key a PSK file line may hold (RFC 4279 §5.3
/// allows 2^16 bytes; devices use a few dozen).
const MAX_PSK_FIELD: usize = 128;
/// The largest PSK file read.
const MAX_PSK_FILE: u64 = 1 << 20;

/// One identity of a PSK file: its key and what it may fetch.
#[derive(Clone, PartialEq, Eq)]
struct Identity {
    key: Vec<u8>,
    authorization: Authorization,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("authorization", &self.authorization)
            .finish_non_exhaustive()
    }
}

/// The pre-shared keys: identity → key and allowed PIDs, from a PSK file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PskTable {
    identities: HashMap<Vec<u8>, Identity>,
}

impl PskTable {
    /// Parses a PSK file: one `identity:key` or `identity:key:PID,PID...`
    /// per line; a key is ASCII, or hex after `0x`; blank lines and lines
    /// starting with `#` are skipped. Without PIDs an identity may fetch
    /// images of every product.
    ///
    /// # Errors
    /// A message naming the line of the first malformed entry (never the
    /// key).
    pub fn parse(text: &str) -> Result<PskTable, String> {
        let mut identities = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let identity = fields.next().unwrap_or_default();
            let Some(key_text) = fields.next() else {
                return Err(format!(
                    "line {number}: expected identity:key or identity:key:PID,PID"
                ));
            };
            if identity.is_empty() || identity.len() > MAX_PSK_FIELD {
                return Err(format!(
                    "line {number}: the identity must be 1 to {MAX_PSK_FIELD} bytes"
                ));
            }
            let key = parse_key(key_text)
                .ok_or_else(|| format!("line {number}: the key of '{identity}' is invalid: use 1 to {MAX_PSK_FIELD} ASCII bytes or 0x and an even number of hex digits"))?;
            let authorization = match fields.next() {
                None => Authorization::any_pid(),
                Some(list) => {
                    let pids: Vec<&str> = list.split(',').map(str::trim).collect();
                    if pids
                        .iter()
                        .any(|pid| !crate::firmware::valid_pid(pid.as_bytes()))
                    {
                        return Err(format!(
                            "line {number}: '{list}' is not a comma-separated list of PIDs"
                        ));
                    }
                    Authorization::only_pids(pids)
                }
            };
            let entry = Identity { key, authorization };
            if identities
                .insert(identity.as_bytes().to_vec(), entry)
                .is_some()
            {
                return Err(format!("line {number}: identity '{identity}' given twice"));
            }
        }
        Ok(PskTable { identities })
    }

    /// Reads and parses the PSK file at `path`. A file other users can
    /// read is refused: its keys open every session.
    ///
    /// # Errors
    /// A message for the operator naming the file.
    pub fn read(path: &Path) -> Result<PskTable, String> {
        let shown = path.display();
        let text = read_private(path)?;
        let table = PskTable::parse(&text).map_err(|e| format!("PSK file {shown}: {e}"))?;
        if table.is_empty() {
            return Err(format!("the PSK file {shown} holds no identity"));
        }
        Ok(table)
    }

    /// The number of identities.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// True when there is no identity.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// What `identity` may fetch, if it is known.
    pub fn authorization(&self, identity: &[u8]) -> Option<&Authorization> {
        self.identities.get(identity).map(|i| &i.authorization)
    }
}

/// The text of the key file at `path`, refused when other users may read
/// it: its keys let anyone impersonate the devices (or the server).
fn read_private(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read the PSK file {shown}: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("cannot read the PSK file {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "the PSK file {shown} is open to other users (mode {:03o}): its keys let anyone \
             impersonate the devices; chmod o-rwx {shown}",
            mode & 0o777
        ));
    }
    let mut text = String::new();
    file.by_ref()
        .take(MAX_PSK_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the PSK file {shown}: {e}"))?;
    Ok(text)
}

/// A device's identity and key, for the client side of a handshake
/// (`iot-ota-client --psk-identity ID --psk-key KEY`, or `--psk-file`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientPsk {
    identity: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for ClientPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientPsk")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .finish_non_exhaustive()
    }
}

/// The client engine's key lookup: its one key, whatever the server's hint.
struct OwnKey(Vec<u8>);

impl PskResolver for OwnKey {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

impl ClientPsk {
    /// An identity and a key written as in a PSK file (ASCII, or hex
    /// after `0x`).
    ///
    /// # Errors
    /// A message saying which of the two is malformed (never the key).
    pub fn new(identity: &str, key: &str) -> Result<ClientPsk, String> {
        if identity.is_empty() || identity.len() > MAX_PSK_FIELD || identity.contains(':') {
            return Err(format!(
                "the identity must be 1 to {MAX_PSK_FIELD} bytes without ':'"
            ));
        }
        let key = parse_key(key).ok_or_else(|| {
            format!("the key is invalid: use 1 to {MAX_PSK_FIELD} ASCII bytes or 0x and an even number of hex digits")
        })?;
        Ok(ClientPsk {
            identity: identity.as_bytes().to_vec(),
            key,
        })
    }

    /// Reads a key file holding one `identity:key` line (a server's
    /// `identity:key:PIDs` line is taken too; the PIDs are the server's
    /// business). Refused when other users may read it, as the server's.
    ///
    /// # Errors
    /// A message for the user naming the file.
    pub fn read(path: &Path) -> Result<ClientPsk, String> {
        let shown = path.display();
        let table =
            PskTable::parse(&read_private(path)?).map_err(|e| format!("PSK file {shown}: {e}"))?;
        let mut entries = table.identities.into_iter();
        match (entries.next(), entries.next()) {
            (Some((identity, entry)), None) => Ok(ClientPsk {
                identity,
                key: entry.key,
            }),
            _ => Err(format!(
                "the PSK file {shown} must hold exactly one identity:key line"
            )),
        }
    }

    /// The identity sent in the handshake.
    pub fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// A client engine with this key and the server's one suite: its
    /// first flight is sent again after `rto` (doubling, four times), and
    /// the handshake fails after `give_up`. Call
    /// [`Dtls::handle_timeout`] to have it write its ClientHello.
    ///
    /// # Errors
    /// The engine's complaint about the timings (zero, or above ten
    /// years).
    pub fn engine(&self, rto: Duration, give_up: Duration, now: Instant) -> Result<Dtls, String> {
        let config = Config::builder()
            .with_crypto_provider(psk_provider())
            .with_psk_client(self.identity.clone(), Arc::new(OwnKey(self.key.clone())))
            .dtls12_cipher_suites(&[Dtls12CipherSuite::PSK_AES128_CCM_8])
            .dtls13_cipher_suites(&[])
            .mtu(MTU)
            .flight_start_rto(rto)
            .flight_retries(4)
            .handshake_timeout(give_up)
            .build()
            .map_err(|e| format!("the DTLS engine refuses its configuration: {e}"))?;
        let mut dtls = Dtls::new_12_psk(Arc::new(config), now);
        dtls.set_active(true);
        Ok(dtls)
    }
}

/// A key field: `0x` and hex digits, else the ASCII bytes themselves.
fn parse_key(text: &str) -> Option<Vec<u8>> {
    let key = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => {
            if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            hex.as_bytes()
                .chunks_exact(2)
                .map(|pair| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|p| u8::from_str_radix(p, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()?
        }
        None => text.as_bytes().to_vec(),
    };
    (!key.is_empty() && key.len() <= MAX_PSK_FIELD).then_some(key)
}

/// The engine's key lookup for one handshake: it remembers the identity
/// it was asked for, which the engine does not report.
struct Resolver {
    table: Arc<PskTable>,
    asked: Mutex<Option<Vec<u8>>>,
}

impl PskResolver for Resolver {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        if let Ok(mut asked) = self.asked.lock() {
            *asked = Some(identity.to_vec());
        }
        self.table.identities.get(identity).map(|i| i.key.clone())
    }
}

/// The crypto provider with only the PSK suite: building an engine
/// configuration validates every suite and key exchange of its provider,
/// which for the certificate suites costs elliptic-curve operations that
/// every ClientHello would pay.
fn psk_provider() -> CryptoProvider {
    static SUITES: OnceLock<Vec<&'static dyn SupportedDtls12CipherSuite>> = OnceLock::new();
    let full = rust_crypto::default_provider();
    let suites = SUITES.get_or_init(|| {
        full.cipher_suites
            .iter()
            .copied()
            .filter(|s| s.suite() == Dtls12CipherSuite::PSK_AES128_CCM_8)
            .collect()
    });
    CryptoProvider {
        kx_groups: &[],
        cipher_suites: suites.as_slice(),
        ..full
    }
}

/// One peer's session.
struct Session {
    dtls: Dtls,
    resolver: Arc<Resolver>,
    /// Set once the handshake completed: what the identity may fetch.
    authorization: Option<Authorization>,
    /// The identity, once authenticated.
    identity: Option<Vec<u8>>,
    /// Milliseconds of the last datagram from the peer.
    last_ms: u64,
    /// When the engine wants [`Dtls::handle_timeout`].
    timer: Option<Instant>,
    /// It ended (close_notify, or an identity no longer valid).
    closed: bool,
}

/// What happened to a datagram, for counters and log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Records of a session were taken in (requests among them maybe).
    Session,
    /// A handshake completed.
    Connected,
    /// A ClientHello without a valid cookie: answered with a
    /// HelloVerifyRequest, nothing kept.
    HelloVerify,
    /// A ClientHello with a valid cookie started a session.
    Started,
    /// The peer closed its session (close_notify).
    Closed,
    /// The session failed (a wrong key among the reasons) and was removed.
    Failed,
    /// Nothing to do with it: not a ClientHello from a peer without a
    /// session, or a replayed or malformed one.
    Ignored,
}

/// The DTLS front: sessions and what is to be sent.
pub struct Front {
    keys: Arc<PskTable>,
    sessions: HashMap<SocketAddr, Session>,
    capacity: usize,
    cookie_key: SipKey,
    /// The instant of millisecond 0 of the caller's clock.
    epoch: Instant,
    /// Seeds that started a session, with when: refused while fresh.
    replay: VecDeque<(u64, u64)>,
    /// Records to send, with their destination.
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    /// Decrypted datagrams of the last [`Front::receive`].
    inbox: Vec<Vec<u8>>,
    /// The engine's output buffer.
    scratch: Vec<u8>,
    /// Sessions evicted to make room since start.
    evicted: u64,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("identities", &self.keys.len())
            .field("sessions", &self.sessions.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Front {
    /// A front with the keys of `keys`, at most `capacity` sessions (the
    /// oldest idle evicted for a new one), cookies keyed with
    /// `cookie_key`, and millisecond 0 of the caller's clock at `epoch`.
    pub fn new(keys: PskTable, capacity: usize, cookie_key: SipKey, epoch: Instant) -> Front {
        Front {
            keys: Arc::new(keys),
            sessions: HashMap::new(),
            capacity: capacity.max(1),
            cookie_key,
            epoch,
            replay: VecDeque::new(),
            outbox: Vec::new(),
            inbox: Vec::new(),
            scratch: vec![0; MTU + 64],
            evicted: 0,
        }
    }

    /// Uses `keys` from now on (SIGHUP). A session whose identity is gone
    /// or whose key changed is ended; the others get their identity's new
    /// PIDs. Returns how many sessions were ended.
    pub fn replace_keys(&mut self, keys: PskTable, now_ms: u64) -> usize {
        let old = std::mem::replace(&mut self.keys, Arc::new(keys));
        let mut ended = Vec::new();
        for (addr, session) in &mut self.sessions {
            let Some(identity) = &session.identity else {
                // A handshake in progress finishes with the key it
                // resolved; it is checked again once connected.
                continue;
            };
            match (
                old.identities.get(identity),
                self.keys.identities.get(identity),
            ) {
                (Some(before), Some(now)) if before.key == now.key => {
                    session.authorization = Some(now.authorization.clone());
                }
                _ => ended.push(*addr),
            }
        }
        for addr in &ended {
            self.close(*addr, now_ms);
        }
        ended.len()
    }

    /// The number of sessions (in handshake or established).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The number of identities.
    pub fn identity_count(&self) -> usize {
        self.keys.len()
    }

    /// Sessions evicted for new ones since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// True when `peer` has a session (in handshake or established).
    pub fn has_session(&self, peer: SocketAddr) -> bool {
        self.sessions.contains_key(&peer)
    }

    /// The authenticated identity of `peer`'s session, if it has one.
    pub fn identity(&self, peer: SocketAddr) -> Option<&[u8]> {
        self.sessions.get(&peer)?.identity.as_deref()
    }

    /// What `peer`'s session may fetch, once it is established.
    pub fn authorization(&self, peer: SocketAddr) -> Option<&Authorization> {
        self.sessions.get(&peer)?.authorization.as_ref()
    }

    /// Takes in one datagram from `from` at `now_ms`; the requests it
    /// carried are then in [`Front::take_requests`], the records to send
    /// in [`Front::take_outgoing`].
    pub fn receive(&mut self, from: SocketAddr, now_ms: u64, datagram: &[u8]) -> Handled {
        self.inbox.clear();
        let hello = ClientHello::parse(datagram);
        let session_state = self.sessions.get(&from).map(|s| s.authorization.is_some());
        match (hello, session_state) {
            // A hello without a cookie never reaches a session: anyone can
            // send one from a spoofed address.
            (Some(h), _) if h.cookie_empty() => self.verify_hello(from, now_ms, datagram, &h),
            // The client started over (a reboot, a lost session): with a
            // valid cookie its new handshake replaces the old session
            // (RFC 6347 §4.2.8).
            (Some(h), Some(true) | None) => self.start(from, now_ms, datagram, &h),
            (_, Some(_)) => self.feed(from, now_ms, datagram),
            (None, None) => Handled::Ignored,
        }
    }

    /// The requests the last [`Front::receive`] decrypted, oldest first.
    pub fn take_requests(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.inbox)
    }

    /// The records to send, with their destinations.
    pub fn take_outgoing(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Encrypts `plaintext` for `to`'s established session; false when
    /// there is none (the datagram is not sent).
    pub fn send(&mut self, to: SocketAddr, plaintext: &[u8], now_ms: u64) -> bool {
        let Some(session) = self.sessions.get_mut(&to) else {
            return false;
        };
        if session.authorization.is_none() || session.closed {
            return false;
        }
        if session.dtls.send_application_data(plaintext).is_err() {
            self.remove(to);
            return false;
        }
        self.drain(to, now_ms);
        true
    }

    /// The earliest millisecond a session's timer is due.
    pub fn next_timer_ms(&self) -> Option<u64> {
        self.sessions
            .values()
            .filter_map(|s| s.timer)
            .min()
            .map(|t| self.ms_of(t))
    }

    /// Runs the timers due at `now_ms`: handshake retransmissions, and
    /// the end of handshakes that timed out.
    pub fn on_timers(&mut self, now_ms: u64) {
        let now = self.instant(now_ms);
        let due: Vec<SocketAddr> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.timer.is_some_and(|t| t <= now))
            .map(|(addr, _)| *addr)
            .collect();
        for addr in due {
            let Some(session) = self.sessions.get_mut(&addr) else {
                continue;
            };
            session.timer = None;
            if session.dtls.handle_timeout(now).is_err() {
                log::debug!("{addr} coaps session timed out");
                self.remove(addr);
                continue;
            }
            self.drain(addr, now_ms);
        }
    }

    /// Ends `peer`'s session, sending close_notify when it is established.
    pub fn close(&mut self, peer: SocketAddr, now_ms: u64) {
        if let Some(session) = self.sessions.get_mut(&peer) {
            if session.dtls.close().is_ok() {
                self.drain(peer, now_ms);
            }
        }
        self.remove(peer);
    }

    /// Ends every session (the server is stopping).
    pub fn close_all(&mut self, now_ms: u64) {
        let peers: Vec<SocketAddr> = self.sessions.keys().copied().collect();
        for peer in peers {
            self.close(peer, now_ms);
        }
    }

    /// A hello without a (valid) cookie: a HelloVerifyRequest from an
    /// engine that is thrown away at once.
    fn verify_hello(
        &mut self,
        from: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        hello: &ClientHello,
    ) -> Handled {
        let seed = self.seed(from, &hello.random, now_ms / COOKIE_WINDOW_MS);
        let mut dtls = self.engine(seed, now_ms).0;
        if dtls.handle_packet(hello.record(datagram)).is_err() {
            return Handled::Ignored;
        }
        let mut answer = Vec::new();
        drain_packets(&mut dtls, &mut self.scratch, |p| answer.push(p.to_vec()));
        let total: usize = answer.iter().map(Vec::len).sum();
        // Never more than was sent: the server is no amplifier.
        if total > datagram.len() || total == 0 {
            return Handled::Ignored;
        }
        self.outbox.extend(answer.into_iter().map(|p| (from, p)));
        Handled::HelloVerify
    }

    /// A hello with a cookie: a session when the cookie is valid, else a
    /// new HelloVerifyRequest.
    fn start(
        &mut self,
        from: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        hello: &ClientHello,
    ) -> Handled {
        let Some(first) = hello.as_first_hello(datagram) else {
            return Handled::Ignored;
        };
        let window = now_ms / COOKIE_WINDOW_MS;
        for w in [window, window.saturating_sub(1)] {
            let seed = self.seed(from, &hello.random, w);
            let (mut dtls, resolver) = self.engine(seed, now_ms);
            // The engine answers a first hello (its HelloVerifyRequest is
            // what the client already got) and then takes the second.
            if dtls.handle_packet(&first).is_err() {
                return Handled::Ignored;
            }
            drain_packets(&mut dtls, &mut self.scratch, |_| {});
            if dtls.handle_packet(hello.record(datagram)).is_err() {
                return Handled::Ignored;
            }
            let mut answer = Vec::new();
            let mut timer = None;
            let mut verify_again = false;
            // Bounded: an engine yields a flight and then its timer.
            for _ in 0..64 {
                match dtls.poll_output(&mut self.scratch) {
                    Output::Packet(p) => {
                        verify_again |= is_hello_verify(p);
                        answer.push(p.to_vec());
                    }
                    Output::Timeout(t) => {
                        timer = Some(t);
                        break;
                    }
                    Output::BufferTooSmall { needed } => self.scratch.resize(needed, 0),
                    _ => {}
                }
            }
            if verify_again {
                // The cookie is not this window's: try the previous one,
                // then challenge again (the cookie expired or is forged).
                if w == window.saturating_sub(1) || window == 0 {
                    let total: usize = answer.iter().map(Vec::len).sum();
                    if total <= datagram.len() {
                        self.outbox.extend(answer.into_iter().map(|p| (from, p)));
                        return Handled::HelloVerify;
                    }
                    return Handled::Ignored;
                }
                continue;
            }
            // Only a ServerHello shows the engine took the hello: an
            // engine that silently dropped a malformed one (no suites, a
            // short body) answers nothing, and must not become a session.
            if !answer.first().is_some_and(|p| is_server_hello(p)) {
                return Handled::Ignored;
            }
            if !self.remember_seed(seed, now_ms) {
                log::debug!("{from} coaps ClientHello replayed: ignored");
                return Handled::Ignored;
            }
            self.make_room(from);
            self.outbox.extend(answer.into_iter().map(|p| (from, p)));
            self.sessions.insert(
                from,
                Session {
                    dtls,
                    resolver,
                    authorization: None,
                    identity: None,
                    last_ms: now_ms,
                    timer,
                    closed: false,
                },
            );
            return Handled::Started;
        }
        Handled::Ignored
    }

    /// Records for an existing session.
    fn feed(&mut self, from: SocketAddr, now_ms: u64, datagram: &[u8]) -> Handled {
        let Some(session) = self.sessions.get_mut(&from) else {
            return Handled::Ignored;
        };
        session.last_ms = now_ms;
        let now = self.epoch + Duration::from_millis(now_ms);
        if let Err(e) = session
            .dtls
            .handle_timeout(now)
            .and_then(|()| session.dtls.handle_packet(datagram))
        {
            log::debug!("{from} coaps session failed: {e}");
            self.remove(from);
            return Handled::Failed;
        }
        self.drain(from, now_ms)
    }

    /// Collects a session's output: records to send, requests, events.
    fn drain(&mut self, peer: SocketAddr, now_ms: u64) -> Handled {
        let mut handled = Handled::Session;
        let Some(session) = self.sessions.get_mut(&peer) else {
            return Handled::Ignored;
        };
        session.timer = None;
        // Bounded: an engine yields its records and events, then its timer.
        for _ in 0..256 {
            match session.dtls.poll_output(&mut self.scratch) {
                Output::Packet(p) => self.outbox.push((peer, p.to_vec())),
                // Nothing is taken from a peer before it authenticated.
                Output::ApplicationData(data) if session.authorization.is_some() => {
                    self.inbox.push(data.to_vec());
                }
                Output::Connected => {
                    let identity = session
                        .resolver
                        .asked
                        .lock()
                        .ok()
                        .and_then(|mut a| a.take());
                    // The handshake used the key of the table it started
                    // with: the identity must still have that key now.
                    let entry = identity.as_deref().and_then(|i| {
                        let used = session.resolver.table.identities.get(i)?;
                        self.keys
                            .identities
                            .get(i)
                            .filter(|now| now.key == used.key)
                    });
                    match (identity, entry) {
                        (Some(identity), Some(entry)) => {
                            session.authorization = Some(entry.authorization.clone());
                            session.identity = Some(identity);
                            handled = Handled::Connected;
                        }
                        _ => session.closed = true,
                    }
                }
                Output::CloseNotify => {
                    session.closed = true;
                    handled = Handled::Closed;
                }
                Output::Timeout(t) => {
                    session.timer = Some(t);
                    break;
                }
                Output::BufferTooSmall { needed } => self.scratch.resize(needed, 0),
                _ => {}
            }
        }
        let _ = now_ms;
        if session.closed {
            if handled == Handled::Closed {
                // Answer the peer's close_notify with ours (RFC 5246
                // §7.2.1), then forget the session.
                if session.dtls.close().is_ok() {
                    drain_packets(&mut session.dtls, &mut self.scratch, |p| {
                        self.outbox.push((peer, p.to_vec()))
                    });
                }
            }
            self.remove(peer);
        }
        handled
    }

    /// Forgets `peer`'s session.
    fn remove(&mut self, peer: SocketAddr) {
        self.sessions.remove(&peer);
    }

    /// Makes room for `peer`'s new session: the session the peer had is
    /// replaced, else in a full table the one idle the longest goes.
    fn make_room(&mut self, peer: SocketAddr) {
        if self.sessions.remove(&peer).is_some() || self.sessions.len() < self.capacity {
            return;
        }
        let oldest = self
            .sessions
            .iter()
            .min_by_key(|(_, s)| s.last_ms)
            .map(|(addr, _)| *addr);
        if let Some(addr) = oldest {
            log::debug!("{addr} coaps session evicted for a new one (--max-sessions)");
            self.sessions.remove(&addr);
            self.evicted += 1;
        }
    }

    /// Records that `seed` started a session; false when it already did
    /// while its cookie could still be valid, or when the memory is full of
    /// such seeds.
    fn remember_seed(&mut self, seed: u64, now_ms: u64) -> bool {
        let fresh_ms = 2 * COOKIE_WINDOW_MS;
        while self
            .replay
            .front()
            .is_some_and(|(_, at)| now_ms.saturating_sub(*at) > fresh_ms)
        {
            self.replay.pop_front();
        }
        if self.replay.iter().any(|(s, _)| *s == seed) || self.replay.len() >= REPLAY_MEMORY {
            return false;
        }
        self.replay.push_back((seed, now_ms));
        true
    }

    /// The engine seed for a hello with `random` from `peer` in cookie
    /// window `window`.
    fn seed(&self, peer: SocketAddr, random: &[u8; 32], window: u64) -> u64 {
        let mut h = self.cookie_key.hasher();
        h.write_u64(window);
        let ip = match peer.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        h.write(&ip.octets());
        h.write_u16(peer.port());
        h.write(random);
        h.finish()
    }

    /// A server engine with the PSK suite only, seeded with `seed`.
    fn engine(&self, seed: u64, now_ms: u64) -> (Dtls, Arc<Resolver>) {
        let resolver = Arc::new(Resolver {
            table: Arc::clone(&self.keys),
            asked: Mutex::new(None),
        });
        let config = Config::builder()
            .with_crypto_provider(psk_provider())
            .with_psk_server(None, resolver.clone())
            .dtls12_cipher_suites(&[Dtls12CipherSuite::PSK_AES128_CCM_8])
            .dtls13_cipher_suites(&[])
            .mtu(MTU)
            .dangerously_set_rng_seed(seed)
            .build();
        let config = match config {
            Ok(config) => config,
            // The settings above are fixed: a failure is a bug of the
            // engine's version, and every handshake would fail alike.
            Err(e) => panic!("the DTLS engine refuses its configuration: {e}"),
        };
        let now = self.instant(now_ms);
        let mut dtls = Dtls::new_12_psk(Arc::new(config), now);
        // The engine draws its random for the ServerHello on its first
        // timer call: before any record.
        let _ = dtls.handle_timeout(now);
        (dtls, resolver)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn ms_of(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
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

/// True when `record` is a plaintext HelloVerifyRequest.
fn is_hello_verify(record: &[u8]) -> bool {
    matches!(record, [22, _, _, 0, 0, _, _, _, _, _, _, _, _, 3, ..])
}

/// Where the parts of an unfragmented ClientHello are in its datagram's
/// first record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientHello {
    /// The length of the first record, header included.
    record_len: usize,
    /// The client's random.
    random: [u8; 32],
    /// Where the cookie is.
    cookie: std::ops::Range<usize>,
}

/// Record header: type 1, version 2, epoch 2, sequence 6, length 2.
const RECORD_HEADER: usize = 13;
/// Handshake header: type 1, length 3, message_seq 2, fragment offset 3,
/// fragment length 3.
const HANDSHAKE_HEADER: usize = 12;

impl ClientHello {
    /// The ClientHello at the start of `datagram`, if it begins with one
    /// in a plaintext handshake record, whole.
    fn parse(datagram: &[u8]) -> Option<ClientHello> {
        let header = datagram.get(..RECORD_HEADER)?;
        // Handshake, epoch 0.
        if header.first() != Some(&22) || header.get(3..5) != Some(&[0, 0]) {
            return None;
        }
        let length = usize::from(u16::from_be_bytes([*header.get(11)?, *header.get(12)?]));
        let record_len = RECORD_HEADER + length;
        let record = datagram.get(..record_len)?;
        let handshake = record.get(RECORD_HEADER..)?;
        let u24 = |at: usize| -> Option<usize> {
            let b = handshake.get(at..at + 3)?;
            Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
        };
        let total = u24(1)?;
        if handshake.first() != Some(&1) || u24(6)? != 0 || u24(9)? != total {
            return None;
        }
        let body_start = RECORD_HEADER + HANDSHAKE_HEADER;
        let body = record.get(body_start..body_start + total)?;
        let random: [u8; 32] = body.get(2..34)?.try_into().ok()?;
        let session_id_len = usize::from(*body.get(34)?);
        let cookie_len_at = 35 + session_id_len;
        let cookie_len = usize::from(*body.get(cookie_len_at)?);
        let cookie_start = body_start + cookie_len_at + 1;
        let cookie = cookie_start..cookie_start + cookie_len;
        record.get(cookie.clone())?;
        Some(ClientHello {
            record_len,
            random,
            cookie,
        })
    }

    fn cookie_empty(&self) -> bool {
        self.cookie.is_empty()
    }

    /// The hello's record alone (a datagram may carry more after it).
    fn record<'d>(&self, datagram: &'d [u8]) -> &'d [u8] {
        datagram.get(..self.record_len).unwrap_or(datagram)
    }

    /// The first hello this cookie-bearing one followed, as the engine
    /// needs to have seen it: message_seq 0, a record sequence number
    /// before this one's, and a cookie it will not accept (one byte
    /// changed), so that it answers with a HelloVerifyRequest and then
    /// waits for this hello.
    fn as_first_hello(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        let mut first = self.record(datagram).to_vec();
        let seq_at = RECORD_HEADER + 4;
        first.get_mut(seq_at..seq_at + 2)?.copy_from_slice(&[0, 0]);
        let record_seq = first.get_mut(5..11)?;
        let mut seq = [0u8; 8];
        seq.get_mut(2..)?.copy_from_slice(record_seq);
        let before = u64::from_be_bytes(seq).saturating_sub(1).to_be_bytes();
        record_seq.copy_from_slice(before.get(2..)?);
        *first.get_mut(self.cookie.start)? ^= 0xff;
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_files_hold_identities_keys_and_pids() {
        let table = PskTable::parse(
            "# devices\n\
             \n\
             sensor-1:secretkey\n\
             sensor-2:0x00112233445566778899aabbccddeeff:FOO,BAR\n",
        )
        .expect("valid file");
        assert_eq!(table.len(), 2);
        let one = table.identities.get(&b"sensor-1"[..]).expect("sensor-1");
        assert_eq!(one.key, b"secretkey");
        assert!(one.authorization.allows(b"ANY"));
        let two = table.identities.get(&b"sensor-2"[..]).expect("sensor-2");
        assert_eq!(two.key.len(), 16);
        assert_eq!(two.key.first(), Some(&0x00));
        assert_eq!(two.key.last(), Some(&0xff));
        assert!(two.authorization.allows(b"FOO"));
        assert!(two.authorization.allows(b"BAR"));
        assert!(!two.authorization.allows(b"BAZ"));
    }

    #[test]
    fn malformed_psk_lines_are_refused_by_line_without_the_key() {
        for (text, line) in [
            ("a:k\nnocolon\n", "line 2"),
            (":key\n", "line 1"),
            ("a:\n", "line 1"),
            ("a:0x123\n", "line 1"),
            ("a:0xzz\n", "line 1"),
            ("a:k\na:k2\n", "line 2"),
            ("a:k:\n", "line 1"),
            ("a:k:FOO,,BAR\n", "line 1"),
        ] {
            let e = PskTable::parse(text).expect_err(text);
            assert!(e.starts_with(line), "{text:?}: {e}");
            assert!(!e.contains("k2"), "{e}");
        }
    }

    /// A DTLS 1.2 ClientHello record with `cookie`, message_seq `seq`.
    fn hello(cookie: &[u8], seq: u16) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&seq.to_be_bytes());
        hs.extend_from_slice(&[0, 0, 0]);
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        record
    }

    #[test]
    fn client_hellos_are_found_and_other_records_are_not() {
        let h = ClientHello::parse(&hello(&[], 0)).expect("a hello");
        assert!(h.cookie_empty());
        assert_eq!(h.random, [7; 32]);
        let with = hello(&[9; 32], 1);
        let h = ClientHello::parse(&with).expect("a hello");
        assert_eq!(with.get(h.cookie.clone()), Some(&[9u8; 32][..]));
        let first = h.as_first_hello(&with).expect("first");
        assert_eq!(first.len(), with.len());
        assert_eq!(first.get(17..19), Some(&[0u8, 0][..]));
        assert_ne!(first.get(h.cookie.clone()), with.get(h.cookie.clone()));
        let mut app_data = with.clone();
        app_data[0] = 23;
        assert_eq!(ClientHello::parse(&app_data), None);
        for cut in 0..with.len() {
            assert_eq!(ClientHello::parse(&with[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_hello_without_cookie_gets_a_smaller_verify_request_and_leaves_no_session() {
        let table = PskTable::parse("id:key\n").expect("valid");
        let mut front = Front::new(table, 4, SipKey([1, 2]), Instant::now());
        let peer: SocketAddr = "192.0.2.1:4000".parse().expect("addr");
        let datagram = hello(&[], 0);
        assert_eq!(front.receive(peer, 5, &datagram), Handled::HelloVerify);
        let out = front.take_outgoing();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), HELLO_VERIFY_LEN);
        assert!(is_hello_verify(&out[0].1));
        assert!(out[0].1.len() <= datagram.len());
        assert_eq!(front.session_count(), 0);
        // A forged cookie: challenged again, nothing kept.
        assert_eq!(
            front.receive(peer, 6, &hello(&[3; 32], 1)),
            Handled::HelloVerify
        );
        assert_eq!(front.session_count(), 0);
    }
}
