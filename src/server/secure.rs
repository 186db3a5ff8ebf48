//! The coaps glue of the loop: the DTLS socket's datagrams go through
//! `dtls::Front` (records in, decrypted requests to the service, answers
//! encrypted back), SIGHUP rereads the PSK file, the names file and the raw
//! key list, stopping ends every
//! session, and each record leaves from the address its session's
//! handshake was sent to.
//!
//! Compiled only with the `dtls` feature. It never parses CoAP or decides
//! an answer (the service does, as for the plain sockets, with the same
//! bookkeeping in `reply::account`), and never touches a plain socket's
//! datagrams.

use super::reply::{account, arrival, peer, send};
use super::stats::{log_request, Shown, Stats};
use super::Server;
use super::{log_held, rescan_reason};
use crate::service::Request;
use crate::sockio::LocalDest;
use crate::tree::FileTree;
use log::{debug, info, log_enabled, trace, warn, Level};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;

/// The coaps side of the loop.
#[derive(Debug)]
pub(super) struct Secure {
    /// Which of the sockets speaks DTLS.
    pub(super) socket: usize,
    /// The handshakes and sessions.
    pub(super) front: crate::dtls::Front,
    /// Reread on SIGHUP.
    pub(super) psk_file: Option<PathBuf>,
    /// The certificate devices' names file and the raw key list, reread
    /// on SIGHUP too.
    pub(super) names_file: Option<PathBuf>,
    pub(super) raw_key_list: Option<PathBuf>,
    /// The address each session's cookie-bearing ClientHello was sent
    /// to: every record of the session leaves from it, also those sent
    /// on a timer (retransmitted flights, notifications, close_notify),
    /// as a plain reply leaves from its request's destination.
    pub(super) local_dests: std::collections::HashMap<SocketAddr, LocalDest>,
}

impl Server {
    /// Serves socket `index` (from [`Server::new`] or
    /// [`Server::add_socket`]) over DTLS with `front`'s keys and sessions:
    /// coaps. `psk_file`, when given, is read again on SIGHUP. The loop then
    /// waits with `poll`, for the handshake timers.
    ///
    /// # Errors
    /// As `set_nonblocking`.
    pub fn serve_dtls(
        &mut self,
        index: usize,
        front: crate::dtls::Front,
        psk_file: Option<PathBuf>,
    ) -> io::Result<()> {
        // Records are larger than the requests they carry.
        self.rx.resize(self.rx.len().max(2048), 0);
        self.dtls = Some(Secure {
            socket: index,
            front,
            psk_file,
            names_file: None,
            raw_key_list: None,
            local_dests: std::collections::HashMap::new(),
        });
        self.refresh_deadline();
        self.sockets
            .iter()
            .try_for_each(|s| s.set_nonblocking(true))
    }

    /// Rereads `names_file` (`--cert-names`) and `raw_key_list`
    /// (`--rpk-clients`) on SIGHUP too, as the PSK file of
    /// [`Server::serve_dtls`]; call after it.
    pub fn reread_on_sighup(&mut self, names_file: Option<PathBuf>, raw_key_list: Option<PathBuf>) {
        if let Some(secure) = self.dtls.as_mut() {
            secure.names_file = names_file;
            secure.raw_key_list = raw_key_list;
        }
    }

    /// The DTLS sessions, when coaps is served.
    pub fn dtls_front(&self) -> Option<&crate::dtls::Front> {
        self.dtls.as_ref().map(|s| &s.front)
    }

    /// The DTLS socket's index.
    pub(super) fn secure_socket(&self) -> Option<usize> {
        self.dtls.as_ref().map(|s| s.socket)
    }

