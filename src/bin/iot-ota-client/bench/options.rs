//! The command line of `bench`: options, help text, and the parsing into
//! a [`BenchConfig`].

use crate::coap::{Retransmission, Target};
use crate::options::number;
use getopts::{Matches, Options};
use iot_ota::firmware;
use iot_ota::wire::Block;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Upper bound of `--devices` and `--ports` (each is a file descriptor).
const MAX_SOCKETS: usize = 60_000;

/// What the devices download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /updates/{id}`, OFFSET as a 4-byte payload when not 0.
    Id([u8; 8]),
    /// The legacy one-request protocol: the device payload with OFFSET in
    /// every request (the reference protocol's devices do).
    Legacy {
        pid: Vec<u8>,
        fw_type: u8,
        version: u32,
    },
}

impl Route {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Route::Id(_) => "id",
            Route::Legacy { .. } => "legacy",
        }
    }
}

/// Everything `bench` needs, from the command line.
#[derive(Debug, Clone)]
pub(crate) struct BenchConfig {
    pub(crate) server: SocketAddr,
    pub(crate) devices: usize,
    /// `Some(P)`: requests leave round-robin from a pool of P sockets.
    pub(crate) ports: Option<usize>,
    pub(crate) route: Route,
    pub(crate) offset: u32,
    pub(crate) szx: u8,
    /// The expected body, `image[offset..]`; empty in baseline mode when no
    /// image was given.
    pub(crate) body: Vec<u8>,
    pub(crate) baseline: bool,
    /// Never block: poll the head socket continuously.
    pub(crate) spin: bool,
    pub(crate) duration: Duration,
    pub(crate) downloads: Option<u32>,
    /// ACK_TIMEOUT from `--timeout-ms`; MAX_RETRANSMIT as RFC 7252 says.
    pub(crate) retransmission: Retransmission,
}

pub(crate) fn bench_options() -> Options {
    let mut o = Options::new();
    o.optopt(
        "n",
        "devices",
        "simulated devices, 1..60000 (default: 16)",
        "N",
    );
    o.optopt(
        "",
        "ports",
        "spread requests round-robin over P client sockets, P >= N (id path only; default: one socket per device)",
        "P",
    );
    o.optopt(
        "",
        "path",
        "id (GET /updates/{id}, default) or legacy (GET /updates with the device payload)",
        "PATH",
    );
    o.optopt("", "id", "image id, 8 hex digits (--path id)", "HEX");
    o.optopt(
        "",
        "pid",
        "product id the devices report (--path legacy)",
        "PID",
    );
    o.optopt(
        "",
        "type",
        "firmware type, APP or 0..255 (--path legacy; default: APP)",
        "TYPE",
    );
    o.optopt(
        "",
        "version",
        "version the devices run, M.m.b or a number (--path legacy; default: 0.0.0)",
        "V",
    );
    o.optopt(
        "",
        "offset",
        "byte offset the body starts at (default: 0)",
        "BYTES",
    );
    o.optopt(
        "",
        "expect",
        "the image file: every block is compared with it",
        "FILE",
    );
    o.optopt(
        "b",
        "block-size",
        "Block2 size asked for, 16..1024 (default: 1024)",
        "BYTES",
    );
    o.optflag(
        "",
        "baseline",
        "the target is `iot-ota-client baseline`: any reply completes a request, nothing is checked",
    );
    o.optflag(
        "",
        "spin",
        "never sleep while waiting for a reply (when the generator has a CPU of its own, e.g. under taskset)",
    );
    o.optopt(
        "",
        "duration-ms",
        "length of the run (default: 2000; with --downloads a cap, default 60000)",
        "MS",
    );
    o.optopt(
        "",
        "downloads",
        "stop each device after K whole downloads",
        "K",
    );
    o.optopt(
        "",
        "timeout-ms",
        "first retransmission timeout, doubled after each (default: 2000, RFC 7252 ACK_TIMEOUT)",
        "MS",
    );
    o.optflag("h", "help", "print this help");
    o
}

