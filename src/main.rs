//! `iot-ota-server`: command line, logging set-up, catalog, socket, loop.
//!
//! Exit codes: 0 after SIGTERM or SIGINT, 2 for a usage error, 1 for a
//! start-up failure an operator must fix (missing directory, catalog
//! collision, address in use).

use getopts::Options;
use iot_ota::catalog::Catalog;
use iot_ota::firmware::VersionText;
use iot_ota::hash::SipKey;
use iot_ota::iface::{self, ScopeError};
use iot_ota::logfmt::{self, LogFormat, Timestamp, SUMMARY};
use iot_ota::server::{self, Server};
use iot_ota::service::{Keys, Limits, Service};
use iot_ota::tree::FileTree;
use log::{debug, error, info, warn, LevelFilter};
use std::hash::BuildHasher;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

/// How often the directory is scanned for new images by default.
const DEFAULT_RESCAN_MS: u64 = 1000;
/// How long a new or changed file must stay unchanged before it is served.
const DEFAULT_SETTLE_MS: u64 = 200;
/// RFC 7252 §4.8 DEFAULT_LEISURE.
const DEFAULT_LEISURE_MS: u64 = 5000;
/// Multicast answers held back at once; more are dropped.
const LEISURE_QUEUE: usize = 64;
const USAGE_EXIT: u8 = 2;
const RUNTIME_EXIT: u8 = 1;

/// Everything the command line decides.
struct Config {
    /// The catalog's directory; `None` with `--fileserver` and no `-d`:
    /// an empty catalog.
    dir: Option<PathBuf>,
    /// True when `dir` is the default, not given with `-d`.
    dir_defaulted: bool,
    /// The `--files` (or `--fileserver`) tree.
    files: Option<PathBuf>,
    /// The option `files` came from, for messages.
    files_option: &'static str,
    /// One socket each; `-l` repeated.
    listen: Vec<SocketAddr>,
    /// Exit when a listen address does not exist, instead of waiting for
    /// it with IP_FREEBIND.
    strict_bind: bool,
    /// SO_REUSEPORT on every listening socket: several processes share a
    /// port.
    reuse_port: bool,
    /// The file the Echo key is read from, so that processes sharing it
    /// accept each other's Echo values.
    echo_key_file: Option<PathBuf>,
    /// Interfaces whose All-CoAP-Nodes groups are joined (`all`: every
    /// multicast-capable one).
    multicast: Vec<String>,
    /// RFC 7252 §8.2 Leisure, milliseconds.
    leisure_ms: u64,
    /// coaps: the DTLS socket's address, the PSK file, the session table's
    /// size.
    #[cfg(feature = "dtls")]
    dtls: Option<DtlsConfig>,
    /// Milliseconds between rescans of the directory; 0: none on a timer.
    rescan_ms: u64,
    /// Milliseconds a changed file must stay unchanged before it is served.
    settle_ms: u64,
    limits: Limits,
    level: LevelFilter,
    /// `--log-format`; `None`: journal when stderr is the journal, else plain.
    log_format: Option<LogFormat>,
}

/// The coaps part of the command line.
#[cfg(feature = "dtls")]
struct DtlsConfig {
    listen: SocketAddr,
    psk_file: PathBuf,
    limits: iot_ota::dtls::Limits,
}