    /// One datagram of the coaps socket: records into its session (or a
    /// HelloVerifyRequest for a ClientHello), every request they carried
    /// answered by the service with what the session's identity may fetch,
    /// the answers encrypted back.
    pub(super) fn serve_secure(
        &mut self,
        index: usize,
        from: SocketAddr,
        dest: Option<LocalDest>,
        len: usize,
    ) {
        let now_ms = self.now_ms;
        // As on the plain socket: a writer's close that came with this
        // datagram is seen before it is answered.
        if crate::sockio::take_files_changed() {
            self.on_files_changed();
        }
        let Some(secure) = self.dtls.as_mut() else {
            return;
        };
        let datagram = self.rx.get(..len).unwrap_or(&[]);
        let handled = secure.front.receive(from, now_ms, datagram);
        if handled == crate::dtls::Handled::Started {
            match dest {
                Some(dest) => secure.local_dests.insert(from, dest),
                None => secure.local_dests.remove(&from),
            };
        }
        match handled {
            crate::dtls::Handled::Connected => debug!(
                "{} coaps session established for identity '{}'",
                Shown(from),
                String::from_utf8_lossy(secure.front.identity(from).unwrap_or_default())
            ),
            crate::dtls::Handled::Failed => {
                debug!(
                    "{} coaps handshake or record failed: session removed",
                    Shown(from)
                )
            }
            crate::dtls::Handled::Closed => {
                debug!("{} coaps session closed by the peer", Shown(from))
            }
            other => trace!("{} coaps {other:?}", Shown(from)),
        }
        let requests = secure.front.take_requests();
        let authorization = secure
            .front
            .authorization(from)
            .cloned()
            .unwrap_or_default();
        // The device's name for the fleet (copied, as the authorization
        // is: the session table is borrowed again to send).
        let identity = secure.front.identity(from).unwrap_or_default().to_vec();
        for request in requests {
            if log_enabled!(Level::Debug) {
                log_request(from, &request);
            }
            let incoming = Request::new(peer(from), now_ms, &request)
                .arrived(arrival(index, dest))
                .authorized(&authorization)
                .identified(&identity);
            let settling = self.service.catalog().has_pending()
                || self.service.tree().is_some_and(FileTree::has_pending);
            let mut action = self.service.handle_request(&incoming, &mut self.tx);
            // As on the plain socket: a miss or a replaced file looks at
            // the directories first.
            if let Some(why) = rescan_reason(self.live.as_mut(), &action, settling, now_ms) {
                self.stats.rescans += 1;
                if self
                    .live
                    .as_mut()
                    .is_some_and(|live| live.rescan(&mut self.service, why))
                {
                    self.stats.catalog_changes += 1;
                }
                action = self.service.handle_again(&incoming, &mut self.tx);
            }
            log_held(from, &action);
            if let Some(len) = account(action, from, now_ms, &mut self.stats, &mut self.log_budget)
            {
                let reply = self.tx.get(..len).unwrap_or(&[]);
                secure.front.send(from, reply);
            }
        }
        flush(&self.sockets, secure, dest, &mut self.stats);
        self.send_notifications(now_ms);
    }

    /// SIGHUP: the PSK file, the names file and the raw key list read
    /// again; on an error the ones in use stay.
    pub(super) fn reload_keys(&mut self) {
        let Some(secure) = self.dtls.as_mut() else {
            return;
        };
        if let Some(path) = secure.names_file.clone() {
            match crate::dtls::DeviceNames::read(&path) {
                Ok(names) => {
                    let count = names.len();
                    let updated = secure.front.replace_device_names(Some(names));
                    info!(
                        "SIGHUP: {count} device names from {}, {updated} certificate sessions \
                         updated",
                        path.display()
                    );
                }
                Err(e) => warn!("SIGHUP: {e}; the names in use are kept"),
            }
        }
        if let Some(path) = secure.raw_key_list.clone() {
            match crate::dtls::RawPublicKeys::read(&path) {
                Ok(keys) => {
                    let count = keys.len();
                    let ended = secure.front.replace_raw_keys(keys);
                    info!(
                        "SIGHUP: {count} raw public keys from {}, {ended} sessions of removed \
                         keys ended",
                        path.display()
                    );
                    flush(&self.sockets, secure, None, &mut self.stats);
                }
                Err(e) => warn!("SIGHUP: {e}; the keys in use are kept"),
            }
        }
        let Some(path) = secure.psk_file.clone() else {
            return;
        };
        match crate::dtls::PskTable::read(&path) {
            Ok(keys) => {
                let count = keys.len();
                let ended = secure.front.replace_keys(keys);
                info!(
                    "SIGHUP: {count} PSK identities from {}{}",
                    path.display(),
                    if ended > 0 {
                        format!(", {ended} sessions of changed or removed identities ended")
                    } else {
                        String::new()
                    }
                );
                flush(&self.sockets, secure, None, &mut self.stats);
            }
            Err(e) => warn!("SIGHUP: {e}; the keys in use are kept"),
        }
    }

    /// Ends every session with close_notify (the server is stopping).
    pub(super) fn close_sessions(&mut self) {
        if let Some(secure) = self.dtls.as_mut() {
            info!(
                target: crate::logfmt::SUMMARY,
                "{}",
                secure.front.stats()
            );
            secure.front.close_all();
            flush(&self.sockets, secure, None, &mut self.stats);
        }
    }
}

/// Sends the records the DTLS front has for its peers from the coaps
/// socket: from the address the session's handshake was sent to, else
/// from `dest` (the address of the datagram just received: a
/// HelloVerifyRequest's) when it is known.
pub(super) fn flush(
    sockets: &[UdpSocket],
    secure: &mut Secure,
    dest: Option<LocalDest>,
    stats: &mut Stats,
) {
    let local_dests = &secure.local_dests;
    let socket = secure.socket;
    secure.front.drain_outgoing(|to, record| {
        let from = local_dests.get(&to).copied().or(dest);
        send(sockets, socket, record, to, from, stats);
    });
    // Sessions ended (closed, failed, timed out, evicted): their entries
    // go too. Checked by count, so that the usual flush costs nothing.
    if secure.local_dests.len() > secure.front.session_count() {
        let front = &secure.front;
        secure
            .local_dests
            .retain(|peer, _| front.has_session(*peer));
    }
}
