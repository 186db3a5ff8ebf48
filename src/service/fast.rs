//! The fast path: the block that most datagrams ask for, a later block of
//! an image downloaded by id, answered without the general path's parse,
//! routing and per-request records.
//!
//! It answers only [`wire::BlockGet`] requests (a Confirmable
//! `GET /updates/{id}` with Block2 NUM > 0 and nothing else that needs a
//! decision: see [`wire::BlockGet::parse`]) for an image the catalog has,
//! at a position inside it, from a peer whose records name no transfer
//! that such a request would continue (an OFFSET its block 0 started, or a
//! duplicate of its last continuation). Such a request, in the general
//! path, reads no state beyond those records and the guards, writes none
//! (no peer record, no observer: its Block2 NUM > 0 keeps it from Observe),
//! and gets the block of the whole image under the image's ETag. Anything
//! else returns `None` before any state has changed, and the caller hands
//! the datagram to [`Service::handle`] as if the fast path had not looked.
//!
//! The guards apply as in the general path, in the same order: the rate
//! limit counts the request (and may answer 4.29 or drop it), and with
//! `--echo` a reply more than three times the request needs a valid Echo
//! option or becomes the 4.01 challenge. `tests/fuzz/checks/handler.rs`
//! runs both paths on every input and requires byte-identical answers.

use super::{Action, Dropped, Outcome, Peer, ReplyTo, Service, Transfer, Via, MAX_REQUEST_LEN};
use crate::service::peers::RequestId;
use crate::wire::{self, Block, BlockGet};
use coap_lite::MessageType;

impl Service {
    /// Answers `datagram` from `peer` at `now_ms` on the fast path, or
    /// returns `None`, having changed nothing, when it needs the general
    /// path ([`Service::handle`]); see the module docs of `fast` for what
    /// it answers. When it answers, the answer (the bytes written into
    /// `out`, the [`Action`], the state left behind) is the one
    /// [`Service::handle`] would give. For unicast datagrams on the plain
    /// socket only: a multicast request and a coaps one have rules of
    /// their own ([`Service::handle_arrival`], [`Service::handle_secure`]).
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
        let image = self.catalog.by_id_hex(request.id)?;
        let body: &[u8] = &image.bytes;
        let body_len = body.len() as u64;
        // RFC 7959 §2.4 as the general path's `block_for`: the client's
        // size capped at the server's, at the position the client asked
        // for; a position past the body is an error, left to it.
        let start = request.block.position();
        if start >= body_len {
            return None;
        }
        let mut block = Block::at(start, request.block.szx.min(self.server_szx))?;
        let end = start.saturating_add(block.size() as u64).min(body_len);
        block.more = end < body_len;
        let chunk = body.get(start as usize..end as usize)?;
        let id = RequestId::new(request.mid, true, datagram);
        if self
            .peers
            .continuation(peer, now_ms, id, &image.id_hex)
            .is_some()
        {
            return None;
        }
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
            &image.etag,
            block,
            size2,
            chunk,
        );
        let Ok(len) = written else {
            return Some(Action::Drop(Dropped::Overflow));
        };
        if self.limits.echo {
            if let Some(challenge) =
                self.guard
                    .check_echo(reply_to, &peer, now_ms, request.echo, request_len, len, out)
            {
                return Some(challenge);
            }
        }
        Some(Action::Reply {
            len,
            outcome: Outcome::Block(Transfer {
                image,
                offset: 0,
                block,
                block_len: chunk.len(),
                via: Via::ById,
            }),
        })
    }
}
