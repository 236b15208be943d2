//! Compiling and linking modules: one wasmtime [`Engine`] per node with
//! epoch interruption, a local cache of compiled components, and per-module
//! linkers that hold only the capabilities the module was granted.

use crate::compiler::{CompileHelper, HelperError, engine_config};
use crate::host::{self, HostState};
use agad_protocol::{Bundle, Capability, Limits, Manifest};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre, Linker};

/// How often the epoch advances; deadlines are whole multiples of it.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// WIT package whose interfaces are AGAD capabilities.
const PLATFORM_PACKAGE: &str = "agad:platform/";
/// The interface of shared types: no functions, so nothing to grant.
const TYPES_INTERFACE: &str = "types";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Every capability the component imports that its manifest lacks,
    /// with the import that needs it: an author fixes them all at once.
    #[error(
        "module `{module}` imports {} its manifest does not declare: {}; add {} to `capabilities` in its manifest",
        plural(missing.len()),
        list(missing),
        names(missing)
    )]
    Undeclared {
        module: String,
        missing: Vec<(Capability, String)>,
    },
    /// Every capability the node's policy withholds, with its import.
    #[error(
        "module `{module}` needs {} this node's policy does not allow: {}",
        plural(denied.len()),
        list(denied)
    )]
    DeniedByPolicy {
        module: String,
        denied: Vec<(Capability, String)>,
    },
    #[error("module `{module}` imports `{import}`, which no AGAD node provides")]
    UnknownImport { module: String, import: String },
    #[error("module `{module}` is not a valid component: {reason}")]
    Invalid { module: String, reason: String },
    #[error("module `{module}` does not match the `{world}` world: {reason}")]
    WrongWorld {
        module: String,
        world: &'static str,
        reason: String,
    },
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "a capability"
    } else {
        "capabilities"
    }
}

