//! The catalog's unit tests: loading, lookups, links, refreshes.

use super::scan::{scan_entry, Scan};
use super::*;
use crate::firmware::{version, TYPE_APP};
use crate::snapshot::{settle_wait, stamp};
use crate::testkit::TempDir;
use coap_lite::link_format::LINK_ATTR_RESOURCE_TYPE;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

fn catalog(files: &[(&str, &[u8])]) -> Catalog {
    let files = files
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect();
    let (catalog, skipped) = Catalog::from_files(files).expect("catalog builds");
    assert!(skipped.is_empty(), "{skipped:?}");
    catalog
}

// ---- versions, ids, entity tags ----

#[test]
fn version_is_major_minor_build_packed() {
    assert_eq!(version(1, 1, 31), 0x0101_001F);
    assert_eq!(version(255, 255, 65535), 0xFFFF_FFFF);
    assert_eq!(version(0, 0, 0), 0);
}

#[test]
fn version_text_is_dotted_decimal() {
    assert_eq!(VersionText(0x0101_001F).to_string(), "1.1.31");
    assert_eq!(VersionText(u32::MAX).to_string(), "255.255.65535");
}

#[test]
fn image_ids_are_8_lowercase_hex_digits() {
    assert_eq!(hex8(0xe40c_292c), *b"e40c292c");
    assert_eq!(hex8(0x0000_00ff), *b"000000ff");
}

#[test]
fn image_id_is_fnv1a32_of_file_name_and_etag_fnv1a64_of_content() {
    let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"a")]);
    let image = &c.images()[0];
    assert_eq!(image.id, 0x7b42_38ed);
    assert_eq!(image.id_str(), "7b4238ed");
    assert_eq!(image.etag, 0xaf63_dc4c_8601_ec8c_u64.to_be_bytes());
    assert_eq!(image.version, version(1, 0, 0));
}

#[test]
fn by_id_hex_takes_exactly_8_lowercase_hex_digits() {
    let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"a")]);
    assert_eq!(
        c.by_id_hex(b"7b4238ed").map(|i| i.file_name.as_str()),
        Some("OTA-A_1_0_0_APP.fmu")
    );
    assert!(c.by_id_hex(b"7B4238ED").is_none());
    assert!(c.by_id_hex(b"7b4238e").is_none());
    assert!(c.by_id_hex(b"7b4238ed0").is_none());
    assert!(c.by_id_hex(b"+b4238ed").is_none());
    assert!(c.by_id_hex(b"00000000").is_none());
    assert!(c.by_id_hex(b"").is_none());
}

// ---- lookups and collisions ----

#[test]
fn newest_picks_highest_version_per_pid_and_type() {
    let c = catalog(&[
        ("M_1_0_9_APP.fmu", b"1"),
        ("M_1_2_0_APP.fmu", b"2"),
        ("M_1_1_500_APP.fmu", b"3"),
        ("M_9_0_0_4.fmu", b"4"),
        ("N_5_0_0_APP.fmu", b"5"),
    ]);
    let newest = |pid: &[u8], t| c.newest(pid, t).map(|i| i.file_name.as_str());
    assert_eq!(newest(b"M", TYPE_APP), Some("M_1_2_0_APP.fmu"));
    assert_eq!(newest(b"M", 4), Some("M_9_0_0_4.fmu"));
    assert_eq!(newest(b"N", TYPE_APP), Some("N_5_0_0_APP.fmu"));
    assert_eq!(newest(b"N", 4), None);
    assert_eq!(newest(b"m", TYPE_APP), None);
    assert_eq!(newest(b"", TYPE_APP), None);
    assert_eq!(newest(&[b'M'; 300], TYPE_APP), None);
}

#[test]
fn candidate_only_when_strictly_newer_and_same_type() {
    let c = catalog(&[("M_1_2_0_APP.fmu", b"1"), ("M_9_0_0_4.fmu", b"2")]);
    let cand = |t, v| c.candidate(b"M", t, v).map(|i| i.file_name.as_str());
    assert_eq!(
        cand(TYPE_APP, version(1, 1, 65535)),
        Some("M_1_2_0_APP.fmu")
    );
    assert_eq!(cand(TYPE_APP, version(1, 2, 0)), None);
    assert_eq!(cand(TYPE_APP, version(2, 0, 0)), None);
    // The type-4 image is newer, but not for APP devices.
    assert_eq!(cand(TYPE_APP, version(1, 2, 0)), None);
    assert_eq!(cand(4, version(1, 2, 0)), Some("M_9_0_0_4.fmu"));
}

#[test]
fn duplicate_version_is_an_error_naming_both_files_in_sorted_order() {
    // Same PID, TYPE (APP = 3) and version, different names (leading zeros, CRC).
    let files = vec![
        ("M_1_0_0_3.fmu".to_string(), b"x".to_vec()),
        ("M_01_0_0_APP_0x00000000.fmu".to_string(), b"y".to_vec()),
    ];
    match Catalog::from_files(files) {
        Err(Error::DuplicateVersion { first, second }) => {
            assert_eq!(first, "M_01_0_0_APP_0x00000000.fmu");
            assert_eq!(second, "M_1_0_0_3.fmu");
            let text = Error::DuplicateVersion { first, second }.to_string();
            assert!(text.contains("M_01_0_0_APP_0x00000000.fmu"), "{text}");
            assert!(text.contains("M_1_0_0_3.fmu"), "{text}");
        }
        other => panic!("expected DuplicateVersion, got {other:?}"),
    }
}

