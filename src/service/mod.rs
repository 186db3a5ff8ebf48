//! The protocol core: one datagram in, at most one datagram out.
//!
//! [`Service::handle`] is sans-IO in the quinn-proto sense: it gets the
//! datagram, the peer as a plain value and the time as a number, writes any
//! reply into the caller's buffer and returns an [`Action`] saying what to
//! do with it and what happened. It never touches a socket, a clock, a file
//! or the logger, and draws no randomness (its keys come from the caller),
//! so every case of the protocol is a unit test and a reproducible fuzz
//! input.
//!
//! Its only state is bounded, each table by `Limits`: the per-peer table
//! (the image and OFFSET its last transfer started with, for clients that
//! send the payload only with block 0; the record of its last continuation
//! request and of recent requests that started a transfer, for duplicates,
//! below; the Message ID of its next NON reply), the optional per-address
//! rate limiter, and the Echo key.
//!
//! Every body a request can get (the whole image, or the image from an
//! OFFSET) has its own ETag, and a block always holds the bytes its ETag
//! names at its position: per-peer state only guesses which body a
//! payload-less block continues, and a wrong guess is visible to the
//! client (see `routes`).
//!
//! One file per concern: `types` (the values the service takes and
//! returns: limits, keys, peers, actions, outcomes), `routes` (resources, bodies, Block2 slicing),
//! `peers` (per-peer transfer, duplicate and Message ID state), `guard`
//! (rate limit and Echo), `table` (the bounded expiring map they use),
//! `fast` (the fast path, [`Service::handle_block`]: a later block of an
//! image by id, answered as `handle` would answer it, with less work),
//! `fleet_routes` (reports, `/status`, and the lookup's `ep=` and
//! `delta=`; the fleet itself is [`crate::fleet`], asked per lookup and
//! report and told of first and last blocks), `versions` (the old versions
//! of the tree's files and of the catalog's images that downloads under
//! way still need: one version per download, at most one old version per
//! file or image).
//! State changes are applied only when the reply is actually sent, so an
//! unverified request answered with an Echo challenge changes nothing.
//!
//! Duplicate Confirmable requests (RFC 7252 §4.5) are answered by
//! deterministic regeneration rather than a cache of replies: the catalog
//! is immutable and a reply is a pure function of the request bytes and the
//! continuation state it was resolved from. A duplicate of a request that
//! started a transfer is recognised (peer, Message ID, fingerprint of its
//! bytes) and does not reset the transfer the peer started since; a
//! duplicate of the peer's last continuation is answered from the state its
//! first copy used. That costs a few dozen bytes per peer, where a cache of
//! 1 KiB replies would cost a kilobyte per device of a fleet. Exceptions:
//! with `--rate-limit` a duplicate counts as a request (and may get 4.29),
//! and with `--echo` it is checked again (Echo values stay valid for one
//! to two minutes, longer than a client retransmits).

mod fast;
mod fleet_routes;
mod guard;
mod observe;
mod peers;
mod routes;
pub(crate) mod table;
mod types;
mod versions;

use crate::catalog::{Catalog, Image};
use crate::fleet::{DeviceName, Fleet, FleetFiles, Note, Target};
use crate::hash::fnv1a64_concat;
use crate::tree::{FileTree, TreeFile};
use crate::wire::{self, Block, Emitter, Message, ParseError};
use coap_lite::{CoapOption, MessageClass, MessageType, ResponseType};
use core::fmt::{self, Write as _};
use guard::Guard;
#[cfg(test)]
use observe::OBSERVE_MAX_AGE_S;
use observe::REFRESH_MS;
use observe::{Intent, ObserverKey, Observers};
use peers::{Kind, Peers, RequestId};
use routes::Ctx;
pub use types::*;
use types::{DIAGNOSTIC_MAX, GET_CODE};
use versions::Versions;

/// The protocol core with its bounded state; see the module docs.
#[derive(Debug)]
pub struct Service {
    catalog: Catalog,
    /// The `--files` tree, if one is served.
    tree: Option<FileTree>,
    limits: Limits,
    server_szx: u8,
    peers: Peers,
    guard: Guard,
    observers: Observers,
    /// Rollouts, devices and their reports.
    fleet: Fleet,
    /// The rollout policies and patches beside the images: an immutable
    /// snapshot like the catalog, swapped in whole.
    fleet_files: FleetFiles,
    /// The fleet changed since [`Service::notice_fleet_changes`] last ran.
    fleet_changed: bool,
    /// Old versions of the tree's files that downloads still need.
    file_versions: Versions<TreeFile>,
    /// Old versions of the catalog's images that downloads still need;
    /// each image that has one is marked in the catalog served.
    image_versions: Versions<Image>,
    /// A download of an old version ended: the next request drops what no
    /// download needs any more.
    versions_to_expire: bool,
    /// The time of the latest request handled by the general path, or
    /// given by [`Service::set_now`]: the time of a snapshot swapped in
    /// between two requests.
    latest_ms: u64,
}

