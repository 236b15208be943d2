//! Data end to end through the life of a deployment, with real processes
//! (top manager, domain-manager stations and nodes as `agad` processes over
//! loopback with real mutual TLS, running the real inspectors): every
//! window a node buffered reaches BIG across a restart of its domain
//! manager, every alarm and summary says which code produced it, and raises
//! that can never clear are closed with their reason.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_protocol::wire::{self, Control, DomainReport, Message, Queued, Role, Upward};
use agad_tests::hierarchy::{Deployment, Options, ReportRow};
use agad_tests::peer::{alarm, hello, raw_client, read_until_closed, runtime};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One domain `d1` served by `s1` with 2 s windows, `nodes` in it, and
/// `assign` (whole `[[assign]]` tables) appended.
fn one_domain(nodes: &[&str], assign: &str) -> String {
    let mut t =
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\nreport_window = \"2s\"\n".to_owned();
    for n in nodes {
        t += &format!("\n[[node]]\nname = \"{n}\"\ndomain = \"d1\"\n");
    }
    t + assign
}

fn cpu_mem_on(node: &str, config: &str) -> String {
    format!("\n[[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"{node}\"]\n[assign.config]\n{config}\n")
}

fn queued_windows(d: &Deployment, node: &str) -> BTreeSet<u64> {
    d.queued_windows(node, WINDOW_MS)
}

fn rows_of<'a>(rows: &'a [ReportRow], node: &str, metric: &str) -> Vec<&'a ReportRow> {
    rows.iter()
        .filter(|r| r.node == node && r.summary.metric == metric)
        .collect()
}

#[test]
fn every_window_a_node_buffered_through_a_domain_manager_restart_reaches_big() -> anyhow::Result<()>
{
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&one_domain(
        &["n1"],
        &cpu_mem_on("n1", "period = \"500ms\"\nwindow_secs = 1"),
    ))?;
    let addr = d.start_station("s1")?;
    d.start_node("n1", &addr)?;
    d.wait_for("a first window of n1 in BIG", |d| {
        Ok(d.reports()?.iter().any(|r| r.node == "n1").then_some(()))
    })?;

    // The domain manager dies; four windows close while the node buffers.
    d.kill9("s1")?;
    let killed_ms = now_ms();
    std::thread::sleep(Duration::from_millis(4 * WINDOW_MS));
    d.restart("s1")?;
    let restarted_ms = now_ms();
    d.wait_for("a window after the restart in BIG", |d| {
        Ok(d.reports()?
            .iter()
            .any(|r| r.node == "n1" && r.window_start_ms > restarted_ms)
            .then_some(()))
    })?;

    // The node keeps running: what it queued is delivered in its own time
    // (a stopped node would keep its last reports for its next run).
    let queued = queued_windows(&d, "n1");
    let outage: BTreeSet<u64> = queued
        .iter()
        .copied()
        .filter(|w| *w > killed_ms && *w + WINDOW_MS < restarted_ms)
        .collect();
    assert!(
        outage.len() >= 3,
        "the node buffered windows during the outage: {outage:?} of {queued:?}"
    );
    let in_big = |d: &Deployment| -> anyhow::Result<BTreeSet<u64>> {
        Ok(rows_of(&d.reports()?, "n1", "mem.used-percent")
            .iter()
            .map(|r| r.window_start_ms)
            .collect())
    };
    let settled = d.wait_for("every window n1 queued in BIG", |d| {
        Ok(queued.is_subset(&in_big(d)?).then_some(()))
    });
    let missing: Vec<u64> = queued.difference(&in_big(&d)?).copied().collect();
    assert!(
        settled.is_ok() && missing.is_empty(),
        "windows n1 buffered that never reached BIG: {missing:?} (outage {outage:?})"
    );

    // One row per window and series: a late window replaced its first
    // consolidation rather than adding a second row.
    let rows = d.reports()?;
    let mut per_series = BTreeMap::new();
    for r in rows_of(&rows, "n1", "mem.used-percent") {
        *per_series
            .entry((r.window_start_ms, &r.summary.subject))
            .or_insert(0) += 1;
    }
    assert!(per_series.values().all(|n| *n == 1), "{per_series:?}");

    // Every row says which code computed it, and can be asked for by it.
    let hash = d.published_hash("cpu-mem")?;
    for r in &rows {
        assert_eq!(
            (r.provenance.version.as_str(), r.provenance.sha256.as_str()),
            ("0.1.0", hash.as_str()),
            "{r:?}"
        );
        assert!(r.provenance.sequence >= 1);
    }
    let by_hash = d.agad(&[
        "report",
        "--json",
        "--since",
        "1h",
        "--limit",
        "10000",
        "--module-version",
        &hash[..12],
    ])?;
    // The node still runs: rows may have come since `rows` was read.
    assert!(by_hash.lines().count() >= rows.len(), "{by_hash}");
    let by_other = d.agad(&[
        "report",
        "--json",
        "--since",
        "1h",
        "--module-version",
        "9.9.9",
    ])?;
    assert_eq!(by_other.lines().count(), 0, "{by_other}");
    Ok(())
}

