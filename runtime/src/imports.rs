//! What a component imports, read from its bytes without compiling it, and
//! whether its manifest declares the capabilities those imports need.
//!
//! `agad module sign` runs this so that an author learns of a missing
//! capability when signing, not from every node that refuses to link the
//! module ([`crate::engine::ModuleEngine::link`] makes the same check on a
//! node, against the compiled component).

use agad_protocol::Capability;
use wasmparser::{ComponentTypeRef, Parser, Payload};

/// WIT package whose interfaces are AGAD capabilities.
const PLATFORM_PACKAGE: &str = "agad:platform/";
/// The interface of shared types: no functions, so nothing to grant.
const TYPES_INTERFACE: &str = "types";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("not a WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "the component imports `{import}`, the `{capability}` capability, which the manifest does not declare; add \"{capability}\" to `capabilities`"
    )]
    Undeclared {
        import: String,
        capability: Capability,
    },
    #[error("the component imports `{import}`, which no AGAD node provides")]
    Unknown { import: String },
}

/// The capability each top-level import of `wasm` needs, in import order,
/// with the import's full name. WASI imports (which every node provides
/// within the sandbox) and type-only imports need none.
pub fn imported_capabilities(wasm: &[u8]) -> Result<Vec<(String, Capability)>, ImportError> {
    let invalid = |e: wasmparser::BinaryReaderError| ImportError::Invalid(e.to_string());
    let mut out = Vec::new();
    // Nested modules and components import from their parent, not from the
    // host: only the outermost component's imports count.
    let mut depth = 0usize;
    let mut saw_component = false;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::Version { encoding, .. } if depth == 0 => {
                if encoding != wasmparser::Encoding::Component {
                    return Err(ImportError::Invalid(
                        "a core module; build for wasm32-wasip2 to get a component".into(),
                    ));
                }
                saw_component = true;
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(invalid)?;
                    if matches!(import.ty, ComponentTypeRef::Type(_)) {
                        continue;
                    }
                    if let Some(capability) = needed_capability(import.name.name)? {
                        out.push((import.name.name.to_owned(), capability));
                    }
                }
            }
            _ => {}
        }
    }
    if !saw_component {
        return Err(ImportError::Invalid("no component header".into()));
    }
    Ok(out)
}

/// The capability an import named `name` needs, `None` for one that needs
/// none; an import no node provides is an error.
fn needed_capability(name: &str) -> Result<Option<Capability>, ImportError> {
    if let Some(rest) = name.strip_prefix(PLATFORM_PACKAGE) {
        let interface = rest.split('@').next().unwrap_or(rest);
        if interface == TYPES_INTERFACE {
            return Ok(None);
        }
        return Capability::from_interface(interface)
            .map(Some)
            .ok_or_else(|| ImportError::Unknown {
                import: name.to_owned(),
            });
    }
    if name.starts_with("wasi:") {
        return Ok(None);
    }
    Err(ImportError::Unknown {
        import: name.to_owned(),
    })
}

/// Refuses `wasm` when it imports a capability `declared` lacks, naming
/// the first such import.
pub fn check_declared(wasm: &[u8], declared: &[Capability]) -> Result<(), ImportError> {
    for (import, capability) in imported_capabilities(wasm)? {
        if !declared.contains(&capability) {
            return Err(ImportError::Undeclared { import, capability });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn import_names_map_to_capabilities() {
        assert_eq!(
            needed_capability("agad:platform/snmp@0.1.0"),
            Ok(Some(Capability::Snmp))
        );
        assert_eq!(
            needed_capability("agad:platform/os"),
            Ok(Some(Capability::Os))
        );
        assert_eq!(needed_capability("agad:platform/types@0.1.0"), Ok(None));
        assert_eq!(needed_capability("wasi:io/streams@0.2.6"), Ok(None));
        assert!(matches!(
            needed_capability("agad:platform/sockets@0.1.0"),
            Err(ImportError::Unknown { .. })
        ));
        assert!(matches!(
            needed_capability("evil:net/raw"),
            Err(ImportError::Unknown { .. })
        ));
    }

    #[test]
    fn not_a_component_is_refused() {
        assert!(matches!(
            imported_capabilities(b"not wasm"),
            Err(ImportError::Invalid(_))
        ));
        // The smallest core module: magic and version 1.
        assert!(matches!(
            imported_capabilities(b"\0asm\x01\0\0\0"),
            Err(ImportError::Invalid(_))
        ));
    }
}
