//! The socket loop of the client: [`Client`] owns one UDP socket connected
//! to one server. It sends Confirmable GETs with the retransmission of
//! RFC 7252 §4.2 ([`Retransmission`]), matches answers by Message ID and
//! token (§5.3.2, [`match_reply`]) and ignores anything else, repeats a
//! request challenged with a 4.01 Echo (RFC 9175 §2.3) or refused with 4.29
//! (RFC 8516), and downloads Block2 bodies (RFC 7959) with a
//! [`BlockCursor`].
//!
//! The protocol decisions are in [`crate::coap`]; this file only sends,
//! waits and receives, and never prints. Unlike the server this is not a
//! hot path: answers are copied into owned [`Response`] values, one small
//! allocation or two per block.

use crate::coap::{
    code_name, emit_get, is_newer, match_reply, retry_after, BlockCursor, DevicePayload, Get,
    Matched, MessageIds, Progress, Resource, Response, Retransmission, Target, TransferError,
    XorShift, TOKEN_LEN,
};
use coap_lite::{MessageClass, MessageType, ResponseType};
use core::fmt;
use iot_ota::firmware::DeviceRequest;
use iot_ota::iface;
use iot_ota::wire::{self, Message};
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

/// How often a request challenged with a 4.01 Echo is repeated: a second
/// challenge can happen when the server's Echo window turns over.
const MAX_ECHO_RETRIES: u32 = 3;
/// How often one request refused with 4.29 is repeated before giving up.
const MAX_RATE_LIMIT_WAITS: u32 = 10;
/// Longest datagram sent: a request with a long path, query and payload.
const TX_LEN: usize = 2048;
/// Receive buffer; one byte more than any answer taken, so that a datagram
/// filling it is known to be truncated (recv truncates silently).
const RX_LEN: usize = 4096 + 1;

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/// Binds an ephemeral UDP port of `server`'s address family: the one way
/// the client and the load generator open their sockets.
///
/// # Errors
/// As [`UdpSocket::bind`].
pub(crate) fn bind_ephemeral(server: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    UdpSocket::bind(local)
}

impl Target {
    /// The scope id of the zone: the index of the interface it names or
    /// is; 0 without a zone. A zone that names no interface is refused
    /// here, before anything is sent. As the server's `-l`, a zone of the
    /// form `25NAME` is NAME when no interface is called `25NAME` (a `%25`
    /// copied from a URI).
    ///
    /// # Errors
    /// A message naming the zone that is no interface.
    pub(crate) fn scope_id(&self) -> Result<u32, String> {
        let Some(zone) = &self.zone else {
            return Ok(0);
        };
        let index = iface::index_of(zone)
            .or_else(|| {
                zone.strip_prefix("25")
                    .filter(|rest| !rest.is_empty())
                    .and_then(iface::index_of)
            })
            .ok_or_else(|| format!("no interface named '{zone}'"))?;
        if iface::name_of(index).is_none() {
            return Err(format!("no interface with index {index}"));
        }
        Ok(index)
    }

    /// The first socket address the host resolves to; for an IPv6 literal
    /// with a zone, the address with the zone's interface as scope id.
    ///
    /// # Errors
    /// As [`ToSocketAddrs`]; `NotFound` when the name has no address or
    /// the zone no interface.
    pub(crate) fn resolve(&self) -> io::Result<SocketAddr> {
        if self.zone.is_some() {
            let scope_id = self
                .scope_id()
                .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
            let ip: Ipv6Addr = self.host.parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "a zone needs an IPv6 address")
            })?;
            return Ok(SocketAddrV6::new(ip, self.port, 0, scope_id).into());
        }
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address"))
    }
}

