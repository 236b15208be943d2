//! Sessions of the domain-manager stations: admission (enrollment), which
//! station serves which domain (the first healthy candidate in priority
//! order), replication of each domain's bases as versions, and the alarm and
//! report stream into BIG.

use crate::Mor;
use agad_net::conn::Connection;
use agad_net::server::{peer_queue, read_hello, refuse, serve_admitted};
use agad_net::tls::PeerIdentity;
use agad_net::uplink::spawn_reader;
use agad_protocol::wire::{
    self, ComponentStatus, Control, Enrollment, Message, ModuleCopy, Queued, Replica, Role, Upward,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

pub(crate) struct Session {
    id: u64,
    to_station: mpsc::Sender<Message>,
    held: HashSet<String>,
    serving: Option<String>,
    /// Digest of the last replica content sent, and its version.
    sent: Option<([u8; 32], u64)>,
    acked: u64,
    components: Vec<ComponentStatus>,
    last_seen: Instant,
}

/// What `agad status` shows of a domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainStatus {
    pub domain: String,
    pub station: Option<String>,
    pub replica_sent: Option<u64>,
    pub replica_acked: Option<u64>,
    pub seconds_since_keepalive: Option<u64>,
    pub components: Vec<ComponentStatus>,
}

impl Mor {
    /// Brings assignments and replicas in line with the bases: every domain
    /// without a serving station gets its first connected candidate, and
    /// every serving station gets a new replica version if its content changed.
    pub(crate) fn reconcile(&self) {
        let topology = match self.bases.topology() {
            Ok(t) => t,
            Err(e) => return tracing::error!("cannot read BTPG: {e}"),
        };
        let mut sessions = self.sessions();
        // A station whose domain left the topology stops serving it.
        // (Sub-domains are activated by their parent's manager.)
        let top_level = || topology.domains.iter().filter(|d| d.parent.is_none());
        for s in sessions.values_mut() {
            if let Some(d) = &s.serving
                && !top_level().any(|x| &x.name == d)
            {
                s.serving = None;
                s.sent = None;
            }
        }
        for domain in top_level() {
            if sessions
                .values()
                .any(|s| s.serving.as_deref() == Some(&domain.name))
            {
                continue;
            }
            let candidate = domain
                .stations
                .iter()
                .find(|name| sessions.get(*name).is_some_and(|s| s.serving.is_none()));
            if let Some(name) = candidate {
                let Some(s) = sessions.get_mut(name) else {
                    continue;
                };
                tracing::info!(domain = %domain.name, station = %name, "activating domain manager");
                s.serving = Some(domain.name.clone());
                s.sent = None;
                let _ = s
                    .to_station
                    .try_send(Message::Control(Control::AssignDomain {
                        domain: domain.name.clone(),
                    }));
            }
        }
        let version = self.bases.version().unwrap_or(0);
        for (name, s) in sessions.iter_mut() {
            let Some(domain) = s.serving.clone() else {
                continue;
            };
            let mut held = s.held.clone();
            match self.replica(&domain, version, &mut held) {
                Ok(replica) => {
                    let digest = content_digest(&replica);
                    if s.sent.map(|(d, _)| d) != Some(digest) {
                        tracing::info!(%domain, station = %name, version, "replicating");
                        if s.to_station
                            .try_send(Message::Control(Control::Replicate(Box::new(replica))))
                            .is_ok()
                        {
                            s.sent = Some((digest, version));
                            s.held = held;
                        }
                    }
                }
                Err(e) => tracing::error!(%domain, "cannot build replica: {e}"),
            }
        }
    }

