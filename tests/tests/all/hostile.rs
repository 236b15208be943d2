//! Hostile modules against a real node (real wasm components built from
//! `tests/guests/misbehave`): each is contained — the runtime stays up, the
//! other modules keep ticking, and the misbehaviour is reported as a fault
//! of that module. Limits are generous; nothing here asserts a timing.

use crate::runtime::{TestNode, collect_until, faults, misbehave_spec, mode, settings};
use agad_protocol::message::{Alarm, FaultKind};
use agad_protocol::{Capability, Limits};
use agad_runtime::budget::NOTICE_KEY;
use agad_runtime::{AgentConfig, Ceilings, Event, ModuleConfig, NodeSettings, OutputLimits};
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
    let state = t.node.state_database().tree("module-state").unwrap();
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

/// A node whose ceilings and budgets are the test's, not the defaults.
fn node_with(ceilings: Ceilings, output: OutputLimits) -> TestNode {
    TestNode::with_settings(NodeSettings {
        ceilings,
        output,
        ..settings(Capability::ALL.to_vec())
    })
}

fn alarms_with_key<'a>(events: &'a [Event], key: &'a str) -> impl Iterator<Item = &'a Alarm> + 'a {
    events.iter().filter_map(move |e| match e {
        Event::Alarm(a) if a.key == key => Some(a),
        _ => None,
    })
}

/// A manifest asking for `u64::MAX` memory and time is granted the node's
/// ceilings: a memory bomb stops at the memory ceiling, a loop at the time
/// ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_manifest_limits_get_the_node_ceilings() {
    let ceilings = Ceilings {
        max_memory_bytes: 32 * 1024 * 1024,
        max_time_per_call_ms: 300,
        max_state_bytes: 64 * 1024,
    };
    let t = node_with(ceilings, OutputLimits::default());
    let (tx, mut rx) = mpsc::channel(1024);
    let (_stop, shutdown) = watch::channel(false);
    for (name, how) in [("bomb", "bomb"), ("looper", "loop")] {
        let mut spec = misbehave_spec();
        spec.name = name.into();
        spec.limits = Limits {
            max_memory_bytes: u64::MAX,
            max_time_per_call_ms: u64::MAX,
            max_state_bytes: u64::MAX,
        };
        let module = t.node.load(&t.sign(spec)).unwrap();
        assert_eq!(module.manifest.limits.max_memory_bytes, u64::MAX);
        assert_eq!(
            module.limits,
            Limits {
                max_memory_bytes: 32 * 1024 * 1024,
                max_time_per_call_ms: 300,
                max_state_bytes: 64 * 1024,
            }
        );
        t.node
            .start_inspector(module, mode(how), tx.clone(), shutdown.clone())
            .await
            .unwrap();
    }
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| {
        faults(e, "bomb").count() >= 1 && faults(e, "looper").count() >= 1
    })
    .await;
    assert_eq!(
        faults(&events, "bomb").next(),
        Some(FaultKind::MemoryLimit),
        "{events:?}"
    );
    assert_eq!(
        faults(&events, "looper").next(),
        Some(FaultKind::Timeout),
        "{events:?}"
    );
}

/// A module raising a million alarms in every tick gets its budget through
/// (a burst, then the refill) and the node reports the drops once, as one
/// alarm of that module; the other module keeps ticking and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_flood_is_cut_to_the_module_budget_and_reported_once() {
    const PER_MINUTE: u32 = 1_000;
    let t = node_with(
        Ceilings {
            max_memory_bytes: 1024 * 1024 * 1024,
            max_time_per_call_ms: 30_000,
            ..Default::default()
        },
        OutputLimits {
            alarms_per_minute: PER_MINUTE,
            ..OutputLimits::default()
        },
    );
    let started = std::time::Instant::now();
    let (mut rx, _stop) = beside_a_steady_module(&t, "flood", 16_384).await;
    let steady_alarms = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Alarm(a) if a.module == "steady"))
            .count()
    };
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| {
        steady_alarms(e) >= 30 && alarms_with_key(e, NOTICE_KEY).count() >= 1
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let flooded = alarms_with_key(&events, "flood").count() as f64;
    let allowed = f64::from(PER_MINUTE) * (1.0 + (elapsed + 1.0) / 60.0);
    assert!(
        flooded >= f64::from(PER_MINUTE) && flooded <= allowed,
        "{flooded} flood alarms in {elapsed:.1} s; the budget allows {allowed:.0}"
    );
    let notices: Vec<_> = alarms_with_key(&events, NOTICE_KEY).collect();
    assert_eq!(
        notices.len(),
        1,
        "reported once, not per dropped alarm: {notices:?}"
    );
    assert_eq!(notices[0].module, "flood");
    assert!(notices[0].raised);
    assert!(notices[0].value >= 999_000.0, "{:?}", notices[0]);
    assert!(
        notices[0].message.contains("over 1000/min"),
        "{}",
        notices[0].message
    );
    assert!(
        steady_alarms(&events) >= 30,
        "the other module kept ticking"
    );
    assert_eq!(faults(&events, "steady").count(), 0);
    assert_eq!(
        faults(&events, "flood").count(),
        0,
        "a flood is not a fault"
    );
}

