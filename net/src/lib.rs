//! Links between AGAD levels: the deployment's certificates, mutual TLS and
//! message frames.
//!
//! For: creating the CA and issuing station certificates ([`pki`]), building
//! TLS 1.3 configurations in which both sides always authenticate ([`tls`]),
//! and carrying whole [`agad_protocol::wire::Message`]s over an
//! authenticated connection ([`conn`]). Not for: what the messages mean,
//! enrollment decisions, or reconnect policy; the managers own those.
//!
//! - [`pki`]: `init_ca`, `issue`, certificate fingerprints.
//! - [`tls`]: [`Identity`], [`TrustAnchor`], server and client configs,
//!   [`PeerIdentity`] read from a verified certificate.
//! - [`outbox`]: the durable store-and-forward queue of alarms and reports.
//! - [`uplink`]: an element's link to its parent (reconnect, replay, keep-alive).
//! - [`server`]: accepting authenticated peers, bounded, with a shutdown
//!   that waits for every session.
//! - [`children`]: a manager's children — registry, session lifecycle,
//!   liveness and the typed events other parts subscribe to.
//! - [`liveness`]: accrual failure detection, used both ways on every link.
//! - [`fence`]: a child refuses a domain manager older than one it accepted.
//! - [`waiting`]: peers with a certificate not admitted yet, bounded in all
//!   and per certificate.
//! - [`rate`]: token buckets: a child's frame pace, log lines per peer.
//! - [`conn`]: [`accept`] and [`connect`] (handshake with a timeout), and
//!   [`FrameReader`] / [`FrameWriter`] over any async byte stream.

pub mod children;
pub mod conn;
pub mod fence;
pub mod liveness;
pub mod outbox;
pub mod pki;
pub mod rate;
pub mod server;
pub mod tls;
pub mod uplink;
pub mod waiting;

pub use conn::{
    Connection, FrameReader, FrameWriter, NetError, Reader, Writer, accept, connect, spawn_reader,
};
pub use pki::{CaFiles, IssuedFiles, PkiError, fingerprint, init_ca, issue, issue_for_hosts};
pub use tls::{Identity, PeerIdentity, TrustAnchor, client_config, peer_identity, server_config};
/// Re-exported so callers can wrap a [`server_config`] without depending on
/// tokio-rustls themselves.
pub use tokio_rustls::TlsAcceptor;
