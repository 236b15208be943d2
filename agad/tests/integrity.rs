//! The guardian's integrity checks with real processes (top manager, a
//! domain-manager station and a node as `agad` processes over loopback
//! with mutual TLS, running a real inspector): a module file or a cached
//! compiled artefact altered on the node's disk is found, the module
//! quarantined, a security alarm reaches the top manager, the good copy is
//! redeployed from BC and runs again, and the alarm clears. A module that
//! keeps crashing raises `agad.module-crash-loop`, cleared once it runs
//! cleanly.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_protocol::Area;
use agad_protocol::message::{Alarm, Severity};
use agad_tests::hierarchy::{Deployment, Options};
use std::path::Path;

/// Both the node's own check and the manager's attestation every second.
const NODE_CONFIG: &str = "integrity_check_every = \"1s\"\n";

/// The top manager attests its stations every second too.
fn deployment() -> anyhow::Result<Deployment> {
    Deployment::start_with(
        Path::new(env!("CARGO_BIN_EXE_agad")),
        Options::default(),
        &["--attest-every", "1s"],
    )
}

fn one_domain(module: &str, config: &str) -> String {
    format!(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n[[node]]\nname = \"n1\"\ndomain = \"d1\"\n\n[[assign]]\nmodule = \"{module}\"\nnodes = [\"n1\"]\n[assign.config]\n{config}\n"
    )
}

/// cpu-mem running on n1 under s1, both checking every second; the
/// module's hash.
fn cpu_mem_running(d: &mut Deployment) -> anyhow::Result<String> {
    d.publish_inspector("cpu-mem")?;
    d.apply(&one_domain("cpu-mem", "period = \"500ms\""))?;
    let mor = d.mor_address()?.to_owned();
    let station = d.start_station_with("s1", &mor, &["--attest-every", "1s"])?;
    d.start_node_with_config("n1", &station, NODE_CONFIG)?;
    let hash = d.published_hash("cpu-mem")?;
    d.wait_for("cpu-mem started on n1", |d| {
        Ok(started(d).ge(&1).then_some(()))
    })?;
    Ok(hash)
}

/// How many times n1 logged cpu-mem started.
fn started(d: &Deployment) -> usize {
    d.log("n1")
        .lines()
        .filter(|l| l.contains("started") && l.contains("module=cpu-mem"))
        .count()
}

fn tampered_alarms(d: &Deployment) -> anyhow::Result<Vec<Alarm>> {
    Ok(d.alarms()?
        .into_iter()
        .filter(|a| a.key == "agad.module-tampered" && a.node == "n1" && a.module == "cpu-mem")
        .collect())
}

/// Flips one byte in the middle of `path`.
fn alter(path: &Path) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// After `alter`ing a file of the running module: quarantined, alarmed at
/// the top, redeployed from BC, running again, alarm cleared, and the
/// file on disk the good bytes again.
fn quarantined_and_healed(d: &mut Deployment, hash: &str, altered: &Path) -> anyhow::Result<()> {
    let before = started(d);
    alter(altered)?;
    let raise = d.wait_for("agad.module-tampered raised at the top manager", |d| {
        Ok(tampered_alarms(d)?.into_iter().find(|a| a.raised))
    })?;
    assert_eq!(raise.area, Area::Security);
    assert_eq!(raise.severity, Severity::Critical);
    assert!(raise.message.contains("quarantined"), "{}", raise.message);
    d.wait_for("the good copy running again and the alarm cleared", |d| {
        let cleared = tampered_alarms(d)?
            .iter()
            .any(|a| !a.raised && a.time_ms >= raise.time_ms);
        Ok((cleared && started(d) > before).then_some(()))
    })?;
    let log = d.log("n1");
    assert!(
        log.contains("quarantined:"),
        "the node logged the quarantine"
    );
    let file = d.path(&format!("n1/modules/{hash}.wasm"));
    let bytes = std::fs::read(&file)?;
    assert_eq!(
        hex::encode(agad_protocol::bundle::sha256(&bytes)),
        hash,
        "the module file holds the good bytes again"
    );
    // The manager attests the node again and finds it intact.
    d.wait_for("n1 attested intact in agad status", |d| {
        let state = d.component_state(&serde_json::json!({"attestation": {"element": "n1"}}))?;
        Ok(state
            .filter(|s| s.get("attested").is_some_and(|a| a["modules"] == 1))
            .map(|_| ()))
    })?;
    Ok(())
}

