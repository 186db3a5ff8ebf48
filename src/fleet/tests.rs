//! The fleet's state machine, eligibility and auto-pause, without sockets.

use super::*;
use crate::catalog::Catalog;

fn name(text: &str) -> DeviceName {
    DeviceName::parse(text.as_bytes()).unwrap()
}

fn catalog() -> Catalog {
    Catalog::from_files(vec![("OTA-X_1_0_2_APP.fmu".into(), vec![7u8; 3000])])
        .unwrap()
        .0
}

fn with_policy(text: &str) -> (Fleet, FleetFiles) {
    let mut fleet = Fleet::new(100, [1, 2]);
    let file = PolicyFile::new("OTA-X_1_0_2_APP.fmu.rollout", text.as_bytes(), None, None).unwrap();
    let files = FleetFiles::new(vec![file], Vec::new());
    fleet.files_changed(&files);
    (fleet, files)
}

fn report(fleet: &mut Fleet, files: &FleetFiles, who: &str, target: Target, result: u8) {
    fleet.apply(
        files,
        Note::Report {
            name: name(who),
            running: None,
            target: Some(target),
            state: None,
            result: Some(result),
        },
        0,
    );
}

#[test]
fn names_follow_the_grammar() {
    assert!(DeviceName::parse(b"node-1.lab:a_b").is_some());
    assert!(DeviceName::parse(b"").is_none());
    assert!(DeviceName::parse(&[b'a'; 64]).is_none());
    assert!(DeviceName::parse(b"a b").is_none());
    let v4 = core::net::Ipv4Addr::new(192, 0, 2, 1)
        .to_ipv6_mapped()
        .octets();
    assert_eq!(DeviceName::from_ip(v4).as_str(), "192.0.2.1");
    assert_eq!(
        DeviceName::from_ip(core::net::Ipv6Addr::LOCALHOST.octets()).as_str(),
        "::1"
    );
    assert_eq!(DeviceName::from_identity(b"node 1").as_str().len(), 12);
}

#[test]
fn inference_from_blocks_and_lookups() {
    let catalog = catalog();
    let image = &catalog.images()[0];
    let t = Target::of(image);
    let mut fleet = Fleet::new(100, [1, 2]);
    let none = FleetFiles::default();
    let d = name("d1");
    let lookup = |fleet: &mut Fleet, running| {
        fleet.apply(
            &none,
            Note::Lookup {
                name: d,
                ip: [0; 16],
                named: true,
                running,
                offered: (running < t.version).then_some(t),
            },
            0,
        )
    };
    let block = |fleet: &mut Fleet, first, last| {
        fleet.apply(
            &none,
            Note::Block {
                name: d,
                target: t,
                first,
                last,
            },
            0,
        )
    };
    lookup(&mut fleet, 0x0100_0001);
    assert_eq!(fleet.device(&d).unwrap().state, State::Offered);
    block(&mut fleet, true, false);
    assert_eq!(fleet.device(&d).unwrap().state, State::Downloading);
    block(&mut fleet, false, true);
    assert_eq!(fleet.device(&d).unwrap().state, State::Downloaded);
    // Still old after one download: not failed yet.
    lookup(&mut fleet, 0x0100_0001);
    assert_eq!(fleet.device(&d).unwrap().state, State::Downloaded);
    block(&mut fleet, true, false);
    block(&mut fleet, false, true);
    lookup(&mut fleet, 0x0100_0001);
    let dev = *fleet.device(&d).unwrap();
    assert_eq!(
        (dev.state, dev.result, dev.inferred),
        (State::Failed, RESULT_FAILED, true)
    );
    // Then it makes it after all.
    lookup(&mut fleet, 0x0100_0002);
    assert_eq!(fleet.device(&d).unwrap().state, State::Updated);
    assert_eq!(fleet.take_lost_events(), 0);
    assert!(std::iter::from_fn(|| fleet.next_event()).count() >= 6);
}

