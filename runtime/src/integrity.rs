//! The integrity of the code a node holds. Module bytes are kept as files,
//! `<data>/modules/<sha256>.wasm` (written atomically, tmp + rename), their
//! signed manifests in the node's database; compiled artefacts are
//! `<data>/compiled/<sha256>.cwasm`, each with the SHA-256 recorded when it
//! was written ([`crate::engine`]). Every [`IntegrityPolicy::check_every`]
//! the managed node re-hashes each module file against its manifest's
//! hash and each artefact against its recorded digest ([`ModuleStore::check`],
//! [`crate::ModuleEngine::check_artefact`]). What fails is quarantined by
//! [`crate::managed`]: the module stopped and not restarted, its file and
//! artefact deleted (so the node no longer claims that hash and its manager
//! sends the bytes again), and the security alarm `agad.module-tampered`
//! raised until the good copy runs again.
//!
//! A domain manager also asks the node to prove what it holds
//! ([`agad_protocol::attest`]): [`ModuleStore::attest`] answers a nonce with
//! digests of the bytes read from disk at that moment.

use crate::refusals::AlarmSpec;
use agad_protocol::attest::{self, Artefact, AttestedModule, Nonce};
use agad_protocol::message::Severity;
use agad_protocol::{Area, Bundle};
use agad_storage::{StorageError, Tree};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The alarm of a quarantined module.
pub const TAMPERED: AlarmSpec = AlarmSpec {
    tree: "integrity-alarms",
    key: TAMPERED_KEY,
    metric: "module.tampered",
    area: Area::Security,
    severity: Severity::Critical,
    raised: "quarantined on this node",
    cleared: "runs its good copy again",
};

pub const TAMPERED_KEY: &str = "agad.module-tampered";

/// How often the node re-hashes what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegrityPolicy {
    pub check_every: Duration,
}

impl Default for IntegrityPolicy {
    fn default() -> Self {
        IntegrityPolicy {
            check_every: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("module file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored manifest of {hash} is unreadable: {reason}")]
    Manifest { hash: String, reason: String },
    /// The bytes on disk are not those the manifest signed.
    #[error(
        "module file {path} was altered: its SHA-256 is {actual}, its manifest says {expected}"
    )]
    Altered {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// Module bytes as files, manifests in the database.
pub struct ModuleStore {
    dir: PathBuf,
    /// Module hash → the bundle without its bytes.
    manifests: Tree,
}

/// What a check of one module file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    Intact,
    /// Altered or unreadable; the reason.
    Bad(String),
}

