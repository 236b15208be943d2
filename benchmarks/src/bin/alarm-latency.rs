//! `alarm-latency`: how long an alarm takes from the node that raised it to
//! its domain manager (GD) and to the top manager (GM), over loopback with
//! mutual TLS 1.3 on every link; and, beside it, how long a condition takes
//! from its onset to the top manager with the shipped defaults (detection:
//! the node's sampling period and `raise_after` included).
//!
//! **System.** A real GM, one GD station and one node as separate release
//! `agad` processes ([`agad_tests::hierarchy`]).
//!
//! **Detection** (first, `--detections`, default 10): the node runs
//! app-watch with its shipped defaults, watching a process this program
//! starts; the process is killed at a random point of a second and
//! restarted once the alarm cleared. Timed from the `kill` to the GM's
//! `alarm stored` line, with the node's own raise time beside it
//! ([`agad_benchmarks::detection`]; the `detection` benchmark does the same
//! for four kinds of fault, as root).
//!
//! **Transport** (then, `--alarms`): the `misbehave` test guest is added in
//! `alarm-every-tick` mode, a new alarm on every tick (`--period-ms`, 100
//! ms by default). Every alarm carries `time_ms`, when the node emitted it
//! (after the tick; so the inspector period is not part of the figure).
//! Receipt times come from the processes' logs (`AGAD_LOG`, timestamps in
//! µs, one clock: all processes run on this machine):
//! - node → GD: the GD's `alarm stored` debug line (BICD stored it);
//! - node → GM: the GM's `alarm stored` debug line (BIG stored it);
//! - and, to see where the time goes, the node's `alarm queued` line (the
//!   alarm is flushed to the node's outbox on disk before it is sent).
//!
//! Alarms are matched by id with `agad alarms --json` (BIG). The first
//! `--warmup` alarms are left out (connections and compiled code warming
//! up). `time_ms` has millisecond resolution and is truncated, so every
//! latency reads up to 1 ms high (0.5 ms on average).
//!
//! Run (about 2 minutes by default):
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/alarm-latency
//! target/release/alarm-latency --alarms 2000 --period-ms 50 --detections 20
//! ```

use agad_benchmarks::args::Args;
use agad_benchmarks::detection::{self, Figures, random_phase, shipped_raise_after};
use agad_benchmarks::hierarchy::{wait_cleared, wait_deployment_running};
use agad_benchmarks::processes::{self, now_us};
use agad_benchmarks::procfs::machine_load;
use agad_benchmarks::stats::{Timings, duration};
use agad_modules::test_guests::{MISBEHAVE_MANIFEST, MISBEHAVE_WASM};
use agad_tests::faults::Service;
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::time::Duration;

const HELP: &str =
    "alarm-latency: alarm latency node → domain manager and node → top manager (real processes)
usage: alarm-latency [--quick] [--alarms N] [--period-ms MS] [--warmup N] [--detections N]
  --quick         100 alarms, 3 detections
  --alarms N      alarms measured (default 600)
  --period-ms MS  tick period of the alarm-raising inspector (default 100)
  --warmup N      first alarms left out (default 20)
  --detections N  watched process killed N times, onset → alarm timed (default 10)
needs target/release/agad: cargo build --release -p agad -p agad-benchmarks";

