//! Sessions of the domain's nodes: admission (enrollment as replicated by
//! the top manager), deployment of what BTPD assigns, and the alarm/report
//! stream — each stored in BICD before it is acknowledged.

use crate::Station;
use agad_guardian::watch::{AGENT_DOWN, HOST_DOWN};
use agad_guardian::{Guardian, Located, Sink};
use agad_net::children::{ChildEvent, ChildRef, Children, Hello, Parent, SessionError};
use agad_net::tls::PeerIdentity;
use agad_protocol::message::Alarm;
use agad_protocol::wire::{
    Activation, Component, ComponentStatus, Control, DeployProgress, Deployment, Enrollment,
    Message, Queued, Replica, Role, State, Upward, encode,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The wall-clock time (Unix ms) of a monotonic instant in the past.
fn wall_ms(at: Instant) -> u64 {
    crate::now_ms().saturating_sub(at.elapsed().as_millis() as u64)
}

/// What the station keeps of a connected node beyond the common entry.
#[derive(Debug, Default)]
pub struct NodeData {
    /// The version of the last deployment the node acknowledged, and its
    /// first problem (cut short) if it had any.
    pub deployed: Option<(u64, Option<String>)>,
    /// What the last deployment sent on this session told the node to run
    /// ([`Plan::fingerprint`]): the same again, with no bytes it lacks, is
    /// not sent again.
    pub sent: Option<u64>,
}

/// The domain's connected nodes.
pub type Nodes = Children<NodeData>;

/// The domain manager as its nodes' parent.
pub struct NodeParent(pub Arc<Station>);

impl Parent for NodeParent {
    type Data = NodeData;

    fn children(&self) -> &Children<NodeData> {
        &self.0.nodes
    }

    fn role(&self) -> Role {
        Role::Node
    }

    fn admit(&self, peer: &PeerIdentity, hello: &Hello) -> Result<NodeData, SessionError> {
        if let Some(redirect) = self.0.replica().and_then(|r| moved_away(&r, &peer.name)) {
            return Err(redirect);
        }
        match admission(&self.0, peer, hello.ticket.clone()) {
            None => Ok(NodeData::default()),
            Some((enrollment, reason)) => Err(SessionError::NotAdmitted { enrollment, reason }),
        }
    }

    fn registered(&self, child: &ChildRef) {
        if let Some(replica) = self.0.replica() {
            redeploy(&self.0, &replica, Some(&child.name));
        }
        crate::dispatch::node_connected(&self.0, &child.name);
    }

    fn handle(&self, child: &ChildRef, message: Message) -> Result<Option<Message>, SessionError> {
        handle(&self.0, child, message)
    }

    fn unregistered(&self, _child: &ChildRef, _data: NodeData, _reason: &SessionError) {}

    fn activation(&self) -> Option<Activation> {
        self.0.activation()
    }
}

/// What the guardian of the domain's nodes needs from the station: where a
/// node's host is (its topology address, else where it connected from),
/// and where its alarms go (BICD, then upward like a node's own).
pub struct NodeGuardian {
    station: Arc<Station>,
    /// The replica's nodes by name, with its version: the guardian locates
    /// every silent node on every probe, and a domain with thousands of
    /// nodes down at once must not search the list each time.
    addresses: Mutex<(u64, HashMap<String, Option<String>>)>,
}

impl NodeGuardian {
    pub fn new(station: Arc<Station>) -> NodeGuardian {
        NodeGuardian {
            station,
            addresses: Mutex::new((0, HashMap::new())),
        }
    }
}

impl Sink for NodeGuardian {
    fn locate(&self, element: &str) -> Located {
        let station = &self.station;
        let Some(replica) = station.replica() else {
            return Located::Gone;
        };
        if station.is_stepped_down() || station.is_removed() {
            return Located::Gone;
        }
        let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if addresses.0 != replica.version || addresses.1.is_empty() {
            let by_name = replica
                .topology
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.address.clone()))
                .collect();
            *addresses = (replica.version, by_name);
        }
        match addresses.1.get(element) {
            Some(address) => Located::At {
                host: address.clone(),
                tcp_port: None,
            },
            None => Located::Gone,
        }
    }

    fn store(&self, alarm: Alarm) {
        store_guardian_alarm(&self.station, alarm);
    }

    fn accusing_since(&self) -> Option<u64> {
        self.station.confirmed_since()
    }

    /// Every node of the domain, while this station serves it (not as a
    /// standby, nor once stepped down or its domain removed).
    fn expected(&self) -> Vec<String> {
        let station = &self.station;
        match station.replica() {
            Some(replica)
                if station.activation().is_some()
                    && !station.is_stepped_down()
                    && !station.is_removed() =>
            {
                replica
                    .topology
                    .nodes
                    .iter()
                    .map(|n| n.name.clone())
                    .collect()
            }
            _ => Vec::new(),
        }
    }
}

