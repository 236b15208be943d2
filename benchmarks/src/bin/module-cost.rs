//! `module-cost`: what a Python inspector costs a node against a Rust one
//! doing the same check.
//!
//! Both modules are what a module author gets from `agad module new NAME
//! --kind inspector [--lang python]` built by `agad module build` (the
//! `agad` binary beside this program; cargo for wasm32-wasip2, and
//! componentize-py 0.25.1 for Python): each reads the host's memory through
//! the `os` capability, runs one threshold check through the SDK's
//! raise/clear hysteresis and records the value in a report window. For
//! each it measures, on a real [`Node`] with a temporary data directory:
//!
//! - **bundle**: bytes of the signed bundle (what the hierarchy ships);
//! - **cold compile**: the first `Node::load` (verify, Cranelift compile,
//!   write the compiled cache), one sample, with the peak RSS the process
//!   reached meanwhile above what it held before;
//! - **from cache**: a restarted node's path: the compiled artefact
//!   deserialised from the disk cache, linked and instantiated (no `init`);
//! - **init**: `Node::instantiate` = host state + instantiate + `init`
//!   with the configuration;
//! - **tick**: one `tick()`, host calls included, back to back;
//! - **RSS per instance**: the process's RSS growth over N live,
//!   configured, ticked instances, divided by N.
//!
//! Run:
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/module-cost            # 2000 ticks, 200 instantiations
//! target/release/module-cost --quick    # 200 ticks, 20 instantiations
//! ```
//!
//! It prints figures only; nothing here asserts a timing.

use agad_benchmarks::args::Args;
use agad_benchmarks::processes::agad_binary;
use agad_benchmarks::procfs::{machine_load, reset_peak, sample};
use agad_benchmarks::stats::{Timings, bytes, duration};
use agad_protocol::{Bundle, Capability, PublicKey};
use agad_runtime::host::HostState;
use agad_runtime::host::snmp::SnmpClient;
use agad_runtime::host::state::ModuleState;
use agad_runtime::{InspectorInstance, ModuleConfig, ModuleEngine, Node, NodeSettings};
use anyhow::{Context, bail};
use std::process::Command;
use std::time::{Duration, Instant};

const HELP: &str = "module-cost: a Python inspector against a Rust one doing the same check
usage: module-cost [--quick] [--ticks N] [--instances N] [--live N]
  --ticks N      ticks measured per module (default 2000; --quick 200)
  --instances N  instantiations measured per module and way (default 200; --quick 20)
  --live N       live instances for RSS per instance (default 50; --quick 10)";

struct Row {
    lang: &'static str,
    bundle_bytes: usize,
    wasm_bytes: usize,
    cold: Duration,
    cold_peak_bytes: u64,
    cached: Timings,
    init: Timings,
    tick: Timings,
    rss_per_instance: f64,
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
        .unwrap_or(if quick { 200 } else { 2000 });
    let instances: usize = args
        .value("--instances")?
        .unwrap_or(if quick { 20 } else { 200 });
    let live: usize = args.value("--live")?.unwrap_or(if quick { 10 } else { 50 });
    args.finish()?;

