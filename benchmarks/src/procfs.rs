//! What `/proc` says about a process: resident memory and CPU time.

use anyhow::{Context, bail};
use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// `VmRSS`, bytes.
    pub rss_bytes: u64,
    /// `VmHWM` (peak RSS), bytes.
    pub peak_rss_bytes: u64,
    /// `RssAnon` (heap, stacks, wasm memories), bytes.
    pub rss_anon_bytes: u64,
    /// `RssFile` (mapped executable and libraries, compiled modules), bytes.
    pub rss_file_bytes: u64,
    /// utime + stime of every thread, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let kib = |field: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .with_context(|| format!("/proc/{pid}/status has no {field}"))?;
        let n: u64 = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("/proc/{pid}/status {field}{line}"))?;
        Ok(n * 1024)
    };
    let rss_bytes = kib("VmRSS:")?;
    let peak_rss_bytes = kib("VmHWM:")?;
    Ok(ProcSample {
        rss_bytes,
        peak_rss_bytes,
        rss_anon_bytes: kib("RssAnon:")?,
        rss_file_bytes: kib("RssFile:")?,
        cpu_ticks: cpu_ticks(pid)?,
    })
}

/// Proportional set size (`Pss` of `/proc/<pid>/smaps_rollup`), bytes: the
/// process's private pages plus its share of pages mapped by others too
/// (the binary's text, libraries), so that the PSS of processes running the
/// same binary add up to what they use together.
pub fn pss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{path} has no Pss line"))?;
    Ok(kib * 1024)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS, so the next
/// [`sample`] tells the peak of what happened since (Linux 4.0 and later).
pub fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("cannot reset the peak RSS of process {pid}"))
}

/// utime + stime from `/proc/<pid>/stat` (fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        bail!("/proc/{pid}/stat: unexpected format");
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so utime (14) is index 11.
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: no field {}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// CPU used between two readings, as a percentage of one core.
pub fn cpu_percent(
    before: &ProcSample,
    after: &ProcSample,
    wall: Duration,
    ticks_per_sec: u64,
) -> f64 {
    let used = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks_per_sec as f64;
    used * 100.0 / wall.as_secs_f64()
}

/// `cores N, load average a b c`: context for reading timings taken on a
/// machine that may be busy with other work.
pub fn machine_load() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cores} cores, load average {}", load.join(" "))
}

/// The kernel's name of this process (`comm`, at most 15 bytes), as process
/// lists (and so the `app-watch` inspector and hrSWRunName) show it.
pub fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
        let pss = pss_bytes(std::process::id()).expect("own smaps_rollup");
        assert!(
            pss > 0 && pss <= s.rss_bytes + 4096,
            "{pss} {}",
            s.rss_bytes
        );
        assert!(!own_comm().is_empty());
    }
}
