//! `footprint`: memory (RSS and PSS) and CPU of the managed `agad node` —
//! the process users deploy, under a real domain manager — running the five
//! built-in inspectors at 1 s, beside its domain manager and top manager,
//! and beside the two programs an operator would run instead: Debian's
//! `snmpd` polled by a central station, and `prometheus-node-exporter`
//! scraped by Prometheus.
//!
//! What runs, all on loopback, as separate release processes:
//!
//! - a real hierarchy ([`agad_tests::hierarchy`]): `agad mor`, one
//!   `agad dominio` and one managed `agad node` (mutual TLS, keep-alive
//!   every 10 s), the five built-in inspectors published, assigned with
//!   `period = "1s"` and deployed by the domain manager; if-health and
//!   snmp-threshold read a real `snmpd` named in the node's `node.toml` (that
//!   agent serves the node only and is not measured);
//! - a second `snmpd` and `prometheus-node-exporter` (default collectors,
//!   installed with apt when missing and running as root), measured first
//!   idle and then under polling: once a second, one SNMP v2c round of the
//!   equivalent metrics (CPU, memory, load, filesystems, every interface's
//!   counters, the watched processes, the threshold OID) and one scrape.
//!
//! Two phases of `--secs` each after a warm-up: (1) peers idle, (2) peers
//! polled once a second. The AGAD processes do the same work in both. Every
//! second it reads `/proc/<pid>/status` (VmRSS) and
//! `/proc/<pid>/smaps_rollup` (Pss) of each process, and `/proc/<pid>/stat`
//! (utime + stime) at both ends of each phase, and prints RSS (mean, max),
//! PSS (mean), peak RSS and CPU as % of one core, with the goals: managed
//! node RSS ≤ 32 MB and CPU ≤ 1 % of one core; domain manager and top
//! manager RSS ≤ 20 MB each (MB = 10⁶ bytes).
//!
//! Run (needs the release `agad` binary beside this one; about 3 minutes by default):
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/footprint                 # 20 s warm-up, 60 s per phase
//! target/release/footprint --quick         # 5 s warm-up, 15 s per phase
//! target/release/footprint --warmup 30 --secs 120
//! ```
//!
//! The machine's other load shows up in nobody's figures but its own; the
//! CPU figures are still best read on an otherwise idle machine.

use agad_benchmarks::args::Args;
use agad_benchmarks::builtins::{THRESHOLD_OID, module_config};
use agad_benchmarks::poller::{self, Poller, Targets};
use agad_benchmarks::processes;
use agad_benchmarks::procfs::{self, ProcSample};
use agad_benchmarks::stats::bytes;
use agad_tests::hierarchy::Deployment;
use agad_tests::netns::running_as_root;
use agad_tests::snmpd::{Snmpd, V2C_COMMUNITY};
use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HELP: &str =
    "footprint: RSS, PSS and CPU of the managed `agad node` (5 inspectors at 1 s, under a real
agad dominio and agad mor) vs snmpd and node-exporter, idle and polled once a second
usage: footprint [--quick] [--warmup SECS] [--secs SECS]
  --warmup SECS  time after the deployment runs, before measuring (default 20; --quick 5)
  --secs SECS    measured interval per phase (default 60; --quick 15)
needs target/release/agad: cargo build --release -p agad -p agad-benchmarks";

const NODE_RSS_GOAL_BYTES: f64 = 32.0 * 1000.0 * 1000.0;
const MANAGER_RSS_GOAL_BYTES: f64 = 20.0 * 1000.0 * 1000.0;
const CPU_GOAL_PERCENT: f64 = 1.0;
const STATION: &str = "s1";
const NODE: &str = "footprint";
/// The top manager's process in the harness.
const MOR: &str = "mor";

/// A child process killed (and reaped) on drop.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What is measured, and its goal.
struct Measured {
    label: &'static str,
    pid: u32,
    /// (RSS goal in bytes, CPU goal in % of one core)
    goal: Option<(f64, Option<f64>)>,
}

