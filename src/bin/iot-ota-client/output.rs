//! What the client writes: the body (to a file or standard output), the
//! summary line, and the progress line on a terminal.

use crate::client::{Client, Transfer};
use crate::coap::Progress;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub(crate) fn io_error(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

pub(crate) fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

/// Writes the body to the file or standard output.
pub(crate) fn write_body(output: Option<&PathBuf>, body: &[u8]) -> Result<(), String> {
    match output {
        Some(path) => {
            std::fs::write(path, body).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        None => {
            let mut out = std::io::stdout().lock();
            let mut write = || -> std::io::Result<()> {
                out.write_all(body)?;
                // Keep a shell prompt off the end of a text body.
                if out.is_terminal() && !body.is_empty() && !body.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
                out.flush()
            };
            write().map_err(|e| format!("cannot write to standard output: {e}"))
        }
    }
}

/// The summary line, e.g. `downloaded 30000 bytes of OTA-X id 0d0ad509 in
/// 30 blocks, etag 1c2b3a4d5e6f7081, 1 retransmission, 0.04 s`.
pub(crate) fn summary(
    what: &str,
    t: &Transfer,
    client: &Client,
    szx: u8,
    elapsed: Duration,
) -> String {
    let stats = client.stats();
    let mut line = format!(
        "downloaded {} of {what} in {}",
        plural(t.bytes, "byte"),
        plural(u64::from(t.blocks), "block")
    );
    if t.block_size < 16 << szx {
        line.push_str(&format!(" (server block size {} B)", t.block_size));
    }
    if let Some(etag) = &t.etag {
        line.push_str(", etag ");
        for b in etag {
            line.push_str(&format!("{b:02x}"));
        }
    }
    line.push_str(&format!(
        ", {}",
        plural(u64::from(stats.retransmissions), "retransmission")
    ));
    if stats.echo_retries > 0 {
        line.push_str(&format!(
            ", {}",
            plural(u64::from(stats.echo_retries), "Echo challenge")
        ));
    }
    if stats.rate_limit_waits > 0 {
        line.push_str(&format!(
            ", {} after 4.29",
            plural(u64::from(stats.rate_limit_waits), "wait")
        ));
    }
    line.push_str(&format!(", {:.2} s", elapsed.as_secs_f64()));
    line
}

pub(crate) fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The one-line progress display on a terminal: redrawn at most ten times
/// a second, erased before the summary.
pub(crate) struct ProgressLine {
    enabled: bool,
    last: Option<Instant>,
}

impl ProgressLine {
    pub(crate) fn new(enabled: bool) -> ProgressLine {
        ProgressLine {
            enabled,
            last: None,
        }
    }

    pub(crate) fn show(&mut self, progress: &Progress) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        eprint!("\r{progress}\x1b[K");
    }

    pub(crate) fn clear(&mut self) {
        if self.enabled && self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}