/// Why a request or download failed.
#[derive(Debug)]
pub(crate) enum ClientError {
    /// A socket error.
    Io(io::Error),
    /// The kernel reported an ICMP error (port or host unreachable):
    /// nothing listens at the address.
    Unreachable(io::Error),
    /// No answer after every retransmission.
    Timeout {
        /// Times the request was sent.
        transmissions: u32,
        /// Time waited in all.
        waited: Duration,
    },
    /// The server rejected the request with an RST.
    Reset,
    /// No newer image: 4.04 to a lookup, RST to the legacy request.
    NoUpdate,
    /// An answer with an unexpected code.
    Status {
        /// The code, e.g. 4.00.
        code: MessageClass,
        /// Its diagnostic payload.
        diagnostic: String,
    },
    /// A lookup answer that is not an image id.
    BadId(String),
    /// The body is not one consistent representation.
    Transfer(TransferError),
    /// The request does not fit a datagram.
    RequestTooLarge,
    /// The body could not be written out.
    Output(io::Error),
    /// No coaps session: the DTLS handshake failed, or the session ended.
    #[cfg(feature = "dtls")]
    Handshake(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "socket error: {e}"),
            ClientError::Unreachable(e) => write!(f, "unreachable, no CoAP server there ({e})"),
            ClientError::Timeout {
                transmissions,
                waited,
            } => write!(
                f,
                "no answer after {transmissions} transmissions in {:.1} s",
                waited.as_secs_f64()
            ),
            ClientError::Reset => f.write_str("the server rejected the request (RST)"),
            ClientError::NoUpdate => f.write_str("no update available"),
            ClientError::Status { code, diagnostic } if diagnostic.is_empty() => {
                write!(f, "the server answered {code} {}", code_name(*code))
            }
            ClientError::Status { code, diagnostic } => {
                write!(
                    f,
                    "the server answered {code} {}: {diagnostic}",
                    code_name(*code)
                )
            }
            ClientError::BadId(text) => write!(f, "the lookup answer '{text}' is not an image id"),
            ClientError::Transfer(e) => e.fmt(f),
            ClientError::RequestTooLarge => f.write_str("the request does not fit a datagram"),
            ClientError::Output(e) => write!(f, "cannot write the body: {e}"),
            #[cfg(feature = "dtls")]
            ClientError::Handshake(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<TransferError> for ClientError {
    fn from(e: TransferError) -> Self {
        ClientError::Transfer(e)
    }
}

/// What the client did so far, for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Requests (exchanges), each with a fresh Message ID.
    pub(crate) requests: u32,
    /// Datagrams sent again after a timeout.
    pub(crate) retransmissions: u32,
    /// Datagrams received that matched nothing (late duplicates, strays).
    pub(crate) ignored: u32,
    /// Requests repeated with an Echo value.
    pub(crate) echo_retries: u32,
    /// Waits after a 4.29.
    pub(crate) rate_limit_waits: u32,
}

/// A body to download block-wise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyRequest<'a> {
    /// Uri-Path and Uri-Query.
    pub(crate) resource: &'a Resource,
    /// Sent with every block request (an OFFSET, or the legacy device
    /// payload).
    pub(crate) payload: &'a [u8],
    /// The legacy `/updates` protocol: an RST to the first block means "no
    /// update", and no Size2 is asked for, exactly as devices do.
    pub(crate) legacy: bool,
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transfer {
    /// Body length.
    pub(crate) bytes: u64,
    /// Blocks received (1 for an answer without Block2).
    pub(crate) blocks: u32,
    /// The body's ETag.
    pub(crate) etag: Option<Vec<u8>>,
    /// Block size at the end (the server may have lowered it).
    pub(crate) block_size: usize,
    /// Content-Format of the first block.
    pub(crate) content_format: Option<u16>,
}

/// How datagrams reach the server: the connected socket itself, or a
/// DTLS session on it (coaps).
#[derive(Debug)]
enum Link {
    Plain(UdpSocket),
    #[cfg(feature = "dtls")]
    Secure(Box<crate::secure::SecureLink>),
}

impl Link {
    fn send(&mut self, datagram: &[u8]) -> Result<(), ClientError> {
        match self {
            Link::Plain(socket) => match socket.send(datagram) {
                Ok(_) => Ok(()),
                Err(e) if is_unreachable(&e) => Err(ClientError::Unreachable(e)),
                Err(e) => Err(ClientError::Io(e)),
            },
            #[cfg(feature = "dtls")]
            Link::Secure(link) => link.send(datagram),
        }
    }

