//! coaps with X.509 certificates (`--cert`, `--key`, `--ca`,
//! `--cert-names`; `--features dtls`): libcoap's `coap-client-gnutls`
//! and `coap-client-openssl` with a device certificate (`-c/-j/-C`)
//! download by id byte for byte at 64- and 1024-byte blocks over
//! 127.0.0.1 and [::1]; a certificate from another CA, an expired one
//! and none at all are refused in the handshake with the alert that says
//! why; a device gets 4.03 for another product's image; a client that
//! offers only TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 gets it; raw public
//! keys (`coap-client-gnutls -M`) on the list download byte for byte and
//! others are refused; one socket gives PSK, certificate and raw key
//! hellos each their mode; our client in both modes, taking only a
//! server certificate that names the server (subjectAltName, CN without
//! one, `--server-name`); SIGHUP rereads the
//! names file and the raw key list; the certificate check itself
//! refuses each kind of certificate that is not a fleet client's. The
//! PKI is made at test time with `openssl` (tests/support/pki.rs), and
//! the server serves its PSK file on the same socket.
#![cfg(feature = "dtls")]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use support::coaps::CoapsFixture;
use support::pki::Pki;
use support::{output_text as text, TestServer};

const CLIENTS: [&str; 2] = ["coap-client-gnutls", "coap-client-openssl"];
/// Bound on one coap-client run; its own `-B` gives up sooner.
const RUN_TIMEOUT: Duration = Duration::from_secs(40);
/// dev1 may fetch DEV images only; ops may fetch all.
const NAMES: &str = "# device names\ndev1:DEV\nops\n";

/// Images (DEV 5000 bytes, OTHER 3000), a PSK file, and the PKI: the
/// fleet CA with the server's certificate and the devices dev1, ops and
/// an expired dev1; another CA (with the same name) and its dev1.
fn fixture(tag: &str) -> Option<(CoapsFixture, Pki)> {
    let pki = Pki::new(tag)?;
    pki.ca("ca", "Fleet CA");
    pki.issue("ca", "server", "ota.test", "server", None);
    pki.issue("ca", "dev1", "dev1", "client", None);
    pki.issue("ca", "ops", "ops", "client", None);
    pki.issue(
        "ca",
        "expired",
        "dev1",
        "client",
        Some(("20200101000000Z", "20210101000000Z")),
    );
    pki.ca("other", "Fleet CA");
    pki.issue("other", "rogue", "dev1", "client", None);
    pki.dir.write("names", NAMES.as_bytes());
    pki.raw_key("server-rpk");
    pki.raw_key("mote1");
    pki.raw_key("ops-rpk");
    pki.raw_key("stranger");
    let clients = format!(
        "# raw public keys\nmote-1:DEV {}\nops-rpk sha256:{}\n",
        pki.public_key_base64("mote1"),
        pki.fingerprint("ops-rpk")
    );
    pki.dir.write("rpk-clients", clients.as_bytes());
    let fx = CoapsFixture::new(
        tag,
        &[("DEV", 5000), ("OTHER", 3000)],
        "psk-device:psk-device-key\n",
    );
    Some((fx, pki))
}

/// A server with PSK, certificates and raw public keys on one coaps
/// socket at `listen`.
fn server(fx: &CoapsFixture, pki: &Pki, listen: &str) -> TestServer {
    let names = pki.path("names").to_string_lossy().into_owned();
    let clients = pki.path("rpk-clients").to_string_lossy().into_owned();
    fx.server(
        listen,
        &[
            "--cert",
            &pki.pem("server"),
            "--key",
            &pki.key("server"),
            "--ca",
            &pki.pem("ca"),
            "--cert-names",
            &names,
            "--rpk-key",
            &pki.key("server-rpk"),
            "--rpk-clients",
            &clients,
        ],
    )
}

/// Runs `client` with `args` against `uri`, trusting the fleet CA.
fn run(client: &str, pki: &Pki, args: &[&str], uri: &str) -> Output {
    support::run_bounded(
        Command::new(client)
            .args(["-B", "10", "-C", &pki.pem("ca")])
            .args(args)
            .arg(uri),
        RUN_TIMEOUT,
    )
}

