//! The guardian of one registry of children (a domain manager's nodes, the
//! top manager's stations): it diagnoses every child that goes silent and
//! raises, changes and clears the "host down" / "agent down" alarms.

use crate::probe::{Probe, ProbeConfig, Target, probe};
use agad_net::children::{ChildEvent, ChildRef, Children};
use agad_protocol::Area;
use agad_protocol::message::{Alarm, Comparison, RUNTIME_MODULE, RuntimeAlarm, Severity};
use agad_protocol::status::Diagnosis;
use agad_protocol::text::excerpt;
use agad_storage::{Database, StorageError, Tree};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// The module name of the alarms the guardian raises: the runtime's own
/// (they belong to the element, not to an assigned module).
pub const MODULE: &str = RUNTIME_MODULE;
/// Alarm key of "the host does not answer".
pub const HOST_DOWN: &str = "agad.host-down";
/// Alarm key of "the host answers, the element does not".
pub const AGENT_DOWN: &str = "agad.agent-down";
/// Probes under way at once per guardian.
const MAX_PROBES: usize = 64;
/// How long a host that was down may answer before its silent element is
/// called down too: the element redials with a back-off that grew while its
/// host was cut off (at most 30 s, ±50 % jitter).
const REDIAL_ALLOWANCE: Duration = Duration::from_secs(45);
/// How often the guardian looks for expected children that are absent
/// (and records that this manager is alive, see [`absence_allowance`]).
const ABSENT_CHECK: Duration = Duration::from_secs(1);
/// Time for a child whose redial is due to connect and say hello.
const HELLO_ALLOWANCE: Duration = Duration::from_secs(5);
/// The tree where each guardian records, every [`ABSENT_CHECK`], that its
/// manager is alive (key: the guardian's own tree): a restarted manager
/// learns how long it was down.
const ALIVE_TREE: &str = "guardian-alive";

/// How the guardian confirms a failure. Its timing follows each child's
/// own keep-alive interval (see [`Timing`]).
#[derive(Debug, Clone)]
pub struct GuardianConfig {
    /// ICMP echo requests per probe.
    pub echoes: u32,
}

impl Default for GuardianConfig {
    fn default() -> GuardianConfig {
        GuardianConfig { echoes: 3 }
    }
}

/// How one child is diagnosed, from the interval it keeps alive at.
#[derive(Debug, Clone)]
struct Timing {
    probe: ProbeConfig,
    /// How long a child that left may take to come back before it is
    /// diagnosed (a restart of its process, a dropped connection it redials).
    grace: Duration,
    /// How often a failed element's host is probed again.
    recheck: Duration,
}

impl Timing {
    /// A probe answers within a quarter of an interval (0.2–2 s); a
    /// reconnection is waited for one interval (at most 10 s): a host cut
    /// off is accused within 3 intervals of its last frame (stale at about
    /// 2.6), as the guardian's goal asks.
    fn for_keepalive(keepalive: Duration, echoes: u32) -> Timing {
        Timing {
            probe: ProbeConfig {
                echoes,
                deadline: (keepalive / 4).clamp(Duration::from_millis(200), Duration::from_secs(2)),
            },
            grace: keepalive.min(Duration::from_secs(10)),
            recheck: (keepalive * 2).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        }
    }
}

/// A failed element as `agad status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub diagnosis: Diagnosis,
    /// When it went silent (ms since the Unix epoch).
    pub since_ms: u64,
    /// What the probe saw.
    pub reason: String,
    /// Where its host was probed, kept for a restarted manager.
    pub address: Option<IpAddr>,
}

/// A child that went silent, to diagnose.
struct Silent {
    name: String,
    /// Where it last connected from.
    address: Option<SocketAddr>,
    keepalive: Duration,
    since_ms: u64,
    /// Wait for a reconnection first (a dropped connection: the child may
    /// be redialling); not for a child found stale, silent long enough.
    grace: bool,
    /// The session that went silent (0: any session is a return).
    session: u64,
    /// Only suspected, its session still open: when it was last heard
    /// (a frame after that is a return).
    heard: Option<std::time::Instant>,
    /// Expected but never connected to this manager's current run (no
    /// address seen): without a topology address it cannot be probed.
    absent: bool,
}

impl Silent {
    fn of(child: ChildRef, since_ms: u64) -> Silent {
        Silent {
            name: child.name,
            address: child.address,
            keepalive: child.keepalive,
            since_ms,
            grace: true,
            session: child.session,
            heard: None,
            absent: false,
        }
    }

