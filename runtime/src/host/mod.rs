//! Host capabilities: one struct per WIT interface, gathered in [`HostState`],
//! the data of every module's store. Only the interfaces a module is granted
//! are added to its linker ([`add_granted_to_linker`]). The capabilities that
//! may block run their work through [`blocking`]; those that act on the node
//! beyond reading it (`disk`, `service`) also obey the node's [`policy`].

pub mod blocking;
pub mod clock;
pub mod disk;
pub mod log;
pub mod os;
pub mod policy;
pub mod probe;
pub mod service;
pub mod snmp;
pub mod state;

use crate::bindings;
use agad_protocol::Capability;
use blocking::{HostPool, Offloaded};
use policy::HostPolicy;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Everything one module instance may reach on the node.
pub struct HostState {
    pub os: Offloaded<os::OsProbe>,
    pub snmp: Offloaded<snmp::SnmpClient>,
    pub state: Offloaded<state::ModuleState>,
    pub disk: Offloaded<disk::DiskUsage>,
    pub probe: Offloaded<probe::Prober>,
    pub service: Offloaded<service::Services>,
    pub log: log::ModuleLog,
    pub clock: clock::Clock,
    pub limits: MemoryLimiter,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    /// A host state whose blocking calls use a pool of their own (tools and
    /// benchmarks); a node shares one pool between its modules
    /// ([`HostState::with_pool`]).
    pub fn new(
        module: &str,
        snmp: snmp::SnmpClient,
        state: state::ModuleState,
        max_memory_bytes: u64,
    ) -> HostState {
        HostState::with_pool(
            module,
            snmp,
            state,
            max_memory_bytes,
            HostPool::standalone(),
        )
    }

    pub fn with_pool(
        module: &str,
        snmp: snmp::SnmpClient,
        state: state::ModuleState,
        max_memory_bytes: u64,
        pool: HostPool,
    ) -> HostState {
        let deny = Arc::new(HostPolicy::default());
        HostState {
            os: Offloaded::new(os::OsProbe::new().with_module(module), pool.clone()),
            snmp: Offloaded::new(snmp.with_module(module), pool.clone()),
            state: Offloaded::new(state, pool.clone()),
            disk: Offloaded::new(disk::DiskUsage::new(module, deny.clone()), pool.clone()),
            probe: Offloaded::new(probe::Prober::new(module), pool.clone()),
            service: Offloaded::new(service::Services::new(module, deny), pool),
            log: log::ModuleLog::new(module),
            clock: clock::Clock,
            limits: MemoryLimiter::new(max_memory_bytes),
            // WASI is there only because Rust's std imports it: no files, no
            // sockets, no environment, no inherited stdio.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }
}

impl HostState {
    /// Gives `disk` and `service` the node's policy; without it they
    /// refuse every path and every service.
    pub fn with_policy(
        mut self,
        module: &str,
        policy: Arc<HostPolicy>,
        pool: HostPool,
    ) -> HostState {
        self.disk = Offloaded::new(disk::DiskUsage::new(module, policy.clone()), pool.clone());
        self.service = Offloaded::new(service::Services::new(module, policy), pool);
        self
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Adds WASI (sandboxed as above) and exactly the `granted` capabilities.
pub fn add_granted_to_linker(
    linker: &mut Linker<HostState>,
    granted: &[Capability],
) -> wasmtime::Result<()> {
    // Async WASI: a guest waiting in a poll (a sleep) suspends its call
    // instead of a thread, so the call's deadline can end it.
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    for capability in granted {
        match capability {
            Capability::Os => {
                bindings::os::add_to_linker::<_, HasSelf<Offloaded<os::OsProbe>>>(linker, |s| {
                    &mut s.os
                })?
            }
            Capability::Snmp => bindings::snmp::add_to_linker::<
                _,
                HasSelf<Offloaded<snmp::SnmpClient>>,
            >(linker, |s| &mut s.snmp)?,
            Capability::State => bindings::state::add_to_linker::<
                _,
                HasSelf<Offloaded<state::ModuleState>>,
            >(linker, |s| &mut s.state)?,
            Capability::Log => {
                bindings::log::add_to_linker::<_, HasSelf<log::ModuleLog>>(linker, |s| &mut s.log)?
            }
            Capability::Clock => {
                bindings::clock::add_to_linker::<_, HasSelf<clock::Clock>>(linker, |s| {
                    &mut s.clock
                })?
            }
            Capability::Disk => bindings::disk::add_to_linker::<
                _,
                HasSelf<Offloaded<disk::DiskUsage>>,
            >(linker, |s| &mut s.disk)?,
            Capability::Probe => bindings::probe::add_to_linker::<
                _,
                HasSelf<Offloaded<probe::Prober>>,
            >(linker, |s| &mut s.probe)?,
            Capability::Service => bindings::service::add_to_linker::<
                _,
                HasSelf<Offloaded<service::Services>>,
            >(linker, |s| &mut s.service)?,
        }
    }
    Ok(())
}

/// Caps a store's memories and remembers whether the cap was hit, so a trap
/// that follows a refused `memory.grow` is reported as a memory limit.
pub struct MemoryLimiter {
    max_bytes: usize,
    pub hit: bool,
}

impl MemoryLimiter {
    fn new(max_bytes: u64) -> MemoryLimiter {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            hit: false,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_bytes;
        if !allowed {
            self.hit = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a module needing more than this is broken.
        Ok(desired <= 100_000)
    }
}
