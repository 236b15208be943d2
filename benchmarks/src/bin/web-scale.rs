//! `web-scale`: the top manager's web port with 2,000 nodes in the topology
//! (issue goals: the page's first load ≤ 1 s; `/metrics` scrape size and
//! time reported).
//!
//! **System.** A real top manager (`gerente_mor::run`, in this process, its
//! web port on loopback), whose BIG holds `--windows` consolidated windows
//! (default 10) of one domain of 2,000 nodes, each node with 5 metrics
//! (10,000 series), written through BIG's own API before it starts. The
//! client is a real HTTP client (ureq) with a login; the first request
//! pays the Argon2 check, the others reuse it (as a browser or Prometheus
//! does within 5 minutes).
//!
//! **What is timed** (wall clock, client side, each `--repeat` times):
//! - **first load**: what the page fetches before it can draw: `GET /`, then
//!   `/api/v1/status` and `/api/v1/alarms?limit=500`, one after another;
//! - **`/metrics`**: one scrape, with the bytes of its body.
//!
//! Not measured here: the live-update delay (alarm raised on a node →
//! visible in the page), which needs stations and nodes; the browser test
//! (`agad/tests/browser.rs`) shows it works but times nothing.
//!
//! ```sh
//! cargo run --release -p agad-benchmarks --bin web-scale -- [--quick] [--nodes N] [--windows W] [--repeat R]
//! ```

use agad_benchmarks::args::Args;
use agad_benchmarks::hierarchy::{Pki, node_names, topology_text};
use agad_benchmarks::stats::{Timings, duration};
use agad_gerente_mor::bases::Bases;
use agad_protocol::message::{Provenance, Summary};
use agad_protocol::wire::{DomainReport, NodeSummary};
use agad_storage::Database;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HELP: &str = "web-scale: first load of the page and /metrics with N nodes
usage: web-scale [--quick] [--nodes N] [--windows W] [--repeat R]
  --quick   5 runs of each instead of 20";

