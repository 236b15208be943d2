//! The WebAssembly modules built from this repository.
//!
//! What it is for: giving the `agad` tool, the tests and the benchmarks the
//! built-in inspectors and specialists (embedded bytes plus their author
//! manifests) and the test guests (by path), all compiled by this crate's
//! build script from the guest crates in `inspectors/`, `specialists/` and
//! `tests/guests/` (`wasm32-wasip2`, release, size-optimised).
//!
//! What it is not for: signing or verifying — bundles are made from these
//! bytes by `agad-protocol`, with the operator's key — nor writing modules
//! (that is `agad-sdk`).
//!
//! Layout: [`BuiltIn`] and [`INSPECTORS`] / [`inspector`] for the shipped
//! inspectors; [`SPECIALISTS`] / [`specialist`] for the shipped specialists; [`test_guests`] for runtime test programs; [`files`] for the
//! paths of every built module.

mod paths {
    include!(concat!(env!("OUT_DIR"), "/modules.rs"));
}

/// A module compiled from this repository, with its author's manifest.
#[derive(Debug, Clone, Copy)]
pub struct BuiltIn {
    pub name: &'static str,
    /// The component's bytes, as signed and shipped.
    pub wasm: &'static [u8],
    /// The author's `manifest.toml` (`agad_protocol::ManifestSpec`).
    pub manifest_toml: &'static str,
}

macro_rules! built_in {
    ($name:literal, $folder:literal, $wasm:literal) => {
        BuiltIn {
            name: $name,
            wasm: include_bytes!(concat!(env!("OUT_DIR"), "/", $wasm, ".wasm")),
            manifest_toml: include_str!(concat!("../../", $folder, "/manifest.toml")),
        }
    };
}

/// The five built-in inspectors.
pub const INSPECTORS: &[BuiltIn] = &[
    built_in!("cpu-mem", "inspectors/cpu-mem", "cpu_mem"),
    built_in!("disk-space", "inspectors/disk-space", "disk_space"),
    built_in!("if-health", "inspectors/if-health", "if_health"),
    built_in!("app-watch", "inspectors/app-watch", "app_watch"),
    built_in!(
        "snmp-threshold",
        "inspectors/snmp-threshold",
        "snmp_threshold"
    ),
];

/// The built-in inspector called `name`.
pub fn inspector(name: &str) -> Option<&'static BuiltIn> {
    INSPECTORS.iter().find(|m| m.name == name)
}

/// The built-in probes: resident modules (the inspector world) that
/// measure the network from the node rather than read it.
pub const PROBES: &[BuiltIn] = &[built_in!("link-watch", "probes/link-watch", "link_watch")];

/// The built-in resident module (inspector or probe) called `name`.
pub fn resident(name: &str) -> Option<&'static BuiltIn> {
    INSPECTORS.iter().chain(PROBES).find(|m| m.name == name)
}

/// The five built-in specialists (run once, on demand, with arguments).
pub const SPECIALISTS: &[BuiltIn] = &[
    built_in!("top-cpu", "specialists/top-cpu", "top_cpu"),
    built_in!("disk-usage", "specialists/disk-usage", "disk_usage"),
    built_in!("if-diagnose", "specialists/if-diagnose", "if_diagnose"),
    built_in!("link-probe", "specialists/link-probe", "link_probe"),
    built_in!(
        "service-restart",
        "specialists/service-restart",
        "service_restart"
    ),
];

/// The built-in specialist called `name`.
pub fn specialist(name: &str) -> Option<&'static BuiltIn> {
    SPECIALISTS.iter().find(|m| m.name == name)
}

/// Guests that exist only to test the runtime, by path (like wasmtime's
/// test-programs artifacts).
pub mod test_guests {
    /// `tests/guests/misbehave`: loops, bombs and traps on request.
    pub use super::paths::{MISBEHAVE_MANIFEST, MISBEHAVE_WASM};
    /// `tests/guests/misbehave-specialist`: a specialist that bombs or
    /// loops on request.
    pub use super::paths::{MISBEHAVE_SPECIALIST_MANIFEST, MISBEHAVE_SPECIALIST_WASM};
}

/// Paths of every built module and its manifest (`CPU_MEM_WASM`,
/// `CPU_MEM_MANIFEST`, ...), for tools that want files rather than bytes.
pub mod files {
    pub use super::paths::*;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_inspector_is_a_component_with_a_manifest_of_its_name() {
        for builtin in INSPECTORS.iter().chain(PROBES).chain(SPECIALISTS) {
            // Component-model binary: magic, then version 0x0d and layer 1.
            assert_eq!(&builtin.wasm[..8], b"\0asm\x0d\0\x01\0", "{}", builtin.name);
            assert!(
                builtin
                    .manifest_toml
                    .contains(&format!("name = \"{}\"", builtin.name)),
                "{}",
                builtin.name
            );
        }
        assert!(inspector("if-health").is_some() && inspector("nope").is_none());
        assert!(specialist("top-cpu").is_some() && specialist("cpu-mem").is_none());
        assert!(std::path::Path::new(test_guests::MISBEHAVE_WASM).is_file());
        assert!(std::path::Path::new(test_guests::MISBEHAVE_SPECIALIST_WASM).is_file());
    }
}
