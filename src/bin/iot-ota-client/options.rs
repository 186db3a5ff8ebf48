//! The command line of the client itself (the load generator's
//! subcommands have their own): the getopts definitions, the `--help`
//! text, and the parsing into a [`Config`]; and the helpers the
//! subcommands share.

use crate::coap::{Resource, Retransmission, Target, DEFAULT_BLOCK_SIZE};
#[cfg(feature = "loadgen")]
use crate::usage_error;
use crate::PROGRAM;
use getopts::{Fail, Options};
use iot_ota::firmware::{self, DeviceRequest};
use iot_ota::wire::Block;
use std::path::PathBuf;
#[cfg(feature = "loadgen")]
use std::process::ExitCode;
use std::time::Duration;

/// Upper bound of --timeout-ms: an hour-long ACK_TIMEOUT is a typo.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// What to ask the server.
pub(crate) enum Mode {
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
    pub(crate) fn lookup(&self) -> Option<DeviceRequest<'_>> {
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
pub(crate) struct Config {
    pub(crate) target: Target,
    pub(crate) mode: Mode,
    /// `None`: standard output.
    pub(crate) output: Option<PathBuf>,
    pub(crate) szx: u8,
    pub(crate) params: Retransmission,
    /// `--observe`: stay registered and report every notification.
    pub(crate) observe: bool,
    /// `--count N`: stop after N notifications.
    pub(crate) count: Option<u64>,
    /// The credentials for a `coaps://` server.
    #[cfg(feature = "dtls")]
    pub(crate) credentials: Option<iot_ota::dtls::ClientCredentials>,
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
        o.optopt(
            "",
            "cert",
            "coaps with a certificate: the device's ECDSA P-256 certificate, PEM (with --key and --ca)",
            "FILE",
        );
        o.optopt(
            "",
            "key",
            "coaps: the private key of --cert, PEM (not readable by other users)",
            "FILE",
        );
        o.optopt(
            "",
            "ca",
            "coaps: the CA certificates (PEM) the server's certificate must be issued by",
            "FILE",
        );
        o.optopt(
            "",
            "server-name",
            "coaps with --cert: the name the server's certificate must carry, a host name or an \
             IP address (default: the URI's host)",
            "NAME",
        );
        o.optopt(
            "",
            "rpk-key",
            "coaps with a raw public key (RFC 7250): the device's ECDSA P-256 private key, PEM \
             (not readable by other users; with --rpk-server)",
            "FILE",
        );
        o.optopt(
            "",
            "rpk-server",
            "coaps: the server's raw public key, a PEM PUBLIC KEY file or sha256:HEX",
            "FILE|sha256:HEX",
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
         {PROGRAM} coaps://HOST[:PORT]/PATH (--psk-identity ID --psk-key KEY | --psk-file FILE\n                   \
         | --cert FILE --key FILE --ca FILE [--server-name NAME]\n                   \
         | --rpk-key FILE --rpk-server FILE|sha256:HEX) ...\n\
         {LOADGEN_USAGE}\n\
         A CoAP client for iot-ota-server: asks for a firmware update as a device does and downloads it\n\
         (Confirmable requests with RFC 7252 retransmission, Block2 per RFC 7959, Echo per RFC 9175, and\n\
         a wait of Max-Age seconds after 4.29 Too Many Requests), or GETs any resource.\n\n\
         SERVER is HOST:PORT, [IPv6]:PORT or coap://HOST[:PORT][/PATH][?QUERY]; the port defaults to 5683.\n\
         coaps://HOST[:PORT][/PATH] is CoAP over DTLS 1.2 (port 5684; builds with the dtls feature), in\n\
         every mode; with --cert the server's certificate must name HOST, or NAME of --server-name.\n\
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

/// The run `args` (without the program name) ask for; `None` after
/// `--help` or `-V`, printed already.
pub(crate) fn parse_args(args: &[String]) -> Result<Option<Config>, String> {
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
    let credentials = parse_credentials(&m, &target)?;
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
        credentials,
    }))
}

