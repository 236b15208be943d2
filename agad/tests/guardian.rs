//! The guardian with real processes on loopback (top manager, two candidate
//! stations of one domain, nodes, all `agad` processes with real mutual
//! TLS and the real inspectors): a killed domain manager's role moves to
//! its standby and every node follows, nothing the node queued is lost or
//! doubled, the old manager steps down when it returns and nodes refuse it
//! while it still believes it serves (fencing); a killed or frozen node is
//! diagnosed "agent down" and cleared when it is back; a node already dead
//! when its manager restarts (or never started) is accused all the same; a
//! stepped-down manager clears what it raised and its successor accuses
//! anew. Faults that need
//! separate hosts (a link down: "host down") are in `guardian_hosts.rs`.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_protocol::message::Alarm;
use agad_tests::hierarchy::{Deployment, Options, is_guardian_alarm};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The domain's report window in these tests.
const WINDOW_MS: u64 = 2000;

fn deployment() -> anyhow::Result<Deployment> {
    Deployment::start(
        Path::new(env!("CARGO_BIN_EXE_agad")),
        Options {
            // "report queued" lines: what the node durably buffered.
            log_filter: "info,agad_runtime::managed=debug".into(),
            ..Options::default()
        },
    )
}

/// Domain `d1` with candidate stations `stations` (priority order), 2 s
/// windows, and cpu-mem raising its memory alarm on every node of `nodes`.
fn topology(stations: &[&str], nodes: &[&str]) -> String {
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut t = format!(
        "[[domain]]\nname = \"d1\"\nstations = [{}]\nreport_window = \"2s\"\n",
        list(stations)
    );
    for n in nodes {
        t += &format!("\n[[node]]\nname = \"{n}\"\ndomain = \"d1\"\naddress = \"127.0.0.1\"\n");
    }
    t + &format!(
        "\n[[assign]]\nmodule = \"cpu-mem\"\nnodes = [{}]\n[assign.config]\nperiod = \"500ms\"\nwindow_secs = 1\nmem_percent = 0.1\n",
        list(nodes)
    )
}

/// The domain's entry in `agad status --json`.
fn domain(d: &Deployment) -> anyhow::Result<serde_json::Value> {
    let status = d.status()?;
    Ok(status["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["domain"] == "d1")
        .cloned()
        .unwrap_or_default())
}

/// Who serves d1, as which activation, per the top manager.
fn served_by(d: &Deployment) -> anyhow::Result<(Option<String>, Option<u64>)> {
    let domain = domain(d)?;
    Ok((
        domain["station"].as_str().map(str::to_owned),
        domain["generation"].as_u64(),
    ))
}

fn guardian_alarms(d: &Deployment, node: &str, key: &str) -> anyhow::Result<Vec<Alarm>> {
    Ok(d.alarms()?
        .into_iter()
        .filter(|a| a.node == node && a.key == key)
        .collect())
}

/// The first raise of `key` about `node` in BIG, if any.
fn raised(d: &Deployment, node: &str, key: &str) -> anyhow::Result<Option<Alarm>> {
    Ok(guardian_alarms(d, node, key)?
        .into_iter()
        .find(|a| a.raised))
}

/// Whether BIG holds a clear of `key` about `node`.
fn cleared(d: &Deployment, node: &str, key: &str) -> anyhow::Result<bool> {
    Ok(guardian_alarms(d, node, key)?.iter().any(|a| !a.raised))
}

/// d1 served by s1, s2 its standby, nodes n1 and n2 connected to s1 (and
/// knowing both stations).
fn s1_serving_n1_n2_with_standby_s2() -> anyhow::Result<Deployment> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&topology(&["s1", "s2"], &["n1", "n2"]))?;
    let s1 = d.start_station("s1")?;
    // s2 after s1 serves: the first candidate to connect gets the domain.
    d.wait_for("s1 serving d1", |d| {
        Ok((served_by(d)?.0.as_deref() == Some("s1")).then_some(()))
    })?;
    let s2 = d.start_station("s2")?;
    let both = format!("{s1},{s2}");
    d.start_node("n1", &both)?;
    d.start_node("n2", &both)?;
    d.wait_for("s1 serving d1 with both nodes", |d| {
        Ok((served_by(d)?.0.as_deref() == Some("s1")
            && d.node_connected("n1")?
            && d.node_connected("n2")?)
        .then_some(()))
    })?;
    Ok(d)
}

