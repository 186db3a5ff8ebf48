//! coaps with tinydtls as the client, the DTLS stack of RIOT and Contiki
//! motes: aiocoap (pip `aiocoap`, whose coaps transport is tinydtls through
//! pip `DTLSSocket`) over 127.0.0.1 and [::1]. `aiocoap-client
//! --credentials FILE coaps://...` fetches images by id byte for byte; a
//! short aiocoap script (aiocoap-client cannot ask for a block size on a
//! GET) fetches them with Block2 from the first block at 64 and 1024 bytes,
//! as a mote does, checking every block's number, size and length; an
//! identity allowed one product gets 4.03 for another's image, which an
//! identity allowed all products gets.
//!
//! Only the server's public behaviour is used: its command line, the
//! "listening on" line of its log, and what goes over the wire.
#![cfg(feature = "dtls")]

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::coaps::CoapsFixture;
use support::{TestImage, TestServer};

/// Bound on one aiocoap run (one takes about half a second here).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// dev1 may fetch DEV images only; ops may fetch all.
const PSK_FILE: &str = "# test keys\n\
                        dev1:dev1-secret-key:DEV\n\
                        ops:ops-secret-key\n";

/// Fetches a URI block by block with aiocoap over tinydtls, asking for
/// Block2 (NUM, 0, SZX) from block 0 on, as a mote does:
/// `python3 -c SCRIPT CREDENTIALS URI SZX OUT MAX_BLOCKS`. Every answer
/// must carry the block asked for, full unless it is the last; the body is
/// written to OUT and a line "CODE: N blocks of SIZE B, LEN bytes via
/// MODULE" printed, MODULE being the aiocoap transport that carried it. An
/// error code is printed to stderr with its payload, exit status 1. At
/// most MAX_BLOCKS requests, each given up after 30 s.
const BLOCKWISE_SCRIPT: &str = r#"
import asyncio, json, sys

import aiocoap
import DTLSSocket  # noqa: F401 (tinydtls: without it aiocoap has no coaps)
from aiocoap.optiontypes import BlockOption

CREDENTIALS, URI, OUT = sys.argv[1], sys.argv[2], sys.argv[4]
SZX, MAX_BLOCKS = int(sys.argv[3]), int(sys.argv[5])
SIZE = 2 ** (SZX + 4)


def fail(text):
    print(text, file=sys.stderr)
    sys.exit(1)


async def main():
    context = await aiocoap.Context.create_client_context()
    with open(CREDENTIALS) as f:
        context.client_credentials.load_from_dict(json.load(f))
    body = b""
    try:
        for num in range(MAX_BLOCKS):
            request = aiocoap.Message(code=aiocoap.GET, uri=URI)
            request.opt.block2 = BlockOption.BlockwiseTuple(num, False, SZX)
            response = await asyncio.wait_for(
                context.request(request, handle_blockwise=False).response, 30
            )
            transport = type(response.remote).__module__
            if not response.code.is_successful():
                fail(f"{response.code} at block {num} via {transport}: {response.payload!r}")
            block = response.opt.block2
            if block is None or (block.block_number, block.size_exponent) != (num, SZX):
                fail(f"asked for block {num} of {SIZE} B, got Block2 {block}")
            if len(response.payload) > SIZE or (block.more and len(response.payload) != SIZE):
                fail(f"block {num} ({block}) carries {len(response.payload)} bytes")
            body += response.payload
            if not block.more:
                with open(OUT, "wb") as f:
                    f.write(body)
                print(f"{response.code}: {num + 1} blocks of {SIZE} B, {len(body)} bytes via {transport}")
                return
        fail(f"no last block within {MAX_BLOCKS} blocks")
    finally:
        await context.shutdown()


asyncio.run(main())
"#;

/// True when aiocoap-client, python3, and aiocoap with DTLSSocket for
/// python3 are there. When they are not: under CI (`CI=true`) the test
/// fails; on a developer's machine it is skipped with a note.
fn require_tinydtls() -> bool {
    if !support::require_program("aiocoap-client") || !support::require_program("python3") {
        return false;
    }
    let import = support::run_bounded(
        Command::new("python3").args(["-c", "import aiocoap, DTLSSocket"]),
        RUN_TIMEOUT,
    );
    let found = import.status.success();
    if !found {
        // The traceback's last line: the module missing.
        let stderr = String::from_utf8_lossy(&import.stderr);
        let why = stderr.lines().last().unwrap_or_default();
        if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
            panic!("python3's aiocoap and DTLSSocket are required under CI=true: {why}");
        }
        eprintln!(
            "SKIPPED: python3 cannot import aiocoap and DTLSSocket \
             (pip install aiocoap==0.4.17 DTLSSocket==0.2.3; DTLSSocket builds \
             with autoconf, automake and libtool): {why}"
        );
    }
    found
}

/// DEV: 5000 bytes, 79 blocks of 64 and 5 of 1024, the last ones short.
/// OTHER: 4096 bytes, a multiple of both sizes: its last block is full and
/// has no more after it.
fn fixture(tag: &str) -> CoapsFixture {
    CoapsFixture::new(tag, &[("DEV", 5000), ("OTHER", 4096)], PSK_FILE)
}

