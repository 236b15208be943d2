//! Compiling and linking modules: one wasmtime [`Engine`] per node with
//! epoch interruption, a local cache of compiled components, and per-module
//! linkers that hold only the capabilities the module was granted.

use crate::host::{self, HostState};
use agad_protocol::{Bundle, Capability, Limits, Manifest};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine};

/// How often the epoch advances; deadlines are whole multiples of it.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// WIT package whose interfaces are AGAD capabilities.
const PLATFORM_PACKAGE: &str = "agad:platform/";
/// The interface of shared types: no functions, so nothing to grant.
const TYPES_INTERFACE: &str = "types";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "module `{module}` imports capability `{capability}`, which its manifest does not declare"
    )]
    Undeclared {
        module: String,
        capability: Capability,
    },
    #[error(
        "module `{module}` needs capability `{capability}`, which this node's policy does not allow"
    )]
    DeniedByPolicy {
        module: String,
        capability: Capability,
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
}

impl ModuleEngine {
    /// `cache_dir`: where compiled components are kept between runs (created
    /// if missing); `None` compiles every time.
    pub fn new(cache_dir: Option<&Path>) -> anyhow::Result<ModuleEngine> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        spawn_epoch_ticker(&engine);
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(ModuleEngine {
            engine,
            cache_dir: cache_dir.map(Path::to_path_buf),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles verified bytes, or loads the artefact this node compiled
    /// earlier from the same hash. Artefacts are never taken from outside.
    pub fn compile(&self, bundle: &Bundle) -> Result<Component, LinkError> {
        let module = bundle.manifest.name.clone();
        let cached = self
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.cwasm", bundle.manifest.sha256_hex())));
        if let Some(path) = &cached
            && path.exists()
        {
            match load_cached(&self.engine, path) {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(module, path = %path.display(), "ignoring compiled cache entry: {e:#}")
                }
            }
        }
        let component =
            Component::new(&self.engine, &bundle.wasm).map_err(|e| LinkError::Invalid {
                module: module.clone(),
                reason: format!("{e:#}"),
            })?;
        if let Some(path) = &cached
            && let Err(e) = store_cached(&component, path)
        {
            tracing::warn!(module, path = %path.display(), "cannot cache compiled module: {e:#}");
        }
        Ok(component)
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
                    return Err(LinkError::Undeclared { module, capability });
                }
                if !policy.contains(&capability) {
                    return Err(LinkError::DeniedByPolicy { module, capability });
                }
                granted.push(capability);
            } else if !name.starts_with("wasi:") {
                return Err(LinkError::UnknownImport {
                    module,
                    import: name.to_owned(),
                });
            }
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

fn load_cached(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: wasmtime requires that deserialised bytes come from
    // `Component::serialize` of a compatible engine. This cache directory is
    // written only by `store_cached` of this process (atomically, via
    // rename), and wasmtime itself rejects artefacts of another version or
    // configuration.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize_file(engine, path)? };
    Ok(component)
}

fn store_cached(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
