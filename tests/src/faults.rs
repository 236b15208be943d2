//! Faults a test or a benchmark injects on this machine, each undone on
//! drop: a process that keeps one core busy, a small service it declares
//! to a node and kills, and a small tmpfs it fills (root).

use anyhow::{Context, bail};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A process that keeps one core busy until dropped.
#[derive(Debug)]
pub struct Hog(Child);

impl Hog {
    pub fn start() -> anyhow::Result<Hog> {
        Ok(Hog(Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .spawn()
            .context("starting a CPU hog")?))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small service to declare in a node's policy (`[services.<name>]`): a
/// copy of `sleep` under a name of its own, started detached by its start
/// command (which is also how the node restarts it). Killed on drop.
#[derive(Debug)]
pub struct Service {
    dir: tempfile::TempDir,
    name: String,
}

impl Service {
    /// Starts it; `tag` makes its name unique among concurrent tests (the
    /// name stays within the 15 bytes `comm` keeps).
    pub fn start(tag: &str) -> anyhow::Result<Service> {
        let dir = tempfile::tempdir()?;
        let name = format!("svc{tag}{}", std::process::id() % 100_000);
        if name.len() > 15 {
            bail!("service name `{name}` is longer than a process name can be");
        }
        std::fs::copy("/bin/sleep", dir.path().join(&name)).context("copying /bin/sleep")?;
        let service = Service { dir, name };
        service.restart()?;
        Ok(service)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shell command that starts it detached.
    pub fn start_command(&self) -> String {
        format!(
            "setsid {} 100000 >/dev/null 2>&1 < /dev/null &",
            self.dir.path().join(&self.name).display()
        )
    }

    /// Starts one more instance.
    pub fn restart(&self) -> anyhow::Result<()> {
        let status = Command::new("sh")
            .args(["-c", &self.start_command()])
            .status()?;
        if !status.success() {
            bail!("starting service {}: {status}", self.name);
        }
        Ok(())
    }

    /// Pids of its live processes (not zombies: a killed instance whose
    /// parent is gone may wait for a reaper that containers lack).
    pub fn pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid: &u32| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // `pid (comm) state ...`; comm may hold spaces and parentheses.
                let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                    return false;
                };
                let state = stat[close + 1..].split_whitespace().next();
                stat[open + 1..close] == self.name && state != Some("Z")
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Kills every instance (SIGKILL).
    pub fn kill(&self) {
        let _ = Command::new("pkill")
            .args(["-9", "-x", &self.name])
            .status();
    }

    /// The node file's table that allow-lists it: restarted by its start
    /// command, known to run by its process name.
    pub fn policy(&self) -> String {
        format!(
            "[services.{name}]\nrestart = [\"sh\", \"-c\", \"{cmd}\"]\nprocess = \"{name}\"\nconfirm_within = \"10s\"\n",
            name = self.name,
            cmd = self.start_command()
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tmpfs mounted on a temporary directory, unmounted on drop. Needs
/// root: fails loudly otherwise.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` bytes.
    pub fn mount(bytes: u64) -> anyhow::Result<Tmpfs> {
        if !crate::netns::running_as_root() {
            bail!("mounting a tmpfs needs root: run this as root (sudo), it cannot be skipped");
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_str().context("non-UTF-8 temporary path")?;
        crate::netns::run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", path],
        )?;
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The mount point as text (for configurations).
    pub fn path_text(&self) -> String {
        self.dir.path().display().to_string()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = crate::netns::run("umount", &["-l", &self.path_text()]) {
            eprintln!("{e}");
        }
    }
}
