//! The checks of the fuzz target `dtls_front` (also run by
//! tests/fuzz_dtls.rs under `cargo test --features dtls` on the seeds):
//! the server-side DTLS front, `dtls::Front`, fed datagrams from a few
//! peers over time, and every request it decrypts answered by the
//! service and encrypted back, as the server's loop does.
//!
//! # Input format
//!
//! ```text
//! byte 0  bit 0: a live session first, a real handshake of the client's
//!         engine as peer 0; bit 1: its identity (0 `dev1`, who may fetch
//!         PID Hundred only; 1 `dev2`, every PID); bits 2-4: session
//!         table capacity - 1; bit 5: the live session with the raw public
//!         key `mote` (every PID) instead of a PSK identity
//! then up to 64 frames:
//!         PEER:u8  DT:u8  LEN:u16le  DATA:LEN bytes (cut at the input's end)
//! ```
//!
//! PEER bit 7 set: DATA is a plaintext CoAP request that the live
//! session's client engine encrypts and peer 0 sends (skipped without a
//! live session); clear: DATA is a datagram as it arrives. PEER bits 0-1
//! choose the address (192.0.2.1, 192.0.2.2, ::1, 127.0.0.1), bits 2-6
//! the port. DT advances the clock as in `handler`: below 200 by
//! DT * 10 ms, else by (DT - 199) * 30 s, so cookie windows (30 s) and
//! handshake timeouts are reached. The front's timers run before each
//! frame, as the loop runs them when due.
//!
//! The front serves every mode (PSK, certificates, raw public keys). The
//! cookie secret (the same in every period), the service's keys, the PSK
//! table and the raw keys are fixed, so a cookie is a function of the address and
//! the hello. The engine's randomness comes from the operating system, so
//! a recorded handshake does not complete when replayed (its Finished no
//! longer verifies): a seed's recorded session reaches a started
//! handshake, and the live session reaches the service.
//!
//! # Properties
//!
//! * No panic.
//! * Garbage creates no session: a handshake appears only with
//!   `Handled::Started`, for a ClientHello whose cookie is the one the
//!   front answers the same hello without a cookie from the same address
//!   with (computed on a second front); neither table ever holds more
//!   than its capacity.
//! * No amplification: a datagram that leaves its address without a
//!   session is answered with at most its own length, and only to it.
//! * Nothing is taken from a peer that did not authenticate; a request
//!   sent through the live session arrives as it was sent.

use iot_ota::catalog::Catalog;
use iot_ota::dtls::{Entropy, Front, Handled, Limits as DtlsLimits, PskTable};
use iot_ota::hash::SipKey;
use iot_ota::server::peer;
use iot_ota::service::{Action, Keys, Limits, Request, Service, MAX_REPLY_LEN};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;

#[path = "../../support/dtls_session.rs"]
pub mod dtls_session;
#[path = "../../support/images.rs"]
pub mod images;

/// Two identities: `dev1` may fetch PID Hundred only, `dev2` every PID.
const PSK_TABLE: &str = "dev1:dev1-secret-key:Hundred\ndev2:0x00112233445566778899aabbccddeeff\n";
/// Cookie secrets that are all the same: a cookie is then a function of
/// the address and the hello alone, in every period, so that a second
/// front can tell which cookie the first one issues (the rotation is the
/// unit tests' business).
pub fn entropy() -> Entropy {
    Box::new(|secret: &mut [u8; 32]| *secret = [0x5e; 32])
}

/// Room for `capacity` sessions and as many handshakes.
pub fn limits(capacity: usize) -> DtlsLimits {
    DtlsLimits {
        max_sessions: capacity,
        max_handshakes: capacity,
        ..DtlsLimits::default()
    }
}
/// The service's secrets: fixed.
const SERVICE_KEYS: Keys = Keys {
    echo: SipKey([0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]),
    message_ids: SipKey([1, 2]),
    tables: [3, 4],
};
/// (file name, length, content seed): one image the `dev1` identity may
/// fetch, one it may not.
const FILES: [(&str, usize, u32); 2] = [
    ("Hundred_1_2_3_APP.fmu", 100, 3),
    ("Big_1_0_0_APP.fmu", 3000, 5),
];
const MAX_FRAMES: usize = 64;
/// Where the frames' clock starts: after the live handshake's flights.
pub const FRAMES_START_MS: u64 = 100;

