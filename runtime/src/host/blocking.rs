//! Blocking host work, bounded: the capabilities that may wait on the
//! kernel, the network or the disk (os, snmp, state) do that work on tokio's
//! blocking threads, never on the threads that run modules, and under two
//! limits: one call at a time per module (across its restarts, so a module
//! whose stuck call was abandoned at its deadline cannot start another one
//! next to it) and [`HostPool::DEFAULT_THREADS`] calls at a time per node (so
//! stuck calls can never take every blocking thread the node itself needs
//! for its outbox, deployments and compilation).
//!
//! The guest waits for the call asynchronously: when the module's deadline
//! passes, the node drops the call and counts a timeout, whether the work
//! was still waiting for a permit or running. Work already running is not
//! killed (a thread cannot be): it finishes in the background and keeps its
//! permits until then, which is exactly what keeps the bounds honest.

use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// The permits one module's blocking host calls take.
#[derive(Clone, Debug)]
pub struct HostPool {
    node: Arc<Semaphore>,
    module: Arc<Semaphore>,
}

impl HostPool {
    /// Blocking host calls a node runs at once by default. A module holds
    /// at most one, so this many modules can all be stuck in a host call
    /// and every other module still gets its threads; and it is well under
    /// the blocking-thread limit of an `agad node` process (96), so the
    /// node's own blocking work (outbox, deployments) always finds one.
    pub const DEFAULT_THREADS: usize = 64;

    /// The node-wide limit, shared by every module of one node.
    pub fn node_limit(threads: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(threads.max(1)))
    }

    /// A module's permits: its own (one call at a time) and the node's.
    pub fn for_module(node: Arc<Semaphore>) -> HostPool {
        HostPool {
            node,
            module: Arc::new(Semaphore::new(1)),
        }
    }

    /// A pool of its own, for a host state made outside any node (tools,
    /// benchmarks).
    pub fn standalone() -> HostPool {
        HostPool::for_module(HostPool::node_limit(HostPool::DEFAULT_THREADS))
    }
}

/// A capability whose calls run on the blocking pool.
pub struct Offloaded<T> {
    inner: Arc<Mutex<T>>,
    pool: HostPool,
}

impl<T: Send + 'static> Offloaded<T> {
    pub fn new(inner: T, pool: HostPool) -> Offloaded<T> {
        Offloaded {
            inner: Arc::new(Mutex::new(inner)),
            pool,
        }
    }

    /// A quick look at the capability from the async side; `None` while a
    /// blocking call holds it (the look is skipped rather than waited for).
    pub fn peek<R>(&self, look: impl FnOnce(&T) -> R) -> Option<R> {
        self.inner.try_lock().ok().map(|guard| look(&guard))
    }

    /// Runs `work` on a blocking thread once both permits are free.
    pub async fn run<R: Send + 'static>(
        &self,
        call: &'static str,
        work: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> wasmtime::Result<R> {
        let module = self.pool.module.clone().acquire_owned().await?;
        let node = self.pool.node.clone().acquire_owned().await?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permits = (module, node);
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|e| wasmtime::format_err!("host call `{call}` failed on the node: {e}"))
    }
}
