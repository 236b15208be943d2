//! The managed hierarchy end to end: a real top manager, domain-manager
//! stations and nodes as separate `agad` processes over loopback with real
//! mutual TLS (certificates from `agad pki`), running the real wasm
//! inspectors built from this repository.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::hierarchy::{Deployment, Options, alarm_ids, is_guardian_alarm};
use std::path::Path;
use std::time::Duration;

/// A deployment with a running top manager, as the tests run it.
fn deployment() -> anyhow::Result<Deployment> {
    Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())
}

fn one_domain(station: &str, nodes: &[&str], module: &str, config: &str) -> String {
    let mut t =
        format!("[[domain]]\nname = \"d1\"\nstations = [\"{station}\"]\nreport_window = \"2s\"\n");
    for n in nodes {
        t += &format!("\n[[node]]\nname = \"{n}\"\ndomain = \"d1\"\n");
    }
    t += &format!(
        "\n[[assign]]\nmodule = \"{module}\"\ndomain = \"d1\"\n[assign.config]\n{config}\n"
    );
    t
}

#[test]
fn an_alarm_and_reports_travel_from_node_to_top_manager() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    // Memory in use is certainly above 0.1 %: the alarm must fire.
    let diff = d.apply(&one_domain(
        "s1",
        &["n1"],
        "cpu-mem",
        "period = \"500ms\"\nwindow_secs = 1\nmem_percent = 0.1",
    ))?;
    assert!(
        diff.contains("+ node n1") && diff.contains("applied"),
        "{diff}"
    );
    let addr = d.start_station("s1")?;
    d.start_node("n1", &addr)?;

    let alarm = d.wait_for("the memory alarm in BIG", |d| {
        Ok(d.alarms()?
            .into_iter()
            .find(|a| a.node == "n1" && a.metric == "mem.used-percent" && a.raised))
    })?;
    assert_eq!(alarm.module, "cpu-mem");
    // Acknowledged once: BICD and BIG hold the same alarms, each once, and
    // they are exactly the ones the node queued.
    d.wait_for("BICD and BIG to agree", |d| {
        let big = d.alarms()?;
        Ok(
            (d.bicd_alarms()? == Some(big.len()) && d.queued_alarm_ids("n1") == alarm_ids(&big))
                .then_some(()),
        )
    })?;
    let raised_mem = d
        .alarms()?
        .iter()
        .filter(|a| a.metric == "mem.used-percent" && a.raised)
        .count();
    assert_eq!(raised_mem, 1, "hysteresis: one raise, not one per tick");

    let row = d.wait_for("a consolidated report row for n1", |d| {
        Ok(d.reports()?
            .into_iter()
            .find(|r| r.node == "n1" && r.summary.metric == "mem.used-percent"))
    })?;
    assert_eq!(row.domain, "d1");
    assert!(row.summary.count >= 1);
    let table = d.agad(&["report", "--node", "n1"])?;
    assert!(table.contains("mem.used-percent"), "{table}");
    Ok(())
}

#[test]
fn a_certificate_from_another_ca_is_refused() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.apply(&one_domain(
        "s1",
        &["n1", "rogue"],
        "cpu-mem",
        "period = \"1s\"",
    ))?;
    let addr = d.start_station("s1")?;
    // Same name layout, other CA: TLS refuses it before any frame.
    d.agad(&["pki", "init", "--dir", "other-ca"])?;
    d.agad(&[
        "pki", "issue", "--ca-dir", "other-ca", "--role", "node", "--name", "rogue", "--out",
        "other-ca",
    ])?;
    d.spawn(
        "rogue",
        &[
            "node",
            "--dominio",
            &addr,
            "--pki",
            "other-ca",
            "--name",
            "rogue",
            "--trust",
            "publisher.pub",
            "--data-dir",
            "rogue",
        ],
    )?;
    d.wait_for("the station to refuse the rogue handshake", |d| {
        Ok(d.log("s1").contains("connection refused").then_some(()))
    })?;
    let list = d.agad(&["enroll", "list"])?;
    assert!(
        !list.contains("rogue"),
        "a refused peer never reaches enrollment: {list}"
    );
    // Garbage on the port closes only that connection.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr)?;
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0]);
    }
    d.start_node("n1", &addr)?;
    d.wait_for("n1 to be connected through the same station", |d| {
        let state = d.component_state(&serde_json::json!({"node": {"name": "n1"}}))?;
        Ok(state.filter(|s| s.get("connected").is_some()))
    })?;
    Ok(())
}