    /// Whether the child is back: a newer session, or, if it was only
    /// suspected, a frame on the same one.
    fn is_back<T: Send + 'static>(&self, children: &Children<T>) -> bool {
        match children.last_heard(&self.name) {
            None => false,
            Some((session, _)) if session != self.session => true,
            Some((_, heard)) => self.heard.is_some_and(|at| heard > at),
        }
    }

    /// Whether its silent session is still open (only suspected: it may be
    /// late, not gone).
    fn still_open<T: Send + 'static>(&self, children: &Children<T>) -> bool {
        children
            .last_heard(&self.name)
            .is_some_and(|(session, _)| session == self.session)
    }
}

/// Where a child's host is, as the level knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// No longer this manager's child (it left the topology, moved or
    /// stepped down): nothing to diagnose; a failure of it is cleared
    /// ("no longer watched by this manager") and forgotten.
    Gone,
    /// `host`: from the topology (an address or a name, optionally with a
    /// port); `None` uses the address it last connected from.
    At {
        host: Option<String>,
        tcp_port: Option<u16>,
    },
}

/// What the level supplies to its guardian.
pub trait Sink: Send + Sync + 'static {
    /// Where to probe `element`.
    fn locate(&self, element: &str) -> Located;
    /// Stores an alarm about `element` for good (BICD and the outbox, or
    /// BIG). Blocking: called on the blocking pool.
    fn store(&self, alarm: Alarm);
    /// Since when (Unix ms) this manager trusts its own view enough to
    /// accuse a child, or `None` if it does not now: a domain manager cut
    /// off from its own parent may be the one whose network failed (every
    /// child looks down from an island), and one activated anew takes its
    /// children over from another manager (they are still redialling). A
    /// child silent since before that is given one more interval.
    fn accusing_since(&self) -> Option<u64> {
        Some(0)
    }
    /// The children this manager expects connected now (its domain's
    /// nodes, the candidate stations of a domain nobody serves): one
    /// absent past its redial allowance is diagnosed like one gone silent,
    /// so an element already dead when the manager starts, restarts or
    /// takes a domain over is accused too. Called every second.
    fn expected(&self) -> Vec<String> {
        Vec::new()
    }
}

/// For [`Sink::expected`] of a parent of stations: the candidate stations
/// of every domain (name, candidates) that no domain in `served` is. A standby of a
/// served domain is not expected: one not running is a loss of redundancy,
/// not of service (and a topology may name a spare not started yet); once
/// it must serve, it is.
pub fn candidates_of_unserved<'a>(
    domains: impl IntoIterator<Item = (&'a str, &'a [String])>,
    served: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let served: std::collections::HashSet<String> = served.into_iter().collect();
    domains
        .into_iter()
        .filter(|(domain, _)| !served.contains(*domain))
        .flat_map(|(_, stations)| stations.iter().cloned())
        .collect()
}

