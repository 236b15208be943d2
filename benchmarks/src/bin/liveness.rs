//! Liveness at every level: how soon a silent child is noticed, and how
//! often a healthy one is wrongly accused on a bad network.
//!
//! 1. **Detection.** A registry of children served over real TLS on
//!    loopback (`agad_net::children`, the layer every manager uses), and
//!    children that keep alive every interval and then freeze: they stop
//!    sending but keep their connection open, as a process stopped with
//!    `kill -STOP` does. Prints p50/p99 of the time from the child's last
//!    frame to the `stale` event, and from the freeze to it, in intervals.
//!    Goal: p99 ≤ 3 intervals.
//! 2. **False suspicions** (root: a network namespace). Real uplinks (the
//!    node's own link code) in a namespace keep alive across a veth that
//!    drops 5 % of packets each way (nftables; this kernel has no netem),
//!    through a relay that adds 0–100 ms of delay to every chunk (50 ms mean
//!    jitter, order kept), to a parent in the root namespace. Counts stale
//!    events at the parent and silent-parent events at the children.
//!    Goal: 0.
//!
//! Usage: `liveness [--quick] [--interval 1s] [--children 50] [--samples 200]
//! [--minutes 10]`. A one-second interval makes the run short and is the
//! harsh case: TCP's 200 ms minimum retransmission timeout weighs five times
//! more against it than against the 10 s deployments use.
//!
//! The program re-runs itself inside the namespace (`--in-namespace`) to
//! start the children there.

use agad_benchmarks::args::Args;
use agad_benchmarks::stats::{Timings, duration};
use agad_net::children::{
    ChildEvent, ChildRef, Children, ChildrenConfig, Hello, Parent, SessionError, serve_child,
};
use agad_net::outbox::Outbox;
use agad_net::server::{Limits, serve};
use agad_net::tls::PeerIdentity;
use agad_net::uplink::{self, Downlink, Element, UplinkConfig};
use agad_net::{
    Identity, TlsAcceptor, TrustAnchor, client_config, connect, init_ca, issue, server_config,
};
use agad_protocol::wire::{ComponentStatus, Control, Message, Role};
use agad_tests::netns::run;
use agad_tests::network::{ensure_nft, jitter_relay};
use anyhow::{Context, bail};
use rand::Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const NAMESPACE_PREFIX: &str = "agad-live-";
/// Root side and namespace side of the lossy veth.
const ROOT_IP: &str = "10.78.0.1";
const NS_IP: &str = "10.78.0.2";

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") {
        println!(
            "liveness [--quick] [--interval 1s] [--children 50] [--samples 200] [--minutes 10]"
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.flag("--in-namespace") {
        let parent: String = args.value("--parent")?.context("--parent")?;
        let pki: PathBuf = args.value("--pki")?.context("--pki")?;
        let children: usize = args.value("--children")?.context("--children")?;
        let interval = parse(&args.value::<String>("--interval")?.context("--interval")?)?;
        let run_for = parse(&args.value::<String>("--for")?.context("--for")?)?;
        args.finish()?;
        return runtime.block_on(children_in_namespace(
            parent, pki, children, interval, run_for,
        ));
    }
    let quick = args.flag("--quick");
    let interval = match args.value::<String>("--interval")? {
        Some(text) => parse(&text)?,
        None => Duration::from_secs(1),
    };
    let children: usize = args
        .value("--children")?
        .unwrap_or(if quick { 20 } else { 50 });
    let samples: usize = args
        .value("--samples")?
        .unwrap_or(if quick { 60 } else { 200 });
    let minutes: f64 = args
        .value("--minutes")?
        .unwrap_or(if quick { 2.0 } else { 10.0 });
    args.finish()?;

    let pki = tempfile::tempdir()?;
    init_ca(pki.path(), "liveness-bench")?;
    issue(pki.path(), Role::Dominio, "parent", pki.path())?;
    for i in 0..children {
        issue(pki.path(), Role::Node, &child_name(i), pki.path())?;
    }
    println!(
        "liveness: keep-alive interval {}, stale at phi ≥ 8; machine load {}",
        duration(interval),
        agad_benchmarks::procfs::machine_load()
    );
    runtime.block_on(detection(pki.path(), interval, children, samples))?;
    if !agad_tests::netns::running_as_root() {
        bail!("part 2 needs root (a network namespace, a veth, nftables): run as root");
    }
    runtime.block_on(false_suspicions(
        pki.path(),
        interval,
        children,
        Duration::from_secs_f64(minutes * 60.0),
    ))
}

