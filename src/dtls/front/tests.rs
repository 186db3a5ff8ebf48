//! The front against a real client engine, in memory: the budgets for
//! what has not authenticated, session replacement and idle ends, and
//! the alerts of failed handshakes.

use super::*;
use crate::dtls::hello::tests::counting_entropy;
use crate::dtls::{ClientCredentials, ClientPsk};

const KEYS: &str = "dev1:dev1-secret-key:DEV\ndev2:other-key\n";

fn limits() -> Limits {
    Limits {
        max_sessions: 4,
        max_handshakes: 16,
        handshakes_per_source: 4,
        session_idle_ms: 60_000,
        public_key_handshakes_per_s: 100,
    }
}

fn front_with(limits: Limits, epoch: Instant) -> Front {
    let keys = PskTable::parse(KEYS).expect("keys");
    Front::new(keys, limits, counting_entropy(), epoch)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

/// A device: its engine and address.
struct Device {
    addr: SocketAddr,
    dtls: Dtls,
    connected: bool,
    /// Fatal alert descriptions it received in plaintext.
    alerts: Vec<u8>,
    /// Records the front sent to others meanwhile.
    others: Vec<(SocketAddr, Vec<u8>)>,
}

impl Device {
    fn new(address: &str, identity: &str, key: &str, epoch: Instant, start_ms: u64) -> Device {
        let psk = ClientPsk::new(identity, key).expect("psk");
        Device::with(address, &ClientCredentials::Psk(psk), epoch, start_ms)
    }

    /// A device with `credentials` (a raw key one, say).
    fn with(
        address: &str,
        credentials: &ClientCredentials,
        epoch: Instant,
        start_ms: u64,
    ) -> Device {
        let dtls = credentials
            .engine(
                Duration::from_secs(1),
                Duration::from_secs(30),
                epoch + Duration::from_millis(start_ms),
            )
            .expect("client engine");
        Device {
            addr: addr(address),
            dtls,
            connected: false,
            alerts: Vec::new(),
            others: Vec::new(),
        }
    }

    /// What the engine has to send at `now_ms`.
    fn flight(&mut self, epoch: Instant, now_ms: u64) -> Vec<Vec<u8>> {
        let _ = self
            .dtls
            .handle_timeout(epoch + Duration::from_millis(now_ms));
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::new();
        for _ in 0..64 {
            match self.dtls.poll_output(&mut buf) {
                Output::Packet(p) => out.push(p.to_vec()),
                Output::Connected => self.connected = true,
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        out
    }

    /// Takes what the front sent to this device.
    fn take(&mut self, front: &mut Front) {
        let outgoing = front.take_outgoing();
        for (to, record) in outgoing {
            if to != self.addr {
                self.others.push((to, record));
                continue;
            }
            if let [21, _, _, 0, 0, _, _, _, _, _, _, 0, 2, 2, description] = record[..] {
                self.alerts.push(description);
            }
            let _ = self.dtls.handle_packet(&record);
        }
    }
}

/// Flights between `device` and `front`, one millisecond apart from
/// `start_ms`, until the device is connected or the front ended its
/// handshake; `meddle` runs before each of the device's datagrams.
fn run(
    front: &mut Front,
    device: &mut Device,
    epoch: Instant,
    start_ms: u64,
    mut meddle: impl FnMut(&mut Front, u64),
) -> bool {
    for step in 0..40 {
        let now_ms = start_ms + step;
        for datagram in device.flight(epoch, now_ms) {
            meddle(front, now_ms);
            let _ = front.take_outgoing();
            front.receive(device.addr, now_ms, &datagram);
            device.take(front);
        }
        if device.connected && front.authorization(device.addr).is_some() {
            return true;
        }
        if !device.alerts.is_empty() {
            return false;
        }
    }
    false
}

/// Four devices (198.51.100.1 to .4) with established sessions, as many
/// as `limits()` keeps.
fn four_established(front: &mut Front, epoch: Instant) -> Vec<Device> {
    let mut devices: Vec<Device> = (0..4)
        .map(|i| {
            let address = format!("198.51.100.{}:5000", i + 1);
            Device::new(&address, "dev2", "other-key", epoch, 0)
        })
        .collect();
    for dev in &mut devices {
        assert!(run(front, dev, epoch, 0, |_, _| {}));
    }
    devices
}

/// One encrypted CoAP GET from `device`, as the front decrypts it.
fn request(front: &mut Front, device: &mut Device, now_ms: u64, mid: u8) -> Vec<Vec<u8>> {
    let coap = [0x40, 0x01, 0x00, mid];
    device.dtls.send_application_data(&coap).expect("send");
    for datagram in device.flight(front.epoch, now_ms) {
        front.receive(device.addr, now_ms, &datagram);
    }
    front.take_requests()
}

/// The datagrams of a cookie exchange from `from` with `random`: the
/// second, cookie-bearing hello, as a spoofer who can receive there
/// makes it.
fn cookie_hello(front: &mut Front, from: SocketAddr, random: u8, now_ms: u64) -> Vec<u8> {
    let first = crate::dtls::hello::tests::hello(&[], 0, 0, random);
    assert_eq!(front.receive(from, now_ms, &first), Handled::HelloVerify);
    let out = front.take_outgoing();
    let cookie = out[0].1[28..60].to_vec();
    let mut second = crate::dtls::hello::tests::hello(&cookie, 1, 1, random);
    // The engine wants the extended master secret: add the extension.
    add_ems(&mut second);
    second
}

/// Appends the extended_master_secret extension to a hello built by
/// `hello::tests::hello` (which has none), fixing the lengths.
fn add_ems(record: &mut Vec<u8>) {
    record.extend_from_slice(&[0, 4, 0, 0x17, 0, 0]);
    let hs_len = (record.len() - 13) as u16;
    record[11..13].copy_from_slice(&hs_len.to_be_bytes());
    let body = (record.len() - 25) as u32;
    record[14..17].copy_from_slice(&body.to_be_bytes()[1..]);
    record[22..25].copy_from_slice(&body.to_be_bytes()[1..]);
}

#[test]
fn a_late_copy_of_the_hello_that_started_a_session_starts_nothing() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let from = addr("192.0.2.1:5000");
    let mut sent = Vec::new();
    let mut dev = Device::new("192.0.2.1:5000", "dev1", "dev1-secret-key", epoch, 0);
    for step in 0..40 {
        for datagram in dev.flight(epoch, step) {
            front.receive(from, step, &datagram);
            sent.push(datagram);
            dev.take(&mut front);
        }
        if dev.connected {
            break;
        }
    }
    assert!(front.identity(from).is_some());
    let cookie_hello = sent
        .iter()
        .find(|d| {
            crate::dtls::hello::ClientHello::parse(d).is_some_and(|h| !h.cookie(d).is_empty())
        })
        .expect("the cookie-bearing hello");
    assert_eq!(front.receive(from, 50, cookie_hello), Handled::Ignored);
    assert_eq!(front.handshake_count(), 0);
    assert!(front.take_outgoing().is_empty());
}

#[test]
fn a_device_completes_its_handshake_through_our_cookie() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let mut dev = Device::new("192.0.2.1:5000", "dev1", "dev1-secret-key", epoch, 0);
    assert!(run(&mut front, &mut dev, epoch, 0, |_, _| {}));
    assert_eq!(front.identity(dev.addr), Some(&b"dev1"[..]));
    assert_eq!(front.handshake_count(), 0);
    assert_eq!(
        request(&mut front, &mut dev, 50, 1),
        vec![vec![0x40, 1, 0, 1]]
    );
    let stats = front.stats();
    assert_eq!((stats.hello_verifies, stats.connected), (1, 1));
}

#[test]
fn spoofed_alerts_and_fragments_do_not_end_a_devices_handshake() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let mut dev = Device::new("192.0.2.1:5000", "dev1", "dev1-secret-key", epoch, 0);
    let target = dev.addr;
    let mut spoofed = 0;
    let done = run(&mut front, &mut dev, epoch, 0, |front, now_ms| {
        if front.handshake_count() == 0 {
            return;
        }
        // A plaintext fatal alert, then eight one-byte fragments of a
        // future message, thirty times over: what the attack sends.
        front.receive(
            target,
            now_ms,
            &[21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 2, 40],
        );
        // ChangeCipherSpecs (they would wait in the engine's queue) and
        // encrypted garbage (it would use up the handshake's datagrams).
        for seq in 0..10u8 {
            let ccs = [20, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 100 + seq, 0, 1, 1];
            front.receive(target, now_ms, &ccs);
        }
        for seq in 0..25u8 {
            let mut garbage = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, seq, 0, 30];
            garbage.extend_from_slice(&[seq; 30]);
            front.receive(target, now_ms, &garbage);
        }
        for _ in 0..30 {
            let mut datagram = Vec::new();
            for offset in 0..8u8 {
                datagram.extend_from_slice(&[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 13]);
                datagram.extend_from_slice(&[16, 0, 0, 100, 0, 2, 0, 0, offset, 0, 0, 1, 0x55]);
            }
            assert_eq!(front.receive(target, now_ms, &datagram), Handled::Ignored);
            spoofed += 1;
        }
    });
    assert!(spoofed >= 30, "the spoofer never met a half-open handshake");
    assert!(done, "the device did not finish its handshake");
    assert!(dev.alerts.is_empty());
}

