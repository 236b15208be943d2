//! The operator's commands as a new user meets them, against a real
//! hierarchy (top manager, a station and a node as separate `agad`
//! processes over mutual TLS, real wasm inspectors): `agad report` in
//! units people read, `agad alarms` filters, and an error for a domain or
//! node nobody knows.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::hierarchy::{Deployment, Options};
use std::path::Path;

/// Domain d1 (station s1, node n1) running app-watch on the `agad`
/// processes and on one that does not exist (a critical alarm), and
/// cpu-mem with a memory threshold certainly crossed (a lesser one);
/// domain d2 has a station nobody started and no node.
const TOPOLOGY: &str = r#"
[[domain]]
name = "d1"
stations = ["s1"]
report_window = "2s"

[[domain]]
name = "d2"
stations = ["s2"]

[[node]]
name = "n1"
domain = "d1"

[[assign]]
module = "app-watch"
domain = "d1"
[assign.config]
processes = "agad,no-such-process-here"
period = "500ms"
window_secs = 1
raise_after = 1

[[assign]]
module = "cpu-mem"
domain = "d1"
[assign.config]
period = "500ms"
window_secs = 1
mem_percent = 0.1
"#;

fn running() -> anyhow::Result<Deployment> {
    let mut d = Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())?;
    d.publish_inspector("app-watch")?;
    d.publish_inspector("cpu-mem")?;
    d.apply(TOPOLOGY)?;
    let addr = d.start_station("s1")?;
    d.start_node("n1", &addr)?;
    d.wait_for("n1's memory in BIG", |d| {
        Ok(d.reports()?
            .into_iter()
            .find(|r| r.node == "n1" && r.summary.metric == "proc.rss-bytes"))
    })?;
    d.wait_for("both alarms in BIG", |d| {
        let alarms = d.alarms()?;
        let raised = |m: &str| alarms.iter().any(|a| a.module == m && a.raised);
        Ok((raised("app-watch") && raised("cpu-mem")).then_some(()))
    })?;
    Ok(d)
}

