//! Certificates (RFC 7252 §9.1.3.3): the server's certificate and key
//! (`--cert`, `--key`), the trust anchors client certificates must be
//! issued by (`--ca`), the names that map a device to the products it may
//! fetch (`--cert-names`), and the check of a client's certificate.
//!
//! The engine proves that the client holds the key of the certificate it
//! sent (its CertificateVerify) and hands the certificate over; whether
//! that certificate is one of the fleet's is decided here: issued and
//! signed by an anchor of `--ca` (ECDSA P-256 with SHA-256), within its
//! dates and the anchor's, made for a client (key usage, extended key
//! usage, not a CA), no critical extension this code does not know. The
//! parsing is the `x509-cert` crate's, the signature `p256`'s: both are
//! the engine's own dependencies.
//!
//! The client checks the server's certificate the same way, for a
//! server, and also that it names the server the client meant to reach
//! ([`ServerName`], RFC 9525 §6.3), as TLS clients do: otherwise any
//! certificate of the fleet's CA made for a server, or with no extended
//! key usage, would pass for the server's.

use crate::service::Authorization;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::Certificate;

/// The largest certificate or key file read.
const MAX_PEM_FILE: u64 = 1 << 20;
/// The most trust anchors a `--ca` file holds (each client certificate
/// is checked against those whose subject is its issuer).
const MAX_ANCHORS: usize = 64;
/// The longest device name a certificate or a names file may give.
const MAX_NAME: usize = 128;

/// id-ecPublicKey (RFC 5480).
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
/// The P-256 curve (secp256r1).
const OID_P256: &str = "1.2.840.10045.3.1.7";
/// ecdsa-with-SHA256 (RFC 5758).
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
/// id-kp-clientAuth (RFC 5280 §4.2.1.12).
pub(super) const OID_CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";
/// id-kp-serverAuth.
pub(super) const OID_SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
/// anyExtendedKeyUsage.
const OID_ANY_EKU: &str = "2.5.29.37.0";
/// The extensions this check reads; another one marked critical refuses
/// the certificate (RFC 5280 §4.2). Subject and authority key
/// identifiers are never critical but listed for completeness.
const KNOWN_EXTENSIONS: [&str; 6] = [
    "2.5.29.15", // key usage
    "2.5.29.37", // extended key usage
    "2.5.29.19", // basic constraints
    "2.5.29.17", // subject alternative name
    "2.5.29.14", // subject key identifier
    "2.5.29.35", // authority key identifier
];

/// Why a client certificate is refused, and the alert that says so
/// (RFC 5246 §7.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not issued by an anchor of `--ca`, or its signature does not
    /// verify under the anchor's key: unknown_ca (48).
    UnknownCa,
    /// Outside its validity dates, or its anchor is: certificate_expired
    /// (45).
    Expired,
    /// Not a certificate for a client (key usage, extended key usage, a
    /// CA certificate, an unknown critical extension), or another key
    /// than P-256: unsupported_certificate (43).
    Unsupported,
    /// Not a certificate that parses: bad_certificate (42).
    Malformed,
    /// A raw public key not on the `--rpk-clients` list: access_denied
    /// (49).
    UnknownKey,
    /// The client's check only: the server's certificate does not name
    /// the server the client meant to reach ([`ServerName`]).
    WrongName,
}

/// A certificate (or, for raw public keys, a DER SubjectPublicKeyInfo)
/// and its private key, DER, for the engine: the server's, or a
/// device's. Only the first certificate of a file is sent: the peer
/// verifies it with the anchor that issued it (RFC 7252 §9.1.3.3 devices
/// hold that one).
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    pub(super) certificate: Vec<u8>,
    pub(super) private_key: Vec<u8>,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CertifiedKey")
            .field("certificate", &self.certificate.len())
            .finish_non_exhaustive()
    }
}

impl CertifiedKey {
    /// The DER certificate (or SubjectPublicKeyInfo) sent to the peer.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// Reads the certificate file (PEM, the server's certificate first)
    /// and the key file (PEM, PKCS #8 or SEC1 "EC PRIVATE KEY"); the key
    /// file must not be open to other users.
    ///
    /// # Errors
    /// A message for the operator naming the file.
    pub fn read(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
        let cert_text = read_file(cert, false)?;
        let key_text = read_file(key, true)?;
        CertifiedKey::from_pem(&cert_text, &key_text)
            .map_err(|e| format!("--cert {} / --key {}: {e}", cert.display(), key.display()))
    }

