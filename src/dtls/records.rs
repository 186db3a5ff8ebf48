//! What the front reads of a datagram's records before an engine sees
//! them: their headers (RFC 6347 §4.1) and, for plaintext handshake
//! records, the handshake header (§4.2.2). It decides which datagrams may
//! reach a session at all, because an engine queues and parses what it is
//! given, and anyone can send anything to a session's address and port.

use super::hello::{be, CONTENT_HANDSHAKE, HANDSHAKE_HEADER, RECORD_HEADER};

/// Record content type of a ChangeCipherSpec.
const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
/// Record content type of an alert.
const CONTENT_ALERT: u8 = 21;
/// Handshake type of a ClientKeyExchange.
const CLIENT_KEY_EXCHANGE: u8 = 16;
/// Handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Handshake type of a Certificate.
const CERTIFICATE: u8 = 11;
/// Handshake type of a CertificateVerify.
const CERTIFICATE_VERIFY: u8 = 15;

/// How a handshake authenticates, which decides what its client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Pre-shared keys (TLS_PSK_WITH_AES_128_CCM_8).
    Psk,
    /// X.509 certificates both ways (ECDHE-ECDSA suites).
    Certificate,
    /// Raw public keys both ways (RFC 7250; ECDHE-ECDSA suites).
    RawPublicKey,
}

impl Mode {
    /// The largest message_seq its client sends in plaintext: a PSK
    /// client's ClientHello 0 and 1 (after the cookie) and
    /// ClientKeyExchange 2; a certificate client's Certificate 2,
    /// ClientKeyExchange 3 and CertificateVerify 4. The Finished after
    /// them is encrypted.
    fn last_plaintext_seq(self) -> u64 {
        match self {
            Mode::Psk => 2,
            Mode::Certificate | Mode::RawPublicKey => 4,
        }
    }

    /// Whether its client sends handshake messages of type `kind` in
    /// plaintext after its ClientHello.
    fn sends(self, kind: u8) -> bool {
        match self {
            Mode::Psk => matches!(kind, CLIENT_HELLO | CLIENT_KEY_EXCHANGE),
            Mode::Certificate | Mode::RawPublicKey => matches!(
                kind,
                CLIENT_HELLO | CLIENT_KEY_EXCHANGE | CERTIFICATE | CERTIFICATE_VERIFY
            ),
        }
    }

    /// The largest datagram a half-open handshake of this mode takes in:
    /// a PSK client's flight (ClientKeyExchange with an identity of at
    /// most 128 bytes, ChangeCipherSpec, Finished) is under 300 bytes; a
    /// certificate client's adds its certificate (500 to 800 bytes for a
    /// P-256 one) and CertificateVerify.
    pub(super) fn datagram_max(self) -> usize {
        match self {
            Mode::Psk => 512,
            Mode::Certificate | Mode::RawPublicKey => 1500,
        }
    }
}
/// The alert level of a fatal alert.
const FATAL: u8 = 2;

/// A fatal alert the front sends when a handshake fails on the key, so
/// that the client gives up at once instead of retransmitting until its
/// own timeout (RFC 5246 §7.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alert {
    /// The client's Finished did not decrypt: the key is not the one the
    /// server holds for the identity (RFC 4279 §2 names decrypt_error).
    DecryptError = 51,
    /// The identity is not in the PSK file (RFC 4279 §2).
    UnknownPskIdentity = 115,
    /// The client certificate does not parse.
    BadCertificate = 42,
    /// The client certificate is not one for a client, or not P-256.
    UnsupportedCertificate = 43,
    /// The client certificate (or its issuer) is outside its dates.
    CertificateExpired = 45,
    /// The client certificate is not issued by a trust anchor.
    UnknownCa = 48,
    /// The client's raw public key is not on the list.
    AccessDenied = 49,
    /// Any other failure of the handshake.
    HandshakeFailure = 40,
}

/// The length of an unencrypted alert record.
pub(super) const ALERT_LEN: usize = RECORD_HEADER + 2;

/// Writes a fatal epoch-0 alert with record sequence number `sequence`.
/// It goes out before the server's ChangeCipherSpec, while the client
/// still reads epoch 0, so it needs no keys.
pub(super) fn write_alert(alert: Alert, sequence: u64, out: &mut [u8; ALERT_LEN]) {
    let seq = sequence.to_be_bytes();
    out[0] = CONTENT_ALERT;
    out[1] = 0xfe;
    out[2] = 0xfd;
    out[3] = 0;
    out[4] = 0;
    out[5..11].copy_from_slice(&seq[2..]);
    out[11] = 0;
    out[12] = 2;
    out[13] = FATAL;
    out[14] = alert as u8;
}

