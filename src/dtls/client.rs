//! A device's side of coaps in every mode: its credentials (a pre-shared
//! key, a certificate with the CA the server's must be issued by, or a
//! raw key pair with the server's public key) and the client engine they
//! make, for `iot-ota-client coaps://`.

use super::cert::{self, CertifiedKey, Presented, Refusal, ServerName, TrustAnchors};
use super::psk::ClientPsk;
use super::rpk::{self, Fingerprint};
use dimpl::{Config, Dtls, DtlsCertificate};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a device authenticates with, and what it expects of the server.
#[derive(Debug, Clone)]
pub enum ClientCredentials {
    /// A pre-shared key (`--psk-identity`/`--psk-key`, `--psk-file`).
    Psk(ClientPsk),
    /// The device's certificate and key, the CA certificates the
    /// server's must be issued by (`--cert`, `--key`, `--ca`), and the
    /// name it must carry (the URI's host, or `--server-name`).
    Certificate {
        /// The device's certificate and key.
        own: CertifiedKey,
        /// The anchors of the server's certificate.
        anchors: TrustAnchors,
        /// The server the device means to reach.
        server: ServerName,
    },
    /// The device's key pair and the server's public key (`--rpk-key`,
    /// `--rpk-server`).
    RawPublicKey {
        /// The device's SubjectPublicKeyInfo and private key.
        own: CertifiedKey,
        /// The fingerprint of the server's SubjectPublicKeyInfo.
        server: Fingerprint,
    },
}

impl ClientCredentials {
    /// A certificate, its key and the CA certificates, from their files,
    /// and the name the server's certificate must carry.
    ///
    /// # Errors
    /// A message for the user naming the file.
    pub fn certificate(
        cert: &Path,
        key: &Path,
        ca: &Path,
        server: ServerName,
    ) -> Result<ClientCredentials, String> {
        Ok(ClientCredentials::Certificate {
            own: CertifiedKey::read(cert, key)?,
            anchors: TrustAnchors::read(ca)?,
            server,
        })
    }

    /// A raw key pair from its file, and the server's public key: a file
    /// holding it (PEM `PUBLIC KEY`), or `sha256:` and its fingerprint.
    ///
    /// # Errors
    /// A message for the user naming the file.
    pub fn raw_public_key(key: &Path, server: &str) -> Result<ClientCredentials, String> {
        let own = rpk::server_key(key)?;
        let server = match server.strip_prefix("sha256:") {
            Some(hex) => rpk::parse_fingerprint(hex)
                .ok_or("--rpk-server sha256: takes 64 hex digits (colons allowed)")?,
            None => {
                let text = cert::read_file(Path::new(server), false)?;
                let der = cert::pem_blocks(&text, &["PUBLIC KEY"])?
                    .into_iter()
                    .next()
                    .ok_or(format!("--rpk-server {server}: no PUBLIC KEY"))?;
                rpk::spki_fingerprint(&der).ok_or(format!(
                    "--rpk-server {server}: not an ECDSA P-256 public key"
                ))?
            }
        };
        Ok(ClientCredentials::RawPublicKey { own, server })
    }

    /// Why the server's certificate `der` was refused with `refusal`, for
    /// the user: for [`Refusal::WrongName`], the names it has and the one
    /// expected.
    pub fn explain(&self, der: &[u8], refusal: Refusal) -> String {
        match (self, refusal, Presented::of(der)) {
            (ClientCredentials::Certificate { server, .. }, Refusal::WrongName, Ok(presented)) => {
                format!(
                    "the server's certificate is refused: WrongName: it names {presented}, \
                     not {server}"
                )
            }
            _ => format!("the server's certificate or key is refused: {refusal:?}"),
        }
    }

    /// How the device is known, for messages.
    pub fn describe(&self) -> String {
        match self {
            ClientCredentials::Psk(psk) => {
                format!("as '{}'", String::from_utf8_lossy(psk.identity()))
            }
            ClientCredentials::Certificate { .. } => "with its certificate".to_owned(),
            ClientCredentials::RawPublicKey { .. } => "with its raw public key".to_owned(),
        }
    }

    /// A client engine with these credentials: its first flight is sent
    /// again after `rto` (doubling, four times), and the handshake fails
    /// after `give_up`. Call [`Dtls::handle_timeout`] to have it write its
    /// ClientHello.
    ///
    /// # Errors
    /// The engine's complaint about the timings.
    pub fn engine(&self, rto: Duration, give_up: Duration, now: Instant) -> Result<Dtls, String> {
        let own = match self {
            ClientCredentials::Psk(psk) => return psk.engine(rto, give_up, now),
            ClientCredentials::Certificate { own, .. }
            | ClientCredentials::RawPublicKey { own, .. } => own,
        };
        let config = Config::builder()
            .with_crypto_provider(dimpl::crypto::rust_crypto::default_provider())
            .dtls12_cipher_suites(&cert::SUITES)
            .dtls13_cipher_suites(&[])
            .mtu(super::MTU)
            .flight_start_rto(rto)
            .flight_retries(4)
            .handshake_timeout(give_up)
            .build()
            .map_err(|e| format!("the DTLS engine refuses its configuration: {e}"))?;
        let certificate = DtlsCertificate {
            certificate: own.certificate.clone(),
            private_key: own.private_key.clone(),
        };
        let mut dtls = Dtls::new_12(Arc::new(config), certificate, now);
        dtls.set_active(true);
        if matches!(self, ClientCredentials::RawPublicKey { .. }) {
            dtls.use_raw_public_keys();
        }
        Ok(dtls)
    }

    /// Checks what the server sent as its certificate (DER) at `now_s`
    /// (seconds since 1970): issued by an anchor, in its dates, for a
    /// server, naming the server meant (a subjectAltName DNS name or IP
    /// address, or the CN of a certificate without subjectAltName); or,
    /// for raw public keys, the server's key.
    ///
    /// # Errors
    /// Why it is refused.
    pub fn check_server(&self, der: &[u8], now_s: u64) -> Result<(), Refusal> {
        match self {
            ClientCredentials::Psk(_) => Err(Refusal::Unsupported),
            ClientCredentials::Certificate {
                anchors, server, ..
            } => {
                cert::verify_peer(der, anchors, now_s, cert::OID_SERVER_AUTH)?;
                match Presented::of(der)?.names(server) {
                    true => Ok(()),
                    false => Err(Refusal::WrongName),
                }
            }
            ClientCredentials::RawPublicKey { server, .. } => match rpk::spki_fingerprint(der) {
                Some(print) if print == *server => Ok(()),
                Some(_) => Err(Refusal::UnknownKey),
                None => Err(Refusal::Malformed),
            },
        }
    }
}
