//! The guardian on real separate hosts: the top manager, two candidate
//! stations of one domain and two nodes, each in a network namespace of its
//! own on one switched network (`agad_tests::network`). Real faults: a
//! host's interface set down (host down), a process killed while its host
//! stays up (agent down), a station's host cut off (host down, and its
//! domain fails over to the standby), the serving station's process killed
//! (agent down, and the domain fails back). Needs root; fails (never skips)
//! without.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_protocol::message::Alarm;
use agad_tests::hierarchy::{Deployment, Options, is_guardian_alarm};
use agad_tests::network::Network;
use std::collections::BTreeSet;
use std::path::Path;

const NODES: &[&str] = &["n1", "n2"];

fn topology(net: &Network) -> anyhow::Result<String> {
    let mut t = String::from(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\", \"s2\"]\nreport_window = \"2s\"\n",
    );
    for n in NODES {
        t += &format!(
            "\n[[node]]\nname = \"{n}\"\ndomain = \"d1\"\naddress = \"{}\"\n",
            net.host(n)?.address()
        );
    }
    t += "\n[[link]]\nbetween = [\"n1\", \"n2\"]\n";
    t += "\n[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d1\"\n[assign.config]\n\
          period = \"500ms\"\nwindow_secs = 1\nmem_percent = 0.1\n";
    Ok(t)
}

fn served_by(d: &Deployment) -> anyhow::Result<(Option<String>, Option<u64>)> {
    let domain = d.status()?["domains"][0].clone();
    Ok((
        domain["station"].as_str().map(str::to_owned),
        domain["generation"].as_u64(),
    ))
}

/// The guardian's events about `element` with `key`, oldest first.
fn events(d: &Deployment, element: &str, key: &str) -> anyhow::Result<Vec<Alarm>> {
    let mut alarms: Vec<Alarm> = d
        .alarms()?
        .into_iter()
        .filter(|a| a.node == element && a.key == key)
        .collect();
    alarms.sort_by_key(|a| a.time_ms);
    Ok(alarms)
}