#[test]
fn a_wrong_key_gets_decrypt_error_and_an_unknown_identity_unknown_psk_identity() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let mut wrong = Device::new("192.0.2.1:5000", "dev1", "not-the-key", epoch, 0);
    assert!(!run(&mut front, &mut wrong, epoch, 0, |_, _| {}));
    assert_eq!(wrong.alerts, [51]);
    let mut stranger = Device::new("192.0.2.2:5000", "stranger", "dev1-secret-key", epoch, 0);
    assert!(!run(&mut front, &mut stranger, epoch, 0, |_, _| {}));
    assert_eq!(stranger.alerts, [115]);
    assert_eq!(front.session_count(), 0);
    assert_eq!(front.stats().alerts, 2);
}

#[test]
fn half_open_handshakes_are_capped_per_source_and_never_evict_sessions() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let mut devices = four_established(&mut front, epoch);
    // One host, many ports, every cookie exchange completed.
    for port in 0..40u16 {
        let from = SocketAddr::new(IpAddr::from([203, 0, 113, 9]), 40_000 + port);
        let hello = cookie_hello(&mut front, from, port as u8, 100);
        assert_eq!(front.receive(from, 100, &hello), Handled::Started);
        let _ = front.take_outgoing();
    }
    assert_eq!(front.handshake_count(), 4, "per-source cap");
    // Another IPv6 host's /64 is one source, however many addresses.
    for host in 0..40u16 {
        let from = SocketAddr::new(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, host + 1]), 5683);
        let hello = cookie_hello(&mut front, from, host as u8, 100);
        front.receive(from, 100, &hello);
        let _ = front.take_outgoing();
    }
    assert_eq!(front.handshake_count(), 8, "per-/64 cap");
    // Many sources: the overall cap, the oldest ending first.
    for host in 0..8u8 {
        for port in 0..4u16 {
            let from = SocketAddr::new(IpAddr::from([203, 0, 113, 100 + host]), 40_000 + port);
            let hello = cookie_hello(&mut front, from, host * 4 + port as u8, 150);
            front.receive(from, 150, &hello);
            let _ = front.take_outgoing();
        }
    }
    assert_eq!(front.handshake_count(), 16, "overall cap");
    assert!(front.stats().handshakes_evicted >= 36 + 36 + 16);
    // Every established session is still there and still answers.
    for (i, dev) in devices.iter_mut().enumerate() {
        assert_eq!(request(&mut front, dev, 200, i as u8).len(), 1);
    }
    assert_eq!(front.stats().sessions_evicted, 0);
    // A device from elsewhere still gets in, the oldest attacker out.
    let mut late = Device::new("192.0.2.50:5000", "dev1", "dev1-secret-key", epoch, 300);
    assert!(run(&mut front, &mut late, epoch, 300, |_, _| {}));
}