    /// The certificate and key from their PEM texts: an ECDSA P-256
    /// certificate and the private key of its public key.
    ///
    /// # Errors
    /// What is wrong with them.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
        let certificate = pem_blocks(cert_pem, &["CERTIFICATE"])?
            .into_iter()
            .next()
            .ok_or("no CERTIFICATE in the certificate file")?;
        let parsed = Certificate::from_der(&certificate)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let public = p256_key(&parsed).ok_or("the certificate's key is not an ECDSA P-256 key")?;
        let private_key = pem_blocks(key_pem, &["PRIVATE KEY", "EC PRIVATE KEY"])?
            .into_iter()
            .next()
            .ok_or("no PRIVATE KEY or EC PRIVATE KEY in the key file")?;
        let secret = p256_secret(&private_key).ok_or("the key is not an ECDSA P-256 key")?;
        if *secret.verifying_key() != public {
            return Err("the key is not the certificate's".to_owned());
        }
        Ok(CertifiedKey {
            certificate,
            private_key,
        })
    }
}

/// A P-256 private key from PKCS #8 or SEC1 DER, as the engine reads it.
pub(super) fn p256_secret(der: &[u8]) -> Option<p256::ecdsa::SigningKey> {
    use p256::pkcs8::DecodePrivateKey;
    p256::ecdsa::SigningKey::from_pkcs8_der(der)
        .ok()
        .or_else(|| {
            p256::SecretKey::from_sec1_der(der)
                .ok()
                .map(p256::ecdsa::SigningKey::from)
        })
}

/// One trust anchor: whom it names, its key, its dates.
#[derive(Debug, Clone)]
struct Anchor {
    /// The DER of its subject name, which a certificate it issued names
    /// as its issuer.
    subject: Vec<u8>,
    key: VerifyingKey,
    not_before: u64,
    not_after: u64,
}

/// The certificates client certificates must be issued by (`--ca`):
/// each one a trust anchor, an intermediate CA as much as a root.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    anchors: Vec<Anchor>,
}

impl TrustAnchors {
    /// Reads the anchors of a PEM file of CERTIFICATE blocks.
    ///
    /// # Errors
    /// A message for the operator naming the file.
    pub fn read(path: &Path) -> Result<TrustAnchors, String> {
        let text = read_file(path, false)?;
        TrustAnchors::from_pem(&text).map_err(|e| format!("--ca {}: {e}", path.display()))
    }

    /// The anchors of a PEM text: CA certificates with ECDSA P-256 keys.
    ///
    /// # Errors
    /// What is wrong with one of them (by its place in the file).
    pub fn from_pem(pem: &str) -> Result<TrustAnchors, String> {
        let mut anchors = Vec::new();
        for (index, der) in pem_blocks(pem, &["CERTIFICATE"])?.iter().enumerate() {
            let number = index + 1;
            let cert = Certificate::from_der(der)
                .map_err(|e| format!("certificate {number} does not parse: {e}"))?;
            let tbs = cert.tbs_certificate();
            // A version 3 certificate without basicConstraints cA is not
            // a CA's (RFC 5280 §4.2.1.9: its key MUST NOT verify
            // certificate signatures), whatever file it sits in; a
            // version 1 root has no extensions to say so.
            match tbs.get_extension::<BasicConstraints>() {
                Ok(Some((_, bc))) if bc.ca => {}
                Ok(None) if tbs.version() == x509_cert::Version::V1 => {}
                Ok(_) => return Err(format!("certificate {number} is not a CA certificate")),
                Err(e) => return Err(format!("certificate {number}: basic constraints: {e}")),
            }
            match tbs.get_extension::<KeyUsage>() {
                Ok(Some((_, ku))) if !ku.key_cert_sign() => {
                    return Err(format!(
                        "certificate {number} may not sign certificates (key usage)"
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("certificate {number}: key usage: {e}")),
            }
            let key =
                p256_key(&cert).ok_or(format!("certificate {number}'s key is not ECDSA P-256"))?;
            let subject = tbs
                .subject()
                .to_der()
                .map_err(|e| format!("certificate {number}: {e}"))?;
            let validity = tbs.validity();
            anchors.push(Anchor {
                subject,
                key,
                not_before: validity.not_before.to_unix_duration().as_secs(),
                not_after: validity.not_after.to_unix_duration().as_secs(),
            });
        }
        if anchors.is_empty() {
            return Err("no CERTIFICATE in the file".to_owned());
        }
        if anchors.len() > MAX_ANCHORS {
            return Err(format!("more than {MAX_ANCHORS} certificates"));
        }
        Ok(TrustAnchors { anchors })
    }

    /// The number of anchors.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// The names devices are known by (a certificate's subject CN or a
/// subjectAltName), each with the products it may fetch: the
/// `--cert-names` file, lines `NAME` (every product) or
/// `NAME:PID,PID...` (with `@status` among them to read `/status`), the
/// shape of the PSK file without the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceNames {
    names: HashMap<Vec<u8>, Authorization>,
}

impl DeviceNames {
    /// Parses a names file; blank lines and lines starting with `#` are
    /// skipped.
    ///
    /// # Errors
    /// A message naming the line of the first malformed entry.
    pub fn parse(text: &str) -> Result<DeviceNames, String> {
        let mut names = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, authorization) = name_and_pids(line, number)?;
            if names.insert(name, authorization).is_some() {
                return Err(format!("line {number}: name '{line}' given twice"));
            }
        }
        Ok(DeviceNames { names })
    }

