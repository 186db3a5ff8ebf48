//! The DTLS front (`--features dtls`) under the same kind of deterministic
//! mutation fuzzing as tests/fuzz_no_panic.rs, in process and bounded:
//!
//! * mutated ClientHellos and random records from many peers: no panic,
//!   no session (a valid cookie cannot be guessed), every answer no
//!   larger than what it answers;
//! * a real handshake by the client's engine, then its records (the
//!   handshake's flights and encrypted requests) mutated and fed in from
//!   the same peer: no panic, nothing decrypted from a mutated record,
//!   and no request taken from a peer that never authenticated.
#![cfg(feature = "dtls")]

mod support;

use iot_ota::dtls::{ClientPsk, Front, Handled, PskTable};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const HELLO_INPUTS: usize = 20_000;
const RECORD_INPUTS: usize = 5_000;

/// The kit's xorshift32, as tests/fuzz_no_panic.rs uses it.
struct Rng(support::XorShift);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next() as usize) % n.max(1)
    }
    fn byte(&mut self) -> u8 {
        self.0.next() as u8
    }
}

/// A DTLS 1.2 ClientHello with `cookie`: PSK_AES128_CCM_8, null
/// compression, extended master secret.
fn client_hello(random: &[u8; 32], cookie: &[u8], seq: u8) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(random);
    body.push(0);
    body.push(cookie.len() as u8);
    body.extend_from_slice(cookie);
    body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0, 0, 4, 0, 0x17, 0, 0]);
    let len = (body.len() as u32).to_be_bytes();
    let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, seq];
    let hs_len = (body.len() + 12) as u16;
    record.extend_from_slice(&hs_len.to_be_bytes());
    record.extend_from_slice(&[1, len[1], len[2], len[3], 0, seq, 0, 0, 0]);
    record.extend_from_slice(&[len[1], len[2], len[3]]);
    record.extend_from_slice(&body);
    record
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

fn front() -> Front {
    let keys = PskTable::parse("dev1:dev1-secret-key:DEV\n").expect("keys");
    Front::new(keys, 8, support::TEST_KEYS.echo, Instant::now())
}

#[test]
fn mutated_client_hellos_and_garbage_make_no_session_and_no_larger_answer() {
    let mut rng = Rng(support::XorShift::seeded(0xD715_0001));
    let mut front = front();
    let mut verify_requests = 0;
    for i in 0..HELLO_INPUTS {
        let mut random = [0u8; 32];
        random.iter_mut().for_each(|b| *b = rng.byte());
        let cookie: Vec<u8> = match rng.below(3) {
            0 => Vec::new(),
            _ => (0..32).map(|_| rng.byte()).collect(),
        };
        let seed_input = client_hello(&random, &cookie, u8::from(!cookie.is_empty()));
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

/// Runs a real handshake between the client engine and `front` as
/// `peer`, recording every datagram the client sent; the front holds an
/// established session afterwards.
fn handshake(front: &mut Front, peer: SocketAddr, epoch: Instant) -> (dimpl::Dtls, Vec<Vec<u8>>) {
    let psk = ClientPsk::new("dev1", "dev1-secret-key").expect("psk");
    let mut client = psk
        .engine(Duration::from_secs(1), Duration::from_secs(30), epoch)
        .expect("engine");
    let mut sent = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut connected = false;
    for step in 0..20u64 {
        let now = epoch + Duration::from_millis(step);
        client.handle_timeout(now).expect("client timer");
        let mut out = Vec::new();
        for _ in 0..64 {
            match client.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => out.push(p.to_vec()),
                dimpl::Output::Connected => connected = true,
                dimpl::Output::Timeout(_) => break,
                _ => {}
            }
        }
        for datagram in out {
            front.receive(peer, step, &datagram);
            sent.push(datagram);
        }
        for (_, record) in front.take_outgoing() {
            let _ = client.handle_packet(&record);
        }
        if connected && front.authorization(peer).is_some() {
            return (client, sent);
        }
    }
    panic!("no handshake between the client engine and the front");
}

#[test]
fn mutated_records_of_a_real_session_never_panic_or_decrypt() {
    let mut rng = Rng(support::XorShift::seeded(0xD715_0002));
    let epoch = Instant::now();
    let mut front = front();
    let peer: SocketAddr = "192.0.2.77:5000".parse().expect("addr");
    let (mut client, mut corpus) = handshake(&mut front, peer, epoch);
    // Encrypted requests of the session join the corpus.
    let mut buf = vec![0u8; 4096];
    for n in 0..8u8 {
        let request = [
            0x40, 0x01, 0x00, n, 0xb7, b'u', b'p', b'd', b'a', b't', b'e', b's',
        ];
        client.send_application_data(&request).expect("encrypt");
        for _ in 0..8 {
            match client.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => corpus.push(p.to_vec()),
                dimpl::Output::Timeout(_) => break,
                _ => {}
            }
        }
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
        assert!(
            front.session_count() <= 1,
            "input {i}: sessions from garbage"
        );
        assert!(front.authorization(stranger).is_none());
    }
}