/// The help text above the options.
pub(crate) const BENCH_BRIEF: &str = "Usage: iot-ota-client bench SERVER [--devices N] [--ports P] [--path id|legacy] \
                 [--id HEX | --pid PID --type T --version V] [--offset BYTES] [--expect FILE] \
                 [--block-size BYTES] [--baseline] [--spin] [--duration-ms MS | --downloads K] [--timeout-ms MS]\n\n\
                 Simulates N devices, each downloading a whole image block by block with Confirmable \
                 requests (stop-and-wait, its own Message IDs and token), all in one thread, and checks \
                 every block against FILE. SERVER is HOST:PORT (port 5683 when omitted).\n\
                 Prints one human line, then one machine-readable line:\n  \
                 RESULT mode=.. target=.. devices=.. ports=.. block_size=.. blocks=.. secs=.. blocks_per_s=.. \
                 p50_us=.. p99_us=.. max_us=.. retransmissions=.. failures=.. mismatches=.. stale=.. downloads=.. \
                 late_heads=.. sweeps=.. cpu_pct=..\n\
                 (latency: first transmission to checked reply; failures: exchanges given up after 4 \
                 retransmissions; stale: duplicate or unmatched replies; late_heads: requests found lost; \
                 cpu_pct: the generator's own CPU use)\n\
                 Exit status: 0 when every block matched, 1 on a mismatch or when no block arrived, 2 on a usage error.";

pub(crate) fn bench_config(m: &Matches) -> Result<BenchConfig, String> {
    let server_text = match m.free.as_slice() {
        [one] => one,
        [] => return Err("missing SERVER (e.g. 127.0.0.1:5683)".to_owned()),
        [_, extra, ..] => return Err(format!("unexpected argument '{extra}'")),
    };
    let server = Target::parse(server_text)
        .map_err(|e| e.to_string())
        .and_then(|target| match target.secure {
            // One DTLS session per simulated device is not what the load
            // generator measures.
            true => Err("the load generator speaks plain coap only".to_owned()),
            false => target.resolve().map_err(|e| e.to_string()),
        })
        .map_err(|e| format!("cannot resolve SERVER '{server_text}': {e}"))?;
    let devices = number(m, "devices", 16usize, |n| (1..=MAX_SOCKETS).contains(n))?;
    let ports = match m.opt_str("ports") {
        None => None,
        Some(_) => Some(
            number(m, "ports", 0usize, |p| (devices..=MAX_SOCKETS).contains(p)).map_err(|e| {
                format!("{e}: use at least as many ports as devices ({devices}) and at most {MAX_SOCKETS}")
            })?,
        ),
    };
    let baseline = m.opt_present("baseline");
    let route = match m.opt_str("path").as_deref().unwrap_or("id") {
        "id" => {
            let id = match m.opt_str("id") {
                Some(text) => {
                    parse_id(&text).ok_or_else(|| format!("invalid --id '{text}': 8 hex digits"))?
                }
                None if baseline => *b"00000000",
                None => return Err("--path id needs --id HEX".to_owned()),
            };
            Route::Id(id)
        }
        "legacy" => {
            let pid = m.opt_str("pid").map(String::into_bytes);
            let pid = match pid {
                Some(pid) if (1..=255).contains(&pid.len()) => pid,
                Some(_) => return Err("--pid must be 1 to 255 bytes".to_owned()),
                None if baseline => b"BASELINE".to_vec(),
                None => return Err("--path legacy needs --pid PID".to_owned()),
            };
            let fw_type = match m.opt_str("type") {
                None => firmware::TYPE_APP,
                Some(t) => firmware::parse_type(t.as_bytes())
                    .ok_or_else(|| format!("invalid --type '{t}': APP or 0..255"))?,
            };
            let version = match m.opt_str("version") {
                None => 0,
                Some(v) => firmware::parse_version(v.as_bytes())
                    .ok_or_else(|| format!("invalid --version '{v}': M.m.b or a number"))?,
            };
            Route::Legacy {
                pid,
                fw_type,
                version,
            }
        }
        other => return Err(format!("invalid --path '{other}': id or legacy")),
    };
    if ports.is_some() && matches!(route, Route::Legacy { .. }) {
        return Err(
            "--ports needs --path id: a legacy continuation belongs to one client port".to_owned(),
        );
    }
    let offset = number(m, "offset", 0u32, |_| true)?;
    let block_size = number(m, "block-size", 1024usize, |b| {
        Block::szx_for_size(*b).is_some()
    })
    .map_err(|e| format!("{e}: use 16, 32, 64, 128, 256, 512 or 1024"))?;
    let szx = Block::szx_for_size(block_size).unwrap_or(Block::MAX_SZX);
    let body = match m.opt_str("expect") {
        Some(file) => {
            let image = std::fs::read(PathBuf::from(&file))
                .map_err(|e| format!("cannot read --expect {file}: {e}"))?;
            image
                .get(offset as usize..)
                .ok_or_else(|| {
                    format!(
                        "--offset {offset} is beyond the {} bytes of {file}",
                        image.len()
                    )
                })?
                .to_vec()
        }
        None if baseline => Vec::new(),
        None => {
            return Err(
                "--expect FILE is needed to check the blocks (or use --baseline)".to_owned(),
            )
        }
    };
    let downloads = match m.opt_str("downloads") {
        None => None,
        Some(_) => Some(number(m, "downloads", 1u32, |k| *k > 0)?),
    };
    let default_ms = if downloads.is_some() { 60_000 } else { 2_000 };
    let duration = Duration::from_millis(number(m, "duration-ms", default_ms, |ms| *ms > 0)?);
    let ack_timeout = Duration::from_millis(number(m, "timeout-ms", 2_000u64, |ms| {
        (1..=60_000).contains(ms)
    })?);
    Ok(BenchConfig {
        server,
        devices,
        ports,
        route,
        offset,
        szx,
        body,
        baseline,
        spin: m.opt_present("spin"),
        duration,
        downloads,
        retransmission: Retransmission {
            ack_timeout,
            ..Retransmission::default()
        },
    })
}

