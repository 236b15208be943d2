//! What idle, never-finished connections cost a real domain manager, and
//! whether a real node still gets in meanwhile.
//!
//! A real `agad dominio` (under a real `agad mor`, logging at `info` as
//! deployed) is attacked twice by certified but never-enrolled nodes:
//!
//! 1. **Many certificates**: `--connections` (default 1,000) TLS connections,
//!    one per certificate, each announcing the largest frame a peer not yet
//!    admitted may send (64 KiB), sending 1 KiB of it, then nothing: the
//!    most a waiting room of strangers can hold (256 waiters; newcomers
//!    shed the oldest). Printed: the manager's RSS before, holding them,
//!    and its peak, per connection; how many it closed by its hello
//!    deadline (10 s).
//! 2. **One certificate**: the same number of connections from one
//!    certificate, sending nothing; printed: how many the manager kept
//!    (its per-certificate share of the waiting room) and how many it
//!    refused at the handshake (per-source bound).
//!
//! During each attack a real `agad node` enrolls, and the time until its
//! first alarm is in BIG is printed. The manager's log growth is printed
//! per attacking certificate. A certificate announcing a 32 MiB frame before
//! its hello is refused at its header (not measured here: see the
//! `hostile_peers` tests).
//!
//! Usage: `idle-connections [--connections 1000]`; build with
//! `cargo build --release -p agad -p agad-benchmarks` first.

use agad_benchmarks::args::Args;
use agad_benchmarks::hierarchy::ensure_open_files;
use agad_benchmarks::procfs;
use agad_benchmarks::stats::bytes;
use agad_net::{Identity, TrustAnchor, client_config};
use agad_protocol::wire::{HEADER_LEN, PROTOCOL_VERSION, Role};
use agad_tests::hierarchy::Deployment;
use anyhow::Context;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The hello deadline of every manager (`ChildrenConfig::hello_timeout`).
const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// The largest frame a peer may send before it is admitted
/// (`ChildrenConfig::max_hello_frame`).
const HELLO_FRAME: usize = 64 * 1024;

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") {
        println!("idle-connections [--connections 1000]");
        return Ok(());
    }
    let connections: usize = args.value("--connections")?.unwrap_or(1000);
    args.finish()?;
    ensure_open_files(connections as u64 + 256)?;

    let mut d = agad_benchmarks::processes::start("info")?;
    d.publish_inspector("cpu-mem")?;
    d.apply(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n\
         [[node]]\nname = \"real-1\"\ndomain = \"d1\"\n[[node]]\nname = \"real-2\"\ndomain = \"d1\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d1\"\n[assign.config]\nperiod = \"1s\"\nmem_percent = 0.1\nwindow_secs = 1\n",
    )?;
    let station = d.start_station("s1")?;
    let pid = d.pid("s1")?;
    let trust = TrustAnchor::load(&d.path("pki/ca.crt"))?;
    let pki = d.path("pki");
    let strangers: Vec<Arc<ClientConfig>> = (0..connections)
        .map(|i| {
            let name = format!("stranger-{i}");
            agad_net::issue(&pki, Role::Node, &name, &pki.join("strangers"))?;
            let dir = pki.join("strangers");
            let identity = Identity::load(
                &dir.join(format!("{name}.crt")),
                &dir.join(format!("{name}.key")),
            )?;
            Ok(client_config(&identity, &trust)?)
        })
        .collect::<anyhow::Result<_>>()?;
    // Settle: the station has its replica and nothing else to do.
    std::thread::sleep(Duration::from_secs(2));
    let idle = procfs::sample(pid)?;
    println!(
        "idle-connections: agad dominio idle RSS {}; {connections} connections per attack",
        bytes(idle.rss_bytes as f64)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // 1. One connection per certificate, each a started hello frame.
    let mut start = Vec::with_capacity(HEADER_LEN + 1024);
    start.extend_from_slice(&u32::try_from(HELLO_FRAME)?.to_be_bytes());
    start.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    start.extend_from_slice(&[0u8; 1024]);
    let log_before = d.log("s1").len();
    let opened = Instant::now();
    let (held, refused) = runtime.block_on(open(&station, strangers.clone(), &start));
    let opened_in = opened.elapsed();
    let admitted_in = admit_real_node(&mut d, "real-1", &station)?;
    let holding = procfs::sample(pid)?;
    println!(
        "1. {} certificates, one connection each announcing a {} hello and sending 1 KiB: {} held, {refused} refused, opened in {:.1} s",
        connections,
        bytes(HELLO_FRAME as f64),
        held.len(),
        opened_in.as_secs_f64()
    );
    println!(
        "   RSS holding them {} (peak {}, {:.2}× idle) → {} per connection; real node's first alarm in BIG {:.1} s after it started",
        bytes(holding.rss_bytes as f64),
        bytes(holding.peak_rss_bytes as f64),
        holding.peak_rss_bytes as f64 / idle.rss_bytes as f64,
        bytes(holding.rss_bytes.saturating_sub(idle.rss_bytes) as f64 / held.len().max(1) as f64),
        admitted_in.as_secs_f64()
    );
    std::thread::sleep(HELLO_DEADLINE + Duration::from_secs(3));
    let closed = runtime.block_on(count_closed(held));
    let after = procfs::sample(pid)?;
    let grown = d.log("s1").len() - log_before;
    println!(
        "   after the {} s hello deadline: {closed} closed by the manager, RSS {}; log grew {} ({} per certificate)",
        HELLO_DEADLINE.as_secs(),
        bytes(after.rss_bytes as f64),
        bytes(grown as f64),
        bytes(grown as f64 / connections as f64)
    );

    // 2. All from one certificate, sending nothing.
    let one = vec![strangers[0].clone(); connections];
    let log_before = d.log("s1").len();
    let before = procfs::sample(pid)?;
    procfs::reset_peak(pid)?;
    let (held, refused) = runtime.block_on(open(&station, one, &[]));
    let admitted_in = admit_real_node(&mut d, "real-2", &station)?;
    let attempted = held.len();
    let kept = runtime.block_on(count_open(held));
    let grown = d.log("s1").len() - log_before;
    let now = procfs::sample(pid)?;
    println!(
        "2. one certificate, {connections} idle connections: {attempted} completed the handshake, {refused} refused at it, {kept} kept waiting by the manager"
    );
    println!(
        "   real node's first alarm in BIG {:.1} s after it started; RSS before {}, peak during this attack {} ({:.2}× before); log grew {} for this certificate",
        admitted_in.as_secs_f64(),
        bytes(before.rss_bytes as f64),
        bytes(now.peak_rss_bytes as f64),
        now.peak_rss_bytes as f64 / before.rss_bytes as f64,
        bytes(grown as f64)
    );
    d.check().context("the domain manager did not survive")?;
    Ok(())
}

