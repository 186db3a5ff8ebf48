//! The fast path: the blocks that most datagrams ask for, a later block of
//! an image downloaded by id or by the legacy protocol, answered without
//! the general path's parse and routing.
//!
//! It answers only [`wire::BlockGet`] requests (a Confirmable GET of
//! `/updates/{id}` or `/updates` with Block2 NUM > 0 and nothing else that
//! needs a decision: see [`wire::BlockGet::parse`]), and of those only the
//! ones whose answer is a block, in three forms:
//!
//! - `/updates/{id}`: an image the catalog has, from a peer whose records
//!   name no transfer that such a request would continue (an OFFSET its
//!   block 0 started, or a duplicate of its last continuation). It gets
//!   the block of the whole image and changes no record.
//! - `/updates` with a legacy device payload (PID, TYPE, VERSION, OFFSET)
//!   for which the catalog has a newer image, from a peer whose record
//!   names that image and OFFSET already (as it does from the first block
//!   on, for devices that repeat the payload on every block): the block of
//!   the body from OFFSET, and no record changes.
//! - `/updates` without a payload, continuing the transfer the peer's
//!   records name (libcoap's and node-coap's continuations): the block of
//!   that body, and the record of the continuation updated, as the general
//!   path updates it.
//!
//! An image that has an old version held for downloads that began before
//! it was replaced in place (see `versions`) is never answered here: the
//! general path decides which version each peer gets. The fast path pays
//! one flag of the image it found for that, nothing per peer.
//!
//! In every other case (a position past the body, an image that is gone,
//! no newer image, a record to start, ...) it returns `None` before any
//! state has changed, and the caller hands the datagram to
//! [`Service::handle`] as if the fast path had not looked. No request it
//! answers touches the observers: its Block2 NUM > 0 keeps it from Observe.
//!
//! The guards apply as in the general path, in the same order: the rate
//! limit counts the request (and may answer 4.29 or drop it), and with
//! `--echo` a reply more than three times the request needs a valid Echo
//! option or becomes the 4.01 challenge; a record is changed only when the
//! reply is sent. `tests/fuzz/checks/handler.rs` runs both paths on every
//! input and requires byte-identical answers.

use super::peers::{PeerState, Peers, RequestId};
use super::{
    Action, Dropped, Held, Outcome, Peer, ReplyTo, Request, Service, Transfer, Via, MAX_REQUEST_LEN,
};
use crate::catalog::{Catalog, Image};
use crate::firmware;
use crate::wire::{self, Block, BlockGet};
use coap_lite::MessageType;

/// The body a fast request gets, and the record to write once it is sent.
struct Body<'c> {
    image: &'c Image,
    offset: u32,
    via: Via,
    write: Option<PeerState>,
}