fn parse(text: &str) -> anyhow::Result<Duration> {
    agad_protocol::parse_duration(text)
        .with_context(|| format!("`{text}` is not a duration (500ms, 1s, 2m)"))
}

fn child_name(i: usize) -> String {
    format!("child-{i:04}")
}

struct Files<'a>(&'a Path);

impl Files<'_> {
    fn identity(&self, name: &str) -> anyhow::Result<Identity> {
        Ok(Identity::load(
            &self.0.join(format!("{name}.crt")),
            &self.0.join(format!("{name}.key")),
        )?)
    }

    fn trust(&self) -> anyhow::Result<TrustAnchor> {
        Ok(TrustAnchor::load(&self.0.join("ca.crt"))?)
    }

    fn acceptor(&self, name: &str) -> anyhow::Result<TlsAcceptor> {
        Ok(TlsAcceptor::from(server_config(
            &self.identity(name)?,
            &self.trust()?,
        )?))
    }

    fn client(&self, name: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(client_config(&self.identity(name)?, &self.trust()?)?)
    }
}

/// A parent that admits every child and has nothing else to say: liveness
/// is judged by the layer, not by the level.
struct Watcher {
    children: Arc<Children<()>>,
}

impl Parent for Watcher {
    type Data = ();
    fn children(&self) -> &Children<()> {
        &self.children
    }
    fn role(&self) -> Role {
        Role::Node
    }
    fn admit(&self, _: &PeerIdentity, _: &Hello) -> Result<(), SessionError> {
        Ok(())
    }
    fn registered(&self, _: &ChildRef) {}
    fn handle(&self, _: &ChildRef, m: Message) -> Result<Option<Message>, SessionError> {
        Err(SessionError::Protocol(m.kind().into()))
    }
    fn unregistered(&self, _: &ChildRef, _: (), _: &SessionError) {}
}

/// Serves `Watcher` on `address`; the registry, and the shutdown switch.
async fn start_parent(
    pki: &Path,
    address: &str,
) -> anyhow::Result<(Arc<Children<()>>, String, watch::Sender<bool>)> {
    let children = Arc::new(Children::new(ChildrenConfig::new()));
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?.to_string();
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(children.clone().watch(shutdown.clone()));
    let parent = Arc::new(Watcher {
        children: children.clone(),
    });
    tokio::spawn(serve(
        listener,
        Files(pki).acceptor("parent")?,
        Limits::default(),
        move |connection, shutdown| serve_child(parent.clone(), connection, shutdown),
        shutdown,
    ));
    Ok((children, bound, stop))
}

/// Part 1: children that freeze; how long until each is declared stale.
async fn detection(
    pki: &Path,
    interval: Duration,
    children: usize,
    samples: usize,
) -> anyhow::Result<()> {
    let (registry, address, stop) = start_parent(pki, "127.0.0.1:0").await?;
    let mut events = registry.subscribe();
    // name → (last frame sent, freeze) of the child frozen now.
    let (frozen_tx, mut frozen_rx) = mpsc::unbounded_channel::<(String, Instant, Instant)>();
    // Aborted when this part ends (dropped with the set).
    let mut freezing = tokio::task::JoinSet::<()>::new();
    for i in 0..children {
        let (name, tls, address, frozen) = (
            child_name(i),
            Files(pki).client(&child_name(i))?,
            address.clone(),
            frozen_tx.clone(),
        );
        freezing.spawn(async move {
            loop {
                if let Err(e) =
                    freezing_child(&name, &address, tls.clone(), interval, &frozen).await
                {
                    eprintln!("{name}: {e:#}");
                    tokio::time::sleep(interval).await;
                }
            }
        });
    }
    let mut pending: HashMap<String, (Instant, Instant)> = HashMap::new();
    let (mut from_last, mut from_freeze) = (Vec::new(), Vec::new());
    let mut early = 0;
    let deadline = Instant::now() + interval * 40 * (samples / children + 2) as u32;
    while from_last.len() < samples {
        if Instant::now() > deadline {
            bail!("only {} stale events in time", from_last.len());
        }
        tokio::select! {
            Some((name, last, freeze)) = frozen_rx.recv() => {
                pending.insert(name, (last, freeze));
            }
            event = events.recv() => {
                if let Ok(ChildEvent::Stale { child, .. }) = event {
                    let now = Instant::now();
                    match pending.remove(&child.name) {
                        Some((last, freeze)) => {
                            from_last.push(now - last);
                            from_freeze.push(now - freeze);
                        }
                        // Accused while still sending: a false suspicion.
                        None => early += 1,
                    }
                }
            }
        }
    }
    freezing.abort_all();
    let _ = stop.send(true);
    let in_intervals = |d: Duration| d.as_secs_f64() / interval.as_secs_f64();
    for (what, set) in [
        ("last frame → stale", &from_last),
        ("freeze → stale", &from_freeze),
    ] {
        let t = Timings::of(set).context("no samples")?;
        println!(
            "detection, {what}: {} samples, p50 {} ({:.2} intervals), p99 {} ({:.2} intervals), max {:.2} intervals",
            t.count,
            duration(t.p50),
            in_intervals(t.p50),
            duration(t.p99),
            in_intervals(t.p99),
            in_intervals(t.max)
        );
    }
    println!("detection: children accused while still keeping alive: {early}");
    Ok(())
}

