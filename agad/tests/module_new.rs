//! A module author's path, as a new user walks it with the real `agad`
//! binary: `agad module new` scaffolds a project outside the repository
//! (Rust, and Python through componentize-py), `agad module build` builds it
//! for wasm32-wasip2 and signs it, `agad node run` runs it and prints its
//! alarm and its summary; the same module published into a real hierarchy
//! (top manager, station, node over mutual TLS) reaches the top manager,
//! and its manifest's configuration schema refuses an undeclared key at
//! `agad topology apply`.
//!
//! The scaffolded Rust projects build outside the workspace with a cargo of
//! their own; they share one target folder inside this build's target
//! (`module-new-target`), so the cold build of their dependencies is paid
//! once. Python needs componentize-py (`pip install componentize-py==0.25.1`,
//! which test.sh does).
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::hierarchy::{Deployment, Options};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const AGAD: &str = env!("CARGO_BIN_EXE_agad");
const NAME: &str = "my-check";
const PY_NAME: &str = "my-py-check";

/// Variables of this test's own cargo run that must not reach the nested
/// cargo of a scaffolded project (as in modules/build.rs).
const LEAKING_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_LLVM_COV",
];

fn agad(args: &[&str], cwd: &Path) -> Output {
    let mut cmd = Command::new(AGAD);
    cmd.args(args).current_dir(cwd).env(
        "CARGO_TARGET_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-new-target"),
    );
    for var in LEAKING_VARS {
        cmd.env_remove(var);
    }
    cmd.output().expect("agad binary runs")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A project scaffolded, built and signed once per test run.
struct Built {
    /// Keeps the folder: publisher key, project, bundle.
    dir: tempfile::TempDir,
    bundle: PathBuf,
    /// What `agad module build` printed.
    build_output: String,
}

impl Built {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The component and manifest text, for signing with another key.
    fn wasm_and_manifest(&self, name: &str) -> (Vec<u8>, String) {
        let bundle =
            agad_protocol::Bundle::from_bytes(&std::fs::read(&self.bundle).unwrap()).unwrap();
        let manifest = std::fs::read_to_string(self.path(name).join("manifest.toml")).unwrap();
        (bundle.wasm.clone(), manifest)
    }
}

/// `agad module keygen`, `new`, `build`, as a module author types them.
fn scaffold_and_build(name: &str, lang: &str) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ok(
        agad(&["module", "keygen", "--out", "publisher"], cwd),
        "keygen",
    );
    let created = ok(
        agad(
            &["module", "new", name, "--kind", "inspector", "--lang", lang],
            cwd,
        ),
        "agad module new",
    );
    assert!(created.contains("agad module build"), "{created}");
    // The project's own unit test passes as scaffolded.
    if lang == "python" {
        let out = Command::new("python3")
            .args(["-m", "unittest", "-q"])
            .current_dir(cwd.join(name))
            .output()
            .expect("python3 runs");
        ok(out, "the scaffolded project's python3 -m unittest");
    }
    let build_output = ok(
        agad(
            &[
                "module",
                "build",
                "--dir",
                name,
                "--key",
                "publisher.secret",
            ],
            cwd,
        ),
        "agad module build",
    );
    let bundle = cwd.join(name).join(format!("{name}.agad"));
    assert!(bundle.is_file(), "{build_output}");
    Built {
        dir,
        bundle,
        build_output,
    }
}

fn rust() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| scaffold_and_build(NAME, "rust"))
}

fn python() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let found =
            Command::new(std::env::var_os("COMPONENTIZE_PY").unwrap_or("componentize-py".into()))
                .arg("--version")
                .output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "componentize-py is not installed: `pip install componentize-py==0.25.1` (test.sh does)"
        );
        scaffold_and_build(PY_NAME, "python")
    })
}