#[test]
fn a_redeploy_sends_only_hashes_the_node_already_has() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.publish_inspector("disk-space")?;
    let mut topology = one_domain("s1", &["n1"], "cpu-mem", "period = \"1s\"");
    topology += "\n[[assign]]\nmodule = \"disk-space\"\nnodes = [\"n1\"]\n[assign.config]\nperiod = \"1s\"\n";
    d.apply(&topology)?;
    let addr = d.start_station("s1")?;
    d.start_node("n1", &addr)?;
    d.wait_for("both modules deployed with their bytes", |d| {
        Ok((d.log("n1").matches("deployment with module bytes").count() == 2).then_some(()))
    })?;
    d.stop("n1")?;
    let first = d.log("n1");
    d.restart("n1")?;
    let second = d.wait_for("the redeploy by hash", |d| {
        let second = d.log("n1")[first.len()..].to_owned();
        Ok((second.matches("deployment by hash").count() == 2).then_some(second))
    })?;
    assert!(!second.contains("deployment with module bytes"), "{second}");
    Ok(())
}

#[test]
fn kill_9_of_a_domain_manager_and_a_node_loses_no_alarm_and_duplicates_none() -> anyhow::Result<()>
{
    let mut d = deployment()?;
    d.publish_misbehave()?;
    d.apply(&one_domain(
        "s1",
        &["n1"],
        "misbehave",
        "mode = \"alarm-every-tick\"\nperiod = \"200ms\"",
    ))?;
    let addr = d.start_station("s1")?;
    d.start_node("n1", &addr)?;
    let count = |d: &Deployment| d.alarms().map(|a| a.len());
    d.wait_for("alarm traffic", |d| Ok((count(d)? >= 10).then_some(())))?;

    // The domain manager dies mid-traffic; the node buffers meanwhile.
    d.kill9("s1")?;
    let in_big_at_kill = alarm_ids(&d.alarms()?);
    std::thread::sleep(Duration::from_secs(2));
    d.restart("s1")?;
    d.wait_for("traffic through the restarted station", |d| {
        Ok((count(d)? > in_big_at_kill.len() + 10).then_some(()))
    })?;

    // The top manager dies mid-traffic; the station buffers meanwhile.
    d.kill9("mor")?;
    d.restart_mor()?;
    let in_big_at_mor_kill = alarm_ids(&d.alarms()?);
    assert!(in_big_at_kill.is_subset(&in_big_at_mor_kill));
    d.wait_for("traffic through the restarted top manager", |d| {
        Ok((count(d)? > in_big_at_mor_kill.len() + 10).then_some(()))
    })?;

    // The node dies mid-traffic, with whatever it had queued.
    d.kill9("n1")?;
    d.restart("n1")?;
    let before = count(&d)?;
    d.wait_for("traffic from the restarted node", |d| {
        Ok((count(d)? > before + 10).then_some(()))
    })?;
    d.stop("n1")?;

    d.wait_for_alarms_settled("n1")?;
    let big = d.alarms()?;
    let big_ids = alarm_ids(&big);
    assert_eq!(big_ids.len(), big.len(), "no duplicates in BIG");
    assert!(
        in_big_at_kill.is_subset(&big_ids),
        "what BIG held before the kills is still there"
    );
    // Only an alarm queued in the instant before the kill, not yet logged,
    // may be in BIG without a log line (besides what the guardians said
    // about the killed processes).
    let guardians = alarm_ids(
        &big.iter()
            .filter(|a| is_guardian_alarm(a))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let unlogged = big_ids
        .difference(&d.queued_alarm_ids("n1"))
        .filter(|id| !guardians.contains(*id))
        .count();
    assert!(
        unlogged <= 1,
        "{unlogged} alarms in BIG that the node never queued"
    );
    Ok(())
}

#[test]
fn a_sub_domain_manager_is_activated_and_relayed_by_its_parent() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    let topology = "[[domain]]\nname = \"campus\"\nstations = [\"s1\"]\nreport_window = \"2s\"\n\n\
        [[domain]]\nname = \"lab\"\nparent = \"campus\"\nstations = [\"s2\"]\nreport_window = \"2s\"\n\n\
        [[node]]\nname = \"n2\"\ndomain = \"lab\"\n\n\
        [[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nperiod = \"500ms\"\nwindow_secs = 1\nmem_percent = 0.1\n";
    d.apply(topology)?;
    let campus = d.start_station("s1")?;
    // Four levels: top manager -> campus manager -> lab manager -> node.
    let lab = d.start_station_under("s2", &campus)?;
    d.start_node("n2", &lab)?;
    d.wait_for("n2's alarm in BIG, relayed by two domain managers", |d| {
        Ok(d.alarms()?.into_iter().find(|a| a.node == "n2" && a.raised))
    })?;
    d.wait_for("the lab domain's report in BIG", |d| {
        Ok(d.reports()?
            .into_iter()
            .find(|r| r.domain == "lab" && r.node == "n2"))
    })?;
    let lab = d.component_state(&serde_json::json!({"subdomain": {"domain": "lab"}}))?;
    let status = d.agad(&["status"])?;
    assert!(
        lab.as_ref()
            .is_some_and(|s| s["connected"]["served_by"] == "s2")
            && status.contains("sub-domain lab")
            && status.contains("served by s2"),
        "{lab:?}\n{status}"
    );
    Ok(())
}