/// One session of a child that keeps alive for 3–8 intervals, then stops
/// sending (its connection stays open) until the parent closes it.
async fn freezing_child(
    name: &str,
    address: &str,
    tls: Arc<rustls::ClientConfig>,
    interval: Duration,
    frozen: &mpsc::UnboundedSender<(String, Instant, Instant)>,
) -> anyhow::Result<()> {
    let mut link = connect(address, tls).await?;
    link.writer
        .send(&Message::Control(Control::Hello {
            role: Role::Node,
            software: "liveness-bench".into(),
            ticket: None,
            modules_held: Vec::new(),
            keepalive_ms: interval.as_millis() as u64,
            serving: None,
            advertise: Vec::new(),
            generation: 0,
        }))
        .await?;
    let (beats, phase, freeze_after) = {
        let mut rng = rand::thread_rng();
        (rng.gen_range(3..=8), rng.r#gen::<f64>(), rng.r#gen::<f64>())
    };
    // Start at a random phase so freezes spread over the watcher's ticks.
    tokio::time::sleep(interval.mul_f64(phase)).await;
    let mut last = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    for _ in 0..beats {
        ticker.tick().await;
        link.writer
            .send(&Message::Control(Control::KeepAlive {
                components: Vec::new(),
            }))
            .await?;
        last = Instant::now();
    }
    // Freeze somewhere within the next interval, as kill -STOP would.
    tokio::time::sleep(interval.mul_f64(freeze_after)).await;
    frozen.send((name.to_owned(), last, Instant::now()))?;
    // Read (and ignore) until the parent closes the session.
    while let Ok(Some(_)) = link.reader.recv().await {}
    Ok(())
}

/// Part 2: healthy children on a lossy, jittery link for `run_for`.
async fn false_suspicions(
    pki: &Path,
    interval: Duration,
    children: usize,
    run_for: Duration,
) -> anyhow::Result<()> {
    let namespace = LossyNamespace::create()?;
    let (registry, parent, stop) = start_parent(pki, "127.0.0.1:0").await?;
    let mut events = registry.subscribe();
    let relay = TcpListener::bind(format!("{ROOT_IP}:0")).await?;
    let relay_address = relay.local_addr()?.to_string();
    tokio::spawn(jitter_relay(relay, parent, Duration::from_millis(100)));
    let exe = std::env::current_exe()?;
    let mut inside = tokio::process::Command::new("ip")
        .args(["netns", "exec", &namespace.name])
        .arg(&exe)
        .args([
            "--in-namespace",
            "--parent",
            &relay_address,
            "--pki",
            &pki.display().to_string(),
            "--children",
            &children.to_string(),
            "--interval",
            &format!("{}ms", interval.as_millis()),
            "--for",
            &format!("{}s", run_for.as_secs()),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the children in the namespace")?;
    println!(
        "false suspicions: {children} children for {} over a veth dropping 5 % each way, 0–100 ms relay delay",
        duration(run_for)
    );
    let (mut stale, mut connected, mut keepalives) = (0u64, 0u64, 0u64);
    let mut output = inside.stdout.take().context("children's stdout")?;
    let reading = tokio::spawn(async move {
        let mut text = String::new();
        let _ = output.read_to_string(&mut text).await;
        text
    });
    let status = loop {
        tokio::select! {
            status = inside.wait() => break status?,
            event = events.recv() => match event {
                Ok(ChildEvent::Stale { child, silent, phi }) => {
                    stale += 1;
                    println!("  stale: {} silent {} (phi {phi:.1})", child.name, duration(silent));
                }
                Ok(ChildEvent::Connected(_)) => connected += 1,
                Ok(ChildEvent::KeepAlive { .. }) => keepalives += 1,
                _ => {}
            },
        }
    };
    let _ = stop.send(true);
    let text = reading.await?;
    if !status.success() {
        bail!("the children in the namespace failed ({status}): {text}");
    }
    let child_line = text
        .lines()
        .find(|l| l.starts_with("children:"))
        .unwrap_or("children: no result");
    println!(
        "false suspicions at the parent: {stale} stale events ({connected} sessions opened for {children} children, {keepalives} keep-alives)"
    );
    println!("false suspicions at the children: {child_line}");
    Ok(())
}

/// Inside the namespace: `children` real uplinks to `parent` for `run_for`;
/// prints how often one left its parent for silence.
async fn children_in_namespace(
    parent: String,
    pki: PathBuf,
    children: usize,
    interval: Duration,
    run_for: Duration,
) -> anyhow::Result<()> {
    struct Quiet;
    impl Element for Quiet {
        fn modules_held(&self) -> Vec<String> {
            Vec::new()
        }
        fn components(&self) -> Vec<ComponentStatus> {
            Vec::new()
        }
    }
    let data = tempfile::tempdir()?;
    let (stop, shutdown) = watch::channel(false);
    let (events_tx, mut events) = mpsc::channel::<Downlink>(1024);
    for i in 0..children {
        let name = child_name(i);
        let db = agad_storage::Database::open(&data.path().join(&name))?;
        let (down_tx, mut down) = mpsc::channel(16);
        let (up_tx, up_rx) = mpsc::channel(1);
        let config = UplinkConfig {
            parents: vec![parent.clone()],
            tls: Files(&pki).client(&name)?,
            role: Role::Node,
            ticket: None,
            keepalive: interval,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
        };
        tokio::spawn(uplink::run(
            config,
            Outbox::open(&db)?,
            Arc::new(Quiet),
            down_tx,
            up_rx,
            shutdown.clone(),
        ));
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            let _keep = up_tx;
            while let Some(event) = down.recv().await {
                let _ = events_tx.send(event).await;
            }
        });
    }
    drop(events_tx);
    let (mut silent, mut other_drops, mut connects) = (0u64, 0u64, 0u64);
    let end = tokio::time::sleep(run_for);
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => break,
            Some(event) = events.recv() => match event {
                Downlink::Connected { .. } => connects += 1,
                Downlink::Disconnected { reason } if reason.contains("silent") => {
                    silent += 1;
                    eprintln!("  child left a silent parent: {reason}");
                }
                Downlink::Disconnected { reason } => {
                    other_drops += 1;
                    eprintln!("  child link dropped: {reason}");
                }
                _ => {}
            },
        }
    }
    let _ = stop.send(true);
    println!(
        "children: {silent} silent-parent events, {other_drops} other link drops, {connects} connections for {children} children"
    );
    Ok(())
}