const METRICS: [(&str, &str); 5] = [
    ("cpu.total-percent", "%"),
    ("mem.used-percent", "%"),
    ("load.one", ""),
    ("fs.used-percent", "%"),
    ("if.in-bps", "bit/s"),
];
const WINDOW_MS: u64 = 60_000;
const USER: (&str, &str) = ("bench", "a bench password");
const GOAL_FIRST_LOAD: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let nodes: usize = args.value("--nodes")?.unwrap_or(2_000);
    let windows: u64 = args.value("--windows")?.unwrap_or(10);
    let repeat: usize = args
        .value("--repeat")?
        .unwrap_or(if quick { 5 } else { 20 });
    args.finish()?;

    let tmp = tempfile::tempdir()?;
    let data_dir = tmp.path().join("mor");
    let names = node_names(nodes);
    let filled = Instant::now();
    {
        let db = Database::open(&data_dir.join("db"))?;
        let bases = Bases::open(&db)?;
        let text = topology_text(&names, &[]);
        let topology = agad_protocol::topology::parse(&text, "bench.toml", &|_| None)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        bases.apply_topology(&topology)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let first = now / WINDOW_MS * WINDOW_MS - windows * WINDOW_MS;
        for w in 0..windows {
            let start = first + w * WINDOW_MS;
            let summary = |metric: &str, unit: &str, i: usize| Summary {
                metric: metric.into(),
                subject: String::new(),
                unit: unit.into(),
                min: (i % 10) as f64,
                max: 50.0 + (i % 50) as f64,
                mean: 25.0 + (i % 25) as f64,
                last: 30.0,
                count: 6,
                coverage: 1.0,
                window_start_ms: start,
                window_end_ms: start + WINDOW_MS,
            };
            let node_rows = names
                .iter()
                .enumerate()
                .flat_map(|(i, node)| {
                    METRICS.iter().map(move |(metric, unit)| NodeSummary {
                        node: node.clone(),
                        module: "cpu-mem".into(),
                        provenance: Provenance::default(),
                        summary: summary(metric, unit, i),
                    })
                })
                .collect();
            bases.record_report(&DomainReport {
                id: format!("{}/{start}", agad_benchmarks::hierarchy::DOMAIN),
                domain: agad_benchmarks::hierarchy::DOMAIN.into(),
                window_start_ms: start,
                window_end_ms: start + WINDOW_MS,
                consolidated_ms: start + WINDOW_MS,
                nodes: node_rows,
                domain_summaries: Vec::new(),
            })?;
        }
        db.flush()?;
    }
    eprintln!(
        "BIG filled: {nodes} nodes × {} metrics × {windows} windows in {:.1?}",
        METRICS.len(),
        filled.elapsed()
    );

    let users_file = tmp.path().join("users.toml");
    agad_gerente_mor::web::users::add_user(
        &users_file,
        USER.0,
        agad_gerente_mor::web::users::Role::ReadOnly,
        USER.1,
    )?;
    let pki = Pki::create(&tmp.path().join("pki"))?;
    pki.issue(agad_protocol::wire::Role::Mor, "mor")?;
    let web = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let acceptor = pki.acceptor("mor")?;
    let mor = runtime.spawn({
        let data_dir = data_dir.clone();
        let users = agad_gerente_mor::web::users::Users::load(&users_file)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let config = agad_gerente_mor::MorConfig {
                data_dir,
                acceptor,
                trusted: Vec::new(),
                children: Default::default(),
                limits: Default::default(),
                retention: None,
                takeover_grace: Duration::from_secs(5),
                guardian: Default::default(),
                attest_every: Duration::from_secs(3600),
                webhooks: Vec::new(),
                web: Some(agad_gerente_mor::web::WebConfig {
                    listen: web,
                    users,
                    tls: None,
                }),
            };
            agad_gerente_mor::run(config, listener, shutdown).await
        }
    });

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let login = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", USER.0, USER.1))
        )
    };
    let get = |path: &str| -> anyhow::Result<(u16, usize)> {
        let mut r = agent
            .get(&format!("http://{web}{path}"))
            .header("Authorization", &login)
            .call()?;
        let status = r.status().as_u16();
        let body = r.body_mut().with_config().limit(512 << 20).read_to_vec()?;
        Ok((status, body.len()))
    };
    // The port is up once it answers; the first answer pays the Argon2 check.
    let ready = Instant::now();
    loop {
        match get("/api/v1/status") {
            Ok((200, _)) => break,
            _ if ready.elapsed() > Duration::from_secs(30) => {
                anyhow::bail!("web port never answered")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }

    let mut first_load = Vec::with_capacity(repeat);
    let mut page_bytes = 0;
    for _ in 0..repeat {
        let start = Instant::now();
        let mut bytes = 0;
        for path in ["/", "/api/v1/status", "/api/v1/alarms?limit=500"] {
            let (status, n) = get(path)?;
            anyhow::ensure!(status == 200, "{path}: {status}");
            bytes += n;
        }
        first_load.push(start.elapsed());
        page_bytes = bytes;
    }
    let mut scrapes = Vec::with_capacity(repeat);
    let mut scrape_bytes = 0;
    for _ in 0..repeat {
        let start = Instant::now();
        let (status, n) = get("/metrics")?;
        anyhow::ensure!(status == 200, "/metrics: {status}");
        scrapes.push(start.elapsed());
        scrape_bytes = n;
    }
    let _ = stop.send(true);
    let _ = runtime.block_on(mor);

    println!();
    println!(
        "== web-scale: {nodes} nodes, {} series, {windows} windows in BIG; real top manager, HTTP on loopback ==",
        nodes * METRICS.len()
    );
    println!("machine: {}", agad_benchmarks::procfs::machine_load());
    for (what, samples, bytes, goal) in [
        (
            "first load (page + status + alarms)",
            &first_load,
            page_bytes,
            Some(GOAL_FIRST_LOAD),
        ),
        ("/metrics scrape", &scrapes, scrape_bytes, None),
    ] {
        let t = Timings::of(samples).ok_or_else(|| anyhow::anyhow!("no samples"))?;
        println!(
            "{what:<38} {:>4} runs  p50 {:>10}  max {:>10}  {:>9} bytes{}",
            t.count,
            duration(t.p50),
            duration(t.max),
            bytes,
            match goal {
                Some(goal) => format!(
                    "   goal ≤ {}: {}",
                    duration(goal),
                    if t.max <= goal { "met" } else { "NOT met" }
                ),
                None => String::new(),
            }
        );
    }
    Ok(())
}
