//! `footprint`: memory (RSS) and CPU of the real node runtime running the
//! five built-in inspectors, beside the two programs an operator would run
//! instead: Debian's `snmpd` polled by a central station, and
//! `prometheus-node-exporter` scraped by Prometheus.
//!
//! What runs, all on loopback:
//!
//! - `agad node run` (the release binary next to this one) with the five
//!   built-in inspectors signed by a fresh key into a temporary directory,
//!   every one at `period=1s`; if-health and snmp-threshold read a real
//!   `snmpd` named in a `node.toml`. (That agent serves the node only and is
//!   not measured.)
//! - a second `snmpd`, polled once a second by this program over SNMP v2c
//!   for the equivalent metrics (CPU, memory, load, filesystems, every
//!   interface's counters, the watched processes, the threshold OID);
//! - `prometheus-node-exporter` with its default collectors on a free
//!   loopback port, scraped once a second over HTTP (installed with apt when
//!   missing and running as root).
//!
//! After a warm-up it reads `/proc/<pid>/status` (VmRSS, VmHWM) every second
//! and `/proc/<pid>/stat` (utime + stime) at both ends of the interval, and
//! prints RSS (mean, max, peak) and CPU as % of one core, with the node
//! runtime's goals (RSS ≤ 40 MB, CPU ≤ 1 % of one core).
//!
//! Run (needs the release `agad` binary beside this one; about 75 s by default):
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/footprint                 # 15 s warm-up, 60 s measured
//! target/release/footprint --quick         # 5 s warm-up, 15 s measured
//! target/release/footprint --warmup 30 --secs 120
//! ```
//!
//! The machine's other load shows up in nobody's figures but its own; the
//! CPU figures are still best read on an otherwise idle machine.

use agad_benchmarks::args::Args;
use agad_benchmarks::builtins::{THRESHOLD_OID, module_config, sign_all};
use agad_benchmarks::poller::{self, Poller, Targets};
use agad_benchmarks::processes;
use agad_benchmarks::procfs::{self, ProcSample};
use agad_benchmarks::stats::bytes;
use agad_protocol::SecretKey;
use agad_tests::netns::running_as_root;
use agad_tests::snmpd::Snmpd;
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HELP: &str =
    "footprint: RSS and CPU of `agad node run` (5 inspectors at 1 s) vs snmpd and node-exporter
usage: footprint [--quick] [--warmup SECS] [--secs SECS]
  --warmup SECS  time before measuring (default 15; --quick 5)
  --secs SECS    measured interval (default 60; --quick 15)
needs target/release/agad: cargo build --release -p agad -p agad-benchmarks";

const RSS_GOAL_BYTES: f64 = 40.0 * 1000.0 * 1000.0;
const CPU_GOAL_PERCENT: f64 = 1.0;

