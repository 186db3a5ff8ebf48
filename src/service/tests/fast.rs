//! The fast path ([`Service::handle_block`]) against the general one: two
//! services with the same catalog, limits and keys get the same datagrams;
//! one answers everything with [`Service::handle`], the other tries the
//! fast path first. Their answers must be byte for byte the same, and so
//! must everything they answer afterwards (the state each leaves behind).

use super::*;

/// The general service and the fast-path-first one.
struct Twins {
    general: Fx,
    fast: Fx,
    /// Datagrams the fast path answered.
    answered: usize,
}

impl Twins {
    fn new(limits: Limits) -> Twins {
        Twins {
            general: Fx::with(limits, false),
            fast: Fx::with(limits, false),
            answered: 0,
        }
    }

    /// Both answers to `req` from peer `n` at `now`: equal, or a panic.
    /// Returns the answer and whether the fast path gave it.
    fn send(&mut self, n: u32, now: u64, req: &Req) -> (Result<Vec<u8>, Dropped>, bool) {
        let bytes = req.bytes();
        let expected = self.general.handle(peer(n), now, &bytes);
        let fx = &mut self.fast;
        let (got, fast) = match fx.svc.handle_block(peer(n), now, &bytes, &mut fx.out) {
            Some(Action::Reply { len, .. }) => (Ok(fx.out[..len].to_vec()), true),
            Some(Action::Drop(reason)) => (Err(reason), true),
            None => (fx.handle(peer(n), now, &bytes), false),
        };
        assert_eq!(got, expected, "fast {fast}: {req:?}");
        assert_eq!(
            self.fast.svc.continuation_count(),
            self.general.svc.continuation_count()
        );
        assert_eq!(
            self.fast.svc.rate_table_len(),
            self.general.svc.rate_table_len()
        );
        self.answered += usize::from(fast);
        (got, fast)
    }

    fn img(&self, name: &str) -> Img {
        self.general.img(name)
    }
}

fn block(id: &str, num: u32, szx: u8) -> Req {
    Req::get(&format!("updates/{id}")).block2(num, szx)
}

#[test]
fn later_blocks_by_id_take_the_fast_path_with_the_general_answer() {
    let mut t = Twins::new(Limits::default());
    let img = t.img(SZ1025);
    let mote = t.img(MOTE_NEW);
    for (req, fast) in [
        (block(&img.id, 1, 6), true),
        // The last block (M clear), smaller blocks than the server's, the
        // largest position, Size2 asked, an empty token, an Echo option
        // nobody asked for.
        (block(&img.id, 64, 0), true),
        (block(&mote.id, 1, 4), true),
        (block(&mote.id, 7, 6), false),
        (
            block(&mote.id, 1, 6).uint(CoapOption::Size2.into(), 0),
            true,
        ),
        (block(&mote.id, 1, 5).token(&[]), true),
        (block(&mote.id, 1, 6).option(wire::OPTION_ECHO, b"e"), true),
    ] {
        assert_eq!(t.send(A, T0, &req).1, fast, "{req:?}");
    }
}

#[test]
fn what_needs_a_decision_goes_the_general_way_and_changes_nothing_first() {
    let mut t = Twins::new(Limits {
        rate_limit: Some(100),
        ..Limits::default()
    });
    let img = t.img(MOTE_NEW);
    let id = &img.id;
    for req in [
        block(id, 0, 6),
        Req::get(&format!("updates/{id}")),
        block(id, 1, 6).non(),
        block(id, 1, 6).code(MessageClass::Request(RequestType::Post)),
        Req::get(&format!("updates/{id}?offset=10")).block2(1, 6),
        block(id, 1, 6).payload(&10u32.to_le_bytes()),
        block(id, 1, 6).uint(CoapOption::Observe.into(), 0),
        block(id, 1, 6).uint(CoapOption::Accept.into(), 42),
        block(id, 1, 6).option(CoapOption::ETag.into(), &img.etag),
        block(id, 1, 6).option(2048, b"elective"),
        block(id, 1, 6).option(2049, b"critical"),
        block(id, 1, 6).block2(2, 6),
        block(id, 1, 6)
            .option(wire::OPTION_ECHO, b"a")
            .option(wire::OPTION_ECHO, b"b"),
        block(id, 1, 6).option(CoapOption::UriHost.into(), b"host"),
        block("00000000", 1, 6),
        block(&id[..7], 1, 6),
        block(id, 2, 6).option(CoapOption::UriPath.into(), b"more"),
        // Past the end of the body: 4.02 from the general path.
        block(id, 2, 6),
        Req::get(&format!("updates/{id}")).option(CoapOption::Block2.into(), &[0x17]),
    ] {
        let rate_table = t.fast.svc.rate_table_len();
        assert!(!t.send(B, T0, &req).1, "fast path answered {req:?}");
        assert!(t.fast.svc.rate_table_len() <= rate_table.max(1));
    }
    // A malformed datagram whose options begin as a fast one's does.
    let mut bytes = block(id, 1, 6).bytes();
    bytes.push(0xFF);
    let fx = &mut t.fast;
    assert!(fx
        .svc
        .handle_block(peer(A), T0, &bytes, &mut fx.out)
        .is_none());
    bytes.pop();
    bytes.push(0x0D);
    assert!(fx
        .svc
        .handle_block(peer(A), T0, &bytes, &mut fx.out)
        .is_none());
}