    /// One datagram into `buf` within `timeout`: its length, or `None`
    /// after a timeout or an interruption.
    fn recv_before(
        &mut self,
        timeout: Duration,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ClientError> {
        match self {
            Link::Plain(socket) => recv_within(socket, timeout, buf),
            #[cfg(feature = "dtls")]
            Link::Secure(link) => link.recv_before(timeout, buf),
        }
    }
}

/// One UDP socket connected to one server, with the per-server state of
/// RFC 7252 (next Message ID) and RFC 9175 (the last Echo value).
#[derive(Debug)]
pub(crate) struct Client {
    link: Link,
    params: Retransmission,
    rng: XorShift,
    mids: MessageIds,
    echo: Option<Vec<u8>>,
    last_separate_mid: Option<u16>,
    stats: Stats,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl Client {
    /// Binds an ephemeral port of the server's address family and connects
    /// it to `server`, so that only the server's datagrams arrive and an
    /// ICMP port unreachable is reported ([`ClientError::Unreachable`]).
    ///
    /// # Errors
    /// As [`UdpSocket::bind`] and [`UdpSocket::connect`].
    pub(crate) fn connect(server: SocketAddr, params: Retransmission) -> io::Result<Client> {
        Client::with_rng(server, params, XorShift::from_entropy())
    }

    /// As [`Client::connect`] with a given random source (for tests).
    ///
    /// # Errors
    /// As [`UdpSocket::bind`] and [`UdpSocket::connect`].
    pub(crate) fn with_rng(
        server: SocketAddr,
        params: Retransmission,
        rng: XorShift,
    ) -> io::Result<Client> {
        let socket = bind_ephemeral(server)?;
        socket.connect(server)?;
        Ok(Client::with_link(Link::Plain(socket), params, rng))
    }

    /// As [`Client::connect`], then a DTLS handshake with `credentials` (coaps):
    /// every request and answer after it is a DTLS record.
    ///
    /// # Errors
    /// [`ClientError::Io`] when no socket opens, and those of
    /// [`crate::secure::SecureLink::handshake`].
    #[cfg(feature = "dtls")]
    pub(crate) fn connect_secure(
        server: SocketAddr,
        params: Retransmission,
        credentials: &iot_ota::dtls::ClientCredentials,
    ) -> Result<Client, ClientError> {
        let socket = bind_ephemeral(server).map_err(ClientError::Io)?;
        socket.connect(server).map_err(ClientError::Io)?;
        let link = crate::secure::SecureLink::handshake(socket, credentials, &params)?;
        Ok(Client::with_link(
            Link::Secure(Box::new(link)),
            params,
            XorShift::from_entropy(),
        ))
    }

    fn with_link(link: Link, params: Retransmission, mut rng: XorShift) -> Client {
        Client {
            link,
            params,
            mids: MessageIds::starting_at_random(&mut rng),
            rng,
            echo: None,
            last_separate_mid: None,
            stats: Stats::default(),
            tx: vec![0; TX_LEN],
            rx: vec![0; RX_LEN],
        }
    }

    /// What the client did so far.
    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    /// Sends `get` and returns the answer. A 4.01 with an Echo option is
    /// answered by repeating the request with that value, which is then
    /// sent with every later request (RFC 9175 §2.3); a 4.29 by waiting
    /// Max-Age seconds (1 without, at most 60) and repeating, at most
    /// [`MAX_RATE_LIMIT_WAITS`] times. Each repetition is a new message.
    ///
    /// # Errors
    /// [`ClientError::Timeout`], [`ClientError::Reset`],
    /// [`ClientError::Unreachable`], [`ClientError::Io`],
    /// [`ClientError::RequestTooLarge`]. Error codes are answers, not
    /// errors.
    pub(crate) fn request(&mut self, get: &Get<'_>, token: &[u8]) -> Result<Response, ClientError> {
        let mut echo_retries = 0;
        let mut waits = 0;
        loop {
            let response = self.exchange(get, token)?;
            if response.is(ResponseType::Unauthorized) && echo_retries < MAX_ECHO_RETRIES {
                if let Some(echo) = &response.echo {
                    self.echo = Some(echo.clone());
                    echo_retries += 1;
                    self.stats.echo_retries += 1;
                    continue;
                }
            }
            if response.is(ResponseType::TooManyRequests) && waits < MAX_RATE_LIMIT_WAITS {
                waits += 1;
                self.stats.rate_limit_waits += 1;
                std::thread::sleep(retry_after(&response));
                continue;
            }
            return Ok(response);
        }
    }

    /// Asks `/updates` whether there is an image newer than the device's
    /// version (the lookup form of `GET /updates`) and returns its id.
    ///
    /// # Errors
    /// [`ClientError::NoUpdate`] on 4.04, [`ClientError::Status`] on other
    /// codes, [`ClientError::BadId`], and those of [`Client::request`].
    pub(crate) fn lookup(&mut self, device: &DeviceRequest<'_>) -> Result<String, ClientError> {
        let lookup = DeviceRequest {
            offset: None,
            ..*device
        };
        let payload = DevicePayload::new(&lookup).ok_or(ClientError::RequestTooLarge)?;
        let resource = Resource::updates();
        let get = Get {
            resource: &resource,
            payload: payload.as_bytes(),
            block2: None,
            size2: None,
            observe: None,
        };
        let token = self.rng.token();
        let response = self.request(&get, &token)?;
        if response.is(ResponseType::NotFound) {
            return Err(ClientError::NoUpdate);
        }
        if !response.is(ResponseType::Content) {
            return Err(status(&response));
        }
        let id = String::from_utf8_lossy(&response.payload).into_owned();
        let plausible = !id.is_empty()
            && id.len() <= 255
            && id.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        if !plausible {
            return Err(ClientError::BadId(id.chars().take(64).collect()));
        }
        Ok(id)
    }

    /// Downloads a body block-wise with `szx`-sized blocks (or the server's
    /// smaller ones) into `sink`, calling `progress` after every block.
    /// Every block request carries the same payload and token, and a fresh
    /// Message ID; the first one Size2 0 unless `legacy`.
    ///
    /// # Errors
    /// [`ClientError::Transfer`] when the blocks are not one body,
    /// [`ClientError::Status`] on a code other than 2.05,
    /// [`ClientError::NoUpdate`] on an RST to the first legacy request,
    /// [`ClientError::Output`], and those of [`Client::request`].
    pub(crate) fn download(
        &mut self,
        body: &BodyRequest<'_>,
        szx: u8,
        sink: &mut dyn Write,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Transfer, ClientError> {
        let token = self.rng.token();
        let mut cursor = BlockCursor::new(szx);
        let mut content_format = None;
        loop {
            let block = cursor.next_block()?;
            let get = Get {
                resource: body.resource,
                payload: body.payload,
                block2: Some(block),
                size2: (block.num == 0 && !body.legacy).then_some(0),
                observe: None,
            };
            let response = match self.request(&get, &token) {
                Err(ClientError::Reset) if body.legacy && cursor.progress().blocks == 0 => {
                    return Err(ClientError::NoUpdate)
                }
                other => other?,
            };
            if !response.is(ResponseType::Content) {
                return Err(status(&response));
            }
            if cursor.progress().blocks == 0 {
                content_format = response.content_format;
            }
            cursor.accept(
                response.block2,
                response.etag.as_deref(),
                response.size2,
                response.payload.len(),
            )?;
            sink.write_all(&response.payload)
                .map_err(ClientError::Output)?;
            progress(&cursor.progress());
            if cursor.is_done() {
                let done = cursor.progress();
                return Ok(Transfer {
                    bytes: done.bytes,
                    blocks: done.blocks,
                    etag: cursor.etag().map(<[u8]>::to_vec),
                    block_size: done.block_size,
                    content_format,
                });
            }
        }
    }

    /// One Confirmable exchange: send, retransmit on the RFC 7252 §4.2
    /// schedule, return the first matching answer.
    fn exchange(&mut self, get: &Get<'_>, token: &[u8]) -> Result<Response, ClientError> {
        let mid = self.mids.fresh();
        let len = emit_get(get, mid, token, self.echo.as_deref(), &mut self.tx)
            .map_err(|_| ClientError::RequestTooLarge)?;
        self.stats.requests += 1;
        let started = Instant::now();
        let mut timeouts = self.params.timeouts(self.rng.next_u32());
        let mut transmissions = 0u32;
        let mut separate_deadline = None;
        loop {
            let deadline = match separate_deadline {
                Some(deadline) => deadline,
                None => {
                    let Some(timeout) = timeouts.next() else {
                        return Err(ClientError::Timeout {
                            transmissions,
                            waited: started.elapsed(),
                        });
                    };
                    self.send(len)?;
                    if transmissions > 0 {
                        self.stats.retransmissions += 1;
                    }
                    transmissions += 1;
                    Instant::now() + timeout
                }
            };
            match self.receive(mid, token, deadline)? {
                Received::Response(response) => return Ok(response),
                Received::Reset => return Err(ClientError::Reset),
                // The request arrived; stop retransmitting and wait for
                // the separate answer (RFC 7252 §5.2.2).
                Received::EmptyAck if separate_deadline.is_none() => {
                    separate_deadline = Some(Instant::now() + self.params.max_transmit_wait());
                }
                Received::EmptyAck => {}
                Received::Deadline if separate_deadline.is_some() => {
                    return Err(ClientError::Timeout {
                        transmissions,
                        waited: started.elapsed(),
                    })
                }
                Received::Deadline => {}
            }
        }
    }

    fn send(&mut self, len: usize) -> Result<(), ClientError> {
        let datagram = self.tx.get(..len).ok_or(ClientError::RequestTooLarge)?;
        self.link.send(datagram)
    }

    /// Receives until a datagram matches `mid`/`token` or `deadline`
    /// passes; acknowledges separate CON answers.
    fn receive(
        &mut self,
        mid: u16,
        token: &[u8],
        deadline: Instant,
    ) -> Result<Received, ClientError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(Received::Deadline);
            }
            let Some(len) = self.recv_before(deadline - now)? else {
                continue;
            };
            if len >= self.rx.len() {
                self.stats.ignored += 1;
                continue;
            }
            let datagram = self.rx.get(..len).unwrap_or(&[]);
            match match_reply(datagram, mid, token) {
                Matched::Response(response) => return Ok(Received::Response(response)),
                Matched::EmptyAck => return Ok(Received::EmptyAck),
                Matched::Reset => return Ok(Received::Reset),
                Matched::Separate(response, confirm) => {
                    if let Some(their_mid) = confirm {
                        self.acknowledge(their_mid)?;
                        // A retransmitted separate answer already taken.
                        if self.last_separate_mid == Some(their_mid) {
                            self.stats.ignored += 1;
                            continue;
                        }
                        self.last_separate_mid = Some(their_mid);
                    }
                    return Ok(Received::Response(response));
                }
                Matched::Stray => self.stats.ignored += 1,
            }
        }
    }