#[test]
fn a_frozen_node_does_nothing_until_thawed_and_stops_while_frozen() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_misbehave()?;
    d.apply(&one_domain(
        "s1",
        &["n1"],
        "misbehave",
        "mode = \"alarm-every-tick\"\nperiod = \"200ms\"",
    ))?;
    let addr = d.start_station("s1")?;
    d.start_node("n1", &addr)?;
    d.wait_for("alarm traffic", |d| {
        Ok((d.queued_alarm_ids("n1").len() >= 3).then_some(()))
    })?;

    // SIGSTOP: the node runs no tick and queues no alarm while frozen.
    d.sigstop("n1")?;
    let frozen = d.queued_alarm_ids("n1");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        d.queued_alarm_ids("n1"),
        frozen,
        "a frozen node queued alarms"
    );

    // SIGCONT: it goes on where it stopped.
    d.sigcont("n1")?;
    d.wait_for("alarms after the thaw", |d| {
        Ok((d.queued_alarm_ids("n1").len() > frozen.len()).then_some(()))
    })?;

    // A clean stop of a frozen process thaws it so that it sees SIGTERM.
    d.sigstop("n1")?;
    let status = d.stop("n1")?;
    assert!(status.success(), "n1 stopped with {status}");
    Ok(())
}

/// `agad topology apply` checks every assignment's config against the
/// signed manifest of the module as published, and refuses the whole file
/// with `file:line:column: reason`: nothing of it is applied, dry run or not.
#[test]
fn a_bad_module_configuration_is_refused_at_apply_with_line_and_column() -> anyhow::Result<()> {
    let d = deployment()?;
    d.publish_inspector("app-watch")?;
    let good = one_domain(
        "s1",
        &["n1"],
        "app-watch",
        "processes = \"init\"\nperiod = \"1s\"",
    );
    d.apply(&good)?;
    let in_force = d.agad(&["topology", "show"])?;
    assert!(in_force.contains("processes = \"init\""), "{in_force}");

    // With two nodes, `one_domain` puts `module` on line 15 and the
    // config on lines 18 and 19.
    for (config, error) in [
        (
            "processes = \"init\"\nmin_cuont = 2",
            "topology.toml:19:1: assign `app-watch`: unknown config key `min_cuont`; did you mean `min_count`?",
        ),
        (
            "processes = \"init\"\nmin_count = \"two\"",
            "topology.toml:19:13: assign `app-watch`: `min_count` is an integer: `two` is not a whole number (0 or more)",
        ),
        (
            "min_count = 2",
            "topology.toml:15:10: assign `app-watch`: required config key `processes` is not set (list: comma-separated process names to watch (sshd,cron))",
        ),
        (
            "processes = \"init\"\nperiod = \"soon\"",
            "topology.toml:19:10: assign `app-watch`: period `soon` is not a positive duration (use e.g. 500ms, 10s, 2m, 1h)",
        ),
    ] {
        let bad = one_domain("s1", &["n1", "n2"], "app-watch", config);
        std::fs::write(d.path("topology.toml"), &bad)?;
        for dry_run in [true, false] {
            let mut args = vec!["topology", "apply", "topology.toml"];
            if dry_run {
                args.push("--dry-run");
            }
            let out = d.run(&args)?;
            assert!(!out.status.success(), "accepted:\n{bad}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.trim(), format!("error: {error}"), "{bad}");
        }
        assert_eq!(
            d.agad(&["topology", "show"])?,
            in_force,
            "nothing applied of:\n{bad}"
        );
    }
    Ok(())
}

/// A configuration the node still refuses (here the module's own `init`:
/// `mode` is any string to the manifest, but misbehave knows only some)
/// shows as a failing module in `agad status` and raises an alarm with the
/// reason, which clears once the module runs with a good configuration.
#[test]
fn a_configuration_refused_on_the_node_fails_the_module_and_alarms_until_fixed()
-> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_misbehave()?;
    d.apply(&one_domain(
        "s1",
        &["n1"],
        "misbehave",
        "mode = \"no-such-mode\"\nperiod = \"1s\"",
    ))?;
    let addr = d.start_station("s1")?;
    d.start_node("n1", &addr)?;
    let node = serde_json::json!({"node": {"name": "n1"}});
    let state = d.wait_for("n1 to report misbehave failing", |d| {
        Ok(d.component_state(&node)?.filter(|s| {
            s["connected"]["failing"]
                .as_array()
                .is_some_and(|f| f.iter().any(|m| m == "module misbehave"))
        }))
    })?;
    assert!(state.get("connected").is_some(), "{state}");
    let text = d.agad(&["status"])?;
    assert!(
        text.lines().any(|l| l.contains("DOWN")
            && l.contains("node n1")
            && l.contains("failing: module misbehave")),
        "{text}"
    );
    // The module's own line says how, and since when.
    let modules = text
        .lines()
        .skip_while(|l| !l.contains("DOWN node n1"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        modules
            .trim_start()
            .starts_with("modules: misbehave FAILING since ")
            && modules.contains("(refused: "),
        "{text}"
    );
    let raised = d.wait_for("the refusal alarm in BIG", |d| {
        Ok(d.alarms()?
            .into_iter()
            .find(|a| a.key == "agad.module-refused" && a.raised))
    })?;
    assert_eq!(raised.node, "n1");
    assert_eq!(raised.module, "misbehave");
    assert!(raised.id.starts_with("n1/misbehave/"), "{}", raised.id);
    assert!(
        raised
            .message
            .contains("mode: \"no-such-mode\" is not a known mode"),
        "{}",
        raised.message
    );
    let open = d.agad(&["alarms"])?;
    assert!(
        open.contains("RAISED") && open.contains("module misbehave refused on this node"),
        "{open}"
    );

    // Fixed: the module runs (since the fix), the alarm clears, the node
    // is healthy.
    let fixed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    d.apply(&one_domain(
        "s1",
        &["n1"],
        "misbehave",
        "mode = \"ok\"\nperiod = \"1s\"",
    ))?;
    let cleared = d.wait_for("the refusal alarm cleared", |d| {
        Ok(d.alarms()?
            .into_iter()
            .find(|a| a.key == "agad.module-refused" && !a.raised))
    })?;
    assert_eq!(cleared.module, "misbehave");
    assert!(cleared.check_origin("n1").is_ok());
    let module = d.wait_for("misbehave running since the fix", |d| {
        let status = d.status()?;
        let m = &status["nodes"][0]["modules"][0];
        Ok((m["state"] == "running").then(|| m.clone()))
    })?;
    assert_eq!(module["name"], "misbehave");
    assert!(module["detail"].is_null(), "{module}");
    let since = module["since_ms"].as_u64().unwrap_or_default();
    assert!(
        since >= fixed_at,
        "running since {since}, fixed at {fixed_at}"
    );
    d.wait_for("n1 healthy", |d| {
        Ok(d.component_state(&node)?.filter(|s| {
            s["connected"]["failing"]
                .as_array()
                .is_some_and(|f| f.is_empty())
        }))
    })?;
    Ok(())
}

/// `topology apply --wait` follows a change down to the nodes: it returns
/// once every node runs it, and fails, naming each node and its reason,
/// when the nodes refuse it; `agad status` says how far it came.
#[test]
fn topology_apply_wait_follows_the_change_to_every_node() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_misbehave()?;
    let with = |config: &str| one_domain("s1", &["n1", "n2"], "misbehave", config);
    d.apply(&with("mode = \"ok\"\nperiod = \"1s\""))?;
    let addr = d.start_station("s1")?;
    d.start_node("n1", &addr)?;
    d.start_node("n2", &addr)?;
    d.wait_for("both nodes connected", |d| {
        Ok((d.node_connected("n1")? && d.node_connected("n2")?).then_some(()))
    })?;
    let apply_wait = |topology: String| -> anyhow::Result<(bool, String)> {
        std::fs::write(d.path("topology.toml"), topology)?;
        let out = d.run(&[
            "topology",
            "apply",
            "topology.toml",
            "--wait",
            "--timeout",
            "2m",
        ])?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };

    // Another period: a new version, which both nodes run.
    let (ok, err) = apply_wait(with("mode = \"ok\"\nperiod = \"2s\""))?;
    assert!(ok, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(": 2/2 nodes running, 0 failed, 0 not connected, 0 pending"),
        "{err}"
    );
    let status = d.agad(&["status"])?;
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("deployment done: version ")
                && l.ends_with("2/2 nodes running, 0 failed, 0 not connected, 0 pending")),
        "{status}"
    );

    // A configuration both nodes' `init` refuses: the wait fails and says why.
    let (ok, err) = apply_wait(with("mode = \"no-such-mode\"\nperiod = \"2s\""))?;
    assert!(!ok, "{err}");
    assert!(err.contains("2 of 2 nodes could not run version"), "{err}");
    for node in ["n1", "n2"] {
        assert!(
            err.lines().any(
                |l| l.trim_start().starts_with(&format!("{node}: misbehave"))
                    && l.contains("no-such-mode")
            ),
            "{err}"
        );
    }
    let status = d.agad(&["status"])?;
    assert!(status.contains("0/2 nodes running, 2 failed"), "{status}");
    Ok(())
}