impl Service {
    /// A service over `catalog` with the secrets `keys`.
    ///
    /// # Panics
    /// When `limits.max_block_size` is not a power of two in 16..=1024:
    /// `main` validates it first.
    pub fn new(catalog: Catalog, limits: Limits, keys: Keys) -> Service {
        let server_szx = Block::szx_for_size(limits.max_block_size)
            .expect("max_block_size is a power of two in 16..=1024");
        Service {
            catalog,
            tree: None,
            limits,
            server_szx,
            peers: Peers::new(
                limits.continuation_capacity,
                EXCHANGE_LIFETIME_MS,
                keys.tables,
                keys.message_ids,
            ),
            guard: Guard::new(
                limits.rate_limit,
                limits.rate_table_capacity,
                keys.tables,
                limits.echo,
                keys.echo,
            ),
            observers: Observers::new(limits.max_observers, keys.tables),
            fleet: Fleet::new(limits.max_devices, keys.tables),
            fleet_files: FleetFiles::default(),
            fleet_changed: false,
            file_versions: Versions::default(),
            image_versions: Versions::default(),
            versions_to_expire: false,
            latest_ms: 0,
        }
    }

    /// The fleet: policies, devices, rollouts, and the events the caller
    /// logs and journals.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The fleet, to restore it from a journal or drain its events.
    pub fn fleet_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }

    /// Tells the fleet about a block the fast path ([`Service::handle_block`])
    /// sent to `peer` at `now_ms`: the caller calls it for the last block of
    /// a body only (the fast path never sends block 0), so that the blocks
    /// in between cost nothing more.
    pub fn note_block(&mut self, peer: Peer, block: BlockSent, now_ms: u64) {
        let request = Request::new(peer, now_ms, &[]);
        let note = Note::Block {
            name: device_name(&self.fleet, None, &request),
            target: Target {
                image: self
                    .fleet_files
                    .patch_target(block.image)
                    .unwrap_or(block.image),
                version: block.version,
            },
            first: block.first,
            last: block.last,
        };
        self.fleet.apply(&self.fleet_files, note, now_ms);
        self.fleet_changed |= self.fleet.has_events();
    }

    /// Has the observers of `/status` (and every other observer) compared
    /// again at the next [`Service::poll_notification`] when the fleet
    /// changed since the last call. The caller calls it on a timer (the
    /// rescan's), so that a flood of changes costs one comparison per
    /// period, not one per request.
    pub(crate) fn notice_fleet_changes(&mut self) {
        if std::mem::take(&mut self.fleet_changed) && !self.observers.is_empty() {
            self.observers.mark_changed();
        }
    }

    /// Serves the policies and patches `files` from the next request on
    /// and returns the snapshot it replaces (one assignment, as
    /// [`Service::replace_catalog`]); observers are compared again, since
    /// a lookup's answer may have changed.
    pub fn replace_fleet_files(&mut self, files: FleetFiles) -> FleetFiles {
        self.observers.mark_changed();
        self.fleet.files_changed(&files);
        std::mem::replace(&mut self.fleet_files, files)
    }

    /// The rollout policies and patches served.
    pub fn fleet_files(&self) -> &FleetFiles {
        &self.fleet_files
    }

    /// Ties the service's clock to the wall clock: `unix_ms` is the time,
    /// in milliseconds since the Unix epoch, at `now_ms` 0 of
    /// [`Service::handle`]. Echo windows are then cut at the same instants
    /// in every process (processes sharing an Echo key need that), and
    /// Observe values are the wall-clock time (README, "Observe"), so that
    /// a client registering again after a restart takes them as newer than
    /// the last it had (RFC 7641 §3.4). Without it both count from the
    /// first `now_ms` 0, which is enough within one process.
    pub fn set_wall_clock(&mut self, unix_ms: u64) {
        self.guard.set_echo_clock(unix_ms);
        self.observers.set_clock(unix_ms);
    }

    /// Serves `catalog` from the next request on, and returns the one it
    /// replaces. Per-peer state names images by id, so a transfer of an
    /// image that is still there continues. An image replaced in place
    /// (same file name, other bytes) while peers download it keeps its old
    /// version for them (one per image; see `versions`), so that each
    /// download that began with block 0 ends with the bytes it began with;
    /// the image is marked ([`Image::has_held_version`]) so that the fast
    /// path leaves its blocks to the general path, which decides. Without
    /// a record of the download (evicted, a restart) a later block gets the
    /// new content under its new ETag, which a client sees. Observers are
    /// compared with the new catalog at the next
    /// [`Service::poll_notification`].
    pub fn replace_catalog(&mut self, mut catalog: Catalog) -> Catalog {
        self.observers.mark_changed();
        let now_ms = self.latest_ms;
        let downloads = self.peers.downloads(Kind::Image, now_ms);
        if !downloads.is_empty() || !self.image_versions.is_empty() {
            let next = &catalog;
            let replaced = self.catalog.images().iter().filter_map(|image| {
                let now = next.by_id(image.id)?;
                (now.etag != image.etag).then_some((u64::from(image.id), image))
            });
            self.image_versions.on_replace(replaced, &downloads, now_ms);
        }
        let versions = &self.image_versions;
        catalog.mark_held(|image| versions.holds(u64::from(image.id)));
        std::mem::replace(&mut self.catalog, catalog)
    }

    /// Tells the service the time (as `now_ms` of [`Service::handle`]) at
    /// which the caller is about to swap a snapshot in: the fast path does
    /// not note the time of the blocks it answers, and which downloads are
    /// under way, and since when an old version is unused, is judged at
    /// this time.
    pub fn set_now(&mut self, now_ms: u64) {
        self.latest_ms = self.latest_ms.max(now_ms);
    }

    /// Serves `tree` (`None`: no file tree) from the next datagram on and
    /// returns the one it replaces, like [`Service::replace_catalog`]. A
    /// file replaced while peers download it keeps its old version for
    /// them (one per file; see `versions`), so that each download ends
    /// with the bytes it began with.
    pub fn replace_tree(&mut self, tree: Option<FileTree>) -> Option<FileTree> {
        self.observers.mark_changed();
        if let (Some(current), Some(next)) = (self.tree.as_ref(), tree.as_ref()) {
            let now_ms = self.latest_ms;
            let downloads = self.peers.downloads(Kind::File, now_ms);
            if !downloads.is_empty() || !self.file_versions.is_empty() {
                let replaced = current.files().iter().filter_map(|file| {
                    let gone = next
                        .file(file.segments())
                        .map_or(true, |now| now.etag != file.etag);
                    gone.then(|| (file.key(), file))
                });
                self.file_versions.on_replace(replaced, &downloads, now_ms);
            }
        }
        std::mem::replace(&mut self.tree, tree)
    }

    /// Drops the old versions of files and images that no download needs
    /// any more (see `versions`): the server calls it with its timers.
    pub fn expire_versions(&mut self, now_ms: u64) {
        if !self.file_versions.is_empty() {
            let downloads = self.peers.downloads(Kind::File, now_ms);
            self.file_versions.retain(&downloads, now_ms);
        }
        if !self.image_versions.is_empty() {
            let downloads = self.peers.downloads(Kind::Image, now_ms);
            if self.image_versions.retain(&downloads, now_ms) {
                let versions = &self.image_versions;
                self.catalog
                    .mark_held(|image| versions.holds(u64::from(image.id)));
            }
        }
    }

    /// Old versions of files and images held for downloads under way, and
    /// their bytes.
    pub fn old_versions(&self) -> (usize, u64) {
        (
            self.file_versions.len() + self.image_versions.len(),
            self.file_versions.bytes() + self.image_versions.bytes(),
        )
    }

    /// The file tree served, if any.
    pub fn tree(&self) -> Option<&FileTree> {
        self.tree.as_ref()
    }

    /// The catalog served.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Peers with remembered state (bounded by
    /// [`Limits::continuation_capacity`]).
    pub fn continuation_count(&self) -> usize {
        self.peers.len()
    }

    /// Addresses tracked by the rate limiter (bounded by
    /// [`Limits::rate_table_capacity`]).
    pub fn rate_table_len(&self) -> usize {
        self.guard.rate_table_len()
    }

    /// Observations registered (bounded by [`Limits::max_observers`]).
    pub fn observer_count(&self) -> usize {
        self.observers.len()
    }

    /// When [`Service::poll_notification`] has something to do: at once
    /// (0) after a catalog or tree change or with notifications queued,
    /// else at the next retransmission or 24-hour refresh; `None` without
    /// observers.
    #[inline]
    pub(crate) fn next_notification_ms(&self) -> Option<u64> {
        self.observers.next_due_ms()
    }

    /// The next notification owed at `now_ms`, written into `out`, or
    /// `None` when there is none; call until `None` (or as many as the
    /// caller wants to send at once: the rest stay queued).
    ///
    /// After a catalog or tree change, every observer's request is
    /// answered again and compared with what it was last sent (by ETag, or
    /// by image id for a lookup); the observers whose answer changed are
    /// owed one. Retransmissions of unacknowledged Confirmable
    /// notifications and the 24-hour refreshes come due by the clock.
    pub fn poll_notification(&mut self, now_ms: u64, out: &mut [u8]) -> Option<Notification> {
        if self.observers.is_empty() {
            return None;
        }
        if self.observers.take_changed() {
            // Allocates once per change, not per datagram.
            let keys: Vec<ObserverKey> = self.observers.keys().collect();
            for key in keys {
                let sent = self.observers.get(&key).map(|o| o.tag);
                let now = self
                    .answer_again(&key, MessageType::NonConfirmable, 0, 0, now_ms, out)
                    .map(|(_, tag, _)| tag);
                if now.is_some_and(|tag| tag != sent) {
                    self.observers.make_due(key);
                }
            }
        }
        self.observers.run_timers(now_ms);
        while let Some(key) = self.observers.pop_due() {
            if let Some(notification) = self.notify(key, now_ms, out) {
                return Some(notification);
            }
        }
        None
    }

    /// The notification owed to `key`: a retransmission (same Message ID
    /// and Observe value) when its Confirmable notification is unanswered
    /// and the representation unchanged, else a new one. Confirmable when
    /// one is in flight, every [`observe::CON_EVERY`]th time, and when the
    /// observer has not confirmed for [`REFRESH_MS`].
    fn notify(&mut self, key: ObserverKey, now_ms: u64, out: &mut [u8]) -> Option<Notification> {
        let o = self.observers.get(&key)?;
        let (sent_tag, sent_seq, last_mid, in_flight, arrival) =
            (o.tag, o.seq, o.last_mid, o.in_flight, o.arrival);
        if in_flight.is_some_and(|f| f.attempts >= observe::MAX_RETRANSMIT) {
            // Its last transmission is out (RFC 7252 §4.2): the change
            // waits for the ACK, and the last timeout without one ends the
            // observation.
            self.observers.hold(&key);
            return None;
        }
        let overdue = now_ms.saturating_sub(o.confirmed_ms) >= REFRESH_MS;
        let every_nth = o.non_since_con.saturating_add(1) >= observe::CON_EVERY;
        let probe = self.answer_again(&key, MessageType::NonConfirmable, 0, 0, now_ms, out);
        let Some((_, tag, _)) = probe else {
            self.observers.remove(&key);
            return None;
        };
        let retransmit = in_flight.is_some_and(|f| f.due_ms <= now_ms) && tag == Some(sent_tag);
        let (mid, seq) = match (retransmit, last_mid) {
            (true, Some(mid)) => (mid, sent_seq),
            _ => (
                self.peers.next_non_mid(key.peer(), now_ms),
                self.observers.next_seq(&key, now_ms),
            ),
        };
        let confirmable = in_flight.is_some() || every_nth || overdue;
        let mtype = if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        };
        let (len, tag, of_status) = self.answer_again(&key, mtype, mid, seq, now_ms, out)?;
        match tag {
            Some(tag) => self
                .observers
                .record_sent(key, mid, seq, tag, confirmable, now_ms),
            None => self.observers.remove(&key),
        }
        Some(Notification {
            len,
            peer: key.peer(),
            arrival,
            confirmable,
            last: tag.is_none(),
            of_status,
        })
    }

    /// The registration request of `key` answered again from the current
    /// catalog and tree into `out`, as a `mtype` message with Message ID
    /// `mid` and Observe `seq`: its length, the representation's tag
    /// (`None` when the answer is no longer observable: an error response,
    /// which ends the observation) and whether it is `/status`'s. `None` overall when there is nothing to
    /// send (never for a request that registered).
    fn answer_again(
        &self,
        key: &ObserverKey,
        mtype: MessageType,
        mid: u16,
        seq: u32,
        now_ms: u64,
        out: &mut [u8],
    ) -> Option<(usize, Option<u64>, bool)> {
        let o = self.observers.get(key)?;
        let msg = Message::parse(&o.request).ok()?;
        let mut ctx = Ctx {
            catalog: &self.catalog,
            tree: self.tree.as_ref(),
            file_versions: &self.file_versions,
            image_versions: &self.image_versions,
            ended_held: false,
            now_ms,
            server_szx: self.server_szx,
            // Read only: a notification changes no transfer.
            peer_state: self.peers.pending(
                key.peer(),
                now_ms,
                RequestId::new(msg.mid, false, &o.request),
            ),
            msg: &msg,
            reply_to: ReplyTo {
                mtype,
                mid,
                token: msg.token,
            },
            observe: Some(seq),
            observed: None,
            // The registration was authorized; a lookup's answers stay
            // within its PID, an image by id is not observable.
            authorization: None,
            fleet: &self.fleet,
            fleet_files: &self.fleet_files,
            peer: key.peer(),
            identity: None,
            // Its registration was allowed to read `/status`: by its
            // address (the limits do not change) or by its identity.
            status_open: true,
            read_status: false,
            note: None,
        };
        let len = match ctx.route(out) {
            Ok((len, _)) => len,
            Err(Failure::Error(code, diagnostic)) => ctx.error(code, diagnostic, out).ok()?,
            Err(Failure::Unavailable { max_age }) => ctx.unavailable(max_age, out).ok()?,
            Err(_) => return None,
        };
        Some((len, ctx.observed, ctx.read_status))
    }

    /// What the request does to the observers (RFC 7641 §2, §3.6): only a
    /// GET for a first block can register or end an observation by a
    /// plain request (the later blocks of an observed body are plain GETs
    /// with the same token); requests to a multicast group never register.
    #[inline]
    fn observe_intent(&self, msg: &Message<'_>, request: &Request<'_>) -> Intent {
        let Request {
            peer,
            arrival,
            now_ms,
            datagram,
            ..
        } = *request;
        // The common case first, in two loads: no Observe option and
        // nobody observing (no decoding of the code, no key built).
        if msg.observe.is_none() && self.observers.is_empty() {
            return Intent::None;
        }
        if msg.code != GET_CODE {
            return Intent::None;
        }
        let first_block = !matches!(msg.block2, Some(Ok(block)) if block.num > 0);
        let Some(key) = ObserverKey::new(peer, msg.token) else {
            return Intent::None;
        };
        match msg.observe {
            Some(0) if first_block && !arrival.multicast && self.observers.enabled() => {
                let duplicate = match msg.mtype {
                    MessageType::Confirmable => self.observers.duplicate(&key, datagram, now_ms),
                    _ => None,
                };
                match duplicate {
                    Some(seq) => Intent::Duplicate { key, seq },
                    None => Intent::Register {
                        key,
                        seq: self.observers.next_seq(&key, now_ms),
                    },
                }
            }
            Some(1) if !self.observers.is_empty() => Intent::Deregister(key),
            None if first_block
                && !self.observers.is_empty()
                && self.observers.get(&key).is_some() =>
            {
                Intent::PlainGet {
                    key,
                    target: target_of(msg),
                }
            }
            _ => Intent::None,
        }
    }

    /// Handles one unicast datagram on the plain socket from `peer`
    /// received at `now_ms` (any monotonic millisecond clock): shorthand
    /// for [`Service::handle_request`] with [`Request::new`]. A datagram
    /// longer than [`MAX_REQUEST_LEN`] is taken as truncated and answered
    /// 4.13. `out` should hold [`MAX_REPLY_LEN`] bytes.
    #[inline]
    pub fn handle(
        &mut self,
        peer: Peer,
        now_ms: u64,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Action<'_> {
        self.answer(&Request::new(peer, now_ms, datagram), out, true)
    }

    /// Handles one datagram as `request` describes it. A unicast request
    /// is answered as the protocol says; a request sent to a multicast
    /// group by RFC 7252 §8: only Non-confirmable requests are answered,
    /// and only with something useful: never an RST, an error or an empty
    /// answer (§8.2.1), so a group of servers stays quiet except for the
    /// ones that have what was asked for. The caller sends a multicast
    /// answer after a random delay within the Leisure period (§8.2), from a
    /// unicast address of the interface it arrived on. A request with an
    /// [`Request::authorization`] (one that arrived decrypted over a secure
    /// channel, coaps) for an image of another product gets 4.03 Forbidden.
    #[inline]
    pub fn handle_request(&mut self, request: &Request<'_>, out: &mut [u8]) -> Action<'_> {
        self.answer(request, out, true)
    }

    /// [`Service::handle_request`] once more for the same request, after
    /// the caller replaced the catalog because the first answer found
    /// nothing: the request is not counted against the rate limit again.
    pub(crate) fn handle_again(&mut self, request: &Request<'_>, out: &mut [u8]) -> Action<'_> {
        self.answer(request, out, false)
    }

    /// The one path of every request: the multicast rules of
    /// [`Service::handle_request`] around [`Service::handle_counted`].
    #[inline]
    fn answer(&mut self, request: &Request<'_>, out: &mut [u8], count: bool) -> Action<'_> {
        if !request.arrival.multicast {
            return self.handle_counted(request, out, count);
        }
        match wire::Header::parse(request.datagram) {
            Ok((header, _)) if header.mtype == MessageType::NonConfirmable => {}
            _ => return Action::Drop(Dropped::Multicast),
        }
        match self.handle_counted(request, out, count) {
            Action::Reply { len, outcome } if useful(&outcome, out.get(..len)) => {
                Action::Reply { len, outcome }
            }
            Action::Reply { .. } => Action::Drop(Dropped::Multicast),
            dropped => dropped,
        }
    }

    /// [`Service::handle_request`], counting the request against the rate
    /// limit when `count`.
    fn handle_counted(&mut self, request: &Request<'_>, out: &mut [u8], count: bool) -> Action<'_> {
        let Request {
            peer,
            now_ms,
            datagram,
            authorization,
            identity,
            ..
        } = *request;
        if datagram.len() > MAX_REQUEST_LEN {
            return self.too_large(request, out);
        }
        let msg = match Message::parse(datagram) {
            Ok(msg) => msg,
            Err(ParseError::TooShort) => return Action::Drop(Dropped::TooShort),
            Err(ParseError::BadVersion(_)) => return Action::Drop(Dropped::BadVersion),
            Err(ParseError::Format { mtype, mid, .. }) => {
                return reject(mtype, mid, out, Dropped::Malformed)
            }
        };
        match (msg.mtype, msg.class()) {
            (MessageType::Acknowledgement, _) => {
                self.observers.on_ack(peer, msg.mid, now_ms);
                return Action::Drop(Dropped::AckOrReset);
            }
            (MessageType::Reset, _) => {
                self.observers.on_reset(peer, msg.mid);
                return Action::Drop(Dropped::AckOrReset);
            }
            (MessageType::Confirmable, MessageClass::Empty) => {
                return reset(msg.mid, out, ResetReason::Ping)
            }
            (_, MessageClass::Request(_)) => {}
            // RFC 7252 §5.8: an unassigned method code (0.08..0.31) is
            // still a request, answered 4.05 rather than reset.
            (_, MessageClass::Reserved(code)) if code >> 5 == 0 => {}
            (mtype, _) => return reject(mtype, msg.mid, out, Dropped::NotARequest),
        }
        let reply_to = self.reply_to(peer, now_ms, msg.mtype, msg.mid, msg.token);
        let request_len = datagram.len();
        if count {
            if let Some(limited) = self
                .guard
                .rate_limit(reply_to, peer, now_ms, request_len, out)
            {
                return limited;
            }
        }
        let confirmable = msg.mtype == MessageType::Confirmable;
        let intent = self.observe_intent(&msg, request);
        self.latest_ms = now_ms;
        if self.versions_to_expire {
            self.versions_to_expire = false;
            self.expire_versions(now_ms);
        }
        let mut ctx = Ctx {
            catalog: &self.catalog,
            tree: self.tree.as_ref(),
            file_versions: &self.file_versions,
            image_versions: &self.image_versions,
            ended_held: false,
            now_ms,
            server_szx: self.server_szx,
            peer_state: self.peers.pending(
                peer,
                now_ms,
                RequestId::new(msg.mid, confirmable, datagram),
            ),
            msg: &msg,
            reply_to,
            observe: match intent {
                Intent::Register { seq, .. } | Intent::Duplicate { seq, .. } => Some(seq),
                _ => None,
            },
            observed: None,
            authorization,
            fleet: &self.fleet,
            fleet_files: &self.fleet_files,
            peer,
            identity,
            status_open: status_open(&self.limits, authorization, peer),
            read_status: false,
            note: None,
        };
        let (len, outcome) = match ctx.route(out) {
            Ok(done) => done,
            Err(Failure::NoUpdate) => return reset(msg.mid, out, ResetReason::NoUpdate),
            Err(Failure::Ignore(reason)) => return Action::Drop(reason),
            Err(Failure::Error(code, diagnostic)) => match ctx.error(code, diagnostic, out) {
                Ok(len) => (len, Outcome::Error(code)),
                Err(_) => return Action::Drop(Dropped::Overflow),
            },
            Err(Failure::Unavailable { max_age }) => match ctx.unavailable(max_age, out) {
                Ok(len) => (len, Outcome::Error(ResponseType::ServiceUnavailable)),
                Err(_) => return Action::Drop(Dropped::Overflow),
            },
            Err(Failure::Overflow) => return Action::Drop(Dropped::Overflow),
        };
        let observed = ctx.observed;
        let note = ctx.note;
        let ended_held = ctx.ended_held;
        let write = ctx.peer_state.into_write();
        // Tested here first, so that a server without --echo does not
        // call the check (as the fast path does).
        if self.limits.echo {
            if let Some(challenge) = self.guard.check_echo(reply_to, request, msg.echo, len, out) {
                return challenge;
            }
        }
        self.peers.commit(peer, write, now_ms);
        let note = note.or_else(|| block_note(&self.fleet, &self.fleet_files, &outcome, request));
        if let Some(note) = note {
            self.fleet.apply(&self.fleet_files, note, now_ms);
            self.fleet_changed |= self.fleet.has_events();
        }
        self.versions_to_expire |= ended_held;
        if intent != Intent::None {
            let non_mid = (reply_to.mtype == MessageType::NonConfirmable).then_some(reply_to.mid);
            apply_intent(
                &mut self.observers,
                intent,
                observed,
                &msg,
                request,
                non_mid,
            );
        }
        Action::Reply { len, outcome }
    }

    /// Where a reply to a request of type `mtype` goes: a piggybacked ACK
    /// with the request's Message ID for a CON, else a NON with a fresh one.
    fn reply_to<'m>(
        &mut self,
        peer: Peer,
        now_ms: u64,
        mtype: MessageType,
        mid: u16,
        token: &'m [u8],
    ) -> ReplyTo<'m> {
        match mtype {
            MessageType::Confirmable => ReplyTo {
                mtype: MessageType::Acknowledgement,
                mid,
                token,
            },
            _ => ReplyTo {
                mtype: MessageType::NonConfirmable,
                mid: self.peers.next_non_mid(peer, now_ms),
                token,
            },
        }
    }

    /// 4.13 for a datagram longer than [`MAX_REQUEST_LEN`], when its header
    /// and token can be read and it is a request.
    fn too_large<'c>(&mut self, request: &Request<'_>, out: &mut [u8]) -> Action<'c> {
        let header = match wire::Header::parse(request.datagram) {
            Ok((header, _)) => header,
            Err(ParseError::TooShort) => return Action::Drop(Dropped::TooShort),
            Err(ParseError::BadVersion(_)) => return Action::Drop(Dropped::BadVersion),
            Err(ParseError::Format {
                mtype: MessageType::Acknowledgement | MessageType::Reset,
                ..
            }) => return Action::Drop(Dropped::AckOrReset),
            Err(ParseError::Format { .. }) => return Action::Drop(Dropped::Malformed),
        };
        match header.mtype {
            MessageType::Acknowledgement | MessageType::Reset => {
                return Action::Drop(Dropped::AckOrReset)
            }
            _ if !header.is_request() => return Action::Drop(Dropped::Malformed),
            _ => {}
        }
        let code = ResponseType::RequestEntityTooLarge;
        let written = self
            .reply_to(
                request.peer,
                request.now_ms,
                header.mtype,
                header.mid,
                header.token,
            )
            .emitter(code, out)
            .and_then(|mut e| {
                e.option_uint(CoapOption::Size1.into(), MAX_REQUEST_LEN as u32)?;
                write_diagnostic(e, Diagnostic::TooLarge(MAX_REQUEST_LEN))
            });
        match written {
            Ok(len) => Action::Reply {
                len,
                outcome: Outcome::Error(code),
            },
            Err(_) => Action::Drop(Dropped::Overflow),
        }
    }
}

