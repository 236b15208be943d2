//! The five built-in specialists run by hand (`agad node run --bundle X
//! --arg key=value`) as real `agad` processes against real faults the
//! tests make: a CPU hog, a filled tmpfs, a killed service, loopback
//! probes; and the node policy's refusals, as clear errors.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use agad_tests::netns::running_as_root;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

const AGAD: &str = env!("CARGO_BIN_EXE_agad");

/// A temp folder with a key pair and the built-in specialists signed.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace { dir };
        let out = ws.run(&["module", "keygen", "--out", "pub"]);
        assert!(out.status.success(), "{}", stderr(&out));
        for m in agad_modules::SPECIALISTS {
            std::fs::write(ws.path(&format!("{}.wasm", m.name)), m.wasm).unwrap();
            std::fs::write(ws.path(&format!("{}.toml", m.name)), m.manifest_toml).unwrap();
            let out = ws.run(&[
                "module",
                "sign",
                &format!("{}.wasm", m.name),
                "--manifest",
                &format!("{}.toml", m.name),
                "--key",
                "pub.secret",
                "--out",
                &format!("{}.agad", m.name),
            ]);
            assert!(out.status.success(), "{}: {}", m.name, stderr(&out));
        }
        std::fs::write(ws.path("node.toml"), "").unwrap();
        ws
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(AGAD)
            .args(args)
            .current_dir(self.dir.path())
            .env("AGAD_LOG", "warn")
            .output()
            .expect("agad binary runs")
    }

    fn node_config(&self, text: &str) {
        std::fs::write(self.path("node.toml"), text).unwrap();
    }

    /// `agad node run` of one specialist with `args`: its JSON line and
    /// the whole output.
    fn specialist(&self, module: &str, args: &[&str]) -> (Value, Output) {
        let bundle = format!("{module}.agad");
        let mut argv = vec![
            "node",
            "run",
            "--bundle",
            &bundle,
            "--trust",
            "pub.pub",
            "--node-config",
            "node.toml",
            "--data-dir",
            "data",
        ];
        for arg in args {
            argv.extend(["--arg", arg]);
        }
        let out = self.run(&argv);
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .unwrap_or(Value::Null);
        (line, out)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value of fact `key` in a printed run.
fn fact<'a>(run: &'a Value, key: &str) -> Option<&'a str> {
    run["facts"]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == key)
        .and_then(|pair| pair[1].as_str())
}

/// A printed run that diagnosed, or a failure showing what was printed.
fn diagnosed(run: &Value, out: &Output) {
    assert!(
        out.status.success() && run["outcome"] == "diagnosed",
        "{run}\n{}",
        stderr(out)
    );
}

/// Kills a process the test started, when the test ends however it ends.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn top_cpu_names_the_pid_of_a_cpu_hog() {
    let ws = Workspace::new();
    // A raised priority (root only) keeps the hog on top on a machine
    // busy compiling; without root it competes like anything else.
    let mut hog = if running_as_root() {
        Command::new("nice")
            .args(["-n", "-15", "sh", "-c", "while :; do :; done"])
            .spawn()
            .unwrap()
    } else {
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap()
    };
    let pid = hog.id();
    let guard = Reap(hog);
    let (run, out) = ws.specialist("top-cpu", &["sample=1500ms", "count=3"]);
    diagnosed(&run, &out);
    assert_eq!(fact(&run, "pid"), Some(pid.to_string().as_str()), "{run}");
    assert_eq!(fact(&run, "name"), Some("sh"), "{run}");
    assert_eq!(fact(&run, "cause"), Some("cpu-hog"), "{run}");
    let cpu: f64 = fact(&run, "cpu_percent").unwrap().parse().unwrap();
    assert!(cpu >= 50.0, "{run}");
    assert!(fact(&run, "cpu.3").is_some() && fact(&run, "memory.1").is_some());
    drop(guard);
    hog = Command::new("true").spawn().unwrap();
    let _ = hog.wait();

    // Bad arguments are the specialist's clear refusal, not a trap.
    let (run, out) = ws.specialist("top-cpu", &["sample=1h"]);
    assert!(!out.status.success());
    assert_eq!(run["outcome"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().contains("sample"), "{run}");
    let (run, _) = ws.specialist("top-cpu", &["pid=1"]);
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("unknown config key \"pid\""),
        "{run}"
    );

    // Past the node's deadline: a fault, said as such.
    ws.node_config("max_call_time_ms = 200\n");
    let (run, out) = ws.specialist("top-cpu", &["sample=1s"]);
    assert!(!out.status.success());
    assert_eq!(run["outcome"], "fault", "{run}");
    assert_eq!(run["fault"], "timeout", "{run}");
}

