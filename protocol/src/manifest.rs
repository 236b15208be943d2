//! Module manifests: what a module is, what it may import and how much it may use.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Longest module name accepted.
pub const MAX_NAME_CHARS: usize = 64;

/// Longest signature validity an author may ask for: 100 years. A node
/// also refuses a signed manifest whose expiry lies further ahead
/// ([`crate::bundle::verify_parts`]).
pub const MAX_VALID_FOR_DAYS: u64 = 36_500;

/// Why a module name is refused. Never carries the name itself: a bad name
/// is exactly what must not reach a terminal or a log line raw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("module name is empty")]
    Empty,
    #[error("module name is longer than {MAX_NAME_CHARS} characters")]
    TooLong,
    #[error(
        "module name may hold only ASCII letters, digits, `-`, `_` and `.`, and must start with a letter or digit"
    )]
    BadCharacter,
}

/// Module names appear in logs, terminals, alarm ids, file and database
/// keys: ASCII letters, digits, `-`, `_` and `.`, starting with a letter or
/// digit, at most [`MAX_NAME_CHARS`]. So no newline, terminal escape,
/// control character, path separator or NUL can ever come with one.
pub fn validate_module_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) || !name.chars().all(ok_char) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

fn module_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    validate_module_name(&name).map_err(serde::de::Error::custom)?;
    Ok(name)
}

fn valid_for_days<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let days = u64::deserialize(d)?;
    if days == 0 || days > MAX_VALID_FOR_DAYS {
        return Err(serde::de::Error::custom(format!(
            "valid_for_days must be between 1 and {MAX_VALID_FOR_DAYS} (100 years), not {days}"
        )));
    }
    Ok(days)
}

/// Whether a module stays resident or runs on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Resident; ticked on a period (WIT world `inspector`).
    Inspector,
    /// Run once with arguments under a deadline (WIT world `specialist`).
    Specialist,
}

/// The OSI FCAPS management area a module serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Area {
    Fault,
    Configuration,
    Accounting,
    Performance,
    Security,
}

/// A host capability, one per WIT interface of the `platform` world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    Os,
    Snmp,
    State,
    Log,
    Clock,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::Os,
        Capability::Snmp,
        Capability::State,
        Capability::Log,
        Capability::Clock,
    ];

    /// The WIT interface name (without package and version).
    pub fn interface(self) -> &'static str {
        match self {
            Capability::Os => "os",
            Capability::Snmp => "snmp",
            Capability::State => "state",
            Capability::Log => "log",
            Capability::Clock => "clock",
        }
    }

    pub fn from_interface(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.interface() == name)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// Resource limits enforced on every instance of the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Cap on the module's linear memories, in bytes.
    #[serde(default = "Limits::default_memory")]
    pub max_memory_bytes: u64,
    /// Wall-clock budget of one call (`init`, `tick` or `run`), in milliseconds.
    #[serde(default = "Limits::default_time")]
    pub max_time_per_call_ms: u64,
    /// Quota of the module's `state` on each node, keys and values
    /// together, in bytes; a write past it is refused with an error value.
    #[serde(default = "Limits::default_state")]
    pub max_state_bytes: u64,
}

impl Limits {
    fn default_memory() -> u64 {
        16 * 1024 * 1024
    }
    fn default_time() -> u64 {
        1_000
    }
    fn default_state() -> u64 {
        1024 * 1024
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: Limits::default_memory(),
            max_time_per_call_ms: Limits::default_time(),
            max_state_bytes: Limits::default_state(),
        }
    }
}

/// What a module author writes next to the module (`manifest.toml`).
/// `agad module sign` turns it into a [`Manifest`] by adding the hash, the
/// times and the signer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSpec {
    /// Module name, unique within a deployment (`cpu-mem`); see
    /// [`validate_module_name`].
    #[serde(deserialize_with = "module_name")]
    pub name: String,
    /// Semantic version for people.
    pub version: semver::Version,
    /// Increases with every release; nodes refuse a lower one (no rollback).
    pub sequence: u64,
    pub kind: Kind,
    pub area: Area,
    /// Host capabilities the module needs; anything else is denied.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    #[serde(default)]
    pub limits: Limits,
    /// How long the signature stays valid, in days from signing (at most
    /// [`MAX_VALID_FOR_DAYS`]).
    #[serde(
        default = "ManifestSpec::default_validity",
        deserialize_with = "valid_for_days"
    )]
    pub valid_for_days: u64,
}

