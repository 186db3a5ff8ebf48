//! What a run measured, and the two lines `bench` prints: one for people,
//! one (`RESULT key=value ...`) for `make bench`'s harness.

use super::options::BenchConfig;

/// Linux reports process CPU time in these ticks a second (USER_HZ).
pub(crate) const USER_HZ: f64 = 100.0;

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) blocks: u64,
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
    pub(crate) p50_us: u32,
    pub(crate) p99_us: u32,
    pub(crate) max_us: u32,
    pub(crate) retransmissions: u64,
    pub(crate) failures: u64,
    pub(crate) mismatches: u64,
    pub(crate) stale: u64,
    pub(crate) downloads: u64,
    /// Requests taken out of the fast path as late or lost.
    pub(crate) late_heads: u64,
    pub(crate) sweeps: u64,
    pub(crate) cpu_pct: Option<f64>,
    pub(crate) first_mismatch: Option<String>,
}

impl Report {
    pub(crate) fn blocks_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.blocks as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Value at `pct` percent of a sorted slice (nearest rank), 0 when empty.
pub(crate) fn percentile(sorted: &[u32], pct: usize) -> u32 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0;
    };
    sorted.get(last * pct / 100).copied().unwrap_or(0)
}

/// User plus system CPU time of this process in clock ticks, from
/// `/proc/self/stat` (Linux); `None` elsewhere.
pub(crate) fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may contain spaces, in
    // parentheses: utime and stime are fields 14 and 15 of the line.
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) fn human_line(config: &BenchConfig, r: &Report) -> String {
    let target = if config.baseline {
        "baseline"
    } else {
        "server"
    };
    let ports = match config.ports {
        Some(p) => format!(" over {p} client ports"),
        None => String::new(),
    };
    format!(
        "{} devices{ports}, {} path, {target} {}: {} blocks in {:.2} s = {:.0} blocks/s ({:.1} MB/s), \
         latency p50 {} us p99 {} us, {} retransmissions, {} failed exchanges, {} mismatches",
        config.devices,
        config.route.name(),
        iot_ota::iface::display(config.server),
        r.blocks,
        r.secs,
        r.blocks_per_s(),
        r.bytes as f64 / r.secs.max(f64::MIN_POSITIVE) / 1e6,
        r.p50_us,
        r.p99_us,
        r.retransmissions,
        r.failures,
        r.mismatches
    )
}

pub(crate) fn result_line(config: &BenchConfig, r: &Report) -> String {
    let cpu = r
        .cpu_pct
        .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
    format!(
        "RESULT mode={} target={} devices={} ports={} block_size={} blocks={} secs={:.6} blocks_per_s={:.1} \
         p50_us={} p99_us={} max_us={} retransmissions={} failures={} mismatches={} stale={} downloads={} late_heads={} sweeps={} cpu_pct={cpu}",
        config.route.name(),
        if config.baseline { "baseline" } else { "server" },
        config.devices,
        config.ports.unwrap_or(config.devices),
        16usize << config.szx,
        r.blocks,
        r.secs,
        r.blocks_per_s(),
        r.p50_us,
        r.p99_us,
        r.max_us,
        r.retransmissions,
        r.failures,
        r.mismatches,
        r.stale,
        r.downloads,
        r.late_heads,
        r.sweeps,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentile(&[], 50), 0);
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
    }
}
