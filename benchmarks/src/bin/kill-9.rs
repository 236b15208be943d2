//! `kill-9`: durability under `kill -9`, counted end to end.
//!
//! A real hierarchy (top manager, one domain manager, one node) runs the
//! `misbehave` test guest raising an alarm every 500 ms. In turn, the node,
//! the domain manager and the top manager are killed with SIGKILL at a
//! random moment of traffic and restarted, `--kills` times each (default
//! 200). After each restart the run waits until BIG grows again, so every
//! kill lands on live traffic. At the end the node is stopped and the run
//! waits for BIG to hold every alarm the node logged as durably queued.
//!
//! Printed: kills per process, alarms the node queued, alarms in BIG,
//! lost (queued, never in BIG), duplicated (ids in BIG more than once, and
//! BICD's count against BIG's), and alarms in BIG the node never logged
//! (only an alarm queued in the instant before a kill of the node can be one:
//! at most one per node kill). Alarms only: reports are consolidated per
//! window and counted by `alarm-latency`/`wire-bytes`, not here.
//!
//! Run (about 3 s per kill):
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/kill-9                 # 200 kills of each process
//! target/release/kill-9 --kills 20
//! ```

use agad_benchmarks::args::Args;
use agad_modules::test_guests::{MISBEHAVE_MANIFEST, MISBEHAVE_WASM};
use agad_tests::hierarchy::{Deployment, alarm_ids};
use anyhow::Context;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const VICTIMS: [&str; 3] = ["n1", "s1", "mor"];

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") {
        println!("kill-9 [--kills N] (each of node, domain manager and top manager; default 200)");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let kills: usize = args
        .value("--kills")?
        .unwrap_or(if quick { 5 } else { 200 });
    args.finish()?;

    let mut d = agad_benchmarks::processes::start("info")?;
    d.publish(
        "misbehave",
        &std::fs::read(MISBEHAVE_WASM)?,
        &std::fs::read_to_string(MISBEHAVE_MANIFEST)?,
    )?;
    d.apply(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\nreport_window = \"2s\"\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"d1\"\n\n\
         [[assign]]\nmodule = \"misbehave\"\ndomain = \"d1\"\n[assign.config]\nmode = \"alarm-every-tick\"\nperiod = \"500ms\"\n",
    )?;
    let station = d.start_station("s1")?;
    d.start_node("n1", &station)?;
    let in_big = |d: &Deployment| d.alarms().map(|a| a.len());
    d.wait_for("alarm traffic", |d| Ok((in_big(d)? >= 5).then_some(())))?;

    let started = Instant::now();
    let mut done = BTreeMap::<&str, usize>::new();
    for round in 0..kills * VICTIMS.len() {
        let victim = VICTIMS[round % VICTIMS.len()];
        // A random moment within the next second of traffic.
        std::thread::sleep(Duration::from_millis(rand::Rng::gen_range(
            &mut rand::thread_rng(),
            0..1000,
        )));
        d.kill9(victim)?;
        if victim == "mor" {
            d.restart_mor()?;
        } else {
            d.restart(victim)?;
        }
        *done.entry(victim).or_default() += 1;
        let before = in_big(&d)?;
        d.wait_for(
            &format!("traffic after kill {} of {victim}", done[victim]),
            |d| Ok((in_big(d)? > before).then_some(())),
        )?;
        if (round + 1) % 30 == 0 {
            eprintln!(
                "{} kills in {:.0} s...",
                round + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    d.stop("n1")?;
    let queued = d.queued_alarm_ids("n1");
    // BICD's count comes with the station's keep-alives: this waits for the
    // one after the last alarm, too.
    d.wait_for_alarms_settled("n1")?;
    let big = d.alarms()?;
    let big_ids = alarm_ids(&big);
    let bicd = d.bicd_alarms()?;
    d.check().context("a process did not survive")?;
    println!(
        "kill-9: {} kills in {:.0} s (node {}, domain manager {}, top manager {}), each during alarm traffic",
        done.values().sum::<usize>(),
        started.elapsed().as_secs_f64(),
        done["n1"],
        done["s1"],
        done["mor"]
    );
    println!(
        "  alarms queued by the node {}, in BIG {} ({} distinct ids), in BICD {}",
        queued.len(),
        big.len(),
        big_ids.len(),
        bicd.map_or("?".to_owned(), |n| n.to_string())
    );
    println!(
        "  lost (queued, not in BIG) {}; duplicated in BIG {}; in BIG but never logged by the node {} (≤ 1 per node kill allowed: queued in the instant of a kill)",
        queued.difference(&big_ids).count(),
        big.len() - big_ids.len(),
        big_ids.difference(&queued).count()
    );
    Ok(())
}
