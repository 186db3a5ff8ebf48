//! The routes: `/updates` (lookup, query and legacy forms),
//! `/updates/{id}`, `/.well-known/core` and, with `--files`, every other
//! path as a file or directory listing of the tree, and the Block2 slicing
//! of their bodies (RFC 7959). Each answer is written straight into the caller's
//! buffer; a block is copied once from the image's bytes.

use super::observe::OBSERVE_MAX_AGE_S;
use super::peers::{Download, Kind, Pending};
use super::versions::{Version, Versions};
use super::{
    error, write_diagnostic, Authorization, Diagnostic, Dropped, Failure, Held, Outcome, Peer,
    ReplyTo, Transfer, Via,
};
use crate::catalog::{Catalog, CoreLink, Image};
use crate::firmware::{self, DeviceRequest};
use crate::fleet::{Fleet, FleetFiles, Note, Target};
use crate::hash::fnv1a64_concat;
use crate::tree::{FileTree, TreeFile};
use crate::wire::{Block, BlockError, Emitter, Message};
use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, RequestType, ResponseType};

/// Query filters (RFC 6690 §4.1) one discovery request may combine; more
/// are 4.00.
const MAX_DISCOVERY_FILTERS: usize = 4;

/// The answer chosen for a request before it is written.
pub(super) type Reply<'c> = Result<(usize, Outcome<'c>), Failure>;

/// Where the OFFSET of a `/updates/{id}` request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// `?offset=N` (and maybe an agreeing payload).
    Query(u32),
    /// A 4-byte OFFSET payload.
    Payload(u32),
    /// Neither: block 0 of the whole image, or a continuation.
    Neither,
}

/// Where a request is going.
enum Route<'a, 's> {
    Updates,
    /// `POST /updates/report`.
    Report,
    /// `GET /status`.
    Status,
    Image(&'a [u8]),
    Discovery,
    /// Any other path, with a file tree served.
    Tree(&'s FileTree),
}

/// One request being answered: what `route` and its helpers need.
pub(super) struct Ctx<'s, 't, 'm> {
    /// The catalog served.
    pub(super) catalog: &'s Catalog,
    /// The `--files` tree, if one is served.
    pub(super) tree: Option<&'s FileTree>,
    /// The old versions of the tree's files that downloads still need.
    pub(super) file_versions: &'s Versions<TreeFile>,
    /// The old versions of the catalog's images that downloads still need.
    pub(super) image_versions: &'s Versions<Image>,
    /// Set when a download of an old version ended with this request: the
    /// old version may be dropped.
    pub(super) ended_held: bool,
    /// The request's time.
    pub(super) now_ms: u64,
    /// The server's largest block size.
    pub(super) server_szx: u8,
    /// The peer's state, read and changed for this request.
    pub(super) peer_state: Pending<'t, 'm>,
    /// The request.
    pub(super) msg: &'m Message<'m>,
    /// How the reply is addressed.
    pub(super) reply_to: ReplyTo<'m>,
    /// `Some(n)`: the request registers an observation (RFC 7641); an
    /// observable answer carries Observe `n` and Max-Age.
    pub(super) observe: Option<u32>,
    /// Set by an answer that carried Observe: what identifies the
    /// representation (its ETag, or the image id a lookup named), so that
    /// a change can be told from the next answer.
    pub(super) observed: Option<u64>,
    /// Over a secure channel: the products whose images the peer may
    /// fetch; `None` on the plain socket.
    pub(super) authorization: Option<&'m Authorization>,
    /// The fleet: rollout eligibility, and the status view.
    pub(super) fleet: &'m Fleet,
    /// The rollout policies and patches served.
    pub(super) fleet_files: &'s FleetFiles,
    /// The sender.
    pub(super) peer: Peer,
    /// Over coaps, the sender's PSK identity.
    pub(super) identity: Option<&'m [u8]>,
    /// The sender may read `/status`: by its address on plain CoAP, by
    /// its identity's right over coaps.
    pub(super) status_open: bool,
    /// Set by `/status`'s answer: a notification of it is sent over coaps
    /// only while the observer's session has the right (see
    /// [`super::Notification`]'s `of_status`).
    pub(super) read_status: bool,
    /// What the request tells the fleet, applied once the reply is sent.
    pub(super) note: Option<Note>,
}

/// What the blocks of a response are cut from: its ETag, Content-Format
/// and length, and whether it can be observed.
#[derive(Clone, Copy)]
struct Representation<'e> {
    etag: &'e [u8; 8],
    format: ContentFormat,
    len: usize,
    observable: bool,
}