pub(crate) fn parse_id(text: &str) -> Option<[u8; 8]> {
    let bytes: [u8; 8] = text.as_bytes().try_into().ok()?;
    bytes
        .iter()
        .all(u8::is_ascii_hexdigit)
        .then(|| bytes.map(|b| b.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::bench_main;
    use std::process::ExitCode;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_checked() {
        let parse = |list: &[&str]| {
            let m = bench_options().parse(args(list)).unwrap();
            bench_config(&m)
        };
        assert!(parse(&[]).unwrap_err().contains("missing SERVER"));
        assert!(parse(&["127.0.0.1:1"]).unwrap_err().contains("--id"));
        assert!(parse(&["127.0.0.1:1", "--id", "xyz"])
            .unwrap_err()
            .contains("8 hex"));
        assert!(parse(&["127.0.0.1:1", "--baseline", "-b", "100"])
            .unwrap_err()
            .contains("1024"));
        assert!(
            parse(&["127.0.0.1:1", "--baseline", "-n", "8", "--ports", "4"])
                .unwrap_err()
                .contains("at least as many")
        );
        assert!(parse(&[
            "127.0.0.1:1",
            "--baseline",
            "--path",
            "legacy",
            "--ports",
            "20"
        ])
        .unwrap_err()
        .contains("--path id"));
        let ok = parse(&[
            "127.0.0.1",
            "--baseline",
            "--path",
            "legacy",
            "--version",
            "1.2.3",
        ])
        .unwrap();
        assert_eq!(ok.server.port(), crate::coap::DEFAULT_PORT);
        assert!(matches!(
            ok.route,
            Route::Legacy {
                version: 0x0102_0003,
                fw_type: 3,
                ..
            }
        ));
        assert_eq!(bench_main(&args(&["--help"])), ExitCode::SUCCESS);
        assert_eq!(
            bench_main(&args(&["--bogus"])),
            ExitCode::from(crate::USAGE_EXIT)
        );
        assert_eq!(
            crate::baseline::baseline_main(&args(&["--size", "0"])),
            ExitCode::from(crate::USAGE_EXIT)
        );
    }
}