/// GnuTLS's system-wide settings with every cipher but AES-128-CCM-8
/// disabled: libcoap's GnuTLS client, which takes no cipher option,
/// then offers only the CCM-8 suites (GNUTLS_SYSTEM_PRIORITY_FILE).
const GNUTLS_CCM_8_ONLY: &str = "[overrides]\n\
    tls-disabled-cipher = AES-128-GCM\n\
    tls-disabled-cipher = AES-256-GCM\n\
    tls-disabled-cipher = CHACHA20-POLY1305\n\
    tls-disabled-cipher = AES-128-CCM\n\
    tls-disabled-cipher = AES-256-CCM\n\
    tls-disabled-cipher = AES-256-CCM-8\n\
    tls-disabled-cipher = AES-128-CBC\n\
    tls-disabled-cipher = AES-256-CBC\n\
    tls-disabled-cipher = CAMELLIA-128-CBC\n\
    tls-disabled-cipher = CAMELLIA-256-CBC\n\
    tls-disabled-cipher = 3DES-CBC\n";

/// GETs `uri` with device `device`'s certificate at block size `block`
/// into `out`: the body written, and what the client printed.
fn download(
    client: &str,
    pki: &Pki,
    device: &str,
    block: usize,
    uri: &str,
    out: &Path,
) -> (Vec<u8>, Output) {
    let _ = std::fs::remove_file(out);
    let output = run(
        client,
        pki,
        &[
            "-c",
            &pki.pem(device),
            "-j",
            &pki.key(device),
            "-b",
            &block.to_string(),
            "-o",
            &out.to_string_lossy(),
        ],
        uri,
    );
    (std::fs::read(out).unwrap_or_default(), output)
}

fn available() -> Vec<&'static str> {
    CLIENTS
        .into_iter()
        .filter(|c| support::require_program(c))
        .collect()
}

#[test]
fn libcoap_clients_with_certificates_download_by_id_byte_for_byte() {
    let Some((fx, pki)) = fixture("certs-interop") else {
        return;
    };
    let dev = fx.image("DEV");
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = server(&fx, &pki, listen);
        let uri = format!("coaps://{}/updates/{}", server.addr, dev.id);
        for client in available() {
            for block in [64, 1024] {
                let out = fx.out.path().join(format!("dev-{block}"));
                let (body, output) = download(client, &pki, "dev1", block, &uri, &out);
                support::assert_downloaded(
                    &body,
                    &dev.bytes,
                    &format!("{client} {listen} -b {block}"),
                    &output,
                );
            }
        }
    }
}

#[test]
fn certificates_from_another_ca_expired_or_missing_are_refused_in_the_handshake() {
    let Some((fx, pki)) = fixture("certs-refused") else {
        return;
    };
    let dev = fx.image("DEV");
    let server = server(&fx, &pki, "127.0.0.1:0");
    let uri = format!("coaps://{}/updates/{}", server.addr, dev.id);
    let out = fx.out.path().join("refused");
    // The alert each client reports: GnuTLS by number, OpenSSL by name.
    for (device, number, name) in [
        (Some("rogue"), "48", "unknown ca"),
        (Some("expired"), "45", "certificate expired"),
        (None, "40", "handshake failure"),
    ] {
        for client in available() {
            let _ = std::fs::remove_file(&out);
            let out_text = out.to_string_lossy().into_owned();
            let mut args = vec!["-o", &out_text];
            let (cert, key);
            if let Some(device) = device {
                cert = pki.pem(device);
                key = pki.key(device);
                args.extend(["-c", &cert, "-j", &key]);
            }
            let output = run(client, &pki, &args, &uri);
            let said = text(&output);
            assert!(
                std::fs::read(&out).unwrap_or_default().is_empty(),
                "{client} {device:?} got bytes: {said}"
            );
            let expected = if client.ends_with("gnutls") {
                format!("Alert '{number}'")
            } else {
                name.to_owned()
            };
            assert!(
                said.contains(&expected),
                "{client} {device:?}: no '{expected}' alert: {said}"
            );
        }
    }
}

