//! `iot-ota-client`: a device emulator and operator tool on the same `wire`
//! code as the server, and, built with the `loadgen` feature only, the
//! `bench` and `baseline` subcommands of `make bench`. The protocol work is
//! in [`coap`] (sans-IO) and [`client`] (the socket loop); this file reads
//! the command line, calls them, and turns the outcome into output and an
//! exit code. It never builds or parses a message itself.
//!
//! The load generator is a feature of its own, off by default, because the
//! packages install this program: `baseline` answers any datagram from
//! any address with 1 KiB or more (an amplifier), and `bench` sends
//! traffic as fast as it can to any address it is given. Neither belongs
//! on a router or a Raspberry Pi that only needs the operator's tool, so
//! the builds the packages make (`cargo deb`, OpenWrt, `make dist`) leave
//! them out, and `make bench` builds them in.
//!
//! Exit codes: 0 downloaded (or GET done), 3 no update available, 1 error
//! (timeout, unreachable, error response, inconsistent body), 2 usage.

#[cfg(feature = "loadgen")]
mod baseline;
#[cfg(feature = "loadgen")]
mod bench;
mod client;
mod coap;
#[cfg(feature = "dtls")]
mod secure;

use client::{BodyRequest, Client, ClientError, Transfer};
use coap::{
    DevicePayload, Get, Progress, Resource, Response, Retransmission, Target, DEFAULT_BLOCK_SIZE,
};
use coap_lite::ResponseType;
use getopts::{Fail, Options};
use iot_ota::firmware::{self, DeviceRequest};
use iot_ota::wire::Block;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const PROGRAM: &str = "iot-ota-client";
/// Exit status of a failed run (of every subcommand).
pub(crate) const ERROR_EXIT: u8 = 1;
/// Exit status of a usage error (of every subcommand), and of `bench` or
/// `baseline` in a build without the load generator.
pub(crate) const USAGE_EXIT: u8 = 2;
const NO_UPDATE_EXIT: u8 = 3;
/// Upper bound of --timeout-ms: an hour-long ACK_TIMEOUT is a typo.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// What to ask the server.
enum Mode {
    /// Device emulation: lookup then download by id, or the legacy
    /// one-request protocol.
    Update {
        pid: Vec<u8>,
        fw_type: u8,
        version: u32,
        offset: Option<u32>,
        legacy: bool,
    },
    /// A plain block-wise GET.
    Get(Resource),
}

impl Mode {
    /// The lookup a device in this mode sends (its PID, TYPE and version,
    /// no OFFSET); `None` for a plain GET.
    fn lookup(&self) -> Option<DeviceRequest<'_>> {
        match self {
            Mode::Update {
                pid,
                fw_type,
                version,
                ..
            } => Some(DeviceRequest {
                pid,
                fw_type: *fw_type,
                version: *version,
                offset: None,
            }),
            Mode::Get(_) => None,
        }
    }
}

/// Everything the command line decides.
struct Config {
    target: Target,
    mode: Mode,
    /// `None`: standard output.
    output: Option<PathBuf>,
    szx: u8,
    params: Retransmission,
    /// `--observe`: stay registered and report every notification.
    observe: bool,
    /// `--count N`: stop after N notifications.
    count: Option<u64>,
    /// The identity and key of a `coaps://` server.
    #[cfg(feature = "dtls")]
    psk: Option<iot_ota::dtls::ClientPsk>,
}

