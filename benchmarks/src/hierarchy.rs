//! A hierarchy to measure: the deployment's certificates, a top manager
//! whose bases are filled before it starts, and simulated nodes.
//!
//! A simulated node is a TLS client with its own certificate (role node)
//! that speaks the node's side of the wire protocol — hello, deployment
//! acknowledgements, keep-alives, reports — without a wasm runtime, so that
//! thousands fit in the benchmark's process. Everything else is the real
//! thing: `agad_gerente_mor::run`, the domain manager (in-process or the
//! `agad dominio` binary), mutual TLS 1.3 and the one frame codec.
//!
//! The topology is always one domain, [`DOMAIN`], served by station
//! [`STATION`], holding every node of the run.

use crate::builtins::{module_config, unix_now};
use agad_gerente_mor::bases::Bases;
use agad_net::conn::{FrameReader, FrameWriter};
use agad_net::tls::{self, Identity, TrustAnchor};
use agad_protocol::wire::{Control, Enrollment, Message, Role};
use agad_protocol::{Bundle, PublicKey};
use agad_storage::Database;
use agad_tests::hierarchy::{Deployment, free_address};
use anyhow::{Context, bail};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Certificate name of the top manager.
pub const MOR: &str = "mor";
/// Certificate name of the one domain-manager station.
pub const STATION: &str = "dom-1";
/// The one domain.
pub const DOMAIN: &str = "bench";

/// Longest a TCP connect plus TLS handshake plus welcome may take.
const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(10);
/// Pause before a simulated node asks again (refused, or no replica yet).
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// The deployment's CA and the certificates issued from it, as files in one
/// directory laid out as `agad pki` writes it (so `agad dominio --pki DIR`
/// can use it too).
pub struct Pki {
    dir: PathBuf,
    ca: TrustAnchor,
}

impl Pki {
    /// A new CA in `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        agad_net::pki::init_ca(dir, "agad-bench")?;
        let ca = TrustAnchor::load(&dir.join("ca.crt"))?;
        Ok(Pki {
            dir: dir.to_owned(),
            ca,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues `name`'s certificate; returns its fingerprint.
    pub fn issue(&self, role: Role, name: &str) -> anyhow::Result<String> {
        let issued = agad_net::pki::issue(&self.dir, role, name, &self.dir)
            .with_context(|| format!("issuing the certificate of {name}"))?;
        Ok(issued.fingerprint)
    }

    /// Issues one node certificate per name, on every core; their
    /// fingerprints in the same order.
    pub fn issue_nodes(&self, names: &[String]) -> anyhow::Result<Vec<String>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = names.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = names
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|name| self.issue(Role::Node, name))
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut fingerprints = Vec::with_capacity(names.len());
            for worker in workers {
                let part = worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a certificate thread panicked"))??;
                fingerprints.extend(part);
            }
            Ok(fingerprints)
        })
    }

    fn identity(&self, name: &str) -> anyhow::Result<Identity> {
        Ok(Identity::load(
            &self.dir.join(format!("{name}.crt")),
            &self.dir.join(format!("{name}.key")),
        )?)
    }

    /// TLS for `name` connecting to its parent.
    pub fn client(&self, name: &str) -> anyhow::Result<Arc<ClientConfig>> {
        Ok(tls::client_config(&self.identity(name)?, &self.ca)?)
    }

    /// TLS for `name` accepting its children.
    pub fn acceptor(&self, name: &str) -> anyhow::Result<TlsAcceptor> {
        Ok(TlsAcceptor::from(tls::server_config(
            &self.identity(name)?,
            &self.ca,
        )?))
    }
}

/// `node-00001`, `node-00002`, ...: `n` node names.
pub fn node_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("node-{i:05}")).collect()
}

