//! Observe (RFC 7641) through the service: registration, notifications
//! after catalog and tree changes, their timing and the ways an
//! observation ends, with the clock injected.

use super::*;

const OBSERVE: u16 = 6;
const QUERY: &str = "updates?pid=MOTE&type=APP&version=1.1.31";
const MOTE_NEWER: &str = "MOTE_1_2_0_APP.fmu";

fn observe(req: Req, value: u32) -> Req {
    req.uint(OBSERVE, value)
}

/// The usual catalog plus `extra` files.
fn catalog_plus(extra: &[(&str, usize)]) -> Catalog {
    let mut files = seeded_files(&SMALL, 1);
    files.extend(seeded_files(extra, 50));
    Catalog::from_files(files).expect("catalog builds").0
}

/// Every notification owed at `now`, bytes and description.
fn notifications(fx: &mut Fx, now: u64) -> Vec<(Vec<u8>, Notification)> {
    let mut got = Vec::new();
    for _ in 0..10_000 {
        match fx.svc.poll_notification(now, &mut fx.out) {
            Some(n) => got.push((fx.out[..n.len].to_vec(), n)),
            None => return got,
        }
    }
    panic!("notifications never end");
}

/// The one notification owed at `now`.
fn one_notification(fx: &mut Fx, now: u64) -> (Vec<u8>, Notification) {
    let mut all = notifications(fx, now);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

/// The Observe value of an answer sent at `now`: the clock's, modulo 2^24
/// (no wall clock set: it counts from `now` 0).
fn value_at(now: u64) -> Option<u32> {
    Some((now % (1 << 24)) as u32)
}

fn id_of(fx: &Fx, name: &str) -> String {
    fx.img(name).id
}

#[test]
fn observed_lookup_without_update_is_an_empty_2_05_then_the_new_id() {
    let mut fx = Fx::new();
    // Without Observe, "no newer image" stays 4.04.
    assert_error(&fx.ask(&Req::get(QUERY)), ResponseType::NotFound);
    let reply = fx.ask(&observe(Req::get(QUERY), 0));
    let msg = parse(&reply);
    assert_eq!(msg.class(), MessageClass::Response(ResponseType::Content));
    assert_eq!((msg.observe, msg.payload), (value_at(T0), &[][..]));
    assert_eq!(msg.content_format, Some(0));
    assert_eq!(msg.max_age, Some(OBSERVE_MAX_AGE_S));
    cross_check(&reply);
    assert_eq!(fx.svc.observer_count(), 1);
    assert_eq!(notifications(&mut fx, T0 + 1), []);

    // A change that does not concern MOTE notifies nobody.
    fx.svc
        .replace_catalog(catalog_plus(&[("OTHER_1_0_0_APP.fmu", 10)]));
    assert_eq!(fx.svc.next_notification_ms(), Some(0));
    assert_eq!(notifications(&mut fx, T0 + 2), []);

    // A newer MOTE image: one NON 2.05 with its id, the same token, the
    // clock's Observe value.
    fx.svc.replace_catalog(catalog_plus(&[(MOTE_NEWER, 300)]));
    let (bytes, n) = one_notification(&mut fx, T0 + 3);
    assert!(
        !n.of_status,
        "a lookup's notification needs no status right"
    );
    let msg = parse(&bytes);
    assert_eq!(msg.mtype, MessageType::NonConfirmable);
    assert_eq!(msg.class(), MessageClass::Response(ResponseType::Content));
    assert_eq!(msg.token, TOKEN);
    assert_eq!(msg.observe, value_at(T0 + 3));
    assert_eq!(msg.payload, id_of(&fx, MOTE_NEWER).as_bytes());
    assert_eq!((n.peer, n.confirmable, n.last), (peer(A), false, false));
    cross_check(&bytes);
    // The image is withdrawn: back to the empty answer.
    fx.svc.replace_catalog(catalog(false));
    let (bytes, _) = one_notification(&mut fx, T0 + 4);
    assert_eq!(
        (parse(&bytes).observe, parse(&bytes).payload),
        (value_at(T0 + 4), &[][..])
    );
}

#[test]
fn payload_form_lookup_is_observable_and_names_its_product() {
    let mut fx = Fx::new();
    let payload = device(b"MOTE", 3, version(1, 1, 31), None);
    let reply = fx.ask(&observe(Req::get("updates").payload(&payload), 0).token(b"p"));
    assert_eq!(parse(&reply).observe, value_at(T0));
    // Another product observed with another token from the same peer.
    let other = device(b"MOTE", 7, version(2, 0, 0), None);
    fx.ask(&observe(Req::get("updates").payload(&other), 0).token(b"q"));
    assert_eq!(fx.svc.observer_count(), 2);
    fx.svc.replace_catalog(catalog_plus(&[(MOTE_NEWER, 300)]));
    let (bytes, _) = one_notification(&mut fx, T0 + 1);
    assert_eq!(parse(&bytes).token, b"p");
    assert_eq!(parse(&bytes).payload, id_of(&fx, MOTE_NEWER).as_bytes());
}

#[test]
fn images_by_id_and_the_legacy_form_are_not_observable() {
    let mut fx = Fx::new();
    let img = fx.img(SZ1025);
    let reply = fx.ask(&observe(Req::get(&format!("updates/{}", img.id)), 0));
    assert_eq!(parse(&reply).observe, None);
    let legacy = device(b"MOTE", 3, 0, Some(0));
    let reply = fx.ask(&observe(Req::get("updates").payload(&legacy), 0));
    assert_eq!(parse(&reply).observe, None);
    // Errors are never observations.
    let reply = fx.ask(&observe(Req::get("nope"), 0));
    assert_eq!(parse(&reply).observe, None);
    assert_eq!(fx.svc.observer_count(), 0);
}

#[test]
fn a_tree_file_notifies_its_new_etag_and_its_removal_ends_it() {
    let (mut fx, dir, slot) = tree_fx("observe-file");
    let far = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let reload = |fx: &mut Fx| {
        let tree = crate::tree::FileTree::load(&dir.0, far)
            .unwrap()
            .next
            .unwrap();
        fx.svc.replace_tree(Some(tree));
    };
    let req = observe(get_segments(&segments_of(SLOT0)), 0).block2(0, 2);
    let reply = fx.ask(&req);
    let msg = parse(&reply);
    assert_eq!(msg.observe, value_at(T0));
    assert_eq!(
        msg.etag,
        Some(&crate::hash::fnv1a64(&slot).to_be_bytes()[..])
    );
    assert_eq!(msg.payload, &slot[..64]);
    // The rest of the body by plain GETs with the same token: the
    // observation stays.
    for num in 1..4 {
        let reply = fx.ask(&get_segments(&segments_of(SLOT0)).block2(num, 2));
        assert_eq!(parse(&reply).observe, None);
    }
    assert_eq!(fx.svc.observer_count(), 1);
    // Unchanged bytes, new snapshot: nothing.
    reload(&mut fx);
    assert_eq!(notifications(&mut fx, T0 + 1), []);
    // New bytes: block 0 of the new body, at the registration's size.
    let new = image_bytes(150, 8);
    dir.write(SLOT0, &new);
    reload(&mut fx);
    let (bytes, _) = one_notification(&mut fx, T0 + 2);
    let msg = parse(&bytes);
    assert_eq!(msg.observe, value_at(T0 + 2));
    assert_eq!(
        msg.etag,
        Some(&crate::hash::fnv1a64(&new).to_be_bytes()[..])
    );
    assert_eq!(
        block2(&bytes),
        Block {
            num: 0,
            more: true,
            szx: 2
        }
    );
    assert_eq!(msg.payload, &new[..64]);
    // Removed: a final 4.04 without Observe, and the observation is over.
    std::fs::remove_file(dir.0.join(SLOT0)).unwrap();
    reload(&mut fx);
    let (bytes, n) = one_notification(&mut fx, T0 + 3);
    assert_error(&bytes, ResponseType::NotFound);
    assert_eq!(parse(&bytes).observe, None);
    assert!(n.last);
    assert_eq!(fx.svc.observer_count(), 0);
}

#[test]
fn discovery_notifies_when_the_listing_changes() {
    let mut fx = Fx::new();
    let reply = fx.ask(&observe(Req::get(".well-known/core"), 0));
    assert_eq!(parse(&reply).observe, value_at(T0));
    fx.svc.replace_catalog(catalog_plus(&[(MOTE_NEWER, 300)]));
    let (bytes, _) = one_notification(&mut fx, T0 + 1);
    let msg = parse(&bytes);
    assert_eq!(msg.observe, value_at(T0 + 1));
    assert_eq!(msg.content_format, Some(40));
    assert_ne!(msg.etag, parse(&reply).etag);
}

#[test]
fn observations_end_on_observe_1_a_plain_get_and_an_rst() {
    let mut fx = Fx::new();
    let register = |fx: &mut Fx| {
        fx.ask(&observe(Req::get(QUERY), 0));
        assert_eq!(fx.svc.observer_count(), 1);
    };
    register(&mut fx);
    let reply = fx.ask(&observe(Req::get(QUERY), 1));
    assert_eq!(parse(&reply).observe, None);
    assert_error(&reply, ResponseType::NotFound);
    assert_eq!(fx.svc.observer_count(), 0);

    // A plain GET of another resource, or of a later block, with the same
    // token leaves it; a plain GET of the same resource ends it.
    register(&mut fx);
    fx.ask(&Req::get(".well-known/core"));
    fx.ask(&Req::get(QUERY).block2(1, 6));
    assert_eq!(fx.svc.observer_count(), 1);
    fx.ask(&Req::get(QUERY));
    assert_eq!(fx.svc.observer_count(), 0);

    // An RST for a notification ends it; one from another port does not.
    register(&mut fx);
    fx.svc.replace_catalog(catalog_plus(&[(MOTE_NEWER, 300)]));
    let (bytes, _) = one_notification(&mut fx, T0 + 1);
    let mid = parse(&bytes).mid;
    let rst = wire_empty(MessageType::Reset, mid);
    assert_eq!(
        fx.handle(peer_port(A, 9), T0 + 2, &rst),
        Err(Dropped::AckOrReset)
    );
    assert_eq!(fx.svc.observer_count(), 1);
    assert_eq!(fx.handle(peer(A), T0 + 2, &rst), Err(Dropped::AckOrReset));
    assert_eq!(fx.svc.observer_count(), 0);
}

fn wire_empty(mtype: MessageType, mid: u16) -> Vec<u8> {
    let mut buf = [0u8; 4];
    let len = wire::emit_empty(&mut buf, mtype, mid).unwrap();
    buf[..len].to_vec()
}

/// Registers on the lookup and returns a catalog sequence that changes
/// the answer at every step.
fn flip_catalogs() -> [Catalog; 2] {
    [catalog_plus(&[(MOTE_NEWER, 300)]), catalog(false)]
}

#[test]
fn every_20th_notification_is_confirmable_and_an_ack_resets_the_count() {
    let mut fx = Fx::new();
    fx.ask(&observe(Req::get(QUERY), 0));
    let mut kinds = Vec::new();
    for i in 0..40u64 {
        let [a, b] = flip_catalogs();
        fx.svc.replace_catalog(if i % 2 == 0 { a } else { b });
        let now = T0 + 10 * (i + 1);
        let (bytes, n) = one_notification(&mut fx, now);
        let msg = parse(&bytes);
        assert_eq!(msg.observe, value_at(now), "Observe values rise");
        kinds.push(n.confirmable);
        if n.confirmable {
            assert_eq!(msg.mtype, MessageType::Confirmable);
            // Acknowledged at once.
            let ack = wire_empty(MessageType::Acknowledgement, msg.mid);
            assert_eq!(fx.handle(peer(A), now, &ack), Err(Dropped::AckOrReset));
        }
    }
    let con_at: Vec<_> = kinds
        .iter()
        .enumerate()
        .filter(|(_, c)| **c)
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(con_at, [20, 40]);
}

#[test]
fn an_observer_silent_for_24_hours_gets_a_confirmable_refresh() {
    let mut fx = Fx::new();
    fx.ask(&observe(Req::get(QUERY), 0));
    assert_eq!(fx.svc.next_notification_ms(), Some(T0 + REFRESH_MS));
    assert_eq!(notifications(&mut fx, T0 + REFRESH_MS - 1), []);
    let (bytes, n) = one_notification(&mut fx, T0 + REFRESH_MS);
    let msg = parse(&bytes);
    assert!(n.confirmable);
    assert_eq!(
        (msg.mtype, msg.observe),
        (MessageType::Confirmable, value_at(T0 + REFRESH_MS))
    );
    // Acknowledged: the next one is due a day after the ACK.
    let ack_at = T0 + REFRESH_MS + 500;
    let ack = wire_empty(MessageType::Acknowledgement, msg.mid);
    let _ = fx.handle(peer(A), ack_at, &ack);
    assert_eq!(notifications(&mut fx, ack_at + REFRESH_MS - 1), []);
    let (_, n) = one_notification(&mut fx, ack_at + REFRESH_MS);
    assert!(n.confirmable);
}

#[test]
fn an_unacknowledged_notification_is_retransmitted_then_the_observer_dropped() {
    let mut fx = Fx::new();
    fx.ask(&observe(Req::get(QUERY), 0));
    let (first, _) = one_notification(&mut fx, T0 + REFRESH_MS);
    let first = parse(&first);
    let (mid, seq) = (first.mid, first.observe);
    let mut now = T0 + REFRESH_MS;
    let mut retransmissions = 0;
    while fx.svc.observer_count() == 1 {
        now = fx.svc.next_notification_ms().expect("a timer");
        for (bytes, n) in notifications(&mut fx, now) {
            let msg = parse(&bytes);
            assert!(n.confirmable);
            assert_eq!((msg.mid, msg.observe), (mid, seq), "same message again");
            retransmissions += 1;
        }
        assert!(retransmissions <= 10);
    }
    assert_eq!(retransmissions, 4, "MAX_RETRANSMIT");
    assert!(now - (T0 + REFRESH_MS) >= 60_000);
    assert_eq!(fx.svc.next_notification_ms(), None);
}

#[test]
fn a_change_during_a_confirmable_notification_replaces_it() {
    let mut fx = Fx::new();
    fx.ask(&observe(Req::get(QUERY), 0));
    let (first, _) = one_notification(&mut fx, T0 + REFRESH_MS);
    let first = parse(&first);
    fx.svc.replace_catalog(catalog_plus(&[(MOTE_NEWER, 300)]));
    let (bytes, n) = one_notification(&mut fx, T0 + REFRESH_MS + 1);
    let msg = parse(&bytes);
    assert!(
        n.confirmable,
        "still Confirmable: it carries the one in flight"
    );
    assert_ne!(msg.mid, first.mid);
    assert_eq!(msg.observe, value_at(T0 + REFRESH_MS + 1));
    assert_eq!(msg.payload, id_of(&fx, MOTE_NEWER).as_bytes());
    // The ACK of the old one confirms nothing any more; that of the new one does.
    let _ = fx.handle(
        peer(A),
        T0 + REFRESH_MS + 2,
        &wire_empty(MessageType::Acknowledgement, first.mid),
    );
    let due = fx.svc.next_notification_ms().unwrap();
    assert!(due < T0 + REFRESH_MS + 10_000, "retransmission pending");
    let _ = fx.handle(
        peer(A),
        T0 + REFRESH_MS + 3,
        &wire_empty(MessageType::Acknowledgement, msg.mid),
    );
    assert!(fx.svc.next_notification_ms().unwrap() >= T0 + 2 * REFRESH_MS);
}

#[test]
fn ten_thousand_spoofed_registrations_keep_the_bound_and_the_newest() {
    let limits = Limits {
        max_observers: 1024,
        ..Limits::default()
    };
    let mut fx = Fx::with(limits, false);
    for port in 0..10_000u16 {
        let reply = fx
            .handle(
                peer_port(B, port),
                T0,
                &observe(Req::get(QUERY).non(), 0).bytes(),
            )
            .unwrap();
        assert_eq!(parse(&reply).observe, value_at(T0));
        assert!(fx.svc.observer_count() <= 1024);
    }
    assert_eq!(fx.svc.observer_count(), 1024);
    fx.svc.replace_catalog(catalog_plus(&[(MOTE_NEWER, 300)]));
    let sent = notifications(&mut fx, T0 + 1);
    assert_eq!(sent.len(), 1024);
    let mut ports: Vec<u16> = sent.iter().map(|(_, n)| n.peer.port).collect();
    ports.sort_unstable();
    assert_eq!(ports, (10_000 - 1024..10_000).collect::<Vec<u16>>());
}

#[test]
fn observe_off_and_multicast_registrations_answer_as_plain_gets() {
    let mut fx = Fx::with(
        Limits {
            max_observers: 0,
            ..Limits::default()
        },
        false,
    );
    let reply = fx.ask(&observe(Req::get(".well-known/core"), 0));
    assert_eq!(parse(&reply).observe, None);
    assert_eq!(fx.svc.observer_count(), 0);

    let mut fx = Fx::new();
    let arrival = Arrival {
        multicast: true,
        ..Arrival::default()
    };
    let request = observe(Req::get(".well-known/core").non(), 0).bytes();
    match fx.svc.handle_request(
        &Request::new(peer(A), T0, &request).arrived(arrival),
        &mut fx.out,
    ) {
        Action::Reply { len, .. } => assert_eq!(parse(&fx.out[..len]).observe, None),
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.svc.observer_count(), 0);
}

#[test]
fn notifications_leave_from_where_the_registration_arrived() {
    let mut fx = Fx::new();
    let arrival = Arrival {
        multicast: false,
        ifindex: 3,
        socket: 2,
        local: Some([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
    };
    let request = observe(Req::get(QUERY), 0).bytes();
    let _ = fx.svc.handle_request(
        &Request::new(peer(A), T0, &request).arrived(arrival),
        &mut fx.out,
    );
    fx.svc.replace_catalog(catalog_plus(&[(MOTE_NEWER, 300)]));
    let (_, n) = one_notification(&mut fx, T0 + 1);
    assert_eq!(n.arrival, arrival);
}

#[test]
fn a_duplicate_confirmable_registration_gets_the_same_ack_byte_for_byte() {
    let mut fx = Fx::new();
    let registration = observe(Req::get(QUERY), 0).mid(77);
    let first = fx.ask_from(A, T0, &registration);
    // Its duplicate, a second later: the same ACK, Observe value included,
    // and the observation unchanged (one observer, nothing owed).
    let again = fx.ask_from(A, T0 + 1000, &registration);
    assert_eq!(again, first);
    assert_eq!(parse(&again).observe, value_at(T0));
    assert_eq!(fx.svc.observer_count(), 1);
    assert_eq!(notifications(&mut fx, T0 + 1001), []);
    // A new registration with the same token (another Message ID)
    // refreshes it, with a newer value.
    let refreshed = fx.ask_from(A, T0 + 2000, &observe(Req::get(QUERY), 0).mid(78));
    assert_eq!(parse(&refreshed).observe, value_at(T0 + 2000));
    // Past EXCHANGE_LIFETIME the same bytes are a new registration too.
    let late = T0 + 2000 + EXCHANGE_LIFETIME_MS;
    let reply = fx.ask_from(A, late, &observe(Req::get(QUERY), 0).mid(78));
    assert_eq!(parse(&reply).observe, value_at(late));
}

#[test]
fn an_rst_to_the_answer_of_a_non_registration_ends_it() {
    let mut fx = Fx::new();
    let reply = fx.ask(&observe(Req::get(QUERY).non(), 0));
    let answer = parse(&reply);
    assert_eq!(answer.mtype, MessageType::NonConfirmable);
    assert_eq!(fx.svc.observer_count(), 1);
    let rst = wire_empty(MessageType::Reset, answer.mid);
    assert_eq!(fx.handle(peer(A), T0 + 1, &rst), Err(Dropped::AckOrReset));
    assert_eq!(fx.svc.observer_count(), 0);
    fx.svc.replace_catalog(catalog_plus(&[(MOTE_NEWER, 300)]));
    assert_eq!(notifications(&mut fx, T0 + 2), []);
}

#[test]
fn changes_cannot_keep_an_observer_that_never_acknowledges() {
    let mut fx = Fx::new();
    fx.ask(&observe(Req::get(QUERY), 0));
    // The 24-hour refresh starts a Confirmable exchange; then the answer
    // changes every 1.5 s and the observer never answers.
    let start = T0 + REFRESH_MS;
    let mut cons = notifications(&mut fx, start).len();
    let mut now = start;
    let mut flip = 0;
    while fx.svc.observer_count() == 1 && now < start + 200_000 {
        now += 100;
        if (now - start) % 1500 == 0 {
            let [a, b] = flip_catalogs();
            fx.svc.replace_catalog(if flip % 2 == 0 { a } else { b });
            flip += 1;
        }
        for (_, n) in notifications(&mut fx, now) {
            assert!(n.confirmable);
            cons += 1;
        }
    }
    // The first transmission and MAX_RETRANSMIT more, each change sent in
    // place of the one in flight; then the changes wait, and the last
    // timeout (16 times the first, 32 to 48 s) ends the observation.
    assert_eq!(
        cons,
        1 + usize::from(crate::service::observe::MAX_RETRANSMIT)
    );
    assert_eq!(fx.svc.observer_count(), 0);
    assert!(
        (6000 + 32_000..=6000 + 48_100).contains(&(now - start)),
        "{}",
        now - start
    );
}

#[test]
fn a_change_held_for_an_exhausted_flight_goes_out_with_its_ack() {
    let mut fx = Fx::new();
    fx.ask(&observe(Req::get(QUERY), 0));
    let mut now = T0 + REFRESH_MS;
    let mut last = notifications(&mut fx, now);
    // Four changes replace the one in flight: five transmissions.
    for i in 0..4 {
        let [a, b] = flip_catalogs();
        fx.svc.replace_catalog(if i % 2 == 0 { a } else { b });
        now += 1000;
        last = notifications(&mut fx, now);
        assert_eq!(last.len(), 1);
    }
    // A fifth change waits.
    let [a, _] = flip_catalogs();
    fx.svc.replace_catalog(a);
    assert_eq!(notifications(&mut fx, now + 1000), []);
    // The ACK of the last one sends it, Non-confirmable again.
    let mid = parse(&last[0].0).mid;
    let ack = wire_empty(MessageType::Acknowledgement, mid);
    assert_eq!(
        fx.handle(peer(A), now + 2000, &ack),
        Err(Dropped::AckOrReset)
    );
    let (bytes, n) = one_notification(&mut fx, now + 2000);
    assert!(!n.confirmable);
    assert_eq!(parse(&bytes).payload, id_of(&fx, MOTE_NEWER).as_bytes());
}
