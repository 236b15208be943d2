//! `traffic`: management bytes per hour that leave a node running AGAD's
//! inspectors, against the bytes a central SNMP v2c poller exchanges with
//! the node's agent for the same metrics.
//!
//! **AGAD side.** The five built-in inspectors run in-process in a real
//! [`Node`] as they would be deployed: sampling every 10 s, one summary per
//! series per 60 s window. Time is scaled ×10 (`period=1s`,
//! `window_secs=6`), which keeps the ticks per window (6) and so the
//! messages per window identical. Every alarm and report the node emits is
//! encoded as it would travel (`bincode::serde::encode_to_vec`, standard
//! config) and its bytes counted over `--windows N` windows' time after one
//! warm-up window. Per hour: each module's report bytes per report window
//! (told apart by `window_start_ms`) × 60, plus alarms and faults scaled by
//! time. The table also shows the samples per window the inspectors saw.
//!
//! **Poller side.** The OIDs a lean central poller would read for the same
//! metrics are found by walking the real `snmpd` (not counted): UCD memory
//! and load, hrProcessorLoad per core (or the ssCpuRaw counters when the
//! agent has no processor rows), hrStorage size/used per fixed-disk
//! filesystem, the eight ifTable/ifXTable columns if-health itself reads for
//! every interface it watches (all but loopback), hrSWRun status/CPU/memory
//! per watched process, and the snmp-threshold OID. (When an inspector
//! reports per subject, only the subjects it reported are polled.) Then,
//! during the same measured interval, it reads exactly those OIDs once per
//! (scaled) 10 s round, with one GET unless the
//! agent answers `tooBig`, through a UDP relay on loopback that counts every
//! datagram's payload both ways. Figures are printed as payload and with 28
//! bytes of IPv4+UDP header per datagram.
//!
//! **48 interfaces.** The same comparison for if-health on a device with 48
//! interfaces: a network namespace `agad-bench-<pid>` with 48 dummy links
//! (veth pairs on kernels without the dummy driver; plus lo, which neither
//! side watches), its own snmpd, and this program re-executed inside it
//! (`ip netns exec <ns> traffic --inner-48`). The namespace is deleted
//! afterwards, on error and on Ctrl-C too. Goal: AGAD ≤ 3 % of the polling
//! bytes. This part needs root; without root the program fails (it does not
//! skip silently; `--host-only` skips it on purpose).
//!
//! Run (about 2.5 minutes by default, all traffic on loopback):
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! sudo target/release/traffic               # 10 windows per part
//! sudo target/release/traffic --quick       # 3 windows per part
//! sudo target/release/traffic --windows 20
//! ```

use agad_benchmarks::args::Args;
use agad_benchmarks::builtins::{Signed, THRESHOLD_OID, module_config, sign_all};
use agad_benchmarks::poller::{self, Poller, Relay, Targets, Traffic};
use agad_benchmarks::procfs::{machine_load, own_comm};
use agad_benchmarks::stats::bytes;
use agad_protocol::{Capability, SecretKey};
use agad_runtime::{Event, ModuleConfig, Node, NodeSettings, RestartPolicy};
use agad_tests::netns::{Netns, running_as_root};
use agad_tests::snmpd::{Snmpd, V2C_COMMUNITY};
use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

const HELP: &str =
    "traffic: AGAD bytes/hour (alarms + reports) vs an SNMP v2c poller for the same metrics
usage: traffic [--quick] [--windows N] [--host-only]
  --windows N   report windows measured per part (default 10; --quick 3); each takes 6 s
  --host-only   skip the 48-interface part (which needs root and a network namespace)
run as root: the 48-interface part creates a network namespace and re-runs this
program inside it with --inner-48 (internal)";