#[test]
fn a_device_gets_4_03_for_another_products_image_and_ops_gets_it() {
    let Some((fx, pki)) = fixture("certs-forbidden") else {
        return;
    };
    let other = fx.image("OTHER");
    let server = server(&fx, &pki, "127.0.0.1:0");
    let uri = format!("coaps://{}/updates/{}", server.addr, other.id);
    let out = fx.out.path().join("other");
    for client in available() {
        let (body, output) = download(client, &pki, "dev1", 1024, &uri, &out);
        assert!(body.is_empty(), "{client}: dev1 got OTHER's bytes");
        assert!(
            text(&output).contains("4.03"),
            "{client}: {}",
            text(&output)
        );
        let (body, output) = download(client, &pki, "ops", 1024, &uri, &out);
        assert!(body == other.bytes, "{client} ops: {}", text(&output));
    }
}

#[test]
fn the_ccm_8_suite_is_negotiated_when_the_client_offers_only_it() {
    const CLIENT: &str = "coap-client-gnutls";
    if !support::require_program(CLIENT) {
        return;
    }
    let Some((fx, pki)) = fixture("certs-ccm8") else {
        return;
    };
    let priorities = pki.dir.write("gnutls.conf", GNUTLS_CCM_8_ONLY.as_bytes());
    let dev = fx.image("DEV");
    let server = server(&fx, &pki, "127.0.0.1:0");
    let uri = format!("coaps://{}/updates/{}", server.addr, dev.id);
    for (ccm_8_only, suite) in [
        (true, "GNUTLS_ECDHE_ECDSA_AES_128_CCM_8"),
        (false, "GNUTLS_ECDHE_ECDSA_AES_128_GCM_SHA256"),
    ] {
        for block in [64, 1024] {
            let out = fx.out.path().join(format!("ccm8-{block}"));
            let _ = std::fs::remove_file(&out);
            let mut command = Command::new(CLIENT);
            if ccm_8_only {
                command.env("GNUTLS_SYSTEM_PRIORITY_FILE", &priorities);
            }
            command
                .args(["-B", "10", "-v", "9", "-C", &pki.pem("ca")])
                .args(["-c", &pki.pem("dev1"), "-j", &pki.key("dev1")])
                .args(["-b", &block.to_string(), "-o"])
                .arg(&out)
                .arg(&uri);
            let output = support::run_bounded(&mut command, RUN_TIMEOUT);
            // libcoap logs debug lines on stdout, warnings on stderr.
            let said = text(&output);
            let selected = said
                .lines()
                .find(|l| l.contains("Selected cipher suite:"))
                .unwrap_or("no suite selected");
            assert!(
                selected.ends_with(suite),
                "CCM-8 only {ccm_8_only}: {selected}"
            );
            let body = std::fs::read(&out).unwrap_or_default();
            assert!(
                body == dev.bytes,
                "CCM-8 only {ccm_8_only} -b {block}: {} bytes of {}",
                body.len(),
                dev.bytes.len()
            );
        }
    }
}

/// GETs `uri` with `coap-client-gnutls -M` and raw key `name` at block
/// size `block` into `out`: the body written, and what the client said.
fn download_raw(pki: &Pki, name: &str, block: usize, uri: &str, out: &Path) -> (Vec<u8>, Output) {
    let _ = std::fs::remove_file(out);
    let output = support::run_bounded(
        Command::new("coap-client-gnutls")
            .args([
                "-B",
                "10",
                "-M",
                &pki.path(&format!("{name}.rpk")).to_string_lossy(),
            ])
            .args(["-b", &block.to_string(), "-o"])
            .arg(out)
            .arg(uri),
        RUN_TIMEOUT,
    );
    (std::fs::read(out).unwrap_or_default(), output)
}

