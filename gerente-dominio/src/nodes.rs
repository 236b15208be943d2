//! Sessions of the domain's nodes: admission (enrollment as replicated by
//! the top manager), deployment of what BTPD assigns, and the alarm/report
//! stream — each stored in BICD before it is acknowledged.

use crate::Station;
use agad_net::conn::Connection;
use agad_net::server::{peer_queue, read_hello, refuse, serve_admitted};
use agad_net::tls::PeerIdentity;
use agad_net::uplink::spawn_reader;
use agad_protocol::wire::{
    ComponentStatus, Control, Deployment, Enrollment, Message, ModuleCopy, Queued, Replica, Role,
    Upward,
};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

/// A keep-alive older than this many periods marks the node unhealthy.
const MISSED_KEEPALIVES: u32 = 3;

#[derive(Default)]
pub struct Nodes {
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
}

struct Session {
    id: u64,
    to_node: mpsc::Sender<Message>,
    /// Module hashes the node holds (from its hello, plus what we sent).
    held: HashSet<String>,
    last_seen: Instant,
    components: Vec<ComponentStatus>,
}

impl Nodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends every connected node its (possibly changed) deployment.
    pub fn redeploy(&self, station: &Station, replica: &Replica) {
        let mut sessions = self.lock();
        for (name, session) in sessions.iter_mut() {
            match deployment_for(station, replica, name, &mut session.held) {
                Ok(deploy) => {
                    let _ = session.to_node.try_send(Message::Control(deploy));
                }
                Err(e) => tracing::error!(node = %name, "cannot deploy: {e}"),
            }
        }
    }

    /// One component per node of the domain: connected and keeping alive?
    pub fn status(&self, replica: Option<&Replica>) -> Vec<ComponentStatus> {
        let Some(replica) = replica else {
            return Vec::new();
        };
        let sessions = self.lock();
        replica
            .topology
            .nodes
            .iter()
            .map(|n| {
                let name = format!("node:{}", n.name);
                match sessions.get(&n.name) {
                    None => ComponentStatus {
                        name,
                        healthy: false,
                        detail: "not connected".into(),
                    },
                    Some(s) => {
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
                                format!("{} components ok", s.components.len())
                            } else {
                                format!("failing: {}", down.join(", "))
                            },
                        }
                    }
                }
            })
            .collect()
    }

    /// Whether `node` kept alive within `MISSED_KEEPALIVES` periods.
    pub fn is_alive(&self, node: &str, period: std::time::Duration) -> bool {
        self.lock()
            .get(node)
            .is_some_and(|s| s.last_seen.elapsed() < period * MISSED_KEEPALIVES)
    }
}

/// The `Deploy` for one node: manifests always, bytes only for hashes it lacks.
fn deployment_for(
    station: &Station,
    replica: &Replica,
    node: &str,
    held: &mut HashSet<String>,
) -> anyhow::Result<Control> {
    let mut modules = Vec::new();
    for assignment in replica
        .topology
        .assignments
        .iter()
        .filter(|a| a.node == node)
    {
        let Some(copy) = replica
            .modules
            .iter()
            .find(|m| m.manifest.name == assignment.module)
        else {
            anyhow::bail!(
                "module `{}` is assigned but not in this replica",
                assignment.module
            );
        };
        let hash = copy.manifest.sha256_hex();
        let wasm = if held.contains(&hash) {
            None
        } else {
            let full = station
                .bases
                .module(&hash)?
                .ok_or_else(|| anyhow::anyhow!("module `{}` is not in BC", assignment.module))?;
            held.insert(hash);
            full.wasm
        };
        modules.push(Deployment {
            module: ModuleCopy {
                manifest: copy.manifest.clone(),
                signature: copy.signature.clone(),
                wasm,
            },
            config: assignment.config.clone(),
        });
    }
    Ok(Control::Deploy {
        version: replica.version,
        modules,
    })
}

