//! `web-live`: how long an alarm raised on a node takes to be on the web
//! page, with 2,000 nodes in the topology (issue goal: update ≤ 1 s).
//!
//! **System.** A real top manager with its web port (plain HTTP on
//! loopback), one station and one real node, as separate release `agad`
//! processes over mutual TLS ([`agad_tests::hierarchy`]). The topology
//! lists `--nodes` nodes (default 2,000) in the station's domain; one of
//! them runs: the `misbehave` test guest in `alarm-every-tick` mode, a new
//! alarm every `--period-ms` (default 2,000 ms, longer than one page update,
//! so updates do not pile up). The other nodes never connect: they are in
//! every status the page reads, as a large deployment's are, and the
//! guardian raises an alarm about each: the alarms are measured once that
//! burst is in BIG, so the real node's are the newest on the page.
//!
//! **The client does what the page does** (`gerente-mor/src/web/dashboard.html`,
//! alarms tab open): it listens on `/api/v1/events`; on an `alarm` event it
//! waits the page's coalescing delay ([`PAGE_DELAY`]), then fetches
//! `/api/v1/status`, `/api/v1/modules` and `/api/v1/alarms?limit=500&since_ms=...`
//! one after another, and the alarm counts as visible once it is in that
//! list. Not included: the browser's drawing of the table (a few
//! milliseconds for 500 rows).
//!
//! **What is timed**, from the alarm's `time_ms` (stamped on the node when
//! the tick's output is emitted; one clock, all on this machine):
//! - **event**: the `alarm` event read from the stream;
//! - **visible**: the alarm in the fetched list.
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! target/release/web-live [--quick] [--nodes N] [--alarms N] [--period-ms MS]
//! ```

use agad_benchmarks::args::Args;
use agad_benchmarks::hierarchy::node_names;
use agad_benchmarks::procfs::machine_load;
use agad_benchmarks::stats::{Timings, duration};
use agad_modules::test_guests::{MISBEHAVE_MANIFEST, MISBEHAVE_WASM};
use agad_protocol::message::Alarm;
use agad_tests::hierarchy::{Deployment, WEB_READER};
use anyhow::{Context, bail};
use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HELP: &str = "web-live: alarm on a node → visible on the web page, N nodes in the topology
usage: web-live [--quick] [--nodes N] [--alarms N] [--period-ms MS] [--warmup N]
  --quick         10 alarms instead of 30
  --nodes N       nodes in the topology, one of them real (default 2000)
  --alarms N      alarms measured (default 30)
  --period-ms MS  one alarm every MS on the real node (default 2000)
  --warmup N      first alarms left out (default 3)
needs target/release/agad: cargo build --release -p agad -p agad-benchmarks";