    /// Reads and parses the names file at `path`.
    ///
    /// # Errors
    /// A message for the operator naming the file.
    pub fn read(path: &Path) -> Result<DeviceNames, String> {
        let text = read_file(path, false)?;
        DeviceNames::parse(&text).map_err(|e| format!("names file {}: {e}", path.display()))
    }

    /// The number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// What the device known by `name` may fetch, if the file names it.
    pub fn authorization(&self, name: &[u8]) -> Option<&Authorization> {
        self.names.get(name)
    }
}

/// `NAME` or `NAME:PID,PID...` of line `number` of a names or key list:
/// the name (1 to [`MAX_NAME`] bytes) and what it may fetch (every
/// product without PIDs) and read (`/status` with `@status` in the list).
pub(super) fn name_and_pids(text: &str, number: usize) -> Result<(Vec<u8>, Authorization), String> {
    let (name, pids) = match text.split_once(':') {
        Some((name, list)) => (name, Some(list)),
        None => (text, None),
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "line {number}: the name must be 1 to {MAX_NAME} bytes"
        ));
    }
    let authorization = match pids {
        None => Authorization::any_pid(),
        Some(list) => super::psk::parse_pids(list, number)?,
    };
    Ok((name.as_bytes().to_vec(), authorization))
}

/// Everything certificate handshakes need: the server's certificate,
/// the anchors, and the names (without a names file, every device the
/// anchors vouch for may fetch every product).
#[derive(Debug, Clone)]
pub struct CertificateAuth {
    pub(super) server: CertifiedKey,
    anchors: TrustAnchors,
    names: Option<DeviceNames>,
}

impl CertificateAuth {
    /// The server's certificate, the anchors of client certificates and
    /// the names file, if there is one.
    pub fn new(
        server: CertifiedKey,
        anchors: TrustAnchors,
        names: Option<DeviceNames>,
    ) -> CertificateAuth {
        CertificateAuth {
            server,
            anchors,
            names,
        }
    }

    /// Uses `names` from now on (SIGHUP).
    pub(super) fn replace_names(&mut self, names: Option<DeviceNames>) {
        self.names = names;
    }

    /// What the device known by `name` may fetch under the names in use.
    pub(super) fn authorization_of(&self, name: &[u8]) -> Authorization {
        match &self.names {
            None => Authorization::any_pid(),
            Some(file) => file
                .authorization(name)
                .cloned()
                .unwrap_or_else(|| Authorization::only_pids(Vec::<&[u8]>::new())),
        }
    }

    /// Checks a client's certificate (DER) at `now_s` (seconds since
    /// 1970): on success, the device's name and what it may fetch. The
    /// name is the first of the subject's CN and its subjectAltName
    /// entries (DNS names, URIs) that the names file holds; a device none
    /// of whose names it holds is known by its CN (or first
    /// subjectAltName) and may fetch no image (4.03). Without a names file
    /// the CN is the name and every product may be fetched.
    ///
    /// # Errors
    /// Why the certificate is refused.
    pub fn check(&self, der: &[u8], now_s: u64) -> Result<(Vec<u8>, Authorization), Refusal> {
        let names = verify_peer(der, &self.anchors, now_s, OID_CLIENT_AUTH)?;
        let first = names.first().cloned().ok_or(Refusal::Unsupported)?;
        let Some(file) = &self.names else {
            return Ok((first, Authorization::any_pid()));
        };
        for name in &names {
            if let Some(authorization) = file.authorization(name) {
                return Ok((name.clone(), authorization.clone()));
            }
        }
        Ok((first, Authorization::only_pids(Vec::<&[u8]>::new())))
    }
}