fn options() -> Options {
    let mut o = Options::new();
    o.optopt(
        "",
        "pid",
        "product id the device sends (device mode)",
        "PID",
    );
    o.optopt(
        "",
        "type",
        "firmware type: APP or 0..255 (default: APP)",
        "TYPE",
    );
    o.optopt(
        "",
        "version",
        "firmware version the device runs, M.m.b or a u32 (device mode)",
        "M.m.b",
    );
    o.optopt(
        "",
        "offset",
        "start the body at byte N of the image (default: 0)",
        "N",
    );
    o.optflag(
        "",
        "legacy",
        "one-request protocol of deployed devices: GET /updates with PID, TYPE, VERSION and OFFSET on every block",
    );
    o.optopt(
        "",
        "get",
        "GET any resource block-wise instead: a path (/.well-known/core, /updates?pid=..) or a coap:// URI",
        "PATH",
    );
    o.optopt(
        "o",
        "output",
        "write the body to FILE, only once it is complete (default or '-': standard output)",
        "FILE",
    );
    o.optopt(
        "b",
        "block-size",
        "Block2 size to ask for, a power of two 16..1024 (default: 1024); the server may answer smaller",
        "BYTES",
    );
    o.optopt(
        "",
        "timeout-ms",
        "ACK_TIMEOUT in milliseconds (default: 2000). The first wait is 1 to 1.5 times it, doubled for each \
         of 4 retransmissions, so a request gives up after 31 to 46.5 times it: lower it for tests on \
         loopback, raise it for slow or lossy links",
        "N",
    );
    o.optflag(
        "",
        "observe",
        "stay registered (RFC 7641 Observe) and report every change: the lookup's answer (and, with -o, \
         download the new image and stop), or a path's new body (written to FILE or standard output \
         each time)",
    );
    o.optopt(
        "",
        "count",
        "with --observe: stop after N notifications (default: run until interrupted)",
        "N",
    );
    #[cfg(feature = "dtls")]
    {
        o.optopt(
            "",
            "psk-identity",
            "coaps: the identity of the pre-shared key (with --psk-key)",
            "ID",
        );
        o.optopt(
            "",
            "psk-key",
            "coaps: the pre-shared key, ASCII or 0x and hex digits (visible in ps: prefer --psk-file)",
            "KEY",
        );
        o.optopt(
            "",
            "psk-file",
            "coaps: read the identity and key from FILE, one identity:key line (not readable by other users)",
            "FILE",
        );
    }
    o.optflag("h", "help", "print this help");
    o.optflag(
        "V",
        "",
        "print the program's version (--version is the device's firmware version)",
    );
    o
}

/// The usage line of the load generator's subcommands, in the builds that
/// have them; nothing in the others, whose help must not offer them.
#[cfg(feature = "loadgen")]
const LOADGEN_USAGE: &str = "       iot-ota-client bench ARGS... | baseline ARGS...   \
     (load generator; see 'iot-ota-client bench --help')\n";
#[cfg(not(feature = "loadgen"))]
const LOADGEN_USAGE: &str = "";

fn usage_text(o: &Options) -> String {
    let brief = format!(
        "Usage: {PROGRAM} SERVER --pid PID [--type TYPE] --version M.m.b [--offset N] [--legacy] [-o FILE] [-b BYTES]\n       \
         {PROGRAM} SERVER --get PATH [-o FILE] [-b BYTES]\n       \
         {PROGRAM} coap://HOST[:PORT]/PATH[?QUERY] [-o FILE] [-b BYTES]\n       \
         {PROGRAM} SERVER --pid PID --version M.m.b --observe [-o FILE] [--count N]\n       \
         {PROGRAM} coap://HOST[:PORT]/PATH --observe [-o FILE] [--count N]\n       \
         {PROGRAM} coaps://HOST[:PORT]/PATH (--psk-identity ID --psk-key KEY | --psk-file FILE) ...\n\
         {LOADGEN_USAGE}\n\
         A CoAP client for iot-ota-server: asks for a firmware update as a device does and downloads it\n\
         (Confirmable requests with RFC 7252 retransmission, Block2 per RFC 7959, Echo per RFC 9175, and\n\
         a wait of Max-Age seconds after 4.29 Too Many Requests), or GETs any resource.\n\n\
         SERVER is HOST:PORT, [IPv6]:PORT or coap://HOST[:PORT][/PATH][?QUERY]; the port defaults to 5683.\n\
         coaps://HOST[:PORT][/PATH] is CoAP over DTLS 1.2 with a pre-shared key (port 5684; builds with\n\
         the dtls feature), in every mode.\n\
         A link-local address needs its interface (zone), by name or index: [fe80::1%eth0]:5683, or\n\
         coap://[fe80::1%25eth0]/PATH in a URI (RFC 6874).\n\
         Device mode sends GET /updates with the device payload (PIDLEN|PID|TYPE|VERSION) and downloads\n\
         /updates/ID of the answer, with OFFSET as payload when --offset is given; with --legacy it sends\n\
         GET /updates with PIDLEN|PID|TYPE|VERSION|OFFSET and a Block2 option for every block instead.\n\
         The body goes to FILE or standard output; a summary line, and a progress line when standard\n\
         error is a terminal, go to standard error.\n\n\
         Exit status: 0 done, 3 no update available (4.04 to the lookup, RST to --legacy), 1 error\n\
         (no answer, unreachable, error response, inconsistent blocks), 2 usage error."
    );
    o.usage(&brief)
}

