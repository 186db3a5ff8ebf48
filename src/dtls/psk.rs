//! Pre-shared keys: the server's PSK file (identity, key, allowed PIDs)
//! and a device's own identity and key, and the engine configurations
//! that use them. Keys are never printed, not even in `Debug`.

use crate::service::Authorization;
use dimpl::crypto::{rust_crypto, CryptoProvider, Dtls12CipherSuite, SupportedDtls12CipherSuite};
use dimpl::{Config, Dtls, PskResolver};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::MTU;

/// The longest identity or key a PSK file line may hold (RFC 4279 §5.3
/// allows 2^16 bytes; devices use a few dozen).
const MAX_PSK_FIELD: usize = 128;
/// The largest PSK file read.
const MAX_PSK_FILE: u64 = 1 << 20;

/// One identity of a PSK file: its key and what it may fetch.
#[derive(Clone, PartialEq, Eq)]
struct Identity {
    key: Vec<u8>,
    authorization: Authorization,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("authorization", &self.authorization)
            .finish_non_exhaustive()
    }
}

/// The pre-shared keys: identity → key and allowed PIDs, from a PSK file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PskTable {
    identities: HashMap<Vec<u8>, Identity>,
}

impl PskTable {
    /// Parses a PSK file: one `identity:key` or `identity:key:PID,PID...`
    /// per line; a key is ASCII, or hex after `0x`; blank lines and lines
    /// starting with `#` are skipped. Without PIDs an identity may fetch
    /// images of every product; `@status` in the list lets it read
    /// `/status` (see [`Authorization`]).
    ///
    /// # Errors
    /// A message naming the line of the first malformed entry (never the
    /// key).
    pub fn parse(text: &str) -> Result<PskTable, String> {
        let mut identities = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let identity = fields.next().unwrap_or_default();
            let Some(key_text) = fields.next() else {
                return Err(format!(
                    "line {number}: expected identity:key or identity:key:PID,PID"
                ));
            };
            if identity.is_empty() || identity.len() > MAX_PSK_FIELD {
                return Err(format!(
                    "line {number}: the identity must be 1 to {MAX_PSK_FIELD} bytes"
                ));
            }
            let key = parse_key(key_text)
                .ok_or_else(|| format!("line {number}: the key of '{identity}' is invalid: use 1 to {MAX_PSK_FIELD} ASCII bytes or 0x and an even number of hex digits"))?;
            let authorization = match fields.next() {
                None => Authorization::any_pid(),
                Some(list) => parse_pids(list, number)?,
            };
            let entry = Identity { key, authorization };
            if identities
                .insert(identity.as_bytes().to_vec(), entry)
                .is_some()
            {
                return Err(format!("line {number}: identity '{identity}' given twice"));
            }
        }
        Ok(PskTable { identities })
    }

    /// Reads and parses the PSK file at `path`. A file other users can
    /// read is refused: its keys open every session.
    ///
    /// # Errors
    /// A message for the operator naming the file.
    pub fn read(path: &Path) -> Result<PskTable, String> {
        let shown = path.display();
        let text = read_private(path)?;
        let table = PskTable::parse(&text).map_err(|e| format!("PSK file {shown}: {e}"))?;
        if table.is_empty() {
            return Err(format!("the PSK file {shown} holds no identity"));
        }
        Ok(table)
    }

    /// The number of identities.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// True when there is no identity.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// What `identity` may fetch, if it is known.
    pub fn authorization(&self, identity: &[u8]) -> Option<&Authorization> {
        self.identities.get(identity).map(|i| &i.authorization)
    }

    /// The key of `identity`, if it is known.
    pub(super) fn key(&self, identity: &[u8]) -> Option<&[u8]> {
        self.identities.get(identity).map(|i| i.key.as_slice())
    }
}