fn options() -> Options {
    let mut o = Options::new();
    o.optopt("d", "dir", "firmware directory (default: updates)", "DIR");
    o.optopt(
        "",
        "files",
        "also serve every file under DIR at its relative path, as aiocoap-fileserver does",
        "DIR",
    );
    o.optopt(
        "",
        "fileserver",
        "--files DIR, with no .fmu directory needed: without -d the catalog is empty",
        "DIR",
    );
    o.optmulti(
        "l",
        "listen",
        "UDP address to serve, repeatable; a zone names the interface of a link-local \
         address: [fe80::1%wpan0]:5683; 'none': no plain CoAP socket (default: [::]:5683, \
         IPv4 and IPv6)",
        "ADDR",
    );
    #[cfg(feature = "dtls")]
    {
        o.optopt(
            "",
            "psk-file",
            "serve coaps (DTLS 1.2, TLS_PSK_WITH_AES_128_CCM_8) with the keys in FILE: lines \
             identity:key or identity:key:PID,PID (key ASCII, or hex after 0x); FILE must not \
             be readable by other users; reread on SIGHUP",
            "FILE",
        );
        o.optopt(
            "",
            "dtls-listen",
            "UDP address of the coaps socket (default with --psk-file: [::]:5684)",
            "ADDR",
        );
        o.optopt(
            "",
            "max-sessions",
            "established DTLS sessions kept; a full table ends the least recently used one \
             for a newly authenticated peer (default: 1024)",
            "N",
        );
        o.optopt(
            "",
            "max-handshakes",
            "DTLS handshakes in progress kept (after the cookie exchange), at most 4 per \
             IPv4 address or IPv6 /64; they never displace established sessions (default: 64)",
            "N",
        );
        o.optopt(
            "",
            "session-idle",
            "seconds without a datagram that end an established DTLS session (default: 300)",
            "SECONDS",
        );
    }
    o.optflag(
        "",
        "strict-bind",
        "exit when a listen address is not configured yet, instead of waiting for it",
    );
    o.optflag(
        "",
        "reuse-port",
        "share the listen port with other iot-ota-server processes that ask for it too \
         (SO_REUSEPORT): one process per core",
    );
    o.optmulti(
        "",
        "multicast",
        "join the All-CoAP-Nodes groups (ff02::fd, ff05::fd, 224.0.1.187) on IFACE, \
         repeatable; 'all' for every multicast interface (default: none)",
        "IFACE",
    );
    o.optopt(
        "",
        "leisure",
        "delay answers to multicast requests by up to MS, at random (default: 5000)",
        "MS",
    );
    o.optopt(
        "",
        "rescan",
        "look for new, replaced and removed images every MS; 0: only on SIGHUP and when a \
         request misses (default: 1000)",
        "MS",
    );
    o.optopt(
        "",
        "settle",
        "serve a new or changed file once it has not changed for MS (default: 200)",
        "MS",
    );
    o.optopt(
        "b",
        "block-size",
        "largest Block2 size, a power of two 16..1024 (default: 1024)",
        "BYTES",
    );
    o.optopt(
        "",
        "peers",
        "peers whose transfer or rate state is kept, oldest evicted (default: 4096)",
        "N",
    );
    o.optopt(
        "",
        "max-observers",
        "Observe registrations kept, oldest ended for a new one; 0: no Observe (default: 1024)",
        "N",
    );
    o.optopt(
        "",
        "rate-limit",
        "at most N requests a second per peer address; excess gets 4.29 (default: off)",
        "N",
    );
    o.optflag(
        "",
        "echo",
        "RFC 9175 Echo check against amplification by spoofed sources (default: off)",
    );
    o.optopt(
        "",
        "echo-key-file",
        "--echo with the Echo key from FILE (16 bytes, raw or as 32 hex digits, not readable \
         by other users), so that every process and replica sharing FILE accepts the others' \
         Echo values (default: a random key per process)",
        "FILE",
    );
    o.optflagmulti("v", "verbose", "more log detail: -v debug, -vv trace");
    o.optflag(
        "q",
        "quiet",
        "log warnings and errors only, and the start-up summary and listening lines",
    );
    o.optopt(
        "",
        "log-format",
        "plain (timestamped lines on stderr), journal (<N> priority prefixes on stderr, \
         for systemd) or syslog (datagrams to /dev/log, facility daemon, for OpenWrt's logd) \
         (default: journal when stderr is systemd's journal stream, else plain)",
        "FORMAT",
    );
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

fn usage_text(o: &Options) -> String {
    let brief = "Usage: iot-ota-server [-d DIR] [--files DIR | --fileserver DIR] [-l ADDR]... [-b BYTES] [--peers N] [--max-observers N]\n\
                 \x20                     [--rate-limit N] [--echo] [--echo-key-file FILE] [--multicast IFACE]... [--leisure MS]\n\
                 \x20                     [--strict-bind] [--reuse-port] [--rescan MS] [--settle MS]\n\
                 \x20                     [-v]... [-q] [--log-format plain|journal|syslog] [-h] [-V]\n\n\
                 Serves the .fmu firmware images in DIR (and with --files a plain file tree) to devices\n\
                 over CoAP (RFC 7252, Block2 RFC 7959).\n\
                 RUST_LOG overrides the log level (e.g. RUST_LOG=debug).";
    o.usage(brief)
}

/// A usage error: one line, a hint, exit 2.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("iot-ota-server: {message}");
    eprintln!("Try 'iot-ota-server --help' for more information.");
    ExitCode::from(USAGE_EXIT)
}

