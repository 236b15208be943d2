//! `failover`: how long a domain is without its manager when the manager's
//! process dies, as the operator sees it at the top manager.
//!
//! A real hierarchy (top manager, two candidate stations `s1`, `s2` of one
//! domain, `--nodes` nodes running cpu-mem, every one an `agad` process with
//! real mutual TLS, on loopback) with keep-alives every `--keepalive`. Each
//! run kills the serving station with SIGKILL and measures, from the kill,
//! until `agad status` at the top manager shows the other station serving
//! the domain under a newer activation with every node connected to it.
//! That includes the top manager noticing (the TCP connection drops), the
//! activation (an fsync), the replica, each node noticing its parent is
//! gone and reconnecting, and the new station's next keep-alive carrying
//! the nodes' states up. The killed station is then restarted (it steps
//! down and stays as the standby), and the next run kills the other one.
//!
//! Printed: p50, p99 and max over `--runs` (default 20), in seconds and in
//! keep-alive intervals. Goal: p99 ≤ 3 intervals.
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/failover                  # 20 runs, 2 s keep-alive, 4 nodes
//! target/release/failover --runs 50 --keepalive 10s
//! ```

use agad_benchmarks::args::Args;
use agad_benchmarks::processes;
use agad_benchmarks::stats::{duration, in_intervals};
use agad_tests::hierarchy::{Deployment, Options};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") {
        println!("failover [--runs 20] [--keepalive 2s] [--nodes 4]");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let runs: usize = args.value("--runs")?.unwrap_or(if quick { 3 } else { 20 });
    let keepalive: String = args.value("--keepalive")?.unwrap_or_else(|| "2s".into());
    let nodes: usize = args.value("--nodes")?.unwrap_or(4);
    args.finish()?;
    let interval = humantime::parse_duration(&keepalive)?;

    let mut d = Deployment::start(
        &processes::agad_binary()?,
        Options {
            keepalive: keepalive.clone(),
            ..processes::options("warn")
        },
    )?;
    d.publish_inspector("cpu-mem")?;
    let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
    let mut topology =
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\", \"s2\"]\nreport_window = \"10s\"\n"
            .to_owned();
    for n in &names {
        topology += &format!("\n[[node]]\nname = \"{n}\"\ndomain = \"d1\"\n");
    }
    topology += "\n[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d1\"\n";
    d.apply(&topology)?;
    let s1 = d.start_station("s1")?;
    d.wait_for("s1 serving d1", |d| {
        Ok((serving(d)?.0.as_deref() == Some("s1")).then_some(()))
    })?;
    let s2 = d.start_station("s2")?;
    for n in &names {
        d.start_node(n, &format!("{s1},{s2}"))?;
    }
    d.wait_for("every node connected", |d| {
        Ok(all_connected(d, &names)?.then_some(()))
    })?;

    println!(
        "fail-over of a killed domain manager: {nodes} nodes, keep-alive {keepalive}, {runs} runs"
    );
    let mut samples = Vec::with_capacity(runs);
    for run in 1..=runs {
        let (Some(victim), Some(generation)) = serving(&d)? else {
            anyhow::bail!("no station serves d1 before run {run}");
        };
        let killed = Instant::now();
        d.kill9(&victim)?;
        let took = loop {
            let (now, newer) = serving(&d)?;
            if now.is_some_and(|s| s != victim)
                && newer > Some(generation)
                && all_connected(&d, &names)?
            {
                break killed.elapsed();
            }
            if killed.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("run {run}: the domain was not served again within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        println!(
            "  run {run:>3}: {victim} killed, served again in {} ({:.2} intervals)",
            duration(took),
            took.as_secs_f64() / interval.as_secs_f64()
        );
        samples.push(took);
        d.restart(&victim)?;
        // It steps down and is the standby for the next run.
        d.wait_for("the restarted station connected as standby", |d| {
            Ok(standby_connected(d, &victim)?.then_some(()))
        })?;
    }
    if let Some(line) = in_intervals(
        "kill -9 → served by the standby, every node reconnected",
        &samples,
        interval,
        3.0,
    ) {
        println!("{line}");
    }
    Ok(())
}

/// Who serves d1 and as which activation, per `agad status`.
fn serving(d: &Deployment) -> anyhow::Result<(Option<String>, Option<u64>)> {
    let status = d.status()?;
    let domain = status["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["domain"] == "d1")
        .cloned()
        .unwrap_or_default();
    Ok((
        domain["station"].as_str().map(str::to_owned),
        domain["generation"].as_u64(),
    ))
}

fn all_connected(d: &Deployment, nodes: &[String]) -> anyhow::Result<bool> {
    for n in nodes {
        let state = d.component_state(&serde_json::json!({"node": {"name": n}}))?;
        if state.is_none_or(|s| s.get("connected").is_none()) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn standby_connected(d: &Deployment, station: &str) -> anyhow::Result<bool> {
    let status = d.status()?;
    Ok(status["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|x| x["stations"].as_array().into_iter().flatten())
        .any(|s| s["name"] == station && s["state"].get("connected").is_some()))
}