/// A usage error of `command` (`iot-ota-client` or a subcommand such as
/// `iot-ota-client bench`): one line, a hint, exit 2.
pub(crate) fn usage_error(command: &str, message: &str) -> ExitCode {
    eprintln!("{command}: {message}");
    eprintln!("Try '{command} --help' for more information.");
    ExitCode::from(USAGE_EXIT)
}

/// Parses the arguments of `command` (a subcommand) with `options`.
#[cfg(feature = "loadgen")]
/// `Err` is the exit code when the run is over already: the help, headed
/// by `brief`, printed on `--help`, or a usage error.
pub(crate) fn parse_subcommand(
    command: &str,
    options: &Options,
    args: &[String],
    brief: &str,
) -> Result<getopts::Matches, ExitCode> {
    let matches = options
        .parse(args)
        .map_err(|e| usage_error(command, &e.to_string()))?;
    if matches.opt_present("h") {
        print!("{}", options.usage(brief));
        return Err(ExitCode::SUCCESS);
    }
    Ok(matches)
}

/// The value of the numeric option `--name`: `default` when absent, an
/// error naming the option when it does not parse or fails `ok`.
#[cfg(feature = "loadgen")]
pub(crate) fn number<T: std::str::FromStr>(
    m: &getopts::Matches,
    name: &str,
    default: T,
    ok: impl Fn(&T) -> bool,
) -> Result<T, String> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .ok()
            .filter(|v| ok(v))
            .ok_or_else(|| format!("invalid --{name} '{text}'")),
    }
}

