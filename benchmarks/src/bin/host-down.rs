//! `host-down`: how long from a host's link going down to the "host down"
//! alarm at the top manager, on real separate hosts.
//!
//! A network of network namespaces (`agad_tests::network`: one host each
//! for the top manager, a domain manager and a node, on one switch), the
//! release `agad` processes on them with keep-alives every `--keepalive`.
//! Each run sets the node host's interface down and measures, from that
//! moment, until BIG holds a new raised `agad.host-down` alarm for the node:
//! the domain manager finding the node stale (its keep-alives stop), its
//! guardian's probe (three ICMP echo requests within a quarter interval, no
//! answer), the alarm through BICD and the domain manager's outbox to the
//! top manager, and `agad alarms` reading it (polled every 50 ms). Then the
//! link comes back and the run waits for the alarm to clear and the node
//! to reconnect.
//!
//! Printed: p50, p99 and max over `--runs` (default 20), in seconds and in
//! keep-alive intervals. Goal: p99 ≤ 3 intervals. Needs root (namespaces).
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/host-down                 # 20 runs, 2 s keep-alive
//! target/release/host-down --runs 50 --keepalive 10s
//! ```

use agad_benchmarks::args::Args;
use agad_benchmarks::processes;
use agad_benchmarks::stats::{duration, in_intervals};
use agad_tests::hierarchy::{Deployment, Options};
use agad_tests::network::Network;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const HOST_DOWN: &str = "agad.host-down";

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") {
        println!("host-down [--runs 20] [--keepalive 2s] (needs root)");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let runs: usize = args.value("--runs")?.unwrap_or(if quick { 3 } else { 20 });
    let keepalive: String = args.value("--keepalive")?.unwrap_or_else(|| "2s".into());
    args.finish()?;
    let interval = humantime::parse_duration(&keepalive)?;

    let net = Network::new(&["mor", "s1", "n1"])?;
    let mut d = Deployment::start_on(
        &processes::agad_binary()?,
        Options {
            keepalive: keepalive.clone(),
            ..processes::options("warn")
        },
        net.host("mor")?,
    )?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&format!(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"d1\"\naddress = \"{}\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d1\"\n",
        net.host("n1")?.address()
    ))?;
    let s1 = d.start_station_on("s1", net.host("s1")?)?;
    d.start_node_on("n1", &s1, net.host("n1")?)?;
    d.wait_for("n1 connected", |d| {
        Ok(d.node_connected("n1")?.then_some(()))
    })?;

    println!("link down → host down at the top manager: keep-alive {keepalive}, {runs} runs");
    let mut samples = Vec::with_capacity(runs);
    for run in 1..=runs {
        let seen = events(&d)?;
        // A random phase against the keep-alive period.
        std::thread::sleep(interval.mul_f64(rand::random::<f64>()));
        let cut = Instant::now();
        net.link_down("n1")?;
        let took = loop {
            let now = events(&d)?;
            if now
                .iter()
                .any(|(id, raised)| *raised && !seen.contains(&(id.clone(), true)))
            {
                break cut.elapsed();
            }
            if cut.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("run {run}: no host-down alarm within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        println!(
            "  run {run:>3}: host down at the top manager after {} ({:.2} intervals)",
            duration(took),
            took.as_secs_f64() / interval.as_secs_f64()
        );
        samples.push(took);
        net.link_up("n1")?;
        let raised = events(&d)?.iter().filter(|(_, r)| *r).count();
        d.wait_for("the alarm cleared and n1 back", |d| {
            let cleared = events(d)?.iter().filter(|(_, r)| !*r).count();
            Ok((cleared >= raised && d.node_connected("n1")?).then_some(()))
        })?;
    }
    if let Some(line) = in_intervals(
        "link down → host-down alarm in BIG",
        &samples,
        interval,
        3.0,
    ) {
        println!("{line}");
    }
    Ok(())
}

/// Ids of n1's host-down events in BIG, with whether each raises.
fn events(d: &Deployment) -> anyhow::Result<BTreeSet<(String, bool)>> {
    Ok(d.alarms()?
        .into_iter()
        .filter(|a| a.node == "n1" && a.key == HOST_DOWN)
        .map(|a| (a.id, a.raised))
        .collect())
}
