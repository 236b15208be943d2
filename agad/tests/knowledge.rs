//! The knowledge base at work, on real processes (a top manager, a domain
//! manager and a node, all `agad` with real mutual TLS, the real built-in
//! inspectors and specialists): a rule published with `agad kb apply`
//! reaches the domain manager, an alarm of the node opens a case there,
//! the specialist runs on the node, and the case with its result is in BIG
//! (`agad alarms`), once, even when the domain manager is killed in the
//! middle of the run.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::faults::{Hog, Service, Tmpfs};
use agad_tests::hierarchy::{Deployment, Options, variant};
use serde_json::Value;
use std::path::Path;

const STATION: &str = "s1";
const NODE: &str = "n1";

fn deployment() -> anyhow::Result<Deployment> {
    Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())
}

/// Domain `d1` served by [`STATION`], node [`NODE`] running cpu-mem with a
/// CPU threshold one busy core crosses on this 2-core machine.
fn topology() -> String {
    topology_served_by(&format!("\"{STATION}\""))
}

/// [`topology`] with `stations` (a TOML list's items) for d1.
fn topology_served_by(stations: &str) -> String {
    format!(
        "[[domain]]\nname = \"d1\"\nstations = [{stations}]\nreport_window = \"2s\"\n\n\
         [[node]]\nname = \"{NODE}\"\ndomain = \"d1\"\naddress = \"127.0.0.1\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"{NODE}\"]\n[assign.config]\n\
         period = \"500ms\"\nthreshold = 30\nraise_after = 2\nclear_after = 2\nwindow_secs = 2\n"
    )
}

/// Publishes the rules `text` as `rules/cpu.toml` with `agad kb apply`.
fn apply_rules(d: &Deployment, text: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(d.path("rules"))?;
    std::fs::write(d.path("rules/cpu.toml"), text)?;
    d.agad(&["kb", "apply", "rules"])
}

fn rule(sample: &str) -> String {
    format!(
        "[[rule]]\nname = \"cpu-hog\"\n[rule.match]\nkey = \"cpu.total\"\n\
         [rule.diagnose]\nspecialist = \"top-cpu\"\nargs = {{ sample = \"{sample}\", count = 5 }}\n"
    )
}

fn start(d: &mut Deployment, rules: &str) -> anyhow::Result<()> {
    d.publish_inspector("cpu-mem")?;
    let top = agad_modules::specialist("top-cpu").unwrap();
    d.publish("top-cpu", top.wasm, top.manifest_toml)?;
    d.apply(&topology())?;
    apply_rules(d, rules)?;
    let station = d.start_station(STATION)?;
    d.start_node(NODE, &station)
}

/// The first diagnosed case of the CPU rule, once BIG has it.
fn diagnosed(d: &mut Deployment) -> anyhow::Result<Value> {
    d.wait_for("a diagnosed cpu-hog case in BIG", |d| {
        Ok(d.cases(NODE)?
            .into_iter()
            .find(|c| c["rule"] == "cpu-hog" && variant(&c["state"]) == "diagnosed"))
    })
}

#[test]
fn a_cpu_hog_is_diagnosed_by_top_cpu_naming_its_pid() -> anyhow::Result<()> {
    let mut d = deployment()?;
    start(&mut d, &rule("1s"))?;
    let hog = Hog::start()?;
    let case = diagnosed(&mut d)?;
    let result = &case["results"][0][1];
    assert_eq!(result["specialist"], "top-cpu");
    assert_eq!(result["node"], NODE);
    assert_eq!(variant(&result["outcome"]), "diagnosed", "{case}");
    // The hog is among the processes the diagnosis names.
    let text = result["outcome"].to_string();
    assert!(
        text.contains(&hog.pid().to_string()),
        "the hog (pid {}) is not in the diagnosis: {text}",
        hog.pid()
    );
    // `agad alarms` shows the rule, the specialist's result and the state.
    let table = d.agad(&["alarms", "--node", NODE])?;
    assert!(
        table.contains("rule cpu-hog: diagnosed") && table.contains("top-cpu: diagnosed"),
        "{table}"
    );
    // `agad kb stats` counts it as helped.
    let stats = d.agad(&["kb", "stats"])?;
    assert!(stats.lines().any(|l| l.starts_with("cpu-hog")), "{stats}");
    d.check()
}

