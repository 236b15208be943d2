//! Gerente de Domínio: the manager of one administrative domain.
//!
//! What it is for: a station process that registers with the top manager,
//! serves the domain it is assigned (deploys to every node what BTPD assigns,
//! acknowledges and records every alarm and report in BICD, forwards alarms
//! and sends one consolidation per window upward, with keep-alives that carry
//! the state of its components). What it is not for: deciding topology or
//! enrollment — those come from the top manager in replicas.
//!
//! Layout:
//! - [`attest`]: attestation of the code each node holds, and its healing.
//! - [`bases`]: BC, BTPD and BICD in the station's database.
//! - [`consolidate`]: merging node reports into one domain report per window.
//! - [`dispatch`]: the knowledge base (BCN) acting on stored alarms:
//!   specialists run on the nodes, fixes confirmed or escalated.
//! - [`nodes`]: the sessions of the domain's nodes.
//! - [`subdomains`]: sub-domain managers activated and relayed by this one.

pub mod attest;
pub mod bases;
pub mod consolidate;
pub mod dispatch;
pub mod nodes;
pub mod subdomains;

use agad_guardian::{Guardian, GuardianConfig};
use agad_net::children::{Children, ChildrenConfig, SessionError, serve_child};
use agad_net::outbox::Outbox;
use agad_net::rate::{RateByKey, Verdict};
use agad_net::server::Limits;
use agad_net::uplink::{self, Downlink, Element, UplinkConfig};
use agad_protocol::wire::{
    Activation, Component, ComponentStatus, Control, DeployProgress, Message, Replica, Role, State,
    Upward,
};
use agad_storage::Database;
use bases::Bases;
use nodes::{NodeParent, Nodes};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use subdomains::{SubdomainParent, Subdomains};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

pub struct DominioConfig {
    /// Where the station keeps its database.
    pub data_dir: PathBuf,
    /// Link to the top manager (addresses, TLS, keep-alive period, ticket).
    pub uplink: UplinkConfig,
    /// TLS for the domain's nodes.
    pub acceptor: TlsAcceptor,
    /// Late reports of a window are waited for this long before it is sent.
    pub consolidation_grace: Duration,
    /// How the station bounds and watches its nodes and sub-domain stations.
    pub children: ChildrenConfig,
    /// What the listener accepts at once.
    pub limits: Limits,
    /// Publisher keys every module of a replica must be signed by.
    pub trusted: Vec<agad_protocol::PublicKey>,
    /// Where the domain's nodes reach this station, told to the top
    /// manager so nodes that move here can be sent here. Empty: the
    /// listener's address, unless it is a wildcard (0.0.0.0, [::]).
    pub advertise: Vec<String>,
    /// How the guardian confirms that a silent node failed.
    pub guardian: GuardianConfig,
    /// How often every connected node is asked to attest its code.
    pub attest_every: Duration,
}

/// The state every task of the station shares.
pub struct Station {
    pub bases: Bases,
    pub outbox: Outbox,
    /// Shared, not cloned, by every session: a domain can be large.
    replica: RwLock<Option<Arc<Replica>>>,
    pub nodes: Arc<Nodes>,
    pub subdomains: Arc<Subdomains>,
    /// Control frames for the top manager (sent when the link is up).
    up: mpsc::Sender<Control>,
    /// Enrollment requests passed up, per certificate: a stranger that
    /// reconnects in a loop costs the top manager a few, not one each.
    enrollments: RateByKey,
    /// Where the domain's nodes reach this station.
    advertise: Vec<String>,
    /// The replica in force is that of a domain removed from the topology:
    /// nothing is deployed or consolidated until a new replica comes.
    removed: AtomicBool,
    /// The activation this station serves under, and whether it stepped
    /// down since (another station serves the domain now).
    activation: RwLock<Option<(Activation, bool)>>,
    /// Diagnoses the nodes that go silent.
    pub guardian: Arc<Guardian>,
    /// Diagnoses the sub-domains' stations that go silent.
    pub sub_guardian: Arc<Guardian>,
    /// When (Unix ms) the parent manager confirmed, on the link that is up
    /// now, that this station serves its domain (0: not confirmed).
    confirmed_ms: AtomicU64,
    /// The nodes' attestations: nonces outstanding, last results.
    pub attestations: attest::Attestations,
    /// The knowledge base and its cases.
    pub dispatch: dispatch::Dispatcher,
    /// The deployment progress last sent up on this link (`None`: send it).
    progress_sent: Mutex<Option<DeployProgress>>,
}

