//! Half-open handshakes: a cookie-verified ClientHello becomes one, the
//! records screened for it reach its engine, it ends on a budget, a
//! timeout or an alert, and a completed one becomes a session.

use super::*;

/// A handshake in progress: the peer proved it receives at its address
/// (the cookie), nothing more.
pub(super) struct Handshake {
    pub(super) dtls: Dtls,
    pub(super) mode: Mode,
    /// Who the peer says it is, as far as the handshake got.
    pub(super) peer: Peer,
    /// The fingerprint of a raw public key client's key, once accepted.
    pub(super) key: Option<Fingerprint>,
    /// The ClientHello's random: the same again is a retransmission, a
    /// new one a client that started over.
    pub(super) random: [u8; 32],
    pub(super) started_ms: u64,
    /// Datagrams given to the engine.
    pub(super) datagrams: u8,
    /// A ClientKeyExchange reached the engine: a ChangeCipherSpec may
    /// follow (before it one is noise, kept in the engine's queue).
    pub(super) key_exchange_seen: bool,
    /// A ChangeCipherSpec reached the engine: encrypted records may be
    /// the Finished (before it the engine drops them anyway).
    pub(super) change_cipher_spec_seen: bool,
    /// Encrypted records that failed to decrypt without a
    /// ChangeCipherSpec beside them.
    pub(super) decrypt_failures: u8,
    /// The last epoch-0 record number the engine wrote, so that an alert
    /// follows it.
    pub(super) last_sequence: u64,
    /// When the engine wants [`Dtls::handle_timeout`].
    pub(super) engine_ms: Option<u64>,
    /// The earliest due time this handshake has in the timer heap.
    pub(super) scheduled_ms: Option<u64>,
}

/// Who the peer of a half-open handshake says it is.
pub(super) enum Peer {
    /// A PSK handshake: the keys it started with and the identity the
    /// client named, once it did.
    Psk(Arc<Resolver>),
    /// A certificate handshake: the device's name and what it may fetch,
    /// once its certificate was accepted.
    Certificate(Option<(Vec<u8>, Authorization)>),
}

impl Peer {
    /// True when the PSK identity the client named is not in the keys the
    /// handshake started with.
    fn unknown_identity(&self) -> bool {
        match self {
            Peer::Psk(resolver) => unknown_identity(resolver),
            Peer::Certificate(_) => false,
        }
    }
}

impl Front {
    /// The mode of a hello with a valid cookie: that of the first suite
    /// it offers that the server serves (the client's preference).
    fn mode_of(&self, hello: &ClientHello, datagram: &[u8]) -> Option<Mode> {
        let psk = !self.keys.is_empty();
        let certificates = self.certificates.is_some();
        let raw_keys =
            self.raw_keys.is_some() && hello.wants_raw_public_keys(datagram, certificates);
        hello.suites(datagram).find_map(|suite| {
            let suite = dimpl::crypto::Dtls12CipherSuite::from_u16(suite);
            if psk && suite == dimpl::crypto::Dtls12CipherSuite::PSK_AES128_CCM_8 {
                Some(Mode::Psk)
            } else if !cert::SUITES.contains(&suite) {
                None
            } else if raw_keys {
                Some(Mode::RawPublicKey)
            } else if certificates {
                Some(Mode::Certificate)
            } else {
                None
            }
        })
    }

    /// Takes one of this second's public key handshakes; false when they
    /// are all taken. A second of the caller's clock, not a sliding
    /// window: at most twice the rate across a second's edge.
    fn public_key_budget(&mut self, now_ms: u64) -> bool {
        let second = now_ms / 1000;
        if second != self.public_key_second {
            self.public_key_second = second;
            self.public_key_started = 0;
        }
        if self.public_key_started >= self.limits.public_key_handshakes_per_s {
            return false;
        }
        self.public_key_started += 1;
        true
    }