#[test]
fn a_killed_domain_manager_fails_over_to_its_standby_and_steps_down_when_it_returns()
-> anyhow::Result<()> {
    let mut d = s1_serving_n1_n2_with_standby_s2()?;
    let (_, first) = served_by(&d)?;
    let first = first.expect("an activation generation in the status");
    d.wait_for("reports of both nodes in BIG", |d| {
        let rows = d.reports()?;
        Ok(
            (rows.iter().any(|r| r.node == "n1") && rows.iter().any(|r| r.node == "n2"))
                .then_some(()),
        )
    })?;

    // The domain manager dies: the standby takes the domain over, as a
    // newer activation, and both nodes reconnect to it.
    d.kill9("s1")?;
    d.wait_for("s2 serving d1 with both nodes", |d| {
        Ok((served_by(d)?.0.as_deref() == Some("s2")
            && d.node_connected("n1")?
            && d.node_connected("n2")?)
        .then_some(()))
    })?;
    let (_, second) = served_by(&d)?;
    assert!(second > Some(first), "{second:?} after {first}");
    // The top manager's guardian found s1's host up and s1 silent.
    let down = d.wait_for("s1 diagnosed agent down", |d| {
        raised(d, "s1", "agad.agent-down")
    })?;
    assert!(down.message.contains("agent down"), "{down:?}");
    let status = domain(&d)?;
    let s1_state = status["stations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "s1")
        .cloned()
        .unwrap_or_default();
    assert!(
        s1_state["state"]["failed"]["diagnosis"] == "agent-down"
            && s1_state["since_ms"].as_u64().is_some(),
        "{s1_state}"
    );

    // The old manager comes back holding d1's replica: it is told to step
    // down, the nodes stay with s2, and its alarm clears.
    d.restart("s1")?;
    d.wait_for("s1 to step down", |d| {
        Ok(d.log("s1").contains("stepping down").then_some(()))
    })?;
    d.wait_for("s1's agent-down cleared", |d| {
        Ok(cleared(d, "s1", "agad.agent-down")?.then_some(()))
    })?;
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(served_by(&d)?, (Some("s2".to_owned()), second));
    assert!(d.node_connected("n1")? && d.node_connected("n2")?);
    let restarted = since_last_start(&d.log("s1"));
    assert!(
        !restarted.contains("child registered"),
        "no node may join the stepped-down s1:\n{restarted}"
    );

    // Nothing a node queued is lost or doubled across the fail-over.
    nothing_lost_or_doubled(&mut d, &["n1", "n2"])?;
    Ok(())
}

#[test]
fn nodes_refuse_a_manager_whose_domain_moved_on_until_it_is_activated_again() -> anyhow::Result<()>
{
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&topology(&["s1", "s2"], &["n1"]))?;
    let s1 = d.start_station("s1")?;
    // s2 after s1 serves: the first candidate to connect gets the domain.
    d.wait_for("s1 serving d1", |d| {
        Ok((served_by(d)?.0.as_deref() == Some("s1")).then_some(()))
    })?;
    let s2 = d.start_station("s2")?;
    d.start_node("n1", &format!("{s1},{s2}"))?;
    d.wait_for("n1 under s1", |d| {
        Ok((served_by(d)?.0.as_deref() == Some("s1") && d.node_connected("n1")?).then_some(()))
    })?;
    d.kill9("s1")?;
    d.wait_for("n1 under s2", |d| {
        Ok((served_by(d)?.0.as_deref() == Some("s2") && d.node_connected("n1")?).then_some(()))
    })?;

    // s1 comes back while no top manager can tell it the domain moved on
    // (and s2 is gone too): it serves under its old activation, and the
    // node, which saw the newer one, refuses it.
    let links_to_s1 = |d: &Deployment| d.log("n1").matches("link up parent=s1").count();
    let before = links_to_s1(&d);
    d.kill9("mor")?;
    d.kill9("s2")?;
    d.restart("s1")?;
    d.wait_for("n1 to refuse s1", |d| {
        Ok(d.log("n1").contains("(fenced)").then_some(()))
    })?;
    // s1 welcomed it, and the node left before sending a single frame.
    assert_eq!(links_to_s1(&d), before, "{}", d.log("n1"));

    // The top manager returns; s2 does not, so after its grace the domain
    // moves to s1 as a newer activation, which the node accepts.
    d.restart_mor()?;
    d.wait_for("n1 under s1 again", |d| {
        Ok((served_by(d)?.0.as_deref() == Some("s1") && d.node_connected("n1")?).then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_sub_domain_fails_over_to_its_standby_and_keeps_its_station_when_its_parent_fails_over()
-> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    // campus (stations s1, s4) activates the stations of its sub-domain
    // lab (s2, s3); n1 is lab's node.
    d.apply(
        "[[domain]]\nname = \"campus\"\nstations = [\"s1\", \"s4\"]\nreport_window = \"2s\"\n\n\
         [[domain]]\nname = \"lab\"\nparent = \"campus\"\nstations = [\"s2\", \"s3\"]\nreport_window = \"2s\"\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"lab\"\naddress = \"127.0.0.1\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nperiod = \"500ms\"\nwindow_secs = 1\nmem_percent = 0.1\n",
    )?;
    let campus_served_by = |d: &Deployment| -> anyhow::Result<Option<String>> {
        Ok(d.status()?["domains"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["domain"] == "campus")
            .and_then(|x| x["station"].as_str().map(str::to_owned)))
    };
    let lab_served_by = |d: &Deployment| -> anyhow::Result<Option<String>> {
        Ok(
            d.component_state(&serde_json::json!({"subdomain": {"domain": "lab"}}))?
                .and_then(|s| s["connected"]["served_by"].as_str().map(str::to_owned)),
        )
    };
    let s1 = d.start_station("s1")?;
    d.wait_for("s1 serving campus", |d| {
        Ok((campus_served_by(d)?.as_deref() == Some("s1")).then_some(()))
    })?;
    let s4 = d.start_station("s4")?;
    let campus = format!("{s1},{s4}");
    let s2 = d.start_station_under("s2", &campus)?;
    d.wait_for("s2 serving lab", |d| {
        Ok((lab_served_by(d)?.as_deref() == Some("s2")).then_some(()))
    })?;
    let s3 = d.start_station_under("s3", &campus)?;
    d.start_node("n1", &format!("{s2},{s3}"))?;
    let links = |d: &Deployment, station: &str| {
        d.log("n1")
            .matches(&format!("link up parent={station}"))
            .count()
    };
    d.wait_for("n1 under s2, its report in BIG", |d| {
        Ok((links(d, "s2") > 0 && d.reports()?.iter().any(|r| r.node == "n1")).then_some(()))
    })?;

    // lab's manager dies: campus's manager activates the standby, and the
    // node follows it.
    d.kill9("s2")?;
    d.wait_for("s3 serving lab with n1", |d| {
        Ok((lab_served_by(d)?.as_deref() == Some("s3") && links(d, "s3") > 0).then_some(()))
    })?;
    // s2 comes back still believing it serves lab: told to step down.
    d.restart("s2")?;
    d.wait_for("s2 to step down", |d| {
        Ok(d.log("s2").contains("stepping down").then_some(()))
    })?;

    // campus's manager dies: its standby takes campus over, has never
    // seen lab's activations, and keeps lab with s3, which holds the
    // newest (s2 holds an older one and dials in too).
    d.kill9("s1")?;
    d.wait_for("s4 serving campus, lab served by s3", |d| {
        Ok((campus_served_by(d)?.as_deref() == Some("s4")
            && lab_served_by(d)?.as_deref() == Some("s3"))
        .then_some(()))
    })?;
    d.wait_for("s4 to activate s3 anew", |d| {
        Ok(d.log("s4")
            .contains("sub-domain manager activated")
            .then_some(()))
    })?;
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(lab_served_by(&d)?.as_deref(), Some("s3"));
    assert!(
        !since_last_start(&d.log("s2")).contains("child registered"),
        "no node may join the stepped-down s2:\n{}",
        d.log("s2")
    );
    let activated = d.log("s4");
    assert!(
        activated
            .lines()
            .filter(|l| l.contains("sub-domain manager activated"))
            .all(|l| l.contains("station=s3")),
        "{activated}"
    );

    // campus's old manager comes back: it steps down and delivers what it
    // acknowledged before it died (a killed manager's outbox is on its
    // disk, so acknowledged data waits there for it).
    d.restart("s1")?;
    d.wait_for("s1 to step down", |d| {
        Ok(d.log("s1").contains("stepping down").then_some(()))
    })?;
    // Everything n1 queued reached BIG once, through three lab managers'
    // and two campus managers' hands.
    nothing_lost_or_doubled(&mut d, &["n1"])?;
    Ok(())
}

#[test]
fn a_killed_or_frozen_node_is_diagnosed_agent_down_and_cleared_when_back() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&topology(&["s1"], &["n1"]))?;
    let s1 = d.start_station("s1")?;
    d.start_node("n1", &s1)?;
    d.wait_for("n1 connected", |d| {
        Ok(d.node_connected("n1")?.then_some(()))
    })?;

    for fault in ["kill -9", "SIGSTOP"] {
        let before: BTreeSet<String> = guardian_alarms(&d, "n1", "agad.agent-down")?
            .into_iter()
            .map(|a| a.id)
            .collect();
        if fault == "kill -9" {
            d.kill9("n1")?;
        } else {
            d.sigstop("n1")?;
        }
        let fresh = |d: &Deployment| -> anyhow::Result<Vec<Alarm>> {
            Ok(guardian_alarms(d, "n1", "agad.agent-down")?
                .into_iter()
                .filter(|a| !before.contains(&a.id))
                .collect())
        };
        let raised = d.wait_for(&format!("n1 agent down after {fault}"), |d| {
            Ok(fresh(d)?.into_iter().find(|a| a.raised))
        })?;
        assert!(
            raised.message.contains("answers ICMP echo") && raised.message.contains("silent"),
            "{raised:?}"
        );
        // The station's next keep-alive carries the node's state.
        d.wait_for("n1 shown failed, agent down, in the status", |d| {
            Ok(d.node_diagnosed("n1", "agent-down")?.then_some(()))
        })?;
        if fault == "kill -9" {
            d.restart("n1")?;
        } else {
            d.sigcont("n1")?;
        }
        d.wait_for(&format!("n1's agent down cleared after {fault}"), |d| {
            Ok(fresh(d)?.iter().any(|a| !a.raised).then_some(()))
        })?;
        d.wait_for("n1 connected again", |d| {
            Ok(d.node_connected("n1")?.then_some(()))
        })?;
    }
    // No host was ever down, and only the guardian raised its keys.
    assert!(guardian_alarms(&d, "n1", "agad.host-down")?.is_empty());
    assert!(
        d.alarms()?
            .iter()
            .filter(|a| is_guardian_alarm(a))
            .all(|a| a.module == "agad")
    );
    Ok(())
}

#[test]
fn a_node_already_dead_when_its_manager_restarts_is_accused_and_cleared_when_back()
-> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    // n3 is in the topology, without an address, and never starts.
    let topology =
        topology(&["s1"], &["n1", "n2"]) + "\n[[node]]\nname = \"n3\"\ndomain = \"d1\"\n";
    d.apply(&topology)?;
    let s1 = d.start_station("s1")?;
    d.start_node("n1", &s1)?;
    d.start_node("n2", &s1)?;
    d.wait_for("both nodes connected", |d| {
        Ok((d.node_connected("n1")? && d.node_connected("n2")?).then_some(()))
    })?;

    // The domain manager dies first, then n1 while nobody watches it: no
    // event ever tells the restarted manager that n1 went silent.
    d.kill9("s1")?;
    d.kill9("n1")?;
    d.restart("s1")?;
    let accused = d.wait_for("n1 accused by the restarted s1", |d| {
        raised(d, "n1", "agad.agent-down")
    })?;
    assert!(
        accused.message.contains("answers ICMP echo") && accused.message.contains("silent"),
        "{accused:?}"
    );
    // A node that never showed up, with no address to probe, is accused too.
    let never = d.wait_for("n3 accused", |d| raised(d, "n3", "agad.agent-down"))?;
    assert!(never.message.contains("no address to probe"), "{never:?}");
    d.wait_for("n1 shown failed in the status", |d| {
        Ok(d.node_diagnosed("n1", "agent-down")?.then_some(()))
    })?;

    // n1 comes back: cleared. n2, which redialled the restarted manager,
    // was never accused.
    d.restart("n1")?;
    d.wait_for("n1's agent down cleared", |d| {
        Ok(cleared(d, "n1", "agad.agent-down")?.then_some(()))
    })?;
    let about_n2: Vec<Alarm> = d
        .alarms()?
        .into_iter()
        .filter(|a| a.node == "n2" && is_guardian_alarm(a))
        .collect();
    assert!(about_n2.is_empty(), "n2 falsely accused: {about_n2:?}");
    Ok(())
}

