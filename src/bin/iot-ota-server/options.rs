//! The command line: the getopts definitions, the `--help` text, and the
//! parsing of the arguments into a [`Config`] (usage errors as one-line
//! messages; `main` prints them and exits 2).

use getopts::Options;
use iot_ota::iface::{self, ScopeError};
use iot_ota::logfmt::LogFormat;
use iot_ota::server;
use iot_ota::service::Limits;
use log::LevelFilter;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// How often the directory is scanned for new images by default.
const DEFAULT_RESCAN_MS: u64 = 1000;
/// How long a new or changed file must stay unchanged before it is served.
const DEFAULT_SETTLE_MS: u64 = 200;
/// RFC 7252 §4.8 DEFAULT_LEISURE.
const DEFAULT_LEISURE_MS: u64 = 5000;

/// Everything the command line decides.
pub(crate) struct Config {
    /// The catalog's directory; `None` with `--fileserver` and no `-d`:
    /// an empty catalog.
    pub(crate) dir: Option<PathBuf>,
    /// True when `dir` is the default, not given with `-d`.
    pub(crate) dir_defaulted: bool,
    /// The `--files` (or `--fileserver`) tree.
    pub(crate) files: Option<PathBuf>,
    /// The option `files` came from, for messages.
    pub(crate) files_option: &'static str,
    /// One socket each; `-l` repeated.
    pub(crate) listen: Vec<SocketAddr>,
    /// Exit when a listen address does not exist, instead of waiting for
    /// it with IP_FREEBIND.
    pub(crate) strict_bind: bool,
    /// SO_REUSEPORT on every listening socket: several processes share a
    /// port.
    pub(crate) reuse_port: bool,
    /// The file the Echo key is read from, so that processes sharing it
    /// accept each other's Echo values.
    pub(crate) echo_key_file: Option<PathBuf>,
    /// `--state-dir`: where the fleet's journal is kept; `None`: memory
    /// only.
    pub(crate) state_dir: Option<PathBuf>,
    /// Interfaces whose All-CoAP-Nodes groups are joined (`all`: every
    /// multicast-capable one).
    pub(crate) multicast: Vec<String>,
    /// RFC 7252 §8.2 Leisure, milliseconds.
    pub(crate) leisure_ms: u64,
    /// coaps: the DTLS socket's address, the PSK file, the session table's
    /// size.
    #[cfg(feature = "dtls")]
    pub(crate) dtls: Option<DtlsConfig>,
    /// Milliseconds between rescans of the directory; 0: none on a timer.
    pub(crate) rescan_ms: u64,
    /// Milliseconds a changed file must stay unchanged before it is served.
    pub(crate) settle_ms: u64,
    /// `--no-inotify`: the settle rule for every file.
    pub(crate) no_inotify: bool,
    pub(crate) limits: Limits,
    pub(crate) level: LevelFilter,
    /// `--log-format`; `None`: journal when stderr is the journal, else plain.
    pub(crate) log_format: Option<LogFormat>,
}

/// The coaps part of the command line.
#[cfg(feature = "dtls")]
pub(crate) struct DtlsConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) psk_file: Option<PathBuf>,
    pub(crate) certificates: Option<CertificateFiles>,
    /// `--rpk-key` and `--rpk-clients`.
    pub(crate) raw_keys: Option<(PathBuf, PathBuf)>,
    pub(crate) limits: iot_ota::dtls::Limits,
}

