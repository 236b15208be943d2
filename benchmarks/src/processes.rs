//! A real AGAD hierarchy for benchmarks: the top manager, domain-manager
//! stations and nodes as separate release `agad` processes on loopback, with
//! certificates from `agad pki` and mutual TLS on every link.
//!
//! Modelled on the whole-system test harness (`agad/tests/hierarchy.rs`),
//! with errors instead of panics: a benchmark that cannot set its system up
//! says why, with the last lines of every process's log. Every process logs
//! to `<name>.log` in the deployment's temporary folder, so benchmarks can
//! read the timestamped lines (`AGAD_LOG` is the deployment's filter).
//!
//! [`Netns`] is a network namespace with many interfaces, for running a
//! whole deployment as if on a device with that many ports.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use agad_benchmarks::processes::{Deployment, agad_binary};
//! let mut d = Deployment::start(&agad_binary()?, "info")?;
//! d.publish_inspector("cpu-mem")?;
//! d.apply("[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n[[node]]\nname = \"n1\"\ndomain = \"d1\"\n")?;
//! let station = d.start_station("s1")?;
//! d.start_node("n1", &station, None)?;
//! # Ok(()) }
//! ```

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Keep-alive period of every station and node, as a deployment would run it.
pub const KEEPALIVE: &str = "10s";

/// Generous: two shared cores, and every process compiles its modules.
const PATIENCE: Duration = Duration::from_secs(120);

/// `agad` beside the running program (both are built into `target/release`).
pub fn agad_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("the program has no parent directory")?
        .join("agad");
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with\n    cargo build --release -p agad -p agad-benchmarks",
            path.display()
        );
    }
    Ok(path)
}

/// A free TCP port on loopback, as `127.0.0.1:PORT`.
pub fn free_address() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(listener.local_addr()?.to_string())
}

/// One deployment in a temporary folder: CA, publisher key, processes.
/// Dropping it kills every process it started.
#[derive(Debug)]
pub struct Deployment {
    dir: tempfile::TempDir,
    agad: PathBuf,
    log_filter: String,
    mor_address: String,
    /// By name; a `BTreeMap` so logs come out in a stable order.
    processes: BTreeMap<String, Child>,
}

impl Deployment {
    /// A CA, a publisher key and a running top manager. `log_filter` is the
    /// `AGAD_LOG` of every process this deployment starts.
    pub fn start(agad: &Path, log_filter: &str) -> anyhow::Result<Deployment> {
        let dir = tempfile::Builder::new().prefix("agad-bench-").tempdir()?;
        let mut d = Deployment {
            dir,
            agad: agad.to_owned(),
            log_filter: log_filter.to_owned(),
            mor_address: free_address()?,
            processes: BTreeMap::new(),
        };
        d.agad(&["pki", "init", "--dir", "pki"])?;
        d.agad(&["module", "keygen", "--out", "publisher"])?;
        d.issue("mor", "mor")?;
        let listen = d.mor_address.clone();
        d.spawn(
            "mor",
            &[
                "mor",
                "--pki",
                "pki",
                "--name",
                "mor",
                "--listen",
                &listen,
                "--data-dir",
                "mor",
                "--trust",
                "publisher.pub",
            ],
        )?;
        d.wait_for("the top manager's admin socket", PATIENCE, |d| {
            Ok(d.path("mor/admin.sock").exists().then_some(()))
        })?;
        Ok(d)
    }