/// A module the node's policy refuses (it imports `snmp`, which this node
/// does not allow) fails and alarms the same way, with the policy's reason.
#[test]
fn a_module_the_node_policy_refuses_fails_and_alarms() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_misbehave()?;
    d.apply(&one_domain(
        "s1",
        &["n1"],
        "misbehave",
        "mode = \"ok\"\nperiod = \"1s\"",
    ))?;
    let addr = d.start_station("s1")?;
    d.start_node_with_config(
        "n1",
        &addr,
        "allowed_capabilities = [\"os\", \"state\", \"log\", \"clock\"]\n",
    )?;
    let raised = d.wait_for("the refusal alarm in BIG", |d| {
        Ok(d.alarms()?
            .into_iter()
            .find(|a| a.key == "agad.module-refused" && a.raised))
    })?;
    assert_eq!(
        (raised.node.as_str(), raised.module.as_str()),
        ("n1", "misbehave")
    );
    assert!(
        raised
            .message
            .contains("needs a capability this node's policy does not allow: `snmp`"),
        "{}",
        raised.message
    );
    let node = serde_json::json!({"node": {"name": "n1"}});
    d.wait_for("n1 to report misbehave failing", |d| {
        Ok(d.component_state(&node)?.filter(|s| {
            s["connected"]["failing"]
                .as_array()
                .is_some_and(|f| f.iter().any(|m| m == "module misbehave"))
        }))
    })?;
    Ok(())
}
