//! `deploy-latency`: how long one domain manager takes to deploy the five
//! built-in inspectors to N nodes until every node **runs** them ("load
//! latency" in the AGAD thesis).
//!
//! For each N (100, 1,000 and 10,000 by default), in a fresh temporary
//! directory: a CA and a certificate per node; a top manager whose bases
//! already hold the five built-ins (signed with a throw-away key), the
//! station and every node enrolled and active, and a topology with the N
//! nodes in one domain and nothing assigned to them. The top manager and
//! the domain manager then run as the real `agad mor` and `agad dominio`
//! processes (the release binary beside this one). Of the N nodes, `--real`
//! (20 by default) are real `agad node` processes (each with its own data
//! directory, so each verifies the signatures and compiles the five
//! modules itself, in its compile helper; at nice 19, since on this one
//! machine their compiling would otherwise take the managers' cores, which
//! real nodes do not share); the others are simulated in
//! this process (TLS clients with their own certificates, see
//! `agad_benchmarks::hierarchy`). All connect and receive their empty
//! deployment.
//!
//! The clock starts when the topology that assigns the five inspectors to
//! the whole domain is sent to the top manager's admin socket (as `agad
//! topology apply` sends it). It stops, for a simulated node, when it has
//! read its whole `Deploy` (five modules, each with its wasm bytes) and
//! acknowledged it; for a real node, when its log says the fifth module
//! started (verified, compiled, instantiated and configured: running). In
//! between: the top manager applies the topology and replicates to the
//! domain manager, which stores the new replica and deploys to every node.
//! Printed per N: the time to the last node (the load latency), p50 and p99
//! over all nodes, the same for the real nodes alone, the bytes the
//! simulated nodes read meanwhile (TLS records), the CPU time spent
//! meanwhile by the two manager processes, by this process (the simulated
//! nodes) and by the real node processes (their compile helpers included)
//! — all share the machine's cores, so the latency is that of managers
//! sharing the CPU with their nodes — and the managers' peak RSS. Goals:
//! 1,000 nodes in ≤ 2 s and 10,000 in ≤ 20 s, the managers within 1 GiB at
//! 10,000.
//!
//! Setup (certificates, enrollment, connecting the nodes) is timed apart and
//! not counted.
//!
//! Run:
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/deploy-latency                    # 100, 1000, 10000 nodes
//! target/release/deploy-latency --nodes 100,1000 --real 20
//! ```
//!
//! It prints figures only; nothing here asserts a timing.

use agad_benchmarks::args::Args;
use agad_benchmarks::builtins::{Signed, sign_all};
use agad_benchmarks::hierarchy::{self, DOMINIO, MOR, NodeLink, Pki};
use agad_benchmarks::processes::{self, agad_binary, now_us};
use agad_benchmarks::procfs::{self, machine_load};
use agad_benchmarks::stats::{Timings, bytes, duration};
use agad_gerente_mor::admin::{self, Answer, Request};
use agad_protocol::SecretKey;
use agad_protocol::attest::{self, Artefact, Attestation, AttestedModule};
use agad_protocol::wire::{Control, Deployment, Message};
use agad_tests::hierarchy::Deployment as Processes;
use anyhow::{Context, bail};
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

const HELP: &str =
    "deploy-latency: time for one domain manager to deploy the 5 built-in inspectors to N nodes
usage: deploy-latency [--quick] [--nodes N,N,...] [--real N] [--patience SECS]
  --quick          100 nodes, 5 of them real
  --nodes N,...    node counts, each measured in a fresh hierarchy (default 100,1000,10000)
  --real N         of each N, this many are real `agad node` processes (default 20)
  --patience SECS  longest wait for the nodes to connect, and for the deployment (default 600)
needs target/release/agad: cargo build --release -p agad -p agad-benchmarks";

/// Node counts and the time each should be running within.
const GOALS: [(usize, Duration); 2] = [
    (1_000, Duration::from_secs(2)),
    (10_000, Duration::from_secs(20)),
];
/// The managers' memory at 10,000 nodes.
const GOAL_RSS: u64 = 1 << 30;
/// What a real node logs once a module runs.
const STARTED: &str = "started module=";
/// TLS handshakes in flight at once while the nodes connect: more would
/// only overflow the listener's backlog and cost SYN retransmissions.
const CONNECTING: usize = 64;
/// The keep-alive interval of every node (`agad node`'s default).
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Open files besides one socket per simulated node.
const SPARE_FILES: u64 = 256;

