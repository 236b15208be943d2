//! Sub-domain managers under this one, so the tree can be as deep as an
//! organisation needs. Every candidate station of a sub-domain may connect;
//! one serves it, activated here as a fenced generation exactly as the top
//! manager activates its domains' stations (the holder of the newest
//! activation keeps it, else the first connected candidate in priority
//! order; a standby takes over when the serving one is lost; one that comes
//! back holding an older activation steps down), and only that one gets
//! the sub-domain's replica (nested in ours by the top manager). What every
//! candidate acknowledged — alarms, consolidated reports, enrollment
//! requests — is relayed upward through our own outbox.

use crate::Station;
use agad_guardian::{Guardian, Located, Sink};
use agad_net::children::{ChildEvent, ChildRef, Children, Hello, Parent, SessionError};
use agad_net::tls::PeerIdentity;
use agad_protocol::message::Alarm;
use agad_protocol::wire::{
    Component, ComponentStatus, Control, Enrollment, Message, Queued, Replica, Role, State, Upward,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How long after this station's parent confirms it serves (its start, a
/// fail-over to it, a reconnection) only the station holding the
/// sub-domain's activation this station last issued may be activated; the
/// others wait, so that the holder of the newest activation, which keeps
/// serving its nodes meanwhile, can dial in first: no fail-over for a
/// restart, and none because a station that stepped down was quicker.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(5);

/// What this manager keeps about a connected sub-domain station.
pub struct Sub {
    /// The sub-domain it is a candidate station of.
    domain: String,
    /// Activated here: it serves the sub-domain. Else a standby, or one
    /// that stepped down and still delivers what it holds.
    serving: bool,
    /// The generation of the sub-domain's activation it said (in its hello)
    /// it holds, until it is activated here or told to step down.
    claims: Option<u64>,
    /// The generation it serves under, once activated.
    generation: u64,
    /// The last replica sent, without bytes, to send only changes.
    sent: Option<Replica>,
}

impl Sub {
    /// The sub-domain this station is a candidate of.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether it serves the sub-domain (was activated here).
    pub fn is_serving(&self) -> bool {
        self.serving
    }
}

/// Connected sub-domain stations, by station name.
pub type Subdomains = Children<Sub>;

/// The domain manager as the parent of its sub-domains' managers.
pub struct SubdomainParent(pub Arc<Station>);

impl Parent for SubdomainParent {
    type Data = Sub;

    fn children(&self) -> &Children<Sub> {
        &self.0.subdomains
    }

    fn role(&self) -> Role {
        Role::Dominio
    }

    fn admit(&self, peer: &PeerIdentity, hello: &Hello) -> Result<Sub, SessionError> {
        admission(&self.0, peer, hello.ticket.clone())
            .map(|sub| {
                let domain = sub.topology.domain.name.clone();
                Sub {
                    claims: (hello.serving.as_deref() == Some(domain.as_str()))
                        .then_some(hello.generation),
                    domain,
                    serving: false,
                    generation: 0,
                    sent: None,
                }
            })
            .map_err(|(enrollment, reason)| SessionError::NotAdmitted { enrollment, reason })
    }

    fn registered(&self, _child: &ChildRef) {
        reconcile(&self.0);
    }

    fn handle(&self, child: &ChildRef, message: Message) -> Result<Option<Message>, SessionError> {
        relay(&self.0, child, message)
    }

    fn unregistered(&self, child: &ChildRef, data: Sub, reason: &SessionError) {
        if data.serving {
            tracing::warn!(domain = %data.domain, station = %child.name, "sub-domain manager lost ({reason}); looking for a standby");
            reconcile(&self.0);
        }
    }
}

/// A sub-domain station chosen to serve, as copied out of the registry.
struct Chosen {
    domain: String,
    station: String,
    session: u64,
    /// The newest generation a connected candidate holds.
    known: u64,
}

/// Brings the sub-domains' activations in line with the replica in force:
/// every sub-domain without a serving station gets one, as a new
/// generation on disk before it is told; a candidate still holding an
/// activation of a sub-domain another station serves steps down; serving
/// stations get their replicas. Only while this station's own parent
/// confirms it serves: a manager that is cut off, or came back after its
/// domain moved on, would hand sub-domains a newer generation than the
/// real manager's and fence their nodes away from it. Blocking (an fsync).
pub fn reconcile(station: &Station) {
    let Some(replica) = station.replica() else {
        return;
    };
    if !station.is_stepped_down() && !station.is_removed() && station.confirmed_since().is_some() {
        activate(station, &replica);
    }
    replicate(station, &replica, None);
}

/// Activates a station for every sub-domain of `replica` that none serves,
/// and steps down those still holding one served elsewhere.
fn activate(station: &Station, replica: &Replica) {
    // Read before the registry's lock, which every frame takes.
    let last: HashMap<&str, agad_net::fence::ActivationRecord> = replica
        .subdomains
        .iter()
        .filter_map(|sub| {
            let domain = sub.topology.domain.name.as_str();
            match station.bases.sub_activations.last(domain) {
                Ok(a) => Some((domain, a?)),
                Err(e) => {
                    tracing::error!(domain, "cannot read the sub-domain's activation: {e}");
                    None
                }
            }
        })
        .collect();
    let in_grace = station.confirmed_since().is_some_and(|since| {
        crate::now_ms().saturating_sub(since) < TAKEOVER_GRACE.as_millis() as u64
    });
    let mut chosen = Vec::new();
    {
        let mut subs = station.subdomains.lock();
        for sub in &replica.subdomains {
            let domain = &sub.topology.domain.name;
            let candidates = || subs.iter().filter(|(_, e)| &e.data.domain == domain);
            if candidates().any(|(_, e)| e.data.serving) {
                continue;
            }
            let previous = last.get(domain.as_str());
            let known = candidates()
                .filter_map(|(_, e)| e.data.claims)
                .max()
                .unwrap_or(0);
            // The station holding the newest activation keeps the
            // sub-domain (after a restart here, or a fail-over of this
            // domain's manager, which never saw the sub-domain's
            // activations); within the grace, only the one holding what
            // this station last issued.
            let newest = candidates()
                .filter_map(|(name, e)| Some((e.data.claims?, name)))
                .max()
                .filter(|(g, _)| *g >= previous.map_or(0, |a| a.generation));
            let pick = match newest {
                Some((g, name))
                    if !in_grace
                        || previous.is_some_and(|a| a.generation == g && &a.station == name) =>
                {
                    Some(name.clone())
                }
                _ if in_grace => None,
                _ => sub
                    .topology
                    .domain
                    .stations
                    .iter()
                    .find(|n| subs.get(*n).is_some_and(|e| &e.data.domain == domain))
                    .cloned(),
            };
            if let Some(e) = pick.and_then(|name| subs.get_mut(&name)) {
                e.data.serving = true;
                e.data.sent = None;
                chosen.push(Chosen {
                    domain: domain.clone(),
                    station: e.peer.name.clone(),
                    session: e.session,
                    known,
                });
            }
        }
    }
    let activated: Vec<(Chosen, Option<u64>)> = chosen
        .into_iter()
        .map(|c| {
            let recorded = station.bases.sub_activations.activate(
                &c.domain,
                &c.station,
                crate::now_ms(),
                c.known,
            );
            match recorded {
                Ok(a) => (c, Some(a.generation)),
                Err(e) => {
                    tracing::error!(domain = %c.domain, station = %c.station, "cannot record the activation: {e}");
                    (c, None)
                }
            }
        })
        .collect();
    {
        let mut subs = station.subdomains.lock();
        for (c, generation) in activated {
            let Some(e) = subs.get_mut(&c.station) else {
                continue;
            };
            if e.session != c.session {
                // Left meanwhile: its reconnection reconciles again.
                continue;
            }
            match generation {
                Some(generation) => {
                    tracing::info!(domain = %c.domain, station = %c.station, generation, "sub-domain manager activated");
                    e.data.generation = generation;
                    e.data.claims = None;
                    e.send(Message::Control(Control::AssignDomain {
                        domain: c.domain,
                        generation,
                    }));
                }
                None => e.data.serving = false,
            }
        }
        // A station that still holds a sub-domain another one serves now
        // (it came back after a fail-over) steps down.
        let served: HashMap<String, u64> = subs
            .values()
            .filter(|e| e.data.serving)
            .map(|e| (e.data.domain.clone(), e.data.generation))
            .collect();
        for (name, e) in subs.iter_mut() {
            if let (false, Some(_), Some(&generation)) =
                (e.data.serving, e.data.claims, served.get(&e.data.domain))
            {
                tracing::warn!(domain = %e.data.domain, station = %name, generation, "a station still holds a sub-domain served elsewhere: told to step down");
                e.send(Message::Control(Control::StepDown {
                    domain: e.data.domain.clone(),
                    generation,
                }));
                e.data.claims = None;
            }
        }
    }
}

/// Hands each connected sub-domain manager (or only `only`) its part of a
/// new replica. Module bytes are read outside the registry's lock.
pub fn replicate(station: &Station, replica: &Replica, only: Option<&str>) {
    /// A copy of what a session needs, taken under the registry's lock.
    struct Target {
        name: String,
        session: u64,
        domain: String,
        sent: Option<Replica>,
        held: HashSet<String>,
    }
    let targets: Vec<Target> = station
        .subdomains
        .lock()
        .iter()
        .filter(|(name, e)| e.data.serving && only.is_none_or(|o| o == name.as_str()))
        .map(|(name, e)| Target {
            name: name.clone(),
            session: e.session,
            domain: e.data.domain.clone(),
            sent: e.data.sent.clone(),
            held: e.held.clone(),
        })
        .collect();
    for Target {
        name,
        session,
        domain,
        sent,
        mut held,
    } in targets
    {
        let Some(sub) = replica
            .subdomains
            .iter()
            .find(|r| r.topology.domain.name == domain)
        else {
            // The sub-domain left the topology: its manager stops serving it.
            if let Some(e) = station.subdomains.lock().get_mut(&name)
                && e.session == session
                && e.data.sent.is_some()
                && e.send(Message::Control(Control::Unassign {
                    domain: domain.clone(),
                }))
            {
                tracing::warn!(%domain, station = %name, "sub-domain left the topology; its manager is told to stop");
                e.data.sent = None;
            }
            continue;
        };
        let plain = sub.without_bytes();
        if sent.as_ref() == Some(&plain) {
            continue;
        }
        let mut full = sub.clone();
        if let Err(e) = fill_bytes(station, &mut full, &mut held) {
            tracing::error!(station = %name, "cannot replicate sub-domain: {e}");
            continue;
        }
        if let Some(e) = station.subdomains.lock().get_mut(&name)
            && e.session == session
            && e.send(Message::Control(Control::Replicate(Box::new(full))))
        {
            e.data.sent = Some(plain);
            e.held = held;
        }
    }
}

/// What the guardian of the sub-domains' stations needs: they are probed
/// where they last connected from, and their alarms go through BICD.
pub struct SubdomainGuardian(pub Arc<Station>);

impl Sink for SubdomainGuardian {
    fn locate(&self, element: &str) -> Located {
        let station = &self.0;
        let candidate = station.replica().is_some_and(|r| {
            r.subdomains
                .iter()
                .any(|sub| sub.topology.domain.stations.iter().any(|s| s == element))
        });
        if !candidate || station.is_stepped_down() || station.is_removed() {
            return Located::Gone;
        }
        Located::At {
            host: None,
            tcp_port: None,
        }
    }

    fn store(&self, alarm: Alarm) {
        crate::nodes::store_guardian_alarm(&self.0, alarm);
    }

    fn accusing_since(&self) -> Option<u64> {
        self.0.confirmed_since()
    }

    /// The candidate stations of every sub-domain that no station serves,
    /// while this station serves its own domain
    /// ([`agad_guardian::watch::candidates_of_unserved`]).
    fn expected(&self) -> Vec<String> {
        let station = &self.0;
        if station.activation().is_none() || station.is_stepped_down() || station.is_removed() {
            return Vec::new();
        }
        let Some(replica) = station.replica() else {
            return Vec::new();
        };
        let served: Vec<String> = station
            .subdomains
            .lock()
            .values()
            .filter(|e| e.data.serving)
            .map(|e| e.data.domain.clone())
            .collect();
        agad_guardian::watch::candidates_of_unserved(
            replica.subdomains.iter().map(|sub| {
                let d = &sub.topology.domain;
                (d.name.as_str(), d.stations.as_slice())
            }),
            served,
        )
    }
}

/// One component per sub-domain: which station serves it, and how it is.
pub fn status(
    subdomains: &Subdomains,
    guardian: &Guardian,
    replica: Option<&Replica>,
) -> Vec<ComponentStatus> {
    let Some(replica) = replica else {
        return Vec::new();
    };
    let sessions = subdomains.lock();
    replica
        .subdomains
        .iter()
        .map(|sub| {
            let domain = &sub.topology.domain.name;
            let failed = sub
                .topology
                .domain
                .stations
                .iter()
                .find_map(|s| guardian.failure(s));
            let state = match sessions
                .iter()
                .find(|(_, e)| e.data.serving && &e.data.domain == domain)
            {
                None => match &failed {
                    Some(f) => State::Failed {
                        diagnosis: f.diagnosis,
                        since_ms: f.since_ms,
                        reason: f.reason.clone(),
                    },
                    None => State::NotConnected,
                },
                Some((station, e)) => match e.state() {
                    State::Connected { failing, .. } => State::Connected {
                        served_by: Some(station.clone()),
                        failing,
                    },
                    other => other,
                },
            };
            let since = matches!(state, State::Failed { .. })
                .then(|| failed.map(|f| f.since_ms))
                .flatten();
            ComponentStatus::new(
                Component::Subdomain {
                    domain: domain.clone(),
                },
                state,
            )
            .since(since)
        })
        .collect()
}

fn fill_bytes(
    station: &Station,
    replica: &mut Replica,
    held: &mut HashSet<String>,
) -> anyhow::Result<()> {
    for module in &mut replica.modules {
        let hash = module.manifest.sha256_hex();
        module.wasm = if held.insert(hash.clone()) {
            let stored = station
                .bases
                .module(&hash)?
                .ok_or_else(|| anyhow::anyhow!("module `{}` is not in BC", module.manifest.name))?;
            stored.wasm
        } else {
            Vec::new()
        };
    }
    for sub in &mut replica.subdomains {
        fill_bytes(station, sub, held)?;
    }
    Ok(())
}

/// The sub-domain `peer` may serve, or its enrollment and why not.
fn admission(
    station: &Station,
    peer: &PeerIdentity,
    ticket: Option<String>,
) -> Result<Replica, (Enrollment, String)> {
    let Some(replica) = station.replica() else {
        return Err((
            Enrollment::Pending,
            "this station serves no domain yet".into(),
        ));
    };
    if station.is_stepped_down() || station.is_removed() {
        return Err((
            Enrollment::Pending,
            format!(
                "this station no longer serves domain `{}`",
                replica.topology.domain.name
            ),
        ));
    }
    let Some(sub) = replica
        .subdomains
        .iter()
        .find(|r| r.topology.domain.stations.contains(&peer.name))
    else {
        return Err((
            Enrollment::Inactive,
            format!(
                "`{}` is no candidate station of a sub-domain of `{}`",
                peer.name, replica.topology.domain.name
            ),
        ));
    };
    let member = sub.members.iter().find(|m| {
        m.name == peer.name && m.role == Role::Dominio && m.fingerprint == peer.fingerprint
    });
    match member {
        Some(m) if m.state == Enrollment::Active => {}
        Some(m) => {
            return Err((
                m.state,
                match m.state {
                    Enrollment::Pending => format!(
                        "enrollment of `{}` waits for `agad enroll approve {}`",
                        peer.name, m.fingerprint
                    ),
                    _ => format!(
                        "`{}` is approved; it starts working after `agad enroll activate {}`",
                        peer.name, peer.name
                    ),
                },
            ));
        }
        None => {
            station.request_enrollment(
                peer.name.clone(),
                Role::Dominio,
                peer.fingerprint.clone(),
                ticket,
            );
            return Err((
                Enrollment::Pending,
                "enrollment requested from the top manager".into(),
            ));
        }
    }
    Ok(sub.clone())
}

/// One frame from a sub-domain station: stored or relayed upward, then
/// acknowledged. Only what concerns the station's own subtree is accepted.
fn relay(
    station: &Station,
    child: &ChildRef,
    message: Message,
) -> Result<Option<Message>, SessionError> {
    let storage = |e: String| SessionError::Storage(e);
    let subtree = subtree_of(station, child)?;
    let ack = |seqs| Ok(Some(Message::Control(Control::Ack { seqs })));
    match message {
        Message::Alarm(Queued {
            seq,
            body: Upward::Alarm(alarm),
        }) => {
            if !subtree.nodes.contains(&alarm.node) {
                return Err(SessionError::Protocol(
                    "a relayed alarm about a node outside the station's sub-domain".into(),
                ));
            }
            alarm
                .check_origin(&alarm.node)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            if station
                .bases
                .record_alarm(&alarm)
                .map_err(|e| storage(e.to_string()))?
            {
                station
                    .outbox
                    .push(&Upward::Alarm(alarm.clone()))
                    .map_err(|e| storage(e.to_string()))?;
                station.subdomains.publish(ChildEvent::AlarmStored {
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
            if !subtree.nodes.contains(&case.node) {
                return Err(SessionError::Protocol(
                    "a relayed case about a node outside the station's sub-domain".into(),
                ));
            }
            case.check_origin()
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            // The top manager keeps the latest (generation, revision): relayed as it is.
            station
                .outbox
                .push(&Upward::Case(case))
                .map_err(|e| storage(e.to_string()))?;
            ack(vec![seq])
        }
        // The top manager keeps one per id, so a replay is harmless.
        Message::Reports(mut batch) => {
            let mut seqs = Vec::with_capacity(batch.len());
            for Queued { seq, body } in &mut batch {
                match body {
                    Upward::DomainReport(r) => {
                        let Some(candidates) = subtree.domains.get(&r.domain) else {
                            return Err(SessionError::Protocol(
                                "a relayed report of a domain outside the station's sub-domain"
                                    .into(),
                            ));
                        };
                        // The top manager keeps one per window and station
                        // that consolidated it: both sides of a fail-over.
                        r.key_by_origin(&child.name, |s| candidates.iter().any(|c| c == s));
                    }
                    _ => {
                        return Err(SessionError::Protocol(
                            "a sub-domain station may relay only domain reports".into(),
                        ));
                    }
                }
                seqs.push(*seq);
            }
            for Queued { body, .. } in &batch {
                station
                    .outbox
                    .push(body)
                    .map_err(|e| storage(e.to_string()))?;
            }
            station.subdomains.publish(ChildEvent::ReportsStored {
                child: child.clone(),
                count: seqs.len(),
            });
            ack(seqs)
        }
        Message::Control(Control::Enroll {
            name,
            role,
            fingerprint,
            ticket,
        }) => {
            let known = match role {
                Role::Node => subtree.nodes.contains(&name),
                Role::Dominio => subtree.stations.contains(&name),
                Role::Mor => false,
            };
            if !known {
                return Err(SessionError::Protocol(
                    "an enrollment request for an identity outside the station's sub-domain".into(),
                ));
            }
            if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SessionError::Protocol(
                    "an enrollment request whose fingerprint is not a SHA-256 in hex".into(),
                ));
            }
            station.request_enrollment(name, role, fingerprint, ticket);
            Ok(None)
        }
        Message::Control(Control::ReplicaAck { version }) => {
            tracing::info!(version, "sub-domain replica acknowledged");
            Ok(None)
        }
        // Not relayed: the top manager tracks the progress of the domains
        // it activates (a sub-domain's shows in its own manager's log).
        Message::Control(Control::DeployProgress(p)) => {
            tracing::debug!(
                version = p.version,
                running = p.running,
                nodes = p.nodes,
                "sub-domain deployment progress"
            );
            Ok(None)
        }
        other => Err(SessionError::Protocol(format!(
            "a sub-domain station may not send a `{}` frame",
            other.kind()
        ))),
    }
}

/// Names in a replica's subtree: what a station serving it may speak for.
#[derive(Debug, Default)]
pub struct Subtree {
    /// Each domain, with its candidate stations.
    pub domains: HashMap<String, Vec<String>>,
    pub nodes: HashSet<String>,
    pub stations: HashSet<String>,
}

impl Subtree {
    pub fn of(replica: &Replica) -> Subtree {
        let mut out = Subtree::default();
        for r in replica.all() {
            out.domains.insert(
                r.topology.domain.name.clone(),
                r.topology.domain.stations.clone(),
            );
            out.nodes
                .extend(r.topology.nodes.iter().map(|n| n.name.clone()));
            out.stations
                .extend(r.topology.domain.stations.iter().cloned());
        }
        out
    }
}

/// The subtree of the sub-domain `child` serves, from the replica in force.
fn subtree_of(station: &Station, child: &ChildRef) -> Result<Subtree, SessionError> {
    let domain = station
        .subdomains
        .lock()
        .get(&child.name)
        .map(|e| e.data.domain.clone())
        .ok_or(SessionError::Replaced)?;
    let replica = station
        .replica()
        .ok_or_else(|| SessionError::Handler("no replica in force".into()))?;
    replica
        .subdomains
        .iter()
        .find(|r| r.topology.domain.name == domain)
        .map(Subtree::of)
        .ok_or_else(|| SessionError::Handler(format!("sub-domain `{domain}` left the replica")))
}