#[test]
fn raises_that_can_never_clear_are_closed_with_their_reason_and_a_down_node_keeps_its_own()
-> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    // Memory in use is certainly above 0.1 %: n1's alarm must fire.
    let raising = cpu_mem_on("n1", "period = \"500ms\"\nmem_percent = 0.1");
    d.apply(&one_domain(&["n1"], &raising))?;
    let addr = d.start_station("s1")?;
    d.start_node("n1", &addr)?;
    let mem_raised = |d: &Deployment| -> anyhow::Result<usize> {
        Ok(d.alarms()?
            .iter()
            .filter(|a| a.node == "n1" && a.metric == "mem.used-percent" && a.raised)
            .count())
    };
    d.wait_for("n1's memory alarm in BIG", |d| {
        Ok((mem_raised(d)? == 1).then_some(()))
    })?;
    let hash = d.published_hash("cpu-mem")?;
    let active = |d: &Deployment| d.agad(&["alarms", "--active", "--json"]);
    for a in d.alarms()? {
        assert_eq!(a.provenance.sha256, hash, "{a:?}");
    }

    // Unassigned: the raise is closed with the reason, the node forgets
    // the module's state...
    d.apply(&one_domain(&["n1"], ""))?;
    let closed = d
        .alarms()?
        .into_iter()
        .find(|a| a.node == "n1" && !a.raised && a.metric == "mem.used-percent")
        .expect("a closing event");
    assert_eq!(
        closed.message,
        "closed: module `cpu-mem` is no longer assigned to node `n1`"
    );
    assert!(closed.is_closing());
    assert_eq!(active(&d)?, "", "nothing active once closed");
    d.wait_for("n1 to delete the unassigned module's state", |d| {
        Ok(d.log("n1")
            .contains("unassigned; its state deleted")
            .then_some(()))
    })?;
    let table = d.agad(&["alarms"])?;
    assert!(table.contains("closed"), "{table}");

    // ... so when it comes back it raises again rather than believing
    // its old raise still stands.
    d.apply(&one_domain(&["n1"], &raising))?;
    d.wait_for("a new raise after the re-assignment", |d| {
        Ok((mem_raised(d)? == 2).then_some(()))
    })?;

    // A node that is down keeps its alarms, shown with its state.
    d.kill9("n1")?;
    d.wait_for("n1 shown down beside its alarm", |d| {
        let table = d.agad(&["alarms", "--active"])?;
        Ok(table
            .lines()
            .any(|l| l.contains("RAISED") && l.contains(" n1 ") && l.contains(" down "))
            .then_some(()))
    })?;
    assert_ne!(active(&d)?, "");

    // Removed from the topology, its alarms can never clear.
    d.apply("[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n")?;
    assert_eq!(active(&d)?, "");
    let removed = d
        .alarms()?
        .into_iter()
        .filter(|a| a.is_closing())
        .map(|a| a.message)
        .collect::<Vec<_>>();
    assert_eq!(
        removed.last().map(String::as_str),
        Some("closed: node `n1` was removed from the topology"),
        "{removed:?}"
    );
    Ok(())
}

/// Domain `domain` served by `station` with 2 s windows, `nodes` in it,
/// and cpu-mem raising its memory alarm on every node.
fn raising_domain(domain: &str, station: &str, nodes: &[&str]) -> String {
    let mut t = format!(
        "[[domain]]\nname = \"{domain}\"\nstations = [\"{station}\"]\nreport_window = \"2s\"\n\n"
    );
    for n in nodes {
        t += &format!("[[node]]\nname = \"{n}\"\ndomain = \"{domain}\"\n\n");
    }
    t + &format!(
        "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"{domain}\"\n[assign.config]\nperiod = \"500ms\"\nwindow_secs = 1\nmem_percent = 0.1\n\n"
    )
}

