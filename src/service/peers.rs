//! Per-peer state: what the server remembers of each address and port, in
//! one bounded table entry so that a request costs at most one lookup and
//! one write.
//!
//! - The transfer: the image and OFFSET the peer last named with a payload,
//!   for stock clients that send the payload with block 0 only (libcoap's
//!   `-f`, node-coap). Only a guess for a payload-less block: every body
//!   has its own ETag, so a wrong guess is visible to the client.
//! - Duplicates (RFC 7252 §4.5): the peer's last continuation request and
//!   its two latest transfer starts, each by Message ID and a fingerprint
//!   of the datagram, so a late duplicate is answered as its first copy
//!   was without resetting a transfer started since.
//! - The Message ID of the peer's next NON reply (RFC 7252 §4.4).
//! - The file of the tree or the image the peer is downloading and the
//!   ETag its block 0 was sent under, so that its later blocks come from
//!   that version even if the file is replaced meanwhile (see `versions`).
//!
//! A request reads the table through a [`Pending`] view and its changes
//! are committed only once its reply is actually sent: a request answered
//! with an Echo challenge changes nothing.

use super::table::BoundedTable;
use super::Peer;
use crate::hash::{fnv1a32, SipKey};
use core::hash::Hasher;

/// The image and OFFSET a peer's transfer started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Continuation {
    /// The image's id as 8 hex digits.
    pub(crate) image_id: [u8; 8],
    /// Where the body starts in the image.
    pub(crate) offset: u32,
}

/// A peer's last served continuation request: its Message ID, a
/// fingerprint of its bytes (so that a new request that merely reuses the
/// Message ID, as a rebooted device restarting its counter does, is not
/// taken for a duplicate) and the transfer it was answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exchange {
    mid: u16,
    fingerprint: u32,
    entry: Continuation,
}

/// What a download is of: a file of the tree or an image of the catalog,
/// each with keys of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// A file of the `--files` tree, keyed by the tree's key of its path.
    File,
    /// An image of the catalog, keyed by its id.
    Image,
}

/// A download of a file of the tree or of an image: which one (its kind
/// and key) and the ETag of the version its block 0 was sent under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Download {
    /// A file or an image.
    pub(crate) kind: Kind,
    /// The tree's key of the file's path, or the image's id.
    pub(crate) key: u64,
    /// The ETag of the version being downloaded.
    pub(crate) etag: [u8; 8],
    /// Whether a block of it was served from the old version already (the
    /// log line is written once per download).
    pub(crate) held: bool,
}

/// Everything remembered about one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PeerState {
    /// The transfer the peer's last OFFSET-carrying request started.
    transfer: Option<Continuation>,
    /// The peer's last payload-less continuation request.
    last_continuation: Option<Exchange>,
    /// The peer's two latest Confirmable requests that started a transfer
    /// (Message ID, fingerprint), newest first.
    starts: [Option<(u16, u32)>; 2],
    /// The Message ID of the next NON reply to this peer.
    next_mid: Option<u16>,
    /// The file of the tree or the image the peer is downloading.
    download: Option<Download>,
}

/// The request being answered, as the per-peer records know it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestId<'d> {
    /// Its Message ID.
    pub(crate) mid: u16,
    /// Confirmable: only those have duplicates to recognise.
    pub(crate) confirmable: bool,
    /// Its bytes, hashed into a [`fingerprint`] only when a record needs
    /// one: most blocks of a download never do.
    datagram: &'d [u8],
}

impl RequestId<'_> {
    /// The identity of `datagram` with Message ID `mid`.
    pub(crate) fn new(mid: u16, confirmable: bool, datagram: &[u8]) -> RequestId<'_> {
        RequestId {
            mid,
            confirmable,
            datagram,
        }
    }

    fn fingerprint(&self) -> u32 {
        fingerprint(self.datagram)
    }
}

/// Tells a duplicate from a new request that reuses its Message ID: 32
/// bits, so a per-peer record stays small; a false match needs the same
/// peer, Message ID and a 1 in 2^32 hash collision within 247 s.
fn fingerprint(datagram: &[u8]) -> u32 {
    fnv1a32(datagram)
}

impl PeerState {
    /// True when a payload-less request could continue a transfer from
    /// this state: it names one, or records a continuation whose
    /// duplicates must be answered as their first copy was.
    fn can_continue(&self) -> bool {
        self.transfer.is_some() || self.last_continuation.is_some()
    }
}

