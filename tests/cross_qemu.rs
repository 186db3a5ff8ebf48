//! The router builds of `make dist` (README, "Builds for routers"), run on
//! this machine under qemu-user with the CPU of each router family: each
//! cross-compiled server serves the sample image of `updates/` and a
//! multi-block image to the host's `iot-ota-client` and to libcoap's
//! `coap-client-notls`, by id and by the legacy protocol, over 127.0.0.1
//! and [::1], and the target's own client downloads from it; every body
//! is compared byte for byte. The target's clients have no load generator
//! (`bench`, `baseline`: the `loadgen` feature, which `make dist` leaves
//! out). A server that needs its C library at run time (not static) does
//! not start under qemu, so this also checks that the binaries stand alone.
//!
//! The binaries come from the directory named by `IOT_OTA_DIST` (`.ci/run`
//! sets it after `make dist DIST_TARGETS=...`); this test does not build
//! them. Without it, or without a target's qemu, the test prints SKIPPED on
//! a developer's machine and fails under CI (`CI=true`). A target left out
//! of `DIST_TARGETS` is skipped.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::{
    device_payload, image_bytes, image_id, launched, run_bounded, spawn_program_via, TempDir,
    TestServer, CLIENT_BIN,
};

/// The variable naming the directory `make dist` filled.
const DIST_ENV: &str = "IOT_OTA_DIST";
/// The sample image of `updates/`: PID OTA-DEMO-MOTE, type APP, 1.0.2.
const SAMPLE: &str = "OTA-DEMO-MOTE_1_0_2_APP_0x1C660A3E.fmu";
const SAMPLE_PID: &str = "OTA-DEMO-MOTE";
/// A version older than the sample's, so that the lookup offers it.
const OLDER: &str = "1.0.1";
const OLDER_CODE: u32 = (1 << 24) | 1;
/// TYPE APP in the device payload.
const TYPE_APP: u8 = 3;
/// Past 65,535 bytes and 16 blocks of 1 KiB: Size2 takes three bytes and
/// Block2 two, so a byte-order mistake on a big-endian CPU shows.
const BIG: (&str, usize) = ("BIGEND_1_0_0_APP.fmu", 70_001);
/// Bound on one client run; emulation makes the server slower, not slow.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// The server size the README promises for every target.
const MAX_SERVER_BYTES: u64 = 1024 * 1024;

/// The server of `target` under `launcher` (qemu-user with the router's CPU).
struct Cross {
    target: &'static str,
    launcher: &'static [&'static str],
}

/// Every target of `make dist`, with the CPU of the routers it is for.
const TARGETS: &[Cross] = &[
    Cross {
        target: "x86_64-unknown-linux-musl",
        launcher: &[],
    },
    Cross {
        target: "aarch64-unknown-linux-musl",
        launcher: &["qemu-aarch64", "-cpu", "cortex-a53"],
    },
    Cross {
        target: "armv7-unknown-linux-musleabihf",
        launcher: &["qemu-arm", "-cpu", "cortex-a7"],
    },
    // Soft float, for ARMv7 routers without an FPU (OpenWrt's bcm53xx);
    // qemu's Cortex-A9 has one, so this shows the build runs, not that it
    // needs none.
    Cross {
        target: "armv7-unknown-linux-musleabi",
        launcher: &["qemu-arm", "-cpu", "cortex-a9"],
    },
    // The Raspberry Pi Zero and 1: an ARMv7 instruction here dies with SIGILL.
    Cross {
        target: "arm-unknown-linux-musleabihf",
        launcher: &["qemu-arm", "-cpu", "arm1176"],
    },
    Cross {
        target: "mipsel-unknown-linux-musl",
        launcher: &["qemu-mipsel", "-cpu", "24Kc"],
    },
    Cross {
        target: "mips-unknown-linux-musl",
        launcher: &["qemu-mips", "-cpu", "24Kc"],
    },
];