/// One N, measured.
struct Row {
    nodes: usize,
    /// Certificates, enrollment, the top manager's bases.
    setup: Duration,
    /// Every node connected and holding its empty deployment.
    connect: Duration,
    /// The admin socket's answer to the topology apply.
    apply: Duration,
    /// Per node, from the apply request to its complete `Deploy`
    /// (simulated) or to its fifth module running (real).
    deployed: Timings,
    /// The real nodes alone, and the CPU their processes used meanwhile.
    real: Option<Timings>,
    real_cpu: Duration,
    /// Bytes the simulated nodes read while being deployed to.
    received: u64,
    /// CPU time of the two manager processes and of this one (the
    /// simulated nodes) while deploying.
    managers_cpu: Duration,
    nodes_cpu: Duration,
    /// Peak RSS of `agad dominio` and of `agad mor` while deploying.
    dominio_rss: u64,
    mor_rss: u64,
}

/// What one simulated node saw of its deployment.
struct Received {
    at: Instant,
    bytes: u64,
}

/// One N's hierarchy: its managers running, its nodes not started.
struct Hierarchy {
    d: Processes,
    pki: Pki,
    /// The domain manager's address.
    dominio: SocketAddr,
    /// TLS of the simulated nodes.
    nodes: Vec<Arc<ClientConfig>>,
    /// Names of the real nodes.
    real: Vec<String>,
    agad: PathBuf,
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
    let quick = args.flag("--quick");
    let counts = parse_counts(
        &args
            .value::<String>("--nodes")?
            .unwrap_or_else(|| if quick { "100" } else { "100,1000,10000" }.to_owned()),
    )?;
    let real: usize = args.value("--real")?.unwrap_or(if quick { 5 } else { 20 });
    let patience = Duration::from_secs(args.value("--patience")?.unwrap_or(600));
    args.finish()?;
    let agad = agad_binary()?;
    let largest = counts.iter().copied().max().unwrap_or_default();
    // The simulated nodes' ends of their connections live in this process.
    hierarchy::ensure_open_files(largest.saturating_sub(real) as u64 + SPARE_FILES)?;

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
        eprintln!("{n} nodes: certificates, enrollment, starting the managers...");
        let row = measure(n, real.min(n), &agad, &key, &signed, patience)?;
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
    real: usize,
    agad: &Path,
    key: &SecretKey,
    signed: &[Signed],
    patience: Duration,
) -> anyhow::Result<Row> {
    let began = Instant::now();
    let mut d = Processes::empty(agad, processes::options("warn"))?;
    let pki = Pki::create(&d.path("pki"))?;
    let (names, enrollees) = hierarchy::issue_all(&pki, n)?;
    let bundles: Vec<_> = signed.iter().map(|s| s.bundle.clone()).collect();
    hierarchy::prepare_mor(
        &d.path("mor"),
        &bundles,
        &[key.public()],
        &enrollees,
        &hierarchy::topology_text(&names, &[]),
    )?;
    // The managers and the real nodes trust the key the modules are
    // signed with.
    std::fs::write(d.path("publisher.pub"), key.public().to_text())?;
    let mor = hierarchy::start_mor_process(&mut d, &pki)?;
    let dominio = hierarchy::start_dominio(&mut d, &pki, mor, &[])?;
    let modules: Vec<&str> = signed.iter().map(|s| s.name).collect();
    let hierarchy = Hierarchy {
        nodes: names[real..]
            .iter()
            .map(|name| pki.client(name))
            .collect::<anyhow::Result<_>>()?,
        real: names[..real].to_vec(),
        agad: agad.to_owned(),
        d,
        pki,
        dominio,
        assign: hierarchy::topology_text(&names, &modules),
        modules: modules.len(),
        patience,
    };
    let setup = began.elapsed();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(deploy(hierarchy, setup))
}

