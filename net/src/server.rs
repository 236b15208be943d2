//! Accepting children: the TLS handshake of each connection on its own task,
//! so a peer that stalls never holds up the others, with bounds on what
//! strangers may cost, and a shutdown that ends every session and waits for
//! it (mini-redis' server loop is the model).

use crate::conn::{self, Connection};
use crate::rate::{RateByKey, Verdict};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// What one listener accepts at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, authenticated or not.
    pub max_connections: usize,
    /// TLS handshakes in flight: unauthenticated peers cost CPU and memory.
    pub max_handshakes: usize,
    /// ... of which from one source address: one host cannot take them all.
    pub max_handshakes_per_source: usize,
    /// How long `serve` waits for sessions to end after shutdown.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 60_000,
            max_handshakes: 256,
            max_handshakes_per_source: 32,
            drain: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Limits for a process that may hold `open_files` descriptors: room
    /// is kept for its bases, logs, uplink and admin socket, so a flood of
    /// connections waits in the kernel's backlog instead of leaving the
    /// manager unable to open a file.
    pub fn for_open_files(open_files: u64) -> Limits {
        const RESERVED: u64 = 256;
        Limits {
            max_connections: open_files.saturating_sub(RESERVED).clamp(16, 1 << 20) as usize,
            ..Limits::default()
        }
    }
}

/// Accepts until `shutdown`, handing every authenticated peer to `handle`
/// with a shutdown receiver it must honour; then waits (up to
/// `limits.drain`) until every handler finished. Refused handshakes (no
/// certificate, another CA, garbage) are logged with their reason.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
    handle: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Connection, watch::Receiver<bool>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let per_source = Arc::new(PerSource::default());
    // Refusals are logged per source address, a bounded number an hour.
    let log = Arc::new(RateByKey::log_lines());
    let mut tasks = JoinSet::new();
    loop {
        // Wait for a free slot before accepting: a full server leaves new
        // peers in the kernel's backlog instead of spending descriptors.
        let slot = tokio::select! {
            slot = connections.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (tcp, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let source = address.ip();
        let Some(from_source) = per_source.enter(source, limits.max_handshakes_per_source) else {
            if let Verdict::Allowed { suppressed } = log.check(&source.to_string()) {
                tracing::warn!(%address, suppressed, "refused: {} TLS handshakes from this address already in flight", limits.max_handshakes_per_source);
            }
            continue;
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            if let Verdict::Allowed { suppressed } = log.check(&source.to_string()) {
                tracing::warn!(%address, suppressed, "refused: {} TLS handshakes already in flight", limits.max_handshakes);
            }
            continue;
        };
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        let log = log.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let accepted = conn::accept(&acceptor, tcp).await;
            drop(handshake);
            drop(from_source);
            match accepted {
                Ok(connection) => handle(connection, shutdown).await,
                Err(e) => {
                    if let Verdict::Allowed { suppressed } = log.check(&source.to_string()) {
                        tracing::warn!(%address, suppressed, "connection refused: {e}");
                    }
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "sessions still open {} s after shutdown: aborted",
            limits.drain.as_secs()
        );
        tasks.abort_all();
    }
}

/// Handshakes in flight per source address.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

/// A handshake counted against its source until dropped.
struct SourceSlot(Arc<PerSource>, IpAddr);

impl PerSource {
    fn enter(self: &Arc<Self>, source: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(source).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot(self.clone(), source))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.1);
            }
        }
    }
}
