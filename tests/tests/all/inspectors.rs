//! The built-in inspectors as real wasm components in a real node, reading
//! this machine and Debian's snmpd: what leaves the node, and how often.

use agad_protocol::{Bundle, Capability, ManifestSpec, SecretKey};
use agad_runtime::bindings::types::{Alarm, Output};
use agad_runtime::{
    AgentConfig, InspectorInstance, ModuleConfig, Node, NodeSettings, RestartPolicy,
};
use agad_tests::snmpd::Snmpd;
use std::sync::Arc;
use std::time::Duration;

struct Harness {
    /// Module calls are async (host calls run on its blocking pool).
    runtime: tokio::runtime::Runtime,
    node: Node,
    key: SecretKey,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(agents: Vec<AgentConfig>) -> Harness {
        let key = SecretKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let settings = NodeSettings {
            name: "inspected".into(),
            agents: Arc::from(agents),
            policy: Capability::ALL.to_vec(),
            default_period: Duration::from_secs(1),
            restart: RestartPolicy::default(),
            ceilings: Default::default(),
            output: Default::default(),
            disk: Default::default(),
        };
        let node = Node::open(settings, vec![key.public()], dir.path()).unwrap();
        Harness {
            runtime: tokio::runtime::Runtime::new().unwrap(),
            node,
            key,
            _dir: dir,
        }
    }