#[test]
fn a_stepped_down_manager_clears_what_it_raised_and_the_new_one_accuses_anew() -> anyhow::Result<()>
{
    let mut d = s1_serving_n1_n2_with_standby_s2()?;
    d.kill9("n1")?;
    let by_s1 = d.wait_for("n1 accused by s1", |d| raised(d, "n1", "agad.agent-down"))?;

    // s1 dies, s2 serves d1; s1 comes back, steps down, and clears what it
    // raised: it no longer watches n1.
    d.kill9("s1")?;
    d.wait_for("s2 serving d1 with n2", |d| {
        Ok((served_by(d)?.0.as_deref() == Some("s2") && d.node_connected("n2")?).then_some(()))
    })?;
    d.restart("s1")?;
    let handed = d.wait_for("s1's accusation of n1 cleared", |d| {
        Ok(guardian_alarms(d, "n1", "agad.agent-down")?
            .into_iter()
            .find(|a| !a.raised && a.message.contains("no longer watched by this manager")))
    })?;
    assert!(d.log("s1").contains("stepping down"), "{}", d.log("s1"));
    assert!(handed.time_ms > by_s1.time_ms);

    // s2, which never saw n1, accuses it once its redial allowance is over,
    // and clears it when n1 is back.
    let by_s2 = d.wait_for("n1 accused by s2", |d| {
        Ok(guardian_alarms(d, "n1", "agad.agent-down")?
            .into_iter()
            .find(|a| a.raised && a.time_ms > handed.time_ms))
    })?;
    assert_ne!(by_s2.id, by_s1.id);
    d.restart("n1")?;
    d.wait_for("n1's agent down cleared by s2", |d| {
        Ok(guardian_alarms(d, "n1", "agad.agent-down")?
            .iter()
            .any(|a| !a.raised && a.time_ms > by_s2.time_ms && a.message.contains("is back"))
            .then_some(()))
    })?;
    let active = d.agad(&["alarms", "--node", "n1", "--active"])?;
    assert!(!active.contains("agent down"), "{active}");
    Ok(())
}