/// The cells of each line of a table (columns are two spaces apart at
/// least; cells hold no double space).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// stderr of a command expected to fail.
fn refused(d: &Deployment, args: &[&str]) -> anyhow::Result<String> {
    let out = d.run(args)?;
    assert!(
        !out.status.success(),
        "`agad {}` should fail: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn report_alarms_and_their_filters_read_as_an_operator_expects() -> anyhow::Result<()> {
    let d = running()?;

    // Bytes as MiB, with their unit, window start and length; `2d` is a
    // duration like any other.
    let table = d.agad(&[
        "report",
        "--node",
        "n1",
        "--metric",
        "proc.rss-bytes",
        "--since",
        "2d",
    ])?;
    let mut lines = table.lines();
    let header = cells(lines.next().unwrap());
    assert_eq!(
        header,
        [
            "START", "LENGTH", "DOMAIN", "NODE", "MODULE", "VERSION", "METRIC", "SUBJECT", "MIN",
            "MAX", "MEAN", "LAST", "UNIT", "COUNT", "COVER"
        ]
    );
    let rows: Vec<Vec<&str>> = lines.map(cells).collect();
    assert!(!rows.is_empty(), "{table}");
    // The process that is missing has no memory to scale.
    for row in rows.iter().filter(|r| r.get(7) == Some(&"agad")) {
        assert_eq!(row.len(), header.len(), "{table}");
        assert_eq!(row[1], "2s", "window length: {table}");
        assert!(
            row[0].ends_with('Z') && row[0].contains('T'),
            "RFC 3339 start: {table}"
        );
        assert_eq!(
            &row[2..8],
            ["d1", "n1", "app-watch", "0.1.0", "proc.rss-bytes", "agad"]
        );
        // A process's resident memory: KiB at the very least, never raw bytes.
        assert!(["KiB", "MiB", "GiB"].contains(&row[12]), "{table}");
        let mean: f64 = row[10].parse()?;
        assert!(mean > 0.0 && mean < 1024.0, "scaled: {table}");
    }
    // The header lines up with every row: the unit column starts where
    // its header does.
    let at = |line: &str| line.find(" MiB ").or_else(|| line.find(" KiB "));
    let unit_column = table.lines().next().unwrap().find(" UNIT ");
    assert!(
        table
            .lines()
            .filter(|l| l.contains(" agad "))
            .all(|l| at(l) == unit_column),
        "aligned: {table}"
    );

    // Per domain: the domain once, no node column repeating it.
    let per_domain = d.agad(&["report", "--per-domain", "--metric", "proc.rss-bytes"])?;
    let mut lines = per_domain.lines();
    let header = cells(lines.next().unwrap());
    assert!(!header.contains(&"NODE"), "{per_domain}");
    for row in lines.map(cells) {
        assert_eq!(&row[2..4], ["d1", "app-watch"], "{per_domain}");
    }

    // A typo is an error that names what exists; a known domain with
    // nothing in it is an empty answer.
    let err = refused(&d, &["report", "--domain", "d9"])?;
    assert!(
        err.contains("no domain `d9`") && err.contains("d1, d2"),
        "{err}"
    );
    let err = refused(&d, &["report", "--node", "m1"])?;
    assert!(err.contains("no node `m1`") && err.contains("n1"), "{err}");
    let err = refused(&d, &["alarms", "--node", "m1"])?;
    assert!(err.contains("no node `m1`"), "{err}");
    let err = refused(&d, &["alarms", "--domain", "d9"])?;
    assert!(err.contains("no domain `d9`"), "{err}");
    let out = d.run(&["report", "--domain", "d2"])?;
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no report rows match"),
        "{out:?}"
    );

    // Alarm filters: domain, severity, since/until.
    let modules_of = |args: &[&str]| -> anyhow::Result<Vec<String>> {
        let mut all = vec!["alarms", "--json"];
        all.extend_from_slice(args);
        Ok(d.agad(&all)?
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["module"].as_str().unwrap().to_owned()
            })
            .collect())
    };
    let all = modules_of(&["--domain", "d1", "--since", "2d"])?;
    assert!(all.iter().any(|m| m == "app-watch") && all.iter().any(|m| m == "cpu-mem"));
    let critical = modules_of(&["--domain", "d1", "--severity", "critical"])?;
    assert!(!critical.is_empty());
    assert!(critical.iter().all(|m| m == "app-watch"), "{critical:?}");
    assert!(modules_of(&["--domain", "d2"])?.is_empty());
    assert!(
        modules_of(&["--until", "1d"])?.is_empty(),
        "nothing older than a day"
    );

    // Status: each node's modules and their state, since when each
    // element is in its state; the same as JSON.
    let status = d.agad(&["status"])?;
    let node_line = status
        .lines()
        .position(|l| l.contains("node n1"))
        .unwrap_or_else(|| panic!("{status}"));
    let lines: Vec<&str> = status.lines().collect();
    assert!(lines[node_line].contains(" since "), "{status}");
    let modules = lines[node_line + 1].trim();
    assert!(
        modules.starts_with("modules: app-watch running since ")
            && modules.contains(", cpu-mem running since "),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("domain d1: s1 (connected since ")),
        "{status}"
    );
    let json = d.status()?;
    let n1 = &json["nodes"][0];
    assert_eq!(n1["name"], "n1");
    assert_eq!(n1["modules"][0]["state"], "running", "{json}");
    assert!(n1["modules"][0]["since_ms"].as_u64().is_some(), "{json}");
    assert!(n1["since_ms"].as_u64().is_some(), "{json}");

    // The alarm table: aligned, severity in words.
    let table = d.agad(&["alarms", "--severity", "critical"])?;
    let header = table.lines().next().unwrap();
    let node_at = header.find("NODE").unwrap();
    for line in table
        .lines()
        .skip(1)
        .filter(|l| !l.trim_start().starts_with('└'))
    {
        assert!(line.contains("critical"), "{table}");
        assert_eq!(line.get(node_at..node_at + 2), Some("n1"), "{table}");
    }
    Ok(())
}

/// Starts node `name` under the station at `addr` without a ticket: its
/// request waits for the operator.
fn node_without_ticket(d: &mut Deployment, name: &str, addr: &str) -> anyhow::Result<()> {
    d.issue("node", name)?;
    d.spawn(
        name,
        &[
            "node",
            "--dominio",
            addr,
            "--pki",
            "pki",
            "--name",
            name,
            "--trust",
            "publisher.pub",
            "--data-dir",
            name,
        ],
    )
}

/// The row of `name` in `agad enroll list`, as cells.
fn member(d: &Deployment, name: &str) -> anyhow::Result<Option<Vec<String>>> {
    Ok(d.agad(&["enroll", "list"])?
        .lines()
        .map(|l| cells(l).into_iter().map(str::to_owned).collect::<Vec<_>>())
        .find(|c| c.first().map(String::as_str) == Some(name)))
}