/// Checks `der`, a peer's certificate, against `anchors` at `now_s`, for
/// `purpose` (the extended key usage a client's, [`OID_CLIENT_AUTH`], or
/// a server's, [`OID_SERVER_AUTH`], must allow when it has one): its
/// names (CN first, then subjectAltName DNS names and URIs, each at most
/// [`MAX_NAME`] bytes) when it is accepted.
pub(super) fn verify_peer(
    der: &[u8],
    anchors: &TrustAnchors,
    now_s: u64,
    purpose: &str,
) -> Result<Vec<Vec<u8>>, Refusal> {
    let cert = Certificate::from_der(der).map_err(|_| Refusal::Malformed)?;
    let tbs = cert.tbs_certificate();
    let issuer = tbs.issuer().to_der().map_err(|_| Refusal::Malformed)?;
    let signed = tbs_bytes(der).ok_or(Refusal::Malformed)?;
    if cert.signature_algorithm().oid.to_string() != OID_ECDSA_SHA256 {
        return Err(Refusal::UnknownCa);
    }
    let signature = cert
        .signature()
        .as_bytes()
        .and_then(|s| Signature::from_der(s).ok())
        .ok_or(Refusal::UnknownCa)?;
    let anchor = anchors
        .anchors
        .iter()
        .filter(|a| a.subject == issuer)
        .find(|a| a.key.verify(signed, &signature).is_ok())
        .ok_or(Refusal::UnknownCa)?;
    let validity = tbs.validity();
    let not_before = validity.not_before.to_unix_duration().as_secs();
    let not_after = validity.not_after.to_unix_duration().as_secs();
    if now_s < not_before.max(anchor.not_before) || now_s > not_after.min(anchor.not_after) {
        return Err(Refusal::Expired);
    }
    p256_key(&cert).ok_or(Refusal::Unsupported)?;
    for extension in tbs.extensions().map(|e| e.as_slice()).unwrap_or_default() {
        let oid = extension.extn_id.to_string();
        if extension.critical && !KNOWN_EXTENSIONS.contains(&oid.as_str()) {
            return Err(Refusal::Unsupported);
        }
    }
    match tbs.get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) if !ku.digital_signature() => return Err(Refusal::Unsupported),
        Err(_) => return Err(Refusal::Malformed),
        _ => {}
    }
    match tbs.get_extension::<ExtendedKeyUsage>() {
        Ok(Some((_, eku)))
            if !eku
                .0
                .iter()
                .any(|o| [purpose, OID_ANY_EKU].contains(&o.to_string().as_str())) =>
        {
            return Err(Refusal::Unsupported)
        }
        Err(_) => return Err(Refusal::Malformed),
        _ => {}
    }
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => return Err(Refusal::Unsupported),
        Err(_) => return Err(Refusal::Malformed),
        _ => {}
    }
    let mut names = Vec::new();
    if let Ok(Some(cn)) = tbs.subject().common_name() {
        names.push(cn.value().as_bytes().to_vec());
    }
    if let Ok(Some((_, san))) = tbs.get_extension::<SubjectAltName>() {
        for entry in &san.0 {
            match entry {
                GeneralName::DnsName(n) | GeneralName::UniformResourceIdentifier(n) => {
                    names.push(n.as_bytes().to_vec());
                }
                _ => {}
            }
        }
    }
    names.retain(|n| !n.is_empty() && n.len() <= MAX_NAME);
    Ok(names)
}

/// The longest DNS name (RFC 1035 §2.3.4, without the final dot).
const MAX_DNS_NAME: usize = 253;

/// The server a client means to reach, which the server's certificate
/// must name (RFC 9525 §6.2): the host of its `coaps://` URI, or the
/// name given in its place (`--server-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// A host name: ASCII letters, digits, `-` and `_` in labels
    /// separated by dots, kept lowercase and without a final dot.
    Dns(String),
    /// An IP address (IPv4 or IPv6, without a zone).
    Ip(IpAddr),
}

impl ServerName {
    /// A host name, or an IP address (an IPv6 one with or without
    /// brackets).
    ///
    /// # Errors
    /// A message for the user when it is neither.
    pub fn parse(text: &str) -> Result<ServerName, String> {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(ServerName::Ip(ip));
        }
        let name = text.strip_suffix('.').unwrap_or(text);
        let label_ok = |label: &str| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > MAX_DNS_NAME || !name.split('.').all(label_ok) {
            return Err(format!(
                "'{text}' is neither a host name (ASCII letters, digits, '-' in labels \
                 separated by dots) nor an IP address"
            ));
        }
        Ok(ServerName::Dns(name.to_ascii_lowercase()))
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerName::Dns(name) => f.write_str(name),
            ServerName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One identity a server's certificate presents in its subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Identity {
    /// A dNSName, as written (perhaps a wildcard `*.example.net`).
    Dns(String),
    /// An iPAddress: 4 bytes for IPv4, 16 for IPv6.
    Ip(Vec<u8>),
}

/// What a server's certificate says it is (RFC 9525 §6.3): its
/// subjectAltName DNS names and IP addresses (`None` when it has no
/// subjectAltName at all; other kinds of names are left out), and its
/// subject CN, which counts only without a subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Presented {
    pub(super) san: Option<Vec<Identity>>,
    pub(super) cn: Option<String>,
}

impl Presented {
    /// The identities of the certificate `der`.
    ///
    /// # Errors
    /// [`Refusal::Malformed`] when it or its subjectAltName does not parse.
    pub(super) fn of(der: &[u8]) -> Result<Presented, Refusal> {
        let cert = Certificate::from_der(der).map_err(|_| Refusal::Malformed)?;
        let tbs = cert.tbs_certificate();
        let san = match tbs.get_extension::<SubjectAltName>() {
            Ok(Some((_, san))) => Some(
                san.0
                    .iter()
                    .filter_map(|entry| match entry {
                        GeneralName::DnsName(n) => Some(Identity::Dns(n.to_string())),
                        GeneralName::IpAddress(a) => Some(Identity::Ip(a.as_bytes().to_vec())),
                        _ => None,
                    })
                    .collect(),
            ),
            Ok(None) => None,
            Err(_) => return Err(Refusal::Malformed),
        };
        let cn = match tbs.subject().common_name() {
            Ok(cn) => cn.map(|cn| cn.value().into_owned()),
            Err(_) => None,
        };
        Ok(Presented { san, cn })
    }

