//! Sub-domain managers under this one, so the tree can be as deep as an
//! organisation needs: the first connected candidate station of each
//! sub-domain is activated here and sent the sub-domain's replica (nested in
//! ours by the top manager), and its alarms, consolidated reports and
//! enrollment requests are relayed upward through our own outbox.

use crate::Station;
use agad_guardian::{Guardian, Located, Sink};
use agad_net::children::{ChildEvent, ChildRef, Children, Hello, Parent, SessionError};
use agad_net::tls::PeerIdentity;
use agad_protocol::message::Alarm;
use agad_protocol::wire::{
    Component, ComponentStatus, Control, Enrollment, Message, Queued, Replica, Role, State, Upward,
};
use std::collections::HashSet;
use std::sync::Arc;

/// What this manager keeps about a connected sub-domain station.
pub struct Sub {
    domain: String,
    /// The last replica sent, without bytes, to send only changes.
    sent: Option<Replica>,
}

impl Sub {
    /// The sub-domain this station was activated for.
    pub fn domain(&self) -> &str {
        &self.domain
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
            .map(|sub| Sub {
                domain: sub.topology.domain.name.clone(),
                sent: None,
            })
            .map_err(|(enrollment, reason)| SessionError::NotAdmitted { enrollment, reason })
    }

    fn registered(&self, child: &ChildRef) {
        let station = &self.0;
        let domain = match station.subdomains.lock().get(&child.name) {
            Some(e) => {
                // Generation 0: a sub-domain's stations are not fenced
                // (every connected candidate is activated; see RELIABILITY.md).
                e.send(Message::Control(Control::AssignDomain {
                    domain: e.data.domain.clone(),
                    generation: 0,
                }));
                e.data.domain.clone()
            }
            None => return,
        };
        if station.is_removed() {
            if let Some(e) = station.subdomains.lock().get(&child.name) {
                e.send(Message::Control(Control::Unassign { domain }));
            }
            return;
        }
        tracing::info!(%domain, "sub-domain manager activated");
        if let Some(replica) = station.replica() {
            replicate(station, &replica, Some(&child.name));
        }
    }

    fn handle(&self, child: &ChildRef, message: Message) -> Result<Option<Message>, SessionError> {
        relay(&self.0, child, message)
    }

    fn unregistered(&self, _child: &ChildRef, data: Sub, reason: &SessionError) {
        tracing::warn!(domain = %data.domain, "sub-domain manager lost: {reason}");
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
        .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
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
            let state = match sessions.iter().find(|(_, e)| &e.data.domain == domain) {
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
                format!("enrollment of `{}` is {:?}", peer.name, m.state),
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
    let domain = &sub.topology.domain.name;
    if let Some((other, _)) = station
        .subdomains
        .lock()
        .iter()
        .find(|(name, e)| &e.data.domain == domain && *name != &peer.name)
    {
        // A standby: it retries, and takes over when the active one is gone.
        return Err((
            Enrollment::Active,
            format!("standby: `{domain}` is served by `{other}`"),
        ));
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
        // The top manager keeps one per id, so a replay is harmless.
        Message::Reports(batch) => {
            let mut seqs = Vec::with_capacity(batch.len());
            for Queued { seq, body } in &batch {
                match body {
                    Upward::DomainReport(r) if subtree.domains.contains(&r.domain) => {}
                    Upward::DomainReport(_) => {
                        return Err(SessionError::Protocol(
                            "a relayed report of a domain outside the station's sub-domain".into(),
                        ));
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
        other => Err(SessionError::Protocol(format!(
            "a sub-domain station may not send a `{}` frame",
            other.kind()
        ))),
    }
}

/// Names in a replica's subtree: what a station serving it may speak for.
#[derive(Debug, Default)]
pub struct Subtree {
    pub domains: HashSet<String>,
    pub nodes: HashSet<String>,
    pub stations: HashSet<String>,
}

impl Subtree {
    pub fn of(replica: &Replica) -> Subtree {
        let mut out = Subtree::default();
        for r in replica.all() {
            out.domains.insert(r.topology.domain.name.clone());
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
