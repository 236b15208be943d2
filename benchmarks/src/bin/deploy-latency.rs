//! `deploy-latency`: how long one domain manager takes to deploy the five
//! built-in inspectors to N nodes ("load latency" in the AGAD thesis).
//!
//! For each N (100, 1,000 and 5,000 by default), in a fresh temporary
//! directory: a CA and a certificate per node; a top manager whose bases
//! already hold the five built-ins (signed with a throw-away key), the
//! station and every node enrolled and active, and a topology with the N
//! nodes in one domain and nothing assigned to them. The top manager and
//! the domain manager then run in this process (their real `run`), and N
//! simulated nodes (TLS clients with their own certificates, see
//! `agad_benchmarks::hierarchy`) connect and receive their empty deployment.
//!
//! The clock starts when the topology that assigns the five inspectors to
//! the whole domain is sent to the top manager's admin socket (as `agad
//! topology apply` sends it) and stops, for each node, when the node has
//! read its whole `Deploy`: five modules, each with its wasm bytes. In
//! between: the top manager applies the topology and replicates to the
//! domain manager, which stores the new replica and deploys to every node.
//! Printed per N: the time to the last node (the load latency), p50 and p99
//! over the nodes, the bytes the nodes read meanwhile (TLS records), the CPU
//! time spent meanwhile by the managers and by the simulated nodes (each on
//! its own tokio runtime, told apart by thread name; both share the
//! machine's cores, so the latency is that of managers sharing the CPU with
//! their nodes), and this process's peak RSS. Goal: 1,000 nodes in ≤ 5 s.
//!
//! Setup (certificates, enrollment, connecting the nodes) is timed apart and
//! not counted.
//!
//! Run:
//!
//! ```sh
//! cargo build --release -p agad-benchmarks --bin deploy-latency
//! target/release/deploy-latency                    # 100, 1000, 5000 nodes
//! target/release/deploy-latency --nodes 100,1000
//! ```
//!
//! It prints figures only; nothing here asserts a timing.

use agad_benchmarks::args::Args;
use agad_benchmarks::builtins::{Signed, sign_all};
use agad_benchmarks::hierarchy::{self, MOR, NodeLink, Pki, STATION};
use agad_benchmarks::procfs::{self, machine_load};
use agad_benchmarks::stats::{Timings, bytes, duration};
use agad_gerente_mor::admin::{self, Answer, Request};
use agad_net::uplink::UplinkConfig;
use agad_protocol::wire::{Control, Deployment, Message, Role};
use agad_protocol::{PublicKey, SecretKey};
use anyhow::{Context, bail};
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

const HELP: &str =
    "deploy-latency: time for one domain manager to deploy the 5 built-in inspectors to N nodes
usage: deploy-latency [--nodes N,N,...] [--patience SECS]
  --nodes N,...    node counts, each measured in a fresh hierarchy (default 100,1000,5000)
  --patience SECS  longest wait for the nodes to connect, and for the deployment (default 600)";

const GOAL: Duration = Duration::from_secs(5);
const GOAL_NODES: usize = 1000;
/// TLS handshakes in flight at once while the nodes connect: more would
/// only overflow the listener's backlog and cost SYN retransmissions.
const CONNECTING: usize = 64;
/// Open files besides the two sockets per node (databases, listeners, ...).
const SPARE_FILES: u64 = 256;
/// Name of the simulated nodes' runtime threads (at most 15 bytes: Linux
/// cuts thread names there).
const NODE_THREADS: &str = "agad-nodes";

/// One N, measured.
struct Row {
    nodes: usize,
    /// Certificates, enrollment, the top manager's bases.
    setup: Duration,
    /// Every node connected and holding its empty deployment.
    connect: Duration,
    /// The admin socket's answer to the topology apply.
    apply: Duration,
    /// Per node, from the apply request to its complete `Deploy`.
    deployed: Timings,
    /// Bytes the nodes read while being deployed to.
    received: u64,
    /// CPU time of the managers (everything but the nodes' threads) and of
    /// the simulated nodes while deploying.
    managers_cpu: Duration,
    nodes_cpu: Duration,
    peak_rss: u64,
}

/// What one simulated node saw of its deployment.
struct Received {
    at: Instant,
    bytes: u64,
}

