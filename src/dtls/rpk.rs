//! Raw public keys (RFC 7250; RFC 7252 §9.1.3.2): the server's key pair
//! (`--rpk-key`) and the clients' public keys it accepts, each with the
//! device's name and the products it may fetch (`--rpk-clients`). No
//! certificate, no CA, no dates: a device is who holds a key on the list.
//!
//! A key is known by the SHA-256 of its DER SubjectPublicKeyInfo (the
//! fingerprint tinydtls and libcoap print); the list gives the key itself
//! (PEM or its base64 on the line) or that fingerprint.

use super::cert::{self, Refusal};
use crate::service::Authorization;
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use x509_cert::der::Decode;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

/// The most keys a list holds.
const MAX_KEYS: usize = 100_000;

/// The fingerprint of a key: SHA-256 of its DER SubjectPublicKeyInfo.
pub type Fingerprint = [u8; 32];

/// The fingerprint of the DER SubjectPublicKeyInfo `spki`.
pub fn fingerprint(spki: &[u8]) -> Fingerprint {
    Sha256::digest(spki).into()
}

/// The server's key pair for raw public key handshakes: its
/// SubjectPublicKeyInfo (sent as its "certificate") and private key, DER.
pub fn server_key(path: &Path) -> Result<cert::CertifiedKey, String> {
    let text = cert::read_file(path, true)?;
    server_key_from_pem(&text).map_err(|e| format!("--rpk-key {}: {e}", path.display()))
}

/// As [`server_key`], from the PEM text of the private key (SEC1 `EC
/// PRIVATE KEY` or PKCS #8 `PRIVATE KEY`; other blocks, such as a
/// `PUBLIC KEY`, are skipped).
///
/// # Errors
/// What is wrong with the key.
pub fn server_key_from_pem(pem: &str) -> Result<cert::CertifiedKey, String> {
    let private_key = cert::pem_blocks(pem, &["PRIVATE KEY", "EC PRIVATE KEY"])?
        .into_iter()
        .next()
        .ok_or("no PRIVATE KEY or EC PRIVATE KEY in the file")?;
    let secret = cert::p256_secret(&private_key).ok_or("the key is not an ECDSA P-256 key")?;
    let spki = secret
        .verifying_key()
        .to_public_key_der()
        .map_err(|e| format!("cannot encode the public key: {e}"))?;
    Ok(cert::CertifiedKey {
        certificate: spki.as_bytes().to_vec(),
        private_key,
    })
}

/// The accepted client keys: fingerprint → the device's name and what
/// it may fetch (`--rpk-clients`).
///
/// One key a line, `NAME[:PID,PID...] KEY`, where KEY is the base64 of
/// the DER SubjectPublicKeyInfo (the body of a `PUBLIC KEY` PEM block, on
/// one line) or `sha256:` and its SHA-256 in hex (colons allowed); or
/// `NAME[:PID,PID...]` alone on its line followed by a `PUBLIC KEY` PEM
/// block. Blank lines and lines starting with `#` are skipped. A name
/// without PIDs may fetch every product.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawPublicKeys {
    keys: HashMap<Fingerprint, (Vec<u8>, Authorization)>,
}

