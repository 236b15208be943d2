//! `dominio-capacity`: how many nodes one domain manager serves within half
//! of one core, every node loading it as a real five-inspector node does.
//! Goal: ≥ 10,000 nodes.
//!
//! The domain manager and the top manager are the real `agad dominio` and
//! `agad mor` processes (the release binary beside this one), so that
//! `/proc/<pid>/stat` gives the CPU of each alone. The top manager's bases
//! are prepared before it starts: the station and every node enrolled and
//! active. Each level's topology (`agad topology apply`) lists that level's
//! nodes in one domain, nothing assigned (deploying is what
//! `deploy-latency` measures): a node listed but absent would be diagnosed
//! and alarmed about by the guardian, which is not the load measured here. The nodes are
//! simulated in this process (see `agad_benchmarks::hierarchy`): each has
//! its own certificate, connects with mutual TLS, acknowledges its
//! deployment and then loads the managers as a managed `agad node` with
//! the five built-in inspectors does:
//! - a keep-alive every 10 s (the first carries its five modules' states,
//!   later ones are empty, as `agad node` does when nothing changed), and
//!   an answer to the guardian's attestation challenge once a minute;
//! - once a minute, one batch of five reports, one per inspector, shaped
//!   like theirs on a host with two mounts, two interfaces and two watched
//!   processes (27 summaries: cpu-mem 5, disk-space 2, if-health 12,
//!   app-watch 6, snmp-threshold 2);
//! - alarms at `--alarms-per-hour` per node (default 1): an alarm raised
//!   (cpu-mem's `cpu.total`) and cleared 5 minutes later, each stored by
//!   the domain manager, matched against its knowledge base and sent on to
//!   the top manager.
//!
//! Node `i` fires at a fixed phase of each period, spread evenly over all
//! the nodes.
//!
//! The number of nodes ramps up by levels (2,500, 5,000, 10,000 and 15,000
//! by default). At each level the missing nodes connect, the load settles,
//! and a steady window (60 s: one report batch per node and one
//! consolidation) is measured: the domain manager's and the top manager's
//! CPU (utime + stime) as % of one core, their RSS, the reports and alarms
//! sent and acknowledged and how long acknowledgements took. The domain
//! manager stores every report and alarm in BICD and flushes (fsync)
//! before acknowledging it — slow disks show up in those latencies rather
//! than in its CPU. At the end the nodes stop sending and everything ever
//! sent must have been acknowledged.
//!
//! Run (needs the release `agad` binary beside this one; about 8 minutes
//! with the defaults, setup included):
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/dominio-capacity                      # 2500, 5000, 10000, 15000 nodes
//! target/release/dominio-capacity --quick              # 500 and 1000 nodes, 20 s windows
//! target/release/dominio-capacity --nodes 10000 --secs 90
//! ```
//!
//! It prints figures only; nothing here asserts a timing.

use agad_benchmarks::args::Args;
use agad_benchmarks::hierarchy::{self, DOMINIO, MOR, NodeLink, Pki};
use agad_benchmarks::processes;
use agad_benchmarks::procfs::{self, machine_load};
use agad_benchmarks::stats::{Timings, bytes, duration};
use agad_protocol::Area;
use agad_protocol::message::{Alarm, Comparison, Report, Severity, Summary};
use agad_protocol::wire::{Component, ComponentStatus, Control, Message, Queued, State, Upward};
use agad_tests::hierarchy::Deployment;
use anyhow::{Context, bail};
use rustls::ClientConfig;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

