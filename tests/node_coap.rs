//! Interop with node-coap (npm `coap`, the library the reference server is
//! built on) as the client: tests/node/download.js downloads through the
//! legacy protocol and by id, leaving Block2 to node-coap's agent, and this
//! test compares the files it writes byte for byte with the images.
//!
//! node-coap's agent continues a Block2 body with the same token, a new
//! Message ID, Block2 NUM+1 and no payload, so every legacy download here
//! relies on the payload-less continuation of README, "Continuations without payload".
//!
//! Needs `node` and `tests/node/node_modules/coap` (installed by .ci/run
//! with `npm --prefix tests/node install`): without them the test is
//! skipped, and fails under CI=true.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{TempDir, TestImage, TestServer};

/// 4 MiB + 777 bytes: block numbers past 4095 at 1 KiB.
const BIG_LEN: usize = 4 * 1024 * 1024 + 777;
/// Version of the test images, 1.0.1.
const VERSION_1_0_1: u32 = (1 << 24) | 1;
/// Bound on one run of the script (all jobs of one family).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound the script puts on each job.
const JOB_TIMEOUT_MS: u32 = 40_000;

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("node")
}

/// node and the installed `coap` module, as `support::require_program`
/// treats a program: skip on a developer machine, fail under CI=true.
fn require_node_coap() -> bool {
    if !support::require_program("node") {
        return false;
    }
    let module = node_dir()
        .join("node_modules")
        .join("coap")
        .join("package.json");
    if module.is_file() {
        return true;
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!(
            "{} is missing under CI=true: run `npm --prefix tests/node install`",
            module.display()
        );
    }
    eprintln!("SKIPPED: node-coap not installed (run `npm --prefix tests/node install`)");
    false
}

/// One download for the script; see tests/node/download.js.
struct Job {
    name: String,
    json: String,
    /// The file it writes, and the bytes that file must hold.
    expected: Option<(PathBuf, Vec<u8>)>,
    /// The response code node-coap must report ("2.05", "0.00" for RST).
    code: &'static str,
    /// For text answers: the body.
    text: Option<String>,
}

fn szx_json(szx: Option<u8>) -> String {
    szx.map_or("null".to_owned(), |s| s.to_string())
}

/// The legacy protocol from `offset`, starting at block `num` of size
/// `szx` (NUM 0 and the server's size when `szx` is `None`).
fn legacy_job(out: &TempDir, image: &TestImage, offset: usize, szx: Option<u8>, num: usize) -> Job {
    let name = format!(
        "legacy {} offset {offset} szx {} num {num}",
        image.pid,
        szx_json(szx)
    );
    let start = offset + num * szx.map_or(0, |s| 16 << s);
    let file = out.path().join(format!(
        "legacy-{}-{offset}-{}.bin",
        image.pid,
        szx_json(szx)
    ));
    Job {
        json: format!(
            r#"{{"name":"{name}","mode":"legacy","pid":"{}","type":3,"version":0,"offset":{offset},"szx":{},"num":{num},"out":"{}","timeout_ms":{JOB_TIMEOUT_MS}}}"#,
            image.pid,
            szx_json(szx),
            file.display()
        ),
        name,
        expected: Some((file, image.bytes[start..].to_vec())),
        code: "2.05",
        text: None,
    }
}

/// `GET /updates/{id}` from block `num` of size `szx`.
fn id_job(out: &TempDir, image: &TestImage, szx: Option<u8>, num: usize) -> Job {
    let name = format!("id {} szx {} num {num}", image.pid, szx_json(szx));
    let start = num * szx.map_or(0, |s| 16 << s);
    let file = out
        .path()
        .join(format!("id-{}-{}-{num}.bin", image.pid, szx_json(szx)));
    Job {
        json: format!(
            r#"{{"name":"{name}","mode":"id","id":"{}","szx":{},"num":{num},"out":"{}","timeout_ms":{JOB_TIMEOUT_MS}}}"#,
            image.id,
            szx_json(szx),
            file.display()
        ),
        name,
        expected: Some((file, image.bytes[start..].to_vec())),
        code: "2.05",
        text: None,
    }
}

