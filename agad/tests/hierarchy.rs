//! The managed hierarchy end to end: a real top manager, domain-manager
//! stations and nodes as separate `agad` processes over loopback with real
//! mutual TLS (certificates from `agad pki`), running the real wasm
//! inspectors built from this repository.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const AGAD: &str = env!("CARGO_BIN_EXE_agad");

/// Generous: CI machines are shared and every process compiles its modules.
const PATIENCE: Duration = Duration::from_secs(90);

/// Waits until `check` returns `Some`, or fails the test with `what`.
fn wait_for<T>(what: &str, deployment: &Deployment, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > PATIENCE {
            panic!("timed out waiting for {what}\n{}", deployment.logs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One deployment in a temp folder: CA, publisher key, processes.
struct Deployment {
    dir: tempfile::TempDir,
    mor_addr: String,
    /// name → (command line, running process, how many times started)
    processes: HashMap<String, (Vec<String>, Option<Child>, u32)>,
}

impl Deployment {
    /// A CA, a publisher key and a running top manager.
    fn start() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Deployment {
            dir,
            mor_addr: free_port(),
            processes: HashMap::new(),
        };
        d.ok(&["pki", "init", "--dir", "pki"]);
        d.ok(&["module", "keygen", "--out", "publisher"]);
        d.issue("mor", "mor");
        let addr = d.mor_addr.clone();
        d.spawn(
            "mor",
            &[
                "mor",
                "--pki",
                "pki",
                "--name",
                "mor",
                "--listen",
                &addr,
                "--data-dir",
                "mor",
                "--trust",
                "publisher.pub",
            ],
        );
        wait_for("the top manager's admin socket", &d, || {
            d.path("mor/admin.sock").exists().then_some(())
        });
        d
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(AGAD)
            .args(args)
            .current_dir(self.dir.path())
            .env("AGAD_MOR_DIR", self.path("mor"))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "agad {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn issue(&self, role: &str, name: &str) {
        self.ok(&[
            "pki", "issue", "--ca-dir", "pki", "--role", role, "--name", name, "--out", "pki",
        ]);
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.processes.insert(name.to_owned(), (args, None, 0));
        self.restart(name);
    }

    /// Starts `name` again with its command line; each run logs to its own file.
    fn restart(&mut self, name: &str) {
        let dir = self.dir.path().to_owned();
        let (args, child, runs) = self.processes.get_mut(name).unwrap();
        assert!(child.is_none(), "{name} is still running");
        *runs += 1;
        let log = std::fs::File::create(dir.join(format!("{name}-{runs}.log"))).unwrap();
        *child = Some(
            Command::new(AGAD)
                .args(args.iter())
                .current_dir(&dir)
                .env("AGAD_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn kill9(&mut self, name: &str) {
        let mut child = self.processes.get_mut(name).unwrap().1.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    fn stop(&mut self, name: &str) {
        let mut child = self.processes.get_mut(name).unwrap().1.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
    }

    /// Every log of `name`, oldest run first.
    fn log(&self, name: &str) -> String {
        let runs = self.processes.get(name).map_or(0, |p| p.2);
        (1..=runs)
            .map(|r| {
                std::fs::read_to_string(self.path(&format!("{name}-{r}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("")
    }

    fn logs(&self) -> String {
        let mut names: Vec<&String> = self.processes.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let log = self.log(n);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- {n} (last lines)\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Signs and publishes a module given as wasm bytes and manifest text.
    fn publish(&self, name: &str, wasm: &[u8], manifest: &str) {
        std::fs::write(self.path(&format!("{name}.wasm")), wasm).unwrap();
        std::fs::write(self.path(&format!("{name}.toml")), manifest).unwrap();
        let bundle = format!("{name}.agad");
        self.ok(&[
            "module",
            "sign",
            &format!("{name}.wasm"),
            "--manifest",
            &format!("{name}.toml"),
            "--key",
            "publisher.secret",
            "--out",
            &bundle,
        ]);
        self.ok(&["module", "publish", &bundle]);
    }

    fn publish_inspector(&self, name: &str) {
        let m = agad_modules::inspector(name).unwrap();
        self.publish(name, m.wasm, m.manifest_toml);
    }

    fn apply(&self, topology: &str) -> String {
        std::fs::write(self.path("topology.toml"), topology).unwrap();
        self.ok(&["topology", "apply", "topology.toml"])
    }

    fn ticket(&self, name: &str) -> String {
        self.ok(&["enroll", "ticket", name])
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A station with a fresh certificate and ticket; returns its node address.
    fn start_station(&mut self, name: &str) -> String {
        let mor = self.mor_addr.clone();
        self.start_station_under(name, &mor)
    }

    /// A station whose parent manager listens at `parent`.
    fn start_station_under(&mut self, name: &str, parent: &str) -> String {
        self.issue("dominio", name);
        let ticket = self.ticket(name);
        let listen = free_port();
        let mor = parent.to_owned();
        self.spawn(
            name,
            &[
                "dominio",
                "--pki",
                "pki",
                "--name",
                name,
                "--mor",
                &mor,
                "--listen",
                &listen,
                "--data-dir",
                name,
                "--trust",
                "publisher.pub",
                "--ticket",
                &ticket,
                "--keepalive",
                "1s",
            ],
        );
        self.activate(name);
        listen
    }

    fn start_node(&mut self, name: &str, dominio: &str) {
        self.issue("node", name);
        let ticket = self.ticket(name);
        self.spawn(
            name,
            &[
                "node",
                "--dominio",
                dominio,
                "--pki",
                "pki",
                "--name",
                name,
                "--trust",
                "publisher.pub",
                "--data-dir",
                name,
                "--ticket",
                &ticket,
                "--keepalive",
                "1s",
            ],
        );
        self.activate(name);
    }

    /// Waits until the ticket approved `name`, then activates it.
    fn activate(&self, name: &str) {
        wait_for(&format!("{name} to enroll"), self, || {
            let list = self.ok(&["enroll", "list"]);
            list.lines()
                .any(|l| l.split_whitespace().next() == Some(name) && l.contains("inactive"))
                .then_some(())
        });
        self.ok(&["enroll", "activate", name]);
    }

    /// Restarts the top manager (after a kill) and reads BIG as it found it.
    fn alarms_after_restart_of_mor(&mut self) -> Vec<Value> {
        self.restart("mor");
        wait_for("the restarted top manager", self, || {
            self.run(&["status"]).status.success().then_some(())
        });
        self.alarms()
    }

    fn alarms(&self) -> Vec<Value> {
        json_lines(&self.ok(&["alarms", "--json"]))
    }

    fn reports(&self) -> Vec<Value> {
        json_lines(&self.ok(&["report", "--json", "--since", "1h"]))
    }

    /// BICD's alarm count as the serving station reports it in its keep-alive.
    fn bicd_alarms(&self) -> Option<usize> {
        let status = self.ok(&["status"]);
        let line = status.lines().find(|l| l.contains("bicd"))?;
        let count = line.split("alarms=").nth(1)?.split_whitespace().next()?;
        count.parse().ok()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, child, _) in self.processes.values_mut() {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
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

/// Ids of alarms a node logged as durably queued (every run of it).
fn queued_ids(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains("alarm queued"))
        .filter_map(|l| {
            l.split("id=")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .collect()
}

fn ids(alarms: &[Value]) -> BTreeSet<String> {
    alarms
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_alarm_and_reports_travel_from_node_to_top_manager() {
    let mut d = Deployment::start();
    d.publish_inspector("cpu-mem");
    // Memory in use is certainly above 0.1 %: the alarm must fire.
    let diff = d.apply(&one_domain(
        "s1",
        &["n1"],
        "cpu-mem",
        "period = \"500ms\"\nwindow_secs = 1\nmem_percent = 0.1",
    ));
    assert!(
        diff.contains("+ node n1") && diff.contains("applied"),
        "{diff}"
    );
    let addr = d.start_station("s1");
    d.start_node("n1", &addr);

    let alarm = wait_for("the memory alarm in BIG", &d, || {
        d.alarms()
            .into_iter()
            .find(|a| a["node"] == "n1" && a["metric"] == "mem.used-percent" && a["raised"] == true)
    });
    assert_eq!(alarm["module"], "cpu-mem");
    // Acknowledged once: BICD and BIG hold the same alarms, each once, and
    // they are exactly the ones the node queued.
    wait_for("BICD and BIG to agree", &d, || {
        let big = d.alarms();
        (d.bicd_alarms() == Some(big.len()) && queued_ids(&d.log("n1")) == ids(&big)).then_some(())
    });
    let raised_mem = d
        .alarms()
        .iter()
        .filter(|a| a["metric"] == "mem.used-percent" && a["raised"] == true)
        .count();
    assert_eq!(raised_mem, 1, "hysteresis: one raise, not one per tick");

    let row = wait_for("a consolidated report row for n1", &d, || {
        d.reports()
            .into_iter()
            .find(|r| r["node"] == "n1" && r["summary"]["metric"] == "mem.used-percent")
    });
    assert_eq!(row["domain"], "d1");
    assert!(row["summary"]["count"].as_u64().unwrap() >= 1);
    let table = d.ok(&["report", "--node", "n1"]);
    assert!(table.contains("mem.used-percent"), "{table}");
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let mut d = Deployment::start();
    d.publish_inspector("cpu-mem");
    d.apply(&one_domain(
        "s1",
        &["n1", "rogue"],
        "cpu-mem",
        "period = \"1s\"",
    ));
    let addr = d.start_station("s1");
    // Same name layout, other CA: TLS refuses it before any frame.
    d.ok(&["pki", "init", "--dir", "other-ca"]);
    d.ok(&[
        "pki", "issue", "--ca-dir", "other-ca", "--role", "node", "--name", "rogue", "--out",
        "other-ca",
    ]);
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
    );
    wait_for("the station to refuse the rogue handshake", &d, || {
        d.log("s1").contains("connection refused").then_some(())
    });
    let list = d.ok(&["enroll", "list"]);
    assert!(
        !list.contains("rogue"),
        "a refused peer never reaches enrollment: {list}"
    );
    // Garbage on the port closes only that connection.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0]);
    }
    d.start_node("n1", &addr);
    wait_for("n1 to report through the same station", &d, || {
        d.log("s1").contains("node connected").then_some(())
    });
}

#[test]
fn a_redeploy_sends_only_hashes_the_node_already_has() {
    let mut d = Deployment::start();
    d.publish_inspector("cpu-mem");
    d.publish_inspector("disk-space");
    let mut topology = one_domain("s1", &["n1"], "cpu-mem", "period = \"1s\"");
    topology += "\n[[assign]]\nmodule = \"disk-space\"\nnodes = [\"n1\"]\n[assign.config]\nperiod = \"1s\"\n";
    d.apply(&topology);
    let addr = d.start_station("s1");
    d.start_node("n1", &addr);
    wait_for("both modules deployed with their bytes", &d, || {
        (d.log("n1").matches("deployment with module bytes").count() == 2).then_some(())
    });
    d.stop("n1");
    let first = d.log("n1");
    d.restart("n1");
    wait_for("the redeploy by hash", &d, || {
        let second = d.log("n1")[first.len()..].to_owned();
        (second.matches("deployment by hash").count() == 2).then_some(second)
    });
    let second = d.log("n1")[first.len()..].to_owned();
    assert!(!second.contains("deployment with module bytes"), "{second}");
}

#[test]
fn kill_9_of_a_domain_manager_and_a_node_loses_no_alarm_and_duplicates_none() {
    let mut d = Deployment::start();
    use agad_modules::test_guests::{MISBEHAVE_MANIFEST, MISBEHAVE_WASM};
    d.publish(
        "misbehave",
        &std::fs::read(MISBEHAVE_WASM).unwrap(),
        &std::fs::read_to_string(MISBEHAVE_MANIFEST).unwrap(),
    );
    d.apply(&one_domain(
        "s1",
        &["n1"],
        "misbehave",
        "mode = \"alarm-every-tick\"\nperiod = \"200ms\"",
    ));
    let addr = d.start_station("s1");
    d.start_node("n1", &addr);
    let count = |d: &Deployment| d.alarms().len();
    wait_for("alarm traffic", &d, || (count(&d) >= 10).then_some(()));

    // The domain manager dies mid-traffic; the node buffers meanwhile.
    d.kill9("s1");
    let in_big_at_kill = ids(&d.alarms());
    std::thread::sleep(Duration::from_secs(2));
    d.restart("s1");
    wait_for("traffic through the restarted station", &d, || {
        (count(&d) > in_big_at_kill.len() + 10).then_some(())
    });

    // The top manager dies mid-traffic; the station buffers meanwhile.
    d.kill9("mor");
    let in_big_at_mor_kill = ids(&d.alarms_after_restart_of_mor());
    assert!(in_big_at_kill.is_subset(&in_big_at_mor_kill));
    wait_for("traffic through the restarted top manager", &d, || {
        (count(&d) > in_big_at_mor_kill.len() + 10).then_some(())
    });

    // The node dies mid-traffic, with whatever it had queued.
    d.kill9("n1");
    d.restart("n1");
    let before = count(&d);
    wait_for("traffic from the restarted node", &d, || {
        (count(&d) > before + 10).then_some(())
    });
    d.stop("n1");

    wait_for(
        "every queued alarm in BIG, once, and BICD = BIG",
        &d,
        || {
            let big = d.alarms();
            let queued = queued_ids(&d.log("n1"));
            (queued.is_subset(&ids(&big)) && d.bicd_alarms() == Some(big.len())).then_some(())
        },
    );
    let big = d.alarms();
    let big_ids = ids(&big);
    assert_eq!(big_ids.len(), big.len(), "no duplicates in BIG");
    assert!(
        in_big_at_kill.is_subset(&big_ids),
        "what BIG held before the kills is still there"
    );
    // Only an alarm queued in the instant before the kill, not yet logged,
    // may be in BIG without a log line.
    let unlogged = big_ids.difference(&queued_ids(&d.log("n1"))).count();
    assert!(
        unlogged <= 1,
        "{unlogged} alarms in BIG that the node never queued"
    );
}

#[test]
fn an_invalid_topology_is_refused_whole_with_file_and_line() {
    let d = Deployment::start();
    d.publish_inspector("cpu-mem");
    d.apply(&one_domain("s1", &["n1"], "cpu-mem", "period = \"1s\""));
    let shown = d.ok(&["topology", "show"]);

    // Line 9 names a domain that does not exist; line 5 alone would be fine.
    let bad = "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n[[node]]\nname = \"n2\"\ndomain = \"d1\"\n[[node]]\nname = \"n3\"\ndomain = \"nowhere\"\n";
    std::fs::write(d.path("bad.toml"), bad).unwrap();
    let out = d.run(&["topology", "apply", "bad.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:10:") && err.contains("nowhere"),
        "{err}"
    );
    assert_eq!(d.ok(&["topology", "show"]), shown, "nothing half-applied");

    // A dry run shows the difference and changes nothing.
    let more = one_domain("s1", &["n1", "n2"], "cpu-mem", "period = \"1s\"");
    std::fs::write(d.path("more.toml"), more).unwrap();
    let diff = d.ok(&["topology", "apply", "more.toml", "--dry-run"]);
    assert!(
        diff.contains("+ node n2") && diff.contains("not applied"),
        "{diff}"
    );
    assert_eq!(d.ok(&["topology", "show"]), shown);
}

#[test]
fn a_sub_domain_manager_is_activated_and_relayed_by_its_parent() {
    let mut d = Deployment::start();
    d.publish_inspector("cpu-mem");
    let topology = "[[domain]]\nname = \"campus\"\nstations = [\"s1\"]\nreport_window = \"2s\"\n\n\
        [[domain]]\nname = \"lab\"\nparent = \"campus\"\nstations = [\"s2\"]\nreport_window = \"2s\"\n\n\
        [[node]]\nname = \"n2\"\ndomain = \"lab\"\n\n\
        [[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nperiod = \"500ms\"\nwindow_secs = 1\nmem_percent = 0.1\n";
    d.apply(topology);
    let campus = d.start_station("s1");
    // Four levels: top manager -> campus manager -> lab manager -> node.
    let lab = d.start_station_under("s2", &campus);
    d.start_node("n2", &lab);
    wait_for(
        "n2's alarm in BIG, relayed by two domain managers",
        &d,
        || {
            d.alarms()
                .into_iter()
                .find(|a| a["node"] == "n2" && a["raised"] == true)
        },
    );
    wait_for("the lab domain's report in BIG", &d, || {
        d.reports()
            .into_iter()
            .find(|r| r["domain"] == "lab" && r["node"] == "n2")
    });
    let status = d.ok(&["status"]);
    assert!(
        status.contains("subdomain:lab") && status.contains("served by s2"),
        "{status}"
    );
}

#[test]
fn a_node_without_a_ticket_waits_for_approval_then_activation() {
    let mut d = Deployment::start();
    d.publish_inspector("cpu-mem");
    d.apply(&one_domain("s1", &["n1"], "cpu-mem", "period = \"1s\""));
    let addr = d.start_station("s1");
    d.issue("node", "n1");
    d.spawn(
        "n1",
        &[
            "node",
            "--dominio",
            &addr,
            "--pki",
            "pki",
            "--name",
            "n1",
            "--trust",
            "publisher.pub",
            "--data-dir",
            "n1",
            "--keepalive",
            "1s",
        ],
    );
    let line = wait_for("n1's request in `agad enroll list`", &d, || {
        d.ok(&["enroll", "list"])
            .lines()
            .find(|l| l.starts_with("n1 ") && l.contains("pending"))
            .map(str::to_owned)
    });
    let fingerprint = line.split_whitespace().last().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 64, "{line}");
    let out = d.run(&["enroll", "activate", "n1"]);
    assert!(
        !out.status.success(),
        "activation before approval is refused"
    );
    assert!(!d.log("s1").contains("node connected"));

    d.ok(&["enroll", "approve", &fingerprint[..12]]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !d.log("s1").contains("node connected"),
        "approved but not active yet"
    );
    d.ok(&["enroll", "activate", "n1"]);
    wait_for("n1 admitted and running its module", &d, || {
        d.log("n1").contains("started module=cpu-mem").then_some(())
    });
}