#[test]
fn raw_public_keys_on_the_list_download_byte_for_byte_and_others_are_refused() {
    if !support::require_program("coap-client-gnutls") {
        return;
    }
    let Some((fx, pki)) = fixture("certs-rpk") else {
        return;
    };
    let dev = fx.image("DEV");
    let other = fx.image("OTHER");
    let out = fx.out.path().join("rpk");
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = server(&fx, &pki, listen);
        let uri = format!("coaps://{}/updates/{}", server.addr, dev.id);
        for block in [64, 1024] {
            // mote-1 is listed by its key in base64, ops-rpk by its
            // fingerprint.
            for name in ["mote1", "ops-rpk"] {
                let (body, output) = download_raw(&pki, name, block, &uri, &out);
                support::assert_downloaded(
                    &body,
                    &dev.bytes,
                    &format!("{name} {listen} -b {block}"),
                    &output,
                );
            }
        }
        let (body, output) = download_raw(&pki, "stranger", 1024, &uri, &out);
        assert!(body.is_empty(), "an unlisted key got bytes");
        assert!(
            text(&output).contains("Alert '49'"),
            "an unlisted key: no access_denied alert: {}",
            text(&output)
        );
        let other_uri = format!("coaps://{}/updates/{}", server.addr, other.id);
        let (body, output) = download_raw(&pki, "mote1", 1024, &other_uri, &out);
        assert!(
            body.is_empty() && text(&output).contains("4.03"),
            "{}",
            text(&output)
        );
    }
}

#[test]
fn one_socket_gives_psk_certificate_and_raw_key_hellos_each_their_mode() {
    if !support::require_program("coap-client-gnutls") {
        return;
    }
    let Some((fx, pki)) = fixture("certs-modes") else {
        return;
    };
    let dev = fx.image("DEV");
    let out = fx.out.path().join("mode");
    let server = server(&fx, &pki, "127.0.0.1:0");
    let uri = format!("coaps://{}/updates/{}", server.addr, dev.id);
    let out_text = out.to_string_lossy().into_owned();
    let cert = pki.pem("dev1");
    let key = pki.key("dev1");
    let rpk = pki.path("mote1.rpk").to_string_lossy().into_owned();
    // Each client can do one mode only: the PSK one offers PSK suites
    // alone, the raw key one can send no certificate, the certificate one
    // no raw key. Twice round, so that a mode left over from the previous
    // hello would show.
    for round in 0..2 {
        for (mode, args) in [
            ("psk", vec!["-u", "psk-device", "-k", "psk-device-key"]),
            (
                "certificate",
                vec!["-c", &cert, "-j", &key, "-C", &pki.pem("ca")],
            ),
            ("raw public key", vec!["-M", &rpk]),
        ] {
            let _ = std::fs::remove_file(&out);
            let output = support::run_bounded(
                Command::new("coap-client-gnutls")
                    .args(["-B", "10", "-b", "1024", "-o", &out_text])
                    .args(&args)
                    .arg(&uri),
                RUN_TIMEOUT,
            );
            let body = std::fs::read(&out).unwrap_or_default();
            assert!(
                body == dev.bytes,
                "round {round}, {mode}: {} bytes, {}",
                body.len(),
                text(&output)
            );
        }
    }
}

/// Runs our client against `server` in device mode (DEV at 1.0.0, one
/// before the images') with `credentials`, into `out`: the body written
/// and what it printed.
fn our_client(
    server: &TestServer,
    credentials: &[&str],
    block: &str,
    out: &Path,
) -> (Vec<u8>, Output) {
    let _ = std::fs::remove_file(out);
    let output = support::run_bounded(
        Command::new(support::CLIENT_BIN)
            .arg(format!("coaps://{}", server.addr))
            .args(["--pid", "DEV", "--type", "3", "--version", "1.0.0"])
            .args(["-b", block, "--timeout-ms", "300", "-o"])
            .arg(out)
            .args(credentials),
        RUN_TIMEOUT,
    );
    (std::fs::read(out).unwrap_or_default(), output)
}