/// Who may have sent a datagram, by what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Screened {
    /// Records a client in the middle of its handshake sends: whole
    /// ClientKeyExchange or ClientHello messages, ChangeCipherSpec,
    /// encrypted records.
    Handshake(Contents),
    /// Something no client sends at that point: a fragment of a
    /// handshake message, a later message in plaintext, a plaintext alert
    /// (which anyone can forge), a malformed record. Dropped unread.
    Refused,
}

/// What a datagram that passed [`screen`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Contents {
    /// A whole ClientKeyExchange.
    pub(super) key_exchange: bool,
    /// A ChangeCipherSpec.
    pub(super) change_cipher_spec: bool,
    /// A plaintext (epoch 0) record of any kind.
    pub(super) plaintext: bool,
    /// An encrypted (epoch 1) record.
    pub(super) encrypted: bool,
    /// An encrypted handshake record: a Finished, if anything.
    pub(super) encrypted_handshake: bool,
}

/// Reads the records of `datagram` and says whether it may be what a
/// client of `mode` sends during or right after its handshake. Plaintext
/// alerts are refused: a client's own is not worth a spoofer's power to
/// end someone else's handshake with one.
pub(super) fn screen(datagram: &[u8], mode: Mode) -> Screened {
    let mut rest = datagram;
    let mut contents = Contents::default();
    if rest.is_empty() {
        return Screened::Refused;
    }
    while !rest.is_empty() {
        let Some(&[content, _, _, e0, e1, _, _, _, _, _, _, l0, l1]) = rest.get(..RECORD_HEADER)
        else {
            return Screened::Refused;
        };
        let epoch = u16::from_be_bytes([e0, e1]);
        let length = usize::from(u16::from_be_bytes([l0, l1]));
        let Some(fragment) = rest.get(RECORD_HEADER..RECORD_HEADER + length) else {
            return Screened::Refused;
        };
        match (epoch, content) {
            (0, CONTENT_CHANGE_CIPHER_SPEC) => contents.change_cipher_spec = true,
            (0, CONTENT_HANDSHAKE) => match whole_client_messages(fragment, mode) {
                Some(key_exchange) => contents.key_exchange |= key_exchange,
                None => return Screened::Refused,
            },
            (1, _) => {
                contents.encrypted = true;
                contents.encrypted_handshake |= content == CONTENT_HANDSHAKE;
            }
            _ => return Screened::Refused,
        }
        contents.plaintext |= epoch == 0;
        rest = rest.get(RECORD_HEADER + length..).unwrap_or_default();
    }
    Screened::Handshake(contents)
}

/// Whether `fragment` (a plaintext handshake record's body) holds only
/// whole messages of the kinds and with a message_seq a client of `mode`
/// sends: `None` when it does not, else whether a
/// ClientKeyExchange is among them. PSK flights are a few hundred bytes,
/// a certificate client's about a kilobyte, under any path MTU: no client
/// fragments them, so a fragment is an attacker's.
fn whole_client_messages(mut fragment: &[u8], mode: Mode) -> Option<bool> {
    if fragment.is_empty() {
        return None;
    }
    let mut key_exchange = false;
    while !fragment.is_empty() {
        let header = fragment.get(..HANDSHAKE_HEADER)?;
        let kind = *header.first()?;
        let length = be(header.get(1..4)?);
        let message_seq = be(header.get(4..6)?);
        let offset = be(header.get(6..9)?);
        let fragment_length = be(header.get(9..12)?);
        if !mode.sends(kind)
            || message_seq > mode.last_plaintext_seq()
            || offset != 0
            || fragment_length != length
        {
            return None;
        }
        key_exchange |= kind == CLIENT_KEY_EXCHANGE;
        let end = usize::try_from(length)
            .ok()?
            .checked_add(HANDSHAKE_HEADER)?;
        fragment = fragment.get(end..)?;
    }
    Some(key_exchange)
}