impl<'s> Ctx<'s, '_, '_> {
    /// The answer to the request, written into `out`, or why there is none.
    pub(super) fn route(&mut self, out: &mut [u8]) -> Reply<'s> {
        // RFC 7252 §5.10.2: an endpoint that is no forward-proxy answers
        // 5.05, whatever else the request carries.
        if self.msg.proxy {
            return Err(error(
                ResponseType::ProxyingNotSupported,
                "this server is not a proxy",
            ));
        }
        if let (Some(_), MessageType::NonConfirmable) =
            (self.msg.unrecognized_critical, self.msg.mtype)
        {
            return Err(Failure::Ignore(Dropped::BadOptionNon));
        }
        if let Some(option) = self.msg.unrecognized_critical {
            return Err(Failure::Error(
                ResponseType::BadOption,
                Diagnostic::Critical(option),
            ));
        }
        let path = self.msg.path;
        let mut segments = path.iter();
        let route = match (path.len(), segments.next(), segments.next()) {
            _ if path.overflowed() => None,
            (1, Some(b"updates"), _) => Some(Route::Updates),
            (1, Some(b"status"), _) => Some(Route::Status),
            (2, Some(b"updates"), Some(b"report")) => Some(Route::Report),
            (2, Some(b"updates"), Some(id)) => Some(Route::Image(id)),
            (2, Some(b".well-known"), Some(b"core")) => Some(Route::Discovery),
            (_, Some(b"updates"), _) => None,
            _ => self.tree.map(Route::Tree),
        };
        let Some(route) = route else {
            return Err(error(ResponseType::NotFound, "no such resource"));
        };
        if let Route::Report = route {
            if self.msg.class() != MessageClass::Request(RequestType::Post) {
                return Err(error(
                    ResponseType::MethodNotAllowed,
                    "only POST is allowed",
                ));
            }
            return self.report(out);
        }
        if self.msg.class() != MessageClass::Request(RequestType::Get) {
            return Err(error(ResponseType::MethodNotAllowed, "only GET is allowed"));
        }
        match route {
            Route::Report => Err(Failure::Overflow),
            Route::Status => self.status(out),
            Route::Updates => self.updates(out),
            Route::Image(id) => self.image(id, out),
            Route::Discovery => self.discovery(out),
            Route::Tree(tree) => self.tree_get(tree, out),
        }
    }

    /// `GET /updates`: the lookup, legacy and query forms, and the
    /// payload-less continuation of a legacy transfer.
    fn updates(&mut self, out: &mut [u8]) -> Reply<'s> {
        let msg = self.msg;
        if !msg.payload.is_empty() {
            let request = firmware::parse_payload(msg.payload)
                .map_err(|e| Failure::Error(ResponseType::BadRequest, Diagnostic::Payload(e)))?;
            return match request.offset {
                None => self.lookup(&request, out),
                Some(offset) => self.legacy(&request, offset, out),
            };
        }
        if !msg.query.is_empty() {
            if msg.query.overflowed() {
                return Err(error(ResponseType::BadRequest, "too many query options"));
            }
            let request = firmware::parse_query(msg.query.as_slice())
                .map_err(|e| Failure::Error(ResponseType::BadRequest, Diagnostic::Query(e)))?;
            return self.lookup(&request, out);
        }
        let continued = matches!(msg.block2, Some(Ok(block)) if block.num > 0);
        if !continued {
            return Err(error(
                ResponseType::BadRequest,
                "GET /updates needs a device payload or ?pid=&type=&version=",
            ));
        }
        let entry = self.peer_state.continued(None).ok_or(error(
            ResponseType::BadRequest,
            "no transfer in progress for this peer: send the device payload",
        ))?;
        let image = self.catalog.by_id_hex(&entry.image_id).ok_or(error(
            ResponseType::NotFound,
            "the image of this transfer is gone",
        ))?;
        self.body(image, entry.offset, Via::Legacy, out)
    }

    /// Lookup and query forms: the candidate's id as text/plain.
    ///
    /// Observed, "no newer image" is a 2.05 with an empty body rather than
    /// a 4.04: only a 2.xx answer establishes an observation, and a 4.04
    /// notification would end it (RFC 7641 §3.1, §3.2), while the point of
    /// observing the lookup is to hear of an image that is not there yet.
    fn lookup(&mut self, request: &DeviceRequest<'_>, out: &mut [u8]) -> Reply<'s> {
        self.authorize(request.pid)?;
        let ep = self.ep()?;
        let name = self.name(ep);
        let image = self
            .catalog
            .candidate(request.pid, request.fw_type, request.version)
            .filter(|image| self.fleet.offers(self.fleet_files, &name, image));
        self.note = Some(Note::Lookup {
            name,
            ip: self.peer.ip,
            named: ep.is_some(),
            running: request.version,
            offered: image.map(Target::of),
        });
        if image.is_none() && self.observe.is_none() {
            return Err(error(ResponseType::NotFound, "no newer image"));
        }
        self.check_accept(ContentFormat::TextPlain)?;
        // A device that asks for a delta (`delta=FORMAT`) and runs exactly
        // the base version of a patch published for the image gets the
        // patch's id followed by `;delta=FORMAT;base=M.m.b`; anyone else
        // the image's id alone.
        let patch = match (image, self.delta()?) {
            (Some(image), Some(format)) => {
                self.fleet_files
                    .patch_for(image.id, request.version, format)
            }
            _ => None,
        };
        let mut text = [0u8; 64];
        let id: &[u8] = match (image, patch) {
            (_, Some(patch)) => {
                let mut w = super::SliceWriter {
                    buf: &mut text,
                    len: 0,
                };
                let _ = core::fmt::Write::write_fmt(
                    &mut w,
                    format_args!(
                        "{};delta={};base={}",
                        patch.body.id_str(),
                        patch.format,
                        firmware::VersionText(patch.base)
                    ),
                );
                let len = w.len;
                text.get(..len).unwrap_or(&[])
            }
            (Some(image), None) => &image.id_hex[..],
            (None, _) => &[],
        };
        let mut e = self.emitter(ResponseType::Content, out)?;
        self.observe_option(&mut e, fnv1a64_concat([b"id:".as_slice(), id]))?;
        e.option_uint(
            CoapOption::ContentFormat.into(),
            content_format(ContentFormat::TextPlain),
        )?;
        self.max_age_option(&mut e)?;
        Ok((e.payload(id)?, Outcome::Content))
    }

    /// The Observe option (6) of an observable answer whose representation
    /// is `tag`, when the request registers.
    pub(super) fn observe_option(&mut self, e: &mut Emitter<'_>, tag: u64) -> Result<(), Failure> {
        if let Some(seq) = self.observe {
            e.option_uint(CoapOption::Observe.into(), seq)?;
            self.observed = Some(tag);
        }
        Ok(())
    }

    /// The Max-Age option (14) of an answer that carries Observe.
    pub(super) fn max_age_option(&self, e: &mut Emitter<'_>) -> Result<(), Failure> {
        if self.observed.is_some() {
            e.option_uint(CoapOption::MaxAge.into(), OBSERVE_MAX_AGE_S)?;
        }
        Ok(())
    }

    /// The legacy one-request protocol: the body from OFFSET, and the
    /// peer remembered for payload-less continuations.
    fn legacy(&mut self, request: &DeviceRequest<'_>, offset: u32, out: &mut [u8]) -> Reply<'s> {
        self.authorize(request.pid)?;
        let catalog = self.catalog;
        let image = catalog
            .candidate(request.pid, request.fw_type, request.version)
            .ok_or(Failure::NoUpdate)?;
        // The rollout decides when a transfer starts; once it runs, every
        // block is served (a pause lets begun downloads finish).
        if !self.continuing() {
            let name = self.name(None);
            let offered = self.fleet.offers(self.fleet_files, &name, image);
            self.note = Some(Note::Lookup {
                name,
                ip: self.peer.ip,
                named: false,
                running: request.version,
                offered: offered.then(|| Target::of(image)),
            });
            if !offered {
                return Err(Failure::NoUpdate);
            }
        }
        let reply = self.body(image, offset, Via::Legacy, out)?;
        // Every legacy request names its transfer: deployed devices repeat
        // it on every block, node-coap sends it with the first block it
        // asks for (which may be a resumed NUM > 0).
        self.peer_state.start(image.id_hex, offset);
        Ok(reply)
    }

    /// 4.03 when the request came over a secure channel whose identity
    /// may not fetch images of `pid`.
    #[inline]
    pub(super) fn authorize(&self, pid: &[u8]) -> Result<(), Failure> {
        match self.authorization {
            Some(authorization) if !authorization.allows(pid) => Err(error(
                ResponseType::Forbidden,
                "this identity may not fetch images of this product",
            )),
            _ => Ok(()),
        }
    }

    /// True when the request asks for a block after the first.
    fn continuing(&self) -> bool {
        matches!(self.msg.block2, Some(Ok(block)) if block.num > 0)
    }

    /// `GET /updates/{id}` with an optional 4-byte OFFSET payload or
    /// `?offset=N`.
    ///
    /// Which body (`image[OFFSET..]`) a request gets:
    /// - `?offset=N` is repeated by stock clients on every block: served
    ///   from what it carries, and it neither reads nor writes peer state;
    /// - an OFFSET payload is served from what it carries, and remembered
    ///   for the peer, because stock clients send it with block 0 only
    ///   (or with the first block of a resume) and not with later blocks;
    /// - a request with neither, for block 0, is a whole-image download
    ///   and makes the peer's remembered OFFSET of this image forgotten;
    /// - a request with neither, for a later block, continues the peer's
    ///   remembered OFFSET of this image, else the whole image.
    ///
    /// That last case is a guess: the peer's state may be lost (restart,
    /// eviction, a NAT rebinding the client's port) or belong to another
    /// download from the same endpoint. It is made safe by the invariant
    /// that every body carries its own ETag ([`Image::body_etag`]): the
    /// block sent holds exactly the bytes that its ETag names at its
    /// position, so a client checking ETags (RFC 7959 §2.4) sees a wrong
    /// guess and starts over, and none can splice two bodies under one
    /// tag. Once the last block of a remembered body was served, the body
    /// is forgotten, so a later plain download is not taken for it.
    fn image(&mut self, id: &[u8], out: &mut [u8]) -> Reply<'s> {
        if self.msg.query.overflowed() {
            return Err(error(ResponseType::BadRequest, "too many query options"));
        }
        let queried = firmware::parse_offset_query(self.msg.query.as_slice())
            .map_err(|e| Failure::Error(ResponseType::BadRequest, Diagnostic::Query(e)))?;
        let named = match (self.msg.payload, queried) {
            ([], None) => Named::Neither,
            ([], Some(q)) => Named::Query(q),
            (&[a, b, c, d], None) => Named::Payload(u32::from_le_bytes([a, b, c, d])),
            (&[a, b, c, d], Some(q)) if q == u32::from_le_bytes([a, b, c, d]) => Named::Query(q),
            (&[_, _, _, _], Some(_)) => {
                return Err(error(
                    ResponseType::BadRequest,
                    "OFFSET payload and ?offset= disagree",
                ))
            }
            _ => {
                return Err(error(
                    ResponseType::BadRequest,
                    "payload must be empty or a 4-byte little-endian OFFSET",
                ))
            }
        };
        let image = self
            .catalog
            .by_id_hex(id)
            .or_else(|| self.fleet_files.patch_by_id_hex(id));
        let Some(image) = image else {
            // A file being published whose bytes have not settled yet.
            return Err(match self.catalog.pending_retry(id) {
                Some(max_age) => Failure::Unavailable { max_age },
                None => error(ResponseType::NotFound, "no image with this id"),
            });
        };
        self.authorize(&image.name.pid)?;
        let continuing = self.continuing();
        let (offset, remembered) = match named {
            Named::Query(offset) | Named::Payload(offset) => (offset, false),
            Named::Neither if continuing => match self.peer_state.continued(Some(&image.id_hex)) {
                Some(entry) => (entry.offset, true),
                None => (0, false),
            },
            Named::Neither => (0, false),
        };
        let reply = self.body(image, offset, Via::ById, out)?;
        let last = matches!(reply.1, Outcome::Block(t) if t.is_last());
        let payload = matches!(named, Named::Payload(_));
        if last && (payload || remembered) {
            self.peer_state.forget(image.id_hex, Some(offset));
        } else if payload {
            self.peer_state.start(image.id_hex, offset);
        } else if named == Named::Neither && !continuing {
            self.peer_state.forget(image.id_hex, None);
        }
        Ok(reply)
    }

    /// One Block2 block of `image[offset..]`, from the version of the
    /// image the peer's download began with when it was replaced since
    /// (see `versions`); recorded: the download a block 0 begins, and a
    /// held download's later blocks and end. A later block of an image
    /// without a held version changes no record, as on the fast path.
    fn body(&mut self, image: &'s Image, offset: u32, via: Via, out: &mut [u8]) -> Reply<'s> {
        let key = u64::from(image.id);
        let num = self.block_num();
        let held_download = match image.has_held_version() {
            true => match self.version_of(Kind::Image, key, image, self.image_versions, num) {
                Chosen::Old(old, d) => Some((old, d)),
                Chosen::Current | Chosen::Gone => None,
            },
            false => None,
        };
        let (image, held) = match held_download {
            Some((old, d)) => (old, if d.held { Held::Again } else { Held::First }),
            None => (image, Held::No),
        };
        let body = image.bytes.get(offset as usize..).ok_or(error(
            ResponseType::BadRequest,
            "OFFSET is beyond the end of the image",
        ))?;
        self.check_accept(ContentFormat::ApplicationOctetStream)?;
        let (block, range) = self.block_for(body.len())?;
        let chunk = body.get(range).ok_or(Failure::Overflow)?;
        // An image by id never changes: not observable.
        let representation = Representation {
            etag: &image.body_etag(offset),
            format: ContentFormat::ApplicationOctetStream,
            len: body.len(),
            observable: false,
        };
        let len = self.emit_block(out, representation, block, chunk)?;
        let download = held_download.map(|(_, d)| d);
        self.after_block(Kind::Image, key, image.etag, block, download, held);
        let transfer = Transfer {
            image,
            offset,
            block,
            block_len: chunk.len(),
            via,
            held,
        };
        Ok((len, Outcome::Block(transfer)))
    }

    /// `GET /.well-known/core`, whole or filtered (RFC 6690 §4.1): the
    /// filtered body is never built; its blocks are copied link by link.
    fn discovery(&mut self, out: &mut [u8]) -> Reply<'s> {
        // Filters past the kept ones would be silently dropped, and the
        // listing would be wider than asked: refuse instead.
        if self.msg.query.overflowed() || self.msg.query.as_slice().len() > MAX_DISCOVERY_FILTERS {
            return Err(error(ResponseType::BadRequest, "too many query options"));
        }
        let tree_links = self.tree.map_or(&[][..], FileTree::core_links);
        let patch_links = self.fleet_files.core_links();
        let links = || {
            self.catalog
                .core_links()
                .iter()
                .chain(patch_links)
                .chain(tree_links)
        };
        let query = self.msg.query.as_slice();
        let selected = |link: &&CoreLink| query.iter().all(|q| link.matches(q));
        let total = links()
            .filter(selected)
            .enumerate()
            .map(|(i, link)| link.text.len() + usize::from(i > 0))
            .sum::<usize>();
        self.check_accept(ContentFormat::ApplicationLinkFormat)?;
        let (block, range) = self.block_for(total)?;
        let etag = match (self.tree, patch_links.is_empty()) {
            (None, true) => self.catalog.core_etag(),
            (tree, _) => {
                let patches = patch_links.iter().map(|l| &l.text[..]);
                let tree_tag = tree.map(FileTree::core_etag).unwrap_or_default();
                fnv1a64_concat(
                    [&self.catalog.core_etag()[..], &tree_tag[..]]
                        .into_iter()
                        .chain(patches),
                )
                .to_be_bytes()
            }
        };
        let mut e = self.emitter(ResponseType::Content, out)?;
        let representation = Representation {
            etag: &etag,
            format: ContentFormat::ApplicationLinkFormat,
            len: total,
            observable: true,
        };
        self.block_options(&mut e, representation, block)?;
        let len = e.payload_with(range.len(), |room| {
            let mut position = 0usize;
            let mut written = 0usize;
            for (i, link) in links().filter(selected).enumerate() {
                let separator: &[u8] = if i > 0 { b"," } else { b"" };
                for part in [separator, &link.text[..]] {
                    written += copy_overlap(part, position, &range, room, written);
                    position += part.len();
                }
                if position >= range.end {
                    break;
                }
            }
            written
        })?;
        Ok((len, Outcome::Content))
    }

    /// `GET` of any other path with a file tree served, as
    /// `aiocoap-fileserver` answers: a file's body; a directory's listing
    /// when the path ends in `/` (an empty last Uri-Path segment, or no
    /// Uri-Path at all for the root); 4.00 for a directory without the `/`
    /// or a file with one; 5.03 for a new file still settling; else 4.04.
    fn tree_get(&mut self, tree: &'s FileTree, out: &mut [u8]) -> Reply<'s> {
        let path = self.msg.path.iter();
        let (dir_len, wants_dir) = match path.clone().last() {
            None => (0, true),
            Some([]) => (self.msg.path.len().saturating_sub(1), true),
            Some(_) => (self.msg.path.len(), false),
        };
        if wants_dir {
            let dir_path = path.take(dir_len);
            if let Some(dir) = tree.dir(dir_path.clone()) {
                return self.whole_body(
                    &dir.listing,
                    &dir.etag,
                    ContentFormat::ApplicationLinkFormat,
                    out,
                );
            }
            if tree.file(dir_path).is_some() {
                return Err(error(
                    ResponseType::BadRequest,
                    "not a directory (strip the trailing slash)",
                ));
            }
            return Err(error(ResponseType::NotFound, "no such directory"));
        }
        if let Some(file) = tree.file(path.clone()) {
            return self.file_get(file, out);
        }
        if tree.dir(path.clone()).is_some() {
            return Err(error(
                ResponseType::BadRequest,
                "not a file (add a trailing slash)",
            ));
        }
        Err(match tree.pending_retry(path) {
            Some(max_age) => Failure::Unavailable { max_age },
            None => error(ResponseType::NotFound, "no such file"),
        })
    }

    /// A block of `file`, as the tree serves it now, or from the version
    /// the peer's download began with if the file was replaced since (see
    /// `versions`); recorded: the download a block 0 begins, its end.
    fn file_get(&mut self, file: &'s TreeFile, out: &mut [u8]) -> Reply<'s> {
        let key = file.key();
        let num = self.block_num();
        let (served, held) = match self.version_of(Kind::File, key, file, self.file_versions, num) {
            Chosen::Current => (file, Held::No),
            Chosen::Old(old, d) => (old, if d.held { Held::Again } else { Held::First }),
            Chosen::Gone => {
                return Err(error(
                    ResponseType::NotFound,
                    "the version this download began with is gone: start again",
                ))
            }
        };
        let (len, _) = self.whole_body(
            &served.bytes,
            &served.etag,
            ContentFormat::ApplicationOctetStream,
            out,
        )?;
        let (block, _) = self.block_for(served.bytes.len())?;
        // Every block of a tree download restamps its record, so that it
        // lives as long as the download goes on.
        let download = self.peer_state.download(Kind::File, key);
        self.after_block(Kind::File, key, file.etag, block, download, held);
        Ok((
            len,
            Outcome::File {
                file: served,
                block,
                held,
            },
        ))
    }

    /// The Block2 NUM the request asks for (0 without Block2).
    fn block_num(&self) -> u32 {
        match self.msg.block2 {
            Some(Ok(block)) => block.num,
            _ => 0,
        }
    }

    /// Which version of the file or image `kind` `key` (served now as
    /// `current`, its old versions in `versions`) block `num` is cut from:
    /// the old one the peer's download began with, when the peer's record
    /// names another ETag than the current one for a later block.
    fn version_of<V: Version>(
        &self,
        kind: Kind,
        key: u64,
        current: &'s V,
        versions: &'s Versions<V>,
        num: u32,
    ) -> Chosen<'s, V> {
        let Some(d) = self
            .peer_state
            .download(kind, key)
            .filter(|d| num > 0 && d.etag != *current.etag())
        else {
            return Chosen::Current;
        };
        match versions.get(key, &d.etag, self.now_ms) {
            Some(old) => Chosen::Old(old, d),
            None => Chosen::Gone,
        }
    }

    /// Records what `block` of a download of `kind` `key` (whose current
    /// version has `etag`) changes: block 0 of a body with more blocks
    /// begins a download of that version; a later block of the download
    /// `download` restamps its record, noting whether it was held
    /// (`held`), and its last block ends it.
    fn after_block(
        &mut self,
        kind: Kind,
        key: u64,
        etag: [u8; 8],
        block: Block,
        download: Option<Download>,
        held: Held,
    ) {
        if block.num == 0 {
            if block.more {
                self.peer_state.set_download(Some(Download {
                    kind,
                    key,
                    etag,
                    held: false,
                }));
            }
        } else if let Some(d) = download {
            if !block.more {
                self.peer_state.set_download(None);
                self.ended_held |= held != Held::No;
            } else {
                let held = d.held || held == Held::First;
                self.peer_state.set_download(Some(Download { held, ..d }));
            }
        }
    }

    /// One Block2 block of a whole body of the tree, with its ETag.
    fn whole_body(
        &mut self,
        body: &[u8],
        etag: &[u8; 8],
        format: ContentFormat,
        out: &mut [u8],
    ) -> Reply<'s> {
        self.check_accept(format)?;
        let (block, range) = self.block_for(body.len())?;
        let chunk = body.get(range).ok_or(Failure::Overflow)?;
        let representation = Representation {
            etag,
            format,
            len: body.len(),
            observable: true,
        };
        let len = self.emit_block(out, representation, block, chunk)?;
        Ok((len, Outcome::Content))
    }

    /// RFC 7252 §5.10.4: an Accept the resource cannot meet is 4.06.
    fn check_accept(&self, format: ContentFormat) -> Result<(), Failure> {
        match self.msg.accept {
            Some(accept) if u32::from(accept) != content_format(format) => Err(error(
                ResponseType::NotAcceptable,
                "Accept does not match the resource's format",
            )),
            _ => Ok(()),
        }
    }

    /// The block to send of a body of `body_len` bytes and its byte range,
    /// after SZX negotiation (RFC 7959 §2.4: the client's size, capped at
    /// the server's, at the byte position the client asked for).
    pub(super) fn block_for(
        &self,
        body_len: usize,
    ) -> Result<(Block, core::ops::Range<usize>), Failure> {
        let requested = match self.msg.block2 {
            None => Block {
                num: 0,
                more: false,
                szx: self.server_szx,
            },
            Some(Ok(block)) => block,
            Some(Err(BlockError::ReservedSzx)) => {
                return Err(error(ResponseType::BadRequest, "Block2 SZX 7 is reserved"))
            }
            Some(Err(BlockError::TooLong)) => {
                return Err(error(
                    ResponseType::BadOption,
                    "Block2 value longer than 3 bytes",
                ))
            }
        };
        // The byte position the client asked for, kept when the server
        // answers with smaller blocks (RFC 7959 §2.4).
        let start = requested.position();
        let past_end = start >= body_len as u64 && !(start == 0 && body_len == 0);
        let Some(mut block) =
            Block::at(start, requested.szx.min(self.server_szx)).filter(|_| !past_end)
        else {
            return Err(error(
                ResponseType::BadOption,
                "Block2 NUM is past the end of the body",
            ));
        };
        let end = start
            .saturating_add(block.size() as u64)
            .min(body_len as u64);
        block.more = end < body_len as u64;
        Ok((block, start as usize..end as usize))
    }

    pub(super) fn emitter<'o>(
        &self,
        code: ResponseType,
        out: &'o mut [u8],
    ) -> Result<Emitter<'o>, Failure> {
        Ok(self.reply_to.emitter(code, out)?)
    }

    /// `block` of `body`, whose bytes are `chunk`.
    #[inline]
    fn emit_block(
        &mut self,
        out: &mut [u8],
        body: Representation<'_>,
        block: Block,
        chunk: &[u8],
    ) -> Result<usize, Failure> {
        let mut e = self.emitter(ResponseType::Content, out)?;
        self.block_options(&mut e, body, block)?;
        Ok(e.payload(chunk)?)
    }

    /// ETag, Observe (when `body` is observable and the request
    /// registers), Content-Format, Max-Age (with Observe), Block2 and
    /// Size2 of a block response, in option number order.
    #[inline]
    fn block_options(
        &mut self,
        e: &mut Emitter<'_>,
        body: Representation<'_>,
        block: Block,
    ) -> Result<(), Failure> {
        e.option(CoapOption::ETag.into(), body.etag)?;
        if body.observable {
            self.observe_option(e, u64::from_be_bytes(*body.etag))?;
        }
        e.option_uint(
            CoapOption::ContentFormat.into(),
            content_format(body.format),
        )?;
        self.max_age_option(e)?;
        e.option_block(CoapOption::Block2.into(), block)?;
        if block.num == 0 || self.msg.size2.is_some() {
            let size = u32::try_from(body.len).map_err(|_| Failure::Overflow)?;
            e.option_uint(CoapOption::Size2.into(), size)?;
        }
        Ok(())
    }

    /// An error response with its diagnostic payload.
    pub(super) fn error(
        &self,
        code: ResponseType,
        diagnostic: Diagnostic,
        out: &mut [u8],
    ) -> Result<usize, Failure> {
        Ok(write_diagnostic(self.emitter(code, out)?, diagnostic)?)
    }

    /// 5.03 Service Unavailable with Max-Age (RFC 7252 §5.9.3.4): try again
    /// in `max_age` seconds.
    pub(super) fn unavailable(&self, max_age: u32, out: &mut [u8]) -> Result<usize, Failure> {
        let mut e = self.emitter(ResponseType::ServiceUnavailable, out)?;
        e.option_uint(CoapOption::MaxAge.into(), max_age)?;
        Ok(write_diagnostic(
            e,
            Diagnostic::Text("the image is still being written: retry after Max-Age"),
        )?)
    }
}

/// The version a block is cut from (see [`Ctx::version_of`]).
enum Chosen<'s, V> {
    /// The current one.
    Current,
    /// The old one the peer's download (its record) began with.
    Old(&'s V, Download),
    /// The one the peer's download began with is no longer held.
    Gone,
}

/// Copies the part of `part` (at body position `position`) that falls in
/// `range` into `room` after `written` bytes; returns how many it copied.
fn copy_overlap(
    part: &[u8],
    position: usize,
    range: &core::ops::Range<usize>,
    room: &mut [u8],
    written: usize,
) -> usize {
    let from = range.start.max(position);
    let to = range.end.min(position + part.len());
    if from >= to {
        return 0;
    }
    let (Some(src), Some(dst)) = (
        part.get(from - position..to - position),
        room.get_mut(written..written + (to - from)),
    ) else {
        return 0;
    };
    dst.copy_from_slice(src);
    to - from
}

fn content_format(format: ContentFormat) -> u32 {
    usize::from(format) as u32
}