#[test]
fn same_file_name_twice_is_a_duplicate_id() {
    let files = vec![
        ("M_1_0_0_APP.fmu".to_string(), b"x".to_vec()),
        ("M_1_0_0_APP.fmu".to_string(), b"y".to_vec()),
    ];
    assert!(matches!(
        Catalog::from_files(files),
        Err(Error::DuplicateId { id, .. }) if id == fnv1a32(b"M_1_0_0_APP.fmu")
    ));
}

#[test]
fn from_files_skips_bad_names_sorted() {
    let files = vec![
        ("z.bin".to_string(), vec![]),
        ("M_1_0_0_APP.fmu".to_string(), vec![1]),
        ("M_x_0_0_APP.fmu".to_string(), vec![]),
    ];
    let (c, skipped) = Catalog::from_files(files).unwrap();
    assert_eq!(c.images().len(), 1);
    assert_eq!(
        skipped,
        vec![
            Skipped {
                file: "M_x_0_0_APP.fmu".into(),
                reason: SkipReason::BadName(NameError::Major)
            },
            Skipped {
                file: "z.bin".into(),
                reason: SkipReason::BadName(NameError::Extension)
            },
        ]
    );
}

#[test]
fn empty_catalog_is_allowed() {
    let (c, skipped) = Catalog::from_files(vec![]).unwrap();
    assert!(c.images().is_empty() && skipped.is_empty());
    assert_eq!(c.total_bytes(), 0);
    assert_eq!(c.core_body(), br#"</updates>;rt="fw.updates""#);
    assert!(c.newest(b"M", TYPE_APP).is_none());
}

// ---- discovery (RFC 6690) ----

#[test]
fn core_body_lists_updates_then_images_in_name_order() {
    // Given in reverse order: the body follows file-name order regardless.
    let c = catalog(&[
        ("OTA-A_1_0_1_APP.fmu", b""),
        ("OTA-A_1_0_0_APP.fmu", b"abc"),
    ]);
    let expected = concat!(
        r#"</updates>;rt="fw.updates","#,
        r#"</updates/7b4238ed>;rt="fw.image";ct=42;sz=3;title="OTA-A_1_0_0_APP.fmu","#,
        r#"</updates/1d734daa>;rt="fw.image";ct=42;sz=0;title="OTA-A_1_0_1_APP.fmu""#,
    );
    assert_eq!(std::str::from_utf8(&c.core_body()), Ok(expected));
    assert_eq!(c.core_etag(), fnv1a64(expected.as_bytes()).to_be_bytes());
    assert_eq!(c.core_links().len(), 3);
    assert_eq!(
        c.core_links()[1].text,
        c.core_body()[27..27 + c.core_links()[1].text.len()]
    );
    assert_eq!(c.total_bytes(), 3);
}

#[test]
fn title_quotes_are_escaped_in_the_body_and_matched_unescaped() {
    let c = catalog(&[(r#"a"b_1_0_0_APP.fmu"#, b"")]);
    let link = &c.core_links()[1];
    assert!(link.text.ends_with(br#";title="a\"b_1_0_0_APP.fmu""#));
    assert!(link.matches(br#"title=a"b*"#));
}

#[test]
fn link_filter_rt_exact_and_prefix() {
    let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"abc")]);
    let [updates, image] = c.core_links() else {
        panic!("two links expected")
    };
    assert!(image.matches(b"rt=fw.image"));
    assert!(!updates.matches(b"rt=fw.image"));
    assert!(updates.matches(b"rt=fw.updates"));
    assert!(image.matches(b"rt=fw.*") && updates.matches(b"rt=fw.*"));
    assert!(image.matches(b"rt=*"));
    assert!(!image.matches(b"rt=fw"));
    assert!(!image.matches(b"rt=fw.image2"));
}

#[test]
fn link_filter_title_href_sz_ct() {
    let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"abc")]);
    let [updates, image] = c.core_links() else {
        panic!("two links expected")
    };
    assert!(image.matches(b"title=OTA-*"));
    assert!(image.matches(b"title=OTA-A_1_0_0_APP.fmu"));
    assert!(!image.matches(b"title=OTA-"));
    assert!(!image.matches(b"title=XOTA-*"));
    assert!(image.matches(b"href=/updates/*"));
    assert!(image.matches(b"href=/updates/7b4238ed"));
    assert!(!updates.matches(b"href=/updates/*"));
    assert!(updates.matches(b"href=/updates"));
    assert!(image.matches(b"sz=3"));
    assert!(!image.matches(b"sz=03"));
    assert!(image.matches(b"ct=42"));
    assert!(image.matches(b"RT=fw.image"));
}

#[test]
fn link_filter_without_equals_or_missing_attribute_does_not_match() {
    let c = catalog(&[("OTA-A_1_0_0_APP.fmu", b"abc")]);
    let [updates, image] = c.core_links() else {
        panic!("two links expected")
    };
    assert!(!image.matches(b"rt"));
    assert!(!image.matches(b""));
    assert!(!image.matches(b"=fw.image"));
    assert!(!image.matches(b"if=*"));
    assert!(!updates.matches(b"title=*"));
    assert!(!updates.matches(b"sz=3"));
    assert!(!image.matches(b"rt="));
}

#[test]
fn link_filter_any_space_separated_rt_token_matches() {
    let link = CoreLink::new(
        "/x",
        vec![(
            LINK_ATTR_RESOURCE_TYPE,
            AttrValue::Quoted("core.a fw.image".into()),
        )],
    );
    assert_eq!(link.text, br#"</x>;rt="core.a fw.image""#);
    assert!(link.matches(b"rt=fw.image"));
    assert!(link.matches(b"rt=core.*"));
    assert!(!link.matches(b"rt=core.a fw*"));
}

// ---- Catalog::load on a real directory ----

fn reason_of<'a>(report: &'a LoadReport, file: &str) -> Option<&'a SkipReason> {
    report
        .skipped
        .iter()
        .find(|s| s.file == file)
        .map(|s| &s.reason)
}

#[test]
fn load_of_missing_directory_is_read_dir_error() {
    let dir = TempDir::new("catalog-test");
    let missing = dir.path().join("nope");
    match Catalog::load(&missing) {
        Err(e @ Error::ReadDir { .. }) => assert!(e.to_string().contains("nope"), "{e}"),
        other => panic!("expected ReadDir, got {other:?}"),
    }
}

#[test]
fn load_of_empty_directory_gives_empty_catalog() {
    let dir = TempDir::new("catalog-test");
    let report = Catalog::load(dir.path()).unwrap();
    assert!(report.catalog.images().is_empty());
    assert!(report.skipped.is_empty() && report.ignored.is_empty());
}

#[cfg(unix)]
#[test]
fn load_applies_every_directory_rule() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{symlink, PermissionsExt};

    let dir = TempDir::new("catalog-test");
    let target_dir = TempDir::new("catalog-test");
    dir.write("A_1_0_0_APP.fmu", b"abc");
    dir.write("Empty_1_0_0_APP.fmu", b"");
    dir.write(".Hidden_1_0_0_APP.fmu", b"h");
    dir.write("notes.txt", b"t");
    dir.write("Bad_x_0_0_APP.fmu", b"b");
    fs::create_dir(dir.path().join("Sub_1_0_0_APP.fmu")).unwrap();
    let real = target_dir.write("Real_1_0_0_APP.fmu", b"link");
    symlink(&real, dir.path().join("Linked_1_0_0_APP.fmu")).unwrap();
    symlink(target_dir.path(), dir.path().join("x_1_1_1_APP.fmu")).unwrap();
    symlink(
        dir.path().join("missing"),
        dir.path().join("Dangling_1_0_0_APP.fmu"),
    )
    .unwrap();
    let locked = dir.write("Locked_1_0_0_APP.fmu", b"l");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let locked_is_readable = fs::read(&locked).is_ok(); // true when running as root
    let non_utf8 = OsStr::from_bytes(b"Bad\xff_1_0_0_APP.fmu");
    // Some file systems refuse such names; then there is nothing to test.
    let made_non_utf8 = fs::write(dir.path().join(non_utf8), b"n").is_ok();

    let report = Catalog::load(dir.path()).unwrap();

    let loaded: Vec<&str> = report
        .catalog
        .images()
        .iter()
        .map(|i| i.file_name.as_str())
        .collect();
    let mut expected = vec![
        "A_1_0_0_APP.fmu",
        "Empty_1_0_0_APP.fmu",
        "Linked_1_0_0_APP.fmu",
    ];
    if locked_is_readable {
        expected.push("Locked_1_0_0_APP.fmu");
    }
    assert_eq!(loaded, expected);
    let linked = report.catalog.newest(b"Linked", TYPE_APP).unwrap();
    assert_eq!(linked.bytes[..], b"link"[..]);
    assert!(report
        .catalog
        .newest(b"Empty", TYPE_APP)
        .unwrap()
        .bytes
        .is_empty());

    assert_eq!(
        report.ignored,
        vec![".Hidden_1_0_0_APP.fmu", "Sub_1_0_0_APP.fmu", "notes.txt"]
    );
    assert_eq!(
        reason_of(&report, "Bad_x_0_0_APP.fmu"),
        Some(&SkipReason::BadName(NameError::Major))
    );
    assert_eq!(
        reason_of(&report, "x_1_1_1_APP.fmu"),
        Some(&SkipReason::NotRegularFile)
    );
    assert_eq!(
        reason_of(&report, "Dangling_1_0_0_APP.fmu"),
        Some(&SkipReason::NotRegularFile)
    );
    if !locked_is_readable {
        assert!(matches!(
            reason_of(&report, "Locked_1_0_0_APP.fmu"),
            Some(SkipReason::Unreadable(_))
        ));
    }
    if made_non_utf8 {
        assert_eq!(
            reason_of(&report, "Bad\u{fffd}_1_0_0_APP.fmu"),
            Some(&SkipReason::NotUtf8)
        );
    }
    let expected_skips = 3 + usize::from(!locked_is_readable) + usize::from(made_non_utf8);
    assert_eq!(report.skipped.len(), expected_skips, "{:?}", report.skipped);
    let mut sorted = report.skipped.clone();
    sorted.sort_by(|a, b| a.file.cmp(&b.file));
    assert_eq!(report.skipped, sorted);
}