    /// BTPD, BC and BCN of `domain` and, nested, of its sub-domains; bytes
    /// only for modules not in `held` (which gains what is included).
    fn replica(
        &self,
        domain: &str,
        version: u64,
        held: &mut HashSet<String>,
    ) -> anyhow::Result<Replica> {
        let topology = self.bases.topology()?;
        let slice = topology
            .slice(domain)
            .ok_or_else(|| anyhow::anyhow!("domain `{domain}` is not in BTPG"))?;
        let names: std::collections::BTreeSet<&str> = slice
            .assignments
            .iter()
            .map(|a| a.module.as_str())
            .collect();
        let mut modules = Vec::new();
        for name in names {
            let bundle = self
                .bases
                .bundle(name)?
                .ok_or_else(|| anyhow::anyhow!("module `{name}` is assigned but not in BGC"))?;
            let hash = bundle.manifest.sha256_hex();
            modules.push(ModuleCopy {
                manifest: bundle.manifest,
                signature: bundle.signature,
                wasm: held.insert(hash).then_some(bundle.wasm),
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
            .map(|sub| self.replica(&sub.name, version, held))
            .collect::<anyhow::Result<_>>()?;
        Ok(Replica {
            version,
            topology: slice,
            modules,
            rules: Vec::new(),
            members,
            subdomains,
        })
    }

    pub fn domain_status(&self) -> Vec<DomainStatus> {
        let topology = self.bases.topology().unwrap_or_default();
        let sessions = self.sessions();
        topology
            .domains
            .iter()
            .map(|d| {
                let serving = sessions
                    .iter()
                    .find(|(_, s)| s.serving.as_deref() == Some(&d.name));
                DomainStatus {
                    domain: d.name.clone(),
                    station: match &d.parent {
                        Some(parent) => Some(format!("(activated by the manager of {parent})")),
                        None => serving.map(|(n, _)| n.clone()),
                    },
                    replica_sent: serving.and_then(|(_, s)| s.sent.map(|(_, v)| v)),
                    replica_acked: serving.map(|(_, s)| s.acked).filter(|v| *v > 0),
                    seconds_since_keepalive: serving.map(|(_, s)| s.last_seen.elapsed().as_secs()),
                    components: serving
                        .map(|(_, s)| s.components.clone())
                        .unwrap_or_default(),
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

/// Serves one station connection until it closes or misbehaves.
pub async fn serve_station(mor: Arc<Mor>, accepted: Connection) {
    let peer = accepted.peer;
    let mut incoming = spawn_reader(accepted.reader);
    let mut writer = accepted.writer;
    if peer.role != Role::Dominio {
        tracing::warn!(peer = %peer.name, role = %peer.role, "refused: only domain-manager stations connect to the top manager");
        return;
    }
    let Some((ticket, held)) = read_hello(&mut incoming, &peer).await else {
        return;
    };
    let enrolled = mor.bases.enroll(
        &peer.name,
        Role::Dominio,
        &peer.fingerprint,
        ticket.as_deref(),
    );
    let (enrollment, reason) = match enrolled {
        Ok((state, changed)) => {
            if changed {
                mor.reconcile();
            }
            (state, format!("enrollment of `{}` is {state:?}", peer.name))
        }
        Err(e) => (Enrollment::Pending, e.to_string()),
    };
    if enrollment != Enrollment::Active {
        tracing::info!(station = %peer.name, fingerprint = %peer.fingerprint, "not admitted: {reason}");
        return refuse(&mut writer, enrollment, reason).await;
    }
    let (to_station, outgoing) = peer_queue();
    let id = mor.next_session.fetch_add(1, Ordering::Relaxed);
    let _ = to_station.try_send(Message::Control(Control::Welcome {
        enrollment: Enrollment::Active,
        reason: String::new(),
    }));
    mor.sessions().insert(
        peer.name.clone(),
        Session {
            id,
            to_station: to_station.clone(),
            held: held.into_iter().collect(),
            serving: None,
            sent: None,
            acked: 0,
            components: Vec::new(),
            last_seen: Instant::now(),
        },
    );
    tracing::info!(station = %peer.name, "station connected");
    mor.reconcile();
    let reason = {
        let (mor, peer) = (mor.clone(), peer.clone());
        serve_admitted(incoming, writer, to_station, outgoing, move |m| {
            handle(&mor, &peer, m)
        })
        .await
    };
    tracing::warn!(station = %peer.name, "station disconnected: {reason}");
    let was_serving = {
        let mut sessions = mor.sessions();
        match sessions.get(&peer.name) {
            Some(s) if s.id == id => sessions.remove(&peer.name).and_then(|s| s.serving),
            _ => None,
        }
    };
    if let Some(domain) = was_serving {
        tracing::warn!(%domain, station = %peer.name, "domain manager lost; looking for a standby");
        mor.reconcile();
    }
}

fn handle(mor: &Mor, peer: &PeerIdentity, message: Message) -> Result<Option<Message>, String> {
    // Any frame is a sign of life, not only keep-alives.
    if let Some(s) = mor.sessions().get_mut(&peer.name) {
        s.last_seen = Instant::now();
    }
    let ack = |seqs| Ok(Some(Message::Control(Control::Ack { seqs })));
    match message {
        Message::Alarm(Queued {
            seq,
            body: Upward::Alarm(alarm),
        }) => {
            let new = mor.bases.record_alarm(&alarm).map_err(|e| e.to_string())?;
            if new {
                tracing::info!(id = %alarm.id, raised = alarm.raised, "alarm: {}", alarm.message);
            }
            ack(vec![seq])
        }
        Message::Reports(batch) => {
            let mut seqs = Vec::with_capacity(batch.len());
            for Queued { seq, body } in batch {
                let Upward::DomainReport(report) = body else {
                    return Err(format!("a station sent {body:?} as a report"));
                };
                mor.bases
                    .record_report(&report)
                    .map_err(|e| e.to_string())?;
                seqs.push(seq);
            }
            ack(seqs)
        }
        Message::Control(Control::KeepAlive { components }) => {
            if !components.is_empty()
                && let Some(s) = mor.sessions().get_mut(&peer.name)
            {
                s.components = components;
            }
            Ok(None)
        }
        Message::Control(Control::ReplicaAck { version }) => {
            if let Some(s) = mor.sessions().get_mut(&peer.name) {
                s.acked = s.acked.max(version);
            }
            Ok(None)
        }
        Message::Control(Control::Enroll {
            name,
            role,
            fingerprint,
            ticket,
        }) => {
            match mor
                .bases
                .enroll(&name, role, &fingerprint, ticket.as_deref())
            {
                Ok((state, changed)) => {
                    tracing::info!(%name, %fingerprint, ?state, "enrollment request via {}", peer.name);
                    if changed {
                        mor.reconcile();
                    }
                }
                Err(e) => tracing::warn!(%name, "enrollment refused: {e}"),
            }
            Ok(None)
        }
        other => Err(format!("unexpected frame from a station: {other:?}")),
    }
}

pub(crate) type Sessions = HashMap<String, Session>;