/// The largest epoch-0 record sequence number among the records of
/// `datagram` (one the server wrote), if there is an epoch-0 record.
pub(super) fn last_plaintext_sequence(datagram: &[u8]) -> Option<u64> {
    let mut rest = datagram;
    let mut last = None;
    while let Some(&[_, _, _, e0, e1, s0, s1, s2, s3, s4, s5, l0, l1]) = rest.get(..RECORD_HEADER) {
        if [e0, e1] == [0, 0] {
            last = last.max(Some(be(&[s0, s1, s2, s3, s4, s5])));
        }
        let length = usize::from(u16::from_be_bytes([l0, l1]));
        rest = rest.get(RECORD_HEADER + length..).unwrap_or_default();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plaintext handshake record holding one message of `kind` with
    /// message_seq `seq`, `length` bytes long, of which this record holds
    /// `fragment` bytes from `offset`.
    fn handshake(kind: u8, seq: u16, length: u32, offset: u32, fragment: u32) -> Vec<u8> {
        let mut hs = vec![kind];
        hs.extend_from_slice(&length.to_be_bytes()[1..]);
        hs.extend_from_slice(&seq.to_be_bytes());
        hs.extend_from_slice(&offset.to_be_bytes()[1..]);
        hs.extend_from_slice(&fragment.to_be_bytes()[1..]);
        hs.extend(std::iter::repeat_n(0x55, fragment as usize));
        record(22, 0, &hs)
    }

    fn screen_psk(datagram: &[u8]) -> Screened {
        screen(datagram, Mode::Psk)
    }

    fn record(content: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 9]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn a_psk_client_flight_passes() {
        let mut flight = handshake(16, 2, 20, 0, 20);
        flight.extend(record(20, 0, &[1]));
        flight.extend(record(22, 1, &[0xaa; 40]));
        let all = Contents {
            key_exchange: true,
            change_cipher_spec: true,
            plaintext: true,
            encrypted: true,
            encrypted_handshake: true,
        };
        assert_eq!(screen_psk(&flight), Screened::Handshake(all));
        assert_eq!(
            screen_psk(&record(23, 1, &[1; 30])),
            Screened::Handshake(Contents {
                encrypted: true,
                ..Contents::default()
            })
        );
        assert_eq!(
            screen_psk(&record(20, 0, &[1])),
            Screened::Handshake(Contents {
                change_cipher_spec: true,
                plaintext: true,
                ..Contents::default()
            })
        );
    }

    #[test]
    fn fragments_later_messages_and_plaintext_alerts_are_refused() {
        // One byte of a future message, as in the fragment-stuffing attack.
        assert_eq!(screen_psk(&handshake(16, 2, 100, 7, 1)), Screened::Refused);
        assert_eq!(screen_psk(&handshake(16, 2, 100, 0, 50)), Screened::Refused);
        assert_eq!(screen_psk(&handshake(16, 9, 4, 0, 4)), Screened::Refused);
        assert_eq!(screen_psk(&handshake(11, 2, 4, 0, 4)), Screened::Refused);
        assert_eq!(screen_psk(&record(21, 0, &[2, 40])), Screened::Refused);
        assert_eq!(screen_psk(&record(23, 0, &[1; 8])), Screened::Refused);
        assert_eq!(screen_psk(&record(23, 2, &[1; 8])), Screened::Refused);
        assert_eq!(screen_psk(&[]), Screened::Refused);
        let whole = handshake(16, 2, 20, 0, 20);
        for cut in 1..whole.len() {
            assert_eq!(screen_psk(&whole[..cut]), Screened::Refused, "cut at {cut}");
        }
    }

    #[test]
    fn a_certificate_clients_flight_passes_in_its_mode_only() {
        let mut flight = handshake(11, 2, 400, 0, 400);
        flight.extend(handshake(16, 3, 66, 0, 66));
        flight.extend(handshake(15, 4, 72, 0, 72));
        flight.extend(record(20, 0, &[1]));
        flight.extend(record(22, 1, &[0xaa; 40]));
        assert!(matches!(
            screen(&flight, Mode::Certificate),
            Screened::Handshake(Contents {
                key_exchange: true,
                change_cipher_spec: true,
                encrypted_handshake: true,
                ..
            })
        ));
        assert_eq!(screen_psk(&flight), Screened::Refused);
        // Fragments and later messages stay refused.
        assert_eq!(
            screen(&handshake(11, 2, 400, 0, 200), Mode::Certificate),
            Screened::Refused
        );
        assert_eq!(
            screen(&handshake(15, 5, 72, 0, 72), Mode::Certificate),
            Screened::Refused
        );
        assert_eq!(
            screen(&handshake(20, 3, 12, 0, 12), Mode::Certificate),
            Screened::Refused
        );
    }

    #[test]
    fn alerts_are_fatal_epoch_0_records() {
        let mut out = [0u8; ALERT_LEN];
        write_alert(Alert::UnknownPskIdentity, 0x0102, &mut out);
        assert_eq!(out, [21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 1, 2, 0, 2, 2, 115]);
        assert_eq!(last_plaintext_sequence(&out), Some(0x0102));
        let mut two = record(22, 0, &[0; 4]);
        two[10] = 4;
        two.extend(record(22, 1, &[0; 4]));
        assert_eq!(last_plaintext_sequence(&two), Some(4));
    }
}