#[test]
fn load_skips_file_larger_than_max_image_len_without_reading_it() {
    let dir = TempDir::new("catalog-test");
    let path = dir.path().join("Huge_1_0_0_APP.fmu");
    let file = File::create(&path).unwrap();
    // A sparse file: no data blocks are written. Where the file system
    // refuses one the test says so, and fails under CI rather than
    // passing without having checked anything.
    if let Err(e) = file.set_len(MAX_IMAGE_LEN + 1) {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "cannot make a sparse file of 4 GiB + 1 under CI: {e}"
        );
        eprintln!("SKIPPED: this file system refuses a sparse file of 4 GiB + 1: {e}");
        return;
    }
    drop(file);
    let report = Catalog::load(dir.path()).unwrap();
    assert!(report.catalog.images().is_empty());
    assert_eq!(
        reason_of(&report, "Huge_1_0_0_APP.fmu"),
        Some(&SkipReason::TooLarge(MAX_IMAGE_LEN + 1))
    );
}

#[test]
fn file_that_vanishes_between_listing_and_reading_is_skipped_as_vanished() {
    let dir = TempDir::new("catalog-test");
    dir.write("GONE_1_0_0_APP.fmu", b"soon gone");
    let entry = fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap();
    // Listed, then deleted before it is read: the race load() can meet.
    fs::remove_file(entry.path()).unwrap();
    match scan_entry(&entry) {
        Scan::Skipped(reason) => assert_eq!(reason, SkipReason::Vanished),
        Scan::Found(_) => panic!("a vanished file was loaded"),
        Scan::Ignored => panic!("a vanished image was ignored, not reported"),
    }
}

