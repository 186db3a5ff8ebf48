//! coaps for the client (`--features dtls`): a [`SecureLink`] runs the
//! DTLS 1.2 handshake (pre-shared key, certificate or raw public key) on
//! the connected socket before the first
//! request, then carries each CoAP datagram in one record, so that
//! [`crate::client::Client`] sends and receives plaintext CoAP datagrams
//! as it does on a plain socket, with its own retransmission. The engine
//! is the server's (`dimpl`, through [`ClientCredentials::engine`]):
//! sans-IO, so this file owns the clock and the socket. The server's
//! certificate (or raw public key) is checked before the client's
//! Finished goes out.

use crate::client::{is_unreachable, recv_within, ClientError};
use crate::coap::Retransmission;
use dimpl::{Dtls, Output};
use iot_ota::dtls::ClientCredentials;
use std::collections::VecDeque;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// Largest datagram taken from the socket: a record of the server's
/// largest CoAP reply and more, with one byte to spare.
const RECORD_RX_LEN: usize = 4096 + 1;
/// The engine's output buffer: records, and the server's certificate,
/// which the engine hands over whole and cannot shorten (it asserts that
/// it fits): reassembled from at most its queue of 30 datagrams of at
/// most [`RECORD_RX_LEN`] bytes.
const SCRATCH_LEN: usize = 32 * RECORD_RX_LEN;
/// Outputs taken from the engine at once: a flight, records and events,
/// then its timer.
const MAX_OUTPUTS: usize = 256;
/// Decrypted datagrams kept before the caller takes them: a server does
/// not send many answers unasked.
const MAX_INBOX: usize = 64;

/// A DTLS session with one server over a connected UDP socket.
pub(crate) struct SecureLink {
    socket: UdpSocket,
    dtls: Dtls,
    /// When the engine wants [`Dtls::handle_timeout`].
    timer: Option<Instant>,
    /// Decrypted datagrams not yet taken.
    inbox: VecDeque<Vec<u8>>,
    /// The engine's output buffer.
    scratch: Vec<u8>,
    /// One received record.
    record: Vec<u8>,
    connected: bool,
    /// The server sent close_notify.
    closed: bool,
    /// Checks the server's certificate or raw public key.
    credentials: ClientCredentials,
    /// Why the server's certificate was refused, once it was.
    refused: Option<String>,
}