fn parse_args(args: &[String]) -> Result<Option<Config>, String> {
    let o = options();
    let m = o.parse(args).map_err(|e| e.to_string())?;
    if m.opt_present("h") {
        print!("{}", usage_text(&o));
        return Ok(None);
    }
    if m.opt_present("V") {
        println!("iot-ota-server {}", env!("CARGO_PKG_VERSION"));
        return Ok(None);
    }
    if let Some(extra) = m.free.first() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    let mut listen_texts = m.opt_strs("l");
    if listen_texts.is_empty() {
        listen_texts.push("[::]:5683".to_owned());
    }
    if listen_texts.iter().any(|t| t == "none") {
        if listen_texts.len() > 1 {
            return Err("-l none turns the plain socket off: give no other -l".to_owned());
        }
        listen_texts.clear();
    }
    if listen_texts.len() > server::MAX_SOCKETS {
        return Err(format!(
            "-l given {} times: at most {} listen addresses",
            listen_texts.len(),
            server::MAX_SOCKETS
        ));
    }
    let listen = listen_texts
        .iter()
        .map(|text| parse_listen(text))
        .collect::<Result<Vec<_>, _>>()?;
    #[cfg(feature = "dtls")]
    let dtls = parse_dtls(&m)?;
    #[cfg(feature = "dtls")]
    let secure = dtls.is_some();
    #[cfg(not(feature = "dtls"))]
    let secure = false;
    if listen.is_empty() && !secure {
        return Err(if cfg!(feature = "dtls") {
            "-l none with no --psk-file: there would be nothing to serve".to_owned()
        } else {
            "-l none: this build has no coaps (feature dtls), there would be nothing to serve"
                .to_owned()
        });
    }
    let (files, dir) = match (m.opt_str("files"), m.opt_str("fileserver"), m.opt_str("d")) {
        (Some(_), Some(_), _) => {
            return Err("--files and --fileserver name the same thing: give one".to_owned())
        }
        (None, Some(tree), None) => (Some(tree), None),
        (files, fileserver, d) => (
            files.or(fileserver),
            Some(d.unwrap_or_else(|| "updates".to_owned())),
        ),
    };
    let dir_defaulted = !m.opt_present("d");
    let files_option = if m.opt_present("files") {
        "--files"
    } else {
        "--fileserver"
    };
    let files = files.map(PathBuf::from);
    let dir = dir.map(PathBuf::from);
    let rescan_ms = milliseconds(&m, "rescan", DEFAULT_RESCAN_MS, 3_600_000)?;
    let settle_ms = milliseconds(&m, "settle", DEFAULT_SETTLE_MS, 600_000)?;
    let leisure_ms = match m.opt_str("leisure") {
        None => DEFAULT_LEISURE_MS,
        Some(text) => text
            .parse()
            .ok()
            .filter(|ms| *ms <= 600_000)
            .ok_or_else(|| format!("invalid --leisure '{text}': use 0..600000 milliseconds"))?,
    };
    let mut limits = Limits::default();
    if let Some(b) = m.opt_str("b") {
        limits.max_block_size = b
            .parse()
            .ok()
            .filter(|n| iot_ota::wire::Block::szx_for_size(*n).is_some())
            .ok_or_else(|| {
                format!("invalid block size '{b}': use 16, 32, 64, 128, 256, 512 or 1024")
            })?;
    }
    if let Some(n) = m.opt_str("peers") {
        let peers = n
            .parse()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| format!("invalid --peers '{n}': use 1..1000000"))?;
        limits.continuation_capacity = peers;
        limits.rate_table_capacity = peers;
    }
    if let Some(n) = m.opt_str("max-observers") {
        limits.max_observers = n
            .parse()
            .ok()
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| format!("invalid --max-observers '{n}': use 0..1000000"))?;
    }
    if let Some(n) = m.opt_str("rate-limit") {
        limits.rate_limit = Some(n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            format!(
                "invalid --rate-limit '{n}': use a whole number of requests a second, 1 or more"
            )
        })?);
    }
    let echo_key_file = m.opt_str("echo-key-file").map(PathBuf::from);
    limits.echo = m.opt_present("echo") || echo_key_file.is_some();
    let level = match (m.opt_present("q"), m.opt_count("v")) {
        (true, 0) => LevelFilter::Warn,
        (true, _) => return Err("-q and -v contradict each other".to_owned()),
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    };
    let log_format = m
        .opt_str("log-format")
        .map(|name| {
            LogFormat::from_name(&name).ok_or_else(|| {
                format!("invalid --log-format '{name}': use plain, journal or syslog")
            })
        })
        .transpose()?;
    Ok(Some(Config {
        dir,
        dir_defaulted,
        files,
        files_option,
        listen,
        strict_bind: m.opt_present("strict-bind"),
        reuse_port: m.opt_present("reuse-port"),
        echo_key_file,
        multicast: m.opt_strs("multicast"),
        leisure_ms,
        #[cfg(feature = "dtls")]
        dtls,
        rescan_ms,
        settle_ms,
        limits,
        level,
        log_format,
    }))
}