#[test]
fn images_are_held_byte_exact_in_own_pages_or_on_the_heap_and_shared_by_refreshes() {
    let page = crate::pages::page_size();
    let dir = TempDir::new("catalog-test");
    let big: Vec<u8> = (0..16 * page).map(|i| (i % 251) as u8).collect();
    let odd: Vec<u8> = (0..16 * page - page / 2).map(|i| (i % 241) as u8).collect();
    write_at(&dir, "BIG_1_0_0_APP.fmu", &big, at(0));
    write_at(&dir, "ODD_1_0_0_APP.fmu", &odd, at(0));
    write_at(&dir, "NIL_1_0_0_APP.fmu", b"", at(0));
    let current = loaded(&dir);
    let held = |catalog: &Catalog, file: &str| image(catalog, file).bytes.clone();
    assert!(held(&current, "BIG_1_0_0_APP.fmu").in_own_pages());
    assert_eq!(held(&current, "BIG_1_0_0_APP.fmu")[..], big[..]);
    assert!(!held(&current, "ODD_1_0_0_APP.fmu").in_own_pages());
    assert_eq!(held(&current, "ODD_1_0_0_APP.fmu")[..], odd[..]);
    assert!(held(&current, "NIL_1_0_0_APP.fmu").is_empty());
    assert_eq!(
        image(&current, "BIG_1_0_0_APP.fmu").etag,
        fnv1a64(&big).to_be_bytes()
    );

    // A new image in pages of its own; the unchanged one keeps its pages, shared.
    let new: Vec<u8> = (0..16 * page).map(|i| (i % 239) as u8).collect();
    write_at(&dir, "NEW_1_0_0_APP.fmu", &new, at(10));
    let next = current.refresh(dir.path(), at(100), SETTLE).next.unwrap();
    assert!(Arc::ptr_eq(
        &held(&current, "BIG_1_0_0_APP.fmu"),
        &held(&next, "BIG_1_0_0_APP.fmu")
    ));
    assert!(held(&next, "NEW_1_0_0_APP.fmu").in_own_pages());
    assert_eq!(held(&next, "NEW_1_0_0_APP.fmu")[..], new[..]);

    // Replaced: the next snapshot has the new bytes, the old one keeps its own until
    // it is dropped, and the other images' pages are still shared.
    write_at(&dir, "BIG_1_0_0_APP.fmu", &new, at(20));
    let last = next.refresh(dir.path(), at(100), SETTLE).next.unwrap();
    assert_eq!(held(&last, "BIG_1_0_0_APP.fmu")[..], new[..]);
    assert_eq!(held(&next, "BIG_1_0_0_APP.fmu")[..], big[..]);
    drop(current);
    drop(next);
    assert_eq!(held(&last, "NEW_1_0_0_APP.fmu")[..], new[..]);

    // from_files holds its bytes the same way.
    let (built, _) =
        Catalog::from_files(vec![("B_1_0_0_APP.fmu".into(), big.clone())]).expect("catalog builds");
    assert!(built.images()[0].bytes.in_own_pages());
    assert_eq!(built.images()[0].bytes[..], big[..]);
}

#[test]
fn load_stamps_each_image_with_its_length_and_mtime() {
    let dir = TempDir::new("catalog-test");
    let path = dir.write("A_1_0_0_APP.fmu", b"abc");
    let meta = fs::metadata(&path).unwrap();
    let report = Catalog::load(dir.path()).unwrap();
    let image = &report.catalog.images()[0];
    assert_eq!(image.stamp, Some(stamp(&meta, meta.modified().unwrap())));
    assert_eq!(image.stamp.map(|s| s.0), Some(3));
    assert_eq!(
        catalog(&[("A_1_0_0_APP.fmu", b"abc")]).images()[0].stamp,
        None
    );
}

