//! Module manifests: what a module is, what it may import and how much it may use.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use toml::Spanned;

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
///
/// New variants go at the end: manifests are bincode-encoded, which
/// numbers variants in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    Os,
    Snmp,
    State,
    Log,
    Clock,
    /// Sizes of directory trees, only under the paths the node's policy
    /// lists (`disk_usage_paths`; none by default).
    Disk,
    /// ICMP echo (TCP connect where ICMP is not permitted) and a
    /// traceroute-like path, bounded in count and time.
    Probe,
    /// Restarting the services the node's policy allow-lists
    /// (`[services.<name>]`; none by default).
    Service,
}

impl Capability {
    pub const ALL: [Capability; 8] = [
        Capability::Os,
        Capability::Snmp,
        Capability::State,
        Capability::Log,
        Capability::Clock,
        Capability::Disk,
        Capability::Probe,
        Capability::Service,
    ];

    /// The WIT interface name (without package and version).
    pub fn interface(self) -> &'static str {
        match self {
            Capability::Os => "os",
            Capability::Snmp => "snmp",
            Capability::State => "state",
            Capability::Log => "log",
            Capability::Clock => "clock",
            Capability::Disk => "disk",
            Capability::Probe => "probe",
            Capability::Service => "service",
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
    /// The configuration keys the module accepts (`[config.<key>]`), besides
    /// the node's own `period`. A topology assigning the module is checked
    /// against them when it is applied.
    #[serde(default)]
    pub config: BTreeMap<Spanned<String>, ConfigKeySpec>,
    /// The alarm keys and metrics the module's alarms carry (`[emits]`),
    /// which knowledge-base rules may match; see [`EmitsSpec`].
    #[serde(default)]
    pub emits: EmitsSpec,
}

/// Most alarm keys, and most metrics, one manifest may declare.
pub const MAX_EMITS: usize = 64;

/// Longest alarm key or metric name a manifest may declare, in bytes.
pub const MAX_EMIT_CHARS: usize = 128;

/// What an author declares the module's alarms carry:
///
/// ```toml
/// [emits]
/// keys = ["cpu.total", "fs.used:*"]
/// metrics = ["cpu.total-percent", "fs.used-percent"]
/// ```
///
/// A key is exact (`cpu.total`) or a family whose instances follow a
/// colon (`fs.used:*` covers `fs.used:/var`). Rules naming a key or metric
/// no published module declares are refused when they are applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitsSpec {
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    #[serde(default)]
    pub metrics: Vec<Spanned<String>>,
    /// Configuration keys whose assigned value is itself the key and
    /// metric of an alarm the module raises (snmp-threshold's `metric`):
    /// the top manager adds each assignment's value.
    #[serde(default)]
    pub from_config: Vec<Spanned<String>>,
}

/// The alarm keys and metrics of a signed manifest, each sorted and
/// without duplicates so the signed encoding is canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emits {
    pub keys: Vec<String>,
    pub metrics: Vec<String>,
    /// Configuration keys whose assigned values are alarm keys and
    /// metrics too ([`EmitsSpec::from_config`]).
    pub from_config: Vec<String>,
}

/// An alarm key as a manifest declares it: at most [`MAX_EMIT_CHARS`]
/// ASCII letters, digits and `. - _ / : @ %`, starting with a letter; a
/// family ends in `:*` (`fs.used:*`), and `*` appears nowhere else. These
/// names reach operators' terminals and rule errors, so nothing that
/// could be a control sequence or a line break is accepted.
pub fn validate_emitted_key(key: &str) -> Result<(), String> {
    let name = key.strip_suffix(":*").unwrap_or(key);
    validate_emitted_name(name, key.len()).map_err(|reason| {
        format!("an alarm key {reason}, and a key family ends in `:*` (`fs.used:*`)")
    })
}

/// A metric name as a manifest declares it: the same characters as a key
/// ([`validate_emitted_key`]), without families.
pub fn validate_emitted_metric(metric: &str) -> Result<(), String> {
    validate_emitted_name(metric, metric.len()).map_err(|reason| format!("a metric {reason}"))
}

