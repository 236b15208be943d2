//! `agad mor` and `agad dominio`: the manager processes.

use crate::identity::IdentityArgs;
use crate::module_cmd::read_public_keys;
use agad_net::server::Limits;
use agad_net::uplink::UplinkConfig;
use agad_protocol::wire::Role;
use anyhow::{Context, bail};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct MorArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// Address the domain-manager stations connect to.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// Database and admin socket (`agad topology`, `agad report` ... use it).
    #[arg(long, env = "AGAD_MOR_DIR", default_value = "agad-data/mor")]
    data_dir: PathBuf,
    /// Public key of a publisher whose bundles BGC accepts (repeatable).
    #[arg(long = "trust", required = true)]
    trusted: Vec<PathBuf>,
    /// How long BIG keeps alarms and reports (e.g. 90d, 36h); alarms still
    /// raised are kept however old. `off` keeps everything.
    #[arg(long, default_value = "90d", value_parser = parse_retention, value_name = "AGE")]
    retention: Retention,
    /// How often every serving domain-manager station must prove, for a
    /// fresh nonce, that its BC holds the exact module bytes of BGC; what
    /// fails is replicated again with its bytes and alarmed
    /// (`agad.attestation-failed`).
    #[arg(long, default_value = "60s", value_parser = crate::parse_cli_duration)]
    attest_every: Duration,
    /// TOML file of webhook receivers: every alarm BIG stores and every
    /// escalated case is POSTed to them in Alertmanager's webhook format,
    /// retried until taken (README, "Webhooks").
    #[arg(long, value_name = "FILE")]
    webhooks: Option<PathBuf>,
    /// Open the web port here: the JSON API (`/api/v1/...`) and Prometheus'
    /// `/metrics`, behind a login. Plain HTTP on a loopback address, HTTPS
    /// with this manager's certificate anywhere else (README, "Web port").
    #[arg(long, value_name = "ADDRESS")]
    web: Option<std::net::SocketAddr>,
    /// The web port's users (`agad web user add` writes it).
    /// Default: `web-users.toml` in the data directory.
    #[arg(long, value_name = "FILE")]
    web_users: Option<PathBuf>,
    /// HTTPS on the web port even on a loopback address (behind an SSH
    /// tunnel or a local proxy that passes TLS through).
    #[arg(long, requires = "web")]
    web_https: bool,
}

/// `--retention`: an age, or `off`.
#[derive(Clone, Copy)]
struct Retention(Option<Duration>);

fn parse_retention(text: &str) -> Result<Retention, String> {
    if text == "off" {
        return Ok(Retention(None));
    }
    let age = match text.strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(86_400))
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is not a number of days"))?,
        None => crate::parse_cli_duration(text)?,
    };
    if age.is_zero() {
        return Err(
            "a retention of zero would prune everything; use `off` to keep everything".into(),
        );
    }
    Ok(Retention(Some(age)))
}

#[derive(clap::Args)]
pub struct DominioArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// Top manager addresses, primary first: HOST:PORT[,HOST:PORT...].
    #[arg(long, value_delimiter = ',', required = true, value_name = "ADDR")]
    mor: Vec<String>,
    /// Address the domain's nodes connect to.
    #[arg(long, default_value = "127.0.0.1:7401")]
    listen: String,
    /// Where nodes reach this station, if not at --listen (a wildcard
    /// listen address, NAT): told to the top manager, which sends nodes
    /// that move to this domain here. HOST:PORT[,HOST:PORT...].
    #[arg(long, value_delimiter = ',', value_name = "ADDR")]
    advertise: Vec<String>,
    /// Where the station keeps BC, BTPD and BICD.
    #[arg(long, default_value = "agad-data/dominio")]
    data_dir: PathBuf,
    #[command(flatten)]
    ticket: crate::identity::TicketArgs,
    /// How often the station tells the top manager it is alive.
    #[arg(long, default_value = "10s", value_parser = crate::parse_cli_duration)]
    keepalive: Duration,
    /// How often every connected node must prove, for a fresh nonce, that
    /// it holds the exact module bytes of BC; a module found altered is
    /// redeployed with its good bytes (`agad status` shows each node's
    /// last attestation).
    #[arg(long, default_value = "60s", value_parser = crate::parse_cli_duration)]
    attest_every: Duration,
    /// Public key of a publisher whose modules a replica may carry
    /// (repeatable): every module of every replica is checked against them.
    #[arg(long = "trust", required = true)]
    trusted: Vec<PathBuf>,
}