/// Connects the nodes, applies the assignment and waits for every node's
/// deployment.
async fn deploy(mut h: Hierarchy, setup: Duration) -> anyhow::Result<Row> {
    let simulated = h.nodes.len();
    let n = simulated + h.real.len();
    let connecting = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let (ready_tx, mut ready) = mpsc::channel(simulated.max(1));
    let mut nodes = JoinSet::new();
    for tls in std::mem::take(&mut h.nodes) {
        nodes.spawn(node(
            h.dominio,
            tls,
            gate.clone(),
            ready_tx.clone(),
            h.modules,
            h.patience,
        ));
    }
    let deadline = tokio::time::Instant::now() + h.patience;
    let mut joined = 0;
    while joined < simulated {
        tokio::select! {
            Some(()) = ready.recv() => joined += 1,
            Some(done) = nodes.join_next() => {
                done.context("a node task panicked")?.context("a node failed to join")?;
                bail!("a node was deployed to before the topology assigned anything");
            }
            () = tokio::time::sleep_until(deadline) => {
                h.d.check()?;
                bail!("only {joined} of {simulated} simulated nodes joined within {:?}", h.patience);
            }
        }
    }
    let real = RealNode::start_all(&h).await?;
    let connect = connecting.elapsed();

    let managers = [h.d.pid(DOMINIO)?, h.d.pid(MOR)?];
    let own = std::process::id();
    let (sampled, sampling) = watch::channel(false);
    let sampler = tokio::spawn(peak_rss(managers, sampling));
    let cpu_before = (
        managers.map(|pid| procfs::cpu_ticks(pid).unwrap_or(0)),
        procfs::cpu_ticks(own)?,
        RealNode::ticks(&real),
    );
    let start = Instant::now();
    let start_us = now_us();
    let answer = admin::request(
        &h.d.path("mor"),
        &Request::TopologyApply {
            file: "assign.toml".to_owned(),
            text: std::mem::take(&mut h.assign),
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
    let real_running = RealNode::wait_running(&real, h.modules, start_us, deadline);
    while let Some(done) = tokio::time::timeout_at(deadline, nodes.join_next())
        .await
        .with_context(|| {
            format!(
                "{} of {simulated} simulated nodes deployed within {:?}",
                arrivals.len(),
                h.patience
            )
        })?
    {
        let node = done.context("a node task panicked")??;
        arrivals.push(node.at.saturating_duration_since(start));
        received += node.bytes;
    }
    let real_running = real_running.await?;
    arrivals.extend(&real_running);
    let managers_ticks: u64 = managers
        .iter()
        .zip(cpu_before.0)
        .map(|(&pid, before)| procfs::cpu_ticks(pid).unwrap_or(before) - before)
        .sum();
    let (nodes_ticks, real_ticks) = (
        procfs::cpu_ticks(own)? - cpu_before.1,
        RealNode::ticks(&real).saturating_sub(cpu_before.2),
    );
    let _ = sampled.send(true);
    let [dominio_rss, mor_rss] = sampler.await?;
    drop(real);
    h.d.check()?;
    Ok(Row {
        nodes: n,
        setup,
        connect,
        apply,
        deployed: Timings::of(&arrivals).context("no node measured")?,
        real: Timings::of(&real_running),
        real_cpu: cpu_time(real_ticks),
        received,
        managers_cpu: cpu_time(managers_ticks),
        nodes_cpu: cpu_time(nodes_ticks),
        dominio_rss,
        mor_rss,
    })
}

/// A real `agad node` process, killed when dropped.
struct RealNode {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for RealNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RealNode {
    /// Starts `h.real` against the domain manager at `address`, as an
    /// operator would (`agad node` with the deployment's PKI and publisher
    /// key), and waits until each is connected.
    async fn start_all(h: &Hierarchy) -> anyhow::Result<Vec<RealNode>> {
        let address = h.dominio;
        // snmp-threshold needs an agent to be configured; none answers
        // there, which only matters once it runs.
        let node_config = h.d.path("real-node.toml");
        std::fs::write(
            &node_config,
            "[[agents]]\nname = \"local\"\naddress = \"127.0.0.1:16199\"\nversion = \"v2c\"\ncommunity = \"public\"\n",
        )?;
        let mut real = Vec::with_capacity(h.real.len());
        for name in &h.real {
            let dir = h.d.path("real").join(name);
            std::fs::create_dir_all(&dir)?;
            let log = h.d.path("real").join(format!("{name}.log"));
            let out = std::fs::File::create(&log)?;
            // At the lowest priority: a node compiles on its own host, not
            // on its manager's cores, so here it gets only what the managers
            // leave (twenty nodes compiling at once would otherwise starve
            // the domain manager that all the others wait on).
            let child = std::process::Command::new("nice")
                .args(["-n", "19"])
                .arg(&h.agad)
                .args(["node", "--dominio", &address.to_string(), "--pki"])
                .arg(h.pki.dir())
                .args(["--name", name, "--trust"])
                .arg(h.d.path("publisher.pub"))
                .arg("--data-dir")
                .arg(&dir)
                .args([
                    "--keepalive",
                    &format!("{}s", KEEPALIVE.as_secs()),
                    "--node-config",
                ])
                .arg(&node_config)
                .env("AGAD_LOG", "info")
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting {}", h.agad.display()))?;
            real.push(RealNode {
                name: name.clone(),
                child,
                log,
            });
        }
        let deadline = Instant::now() + h.patience;
        for node in &mut real {
            while !node.read_log().contains("connected manager=") {
                if let Some(status) = node.child.try_wait()? {
                    bail!("real node {} exited ({status}): {}", node.name, node.tail());
                }
                if Instant::now() > deadline {
                    bail!("real node {} did not connect: {}", node.name, node.tail());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(real)
    }

    fn read_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, for an error.
    fn tail(&self) -> String {
        let log = self.read_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// What its log says of modules not running: how many started, and
    /// its warnings and errors.
    fn problems(&self) -> String {
        let log = self.read_log();
        let started = log.lines().filter(|l| l.contains(STARTED)).count();
        let complaints: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(6)
            .collect();
        format!("{started} modules started; {}", complaints.join("\n"))
    }

    /// When (µs since the epoch) its log said the `modules`th module started.
    fn running_since(&self, modules: usize) -> anyhow::Result<Option<i64>> {
        let log = self.read_log();
        let Some(line) = log.lines().filter(|l| l.contains(STARTED)).nth(modules - 1) else {
            return Ok(None);
        };
        let stamp = line.split_whitespace().next().unwrap_or_default();
        let at = humantime::parse_rfc3339(stamp)
            .with_context(|| format!("log line without an RFC 3339 timestamp: {line}"))?;
        Ok(Some(i64::try_from(
            at.duration_since(std::time::UNIX_EPOCH)?.as_micros(),
        )?))
    }

    /// Waits until every one of `nodes` runs `modules` modules; how long
    /// after `start_us` each did.
    async fn wait_running(
        nodes: &[RealNode],
        modules: usize,
        start_us: i64,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut running = Vec::with_capacity(nodes.len());
        for node in nodes {
            let at = loop {
                if let Some(at) = node.running_since(modules)? {
                    break at;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "real node {} is not running its modules: {}",
                        node.name,
                        node.problems()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            running.push(Duration::from_micros(
                u64::try_from(at - start_us).unwrap_or(0),
            ));
        }
        Ok(running)
    }

    /// CPU ticks of the real nodes and of their children they waited for
    /// (the compile helpers): utime, stime, cutime and cstime.
    fn ticks(nodes: &[RealNode]) -> u64 {
        nodes
            .iter()
            .map(|node| stat_ticks(Path::new(&format!("/proc/{}/stat", node.child.id())), 4))
            .sum()
    }
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
    let first = next_deploy(&mut link, &[]).await?;
    if !first.is_empty() {
        bail!("the first deployment already holds {} modules", first.len());
    }
    let before = link.traffic.received();
    ready.send(()).await?;
    let deployed = next_deploy(&mut link, &first).await?;
    let at = Instant::now();
    let with_bytes = deployed.iter().filter(|d| d.module.has_bytes()).count();
    if deployed.len() != modules || with_bytes != modules {
        bail!(
            "deployed {} modules, {with_bytes} with their bytes; expected {modules} with bytes",
            deployed.len()
        );
    }
    let bytes = link.traffic.received() - before;
    // Connected and answering until the run ends, as a node that runs its
    // deployment: a node gone would cost its manager a diagnosis, and one
    // that leaves its attestation unanswered an alarm.
    tokio::spawn(async move { while next_deploy(&mut link, &deployed).await.is_ok() {} });
    Ok(Received { at, bytes })
}

/// Reads the next `Deploy` and acknowledges it, as a node does, keeping
/// alive meanwhile (10,000 nodes take longer to connect than a manager
/// waits for a silent one) and answering attestation challenges with
/// proofs of the modules `held`; other commands go unanswered.
async fn next_deploy(link: &mut NodeLink, held: &[Deployment]) -> anyhow::Result<Vec<Deployment>> {
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        tokio::select! {
            frame = link.reader.recv() => match frame? {
                Some(Message::Control(Control::Deploy { version, modules })) => {
                    link.writer
                        .send(&Message::Control(Control::DeployAck {
                            version,
                            problems: Vec::new(),
                        }))
                        .await?;
                    return Ok(modules);
                }
                Some(Message::Control(Control::Attest { nonce })) => {
                    let modules = held
                        .iter()
                        .map(|d| AttestedModule {
                            name: d.module.manifest.name.clone(),
                            sha256: d.module.manifest.sha256_hex(),
                            proof: attest::proof(&nonce, &d.module.wasm),
                            artefact: Artefact::Intact,
                        })
                        .collect();
                    let answer = Attestation { nonce, modules, quarantined: Vec::new() };
                    link.writer
                        .send(&Message::Control(Control::Attestation(Box::new(answer))))
                        .await?;
                }
                Some(Message::Control(_)) => {}
                Some(other) => bail!("expected a deployment, got a `{}` frame", other.kind()),
                None => bail!("the domain manager closed the link"),
            },
            _ = keepalive.tick() => {
                link.writer
                    .send(&Message::Control(Control::KeepAlive { components: Vec::new() }))
                    .await?;
            }
        }
    }
}

/// The sum of the first `fields` CPU-time fields of a `/proc/.../stat`
/// file (utime, stime, then cutime and cstime); 0 if it is gone.
fn stat_ticks(path: &Path, fields: usize) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised name start at field 3; utime is 14.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .skip(11)
        .take(fields)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum()
}

fn cpu_time(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / procfs::clock_ticks_per_sec() as f64)
}

/// The largest RSS of each of `pids`, read every 50 ms until `stop`.
async fn peak_rss<const N: usize>(pids: [u32; N], mut stop: watch::Receiver<bool>) -> [u64; N] {
    let mut peaks = [0; N];
    loop {
        for (peak, pid) in peaks.iter_mut().zip(pids) {
            if let Ok(sample) = procfs::sample(pid) {
                *peak = (*peak).max(sample.rss_bytes);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => return peaks,
        }
    }
}

/// Decimal megabytes: network volumes read best in the units links are sold in.
fn megabytes(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

fn print_row(r: &Row) {
    let real = match &r.real {
        Some(t) => format!(
            "; {} real nodes running after {} (p50 {}), their CPU {}",
            t.count,
            duration(t.max),
            duration(t.p50),
            duration(r.real_cpu)
        ),
        None => String::new(),
    };
    println!(
        "{} nodes: last running {} after the apply (p50 {}, p99 {}){real}; simulated nodes read {} \
         ({} each); apply answered in {}; CPU: managers {} ({} per node), simulated nodes {}; \
         peak RSS: dominio {}, mor {}  [setup {}, connecting {}]",
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
        bytes(r.dominio_rss as f64),
        bytes(r.mor_rss as f64),
        duration(r.setup),
        duration(r.connect),
    );
}

fn print_summary(rows: &[Row]) {
    println!();
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>16} {:>10} {:>12} {:>10} {:>10} {:>11} {:>11}",
        "nodes",
        "all",
        "p50",
        "p99",
        "real: all (n)",
        "apply",
        "managers CPU",
        "sim. CPU",
        "real CPU",
        "dominio RSS",
        "mor RSS"
    );
    for r in rows {
        let real = r.real.as_ref().map_or("-".to_owned(), |t| {
            format!("{} ({})", duration(t.max), t.count)
        });
        println!(
            "{:>6} {:>10} {:>10} {:>10} {:>16} {:>10} {:>12} {:>10} {:>10} {:>11} {:>11}",
            r.nodes,
            duration(r.deployed.max),
            duration(r.deployed.p50),
            duration(r.deployed.p99),
            real,
            duration(r.apply),
            duration(r.managers_cpu),
            duration(r.nodes_cpu),
            duration(r.real_cpu),
            bytes(r.dominio_rss as f64),
            bytes(r.mor_rss as f64),
        );
    }
    println!(
        "all/p50/p99: from sending the topology apply to a node running the 5 modules: a real node's \
         log says the fifth started; a simulated node read and acknowledged its Deploy (5 modules \
         with bytes). real: the real `agad node` processes alone (verify, compile, start)."
    );
    println!(
        "CPU: time used meanwhile by the `agad dominio` and `agad mor` processes, by this process \
         (the simulated nodes) and by the real node processes with their compile helpers, which \
         all share the cores; RSS: the managers' peaks meanwhile; {}",
        machine_load()
    );
    for (nodes, goal) in GOALS {
        match rows.iter().find(|r| r.nodes == nodes) {
            Some(r) => println!(
                "goal: {nodes} nodes running within {}: {} ({})",
                duration(goal),
                if r.deployed.max <= goal {
                    "met"
                } else {
                    "MISSED"
                },
                duration(r.deployed.max)
            ),
            None => println!(
                "goal ({nodes} nodes running within {}): not measured in this run",
                duration(goal)
            ),
        }
    }
    match rows.iter().find(|r| r.nodes == 10_000) {
        Some(r) => println!(
            "goal: managers ≤ {} at 10000 nodes: {} (dominio {} + mor {})",
            bytes(GOAL_RSS as f64),
            if r.dominio_rss + r.mor_rss <= GOAL_RSS {
                "met"
            } else {
                "MISSED"
            },
            bytes(r.dominio_rss as f64),
            bytes(r.mor_rss as f64)
        ),
        None => println!("goal (managers ≤ 1 GiB at 10000 nodes): not measured in this run"),
    }
}
