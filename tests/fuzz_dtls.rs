//! The DTLS front (`--features dtls`) under the same kind of deterministic
//! mutation fuzzing as tests/fuzz_no_panic.rs, in process and bounded:
//!
//! * mutated ClientHellos (PSK, certificate and raw public key ones) and
//!   random records from many peers, to a front serving every mode: no
//!   panic, no session (a valid cookie cannot be guessed), every answer no
//!   larger than what it answers;
//! * a real handshake by the client's engine (a PSK one, and a raw
//!   public key one), then its records (the handshake's flights and
//!   encrypted requests) mutated and fed in from the same peer: no panic,
//!   nothing decrypted from a mutated record, and no request taken from a
//!   peer that never authenticated;
//! * the checks of the cargo-fuzz target `dtls_front`
//!   (tests/fuzz/checks/dtls_front.rs) on its committed seeds, and on each
//!   input that ever crashed it, kept here with what it found.
#![cfg(feature = "dtls")]

// The check of the fuzz target `dtls_front` brings the shared kit's
// generator (tests/support/images.rs) and DTLS helpers
// (tests/support/dtls_session.rs): a second `mod` of either file would
// compile it twice.
#[path = "fuzz/checks/dtls_front.rs"]
mod dtls_front_check;

use dtls_front_check::dtls_session::{self, client_hello};
use dtls_front_check::images::XorShift;
use iot_ota::dtls::{ClientCredentials, Front, Handled};
use std::net::SocketAddr;

const HELLO_INPUTS: usize = 20_000;
const RECORD_INPUTS: usize = 5_000;

/// The kit's xorshift32, as tests/fuzz_no_panic.rs uses it.
struct Rng(XorShift);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next() as usize) % n.max(1)
    }
    fn byte(&mut self) -> u8 {
        self.0.next() as u8
    }
}

/// One mutation of `input`: bit flips, byte changes, insertions,
/// deletions, truncation, a length field rewritten, or duplication.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len().max(1));
        match rng.below(7) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.below(8),
            1 if !out.is_empty() => out[at] = rng.byte(),
            2 => out.insert(at.min(out.len()), rng.byte()),
            3 if !out.is_empty() => {
                out.remove(at);
            }
            4 => out.truncate(at),
            // The record length (11..13) or a handshake length.
            5 if out.len() > 24 => {
                let field = [11, 14, 22][rng.below(3)];
                out[field] = rng.byte();
            }
            6 if out.len() < 4096 => {
                let copy = out.clone();
                out.extend_from_slice(&copy);
            }
            _ => {}
        }
    }
    out
}

/// The fuzz target's front: PSK, certificates and raw public keys.
fn front() -> Front {
    dtls_front_check::front(8)
}

#[test]
fn mutated_client_hellos_and_garbage_make_no_session_and_no_larger_answer() {
    let mut rng = Rng(XorShift::seeded(0xD715_0001));
    let mut front = front();
    let mut verify_requests = 0;
    // The first hellos of a certificate and a raw public key client: the
    // ECDHE-ECDSA suites, and the certificate type extensions.
    let engine_hellos = [
        dtls_session::first_hello(&dtls_session::certificate_credentials()),
        dtls_session::first_hello(&dtls_session::raw_key_credentials()),
    ];
    for i in 0..HELLO_INPUTS {
        let mut random = [0u8; 32];
        random.iter_mut().for_each(|b| *b = rng.byte());
        let cookie: Vec<u8> = match rng.below(3) {
            0 => Vec::new(),
            _ => (0..32).map(|_| rng.byte()).collect(),
        };
        let seed_input = match rng.below(3) {
            0 => client_hello(&random, &cookie, u8::from(!cookie.is_empty())),
            n => engine_hellos[n - 1].clone(),
        };
        let input = match rng.below(10) {
            0 => (0..rng.below(300)).map(|_| rng.byte()).collect(),
            1 => seed_input,
            _ => mutate(&mut rng, &seed_input),
        };
        let port = 1024 + (i % 60_000) as u16;
        let peer = SocketAddr::from(([192, 0, 2, (i % 250) as u8 + 1], port));
        let now_ms = (i as u64) * 7;
        let handled = front.receive(peer, now_ms, &input);
        if handled == Handled::HelloVerify {
            verify_requests += 1;
        }
        assert!(front.take_requests().is_empty(), "input {i}: a request");
        let answer: usize = front
            .take_outgoing()
            .iter()
            .map(|(to, record)| {
                assert_eq!(*to, peer);
                record.len()
            })
            .sum();
        assert!(
            answer <= input.len(),
            "input {i}: {answer} bytes answered to {}",
            input.len()
        );
        assert_eq!(
            front.session_count(),
            0,
            "input {i} ({handled:?}) made a session: {input:02x?}"
        );
        front.on_timers(now_ms);
    }
    // The generator reaches the cookie exchange, not only the parser's
    // refusals.
    assert!(verify_requests > HELLO_INPUTS / 20, "{verify_requests}");
}