/// A child process killed (and reaped) on drop.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
            .unwrap_or(if quick { 5 } else { 15 }),
    );
    let secs = Duration::from_secs(args.value("--secs")?.unwrap_or(if quick { 15 } else { 60 }));
    args.finish()?;

    let agad = processes::agad_binary()?;
    let exporter_bin = node_exporter_binary()?;

    eprintln!("starting two snmpd agents (one the node reads, one the poller reads)...");
    let node_snmpd = Snmpd::start();
    let polled_snmpd = Snmpd::start();

    // The node's files: key, bundles, node.toml.
    let dir = tempfile::Builder::new()
        .prefix("agad-footprint-")
        .tempdir()?;
    let key = SecretKey::generate();
    let public = dir.path().join("publisher.pub");
    std::fs::write(&public, key.public().to_text())?;
    let mut bundle_paths = Vec::new();
    for s in sign_all(&key)? {
        let path = dir.path().join(format!("{}.agad", s.name));
        std::fs::write(&path, s.bundle.to_bytes())?;
        bundle_paths.push(path);
    }
    let agent = node_snmpd.v2c_agent();
    let node_toml = dir.path().join("node.toml");
    std::fs::write(
        &node_toml,
        format!(
            "name = \"footprint\"\n\n[[agents]]\nname = \"{}\"\naddress = \"{}\"\nversion = \"v2c\"\ncommunity = \"{}\"\n",
            agent.name,
            agent.address,
            agent.community.as_deref().unwrap_or_default()
        ),
    )?;
    let watched = vec!["snmpd".to_owned(), "agad".to_owned()];

    let mut command = Command::new(&agad);
    command.args(["node", "run", "--trust"]).arg(&public);
    command.arg("--node-config").arg(&node_toml);
    command.arg("--data-dir").arg(dir.path().join("data"));
    for b in &bundle_paths {
        command.arg("--bundle").arg(b);
    }
    command.args(["--config", "period=1s"]);
    for name in ["app-watch", "snmp-threshold"] {
        for (k, v) in module_config(name, &watched) {
            command.args(["--config", &format!("{name}:{k}={v}")]);
        }
    }
    let total = warmup + secs + Duration::from_secs(30);
    command.args(["--for", &format!("{}s", total.as_secs())]);
    let stderr_path = dir.path().join("agad.stderr");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?);
    let mut node = Guarded(
        command
            .spawn()
            .with_context(|| format!("running {}", agad.display()))?,
    );
    let node_pid = node.0.id();
    let events = Arc::new(AtomicU64::new(0));
    let faults = Arc::new(AtomicU64::new(0));
    let alarms = Arc::new(AtomicU64::new(0));
    let stdout = node.0.stdout.take().context("agad stdout")?;
    {
        let (events, faults, alarms) = (events.clone(), faults.clone(), alarms.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                events.fetch_add(1, Ordering::Relaxed);
                if line.contains("\"type\":\"alarm\"") {
                    alarms.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("\"type\":\"fault\"") {
                    faults.fetch_add(1, Ordering::Relaxed);
                    eprintln!("agad fault: {line}");
                }
            }
        });
    }

    let exporter_port = free_tcp_port()?;
    let exporter_addr: SocketAddr = ([127, 0, 0, 1], exporter_port).into();
    let exporter_log = dir.path().join("node-exporter.log");
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
            read(&exporter_log)
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
    let set = poller::discover(
        polled_snmpd.address(),
        agad_tests::snmpd::V2C_COMMUNITY,
        &targets,
    )?;
    let snmp_poller = Poller::new(
        polled_snmpd.address(),
        agad_tests::snmpd::V2C_COMMUNITY,
        &set,
    )?;
    let gets_per_round = snmp_poller.requests_per_round();

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

    let pids = [
        ("agad node run (5 inspectors, 1 s)", node_pid),
        ("snmpd (polled 1/s over SNMP)", polled_snmpd.pid()),
        ("prometheus-node-exporter (scraped 1/s)", exporter.0.id()),
    ];
    eprintln!(
        "warming up {} s, then measuring {} s (pids: agad {}, snmpd {}, node-exporter {})...",
        warmup.as_secs(),
        secs.as_secs(),
        pids[0].1,
        pids[1].1,
        pids[2].1
    );
    sleep_checking(warmup, &mut node, &stderr_path)?;

    let ticks_per_sec = procfs::clock_ticks_per_sec();
    let first: Vec<ProcSample> = pids
        .iter()
        .map(|(_, p)| procfs::sample(*p))
        .collect::<anyhow::Result<_>>()?;
    let began = Instant::now();
    let events_before = events.load(Ordering::Relaxed);
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); pids.len()];
    let mut last = first.clone();
    while began.elapsed() < secs {
        sleep_checking(
            Duration::from_secs(1).min(secs.saturating_sub(began.elapsed())),
            &mut node,
            &stderr_path,
        )?;
        for (i, (_, pid)) in pids.iter().enumerate() {
            let s = procfs::sample(*pid).with_context(|| format!("{} exited", pids[i].0))?;
            rss[i].push(s.rss_bytes);
            last[i] = s;
        }
    }
    let wall = began.elapsed();
    let events_during = events.load(Ordering::Relaxed) - events_before;
    stop.store(true, Ordering::Relaxed);
    match polling.join() {
        Ok(result) => result.context("polling loop")?,
        Err(_) => bail!("polling thread panicked"),
    }

    println!();
    println!("machine: {}", procfs::machine_load());
    println!(
        "== footprint over {:.0} s (after {} s warm-up), 2-core machine ==",
        wall.as_secs_f64(),
        warmup.as_secs()
    );
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}   goal",
        "process", "RSS mean", "RSS max", "VmHWM", "anon", "file", "CPU %1core"
    );
    for (i, (label, _)) in pids.iter().enumerate() {
        let mean = rss[i].iter().sum::<u64>() as f64 / rss[i].len().max(1) as f64;
        let max = rss[i].iter().copied().max().unwrap_or_default() as f64;
        let cpu = procfs::cpu_percent(&first[i], &last[i], wall, ticks_per_sec);
        let goal = if i == 0 {
            format!(
                "RSS ≤ 40 MB: {}, CPU ≤ 1%: {}",
                if max <= RSS_GOAL_BYTES {
                    "ok"
                } else {
                    "MISSED"
                },
                if cpu <= CPU_GOAL_PERCENT {
                    "ok"
                } else {
                    "MISSED"
                }
            )
        } else {
            String::new()
        };
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11.2}%   {goal}",
            label,
            bytes(mean),
            bytes(max),
            bytes(last[i].peak_rss_bytes as f64),
            bytes(last[i].rss_anon_bytes as f64),
            bytes(last[i].rss_file_bytes as f64),
            cpu
        );
    }
    println!();
    println!(
        "agad: {} events (alarm/report/fault JSON lines) during the interval; in the whole run {} alarms, {} faults",
        events_during,
        alarms.load(Ordering::Relaxed),
        faults.load(Ordering::Relaxed)
    );
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
    println!(
        "CPU % is (utime+stime) over the interval ÷ wall time, of one core; RSS sampled once a second"
    );
    println!(
        "VmHWM = peak RSS since start; anon/file = RssAnon/RssFile at the last sample; goal 40 MB = 40×10⁶ bytes"
    );
    println!(
        "the node's own SNMP agent (read by if-health and snmp-threshold) is a separate snmpd and is not counted"
    );
    drop(exporter);
    drop(node);
    Ok(())
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

/// Sleeps, failing with agad's stderr if it exited meanwhile.
fn sleep_checking(d: Duration, node: &mut Guarded, stderr: &Path) -> anyhow::Result<()> {
    std::thread::sleep(d);
    if let Some(status) = node.0.try_wait()? {
        bail!(
            "agad node run exited early ({status}); its stderr:\n{}",
            read(stderr)
        );
    }
    Ok(())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
