//! Accepting children: TLS handshake per connection on its own task, so a
//! peer that stalls or fails the handshake never holds up the others.

use crate::conn::{self, Connection};
use std::future::Future;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Accepts until `shutdown`, handing every authenticated peer to `handle`.
/// Refused handshakes (no certificate, another CA, garbage) are logged with
/// their reason and cost nothing else.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handle: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Connection) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            match conn::accept(&acceptor, tcp).await {
                Ok(accepted) => handle(accepted).await,
                Err(e) => tracing::warn!(%address, "connection refused: {e}"),
            }
        });
    }
}
