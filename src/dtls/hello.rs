//! The stateless cookie exchange (RFC 6347 §4.2.1), done before any
//! engine exists: a ClientHello is read in place, its cookie checked
//! against an HMAC of the sender's address and port and the hello's own
//! fields, and a HelloVerifyRequest written into a caller's buffer. No
//! allocation, no state per sender: a spoofed hello costs one HMAC and
//! an answer no larger than itself.

use super::Entropy;
use dimpl::crypto::rust_crypto;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// Record header: type 1, version 2, epoch 2, sequence 6, length 2.
pub(super) const RECORD_HEADER: usize = 13;
/// Handshake header: type 1, length 3, message_seq 2, fragment offset 3,
/// fragment length 3.
pub(super) const HANDSHAKE_HEADER: usize = 12;
/// Record content type of handshake messages.
pub(super) const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Handshake type of a HelloVerifyRequest.
const HELLO_VERIFY_REQUEST: u8 = 3;
/// The cookie's length: a whole HMAC-SHA256.
pub(super) const COOKIE_LEN: usize = 32;
/// The length of the HelloVerifyRequest datagram: record header 13,
/// handshake header 12, version 2, cookie length 1, cookie 32.
pub const HELLO_VERIFY_LEN: usize = RECORD_HEADER + HANDSHAKE_HEADER + 3 + COOKIE_LEN;
/// The client_certificate_type extension (RFC 7250).
const CERTIFICATE_TYPE_CLIENT: u16 = 19;
/// The server_certificate_type extension (RFC 7250).
const CERTIFICATE_TYPE_SERVER: u16 = 20;
/// The certificate type of X.509 certificates.
const X509: u8 = 0;
/// The certificate type of raw public keys.
const RAW_PUBLIC_KEY: u8 = 2;
/// DTLS 1.2 on the wire; the record version of every record we write.
const DTLS_1_2: [u8; 2] = [0xfe, 0xfd];
/// DTLS 1.0: the server_version of a HelloVerifyRequest (RFC 6347 §4.2.1).
const DTLS_1_0: [u8; 2] = [0xfe, 0xff];
/// The most bytes of a hello's fields a cookie covers: address 16, port
/// 2, version 2, random 32, session id 33, cipher suites 2 + 256,
/// compression methods 1 + 8. A hello with more suites than that is not
/// from a device and gets no answer.
const COOKIE_INPUT_MAX: usize = 16 + 2 + 2 + 32 + 33 + 258 + 9;

/// Where the parts of an unfragmented ClientHello are in its datagram's
/// first record, as found by [`ClientHello::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClientHello {
    /// The length of the first record, header included.
    pub(super) record_len: usize,
    /// The record's sequence number (48 bits).
    pub(super) record_sequence: u64,
    /// The client's random.
    pub(super) random: [u8; 32],
    /// client_version, random and session id: the fields a cookie covers
    /// that stand together.
    head: Range<usize>,
    /// Where the cookie is.
    cookie: Range<usize>,
    /// Cipher suites and compression methods, with their lengths.
    tail: Range<usize>,
    /// The extensions, without their total length (empty when there
    /// are none).
    extensions: Range<usize>,
}

impl ClientHello {
    /// The ClientHello at the start of `datagram`, if it begins with one
    /// in a plaintext handshake record, whole.
    pub(super) fn parse(datagram: &[u8]) -> Option<ClientHello> {
        let header = datagram.get(..RECORD_HEADER)?;
        if header.first() != Some(&CONTENT_HANDSHAKE) || header.get(3..5) != Some(&[0, 0]) {
            return None;
        }
        let record_sequence = be(header.get(5..11)?);
        let length = usize::try_from(be(header.get(11..13)?)).ok()?;
        let record_len = RECORD_HEADER + length;
        let record = datagram.get(..record_len)?;
        let handshake = record.get(RECORD_HEADER..)?;
        let total = usize::try_from(be(handshake.get(1..4)?)).ok()?;
        let offset = be(handshake.get(6..9)?);
        let fragment = usize::try_from(be(handshake.get(9..12)?)).ok()?;
        if handshake.first() != Some(&CLIENT_HELLO) || offset != 0 || fragment != total {
            return None;
        }
        let body_start = RECORD_HEADER + HANDSHAKE_HEADER;
        let body_end = body_start.checked_add(total)?;
        let body = record.get(body_start..body_end)?;
        let random: [u8; 32] = body.get(2..34)?.try_into().ok()?;
        let session_id_len = usize::from(*body.get(34)?);
        let cookie_len_at = 35 + session_id_len;
        let cookie_len = usize::from(*body.get(cookie_len_at)?);
        let cookie_start = cookie_len_at + 1;
        let suites_at = cookie_start + cookie_len;
        let suites_len = usize::try_from(be(body.get(suites_at..suites_at + 2)?)).ok()?;
        let compression_at = suites_at + 2 + suites_len;
        let compression_len = usize::from(*body.get(compression_at)?);
        let tail_end = compression_at + 1 + compression_len;
        body.get(..tail_end)?;
        let extensions = match body.get(tail_end..tail_end + 2) {
            None => tail_end..tail_end,
            Some(len) => {
                let end = tail_end + 2 + usize::try_from(be(len)).ok()?;
                body.get(..end)?;
                tail_end + 2..end
            }
        };
        let at = |range: Range<usize>| body_start + range.start..body_start + range.end;
        Some(ClientHello {
            record_len,
            record_sequence,
            random,
            head: at(0..cookie_len_at),
            cookie: at(cookie_start..suites_at),
            tail: at(suites_at..tail_end),
            extensions: at(extensions),
        })
    }

