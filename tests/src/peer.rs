//! A peer written by hand, for tests that play an attacker against real
//! `agad` processes: raw TLS as any certificate of a [`Deployment`], frames
//! built byte by byte, and what the process under attack costs.

use crate::hierarchy::Deployment;
use agad_net::{Identity, TrustAnchor, client_config};
use agad_protocol::message::{Alarm, Comparison, Severity};
use agad_protocol::wire::{Control, HEADER_LEN, Message, PROTOCOL_VERSION, Role};
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The certificate and key of `name`, issued earlier by `d.issue`.
pub fn identity(d: &Deployment, name: &str) -> anyhow::Result<Identity> {
    Ok(Identity::load(
        &d.path(&format!("pki/{name}.crt")),
        &d.path(&format!("pki/{name}.key")),
    )?)
}

pub fn trust(d: &Deployment) -> anyhow::Result<TrustAnchor> {
    Ok(TrustAnchor::load(&d.path("pki/ca.crt"))?)
}

/// A raw TLS stream to `address` as `name`: frames are written by hand.
pub async fn raw_client(
    d: &Deployment,
    name: &str,
    address: &str,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let config = client_config(&identity(d, name)?, &trust(d)?)?;
    let tcp = TcpStream::connect(address).await?;
    Ok(TlsConnector::from(config)
        .connect(ServerName::try_from("agad")?, tcp)
        .await?)
}

/// One frame with a plain (undeflated) body of `bincode` bytes.
pub fn frame(bincode: &[u8]) -> Vec<u8> {
    packed_frame(0, bincode)
}

/// One frame whose body is `packing` (0 plain, 1 deflated) then `bytes`.
pub fn packed_frame(packing: u8, bytes: &[u8]) -> Vec<u8> {
    let len = u32::try_from(bytes.len() + 1).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + 1 + bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.push(packing);
    out.extend_from_slice(bytes);
    out
}

/// Reads what the peer sends until it closes (or is silent for 30 s); the
/// messages that decoded.
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(stream: S) -> Vec<Message> {
    let mut reader = agad_net::FrameReader::new(stream);
    let mut got = Vec::new();
    while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await {
        got.push(m);
    }
    got
}

/// A process's peak resident memory (VmHWM), in bytes.
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

pub fn hello(role: Role, ticket: Option<String>) -> Message {
    Message::Control(Control::Hello {
        role,
        software: "hostile-test".into(),
        ticket,
        modules_held: Vec::new(),
        keepalive_ms: 1000,
        serving: None,
        advertise: Vec::new(),
        generation: 0,
    })
}

/// A raised alarm with the given id, about `node`, from module `rogue`.
pub fn alarm(node: &str, id: String) -> Alarm {
    Alarm {
        id,
        node: node.into(),
        module: "rogue".into(),
        provenance: Default::default(),
        area: agad_protocol::Area::Fault,
        key: "k".into(),
        metric: "m".into(),
        subject: String::new(),
        severity: Severity::Critical,
        raised: true,
        value: 1.0,
        threshold: 0.0,
        comparison: Comparison::Above,
        message: "forged".into(),
        time_ms: 1,
    }
}

/// A current-thread tokio runtime for a test's raw peers.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
