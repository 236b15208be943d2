//! The top manager and a domain manager in this one process, through their
//! `run(listener, shutdown)` entry points, over real mutual TLS on loopback:
//! enrollment by ticket, activation, an acknowledged replica, and a shutdown
//! that ends every session and returns. No `agad` process is started.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_gerente_mor::admin::{self, Answer, Request};
use agad_net::uplink::UplinkConfig;
use agad_net::{Identity, TlsAcceptor, TrustAnchor, client_config, init_ca, issue, server_config};
use agad_protocol::SecretKey;
use agad_protocol::wire::Role;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(60);

fn identity(pki: &Path, name: &str) -> Identity {
    Identity::load(
        &pki.join(format!("{name}.crt")),
        &pki.join(format!("{name}.key")),
    )
    .unwrap()
}

async fn ask(mor_dir: &Path, request: Request) -> Answer {
    admin::request(mor_dir, &request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_is_enrolled_activated_and_replicated_then_both_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    init_ca(&pki, "in-process").unwrap();
    issue(&pki, Role::Mor, "mor", &pki).unwrap();
    issue(&pki, Role::Dominio, "s1", &pki).unwrap();
    let trust = TrustAnchor::load(&pki.join("ca.crt")).unwrap();
    let publisher = SecretKey::generate();
    let (stop, shutdown) = watch::channel(false);

    let mor_dir = dir.path().join("mor");
    let mor_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mor_address = mor_listener.local_addr().unwrap().to_string();
    let mor = tokio::spawn(agad_gerente_mor::run(
        agad_gerente_mor::MorConfig {
            data_dir: mor_dir.clone(),
            acceptor: TlsAcceptor::from(server_config(&identity(&pki, "mor"), &trust).unwrap()),
            trusted: vec![publisher.public()],
            children: Default::default(),
            limits: Default::default(),
            retention: None,
        },
        mor_listener,
        shutdown.clone(),
    ));
    tokio::time::timeout(PATIENCE, async {
        while !agad_gerente_mor::admin_socket(&mor_dir).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the top manager never opened its admin socket");

    let topology = "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n";
    let Answer::TopologyDiff { applied: true, .. } = ask(
        &mor_dir,
        Request::TopologyApply {
            file: "t.toml".into(),
            text: topology.into(),
            dry_run: false,
        },
    )
    .await
    else {
        panic!("topology not applied")
    };
    let Answer::Ticket { ticket, .. } =
        ask(&mor_dir, Request::EnrollTicket { name: "s1".into() }).await
    else {
        panic!("no ticket")
    };

    let station_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let station = tokio::spawn(agad_gerente_dominio::run(
        agad_gerente_dominio::DominioConfig {
            data_dir: dir.path().join("s1"),
            uplink: UplinkConfig {
                parents: vec![mor_address],
                tls: client_config(&identity(&pki, "s1"), &trust).unwrap(),
                role: Role::Dominio,
                ticket: Some(ticket),
                keepalive: Duration::from_millis(500),
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
            },
            acceptor: TlsAcceptor::from(server_config(&identity(&pki, "s1"), &trust).unwrap()),
            consolidation_grace: Duration::from_secs(1),
            children: Default::default(),
            limits: Default::default(),
            trusted: vec![publisher.public()],
        },
        station_listener,
        shutdown.clone(),
    ));

    // The ticket approves; activation is the operator's.
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Answer::Member(_) =
                ask(&mor_dir, Request::EnrollActivate { name: "s1".into() }).await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("s1 never became activatable");

    let domain = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Answer::Status(status) = ask(&mor_dir, Request::Status).await
                && let Some(d) = status.domains.into_iter().next()
                && d.station.as_deref() == Some("s1")
                && d.replica_acked.is_some()
                // The station's own view, from its next keep-alive.
                && d.components.iter().any(|c| matches!(
                    &c.component,
                    agad_protocol::wire::Component::Domain { name: Some(n), .. } if n == "d1"
                ))
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("d1 was never served by s1 with an acknowledged replica, in force at s1");
    assert_eq!(domain.replica_acked, domain.replica_sent);
    // Shutdown ends every session and both `run`s return.
    stop.send(true).unwrap();
    for (what, task) in [("top manager", mor), ("domain manager", station)] {
        tokio::time::timeout(PATIENCE, task)
            .await
            .unwrap_or_else(|_| panic!("the {what} did not return after shutdown"))
            .unwrap()
            .unwrap();
    }
}