    /// One datagram into `rx` within `timeout`: its length, or `None`
    /// after a timeout or an interruption.
    fn recv_before(&mut self, timeout: Duration) -> Result<Option<usize>, ClientError> {
        self.link.recv_before(timeout, &mut self.rx)
    }

    fn acknowledge(&mut self, mid: u16) -> Result<(), ClientError> {
        let mut ack = [0u8; wire::HEADER_LEN];
        let len = wire::emit_empty(&mut ack, MessageType::Acknowledgement, mid)
            .map_err(|_| ClientError::RequestTooLarge)?;
        self.link.send(ack.get(..len).unwrap_or(&[]))
    }
}

impl Client {
    /// Registers `get` for notifications (sent with Observe 0, RFC 7641
    /// §3.1) and returns the observation with the current representation,
    /// or no observation and the answer when the server did not register
    /// (the answer has no Observe option).
    ///
    /// # Errors
    /// As [`Client::request`].
    pub(crate) fn register(
        &mut self,
        get: &Get<'_>,
    ) -> Result<(Option<Observation>, Response), ClientError> {
        let token = self.rng.token();
        let mut observation = Observation {
            token,
            last: None,
            fresh_until: Instant::now(),
        };
        let response = self.reregister(get, &mut observation)?;
        let registered = response.observe.is_some();
        Ok((registered.then_some(observation), response))
    }

