//! Several server processes on one port (`--reuse-port`, SO_REUSEPORT):
//! the kernel hands each peer (source address and port) to one process,
//! so every request form, the continuations that rely on what one
//! process remembers of a peer included, downloads byte for byte from
//! many source ports; with a shared `--echo-key-file`, an Echo value one
//! process made is honoured by the other.

mod support;

use iot_ota::wire::{Block, Message};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use support::coap::{con_get_options, exchange_until};
use support::{client_socket, device_payload, spawn_server, write_images, TempDir, TestServer};

/// 2.05 Content.
const CONTENT: u8 = 0x45;
/// 4.01 Unauthorized, the Echo challenge.
const UNAUTHORIZED: u8 = 0x81;
/// Firmware type APP.
const APP: u8 = 3;
/// The devices run 1.0.0; the images are 1.0.1.
const VERSION_1_0_0: u32 = 1 << 24;
/// 256-byte blocks: several blocks per download.
const SZX_256: u8 = 4;
/// The image: 20 blocks of 256 bytes and a bit.
const IMAGE_LEN: usize = 5_000;
/// Where the resumed forms start.
const OFFSET: u32 = 777;
/// Source ports (client sockets) per request form and family.
const PORTS_PER_FORM: usize = 6;
/// Fresh source ports tried to reach the other process.
const MAX_PORTS_TRIED: usize = 64;

/// The two servers of a pair, and the port they share.
struct Pair {
    servers: [TestServer; 2],
    addr: SocketAddr,
}

/// Two servers over `dir` on one port of `loopback` (`127.0.0.1` or
/// `[::1]`), both with `--reuse-port` and `extra`: the first takes an
/// ephemeral port, the second binds the same one.
fn pair(dir: &TempDir, loopback: &str, extra: &[&str]) -> Pair {
    let mut args = vec!["--reuse-port"];
    args.extend_from_slice(extra);
    let first = spawn_server(dir.path(), &format!("{loopback}:0"), &args);
    let addr = first.addr;
    let second = spawn_server(dir.path(), &addr.to_string(), &args);
    assert_eq!(second.addr, addr, "both listen on one port");
    Pair {
        servers: [first, second],
        addr,
    }
}

/// One reply, decoded.
struct Reply {
    code: u8,
    block: Option<Block>,
    echo: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// A client with its own source port.
struct Peer {
    socket: UdpSocket,
    server: SocketAddr,
    mid: u16,
}

impl Peer {
    fn new(server: SocketAddr) -> Peer {
        Peer {
            socket: client_socket(server),
            server,
            mid: 0x3000,
        }
    }

    /// The source address the server sees.
    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("client address")
    }

    /// GET `path` (`/`-separated) with `queries`, Block2 `num` at 256
    /// bytes when given, `echo`, and `payload`; the reply to this Message
    /// ID (retransmitted up to 3 times).
    fn get(
        &mut self,
        path: &str,
        queries: &[&str],
        num: Option<u32>,
        echo: Option<&[u8]>,
        payload: &[u8],
    ) -> Reply {
        self.mid = self.mid.wrapping_add(1);
        let mut block_value = [0u8; 4];
        let mut options: Vec<(u16, &[u8])> = path.split('/').map(|s| (11, s.as_bytes())).collect();
        options.extend(queries.iter().map(|q| (15, q.as_bytes())));
        if let Some(num) = num {
            let block = Block {
                num,
                more: false,
                szx: SZX_256,
            };
            options.push((23, block.encode(&mut block_value)));
        }
        if let Some(echo) = echo {
            options.push((252, echo));
        }
        let request = con_get_options(self.mid, &[0x7e, 0x57], &options, payload);
        let mid = self.mid;
        exchange_until(
            &self.socket,
            self.server,
            &request,
            (3, Duration::from_secs(1)),
            |raw| {
                let msg = Message::parse(raw).ok().filter(|m| m.mid == mid)?;
                Some(Reply {
                    code: msg.code,
                    block: msg.block2.and_then(Result::ok),
                    echo: msg.echo.map(<[u8]>::to_vec),
                    payload: msg.payload.to_vec(),
                })
            },
        )
        .unwrap_or_else(|| panic!("no reply from {} to GET /{path}", self.server))
    }

    /// A whole body block by block: `ask(peer, num)` asks for block
    /// `num`; at most `IMAGE_LEN / 16` blocks.
    fn body(&mut self, what: &str, mut ask: impl FnMut(&mut Peer, u32) -> Reply) -> Vec<u8> {
        let mut body = Vec::new();
        for num in 0..(IMAGE_LEN / 16) as u32 {
            let reply = ask(self, num);
            assert_eq!(
                reply.code,
                CONTENT,
                "{what}, block {num} from {}",
                self.addr()
            );
            body.extend_from_slice(&reply.payload);
            if !reply.block.is_some_and(|b| b.more) {
                return body;
            }
        }
        panic!("{what}: the body did not end");
    }