/// Real sampling period and report window, and the scale used to run them.
const REAL_PERIOD_SECS: u64 = 10;
const REAL_WINDOW_SECS: u64 = 60;
const SCALE: u64 = 10;
const PERIOD: Duration = Duration::from_secs(REAL_PERIOD_SECS / SCALE);
const WINDOW: Duration = Duration::from_secs(REAL_WINDOW_SECS / SCALE);
const WINDOWS_PER_HOUR: f64 = 3600.0 / REAL_WINDOW_SECS as f64;
const ROUNDS_PER_HOUR: f64 = 3600.0 / REAL_PERIOD_SECS as f64;
/// A name of realistic length: it is in every alarm and report.
const NODE_NAME: &str = "edge-node-017";
const DUMMY_INTERFACES: usize = 48;
const GOAL_48_PERCENT: f64 = 3.0;

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let inner = args.flag("--inner-48");
    let host_only = args.flag("--host-only");
    let windows: u32 = args
        .value("--windows")?
        .unwrap_or(if quick { 3 } else { 10 });
    args.finish()?;
    if windows == 0 {
        bail!("--windows must be at least 1");
    }
    if inner {
        return inner_48(windows);
    }
    if !host_only && !running_as_root() {
        bail!(
            "traffic needs root for its 48-interface part (it creates a network namespace with \
             48 dummy interfaces and runs snmpd in it).\nRun it as root (sudo target/release/traffic), \
             or pass --host-only to measure only this host and skip that part on purpose."
        );
    }

    eprintln!("== host part: starting snmpd on a loopback port ==");
    let snmpd = Snmpd::start();
    let key = SecretKey::generate();
    let signed = sign_all(&key)?;
    let watched = vec!["snmpd".to_owned(), own_comm()];
    let outcome = run_comparison(&key, &signed, snmpd.address(), &watched, windows)?;
    drop(snmpd);
    outcome.print(
        &format!(
            "host: {} inspectors at {REAL_PERIOD_SECS} s sampling, {REAL_WINDOW_SECS} s summaries",
            signed.len()
        ),
        windows,
        None,
    );

    if host_only {
        println!("\n(48-interface part skipped: --host-only)");
        return Ok(());
    }
    outer_48(windows)
}

/// What one comparison measured.
struct Outcome {
    /// Per module, what it emitted during the measured interval.
    modules: BTreeMap<String, ModuleTally>,
    /// Real (unscaled) seconds the measured interval stands for.
    real_secs: f64,
    traffic: Traffic,
    rounds: u64,
    set: poller::PollSet,
    gets_per_round: usize,
    missing_per_round: usize,
}

#[derive(Debug, Default, Clone)]
struct ModuleTally {
    /// Report windows seen, by their start (ms).
    windows: BTreeSet<u64>,
    report_bytes: u64,
    summaries: u64,
    /// Samples per window (the largest `count` among a report's summaries).
    ticks_per_window: Vec<u32>,
    alarms: u64,
    faults: u64,
    /// Alarms and faults: extrapolated by time, not by window.
    other_bytes: u64,
}

impl ModuleTally {
    fn report_bytes_per_window(&self) -> f64 {
        self.report_bytes as f64 / self.windows.len().max(1) as f64
    }

    /// Reports per window × 60 windows, plus alarms and faults per hour.
    fn per_hour(&self, real_secs: f64) -> f64 {
        self.report_bytes_per_window() * WINDOWS_PER_HOUR
            + self.other_bytes as f64 * 3600.0 / real_secs
    }
}

impl Outcome {
    fn agad_per_hour(&self) -> f64 {
        self.modules
            .values()
            .map(|t| t.per_hour(self.real_secs))
            .sum()
    }

    fn poller_per_hour(&self, with_headers: bool) -> f64 {
        let total = if with_headers {
            self.traffic.with_headers()
        } else {
            self.traffic.payload()
        };
        total as f64 / self.rounds.max(1) as f64 * ROUNDS_PER_HOUR
    }

    fn print(&self, title: &str, windows: u32, goal_percent: Option<f64>) {
        println!();
        println!("== traffic, {title} ==");
        println!("machine: {}", machine_load());
        println!(
            "(time scaled ×{SCALE}: period {} s, window_secs {}; {windows} windows' time measured after one warm-up window)",
            PERIOD.as_secs(),
            WINDOW.as_secs()
        );
        println!(
            "{:<15} {:>7} {:>9} {:>9} {:>7} {:>7} {:>13} {:>11}",
            "module",
            "windows",
            "ticks/win",
            "summ/win",
            "alarms",
            "faults",
            "report B/win",
            "B/hour"
        );
        for (name, t) in &self.modules {
            let ticks = if t.ticks_per_window.is_empty() {
                "-".to_owned()
            } else {
                let mean = t
                    .ticks_per_window
                    .iter()
                    .map(|&n| f64::from(n))
                    .sum::<f64>()
                    / t.ticks_per_window.len() as f64;
                format!("{mean:.1}")
            };
            println!(
                "{:<15} {:>7} {:>9} {:>9.1} {:>7} {:>7} {:>13.0} {:>11.0}",
                name,
                t.windows.len(),
                ticks,
                t.summaries as f64 / t.windows.len().max(1) as f64,
                t.alarms,
                t.faults,
                t.report_bytes_per_window(),
                t.per_hour(self.real_secs)
            );
        }
        let agad = self.agad_per_hour();
        let payload = self.poller_per_hour(false);
        let headers = self.poller_per_hour(true);
        println!(
            "(B/hour = report bytes per window × 60 + alarm and fault bytes scaled to an hour)"
        );
        println!(
            "AGAD (alarms + reports, bincode 2 payload):        {:>12.0} B/hour  ({})",
            agad,
            bytes(agad)
        );
        println!(
            "SNMP v2c poller, UDP payload:                      {:>12.0} B/hour  ({})",
            payload,
            bytes(payload)
        );
        println!(
            "SNMP v2c poller, with 28 B IP+UDP per datagram:    {:>12.0} B/hour  ({})",
            headers,
            bytes(headers)
        );
        println!(
            "poller: {} OIDs, {} GET request(s) per round, {} rounds measured, {} datagrams, \
             {:.0} B requests + {:.0} B responses per round{}",
            self.set.len(),
            self.gets_per_round,
            self.rounds,
            self.traffic.datagrams,
            self.traffic.request_bytes as f64 / self.rounds.max(1) as f64,
            self.traffic.response_bytes as f64 / self.rounds.max(1) as f64,
            if self.missing_per_round > 0 {
                format!(
                    ", {} noSuch* answers in the last round",
                    self.missing_per_round
                )
            } else {
                String::new()
            }
        );
        for (what, oids) in &self.set.groups {
            println!("  {:>4} OIDs  {what}", oids.len());
        }
        let ratio = agad * 100.0 / payload.max(1.0);
        let ratio_h = agad * 100.0 / headers.max(1.0);
        println!(
            "ratio AGAD / poller: {ratio:.2} % of the poller's payload ({ratio_h:.2} % with IP+UDP headers), \
             i.e. the poller moves {:.1}× more",
            payload / agad.max(1.0)
        );
        if let Some(goal) = goal_percent {
            println!(
                "goal ≤ {goal:.0} % of the polling bytes: {}",
                if ratio <= goal { "met" } else { "MISSED" }
            );
        }
    }
}