impl ModuleStore {
    /// Opens the store in `dir` (created if missing). Bundles an earlier
    /// version kept whole in `manifests` are moved out to files.
    pub fn open(dir: &Path, manifests: Tree) -> Result<ModuleStore, IntegrityError> {
        let io = |source| IntegrityError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let store = ModuleStore {
            dir: dir.to_owned(),
            manifests,
        };
        for (key, value) in store.manifests.scan_prefix(b"")? {
            let hash = String::from_utf8_lossy(&key).into_owned();
            match Bundle::from_bytes(&value) {
                Ok(b) if b.has_bytes() => {
                    store.write_file(&hash, &b.wasm)?;
                    store
                        .manifests
                        .insert(&key, &b.without_bytes().to_bytes())?;
                    tracing::info!(%hash, "module bytes moved from the database to a file");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%hash, "dropping an unreadable stored bundle: {e}");
                    store.manifests.remove(&key)?;
                }
            }
        }
        store.manifests.flush()?;
        Ok(store)
    }

    /// The file holding module `hash`.
    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    /// Hashes (hex) of the modules held.
    pub fn held(&self) -> Vec<String> {
        self.manifests
            .scan_prefix(b"")
            .map(|all| {
                all.into_iter()
                    .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether module `hash` is held.
    pub fn holds(&self, hash: &str) -> bool {
        self.manifests.get(hash.as_bytes()).ok().flatten().is_some()
    }

    /// The stored manifest (a bundle without bytes) of `hash`.
    pub fn manifest(&self, hash: &str) -> Result<Option<Bundle>, IntegrityError> {
        let Some(bytes) = self.manifests.get(hash.as_bytes())? else {
            return Ok(None);
        };
        Bundle::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| IntegrityError::Manifest {
                hash: hash.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Keeps a verified bundle: bytes to a file (replacing one that does not
    /// match), manifest to the database.
    pub fn put(&self, bundle: &Bundle) -> Result<(), IntegrityError> {
        let hash = bundle.manifest.sha256_hex();
        if self.check(&hash) != FileCheck::Intact || !self.holds(&hash) {
            self.write_file(&hash, &bundle.wasm)?;
            self.manifests
                .insert(hash.as_bytes(), &bundle.without_bytes().to_bytes())?;
            self.manifests.flush()?;
        }
        Ok(())
    }

    /// Puts back the file of a module held, from bytes a manager sent again
    /// (after a failed attestation); only bytes whose SHA-256 is `hash`,
    /// which the stored manifest (verified when it came) signed.
    pub fn restore(&self, hash: &str, bytes: &[u8]) -> Result<bool, IntegrityError> {
        let matches = hex::encode(agad_protocol::bundle::sha256(bytes)) == hash;
        if !matches || !self.holds(hash) || self.check(hash) == FileCheck::Intact {
            return Ok(false);
        }
        self.write_file(hash, bytes)?;
        Ok(true)
    }

    /// The whole bundle of `hash` with its bytes read from disk now, checked
    /// against the manifest's hash; `None` if not held.
    pub fn get(&self, hash: &str) -> Result<Option<Bundle>, IntegrityError> {
        let Some(manifest) = self.manifest(hash)? else {
            return Ok(None);
        };
        let path = self.path(hash);
        let wasm = std::fs::read(&path).map_err(|source| IntegrityError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = hex::encode(agad_protocol::bundle::sha256(&wasm));
        if actual != hash {
            return Err(IntegrityError::Altered {
                path,
                expected: hash.to_owned(),
                actual,
            });
        }
        Ok(Some(Bundle { wasm, ..manifest }))
    }

    /// Re-hashes the file of module `hash` against its name (the hash its
    /// signed manifest states, which keys the file).
    pub fn check(&self, hash: &str) -> FileCheck {
        match self.intact_bytes(hash) {
            Ok(_) => FileCheck::Intact,
            Err(why) => FileCheck::Bad(why),
        }
    }

    /// Module `hash`'s bytes as read from disk now, if they still hash to
    /// it; otherwise why not.
    fn intact_bytes(&self, hash: &str) -> Result<Vec<u8>, String> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("module file {} cannot be read: {e}", path.display()))?;
        let actual = hex::encode(agad_protocol::bundle::sha256(&bytes));
        if actual != hash {
            return Err(format!(
                "module file {} was altered (SHA-256 {actual}, signed {hash})",
                path.display()
            ));
        }
        Ok(bytes)
    }

    /// Forgets module `hash`: its file and its manifest.
    pub fn remove(&self, hash: &str) {
        let path = self.path(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(path = %path.display(), "cannot remove module file: {e}"),
        }
        if let Err(e) = self
            .manifests
            .remove(hash.as_bytes())
            .and_then(|()| self.manifests.flush())
        {
            tracing::error!(%hash, "cannot forget a stored module: {e}");
        }
    }

    /// The answer for module `hash` to `nonce`: a digest of its bytes as
    /// read from disk now (the parent judges them against its own copy).
    /// The same bytes are checked against the hash first: bytes altered
    /// since the node's last check are caught here, as the node's own
    /// finding (`Err`, why), rather than left for the parent to find.
    /// `Ok(None)`: no manifest kept for that hash.
    pub fn attest(
        &self,
        hash: &str,
        nonce: &Nonce,
        artefact: Artefact,
    ) -> Result<Option<AttestedModule>, String> {
        let Some(manifest) = self.manifest(hash).ok().flatten() else {
            return Ok(None);
        };
        let bytes = self.intact_bytes(hash)?;
        Ok(Some(AttestedModule {
            name: manifest.manifest.name,
            sha256: hash.to_owned(),
            proof: attest::proof(nonce, &bytes),
            artefact,
        }))
    }

    fn write_file(&self, hash: &str, bytes: &[u8]) -> Result<(), IntegrityError> {
        let path = self.path(hash);
        let io = |source| IntegrityError::Io {
            path: path.clone(),
            source,
        };
        // A temporary file of its own: two runs of one specialist may store
        // the same module at once.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        // On disk before it is renamed into place: a crash leaves either
        // the old file or the whole new one.
        file.as_file().sync_all().map_err(io)?;
        file.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::{ManifestSpec, SecretKey};

    fn bundle(wasm: &[u8]) -> Bundle {
        let spec = ManifestSpec {
            name: "m".into(),
            version: semver::Version::new(1, 0, 0),
            sequence: 1,
            kind: agad_protocol::Kind::Inspector,
            area: Area::Fault,
            capabilities: Vec::new(),
            limits: Default::default(),
            valid_for_days: 30,
            config: Default::default(),
            emits: Default::default(),
        };
        Bundle::sign(spec, wasm.to_vec(), &SecretKey::generate(), 1_800_000_000)
    }

    #[test]
    fn bytes_live_in_a_file_and_an_altered_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = agad_storage::Database::temporary().unwrap();
        let store =
            ModuleStore::open(&dir.path().join("modules"), db.tree("bundles").unwrap()).unwrap();
        let b = bundle(b"\0asm-module-bytes");
        let hash = b.manifest.sha256_hex();
        store.put(&b).unwrap();
        assert_eq!(store.held(), vec![hash.clone()]);
        assert_eq!(store.check(&hash), FileCheck::Intact);
        assert_eq!(store.get(&hash).unwrap().unwrap(), b);

        let nonce = attest::nonce();
        let good = store
            .attest(&hash, &nonce, Artefact::Absent)
            .unwrap()
            .unwrap();
        assert_eq!(good.proof, attest::proof(&nonce, &b.wasm));

        std::fs::write(store.path(&hash), b"\0asm-module-bytEs").unwrap();
        assert!(matches!(store.check(&hash), FileCheck::Bad(_)));
        assert!(matches!(
            store.get(&hash),
            Err(IntegrityError::Altered { .. })
        ));
        // Attesting reads the bytes once and checks them before proving:
        // the alteration is the node's own finding, whenever it happened.
        let why = store.attest(&hash, &nonce, Artefact::Absent).unwrap_err();
        assert!(why.contains("was altered"), "{why}");

        // Put again (the good copy redeployed), the file is replaced.
        store.put(&b).unwrap();
        assert_eq!(store.check(&hash), FileCheck::Intact);
        store.remove(&hash);
        assert!(store.held().is_empty() && !store.path(&hash).exists());
    }

    #[test]
    fn one_module_stored_by_several_tasks_at_once_is_stored() {
        // Two runs of one specialist, sent in one tick, store its module
        // at the same moment (seen in CI as "module file ...: No such file").
        let dir = tempfile::tempdir().unwrap();
        let db = agad_storage::Database::temporary().unwrap();
        let store =
            ModuleStore::open(&dir.path().join("modules"), db.tree("bundles").unwrap()).unwrap();
        for round in 0..20u8 {
            let b = bundle(&[b'\0', b'a', b's', b'm', round]);
            std::thread::scope(|s| {
                let puts: Vec<_> = (0..4).map(|_| s.spawn(|| store.put(&b))).collect();
                for put in puts {
                    put.join().unwrap().unwrap();
                }
            });
            assert_eq!(store.get(&b.manifest.sha256_hex()).unwrap().unwrap(), b);
        }
        let strays: Vec<_> = std::fs::read_dir(dir.path().join("modules"))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|name| !name.ends_with(".wasm"))
            .collect();
        assert!(strays.is_empty(), "{strays:?}");
    }

    #[test]
    fn bundles_kept_whole_in_the_database_move_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = agad_storage::Database::temporary().unwrap();
        let tree = db.tree("bundles").unwrap();
        let b = bundle(b"\0asm-old-layout");
        let hash = b.manifest.sha256_hex();
        tree.insert(hash.as_bytes(), &b.to_bytes()).unwrap();
        let store = ModuleStore::open(&dir.path().join("modules"), tree.clone()).unwrap();
        assert_eq!(store.get(&hash).unwrap().unwrap(), b);
        assert!(
            !Bundle::from_bytes(&tree.get(hash.as_bytes()).unwrap().unwrap())
                .unwrap()
                .has_bytes()
        );
    }
}
