//! Liveness across real processes: a child stopped with `kill -STOP` keeps
//! its TCP connection open and says nothing; its manager must notice, and
//! for a domain manager the top manager must hand its domain to the standby
//! (and the nodes follow it). Real `agad` processes, real mutual TLS,
//! keep-alives every second (the harness' default).
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::hierarchy::{Deployment, Options};
use serde_json::json;
use std::path::Path;

fn deployment() -> anyhow::Result<Deployment> {
    Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())
}

fn topology(stations: &[&str]) -> String {
    let stations: Vec<String> = stations.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[domain]]\nname = \"d1\"\nstations = [{}]\nreport_window = \"2s\"\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"d1\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d1\"\n[assign.config]\nperiod = \"1s\"\n",
        stations.join(", ")
    )
}

fn connected(state: &Option<serde_json::Value>) -> bool {
    state.as_ref().is_some_and(|s| s.get("connected").is_some())
}

/// The station serving `d1`, as the top manager sees it.
fn serving(d: &Deployment) -> anyhow::Result<Option<String>> {
    Ok(d.status()?["domains"][0]["station"]
        .as_str()
        .map(str::to_owned))
}

#[test]
fn a_stopped_node_is_noticed_while_its_connection_stays_open() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&topology(&["s1"]))?;
    let s1 = d.start_station("s1")?;
    d.start_node("n1", &s1)?;
    let n1 = json!({"node": {"name": "n1"}});
    d.wait_for("n1 connected", |d| {
        Ok(connected(&d.component_state(&n1)?).then_some(()))
    })?;

    d.sigstop("n1")?;
    d.wait_for("the domain manager to declare n1 stale", |d| {
        Ok(d.log("s1")
            .lines()
            .any(|l| l.contains("child stale") && l.contains("child=n1"))
            .then_some(()))
    })?;
    d.wait_for("n1 shown as not connected", |d| {
        Ok((!connected(&d.component_state(&n1)?)).then_some(()))
    })?;
    // Nothing closed the node's connection but the manager's judgement.
    assert!(
        !d.log("n1").contains("link down"),
        "the node could not have noticed anything while stopped"
    );

    d.sigcont("n1")?;
    d.wait_for("n1 back after SIGCONT", |d| {
        Ok(connected(&d.component_state(&n1)?).then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_stopped_domain_manager_hands_its_domain_and_its_nodes_to_the_standby() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&topology(&["s1", "s2"]))?;
    let s1 = d.start_station("s1")?;
    d.wait_for("s1 to serve d1", |d| {
        Ok((serving(d)?.as_deref() == Some("s1")).then_some(()))
    })?;
    let s2 = d.start_station("s2")?;
    d.start_node("n1", &format!("{s1},{s2}"))?;
    let n1 = json!({"node": {"name": "n1"}});
    d.wait_for("n1 connected through s1", |d| {
        Ok(
            (serving(d)?.as_deref() == Some("s1") && connected(&d.component_state(&n1)?))
                .then_some(()),
        )
    })?;

    d.sigstop("s1")?;
    d.wait_for("the top manager to declare s1 stale", |d| {
        Ok(d.log("mor")
            .lines()
            .any(|l| l.contains("child stale") && l.contains("child=s1"))
            .then_some(()))
    })?;
    d.wait_for(
        "d1 served by the standby s2, with n1 connected to it",
        |d| {
            Ok(
                (serving(d)?.as_deref() == Some("s2") && connected(&d.component_state(&n1)?))
                    .then_some(()),
            )
        },
    )?;
    assert!(
        d.log("n1").contains("silent"),
        "the node left its silent manager on its own:\n{}",
        d.log("n1")
    );

    // Thawed, s1 finds its link closed, comes back, and stays a standby.
    d.sigcont("s1")?;
    d.wait_for("s1 to reconnect to the top manager", |d| {
        Ok((d.log("mor").matches("child registered").count() >= 3).then_some(()))
    })?;
    assert_eq!(serving(&d)?.as_deref(), Some("s2"));
    Ok(())
}
