//! False failure declarations on a bad network, with the real processes:
//! how often a healthy node is declared failed by its domain manager when
//! its link loses 5 % of packets each way and adds 50 ms of jitter.
//!
//! A network of separate hosts (`agad_tests::network`, one namespace each):
//! the top manager, one domain manager (`agad dominio`) and N nodes (`agad
//! node`, running cpu-mem every second), each node on its own host. Every
//! node host drops 5 % of its packets in each direction (nftables; this
//! kernel has no netem), and the nodes reach their domain manager through a
//! relay on its host that delays every chunk by 0–100 ms (50 ms mean jitter,
//! order kept). Once every node is connected and the loss is on, the run
//! lasts `--minutes`; then it counts, from the processes' logs:
//! - at the domain manager: `child stale` declarations (a node judged
//!   silent) and sessions ended for any reason (a false failure either way:
//!   every node is healthy throughout);
//! - at the nodes: links they gave up (`link down`), e.g. a parent judged
//!   silent;
//! - in BIG: the guardian's accusations (`agad.host-down`,
//!   `agad.agent-down` raised), which it makes only after probing the host
//!   of a late or silent node;
//!
//! and prints them per node-hour, with the node-hours covered. Goal: 0.
//!
//! Usage: `false-failures [--quick] [--nodes 12] [--minutes 5]
//! [--keepalive 1s] [--loss 5] [--max-delay-ms 100]`. The defaults cover one
//! node-hour (12 nodes × 5 min); `--nodes 12 --minutes 60` covers twelve.
//! A one-second keep-alive is the harsh case: TCP's 200 ms minimum
//! retransmission timeout weighs ten times more against it than against
//! the 10 s deployments use. Needs root (namespaces, nftables).
//!
//! Measured (debug build, 2 shared cores, keep-alive 1 s): 12 nodes × 5 min
//! (1.00 node-hour) and 12 nodes × 30 min (6.00 node-hours): 0 stale, 0
//! sessions ended, 0 links given up; ICMP round-trip loss n1 → s1 measured
//! 9–11.75 % (expected 9.75 %).
//!
//! The program re-runs itself inside the domain manager's host to run the
//! relay there (`--relay LISTEN TARGET --max-delay-ms MS`).

