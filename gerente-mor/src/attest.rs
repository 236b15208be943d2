//! The top manager's guardian of code integrity on its stations: every
//! attestation period each serving station is sent a fresh nonce
//! ([`Control::Attest`]; one outstanding per station, an answer due within
//! [`deadline`]) and must prove, per module of its BC replica,
//! `SHA-256(nonce ‖ bytes)` of the bytes it holds now. The proofs are
//! checked against BGC ([`agad_protocol::attest::verify`]); an answer for
//! another nonce is refused. A module whose proof does not match, or that
//! the station found altered and deleted from BC itself, is replicated to
//! it again with its bytes (its hash taken out of what the registry
//! believes the station holds), and the security alarm
//! `agad.attestation-failed` is recorded in BIG for the station, cleared by
//! its next clean answer.
//!
//! The last result and its time are shown by `agad status` as the
//! domain's [`Component::Attestation`] of its station.

use crate::Mor;
use agad_guardian::raised::Raised;
use agad_net::children::ChildRef;
use agad_net::liveness::PARENT_EVERY;
use agad_protocol::Area;
use agad_protocol::attest::{self, Attestation, Ledger};
use agad_protocol::message::{RUNTIME_MODULE, RuntimeAlarm, Severity};
use agad_protocol::wire::{ComponentStatus, Control, Message};
use agad_storage::{Database, StorageError};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Key of the alarm recorded for a station whose BC failed attestation.
pub const ATTESTATION_FAILED_KEY: &str = "agad.attestation-failed";

/// How long a station has to answer: the period, and never less than 5 s.
pub fn deadline(every: Duration) -> Duration {
    every.max(Duration::from_secs(5))
}

/// Per station: the nonce outstanding and the last result.
pub struct Attestations {
    stations: Ledger,
    /// The alarms raised and not cleared yet, kept across restarts.
    raised: Raised,
    alarm_seq: AtomicU64,
}

impl Attestations {
    /// The stations' attestations, with the alarms raised before a restart.
    pub fn open(db: &Database) -> Result<Attestations, StorageError> {
        let raised = Raised::open(db, "attestation-alarms")?;
        let stations = Ledger::default();
        for (station, text) in raised.all() {
            stations.restore_alarm(&station, text);
        }
        Ok(Attestations {
            stations,
            raised,
            alarm_seq: AtomicU64::new(0),
        })
    }
}

/// Attests every serving station each `every`, until `shutdown`.
pub async fn run(mor: Arc<Mor>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => attest_all(&mor, every),
            _ = shutdown.changed() => return,
        }
    }
}

fn attest_all(mor: &Mor, every: Duration) {
    let due = deadline(every);
    let stations = mor.stations.lock();
    for (name, e) in stations.iter() {
        if !e.data.is_serving() {
            continue;
        }
        // The challenge rides on the next frame to the station (at most
        // `PARENT_EVERY` intervals later) and the answer in its next
        // keep-alive's place (`net::uplink`).
        let due = due + e.keepalive() * (PARENT_EVERY + 1);
        let overdue =
            mor.attestations
                .stations
                .ask(name, e.session, due, crate::now_ms(), |nonce| {
                    e.send_with_next(Message::Control(Control::Attest { nonce }))
                });
        if overdue {
            tracing::warn!(station = %name, "no attestation answer within {} s", due.as_secs());
        }
    }
}

/// A station's answer: refused unless it is for the nonce outstanding on
/// this session; otherwise judged against BGC, and what failed replicated
/// again with its bytes. Blocking (reads BGC, may reconcile).
pub fn received(mor: &Mor, child: &ChildRef, answer: Attestation) {
    let asked = mor.attestations.stations.asked(&child.name, child.session);
    // What the station was sent: the hashes the registry believes it holds.
    let held: Vec<String> = mor
        .stations
        .lock()
        .get(&child.name)
        .map(|e| e.held.iter().cloned().collect())
        .unwrap_or_default();
    let bundles: HashMap<String, agad_protocol::Bundle> = mor
        .bases
        .bundles()
        .unwrap_or_default()
        .into_iter()
        .map(|b| (b.manifest.sha256_hex(), b))
        .filter(|(h, _)| held.contains(h))
        .collect();
    let expected: Vec<(String, String)> = bundles
        .iter()
        .map(|(h, b)| (b.manifest.name.clone(), h.clone()))
        .collect();
    let verdict = match attest::verify(asked.as_ref(), &answer, &expected, |hash| {
        bundles.get(hash).map(|b| b.wasm.clone())
    }) {
        Ok(v) => v,
        Err(refused) => {
            // One refusal per nonce: the nonce is spent (a replay is no
            // answer), so a flood of answers logs once, then at debug.
            if asked.is_some() {
                tracing::warn!(station = %child.name, "attestation answer refused: {refused}");
                mor.attestations
                    .stations
                    .refused(&child.name, &refused, crate::now_ms());
            } else {
                tracing::debug!(station = %child.name, "attestation answer refused: {refused}");
            }
            return;
        }
    };
    let summary = verdict.describe();
    let change = mor.attestations.stations.judged(
        &child.name,
        &verdict,
        !verdict.is_clean(),
        crate::now_ms(),
    );
    if !verdict.is_clean() {
        tracing::warn!(station = %child.name, "BC attestation failed: {summary}; replicating the good copy");
        if let Some(e) = mor.stations.lock().get_mut(&child.name)
            && e.session == child.session
        {
            for h in verdict.to_resend() {
                e.held.remove(&h);
            }
            e.data.forget_sent();
        }
        mor.reconcile();
    }
    if let Some((raised, text)) = change {
        mor.attestations
            .raised
            .set(&child.name, raised.then_some(text.as_str()));
        record_alarm(mor, &child.name, raised, &text);
    }
}

/// Records the alarm about `station` in BIG (the top manager raises it: no
/// station sends it).
fn record_alarm(mor: &Mor, station: &str, raised: bool, text: &str) {
    let time_ms = crate::now_ms();
    let n = mor.attestations.alarm_seq.fetch_add(1, Ordering::Relaxed);
    let message = if raised {
        format!("station {station}'s BC holds code other than BGC's: {text}; replicated again")
    } else {
        format!("station {station} proves its BC intact again (was: {text})")
    };
    let alarm = RuntimeAlarm {
        node: station,
        module: RUNTIME_MODULE,
        serial: &format!("a{time_ms}n{n}"),
        area: Area::Security,
        key: ATTESTATION_FAILED_KEY,
        metric: "attestation.failed",
        subject: station,
        severity: Severity::Critical,
        message: &message,
        time_ms,
    }
    .alarm(raised);
    tracing::warn!(%station, raised, "{}", alarm.message);
    if let Err(e) = mor.bases.record_alarm(&alarm) {
        tracing::error!(%station, "cannot record the attestation alarm: {e}");
    }
}

/// The last attestation of `station`, if it has one.
pub fn status(mor: &Mor, station: &str) -> Option<ComponentStatus> {
    mor.attestations.stations.status(station)
}
