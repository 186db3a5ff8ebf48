//! Downloads over a lossy link (issue "Robustness and security", item 2),
//! and with `--features dtls` over coaps, our client's and libcoap's.
//!
//! A UDP proxy thread on loopback sits between `iot-ota-client` and the
//! server. Each direction has its own deterministic xorshift generator and
//! decides per datagram: drop (30 %), duplicate (10 %), hold back and
//! release after the next datagram of that direction (5 %, a reordering),
//! or pass. The client downloads a 20 KiB image in 256-byte blocks, by the
//! legacy `/updates` protocol and by lookup + `/updates/{id}`, and the
//! result must equal the image byte for byte.
//!
//! Why downloads may need more than one run of the client: with 30 % loss
//! each way a request and its answer both get through with probability
//! 0.7 * 0.7 = 0.49, so an exchange fails all 5 transmissions (RFC 7252
//! MAX_RETRANSMIT 4) with probability 0.51^5, about 3.5 %; over the 80
//! blocks of the image and the lookup, a single run gives up most of the
//! time (1 - 0.965^81, about 94 %). A device then does what the test does:
//! it keeps the bytes it has and asks again from that OFFSET (`--offset`).
//! The client writes its output only for a complete body, so the test
//! takes what the device held from the proxy: the client asked for block
//! NUM only after accepting blocks 0..NUM, so the bytes below its highest
//! requested position are the blocks the proxy delivered to it, each of
//! which must indeed have been delivered (else the client skipped one).
//! The seeds are fixed, so the runs are the same each time as far as the
//! client's retransmission timing allows; the number of resumptions is
//! bounded (40) and printed.

mod support;

use iot_ota::wire::Message;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::{image_bytes, run_bounded, spawn_server, TempDir, CLIENT_BIN};

const IMAGE_LEN: usize = 20 * 1024;
const BLOCK_SIZE: &str = "256";
/// ACK_TIMEOUT of the client: loopback answers within a millisecond, so
/// 30 ms keeps a run with many retransmissions short (a request gives up
/// after 31 to 46.5 times it, under 1.5 s).
const TIMEOUT_MS: &str = "30";
const MAX_RUNS: u64 = 40;
const CODE_CONTENT: u8 = 0x45;
const OCTET_STREAM: u16 = 42;

/// The fate of the datagrams of one direction.
struct Lossy {
    rng: support::XorShift,
    held: Option<Vec<u8>>,
    counts: [u32; 4],
    /// Percent of datagrams dropped (duplicates and holds come after).
    drop_percent: u32,
    /// DTLS handshake records (content type 22) still to be dropped
    /// before chance decides: loss during the handshake, every run.
    drop_handshakes: u32,
    /// DTLS records dropped: [handshake, application data].
    dtls_dropped: [u32; 2],
}

/// DTLS record content types (RFC 6347 §4.1).
const DTLS_HANDSHAKE: u8 = 22;
const DTLS_APPLICATION_DATA: u8 = 23;

impl Lossy {
    fn with_loss(seed: u64, drop_percent: u32, drop_handshakes: u32) -> Lossy {
        // SplitMix64 of the seed: neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Lossy {
            rng: support::XorShift::seeded((z ^ (z >> 31)) as u32),
            held: None,
            counts: [0; 4],
            drop_percent,
            drop_handshakes,
            dtls_dropped: [0; 2],
        }
    }

    fn note_dtls_drop(&mut self, datagram: &[u8]) {
        match datagram.first() {
            Some(&DTLS_HANDSHAKE) => self.dtls_dropped[0] += 1,
            Some(&DTLS_APPLICATION_DATA) => self.dtls_dropped[1] += 1,
            _ => {}
        }
    }

    /// The datagrams to send now, in order, for one received datagram.
    fn process(&mut self, datagram: Vec<u8>) -> Vec<Vec<u8>> {
        let roll = self.rng.next() % 100;
        let released = self.held.take();
        let mut out = Vec::new();
        let drop = self.drop_percent;
        if self.drop_handshakes > 0 && datagram.first() == Some(&DTLS_HANDSHAKE) {
            self.drop_handshakes -= 1;
            self.counts[0] += 1;
            self.note_dtls_drop(&datagram);
            out.extend(released);
            return out;
        }
        match roll {
            r if r < drop => {
                self.counts[0] += 1;
                self.note_dtls_drop(&datagram);
            }
            r if r < drop + 10 => {
                self.counts[1] += 1;
                out.push(datagram.clone());
                out.push(datagram);
            }
            r if r < drop + 15 => {
                self.counts[2] += 1;
                self.held = Some(datagram);
            }
            _ => {
                self.counts[3] += 1;
                out.push(datagram);
            }
        }
        // A held datagram goes out after the one that came behind it.
        out.extend(released);
        out
    }
}