#[test]
fn a_session_is_replaced_only_by_a_finished_handshake() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let mut first = Device::new("192.0.2.1:5000", "dev1", "dev1-secret-key", epoch, 0);
    assert!(run(&mut front, &mut first, epoch, 0, |_, _| {}));
    // A second handshake from the same address and port that stops after
    // the cookie exchange (a spoofer that can receive there, or a
    // client that gave up).
    let hello = cookie_hello(&mut front, first.addr, 99, 100);
    assert_eq!(front.receive(first.addr, 100, &hello), Handled::Started);
    let _ = front.take_outgoing();
    assert_eq!(front.handshake_count(), 1);
    assert_eq!(
        request(&mut front, &mut first, 150, 7),
        vec![vec![0x40, 1, 0, 7]]
    );
    // It times out; the first session stays.
    front.on_timers(100 + HANDSHAKE_TIMEOUT_MS);
    assert_eq!(front.handshake_count(), 0);
    assert_eq!(request(&mut front, &mut first, 20_000, 8).len(), 1);
    // The device restarts and finishes a new handshake: that replaces it.
    let mut again = Device::new("192.0.2.1:5000", "dev2", "other-key", epoch, 21_000);
    assert!(run(&mut front, &mut again, epoch, 21_000, |_, _| {}));
    assert_eq!(front.identity(again.addr), Some(&b"dev2"[..]));
    assert_eq!(front.session_count(), 1);
    assert!(request(&mut front, &mut first, 21_100, 9).is_empty());
    assert_eq!(request(&mut front, &mut again, 21_200, 10).len(), 1);
}