/// One N's hierarchy, set up and not started.
struct Hierarchy {
    dir: PathBuf,
    pki: Pki,
    trusted: PublicKey,
    nodes: Vec<Arc<ClientConfig>>,
    /// The topology file that assigns every module to the whole domain.
    assign: String,
    modules: usize,
    patience: Duration,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let counts = parse_counts(
        &args
            .value::<String>("--nodes")?
            .unwrap_or_else(|| "100,1000,5000".to_owned()),
    )?;
    let patience = Duration::from_secs(args.value("--patience")?.unwrap_or(600));
    args.finish()?;
    let largest = counts.iter().copied().max().unwrap_or_default();
    // Both ends of every node's connection live in this process.
    hierarchy::ensure_open_files(2 * largest as u64 + SPARE_FILES)?;

    let key = SecretKey::generate();
    let signed = sign_all(&key)?;
    let wasm: usize = signed.iter().map(|s| s.bundle.wasm.len()).sum();
    println!(
        "== deploy-latency: {} built-in inspectors ({} of wasm) to N nodes through one domain manager ==",
        signed.len(),
        megabytes(wasm as u64)
    );
    let mut rows = Vec::new();
    for n in counts {
        eprintln!("{n} nodes: certificates, enrollment, connecting...");
        let row = measure(n, &key, &signed, patience)?;
        print_row(&row);
        rows.push(row);
    }
    print_summary(&rows);
    Ok(())
}

fn parse_counts(text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|part| {
            let n: usize = part
                .trim()
                .replace('_', "")
                .parse()
                .with_context(|| format!("--nodes: `{part}` is not a number"))?;
            if n == 0 {
                bail!("--nodes: 0 nodes");
            }
            Ok(n)
        })
        .collect()
}

fn measure(
    n: usize,
    key: &SecretKey,
    signed: &[Signed],
    patience: Duration,
) -> anyhow::Result<Row> {
    let began = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("agad-deploy-latency-")
        .tempdir()?;
    let pki = Pki::create(&dir.path().join("pki"))?;
    let (names, enrollees) = hierarchy::issue_all(&pki, n)?;
    let bundles: Vec<_> = signed.iter().map(|s| s.bundle.clone()).collect();
    hierarchy::prepare_mor(
        &dir.path().join("mor"),
        &bundles,
        &[key.public()],
        &enrollees,
        &hierarchy::topology_text(&names, &[]),
    )?;
    let modules: Vec<&str> = signed.iter().map(|s| s.name).collect();
    let hierarchy = Hierarchy {
        dir: dir.path().to_owned(),
        nodes: names
            .iter()
            .map(|name| pki.client(name))
            .collect::<anyhow::Result<_>>()?,
        pki,
        trusted: key.public(),
        assign: hierarchy::topology_text(&names, &modules),
        modules: modules.len(),
        patience,
    };
    let setup = began.elapsed();
    // Runtimes per N: whatever the managers leave behind ends with them.
    let managers = tokio::runtime::Builder::new_multi_thread()
        .thread_name("agad-managers")
        .enable_all()
        .build()?;
    let nodes = tokio::runtime::Builder::new_multi_thread()
        .thread_name(NODE_THREADS)
        .enable_all()
        .build()?;
    managers.block_on(deploy(hierarchy, setup, nodes.handle()))
}

