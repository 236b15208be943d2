//! `tamper-heal`: how long from a module's code altered on a node's disk
//! to its good copy running again.
//!
//! A real hierarchy (top manager, one domain manager, one node, release
//! `agad` processes over loopback with mutual TLS) runs the `cpu-mem`
//! inspector. The node re-hashes its module files and compiled artefacts
//! every `--period` (`integrity_check_every`), and the domain manager
//! attests the node on the same period (`--attest-every`). Each run flips
//! one byte of the module file (even runs) or of its cached compiled
//! artefact (odd runs), at a random moment of the check period, then
//! waits for the whole cycle: the node finds it
//! and quarantines the module (stopped, bytes and artefact deleted, the
//! security alarm `agad.module-tampered` queued), the alarm reaches the
//! domain manager, which redeploys the node with the module's good bytes
//! from BC, the node verifies, compiles and starts it, and the alarm's
//! clear reaches BIG (waited for before the next run).
//!
//! Printed, per kind of alteration and over all runs: p50/p99/max of
//! - detection: the alteration written → the node's "quarantined" log line
//!   (at most one check period, plus the hashing);
//! - healed: the alteration written → the node's "started" log line of the
//!   good copy (detection, the alarm's trip to the domain manager, the
//!   redeployment with bytes, signature check, compilation and start).
//!
//! Times are the node's log timestamps against the wall clock of this
//! program (same host). Goal: healed p99 ≤ one period + 1 s.
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/tamper-heal                  # 20 runs, 5 s period
//! target/release/tamper-heal --runs 40 --period 2s
//! ```

use agad_benchmarks::args::Args;
use agad_benchmarks::stats::{Timings, duration};
use anyhow::Context;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") {
        println!(
            "tamper-heal [--runs N (default 20)] [--period DURATION (default 5s): the node's check and the manager's attestation period]"
        );
        return Ok(());
    }
    let quick = args.flag("--quick");
    let runs: usize = args.value("--runs")?.unwrap_or(if quick { 4 } else { 20 });
    let period: String = args.value("--period")?.unwrap_or_else(|| "5s".to_owned());
    args.finish()?;
    let period_d = agad_protocol::parse_duration(&period)
        .with_context(|| format!("--period {period}: not a duration"))?;

    let mut d = agad_benchmarks::processes::start("info")?;
    d.publish_inspector("cpu-mem")?;
    d.apply(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"d1\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"n1\"]\n[assign.config]\nperiod = \"1s\"\n",
    )?;
    let mor = d.mor_address()?.to_owned();
    let station = d.start_station_with("s1", &mor, &["--attest-every", &period])?;
    d.start_node_with_config(
        "n1",
        &station,
        &format!("integrity_check_every = \"{period}\"\n"),
    )?;
    let hash = d.published_hash("cpu-mem")?;
    let started = |d: &agad_tests::hierarchy::Deployment| marks(&d.log("n1"), "started");
    d.wait_for("cpu-mem running on n1", |d| {
        Ok((!started(d)?.is_empty()).then_some(()))
    })?;

    let mut detected = [Vec::new(), Vec::new()];
    let mut healed = [Vec::new(), Vec::new()];
    for run in 0..runs {
        let kind = run % 2;
        let file = if kind == 0 {
            d.path(&format!("n1/modules/{hash}.wasm"))
        } else {
            d.path(&format!("n1/compiled/{hash}.cwasm"))
        };
        d.wait_for("the file to alter", |_| Ok(file.exists().then_some(())))?;
        let (quarantines, starts) = (
            marks(&d.log("n1"), "quarantined:")?.len(),
            started(&d)?.len(),
        );
        let cleared = clears(&d)?;
        // At a random moment of the check period: each run would otherwise
        // start just after the check that healed the last one, and always
        // wait a whole period to be found.
        std::thread::sleep(
            period_d.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.0..1.0)),
        );
        let mut bytes = std::fs::read(&file)?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        let t0 = micros(SystemTime::now())?;
        std::fs::write(&file, bytes)?;
        let (q, s) = d.wait_for("the good copy running again and the alarm cleared", |d| {
            let q = marks(&d.log("n1"), "quarantined:")?;
            let s = started(d)?;
            Ok(
                (q.len() > quarantines && s.len() > starts && clears(d)? > cleared)
                    .then(|| (q[quarantines], s[starts])),
            )
        })?;
        let since = |t: i64| Duration::from_micros(u64::try_from(t - t0).unwrap_or(0));
        detected[kind].push(since(q));
        healed[kind].push(since(s));
        println!(
            "run {:>2} ({}): quarantined after {}, good copy running after {}",
            run + 1,
            ["module file", "artefact"][kind],
            duration(since(q)),
            duration(since(s))
        );
    }

    println!();
    println!(
        "period {period} (node check and attestation), keep-alive {}, {runs} runs",
        agad_benchmarks::processes::KEEPALIVE
    );
    let all = |v: &[Vec<Duration>; 2]| [v[0].clone(), v[1].clone()].concat();
    for (name, set) in [
        ("module file altered", (&detected[0], &healed[0])),
        ("artefact altered", (&detected[1], &healed[1])),
        ("all", (&all(&detected), &all(&healed))),
    ] {
        for (what, samples) in [("detected", set.0), ("healed", set.1)] {
            if let Some(t) = Timings::of(samples) {
                println!(
                    "{name:<22} {what:<9} n={:<3} p50 {:>9}  p99 {:>9}  max {:>9}",
                    t.count,
                    duration(t.p50),
                    duration(t.p99),
                    duration(t.max)
                );
            }
        }
    }
    if let Some(t) = Timings::of(&all(&healed)) {
        let goal = period_d + Duration::from_secs(1);
        println!(
            "goal: healed p99 ≤ period + 1 s = {}: {} (p99 {})",
            duration(goal),
            if t.p99 <= goal { "met" } else { "MISSED" },
            duration(t.p99)
        );
    }
    Ok(())
}

/// µs since the epoch of every node log line containing `marker` and
/// naming cpu-mem, in order.
fn marks(log: &str, marker: &str) -> anyhow::Result<Vec<i64>> {
    log.lines()
        .filter(|l| l.contains(marker) && l.contains("module=cpu-mem"))
        .map(|line| {
            let stamp = line.split_whitespace().next().unwrap_or_default();
            let at = humantime::parse_rfc3339(stamp)
                .with_context(|| format!("log line without an RFC 3339 timestamp: {line}"))?;
            micros(at)
        })
        .collect()
}

fn micros(t: SystemTime) -> anyhow::Result<i64> {
    Ok(i64::try_from(t.duration_since(UNIX_EPOCH)?.as_micros())?)
}

/// Clears of `agad.module-tampered` in BIG.
fn clears(d: &agad_tests::hierarchy::Deployment) -> anyhow::Result<usize> {
    Ok(d.alarms()?
        .iter()
        .filter(|a| a.key == "agad.module-tampered" && !a.raised)
        .count())
}
