//! A node under a domain manager: it registers, runs exactly the modules
//! the manager deploys (verifying every signature itself), keeps every alarm
//! and report in the durable outbox until acknowledged, and sends
//! keep-alives with the state of each module. When the manager is away the
//! node keeps inspecting and buffering.

use crate::integrity::{self, IntegrityError, ModuleStore};
use crate::node::{Event, ModuleConfig, Node};
use crate::refusals::RefusalAlarms;
use crate::runs::{NotAccepted, Runs};
use crate::{Fault, LoadError, TrustError};
use agad_net::fence::Fence;
use agad_net::outbox::Outbox;
use agad_net::uplink::{self, Downlink, Element, UplinkConfig};
use agad_protocol::Bundle;
use agad_protocol::attest::{Artefact, Attestation, Nonce, Quarantine};
use agad_protocol::message::{FaultKind, Provenance};
use agad_protocol::run::{RunOutcome, RunRequest, RunResult};
use agad_protocol::wire::{
    Activation, Component, ComponentStatus, Control, Deployment, State, Upward,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A module fault this recent marks the module unhealthy in keep-alives.
const RECENT_FAULT: Duration = Duration::from_secs(60);
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

struct Running {
    hash: String,
    config: Vec<(String, String)>,
    /// When it started (wall clock, ms).
    started_ms: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Most bytes kept for modules not stored yet ([`Managed::arriving`]).
const ARRIVING_MAX_BYTES: usize = 64 * 1024 * 1024;

/// The node as its link to the manager sees it.
struct Managed {
    node: Node,
    /// Bundles received, by wasm hash: a redeploy sends only the manifest.
    store: ModuleStore,
    /// Modules whose code failed an integrity check: name → (hash, why).
    /// Stopped and not restarted until a deployment brings the good copy.
    quarantined: Mutex<HashMap<String, (String, String)>>,
    /// Module bytes that came with a deployment or a run and are not stored
    /// yet: they are stored only once they verify and compile. The manager
    /// counts a hash as held as soon as it sent the bytes, so a run it
    /// sends right after (a second alarm's specialist) comes without them
    /// and takes them from here; it verifies them itself. By hash, from
    /// arrival until they are stored; at most [`ARRIVING_MAX_BYTES`], the
    /// oldest (a load that failed) going first.
    arriving: Mutex<std::collections::VecDeque<(String, Vec<u8>)>>,
    /// The `agad.module-tampered` alarm of each module in `quarantined`.
    tampered: RefusalAlarms,
    running: Mutex<HashMap<String, Running>>,
    /// Last fault per module since it was deployed, and when it happened.
    faults: Mutex<HashMap<String, (String, Instant, u64)>>,
    /// Modules of the last deployment that could not start, and why.
    refused: Mutex<HashMap<String, String>>,
    /// Each module's state as keep-alives last showed it, and since when:
    /// the "since" of a state whose start is not recorded elsewhere.
    shown: Mutex<HashMap<String, (State, u64)>>,
    /// The alarm raised for each module in `refused`.
    refusals: RefusalAlarms,
    /// Sends the refusal alarms of the last deployment.
    refusal_sender: Mutex<Option<JoinHandle<()>>>,
    /// The newest activation of its domain's manager this node accepted.
    fence: Fence,
    /// Specialist runs the manager asked for: each at most once.
    runs: Runs,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Element for Managed {
    fn modules_held(&self) -> Vec<String> {
        self.store.held()
    }

    fn components(&self) -> Vec<ComponentStatus> {
        // A copy, so this never holds `faults` while waiting for `running`
        // (`deploy` takes them in the other order).
        let faults = lock(&self.faults).clone();
        let mut out: Vec<ComponentStatus> = lock(&self.running)
            .iter()
            .map(|(name, r)| {
                // A module that failed recently is restarting (with back-off);
                // one whose last failure is old has been running since.
                let (state, since) = match faults.get(name) {
                    _ if r.task.is_finished() => (
                        State::Refused {
                            reason: "stopped: its configuration was refused".into(),
                        },
                        None,
                    ),
                    Some((fault, at, at_ms)) if at.elapsed() < RECENT_FAULT => (
                        State::Restarting {
                            last_fault: fault.clone(),
                            fault_at_ms: *at_ms,
                        },
                        Some(*at_ms),
                    ),
                    Some((_, _, at_ms)) => (State::Running, Some(r.started_ms.max(*at_ms))),
                    None => (State::Running, Some(r.started_ms)),
                };
                ComponentStatus::new(Component::Module { name: name.clone() }, state).since(since)
            })
            .collect();
        out.extend(lock(&self.quarantined).iter().map(|(name, (_, reason))| {
            ComponentStatus::new(
                Component::Module { name: name.clone() },
                State::Quarantined {
                    reason: reason.clone(),
                },
            )
        }));
        out.extend(lock(&self.refused).iter().map(|(name, reason)| {
            ComponentStatus::new(
                Component::Module { name: name.clone() },
                State::Refused {
                    reason: reason.clone(),
                },
            )
        }));
        out.sort_by_key(|a| a.component.to_string());
        // A state whose start is not known above dates from when a
        // keep-alive first showed it.
        let now = crate::host::clock::now_ms();
        let mut shown = lock(&self.shown);
        let mut was = std::mem::take(&mut *shown);
        for c in &mut out {
            let Component::Module { name } = &c.component else {
                continue;
            };
            let since = match (c.since_ms, was.remove(name)) {
                (Some(known), _) => known,
                (None, Some((state, since))) if state == c.state => since,
                (None, _) => now,
            };
            c.since_ms = Some(since);
            shown.insert(name.clone(), (c.state.clone(), since));
        }
        out
    }

    fn accept_parent(&self, activation: Option<&Activation>) -> Result<(), String> {
        self.fence.accept(activation)
    }
}

impl Managed {
    /// Makes the running set equal to `modules`; returns the problems.
    async fn deploy(
        self: &Arc<Self>,
        modules: Vec<Deployment>,
        events: &mpsc::Sender<Event>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mut refused = HashMap::new();
        let mut wanted = HashMap::new();
        let me = self.clone();
        // The local bundle store is sled: read it off the runtime's threads.
        let resolved = tokio::task::spawn_blocking(move || {
            modules
                .into_iter()
                .map(|d| {
                    let name = d.module.manifest.name.clone();
                    let hash = d.module.manifest.sha256_hex();
                    let bundle = match agad_protocol::validate_module_name(&name) {
                        Ok(()) => me.bundle_for(d.module),
                        Err(e) => Err(e.into()),
                    };
                    (name, hash, bundle, d.config)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(e) => return vec![format!("deployment task failed: {e}")],
        };
        let assigned: std::collections::HashSet<String> =
            resolved.iter().map(|(name, ..)| name.clone()).collect();
        let mut altered = Vec::new();
        for (name, hash, bundle, config) in resolved {
            // Refused before anything logs or stores it: a name with a
            // newline or a terminal escape would forge log lines.
            if let Err(e) = agad_protocol::validate_module_name(&name) {
                let escaped: String = format!("{name:?}").chars().take(80).collect();
                problems.push(format!("module {escaped}: {e}"));
                continue;
            }
            match bundle {
                Ok(bundle) => {
                    wanted.insert(name, (bundle, config));
                }
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    if let Some(IntegrityError::Altered { .. }) = e.downcast_ref() {
                        // Found by the deployment rather than the periodic check.
                        altered.push((name, hash, format!("{e}")));
                    } else if lock(&self.quarantined)
                        .get(&name)
                        .is_none_or(|(h, _)| *h != hash)
                    {
                        refused.insert(name, format!("{e}"));
                    }
                }
            }
        }
        // Not held while modules start (instantiation and `init` await).
        let unassigned: Vec<(String, Running)> = {
            let mut running = lock(&self.running);
            let stopping: Vec<String> = running
                .iter()
                .filter(|(name, r)| {
                    !wanted.get(*name).is_some_and(|(b, config)| {
                        b.manifest.sha256_hex() == r.hash && *config == r.config
                    })
                })
                .map(|(name, _)| name.clone())
                .collect();
            let mut unassigned = Vec::new();
            for name in stopping {
                if let Some(r) = running.remove(&name) {
                    tracing::info!(module = %name, "stopping");
                    let _ = r.stop.send(true);
                    // Restarted with another version or configuration, a
                    // module keeps its state; unassigned, it loses it.
                    if !wanted.contains_key(&name) {
                        unassigned.push((name, r));
                    }
                }
            }
            wanted.retain(|name, _| !running.contains_key(name));
            unassigned
        };
        for (name, r) in unassigned {
            self.forget_when_stopped(name, r.task);
        }
        for (name, (bundle, config)) in wanted {
            let version = bundle.manifest.version.clone();
            let hash = bundle.manifest.sha256_hex();
            match self.start(bundle, config.clone(), events).await {
                Ok((stop, task)) => {
                    tracing::info!(module = %name, %version, "started");
                    lock(&self.faults).remove(&name);
                    lock(&self.quarantined).remove(&name);
                    lock(&self.running).insert(
                        name,
                        Running {
                            hash,
                            config,
                            started_ms: crate::host::clock::now_ms(),
                            stop,
                            task,
                        },
                    );
                }
                Err(e) => {
                    problems.push(format!("{name}: {e:#}"));
                    refused.insert(name, format!("{e:#}"));
                }
            }
        }
        match self.refusals.reconcile(&refused) {
            Ok(alarms) => self.send_in_order(alarms, events),
            Err(e) => tracing::error!("cannot record the refused modules' alarms: {e}"),
        }
        *lock(&self.refused) = refused;
        // A module no longer assigned is no longer quarantined either.
        lock(&self.quarantined).retain(|name, _| assigned.contains(name));
        if altered.is_empty() {
            self.reconcile_quarantine(events);
        } else {
            let me = self.clone();
            let found = tokio::task::spawn_blocking(move || {
                for (_, hash, _) in &altered {
                    me.forget_code(hash);
                }
                altered
            })
            .await
            .unwrap_or_default();
            self.quarantine(found, events);
        }
        problems
    }

    /// Deletes the bytes and compiled artefact of module `hash`, so that
    /// neither is used again and the node no longer claims that hash
    /// (its manager then sends the bytes with the next deployment).
    /// Blocking (file and database writes).
    fn forget_code(&self, hash: &str) {
        self.store.remove(hash);
        self.node.engine().remove_artefact(hash);
    }

    /// Re-hashes every module file held against its signed manifest and
    /// every compiled artefact against its recorded digest; deletes what
    /// fails and returns it as (module, hash, why). Blocking.
    fn check_all(&self) -> Vec<(String, String, String)> {
        let mut found = Vec::new();
        for hash in self.store.held() {
            let file = self.store.check(&hash);
            let artefact = self.node.engine().check_artefact(&hash);
            let reason = match (file, artefact) {
                (integrity::FileCheck::Bad(why), _) => why,
                (_, Artefact::Altered) => format!(
                    "its compiled artefact {hash}.cwasm was altered (SHA-256 differs from the one recorded when it was written)"
                ),
                _ => continue,
            };
            found.push(self.take_out(hash, reason));
        }
        found
    }

    /// Deletes the code of module `hash`, which failed a check for
    /// `reason`; returns (module, hash, why) for [`Self::quarantine`].
    /// Blocking.
    fn take_out(&self, hash: String, reason: String) -> (String, String, String) {
        let name = match self.store.manifest(&hash) {
            Ok(Some(b)) => b.manifest.name,
            _ => hash.clone(),
        };
        self.forget_code(&hash);
        (name, hash, reason)
    }

    /// Takes modules whose code failed a check out of service: stopped
    /// (their state kept for the good copy), not restarted, shown as
    /// quarantined, and `agad.module-tampered` raised for each.
    fn quarantine(&self, found: Vec<(String, String, String)>, events: &mpsc::Sender<Event>) {
        if found.is_empty() {
            return;
        }
        for (name, hash, reason) in found {
            tracing::error!(module = %name, %hash, "quarantined: {reason}");
            {
                let mut running = lock(&self.running);
                if running.get(&name).is_some_and(|r| r.hash == hash)
                    && let Some(r) = running.remove(&name)
                {
                    let _ = r.stop.send(true);
                }
            }
            lock(&self.quarantined).insert(name, (hash, reason));
        }
        self.reconcile_quarantine(events);
    }

    /// Raises and clears `agad.module-tampered` to match `quarantined`.
    fn reconcile_quarantine(&self, events: &mpsc::Sender<Event>) {
        let reasons: HashMap<String, String> = lock(&self.quarantined)
            .iter()
            .map(|(name, (_, reason))| (name.clone(), reason.clone()))
            .collect();
        match self.tampered.reconcile(&reasons) {
            Ok(alarms) => self.send_in_order(alarms, events),
            Err(e) => tracing::error!("cannot record the quarantined modules' alarms: {e}"),
        }
    }

    /// The answer to a manager's nonce: first a check (what fails is
    /// quarantined), then a proof for every module still held, of its
    /// bytes as read now.
    async fn attest(self: &Arc<Self>, nonce: Nonce, events: &mpsc::Sender<Event>) -> Attestation {
        let me = self.clone();
        let found = tokio::task::spawn_blocking(move || me.check_all())
            .await
            .unwrap_or_default();
        self.quarantine(found, events);
        let me = self.clone();
        let (modules, altered) = tokio::task::spawn_blocking(move || {
            let (mut modules, mut altered) = (Vec::new(), Vec::new());
            for hash in me.store.held() {
                let artefact = me.node.engine().check_artefact(&hash);
                match me.store.attest(&hash, &nonce, artefact) {
                    Ok(Some(module)) => modules.push(module),
                    Ok(None) => {}
                    // Altered since the check above: quarantined like it.
                    Err(why) => altered.push(me.take_out(hash, why)),
                }
            }
            modules.truncate(agad_protocol::attest::MAX_ATTESTED / 2);
            (modules, altered)
        })
        .await
        .unwrap_or_default();
        self.quarantine(altered, events);
        let quarantined = lock(&self.quarantined)
            .iter()
            .take(agad_protocol::attest::MAX_ATTESTED / 2)
            .map(|(name, (hash, reason))| Quarantine {
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

    /// Once the task of module `name` has ended, deletes its state (see
    /// [`Node::forget_state`]).
    fn forget_when_stopped(self: &Arc<Self>, name: String, task: JoinHandle<()>) {
        let me = self.clone();
        tokio::spawn(async move {
            let _ = task.await;
            let forgot =
                tokio::task::spawn_blocking(move || (me.node.forget_state(&name), name)).await;
            match forgot {
                Ok((Ok(keys), name)) => {
                    tracing::info!(module = %name, keys, "unassigned; its state deleted")
                }
                Ok((Err(e), name)) => {
                    tracing::error!(module = %name, "cannot delete the state of an unassigned module: {e}")
                }
                Err(e) => tracing::error!("state deletion task failed: {e}"),
            }
        });
    }

    /// Sends `alarms` after those of earlier deployments, from a task: the
    /// caller is the loop that drains `events`, so it must not wait on it.
    fn send_in_order(
        &self,
        alarms: Vec<agad_protocol::message::Alarm>,
        events: &mpsc::Sender<Event>,
    ) {
        if alarms.is_empty() {
            return;
        }
        let events = events.clone();
        let mut last = lock(&self.refusal_sender);
        let before = last.take();
        *last = Some(tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            for alarm in alarms {
                if events.send(Event::Alarm(alarm)).await.is_err() {
                    return;
                }
            }
        }));
    }

    /// The full bundle of a deployment: from the message, or from the local
    /// store when only the manifest came (the hash must match).
    fn bundle_for(&self, shipped: Bundle) -> anyhow::Result<Bundle> {
        let hash = shipped.manifest.sha256_hex();
        let name = &shipped.manifest.name;
        if shipped.has_bytes() {
            tracing::info!(module = %name, %hash, bytes = shipped.wasm.len(), "deployment with module bytes");
            // A manager that found this node's copy altered sends the bytes
            // again; a module still running from that hash keeps running,
            // and its file is put back.
            if self.store.restore(&hash, &shipped.wasm)? {
                tracing::warn!(module = %name, %hash, "module file put back from the manager's copy");
            }
            // Stored only once it verified and linked (in `start`), never
            // before; until then a run sent right after may need the bytes.
            self.keep_arriving(&shipped);
            return Ok(shipped);
        }
        let wasm = match self.store.get(&hash)? {
            Some(stored) => stored.wasm,
            None => match lock(&self.arriving).iter().find(|(h, _)| *h == hash) {
                Some((_, wasm)) => wasm.clone(),
                None => anyhow::bail!("manifest {hash} came without bytes and is not stored here"),
            },
        };
        tracing::info!(module = %name, %hash, "deployment by hash; bytes from the local store");
        Ok(Bundle { wasm, ..shipped })
    }

    /// Keeps the bytes `shipped` brings, if any, until they are stored
    /// (see [`Managed::arriving`]); nothing for a module stored already.
    fn keep_arriving(&self, shipped: &Bundle) {
        let hash = shipped.manifest.sha256_hex();
        if !shipped.has_bytes() || matches!(self.store.manifest(&hash), Ok(Some(_))) {
            return;
        }
        let mut arriving = lock(&self.arriving);
        arriving.retain(|(h, _)| *h != hash);
        arriving.push_back((hash, shipped.wasm.clone()));
        let mut total: usize = arriving.iter().map(|(_, w)| w.len()).sum();
        while total > ARRIVING_MAX_BYTES && arriving.len() > 1 {
            if let Some((_, oldest)) = arriving.pop_front() {
                total -= oldest.len();
            }
        }
    }

    /// Module `hash` is stored: the store serves its bytes from now on.
    fn stored(&self, hash: &str) {
        lock(&self.arriving).retain(|(h, _)| h != hash);
    }

    async fn start(
        self: &Arc<Self>,
        bundle: Bundle,
        config: Vec<(String, String)>,
        events: &mpsc::Sender<Event>,
    ) -> anyhow::Result<(watch::Sender<bool>, JoinHandle<()>)> {
        let me = self.clone();
        // Verifying and compiling are CPU work, storing is sled: both off
        // the runtime's threads.
        let module = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let module = me.node.load(&bundle)?;
            me.store.put(&bundle)?;
            me.stored(&bundle.manifest.sha256_hex());
            Ok(module)
        })
        .await??;
        let (stop, stopped) = watch::channel(false);
        let task = self
            .node
            .start_inspector(
                module,
                ModuleConfig { values: config },
                events.clone(),
                stopped,
            )
            .await?;
        Ok((stop, task))
    }

    /// Runs a specialist the manager asked for, once per run id, and queues
    /// its result; a second request for the same id is refused (and logged).
    async fn run_specialist(self: &Arc<Self>, request: RunRequest) {
        let name = request.module.manifest.name.clone();
        // The parent's words go into this node's log, its database and its
        // result: a run of an alarm that is not this node's would make a
        // result the parent refuses, at every resend.
        if agad_protocol::validate_module_name(&name).is_err() {
            tracing::warn!(
                specialist = %agad_protocol::text::excerpt(&name, 64),
                "refused a run whose module name is invalid"
            );
            return;
        }
        if let Err(e) = request.check_for(&self.node.settings().name) {
            tracing::warn!(
                id = %agad_protocol::text::excerpt(&request.id, agad_protocol::text::EXCERPT),
                specialist = %name,
                "refused a run that is not of one of this node's alarms: {e}"
            );
            return;
        }
        let permit = match self.runs.accept(&request.id, &name, &request.alarm).await {
            Ok(permit) => permit,
            Err(NotAccepted::Duplicate(id)) => {
                // Tests count these lines.
                tracing::warn!(%id, specialist = %name, "refused a second run of a specialist run id");
                return;
            }
            Err(e) => {
                tracing::warn!(id = %request.id, specialist = %name, "specialist run not accepted: {e}");
                return;
            }
        };
        let started_ms = crate::host::clock::now_ms();
        // Tests count these lines.
        tracing::info!(id = %request.id, specialist = %name, "specialist run accepted");
        let deadline = Duration::from_millis(request.deadline_ms.max(1));
        let provenance = Provenance::of(&request.module.manifest);
        let outcome = match tokio::time::timeout(deadline, self.specialist_outcome(&request)).await
        {
            Ok(outcome) => outcome,
            Err(_) => RunOutcome::TimedOut {
                reason: format!(
                    "not finished within the rule's deadline of {} ms",
                    request.deadline_ms
                ),
            },
        };
        drop(permit);
        let outcome = outcome.bounded();
        tracing::info!(id = %request.id, specialist = %name, outcome = %outcome.label(), "specialist run ended");
        let result = RunResult {
            id: request.id,
            node: self.node.settings().name.clone(),
            specialist: name,
            provenance,
            outcome,
            started_ms,
            finished_ms: crate::host::clock::now_ms(),
            alarm: request.alarm,
        };
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.runs.finished(result)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot queue a specialist result: {e}"),
            Err(e) => tracing::error!("specialist result task failed: {e}"),
        }
    }

    /// Loads (or reuses) the specialist and runs it once.
    async fn specialist_outcome(self: &Arc<Self>, request: &RunRequest) -> RunOutcome {
        let hash = request.module.manifest.sha256_hex();
        let cached = self.runs.cached(&hash);
        let warm = cached.is_some();
        let module = match cached {
            Some(module) => module,
            None => {
                let me = self.clone();
                let shipped = request.module.clone();
                let loaded = tokio::task::spawn_blocking(move || -> Result<_, RunOutcome> {
                    let failed = |reason: String| RunOutcome::Failed { reason };
                    let bundle = me
                        .bundle_for(shipped)
                        .map_err(|e| failed(format!("{e:#}")))?;
                    let module = me.node.load(&bundle).map_err(|e| match e {
                        // The node's own rules: its policy, its keys.
                        LoadError::Trust(TrustError::Rollback { .. }) => failed(e.to_string()),
                        LoadError::Trust(_)
                        | LoadError::Link(crate::LinkError::DeniedByPolicy { .. }) => {
                            RunOutcome::Refused {
                                reason: e.to_string(),
                            }
                        }
                        other => failed(other.to_string()),
                    })?;
                    me.store
                        .put(&bundle)
                        .map_err(|e| failed(format!("{e:#}")))?;
                    me.stored(&bundle.manifest.sha256_hex());
                    Ok(module)
                })
                .await;
                match loaded {
                    Ok(Ok(module)) => {
                        self.runs.cache(hash, module.clone());
                        module
                    }
                    Ok(Err(outcome)) => return outcome,
                    Err(e) => {
                        return RunOutcome::Failed {
                            reason: format!("loading task failed: {e}"),
                        };
                    }
                }
            }
        };
        // Benchmarks time the dispatch up to this line.
        tracing::info!(id = %request.id, warm, "specialist run starting");
        match self.node.run_specialist(&module, &request.args).await {
            Ok(Ok(d)) => RunOutcome::Diagnosed {
                summary: d.summary,
                facts: d.facts,
            },
            // The specialist's own words for a refusal by the node's policy.
            Ok(Err(reason)) if reason.starts_with("refused:") => RunOutcome::Refused { reason },
            Ok(Err(reason)) => RunOutcome::Failed { reason },
            Err(Fault {
                kind: FaultKind::Timeout,
                message,
            }) => RunOutcome::TimedOut { reason: message },
            Err(Fault { kind, message }) => RunOutcome::Failed {
                reason: format!("{kind:?}: {message}"),
            },
        }
    }

    fn stop_all(&self) {
        for (_, r) in lock(&self.running).drain() {
            let _ = r.stop.send(true);
        }
    }

    /// Stops every module and deletes its state, as an unassignment does.
    fn undeploy_all(self: &Arc<Self>) {
        let stopped: Vec<(String, Running)> = lock(&self.running).drain().collect();
        for (name, r) in stopped {
            let _ = r.stop.send(true);
            self.forget_when_stopped(name, r.task);
        }
        lock(&self.refused).clear();
    }
}

/// Every [`integrity::IntegrityPolicy::check_every`], re-hashes what the
/// node holds and quarantines what fails.
async fn check_periodically(
    managed: Arc<Managed>,
    events: mpsc::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = managed.node.settings().integrity.check_every;
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let me = managed.clone();
        match tokio::task::spawn_blocking(move || me.check_all()).await {
            Ok(found) => managed.quarantine(found, &events),
            Err(e) => tracing::error!("integrity check task failed: {e}"),
        }
    }
}

/// Where a redirect sent this node, kept in its database: used instead of
/// the configured parents for as long as the configuration names the same
/// parents it did then (an operator who changes them is obeyed).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Redirected {
    domain: String,
    parents: Vec<String>,
    /// The configured parents when the redirect came.
    configured: Vec<String>,
}

const REDIRECTED: &[u8] = b"redirected";

/// The parents to connect to: the configured ones, or those of the last
/// redirect if the configuration has not changed since.
fn parents(meta: &agad_storage::Tree, configured: &[String]) -> Vec<String> {
    let stored = meta.get(REDIRECTED).ok().flatten().and_then(|bytes| {
        agad_protocol::wire::decode_value::<Redirected>(&bytes)
            .map_err(|e| tracing::error!("unreadable redirect in the node's database: {e}"))
            .ok()
    });
    match stored {
        Some(r) if r.configured == configured => {
            tracing::info!(domain = %r.domain, parents = ?r.parents, "parents from the last redirect (the configured ones are unchanged)");
            r.parents
        }
        Some(_) => {
            tracing::info!("the configured parents changed since the last redirect: using them");
            configured.to_vec()
        }
        None => configured.to_vec(),
    }
}

/// Runs `node` under the managers of `uplink` until `shutdown`.
pub async fn run(
    node: Node,
    mut uplink: UplinkConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let db = node.database().clone();
    let meta = db.tree("link")?;
    let configured = uplink.parents.clone();
    uplink.parents = parents(&meta, &configured);
    let outbox = Outbox::open(&db)?;
    let reserve = node.reserve();
    let Some(data_dir) = node.data_dir() else {
        anyhow::bail!("a managed node needs a data directory (Node::open)");
    };
    let store = ModuleStore::open(&data_dir.join("modules"), db.tree("bundles")?)?;
    let managed = Arc::new(Managed {
        store,
        quarantined: Mutex::default(),
        arriving: Mutex::default(),
        tampered: RefusalAlarms::open_as(&node.settings().name, &db, &integrity::TAMPERED)?,
        refusals: RefusalAlarms::open(&node.settings().name, &db)?,
        refusal_sender: Mutex::default(),
        fence: Fence::open(&db)?,
        runs: Runs::open(&node.settings().name, &db, outbox.clone())?,
        node,
        running: Mutex::default(),
        faults: Mutex::default(),
        refused: Mutex::default(),
        shown: Mutex::default(),
    });
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    let _disk = managed.node.watch_disk(events_tx.clone(), shutdown.clone());
    let checks = tokio::spawn(check_periodically(
        managed.clone(),
        events_tx.clone(),
        shutdown.clone(),
    ));
    let (down_tx, mut down) = mpsc::channel(16);
    let (up_tx, up_rx) = mpsc::channel(16);
    let link = tokio::spawn(uplink::run(
        uplink,
        outbox.clone(),
        managed.clone(),
        down_tx,
        up_rx,
        shutdown.clone(),
    ));
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let body = match event {
                    Event::Alarm(a) => Upward::Alarm(a),
                    Event::Report(r) => Upward::NodeReport(r),
                    Event::Fault(f) => {
                        let message = format!("{:?}: {}", f.kind, f.message);
                        lock(&managed.faults).insert(f.module.clone(), (message, Instant::now(), f.time_ms));
                        continue;
                    }
                };
                let outbox = outbox.clone();
                // sled flushes synchronously.
                let label = match &body {
                    Upward::Alarm(a) => Ok(a.id.clone()),
                    Upward::NodeReport(r) => Err((r.module.clone(), r.time_ms)),
                    _ => Err((String::new(), 0)),
                };
                let reserve = reserve.clone();
                let pushed = tokio::task::spawn_blocking(move || {
                    outbox.push(&body).or_else(|e| {
                        // Most likely a full disk: the reserve is there for
                        // exactly this; the disk watcher remakes it later.
                        tracing::error!("cannot queue for the manager ({e}); releasing the disk reserve");
                        match reserve {
                            Some(r) if r.release() => outbox.push(&body),
                            _ => Err(e),
                        }
                    })
                });
                match pushed.await {
                    // Tests count these lines: logged only once the alarm is on disk.
                    Ok(Ok(seq)) => match label {
                        Ok(id) => tracing::info!(%id, seq, "alarm queued"),
                        Err((module, time_ms)) => tracing::debug!(%module, time_ms, seq, "report queued"),
                    },
                    Ok(Err(e)) => tracing::error!("cannot queue for the manager: {e}"),
                    Err(e) => tracing::error!("outbox task failed: {e}"),
                }
            }
            down_event = down.recv() => match down_event {
                Some(Downlink::Control(Control::Deploy { version, modules })) => {
                    let problems = managed.deploy(modules, &events_tx).await;
                    // Compiling freed megabytes the allocator would keep.
                    crate::heap::trim();
                    for p in &problems {
                        tracing::warn!("deployment {version}: {p}");
                    }
                    let _ = up_tx.send(Control::DeployAck { version, problems }).await;
                }
                Some(Downlink::Control(Control::Run(request))) => {
                    // Kept before the run is spawned, in the order the runs
                    // came: the next one may come without these bytes and
                    // start first.
                    managed.keep_arriving(&request.module);
                    let managed = managed.clone();
                    tokio::spawn(async move { managed.run_specialist(*request).await });
                }
                Some(Downlink::Control(Control::Attest { nonce })) => {
                    // Answered from a task: hashing every module must not
                    // hold up the outbox.
                    let (managed, events_tx, up_tx) = (managed.clone(), events_tx.clone(), up_tx.clone());
                    tokio::spawn(async move {
                        let answer = managed.attest(nonce, &events_tx).await;
                        tracing::info!(modules = answer.modules.len(), quarantined = answer.quarantined.len(), "attestation answered");
                        let _ = up_tx.send(Control::Attestation(Box::new(answer))).await;
                    });
                }
                Some(Downlink::Control(other)) => tracing::debug!(kind = agad_protocol::wire::Message::Control(other).kind(), "ignored from manager"),
                Some(Downlink::NotAdmitted { enrollment, reason }) => {
                    tracing::warn!(?enrollment, "manager has not admitted this node: {reason}");
                }
                Some(Downlink::Connected { parent, address }) => {
                    tracing::info!(manager = %parent.name, %address, "connected");
                }
                Some(Downlink::Disconnected { reason }) => {
                    tracing::info!("manager link down ({reason}); inspecting and buffering ({} queued)", outbox.len());
                }
                Some(Downlink::Redirected { domain, parents }) => {
                    // What was queued goes to the new domain's manager. The
                    // modules stop and forget their state: the top manager
                    // closed their alarms, and the new domain deploys its own.
                    let redirect = Redirected { domain, parents, configured: configured.clone() };
                    if let Err(e) = meta.insert(REDIRECTED, &agad_protocol::wire::encode_value(&redirect)).and_then(|()| db.flush()) {
                        tracing::error!("cannot remember the redirect: {e}");
                    }
                    tracing::warn!(domain = %redirect.domain, parents = ?redirect.parents, "moved to another domain: modules stopped until its manager deploys");
                    managed.undeploy_all();
                }
                None => break,
            },
            _ = shutdown.changed() => break,
        }
    }
    managed.stop_all();
    checks.abort();
    let _ = link.await;
    db.flush()?;
    managed.node.state_database().flush()?;
    Ok(())
}
