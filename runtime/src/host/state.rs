//! The `state` capability: a module's key/value state, persisted in the
//! node's database under the module's name, so it survives restarts of the
//! module and of the runtime.

use crate::bindings::state;
use crate::host::blocking::Offloaded;
use agad_storage::Tree;

pub struct ModuleState {
    tree: Tree,
    prefix: Vec<u8>,
}

impl ModuleState {
    /// `tree` is shared by all modules; keys are prefixed by the module name.
    pub fn new(tree: Tree, module: &str) -> ModuleState {
        let mut prefix = module.as_bytes().to_vec();
        prefix.push(0);
        ModuleState { tree, prefix }
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

    pub fn set(&mut self, key: String, value: Vec<u8>) {
        if let Err(e) = self.tree.insert(&self.key(&key), &value) {
            tracing::error!(key, "state write failed: {e}");
        }
    }

    pub fn delete(&mut self, key: String) {
        if let Err(e) = self.tree.remove(&self.key(&key)) {
            tracing::error!(key, "state delete failed: {e}");
        }
    }
}

impl state::Host for Offloaded<ModuleState> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.run("state.get", move |s| s.get(key)).await
    }
    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.run("state.set", move |s| s.set(key, value)).await
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.run("state.delete", move |s| s.delete(key)).await
    }
}
