//! One running instance of an inspector (or a one-shot specialist): its store (memory cap, epoch
//! deadline) and the typed `init`/`tick` exports, with failures classified
//! into [`Fault`]s instead of taking the runtime down.

use crate::bindings::inspector::Inspector;
use crate::bindings::specialist::Specialist;
use crate::bindings::types::{Diagnosis, Output};
use crate::engine::{EPOCH_TICK, LinkedModule};
use crate::host::HostState;
use agad_protocol::message::FaultKind;
use wasmtime::Store;

/// Why a call into a module failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct Fault {
    pub kind: FaultKind,
    pub message: String,
}

/// What `init` can answer besides a fault: the module refused its config.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InitError {
    #[error("module refused its configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Fault(#[from] Fault),
}

pub struct InspectorInstance {
    store: Store<HostState>,
    bindings: Inspector,
    deadline_ticks: u64,
}

impl InspectorInstance {
    /// Instantiates `module` with `host` as the store's data.
    pub fn new(module: &LinkedModule, host: HostState) -> Result<InspectorInstance, Fault> {
        let (mut store, instance, deadline_ticks) = instantiate(module, host)?;
        let bindings = Inspector::new(&mut store, &instance).map_err(|e| Fault {
            kind: FaultKind::Trap,
            message: format!("component does not export the inspector world: {e:#}"),
        })?;
        Ok(InspectorInstance {
            store,
            bindings,
            deadline_ticks,
        })
    }

    pub fn init(&mut self, config: &[(String, String)]) -> Result<(), InitError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        match self.bindings.call_init(&mut self.store, &config.to_vec()) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refusal)) => Err(InitError::Config(refusal)),
            Err(e) => Err(classify(&self.store, e).into()),
        }
    }

    pub fn tick(&mut self) -> Result<Output, Fault> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.bindings
            .call_tick(&mut self.store)
            .map_err(|e| classify(&self.store, e))
    }
}

/// A store with the module's memory cap and call deadline, and an instance in it.
fn instantiate(
    module: &LinkedModule,
    host: HostState,
) -> Result<(Store<HostState>, wasmtime::component::Instance, u64), Fault> {
    let limits = module.manifest.limits;
    let mut store = Store::new(module.pre.engine(), host);
    store.limiter(|s| &mut s.limits);
    let deadline_ticks = limits
        .max_time_per_call_ms
        .div_ceil(EPOCH_TICK.as_millis() as u64)
        .max(1);
    store.set_epoch_deadline(deadline_ticks);
    store.epoch_deadline_trap();
    let instance = module
        .pre
        .instantiate(&mut store)
        .map_err(|e| classify(&store, e))?;
    Ok((store, instance, deadline_ticks))
}

/// A specialist: instantiated for one `run`, under the same limits.
pub struct SpecialistInstance {
    store: Store<HostState>,
    bindings: Specialist,
}

impl SpecialistInstance {
    pub fn new(module: &LinkedModule, host: HostState) -> Result<SpecialistInstance, Fault> {
        let (mut store, instance, _) = instantiate(module, host)?;
        let bindings = Specialist::new(&mut store, &instance).map_err(|e| Fault {
            kind: FaultKind::Trap,
            message: format!("component does not export the specialist world: {e:#}"),
        })?;
        Ok(SpecialistInstance { store, bindings })
    }

    /// Runs once; `Ok(Err(reason))` is the specialist's own refusal or failure.
    pub fn run(mut self, args: &[(String, String)]) -> Result<Result<Diagnosis, String>, Fault> {
        self.bindings
            .call_run(&mut self.store, &args.to_vec())
            .map_err(|e| classify(&self.store, e))
    }
}

fn classify(store: &Store<HostState>, error: wasmtime::Error) -> Fault {
    let trap = error.downcast_ref::<wasmtime::Trap>().copied();
    let kind = if trap == Some(wasmtime::Trap::Interrupt) {
        FaultKind::Timeout
    } else if store.data().limits.hit {
        FaultKind::MemoryLimit
    } else {
        FaultKind::Trap
    };
    let message = match kind {
        FaultKind::Timeout => "call exceeded max_time_per_call_ms and was interrupted".to_owned(),
        FaultKind::MemoryLimit => format!(
            "memory growth past max_memory_bytes was refused and the module failed: {}",
            root_message(&error)
        ),
        _ => root_message(&error),
    };
    Fault { kind, message }
}

/// The first line of the error chain: the trap and, for panics, where.
fn root_message(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines().next().unwrap_or_default().to_owned()
}