/// The type, Message ID and token a reply carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyTo<'m> {
    mtype: MessageType,
    mid: u16,
    token: &'m [u8],
}

impl ReplyTo<'_> {
    /// An emitter for a reply with `code`.
    pub(crate) fn emitter<'o>(
        &self,
        code: ResponseType,
        out: &'o mut [u8],
    ) -> Result<Emitter<'o>, wire::EmitError> {
        Emitter::new(
            out,
            self.mtype,
            MessageClass::Response(code),
            self.mid,
            self.token,
        )
    }
}

/// Ends an error reply with its diagnostic text (RFC 7252 §5.5.2), cut at
/// [`DIAGNOSTIC_MAX`] bytes.
fn write_diagnostic(e: Emitter<'_>, diagnostic: Diagnostic) -> Result<usize, wire::EmitError> {
    e.payload_with(DIAGNOSTIC_MAX, |room| {
        let mut writer = SliceWriter { buf: room, len: 0 };
        // A diagnostic cut short at DIAGNOSTIC_MAX is still useful.
        let _ = write!(writer, "{diagnostic}");
        writer.len
    })
}

/// Applies `intent` once the reply is sent; `observed` is the tag of an
/// answer that carried Observe, `non_mid` the Message ID of a NON reply.
fn apply_intent(
    observers: &mut Observers,
    intent: Intent,
    observed: Option<u64>,
    msg: &Message<'_>,
    request: &Request<'_>,
    non_mid: Option<u16>,
) {
    match (intent, observed) {
        (Intent::Register { key, seq }, Some(tag)) => {
            let target = target_of(msg);
            observers.register(key, request, target, (seq, tag), non_mid);
        }
        // Answered as its first copy was; the observation is unchanged.
        (Intent::Duplicate { .. }, _) => {}
        // RFC 7641 §4.1: a registration answered with an error (or by
        // a resource that cannot be observed) ends an existing one.
        (Intent::Register { key, .. } | Intent::Deregister(key), _) => observers.remove(&key),
        (Intent::PlainGet { key, target }, _) => observers.remove_if_target(&key, target),
        (Intent::None, _) => {}
    }
}