/// A guardian's alarm into BICD and upward, like a node's own.
pub(crate) fn store_guardian_alarm(station: &Station, alarm: Alarm) {
    if let Err(e) = station.dispatch.enqueue(&alarm) {
        tracing::error!("cannot queue a guardian alarm for the knowledge base: {e}");
    }
    match station.bases.record_alarm(&alarm) {
        Ok(true) => {
            station.dispatch.wake();
            if let Err(e) = station.outbox.push(&Upward::Alarm(alarm)) {
                tracing::error!("cannot queue a guardian alarm: {e}");
            }
        }
        Ok(false) => {}
        Err(e) => tracing::error!("cannot store a guardian alarm: {e}"),
    }
}

/// How a node that moved out of this domain is answered: sent to its new
/// domain's stations, or, while none is known, kept out with the reason.
fn moved_away(replica: &Replica, node: &str) -> Option<SessionError> {
    let moved = replica.moved.iter().find(|m| m.node == node)?;
    Some(if moved.parents.is_empty() {
        SessionError::NotAdmitted {
            enrollment: Enrollment::Inactive,
            reason: format!(
                "node `{node}` moved to domain `{}`, whose stations are not known yet",
                moved.domain
            ),
        }
    } else {
        SessionError::Redirected {
            domain: moved.domain.clone(),
            parents: moved.parents.clone(),
        }
    })
}

/// Sends every connected node (or only `only`) its (possibly changed)
/// deployment, or, to a node that moved to another domain, where that
/// domain is served. Module bytes are read from BC outside the registry's
/// lock, once per module; nodes given the same deployment (the same
/// modules, configurations and bytes to send) share one encoded frame, so a
/// domain of thousands of nodes holds one copy of the bytes, not one each.
pub fn redeploy(station: &Station, replica: &Replica, only: Option<&str>) {
    let targets: Vec<(String, u64, HashSet<String>)> = station
        .nodes
        .lock()
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
        .map(|(name, e)| (name.clone(), e.session, e.held.clone()))
        .collect();
    let mut frames: HashMap<Plan, Arc<[u8]>> = HashMap::new();
    let mut bytes: HashMap<String, Vec<u8>> = HashMap::new();
    for (name, session, mut held) in targets {
        if let Some(SessionError::Redirected { domain, parents }) = moved_away(replica, &name) {
            if let Some(e) = station.nodes.lock().get(&name)
                && e.session == session
            {
                tracing::info!(node = %name, %domain, "node moved: sent to its new domain");
                e.send(Message::Control(Control::Redirect { domain, parents }));
            }
            continue;
        }
        let plan = match deployment_for(station, replica, &name, &mut held) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!(node = %name, "cannot deploy: {e:#}");
                continue;
            }
        };
        // A replica comes again whenever anything in it changes (a node
        // enrolled, say): a node already told to run exactly this, and
        // lacking no bytes, is not sent it again. Without this, 5,000 nodes
        // enrolling while 10,000 were connected redeployed to all of them
        // once a second.
        let fingerprint = plan.fingerprint();
        let carries_bytes = plan.modules.iter().any(|(_, _, bytes)| *bytes);
        if !carries_bytes
            && station
                .nodes
                .lock()
                .get(&name)
                .is_some_and(|e| e.session == session && e.data.sent == Some(fingerprint))
        {
            continue;
        }
        let frame = match frames.get(&plan) {
            Some(frame) => Ok(frame.clone()),
            None => plan
                .deploy(station, replica, &mut bytes)
                .and_then(|deploy| Ok(encode(&Message::Control(deploy))?))
                .map(|frame| {
                    let frame: Arc<[u8]> = frame.into();
                    frames.insert(plan, frame.clone());
                    frame
                }),
        };
        match frame {
            Ok(frame) => {
                if let Some(e) = station.nodes.lock().get_mut(&name)
                    && e.session == session
                    && e.send_encoded(frame)
                {
                    e.held = held;
                    e.data.sent = Some(fingerprint);
                }
            }
            Err(e) => tracing::error!(node = %name, "cannot deploy: {e:#}"),
        }
    }
}