/// The text of the key file at `path`, refused when other users may read
/// it: its keys let anyone impersonate the devices (or the server).
fn read_private(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read the PSK file {shown}: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("cannot read the PSK file {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "the PSK file {shown} is open to other users (mode {:03o}): its keys let anyone \
             impersonate the devices; chmod o-rwx {shown}",
            mode & 0o777
        ));
    }
    let mut text = String::new();
    // One byte past the limit tells a file cut short from a whole one: a
    // file cut inside its last line would give that identity a cut key.
    file.by_ref()
        .take(MAX_PSK_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the PSK file {shown}: {e}"))?;
    if text.len() as u64 > MAX_PSK_FILE {
        return Err(format!(
            "the PSK file {shown} is larger than {MAX_PSK_FILE} bytes"
        ));
    }
    Ok(text)
}

/// A device's identity and key, for the client side of a handshake
/// (`iot-ota-client --psk-identity ID --psk-key KEY`, or `--psk-file`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientPsk {
    identity: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for ClientPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientPsk")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .finish_non_exhaustive()
    }
}

/// The client engine's key lookup: its one key, whatever the server's hint.
struct OwnKey(Vec<u8>);

impl PskResolver for OwnKey {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

impl ClientPsk {
    /// An identity and a key written as in a PSK file (ASCII, or hex
    /// after `0x`).
    ///
    /// # Errors
    /// A message saying which of the two is malformed (never the key).
    pub fn new(identity: &str, key: &str) -> Result<ClientPsk, String> {
        if identity.is_empty() || identity.len() > MAX_PSK_FIELD || identity.contains(':') {
            return Err(format!(
                "the identity must be 1 to {MAX_PSK_FIELD} bytes without ':'"
            ));
        }
        let key = parse_key(key).ok_or_else(|| {
            format!("the key is invalid: use 1 to {MAX_PSK_FIELD} ASCII bytes or 0x and an even number of hex digits")
        })?;
        Ok(ClientPsk {
            identity: identity.as_bytes().to_vec(),
            key,
        })
    }

    /// Reads a key file holding one `identity:key` line (a server's
    /// `identity:key:PIDs` line is taken too; the PIDs are the server's
    /// business). Refused when other users may read it, as the server's.
    ///
    /// # Errors
    /// A message for the user naming the file.
    pub fn read(path: &Path) -> Result<ClientPsk, String> {
        let shown = path.display();
        let table =
            PskTable::parse(&read_private(path)?).map_err(|e| format!("PSK file {shown}: {e}"))?;
        let mut entries = table.identities.into_iter();
        match (entries.next(), entries.next()) {
            (Some((identity, entry)), None) => Ok(ClientPsk {
                identity,
                key: entry.key,
            }),
            _ => Err(format!(
                "the PSK file {shown} must hold exactly one identity:key line"
            )),
        }
    }