fn validate_emitted_name(name: &str, whole_len: usize) -> Result<(), String> {
    let ok_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':' | '@' | '%');
    if name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(ok_char)
        && whole_len <= MAX_EMIT_CHARS
    {
        Ok(())
    } else {
        Err(format!(
            "starts with a letter and holds only ASCII letters, digits and `. - _ / : @ %` (at most {MAX_EMIT_CHARS})"
        ))
    }
}

/// One configuration key as the author declares it:
///
/// ```toml
/// [config.min_count]
/// type = "integer"
/// default = 1
/// description = "fewest live processes per name before alarming"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigKeySpec {
    #[serde(rename = "type")]
    pub kind: ConfigType,
    /// An assignment that leaves it out is refused.
    #[serde(default)]
    pub required: bool,
    /// What the module uses when the key is not set (documentation: the
    /// module applies its own default).
    pub default: Option<Spanned<ScalarText>>,
    /// One line for the operator.
    pub description: Spanned<String>,
}

/// Why an author's `manifest.toml` was refused, with the 1-based line and
/// column of the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {reason}")]
pub struct SpecError {
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl SpecError {
    fn at(text: &str, span: Range<usize>, reason: impl Into<String>) -> SpecError {
        let (line, column) = crate::source::line_column(text, span.start);
        SpecError {
            line,
            column,
            reason: reason.into(),
        }
    }
}

impl ManifestSpec {
    fn default_validity() -> u64 {
        365
    }

    /// Parses an author's manifest and checks its configuration schema;
    /// errors carry line and column.
    pub fn from_toml(text: &str) -> Result<ManifestSpec, SpecError> {
        let spec: ManifestSpec = toml::from_str(text).map_err(|e| {
            // One line, so `file:line:column: reason` stays one line.
            let reason = e.message().trim().replace('\n', "; ");
            SpecError::at(text, e.span().unwrap_or(0..0), reason)
        })?;
        for (name, key) in &spec.config {
            let refuse = |span: Range<usize>, reason: String| {
                Err(SpecError::at(
                    text,
                    span,
                    format!("config key `{}`: {reason}", name.get_ref().escape_debug()),
                ))
            };
            if let Err(reason) = validate_config_key_name(name.get_ref()) {
                return refuse(name.span(), reason);
            }
            let description = key.description.get_ref();
            // Shown in operators' terminals (topology errors): no escape
            // sequence or line break may come with it.
            if description.trim().is_empty() || description.contains(char::is_control) {
                return refuse(
                    key.description.span(),
                    "`description` must be one line of text, without control characters".into(),
                );
            }
            if let Some(default) = &key.default {
                if key.required {
                    return refuse(
                        default.span(),
                        "a required key has no default; drop `default` or `required`".into(),
                    );
                }
                if let Err(reason) = key.kind.check(&default.get_ref().0) {
                    return refuse(default.span(), format!("default {reason}"));
                }
            }
        }
        for (what, names, check) in [
            (
                "keys",
                &spec.emits.keys,
                validate_emitted_key as fn(&str) -> Result<(), String>,
            ),
            ("metrics", &spec.emits.metrics, validate_emitted_metric),
        ] {
            if let Some(extra) = names.get(MAX_EMITS) {
                return Err(SpecError::at(
                    text,
                    extra.span(),
                    format!("emits.{what}: at most {MAX_EMITS} entries"),
                ));
            }
            for name in names {
                if let Err(reason) = check(name.get_ref()) {
                    return Err(SpecError::at(
                        text,
                        name.span(),
                        format!("emits.{what} `{}`: {reason}", name.get_ref().escape_debug()),
                    ));
                }
            }
        }
        if let Some(extra) = spec.emits.from_config.get(MAX_EMITS) {
            return Err(SpecError::at(
                text,
                extra.span(),
                format!("emits.from_config: at most {MAX_EMITS} entries"),
            ));
        }
        for name in &spec.emits.from_config {
            if !spec.config.keys().any(|k| k.get_ref() == name.get_ref()) {
                return Err(SpecError::at(
                    text,
                    name.span(),
                    format!(
                        "emits.from_config `{}`: not a key of `[config]`",
                        name.get_ref().escape_debug()
                    ),
                ));
            }
        }
        Ok(spec)
    }

