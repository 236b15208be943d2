//! Hostile modules against a real node (real wasm components built from
//! `tests/guests/misbehave`): each is contained — the runtime stays up, the
//! other modules keep ticking, and the misbehaviour is reported as a fault
//! of that module. Limits are generous; nothing here asserts a timing.

use crate::runtime::{TestNode, collect_until, faults, misbehave_spec, mode, settings};
use agad_protocol::Capability;
use agad_protocol::message::FaultKind;
use agad_runtime::{AgentConfig, Event, ModuleConfig, NodeSettings};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Faults per module among `events`, only of the modules named `prefix…`.
fn faults_by_module(events: &[Event], prefix: &str) -> HashMap<String, Vec<FaultKind>> {
    let mut out: HashMap<String, Vec<FaultKind>> = HashMap::new();
    for e in events {
        if let Event::Fault(f) = e
            && f.module.starts_with(prefix)
        {
            out.entry(f.module.clone()).or_default().push(f.kind);
        }
    }
    out
}

/// Starts `count` copies of misbehave named `prefix-N` in `config`, with
/// `deadline_ms` per call.
async fn start_copies(
    t: &TestNode,
    prefix: &str,
    count: usize,
    deadline_ms: u64,
    config: &ModuleConfig,
    events: &mpsc::Sender<Event>,
    shutdown: &watch::Receiver<bool>,
) {
    for i in 0..count {
        let mut spec = misbehave_spec();
        spec.name = format!("{prefix}-{i}");
        spec.limits.max_time_per_call_ms = deadline_ms;
        let module = t.node.load(&t.sign(spec)).unwrap();
        t.node
            .start_inspector(module, config.clone(), events.clone(), shutdown.clone())
            .await
            .unwrap();
    }
}

/// Modules that sleep in a WASI poll (more of them than an `agad node`
/// has blocking threads) are each stopped at their deadline and counted as
/// timeouts, again after every restart, while a normal module keeps ticking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_modules_time_out_while_a_normal_module_keeps_its_period() {
    const SLEEPERS: usize = 40;
    let t = TestNode::new();
    let (tx, mut rx) = mpsc::channel(16_384);
    let (_stop, shutdown) = watch::channel(false);
    start_copies(&t, "sleeper", SLEEPERS, 200, &mode("sleep"), &tx, &shutdown).await;
    let steady = t.node.load(&t.named("steady")).unwrap();
    t.node
        .start_inspector(steady, mode("alarm-every-tick"), tx, shutdown)
        .await
        .unwrap();
    let steady_alarms = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Alarm(a) if a.module == "steady"))
            .count()
    };
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| {
        let sleepers = faults_by_module(e, "sleeper-");
        steady_alarms(e) >= 20
            && sleepers.len() == SLEEPERS
            && sleepers.values().all(|f| f.len() >= 2)
    })
    .await;
    let sleepers = faults_by_module(&events, "sleeper-");
    assert_eq!(sleepers.len(), SLEEPERS, "every sleeper was interrupted");
    for (module, kinds) in &sleepers {
        assert!(
            kinds.len() >= 2,
            "{module} was interrupted after its restart too: {kinds:?}"
        );
        assert!(
            kinds.iter().all(|k| *k == FaultKind::Timeout),
            "{module}: {kinds:?}"
        );
    }
    assert!(
        steady_alarms(&events) >= 20,
        "the normal module kept ticking"
    );
    assert_eq!(faults(&events, "steady").count(), 0);
}

/// SNMP requests to an agent that never answers hold the node's blocking
/// threads for the agent's timeout: the modules that made them time out at
/// their own deadline, and a module that needs blocking host work (its
/// `state`) still gets it, tick after tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_host_calls_do_not_starve_the_blocking_work_of_other_modules() {
    const STUCK: usize = 20;
    // Bound, never read: every request to it waits the full timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut agent = AgentConfig::v2c(
        "silent",
        &silent.local_addr().unwrap().to_string(),
        "public",
    );
    agent.timeout_ms = 5_000;
    agent.retries = 0;
    let t = TestNode::with_settings(NodeSettings {
        agents: Arc::from(vec![agent]),
        ..settings(Capability::ALL.to_vec())
    });
    let (tx, mut rx) = mpsc::channel(16_384);
    let (_stop, shutdown) = watch::channel(false);
    start_copies(&t, "stuck", STUCK, 200, &mode("snmp"), &tx, &shutdown).await;
    let steady = t.node.load(&t.named("steady")).unwrap();
    t.node
        .start_inspector(steady, mode("ok"), tx, shutdown)
        .await
        .unwrap();
    let state = t.node.database().tree("module-state").unwrap();
    let steady_ticks = || {
        state
            .get(b"steady\0ticks")
            .unwrap()
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while steady_ticks() < 20 || faults_by_module(&events, "stuck-").len() < STUCK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "steady ticked {} times; faults: {:?}",
            steady_ticks(),
            faults_by_module(&events, "stuck-")
        );
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            events.push(e);
        }
    }
    for (module, kinds) in faults_by_module(&events, "stuck-") {
        assert!(
            kinds.iter().all(|k| *k == FaultKind::Timeout),
            "{module}: {kinds:?}"
        );
    }
    assert_eq!(faults(&events, "steady").count(), 0, "{events:?}");
}