fn parse_args(args: &[String]) -> Result<Option<Config>, String> {
    let o = options();
    let m = o.parse(args).map_err(|e| match e {
        Fail::ArgumentMissing(name) if name == "version" => {
            "--version needs the device's firmware version (M.m.b); -V prints this program's version"
                .to_owned()
        }
        e => e.to_string(),
    })?;
    if m.opt_present("h") {
        print!("{}", usage_text(&o));
        return Ok(None);
    }
    if m.opt_present("V") {
        println!("{PROGRAM} {}", env!("CARGO_PKG_VERSION"));
        return Ok(None);
    }
    if let Some(extra) = m.free.get(1) {
        return Err(format!("unexpected argument '{extra}'"));
    }
    // A zone naming no interface is a usage error too, found before
    // anything is sent.
    let server = |text: &str| {
        let target = Target::parse(text).map_err(|e| format!("invalid SERVER '{text}': {e}"))?;
        target
            .scope_id()
            .map_err(|e| format!("invalid SERVER '{text}': {e}"))?;
        Ok::<_, String>(target)
    };

    // Where to, and a plain GET's resource if any.
    let get = m.opt_str("get");
    let (target, get_resource) = match (m.free.first(), get) {
        (None, Some(uri)) if uri.contains("://") => {
            let target = server(&uri)?;
            let resource = target.resource.clone().unwrap_or_default();
            (target, Some(resource))
        }
        (None, _) => return Err("missing SERVER (e.g. 127.0.0.1:5683 or coap://[::1])".to_owned()),
        (Some(_), Some(uri)) if uri.contains("://") => {
            return Err("give the server once: either SERVER or a coap:// URI to --get".to_owned())
        }
        (Some(text), get) => {
            let target = server(text)?;
            let resource = match (get, &target.resource) {
                (Some(_), Some(_)) => {
                    return Err("the path is given twice: in SERVER and to --get".to_owned())
                }
                (Some(path), None) => Some(
                    Resource::parse(&path).map_err(|e| format!("invalid --get '{path}': {e}"))?,
                ),
                (None, path) => path.clone(),
            };
            (target, resource)
        }
    };

    let device_options = ["pid", "type", "version", "offset", "legacy"];
    let mode = match get_resource {
        Some(resource) => {
            if let Some(name) = device_options.iter().find(|name| m.opt_present(name)) {
                return Err(format!(
                    "--{name} is a device-mode option; it does not combine with a plain GET of a path"
                ));
            }
            Mode::Get(resource)
        }
        None => {
            let pid = m
                .opt_str("pid")
                .ok_or("give --pid and --version (device mode) or --get PATH")?;
            if pid.is_empty() || pid.len() > 255 {
                return Err(format!("invalid --pid '{pid}': 1 to 255 bytes"));
            }
            let version = m
                .opt_str("version")
                .ok_or("device mode needs --version M.m.b (the version the device runs)")?;
            let version = firmware::parse_version(version.as_bytes()).ok_or_else(|| {
                format!(
                    "invalid --version '{version}': use M.m.b (0..255.0..255.0..65535) or a u32"
                )
            })?;
            let fw_type = match m.opt_str("type") {
                None => firmware::TYPE_APP,
                Some(t) => firmware::parse_type(t.as_bytes())
                    .ok_or_else(|| format!("invalid --type '{t}': use APP or 0..255"))?,
            };
            let offset = match m.opt_str("offset") {
                None => None,
                Some(n) => Some(
                    n.parse::<u32>()
                        .map_err(|_| format!("invalid --offset '{n}': use 0..4294967295"))?,
                ),
            };
            Mode::Update {
                pid: pid.into_bytes(),
                fw_type,
                version,
                offset,
                legacy: m.opt_present("legacy"),
            }
        }
    };

    let block_size = match m.opt_str("b") {
        None => DEFAULT_BLOCK_SIZE,
        Some(b) => b
            .parse()
            .ok()
            .filter(|n| Block::szx_for_size(*n).is_some())
            .ok_or_else(|| {
                format!("invalid block size '{b}': use 16, 32, 64, 128, 256, 512 or 1024")
            })?,
    };
    let szx = Block::szx_for_size(block_size).unwrap_or(Block::MAX_SZX);
    let mut params = Retransmission::default();
    if let Some(t) = m.opt_str("timeout-ms") {
        let ms = t
            .parse::<u64>()
            .ok()
            .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
            .ok_or_else(|| format!("invalid --timeout-ms '{t}': use 1..{MAX_TIMEOUT_MS}"))?;
        params.ack_timeout = Duration::from_millis(ms);
    }
    let output = m.opt_str("o").filter(|o| o != "-").map(PathBuf::from);
    let observe = m.opt_present("observe");
    if observe && matches!(mode, Mode::Update { legacy: true, .. }) {
        return Err("--observe watches the lookup; it does not combine with --legacy".to_owned());
    }
    let count = match m.opt_str("count") {
        None => None,
        Some(_) if !observe => return Err("--count goes with --observe".to_owned()),
        Some(n) => Some(
            n.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("invalid --count '{n}': use 1 or more"))?,
        ),
    };
    #[cfg(feature = "dtls")]
    let psk = parse_psk(&m, target.secure)?;
    #[cfg(not(feature = "dtls"))]
    if target.secure {
        return Err(
            "coaps:// needs DTLS, which this build lacks: build with --features dtls (make release-dtls)"
                .to_owned(),
        );
    }
    Ok(Some(Config {
        target,
        mode,
        output,
        szx,
        params,
        observe,
        count,
        #[cfg(feature = "dtls")]
        psk,
    }))
}