/// The guardian of one registry of children.
pub struct Guardian {
    config: GuardianConfig,
    /// `node` or `station`, for messages.
    what: &'static str,
    failed: Mutex<HashMap<String, Failure>>,
    /// The same, on disk: name → [`Failure`].
    record: Tree,
    /// Children with a diagnosis task running, and since when they are silent.
    diagnosing: Mutex<HashMap<String, u64>>,
    /// Probes under way at once (each holds a blocking thread up to its
    /// deadline).
    probing: tokio::sync::Semaphore,
    /// Numbers alarm ids, across restarts too (a restarted manager may
    /// raise within the same millisecond as its last run did).
    db: Database,
    /// ... or, should the database fail to number, this run's count.
    counter: AtomicU64,
    /// Where this manager records that it is alive, under `alive_key`.
    alive: Tree,
    alive_key: Vec<u8>,
    /// When this run started (Unix ms), and how long the manager was down
    /// before it (`None`: unknown, a first start).
    started_ms: u64,
    downtime: Option<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guardian {
    /// The guardian of `what`s (`node`, `station`), its failures kept in
    /// tree `tree` of `db`.
    pub fn open(
        db: &Database,
        tree: &str,
        what: &'static str,
        config: GuardianConfig,
    ) -> Result<Guardian, StorageError> {
        let record = db.tree(tree)?;
        let alive = db.tree(ALIVE_TREE)?;
        let started_ms = now_ms();
        let downtime = alive
            .get(tree.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(|b| Duration::from_millis(started_ms.saturating_sub(u64::from_be_bytes(b))));
        let mut failed = HashMap::new();
        for (k, v) in record.scan_prefix(b"")? {
            match agad_protocol::wire::decode_value::<Failure>(&v) {
                Ok(f) => {
                    failed.insert(String::from_utf8_lossy(&k).into_owned(), f);
                }
                Err(e) => tracing::error!("unreadable guardian record: {e}"),
            }
        }
        Ok(Guardian {
            config,
            what,
            failed: Mutex::new(failed),
            record,
            diagnosing: Mutex::default(),
            counter: AtomicU64::new(0),
            db: db.clone(),
            probing: tokio::sync::Semaphore::new(MAX_PROBES),
            alive,
            alive_key: tree.as_bytes().to_vec(),
            started_ms,
            downtime,
        })
    }

    /// The failure of `element`, if it is failed.
    pub fn failure(&self, element: &str) -> Option<Failure> {
        lock(&self.failed).get(element).cloned()
    }

    /// Since when `element` is silent, if it is failed or being diagnosed.
    pub fn silent_since(&self, element: &str) -> Option<u64> {
        self.failure(element)
            .map(|f| f.since_ms)
            .or_else(|| lock(&self.diagnosing).get(element).copied())
    }

    /// Every failed element.
    pub fn failures(&self) -> HashMap<String, Failure> {
        lock(&self.failed).clone()
    }

    /// Diagnoses `children` as they go silent, until `shutdown`.
    pub async fn run<T: Send + 'static>(
        self: Arc<Self>,
        children: Arc<Children<T>>,
        sink: Arc<dyn Sink>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut events = children.subscribe();
        // Failures from before a restart: followed until they clear.
        let known: Vec<(String, Option<IpAddr>, u64)> = lock(&self.failed)
            .iter()
            .map(|(n, f)| (n.clone(), f.address, f.since_ms))
            .collect();
        for (name, address, since_ms) in known {
            let silent = Silent {
                name,
                address: address.map(|ip| SocketAddr::new(ip, 0)),
                keepalive: children.config().liveness.interval,
                since_ms,
                grace: true,
                session: 0,
                heard: None,
                // Accused without a probe before: again so after a restart.
                absent: address.is_none(),
            };
            self.start(&children, &sink, &shutdown, silent);
        }
        let mut stop = shutdown.clone();
        // Expected children absent, and since when this run saw them so.
        let mut absent: HashMap<String, u64> = HashMap::new();
        let mut check = tokio::time::interval(ABSENT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = check.tick() => {
                    self.check_absent(&children, &sink, &shutdown, &mut absent);
                    continue;
                }
                _ = stop.changed() => return,
            };
            match event {
                Ok(ChildEvent::Suspect { child, silent }) => {
                    // Late but still connected: its host is probed now, so
                    // a host cut off is known before the child is declared
                    // stale; a host that answers waits for that.
                    let since_ms = now_ms().saturating_sub(silent.as_millis() as u64);
                    let mut silent = Silent::of(child, since_ms);
                    silent.grace = false;
                    silent.heard = children
                        .last_heard(&silent.name)
                        .filter(|(session, _)| *session == silent.session)
                        .map(|(_, at)| at);
                    self.start(&children, &sink, &shutdown, silent);
                }
                Ok(ChildEvent::Stale { child, silent, .. }) => {
                    // Silent for about 2.6 intervals already: probed at once.
                    let since_ms = now_ms().saturating_sub(silent.as_millis() as u64);
                    let mut silent = Silent::of(child, since_ms);
                    silent.grace = false;
                    self.start(&children, &sink, &shutdown, silent);
                }
                Ok(ChildEvent::Disconnected { child, .. }) => {
                    // A replaced session has a successor: the diagnosis
                    // task sees it back after its grace and stops.
                    self.start(&children, &sink, &shutdown, Silent::of(child, now_ms()));
                }
                Ok(ChildEvent::Connected(child)) => {
                    if lock(&self.failed).contains_key(&child.name) {
                        let (me, sink) = (self.clone(), sink.clone());
                        tokio::task::spawn_blocking(move || me.recovered(&child.name, &*sink));
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "guardian fell behind the children's events");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Records that this manager is alive, and starts diagnosing every
    /// expected child absent past its allowance.
    fn check_absent<T: Send + 'static>(
        self: &Arc<Self>,
        children: &Arc<Children<T>>,
        sink: &Arc<dyn Sink>,
        shutdown: &watch::Receiver<bool>,
        absent: &mut HashMap<String, u64>,
    ) {
        let now = now_ms();
        // No flush: within a second of a crash is precise enough.
        if let Err(e) = self.alive.insert(&self.alive_key, &now.to_be_bytes()) {
            tracing::debug!("cannot record that the guardian is alive: {e}");
        }
        let expected = sink.expected();
        let accusing = sink.accusing_since();
        let mut still = HashMap::with_capacity(absent.len());
        for name in expected {
            if children.last_heard(&name).is_some() {
                continue;
            }
            let first = absent.get(&name).copied().unwrap_or(now);
            still.insert(name.clone(), first);
            let Some(accusing) = accusing else { continue };
            if lock(&self.failed).contains_key(&name) || lock(&self.diagnosing).contains_key(&name)
            {
                continue;
            }
            let from = first.max(accusing);
            let allowance = absence_allowance(self.downtime, from.saturating_sub(self.started_ms));
            if now.saturating_sub(from) < allowance.as_millis() as u64 {
                continue;
            }
            let silent = Silent {
                name,
                address: None,
                keepalive: children.config().liveness.interval,
                since_ms: from,
                grace: false,
                session: 0,
                heard: None,
                absent: true,
            };
            self.start(children, sink, shutdown, silent);
        }
        *absent = still;
    }

    /// Starts diagnosing `name` unless that is under way.
    fn start<T: Send + 'static>(
        self: &Arc<Self>,
        children: &Arc<Children<T>>,
        sink: &Arc<dyn Sink>,
        shutdown: &watch::Receiver<bool>,
        silent: Silent,
    ) {
        match lock(&self.diagnosing).entry(silent.name.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => return,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(silent.since_ms);
            }
        }
        let (me, children, sink, mut shutdown) = (
            self.clone(),
            children.clone(),
            sink.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = me.diagnose(&children, &sink, &silent) => {}
                _ = shutdown.changed() => {}
            }
            lock(&me.diagnosing).remove(&silent.name);
        });
    }

    /// Follows one silent child until it is back or no longer expected.
    async fn diagnose<T: Send + 'static>(
        self: &Arc<Self>,
        children: &Children<T>,
        sink: &Arc<dyn Sink>,
        silent: &Silent,
    ) {
        let Silent {
            name,
            address,
            keepalive,
            since_ms,
            grace,
            ..
        } = silent;
        let (name, address, since_ms) = (name.as_str(), *address, *since_ms);
        // The silence this manager judges: from its own current activation
        // on, if that came later.
        let mut watched_from = since_ms;
        let timing = Timing::for_keepalive(*keepalive, self.config.echoes);
        let mut wait = if *grace { timing.grace } else { Duration::ZERO };
        // When a host found down answered again.
        let mut host_back: Option<tokio::time::Instant> = None;
        // Why it cannot be diagnosed yet is logged once per silence, not
        // once per probe of each of thousands of children.
        let mut told = false;
        loop {
            if back_within(children, silent, wait).await {
                if lock(&self.failed).contains_key(name) {
                    let (me, sink, name) = (self.clone(), sink.clone(), name.to_owned());
                    let _ = tokio::task::spawn_blocking(move || me.recovered(&name, &*sink)).await;
                }
                return;
            }
            // While only suspected, look again soon: it is declared stale
            // (or speaks) within about half an interval.
            let suspected = silent.still_open(children);
            wait = if suspected {
                timing.recheck.min(*keepalive / 4)
            } else {
                timing.recheck
            };
            let located = sink.locate(name);
            let Located::At { host, tcp_port } = located else {
                let (me, sink, name) = (self.clone(), sink.clone(), name.to_owned());
                let _ = tokio::task::spawn_blocking(move || me.forget(&name, &*sink)).await;
                return;
            };
            let target = match resolve(host.as_deref(), tcp_port, address).await {
                Ok(t) => t,
                Err(reason) if silent.absent && sink.accusing_since().is_some() => {
                    // An element of the topology that never shows up must
                    // be seen: accused without a probe, "agent down" (its
                    // host may be up or down, nothing tells), the reason
                    // saying why it could not be probed.
                    let seen = Probe {
                        reachable: true,
                        local_failure: false,
                        evidence: format!(
                            "not connected since {} and no address to probe ({reason})",
                            clock(since_ms)
                        ),
                    };
                    let (me, sink, name) = (self.clone(), sink.clone(), name.to_owned());
                    let _ = tokio::task::spawn_blocking(move || {
                        me.diagnosed(&name, None, since_ms, seen, &*sink)
                    })
                    .await;
                    continue;
                }
                Err(reason) => {
                    if !std::mem::replace(&mut told, true) {
                        tracing::warn!(element = name, "cannot probe: {reason}");
                    }
                    continue;
                }
            };
            let seen = {
                // A mass failure (a switch down) probes a bounded number of
                // hosts at once; the others wait their turn.
                let _turn = self.probing.acquire().await;
                probe(target, &timing.probe).await
            };
            // It may have come back while the probe ran.
            if silent.is_back(children) {
                continue;
            }
            // A late child whose host answers is not accused yet.
            if suspected && seen.reachable {
                continue;
            }
            if seen.local_failure {
                if std::mem::replace(&mut told, true) {
                    continue;
                }
                tracing::info!(
                    element = name,
                    "not diagnosing: this manager's own network is down ({})",
                    seen.evidence
                );
                continue;
            }
            let was_host_down = self
                .failure(name)
                .is_some_and(|f| f.diagnosis == Diagnosis::HostDown);
            if seen.reachable && was_host_down {
                let back = *host_back.get_or_insert_with(tokio::time::Instant::now);
                if back.elapsed() < REDIAL_ALLOWANCE {
                    continue;
                }
            } else {
                host_back = None;
            }
            match sink.accusing_since() {
                None => {
                    if std::mem::replace(&mut told, true) {
                        continue;
                    }
                    tracing::info!(
                        element = name,
                        "not diagnosing yet: this manager is not confirmed by its parent"
                    );
                    continue;
                }
                Some(from) if from > watched_from => {
                    watched_from = from;
                    wait = timing.grace;
                    continue;
                }
                Some(_) => {}
            }
            let (me, sink, name) = (self.clone(), sink.clone(), name.to_owned());
            let _ = tokio::task::spawn_blocking(move || {
                me.diagnosed(&name, Some(target.ip), since_ms, seen, &*sink)
            })
            .await;
        }
    }

    /// Records what the probe of silent `name` found; raises (and clears
    /// the other diagnosis) when it changed.
    fn diagnosed(
        &self,
        name: &str,
        ip: Option<IpAddr>,
        since_ms: u64,
        seen: Probe,
        sink: &dyn Sink,
    ) {
        let diagnosis = if seen.reachable {
            Diagnosis::AgentDown
        } else {
            Diagnosis::HostDown
        };
        let before = lock(&self.failed).get(name).cloned();
        let since_ms = before.as_ref().map_or(since_ms, |b| b.since_ms);
        if let Some(b) = &before
            && b.diagnosis == diagnosis
        {
            return;
        }
        let reason = match diagnosis {
            Diagnosis::HostDown => seen.evidence,
            Diagnosis::AgentDown => format!("{}, but the {} is silent", seen.evidence, self.what),
        };
        let failure = Failure {
            diagnosis,
            since_ms,
            reason,
            address: ip,
        };
        if let Some(b) = before {
            sink.store(self.alarm(name, &b, false, now_ms()));
        }
        sink.store(self.alarm(name, &failure, true, now_ms()));
        tracing::warn!(
            element = name,
            diagnosis = diagnosis.as_str(),
            "{}",
            failure.reason
        );
        if let Err(e) = self
            .record
            .insert(
                name.as_bytes(),
                &agad_protocol::wire::encode_value(&failure),
            )
            .and_then(|()| self.record.flush())
        {
            tracing::error!(element = name, "cannot record the failure: {e}");
        }
        lock(&self.failed).insert(name.to_owned(), failure);
    }

    /// `name` is back: its alarm clears.
    fn recovered(&self, name: &str, sink: &dyn Sink) {
        let Some(failure) = lock(&self.failed).remove(name) else {
            return;
        };
        sink.store(self.alarm(name, &failure, false, now_ms()));
        tracing::info!(
            element = name,
            down_s = now_ms().saturating_sub(failure.since_ms) / 1000,
            "back ({} before)",
            failure.diagnosis.as_str()
        );
        if let Err(e) = self.record.remove(name.as_bytes()) {
            tracing::error!(element = name, "cannot record the recovery: {e}");
        }
    }

    /// `name` is no longer this manager's child (it left the topology or
    /// moved, or this manager stepped down or lost its domain): what was
    /// raised about it is cleared, so no alarm stays raised with nobody to
    /// clear it; the manager that watches it now diagnoses it anew (an
    /// absent expected child). Stored through the sink: a stepped-down
    /// domain manager still delivers its outbox.
    fn forget(&self, name: &str, sink: &dyn Sink) {
        let Some(failure) = lock(&self.failed).remove(name) else {
            return;
        };
        let mut clear = self.alarm(name, &failure, false, now_ms());
        clear.message = excerpt(
            &format!(
                "{} `{name}` is no longer watched by this manager (was: {} since {}): handed over or removed",
                self.what,
                failure.diagnosis.as_str(),
                clock(failure.since_ms)
            ),
            agad_protocol::message::MAX_ALARM_TEXT,
        );
        sink.store(clear);
        tracing::info!(
            element = name,
            "no longer watched: {} cleared",
            failure.diagnosis.as_str()
        );
        if let Err(e) = self.record.remove(name.as_bytes()) {
            tracing::error!(element = name, "cannot record the hand-over: {e}");
        }
    }

    /// The raise or clear of `failure`'s condition, at `time_ms`.
    fn alarm(&self, name: &str, failure: &Failure, raised: bool, time_ms: u64) -> Alarm {
        let down_s = time_ms.saturating_sub(failure.since_ms) / 1000;
        let (key, severity) = match failure.diagnosis {
            Diagnosis::HostDown => (HOST_DOWN, Severity::Critical),
            Diagnosis::AgentDown => (AGENT_DOWN, Severity::Major),
        };
        let message = if raised {
            format!(
                "{}: {} `{name}` silent since {} ({down_s} s): {}",
                failure.diagnosis.as_str(),
                self.what,
                clock(failure.since_ms),
                failure.reason
            )
        } else {
            format!(
                "{} `{name}` is back after {down_s} s (was: {})",
                self.what,
                failure.diagnosis.as_str()
            )
        };
        let n = self
            .db
            .next_id()
            .unwrap_or_else(|_| self.counter.fetch_add(1, Ordering::Relaxed));
        RuntimeAlarm {
            node: name,
            module: MODULE,
            serial: &format!("g{time_ms}n{n}"),
            area: Area::Fault,
            key,
            metric: "element.down-seconds",
            subject: name,
            severity,
            message: &message,
            time_ms,
        }
        .alarm(raised)
        .measuring(down_s as f64, 0.0, Comparison::Above)
    }
}