#[test]
fn a_module_file_altered_on_a_node_is_quarantined_alarmed_and_redeployed() -> anyhow::Result<()> {
    let mut d = deployment()?;
    let hash = cpu_mem_running(&mut d)?;
    let file = d.path(&format!("n1/modules/{hash}.wasm"));
    assert!(file.exists(), "module bytes are kept as a file");
    quarantined_and_healed(&mut d, &hash, &file)?;
    let status = d.agad(&["status"])?;
    assert!(
        status.contains("attestation n1") && status.contains("modules intact"),
        "{status}"
    );
    // The station's BC is attested by the top manager in turn.
    d.wait_for("s1's BC attested intact by the top manager", |d| {
        let state = d.component_state(&serde_json::json!({"attestation": {"element": "s1"}}))?;
        Ok(state
            .filter(|s| s.get("attested").is_some_and(|a| a["modules"] == 1))
            .map(|_| ()))
    })?;
    assert!(
        !d.alarms()?
            .iter()
            .any(|a| a.key == "agad.attestation-failed"),
        "no attestation failed: the node noticed the alteration itself"
    );
    Ok(())
}

#[test]
fn a_compiled_artefact_altered_on_a_node_is_quarantined_alarmed_and_redeployed()
-> anyhow::Result<()> {
    let mut d = deployment()?;
    let hash = cpu_mem_running(&mut d)?;
    let artefact = d.path(&format!("n1/compiled/{hash}.cwasm"));
    d.wait_for("the compiled artefact in the node's cache", |_| {
        Ok(artefact.exists().then_some(()))
    })?;
    quarantined_and_healed(&mut d, &hash, &artefact)?;
    let raise = tampered_alarms(&d)?.into_iter().find(|a| a.raised).unwrap();
    assert!(
        raise.message.contains("compiled artefact"),
        "{}",
        raise.message
    );
    // Compiled again from the good bytes, with a digest that matches.
    d.wait_for("a fresh compiled artefact", |_| {
        Ok(artefact.exists().then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_crash_looping_module_is_alarmed_and_cleared_once_it_runs_cleanly() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_misbehave()?;
    d.apply(&one_domain(
        "misbehave",
        "mode = \"trap\"\nperiod = \"100ms\"",
    ))?;
    let station = d.start_station("s1")?;
    d.start_node_with_config(
        "n1",
        &station,
        "restart_initial = \"100ms\"\nrestart_max = \"200ms\"\ncrash_loop_restarts = 3\ncrash_loop_window = \"1m\"\ncrash_loop_clean = \"2s\"\n",
    )?;
    let looping = |d: &Deployment| -> anyhow::Result<Vec<Alarm>> {
        Ok(d.alarms()?
            .into_iter()
            .filter(|a| a.key == "agad.module-crash-loop" && a.module == "misbehave")
            .collect())
    };
    let raise = d.wait_for("agad.module-crash-loop raised", |d| {
        Ok(looping(d)?.into_iter().find(|a| a.raised))
    })?;
    assert_eq!(raise.node, "n1");
    assert!(raise.message.contains("crash-looping"), "{}", raise.message);

    // Fixed: the module ticks cleanly from now on.
    d.apply(&one_domain(
        "misbehave",
        "mode = \"ok\"\nperiod = \"100ms\"",
    ))?;
    d.wait_for("agad.module-crash-loop cleared", |d| {
        Ok(looping(d)?
            .into_iter()
            .find(|a| !a.raised && a.time_ms >= raise.time_ms))
    })?;
    // Raised once for the whole loop, not at every restart.
    assert_eq!(looping(&d)?.iter().filter(|a| a.raised).count(), 1);
    Ok(())
}