impl Station {
    pub fn replica(&self) -> Option<Arc<Replica>> {
        self.replica
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn domain(&self) -> Option<String> {
        self.replica().map(|r| r.topology.domain.name.clone())
    }

    /// The activation nodes are welcomed under: none once stepped down.
    pub fn activation(&self) -> Option<Activation> {
        match &*self.activation.read().unwrap_or_else(|p| p.into_inner()) {
            Some((a, false)) => Some(a.clone()),
            _ => None,
        }
    }

    /// The generation of this station's latest activation (0 before any),
    /// kept once stepped down: it orders what this station writes against
    /// what the station that took over writes.
    pub fn generation(&self) -> u64 {
        match &*self.activation.read().unwrap_or_else(|p| p.into_inner()) {
            Some((a, _)) => a.generation,
            None => 0,
        }
    }

    /// Whether another station took this one's domain over (it keeps its
    /// replica and delivers what it holds, but serves no node).
    pub fn is_stepped_down(&self) -> bool {
        matches!(
            &*self.activation.read().unwrap_or_else(|p| p.into_inner()),
            Some((_, true))
        )
    }

    /// Records an activation from the top manager (`stepped_down`: the
    /// domain moved on to another station). Blocking (an fsync).
    fn activated(&self, activation: Activation, stepped_down: bool) {
        if let Err(e) = self.bases.record_activation(&activation, stepped_down) {
            tracing::error!(domain = %activation.domain, "cannot record the activation: {e}");
        }
        // The parent's word, short in the log.
        let domain = agad_protocol::text::excerpt(&activation.domain, 64);
        let generation = activation.generation;
        *self.activation.write().unwrap_or_else(|p| p.into_inner()) =
            Some((activation, stepped_down));
        if stepped_down {
            tracing::warn!(%domain, generation, "another station serves the domain now: stepping down (what is queued is still delivered)");
            let why = format!("domain `{domain}` is served by activation {generation} elsewhere");
            self.nodes
                .close_all(|| SessionError::SteppedDown(why.clone()));
            self.subdomains
                .close_all(|| SessionError::SteppedDown(why.clone()));
        } else {
            tracing::info!(%domain, generation, "activated by the parent manager");
        }
    }

    /// Since when the parent manager confirmed, on the link that is up
    /// now, that this station serves: the guardian accuses no child from a
    /// station that is cut off itself or stepping down, nor, before an
    /// interval has passed, one silent since before the activation.
    pub fn confirmed_since(&self) -> Option<u64> {
        Some(self.confirmed_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// Whether the domain of the replica in force was removed.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Asks the top manager to enroll a certificate (a ticket approves it at
    /// once); at most 3 at once and one every 20 s per certificate.
    pub fn request_enrollment(
        &self,
        name: String,
        role: Role,
        fingerprint: String,
        ticket: Option<String>,
    ) {
        if let Verdict::Allowed { .. } = self.enrollments.check(&fingerprint) {
            self.send_up(Control::Enroll {
                name,
                role,
                fingerprint,
                ticket,
            });
        }
    }

    /// Sends a control frame to the top manager (dropped with a log line if
    /// the queue is full: the senders retry on their own).
    pub fn send_up(&self, control: Control) {
        if let Err(e) = self.up.try_send(control) {
            tracing::warn!("control frame for the top manager dropped: {e}");
        }
    }

    /// Stores a replica and puts it in force. Blocking (an fsync, module
    /// bytes): call it off the reactor threads.
    fn apply_replica(&self, replica: Replica) {
        let version = replica.version;
        match self.bases.store_replica(replica) {
            Ok(stored) => {
                tracing::info!(domain = %stored.topology.domain.name, version, "replica in force");
                let stored = Arc::new(stored);
                self.dispatch.set_rules(&stored);
                *self.replica.write().unwrap_or_else(|p| p.into_inner()) = Some(stored.clone());
                self.removed.store(false, Ordering::Relaxed);
                self.send_up(Control::ReplicaAck { version });
                nodes::redeploy(self, &stored, None);
                subdomains::reconcile(self);
            }
            Err(e) => tracing::error!(version, "replica refused: {e}"),
        }
    }

    /// Stops serving `domain`, which left the topology: its nodes' modules
    /// are undeployed (an empty deployment, now and whenever they connect),
    /// its sub-domains' managers told the same, and nothing more is
    /// consolidated. The replica is kept, marked, until a new one comes:
    /// its members are how this station still recognises its nodes.
    /// Blocking (an fsync).
    fn unassign(&self, domain: &str) {
        let Some(replica) = self.replica() else {
            return;
        };
        if replica.topology.domain.name != domain {
            // The parent's words: short and printable in the log.
            let domain = agad_protocol::text::excerpt(domain, 64);
            tracing::warn!(%domain, serving = %replica.topology.domain.name, "told to stop serving a domain this station does not serve");
            return;
        }
        if let Err(e) = self.bases.mark_removed() {
            tracing::error!(%domain, "cannot record that the domain was removed: {e}");
        }
        self.removed.store(true, Ordering::Relaxed);
        nodes::redeploy(self, &replica, None);
        for e in self.subdomains.lock().values() {
            e.send(Message::Control(Control::Unassign {
                domain: e.data.domain().to_owned(),
            }));
        }
        tracing::warn!(
            %domain,
            "the domain left the topology: its nodes' modules are stopped and this station no longer serves it"
        );
    }
}

impl Element for Station {
    fn modules_held(&self) -> Vec<String> {
        self.bases.held().unwrap_or_default()
    }

    fn serving(&self) -> Option<String> {
        self.domain().filter(|_| !self.is_removed())
    }

    fn generation(&self) -> u64 {
        self.activation
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |(a, _)| a.generation)
    }

    fn advertise(&self) -> Vec<String> {
        self.advertise.clone()
    }

    fn components(&self) -> Vec<ComponentStatus> {
        let (alarms, reports) = self.bases.counts();
        let replica = self.replica();
        let mut out = vec![
            ComponentStatus::new(
                Component::Domain {
                    name: replica.as_ref().map(|r| r.topology.domain.name.clone()),
                    replica_version: replica.as_ref().map_or(0, |r| r.version),
                },
                match &replica {
                    Some(r) if self.is_stepped_down() => State::Waiting {
                        reason: format!(
                            "stepped down: domain `{}` is served by another station",
                            r.topology.domain.name
                        ),
                    },
                    Some(r) if self.is_removed() => State::Waiting {
                        reason: format!(
                            "domain `{}` was removed from the topology",
                            r.topology.domain.name
                        ),
                    },
                    Some(_) => State::Running,
                    None => State::Waiting {
                        reason: "no domain assigned yet".into(),
                    },
                },
            ),
            ComponentStatus::new(
                Component::Store {
                    alarms: alarms as u64,
                    reports: reports as u64,
                    outbox: self.outbox.len() as u64,
                },
                State::Running,
            ),
        ];
        out.extend(nodes::status(
            &self.nodes,
            &self.guardian,
            replica.as_deref(),
        ));
        out.extend(attest::status(self));
        out.extend(subdomains::status(
            &self.subdomains,
            &self.sub_guardian,
            replica.as_deref(),
        ));
        out
    }
}

/// Runs the station until `shutdown`: the link to the top manager, the
/// nodes' listener and the consolidation timer.
pub async fn run(
    config: DominioConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let db = Database::open(&config.data_dir.join("db"))?;
    let bases = Bases::open(&db, config.trusted)?;
    let outbox = Outbox::open(&db)?;
    let (up_tx, up_rx) = mpsc::channel(1024);
    let replica = bases.replica()?;
    let removed = AtomicBool::new(bases.is_removed()?);
    let activation = RwLock::new(bases.activation()?);
    let guardian = Arc::new(Guardian::open(
        &db,
        "guardian-nodes",
        "node",
        config.guardian.clone(),
    )?);
    let sub_guardian = Arc::new(Guardian::open(
        &db,
        "guardian-stations",
        "station",
        config.guardian.clone(),
    )?);
    let advertise = if config.advertise.is_empty() {
        match listener.local_addr() {
            Ok(a) if !a.ip().is_unspecified() => vec![a.to_string()],
            _ => {
                tracing::warn!(
                    "listening on a wildcard address without --advertise: nodes that move to this domain cannot be sent here"
                );
                Vec::new()
            }
        }
    } else {
        config.advertise
    };
    let station = Arc::new(Station {
        bases,
        outbox: outbox.clone(),
        replica: RwLock::new(replica.map(Arc::new)),
        nodes: Arc::new(Children::new(config.children.clone())),
        subdomains: Arc::new(Children::new(config.children.clone())),
        up: up_tx,
        enrollments: RateByKey::new(3, Duration::from_secs(20), 10_000),
        advertise,
        removed,
        activation,
        guardian,
        sub_guardian,
        confirmed_ms: AtomicU64::new(0),
        attestations: attest::Attestations::open(&db)?,
        dispatch: dispatch::Dispatcher::open(&db)?,
        progress_sent: Mutex::new(None),
    });
    if let Some(replica) = station.replica() {
        station.dispatch.set_rules(&replica);
    }

    let (events_tx, mut events) = mpsc::channel(64);
    let link = tokio::spawn(uplink::run(
        config.uplink,
        outbox,
        station.clone(),
        events_tx,
        up_rx,
        shutdown.clone(),
    ));
    let from_mor = {
        let station = station.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Downlink::Control(Control::Replicate(replica)) => {
                        let station = station.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || station.apply_replica(*replica))
                                .await;
                    }
                    Downlink::Control(Control::AssignDomain { domain, generation }) => {
                        let activation = Activation { domain, generation };
                        let s = station.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            s.activated(activation, false);
                            // Confirmed: this station may activate its
                            // sub-domains' stations now.
                            s.confirmed_ms.store(now_ms(), Ordering::Relaxed);
                            subdomains::reconcile(&s);
                        })
                        .await;
                        // Sub-domains left waiting for their holder move on.
                        let s = station.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(subdomains::TAKEOVER_GRACE).await;
                            let _ = tokio::task::spawn_blocking(move || subdomains::reconcile(&s))
                                .await;
                        });
                    }
                    Downlink::Control(Control::StepDown { domain, generation }) => {
                        station.confirmed_ms.store(0, Ordering::Relaxed);
                        let station = station.clone();
                        let activation = Activation { domain, generation };
                        let _ = tokio::task::spawn_blocking(move || {
                            station.activated(activation, true)
                        })
                        .await;
                    }
                    Downlink::Control(Control::Attest { nonce }) => {
                        let s = station.clone();
                        let answer =
                            tokio::task::spawn_blocking(move || attest::answer_parent(&s, nonce))
                                .await;
                        if let Ok(answer) = answer {
                            station.send_up(Control::Attestation(Box::new(answer)));
                        }
                    }
                    Downlink::Control(Control::Unassign { domain }) => {
                        let station = station.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || station.unassign(&domain)).await;
                    }
                    Downlink::Control(other) => {
                        tracing::debug!(
                            kind = Message::Control(other).kind(),
                            "ignored from top manager"
                        )
                    }
                    Downlink::NotAdmitted { enrollment, reason } => {
                        tracing::warn!(
                            ?enrollment,
                            "top manager has not admitted this station: {reason}"
                        );
                    }
                    Downlink::Disconnected { .. } => {
                        station.confirmed_ms.store(0, Ordering::Relaxed)
                    }
                    // A new link: the top manager knows nothing of it yet.
                    Downlink::Connected { .. } => *lock(&station.progress_sent) = None,
                    Downlink::Redirected { .. } => {}
                }
            }
        })
    };
    let consolidation = tokio::spawn(consolidate_on_windows(
        station.clone(),
        config.consolidation_grace,
        shutdown.clone(),
    ));
    let dispatching = tokio::spawn(dispatch::run(station.clone(), shutdown.clone()));
    let progressing = tokio::spawn(send_progress(station.clone(), shutdown.clone()));
    let attesting = tokio::spawn(attest::run(
        station.clone(),
        config.attest_every,
        shutdown.clone(),
    ));
    let watchers = [
        tokio::spawn(station.nodes.clone().watch(shutdown.clone())),
        tokio::spawn(station.subdomains.clone().watch(shutdown.clone())),
        tokio::spawn(station.guardian.clone().run(
            station.nodes.clone(),
            Arc::new(nodes::NodeGuardian::new(station.clone())),
            shutdown.clone(),
        )),
        tokio::spawn(station.sub_guardian.clone().run(
            station.subdomains.clone(),
            Arc::new(subdomains::SubdomainGuardian(station.clone())),
            shutdown.clone(),
        )),
    ];
    let serving = {
        let nodes = Arc::new(NodeParent(station.clone()));
        let subs = Arc::new(SubdomainParent(station.clone()));
        agad_net::server::serve(
            listener,
            config.acceptor,
            config.limits,
            move |connection: agad_net::conn::Connection, shutdown| {
                let (nodes, subs) = (nodes.clone(), subs.clone());
                async move {
                    match connection.peer.role {
                        Role::Dominio => serve_child(subs, connection, shutdown).await,
                        _ => serve_child(nodes, connection, shutdown).await,
                    }
                }
            },
            shutdown,
        )
    };
    serving.await;
    let _ = link.await;
    for watcher in watchers {
        let _ = watcher.await;
    }
    consolidation.abort();
    attesting.abort();
    dispatching.abort();
    progressing.abort();
    from_mor.abort();
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often the deployment's progress is looked at: a progress bar that
/// moves, and at most this many small frames a second when it does.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Sends the top manager the domain's deployment progress whenever it
/// changed (and once on every new link).
async fn send_progress(station: Arc<Station>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(replica) = station.replica() else {
            continue;
        };
        if station.activation().is_none() {
            continue;
        }
        let progress = nodes::progress(&station.nodes, &replica);
        let mut sent = lock(&station.progress_sent);
        if sent.as_ref() != Some(&progress) {
            station.send_up(Control::DeployProgress(progress.clone()));
            *sent = Some(progress);
        }
    }
}