/// Two alarms of one tick open two cases whose specialist the node does
/// not hold yet: the manager sends its bytes with the first run only, and
/// the second, arriving while the first still compiles, takes them from
/// there instead of failing ("came without bytes and is not stored here").
#[test]
fn two_alarms_at_once_are_both_diagnosed_by_a_specialist_shipped_once() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    d.publish_inspector("disk-space")?;
    let top = agad_modules::specialist("top-cpu").unwrap();
    d.publish("top-cpu", top.wasm, top.manifest_toml)?;
    // Memory in use is above 0.1 % and the root filesystem above 0 % on
    // any machine; both modules tick on the node's one grid: two alarms at
    // once.
    d.apply(&format!(
        "[[domain]]\nname = \"d1\"\nstations = [\"{STATION}\"]\n\n\
         [[node]]\nname = \"{NODE}\"\ndomain = \"d1\"\naddress = \"127.0.0.1\"\n\n\
         [[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"{NODE}\"]\n[assign.config]\n\
         period = \"500ms\"\nthreshold = 100\nmem_percent = 0.1\nraise_after = 1\n\n\
         [[assign]]\nmodule = \"disk-space\"\nnodes = [\"{NODE}\"]\n[assign.config]\n\
         period = \"500ms\"\nmounts = \"/\"\nused_percent = 0\nraise_after = 1\n"
    ))?;
    let rules: String = ["mem.used", "fs.used:*"]
        .iter()
        .map(|key| {
            format!(
                "[[rule]]\nname = \"{}\"\n[rule.match]\nkey = \"{key}\"\n\
                 [rule.diagnose]\nspecialist = \"top-cpu\"\nargs = {{ sample = \"100ms\" }}\n\n",
                key.trim_end_matches(":*")
            )
        })
        .collect();
    apply_rules(&d, &rules)?;
    let station = d.start_station(STATION)?;
    d.start_node(NODE, &station)?;
    let cases = d.wait_for("both cases ended", |d| {
        let cases: Vec<Value> = d
            .cases(NODE)?
            .into_iter()
            .filter(|c| variant(&c["state"]) != "running")
            .collect();
        Ok((cases.len() >= 2).then_some(cases))
    })?;
    for case in &cases {
        assert_eq!(variant(&case["state"]), "diagnosed", "{case}");
    }
    let log = d.log(STATION);
    assert!(
        log.contains("with_bytes=true") && log.contains("with_bytes=false"),
        "the bytes went with one run only:\n{log}"
    );
    d.check()
}

#[test]
fn a_domain_manager_killed_during_a_run_does_not_run_the_specialist_twice() -> anyhow::Result<()> {
    let mut d = deployment()?;
    // A run long enough to kill its manager in the middle of it.
    start(&mut d, &rule("5s"))?;
    let _hog = Hog::start()?;
    let run = d.wait_for("a specialist run on the node", |d| {
        Ok(d.log(NODE)
            .lines()
            .find(|l| l.contains("specialist run accepted"))
            .and_then(|l| l.split_whitespace().find_map(|t| t.strip_prefix("id=")))
            .map(str::to_owned))
    })?;
    d.kill9(STATION)?;
    d.restart(STATION)?;
    let case = diagnosed(&mut d)?;
    assert_eq!(case["results"].as_array().map(Vec::len), Some(1), "{case}");
    let log = d.log(NODE);
    let accepted = log
        .lines()
        .filter(|l| l.contains("specialist run accepted") && l.contains(&format!("id={run}")))
        .count();
    assert_eq!(accepted, 1, "run {run} accepted {accepted} times:\n{log}");
    // The restarted manager sent the pending run again; the node refused it.
    assert!(
        log.lines()
            .any(|l| l.contains("refused a second run") && l.contains(&format!("id={run}"))),
        "no refusal of a second run of {run}:\n{log}"
    );
    d.check()
}

