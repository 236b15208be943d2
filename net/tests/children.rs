//! The children layer over real TLS on loopback: the session lifecycle and
//! its events, liveness both ways (a silent child, a silent parent), trust
//! (a node certificate posing as a parent, a wrong role), bounds and shutdown.
//! The parent here is a small test level; the layer, the uplink, TLS and the
//! outbox are the real ones.

#![allow(clippy::unwrap_used)]

use agad_net::children::{
    ChildEvent, ChildRef, Children, ChildrenConfig, Hello, Parent, SessionError, serve_child,
};
use agad_net::outbox::Outbox;
use agad_net::server::{Limits, serve};
use agad_net::tls::PeerIdentity;
use agad_net::uplink::{self, Downlink, Element, UplinkConfig};
use agad_net::{
    Connection, Identity, TlsAcceptor, TrustAnchor, accept, client_config, connect, init_ca, issue,
    server_config,
};
use agad_protocol::Area;
use agad_protocol::message::{Alarm, Comparison, Severity};
use agad_protocol::wire::{ComponentStatus, Control, Enrollment, Message, Queued, Role, Upward};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

/// Long enough for a loaded CI machine; the tests never measure time.
const PATIENCE: Duration = Duration::from_secs(30);

struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "children-test").unwrap();
        Pki { dir }
    }

    /// `name`'s certificate, issued on first use (a second connection of
    /// the same name uses the same certificate).
    fn identity(&self, role: Role, name: &str) -> Identity {
        let issued = self.dir.path().join("issued");
        let (cert, key) = (
            issued.join(format!("{name}.crt")),
            issued.join(format!("{name}.key")),
        );
        if !cert.exists() {
            issue(self.dir.path(), role, name, &issued).unwrap();
        }
        Identity::load(&cert, &key).unwrap()
    }

    fn trust(&self) -> TrustAnchor {
        TrustAnchor::load(&self.dir.path().join("ca.crt")).unwrap()
    }

    fn acceptor(&self, role: Role, name: &str) -> TlsAcceptor {
        TlsAcceptor::from(server_config(&self.identity(role, name), &self.trust()).unwrap())
    }

    fn client(&self, role: Role, name: &str) -> Arc<rustls::ClientConfig> {
        client_config(&self.identity(role, name), &self.trust()).unwrap()
    }
}

/// A level whose children are nodes: admits all but `stranger`, acknowledges
/// alarms (after checking their origin) and publishes them as stored.
struct TestLevel {
    children: Arc<Children<()>>,
}

impl Parent for TestLevel {
    type Data = ();

    fn children(&self) -> &Children<()> {
        &self.children
    }

    fn role(&self) -> Role {
        Role::Node
    }

    fn admit(&self, peer: &PeerIdentity, _hello: &Hello) -> Result<(), SessionError> {
        if peer.name == "stranger" {
            return Err(SessionError::NotAdmitted {
                enrollment: Enrollment::Pending,
                reason: "unknown here".into(),
            });
        }
        Ok(())
    }

    fn registered(&self, _child: &ChildRef) {}

    fn handle(&self, child: &ChildRef, message: Message) -> Result<Option<Message>, SessionError> {
        match message {
            Message::Alarm(Queued {
                seq,
                body: Upward::Alarm(alarm),
            }) if alarm.node == child.name => {
                self.children.publish(ChildEvent::AlarmStored {
                    child: child.clone(),
                    alarm: Arc::new(alarm),
                });
                Ok(Some(Message::Control(Control::Ack { seqs: vec![seq] })))
            }
            other => Err(SessionError::Protocol(format!("`{}`", other.kind()))),
        }
    }

    fn unregistered(&self, _child: &ChildRef, _data: (), _reason: &SessionError) {}
}

struct Level {
    level: Arc<TestLevel>,
    address: String,
    stop: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
    watching: tokio::task::JoinHandle<()>,
}

