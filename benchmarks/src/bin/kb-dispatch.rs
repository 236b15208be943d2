//! `kb-dispatch`: how long from an alarm leaving its node to the specialist
//! the knowledge base chose starting on that node — warm (the node holds
//! and has compiled the specialist) and cold (its bytes are shipped, then
//! verified, compiled and linked there). The AGAD thesis' third measurement.
//!
//! **System.** A real GM, one GD station and managed nodes as separate
//! release `agad` processes ([`agad_tests::hierarchy`]), mutual TLS 1.3 on
//! loopback. Each node runs the `misbehave` test guest in
//! `alarm-every-tick` mode (a new alarm every `--period-ms`); one rule
//! (published with `agad kb apply`) diagnoses every such alarm with the
//! built-in `top-cpu` specialist. The nodes run one after another, each
//! from an empty data directory: its first run is cold (and any that comes
//! while the specialist is still loading), the others warm.
//!
//! **What is timed**, from the node's own log (one clock, µs): from `alarm
//! queued` (the alarm is on the node's disk and leaves for the GD) to
//! `specialist run starting` for the run of that alarm (the GD stored the
//! alarm, evaluated BCN, recorded the run and sent it; the node recorded
//! the run id on disk, had or got the module loaded, and is about to
//! instantiate and call it). So it includes two TLS hops, the GD's and the
//! node's fsyncs, and for cold runs the bytes on the wire and the
//! compilation; not the inspector period, nor the specialist's own work.
//!
//! Run (about 2 minutes by default):
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/kb-dispatch
//! target/release/kb-dispatch --nodes 20 --warm 30
//! ```

use agad_benchmarks::args::Args;
use agad_benchmarks::processes::{self, log_times};
use agad_benchmarks::procfs::machine_load;
use agad_benchmarks::stats::{Timings, duration};
use agad_modules::test_guests::{MISBEHAVE_MANIFEST, MISBEHAVE_WASM};
use anyhow::{Context, bail};
use std::time::Duration;

const HELP: &str =
    "kb-dispatch: alarm leaving a node → the specialist BCN chose starting on it (real processes)
usage: kb-dispatch [--quick] [--nodes N] [--warm N] [--period-ms MS]
  --quick         3 nodes, 10 warm runs each
  --nodes N       nodes, one after another, each giving one cold run (default 10)
  --warm N        warm runs measured per node after its cold one (default 20)
  --period-ms MS  one alarm (and one run) per this period (default 500)
needs target/release/agad: cargo build --release -p agad -p agad-benchmarks";

