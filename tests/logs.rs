//! The server's log as service managers collect it, on the real binary:
//! journald's `<N>` prefixes (chosen by `JOURNAL_STREAM` or asked for),
//! syslog datagrams to a Unix socket, the fallback to stderr, what `-q`
//! keeps, and the message for a missing directory.

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;
use support::{
    image_bytes, run_bounded, spawn_server, spawn_server_logging, write_images, LogSink, TempDir,
    SERVER_BIN,
};

/// An updates directory with one image and one file whose name the
/// catalog rejects, so that start-up logs info lines and a warning.
fn updates_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    write_images(&dir, &[("LOG-MOTE", 3000)]);
    dir.write("bad_name.fmu", b"not an image");
    dir
}

/// True when `line` starts with an RFC 3339 UTC timestamp, as plain
/// lines do (`2026-11-27T19:34:51.123Z`).
fn has_timestamp(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 24
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && bytes[23] == b'Z'
}

/// Checks a log in journal format: every line `<N>` with the priority of
/// its kind, no timestamp.
fn assert_journal_lines(log: &str) {
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(n, _)| n);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "line without a journal priority: {line:?}\nlog:\n{log}"
        );
        assert!(
            !line.contains("Z INFO") && !line.contains("Z WARN"),
            "{line:?}"
        );
    }
    for (prefix, what) in [
        ("<6>listening on ", "the listening line at info"),
        ("<6>image LOG-MOTE_1_0_1_APP.fmu", "the image line at info"),
        ("<4>skipped bad_name.fmu", "the skipped file at warning"),
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "no {what} ({prefix:?}); log:\n{log}"
        );
    }
}

#[test]
fn journal_stream_naming_stderr_gives_priority_prefixes_without_timestamps() {
    let dir = updates_dir("journal");
    let out = TempDir::new("journal-out");
    let stderr = out.path().join("stderr");
    std::fs::write(&stderr, b"").expect("create the stderr file");
    let meta = std::fs::metadata(&stderr).expect("stat the stderr file");
    // systemd names the stream as st_dev:st_ino, both decimal.
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut server = spawn_server_logging(
        dir.path(),
        "127.0.0.1:0",
        &[],
        &[("JOURNAL_STREAM", &stream)],
        Some(LogSink::File(&stderr)),
    );
    server.stop_by_signal(libc::SIGTERM);
    let log = server.log();
    assert_journal_lines(&log);
    assert!(log.contains("<6>stopping on a signal; stats:"), "{log}");
}

#[test]
fn journal_stream_of_another_file_keeps_plain_timestamped_lines() {
    let dir = updates_dir("journal-other");
    let out = TempDir::new("journal-other-out");
    let stderr = out.path().join("stderr");
    let elsewhere = out.path().join("elsewhere");
    std::fs::write(&elsewhere, b"").expect("create a file");
    let meta = std::fs::metadata(&elsewhere).expect("stat the file");
    // What a service inherits when its stderr was redirected away from
    // the journal: the variable names another file.
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let server = spawn_server_logging(
        dir.path(),
        "127.0.0.1:0",
        &[],
        &[("JOURNAL_STREAM", &stream)],
        Some(LogSink::File(&stderr)),
    );
    let log = server.log();
    for line in log.lines() {
        assert!(
            has_timestamp(line),
            "not a plain line: {line:?}\nlog:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN  skipped bad_name.fmu")),
        "{log}"
    );
}

#[test]
fn log_format_journal_is_honoured_without_journal_stream() {
    let dir = updates_dir("journal-asked");
    let mut server = spawn_server(dir.path(), "127.0.0.1:0", &["--log-format", "journal"]);
    server.stop_by_signal(libc::SIGTERM);
    assert_journal_lines(&server.log());
}