    /// The cipher suites the hello offers, in the client's order of
    /// preference.
    pub(super) fn suites<'d>(&self, datagram: &'d [u8]) -> impl Iterator<Item = u16> + 'd {
        let tail = datagram.get(self.tail.clone()).unwrap_or_default();
        let len = usize::try_from(be(tail.get(..2).unwrap_or_default())).unwrap_or(0);
        tail.get(2..2 + len)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter_map(|pair| Some(u16::from_be_bytes(pair.try_into().ok()?)))
    }

    /// The body of the hello's extension of type `kind`, if it has one.
    pub(super) fn extension<'d>(&self, datagram: &'d [u8], kind: u16) -> Option<&'d [u8]> {
        let mut rest = datagram.get(self.extensions.clone())?;
        // Bounded: each turn consumes at least four bytes.
        while let Some(header) = rest.get(..4) {
            let len = usize::try_from(be(header.get(2..4)?)).ok()?;
            let body = rest.get(4..4 + len)?;
            if be(header.get(..2)?) == u64::from(kind) {
                return Some(body);
            }
            rest = rest.get(4 + len..)?;
        }
        None
    }

    /// Whether the hello asks for raw public keys both ways (RFC 7250
    /// §4.1): RawPublicKey (2) among the types of its
    /// server_certificate_type (20) extension, and in its
    /// client_certificate_type (19), the type of what the client would
    /// send, ahead of X.509 (0) when `x509_too` (the server takes
    /// either). GnuTLS offers [0, 2] for the server's and [2] for its own.
    pub(super) fn wants_raw_public_keys(&self, datagram: &[u8], x509_too: bool) -> bool {
        let types = |kind| {
            let body = self.extension(datagram, kind).unwrap_or_default();
            let len = usize::from(*body.first().unwrap_or(&0));
            body.get(1..1 + len).unwrap_or_default()
        };
        let own = types(CERTIFICATE_TYPE_CLIENT);
        let raw = own.iter().position(|t| *t == RAW_PUBLIC_KEY);
        let x509 = own.iter().position(|t| *t == X509);
        types(CERTIFICATE_TYPE_SERVER).contains(&RAW_PUBLIC_KEY)
            && match (raw, x509) {
                (Some(r), Some(x)) => !x509_too || r < x,
                (Some(_), None) => true,
                _ => false,
            }
    }

    /// The hello's record alone (a datagram may carry more after it).
    pub(super) fn record<'d>(&self, datagram: &'d [u8]) -> &'d [u8] {
        datagram.get(..self.record_len).unwrap_or(datagram)
    }

    /// The cookie the hello carries (empty in a first hello).
    pub(super) fn cookie<'d>(&self, datagram: &'d [u8]) -> &'d [u8] {
        datagram.get(self.cookie.clone()).unwrap_or_default()
    }
}

/// The cookie secrets: one per period of the caller's clock (period `n`
/// runs from `n * period_ms`), the current one and the one before it
/// accepted, so that a cookie made just before a rotation still opens a
/// handshake (RFC 6347 §4.2.1) and none opens one two periods later.
pub(super) struct CookieSecrets {
    current: [u8; 32],
    previous: [u8; 32],
    /// The period `current` belongs to.
    period: u64,
    /// How long a secret is current.
    period_ms: u64,
    /// Where fresh secrets come from: the operating system in the server,
    /// a fixed sequence in tests.
    entropy: Entropy,
}