/// Who serves d1, per the top manager.
fn served_by(d: &Deployment) -> anyhow::Result<Option<String>> {
    let status = d.status()?;
    Ok(status["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["domain"] == "d1")
        .and_then(|x| x["station"].as_str().map(str::to_owned)))
}

#[test]
fn a_run_asked_before_a_fail_over_is_taken_over_by_the_standby() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("cpu-mem")?;
    let top = agad_modules::specialist("top-cpu").unwrap();
    d.publish("top-cpu", top.wasm, top.manifest_toml)?;
    d.apply(&topology_served_by("\"s1\", \"s2\""))?;
    // A run long enough to fail the domain over in the middle of it.
    apply_rules(&d, &rule("5s"))?;
    let s1 = d.start_station("s1")?;
    d.wait_for("s1 serving d1", |d| {
        Ok((served_by(d)?.as_deref() == Some("s1")).then_some(()))
    })?;
    let s2 = d.start_station("s2")?;
    d.start_node(NODE, &format!("{s1},{s2}"))?;
    let _hog = Hog::start()?;
    let run = d.wait_for("a specialist run on the node", |d| {
        Ok(d.log(NODE)
            .lines()
            .find(|l| l.contains("specialist run accepted"))
            .and_then(|l| l.split_whitespace().find_map(|t| t.strip_prefix("id=")))
            .map(str::to_owned))
    })?;
    // s1 dies with the run pending: s2 takes the domain over, and the
    // node's result goes to it.
    d.kill9("s1")?;
    let case = diagnosed(&mut d)?;
    assert_eq!(served_by(&d)?.as_deref(), Some("s2"));
    let results = case["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 1, "{case}");
    assert_eq!(results[0][1]["id"], run.as_str(), "{case}");
    let text = results[0][1]["outcome"].to_string();
    assert!(text.contains("pid"), "{text}");
    assert!(
        d.log("s2")
            .contains("took over the case of a run asked for before a fail-over"),
        "{}",
        d.log("s2")
    );
    let accepted = d
        .log(NODE)
        .lines()
        .filter(|l| l.contains("specialist run accepted"))
        .count();
    assert_eq!(accepted, 1, "{}", d.log(NODE));
    d.check()
}

#[test]
fn a_killed_allow_listed_service_is_restarted_and_the_fix_confirmed() -> anyhow::Result<()> {
    let service = Service::start("kb")?;
    let mut d = deployment()?;
    d.publish_inspector("app-watch")?;
    for name in ["top-cpu", "service-restart"] {
        let s = agad_modules::specialist(name).unwrap();
        d.publish(name, s.wasm, s.manifest_toml)?;
    }
    d.apply(&format!(
        "[[domain]]\nname = \"d1\"\nstations = [\"{STATION}\"]\n\n\
         [[node]]\nname = \"{NODE}\"\ndomain = \"d1\"\naddress = \"127.0.0.1\"\n\n\
         [[assign]]\nmodule = \"app-watch\"\nnodes = [\"{NODE}\"]\n[assign.config]\n\
         period = \"500ms\"\nprocesses = \"{}\"\nraise_after = 1\nclear_after = 1\n",
        service.name()
    ))?;
    apply_rules(
        &d,
        "[[rule]]\nname = \"service-down\"\n[rule.match]\nkey = \"proc.running:*\"\n\
         [rule.diagnose]\nspecialist = \"top-cpu\"\nargs = { sample = \"100ms\" }\n\
         [rule.fix]\nspecialist = \"service-restart\"\nargs = { service = \"{subject}\" }\n\
         [rule.confirm]\nwithin = \"30s\"\n[rule.escalate]\nto = \"ops\"\n",
    )?;
    let station = d.start_station(STATION)?;
    d.start_node_with_config(NODE, &station, &service.policy())?;
    // The node runs app-watch (deployed, watching) before the service dies.
    d.wait_for("app-watch running on the node", |d| {
        Ok(d.log(NODE).contains("deployment").then_some(()))
    })?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before = service.pids();
    assert!(!before.is_empty(), "the service is not running");
    service.kill();
    let case = d.wait_for("the service-down case fixed and confirmed in BIG", |d| {
        Ok(d.cases(NODE)?
            .into_iter()
            .find(|c| c["rule"] == "service-down" && variant(&c["state"]) == "fixed-confirmed"))
    })?;
    let results = case["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 2, "{case}");
    assert_eq!(results[1][0], "fix");
    assert_eq!(results[1][1]["specialist"], "service-restart");
    let facts = results[1][1]["outcome"]["diagnosed"]["facts"].to_string();
    assert!(facts.contains("restarted"), "{facts}");
    let after = service.pids();
    assert!(
        !after.is_empty() && after.iter().all(|p| !before.contains(p)),
        "a new process runs: before {before:?}, after {after:?}"
    );
    // The clear that confirmed it is in BIG too.
    let alarms = d.alarms()?;
    assert!(
        alarms
            .iter()
            .any(|a| a.node == NODE && a.key.starts_with("proc.running:") && !a.raised),
        "no clear of the service alarm in BIG"
    );
    d.check()
}

#[test]
fn a_filling_filesystem_is_diagnosed_by_disk_usage_naming_the_directory() -> anyhow::Result<()> {
    let mount = Tmpfs::mount(4 * 1024 * 1024)?;
    let path = mount.path_text();
    std::fs::create_dir_all(mount.path().join("logs/app"))?;
    std::fs::create_dir_all(mount.path().join("cache"))?;
    std::fs::write(mount.path().join("cache/small"), vec![0u8; 64 * 1024])?;

    let mut d = deployment()?;
    d.publish_inspector("disk-space")?;
    let s = agad_modules::specialist("disk-usage").unwrap();
    d.publish("disk-usage", s.wasm, s.manifest_toml)?;
    d.apply(&format!(
        "[[domain]]\nname = \"d1\"\nstations = [\"{STATION}\"]\n\n\
         [[node]]\nname = \"{NODE}\"\ndomain = \"d1\"\naddress = \"127.0.0.1\"\n\n\
         [[assign]]\nmodule = \"disk-space\"\nnodes = [\"{NODE}\"]\n[assign.config]\n\
         period = \"500ms\"\nmounts = \"{path}\"\nused_percent = 80\nraise_after = 1\n"
    ))?;
    apply_rules(
        &d,
        "[[rule]]\nname = \"disk-filling\"\n[rule.match]\nkey = \"fs.used:*\"\n\
         [rule.diagnose]\nspecialist = \"disk-usage\"\nargs = { path = \"{subject}\" }\n",
    )?;
    let station = d.start_station(STATION)?;
    d.start_node_with_config(
        NODE,
        &station,
        &format!("disk_usage_paths = [\"{path}\"]\n"),
    )?;
    // 3.5 MiB of the 4 MiB under logs/app.
    std::fs::write(
        mount.path().join("logs/app/big.log"),
        vec![1u8; 3584 * 1024],
    )?;
    let case = d.wait_for("a diagnosed disk-filling case in BIG", |d| {
        Ok(d.cases(NODE)?
            .into_iter()
            .find(|c| c["rule"] == "disk-filling" && variant(&c["state"]) == "diagnosed"))
    })?;
    let facts = case["results"][0][1]["outcome"]["diagnosed"]["facts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let fact = |k: &str| {
        facts
            .iter()
            .find(|f| f[0] == k)
            .and_then(|f| f[1].as_str())
            .map(str::to_owned)
    };
    assert_eq!(
        fact("path").as_deref(),
        Some(format!("{path}/logs/app").as_str()),
        "{case}"
    );
    d.check()
}

#[test]
fn a_rule_starts_an_inspector_on_the_alarms_node_for_a_while() -> anyhow::Result<()> {
    let mut d = deployment()?;
    d.publish_inspector("app-watch")?;
    // When the CPU is busy, watch for a process there for 4 s.
    start(
        &mut d,
        "[[rule]]\nname = \"watch-when-busy\"\n[rule.match]\nkey = \"cpu.total\"\n\
         [rule.start]\nmodule = \"app-watch\"\nconfig = { processes = \"agad-kb-missing\", period = \"500ms\", raise_after = 1 }\nfor = \"4s\"\n",
    )?;
    let _hog = Hog::start()?;
    // The started inspector runs: its alarm about the missing process
    // reaches BIG from the node.
    d.wait_for("app-watch's alarm from the started inspector", |d| {
        Ok(d.alarms()?
            .into_iter()
            .find(|a| a.node == NODE && a.module == "app-watch" && a.raised))
    })?;
    // And it is stopped again when its time runs out.
    d.wait_for("the started inspector stopped again", |d| {
        Ok(d.log(STATION)
            .contains("a rule's start ran out")
            .then_some(()))
    })?;
    d.wait_for("app-watch stopped on the node", |d| {
        Ok(d.log(NODE)
            .lines()
            .any(|l| l.contains("stopping") && l.contains("module=app-watch"))
            .then_some(()))
    })?;
    d.check()
}

#[test]
fn a_run_the_nodes_policy_refuses_is_recorded_and_escalated() -> anyhow::Result<()> {
    let mut d = deployment()?;
    let s = agad_modules::specialist("disk-usage").unwrap();
    d.publish("disk-usage", s.wasm, s.manifest_toml)?;
    // The node's policy allows no path to disk-usage (the default).
    start(
        &mut d,
        "[[rule]]\nname = \"busy-look-at-var\"\n[rule.match]\nkey = \"cpu.total\"\n\
         [rule.diagnose]\nspecialist = \"disk-usage\"\nargs = { path = \"/var\" }\n\
         [rule.fix]\nspecialist = \"top-cpu\"\n[rule.escalate]\nto = \"ops-oncall\"\n",
    )?;
    let _hog = Hog::start()?;
    let case = d.wait_for("the refused run's case escalated in BIG", |d| {
        Ok(d.cases(NODE)?
            .into_iter()
            .find(|c| c["rule"] == "busy-look-at-var" && variant(&c["state"]) == "escalated"))
    })?;
    let result = &case["results"][0][1];
    assert_eq!(variant(&result["outcome"]), "refused", "{case}");
    assert!(
        result["outcome"]["refused"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("polic")),
        "{case}"
    );
    assert_eq!(case["state"]["escalated"]["to"], "ops-oncall", "{case}");
    let stats = d.agad(&["kb", "stats", "--json"])?;
    let stats: Value = serde_json::from_str(&stats)?;
    let row = stats
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["rule"] == "busy-look-at-var"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (row["escalated"].as_u64(), row["refused"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    d.check()
}

#[test]
fn a_specialist_past_its_memory_limit_is_recorded_failed_and_escalated() -> anyhow::Result<()> {
    use agad_modules::test_guests::{MISBEHAVE_SPECIALIST_MANIFEST, MISBEHAVE_SPECIALIST_WASM};
    let mut d = deployment()?;
    d.publish(
        "misbehave-specialist",
        &std::fs::read(MISBEHAVE_SPECIALIST_WASM)?,
        &std::fs::read_to_string(MISBEHAVE_SPECIALIST_MANIFEST)?,
    )?;
    // The specialist allocates past its manifest's 16 MiB.
    start(
        &mut d,
        "[[rule]]\nname = \"bomb\"\n[rule.match]\nkey = \"cpu.total\"\n\
         [rule.diagnose]\nspecialist = \"misbehave-specialist\"\nargs = { mode = \"bomb\" }\n\
         [rule.escalate]\nto = \"ops-oncall\"\n",
    )?;
    let _hog = Hog::start()?;
    let case = d.wait_for("the bomb's case escalated in BIG", |d| {
        Ok(d.cases(NODE)?
            .into_iter()
            .find(|c| c["rule"] == "bomb" && variant(&c["state"]) == "escalated"))
    })?;
    let result = &case["results"][0][1];
    assert_eq!(variant(&result["outcome"]), "failed", "{case}");
    assert!(
        result["outcome"]["failed"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("max_memory_bytes")),
        "{case}"
    );
    assert_eq!(case["state"]["escalated"]["to"], "ops-oncall", "{case}");
    // The node is still up, and says why in its log.
    assert!(
        d.log(NODE).contains("specialist run ended"),
        "{}",
        d.log(NODE)
    );
    d.check()
}