/// Whether a request may read `/status`. Over coaps (`authorization`
/// given) its identity decides, never its address: a coaps front reached
/// through a tunnel or a relay sees its peers at a loopback address. On
/// plain CoAP a loopback or link-local source may, or one within a
/// `--status-from` prefix.
fn status_open(limits: &Limits, authorization: Option<&Authorization>, peer: Peer) -> bool {
    match authorization {
        Some(authorization) => authorization.reads_status(),
        None => {
            is_local_source(&peer.ip)
                || limits
                    .status_from
                    .iter()
                    .flatten()
                    .any(|p| p.contains(&peer.ip))
        }
    }
}

/// A block sent, as [`Service::note_block`] takes it: no borrow of the
/// catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSent {
    /// The id of the image (or patch) the body is cut from.
    pub image: u32,
    /// Its version.
    pub version: u32,
    /// Block 0 of the body.
    pub first: bool,
    /// The last block of the body.
    pub last: bool,
}

impl BlockSent {
    /// The block `t` is.
    pub fn of(t: &Transfer<'_>) -> BlockSent {
        BlockSent {
            image: t.image.id,
            version: t.image.version,
            first: t.is_first(),
            last: t.is_last(),
        }
    }
}

/// The fleet's note of the first or last block of a firmware body (block
/// 0 is "downloading", the last "downloaded"); `None` for any other reply.
/// The device is named by its coaps identity, else by the `ep=` its last
/// lookup from the same address gave, else by its address.
fn block_note(
    fleet: &Fleet,
    files: &FleetFiles,
    outcome: &Outcome<'_>,
    request: &Request<'_>,
) -> Option<Note> {
    let Outcome::Block(t) = outcome else {
        return None;
    };
    if !t.is_first() && !t.is_last() {
        return None;
    }
    let image = files.patch_target(t.image.id).unwrap_or(t.image.id);
    Some(Note::Block {
        name: device_name(fleet, None, request),
        target: Target {
            image,
            version: t.image.version,
        },
        first: t.is_first(),
        last: t.is_last(),
    })
}