    /// The id a lookup form answers.
    fn id(&mut self, path: &str, queries: &[&str], payload: &[u8]) -> String {
        let reply = self.get(path, queries, None, None, payload);
        assert_eq!(reply.code, CONTENT, "lookup from {}", self.addr());
        String::from_utf8(reply.payload).expect("the id is text")
    }
}

/// The `received N` counter of a final stats line.
fn received(stats: &str) -> u64 {
    stats
        .split("received ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no received counter in {stats:?}"))
}

#[test]
fn two_processes_on_one_port_serve_every_form_byte_exact_from_many_source_ports() {
    let dir = TempDir::new("reuse-port");
    let image = write_images(&dir, &[("SHARED", IMAGE_LEN)]).remove(0);
    let whole = image.bytes.as_slice();
    let resumed = &image.bytes[OFFSET as usize..];
    let pid = image.pid.as_str();
    let lookup = device_payload(pid, APP, VERSION_1_0_0, None);
    let legacy = device_payload(pid, APP, VERSION_1_0_0, Some(OFFSET));
    let offset = OFFSET.to_le_bytes();
    let offset_query = format!("offset={OFFSET}");
    let by_id = format!("updates/{}", image.id);
    let listing = format!(
        "</updates>;rt=\"fw.updates\",</updates/{}>;rt=\"fw.image\";ct=42;sz={IMAGE_LEN};title=\"{}\"",
        image.id, image.file_name
    );
    for loopback in ["127.0.0.1", "[::1]"] {
        let mut pair = pair(&dir, loopback, &[]);
        for _ in 0..PORTS_PER_FORM {
            let new = || Peer::new(pair.addr);
            // Lookup by payload, then the image by id.
            let mut p = new();
            let id = p.id("updates", &[], &lookup);
            assert_eq!(id, image.id);
            let body = p.body("by id", |p, n| p.get(&by_id, &[], Some(n), None, &[]));
            assert_eq!(body, whole, "by id from {}", p.addr());
            // Lookup by query.
            let query = [
                format!("pid={pid}"),
                "type=APP".into(),
                "version=1.0.0".into(),
            ];
            let query: Vec<&str> = query.iter().map(String::as_str).collect();
            assert_eq!(new().id("updates", &query, &[]), image.id);
            // OFFSET as payload on every block.
            let mut p = new();
            let body = p.body("OFFSET payload", |p, n| {
                p.get(&by_id, &[], Some(n), None, &offset)
            });
            assert_eq!(body, resumed, "OFFSET payload from {}", p.addr());
            // OFFSET as payload on block 0 only: the process remembers it.
            let mut p = new();
            let body = p.body("OFFSET once", |p, n| {
                let payload: &[u8] = if n == 0 { &offset } else { &[] };
                p.get(&by_id, &[], Some(n), None, payload)
            });
            assert_eq!(body, resumed, "OFFSET once from {}", p.addr());
            // ?offset= on every block, stateless.
            let mut p = new();
            let body = p.body("?offset=", |p, n| {
                p.get(&by_id, &[&offset_query], Some(n), None, &[])
            });
            assert_eq!(body, resumed, "?offset= from {}", p.addr());
            // Legacy: the device payload with OFFSET on every block.
            let mut p = new();
            let body = p.body("legacy", |p, n| {
                p.get("updates", &[], Some(n), None, &legacy)
            });
            assert_eq!(body, resumed, "legacy from {}", p.addr());
            // Legacy payload on block 0 only, then payload-less
            // continuations: the process remembers the transfer.
            let mut p = new();
            let body = p.body("legacy continuation", |p, n| {
                let payload: &[u8] = if n == 0 { &legacy } else { &[] };
                p.get("updates", &[], Some(n), None, payload)
            });
            assert_eq!(body, resumed, "legacy continuation from {}", p.addr());
            // Discovery, block-wise.
            let mut p = new();
            let body = p.body("listing", |p, n| {
                p.get(".well-known/core", &[], Some(n), None, &[])
            });
            assert_eq!(String::from_utf8_lossy(&body), listing, "from {}", p.addr());
        }
        // 2 x 8 x PORTS_PER_FORM source ports: each process got some (the
        // chance that one got none is 2^-95).
        let counts: Vec<u64> = pair
            .servers
            .iter_mut()
            .map(|s| received(&s.stop_by_signal(libc::SIGTERM)))
            .collect();
        assert!(
            counts.iter().all(|&n| n > 0),
            "both processes on {} serve: received {counts:?}",
            pair.addr
        );
    }
}

