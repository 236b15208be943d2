//! A node: trusted keys, the engine, the database, and one supervisor task
//! per running inspector (ticked on its period, restarted with back-off).

use crate::bindings::types as wit;
use crate::budget::{self, Notice, OutputBudget, OutputLimits};
use crate::crashloop::{self, Change, CrashLoop, CrashLoopPolicy};
use crate::disk::{DiskPolicy, LowDisk, Reserve, available_bytes};
use crate::engine::{LinkError, LinkedModule, ModuleEngine};
use crate::host::HostState;
use crate::host::blocking::HostPool;
use crate::host::clock::now_ms;
use crate::host::policy::HostPolicy;
use crate::host::snmp::{AgentConfig, SnmpClient};
use crate::host::state::ModuleState;
use crate::instance::{Fault, InitError, InspectorInstance};
use crate::refusals::RefusalAlarms;
use crate::trust::{TrustError, TrustStore};
use agad_protocol::message::{
    Alarm, Comparison, FaultKind, ModuleFault, Provenance, RUNTIME_MODULE, Report, RuntimeAlarm,
    Severity, Summary,
};
use agad_protocol::{Bundle, Capability, Kind, Limits, PublicKey};
use agad_storage::{Database, Tree};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("module `{module}` is a {kind:?}, not an inspector")]
    NotAnInspector { module: String, kind: Kind },
    // Not a `source`: the message already holds it, and `{:#}` would
    // print it a second time.
    #[error("module `{module}`: {error}")]
    Init { module: String, error: InitError },
    #[error("module `{module}`: bad `period` value `{value}` (use e.g. 500ms, 10s, 1m)")]
    BadPeriod { module: String, value: String },
    #[error(transparent)]
    Storage(#[from] agad_storage::StorageError),
    #[error("cannot start the module engine: {0:#}")]
    Engine(anyhow::Error),
}

/// Restart back-off after a module fails: doubles from `initial` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// How a node runs modules.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Stable name of this node; prefixes alarm ids.
    pub name: String,
    /// SNMP agents modules may query; the first is the default.
    pub agents: Arc<[AgentConfig]>,
    /// Capabilities this node grants at most (its policy).
    pub policy: Vec<Capability>,
    /// What `disk` may measure and `service` may restart (nothing by
    /// default), for the modules granted those capabilities.
    pub host_policy: Arc<HostPolicy>,
    /// Tick period for modules whose config sets no `period`.
    pub default_period: Duration,
    pub restart: RestartPolicy,
    /// The most any manifest is granted.
    pub ceilings: Ceilings,
    /// What each module may send upward.
    pub output: OutputLimits,
    /// The disk reserve and the low-disk alarm.
    pub disk: DiskPolicy,
    /// When a module restarting again and again raises an alarm.
    pub crash_loop: CrashLoopPolicy,
    /// How often a managed node re-hashes its module files and artefacts.
    pub integrity: crate::integrity::IntegrityPolicy,
}

/// The node's ceilings on the limits a manifest asks for.
///
/// A manifest asking for more than a ceiling is **granted the ceiling**, not
/// refused: a module is signed once and runs on many nodes, and each node's
/// operator decides what any module may take there. The node logs a warning
/// naming the module, what it asked and what it got; a module that really
/// needs more then fails with a memory-limit or timeout fault, reported
/// upward like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceilings {
    /// Most linear memory one module instance may have, in bytes.
    pub max_memory_bytes: u64,
    /// Longest one call into a module may take, in milliseconds.
    pub max_time_per_call_ms: u64,
    /// Largest `state` quota one module may have on this node, in bytes.
    pub max_state_bytes: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings {
            max_memory_bytes: 256 * 1024 * 1024,
            max_time_per_call_ms: 60_000,
            max_state_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Ceilings {
    /// The limits a manifest asking for `asked` runs under.
    pub fn grant(&self, asked: Limits) -> Limits {
        Limits {
            max_memory_bytes: asked.max_memory_bytes.min(self.max_memory_bytes),
            max_time_per_call_ms: asked.max_time_per_call_ms.min(self.max_time_per_call_ms),
            max_state_bytes: asked.max_state_bytes.min(self.max_state_bytes),
        }
    }
}

/// Everything a node emits; `agad node run` prints each as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    Alarm(Alarm),
    Report(Report),
    Fault(ModuleFault),
}

