//! AGAD's storage interface: named key/value trees in one database per process.
//!
//! What it is for: every base a process keeps (module state, accepted
//! sequences, later the outbox and the replicated bases) goes through
//! [`Database`] and [`Tree`], so the engine underneath can be replaced in one
//! place. The embedded engine is sled 0.34. What it is not for: encoding —
//! values are bytes, callers choose their format.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open database at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("storage error: {0}")]
    Engine(#[from] sled::Error),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// One process's database. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    db: sled::Db,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").finish_non_exhaustive()
    }
}

impl Database {
    /// Opens (creating on first start) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Database> {
        let db = sled::Config::new()
            .path(dir)
            // Small nodes: the default 1 GiB page cache would dwarf the runtime.
            .cache_capacity(4 * 1024 * 1024)
            .open()
            .map_err(|source| StorageError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(Database { db })
    }

    /// A database that lives only as long as the process (tests, benchmarks).
    pub fn temporary() -> Result<Database> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(Database { db })
    }

    pub fn tree(&self, name: &str) -> Result<Tree> {
        Ok(Tree {
            tree: self.db.open_tree(name)?,
        })
    }

    /// Waits until everything written so far is on disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// A number never returned before by this database, even across restarts.
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }
}

/// A named key/value tree. Cheap to clone; writes are atomic per key.
#[derive(Clone)]
pub struct Tree {
    tree: sled::Tree,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("name", &String::from_utf8_lossy(&self.tree.name()))
            .finish()
    }
}

impl Tree {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree.insert(key, value)?;
        Ok(())
    }

    pub fn remove(&self, key: &[u8]) -> Result<()> {
        self.tree.remove(key)?;
        Ok(())
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree
            .scan_prefix(prefix)
            .map(|entry| {
                let (k, v) = entry?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Up to `limit` entries with keys greater than `after`, in key order.
    pub fn entries_after(&self, after: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        self.tree
            .range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|entry| {
                let (k, v) = entry?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Up to `limit` entries with keys less than `before`, newest key first
    /// (so a query for the latest rows need not read the older ones).
    pub fn entries_before(&self, before: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree
            .range::<&[u8], _>(..before)
            .rev()
            .take(limit)
            .map(|entry| {
                let (k, v) = entry?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Inserts `value` under `key` unless the key is already there; true if inserted.
    pub fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        Ok(self
            .tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))?
            .is_ok())
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Waits until this tree's writes are on disk.
    pub fn flush(&self) -> Result<()> {
        self.tree.flush()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("agad-storage-{}", std::process::id()));
        {
            let db = Database::open(&dir).unwrap();
            let t = db.tree("state").unwrap();
            t.insert(b"a/1", b"one").unwrap();
            t.insert(b"a/2", b"two").unwrap();
            t.insert(b"b/1", b"other").unwrap();
            t.remove(b"a/2").unwrap();
            db.flush().unwrap();
        }
        let db = Database::open(&dir).unwrap();
        let t = db.tree("state").unwrap();
        assert_eq!(t.get(b"a/1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(t.get(b"a/2").unwrap(), None);
        let a: Vec<_> = t.scan_prefix(b"a/").unwrap();
        assert_eq!(a, vec![(b"a/1".to_vec(), b"one".to_vec())]);
        let after: Vec<_> = t.entries_after(b"a/1", 10).unwrap();
        assert_eq!(after, vec![(b"b/1".to_vec(), b"other".to_vec())]);
        let before: Vec<_> = t.entries_before(b"b/1", 10).unwrap();
        assert_eq!(before, vec![(b"a/1".to_vec(), b"one".to_vec())]);
        assert!(!t.insert_new(b"b/1", b"again").unwrap());
        assert!(t.insert_new(b"c/1", b"new").unwrap());
        assert_eq!(t.get(b"b/1").unwrap().as_deref(), Some(&b"other"[..]));
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