impl CookieSecrets {
    /// Secrets drawn from `entropy`, a new one every `period_ms` of the
    /// caller's clock.
    pub(super) fn new(mut entropy: Entropy, period_ms: u64) -> CookieSecrets {
        let mut current = [0; 32];
        let mut previous = [0; 32];
        entropy(&mut current);
        entropy(&mut previous);
        CookieSecrets {
            current,
            previous,
            period: 0,
            period_ms: period_ms.max(1),
            entropy,
        }
    }

    /// Draws the secret of `now_ms`'s period when it is a new one; after
    /// two periods without a hello both secrets are new. Rotation is
    /// lazy: a quiet server draws nothing.
    fn rotate(&mut self, now_ms: u64) {
        let period = now_ms / self.period_ms;
        if period <= self.period {
            return;
        }
        if period == self.period + 1 {
            self.previous = self.current;
        } else {
            (self.entropy)(&mut self.previous);
        }
        (self.entropy)(&mut self.current);
        self.period = period;
    }

    /// The cookie for `hello` in `datagram` from `peer` under the current
    /// secret; `None` for a hello too large to be a device's.
    pub(super) fn make(
        &mut self,
        peer: SocketAddr,
        hello: &ClientHello,
        datagram: &[u8],
        now_ms: u64,
    ) -> Option<[u8; COOKIE_LEN]> {
        self.rotate(now_ms);
        cookie(&self.current, peer, hello, datagram)
    }

    /// True when the cookie of `hello` was made for `peer` and these
    /// fields under the current or the previous secret; compared in
    /// constant time.
    pub(super) fn verify(
        &mut self,
        peer: SocketAddr,
        hello: &ClientHello,
        datagram: &[u8],
        now_ms: u64,
    ) -> bool {
        self.rotate(now_ms);
        let given = hello.cookie(datagram);
        if given.len() != COOKIE_LEN {
            return false;
        }
        let mut valid = false;
        for secret in [&self.current, &self.previous] {
            if let Some(expected) = cookie(secret, peer, hello, datagram) {
                valid |= constant_time_eq(&expected, given);
            }
        }
        valid
    }
}

impl std::fmt::Debug for CookieSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("CookieSecrets")
            .field("period_ms", &self.period_ms)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 under `secret` of the peer's address and port and the
/// hello's version, random, session id, cipher suites and compression
/// methods: everything RFC 6347 §4.2.1 asks a cookie to bind, so that a
/// cookie opens only the hello it was made for, from where it was sent.
fn cookie(
    secret: &[u8; 32],
    peer: SocketAddr,
    hello: &ClientHello,
    datagram: &[u8],
) -> Option<[u8; COOKIE_LEN]> {
    let head = datagram.get(hello.head.clone())?;
    let tail = datagram.get(hello.tail.clone())?;
    let ip = match peer.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut input = [0u8; COOKIE_INPUT_MAX];
    let mut len = 0;
    for part in [&ip.octets()[..], &peer.port().to_be_bytes(), head, tail] {
        let end = len + part.len();
        input.get_mut(len..end)?.copy_from_slice(part);
        len = end;
    }
    let provider = rust_crypto::default_provider().hmac_provider;
    provider.hmac_sha256(secret, input.get(..len)?).ok()
}

/// True when `a` and `b` are equal, in time that depends only on their
/// lengths: a forger learns nothing from how fast a cookie is refused.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes the HelloVerifyRequest carrying `cookie` for `hello` into
/// `out` and returns its length ([`HELLO_VERIFY_LEN`]). Its record
/// sequence number is the hello's (RFC 6347 §4.2.1), so that the
/// ServerHello that may follow never repeats it.
pub(super) fn write_hello_verify(
    hello: &ClientHello,
    cookie: &[u8; COOKIE_LEN],
    out: &mut [u8; HELLO_VERIFY_LEN],
) -> usize {
    const BODY: usize = 3 + COOKIE_LEN;
    const FRAGMENT: usize = HANDSHAKE_HEADER + BODY;
    let sequence = hello.record_sequence.to_be_bytes();
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        let end = at + bytes.len();
        if let Some(slot) = out.get_mut(at..end) {
            slot.copy_from_slice(bytes);
        }
        at = end;
    };
    put(&[CONTENT_HANDSHAKE]);
    put(&DTLS_1_2);
    put(&[0, 0]);
    put(sequence.get(2..).unwrap_or_default());
    put(&u16::try_from(FRAGMENT).unwrap_or(0).to_be_bytes());
    let body_len = u32::try_from(BODY).unwrap_or(0).to_be_bytes();
    put(&[HELLO_VERIFY_REQUEST]);
    put(body_len.get(1..).unwrap_or_default());
    put(&[0, 0]);
    put(&[0, 0, 0]);
    put(body_len.get(1..).unwrap_or_default());
    put(&DTLS_1_0);
    put(&[COOKIE_LEN as u8]);
    put(cookie);
    at
}