/// The page's delay between an event and its refresh, which gathers a
/// burst of events into one refresh (`soon` in dashboard.html).
const PAGE_DELAY: Duration = Duration::from_millis(250);
const GOAL: Duration = Duration::from_secs(1);
const MODULE: &str = "misbehave";

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let quick = args.flag("--quick");
    let nodes: usize = args.value("--nodes")?.unwrap_or(2_000);
    let measured: usize = args
        .value("--alarms")?
        .unwrap_or(if quick { 10 } else { 30 });
    let period_ms: u64 = args.value("--period-ms")?.unwrap_or(2_000);
    let warmup: usize = args.value("--warmup")?.unwrap_or(3);
    args.finish()?;
    if nodes == 0 || measured == 0 || period_ms == 0 {
        bail!("--nodes, --alarms and --period-ms must be at least 1");
    }

    let (mut d, web, _users) =
        Deployment::start_with_web(&agad_benchmarks::processes::agad_binary()?)?;
    let wasm =
        std::fs::read(MISBEHAVE_WASM).with_context(|| format!("reading {MISBEHAVE_WASM}"))?;
    d.publish(MODULE, &wasm, &std::fs::read_to_string(MISBEHAVE_MANIFEST)?)?;
    let names = node_names(nodes);
    let real = names[0].clone();
    let mut topology = "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n".to_owned();
    for n in &names {
        topology += &format!("\n[[node]]\nname = \"{n}\"\ndomain = \"d1\"\n");
    }
    topology += &format!(
        "\n[[assign]]\nmodule = \"{MODULE}\"\nnodes = [\"{real}\"]\n\
         [assign.config]\nmode = \"alarm-every-tick\"\nperiod = \"{period_ms}ms\"\n"
    );
    d.apply(&topology)?;
    let station = d.start_station("s1")?;

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let login = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", WEB_READER.0, WEB_READER.1))
        )
    };
    // The stream, subscribed before the node starts: (alarm, read at ms).
    let (alarms_tx, alarms) = mpsc::channel::<(Alarm, f64)>();
    let mut stream = agent
        .get(&format!("http://{web}/api/v1/events"))
        .header("Authorization", &login)
        .call()?;
    if stream.status() != 200 {
        bail!("/api/v1/events: {}", stream.status());
    }
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(stream.body_mut().as_reader());
        let mut alarm_event = false;
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(kind) = line.strip_prefix("event: ") {
                alarm_event = kind == "alarm";
            } else if let Some(data) = line.strip_prefix("data: ")
                && alarm_event
                && let Ok(alarm) = serde_json::from_str::<Alarm>(data)
                && alarms_tx.send((alarm, now_ms())).is_err()
            {
                return;
            }
        }
    });
    d.start_node(&real, &station)?;

    let get = |path: &str| -> anyhow::Result<Vec<u8>> {
        let mut r = agent
            .get(&format!("http://{web}{path}"))
            .header("Authorization", &login)
            .call()?;
        if r.status() != 200 {
            bail!("{path}: {}", r.status());
        }
        Ok(r.body_mut().with_config().limit(256 << 20).read_to_vec()?)
    };
    // The other nodes never connect, so the guardian soon confirms each of
    // them failed: a burst of one alarm per silent node, newer than the
    // real node's, which would push those out of the page's newest 500.
    // Measured once the burst is in BIG (its events are dropped).
    let burst = std::time::Instant::now();
    let silent = nodes - 1;
    eprintln!("waiting for the guardian's alarms about the {silent} silent nodes...");
    loop {
        let list: serde_json::Value = serde_json::from_slice(&get(&format!(
            "/api/v1/alarms?module=agad&limit={}&since_ms={}",
            silent + 1,
            now_ms() as u64 - 3_600_000
        ))?)?;
        let about_silent = list["alarms"].as_array().map_or(0, |a| {
            a.iter().filter(|a| a["node"] != real.as_str()).count()
        });
        if about_silent >= silent {
            break;
        }
        if burst.elapsed() > Duration::from_secs(900) {
            bail!(
                "after 15 minutes, guardian alarms about {about_silent} of the {silent} silent nodes"
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(5));
    let dropped = alarms.try_iter().count();
    eprintln!(
        "guardian's burst in BIG after {:.0} s ({dropped} alarm events dropped)",
        burst.elapsed().as_secs_f64()
    );
    let mut event = Vec::new();
    let mut visible = Vec::new();
    let mut status_bytes = 0;
    let wanted = warmup + measured;
    let patience = Duration::from_millis(period_ms * 4) + Duration::from_secs(120);
    let mut seen = 0;
    eprintln!("collecting {wanted} alarms, one every {period_ms} ms...");
    while seen < wanted {
        let (first, read_at) = alarms
            .recv_timeout(patience)
            .context("no alarm event on the stream")?;
        // What arrives during the page's delay is in the same refresh.
        std::thread::sleep(PAGE_DELAY);
        let mut batch = vec![(first, read_at)];
        batch.extend(alarms.try_iter());
        status_bytes = get("/api/v1/status")?.len();
        get("/api/v1/modules")?;
        let since = now_ms() as u64 - 3_600_000;
        let list: serde_json::Value =
            serde_json::from_slice(&get(&format!("/api/v1/alarms?limit=500&since_ms={since}"))?)?;
        let shown_at = now_ms();
        let ids: Vec<&str> = list["alarms"]
            .as_array()
            .context("an alarm list without `alarms`")?
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        for (alarm, read_at) in batch {
            if alarm.node != real {
                continue;
            }
            seen += 1;
            if seen <= warmup {
                continue;
            }
            if !ids.contains(&alarm.id.as_str()) {
                bail!(
                    "alarm {} (raised {}, time_ms {}) was on the stream but not in the list of {}: newest {:?}",
                    alarm.id,
                    alarm.raised,
                    alarm.time_ms,
                    ids.len(),
                    &ids[..ids.len().min(5)]
                );
            }
            let emitted = alarm.time_ms as f64;
            event.push(Duration::from_secs_f64(
                (read_at - emitted).max(0.0) / 1000.0,
            ));
            visible.push(Duration::from_secs_f64(
                (shown_at - emitted).max(0.0) / 1000.0,
            ));
        }
    }
    d.stop(&real)?;

    println!();
    println!(
        "== web-live: alarm on a node → on the page, {nodes} nodes in the topology (1 running), \
         separate processes, mutual TLS, HTTP on loopback =="
    );
    println!("machine: {}", machine_load());
    println!(
        "{} alarms measured after {warmup} warm-up ones; /api/v1/status is {status_bytes} bytes",
        event.len()
    );
    for (what, samples) in [
        ("event on /api/v1/events", &event),
        ("visible (delay + 3 fetches)", &visible),
    ] {
        let t = Timings::of(samples).context("no samples")?;
        println!(
            "{what:<30} p50 {:>10}  p99 {:>10}  max {:>10}",
            duration(t.p50),
            duration(t.p99),
            duration(t.max)
        );
    }
    let t = Timings::of(&visible).context("no samples")?;
    println!(
        "goal: visible ≤ {} (max): {} — includes the page's {} coalescing delay; from the \
         alarm's time_ms, truncated to the millisecond",
        duration(GOAL),
        if t.max <= GOAL { "met" } else { "NOT met" },
        duration(PAGE_DELAY)
    );
    Ok(())
}

/// Milliseconds since the epoch, with a fraction.
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default()
}
