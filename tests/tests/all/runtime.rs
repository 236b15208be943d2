//! The node runtime with real wasm components built from this repository:
//! bundle checks, capability policy, limits, and restarts.

use agad_modules::test_guests;
use agad_protocol::message::FaultKind;
use agad_protocol::{Bundle, Capability, ManifestSpec, SecretKey};
use agad_runtime::{
    Event, LinkError, LoadError, ModuleConfig, ModuleEngine, Node, NodeSettings, RestartPolicy,
    TrustError,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn misbehave_spec() -> ManifestSpec {
    ManifestSpec::from_toml(&std::fs::read_to_string(test_guests::MISBEHAVE_MANIFEST).unwrap())
        .unwrap()
}

pub(crate) fn misbehave_wasm() -> Vec<u8> {
    std::fs::read(test_guests::MISBEHAVE_WASM).unwrap()
}

pub(crate) fn settings(policy: Vec<Capability>) -> NodeSettings {
    NodeSettings {
        name: "test-node".into(),
        agents: Arc::from(Vec::new()),
        policy,
        host_policy: Default::default(),
        default_period: Duration::from_millis(100),
        restart: RestartPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ceilings: Default::default(),
        output: Default::default(),
        disk: Default::default(),
        crash_loop: Default::default(),
        integrity: Default::default(),
    }
}

pub(crate) struct TestNode {
    pub(crate) node: Node,
    key: SecretKey,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub(crate) fn new() -> TestNode {
        TestNode::with_policy(Capability::ALL.to_vec())
    }

    fn with_policy(policy: Vec<Capability>) -> TestNode {
        TestNode::with_settings(settings(policy))
    }

    pub(crate) fn with_settings(settings: NodeSettings) -> TestNode {
        let key = SecretKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(settings, vec![key.public()], dir.path()).unwrap();
        TestNode {
            node,
            key,
            _dir: dir,
        }
    }

    pub(crate) fn sign(&self, spec: ManifestSpec) -> Bundle {
        Bundle::sign(spec, misbehave_wasm(), &self.key, now())
    }

    pub(crate) fn named(&self, name: &str) -> Bundle {
        let mut spec = misbehave_spec();
        spec.name = name.into();
        self.sign(spec)
    }
}

pub(crate) fn mode(m: &str) -> ModuleConfig {
    ModuleConfig {
        values: vec![("mode".into(), m.into())],
    }
}

/// Collects events until `done` says so or `limit` passes.
pub(crate) async fn collect_until(
    events: &mut mpsc::Receiver<Event>,
    limit: Duration,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&seen) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => seen.push(e),
            _ => break,
        }
    }
    seen
}

pub(crate) fn faults<'a>(
    events: &'a [Event],
    module: &'a str,
) -> impl Iterator<Item = FaultKind> + 'a {
    events.iter().filter_map(move |e| match e {
        Event::Fault(f) if f.module == module => Some(f.kind),
        _ => None,
    })
}

#[test]
fn untrusted_tampered_and_expired_bundles_are_refused() {
    let t = TestNode::new();
    let stranger = SecretKey::generate();
    let foreign = Bundle::sign(misbehave_spec(), misbehave_wasm(), &stranger, now());
    assert!(matches!(
        t.node.load(&foreign),
        Err(LoadError::Trust(TrustError::Bundle(
            agad_protocol::BundleError::UntrustedSigner { .. }
        )))
    ));

    let mut tampered = t.sign(misbehave_spec());
    tampered.wasm[100] ^= 0xff;
    let err = t.node.load(&tampered).unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");

    let mut forged = t.sign(misbehave_spec());
    forged
        .manifest
        .capabilities
        .retain(|c| *c != Capability::Snmp);
    let err = t.node.load(&forged).unwrap_err();
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );

    let expired = Bundle::sign(
        misbehave_spec(),
        misbehave_wasm(),
        &t.key,
        now() - 400 * 86_400,
    );
    let err = t.node.load(&expired).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn rollback_is_refused_even_after_a_restart() {
    let key = SecretKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let bundle = |sequence: u64| {
        let mut spec = misbehave_spec();
        spec.sequence = sequence;
        Bundle::sign(spec, misbehave_wasm(), &key, now())
    };
    {
        let node = Node::open(
            settings(Capability::ALL.to_vec()),
            vec![key.public()],
            dir.path(),
        )
        .unwrap();
        node.load(&bundle(5)).unwrap();
    }
    let node = Node::open(
        settings(Capability::ALL.to_vec()),
        vec![key.public()],
        dir.path(),
    )
    .unwrap();
    let err = node.load(&bundle(4)).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Trust(TrustError::Rollback {
                offered: 4,
                accepted: 5,
                ..
            })
        ),
        "{err}"
    );
    node.load(&bundle(6)).unwrap();
}