/// `--psk-identity` and `--psk-key`, or `--psk-file`: the key of a
/// `coaps://` server (`secure`), and only of one.
#[cfg(feature = "dtls")]
fn parse_psk(
    m: &getopts::Matches,
    secure: bool,
) -> Result<Option<iot_ota::dtls::ClientPsk>, String> {
    use iot_ota::dtls::ClientPsk;
    let identity = m.opt_str("psk-identity");
    let key = m.opt_str("psk-key");
    let file = m.opt_str("psk-file");
    if !secure {
        return match [&identity, &key, &file].iter().any(|o| o.is_some()) {
            true => {
                Err("--psk-identity, --psk-key and --psk-file go with a coaps:// URI".to_owned())
            }
            false => Ok(None),
        };
    }
    let psk = match (identity, key, file) {
        (Some(identity), Some(key), None) => ClientPsk::new(&identity, &key)
            .map_err(|e| format!("invalid --psk-identity/--psk-key: {e}"))?,
        (None, None, Some(path)) => ClientPsk::read(std::path::Path::new(&path))?,
        (None, None, None) => return Err(
            "coaps:// needs a pre-shared key: --psk-identity ID --psk-key KEY, or --psk-file FILE"
                .to_owned(),
        ),
        (_, _, Some(_)) => {
            return Err("give --psk-file or --psk-identity with --psk-key, not both".to_owned())
        }
        (Some(_), None, None) => return Err("--psk-identity needs --psk-key".to_owned()),
        (None, Some(_), None) => return Err("--psk-key needs --psk-identity".to_owned()),
    };
    Ok(Some(psk))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        #[cfg(feature = "loadgen")]
        Some("bench") => return bench::bench_main(args.get(1..).unwrap_or(&[])),
        #[cfg(feature = "loadgen")]
        Some("baseline") => return baseline::baseline_main(args.get(1..).unwrap_or(&[])),
        // Refused before any option is read, so that no argument can make
        // a build without the load generator open a socket for them.
        #[cfg(not(feature = "loadgen"))]
        Some(name @ ("bench" | "baseline")) => return no_load_generator(name),
        _ => {}
    }
    let config = match parse_args(&args) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => return usage_error(PROGRAM, &message),
    };
    run(&config)
}

/// `bench` or `baseline` in a build without the `loadgen` feature: one
/// line saying so, exit 2, and nothing opened.
#[cfg(not(feature = "loadgen"))]
fn no_load_generator(name: &str) -> ExitCode {
    eprintln!(
        "{PROGRAM}: '{name}' is part of the load generator, which this build lacks: \
         build with --features loadgen (make bench)"
    );
    ExitCode::from(USAGE_EXIT)
}

fn run(config: &Config) -> ExitCode {
    let authority = config.target.authority();
    let server = match config.target.resolve() {
        Ok(server) => server,
        Err(e) => return fail(&format!("cannot resolve {authority}: {e}")),
    };
    let shown = iot_ota::iface::display(server);
    #[cfg(feature = "dtls")]
    if let Some(psk) = &config.psk {
        return match Client::connect_secure(server, config.params, psk) {
            Ok(mut client) => run_with(&mut client, config, server),
            Err(ClientError::Io(e)) => fail(&format!(
                "cannot open a UDP socket to {shown}: {e}{}",
                zone_hint(server)
            )),
            Err(e) => fail(&format!("{shown}: {e}{}", zone_hint(server))),
        };
    }
    let mut client = match Client::connect(server, config.params) {
        Ok(client) => client,
        Err(e) => {
            return fail(&format!(
                "cannot open a UDP socket to {shown}: {e}{}",
                zone_hint(server)
            ))
        }
    };
    run_with(&mut client, config, server)
}

/// Runs the mode's requests on `client`, connected (and for coaps with
/// its session); returns the exit code.
fn run_with(client: &mut Client, config: &Config, server: std::net::SocketAddr) -> ExitCode {
    let shown = iot_ota::iface::display(server);
    if config.observe {
        return match observe(client, config) {
            Ok(code) => code,
            Err(e) => fail(&format!("{shown}: {e}{}", zone_hint(server))),
        };
    }
    let started = Instant::now();
    let mut body = Vec::new();
    let mut line = ProgressLine::new(std::io::stderr().is_terminal());
    let result = fetch(client, config, &mut body, &mut |p| line.show(p));
    line.clear();
    let (what, transfer) = match result {
        Ok(done) => done,
        Err(ClientError::NoUpdate) => {
            if let Mode::Update {
                pid,
                fw_type,
                version,
                ..
            } = &config.mode
            {
                let type_name = match *fw_type {
                    firmware::TYPE_APP => "APP".to_owned(),
                    n => n.to_string(),
                };
                eprintln!(
                    "no update available for {} type {type_name} version {}",
                    String::from_utf8_lossy(pid),
                    iot_ota::firmware::VersionText(*version)
                );
            }
            return ExitCode::from(NO_UPDATE_EXIT);
        }
        Err(e) => return fail(&format!("{shown}: {e}{}", zone_hint(server))),
    };
    if let Err(e) = write_body(config.output.as_ref(), &body) {
        return fail(&e);
    }
    eprintln!(
        "{}",
        summary(&what, &transfer, client, config.szx, started.elapsed())
    );
    ExitCode::SUCCESS
}