/// One phase's readings of every process.
struct Phase {
    wall: Duration,
    first: Vec<ProcSample>,
    last: Vec<ProcSample>,
    rss: Vec<Vec<u64>>,
    pss: Vec<Vec<u64>>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let warmup = Duration::from_secs(
        args.value("--warmup")?
            .unwrap_or(if quick { 5 } else { 20 }),
    );
    let secs = Duration::from_secs(args.value("--secs")?.unwrap_or(if quick { 15 } else { 60 }));
    args.finish()?;

    let exporter_bin = node_exporter_binary()?;
    eprintln!("starting two snmpd agents (one the node reads, one the poller reads)...");
    let node_snmpd = Snmpd::start();
    let polled_snmpd = Snmpd::start();
    let watched = vec!["snmpd".to_owned(), "agad".to_owned()];

    eprintln!("starting agad mor, agad dominio and the managed agad node...");
    let mut d = processes::start("info")?;
    deploy(&mut d, &node_snmpd, &watched)?;

    let exporter_port = free_tcp_port()?;
    let exporter_addr: SocketAddr = ([127, 0, 0, 1], exporter_port).into();
    let exporter_log = d.path("node-exporter.log");
    let exporter = Guarded(
        Command::new(&exporter_bin)
            .arg(format!("--web.listen-address={exporter_addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&exporter_log)?)
            .spawn()
            .with_context(|| format!("running {}", exporter_bin.display()))?,
    );
    wait_for_http(exporter_addr, Duration::from_secs(10)).with_context(|| {
        format!(
            "node-exporter did not answer; log:\n{}",
            std::fs::read_to_string(&exporter_log).unwrap_or_default()
        )
    })?;

    // What a central poller would read from the polled agent.
    let targets = Targets {
        host: true,
        filesystems: Some(None),
        interfaces: Some(None),
        processes: watched.clone(),
        extra: vec![poller::parse(THRESHOLD_OID)?],
    };
    let set = poller::discover(polled_snmpd.address(), V2C_COMMUNITY, &targets)?;
    let snmp_poller = Poller::new(polled_snmpd.address(), V2C_COMMUNITY, &set)?;
    let gets_per_round = snmp_poller.requests_per_round();

    let measured = [
        Measured {
            label: "agad node (managed, 5 inspectors at 1 s)",
            pid: d.pid(NODE)?,
            goal: Some((NODE_RSS_GOAL_BYTES, Some(CPU_GOAL_PERCENT))),
        },
        Measured {
            label: "agad dominio (1 node)",
            pid: d.pid(STATION)?,
            goal: Some((MANAGER_RSS_GOAL_BYTES, None)),
        },
        Measured {
            label: "agad mor (1 domain)",
            pid: d.pid(MOR)?,
            goal: Some((MANAGER_RSS_GOAL_BYTES, None)),
        },
        Measured {
            label: "snmpd (the polled one)",
            pid: polled_snmpd.pid(),
            goal: None,
        },
        Measured {
            label: "prometheus-node-exporter",
            pid: exporter.0.id(),
            goal: None,
        },
    ];
    eprintln!(
        "warming up {} s, then {} s with the peers idle and {} s with the peers polled once a second...",
        warmup.as_secs(),
        secs.as_secs(),
        secs.as_secs()
    );
    sleep_checking(warmup, &mut d)?;
    let idle = measure(&measured, secs, &mut d)?;

    // The polling loop: once a second, one SNMP round and one scrape.
    let stop = Arc::new(AtomicBool::new(false));
    let scraped_bytes = Arc::new(AtomicU64::new(0));
    let rounds = Arc::new(AtomicU64::new(0));
    let polling = {
        let (stop, scraped_bytes, rounds) = (stop.clone(), scraped_bytes.clone(), rounds.clone());
        let snmp_addr = polled_snmpd.address();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                snmp_poller.round(snmp_addr)?;
                let body = scrape(exporter_addr)?;
                scraped_bytes.fetch_add(body as u64, Ordering::Relaxed);
                rounds.fetch_add(1, Ordering::Relaxed);
                next += Duration::from_secs(1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(())
        })
    };
    // A few rounds first, so the peers' caches are as polling keeps them.
    sleep_checking(Duration::from_secs(5), &mut d)?;
    let polled = measure(&measured, secs, &mut d)?;
    stop.store(true, Ordering::Relaxed);
    match polling.join() {
        Ok(result) => result.context("polling loop")?,
        Err(_) => bail!("polling thread panicked"),
    }

    println!();
    println!("machine: {}", procfs::machine_load());
    print_phase(
        "(1) peers idle (nobody polls snmpd or node-exporter)",
        &measured,
        &idle,
    );
    print_phase(
        "(2) peers polled once a second (one SNMP round, one /metrics scrape)",
        &measured,
        &polled,
    );
    println!();
    println!(
        "poller: {} rounds; SNMP: {} OIDs in {} GET(s) per round; node-exporter: {} per scrape on average",
        rounds.load(Ordering::Relaxed),
        set.len(),
        gets_per_round,
        bytes(
            scraped_bytes.load(Ordering::Relaxed) as f64
                / rounds.load(Ordering::Relaxed).max(1) as f64
        )
    );
    for (what, oids) in &set.groups {
        println!("  {:>4} OIDs  {what}", oids.len());
    }
    let alarms = d.alarms().map(|a| a.len()).unwrap_or_default();
    println!(
        "agad: the node ran the five inspectors at 1 s (10 s keep-alive, 60 s windows) all along; {alarms} alarms reached the top manager"
    );
    println!(
        "CPU % is (utime+stime) over the phase ÷ wall time, of one core; RSS and PSS sampled once a second"
    );
    println!(
        "PSS = private pages + a share of the pages mapped by other processes too (the three agad processes share one binary's text);"
    );
    println!(
        "VmHWM = peak RSS since start; goals in MB = 10⁶ bytes (32 MB = 30.5 MiB, 20 MB = 19.1 MiB); goals judged on the mean RSS"
    );
    println!(
        "the node's own SNMP agent (read by if-health and snmp-threshold) is a separate snmpd and is not counted"
    );
    drop(exporter);
    Ok(())
}

/// Publishes the five inspectors, assigns them at 1 s to the node, starts
/// the domain manager and the node and waits until the deployment runs.
fn deploy(d: &mut Deployment, agent: &Snmpd, watched: &[String]) -> anyhow::Result<()> {
    let mut topology = format!(
        "[[domain]]\nname = \"d1\"\nstations = [\"{STATION}\"]\n\n[[node]]\nname = \"{NODE}\"\ndomain = \"d1\"\n"
    );
    for name in [
        "cpu-mem",
        "disk-space",
        "if-health",
        "app-watch",
        "snmp-threshold",
    ] {
        d.publish_inspector(name)?;
        topology += &format!(
            "\n[[assign]]\nmodule = \"{name}\"\nnodes = [\"{NODE}\"]\n[assign.config]\nperiod = \"1s\"\n"
        );
        for (key, value) in module_config(name, watched) {
            topology += &format!("{key} = \"{value}\"\n");
        }
    }
    d.apply(&topology)?;
    let station = d.start_station(STATION)?;
    let v2c = agent.v2c_agent();
    let node_config = format!(
        "[[agents]]\nname = \"{}\"\naddress = \"{}\"\nversion = \"v2c\"\ncommunity = \"{}\"\n",
        v2c.name,
        v2c.address,
        v2c.community.as_deref().unwrap_or_default()
    );
    d.start_node_with_config(NODE, &station, &node_config)?;
    agad_benchmarks::hierarchy::wait_deployment_running(d, STATION)
}

/// Samples every process once a second for `secs`.
fn measure(measured: &[Measured], secs: Duration, d: &mut Deployment) -> anyhow::Result<Phase> {
    let sample =
        |m: &Measured| procfs::sample(m.pid).with_context(|| format!("{} exited", m.label));
    let first: Vec<ProcSample> = measured.iter().map(sample).collect::<anyhow::Result<_>>()?;
    let began = Instant::now();
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); measured.len()];
    let mut pss: Vec<Vec<u64>> = vec![Vec::new(); measured.len()];
    let mut last = first.clone();
    while began.elapsed() < secs {
        sleep_checking(
            Duration::from_secs(1).min(secs.saturating_sub(began.elapsed())),
            d,
        )?;
        for (i, m) in measured.iter().enumerate() {
            let s = sample(m)?;
            rss[i].push(s.rss_bytes);
            pss[i].push(procfs::pss_bytes(m.pid)?);
            last[i] = s;
        }
    }
    Ok(Phase {
        wall: began.elapsed(),
        first,
        last,
        rss,
        pss,
    })
}