#[test]
fn an_idle_session_ends_with_close_notify_and_a_busy_one_stays() {
    let epoch = Instant::now();
    let limits = Limits {
        session_idle_ms: 10_000,
        ..limits()
    };
    let mut front = front_with(limits, epoch);
    let mut idle = Device::new("192.0.2.1:5000", "dev1", "dev1-secret-key", epoch, 0);
    let mut busy = Device::new("192.0.2.2:5000", "dev2", "other-key", epoch, 0);
    assert!(run(&mut front, &mut idle, epoch, 0, |_, _| {}));
    assert!(run(&mut front, &mut busy, epoch, 0, |_, _| {}));
    let _ = front.take_outgoing();
    for second in 1..=15u64 {
        let now_ms = second * 1000;
        if front.next_timer_ms().is_some_and(|due| due <= now_ms) {
            front.on_timers(now_ms);
        }
        assert_eq!(
            request(&mut front, &mut busy, now_ms, second as u8).len(),
            1
        );
    }
    assert!(!front.has_session(idle.addr), "idle past the timeout");
    assert!(front.has_session(busy.addr));
    assert_eq!(front.stats().sessions_idle, 1);
}

#[test]
fn records_that_do_not_decrypt_do_not_keep_a_session_from_its_idle_end() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let mut dev = Device::new("192.0.2.1:5000", "dev1", "dev1-secret-key", epoch, 0);
    assert!(run(&mut front, &mut dev, epoch, 0, |_, _| {}));
    for at in [30_000u64, 55_000] {
        let mut garbage = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 77, 0, 30];
        garbage.extend_from_slice(&[7; 30]);
        front.receive(dev.addr, at, &garbage);
        assert!(front.take_requests().is_empty());
    }
    front.on_timers(61_000);
    assert!(!front.has_session(dev.addr), "kept alive by a spoofer");
}