    /// True when one of these identities is `server` (RFC 9525 §6.3): a
    /// dNSName equal to a host name but for ASCII case, or a wildcard
    /// `*.parent` whose `*` stands for the host name's first label; an
    /// iPAddress equal to an IP address (never a dNSName or a CN spelling
    /// one: an IP address is not a host name). The CN is compared, in
    /// the same way but without wildcards, only when there is no
    /// subjectAltName at all, as RFC 6125 §6.4.4 allowed.
    pub(super) fn names(&self, server: &ServerName) -> bool {
        match (&self.san, server) {
            (Some(identities), ServerName::Dns(name)) => identities
                .iter()
                .any(|i| matches!(i, Identity::Dns(dns) if dns_matches(dns, name, true))),
            (Some(identities), ServerName::Ip(ip)) => identities
                .iter()
                .any(|i| matches!(i, Identity::Ip(bytes) if ip_is(bytes, ip))),
            (None, ServerName::Dns(name)) => self
                .cn
                .as_deref()
                .is_some_and(|cn| dns_matches(cn, name, false)),
            (None, ServerName::Ip(ip)) => self
                .cn
                .as_deref()
                .is_some_and(|cn| cn.parse::<IpAddr>().is_ok_and(|c| c == *ip)),
        }
    }
}

impl std::fmt::Display for Presented {
    /// `DNS:a, IP:192.0.2.1` or `no subjectAltName, CN a`, for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(identities) = &self.san else {
            return match &self.cn {
                Some(cn) => write!(f, "no subjectAltName, CN {cn}"),
                None => f.write_str("no subjectAltName, no CN"),
            };
        };
        if identities.is_empty() {
            return f.write_str("no DNS name or IP address in its subjectAltName");
        }
        for (index, identity) in identities.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            match identity {
                Identity::Dns(name) => write!(f, "DNS:{name}")?,
                Identity::Ip(bytes) => match ip_of(bytes) {
                    Some(ip) => write!(f, "IP:{ip}")?,
                    None => write!(f, "IP:({} bytes)", bytes.len())?,
                },
            }
        }
        Ok(())
    }
}

/// True when the presented DNS name (`wildcard`: perhaps `*.parent`)
/// names the host `name` (lowercase, no final dot).
fn dns_matches(presented: &str, name: &str, wildcard: bool) -> bool {
    let presented = presented.strip_suffix('.').unwrap_or(presented);
    if presented.eq_ignore_ascii_case(name) {
        return true;
    }
    // `*` alone as the first label, standing for exactly one label, and
    // never for most of a name (`*.net`).
    match presented.strip_prefix("*.") {
        Some(parent) if wildcard && parent.contains('.') && !parent.contains('*') => name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest.eq_ignore_ascii_case(parent)),
        _ => false,
    }
}

/// The address of an iPAddress entry of 4 or 16 bytes.
fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

/// True when the iPAddress entry `bytes` is `ip` (an IPv4 address is
/// not its IPv4-mapped IPv6 form: each is written as it is reached).
fn ip_is(bytes: &[u8], ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => bytes == v4.octets(),
        IpAddr::V6(v6) => bytes == v6.octets(),
    }
}

/// The public key of `cert` when it is an ECDSA P-256 key.
fn p256_key(cert: &Certificate) -> Option<VerifyingKey> {
    p256_spki_key(cert.tbs_certificate().subject_public_key_info())
}

/// The key of `spki` when it is an ECDSA P-256 key.
pub(super) fn p256_spki_key(
    spki: &x509_cert::spki::SubjectPublicKeyInfoOwned,
) -> Option<VerifyingKey> {
    if spki.algorithm.oid.to_string() != OID_EC_PUBLIC_KEY {
        return None;
    }
    let curve: x509_cert::der::asn1::ObjectIdentifier =
        spki.algorithm.parameters.as_ref()?.decode_as().ok()?;
    if curve.to_string() != OID_P256 {
        return None;
    }
    VerifyingKey::from_sec1_bytes(spki.subject_public_key.as_bytes()?).ok()
}

/// The bytes of the tbsCertificate of the certificate `der` as they were
/// signed: the first element of its outer SEQUENCE, read in place rather
/// than encoded again.
fn tbs_bytes(der: &[u8]) -> Option<&[u8]> {
    let (_, outer) = der_element(der)?;
    let content = outer.get(header_len(outer)?..)?;
    let (len, _) = der_element(content)?;
    content.get(..len)
}

