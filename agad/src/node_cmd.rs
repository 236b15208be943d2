//! `agad node ...`: the node runtime on its own, without a manager.

use crate::identity::{IdentityArgs, TicketArgs};
use crate::module_cmd::{read_bundle, read_public_keys};
use agad_protocol::Capability;
use agad_runtime::{
    AgentConfig, Ceilings, CrashLoopPolicy, DiskPolicy, Event, HostPolicy, IntegrityPolicy,
    ModuleConfig, Node, NodeSettings, OutputLimits, RestartPolicy, ServicePolicy, parse_duration,
};
use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `agad node --dominio ADDR ...` runs under a domain manager;
/// `agad node run ...` runs bundles locally without one.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: Option<NodeCommand>,
    #[command(flatten)]
    managed: ManagedArgs,
}

#[derive(clap::Args)]
pub struct ManagedArgs {
    /// Domain manager addresses, primary first: HOST:PORT[,HOST:PORT...].
    #[arg(long, value_delimiter = ',', value_name = "ADDR")]
    dominio: Vec<String>,
    #[command(flatten)]
    identity: Option<IdentityArgs>,
    #[command(flatten)]
    ticket: TicketArgs,
    /// Public key of a trusted publisher (repeatable; adds to the node file's keys).
    #[arg(long = "trust")]
    trusted: Vec<PathBuf>,
    /// Node settings (TOML): trusted_keys, allowed_capabilities, agents, ...
    #[arg(long)]
    node_config: Option<PathBuf>,
    /// Where the node keeps its database, outbox and compiled modules.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How often the node tells its manager it is alive.
    #[arg(long, default_value = "10s", value_parser = crate::parse_cli_duration)]
    keepalive: Duration,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Run signed modules locally: inspectors until stopped, printing each
    /// alarm, report and fault as one JSON line; or one specialist once,
    /// with `--arg`s, printing its diagnosis as one JSON line.
    #[command(
        after_help = "Logging: what a module logs (its `log` capability) and what the runtime says \
            about it go to stderr, filtered by AGAD_LOG (or, if unset, RUST_LOG): the default \
            shows warnings only; AGAD_LOG=info shows the module's info lines, AGAD_LOG=debug \
            everything. A module that imports a capability its manifest does not declare is \
            refused with every such capability and the import that needs it."
    )]
    Run(RunArgs),
    /// The node's compile helper: a component's wasm on stdin, its compiled
    /// artefact on stdout (run by the node itself, one process per module).
    #[command(hide = true)]
    Compile,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A signed module bundle to run (repeatable).
    #[arg(long = "bundle", required = true)]
    pub bundles: Vec<PathBuf>,
    /// Module setting `key=value` for every module, or `module:key=value` for one (repeatable).
    /// The key `period` (e.g. 10s) sets how often the module is ticked.
    #[arg(long = "config", value_name = "[MODULE:]KEY=VALUE")]
    pub config: Vec<String>,
    /// Public key of a trusted publisher (repeatable; adds to the node file's keys).
    #[arg(long = "trust")]
    pub trusted: Vec<PathBuf>,
    /// Node settings (TOML): name, trusted_keys, allowed_capabilities, default_period, agents, ...
    #[arg(long)]
    pub node_config: Option<PathBuf>,
    /// Where the node keeps its database and compiled modules.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stop after this long (e.g. 30s, 5m); runs until Ctrl-C otherwise.
    #[arg(long = "for", value_parser = crate::parse_cli_duration)]
    pub run_for: Option<Duration>,
    /// Argument `key=value` of a specialist (repeatable): the bundle is then
    /// run once and its diagnosis printed.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    pub args: Vec<String>,
}

