//! The node runtime: verifies, compiles and runs AGAD modules on a node.
//!
//! What it is for: turning signed bundles into sandboxed wasmtime component
//! instances that see only the host capabilities they were granted, and
//! keeping inspectors ticking on their period — a trap, an infinite loop or
//! a memory bomb costs that one module a restart with back-off, never the
//! runtime; and, in [`managed`], running what a domain manager deploys.
//!
//! Layout:
//! - [`bindings`]: host bindings generated from `wit/`.
//! - [`host`]: one struct per capability (os, snmp, state, log, clock, disk,
//!   probe, service) and the node's policy for disk and service.
//! - [`trust`]: signature, hash, expiry and rollback checks.
//! - [`engine`]: wasmtime engine, compiled-module cache, capability-checked linking.
//! - [`compiler`]: compiling in a short-lived helper process, so that the
//!   compiler's code and memory never stay in the node.
//! - [`imports`]: a component's imports read from its bytes, checked against
//!   its declared capabilities (at signing).
//! - [`instance`]: one inspector instance with its limits; faults classified.
//! - [`budget`]: per-module rate and size budgets for what goes upward.
//! - [`disk`]: the reserve kept for the outbox, and the low-disk alarm.
//! - [`heap`]: the allocator sized for a small long-running process.
//! - [`node`]: loading modules and supervising them on their periods.
//! - [`refusals`]: the alarm for a module a node could not start (and the
//!   bookkeeping of the runtime's other per-module alarms).
//! - [`runs`]: specialist runs a manager asks for, each at most once.
//! - [`crashloop`]: the alarm for a module that keeps failing.
//! - [`integrity`]: module files and compiled artefacts re-hashed, altered
//!   ones quarantined, and the answers to a manager's attestation.
//! - [`managed`]: the node under a domain manager (deployments, outbox, keep-alives).
//!
//! ```no_run
//! # async fn demo(bundle: agad_protocol::Bundle, settings: agad_runtime::NodeSettings,
//! #               keys: Vec<agad_protocol::PublicKey>) -> anyhow::Result<()> {
//! use agad_runtime::{ModuleConfig, Node};
//! let node = Node::open(settings, keys, std::path::Path::new("/var/lib/agad"))?;
//! let module = node.load(&bundle)?; // verify, compile (or reuse the cache), link
//! let (events_tx, mut events) = tokio::sync::mpsc::channel(1024);
//! let (_stop, shutdown) = tokio::sync::watch::channel(false);
//! node.start_inspector(module, ModuleConfig::default(), events_tx, shutdown).await?;
//! while let Some(event) = events.recv().await {
//!     println!("{}", serde_json::to_string(&event)?);
//! }
//! # Ok(()) }
//! ```

pub mod bindings;
pub mod budget;
pub mod compiler;
pub mod crashloop;
pub mod disk;
pub mod engine;
pub mod heap;
pub mod host;
pub mod imports;
pub mod instance;
pub mod integrity;
pub mod managed;
pub mod node;
pub mod refusals;
pub mod runs;
pub mod trust;

pub use budget::OutputLimits;
pub use compiler::CompileHelper;
pub use crashloop::CrashLoopPolicy;
pub use disk::DiskPolicy;
pub use engine::{LinkError, LinkedModule, ModuleEngine};
pub use host::policy::{HostPolicy, ServicePolicy};
pub use host::snmp::AgentConfig;
pub use instance::{Fault, InitError, InspectorInstance, SpecialistInstance};
pub use integrity::IntegrityPolicy;
pub use node::{
    Ceilings, Event, LoadError, ModuleConfig, Node, NodeSettings, RestartPolicy, parse_duration,
};
pub use trust::{TrustError, TrustStore};