#[test]
fn syslog_datagrams_carry_facility_daemon_priorities_the_tag_and_the_pid() {
    let dir = updates_dir("syslog");
    let mut server = spawn_server_logging(
        dir.path(),
        "127.0.0.1:0",
        &["--log-format", "syslog"],
        &[],
        Some(LogSink::Syslog),
    );
    // A download logs its start and end at info while serving.
    let output = run_bounded(
        Command::new(support::CLIENT_BIN).args([
            &server.addr.to_string(),
            "--pid",
            "LOG-MOTE",
            "--version",
            "1.0.0",
        ]),
        Duration::from_secs(30),
    );
    assert!(
        output.status.success() && output.stdout == image_bytes(3000, 1),
        "download failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pid = server.pid();
    server.stop_by_signal(libc::SIGTERM);
    let datagrams = server.syslog();
    // Facility daemon (3): PRI 3*8+6 = 30 for info, 3*8+4 = 28 for warnings.
    let info = format!("<30>iot-ota-server[{pid}]: ");
    let warning = format!("<28>iot-ota-server[{pid}]: ");
    for line in datagrams.lines() {
        assert!(
            line.starts_with(&info) || line.starts_with(&warning),
            "datagram {line:?}\nall:\n{datagrams}"
        );
    }
    for needle in [
        format!("{warning}skipped bad_name.fmu"),
        format!("{info}image LOG-MOTE_1_0_1_APP.fmu"),
        format!("{info}listening on {}", server.addr),
        format!("{info}stopping on a signal; stats:"),
    ] {
        assert!(
            datagrams.contains(&needle),
            "no {needle:?} in:\n{datagrams}"
        );
    }
    assert!(
        datagrams.lines().count() >= 6,
        "expected the download's lines too:\n{datagrams}"
    );
    assert_eq!(server.log(), "", "nothing goes to stderr");
}

#[test]
fn unreachable_syslog_socket_falls_back_to_stderr_with_a_warning() {
    let dir = updates_dir("syslog-gone");
    let nowhere = TempDir::new("syslog-nowhere");
    let socket = nowhere.path().join("log");
    let socket_text = socket.to_string_lossy().into_owned();
    let server = spawn_server_logging(
        dir.path(),
        "127.0.0.1:0",
        &["--log-format", "syslog"],
        &[("IOT_OTA_SYSLOG_SOCKET", &socket_text)],
        None,
    );
    let log = server.log();
    let first = log.lines().next().unwrap_or_default();
    assert!(
        has_timestamp(first)
            && first.contains(&format!(
                " WARN  cannot reach the syslog socket {socket_text}: "
            ))
            && first.ends_with(": logging to stderr instead"),
        "first line {first:?}; log:\n{log}"
    );
    assert!(log.lines().all(has_timestamp), "{log}");
    assert!(log.contains(" INFO  listening on "), "{log}");
}

#[test]
fn quiet_keeps_warnings_the_summary_and_the_listening_and_stopping_lines() {
    let dir = updates_dir("quiet");
    // spawn_server itself waits for the "listening on" line.
    let mut server = spawn_server(dir.path(), "127.0.0.1:0", &["-q"]);
    server.stop_by_signal(libc::SIGTERM);
    let log = server.log();
    for needle in [
        " WARN  skipped bad_name.fmu",
        " INFO  catalog: 1 images, 3000 bytes from ",
        " INFO  listening on 127.0.0.1:",
        " INFO  stopping on a signal; stats:",
    ] {
        assert!(log.contains(needle), "no {needle:?} in:\n{log}");
    }
    assert!(
        !log.contains("image LOG-MOTE"),
        "-q hides the per-image lines:\n{log}"
    );
    assert_eq!(log.lines().count(), 4, "{log}");
}

/// Runs the server from `cwd` with `args` and returns its exit code and
/// stderr.
fn start_in(cwd: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let output = run_bounded(
        Command::new(SERVER_BIN)
            .args(args)
            .args(["-l", "127.0.0.1:0"])
            .current_dir(cwd)
            .env_remove("RUST_LOG"),
        Duration::from_secs(30),
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn missing_directory_is_named_by_its_absolute_path_with_a_hint() {
    let cwd = TempDir::new("cwd");
    let shown = cwd.path().display().to_string();
    // A service manager starts the server from a directory without
    // `updates`, as from `/`.
    let (code, stderr) = start_in(cwd.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "ERROR firmware directory {shown}/updates does not exist (no -d: the default \
             updates, relative to the working directory {shown}); give -d the directory's \
             absolute path"
        )),
        "{stderr}"
    );
    let (code, stderr) = start_in(cwd.path(), &["-d", "fw"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "firmware directory {shown}/fw does not exist (-d fw, relative to the working \
             directory {shown})"
        )),
        "{stderr}"
    );
    let absent = format!("{shown}/absent");
    let (code, stderr) = start_in(cwd.path(), &["-d", &absent]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "firmware directory {absent} does not exist (-d {absent})"
        )),
        "{stderr}"
    );
    let (code, stderr) = start_in(cwd.path(), &["--fileserver", "tree"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "file tree {shown}/tree does not exist (--fileserver tree, relative to the working \
             directory {shown}); give --fileserver the directory's absolute path"
        )),
        "{stderr}"
    );
    let file = cwd.write("plain-file", b"x");
    let (code, stderr) = start_in(cwd.path(), &["-d", "plain-file"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "firmware directory {} is not a directory",
            file.display()
        )),
        "{stderr}"
    );
}