#[test]
fn a_full_table_evicts_the_least_recently_used_session_for_a_new_one() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let mut devices = four_established(&mut front, epoch);
    // Device 0 is used last; device 1 is the least recently used.
    for (i, dev) in devices.iter_mut().enumerate() {
        let order = [4, 0, 1, 2][i];
        assert_eq!(request(&mut front, dev, 100 + order, i as u8).len(), 1);
    }
    let mut newcomer = Device::new("192.0.2.9:5000", "dev1", "dev1-secret-key", epoch, 200);
    assert!(run(&mut front, &mut newcomer, epoch, 200, |_, _| {}));
    // The evicted device hears close_notify (an encrypted alert).
    let evicted = devices[1].addr;
    assert!(
        newcomer
            .others
            .iter()
            .any(|(to, r)| *to == evicted && r.starts_with(&[21, 0xfe, 0xfd, 0, 1])),
        "the evicted session got no close_notify"
    );
    assert!(!front.has_session(devices[1].addr));
    for i in [0, 2, 3] {
        assert!(front.has_session(devices[i].addr), "device {i}");
    }
    assert_eq!(front.stats().sessions_evicted, 1);
}

#[test]
fn a_half_open_handshake_ends_after_twenty_datagrams_that_do_not_finish_it() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let from = addr("192.0.2.1:5000");
    let hello = cookie_hello(&mut front, from, 5, 0);
    assert_eq!(front.receive(from, 0, &hello), Handled::Started);
    // The cookie-bearing hello again and again: the engine's retransmission,
    // each answered, until the budget is spent.
    let mut answered = 0;
    for i in 0..40 {
        let _ = front.take_outgoing();
        if front.receive(from, 1 + i, &hello) == Handled::Failed {
            break;
        }
        answered += 1;
    }
    assert_eq!(answered, usize::from(HANDSHAKE_DATAGRAMS_MAX));
    assert_eq!(front.handshake_count(), 0);
}

#[test]
fn timers_cost_one_heap_entry_per_peer_whatever_the_traffic() {
    let epoch = Instant::now();
    let mut front = front_with(limits(), epoch);
    let mut dev = Device::new("192.0.2.1:5000", "dev1", "dev1-secret-key", epoch, 0);
    assert!(run(&mut front, &mut dev, epoch, 0, |_, _| {}));
    for i in 0..500u64 {
        request(&mut front, &mut dev, 100 + i, i as u8);
    }
    assert!(
        front.timers.len() <= 4,
        "{} heap entries",
        front.timers.len()
    );
}

/// A ClientHello offering TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 with
/// the extended master secret, P-256, ECDSA-SHA256 and, asking for raw
/// public keys both ways, the certificate type extensions.
fn raw_key_hello(cookie: &[u8], seq: u16, record_seq: u8, random: u8) -> Vec<u8> {
    let extensions: [(u16, &[u8]); 5] = [
        (23, &[]),
        (10, &[0, 2, 0, 23]),
        (13, &[0, 2, 4, 3]),
        (19, &[1, 2]),
        (20, &[1, 2]),
    ];
    crate::dtls::hello::tests::hello_offering(cookie, seq, record_seq, random, 0xc02b, &extensions)
}

/// A P-256 key pair from the scalar `[n; 32]`, as the engine takes it.
fn raw_key(n: u8) -> crate::dtls::CertifiedKey {
    let key = p256::ecdsa::SigningKey::from_slice(&[n; 32]).expect("scalar");
    let pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, Default::default()).expect("pem");
    crate::dtls::server_key_from_pem(&pem).expect("key pair")
}