    /// `p` inside the deployment's folder.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Runs `agad ARGS` against this deployment's top manager; its stdout.
    pub fn agad(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.agad)
            .args(args)
            .current_dir(self.dir.path())
            .env("AGAD_MOR_DIR", self.path("mor"))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.agad.display()))?;
        if !out.status.success() {
            bail!(
                "`agad {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn issue(&self, role: &str, name: &str) -> anyhow::Result<()> {
        self.agad(&[
            "pki", "issue", "--ca-dir", "pki", "--role", role, "--name", name, "--out", "pki",
        ])?;
        Ok(())
    }

    /// Starts `agad ARGS` as the process called `name`, logging to `<name>.log`.
    fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        if self.processes.contains_key(name) {
            bail!("a process called {name} is already running");
        }
        let log = std::fs::File::create(self.path(&format!("{name}.log")))?;
        let child = Command::new(&self.agad)
            .args(args)
            .current_dir(self.dir.path())
            .env("AGAD_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.processes.insert(name.to_owned(), child);
        Ok(())
    }

    /// Stops `name` with SIGTERM (a clean shutdown) and waits for it.
    pub fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let mut child = self
            .processes
            .remove(name)
            .with_context(|| format!("no process called {name}"))?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {name} failed");
        }
        child.wait()?;
        Ok(())
    }

    /// Everything `name` logged so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// The last lines of every process's log, for error messages.
    fn logs(&self) -> String {
        self.processes
            .keys()
            .map(|name| {
                let log = self.log(name);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                format!("--- {name} (last lines)\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `check` every 250 ms until it returns `Some`; an error after
    /// `patience`, with the processes' logs.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        patience: Duration,
        mut check: impl FnMut(&Deployment) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        loop {
            if let Some(v) = check(self)? {
                return Ok(v);
            }
            let exited = self.processes.iter_mut().find_map(|(name, child)| {
                child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|status| (name.clone(), status))
            });
            if let Some((name, status)) = exited {
                bail!(
                    "{name} exited ({status}) while waiting for {what}\n{}",
                    self.logs()
                );
            }
            if start.elapsed() > patience {
                bail!(
                    "timed out after {patience:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Signs a module given as wasm bytes and manifest text with the
    /// publisher key, and publishes it to BGC.
    pub fn publish(&self, name: &str, wasm: &[u8], manifest: &str) -> anyhow::Result<()> {
        let (wasm_file, manifest_file, bundle) = (
            format!("{name}.wasm"),
            format!("{name}.toml"),
            format!("{name}.agad"),
        );
        std::fs::write(self.path(&wasm_file), wasm)?;
        std::fs::write(self.path(&manifest_file), manifest)?;
        self.agad(&[
            "module",
            "sign",
            &wasm_file,
            "--manifest",
            &manifest_file,
            "--key",
            "publisher.secret",
            "--out",
            &bundle,
        ])?;
        self.agad(&["module", "publish", &bundle])?;
        Ok(())
    }

    /// Publishes the built-in inspector `name`.
    pub fn publish_inspector(&self, name: &str) -> anyhow::Result<()> {
        let m = agad_modules::inspector(name)
            .with_context(|| format!("no built-in inspector called {name}"))?;
        self.publish(name, m.wasm, m.manifest_toml)
    }

    /// Applies `topology` (the `agad topology apply` file format).
    pub fn apply(&self, topology: &str) -> anyhow::Result<String> {
        std::fs::write(self.path("topology.toml"), topology)?;
        self.agad(&["topology", "apply", "topology.toml"])
    }

    fn ticket(&self, name: &str) -> anyhow::Result<String> {
        let out = self.agad(&["enroll", "ticket", name])?;
        Ok(out
            .lines()
            .next()
            .context("`agad enroll ticket` printed nothing")?
            .trim()
            .to_owned())
    }

    /// A station with a fresh certificate and ticket, enrolled and
    /// activated; returns the address its nodes connect to.
    pub fn start_station(&mut self, name: &str) -> anyhow::Result<String> {
        self.issue("dominio", name)?;
        let ticket = self.ticket(name)?;
        let listen = free_address()?;
        let mor = self.mor_address.clone();
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
                KEEPALIVE,
            ],
        )?;
        self.activate(name)?;
        Ok(listen)
    }

    /// A node under the station at `dominio`, enrolled and activated;
    /// `node_config` is the text of its `--node-config` file, if any.
    pub fn start_node(
        &mut self,
        name: &str,
        dominio: &str,
        node_config: Option<&str>,
    ) -> anyhow::Result<()> {
        self.issue("node", name)?;
        let ticket = self.ticket(name)?;
        let mut args = vec![
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
            KEEPALIVE,
        ];
        let config_file = format!("{name}-node.toml");
        if let Some(text) = node_config {
            std::fs::write(self.path(&config_file), text)?;
            args.extend(["--node-config", &config_file]);
        }
        self.spawn(name, &args)?;
        self.activate(name)
    }

    /// Waits until the ticket approved `name`, then activates it.
    fn activate(&mut self, name: &str) -> anyhow::Result<()> {
        self.wait_for(&format!("{name} to enroll"), PATIENCE, |d| {
            let list = d.agad(&["enroll", "list"])?;
            Ok(list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name) && l.contains("inactive"))
                .then_some(()))
        })?;
        self.agad(&["enroll", "activate", name])?;
        Ok(())
    }

    /// BIG's alarms (`agad alarms --json`).
    pub fn alarms(&self) -> anyhow::Result<Vec<agad_protocol::message::Alarm>> {
        self.agad(&["alarms", "--json"])?
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .with_context(|| format!("`agad alarms --json` printed `{l}`"))
            })
            .collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for child in self.processes.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A network namespace `agad-bench-<pid>` with `links` interfaces up (plus
/// `lo`), in which a program can run as if on a device with that many
/// ports. Needs root. Deleted on drop, so on errors and on Ctrl-C too.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and its interfaces: dummy links, or veth pairs
    /// with both ends inside on kernels built without the dummy driver (some
    /// VMs); either way the same `links` interfaces to an SNMP agent.
    /// Namespaces of earlier runs that were killed are removed first.
    pub fn with_links(links: usize) -> anyhow::Result<Netns> {
        remove_stale_namespaces();
        let ns = Netns {
            name: format!("{NETNS_PREFIX}{}", std::process::id()),
        };
        run("ip", &["netns", "add", &ns.name])?;
        let dummy = run(
            "ip",
            &["-n", &ns.name, "link", "add", "if1", "type", "dummy"],
        )
        .is_ok();
        if !dummy {
            if links % 2 == 1 {
                bail!(
                    "this kernel has no dummy link driver, and veth pairs make an even number of links, not {links}"
                );
            }
            eprintln!(
                "this kernel has no dummy link driver; using {} veth pairs instead",
                links / 2
            );
        }
        let mut batch = String::from("link set lo up\n");
        for i in 1..=links {
            if dummy && i > 1 {
                batch.push_str(&format!("link add if{i} type dummy\n"));
            } else if !dummy && i % 2 == 1 {
                batch.push_str(&format!("link add if{i} type veth peer name if{}\n", i + 1));
            }
        }
        for i in 1..=links {
            batch.push_str(&format!("link set if{i} up\n"));
        }
        let mut ip = Command::new("ip")
            .args(["-n", &ns.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("running ip -batch")?;
        {
            use std::io::Write;
            ip.stdin
                .take()
                .context("ip stdin")?
                .write_all(batch.as_bytes())?;
        }
        if !ip.wait()?.success() {
            bail!(
                "creating {links} interfaces in network namespace {} failed",
                ns.name
            );
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `program ARGS` inside the namespace to completion. Ctrl-C kills
    /// it and returns an error, so that dropping `self` still cleans up.
    pub fn run(&self, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let status = runtime.block_on(async {
            let mut child = tokio::process::Command::new("ip")
                .args(["netns", "exec", &self.name])
                .arg(program)
                .args(args)
                .kill_on_drop(true)
                .spawn()
                .context("ip netns exec")?;
            tokio::select! {
                status = child.wait() => Ok(status?),
                _ = tokio::signal::ctrl_c() => {
                    let _ = child.kill().await;
                    bail!("interrupted")
                }
            }
        })?;
        if !status.success() {
            bail!(
                "{} inside network namespace {} failed ({status})",
                program.display(),
                self.name
            );
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match run("ip", &["netns", "del", &self.name]) {
            Ok(()) => eprintln!("deleted network namespace {}", self.name),
            Err(e) => eprintln!("{e}; run `ip netns del {}`", self.name),
        }
    }
}

const NETNS_PREFIX: &str = "agad-bench-";

/// Namespaces left by an earlier run that was killed (its pid is gone).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale network namespace {name}");
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// Runs a command to completion; its stderr in the error when it fails.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