/// What `agad node run` prints for one run of a specialist.
#[derive(Debug, serde::Serialize)]
struct SpecialistRun<'a> {
    module: &'a str,
    /// `diagnosed`, `failed` (the specialist's own error: bad arguments,
    /// refused by the node's policy, ...) or `fault` (timeout, memory,
    /// trap).
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
    /// Facts in the specialist's order, as `[key, value]` pairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    facts: Option<Vec<(String, String)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<agad_protocol::message::FaultKind>,
    elapsed_ms: u64,
}

/// `--arg` values as pairs.
fn split_args(values: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    values
        .iter()
        .map(|raw| match raw.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_owned(), value.to_owned()))
            }
            _ => bail!("--arg `{raw}`: expected KEY=VALUE"),
        })
        .collect()
}

/// The node's settings file, as an operator writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Stable name of this node [default: the host name].
    pub name: Option<String>,
    /// Public keys of trusted publishers; relative paths are relative to this file.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Capabilities this node grants at most [default: all of them].
    pub allowed_capabilities: Option<Vec<Capability>>,
    /// Tick period of modules whose config sets no `period` [default: 10s].
    pub default_period: Option<String>,
    /// Where the node keeps its database and compiled modules.
    pub data_dir: Option<PathBuf>,
    /// First wait before restarting a failed module; doubles each time [default: 1s].
    pub restart_initial: Option<String>,
    /// Longest wait between restarts [default: 60s].
    pub restart_max: Option<String>,
    /// SNMP agents modules may query; the first is the default one.
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    /// Most linear memory any module gets, in bytes; a manifest asking for
    /// more is granted this (and the node logs a warning) [default: 256 MiB].
    pub max_module_memory_bytes: Option<u64>,
    /// Longest any one call into a module may run, in milliseconds; a
    /// manifest asking for more is granted this [default: 60000].
    pub max_call_time_ms: Option<u64>,
    /// Largest `state` quota any module gets, in bytes; a manifest asking
    /// for more is granted this [default: 64 MiB].
    pub max_module_state_bytes: Option<u64>,
    /// Alarms one module may send per minute (a burst of this many, then
    /// an even refill); the excess is dropped, counted and reported once as
    /// an `agad.output-dropped` alarm of that module [default: 120].
    pub alarms_per_minute: Option<u32>,
    /// Reports one module may send per minute, likewise [default: 120].
    pub reports_per_minute: Option<u32>,
    /// Largest alarm a module may send (its strings plus 64), in bytes;
    /// larger ones are dropped and counted [default: 4096].
    pub max_alarm_bytes: Option<usize>,
    /// Largest report a module may send (its summaries' strings plus 64
    /// per summary), in bytes [default: 262144].
    pub max_report_bytes: Option<usize>,
    /// Room kept in the data directory (a file of allocated blocks) and
    /// given back when the disk is full, so that the node starts and its
    /// outbox keeps queueing alarms; 0 keeps none [default: 16 MiB].
    pub disk_reserve_bytes: Option<u64>,
    /// Below this many bytes available on the data directory's filesystem
    /// the node raises an `agad.disk-low` alarm [default: 64 MiB].
    pub disk_low_free_bytes: Option<u64>,
    /// How often the node looks at its disk [default: 30s].
    pub disk_check_every: Option<String>,
    /// How often a managed node re-hashes its module files against their
    /// signed manifests and its compiled artefacts against the digests
    /// recorded when they were written; what fails is quarantined and
    /// raises `agad.module-tampered` [default: 60s].
    pub integrity_check_every: Option<String>,
    /// Restarts of one module within `crash_loop_window` that raise
    /// `agad.module-crash-loop` for it [default: 3].
    pub crash_loop_restarts: Option<u32>,
    /// The window `crash_loop_restarts` are counted in [default: 10m].
    pub crash_loop_window: Option<String>,
    /// How long a crash-looping module must run without a fault for the
    /// alarm to clear [default: 5m].
    pub crash_loop_clean: Option<String>,
    /// Directory trees the `disk` capability may measure (absolute paths;
    /// a module asking about anything else gets "not allowed by this
    /// node's policy") [default: none].
    #[serde(default)]
    pub disk_usage_paths: Vec<PathBuf>,
    /// Services the `service` capability may restart, by name: how each is
    /// restarted and how it is known to run [default: none].
    #[serde(default)]
    pub services: BTreeMap<String, ServiceFile>,
}