/// Runs the script over `jobs` against `server` and checks every result.
fn run_jobs(server: &TestServer, jobs: &[Job]) {
    let host = server.addr.ip().to_string();
    let spec = format!(
        r#"{{"host":"{host}","port":{},"jobs":[{}]}}"#,
        server.addr.port(),
        jobs.iter()
            .map(|j| j.json.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let output = support::run_bounded(
        Command::new("node")
            .arg(node_dir().join("download.js"))
            .arg(&spec),
        RUN_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = format!(
        "on {}:\nstdout:\n{stdout}\nstderr:\n{}",
        server.addr,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "download.js failed {report}");
    for job in jobs {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!(r#""name":"{}""#, job.name)))
            .unwrap_or_else(|| panic!("no result for {} {report}", job.name));
        assert!(
            line.contains(&format!(r#""code":"{}""#, job.code)),
            "{}: expected {} {report}",
            job.name,
            job.code
        );
        if let Some(text) = &job.text {
            assert!(
                line.contains(&format!(r#""text":"{text}""#)),
                "{}: {line}",
                job.name
            );
        }
        if let Some((file, expected)) = &job.expected {
            let got = std::fs::read(file)
                .unwrap_or_else(|e| panic!("{}: {}: {e}", job.name, file.display()));
            assert!(
                got == *expected,
                "{} on {}: {} bytes, {} expected, first difference at {:?}",
                job.name,
                server.addr,
                got.len(),
                expected.len(),
                got.iter().zip(expected).position(|(a, b)| a != b)
            );
            let _ = std::fs::remove_file(file);
        }
    }
}

#[test]
fn node_coap_downloads_by_legacy_protocol_and_by_id() {
    if !require_node_coap() {
        return;
    }
    let dir = TempDir::new("node-coap");
    let out = TempDir::new("node-coap-out");
    let images = support::write_images(
        &dir,
        &[
            ("SIZE0", 0),
            ("SIZE1", 1),
            ("SIZE1023", 1023),
            ("SIZE1024", 1024),
            ("SIZE1025", 1025),
            ("SIZEBIG", BIG_LEN),
        ],
    );
    let image = |pid: &str| images.iter().find(|i| i.pid == pid).expect("test image");
    let mut jobs = vec![
        // (a) the legacy protocol; node-coap sends the payload with block 0.
        legacy_job(&out, image("SIZE1025"), 0, None, 0),
        legacy_job(&out, image("SIZE1025"), 0, Some(0), 0),
        legacy_job(&out, image("SIZE1024"), 0, Some(2), 0),
        legacy_job(&out, image("SIZE1023"), 3, Some(4), 0),
        legacy_job(&out, image("SIZE1"), 0, Some(6), 0),
        legacy_job(&out, image("SIZE0"), 0, None, 0),
        legacy_job(&out, image("SIZE1025"), 1025, Some(6), 0),
        // 4375 blocks of 16 bytes: NUM past 4095 in node-coap's 3-byte Block2.
        legacy_job(&out, image("SIZEBIG"), BIG_LEN - 70_000, Some(0), 0),
        // (b) by id.
        id_job(&out, image("SIZE1025"), Some(4), 0),
        id_job(&out, image("SIZE1023"), None, 0),
        id_job(&out, image("SIZE0"), Some(2), 0),
        // From block 4090 of 1 KiB to the end (4096): node-coap's 3-byte
        // Block2 by id, and the legacy payload on a first block past 0.
        id_job(&out, image("SIZEBIG"), Some(6), 4090),
        legacy_job(&out, image("SIZEBIG"), 0, Some(6), 4093),
        legacy_job(&out, image("SIZEBIG"), 100, Some(2), 65_530),
    ];
    jobs.push(Job {
        name: "query SIZE1024".to_owned(),
        json: format!(
            r#"{{"name":"query SIZE1024","mode":"query","query":"pid=SIZE1024&type=APP&version=0.0.0","timeout_ms":{JOB_TIMEOUT_MS}}}"#
        ),
        expected: None,
        code: "2.05",
        text: Some(image("SIZE1024").id.clone()),
    });
    // The reference server's "no update" RST reaches node-coap as a
    // response with code 0.00.
    jobs.push(Job {
        name: "legacy no update".to_owned(),
        json: format!(
            r#"{{"name":"legacy no update","mode":"legacy","pid":"SIZE1025","type":3,"version":{VERSION_1_0_1},"offset":0,"szx":null,"timeout_ms":{JOB_TIMEOUT_MS}}}"#
        ),
        expected: None,
        code: "0.00",
        text: None,
    });
    jobs.push(Job {
        name: "unknown id".to_owned(),
        json: format!(
            r#"{{"name":"unknown id","mode":"id","id":"00000000","szx":null,"timeout_ms":{JOB_TIMEOUT_MS}}}"#
        ),
        expected: None,
        code: "4.04",
        text: None,
    });
    support::on_both_families(dir.path(), &[], |server| run_jobs(server, &jobs));
}

/// The whole 4 MiB at 1 KiB blocks (the last is NUM 4096) through the
/// legacy protocol, on [::1] only: node-coap concatenates the body block by
/// block (quadratic copying), so 4 MiB takes it seconds, and by id the
/// blocks past 4095 are covered above.
#[test]
fn node_coap_downloads_the_whole_big_image_at_1024() {
    if !require_node_coap() {
        return;
    }
    let dir = TempDir::new("node-coap-big");
    let out = TempDir::new("node-coap-big-out");
    let images = support::write_images(&dir, &[("SIZEBIG", BIG_LEN)]);
    let server = support::spawn_server(dir.path(), "[::1]:0", &[]);
    run_jobs(&server, &[legacy_job(&out, &images[0], 0, Some(6), 0)]);
}

/// A server with `-b 64` answers node-coap's 1 KiB requests with 64-byte
/// blocks; node-coap continues at the server's size.
#[test]
fn node_coap_follows_a_server_with_64_byte_blocks() {
    if !require_node_coap() {
        return;
    }
    let dir = TempDir::new("node-coap-b64");
    let out = TempDir::new("node-coap-b64-out");
    let images = support::write_images(&dir, &[("SIZE1025", 1025), ("SIZE1023", 1023)]);
    let jobs = [
        legacy_job(&out, &images[0], 0, Some(6), 0),
        legacy_job(&out, &images[1], 10, None, 0),
        id_job(&out, &images[0], Some(6), 0),
        id_job(&out, &images[1], None, 0),
    ];
    support::on_both_families(dir.path(), &["-b", "64"], |server| run_jobs(server, &jobs));
}
