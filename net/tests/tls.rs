//! Real TLS over loopback: who gets in, who is refused, and what each side
//! learns about the other.

#![allow(clippy::unwrap_used)]

use agad_net::{
    Connection, Identity, IssuedFiles, NetError, TlsAcceptor, TrustAnchor, accept, client_config,
    connect, init_ca, issue, server_config,
};
use agad_protocol::wire::{Control, Message, Role};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One deployment's CA in a temporary directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new(deployment: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), deployment).unwrap();
        Pki { dir }
    }

    fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn trust(&self) -> TrustAnchor {
        TrustAnchor::load(&self.ca_cert()).unwrap()
    }

    fn issue(&self, role: Role, name: &str) -> (IssuedFiles, Identity) {
        let out = self.dir.path().join("issued");
        let files = issue(self.dir.path(), role, name, &out).unwrap();
        let identity = Identity::load(&files.cert, &files.key).unwrap();
        (files, identity)
    }
}

/// Accepts one connection on a loopback port.
async fn serve_once(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, JoinHandle<Result<Connection, NetError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(&acceptor, tcp).await
    });
    (addr, task)
}

fn keep_alive() -> Message {
    Message::Control(Control::KeepAlive { components: vec![] })
}

fn ack(seq: u64) -> Message {
    Message::Control(Control::Ack { seqs: vec![seq] })
}

#[tokio::test]
async fn a_node_and_its_domain_manager_see_each_other_and_exchange_messages() {
    let pki = Pki::new("test");
    let (dom_files, dom) = pki.issue(Role::Dominio, "dom-a");
    let (node_files, node) = pki.issue(Role::Node, "node-1");

    let (addr, server) = serve_once(server_config(&dom, &pki.trust()).unwrap()).await;
    let mut client = connect(addr, client_config(&node, &pki.trust()).unwrap())
        .await
        .unwrap();
    let mut server = server.await.unwrap().unwrap();

    assert_eq!(server.peer.name, "node-1");
    assert_eq!(server.peer.role, Role::Node);
    assert_eq!(server.peer.fingerprint, node_files.fingerprint);
    assert_eq!(client.peer.name, "dom-a");
    assert_eq!(client.peer.role, Role::Dominio);
    assert_eq!(client.peer.fingerprint, dom_files.fingerprint);

    client.writer.send(&keep_alive()).await.unwrap();
    assert_eq!(server.reader.recv().await.unwrap(), Some(keep_alive()));
    server.writer.send(&ack(42)).await.unwrap();
    assert_eq!(client.reader.recv().await.unwrap(), Some(ack(42)));

    client.writer.shutdown().await.unwrap();
    assert_eq!(server.reader.recv().await.unwrap(), None);
}

#[tokio::test]
async fn a_client_certified_by_another_ca_is_refused() {
    let ours = Pki::new("ours");
    let theirs = Pki::new("theirs");
    let (_, dom) = ours.issue(Role::Dominio, "dom-a");
    let (_, intruder) = theirs.issue(Role::Node, "node-1");

    let (addr, server) = serve_once(server_config(&dom, &ours.trust()).unwrap()).await;
    // The intruder trusts our CA, so its side of the handshake completes;
    // TLS 1.3 lets the server judge the client's certificate afterwards.
    let client = connect(addr, client_config(&intruder, &ours.trust()).unwrap()).await;

    let refused = server.await.unwrap();
    assert!(
        matches!(refused, Err(NetError::Handshake(_))),
        "{:?}",
        refused.err()
    );
    if let Ok(mut client) = client {
        let _ = client.writer.send(&keep_alive()).await;
        assert!(
            client.reader.recv().await.is_err(),
            "the server's refusal must reach the client"
        );
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new("test");
    let (_, dom) = pki.issue(Role::Dominio, "dom-a");
    let (addr, server) = serve_once(server_config(&dom, &pki.trust()).unwrap()).await;

    // A plain rustls client that trusts the CA and asks for the server's real
    // name, so that the only thing wrong with it is the missing certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca_cert()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _client = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("dom-a").unwrap(), tcp)
        .await;

    let refused = server.await.unwrap();
    let Err(NetError::Handshake(reason)) = refused else {
        panic!(
            "accepted a client without a certificate: {:?}",
            refused.err()
        );
    };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
}

#[tokio::test]
async fn a_server_certified_by_another_ca_is_refused_by_the_client() {
    let ours = Pki::new("ours");
    let theirs = Pki::new("theirs");
    let (_, node) = ours.issue(Role::Node, "node-1");
    let (_, impostor) = theirs.issue(Role::Dominio, "dom-a");

    // The impostor accepts our clients; only the client's check can stop it.
    let (addr, server) = serve_once(server_config(&impostor, &ours.trust()).unwrap()).await;
    let refused = connect(addr, client_config(&node, &ours.trust()).unwrap()).await;
    let Err(NetError::Handshake(reason)) = refused else {
        panic!("trusted a server from another CA");
    };
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn a_stalled_handshake_times_out() {
    let pki = Pki::new("test");
    let (_, dom) = pki.issue(Role::Dominio, "dom-a");
    let (addr, server) = serve_once(server_config(&dom, &pki.trust()).unwrap()).await;
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Paused time jumps to the next timer once every task is idle.
    tokio::time::pause();
    let result = server.await.unwrap();
    assert!(
        matches!(result, Err(NetError::Timeout)),
        "{:?}",
        result.err()
    );
}
