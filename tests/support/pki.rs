//! A test PKI made at test time with the `openssl` command (Debian's
//! openssl): CAs, a server certificate for 127.0.0.1 and [::1], device
//! certificates (valid, expired, from another CA) and raw public keys,
//! all ECDSA P-256, in a temporary directory. Nothing is checked in: each
//! run makes fresh keys.

use super::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

/// The extension sections certificates are issued with (`openssl ca
/// -extensions NAME`).
const EXTENSIONS: &str = "\
[ client ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
[ server ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
[ server_elsewhere ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:ota.test
[ server_no_san ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
[ no_eku ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
[ key_encipherment ]
basicConstraints = CA:FALSE
keyUsage = critical,keyEncipherment
extendedKeyUsage = clientAuth
[ ca_client ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = clientAuth
[ unknown_critical ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
1.3.6.1.4.1.55555.1 = critical,DER:05:00
[ alias_ops ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:ops
";

/// A directory of keys and certificates made with `openssl`.
pub struct Pki {
    /// Where the files are: NAME.key and NAME.pem for each one made.
    pub dir: TempDir,
}

impl Pki {
    /// An empty PKI directory; `None` when `openssl` is missing (then
    /// the test skips, or fails under CI=true).
    pub fn new(tag: &str) -> Option<Pki> {
        if !super::require_program("openssl") {
            return None;
        }
        Some(Pki {
            dir: TempDir::new(&format!("{tag}-pki")),
        })
    }

    /// The path of file `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path of `name`'s certificate (or public key), as a string.
    pub fn pem(&self, name: &str) -> String {
        self.path(&format!("{name}.pem"))
            .to_string_lossy()
            .into_owned()
    }

    /// The path of `name`'s private key, as a string.
    pub fn key(&self, name: &str) -> String {
        self.path(&format!("{name}.key"))
            .to_string_lossy()
            .into_owned()
    }

    /// Runs `openssl` with `args` in the directory; panics when it fails.
    pub fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A P-256 private key NAME.key (SEC1 PEM, as `openssl ecparam`
    /// writes it), mode 0600.
    pub fn new_key(&self, name: &str) {
        let key = format!("{name}.key");
        self.openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &key,
        ]);
        std::fs::set_permissions(self.path(&key), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }

    /// A self-signed CA NAME.pem with subject CN=`cn` (two CAs may share
    /// a subject: the signature tells them apart), and its database for
    /// `openssl ca`.
    pub fn ca(&self, name: &str, cn: &str) {
        self.new_key(name);
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-sha256",
            "-days",
            "3650",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &format!("{name}.pem"),
        ]);
        self.database(name);
    }

    /// The database and configuration with which `openssl ca` issues
    /// certificates under NAME.pem and NAME.key (a CA's, or any other
    /// certificate's, to make one a non-CA signed).
    pub fn database(&self, name: &str) {
        let db = self.path(&format!("{name}-db"));
        std::fs::create_dir_all(&db).expect("ca database");
        std::fs::write(db.join("index.txt"), b"").expect("index");
        std::fs::write(db.join("serial"), b"1000\n").expect("serial");
        let config = format!(
            "[ ca ]\ndefault_ca = this\n[ this ]\ndatabase = {name}-db/index.txt\n\
             serial = {name}-db/serial\nnew_certs_dir = {name}-db\ncertificate = {name}.pem\n\
             private_key = {name}.key\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
             copy_extensions = none\n[ any ]\ncommonName = supplied\n{EXTENSIONS}"
        );
        std::fs::write(self.path(&format!("{name}.cnf")), config).expect("ca config");
    }

    /// A certificate NAME.pem for a new key NAME.key, subject CN=`cn`,
    /// issued by CA `ca` with the extensions of `kind` (a section of
    /// EXTENSIONS: "client", "server"...), valid from `start` to `end` (`YYYYMMDDHHMMSSZ`), or
    /// for a year from now without them.
    pub fn issue(&self, ca: &str, name: &str, cn: &str, kind: &str, dates: Option<(&str, &str)>) {
        self.new_key(name);
        let csr = format!("{name}.csr");
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ]);
        let config = format!("{ca}.cnf");
        let out = format!("{name}.pem");
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            &config,
            "-extensions",
            kind,
            "-in",
            &csr,
            "-out",
            &out,
        ];
        match dates {
            Some((start, end)) => args.extend(["-startdate", start, "-enddate", end]),
            None => args.extend(["-days", "365"]),
        }
        self.openssl(&args);
    }

    /// A key pair for raw public keys: NAME.key (SEC1 PEM) and NAME.pem,
    /// its SubjectPublicKeyInfo (PEM "PUBLIC KEY"); NAME.rpk holds both,
    /// as `coap-client-gnutls -M` takes them.
    pub fn raw_key(&self, name: &str) {
        self.new_key(name);
        self.openssl(&[
            "ec",
            "-in",
            &format!("{name}.key"),
            "-pubout",
            "-out",
            &format!("{name}.pem"),
        ]);
        let mut both = std::fs::read(self.path(&format!("{name}.pem"))).expect("public key");
        both.extend(std::fs::read(self.path(&format!("{name}.key"))).expect("private key"));
        let rpk = self.path(&format!("{name}.rpk"));
        std::fs::write(&rpk, both).expect("rpk file");
        std::fs::set_permissions(&rpk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    /// The base64 of `name`'s SubjectPublicKeyInfo (NAME.pem's body on
    /// one line), as a `--rpk-clients` line takes it.
    pub fn public_key_base64(&self, name: &str) -> String {
        let pem = std::fs::read_to_string(self.path(&format!("{name}.pem"))).expect("public key");
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    /// The SHA-256 of `name`'s DER SubjectPublicKeyInfo in hex, computed
    /// by `openssl`.
    pub fn fingerprint(&self, name: &str) -> String {
        let der = format!("{name}.der");
        self.openssl(&[
            "pkey",
            "-pubin",
            "-in",
            &format!("{name}.pem"),
            "-outform",
            "DER",
            "-out",
            &der,
        ]);
        let output = Command::new("openssl")
            .args(["dgst", "-sha256", "-r", &der])
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        let text = String::from_utf8_lossy(&output.stdout);
        let hex = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(hex.len(), 64, "openssl dgst: {text}");
        hex
    }
}
