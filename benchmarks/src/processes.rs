//! How the benchmarks run a real AGAD hierarchy: the shared harness
//! ([`agad_tests::hierarchy`]) with the release `agad` binary beside the
//! benchmark and the keep-alive a deployment would use.
//!
//! Network namespaces with many links are [`agad_tests::netns::Netns`].
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use agad_benchmarks::processes;
//! let mut d = processes::start("info")?;
//! d.publish_inspector("cpu-mem")?;
//! d.apply("[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n[[node]]\nname = \"n1\"\ndomain = \"d1\"\n")?;
//! let station = d.start_station("s1")?;
//! d.start_node("n1", &station)?;
//! # Ok(()) }
//! ```

use agad_tests::hierarchy::{Deployment, Options};
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::time::Duration;

/// Keep-alive period of every station and node, as a deployment would run it.
pub const KEEPALIVE: &str = "10s";

/// Generous: two shared cores, and every process compiles its modules.
const PATIENCE: Duration = Duration::from_secs(120);

/// `agad` beside the running program (both are built into `target/release`).
pub fn agad_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("the program has no parent directory")?
        .join("agad");
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with\n    cargo build --release -p agad -p agad-benchmarks",
            path.display()
        );
    }
    Ok(path)
}

/// The harness's options for a benchmark: `log_filter` is the `AGAD_LOG`
/// of every process, keep-alives every [`KEEPALIVE`].
pub fn options(log_filter: &str) -> Options {
    Options {
        log_filter: log_filter.to_owned(),
        keepalive: KEEPALIVE.to_owned(),
        patience: PATIENCE,
    }
}

/// A CA, a publisher key and a running top manager, with [`agad_binary`]
/// and [`options`].
pub fn start(log_filter: &str) -> anyhow::Result<Deployment> {
    Deployment::start(&agad_binary()?, options(log_filter))
}

/// Now, in µs since the Unix epoch: the clock the processes' log lines
/// are stamped with (every process runs on this machine).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Id → µs since the epoch of the first log line with `marker` that names
/// it (`2025-01-02T03:04:05.123456Z  INFO ...: <marker>... id=<id> ...`):
/// when a process did something to an alarm or a run, by its own log.
pub fn log_times(
    log: &str,
    marker: &str,
) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    log_times_by(log, marker, "id")
}

/// [`log_times`] keyed by another field of the line (`case=<key>`).
pub fn log_times_by(
    log: &str,
    marker: &str,
    field: &str,
) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    let prefix = format!("{field}=");
    let mut times = std::collections::HashMap::new();
    for line in log.lines() {
        let Some((head, rest)) = line.split_once(marker) else {
            continue;
        };
        let Some(id) = rest
            .split_whitespace()
            .find_map(|t| t.strip_prefix(prefix.as_str()))
        else {
            continue;
        };
        let stamp = head.split_whitespace().next().unwrap_or_default();
        let at = humantime::parse_rfc3339(stamp)
            .with_context(|| format!("log line without an RFC 3339 timestamp: {line}"))?;
        let micros = i64::try_from(at.duration_since(std::time::UNIX_EPOCH)?.as_micros())?;
        times.entry(id.to_owned()).or_insert(micros);
    }
    Ok(times)
}