#[test]
fn our_client_downloads_with_a_certificate_or_a_raw_public_key_and_checks_the_server() {
    let Some((fx, pki)) = fixture("certs-client") else {
        return;
    };
    let dev = fx.image("DEV");
    let out = fx.out.path().join("client");
    let (cert, key, ca, other_ca) = (
        pki.pem("dev1"),
        pki.key("dev1"),
        pki.pem("ca"),
        pki.pem("other"),
    );
    let (raw, server_raw, stranger) =
        (pki.key("mote1"), pki.pem("server-rpk"), pki.key("stranger"));
    let server_print = format!("sha256:{}", pki.fingerprint("server-rpk"));
    let certificate = ["--cert", &cert, "--key", &key, "--ca", &ca];
    let raw_key = ["--rpk-key", &raw, "--rpk-server", &server_raw];
    let raw_key_by_print = ["--rpk-key", &raw, "--rpk-server", &server_print];
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = server(&fx, &pki, listen);
        for block in ["64", "1024"] {
            for credentials in [&certificate[..], &raw_key[..], &raw_key_by_print[..]] {
                let (body, output) = our_client(&server, credentials, block, &out);
                assert!(
                    output.status.code() == Some(0) && body == dev.bytes,
                    "{listen} -b {block} {credentials:?}: {} bytes, {}",
                    body.len(),
                    text(&output)
                );
            }
        }
    }
    let server = server(&fx, &pki, "127.0.0.1:0");
    // The server's certificate is not from the CA the client trusts; the
    // server's key is not the one the client expects; the client's key is
    // not on the server's list.
    for (credentials, said) in [
        (
            vec!["--cert", &cert, "--key", &key, "--ca", &other_ca],
            "refused: UnknownCa",
        ),
        (
            vec!["--rpk-key", &raw, "--rpk-server", &pki.pem("mote1")],
            "refused: UnknownKey",
        ),
        (
            vec!["--rpk-key", &stranger, "--rpk-server", &server_raw],
            "description=49",
        ),
    ] {
        let (body, output) = our_client(&server, &credentials, "1024", &out);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{credentials:?}: {}",
            text(&output)
        );
        assert!(body.is_empty(), "{credentials:?} got bytes");
        assert!(
            text(&output).contains(said),
            "{credentials:?}: {}",
            text(&output)
        );
    }
}

/// Our client with a certificate takes the server's only when it names
/// the server meant (RFC 9525): the URI's host 127.0.0.1 among its
/// subjectAltName IP addresses, or the name `--server-name` gives among
/// its DNS names (in any case); the CN only when the certificate has no
/// subjectAltName. A certificate of the fleet's CA naming another
/// server (its CN 127.0.0.1 does not count beside a subjectAltName), or
/// a device's certificate without an extended key usage, is refused
/// before the client's Finished, with exit status 1 and the names.
#[test]
fn our_client_takes_only_a_server_certificate_naming_the_server() {
    let Some((fx, pki)) = fixture("certs-names") else {
        return;
    };
    pki.issue("ca", "elsewhere", "127.0.0.1", "server_elsewhere", None);
    pki.issue("ca", "cn-only", "127.0.0.1", "server_no_san", None);
    pki.issue("ca", "cn-other", "ota.test", "server_no_san", None);
    pki.issue("ca", "device", "dev9", "no_eku", None);
    let dev = fx.image("DEV");
    let out = fx.out.path().join("client");
    let (cert, key, ca) = (pki.pem("dev1"), pki.key("dev1"), pki.pem("ca"));
    let certificate = ["--cert", &cert, "--key", &key, "--ca", &ca];
    let refused = Some("WrongName");
    for (served, name, outcome) in [
        ("server", None, None),
        ("server", Some("LocalHost"), None),
        ("server", Some("ota.test"), refused),
        (
            "elsewhere",
            None,
            Some("it names DNS:ota.test, not 127.0.0.1"),
        ),
        ("elsewhere", Some("OTA.test"), None),
        ("elsewhere", Some("127.0.0.1"), refused),
        ("cn-only", None, None),
        ("cn-other", None, Some("no subjectAltName, CN ota.test")),
        ("cn-other", Some("ota.test"), None),
        ("device", None, refused),
    ] {
        let args = [
            "--cert",
            &pki.pem(served),
            "--key",
            &pki.key(served),
            "--ca",
            &ca,
        ];
        let server = fx.server("127.0.0.1:0", &args);
        let mut credentials = certificate.to_vec();
        credentials.extend(name.map(|n| ["--server-name", n]).iter().flatten());
        let (body, output) = our_client(&server, &credentials, "1024", &out);
        let what = format!("{served} --server-name {name:?}: {}", text(&output));
        match outcome {
            None => assert!(
                output.status.code() == Some(0) && body == dev.bytes,
                "{what}: {} bytes",
                body.len()
            ),
            Some(said) => {
                assert_eq!(output.status.code(), Some(1), "{what}");
                assert!(body.is_empty(), "{what}: got bytes");
                assert!(text(&output).contains(said), "{what}");
            }
        }
    }
}