fn mean(values: &[u64]) -> f64 {
    values.iter().sum::<u64>() as f64 / values.len().max(1) as f64
}

fn print_phase(title: &str, measured: &[Measured], phase: &Phase) {
    let ticks_per_sec = procfs::clock_ticks_per_sec();
    println!();
    println!("== footprint {title}, {:.0} s ==", phase.wall.as_secs_f64());
    println!(
        "{:<42} {:>10} {:>10} {:>10} {:>10} {:>11}   goal",
        "process", "RSS mean", "RSS max", "PSS mean", "VmHWM", "CPU %1core"
    );
    for (i, m) in measured.iter().enumerate() {
        let rss = mean(&phase.rss[i]);
        let cpu = procfs::cpu_percent(&phase.first[i], &phase.last[i], phase.wall, ticks_per_sec);
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let goal = match m.goal {
            Some((rss_goal, cpu_goal)) => {
                let mut goal = format!(
                    "RSS ≤ {:.0} MB: {}",
                    rss_goal / 1e6,
                    verdict(rss <= rss_goal)
                );
                if let Some(cpu_goal) = cpu_goal {
                    goal += &format!(", CPU ≤ {cpu_goal:.0} %: {}", verdict(cpu <= cpu_goal));
                }
                goal
            }
            None => String::new(),
        };
        println!(
            "{:<42} {:>10} {:>10} {:>10} {:>10} {:>10.2}%   {goal}",
            m.label,
            bytes(rss),
            bytes(phase.rss[i].iter().copied().max().unwrap_or_default() as f64),
            bytes(mean(&phase.pss[i])),
            bytes(phase.last[i].peak_rss_bytes as f64),
            cpu
        );
    }
}