/// A module's deployment settings: config handed to `init`, plus the period.
#[derive(Debug, Clone, Default)]
pub struct ModuleConfig {
    pub values: Vec<(String, String)>,
}

impl ModuleConfig {
    /// The reserved `period` key, read by the runtime (the module sees it too).
    fn period(&self, module: &str, default: Duration) -> Result<Duration, LoadError> {
        match self.values.iter().rev().find(|(k, _)| k == "period") {
            None => Ok(default),
            Some((_, v)) => {
                parse_duration(v)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| LoadError::BadPeriod {
                        module: module.to_owned(),
                        value: v.clone(),
                    })
            }
        }
    }
}

pub use agad_protocol::parse_duration;

pub struct Node {
    settings: NodeSettings,
    engine: ModuleEngine,
    trust: TrustStore,
    db: Database,
    /// Modules' state: a database of its own (when opened from a data
    /// directory), so the outbox never shares one with what modules write.
    state_db: Database,
    state: Tree,
    /// The node-wide bound on blocking host calls ([`HostPool`]).
    host_threads: Arc<Semaphore>,
    data_dir: Option<PathBuf>,
    reserve: Option<Arc<Reserve>>,
    /// Modules with `agad.module-crash-loop` raised.
    crash_alarms: Arc<RefusalAlarms>,
}

impl Node {
    /// Opens the node's databases (its own: outbox, bundles, accepted
    /// modules; and the modules' state) and compiled-module cache under
    /// `data_dir`. On a full disk the disk reserve is given back first, so
    /// that the databases open and the node starts.
    pub fn open(
        settings: NodeSettings,
        trusted: Vec<PublicKey>,
        data_dir: &Path,
    ) -> Result<Node, LoadError> {
        let reserve = Reserve::new(data_dir, settings.disk.reserve_bytes);
        if reserve.is_held()
            && available_bytes(data_dir).is_none_or(|free| free < settings.disk.reserve_bytes)
        {
            tracing::warn!(data_dir = %data_dir.display(), "the disk is full; starting on the reserve");
            reserve.release();
        }
        let db = Database::open(&data_dir.join("db"))?;
        let state_db = Database::open(&data_dir.join("state"))?;
        migrate_state(&db, &state_db)?;
        let engine = ModuleEngine::new(Some(&data_dir.join("compiled")))
            .map_err(LoadError::Engine)?
            .with_digests(db.tree("compiled-digests")?);
        reserve.ensure();
        let mut node = Node::with_parts(settings, trusted, db, engine)?;
        node.state = state_db.tree("module-state")?;
        node.state_db = state_db;
        node.data_dir = Some(data_dir.to_path_buf());
        node.reserve = Some(Arc::new(reserve));
        Ok(node)
    }

    /// Compiles modules in `helper`'s process ([`crate::compiler`]).
    pub fn set_compile_helper(&mut self, helper: crate::CompileHelper) {
        self.engine.set_compile_helper(helper);
    }