    /// Registers `get` again with the observation's token: what a client
    /// does when no notification came while the last one was fresh (RFC
    /// 7641 §3.3.1). The answer counts as the newest notification.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub(crate) fn reregister(
        &mut self,
        get: &Get<'_>,
        observation: &mut Observation,
    ) -> Result<Response, ClientError> {
        let get = Get {
            observe: Some(0),
            ..*get
        };
        let response = self.request(&get, &observation.token)?;
        if let Some(seq) = response.observe {
            observation.taken(seq, &response);
        }
        Ok(response)
    }

    /// Waits until `deadline` for the next notification of `observation`
    /// and acknowledges it when it is Confirmable. Duplicates and
    /// notifications older than the last one taken (RFC 7641 §3.4) are
    /// skipped; a response without Observe (an error that ended the
    /// observation) is returned as it is. `None` at the deadline.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`], [`ClientError::Io`].
    pub(crate) fn next_notification(
        &mut self,
        observation: &mut Observation,
        deadline: Instant,
    ) -> Result<Option<Response>, ClientError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let Some(len) = self.recv_before(deadline - now)? else {
                continue;
            };
            let Some(Ok(msg)) = self.rx.get(..len).map(Message::parse) else {
                self.stats.ignored += 1;
                continue;
            };
            let ours = matches!(msg.class(), MessageClass::Response(_))
                && msg.token == observation.token
                && matches!(
                    msg.mtype,
                    MessageType::Confirmable | MessageType::NonConfirmable
                );
            if !ours {
                self.stats.ignored += 1;
                continue;
            }
            let response = Response::from_message(&msg);
            if msg.mtype == MessageType::Confirmable {
                self.acknowledge(msg.mid)?;
            }
            match response.observe {
                Some(seq) if !observation.is_newer(seq) => self.stats.ignored += 1,
                Some(seq) => {
                    observation.taken(seq, &response);
                    return Ok(Some(response));
                }
                None => return Ok(Some(response)),
            }
        }
    }

    /// Ends `observation` politely: the registration with Observe 1 and
    /// the same token (RFC 7641 §3.6).
    ///
    /// # Errors
    /// As [`Client::request`].
    pub(crate) fn deregister(
        &mut self,
        get: &Get<'_>,
        observation: &Observation,
    ) -> Result<Response, ClientError> {
        let get = Get {
            observe: Some(1),
            ..*get
        };
        self.request(&get, &observation.token)
    }
}

/// An observation the server accepted (RFC 7641): its token and what the
/// last notification taken was.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    token: [u8; TOKEN_LEN],
    /// Observe value and arrival of the last notification taken.
    last: Option<(u32, Instant)>,
    /// When the last representation stops being fresh (its Max-Age, and a
    /// few seconds for the network): a client re-registers then.
    pub(crate) fresh_until: Instant,
}

impl Observation {
    fn is_newer(&self, seq: u32) -> bool {
        self.last
            .map_or(true, |(last, at)| is_newer(last, at, seq, Instant::now()))
    }

    fn taken(&mut self, seq: u32, response: &Response) {
        let now = Instant::now();
        self.last = Some((seq, now));
        // RFC 7252 §5.10.5: Max-Age defaults to 60 seconds.
        let max_age = u64::from(response.max_age.unwrap_or(60));
        self.fresh_until = now + Duration::from_secs(max_age) + OBSERVE_GRACE;
    }
}

/// How long past Max-Age a notification may still arrive before the
/// client registers again.
const OBSERVE_GRACE: Duration = Duration::from_secs(5);

