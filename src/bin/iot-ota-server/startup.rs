//! Start-up: checking the directories, loading the catalog, the file tree
//! and the keys, binding the sockets, joining the multicast groups, and
//! building the [`Server`] that then runs until SIGTERM or SIGINT. The
//! errors returned are the messages an operator acts on.

use crate::options::Config;
use iot_ota::catalog::Catalog;
use iot_ota::firmware::VersionText;
use iot_ota::hash::SipKey;
use iot_ota::iface;
use iot_ota::logfmt::{Timestamp, SUMMARY};
use iot_ota::server::{self, Server};
use iot_ota::service::{Keys, Service};
use iot_ota::tree::FileTree;
use log::{debug, info, warn};
use std::hash::BuildHasher;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::SystemTime;

/// Multicast answers held back at once; more are dropped.
const LEISURE_QUEUE: usize = 64;

/// Loads the catalog, binds, serves until SIGTERM or SIGINT.
pub(crate) fn serve(config: Config) -> Result<(), String> {
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
            let keys = match &dtls.psk_file {
                Some(path) => iot_ota::dtls::PskTable::read(path)?,
                None => iot_ota::dtls::PskTable::default(),
            };
            let certificates = dtls
                .certificates
                .as_ref()
                .map(read_certificates)
                .transpose()?;
            let raw_keys = match &dtls.raw_keys {
                Some((key, clients)) => {
                    let clients = iot_ota::dtls::RawPublicKeys::read(clients)?;
                    let count = clients.len();
                    let server = iot_ota::dtls::server_key(key)?;
                    Some((iot_ota::dtls::RawKeyAuth::new(server, clients), count))
                }
                None => None,
            };
            info!(
                target: SUMMARY,
                "coaps: {}{}{}, up to {} sessions and {} handshakes, sessions idle {} s end",
                match &dtls.psk_file {
                    Some(path) => format!("{} PSK identities from {}", keys.len(), path.display()),
                    None => "no PSK".to_owned(),
                },
                match (&dtls.certificates, &certificates) {
                    (Some(files), Some((_, anchors, names))) => format!(
                        ", certificate {} with {} CA certificates from {}{}",
                        files.cert.display(),
                        anchors,
                        files.ca.display(),
                        names.map_or(String::new(), |n| format!(", {n} device names"))
                    ),
                    _ => String::new(),
                },
                match (&dtls.raw_keys, &raw_keys) {
                    (Some((_, clients)), Some((_, count))) => {
                        format!(", {count} raw public keys from {}", clients.display())
                    }
                    _ => String::new(),
                },
                dtls.limits.max_sessions,
                dtls.limits.max_handshakes,
                dtls.limits.session_idle_ms / 1000
            );
            let mut sockets = sockets;
            sockets.push(bind(dtls.listen, config.strict_bind, config.reuse_port)?);
            (
                sockets,
                Some((
                    keys,
                    certificates.map(|(auth, _, _)| auth),
                    raw_keys.map(|(auth, _)| auth),
                )),
            )
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
    // value one made is valid at another sharing the key; Observe values
    // that rise across a restart.
    service.set_wall_clock(Timestamp::now().unix_ms);
    service.replace_tree(tree);
    let mut server = Server::new(first, service);
    for socket in sockets {
        server
            .add_socket(socket)
            .map_err(|e| format!("cannot serve several sockets: {e}"))?;
    }
    #[cfg(feature = "dtls")]
    if let (Some((keys, certificates, raw_keys)), Some(dtls)) = (front, &config.dtls) {
        let mut front = iot_ota::dtls::Front::new(
            keys,
            dtls.limits,
            Box::new(iot_ota::dtls::os_entropy),
            server.started(),
        );
        if let Some(auth) = certificates {
            // The wall clock at the front's millisecond 0, for the
            // certificates' dates.
            let since_start = server.started().elapsed().as_millis();
            let since_start = u64::try_from(since_start).unwrap_or(u64::MAX);
            let now_ms = Timestamp::now().unix_ms;
            front = front.with_certificates(auth, now_ms.saturating_sub(since_start))?;
        }
        if let Some(auth) = raw_keys {
            front = front.with_raw_public_keys(auth)?;
        }
        server
            .serve_dtls(plain_sockets, front, dtls.psk_file.clone())
            .map_err(|e| format!("cannot serve coaps: {e}"))?;
        server.reread_on_sighup(
            dtls.certificates.as_ref().and_then(|c| c.names.clone()),
            dtls.raw_keys.as_ref().map(|(_, list)| list.clone()),
        );
    }
    if config.no_inotify {
        server.without_inotify();
    }
    server
        .watch_dirs(config.dir.clone(), config.rescan_ms, config.settle_ms)
        .map_err(|e| format!("cannot watch the directories: {e}"))?;
    server
        .service_mut()
        .fleet_mut()
        .set_clock(Timestamp::now().unix_ms);
    if let Some(dir) = &config.state_dir {
        let (records, skipped) = server
            .keep_state(dir)
            .map_err(|e| format!("cannot keep the fleet's state in {}: {e}", dir.display()))?;
        info!(
            target: SUMMARY,
            "fleet state in {}: {records} journal lines replayed{}",
            dir.display(),
            if skipped > 0 { format!(", {skipped} unreadable skipped") } else { String::new() }
        );
    }
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

/// The server's certificate and key, the CA certificates and the device
/// names of `--cert`, `--key`, `--ca` and `--cert-names`, with the
/// number of CA certificates and of names for the log.
#[cfg(feature = "dtls")]
fn read_certificates(
    files: &crate::options::CertificateFiles,
) -> Result<(iot_ota::dtls::CertificateAuth, usize, Option<usize>), String> {
    let server = iot_ota::dtls::CertifiedKey::read(&files.cert, &files.key)?;
    let anchors = iot_ota::dtls::TrustAnchors::read(&files.ca)?;
    let names = files
        .names
        .as_deref()
        .map(iot_ota::dtls::DeviceNames::read)
        .transpose()?;
    let counts = (anchors.len(), names.as_ref().map(|n| n.len()));
    Ok((
        iot_ota::dtls::CertificateAuth::new(server, anchors, names),
        counts.0,
        counts.1,
    ))
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