/// Starts misbehave named and in mode `how`, with room to misbehave
/// (512 MiB, 20 s a call), beside `steady`, raising an alarm every tick;
/// their events go to the receiver (`capacity` of them waiting at most).
async fn beside_a_steady_module(
    t: &TestNode,
    how: &str,
    capacity: usize,
) -> (mpsc::Receiver<Event>, watch::Sender<bool>) {
    let (tx, rx) = mpsc::channel(capacity);
    let (stop, shutdown) = watch::channel(false);
    let mut spec = misbehave_spec();
    spec.name = how.into();
    spec.limits = Limits {
        max_memory_bytes: 512 * 1024 * 1024,
        max_time_per_call_ms: 20_000,
        ..Default::default()
    };
    let greedy = t.node.load(&t.sign(spec)).unwrap();
    t.node
        .start_inspector(greedy, mode(how), tx.clone(), shutdown.clone())
        .await
        .unwrap();
    let steady = t.node.load(&t.named("steady")).unwrap();
    t.node
        .start_inspector(steady, mode("alarm-every-tick"), tx, shutdown)
        .await
        .unwrap();
    (rx, stop)
}

/// A module sending a 100 MiB message in every tick: nothing of it goes
/// upward, the node reports the drops once, and the other module is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_message_is_dropped_and_reported_once() {
    let t = node_with(
        Ceilings {
            max_memory_bytes: 1024 * 1024 * 1024,
            max_time_per_call_ms: 30_000,
            ..Default::default()
        },
        OutputLimits::default(),
    );
    let (mut rx, _stop) = beside_a_steady_module(&t, "huge", 4096).await;
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| {
        let steady = e
            .iter()
            .filter(|e| matches!(e, Event::Alarm(a) if a.module == "steady"))
            .count();
        steady >= 20 && alarms_with_key(e, NOTICE_KEY).count() >= 1
    })
    .await;
    assert_eq!(
        alarms_with_key(&events, "huge").count(),
        0,
        "nothing of it went upward"
    );
    let notices: Vec<_> = alarms_with_key(&events, NOTICE_KEY).collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].module, "huge");
    assert!(
        notices[0].message.contains("over 4096 bytes"),
        "{}",
        notices[0].message
    );
    assert!(
        notices[0].message.len() < 1024,
        "the notice does not carry the message"
    );
    assert_eq!(faults(&events, "huge").count(), 0);
    assert_eq!(faults(&events, "steady").count(), 0);
}

/// A bundle whose name would forge a log line, or whose signature never
/// expires, is refused by the node before anything runs or prints it.
#[test]
fn a_forged_name_and_an_endless_signature_are_refused_by_the_node() {
    let t = TestNode::new();
    let mut spec = misbehave_spec();
    spec.name = "x\nINFO forged \u{1b}[2J".into();
    let err = t.node.load(&t.sign(spec)).unwrap_err().to_string();
    assert!(err.contains("module name may hold only"), "{err}");
    assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err:?}");
    let mut spec = misbehave_spec();
    spec.valid_for_days = u64::MAX;
    let err = t.node.load(&t.sign(spec)).unwrap_err().to_string();
    assert!(err.contains("more than 100 years"), "{err}");
}

/// A module writing state without end is stopped at its quota (its
/// manifest's, capped by the node's ceiling) with an error value it can
/// handle; another module's state writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_writing_state_without_end_stops_at_its_quota() {
    // Sixteen 64 KiB writes do not fit; fifteen (94%) do.
    const QUOTA: u64 = 1024 * 1024;
    let t = node_with(
        Ceilings {
            max_state_bytes: QUOTA,
            ..Ceilings::default()
        },
        OutputLimits::default(),
    );
    let (tx, mut rx) = mpsc::channel(4096);
    let (_stop, shutdown) = watch::channel(false);
    let mut spec = misbehave_spec();
    spec.name = "filler".into();
    spec.limits.max_state_bytes = u64::MAX;
    let filler = t.node.load(&t.sign(spec)).unwrap();
    assert_eq!(filler.limits.max_state_bytes, QUOTA);
    t.node
        .start_inspector(filler, mode("fill"), tx.clone(), shutdown.clone())
        .await
        .unwrap();
    let steady = t.node.load(&t.named("steady")).unwrap();
    t.node
        .start_inspector(steady, mode("ok"), tx, shutdown)
        .await
        .unwrap();
    let state = t.node.state_database().tree("module-state").unwrap();
    let steady_ticks = || {
        state
            .get(b"steady\0ticks")
            .unwrap()
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| {
        alarms_with_key(e, "state-full").count() >= 1
    })
    .await;
    assert_eq!(
        alarms_with_key(&events, "state-full").count(),
        1,
        "{events:?}"
    );
    // A few more refused ticks, while the other module keeps writing.
    let ticks_then = steady_ticks();
    // Nothing is emitted meanwhile: poll the state, keep what arrives.
    let mut more = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while steady_ticks() < ticks_then + 5 && tokio::time::Instant::now() < deadline {
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            more.push(e);
        }
    }
    let held: u64 = state
        .scan_prefix(b"filler\0")
        .unwrap()
        .iter()
        .map(|(k, v)| (k.len() - b"filler\0".len() + v.len()) as u64)
        .sum();
    assert!(held <= QUOTA, "{held} bytes held, quota {QUOTA}");
    assert!(held > QUOTA / 2, "it did fill up to near its quota: {held}");
    assert!(
        steady_ticks() >= ticks_then + 5,
        "the other module kept writing"
    );
    let all: Vec<_> = events.iter().chain(&more).collect();
    assert!(
        all.iter().all(|e| !matches!(e, Event::Fault(_))),
        "a full quota is an error value, not a fault: {all:?}"
    );
    assert_eq!(alarms_with_key(&more, "state-refused").count(), 0);
    // The node said so first, once, as an alarm of that module.
    let nearly_full: Vec<_> = all
        .iter()
        .filter_map(|e| match e {
            Event::Alarm(a) if a.key == "agad.state-quota" => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(nearly_full.len(), 1, "{nearly_full:?}");
    assert_eq!(nearly_full[0].module, "filler");
    assert!(nearly_full[0].raised);
}