    pub fn with_parts(
        settings: NodeSettings,
        trusted: Vec<PublicKey>,
        db: Database,
        engine: ModuleEngine,
    ) -> Result<Node, LoadError> {
        let trust = TrustStore::new(trusted, db.tree("accepted-modules")?);
        let state = db.tree("module-state")?;
        let crash_alarms = Arc::new(RefusalAlarms::open_as(
            &settings.name,
            &db,
            &crashloop::CRASH_LOOP,
        )?);
        Ok(Node {
            crash_alarms,
            settings,
            engine,
            trust,
            state_db: db.clone(),
            db,
            state,
            host_threads: HostPool::node_limit(HostPool::DEFAULT_THREADS),
            data_dir: None,
            reserve: None,
        })
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    pub fn engine(&self) -> &ModuleEngine {
        &self.engine
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Where modules' state lives (tree `module-state`).
    /// Where the node keeps its files, when opened from a data directory.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    pub fn state_database(&self) -> &Database {
        &self.state_db
    }

    /// Deletes what `module` kept in its state: a module unassigned from
    /// this node (or a node that moved to another domain) starts afresh
    /// if it comes back, rather than believing the alarms it had raised
    /// are still raised (the top manager closed them).
    pub fn forget_state(&self, module: &str) -> Result<usize, agad_storage::StorageError> {
        let keys = self
            .state
            .scan_prefix(&crate::host::state::key_prefix(module))?;
        for (key, _) in &keys {
            self.state.remove(key)?;
        }
        self.state_db.flush()?;
        Ok(keys.len())
    }

    /// The disk reserve, when the node was opened from a data directory.
    pub fn reserve(&self) -> Option<Arc<Reserve>> {
        self.reserve.clone()
    }

    /// Every [`DiskPolicy::check_every`], looks at the data directory's
    /// filesystem: raises `agad.disk-low` (an alarm of the node's own
    /// module `agad`) when it runs low and clears it when there is room
    /// again, and remakes the reserve once there is room for it. `None`
    /// for a node without a data directory.
    pub fn watch_disk(
        &self,
        events: mpsc::Sender<Event>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        let dir = self.data_dir.clone()?;
        let reserve = self.reserve.clone()?;
        let policy = self.settings.disk;
        let node = self.settings.name.clone();
        let db = self.db.clone();
        Some(tokio::spawn(async move {
            let mut low = LowDisk::default();
            let mut every = tokio::time::interval(policy.check_every);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let (dir_, reserve_) = (dir.clone(), reserve.clone());
                let looked = tokio::task::spawn_blocking(move || {
                    let available = available_bytes(&dir_);
                    reserve_.ensure();
                    available
                })
                .await;
                let Ok(Some(available)) = looked else {
                    continue;
                };
                let Some(raised) = low.update(available, &policy) else {
                    continue;
                };
                let time_ms = now_ms();
                let serial = match db.next_id() {
                    Ok(n) => n.to_string(),
                    Err(_) => format!("t{time_ms}"),
                };
                let message = if raised {
                    format!(
                        "{available} bytes left on the filesystem of {} (alarm below {})",
                        dir.display(),
                        policy.low_free_bytes
                    )
                } else {
                    format!(
                        "{available} bytes available again on the filesystem of {}",
                        dir.display()
                    )
                };
                tracing::warn!(available, raised, "{message}");
                let subject = dir.display().to_string();
                let alarm = RuntimeAlarm {
                    node: &node,
                    module: RUNTIME_MODULE,
                    serial: &serial,
                    area: agad_protocol::Area::Fault,
                    key: "agad.disk-low",
                    metric: "fs.available-bytes",
                    subject: &subject,
                    severity: Severity::Major,
                    message: &message,
                    time_ms,
                }
                .alarm(raised)
                .measuring(
                    available as f64,
                    policy.low_free_bytes as f64,
                    Comparison::Below,
                );
                if events.send(Event::Alarm(alarm)).await.is_err() {
                    return;
                }
            }
        }))
    }

