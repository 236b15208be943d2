//! Sub-domain managers under this one, so the tree can be as deep as an
//! organisation needs: the first connected candidate station of each
//! sub-domain is activated here and sent the sub-domain's replica (nested in
//! ours by the top manager), and its alarms, consolidated reports and
//! enrollment requests are relayed upward through our own outbox.

use crate::Station;
use agad_net::conn::Connection;
use agad_net::server::{peer_queue, read_hello, refuse, serve_admitted};
use agad_net::tls::PeerIdentity;
use agad_net::uplink::spawn_reader;
use agad_protocol::wire::{
    ComponentStatus, Control, Enrollment, Message, Queued, Replica, Role, Upward,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

#[derive(Default)]
pub struct Subdomains {
    /// By station name.
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
}

struct Session {
    id: u64,
    domain: String,
    to_station: mpsc::Sender<Message>,
    held: HashSet<String>,
    /// The last replica sent, without bytes, to send only changes.
    sent: Option<Replica>,
    components: Vec<ComponentStatus>,
}

impl Subdomains {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands each connected sub-domain manager its part of a new replica.
    pub fn replicate(&self, station: &Station, replica: &Replica) {
        for (name, session) in self.lock().iter_mut() {
            let Some(sub) = replica
                .subdomains
                .iter()
                .find(|r| r.topology.domain.name == session.domain)
            else {
                continue;
            };
            if let Err(e) = send_replica(station, session, sub) {
                tracing::error!(station = %name, "cannot replicate sub-domain: {e}");
            }
        }
    }

    /// One component per sub-domain: which station serves it, and how it is.
    pub fn status(&self, replica: Option<&Replica>) -> Vec<ComponentStatus> {
        let Some(replica) = replica else {
            return Vec::new();
        };
        let sessions = self.lock();
        replica
            .subdomains
            .iter()
            .map(|sub| {
                let domain = &sub.topology.domain.name;
                let name = format!("subdomain:{domain}");
                match sessions.iter().find(|(_, s)| &s.domain == domain) {
                    None => ComponentStatus {
                        name,
                        healthy: false,
                        detail: "no station connected".into(),
                    },
                    Some((station, s)) => {
                        let down: Vec<&str> = s
                            .components
                            .iter()
                            .filter(|c| !c.healthy)
                            .map(|c| c.name.as_str())
                            .collect();
                        ComponentStatus {
                            name,
                            healthy: down.is_empty(),
                            detail: if down.is_empty() {
                                format!("served by {station}")
                            } else {
                                format!("served by {station}; failing: {}", down.join(", "))
                            },
                        }
                    }
                }
            })
            .collect()
    }
}

/// Sends `sub` if it differs from what the session last got, with module
/// bytes only for hashes the station lacks.
fn send_replica(station: &Station, session: &mut Session, sub: &Replica) -> anyhow::Result<()> {
    let plain = sub.without_bytes();
    if session.sent.as_ref() == Some(&plain) {
        return Ok(());
    }
    let mut held = session.held.clone();
    let mut full = sub.clone();
    fill_bytes(station, &mut full, &mut held)?;
    if session
        .to_station
        .try_send(Message::Control(Control::Replicate(Box::new(full))))
        .is_ok()
    {
        session.sent = Some(plain);
        session.held = held;
    }
    Ok(())
}

fn fill_bytes(
    station: &Station,
    replica: &mut Replica,
    held: &mut HashSet<String>,
) -> anyhow::Result<()> {
    for module in &mut replica.modules {
        let hash = module.manifest.sha256_hex();
        module.wasm = if held.insert(hash.clone()) {
            let copy = station
                .bases
                .module(&hash)?
                .ok_or_else(|| anyhow::anyhow!("module `{}` is not in BC", module.manifest.name))?;
            copy.wasm
        } else {
            None
        };
    }
    for sub in &mut replica.subdomains {
        fill_bytes(station, sub, held)?;
    }
    Ok(())
}

/// Serves one sub-domain station until it closes or misbehaves.
pub async fn serve_substation(station: Arc<Station>, connection: Connection) {
    let peer = connection.peer;
    let mut incoming = spawn_reader(connection.reader);
    let mut writer = connection.writer;
    let Some((ticket, held)) = read_hello(&mut incoming, &peer).await else {
        return;
    };
    let sub = match admission(&station, &peer, ticket) {
        Ok(sub) => sub,
        Err((enrollment, reason)) => {
            tracing::info!(station = %peer.name, "sub-domain station not admitted: {reason}");
            return refuse(&mut writer, enrollment, reason).await;
        }
    };
    let domain = sub.topology.domain.name.clone();
    let (to_station, outgoing) = peer_queue();
    let id = station.subdomains.next_id.fetch_add(1, Ordering::Relaxed);
    let _ = to_station.try_send(Message::Control(Control::Welcome {
        enrollment: Enrollment::Active,
        reason: String::new(),
    }));
    let _ = to_station.try_send(Message::Control(Control::AssignDomain {
        domain: domain.clone(),
    }));
    {
        let mut session = Session {
            id,
            domain: domain.clone(),
            to_station: to_station.clone(),
            held: held.into_iter().collect(),
            sent: None,
            components: Vec::new(),
        };
        if let Err(e) = send_replica(&station, &mut session, &sub) {
            tracing::error!(%domain, "cannot replicate sub-domain: {e}");
        }
        station.subdomains.lock().insert(peer.name.clone(), session);
    }
    tracing::info!(%domain, station = %peer.name, "sub-domain manager activated");
    let reason = {
        let (station, peer) = (station.clone(), peer.clone());
        serve_admitted(incoming, writer, to_station, outgoing, move |m| {
            relay(&station, &peer, m)
        })
        .await
    };
    tracing::warn!(%domain, station = %peer.name, "sub-domain manager disconnected: {reason}");
    {
        let mut sessions = station.subdomains.lock();
        if sessions.get(&peer.name).is_some_and(|s| s.id == id) {
            sessions.remove(&peer.name);
        }
    }
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
            station.send_up(Control::Enroll {
                name: peer.name.clone(),
                role: Role::Dominio,
                fingerprint: peer.fingerprint.clone(),
                ticket,
            });
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
        .find(|(name, s)| &s.domain == domain && *name != &peer.name)
    {
        // A standby: it retries, and takes over when the active one is gone.
        return Err((
            Enrollment::Active,
            format!("standby: `{domain}` is served by `{other}`"),
        ));
    }
    Ok(sub.clone())
}

/// One frame from a sub-domain station: stored or relayed upward, then acknowledged.
fn relay(
    station: &Station,
    peer: &PeerIdentity,
    message: Message,
) -> Result<Option<Message>, String> {
    let ack = |seqs| Ok(Some(Message::Control(Control::Ack { seqs })));
    match message {
        Message::Alarm(Queued {
            seq,
            body: Upward::Alarm(alarm),
        }) => {
            if station
                .bases
                .record_alarm(&alarm)
                .map_err(|e| e.to_string())?
            {
                station
                    .outbox
                    .push(&Upward::Alarm(alarm))
                    .map_err(|e| e.to_string())?;
            }
            ack(vec![seq])
        }
        // The top manager keeps one per id, so a replay is harmless.
        Message::Reports(batch) => {
            let mut seqs = Vec::with_capacity(batch.len());
            for Queued { seq, body } in batch {
                if !matches!(body, Upward::DomainReport(_)) {
                    return Err(format!("a sub-domain station sent {body:?} as a report"));
                }
                station.outbox.push(&body).map_err(|e| e.to_string())?;
                seqs.push(seq);
            }
            ack(seqs)
        }
        Message::Control(Control::KeepAlive { components }) => {
            if !components.is_empty()
                && let Some(s) = station.subdomains.lock().get_mut(&peer.name)
            {
                s.components = components;
            }
            Ok(None)
        }
        Message::Control(enroll @ Control::Enroll { .. }) => {
            station.send_up(enroll);
            Ok(None)
        }
        Message::Control(Control::ReplicaAck { version }) => {
            tracing::info!(station = %peer.name, version, "sub-domain replica acknowledged");
            Ok(None)
        }
        other => Err(format!(
            "unexpected frame from a sub-domain station: {other:?}"
        )),
    }
}