/// One component per node of the domain (connected, keeping alive, and
/// which of its own components are unhealthy), and one per module the
/// domain assigns a connected node, with the state and since-time the node
/// reported: what `agad status` shows of each module at the top manager.
pub fn status(
    nodes: &Nodes,
    guardian: &Guardian,
    replica: Option<&Replica>,
) -> Vec<ComponentStatus> {
    let Some(replica) = replica else {
        return Vec::new();
    };
    let failures = guardian.failures();
    let sessions = nodes.lock();
    let mut assigned: HashMap<&str, HashSet<&str>> = HashMap::new();
    for a in &replica.topology.assignments {
        assigned
            .entry(a.node.as_str())
            .or_default()
            .insert(a.module.as_str());
    }
    let mut out = Vec::new();
    for n in &replica.topology.nodes {
        if let (Some(e), Some(modules)) = (sessions.get(&n.name), assigned.get(n.name.as_str())) {
            // Only what the domain assigns, once each, its texts cut: a
            // node's own words go up bounded by the operator's topology.
            let mut left = modules.clone();
            out.extend(e.components.iter().filter_map(|c| {
                match &c.component {
                    Component::Module { name } if left.remove(name.as_str()) => Some(
                        ComponentStatus::new(
                            Component::NodeModule {
                                node: n.name.clone(),
                                module: name.clone(),
                            },
                            relayed(&c.state),
                        )
                        .since(c.since_ms),
                    ),
                    _ => None,
                }
            }));
        }
        let (state, since) = match (sessions.get(&n.name), failures.get(&n.name)) {
            (Some(e), _) => (e.state(), Some(wall_ms(e.connected_at))),
            (None, Some(f)) => (
                State::Failed {
                    diagnosis: f.diagnosis,
                    since_ms: f.since_ms,
                    reason: f.reason.clone(),
                },
                Some(f.since_ms),
            ),
            (None, None) => (State::NotConnected, guardian.silent_since(&n.name)),
        };
        out.push(
            ComponentStatus::new(
                Component::Node {
                    name: n.name.clone(),
                },
                state,
            )
            .since(since),
        );
    }
    out
}

/// Longest text of a node's module state passed up.
const RELAYED_TEXT: usize = 240;

/// A node's module state as relayed upward: its texts cut to
/// [`RELAYED_TEXT`].
fn relayed(state: &State) -> State {
    let cut = |t: &str| agad_protocol::text::excerpt(t, RELAYED_TEXT);
    match state {
        State::Restarting {
            last_fault,
            fault_at_ms,
        } => State::Restarting {
            last_fault: cut(last_fault),
            fault_at_ms: *fault_at_ms,
        },
        State::Refused { reason } => State::Refused {
            reason: cut(reason),
        },
        State::Quarantined { reason } => State::Quarantined {
            reason: cut(reason),
        },
        State::Waiting { reason } => State::Waiting {
            reason: cut(reason),
        },
        State::Running => State::Running,
        // Not a module's state: nothing of the node's passes.
        _ => State::Waiting {
            reason: "an unexpected state".into(),
        },
    }
}

/// How far the domain's nodes are in running `replica`'s deployment.
pub fn progress(nodes: &Nodes, replica: &Replica) -> DeployProgress {
    let sessions = nodes.lock();
    let mut p = DeployProgress {
        version: replica.version,
        nodes: replica.topology.nodes.len() as u64,
        ..DeployProgress::default()
    };
    for n in &replica.topology.nodes {
        match sessions.get(&n.name).map(|e| &e.data.deployed) {
            None => p.not_connected += 1,
            Some(Some((version, problem))) if *version >= replica.version => match problem {
                None => p.running += 1,
                Some(problem) => {
                    p.failed += 1;
                    if p.problems.len() < DeployProgress::MAX_PROBLEMS {
                        let line = format!("{}: {problem}", n.name);
                        p.problems.push(agad_protocol::text::excerpt(
                            &line,
                            // Room for the excerpt's own "…(+n bytes)".
                            DeployProgress::MAX_PROBLEM_LEN - 32,
                        ));
                    }
                }
            },
            Some(_) => {}
        }
    }
    p
}

/// A module's configuration as deployed.
type Config = Vec<(String, String)>;

/// What one node is to run: manifests always, bytes only for hashes it
/// lacks. Equal plans make equal `Deploy` frames.
#[derive(PartialEq, Eq, Hash)]
struct Plan {
    version: u64,
    /// (module by its manifest's hash, its configuration, whether its bytes go)
    modules: Vec<(String, Config, bool)>,
}

