//! What idle, never-finished connections cost a real domain manager.
//!
//! A real `agad dominio` (under a real `agad mor`) is held by `--connections`
//! (default 1,000) mutually authenticated TLS connections from one certified
//! but never-enrolled node. Each announces a frame of the full 32 MiB cap,
//! sends 1 KiB of it, and then nothing more. Prints the manager's resident
//! memory before, while they are held, its peak, and after the manager's
//! hello deadline has closed them, with the cost per connection.
//!
//! Before frames were allocated as bytes arrive, each such connection made
//! the manager allocate the announced 32 MiB at once (about 32 GB for 1,000).
//!
//! Usage: `idle-connections [--connections 1000]`; build with
//! `cargo build --release -p agad -p agad-benchmarks` first.

use agad_benchmarks::args::Args;
use agad_benchmarks::hierarchy::ensure_open_files;
use agad_benchmarks::procfs;
use agad_benchmarks::stats::bytes;
use agad_net::{Identity, TrustAnchor, client_config};
use agad_protocol::wire::{HEADER_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION};
use anyhow::Context;
use rustls::pki_types::ServerName;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The hello deadline of every manager (`ChildrenConfig::hello_timeout`).
const HELLO_DEADLINE: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") {
        println!("idle-connections [--connections 1000]");
        return Ok(());
    }
    let connections: usize = args.value("--connections")?.unwrap_or(1000);
    args.finish()?;
    ensure_open_files(connections as u64 + 256)?;

    let mut d = agad_benchmarks::processes::start("warn")?;
    let station = d.start_station("s1")?;
    d.issue("node", "idle")?;
    let pid = d.pid("s1")?;
    let tls = client_config(
        &Identity::load(&d.path("pki/idle.crt"), &d.path("pki/idle.key"))?,
        &TrustAnchor::load(&d.path("pki/ca.crt"))?,
    )?;
    // Settle: the station has its replica and nothing else to do.
    std::thread::sleep(Duration::from_secs(2));
    let before = procfs::sample(pid)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let held = runtime.block_on(async {
        // The header of a frame at the cap, and the first KiB of its body.
        let mut start = Vec::with_capacity(HEADER_LEN + 1024);
        start.extend_from_slice(&u32::try_from(MAX_FRAME_LEN)?.to_be_bytes());
        start.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        start.extend_from_slice(&[0u8; 1024]);
        let mut held = Vec::with_capacity(connections);
        // In waves below the manager's bound on handshakes in flight.
        for wave in (0..connections).collect::<Vec<_>>().chunks(100) {
            let mut opening = tokio::task::JoinSet::new();
            for _ in wave {
                let (tls, station, start) = (tls.clone(), station.clone(), start.clone());
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
                held.push(link??);
            }
        }
        anyhow::Ok(held)
    })?;
    let opened_in = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let holding = procfs::sample(pid)?;
    println!(
        "idle-connections: {} connections, each announcing a {} frame and sending 1 KiB, opened in {:.1} s",
        held.len(),
        bytes(MAX_FRAME_LEN as f64),
        opened_in.as_secs_f64()
    );
    println!(
        "  agad dominio RSS: before {}, holding them {}, peak {} → {} per connection",
        bytes(before.rss_bytes as f64),
        bytes(holding.rss_bytes as f64),
        bytes(holding.peak_rss_bytes as f64),
        bytes(holding.rss_bytes.saturating_sub(before.rss_bytes) as f64 / held.len() as f64)
    );
    // The hello deadline closes every one of them.
    std::thread::sleep(HELLO_DEADLINE + Duration::from_secs(3));
    let after = procfs::sample(pid)?;
    let closed = runtime.block_on(async {
        let mut closed = 0;
        for mut link in held {
            let mut byte = [0u8; 1];
            use tokio::io::AsyncReadExt;
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(50), link.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        closed
    });
    println!(
        "  after the {} s hello deadline: {closed} of {connections} closed by the manager, RSS {}",
        HELLO_DEADLINE.as_secs(),
        bytes(after.rss_bytes as f64)
    );
    d.check().context("the domain manager did not survive")?;
    Ok(())
}
