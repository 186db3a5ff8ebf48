//! DTLS records for the coaps fuzzing, shared by tests/fuzz_dtls.rs and
//! the fuzz target `dtls_front` (`tests/fuzz/checks/dtls_front.rs`
//! includes this file by `#[path]`): a ClientHello built by hand, and a
//! real handshake between the client's engine and a server-side front.
//! Needs the `dtls` feature of the crate and the `dimpl` crate.
#![allow(dead_code)]

use iot_ota::dtls::{ClientCredentials, ClientPsk, Front};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A DTLS 1.2 ClientHello with `cookie`: PSK_AES128_CCM_8, null
/// compression, extended master secret.
pub fn client_hello(random: &[u8; 32], cookie: &[u8], seq: u8) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(random);
    body.push(0);
    body.push(cookie.len() as u8);
    body.extend_from_slice(cookie);
    body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0, 0, 4, 0, 0x17, 0, 0]);
    let len = (body.len() as u32).to_be_bytes();
    let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, seq];
    let hs_len = (body.len() + 12) as u16;
    record.extend_from_slice(&hs_len.to_be_bytes());
    record.extend_from_slice(&[1, len[1], len[2], len[3], 0, seq, 0, 0, 0]);
    record.extend_from_slice(&[len[1], len[2], len[3]]);
    record.extend_from_slice(&body);
    record
}

/// The cookie of a HelloVerifyRequest datagram (record header 13,
/// handshake header 12, version 2, cookie length 1).
pub fn hello_verify_cookie(datagram: &[u8]) -> Option<&[u8]> {
    if datagram.first() != Some(&22) || datagram.get(13) != Some(&3) {
        return None;
    }
    let len = usize::from(*datagram.get(27)?);
    datagram.get(28..28 + len)
}

/// A fixed P-256 key pair (PKCS #8 PEM): the server's raw public key in
/// the fuzzing's fronts. Test keys, made for this file.
pub const SERVER_RAW_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgu6cFT4Wy2O/J2QI2
NzhHR2jJEBkUUABB2j81+p8nGm+hRANCAATTTRV2DypXRWIPhhuNQihMMWbdL2j2
VTLU7uoEOhcma0LXFTonpk+8o/WnUf2VRjLKYgPpJVevptBw/XlWz2/1
-----END PRIVATE KEY-----
";
/// Another: the device's raw public key, listed in those fronts.
pub const CLIENT_RAW_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgpZ+urWJtQ+mA5XjT
Tc2uZFk6fm8wZmydYTdu7Bv48iKhRANCAATeEDmPSWpZY+hnTwwnclbjjH4EQLDK
A8tOjvCne+5CETdJkL6TJkkn8eg2EQXlMPns0tWY3wpWT/iSLwbNyJg1
-----END PRIVATE KEY-----
";

/// The SHA-256 of the public key of `pem` in hex, as a `--rpk-clients`
/// line takes it after `sha256:`.
pub fn fingerprint_hex(pem: &str) -> String {
    let key = iot_ota::dtls::server_key_from_pem(pem).expect("test key");
    iot_ota::dtls::fingerprint(key.certificate())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The device's credentials for a raw public key handshake with a
/// front whose key is [`SERVER_RAW_KEY`].
pub fn raw_key_credentials() -> ClientCredentials {
    let server = iot_ota::dtls::server_key_from_pem(SERVER_RAW_KEY).expect("server key");
    ClientCredentials::RawPublicKey {
        own: iot_ota::dtls::server_key_from_pem(CLIENT_RAW_KEY).expect("client key"),
        server: iot_ota::dtls::fingerprint(server.certificate()),
    }
}

/// Credentials that make a certificate hello (ECDHE-ECDSA suites, no
/// certificate type extensions): their "certificate" is a bare public
/// key, which the fuzzing's fronts refuse (they have no CA).
pub fn certificate_credentials() -> ClientCredentials {
    ClientCredentials::Certificate {
        own: iot_ota::dtls::server_key_from_pem(CLIENT_RAW_KEY).expect("client key"),
        anchors: iot_ota::dtls::TrustAnchors::default(),
        server: iot_ota::dtls::ServerName::Ip(std::net::Ipv6Addr::LOCALHOST.into()),
    }
}

/// The first ClientHello of a client engine with `credentials`.
pub fn first_hello(credentials: &ClientCredentials) -> Vec<u8> {
    let now = Instant::now();
    let mut client = credentials
        .engine(Duration::from_secs(1), Duration::from_secs(30), now)
        .expect("client engine");
    let _ = client.handle_timeout(now);
    let mut buf = vec![0u8; 4096];
    for _ in 0..8 {
        if let dimpl::Output::Packet(p) = client.poll_output(&mut buf) {
            return p.to_vec();
        }
    }
    panic!("the client engine wrote no ClientHello");
}

/// Runs a real handshake between the client engine, with `identity` and
/// `key`, and `front` as `peer`, as [`handshake_with`].
pub fn handshake(
    front: &mut Front,
    peer: SocketAddr,
    epoch: Instant,
    start_ms: u64,
    identity: &str,
    key: &str,
) -> Option<(dimpl::Dtls, Vec<Vec<u8>>)> {
    let psk = ClientPsk::new(identity, key).ok()?;
    handshake_with(front, peer, epoch, start_ms, &ClientCredentials::Psk(psk))
}

/// Runs a real handshake between the client engine, with `credentials`,
/// and `front` as `peer`, the front's clock at millisecond
/// `start_ms` of `epoch` (the front's own epoch) and one millisecond
/// more per flight; returns the client engine (connected, the front
/// holding the established session) and every datagram it sent, or None
/// when no handshake completed within 20 flights.
pub fn handshake_with(
    front: &mut Front,
    peer: SocketAddr,
    epoch: Instant,
    start_ms: u64,
    credentials: &ClientCredentials,
) -> Option<(dimpl::Dtls, Vec<Vec<u8>>)> {
    let start = epoch + Duration::from_millis(start_ms);
    let mut client = credentials
        .engine(Duration::from_secs(1), Duration::from_secs(30), start)
        .ok()?;
    let mut sent = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut connected = false;
    for step in 0..20u64 {
        let now_ms = start_ms + step;
        client
            .handle_timeout(epoch + Duration::from_millis(now_ms))
            .ok()?;
        let mut out = Vec::new();
        for _ in 0..64 {
            match client.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => out.push(p.to_vec()),
                dimpl::Output::Connected => connected = true,
                dimpl::Output::Timeout(_) => break,
                _ => {}
            }
        }
        for datagram in out {
            front.receive(peer, now_ms, &datagram);
            sent.push(datagram);
        }
        for (_, record) in front.take_outgoing() {
            let _ = client.handle_packet(&record);
        }
        if connected && front.authorization(peer).is_some() {
            return Some((client, sent));
        }
    }
    None
}

/// The datagrams `client` has to send once `plaintext` is given to it
/// (one encrypted record, normally), or None when the engine refuses it.
pub fn encrypt(client: &mut dimpl::Dtls, plaintext: &[u8]) -> Option<Vec<Vec<u8>>> {
    client.send_application_data(plaintext).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    for _ in 0..8 {
        match client.poll_output(&mut buf) {
            dimpl::Output::Packet(p) => out.push(p.to_vec()),
            dimpl::Output::Timeout(_) => break,
            _ => {}
        }
    }
    Some(out)
}
