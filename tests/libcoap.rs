//! Interop with libcoap's `coap-client-notls` (Debian libcoap3-bin), a real
//! RFC 7252/7959 peer: it downloads images by id and through the legacy
//! protocol, and reads the discovery listing, from the real server over
//! loopback on 127.0.0.1 and [::1]. Every output is compared byte for byte.
//!
//! coap-client sends the `-f` payload with block 0 only and a new token on
//! every block, so the legacy downloads here exercise the payload-less
//! continuation of README, "Continuations without payload".

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::{device_payload, TempDir, TestImage, TestServer};

const PROGRAM: &str = "coap-client-notls";
/// 4 MiB + 777 bytes: block numbers past 4095 at 1 KiB.
const BIG_LEN: usize = 4 * 1024 * 1024 + 777;
/// Version of the test images, 1.0.1.
const VERSION_1_0_1: u32 = (1 << 24) | 1;
/// Bound on one coap-client run; its own `-B` gives up sooner.
const RUN_TIMEOUT: Duration = Duration::from_secs(40);

struct Fixture {
    dir: TempDir,
    out: TempDir,
    images: Vec<TestImage>,
}

impl Fixture {
    fn new(tag: &str, big: bool) -> Fixture {
        let dir = TempDir::new(tag);
        let images = support::write_size_images(&dir, big.then_some(BIG_LEN));
        Fixture {
            dir,
            out: TempDir::new(&format!("{tag}-out")),
            images,
        }
    }

    fn image(&self, pid: &str) -> &TestImage {
        support::find_image(&self.images, pid)
    }

    fn small(&self) -> impl Iterator<Item = &TestImage> {
        self.images.iter().filter(|i| i.bytes.len() < BIG_LEN)
    }
}

/// `coap://127.0.0.1:PORT/path` or `coap://[::1]:PORT/path`.
fn uri(server: &TestServer, path_and_query: &str) -> String {
    format!("coap://{}/{path_and_query}", server.addr)
}