const HELP: &str = "dominio-capacity: nodes one `agad dominio` serves within 50 % of one core
  (per node: keep-alive every 10 s, the five inspectors' reports once a minute, alarms)
usage: dominio-capacity [--quick] [--nodes N,N,...] [--secs S] [--settle S] [--patience S]
                        [--alarms-per-hour N]
  --nodes N,...   levels, ramped up in order (default 2500,5000,10000,15000; --quick 500,1000)
  --secs S        steady window measured per level (default 60; --quick 20)
  --settle S      wait after the last node of a level connected (default 15; --quick 5)
  --patience S    longest wait for a level's nodes to connect (default 600)
  --alarms-per-hour N  alarms each node raises an hour, each cleared 5 min later (default 1)
needs target/release/agad: cargo build --release -p agad -p agad-benchmarks";

const KEEPALIVE: Duration = Duration::from_secs(10);
const REPORT_PERIOD: Duration = Duration::from_secs(60);
/// How long a simulated alarm stays raised.
const ALARM_CLEARS_AFTER: Duration = Duration::from_secs(300);
/// The inspectors whose states the first keep-alive carries.
const MODULES: [&str; 5] = [
    "cpu-mem",
    "disk-space",
    "if-health",
    "app-watch",
    "snmp-threshold",
];
const CPU_BUDGET_PERCENT: f64 = 50.0;
const GOAL_NODES: usize = 10_000;
/// TLS handshakes in flight at once while nodes connect (a manager lets one
/// source address hold 32: all simulated nodes share 127.0.0.1).
const CONNECTING: usize = 32;
/// Open files besides one socket per node (databases, listeners, ...).
const SPARE_FILES: u64 = 512;
/// How long after a window every report sent in it may take to be acknowledged.
const ACK_PATIENCE: Duration = Duration::from_secs(15);

/// One level, measured over its steady window.
struct Row {
    nodes: usize,
    connect: Duration,
    window: Duration,
    /// The domain manager's CPU, % of one core.
    cpu_percent: f64,
    rss: u64,
    /// The top manager's.
    mor_cpu_percent: f64,
    mor_rss: u64,
    /// This process (the simulated nodes), % of one core.
    own_cpu_percent: f64,
    keepalives: u64,
    sent: u64,
    acked: u64,
    /// Alarm frames (raises and clears) sent and acknowledged.
    alarms_sent: u64,
    alarms_acked: u64,
    ack: Option<Timings>,
    /// Every report sent until the window's end was acknowledged within
    /// [`ACK_PATIENCE`] after it.
    caught_up: bool,
    /// TLS bytes the nodes sent and read in the window.
    up: u64,
    down: u64,
}

/// What the simulated nodes did, summed.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    alarms_sent: AtomicU64,
    alarms_acked: AtomicU64,
    keepalives: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    /// Frames read since the start, by kind (what the manager sends).
    read: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Report → acknowledgement, since the last `take_latencies`.
    latencies: Mutex<Vec<Duration>>,
    failures: Mutex<Vec<String>>,
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    sent: u64,
    acked: u64,
    alarms_sent: u64,
    alarms_acked: u64,
    keepalives: u64,
    up: u64,
    down: u64,
}

impl Counters {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            alarms_sent: self.alarms_sent.load(Ordering::Relaxed),
            alarms_acked: self.alarms_acked.load(Ordering::Relaxed),
            keepalives: self.keepalives.load(Ordering::Relaxed),
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
        }
    }

    fn take_latencies(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn fail(&self, why: String) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(why);
    }

    fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What every simulated node shares.
struct Shared {
    address: SocketAddr,
    patience: Duration,
    /// Time between a node's alarms; `None`: no alarms.
    alarm_every: Option<Duration>,
    gate: Semaphore,
    counters: Counters,
    joined: mpsc::UnboundedSender<()>,
    /// True: stop keeping alive and reporting (acknowledgements still count).
    quiet: watch::Receiver<bool>,
    /// True: close the link.
    stop: watch::Receiver<bool>,
}