/// A big-endian unsigned number of up to 8 bytes.
pub(super) fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |n, b| n << 8 | u64::from(*b))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A DTLS 1.2 ClientHello record with `cookie`, message_seq `seq`,
    /// record sequence number `record_seq` and `random`, offering the
    /// PSK suite and null compression.
    pub(in crate::dtls) fn hello(cookie: &[u8], seq: u16, record_seq: u8, random: u8) -> Vec<u8> {
        hello_offering(cookie, seq, record_seq, random, 0xc0a8, &[])
    }

    /// As [`hello`], offering `suite` and with `extensions` (type, body;
    /// none: no extensions block).
    pub(in crate::dtls) fn hello_offering(
        cookie: &[u8],
        seq: u16,
        record_seq: u8,
        random: u8,
        suite: u16,
        extensions: &[(u16, &[u8])],
    ) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[random; 32]);
        body.push(0);
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2]);
        body.extend_from_slice(&suite.to_be_bytes());
        body.extend_from_slice(&[1, 0]);
        if !extensions.is_empty() {
            let mut ext = Vec::new();
            for (kind, data) in extensions {
                ext.extend_from_slice(&kind.to_be_bytes());
                ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
                ext.extend_from_slice(data);
            }
            body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            body.extend_from_slice(&ext);
        }
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&seq.to_be_bytes());
        hs.extend_from_slice(&[0, 0, 0]);
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, record_seq];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        record
    }

    /// Secrets from a counter: reproducible, and each draw differs.
    pub(in crate::dtls) fn counting_entropy() -> Entropy {
        let mut n = 0u8;
        Box::new(move |secret: &mut [u8; 32]| {
            n = n.wrapping_add(1);
            *secret = [n; 32];
        })
    }

    fn peer() -> SocketAddr {
        "192.0.2.1:4000".parse().expect("address")
    }

    #[test]
    fn client_hellos_are_found_and_other_records_are_not() {
        let first = hello(&[], 0, 0, 7);
        let h = ClientHello::parse(&first).expect("a hello");
        assert!(h.cookie(&first).is_empty());
        assert_eq!(h.random, [7; 32]);
        let with = hello(&[9; 32], 1, 5, 7);
        let h = ClientHello::parse(&with).expect("a hello");
        assert_eq!(h.cookie(&with), &[9u8; 32][..]);
        assert_eq!(h.record_sequence, 5);
        let mut app_data = with.clone();
        app_data[0] = 23;
        assert_eq!(ClientHello::parse(&app_data), None);
        for cut in 0..with.len() {
            assert_eq!(ClientHello::parse(&with[..cut]), None, "cut at {cut}");
        }
    }

    /// `hello(...)` with `extensions` (type, body) after its compression
    /// methods.
    fn hello_with(extensions: &[(u16, &[u8])]) -> Vec<u8> {
        hello_offering(&[], 0, 0, 7, 0xc0a8, extensions)
    }

    #[test]
    fn suites_and_certificate_types_are_read_from_the_hello() {
        let first = hello(&[], 0, 0, 7);
        let h = ClientHello::parse(&first).expect("a hello");
        assert_eq!(h.suites(&first).collect::<Vec<_>>(), [0xc0a8]);
        assert!(!h.wants_raw_public_keys(&first, false));
        // GnuTLS with a raw key: X.509 or raw for the server's, raw for
        // its own.
        let gnutls = hello_with(&[(19, &[1, 2]), (20, &[2, 0, 2]), (23, &[])]);
        let h = ClientHello::parse(&gnutls).expect("a hello");
        assert_eq!(h.extension(&gnutls, 23), Some(&[][..]));
        assert_eq!(h.extension(&gnutls, 20), Some(&[2, 0, 2][..]));
        assert!(h.wants_raw_public_keys(&gnutls, true));
        // A client that would send either, X.509 first: certificates when
        // the server has them.
        let either = hello_with(&[(19, &[2, 0, 2]), (20, &[1, 2])]);
        let h = ClientHello::parse(&either).expect("a hello");
        assert!(!h.wants_raw_public_keys(&either, true));
        assert!(h.wants_raw_public_keys(&either, false));
        // No raw key for the server's: no raw public key handshake.
        let half = hello_with(&[(19, &[1, 2]), (20, &[1, 0])]);
        let h = ClientHello::parse(&half).expect("a hello");
        assert!(!h.wants_raw_public_keys(&half, false));
        // Extensions cut short: no hello.
        for cut in first.len() + 1..gnutls.len() {
            let mut short = gnutls[..cut].to_vec();
            let len = (cut - RECORD_HEADER) as u16;
            short[11..13].copy_from_slice(&len.to_be_bytes());
            assert!(ClientHello::parse(&short).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn a_fragment_of_a_hello_is_not_a_hello() {
        let mut fragment = hello(&[], 0, 0, 7);
        // fragment_length one short of the message length.
        fragment[RECORD_HEADER + 11] -= 1;
        assert_eq!(ClientHello::parse(&fragment), None);
    }

    #[test]
    fn hello_verify_request_is_rfc6347_figure_and_smaller_than_the_hello() {
        let first = hello(&[], 0, 3, 7);
        let h = ClientHello::parse(&first).expect("a hello");
        let mut out = [0u8; HELLO_VERIFY_LEN];
        let len = write_hello_verify(&h, &[0xab; COOKIE_LEN], &mut out);
        assert_eq!(len, HELLO_VERIFY_LEN);
        assert!(len <= first.len());
        let mut expected = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 3, 0, 47];
        expected.extend_from_slice(&[3, 0, 0, 35, 0, 0, 0, 0, 0, 0, 0, 35, 0xfe, 0xff, 32]);
        expected.extend_from_slice(&[0xab; 32]);
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn a_cookie_opens_only_its_own_hello_from_its_own_address() {
        let mut secrets = CookieSecrets::new(counting_entropy(), 30_000);
        let first = hello(&[], 0, 0, 7);
        let h = ClientHello::parse(&first).expect("a hello");
        let made = secrets.make(peer(), &h, &first, 10).expect("a cookie");
        let second = hello(&made, 1, 1, 7);
        let h2 = ClientHello::parse(&second).expect("a hello");
        assert!(secrets.verify(peer(), &h2, &second, 20));
        let other_port: SocketAddr = "192.0.2.1:4001".parse().expect("address");
        assert!(!secrets.verify(other_port, &h2, &second, 20));
        let other_random = hello(&made, 1, 1, 8);
        let h3 = ClientHello::parse(&other_random).expect("a hello");
        assert!(!secrets.verify(peer(), &h3, &other_random, 20));
        let mut forged = made;
        forged[0] ^= 1;
        let forged = hello(&forged, 1, 1, 7);
        let h4 = ClientHello::parse(&forged).expect("a hello");
        assert!(!secrets.verify(peer(), &h4, &forged, 20));
    }

    #[test]
    fn cookies_stay_valid_for_one_rotation_and_not_two() {
        let mut secrets = CookieSecrets::new(counting_entropy(), 30_000);
        let first = hello(&[], 0, 0, 7);
        let h = ClientHello::parse(&first).expect("a hello");
        let made = secrets.make(peer(), &h, &first, 29_000).expect("a cookie");
        let second = hello(&made, 1, 1, 7);
        let h2 = ClientHello::parse(&second).expect("a hello");
        // Rotated once at 30 s: the previous secret still opens it.
        assert!(secrets.verify(peer(), &h2, &second, 31_000));
        assert!(secrets.verify(peer(), &h2, &second, 59_999));
        // Rotated again at 60 s: gone.
        assert!(!secrets.verify(peer(), &h2, &second, 60_000));
        // A cookie of the current period works in the next one too, even
        // when nothing asked in between.
        let made = secrets.make(peer(), &h, &first, 60_001).expect("a cookie");
        let again = hello(&made, 1, 1, 7);
        let h3 = ClientHello::parse(&again).expect("a hello");
        assert!(secrets.verify(peer(), &h3, &again, 119_000));
        assert!(!secrets.verify(peer(), &h3, &again, 120_000));
    }
}