/// One allow-listed service (`[services.<name>]`):
///
/// ```toml
/// [services.nginx]
/// restart = ["systemctl", "restart", "nginx"]
/// process = "nginx"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Program and arguments that restart the service, run without a shell.
    pub restart: Vec<String>,
    /// Process name whose presence means the service runs (as `ps -o comm`
    /// shows it, or argv[0]'s file name).
    pub process: String,
    /// Longest the restart command may run before it is killed [default: 10s].
    pub restart_timeout: Option<String>,
    /// How long to wait, after the command, for the process [default: 5s].
    pub confirm_within: Option<String>,
}

impl NodeFile {
    pub fn read(path: &Path) -> anyhow::Result<NodeFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut file: NodeFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for key in &mut file.trusted_keys {
            *key = base.join(&*key);
        }
        if let Some(dir) = &mut file.data_dir {
            *dir = base.join(&*dir);
        }
        Ok(file)
    }

    /// Validated settings; every problem names the field.
    pub fn settings(&self, source: &str) -> anyhow::Result<NodeSettings> {
        let duration = |field: &str, value: &Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(v) => parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                anyhow::anyhow!("{source}: `{field}`: `{v}` is not a duration (e.g. 10s)")
            }),
        };
        agad_runtime::host::snmp::validate_agents(&self.agents)
            .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        let at_least = |field: &str, value: Option<u64>, min: u64, default: u64| match value {
            None => Ok(default),
            Some(v) if v >= min => Ok(v),
            Some(v) => bail!("{source}: `{field}`: {v} is below the minimum of {min}"),
        };
        let ceilings = Ceilings::default();
        let output = OutputLimits::default();
        let ceilings = Ceilings {
            // One wasm page: nothing can run in less.
            max_memory_bytes: at_least(
                "max_module_memory_bytes",
                self.max_module_memory_bytes,
                64 * 1024,
                ceilings.max_memory_bytes,
            )?,
            max_time_per_call_ms: at_least(
                "max_call_time_ms",
                self.max_call_time_ms,
                1,
                ceilings.max_time_per_call_ms,
            )?,
            max_state_bytes: at_least(
                "max_module_state_bytes",
                self.max_module_state_bytes,
                0,
                ceilings.max_state_bytes,
            )?,
        };
        let output = OutputLimits {
            alarms_per_minute: at_least(
                "alarms_per_minute",
                self.alarms_per_minute.map(u64::from),
                1,
                output.alarms_per_minute.into(),
            )?
            .try_into()?,
            reports_per_minute: at_least(
                "reports_per_minute",
                self.reports_per_minute.map(u64::from),
                1,
                output.reports_per_minute.into(),
            )?
            .try_into()?,
            max_alarm_bytes: at_least(
                "max_alarm_bytes",
                self.max_alarm_bytes.map(|v| v as u64),
                256,
                output.max_alarm_bytes as u64,
            )?
            .try_into()?,
            max_report_bytes: at_least(
                "max_report_bytes",
                self.max_report_bytes.map(|v| v as u64),
                256,
                output.max_report_bytes as u64,
            )?
            .try_into()?,
        };
        let host_policy = self.host_policy(source)?;
        Ok(NodeSettings {
            host_policy: Arc::new(host_policy),
            name: self.name.clone().unwrap_or_else(host_name),
            agents: Arc::from(self.agents.clone()),
            policy: self
                .allowed_capabilities
                .clone()
                .unwrap_or_else(|| Capability::ALL.to_vec()),
            default_period: duration("default_period", &self.default_period, DEFAULT_PERIOD)?,
            restart: RestartPolicy {
                initial: duration(
                    "restart_initial",
                    &self.restart_initial,
                    Duration::from_secs(1),
                )?,
                max: duration("restart_max", &self.restart_max, Duration::from_secs(60))?,
            },
            ceilings,
            output,
            disk: DiskPolicy {
                reserve_bytes: self
                    .disk_reserve_bytes
                    .unwrap_or(DiskPolicy::default().reserve_bytes),
                low_free_bytes: self
                    .disk_low_free_bytes
                    .unwrap_or(DiskPolicy::default().low_free_bytes),
                check_every: duration(
                    "disk_check_every",
                    &self.disk_check_every,
                    DiskPolicy::default().check_every,
                )?,
            },
            crash_loop: CrashLoopPolicy {
                restarts: at_least(
                    "crash_loop_restarts",
                    self.crash_loop_restarts.map(u64::from),
                    1,
                    CrashLoopPolicy::default().restarts.into(),
                )?
                .try_into()?,
                window: duration(
                    "crash_loop_window",
                    &self.crash_loop_window,
                    CrashLoopPolicy::default().window,
                )?,
                clean: duration(
                    "crash_loop_clean",
                    &self.crash_loop_clean,
                    CrashLoopPolicy::default().clean,
                )?,
            },
            integrity: IntegrityPolicy {
                check_every: duration(
                    "integrity_check_every",
                    &self.integrity_check_every,
                    IntegrityPolicy::default().check_every,
                )?,
            },
        })
    }
}