    /// Verifies (signature, hash, expiry, rollback), compiles and links a bundle.
    pub fn load(&self, bundle: &Bundle) -> Result<LinkedModule, LoadError> {
        self.trust.admit(bundle, now_ms() / 1000)?;
        let component = self.engine.compile(bundle)?;
        let manifest = Arc::new(bundle.manifest.clone());
        let mut linked = self
            .engine
            .link(manifest, &component, &self.settings.policy)?;
        let asked = linked.manifest.limits;
        linked.limits = self.settings.ceilings.grant(asked);
        if linked.limits != asked {
            tracing::warn!(
                module = %linked.manifest.name,
                asked_memory_bytes = asked.max_memory_bytes,
                asked_time_per_call_ms = asked.max_time_per_call_ms,
                granted_memory_bytes = linked.limits.max_memory_bytes,
                granted_time_per_call_ms = linked.limits.max_time_per_call_ms,
                asked_state_bytes = asked.max_state_bytes,
                granted_state_bytes = linked.limits.max_state_bytes,
                "manifest asks for more than this node's ceilings; granted the ceilings"
            );
        }
        Ok(linked)
    }

    /// A configured instance of `module`, outside any supervisor (for
    /// tools and benchmarks that drive ticks themselves).
    pub async fn instantiate(
        &self,
        module: &LinkedModule,
        config: &ModuleConfig,
    ) -> Result<InspectorInstance, InitError> {
        self.factory(module.clone())
            .configured(&config.values)
            .await
    }

    fn factory(&self, module: LinkedModule) -> InstanceFactory {
        InstanceFactory {
            module,
            snmp_agents: self.settings.agents.clone(),
            host_policy: self.settings.host_policy.clone(),
            state: self.state.clone(),
            pool: HostPool::for_module(self.host_threads.clone()),
        }
    }

    /// Runs a specialist once with `args`, under its manifest's limits (as
    /// granted by this node's ceilings) and with the node's host policy
    /// (what `disk` may measure, which services `service` may restart):
    /// `Ok(Err(reason))` is the specialist's own failure (the built-in
    /// ones start a refusal by the node's policy with `refused:`), `Err` a
    /// fault (timeout, memory, trap).
    pub async fn run_specialist(
        &self,
        module: &LinkedModule,
        args: &[(String, String)],
    ) -> Result<Result<wit::Diagnosis, String>, Fault> {
        let m = &module.manifest;
        if m.kind != Kind::Specialist {
            return Err(Fault {
                kind: FaultKind::Trap,
                message: format!("{} is a {:?}, not a specialist", m.name, m.kind),
            });
        }
        let host = self.factory(module.clone()).host();
        crate::SpecialistInstance::new(module, host)
            .await?
            .run(args)
            .await
    }

    /// Instantiates and configures an inspector now (so a refused config is
    /// an error here), then keeps it ticking on its period until `shutdown`.
    pub async fn start_inspector(
        &self,
        module: LinkedModule,
        config: ModuleConfig,
        events: mpsc::Sender<Event>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<JoinHandle<()>, LoadError> {
        let name = module.manifest.name.clone();
        if module.manifest.kind != Kind::Inspector {
            return Err(LoadError::NotAnInspector {
                module: name,
                kind: module.manifest.kind,
            });
        }
        let period = config.period(&name, self.settings.default_period)?;
        let factory = self.factory(module);
        let first = factory
            .configured(&config.values)
            .await
            .map_err(|error| LoadError::Init {
                module: name.clone(),
                error,
            })?;
        let supervisor = Supervisor {
            budget: Mutex::new(OutputBudget::new(self.settings.output, Instant::now())),
            state_nearly_full: Mutex::new(false),
            node: self.settings.name.clone(),
            factory,
            config,
            period,
            restart: self.settings.restart,
            crash_loop: Mutex::new(CrashLoop::new(
                self.settings.crash_loop,
                self.crash_alarms.is_raised(&name),
                Instant::now(),
            )),
            crash_alarms: self.crash_alarms.clone(),
            db: self.db.clone(),
            events,
        };
        Ok(tokio::spawn(supervisor.run(first, shutdown)))
    }
}

/// Moves modules' state out of the node's own database, where versions
/// before the state database kept it. Done once: the old tree is emptied.
fn migrate_state(db: &Database, state_db: &Database) -> Result<(), LoadError> {
    let old = db.tree("module-state")?;
    if old.is_empty() {
        return Ok(());
    }
    let new = state_db.tree("module-state")?;
    for (key, value) in old.scan_prefix(b"")? {
        if new.get(&key)?.is_none() {
            new.insert(&key, &value)?;
        }
    }
    new.flush()?;
    for (key, _) in old.scan_prefix(b"")? {
        old.remove(&key)?;
    }
    tracing::info!("moved modules' state into its own database");
    Ok(())
}

/// Makes fresh, configured instances of one module.
struct InstanceFactory {
    module: LinkedModule,
    snmp_agents: Arc<[AgentConfig]>,
    host_policy: Arc<HostPolicy>,
    state: Tree,
    /// Shared by every instance of the module, across restarts.
    pool: HostPool,
}

impl InstanceFactory {
    /// The host capabilities one instance of the module sees.
    fn host(&self) -> HostState {
        let m = &self.module.manifest;
        HostState::with_pool(
            &m.name,
            SnmpClient::new(self.snmp_agents.clone()),
            ModuleState::new(self.state.clone(), &m.name)
                .with_quota(self.module.limits.max_state_bytes),
            self.module.limits.max_memory_bytes,
            self.pool.clone(),
        )
        .with_policy(&m.name, self.host_policy.clone(), self.pool.clone())
    }

