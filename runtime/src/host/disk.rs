//! The `disk` capability: sizes of directory trees, like `du`, only under
//! the paths the node's policy lists ([`HostPolicy::disk_usage_paths`]).
//!
//! A scan can meet a huge tree, so it is bounded on the host side too:
//! at most [`MAX_ENTRIES`] entries and [`MAX_SCAN`] of time, whatever the
//! module's deadline (a call dropped at its deadline leaves its blocking
//! work running; this bound is what ends it). It stays on the filesystem of
//! the path it starts from and never follows a symbolic link, so it cannot
//! be led out of an allowed tree.

use crate::bindings::disk::{self, DirectorySize, DiskError, Usage};
use crate::host::blocking::Offloaded;
use crate::host::policy::HostPolicy;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::debug_span;

/// Entries (files and directories) one scan looks at, at most.
pub const MAX_ENTRIES: u64 = 2_000_000;
/// Longest one scan runs.
pub const MAX_SCAN: Duration = Duration::from_secs(10);
/// Deepest level a module may ask for.
pub const MAX_DEPTH: u32 = 8;
/// Most directories one answer lists.
pub const MAX_RESULTS: u32 = 100;

/// Host side of `disk` for one module instance.
pub struct DiskUsage {
    module: String,
    policy: Arc<HostPolicy>,
}

impl DiskUsage {
    pub fn new(module: &str, policy: Arc<HostPolicy>) -> DiskUsage {
        DiskUsage {
            module: module.to_owned(),
            policy,
        }
    }

    pub fn directory_sizes(
        &mut self,
        path: String,
        max_depth: u32,
        max_results: u32,
    ) -> Result<Usage, DiskError> {
        let _span = debug_span!("disk.directory_sizes", module = %self.module, path = %path.escape_debug(), max_depth, max_results).entered();
        if max_depth > MAX_DEPTH {
            return Err(DiskError::BadRequest(format!(
                "max-depth {max_depth} is above {MAX_DEPTH}"
            )));
        }
        if max_results == 0 || max_results > MAX_RESULTS {
            return Err(DiskError::BadRequest(format!(
                "max-results {max_results} is not between 1 and {MAX_RESULTS}"
            )));
        }
        let requested = Path::new(&path);
        if !requested.is_absolute() {
            return Err(DiskError::BadRequest(format!(
                "`{}` is not an absolute path",
                path.escape_debug()
            )));
        }
        // Resolved before the check, so neither `..` nor a symbolic link
        // can lead outside an allowed tree.
        let resolved = match fs::canonicalize(requested) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DiskError::NotFound(format!(
                    "`{}` does not exist",
                    path.escape_debug()
                )));
            }
            Err(e) => {
                return Err(DiskError::Io(format!("`{}`: {e}", path.escape_debug())));
            }
        };
        let allowed = self.policy.allowed_tree(&resolved).is_some();
        if !allowed {
            return Err(DiskError::NotAllowed(format!(
                "`{}` is not allowed by this node's policy (disk_usage_paths: {})",
                resolved.display(),
                if self.policy.disk_usage_paths.is_empty() {
                    "none".to_owned()
                } else {
                    self.policy
                        .disk_usage_paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        match fs::metadata(&resolved) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(DiskError::NotFound(format!(
                    "`{}` is not a directory",
                    resolved.display()
                )));
            }
            Err(e) => return Err(DiskError::Io(format!("`{}`: {e}", resolved.display()))),
        }
        let deadline = Instant::now() + MAX_SCAN;
        let mut usage = scan(&resolved, max_depth, MAX_ENTRIES, deadline)
            .map_err(|e| DiskError::Io(format!("`{}`: {e}", resolved.display())))?;
        usage
            .directories
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path)));
        usage.directories.truncate(max_results as usize);
        Ok(usage)
    }
}

/// One directory being read.
struct Frame {
    path: PathBuf,
    depth: u32,
    bytes: u64,
    entries: fs::ReadDir,
}