/// A topology file: [`DOMAIN`] served by [`STATION`] with every node in
/// `nodes`, and each module of `modules` assigned to the whole domain with
/// the benchmark configuration ([`module_config`]).
pub fn topology_text(nodes: &[String], modules: &[&str]) -> String {
    let mut text = format!("[[domain]]\nname = \"{DOMAIN}\"\nstations = [\"{STATION}\"]\n");
    for node in nodes {
        text += &format!("\n[[node]]\nname = \"{node}\"\ndomain = \"{DOMAIN}\"\n");
    }
    let watched = ["agad".to_owned()];
    for module in modules {
        text += &format!("\n[[assign]]\nmodule = \"{module}\"\ndomain = \"{DOMAIN}\"\n");
        let config = module_config(module, &watched);
        if !config.is_empty() {
            text += "[assign.config]\n";
            for (key, value) in config {
                text += &format!("{key} = \"{value}\"\n");
            }
        }
    }
    text
}

/// Someone the top manager is to know as active.
#[derive(Debug, Clone)]
pub struct Enrollee {
    pub name: String,
    pub role: Role,
    pub fingerprint: String,
}

/// Certificates for [`MOR`], [`STATION`] and `n` nodes ([`node_names`]);
/// the node names and everyone the top manager is to know as active.
pub fn issue_all(pki: &Pki, n: usize) -> anyhow::Result<(Vec<String>, Vec<Enrollee>)> {
    pki.issue(Role::Mor, MOR)?;
    let mut enrollees = vec![Enrollee {
        name: STATION.to_owned(),
        role: Role::Dominio,
        fingerprint: pki.issue(Role::Dominio, STATION)?,
    }];
    let names = node_names(n);
    let fingerprints = pki.issue_nodes(&names)?;
    enrollees.extend(
        names
            .iter()
            .zip(fingerprints)
            .map(|(name, fingerprint)| Enrollee {
                name: name.clone(),
                role: Role::Node,
                fingerprint,
            }),
    );
    Ok((names, enrollees))
}

/// Fills the bases of a top manager that is not running yet (the database
/// has one opener at a time): `bundles` published, every enrollee enrolled
/// and active, `topology` (a topology file's text) in force.
pub fn prepare_mor(
    data_dir: &Path,
    bundles: &[Bundle],
    trusted: &[PublicKey],
    enrollees: &[Enrollee],
    topology: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let db = Database::open(&data_dir.join("db"))?;
    let bases = Bases::open(&db)?;
    let now = unix_now();
    for bundle in bundles {
        bases
            .publish(bundle, trusted, now)
            .with_context(|| format!("publishing {}", bundle.manifest.name))?;
    }
    for e in enrollees {
        // A ticket approves on enrollment; approving by fingerprint would
        // scan the whole registry once per member.
        let ticket = bases.ticket(&e.name)?;
        let (state, _) = bases.enroll(&e.name, e.role, &e.fingerprint, Some(&ticket))?;
        if state != Enrollment::Inactive {
            bail!(
                "{} enrolled as {state:?}, not approved by its ticket",
                e.name
            );
        }
        bases.activate(&e.name)?;
    }
    let published = |name: &str| {
        bundles
            .iter()
            .find(|b| b.manifest.name == name)
            .map(|b| b.manifest.config.as_slice())
    };
    let parsed = agad_protocol::topology::parse(topology, "bench.toml", &published)?;
    bases.apply_topology(&parsed)?;
    db.flush()?;
    Ok(())
}