/// Opens a TLS connection per config and writes `start` on each; returns
/// those that completed the handshake and how many did not.
async fn open(
    station: &str,
    configs: Vec<Arc<ClientConfig>>,
    start: &[u8],
) -> (Vec<TlsStream<TcpStream>>, usize) {
    let (mut held, mut refused) = (Vec::new(), 0);
    // In waves of 32, the handshakes one source address may have in flight.
    for wave in configs.chunks(32) {
        let mut opening = tokio::task::JoinSet::new();
        for tls in wave {
            let (tls, station, start) = (tls.clone(), station.to_owned(), start.to_vec());
            opening.spawn(async move {
                let tcp = TcpStream::connect(&station).await?;
                let mut link = TlsConnector::from(tls)
                    .connect(ServerName::try_from("agad")?, tcp)
                    .await?;
                link.write_all(&start).await?;
                link.flush().await?;
                anyhow::Ok(link)
            });
        }
        while let Some(link) = opening.join_next().await {
            match link {
                Ok(Ok(link)) => held.push(link),
                _ => refused += 1,
            }
        }
    }
    (held, refused)
}

/// How many of `links` the manager has closed.
async fn count_closed(links: Vec<TlsStream<TcpStream>>) -> usize {
    let total = links.len();
    total - count_open(links).await
}

/// How many of `links` the manager keeps open (nothing to read within 50 ms).
async fn count_open(links: Vec<TlsStream<TcpStream>>) -> usize {
    let mut open = 0;
    for mut link in links {
        let mut byte = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(50), link.read(&mut byte))
            .await
            .is_err()
        {
            open += 1;
        }
    }
    open
}

/// Starts a real node under `station` (certificate, ticket, activation) and
/// returns how long until its first alarm was in BIG.
fn admit_real_node(d: &mut Deployment, name: &str, station: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    d.start_node(name, station)?;
    d.wait_for(&format!("{name}'s first alarm in BIG"), |d| {
        Ok(d.alarms()?.into_iter().find(|a| a.node == name))
    })?;
    Ok(started.elapsed())
}