/// Runs `modules` in an in-process node reading `agent`, and a poller for
/// the same metrics through a counting relay, over `windows` windows.
fn run_comparison(
    key: &SecretKey,
    modules: &[Signed],
    agent: SocketAddr,
    watched: &[String],
    windows: u32,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new().prefix("agad-traffic-").tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let agent_config = agad_runtime::AgentConfig::v2c("local", &agent.to_string(), V2C_COMMUNITY);
    let settings = NodeSettings {
        name: NODE_NAME.into(),
        agents: Arc::from(vec![agent_config]),
        policy: Capability::ALL.to_vec(),
        host_policy: Default::default(),
        default_period: PERIOD,
        restart: RestartPolicy::default(),
        ceilings: Default::default(),
        output: Default::default(),
        disk: Default::default(),
        crash_loop: Default::default(),
        integrity: Default::default(),
    };
    let names: BTreeSet<&str> = modules.iter().map(|m| m.name).collect();

    runtime.block_on(async {
        let node = Node::open(settings, vec![key.public()], dir.path())?;
        let (events_tx, mut events) = mpsc::channel::<Event>(4096);
        let (stop, shutdown) = watch::channel(false);
        // Compile first, so that every module starts ticking at the same time.
        let mut linked = Vec::new();
        for m in modules {
            linked.push((
                m.name,
                node.load(&m.bundle)
                    .with_context(|| format!("loading {}", m.name))?,
            ));
        }
        let t0 = Instant::now();
        for (name, module) in linked {
            let mut values = vec![
                ("period".to_owned(), format!("{}s", PERIOD.as_secs())),
                ("window_secs".to_owned(), WINDOW.as_secs().to_string()),
            ];
            values.extend(module_config(name, watched));
            node.start_inspector(
                module,
                ModuleConfig { values },
                events_tx.clone(),
                shutdown.clone(),
            )
            .await
            .with_context(|| format!("starting {name}"))?;
        }
        drop(events_tx);

        // Warm-up: the first window, whose reports name the subjects.
        let mut seen: Vec<(Instant, Event)> = Vec::new();
        collect_until(&mut events, &mut seen, t0 + WINDOW + Duration::from_secs(1)).await;
        let subjects = |module: &str| -> Option<Vec<String>> {
            let list: BTreeSet<String> = seen
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::Report(r) if r.module == module => {
                        Some(r.summaries.iter().map(|s| s.subject.clone()))
                    }
                    _ => None,
                })
                .flatten()
                .filter(|s| !s.is_empty())
                .collect();
            (!list.is_empty()).then(|| list.into_iter().collect())
        };
        for (_, e) in &seen {
            if let Event::Fault(f) = e {
                eprintln!(
                    "warning: {} faulted during warm-up: {:?} {}",
                    f.module, f.kind, f.message
                );
            }
        }
        let targets = Targets {
            host: names.contains("cpu-mem"),
            filesystems: names.contains("disk-space").then(|| subjects("disk-space")),
            interfaces: names.contains("if-health").then(|| subjects("if-health")),
            processes: if names.contains("app-watch") {
                watched.to_vec()
            } else {
                Vec::new()
            },
            extra: if names.contains("snmp-threshold") {
                vec![poller::parse(THRESHOLD_OID)?]
            } else {
                Vec::new()
            },
        };
        let set = tokio::task::block_in_place(|| poller::discover(agent, V2C_COMMUNITY, &targets))?;
        let snmp_poller = tokio::task::block_in_place(|| Poller::new(agent, V2C_COMMUNITY, &set))?;
        let gets_per_round = snmp_poller.requests_per_round();
        let relay = Relay::start(agent)?;

        // Measured interval: whole windows, starting mid-window so that no
        // window boundary (where reports are emitted) sits on an edge.
        let from = t0 + WINDOW + WINDOW / 2;
        let until = from + WINDOW * windows;
        let rounds = u64::from(windows) * (WINDOW.as_secs() / PERIOD.as_secs());
        let relay_addr = relay.address();
        let polling = std::thread::spawn(move || -> anyhow::Result<poller::Round> {
            let mut last = poller::Round::default();
            for i in 0..rounds {
                let at = from + PERIOD * u32::try_from(i).unwrap_or(u32::MAX);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                last = snmp_poller.round(relay_addr)?;
            }
            Ok(last)
        });
        collect_until(&mut events, &mut seen, until).await;
        let _ = stop.send(true);
        let last_round = tokio::task::block_in_place(|| polling.join())
            .map_err(|_| anyhow::anyhow!("poller thread panicked"))??;
        let traffic = relay.traffic();

        let mut tally: BTreeMap<String, ModuleTally> = names
            .iter()
            .map(|n| ((*n).to_owned(), ModuleTally::default()))
            .collect();
        for (at, event) in &seen {
            if *at < from || *at >= until {
                continue;
            }
            match event {
                Event::Alarm(a) => {
                    let t = tally.entry(a.module.clone()).or_default();
                    t.alarms += 1;
                    t.other_bytes += encoded(a)?;
                }
                Event::Report(r) => {
                    let t = tally.entry(r.module.clone()).or_default();
                    t.report_bytes += encoded(r)?;
                    t.summaries += r.summaries.len() as u64;
                    t.windows
                        .extend(r.summaries.iter().map(|s| s.window_start_ms));
                    if let Some(n) = r.summaries.iter().map(|s| s.count).max() {
                        t.ticks_per_window.push(n);
                    }
                }
                Event::Fault(f) => {
                    eprintln!("warning: {} faulted: {:?} {}", f.module, f.kind, f.message);
                    let t = tally.entry(f.module.clone()).or_default();
                    t.faults += 1;
                    t.other_bytes += encoded(f)?;
                }
            }
        }
        Ok(Outcome {
            modules: tally,
            real_secs: (WINDOW * windows).as_secs_f64() * SCALE as f64,
            traffic,
            rounds,
            set,
            gets_per_round,
            missing_per_round: last_round.missing,
        })
    })
}

