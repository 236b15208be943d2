//! The hierarchy in this one process, through the `run(listener, shutdown)`
//! entry points of the top manager, the domain manager and the node, over
//! real mutual TLS on loopback. These are the hierarchy tests that need no
//! separate process: no `agad` is started, and each ends with a shutdown
//! that must end every session and return.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_gerente_mor::admin::{self, Answer, Request};
use agad_net::uplink::UplinkConfig;
use agad_net::{Identity, TlsAcceptor, TrustAnchor, client_config, init_ca, issue, server_config};
use agad_protocol::wire::{Component, Enrollment, Role, State};
use agad_protocol::{Capability, SecretKey};
use agad_runtime::{Node, NodeSettings};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(60);

/// A CA, a publisher key, and every element started so far with the one
/// shutdown signal they share.
struct Hierarchy {
    dir: tempfile::TempDir,
    trust: TrustAnchor,
    publisher: SecretKey,
    stop: watch::Sender<bool>,
    elements: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
}

impl Hierarchy {
    fn new() -> Hierarchy {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        init_ca(&pki, "in-process").unwrap();
        let trust = TrustAnchor::load(&pki.join("ca.crt")).unwrap();
        Hierarchy {
            dir,
            trust,
            publisher: SecretKey::generate(),
            stop: watch::channel(false).0,
            elements: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn identity(&self, role: Role, name: &str) -> Identity {
        let pki = self.path("pki");
        issue(&pki, role, name, &pki).unwrap();
        Identity::load(
            &pki.join(format!("{name}.crt")),
            &pki.join(format!("{name}.key")),
        )
        .unwrap()
    }

    fn uplink(&self, identity: &Identity, role: Role, parent: &str) -> UplinkConfig {
        UplinkConfig {
            parents: vec![parent.to_owned()],
            tls: client_config(identity, &self.trust).unwrap(),
            role,
            ticket: None,
            keepalive: Duration::from_millis(500),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
        }
    }

    fn spawn(
        &mut self,
        name: &str,
        run: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.elements.push((name.to_owned(), tokio::spawn(run)));
    }

    /// Starts the top manager; returns its address once its admin socket is open.
    async fn start_mor(&mut self) -> String {
        let identity = self.identity(Role::Mor, "mor");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let config = agad_gerente_mor::MorConfig {
            data_dir: self.path("mor"),
            acceptor: TlsAcceptor::from(server_config(&identity, &self.trust).unwrap()),
            trusted: vec![self.publisher.public()],
            children: Default::default(),
            limits: Default::default(),
            retention: None,
            takeover_grace: std::time::Duration::from_secs(5),
            guardian: Default::default(),
            attest_every: Duration::from_secs(60),
            webhooks: Vec::new(),
            web: None,
        };
        let shutdown = self.stop.subscribe();
        self.spawn(
            "top manager",
            agad_gerente_mor::run(config, listener, shutdown),
        );
        let socket = agad_gerente_mor::admin_socket(&self.path("mor"));
        until("the top manager's admin socket", async || {
            socket.exists().then_some(())
        })
        .await;
        address
    }

    /// Starts a domain manager under `parent`; returns its address.
    async fn start_station(&mut self, name: &str, parent: &str, ticket: Option<String>) -> String {
        let identity = self.identity(Role::Dominio, name);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let config = agad_gerente_dominio::DominioConfig {
            data_dir: self.path(name),
            uplink: UplinkConfig {
                ticket,
                ..self.uplink(&identity, Role::Dominio, parent)
            },
            acceptor: TlsAcceptor::from(server_config(&identity, &self.trust).unwrap()),
            consolidation_grace: Duration::from_secs(1),
            children: Default::default(),
            limits: Default::default(),
            trusted: vec![self.publisher.public()],
            advertise: Vec::new(),
            guardian: Default::default(),
            attest_every: Duration::from_secs(60),
        };
        let shutdown = self.stop.subscribe();
        self.spawn(name, agad_gerente_dominio::run(config, listener, shutdown));
        address
    }

    /// Starts a managed node under the domain manager at `dominio`, with no ticket.
    fn start_node(&mut self, name: &str, dominio: &str) {
        let identity = self.identity(Role::Node, name);
        let uplink = self.uplink(&identity, Role::Node, dominio);
        let settings = NodeSettings {
            name: name.to_owned(),
            agents: Vec::new().into(),
            policy: Capability::ALL.to_vec(),
            host_policy: Default::default(),
            default_period: Duration::from_secs(1),
            restart: Default::default(),
            ceilings: Default::default(),
            output: Default::default(),
            disk: Default::default(),
            crash_loop: Default::default(),
            integrity: Default::default(),
        };
        let node = Node::open(settings, vec![self.publisher.public()], &self.path(name)).unwrap();
        let shutdown = self.stop.subscribe();
        self.spawn(name, agad_runtime::managed::run(node, uplink, shutdown));
    }

    async fn ask(&self, request: Request) -> Answer {
        admin::request(&self.path("mor"), &request).await.unwrap()
    }

    async fn apply(&self, topology: &str) -> Answer {
        self.ask(Request::TopologyApply {
            file: "topology.toml".into(),
            text: topology.into(),
            dry_run: false,
        })
        .await
    }

    async fn topology(&self) -> String {
        let Answer::Topology { text, .. } = self.ask(Request::TopologyShow).await else {
            panic!("no topology")
        };
        text
    }

    /// The state of `component` in the keep-alives of the station serving `domain`.
    async fn component(&self, domain: &str, component: &Component) -> Option<State> {
        let Answer::Status(status) = self.ask(Request::Status).await else {
            panic!("no status")
        };
        let d = status.domains.into_iter().find(|d| d.domain == domain)?;
        d.components
            .into_iter()
            .find(|c| &c.component == component)
            .map(|c| c.state)
    }

    /// Signals shutdown: every element must return, and return Ok.
    async fn shut_down(self) {
        self.stop.send(true).unwrap();
        for (what, task) in self.elements {
            tokio::time::timeout(PATIENCE, task)
                .await
                .unwrap_or_else(|_| panic!("{what} did not return after shutdown"))
                .unwrap()
                .unwrap_or_else(|e| panic!("{what} failed: {e:#}"));
        }
    }
}

/// Polls `probe` until it finds something, for at most `PATIENCE`.
async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_is_enrolled_activated_and_replicated_then_both_shut_down() {
    let mut h = Hierarchy::new();
    let mor = h.start_mor().await;
    let Answer::TopologyDiff { applied: true, .. } = h
        .apply("[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n")
        .await
    else {
        panic!("topology not applied")
    };
    let Answer::Ticket { ticket, .. } = h.ask(Request::EnrollTicket { name: "s1".into() }).await
    else {
        panic!("no ticket")
    };
    h.start_station("s1", &mor, Some(ticket)).await;

    // The ticket approves; activation is the operator's.
    until("s1 to become activatable", async || {
        match h.ask(Request::EnrollActivate { name: "s1".into() }).await {
            Answer::Member(_) => Some(()),
            _ => None,
        }
    })
    .await;

    let domain = until(
        "d1 served by s1 with an acknowledged replica, in force at s1",
        async || {
            let Answer::Status(status) = h.ask(Request::Status).await else {
                return None;
            };
            status.domains.into_iter().find(|d| {
                d.station.as_deref() == Some("s1")
                    && d.replica_acked.is_some()
                    // The station's own view, from its next keep-alive.
                    && d.components.iter().any(|c| matches!(
                        &c.component,
                        Component::Domain { name: Some(n), .. } if n == "d1"
                    ))
            })
        },
    )
    .await;
    assert_eq!(domain.replica_acked, domain.replica_sent);
    h.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_topology_is_refused_whole_with_file_and_line() {
    let mut h = Hierarchy::new();
    h.start_mor().await;
    let good = "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n[[node]]\nname = \"n1\"\ndomain = \"d1\"\n";
    let Answer::TopologyDiff { applied: true, .. } = h.apply(good).await else {
        panic!("the valid topology was not applied")
    };
    let shown = h.topology().await;

    // Line 10 names a domain that does not exist; the node on line 6 alone would be fine.
    let bad = "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n[[node]]\nname = \"n2\"\ndomain = \"d1\"\n[[node]]\nname = \"n3\"\ndomain = \"nowhere\"\n";
    let Answer::Error(error) = h.apply(bad).await else {
        panic!("an invalid topology was accepted")
    };
    assert!(
        error.contains("topology.toml:10:") && error.contains("nowhere"),
        "{error}"
    );
    assert_eq!(h.topology().await, shown, "nothing half-applied");

    // A dry run shows the difference and changes nothing.
    let more = format!("{good}\n[[node]]\nname = \"n2\"\ndomain = \"d1\"\n");
    let Answer::TopologyDiff {
        changes,
        applied: false,
        ..
    } = h
        .ask(Request::TopologyApply {
            file: "more.toml".into(),
            text: more,
            dry_run: true,
        })
        .await
    else {
        panic!("a dry run applied or failed")
    };
    assert!(
        changes.iter().any(|c| c.contains("+ node n2")),
        "{changes:?}"
    );
    assert_eq!(h.topology().await, shown, "a dry run changes nothing");
    h.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_ticket_waits_for_approval_then_activation() {
    let mut h = Hierarchy::new();
    let mor = h.start_mor().await;
    h.apply("[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n[[node]]\nname = \"n1\"\ndomain = \"d1\"\n")
        .await;
    let Answer::Ticket { ticket, .. } = h.ask(Request::EnrollTicket { name: "s1".into() }).await
    else {
        panic!("no ticket")
    };
    let s1 = h.start_station("s1", &mor, Some(ticket)).await;
    until("s1 activated", async || {
        matches!(
            h.ask(Request::EnrollActivate { name: "s1".into() }).await,
            Answer::Member(_)
        )
        .then_some(())
    })
    .await;
    h.start_node("n1", &s1);

    // The node's request travels up to the top manager and waits there.
    let request = until("n1's request among the pending", async || {
        let Answer::Members(members) = h.ask(Request::EnrollList).await else {
            return None;
        };
        members
            .into_iter()
            .find(|m| m.name == "n1" && m.state == Enrollment::Pending)
    })
    .await;
    assert_eq!(request.role, Role::Node);
    assert_eq!(request.fingerprint.len(), 64, "{request:?}");
    let n1 = Component::Node { name: "n1".into() };
    let Answer::Error(error) = h.ask(Request::EnrollActivate { name: "n1".into() }).await else {
        panic!("activation before approval was accepted")
    };
    assert!(error.contains("n1"), "{error}");

    let Answer::Member(approved) = h
        .ask(Request::EnrollApprove {
            fingerprint: request.fingerprint[..12].into(),
        })
        .await
    else {
        panic!("approval by a fingerprint prefix refused")
    };
    assert_eq!(approved.state, Enrollment::Inactive);
    // Approved is not active: the station keeps refusing it (its keep-alives
    // meanwhile say it is not connected).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = h.component("d1", &n1).await;
    assert!(
        !matches!(before, Some(State::Connected { .. })),
        "approved but not active, yet connected: {before:?}"
    );

    let Answer::Member(active) = h.ask(Request::EnrollActivate { name: "n1".into() }).await else {
        panic!("activation after approval refused")
    };
    assert_eq!(active.state, Enrollment::Active);
    until("n1 connected to s1", async || {
        matches!(h.component("d1", &n1).await, Some(State::Connected { .. })).then_some(())
    })
    .await;
    h.shut_down().await;
}