impl RawPublicKeys {
    /// Parses a list.
    ///
    /// # Errors
    /// A message naming the line of the first malformed entry.
    pub fn parse(text: &str) -> Result<RawPublicKeys, String> {
        let mut keys = HashMap::new();
        let mut lines = text.lines().enumerate();
        // Bounded: each turn consumes at least one line.
        while let Some((index, line)) = lines.next() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (who, key) = match line.split_once(char::is_whitespace) {
                Some((who, key)) => (who, key.trim()),
                None => (line, ""),
            };
            let print = if key.is_empty() {
                // A PEM block on the following lines.
                let mut block = String::new();
                for (_, next) in lines.by_ref() {
                    block.push_str(next.trim());
                    block.push('\n');
                    if next.trim().starts_with("-----END") {
                        break;
                    }
                }
                let der = cert::pem_blocks(&block, &["PUBLIC KEY"])
                    .map_err(|e| format!("line {number}: {e}"))?
                    .into_iter()
                    .next()
                    .ok_or(format!(
                        "line {number}: expected NAME KEY, or NAME and a PUBLIC KEY PEM block"
                    ))?;
                spki_fingerprint(&der).ok_or(format!(
                    "line {number}: the key is not an ECDSA P-256 public key"
                ))?
            } else if let Some(hex) = key.strip_prefix("sha256:") {
                parse_fingerprint(hex).ok_or(format!(
                    "line {number}: sha256: takes 64 hex digits (colons allowed)"
                ))?
            } else {
                let der = base64_der(key).ok_or(format!(
                    "line {number}: the key is neither base64 nor sha256:HEX"
                ))?;
                spki_fingerprint(&der).ok_or(format!(
                    "line {number}: the key is not an ECDSA P-256 public key"
                ))?
            };
            let (name, authorization) = cert::name_and_pids(who, number)?;
            if keys.insert(print, (name, authorization)).is_some() {
                return Err(format!("line {number}: the key is listed twice"));
            }
            if keys.len() > MAX_KEYS {
                return Err(format!("more than {MAX_KEYS} keys"));
            }
        }
        Ok(RawPublicKeys { keys })
    }

    /// Reads and parses the list at `path`; one without a key is refused.
    ///
    /// # Errors
    /// A message for the operator naming the file.
    pub fn read(path: &Path) -> Result<RawPublicKeys, String> {
        let text = cert::read_file(path, false)?;
        let keys = RawPublicKeys::parse(&text)
            .map_err(|e| format!("--rpk-clients {}: {e}", path.display()))?;
        if keys.is_empty() {
            return Err(format!("--rpk-clients {} holds no key", path.display()));
        }
        Ok(keys)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Everything raw public key handshakes need: the server's key pair and
/// the clients' keys.
#[derive(Debug, Clone)]
pub struct RawKeyAuth {
    pub(super) server: cert::CertifiedKey,
    clients: RawPublicKeys,
}

impl RawKeyAuth {
    /// The server's key pair and the accepted client keys.
    pub fn new(server: cert::CertifiedKey, clients: RawPublicKeys) -> RawKeyAuth {
        RawKeyAuth { server, clients }
    }

    /// Uses `clients` from now on (SIGHUP).
    pub(super) fn replace_clients(&mut self, clients: RawPublicKeys) {
        self.clients = clients;
    }

    /// The name and products of the key with fingerprint `print`, if it
    /// is listed.
    pub(super) fn listed(&self, print: &Fingerprint) -> Option<&(Vec<u8>, Authorization)> {
        self.clients.keys.get(print)
    }

    /// Checks a client's raw public key (its DER SubjectPublicKeyInfo, as
    /// the engine hands it over): its name and what it may fetch when the
    /// list holds it.
    ///
    /// # Errors
    /// [`Refusal::UnknownKey`] for a key not on the list,
    /// [`Refusal::Malformed`] for what is not a P-256 key.
    pub fn check(&self, spki: &[u8]) -> Result<(Vec<u8>, Authorization), Refusal> {
        let print = spki_fingerprint(spki).ok_or(Refusal::Malformed)?;
        self.clients
            .keys
            .get(&print)
            .cloned()
            .ok_or(Refusal::UnknownKey)
    }
}

/// The fingerprint of `der` when it is the DER SubjectPublicKeyInfo of
/// an ECDSA P-256 key, and nothing else.
pub(super) fn spki_fingerprint(der: &[u8]) -> Option<Fingerprint> {
    let spki = SubjectPublicKeyInfoOwned::from_der(der).ok()?;
    cert::p256_spki_key(&spki)?;
    Some(fingerprint(der))
}

/// 64 hex digits, colons between bytes allowed.
pub(super) fn parse_fingerprint(hex: &str) -> Option<Fingerprint> {
    let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
    // Hex digits only: from_str_radix would also take a sign ("+f").
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *slot = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The bytes of `text`, standard base64 on one line, decoded by the PEM
/// decoder (wrapped at 64 columns as RFC 7468 has it).
fn base64_der(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.is_ascii() {
        return None;
    }
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).ok()?);
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    x509_cert::der::pem::decode_vec(pem.as_bytes())
        .ok()
        .map(|(_, der)| der)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key pair made from a fixed scalar: its SPKI, DER.
    fn spki() -> Vec<u8> {
        let secret = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("scalar");
        secret
            .verifying_key()
            .to_public_key_der()
            .expect("encode")
            .as_bytes()
            .to_vec()
    }

    fn base64(der: &[u8]) -> String {
        let pem = x509_cert::der::pem::encode_string(
            "PUBLIC KEY",
            x509_cert::der::pem::LineEnding::LF,
            der,
        )
        .expect("pem");
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    /// The clients' side only: the checks need no server key.
    fn without_server_key(keys: RawPublicKeys) -> RawKeyAuth {
        RawKeyAuth::new(
            cert::CertifiedKey {
                certificate: Vec::new(),
                private_key: Vec::new(),
            },
            keys,
        )
    }

    #[test]
    fn keys_are_listed_as_base64_pem_or_fingerprint() {
        let der = spki();
        let print = fingerprint(&der);
        let hex: Vec<String> = print.iter().map(|b| format!("{b:02X}")).collect();
        let pem = x509_cert::der::pem::encode_string(
            "PUBLIC KEY",
            x509_cert::der::pem::LineEnding::LF,
            &der,
        )
        .expect("pem");
        for text in [
            format!("# list\nmote-1:DEV {}\n", base64(&der)),
            format!("mote-1:DEV sha256:{}\n", hex.join(":")),
            format!("mote-1:DEV\n{pem}"),
        ] {
            let keys = RawPublicKeys::parse(&text).expect(&text);
            assert_eq!(keys.len(), 1, "{text}");
            let auth = without_server_key(keys);
            let (name, pids) = auth.check(&der).expect("listed");
            assert_eq!(name, b"mote-1");
            assert!(pids.allows(b"DEV") && !pids.allows(b"OTHER"));
        }
        // The names file's list, rights included.
        let keys = RawPublicKeys::parse(&format!("operator:@status {}\n", base64(&der)))
            .expect("operator");
        let auth = without_server_key(keys);
        let (_, rights) = auth.check(&der).expect("listed");
        assert!(rights.reads_status() && !rights.allows(b"DEV"));
    }

    #[test]
    fn unlisted_and_malformed_keys_are_refused() {
        let der = spki();
        let keys = RawPublicKeys::parse(&format!("a sha256:{}\n", "00".repeat(32))).expect("ok");
        let auth = without_server_key(keys);
        assert_eq!(auth.check(&der), Err(Refusal::UnknownKey));
        assert_eq!(auth.check(&der[..der.len() - 1]), Err(Refusal::Malformed));
        assert_eq!(auth.check(&[]), Err(Refusal::Malformed));
        for (text, line) in [
            ("a sha256:00\n", "line 1"),
            ("a !!!\n", "line 1"),
            ("a QUJD\n", "line 1"),
            (
                ":DEV sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
                "line 1",
            ),
            ("a\n", "line 1"),
            // Signs are not hex digits, though from_str_radix takes them.
            (&format!("# keys\na sha256:{}\n", "+f".repeat(32)), "line 2"),
        ] {
            let e = RawPublicKeys::parse(text).expect_err(text);
            assert!(e.starts_with(line), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_server_key_gives_its_public_key_as_spki() {
        let secret = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("scalar");
        let pem =
            p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&secret, Default::default()).expect("pem");
        let key = server_key_from_pem(&pem).expect("key");
        assert_eq!(key.certificate, spki());
    }
}