#[test]
fn a_body_started_with_an_offset_is_continued_by_the_general_path() {
    let mut t = Twins::new(Limits::default());
    let img = t.img(MOTE_NEW);
    let start = block(&img.id, 0, 6).payload(&100u32.to_le_bytes());
    let (first, fast) = t.send(A, T0, &start);
    assert!(!fast);
    assert_eq!(parse(&first.unwrap()).etag, Some(&img.from(100).etag[..]));
    // Peer A's next blocks continue its OFFSET: not for the fast path.
    let next = block(&img.id, 1, 6).mid(MID + 1);
    let (reply, fast) = t.send(A, T0 + 10, &next);
    assert!(!fast);
    let reply = reply.unwrap();
    assert_eq!(parse(&reply).etag, Some(&img.from(100).etag[..]));
    assert_eq!(parse(&reply).payload, &img.bytes[100 + 1024..]);
    // Another peer's, or another image's, are.
    assert!(t.send(B, T0 + 10, &next).1);
    assert!(t.send(A, T0 + 10, &block(&t.img(SZ1025).id, 1, 6)).1);
    // The last block forgot the OFFSET, but its duplicate still gets the
    // answer its first copy got, from the general path.
    let (again, fast) = t.send(A, T0 + 20, &next);
    assert!(!fast);
    assert_eq!(again.unwrap(), reply);
    // A new request for the image after that is a whole-image one.
    assert!(t.send(A, T0 + 30, &next.clone().mid(MID + 2)).1);
    // Once every record that could continue has expired, the fast path
    // needs no lookup at all, and answers as before.
    let later = T0 + 20 + EXCHANGE_LIFETIME_MS;
    assert!(t.send(A, later, &next.mid(MID + 3)).1);
}

#[test]
fn the_rate_limit_and_echo_apply_on_the_fast_path_as_on_the_general_one() {
    let mut t = Twins::new(Limits {
        rate_limit: Some(2),
        ..Limits::default()
    });
    let img = t.img(MOTE_NEW);
    let mut answered = Vec::new();
    for i in 0..5u16 {
        let (reply, fast) = t.send(A, T0, &block(&img.id, 1, 6).mid(MID + i));
        assert!(fast);
        answered.push(reply.map(|r| parse(&r).class()));
    }
    // Two blocks, then 4.29 (a CON's is small enough to send).
    assert_eq!(
        answered,
        [
            Ok(MessageClass::Response(ResponseType::Content)),
            Ok(MessageClass::Response(ResponseType::Content)),
            Ok(MessageClass::Response(ResponseType::TooManyRequests)),
            Ok(MessageClass::Response(ResponseType::TooManyRequests)),
            Ok(MessageClass::Response(ResponseType::TooManyRequests)),
        ]
    );

    let mut t = Twins::new(Limits {
        echo: true,
        ..Limits::default()
    });
    let req = block(&img.id, 1, 6);
    let (challenge, fast) = t.send(A, T0, &req);
    assert!(fast);
    let echo = echo_of(&challenge.unwrap());
    let (reply, fast) = t.send(A, T0, &req.clone().option(wire::OPTION_ECHO, &echo));
    assert!(fast);
    assert_eq!(parse(&reply.unwrap()).payload, &img.bytes[1024..]);
    let (wrong, fast) = t.send(A, T0, &req.option(wire::OPTION_ECHO, b"wrong"));
    assert!(fast);
    echo_of(&wrong.unwrap());
}

#[test]
fn a_reply_that_does_not_fit_is_dropped_as_the_general_path_drops_it() {
    let mut fx = Fx::new();
    let img = fx.img(MOTE_NEW);
    let bytes = block(&img.id, 1, 6).bytes();
    let mut small = [0u8; 32];
    assert!(matches!(
        fx.svc.handle_block(peer(A), T0, &bytes, &mut small),
        Some(Action::Drop(Dropped::Overflow))
    ));
    assert!(matches!(
        fx.svc.handle(peer(A), T0, &bytes, &mut small),
        Action::Drop(Dropped::Overflow)
    ));
}

/// A legacy request: `GET /updates` with Block2 and the device payload of
/// a MOTE running 1.0.0 (OFFSET `offset`), or without a payload.
fn legacy(num: u32, mid: u16, offset: Option<u32>) -> Req {
    let req = Req::get("updates").block2(num, 6).mid(mid);
    match offset {
        Some(offset) => req.payload(&device(b"MOTE", 3, version(1, 0, 0), Some(offset))),
        None => req,
    }
}