/// Index of the server of `pair` that logged a request from `from` (at
/// debug, `-v`), waiting up to 5 s.
fn server_of(pair: &Pair, from: SocketAddr) -> usize {
    let needle = format!("{from} ");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(index) = pair.servers.iter().position(|s| s.log().contains(&needle)) {
            return index;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no server logged a request from {from}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gets an Echo challenge for block 0 of `path` from one process of
/// `pair`, then sends the request with that Echo from fresh source ports
/// until one reaches the other process, and returns that process's reply.
fn echo_at_the_other_process(pair: &Pair, path: &str) -> Reply {
    let mut first = Peer::new(pair.addr);
    let challenge = first.get(path, &[], Some(0), None, &[]);
    assert_eq!(
        challenge.code, UNAUTHORIZED,
        "an unverified peer is challenged"
    );
    let echo = challenge
        .echo
        .expect("the challenge carries an Echo option");
    let challenger = server_of(pair, first.addr());
    for _ in 0..MAX_PORTS_TRIED {
        let mut peer = Peer::new(pair.addr);
        let reply = peer.get(path, &[], Some(0), Some(&echo), &[]);
        if server_of(pair, peer.addr()) != challenger {
            return reply;
        }
    }
    panic!("{MAX_PORTS_TRIED} source ports all reached the same process");
}

#[test]
fn an_echo_from_one_process_is_honoured_by_the_other_with_a_shared_key_file() {
    let dir = TempDir::new("reuse-port-echo");
    let image = write_images(&dir, &[("ECHOED", IMAGE_LEN)]).remove(0);
    let path = format!("updates/{}", image.id);
    let keys = TempDir::new("reuse-port-key");
    let key = keys.write("echo.key", b"0123456789abcdef0123456789ABCDEF\n");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600");
    let key_text = key.to_string_lossy().into_owned();

    let shared = pair(&dir, "127.0.0.1", &["-v", "--echo-key-file", &key_text]);
    assert!(
        shared.servers[0].log().contains("(key from "),
        "{}",
        shared.servers[0].log()
    );
    let reply = echo_at_the_other_process(&shared, &path);
    assert_eq!(reply.code, CONTENT, "the other process accepts the Echo");
    assert_eq!(reply.payload, &image.bytes[..256]);

    // The control: with a key of their own, the other process challenges
    // again.
    let own = pair(&dir, "127.0.0.1", &["-v", "--echo"]);
    let reply = echo_at_the_other_process(&own, &path);
    assert_eq!(
        reply.code, UNAUTHORIZED,
        "a key of its own refuses the Echo"
    );
}

#[test]
fn an_echo_key_file_open_to_other_users_or_of_the_wrong_size_is_refused() {
    let dir = TempDir::new("reuse-port-badkey");
    write_images(&dir, &[("KEYED", 100)]);
    let keys = TempDir::new("reuse-port-badkey-files");
    let open = keys.write("open.key", &[7u8; 16]);
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod 644");
    let short = keys.write("short.key", b"0123456789abcdef");
    std::fs::set_permissions(&short, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600");
    let short_hex = keys.write("short-hex.key", b"0123456789abcdef0123\n");
    std::fs::set_permissions(
        &short_hex,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod 600");
    for (file, expected) in [
        (
            &open,
            format!(
                "the Echo key file {} is open to other users (mode 644)",
                open.display()
            ),
        ),
        (
            &short_hex,
            format!(
                "the Echo key file {} holds 21 bytes: it must hold 16 bytes, raw or as 32 hex digits",
                short_hex.display()
            ),
        ),
        (
            &keys.path().join("absent.key"),
            format!(
                "cannot read the Echo key file {}/absent.key",
                keys.path().display()
            ),
        ),
    ] {
        let output = support::run_bounded(
            std::process::Command::new(support::SERVER_BIN)
                .arg("-d")
                .arg(dir.path())
                .args(["-l", "127.0.0.1:0", "--echo-key-file"])
                .arg(file),
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&expected), "{stderr}");
    }
    // 16 raw bytes that happen to be hex digits are a raw key.
    let server = spawn_server(
        dir.path(),
        "127.0.0.1:0",
        &["--echo-key-file", &short.to_string_lossy()],
    );
    assert!(server
        .log()
        .contains("Echo amplification check on (key from "));
}