/// The length of the DER element at the start of `bytes` (header
/// included), and the element.
fn der_element(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let header = header_len(bytes)?;
    let first = *bytes.get(1)?;
    let content = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        bytes
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let total = header.checked_add(content)?;
    Some((total, bytes.get(..total)?))
}

/// The length of the tag and length octets of the DER element at the
/// start of `bytes` (single-byte tags, as X.509's).
fn header_len(bytes: &[u8]) -> Option<usize> {
    let first = *bytes.get(1)?;
    if first < 0x80 {
        Some(2)
    } else {
        let n = usize::from(first & 0x7f);
        (1..=4).contains(&n).then_some(2 + n)
    }
}

/// The DER contents of the PEM blocks of `text` whose label is one of
/// `labels`, in order; blocks with other labels (EC PARAMETERS...) are
/// skipped.
///
/// # Errors
/// A block that does not decode.
pub(super) fn pem_blocks(text: &str, labels: &[&str]) -> Result<Vec<Vec<u8>>, String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    // Bounded: each turn consumes a block or ends.
    while let Some(start) = rest.find("-----BEGIN ") {
        let from = &rest[start..];
        let Some(end_at) = from.find("-----END ") else {
            return Err("a PEM block has no END line".to_owned());
        };
        let after_end = &from[end_at + 9..];
        let close = after_end
            .find("-----")
            .ok_or("a PEM END line is not closed")?;
        let block_len = end_at + 9 + close + 5;
        let block = &from[..block_len];
        rest = &from[block_len..];
        let (label, der) = x509_cert::der::pem::decode_vec(block.as_bytes())
            .map_err(|e| format!("a PEM block does not decode: {e}"))?;
        if labels.contains(&label) {
            blocks.push(der);
        }
    }
    Ok(blocks)
}

/// The text of a certificate, key or names file; a key file (`private`)
/// open to other users is refused, as the PSK file is.
pub(super) fn read_file(path: &Path, private: bool) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if private {
        let mode = file
            .metadata()
            .map_err(|e| format!("cannot read {shown}: {e}"))?
            .permissions()
            .mode();
        if mode & 0o007 != 0 {
            return Err(format!(
                "the key file {shown} is open to other users (mode {:03o}): chmod o-rwx {shown}",
                mode & 0o777
            ));
        }
    }
    let mut text = String::new();
    // One byte past the limit tells a file cut short from a whole one: a
    // names file or a key list cut inside its last line would give a
    // cut name (a name without PIDs may fetch every product).
    file.by_ref()
        .take(MAX_PEM_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if text.len() as u64 > MAX_PEM_FILE {
        return Err(format!("{shown} is larger than {MAX_PEM_FILE} bytes"));
    }
    Ok(text)
}

/// The cipher suites of certificate handshakes: what OpenSSL and GnuTLS
/// prefer, and what tinydtls speaks (RFC 7251, the suite RFC 7252
/// §9.1.3.2 makes mandatory). The engine takes the first of the
/// client's suites that is here.
pub(super) const SUITES: [dimpl::crypto::Dtls12CipherSuite; 2] = [
    dimpl::crypto::Dtls12CipherSuite::ECDHE_ECDSA_AES128_GCM_SHA256,
    dimpl::crypto::Dtls12CipherSuite::ECDHE_ECDSA_AES128_CCM_8,
];

/// The engine configuration of certificate handshakes, built once (its
/// validation costs elliptic-curve operations no ClientHello should pay
/// again): the suites above, a client certificate required, datagrams
/// queued as for PSK.
///
/// # Errors
/// The engine's complaint about the configuration.
pub(super) fn server_config(
    handshake_timeout: std::time::Duration,
) -> Result<std::sync::Arc<dimpl::Config>, String> {
    let config = dimpl::Config::builder()
        .with_crypto_provider(dimpl::crypto::rust_crypto::default_provider())
        .dtls12_cipher_suites(&SUITES)
        .dtls13_cipher_suites(&[])
        .require_client_certificate(true)
        .mtu(super::MTU)
        .max_queue_rx(super::psk::SERVER_QUEUE_RX)
        .handshake_timeout(handshake_timeout)
        .build()
        .map_err(|e| format!("the DTLS engine refuses its configuration: {e}"))?;
    Ok(std::sync::Arc::new(config))
}