fn under_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// The directory of `IOT_OTA_DIST`; `None` (skip) when it is not set,
/// outside CI.
fn dist_dir() -> Option<PathBuf> {
    match std::env::var_os(DIST_ENV) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.is_dir(),
                "{DIST_ENV}={} is not a directory",
                dir.display()
            );
            Some(dir)
        }
        None => {
            assert!(
                !under_ci(),
                "{DIST_ENV} must name the output of `make dist` under CI=true"
            );
            eprintln!("SKIPPED: {DIST_ENV} not set (make dist, then {DIST_ENV}=dist)");
            None
        }
    }
}

/// The sample image, as `updates/` holds it.
fn sample_bytes() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("updates")
        .join(SAMPLE);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn assert_same(got: &[u8], expected: &[u8], what: &str, output: &Output, server: &TestServer) {
    assert!(
        got == expected,
        "{what}: {} bytes received, {} expected, first difference at {:?}\nstderr: {}\nserver log:\n{}",
        got.len(),
        expected.len(),
        got.iter().zip(expected).position(|(a, b)| a != b),
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
}

/// Runs `command` (bounded) and fails the test unless it exits 0.
fn run_ok(command: &mut Command, what: &str, server: &TestServer) -> Output {
    let output = run_bounded(command, RUN_LIMIT);
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    output
}

/// Reads the file a client wrote (missing: empty, which no test expects).
fn read_out(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Every download of the module docs from the server of `target` (one of
/// [`TARGETS`]), when its binaries are in the dist directory.
fn serves_byte_exact(target: &str) {
    let cross = TARGETS
        .iter()
        .find(|cross| cross.target == target)
        .unwrap_or_else(|| panic!("{target} is not in TARGETS"));
    let Some(dist) = dist_dir() else {
        return;
    };
    let server_bin = dist.join(format!("iot-ota-server-{}", cross.target));
    let client_bin = dist.join(format!("iot-ota-client-{}", cross.target));
    if !server_bin.exists() {
        eprintln!(
            "SKIPPED: no {} (target not in DIST_TARGETS)",
            server_bin.display()
        );
        return;
    }
    if let Some(qemu) = cross.launcher.first() {
        if !support::require_program(qemu) {
            return;
        }
    }
    // The router builds, plain and coaps, are what gateways install: no
    // load generator, whose `baseline` would answer any datagram with
    // 1 KiB or more.
    let dtls_client_bin = dist.join(format!("iot-ota-client-dtls-{}", cross.target));
    for client in [&client_bin, &dtls_client_bin] {
        if client.exists() {
            support::assert_no_load_generator(cross.launcher, client);
        }
    }
    if !support::require_program("coap-client-notls") {
        return;
    }

    let sample = sample_bytes();
    let big = image_bytes(BIG.1, 1);
    let dir = TempDir::new(&format!("cross-{}", cross.target));
    dir.write(SAMPLE, &sample);
    dir.write(BIG.0, &big);
    let out = TempDir::new(&format!("cross-{}-out", cross.target));
    let legacy_request = out.write(
        "legacy.bin",
        &device_payload(SAMPLE_PID, TYPE_APP, OLDER_CODE, Some(0)),
    );
    let sample_id = image_id(SAMPLE);
    let big_id = image_id(BIG.0);

    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = spawn_program_via(cross.launcher, &server_bin, dir.path(), listen, &[]);
        let addr = server.addr.to_string();
        let file = |name: &str| out.path().join(format!("{name}-{}", server.addr.port()));

        // The host client: device mode in 64-byte blocks, the legacy protocol,
        // and the big image by URI.
        let device = file("device");
        let output = run_ok(
            Command::new(CLIENT_BIN)
                .args([&addr, "--pid", SAMPLE_PID, "--type", "APP"])
                .args(["--version", OLDER, "-b", "64", "-o"])
                .arg(&device),
            "host client, device mode",
            &server,
        );
        assert_same(
            &read_out(&device),
            &sample,
            "host client, device mode",
            &output,
            &server,
        );

        let legacy = file("legacy");
        let output = run_ok(
            Command::new(CLIENT_BIN)
                .args([&addr, "--pid", SAMPLE_PID, "--type", "APP"])
                .args(["--version", OLDER, "--legacy", "-o"])
                .arg(&legacy),
            "host client, legacy",
            &server,
        );
        assert_same(
            &read_out(&legacy),
            &sample,
            "host client, legacy",
            &output,
            &server,
        );

        let by_uri = file("big");
        let output = run_ok(
            Command::new(CLIENT_BIN)
                .arg(format!("coap://{addr}/updates/{big_id}"))
                .arg("-o")
                .arg(&by_uri),
            "host client, big image by id",
            &server,
        );
        assert_same(
            &read_out(&by_uri),
            &big,
            "host client, big image",
            &output,
            &server,
        );

        // libcoap: by id, and the legacy protocol with the device payload.
        let coap_id = file("coap-id");
        let output = run_ok(
            Command::new("coap-client-notls")
                .args(["-B", "10", "-m", "get", "-b", "1024", "-o"])
                .arg(&coap_id)
                .arg(format!("coap://{addr}/updates/{sample_id}")),
            "coap-client-notls by id",
            &server,
        );
        assert_same(
            &read_out(&coap_id),
            &sample,
            "coap-client-notls by id",
            &output,
            &server,
        );

        let coap_legacy = file("coap-legacy");
        let output = run_ok(
            Command::new("coap-client-notls")
                .args(["-B", "10", "-m", "get", "-b", "1024", "-f"])
                .arg(&legacy_request)
                .arg("-o")
                .arg(&coap_legacy)
                .arg(format!("coap://{addr}/updates")),
            "coap-client-notls legacy",
            &server,
        );
        assert_same(
            &read_out(&coap_legacy),
            &sample,
            "coap-client-notls legacy",
            &output,
            &server,
        );

        // The target's own client, on the same emulated CPU.
        if client_bin.exists() {
            let own = file("own-client");
            let output = run_ok(
                launched(cross.launcher, &client_bin)
                    .arg(&addr)
                    .args([
                        "--pid",
                        SAMPLE_PID,
                        "--type",
                        "APP",
                        "--version",
                        OLDER,
                        "-o",
                    ])
                    .arg(&own),
                "the target's client",
                &server,
            );
            assert_same(
                &read_out(&own),
                &sample,
                "the target's client",
                &output,
                &server,
            );
        }
    }
    serves_coaps_byte_exact(cross, &dist, &dir, &out, &big);
}

/// The coaps build of `cross` (`iot-ota-server-dtls-TARGET`, which `make
/// dist` builds unless `DIST_DTLS=0`) under the same emulated CPU: a
/// coaps-only server with a PSK file serves the big image by id, byte for
/// byte, to libcoap's `coap-client-openssl` on the host and to the
/// target's own coaps client. Without the build: SKIPPED, and a failure
/// under CI, which builds it.
fn serves_coaps_byte_exact(cross: &Cross, dist: &Path, dir: &TempDir, out: &TempDir, big: &[u8]) {
    let server_bin = dist.join(format!("iot-ota-server-dtls-{}", cross.target));
    let client_bin = dist.join(format!("iot-ota-client-dtls-{}", cross.target));
    if !server_bin.exists() {
        assert!(
            !under_ci(),
            "no {} under CI (make dist without DIST_DTLS=0 builds it)",
            server_bin.display()
        );
        eprintln!("SKIPPED: no {} (DIST_DTLS=0)", server_bin.display());
        return;
    }
    if !support::require_program("coap-client-openssl") {
        return;
    }
    let keys = TempDir::new(&format!("cross-{}-keys", cross.target));
    let psk = keys.write("psk", b"router-test:router-test-key\n");
    std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod the PSK file");
    let psk = psk.to_string_lossy().into_owned();
    let server = spawn_program_via(
        cross.launcher,
        &server_bin,
        dir.path(),
        "none",
        &["--psk-file", &psk, "--dtls-listen", "127.0.0.1:0"],
    );
    let base = format!("coaps://{}", server.addr);
    let big_id = image_id(BIG.0);

    let by_libcoap = out.path().join("coaps-libcoap");
    let output = run_ok(
        Command::new("coap-client-openssl")
            .args(["-B", "30", "-m", "get", "-b", "1024"])
            .args(["-u", "router-test", "-k", "router-test-key", "-o"])
            .arg(&by_libcoap)
            .arg(format!("{base}/updates/{big_id}")),
        "coap-client-openssl over coaps",
        &server,
    );
    assert_same(
        &read_out(&by_libcoap),
        big,
        "coap-client-openssl over coaps",
        &output,
        &server,
    );

    let own = out.path().join("coaps-own-client");
    let output = run_ok(
        launched(cross.launcher, &client_bin)
            .arg(format!("{base}/updates/{big_id}"))
            .args([
                "--psk-identity",
                "router-test",
                "--psk-key",
                "router-test-key",
            ])
            .arg("-o")
            .arg(&own),
        "the target's coaps client",
        &server,
    );
    assert_same(
        &read_out(&own),
        big,
        "the target's coaps client",
        &output,
        &server,
    );
}

#[test]
fn x86_64_musl_serves_byte_exact() {
    serves_byte_exact("x86_64-unknown-linux-musl");
}

#[test]
fn aarch64_under_qemu_cortex_a53_serves_byte_exact() {
    serves_byte_exact("aarch64-unknown-linux-musl");
}

#[test]
fn armv7_under_qemu_cortex_a7_serves_byte_exact() {
    serves_byte_exact("armv7-unknown-linux-musleabihf");
}

#[test]
fn armv7_soft_float_under_qemu_cortex_a9_serves_byte_exact() {
    serves_byte_exact("armv7-unknown-linux-musleabi");
}

#[test]
fn armv6_under_qemu_arm1176_serves_byte_exact() {
    serves_byte_exact("arm-unknown-linux-musleabihf");
}

#[test]
fn mipsel_under_qemu_24kc_serves_byte_exact() {
    serves_byte_exact("mipsel-unknown-linux-musl");
}

#[test]
fn mips_big_endian_under_qemu_24kc_serves_byte_exact() {
    serves_byte_exact("mips-unknown-linux-musl");
}

/// `SHA256SUMS` lists exactly the binaries in the directory, `sha256sum
/// -c` accepts it, every binary is of a known target (so it has a test
/// above), both programs are there for each, and every server is within
/// the size README promises.
#[test]
fn dist_holds_known_binaries_with_checksums() {
    let Some(dist) = dist_dir() else {
        return;
    };
    if !support::require_program("sha256sum") {
        return;
    }
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).expect("dist/SHA256SUMS");
    let mut listed: Vec<String> = sums
        .lines()
        .filter_map(|line| line.split_once("  ").map(|(_, name)| name.to_owned()))
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(&dist)
        .expect("read the dist directory")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name != "SHA256SUMS")
        .collect();
    present.sort();
    assert_eq!(listed, present, "SHA256SUMS against the directory");
    assert!(!present.is_empty(), "no binaries in {}", dist.display());

    let output = run_bounded(
        Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(&dist),
        RUN_LIMIT,
    );
    assert!(
        output.status.success(),
        "sha256sum -c: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    for name in &present {
        // The coaps builds (`-dtls-`) come beside the plain ones.
        let (program, target) = [
            "iot-ota-server-dtls-",
            "iot-ota-client-dtls-",
            "iot-ota-server-",
            "iot-ota-client-",
        ]
        .iter()
        .find_map(|program| Some((*program, name.strip_prefix(program)?)))
        .unwrap_or_else(|| panic!("{name}: not a binary of make dist"));
        assert!(
            TARGETS.iter().any(|cross| cross.target == target),
            "{name}: {target} has no qemu test here"
        );
        let variant = if program.contains("-dtls-") {
            "-dtls"
        } else {
            ""
        };
        for program in ["iot-ota-server", "iot-ota-client"] {
            let twin = format!("{program}{variant}-{target}");
            assert!(present.contains(&twin), "{name} without {twin}");
        }
        // The 1 MiB bound is the default build's; coaps adds its engine.
        if program == "iot-ota-server-" {
            let size = std::fs::metadata(dist.join(name)).expect("stat").len();
            assert!(
                size <= MAX_SERVER_BYTES,
                "{name}: {size} bytes, more than {MAX_SERVER_BYTES}"
            );
        }
    }
}