/// Every alarm each of `nodes` queued is in BIG once, and every window it
/// queued is in BIG once per series.
fn nothing_lost_or_doubled(d: &mut Deployment, nodes: &[&str]) -> anyhow::Result<()> {
    for &node in nodes {
        let queued = d.queued_alarm_ids(node);
        d.wait_for(&format!("every alarm {node} queued in BIG"), |d| {
            let ids: BTreeSet<String> = d.alarms()?.into_iter().map(|a| a.id).collect();
            Ok(queued.is_subset(&ids).then_some(()))
        })?;
        let windows: BTreeSet<u64> = d
            .queued_windows(node, WINDOW_MS)
            .into_iter()
            // The last window may still be on its way.
            .filter(|w| *w + 3 * WINDOW_MS < now_ms())
            .collect();
        let in_big = |d: &Deployment| -> anyhow::Result<BTreeMap<(u64, String), usize>> {
            let mut rows = BTreeMap::new();
            for r in d.reports()? {
                if r.node == node && r.summary.metric == "mem.used-percent" {
                    *rows
                        .entry((r.window_start_ms, r.summary.subject.clone()))
                        .or_insert(0) += 1;
                }
            }
            Ok(rows)
        };
        let settled = d.wait_for(&format!("every window {node} queued in BIG"), |d| {
            let have: BTreeSet<u64> = in_big(d)?.keys().map(|(w, _)| *w).collect();
            Ok(windows.is_subset(&have).then_some(()))
        });
        let have: BTreeSet<u64> = in_big(d)?.keys().map(|(w, _)| *w).collect();
        let missing: Vec<_> = windows.difference(&have).collect();
        assert!(
            settled.is_ok() && missing.is_empty(),
            "{node}'s windows never in BIG: {missing:?}"
        );
        let doubled: Vec<_> = in_big(d)?.into_iter().filter(|(_, n)| *n > 1).collect();
        assert!(
            doubled.is_empty(),
            "{node}'s rows in BIG twice: {doubled:?}"
        );
    }
    let big = d.alarms()?;
    let ids: BTreeSet<&str> = big.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), big.len(), "no alarm twice in BIG");
    Ok(())
}

/// What a station logged in its last run.
fn since_last_start(log: &str) -> String {
    let start = log.rfind("domain manager listening on").unwrap_or(0);
    log[start..].to_owned()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
