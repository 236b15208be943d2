//! Sessions of the domain-manager stations: admission (enrollment), which
//! station serves which domain (the first healthy candidate in priority
//! order), replication of each domain's bases as versions, and the alarm and
//! report stream into BIG.

use crate::Mor;
use crate::bases::DomainActivation;
use agad_guardian::{Located, Sink};
use agad_net::children::{ChildEvent, ChildRef, Children, Hello, Parent, SessionError};
use agad_net::rate::Verdict;
use agad_net::tls::PeerIdentity;
use agad_protocol::message::Alarm;
use agad_protocol::text::excerpt;
use agad_protocol::topology::Topology;
use agad_protocol::wire::{
    self, Component, ComponentStatus, Control, DeployProgress, Enrollment, Message, MovedNode,
    Queued, Replica, Role, State, Upward,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// What the top manager keeps about a connected station.
#[derive(Debug, Default)]
pub struct StationData {
    /// The domain this station serves, if it was activated.
    serving: Option<String>,
    /// The domain whose replica the station said (in its hello) it holds,
    /// until it is activated or told that domain is gone or moved on.
    claims: Option<String>,
    /// The generation of the activation it said it holds (0: none).
    claimed_generation: u64,
    /// The generation it serves under, once activated.
    generation: u64,
    /// Where the station's nodes reach it (from its hello, bounded).
    advertise: Vec<String>,
    /// Digest of the last replica content sent, and its version.
    sent: Option<([u8; 32], u64)>,
    acked: u64,
    /// The bases version the replica was last brought in line with (sent,
    /// or found unchanged): the station's replica is current up to it.
    checked: u64,
    /// How far the domain's nodes are in running the replica's deployment.
    progress: Option<DeployProgress>,
}

impl StationData {
    /// Whether the station serves a domain (has been activated).
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.is_some()
    }

    /// Forgets what replica content was sent, so the next reconcile sends
    /// the replica again (with the bytes of what `held` no longer lists).
    pub(crate) fn forget_sent(&mut self) {
        self.sent = None;
    }
}

/// The domain-manager stations connected to the top manager.
pub type Stations = Children<StationData>;

/// What `agad status` shows of a domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainStatus {
    pub domain: String,
    /// The parent domain, for a sub-domain (activated by its parent's manager).
    pub parent: Option<String>,
    /// The station serving it, as the top manager sees it.
    pub station: Option<String>,
    /// `connected` (with failing components), `stale`, or `not-connected`.
    pub state: State,
    pub replica_sent: Option<u64>,
    pub replica_acked: Option<u64>,
    /// The bases version the serving station's replica is current with.
    pub replica_checked: Option<u64>,
    /// How far the domain's nodes are in running the replica's deployment,
    /// as the serving station last said.
    pub deployment: Option<DeployProgress>,
    pub ms_since_heard: Option<u64>,
    /// The station's components as its last keep-alive described them.
    pub components: Vec<ComponentStatus>,
    /// The generation of the domain manager's last activation.
    pub generation: Option<u64>,
    /// Every candidate station of the domain, in priority order.
    pub stations: Vec<StationStatus>,
}

/// A candidate station of a domain, as `agad status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StationStatus {
    pub name: String,
    /// Serving the domain (else a standby, or down).
    pub serving: bool,
    pub state: State,
    /// In this state since (Unix ms), where known.
    pub since_ms: Option<u64>,
}

/// A serving station as `reconcile` copies it out of the registry.
struct Serving {
    name: String,
    session: u64,
    domain: String,
    /// Digest of the last replica content sent.
    sent: Option<[u8; 32]>,
    held: HashSet<String>,
}

/// The top manager as its stations' parent.
pub struct StationParent(pub Arc<Mor>);

impl Parent for StationParent {
    type Data = StationData;

    fn children(&self) -> &Children<StationData> {
        &self.0.stations
    }

    fn role(&self) -> Role {
        Role::Dominio
    }