#[test]
fn failures_pause_and_an_edit_resumes() {
    let catalog = catalog();
    let image = &catalog.images()[0];
    let t = Target::of(image);
    let (mut fleet, files) = with_policy("max-failures = 30%\nmin-outcomes = 5\n");
    assert!(fleet.offers(&files, &name("x"), image));
    for (who, result) in [("a", 1), ("b", 1), ("c", 8), ("d", 5)] {
        report(&mut fleet, &files, who, t, result);
        assert_eq!(fleet.pause(&files, image.id), None, "after {who}");
    }
    report(&mut fleet, &files, "e", t, 2);
    assert_eq!(
        fleet.pause(&files, image.id),
        Some(Pause::Auto {
            successes: 2,
            failures: 3
        })
    );
    assert!(!fleet.offers(&files, &name("x"), image));
    // A repeated failure report of the same device counts once.
    report(&mut fleet, &files, "e", t, 2);
    assert_eq!(fleet.rollouts().next().unwrap().1.failures, 3);
    let file = PolicyFile::new(
        "OTA-X_1_0_2_APP.fmu.rollout",
        b"max-failures = 30%\nmin-outcomes = 5\npause = no\n",
        None,
        None,
    )
    .unwrap();
    let files = FleetFiles::new(vec![file], Vec::new());
    fleet.files_changed(&files);
    assert_eq!(fleet.pause(&files, image.id), None);
    assert!(fleet.offers(&files, &name("x"), image));
    assert!(std::iter::from_fn(|| fleet.next_event()).any(|e| matches!(e, Event::Resumed { .. })));
}

#[test]
fn paused_offers_only_begun_downloads_and_canaries_beat_share() {
    let catalog = catalog();
    let image = &catalog.images()[0];
    let (fleet, files) = with_policy("percent = 0\ncanary = c1\n");
    assert!(fleet.offers(&files, &name("c1"), image));
    assert!(!fleet.offers(&files, &name("c2"), image));
    let (mut fleet, files) = with_policy("pause = yes\ncanary = c1\n");
    assert!(!fleet.offers(&files, &name("c1"), image));
    fleet.apply(
        &files,
        Note::Block {
            name: name("c1"),
            target: Target::of(image),
            first: true,
            last: false,
        },
        0,
    );
    assert!(fleet.offers(&files, &name("c1"), image));
}

#[test]
fn a_refused_policy_keeps_the_last_good_one_or_pauses() {
    let good = PolicyFile::new("OTA-X_1_0_2_APP.fmu.rollout", b"percent = 10", None, None).unwrap();
    let bad = PolicyFile::new(
        "OTA-X_1_0_2_APP.fmu.rollout",
        b"percnt = 50",
        None,
        Some(&good),
    )
    .unwrap();
    assert_eq!(bad.policy.share, 1000);
    assert_eq!(bad.error.as_ref().unwrap().line, 1);
    assert!(!bad.invalid);
    let first = PolicyFile::new("OTA-X_1_0_2_APP.fmu.rollout", b"percnt = 50", None, None).unwrap();
    assert!(first.invalid && first.policy.pause);
}

#[test]
fn the_table_is_bounded() {
    let mut fleet = Fleet::new(50, [1, 2]);
    for i in 0..1000 {
        fleet.apply(
            &FleetFiles::default(),
            Note::Lookup {
                name: name(&format!("n{i}")),
                ip: [0; 16],
                named: false,
                running: 1,
                offered: None,
            },
            i,
        );
        while fleet.next_event().is_some() {}
    }
    assert!(fleet.device_count() <= 50);
    assert!(fleet.device(&name("n999")).is_some());
}

#[test]
fn status_formats() {
    let catalog = catalog();
    let image = &catalog.images()[0];
    let (mut fleet, files) = with_policy("percent = 12.5\ncanary = c1");
    report(&mut fleet, &files, "d1", Target::of(image), 1);
    let text = String::from_utf8(fleet.status(&files, &catalog, StatusFormat::Text)).unwrap();
    assert!(
        text.contains("12.5% of devices, canaries c1; running"),
        "{text}"
    );
    assert!(text.contains("updated 1"), "{text}");
    let json = String::from_utf8(fleet.status(&files, &catalog, StatusFormat::Json)).unwrap();
    assert!(
        json.contains("\"percent\":12.5") && json.contains("\"updated\":1"),
        "{json}"
    );
    let cbor = fleet.status(&files, &catalog, StatusFormat::Cbor);
    assert_eq!(cbor[0], 0xa2);
    let dev = String::from_utf8(
        fleet
            .device_status(&name("d1"), StatusFormat::Text)
            .unwrap(),
    )
    .unwrap();
    assert!(
        dev.starts_with("device d1 state updated result 1 "),
        "{dev}"
    );
    assert!(fleet
        .device_status(&name("nobody"), StatusFormat::Text)
        .is_none());
}

#[test]
fn an_edit_keeps_the_counts_of_a_running_rollout() {
    let catalog = catalog();
    let t = Target::of(&catalog.images()[0]);
    let (mut fleet, files) = with_policy("percent = 0\ncanary = c1\n");
    report(&mut fleet, &files, "c1", t, 1);
    let (_, raised) = with_policy("percent = 10\ncanary = c1\n");
    fleet.files_changed(&raised);
    report(&mut fleet, &raised, "d1", t, 8);
    let counts = *fleet.rollouts().next().unwrap().1;
    assert_eq!((counts.successes, counts.failures), (1, 1));
}