/// A real handshake with `front` as `peer`, with `credentials`.
fn handshake(
    front: &mut Front,
    peer: SocketAddr,
    credentials: &ClientCredentials,
) -> (dimpl::Dtls, Vec<Vec<u8>>) {
    dtls_session::handshake_with(front, peer, dtls_front_check::epoch(), 0, credentials)
        .expect("a handshake between the client engine and the front")
}

#[test]
fn mutated_records_of_a_real_session_never_panic_or_decrypt() {
    let psk = iot_ota::dtls::ClientPsk::new("dev1", "dev1-secret-key").expect("psk");
    mutated_records(0xD715_0002, &ClientCredentials::Psk(psk));
}

#[test]
fn mutated_records_of_a_real_raw_public_key_session_never_panic_or_decrypt() {
    mutated_records(0xD715_0003, &dtls_session::raw_key_credentials());
}

/// A real handshake with `credentials`, then its records and encrypted
/// requests mutated (seed `seed`): see the module's comment.
fn mutated_records(seed: u32, credentials: &ClientCredentials) {
    let mut rng = Rng(XorShift::seeded(seed));
    let mut front = front();
    let peer: SocketAddr = "192.0.2.77:5000".parse().expect("addr");
    let (mut client, mut corpus) = handshake(&mut front, peer, credentials);
    // Encrypted requests of the session join the corpus.
    for n in 0..8u8 {
        let request = [
            0x40, 0x01, 0x00, n, 0xb7, b'u', b'p', b'd', b'a', b't', b'e', b's',
        ];
        corpus.extend(dtls_session::encrypt(&mut client, &request).expect("encrypt"));
    }
    let stranger: SocketAddr = "192.0.2.78:5000".parse().expect("addr");
    for i in 0..RECORD_INPUTS {
        let original = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, original);
        let from = if rng.below(4) == 0 { stranger } else { peer };
        let now_ms = 100 + i as u64;
        front.receive(from, now_ms, &input);
        let requests = front.take_requests();
        if from == stranger {
            assert!(requests.is_empty(), "input {i}: a request from a stranger");
        } else if !requests.is_empty() {
            // A changed record fails its CCM tag (or is no record): what
            // decrypts is an unchanged record at either end of the input
            // (a truncation after it, a copy appended).
            assert!(
                corpus
                    .iter()
                    .any(|c| input.starts_with(c) || input.ends_with(c)),
                "input {i}: a mutated record decrypted"
            );
        }
        let _ = front.take_outgoing();
        front.on_timers(now_ms);
        // A replayed cookie-bearing hello of the recorded handshake may
        // open a half-open handshake (its cookie is the address's, for two
        // periods); no record makes another established session.
        assert!(
            front.session_count() - front.handshake_count() <= 1,
            "input {i}: sessions from garbage"
        );
        assert!(
            front.handshake_count() <= 1,
            "input {i}: handshakes from garbage"
        );
        assert!(front.authorization(stranger).is_none());
    }
}

/// Every file of `tests/fuzz/seeds/dtls_front/`, sorted by name.
fn dtls_front_seeds() -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = seeds_dir("dtls_front");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read seed");
            (path, bytes)
        })
        .collect()
}

fn seeds_dir(target: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/seeds")
        .join(target)
}

#[test]
fn dtls_front_seeds_pass_the_fuzz_checks() {
    let seeds = dtls_front_seeds();
    assert!(seeds.len() >= 5, "seed corpus missing");
    let mut total = dtls_front_check::Reached::default();
    for (path, bytes) in seeds {
        let reached = dtls_front_check::run(&bytes);
        eprintln!("{}: {reached:?}", path.display());
        total.hello_verify += reached.hello_verify;
        total.started += reached.started;
        total.requests += reached.requests;
        total.codes.extend(reached.codes);
    }
    // The seeds lead the fuzzer past the cookie exchange and into the
    // service: images (2.05) and the other product's refused (4.03).
    assert!(total.hello_verify > 0 && total.started > 0, "{total:?}");
    assert!(total.requests > 10, "{total:?}");
    assert!(total.codes.contains(&0x45), "no 2.05: {total:?}");
    assert!(total.codes.contains(&0x83), "no 4.03: {total:?}");
}