/// `--psk-file`, `--dtls-listen`, `--max-sessions`, `--max-handshakes`
/// and `--session-idle`.
#[cfg(feature = "dtls")]
fn parse_dtls(m: &getopts::Matches) -> Result<Option<DtlsConfig>, String> {
    let Some(psk_file) = m.opt_str("psk-file") else {
        for option in [
            "dtls-listen",
            "max-sessions",
            "max-handshakes",
            "session-idle",
        ] {
            if m.opt_present(option) {
                return Err(format!("--{option} needs --psk-file"));
            }
        }
        return Ok(None);
    };
    let listen = parse_listen(
        &m.opt_str("dtls-listen")
            .unwrap_or_else(|| format!("[::]:{}", iot_ota::dtls::DEFAULT_PORT)),
    )?;
    let count = |name: &str, default: usize, max: usize| match m.opt_str(name) {
        None => Ok(default),
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("invalid --{name} '{n}': use 1..{max}")),
    };
    let session_idle_s = count(
        "session-idle",
        iot_ota::dtls::DEFAULT_SESSION_IDLE_S as usize,
        86_400,
    )?;
    let limits = iot_ota::dtls::Limits {
        max_sessions: count(
            "max-sessions",
            iot_ota::dtls::DEFAULT_MAX_SESSIONS,
            1_000_000,
        )?,
        max_handshakes: count(
            "max-handshakes",
            iot_ota::dtls::DEFAULT_MAX_HANDSHAKES,
            65_536,
        )?,
        handshakes_per_source: iot_ota::dtls::HANDSHAKES_PER_SOURCE,
        session_idle_ms: session_idle_s as u64 * 1000,
    };
    Ok(Some(DtlsConfig {
        listen,
        psk_file: PathBuf::from(psk_file),
        limits,
    }))
}

/// The value of option `name` in milliseconds, at most `max`.
fn milliseconds(m: &getopts::Matches, name: &str, default: u64, max: u64) -> Result<u64, String> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .ok()
            .filter(|ms| *ms <= max)
            .ok_or_else(|| format!("invalid --{name} '{text}': use 0..{max} milliseconds")),
    }
}