    /// A hello with a valid cookie and a new random: a half-open handshake
    /// in its own table, beside the peer's established session if it has
    /// one.
    pub(super) fn start(
        &mut self,
        from: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        hello: &ClientHello,
    ) -> Handled {
        let now = self.instant(now_ms);
        let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
        let Some(mode) = self.mode_of(hello, datagram) else {
            return Handled::Ignored;
        };
        if mode != Mode::Psk && !self.public_key_budget(now_ms) {
            self.stats.deferred += 1;
            return Handled::Ignored;
        }
        let sequence = hello.record_sequence;
        let engine = match (mode, &self.certificates, &self.raw_keys) {
            (Mode::Certificate, Some(c), _) => {
                cert::server_engine(&c.config, &c.auth.server, now, sequence, false)
                    .map(|dtls| (dtls, Peer::Certificate(None)))
            }
            (Mode::RawPublicKey, _, Some(r)) => {
                cert::server_engine(&r.config, &r.auth.server, now, sequence, true)
                    .map(|dtls| (dtls, Peer::Certificate(None)))
            }
            _ => psk::server_engine(&self.keys, timeout, now, sequence)
                .map(|(dtls, resolver)| (dtls, Peer::Psk(resolver))),
        };
        let Ok((mut dtls, peer)) = engine else {
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
                    engine_ms = Some(ms_after(self.epoch, t));
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
                mode,
                peer,
                key: None,
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
    pub(super) fn feed_handshake(
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
                    && !hs.peer.unknown_identity()
                    && hs.decrypt_failures < 2 =>
            {
                hs.decrypt_failures += 1;
                return Handled::Ignored;
            }
            Err(e) => {
                let alert = match e {
                    _ if hs.peer.unknown_identity() => Alert::UnknownPskIdentity,
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
    pub(super) fn fail_handshake(&mut self, from: SocketAddr, alert: Alert) {
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
    pub(super) fn drain_handshake(&mut self, peer: SocketAddr, now_ms: u64) -> Handled {
        let Some(hs) = self.handshakes.get_mut(&peer) else {
            return Handled::Ignored;
        };
        let mut connected = false;
        let mut refused = None;
        hs.engine_ms = None;
        // Bounded: an engine yields its records and events, then its timer.
        for _ in 0..64 {
            match hs.dtls.poll_output(&mut self.scratch) {
                // Before anything the engine wrote after taking the
                // certificate in (its Finished among them) goes out.
                Output::PeerCert(der) => {
                    let checked = match (hs.mode, &self.certificates, &self.raw_keys) {
                        (Mode::Certificate, Some(c), _) => {
                            let now_s = c.epoch_unix_ms.saturating_add(now_ms) / 1000;
                            Some(c.auth.check(der, now_s))
                        }
                        (Mode::RawPublicKey, _, Some(r)) => {
                            hs.key = Some(crate::dtls::rpk::fingerprint(der));
                            Some(r.auth.check(der))
                        }
                        _ => None,
                    };
                    match (checked, &mut hs.peer) {
                        (Some(Ok(accepted)), Peer::Certificate(slot)) => *slot = Some(accepted),
                        (Some(Err(refusal)), _) => {
                            refused = Some(refusal);
                            break;
                        }
                        _ => {
                            refused = Some(Refusal::Unsupported);
                            break;
                        }
                    }
                }
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
        if let Some(refusal) = refused {
            self.fail_handshake(peer, refusal_alert(refusal));
            return Handled::Failed;
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
    pub(super) fn establish(&mut self, peer: SocketAddr, hs: Handshake, now_ms: u64) -> Handled {
        let (identity, authorization) = match &hs.peer {
            Peer::Psk(resolver) => {
                let identity = resolver.asked.lock().ok().and_then(|mut a| a.take());
                // The handshake used the key of the table it started
                // with: the identity must still have that key now.
                let authorization = identity.as_deref().and_then(|i| {
                    let used = resolver.table.key(i)?;
                    (self.keys.key(i)? == used).then(|| self.keys.authorization(i))?
                });
                (identity, authorization.cloned())
            }
            Peer::Certificate(accepted) => match accepted {
                Some((name, authorization)) => (Some(name.clone()), Some(authorization.clone())),
                None => (None, None),
            },
        };
        let (Some(identity), Some(authorization)) = (identity, authorization) else {
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
                mode: hs.mode,
                key: hs.key,
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

    /// Makes room for `peer`'s new half-open handshake: its old one goes
    /// (the client started over), then one over the per-source cap
    /// evicts that source's oldest, and one over the overall cap the
    /// oldest of all. Established sessions are never touched. The scans
    /// cover at most `max_handshakes` entries.
    pub(super) fn make_room_for_handshake(&mut self, peer: SocketAddr) {
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
    pub(super) fn handshake_timer(&mut self, addr: SocketAddr, due: u64, now_ms: u64) {
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

    /// Puts the handshake's next due time in the heap, unless an entry at
    /// least as early is there already.
    pub(super) fn schedule_handshake(&mut self, addr: SocketAddr) {
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
}

/// True when the identity the client named is not in the keys the
/// handshake started with.
pub(super) fn unknown_identity(resolver: &Resolver) -> bool {
    resolver
        .asked
        .lock()
        .ok()
        .and_then(|asked| asked.as_ref().map(|id| resolver.table.key(id).is_none()))
        .unwrap_or(false)
}

/// The part of an address that counts as one source: an IPv4 address,
/// or an IPv6 /64 (what one host or one site gets).
pub(super) fn source_prefix(ip: IpAddr) -> [u8; 8] {
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

/// The alert that tells a client why its certificate was refused.
fn refusal_alert(refusal: Refusal) -> Alert {
    match refusal {
        Refusal::UnknownCa => Alert::UnknownCa,
        Refusal::Expired => Alert::CertificateExpired,
        Refusal::Unsupported => Alert::UnsupportedCertificate,
        // The server never compares a client's name with anything: a
        // refusal only the client's check makes.
        Refusal::Malformed | Refusal::WrongName => Alert::BadCertificate,
        Refusal::UnknownKey => Alert::AccessDenied,
    }
}

/// True when `record` is a plaintext ServerHello.
pub(super) fn is_server_hello(record: &[u8]) -> bool {
    matches!(record, [22, _, _, 0, 0, _, _, _, _, _, _, _, _, 2, ..])
}