#[test]
fn enrollment_by_prefix_twice_tickets_revoked_and_stale_requests_rejected() -> anyhow::Result<()> {
    let mut d = Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())?;
    d.publish_inspector("cpu-mem")?;
    d.apply(
        "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"d1\"\n\n\
         [[node]]\nname = \"a-node-with-a-rather-long-name\"\ndomain = \"d1\"\n\n\
         [[node]]\nname = \"n3\"\ndomain = \"d1\"\n",
    )?;
    let addr = d.start_station("s1")?;

    // A node started with its ticket: approved by it, so nobody is told
    // to approve it by hand.
    d.start_node("n1", &addr)?;

    // Without a ticket: pending until approved by a 4-digit prefix.
    let long = "a-node-with-a-rather-long-name";
    node_without_ticket(&mut d, long, &addr)?;
    let row = d.wait_for("the long name's request", |d| member(d, long))?;
    assert_eq!(row[1..3], ["node", "pending"], "{row:?}");
    let fingerprint = row[3].clone();
    // Columns line up however long the name.
    let list = d.agad(&["enroll", "list"])?;
    let column = list.lines().next().unwrap().find("FINGERPRINT").unwrap();
    for line in list.lines().skip(1) {
        assert!(
            line.get(column..)
                .is_some_and(|f| f.len() == 64 && f.chars().all(|c| c.is_ascii_hexdigit())),
            "{list}"
        );
    }
    let out = d.agad(&["enroll", "approve", &fingerprint[..4]])?;
    assert_eq!(
        out.trim_end().lines().next(),
        Some(&*format!("{long} (node) is now inactive"))
    );
    let out = d.agad(&["enroll", "approve", &fingerprint[..4]])?;
    assert_eq!(
        out.trim(),
        format!("{long} (node) is already inactive: nothing changed")
    );
    let err = String::from_utf8_lossy(&d.run(&["enroll", "approve", "abc"])?.stderr).into_owned();
    assert!(err.contains("at least 4 hex digits"), "{err}");
    d.agad(&["enroll", "activate", long])?;
    let out = d.agad(&["enroll", "activate", long])?;
    assert!(out.contains("already active: nothing changed"), "{out}");

    // A stale request is rejected by name; `remove` is the same command.
    node_without_ticket(&mut d, "n3", &addr)?;
    d.wait_for("n3's request", |d| member(d, "n3"))?;
    d.stop("n3")?;
    let out = d.agad(&["enroll", "reject", "n3"])?;
    assert!(out.starts_with("n3 (node, pending, "), "{out}");
    assert_eq!(member(&d, "n3")?, None);
    let out = d.run(&["enroll", "remove", "n3"])?;
    assert!(!out.status.success(), "already gone");

    // Tickets: listed while unused (their secret cut short), revoked.
    let ticket = d.ticket("n3")?;
    let tickets = d.agad(&["enroll", "tickets"])?;
    assert!(
        tickets
            .lines()
            .any(|l| cells(l) == ["n3", &*format!("{}…", &ticket[..8])]),
        "{tickets}"
    );
    assert!(!tickets.contains(&ticket), "the whole secret is not shown");
    let out = d.agad(&["enroll", "revoke", &ticket[..6]])?;
    assert!(out.contains("for n3 cancelled"), "{out}");
    assert!(!d.agad(&["enroll", "tickets"])?.contains("n3"));

    // Publishing: the outcome in words; an unknown key says how to trust it.
    let again = d.agad(&["module", "publish", "cpu-mem.agad"])?;
    assert_eq!(
        again.trim(),
        "cpu-mem 0.1.0 (sequence 1): already published: nothing changed"
    );
    d.agad(&["module", "keygen", "--out", "stranger"])?;
    d.agad(&[
        "module",
        "sign",
        "cpu-mem.wasm",
        "--manifest",
        "cpu-mem.toml",
        "--key",
        "stranger.secret",
        "--out",
        "stranger.agad",
    ])?;
    let err = refused(&d, &["module", "publish", "stranger.agad"])?;
    assert!(
        err.contains("which the top manager does not trust")
            && err.contains("restart `agad mor` with `--trust FILE.pub`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "said once: {err}");

    // Its first contact, before the ticket's approval reached the station.
    assert!(
        d.log("n1").contains("enrollment requested with a ticket"),
        "{}",
        d.log("n1")
    );
    assert!(
        !d.log("n1").contains("approve with"),
        "a node with a ticket is not told to be approved by hand:\n{}",
        d.log("n1")
    );
    Ok(())
}
