//! Rollouts and reports (README, "Rollouts and reports") over real
//! sockets: staged rollouts by share and canary, pause, the automatic
//! pause and its survival across a restart, reports from libcoap and
//! aiocoap, inference without reports, `/status` access from another
//! network namespace, deltas with detools, and the memory bound under a
//! flood of names.

mod support;

use coap_lite::{MessageClass, Packet, RequestType, ResponseType};
use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::coap::con_request;
use support::{
    image_bytes, image_id, launched, require_program, run_bounded, spawn_server, NetnsPair,
    TempDir, TestServer, CLIENT_BIN,
};

const IMAGE: &str = "FLEET_1_0_2_APP.fmu";
const IMAGE_LEN: usize = 5000;
const URI_PATH: u16 = 11;
const CONTENT_FORMAT: u16 = 12;
const URI_QUERY: u16 = 15;
const ACCEPT: u16 = 17;
const BLOCK2: u16 = 23;

/// A client socket and a message ID counter.
struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    mid: u16,
}

/// A decoded answer.
struct Answer {
    code: MessageClass,
    payload: Vec<u8>,
    block_more: bool,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    fn is(&self, code: ResponseType) -> bool {
        self.code == MessageClass::Response(code)
    }
}

impl Client {
    fn new(server: &TestServer) -> Client {
        Client {
            socket: support::client_socket(server.addr),
            server: server.addr,
            mid: 1,
        }
    }

    /// One request: `uri` is `seg/seg?q&q`; options as numbers and values
    /// beyond path and query, in ascending order.
    fn call(
        &mut self,
        method: RequestType,
        uri: &str,
        extra: &[(u16, Vec<u8>)],
        payload: &[u8],
    ) -> Answer {
        self.mid = self.mid.wrapping_add(1);
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let mut options: Vec<(u16, Vec<u8>)> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| (URI_PATH, s.as_bytes().to_vec()))
            .chain(
                query
                    .split('&')
                    .filter(|s| !s.is_empty())
                    .map(|q| (URI_QUERY, q.as_bytes().to_vec())),
            )
            .chain(extra.iter().cloned())
            .collect();
        options.sort_by_key(|o| o.0);
        let options: Vec<(u16, &[u8])> = options.iter().map(|(n, v)| (*n, &v[..])).collect();
        let token = self.mid.to_be_bytes();
        let request = con_request(method, self.mid, &token, &options, payload);
        let mid = self.mid;
        let raw = support::coap::exchange_until(
            &self.socket,
            self.server,
            &request,
            (5, Duration::from_secs(2)),
            |raw| {
                let p = Packet::from_bytes(raw).ok()?;
                (p.header.message_id == mid).then(|| raw.to_vec())
            },
        )
        .unwrap_or_else(|| panic!("no answer to {uri}"));
        let packet = Packet::from_bytes(&raw).expect("a CoAP answer");
        let block_more = packet
            .get_option(coap_lite::CoapOption::Block2)
            .and_then(|v| v.front().cloned())
            .is_some_and(|v| v.last().is_some_and(|b| b & 0x08 != 0));
        Answer {
            code: packet.header.code,
            payload: packet.payload,
            block_more,
        }
    }

    fn get(&mut self, uri: &str) -> Answer {
        self.call(RequestType::Get, uri, &[], &[])
    }

    fn post(&mut self, uri: &str) -> Answer {
        self.call(RequestType::Post, uri, &[], &[])
    }

    /// The lookup of `ep` running `version`: the id it is offered, if any.
    fn offered(&mut self, ep: &str, version: &str) -> Option<String> {
        let a = self.get(&format!(
            "updates?pid=FLEET&type=APP&version={version}&ep={ep}"
        ));
        if a.is(ResponseType::NotFound) {
            return None;
        }
        assert!(a.is(ResponseType::Content), "{}: {}", a.code, a.text());
        Some(a.text())
    }

    /// The whole body of `uri` block by block (1 KiB blocks).
    fn download(&mut self, uri: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for num in 0u32..64 {
            let block = vec![((num << 4) | 6) as u8];
            let block = if num < 16 {
                block
            } else {
                let v = (num << 4) | 6;
                vec![(v >> 8) as u8, v as u8]
            };
            let a = self.call(RequestType::Get, uri, &[(BLOCK2, block)], &[]);
            assert!(
                a.is(ResponseType::Content),
                "{uri} block {num}: {}",
                a.text()
            );
            body.extend_from_slice(&a.payload);
            if !a.block_more {
                return body;
            }
        }
        panic!("{uri}: more than 64 blocks");
    }

    /// `/status` or `/status?ep=NAME` as text.
    fn status(&mut self, query: &str) -> String {
        let a = self.get(&format!("status{query}"));
        assert!(a.is(ResponseType::Content), "{}: {}", a.code, a.text());
        a.text()
    }
}