#[test]
fn load_collision_names_both_files() {
    let dir = TempDir::new("catalog-test");
    dir.write("M_1_0_0_APP.fmu", b"x");
    dir.write("M_1_0_0_3.fmu", b"y");
    match Catalog::load(dir.path()) {
        Err(Error::DuplicateVersion { first, second }) => {
            assert_eq!(
                (first.as_str(), second.as_str()),
                ("M_1_0_0_3.fmu", "M_1_0_0_APP.fmu")
            );
        }
        other => panic!("expected DuplicateVersion, got {other:?}"),
    }
}

// ---- Catalog::refresh ----

const SETTLE: Duration = Duration::from_secs(2);

/// A fixed wall-clock time, `secs` seconds after an arbitrary origin.
fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn set_mtime(path: &Path, mtime: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// Writes a file and sets its modification time.
fn write_at(dir: &TempDir, name: &str, bytes: &[u8], mtime: SystemTime) -> PathBuf {
    let path = dir.write(name, bytes);
    set_mtime(&path, mtime);
    path
}

fn loaded(dir: &TempDir) -> Catalog {
    Catalog::load(dir.path()).unwrap().catalog
}

fn image<'a>(c: &'a Catalog, file_name: &str) -> &'a Image {
    c.by_file_name(file_name).expect("image in catalog")
}

fn id_of(file_name: &str) -> [u8; 8] {
    hex8(fnv1a32(file_name.as_bytes()))
}

/// A refresh that must find nothing to do.
fn assert_unchanged(r: &Refresh) {
    assert!(r.next.is_none(), "{:?}", r.next);
    assert!(r.added.is_empty() && r.replaced.is_empty() && r.removed.is_empty());
    assert!(r.error.is_none(), "{:?}", r.error);
}

#[test]
fn refresh_of_an_unchanged_directory_has_no_next_and_reads_nothing() {
    let dir = TempDir::new("catalog-refresh");
    write_at(&dir, "A_1_0_0_APP.fmu", b"aaa", at(0));
    write_at(&dir, "B_1_0_0_APP.fmu", b"", at(0));
    let current = loaded(&dir);
    let r = current.refresh(dir.path(), at(100), SETTLE);
    assert_unchanged(&r);
    assert!(r.pending.is_empty() && r.skipped.is_empty());
    // Even right after the write: an unchanged stamp needs no settling.
    assert_unchanged(&current.refresh(dir.path(), at(0), SETTLE));
}

#[test]
fn refresh_shares_the_bytes_of_unchanged_images() {
    let dir = TempDir::new("catalog-refresh");
    write_at(&dir, "A_1_0_0_APP.fmu", b"aaa", at(0));
    let current = loaded(&dir);
    write_at(&dir, "B_1_0_0_APP.fmu", b"bb", at(0));
    let r = current.refresh(dir.path(), at(100), SETTLE);
    let next = r.next.expect("a new snapshot");
    let (old_a, new_a) = (
        image(&current, "A_1_0_0_APP.fmu"),
        image(&next, "A_1_0_0_APP.fmu"),
    );
    assert!(Arc::ptr_eq(&old_a.bytes, &new_a.bytes));
    assert_eq!((old_a.id, old_a.etag), (new_a.id, new_a.etag));
    assert_eq!(r.added, vec!["B_1_0_0_APP.fmu"]);
    assert!(r.replaced.is_empty() && r.removed.is_empty());
}

#[test]
fn refresh_adds_a_new_file_written_long_enough_ago() {
    let dir = TempDir::new("catalog-refresh");
    let current = loaded(&dir);
    write_at(&dir, "N_1_0_0_APP.fmu", b"new", at(10));
    let r = current.refresh(dir.path(), at(12), SETTLE);
    assert_eq!(r.added, vec!["N_1_0_0_APP.fmu"]);
    assert!(r.pending.is_empty() && r.error.is_none());
    let next = r.next.expect("a new snapshot");
    let n = next.candidate(b"N", TYPE_APP, 0).expect("served");
    assert_eq!(&n.bytes[..], b"new");
    assert_eq!(n.etag, fnv1a64(b"new").to_be_bytes());
    assert_eq!(next.core_links().len(), 2);
    assert_eq!(next.total_bytes(), 3);
    // And the snapshot after it sees nothing new.
    assert_unchanged(&next.refresh(dir.path(), at(13), SETTLE));
}

#[test]
fn refresh_holds_a_new_file_until_it_has_settled() {
    let dir = TempDir::new("catalog-refresh");
    let current = loaded(&dir);
    let file = "N_1_0_0_APP.fmu";
    let id = id_of(file);
    let now = at(10) + Duration::from_millis(500);
    write_at(&dir, file, b"new", at(10));

    let r = current.refresh(dir.path(), now, SETTLE);
    assert_eq!(
        r.pending,
        vec![Pending {
            file: file.into(),
            id_hex: id,
            wait_ms: 1500
        }]
    );
    assert!(r.added.is_empty() && r.error.is_none());
    // A snapshot that knows the file is coming, without serving it.
    let waiting = r.next.expect("the pending set changed");
    assert!(waiting.images().is_empty());
    assert!(waiting.by_id_hex(&id).is_none());
    assert_eq!(waiting.pending_retry(&id), Some(2));
    assert_eq!(current.pending_retry(&id), None);
    assert_eq!(waiting.pending_retry(b"00000000"), None);
    assert_eq!(waiting.pending_retry(b"short"), None);

    // Still pending: the same pending set is no change.
    let r = waiting.refresh(dir.path(), at(11), SETTLE);
    assert_unchanged(&r);
    assert_eq!(r.pending.len(), 1);
    assert_eq!(r.pending[0].wait_ms, 1000);

    let r = waiting.refresh(dir.path(), at(12), SETTLE);
    assert_eq!(r.added, vec![file]);
    assert!(r.pending.is_empty());
    let next = r.next.expect("admitted");
    assert_eq!(next.by_id_hex(&id).map(|i| &i.bytes[..]), Some(&b"new"[..]));
    assert_eq!(next.pending_retry(&id), None);
}