struct Options {
    levels: Vec<usize>,
    window: Duration,
    settle: Duration,
    patience: Duration,
    alarms_per_hour: u32,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let levels = parse_levels(&args.value::<String>("--nodes")?.unwrap_or_else(|| {
        if quick {
            "500,1000"
        } else {
            "2500,5000,10000,15000"
        }
        .to_owned()
    }))?;
    let secs = |value: Option<u64>, normal: u64, short: u64| {
        Duration::from_secs(value.unwrap_or(if quick { short } else { normal }))
    };
    let options = Options {
        levels,
        window: secs(args.value("--secs")?, 60, 20),
        settle: secs(args.value("--settle")?, 15, 5),
        patience: secs(args.value("--patience")?, 600, 600),
        alarms_per_hour: args.value("--alarms-per-hour")?.unwrap_or(1),
    };
    args.finish()?;
    let largest = options.levels.iter().copied().max().unwrap_or_default();
    // One socket per node here, one in the domain manager (which inherits
    // the limit).
    hierarchy::ensure_open_files(largest as u64 + SPARE_FILES)?;

    println!(
        "== dominio-capacity: nodes served by one `agad dominio` (keep-alive every {}, a report every {}) ==",
        duration(KEEPALIVE),
        duration(REPORT_PERIOD)
    );
    eprintln!("setting up {largest} certificates and enrollments...");
    let began = Instant::now();
    // The managers run as `agad` processes; this program prepares the
    // certificates and the top manager's bases in the same folder.
    let mut d = Deployment::empty(&processes::agad_binary()?, processes::options("warn"))?;
    let (pki, nodes) = hierarchy::simulated_domain(&d, largest)?;
    eprintln!("setup took {} (not measured)", duration(began.elapsed()));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(ramp(&mut d, &pki, nodes, &options))?;
    print_summary(&rows);
    Ok(())
}