/// A namespace joined to the root one by a veth whose namespace end drops
/// 5 % of packets in each direction. Deleted on drop.
struct LossyNamespace {
    name: String,
}

impl LossyNamespace {
    fn create() -> anyhow::Result<LossyNamespace> {
        ensure_nft()?;
        remove_stale_namespaces();
        let ns = LossyNamespace {
            name: format!("{NAMESPACE_PREFIX}{}", std::process::id()),
        };
        let root_if = format!("alv{}", std::process::id() % 100_000);
        run("ip", &["netns", "add", &ns.name])?;
        run(
            "ip",
            &[
                "link", "add", &root_if, "type", "veth", "peer", "name", "alv-ns",
            ],
        )?;
        run("ip", &["link", "set", "alv-ns", "netns", &ns.name])?;
        run(
            "ip",
            &["addr", "add", &format!("{ROOT_IP}/30"), "dev", &root_if],
        )?;
        run("ip", &["link", "set", &root_if, "up"])?;
        let ns_address = format!("{NS_IP}/30");
        for args in [
            ["addr", "add", ns_address.as_str(), "dev", "alv-ns"].as_slice(),
            &["link", "set", "alv-ns", "up"],
            &["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["-n", ns.name.as_str()];
            full.extend_from_slice(args);
            run("ip", &full)?;
        }
        let rules = "table inet agad_lossy {\n\
             chain input { type filter hook input priority 0; numgen random mod 100 < 5 drop; }\n\
             chain output { type filter hook output priority 0; numgen random mod 100 < 5 drop; }\n\
             }\n";
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("running nft")?;
        std::io::Write::write_all(
            &mut nft.stdin.take().context("nft stdin")?,
            rules.as_bytes(),
        )?;
        if !nft.wait()?.success() {
            bail!("nftables refused the loss rules");
        }
        Ok(ns)
    }
}

impl Drop for LossyNamespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and so the pair.
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Namespaces of earlier runs that were killed (their pid is gone).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if let Some(pid) = name.strip_prefix(NAMESPACE_PREFIX)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}