    fn admit(&self, peer: &PeerIdentity, hello: &Hello) -> Result<StationData, SessionError> {
        let mor = &self.0;
        let enrolled = mor.bases.enroll(
            &peer.name,
            Role::Dominio,
            &peer.fingerprint,
            hello.ticket.as_deref(),
        );
        match enrolled {
            Ok((Enrollment::Active, changed)) => {
                if changed {
                    mor.reconcile();
                }
                let data = StationData {
                    // A name, or nothing: it is compared and logged.
                    claims: hello
                        .serving
                        .clone()
                        .filter(|d| agad_protocol::text::is_name(d)),
                    advertise: hello
                        .advertise
                        .iter()
                        .filter(|a| a.len() <= 255 && a.bytes().all(|b| b.is_ascii_graphic()))
                        .take(agad_net::uplink::MAX_PARENTS)
                        .cloned()
                        .collect(),
                    claimed_generation: hello.generation,
                    ..StationData::default()
                };
                mor.advertised
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(peer.name.clone(), data.advertise.clone());
                Ok(data)
            }
            Ok((state, changed)) => {
                if changed {
                    mor.reconcile();
                }
                Err(SessionError::NotAdmitted {
                    enrollment: state,
                    reason: format!("enrollment of `{}` is {state:?}", peer.name),
                })
            }
            Err(e) => Err(SessionError::NotAdmitted {
                enrollment: Enrollment::Pending,
                reason: e.to_string(),
            }),
        }
    }

    fn registered(&self, _child: &ChildRef) {
        self.0.reconcile();
    }

    fn handle(&self, child: &ChildRef, message: Message) -> Result<Option<Message>, SessionError> {
        handle(&self.0, child, message)
    }

    fn unregistered(&self, child: &ChildRef, data: StationData, reason: &SessionError) {
        if let Some(domain) = data.serving {
            tracing::warn!(%domain, station = %child.name, "domain manager lost ({reason}); looking for a standby");
            self.0.reconcile();
        }
    }
}