impl NodeFile {
    /// `disk_usage_paths` and `[services]`, checked; every problem names
    /// the field.
    fn host_policy(&self, source: &str) -> anyhow::Result<HostPolicy> {
        for path in &self.disk_usage_paths {
            if !path.is_absolute() {
                bail!(
                    "{source}: `disk_usage_paths`: `{}` is not an absolute path",
                    path.display()
                );
            }
        }
        let mut services = BTreeMap::new();
        for (name, service) in &self.services {
            let field = format!("services.{name}");
            if agad_protocol::validate_module_name(name).is_err() {
                bail!(
                    "{source}: `{}`: a service name holds only ASCII letters, digits, `-`, `_` and `.`",
                    field.escape_debug()
                );
            }
            if service.restart.first().is_none_or(|p| p.trim().is_empty()) {
                bail!(
                    "{source}: `{field}.restart`: give the program and its arguments, e.g. [\"systemctl\", \"restart\", \"{name}\"]"
                );
            }
            if service.process.trim().is_empty() || service.process.contains('/') {
                bail!(
                    "{source}: `{field}.process`: give the name of the service's process (no path), e.g. \"{name}\""
                );
            }
            let wait = |key: &str, value: &Option<String>, default: Duration| match value {
                None => Ok(default),
                Some(v) => match parse_duration(v) {
                    Some(d) if !d.is_zero() && d <= ServicePolicy::MAX_WAIT => Ok(d),
                    _ => bail!(
                        "{source}: `{field}.{key}`: `{v}` is not a duration between 1ms and {}s (e.g. 5s)",
                        ServicePolicy::MAX_WAIT.as_secs()
                    ),
                },
            };
            services.insert(
                name.clone(),
                ServicePolicy {
                    restart: service.restart.clone(),
                    process: service.process.clone(),
                    restart_timeout: wait(
                        "restart_timeout",
                        &service.restart_timeout,
                        ServicePolicy::DEFAULT_RESTART_TIMEOUT,
                    )?,
                    confirm_within: wait(
                        "confirm_within",
                        &service.confirm_within,
                        ServicePolicy::DEFAULT_CONFIRM_WITHIN,
                    )?,
                },
            );
        }
        Ok(HostPolicy {
            disk_usage_paths: self.disk_usage_paths.clone(),
            services,
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

/// The command line's data directory, else the node file's, else the
/// default; created if missing, and the node's alone (0700) either way: it
/// holds the outbox, module state and compiled modules.
fn data_dir(explicit: &Option<PathBuf>, file: &NodeFile) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = explicit
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(default_data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    // One made by an older version, or by hand, may be open to everyone.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict data directory {} to 0700", dir.display()))?;
    Ok(dir)
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("agad/node")
}

/// Module settings keyed by module name; `None` applies to every module.
type ConfigByModule = BTreeMap<Option<String>, Vec<(String, String)>>;

/// `--config` values split per module.
fn split_config(values: &[String]) -> anyhow::Result<ConfigByModule> {
    let mut out = ConfigByModule::new();
    for raw in values {
        let (target, setting) = match raw.split_once(':') {
            Some((module, rest)) if !module.contains('=') => (Some(module.to_owned()), rest),
            _ => (None, raw.as_str()),
        };
        let Some((key, value)) = setting.split_once('=') else {
            bail!("--config `{raw}`: expected KEY=VALUE or MODULE:KEY=VALUE");
        };
        if key.is_empty() {
            bail!("--config `{raw}`: empty key");
        }
        out.entry(target)
            .or_default()
            .push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    match args.command {
        Some(NodeCommand::Run(args)) => run_local(args),
        Some(NodeCommand::Compile) => compile_helper(),
        None => run_managed(args.managed),
    }
}

/// How often a module ticks unless its assignment or the node file says
/// otherwise. Sampling where the data is born is cheap (the five built-in
/// inspectors at 1 s cost about 1 % of a core) and only summaries travel,
/// so the node samples fast: with inspectors raising after 2 breaching
/// samples, a fault reaches the top manager 1–3 s after it starts (a
/// central poller every 10 s takes 4–8 s). See the `detection` benchmark.
const DEFAULT_PERIOD: Duration = Duration::from_secs(1);

/// `agad node compile`: what [`agad_runtime::CompileHelper`] runs.
fn compile_helper() -> anyhow::Result<()> {
    use std::io::Read;
    let mut wasm = Vec::new();
    std::io::stdin()
        .take(agad_protocol::bundle::MAX_BUNDLE_BYTES as u64 + 1)
        .read_to_end(&mut wasm)?;
    if wasm.len() > agad_protocol::bundle::MAX_BUNDLE_BYTES {
        bail!("the module is larger than a bundle may be");
    }
    let artefact = agad_runtime::compiler::compile_artefact(&wasm)?;
    std::io::stdout().lock().write_all(&artefact)?;
    Ok(())
}

/// Opens the node's databases under `data_dir`; it compiles in helper
/// processes ([`agad_runtime::compiler`]).
fn open_node(
    settings: NodeSettings,
    keys: Vec<agad_protocol::PublicKey>,
    data_dir: &Path,
) -> anyhow::Result<Node> {
    let mut node = Node::open(settings, keys, data_dir)?;
    match agad_runtime::CompileHelper::this_executable() {
        Ok(helper) => node.set_compile_helper(helper),
        Err(e) => tracing::warn!(
            "cannot find this executable to compile in a helper process ({e}); compiling in this one"
        ),
    }
    Ok(node)
}

/// Trusted keys from the node file and the command line; at least one.
fn trusted_keys(
    file: &NodeFile,
    extra: &[PathBuf],
) -> anyhow::Result<Vec<agad_protocol::PublicKey>> {
    let mut key_paths = file.trusted_keys.clone();
    key_paths.extend(extra.iter().cloned());
    if key_paths.is_empty() {
        bail!(
            "no trusted publisher key: pass --trust <key.pub> or set trusted_keys in --node-config"
        );
    }
    read_public_keys(&key_paths)
}

fn read_node_file(path: &Option<PathBuf>) -> anyhow::Result<(NodeFile, String)> {
    Ok(match path {
        Some(path) => (NodeFile::read(path)?, path.display().to_string()),
        None => (NodeFile::default(), "node settings".to_owned()),
    })
}

fn run_managed(args: ManagedArgs) -> anyhow::Result<()> {
    let Some(identity) = &args.identity else {
        bail!(
            "`agad node` needs --dominio, --pki and --name (or use `agad node run` to run bundles locally)"
        );
    };
    if args.dominio.is_empty() {
        bail!("--dominio: give at least one domain manager address (HOST:PORT)");
    }
    let (file, source) = read_node_file(&args.node_config)?;
    let mut settings = file.settings(&source)?;
    // The certificate is the node's identity; alarm ids carry it.
    settings.name = identity.name.clone();
    let keys = trusted_keys(&file, &args.trusted)?;
    let data_dir = data_dir(&args.data_dir, &file)?;
    let uplink = agad_net::uplink::UplinkConfig {
        parents: args.dominio.clone(),
        tls: identity.client()?,
        role: agad_protocol::wire::Role::Node,
        ticket: args.ticket.resolve()?,
        keepalive: args.keepalive,
        backoff_initial: Duration::from_millis(500),
        backoff_max: Duration::from_secs(30),
    };
    let runtime = node_runtime()?;
    let result = runtime.block_on(async move {
        let node = open_node(settings, keys, &data_dir)?;
        eprintln!(
            "node `{}` managed by {} (data in {}); Ctrl-C or SIGTERM stops",
            identity.name,
            args.dominio.join(", "),
            data_dir.display()
        );
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            let _ = stop.send(true);
        });
        tokio::spawn(agad_runtime::heap::keep_trimmed());
        agad_runtime::managed::run(node, uplink, shutdown).await
    });
    finish(runtime);
    result
}

fn node_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Above the node's bound on blocking host calls
        // (`HostPool::DEFAULT_THREADS`), which must leave threads for the
        // outbox and deployments.
        .max_blocking_threads(96)
        .enable_all()
        .build()
}

/// How long shutdown waits for host calls still running on blocking
/// threads (a module's SNMP request, a read of a hung mount).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Drops the runtime without waiting for ever: a plain drop would wait for
/// every blocking host call a module left behind, and one that never
/// returns would keep the process alive after Ctrl-C or SIGTERM. The
/// database was flushed before this point.
fn finish(runtime: tokio::runtime::Runtime) {
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
}

pub fn run_local(args: RunArgs) -> anyhow::Result<()> {
    let (file, source) = read_node_file(&args.node_config)?;
    let settings = file.settings(&source)?;
    let keys = trusted_keys(&file, &args.trusted)?;
    let mut config = split_config(&args.config)?;
    let data_dir = data_dir(&args.data_dir, &file)?;

    let runtime = node_runtime()?;
    let result = runtime.block_on(async move {
        let node = open_node(settings, keys, &data_dir)?;
        let (events_tx, mut events) = tokio::sync::mpsc::channel::<Event>(1024);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let common = config.remove(&None).unwrap_or_default();
        // Every bundle is read and every --config checked before a module
        // starts: bad input stops the command before anything runs.
        let bundles = args
            .bundles
            .iter()
            .map(|path| Ok((path, read_bundle(path)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(unknown) = config
            .keys()
            .flatten()
            .find(|name| !bundles.iter().any(|(_, b)| &b.manifest.name == *name))
        {
            bail!("--config names module `{unknown}`, which no --bundle provides");
        }
        let specialists = bundles
            .iter()
            .filter(|(_, b)| b.manifest.kind == agad_protocol::Kind::Specialist)
            .count();
        if specialists > 0 {
            let [(path, bundle)] = bundles.as_slice() else {
                bail!(
                    "a specialist runs once and on its own: give one --bundle (and its --arg values)"
                );
            };
            if !args.config.is_empty() {
                bail!("--config is for inspectors; give a specialist's arguments with --arg KEY=VALUE");
            }
            let outcome = run_specialist_once(&node, path, bundle, &split_args(&args.args)?).await;
            node.database().flush()?;
            node.state_database().flush()?;
            return outcome;
        }
        if !args.args.is_empty() {
            bail!("--arg is for a specialist; give an inspector's settings with --config KEY=VALUE");
        }
        let mut tasks = Vec::new();
        let mut started = Vec::new();
        for (path, bundle) in bundles {
            let name = bundle.manifest.name.clone();
            let module = node
                .load(&bundle)
                .with_context(|| path.display().to_string())?;
            let mut values = common.clone();
            values.extend(config.remove(&Some(name.clone())).unwrap_or_default());
            let handle = node
                .start_inspector(
                    module,
                    ModuleConfig { values },
                    events_tx.clone(),
                    shutdown.clone(),
                )
                .await
                .with_context(|| path.display().to_string())?;
            tasks.push(handle);
            started.push(name);
        }
        let disk = node.watch_disk(events_tx.clone(), shutdown.clone());
        tasks.extend(disk);
        drop(events_tx);
        eprintln!(
            "node `{}` running {} (data in {}); Ctrl-C or SIGTERM stops",
            node.settings().name,
            started.join(", "),
            data_dir.display()
        );
        let deadline = async {
            match args.run_for {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let signal = crate::shutdown_signal();
        tokio::pin!(signal);
        let mut stdout = std::io::stdout().lock();
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        let line = serde_json::to_string(&event)?;
                        writeln!(stdout, "{line}")?;
                        stdout.flush()?;
                    }
                    None => break,
                },
                _ = &mut deadline => break,
                _ = &mut signal => break,
            }
        }
        let _ = stop.send(true);
        drop(events);
        // Supervisors stop at once (a tick in progress is dropped); the
        // bound is for a bug, not a wait.
        let stopped = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, stopped).await.is_err() {
            eprintln!("some modules did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
        }
        node.database().flush()?;
        node.state_database().flush()?;
        Ok(())
    });
    finish(runtime);
    result
}

/// Runs one specialist once and prints what came of it as one JSON line;
/// an error (exit status 2) unless it diagnosed.
async fn run_specialist_once(
    node: &Node,
    path: &Path,
    bundle: &agad_protocol::Bundle,
    args: &[(String, String)],
) -> anyhow::Result<()> {
    let module = node
        .load(bundle)
        .with_context(|| path.display().to_string())?;
    let started = std::time::Instant::now();
    let result = node.run_specialist(&module, args).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let name = &bundle.manifest.name;
    let mut run = SpecialistRun {
        module: name,
        outcome: "diagnosed",
        summary: None,
        facts: None,
        error: None,
        fault: None,
        elapsed_ms,
    };
    let failure = match result {
        Ok(Ok(diagnosis)) => {
            run.summary = Some(diagnosis.summary);
            run.facts = Some(diagnosis.facts);
            None
        }
        Ok(Err(reason)) => {
            run.outcome = "failed";
            run.error = Some(reason.clone());
            Some(format!("specialist `{name}` failed: {reason}"))
        }
        Err(fault) => {
            run.outcome = "fault";
            run.fault = Some(fault.kind);
            run.error = Some(fault.message.clone());
            Some(format!("specialist `{name}`: {fault}"))
        }
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(&run)?)?;
    stdout.flush()?;
    match failure {
        None => Ok(()),
        Some(why) => bail!(why),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_splits_per_module() {
        let split = split_config(&[
            "threshold=90".into(),
            "cpu-mem:period=1s".into(),
            "url=http://x:1".into(),
        ])
        .unwrap();
        assert_eq!(
            split[&None],
            vec![
                ("threshold".into(), "90".into()),
                ("url".into(), "http://x:1".into())
            ]
        );
        assert_eq!(
            split[&Some("cpu-mem".into())],
            vec![("period".into(), "1s".into())]
        );
        assert!(split_config(&["nokey".into()]).is_err());
        assert!(split_config(&["m:=1".into()]).is_err());
    }

    #[test]
    fn node_file_sets_ceilings_and_output_budgets_and_refuses_zero() {
        let file: NodeFile = toml::from_str(
            "max_module_memory_bytes = 1048576\nmax_call_time_ms = 250\nalarms_per_minute = 5\n",
        )
        .unwrap();
        let settings = file.settings("n.toml").unwrap();
        assert_eq!(settings.ceilings.max_memory_bytes, 1_048_576);
        assert_eq!(settings.ceilings.max_time_per_call_ms, 250);
        assert_eq!(settings.output.alarms_per_minute, 5);
        assert_eq!(
            settings.output.reports_per_minute,
            OutputLimits::default().reports_per_minute
        );
        let file: NodeFile = toml::from_str("max_call_time_ms = 0").unwrap();
        let err = file.settings("n.toml").unwrap_err().to_string();
        assert!(err.contains("max_call_time_ms"), "{err}");
    }

    #[test]
    fn specialist_args_split_on_the_first_equals() {
        assert_eq!(
            split_args(&["path=/var".into(), "expr=a=b".into()]).unwrap(),
            vec![
                ("path".into(), "/var".into()),
                ("expr".into(), "a=b".into())
            ]
        );
        assert!(split_args(&["novalue".into()]).is_err());
        assert!(split_args(&["=x".into()]).is_err());
    }

    #[test]
    fn node_file_reads_disk_paths_and_services_and_refuses_bad_ones() {
        let file: NodeFile = toml::from_str(
            "disk_usage_paths = [\"/var/log\"]\n\
             [services.web]\nrestart = [\"systemctl\", \"restart\", \"nginx\"]\nprocess = \"nginx\"\nconfirm_within = \"2s\"\n",
        )
        .unwrap();
        let settings = file.settings("n.toml").unwrap();
        let policy = &settings.host_policy;
        assert_eq!(policy.disk_usage_paths, vec![PathBuf::from("/var/log")]);
        let web = &policy.services["web"];
        assert_eq!(web.process, "nginx");
        assert_eq!(web.confirm_within, Duration::from_secs(2));
        assert_eq!(web.restart_timeout, ServicePolicy::DEFAULT_RESTART_TIMEOUT);
        // Nothing by default.
        let none = NodeFile::default().settings("n.toml").unwrap();
        assert!(
            none.host_policy.disk_usage_paths.is_empty() && none.host_policy.services.is_empty()
        );

        for (text, field) in [
            ("disk_usage_paths = [\"var\"]", "disk_usage_paths"),
            (
                "[services.web]\nrestart = []\nprocess = \"nginx\"",
                "services.web.restart",
            ),
            (
                "[services.web]\nrestart = [\"x\"]\nprocess = \"/usr/sbin/nginx\"",
                "services.web.process",
            ),
            (
                "[services.web]\nrestart = [\"x\"]\nprocess = \"n\"\nconfirm_within = \"2h\"",
                "services.web.confirm_within",
            ),
            (
                "[services.\"a b\"]\nrestart = [\"x\"]\nprocess = \"n\"",
                "services.a b",
            ),
        ] {
            let file: NodeFile = toml::from_str(text).unwrap();
            let err = file.settings("n.toml").unwrap_err().to_string();
            assert!(
                err.contains("n.toml") && err.contains(field),
                "{text}: {err}"
            );
        }
        let err = toml::from_str::<NodeFile>(
            "[services.web]\nrestart = [\"x\"]\nprocess = \"n\"\nshell = true",
        )
        .unwrap_err();
        assert!(err.to_string().contains("shell"), "{err}");
    }

    #[test]
    fn node_file_refuses_unknown_fields_and_bad_durations() {
        let err = toml::from_str::<NodeFile>("name = \"a\"\nperiod = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("period"), "{err}");
        let file: NodeFile = toml::from_str("default_period = \"soon\"").unwrap();
        let err = file.settings("n.toml").unwrap_err().to_string();
        assert!(
            err.contains("n.toml") && err.contains("default_period"),
            "{err}"
        );
    }
}