/// The bounded table of [`PeerState`]s and the key of the NON Message ID
/// starts.
#[derive(Debug)]
pub(crate) struct Peers {
    table: BoundedTable<Peer, PeerState>,
    mid_key: SipKey,
    lifetime_ms: u64,
    /// The latest time a state that [can continue](PeerState::can_continue)
    /// was written. Every such entry was stamped at or before it, so a
    /// lifetime after it none is left, and [`Peers::continuation`] answers
    /// without a lookup: the common download, by id without an OFFSET,
    /// then costs no hash of the peer's address.
    latest_continuable_ms: Option<u64>,
}

impl Peers {
    /// A table for `capacity` peers whose entries expire `lifetime_ms`
    /// after their last write.
    pub(crate) fn new(
        capacity: usize,
        lifetime_ms: u64,
        table_keys: [u64; 2],
        mid_key: SipKey,
    ) -> Peers {
        Peers {
            table: BoundedTable::new(capacity, lifetime_ms, table_keys),
            mid_key,
            lifetime_ms,
            latest_continuable_ms: None,
        }
    }

    /// Stores `state` for `peer`, stamped `now_ms`; every write goes
    /// through here, so that `latest_continuable_ms` stays true.
    fn insert(&mut self, peer: Peer, state: PeerState, now_ms: u64) {
        if state.can_continue() {
            let latest = self.latest_continuable_ms.map_or(now_ms, |t| t.max(now_ms));
            self.latest_continuable_ms = Some(latest);
        }
        self.table.insert(peer, state, now_ms);
    }

    /// The transfer a payload-less request `request` for a later block of
    /// the image `image_id` would continue, read only: what
    /// [`Pending::continued`] finds, without recording anything. `None`
    /// means the request gets the whole image and changes no state.
    pub(crate) fn continuation(
        &self,
        peer: Peer,
        now_ms: u64,
        request: RequestId<'_>,
        image_id: &[u8; 8],
    ) -> Option<Continuation> {
        let latest = self.latest_continuable_ms?;
        if now_ms.saturating_sub(latest) >= self.lifetime_ms {
            return None;
        }
        let state = self.table.get(&peer, now_ms)?;
        continued_entry(state, request, Some(image_id))
    }

    /// Peers remembered.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The Message ID of a NON reply to `peer`: RFC 7252 §4.4 forbids
    /// reusing one with the same endpoint within EXCHANGE_LIFETIME. Each
    /// peer counts up from a keyed-random start kept in its entry, so
    /// traffic from other endpoints never moves it and a restart (new key)
    /// starts elsewhere. Drawn when the reply is written, whether or not it
    /// is then sent: skipping an ID is harmless.
    ///
    /// Residual risk: when the entry is gone (the server restarted, or more
    /// than `--peers` endpoints were active within EXCHANGE_LIFETIME and
    /// this one was evicted) the peer gets a new random start, which meets
    /// one of the `k` IDs it was sent in the last 247 s with a chance of
    /// about `k / 65536`.
    pub(crate) fn next_non_mid(&mut self, peer: Peer, now_ms: u64) -> u16 {
        let mut state = self.table.get(&peer, now_ms).copied().unwrap_or_default();
        let mid = state.next_mid.unwrap_or_else(|| {
            let mut hasher = self.mid_key.hasher();
            hasher.write(&peer.ip);
            hasher.write_u16(peer.port);
            hasher.write_u64(now_ms);
            hasher.finish() as u16
        });
        state.next_mid = Some(mid.wrapping_add(1));
        self.insert(peer, state, now_ms);
        mid
    }