impl Service {
    /// Answers `datagram` from `peer` at `now_ms` on the fast path, or
    /// returns `None`, having changed nothing, when it needs the general
    /// path ([`Service::handle`]); see the module docs of `fast` for what
    /// it answers. When it answers, the answer (the bytes written into
    /// `out`, the [`Action`], the state left behind) is the one
    /// [`Service::handle`] would give. For unicast datagrams on the plain
    /// socket only: a multicast request and a coaps one have rules of
    /// their own ([`Service::handle_request`] with an arrival or an authorization).
    #[inline]
    pub fn handle_block(
        &mut self,
        peer: Peer,
        now_ms: u64,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Option<Action<'_>> {
        if datagram.len() > MAX_REQUEST_LEN {
            return None;
        }
        let request = BlockGet::parse(datagram)?;
        let id = RequestId::new(request.mid, true, datagram);
        let Body {
            image,
            offset,
            via,
            write,
        } = fast_body(&self.catalog, &self.peers, &request, peer, now_ms, id)?;
        // An image with an old version held for downloads under way: the
        // general path decides which version the peer gets.
        if image.has_held_version() {
            return None;
        }
        // `routes`' `body`: the image from OFFSET, and within it the
        // block of RFC 7959 §2.4 as `block_for` finds it (the client's size
        // capped at the server's, at the position the client asked for); an
        // OFFSET or a position past the end is an error, left to it.
        let body = image.bytes.get(offset as usize..)?;
        let body_len = body.len() as u64;
        let start = request.block.position();
        if start >= body_len {
            return None;
        }
        let mut block = Block::at(start, request.block.szx.min(self.server_szx))?;
        let end = start.saturating_add(block.size() as u64).min(body_len);
        block.more = end < body_len;
        let chunk = body.get(start as usize..end as usize)?;
        // From here on the request is this path's: it is counted.
        let reply_to = ReplyTo {
            mtype: MessageType::Acknowledgement,
            mid: request.mid,
            token: request.token,
        };
        let request_len = datagram.len();
        // The guards as configured by the same limits: tested here first,
        // so that a server without them does not call them.
        if self.limits.rate_limit.is_some() {
            if let Some(limited) = self
                .guard
                .rate_limit(reply_to, peer, now_ms, request_len, out)
            {
                return Some(limited);
            }
        }
        // The general path drops a reply whose Size2 does not fit a u32
        // (an image never is that large).
        let size2 = match (request.size2, u32::try_from(body.len())) {
            (false, _) => None,
            (true, Ok(size)) => Some(size),
            (true, Err(_)) => return Some(Action::Drop(Dropped::Overflow)),
        };
        let written = wire::emit_block_ack(
            out,
            request.mid,
            request.token,
            &image.body_etag(offset),
            block,
            size2,
            chunk,
        );
        let Ok(len) = written else {
            return Some(Action::Drop(Dropped::Overflow));
        };
        if self.limits.echo {
            if let Some(challenge) = self.guard.check_echo(
                reply_to,
                &Request::new(peer, now_ms, datagram),
                request.echo,
                len,
                out,
            ) {
                return Some(challenge);
            }
        }
        self.peers.commit(peer, write, now_ms);
        Some(Action::Reply {
            len,
            outcome: Outcome::Block(Transfer {
                image,
                offset,
                block,
                block_len: chunk.len(),
                via,
                held: Held::No,
            }),
        })
    }
}

/// Which body `request` gets and what it records, when that is the general
/// path's answer without a decision left: `None` otherwise. Reads only.
#[inline]
fn fast_body<'c>(
    catalog: &'c Catalog,
    peers: &Peers,
    request: &BlockGet<'_>,
    peer: Peer,
    now_ms: u64,
    id: RequestId<'_>,
) -> Option<Body<'c>> {
    match (request.id, request.payload) {
        // `routes`' `image` with neither an OFFSET payload nor a query,
        // for a later block: the peer's remembered body of this image
        // if it has one (left to the general path), else the whole
        // image, with no record written.
        (Some(image_id), _) => {
            let image = catalog.by_id_hex(image_id)?;
            if peers
                .continuation(peer, now_ms, id, &image.id_hex)
                .is_some()
            {
                return None;
            }
            Some(Body {
                image,
                offset: 0,
                via: Via::ById,
                write: None,
            })
        }
        // `routes`' `updates` without a payload: the transfer the
        // peer's records continue, and the record of this continuation.
        (None, []) => {
            let mut pending = peers.pending(peer, now_ms, id);
            let entry = pending.continued(None)?;
            let image = catalog.by_id_hex(&entry.image_id)?;
            Some(Body {
                image,
                offset: entry.offset,
                via: Via::Legacy,
                write: pending.into_write(),
            })
        }
        // `routes`' `legacy`: the newer image for the device, from its
        // OFFSET, when the peer's record names that body already (else
        // the general path records it).
        (None, payload) => {
            let device = firmware::parse_payload(payload).ok()?;
            let offset = device.offset?;
            let image = catalog.candidate(device.pid, device.fw_type, device.version)?;
            if !peers.names_transfer(peer, now_ms, &image.id_hex, offset) {
                return None;
            }
            Some(Body {
                image,
                offset,
                via: Via::Legacy,
                write: None,
            })
        }
    }
}
