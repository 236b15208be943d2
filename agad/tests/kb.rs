//! Publishing knowledge-base rules end to end: `agad kb apply` against a
//! real top manager checks the set against the modules published in BGC
//! and the topology, refuses an invalid set whole with every error's
//! position, shows the difference (`--dry-run` stores nothing), and a
//! stored set reaches a real domain manager in a replica it acknowledges.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::hierarchy::{Deployment, Options};
use std::path::Path;

/// A specialist for the rules to name. No specialist module is built in
/// this repository yet, so a built inspector's bytes are signed as one:
/// what the top manager checks and replicates is the signed manifest (its
/// kind and arguments); nothing here runs it.
const DISK_USAGE: &str = r#"
name = "disk-usage"
version = "0.1.0"
sequence = 1
kind = "specialist"
area = "performance"
capabilities = ["os", "state", "log", "clock"]

[config.path]
type = "string"
required = true
description = "the filesystem to look into"
"#;

const TOPOLOGY: &str = r#"
[[domain]]
name = "d1"
stations = ["s1"]

[[node]]
name = "n1"
domain = "d1"

[[assign]]
module = "disk-space"
domain = "d1"
[assign.config]
period = "1s"
"#;

const DISK_RULES: &str = r#"# Disk alarms: what fills the filesystem.
[[rule]]
name = "disk-full"
[rule.match]
key = "fs.used:*"
nodes = ["n1"]
[rule.diagnose]
specialist = "disk-usage"
args = { path = "{subject}" }
"#;

const RUNTIME_RULES: &str = r#"[[rule]]
name = "crash-loop"
[rule.match]
module = "agad"
key = "agad.module-crash-loop"
[rule.stop]
module = "disk-space"
"#;

/// Three mistakes, one per rule: a specialist nobody published, an
/// argument the published one does not take, an alarm key no module
/// declares.
const BROKEN_RULES: &str = r#"[[rule]]
name = "no-such-specialist"
[rule.match]
key = "fs.used:*"
[rule.diagnose]
specialist = "top-cpu"

[[rule]]
name = "bad-argument"
[rule.match]
key = "fs.used:*"
[rule.diagnose]
specialist = "disk-usage"
args = { path = "/", depth = "3" }

[[rule]]
name = "unknown-key"
[rule.match]
key = "cpu.totl"
[rule.diagnose]
specialist = "disk-usage"
args = { path = "/" }
"#;

fn write_rules(d: &Deployment, dir: &str, files: &[(&str, &str)]) {
    let dir = d.path(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn kb_show(d: &Deployment) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&d.agad(&["kb", "show", "--json"])?)?)
}

fn bases_version(d: &Deployment) -> anyhow::Result<u64> {
    Ok(d.status()?["version"].as_u64().unwrap())
}