/// The managers' per-alarm lines are debug lines of their own crates.
const LOG_FILTER: &str = "info,agad_gerente_dominio::nodes=debug,agad_gerente_mor::stations=debug";
const STATION: &str = "s1";
const NODE: &str = "edge-node-017";
const MODULE: &str = "misbehave";
/// Log lines that mark an alarm's arrival, by process.
const GM_STORED: &str = "alarm stored";
const GD_RECEIVED: &str = "alarm stored";
const NODE_QUEUED: &str = "alarm queued";
const GOAL_P99: Duration = Duration::from_millis(10);

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let measured: usize = args
        .value("--alarms")?
        .unwrap_or(if quick { 100 } else { 600 });
    let period_ms: u64 = args.value("--period-ms")?.unwrap_or(100);
    let warmup: usize = args.value("--warmup")?.unwrap_or(20);
    let detections: usize = args
        .value("--detections")?
        .unwrap_or(if quick { 3 } else { 10 });
    args.finish()?;
    if measured == 0 || period_ms == 0 {
        bail!("--alarms and --period-ms must be at least 1");
    }

    let service = Service::start("al")?;
    let mut d = processes::start(LOG_FILTER)?;
    d.publish_inspector("app-watch")?;
    let raise_after = shipped_raise_after(&["app-watch"])?;
    let watched = format!(
        "[[domain]]\nname = \"d1\"\nstations = [\"{STATION}\"]\n\n\
         [[node]]\nname = \"{NODE}\"\ndomain = \"d1\"\n\n\
         [[assign]]\nmodule = \"app-watch\"\nnodes = [\"{NODE}\"]\n\
         [assign.config]\nprocesses = \"{}\"\n",
        service.name()
    );
    d.apply(&watched)?;
    let station = d.start_station(STATION)?;
    // The node's default budget (120 alarms a minute per module, README
    // "node configuration") would hold misbehave to one alarm per 500 ms
    // once its burst is spent: raised to twice the rate asked for.
    let alarms_per_minute = (2 * 60_000 / period_ms).max(120);
    d.start_node_with_config(
        NODE,
        &station,
        &format!("alarms_per_minute = {alarms_per_minute}\n"),
    )?;
    wait_deployment_running(&mut d, STATION)?;

    let key = format!("proc.running:{}", service.name());
    let mut detected = Figures::default();
    for round in 1..=detections {
        eprintln!("detection {round}/{detections}: watched process killed");
        random_phase();
        let t0 = now_us();
        service.kill();
        detection::measure(&mut d, NODE, &key, t0, &mut detected)?;
        service.restart()?;
        wait_cleared(&mut d, NODE, &key)?;
    }

    let wasm =
        std::fs::read(MISBEHAVE_WASM).with_context(|| format!("reading {MISBEHAVE_WASM}"))?;
    let manifest = std::fs::read_to_string(MISBEHAVE_MANIFEST)?;
    d.publish(MODULE, &wasm, &manifest)?;
    d.apply(&format!(
        "{watched}\n[[assign]]\nmodule = \"{MODULE}\"\nnodes = [\"{NODE}\"]\n\
         [assign.config]\nmode = \"alarm-every-tick\"\nperiod = \"{period_ms}ms\"\n"
    ))?;

    let wanted = warmup + measured;
    eprintln!("collecting {wanted} alarms at one per {period_ms} ms...");
    // The detection phase's alarms and clears are stored already.
    let before = d.log("mor").matches(GM_STORED).count();
    // Counted in the GM's log, not with `agad alarms`: a process started
    // every 250 ms would compete for the CPU with the path being measured.
    let patience = Duration::from_millis(period_ms * wanted as u64 * 2) + Duration::from_secs(120);
    d.wait_for_within(&format!("{wanted} alarms in BIG"), patience, |d| {
        Ok((d.log("mor").matches(GM_STORED).count() >= before + wanted).then_some(()))
    })?;
    d.stop(NODE)?;

    let gm = processes::log_times(&d.log("mor"), GM_STORED)?;
    let gd = processes::log_times(&d.log(STATION), GD_RECEIVED)?;
    let queued = processes::log_times(&d.log(NODE), NODE_QUEUED)?;
    let mut alarms = d.alarms()?;
    alarms.retain(|a| a.node == NODE && a.module == MODULE);
    alarms.sort_by_key(|a| a.time_ms);
    let alarms = alarms.get(warmup..).unwrap_or_default();

    let mut legs = [
        Leg::new("node → GD (stored in BICD)", "the GD's `alarm stored`"),
        Leg::new("node → GM (stored in BIG)", "the GM's `alarm stored`"),
        Leg::new("  node: emitted → queued", "the node's `alarm queued`"),
        Leg::new("  GD received → GM stored", "the GD's or the GM's log"),
    ];
    for a in alarms {
        let emitted = i64::try_from(a.time_ms).context("time_ms out of range")? * 1000;
        let at = |times: &HashMap<String, i64>| times.get(&a.id).copied();
        legs[0].add(at(&gd).map(|t| t - emitted));
        legs[1].add(at(&gm).map(|t| t - emitted));
        legs[2].add(at(&queued).map(|t| t - emitted));
        legs[3].add(at(&gd).zip(at(&gm)).map(|(r, s)| s - r));
    }

    println!();
    println!(
        "== alarm latency: `{MODULE}` raising an alarm every {period_ms} ms tick, \
         node → GD → GM, separate processes, mutual TLS 1.3 on loopback =="
    );
    println!("machine: {}", machine_load());
    println!(
        "alarms in BIG from {NODE}: {} measured after {warmup} warm-up alarms",
        alarms.len()
    );
    println!(
        "{:<28} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "path", "count", "mean", "p50", "p90", "p99", "max"
    );
    for leg in &legs {
        leg.print();
    }
    println!(
        "(from the alarm's time_ms, stamped when the tick's output is emitted, so the inspector \
         period is not included; time_ms is truncated to the millisecond, so figures read up to \
         1 ms high)"
    );
    if let Some(t) = Timings::of(&legs[1].samples) {
        println!(
            "goal: p99 ≤ {} node → GM beyond the inspector period: {} (p99 {})",
            duration(GOAL_P99),
            if t.p99 <= GOAL_P99 { "met" } else { "MISSED" },
            duration(t.p99)
        );
    }
    println!();
    println!(
        "== detection: onset → alarm stored at the GM, app-watch with its shipped defaults \
         (the node's default period, raise after {raise_after} breaching samples); the watched \
         process killed at a random point of a second =="
    );
    println!("{}", Figures::header());
    println!("{}", detected.row("killed process"));
    if let (Some((gm, node)), Some(transport)) = (detected.timings(), Timings::of(&legs[1].samples))
    {
        println!(
            "of which detection on the node (onset → raised) p50 {}, transport node → GM p50 {} \
             (from the misbehave alarms above); onset → GM p50 {}",
            duration(node.p50),
            duration(transport.p50),
            duration(gm.p50)
        );
    }
    Ok(())
}