/// `agad node run` of `built` for a few seconds with a threshold certainly
/// crossed: the JSON lines it printed.
fn node_run(built: &Built) -> Vec<serde_json::Value> {
    let bundle = built.bundle.to_string_lossy().into_owned();
    let out = ok(
        agad(
            &[
                "node",
                "run",
                "--bundle",
                &bundle,
                "--trust",
                "publisher.pub",
                "--data-dir",
                "node",
                "--config",
                "period=250ms",
                "--config",
                "threshold=0",
                "--config",
                "raise_after=1",
                "--config",
                "window_secs=1",
                "--for",
                "6s",
            ],
            built.dir.path(),
        ),
        "agad node run",
    );
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn assert_alarm_and_summary(events: &[serde_json::Value], module: &str) {
    let faults: Vec<_> = events.iter().filter(|e| e["type"] == "fault").collect();
    assert!(faults.is_empty(), "{faults:?}");
    let alarm = events
        .iter()
        .find(|e| e["type"] == "alarm" && e["module"] == module)
        .unwrap_or_else(|| panic!("no alarm of {module} in {events:?}"));
    assert_eq!(alarm["key"], "mem.high", "{alarm}");
    assert_eq!(alarm["raised"], true, "{alarm}");
    let summary = events
        .iter()
        .filter(|e| e["type"] == "report" && e["module"] == module)
        .flat_map(|e| e["summaries"].as_array().cloned().unwrap_or_default())
        .find(|s| s["metric"] == "mem.used-percent")
        .unwrap_or_else(|| panic!("no summary of {module} in {events:?}"));
    let mean = summary["mean"].as_f64().unwrap();
    assert!(mean > 0.0 && mean <= 100.0, "{summary}");
}

#[test]
fn rust_inspector_scaffolded_built_signed_and_run() {
    let built = rust();
    let out = &built.build_output;
    assert!(out.contains("sha256"), "{out}");
    assert!(out.contains("capabilities  os, state, log, clock"), "{out}");
    assert_alarm_and_summary(&node_run(built), NAME);
}

#[test]
fn python_inspector_scaffolded_built_signed_and_run() {
    let built = python();
    let out = &built.build_output;
    assert!(out.contains("sha256"), "{out}");
    assert!(
        out.contains("capabilities  os, snmp, state, log, clock, disk, probe, service"),
        "{out}"
    );
    assert_alarm_and_summary(&node_run(built), PY_NAME);
}

#[test]
fn specialists_scaffolded_built_signed_and_run_once_in_rust_and_python() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ok(
        agad(&["module", "keygen", "--out", "publisher"], cwd),
        "keygen",
    );
    for (name, lang) in [("my-diag", "rust"), ("my-py-diag", "python")] {
        ok(
            agad(
                &[
                    "module",
                    "new",
                    name,
                    "--kind",
                    "specialist",
                    "--lang",
                    lang,
                ],
                cwd,
            ),
            "agad module new --kind specialist",
        );
        let built = ok(
            agad(
                &[
                    "module",
                    "build",
                    "--dir",
                    name,
                    "--key",
                    "publisher.secret",
                ],
                cwd,
            ),
            "agad module build",
        );
        assert!(built.contains("sha256"), "{built}");
        let bundle = format!("{name}/{name}.agad");
        let run = |arg: &str| {
            agad(
                &[
                    "node",
                    "run",
                    "--bundle",
                    &bundle,
                    "--trust",
                    "publisher.pub",
                    "--data-dir",
                    "node",
                    "--arg",
                    arg,
                ],
                cwd,
            )
        };
        let out = ok(run("limit=0"), "agad node run --arg");
        let diagnosis: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(diagnosis["outcome"], "diagnosed", "{diagnosis}");
        let facts = diagnosis["facts"].as_array().unwrap();
        assert_eq!(
            facts[0],
            serde_json::json!(["cause", "memory-high"]),
            "{diagnosis}"
        );
        // An argument the specialist does not take is its own failure.
        let out = run("limt=1");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("\"failed\"") && text.contains("limt"),
            "{text}"
        );
    }
}

#[test]
fn a_module_outside_the_repository_is_refused_clearly_when_it_cannot_build() {
    let dir = tempfile::tempdir().unwrap();
    let out = agad(
        &["module", "new", "Bad Name", "--kind", "inspector"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("module name `Bad Name`"));
    ok(
        agad(&["module", "new", "x", "--kind", "specialist"], dir.path()),
        "new specialist",
    );
    let out = agad(&["module", "new", "x", "--kind", "inspector"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    ok(
        agad(&["module", "keygen", "--out", "k"], dir.path()),
        "keygen",
    );
    let out = agad(
        &["module", "build", "--dir", "nowhere", "--key", "k.secret"],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is nowhere a module project?"),
        "{err}"
    );
}

const TOPOLOGY: &str = r#"
[[domain]]
name = "d1"
stations = ["s1"]
report_window = "2s"

[[node]]
name = "n1"
domain = "d1"

[[assign]]
module = "my-check"
domain = "d1"
[assign.config]
period = "500ms"
threshold = 0
raise_after = 1
window_secs = 1

[[assign]]
module = "my-py-check"
domain = "d1"
[assign.config]
period = "500ms"
threshold = 0
raise_after = 1
window_secs = 1
"#;

#[test]
fn scaffolded_modules_published_reach_the_top_manager_and_their_schema_is_enforced() {
    let (rust, python) = (rust(), python());
    let mut d = Deployment::start(Path::new(AGAD), Options::default()).unwrap();
    let (wasm, manifest) = rust.wasm_and_manifest(NAME);
    d.publish(NAME, &wasm, &manifest).unwrap();
    let (wasm, manifest) = python.wasm_and_manifest(PY_NAME);
    d.publish(PY_NAME, &wasm, &manifest).unwrap();

    // The manifest's schema: an undeclared key, and a value of the wrong type.
    for (bad, expected) in [
        ("treshold = 0", "treshold"),
        ("threshold = \"high\"", "threshold"),
    ] {
        let topology = TOPOLOGY.replacen("threshold = 0", bad, 1);
        std::fs::write(d.path("bad.toml"), topology).unwrap();
        let out = d.run(&["topology", "apply", "bad.toml"]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(err.contains(expected) && err.contains(NAME), "{bad}: {err}");
    }

    d.apply(TOPOLOGY).unwrap();
    let station = d.start_station("s1").unwrap();
    d.start_node("n1", &station).unwrap();
    for module in [NAME, PY_NAME] {
        d.wait_for(&format!("{module}'s alarm in BIG"), |d| {
            Ok(d.alarms()?
                .into_iter()
                .find(|a| a.module == module && a.node == "n1" && a.key == "mem.high" && a.raised))
        })
        .unwrap();
        d.wait_for(&format!("{module}'s summary in BIG"), |d| {
            Ok(d.reports()?
                .into_iter()
                .find(|r| r.module == module && r.summary.metric == "mem.used-percent"))
        })
        .unwrap();
    }
}
