//! The domain manager's guardian of code integrity on its nodes.
//!
//! Every attestation period it sends each connected node a fresh nonce
//! ([`Control::Attest`]); at most one is outstanding per node, and an
//! answer is due within [`deadline`] and the time the challenge may wait
//! to ride on the next frame to the node and the answer on its next
//! keep-alive's slot (so that attesting costs no record of its own). The answer's proofs are checked
//! against the bytes in BC ([`agad_protocol::attest::verify`]); an answer
//! for another nonce (stale or replayed) is refused. A module whose proof
//! does not match, or that the node quarantined itself, is redeployed to
//! that node with its full good bytes from BC (its hash taken out of what
//! the registry believes the node holds). A proof mismatch is something
//! the node failed to notice, so the manager raises the security alarm
//! `agad.attestation-failed` for the node itself; it clears with the next
//! clean answer.
//!
//! A node that quarantines a module also says so at once (its
//! `agad.module-tampered` alarm, the module's state in its keep-alive):
//! both redeploy the good copy without waiting for the next attestation.
//!
//! The last result and its time are kept per node and shown as one
//! [`Component::Attestation`] per node in the station's keep-alive, so in
//! the top manager's `agad status`.
//!
//! The station is attested in turn by the top manager, for its BC replica
//! ([`answer_parent`]); on the same period it re-hashes every module of BC
//! against its manifest itself ([`check_bc`]), and deletes what fails so
//! that the top manager, told in the next answer, sends the bytes again.

