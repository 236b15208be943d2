//! Accepting children: TLS handshake per connection on its own task, so a
//! peer that stalls or fails the handshake never holds up the others; and
//! serving one once it is admitted.

use crate::conn::{self, Connection, Writer};
use crate::tls::PeerIdentity;
use agad_protocol::wire::{Control, Enrollment, Message};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
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

/// Frames for one admitted peer: answers and pushes from elsewhere (a new
/// deployment, a replica) share one queue and one writer.
pub fn peer_queue() -> (mpsc::Sender<Message>, mpsc::Receiver<Message>) {
    mpsc::channel(256)
}

/// Serves an admitted peer until it closes, breaks the protocol or a frame
/// cannot be stored; returns why it ended. Frames are handled one at a time,
/// in order; alarms and reports on the blocking pool (handlers store them
/// with an fsync before they answer). The writer stops once every sender of `to_peer` is gone.
pub async fn serve_admitted<F>(
    mut incoming: mpsc::Receiver<Result<Message, String>>,
    mut writer: Writer,
    to_peer: mpsc::Sender<Message>,
    mut outgoing: mpsc::Receiver<Message>,
    handle: F,
) -> String
where
    F: Fn(Message) -> Result<Option<Message>, String> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if let Err(e) = writer.send(&message).await {
                tracing::info!("write to peer failed: {e}");
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let handle = Arc::new(handle);
    // Acknowledgements of frames that arrived together go back as one.
    let mut acks: Vec<u64> = Vec::new();
    loop {
        let next = if acks.is_empty() {
            incoming.recv().await
        } else {
            match incoming.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => {
                    let ack = Control::Ack {
                        seqs: std::mem::take(&mut acks),
                    };
                    if to_peer.send(Message::Control(ack)).await.is_err() {
                        return "writer gone".to_owned();
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        };
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => return e,
            None => {
                if !acks.is_empty() {
                    let _ = to_peer.try_send(Message::Control(Control::Ack { seqs: acks }));
                }
                return "closed".to_owned();
            }
        };
        let handled = match message {
            // Keep-alives and answers touch memory only: no thread hop.
            Message::Control(_) => handle(message),
            _ => {
                let handler = handle.clone();
                tokio::task::spawn_blocking(move || handler(message))
                    .await
                    .unwrap_or_else(|e| Err(format!("frame handling failed: {e}")))
            }
        };
        match handled {
            Ok(Some(Message::Control(Control::Ack { seqs }))) => acks.extend(seqs),
            Ok(Some(reply)) => {
                if to_peer.send(reply).await.is_err() {
                    return "writer gone".to_owned();
                }
            }
            Ok(None) => {}
            Err(e) => return e,
        }
    }
}

/// The first frame of a child: its ticket and the module hashes it holds;
/// `None` (logged) if it sent anything else.
pub async fn read_hello(
    incoming: &mut mpsc::Receiver<Result<Message, String>>,
    peer: &PeerIdentity,
) -> Option<(Option<String>, Vec<String>)> {
    match incoming.recv().await {
        Some(Ok(Message::Control(Control::Hello {
            ticket,
            modules_held,
            ..
        }))) => Some((ticket, modules_held)),
        other => {
            tracing::warn!(peer = %peer.name, "closing: expected a hello, got {other:?}");
            None
        }
    }
}

/// Tells a child why it is not admitted (it retries later), then closes.
pub async fn refuse(writer: &mut Writer, enrollment: Enrollment, reason: String) {
    let _ = writer
        .send(&Message::Control(Control::Welcome { enrollment, reason }))
        .await;
    let _ = writer.shutdown().await;
}