/// How long an expected child may stay absent before it is accused, the
/// absence counted from `from_start` after this run started.
///
/// A child redials its parent with a back-off that doubles from 0.5 s up to
/// 30 s, ±50 % jitter (`agad node`, `agad dominio`): after failing for `U`
/// its pending wait is at most `3 U + 0.75 s` (the waits before it add up to
/// at least half its base) and at most 45 s ([`REDIAL_ALLOWANCE`]). A child
/// of a manager that was down `D` and came back `from_start` ago has failed
/// for `D + from_start`; the allowance is three times that plus a handshake,
/// within 45 s. When `D` is unknown (a first start, or a domain taken over
/// from another manager, whose death this one did not see) the whole 45 s.
/// It does not follow the keep-alive interval: the redial back-off does not.
fn absence_allowance(downtime: Option<Duration>, from_start: u64) -> Duration {
    match downtime {
        Some(d) => {
            ((d + Duration::from_millis(from_start)) * 3 + HELLO_ALLOWANCE).min(REDIAL_ALLOWANCE)
        }
        None => REDIAL_ALLOWANCE,
    }
}

/// Whether `silent` is back within `wait` (looked at 4 times a second).
async fn back_within<T: Send + 'static>(
    children: &Children<T>,
    silent: &Silent,
    wait: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + wait;
    loop {
        if silent.is_back(children) {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return false;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(250))).await;
    }
}