#[test]
fn undeclared_capability_fails_to_link() {
    let t = TestNode::new();
    let mut spec = misbehave_spec();
    // Two left out: both are named at once, each with its import.
    spec.capabilities
        .retain(|c| *c != Capability::Snmp && *c != Capability::State);
    let err = t.node.load(&t.sign(spec)).unwrap_err();
    let LoadError::Link(LinkError::Undeclared { missing, .. }) = &err else {
        panic!("{err}");
    };
    let mut named: Vec<Capability> = missing.iter().map(|(c, _)| *c).collect();
    named.sort_by_key(|c| c.to_string());
    assert_eq!(named, [Capability::Snmp, Capability::State], "{err}");
    let text = err.to_string();
    assert!(
        text.contains("imports capabilities its manifest does not declare")
            && text.contains("`snmp` (import agad:platform/snmp")
            && text.contains("`state` (import agad:platform/state")
            && text.contains("add \"")
            && text.contains("to `capabilities` in its manifest"),
        "{text}"
    );
}

#[test]
fn capability_denied_by_node_policy_fails_to_link() {
    let t = TestNode::with_policy(vec![
        Capability::Os,
        Capability::State,
        Capability::Log,
        Capability::Clock,
    ]);
    let err = t.node.load(&t.sign(misbehave_spec())).unwrap_err();
    let LoadError::Link(LinkError::DeniedByPolicy { denied, .. }) = &err else {
        panic!("{err}");
    };
    assert_eq!(denied.len(), 1, "{err}");
    assert_eq!(denied[0].0, Capability::Snmp, "{err}");
    assert!(
        err.to_string()
            .contains("`snmp` (import agad:platform/snmp"),
        "{err}"
    );
}

#[test]
fn compiled_components_are_cached_by_hash() {
    let key = SecretKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("compiled");
    let engine = ModuleEngine::new(Some(&cache)).unwrap();
    let bundle = Bundle::sign(misbehave_spec(), misbehave_wasm(), &key, now());
    engine.compile(&bundle).unwrap();
    let entry = cache.join(format!("{}.cwasm", bundle.manifest.sha256_hex()));
    assert!(entry.exists());
    // A corrupt cache entry is ignored and replaced, never trusted.
    std::fs::write(&entry, b"garbage").unwrap();
    engine.compile(&bundle).unwrap();
    assert!(std::fs::read(&entry).unwrap().len() > 1000);
}

