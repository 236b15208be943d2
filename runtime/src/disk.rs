//! The node's disk: a reserve kept for the outbox, and an alarm when the
//! data directory's filesystem runs low.
//!
//! The reserve is a file of [`DiskPolicy::reserve_bytes`] real (allocated)
//! blocks in the data directory. Whatever fills the disk — a module's state
//! up to its quota, another program, the node's own logs — the node can
//! give that room back the moment it needs it: at start, so that its
//! databases open on a full disk, and when a push to the outbox fails, so
//! that alarms keep being queued. It is made again once there is room.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the node keeps free and when it alarms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskPolicy {
    /// Size of the reserve file, in bytes; 0 keeps none.
    pub reserve_bytes: u64,
    /// Below this many bytes available on the data directory's filesystem,
    /// the node raises `agad.disk-low` (and clears it above twice as many).
    pub low_free_bytes: u64,
    /// How often the filesystem is looked at.
    pub check_every: Duration,
}

impl Default for DiskPolicy {
    fn default() -> Self {
        DiskPolicy {
            reserve_bytes: 16 * 1024 * 1024,
            low_free_bytes: 64 * 1024 * 1024,
            check_every: Duration::from_secs(30),
        }
    }
}

/// Bytes available to this process on the filesystem holding `path`.
pub fn available_bytes(path: &Path) -> Option<u64> {
    rustix::fs::statvfs(path)
        .ok()
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// The reserve file.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    pub fn new(data_dir: &Path, bytes: u64) -> Reserve {
        Reserve {
            path: data_dir.join("disk-reserve"),
            bytes,
        }
    }

    pub fn is_held(&self) -> bool {
        self.path.exists()
    }

    /// Gives the room back; true if there was a reserve to give.
    pub fn release(&self) -> bool {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(path = %self.path.display(), bytes = self.bytes, "released the disk reserve");
                true
            }
            Err(_) => false,
        }
    }

    /// Makes the reserve if it is missing and the disk has room for it and
    /// as much again; a failed attempt leaves no partial file.
    pub fn ensure(&self) {
        if self.bytes == 0 || self.is_held() {
            return;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if available_bytes(dir).is_none_or(|free| free < self.bytes.saturating_mul(2)) {
            return;
        }
        let made = std::fs::File::create(&self.path).and_then(|file| {
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.bytes)?;
            file.sync_all()
        });
        if let Err(e) = made {
            tracing::warn!(path = %self.path.display(), "cannot make the disk reserve: {e}");
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Raise/clear state of the low-disk alarm (hysteresis: clear at twice the
/// threshold, so a value hovering around it does not flap).
#[derive(Debug, Default)]
pub struct LowDisk {
    raised: bool,
}

impl LowDisk {
    /// `Some(true)` to raise, `Some(false)` to clear, `None` for no change.
    pub fn update(&mut self, available: u64, policy: &DiskPolicy) -> Option<bool> {
        if !self.raised && available < policy.low_free_bytes {
            self.raised = true;
            return Some(true);
        }
        if self.raised && available >= policy.low_free_bytes.saturating_mul(2) {
            self.raised = false;
            return Some(false);
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn low_disk_raises_once_and_clears_at_twice_the_threshold() {
        let policy = DiskPolicy {
            low_free_bytes: 100,
            ..DiskPolicy::default()
        };
        let mut low = LowDisk::default();
        assert_eq!(low.update(500, &policy), None);
        assert_eq!(low.update(99, &policy), Some(true));
        assert_eq!(low.update(50, &policy), None);
        assert_eq!(low.update(150, &policy), None, "not yet: hysteresis");
        assert_eq!(low.update(200, &policy), Some(false));
    }

    #[test]
    fn a_reserve_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path(), 1024 * 1024);
        reserve.ensure();
        assert!(reserve.is_held());
        let meta = std::fs::metadata(dir.path().join("disk-reserve")).unwrap();
        assert_eq!(meta.len(), 1024 * 1024);
        assert!(reserve.release());
        assert!(!reserve.release(), "nothing left to give");
        reserve.ensure();
        assert!(reserve.is_held());
    }
}