/// The probe target: the topology's address (an IP, `ip:port`, or a name
/// resolved now), else the address the element last connected from.
async fn resolve(
    host: Option<&str>,
    tcp_port: Option<u16>,
    last: Option<SocketAddr>,
) -> Result<Target, String> {
    let Some(host) = host else {
        return last
            .map(|a| Target {
                ip: a.ip(),
                tcp_port,
            })
            .ok_or_else(|| "no address in the topology and none seen".to_owned());
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target { ip, tcp_port });
    }
    if let Ok(a) = host.parse::<SocketAddr>() {
        return Ok(Target {
            ip: a.ip(),
            tcp_port: tcp_port.or(Some(a.port())),
        });
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if p.parse::<u16>().is_ok() => (n, p.parse::<u16>().ok()),
        _ => (host, None),
    };
    let found = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((name, port.unwrap_or(0))),
    )
    .await
    .map_err(|_| format!("resolving `{}` took over 2 s", excerpt(name, 64)))?
    .map_err(|e| format!("cannot resolve `{}`: {e}", excerpt(name, 64)))?
    .next()
    .ok_or_else(|| format!("`{}` resolves to nothing", excerpt(name, 64)))?;
    Ok(Target {
        ip: found.ip(),
        tcp_port: tcp_port.or(port),
    })
}