#[test]
fn a_rule_set_is_checked_stored_and_acknowledged_by_the_domain_manager() -> anyhow::Result<()> {
    let mut d = Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())?;
    d.publish_inspector("disk-space")?;
    let bytes = agad_modules::inspector("disk-space").unwrap().wasm;
    d.publish("disk-usage", bytes, DISK_USAGE)?;
    d.apply(TOPOLOGY)?;
    d.start_station("s1")?;
    assert_eq!(
        kb_show(&d)?["rules"],
        serde_json::Value::Null,
        "no set before the first apply"
    );

    // --dry-run: the difference, nothing stored.
    write_rules(
        &d,
        "rules",
        &[("disk.toml", DISK_RULES), ("runtime.toml", RUNTIME_RULES)],
    );
    let before = bases_version(&d)?;
    let dry = d.agad(&["kb", "apply", "rules", "--dry-run"])?;
    assert!(
        dry.contains("+ rule disk-full")
            && dry.contains("+ rule crash-loop")
            && dry.contains("not applied (dry run)"),
        "{dry}"
    );
    assert_eq!(bases_version(&d)?, before, "a dry run changes nothing");
    assert_eq!(kb_show(&d)?["rules"], serde_json::Value::Null);

    // Applied: stored under a new version that the domain manager
    // acknowledges in a replica carrying the set.
    let applied = d.agad(&["kb", "apply", "rules"])?;
    let version: u64 = applied
        .lines()
        .find_map(|l| l.strip_prefix("applied as version "))
        .unwrap_or_else(|| panic!("{applied}"))
        .trim()
        .parse()?;
    assert!(version > before, "{applied}");
    let show = d.wait_for("d1 to acknowledge the replica with the rules", |d| {
        let show = kb_show(d)?;
        Ok((show["domains"][0]["holds_rules"] == true).then_some(show))
    })?;
    assert_eq!(show["rules"]["version"], version);
    assert_eq!(show["rules"]["rules"], 2);
    assert_eq!(
        show["rules"]["files"],
        serde_json::json!(["disk.toml", "runtime.toml"])
    );
    assert_eq!(
        show["rules"]["specialists"],
        serde_json::json!(["disk-usage"])
    );
    assert_eq!(show["rules"]["modules"], serde_json::json!(["disk-space"]));
    assert!(show["domains"][0]["replica_acked"].as_u64().unwrap() >= version);
    let text = d.agad(&["kb", "show"])?;
    assert!(
        text.contains(&format!("rule set version {version}: 2 rule(s)"))
            && text.contains("domain d1: holds this rule set"),
        "{text}"
    );
    assert!(d.log("s1").contains("replica in force"), "{}", d.log("s1"));
    // The same set again: nothing to store.
    let again = d.agad(&["kb", "apply", "rules"])?;
    assert!(again.contains("no change"), "{again}");
    assert_eq!(kb_show(&d)?["rules"]["version"], version);
    // What the domain manager stored: the files as written, the
    // specialist the rules run and the module they stop, signed.
    d.stop("s1")?;
    {
        let db = agad_storage::Database::open(&d.path("s1/db"))?;
        let replica = agad_gerente_dominio::bases::Bases::open(&db, Vec::new())?
            .replica()?
            .unwrap();
        assert!(replica.version >= version);
        assert_eq!(
            replica.rules,
            [
                ("disk.toml".to_owned(), DISK_RULES.to_owned()),
                ("runtime.toml".to_owned(), RUNTIME_RULES.to_owned())
            ]
        );
        let specialist = replica
            .modules
            .iter()
            .find(|m| m.manifest.name == "disk-usage")
            .unwrap();
        assert_eq!(specialist.manifest.kind, agad_protocol::Kind::Specialist);
        assert_eq!(specialist.manifest.config[0].name, "path");
        assert!(
            replica
                .modules
                .iter()
                .any(|m| m.manifest.name == "disk-space")
        );
    }
    d.restart("s1")?;

    // An invalid set: every error with its position, nothing stored.
    write_rules(&d, "broken", &[("broken.toml", BROKEN_RULES)]);
    let out = d.run(&["kb", "apply", "broken"])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "broken/broken.toml:6:14: unknown specialist `top-cpu`",
        "broken/broken.toml:14:22: specialist `disk-usage` has no argument `depth`",
        "broken/broken.toml:19:7: unknown alarm key `cpu.totl`",
        "3 error(s); the rule set is refused as a whole (nothing stored)",
    ] {
        assert!(stderr.contains(expected), "`{expected}` not in:\n{stderr}");
    }
    let after = bases_version(&d)?;
    assert_eq!(kb_show(&d)?["rules"]["version"], version);
    // A node the topology does not have is refused too.
    write_rules(
        &d,
        "ghost",
        &[("disk.toml", &DISK_RULES.replace("\"n1\"", "\"ghost\""))],
    );
    let out = d.run(&["kb", "apply", "ghost"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("ghost/disk.toml:6:10:"),
        "{stderr}"
    );

    // A changed set under --dry-run: its difference, still nothing stored.
    write_rules(
        &d,
        "rules",
        &[(
            "disk.toml",
            &DISK_RULES.replace(
                "key = \"fs.used:*\"",
                "key = \"fs.used:*\"\nseverity = \"critical\"",
            ),
        )],
    );
    std::fs::remove_file(d.path("rules/runtime.toml"))?;
    let dry = d.agad(&["kb", "apply", "--dry-run", "rules"])?;
    assert!(
        dry.contains("~ rule disk-full") && dry.contains("- rule crash-loop"),
        "{dry}"
    );
    assert_eq!(bases_version(&d)?, after);
    assert_eq!(kb_show(&d)?["rules"]["rules"], 2);

    // A topology without the node the rules name: told, not refused.
    std::fs::write(
        d.path("without-n1.toml"),
        TOPOLOGY.replace("[[node]]\nname = \"n1\"\ndomain = \"d1\"\n", ""),
    )?;
    let dry = d.agad(&["topology", "apply", "--dry-run", "without-n1.toml"])?;
    assert!(
        dry.contains("- node n1") && dry.contains("the rule set in force gets 1 error(s)"),
        "{dry}"
    );
    Ok(())
}

/// The lines of `log` that say `what` and carry `version=N` with N at
/// least `version`.
fn logged_at_least(log: &str, what: &str, version: u64) -> bool {
    log.lines().filter(|l| l.contains(what)).any(|l| {
        l.split_whitespace()
            .filter_map(|w| w.strip_prefix("version="))
            .any(|v| v.parse::<u64>().is_ok_and(|v| v >= version))
    })
}