/// A device with the raw key `[n; 32]`, expecting the server key of
/// [`raw_key_front`].
fn raw_key_device(address: &str, n: u8, epoch: Instant, start_ms: u64) -> Device {
    let credentials = ClientCredentials::RawPublicKey {
        own: raw_key(n),
        server: crate::dtls::fingerprint(raw_key(9).certificate()),
    };
    Device::with(address, &credentials, epoch, start_ms)
}

/// A front of `limits` serving raw public keys too (the key `[9; 32]`),
/// listing the device key `[8; 32]` as `mote`, for DEV only; and the
/// server's key.
fn raw_key_front(limits: Limits, epoch: Instant) -> (Front, crate::dtls::CertifiedKey) {
    let server = raw_key(9);
    let listed = crate::dtls::fingerprint(raw_key(8).certificate());
    let hex: String = listed.iter().map(|b| format!("{b:02x}")).collect();
    let clients =
        crate::dtls::RawPublicKeys::parse(&format!("mote:DEV sha256:{hex}\n")).expect("list");
    let front = front_with(limits, epoch)
        .with_raw_public_keys(crate::dtls::RawKeyAuth::new(server.clone(), clients))
        .expect("raw keys");
    (front, server)
}

/// The cookie-bearing raw key hello from `from`, after its cookie
/// exchange at `now_ms`.
fn raw_key_cookie_hello(front: &mut Front, from: SocketAddr, random: u8, now_ms: u64) -> Vec<u8> {
    let first = raw_key_hello(&[], 0, 0, random);
    assert_eq!(front.receive(from, now_ms, &first), Handled::HelloVerify);
    let out = front.take_outgoing();
    raw_key_hello(&out[0].1[28..60], 1, 1, random)
}

#[test]
fn public_key_handshakes_start_at_most_so_many_a_second_and_psk_ones_are_not_held() {
    let epoch = Instant::now();
    let limits = Limits {
        public_key_handshakes_per_s: 3,
        ..limits()
    };
    let (mut front, _) = raw_key_front(limits, epoch);
    let source = |n: u8| SocketAddr::new(IpAddr::from([198, 51, 100, n]), 6000);
    let mut handled = Vec::new();
    for n in 0..5u8 {
        let hello = raw_key_cookie_hello(&mut front, source(n), n, 100);
        handled.push(front.receive(source(n), 100, &hello));
        let _ = front.take_outgoing();
    }
    assert_eq!(
        handled.iter().filter(|h| **h == Handled::Started).count(),
        3
    );
    assert_eq!(front.stats().deferred, 2);
    // A PSK hello in the same second still starts.
    let psk = cookie_hello(&mut front, source(9), 9, 500);
    assert_eq!(front.receive(source(9), 500, &psk), Handled::Started);
    let _ = front.take_outgoing();
    // The next second, the held-back client's retransmission starts.
    let hello = raw_key_cookie_hello(&mut front, source(4), 4, 1_100);
    assert_eq!(front.receive(source(4), 1_100, &hello), Handled::Started);
}

#[test]
fn raw_key_hellos_pass_the_same_cookie_and_caps_as_psk_ones() {
    let epoch = Instant::now();
    let (mut front, server) = raw_key_front(limits(), epoch);
    let mut devices = four_established(&mut front, epoch);
    for port in 0..12u16 {
        let from = SocketAddr::new(IpAddr::from([203, 0, 113, 9]), 40_000 + port);
        let first = raw_key_hello(&[], 0, 0, port as u8);
        // No cookie: a HelloVerifyRequest no larger than the hello, and
        // nothing kept.
        assert_eq!(front.receive(from, 100, &first), Handled::HelloVerify);
        let out = front.take_outgoing();
        assert_eq!(out.len(), 1);
        assert!(out[0].1.len() <= first.len());
        assert!(!front.has_session(from));
        // A cookie that is not this hello's opens nothing either.
        let forged = raw_key_hello(&[0x55; 32], 1, 1, port as u8);
        assert_eq!(front.receive(from, 100, &forged), Handled::HelloVerify);
        let _ = front.take_outgoing();
        assert!(!front.has_session(from));
        let cookie = out[0].1[28..60].to_vec();
        let second = raw_key_hello(&cookie, 1, 1, port as u8);
        assert_eq!(front.receive(from, 100, &second), Handled::Started);
        // The server's flight carries its public key as its Certificate.
        let flight: Vec<u8> = front
            .take_outgoing()
            .into_iter()
            .flat_map(|(_, r)| r)
            .collect();
        assert!(
            flight
                .windows(server.certificate.len())
                .any(|w| w == server.certificate.as_slice()),
            "no raw public key in the server's flight"
        );
    }
    assert_eq!(front.handshake_count(), 4, "per-source cap");
    for (i, dev) in devices.iter_mut().enumerate() {
        assert_eq!(request(&mut front, dev, 200, i as u8).len(), 1);
    }
    assert_eq!(front.stats().sessions_evicted, 0);
}