/// `HH:MM:SS UTC` of a Unix time in ms.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02} UTC",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Records what the guardian stores (a unit test's stand-in for BICD).
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Alarm>>);

    impl Sink for Recorded {
        fn locate(&self, _: &str) -> Located {
            Located::Gone
        }
        fn store(&self, alarm: Alarm) {
            lock(&self.0).push(alarm);
        }
    }

    fn probe_result(reachable: bool) -> Probe {
        Probe {
            reachable,
            local_failure: false,
            evidence: if reachable {
                "10.0.0.9 answers ICMP echo (0.2 ms)".into()
            } else {
                "10.0.0.9 unreachable within 500 ms: no answer to 3 ICMP echo requests".into()
            },
        }
    }

    #[test]
    fn a_diagnosis_is_raised_once_follows_the_host_and_clears_when_the_element_is_back() {
        let db = Database::temporary().unwrap();
        let guardian = Guardian::open(&db, "g", "node", GuardianConfig::default()).unwrap();
        let sink = Recorded::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let since = now_ms() - 5_000;
        guardian.diagnosed("n1", Some(ip), since, probe_result(false), &sink);
        // The same diagnosis again: nothing new.
        guardian.diagnosed("n1", Some(ip), since + 1000, probe_result(false), &sink);
        // The host answers, the node still does not: the diagnosis changes.
        guardian.diagnosed("n1", Some(ip), since + 2000, probe_result(true), &sink);
        assert_eq!(
            guardian.failure("n1").unwrap().diagnosis,
            Diagnosis::AgentDown
        );
        assert_eq!(
            guardian.failure("n1").unwrap().since_ms,
            since,
            "since the first silence"
        );

        // A restarted manager still knows, and clears it when the node is back.
        let reopened = Guardian::open(&db, "g", "node", GuardianConfig::default()).unwrap();
        assert_eq!(reopened.failure("n1"), guardian.failure("n1"));
        reopened.recovered("n1", &sink);
        assert!(reopened.failure("n1").is_none());
        assert!(reopened.silent_since("n1").is_none());

        let alarms = lock(&sink.0).clone();
        let seen: Vec<(&str, bool)> = alarms.iter().map(|a| (a.key.as_str(), a.raised)).collect();
        assert_eq!(
            seen,
            [
                (HOST_DOWN, true),
                (HOST_DOWN, false),
                (AGENT_DOWN, true),
                (AGENT_DOWN, false)
            ]
        );
        for a in &alarms {
            // Acceptable to every manager above: the node's own id space.
            a.check_origin("n1").unwrap();
            assert!(a.value >= 5.0, "seconds since the failure: {a:?}");
        }
        assert_eq!(alarms[0].severity, Severity::Critical);
        assert!(alarms[0].message.contains("host down") && alarms[0].message.contains("10.0.0.9"));
        assert!(alarms[3].message.contains("back after"), "{:?}", alarms[3]);
        let ids: HashSet<&str> = alarms.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids.len(), alarms.len(), "every event its own id");
    }

    /// A level that expects `expected`, knows no address for them, and
    /// says `gone` once this manager no longer watches them.
    #[derive(Default)]
    struct Level {
        alarms: Mutex<Vec<Alarm>>,
        expected: Vec<String>,
        gone: std::sync::atomic::AtomicBool,
    }

    impl Sink for Level {
        fn locate(&self, _: &str) -> Located {
            if self.gone.load(Ordering::Relaxed) {
                Located::Gone
            } else {
                Located::At {
                    host: None,
                    tcp_port: None,
                }
            }
        }
        fn store(&self, alarm: Alarm) {
            lock(&self.alarms).push(alarm);
        }
        fn expected(&self) -> Vec<String> {
            self.expected.clone()
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never: {what}");
    }

    #[test]
    fn the_absence_allowance_follows_how_long_the_manager_was_down() {
        // A first start, or a domain taken over: the longest redial.
        assert_eq!(absence_allowance(None, 0), REDIAL_ALLOWANCE);
        // Down 2 s, absence counted from 1 s after the start: its nodes
        // failed for 3 s at most, so redial within 9.75 s.
        assert_eq!(
            absence_allowance(Some(Duration::from_secs(2)), 1000),
            Duration::from_secs(9) + HELLO_ALLOWANCE
        );
        // Down long enough for the back-off to reach its cap.
        assert_eq!(
            absence_allowance(Some(Duration::from_secs(600)), 0),
            REDIAL_ALLOWANCE
        );
        // A standby activated long after its start: as good as unknown.
        assert_eq!(
            absence_allowance(Some(Duration::ZERO), 3_600_000),
            REDIAL_ALLOWANCE
        );
    }

    #[tokio::test]
    async fn an_expected_child_absent_past_its_allowance_is_accused_even_without_an_address() {
        let db = Database::temporary().unwrap();
        let guardian =
            Arc::new(Guardian::open(&db, "g", "node", GuardianConfig::default()).unwrap());
        let children: Arc<Children<()>> = Arc::new(Children::new(Default::default()));
        let level = Arc::new(Level {
            expected: vec!["n1".into(), "n2".into()],
            ..Level::default()
        });
        let sink: Arc<dyn Sink> = level.clone();
        let (_stop, shutdown) = watch::channel(false);
        // n1 absent since a minute, n2 only since now: only n1 is past
        // even the longest allowance.
        let since = now_ms() - 60_000;
        let mut absent = HashMap::from([("n1".to_owned(), since)]);
        guardian.check_absent(&children, &sink, &shutdown, &mut absent);
        assert_eq!(absent.len(), 2, "both followed: {absent:?}");
        until("n1 accused", || guardian.failure("n1").is_some()).await;
        let failure = guardian.failure("n1").unwrap();
        assert_eq!(failure.diagnosis, Diagnosis::AgentDown);
        assert_eq!(failure.since_ms, since, "since the absence began");
        assert_eq!(failure.address, None);
        assert!(
            failure.reason.contains("no address to probe"),
            "{failure:?}"
        );
        assert!(guardian.failure("n2").is_none() && guardian.silent_since("n2").is_none());
        let alarms = lock(&level.alarms).clone();
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        assert!(alarms[0].raised && alarms[0].key == AGENT_DOWN);
        assert!(
            alarms[0].message.contains("no address to probe"),
            "{alarms:?}"
        );

        // Not while this manager does not trust its own view.
        let doubting = Arc::new(Doubting(Level {
            expected: vec!["n3".into()],
            ..Level::default()
        }));
        let sink: Arc<dyn Sink> = doubting.clone();
        let mut absent = HashMap::from([("n3".to_owned(), since)]);
        guardian.check_absent(&children, &sink, &shutdown, &mut absent);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(guardian.silent_since("n3").is_none());
        assert!(lock(&doubting.0.alarms).is_empty());
    }

    /// A level whose manager is not confirmed by its parent.
    struct Doubting(Level);

    impl Sink for Doubting {
        fn locate(&self, e: &str) -> Located {
            self.0.locate(e)
        }
        fn store(&self, alarm: Alarm) {
            self.0.store(alarm)
        }
        fn expected(&self) -> Vec<String> {
            self.0.expected()
        }
        fn accusing_since(&self) -> Option<u64> {
            None
        }
    }

    #[tokio::test]
    async fn a_failure_no_longer_watched_is_cleared_not_just_forgotten() {
        let db = Database::temporary().unwrap();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let level = Arc::new(Level::default());
        {
            let guardian = Guardian::open(&db, "g", "node", GuardianConfig::default()).unwrap();
            guardian.diagnosed(
                "n1",
                Some(ip),
                now_ms() - 5_000,
                probe_result(true),
                &*level,
            );
        }
        // The manager restarts and steps down (or its domain moved): its
        // guardian finds the node no longer its own.
        level.gone.store(true, Ordering::Relaxed);
        let guardian =
            Arc::new(Guardian::open(&db, "g", "node", GuardianConfig::default()).unwrap());
        // Short intervals: a restored failure is looked at after one.
        let children: Arc<Children<()>> =
            Arc::new(Children::new(agad_net::children::ChildrenConfig {
                liveness: agad_net::liveness::LivenessConfig::new(Duration::from_millis(200)),
                ..Default::default()
            }));
        let (stop, shutdown) = watch::channel(false);
        let running = tokio::spawn(guardian.clone().run(children, level.clone(), shutdown));
        until("the failure dropped", || guardian.failure("n1").is_none()).await;
        let _ = stop.send(true);
        running.await.unwrap();

        let alarms = lock(&level.alarms).clone();
        let seen: Vec<(&str, bool)> = alarms.iter().map(|a| (a.key.as_str(), a.raised)).collect();
        assert_eq!(seen, [(AGENT_DOWN, true), (AGENT_DOWN, false)]);
        assert!(
            alarms[1]
                .message
                .contains("no longer watched by this manager"),
            "{:?}",
            alarms[1]
        );
        alarms[1].check_origin("n1").unwrap();
        assert_ne!(alarms[0].id, alarms[1].id);
        // And for good: a restart does not bring it back.
        let reopened = Guardian::open(&db, "g", "node", GuardianConfig::default()).unwrap();
        assert!(reopened.failures().is_empty());
    }
}