/// Starts the managers on this runtime, connects the nodes on
/// `nodes_runtime`, applies the assignment and waits for every node's
/// deployment.
async fn deploy(h: Hierarchy, setup: Duration, nodes_runtime: &Handle) -> anyhow::Result<Row> {
    let n = h.nodes.len();
    let (stop, shutdown) = watch::channel(false);
    let mor_dir = h.dir.join("mor");
    let (mor_address, mor) = hierarchy::start_mor(
        &mor_dir,
        h.pki.acceptor(MOR)?,
        vec![h.trusted],
        shutdown.clone(),
    )
    .await?;
    let (address, dominio) = start_dominio(
        &h.dir.join("dominio"),
        &h.pki,
        mor_address,
        h.trusted,
        shutdown.clone(),
    )
    .await?;

    let connecting = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let (ready_tx, mut ready) = mpsc::channel(n);
    let mut nodes = JoinSet::new();
    for tls in h.nodes {
        nodes.spawn_on(
            node(
                address,
                tls,
                gate.clone(),
                ready_tx.clone(),
                h.modules,
                h.patience,
            ),
            nodes_runtime,
        );
    }
    let deadline = tokio::time::Instant::now() + h.patience;
    let mut joined = 0;
    while joined < n {
        tokio::select! {
            Some(()) = ready.recv() => joined += 1,
            Some(done) = nodes.join_next() => {
                done.context("a node task panicked")?.context("a node failed to join")?;
                bail!("a node was deployed to before the topology assigned anything");
            }
            () = tokio::time::sleep_until(deadline) => {
                bail!("only {joined} of {n} nodes joined within {:?}", h.patience);
            }
        }
    }
    let connect = connecting.elapsed();

    let pid = std::process::id();
    let (sampled, sampling) = watch::channel(false);
    let sampler = tokio::spawn(peak_rss(pid, sampling));
    let cpu_before = (procfs::cpu_ticks(pid)?, thread_ticks(NODE_THREADS)?);
    let start = Instant::now();
    let answer = admin::request(
        &mor_dir,
        &Request::TopologyApply {
            file: "assign.toml".to_owned(),
            text: h.assign,
            dry_run: false,
        },
    )
    .await?;
    let apply = start.elapsed();
    if !matches!(answer, Answer::TopologyDiff { applied: true, .. }) {
        bail!("the top manager did not apply the assignment: {answer:?}");
    }
    let deadline = tokio::time::Instant::now() + h.patience;
    let mut arrivals = Vec::with_capacity(n);
    let mut received = 0;
    while let Some(done) = tokio::time::timeout_at(deadline, nodes.join_next())
        .await
        .with_context(|| {
            format!(
                "{} of {n} nodes deployed within {:?}",
                arrivals.len(),
                h.patience
            )
        })?
    {
        let node = done.context("a node task panicked")??;
        arrivals.push(node.at.saturating_duration_since(start));
        received += node.bytes;
    }
    let (all, nodes_ticks) = (
        procfs::cpu_ticks(pid)? - cpu_before.0,
        thread_ticks(NODE_THREADS)? - cpu_before.1,
    );
    let _ = sampled.send(true);
    let peak_rss = sampler.await?;

    let _ = stop.send(true);
    stopped("the top manager", mor).await?;
    stopped("the domain manager", dominio).await?;
    Ok(Row {
        nodes: n,
        setup,
        connect,
        apply,
        deployed: Timings::of(&arrivals).context("no node measured")?,
        received,
        managers_cpu: cpu_time(all.saturating_sub(nodes_ticks)),
        nodes_cpu: cpu_time(nodes_ticks),
        peak_rss,
    })
}

/// The domain manager in this process, with `agad dominio`'s settings.
async fn start_dominio(
    data_dir: &Path,
    pki: &Pki,
    mor: SocketAddr,
    trusted: PublicKey,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let config = agad_gerente_dominio::DominioConfig {
        data_dir: data_dir.to_owned(),
        uplink: UplinkConfig {
            parents: vec![mor.to_string()],
            tls: pki.client(STATION)?,
            role: Role::Dominio,
            ticket: None,
            keepalive: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        },
        acceptor: pki.acceptor(STATION)?,
        consolidation_grace: Duration::from_secs(2),
        children: Default::default(),
        limits: Default::default(),
        trusted: vec![trusted],
        advertise: Vec::new(),
        guardian: Default::default(),
        attest_every: Duration::from_secs(60),
    };
    let task = tokio::spawn(agad_gerente_dominio::run(config, listener, shutdown));
    Ok((address, task))
}

/// Waits (briefly) for a manager told to shut down, passing on its error.
async fn stopped(what: &str, task: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .with_context(|| format!("{what} did not stop"))?
        .with_context(|| format!("{what} panicked"))?
        .with_context(|| format!("{what} failed"))
}

/// One simulated node: joins, acknowledges its first (empty) deployment,
/// says it is ready, and waits for the deployment of `modules` modules.
async fn node(
    address: SocketAddr,
    tls: Arc<ClientConfig>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<()>,
    modules: usize,
    patience: Duration,
) -> anyhow::Result<Received> {
    let mut link = {
        let _turn = gate.acquire().await?;
        hierarchy::join(address, &tls, patience).await?
    };
    let first = next_deploy(&mut link).await?;
    if !first.is_empty() {
        bail!("the first deployment already holds {} modules", first.len());
    }
    let before = link.traffic.received();
    ready.send(()).await?;
    let deployed = next_deploy(&mut link).await?;
    let at = Instant::now();
    let with_bytes = deployed.iter().filter(|d| d.module.has_bytes()).count();
    if deployed.len() != modules || with_bytes != modules {
        bail!(
            "deployed {} modules, {with_bytes} with their bytes; expected {modules} with bytes",
            deployed.len()
        );
    }
    Ok(Received {
        at,
        bytes: link.traffic.received() - before,
    })
}