/// Unmounts a test's filesystem when the test ends, however it ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn small_disk(dir: &Path) -> Unmount {
    std::fs::create_dir(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        mounted.status.success(),
        "disk-usage's test mounts a small tmpfs and needs root: run it as root (sudo), it cannot be skipped ({})",
        String::from_utf8_lossy(&mounted.stderr).trim()
    );
    Unmount(dir.to_owned())
}

#[test]
fn disk_usage_names_the_directory_that_fills_a_small_filesystem() {
    let ws = Workspace::new();
    let disk = ws.path("disk");
    let _unmount = small_disk(&disk);
    let disk = std::fs::canonicalize(&disk).unwrap();
    let filled = disk.join("spool/app/cache");
    std::fs::create_dir_all(&filled).unwrap();
    std::fs::create_dir_all(disk.join("etc")).unwrap();
    std::fs::create_dir_all(disk.join("home/user")).unwrap();
    for i in 0..4 {
        std::fs::write(filled.join(format!("blob{i}")), vec![7u8; 5 << 20]).unwrap();
    }
    std::fs::write(disk.join("etc/conf"), vec![1u8; 64 << 10]).unwrap();
    std::fs::write(disk.join("home/user/notes"), vec![1u8; 1 << 20]).unwrap();

    // Nothing is allowed until the node's policy says so.
    let path_arg = format!("path={}", disk.display());
    let (run, out) = ws.specialist("disk-usage", &[&path_arg]);
    assert!(!out.status.success());
    assert_eq!(run["outcome"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("not allowed by this node's policy"),
        "{run}"
    );

    ws.node_config(&format!(
        "disk_usage_paths = [{:?}]\n",
        disk.display().to_string()
    ));
    let (run, out) = ws.specialist("disk-usage", &[&path_arg]);
    diagnosed(&run, &out);
    assert_eq!(
        fact(&run, "path"),
        Some(filled.display().to_string().as_str()),
        "{run}"
    );
    assert_eq!(fact(&run, "cause"), Some("directory"));
    assert_eq!(fact(&run, "complete"), Some("true"));
    let bytes: u64 = fact(&run, "bytes").unwrap().parse().unwrap();
    assert!(bytes >= 20 << 20, "{run}");

    // A log directory filling the disk names its service, for a rule whose
    // fix restarts it.
    std::fs::remove_dir_all(disk.join("spool")).unwrap();
    let logs = disk.join("log/websvc");
    std::fs::create_dir_all(&logs).unwrap();
    for i in 0..3 {
        std::fs::write(logs.join(format!("access.{i}")), vec![7u8; 4 << 20]).unwrap();
    }
    let (run, out) = ws.specialist("disk-usage", &[&path_arg]);
    diagnosed(&run, &out);
    assert_eq!(
        fact(&run, "path"),
        Some(logs.display().to_string().as_str()),
        "{run}"
    );
    assert_eq!(fact(&run, "cause"), Some("runaway-log"), "{run}");
    assert_eq!(fact(&run, "service"), Some("websvc"), "{run}");

    // A path outside the allowed tree, even through `..`, is refused.
    let escape = format!("path={}/..", disk.display());
    let (run, _) = ws.specialist("disk-usage", &[&escape]);
    assert_eq!(run["outcome"], "failed", "{run}");
    assert!(
        run["error"].as_str().unwrap().starts_with("refused:"),
        "{run}"
    );
    let (run, _) = ws.specialist("disk-usage", &[]);
    assert!(
        run["error"].as_str().unwrap().contains("path: required"),
        "{run}"
    );
}

/// The comm of `pid`, if it lives.
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// Kills a pid the node's restart command started (not our child).
struct KillPid(Option<u32>);

impl Drop for KillPid {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

#[test]
fn service_restart_restarts_a_killed_allow_listed_service_and_refuses_others() {
    let ws = Workspace::new();
    // The service: `sleep` under a name of its own, so that "it runs"
    // means this test's process and nothing else on the machine.
    let name = format!("agsvc{}", std::process::id() % 1_000_000);
    let program = ws.path(&name);
    std::fs::copy("/bin/sleep", &program).unwrap();
    // A test thread forking while the copy was open for writing makes
    // the exec fail with "text file busy" until that child has exec'd.
    let mut service = (0..50)
        .find_map(|_| match Command::new(&program).arg("120").spawn() {
            Ok(child) => Some(child),
            Err(e) if e.raw_os_error() == Some(26) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            }
            Err(e) => panic!("{e}"),
        })
        .expect("the service starts");
    let first = service.id();
    // Between fork and exec the child still has the test's name.
    for _ in 0..100 {
        if comm(first).as_deref() == Some(name.as_str()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(comm(first).as_deref(), Some(name.as_str()));
    ws.node_config(&format!(
        "[services.testsvc]\n\
         restart = [\"/bin/sh\", \"-c\", \"setsid {} 120 </dev/null >/dev/null 2>&1 &\"]\n\
         process = {name:?}\n\
         confirm_within = \"5s\"\n",
        program.display()
    ));
    // The fault: the service dies.
    service.kill().unwrap();
    service.wait().unwrap();

    let (run, out) = ws.specialist("service-restart", &["service=testsvc"]);
    diagnosed(&run, &out);
    let pid: u32 = fact(&run, "pid").unwrap().parse().unwrap();
    let _cleanup = KillPid(Some(pid));
    assert_eq!(fact(&run, "restarted"), Some("true"), "{run}");
    assert_eq!(fact(&run, "running"), Some("true"), "{run}");
    assert_eq!(fact(&run, "was_running"), Some("false"), "{run}");
    assert_ne!(pid, first);
    assert_eq!(comm(pid).as_deref(), Some(name.as_str()), "{run}");

    // Not on the allow-list: refused with a clear error value, nothing run.
    let (run, out) = ws.specialist("service-restart", &["service=sshd"]);
    assert!(!out.status.success());
    assert_eq!(run["outcome"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.starts_with("refused:") && error.contains("not allowed by this node's policy"),
        "{run}"
    );
    assert!(stderr(&out).contains("sshd"), "{}", stderr(&out));
}

#[test]
fn a_capability_the_node_policy_does_not_grant_is_a_clear_error() {
    let ws = Workspace::new();
    ws.node_config("allowed_capabilities = [\"os\", \"snmp\", \"state\", \"log\", \"clock\"]\n");
    for (module, capability) in [
        ("link-probe", "probe"),
        ("service-restart", "service"),
        ("disk-usage", "disk"),
    ] {
        let (run, out) = ws.specialist(module, &["target=127.0.0.1"]);
        assert!(!out.status.success());
        assert_eq!(run, Value::Null, "nothing runs");
        let err = stderr(&out);
        assert!(
            err.contains("needs a capability this node's policy does not allow")
                && err.contains(&format!(
                    "`{capability}` (import agad:platform/{capability}"
                )),
            "{module}: {err}"
        );
    }
    // A service policy without the capability changes nothing.
    assert!(
        ws.specialist("top-cpu", &["sample=100ms"])
            .1
            .status
            .success()
    );
}

#[test]
fn link_probe_measures_loopback_and_remembers_its_path() {
    let ws = Workspace::new();
    let (run, out) = ws.specialist("link-probe", &["target=127.0.0.1", "count=3", "hops=4"]);
    diagnosed(&run, &out);
    assert_eq!(fact(&run, "loss_percent"), Some("0.0"), "{run}");
    assert_eq!(fact(&run, "received"), Some("3"));
    assert_eq!(fact(&run, "address"), Some("127.0.0.1"));
    if running_as_root() {
        // Raw ICMP: echoes and the path (one hop: the target itself).
        assert_eq!(fact(&run, "method"), Some("icmp"), "{run}");
        assert_eq!(fact(&run, "path"), Some("127.0.0.1"), "{run}");
        assert_eq!(fact(&run, "path_changed"), Some("false"));
        // The second run compares with the path the first one kept.
        let (again, out) = ws.specialist("link-probe", &["target=127.0.0.1", "count=2", "hops=4"]);
        diagnosed(&again, &out);
        assert_eq!(fact(&again, "previous_path"), Some("127.0.0.1"), "{again}");
        assert_eq!(fact(&again, "path_changed"), Some("false"));
        assert_eq!(fact(&again, "cause"), Some("none"));
    }

    // TCP connect, as where ICMP is not permitted: an open port answers,
    // and so does a closed one (with a RST).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = format!("port={}", listener.local_addr().unwrap().port());
    let (run, out) = ws.specialist(
        "link-probe",
        &["target=127.0.0.1", "method=tcp", &port, "count=3", "hops=0"],
    );
    diagnosed(&run, &out);
    assert_eq!(fact(&run, "method"), Some("tcp"), "{run}");
    assert_eq!(fact(&run, "received"), Some("3"), "{run}");
    assert!(fact(&run, "path_error").is_some(), "{run}");

    let (run, _) = ws.specialist("link-probe", &["target=127.0.0.1", "method=tcp"]);
    assert!(run["error"].as_str().unwrap().contains("port"), "{run}");
}

#[test]
fn if_diagnose_reads_loopback_counters_from_the_kernel() {
    let ws = Workspace::new();
    let (run, out) = ws.specialist(
        "if-diagnose",
        &["interface=lo", "sample=300ms", "source=os"],
    );
    diagnosed(&run, &out);
    assert_eq!(fact(&run, "source"), Some("os"), "{run}");
    assert_eq!(fact(&run, "admin_up"), Some("true"), "{run}");
    assert_eq!(fact(&run, "in_errors"), Some("0"), "{run}");
    assert!(fact(&run, "direction").is_some() && fact(&run, "cause").is_some());

    let (run, _) = ws.specialist("if-diagnose", &["interface=nosuch0", "source=os"]);
    assert_eq!(run["outcome"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap().contains("nosuch0"), "{run}");
}

#[test]
fn run_refuses_to_mix_a_specialist_with_other_bundles_or_config() {
    let ws = Workspace::new();
    let out = ws.run(&[
        "node",
        "run",
        "--bundle",
        "top-cpu.agad",
        "--bundle",
        "disk-usage.agad",
        "--trust",
        "pub.pub",
        "--data-dir",
        "data",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("runs once and on its own"),
        "{}",
        stderr(&out)
    );
    let out = ws.run(&[
        "node",
        "run",
        "--bundle",
        "top-cpu.agad",
        "--trust",
        "pub.pub",
        "--data-dir",
        "data",
        "--arg",
        "novalue",
    ]);
    assert!(
        stderr(&out).contains("expected KEY=VALUE"),
        "{}",
        stderr(&out)
    );
}

/// Where the node may not open a raw socket (not root): an unprivileged
/// ICMP socket when the namespace's `net.ipv4.ping_group_range` admits the
/// node's group, else TCP connect to the given port. The node runs as
/// `nobody` in a namespace of its own, whose ping_group_range the test
/// sets (the sysctl is per namespace). Needs root to make the namespace.
#[test]
fn link_probe_without_privileges_uses_an_icmp_socket_or_falls_back_to_tcp() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    let netns = agad_tests::netns::Netns::empty("probe").unwrap();
    // `nobody` reads the bundle and key and makes its data directory here.
    std::fs::set_permissions(ws.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // Written through /proc (what `sysctl -w` does), which shows the
    // writer's namespace.
    let sysctl = |range: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", netns.name(), "sh", "-c"])
            .arg(format!(
                "echo '{range}' > /proc/sys/net/ipv4/ping_group_range"
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let as_nobody = |args: &[&str]| -> (Value, Output) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns.name()])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(AGAD)
            .args([
                "node",
                "run",
                "--bundle",
                "link-probe.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "nobody-data",
            ])
            .current_dir(ws.dir.path())
            .env("AGAD_LOG", "warn");
        for arg in args {
            cmd.args(["--arg", arg]);
        }
        let out = cmd.output().unwrap();
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| serde_json::from_str(l).unwrap())
            .unwrap_or(Value::Null);
        (line, out)
    };

    // Every group may open ICMP datagram sockets (systemd's default).
    sysctl("0\t2147483647");
    let (run, out) = as_nobody(&["target=127.0.0.1", "count=3", "hops=4"]);
    diagnosed(&run, &out);
    assert_eq!(fact(&run, "method"), Some("icmp"), "{run}");
    assert_eq!(fact(&run, "received"), Some("3"), "{run}");
    // The path needs a raw socket: refused, and said so; the rest holds.
    assert!(
        fact(&run, "path_error").is_some_and(|e| e.contains("raw ICMP")),
        "{run}"
    );

    // No group may (the kernel's default): TCP to the port, where a
    // refused connection is an answer too.
    sysctl("1\t0");
    let (run, out) = as_nobody(&["target=127.0.0.1", "count=2", "port=9", "hops=0"]);
    diagnosed(&run, &out);
    assert_eq!(fact(&run, "method"), Some("tcp"), "{run}");
    assert_eq!(fact(&run, "received"), Some("2"), "{run}");
    // Without a port there is nothing to fall back to: a clear refusal.
    let (run, out) = as_nobody(&["target=127.0.0.1", "count=1"]);
    assert!(!out.status.success());
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("refused:") && error.contains("may not send ICMP echo"),
        "{run}\n{}",
        stderr(&out)
    );
}

/// A route change, for real: a client namespace reaches the target's
/// address straight over one link, then through a router namespace; the
/// second run of link-probe names the new path and the old one. Needs
/// root (namespaces, raw ICMP for the path).
#[test]
fn link_probe_reports_a_changed_route_path() {
    use agad_tests::netns::{Netns, run};
    let ws = Workspace::new();
    let client = Netns::empty("c").unwrap();
    let router = Netns::empty("r").unwrap();
    let target = Netns::empty("t").unwrap();
    let (c, r, t) = (client.name(), router.name(), target.name());
    // Interface names are per namespace, so they need not be unique.
    let link = |a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str| {
        run(
            "ip",
            &[
                "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
            ],
        )
        .unwrap();
        for (ns, dev, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
            run("ip", &["-n", ns, "addr", "add", ip, "dev", dev]).unwrap();
            run("ip", &["-n", ns, "link", "set", dev, "up"]).unwrap();
        }
    };
    link(c, "direct", "10.3.0.1/24", t, "direct", "10.3.0.2/24");
    link(c, "uplink", "10.1.0.1/24", r, "west", "10.1.0.2/24");
    link(r, "east", "10.2.0.1/24", t, "back", "10.2.0.2/24");
    run("ip", &["-n", t, "addr", "add", "10.9.9.9/32", "dev", "lo"]).unwrap();
    run(
        "ip",
        &[
            "netns",
            "exec",
            r,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ],
    )
    .unwrap();
    // The router knows the target's address; the target answers the
    // client's router-side address through the router.
    run(
        "ip",
        &["-n", r, "route", "add", "10.9.9.9/32", "via", "10.2.0.2"],
    )
    .unwrap();
    run(
        "ip",
        &["-n", t, "route", "add", "10.1.0.0/24", "via", "10.2.0.1"],
    )
    .unwrap();

    let probe = || -> (Value, Output) {
        let out = Command::new("ip")
            .args(["netns", "exec", c, AGAD])
            .args([
                "node",
                "run",
                "--bundle",
                "link-probe.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "data",
                "--arg",
                "target=10.9.9.9",
                "--arg",
                "count=2",
                "--arg",
                "hops=5",
                "--arg",
                "timeout=500ms",
            ])
            .current_dir(ws.dir.path())
            .env("AGAD_LOG", "warn")
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| serde_json::from_str(l).unwrap())
            .unwrap_or(Value::Null);
        (line, out)
    };

    run(
        "ip",
        &["-n", c, "route", "add", "10.9.9.9/32", "via", "10.3.0.2"],
    )
    .unwrap();
    let (run1, out) = probe();
    diagnosed(&run1, &out);
    assert_eq!(fact(&run1, "path"), Some("10.9.9.9"), "{run1}");
    assert_eq!(fact(&run1, "path_changed"), Some("false"), "{run1}");

    run(
        "ip",
        &[
            "-n",
            c,
            "route",
            "replace",
            "10.9.9.9/32",
            "via",
            "10.1.0.2",
        ],
    )
    .unwrap();
    let (run2, out) = probe();
    diagnosed(&run2, &out);
    assert_eq!(fact(&run2, "path"), Some("10.1.0.2 10.9.9.9"), "{run2}");
    assert_eq!(fact(&run2, "path_changed"), Some("true"), "{run2}");
    assert_eq!(fact(&run2, "previous_path"), Some("10.9.9.9"), "{run2}");
    assert_eq!(fact(&run2, "cause"), Some("path-changed"), "{run2}");
    assert_eq!(fact(&run2, "loss_percent"), Some("0.0"), "{run2}");
}

/// if-diagnose on a real link that fails: a veth whose peer goes down
/// (link-down), then one shut down by its operator (admin-down). Needs
/// root (a namespace).
#[test]
fn if_diagnose_tells_a_failed_link_from_an_admin_shutdown() {
    use agad_tests::netns::{Netns, run};
    let ws = Workspace::new();
    let ns = Netns::empty("if").unwrap();
    let peer = Netns::empty("ifpeer").unwrap();
    run(
        "ip",
        &[
            "link",
            "add",
            "wan0",
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            "wan0",
            "netns",
            peer.name(),
        ],
    )
    .unwrap();
    for n in [ns.name(), peer.name()] {
        run("ip", &["-n", n, "link", "set", "wan0", "up"]).unwrap();
    }
    let diagnose = || -> (Value, Output) {
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name(), AGAD])
            .args([
                "node",
                "run",
                "--bundle",
                "if-diagnose.agad",
                "--trust",
                "pub.pub",
                "--data-dir",
                "data",
                "--arg",
                "interface=wan0",
                "--arg",
                "sample=200ms",
                "--arg",
                "source=os",
            ])
            .current_dir(ws.dir.path())
            .env("AGAD_LOG", "warn")
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| serde_json::from_str(l).unwrap())
            .unwrap_or(Value::Null);
        (line, out)
    };
    // The kernel's link watch sets an operational state a moment after
    // the change (up to a second): wait for it, as the node would see it.
    let settle = |state: &str| {
        for _ in 0..100 {
            let out = Command::new("ip")
                .args(["-n", ns.name(), "link", "show", "wan0"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(&format!("state {state} ")) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("wan0 never reached state {state}");
    };
    settle("UP");
    let (run_up, out) = diagnose();
    diagnosed(&run_up, &out);
    assert_eq!(fact(&run_up, "oper_state"), Some("up"), "{run_up}");
    assert_eq!(fact(&run_up, "cause"), Some("none"), "{run_up}");
    // veth reports full duplex (and 10 Gb/s) through sysfs.
    assert_eq!(fact(&run_up, "duplex"), Some("full"), "{run_up}");

    // The far end fails: our side is up administratively, its link is not.
    run("ip", &["-n", peer.name(), "link", "set", "wan0", "down"]).unwrap();
    settle("DOWN");
    let (failed, out) = diagnose();
    diagnosed(&failed, &out);
    assert_eq!(fact(&failed, "cause"), Some("link-down"), "{failed}");
    assert_eq!(fact(&failed, "admin_up"), Some("true"), "{failed}");

    // Shut down on purpose.
    run("ip", &["-n", ns.name(), "link", "set", "wan0", "down"]).unwrap();
    settle("DOWN");
    let (shut, out) = diagnose();
    diagnosed(&shut, &out);
    assert_eq!(fact(&shut, "cause"), Some("admin-down"), "{shut}");
    assert_eq!(fact(&shut, "admin_up"), Some("false"), "{shut}");
}
