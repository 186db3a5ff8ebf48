//! Established sessions: records in, requests out, replies encrypted,
//! the idle end, close_notify.

use super::*;

/// An established session.
pub(super) struct Session {
    pub(super) dtls: Dtls,
    /// How it authenticated.
    pub(super) mode: Mode,
    /// The fingerprint of a raw public key session's client key.
    pub(super) key: Option<Fingerprint>,
    /// The random of the ClientHello that started it: a late copy of that
    /// hello is not a new handshake.
    pub(super) random: [u8; 32],
    pub(super) identity: Vec<u8>,
    /// What the identity may fetch.
    pub(super) authorization: Authorization,
    /// Milliseconds of the last datagram from the peer.
    pub(super) last_ms: u64,
    /// When the engine wants [`Dtls::handle_timeout`].
    pub(super) engine_ms: Option<u64>,
    /// The earliest due time this session has in the timer heap.
    pub(super) scheduled_ms: Option<u64>,
}

impl Front {
    /// Ends `peer`'s established session with close_notify.
    pub(super) fn end_session(&mut self, peer: SocketAddr) {
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

    /// Records for `from`'s established session.
    pub(super) fn feed_session(
        &mut self,
        from: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
    ) -> Handled {
        let now = self.instant(now_ms);
        let Some(session) = self.sessions.get_mut(&from) else {
            return Handled::Ignored;
        };
        if records::screen(datagram, session.mode) == Screened::Refused {
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
    pub(super) fn drain_session(&mut self, peer: SocketAddr) -> Handled {
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

    /// An established session's timer: the engine's, or its end after
    /// `session_idle_ms` of silence (with close_notify).
    pub(super) fn session_timer(&mut self, addr: SocketAddr, due: u64, now_ms: u64) {
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

    /// Puts the session's next due time in the heap, unless an entry at
    /// least as early is there already: a datagram that only moves the
    /// idle end later costs nothing here.
    pub(super) fn schedule_session(&mut self, addr: SocketAddr) {
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
}

/// Sends every record `dtls` has to `each`, up to its timer.
pub(super) fn drain_packets(dtls: &mut Dtls, scratch: &mut Vec<u8>, mut each: impl FnMut(&[u8])) {
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
