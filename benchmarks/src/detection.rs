//! Detection latency: from a fault's onset to its alarm at the top manager,
//! with the inspectors' shipped defaults (`detection`, and `alarm-latency`
//! beside its transport figures).
//!
//! The onset is a wall-clock instant (µs) the benchmark takes when it
//! injects the fault; the alarm's own `time_ms` says when the node raised
//! it, and the GM's `alarm stored` log line when BIG stored it (one clock:
//! every process runs on this machine).

use crate::processes::log_times;
use crate::stats::{Timings, duration};
use agad_tests::hierarchy::Deployment;
use anyhow::{Context, bail};
use std::time::Duration;

/// One fault's figures: onset → alarm stored at the GM, and → raised on
/// the node.
#[derive(Default)]
pub struct Figures {
    pub at_gm: Vec<Duration>,
    pub on_node: Vec<Duration>,
}

impl Figures {
    pub fn extend(&mut self, other: &Figures) {
        self.at_gm.extend(&other.at_gm);
        self.on_node.extend(&other.on_node);
    }

    /// Onset → GM and onset → node, if there are samples.
    pub fn timings(&self) -> Option<(Timings, Timings)> {
        Some((Timings::of(&self.at_gm)?, Timings::of(&self.on_node)?))
    }

    /// A table row: count, p50, p99 and max at the GM, p50 on the node.
    pub fn row(&self, name: &str) -> String {
        match self.timings() {
            Some((gm, node)) => format!(
                "{name:<20} {:>5} {:>10} {:>10} {:>10} {:>14}",
                gm.count,
                duration(gm.p50),
                duration(gm.p99),
                duration(gm.max),
                duration(node.p50),
            ),
            None => format!("{name:<20} no samples"),
        }
    }

    /// The header of [`Figures::row`].
    pub fn header() -> String {
        format!(
            "{:<20} {:>5} {:>10} {:>10} {:>10} {:>14}",
            "fault", "count", "p50", "p99", "max", "p50 on node"
        )
    }
}

/// Sleeps a random part of a second, so that onsets fall anywhere between
/// two of the node's samples (it samples on a wall-clock grid).
pub fn random_phase() {
    use rand::Rng;
    std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..1000)));
}

/// `raise_after` as the inspectors' manifests declare its default (the
/// `default = N` line of their `[config.raise_after]` table): the figure
/// printed is the one shipped, and all of them agree on it.
pub fn shipped_raise_after(inspectors: &[&str]) -> anyhow::Result<u32> {
    let mut shipped = None;
    for name in inspectors {
        let m = agad_modules::inspector(name).with_context(|| format!("no built-in {name}"))?;
        let default = m
            .manifest_toml
            .split_once("[config.raise_after]")
            .and_then(|(_, table)| {
                table
                    .lines()
                    .take_while(|l| !l.starts_with('['))
                    .find_map(|l| l.strip_prefix("default = ")?.trim().parse::<u32>().ok())
            })
            .with_context(|| format!("{name} declares no default raise_after"))?;
        if shipped.is_some_and(|s| s != default) {
            bail!("the inspectors' default raise_after differ ({name}: {default})");
        }
        shipped = Some(default);
    }
    shipped.context("no inspector")
}

/// Waits for the first alarm of `key` raised by `node` since `t0` (µs) to
/// be in BIG, and records when the GM stored it and when the node raised it.
pub fn measure(
    d: &mut Deployment,
    node: &str,
    key: &str,
    t0: i64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let alarm = d.wait_for(&format!("`{key}` raised at the top manager"), |d| {
        Ok(d.alarms()?
            .into_iter()
            .filter(|a| {
                a.node == node
                    && a.key == key
                    && a.raised
                    // time_ms is truncated to the millisecond.
                    && i64::try_from(a.time_ms).unwrap_or(i64::MAX) * 1000 >= t0 - 1000
            })
            .min_by_key(|a| a.time_ms))
    })?;
    let stored = log_times(&d.log("mor"), "alarm stored")?;
    let at = *stored
        .get(&alarm.id)
        .with_context(|| format!("no `alarm stored` line for {} in the GM's log", alarm.id))?;
    let since = |us: i64| Duration::from_micros(u64::try_from(us - t0).unwrap_or(0));
    figures.at_gm.push(since(at));
    figures.on_node.push(since(
        i64::try_from(alarm.time_ms).unwrap_or(i64::MAX) * 1000,
    ));
    Ok(())
}
