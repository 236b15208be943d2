//! Network namespaces with many interfaces, for running a program (a whole
//! deployment, an snmpd) as if on a device with that many ports: the
//! benchmarks' 48-interface scenarios, and any test that needs one.
//!
//! Creating a namespace needs root. Without it, [`Netns::with_links`] fails
//! with an error that says so: a test or benchmark that needs a namespace
//! must fail loudly, never skip and pass.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use agad_tests::netns::Netns;
//! let ns = Netns::with_links(48)?;
//! ns.run(&std::env::current_exe()?, &["--inner"])?;
//! # Ok(()) }
//! ```

use anyhow::{Context, bail};
use std::path::Path;
use std::process::{Command, Stdio};

/// A network namespace `agad-ns-<pid>` with `links` interfaces up (plus
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
        if !running_as_root() {
            bail!(
                "a network namespace with {links} interfaces needs root: run this as root \
                 (sudo), it cannot be skipped"
            );
        }
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

    /// An empty namespace `agad-ns-<pid>-<tag>` with only `lo`, up; the
    /// caller adds its links (veth pairs to another namespace, say). Needs
    /// root, like [`Netns::with_links`].
    pub fn empty(tag: &str) -> anyhow::Result<Netns> {
        if !running_as_root() {
            bail!("a network namespace needs root: run this as root (sudo), it cannot be skipped");
        }
        remove_stale_namespaces();
        let ns = Netns {
            name: format!("{NETNS_PREFIX}{}-{tag}", std::process::id()),
        };
        run("ip", &["netns", "add", &ns.name])?;
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair from this machine's namespace into this one: `near` here
    /// with address `near_cidr`, `far` inside with `far_cidr`, both up (the
    /// pair goes with the namespace).
    pub fn veth_in(
        &self,
        near: &str,
        near_cidr: &str,
        far: &str,
        far_cidr: &str,
    ) -> anyhow::Result<()> {
        run(
            "ip",
            &[
                "link", "add", near, "type", "veth", "peer", "name", far, "netns", &self.name,
            ],
        )?;
        run("ip", &["addr", "add", near_cidr, "dev", near])?;
        run("ip", &["link", "set", near, "up"])?;
        run(
            "ip",
            &["-n", &self.name, "addr", "add", far_cidr, "dev", far],
        )?;
        run("ip", &["-n", &self.name, "link", "set", far, "up"])?;
        Ok(())
    }

    /// Runs one test of the current test binary inside the namespace (its
    /// `/proc/net`, `/sys/class/net` and loopback), with `env` set, and
    /// fails when that test fails. The test is named by its full path
    /// (`module::test`) and usually `#[ignore]`d so it runs only this way.
    pub fn run_test(&self, test: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("the test binary")?;
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(exe)
            .args([test, "--exact", "--include-ignored", "--nocapture"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .context("ip netns exec")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            bail!(
                "{test} inside network namespace {} failed ({})",
                self.name,
                output.status
            );
        }
        // A misspelt name matches nothing, and running nothing succeeds.
        if !stdout.contains("test result: ok. 1 passed") {
            bail!("{test} did not run inside network namespace {}", self.name);
        }
        Ok(())
    }

    /// `agad-ns-<pid>`, for `ip netns exec`.
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

const NETNS_PREFIX: &str = "agad-ns-";

/// Removes the namespaces (`agad-ns-<pid>...`, this module's and
/// [`crate::network`]'s) left by an earlier run that was killed: its pid is
/// gone.
pub fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale network namespace {name}");
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// Runs a command to completion; its stderr in the error when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
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

/// Whether this process runs as root (effective uid 0).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}