/// `--cert`, `--key`, `--ca` and `--cert-names`.
#[cfg(feature = "dtls")]
pub(crate) struct CertificateFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) names: Option<PathBuf>,
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
            "cert",
            "serve coaps with certificates too (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 or \
             _AES_128_CCM_8): the server's ECDSA P-256 certificate, PEM (needs --key and --ca)",
            "FILE",
        );
        o.optopt(
            "",
            "key",
            "the private key of --cert, PEM; FILE must not be readable by other users",
            "FILE",
        );
        o.optopt(
            "",
            "ca",
            "the CA certificates (PEM) client certificates must be issued by: every coaps \
             client with a certificate must present one",
            "FILE",
        );
        o.optopt(
            "",
            "cert-names",
            "the devices' names (certificate CN or subjectAltName) and the products each may \
             fetch: lines NAME or NAME:PID,PID; a device not named may fetch no image \
             (default: every device --ca vouches for may fetch every image)",
            "FILE",
        );
        o.optopt(
            "",
            "rpk-key",
            "serve coaps with raw public keys too (RFC 7250): the server's ECDSA P-256 private \
             key, PEM; FILE must not be readable by other users (needs --rpk-clients)",
            "FILE",
        );
        o.optopt(
            "",
            "rpk-clients",
            "the client public keys accepted, one a line: NAME[:PID,PID] KEY, KEY the base64 \
             of the SubjectPublicKeyInfo or sha256:HEX, or NAME[:PID,PID] and a PUBLIC KEY \
             PEM block",
            "FILE",
        );
        o.optopt(
            "",
            "dtls-listen",
            "UDP address of the coaps socket (default with --psk-file, --cert or --rpk-key: \
             [::]:5684)",
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
            "max-pk-handshakes",
            "certificate and raw public key handshakes started per second (each costs an \
             ECDHE key and a signature); beyond it a hello waits for its retransmission \
             (default: 32)",
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
        "serve a new or changed file whose writer is not known to be done once it has not \
         changed for MS (default: 200)",
        "MS",
    );
    o.optflag(
        "",
        "no-inotify",
        "do not watch the directories with inotify (a network file system whose remote \
         writers inotify does not see): new and changed files settle for --settle MS",
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
    o.optopt(
        "",
        "devices",
        "devices the fleet remembers (rollouts, reports, /status), least recently seen \
         evicted (default: 10000)",
        "N",
    );
    o.optopt(
        "",
        "state-dir",
        "keep the fleet's state (device outcomes, automatic pauses) in a journal in DIR \
         across restarts (default: memory only)",
        "DIR",
    );
    o.optmulti(
        "",
        "status-from",
        "also answer /status to sources in CIDR (e.g. 192.0.2.0/24, fd00::/8), repeatable \
         up to 8 times (default: loopback and link-local only)",
        "CIDR",
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
                 \x20                     [--strict-bind] [--reuse-port] [--rescan MS] [--settle MS] [--no-inotify]\n\
                 \x20                     [--devices N] [--state-dir DIR] [--status-from CIDR]...\n\
                 \x20                     [-v]... [-q] [--log-format plain|journal|syslog] [-h] [-V]\n\n\
                 Serves the .fmu firmware images in DIR (and with --files a plain file tree) to devices\n\
                 over CoAP (RFC 7252, Block2 RFC 7959).\n\
                 RUST_LOG overrides the log level (e.g. RUST_LOG=debug).";
    o.usage(brief)
}

/// The configuration `args` (without the program name) ask for; `None`
/// after `--help` or `--version`, printed already.
pub(crate) fn parse_args(args: &[String]) -> Result<Option<Config>, String> {
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
            "-l none with no --psk-file, --cert or --rpk-key: there would be nothing to serve"
                .to_owned()
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
    if let Some(n) = m.opt_str("devices") {
        limits.max_devices = n
            .parse()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| format!("invalid --devices '{n}': use 1..100000"))?;
    }
    let status_from = m.opt_strs("status-from");
    if status_from.len() > limits.status_from.len() {
        return Err(format!(
            "--status-from given {} times: at most {}",
            status_from.len(),
            limits.status_from.len()
        ));
    }
    for (slot, cidr) in limits.status_from.iter_mut().zip(&status_from) {
        *slot = Some(parse_cidr(cidr).ok_or_else(|| {
            format!("invalid --status-from '{cidr}': use ADDRESS/BITS, e.g. 192.0.2.0/24")
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
        state_dir: m.opt_str("state-dir").map(PathBuf::from),
        multicast: m.opt_strs("multicast"),
        leisure_ms,
        #[cfg(feature = "dtls")]
        dtls,
        rescan_ms,
        settle_ms,
        no_inotify: m.opt_present("no-inotify"),
        limits,
        level,
        log_format,
    }))
}

/// `--psk-file`, `--cert`, `--key`, `--ca`, `--cert-names`,
/// `--dtls-listen`, `--max-sessions`, `--max-handshakes` and
/// `--session-idle`.
#[cfg(feature = "dtls")]
fn parse_dtls(m: &getopts::Matches) -> Result<Option<DtlsConfig>, String> {
    let psk_file = m.opt_str("psk-file").map(PathBuf::from);
    let certificates = match (m.opt_str("cert"), m.opt_str("key"), m.opt_str("ca")) {
        (Some(cert), Some(key), Some(ca)) => Some(CertificateFiles {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            ca: PathBuf::from(ca),
            names: m.opt_str("cert-names").map(PathBuf::from),
        }),
        (None, None, None) => {
            if m.opt_present("cert-names") {
                return Err("--cert-names needs --cert, --key and --ca".to_owned());
            }
            None
        }
        _ => return Err("--cert, --key and --ca go together".to_owned()),
    };
    let raw_keys = match (m.opt_str("rpk-key"), m.opt_str("rpk-clients")) {
        (Some(key), Some(clients)) => Some((PathBuf::from(key), PathBuf::from(clients))),
        (None, None) => None,
        _ => return Err("--rpk-key and --rpk-clients go together".to_owned()),
    };
    if psk_file.is_none() && certificates.is_none() && raw_keys.is_none() {
        for option in [
            "dtls-listen",
            "max-sessions",
            "max-handshakes",
            "max-pk-handshakes",
            "session-idle",
        ] {
            if m.opt_present(option) {
                return Err(format!("--{option} needs --psk-file, --cert or --rpk-key"));
            }
        }
        return Ok(None);
    }
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
            4096,
        )?,
        handshakes_per_source: iot_ota::dtls::HANDSHAKES_PER_SOURCE,
        session_idle_ms: session_idle_s as u64 * 1000,
        public_key_handshakes_per_s: count(
            "max-pk-handshakes",
            iot_ota::dtls::DEFAULT_PUBLIC_KEY_HANDSHAKES_PER_S,
            100_000,
        )?,
    };
    Ok(Some(DtlsConfig {
        listen,
        psk_file,
        certificates,
        raw_keys,
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

/// `ADDRESS/BITS` (IPv4 or IPv6; a bare address is the one address) as a
/// prefix of IPv4-mapped IPv6 addresses.
fn parse_cidr(text: &str) -> Option<iot_ota::service::Prefix> {
    let (addr, bits) = match text.split_once('/') {
        Some((addr, bits)) => (addr, Some(bits.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let (ip, len) = match addr.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            let bits = bits.unwrap_or(32);
            (v4.to_ipv6_mapped().octets(), 96 + bits.min(33))
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), bits.unwrap_or(128)),
    };
    (len <= 128).then_some(iot_ota::service::Prefix { ip, len })
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
    fn without_options_updates_is_served_on_port_5683() {
        let c = config(&[]);
        assert_eq!(c.dir, Some(PathBuf::from("updates")));
        assert!(c.dir_defaulted);
        assert_eq!(c.files, None);
        assert_eq!(c.listen, ["[::]:5683".parse::<SocketAddr>().unwrap()]);
        assert_eq!(
            (c.rescan_ms, c.settle_ms, c.leisure_ms),
            (DEFAULT_RESCAN_MS, DEFAULT_SETTLE_MS, DEFAULT_LEISURE_MS)
        );
        assert_eq!(c.level, LevelFilter::Info);
        assert!(!c.limits.echo);
        assert_eq!(config(&["-q"]).level, LevelFilter::Warn);
        assert_eq!(config(&["-vv"]).level, LevelFilter::Trace);
    }

    #[cfg(feature = "dtls")]
    #[test]
    fn coaps_modes_go_alone_or_together_and_their_files_come_in_sets() {
        let c = config(&["-l", "none", "--cert", "c", "--key", "k", "--ca", "a"]);
        let dtls = c.dtls.expect("coaps");
        assert!(dtls.psk_file.is_none() && dtls.raw_keys.is_none());
        let files = dtls.certificates.expect("certificates");
        assert_eq!((files.cert, files.names), (PathBuf::from("c"), None));
        let c = config(&["--rpk-key", "k", "--rpk-clients", "l", "--psk-file", "p"]);
        let dtls = c.dtls.expect("coaps");
        assert!(dtls.psk_file.is_some() && dtls.raw_keys.is_some());
        for (list, expected) in [
            (
                &["--cert", "c", "--key", "k"][..],
                "--cert, --key and --ca go together",
            ),
            (&["--ca", "a"][..], "--cert, --key and --ca go together"),
            (
                &["--cert-names", "n"][..],
                "--cert-names needs --cert, --key and --ca",
            ),
            (
                &["--rpk-key", "k"][..],
                "--rpk-key and --rpk-clients go together",
            ),
            (
                &["--dtls-listen", "[::]:5684"][..],
                "needs --psk-file, --cert or --rpk-key",
            ),
        ] {
            let e = parse_args(&args(list)).err().unwrap_or_default();
            assert!(e.contains(expected), "{list:?}: {e}");
        }
    }

    #[test]
    fn fileserver_alone_means_no_catalog_directory() {
        let c = config(&["--fileserver", "/srv/files"]);
        assert_eq!(c.dir, None);
        assert_eq!(c.files, Some(PathBuf::from("/srv/files")));
        assert_eq!(c.files_option, "--fileserver");
        let c = config(&["--files", "/srv/files", "-d", "fw"]);
        assert_eq!(c.dir, Some(PathBuf::from("fw")));
        assert!(!c.dir_defaulted);
        assert_eq!(c.files_option, "--files");
        // An Echo key file turns the check on.
        assert!(config(&["--echo-key-file", "/k"]).limits.echo);
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        for (list, expected) in [
            (&["-q", "-v"][..], "-q and -v contradict each other"),
            (
                &["--files", "a", "--fileserver", "b"],
                "--files and --fileserver name the same thing: give one",
            ),
            (&["-b", "100"], "invalid block size '100'"),
            (
                &["--rescan", "3600001"],
                "invalid --rescan '3600001': use 0..3600000 milliseconds",
            ),
            (
                &["-l", "none", "-l", "[::]:1"],
                "-l none turns the plain socket off: give no other -l",
            ),
            (&["updates"], "unexpected argument 'updates'"),
            (&["--log-format", "xml"], "invalid --log-format 'xml'"),
            (&["--peers", "0"], "invalid --peers '0': use 1..1000000"),
        ] {
            let error = parse_args(&args(list)).err().expect("refused");
            assert!(error.contains(expected), "{list:?}: {error}");
        }
    }
}