/// What the proxy saw of one client run.
#[derive(Default)]
struct Seen {
    /// Highest body position (Block2 NUM * size) the client asked for.
    asked: u64,
    /// Block payloads delivered to the client, by body position.
    delivered: HashMap<u64, Vec<u8>>,
    /// [dropped, duplicated, held, passed] per direction.
    counts: [[u32; 4]; 2],
    /// DTLS records dropped, [handshake, application data], per direction.
    dtls_dropped: [[u32; 2]; 2],
}

impl Seen {
    /// The bytes the client held when it gave up: the delivered blocks
    /// below the highest position it asked for, which must be contiguous.
    fn held_prefix(&self) -> Vec<u8> {
        let mut prefix = Vec::new();
        while (prefix.len() as u64) < self.asked {
            let block = self
                .delivered
                .get(&(prefix.len() as u64))
                .unwrap_or_else(|| {
                    panic!(
                        "the client asked for position {} but block at {} never reached it",
                        self.asked,
                        prefix.len()
                    )
                });
            assert!(!block.is_empty());
            prefix.extend_from_slice(block);
        }
        assert_eq!(
            prefix.len() as u64,
            self.asked,
            "blocks do not end at the asked position"
        );
        prefix
    }
}

/// A lossy proxy: the client talks to `addr`, the proxy to the server.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Lossy>>,
    seen: Arc<Mutex<Seen>>,
}

impl Proxy {
    fn start(server: SocketAddr, seed: u64) -> Proxy {
        Proxy::with_loss(server, seed, 30, 0)
    }

    /// A proxy dropping `drop_percent` of the datagrams each way, and the
    /// first `drop_handshakes` DTLS handshake records of each direction.
    fn with_loss(server: SocketAddr, seed: u64, drop_percent: u32, drop_handshakes: u32) -> Proxy {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind proxy front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind proxy back");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
        }
        let addr = front.local_addr().expect("proxy address");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));

        // Client to server.
        let upstream = {
            let (front, back) = (front.try_clone().unwrap(), back.try_clone().unwrap());
            let (stop, seen, client) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&client));
            let mut lossy = Lossy::with_loss(seed, drop_percent, drop_handshakes);
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *client.lock().unwrap() = Some(from);
                    note_request(&buf[..n], &mut seen.lock().unwrap());
                    for datagram in lossy.process(buf[..n].to_vec()) {
                        let _ = back.send_to(&datagram, server);
                    }
                }
                lossy
            })
        };
        // Server to client.
        let downstream = {
            let (stop, seen, client) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&client));
            let mut lossy =
                Lossy::with_loss(seed ^ 0xD0D0_D0D0_D0D0_D0D0, drop_percent, drop_handshakes);
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = back.recv_from(&mut buf) else {
                        continue;
                    };
                    let Some(to) = *client.lock().unwrap() else {
                        continue;
                    };
                    for datagram in lossy.process(buf[..n].to_vec()) {
                        note_reply(&datagram, &mut seen.lock().unwrap());
                        let _ = front.send_to(&datagram, to);
                    }
                }
                lossy
            })
        };
        Proxy {
            addr,
            stop,
            threads: vec![upstream, downstream],
            seen,
        }
    }

    /// Stops both threads and returns what they saw.
    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut counts = [[0; 4]; 2];
        let mut dtls_dropped = [[0; 2]; 2];
        for (i, thread) in self.threads.into_iter().enumerate() {
            let lossy = thread.join().expect("proxy thread");
            counts[i] = lossy.counts;
            dtls_dropped[i] = lossy.dtls_dropped;
        }
        let mut seen = std::mem::take(&mut *self.seen.lock().unwrap());
        seen.counts = counts;
        seen.dtls_dropped = dtls_dropped;
        seen
    }
}

