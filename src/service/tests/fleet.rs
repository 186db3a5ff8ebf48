//! The fleet's routes: `ep=` on the lookup, rollout eligibility, reports
//! (`POST /updates/report`), `/status` and its access rule, and the
//! inference from first and last blocks.

use super::*;
use crate::fleet::{DeviceName, FleetFiles, PolicyFile, State};

const POST: MessageClass = MessageClass::Request(RequestType::Post);

fn lookup(ep: &str) -> Req {
    Req::get(&format!("updates?pid=MOTE&type=APP&version=1.0.0&ep={ep}"))
}

fn policy(fx: &mut Fx, text: &str) {
    let file = PolicyFile::new(&format!("{MOTE_NEW}.rollout"), text.as_bytes(), None, None)
        .expect("a policy name");
    fx.svc
        .replace_fleet_files(FleetFiles::new(vec![file], Vec::new()));
}

fn loopback() -> Peer {
    Peer {
        ip: core::net::Ipv6Addr::LOCALHOST.octets(),
        port: 40000,
        scope: 0,
    }
}

fn status(fx: &mut Fx, uri: &str, accept: Option<u32>) -> Vec<u8> {
    let mut req = Req::get(uri);
    if let Some(accept) = accept {
        req = req.uint(CoapOption::Accept.into(), accept);
    }
    fx.handle(loopback(), T0, &req.bytes()).unwrap()
}

fn device_state(fx: &Fx, name: &str) -> Option<State> {
    fx.svc
        .fleet()
        .device(&DeviceName::parse(name.as_bytes()).unwrap())
        .map(|d| d.state)
}

#[test]
fn lookup_with_ep_names_the_device_and_bad_ep_is_4_00() {
    let mut fx = Fx::new();
    let mote = fx.img(MOTE_NEW);
    let reply = fx.ask(&lookup("node-1"));
    assert_eq!(parse(&reply).payload, mote.id.as_bytes());
    assert_eq!(device_state(&fx, "node-1"), Some(State::Offered));
    for bad in ["a/b", "", &"x".repeat(64)] {
        let reply = fx.ask(&lookup(bad));
        assert!(assert_error(&reply, ResponseType::BadRequest).contains("ep must be"));
    }
    let twice = Req::get("updates?pid=MOTE&type=APP&version=1.0.0&ep=a&ep=b");
    assert_error(&fx.ask(&twice), ResponseType::BadRequest);
}

#[test]
fn a_device_outside_the_share_gets_no_update_in_both_forms() {
    let mut fx = Fx::new();
    policy(&mut fx, "percent = 0\ncanary = lucky\n");
    assert_error(&fx.ask(&lookup("other")), ResponseType::NotFound);
    let reply = fx.ask(&lookup("lucky"));
    assert_eq!(class(&reply), MessageClass::Response(ResponseType::Content));
    // The legacy form's "no update" is an RST; its device is its address.
    let legacy = Req::get("updates").payload(&device(b"MOTE", 3, version(1, 0, 0), Some(0)));
    assert_rst(&fx.ask_from(B, T0, &legacy), MID);
    // The binary lookup form: 4.04.
    let binary = Req::get("updates").payload(&device(b"MOTE", 3, version(1, 0, 0), None));
    assert_error(&fx.ask_from(B, T0, &binary), ResponseType::NotFound);
    // From the address "lucky" looked up from, the legacy form is lucky's.
    let reply = fx.ask(&legacy.block2(0, 6));
    assert_eq!(class(&reply), MessageClass::Response(ResponseType::Content));
}

#[test]
fn a_paused_rollout_lets_a_begun_legacy_transfer_finish() {
    let mut fx = Fx::new();
    let mote = fx.img(MOTE_NEW);
    let legacy = |num| {
        Req::get("updates")
            .block2(num, 6)
            .payload(&device(b"MOTE", 3, version(1, 0, 0), Some(0)))
    };
    assert_block(&fx.ask(&legacy(0)), &mote, 0, true, 6);
    policy(&mut fx, "pause = yes\n");
    assert_block(&fx.ask(&legacy(1).mid(MID + 1)), &mote, 1, false, 6);
    // A new transfer does not start.
    assert_rst(&fx.ask_from(B, T0, &legacy(0).mid(MID + 2)), MID + 2);
}

