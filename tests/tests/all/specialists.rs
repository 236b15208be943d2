//! Specialists in a node in-process (`Node::run_specialist`), with the
//! real built modules: if-diagnose over a real snmpd, and the node's
//! host policy reaching the capabilities (`agad/tests/specialists.rs`
//! runs the same modules through `agad node run`).

use crate::runtime::{now, settings};
use agad_protocol::{Bundle, Capability, ManifestSpec, SecretKey};
use agad_runtime::{HostPolicy, Node, NodeSettings};
use agad_tests::snmpd::Snmpd;
use std::sync::Arc;

fn node(settings: NodeSettings) -> (Node, SecretKey, tempfile::TempDir) {
    let key = SecretKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(settings, vec![key.public()], dir.path()).unwrap();
    (node, key, dir)
}

fn built_in(name: &str, key: &SecretKey) -> Bundle {
    let m = agad_modules::specialist(name).unwrap();
    let spec = ManifestSpec::from_toml(m.manifest_toml).unwrap();
    Bundle::sign(spec, m.wasm.to_vec(), key, now())
}

fn args(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn if_diagnose_reads_an_interface_over_snmp() {
    let snmpd = Snmpd::start();
    let (node, key, _dir) = node(NodeSettings {
        agents: Arc::from(vec![snmpd.v2c_agent()]),
        ..settings(Capability::ALL.to_vec())
    });
    let module = node.load(&built_in("if-diagnose", &key)).unwrap();
    let d = node
        .run_specialist(&module, &args(&[("interface", "lo"), ("sample", "300ms")]))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", snmpd.log()));
    let fact = |k: &str| {
        d.facts
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(fact("source"), Some("snmp"), "{d:?}");
    assert_eq!(fact("oper_state"), Some("up"), "{d:?}");
    assert_eq!(fact("admin_up"), Some("true"), "{d:?}");
    assert!(
        fact("if_index").is_some_and(|i| i.parse::<u32>().is_ok()),
        "{d:?}"
    );
    assert_eq!(fact("in_errors"), Some("0"), "{d:?}");

    // An interface the agent does not know is the specialist's clear error.
    let refused = node
        .run_specialist(
            &module,
            &args(&[("interface", "nosuch0"), ("sample", "100ms")]),
        )
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("nosuch0"), "{refused}");
}

#[tokio::test]
async fn the_node_policy_reaches_the_disk_capability() {
    let allowed = tempfile::tempdir().unwrap();
    std::fs::create_dir(allowed.path().join("full")).unwrap();
    std::fs::write(allowed.path().join("full/f"), vec![1u8; 1 << 20]).unwrap();
    let (node, key, _dir) = node(NodeSettings {
        host_policy: Arc::new(HostPolicy {
            disk_usage_paths: vec![allowed.path().to_path_buf()],
            ..HostPolicy::default()
        }),
        ..settings(Capability::ALL.to_vec())
    });
    let module = node.load(&built_in("disk-usage", &key)).unwrap();
    let path = allowed.path().display().to_string();
    let d = node
        .run_specialist(&module, &args(&[("path", &path)]))
        .await
        .unwrap()
        .unwrap();
    let named = d.facts.iter().find(|(k, _)| k == "path").unwrap();
    let full = std::fs::canonicalize(allowed.path().join("full")).unwrap();
    assert_eq!(named.1, full.display().to_string(), "{d:?}");

    // Elsewhere: the capability's error value, turned by the specialist
    // into its refusal.
    let refused = node
        .run_specialist(&module, &args(&[("path", "/etc")]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        refused.starts_with("refused:") && refused.contains("not allowed by this node's policy"),
        "{refused}"
    );
}

#[tokio::test]
async fn every_specialist_declares_exactly_the_arguments_it_accepts() {
    let (node, key, _dir) = node(settings(Capability::ALL.to_vec()));
    for builtin in agad_modules::SPECIALISTS {
        let spec = ManifestSpec::from_toml(builtin.manifest_toml).unwrap();
        assert_eq!(
            spec.kind,
            agad_protocol::Kind::Specialist,
            "{}",
            builtin.name
        );
        let mut declared: Vec<String> = spec.config_keys().into_iter().map(|k| k.name).collect();
        let module = node.load(&built_in(builtin.name, &key)).unwrap();
        // Refused before any work: the SDK checks the keys first.
        let error = node
            .run_specialist(&module, &args(&[("zz-undeclared", "1")]))
            .await
            .unwrap()
            .unwrap_err();
        let known = error
            .split("(known: ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{}: {error}", builtin.name));
        let mut accepted: Vec<String> = known.split(", ").map(str::to_owned).collect();
        declared.sort();
        accepted.sort();
        assert_eq!(declared, accepted, "{}", builtin.name);
    }
}

#[tokio::test]
async fn a_specialist_past_its_deadline_is_a_timeout_fault() {
    // The node grants at most 300 ms a call; top-cpu sleeps a second
    // between its two listings (a WASI sleep, ended by the deadline).
    let (node, key, _dir) = node(NodeSettings {
        ceilings: agad_runtime::Ceilings {
            max_time_per_call_ms: 300,
            ..Default::default()
        },
        ..settings(Capability::ALL.to_vec())
    });
    let module = node.load(&built_in("top-cpu", &key)).unwrap();
    let fault = node
        .run_specialist(&module, &args(&[("sample", "1s")]))
        .await
        .unwrap_err();
    assert_eq!(
        fault.kind,
        agad_protocol::message::FaultKind::Timeout,
        "{fault}"
    );
}