impl std::fmt::Debug for SecureLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureLink")
            .field("socket", &self.socket)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl SecureLink {
    /// Runs the handshake with the server `socket` is connected to, with
    /// `credentials`: the flights are sent again after `params.ack_timeout`,
    /// doubling, four times, as a CoAP request (RFC 7252 §4.2), and the
    /// handshake fails when that time (MAX_TRANSMIT_WAIT) has passed.
    ///
    /// # Errors
    /// [`ClientError::Handshake`] when the server did not complete it (a
    /// wrong key or identity is the usual reason: the server then sends
    /// a fatal alert) or its certificate is refused,
    /// [`ClientError::Unreachable`],
    /// [`ClientError::Io`].
    pub(crate) fn handshake(
        socket: UdpSocket,
        credentials: &ClientCredentials,
        params: &Retransmission,
    ) -> Result<SecureLink, ClientError> {
        let started = Instant::now();
        let give_up = params.max_transmit_wait();
        let dtls = credentials
            .engine(params.ack_timeout, give_up, started)
            .map_err(ClientError::Handshake)?;
        let mut link = SecureLink {
            socket,
            dtls,
            timer: Some(started),
            inbox: VecDeque::new(),
            scratch: vec![0; SCRATCH_LEN],
            record: vec![0; RECORD_RX_LEN],
            connected: false,
            closed: false,
            credentials: credentials.clone(),
            refused: None,
        };
        // The engine's own handshake timeout ends this loop; the deadline
        // is a bound should it not.
        let deadline = started + give_up + params.ack_timeout;
        let who = credentials.describe();
        let hint = match credentials {
            ClientCredentials::Psk(_) => "a wrong key or identity",
            ClientCredentials::Certificate { .. } => "a certificate the server refuses",
            ClientCredentials::RawPublicKey { .. } => "a key the server does not list",
        };
        while !link.connected {
            if let Some(why) = link.refused.take() {
                return Err(ClientError::Handshake(why));
            }
            let failed = |why: String| {
                ClientError::Handshake(format!(
                    "no coaps session {who} after {:.1} s ({why}): {hint}, or no coaps server \
                     at that port",
                    started.elapsed().as_secs_f64()
                ))
            };
            if link.closed {
                return Err(failed("the server closed it".to_owned()));
            }
            if Instant::now() >= deadline {
                return Err(failed("no answer".to_owned()));
            }
            link.step(deadline).map_err(|e| match e {
                ClientError::Handshake(why) => failed(why),
                other => other,
            })?;
        }
        Ok(link)
    }

    /// Encrypts and sends one CoAP datagram.
    ///
    /// # Errors
    /// [`ClientError::Handshake`] when the session is over,
    /// [`ClientError::Unreachable`], [`ClientError::Io`].
    pub(crate) fn send(&mut self, datagram: &[u8]) -> Result<(), ClientError> {
        if self.closed {
            return Err(closed());
        }
        self.dtls
            .send_application_data(datagram)
            .map_err(|e| ClientError::Handshake(format!("the coaps session failed: {e}")))?;
        self.drain()
    }

    /// One decrypted datagram into `buf` within `timeout`: its length
    /// (`buf.len()` when it did not fit), or `None` after the timeout.
    /// Handshake retransmissions the engine asks for meanwhile are sent.
    ///
    /// # Errors
    /// [`ClientError::Handshake`] when the server closed the session,
    /// [`ClientError::Unreachable`], [`ClientError::Io`].
    pub(crate) fn recv_before(
        &mut self,
        timeout: Duration,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(datagram) = self.inbox.pop_front() {
                let len = datagram.len().min(buf.len());
                if let (Some(to), Some(from)) = (buf.get_mut(..len), datagram.get(..len)) {
                    to.copy_from_slice(from);
                }
                return Ok(Some(len));
            }
            if self.closed {
                return Err(closed());
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.step(deadline)?;
        }
    }

    /// Waits for one record or the engine's timer, whichever is first
    /// (at most until `deadline`), feeds it to the engine and sends what
    /// the engine has to send.
    fn step(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let now = Instant::now();
        if self.timer.is_some_and(|t| t <= now) {
            self.timer = None;
            self.dtls
                .handle_timeout(now)
                .map_err(|e| ClientError::Handshake(e.to_string()))?;
            return self.drain();
        }
        let until = self.timer.map_or(deadline, |t| t.min(deadline));
        let wait = until.saturating_duration_since(now);
        let Some(len) = recv_within(&self.socket, wait, &mut self.record)? else {
            return Ok(());
        };
        let record = self.record.get(..len).unwrap_or(&[]);
        // The engine's clock first, as it asks.
        let refreshed = self.dtls.handle_timeout(Instant::now());
        let taken = refreshed.and_then(|()| self.dtls.handle_packet(record));
        if let Err(e) = taken {
            if !self.connected {
                return Err(ClientError::Handshake(e.to_string()));
            }
            // A record the engine refuses once the session runs (a stray,
            // a duplicate) is dropped, as RFC 6347 §4.1.2.7 says invalid
            // records are.
        }
        self.drain()
    }

    /// Sends the engine's records and keeps its datagrams, events and
    /// timer.
    fn drain(&mut self) -> Result<(), ClientError> {
        for _ in 0..MAX_OUTPUTS {
            match self.dtls.poll_output(&mut self.scratch) {
                Output::Packet(record) => match self.socket.send(record) {
                    Ok(_) => {}
                    Err(e) if is_unreachable(&e) => return Err(ClientError::Unreachable(e)),
                    Err(e) => return Err(ClientError::Io(e)),
                },
                // Beyond the bound an answer is dropped, as a full
                // socket buffer would; retransmission makes up for it.
                Output::ApplicationData(datagram) if self.inbox.len() < MAX_INBOX => {
                    self.inbox.push_back(datagram.to_vec());
                }
                Output::Connected => self.connected = true,
                Output::CloseNotify => self.closed = true,
                // Before the engine's Finished leaves: a server that is
                // not the one expected gets nothing more.
                Output::PeerCert(der) => {
                    let now_s = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    if let Err(refusal) = self.credentials.check_server(der, now_s) {
                        let mut why = self.credentials.explain(der, refusal);
                        if refusal == iot_ota::dtls::Refusal::WrongName {
                            why.push_str(
                                " (--server-name NAME expects NAME when the URI's host is \
                                 another name or address of the server)",
                            );
                        }
                        self.refused = Some(why);
                        self.closed = true;
                        return Ok(());
                    }
                }
                Output::Timeout(at) => {
                    self.timer = Some(at);
                    return Ok(());
                }
                Output::BufferTooSmall { needed } => self.scratch.resize(needed, 0),
                _ => {}
            }
        }
        Ok(())
    }
}

impl Drop for SecureLink {
    /// Ends the session with close_notify, so that the server forgets it
    /// at once instead of keeping it until evicted.
    fn drop(&mut self) {
        if self.connected && !self.closed && self.dtls.close().is_ok() {
            let _ = self.drain();
        }
    }
}

fn closed() -> ClientError {
    ClientError::Handshake("the server closed the coaps session".to_owned())
}