impl Mor {
    /// Brings assignments and replicas in line with the bases: every domain
    /// without a serving station gets its first connected candidate, and
    /// every serving station gets a new replica version if its content
    /// changed. Blocking (reads BGC and BTPG): call it off the reactor.
    pub(crate) fn reconcile(&self) {
        let topology = match self.bases.topology() {
            Ok(t) => t,
            Err(e) => return tracing::error!("cannot read BTPG: {e}"),
        };
        let top_level = || topology.domains.iter().filter(|d| d.parent.is_none());
        // The last activation of each domain, read before the registry's
        // lock is taken (every frame of every station takes it too).
        let mut last: HashMap<String, DomainActivation> = top_level()
            .filter_map(|d| Some((d.name.clone(), self.bases.activation(&d.name).ok()??)))
            .collect();
        // Decide who serves what under the lock; record new activations
        // (an fsync) and build replicas outside it.
        let mut activate: Vec<(String, String, u64, u64)> = Vec::new();
        {
            let mut stations = self.stations.lock();
            // A station whose domain left the topology stops serving it,
            // and is told so (also one that comes back holding the replica
            // of a domain removed meanwhile). A domain that became a
            // sub-domain is activated by its parent's manager instead.
            for e in stations.values_mut() {
                if let Some(d) = &e.data.serving
                    && !top_level().any(|x| &x.name == d)
                {
                    if topology.domain(d).is_none() {
                        tracing::warn!(domain = %d, station = %e.peer.name, "domain removed: its manager is told to stop");
                        e.send(Message::Control(Control::Unassign { domain: d.clone() }));
                    }
                    e.data.serving = None;
                    e.data.sent = None;
                }
                if e.data.serving.is_none()
                    && let Some(d) = e.data.claims.clone()
                    && topology.domain(&d).is_none()
                {
                    e.data.claims = None;
                    tracing::warn!(domain = %d, station = %e.peer.name, "a station holds a removed domain: told to stop");
                    e.send(Message::Control(Control::Unassign { domain: d }));
                }
            }
            for domain in top_level() {
                if stations
                    .values()
                    .any(|e| e.data.serving.as_deref() == Some(&domain.name))
                {
                    continue;
                }
                let previous = last.get(&domain.name);
                let free = |name: &String| {
                    domain.stations.contains(name)
                        && stations.get(name).is_some_and(|e| e.data.serving.is_none())
                };
                // The station that served the last activation and still
                // holds it keeps the domain (a restart of this manager, a
                // brief partition): no fail-over for nothing.
                let holder = previous.map(|a| &a.station).filter(|name| {
                    free(name)
                        && stations.get(*name).is_some_and(|e| {
                            e.data.claims.as_deref() == Some(domain.name.as_str())
                                && e.data.claimed_generation == previous.map_or(0, |a| a.generation)
                        })
                });
                // Just after a start, the last holder may still be dialling in.
                let wait_for_holder = previous.is_some_and(|a| {
                    !stations.contains_key(&a.station) && domain.stations.contains(&a.station)
                }) && self.started.elapsed() < self.takeover_grace;
                let candidate = match holder {
                    Some(h) => Some(h.clone()),
                    None if wait_for_holder => None,
                    None => domain.stations.iter().find(|n| free(n)).cloned(),
                };
                // The newest activation a connected candidate holds (one
                // issued by a parent domain's manager, if the domain was a
                // sub-domain before): the new one must outgrow it.
                let known = stations
                    .iter()
                    .filter(|(name, e)| {
                        domain.stations.contains(name)
                            && e.data.claims.as_deref() == Some(domain.name.as_str())
                    })
                    .map(|(_, e)| e.data.claimed_generation)
                    .max()
                    .unwrap_or(0);
                if let Some(e) = candidate.and_then(|name| stations.get_mut(&name)) {
                    e.data.serving = Some(domain.name.clone());
                    e.data.sent = None;
                    activate.push((domain.name.clone(), e.peer.name.clone(), e.session, known));
                }
            }
        }
        // Every activation is a new generation, on disk before anyone hears of it.
        let mut activated = Vec::new();
        for (domain, station, session, known) in activate {
            match self
                .bases
                .activate_domain(&domain, &station, crate::now_ms(), known)
            {
                Ok(generation) => {
                    if let Ok(Some(a)) = self.bases.activation(&domain) {
                        last.insert(domain.clone(), a);
                    }
                    activated.push((domain, station, session, Some(generation)));
                }
                Err(e) => {
                    tracing::error!(%domain, %station, "cannot record the activation: {e}");
                    activated.push((domain, station, session, None));
                }
            }
        }
        let mut advertised: HashMap<String, Vec<String>> = HashMap::new();
        let serving: Vec<Serving> = {
            let mut stations = self.stations.lock();
            for (domain, station, session, generation) in activated {
                let Some(e) = stations.get_mut(&station) else {
                    continue;
                };
                match generation {
                    Some(generation) if e.session == session => {
                        tracing::info!(%domain, %station, generation, "activating domain manager");
                        e.data.generation = generation;
                        e.data.claims = None;
                        e.send(Message::Control(Control::AssignDomain {
                            domain: domain.clone(),
                            generation,
                        }));
                    }
                    // Left meanwhile, or not recorded: the next reconcile
                    // (its reconnection, a standby's) tries again.
                    _ if e.data.serving.as_deref() == Some(domain.as_str()) => {
                        e.data.serving = None;
                    }
                    _ => {}
                }
            }
            // A station that still holds a domain another one serves now
            // (it came back after a fail-over) steps down.
            let served: HashMap<String, String> = stations
                .iter()
                .filter_map(|(n, e)| Some((e.data.serving.clone()?, n.clone())))
                .collect();
            for (name, e) in stations.iter_mut() {
                let Some(d) = e.data.claims.clone() else {
                    continue;
                };
                let candidate = topology
                    .domain(&d)
                    .is_some_and(|x| x.stations.contains(name));
                let elsewhere = served.get(&d).is_some_and(|s| s != name);
                if elsewhere || !candidate {
                    let generation = last.get(&d).map_or(0, |a| a.generation);
                    tracing::warn!(domain = %d, station = %name, generation, "a station still holds a domain served elsewhere: told to step down");
                    e.send(Message::Control(Control::StepDown {
                        domain: d,
                        generation,
                    }));
                    e.data.claims = None;
                }
            }
            // Where each top-level domain's nodes can go: its serving
            // station first, then its other connected candidates.
            for domain in top_level() {
                let mut at: Vec<String> = stations
                    .values()
                    .filter(|e| e.data.serving.as_deref() == Some(&domain.name))
                    .flat_map(|e| e.data.advertise.clone())
                    .collect();
                for name in &domain.stations {
                    if let Some(e) = stations.get(name)
                        && e.data.serving.is_none()
                    {
                        at.extend(e.data.advertise.iter().cloned());
                    }
                }
                at.truncate(agad_net::uplink::MAX_PARENTS);
                advertised.insert(domain.name.clone(), at);
            }
            stations
                .iter()
                .filter_map(|(name, e)| {
                    Some(Serving {
                        name: name.clone(),
                        session: e.session,
                        domain: e.data.serving.clone()?,
                        sent: e.data.sent.map(|(d, _)| d),
                        held: e.held.clone(),
                    })
                })
                .collect()
        };
        let version = self.bases.version().unwrap_or(0);
        for Serving {
            name,
            session,
            domain,
            sent,
            mut held,
        } in serving
        {
            let replica = match self.replica(&topology, &domain, version, &mut held, &advertised) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(%domain, "cannot build replica: {e}");
                    continue;
                }
            };
            let digest = content_digest(&replica);
            let mut stations = self.stations.lock();
            if sent == Some(digest) {
                if let Some(e) = stations.get_mut(&name)
                    && e.session == session
                {
                    e.data.checked = e.data.checked.max(version);
                }
                continue;
            }
            if let Some(e) = stations.get_mut(&name)
                && e.session == session
                && e.data.serving.as_deref() == Some(domain.as_str())
            {
                tracing::info!(%domain, station = %name, version, "replicating");
                if e.send(Message::Control(Control::Replicate(Box::new(replica)))) {
                    e.data.sent = Some((digest, version));
                    e.data.checked = e.data.checked.max(version);
                    e.held = held;
                }
            }
        }
    }

    /// BTPD, BC and BCN of `domain` and, nested, of its sub-domains; bytes
    /// only for modules not in `held` (which gains what is included).
    fn replica(
        &self,
        topology: &Topology,
        domain: &str,
        version: u64,
        held: &mut HashSet<String>,
        advertised: &HashMap<String, Vec<String>>,
    ) -> anyhow::Result<Replica> {
        let slice = topology
            .slice(domain)
            .ok_or_else(|| anyhow::anyhow!("domain `{domain}` is not in BTPG"))?;
        let names: std::collections::BTreeSet<&str> = slice
            .assignments
            .iter()
            .map(|a| a.module.as_str())
            .collect();
        // BCN: the whole rule set goes to every domain (its manager
        // evaluates the rules for its own nodes), with the specialists the
        // rules run and the modules they start, so the manager can ship
        // them without asking.
        let (rules, specialists, started) = match self.bases.rules()? {
            Some(set) => (set.files, set.specialists, set.modules),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        let mut modules = Vec::new();
        let wanted = names
            .into_iter()
            .map(|name| (name, "is assigned"))
            .chain(
                specialists
                    .iter()
                    .map(|n| (n.as_str(), "is run by the rules")),
            )
            .chain(
                started
                    .iter()
                    .map(|n| (n.as_str(), "is started by the rules")),
            );
        let mut included = std::collections::BTreeSet::new();
        for (name, why) in wanted {
            if !included.insert(name) {
                continue;
            }
            let bundle = self
                .bases
                .bundle(name)?
                .ok_or_else(|| anyhow::anyhow!("module `{name}` {why} but not in BGC"))?;
            let hash = bundle.manifest.sha256_hex();
            modules.push(if held.insert(hash) {
                bundle
            } else {
                bundle.without_bytes()
            });
        }
        let in_domain: HashSet<&str> = slice
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(slice.domain.stations.iter().map(String::as_str))
            .collect();
        let members = self
            .bases
            .members()?
            .into_iter()
            .filter(|m| in_domain.contains(m.name.as_str()))
            .collect();
        let subdomains = slice
            .subdomains
            .iter()
            .map(|sub| self.replica(topology, &sub.name, version, held, advertised))
            .collect::<anyhow::Result<_>>()?;
        // Nodes that left this domain and are still where they went.
        let moved = self
            .bases
            .moves()?
            .into_iter()
            .filter(|(node, m)| m.from == domain && topology.domain_of(node) == Some(&m.to))
            .map(|(node, m)| MovedNode {
                node,
                parents: advertised.get(&m.to).cloned().unwrap_or_default(),
                domain: m.to,
            })
            .collect();
        Ok(Replica {
            version,
            topology: slice,
            modules,
            rules,
            members,
            subdomains,
            moved,
        })
    }

    /// Each node's state as its domain manager last reported it (nodes
    /// whose manager is not connected are left out: unknown).
    pub fn node_states(&self) -> BTreeMap<String, State> {
        self.domain_status()
            .into_iter()
            .flat_map(|d| d.components)
            .filter_map(|c| match c.component {
                Component::Node { name } => Some((name, c.state)),
                _ => None,
            })
            .collect()
    }

    pub fn domain_status(&self) -> Vec<DomainStatus> {
        let topology = self.bases.topology().unwrap_or_default();
        let generations: HashMap<String, u64> = topology
            .domains
            .iter()
            .filter_map(|d| {
                Some((
                    d.name.clone(),
                    self.bases.activation(&d.name).ok()??.generation,
                ))
            })
            .collect();
        let failures = self.guardian.failures();
        let now = crate::now_ms();
        let stations = self.stations.lock();
        topology
            .domains
            .iter()
            .map(|d| {
                let serving = stations
                    .iter()
                    .find(|(_, e)| e.data.serving.as_deref() == Some(&d.name));
                DomainStatus {
                    domain: d.name.clone(),
                    parent: d.parent.clone(),
                    station: serving.map(|(n, _)| n.clone()),
                    state: match (serving, &d.parent) {
                        (Some((_, e)), _) => e.state(),
                        // Activated by the parent domain's manager: its
                        // state travels in that manager's keep-alives.
                        (None, Some(_)) => State::Waiting {
                            reason: "activated by the parent domain's manager".into(),
                        },
                        (None, None) => State::NotConnected,
                    },
                    replica_sent: serving.and_then(|(_, e)| e.data.sent.map(|(_, v)| v)),
                    replica_acked: serving.map(|(_, e)| e.data.acked).filter(|v| *v > 0),
                    replica_checked: serving.map(|(_, e)| e.data.checked).filter(|v| *v > 0),
                    deployment: serving.and_then(|(_, e)| e.data.progress.clone()),
                    ms_since_heard: serving
                        .map(|(_, e)| e.last_heard().elapsed().as_millis() as u64),
                    components: serving
                        .map(|(name, e)| {
                            let mut c = e.components.clone();
                            c.extend(crate::attest::status(self, name));
                            c
                        })
                        .unwrap_or_default(),
                    generation: generations.get(&d.name).copied(),
                    stations: d
                        .stations
                        .iter()
                        .map(|name| match (stations.get(name), failures.get(name)) {
                            (Some(e), _) => StationStatus {
                                name: name.clone(),
                                serving: e.data.serving.as_deref() == Some(&d.name),
                                state: e.state(),
                                since_ms: Some(
                                    now.saturating_sub(e.connected_at.elapsed().as_millis() as u64),
                                ),
                            },
                            (None, Some(f)) => StationStatus {
                                name: name.clone(),
                                serving: false,
                                state: State::Failed {
                                    diagnosis: f.diagnosis,
                                    since_ms: f.since_ms,
                                    reason: f.reason.clone(),
                                },
                                since_ms: Some(f.since_ms),
                            },
                            (None, None) => StationStatus {
                                name: name.clone(),
                                serving: false,
                                state: State::NotConnected,
                                since_ms: self.guardian.silent_since(name),
                            },
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// The replica's content without version or module bytes: a change here is
/// a change worth a new version.
fn content_digest(replica: &Replica) -> [u8; 32] {
    Sha256::digest(wire::encode_value(&replica.without_bytes())).into()
}

/// What the top manager's guardian needs: where a station's host is (where
/// it connected from, its nodes' port), and that alarms go into BIG.
pub struct StationGuardian(pub Arc<Mor>);

impl Sink for StationGuardian {
    fn locate(&self, element: &str) -> Located {
        let topology = self.0.bases.topology().unwrap_or_default();
        if !topology
            .domains
            .iter()
            .any(|d| d.stations.iter().any(|s| s == element))
        {
            return Located::Gone;
        }
        let advertised = self.0.advertised.lock().unwrap_or_else(|p| p.into_inner());
        let first = advertised.get(element).and_then(|a| a.first());
        Located::At {
            host: first
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.ip().to_string()),
            tcp_port: first
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok()),
        }
    }

    fn store(&self, alarm: Alarm) {
        match self.0.bases.record_alarm(&alarm) {
            Ok(true) => notify_alarm(&self.0, &alarm),
            Ok(false) => {}
            Err(e) => tracing::error!("cannot store a guardian alarm: {e}"),
        }
    }

    /// The candidate stations of every top-level domain that no station
    /// serves (sub-domains' stations are their parent manager's children;
    /// see [`agad_guardian::watch::candidates_of_unserved`]).
    fn expected(&self) -> Vec<String> {
        let topology = self.0.bases.topology().unwrap_or_default();
        let stations = self.0.stations.lock();
        agad_guardian::watch::candidates_of_unserved(
            topology
                .domains
                .iter()
                .filter(|d| d.parent.is_none())
                .map(|d| (d.name.as_str(), d.stations.as_slice())),
            stations.values().filter_map(|e| e.data.serving.clone()),
        )
    }
}

/// The names a station serving `domain` may speak for: its domain and
/// every sub-domain below it, their nodes and stations.
struct Subtree {
    domains: HashSet<String>,
    nodes: HashSet<String>,
    stations: HashSet<String>,
}

impl Subtree {
    fn of_all(topology: &Topology, roots: &[&str]) -> Subtree {
        let mut domains: HashSet<String> = roots.iter().map(|d| (*d).to_owned()).collect();
        // Parents come before children nowhere in particular: grow to a fixed point.
        loop {
            let before = domains.len();
            for d in &topology.domains {
                if d.parent.as_ref().is_some_and(|p| domains.contains(p)) {
                    domains.insert(d.name.clone());
                }
            }
            if domains.len() == before {
                break;
            }
        }
        let nodes = topology
            .nodes
            .iter()
            .filter(|n| domains.contains(&n.domain))
            .map(|n| n.name.clone())
            .collect();
        let stations = topology
            .domains
            .iter()
            .filter(|d| domains.contains(&d.name))
            .flat_map(|d| d.stations.iter().cloned())
            .collect();
        Subtree {
            domains,
            nodes,
            stations,
        }
    }
}

/// One frame from a station: alarms and reports into BIG (only for the
/// subtree it serves), replica acks, relayed enrollment requests.
fn handle(mor: &Mor, child: &ChildRef, message: Message) -> Result<Option<Message>, SessionError> {
    let storage = |e: crate::bases::BaseError| SessionError::Storage(e.to_string());
    let ack = |seqs| Ok(Some(Message::Control(Control::Ack { seqs })));
    let serving = mor
        .stations
        .lock()
        .get(&child.name)
        .and_then(|e| e.data.serving.clone());
    let topology = || mor.bases.topology().map_err(storage);
    // What a station serves, or, for one that stepped down or waits as a
    // standby, the domains it is a candidate of: it still delivers what it
    // acknowledged before a fail-over.
    let subtree = |topology: &Topology| -> Result<Subtree, SessionError> {
        let mut domains: Vec<&str> = serving.as_deref().into_iter().collect();
        if domains.is_empty() {
            domains = topology
                .domains
                .iter()
                .filter(|d| d.stations.contains(&child.name))
                .map(|d| d.name.as_str())
                .collect();
        }
        if domains.is_empty() {
            return Err(SessionError::Protocol(
                "alarms or reports from a station that serves no domain".into(),
            ));
        }
        Ok(Subtree::of_all(topology, &domains))
    };
    match message {
        Message::Alarm(Queued {
            seq,
            body: Upward::Alarm(alarm),
        }) => {
            let topology = topology()?;
            // A guardian's alarm may be about a sub-domain's station.
            let is_station = topology
                .domains
                .iter()
                .any(|d| d.stations.contains(&alarm.node));
            if topology.domain_of(&alarm.node).is_none() && !is_station {
                // Queued before the node (or its domain) left the topology.
                refused(
                    mor,
                    child,
                    &format!(
                        "an alarm of node `{}`, which is not in the topology",
                        excerpt(&alarm.node, 64)
                    ),
                );
                return ack(vec![seq]);
            }
            let subtree = subtree(&topology)?;
            if !subtree.nodes.contains(&alarm.node)
                && !subtree.stations.contains(&alarm.node)
                && !moved_from(mor, &alarm.node, &subtree)?
            {
                return Err(SessionError::Protocol(
                    "an alarm about a node outside the station's domain".into(),
                ));
            }
            // The id BIG deduplicates by must be that node's own.
            alarm
                .check_origin(&alarm.node)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            let new = mor.bases.record_alarm(&alarm).map_err(storage)?;
            if new {
                // Debug only: BIG is the record, and a flood must not fill the log.
                tracing::debug!(id = %alarm.id, raised = alarm.raised, "alarm stored");
                notify_alarm(mor, &alarm);
                mor.stations.publish(ChildEvent::AlarmStored {
                    child: child.clone(),
                    alarm: Arc::new(alarm),
                });
            }
            ack(vec![seq])
        }
        Message::Alarm(Queued {
            seq,
            body: Upward::Case(case),
        }) => {
            let topology = topology()?;
            if topology.domain_of(&case.node).is_none() {
                refused(
                    mor,
                    child,
                    &format!(
                        "a case of node `{}`, which is not in the topology",
                        excerpt(&case.node, 64)
                    ),
                );
                return ack(vec![seq]);
            }
            let subtree = subtree(&topology)?;
            if !subtree.nodes.contains(&case.node) && !moved_from(mor, &case.node, &subtree)? {
                return Err(SessionError::Protocol(
                    "a case about a node outside the station's domain".into(),
                ));
            }
            case.check_origin()
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            if mor.bases.record_case(&case).map_err(storage)? {
                tracing::debug!(case = %case.key(), state = %case.state.label(), "case stored");
                if mor.notifier.is_active()
                    && matches!(case.state, agad_protocol::run::CaseState::Escalated { .. })
                {
                    let domain = topology
                        .domain_of(&case.node)
                        .unwrap_or_default()
                        .to_owned();
                    if let Err(e) = mor
                        .notifier
                        .push(crate::notify::Event::Escalated { case, domain })
                    {
                        tracing::error!("cannot queue an escalation for the webhooks: {e}");
                    }
                }
            }
            ack(vec![seq])
        }
        Message::Reports(batch) => {
            let topology = topology()?;
            let mut reports = Vec::with_capacity(batch.len());
            let mut seqs = Vec::with_capacity(batch.len());
            for Queued { seq, body } in batch {
                match body {
                    Upward::DomainReport(r) if topology.domain(&r.domain).is_none() => {
                        refused(
                            mor,
                            child,
                            &format!(
                                "a report of domain `{}`, which is not in the topology",
                                excerpt(&r.domain, 64)
                            ),
                        );
                        seqs.push(seq);
                    }
                    Upward::DomainReport(mut r)
                        if subtree(&topology)?.domains.contains(&r.domain) =>
                    {
                        // One consolidation per window and station: across
                        // a fail-over the old and the new manager each hold
                        // part of a window.
                        let candidates = topology
                            .domain(&r.domain)
                            .map(|d| d.stations.clone())
                            .unwrap_or_default();
                        r.key_by_origin(&child.name, |s| candidates.iter().any(|c| c == s));
                        reports.push((seq, r))
                    }
                    Upward::DomainReport(_) => {
                        return Err(SessionError::Protocol(
                            "a report of a domain outside the station's domain".into(),
                        ));
                    }
                    _ => {
                        return Err(SessionError::Protocol(
                            "a station may send only domain reports".into(),
                        ));
                    }
                }
            }
            for (seq, report) in &reports {
                mor.bases.record_report(report).map_err(storage)?;
                seqs.push(*seq);
            }
            mor.stations.publish(ChildEvent::ReportsStored {
                child: child.clone(),
                count: reports.len(),
            });
            ack(seqs)
        }
        Message::Control(Control::ReplicaAck { version }) => {
            if let Some(e) = mor.stations.lock().get_mut(&child.name) {
                e.data.acked = e.data.acked.max(version);
            }
            Ok(None)
        }
        Message::Control(Control::DeployProgress(progress)) => {
            progress.check().map_err(SessionError::Protocol)?;
            let progress = Arc::new(progress);
            if let Some(e) = mor.stations.lock().get_mut(&child.name)
                && e.session == child.session
            {
                e.data.progress = Some((*progress).clone());
            }
            mor.stations.publish(ChildEvent::DeployProgress {
                child: child.clone(),
                progress,
            });
            Ok(None)
        }
        Message::Control(Control::Enroll {
            name,
            role,
            fingerprint,
            ticket,
        }) => {
            let subtree = subtree(&topology()?)?;
            let known = match role {
                Role::Node => subtree.nodes.contains(&name),
                Role::Dominio => subtree.stations.contains(&name),
                Role::Mor => false,
            };
            if !known {
                return Err(SessionError::Protocol(
                    "an enrollment request for an identity outside the station's domain".into(),
                ));
            }
            if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SessionError::Protocol(
                    "an enrollment request whose fingerprint is not a SHA-256 in hex".into(),
                ));
            }
            match mor
                .bases
                .enroll(&name, role, &fingerprint, ticket.as_deref())
            {
                Ok((state, changed)) => {
                    tracing::info!(%name, %fingerprint, ?state, "enrollment request relayed");
                    if changed {
                        mor.reconcile();
                    }
                }
                Err(e) => tracing::warn!(%name, "enrollment refused: {e}"),
            }
            Ok(None)
        }
        Message::Control(Control::Attestation(answer)) => {
            crate::attest::received(mor, child, *answer);
            Ok(None)
        }
        other => Err(SessionError::Protocol(format!(
            "a station may not send a `{}` frame",
            other.kind()
        ))),
    }
}

/// Whether `node` moved out of a domain of `subtree`: its station may still
/// deliver what it queued before the move.
fn moved_from(mor: &Mor, node: &str, subtree: &Subtree) -> Result<bool, SessionError> {
    let moves = mor
        .bases
        .moves()
        .map_err(|e| SessionError::Storage(e.to_string()))?;
    Ok(moves
        .get(node)
        .is_some_and(|m| subtree.domains.contains(&m.from)))
}

/// Logs (bounded per station) that data from `child` was acknowledged and
/// dropped: BIG keeps nothing of nodes or domains the topology no longer
/// has.
fn refused(mor: &Mor, child: &ChildRef, what: &str) {
    if let Verdict::Allowed { suppressed } = mor.refusals.check(&child.name) {
        tracing::warn!(station = %child.name, suppressed, "refused {what}: dropped, not stored in BIG");
    }
}

/// Queues an alarm BIG just stored for the webhook receivers (with the
/// domain of the node or station it is about). Blocking (an fsync).
fn notify_alarm(mor: &Mor, alarm: &Alarm) {
    // Most deployments have no receiver: no topology read per alarm then.
    if !mor.notifier.is_active() {
        return;
    }
    let topology = mor.bases.topology().unwrap_or_default();
    let domain = topology
        .domain_of(&alarm.node)
        .or_else(|| {
            topology
                .domains
                .iter()
                .find(|d| d.stations.contains(&alarm.node))
                .map(|d| d.name.as_str())
        })
        .unwrap_or_default()
        .to_owned();
    if let Err(e) = mor.notifier.push(crate::notify::Event::Alarm {
        alarm: alarm.clone(),
        domain,
    }) {
        tracing::error!(id = %alarm.id, "cannot queue an alarm for the webhooks: {e}");
    }
}