/// An aiocoap credentials file (JSON, the name must end in .json)
/// giving `identity` and `key` for every coaps URI of `server`.
fn credentials(fx: &CoapsFixture, server: &TestServer, identity: &str, key: &str) -> PathBuf {
    let json = format!(
        r#"{{"coaps://{}/*": {{"dtls": {{"psk": {{"ascii": "{key}"}}, "client-identity": {{"ascii": "{identity}"}}}}}}}}"#,
        server.addr
    );
    let path = fx.keys.write(
        &format!("{identity}-{}.json", server.addr.port()),
        json.as_bytes(),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn updates_uri(addr: SocketAddr, image: &TestImage) -> String {
    format!("coaps://{addr}/updates/{}", image.id)
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `aiocoap-client --credentials CREDENTIALS URI`, bounded.
fn aiocoap_client(credentials: &Path, uri: &str) -> Output {
    support::run_bounded(
        Command::new("aiocoap-client")
            .arg("--credentials")
            .arg(credentials)
            .arg(uri),
        RUN_TIMEOUT,
    )
}

/// [`BLOCKWISE_SCRIPT`] for `uri` at `2^(szx+4)`-byte blocks into `out`:
/// the body written (empty when none), and what the script printed.
fn fetch_blockwise(
    credentials: &Path,
    uri: &str,
    szx: u8,
    len: usize,
    out: &Path,
) -> (Vec<u8>, Output) {
    let _ = std::fs::remove_file(out);
    let size = 1usize << (szx + 4);
    // One request per block and one more, to see a server that never
    // clears the more bit fail rather than loop.
    let max_blocks = (len / size + 2).to_string();
    let output = support::run_bounded(
        Command::new("python3")
            .args(["-c", BLOCKWISE_SCRIPT])
            .arg(credentials)
            .arg(uri)
            .arg(szx.to_string())
            .arg(out)
            .arg(max_blocks),
        RUN_TIMEOUT,
    );
    (std::fs::read(out).unwrap_or_default(), output)
}

#[test]
fn aiocoap_client_over_tinydtls_fetches_by_id_byte_exact() {
    if !require_tinydtls() {
        return;
    }
    let fx = fixture("tinydtls-cli");
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = fx.server(listen, &[]);
        for (identity, key, pid) in [
            ("dev1", "dev1-secret-key", "DEV"),
            ("ops", "ops-secret-key", "OTHER"),
        ] {
            let image = fx.image(pid);
            let credentials = credentials(&fx, &server, identity, key);
            let output = aiocoap_client(&credentials, &updates_uri(server.addr, image));
            assert!(
                output.status.success() && output.stdout == image.bytes,
                "{listen} {identity} {pid}: {} bytes of {}, {}\nserver log:\n{}",
                output.stdout.len(),
                image.bytes.len(),
                text(&output),
                server.log()
            );
        }
    }
}

#[test]
fn tinydtls_fetches_by_id_with_64_and_1024_byte_blocks_byte_exact() {
    if !require_tinydtls() {
        return;
    }
    let fx = fixture("tinydtls-blocks");
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = fx.server(listen, &[]);
        for (identity, key, pid) in [
            ("dev1", "dev1-secret-key", "DEV"),
            ("ops", "ops-secret-key", "OTHER"),
        ] {
            let image = fx.image(pid);
            let credentials = credentials(&fx, &server, identity, key);
            for (szx, size) in [(2u8, 64usize), (6, 1024)] {
                let out = fx.out.path().join(format!("{pid}-{size}"));
                let len = image.bytes.len();
                let (body, output) = fetch_blockwise(
                    &credentials,
                    &updates_uri(server.addr, image),
                    szx,
                    len,
                    &out,
                );
                let blocks = len.div_ceil(size);
                let expected = format!(
                    "2.05 Content: {blocks} blocks of {size} B, {len} bytes \
                     via aiocoap.transports.tinydtls"
                );
                assert!(
                    output.status.success()
                        && body == image.bytes
                        && String::from_utf8_lossy(&output.stdout).trim() == expected,
                    "{listen} {identity} {pid} at {size} B: {} bytes of {len}, \
                     expected \"{expected}\", {}\nserver log:\n{}",
                    body.len(),
                    text(&output),
                    server.log()
                );
            }
        }
    }
}

#[test]
fn tinydtls_identity_gets_4_03_for_another_products_image_and_ops_gets_it() {
    if !require_tinydtls() {
        return;
    }
    let fx = fixture("tinydtls-forbidden");
    let other = fx.image("OTHER");
    let server = fx.server("127.0.0.1:0", &[]);
    let uri = updates_uri(server.addr, other);
    let dev1 = credentials(&fx, &server, "dev1", "dev1-secret-key");
    let refused = aiocoap_client(&dev1, &uri);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refused.status.code() == Some(1)
            && refused.stdout.is_empty()
            && stderr.lines().next() == Some("4.03 Forbidden"),
        "dev1 for OTHER: {}\nserver log:\n{}",
        text(&refused),
        server.log()
    );
    // At 64-byte blocks too: refused at the first block, nothing written.
    let out = fx.out.path().join("other-64");
    let (body, refused) = fetch_blockwise(&dev1, &uri, 2, other.bytes.len(), &out);
    assert!(
        refused.status.code() == Some(1)
            && body.is_empty()
            && String::from_utf8_lossy(&refused.stderr)
                .starts_with("4.03 Forbidden at block 0 via aiocoap.transports.tinydtls"),
        "dev1 for OTHER at 64 B: {}\nserver log:\n{}",
        text(&refused),
        server.log()
    );
    // The same image for an identity allowed every product: the refusal
    // was dev1's, not the image's or the session's.
    let ops = credentials(&fx, &server, "ops", "ops-secret-key");
    let allowed = aiocoap_client(&ops, &uri);
    assert!(
        allowed.status.success() && allowed.stdout == other.bytes,
        "ops for OTHER: {}\nserver log:\n{}",
        text(&allowed),
        server.log()
    );
}