/// Every window, the completed windows since the last one sent become one
/// domain report each in the outbox.
async fn consolidate_on_windows(
    station: Arc<Station>,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let wait = match station.replica().filter(|_| !station.is_removed()) {
            None => Duration::from_secs(1),
            Some(replica) => {
                let window = replica.topology.domain.report_window_ms.max(1);
                let domain = replica.topology.domain.name.clone();
                if let Err(e) = send_completed_windows(&station, &domain, window, grace) {
                    tracing::error!("consolidation failed: {e}");
                }
                let now = now_ms();
                Duration::from_millis(window - now % window) + grace
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Queues one domain report for every window that completed since the last
/// pass and for every earlier window that received late reports (sent
/// again whole: the top manager keeps the latest consolidation of a window).
fn send_completed_windows(
    station: &Station,
    domain: &str,
    window_ms: u64,
    grace: Duration,
) -> anyhow::Result<()> {
    let now = now_ms().saturating_sub(grace.as_millis() as u64);
    station.bases.consolidate(window_ms, now, |start| {
        let end = start + window_ms;
        let reports = station.bases.reports_between(start, end)?;
        if !reports.is_empty() {
            let report = consolidate::consolidate(domain, start, end, &reports, now_ms());
            station.outbox.push(&Upward::DomainReport(report))?;
        }
        Ok(())
    })?;
    Ok(())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