/// A listen address: `IP:PORT`, `[IPv6%ZONE]:PORT` (an interface name or
/// index), or a host name that resolves.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    match iface::parse_socket_addr(text) {
        Ok(addr) => Ok(addr),
        Err(ScopeError::UnknownZone(zone)) => Err(format!(
            "invalid listen address '{text}': no interface named '{zone}'"
        )),
        Err(ScopeError::Syntax) => text
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                format!(
                    "invalid listen address '{text}' (expected e.g. [::]:5683, 0.0.0.0:5683 or [fe80::1%wpan0]:5683)"
                )
            }),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse_args(&args) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => return usage_error(&message),
    };
    logfmt::init(config.log_format, config.level);
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            ExitCode::from(RUNTIME_EXIT)
        }
    }
}

/// Loads the catalog, binds, serves until SIGTERM or SIGINT.
fn serve(config: Config) -> Result<(), String> {
    // Before the catalog is read (many images take a while): a SIGHUP
    // from a service manager must not end a server that is starting.
    server::install_signal_handlers()
        .map_err(|e| format!("cannot install the signal handlers: {e}"))?;
    let catalog = match &config.dir {
        Some(dir) => {
            check_directory("firmware directory", "-d", config.dir_defaulted, dir)?;
            load_catalog(dir, &config)?
        }
        None => {
            info!(target: SUMMARY, "no -d with --fileserver: the catalog of .fmu images is empty");
            Catalog::from_files(Vec::new())
                .map(|(catalog, _)| catalog)
                .map_err(|e| format!("cannot build an empty catalog: {e}"))?
        }
    };
    if let Some(files) = &config.files {
        check_directory("file tree", config.files_option, false, files)?;
    }
    let tree = config.files.as_deref().map(load_tree).transpose()?;
    let sockets = config
        .listen
        .iter()
        .map(|&addr| bind(addr, config.strict_bind, config.reuse_port))
        .collect::<Result<Vec<_>, _>>()?;
    let interfaces = multicast_interfaces(&config.multicast)?;
    for socket in &sockets {
        join_groups(socket, &interfaces);
    }
    let plain_sockets = sockets.len();
    #[cfg(feature = "dtls")]
    let (sockets, front) = match &config.dtls {
        Some(dtls) => {
            let keys = iot_ota::dtls::PskTable::read(&dtls.psk_file)?;
            info!(
                target: SUMMARY,
                "coaps: {} PSK identities from {}, up to {} sessions and {} handshakes, \
                 sessions idle {} s end",
                keys.len(),
                dtls.psk_file.display(),
                dtls.limits.max_sessions,
                dtls.limits.max_handshakes,
                dtls.limits.session_idle_ms / 1000
            );
            let mut sockets = sockets;
            sockets.push(bind(dtls.listen, config.strict_bind, config.reuse_port)?);
            (sockets, Some(keys))
        }
        None => (sockets, None),
    };
    let mut sockets = sockets.into_iter();
    let first = sockets
        .next()
        .ok_or_else(|| "no listen address".to_owned())?;
    // Before "listening on": the server asks for each datagram's
    // destination address, and a datagram queued before that would be
    // answered from whatever address the kernel picks.
    let mut keys = secret_keys();
    if let Some(path) = &config.echo_key_file {
        keys.echo = read_echo_key(path)?;
    }
    let mut service = Service::new(catalog, config.limits, keys);
    // Echo windows cut at the same instants in every process, so that a
    // value one made is valid at another sharing the key.
    service.set_echo_clock(Timestamp::now().unix_ms);
    service.replace_tree(tree);
    let mut server = Server::new(first, service);
    for socket in sockets {
        server
            .add_socket(socket)
            .map_err(|e| format!("cannot serve several sockets: {e}"))?;
    }
    #[cfg(feature = "dtls")]
    if let (Some(keys), Some(dtls)) = (front, &config.dtls) {
        let front = iot_ota::dtls::Front::new(
            keys,
            dtls.limits,
            Box::new(iot_ota::dtls::os_entropy),
            server.started(),
        );
        server
            .serve_dtls(plain_sockets, front, Some(dtls.psk_file.clone()))
            .map_err(|e| format!("cannot serve coaps: {e}"))?;
    }
    server
        .watch_dirs(config.dir.clone(), config.rescan_ms, config.settle_ms)
        .map_err(|e| format!("cannot watch the directories: {e}"))?;
    if !interfaces.is_empty() {
        server
            .enable_multicast_answers(config.leisure_ms, LEISURE_QUEUE, leisure_seed())
            .map_err(|e| format!("cannot serve multicast: {e}"))?;
    }
    let mut extra = String::new();
    if let Some(n) = config.limits.rate_limit {
        extra.push_str(&format!(", rate limit {n}/s per address"));
    }
    if config.limits.echo {
        extra.push_str(", Echo amplification check on");
        if let Some(path) = &config.echo_key_file {
            extra.push_str(&format!(" (key from {})", path.display()));
        }
    }
    if config.reuse_port {
        extra.push_str(", port shared (SO_REUSEPORT)");
    }
    if !interfaces.is_empty() {
        extra.push_str(&format!(", multicast leisure {} ms", config.leisure_ms));
    }
    match config.rescan_ms {
        0 => extra.push_str(", rescans on SIGHUP and misses"),
        ms => extra.push_str(&format!(", rescans every {ms} ms")),
    }
    match config.limits.max_observers {
        0 => extra.push_str(", Observe off"),
        n => extra.push_str(&format!(", up to {n} observers")),
    }
    for (index, addr) in server.local_addrs().into_iter().enumerate() {
        let scheme = if index < plain_sockets {
            "coap"
        } else {
            "coaps"
        };
        // The address as Rust prints it (zone by index), so that scripts
        // can parse it; the interface's name follows.
        let zone = match addr {
            SocketAddr::V6(v6) if v6.scope_id() != 0 => iface::name_of(v6.scope_id())
                .map(|name| format!("on {name}, "))
                .unwrap_or_default(),
            _ => String::new(),
        };
        info!(
            target: SUMMARY,
            "listening on {addr} ({scheme}, {zone}block size {} B, {} peers kept{extra})",
            config.limits.max_block_size, config.limits.continuation_capacity
        );
    }
    server
        .run()
        .map_err(|e| format!("cannot install the signal handlers: {e}"))
}

