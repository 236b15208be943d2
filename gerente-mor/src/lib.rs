//! Gerente-Mor: the top manager.
//!
//! What it is for: holding BGC (signed module bundles), BTPG (the topology
//! and which inspectors run where), the enrollment registry and BIG (the
//! consolidated history of every domain); activating one domain manager per
//! domain on its first healthy candidate station and replicating the
//! domain's bases to it as acknowledged versions; answering operators
//! through a local admin socket (`agad topology`, `agad report`, ...).
//! What it is not for: talking to nodes — domain managers do that.
//!
//! Layout:
//! - [`attest`]: attestation of each station's BC replica against BGC.
//! - [`bases`]: BGC, BTPG, enrollment and BIG in the manager's database.
//! - [`stations`]: station sessions, domain activation and replication.
//! - [`admin`]: the operator's requests and their answers.
//! - [`query`]: typed queries over BIG and the status, for the admin socket
//!   (and the web API).
//! - [`units`]: how metric values are shown (units, KiB/MiB/GiB scaling).

pub mod admin;
pub mod attest;
pub mod bases;
pub mod notify;
pub mod query;
pub mod stations;
pub mod units;
pub mod web;

use agad_guardian::{Guardian, GuardianConfig};
use agad_net::children::{Children, ChildrenConfig, serve_child};
use agad_net::server::Limits;
use agad_protocol::PublicKey;
use agad_storage::Database;
use bases::Bases;
use stations::{StationParent, Stations};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub struct MorConfig {
    /// Database and admin socket live here.
    pub data_dir: PathBuf,
    pub acceptor: TlsAcceptor,
    /// Publishers whose bundles BGC accepts.
    pub trusted: Vec<PublicKey>,
    /// How the stations are bounded and watched.
    pub children: ChildrenConfig,
    /// What the listener accepts at once.
    pub limits: Limits,
    /// How long BIG keeps alarms and reports (active alarms stay however
    /// old); `None` keeps everything.
    pub retention: Option<std::time::Duration>,
    /// After a start, how long a domain waits for the station that served
    /// it last before another candidate is activated (a restart of the top
    /// manager moves no domain).
    pub takeover_grace: Duration,
    /// How the guardian confirms that a silent station failed.
    pub guardian: GuardianConfig,
    /// How often every serving station is asked to attest its BC.
    pub attest_every: std::time::Duration,
    /// Where alarms and escalations are sent ([`notify`]); none by default.
    pub webhooks: Vec<notify::Receiver>,
    /// The web port ([`web`]): the JSON API and `/metrics`; off by default.
    pub web: Option<web::WebConfig>,
}

pub struct Mor {
    pub bases: Bases,
    trusted: Vec<PublicKey>,
    /// The connected domain-manager stations; subscribe to their events here.
    pub stations: Arc<Stations>,
    /// Log lines about data refused from a station, per station.
    refusals: agad_net::rate::RateByKey,
    /// Diagnoses the stations that go silent.
    pub guardian: Arc<Guardian>,
    /// Where each station said its nodes reach it (its host and port for
    /// the guardian's probes, kept after it leaves).
    advertised: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
    started: Instant,
    takeover_grace: Duration,
    /// The stations' attestations: nonces outstanding, last results.
    pub attestations: attest::Attestations,
    /// Alarms and escalations for the webhook receivers.
    pub notifier: Arc<notify::Notifier>,
}

/// The admin socket of a top manager whose data directory is `data_dir`.
pub fn admin_socket(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Runs the top manager until `shutdown`.
pub async fn run(
    config: MorConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let db = Database::open(&config.data_dir.join("db"))?;
    let mor = Arc::new(Mor {
        bases: Bases::open(&db)?,
        trusted: config.trusted,
        stations: Arc::new(Children::new(config.children)),
        refusals: agad_net::rate::RateByKey::log_lines(),
        guardian: Arc::new(Guardian::open(
            &db,
            "guardian-stations",
            "station",
            config.guardian,
        )?),
        advertised: Default::default(),
        started: Instant::now(),
        takeover_grace: config.takeover_grace,
        attestations: attest::Attestations::open(&db)?,
        notifier: Arc::new(notify::Notifier::open(&db, config.webhooks)?),
    });
    // Finishes what an apply cut short by a stop left: raises that can no
    // longer clear under the topology in force.
    mor.bases
        .close_orphans(None, &mor.bases.topology()?, now_ms())?;
    let watcher = tokio::spawn(mor.stations.clone().watch(shutdown.clone()));
    let guardian = tokio::spawn(mor.guardian.clone().run(
        mor.stations.clone(),
        Arc::new(stations::StationGuardian(mor.clone())),
        shutdown.clone(),
    ));
    // Domains whose last station did not come back within the grace move
    // on to a standby.
    let takeover = {
        let (mor, grace) = (mor.clone(), config.takeover_grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tokio::task::spawn_blocking(move || mor.reconcile()).await;
        })
    };
    let admin = tokio::spawn(admin::serve(
        mor.clone(),
        admin_socket(&config.data_dir),
        shutdown.clone(),
    )?);
    let prune = config.retention.map(|keep| {
        tokio::spawn(bases::big::prune_periodically(
            mor.bases.big.clone(),
            keep,
            shutdown.clone(),
        ))
    });
    let attesting = tokio::spawn(attest::run(
        mor.clone(),
        config.attest_every,
        shutdown.clone(),
    ));
    let notifying = tokio::spawn(mor.notifier.clone().run(shutdown.clone()));
    let web = match config.web {
        Some(web) => Some(web::bind(mor.clone(), web, shutdown.clone()).await?),
        None => None,
    };
    let parent = Arc::new(StationParent(mor.clone()));
    agad_net::server::serve(
        listener,
        config.acceptor,
        config.limits,
        move |connection, shutdown| serve_child(parent.clone(), connection, shutdown),
        shutdown,
    )
    .await;
    let _ = watcher.await;
    let _ = guardian.await;
    let _ = notifying.await;
    if let Some(web) = web {
        let _ = web.await;
    }
    takeover.abort();
    attesting.abort();
    admin.abort();
    if let Some(prune) = prune {
        // A prune cut short is finished by the next one.
        prune.abort();
    }
    let _ = std::fs::remove_file(admin_socket(&config.data_dir));
    db.flush()?;
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
