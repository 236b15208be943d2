//! A real AGAD hierarchy as separate `agad` processes, for the whole-system
//! tests (`agad/tests/hierarchy.rs`) and the benchmarks (`benchmarks/`): the
//! one place that knows how to lay out a deployment and drive its processes.
//!
//! A [`Deployment`] lives in a temporary folder: a CA and certificates from
//! `agad pki`, a publisher key, the top manager (`agad mor`), stations
//! (`agad dominio`) and nodes (`agad node`) on loopback with mutual TLS, all
//! enrolled with tickets and activated through the real admin commands.
//! Processes have names; the harness can stop (SIGTERM), kill -9, restart,
//! freeze (SIGSTOP) and thaw (SIGCONT) each one by name. Every run of a
//! process logs to `<name>-<run>.log` in the folder, so a test can read what
//! a process logged across restarts.
//!
//! On a [`Network`](crate::network::Network) of separate hosts (network namespaces), each process
//! can run on a host of its own ([`Deployment::start_on`],
//! [`Deployment::start_station_on`], [`Deployment::start_node_on`]),
//! listening on the host's address instead of loopback, so that a test can
//! cut a host off ([`Network::link_down`](crate::network::Network::link_down)) or make its link lossy while the
//! processes keep running. The harness itself and the `agad` admin commands
//! stay in the root namespace: they reach the top manager through its
//! admin socket, a file.
//!
//! Errors, not panics: every failure says what went wrong with the last
//! lines of every process's log, so a test returning `anyhow::Result` and a
//! benchmark both print something to go on. A deployment dropped while its
//! thread panics (a failed `assert!`) prints the same logs. Dropping it kills
//! every process it started.
//!
//! The harness is told where the `agad` binary is: tests pass
//! `env!("CARGO_BIN_EXE_agad")`, benchmarks the release binary beside them.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use agad_tests::hierarchy::{Deployment, Options};
//! # let agad = std::path::Path::new("target/debug/agad");
//! let mut d = Deployment::start(agad, Options::default())?;
//! d.publish_inspector("cpu-mem")?;
//! d.apply("[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n[[node]]\nname = \"n1\"\ndomain = \"d1\"\n")?;
//! let station = d.start_station("s1")?;
//! d.start_node("n1", &station)?;
//! d.sigstop("s1")?; // the node's link goes quiet
//! d.sigcont("s1")?;
//! d.kill9("n1")?;
//! d.restart("n1")?;
//! # Ok(()) }
//! ```

use crate::network::Host;
use agad_guardian::watch::{AGENT_DOWN, HOST_DOWN};
use agad_protocol::message::{Alarm, Provenance, Summary};
use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the top manager listens on its host of a [`Network`](crate::network::Network) (its own
/// namespace: the port is free).
pub const MOR_PORT: u16 = 7400;
/// Where a station listens on its host of a [`Network`](crate::network::Network).
pub const STATION_PORT: u16 = 7401;

/// Lines of each process's log shown with an error.
const LOG_TAIL_LINES: usize = 30;
/// How often [`Deployment::wait_for`] checks.
const POLL: Duration = Duration::from_millis(250);

/// How a deployment runs its processes.
#[derive(Debug, Clone)]
pub struct Options {
    /// `AGAD_LOG` of every process the deployment starts.
    pub log_filter: String,
    /// `--keepalive` of every station and node.
    pub keepalive: String,
    /// How long [`Deployment::wait_for`] waits, and a clean stop may take.
    pub patience: Duration,
}

impl Default for Options {
    /// What the tests use: short keep-alives so that failures show quickly,
    /// and a generous patience because CI machines are shared and every
    /// process compiles its modules.
    fn default() -> Self {
        Options {
            log_filter: "info".to_owned(),
            keepalive: "1s".to_owned(),
            patience: Duration::from_secs(90),
        }
    }
}

/// One row of `agad report --json`: one node's summary of one metric over
/// one domain window.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportRow {
    /// RFC 3339, to the second.
    pub window_start: String,
    pub window_end: String,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub domain: String,
    pub node: String,
    pub module: String,
    pub provenance: Provenance,
    pub summary: Summary,
}

/// A free TCP port on loopback, as `127.0.0.1:PORT`.
pub fn free_address() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(listener.local_addr()?.to_string())
}