use agad_benchmarks::args::Args;
use agad_benchmarks::processes;
use agad_benchmarks::stats::duration;
use agad_tests::hierarchy::{Deployment, STATION_PORT, is_guardian_alarm};
use agad_tests::network::{Network, jitter_relay};
use anyhow::{Context, bail};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Port of the jitter relay on the domain manager's host.
const RELAY_PORT: u16 = 7501;

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") {
        println!(
            "false-failures [--quick] [--nodes 12] [--minutes 5] [--keepalive 1s] [--loss 5] [--max-delay-ms 100]"
        );
        return Ok(());
    }
    let max_delay_ms: u64 = args.value("--max-delay-ms")?.unwrap_or(100);
    if let Some(listen) = args.value::<String>("--relay")? {
        let target: String = args.value("--target")?.context("--target")?;
        args.finish()?;
        return relay(&listen, target, Duration::from_millis(max_delay_ms));
    }
    let quick = args.flag("--quick");
    let nodes: usize = args.value("--nodes")?.unwrap_or(if quick { 4 } else { 12 });
    let minutes: f64 = args
        .value("--minutes")?
        .unwrap_or(if quick { 1.0 } else { 5.0 });
    let keepalive: String = args.value("--keepalive")?.unwrap_or_else(|| "1s".into());
    let loss: u8 = args.value("--loss")?.unwrap_or(5);
    args.finish()?;
    if !agad_tests::netns::running_as_root() {
        bail!("false-failures needs root (network namespaces, veth pairs, nftables): run as root");
    }
    let run_for = Duration::from_secs_f64(minutes * 60.0);

    let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
    let mut hosts = vec!["mor", "s1"];
    hosts.extend(names.iter().map(String::as_str));
    let net = Network::new(&hosts)?;
    let station_host = net.host("s1")?.clone();
    let mut options = processes::options("info");
    options.keepalive = keepalive.clone();
    let mut d = Deployment::start_on(&processes::agad_binary()?, options, net.host("mor")?)?;
    d.publish_inspector("cpu-mem")?;
    let mut topology =
        String::from("[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\nreport_window = \"10s\"\n");
    for n in &names {
        topology += &format!(
            "\n[[node]]\nname = \"{n}\"\ndomain = \"d1\"\naddress = \"{}\"\n",
            net.host(n)?.address()
        );
    }
    topology += "\n[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d1\"\n[assign.config]\nperiod = \"1s\"\nwindow_secs = 10\n";
    d.apply(&topology)?;
    let station = d.start_station_on("s1", &station_host)?;
    assert_eq!(
        station,
        format!("{}:{STATION_PORT}", station_host.address())
    );

    // The relay, inside the station's host: nodes → relay → station.
    let relay_address = format!("{}:{RELAY_PORT}", station_host.address());
    let mut relay_process = KillOnDrop(
        station_host
            .command(std::env::current_exe()?)
            .args([
                "--relay",
                &relay_address,
                "--target",
                &station,
                "--max-delay-ms",
                &max_delay_ms.to_string(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .context("starting the jitter relay")?,
    );
    for n in &names {
        d.start_node_on(n, &relay_address, net.host(n)?)?;
    }
    d.wait_for("every node connected with cpu-mem running", |d| {
        Ok(names
            .iter()
            .all(|n| d.log(n).contains("deployment with module bytes"))
            .then_some(()))
    })?;
    for n in &names {
        net.set_loss(n, loss)?;
    }
    // The faults are really there: ICMP loss measured, the relay in the path.
    let ping = net.host("n1")?.run(
        "ping",
        &[
            "-q",
            "-c",
            "400",
            "-i",
            "0.01",
            "-W",
            "1",
            &station_host.address().to_string(),
        ],
    );
    let measured = ping
        .as_deref()
        .unwrap_or_default()
        .split(", ")
        .find(|part| part.ends_with("packet loss"))
        .unwrap_or("no ping result")
        .to_owned();
    let through_relay = d
        .log("s1")
        .lines()
        .filter(|l| {
            l.contains("child registered")
                && l.contains(&format!("from={}:", station_host.address()))
        })
        .count();
    println!(
        "check: n1 → s1 ICMP echo, 400 requests: {measured} (expected about {:.1} %, a round trip crosses the lossy link twice); \
         {through_relay} of {nodes} node sessions come from the relay",
        100.0 * (1.0 - (1.0 - f64::from(loss) / 100.0).powi(2))
    );

    println!(
        "false-failures: {nodes} real nodes (agad node, cpu-mem every 1 s) on their own hosts, keep-alive {keepalive}, \
         {loss} % loss each way on every node's link, 0–{max_delay_ms} ms relay delay ({} ms mean jitter), for {}; machine load {}",
        max_delay_ms / 2,
        duration(run_for),
        agad_benchmarks::procfs::machine_load()
    );
    let mut baseline: Vec<(String, usize)> = vec![("s1".to_owned(), d.log("s1").len())];
    baseline.extend(names.iter().map(|n| (n.clone(), d.log(n).len())));
    let start = Instant::now();
    let mut next_report = Duration::from_secs(60);
    while start.elapsed() < run_for {
        std::thread::sleep(Duration::from_secs(1));
        d.check()?;
        if let Some(status) = relay_process.0.try_wait()? {
            bail!("the jitter relay exited ({status})");
        }
        if start.elapsed() >= next_report {
            let (stale, ended, _) = station_counts(&d, &baseline);
            println!(
                "  {}: {stale} stale declarations, {ended} sessions ended so far",
                duration(start.elapsed())
            );
            next_report += Duration::from_secs(60);
        }
    }
    let covered = start.elapsed();
    let (stale, ended, registered) = station_counts(&d, &baseline);
    let link_downs: usize = names
        .iter()
        .map(|n| since(&d, &baseline, n).matches("link down").count())
        .sum();
    let node_hours = nodes as f64 * covered.as_secs_f64() / 3600.0;
    println!(
        "covered: {node_hours:.2} node-hours ({nodes} nodes × {})",
        duration(covered)
    );
    println!(
        "false failure declarations at the domain manager: {stale} stale ({:.2} per node-hour), \
         {ended} sessions ended ({:.2} per node-hour), {registered} re-registrations",
        stale as f64 / node_hours,
        ended as f64 / node_hours
    );
    println!(
        "links given up by the nodes: {link_downs} ({:.2} per node-hour)",
        link_downs as f64 / node_hours
    );
    let accused = d
        .alarms()?
        .into_iter()
        .filter(|a| a.raised && is_guardian_alarm(a))
        .count();
    println!(
        "guardian accusations (host down, agent down) in BIG: {accused} ({:.2} per node-hour)",
        accused as f64 / node_hours
    );
    println!("goal: 0 false failure declarations");
    Ok(())
}

/// What `name` logged since the baseline.
fn since(d: &Deployment, baseline: &[(String, usize)], name: &str) -> String {
    let from = baseline
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, len)| *len);
    d.log(name).get(from..).unwrap_or_default().to_owned()
}

/// (stale declarations, sessions ended, sessions registered) at the station
/// since the baseline.
fn station_counts(d: &Deployment, baseline: &[(String, usize)]) -> (usize, usize, usize) {
    let log = since(d, baseline, "s1");
    (
        log.matches("child stale").count(),
        log.matches("session ended").count(),
        log.matches("child registered").count(),
    )
}

/// The relay, inside the station's namespace, until killed.
fn relay(listen: &str, target: String, max_delay: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("relay: binding {listen}"))?;
        jitter_relay(listener, target, max_delay).await;
        Ok(())
    })
}

/// A child process killed (and reaped) on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