#[test]
fn our_client_refuses_mixed_or_incomplete_credentials() {
    for (args, said) in [
        (
            &[
                "coap://127.0.0.1:1/.well-known/core",
                "--cert",
                "c",
                "--key",
                "k",
                "--ca",
                "a",
            ][..],
            "go with a coaps:// URI",
        ),
        (
            &[
                "coaps://127.0.0.1:1/.well-known/core",
                "--cert",
                "c",
                "--key",
                "k",
            ][..],
            "--cert, --key and --ca go together",
        ),
        (
            &[
                "coaps://127.0.0.1:1/.well-known/core",
                "--rpk-key",
                "k",
                "--rpk-server",
                "s",
                "--server-name",
                "ota.test",
            ][..],
            "--server-name goes with a certificate",
        ),
        (
            &["coaps://127.0.0.1:1/.well-known/core", "--rpk-key", "k"][..],
            "--rpk-key and --rpk-server go together",
        ),
        (
            &[
                "coaps://127.0.0.1:1/.well-known/core",
                "--psk-identity",
                "a",
                "--psk-key",
                "b",
                "--rpk-key",
                "k",
            ][..],
            "give one of",
        ),
        (
            &["coaps://127.0.0.1:1/.well-known/core"][..],
            "a raw public key",
        ),
    ] {
        let output =
            support::run_bounded(Command::new(support::CLIENT_BIN).args(args), RUN_TIMEOUT);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(text(&output).contains(said), "{args:?}: {}", text(&output));
    }
}

