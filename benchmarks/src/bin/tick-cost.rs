//! `tick-cost`: what one inspector tick costs, and what a fresh instance of
//! an already compiled inspector costs.
//!
//! For each built-in inspector (signed with a throw-away key, loaded into a
//! real [`Node`] with a temporary data directory) it measures:
//!
//! - **tick**: one `tick()` call, host calls included (OS reads for cpu-mem,
//!   disk-space and app-watch; SNMP requests to a real Debian `snmpd`,
//!   started on a loopback port by the test harness, for if-health and
//!   snmp-threshold). Ticks run back to back after a short warm-up; mean,
//!   p50, p99 and max are printed.
//! - **instantiate (pre)**: `InspectorInstance::new` from the linked
//!   `InstancePre` (goal ≤ 1 ms). The host state is built outside the timer.
//! - **+ host + init**: what a restart by the supervisor costs: host state
//!   (sysinfo probes, SNMP client, state handle), instantiation and `init`
//!   with the module's configuration (`Node::instantiate`).
//! - **from disk cache**: a node restart's path: the compiled artefact
//!   deserialised from the on-disk cache, linked against the capabilities,
//!   and instantiated (no trust check, no `init`).
//! - **cold compile**: the first `Node::load` (verify + Cranelift compile +
//!   write the cache), once, for scale.
//!
//! Run (the default run takes well under a minute on 2 cores):
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/tick-cost            # 5000 ticks, 1000 instances per inspector
//! target/release/tick-cost --quick    # 300 ticks, 100 instances: a smoke run
//! target/release/tick-cost --ticks 5000 --instances 1000 --max-secs 30
//! ```
//!
//! It prints figures only; nothing here asserts a timing.

use agad_benchmarks::args::Args;
use agad_benchmarks::builtins::{module_config, sign_all};
use agad_benchmarks::procfs::{machine_load, own_comm};
use agad_benchmarks::stats::{Timings, duration};
use agad_protocol::{Capability, SecretKey};
use agad_runtime::host::HostState;
use agad_runtime::host::snmp::SnmpClient;
use agad_runtime::host::state::ModuleState;
use agad_runtime::{
    AgentConfig, InspectorInstance, LinkedModule, ModuleConfig, ModuleEngine, Node, NodeSettings,
    RestartPolicy,
};
use agad_tests::snmpd::Snmpd;
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELP: &str =
    "tick-cost: cost of one tick() of each built-in inspector, and of instantiating one
usage: tick-cost [--quick] [--ticks N] [--instances N] [--max-secs S]
  --ticks N      ticks measured per inspector (default 5000; --quick 300)
  --instances N  instantiations measured per inspector and way (default 1000; --quick 100;
                 a third of that for the disk-cache path)
  --max-secs S   stop measuring an inspector's ticks after S seconds (default 20; --quick 3)";

/// Goal for instantiating from the `InstancePre`.
const INSTANTIATE_GOAL: Duration = Duration::from_millis(1);
const WARMUP_TICKS: usize = 20;

struct Row {
    name: &'static str,
    ticks: Timings,
    alarms: usize,
    summaries: usize,
    pre: Timings,
    full: Timings,
    cached: Timings,
    cold: Duration,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let ticks: usize = args
        .value("--ticks")?
        .unwrap_or(if quick { 300 } else { 5000 });
    let instances: usize = args
        .value("--instances")?
        .unwrap_or(if quick { 100 } else { 1000 });
    let max_secs: f64 = args
        .value("--max-secs")?
        .unwrap_or(if quick { 3.0 } else { 20.0 });
    args.finish()?;
    let max_tick_time = Duration::from_secs_f64(max_secs);
    // Module calls are async (host calls run on the blocking pool); the
    // timer wraps `block_on`, as a supervisor's tick wraps an await.
    let rt = tokio::runtime::Runtime::new()?;

    eprintln!("starting snmpd (Debian's net-snmp agent) on a loopback port...");
    let snmpd = Snmpd::start();
    let agents: Arc<[AgentConfig]> = Arc::from(vec![snmpd.v2c_agent()]);
    let key = SecretKey::generate();
    let signed = sign_all(&key)?;
    let dir = tempfile::Builder::new()
        .prefix("agad-tick-cost-")
        .tempdir()?;
    let settings = NodeSettings {
        name: "bench".into(),
        agents: agents.clone(),
        policy: Capability::ALL.to_vec(),
        host_policy: Default::default(),
        default_period: Duration::from_secs(10),
        restart: RestartPolicy::default(),
        ceilings: Default::default(),
        output: Default::default(),
        disk: Default::default(),
        crash_loop: Default::default(),
        integrity: Default::default(),
    };
    let node = Node::open(settings, vec![key.public()], dir.path())?;
    // A second engine over the same cache directory: what a restarted node
    // finds on disk.
    let cache_engine = ModuleEngine::new(Some(&dir.path().join("compiled")))?;
    let scratch = agad_storage::Database::temporary()?;
    let state_tree = scratch.tree("bench-state")?;
    let watched = vec!["snmpd".to_owned(), own_comm()];