/// Millisecond 0 of every front of this process: a front's clock is
/// relative to it, so the same input behaves alike in every run.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A front with the fixed keys and room for `capacity` sessions and
/// `capacity` handshakes, serving every mode: PSK, certificates (its own
/// "certificate" a bare public key, no CA: every client certificate is
/// refused) and raw public keys (the device key of
/// `dtls_session::CLIENT_RAW_KEY` listed as `mote`, every PID).
pub fn front(capacity: usize) -> Front {
    use iot_ota::dtls::{CertificateAuth, RawKeyAuth, RawPublicKeys, TrustAnchors};
    let keys = PskTable::parse(PSK_TABLE).expect("the fuzz PSK table parses");
    let server =
        || iot_ota::dtls::server_key_from_pem(dtls_session::SERVER_RAW_KEY).expect("server key");
    let clients = format!(
        "mote sha256:{}\n",
        dtls_session::fingerprint_hex(dtls_session::CLIENT_RAW_KEY)
    );
    let clients = RawPublicKeys::parse(&clients).expect("the fuzz key list parses");
    Front::new(keys, limits(capacity), entropy(), epoch())
        .with_certificates(
            CertificateAuth::new(server(), TrustAnchors::default(), None),
            0,
        )
        .expect("certificates")
        .with_raw_public_keys(RawKeyAuth::new(server(), clients))
        .expect("raw public keys")
}

fn service() -> Service {
    let files = FILES
        .iter()
        .map(|&(name, len, seed)| (name.to_owned(), images::image_bytes(len, seed)))
        .collect();
    let (catalog, skipped) = Catalog::from_files(files).expect("test catalog builds");
    assert!(skipped.is_empty());
    let limits = Limits {
        continuation_capacity: 8,
        rate_table_capacity: 8,
        max_observers: 2,
        ..Limits::default()
    };
    Service::new(catalog, limits, SERVICE_KEYS)
}