fn encoded<T: serde::Serialize>(value: &T) -> anyhow::Result<u64> {
    let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .context("bincode encoding")?;
    Ok(bytes.len() as u64)
}

async fn collect_until(
    events: &mut mpsc::Receiver<Event>,
    into: &mut Vec<(Instant, Event)>,
    until: Instant,
) {
    let deadline = tokio::time::Instant::from_std(until);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(e) => into.push((Instant::now(), e)),
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Creates the 48-interface namespace and runs this program inside it.
fn outer_48(windows: u32) -> anyhow::Result<()> {
    let ns = Netns::with_links(DUMMY_INTERFACES)?;
    eprintln!("== 48-interface part: network namespace {} ==", ns.name());
    let me = std::env::current_exe()?;
    ns.run(&me, &["--inner-48", "--windows", &windows.to_string()])
}

/// Inside the namespace: snmpd on its loopback, if-health against it.
fn inner_48(windows: u32) -> anyhow::Result<()> {
    let links = std::fs::read_dir("/sys/class/net")?.count();
    if links < DUMMY_INTERFACES {
        bail!(
            "--inner-48 runs inside the benchmark's namespace (it sees {links} interfaces here, not {DUMMY_INTERFACES}+)"
        );
    }
    let snmpd = Snmpd::start();
    let key = SecretKey::generate();
    let only: Vec<Signed> = sign_all(&key)?
        .into_iter()
        .filter(|s| s.name == "if-health")
        .collect();
    if only.is_empty() {
        bail!("no built-in inspector named if-health");
    }
    let outcome = run_comparison(&key, &only, snmpd.address(), &[], windows)?;
    drop(snmpd);
    outcome.print(
        &format!("device with {DUMMY_INTERFACES} interfaces: if-health vs polling the ifTable"),
        windows,
        Some(GOAL_48_PERCENT),
    );
    Ok(())
}
