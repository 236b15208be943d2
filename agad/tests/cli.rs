//! The `agad` binary as an operator or a module author uses it: real
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test
//! processes, real wasm components built from this repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const AGAD: &str = env!("CARGO_BIN_EXE_agad");

fn agad(args: &[&str], cwd: &Path) -> Output {
    Command::new(AGAD)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("agad binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A temp folder with a key pair and the built-in inspectors as .wasm + manifest.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let out = agad(&["module", "keygen", "--out", "pub"], dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        for m in agad_modules::INSPECTORS {
            std::fs::write(dir.path().join(format!("{}.wasm", m.name)), m.wasm).unwrap();
            std::fs::write(dir.path().join(format!("{}.toml", m.name)), m.manifest_toml).unwrap();
        }
        Workspace { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        agad(args, self.dir.path())
    }

    fn sign(&self, module: &str) -> PathBuf {
        let out = self.run(&[
            "module",
            "sign",
            &format!("{module}.wasm"),
            "--manifest",
            &format!("{module}.toml"),
            "--key",
            "pub.secret",
            "--out",
            &format!("{module}.agad"),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        self.path(&format!("{module}.agad"))
    }
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn sign_then_verify_and_tampering_is_detected() {
    let ws = Workspace::new();
    let bundle = ws.sign("cpu-mem");
    let out = ws.run(&["module", "verify", "cpu-mem.agad", "--trust", "pub.pub"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OK") && text.contains("cpu-mem"), "{text}");
    // Dates as RFC 3339 UTC, sizes scaled, enums as their words.
    let valid = text.lines().find(|l| l.contains("valid")).unwrap();
    let dates: Vec<&str> = valid
        .split_whitespace()
        .skip(1)
        .filter(|w| *w != "to")
        .collect();
    assert_eq!(dates.len(), 2, "{text}");
    for d in dates {
        assert!(
            d.len() == 20 && d.ends_with('Z') && d.as_bytes()[10] == b'T',
            "{text}"
        );
    }
    assert!(
        text.contains("inspector, performance") || text.contains("inspector, "),
        "{text}"
    );
    assert!(text.contains("MiB of memory"), "{text}");
    assert!(
        !text.contains("Unix seconds") && !text.contains("Inspector"),
        "{text}"
    );

    let mut bytes = std::fs::read(&bundle).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x55;
    std::fs::write(&bundle, bytes).unwrap();
    let out = ws.run(&["module", "verify", "cpu-mem.agad", "--trust", "pub.pub"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("SHA-256"), "{}", stderr(&out));
}

#[test]
fn keygen_refuses_to_overwrite_a_key() {
    let ws = Workspace::new();
    let out = ws.run(&["module", "keygen", "--out", "pub"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[test]
fn sign_reports_manifest_errors_with_file_and_line() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path("bad.toml"),
        "name = \"x\"\nversion = \"0.1.0\"\nsequence = -1\n",
    )
    .unwrap();
    let out = ws.run(&[
        "module",
        "sign",
        "cpu-mem.wasm",
        "--manifest",
        "bad.toml",
        "--key",
        "pub.secret",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: bad.toml:3:12: "), "{err}");
}

/// A configuration schema that cannot be right is refused at signing,
/// pointing at the value.
#[test]
fn sign_refuses_a_bad_config_schema_with_file_line_and_column() {
    let ws = Workspace::new();
    let manifest = agad_modules::inspector("app-watch")
        .unwrap()
        .manifest_toml
        .replace(
            "[config.min_count]\ntype = \"integer\"\ndefault = 1\n",
            "[config.min_count]\ntype = \"integer\"\ndefault = \"one\"\n",
        );
    let line = manifest
        .lines()
        .position(|l| l == "default = \"one\"")
        .expect("the default was replaced")
        + 1;
    std::fs::write(ws.path("bad.toml"), manifest).unwrap();
    let out = ws.run(&[
        "module",
        "sign",
        "app-watch.wasm",
        "--manifest",
        "bad.toml",
        "--key",
        "pub.secret",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: bad.toml:{line}:11: config key `min_count`: default `one` is not a whole number (0 or more)"
        )
    );
}

/// A component that imports a capability its manifest does not declare is
/// refused at signing, not by every node it is sent to.
#[test]
fn sign_refuses_imports_outside_the_declared_capabilities() {
    let ws = Workspace::new();
    let manifest = agad_modules::inspector("if-health")
        .unwrap()
        .manifest_toml
        .replace(
            "capabilities = [\"os\", \"snmp\", \"state\", \"log\", \"clock\"]",
            "capabilities = [\"os\", \"state\", \"log\", \"clock\"]",
        );
    assert!(!manifest.contains("\"snmp\""));
    std::fs::write(ws.path("no-snmp.toml"), manifest).unwrap();
    let out = ws.run(&[
        "module",
        "sign",
        "if-health.wasm",
        "--manifest",
        "no-snmp.toml",
        "--key",
        "pub.secret",
        "--out",
        "if-health.agad",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("if-health.wasm: the component imports `agad:platform/snmp")
            && err.contains(
                "the `snmp` capability, which the manifest does not declare; add \"snmp\" to `capabilities` in no-snmp.toml"
            ),
        "{err}"
    );
    assert!(!ws.path("if-health.agad").exists(), "nothing signed");
    // Every built-in inspector's own manifest declares what it imports.
    for m in agad_modules::INSPECTORS {
        ws.sign(m.name);
    }
}

#[test]
fn node_run_prints_alarms_and_reports_as_json_lines() {
    let ws = Workspace::new();
    ws.sign("cpu-mem");
    // Memory in use is above 0% on any machine that runs this test.
    let out = ws.run(&[
        "node",
        "run",
        "--bundle",
        "cpu-mem.agad",
        "--trust",
        "pub.pub",
        "--data-dir",
        "data",
        "--config",
        "mem_percent=0",
        "--config",
        "period=200ms",
        "--config",
        "raise_after=1",
        "--config",
        "window_secs=1",
        "--for",
        "3s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let alarms: Vec<_> = lines.iter().filter(|l| l["type"] == "alarm").collect();
    let reports: Vec<_> = lines.iter().filter(|l| l["type"] == "report").collect();
    let mem_raises = alarms
        .iter()
        .filter(|a| a["raised"] == true && a["metric"] == "mem.used-percent")
        .count();
    assert_eq!(mem_raises, 1, "raised once, not on every tick: {lines:?}");
    assert!(!reports.is_empty(), "one report per window: {lines:?}");
    assert!(
        reports[0]["summaries"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );
}

/// The node compiles in a helper process (`agad node compile`), keeps the
/// artefact in its cache and loads it from there on the next run; the
/// module runs either way.
#[test]
fn the_node_compiles_in_a_helper_process_and_reuses_its_artefact() {
    let ws = Workspace::new();
    ws.sign("cpu-mem");
    let run = || {
        Command::new(AGAD)
            .args([
                "node",
                "run",
                "--bundle",
                "cpu-mem.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "data",
                "--config",
                "period=200ms",
                "--config",
                "window_secs=1",
                "--for",
                "2s",
            ])
            .env("AGAD_LOG", "info")
            .current_dir(ws.dir.path())
            .output()
            .unwrap()
    };
    let reports = |out: &Output| {
        json_lines(out)
            .iter()
            .filter(|l| l["type"] == "report")
            .count()
    };
    let first = run();
    assert!(first.status.success(), "{}", stderr(&first));
    let said = stderr(&first);
    assert!(
        said.lines()
            .any(|l| l.contains("compiled in a helper process") && l.contains("cpu-mem")),
        "{said}"
    );
    assert!(reports(&first) > 0, "{said}");
    let artefacts: Vec<_> = std::fs::read_dir(ws.path("data/compiled"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        artefacts.len() == 1 && artefacts[0].ends_with(".cwasm"),
        "{artefacts:?}"
    );

    let second = run();
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        !stderr(&second).contains("compiled in a helper process"),
        "loaded from the cache: {}",
        stderr(&second)
    );
    assert!(reports(&second) > 0, "{}", stderr(&second));

    // The helper itself: wasm in, artefact out; anything else refused
    // with the compiler's reason and a failing status.
    let mut helper = Command::new(AGAD)
        .args(["node", "compile"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    helper
        .stdin
        .take()
        .unwrap()
        .write_all(b"not a component")
        .unwrap();
    let out = helper.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("error"), "{}", stderr(&out));
}

#[test]
fn node_run_refuses_bad_input_with_one_clear_line() {
    let ws = Workspace::new();
    ws.sign("cpu-mem");
    std::fs::write(ws.path("junk.agad"), b"not a bundle").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "node",
                "run",
                "--bundle",
                "junk.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "d",
            ],
            "not an AGAD module bundle",
        ),
        (
            &[
                "node",
                "run",
                "--bundle",
                "missing.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "d",
            ],
            "cannot read missing.agad",
        ),
        (
            &["node", "run", "--bundle", "cpu-mem.agad", "--data-dir", "d"],
            "no trusted publisher key",
        ),
        (
            &[
                "node",
                "run",
                "--bundle",
                "cpu-mem.wasm",
                "--trust",
                "pub.pub",
                "--data-dir",
                "d",
            ],
            "not an AGAD module bundle",
        ),
        (
            &[
                "node",
                "run",
                "--bundle",
                "cpu-mem.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "d",
                "--config",
                "threshold=lots",
            ],
            "threshold",
        ),
        (
            &[
                "node",
                "run",
                "--bundle",
                "cpu-mem.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "d",
                "--config",
                "period=often",
            ],
            "period",
        ),
        (
            &[
                "node",
                "run",
                "--bundle",
                "cpu-mem.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "d",
                "--config",
                "nope:x=1",
            ],
            "no --bundle provides",
        ),
        (
            &["node", "run", "--bundle", "cpu-mem.agad", "--frobnicate"],
            "--frobnicate",
        ),
    ];
    for (args, expected) in cases {
        let out = ws.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with("error:"), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected `{expected}` in: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn a_bundle_signed_by_an_unknown_key_is_refused() {
    let ws = Workspace::new();
    ws.sign("cpu-mem");
    let out = ws.run(&["module", "keygen", "--out", "other"]);
    assert!(out.status.success());
    let out = ws.run(&[
        "node",
        "run",
        "--bundle",
        "cpu-mem.agad",
        "--trust",
        "other.pub",
        "--data-dir",
        "d",
        "--for",
        "1s",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not trust"), "{}", stderr(&out));
}

/// `agad node run` with a module asleep in a host call stops on SIGTERM (and
/// on Ctrl-C's SIGINT): the sleeping call neither keeps it alive nor makes
/// it ignore the signal.
#[test]
fn node_run_stops_on_sigterm_and_sigint_even_with_a_sleeping_module() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let ws = Workspace::new();
    std::fs::copy(
        agad_modules::test_guests::MISBEHAVE_WASM,
        ws.path("misbehave.wasm"),
    )
    .unwrap();
    std::fs::copy(
        agad_modules::test_guests::MISBEHAVE_MANIFEST,
        ws.path("misbehave.toml"),
    )
    .unwrap();
    ws.sign("misbehave");
    for signal in ["TERM", "INT"] {
        let mut child = Command::new(AGAD)
            .args([
                "node",
                "run",
                "--bundle",
                "misbehave.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "data",
                "--config",
                "mode=sleep",
                "--config",
                "period=100ms",
            ])
            .current_dir(ws.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A fault line means a tick slept past its deadline; the module is
        // restarted and asleep again (or about to be) when the signal comes.
        // (Other lines, such as a low-disk alarm on a crowded machine, may
        // come first.)
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let fault = loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "agad node run ended"
            );
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            if value["type"] == "fault" {
                break value;
            }
        };
        assert_eq!(fault["kind"], "timeout", "{fault}");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let exited = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        if exited.is_none() {
            let _ = child.kill();
        }
        let status = exited.unwrap_or_else(|| panic!("SIG{signal} did not stop `agad node run`"));
        assert!(status.success(), "SIG{signal}: {status:?}");
    }
}

/// `agad node run` with a module raising a million alarms per tick prints
/// no more than the module's budget, and one notice about the rest.
#[test]
fn node_run_cuts_an_alarm_flood_to_the_budget_and_says_so_once() {
    let ws = Workspace::new();
    std::fs::copy(
        agad_modules::test_guests::MISBEHAVE_WASM,
        ws.path("misbehave.wasm"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(agad_modules::test_guests::MISBEHAVE_MANIFEST)
        .unwrap()
        .replace(
            "max_memory_bytes = 16777216",
            "max_memory_bytes = 268435456",
        )
        .replace("max_time_per_call_ms = 500", "max_time_per_call_ms = 20000");
    std::fs::write(ws.path("misbehave.toml"), manifest).unwrap();
    ws.sign("misbehave");
    std::fs::write(ws.path("node.toml"), "alarms_per_minute = 30\n").unwrap();
    let out = ws.run(&[
        "node",
        "run",
        "--bundle",
        "misbehave.agad",
        "--trust",
        "pub.pub",
        "--node-config",
        "node.toml",
        "--data-dir",
        "data",
        "--config",
        "mode=flood",
        "--config",
        "period=500ms",
        "--for",
        "4s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let flood = lines.iter().filter(|l| l["key"] == "flood").count();
    // The burst of 30 and at most a few more from the refill (0.5 a second).
    assert!((30..=35).contains(&flood), "{flood} flood alarms");
    let notices: Vec<_> = lines
        .iter()
        .filter(|l| l["key"] == "agad.output-dropped")
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["raised"], true);
    assert!(lines.iter().all(|l| l["type"] != "fault"), "{lines:?}");
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `dir`, `dir` included.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            out.extend(tree(&entry.unwrap().path()));
        }
    }
    out
}

/// The node's data directory (outbox, state, compiled modules) is its
/// own: 0700, and every file in it 0600, even one made earlier with 0755.
#[test]
fn node_data_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    ws.sign("cpu-mem");
    std::fs::create_dir(ws.path("data")).unwrap();
    std::fs::set_permissions(ws.path("data"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = ws.run(&[
        "node",
        "run",
        "--bundle",
        "cpu-mem.agad",
        "--trust",
        "pub.pub",
        "--data-dir",
        "data",
        "--config",
        "period=100ms",
        "--for",
        "1s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = tree(&ws.path("data"));
    assert!(all.len() > 3, "a database and a compiled module: {all:?}");
    for path in all {
        let mode = mode_of(&path);
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
}

/// A file far larger than any bundle is refused by its size, before it is
/// read (a sparse file: nothing to read anyway, but the answer says why).
#[test]
fn an_oversized_bundle_file_is_refused_by_its_size() {
    let ws = Workspace::new();
    let file = std::fs::File::create(ws.path("big.agad")).unwrap();
    file.set_len(10 * 1024 * 1024 * 1024).unwrap();
    let out = ws.run(&["module", "verify", "big.agad", "--trust", "pub.pub"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("10737418240 bytes; a bundle is at most"),
        "{}",
        stderr(&out)
    );
}

/// A name that would forge a log line is refused when the manifest is
/// parsed (`module sign`) and when a bundle is published, before anything
/// is sent; the error never echoes it raw.
#[test]
fn module_names_with_control_characters_are_refused_at_sign_and_publish() {
    let ws = Workspace::new();
    let manifest = agad_modules::inspector("cpu-mem")
        .unwrap()
        .manifest_toml
        .replace(
            "name = \"cpu-mem\"",
            "name = \"cpu\\nINFO forged \\u001b[2J\"",
        );
    std::fs::write(ws.path("evil.toml"), manifest).unwrap();
    let out = ws.run(&[
        "module",
        "sign",
        "cpu-mem.wasm",
        "--manifest",
        "evil.toml",
        "--key",
        "pub.secret",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("module name may hold only"), "{err}");
    // The parser may quote the TOML source (escapes as written), never the
    // decoded name.
    assert!(
        !err.contains('\u{1b}') && !err.contains("\nINFO forged"),
        "{err}"
    );

    let key = agad_protocol::SecretKey::from_text(
        &std::fs::read_to_string(ws.path("pub.secret")).unwrap(),
    )
    .unwrap();
    let mut spec = agad_protocol::ManifestSpec::from_toml(
        agad_modules::inspector("cpu-mem").unwrap().manifest_toml,
    )
    .unwrap();
    spec.name = "cpu\nINFO forged \u{1b}[2J".into();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = agad_protocol::Bundle::sign(spec, b"\0asm".to_vec(), &key, now);
    std::fs::write(ws.path("evil.agad"), forged.to_bytes()).unwrap();
    let out = ws.run(&["module", "publish", "evil.agad", "--mor-dir", "no-mor-here"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("module name may hold only"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains("forged"), "{err}");
}

/// `agad node --help` offers the ticket from a file or the environment and
/// says why the flag is the last resort.
#[test]
fn node_help_prefers_a_ticket_file_or_the_environment() {
    let ws = Workspace::new();
    let out = ws.run(&["node", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--ticket-file"), "{help}");
    assert!(help.contains("AGAD_TICKET"), "{help}");
    assert!(
        help.contains("prefer --ticket-file or AGAD_TICKET"),
        "{help}"
    );
}

/// Unmounts a test's filesystem when the test ends, however it ends.
struct Unmount(PathBuf);

/// Mounts a 48 MiB tmpfs on `dir` (a disk the test can fill). Needs root:
/// without it the test fails and says so, it is never skipped.
fn small_disk(dir: &std::path::Path) -> Unmount {
    std::fs::create_dir(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        mounted.status.success(),
        "a full-disk test mounts a small tmpfs and needs root: run it as root (sudo), it cannot be skipped ({})",
        String::from_utf8_lossy(&mounted.stderr).trim()
    );
    Unmount(dir.to_owned())
}

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A node starts on a full disk: it gives its reserve back, opens its
/// databases, runs its modules, and raises the low-disk alarm. Needs root
/// (a small tmpfs is the full disk).
#[test]
fn a_node_starts_on_a_full_disk_and_raises_the_low_disk_alarm() {
    use std::io::Write;
    let ws = Workspace::new();
    ws.sign("cpu-mem");
    let disk = ws.path("disk");
    let _unmount = small_disk(&disk);
    std::fs::write(
        ws.path("node.toml"),
        "disk_reserve_bytes = 8388608\ndisk_low_free_bytes = 16777216\n",
    )
    .unwrap();
    let run = |how_long: &str| {
        ws.run(&[
            "node",
            "run",
            "--bundle",
            "cpu-mem.agad",
            "--trust",
            "pub.pub",
            "--node-config",
            "node.toml",
            "--data-dir",
            "disk/data",
            "--config",
            "mem_percent=0",
            "--config",
            "raise_after=1",
            "--config",
            "period=200ms",
            "--config",
            "window_secs=1",
            "--for",
            how_long,
        ])
    };
    let first = run("1s");
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(ws.path("disk/data/disk-reserve").exists());
    assert!(
        json_lines(&first)
            .iter()
            .all(|l| l["key"] != "agad.disk-low"),
        "plenty of room the first time"
    );

    // Fill the disk to the last byte.
    let mut filler = std::fs::File::create(disk.join("filler")).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    let small = [1u8; 512];
    while filler.write_all(&small).is_ok() {}
    drop(filler);

    let second = run("3s");
    assert!(second.status.success(), "{}", stderr(&second));
    let lines = json_lines(&second);
    // Its alarm is still raised from the first run (kept in its state), so
    // the sign of life is its one-second report.
    assert!(
        lines.iter().any(|l| l["module"] == "cpu-mem"),
        "its modules run: {lines:?}"
    );
    let low: Vec<_> = lines
        .iter()
        .filter(|l| l["key"] == "agad.disk-low")
        .collect();
    assert_eq!(low.len(), 1, "{lines:?}");
    assert_eq!(low[0]["raised"], true);
    assert!(
        !ws.path("disk/data/disk-reserve").exists(),
        "the reserve was given back"
    );
}

/// A node under a manager (here: an unreachable one, so everything waits
/// in the outbox) whose disk fills up while it runs raises the low-disk
/// alarm and still queues it durably. Needs root (a small tmpfs is the full
/// disk).
#[test]
fn a_managed_node_whose_disk_fills_queues_the_low_disk_alarm() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let ws = Workspace::new();
    for args in [
        &["pki", "init", "--dir", "pki"][..],
        &[
            "pki", "issue", "--ca-dir", "pki", "--role", "node", "--name", "n1", "--out", "pki",
        ][..],
    ] {
        let out = ws.run(args);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let disk = ws.path("disk");
    let _unmount = small_disk(&disk);
    std::fs::write(
        ws.path("node.toml"),
        "disk_reserve_bytes = 8388608\ndisk_low_free_bytes = 16777216\ndisk_check_every = \"200ms\"\n",
    )
    .unwrap();
    // Port 9 (discard): nothing answers, the node buffers.
    let mut node = Command::new(AGAD)
        .args([
            "node",
            "--dominio",
            "127.0.0.1:9",
            "--pki",
            "pki",
            "--name",
            "n1",
            "--trust",
            "pub.pub",
            "--node-config",
            "node.toml",
            "--data-dir",
            "disk/data",
        ])
        .env("AGAD_LOG", "info")
        .current_dir(ws.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(node.stderr.take().unwrap());
    let mut line = String::new();
    // Started: its databases are open.
    while !line.contains("managed by") {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "the node exited");
    }
    let mut filler = std::fs::File::create(disk.join("filler")).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    let small = [1u8; 512];
    while filler.write_all(&small).is_ok() {}
    drop(filler);
    let mut seen = Vec::new();
    let queued = loop {
        line.clear();
        if log.read_line(&mut line).unwrap() == 0 {
            break false;
        }
        seen.push(line.clone());
        // Logged only once the alarm is on disk.
        if line.contains("alarm queued") && line.contains("id=n1/agad/") {
            break true;
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let status = node.wait().unwrap();
    assert!(queued, "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("bytes left on the filesystem")),
        "{seen:?}"
    );
    assert!(status.success(), "{status:?}");
}

/// The example rules of the repository, checked against their catalog.
fn kb_examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../knowledge-base/examples")
}

#[test]
fn kb_check_prints_every_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let examples = kb_examples();
    let catalog = examples.join("catalog.toml");
    let catalog = catalog.to_str().unwrap();

    let out = agad(
        &[
            "kb",
            "check",
            examples.join("rules").to_str().unwrap(),
            "--catalog",
            catalog,
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "OK: 5 rule(s), 1 schedule(s), 2 group(s)");

    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/cpu.toml"),
        "[[rule]]\nname = \"cpu\"\n[rule.match]\nkey = \"cpu.total\"\nseverity = \"loud\"\n\
         [rule.diagnose]\nspecialist = \"top-cpus\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules/disk.toml"),
        "[[rule]]\nname = \"disk\"\n[rule.match]\nkey = \"fs.used:*\"\n\
         [rule.diagnose]\nspecialist = \"disk-usage\"\nargs = { path = \"{subjet}\" }\n",
    )
    .unwrap();
    let out = agad(&["kb", "check", "rules", "--catalog", catalog], dir.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(
        lines[0].starts_with("rules/cpu.toml:5:12: `loud` is not a severity; expected info"),
        "{err}"
    );
    assert!(
        lines[1].starts_with(
            "rules/cpu.toml:7:14: unknown specialist `top-cpus`; known specialists: `disk-usage`"
        ),
        "{err}"
    );
    assert!(
        lines[2]
            .starts_with("rules/disk.toml:7:17: argument `path`: unknown placeholder `{subjet}`"),
        "{err}"
    );
    assert_eq!(
        lines[3],
        "error: 3 error(s); the rule set is refused as a whole"
    );
}

/// Without `--catalog`, the built-in inspectors' declared keys and
/// metrics (`[emits]`) and the runtime's own alarms are known.
#[test]
fn kb_check_knows_the_builtin_inspectors_emits_and_the_runtime_alarms() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let rule = |key: &str, metric: &str, module: &str| {
        format!(
            "[[rule]]\nname = \"r\"\n[rule.match]\nkey = \"{key}\"\nmetric = \"{metric}\"\nmodule = \"{module}\"\n[rule.stop]\nmodule = \"if-health\"\n"
        )
    };
    for (key, metric, module) in [
        ("if.link:eth0", "if.oper-up", "if-health"),
        ("fs.used:*", "fs.used-percent", "disk-space"),
        ("proc.running:sshd", "proc.count", "app-watch"),
        ("agad.module-crash-loop", "module.restarts", "agad"),
    ] {
        std::fs::write(dir.path().join("rules/r.toml"), rule(key, metric, module)).unwrap();
        let out = agad(&["kb", "check", "rules"], dir.path());
        assert!(out.status.success(), "{key}: {}", stderr(&out));
    }
    std::fs::write(
        dir.path().join("rules/r.toml"),
        rule("if.lnk:eth0", "if.oper-down", "if-health"),
    )
    .unwrap();
    let out = agad(&["kb", "check", "rules"], dir.path());
    let err = stderr(&out);
    assert!(
        err.contains("rules/r.toml:4:7: unknown alarm key `if.lnk:eth0`")
            && err.contains("rules/r.toml:5:10: unknown metric `if.oper-down`"),
        "{err}"
    );
}

#[test]
fn kb_test_says_which_rule_matches_and_why_the_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let examples = kb_examples();
    // Three load alarms on web-1 within 30 minutes (2026-11-27, a Friday,
    // at noon UTC), then a CPU alarm: JSON lines as `agad alarms --json`
    // prints them, fields left out take defaults.
    let noon: u64 = 1_795_780_800_000;
    let mut lines = String::new();
    for i in 0..3 {
        lines.push_str(&format!(
            "{{\"node\": \"web-1\", \"module\": \"cpu-mem\", \"area\": \"performance\", \"key\": \"load.per-core\", \"metric\": \"load.per-core\", \"time_ms\": {}}}\n",
            noon + i * 600_000
        ));
    }
    lines.push_str(&format!(
        "{{\"node\": \"web-1\", \"module\": \"cpu-mem\", \"area\": \"performance\", \"key\": \"cpu.total\", \"severity\": \"critical\", \"time_ms\": {noon}}}\n"
    ));
    std::fs::write(dir.path().join("alarms.json"), lines).unwrap();
    let out = agad(
        &[
            "kb",
            "test",
            examples.join("rules").to_str().unwrap(),
            "alarms.json",
            "--catalog",
            examples.join("catalog.toml").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let runs: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(runs.len(), 4, "{text}");
    assert!(runs[0].contains("no rule matches"), "{text}");
    assert!(
        runs[1].contains("load-keeps-coming (")
            && runs[1].contains("repeat: fired 2 time(s) within 30m on `web-1`; needs 3"),
        "{text}"
    );
    assert!(runs[2].contains("MATCH load-keeps-coming ("), "{text}");
    assert!(
        runs[2].contains("start cpu-mem(period=5s, raise_after=1) on the alarm's node for 1h"),
        "{text}"
    );
    assert!(
        runs[2].contains("  - fired 3 time(s) within 30m (needs 3)"),
        "{text}"
    );
    assert!(runs[3].contains("MATCH web-cpu ("), "{text}");
    assert!(
        runs[3].contains("diagnose top-cpu(count=5, sample=2s) within 20s"),
        "{text}"
    );
    assert!(
        runs[3].contains("  - node `web-1` is in group web"),
        "{text}"
    );
}

#[test]
fn help_documents_logging_roles_and_positional_arguments_and_errors_are_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let help = |args: &[&str]| {
        let out = agad(args, dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&["--help"]);
    assert!(
        top.contains("AGAD_LOG") && top.contains("RUST_LOG"),
        "{top}"
    );
    let issue = help(&["pki", "issue", "--help"]);
    assert!(
        issue.contains("[possible values: node, dominio, mor]") && issue.contains("top manager"),
        "{issue}"
    );
    for args in [
        &["topology", "apply", "--help"][..],
        &["module", "publish", "--help"],
        &["module", "verify", "--help"],
        &["enroll", "approve", "--help"],
    ] {
        let text = help(args);
        let arguments = text
            .split("Arguments:")
            .nth(1)
            .unwrap_or_else(|| panic!("{text}"));
        let first = arguments.lines().nth(1).unwrap();
        assert!(
            first
                .trim()
                .split_once("  ")
                .is_some_and(|(_, what)| !what.trim().is_empty()),
            "described: {text}"
        );
    }
    // A missing certificate: the cause once, not repeated after itself.
    let out = agad(
        &[
            "mor",
            "--pki",
            "nopki",
            "--name",
            "mor",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "m",
            "--trust",
            "k.pub",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