    /// A view of `peer`'s state for one request.
    pub(crate) fn pending<'d>(
        &self,
        peer: Peer,
        now_ms: u64,
        request: RequestId<'d>,
    ) -> Pending<'_, 'd> {
        Pending {
            peers: self,
            peer,
            now_ms,
            request,
            write: None,
        }
    }

    /// True when `peer`'s record names the transfer of `image_id` from
    /// `offset`: a legacy request naming it again records nothing
    /// ([`Pending::start`]). Read only.
    pub(crate) fn names_transfer(
        &self,
        peer: Peer,
        now_ms: u64,
        image_id: &[u8; 8],
        offset: u32,
    ) -> bool {
        let transfer = Continuation {
            image_id: *image_id,
            offset,
        };
        self.table
            .get(&peer, now_ms)
            .is_some_and(|state| state.transfer == Some(transfer))
    }

    /// The downloads of `kind` live records name, as (key, ETag), sorted:
    /// one walk over the table, when a file or an image was replaced or a
    /// download of an old version ended, never per request.
    pub(crate) fn downloads(&self, kind: Kind, now_ms: u64) -> Vec<(u64, [u8; 8])> {
        let mut found = Vec::new();
        self.table.for_each_live(now_ms, |state| {
            if let Some(d) = state.download.filter(|d| d.kind == kind) {
                found.push((d.key, d.etag));
            }
        });
        found.sort_unstable();
        found
    }

    /// Stores what a request changed, once its reply is sent; restamps the
    /// entry, so it expires a lifetime after the peer's last request that
    /// used it.
    pub(crate) fn commit(&mut self, peer: Peer, write: Option<PeerState>, now_ms: u64) {
        if let Some(state) = write {
            self.insert(peer, state, now_ms);
        }
    }
}

/// One request's reads and writes of its peer's state; see [`Peers`].
#[derive(Debug)]
pub(crate) struct Pending<'t, 'd> {
    peers: &'t Peers,
    peer: Peer,
    now_ms: u64,
    request: RequestId<'d>,
    write: Option<PeerState>,
}

impl Pending<'_, '_> {
    /// The state as this request has changed it so far.
    fn current(&self) -> Option<PeerState> {
        self.write
            .or_else(|| self.peers.table.get(&self.peer, self.now_ms).copied())
    }

    /// The download of `kind` `key` the peer's record names, if any.
    pub(crate) fn download(&self, kind: Kind, key: u64) -> Option<Download> {
        self.current()?
            .download
            .filter(|d| d.kind == kind && d.key == key)
    }

    /// Records the peer's download (replacing the one it had). Written
    /// even when it is the one recorded already: the write restamps the
    /// entry, so that a download slower than the entries' lifetime (a
    /// 6LoWPAN device takes minutes) keeps its record to its last block.
    pub(crate) fn set_download(&mut self, download: Option<Download>) {
        let mut state = self.current().unwrap_or_default();
        state.download = download;
        self.write = Some(state);
    }

    /// What to commit when the reply is sent.
    pub(crate) fn into_write(self) -> Option<PeerState> {
        self.write
    }

    /// The transfer a payload-less request for a later block continues, if
    /// the peer has one (of the image `image_id`, when given). A duplicate
    /// of the peer's last continuation is answered from the transfer its
    /// first copy was, not from one the peer started since.
    pub(crate) fn continued(&mut self, image_id: Option<&[u8; 8]>) -> Option<Continuation> {
        let mut state = self.current()?;
        let request = self.request;
        let entry = continued_entry(&state, request, image_id)?;
        if request.confirmable {
            state.last_continuation = Some(Exchange {
                mid: request.mid,
                fingerprint: request.fingerprint(),
                entry,
            });
        }
        self.write = Some(state);
        Some(entry)
    }

    /// Records that this request starts a transfer of `image_id` at
    /// `offset`, unless it is a late duplicate of one of the peer's recent
    /// starts (which must not reset a transfer started since).
    pub(crate) fn start(&mut self, image_id: [u8; 8], offset: u32) {
        let mut state = self.current().unwrap_or_default();
        let transfer = Continuation { image_id, offset };
        if state.transfer == Some(transfer) {
            // The transfer in force already (a device repeating its payload
            // on every block): nothing to record, and a late duplicate of
            // this request could only name it again.
            return;
        }
        if self.request.confirmable {
            let this = Some((self.request.mid, self.request.fingerprint()));
            if state.starts.contains(&this) {
                return;
            }
            state.starts = [this, state.starts[0]];
        }
        state.transfer = Some(transfer);
        self.write = Some(state);
    }

    /// Forgets the peer's transfer when it is of `image_id` (and starts at
    /// `offset`, when given); the duplicate records stay.
    pub(crate) fn forget(&mut self, image_id: [u8; 8], offset: Option<u32>) {
        let Some(mut state) = self.current() else {
            return;
        };
        let Some(transfer) = state.transfer else {
            return;
        };
        if transfer.image_id == image_id && offset.map_or(true, |o| o == transfer.offset) {
            state.transfer = None;
            self.write = Some(state);
        }
    }
}