/// Serves one node connection until it closes or misbehaves.
pub async fn serve_node(station: std::sync::Arc<Station>, accepted: Connection) {
    let peer = accepted.peer;
    let mut incoming = spawn_reader(accepted.reader);
    let mut writer = accepted.writer;
    let (to_node, outgoing) = peer_queue();
    if peer.role != Role::Node {
        tracing::warn!(peer = %peer.name, role = %peer.role, "refused: only nodes connect to a domain manager");
        return;
    }
    let Some((ticket, held)) = read_hello(&mut incoming, &peer).await else {
        return;
    };
    if let Some((enrollment, reason)) = admission(&station, &peer, ticket) {
        return refuse(&mut writer, enrollment, reason).await;
    }
    let id = station.nodes.next_id.fetch_add(1, Ordering::Relaxed);
    let mut held: HashSet<String> = held.into_iter().collect();
    let first = match station.replica() {
        Some(replica) => deployment_for(&station, &replica, &peer.name, &mut held),
        None => Err(anyhow::anyhow!("no replica")),
    };
    station.nodes.lock().insert(
        peer.name.clone(),
        Session {
            id,
            to_node: to_node.clone(),
            held,
            last_seen: Instant::now(),
            components: Vec::new(),
        },
    );
    tracing::info!(node = %peer.name, "node connected");
    let welcome = Message::Control(Control::Welcome {
        enrollment: Enrollment::Active,
        reason: String::new(),
    });
    let _ = to_node.send(welcome).await;
    match first {
        Ok(deploy) => {
            let _ = to_node.send(Message::Control(deploy)).await;
        }
        Err(e) => tracing::error!(node = %peer.name, "cannot deploy: {e}"),
    }
    let reason = {
        let (station, peer) = (station.clone(), peer.clone());
        serve_admitted(incoming, writer, to_node, outgoing, move |m| {
            handle(&station, &peer, m)
        })
        .await
    };
    tracing::info!(node = %peer.name, "node disconnected: {reason}");
    {
        let mut sessions = station.nodes.lock();
        if sessions.get(&peer.name).is_some_and(|s| s.id == id) {
            sessions.remove(&peer.name);
        }
    }
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
    let member = replica
        .members
        .iter()
        .find(|m| m.name == peer.name && m.role == Role::Node && m.fingerprint == peer.fingerprint);
    match member {
        Some(m) if m.state == Enrollment::Active => {
            if replica.topology.nodes.iter().any(|n| n.name == peer.name) {
                None
            } else {
                // Admitted elsewhere perhaps: the node tries its next address.
                Some((
                    Enrollment::Inactive,
                    format!(
                        "node `{}` is not in domain `{}`",
                        peer.name, replica.topology.domain.name
                    ),
                ))
            }
        }
        Some(m) => Some((
            m.state,
            format!("enrollment of `{}` is {:?}", peer.name, m.state),
        )),
        None => {
            // Unknown here: ask the top manager (a ticket approves at once).
            station.send_up(Control::Enroll {
                name: peer.name.clone(),
                role: Role::Node,
                fingerprint: peer.fingerprint.clone(),
                ticket,
            });
            Some((
                Enrollment::Pending,
                format!(
                    "enrollment requested; approve with `agad enroll approve {}`",
                    peer.fingerprint
                ),
            ))
        }
    }
}

/// One frame from a node; the reply (an ack) if any, or why to close.
fn handle(
    station: &Station,
    peer: &PeerIdentity,
    message: Message,
) -> Result<Option<Message>, String> {
    // Any frame is a sign of life, not only keep-alives.
    if let Some(s) = station.nodes.lock().get_mut(&peer.name) {
        s.last_seen = Instant::now();
    }
    match message {
        Message::Alarm(Queued {
            seq,
            body: Upward::Alarm(alarm),
        }) => {
            tracing::debug!(id = %alarm.id, "alarm received");
            if alarm.node != peer.name {
                return Err(format!("alarm claims to come from `{}`", alarm.node));
            }
            let new = station
                .bases
                .record_alarm(&alarm)
                .map_err(|e| e.to_string())?;
            if new {
                station
                    .outbox
                    .push(&Upward::Alarm(alarm))
                    .map_err(|e| e.to_string())?;
            }
            Ok(Some(Message::Control(Control::Ack { seqs: vec![seq] })))
        }
        Message::Reports(batch) => {
            let mut reports = Vec::with_capacity(batch.len());
            for Queued { seq, body } in batch {
                match body {
                    Upward::NodeReport(r) if r.node == peer.name => reports.push((r, seq)),
                    Upward::NodeReport(r) => {
                        return Err(format!("report claims to come from `{}`", r.node));
                    }
                    other => return Err(format!("a node sent {other:?} as a report")),
                }
            }
            station
                .bases
                .record_reports(&reports)
                .map_err(|e| e.to_string())?;
            let seqs = reports.iter().map(|(_, seq)| *seq).collect();
            Ok(Some(Message::Control(Control::Ack { seqs })))
        }
        Message::Control(Control::KeepAlive { components }) => {
            if !components.is_empty()
                && let Some(s) = station.nodes.lock().get_mut(&peer.name)
            {
                s.components = components;
            }
            Ok(None)
        }
        Message::Control(Control::DeployAck { version, problems }) => {
            if problems.is_empty() {
                tracing::info!(node = %peer.name, version, "deployment running");
            } else {
                tracing::warn!(node = %peer.name, version, "deployment problems: {}", problems.join("; "));
            }
            Ok(None)
        }
        other => Err(format!("unexpected frame from a node: {other:?}")),
    }
}