    let mut rows = Vec::new();
    for s in &signed {
        let name = s.name;
        eprintln!("measuring {name}...");
        let started = Instant::now();
        let linked = node
            .load(&s.bundle)
            .with_context(|| format!("loading {name}"))?;
        let cold = started.elapsed();
        let config = ModuleConfig {
            values: module_config(name, &watched),
        };
        let mut instance = rt
            .block_on(node.instantiate(&linked, &config))
            .with_context(|| format!("{name}: instantiate with {:?}", config.values))?;

        for _ in 0..WARMUP_TICKS {
            rt.block_on(instance.tick())
                .with_context(|| format!("{name}: warm-up tick"))?;
        }
        let mut samples = Vec::with_capacity(ticks);
        let (mut alarms, mut summaries) = (0, 0);
        let began = Instant::now();
        while samples.len() < ticks && began.elapsed() < max_tick_time {
            let t = Instant::now();
            let out = rt
                .block_on(instance.tick())
                .with_context(|| format!("{name}: tick"))?;
            samples.push(t.elapsed());
            alarms += out.alarms.len();
            summaries += out.summaries.len();
        }
        drop(instance);

        let host = || {
            HostState::new(
                name,
                SnmpClient::new(agents.clone()),
                ModuleState::new(state_tree.clone(), name),
                linked.manifest.limits.max_memory_bytes,
            )
        };
        let pre = measure(instances, || {
            let h = host();
            let t = Instant::now();
            let i = rt
                .block_on(InspectorInstance::new(&linked, h))
                .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
            let took = t.elapsed();
            drop(i);
            Ok(took)
        })?;
        let full = measure(instances, || {
            let t = Instant::now();
            let i = rt
                .block_on(node.instantiate(&linked, &config))
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            let took = t.elapsed();
            drop(i);
            Ok(took)
        })?;
        let cached = measure(instances.div_ceil(3), || {
            let h = host();
            let t = Instant::now();
            let i = rt.block_on(from_cache(&cache_engine, s, &linked, h))?;
            let took = t.elapsed();
            drop(i);
            Ok(took)
        })?;

        rows.push(Row {
            name,
            ticks: Timings::of(&samples).context("no tick measured")?,
            alarms,
            summaries,
            pre,
            full,
            cached,
            cold,
        });
    }

    println!("\nmachine: {} at the end of the run", machine_load());
    print_tables(&rows);
    Ok(())
}

/// Deserialise from the on-disk cache, link, instantiate.
async fn from_cache(
    engine: &ModuleEngine,
    signed: &agad_benchmarks::builtins::Signed,
    linked: &LinkedModule,
    host: HostState,
) -> anyhow::Result<InspectorInstance> {
    let component = engine.compile(&signed.bundle)?;
    let relinked = engine.link(linked.manifest.clone(), &component, &Capability::ALL)?;
    InspectorInstance::new(&relinked, host)
        .await
        .map_err(|f| anyhow::anyhow!("{}: {f}", signed.name))
}

fn measure(
    n: usize,
    mut once: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Timings> {
    // One unmeasured run pays first-touch costs (page faults in the cache file).
    once()?;
    let samples = (0..n.max(1))
        .map(|_| once())
        .collect::<anyhow::Result<Vec<_>>>()?;
    Timings::of(&samples).context("nothing measured")
}

fn print_tables(rows: &[Row]) {
    println!();
    println!("== tick(): one call, host calls included ==");
    println!(
        "{:<15} {:>6} {:>10} {:>10} {:>10} {:>10}   {:>7} {:>9}",
        "inspector", "ticks", "mean", "p50", "p99", "max", "alarms", "summaries"
    );
    for r in rows {
        let t = &r.ticks;
        println!(
            "{:<15} {:>6} {:>10} {:>10} {:>10} {:>10}   {:>7} {:>9}",
            r.name,
            t.count,
            duration(t.mean),
            duration(t.p50),
            duration(t.p99),
            duration(t.max),
            r.alarms,
            r.summaries
        );
    }
    println!(
        "(ticks back to back: alarms/summaries are what those ticks emitted; window_secs is the default 60)"
    );
    println!();
    println!("== instantiating a compiled inspector ==");
    println!(
        "{:<15} {:>20} {:>6} {:>22} {:>22} {:>14}",
        "inspector",
        "pre→instance p50/p99",
        "goal",
        "+host+init p50/p99",
        "disk cache p50/p99",
        "cold compile"
    );
    for r in rows {
        let pair = |t: &Timings| format!("{} / {}", duration(t.p50), duration(t.p99));
        let verdict = if r.pre.p99 <= INSTANTIATE_GOAL {
            "≤1ms ok"
        } else {
            ">1ms!"
        };
        println!(
            "{:<15} {:>20} {:>6} {:>22} {:>22} {:>14}",
            r.name,
            pair(&r.pre),
            verdict,
            pair(&r.full),
            pair(&r.cached),
            duration(r.cold)
        );
    }
    println!(
        "pre→instance: InspectorInstance::new from the InstancePre (goal ≤ 1 ms, judged on p99)"
    );
    println!(
        "+host+init:   Node::instantiate = host state (sysinfo, SNMP client) + instantiate + init(config)"
    );
    println!("disk cache:   deserialize the .cwasm this node compiled + link + instantiate");
    println!(
        "cold compile: first Node::load (verify, Cranelift compile, write the cache), one sample"
    );
}