/// A server engine for one certificate handshake whose ClientHello
/// cookie the front verified, as [`super::psk::server_engine`]; with
/// `raw_public_keys`, for a raw public key handshake, `server` being the
/// server's SubjectPublicKeyInfo and key.
///
/// # Errors
/// The engine's complaint when it does not start.
pub(super) fn server_engine(
    config: &std::sync::Arc<dimpl::Config>,
    server: &CertifiedKey,
    now: std::time::Instant,
    record_sequence: u64,
    raw_public_keys: bool,
) -> Result<dimpl::Dtls, String> {
    let certificate = dimpl::DtlsCertificate {
        certificate: server.certificate.clone(),
        private_key: server.private_key.clone(),
    };
    let mut dtls = dimpl::Dtls::new_12(std::sync::Arc::clone(config), certificate, now);
    dtls.expect_verified_hello(record_sequence);
    if raw_public_keys {
        dtls.use_raw_public_keys();
    }
    dtls.handle_timeout(now)
        .map_err(|e| format!("the DTLS engine does not start: {e}"))?;
    Ok(dtls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_files_hold_names_and_pids() {
        let names = DeviceNames::parse("# fleet\n\ndev1:DEV,OTHER\nops\n").expect("valid");
        assert_eq!(names.len(), 2);
        let dev1 = names.authorization(b"dev1").expect("dev1");
        assert!(dev1.allows(b"DEV") && dev1.allows(b"OTHER") && !dev1.allows(b"X"));
        assert!(!dev1.reads_status());
        assert!(names.authorization(b"ops").expect("ops").allows(b"X"));
        assert!(names.authorization(b"nobody").is_none());
        // The PSK file's list, rights included.
        let names = DeviceNames::parse("operator:@status\nlab:DEV,@status\n").expect("valid");
        let operator = names.authorization(b"operator").expect("operator");
        assert!(operator.reads_status() && !operator.allows(b"DEV"));
        let lab = names.authorization(b"lab").expect("lab");
        assert!(lab.reads_status() && lab.allows(b"DEV") && !lab.allows(b"X"));
        for (text, line) in [
            ("a\na\n", "line 2"),
            ("a:@stat\n", "line 1"),
            (":DEV\n", "line 1"),
            ("a:\n", "line 1"),
            ("a:DEV,,X\n", "line 1"),
        ] {
            let e = DeviceNames::parse(text).expect_err(text);
            assert!(e.starts_with(line), "{text:?}: {e}");
        }
    }

    #[test]
    fn pem_blocks_are_taken_by_label_in_order() {
        let text =
            "junk\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n\
                    -----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n\
                    -----BEGIN CERTIFICATE-----\nBAU=\n-----END CERTIFICATE-----\n";
        let blocks = pem_blocks(text, &["CERTIFICATE"]).expect("blocks");
        assert_eq!(blocks, vec![vec![1, 2, 3], vec![4, 5]]);
        assert!(pem_blocks("-----BEGIN CERTIFICATE-----\nAQID\n", &["CERTIFICATE"]).is_err());
        assert!(pem_blocks(
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----",
            &[]
        )
        .is_err());
    }

    #[test]
    fn the_signed_part_is_read_in_place() {
        // SEQUENCE { SEQUENCE { INTEGER 5 }, NULL } with a long-form
        // outer length.
        let der = [0x30, 0x81, 0x07, 0x30, 0x03, 0x02, 0x01, 0x05, 0x05, 0x00];
        assert_eq!(tbs_bytes(&der), Some(&der[3..8]));
        for cut in 0..der.len() {
            assert_eq!(tbs_bytes(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(tbs_bytes(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
    }

    #[test]
    fn a_names_file_past_the_limit_is_refused_not_cut() {
        let dir = crate::testkit::TempDir::new("names-limit");
        // Cut at the limit, the last line would be the name "dev" alone,
        // which may fetch every product.
        let mut text = "#".repeat(MAX_PEM_FILE as usize - 4);
        text.push_str("\ndev1:DEV\n");
        let path = dir.path().join("names");
        std::fs::write(&path, &text).unwrap();
        let e = DeviceNames::read(&path).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        // At the limit, it is read whole.
        std::fs::write(&path, &text[text.len() - MAX_PEM_FILE as usize..]).unwrap();
        let names = DeviceNames::read(&path).expect("at the limit");
        assert!(names.authorization(b"dev").is_none());
    }

    fn server(name: &str) -> ServerName {
        ServerName::parse(name).expect(name)
    }

    fn san(identities: &[Identity]) -> Presented {
        Presented {
            san: Some(identities.to_vec()),
            cn: Some("cn.example.net".to_owned()),
        }
    }

    #[test]
    fn server_names_are_host_names_or_ip_addresses() {
        assert_eq!(
            server("OTA.Example.NET."),
            ServerName::Dns("ota.example.net".into())
        );
        assert_eq!(
            server("192.0.2.7"),
            ServerName::Ip(IpAddr::from([192, 0, 2, 7]))
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(server("2001:db8::1"), ServerName::Ip(v6));
        assert_eq!(server("[2001:db8::1]"), ServerName::Ip(v6));
        for bad in [
            "",
            ".",
            "a..b",
            "*.example.net",
            "a b",
            "ota/x",
            "[ota]",
            "é.net",
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ServerName::parse(&"a".repeat(64)).is_err());
        assert_eq!(server("[::1]").to_string(), "::1");
    }

    #[test]
    fn a_dns_name_matches_a_subject_alt_name_dns_name_in_any_case() {
        let cert = san(&[
            Identity::Ip(vec![192, 0, 2, 7]),
            Identity::Dns("OTA.example.net".into()),
        ]);
        assert!(cert.names(&server("ota.example.net")));
        assert!(cert.names(&server("Ota.Example.Net")));
        assert!(cert.names(&server("ota.example.net.")));
        // Neither the CN (there is a subjectAltName) nor a part of a name.
        assert!(!cert.names(&server("cn.example.net")));
        assert!(!cert.names(&server("example.net")));
        assert!(!cert.names(&server("ota.example.net.evil")));
        assert!(!cert.names(&server("xota.example.net")));
        // A dNSName spelling an address names no address.
        let spelled = san(&[Identity::Dns("192.0.2.7".into())]);
        assert!(!spelled.names(&server("192.0.2.7")));
    }

    #[test]
    fn a_wildcard_stands_for_one_first_label_only() {
        let cert = san(&[Identity::Dns("*.fleet.example".into())]);
        assert!(cert.names(&server("ota.fleet.example")));
        assert!(cert.names(&server("OTA.Fleet.Example")));
        assert!(!cert.names(&server("fleet.example")));
        assert!(!cert.names(&server("a.ota.fleet.example")));
        for broad in ["*.example", "*", "ota*.fleet.example", "*.*.example"] {
            let cert = san(&[Identity::Dns(broad.into())]);
            assert!(!cert.names(&server("ota.fleet.example")), "{broad}");
            assert!(!cert.names(&server("fleet.example")), "{broad}");
        }
    }

    #[test]
    fn an_ip_address_matches_a_subject_alt_name_ip_address() {
        let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        let cert = san(&[
            Identity::Dns("ota.example.net".into()),
            Identity::Ip(vec![192, 0, 2, 7]),
            Identity::Ip(v6.octets().to_vec()),
        ]);
        assert!(cert.names(&server("192.0.2.7")));
        assert!(cert.names(&server("2001:db8::7")));
        assert!(cert.names(&server("[2001:DB8:0::7]")));
        assert!(!cert.names(&server("192.0.2.8")));
        assert!(!cert.names(&server("2001:db8::8")));
        // The IPv4-mapped form is another address.
        assert!(!cert.names(&server("::ffff:192.0.2.7")));
        let mapped = san(&[Identity::Ip(
            std::net::Ipv4Addr::new(192, 0, 2, 7)
                .to_ipv6_mapped()
                .octets()
                .to_vec(),
        )]);
        assert!(!mapped.names(&server("192.0.2.7")));
        // Nor does an address match a host name, or a cut entry anything.
        assert!(!cert.names(&server("ota.example.net.x")));
        assert!(!san(&[Identity::Ip(vec![192, 0, 2])]).names(&server("192.0.2.0")));
    }

    #[test]
    fn the_cn_counts_only_without_a_subject_alt_name() {
        let cn = |cn: &str| Presented {
            san: None,
            cn: Some(cn.to_owned()),
        };
        assert!(cn("OTA.example.net").names(&server("ota.example.net")));
        assert!(!cn("ota.example.net").names(&server("other.example.net")));
        assert!(cn("192.0.2.7").names(&server("192.0.2.7")));
        assert!(cn("::1").names(&server("[::1]")));
        assert!(!cn("192.0.2.7").names(&server("192.0.2.8")));
        // No wildcard in a CN.
        assert!(!cn("*.example.net").names(&server("ota.example.net")));
        let nothing = Presented {
            san: None,
            cn: None,
        };
        assert!(!nothing.names(&server("ota.example.net")));
        // A subjectAltName without a DNS name or an address (URIs only)
        // still hides the CN.
        let uris_only = Presented {
            san: Some(Vec::new()),
            cn: Some("ota.example.net".to_owned()),
        };
        assert!(!uris_only.names(&server("ota.example.net")));
        assert_eq!(
            san(&[Identity::Dns("a".into()), Identity::Ip(vec![10, 0, 0, 1])]).to_string(),
            "DNS:a, IP:10.0.0.1"
        );
        assert_eq!(cn("x").to_string(), "no subjectAltName, CN x");
    }

    #[test]
    fn what_is_not_a_certificate_is_refused_without_a_panic() {
        let anchors = TrustAnchors::default();
        assert_eq!(
            verify_peer(&[], &anchors, 0, OID_CLIENT_AUTH),
            Err(Refusal::Malformed)
        );
        let mut bytes = vec![0x30, 0x82, 0x01, 0x00];
        bytes.extend(std::iter::repeat_n(0x30, 256));
        for cut in 0..bytes.len() {
            assert!(verify_peer(&bytes[..cut], &anchors, 0, OID_SERVER_AUTH).is_err());
            assert_eq!(Presented::of(&bytes[..cut]), Err(Refusal::Malformed));
        }
    }
}