    fn instance(&self, name: &str, config: &[(&str, &str)]) -> InspectorInstance {
        let builtin = agad_modules::inspector(name).unwrap();
        let spec = ManifestSpec::from_toml(builtin.manifest_toml).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let bundle = Bundle::sign(spec, builtin.wasm.to_vec(), &self.key, now);
        let linked = self.node.load(&bundle).unwrap();
        let config = ModuleConfig {
            values: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.runtime
            .block_on(self.node.instantiate(&linked, &config))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

impl Harness {
    /// What `init` of the built-in `name` says to `config`: `None` when it
    /// accepts it.
    fn init_error(&self, name: &str, config: &[(&str, &str)]) -> Option<String> {
        let builtin = agad_modules::inspector(name).unwrap();
        let spec = ManifestSpec::from_toml(builtin.manifest_toml).unwrap();
        let bundle = Bundle::sign(spec, builtin.wasm.to_vec(), &self.key, now_secs());
        let linked = self.node.load(&bundle).unwrap();
        let config = ModuleConfig {
            values: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.runtime
            .block_on(self.node.instantiate(&linked, &config))
            .err()
            .map(|e| e.to_string())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The keys each built-in's manifest declares (what `agad topology apply`
/// checks against) are exactly the keys its `init` accepts: the SDK's
/// refusal of an unknown key lists the keys the module knows.
#[test]
fn every_inspector_declares_exactly_the_config_keys_it_accepts() {
    // Only `init` runs, which never sends a request: the agent need not exist.
    let h = Harness::new(vec![AgentConfig::v2c("default", "127.0.0.1:9", "public")]);
    for builtin in agad_modules::INSPECTORS {
        let spec = ManifestSpec::from_toml(builtin.manifest_toml).unwrap();
        let mut declared: Vec<String> = spec.config_keys().into_iter().map(|k| k.name).collect();
        let error = h
            .init_error(builtin.name, &[("zz-undeclared", "1")])
            .unwrap_or_else(|| panic!("{}: an unknown key was accepted", builtin.name));
        let known = error
            .split("(known: ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{}: {error}", builtin.name));
        let mut accepted: Vec<String> = known.split(", ").map(str::to_owned).collect();
        declared.sort();
        accepted.sort();
        assert_eq!(declared, accepted, "{}", builtin.name);
        // A declared default is one the module accepts.
        let required: Vec<(String, String)> = spec
            .config_keys()
            .into_iter()
            .filter(|k| k.required)
            .map(|k| {
                let value = sample(builtin.name, &k.name);
                (k.name, value)
            })
            .collect();
        for key in spec.config_keys() {
            let Some(default) = key.default else { continue };
            let mut config: Vec<(&str, &str)> = required
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            config.push((&key.name, &default));
            assert_eq!(
                h.init_error(builtin.name, &config),
                None,
                "{} {}={default}",
                builtin.name,
                key.name
            );
        }
    }
}

/// A value the required `key` of `module` accepts.
fn sample(module: &str, key: &str) -> String {
    match (module, key) {
        ("snmp-threshold", "oid") => "1.3.6.1.2.1.1.3.0".into(),
        ("snmp-threshold", "threshold") => "1".into(),
        _ => "sshd".into(),
    }
}

impl Harness {
    /// Ticks `n` times, `gap` apart, and gathers the outputs.
    fn ticks(&self, instance: &mut InspectorInstance, n: usize, gap: Duration) -> Vec<Output> {
        (0..n)
            .map(|i| {
                if i > 0 {
                    std::thread::sleep(gap);
                }
                self.runtime.block_on(instance.tick()).unwrap()
            })
            .collect()
    }
}

fn alarms(outputs: &[Output]) -> Vec<&Alarm> {
    outputs.iter().flat_map(|o| o.alarms.iter()).collect()
}

#[test]
fn cpu_mem_raises_a_crossed_threshold_once_and_summarises_per_window() {
    let h = Harness::new(vec![]);
    // Memory in use is above 0% on any machine that runs this test.
    let mut cpu_mem = h.instance(
        "cpu-mem",
        &[
            ("mem_percent", "0"),
            ("raise_after", "2"),
            ("window_secs", "1"),
        ],
    );
    let outputs = h.ticks(&mut cpu_mem, 6, Duration::from_millis(300));
    let raised: Vec<_> = alarms(&outputs)
        .into_iter()
        .filter(|a| a.raised && a.metric.starts_with("mem"))
        .collect();
    assert_eq!(raised.len(), 1, "{outputs:?}");
    assert!(
        outputs[0]
            .alarms
            .iter()
            .all(|a| !a.metric.starts_with("mem")),
        "not before raise_after ticks"
    );
    assert!(raised[0].value > 0.0 && raised[0].threshold == 0.0);
    let summaries: Vec<_> = outputs.iter().flat_map(|o| o.summaries.iter()).collect();
    assert!(!summaries.is_empty(), "a 1 s window closes within 1.5 s");
    for s in &summaries {
        assert!(s.min <= s.mean && s.mean <= s.max, "{s:?}");
        assert!(s.count >= 1 && s.window_start_ms < s.window_end_ms, "{s:?}");
    }
}

#[test]
fn app_watch_alarms_once_for_a_missing_process_and_not_for_a_running_one() {
    let h = Harness::new(vec![]);
    let me = std::env::current_exe().unwrap();
    let own_name: String = me
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .take(15)
        .collect();
    let mut watch = h.instance(
        "app-watch",
        &[
            ("processes", &format!("{own_name},agad-no-such-daemon")),
            ("raise_after", "1"),
        ],
    );
    let outputs = h.ticks(&mut watch, 4, Duration::from_millis(100));
    let raised: Vec<_> = alarms(&outputs).into_iter().filter(|a| a.raised).collect();
    assert_eq!(raised.len(), 1, "{outputs:?}");
    assert!(
        raised[0].subject.contains("agad-no-such-daemon")
            || raised[0].key.contains("agad-no-such-daemon"),
        "{:?}",
        raised[0]
    );
}

#[test]
fn disk_space_alarms_once_per_filesystem_over_threshold() {
    let h = Harness::new(vec![]);
    let mut disks = h.instance("disk-space", &[("used_percent", "0"), ("raise_after", "1")]);
    let outputs = h.ticks(&mut disks, 3, Duration::from_millis(100));
    let raised = alarms(&outputs);
    assert!(!raised.is_empty(), "some filesystem is in use");
    let mut keys: Vec<_> = raised.iter().map(|a| a.key.clone()).collect();
    let n = keys.len();
    keys.dedup();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "each filesystem alarmed once: {raised:?}");
}

#[test]
fn if_health_reads_if_mib_from_snmpd_and_reports_consolidated_rates() {
    let snmpd = Snmpd::start();
    let h = Harness::new(vec![snmpd.v2c_agent()]);
    let mut ifs = h.instance("if-health", &[("window_secs", "1")]);
    let outputs = h.ticks(&mut ifs, 4, Duration::from_millis(400));
    assert!(
        alarms(&outputs)
            .iter()
            .all(|a| !a.raised || a.subject != "lo"),
        "loopback is up: {outputs:?}"
    );
    let summaries: Vec<_> = outputs.iter().flat_map(|o| o.summaries.iter()).collect();
    assert!(!summaries.is_empty(), "{outputs:?}");
}

#[test]
fn snmp_threshold_over_v3_raises_once_and_an_unreachable_agent_alarms_once() {
    let snmpd = Snmpd::start();
    let mut dead = snmpd.v2c_agent();
    dead.name = "dead".into();
    dead.address = "127.0.0.1:9".into();
    dead.timeout_ms = 200;
    dead.retries = 0;
    let h = Harness::new(vec![snmpd.v3_agent(), dead]);
    // sysUpTime.0 is above 0 on a running agent.
    let mut uptime = h.instance(
        "snmp-threshold",
        &[
            ("oid", "1.3.6.1.2.1.1.3.0"),
            ("threshold", "0"),
            ("raise_after", "1"),
        ],
    );
    let outputs = h.ticks(&mut uptime, 3, Duration::from_millis(100));
    let raised: Vec<_> = alarms(&outputs).into_iter().filter(|a| a.raised).collect();
    assert_eq!(raised.len(), 1, "{outputs:?}");
    assert!(raised[0].value > 0.0);

    let mut unreachable = h.instance(
        "snmp-threshold",
        &[
            ("oid", "1.3.6.1.2.1.1.3.0"),
            ("threshold", "0"),
            ("agent", "dead"),
            ("raise_after", "1"),
        ],
    );
    let outputs = h.ticks(&mut unreachable, 3, Duration::from_millis(50));
    let raised: Vec<_> = alarms(&outputs).into_iter().filter(|a| a.raised).collect();
    assert_eq!(
        raised.len(),
        1,
        "one 'agent unreachable' alarm, not one per tick: {outputs:?}"
    );
}