#[test]
fn sighup_rereads_the_names_file_and_the_raw_key_list() {
    if !support::require_program("coap-client-gnutls") {
        return;
    }
    let Some((fx, pki)) = fixture("certs-sighup") else {
        return;
    };
    let other = fx.image("OTHER");
    let server = server(&fx, &pki, "127.0.0.1:0");
    let other_uri = format!("coaps://{}/updates/{}", server.addr, other.id);
    let out = fx.out.path().join("sighup");
    let (body, output) = download("coap-client-gnutls", &pki, "dev1", 1024, &other_uri, &out);
    assert!(
        body.is_empty() && text(&output).contains("4.03"),
        "{}",
        text(&output)
    );
    let (body, _) = download_raw(&pki, "mote1", 1024, &other_uri, &out);
    assert!(body.is_empty(), "mote-1 may fetch DEV only");
    // dev1 may now fetch OTHER; mote-1's key is no longer listed.
    pki.dir.write("names", b"dev1:DEV,OTHER\n");
    let list = format!("ops-rpk sha256:{}\n", pki.fingerprint("ops-rpk"));
    pki.dir.write("rpk-clients", list.as_bytes());
    server.signal(libc::SIGHUP);
    // The reload happens on the loop's next turn; bounded retries.
    let started = std::time::Instant::now();
    loop {
        let (body, output) = download("coap-client-gnutls", &pki, "dev1", 1024, &other_uri, &out);
        if body == other.bytes {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "names not reread: {}",
            text(&output)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (body, output) = download_raw(&pki, "mote1", 1024, &other_uri, &out);
    assert!(body.is_empty(), "a removed key got bytes");
    assert!(text(&output).contains("Alert '49'"), "{}", text(&output));
    let (body, output) = download_raw(&pki, "ops-rpk", 1024, &other_uri, &out);
    assert!(body == other.bytes, "ops-rpk: {}", text(&output));
}

/// The check of a client's certificate itself, on certificates `openssl`
/// makes: a certificate of the fleet's CA within its dates, made for a
/// client, is accepted under the first of its names the names file holds
/// (CN, then subjectAltName); one not yet valid or expired, made for a
/// server, without digitalSignature, a CA's, with an unknown critical
/// extension, from another CA with the same name, or signed by a device
/// certificate is refused, each with its reason. A `--ca` file of a
/// device certificate, or of a version 3 certificate without
/// basicConstraints, is refused at load.
#[test]
fn the_certificate_check_refuses_what_is_not_a_fleet_client_certificate() {
    use iot_ota::dtls::{CertificateAuth, CertifiedKey, DeviceNames, Refusal, TrustAnchors};
    let Some(pki) = Pki::new("cert-check") else {
        return;
    };
    pki.ca("ca", "Fleet CA");
    pki.issue("ca", "server", "ota.test", "server", None);
    pki.issue("ca", "dev1", "dev1", "client", None);
    let issue = |name: &str, kind: &str| pki.issue("ca", name, "dev1", kind, None);
    issue("keyenc", "key_encipherment");
    issue("cadev", "ca_client");
    issue("critical", "unknown_critical");
    issue("server-as-client", "server");
    pki.issue("ca", "alias", "stranger", "alias_ops", None);
    let dates = |start, end| Some((start, end));
    let future = dates("20990101000000Z", "21000101000000Z");
    pki.issue("ca", "future", "dev1", "client", future);
    let past = dates("20200101000000Z", "20210101000000Z");
    pki.issue("ca", "expired", "dev1", "client", past);
    pki.ca("other", "Fleet CA");
    pki.issue("other", "rogue", "dev1", "client", None);
    // dev1's key signs a certificate of its own making for ops.
    pki.database("dev1");
    pki.issue("dev1", "minted", "ops", "client", None);

    let read = |name: &str| std::fs::read_to_string(pki.pem(name)).expect("pem");
    let der = |name: &str| {
        let out = format!("{name}.der");
        pki.openssl(&[
            "x509",
            "-in",
            &pki.pem(name),
            "-outform",
            "DER",
            "-out",
            &out,
        ]);
        std::fs::read(pki.path(&out)).expect("der")
    };
    let key = std::fs::read_to_string(pki.key("server")).expect("key");
    let server = CertifiedKey::from_pem(&read("server"), &key).unwrap();
    let anchors = TrustAnchors::from_pem(&read("ca")).expect("the fleet CA");
    let names = DeviceNames::parse("dev1:DEV\nops\n").unwrap();
    let auth = CertificateAuth::new(server, anchors, Some(names));
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let (name, pids) = auth
        .check(&der("dev1"), now_s)
        .expect("dev1 is the fleet's");
    assert_eq!(name, b"dev1");
    assert!(pids.allows(b"DEV") && !pids.allows(b"OTHER"));
    let (name, pids) = auth
        .check(&der("alias"), now_s)
        .expect("alias is the fleet's");
    assert_eq!(
        name, b"ops",
        "CN stranger is not in the names file, its SAN ops is"
    );
    assert!(pids.allows(b"OTHER"));
    for (cert, refusal) in [
        ("future", Refusal::Expired),
        ("expired", Refusal::Expired),
        ("server-as-client", Refusal::Unsupported),
        ("keyenc", Refusal::Unsupported),
        ("cadev", Refusal::Unsupported),
        ("critical", Refusal::Unsupported),
        ("rogue", Refusal::UnknownCa),
        ("minted", Refusal::UnknownCa),
    ] {
        assert_eq!(auth.check(&der(cert), now_s), Err(refusal), "{cert}");
    }
    // A day after dev1's end it is refused too.
    assert_eq!(
        auth.check(&der("dev1"), now_s + 367 * 86_400),
        Err(Refusal::Expired)
    );

    let refused = TrustAnchors::from_pem(&read("dev1")).unwrap_err();
    assert!(refused.contains("not a CA certificate"), "{refused}");
    // A self-signed version 3 certificate without basicConstraints.
    pki.new_key("nobc");
    pki.dir.write(
        "nobc.cnf",
        b"[req]\ndistinguished_name = dn\nx509_extensions = ext\n[dn]\n\
          [ext]\nsubjectKeyIdentifier = hash\n",
    );
    pki.openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "nobc.key",
        "-subj",
        "/CN=No BC",
        "-config",
        "nobc.cnf",
        "-days",
        "30",
        "-out",
        "nobc.pem",
    ]);
    let refused = TrustAnchors::from_pem(&read("nobc")).unwrap_err();
    assert!(refused.contains("not a CA certificate"), "{refused}");
}