    /// The identity sent in the handshake.
    pub fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// A client engine with this key and the server's one suite: its
    /// first flight is sent again after `rto` (doubling, four times), and
    /// the handshake fails after `give_up`. Call
    /// [`Dtls::handle_timeout`] to have it write its ClientHello.
    ///
    /// # Errors
    /// The engine's complaint about the timings (zero, or above ten
    /// years).
    pub fn engine(&self, rto: Duration, give_up: Duration, now: Instant) -> Result<Dtls, String> {
        let config = Config::builder()
            .with_crypto_provider(psk_provider())
            .with_psk_client(self.identity.clone(), Arc::new(OwnKey(self.key.clone())))
            .dtls12_cipher_suites(&[Dtls12CipherSuite::PSK_AES128_CCM_8])
            .dtls13_cipher_suites(&[])
            .mtu(MTU)
            .flight_start_rto(rto)
            .flight_retries(4)
            .handshake_timeout(give_up)
            .build()
            .map_err(|e| format!("the DTLS engine refuses its configuration: {e}"))?;
        let mut dtls = Dtls::new_12_psk(Arc::new(config), now);
        dtls.set_active(true);
        Ok(dtls)
    }
}

/// The right an entry of a PID list grants instead of a product: reading
/// `/status` (an operator's identity). A PID cannot start with `@` in a
/// list; an `@` entry other than this one is refused, so that a typo does
/// not pass for a PID.
const STATUS_RIGHT: &str = "@status";

/// A comma-separated list of PIDs and rights, line `number` of the PSK
/// file or of the names file of certificates and raw public keys (the one
/// parser of the three): the products whose images the entry may fetch,
/// and `/status` when [`STATUS_RIGHT`] is among them. A list of that
/// right alone fetches no image.
///
/// # Errors
/// A message naming the line and the list.
pub(super) fn parse_pids(list: &str, number: usize) -> Result<Authorization, String> {
    let mut status = false;
    let mut pids = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry == STATUS_RIGHT {
            status = true;
        } else if entry.starts_with('@') {
            return Err(format!(
                "line {number}: unknown right '{entry}' (the one right is {STATUS_RIGHT})"
            ));
        } else if crate::firmware::valid_pid(entry.as_bytes()) {
            pids.push(entry);
        } else {
            return Err(format!(
                "line {number}: '{list}' is not a comma-separated list of PIDs and \
                 {STATUS_RIGHT}"
            ));
        }
    }
    let authorization = Authorization::only_pids(pids);
    Ok(if status {
        authorization.with_status()
    } else {
        authorization
    })
}

/// A key field: `0x` and hex digits, else the ASCII bytes themselves.
fn parse_key(text: &str) -> Option<Vec<u8>> {
    let key = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => {
            if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            hex.as_bytes()
                .chunks_exact(2)
                .map(|pair| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|p| u8::from_str_radix(p, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()?
        }
        None => text.as_bytes().to_vec(),
    };
    (!key.is_empty() && key.len() <= MAX_PSK_FIELD).then_some(key)
}

/// The engine's key lookup for one handshake: it remembers the identity
/// it was asked for, which the engine does not report.
pub(super) struct Resolver {
    /// The keys the handshake started with.
    pub(super) table: Arc<PskTable>,
    /// The identity the client named, once it did.
    pub(super) asked: Mutex<Option<Vec<u8>>>,
}

impl PskResolver for Resolver {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        if let Ok(mut asked) = self.asked.lock() {
            *asked = Some(identity.to_vec());
        }
        self.table.identities.get(identity).map(|i| i.key.clone())
    }
}

/// The crypto provider with only the PSK suite: building an engine
/// configuration validates every suite and key exchange of its provider,
/// which for the certificate suites costs elliptic-curve operations that
/// every ClientHello would pay.
pub(super) fn psk_provider() -> CryptoProvider {
    static SUITES: OnceLock<Vec<&'static dyn SupportedDtls12CipherSuite>> = OnceLock::new();
    let full = rust_crypto::default_provider();
    let suites = SUITES.get_or_init(|| {
        full.cipher_suites
            .iter()
            .copied()
            .filter(|s| s.suite() == Dtls12CipherSuite::PSK_AES128_CCM_8)
            .collect()
    });
    CryptoProvider {
        kx_groups: &[],
        cipher_suites: suites.as_slice(),
        ..full
    }
}

/// Datagrams a server engine queues: a PSK client's flights are one to
/// three datagrams; more queued is an attack.
pub(super) const SERVER_QUEUE_RX: usize = 8;