/// A named `agad` process: its command line, so it can be restarted, and
/// its current run.
#[derive(Debug)]
struct Process {
    args: Vec<String>,
    /// `None` once stopped or killed by the harness.
    child: Option<Child>,
    /// How many times it was started: the current log is `<name>-<runs>.log`.
    runs: u32,
    /// Sent SIGSTOP and not SIGCONT since.
    frozen: bool,
    /// The host of a [`Network`](crate::network::Network) it runs on; the root namespace if `None`.
    host: Option<Host>,
}

/// One deployment in a temporary folder: CA, publisher key, processes.
/// Dropping it kills every process it started.
#[derive(Debug)]
pub struct Deployment {
    dir: tempfile::TempDir,
    agad: PathBuf,
    options: Options,
    /// Where the top manager listens, once [`Deployment::start`] started it.
    mor_address: Option<String>,
    /// By name; a `BTreeMap` so that logs come out in a stable order.
    processes: BTreeMap<String, Process>,
}

impl Deployment {
    /// A CA, a publisher key and a running top manager (the process `mor`),
    /// with `agad` the binary to run.
    pub fn start(agad: &Path, options: Options) -> anyhow::Result<Deployment> {
        Deployment::start_with_mor(agad, options, None, &[])
    }

    /// [`Deployment::start`] with the top manager on `host` of a
    /// [`Network`](crate::network::Network), listening on `<host address>:7400` ([`MOR_PORT`]).
    pub fn start_on(agad: &Path, options: Options, host: &Host) -> anyhow::Result<Deployment> {
        Deployment::start_with_mor(agad, options, Some(host), &[])
    }

    /// [`Deployment::start`] with `extra` appended to the top manager's
    /// command line (`--attest-every 1s`, say).
    pub fn start_with(agad: &Path, options: Options, extra: &[&str]) -> anyhow::Result<Deployment> {
        Deployment::start_with_mor(agad, options, None, extra)
    }

    fn start_with_mor(
        agad: &Path,
        options: Options,
        host: Option<&Host>,
        extra: &[&str],
    ) -> anyhow::Result<Deployment> {
        let mut d = Deployment::empty(agad, options)?;
        d.agad(&["pki", "init", "--dir", "pki"])?;
        d.agad(&["module", "keygen", "--out", "publisher"])?;
        d.issue("mor", "mor")?;
        let listen = match host {
            Some(host) => format!("{}:{MOR_PORT}", host.address()),
            None => free_address()?,
        };
        let mut args = vec![
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
        ];
        args.extend_from_slice(extra);
        d.spawn_on(host, "mor", &args)?;
        d.mor_address = Some(listen);
        d.wait_for("the top manager's admin socket", |d| {
            Ok(d.path("mor/admin.sock").exists().then_some(()))
        })?;
        Ok(d)
    }

    /// A deployment whose top manager opens its web port (plain HTTP on a
    /// free loopback address) for two users, [`WEB_ADMIN`] and
    /// [`WEB_READER`]: the deployment, the port's address, and the folder
    /// holding the users file (keep it for a restart of the top manager).
    pub fn start_with_web(agad: &Path) -> anyhow::Result<(Deployment, String, tempfile::TempDir)> {
        let files = tempfile::tempdir()?;
        let users = files.path().join("users.toml");
        for ((name, password), role) in [(WEB_ADMIN, "admin"), (WEB_READER, "read-only")] {
            add_web_user(agad, &users, name, role, password)?;
        }
        let web = free_address()?;
        let users = users
            .to_str()
            .context("a users file path that is not UTF-8")?;
        let d = Deployment::start_with(
            agad,
            Options::default(),
            &["--web", &web, "--web-users", users],
        )?;
        Ok((d, web, files))
    }

    /// Runs `agad mor` with `extra` arguments in a fresh deployment folder
    /// (certificates made) until it exits: for a start that must fail.
    pub fn mor_refusing(agad: &Path, extra: &[&str]) -> anyhow::Result<Output> {
        let d = Deployment::empty(agad, Options::default())?;
        d.agad(&["pki", "init", "--dir", "pki"])?;
        d.agad(&["module", "keygen", "--out", "publisher"])?;
        d.issue("mor", "mor")?;
        let mut args = vec![
            "mor",
            "--pki",
            "pki",
            "--name",
            "mor",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "mor",
            "--trust",
            "publisher.pub",
        ];
        args.extend_from_slice(extra);
        d.run(&args)
    }

