//! The `state` capability: a module's key/value state, persisted in the
//! node's database under the module's name, so it survives restarts of the
//! module and of the runtime; within the module's quota (keys and values
//! together), which a write past it gets back as an error value.

use crate::bindings::state;
use crate::host::blocking::Offloaded;
use agad_storage::Tree;

pub struct ModuleState {
    tree: Tree,
    prefix: Vec<u8>,
    quota_bytes: u64,
    /// Bytes the module holds, counted on its first write.
    used_bytes: Option<u64>,
}

/// What every key of `module`'s state starts with.
pub fn key_prefix(module: &str) -> Vec<u8> {
    let mut prefix = module.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

impl ModuleState {
    /// `tree` is shared by all modules; keys are prefixed by the module
    /// name. No quota until [`ModuleState::with_quota`].
    pub fn new(tree: Tree, module: &str) -> ModuleState {
        ModuleState {
            tree,
            prefix: key_prefix(module),
            quota_bytes: u64::MAX,
            used_bytes: None,
        }
    }

    pub fn with_quota(mut self, bytes: u64) -> ModuleState {
        self.quota_bytes = bytes;
        self
    }

    /// Bytes the module's keys and values take now.
    pub fn used_bytes(&mut self) -> Result<u64, agad_storage::StorageError> {
        if let Some(used) = self.used_bytes {
            return Ok(used);
        }
        let used = self
            .tree
            .scan_prefix(&self.prefix)?
            .iter()
            .map(|(k, v)| (k.len() - self.prefix.len() + v.len()) as u64)
            .sum();
        self.used_bytes = Some(used);
        Ok(used)
    }

    /// `(used, quota)` once the module has written, if it has a quota.
    pub fn usage(&self) -> Option<(u64, u64)> {
        let used = self.used_bytes?;
        (self.quota_bytes != u64::MAX).then_some((used, self.quota_bytes))
    }

    /// Bytes `key` takes now (0 when absent).
    fn entry_bytes(&self, key: &str) -> Result<u64, agad_storage::StorageError> {
        Ok(self
            .tree
            .get(&self.key(key))?
            .map_or(0, |v| (key.len() + v.len()) as u64))
    }

    fn key(&self, key: &str) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key.as_bytes());
        k
    }
}

/// The `state` calls, run on the blocking pool by [`Offloaded`] (sled may
/// wait on the disk).
impl ModuleState {
    pub fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.tree.get(&self.key(&key)) {
            Ok(value) => value,
            Err(e) => {
                tracing::error!(key, "state read failed: {e}");
                None
            }
        }
    }

    pub fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), state::StateError> {
        let unavailable = |e: agad_storage::StorageError| {
            tracing::error!(key, "state write failed: {e}");
            state::StateError::Unavailable(e.to_string())
        };
        let used = self.used_bytes().map_err(unavailable)?;
        let old = self.entry_bytes(&key).map_err(unavailable)?;
        let new = (key.len() + value.len()) as u64;
        let after = used.saturating_sub(old).saturating_add(new);
        if after > self.quota_bytes && new > old {
            return Err(state::StateError::QuotaExceeded(self.quota_bytes));
        }
        self.tree
            .insert(&self.key(&key), &value)
            .map_err(unavailable)?;
        self.used_bytes = Some(after);
        Ok(())
    }

    pub fn delete(&mut self, key: String) {
        let freed = match self.entry_bytes(&key) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(key, "state read failed: {e}");
                return;
            }
        };
        match self.tree.remove(&self.key(&key)) {
            Ok(()) => {
                if let Some(used) = &mut self.used_bytes {
                    *used = used.saturating_sub(freed);
                }
            }
            Err(e) => tracing::error!(key, "state delete failed: {e}"),
        }
    }
}

impl state::Host for Offloaded<ModuleState> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.run("state.get", move |s| s.get(key)).await
    }
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), state::StateError>> {
        self.run("state.set", move |s| s.set(key, value)).await
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.run("state.delete", move |s| s.delete(key)).await
    }
}