/// A body request's Block2 position, the progress of the client.
fn note_request(datagram: &[u8], seen: &mut Seen) {
    let Ok(msg) = Message::parse(datagram) else {
        return;
    };
    let is_body = match msg.path.iter().collect::<Vec<_>>()[..] {
        [b"updates", _] => true,
        // The legacy form: PIDLEN + PID + TYPE + VERSION + OFFSET.
        [b"updates"] => msg
            .payload
            .first()
            .is_some_and(|&n| msg.payload.len() == usize::from(n) + 10),
        _ => false,
    };
    if let (true, Some(Ok(block))) = (is_body, msg.block2) {
        seen.asked = seen.asked.max(u64::from(block.num) * block.size() as u64);
    }
}

/// A delivered body block, kept by position (the first copy).
fn note_reply(datagram: &[u8], seen: &mut Seen) {
    let Ok(msg) = Message::parse(datagram) else {
        return;
    };
    if msg.code != CODE_CONTENT || msg.content_format != Some(OCTET_STREAM) {
        return;
    }
    if let Some(Ok(block)) = msg.block2 {
        let position = u64::from(block.num) * block.size() as u64;
        seen.delivered
            .entry(position)
            .or_insert_with(|| msg.payload.to_vec());
    }
}

/// Downloads through fresh proxies, resuming with --offset after each
/// run that gives up, until the client completes; returns the whole body
/// and the number of runs.
fn download(server: SocketAddr, legacy: bool, seed: u64, out: &TempDir) -> (Vec<u8>, u64) {
    let file = out
        .path()
        .join(if legacy { "legacy.bin" } else { "by-id.bin" });
    let started = Instant::now();
    let mut have: Vec<u8> = Vec::new();
    for run in 0..MAX_RUNS {
        let proxy = Proxy::start(server, seed.wrapping_add(run << 8));
        let mut command = Command::new(CLIENT_BIN);
        command
            .arg(proxy.addr.to_string())
            .args(["--pid", "Lossy", "--type", "APP", "--version", "1.0.0"])
            .args(["-b", BLOCK_SIZE, "--timeout-ms", TIMEOUT_MS])
            .arg("-o")
            .arg(&file);
        // The first run asks as a fresh device does: no OFFSET at all.
        if !have.is_empty() {
            command.arg("--offset").arg(have.len().to_string());
        }
        if legacy {
            command.arg("--legacy");
        }
        let output = run_bounded(&mut command, Duration::from_secs(120));
        let seen = proxy.finish();
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!(
            "{} run {run} from offset {}: exit {:?}, up [drop, dup, hold, pass] {:?}, down {:?}; {}",
            if legacy { "legacy" } else { "by id" },
            have.len(),
            output.status.code(),
            seen.counts[0],
            seen.counts[1],
            stderr.trim()
        );
        match output.status.code() {
            Some(0) => {
                have.extend(std::fs::read(&file).expect("client wrote its output"));
                return (have, run + 1);
            }
            // Gave up after its retransmissions: resume from what it held.
            Some(1) => have.extend(seen.held_prefix()),
            other => panic!("client exit {other:?}: {stderr}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "lossy download takes too long"
        );
    }
    panic!("no complete download in {MAX_RUNS} runs of the client");
}

/// With these seeds the legacy download completed in one run of the client
/// (80 blocks, 76 retransmissions) and the by-id one after two
/// resumptions, when this test was written.
#[test]
fn downloads_complete_over_a_link_that_drops_duplicates_and_reorders() {
    let image = image_bytes(IMAGE_LEN, 97);
    let dir = TempDir::new("lossy");
    dir.write("Lossy_1_0_1_APP.fmu", &image);
    let out = TempDir::new("lossy-out");
    let server = spawn_server(dir.path(), "127.0.0.1:0", &[]);

    for (legacy, seed) in [(true, 0x5EED_0001), (false, 0x5EED_0002)] {
        let (body, runs) = download(server.addr, legacy, seed, &out);
        eprintln!(
            "{} download complete after {runs} run(s)",
            if legacy { "legacy" } else { "by-id" }
        );
        assert_eq!(body.len(), image.len());
        assert!(body == image, "body differs from the image");
    }
}

/// coaps through the proxy: the first two handshake records each way are
/// dropped in every run (the ClientHello, the HelloVerifyRequest, the
/// cookie-bearing ClientHello, the server's flight), then 20 % of all
/// datagrams, 10 % duplicated, 5 % reordered, during the handshake and
/// the download of a 20 KiB image in 1024-byte blocks. The proxy cannot
/// read the records, so a run that gives up is simply run again (a
/// device that lost its session starts over); the body must equal the
/// image byte for byte. One run completes about nine times in ten.
#[cfg(feature = "dtls")]
#[test]
fn coaps_downloads_complete_over_a_lossy_link_with_loss_in_the_handshake() {
    use std::os::unix::fs::PermissionsExt;
    let keys = TempDir::new("lossy-coaps-keys");
    let psk = keys.write("psk", b"mote:lossy-link-key\n");
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    coaps_lossy_download(
        "lossy-coaps",
        &["--psk-file", psk.to_str().expect("utf-8")],
        &["--psk-identity", "mote", "--psk-key", "lossy-link-key"],
        0xC0A9_5000,
    );
}

/// The same through the lossy proxy with certificates both ways: the
/// server's flight (its certificate, key exchange and certificate
/// request, about 900 bytes) and the client's (its certificate, key
/// exchange, CertificateVerify, ChangeCipherSpec and Finished) are lost,
/// duplicated and reordered as the PSK ones are.
#[cfg(feature = "dtls")]
#[test]
fn coaps_with_certificates_completes_over_a_lossy_link_with_loss_in_the_handshake() {
    let Some(pki) = support::pki::Pki::new("lossy-certs") else {
        return;
    };
    pki.ca("ca", "Lossy CA");
    pki.issue("ca", "server", "lossy.test", "server", None);
    pki.issue("ca", "mote", "mote", "client", None);
    let (cert, key, ca) = (pki.pem("server"), pki.key("server"), pki.pem("ca"));
    let (mote, mote_key) = (pki.pem("mote"), pki.key("mote"));
    coaps_lossy_download(
        "lossy-certs",
        &["--cert", &cert, "--key", &key, "--ca", &ca],
        &["--cert", &mote, "--key", &mote_key, "--ca", &ca],
        0xCE27_5000,
    );
}

/// Runs our client through a fresh lossy proxy (seeds from `seed`) to a
/// coaps-only server with `server_args`, with `client_args`, until one
/// download completes (at most 12 runs); see the tests above.
#[cfg(feature = "dtls")]
fn coaps_lossy_download(tag: &str, server_args: &[&str], client_args: &[&str], seed: u64) {
    const COAPS_RUNS: u64 = 12;
    let image = image_bytes(IMAGE_LEN, 98);
    let dir = TempDir::new(tag);
    dir.write("Lossy_1_0_1_APP.fmu", &image);
    let out = TempDir::new(&format!("{tag}-out"));
    let file = out.path().join("coaps.bin");
    let mut args = server_args.to_vec();
    args.extend(["--dtls-listen", "127.0.0.1:0"]);
    let server = spawn_server(dir.path(), "none", &args);
    let started = Instant::now();
    let mut handshake_drops = 0;
    let mut data_drops = 0;
    for run in 0..COAPS_RUNS {
        let proxy = Proxy::with_loss(server.addr, seed + (run << 8), 20, 2);
        let _ = std::fs::remove_file(&file);
        let output = run_bounded(
            Command::new(CLIENT_BIN)
                .arg(format!("coaps://{}", proxy.addr))
                .args(["--pid", "Lossy", "--type", "APP", "--version", "1.0.0"])
                .args(client_args)
                .args(["-b", "1024", "--timeout-ms", TIMEOUT_MS])
                .arg("-o")
                .arg(&file),
            Duration::from_secs(120),
        );
        let seen = proxy.finish();
        handshake_drops += seen.dtls_dropped[0][0] + seen.dtls_dropped[1][0];
        data_drops += seen.dtls_dropped[0][1] + seen.dtls_dropped[1][1];
        eprintln!(
            "{tag} run {run}: exit {:?}, up [drop, dup, hold, pass] {:?}, down {:?}, \
             dropped [handshake, data] up {:?} down {:?}; {}",
            output.status.code(),
            seen.counts[0],
            seen.counts[1],
            seen.dtls_dropped[0],
            seen.dtls_dropped[1],
            String::from_utf8_lossy(&output.stderr).trim()
        );
        match output.status.code() {
            Some(0) => {
                let body = std::fs::read(&file).expect("client wrote its output");
                assert!(body == image, "coaps body differs from the image");
                assert!(handshake_drops >= 4, "no loss during the handshake");
                assert!(data_drops > 0, "no loss during the download");
                return;
            }
            Some(1) => {}
            other => panic!("client exit {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "lossy coaps download takes too long"
        );
    }
    panic!("no complete coaps download in {COAPS_RUNS} runs of the client");
}

/// libcoap's coap-client-gnutls through the same lossy proxy (its own
/// retransmission: ACK_TIMEOUT 2 s, so this takes tens of seconds).
#[cfg(feature = "dtls")]
#[test]
fn libcoap_coaps_download_completes_over_a_lossy_link() {
    use std::os::unix::fs::PermissionsExt;
    const RUNS: u64 = 2;
    if !support::require_program("coap-client-gnutls") {
        return;
    }
    let image = image_bytes(IMAGE_LEN / 2, 99);
    let dir = TempDir::new("lossy-libcoap");
    dir.write("Lossy_1_0_1_APP.fmu", &image);
    let id = support::image_id("Lossy_1_0_1_APP.fmu");
    let keys = TempDir::new("lossy-libcoap-keys");
    let psk = keys.write("psk", b"mote:lossy-link-key\n");
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = TempDir::new("lossy-libcoap-out");
    let file = out.path().join("libcoap.bin");
    let server = spawn_server(
        dir.path(),
        "none",
        &[
            "--psk-file",
            psk.to_str().expect("utf-8"),
            "--dtls-listen",
            "127.0.0.1:0",
        ],
    );
    for run in 0..RUNS {
        let proxy = Proxy::with_loss(server.addr, 0x11BC_0A90 + (run << 8), 20, 2);
        let _ = std::fs::remove_file(&file);
        let started = Instant::now();
        let output = run_bounded(
            Command::new("coap-client-gnutls")
                .args([
                    "-B",
                    "75",
                    "-u",
                    "mote",
                    "-k",
                    "lossy-link-key",
                    "-b",
                    "1024",
                    "-o",
                ])
                .arg(&file)
                .arg(format!("coaps://{}/updates/{id}", proxy.addr)),
            Duration::from_secs(80),
        );
        let seen = proxy.finish();
        let body = std::fs::read(&file).unwrap_or_default();
        eprintln!(
            "libcoap run {run}: exit {:?} in {:.1} s, {} bytes, dropped [handshake, data] up {:?} down {:?}; {}",
            output.status.code(),
            started.elapsed().as_secs_f64(),
            body.len(),
            seen.dtls_dropped[0],
            seen.dtls_dropped[1],
            String::from_utf8_lossy(&output.stderr).trim()
        );
        if body == image {
            assert!(seen.dtls_dropped[0][0] + seen.dtls_dropped[1][0] >= 4);
            return;
        }
    }
    panic!("libcoap completed no coaps download in {RUNS} runs");
}