/// One frame of a `dtls_front` input: `peer` (bit 7: through the live
/// session), a clock step of `dt` and `data`.
fn frame(input: &mut Vec<u8>, peer: u8, dt: u8, data: &[u8]) {
    input.push(peer);
    input.push(dt);
    input.extend_from_slice(&(data.len() as u16).to_le_bytes());
    input.extend_from_slice(data);
}

/// The datagrams of a `handler` seed (two bytes of settings, then
/// PEER DT LEN DATA frames).
fn handler_seed_datagrams(name: &str) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(seeds_dir("handler").join(name)).expect("handler seed");
    let mut rest = bytes.get(2..).unwrap_or_default();
    let mut datagrams = Vec::new();
    while let Some((&[_, _, lo, hi], tail)) = rest.split_first_chunk::<4>() {
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        datagrams.push(datagram.to_vec());
        rest = tail;
    }
    datagrams
}

/// Writes the seed corpus of the fuzz target `dtls_front`
/// (`cargo test --features dtls --test fuzz_dtls -- --ignored`): a real
/// ClientHello of the client engine, the cookie-bearing hello after it,
/// every record of a real session (handshake and encrypted requests) as
/// peer 0 sends them, the requests of the `handler` seeds through a live
/// session of either identity, and garbage. The records differ from run
/// to run (the engines' randoms).
#[test]
#[ignore = "writes tests/fuzz/seeds/dtls_front"]
fn write_dtls_front_seeds() {
    let peer = dtls_front_check::address(0);
    let start_ms = dtls_front_check::FRAMES_START_MS;
    let mut front = dtls_front_check::front(8);
    let epoch = dtls_front_check::epoch();
    let (mut client, records) =
        dtls_session::handshake(&mut front, peer, epoch, start_ms, "dev1", "dev1-secret-key")
            .expect("handshake");
    let mut raw_front = dtls_front_check::front(8);
    let (_, raw_records) = dtls_session::handshake_with(
        &mut raw_front,
        peer,
        epoch,
        start_ms,
        &dtls_session::raw_key_credentials(),
    )
    .expect("raw public key handshake");
    let certificate_hello = dtls_session::first_hello(&dtls_session::certificate_credentials());
    let mut session = records.clone();
    for datagrams in handler_seed_datagrams("image_each") {
        session.extend(dtls_session::encrypt(&mut client, &datagrams).expect("encrypt"));
    }
    let raw = |datagrams: &[Vec<u8>]| {
        let mut input = vec![0];
        for datagram in datagrams {
            frame(&mut input, 0, 0, datagram);
        }
        input
    };
    let through_session = |flags: u8, handler_seed: &str| {
        let mut input = vec![flags];
        for datagram in handler_seed_datagrams(handler_seed) {
            frame(&mut input, 0x80, 1, &datagram);
        }
        input
    };
    let mut garbage = vec![0x1c];
    frame(&mut garbage, 1, 0, &records[0][..records[0].len() / 2]);
    frame(
        &mut garbage,
        2,
        3,
        &[22, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0],
    );
    frame(&mut garbage, 3, 200, b"not a DTLS record at all");
    let seeds = [
        ("client_hello", raw(&records[..1])),
        ("cookie_hello", raw(&records[..2])),
        ("session_records", raw(&session)),
        ("raw_key_client_hello", raw(&raw_records[..1])),
        ("raw_key_cookie_hello", raw(&raw_records[..2])),
        ("raw_key_session_records", raw(&raw_records)),
        ("certificate_client_hello", raw(&[certificate_hello])),
        (
            "live_raw_key_image_each",
            through_session(0x21, "image_each"),
        ),
        ("live_dev1_image_each", through_session(1, "image_each")),
        (
            "live_dev1_lookup_discovery",
            through_session(1, "lookup_query_discovery"),
        ),
        (
            "live_dev2_big_blocks",
            through_session(3, "image_big_blocks"),
        ),
        ("live_dev2_echo_flow", through_session(3, "echo_flow")),
        ("garbage", garbage),
    ];
    let dir = seeds_dir("dtls_front");
    std::fs::create_dir_all(&dir).expect("seed directory");
    for (name, input) in seeds {
        dtls_front_check::check(&input);
        std::fs::write(dir.join(name), input).expect("write seed");
    }
}