impl ManifestSpec {
    fn default_validity() -> u64 {
        365
    }

    /// Parses an author's manifest; errors carry line and column.
    pub fn from_toml(text: &str) -> Result<ManifestSpec, toml::de::Error> {
        let spec: ManifestSpec = toml::from_str(text)?;
        Ok(spec)
    }
}

/// A signed module's description. The signature covers [`Manifest::canonical_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: semver::Version,
    pub sequence: u64,
    pub kind: Kind,
    pub area: Area,
    /// Sorted and without duplicates, so the encoding is canonical.
    pub capabilities: Vec<Capability>,
    pub limits: Limits,
    /// SHA-256 of the exact wasm bytes.
    pub sha256: [u8; 32],
    /// Seconds since the Unix epoch.
    pub issued_at: u64,
    /// Seconds since the Unix epoch; refused from then on.
    pub expires_at: u64,
    /// Id of the key that signed it.
    pub signer: crate::KeyId,
}

/// Prefix that keeps a manifest signature from being valid for anything else.
const SIGNING_CONTEXT: &[u8] = b"agad-manifest-v1\0";

impl Manifest {
    /// The exact bytes the signature covers: a context string followed by the
    /// bincode encoding of every field in declaration order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = SIGNING_CONTEXT.to_vec();
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("a manifest holds only plain data, so encoding cannot fail");
        out.extend_from_slice(&body);
        out
    }

    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    pub fn allows(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_with_defaults() {
        let spec = ManifestSpec::from_toml(
            r#"
name = "cpu-mem"
version = "0.1.0"
sequence = 3
kind = "inspector"
area = "performance"
capabilities = ["os", "state"]
"#,
        )
        .unwrap();
        assert_eq!(spec.sequence, 3);
        assert_eq!(spec.capabilities, vec![Capability::Os, Capability::State]);
        assert_eq!(spec.limits, Limits::default());
        assert_eq!(spec.valid_for_days, 365);
    }

    #[test]
    fn spec_errors_name_line_and_unknown_field() {
        let err = ManifestSpec::from_toml(
            "name = \"x\"\nversion = \"0.1.0\"\nsequence = 1\nkind = \"inspector\"\narea = \"performance\"\ncapabilites = [\"os\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 6"), "{err}");
        assert!(err.contains("capabilites"), "{err}");
    }

    #[test]
    fn names_with_control_characters_escapes_or_separators_are_refused() {
        for good in ["cpu-mem", "if_health.v2", "a", "9lives"] {
            assert_eq!(validate_module_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "evil\nINFO forged line",
            "red\u{1b}[31m",
            "tab\there",
            "nul\0",
            "../etc",
            "a/b",
            "-dash-first",
            ".hidden",
            "ünïcode",
            "sp ace",
        ] {
            assert!(validate_module_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_module_name(&"a".repeat(65)),
            Err(NameError::TooLong)
        );
        let toml = |name: &str| {
            format!(
                "name = {name:?}\nversion = \"0.1.0\"\nsequence = 1\nkind = \"inspector\"\narea = \"fault\"\n"
            )
        };
        let err = ManifestSpec::from_toml(&toml("evil\nINFO forged"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("module name may hold only"),
            "{err}"
        );
        // The parser quotes the TOML source (escapes as written), never
        // the decoded name.
        assert!(
            !err.contains("\nINFO forged"),
            "the error does not echo the decoded name: {err}"
        );
        ManifestSpec::from_toml(&toml("cpu-mem")).unwrap();
    }

    #[test]
    fn absurd_validity_is_refused_at_parse() {
        let text = |days: &str| {
            format!(
                "name = \"x\"\nversion = \"0.1.0\"\nsequence = 1\nkind = \"inspector\"\narea = \"fault\"\nvalid_for_days = {days}\n"
            )
        };
        for days in ["0", "36501", "18446744073709551615"] {
            let err = ManifestSpec::from_toml(&text(days))
                .unwrap_err()
                .to_string();
            assert!(err.contains("valid_for_days"), "{days}: {err}");
        }
        assert_eq!(
            ManifestSpec::from_toml(&text("36500"))
                .unwrap()
                .valid_for_days,
            36_500
        );
    }

    #[test]
    fn unknown_capability_is_refused() {
        let err = ManifestSpec::from_toml(
            "name = \"x\"\nversion = \"0.1.0\"\nsequence = 1\nkind = \"inspector\"\narea = \"fault\"\ncapabilities = [\"sockets\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sockets"), "{err}");
    }
}