pub fn run_mor(args: MorArgs) -> anyhow::Result<()> {
    let webhooks = match &args.webhooks {
        None => Vec::new(),
        Some(path) => agad_gerente_mor::notify::load(path).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("webhooks refused:\n{}", lines.join("\n"))
        })?,
    };
    for w in &webhooks {
        tracing::info!(webhook = %w.name, url = %w.url, "alarms and escalations go to this webhook");
    }
    let web = match args.web {
        None => None,
        Some(listen) => {
            let path = args
                .web_users
                .clone()
                .unwrap_or_else(|| args.data_dir.join("web-users.toml"));
            let users = agad_gerente_mor::web::users::Users::load(&path)?;
            if users.is_empty() {
                anyhow::bail!(
                    "{}: no users; add one with `agad web user add NAME --role admin`",
                    path.display()
                );
            }
            let tls = if listen.ip().is_loopback() && !args.web_https {
                None
            } else {
                Some(args.identity.web_server()?)
            };
            Some(agad_gerente_mor::web::WebConfig { listen, users, tls })
        }
    };
    let open_files = raise_open_files();
    let config = agad_gerente_mor::MorConfig {
        data_dir: args.data_dir.clone(),
        acceptor: args.identity.acceptor()?,
        trusted: read_public_keys(&args.trusted)?,
        children: Default::default(),
        limits: Limits::for_open_files(open_files),
        retention: args.retention.0,
        takeover_grace: std::time::Duration::from_secs(5),
        guardian: Default::default(),
        attest_every: args.attest_every,
        webhooks,
        web,
    };
    serve(&args.listen, "top manager", move |listener, shutdown| {
        agad_gerente_mor::run(config, listener, shutdown)
    })
}

pub fn run_dominio(args: DominioArgs) -> anyhow::Result<()> {
    let open_files = raise_open_files();
    let config = agad_gerente_dominio::DominioConfig {
        data_dir: args.data_dir.clone(),
        uplink: UplinkConfig {
            parents: args.mor.clone(),
            tls: args.identity.client()?,
            role: Role::Dominio,
            ticket: args.ticket.resolve()?,
            keepalive: args.keepalive,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        },
        acceptor: args.identity.acceptor()?,
        consolidation_grace: Duration::from_secs(2),
        children: Default::default(),
        limits: Limits::for_open_files(open_files),
        trusted: read_public_keys(&args.trusted)?,
        advertise: args.advertise,
        guardian: Default::default(),
        attest_every: args.attest_every,
    };
    serve(&args.listen, "domain manager", move |listener, shutdown| {
        agad_gerente_dominio::run(config, listener, shutdown)
    })
}

/// A manager holds one descriptor per child: raise the soft limit on open
/// files to the hard one (the kernel's default soft limit, 1,024, would cap a
/// domain at about a thousand nodes). Returns the limit in force, which
/// bounds the connections the manager accepts.
fn raise_open_files() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let soft = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => {
                tracing::info!(?soft, hard = ?limit.maximum, "open-file limit raised to the hard limit")
            }
            Err(e) => {
                tracing::warn!("cannot raise the open-file limit: {e}");
                limit.current = soft;
            }
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// Binds `listen`, runs `process` until Ctrl-C or SIGTERM, then lets it
/// shut down cleanly.
fn serve<F, Fut>(listen: &str, what: &str, process: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio::net::TcpListener, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        eprintln!(
            "{what} listening on {}; Ctrl-C stops",
            listener.local_addr()?
        );
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            let _ = stop.send(true);
        });
        tokio::spawn(agad_runtime::heap::keep_trimmed());
        match process(listener, shutdown).await {
            Ok(()) => Ok(()),
            Err(e) => bail!("{what}: {e:#}"),
        }
    })
}