#[test]
fn legacy_blocks_with_the_payload_on_every_block_take_the_fast_path_once_recorded() {
    let mut t = Twins::new(Limits::default());
    let img = t.img(MOTE_NEW);
    // Block 0 records the transfer (general); the later blocks name it
    // again and are the fast path's, the last one too.
    assert!(!t.send(A, T0, &legacy(0, 1, Some(0))).1);
    let (reply, fast) = t.send(A, T0, &legacy(1, 2, Some(0)));
    assert!(fast);
    assert_eq!(parse(&reply.unwrap()).payload, &img.bytes[1024..]);
    // Another OFFSET is another body: recorded by the general path first.
    assert!(!t.send(A, T0, &legacy(1, 3, Some(100))).1);
    let (reply, fast) = t.send(A, T0, &legacy(1, 4, Some(100)));
    assert!(fast);
    let reply = reply.unwrap();
    assert_eq!(parse(&reply).etag, Some(&img.from(100).etag[..]));
    assert_eq!(parse(&reply).payload, &img.bytes[100 + 1024..]);
    // A peer without a record, a device without a newer image, an OFFSET
    // past the end: the general path.
    assert!(!t.send(B, T0, &legacy(1, 5, Some(0))).1);
    let current =
        Req::get("updates")
            .block2(1, 6)
            .payload(&device(b"MOTE", 3, version(1, 1, 31), Some(0)));
    assert!(!t.send(A, T0, &current).1);
    assert!(!t.send(A, T0, &legacy(1, 6, Some(5000))).1);
}

#[test]
fn legacy_continuations_without_payload_take_the_fast_path_with_their_records() {
    let mut t = Twins::new(Limits::default());
    let img = t.img(MOTE_NEW);
    assert!(!t.send(A, T0, &legacy(0, 1, Some(100))).1);
    let (first, fast) = t.send(A, T0 + 1, &legacy(1, 2, None));
    assert!(fast);
    let first = first.unwrap();
    assert_eq!(parse(&first).payload, &img.bytes[100 + 1024..]);
    // The device starts another body; a late duplicate of the earlier
    // continuation still gets what its first copy got, and a new
    // continuation gets the new body: the records agree between the paths.
    assert!(!t.send(A, T0 + 2, &legacy(0, 3, Some(0))).1);
    let (again, fast) = t.send(A, T0 + 3, &legacy(1, 2, None));
    assert!(fast);
    assert_eq!(again.unwrap(), first);
    let (next, fast) = t.send(A, T0 + 4, &legacy(1, 4, None));
    assert!(fast);
    assert_eq!(parse(&next.unwrap()).payload, &img.bytes[1024..]);
    // No transfer for this peer: 4.00 from the general path.
    assert!(!t.send(B, T0, &legacy(1, 5, None)).1);
    // With --echo, a challenged continuation records nothing.
    let mut t = Twins::new(Limits {
        echo: true,
        ..Limits::default()
    });
    let start = legacy(0, 1, Some(0));
    let echo = echo_of(&t.send(A, T0, &start).0.unwrap());
    let (started, _) = t.send(A, T0, &start.mid(9).option(wire::OPTION_ECHO, &echo));
    assert_eq!(parse(&started.unwrap()).payload, &img.bytes[..1024]);
    let (challenge, fast) = t.send(A, T0, &legacy(1, 2, None));
    assert!(fast);
    assert_eq!(echo_of(&challenge.unwrap()), echo);
    let (reply, fast) = t.send(A, T0, &legacy(1, 3, None).option(wire::OPTION_ECHO, &echo));
    assert!(fast);
    assert_eq!(parse(&reply.unwrap()).payload, &img.bytes[1024..]);
}

/// An image overwritten in place while a peer downloads it: the fast path
/// leaves every block of it to the general path while its old version is
/// held (which gives the peer its old version and anyone else the new
/// one), and answers again once the old version is dropped; the two
/// services answer alike throughout.
#[test]
fn an_image_with_a_held_old_version_goes_the_general_way_until_it_is_dropped() {
    let mut t = Twins::new(Limits::default());
    let old = t.img(MOTE_NEW);
    let c = 0xC000_0203;
    assert!(!t.send(A, T0, &block(&old.id, 0, 2)).1);
    assert!(t.send(B, T0, &block(&old.id, 1, 2)).1, "not held yet");
    for fx in [&mut t.general, &mut t.fast] {
        fx.svc.replace_catalog(super::catalog_with_mote_new(77));
    }
    let new = t.img(MOTE_NEW);
    let last = (MOTE_NEW_LEN as u32).div_ceil(64) - 1;
    for num in 1..=last {
        let (reply, fast) = t.send(A, T0 + 1, &block(&old.id, num, 2));
        assert!(!fast, "block {num} of the held download");
        super::assert_block_of(&reply.expect("a reply"), &old, num, "A");
        let (reply, fast) = t.send(c, T0 + 1, &block(&old.id, num, 2));
        assert!(!fast, "block {num} of an unrecorded download");
        super::assert_block_of(&reply.expect("a reply"), &new, num, "C");
    }
    // A's download ended; the next request drops the old version.
    assert!(!t.send(B, T0 + 2, &block(&old.id, 0, 2)).1);
    let (reply, fast) = t.send(B, T0 + 2, &block(&old.id, 1, 2));
    assert!(fast, "the old version is gone");
    super::assert_block_of(&reply.expect("a reply"), &new, 1, "B");
}