/// Domains `d1` (station `s1`) and `d2` (station `s2`), see [`raising_domain`].
fn two_domains(d1_nodes: &[&str], d2_nodes: &[&str]) -> String {
    raising_domain("d1", "s1", d1_nodes) + &raising_domain("d2", "s2", d2_nodes)
}

#[test]
fn a_node_moved_to_another_domain_reaches_its_new_station_and_keeps_its_data() -> anyhow::Result<()>
{
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&two_domains(&["n1"], &[]))?;
    let s1 = d.start_station("s1")?;
    d.start_station("s2")?;
    // The node knows only its first domain's station.
    d.start_node("n1", &s1)?;
    let raises_from = |d: &Deployment, since_ms: u64| -> anyhow::Result<usize> {
        Ok(d.alarms()?
            .iter()
            .filter(|a| a.node == "n1" && a.raised && a.time_ms >= since_ms)
            .count())
    };
    d.wait_for("n1's alarm and a window of d1 in BIG", |d| {
        let in_d1 = d
            .reports()?
            .iter()
            .any(|r| r.node == "n1" && r.domain == "d1");
        Ok((raises_from(d, 0)? >= 1 && in_d1).then_some(()))
    })?;

    let moved_ms = now_ms();
    d.apply(&two_domains(&[], &["n1"]))?;
    // Its raise can never clear where it was: closed, with the reason.
    let closing = d
        .alarms()?
        .into_iter()
        .find(|a| a.node == "n1" && a.is_closing())
        .expect("the raise closed at the move");
    assert_eq!(
        closing.message,
        "closed: node `n1` moved from domain `d1` to `d2`"
    );

    // The old station sends it to the new one, where it runs afresh.
    d.wait_for("n1 raising again from d2, and a window of d2", |d| {
        let in_d2 = d
            .reports()?
            .iter()
            .any(|r| r.node == "n1" && r.domain == "d2" && r.window_start_ms >= moved_ms);
        Ok((raises_from(d, moved_ms)? >= 1 && in_d2).then_some(()))
    })?;
    let log = d.log("n1");
    assert!(log.contains("moved to another domain"), "{log}");
    assert!(log.contains("manager=s2"), "{log}");

    // It remembers where it belongs: restarted with the same command line
    // (the old station's address), it goes to s2 directly.
    d.stop("n1")?;
    d.restart("n1")?;
    d.wait_for("the restarted n1 connected to s2", |d| {
        let log = d.log("n1");
        let restarted = log.split("parents from the last redirect").nth(1);
        Ok(restarted
            .is_some_and(|run| run.contains("manager=s2") && !run.contains("manager=s1"))
            .then_some(()))
    })?;
    let restarted_ms = now_ms();
    d.wait_for("a window of the restarted n1 in BIG", |d| {
        Ok(d.reports()?
            .iter()
            .any(|r| r.node == "n1" && r.domain == "d2" && r.window_start_ms > restarted_ms)
            .then_some(()))
    })?;

    // Nothing it queued was lost on the way, whichever station carried it
    // (it keeps running: a stopped node keeps its last reports for its
    // next run).
    d.wait_for("every alarm n1 queued in BIG", |d| {
        let big = agad_tests::hierarchy::alarm_ids(&d.alarms()?);
        Ok(d.queued_alarm_ids("n1").is_subset(&big).then_some(()))
    })?;
    let queued = queued_windows(&d, "n1");
    d.wait_for("every window n1 queued in BIG", |d| {
        let in_big: BTreeSet<u64> = rows_of(&d.reports()?, "n1", "mem.used-percent")
            .iter()
            .map(|r| r.window_start_ms)
            .collect();
        Ok(queued.is_subset(&in_big).then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_removed_domain_stops_serving_and_its_nodes_stop_their_modules() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&two_domains(&["n1"], &["n2"]))?;
    let s1 = d.start_station("s1")?;
    let s2 = d.start_station("s2")?;
    d.start_node("n1", &s1)?;
    d.start_node("n2", &s2)?;
    d.wait_for("windows of both domains and n2's alarm in BIG", |d| {
        let rows = d.reports()?;
        let n2_raised = d.alarms()?.iter().any(|a| a.node == "n2" && a.raised);
        Ok((rows.iter().any(|r| r.domain == "d1")
            && rows.iter().any(|r| r.domain == "d2")
            && n2_raised)
            .then_some(()))
    })?;

    // d2 is removed while its station is up...
    let d2_removed_ms = now_ms();
    d.apply(&raising_domain("d1", "s1", &["n1"]))?;
    d.wait_for("s2 to stop serving and n2 to stop its module", |d| {
        Ok((d.log("s2").contains("the domain left the topology")
            && d.log("n2").contains("stopping"))
        .then_some(()))
    })?;
    let status = d.agad(&["status"])?;
    assert!(!status.contains("d2"), "{status}");
    let closings: Vec<String> = d
        .alarms()?
        .into_iter()
        .filter(|a| a.node == "n2" && a.is_closing())
        .map(|a| a.message)
        .collect();
    assert!(!closings.is_empty());
    assert!(
        closings
            .iter()
            .all(|m| m == "closed: domain `d2` of node `n2` was removed from the topology"),
        "{closings:?}"
    );

    // ... and d1 while its station is down: told when it comes back.
    d.kill9("s1")?;
    let d1_removed_ms = now_ms();
    d.apply("[[domain]]\nname = \"d3\"\nstations = [\"s3\"]\n")?;
    d.restart("s1")?;
    d.wait_for("the restarted s1 to stop serving d1", |d| {
        Ok(d.log("s1")
            .contains("the domain left the topology")
            .then_some(()))
    })?;
    d.wait_for("n1 to stop its module", |d| {
        Ok(d.log("n1").matches("stopping").next().map(|_| ()))
    })?;

    // Nothing of either domain lands in BIG after its removal (a window
    // that closed before it may still arrive).
    std::thread::sleep(Duration::from_millis(3 * WINDOW_MS));
    let late: Vec<ReportRow> = d
        .reports()?
        .into_iter()
        .filter(|r| {
            (r.domain == "d2" && r.window_start_ms > d2_removed_ms)
                || (r.domain == "d1" && r.window_start_ms > d1_removed_ms)
        })
        .collect();
    assert!(late.is_empty(), "{late:?}");

    // What a station still holds of a removed domain (or a peer with its
    // certificate claims) is acknowledged, so it is not sent forever, and
    // dropped with a logged reason.
    d.stop("s1")?;
    let mor = d.mor_address()?.to_owned();
    let answer = runtime()?.block_on(async {
        let mut link = raw_client(&d, "s1", &mor).await.unwrap();
        let mut frames = wire::encode(&hello(Role::Dominio, None)).unwrap();
        let report = DomainReport {
            id: format!("d1/{d1_removed_ms}"),
            domain: "d1".into(),
            window_start_ms: d1_removed_ms,
            window_end_ms: d1_removed_ms + WINDOW_MS,
            consolidated_ms: now_ms(),
            nodes: vec![],
            domain_summaries: vec![],
        };
        frames.extend(
            wire::encode(&Message::Reports(vec![Queued {
                seq: 1,
                body: Upward::DomainReport(report),
            }]))
            .unwrap(),
        );
        let body = Upward::Alarm(alarm("n1", "n1/rogue/1".into()));
        frames.extend(wire::encode(&Message::Alarm(Queued { seq: 2, body })).unwrap());
        link.write_all(&frames).await.unwrap();
        read_until_closed(link).await
    });
    let acked: BTreeSet<u64> = answer
        .iter()
        .filter_map(|m| match m {
            Message::Control(Control::Ack { seqs }) => Some(seqs.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(acked, BTreeSet::from([1, 2]), "{answer:?}");
    let log = d.log("mor");
    assert!(
        log.contains("refused a report of domain `d1`, which is not in the topology")
            && log.contains("refused an alarm of node `n1`, which is not in the topology"),
        "{log}"
    );
    assert!(
        d.reports()?
            .iter()
            .all(|r| r.window_start_ms != d1_removed_ms)
    );
    assert!(d.alarms()?.iter().all(|a| a.id != "n1/rogue/1"));
    Ok(())
}