/// Stops the start when `dir` does not exist or is not a directory, with
/// a message naming its absolute path: a service manager starts the
/// server from `/`, where a relative directory (the default `updates`
/// too) is not what the operator meant. Other errors (permissions) are
/// left to the loader, which names them.
fn check_directory(what: &str, option: &str, defaulted: bool, dir: &Path) -> Result<(), String> {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let shown = absolute.display();
    match std::fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(format!("{what} {shown} is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let given = if defaulted {
                format!("no {option}: the default {}", dir.display())
            } else {
                format!("{option} {}", dir.display())
            };
            if dir.is_relative() {
                let cwd = std::env::current_dir()
                    .map(|cwd| cwd.display().to_string())
                    .unwrap_or_else(|_| "?".to_owned());
                Err(format!(
                    "{what} {shown} does not exist ({given}, relative to the working directory \
                     {cwd}); give {option} the directory's absolute path"
                ))
            } else {
                Err(format!("{what} {shown} does not exist ({given})"))
            }
        }
        Err(_) => Ok(()),
    }
}

/// Binds `addr`, with SO_REUSEPORT when `reuse_port`; an address not
/// configured yet is waited for (bound with IP_FREEBIND, served once it
/// exists) unless `strict`.
fn bind(addr: SocketAddr, strict: bool, reuse_port: bool) -> Result<UdpSocket, String> {
    let options = iface::BindOptions {
        before_configured: false,
        reuse_port,
    };
    let socket = match iface::bind(addr, options) {
        Ok(socket) => socket,
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable && !strict => {
            warn!(
                "{} is not configured on any interface yet: waiting for it (requests are served as soon as it exists)",
                iface::Zoned(addr)
            );
            let options = iface::BindOptions {
                before_configured: true,
                ..options
            };
            iface::bind(addr, options)
                .map_err(|e| format!("cannot listen on {}: {e}", iface::Zoned(addr)))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let hint = if reuse_port {
                "; every process sharing a port needs --reuse-port and the same user"
            } else {
                ""
            };
            return Err(format!(
                "cannot listen on {}: {e}{hint}",
                iface::Zoned(addr)
            ));
        }
        Err(e) => return Err(format!("cannot listen on {}: {e}", iface::Zoned(addr))),
    };
    if let Ok(local) = socket.local_addr() {
        server::check_dual_stack(local);
    }
    Ok(socket)
}