#[test]
fn a_file_still_being_written_keeps_waiting() {
    let dir = TempDir::new("catalog-refresh");
    let current = loaded(&dir);
    let file = "N_1_0_0_APP.fmu";
    write_at(&dir, file, b"par", at(10));
    let r = current.refresh(dir.path(), at(11), SETTLE);
    let waiting = r.next.expect("pending");
    // Written again: a fresh mtime starts the wait again.
    write_at(&dir, file, b"partial", at(12));
    let r = waiting.refresh(dir.path(), at(13), SETTLE);
    assert_unchanged(&r);
    assert_eq!(r.pending[0].wait_ms, 1000);
    // An mtime ahead of `now` waits for the difference and the settle time.
    set_mtime(&dir.path().join(file), at(20));
    let r = waiting.refresh(dir.path(), at(13), SETTLE);
    assert_eq!(r.pending[0].wait_ms, 9000);
    let r = waiting.refresh(dir.path(), at(22), SETTLE);
    assert_eq!(r.added, vec![file]);
}

#[test]
fn refresh_replaces_a_changed_file_and_the_old_snapshot_keeps_its_bytes() {
    let dir = TempDir::new("catalog-refresh");
    let file = "A_1_0_0_APP.fmu";
    write_at(&dir, file, b"one", at(0));
    let current = loaded(&dir);
    // Same length, new content and mtime.
    write_at(&dir, file, b"two", at(50));

    // Not settled yet: the previous version stays, and that is no change.
    let r = current.refresh(dir.path(), at(51), SETTLE);
    assert_unchanged(&r);
    assert!(r.pending.is_empty(), "a replacement is not pending");

    let r = current.refresh(dir.path(), at(52), SETTLE);
    assert_eq!(r.replaced, vec![file]);
    assert!(r.added.is_empty() && r.removed.is_empty());
    let next = r.next.expect("a new snapshot");
    let (old, new) = (image(&current, file), image(&next, file));
    assert_eq!(&old.bytes[..], b"one");
    assert_eq!(&new.bytes[..], b"two");
    assert_ne!(old.etag, new.etag);
    assert_eq!(old.id, new.id, "the id follows the name");
    // Same name and length: the discovery body, and so its ETag, is the same.
    assert_eq!(current.core_etag(), next.core_etag());
    assert_unchanged(&next.refresh(dir.path(), at(53), SETTLE));
}

#[test]
fn a_touched_file_is_read_again_and_keeps_its_etag() {
    let dir = TempDir::new("catalog-refresh");
    let file = "A_1_0_0_APP.fmu";
    let path = write_at(&dir, file, b"one", at(0));
    let current = loaded(&dir);
    set_mtime(&path, at(50));
    let r = current.refresh(dir.path(), at(60), SETTLE);
    assert_eq!(r.replaced, vec![file]);
    let next = r.next.expect("the stamp changed");
    assert_eq!(image(&next, file).etag, image(&current, file).etag);
    assert_eq!(next.core_etag(), current.core_etag());
    assert_unchanged(&next.refresh(dir.path(), at(61), SETTLE));
}

#[test]
fn refresh_drops_a_removed_file() {
    let dir = TempDir::new("catalog-refresh");
    write_at(&dir, "A_1_0_0_APP.fmu", b"a", at(0));
    let gone = write_at(&dir, "B_1_0_0_APP.fmu", b"b", at(0));
    let current = loaded(&dir);
    fs::remove_file(gone).unwrap();
    let r = current.refresh(dir.path(), at(1), SETTLE);
    assert_eq!(r.removed, vec!["B_1_0_0_APP.fmu"]);
    let next = r.next.expect("a new snapshot");
    assert!(next.newest(b"B", TYPE_APP).is_none());
    assert!(next.newest(b"A", TYPE_APP).is_some());
    assert!(
        current.newest(b"B", TYPE_APP).is_some(),
        "the old snapshot is intact"
    );
}