/// A server engine for one handshake whose ClientHello cookie the front
/// verified; its randomness comes from the operating system (dimpl's
/// thread generator), as any engine's. The first flight is sent again
/// after one second (doubling), the handshake ends after
/// `handshake_timeout`.
pub(super) fn server_engine(
    table: &Arc<PskTable>,
    handshake_timeout: Duration,
    now: Instant,
    record_sequence: u64,
) -> Result<(Dtls, Arc<Resolver>), String> {
    let resolver = Arc::new(Resolver {
        table: Arc::clone(table),
        asked: Mutex::new(None),
    });
    let config = Config::builder()
        .with_crypto_provider(psk_provider())
        .with_psk_server(None, resolver.clone())
        .dtls12_cipher_suites(&[Dtls12CipherSuite::PSK_AES128_CCM_8])
        .dtls13_cipher_suites(&[])
        .mtu(MTU)
        .max_queue_rx(SERVER_QUEUE_RX)
        .handshake_timeout(handshake_timeout)
        .build()
        .map_err(|e| format!("the DTLS engine refuses its configuration: {e}"))?;
    let mut dtls = Dtls::new_12_psk(Arc::new(config), now);
    dtls.expect_verified_hello(record_sequence);
    // The engine draws its ServerHello random on its first timer call.
    dtls.handle_timeout(now)
        .map_err(|e| format!("the DTLS engine does not start: {e}"))?;
    Ok((dtls, resolver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_files_hold_identities_keys_and_pids() {
        let table = PskTable::parse(
            "# devices\n\
             \n\
             sensor-1:secretkey\n\
             sensor-2:0x00112233445566778899aabbccddeeff:FOO,BAR\n",
        )
        .expect("valid file");
        assert_eq!(table.len(), 2);
        let one = table.identities.get(&b"sensor-1"[..]).expect("sensor-1");
        assert_eq!(one.key, b"secretkey");
        assert!(one.authorization.allows(b"ANY"));
        let two = table.identities.get(&b"sensor-2"[..]).expect("sensor-2");
        assert_eq!(two.key.len(), 16);
        assert_eq!(two.key.first(), Some(&0x00));
        assert_eq!(two.key.last(), Some(&0xff));
        assert!(two.authorization.allows(b"FOO"));
        assert!(two.authorization.allows(b"BAR"));
        assert!(!two.authorization.allows(b"BAZ"));
    }

    #[test]
    fn at_status_in_the_pid_list_grants_the_status_right() {
        let table = PskTable::parse(
            "operator:operator-key:@status\n\
             lab:lab-key: FOO , @status\n\
             dev:dev-key:FOO\n\
             all:all-key\n",
        )
        .expect("valid file");
        let right = |id: &str| table.authorization(id.as_bytes()).expect(id);
        // The right alone: /status, no image.
        assert!(right("operator").reads_status());
        assert!(!right("operator").allows(b"FOO"));
        assert!(right("lab").reads_status() && right("lab").allows(b"FOO"));
        assert!(!right("lab").allows(b"BAR"));
        // Neither a PID list nor no list at all grants it.
        assert!(!right("dev").reads_status());
        assert!(!right("all").reads_status() && right("all").allows(b"ANY"));
        for (text, says) in [
            ("a:k:@stats\n", "unknown right '@stats'"),
            ("a:k:FOO,@\n", "unknown right '@'"),
            ("a:k:@status,,FOO\n", "not a comma-separated list"),
        ] {
            let e = PskTable::parse(text).expect_err(text);
            assert!(e.starts_with("line 1") && e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_psk_file_past_the_limit_is_refused_not_cut() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::testkit::TempDir::new("psk-limit");
        // Cut at the limit, the last line would give sensor-9 the key
        // "se".
        let mut text = "#".repeat(MAX_PSK_FILE as usize - 12);
        text.push_str("\nsensor-9:secretkey\n");
        let path = dir.path().join("psk");
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = PskTable::read(&path).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn malformed_psk_lines_are_refused_by_line_without_the_key() {
        for (text, line) in [
            ("a:k\nnocolon\n", "line 2"),
            (":key\n", "line 1"),
            ("a:\n", "line 1"),
            ("a:0x123\n", "line 1"),
            ("a:0xzz\n", "line 1"),
            ("a:k\na:k2\n", "line 2"),
            ("a:k:\n", "line 1"),
            ("a:k:FOO,,BAR\n", "line 1"),
        ] {
            let e = PskTable::parse(text).expect_err(text);
            assert!(e.starts_with(line), "{text:?}: {e}");
            assert!(!e.contains("k2"), "{e}");
        }
    }
}