/// The interfaces `--multicast` names (`all`: every multicast-capable
/// one).
fn multicast_interfaces(names: &[String]) -> Result<Vec<iface::Interface>, String> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let available = iface::multicast_interfaces()
        .map_err(|e| format!("cannot list the network interfaces: {e}"))?;
    if names.iter().any(|n| n == "all") {
        if available.is_empty() {
            warn!("--multicast all: no multicast-capable interface");
        }
        return Ok(available);
    }
    names
        .iter()
        .map(|name| {
            available
                .iter()
                .find(|i| i.name == *name || i.index.to_string() == *name)
                .cloned()
                .ok_or_else(|| {
                    format!("--multicast {name}: no multicast-capable interface of that name")
                })
        })
        .collect()
}

/// Joins the All-CoAP-Nodes groups on `interfaces` for `socket`; a socket
/// bound to one unicast address cannot receive group traffic.
fn join_groups(socket: &UdpSocket, interfaces: &[iface::Interface]) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    if interfaces.is_empty() {
        return;
    }
    if !local.ip().is_unspecified() {
        warn!(
            "{} is not a wildcard address: it receives no multicast (listen on [::]:PORT for that)",
            iface::Zoned(local)
        );
        return;
    }
    for interface in interfaces {
        match iface::join_all_coap_nodes(socket, interface) {
            Ok(groups) => {
                let groups: Vec<String> = groups.iter().map(ToString::to_string).collect();
                info!(
                    target: SUMMARY,
                    "{}: joined {} on {}",
                    iface::Zoned(local),
                    groups.join(", "),
                    interface.name
                );
            }
            Err(e) => warn!(
                "{}: cannot join the All-CoAP-Nodes groups on {}: {e}",
                iface::Zoned(local),
                interface.name
            ),
        }
    }
}

/// A seed for the random multicast delays: they need to be spread, not
/// secret.
fn leisure_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x1e15_u64)
}

/// The service's secrets, fresh at every start: 48 bytes from the
/// kernel's random source, or, where `/dev/urandom` cannot be read (a
/// chroot without /dev), from std's per-process random SipHash keys.
fn secret_keys() -> Keys {
    let mut random = [0u8; 48];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random));
    if let Err(e) = read {
        warn!("cannot read /dev/urandom ({e}); keys drawn from std's RandomState instead");
        for (i, chunk) in random.chunks_mut(8).enumerate() {
            let word = std::collections::hash_map::RandomState::new().hash_one(i);
            chunk.copy_from_slice(&word.to_le_bytes());
        }
    }
    Keys::from_bytes(random)
}

/// The Echo key in `path`: 16 bytes, raw or as 32 hex digits (surrounding
/// whitespace ignored). A file other users can read is refused: with the
/// key anyone can forge Echo values and aim the server's answers at a
/// spoofed victim.
fn read_echo_key(path: &Path) -> Result<SipKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the Echo key file {shown}: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("cannot read the Echo key file {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "the Echo key file {shown} is open to other users (mode {:03o}): with it anyone can \
             forge Echo values; chmod o-rwx {shown}",
            mode & 0o777
        ));
    }
    let mut content = Vec::new();
    // A key file is short: a wrong path to a large file costs no more
    // than this to refuse.
    file.by_ref()
        .take(256)
        .read_to_end(&mut content)
        .map_err(|e| format!("cannot read the Echo key file {shown}: {e}"))?;
    let bytes = echo_key_bytes(&content).ok_or_else(|| {
        format!(
            "the Echo key file {shown} holds {} bytes: it must hold 16 bytes, raw or as 32 hex \
             digits (e.g. head -c 16 /dev/urandom > FILE)",
            content.len()
        )
    })?;
    let (low, high) = bytes.split_at(8);
    let word = |half: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(half);
        u64::from_le_bytes(w)
    };
    Ok(SipKey([word(low), word(high)]))
}