/// Runs coap-client-notls with `args`, bounded by `-B 10` and RUN_TIMEOUT.
fn coap_client(args: &[&str]) -> Output {
    let output = support::run_bounded(
        Command::new(PROGRAM).arg("-B").arg("10").args(args),
        RUN_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "{PROGRAM} {args:?} failed: {:?}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// GETs `uri` with block size `block` into `out` and returns what was
/// written; coap-client writes no file for an empty body.
fn get_to_file(
    uri: &str,
    block: usize,
    payload_file: Option<&Path>,
    out: &Path,
) -> (Vec<u8>, Output) {
    let _ = std::fs::remove_file(out);
    let block = block.to_string();
    let out_text = out.to_string_lossy().into_owned();
    let mut args = vec!["-m", "get", "-b", block.as_str(), "-o", out_text.as_str()];
    let payload_text;
    if let Some(file) = payload_file {
        payload_text = file.to_string_lossy().into_owned();
        args.extend(["-f", payload_text.as_str()]);
    }
    args.push(uri);
    let output = coap_client(&args);
    let body = std::fs::read(out).unwrap_or_default();
    (body, output)
}

fn assert_same(got: &[u8], expected: &[u8], what: &str, output: &Output) {
    assert!(
        got == expected,
        "{what}: {} bytes received, {} expected, first difference at {:?}\nstderr: {}",
        got.len(),
        expected.len(),
        got.iter().zip(expected).position(|(a, b)| a != b),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn out_file(fx: &Fixture, name: &str) -> PathBuf {
    fx.out.path().join(name)
}

#[test]
fn coap_client_downloads_every_image_by_id_at_1024_and_64() {
    if !support::require_program(PROGRAM) {
        return;
    }
    let fx = Fixture::new("libcoap-id", true);
    support::on_both_families(fx.dir.path(), &[], |server| {
        for image in &fx.images {
            let sizes: &[usize] = if image.bytes.len() == BIG_LEN {
                &[1024]
            } else {
                &[1024, 64]
            };
            for &block in sizes {
                let what = format!("{} -b {block} on {}", image.file_name, server.addr);
                let out = out_file(&fx, &format!("{}-{block}.bin", image.pid));
                let (body, output) = get_to_file(
                    &uri(server, &format!("updates/{}", image.id)),
                    block,
                    None,
                    &out,
                );
                assert_same(&body, &image.bytes, &what, &output);
            }
        }
    });
}

/// The listing as README, "Requests and answers" writes it, images in file-name order.
fn listing(fx: &Fixture, with_updates: bool, filter: impl Fn(&TestImage) -> bool) -> String {
    let mut images: Vec<&TestImage> = fx.images.iter().filter(|i| filter(i)).collect();
    images.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    let mut links: Vec<String> = Vec::new();
    if with_updates {
        links.push("</updates>;rt=\"fw.updates\"".to_owned());
    }
    links.extend(images.iter().map(|i| {
        format!(
            "</updates/{}>;rt=\"fw.image\";ct=42;sz={};title=\"{}\"",
            i.id,
            i.bytes.len(),
            i.file_name
        )
    }));
    links.join(",")
}

#[test]
fn coap_client_reads_well_known_core_whole_and_filtered() {
    if !support::require_program(PROGRAM) {
        return;
    }
    let fx = Fixture::new("libcoap-core", false);
    let cases = [
        (".well-known/core", listing(&fx, true, |_| true)),
        (
            ".well-known/core?rt=fw.image",
            listing(&fx, false, |_| true),
        ),
        (
            ".well-known/core?title=SIZE1*",
            listing(&fx, false, |i| i.pid.starts_with("SIZE1")),
        ),
    ];
    support::on_both_families(fx.dir.path(), &[], |server| {
        for (path, expected) in &cases {
            for block in [1024, 64, 16] {
                let out = out_file(&fx, "core.txt");
                let (body, output) = get_to_file(&uri(server, path), block, None, &out);
                assert_same(
                    &body,
                    expected.as_bytes(),
                    &format!("{path} -b {block}"),
                    &output,
                );
            }
        }
    });
}

#[test]
fn coap_client_query_form_names_the_image() {
    if !support::require_program(PROGRAM) {
        return;
    }
    let fx = Fixture::new("libcoap-query", false);
    support::on_both_families(fx.dir.path(), &[], |server| {
        for image in fx.small() {
            let query = format!("updates?pid={}&type=APP&version=0.0.0", image.pid);
            let out = out_file(&fx, "id.txt");
            let (body, output) = get_to_file(&uri(server, &query), 1024, None, &out);
            assert_same(&body, image.id.as_bytes(), &query, &output);
            // Then the image by that id, as an operator would.
            let id = String::from_utf8(body).expect("the id is text");
            let out = out_file(&fx, "image.bin");
            let (body, output) =
                get_to_file(&uri(server, &format!("updates/{id}")), 1024, None, &out);
            assert_same(&body, &image.bytes, &format!("image {id}"), &output);
        }
        // No newer image: 4.04, which coap-client reports and writes no file.
        let out = out_file(&fx, "none.txt");
        let (body, output) = get_to_file(
            &uri(server, "updates?pid=SIZE1&type=APP&version=1.0.1"),
            1024,
            None,
            &out,
        );
        assert!(body.is_empty(), "a body for 4.04: {body:?}");
        let said =
            String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains("4.04"),
            "coap-client did not see a 4.04: {said}"
        );
    });
}

#[test]
fn coap_client_legacy_download_with_device_payload_file() {
    if !support::require_program(PROGRAM) {
        return;
    }
    let fx = Fixture::new("libcoap-legacy", true);
    support::on_both_families(fx.dir.path(), &[], |server| {
        let mut runs: Vec<(&TestImage, usize, usize)> = Vec::new();
        for image in fx.small() {
            let len = image.bytes.len();
            for offset in [0, 1, 1000, len] {
                if offset <= len {
                    runs.push((image, offset, 1024));
                    runs.push((image, offset, 64));
                }
            }
        }
        let big = fx.image("SIZEBIG");
        runs.push((big, 0, 1024));
        runs.push((big, 1000, 1024));
        runs.push((big, BIG_LEN - 1500, 16));
        for (image, offset, block) in runs {
            let what = format!(
                "{} offset {offset} -b {block} on {}",
                image.pid, server.addr
            );
            let payload =
                device_payload(&image.pid, 3, 0, Some(u32::try_from(offset).expect("u32")));
            let payload_file = fx.out.write("device.bin", &payload);
            let out = out_file(&fx, "legacy.bin");
            let (body, output) =
                get_to_file(&uri(server, "updates"), block, Some(&payload_file), &out);
            assert_same(&body, &image.bytes[offset..], &what, &output);
        }
        // No newer image: the legacy "no update" RST, and no file.
        let payload = device_payload("SIZE1025", 3, VERSION_1_0_1, Some(0));
        let payload_file = fx.out.write("device.bin", &payload);
        let out = out_file(&fx, "none.bin");
        let (body, output) = get_to_file(&uri(server, "updates"), 1024, Some(&payload_file), &out);
        assert!(
            body.is_empty(),
            "a body for no update: {} bytes",
            body.len()
        );
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains("RST"),
            "coap-client did not report the RST: {said}"
        );
    });
}

#[test]
fn coap_client_follows_a_server_with_64_byte_blocks() {
    if !support::require_program(PROGRAM) {
        return;
    }
    let fx = Fixture::new("libcoap-b64", false);
    support::on_both_families(fx.dir.path(), &["-b", "64"], |server| {
        for image in fx.small() {
            let what = format!(
                "{} by id, -b 1024 against -b 64 on {}",
                image.pid, server.addr
            );
            let out = out_file(&fx, "b64.bin");
            let (body, output) = get_to_file(
                &uri(server, &format!("updates/{}", image.id)),
                1024,
                None,
                &out,
            );
            assert_same(&body, &image.bytes, &what, &output);

            let payload = device_payload(&image.pid, 3, 0, Some(0));
            let payload_file = fx.out.write("device.bin", &payload);
            let (body, output) =
                get_to_file(&uri(server, "updates"), 1024, Some(&payload_file), &out);
            assert_same(&body, &image.bytes, &format!("legacy {what}"), &output);
        }
    });
}

/// Resuming a download by id with stock clients: coap-client repeats the
/// URI's query on every block but sends a `-f` payload only with block 0,
/// so `?offset=N` is the resume form that works with it (README, "Continuations without payload"
/// extension; the 4-byte OFFSET payload needs a client that repeats it).
#[test]
fn coap_client_resumes_by_id_with_offset_query() {
    if !support::require_program(PROGRAM) {
        return;
    }
    let fx = Fixture::new("libcoap-offset", false);
    support::on_both_families(fx.dir.path(), &[], |server| {
        let image = fx.image("SIZE1025");
        for (offset, block) in [(100usize, 64usize), (1000, 16), (1025, 1024)] {
            let what = format!(
                "{} ?offset={offset} -b {block} on {}",
                image.pid, server.addr
            );
            let out = out_file(&fx, "offset.bin");
            let path = format!("updates/{}?offset={offset}", image.id);
            let (body, output) = get_to_file(&uri(server, &path), block, None, &out);
            assert_same(&body, &image.bytes[offset..], &what, &output);
        }
    });
}

/// With `--echo` an unverified client first gets 4.01 with an Echo option
/// (RFC 9175 §2.4); libcoap repeats the request with it and downloads the
/// image all the same.
#[test]
fn coap_client_answers_the_echo_challenge() {
    if !support::require_program(PROGRAM) {
        return;
    }
    let fx = Fixture::new("libcoap-echo", false);
    support::on_both_families(fx.dir.path(), &["--echo", "-v"], |server| {
        let image = fx.image("SIZE1025");
        let out = out_file(&fx, "echo.bin");
        let (body, output) = get_to_file(
            &uri(server, &format!("updates/{}", image.id)),
            64,
            None,
            &out,
        );
        assert_same(
            &body,
            &image.bytes,
            &format!("--echo on {}", server.addr),
            &output,
        );
        assert!(
            server.wait_for_log("echo=true", Duration::from_secs(5)),
            "libcoap never repeated a request with the Echo value:\n{}",
            server.log()
        );
    });
}

/// `-f` sends the 4-byte OFFSET payload with block 0 only; the server
/// continues the body the peer's block 0 started, so the download is
/// image[OFFSET..] and not a splice of two bodies.
#[test]
fn coap_client_resumes_by_id_with_offset_payload_sent_once() {
    if !support::require_program(PROGRAM) {
        return;
    }
    let fx = Fixture::new("libcoap-offset-payload", false);
    support::on_both_families(fx.dir.path(), &[], |server| {
        let image = fx.image("SIZE1025");
        for (offset, block) in [(100usize, 64usize), (1000, 16), (7, 1024)] {
            let what = format!(
                "{} OFFSET {offset} -b {block} on {}",
                image.pid, server.addr
            );
            let payload_file = fx.out.write("offset.bin", &(offset as u32).to_le_bytes());
            let out = out_file(&fx, "offset-payload.bin");
            let path = format!("updates/{}", image.id);
            let (body, output) = get_to_file(&uri(server, &path), block, Some(&payload_file), &out);
            assert_same(&body, &image.bytes[offset..], &what, &output);
        }
    });
}
