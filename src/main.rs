//! `iot-ota-server`: command line, logging set-up, catalog, socket, loop.
//!
//! Exit codes: 2 for a usage error, 1 for a start-up failure an operator
//! must fix (missing directory, catalog collision, address in use).

use getopts::Options;
use iot_ota::catalog::Catalog;
use iot_ota::firmware::VersionText;
use iot_ota::logfmt::Timestamp;
use iot_ota::server::{self, Server};
use iot_ota::service::{Keys, Limits, Service};
use log::{debug, error, info, warn, LevelFilter};
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE_EXIT: u8 = 2;
const RUNTIME_EXIT: u8 = 1;

/// Everything the command line decides.
struct Config {
    dir: PathBuf,
    listen: SocketAddr,
    limits: Limits,
    level: LevelFilter,
}

fn options() -> Options {
    let mut o = Options::new();
    o.optopt("d", "dir", "firmware directory (default: updates)", "DIR");
    o.optopt(
        "l",
        "listen",
        "UDP address to serve (default: [::]:5683, IPv4 and IPv6)",
        "ADDR",
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
        "rate-limit",
        "at most N requests a second per peer address; excess gets 4.29 (default: off)",
        "N",
    );
    o.optflag(
        "",
        "echo",
        "RFC 9175 Echo check against amplification by spoofed sources (default: off)",
    );
    o.optflagmulti("v", "verbose", "more log detail: -v debug, -vv trace");
    o.optflag("q", "quiet", "log warnings and errors only");
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

fn usage_text(o: &Options) -> String {
    let brief = "Usage: iot-ota-server [-d DIR] [-l ADDR] [-b BYTES] [--peers N] [--rate-limit N] [--echo]\n\
                 \x20                     [-v]... [-q] [-h] [-V]\n\n\
                 Serves the .fmu firmware images in DIR to devices over CoAP (RFC 7252, Block2 RFC 7959).\n\
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
    let listen_text = m.opt_str("l").unwrap_or_else(|| "[::]:5683".to_owned());
    // A zone (`[fe80::1%wpan0]:5683`) by interface name or index; host
    // names (`localhost:5683`) still resolve.
    let listen = match iot_ota::iface::parse_socket_addr(&listen_text) {
        Ok(addr) => Some(addr),
        Err(iot_ota::iface::ScopeError::UnknownZone(zone)) => {
            return Err(format!(
                "invalid listen address '{listen_text}': no interface named '{zone}'"
            ))
        }
        Err(iot_ota::iface::ScopeError::Syntax) => listen_text
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next()),
    }
    .ok_or_else(|| {
        format!(
            "invalid listen address '{listen_text}' (expected e.g. [::]:5683, 0.0.0.0:5683 or [fe80::1%eth0]:5683)"
        )
    })?;
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
    if let Some(n) = m.opt_str("rate-limit") {
        limits.rate_limit = Some(n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            format!(
                "invalid --rate-limit '{n}': use a whole number of requests a second, 1 or more"
            )
        })?);
    }
    limits.echo = m.opt_present("echo");
    let level = match (m.opt_present("q"), m.opt_count("v")) {
        (true, 0) => LevelFilter::Warn,
        (true, _) => return Err("-q and -v contradict each other".to_owned()),
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    };
    Ok(Some(Config {
        dir: PathBuf::from(m.opt_str("d").unwrap_or_else(|| "updates".to_owned())),
        listen,
        limits,
        level,
    }))
}

fn init_logging(level: LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format(|buf, record| {
            writeln!(
                buf,
                "{} {:<5} {}",
                Timestamp::now(),
                record.level(),
                record.args()
            )
        })
        .init();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse_args(&args) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => return usage_error(&message),
    };
    init_logging(config.level);
    match serve(config) {
        Ok(never) => match never {},
        Err(message) => {
            error!("{message}");
            ExitCode::from(RUNTIME_EXIT)
        }
    }
}

/// Loads the catalog, binds, serves; returns only on a start-up failure.
fn serve(config: Config) -> Result<std::convert::Infallible, String> {
    let catalog = load_catalog(&config)?;
    let socket = UdpSocket::bind(config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = socket
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    server::check_dual_stack(local);
    // Before "listening on": Server::new asks for each datagram's
    // destination address, and a datagram queued before that would be
    // answered from whatever address the kernel picks.
    let mut server = Server::new(socket, Service::new(catalog, config.limits, secret_keys()));
    let mut extra = String::new();
    if let Some(n) = config.limits.rate_limit {
        extra.push_str(&format!(", rate limit {n}/s per address"));
    }
    if config.limits.echo {
        extra.push_str(", Echo amplification check on");
    }
    info!(
        "listening on {local} (block size {} B, {} peers kept{extra})",
        config.limits.max_block_size, config.limits.continuation_capacity
    );
    server.run()
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

fn load_catalog(config: &Config) -> Result<Catalog, String> {
    let dir = &config.dir;
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
            "catalog: {} images, {} bytes from {}",
            catalog.images().len(),
            catalog.total_bytes(),
            dir.display()
        );
    }
    Ok(catalog)
}
