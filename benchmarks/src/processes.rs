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