/// `prometheus-node-exporter`, installed with apt when missing and root.
fn node_exporter_binary() -> anyhow::Result<PathBuf> {
    let find = || {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
        dirs.into_iter()
            .map(|d| d.join("prometheus-node-exporter"))
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    if !running_as_root() {
        bail!(
            "prometheus-node-exporter is not installed; install it with\n    sudo apt-get install -y prometheus-node-exporter\n(or run this benchmark as root, which installs it)"
        );
    }
    eprintln!("installing prometheus-node-exporter with apt-get...");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = [
        "install",
        "-y",
        "--no-install-recommends",
        "prometheus-node-exporter",
    ];
    if !(apt(&install) || (apt(&["update"]) && apt(&install))) {
        bail!("`apt-get install -y prometheus-node-exporter` failed");
    }
    // Debian starts the packaged service on :9100; this benchmark runs its own.
    let _ = Command::new("systemctl")
        .args(["stop", "prometheus-node-exporter"])
        .stderr(Stdio::null())
        .status();
    find().context("prometheus-node-exporter was installed but is not on PATH")
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// One `GET /metrics` over a plain TCP connection; returns the body size.
fn scrape(addr: SocketAddr) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header end")?;
    if !response.starts_with(b"HTTP/1.0 200") && !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "node-exporter answered {}",
            String::from_utf8_lossy(&response[..head_end.min(80)])
        );
    }
    Ok(response.len() - head_end - 4)
}

fn wait_for_http(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match scrape(addr) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Sleeps, failing with the logs if an AGAD process exited meanwhile.
fn sleep_checking(d: Duration, deployment: &mut Deployment) -> anyhow::Result<()> {
    std::thread::sleep(d);
    deployment.check()
}
