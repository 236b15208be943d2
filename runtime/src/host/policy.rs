//! What a node's policy allows the capabilities that act on the node
//! beyond reading metrics: which directory trees `disk` may measure and
//! which services `service` may restart, and how. Empty by default, so a
//! node grants neither until its operator says so (`disk_usage_paths`,
//! `[services.<name>]` in the node file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The node's policy for `disk` and `service` (the capabilities themselves
/// are granted by `NodeSettings::policy`, like every other).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// Directory trees `disk.directory-sizes` may measure (absolute,
    /// symbolic links resolved); a path under none of them is refused.
    pub disk_usage_paths: Vec<PathBuf>,
    /// Services `service.restart` may restart, by name.
    pub services: BTreeMap<String, ServicePolicy>,
}

/// How one allow-listed service is restarted and known to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePolicy {
    /// Program and arguments that restart it, run without a shell (e.g.
    /// `["systemctl", "restart", "nginx"]`).
    pub restart: Vec<String>,
    /// The process name (as `ps -o comm` shows it, or argv[0]'s file name)
    /// whose presence means the service runs.
    pub process: String,
    /// Longest the restart command may run before it is killed.
    pub restart_timeout: Duration,
    /// How long, after the command, to wait for the process to appear.
    pub confirm_within: Duration,
}

impl ServicePolicy {
    pub const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_CONFIRM_WITHIN: Duration = Duration::from_secs(5);
    /// Upper bound of either wait: a module call never waits longer.
    pub const MAX_WAIT: Duration = Duration::from_secs(60);
}

impl HostPolicy {
    /// The allowed tree `path` (absolute, symbolic links resolved) lies
    /// in, if any. The trees are resolved too, so that a policy naming
    /// `/var/run` allows what `/run` holds; component-wise, so `/var/logs`
    /// is not inside `/var/log`.
    pub fn allowed_tree(&self, path: &Path) -> Option<&Path> {
        self.disk_usage_paths
            .iter()
            .find(|tree| {
                let resolved = std::fs::canonicalize(tree).unwrap_or_else(|_| tree.to_path_buf());
                path.starts_with(resolved)
            })
            .map(PathBuf::as_path)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_allowed_only_inside_a_listed_tree() {
        let policy = HostPolicy {
            disk_usage_paths: vec!["/var/log".into()],
            ..HostPolicy::default()
        };
        assert!(policy.allowed_tree(Path::new("/var/log")).is_some());
        assert!(policy.allowed_tree(Path::new("/var/log/apt")).is_some());
        // Component-wise, not by string prefix.
        assert!(policy.allowed_tree(Path::new("/var/logs")).is_none());
        assert!(policy.allowed_tree(Path::new("/var")).is_none());
        assert!(HostPolicy::default().allowed_tree(Path::new("/")).is_none());
    }
}