impl Plan {
    /// What the node is told to run, whether bytes go or not: the version
    /// and each module's hash and configuration.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.version.hash(&mut h);
        for (module, config, _) in &self.modules {
            module.hash(&mut h);
            config.hash(&mut h);
        }
        h.finish()
    }

    /// The `Deploy` of this plan, module bytes read from BC once per hash
    /// (`bytes` keeps them for the next plan).
    fn deploy(
        &self,
        station: &Station,
        replica: &Replica,
        bytes: &mut HashMap<String, Vec<u8>>,
    ) -> anyhow::Result<Control> {
        let mut modules = Vec::new();
        for (hash, config, with_bytes) in &self.modules {
            let copy = replica
                .modules
                .iter()
                .find(|m| m.manifest.sha256_hex() == *hash)
                .ok_or_else(|| anyhow::anyhow!("module {hash} is not in this replica"))?;
            let mut module = copy.without_bytes();
            if *with_bytes {
                if !bytes.contains_key(hash) {
                    let full = station.bases.module(hash)?.ok_or_else(|| {
                        anyhow::anyhow!("module `{}` is not in BC", copy.manifest.name)
                    })?;
                    bytes.insert(hash.clone(), full.wasm);
                }
                module.wasm = bytes[hash].clone();
            }
            modules.push(Deployment {
                module,
                config: config.clone(),
            });
        }
        Ok(Control::Deploy {
            version: self.version,
            modules,
        })
    }
}

/// The deployment plan for one node: what the topology assigns it, changed
/// by the knowledge base's rules and schedules, with bytes only for the
/// hashes it does not hold (which are then counted as held).
fn deployment_for(
    station: &Station,
    replica: &Replica,
    node: &str,
    held: &mut HashSet<String>,
) -> anyhow::Result<Plan> {
    let mut modules = Vec::new();
    if station.is_removed() {
        // The domain is gone: its nodes run nothing.
        return Ok(Plan {
            version: replica.version,
            modules,
        });
    }
    // What the topology assigns, changed by the knowledge base's rules and
    // schedules (a module started for a while, or stopped).
    let changes = station
        .dispatch
        .changes_for(node, &replica.topology.domain.name);
    // (module, configuration, assigned by the topology)
    let mut wanted: Vec<(String, Config, bool)> = replica
        .topology
        .assignments
        .iter()
        .filter(|a| a.node == node)
        .filter(|a| {
            !changes.stop.contains(&a.module) && !changes.start.iter().any(|(m, _)| *m == a.module)
        })
        .map(|a| (a.module.clone(), a.config.clone(), true))
        .collect();
    wanted.extend(changes.start.into_iter().map(|(m, c)| (m, c, false)));
    for (name, config, assigned) in wanted {
        let Some(copy) = replica.modules.iter().find(|m| m.manifest.name == name) else {
            if !assigned {
                tracing::warn!(%node, module = %name, "a rule or schedule starts a module this domain was not given");
                continue;
            }
            anyhow::bail!("module `{name}` is assigned but not in this replica");
        };
        let hash = copy.manifest.sha256_hex();
        let with_bytes = held.insert(hash.clone());
        modules.push((hash, config, with_bytes));
    }
    Ok(Plan {
        version: replica.version,
        modules,
    })
}

/// `None` if the node may come in; otherwise its enrollment and why not.
fn admission(
    station: &Station,
    peer: &PeerIdentity,
    ticket: Option<String>,
) -> Option<(Enrollment, String)> {
    let Some(replica) = station.replica() else {
        return Some((
            Enrollment::Pending,
            "this station serves no domain yet".into(),
        ));
    };
    if station.is_stepped_down() {
        return Some((
            Enrollment::Pending,
            format!(
                "this station stepped down: another station serves domain `{}`",
                replica.topology.domain.name
            ),
        ));
    }
    // Only a node of this domain may ask to join it: passing up a request
    // for any other name would be a protocol violation of this station,
    // and a stranger could have it disconnected at will.
    let domain = &replica.topology.domain.name;
    if !replica.topology.nodes.iter().any(|n| n.name == peer.name) {
        return Some((
            Enrollment::Inactive,
            format!("node `{}` is not in domain `{domain}`", peer.name),
        ));
    }
    let member = replica
        .members
        .iter()
        .find(|m| m.name == peer.name && m.role == Role::Node && m.fingerprint == peer.fingerprint);
    match member {
        Some(m) if m.state == Enrollment::Active => None,
        Some(m) if m.state == Enrollment::Inactive => Some((
            m.state,
            format!(
                "`{}` is approved; it starts working after `agad enroll activate {}`",
                peer.name, peer.name
            ),
        )),
        Some(m) => Some((
            m.state,
            format!(
                "enrollment of `{}` waits for `agad enroll approve {}`",
                peer.name, m.fingerprint
            ),
        )),
        None => {
            // A ticket approves at once: the operator has nothing to do
            // but wait for the approval to reach this station.
            let reason = if ticket.is_some() {
                "enrollment requested with a ticket; waiting for the top manager's answer".into()
            } else {
                format!(
                    "enrollment requested; approve with `agad enroll approve {}`",
                    peer.fingerprint
                )
            };
            // Unknown here: ask the top manager.
            station.request_enrollment(
                peer.name.clone(),
                Role::Node,
                peer.fingerprint.clone(),
                ticket,
            );
            Some((Enrollment::Pending, reason))
        }
    }
}

