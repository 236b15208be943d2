//! `agad demo` as an operator watching the guardian uses it: a real demo
//! (top manager, two domain managers, three nodes as separate processes)
//! in which one node is killed with `kill -9`; the demo says so and keeps
//! the rest running, the node's restart script brings it back, it
//! reconnects, and Ctrl-C still stops everything, the restarted node too.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGAD: &str = env!("CARGO_BIN_EXE_agad");
/// Every process compiles its modules on a shared CI machine.
const PATIENCE: Duration = Duration::from_secs(180);

/// The demo, killed on drop if the test fails half-way.
struct Demo {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Demo {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the demo printed a line for which `find` says something.
    fn wait_for<T>(&mut self, what: &str, mut find: impl FnMut(&str) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            let text = self.text();
            if let Some(found) = text.lines().find_map(&mut find) {
                return found;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the demo exited ({status}) before {what}:\n{text}");
            }
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {what}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = signal("INT", self.child.id());
            let _ = self.child.wait();
        }
    }
}

fn signal(name: &str, pid: u32) -> std::process::ExitStatus {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
}

/// Whether `node` is connected, as `agad status --json` of the demo's top
/// manager says.
fn connected(dir: &Path, node: &str) -> bool {
    let out = Command::new(AGAD)
        .args(["status", "--json"])
        .env("AGAD_MOR_DIR", dir.join("mor"))
        .output()
        .unwrap();
    if !out.status.success() {
        return false;
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["components"].as_array().into_iter().flatten())
        .find(|c| c["component"] == serde_json::json!({"node": {"name": node}}))
        .is_some_and(|c| c["state"].get("connected").is_some())
}

