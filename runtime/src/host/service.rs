//! The `service` capability: restarting a service of the node and
//! confirming it runs, only for the services the node's policy
//! allow-lists ([`HostPolicy::services`], none by default), each the way
//! the policy says: a command run without a shell (`systemctl restart
//! nginx`, or a script of the operator's), then a wait until a live
//! process of the name the policy gives appears.
//!
//! The module names a service; it never chooses what runs. A name not on
//! the allow-list gets `not-allowed` back, whatever the module asks.

use crate::bindings::service::{self, ServiceError, ServiceStatus};
use crate::host::blocking::Offloaded;
use crate::host::policy::{HostPolicy, ServicePolicy};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug_span, info, warn};

/// How often the confirmation looks for the process.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Host side of `service` for one module instance.
pub struct Services {
    module: String,
    policy: Arc<HostPolicy>,
}

impl Services {
    pub fn new(module: &str, policy: Arc<HostPolicy>) -> Services {
        Services {
            module: module.to_owned(),
            policy,
        }
    }

    pub fn allowed(&mut self) -> Vec<String> {
        self.policy.services.keys().cloned().collect()
    }

    fn policy_of(&self, name: &str) -> Result<&ServicePolicy, ServiceError> {
        self.policy.services.get(name).ok_or_else(|| {
            ServiceError::NotAllowed(format!(
                "service `{}` is not allowed by this node's policy (allowed: {})",
                name.escape_debug(),
                if self.policy.services.is_empty() {
                    "none".to_owned()
                } else {
                    self.policy
                        .services
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))
        })
    }

    pub fn status(&mut self, name: String) -> Result<ServiceStatus, ServiceError> {
        let _span =
            debug_span!("service.status", module = %self.module, service = %name.escape_debug())
                .entered();
        let policy = self.policy_of(&name)?;
        let pids = live_pids(&policy.process);
        Ok(ServiceStatus {
            was_running: !pids.is_empty(),
            running: !pids.is_empty(),
            pids,
            name,
        })
    }

    pub fn restart(&mut self, name: String) -> Result<ServiceStatus, ServiceError> {
        let _span =
            debug_span!("service.restart", module = %self.module, service = %name.escape_debug())
                .entered();
        let policy = self.policy_of(&name)?.clone();
        let before = live_pids(&policy.process);
        info!(module = %self.module, service = %name, running = !before.is_empty(), "restarting service");
        run_bounded(&policy.restart, policy.restart_timeout).map_err(|why| {
            warn!(module = %self.module, service = %name, "restart failed: {why}");
            ServiceError::Failed(format!("restarting `{name}`: {why}"))
        })?;
        let deadline = Instant::now() + policy.confirm_within;
        let pids = loop {
            let pids = live_pids(&policy.process);
            if !pids.is_empty() || Instant::now() >= deadline {
                break pids;
            }
            std::thread::sleep(POLL_EVERY);
        };
        Ok(ServiceStatus {
            name,
            was_running: !before.is_empty(),
            running: !pids.is_empty(),
            pids,
        })
    }
}

/// Live (not zombie) processes named `process`.
fn live_pids(process: &str) -> Vec<u32> {
    let (matching, _) = crate::host::os::scan_proc_names(&[process.to_owned()]);
    let mut pids: Vec<u32> = matching
        .into_iter()
        .map(|p| p.as_u32())
        .filter(|pid| !is_zombie(*pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// A killed process whose parent has not reaped it yet keeps its name in
/// `/proc`: it does not run.
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the name, which is in parentheses and may hold
    // spaces and parentheses itself.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_none_or(|state| matches!(state, "Z" | "X" | "x"))
}

/// Most of the restart command's stderr kept for the error message.
const STDERR_KEPT: usize = 4096;

/// Runs `argv` to completion within `timeout` (killed past it), its
/// output discarded but for the first line of what it wrote to stderr.
///
/// Its stderr is read without blocking while it runs: a command writing
/// more than a pipe holds would otherwise stall until its timeout, and a
/// daemon it leaves behind holding the pipe would make a blocking read
/// wait for as long as that daemon lives.
fn run_bounded(argv: &[String], timeout: Duration) -> Result<(), String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "the policy's restart command is empty".to_owned())?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let mut pipe = child.stderr.take();
    if let Some(p) = &pipe
        && rustix::fs::fcntl_setfl(p, rustix::fs::OFlags::NONBLOCK).is_err()
    {
        // Without non-blocking reads the message is not worth a hang.
        pipe = None;
    }
    let mut stderr = Vec::new();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(p) = pipe.as_mut() {
            drain(p, &mut stderr);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{program}` did not finish within {} ms and was killed",
                    timeout.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for `{program}`: {e}")),
        }
    };
    if let Some(p) = pipe.as_mut() {
        drain(p, &mut stderr);
    }
    if status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&stderr);
    let first = stderr.lines().next().unwrap_or_default();
    Err(format!(
        "`{program}` failed ({status}){}",
        if first.is_empty() {
            String::new()
        } else {
            format!(": {}", agad_protocol::text::excerpt(first, 200))
        }
    ))
}

/// Reads what the non-blocking `pipe` holds now, keeping the first
/// [`STDERR_KEPT`] bytes.
fn drain(pipe: &mut std::process::ChildStderr, kept: &mut Vec<u8>) {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = STDERR_KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

impl service::Host for Offloaded<Services> {
    async fn allowed(&mut self) -> wasmtime::Result<Vec<String>> {
        self.run("service.allowed", Services::allowed).await
    }

    async fn status(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<ServiceStatus, ServiceError>> {
        self.run("service.status", move |s| s.status(name)).await
    }

    async fn restart(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<ServiceStatus, ServiceError>> {
        self.run("service.restart", move |s| s.restart(name)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_off_the_allow_list_are_refused() {
        let mut s = Services::new("t", Arc::new(HostPolicy::default()));
        let Err(ServiceError::NotAllowed(why)) = s.restart("sshd".into()) else {
            panic!("restarted without a policy")
        };
        assert!(why.contains("not allowed by this node's policy"), "{why}");
    }

    #[test]
    fn a_failing_or_slow_command_is_an_error() {
        let err = run_bounded(&["false".into()], Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("failed"), "{err}");
        // Its first stderr line says why, even when it wrote far more than
        // a pipe holds, and a daemon it left holding the pipe is no wait.
        let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let err = run_bounded(
            &sh("echo 'unit not found' >&2; head -c 200000 /dev/zero >&2; (sleep 5 &); exit 3"),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(err.contains("unit not found"), "{err}");
        let err =
            run_bounded(&["sleep".into(), "5".into()], Duration::from_millis(100)).unwrap_err();
        assert!(err.contains("killed"), "{err}");
        assert!(run_bounded(&["true".into()], Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn this_process_is_found_running() {
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        let pids = live_pids(me.trim_end());
        assert!(pids.contains(&std::process::id()), "{pids:?}");
    }
}