/// A catalog directory with one image, FLEET 1.0.2, and optionally its
/// policy.
fn fixture(tag: &str, policy: Option<&str>) -> (TempDir, Vec<u8>) {
    let dir = TempDir::new(tag);
    let bytes = image_bytes(IMAGE_LEN, 7);
    dir.write(IMAGE, &bytes);
    if let Some(policy) = policy {
        write_policy(dir.path(), policy);
    }
    (dir, bytes)
}

/// Replaces the policy as an operator should: a new file renamed over it.
fn write_policy(dir: &Path, text: &str) {
    let tmp = dir.join(".policy.tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, dir.join(format!("{IMAGE}.rollout"))).expect("rename policy");
}

/// A server over `dir` that rescans often and admits files at once.
fn server(dir: &Path, extra: &[&str]) -> TestServer {
    let mut args = vec!["--rescan", "100", "--settle", "0"];
    args.extend_from_slice(extra);
    spawn_server(dir, "127.0.0.1:0", &args)
}

/// Waits (at most 10 s) until `/status` contains `needle`.
fn wait_status(c: &mut Client, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = c.status("");
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/status never showed {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn offered_set(c: &mut Client) -> BTreeSet<u32> {
    (1..=1000)
        .filter(|i| c.offered(&format!("d{i}"), "1.0.1").is_some())
        .collect()
}

#[test]
fn percent_canary_and_pause_stage_a_rollout() {
    let (dir, bytes) = fixture("fleet-stage", Some("percent = 10\ncanary = lab-1 lab-2\n"));
    let first = {
        let s = server(dir.path(), &[]);
        let mut c = Client::new(&s);
        let set = offered_set(&mut c);
        assert!(
            (70..=130).contains(&set.len()),
            "percent = 10 offered {} of 1000",
            set.len()
        );
        assert!(c.offered("lab-1", "1.0.1").is_some());
        assert!(c.offered("lab-2", "1.0.1").is_some());
        // The same set on every run.
        assert_eq!(offered_set(&mut c), set);
        set
    };
    // And after a restart.
    let s = server(dir.path(), &[]);
    let mut c = Client::new(&s);
    assert_eq!(offered_set(&mut c), first);
    // Raising the share keeps every device and adds more.
    write_policy(dir.path(), "percent = 50\ncanary = lab-1 lab-2\n");
    wait_status(&mut c, "50% of devices");
    let half = offered_set(&mut c);
    assert!(
        half.is_superset(&first),
        "raising the share dropped devices"
    );
    assert!((400..=600).contains(&half.len()), "{}", half.len());
    // A download begun before a pause completes, byte-exact: lab-1's,
    // named by its lookup from the same address.
    let id = c.offered("lab-1", "1.0.1").expect("a canary is offered");
    assert_eq!(id, image_id(IMAGE));
    let a = c.call(
        RequestType::Get,
        &format!("updates/{id}"),
        &[(BLOCK2, vec![0x06])],
        &[],
    );
    assert!(a.is(ResponseType::Content) && a.block_more);
    let mut body = a.payload;
    write_policy(
        dir.path(),
        "percent = 50\ncanary = lab-1 lab-2\npause = yes\n",
    );
    wait_status(&mut c, "paused (pause = yes)");
    assert!(offered_set(&mut c).is_empty(), "paused, yet offered");
    assert!(
        c.offered("lab-2", "1.0.1").is_none(),
        "paused, yet a canary was offered"
    );
    assert!(
        c.offered("lab-1", "1.0.1").is_some(),
        "a begun download lost its offer"
    );
    for num in 1u8..=4 {
        let a = c.call(
            RequestType::Get,
            &format!("updates/{id}"),
            &[(BLOCK2, vec![(num << 4) | 6])],
            &[],
        );
        assert!(a.is(ResponseType::Content));
        body.extend_from_slice(&a.payload);
    }
    assert_eq!(body, bytes, "the begun download is not byte-exact");
}

#[test]
fn failures_pause_the_rollout_across_a_restart_until_the_file_is_edited() {
    let policy = "percent = 100\nmax-failures = 30%\nmin-outcomes = 5\n";
    let (dir, _) = fixture("fleet-auto", Some(policy));
    let state = TempDir::new("fleet-auto-state");
    let state_arg = state.path().to_str().expect("utf-8 path");
    {
        let s = server(dir.path(), &["--state-dir", state_arg]);
        let mut c = Client::new(&s);
        let report = |c: &mut Client, ep: &str, result: u8| {
            let a = c.post(&format!(
                "updates/report?ep={ep}&pid=FLEET&type=APP&target=1.0.2&result={result}"
            ));
            assert!(a.is(ResponseType::Changed), "{}: {}", a.code, a.text());
        };
        report(&mut c, "ok-1", 1);
        report(&mut c, "ok-2", 1);
        report(&mut c, "bad-1", 8);
        report(&mut c, "bad-2", 5);
        assert!(
            c.offered("new-1", "1.0.1").is_some(),
            "paused after 4 outcomes"
        );
        report(&mut c, "bad-3", 2);
        assert!(
            c.offered("new-2", "1.0.1").is_none(),
            "not paused by 3 of 5 failures"
        );
        assert!(c.status("").contains("paused (3 of 5 outcomes failed)"));
        assert!(s.wait_for_log("paused=auto successes=2 failures=3", Duration::from_secs(5)));
    }
    let s = server(dir.path(), &["--state-dir", state_arg]);
    let mut c = Client::new(&s);
    assert!(
        c.offered("new-3", "1.0.1").is_none(),
        "a restart resumed the rollout"
    );
    assert!(c.status("?ep=bad-3").contains("state failed result 2"));
    write_policy(dir.path(), &format!("{policy}# looked at the failures\n"));
    wait_status(&mut c, "; running");
    assert!(
        c.offered("new-4", "1.0.1").is_some(),
        "editing the file did not resume"
    );
    assert!(s.wait_for_log("resumed=policy-edited", Duration::from_secs(5)));
}

#[test]
fn reports_from_libcoap_and_aiocoap_show_in_status_and_bad_ones_change_nothing() {
    let (dir, _) = fixture("fleet-reports", None);
    let s = server(dir.path(), &[]);
    let mut c = Client::new(&s);
    let port = s.addr.port();
    if require_program("coap-client-notls") {
        let out = run_bounded(
            Command::new("coap-client-notls").args([
                "-m",
                "post",
                &format!(
                    "coap://127.0.0.1:{port}/updates/report?ep=libcoap-1&pid=FLEET&type=APP\
                     &version=1.0.1&target=1.0.2&state=2"
                ),
            ]),
            Duration::from_secs(20),
        );
        assert!(out.status.success(), "{out:?}");
        let status = c.status("?ep=libcoap-1");
        assert!(
            status.contains("state downloaded result 0 running 1.0.1 target 1.0.2"),
            "{status}"
        );
    }
    if require_program("aiocoap-client") {
        // {"e": "aiocoap-1", "s": 3, "v": "1.0.1"}: raw CBOR from a file,
        // as aiocoap sends it without recoding.
        let mut cbor = vec![0xa3, 0x61, b'e', 0x69];
        cbor.extend_from_slice(b"aiocoap-1");
        cbor.extend_from_slice(&[0x61, b's', 0x03, 0x61, b'v', 0x65]);
        cbor.extend_from_slice(b"1.0.1");
        let file = dir.write(".report.cbor", &cbor);
        let out = run_bounded(
            Command::new("aiocoap-client").args([
                "-m",
                "POST",
                "--content-format",
                "application/cbor",
                "--payload",
                &format!("@{}", file.display()),
                &format!("coap://127.0.0.1:{port}/updates/report"),
            ]),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{out:?}");
        let status = c.status("?ep=aiocoap-1");
        assert!(
            status.contains("state updating result 0 running 1.0.1"),
            "{status}"
        );
    }
    let before = c.status("");
    for (uri, extra, payload, code) in [
        (
            "updates/report?ep=x-1&state=7",
            vec![],
            vec![],
            ResponseType::BadRequest,
        ),
        (
            "updates/report?ep=x/1&state=1",
            vec![],
            vec![],
            ResponseType::BadRequest,
        ),
        (
            "updates/report?ep=x-1",
            vec![],
            vec![],
            ResponseType::BadRequest,
        ),
        (
            "updates/report",
            vec![(CONTENT_FORMAT, vec![60])],
            vec![0xa1, 0x61, b's', 0x20],
            ResponseType::BadRequest,
        ),
        (
            "updates/report?ep=x-1&state=1",
            vec![(CONTENT_FORMAT, vec![50])],
            b"{}".to_vec(),
            ResponseType::UnsupportedContentFormat,
        ),
    ] {
        let a = c.call(RequestType::Post, uri, &extra, &payload);
        assert!(a.is(code), "{uri}: {} {}", a.code, a.text());
        assert!(!a.payload.is_empty(), "{uri}: no diagnostic");
    }
    assert_eq!(c.status(""), before, "a malformed report changed the view");
    assert!(c.get("status?ep=x-1").is(ResponseType::NotFound));
}

#[test]
fn a_download_then_a_lookup_on_the_new_version_counts_as_updated_without_a_report() {
    let (dir, bytes) = fixture("fleet-infer", None);
    let s = server(dir.path(), &[]);
    let mut c = Client::new(&s);
    let id = c.offered("quiet-1", "1.0.1").expect("offered");
    assert!(c.status("?ep=quiet-1").contains("state offered"));
    // Five 1 KiB blocks: the middle ones take the fast path.
    let body = c.download(&format!("updates/{id}"));
    assert_eq!(body, bytes);
    let status = c.status("?ep=quiet-1");
    assert!(
        status.contains("state downloaded result 0 (inferred)"),
        "{status}"
    );
    assert!(c.offered("quiet-1", "1.0.2").is_none());
    let status = c.status("?ep=quiet-1");
    assert!(
        status.contains("state updated result 1 (inferred)"),
        "{status}"
    );
    assert!(c.status("").contains("updated 1 failed 0"));
    let json = c.call(RequestType::Get, "status", &[(ACCEPT, vec![50])], &[]);
    assert!(
        json.text().contains("\"updated\":1,\"failed\":0"),
        "{}",
        json.text()
    );
    assert!(s.wait_for_log(
        "fleet device=quiet-1 state=updated result=1 running=1.0.2",
        Duration::from_secs(5)
    ));
}

/// `iot-ota-client --get /status` from the client's namespace: its exit
/// status and output.
fn status_from_client_ns(pair: &NetnsPair, server: &str) -> (bool, String) {
    let out = run_bounded(
        launched(&pair.in_client(), CLIENT_BIN).args([server, "--get", "/status"]),
        support::NETNS_RUN_LIMIT,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn status_is_refused_from_a_non_local_address_unless_opened() {
    if !support::can_make_namespaces() {
        return;
    }
    let (dir, _) = fixture("fleet-netns", None);
    let pair = NetnsPair::new("fleet", &["10.77.0.1/24"], &["10.77.0.2/24"]);
    for (extra, open) in [
        (&[][..], false),
        (&["--status-from", "10.77.0.0/24"][..], true),
    ] {
        let s = support::spawn_server_via(&pair.in_server(), dir.path(), "0.0.0.0:5683", extra);
        let (ok, text) = status_from_client_ns(&pair, "10.77.0.1:5683");
        assert_eq!(ok, open, "--status-from {open}: {text}\n{}", s.log());
        if open {
            assert!(text.contains(IMAGE), "{text}");
        } else {
            assert!(text.contains("4.03"), "{text}");
        }
        // From the server's own loopback it is always open.
        let local = run_bounded(
            launched(&pair.in_server(), CLIENT_BIN).args(["127.0.0.1:5683", "--get", "/status"]),
            support::NETNS_RUN_LIMIT,
        );
        assert!(local.status.success(), "{local:?}");
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("state dir")
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The stated bounds (src/fleet/README.md, "Bounds"): 10,000 devices grow
/// the server by 5.5 MiB as measured, held under 8 MiB here; the state
/// directory stays under the journal's 4 MiB compaction bound plus one
/// compacted copy.
const RSS_GROWTH_BOUND_KIB: u64 = 8 * 1024;
const STATE_DIR_BOUND: u64 = (4 << 20) + (2 << 20);

#[test]
fn a_flood_of_random_names_stays_within_the_memory_and_state_bounds() {
    let (dir, _) = fixture("fleet-flood", Some("percent = 50\n"));
    let state = TempDir::new("fleet-flood-state");
    let s = server(
        dir.path(),
        &["--state-dir", state.path().to_str().expect("utf-8"), "-q"],
    );
    let socket = support::client_socket(s.addr);
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let start_rss = support::rss_kib(s.pid());
    let mut rng = support::XorShift::seeded(42);
    let mut answered = 0u32;
    const TOTAL: u32 = 100_000;
    const BATCH: u32 = 32;
    let mut peak = start_rss;
    let started = Instant::now();
    for batch in 0..TOTAL / BATCH {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the flood took over 2 minutes: {answered} answers after {batch} batches"
        );
        for i in 0..BATCH {
            let n = batch * BATCH + i;
            let name = format!("r{:08x}{:08x}", rng.next(), rng.next());
            let mid = n as u16;
            let (method, query): (RequestType, Vec<String>) = if n % 2 == 0 {
                (
                    RequestType::Get,
                    vec![
                        "pid=FLEET".into(),
                        "type=APP".into(),
                        "version=1.0.1".into(),
                        format!("ep={name}"),
                    ],
                )
            } else {
                (
                    RequestType::Post,
                    vec![
                        format!("ep={name}"),
                        "pid=FLEET".into(),
                        "type=APP".into(),
                        "target=1.0.2".into(),
                        format!("result={}", 1 + (n % 9)),
                    ],
                )
            };
            let path: &[&str] = if n % 2 == 0 {
                &["updates"]
            } else {
                &["updates", "report"]
            };
            let mut options: Vec<(u16, &[u8])> =
                path.iter().map(|p| (URI_PATH, p.as_bytes())).collect();
            options.extend(query.iter().map(|q| (URI_QUERY, q.as_bytes())));
            let request = con_request(method, mid, &[], &options, &[]);
            socket.send_to(&request, s.addr).expect("send");
        }
        let mut buf = [0u8; 1500];
        for _ in 0..BATCH {
            if socket.recv_from(&mut buf).is_ok() {
                answered += 1;
            }
        }
        if batch % 500 == 0 {
            peak = peak.max(support::rss_kib(s.pid()));
        }
    }
    let end_rss = support::rss_kib(s.pid());
    peak = peak.max(end_rss);
    let state_bytes = dir_bytes(state.path());
    println!(
        "flood: {answered} of {TOTAL} answered; RSS {start_rss} KiB at start, {end_rss} KiB \
         after, {peak} KiB peak; state directory {state_bytes} bytes"
    );
    assert!(answered > TOTAL * 9 / 10, "only {answered} answers");
    assert!(
        peak.saturating_sub(start_rss) <= RSS_GROWTH_BOUND_KIB,
        "RSS grew by {} KiB",
        peak - start_rss
    );
    assert!(
        state_bytes <= STATE_DIR_BOUND,
        "state dir {state_bytes} bytes"
    );
    let status = Client::new(&s).status("");
    assert!(status.contains("devices known: 10000"), "{status}");
}

#[test]
fn a_detools_delta_goes_to_its_base_version_and_rebuilds_the_image() {
    if !require_program("detools") {
        return;
    }
    let dir = TempDir::new("fleet-delta");
    let work = TempDir::new("fleet-delta-work");
    // The release: the base with a few hundred bytes changed.
    let base = image_bytes(IMAGE_LEN, 3);
    let mut release = base.clone();
    release[1000..1300].copy_from_slice(&image_bytes(300, 4));
    dir.write(IMAGE, &release);
    let base_file = work.write("base.bin", &base);
    let release_file = work.write("release.bin", &release);
    let patch_name = format!("{IMAGE}.from-1.0.1.detools");
    let patch_file = work.path().join(&patch_name);
    let out = run_bounded(
        Command::new("detools").args([
            "create_patch".as_ref(),
            base_file.as_os_str(),
            release_file.as_os_str(),
            patch_file.as_os_str(),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{out:?}");
    // Published beside the image: written aside, renamed into place.
    std::fs::copy(&patch_file, dir.path().join(".patch.tmp")).expect("copy");
    std::fs::rename(dir.path().join(".patch.tmp"), dir.path().join(&patch_name)).expect("rename");
    let s = server(dir.path(), &[]);
    let mut c = Client::new(&s);
    let patch_id = image_id(&patch_name);
    let a = c.get("updates?pid=FLEET&type=APP&version=1.0.1&delta=detools&ep=delta-1");
    assert_eq!(a.text(), format!("{patch_id};delta=detools;base=1.0.1"));
    let patch = c.download(&format!("updates/{patch_id}"));
    assert!(patch.len() < release.len() / 2, "{} bytes", patch.len());
    let got = work.write("got.patch", &patch);
    let rebuilt = work.path().join("rebuilt.bin");
    let out = run_bounded(
        Command::new("detools").args([
            "apply_patch".as_ref(),
            base_file.as_os_str(),
            got.as_os_str(),
            rebuilt.as_os_str(),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&rebuilt).expect("rebuilt"), release);
    // The patch's download counts for its image.
    assert!(c.status("?ep=delta-1").contains("state downloaded"));
    // Another base, or no delta asked: the full image.
    for query in ["version=1.0.0&delta=detools", "version=1.0.1"] {
        let a = c.get(&format!("updates?pid=FLEET&type=APP&{query}&ep=delta-2"));
        assert_eq!(a.text(), image_id(IMAGE), "{query}");
    }
    let links = c.get(".well-known/core?rt=fw.patch").text();
    assert!(
        links.contains(&format!("</updates/{patch_id}>;rt=\"fw.patch\""))
            && links.contains("base=\"1.0.1\""),
        "{links}"
    );
}

#[test]
fn an_observer_of_status_hears_of_a_new_device() {
    let (dir, _) = fixture("fleet-observe", None);
    let s = server(dir.path(), &[]);
    let observer = support::client_socket(s.addr);
    let register = con_request(
        RequestType::Get,
        7,
        b"obs",
        &[(6, &[]), (URI_PATH, b"status")],
        &[],
    );
    let first = support::exchange(&observer, s.addr, &register).expect("an answer");
    let first = Packet::from_bytes(&first).expect("CoAP");
    assert!(
        first.get_option(coap_lite::CoapOption::Observe).is_some(),
        "not registered: {:?}",
        String::from_utf8_lossy(&first.payload)
    );
    assert!(first.payload.starts_with(b"devices known: 0"));
    let mut c = Client::new(&s);
    assert!(c.offered("watched-1", "1.0.1").is_some());
    // The notification comes within a rescan period (100 ms here).
    let raw = support::coap::receive_from(&observer, s.addr, Duration::from_secs(5))
        .expect("no notification within 5 s");
    let n = Packet::from_bytes(&raw).expect("CoAP");
    assert_eq!(n.get_token(), b"obs");
    assert!(
        n.payload.starts_with(b"devices known: 1"),
        "{:?}",
        n.payload
    );
}