const STATION: &str = "s1";
const RULE: &str = "bench-diagnose";
const GOAL_WARM_P99: Duration = Duration::from_millis(20);
const GOAL_COLD_P99: Duration = Duration::from_millis(300);

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let nodes: usize = args.value("--nodes")?.unwrap_or(if quick { 3 } else { 10 });
    let warm: usize = args.value("--warm")?.unwrap_or(if quick { 10 } else { 20 });
    let period_ms: u64 = args.value("--period-ms")?.unwrap_or(500);
    args.finish()?;
    if nodes == 0 || period_ms == 0 {
        bail!("--nodes and --period-ms must be at least 1");
    }
    let names: Vec<String> = (1..=nodes).map(|i| format!("edge-{i:03}")).collect();

    let mut d = processes::start("info")?;
    let wasm =
        std::fs::read(MISBEHAVE_WASM).with_context(|| format!("reading {MISBEHAVE_WASM}"))?;
    d.publish(
        "misbehave",
        &wasm,
        &std::fs::read_to_string(MISBEHAVE_MANIFEST)?,
    )?;
    let top = agad_modules::specialist("top-cpu").context("no built-in top-cpu")?;
    d.publish("top-cpu", top.wasm, top.manifest_toml)?;
    let mut topology = format!("[[domain]]\nname = \"d1\"\nstations = [\"{STATION}\"]\n");
    for n in &names {
        topology += &format!("\n[[node]]\nname = \"{n}\"\ndomain = \"d1\"\n");
    }
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    topology += &format!(
        "\n[[assign]]\nmodule = \"misbehave\"\nnodes = [{}]\n[assign.config]\nmode = \"alarm-every-tick\"\nperiod = \"{period_ms}ms\"\n",
        list.join(", ")
    );
    d.apply(&topology)?;
    std::fs::create_dir_all(d.path("rules"))?;
    std::fs::write(
        d.path("rules/bench.toml"),
        format!(
            "[[rule]]\nname = \"{RULE}\"\n[rule.match]\nmodule = \"misbehave\"\n\
             [rule.diagnose]\nspecialist = \"top-cpu\"\nargs = {{ sample = \"50ms\", count = 3 }}\n"
        ),
    )?;
    d.agad(&["kb", "apply", "rules"])?;
    let station = d.start_station(STATION)?;

    let (mut cold, mut warm_runs) = (Vec::new(), Vec::new());
    let mut missing = 0;
    for name in &names {
        eprintln!("{name}: one cold run, then {warm} warm...");
        d.start_node(name, &station)?;
        let patience =
            Duration::from_millis(period_ms * (warm as u64 + 5) * 4) + Duration::from_secs(120);
        d.wait_for_within(&format!("{} runs on {name}", warm + 1), patience, |d| {
            Ok((d.log(name).matches("specialist run starting").count() > warm).then_some(()))
        })?;
        d.stop(name)?;
        let log = d.log(name);
        let queued = log_times(&log, "alarm queued")?;
        // `warm=false`: the run loaded the specialist (the first, and any
        // that came while that one was still loading).
        let warm_ids: std::collections::HashSet<String> = log
            .lines()
            .filter(|l| l.contains("specialist run starting") && l.contains("warm=true"))
            .filter_map(|l| l.split_whitespace().find_map(|t| t.strip_prefix("id=")))
            .map(str::to_owned)
            .collect();
        for (run, at) in log_times(&log, "specialist run starting")? {
            let alarm = run.split('#').next().unwrap_or_default();
            let Some(left) = queued.get(alarm) else {
                missing += 1;
                continue;
            };
            let took = Duration::from_micros(u64::try_from(at - left).unwrap_or(0));
            if warm_ids.contains(&run) {
                &mut warm_runs
            } else {
                &mut cold
            }
            .push(took);
        }
    }

    println!();
    println!(
        "== knowledge-base dispatch: alarm leaves the node → chosen specialist starts on it \
         (real GM, GD and nodes, mutual TLS 1.3 on loopback) =="
    );
    println!("machine: {}", machine_load());
    println!(
        "{} node(s) one after another, an alarm every {period_ms} ms, rule `{RULE}` → top-cpu",
        nodes
    );
    println!(
        "{:<34} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "run", "count", "mean", "p50", "p99", "max"
    );
    for (label, samples, goal) in [
        ("warm (held, compiled, linked)", &warm_runs, GOAL_WARM_P99),
        ("cold (shipped, verified, compiled)", &cold, GOAL_COLD_P99),
    ] {
        match Timings::of(samples) {
            Some(t) => println!(
                "{label:<34} {:>6} {:>10} {:>10} {:>10} {:>10}   goal p99 ≤ {}: {}",
                t.count,
                duration(t.mean),
                duration(t.p50),
                duration(t.p99),
                duration(t.max),
                duration(goal),
                if t.p99 <= goal { "met" } else { "MISSED" }
            ),
            None => println!("{label:<34} no samples"),
        }
    }
    if missing > 0 {
        println!("({missing} runs whose alarm had no `alarm queued` line were left out)");
    }
    println!(
        "(from the node's `alarm queued` to its `specialist run starting`: GD store + BCN \
         evaluation + run recorded + Run frame + node's run-id fsync + load; not the \
         specialist's own work)"
    );
    Ok(())
}
