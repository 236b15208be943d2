//! The five built-in inspectors, signed with a throw-away key, and the
//! configuration every benchmark runs them with.

use agad_protocol::{Bundle, ManifestSpec, SecretKey};
use anyhow::Context;

/// A built-in inspector signed for this run.
#[derive(Debug, Clone)]
pub struct Signed {
    pub name: &'static str,
    pub bundle: Bundle,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Every built-in inspector, signed by `key`.
pub fn sign_all(key: &SecretKey) -> anyhow::Result<Vec<Signed>> {
    let now = unix_now();
    agad_modules::INSPECTORS
        .iter()
        .map(|b| {
            let spec = ManifestSpec::from_toml(b.manifest_toml)
                .with_context(|| format!("built-in manifest of {}", b.name))?;
            Ok(Signed {
                name: b.name,
                bundle: Bundle::sign(spec, b.wasm.to_vec(), key, now),
            })
        })
        .collect()
}

/// The OID `snmp-threshold` watches in the benchmarks: hrSystemProcesses.0,
/// a gauge every net-snmp agent serves, with a threshold it never reaches.
pub const THRESHOLD_OID: &str = "1.3.6.1.2.1.25.1.6.0";
pub const THRESHOLD_VALUE: &str = "100000";

/// Per-module settings the benchmarks add to `period`/`window_secs`, so
/// that every inspector has something real to watch: `app-watch` the
/// processes in `watched`, `snmp-threshold` [`THRESHOLD_OID`]. The others
/// run with their defaults (if-health reads the node's default SNMP agent).
pub fn module_config(name: &str, watched: &[String]) -> Vec<(String, String)> {
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    match name {
        "app-watch" => vec![pair("processes", &watched.join(","))],
        "snmp-threshold" => vec![
            pair("oid", THRESHOLD_OID),
            pair("threshold", THRESHOLD_VALUE),
        ],
        _ => Vec::new(),
    }
}