/// The credentials of a `coaps://` target, and only of one: a
/// pre-shared key, a certificate (`--cert`, `--key`, `--ca`, and the
/// name the server's must carry: `--server-name` or the target's host)
/// or a raw public key (`--rpk-key`, `--rpk-server`).
#[cfg(feature = "dtls")]
fn parse_credentials(
    m: &getopts::Matches,
    target: &Target,
) -> Result<Option<iot_ota::dtls::ClientCredentials>, String> {
    use iot_ota::dtls::{ClientCredentials, ServerName};
    use std::path::Path;
    const CERT: [&str; 3] = ["cert", "key", "ca"];
    const RAW: [&str; 2] = ["rpk-key", "rpk-server"];
    let secure = target.secure;
    let certificate = CERT.iter().any(|o| m.opt_present(o));
    let raw = RAW.iter().any(|o| m.opt_present(o));
    let named = m.opt_present("server-name");
    let psk = parse_psk(m, secure)?;
    if !secure {
        return match certificate || raw || named {
            true => Err(
                "--cert, --key, --ca, --server-name, --rpk-key and --rpk-server go with a \
                 coaps:// URI"
                    .to_owned(),
            ),
            false => Ok(None),
        };
    }
    if named && !certificate {
        return Err("--server-name goes with a certificate (--cert, --key, --ca)".to_owned());
    }
    match (psk, certificate, raw) {
        (Some(psk), false, false) => Ok(Some(ClientCredentials::Psk(psk))),
        (None, true, false) => match (m.opt_str("cert"), m.opt_str("key"), m.opt_str("ca")) {
            (Some(cert), Some(key), Some(ca)) => {
                let server = match m.opt_str("server-name") {
                    Some(name) => ServerName::parse(&name)
                        .map_err(|e| format!("invalid --server-name: {e}"))?,
                    None => ServerName::parse(&target.host).map_err(|e| {
                        format!(
                            "the URI's host cannot be a certificate's name: {e}; give \
                             --server-name NAME"
                        )
                    })?,
                };
                let (cert, key, ca) = (Path::new(&cert), Path::new(&key), Path::new(&ca));
                ClientCredentials::certificate(cert, key, ca, server).map(Some)
            }
            _ => Err("--cert, --key and --ca go together".to_owned()),
        },
        (None, false, true) => match (m.opt_str("rpk-key"), m.opt_str("rpk-server")) {
            (Some(key), Some(server)) => {
                ClientCredentials::raw_public_key(Path::new(&key), &server).map(Some)
            }
            _ => Err("--rpk-key and --rpk-server go together".to_owned()),
        },
        (None, false, false) => Err(
            "coaps:// needs a pre-shared key (--psk-identity ID --psk-key \
             KEY, or --psk-file FILE), a certificate (--cert, --key, --ca) or a raw public key \
             (--rpk-key, --rpk-server)"
                .to_owned(),
        ),
        _ => Err("give one of a pre-shared key, a certificate and a raw public key".to_owned()),
    }
}

/// `--psk-identity` and `--psk-key`, or `--psk-file`: the key of a
/// `coaps://` server (`secure`), if they are given.
#[cfg(feature = "dtls")]
fn parse_psk(
    m: &getopts::Matches,
    secure: bool,
) -> Result<Option<iot_ota::dtls::ClientPsk>, String> {
    use iot_ota::dtls::ClientPsk;
    let identity = m.opt_str("psk-identity");
    let key = m.opt_str("psk-key");
    let file = m.opt_str("psk-file");
    if [&identity, &key, &file].iter().all(|o| o.is_none()) {
        return Ok(None);
    }
    if !secure {
        return Err("--psk-identity, --psk-key and --psk-file go with a coaps:// URI".to_owned());
    }
    let psk = match (identity, key, file) {
        (Some(identity), Some(key), None) => ClientPsk::new(&identity, &key)
            .map_err(|e| format!("invalid --psk-identity/--psk-key: {e}"))?,
        (None, None, Some(path)) => ClientPsk::read(std::path::Path::new(&path))?,
        (None, None, None) => return Ok(None),
        (_, _, Some(_)) => {
            return Err("give --psk-file or --psk-identity with --psk-key, not both".to_owned())
        }
        (Some(_), None, None) => return Err("--psk-identity needs --psk-key".to_owned()),
        (None, Some(_), None) => return Err("--psk-key needs --psk-identity".to_owned()),
    };
    Ok(Some(psk))
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

    #[cfg(feature = "dtls")]
    #[test]
    fn server_name_goes_with_a_certificate_and_must_be_a_name() {
        let cert = ["--cert", "c", "--key", "k", "--ca", "a"];
        for (list, said) in [
            (
                vec!["coap://127.0.0.1/x", "--server-name", "ota.test"],
                "go with a coaps:// URI",
            ),
            (
                vec![
                    "coaps://127.0.0.1/x",
                    "--psk-identity",
                    "i",
                    "--psk-key",
                    "k",
                    "--server-name",
                    "ota.test",
                ],
                "--server-name goes with a certificate",
            ),
            (
                [
                    &["coaps://127.0.0.1/x", "--server-name", "ota test"][..],
                    &cert,
                ]
                .concat(),
                "invalid --server-name: 'ota test' is neither",
            ),
            (
                [
                    &["coaps://127.0.0.1/x", "--server-name", "*.test"][..],
                    &cert,
                ]
                .concat(),
                "invalid --server-name",
            ),
            (
                [&["coaps://ota%20x/x"][..], &cert].concat(),
                "give --server-name NAME",
            ),
            // A valid name: on to the files, which are missing here.
            (
                [
                    &["coaps://ota%20x/x", "--server-name", "OTA.test"][..],
                    &cert,
                ]
                .concat(),
                "cannot read c",
            ),
            (
                [&["coaps://[::1]/x", "--server-name", "[::1]"][..], &cert].concat(),
                "cannot read c",
            ),
        ] {
            let error = parse_args(&args(&list)).err().expect("refused");
            assert!(error.contains(said), "{list:?}: {error}");
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
}