/// A device's name: `ep` when the request gave one, else its coaps
/// identity, else the name a lookup from its address gave, else its
/// address.
pub(crate) fn device_name(
    fleet: &Fleet,
    ep: Option<DeviceName>,
    request: &Request<'_>,
) -> DeviceName {
    // An authenticated name first: over coaps a device cannot look up or
    // report under another device's name.
    request
        .identity
        .map(DeviceName::from_identity)
        .or(ep)
        .or_else(|| fleet.name_of(request.peer.ip))
        .unwrap_or_else(|| DeviceName::from_ip(request.peer.ip))
}

/// What identifies the resource a request names, beyond its token: path,
/// query, Accept and payload (the lookup's payload form carries its
/// parameters there).
fn target_of(msg: &Message<'_>) -> u64 {
    let accept = msg.accept.map_or([0xFF; 3], |a| {
        let [hi, lo] = a.to_be_bytes();
        [0, hi, lo]
    });
    let path = msg.path.iter().flat_map(|s| [&b"/"[..], s]);
    let query = msg.query.as_slice().iter().flat_map(|q| [&b"?"[..], q]);
    fnv1a64_concat(
        path.chain(query)
            .chain([&accept[..], &b"#"[..], msg.payload]),
    )
}

/// Whether a reply is worth sending to a multicast request: a block, or a
/// 2.05 with a payload (RFC 7252 §8.2.1: no empty answers).
fn useful(outcome: &Outcome<'_>, reply: Option<&[u8]>) -> bool {
    match outcome {
        Outcome::Block(_) | Outcome::File { .. } => true,
        Outcome::Content => reply
            .and_then(|r| Message::parse(r).ok())
            .is_some_and(|m| !m.payload.is_empty()),
        _ => false,
    }
}

fn reset<'c>(mid: u16, out: &mut [u8], reason: ResetReason) -> Action<'c> {
    match wire::emit_empty(out, MessageType::Reset, mid) {
        Ok(len) => Action::Reply {
            len,
            outcome: Outcome::Reset(reason),
        },
        Err(_) => Action::Drop(Dropped::Overflow),
    }
}

/// RFC 7252 §4.2/§4.3: a Confirmable message that cannot be processed is
/// rejected with an RST; anything else is silently ignored.
fn reject<'c>(mtype: MessageType, mid: u16, out: &mut [u8], dropped: Dropped) -> Action<'c> {
    match mtype {
        MessageType::Confirmable => reset(mid, out, ResetReason::Rejected),
        _ => Action::Drop(dropped),
    }
}

/// `fmt::Write` into a byte slice, silently cut at its end.
struct SliceWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len().saturating_sub(self.len);
        let n = s.len().min(room);
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + n),
            s.as_bytes().get(..n),
        ) {
            dst.copy_from_slice(src);
            self.len += n;
        }
        if n < s.len() {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