/// What [`Client::receive`] got before its deadline.
enum Received {
    Response(Response),
    EmptyAck,
    Reset,
    Deadline,
}

fn status(response: &Response) -> ClientError {
    ClientError::Status {
        code: response.code,
        diagnostic: response.diagnostic(),
    }
}

/// One datagram from the connected `socket` into `buf` within `timeout`:
/// its length, or `None` after a timeout or an interruption; an ICMP
/// unreachable is [`ClientError::Unreachable`].
pub(crate) fn recv_within(
    socket: &UdpSocket,
    timeout: Duration,
    buf: &mut [u8],
) -> Result<Option<usize>, ClientError> {
    socket
        .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(ClientError::Io)?;
    match socket.recv(buf) {
        Ok(len) => Ok(Some(len)),
        Err(e) if is_unreachable(&e) => Err(ClientError::Unreachable(e)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(ClientError::Io(e)),
    }
}

/// The errors an ICMP unreachable turns into on a connected UDP socket.
pub(crate) fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::{answer, CONTENT};
    use coap_lite::MessageClass;
    use iot_ota::wire::{Block, Emitter, Message};
    use std::sync::mpsc;
    use std::thread;

    // -- the client against a scripted peer over loopback -------------------

    /// A fake server on 127.0.0.1 that runs `script` on each request it
    /// receives (with the datagram) and sends back what it returns; the
    /// thread ends after `max` requests or 10 s without one.
    fn scripted_server(
        max: usize,
        mut script: impl FnMut(usize, &[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let (seen_tx, seen_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            for i in 0..max {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let _ = seen_tx.send(buf[..n].to_vec());
                for reply in script(i, &buf[..n]) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        (addr, seen_rx)
    }

    /// Short enough for quick tests, long enough that a busy machine does
    /// not retransmit before the scripted peer answers.
    fn fast() -> Retransmission {
        Retransmission {
            ack_timeout: Duration::from_millis(300),
            max_retransmit: 4,
        }
    }

    /// The piggybacked reply to `request` with `code`, extra options and
    /// payload.
    fn reply_to(
        request: &[u8],
        code: ResponseType,
        options: &[(u16, &[u8])],
        payload: &[u8],
    ) -> Vec<u8> {
        let msg = Message::parse(request).unwrap();
        let mut out = [0u8; 512];
        let mut e = Emitter::new(
            &mut out,
            MessageType::Acknowledgement,
            MessageClass::Response(code),
            msg.mid,
            msg.token,
        )
        .unwrap();
        for (number, value) in options {
            e.option(*number, value).unwrap();
        }
        let len = e.payload(payload).unwrap();
        out[..len].to_vec()
    }

    fn get_root() -> Resource {
        Resource::parse("/r").unwrap()
    }

    /// A GET of `resource` with no payload, Block2 or Size2.
    fn plain_get(resource: &Resource) -> Get<'_> {
        Get {
            resource,
            payload: &[],
            block2: None,
            size2: None,
            observe: None,
        }
    }

    /// A client of `addr` on the [`fast`] schedule with a seeded RNG.
    fn fast_client(addr: SocketAddr, seed: u64) -> Client {
        Client::with_rng(addr, fast(), XorShift::new(seed)).unwrap()
    }

    // -- zones ------------------------------------------------------------

    fn lo() -> u32 {
        iface::index_of("lo").expect("every Linux host has lo")
    }

    #[test]
    fn a_zone_by_name_or_index_is_the_scope_id_sent_to() {
        let lo = lo();
        let by_index = format!("[::1%{lo}]:7");
        for text in [
            "[::1%lo]:7",
            by_index.as_str(),
            "[::1%25lo]:7",
            "coap://[::1%25lo]:7/x",
            "coap://[::1%lo]:7/x",
        ] {
            let target = Target::parse(text).unwrap();
            assert_eq!(target.scope_id(), Ok(lo), "{text}");
            let SocketAddr::V6(v6) = target.resolve().unwrap() else {
                panic!("{text} is IPv6");
            };
            assert_eq!(
                (*v6.ip(), v6.port(), v6.scope_id()),
                (Ipv6Addr::LOCALHOST, 7, lo)
            );
            assert_eq!(iface::display(v6.into()), "[::1%lo]:7", "{text}");
        }
        let plain = Target::parse("[fe80::1]:7").unwrap();
        assert_eq!(plain.scope_id(), Ok(0));
        let SocketAddr::V6(v6) = plain.resolve().unwrap() else {
            panic!("IPv6");
        };
        assert_eq!(v6.scope_id(), 0);
    }

    #[test]
    fn a_zone_that_is_no_interface_is_named_in_the_error() {
        for (text, needle) in [
            (
                "[fe80::1%no-such-if0]:1",
                "no interface named 'no-such-if0'",
            ),
            (
                "coap://[fe80::1%25no-such-if0]/",
                "no interface named 'no-such-if0'",
            ),
            ("[fe80::1%0]:1", "no interface with index 0"),
            (
                "[fe80::1%4000000000]:1",
                "no interface with index 4000000000",
            ),
        ] {
            let target = Target::parse(text).unwrap();
            let error = target.scope_id().unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
            let error = target.resolve().unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::NotFound, "{text}");
            assert!(error.to_string().contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn a_client_of_a_zoned_address_gets_its_answer() {
        let socket = UdpSocket::bind("[::1]:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let peer = thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buf).unwrap();
            let reply = reply_to(&buf[..n], ResponseType::Content, &[], b"zoned");
            socket.send_to(&reply, from).unwrap();
        });
        let target = Target::parse(&format!("[::1%lo]:{port}")).unwrap();
        let mut client = fast_client(target.resolve().unwrap(), 5);
        let resource = get_root();
        let response = client.request(&plain_get(&resource), b"z").unwrap();
        assert_eq!(response.payload, b"zoned");
        peer.join().unwrap();
    }

    #[test]
    fn lost_requests_are_retransmitted_with_the_same_mid_and_strays_ignored() {
        // Drop the first two transmissions; answer the third after a stray
        // (wrong token) and an unparsable datagram.
        let (addr, seen) = scripted_server(3, |i, req| match i {
            0 | 1 => vec![],
            _ => {
                let mut stray = reply_to(req, ResponseType::Content, &[], b"stray");
                stray[4] ^= 0xFF; // flip the token's first byte
                vec![
                    b"junk".to_vec(),
                    stray,
                    reply_to(req, ResponseType::Content, &[], b"ok"),
                ]
            }
        });
        let params = Retransmission {
            ack_timeout: Duration::from_millis(100),
            max_retransmit: 4,
        };
        let mut client = Client::with_rng(addr, params, XorShift::new(3)).unwrap();
        let resource = get_root();
        let get = plain_get(&resource);
        let response = client.request(&get, &[0xAA, 0xBB]).unwrap();
        assert_eq!(response.payload, b"ok");
        let sent: Vec<Vec<u8>> = seen.try_iter().collect();
        assert_eq!(sent.len(), 3);
        assert!(
            sent.iter().all(|d| d == &sent[0]),
            "retransmissions are the same datagram"
        );
        let stats = client.stats();
        assert_eq!(
            (stats.requests, stats.retransmissions, stats.ignored),
            (1, 2, 2)
        );
    }

    #[test]
    fn silence_times_out_after_max_retransmit() {
        let (addr, seen) = scripted_server(10, |_, _| vec![]);
        let params = Retransmission {
            ack_timeout: Duration::from_millis(20),
            max_retransmit: 2,
        };
        let mut client = Client::with_rng(addr, params, XorShift::new(5)).unwrap();
        let resource = get_root();
        let get = plain_get(&resource);
        let started = Instant::now();
        match client.request(&get, &[1]) {
            Err(ClientError::Timeout {
                transmissions: 3, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // 20 + 40 + 80 ms at least, below 1.5 times that plus slack.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(140) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        for i in 0..3 {
            seen.recv_timeout(Duration::from_secs(2))
                .unwrap_or_else(|_| panic!("transmission {i} missing"));
        }
        assert!(seen.try_recv().is_err(), "no fourth transmission");
    }

    #[test]
    fn echo_challenge_is_answered_and_the_value_kept() {
        let (addr, seen) = scripted_server(3, |i, req| {
            let msg = Message::parse(req).unwrap();
            match (i, msg.echo) {
                (0, None) => vec![reply_to(
                    req,
                    ResponseType::Unauthorized,
                    &[(wire::OPTION_ECHO, b"e1")],
                    b"",
                )],
                (_, Some(b"e1")) => vec![reply_to(req, ResponseType::Content, &[], b"ok")],
                _ => vec![reply_to(req, ResponseType::BadRequest, &[], b"no echo")],
            }
        });
        let mut client = fast_client(addr, 9);
        let resource = get_root();
        let get = plain_get(&resource);
        assert_eq!(client.request(&get, &[1]).unwrap().payload, b"ok");
        // The next request carries the Echo value from the start.
        assert_eq!(client.request(&get, &[2]).unwrap().payload, b"ok");
        let sent: Vec<Vec<u8>> = seen.try_iter().collect();
        let mids: Vec<u16> = sent
            .iter()
            .map(|d| Message::parse(d).unwrap().mid)
            .collect();
        assert_eq!(sent.len(), 3);
        assert!(
            mids[0] != mids[1] && mids[1] != mids[2],
            "fresh Message IDs: {mids:?}"
        );
        assert_eq!(client.stats().echo_retries, 1);
    }

    #[test]
    fn too_many_requests_waits_max_age_then_retries() {
        let (addr, _seen) = scripted_server(2, |i, req| match i {
            0 => vec![reply_to(
                req,
                ResponseType::TooManyRequests,
                &[(14, &[])],
                b"",
            )], // Max-Age 0
            _ => vec![reply_to(req, ResponseType::Content, &[], b"ok")],
        });
        let mut client = fast_client(addr, 11);
        let resource = get_root();
        let get = plain_get(&resource);
        assert_eq!(client.request(&get, &[1]).unwrap().payload, b"ok");
        assert_eq!(client.stats().rate_limit_waits, 1);
    }

    #[test]
    fn rate_limit_waits_are_bounded() {
        let (addr, _seen) = scripted_server(MAX_RATE_LIMIT_WAITS as usize + 1, |_, req| {
            vec![reply_to(
                req,
                ResponseType::TooManyRequests,
                &[(14, &[])],
                b"",
            )]
        });
        let mut client = fast_client(addr, 13);
        let resource = get_root();
        let get = plain_get(&resource);
        let r = client.request(&get, &[1]).unwrap();
        assert!(r.is(ResponseType::TooManyRequests));
        assert_eq!(client.stats().rate_limit_waits, MAX_RATE_LIMIT_WAITS);
    }

    #[test]
    fn separate_answer_after_empty_ack_is_taken_and_acknowledged() {
        let (addr, seen) = scripted_server(2, |i, req| {
            if i > 0 {
                return vec![]; // the client's ACK of the separate answer
            }
            let msg = Message::parse(req).unwrap();
            let mut empty = [0u8; 4];
            let n = wire::emit_empty(&mut empty, MessageType::Acknowledgement, msg.mid).unwrap();
            let separate = answer(
                MessageType::Confirmable,
                CONTENT,
                0x7777,
                msg.token,
                b"later",
            );
            vec![empty[..n].to_vec(), separate.clone(), separate]
        });
        let mut client = fast_client(addr, 17);
        let resource = get_root();
        let get = plain_get(&resource);
        assert_eq!(client.request(&get, &[4, 2]).unwrap().payload, b"later");
        let ack = seen
            .recv_timeout(Duration::from_secs(2))
            .and_then(|_| seen.recv_timeout(Duration::from_secs(2)));
        let ack = ack.expect("the client acknowledged the separate answer");
        let msg = Message::parse(&ack).unwrap();
        assert_eq!(
            (msg.mtype, msg.mid, msg.code),
            (MessageType::Acknowledgement, 0x7777, 0)
        );
    }

    #[test]
    fn download_with_a_shrinking_server_and_checked_etag() {
        // A 100-byte body served at most 32 bytes a block, whatever asked.
        let body: Vec<u8> = (0..100u8).collect();
        let served = body.clone();
        let (addr, _seen) = scripted_server(10, move |_, req| {
            let msg = Message::parse(req).unwrap();
            let asked = msg.block2.unwrap().unwrap();
            let start = (asked.num as usize) << (asked.szx + 4);
            let szx = asked.szx.min(1);
            let end = (start + 32).min(served.len());
            let b = Block {
                num: (start >> 5) as u32,
                more: end < served.len(),
                szx,
            };
            let mut raw = [0u8; 4];
            let block = b.encode(&mut raw).to_vec();
            vec![reply_to(
                req,
                ResponseType::Content,
                &[(4, b"etag0001"), (23, &block), (28, &[100])],
                &served[start..end],
            )]
        });
        let mut client = fast_client(addr, 19);
        let resource = get_root();
        let mut out = Vec::new();
        let mut updates = 0;
        let request = BodyRequest {
            resource: &resource,
            payload: &[],
            legacy: false,
        };
        let t = client
            .download(&request, 6, &mut out, &mut |_| updates += 1)
            .unwrap();
        assert_eq!(out, body);
        assert_eq!((t.bytes, t.blocks, t.block_size, updates), (100, 4, 32, 4));
        assert_eq!(t.etag.as_deref(), Some(&b"etag0001"[..]));
    }

    #[test]
    fn legacy_reset_to_the_first_block_means_no_update() {
        let (addr, _seen) = scripted_server(1, |_, req| {
            let msg = Message::parse(req).unwrap();
            let mut rst = [0u8; 4];
            let n = wire::emit_empty(&mut rst, MessageType::Reset, msg.mid).unwrap();
            vec![rst[..n].to_vec()]
        });
        let mut client = fast_client(addr, 23);
        let resource = Resource::updates();
        let request = BodyRequest {
            resource: &resource,
            payload: b"\x01A\x03\0\0\0\0\0\0\0\0",
            legacy: true,
        };
        match client.download(&request, 6, &mut Vec::new(), &mut |_| {}) {
            Err(ClientError::NoUpdate) => {}
            other => panic!("{other:?}"),
        }
    }
}
