//! The coaps tests' fixture (tests/dtls.rs, tests/dtls_tinydtls.rs,
//! tests/dtls_attack.rs): an updates directory with test images, a PSK
//! file only its owner can read, an output directory, and servers with
//! coaps only; and our client observing a lookup over coaps.

use super::{TempDir, TestImage, TestServer};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Images, keys and an output directory for one coaps test.
pub struct CoapsFixture {
    /// The updates directory.
    pub dir: TempDir,
    /// Holds the PSK file, `psk`.
    pub keys: TempDir,
    /// Where clients write what they download.
    pub out: TempDir,
    /// The images written to `dir`.
    pub images: Vec<TestImage>,
}

impl CoapsFixture {
    /// `images` (PID and size) in a new updates directory, and `psk_file`
    /// as the PSK file, mode 0600.
    pub fn new(tag: &str, images: &[(&str, usize)], psk_file: &str) -> CoapsFixture {
        let dir = TempDir::new(tag);
        let images = super::write_images(&dir, images);
        let keys = TempDir::new(&format!("{tag}-keys"));
        let psk = keys.write("psk", psk_file.as_bytes());
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        CoapsFixture {
            dir,
            keys,
            out: TempDir::new(&format!("{tag}-out")),
            images,
        }
    }

    /// The PSK file.
    pub fn psk(&self) -> PathBuf {
        self.keys.path().join("psk")
    }

    /// The image of product `pid`.
    pub fn image(&self, pid: &str) -> &TestImage {
        super::find_image(&self.images, pid)
    }

    /// A server with coaps only, on `listen`, with `extra` options.
    pub fn server(&self, listen: &str, extra: &[&str]) -> TestServer {
        self.server_via(&[], listen, extra)
    }

    /// As [`CoapsFixture::server`], started by `launcher` (e.g. a
    /// [`super::NetnsPair`]'s `in_server()`).
    pub fn server_via(&self, launcher: &[&str], listen: &str, extra: &[&str]) -> TestServer {
        let psk = self.psk();
        let mut args = vec![
            "--psk-file",
            psk.to_str().expect("utf-8"),
            "--dtls-listen",
            listen,
        ];
        args.extend_from_slice(extra);
        super::spawn_server_via(launcher, self.dir.path(), "none", &args)
    }
}

/// Our client observing the lookup of product DEV at version 1.0.1 over
/// coaps at `server` as `identity` with `key`, downloading the image it
/// is told of to `out`; its standard output lines ("no update",
/// "update ID") arrive on the receiver.
pub fn observe_lookup(
    server: SocketAddr,
    identity: &str,
    key: &str,
    out: &Path,
) -> (Child, mpsc::Receiver<String>) {
    let mut client = Command::new(super::CLIENT_BIN)
        .arg(format!("coaps://{server}"))
        .args([
            "--pid",
            "DEV",
            "--type",
            "3",
            "--version",
            "1.0.1",
            "--observe",
        ])
        .args(["--psk-identity", identity, "--psk-key", key, "-o"])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client");
    let stdout = client.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (client, rx)
}