#[test]
fn refresh_with_a_collision_keeps_the_current_snapshot_and_says_why() {
    let dir = TempDir::new("catalog-refresh");
    write_at(&dir, "M_1_0_0_APP.fmu", b"x", at(0));
    let current = loaded(&dir);
    write_at(&dir, "M_1_0_0_3.fmu", b"y", at(0));
    write_at(&dir, "Other_1_0_0_APP.fmu", b"z", at(0));
    let r = current.refresh(dir.path(), at(100), SETTLE);
    assert!(r.next.is_none());
    assert!(r.added.is_empty());
    match r.error {
        Some(Error::DuplicateVersion { first, second }) => assert_eq!(
            (first.as_str(), second.as_str()),
            ("M_1_0_0_3.fmu", "M_1_0_0_APP.fmu")
        ),
        other => panic!("expected DuplicateVersion, got {other:?}"),
    }
    // What else the directory holds is still reported, sorted.
    write_at(&dir, "Z_x_0_0_APP.fmu", b"bad", at(0));
    write_at(&dir, "B_x_0_0_APP.fmu", b"bad", at(0));
    write_at(&dir, "P_1_0_0_APP.fmu", b"soon", at(100));
    let r = current.refresh(dir.path(), at(100), SETTLE);
    assert!(r.next.is_none() && r.error.is_some());
    let files: Vec<&str> = r.skipped.iter().map(|s| s.file.as_str()).collect();
    assert_eq!(files, ["B_x_0_0_APP.fmu", "Z_x_0_0_APP.fmu"]);
    assert_eq!(r.pending.len(), 1);
    fs::remove_file(dir.path().join("Z_x_0_0_APP.fmu")).unwrap();
    fs::remove_file(dir.path().join("B_x_0_0_APP.fmu")).unwrap();
    fs::remove_file(dir.path().join("P_1_0_0_APP.fmu")).unwrap();
    // Once the operator removes one, the rest goes in.
    fs::remove_file(dir.path().join("M_1_0_0_3.fmu")).unwrap();
    let r = current.refresh(dir.path(), at(101), SETTLE);
    assert_eq!(r.added, vec!["Other_1_0_0_APP.fmu"]);
}

#[test]
fn refresh_of_a_missing_directory_keeps_the_current_snapshot() {
    let dir = TempDir::new("catalog-refresh");
    write_at(&dir, "A_1_0_0_APP.fmu", b"a", at(0));
    let current = loaded(&dir);
    let r = current.refresh(&dir.path().join("nope"), at(1), SETTLE);
    assert!(r.next.is_none());
    assert!(
        matches!(r.error, Some(Error::ReadDir { .. })),
        "{:?}",
        r.error
    );
}

#[test]
fn temporary_hidden_and_editor_files_are_ignored_by_load_and_refresh() {
    let dir = TempDir::new("catalog-refresh");
    let droppings = [
        ".A_1_0_0_APP.fmu",
        ".#A_1_0_0_APP.fmu",
        "#A_1_0_0_APP.fmu#",
        "A_1_0_0_APP.fmu.tmp",
        "A_1_0_0_APP.fmu~",
        "A_1_0_0_APP.tmp",
    ];
    for name in droppings {
        write_at(&dir, name, b"x", at(0));
    }
    let report = Catalog::load(dir.path()).unwrap();
    assert!(report.catalog.images().is_empty() && report.skipped.is_empty());
    let mut expected = droppings.to_vec();
    expected.sort_unstable();
    assert_eq!(report.ignored, expected);
    let empty = loaded(&TempDir::new("catalog-refresh"));
    let r = empty.refresh(dir.path(), at(100), SETTLE);
    assert_unchanged(&r);
    assert!(r.pending.is_empty() && r.skipped.is_empty());
}

#[cfg(unix)]
#[test]
fn refresh_judges_links_and_odd_entries_as_load_does() {
    use std::os::unix::fs::symlink;

    let dir = TempDir::new("catalog-refresh");
    let elsewhere = TempDir::new("catalog-refresh");
    let real = write_at(&elsewhere, "Real_1_0_0_APP.fmu", b"link", at(0));
    symlink(&real, dir.path().join("Linked_1_0_0_APP.fmu")).unwrap();
    symlink(elsewhere.path(), dir.path().join("x_1_1_1_APP.fmu")).unwrap();
    symlink(
        dir.path().join("missing"),
        dir.path().join("Dangling_1_0_0_APP.fmu"),
    )
    .unwrap();
    fs::create_dir(dir.path().join("Sub_1_0_0_APP.fmu")).unwrap();
    write_at(&dir, "Bad_x_0_0_APP.fmu", b"b", at(0));
    let report = Catalog::load(dir.path()).unwrap();
    assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);

    let r = report.catalog.refresh(dir.path(), at(100), SETTLE);
    assert_unchanged(&r);
    assert_eq!(r.skipped, report.skipped);

    // A new target behind the same link is a changed file.
    fs::remove_file(&real).unwrap();
    write_at(&elsewhere, "Real_1_0_0_APP.fmu", b"linked again", at(50));
    let r = report.catalog.refresh(dir.path(), at(100), SETTLE);
    assert_eq!(r.replaced, vec!["Linked_1_0_0_APP.fmu"]);
}

#[test]
fn a_new_bad_file_is_reported_once() {
    let dir = TempDir::new("catalog-refresh");
    write_at(&dir, "A_1_0_0_APP.fmu", b"a", at(0));
    let current = loaded(&dir);
    write_at(&dir, "A_x_0_0_APP.fmu", b"bad", at(0));
    let r = current.refresh(dir.path(), at(1), SETTLE);
    assert_eq!(
        r.skipped,
        vec![Skipped {
            file: "A_x_0_0_APP.fmu".into(),
            reason: SkipReason::BadName(NameError::Major)
        }]
    );
    // A new snapshot (serving the same images) so that the caller reports it, once.
    let next = r.next.expect("the skipped list changed");
    assert!(Arc::ptr_eq(
        &image(&current, "A_1_0_0_APP.fmu").bytes,
        &image(&next, "A_1_0_0_APP.fmu").bytes
    ));
    assert!(r.added.is_empty() && r.replaced.is_empty() && r.removed.is_empty());
    let r = next.refresh(dir.path(), at(2), SETTLE);
    assert_unchanged(&r);
    assert_eq!(r.skipped.len(), 1);
}