/// Which transfer of `state` a payload-less request for a later block
/// continues (of the image `image_id`, when given): for a duplicate of the
/// peer's last continuation the one its first copy continued, else the
/// peer's transfer. Shared by [`Pending::continued`] and
/// [`Peers::continuation`], so that the fast path decides as the general
/// one does.
fn continued_entry(
    state: &PeerState,
    request: RequestId<'_>,
    image_id: Option<&[u8; 8]>,
) -> Option<Continuation> {
    let repeated = state
        .last_continuation
        .filter(|last| {
            request.confirmable
                && last.mid == request.mid
                && last.fingerprint == request.fingerprint()
        })
        .map(|last| last.entry);
    repeated
        .or(state.transfer)
        .filter(|entry| image_id.map_or(true, |id| *id == entry.image_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000;
    const IMG: [u8; 8] = *b"0d0ad509";
    const OTHER: [u8; 8] = *b"e40c292c";

    fn peers() -> Peers {
        Peers::new(4, 247_000, [1, 2], SipKey([3, 4]))
    }

    fn peer(port: u16) -> Peer {
        Peer {
            ip: [0; 16],
            port,
            scope: 0,
        }
    }

    fn con(mid: u16, bytes: &[u8]) -> RequestId<'_> {
        RequestId::new(mid, true, bytes)
    }

    /// Runs `f` on a pending view for `request` and commits its writes.
    fn with(
        p: &mut Peers,
        request: RequestId<'_>,
        f: impl FnOnce(&mut Pending<'_, '_>) -> Option<Continuation>,
    ) -> Option<Continuation> {
        let mut pending = p.pending(peer(1), T0, request);
        let result = f(&mut pending);
        let write = pending.into_write();
        p.commit(peer(1), write, T0);
        result
    }

    #[test]
    fn a_start_is_continued_for_its_image_only() {
        let mut p = peers();
        with(&mut p, con(1, b"start"), |v| {
            v.start(IMG, 100);
            None
        });
        let got = with(&mut p, con(2, b"next"), |v| v.continued(Some(&IMG)));
        assert_eq!(got.map(|c| c.offset), Some(100));
        assert_eq!(
            with(&mut p, con(3, b"other"), |v| v.continued(Some(&OTHER))),
            None
        );
    }

    #[test]
    fn forget_keeps_the_duplicate_record_of_the_last_continuation() {
        let mut p = peers();
        with(&mut p, con(1, b"start"), |v| {
            v.start(IMG, 100);
            None
        });
        let last = with(&mut p, con(2, b"last"), |v| {
            let entry = v.continued(Some(&IMG));
            v.forget(IMG, Some(100));
            entry
        });
        assert!(last.is_some());
        // A new request finds nothing; a duplicate of the last one still
        // gets the transfer its first copy got.
        assert_eq!(
            with(&mut p, con(3, b"new"), |v| v.continued(Some(&IMG))),
            None
        );
        assert_eq!(
            with(&mut p, con(2, b"last"), |v| v.continued(Some(&IMG))),
            last
        );
    }

    #[test]
    fn a_late_duplicate_start_does_not_reset_a_newer_transfer() {
        let mut p = peers();
        for (mid, bytes, offset) in [(1, &b"a"[..], 0), (2, b"b", 700), (1, b"a", 0)] {
            with(&mut p, con(mid, bytes), |v| {
                v.start(IMG, offset);
                None
            });
        }
        let got = with(&mut p, con(3, b"c"), |v| v.continued(None));
        assert_eq!(got.map(|c| c.offset), Some(700));
    }

    #[test]
    fn uncommitted_writes_change_nothing() {
        let p = peers();
        let mut pending = p.pending(peer(1), T0, con(1, b"x"));
        pending.start(IMG, 5);
        assert!(pending.into_write().is_some());
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn non_message_ids_count_up_per_peer_from_a_keyed_start() {
        let mut p = peers();
        let first = p.next_non_mid(peer(1), T0);
        for port in 2..4 {
            p.next_non_mid(peer(port), T0);
        }
        assert_eq!(p.next_non_mid(peer(1), T0), first.wrapping_add(1));
        let mut same_key = peers();
        assert_eq!(same_key.next_non_mid(peer(1), T0), first);
        let mut other_key = Peers::new(4, 247_000, [1, 2], SipKey([5, 6]));
        assert_ne!(other_key.next_non_mid(peer(1), T0), first);
    }
}