use crate::Station;
use agad_guardian::raised::Raised;
use agad_net::children::{ChildEvent, ChildRef};
use agad_net::liveness::PARENT_EVERY;
use agad_protocol::Area;
use agad_protocol::attest::{self, Attestation, Ledger, Nonce};
use agad_protocol::message::{RUNTIME_MODULE, RuntimeAlarm, Severity};
use agad_protocol::wire::{Component, ComponentStatus, Control, Message, State, Upward};
use agad_storage::{Database, StorageError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Key of the alarm the manager raises for a node whose proof failed.
pub const ATTESTATION_FAILED_KEY: &str = "agad.attestation-failed";
/// The module name the manager's own alarms about a node carry: the
/// runtime's (`agad`), whose alarms belong to the node, not to an assigned
/// module. Their ids (`<node>/agad/a<time>n<seq>`) cannot meet the node's
/// own (`<node>/agad/<number>` or `t<time>`).
const ALARM_MODULE: &str = RUNTIME_MODULE;
/// Key of the node's own alarm for a quarantined module
/// (`agad_runtime::integrity::TAMPERED_KEY`; the manager does not link the
/// runtime).
pub const TAMPERED_KEY: &str = "agad.module-tampered";

/// How long a node has to answer: the period, and never less than 5 s (a
/// node hashes every module it holds first).
pub fn deadline(every: Duration) -> Duration {
    every.max(Duration::from_secs(5))
}

/// Per node: the nonce outstanding and the last result.
pub struct Attestations {
    nodes: Ledger,
    /// The alarms raised and not cleared yet, kept across restarts.
    raised: Raised,
    /// Modules deleted from BC because their bytes failed a check: hash →
    /// (name, why), told to the top manager until it sends them again.
    bc_quarantined: Mutex<HashMap<String, (String, String)>>,
    /// Makes the ids of the manager's own alarms unique within a millisecond.
    alarm_seq: AtomicU64,
}

impl Attestations {
    /// The nodes' attestations, with the alarms raised before a restart.
    pub fn open(db: &Database) -> Result<Attestations, StorageError> {
        let raised = Raised::open(db, "attestation-alarms")?;
        let nodes = Ledger::default();
        for (node, text) in raised.all() {
            nodes.restore_alarm(&node, text);
        }
        Ok(Attestations {
            nodes,
            raised,
            bc_quarantined: Mutex::default(),
            alarm_seq: AtomicU64::new(0),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Attests every connected node each `every`, and redeploys at once a
/// module a node reports quarantined. Runs until `shutdown`.
pub async fn run(station: Arc<Station>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut events = station.nodes.subscribe();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                attest_all(&station, every);
                let s = station.clone();
                let _ = tokio::task::spawn_blocking(move || check_bc(&s)).await;
            }
            event = events.recv() => match event {
                Ok(ChildEvent::AlarmStored { child, alarm })
                    if alarm.key == TAMPERED_KEY && alarm.raised && alarm.node == child.name =>
                {
                    heal_modules(&station, &child.name, std::slice::from_ref(&alarm.module)).await;
                }
                Ok(ChildEvent::KeepAlive { child, components }) => {
                    let quarantined: Vec<String> = components
                        .iter()
                        .filter_map(|c| match (&c.component, &c.state) {
                            (Component::Module { name }, State::Quarantined { .. }) => Some(name.clone()),
                            _ => None,
                        })
                        .collect();
                    if !quarantined.is_empty() {
                        heal_modules(&station, &child.name, &quarantined).await;
                    }
                }
                Ok(ChildEvent::Disconnected { child, .. }) => {
                    station.attestations.nodes.forget_nonce(&child.name, Some(child.session));
                }
                Ok(_) => {}
                // Missed events only delay a heal until the next attestation.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Sends a fresh nonce to every connected node without one outstanding;
/// records a failure for each whose answer is overdue.
fn attest_all(station: &Station, every: Duration) {
    if station.replica().is_none() || station.is_removed() {
        return;
    }
    let due = deadline(every);
    let nodes = station.nodes.lock();
    let ledger = &station.attestations.nodes;
    for (name, entry) in nodes.iter() {
        // The challenge rides on the next frame to the node (at most
        // `PARENT_EVERY` intervals later: the acknowledgement of its next
        // reports, usually) and the answer in its next keep-alive's place
        // (`net::uplink`): neither costs a record of its own.
        let due = due + entry.keepalive() * (PARENT_EVERY + 1);
        let overdue = ledger.ask(name, entry.session, due, crate::now_ms(), |nonce| {
            entry.send_with_next(Message::Control(Control::Attest { nonce }))
        });
        if overdue {
            tracing::warn!(node = %name, "no attestation answer within {} s", due.as_secs());
        }
    }
    // Nodes gone from the registry keep their last result (shown in
    // status) but no nonce.
    ledger.retain_nonces(|name| nodes.contains_key(name));
}

/// A node's answer. Refused (logged, nothing else) if it is not for the
/// nonce outstanding on this session; otherwise judged against BC, and
/// what failed is redeployed with its bytes. Blocking (reads BC).
pub fn received(station: &Station, child: &ChildRef, answer: Attestation) {
    let asked = station.attestations.nodes.asked(&child.name, child.session);
    let Some(replica) = station.replica() else {
        return;
    };
    let expected: Vec<(String, String)> = replica
        .topology
        .assignments
        .iter()
        .filter(|a| a.node == child.name)
        .filter_map(|a| {
            replica
                .modules
                .iter()
                .find(|m| m.manifest.name == a.module)
                .map(|m| (a.module.clone(), m.manifest.sha256_hex()))
        })
        .collect();
    let verdict = attest::verify(asked.as_ref(), &answer, &expected, |hash| {
        station.bases.module(hash).ok().flatten().map(|b| b.wasm)
    });
    let verdict = match verdict {
        Ok(v) => v,
        Err(refused) => {
            // One refusal per nonce: the nonce is spent (a replay is no
            // answer), so a flood of answers logs once, then at debug.
            if asked.is_some() {
                tracing::warn!(node = %child.name, "attestation answer refused: {refused}");
                station
                    .attestations
                    .nodes
                    .refused(&child.name, &refused, crate::now_ms());
            } else {
                tracing::debug!(node = %child.name, "attestation answer refused: {refused}");
            }
            return;
        }
    };
    let summary = verdict.describe();
    // Only a proof mismatch raises: a module the node quarantined itself
    // was noticed (and alarmed) by the node.
    let alarm = station.attestations.nodes.judged(
        &child.name,
        &verdict,
        !verdict.mismatched.is_empty(),
        crate::now_ms(),
    );
    if verdict.is_clean() {
        tracing::debug!(node = %child.name, "attested: {summary}");
    } else {
        tracing::warn!(node = %child.name, "attestation failed: {summary}; redeploying the good copy");
        resend(station, &child.name, &verdict.to_resend());
    }
    if let Some((raised, text)) = alarm {
        station
            .attestations
            .raised
            .set(&child.name, raised.then_some(text.as_str()));
        raise_alarm(station, child, raised, &text);
    }
}

/// Redeploys `node` with the full bytes of the modules called `names`.
async fn heal_modules(station: &Arc<Station>, node: &str, names: &[String]) {
    let Some(replica) = station.replica() else {
        return;
    };
    let hashes: Vec<String> = replica
        .modules
        .iter()
        .filter(|m| names.contains(&m.manifest.name))
        .map(|m| m.manifest.sha256_hex())
        .collect();
    if hashes.is_empty() {
        return;
    }
    tracing::warn!(%node, modules = ?names, "node quarantined modules: redeploying their good copy");
    let (station, node) = (station.clone(), node.to_owned());
    // Reads module bytes from BC.
    let _ = tokio::task::spawn_blocking(move || resend(&station, &node, &hashes)).await;
}

/// Takes `hashes` out of what `node` is believed to hold and redeploys it,
/// so their bytes go with the deployment. Blocking (reads BC).
fn resend(station: &Station, node: &str, hashes: &[String]) {
    let Some(replica) = station.replica() else {
        return;
    };
    if let Some(e) = station.nodes.lock().get_mut(node) {
        for h in hashes {
            e.held.remove(h);
        }
    }
    crate::nodes::redeploy(station, &replica, Some(node));
}

/// Records and sends up the manager's own alarm about `node`.
fn raise_alarm(station: &Station, child: &ChildRef, raised: bool, text: &str) {
    let time_ms = crate::now_ms();
    let n = station
        .attestations
        .alarm_seq
        .fetch_add(1, Ordering::Relaxed);
    let node = &child.name;
    let message = if raised {
        format!("node {node} holds code other than BC's: {text}; its good copy was redeployed")
    } else {
        format!("node {node} proves its code intact again (was: {text})")
    };
    let alarm = RuntimeAlarm {
        node,
        module: ALARM_MODULE,
        serial: &format!("a{time_ms}n{n}"),
        area: Area::Security,
        key: ATTESTATION_FAILED_KEY,
        metric: "attestation.failed",
        subject: node,
        severity: Severity::Critical,
        message: &message,
        time_ms,
    }
    .alarm(raised);
    tracing::warn!(%node, raised, "{}", alarm.message);
    let stored = station.bases.record_alarm(&alarm).and_then(|new| {
        if new {
            station.outbox.push(&Upward::Alarm(alarm.clone()))?;
        }
        Ok(new)
    });
    match stored {
        Ok(true) => station.nodes.publish(ChildEvent::AlarmStored {
            child: child.clone(),
            alarm: Arc::new(alarm),
        }),
        Ok(false) => {}
        Err(e) => tracing::error!(%node, "cannot record the attestation alarm: {e}"),
    }
}

/// One component per node of the domain: its last attestation.
pub fn status(station: &Station) -> Vec<ComponentStatus> {
    let Some(replica) = station.replica() else {
        return Vec::new();
    };
    let ledger = &station.attestations.nodes;
    replica
        .topology
        .nodes
        .iter()
        // A node not attested yet has no row: nothing is known against it.
        .filter_map(|n| ledger.status(&n.name))
        .collect()
}

/// Re-hashes every module of BC against its manifest's SHA-256 (and the key
/// it is stored under); deletes what fails and keeps it to tell the top
/// manager. Blocking (reads BC).
pub fn check_bc(station: &Station) {
    check_bases(
        &station.bases,
        &mut lock(&station.attestations.bc_quarantined),
    );
}

/// [`check_bc`] on `bases`, recording what fails in `quarantined` (hash →
/// (name, why)).
fn check_bases(bases: &crate::bases::Bases, quarantined: &mut HashMap<String, (String, String)>) {
    let held = match bases.held() {
        Ok(h) => h,
        Err(e) => return tracing::error!("cannot list BC: {e}"),
    };
    // What BC holds again (a replica brought it back) is no longer told.
    quarantined.retain(|hash, _| !held.contains(hash));
    for hash in held {
        let reason = match bases.module(&hash) {
            Ok(Some(b)) if b.manifest.sha256_hex() != hash => Some((
                b.manifest.name,
                "stored under another module's hash".to_owned(),
            )),
            Ok(Some(b)) => {
                let actual = hex::encode(agad_protocol::bundle::sha256(&b.wasm));
                (actual != hash).then(|| {
                    (
                        b.manifest.name,
                        format!("its bytes in BC were altered (SHA-256 {actual}, signed {hash})"),
                    )
                })
            }
            Ok(None) => None,
            Err(e) => Some((hash.clone(), format!("unreadable in BC: {e}"))),
        };
        if let Some((name, why)) = reason {
            tracing::error!(module = %name, %hash, "BC module quarantined: {why}");
            if let Err(e) = bases.remove_module(&hash) {
                tracing::error!(%hash, "cannot delete an altered module from BC: {e}");
            }
            quarantined.insert(hash, (name, why));
        }
    }
}

/// The station's answer to the top manager's nonce: BC checked first, then
/// a proof of every module's bytes as read from BC now. Blocking.
pub fn answer_parent(station: &Station, nonce: Nonce) -> Attestation {
    check_bc(station);
    let modules = station
        .bases
        .held()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|hash| {
            let b = station.bases.module(&hash).ok().flatten()?;
            Some(attest::AttestedModule {
                name: b.manifest.name,
                proof: attest::proof(&nonce, &b.wasm),
                sha256: hash,
                artefact: attest::Artefact::Absent,
            })
        })
        .take(attest::MAX_ATTESTED / 2)
        .collect();
    let quarantined = lock(&station.attestations.bc_quarantined)
        .iter()
        .take(attest::MAX_ATTESTED / 2)
        .map(|(hash, (name, reason))| attest::Quarantine {
            name: name.clone(),
            sha256: hash.clone(),
            reason: reason.clone(),
        })
        .collect();
    Attestation {
        nonce,
        modules,
        quarantined,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::topology::{Domain, DomainTopology};
    use agad_protocol::wire::Replica;
    use agad_protocol::{Bundle, Kind, ManifestSpec, SecretKey};

    fn signed(key: &SecretKey, wasm: &[u8]) -> Bundle {
        let spec = ManifestSpec {
            name: "m".into(),
            version: semver::Version::new(1, 0, 0),
            sequence: 1,
            kind: Kind::Inspector,
            area: Area::Fault,
            capabilities: Vec::new(),
            limits: Default::default(),
            valid_for_days: 30,
            config: Default::default(),
            emits: Default::default(),
        };
        Bundle::sign(spec, wasm.to_vec(), key, crate::now_ms() / 1000)
    }

    #[test]
    fn a_module_altered_in_bc_is_deleted_and_told_until_bc_holds_it_again() {
        let db = agad_storage::Database::temporary().unwrap();
        let key = SecretKey::generate();
        let bases = crate::bases::Bases::open(&db, vec![key.public()]).unwrap();
        let good = signed(&key, b"\0asm good bytes");
        let hash = good.manifest.sha256_hex();
        let replica = Replica {
            version: 1,
            topology: DomainTopology {
                domain: Domain {
                    name: "d1".into(),
                    parent: None,
                    stations: vec![],
                    report_window_ms: 1000,
                },
                nodes: vec![],
                links: vec![],
                assignments: vec![],
                subdomains: vec![],
            },
            modules: vec![good.clone()],
            rules: vec![],
            members: vec![],
            moved: vec![],
            subdomains: vec![],
        };
        bases.store_replica(replica.clone()).unwrap();
        let mut quarantined = HashMap::new();
        check_bases(&bases, &mut quarantined);
        assert!(quarantined.is_empty(), "intact BC: {quarantined:?}");

        // Other bytes under the signed hash, as a disk or a hand would leave them.
        let altered = Bundle {
            wasm: b"\0asm evil bytes".to_vec(),
            ..good.clone()
        };
        db.tree("bc")
            .unwrap()
            .insert(hash.as_bytes(), &altered.to_bytes())
            .unwrap();
        check_bases(&bases, &mut quarantined);
        assert!(quarantined[&hash].1.contains("altered"), "{quarantined:?}");
        assert!(bases.module(&hash).unwrap().is_none(), "deleted from BC");

        // The top manager sends the bytes again: told no more.
        bases.store_replica(replica).unwrap();
        check_bases(&bases, &mut quarantined);
        assert!(quarantined.is_empty());
    }
}