#[test]
fn host_down_agent_down_and_a_station_host_lost_are_diagnosed_and_healed() -> anyhow::Result<()> {
    let net = Network::new(&["mor", "s1", "s2", "n1", "n2"])?;
    let mut d = Deployment::start_on(
        Path::new(env!("CARGO_BIN_EXE_agad")),
        Options::default(),
        net.host("mor")?,
    )?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&topology(&net)?)?;
    let s1 = d.start_station_on("s1", net.host("s1")?)?;
    d.wait_for("s1 to serve d1", |d| {
        Ok((served_by(d)?.0.as_deref() == Some("s1")).then_some(()))
    })?;
    let s2 = d.start_station_on("s2", net.host("s2")?)?;
    for n in NODES {
        d.start_node_on(n, &format!("{s1},{s2}"), net.host(n)?)?;
    }
    d.wait_for("every node connected", |d| {
        Ok((d.node_connected("n1")? && d.node_connected("n2")?).then_some(()))
    })?;

    // 1. n1's host is cut off: host down, at the top manager, with the
    //    address probed; cleared when the link is back.
    net.link_down("n1")?;
    let down = d.wait_for("n1 host down in BIG", |d| {
        Ok(events(d, "n1", "agad.host-down")?
            .into_iter()
            .find(|a| a.raised))
    })?;
    let n1_address = net.host("n1")?.address().to_string();
    assert!(
        down.message.contains("host down") && down.message.contains(&n1_address),
        "{down:?}"
    );
    d.wait_for("n1 shown failed, host down", |d| {
        Ok(d.node_diagnosed("n1", "host-down")?.then_some(()))
    })?;
    let table = d.agad(&["alarms", "--node", "n1", "--active"])?;
    assert!(table.contains("host-down"), "{table}");
    // The node and its links are shown failed, with since when and why.
    let status = d.agad(&["status"])?;
    assert!(
        status.contains("link n1 -- n2: FAILED, n1: host down")
            && status.contains("failed, host down")
            && status.contains(" since "),
        "{status}"
    );
    net.link_up("n1")?;
    d.wait_for("n1's host down cleared and n1 connected", |d| {
        let cleared = events(d, "n1", "agad.host-down")?.iter().any(|a| !a.raised);
        Ok((cleared && d.node_connected("n1")?).then_some(()))
    })?;

    // 2. n2's process dies, its host stays up: agent down, then cleared.
    d.kill9("n2")?;
    d.wait_for("n2 agent down in BIG", |d| {
        Ok(events(d, "n2", "agad.agent-down")?
            .into_iter()
            .find(|a| a.raised))
    })?;
    d.restart("n2")?;
    d.wait_for("n2's agent down cleared", |d| {
        Ok(events(d, "n2", "agad.agent-down")?
            .iter()
            .any(|a| !a.raised)
            .then_some(()))
    })?;

    // 3. The serving station's host is cut off: the top manager finds it
    //    stale, fails the domain over to s2 as a newer activation, the
    //    nodes follow, and its guardian says host down for s1.
    let (_, before) = served_by(&d)?;
    net.link_down("s1")?;
    d.wait_for("s2 serving d1 with both nodes", |d| {
        let (station, generation) = served_by(d)?;
        Ok((station.as_deref() == Some("s2")
            && generation > before
            && d.node_connected("n1")?
            && d.node_connected("n2")?)
        .then_some(()))
    })?;
    let s1_down = d.wait_for("s1 host down in BIG", |d| {
        Ok(events(d, "s1", "agad.host-down")?
            .into_iter()
            .find(|a| a.raised))
    })?;
    assert!(s1_down.message.contains("station `s1`"), "{s1_down:?}");
    // Back: s1 reconnects to the top manager, steps down, its alarm clears.
    net.link_up("s1")?;
    d.wait_for("s1 back as standby, host down cleared", |d| {
        let cleared = events(d, "s1", "agad.host-down")?.iter().any(|a| !a.raised);
        Ok((cleared && d.log("s1").contains("stepping down")).then_some(()))
    })?;
    assert_eq!(served_by(&d)?.0.as_deref(), Some("s2"));

    // 4. The serving manager's process is killed on its (healthy) host:
    //    agent down for s2, the domain back on s1 under a newer activation.
    let (_, before) = served_by(&d)?;
    d.kill9("s2")?;
    d.wait_for("s1 serving d1 again with both nodes", |d| {
        let (station, generation) = served_by(d)?;
        Ok((station.as_deref() == Some("s1")
            && generation > before
            && d.node_connected("n1")?
            && d.node_connected("n2")?)
        .then_some(()))
    })?;
    d.wait_for("s2 agent down in BIG", |d| {
        Ok(events(d, "s2", "agad.agent-down")?
            .into_iter()
            .find(|a| a.raised))
    })?;
    d.restart("s2")?;
    d.wait_for("s2's agent down cleared", |d| {
        Ok(events(d, "s2", "agad.agent-down")?
            .iter()
            .any(|a| !a.raised)
            .then_some(()))
    })?;

    // Every diagnosis was right, nothing else was accused, and every alarm
    // the nodes queued is in BIG once.
    let accused: BTreeSet<(String, String)> = d
        .alarms()?
        .into_iter()
        .filter(|a| is_guardian_alarm(a) && a.raised)
        .map(|a| (a.node, a.key))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("n1", "agad.host-down"),
        ("n2", "agad.agent-down"),
        ("s1", "agad.host-down"),
        ("s2", "agad.agent-down"),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_owned(), k.to_owned()))
    .collect();
    assert_eq!(accused, expected);
    for n in NODES {
        let queued = d.queued_alarm_ids(n);
        d.wait_for(&format!("every alarm {n} queued in BIG"), |d| {
            let ids: BTreeSet<String> = d.alarms()?.into_iter().map(|a| a.id).collect();
            Ok(queued.is_subset(&ids).then_some(()))
        })?;
    }
    let big = d.alarms()?;
    let ids: BTreeSet<&str> = big.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), big.len(), "no alarm twice in BIG");
    Ok(())
}