/// Reads the next `Deploy` and acknowledges it, as a node does.
async fn next_deploy(link: &mut NodeLink) -> anyhow::Result<Vec<Deployment>> {
    match link.reader.recv().await? {
        Some(Message::Control(Control::Deploy { version, modules })) => {
            link.writer
                .send(&Message::Control(Control::DeployAck {
                    version,
                    problems: Vec::new(),
                }))
                .await?;
            Ok(modules)
        }
        Some(other) => bail!("expected a deployment, got {other:?}"),
        None => bail!("the domain manager closed the link"),
    }
}

/// CPU ticks (utime + stime) of this process's threads whose name starts
/// with `prefix`. (`procfs::cpu_ticks` reads `/proc/<id>/stat`, which adds
/// up the whole process even for a thread's id.)
fn thread_ticks(prefix: &str) -> anyhow::Result<u64> {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        // A thread that ended meanwhile has nothing more to add.
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name start at field 3; utime and
        // stime are fields 14 and 15.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse().ok())
            .collect();
        ticks += fields.iter().sum::<u64>();
    }
    Ok(ticks)
}

fn cpu_time(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / procfs::clock_ticks_per_sec() as f64)
}

/// The largest RSS of process `pid`, read every 50 ms until `stop`.
async fn peak_rss(pid: u32, mut stop: watch::Receiver<bool>) -> u64 {
    let mut peak = 0;
    loop {
        if let Ok(sample) = procfs::sample(pid) {
            peak = peak.max(sample.rss_bytes);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => return peak,
        }
    }
}

/// Decimal megabytes: network volumes read best in the units links are sold in.
fn megabytes(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

fn print_row(r: &Row) {
    println!(
        "{} nodes: last deployed {} after the apply (p50 {}, p99 {}); nodes read {} ({} each); \
         apply answered in {}; CPU: managers {} ({} per node), nodes {}; peak RSS {}  \
         [setup {}, connecting {}]",
        r.nodes,
        duration(r.deployed.max),
        duration(r.deployed.p50),
        duration(r.deployed.p99),
        megabytes(r.received),
        megabytes(r.received / r.nodes as u64),
        duration(r.apply),
        duration(r.managers_cpu),
        duration(r.managers_cpu / r.nodes as u32),
        duration(r.nodes_cpu),
        bytes(r.peak_rss as f64),
        duration(r.setup),
        duration(r.connect),
    );
}

fn print_summary(rows: &[Row]) {
    println!();
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>12} {:>10} {:>12} {:>10} {:>11}",
        "nodes", "all", "p50", "p99", "to nodes", "apply", "managers CPU", "nodes CPU", "peak RSS"
    );
    for r in rows {
        println!(
            "{:>6} {:>10} {:>10} {:>10} {:>12} {:>10} {:>12} {:>10} {:>11}",
            r.nodes,
            duration(r.deployed.max),
            duration(r.deployed.p50),
            duration(r.deployed.p99),
            megabytes(r.received),
            duration(r.apply),
            duration(r.managers_cpu),
            duration(r.nodes_cpu),
            bytes(r.peak_rss as f64),
        );
    }
    println!(
        "all/p50/p99: from sending the topology apply to a node's complete Deploy (5 modules with bytes)"
    );
    println!(
        "to nodes: TLS bytes the nodes read meanwhile; CPU: time used meanwhile by the managers'"
    );
    println!(
        "threads (top + domain manager) and the simulated nodes' threads, which share the cores;"
    );
    println!("peak RSS: this whole process; {}", machine_load());
    match rows.iter().find(|r| r.nodes == GOAL_NODES) {
        Some(r) => println!(
            "goal: {GOAL_NODES} nodes deployed within {}: {} ({})",
            duration(GOAL),
            if r.deployed.max <= GOAL {
                "met"
            } else {
                "NOT met"
            },
            duration(r.deployed.max)
        ),
        None => println!(
            "goal ({GOAL_NODES} nodes within {}): not measured in this run",
            duration(GOAL)
        ),
    }
}