async fn started(
    t: &TestNode,
    bundle: &Bundle,
    config: ModuleConfig,
) -> (mpsc::Receiver<Event>, watch::Sender<bool>) {
    let (tx, rx) = mpsc::channel(256);
    let (stop, shutdown) = watch::channel(false);
    let module = t.node.load(bundle).unwrap();
    t.node
        .start_inspector(module, config, tx, shutdown)
        .await
        .unwrap();
    (rx, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_interrupted_and_restarted() {
    let t = TestNode::new();
    let mut spec = misbehave_spec();
    spec.limits.max_time_per_call_ms = 100;
    let (mut rx, _stop) = started(&t, &t.sign(spec), mode("loop")).await;
    let events = collect_until(&mut rx, Duration::from_secs(20), |e| {
        faults(e, "misbehave").count() >= 2
    })
    .await;
    let kinds: Vec<_> = faults(&events, "misbehave").collect();
    assert_eq!(
        kinds,
        vec![FaultKind::Timeout, FaultKind::Timeout],
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_overflow_traps_and_is_restarted() {
    let t = TestNode::new();
    let (mut rx, _stop) = started(&t, &t.named("misbehave"), mode("stack")).await;
    let events = collect_until(&mut rx, Duration::from_secs(20), |e| {
        faults(e, "misbehave").count() >= 2
    })
    .await;
    let kinds: Vec<_> = faults(&events, "misbehave").collect();
    assert_eq!(kinds, vec![FaultKind::Trap, FaultKind::Trap], "{events:?}");
    // The report names the trap's cause, not wasmtime's "error while
    // executing at wasm backtrace:" that wraps it.
    for event in &events {
        if let Event::Fault(f) = event {
            assert!(f.message.contains("stack"), "{}", f.message);
            assert!(!f.message.contains("backtrace"), "{}", f.message);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_capped() {
    let t = TestNode::new();
    let mut spec = misbehave_spec();
    spec.limits.max_memory_bytes = 8 * 1024 * 1024;
    let (mut rx, _stop) = started(&t, &t.sign(spec), mode("bomb")).await;
    let events = collect_until(&mut rx, Duration::from_secs(20), |e| {
        faults(e, "misbehave").count() >= 1
    })
    .await;
    let kinds: Vec<_> = faults(&events, "misbehave").collect();
    assert_eq!(kinds.first(), Some(&FaultKind::MemoryLimit), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_module_is_restarted_with_backoff_while_others_keep_running() {
    let t = TestNode::new();
    let (tx, mut rx) = mpsc::channel(256);
    let (_stop, shutdown) = watch::channel(false);
    let trapper = t.node.load(&t.named("trapper")).unwrap();
    let steady = t.node.load(&t.named("steady")).unwrap();
    t.node
        .start_inspector(trapper, mode("trap"), tx.clone(), shutdown.clone())
        .await
        .unwrap();
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
    let events = collect_until(&mut rx, Duration::from_secs(20), |e| {
        faults(e, "trapper").count() >= 4 && steady_alarms(e) >= 10
    })
    .await;
    let trapper_faults: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Fault(f) if f.module == "trapper" => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert!(trapper_faults.len() >= 4, "{events:?}");
    assert!(trapper_faults.iter().all(|f| f.kind == FaultKind::Trap));
    let waits: Vec<u64> = trapper_faults.iter().map(|f| f.restart_in_ms).collect();
    assert_eq!(
        &waits[..4],
        &[50, 100, 200, 400],
        "back-off doubles up to the max"
    );
    assert!(
        steady_alarms(&events) >= 10,
        "the healthy module kept ticking: {events:?}"
    );
    assert_eq!(faults(&events, "steady").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_trapped_once_recovers_and_its_state_survives() {
    let t = TestNode::new();
    let (mut rx, _stop) = started(&t, &t.sign(misbehave_spec()), mode("trap-once")).await;
    let events = collect_until(&mut rx, Duration::from_secs(20), |e| {
        e.iter().any(|e| matches!(e, Event::Alarm(_)))
    })
    .await;
    assert_eq!(
        faults(&events, "misbehave").collect::<Vec<_>>(),
        vec![FaultKind::Trap]
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Alarm(a) if a.key == "recovered")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_off_starts_over_after_the_module_ran_cleanly() {
    let t = TestNode::new();
    let (mut rx, _stop) = started(&t, &t.sign(misbehave_spec()), mode("trap-every-4th")).await;
    let events = collect_until(&mut rx, Duration::from_secs(20), |e| {
        faults(e, "misbehave").count() >= 3
    })
    .await;
    let waits: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Fault(f) => Some(f.restart_in_ms),
            _ => None,
        })
        .collect();
    assert_eq!(
        waits,
        vec![50, 50, 50],
        "each fault follows three clean ticks: {events:?}"
    );
}