#[test]
fn a_file_whose_length_changes_between_list_and_read_is_not_admitted() {
    let dir = TempDir::new("catalog-refresh");
    write_at(&dir, "A_1_0_0_APP.fmu", b"old", at(0));
    let current = loaded(&dir);
    let new = write_at(&dir, "N_1_0_0_APP.fmu", b"first", at(10));
    let changed = write_at(&dir, "A_1_0_0_APP.fmu", b"newer", at(10));
    // Both grow after the listing; the mtime is put back, so only the length tells.
    let mut grow = || {
        for path in [&new, &changed] {
            fs::write(path, b"first part and more").unwrap();
            set_mtime(path, at(10));
        }
    };
    let r = current.refresh_with(
        dir.path(),
        at(100),
        &mut crate::snapshot::Admission::settle_only(SETTLE),
        &mut grow,
    );
    assert!(r.added.is_empty() && r.replaced.is_empty(), "{r:?}");
    assert_eq!(
        r.pending,
        vec![Pending {
            file: "N_1_0_0_APP.fmu".into(),
            id_hex: id_of("N_1_0_0_APP.fmu"),
            wait_ms: 0
        }]
    );
    let waiting = r.next.expect("the pending set changed");
    assert_eq!(&image(&waiting, "A_1_0_0_APP.fmu").bytes[..], b"old");
    assert_eq!(waiting.pending_retry(&id_of("N_1_0_0_APP.fmu")), Some(1));
    // The next look sees the new length and reads both.
    let r = waiting.refresh(dir.path(), at(101), SETTLE);
    assert_eq!(r.added, vec!["N_1_0_0_APP.fmu"]);
    assert_eq!(r.replaced, vec!["A_1_0_0_APP.fmu"]);
    let next = r.next.unwrap();
    assert_eq!(
        &image(&next, "N_1_0_0_APP.fmu").bytes[..],
        b"first part and more"
    );
}

#[test]
fn a_file_removed_between_list_and_read_is_skipped_as_vanished() {
    let dir = TempDir::new("catalog-refresh");
    let current = loaded(&dir);
    let path = write_at(&dir, "N_1_0_0_APP.fmu", b"n", at(0));
    let mut remove = || fs::remove_file(&path).unwrap();
    let r = current.refresh_with(
        dir.path(),
        at(100),
        &mut crate::snapshot::Admission::settle_only(SETTLE),
        &mut remove,
    );
    assert!(r.added.is_empty() && r.pending.is_empty());
    assert_eq!(r.skipped[0].reason, SkipReason::Vanished);
}

#[test]
fn settle_wait_counts_from_the_mtime() {
    assert_eq!(settle_wait(at(0), at(2), SETTLE), None);
    assert_eq!(settle_wait(at(0), at(5), SETTLE), None);
    assert_eq!(
        settle_wait(at(0), at(1), SETTLE),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        settle_wait(at(10), at(1), SETTLE),
        Some(Duration::from_secs(11))
    );
    assert_eq!(settle_wait(at(0), at(0), Duration::ZERO), None);
}

/// Times an unchanged refresh of 10,000 small images:
/// `cargo test --release --lib -- --ignored --nocapture refresh_cost`.
#[test]
#[ignore = "a measurement: creates 10,000 files"]
fn refresh_cost_of_10000_unchanged_images() {
    const COUNT: usize = 10_000;
    let dir = TempDir::new("catalog-refresh-cost");
    for i in 0..COUNT {
        write_at(
            &dir,
            &format!("P{i:05}_1_0_0_APP.fmu"),
            &crate::testkit::image_bytes(64, i as u32),
            at(0),
        );
    }
    let current = loaded(&dir);
    assert_eq!(current.images().len(), COUNT);
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = std::time::Instant::now();
        let r = current.refresh(dir.path(), at(100), SETTLE);
        times.push(start.elapsed());
        assert_unchanged(&r);
    }
    times.sort_unstable();
    // For comparison: one listing and one stat by path per file, nothing else.
    let mut floor = Vec::new();
    for _ in 0..20 {
        let start = std::time::Instant::now();
        for entry in fs::read_dir(dir.path()).unwrap() {
            fs::metadata(entry.unwrap().path()).unwrap();
        }
        floor.push(start.elapsed());
    }
    floor.sort_unstable();
    let start = std::time::Instant::now();
    let r = loaded(&dir);
    let load = start.elapsed();
    assert_eq!(r.images().len(), COUNT);
    println!(
        "unchanged refresh of {COUNT} images: min {:?}, median {:?}, max {:?}; \
         read_dir + stat by path alone: median {:?}; Catalog::load: {load:?}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        floor[floor.len() / 2],
    );
}

#[test]
fn skip_reason_texts_are_operator_friendly() {
    assert_eq!(
        Skipped {
            file: "P_x_0_0_APP.fmu".into(),
            reason: SkipReason::BadName(NameError::Major)
        }
        .to_string(),
        "P_x_0_0_APP.fmu: bad file name: MAJOR must be a decimal 0..=255"
    );
    assert!(SkipReason::TooLarge(5_000_000_000)
        .to_string()
        .contains("5000000000"));
}