/// Sizes of `root` and every directory down to `max_depth` below it,
/// unsorted. Iterative (a deep tree cannot overflow the stack); unreadable
/// entries are skipped, as `du` does after its complaint.
fn scan(
    root: &Path,
    max_depth: u32,
    max_entries: u64,
    deadline: Instant,
) -> std::io::Result<Usage> {
    let meta = fs::symlink_metadata(root)?;
    let device = meta.dev();
    let mut stack = vec![Frame {
        path: root.to_path_buf(),
        depth: 0,
        bytes: meta.blocks() * 512,
        entries: fs::read_dir(root)?,
    }];
    let mut out = Vec::new();
    let mut files = 0u64;
    let mut seen = 0u64;
    let mut complete = true;
    while let Some(top) = stack.last_mut() {
        let next = if complete { top.entries.next() } else { None };
        let Some(entry) = next else {
            let Some(done) = stack.pop() else { break };
            if done.depth <= max_depth {
                out.push(DirectorySize {
                    path: done.path.display().to_string(),
                    bytes: done.bytes,
                    depth: done.depth,
                });
            }
            if let Some(parent) = stack.last_mut() {
                parent.bytes += done.bytes;
            }
            continue;
        };
        seen += 1;
        if seen > max_entries || (seen.is_multiple_of(1024) && Instant::now() > deadline) {
            // What was counted so far still adds up into the parents as
            // the stack unwinds: the sizes become lower bounds.
            complete = false;
            continue;
        }
        let Ok(entry) = entry else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        let size = meta.blocks() * 512;
        if meta.is_dir() && meta.dev() == device {
            match fs::read_dir(entry.path()) {
                Ok(entries) => {
                    let depth = top.depth + 1;
                    stack.push(Frame {
                        path: entry.path(),
                        depth,
                        bytes: size,
                        entries,
                    });
                }
                Err(_) => top.bytes += size,
            }
        } else {
            if !meta.is_dir() {
                files += 1;
            }
            top.bytes += size;
        }
    }
    Ok(Usage {
        directories: out,
        files,
        complete,
    })
}

impl disk::Host for Offloaded<DiskUsage> {
    async fn directory_sizes(
        &mut self,
        path: String,
        max_depth: u32,
        max_results: u32,
    ) -> wasmtime::Result<Result<Usage, DiskError>> {
        self.run("disk.directory-sizes", move |d| {
            d.directory_sizes(path, max_depth, max_results)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(paths: &[&Path]) -> Arc<HostPolicy> {
        Arc::new(HostPolicy {
            disk_usage_paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            ..HostPolicy::default()
        })
    }

    #[test]
    fn sizes_add_up_and_the_largest_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big/inner");
        fs::create_dir_all(&big).unwrap();
        fs::create_dir_all(dir.path().join("small")).unwrap();
        fs::write(big.join("f"), vec![1u8; 256 * 1024]).unwrap();
        fs::write(dir.path().join("small/f"), vec![1u8; 8 * 1024]).unwrap();
        let mut d = DiskUsage::new("t", policy(&[dir.path()]));
        let root = dir.path().display().to_string();
        let usage = d.directory_sizes(root.clone(), 1, 10).unwrap();
        assert!(usage.complete);
        assert_eq!(usage.files, 2);
        let canonical = fs::canonicalize(dir.path()).unwrap();
        assert_eq!(usage.directories[0].path, canonical.display().to_string());
        assert_eq!(
            usage.directories[1].path,
            canonical.join("big").display().to_string()
        );
        assert!(usage.directories[1].bytes >= 256 * 1024);
        // Depth 1 only: `big/inner` is counted in `big`, not listed.
        assert!(usage.directories.iter().all(|d| d.depth <= 1));
        assert_eq!(usage.directories.len(), 3);
    }

    #[test]
    fn paths_outside_the_policy_are_refused_even_through_dotdot() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("allowed")).unwrap();
        let mut d = DiskUsage::new("t", policy(&[&dir.path().join("allowed")]));
        let escape = format!("{}/allowed/..", dir.path().display());
        assert!(matches!(
            d.directory_sizes(escape, 1, 10),
            Err(DiskError::NotAllowed(_))
        ));
        let mut none = DiskUsage::new("t", policy(&[]));
        let Err(DiskError::NotAllowed(why)) = none.directory_sizes("/".into(), 1, 10) else {
            panic!("allowed without a policy")
        };
        assert!(why.contains("not allowed by this node's policy"), "{why}");
        assert!(matches!(
            d.directory_sizes("relative".into(), 1, 10),
            Err(DiskError::BadRequest(_))
        ));
        assert!(matches!(
            d.directory_sizes(dir.path().join("allowed").display().to_string(), 99, 10),
            Err(DiskError::BadRequest(_))
        ));
    }

    #[test]
    fn a_scan_past_its_entry_bound_is_marked_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        let usage = scan(dir.path(), 1, 3, Instant::now() + MAX_SCAN).unwrap();
        assert!(!usage.complete);
        assert_eq!(usage.directories.len(), 1);
    }
}