    /// The declared alarm keys and metrics, sorted and deduplicated, as
    /// the manifest signs them.
    pub fn emitted(&self) -> Emits {
        let sorted = |names: &[Spanned<String>]| {
            let set: std::collections::BTreeSet<String> =
                names.iter().map(|n| n.get_ref().clone()).collect();
            set.into_iter().collect()
        };
        Emits {
            keys: sorted(&self.emits.keys),
            metrics: sorted(&self.emits.metrics),
            from_config: sorted(&self.emits.from_config),
        }
    }

    /// The declared configuration, sorted by key, as the manifest signs it.
    pub fn config_keys(&self) -> Vec<ConfigKey> {
        self.config
            .iter()
            .map(|(name, key)| ConfigKey {
                name: name.get_ref().clone(),
                kind: key.kind,
                required: key.required,
                default: key.default.as_ref().map(|d| d.get_ref().0.clone()),
                description: key.description.get_ref().trim().to_owned(),
            })
            .collect()
    }
}

/// The key the node itself reads (the tick period); no module declares it.
pub const PERIOD_KEY: &str = "period";

/// Config key names: a letter, then ASCII letters, digits, `_`, `-` or `.`,
/// at most [`MAX_NAME_CHARS`]; never [`PERIOD_KEY`].
pub fn validate_config_key_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !name.starts_with(|c: char| c.is_ascii_alphabetic())
        || !name.chars().all(ok_char)
        || name.len() > MAX_NAME_CHARS
    {
        return Err(format!(
            "a key name starts with a letter and holds only ASCII letters, digits, `_`, `-` and `.` (at most {MAX_NAME_CHARS})"
        ));
    }
    if name == PERIOD_KEY {
        return Err("`period` is the node's own key (the tick period); do not declare it".into());
    }
    Ok(())
}

/// What a configuration value must look like. Modules receive every value
/// as a string; the type says which strings the module accepts, in the
/// forms the SDK (`agad_sdk::config`) parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigType {
    /// Any text.
    String,
    /// A whole number, 0 or more.
    Integer,
    /// A finite decimal number.
    Number,
    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
    Boolean,
    /// `500ms`, `10s`, `2m`, `1h`.
    Duration,
    /// Comma-separated strings (`"sshd,cron"`).
    List,
}

impl ConfigType {
    pub fn name(self) -> &'static str {
        match self {
            ConfigType::String => "string",
            ConfigType::Integer => "integer",
            ConfigType::Number => "number",
            ConfigType::Boolean => "boolean",
            ConfigType::Duration => "duration",
            ConfigType::List => "list",
        }
    }

    /// Whether `value` (as the module receives it; surrounding spaces are
    /// ignored, as the SDK does) is of this type; the error completes the
    /// sentence `<value> ...`.
    pub fn check(self, value: &str) -> Result<(), String> {
        let value = value.trim();
        let (ok, expected) = match self {
            ConfigType::String | ConfigType::List => (true, ""),
            ConfigType::Integer => (value.parse::<u64>().is_ok(), "a whole number (0 or more)"),
            ConfigType::Number => (
                value.parse::<f64>().is_ok_and(f64::is_finite),
                "a finite number",
            ),
            ConfigType::Boolean => (
                matches!(
                    value.to_ascii_lowercase().as_str(),
                    "true" | "false" | "yes" | "no" | "on" | "off" | "1" | "0"
                ),
                "true or false",
            ),
            ConfigType::Duration => (
                crate::parse_duration(value).is_some_and(|d| !d.is_zero()),
                "a positive duration (e.g. 500ms, 10s, 2m, 1h)",
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("`{}` is not {expected}", value.escape_debug()))
        }
    }
}

impl fmt::Display for ConfigType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scalar TOML value of any type, kept as the string a module will
/// receive: modules read configuration as strings whatever the author
/// typed, so `threshold = 90` and `threshold = "90"` mean the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, integer, float or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ScalarText, E> {
                // Debug keeps the `.0` of `90.0`, so a float stays visibly one.
                Ok(ScalarText(format!("{v:?}")))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