/// Why a link-local address without a zone fails (the kernel says only
/// "Invalid argument"): the hint appended to the error.
fn zone_hint(server: std::net::SocketAddr) -> String {
    match server {
        // fe80::/10 (Ipv6Addr::is_unicast_link_local is newer than the MSRV).
        std::net::SocketAddr::V6(v6)
            if v6.scope_id() == 0 && v6.ip().segments()[0] & 0xffc0 == 0xfe80 =>
        {
            format!(
                "; a link-local address needs its interface: [{}%IFACE]:{}",
                v6.ip(),
                v6.port()
            )
        }
        _ => String::new(),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("{PROGRAM}: {message}");
    ExitCode::from(ERROR_EXIT)
}

/// Runs the mode's requests; returns what was fetched (for the summary)
/// and the transfer.
fn fetch(
    client: &mut Client,
    config: &Config,
    body: &mut Vec<u8>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(String, Transfer), ClientError> {
    match &config.mode {
        Mode::Get(resource) => {
            let request = BodyRequest {
                resource,
                payload: &[],
                legacy: false,
            };
            let transfer = client.download(&request, config.szx, body, progress)?;
            Ok((format!("{resource}"), transfer))
        }
        Mode::Update {
            pid,
            offset,
            legacy,
            ..
        } => {
            let device = config.mode.lookup().ok_or(ClientError::RequestTooLarge)?;
            let pid_text = String::from_utf8_lossy(pid);
            let from = match offset {
                Some(n) if *n > 0 => format!(" from offset {n}"),
                _ => String::new(),
            };
            if *legacy {
                let legacy = DeviceRequest {
                    offset: Some(offset.unwrap_or(0)),
                    ..device
                };
                let payload = DevicePayload::new(&legacy).ok_or(ClientError::RequestTooLarge)?;
                let resource = Resource::updates();
                let request = BodyRequest {
                    resource: &resource,
                    payload: payload.as_bytes(),
                    legacy: true,
                };
                let transfer = client.download(&request, config.szx, body, progress)?;
                Ok((format!("{pid_text} (legacy protocol){from}"), transfer))
            } else {
                let id = client.lookup(&device)?;
                let resource = Resource::image(id.as_bytes());
                let offset_payload = offset.map(u32::to_le_bytes);
                let request = BodyRequest {
                    resource: &resource,
                    payload: offset_payload.as_ref().map_or(&[][..], |p| &p[..]),
                    legacy: false,
                };
                let transfer = client.download(&request, config.szx, body, progress)?;
                Ok((format!("{pid_text} id {id}{from}"), transfer))
            }
        }
    }
}

/// `--observe`: registers, reports the current state and every
/// notification, re-registers when one is overdue (Max-Age), and ends
/// with a deregistration after `--count` notifications; in device mode
/// with `-o`, the first notification that names an image has it
/// downloaded and ends the run. Returns the exit code.
fn observe(client: &mut Client, config: &Config) -> Result<ExitCode, ClientError> {
    let lookup_payload;
    let updates = Resource::updates();
    let (resource, payload, block2) = match &config.mode {
        Mode::Get(resource) => (resource, &[][..], Some(Block::at(0, config.szx))),
        Mode::Update { .. } => {
            let device = config.mode.lookup().ok_or(ClientError::RequestTooLarge)?;
            lookup_payload = DevicePayload::new(&device).ok_or(ClientError::RequestTooLarge)?;
            (&updates, lookup_payload.as_bytes(), None)
        }
    };
    let get = Get {
        resource,
        payload,
        block2: block2.flatten(),
        size2: None,
        observe: None,
    };
    let (observation, first) = client.register(&get)?;
    let Some(mut observation) = observation else {
        eprintln!(
            "{PROGRAM}: the server does not offer Observe for {resource} (it answered {} {})",
            first.code,
            coap::code_name(first.code)
        );
        return Ok(ExitCode::from(ERROR_EXIT));
    };
    let mut seen = 0u64;
    let mut current = first;
    loop {
        if !current.is(ResponseType::Content) {
            eprintln!(
                "{PROGRAM}: the observation ended: {}",
                ClientError::Status {
                    code: current.code,
                    diagnostic: current.diagnostic(),
                }
            );
            return Ok(ExitCode::from(ERROR_EXIT));
        }
        if let Some(done) = report(client, config, &get, &current, seen)? {
            client.deregister(&get, &observation)?;
            return Ok(done);
        }
        if config.count.is_some_and(|count| seen >= count) {
            client.deregister(&get, &observation)?;
            return Ok(ExitCode::SUCCESS);
        }
        current = loop {
            let until = observation.fresh_until;
            match client.next_notification(&mut observation, until)? {
                Some(notification) => break notification,
                None => {
                    // Nothing while the last answer was fresh: ask again.
                    let answer = client.reregister(&get, &mut observation)?;
                    if answer.observe.is_some() || !answer.is(ResponseType::Content) {
                        break answer;
                    }
                }
            }
        };
        seen += 1;
    }
}

/// Reports the `n`th answer of an observation (0: the registration's);
/// `Some` exit code when the run is complete (device mode with `-o`, after
/// downloading the image the answer names).
fn report(
    client: &mut Client,
    config: &Config,
    get: &Get<'_>,
    answer: &Response,
    n: u64,
) -> Result<Option<ExitCode>, ClientError> {
    let etag = answer
        .etag
        .as_deref()
        .map(|tag| tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .unwrap_or_default();
    match &config.mode {
        Mode::Update { offset, .. } => {
            let id = String::from_utf8_lossy(&answer.payload).into_owned();
            if id.is_empty() {
                eprintln!("notification {n}: no update yet");
                println!("no update");
                flush_stdout();
                return Ok(None);
            }
            eprintln!("notification {n}: update {id}");
            println!("update {id}");
            flush_stdout();
            let Some(path) = &config.output else {
                return Ok(None);
            };
            let started = Instant::now();
            let resource = Resource::image(id.as_bytes());
            let offset_payload = offset.map(u32::to_le_bytes);
            let request = BodyRequest {
                resource: &resource,
                payload: offset_payload.as_ref().map_or(&[][..], |p| &p[..]),
                legacy: false,
            };
            let mut body = Vec::new();
            let transfer = client.download(&request, config.szx, &mut body, &mut |_| {})?;
            write_body(Some(path), &body).map_err(|e| ClientError::Output(io_error(e)))?;
            let what = format!("id {id}");
            eprintln!(
                "{}",
                summary(&what, &transfer, client, config.szx, started.elapsed())
            );
            Ok(Some(ExitCode::SUCCESS))
        }
        Mode::Get(resource) => {
            let more = matches!(answer.block2, Some(Ok(block)) if block.more);
            let body = if more {
                // The rest of the new body, from its first block, as a
                // plain download (which checks that every block carries
                // the same ETag).
                let request = BodyRequest {
                    resource,
                    payload: get.payload,
                    legacy: false,
                };
                let mut body = Vec::new();
                client.download(&request, config.szx, &mut body, &mut |_| {})?;
                body
            } else {
                answer.payload.clone()
            };
            eprintln!(
                "notification {n}: {} of {resource}, etag {etag}",
                plural(body.len() as u64, "byte")
            );
            match &config.output {
                // Replaced in one rename: a reader never sees half a body.
                Some(path) => {
                    let partial = path.with_extension("partial");
                    write_body(Some(&partial), &body)
                        .and_then(|()| {
                            std::fs::rename(&partial, path)
                                .map_err(|e| format!("cannot write {}: {e}", path.display()))
                        })
                        .map_err(|e| ClientError::Output(io_error(e)))?;
                }
                None => write_body(None, &body).map_err(|e| ClientError::Output(io_error(e)))?,
            }
            Ok(None)
        }
    }
}

fn io_error(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

/// Writes the body to the file or standard output.
fn write_body(output: Option<&PathBuf>, body: &[u8]) -> Result<(), String> {
    match output {
        Some(path) => {
            std::fs::write(path, body).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        None => {
            let mut out = std::io::stdout().lock();
            let mut write = || -> std::io::Result<()> {
                out.write_all(body)?;
                // Keep a shell prompt off the end of a text body.
                if out.is_terminal() && !body.is_empty() && !body.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
                out.flush()
            };
            write().map_err(|e| format!("cannot write to standard output: {e}"))
        }
    }
}

/// The summary line, e.g. `downloaded 30000 bytes of OTA-X id 0d0ad509 in
/// 30 blocks, etag 1c2b3a4d5e6f7081, 1 retransmission, 0.04 s`.
fn summary(what: &str, t: &Transfer, client: &Client, szx: u8, elapsed: Duration) -> String {
    let stats = client.stats();
    let mut line = format!(
        "downloaded {} of {what} in {}",
        plural(t.bytes, "byte"),
        plural(u64::from(t.blocks), "block")
    );
    if t.block_size < 16 << szx {
        line.push_str(&format!(" (server block size {} B)", t.block_size));
    }
    if let Some(etag) = &t.etag {
        line.push_str(", etag ");
        for b in etag {
            line.push_str(&format!("{b:02x}"));
        }
    }
    line.push_str(&format!(
        ", {}",
        plural(u64::from(stats.retransmissions), "retransmission")
    ));
    if stats.echo_retries > 0 {
        line.push_str(&format!(
            ", {}",
            plural(u64::from(stats.echo_retries), "Echo challenge")
        ));
    }
    if stats.rate_limit_waits > 0 {
        line.push_str(&format!(
            ", {} after 4.29",
            plural(u64::from(stats.rate_limit_waits), "wait")
        ));
    }
    line.push_str(&format!(", {:.2} s", elapsed.as_secs_f64()));
    line
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The one-line progress display on a terminal: redrawn at most ten times
/// a second, erased before the summary.
struct ProgressLine {
    enabled: bool,
    last: Option<Instant>,
}

impl ProgressLine {
    fn new(enabled: bool) -> ProgressLine {
        ProgressLine {
            enabled,
            last: None,
        }
    }

    fn show(&mut self, progress: &Progress) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        eprint!("\r{progress}\x1b[K");
    }

    fn clear(&mut self) {
        if self.enabled && self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn config(list: &[&str]) -> Config {
        parse_args(&args(list))
            .unwrap_or_else(|e| panic!("{list:?}: {e}"))
            .expect("a run")
    }

    #[test]
    fn zoned_servers_are_accepted_in_every_form() {
        let lo = iot_ota::iface::index_of("lo").unwrap();
        let by_index = format!("[::1%{lo}]:5684");
        for list in [
            &["[::1%lo]:5684", "--get", "/x"][..],
            &[by_index.as_str(), "--get", "/x"],
            &["[::1%lo]", "--get", "/x"],
            &["coap://[::1%25lo]:5684/x"],
            &["coap://[::1%25lo]/x"],
            &["coap://[::1%lo]/x"],
            &["--get", "coap://[::1%25lo]:5684/x"],
        ] {
            let c = config(list);
            assert_eq!(c.target.scope_id(), Ok(lo), "{list:?}");
            assert!(
                matches!(c.mode, Mode::Get(ref r) if r.to_string() == "/x"),
                "{list:?}"
            );
        }
    }

    #[test]
    fn an_unknown_zone_is_a_usage_error_naming_it() {
        for list in [
            &["[fe80::1%no-such-if0]:5683", "--get", "/x"][..],
            &["coap://[fe80::1%25no-such-if0]/x"],
            &["--get", "coap://[fe80::1%no-such-if0]/x"],
        ] {
            let error = parse_args(&args(list)).err().expect("refused");
            assert!(
                error.contains("no interface named 'no-such-if0'"),
                "{list:?}: {error}"
            );
        }
        let error = parse_args(&args(&["[fe80::1%]:1", "--get", "/x"]))
            .err()
            .expect("refused");
        assert!(error.contains("no zone after %"), "{error}");
    }

    #[test]
    fn a_link_local_address_without_zone_gets_a_hint() {
        let hint = zone_hint("[fe80::1]:5683".parse().unwrap());
        assert!(hint.contains("[fe80::1%IFACE]:5683"), "{hint}");
        assert_eq!(zone_hint("[::1]:5683".parse().unwrap()), "");
        assert_eq!(zone_hint("127.0.0.1:5683".parse().unwrap()), "");
    }
}