    /// Only the temporary folder: for a program that sets up its own
    /// certificates and top manager and starts `agad` processes with
    /// [`Deployment::spawn`].
    pub fn empty(agad: &Path, options: Options) -> anyhow::Result<Deployment> {
        let dir = tempfile::Builder::new()
            .prefix("agad-deployment-")
            .tempdir()?;
        Ok(Deployment {
            dir,
            agad: agad.to_owned(),
            options,
            mor_address: None,
            processes: BTreeMap::new(),
        })
    }

    /// `p` inside the deployment's folder (the processes' working directory).
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Where the top manager accepts stations.
    pub fn mor_address(&self) -> anyhow::Result<&str> {
        self.mor_address
            .as_deref()
            .context("this deployment has no top manager (Deployment::empty)")
    }

    /// Runs `agad ARGS` against this deployment's top manager, whatever
    /// its outcome (for commands expected to fail).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.agad)
            .args(args)
            .current_dir(self.dir.path())
            .env("AGAD_MOR_DIR", self.path("mor"))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.agad.display()))
    }

    /// Runs `agad ARGS` against this deployment's top manager; its stdout,
    /// or an error with its stderr if it failed.
    pub fn agad(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "`agad {}` failed: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                self.logs()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Issues `name`'s certificate for `role` (`mor`, `dominio`, `node`)
    /// from the deployment's CA into `pki/`.
    pub fn issue(&self, role: &str, name: &str) -> anyhow::Result<()> {
        self.agad(&[
            "pki", "issue", "--ca-dir", "pki", "--role", role, "--name", name, "--out", "pki",
        ])?;
        Ok(())
    }

    /// A fresh enrollment ticket for `name`.
    pub fn ticket(&self, name: &str) -> anyhow::Result<String> {
        let out = self.agad(&["enroll", "ticket", name])?;
        Ok(out
            .lines()
            .next()
            .context("`agad enroll ticket` printed nothing")?
            .trim()
            .to_owned())
    }

    /// Starts `agad ARGS` as the process called `name`, in the deployment's
    /// folder, logging to `<name>-1.log`.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        self.spawn_on(None, name, args)
    }

    /// [`Deployment::spawn`] inside `host`'s namespace (`ip netns exec`),
    /// or the root one if `None`; restarts run there too.
    pub fn spawn_on(
        &mut self,
        host: Option<&Host>,
        name: &str,
        args: &[&str],
    ) -> anyhow::Result<()> {
        if self.processes.contains_key(name) {
            bail!("there already is a process called {name}");
        }
        self.processes.insert(
            name.to_owned(),
            Process {
                args: args.iter().map(|s| s.to_string()).collect(),
                child: None,
                runs: 0,
                frozen: false,
                host: host.cloned(),
            },
        );
        self.restart(name)
    }

    /// Starts `name` again with its command line, after [`Deployment::stop`]
    /// or [`Deployment::kill9`]; each run logs to its own file.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let dir = self.dir.path().to_owned();
        let (agad, log_filter) = (self.agad.clone(), self.options.log_filter.clone());
        let process = self.process_mut(name)?;
        if process.child.is_some() {
            bail!("{name} is still running");
        }
        process.runs += 1;
        let log = std::fs::File::create(dir.join(format!("{name}-{}.log", process.runs)))?;
        let mut command = match &process.host {
            Some(host) => host.command(&agad),
            None => Command::new(&agad),
        };
        let child = command
            .args(&process.args)
            .current_dir(&dir)
            .env("AGAD_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} ({})", agad.display()))?;
        process.child = Some(child);
        process.frozen = false;
        Ok(())
    }

    /// Stops `name` with SIGTERM (a clean shutdown) and waits for it; kills
    /// it and fails if it takes longer than the patience.
    pub fn stop(&mut self, name: &str) -> anyhow::Result<ExitStatus> {
        let patience = self.options.patience;
        let process = self.process_mut(name)?;
        let mut child = process
            .child
            .take()
            .with_context(|| format!("{name} is not running"))?;
        signal(&child, Signal::TERM)?;
        if std::mem::take(&mut process.frozen) {
            // A stopped process handles SIGTERM only once it runs again.
            signal(&child, Signal::CONT)?;
        }
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > patience {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{name} did not stop within {patience:?} of SIGTERM; killed\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills `name` with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        let process = self.process_mut(name)?;
        let mut child = process
            .child
            .take()
            .with_context(|| format!("{name} is not running"))?;
        process.frozen = false;
        child.kill()?; // SIGKILL
        child.wait()?;
        Ok(())
    }

    /// Freezes `name` with SIGSTOP: it keeps its sockets open but does
    /// nothing at all (no reads, no keep-alives) until [`Deployment::sigcont`].
    /// Returns once every thread of it is stopped, so that nothing it does
    /// afterwards can have started before the call returned.
    pub fn sigstop(&mut self, name: &str) -> anyhow::Result<()> {
        let patience = self.options.patience;
        let process = self.process_mut(name)?;
        let child = process
            .child
            .as_ref()
            .with_context(|| format!("{name} is not running"))?;
        signal(child, Signal::STOP)?;
        process.frozen = true;
        let pid = child.id();
        let start = Instant::now();
        // A thread in a system call (a write, say) stops when it returns.
        while !all_threads_stopped(pid) {
            if start.elapsed() > patience {
                bail!("{name} did not stop within {patience:?} of SIGSTOP");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Lets `name` run again after [`Deployment::sigstop`] (SIGCONT).
    pub fn sigcont(&mut self, name: &str) -> anyhow::Result<()> {
        let process = self.process_mut(name)?;
        let child = process
            .child
            .as_ref()
            .with_context(|| format!("{name} is not running"))?;
        signal(child, Signal::CONT)?;
        process.frozen = false;
        Ok(())
    }

    /// The host `name` runs on, if it runs on a [`Network`](crate::network::Network).
    pub fn host_of(&self, name: &str) -> Option<&Host> {
        self.processes.get(name)?.host.as_ref()
    }

    /// Process id of `name`'s current run.
    pub fn pid(&self, name: &str) -> anyhow::Result<u32> {
        self.processes
            .get(name)
            .and_then(|p| p.child.as_ref())
            .map(Child::id)
            .with_context(|| format!("{name} is not running"))
    }

    /// Everything `name` logged so far, oldest run first.
    pub fn log(&self, name: &str) -> String {
        let runs = self.processes.get(name).map_or(0, |p| p.runs);
        (1..=runs)
            .map(|r| {
                std::fs::read_to_string(self.path(&format!("{name}-{r}.log"))).unwrap_or_default()
            })
            .collect()
    }

    /// The last lines of every process's log, for error messages.
    pub fn logs(&self) -> String {
        self.processes
            .keys()
            .map(|name| {
                let log = self.log(name);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                format!("--- {name} (last lines)\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fails, with the logs, if a process exited without the harness
    /// stopping or killing it.
    pub fn check(&mut self) -> anyhow::Result<()> {
        let exited = self.processes.iter_mut().find_map(|(name, p)| {
            let status = p.child.as_mut()?.try_wait().ok().flatten()?;
            Some((name.clone(), status))
        });
        if let Some((name, status)) = exited {
            bail!("{name} exited ({status})\n{}", self.logs());
        }
        Ok(())
    }

    /// Polls `check` every 250 ms until it returns `Some`; an error after
    /// the patience, or as soon as a process exits on its own, with the
    /// processes' logs.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        check: impl FnMut(&Deployment) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        self.wait_for_within(what, self.options.patience, check)
    }

    /// [`Deployment::wait_for`] with a patience of its own.
    pub fn wait_for_within<T>(
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
            self.check()
                .with_context(|| format!("while waiting for {what}"))?;
            if start.elapsed() > patience {
                bail!(
                    "timed out after {patience:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `name` exits on its own (say, it refuses its
    /// configuration) and reaps it; its exit status.
    pub fn wait_for_exit(&mut self, name: &str) -> anyhow::Result<ExitStatus> {
        let patience = self.options.patience;
        let start = Instant::now();
        loop {
            let process = self.process_mut(name)?;
            let child = process
                .child
                .as_mut()
                .with_context(|| format!("{name} is not running"))?;
            if let Some(status) = child.try_wait()? {
                process.child = None;
                process.frozen = false;
                return Ok(status);
            }
            if start.elapsed() > patience {
                bail!("{name} still runs after {patience:?}\n{}", self.logs());
            }
            std::thread::sleep(POLL);
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

    /// The hash (hex) of the module `name` as [`Deployment::publish`]
    /// signed it.
    pub fn published_hash(&self, name: &str) -> anyhow::Result<String> {
        let bytes = std::fs::read(self.path(&format!("{name}.agad")))?;
        Ok(agad_protocol::Bundle::from_bytes(&bytes)?
            .manifest
            .sha256_hex())
    }

    /// Publishes the test guest `misbehave` (tests/guests/misbehave).
    pub fn publish_misbehave(&self) -> anyhow::Result<()> {
        use agad_modules::test_guests::{MISBEHAVE_MANIFEST, MISBEHAVE_WASM};
        self.publish(
            "misbehave",
            &std::fs::read(MISBEHAVE_WASM)?,
            &std::fs::read_to_string(MISBEHAVE_MANIFEST)?,
        )
    }

    /// Publishes the built-in inspector `name`.
    pub fn publish_inspector(&self, name: &str) -> anyhow::Result<()> {
        let m = agad_modules::inspector(name)
            .with_context(|| format!("no built-in inspector called {name}"))?;
        self.publish(name, m.wasm, m.manifest_toml)
    }

    /// Applies `topology` (the `agad topology apply` file format); what
    /// `agad topology apply` printed (the difference).
    pub fn apply(&self, topology: &str) -> anyhow::Result<String> {
        std::fs::write(self.path("topology.toml"), topology)?;
        self.agad(&["topology", "apply", "topology.toml"])
    }

    /// A station under the top manager with a fresh certificate and ticket,
    /// enrolled and activated; returns the address its children connect to.
    pub fn start_station(&mut self, name: &str) -> anyhow::Result<String> {
        let mor = self.mor_address()?.to_owned();
        self.start_station_under(name, &mor)
    }

    /// A station whose parent manager listens at `parent` (a sub-domain's
    /// station under its parent domain's station).
    pub fn start_station_under(&mut self, name: &str, parent: &str) -> anyhow::Result<String> {
        self.start_station_at(name, parent, None, &[])
    }

    /// [`Deployment::start_station_under`] with `extra` appended to the
    /// station's command line (`--attest-every 1s`, say).
    pub fn start_station_with(
        &mut self,
        name: &str,
        parent: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        self.start_station_at(name, parent, None, extra)
    }

    /// A station on `host` of a [`Network`](crate::network::Network), under the top manager,
    /// listening on `<host address>:7401` ([`STATION_PORT`]); returns that
    /// address, which its nodes connect to.
    pub fn start_station_on(&mut self, name: &str, host: &Host) -> anyhow::Result<String> {
        let mor = self.mor_address()?.to_owned();
        self.start_station_at(name, &mor, Some(host), &[])
    }

    /// [`Deployment::start_station_under`] on `host` of a
    /// [`Network`](crate::network::Network): a sub-domain's station under
    /// its parent domain's station at `parent`.
    pub fn start_station_under_on(
        &mut self,
        name: &str,
        parent: &str,
        host: &Host,
    ) -> anyhow::Result<String> {
        self.start_station_at(name, parent, Some(host), &[])
    }

    fn start_station_at(
        &mut self,
        name: &str,
        parent: &str,
        host: Option<&Host>,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        self.issue("dominio", name)?;
        let ticket = self.ticket(name)?;
        let listen = match host {
            Some(host) => format!("{}:{STATION_PORT}", host.address()),
            None => free_address()?,
        };
        let keepalive = self.options.keepalive.clone();
        let mut args = vec![
            "dominio",
            "--pki",
            "pki",
            "--name",
            name,
            "--mor",
            parent,
            "--listen",
            &listen,
            "--data-dir",
            name,
            "--trust",
            "publisher.pub",
            "--ticket",
            &ticket,
            "--keepalive",
            &keepalive,
        ];
        args.extend_from_slice(extra);
        self.spawn_on(host, name, &args)?;
        self.activate(name)?;
        Ok(listen)
    }

    /// A node under the station at `dominio`, with a fresh certificate and
    /// ticket, enrolled and activated.
    pub fn start_node(&mut self, name: &str, dominio: &str) -> anyhow::Result<()> {
        self.start_node_configured(name, dominio, None, None)
    }

    /// [`Deployment::start_node`] on `host` of a [`Network`](crate::network::Network); `dominio` is
    /// its stations' addresses, primary first, comma-separated (what
    /// [`Deployment::start_station_on`] returned).
    pub fn start_node_on(&mut self, name: &str, dominio: &str, host: &Host) -> anyhow::Result<()> {
        self.start_node_configured(name, dominio, None, Some(host))
    }

    /// [`Deployment::start_node`] with `node_config` the text of its
    /// `--node-config` file (its SNMP agents, say).
    pub fn start_node_with_config(
        &mut self,
        name: &str,
        dominio: &str,
        node_config: &str,
    ) -> anyhow::Result<()> {
        self.start_node_configured(name, dominio, Some(node_config), None)
    }

    fn start_node_configured(
        &mut self,
        name: &str,
        dominio: &str,
        node_config: Option<&str>,
        host: Option<&Host>,
    ) -> anyhow::Result<()> {
        self.issue("node", name)?;
        // From a file, as the README advises (a flag shows in `ps`).
        let ticket_file = format!("{name}.ticket");
        std::fs::write(self.path(&ticket_file), self.ticket(name)?)?;
        let keepalive = self.options.keepalive.clone();
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
            "--ticket-file",
            &ticket_file,
            "--keepalive",
            &keepalive,
        ];
        let config_file = format!("{name}-node.toml");
        if let Some(text) = node_config {
            std::fs::write(self.path(&config_file), text)?;
            args.extend(["--node-config", &config_file]);
        }
        self.spawn_on(host, name, &args)?;
        self.activate(name)
    }

    /// Waits until the ticket approved `name` (`inactive` in `agad enroll
    /// list`), then activates it.
    pub fn activate(&mut self, name: &str) -> anyhow::Result<()> {
        self.wait_for(&format!("{name} to enroll"), |d| {
            let list = d.agad(&["enroll", "list"])?;
            Ok(list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name) && l.contains("inactive"))
                .then_some(()))
        })?;
        self.agad(&["enroll", "activate", name])?;
        Ok(())
    }

    /// The top manager's typed status (`agad status --json`).
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.agad(&["status", "--json"])?)?)
    }

    /// The state of one component in the typed status, as the serving
    /// stations' keep-alives describe it; `component` is for example
    /// `json!({"node": {"name": "n1"}})`.
    pub fn component_state(
        &self,
        component: &serde_json::Value,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(self.status()?["domains"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|domain| domain["components"].as_array().into_iter().flatten())
            .find(|c| &c["component"] == component)
            .map(|c| c["state"].clone()))
    }

    /// Whether the status shows `node` failed with `diagnosis`
    /// (`agent-down`, `host-down`), as its station's keep-alive carries it.
    pub fn node_diagnosed(&self, node: &str, diagnosis: &str) -> anyhow::Result<bool> {
        let state = self.component_state(&serde_json::json!({"node": {"name": node}}))?;
        Ok(state.is_some_and(|s| s["failed"]["diagnosis"] == diagnosis))
    }

    /// Starts the top manager again (after a stop or kill -9) and waits
    /// until it answers `agad status`.
    pub fn restart_mor(&mut self) -> anyhow::Result<()> {
        self.restart("mor")?;
        self.wait_for("the restarted top manager", |d| {
            Ok(d.run(&["status"])?.status.success().then_some(()))
        })
    }

    /// BIG's alarms, the newest 10,000 (`agad alarms --json --limit 10000`).
    pub fn alarms(&self) -> anyhow::Result<Vec<Alarm>> {
        json_lines(
            &self.agad(&["alarms", "--json", "--limit", "10000"])?,
            "agad alarms --json",
        )
    }

    /// The knowledge base's cases of `node`'s alarms in BIG (`agad alarms
    /// --json`), one per (alarm, rule), as JSON.
    pub fn cases(&self, node: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.agad(&["alarms", "--json", "--limit", "10000", "--node", node])?;
        let mut cases = Vec::new();
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            let alarm: serde_json::Value = serde_json::from_str(line)?;
            cases.extend(alarm["cases"].as_array().cloned().unwrap_or_default());
        }
        Ok(cases)
    }

    /// Ids of the alarms `node` logged as durably queued (every run of it).
    pub fn queued_alarm_ids(&self, node: &str) -> BTreeSet<String> {
        self.log(node)
            .lines()
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

    /// The report windows (`window_ms` long) of what `node` logged as
    /// durably queued, every run of it (`report queued`, logged at debug by
    /// `agad_runtime::managed`).
    pub fn queued_windows(&self, node: &str, window_ms: u64) -> BTreeSet<u64> {
        self.log(node)
            .lines()
            .filter(|l| l.contains("report queued"))
            .filter_map(|l| {
                l.split("time_ms=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .map(|t: u64| t - t % window_ms)
            .collect()
    }

    /// Whether the serving station says `node` is connected (its state in
    /// the typed status, from the station's keep-alives).
    pub fn node_connected(&self, node: &str) -> anyhow::Result<bool> {
        let state = self.component_state(&serde_json::json!({"node": {"name": node}}))?;
        Ok(state.is_some_and(|s| s.get("connected").is_some()))
    }

    /// Waits until BIG holds every alarm `node` logged as queued and the
    /// station's BICD count (from its keep-alives) equals BIG's.
    pub fn wait_for_alarms_settled(&mut self, node: &str) -> anyhow::Result<()> {
        self.wait_for(
            &format!("every alarm {node} queued in BIG, and BICD = BIG"),
            |d| {
                let big = d.alarms()?;
                let queued = d.queued_alarm_ids(node);
                // What the top manager's guardian said about stations is in
                // BIG only.
                let in_bicd = big.iter().filter(|a| !d.about_a_station(a)).count();
                Ok(
                    (queued.is_subset(&alarm_ids(&big)) && d.bicd_alarms()? == Some(in_bicd))
                        .then_some(()),
                )
            },
        )
    }

    /// Whether the top manager's guardian raised or cleared `alarm` about
    /// one of this deployment's stations (host down, agent down).
    pub fn about_a_station(&self, alarm: &Alarm) -> bool {
        is_guardian_alarm(alarm)
            && self
                .processes
                .get(&alarm.node)
                .is_some_and(|p| p.args.first().map(String::as_str) == Some("dominio"))
    }

    /// BICD's alarm count as the serving station reports it in its
    /// keep-alive (read from the typed `agad status --json`).
    pub fn bicd_alarms(&self) -> anyhow::Result<Option<usize>> {
        let status = self.status()?;
        let count = status["domains"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|domain| domain["components"].as_array().into_iter().flatten())
            .find_map(|c| c["component"]["store"]["alarms"].as_u64());
        Ok(count.map(|n| n as usize))
    }

    /// BIG's report rows of the last hour (`agad report --json --since 1h`).
    pub fn reports(&self) -> anyhow::Result<Vec<ReportRow>> {
        json_lines(
            &self.agad(&["report", "--json", "--since", "1h", "--limit", "10000"])?,
            "agad report --json",
        )
    }

    fn process_mut(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.processes
            .get_mut(name)
            .with_context(|| format!("no process called {name}"))
    }
}

/// Whether a guardian raised or cleared `alarm` (an element found down, or
/// back): no module queued it.
pub fn is_guardian_alarm(alarm: &Alarm) -> bool {
    [HOST_DOWN, AGENT_DOWN].contains(&alarm.key.as_str())
}

/// The ids of `alarms`.
pub fn alarm_ids(alarms: &[Alarm]) -> BTreeSet<String> {
    alarms.iter().map(|a| a.id.clone()).collect()
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for process in self.processes.values_mut() {
            if let Some(mut child) = process.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends `signal` to `child`.
fn signal(child: &Child, signal: Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .context("process id out of range")?;
    kill_process(pid, signal).with_context(|| format!("sending {signal:?} to {pid:?}"))?;
    Ok(())
}

/// Whether every thread of process `pid` is stopped (state `T` in
/// `/proc/<pid>/task/<tid>/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // `pid (comm) state ...`; comm may hold spaces and parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    })
}

/// One JSON value per line of `text`, which `command` printed.
fn json_lines<T: serde::de::DeserializeOwned>(text: &str, command: &str) -> anyhow::Result<Vec<T>> {
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("`{command}` printed `{l}`")))
        .collect()
}

/// An externally tagged enum's variant in JSON (a case's `state`, a run's
/// `outcome`): `"diagnosed"`, or the one key of `{"escalated": {...}}`.
pub fn variant(value: &serde_json::Value) -> &str {
    match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(map) => map.keys().next().map_or("", String::as_str),
        _ => "",
    }
}

/// The admin login of [`Deployment::start_with_web`].
pub const WEB_ADMIN: (&str, &str) = ("alice", "correct horse battery");
/// The read-only login of [`Deployment::start_with_web`].
pub const WEB_READER: (&str, &str) = ("bob", "staple staple");

/// Adds a web user with `agad web user add` (the password on its standard
/// input) to the users file `file`.
pub fn add_web_user(
    agad: &Path,
    file: &Path,
    name: &str,
    role: &str,
    password: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new(agad)
        .args(["web", "user", "add", name, "--role", role, "--file"])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}")?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains(&format!("user `{name}`")),
        "agad web user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