#[test]
fn reports_in_query_and_cbor_forms_are_2_04_and_recorded() {
    let mut fx = Fx::new();
    let report =
        Req::get("updates/report?ep=d1&pid=MOTE&type=APP&target=1.1.31&result=1").code(POST);
    let reply = fx.ask(&report);
    assert_eq!(
        class(&reply),
        MessageClass::Response(ResponseType::Changed),
        "{:?}",
        String::from_utf8_lossy(parse(&reply).payload)
    );
    assert_eq!(device_state(&fx, "d1"), Some(State::Updated));
    // {"e": "d2", "s": 1}
    let cbor = [0xa2, 0x61, b'e', 0x62, b'd', b'2', 0x61, b's', 0x01];
    let report = Req::get("updates/report")
        .code(POST)
        .uint(CoapOption::ContentFormat.into(), 60)
        .payload(&cbor);
    assert_eq!(
        class(&fx.ask(&report)),
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(device_state(&fx, "d2"), Some(State::Downloading));
}

#[test]
fn malformed_reports_are_refused_and_change_nothing() {
    let mut fx = Fx::new();
    let post = |uri: &str| Req::get(uri).code(POST);
    for (req, code) in [
        (
            post("updates/report?ep=d1&state=9"),
            ResponseType::BadRequest,
        ),
        (post("updates/report?ep=d1"), ResponseType::BadRequest),
        (
            post("updates/report?ep=d1&pid=MOTE&type=APP&target=9.9.9&result=1"),
            ResponseType::BadRequest,
        ),
        (
            post("updates/report?ep=d1&state=1").payload(b"x"),
            ResponseType::BadRequest,
        ),
        (
            post("updates/report")
                .uint(CoapOption::ContentFormat.into(), 60)
                .payload(&[0xa1, 0x61, b'x', 0x01]),
            ResponseType::BadRequest,
        ),
        (
            post("updates/report?ep=d1&state=1").uint(CoapOption::ContentFormat.into(), 50),
            ResponseType::UnsupportedContentFormat,
        ),
        (
            Req::get("updates/report?ep=d1&state=1"),
            ResponseType::MethodNotAllowed,
        ),
        (
            post("updates?ep=d1&state=1"),
            ResponseType::MethodNotAllowed,
        ),
    ] {
        assert_error(&fx.ask(&req), code);
    }
    assert_eq!(fx.svc.fleet().device_count(), 0);
}

#[test]
fn blocks_and_a_later_lookup_infer_downloaded_and_updated() {
    let mut fx = Fx::new();
    let mote = fx.img(MOTE_NEW);
    fx.ask(&lookup("d1"));
    // The download by id from the same address is d1's.
    fx.ask(&Req::get(&format!("updates/{}", mote.id)).block2(0, 6));
    assert_eq!(device_state(&fx, "d1"), Some(State::Downloading));
    fx.ask(&Req::get(&format!("updates/{}", mote.id)).block2(1, 6));
    assert_eq!(device_state(&fx, "d1"), Some(State::Downloaded));
    fx.ask(&Req::get("updates?pid=MOTE&type=APP&version=1.1.31&ep=d1"));
    assert_eq!(device_state(&fx, "d1"), Some(State::Updated));
}

#[test]
fn the_fast_paths_last_block_is_noted_by_the_caller() {
    let mut fx = Fx::new();
    let mote = fx.img(MOTE_NEW);
    fx.ask(&lookup("d1"));
    fx.ask(&Req::get(&format!("updates/{}", mote.id)).block2(0, 6));
    let bytes = Req::get(&format!("updates/{}", mote.id))
        .block2(1, 6)
        .bytes();
    let sent = match fx.svc.handle_block(peer(A), T0, &bytes, &mut fx.out) {
        Some(Action::Reply {
            outcome: Outcome::Block(t),
            ..
        }) => BlockSent::of(&t),
        other => panic!("{other:?}"),
    };
    assert!(sent.last);
    fx.svc.note_block(peer(A), sent, T0);
    assert_eq!(device_state(&fx, "d1"), Some(State::Downloaded));
}

#[test]
fn status_is_local_only_and_comes_in_three_formats() {
    let mut fx = Fx::new();
    fx.ask(&lookup("d1"));
    let reply = fx.ask(&Req::get("status"));
    assert!(assert_error(&reply, ResponseType::Forbidden).contains("--status-from"));
    let text = status(&mut fx, "status", None);
    let text = String::from_utf8(parse(&text).payload.to_vec()).unwrap();
    assert!(text.contains(MOTE_NEW), "{text}");
    let json = status(&mut fx, "status", Some(50));
    assert_eq!(parse(&json).content_format, Some(50));
    assert!(parse(&json).payload.starts_with(b"{\"devices\":1"));
    let cbor = status(&mut fx, "status?ep=d1", Some(60));
    assert_eq!(parse(&cbor).content_format, Some(60));
    let text = status(&mut fx, "status?ep=d1", None);
    assert!(parse(&text).payload.starts_with(b"device d1 state offered"));
    assert_error(
        &status(&mut fx, "status?ep=nobody", None),
        ResponseType::NotFound,
    );
    assert_error(
        &status(&mut fx, "status", Some(40)),
        ResponseType::NotAcceptable,
    );
    // Opened to a prefix.
    let mut limits = Limits::default();
    limits.status_from[0] = Some(Prefix {
        ip: peer(A).ip,
        len: 120,
    });
    let mut fx = Fx::with(limits, false);
    let reply = fx.ask(&Req::get("status"));
    assert_eq!(class(&reply), MessageClass::Response(ResponseType::Content));
}

/// `req` over coaps from `from`, authenticated with `rights`: the reply.
fn over_coaps(fx: &mut Fx, from: Peer, rights: &Authorization, req: &Req) -> Vec<u8> {
    let bytes = req.bytes();
    let request = Request::new(from, T0, &bytes).authorized(rights);
    match fx.svc.handle_request(&request, &mut fx.out) {
        Action::Reply { len, .. } => fx.out[..len].to_vec(),
        Action::Drop(reason) => panic!("no reply ({reason:?}) to {req:?}"),
    }
}

#[test]
fn status_over_coaps_follows_the_identity_not_the_address() {
    let operator = Authorization::only_pids(Vec::<&[u8]>::new()).with_status();
    let device = Authorization::any_pid();
    // An opened prefix opens plain CoAP only.
    let mut limits = Limits::default();
    limits.status_from[0] = Some(Prefix {
        ip: peer(A).ip,
        len: 128,
    });
    let mut fx = Fx::with(limits, false);
    fx.ask(&lookup("d1"));
    for from in [peer(A), peer(B), loopback()] {
        let reply = over_coaps(&mut fx, from, &operator, &Req::get("status"));
        let text = String::from_utf8(parse(&reply).payload.to_vec()).unwrap();
        assert!(text.contains(MOTE_NEW), "{from:?}: {text}");
        let reply = over_coaps(&mut fx, from, &operator, &Req::get("status?ep=d1"));
        assert!(parse(&reply)
            .payload
            .starts_with(b"device d1 state offered"));
        // Without the right, neither loopback (a tunnel's end) nor the
        // opened prefix lets a coaps peer in.
        let reply = over_coaps(&mut fx, from, &device, &Req::get("status?ep=d1"));
        let why = assert_error(&reply, ResponseType::Forbidden);
        assert!(why.contains("@status"), "{why}");
    }
    // The same addresses on plain CoAP: by address, as before.
    assert_eq!(
        class(&fx.ask_from(A, T0, &Req::get("status"))),
        MessageClass::Response(ResponseType::Content)
    );
    assert_error(
        &fx.ask_from(B, T0, &Req::get("status")),
        ResponseType::Forbidden,
    );
    // The operator's right is to read, not to fetch.
    let by_id = Req::get(&format!("updates/{}", fx.img(MOTE_NEW).id));
    assert_error(
        &over_coaps(&mut fx, peer(B), &operator, &by_id),
        ResponseType::Forbidden,
    );
}

#[test]
fn an_operator_observing_status_over_coaps_from_afar_is_notified() {
    let operator = Authorization::only_pids(Vec::<&[u8]>::new()).with_status();
    let mut fx = Fx::new();
    let register = Req::get("status").uint(CoapOption::Observe.into(), 0);
    let reply = over_coaps(&mut fx, peer(B), &operator, &register);
    assert!(parse(&reply).observe.is_some(), "not registered");
    fx.ask(&lookup("d1"));
    fx.svc.notice_fleet_changes();
    let n = fx
        .svc
        .poll_notification(T0 + 1, &mut fx.out)
        .expect("a notification");
    assert_eq!(n.peer, peer(B));
    // The server checks the session's right again before sending it.
    assert!(n.of_status);
    let text = String::from_utf8(parse(&fx.out[..n.len]).payload.to_vec()).unwrap();
    assert!(text.starts_with("devices known: 1"), "{text}");
    assert!(!n.last);
}

#[test]
fn local_sources_are_loopback_and_link_local() {
    let v4 = |a, b, c, d| {
        core::net::Ipv4Addr::new(a, b, c, d)
            .to_ipv6_mapped()
            .octets()
    };
    assert!(is_local_source(&v4(127, 0, 0, 1)));
    assert!(is_local_source(&v4(127, 9, 9, 9)));
    assert!(is_local_source(&v4(169, 254, 1, 2)));
    assert!(!is_local_source(&v4(192, 0, 2, 1)));
    assert!(is_local_source(&core::net::Ipv6Addr::LOCALHOST.octets()));
    assert!(is_local_source(
        &"fe80::1".parse::<core::net::Ipv6Addr>().unwrap().octets()
    ));
    assert!(!is_local_source(
        &"fd00::1".parse::<core::net::Ipv6Addr>().unwrap().octets()
    ));
}

/// The MOTE 1.1.31 image's patch from 1.0.0, in `format`.
fn patch_files(format: &str) -> FleetFiles {
    let name = format!("{MOTE_NEW}.from-1.0.0.{format}");
    let bytes = crate::catalog::ImageBytes::from_vec(b"PATCH-BYTES".to_vec()).unwrap();
    let patch = crate::fleet::Patch::new(&name, std::sync::Arc::new(bytes), None).unwrap();
    FleetFiles::new(Vec::new(), vec![patch])
}

#[test]
fn a_delta_goes_only_to_its_base_version_when_asked_for() {
    let mut fx = Fx::new();
    let mote = fx.img(MOTE_NEW);
    fx.svc.replace_fleet_files(patch_files("detools"));
    let patch_id = crate::hash::fnv1a32(format!("{MOTE_NEW}.from-1.0.0.detools").as_bytes());
    let asks = |version: &str, delta: &str| {
        Req::get(&format!(
            "updates?pid=MOTE&type=APP&version={version}{delta}"
        ))
    };
    let reply = fx.ask(&asks("1.0.0", "&delta=detools"));
    let text = String::from_utf8(parse(&reply).payload.to_vec()).unwrap();
    assert_eq!(text, format!("{patch_id:08x};delta=detools;base=1.0.0"));
    // Not asked, another format, another base: the full image.
    for (version, delta) in [
        ("1.0.0", ""),
        ("1.0.0", "&delta=bsdiff"),
        ("1.0.1", "&delta=detools"),
    ] {
        let reply = fx.ask(&asks(version, delta));
        assert_eq!(
            parse(&reply).payload,
            mote.id.as_bytes(),
            "{version}{delta}"
        );
    }
    assert_error(
        &fx.ask(&asks("1.0.0", "&delta=Bad!")),
        ResponseType::BadRequest,
    );
    // The patch is served by its id, and listed with its base.
    let reply = fx.ask(&Req::get(&format!("updates/{patch_id:08x}")));
    assert_eq!(parse(&reply).payload, b"PATCH-BYTES");
    let reply = fx.ask(&Req::get(".well-known/core?rt=fw.patch"));
    let links = String::from_utf8(parse(&reply).payload.to_vec()).unwrap();
    assert!(
        links.contains(&format!(
            "</updates/{patch_id:08x}>;rt=\"fw.patch\";ct=42;sz=11;"
        )) && links.contains("base=\"1.0.0\""),
        "{links}"
    );
}

#[test]
fn status_is_observable_and_notified_once_per_period_after_a_change() {
    let mut fx = Fx::new();
    let register = Req::get("status").uint(CoapOption::Observe.into(), 0);
    let reply = fx.handle(loopback(), T0, &register.bytes()).unwrap();
    assert!(parse(&reply).observe.is_some(), "not registered");
    // Nothing changed: nothing owed.
    fx.svc.notice_fleet_changes();
    assert!(fx.svc.poll_notification(T0, &mut fx.out).is_none());
    // Two lookups change the fleet; one comparison, one notification.
    fx.ask(&lookup("d1"));
    fx.ask(&lookup("d2"));
    assert!(
        fx.svc.poll_notification(T0, &mut fx.out).is_none(),
        "before the period"
    );
    fx.svc.notice_fleet_changes();
    let n = fx
        .svc
        .poll_notification(T0 + 1, &mut fx.out)
        .expect("a notification");
    let text = String::from_utf8(parse(&fx.out[..n.len]).payload.to_vec()).unwrap();
    assert!(text.starts_with("devices known: 2"), "{text}");
    assert!(fx.svc.poll_notification(T0 + 1, &mut fx.out).is_none());
}

#[test]
fn over_coaps_the_identity_names_the_device_whatever_ep_says() {
    let mut fx = Fx::new();
    let device = Authorization::any_pid();
    let report =
        Req::get("updates/report?ep=d2&pid=MOTE&type=APP&target=1.1.31&result=8").code(POST);
    let bytes = report.bytes();
    let request = Request::new(peer(A), T0, &bytes)
        .authorized(&device)
        .identified(b"d1");
    let Action::Reply { len, .. } = fx.svc.handle_request(&request, &mut fx.out) else {
        panic!("no reply");
    };
    assert_eq!(
        class(&fx.out[..len]),
        MessageClass::Response(ResponseType::Changed)
    );
    // Filed under the authenticated name; d2 is untouched.
    assert_eq!(device_state(&fx, "d1"), Some(State::Failed));
    assert_eq!(device_state(&fx, "d2"), None);
}