    async fn configured(
        &self,
        config: &[(String, String)],
    ) -> Result<InspectorInstance, InitError> {
        let mut instance = InspectorInstance::new(&self.module, self.host()).await?;
        instance.init(config).await?;
        Ok(instance)
    }

    /// After a failure, a refused configuration is one more fault to retry.
    async fn restarted(&self, config: &[(String, String)]) -> Result<InspectorInstance, Fault> {
        self.configured(config).await.map_err(|e| match e {
            InitError::Fault(f) => f,
            InitError::Config(reason) => Fault {
                kind: FaultKind::InitFailed,
                message: reason,
            },
        })
    }
}

/// How long from `now_ms` (wall clock) to the next tick of a module with
/// `period` on node `node`. Every module of a node with the same period
/// ticks at the same instants, at a fixed offset (from the node's name)
/// past whole multiples of the period: the windows of all its modules end
/// on the same tick, so their reports leave together in one record, while
/// the nodes of a domain spread over the period rather than all reporting
/// in the same second.
fn to_grid(now_ms: u64, period: Duration, node: &str) -> Duration {
    let period_ms = (period.as_millis() as u64).max(1);
    // FNV-1a: stable across runs and builds (std's hasher is not).
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // Kept off the period's own multiples: a tick a millisecond before a
    // window's end (the monotonic and wall clocks drift apart a little)
    // would leave that window to the next tick.
    let margin = period_ms / 20;
    let offset = margin + hash % (period_ms - 2 * margin).max(1);
    let into = (now_ms + period_ms - offset) % period_ms;
    Duration::from_millis(period_ms - into)
}

struct Supervisor {
    node: String,
    factory: InstanceFactory,
    config: ModuleConfig,
    period: Duration,
    restart: RestartPolicy,
    db: Database,
    events: mpsc::Sender<Event>,
    /// What this module may still send upward (kept across restarts).
    budget: Mutex<OutputBudget>,
    /// Whether `agad.state-quota` is raised for this module.
    state_nearly_full: Mutex<bool>,
    /// Its restarts, for `agad.module-crash-loop`.
    crash_loop: Mutex<CrashLoop>,
    crash_alarms: Arc<RefusalAlarms>,
}

/// Share of its state quota at which a module's `agad.state-quota` alarm
/// is raised, and below which it clears (percent).
const STATE_ALARM_AT_PERCENT: u128 = 90;
const STATE_CLEAR_BELOW_PERCENT: u128 = 80;

/// Clean ticks after which a module counts as healthy again.
const HEALTHY_AFTER_TICKS: u32 = 3;

impl Supervisor {
    async fn run(self, first: InspectorInstance, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut instance = Some(first);
        let mut failures = 0u32;
        let mut backoff = this.restart.initial;
        loop {
            let current = match instance.take() {
                Some(i) => i,
                None => {
                    let restarted = tokio::select! {
                        r = this.factory.restarted(&this.config.values) => r,
                        _ = shutdown.changed() => return,
                    };
                    match restarted {
                        Ok(i) => i,
                        Err(fault) => {
                            failures += 1;
                            if !this
                                .pause_after(fault, failures, &mut backoff, &mut shutdown)
                                .await
                            {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            match this
                .tick_until_fault(current, &mut failures, &mut shutdown)
                .await
            {
                None => return,
                Some(fault) => {
                    // Healthy ticks reset the count: this failure starts a
                    // new streak, so it waits the shortest back-off again.
                    if failures == 0 {
                        backoff = this.restart.initial;
                    }
                    failures += 1;
                    if !this
                        .pause_after(fault, failures, &mut backoff, &mut shutdown)
                        .await
                    {
                        return;
                    }
                }
            }
        }
    }

    fn module(&self) -> &str {
        &self.factory.module.manifest.name
    }

    /// Ticks on the period; returns the fault that ended the instance, or
    /// `None` on shutdown.
    async fn tick_until_fault(
        self: &Arc<Self>,
        mut instance: InspectorInstance,
        failures: &mut u32,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Fault> {
        // The first tick at once, the next ones on the node's grid (see
        // `to_grid`): a late tick skips rather than shifts the grid.
        let mut first = true;
        let mut interval = tokio::time::interval_at(
            tokio::time::Instant::now() + to_grid(now_ms(), self.period, &self.node),
            self.period,
        );
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut clean = 0u32;
        loop {
            if !std::mem::take(&mut first) {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = shutdown.changed() => return None,
                }
            }
            // The tick is bounded by the module's deadline; shutdown does
            // not wait for it.
            let result = tokio::select! {
                r = instance.tick() => r,
                _ = shutdown.changed() => return None,
            };
            match result {
                Ok(output) => {
                    let usage = instance.host().state.peek(|s| s.usage()).flatten();
                    self.emit(output).await;
                    if let Some((used, quota)) = usage {
                        self.watch_state(used, quota).await;
                    }
                    clean += 1;
                    if clean >= HEALTHY_AFTER_TICKS {
                        *failures = 0;
                    }
                    let change = lock(&self.crash_loop).ticked(Instant::now());
                    self.crash_loop_changed(change).await;
                }
                Err(fault) => return Some(fault),
            }
        }
    }

    /// Reports the fault and waits the back-off; false on shutdown.
    async fn pause_after(
        &self,
        fault: Fault,
        failures: u32,
        backoff: &mut Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let wait = *backoff;
        tracing::warn!(module = %self.module(), kind = ?fault.kind, restart_in_ms = wait.as_millis() as u64, "{}", fault.message);
        let event = Event::Fault(ModuleFault {
            node: self.node.clone(),
            module: self.module().to_owned(),
            kind: fault.kind,
            message: fault.message,
            consecutive: failures,
            restart_in_ms: wait.as_millis() as u64,
            time_ms: now_ms(),
        });
        if self.events.send(event).await.is_err() {
            return false;
        }
        let change = lock(&self.crash_loop).restarted(Instant::now());
        self.crash_loop_changed(change).await;
        *backoff = (*backoff * 2).min(self.restart.max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.changed() => false,
        }
    }

    /// Sends what the module emitted, within its budget; then the notice
    /// about what the budget dropped, if one is due.
    async fn emit(&self, output: wit::Output) {
        let time_ms = now_ms();
        let now = Instant::now();
        let manifest = &self.factory.module.manifest;
        // Decided first and all at once: the lock is never held across a
        // send, and a flood costs one pass over the list, nothing more.
        let (alarms, report, notice) = {
            let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
            let alarms: Vec<wit::Alarm> = output
                .alarms
                .into_iter()
                .filter(|a| budget.admit_alarm(alarm_bytes(a), now))
                .collect();
            let report = (!output.summaries.is_empty()
                && budget.admit_report(report_bytes(&output.summaries), now))
            .then_some(output.summaries);
            let notice = budget.notice(now).map(|n| (n, *budget.limits()));
            (alarms, report, notice)
        };
        for alarm in alarms {
            let alarm = Alarm {
                id: self.next_alarm_id(time_ms),
                node: self.node.clone(),
                module: manifest.name.clone(),
                provenance: Provenance::of(manifest),
                area: manifest.area,
                key: alarm.key,
                metric: alarm.metric,
                subject: alarm.subject,
                severity: severity(alarm.severity),
                raised: alarm.raised,
                value: alarm.value,
                threshold: alarm.threshold,
                comparison: comparison(alarm.comparison),
                message: alarm.message,
                time_ms,
            };
            let _ = self.events.send(Event::Alarm(alarm)).await;
        }
        if let Some(summaries) = report {
            let report = Report {
                node: self.node.clone(),
                module: manifest.name.clone(),
                provenance: Provenance::of(manifest),
                area: manifest.area,
                summaries: summaries.into_iter().map(summary).collect(),
                time_ms,
            };
            let _ = self.events.send(Event::Report(report)).await;
        }
        if let Some((notice, limits)) = notice {
            let (raised, dropped) = match notice {
                Notice::Raise(d) => (true, d),
                Notice::Clear(d) => (false, d),
            };
            let message = if raised {
                format!(
                    "module output over this node's budget is being dropped: {}",
                    dropped.describe(&limits)
                )
            } else {
                format!(
                    "module output back within budget; dropped in all: {}",
                    dropped.describe(&limits)
                )
            };
            tracing::warn!(module = %manifest.name, dropped = dropped.total(), raised, "{message}");
            let alarm = Alarm {
                id: self.next_alarm_id(time_ms),
                node: self.node.clone(),
                module: manifest.name.clone(),
                provenance: Provenance::of(manifest),
                area: manifest.area,
                key: budget::NOTICE_KEY.to_owned(),
                metric: budget::NOTICE_METRIC.to_owned(),
                subject: String::new(),
                severity: Severity::Warning,
                raised,
                value: dropped.total() as f64,
                threshold: 0.0,
                comparison: Comparison::Above,
                message,
                time_ms,
            };
            let _ = self.events.send(Event::Alarm(alarm)).await;
        }
    }

    /// Raises `agad.state-quota` (an alarm of this module, from the node)
    /// when the module's state nears its quota, and clears it once there is
    /// room again; so an operator hears of it before the module's writes
    /// start failing.
    async fn watch_state(&self, used: u64, quota: u64) {
        let percent = u128::from(used) * 100 / u128::from(quota.max(1));
        let change = {
            let mut raised = self
                .state_nearly_full
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !*raised && percent >= STATE_ALARM_AT_PERCENT {
                *raised = true;
                Some(true)
            } else if *raised && percent < STATE_CLEAR_BELOW_PERCENT {
                *raised = false;
                Some(false)
            } else {
                None
            }
        };
        let Some(raised) = change else { return };
        let manifest = &self.factory.module.manifest;
        let time_ms = now_ms();
        let message = format!("state holds {used} of its {quota}-byte quota ({percent}%)");
        tracing::warn!(module = %manifest.name, used, quota, raised, "{message}");
        let alarm = Alarm {
            id: self.next_alarm_id(time_ms),
            node: self.node.clone(),
            module: manifest.name.clone(),
            provenance: Provenance::of(manifest),
            area: manifest.area,
            key: "agad.state-quota".to_owned(),
            metric: "state.used-bytes".to_owned(),
            subject: String::new(),
            severity: Severity::Warning,
            raised,
            value: used as f64,
            threshold: (u128::from(quota) * STATE_ALARM_AT_PERCENT / 100) as f64,
            comparison: Comparison::Above,
            message,
            time_ms,
        };
        let _ = self.events.send(Event::Alarm(alarm)).await;
    }

    /// Raises or clears `agad.module-crash-loop` for this module.
    async fn crash_loop_changed(&self, change: Option<Change>) {
        let module = self.module();
        let alarm = match change {
            None => return,
            Some(Change::Raise(why)) => {
                tracing::warn!(module, "crash loop: {why}");
                self.crash_alarms.raise(module, &why)
            }
            Some(Change::Clear) => {
                tracing::info!(module, "crash loop over: running cleanly");
                self.crash_alarms.clear(module)
            }
        };
        match alarm {
            Ok(Some(alarm)) => {
                let _ = self.events.send(Event::Alarm(alarm)).await;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(module, "cannot record the crash-loop alarm: {e}"),
        }
    }

    fn next_alarm_id(&self, time_ms: u64) -> String {
        let name = &self.factory.module.manifest.name;
        match self.db.next_id() {
            Ok(n) => format!("{}/{name}/{n}", self.node),
            Err(e) => {
                tracing::error!("cannot number alarm: {e}");
                format!("{}/{name}/t{time_ms}", self.node)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An alarm's size for its budget: its strings and a fixed part.
fn alarm_bytes(a: &wit::Alarm) -> usize {
    budget::FIXED_ITEM_BYTES + a.key.len() + a.metric.len() + a.subject.len() + a.message.len()
}

/// A report's size for its budget.
fn report_bytes(summaries: &[wit::Summary]) -> usize {
    summaries
        .iter()
        .map(|s| budget::FIXED_ITEM_BYTES + s.metric.len() + s.subject.len() + s.unit.len())
        .sum()
}

fn severity(s: wit::Severity) -> Severity {
    match s {
        wit::Severity::Info => Severity::Info,
        wit::Severity::Warning => Severity::Warning,
        wit::Severity::Minor => Severity::Minor,
        wit::Severity::Major => Severity::Major,
        wit::Severity::Critical => Severity::Critical,
    }
}

fn comparison(c: wit::Comparison) -> Comparison {
    match c {
        wit::Comparison::Above => Comparison::Above,
        wit::Comparison::Below => Comparison::Below,
        wit::Comparison::Equal => Comparison::Equal,
        wit::Comparison::NotEqual => Comparison::NotEqual,
    }
}

fn summary(s: wit::Summary) -> Summary {
    Summary {
        metric: s.metric,
        subject: s.subject,
        unit: s.unit,
        min: s.min,
        max: s.max,
        mean: s.mean,
        last: s.last,
        count: s.count,
        coverage: s.coverage,
        window_start_ms: s.window_start_ms,
        window_end_ms: s.window_end_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_modules_share_one_grid_and_nodes_spread_over_the_period() {
        let period = Duration::from_secs(10);
        // Two modules starting 3.2 s apart tick at the same instants.
        let a = 1_000_000_000_000 + to_grid(1_000_000_000_000, period, "n1").as_millis() as u64;
        let start_b = 1_000_000_003_200;
        let b = start_b + to_grid(start_b, period, "n1").as_millis() as u64;
        assert_eq!(a % 10_000, b % 10_000);
        assert!(
            to_grid(a, period, "n1") == period,
            "on the grid: one period to the next"
        );
        // Off the multiples of the period, and not the same for every node.
        let offsets: std::collections::HashSet<u64> = (0..20)
            .map(|i| {
                let name = format!("node-{i}");
                let t = 1_000_000_000_000
                    + to_grid(1_000_000_000_000, period, &name).as_millis() as u64;
                t % 10_000
            })
            .collect();
        assert!(
            offsets.iter().all(|o| (500..=9_500).contains(o)),
            "{offsets:?}"
        );
        assert!(offsets.len() > 10, "{offsets:?}");
    }
}