#[test]
fn a_rule_set_reaches_a_sub_domain_and_outlives_a_top_manager_restart() -> anyhow::Result<()> {
    let mut d = Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())?;
    d.publish_inspector("disk-space")?;
    let bytes = agad_modules::inspector("disk-space").unwrap().wasm;
    d.publish("disk-usage", bytes, DISK_USAGE)?;
    d.apply(
        "[[domain]]\nname = \"campus\"\nstations = [\"s1\"]\n\n\
         [[domain]]\nname = \"lab\"\nparent = \"campus\"\nstations = [\"s2\"]\n\n\
         [[node]]\nname = \"n1\"\ndomain = \"lab\"\n\n\
         [[assign]]\nmodule = \"disk-space\"\ndomain = \"lab\"\n[assign.config]\nperiod = \"1s\"\n",
    )?;
    let campus = d.start_station("s1")?;
    d.start_station_under("s2", &campus)?;
    write_rules(&d, "rules", &[("disk.toml", DISK_RULES)]);
    let applied = d.agad(&["kb", "apply", "rules"])?;
    let version: u64 = applied
        .lines()
        .find_map(|l| l.strip_prefix("applied as version "))
        .unwrap_or_else(|| panic!("{applied}"))
        .trim()
        .parse()?;
    // The lab's replica travels inside the campus's: its manager stores
    // it (a version carrying the rules) and the campus manager hears so.
    d.wait_for("the lab manager to hold the rules", |d| {
        Ok((logged_at_least(&d.log("s2"), "replica in force", version)
            && logged_at_least(&d.log("s1"), "sub-domain replica acknowledged", version))
        .then_some(()))
    })?;
    let show = d.wait_for("both domains to hold the rules", |d| {
        let show = kb_show(d)?;
        let domains = show["domains"].as_array().cloned().unwrap_or_default();
        Ok(
            (domains.len() == 2 && domains.iter().all(|x| x["holds_rules"] == true))
                .then_some(show),
        )
    })?;
    let lab = show["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["domain"] == "lab")
        .unwrap()
        .clone();
    assert_eq!(lab["parent"], "campus");
    let text = d.agad(&["kb", "show"])?;
    assert!(
        text.contains("domain lab: holds this rule set (replica inside campus's)"),
        "{text}"
    );

    // Stored with the topology, on disk before the apply answered: a top
    // manager killed and restarted has the same set under the same
    // version, and replicates it again.
    d.kill9("mor")?;
    d.restart_mor()?;
    let show = kb_show(&d)?;
    assert_eq!(show["rules"]["version"], version);
    assert_eq!(show["rules"]["files"], serde_json::json!(["disk.toml"]));
    d.wait_for("campus to hold the rules after the restart", |d| {
        let show = kb_show(d)?;
        Ok(show["domains"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["domain"] == "campus" && x["holds_rules"] == true)
            .then_some(()))
    })?;
    let again = d.agad(&["kb", "apply", "rules"])?;
    assert!(again.contains("no change"), "{again}");
    Ok(())
}

#[test]
fn a_module_the_rules_in_force_could_no_longer_run_is_refused_at_publish() -> anyhow::Result<()> {
    let d = Deployment::start(Path::new(env!("CARGO_BIN_EXE_agad")), Options::default())?;
    d.publish_inspector("disk-space")?;
    let bytes = agad_modules::inspector("disk-space").unwrap().wasm;
    d.publish("disk-usage", bytes, DISK_USAGE)?;
    d.apply(TOPOLOGY)?;
    write_rules(&d, "rules", &[("disk.toml", DISK_RULES)]);
    d.agad(&["kb", "apply", "rules"])?;
    // Sequence 2 drops the `path` argument the rule passes.
    let without_path = DISK_USAGE
        .replace("sequence = 1", "sequence = 2")
        .replace(
            "[config.path]\ntype = \"string\"\nrequired = true\ndescription = \"the filesystem to look into\"\n",
            "",
        );
    assert!(!without_path.contains("config.path"));
    let refused = d.publish("disk-usage", bytes, &without_path).unwrap_err();
    let text = format!("{refused:#}");
    assert!(
        text.contains("would break the rule set in force") && text.contains("disk.toml:"),
        "{text}"
    );
    // Nothing half-applied: BGC keeps sequence 1.
    let modules = d.status()?["modules"].to_string();
    assert!(modules.contains("disk-usage 0.1.0 (seq 1)"), "{modules}");
    Ok(())
}