/// The address of PEER: bits 0-1 the IP, bits 2-6 the port.
pub fn address(p: u8) -> SocketAddr {
    let ip = match p & 3 {
        0 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        2 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    SocketAddr::new(ip, 50_000 + u16::from((p >> 2) & 0x1f))
}

/// The random and the cookie of the ClientHello at the start of
/// `datagram`, read by the harness itself (record header 13, handshake
/// header 12, version 2, random 32, session id, cookie).
fn hello_random_and_cookie(datagram: &[u8]) -> Option<([u8; 32], &[u8])> {
    let random: [u8; 32] = datagram.get(27..59)?.try_into().ok()?;
    let session_id_len = usize::from(*datagram.get(59)?);
    let cookie_len_at = 60 + session_id_len;
    let cookie_len = usize::from(*datagram.get(cookie_len_at)?);
    let cookie = datagram.get(cookie_len_at + 1..cookie_len_at + 1 + cookie_len)?;
    Some((random, cookie))
}

/// The cookie a front with the same keys answers the hello at the start
/// of `datagram`, without its cookie, from `from` with.
fn cookie_issued(from: SocketAddr, datagram: &[u8], now_ms: u64) -> Option<Vec<u8>> {
    let first = without_cookie(datagram)?;
    let mut oracle = front(1);
    if oracle.receive(from, now_ms, &first) != Handled::HelloVerify {
        return None;
    }
    let answers = oracle.take_outgoing();
    let (_, record) = answers.first()?;
    dtls_session::hello_verify_cookie(record).map(<[u8]>::to_vec)
}

/// The ClientHello record at the start of `datagram` with its cookie
/// taken out (the lengths mended): the first hello of the exchange.
fn without_cookie(datagram: &[u8]) -> Option<Vec<u8>> {
    let record_len = 13 + usize::from(u16::from_be_bytes([*datagram.get(11)?, *datagram.get(12)?]));
    let handshake = datagram.get(13..record_len)?;
    let total = usize::from(*handshake.get(2)?) << 8 | usize::from(*handshake.get(3)?);
    let body = handshake.get(12..12 + total)?;
    let cookie_len_at = 35 + usize::from(*body.get(34)?);
    let cookie_len = usize::from(*body.get(cookie_len_at)?);
    let mut new_body = body.get(..cookie_len_at)?.to_vec();
    new_body.push(0);
    new_body.extend_from_slice(body.get(cookie_len_at + 1 + cookie_len..)?);
    let len = (new_body.len() as u32).to_be_bytes();
    let mut record = datagram.get(..11)?.to_vec();
    record.extend_from_slice(&((new_body.len() + 12) as u16).to_be_bytes());
    record.extend_from_slice(&[1, len[1], len[2], len[3]]);
    record.extend_from_slice(handshake.get(4..9)?);
    record.extend_from_slice(&[len[1], len[2], len[3]]);
    record.extend_from_slice(&new_body);
    Some(record)
}

/// What one input reached, for the seeds' test to show that they get
/// past the cookie exchange and into the service.
#[derive(Debug, Default)]
pub struct Reached {
    /// HelloVerifyRequests sent.
    pub hello_verify: usize,
    /// Sessions started by a cookie-bearing hello (the live one included).
    pub started: usize,
    /// Requests decrypted and given to the service.
    pub requests: usize,
    /// The response code of every reply the service wrote.
    pub codes: Vec<u8>,
}

/// Runs every property on one input; panics on a violation.
pub fn check(data: &[u8]) {
    run(data);
}

/// [`check`], telling what the input reached.
pub fn run(data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    let Some((&flags, mut rest)) = data.split_first() else {
        return reached;
    };
    let capacity = 1 + usize::from((flags >> 2) & 7);
    let mut front = front(capacity);
    let mut service = service();
    let mut out = vec![0u8; MAX_REPLY_LEN];
    let live_peer = address(0);
    let mut live = None;
    if flags & 1 != 0 {
        let (identity, key) = match flags & 2 {
            0 => ("dev1", "dev1-secret-key"),
            _ => ("dev2", "0x00112233445566778899aabbccddeeff"),
        };
        let credentials = match flags & 0x20 {
            0 => iot_ota::dtls::ClientCredentials::Psk(
                iot_ota::dtls::ClientPsk::new(identity, key).expect("psk"),
            ),
            _ => dtls_session::raw_key_credentials(),
        };
        let (client, _) =
            dtls_session::handshake_with(&mut front, live_peer, epoch(), 0, &credentials)
                .expect("the client engine's handshake with the front");
        let _ = front.take_outgoing();
        live = Some(client);
    }
    let mut now_ms = FRAMES_START_MS;
    for _ in 0..MAX_FRAMES {
        let Some((&[p, dt, lo, hi], tail)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
        let (data, tail) = tail.split_at(len);
        rest = tail;
        now_ms += match dt {
            0..=199 => u64::from(dt) * 10,
            _ => u64::from(dt - 199) * 30_000,
        };
        if front.next_timer_ms().is_some_and(|due| due <= now_ms) {
            front.on_timers(now_ms);
            let _ = front.take_outgoing();
        }
        let through_session = p & 0x80 != 0;
        let (from, datagrams) = match (through_session, live.as_mut()) {
            (true, Some(client)) => {
                let Some(records) = dtls_session::encrypt(client, data) else {
                    continue;
                };
                (live_peer, records)
            }
            (true, None) => continue,
            (false, _) => (address(p), vec![data.to_vec()]),
        };
        let authenticated = front.authorization(from).is_some();
        let mut requests = Vec::new();
        for datagram in &datagrams {
            requests.extend(receive(
                &mut front,
                from,
                now_ms,
                datagram,
                capacity,
                &mut reached,
            ));
        }
        if through_session && authenticated && (1..=MAX_REPLY_LEN).contains(&data.len()) {
            assert_eq!(
                requests,
                [data],
                "a request through the live session arrived changed"
            );
        }
        let authorization = front.authorization(from).cloned().unwrap_or_default();
        reached.requests += requests.len();
        for request in requests {
            let incoming = Request::new(peer(from), now_ms, &request).authorized(&authorization);
            let action = service.handle_request(&incoming, &mut out);
            if let Action::Reply { len, .. } = action {
                assert!(len <= MAX_REPLY_LEN);
                let reply = &out[..len];
                reached.codes.extend(reply.get(1));
                front.send(from, reply);
            }
        }
        // Replies go to the peer whose session asked.
        for (to, _) in front.take_outgoing() {
            assert_eq!(to, from, "a reply to another peer");
        }
    }
    reached
}

/// One datagram into the front, with the properties of what it did;
/// returns the requests it carried (its answers are dropped: the
/// properties are the server's, not a client's).
fn receive(
    front: &mut Front,
    from: SocketAddr,
    now_ms: u64,
    datagram: &[u8],
    capacity: usize,
    reached: &mut Reached,
) -> Vec<Vec<u8>> {
    let had_session = front.has_session(from);
    let was_authenticated = front.authorization(from).is_some();
    let sessions_before = front.session_count();
    let handled = front.receive(from, now_ms, datagram);
    let requests = front.take_requests();
    let outgoing = front.take_outgoing();
    match handled {
        Handled::HelloVerify => reached.hello_verify += 1,
        Handled::Started => reached.started += 1,
        _ => {}
    }
    let handshakes = front.handshake_count();
    assert!(handshakes <= capacity, "more handshakes than room");
    assert!(
        front.session_count() - handshakes <= capacity,
        "more sessions than room"
    );
    if handled == Handled::Started {
        let (_, cookie) =
            hello_random_and_cookie(datagram).expect("a session starts with a ClientHello");
        assert_eq!(
            cookie_issued(from, datagram, now_ms).as_deref(),
            Some(cookie),
            "a handshake from a hello whose cookie the front does not issue to its sender"
        );
        assert!(front.has_session(from));
    } else {
        assert!(
            front.session_count() <= sessions_before,
            "{handled:?} made a session"
        );
        assert!(
            had_session || !front.has_session(from),
            "{handled:?} made a session for its peer"
        );
    }
    if !requests.is_empty() {
        assert!(
            was_authenticated || front.authorization(from).is_some(),
            "a request from a peer that never authenticated"
        );
    }
    if !had_session && !front.has_session(from) {
        let answered: usize = outgoing.iter().map(|(_, record)| record.len()).sum();
        assert!(
            answered <= datagram.len(),
            "{answered} bytes answered to {} without a session",
            datagram.len()
        );
    }
    for (to, _) in &outgoing {
        assert_eq!(*to, from, "an answer to another peer");
    }
    requests
}