    let agad = agad_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("agad-module-cost-")
        .tempdir()?;
    let work = dir.path();
    // Scaffolded Rust projects share one target folder beside this program,
    // so their dependencies are compiled once across runs.
    let target = std::env::current_exe()?
        .parent()
        .context("no parent directory")?
        .join("module-cost-target");
    let run = |args: &[&str]| -> anyhow::Result<()> {
        eprintln!("$ agad {}", args.join(" "));
        let out = Command::new(&agad)
            .args(args)
            .current_dir(work)
            .env("CARGO_TARGET_DIR", &target)
            .output()?;
        if !out.status.success() {
            bail!(
                "agad {} failed:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(&["module", "keygen", "--out", "publisher"])?;
    let key = PublicKey::from_text(&std::fs::read_to_string(work.join("publisher.pub"))?)?;
    let mut bundles = Vec::new();
    for (lang, name) in [("rust", "cost-rust"), ("python", "cost-python")] {
        run(&["module", "new", name, "--kind", "inspector", "--lang", lang])?;
        run(&[
            "module",
            "build",
            "--dir",
            name,
            "--key",
            "publisher.secret",
        ])?;
        let bytes = std::fs::read(work.join(name).join(format!("{name}.agad")))?;
        bundles.push((lang, bytes));
    }

    let rt = tokio::runtime::Runtime::new()?;
    let config = ModuleConfig {
        values: [
            ("threshold", "90"),
            ("window_secs", "60"),
            ("raise_after", "3"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
    };
    let mut rows = Vec::new();
    for (lang, raw) in &bundles {
        eprintln!("measuring {lang}...");
        let bundle = Bundle::from_bytes(raw)?;
        let name = bundle.manifest.name.clone();
        let node_dir = work.join(format!("node-{lang}"));
        let settings = NodeSettings {
            name: "bench".into(),
            agents: Vec::new().into(),
            policy: Capability::ALL.to_vec(),
            host_policy: Default::default(),
            default_period: Duration::from_secs(10),
            restart: Default::default(),
            ceilings: Default::default(),
            output: Default::default(),
            disk: Default::default(),
            crash_loop: Default::default(),
            integrity: Default::default(),
        };
        let node = Node::open(settings, vec![key], &node_dir)?;

        let pid = std::process::id();
        let before = sample(pid)?.rss_bytes;
        reset_peak(pid)?;
        let started = Instant::now();
        let linked = node
            .load(&bundle)
            .with_context(|| format!("loading {name}"))?;
        let cold = started.elapsed();
        let cold_peak_bytes = sample(pid)?.peak_rss_bytes.saturating_sub(before);

        let cache_engine = ModuleEngine::new(Some(&node_dir.join("compiled")))?;
        let scratch = agad_storage::Database::temporary()?;
        let state_tree = scratch.tree("bench-state")?;
        let host = || {
            HostState::new(
                &name,
                SnmpClient::new(Vec::new().into()),
                ModuleState::new(state_tree.clone(), &name),
                linked.manifest.limits.max_memory_bytes,
            )
        };
        let cached = measure(instances, || {
            let h = host();
            let t = Instant::now();
            let component = cache_engine.compile(&bundle)?;
            let relinked =
                cache_engine.link(linked.manifest.clone(), &component, &Capability::ALL)?;
            let i = rt
                .block_on(InspectorInstance::new(&relinked, h))
                .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
            let took = t.elapsed();
            drop(i);
            Ok(took)
        })?;
        let init = measure(instances, || {
            let t = Instant::now();
            let i = rt
                .block_on(node.instantiate(&linked, &config))
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            let took = t.elapsed();
            drop(i);
            Ok(took)
        })?;

        let mut instance = rt
            .block_on(node.instantiate(&linked, &config))
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        for _ in 0..20 {
            rt.block_on(instance.tick())
                .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
        }
        let mut samples = Vec::with_capacity(ticks);
        for _ in 0..ticks {
            let t = Instant::now();
            rt.block_on(instance.tick())
                .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
            samples.push(t.elapsed());
        }
        drop(instance);

        // Live instances, each configured and ticked once (its memory
        // touched as a running module's is).
        let before = sample(pid)?.rss_bytes;
        let mut held = Vec::with_capacity(live);
        for _ in 0..live {
            let mut i = rt
                .block_on(node.instantiate(&linked, &config))
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            rt.block_on(i.tick())
                .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
            held.push(i);
        }
        let after = sample(pid)?.rss_bytes;
        drop(held);
        let rss_per_instance = after.saturating_sub(before) as f64 / live.max(1) as f64;

        rows.push(Row {
            lang,
            bundle_bytes: raw.len(),
            wasm_bytes: bundle.wasm.len(),
            cold,
            cold_peak_bytes,
            cached,
            init,
            tick: Timings::of(&samples).context("no tick measured")?,
            rss_per_instance,
        });
    }

    println!("\nmachine: {} at the end of the run", machine_load());
    print_table(&rows, live);
    Ok(())
}

fn measure(
    n: usize,
    mut once: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Timings> {
    once()?; // first-touch costs
    let samples = (0..n.max(1))
        .map(|_| once())
        .collect::<anyhow::Result<Vec<_>>>()?;
    Timings::of(&samples).context("nothing measured")
}

fn print_table(rows: &[Row], live: usize) {
    let pair = |t: &Timings| format!("{} / {}", duration(t.p50), duration(t.p99));
    println!();
    println!("== one inspector (memory threshold + report window), Rust vs Python ==");
    println!(
        "{:<7} {:>11} {:>12} {:>12} {:>22} {:>22} {:>22} {:>12}",
        "module",
        "bundle",
        "cold compile",
        "compile peak",
        "from cache p50/p99",
        "init p50/p99",
        "tick p50/p99",
        "RSS/instance"
    );
    for r in rows {
        println!(
            "{:<7} {:>11} {:>12} {:>12} {:>22} {:>22} {:>22} {:>12}",
            r.lang,
            bytes(r.bundle_bytes as f64),
            duration(r.cold),
            bytes(r.cold_peak_bytes as f64),
            pair(&r.cached),
            pair(&r.init),
            pair(&r.tick),
            bytes(r.rss_per_instance),
        );
    }
    for r in rows {
        println!(
            "{}: component {} of the bundle's {}",
            r.lang,
            bytes(r.wasm_bytes as f64),
            bytes(r.bundle_bytes as f64)
        );
    }
    if let [rust, python] = rows {
        let x = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
        println!(
            "python / rust: bundle ×{:.0}, cold compile ×{:.0}, from cache ×{:.0}, tick p50 ×{:.1}, RSS/instance ×{:.0}",
            x(rust.bundle_bytes as f64, python.bundle_bytes as f64),
            x(rust.cold.as_secs_f64(), python.cold.as_secs_f64()),
            x(
                rust.cached.p50.as_secs_f64(),
                python.cached.p50.as_secs_f64()
            ),
            x(rust.tick.p50.as_secs_f64(), python.tick.p50.as_secs_f64()),
            x(rust.rss_per_instance, python.rss_per_instance),
        );
    }
    println!(
        "cold compile: first Node::load (verify, Cranelift compile, write the cache), one sample;"
    );
    println!("  compile peak: the process's peak RSS during it above its RSS before");
    println!(
        "from cache:   deserialize the .cwasm this node compiled + link + instantiate (no init)"
    );
    println!("init:         Node::instantiate = host state + instantiate + init(config)");
    println!(
        "tick:         one tick() with its os::memory() host call, back to back after 20 warm-up ticks"
    );
    println!(
        "RSS/instance: process RSS growth over {live} live instances (configured, ticked once) / {live}"
    );
}
