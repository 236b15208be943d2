//! One running instance of an inspector (or a one-shot specialist): its store (memory cap, call
//! deadline) and the typed `init`/`tick` exports, with failures classified
//! into [`Fault`]s instead of taking the runtime down.
//!
//! Every call into a module (instantiation included) is bounded by the
//! module's `max_time_per_call_ms`, wherever the guest spends that time:
//! - running wasm: the epoch callback makes the guest yield to the executor
//!   every [`EPOCH_TICK`], so a looping module shares its thread instead of
//!   holding it, and the deadline below can fire;
//! - waiting in a host call (a WASI poll such as a sleep, or a blocking
//!   capability queued on the node's pool): the call is an async future,
//!   dropped when the deadline passes.
//!
//! Either way the fault is a [`FaultKind::Timeout`] and the instance is
//! thrown away: a call dropped halfway leaves its store unusable.

use crate::bindings::inspector::Inspector;
use crate::bindings::specialist::Specialist;
use crate::bindings::types::{Diagnosis, Output};
use crate::engine::LinkedModule;
use crate::host::HostState;
use agad_protocol::message::FaultKind;
use std::future::Future;
use std::time::Duration;
use wasmtime::{Store, UpdateDeadline};

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
    deadline: Duration,
}

impl InspectorInstance {
    /// Instantiates `module` with `host` as the store's data.
    pub async fn new(module: &LinkedModule, host: HostState) -> Result<InspectorInstance, Fault> {
        let (mut store, instance, deadline) = instantiate(module, host).await?;
        let bindings = Inspector::new(&mut store, &instance).map_err(|e| Fault {
            kind: FaultKind::Trap,
            message: format!("component does not export the inspector world: {e:#}"),
        })?;
        Ok(InspectorInstance {
            store,
            bindings,
            deadline,
        })
    }

    pub async fn init(&mut self, config: &[(String, String)]) -> Result<(), InitError> {
        let config = config.to_vec();
        let call = self.bindings.call_init(&mut self.store, &config);
        match bounded(self.deadline, call).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(refusal))) => Err(InitError::Config(refusal)),
            Ok(Err(e)) => Err(classify(&self.store, e).into()),
            Err(timeout) => Err(timeout.into()),
        }
    }

    /// The capabilities this instance holds (to look at, between calls).
    pub fn host(&self) -> &HostState {
        self.store.data()
    }

    /// One tick. After a fault the instance must be dropped.
    pub async fn tick(&mut self) -> Result<Output, Fault> {
        let call = self.bindings.call_tick(&mut self.store);
        match bounded(self.deadline, call).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(e)) => Err(classify(&self.store, e)),
            Err(timeout) => Err(timeout),
        }
    }
}

/// `call` within `deadline`, or the timeout fault.
async fn bounded<T>(deadline: Duration, call: impl Future<Output = T>) -> Result<T, Fault> {
    tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| Fault {
            kind: FaultKind::Timeout,
            message: format!(
                "call exceeded max_time_per_call_ms ({} ms) and was interrupted",
                deadline.as_millis()
            ),
        })
}

/// A store with the module's memory cap and cooperative scheduling, and an
/// instance in it (its start functions bounded by the deadline too).
async fn instantiate(
    module: &LinkedModule,
    host: HostState,
) -> Result<(Store<HostState>, wasmtime::component::Instance, Duration), Fault> {
    let limits = module.limits;
    let deadline = Duration::from_millis(limits.max_time_per_call_ms.max(1));
    let mut store = Store::new(module.pre.engine(), host);
    store.limiter(|s| &mut s.limits);
    // Every epoch tick, wasm yields to the executor (`tokio::task::yield_now`
    // goes to the back of the queue): other modules and the node's own tasks
    // run, and the deadline timer gets its chance.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| {
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    let instance = match bounded(deadline, module.pre.instantiate_async(&mut store)).await {
        Ok(Ok(instance)) => instance,
        Ok(Err(e)) => return Err(classify(&store, e)),
        Err(timeout) => return Err(timeout),
    };
    Ok((store, instance, deadline))
}

/// A specialist: instantiated for one `run`, under the same limits.
pub struct SpecialistInstance {
    store: Store<HostState>,
    bindings: Specialist,
    deadline: Duration,
}

impl SpecialistInstance {
    pub async fn new(module: &LinkedModule, host: HostState) -> Result<SpecialistInstance, Fault> {
        let (mut store, instance, deadline) = instantiate(module, host).await?;
        let bindings = Specialist::new(&mut store, &instance).map_err(|e| Fault {
            kind: FaultKind::Trap,
            message: format!("component does not export the specialist world: {e:#}"),
        })?;
        Ok(SpecialistInstance {
            store,
            bindings,
            deadline,
        })
    }

    /// Runs once; `Ok(Err(reason))` is the specialist's own refusal or failure.
    pub async fn run(
        mut self,
        args: &[(String, String)],
    ) -> Result<Result<Diagnosis, String>, Fault> {
        let args = args.to_vec();
        let call = self.bindings.call_run(&mut self.store, &args);
        match bounded(self.deadline, call).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(classify(&self.store, e)),
            Err(timeout) => Err(timeout),
        }
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

/// The trap's own cause (`wasm trap: call stack exhausted`), and the
/// innermost guest function with a name, if the module kept its names.
///
/// Not the first line of the whole chain: with a backtrace recorded, that
/// is wasmtime's `error while executing at wasm backtrace:`, which hid the
/// cause from every fault report.
fn root_message(error: &wasmtime::Error) -> String {
    let root = error.root_cause().to_string();
    let cause = root.lines().next().unwrap_or_default();
    let function = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|trace| trace.frames().iter().find_map(|f| f.func_name()));
    match function {
        Some(function) => format!("{cause} (in {function})"),
        None => cause.to_owned(),
    }
}