/// Starts the top manager on a loopback port, on the current runtime;
/// returns its address once its admin socket is there.
pub async fn start_mor(
    data_dir: &Path,
    acceptor: TlsAcceptor,
    trusted: Vec<PublicKey>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let config = agad_gerente_mor::MorConfig {
        data_dir: data_dir.to_owned(),
        acceptor,
        trusted,
        children: Default::default(),
        limits: Default::default(),
        retention: None,
        takeover_grace: std::time::Duration::from_secs(5),
        guardian: Default::default(),
        attest_every: std::time::Duration::from_secs(60),
        webhooks: Vec::new(),
        web: None,
    };
    let task = tokio::spawn(agad_gerente_mor::run(config, listener, shutdown));
    let socket = agad_gerente_mor::admin_socket(data_dir);
    let deadline = Instant::now() + HANDSHAKE_PATIENCE;
    while !socket.exists() {
        if task.is_finished() || Instant::now() > deadline {
            bail!("the top manager did not open {}", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((address, task))
}

/// A simulated node: its name and TLS client configuration.
pub type SimulatedNode = (String, Arc<ClientConfig>);

/// The PKI and bases of a domain of `n` simulated nodes, prepared in `d`'s
/// folder (the top manager's data in `mor/`, not running yet): every node
/// enrolled and active, nothing assigned. Each node's name and TLS client
/// configuration.
pub fn simulated_domain(d: &Deployment, n: usize) -> anyhow::Result<(Pki, Vec<SimulatedNode>)> {
    let pki = Pki::create(&d.path("pki"))?;
    let (names, enrollees) = issue_all(&pki, n)?;
    prepare_mor(
        &d.path("mor"),
        &[],
        &[],
        &enrollees,
        &topology_text(&names, &[]),
    )?;
    let nodes = names
        .iter()
        .map(|name| Ok((name.clone(), pki.client(name)?)))
        .collect::<anyhow::Result<_>>()?;
    Ok((pki, nodes))
}

/// The harness's name of the `agad dominio` process.
pub const DOMINIO: &str = "dominio";

/// Starts `agad dominio` as the process [`DOMINIO`] of `d`, serving
/// [`STATION`] under the top manager at `mor` with the certificates in
/// `pki`, `extra` appended to its command line; the address its nodes
/// connect to.
pub fn start_dominio(
    d: &mut Deployment,
    pki: &Pki,
    mor: SocketAddr,
    extra: &[&str],
) -> anyhow::Result<SocketAddr> {
    // A port the kernel just handed out and took back: free for the child.
    let address = free_address()?;
    let pki_dir = pki.dir().to_str().context("the PKI path is not UTF-8")?;
    let mor = mor.to_string();
    let publisher = publisher_key(d)?;
    let mut args = vec![
        "dominio",
        "--pki",
        pki_dir,
        "--name",
        STATION,
        "--mor",
        &mor,
        "--listen",
        &address,
        "--data-dir",
        DOMINIO,
        "--trust",
        &publisher,
    ];
    args.extend_from_slice(extra);
    d.spawn(DOMINIO, &args)?;
    Ok(address.parse()?)
}

/// Starts `agad mor` as the process [`MOR`] of `d` on the bases
/// [`simulated_domain`] prepared in its `mor/` folder, with the
/// certificates in `pki`; its address once its admin socket is there.
pub fn start_mor_process(d: &mut Deployment, pki: &Pki) -> anyhow::Result<SocketAddr> {
    let address = free_address()?;
    let pki_dir = pki.dir().to_str().context("the PKI path is not UTF-8")?;
    let publisher = publisher_key(d)?;
    d.spawn(
        MOR,
        &[
            "mor",
            "--pki",
            pki_dir,
            "--name",
            MOR,
            "--listen",
            &address,
            "--data-dir",
            "mor",
            "--trust",
            &publisher,
        ],
    )?;
    let socket = agad_gerente_mor::admin_socket(&d.path("mor"));
    d.wait_for("the top manager's admin socket", |_| {
        Ok(socket.exists().then_some(()))
    })?;
    Ok(address.parse()?)
}

/// The path of `d`'s publisher key, made if missing: nothing is deployed
/// in these benchmarks, but managers need a publisher to trust.
fn publisher_key(d: &Deployment) -> anyhow::Result<String> {
    let publisher = d.path("publisher.pub");
    if !publisher.exists() {
        std::fs::write(
            &publisher,
            agad_protocol::SecretKey::generate().public().to_text(),
        )?;
    }
    Ok(publisher
        .to_str()
        .context("the path is not UTF-8")?
        .to_owned())
}

/// Bytes a simulated node read from and wrote to its socket: TLS records,
/// so record headers and authentication tags are included.
#[derive(Debug, Default)]
pub struct Traffic {
    received: AtomicU64,
    sent: AtomicU64,
}

impl Traffic {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A TCP stream that adds what crosses it to a [`Traffic`].
#[derive(Debug)]
pub struct Counted {
    tcp: TcpStream,
    traffic: Arc<Traffic>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.traffic
            .received
            .fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.traffic.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

pub type NodeReader = FrameReader<ReadHalf<TlsStream<Counted>>>;
pub type NodeWriter = FrameWriter<WriteHalf<TlsStream<Counted>>>;

/// A simulated node admitted by its domain manager: the next frame to read
/// is the first `Deploy`.
pub struct NodeLink {
    pub reader: NodeReader,
    pub writer: NodeWriter,
    pub traffic: Arc<Traffic>,
}

/// Connects to the domain manager at `address` as the node whose
/// certificate `tls` presents, and says hello until it is welcomed as
/// active (a station without a replica yet answers "pending"), for at most
/// `patience`.
pub async fn join(
    address: SocketAddr,
    tls: &Arc<ClientConfig>,
    patience: Duration,
) -> anyhow::Result<NodeLink> {
    let deadline = Instant::now() + patience;
    loop {
        let refusal = match tokio::time::timeout(HANDSHAKE_PATIENCE, hello(address, tls)).await {
            Ok(Ok(link)) => return Ok(link),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("no welcome within {HANDSHAKE_PATIENCE:?}"),
        };
        if Instant::now() > deadline {
            return Err(refusal.context(format!("not admitted within {patience:?}")));
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// One attempt: TCP, TLS, hello, welcome. Like `agad_net::conn::connect`,
/// but over a [`Counted`] stream.
async fn hello(address: SocketAddr, tls: &Arc<ClientConfig>) -> anyhow::Result<NodeLink> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let traffic = Arc::new(Traffic::default());
    let counted = Counted {
        tcp,
        traffic: traffic.clone(),
    };
    // Servers are not checked by name (see `agad_net::tls`); any name does.
    let name = ServerName::try_from("agad")?;
    let stream = TlsConnector::from(tls.clone())
        .connect(name, counted)
        .await?;
    let (read, write) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read);
    let mut writer = FrameWriter::new(write);
    writer
        .send(&Message::Control(Control::Hello {
            role: Role::Node,
            software: concat!("agad-benchmarks ", env!("CARGO_PKG_VERSION")).to_owned(),
            ticket: None,
            modules_held: Vec::new(),
            keepalive_ms: 10_000,
            serving: None,
            advertise: Vec::new(),
            generation: 0,
        }))
        .await?;
    match reader.recv().await? {
        Some(Message::Control(Control::Welcome {
            enrollment: Enrollment::Active,
            ..
        })) => Ok(NodeLink {
            reader,
            writer,
            traffic,
        }),
        Some(Message::Control(Control::Welcome {
            enrollment, reason, ..
        })) => {
            bail!("welcomed as {enrollment:?}: {reason}")
        }
        other => bail!("expected a welcome, got {other:?}"),
    }
}

/// Raises this process's soft limit on open files to its hard limit when
/// the soft one is below `needed` (children inherit it); fails, saying
/// what to do, when even the hard limit is below `needed`.
pub fn ensure_open_files(needed: u64) -> anyhow::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let unlimited = u64::MAX;
    if limit.current.unwrap_or(unlimited) >= needed {
        return Ok(());
    }
    let hard = limit.maximum.unwrap_or(unlimited);
    if hard < needed {
        bail!(
            "{needed} open files are needed but the hard limit is {hard}: raise it \
             (`ulimit -Hn {needed}` as root, or LimitNOFILE in a unit) or measure fewer nodes"
        );
    }
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).context("raising the soft limit on open files")?;
    Ok(())
}

/// Waits (up to 2 minutes) until `station`, a real `agad dominio` of `d`,
/// logs its node's deployment running; its logged problems are the error.
pub fn wait_deployment_running(d: &mut Deployment, station: &str) -> anyhow::Result<()> {
    d.wait_for_within(
        "the node's deployment to run",
        std::time::Duration::from_secs(120),
        |d| {
            let log = d.log(station);
            if let Some(problems) = log.lines().find(|l| l.contains("deployment problems")) {
                bail!("{problems}");
            }
            Ok(log.contains("deployment running").then_some(()))
        },
    )
}

/// Waits until `node`'s latest event of `key` in BIG is a clear.
pub fn wait_cleared(d: &mut Deployment, node: &str, key: &str) -> anyhow::Result<()> {
    d.wait_for(&format!("`{key}` cleared"), |d| {
        let latest = d
            .alarms()?
            .into_iter()
            .filter(|a| a.node == node && a.key == key)
            .max_by_key(|a| a.time_ms);
        Ok(latest.filter(|a| !a.raised).map(|_| ()))
    })
}