async fn start_level(pki: &Pki, config: ChildrenConfig) -> Level {
    let level = Arc::new(TestLevel {
        children: Arc::new(Children::new(config)),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, shutdown) = watch::channel(false);
    let watching = tokio::spawn(level.children.clone().watch(shutdown.clone()));
    let parent = level.clone();
    let serving = tokio::spawn(serve(
        listener,
        pki.acceptor(Role::Dominio, "station"),
        Limits::default(),
        move |connection, shutdown| serve_child(parent.clone(), connection, shutdown),
        shutdown,
    ));
    Level {
        level,
        address,
        stop,
        serving,
        watching,
    }
}

fn fast() -> ChildrenConfig {
    ChildrenConfig {
        check_every: Duration::from_millis(20),
        ..ChildrenConfig::new()
    }
}

async fn next_event(
    events: &mut broadcast::Receiver<ChildEvent>,
    what: &str,
    mut wanted: impl FnMut(&ChildEvent) -> bool,
) -> ChildEvent {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let event = events.recv().await.unwrap();
            if wanted(&event) {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event"))
}

fn alarm(node: &str) -> Alarm {
    Alarm {
        id: format!("{node}/cpu/1"),
        node: node.into(),
        module: "cpu-mem".into(),
        provenance: Default::default(),
        area: Area::Performance,
        key: "cpu".into(),
        metric: "cpu.usage".into(),
        subject: String::new(),
        severity: Severity::Major,
        raised: true,
        value: 95.0,
        threshold: 90.0,
        comparison: Comparison::Above,
        message: "cpu above 90".into(),
        time_ms: 1,
    }
}

struct Quiet;

impl Element for Quiet {
    fn modules_held(&self) -> Vec<String> {
        Vec::new()
    }
    fn components(&self) -> Vec<ComponentStatus> {
        Vec::new()
    }
}

fn uplink_config(pki: &Pki, name: &str, parents: Vec<String>) -> UplinkConfig {
    UplinkConfig {
        parents,
        tls: pki.client(Role::Node, name),
        role: Role::Node,
        ticket: None,
        keepalive: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
    }
}

/// A node's uplink in this process, with its own outbox.
struct Link {
    outbox: Outbox,
    downlink: mpsc::Receiver<Downlink>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

fn start_link(config: UplinkConfig) -> Link {
    let dir = tempfile::tempdir().unwrap();
    let db = agad_storage::Database::open(&dir.path().join("db")).unwrap();
    let outbox = Outbox::open(&db).unwrap();
    let (down_tx, downlink) = mpsc::channel(64);
    let (_up_tx, up_rx) = mpsc::channel(1);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(uplink::run(
        config,
        outbox.clone(),
        Arc::new(Quiet),
        down_tx,
        up_rx,
        shutdown,
    ));
    // Keep the command sender alive for the link's lifetime.
    std::mem::forget(_up_tx);
    Link {
        outbox,
        downlink,
        stop,
        task,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_child_goes_through_the_lifecycle_and_each_step_is_an_event() {
    let pki = Pki::new();
    let level = start_level(&pki, fast()).await;
    let mut events = level.level.children.subscribe();
    let link = start_link(uplink_config(&pki, "web-1", vec![level.address.clone()]));
    link.outbox.push(&Upward::Alarm(alarm("web-1"))).unwrap();

    let ChildEvent::Connected(child) = next_event(&mut events, "connected", |e| {
        matches!(e, ChildEvent::Connected(_))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!((child.name.as_str(), child.role), ("web-1", Role::Node));
    let stored = next_event(&mut events, "alarm stored", |e| {
        matches!(e, ChildEvent::AlarmStored { .. })
    })
    .await;
    let ChildEvent::AlarmStored { alarm: a, .. } = stored else {
        unreachable!()
    };
    assert_eq!(a.id, "web-1/cpu/1");
    next_event(
        &mut events,
        "keep-alive",
        |e| matches!(e, ChildEvent::KeepAlive { child: c, .. } if c.name == "web-1"),
    )
    .await;
    // The alarm was acknowledged, so the node's outbox let it go.
    tokio::time::timeout(PATIENCE, async {
        while !link.outbox.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the alarm was never acknowledged");
    assert!(level.level.children.child("web-1").is_some());

    link.stop.send(true).unwrap();
    let gone = next_event(&mut events, "disconnected", |e| {
        matches!(e, ChildEvent::Disconnected { .. })
    })
    .await;
    let ChildEvent::Disconnected { child: c, .. } = gone else {
        unreachable!()
    };
    assert_eq!(c, child);
    assert!(level.level.children.child("web-1").is_none());
    level.stop.send(true).unwrap();
}

/// The enrollment a parent's answer welcomes with, if it was a welcome.
fn welcome(answer: &Option<Message>) -> Option<Enrollment> {
    match answer {
        Some(Message::Control(Control::Welcome { enrollment, .. })) => Some(*enrollment),
        _ => None,
    }
}

/// Connects as `name` with a raw link, says hello promising a frame every
/// `keepalive`, and returns the link and the parent's answer.
async fn raw_child(
    pki: &Pki,
    role: Role,
    name: &str,
    address: &str,
    keepalive: Duration,
) -> (Connection, Option<Message>) {
    let mut link = connect(address, pki.client(role, name)).await.unwrap();
    link.writer
        .send(&Message::Control(Control::Hello {
            role,
            software: "test".into(),
            ticket: None,
            modules_held: Vec::new(),
            keepalive_ms: keepalive.as_millis() as u64,
            serving: None,
            advertise: Vec::new(),
            generation: 0,
        }))
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, link.reader.recv())
        .await
        .unwrap()
        .ok()
        .flatten();
    (link, answer)
}

#[tokio::test]
async fn a_silent_child_is_declared_stale_and_its_session_closed() {
    let pki = Pki::new();
    let level = start_level(&pki, fast()).await;
    let mut events = level.level.children.subscribe();
    // Says hello, then never sends again while its connection stays open
    // (as a stopped process or a partition would).
    let (_link, answer) = raw_child(
        &pki,
        Role::Node,
        "frozen",
        &level.address,
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(welcome(&answer), Some(Enrollment::Active), "{answer:?}");
    let stale = next_event(&mut events, "stale", |e| {
        matches!(e, ChildEvent::Stale { .. })
    })
    .await;
    let ChildEvent::Stale { child, silent, phi } = stale else {
        unreachable!()
    };
    assert_eq!(child.name, "frozen");
    assert!(phi >= 8.0, "{phi}");
    assert!(silent >= Duration::from_millis(200), "{silent:?}");
    let gone = next_event(&mut events, "disconnected", |e| {
        matches!(e, ChildEvent::Disconnected { .. })
    })
    .await;
    let ChildEvent::Disconnected { reason, .. } = gone else {
        unreachable!()
    };
    assert!(reason.contains("silent"), "{reason}");
    assert!(level.level.children.child("frozen").is_none());
    level.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_child_that_keeps_alive_is_never_stale() {
    let pki = Pki::new();
    let level = start_level(&pki, fast()).await;
    let mut events = level.level.children.subscribe();
    let link = start_link(uplink_config(&pki, "steady", vec![level.address.clone()]));
    next_event(&mut events, "connected", |e| {
        matches!(e, ChildEvent::Connected(_))
    })
    .await;
    // Fifteen keep-alive intervals, none judged late by either end (the
    // parent answers only some of them: `a_parent_answers_a_keep_alive_…`).
    let mut keep_alives = 0;
    while keep_alives < 15 {
        match next_event(&mut events, "keep-alive", |_| true).await {
            ChildEvent::KeepAlive { .. } => keep_alives += 1,
            ChildEvent::Stale { .. } | ChildEvent::Disconnected { .. } => {
                panic!("a child keeping alive was dropped")
            }
            _ => {}
        }
    }
    link.stop.send(true).unwrap();
    level.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_parent_answers_a_keep_alive_only_when_it_wrote_nothing_for_a_while() {
    let pki = Pki::new();
    let level = start_level(&pki, fast()).await;
    let interval = Duration::from_millis(100);
    let (link, answer) = raw_child(&pki, Role::Node, "quiet", &level.address, interval).await;
    assert_eq!(welcome(&answer), Some(Enrollment::Active), "{answer:?}");
    let Connection {
        mut writer, reader, ..
    } = link;
    let mut incoming = agad_net::conn::spawn_reader(reader);
    // 40 keep-alives, one per interval, and what comes back meanwhile.
    let sending = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(interval).await;
            writer
                .send(&Message::Control(Control::KeepAlive {
                    components: Vec::new(),
                }))
                .await
                .unwrap();
        }
        writer
    });
    let mut answered = Vec::new();
    let started = std::time::Instant::now();
    while !sending.is_finished() {
        if let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_millis(20), incoming.recv()).await
        {
            assert!(
                matches!(frame, Message::Control(Control::KeepAlive { .. })),
                "{frame:?}"
            );
            answered.push(started.elapsed());
        }
    }
    // One answer per `PARENT_EVERY - 1` quiet intervals or so: 40 intervals
    // give about 6 (the first comes once 5 intervals have passed since the
    // welcome), not 40.
    let quiet = interval * (agad_net::liveness::PARENT_EVERY - 1);
    assert!(
        (4..=8).contains(&answered.len()),
        "{} answers to 40 keep-alives: {answered:?}",
        answered.len()
    );
    for pair in answered.windows(2) {
        assert!(pair[1] - pair[0] >= quiet - interval, "{answered:?}");
    }
    level.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_frame_in_no_hurry_rides_on_the_next_one_or_goes_at_its_deadline() {
    let pki = Pki::new();
    let level = start_level(&pki, fast()).await;
    let interval = Duration::from_secs(1);
    let (link, answer) = raw_child(&pki, Role::Node, "patient", &level.address, interval).await;
    assert_eq!(welcome(&answer), Some(Enrollment::Active), "{answer:?}");
    let Connection {
        mut writer, reader, ..
    } = link;
    let mut incoming = agad_net::conn::spawn_reader(reader);
    let challenge = |n: u8| Message::Control(Control::Attest { nonce: [n; 32] });
    let queue = |n: u8| {
        assert!(
            level.level.children.lock()["patient"].send_with_next(challenge(n)),
            "queued"
        );
    };

    // Waits while nothing else goes to the child...
    queue(1);
    let early = tokio::time::timeout(Duration::from_millis(500), incoming.recv()).await;
    assert!(early.is_err(), "left alone: {early:?}");
    // ... and leaves with the acknowledgement of the child's alarm, first.
    writer
        .send(&Message::Alarm(Queued {
            seq: 1,
            body: Upward::Alarm(alarm("patient")),
        }))
        .await
        .unwrap();
    assert_eq!(next(&mut incoming).await, challenge(1));
    assert_eq!(
        next(&mut incoming).await,
        Message::Control(Control::Ack { seqs: vec![1] })
    );

    // With nothing else to ride on, it still goes within `PARENT_EVERY`
    // intervals (here with the answer to a keep-alive after a quiet while).
    queue(2);
    let queued = std::time::Instant::now();
    let keeping_alive = tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let keep_alive = Message::Control(Control::KeepAlive {
                components: Vec::new(),
            });
            if writer.send(&keep_alive).await.is_err() {
                return;
            }
        }
    });
    assert_eq!(next(&mut incoming).await, challenge(2));
    let waited = queued.elapsed();
    assert!(
        waited <= interval * agad_net::liveness::PARENT_EVERY + Duration::from_millis(500),
        "{waited:?}"
    );
    keeping_alive.abort();
    level.stop.send(true).unwrap();
}

/// Why the link left its parent.
async fn left(link: &mut Link, parent: &str) -> String {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Downlink::Disconnected { reason }) = link.downlink.recv().await {
                return reason;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the child never left {parent}"))
}

/// The next message a reader task passes on.
async fn next(incoming: &mut mpsc::Receiver<Result<Message, agad_net::NetError>>) -> Message {
    tokio::time::timeout(PATIENCE, incoming.recv())
        .await
        .expect("a frame")
        .expect("open")
        .expect("a message")
}

/// A "parent" that welcomes a child and then never says anything again.
async fn silent_parent(pki: &Pki, role: Role) -> (String, tokio::task::JoinHandle<usize>) {
    impostor(pki, role, false).await
}

/// A "parent" that welcomes a child and then only answers its keep-alives
/// (if `answers`), acknowledging nothing; the task counts the frames.
async fn impostor(
    pki: &Pki,
    role: Role,
    answers: bool,
) -> (String, tokio::task::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let acceptor = pki.acceptor(role, "impostor");
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut link = accept(&acceptor, tcp).await.unwrap();
        let mut frames = 0;
        // Welcome whoever says hello, then stay silent; count what arrives.
        while let Ok(Ok(Some(frame))) =
            tokio::time::timeout(Duration::from_secs(5), link.reader.recv()).await
        {
            frames += 1;
            let answer = match frame {
                Message::Control(Control::Hello { .. }) => Control::Welcome {
                    enrollment: Enrollment::Active,
                    reason: String::new(),
                    activation: None,
                },
                Message::Control(Control::KeepAlive { .. }) if answers => Control::KeepAlive {
                    components: Vec::new(),
                },
                _ => continue,
            };
            if link.writer.send(&Message::Control(answer)).await.is_err() {
                break;
            }
        }
        frames
    });
    (address, task)
}

#[tokio::test]
async fn a_child_leaves_a_silent_parent_for_its_standby() {
    let pki = Pki::new();
    let (silent, _impostor) = silent_parent(&pki, Role::Dominio).await;
    let standby = start_level(&pki, fast()).await;
    let mut events = standby.level.children.subscribe();
    let mut link = start_link(uplink_config(
        &pki,
        "web-2",
        vec![silent.clone(), standby.address.clone()],
    ));
    let reason = left(&mut link, "its silent parent").await;
    assert!(reason.contains("silent"), "{reason}");
    next_event(
        &mut events,
        "connected to the standby",
        |e| matches!(e, ChildEvent::Connected(c) if c.name == "web-2"),
    )
    .await;
    link.stop.send(true).unwrap();
    standby.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_child_leaves_a_parent_that_talks_but_acknowledges_nothing() {
    let pki = Pki::new();
    let (stuck, _impostor) = impostor(&pki, Role::Dominio, true).await;
    let standby = start_level(&pki, fast()).await;
    let mut events = standby.level.children.subscribe();
    let mut link = start_link(uplink_config(
        &pki,
        "web-3",
        vec![stuck.clone(), standby.address.clone()],
    ));
    link.outbox.push(&Upward::Alarm(alarm("web-3"))).unwrap();
    let reason = left(&mut link, "a parent that acknowledged nothing").await;
    assert!(reason.contains("nothing acknowledged"), "{reason}");
    // The standby has it.
    next_event(
        &mut events,
        "the alarm stored by the standby",
        |e| matches!(e, ChildEvent::AlarmStored { child, .. } if child.name == "web-3"),
    )
    .await;
    link.stop.send(true).unwrap();
    standby.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_node_certificate_is_never_accepted_as_a_parent() {
    let pki = Pki::new();
    let (impostor, frames) = silent_parent(&pki, Role::Node).await;
    let mut link = start_link(uplink_config(&pki, "web-3", vec![impostor]));
    let reason = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Downlink::Disconnected { reason }) = link.downlink.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("the node never refused its impostor parent");
    assert!(reason.contains("`node` certificate"), "{reason}");
    link.stop.send(true).unwrap();
    let _ = link.task.await;
    // Not a single frame (not even the hello, which lists held modules)
    // reached the impostor.
    assert_eq!(frames.await.unwrap(), 0);
}

#[tokio::test]
async fn a_wrong_role_a_refused_child_and_a_full_registry_are_turned_away() {
    let pki = Pki::new();
    let level = start_level(
        &pki,
        ChildrenConfig {
            max_children: 1,
            ..fast()
        },
    )
    .await;
    let mut events = level.level.children.subscribe();

    // A station certificate where nodes are expected: closed before any answer.
    let (_wrong, answer) = raw_child(
        &pki,
        Role::Dominio,
        "station-x",
        &level.address,
        Duration::from_secs(1),
    )
    .await;
    assert!(answer.is_none(), "{answer:?}");

    let (_stranger, answer) = raw_child(
        &pki,
        Role::Node,
        "stranger",
        &level.address,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(welcome(&answer), Some(Enrollment::Pending), "{answer:?}");

    let (_first, answer) = raw_child(
        &pki,
        Role::Node,
        "first",
        &level.address,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(welcome(&answer), Some(Enrollment::Active), "{answer:?}");
    let (_second, answer) = raw_child(
        &pki,
        Role::Node,
        "second",
        &level.address,
        Duration::from_secs(1),
    )
    .await;
    match answer {
        Some(Message::Control(Control::Welcome { reason, .. })) => {
            assert!(reason.contains("already connected"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Only `first` was ever registered.
    let ChildEvent::Connected(c) = next_event(&mut events, "connected", |e| {
        matches!(e, ChildEvent::Connected(_))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(c.name, "first");
    assert_eq!(level.level.children.lock().len(), 1);
    level.stop.send(true).unwrap();
}

#[tokio::test]
async fn shutdown_ends_every_session_and_waits_for_it() {
    let pki = Pki::new();
    let level = start_level(&pki, fast()).await;
    let mut events = level.level.children.subscribe();
    let mut links = Vec::new();
    for name in ["a", "b", "c"] {
        let (link, _) = raw_child(
            &pki,
            Role::Node,
            name,
            &level.address,
            Duration::from_secs(60),
        )
        .await;
        links.push(link);
    }
    assert_eq!(level.level.children.lock().len(), 3);
    level.stop.send(true).unwrap();
    tokio::time::timeout(PATIENCE, level.serving)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
    tokio::time::timeout(PATIENCE, level.watching)
        .await
        .unwrap()
        .unwrap();
    // serve returned only after every session unregistered.
    assert!(level.level.children.lock().is_empty());
    let mut ended = 0;
    while let Ok(event) = events.try_recv() {
        if let ChildEvent::Disconnected { reason, .. } = event {
            assert!(reason.contains("shutting down"), "{reason}");
            ended += 1;
        }
    }
    assert_eq!(ended, 3);
    // And each child saw its connection close.
    for mut link in links {
        let end = tokio::time::timeout(PATIENCE, async {
            loop {
                match link.reader.recv().await {
                    Ok(Some(_)) => continue,
                    other => return other.map(|_| ()),
                }
            }
        })
        .await
        .unwrap();
        let _ = end;
    }
}

#[tokio::test]
async fn a_child_that_never_finishes_its_hello_is_closed_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let level = start_level(
        &pki,
        ChildrenConfig {
            hello_timeout: Duration::from_millis(300),
            ..fast()
        },
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(&level.address)
        .await
        .unwrap();
    let mut link = tokio_rustls::TlsConnector::from(pki.client(Role::Node, "slow"))
        .connect(
            rustls::pki_types::ServerName::try_from("agad").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    // A header announcing a hello-sized frame, a few bytes of it, then
    // nothing (a larger one is refused at its header).
    let mut start = 1000u32.to_be_bytes().to_vec();
    start.extend_from_slice(&agad_protocol::wire::PROTOCOL_VERSION.to_be_bytes());
    start.extend_from_slice(&[0u8; 100]);
    link.write_all(&start).await.unwrap();
    link.flush().await.unwrap();
    let mut byte = [0u8; 1];
    let end = tokio::time::timeout(PATIENCE, link.read(&mut byte))
        .await
        .expect("the manager kept a connection that never finished its hello");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(level.level.children.lock().is_empty());
    level.stop.send(true).unwrap();
}

/// Whether the manager closed `link` (within `PATIENCE`) or kept it open
/// (`wait` passed with nothing from it).
async fn closed_within(link: &mut Connection, wait: Duration) -> bool {
    match tokio::time::timeout(wait, link.reader.recv()).await {
        Err(_) => false,
        Ok(Ok(Some(m))) => panic!("a waiting connection got {m:?}"),
        Ok(_) => true,
    }
}

#[tokio::test]
async fn one_certificate_parks_no_more_than_its_share_and_real_nodes_still_get_in() {
    let pki = Pki::new();
    let level = start_level(
        &pki,
        ChildrenConfig {
            hello_timeout: Duration::from_secs(600),
            ..fast()
        },
    )
    .await;
    // A never-enrolled certificate opens 40 TLS connections and says nothing.
    let client = pki.client(Role::Node, "parked");
    let mut parked = Vec::new();
    for _ in 0..40 {
        parked.push(
            connect(level.address.as_str(), client.clone())
                .await
                .unwrap(),
        );
    }
    let mut closed = 0;
    let mut open = 0;
    for link in &mut parked {
        if closed_within(link, Duration::from_millis(500)).await {
            closed += 1;
        } else {
            open += 1;
        }
    }
    let share = ChildrenConfig::new().max_waiting_per_identity;
    assert_eq!(open, share, "{closed} closed, {open} kept waiting");
    // A real node is admitted meanwhile.
    let (_n1, answer) = raw_child(
        &pki,
        Role::Node,
        "n1",
        &level.address,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(welcome(&answer), Some(Enrollment::Active), "{answer:?}");
    level.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_newcomer_sheds_the_oldest_waiter_when_the_waiting_room_is_full() {
    let pki = Pki::new();
    let level = start_level(
        &pki,
        ChildrenConfig {
            hello_timeout: Duration::from_secs(600),
            max_waiting: 4,
            ..fast()
        },
    )
    .await;
    let mut waiters = Vec::new();
    for i in 0..4 {
        let link = connect(
            level.address.as_str(),
            pki.client(Role::Node, &format!("w{i}")),
        )
        .await
        .unwrap();
        waiters.push(link);
        // In arrival order: the server registers each before the next comes.
        while level.level.children.waiting() < i + 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (_n1, answer) = raw_child(
        &pki,
        Role::Node,
        "n1",
        &level.address,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(welcome(&answer), Some(Enrollment::Active), "{answer:?}");
    assert!(
        closed_within(&mut waiters[0], PATIENCE).await,
        "the oldest waiter was kept"
    );
    for (i, w) in waiters.iter_mut().enumerate().skip(1) {
        assert!(
            !closed_within(w, Duration::from_millis(200)).await,
            "w{i} was shed"
        );
    }
    level.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_second_connection_of_a_certificate_replaces_the_first_and_never_orphans_it() {
    let pki = Pki::new();
    let level = start_level(&pki, fast()).await;
    let mut events = level.level.children.subscribe();
    let (mut first, answer) = raw_child(
        &pki,
        Role::Node,
        "n1",
        &level.address,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(welcome(&answer), Some(Enrollment::Active));
    let (mut second, answer) = raw_child(
        &pki,
        Role::Node,
        "n1",
        &level.address,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(welcome(&answer), Some(Enrollment::Active));
    // The older session is closed and says why; the newer one is registered.
    assert!(
        closed_within(&mut first, PATIENCE).await,
        "the replaced session stayed open"
    );
    let ChildEvent::Disconnected {
        child: gone,
        reason,
    } = next_event(&mut events, "disconnected", |e| {
        matches!(e, ChildEvent::Disconnected { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert!(reason.contains("replaced"), "{reason}");
    let live = level
        .level
        .children
        .child("n1")
        .expect("n1 orphaned by its old session's end");
    assert!(live.session > gone.session);
    // The live session still works: an alarm is stored and acknowledged.
    second
        .writer
        .send(&Message::Alarm(Queued {
            seq: 1,
            body: Upward::Alarm(alarm("n1")),
        }))
        .await
        .unwrap();
    let ack = tokio::time::timeout(PATIENCE, second.reader.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ack, Some(Message::Control(Control::Ack { ref seqs })) if seqs == &[1]),
        "{ack:?}"
    );
    // When the newer one leaves, nothing is left behind.
    drop(second);
    next_event(
        &mut events,
        "disconnected",
        |e| matches!(e, ChildEvent::Disconnected { child, .. } if child.session == live.session),
    )
    .await;
    assert!(level.level.children.child("n1").is_none());
    level.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_flooding_child_is_paced_and_loses_nothing() {
    let pki = Pki::new();
    let level = start_level(
        &pki,
        ChildrenConfig {
            frames_per_sec: 200.0,
            frame_burst: 10,
            ..fast()
        },
    )
    .await;
    let (mut link, answer) = raw_child(
        &pki,
        Role::Node,
        "n1",
        &level.address,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(welcome(&answer), Some(Enrollment::Active));
    let sent = 300u64;
    let (mut reader, mut writer) = (link.reader, link.writer);
    let sending = tokio::spawn(async move {
        for seq in 1..=sent {
            let body = Upward::Alarm(Alarm {
                id: format!("n1/cpu/{seq}"),
                ..alarm("n1")
            });
            writer
                .send(&Message::Alarm(Queued { seq, body }))
                .await
                .unwrap();
        }
        writer
    });
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < sent as usize {
        match tokio::time::timeout(PATIENCE, reader.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Some(Message::Control(Control::Ack { seqs })) => acked.extend(seqs),
            Some(_) => {}
            None => panic!("closed after {} acks", acked.len()),
        }
    }
    assert_eq!(acked, (1..=sent).collect());
    link.writer = sending.await.unwrap();
    link.reader = reader;
    level.stop.send(true).unwrap();
}