/// Whether a case of `rule` about `node` is diagnosed in the demo's BIG
/// (`agad alarms --json`), with top-cpu's result.
fn diagnosed(dir: &Path, node: &str, rule: &str) -> bool {
    let out = Command::new(AGAD)
        .args(["alarms", "--json", "--node", node])
        .env("AGAD_MOR_DIR", dir.join("mor"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .flat_map(|a| a["cases"].as_array().cloned().unwrap_or_default())
        .any(|c| {
            c["rule"] == rule
                && c["state"] == "diagnosed"
                && c["results"][0][1]["specialist"] == "top-cpu"
        })
}

fn wait_until(what: &str, demo: &Demo, check: impl FnMut() -> bool) {
    wait_until_explained(what, check, || demo.text());
}

/// Waits until `check` holds; on timeout fails with what `explain` says.
fn wait_until_explained(what: &str, mut check: impl FnMut() -> bool, explain: impl Fn() -> String) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < PATIENCE,
            "timed out waiting for {what}:\n{}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What the demo printed, lab-1's alarms and cases in BIG and the ends of
/// lab-1's and its station's logs: why a diagnosis did not come.
fn lab_story(demo: &Demo, dir: &Path) -> String {
    let alarms = Command::new(AGAD)
        .args(["alarms", "--json", "--node", "lab-1"])
        .env("AGAD_MOR_DIR", dir.join("mor"))
        .output()
        .unwrap();
    let tail = |name: &str| {
        let log = std::fs::read_to_string(dir.join(format!("logs/{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    format!(
        "{}\n--- agad alarms --json --node lab-1:\n{}{}\n--- lab-1.log (end):\n{}\n--- station-lab.log (end):\n{}",
        demo.text(),
        String::from_utf8_lossy(&alarms.stdout),
        String::from_utf8_lossy(&alarms.stderr),
        tail("lab-1"),
        tail("station-lab"),
    )
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

#[test]
fn the_demo_outlives_a_killed_node_and_its_restart_script_brings_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let stderr = tmp.path().join("demo.stderr");
    let child = Command::new(AGAD)
        .args(["demo", "--dir"])
        .arg(&dir)
        .args(["--for", "10m"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut demo = Demo { child, stderr };

    let pid: u32 = demo.wait_for("how to kill a node", |l| {
        let rest = l.trim().strip_prefix("kill -9 ")?;
        let (pid, comment) = rest.split_once('#')?;
        (comment.trim() == "kill node campus-1").then(|| pid.trim().parse().unwrap())
    });
    let script = dir.join("restart-campus-1.sh");
    demo.wait_for("the restart script's path", |l| {
        l.contains(&format!("sh {}", script.display()))
            .then_some(())
    });
    demo.wait_for("Ctrl-C stops everything", |l| {
        l.contains("Ctrl-C stops everything").then_some(())
    });
    assert!(dir.join("restart-station-campus.sh").exists());
    wait_until("campus-1 connected", &demo, || connected(&dir, "campus-1"));
    // The web port it prints answers its login with the same status.
    let (web, password) = demo.wait_for("the web page's address", |l| {
        let rest = l.split_once("In a browser: http://")?.1;
        let (address, rest) = rest.split_once("/ (log in as `demo`, password `")?;
        Some((address.to_owned(), rest.split_once('`')?.0.to_owned()))
    });
    let token = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("demo:{password}"))
    };
    let body = ureq::get(&format!("http://{web}/api/v1/status"))
        .header("Authorization", &format!("Basic {token}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        status["nodes"].as_array().is_some_and(|n| n.len() == 3),
        "{status}"
    );

    assert!(signal("9", pid).success());
    demo.wait_for("the demo to report campus-1's exit", |l| {
        (l.contains(&format!("node campus-1 (pid {pid}) exited"))
            && l.contains("campus-1.log")
            && l.contains("restart-campus-1.sh"))
        .then_some(())
    });
    wait_until("campus-1 shown as not connected", &demo, || {
        !connected(&dir, "campus-1")
    });
    // Everything else keeps running.
    assert!(demo.child.try_wait().unwrap().is_none(), "{}", demo.text());
    assert!(connected(&dir, "campus-2") && connected(&dir, "lab-1"));
    // The demo's knowledge base diagnosed lab-1's missing process there.
    wait_until_explained(
        "lab-1's missing process diagnosed",
        || diagnosed(&dir, "lab-1", "process-missing"),
        || lab_story(&demo, &dir),
    );

    let out = Command::new("sh").arg(&script).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let restarted: u32 = said
        .split("pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the script said: {said}"));
    demo.wait_for("the demo to see campus-1 again", |l| {
        l.contains(&format!("node campus-1 runs again (pid {restarted}"))
            .then_some(())
    });
    wait_until("the restarted campus-1 to reconnect", &demo, || {
        connected(&dir, "campus-1")
    });
    let log = std::fs::read_to_string(dir.join("logs/campus-1.log")).unwrap();
    assert!(
        log.matches("connected").count() >= 2,
        "both runs log to the same file:\n{log}"
    );

    // Ctrl-C (SIGINT) stops everything, the restarted node too.
    assert!(signal("INT", demo.child.id()).success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < PATIENCE, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}:\n{}", demo.text());
    wait_until("the restarted campus-1 to stop", &demo, || {
        !alive(restarted)
    });
}

/// Starts `agad demo --dir DIR ARGS`, its stderr in `stderr`.
fn start_demo(dir: &Path, stderr: &Path, args: &[&str]) -> Demo {
    let child = Command::new(AGAD)
        .args(["demo", "--dir"])
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    Demo {
        child,
        stderr: stderr.to_owned(),
    }
}

/// The ids and times of lab-1's alarms in the demo's BIG.
fn lab_alarms(dir: &Path) -> Vec<(String, u64)> {
    let out = Command::new(AGAD)
        .args(["alarms", "--json", "--node", "lab-1"])
        .env("AGAD_MOR_DIR", dir.join("mor"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["time_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn stop(mut demo: Demo) {
    assert!(signal("INT", demo.child.id()).success());
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "{status}:\n{}", demo.text());
}

#[test]
fn the_demo_prints_real_commands_and_a_second_run_goes_on_from_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut demo = start_demo(&dir, &tmp.path().join("first.stderr"), &["--for", "10m"]);
    demo.wait_for("Ctrl-C stops everything", |l| {
        l.contains("Ctrl-C stops everything").then_some(())
    });
    wait_until("lab-1's alarm in BIG", &demo, || {
        !lab_alarms(&dir).is_empty()
    });
    let text = demo.text();
    // Every command with its real values: no placeholders, the tickets
    // made by the command shown and passed as files.
    let d = dir.display();
    for line in [
        format!("#   export AGAD_MOR_DIR={d}/mor"),
        format!("#   agad enroll ticket station-campus > {d}/station-campus.ticket"),
        format!("#   agad enroll ticket lab-1 > {d}/lab-1.ticket"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("#   agad node ")
            && l.contains("--name lab-1 ")
            && l.contains(&format!("--ticket-file {d}/lab-1.ticket"))),
        "{text}"
    );
    assert!(!text.contains("<from") && !text.contains("<...>"), "{text}");
    let ticket = std::fs::read_to_string(dir.join("lab-1.ticket")).unwrap();
    assert_eq!(ticket.trim().len(), 32, "the ticket itself");
    // Read while the top manager runs (it answers through its socket).
    let before = lab_alarms(&dir);
    assert!(!before.is_empty());
    stop(demo);

    // Again in the same folder: it says it goes on, and BIG kept the
    // first run's alarms.
    let mut demo = start_demo(&dir, &tmp.path().join("second.stderr"), &["--for", "10m"]);
    demo.wait_for("Ctrl-C stops everything", |l| {
        l.contains("Ctrl-C stops everything").then_some(())
    });
    let text = demo.text();
    assert!(
        text.starts_with(&format!("Going on from the previous run in {d}")),
        "{text}"
    );
    assert!(
        !text.contains("agad enroll ticket"),
        "the same identities need no new tickets:\n{text}"
    );
    let after = lab_alarms(&dir);
    for a in &before {
        assert!(after.contains(a), "{a:?} kept: {after:?}");
    }
    wait_until("lab-1 connected again", &demo, || connected(&dir, "lab-1"));
    stop(demo);

    // `--fresh` says so, and starts from empty bases.
    let mut demo = start_demo(
        &dir,
        &tmp.path().join("third.stderr"),
        &["--fresh", "--for", "10m"],
    );
    demo.wait_for("Ctrl-C stops everything", |l| {
        l.contains("Ctrl-C stops everything").then_some(())
    });
    assert!(
        demo.text().starts_with("Starting afresh (--fresh)"),
        "{}",
        demo.text()
    );
    let fresh = lab_alarms(&dir);
    assert!(
        before.iter().all(|a| !fresh.contains(a)),
        "the old history is gone: {fresh:?}"
    );
    stop(demo);
}