fn parse_levels(text: &str) -> anyhow::Result<Vec<usize>> {
    let levels = text
        .split(',')
        .map(|part| {
            part.trim()
                .replace('_', "")
                .parse::<usize>()
                .with_context(|| format!("--nodes: `{part}` is not a number"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if levels.is_empty() || levels.contains(&0) || !levels.is_sorted() {
        bail!("--nodes: give increasing node counts above 0, e.g. 2500,5000,10000");
    }
    Ok(levels)
}

/// Starts the managers and ramps the nodes up, level by level.
async fn ramp(
    d: &mut Deployment,
    pki: &Pki,
    nodes: Vec<(String, Arc<ClientConfig>)>,
    options: &Options,
) -> anyhow::Result<Vec<Row>> {
    let mor_address = hierarchy::start_mor_process(d, pki)?;
    // The topology lists only the nodes of the level being measured: a
    // node listed and absent is one the guardian diagnoses and alarms
    // about, which is not the load measured here.
    let names: Vec<String> = nodes.iter().map(|(name, _)| name.clone()).collect();
    let first = options.levels.first().copied().unwrap_or_default();
    d.apply(&hierarchy::topology_text(&names[..first], &[]))?;
    let dominio = hierarchy::start_dominio(d, pki, mor_address, &[])?;

    let (joined_tx, mut joined) = mpsc::unbounded_channel();
    let (quiet_tx, quiet) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let shared = Arc::new(Shared {
        address: dominio,
        patience: options.patience,
        alarm_every: (options.alarms_per_hour > 0)
            .then(|| Duration::from_secs(3600) / options.alarms_per_hour),
        gate: Semaphore::new(CONNECTING),
        counters: Counters::default(),
        joined: joined_tx,
        quiet,
        stop,
    });
    let mut tasks = JoinSet::new();
    let mut nodes = nodes.into_iter().enumerate();
    let mut connected = 0;
    let mut rows = Vec::new();
    for &level in &options.levels {
        if level > first {
            d.apply(&hierarchy::topology_text(&names[..level], &[]))?;
        }
        let connecting = Instant::now();
        for (index, (name, tls)) in nodes.by_ref().take(level - connected) {
            tasks.spawn(node(index, name, tls, shared.clone()));
        }
        eprintln!("{level} nodes: connecting...");
        let deadline = tokio::time::Instant::now() + options.patience;
        let mut check = tokio::time::interval(Duration::from_secs(1));
        while connected < level {
            tokio::select! {
                Some(()) = joined.recv() => connected += 1,
                _ = check.tick() => {
                    d.check()?;
                    healthy(&shared.counters)?;
                    if tokio::time::Instant::now() > deadline {
                        bail!("only {connected} of {level} nodes connected within {:?}", options.patience);
                    }
                }
            }
        }
        let connect = connecting.elapsed();
        eprintln!(
            "{level} nodes: connected in {}; settling {}, then measuring {}...",
            duration(connect),
            duration(options.settle),
            duration(options.window)
        );
        tokio::time::sleep(options.settle).await;
        let row = measure(level, connect, d, &shared.counters, options.window).await?;
        print_row(&row);
        println!(
            "  frames the nodes have read so far, by kind: {:?}",
            shared
                .counters
                .read
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        );
        rows.push(row);
    }

    eprintln!("quiet: waiting for the last acknowledgements...");
    let _ = quiet_tx.send(true);
    let counters = &shared.counters;
    let drained = all_acknowledged(counters, None, ACK_PATIENCE).await;
    let last = counters.snapshot();
    println!(
        "end of run: {} reports and {} alarms sent, {} and {} acknowledged{}",
        last.sent,
        last.alarms_sent,
        last.acked,
        last.alarms_acked,
        if drained {
            " — every one acknowledged".to_owned()
        } else {
            format!(
                " — {} NOT acknowledged within {}",
                (last.sent + last.alarms_sent) - (last.acked + last.alarms_acked),
                duration(ACK_PATIENCE)
            )
        }
    );
    d.check()?;
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        done.context("a node task panicked")?;
    }
    d.kill9(DOMINIO)?;
    d.stop(MOR)?;
    Ok(rows)
}

/// Fails with the first node failure, if any.
fn healthy(counters: &Counters) -> anyhow::Result<()> {
    let failures = counters.failures();
    match failures.first() {
        None => Ok(()),
        Some(first) => bail!(
            "{} simulated nodes failed; the first: {first}",
            failures.len()
        ),
    }
}

/// Waits until every report and alarm sent (all of them, or the first
/// `sent`) is acknowledged; false if that takes longer than `patience`.
async fn all_acknowledged(counters: &Counters, sent: Option<u64>, patience: Duration) -> bool {
    let began = Instant::now();
    loop {
        let now = counters.snapshot();
        let (sent_total, acked_total) = (now.sent + now.alarms_sent, now.acked + now.alarms_acked);
        if acked_total >= sent.unwrap_or(sent_total) {
            return true;
        }
        if began.elapsed() > patience {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One steady window at `nodes` nodes.
async fn measure(
    nodes: usize,
    connect: Duration,
    d: &mut Deployment,
    counters: &Counters,
    window: Duration,
) -> anyhow::Result<Row> {
    let ticks = procfs::clock_ticks_per_sec();
    let own = std::process::id();
    d.check()?;
    healthy(counters)?;
    counters.take_latencies();
    let before = procfs::sample(d.pid(DOMINIO)?)?;
    let mor_before = procfs::sample(d.pid(MOR)?)?;
    let own_before = procfs::sample(own)?;
    let c0 = counters.snapshot();
    let began = Instant::now();
    tokio::time::sleep(window).await;
    let after = procfs::sample(d.pid(DOMINIO)?)?;
    let mor_after = procfs::sample(d.pid(MOR)?)?;
    let own_after = procfs::sample(own)?;
    let wall = began.elapsed();
    let c1 = counters.snapshot();
    let latencies = counters.take_latencies();
    let caught_up = all_acknowledged(counters, Some(c1.sent + c1.alarms_sent), ACK_PATIENCE).await;
    d.check()?;
    healthy(counters)?;
    Ok(Row {
        nodes,
        connect,
        window: wall,
        cpu_percent: procfs::cpu_percent(&before, &after, wall, ticks),
        rss: after.rss_bytes,
        mor_cpu_percent: procfs::cpu_percent(&mor_before, &mor_after, wall, ticks),
        mor_rss: mor_after.rss_bytes,
        own_cpu_percent: procfs::cpu_percent(&own_before, &own_after, wall, ticks),
        keepalives: c1.keepalives - c0.keepalives,
        sent: c1.sent - c0.sent,
        acked: c1.acked - c0.acked,
        alarms_sent: c1.alarms_sent - c0.alarms_sent,
        alarms_acked: c1.alarms_acked - c0.alarms_acked,
        ack: Timings::of(&latencies),
        caught_up,
        up: c1.up - c0.up,
        down: c1.down - c0.down,
    })
}

/// One simulated node, until told to stop; a failure is counted, not fatal
/// to the others.
async fn node(index: usize, name: String, tls: Arc<ClientConfig>, shared: Arc<Shared>) {
    if let Err(e) = serve(index, &name, &tls, &shared).await {
        shared.counters.fail(format!("{name}: {e:#}"));
    }
}

async fn serve(
    index: usize,
    name: &str,
    tls: &Arc<ClientConfig>,
    shared: &Shared,
) -> anyhow::Result<()> {
    let mut link = {
        let _turn = shared.gate.acquire().await?;
        hierarchy::join(shared.address, tls, shared.patience).await?
    };
    let _ = shared.joined.send(());
    let counters = &shared.counters;
    let (mut quiet, mut stop) = (shared.quiet.clone(), shared.stop.clone());
    let mut sending = !*quiet.borrow();
    let start = tokio::time::Instant::now();
    let mut keepalive =
        tokio::time::interval_at(start + KEEPALIVE.mul_f64(phase(index)), KEEPALIVE);
    let mut reporting =
        tokio::time::interval_at(start + REPORT_PERIOD.mul_f64(phase(index)), REPORT_PERIOD);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reporting.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Alarms at their own phase; `None` every: a timer that never fires.
    let every = shared
        .alarm_every
        .unwrap_or(Duration::from_secs(365 * 86_400));
    let mut alarming = tokio::time::interval_at(start + every.mul_f64(phase(index)), every);
    alarming.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clear_at: Option<tokio::time::Instant> = None;
    let mut alarm_serial = 0;
    let mut first_keepalive = true;
    let mut seq = 0;
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut pending_alarms: VecDeque<u64> = VecDeque::new();
    let (mut up, mut down) = (0, 0);
    loop {
        // Traffic is added up as it happens, so windows see their own share.
        let (sent, received) = (link.traffic.sent(), link.traffic.received());
        counters.up.fetch_add(sent - up, Ordering::Relaxed);
        counters.down.fetch_add(received - down, Ordering::Relaxed);
        (up, down) = (sent, received);
        tokio::select! {
            frame = link.reader.recv() => match frame?.inspect(|m| {
                *counters.read.lock().unwrap_or_else(|p| p.into_inner()).entry(m.kind()).or_default() += 1;
            }) {
                Some(Message::Control(Control::Deploy { version, .. })) => {
                    send(&mut link, Control::DeployAck { version, problems: Vec::new() }).await?;
                }
                Some(Message::Control(Control::Ack { seqs })) => {
                    acknowledged(&seqs, &mut pending, &mut pending_alarms, counters);
                }
                // The manager answers a keep-alive after a quiet while.
                Some(Message::Control(Control::KeepAlive { .. })) => {}
                // Its guardian's challenge, once a minute: answered as a
                // node holding no module (none is assigned here).
                Some(Message::Control(Control::Attest { nonce })) => {
                    let answer = agad_protocol::attest::Attestation {
                        nonce,
                        modules: Vec::new(),
                        quarantined: Vec::new(),
                    };
                    send(&mut link, Control::Attestation(Box::new(answer))).await?;
                }
                Some(other) => bail!("unexpected from the domain manager: {other:?}"),
                None => bail!("the domain manager closed the link"),
            },
            _ = keepalive.tick(), if sending => {
                let components = if first_keepalive {
                    MODULES
                        .iter()
                        .map(|m| {
                            ComponentStatus::new(Component::Module { name: (*m).into() }, State::Running)
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                first_keepalive = false;
                send(&mut link, Control::KeepAlive { components }).await?;
                counters.keepalives.fetch_add(1, Ordering::Relaxed);
            }
            _ = reporting.tick(), if sending => {
                let mut batch = Vec::with_capacity(MODULES.len());
                for report in window_reports(name) {
                    seq += 1;
                    batch.push(Queued { seq, body: Upward::NodeReport(report) });
                    pending.push_back((seq, Instant::now()));
                }
                counters.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                link.writer.send(&Message::Reports(batch)).await?;
            }
            _ = alarming.tick(), if sending && shared.alarm_every.is_some() => {
                seq += 1;
                send_alarm(&mut link, seq, cpu_alarm(name, alarm_serial, true)).await?;
                alarm_serial += 1;
                pending_alarms.push_back(seq);
                counters.alarms_sent.fetch_add(1, Ordering::Relaxed);
                clear_at = Some(tokio::time::Instant::now() + ALARM_CLEARS_AFTER);
            }
            () = sleep_until_some(clear_at), if sending => {
                clear_at = None;
                seq += 1;
                send_alarm(&mut link, seq, cpu_alarm(name, alarm_serial, false)).await?;
                alarm_serial += 1;
                pending_alarms.push_back(seq);
                counters.alarms_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = quiet.changed(), if sending => sending = false,
            _ = stop.changed() => return Ok(()),
        }
    }
}

async fn send(link: &mut NodeLink, control: Control) -> anyhow::Result<()> {
    Ok(link.writer.send(&Message::Control(control)).await?)
}

async fn send_alarm(link: &mut NodeLink, seq: u64, alarm: Alarm) -> anyhow::Result<()> {
    let frame = Message::Alarm(Queued {
        seq,
        body: Upward::Alarm(alarm),
    });
    Ok(link.writer.send(&frame).await?)
}

/// Resolves at `due`, never if there is none.
async fn sleep_until_some(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Takes acknowledged reports off `pending` (acks come in order, so the
/// search stops near the front), recording how long each took, and
/// acknowledged alarms off `alarms`.
fn acknowledged(
    seqs: &[u64],
    pending: &mut VecDeque<(u64, Instant)>,
    alarms: &mut VecDeque<u64>,
    counters: &Counters,
) {
    let mut latencies = Vec::with_capacity(seqs.len());
    for seq in seqs {
        if let Some(i) = pending.iter().position(|(s, _)| s == seq)
            && let Some((_, sent)) = pending.remove(i)
        {
            latencies.push(sent.elapsed());
        } else if let Some(i) = alarms.iter().position(|s| s == seq) {
            alarms.remove(i);
            counters.alarms_acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    counters
        .acked
        .fetch_add(latencies.len() as u64, Ordering::Relaxed);
    counters
        .latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(latencies);
}

/// Where in each period node `index` fires, as a fraction of the period:
/// the golden-ratio sequence spreads any number of nodes evenly, and the
/// nodes a later level adds fall into the gaps of the earlier ones.
fn phase(index: usize) -> f64 {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    (index as f64 * GOLDEN).fract()
}

/// What the five inspectors send once a window on a host with two mounts,
/// two interfaces and two watched processes: one report each.
fn window_reports(node: &str) -> Vec<Report> {
    let now_ms = agad_gerente_dominio::now_ms();
    let window_ms = REPORT_PERIOD.as_millis() as u64;
    let summary = |metric: &str, subject: &str, unit: &str, mean: f64| Summary {
        metric: metric.to_owned(),
        subject: subject.to_owned(),
        unit: unit.to_owned(),
        min: mean * 0.5,
        max: mean * 1.5,
        mean,
        last: mean,
        count: 6,
        coverage: 1.0,
        window_start_ms: now_ms - window_ms,
        window_end_ms: now_ms,
    };
    let report = |module: &str, area: Area, summaries: Vec<Summary>| Report {
        node: node.to_owned(),
        module: module.to_owned(),
        provenance: Default::default(),
        area,
        summaries,
        time_ms: now_ms,
    };
    let mut interfaces = Vec::new();
    for (name, bps) in [("eth0", 1.8e6), ("eth1", 2.4e5)] {
        interfaces.extend([
            summary("if.oper-up", name, "", 1.0),
            summary("if.in-bps", name, "bit/s", bps),
            summary("if.out-bps", name, "bit/s", bps / 3.0),
            summary("if.in-error-rate", name, "/s", 0.0),
            summary("if.out-error-rate", name, "/s", 0.0),
        ]);
    }
    interfaces.extend([
        summary("if.up-count", "", "", 2.0),
        summary("if.down-count", "", "", 0.0),
    ]);
    let mut processes = Vec::new();
    for (name, rss) in [("sshd", 7.9e6), ("cron", 2.7e6)] {
        processes.extend([
            summary("proc.count", name, "", 1.0),
            summary("proc.cpu-percent", name, "%", 0.2),
            summary("proc.rss-bytes", name, "B", rss),
        ]);
    }
    vec![
        report(
            "cpu-mem",
            Area::Performance,
            vec![
                summary("cpu.total-percent", "", "%", 23.5),
                summary("mem.used-percent", "", "%", 41.2),
                summary("swap.used-percent", "", "%", 0.0),
                summary("load.one", "", "", 0.7),
                summary("load.per-core", "", "", 0.35),
            ],
        ),
        report(
            "disk-space",
            Area::Performance,
            vec![
                summary("fs.used-percent", "/", "%", 61.0),
                summary("fs.used-percent", "/var", "%", 34.0),
            ],
        ),
        report("if-health", Area::Fault, interfaces),
        report("app-watch", Area::Fault, processes),
        report(
            "snmp-threshold",
            Area::Performance,
            vec![
                summary("snmp.value", "1.3.6.1.4.1.2021.10.1.3.1", "", 0.7),
                summary("snmp.reachable", "local", "", 1.0),
            ],
        ),
    ]
}

/// cpu-mem's `cpu.total` alarm, raised or cleared; `serial` makes its id
/// unique on the node.
fn cpu_alarm(node: &str, serial: u64, raised: bool) -> Alarm {
    let value = if raised { 97.0 } else { 12.0 };
    Alarm {
        id: format!("{node}/cpu-mem/{serial}"),
        node: node.to_owned(),
        module: "cpu-mem".to_owned(),
        provenance: Default::default(),
        area: Area::Performance,
        key: "cpu.total".to_owned(),
        metric: "cpu.total-percent".to_owned(),
        subject: String::new(),
        severity: Severity::Major,
        raised,
        value,
        threshold: 90.0,
        comparison: Comparison::Above,
        message: format!("cpu.total-percent {value}% above 90%"),
        time_ms: agad_gerente_dominio::now_ms(),
    }
}

fn print_row(r: &Row) {
    let ack = match &r.ack {
        Some(t) => format!(
            "ack p50 {}, p99 {}, max {}",
            duration(t.p50),
            duration(t.p99),
            duration(t.max)
        ),
        None => "no ack".to_owned(),
    };
    let caught_up = if r.caught_up {
        "all acknowledged".to_owned()
    } else {
        format!(
            "NOT all acknowledged within {} after",
            duration(ACK_PATIENCE)
        )
    };
    println!(
        "{} nodes: domain manager CPU {:.1} % of one core, RSS {}; top manager CPU {:.1} %, RSS {}; \
         in {}: {} keep-alives, {} reports sent, {} acked ({ack}; {caught_up}), {} alarms sent, \
         {} acked; nodes sent {}/min, read {}/min; this process (the nodes) {:.1} %  \
         [connecting took {}]",
        r.nodes,
        r.cpu_percent,
        bytes(r.rss as f64),
        r.mor_cpu_percent,
        bytes(r.mor_rss as f64),
        duration(r.window),
        r.keepalives,
        r.sent,
        r.acked,
        r.alarms_sent,
        r.alarms_acked,
        bytes(per_minute(r.up, r.window)),
        bytes(per_minute(r.down, r.window)),
        r.own_cpu_percent,
        duration(r.connect),
    );
}

fn per_minute(n: u64, window: Duration) -> f64 {
    n as f64 * 60.0 / window.as_secs_f64()
}

fn print_summary(rows: &[Row]) {
    println!();
    println!(
        "{:>6} {:>8} {:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>13} {:>10} {:>10} {:>8}",
        "nodes",
        "GD CPU",
        "GD RSS",
        "GM CPU",
        "GM RSS",
        "ka/s",
        "rep/s",
        "alarm/s",
        "acked",
        "ack p50",
        "ack p99",
        "caught"
    );
    for r in rows {
        let secs = r.window.as_secs_f64();
        let (p50, p99) = r.ack.map_or(("-".to_owned(), "-".to_owned()), |t| {
            (duration(t.p50), duration(t.p99))
        });
        println!(
            "{:>6} {:>7.1}% {:>10} {:>7.1}% {:>10} {:>8.0} {:>8.1} {:>8.2} {:>13} {:>10} {:>10} {:>8}",
            r.nodes,
            r.cpu_percent,
            bytes(r.rss as f64),
            r.mor_cpu_percent,
            bytes(r.mor_rss as f64),
            r.keepalives as f64 / secs,
            r.sent as f64 / secs,
            r.alarms_sent as f64 / secs,
            format!("{}/{}", r.acked + r.alarms_acked, r.sent + r.alarms_sent),
            p50,
            p99,
            if r.caught_up { "yes" } else { "NO" },
        );
    }
    println!(
        "GD / GM CPU: utime+stime of the `agad dominio` / `agad mor` process over the window, % of one core"
    );
    println!("rep/s: reports (five per node a minute, in one batch); alarm/s: raises and clears");
    println!(
        "acked: acknowledgements received / reports and alarms sent in the window; ack p50/p99: reports"
    );
    println!("caught: every report and alarm");
    println!(
        "sent by the window's end acknowledged within {} after it; {}",
        duration(ACK_PATIENCE),
        machine_load()
    );
    let within: Vec<&Row> = rows
        .iter()
        .filter(|r| r.cpu_percent <= CPU_BUDGET_PERCENT && r.caught_up)
        .collect();
    let best = within.iter().map(|r| r.nodes).max();
    let tried = rows.iter().map(|r| r.nodes).max().unwrap_or_default();
    match best {
        None => println!(
            "no level stayed within {CPU_BUDGET_PERCENT} % of one core with every report acknowledged; \
             goal ≥ {GOAL_NODES}: NOT met"
        ),
        Some(best) => println!(
            "largest level within {CPU_BUDGET_PERCENT} % of one core with every report acknowledged: {best}{}; \
             goal ≥ {GOAL_NODES}: {}",
            if best == tried {
                " (the largest tried)"
            } else {
                ""
            },
            match (best >= GOAL_NODES, best == tried) {
                (true, _) => "met",
                (false, true) => "not reached by this run's levels (try larger --nodes)",
                (false, false) => "NOT met",
            },
        ),
    }
}