/// One configuration key of a signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigKey {
    pub name: String,
    pub kind: ConfigType,
    pub required: bool,
    pub default: Option<String>,
    pub description: String,
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
    /// The configuration keys the module accepts, sorted by name.
    pub config: Vec<ConfigKey>,
    /// The alarm keys and metrics its alarms carry (empty when the author
    /// declared none).
    pub emits: Emits,
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

    pub fn config_key(&self, name: &str) -> Option<&ConfigKey> {
        self.config.iter().find(|k| k.name == name)
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
        assert!(err.starts_with("6:1: "), "{err}");
        assert!(err.contains("capabilites"), "{err}");
    }

    const HEAD: &str =
        "name = \"x\"\nversion = \"0.1.0\"\nsequence = 1\nkind = \"inspector\"\narea = \"fault\"\n";

    #[test]
    fn config_schema_parses_and_is_signed_sorted() {
        let spec = ManifestSpec::from_toml(&format!(
            "{HEAD}\n[config.processes]\ntype = \"list\"\nrequired = true\ndescription = \"process names\"\n\n\
             [config.min_count]\ntype = \"integer\"\ndefault = 1\ndescription = \"fewest live processes\"\n\n\
             [config.ratio]\ntype = \"number\"\ndefault = 0.5\ndescription = \"a share\"\n\n\
             [config.on]\ntype = \"boolean\"\ndefault = \"yes\"\ndescription = \"a switch\"\n\n\
             [config.every]\ntype = \"duration\"\ndefault = \"10s\"\ndescription = \"how often\"\n\n\
             [config.label]\ntype = \"string\"\ndescription = \"free text\"\n"
        ))
        .unwrap();
        let keys = spec.config_keys();
        let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            ["every", "label", "min_count", "on", "processes", "ratio"]
        );
        let min_count = &keys[2];
        assert_eq!(min_count.kind, ConfigType::Integer);
        assert_eq!(min_count.default.as_deref(), Some("1"));
        assert!(!min_count.required);
        assert!(keys[4].required);
        assert_eq!(keys[5].default.as_deref(), Some("0.5"));
        assert!(ManifestSpec::from_toml(HEAD).unwrap().config.is_empty());
    }

    #[test]
    fn invalid_config_schema_is_refused_with_line_and_column() {
        let err = |extra: &str| {
            ManifestSpec::from_toml(&format!("{HEAD}{extra}"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("[config.n]\ntype = \"integer\"\ndefault = \"two\"\ndescription = \"d\"\n"),
            "8:11: config key `n`: default `two` is not a whole number (0 or more)"
        );
        assert_eq!(
            err(
                "[config.n]\ntype = \"integer\"\nrequired = true\ndefault = 1\ndescription = \"d\"\n"
            ),
            "9:11: config key `n`: a required key has no default; drop `default` or `required`"
        );
        assert!(
            err("[config.n]\ntype = \"integr\"\ndescription = \"d\"\n")
                .starts_with("7:8: unknown variant `integr`"),
            "{}",
            err("[config.n]\ntype = \"integr\"\ndescription = \"d\"\n")
        );
        assert!(err("[config.n]\ntype = \"integer\"\n").contains("missing field `description`"),);
        assert!(
            err("[config.n]\ntype = \"integer\"\ndescription = \"d\"\nrequird = true\n")
                .starts_with("9:1: unknown field `requird`"),
        );
        assert_eq!(
            err("[config.period]\ntype = \"duration\"\ndescription = \"d\"\n"),
            "6:9: config key `period`: `period` is the node's own key (the tick period); do not declare it"
        );
        assert!(
            err("[config.\"9 lives\"]\ntype = \"string\"\ndescription = \"d\"\n")
                .starts_with("6:9: config key `9 lives`: a key name starts with a letter"),
        );
        assert_eq!(
            err("[config.n]\ntype = \"string\"\ndescription = \"\"\n"),
            "8:15: config key `n`: `description` must be one line of text, without control characters"
        );
        assert!(
            err("[config.n]\ntype = \"string\"\ndescription = \"red \\u001b[31m\"\n")
                .starts_with("8:15: config key `n`: `description` must be one line"),
        );
    }

    #[test]
    fn emits_are_signed_sorted_and_deduplicated() {
        let spec = ManifestSpec::from_toml(&format!(
            "{HEAD}[emits]\nkeys = [\"fs.used:*\", \"cpu.total\", \"cpu.total\"]\nmetrics = [\"fs.used-percent\", \"cpu.total-percent\"]\n"
        ))
        .unwrap();
        let emits = spec.emitted();
        assert_eq!(emits.keys, ["cpu.total", "fs.used:*"]);
        assert_eq!(emits.metrics, ["cpu.total-percent", "fs.used-percent"]);
        // No `[emits]`: nothing declared, still a valid manifest.
        assert_eq!(
            ManifestSpec::from_toml(HEAD).unwrap().emitted(),
            Emits::default()
        );
        // Part of the signed bytes: a manifest that declares other keys
        // is another manifest.
        let key = crate::SecretKey::generate();
        let signed = crate::Bundle::sign(spec.clone(), b"w".to_vec(), &key, 1);
        let mut forged = signed.manifest.clone();
        forged.emits.keys.push("mem.used".into());
        assert_ne!(forged.canonical_bytes(), signed.manifest.canonical_bytes());
        assert_eq!(signed.manifest.emits, emits);
    }

    #[test]
    fn invalid_emits_are_refused_with_line_and_column() {
        let err = |extra: &str| {
            ManifestSpec::from_toml(&format!("{HEAD}[emits]\n{extra}\n"))
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("keys = [\"cpu.total\", \"fs.*.used\"]")
                .starts_with("7:22: emits.keys `fs.*.used`: an alarm key starts with a letter"),
            "{}",
            err("keys = [\"cpu.total\", \"fs.*.used\"]")
        );
        for bad in [
            "",
            "9lives",
            "red\\u001b[31m",
            "a b",
            "fs.used:**",
            ":*",
            "x\\nINFO forged",
        ] {
            assert!(
                err(&format!("keys = [\"{bad}\"]")).starts_with("7:9: emits.keys"),
                "{bad:?}: {}",
                err(&format!("keys = [\"{bad}\"]"))
            );
        }
        assert!(
            err("metrics = [\"cpu:*\"]")
                .starts_with("7:12: emits.metrics `cpu:*`: a metric starts")
        );
        assert!(
            err(&format!(
                "metrics = [\"{}\"]",
                "m".repeat(MAX_EMIT_CHARS + 1)
            ))
            .contains("at most 128")
        );
        let many: Vec<String> = (0..=MAX_EMITS).map(|i| format!("\"k{i}\"")).collect();
        assert!(
            err(&format!("keys = [{}]", many.join(", ")))
                .contains("emits.keys: at most 64 entries"),
        );
        assert!(err("key = [\"cpu.total\"]").contains("unknown field `key`"));
        assert!(
            err("from_config = [\"metric\"]")
                .starts_with("7:16: emits.from_config `metric`: not a key of `[config]`")
        );
        for good in [
            "cpu.total",
            "fs.used:*",
            "snmp.agent:*",
            "proc.running:sshd",
            "if.link:eth0/1",
        ] {
            validate_emitted_key(good).unwrap();
        }
    }

    #[test]
    fn config_types_accept_what_the_sdk_parses() {
        use ConfigType::*;
        for (kind, good, bad) in [
            (
                Integer,
                &["0", " 42 ", "18446744073709551615"][..],
                &["-1", "1.5", "two", "1e3"][..],
            ),
            (
                Number,
                &["0", "-2.5", "1e3", " 90 "],
                &["NaN", "inf", "ninety"],
            ),
            (
                Boolean,
                &["true", "FALSE", "yes", "off", "1"],
                &["maybe", "2", "y"],
            ),
            (
                Duration,
                &["500ms", "10s", "2m", "1h"],
                &["10", "0s", "1.5s", "soon"],
            ),
            (String, &["", "anything at all"], &[]),
            (List, &["sshd,cron", ""], &[]),
        ] {
            for value in good {
                assert_eq!(kind.check(value), Ok(()), "{kind} {value:?}");
            }
            for value in bad {
                assert!(kind.check(value).is_err(), "{kind} {value:?}");
            }
        }
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
            err.starts_with("1:8: ") && err.contains("module name may hold only"),
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