/// Latencies of one leg of the path, and the alarms it has no figure for.
struct Leg {
    name: &'static str,
    source: &'static str,
    samples: Vec<Duration>,
    unmatched: usize,
    negative: usize,
}

impl Leg {
    fn new(name: &'static str, source: &'static str) -> Leg {
        Leg {
            name,
            source,
            samples: Vec::new(),
            unmatched: 0,
            negative: 0,
        }
    }

    /// One alarm's latency in µs, `None` when a log had no line for it.
    fn add(&mut self, micros: Option<i64>) {
        match micros.map(u64::try_from) {
            Some(Ok(us)) => self.samples.push(Duration::from_micros(us)),
            // Receipt before emission: only a clock step could do that.
            Some(Err(_)) => self.negative += 1,
            None => self.unmatched += 1,
        }
    }

    fn print(&self) {
        let Some(t) = Timings::of(&self.samples) else {
            println!(
                "{:<28} no samples ({} without a line in {})",
                self.name, self.unmatched, self.source
            );
            return;
        };
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        // Nearest rank, as `Timings` computes p50 and p99.
        let p90 = sorted[((0.9 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        let mut notes = Vec::new();
        if self.unmatched > 0 {
            notes.push(format!(
                "{} alarms without a line in {}",
                self.unmatched, self.source
            ));
        }
        if self.negative > 0 {
            notes.push(format!(
                "{} received before emitted (clock step?)",
                self.negative
            ));
        }
        println!(
            "{:<28} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}{}",
            self.name,
            t.count,
            duration(t.mean),
            duration(t.p50),
            duration(p90),
            duration(t.p99),
            duration(t.max),
            if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join("; "))
            }
        );
    }
}