/// One frame from a node; the reply (an ack) if any, or why to close.
fn handle(
    station: &Station,
    child: &ChildRef,
    message: Message,
) -> Result<Option<Message>, SessionError> {
    let storage = |e: agad_storage::StorageError| SessionError::Storage(e.to_string());
    match message {
        Message::Alarm(Queued {
            seq,
            body: Upward::Alarm(alarm),
        }) => {
            // Its id, which BICD deduplicates by, must be this node's own.
            alarm
                .check_origin(&child.name)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            // Only the guardian says a node is down (or back).
            if [HOST_DOWN, AGENT_DOWN].contains(&alarm.key.as_str()) {
                return Err(SessionError::Protocol(
                    "a node may not raise or clear the guardian's alarms".into(),
                ));
            }
            // In the knowledge base's inbox in the same flush as in BICD.
            station.dispatch.enqueue(&alarm).map_err(storage)?;
            let new = station.bases.record_alarm(&alarm).map_err(storage)?;
            if new {
                // Debug only, like the top manager's: BICD is the record.
                tracing::debug!(id = %alarm.id, raised = alarm.raised, "alarm stored");
                station
                    .outbox
                    .push(&Upward::Alarm(alarm.clone()))
                    .map_err(|e| SessionError::Storage(e.to_string()))?;
                station.dispatch.wake();
                station.nodes.publish(ChildEvent::AlarmStored {
                    child: child.clone(),
                    alarm: Arc::new(alarm),
                });
            }
            Ok(Some(Message::Control(Control::Ack { seqs: vec![seq] })))
        }
        Message::Alarm(Queued {
            seq,
            body: Upward::RunResult(result),
        }) => {
            result
                .check_origin(&child.name)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            crate::dispatch::received(station, *result).map_err(storage)?;
            Ok(Some(Message::Control(Control::Ack { seqs: vec![seq] })))
        }
        Message::Reports(batch) => {
            let mut reports = Vec::with_capacity(batch.len());
            for Queued { seq, body } in batch {
                match body {
                    Upward::NodeReport(r) if r.node == child.name => reports.push((r, seq)),
                    Upward::NodeReport(_) => {
                        return Err(SessionError::Protocol("a report about another node".into()));
                    }
                    _ => {
                        return Err(SessionError::Protocol(
                            "a node sent something other than its own reports in a report batch"
                                .into(),
                        ));
                    }
                }
            }
            station.bases.record_reports(&reports).map_err(storage)?;
            let seqs: Vec<u64> = reports.iter().map(|(_, seq)| *seq).collect();
            station.nodes.publish(ChildEvent::ReportsStored {
                child: child.clone(),
                count: seqs.len(),
            });
            Ok(Some(Message::Control(Control::Ack { seqs })))
        }
        Message::Control(Control::DeployAck { version, problems }) => {
            if problems.is_empty() {
                tracing::info!(version, "deployment running");
            } else {
                tracing::warn!(version, problems = problems.len(), "deployment problems");
            }
            // The node's words are kept short: they travel up and are shown.
            let first = problems
                .first()
                .map(|p| agad_protocol::text::excerpt(p, DeployProgress::MAX_PROBLEM_LEN / 2));
            if let Some(e) = station.nodes.lock().get_mut(&child.name)
                && e.session == child.session
            {
                e.data.deployed = Some((version, first));
            }
            Ok(None)
        }
        Message::Control(Control::Attestation(answer)) => {
            crate::attest::received(station, child, *answer);
            Ok(None)
        }
        other => Err(SessionError::Protocol(format!(
            "a node may not send a `{}` frame",
            other.kind()
        ))),
    }
}