#[test]
fn a_raw_key_session_is_authorized_by_its_name_and_ends_idle_like_a_psk_one() {
    let epoch = Instant::now();
    let limits = Limits {
        session_idle_ms: 10_000,
        ..limits()
    };
    let (mut front, _) = raw_key_front(limits, epoch);
    let mut mote = raw_key_device("192.0.2.1:5000", 8, epoch, 0);
    assert!(run(&mut front, &mut mote, epoch, 0, |_, _| {}));
    assert_eq!(front.identity(mote.addr), Some(&b"mote"[..]));
    let authorization = front.authorization(mote.addr).expect("a session");
    assert!(authorization.allows(b"DEV") && !authorization.allows(b"OTHER"));
    assert_eq!(request(&mut front, &mut mote, 100, 1).len(), 1);
    // A key not on the list: access_denied, no session.
    let mut stranger = raw_key_device("192.0.2.2:5000", 7, epoch, 200);
    assert!(!run(&mut front, &mut stranger, epoch, 200, |_, _| {}));
    assert_eq!(stranger.alerts, [49]);
    assert!(!front.has_session(stranger.addr));
    // Silent for the idle time: ended, with close_notify.
    front.on_timers(10_100);
    assert!(!front.has_session(mote.addr), "idle past the timeout");
    assert_eq!(front.stats().sessions_idle, 1);
}

#[test]
fn a_new_raw_key_list_renames_listed_sessions_and_ends_the_others() {
    let epoch = Instant::now();
    let (mut front, _) = raw_key_front(limits(), epoch);
    let mut mote = raw_key_device("192.0.2.1:5000", 8, epoch, 0);
    assert!(run(&mut front, &mut mote, epoch, 0, |_, _| {}));
    let mut psk = Device::new("192.0.2.9:5000", "dev1", "dev1-secret-key", epoch, 0);
    assert!(run(&mut front, &mut psk, epoch, 0, |_, _| {}));
    let _ = front.take_outgoing();
    let print = crate::dtls::fingerprint(raw_key(8).certificate());
    let hex: String = print.iter().map(|b| format!("{b:02x}")).collect();
    let renamed =
        crate::dtls::RawPublicKeys::parse(&format!("mote-b:OTHER sha256:{hex}\n")).expect("list");
    assert_eq!(front.replace_raw_keys(renamed), 0);
    assert_eq!(front.identity(mote.addr), Some(&b"mote-b"[..]));
    let authorization = front.authorization(mote.addr).expect("session");
    assert!(authorization.allows(b"OTHER") && !authorization.allows(b"DEV"));
    // Its key gone: the session ends with close_notify; PSK sessions stay.
    assert_eq!(
        front.replace_raw_keys(crate::dtls::RawPublicKeys::default()),
        1
    );
    assert!(!front.has_session(mote.addr));
    assert!(front.take_outgoing().iter().any(|(to, _)| *to == mote.addr));
    assert!(front.has_session(psk.addr));
}