/// `` `snmp` (import agad:platform/snmp@0.1.0), ... ``
fn list(pairs: &[(Capability, String)]) -> String {
    pairs
        .iter()
        .map(|(c, import)| format!("`{c}` (import {import})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `"snmp", "state"`: what to write in the manifest.
fn names(pairs: &[(Capability, String)]) -> String {
    pairs
        .iter()
        .map(|(c, _)| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A compiled, linked module, ready to instantiate (cheaply, many times).
#[derive(Clone)]
pub struct LinkedModule {
    pub manifest: Arc<Manifest>,
    /// The limits every instance runs under: the manifest's, as granted by
    /// the node's ceilings (`Node::load`).
    pub limits: Limits,
    pub pre: InstancePre<HostState>,
}

impl std::fmt::Debug for LinkedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkedModule")
            .field("module", &self.manifest.name)
            .field("sha256", &self.manifest.sha256_hex())
            .finish()
    }
}

pub struct ModuleEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    /// Compiles in another process when set ([`crate::compiler`]).
    helper: Option<CompileHelper>,
    /// SHA-256 of every artefact this node wrote, by module hash: checked
    /// before an artefact is deserialised (loading one is running it).
    digests: ArtefactDigests,
}

/// Where artefact digests are recorded: the node's database, or memory
/// for an engine without one (an artefact found on disk with no digest
/// recorded is compiled again, never loaded).
enum ArtefactDigests {
    Memory(Mutex<HashMap<String, [u8; 32]>>),
    Tree(agad_storage::Tree),
}

impl ArtefactDigests {
    fn get(&self, hash: &str) -> Option<[u8; 32]> {
        match self {
            ArtefactDigests::Memory(m) => m
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(hash)
                .copied(),
            ArtefactDigests::Tree(t) => t
                .get(hash.as_bytes())
                .ok()
                .flatten()
                .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok()),
        }
    }

    fn set(&self, hash: &str, digest: [u8; 32]) -> anyhow::Result<()> {
        match self {
            ArtefactDigests::Memory(m) => {
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(hash.to_owned(), digest);
            }
            ArtefactDigests::Tree(t) => {
                t.insert(hash.as_bytes(), &digest)?;
                t.flush()?;
            }
        }
        Ok(())
    }

    fn remove(&self, hash: &str) {
        match self {
            ArtefactDigests::Memory(m) => {
                m.lock().unwrap_or_else(|p| p.into_inner()).remove(hash);
            }
            ArtefactDigests::Tree(t) => {
                let _ = t.remove(hash.as_bytes());
            }
        }
    }
}

/// What an integrity check found of one cached artefact.
pub use agad_protocol::attest::Artefact as ArtefactCheck;

impl ModuleEngine {
    /// `cache_dir`: where compiled components are kept between runs (created
    /// if missing); `None` compiles every time.
    pub fn new(cache_dir: Option<&Path>) -> anyhow::Result<ModuleEngine> {
        let engine = Engine::new(&engine_config())?;
        spawn_epoch_ticker(&engine);
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(ModuleEngine {
            engine,
            cache_dir: cache_dir.map(Path::to_path_buf),
            helper: None,
            digests: ArtefactDigests::Memory(Mutex::default()),
        })
    }

    /// Compiles in `helper`'s process from now on (the node falls back to
    /// compiling itself when the helper cannot be started).
    pub fn set_compile_helper(&mut self, helper: CompileHelper) {
        self.helper = Some(helper);
    }

    /// Records artefact digests in `tree` (the node's database), so that
    /// artefacts compiled by an earlier run can be checked and reused.
    pub fn with_digests(mut self, tree: agad_storage::Tree) -> ModuleEngine {
        self.digests = ArtefactDigests::Tree(tree);
        self
    }

    fn artefact_path(&self, hash: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{hash}.cwasm")))
    }

    /// Re-hashes the cached artefact of module `hash` against the digest
    /// recorded when it was written. An altered one (or one with no digest
    /// recorded) is removed at once, so it can never be loaded.
    pub fn check_artefact(&self, hash: &str) -> ArtefactCheck {
        let Some(path) = self.artefact_path(hash) else {
            return ArtefactCheck::Absent;
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ArtefactCheck::Absent,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read compiled artefact: {e}");
                self.remove_artefact(hash);
                return ArtefactCheck::Altered;
            }
        };
        match self.digests.get(hash) {
            Some(digest) if digest == sha256(&bytes) => ArtefactCheck::Intact,
            Some(_) => {
                self.remove_artefact(hash);
                ArtefactCheck::Altered
            }
            None => {
                // Written before digests were recorded (an older version):
                // nothing to hold it against, so it is not used either.
                tracing::info!(path = %path.display(), "compiled artefact without a recorded digest removed");
                self.remove_artefact(hash);
                ArtefactCheck::Absent
            }
        }
    }

    /// Deletes the cached artefact of module `hash` and its digest.
    pub fn remove_artefact(&self, hash: &str) {
        if let Some(path) = self.artefact_path(hash) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "compiled artefact removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = %path.display(), "cannot remove compiled artefact: {e}")
                }
            }
        }
        self.digests.remove(hash);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles verified bytes, or loads the artefact this node compiled
    /// earlier from the same hash. Artefacts are never taken from outside.
    pub fn compile(&self, bundle: &Bundle) -> Result<Component, LinkError> {
        let module = bundle.manifest.name.clone();
        let hash = bundle.manifest.sha256_hex();
        let cached = self.artefact_path(&hash);
        if let Some(path) = &cached
            && let Ok(bytes) = std::fs::read(path)
        {
            // Read once and checked in memory: the bytes deserialised are
            // the bytes hashed, whatever happens to the file meanwhile.
            if self.digests.get(&hash) != Some(sha256(&bytes)) {
                tracing::warn!(module, path = %path.display(), "compiled artefact does not match the digest recorded when it was written; removed, compiling again");
                self.remove_artefact(&hash);
            } else {
                match load_cached(&self.engine, &bytes) {
                    Ok(component) => return Ok(component),
                    Err(e) => {
                        tracing::warn!(module, path = %path.display(), "ignoring compiled cache entry: {e:#}")
                    }
                }
            }
        }
        if let Some(helper) = &self.helper {
            match self.compile_in(helper, bundle, cached.as_deref()) {
                Ok(Some(component)) => return Ok(component),
                Ok(None) => {}
                Err(reason) => return Err(LinkError::Invalid { module, reason }),
            }
        }
        let component =
            Component::new(&self.engine, &bundle.wasm).map_err(|e| LinkError::Invalid {
                module: module.clone(),
                reason: format!("{e:#}"),
            })?;
        if let Some(path) = &cached {
            let stored = component
                .serialize()
                .map_err(anyhow::Error::from)
                .and_then(|bytes| {
                    store_cached(&bytes, path, |digest| self.digests.set(&hash, digest))
                });
            if let Err(e) = stored {
                tracing::warn!(module, path = %path.display(), "cannot cache compiled module: {e:#}");
            }
        }
        Ok(component)
    }

    /// Compiles in the helper's process and loads its artefact, cached
    /// like one compiled here. `Ok(None)`: the helper could not run, or its
    /// artefact does not load here (a node upgraded in place runs an older
    /// engine than the executable on disk); the caller compiles itself.
    fn compile_in(
        &self,
        helper: &CompileHelper,
        bundle: &Bundle,
        cached: Option<&Path>,
    ) -> Result<Option<Component>, String> {
        let module = &bundle.manifest.name;
        let started = std::time::Instant::now();
        let artefact = match helper.compile(&bundle.wasm) {
            Ok(artefact) => artefact,
            Err(HelperError::Failed(reason)) => return Err(reason),
            Err(e @ HelperError::Unavailable { .. }) => {
                tracing::warn!(module, "{e}; compiling in this process");
                return Ok(None);
            }
        };
        // SAFETY of the load below: the artefact comes from this node's own
        // executable, given only the verified wasm.
        let component = match load_cached(&self.engine, &artefact) {
            Ok(component) => component,
            Err(e) => {
                tracing::warn!(
                    module,
                    "the compile helper's artefact does not load here ({e:#}); compiling in this process"
                );
                return Ok(None);
            }
        };
        tracing::info!(
            module,
            ms = started.elapsed().as_millis() as u64,
            bytes = artefact.len(),
            "compiled in a helper process"
        );
        let hash = bundle.manifest.sha256_hex();
        if let Some(path) = cached
            && let Err(e) = store_cached(&artefact, path, |digest| self.digests.set(&hash, digest))
        {
            tracing::warn!(module, path = %path.display(), "cannot cache compiled module: {e:#}");
        }
        Ok(Some(component))
    }

    /// Checks the component's imports against its manifest and the node's
    /// policy, then links it with exactly the granted capabilities.
    pub fn link(
        &self,
        manifest: Arc<Manifest>,
        component: &Component,
        policy: &[Capability],
    ) -> Result<LinkedModule, LinkError> {
        let module = manifest.name.clone();
        let mut granted = Vec::new();
        let (mut undeclared, mut denied) = (Vec::new(), Vec::new());
        for (name, item) in component.component_type().imports(&self.engine) {
            // Type imports (a world's `use types.{...}`) carry no behaviour.
            if matches!(item.ty, ComponentItem::Type(_)) {
                continue;
            }
            if let Some(rest) = name.strip_prefix(PLATFORM_PACKAGE) {
                let interface = rest.split('@').next().unwrap_or(rest);
                if interface == TYPES_INTERFACE {
                    continue;
                }
                let Some(capability) = Capability::from_interface(interface) else {
                    return Err(LinkError::UnknownImport {
                        module,
                        import: name.to_owned(),
                    });
                };
                if !manifest.allows(capability) {
                    undeclared.push((capability, name.to_owned()));
                } else if !policy.contains(&capability) {
                    denied.push((capability, name.to_owned()));
                } else {
                    granted.push(capability);
                }
            } else if !name.starts_with("wasi:") {
                return Err(LinkError::UnknownImport {
                    module,
                    import: name.to_owned(),
                });
            }
        }
        // The manifest's omissions first: the author's to fix; then what
        // this node withholds, the operator's.
        if !undeclared.is_empty() {
            return Err(LinkError::Undeclared {
                module,
                missing: undeclared,
            });
        }
        if !denied.is_empty() {
            return Err(LinkError::DeniedByPolicy { module, denied });
        }
        let mut linker = Linker::new(&self.engine);
        host::add_granted_to_linker(&mut linker, &granted).map_err(|e| LinkError::Invalid {
            module: module.clone(),
            reason: format!("{e:#}"),
        })?;
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| LinkError::Invalid {
                module: module.clone(),
                reason: format!("{e:#}"),
            })?;
        Ok(LinkedModule {
            limits: manifest.limits,
            manifest,
            pre,
        })
    }
}

/// Advances the epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("agad-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning a thread at start-up cannot fail on a working system");
}

fn load_cached(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: wasmtime requires that deserialised bytes come from
    // `Component::serialize` (or `Engine::precompile_component`) of a
    // compatible engine. These bytes are either those `store_cached` wrote
    // — their SHA-256 equals the digest it recorded in the node's own
    // database when it wrote them, checked by the caller on this very
    // buffer — or those this node's own executable just compiled in its
    // helper process; and wasmtime itself rejects artefacts of another
    // version or configuration.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, bytes)? };
    Ok(component)
}

/// Writes an artefact atomically (tmp + rename), its digest recorded by
/// `record` before the artefact appears under its name.
fn store_cached(
    bytes: &[u8],
    path: &Path,
    record: impl FnOnce([u8; 32]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    record(sha256(bytes))?;
    // A temporary file of its own: the same module may be compiled twice
    // at once (two runs of one specialist).
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path)?;
    Ok(())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    agad_protocol::bundle::sha256(bytes)
}