/// The 16 key bytes of an Echo key file's `content`: 32 hex digits with
/// optional whitespace around them, else exactly 16 raw bytes.
fn echo_key_bytes(content: &[u8]) -> Option<[u8; 16]> {
    let text = content.trim_ascii();
    if text.len() == 32 && text.iter().all(u8::is_ascii_hexdigit) {
        let mut key = [0u8; 16];
        for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        return Some(key);
    }
    <[u8; 16]>::try_from(content).ok()
}

/// Walks the `--files` tree; a missing or unreadable directory, or one
/// with too many files, stops the start.
fn load_tree(dir: &Path) -> Result<FileTree, String> {
    let report = FileTree::load(dir, SystemTime::now())
        .map_err(|e| format!("cannot build the file tree from {}: {e}", dir.display()))?;
    for skipped in &report.skipped {
        warn!("skipped file {skipped}");
    }
    for path in &report.pending {
        warn!("file {path} has a modification time in the future: not served until then");
    }
    let tree = report.next.unwrap_or_else(|| FileTree::empty(dir));
    info!(
        target: SUMMARY,
        "file tree: {} files, {} bytes from {}",
        tree.files().len(),
        tree.total_bytes(),
        dir.display()
    );
    Ok(tree)
}

fn load_catalog(dir: &Path, config: &Config) -> Result<Catalog, String> {
    let report = Catalog::load(dir)
        .map_err(|e| format!("cannot build the catalog from {}: {e}", dir.display()))?;
    for name in &report.ignored {
        debug!("ignored {name} (not a visible .fmu file)");
    }
    for skipped in &report.skipped {
        warn!("skipped {}: {}", skipped.file, skipped.reason);
    }
    let catalog = report.catalog;
    for image in catalog.images() {
        info!(
            "image {} pid={} type={} version={} size={} id={}",
            image.file_name,
            String::from_utf8_lossy(&image.name.pid),
            image.name.fw_type,
            VersionText(image.version),
            image.bytes.len(),
            image.id_str()
        );
        let addressable =
            (iot_ota::wire::Block::MAX_NUM as u64 + 1) * config.limits.max_block_size as u64;
        if image.bytes.len() as u64 > addressable {
            warn!(
                "{} is larger than 2^20 blocks of {} B: clients can fetch its end only with an OFFSET",
                image.file_name, config.limits.max_block_size
            );
        }
        if image.bytes.is_empty() {
            warn!(
                "{} is empty (0 bytes): devices will get an empty body",
                image.file_name
            );
        }
    }
    if catalog.images().is_empty() {
        warn!(
            "no firmware images in {}: every device will hear there is no update",
            dir.display()
        );
    } else {
        info!(
            target: SUMMARY,
            "catalog: {} images, {} bytes from {}",
            catalog.images().len(),
            catalog.total_bytes(),
            dir.display()
        );
    }
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::echo_key_bytes;

    #[test]
    fn echo_key_files_hold_16_bytes_raw_or_in_hex() {
        let hex = *b"00112233445566778899aabbccddeeff";
        let key = [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        assert_eq!(echo_key_bytes(&hex), Some(key));
        assert_eq!(
            echo_key_bytes(b"00112233445566778899AABBCCDDEEFF\n"),
            Some(key)
        );
        assert_eq!(echo_key_bytes(&key), Some(key));
        // A raw key that is all whitespace-looking bytes stays raw.
        assert_eq!(echo_key_bytes(&[b' '; 16]), Some([b' '; 16]));
        for wrong in [
            &b""[..],
            &hex[..31],
            &[0u8; 15][..],
            &[0u8; 17][..],
            &b"00112233445566778899aabbccddeefg"[..],
            &b"0011 2233445566778899aabbccddeeff"[..],
        ] {
            assert_eq!(echo_key_bytes(wrong), None, "{wrong:?}");
        }
    }
}
