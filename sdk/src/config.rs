//! Typed access to the `config` (`list<tuple<string, string>>`) a module is
//! deployed with.
//!
//! Every module names the keys it understands; anything else is refused so
//! that a misspelt key (`treshold`) fails at `init` instead of silently
//! running with the default. Errors name the key and quote the value, e.g.
//! `threshold: "abc" is not a number`.

use crate::types::{Comparison, Severity};
use std::collections::BTreeMap;
use std::fmt;

/// Keys the runtime itself interprets (the tick period); a module accepts and
/// ignores them so that one config list can serve both.
pub const RESERVED_KEYS: &[&str] = &["period"];

/// Keys shared by the inspectors built on this SDK: hysteresis counts and the
/// report window. [`Config::parse`] accepts them besides a module's own keys
/// (read them with [`Config::common`]); [`Config::parse_strict`] does not.
pub const COMMON_KEYS: &[&str] = &["raise_after", "clear_after", "window_secs"];

/// Why a configuration was refused; its `Display` is the message handed back
/// to whoever deployed the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A key the module does not know.
    Unknown {
        /// The key as given.
        key: String,
        /// Every key the module accepts, for the message.
        known: Vec<String>,
    },
    /// The same key given more than once.
    Duplicate {
        /// The repeated key.
        key: String,
    },
    /// A required key is absent (or empty).
    Missing {
        /// The missing key.
        key: String,
    },
    /// A value that does not parse or is out of range; `reason` completes the
    /// sentence `<key>: "<value>" <reason>`.
    Invalid {
        /// The key whose value is refused.
        key: String,
        /// The value as given.
        value: String,
        /// Why, e.g. `is not a number`.
        reason: String,
    },
}

impl ConfigError {
    /// A [`ConfigError::Invalid`]: `<key>: "<value>" <reason>`.
    pub fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Unknown { key, known } => {
                write!(
                    f,
                    "unknown config key \"{key}\" (known: {})",
                    known.join(", ")
                )
            }
            ConfigError::Duplicate { key } => write!(f, "{key}: given more than once"),
            ConfigError::Missing { key } => write!(f, "{key}: required but not set"),
            ConfigError::Invalid { key, value, reason } => write!(f, "{key}: \"{value}\" {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for String {
    fn from(error: ConfigError) -> String {
        error.to_string()
    }
}

/// A value type a config entry can be read as.
pub trait FromConfig: Sized {
    /// Parses `value`; on failure returns the end of the sentence
    /// `<key>: "<value>" ...` (e.g. `is not a number`).
    fn from_config(value: &str) -> Result<Self, String>;
}

impl FromConfig for String {
    fn from_config(value: &str) -> Result<Self, String> {
        Ok(value.to_owned())
    }
}

impl FromConfig for f64 {
    fn from_config(value: &str) -> Result<Self, String> {
        match value.parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(number),
            Ok(_) => Err("is not a finite number".into()),
            Err(_) => Err("is not a number".into()),
        }
    }
}

macro_rules! from_config_unsigned {
    ($($t:ty),*) => {$(
        impl FromConfig for $t {
            fn from_config(value: &str) -> Result<Self, String> {
                value.parse::<$t>().map_err(|_| {
                    format!("is not a whole number between 0 and {}", <$t>::MAX)
                })
            }
        }
    )*};
}
from_config_unsigned!(u32, u64);

impl FromConfig for bool {
    fn from_config(value: &str) -> Result<Self, String> {
        match value.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err("is not true or false".into()),
        }
    }
}

/// `500ms`, `10s`, `2m`, `1h`, as the manifest's `duration` type: a whole
/// number and a unit, so `10` never means ten of a unit the reader guesses.
impl FromConfig for std::time::Duration {
    fn from_config(value: &str) -> Result<Self, String> {
        let bad = || "is not a duration (e.g. 500ms, 10s, 2m, 1h)".to_owned();
        let split = value.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = value.split_at(split);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let secs = |factor: u64| n.checked_mul(factor).map(std::time::Duration::from_secs);
        match unit {
            "ms" => Some(std::time::Duration::from_millis(n)),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            _ => None,
        }
        .ok_or_else(bad)
    }
}

impl FromConfig for Severity {
    fn from_config(value: &str) -> Result<Self, String> {
        match value.to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "minor" => Ok(Severity::Minor),
            "major" => Ok(Severity::Major),
            "critical" => Ok(Severity::Critical),
            _ => Err("is not one of info, warning, minor, major, critical".into()),
        }
    }
}

impl FromConfig for Comparison {
    fn from_config(value: &str) -> Result<Self, String> {
        match value.to_ascii_lowercase().as_str() {
            "above" | ">" => Ok(Comparison::Above),
            "below" | "<" => Ok(Comparison::Below),
            "equal" | "=" | "==" => Ok(Comparison::Equal),
            "not-equal" | "!=" => Ok(Comparison::NotEqual),
            _ => Err("is not one of above, below, equal, not-equal".into()),
        }
    }
}

/// A validated configuration: no unknown keys, no duplicates, values trimmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    values: BTreeMap<String, String>,
}

impl Config {
    /// Checks `pairs` against the keys an inspector knows: `known` (its own
    /// keys) plus [`COMMON_KEYS`], which [`Config::common`] reads, so an
    /// author lists only the module's own keys. [`RESERVED_KEYS`] (the
    /// node's `period`) are accepted and dropped. Unknown and repeated keys
    /// are refused.
    ///
    /// ```
    /// use agad_sdk::config::{Config, pairs};
    /// let config = Config::parse(&pairs(&[("limit", "5"), ("raise_after", "2")]), &["limit"])?;
    /// assert_eq!(config.get_or("limit", 4.0)?, 5.0);
    /// assert_eq!(config.common()?.raise_after, 2);
    /// assert!(Config::parse(&pairs(&[("limt", "5")]), &["limit"]).is_err());
    /// # Ok::<(), agad_sdk::ConfigError>(())
    /// ```
    pub fn parse(pairs: &[(String, String)], known: &[&str]) -> Result<Config, ConfigError> {
        let mut all: Vec<&str> = known.to_vec();
        all.extend(COMMON_KEYS.iter().filter(|k| !known.contains(k)));
        Config::parse_strict(pairs, &all)
    }

    /// Like [`Config::parse`] but accepts only `known` (and
    /// [`RESERVED_KEYS`]), not [`COMMON_KEYS`]: for a specialist's
    /// arguments, or a module that has no hysteresis or report window.
    pub fn parse_strict(pairs: &[(String, String)], known: &[&str]) -> Result<Config, ConfigError> {
        let mut values = BTreeMap::new();
        for (key, value) in pairs {
            let key = key.trim();
            if RESERVED_KEYS.contains(&key) {
                continue;
            }
            if !known.contains(&key) {
                return Err(ConfigError::Unknown {
                    key: key.to_owned(),
                    known: known.iter().map(|k| (*k).to_owned()).collect(),
                });
            }
            if values
                .insert(key.to_owned(), value.trim().to_owned())
                .is_some()
            {
                return Err(ConfigError::Duplicate {
                    key: key.to_owned(),
                });
            }
        }
        Ok(Config { values })
    }

    /// The raw value, `None` when absent or empty (an empty value means "use
    /// the default", which is what a form with a blank field sends).
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value parsed as `T`, `None` when absent.
    pub fn get<T: FromConfig>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        self.raw(key)
            .map(|value| {
                T::from_config(value).map_err(|reason| ConfigError::invalid(key, value, reason))
            })
            .transpose()
    }

    /// The value parsed as `T`, or `default` when absent.
    pub fn get_or<T: FromConfig>(&self, key: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// The value parsed as `T`; absent is an error.
    pub fn require<T: FromConfig>(&self, key: &str) -> Result<T, ConfigError> {
        self.get(key)?.ok_or_else(|| ConfigError::Missing {
            key: key.to_owned(),
        })
    }

    /// A number within `min..=max`, or `default` when absent.
    pub fn number_in(
        &self,
        key: &str,
        default: f64,
        min: f64,
        max: f64,
    ) -> Result<f64, ConfigError> {
        let value = self.get_or(key, default)?;
        check_range(key, value, min, max)
    }

    /// An optional number within `min..=max`.
    pub fn optional_number_in(
        &self,
        key: &str,
        min: f64,
        max: f64,
    ) -> Result<Option<f64>, ConfigError> {
        self.get::<f64>(key)?
            .map(|value| check_range(key, value, min, max))
            .transpose()
    }

    /// A whole number ≥ `min`, or `default` when absent.
    pub fn count_at_least(&self, key: &str, default: u32, min: u32) -> Result<u32, ConfigError> {
        let value = self.get_or(key, default)?;
        if value < min {
            return Err(ConfigError::invalid(
                key,
                &value.to_string(),
                format!("must be at least {min}"),
            ));
        }
        Ok(value)
    }

    /// A comma-separated list, items trimmed, empty items dropped; empty when
    /// the key is absent.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.raw(key)
            .map(|value| {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reads the keys in [`COMMON_KEYS`] with the SDK's defaults.
    pub fn common(&self) -> Result<Common, ConfigError> {
        Ok(Common {
            raise_after: self.count_at_least("raise_after", Common::DEFAULT_RAISE_AFTER, 1)?,
            clear_after: self.count_at_least("clear_after", Common::DEFAULT_CLEAR_AFTER, 1)?,
            window_secs: {
                let secs: u64 = self.get_or("window_secs", Common::DEFAULT_WINDOW_SECS)?;
                if secs == 0 {
                    return Err(ConfigError::invalid(
                        "window_secs",
                        "0",
                        "must be at least 1",
                    ));
                }
                secs
            },
        })
    }
}

fn check_range(key: &str, value: f64, min: f64, max: f64) -> Result<f64, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            &value.to_string(),
            format!("is not between {min} and {max}"),
        ));
    }
    Ok(value)
}

/// Settings every inspector of this SDK shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Common {
    /// Consecutive breaching samples before an alarm is raised.
    pub raise_after: u32,
    /// Consecutive normal samples before a raised alarm is cleared.
    pub clear_after: u32,
    /// Length of one report window, in seconds.
    pub window_secs: u64,
}

impl Common {
    /// Default of `raise_after`.
    pub const DEFAULT_RAISE_AFTER: u32 = 2;
    /// Default of `clear_after`.
    pub const DEFAULT_CLEAR_AFTER: u32 = 3;
    /// Default of `window_secs`.
    pub const DEFAULT_WINDOW_SECS: u64 = 60;
}

impl Default for Common {
    fn default() -> Self {
        Common {
            raise_after: Common::DEFAULT_RAISE_AFTER,
            clear_after: Common::DEFAULT_CLEAR_AFTER,
            window_secs: Common::DEFAULT_WINDOW_SECS,
        }
    }
}

/// A config list from string pairs, as tests and tools write it.
pub fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &[
        "threshold",
        "mounts",
        "enabled",
        "count",
        "severity",
        "comparison",
    ];

    #[test]
    fn typed_getters_with_defaults() {
        let config = Config::parse(
            &pairs(&[("threshold", " 75.5 "), ("enabled", "yes"), ("count", "4")]),
            KNOWN,
        )
        .expect("valid");
        assert_eq!(config.get_or("threshold", 90.0).expect("number"), 75.5);
        assert!(config.get_or("enabled", false).expect("bool"));
        assert_eq!(config.get_or::<u32>("count", 1).expect("count"), 4);
        assert_eq!(
            config.get_or("severity", Severity::Major).expect("default"),
            Severity::Major
        );
        assert_eq!(config.get::<f64>("comparison").expect("absent"), None);
    }

    #[test]
    fn not_a_number_names_key_and_value() {
        let config = Config::parse(&pairs(&[("threshold", "abc")]), KNOWN).expect("valid keys");
        let error = config.get_or("threshold", 90.0).expect_err("not a number");
        assert_eq!(error.to_string(), "threshold: \"abc\" is not a number");
        let error = Config::parse(&pairs(&[("threshold", "NaN")]), KNOWN)
            .expect("valid keys")
            .get::<f64>("threshold")
            .expect_err("nan");
        assert_eq!(
            error.to_string(),
            "threshold: \"NaN\" is not a finite number"
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_period_is_ignored() {
        let error = Config::parse(&pairs(&[("treshold", "1")]), KNOWN).expect_err("unknown");
        assert!(
            error
                .to_string()
                .starts_with("unknown config key \"treshold\""),
            "{error}"
        );
        let config = Config::parse(&pairs(&[("period", "10"), ("count", "2")]), KNOWN)
            .expect("period accepted");
        assert_eq!(config.raw("period"), None);
    }

    #[test]
    fn duplicates_are_refused() {
        let error =
            Config::parse(&pairs(&[("count", "1"), ("count", "2")]), KNOWN).expect_err("dup");
        assert_eq!(
            error,
            ConfigError::Duplicate {
                key: "count".into()
            }
        );
    }

    #[test]
    fn required_ranges_and_enums() {
        let config = Config::parse(
            &pairs(&[
                ("threshold", "150"),
                ("severity", "sev"),
                ("comparison", "BELOW"),
                ("count", "-1"),
            ]),
            KNOWN,
        )
        .expect("valid keys");
        assert_eq!(
            config
                .number_in("threshold", 90.0, 0.0, 100.0)
                .expect_err("range")
                .to_string(),
            "threshold: \"150\" is not between 0 and 100"
        );
        assert!(config.get::<Severity>("severity").is_err());
        assert_eq!(
            config.get::<Comparison>("comparison").expect("below"),
            Some(Comparison::Below)
        );
        assert!(config.get::<u32>("count").is_err());
        assert_eq!(
            config
                .require::<String>("mounts")
                .expect_err("missing")
                .to_string(),
            "mounts: required but not set"
        );
    }

    #[test]
    fn lists_and_empty_values() {
        let config = Config::parse(
            &pairs(&[("mounts", " /, /var ,,/home"), ("threshold", "")]),
            KNOWN,
        )
        .expect("valid");
        assert_eq!(config.list("mounts"), vec!["/", "/var", "/home"]);
        assert_eq!(
            config
                .get_or("threshold", 90.0)
                .expect("empty means default"),
            90.0
        );
        assert!(config.list("enabled").is_empty());
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(
            Duration::from_config("1500ms"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(Duration::from_config("2m"), Ok(Duration::from_secs(120)));
        assert!(Duration::from_config("2").is_err());
        assert!(Duration::from_config("1.5s").is_err());
    }

    #[test]
    fn common_keys_need_no_listing_except_when_strict() {
        let config = Config::parse(&pairs(&[("window_secs", "5"), ("count", "1")]), KNOWN)
            .expect("common keys accepted");
        assert_eq!(config.common().expect("valid").window_secs, 5);
        let error = Config::parse_strict(&pairs(&[("window_secs", "5")]), KNOWN)
            .expect_err("not a specialist's key");
        assert!(
            error
                .to_string()
                .starts_with("unknown config key \"window_secs\"")
        );
        let error = Config::parse(&pairs(&[("x", "1")]), &["count"]).expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "unknown config key \"x\" (known: count, raise_after, clear_after, window_secs)"
        );
    }

    #[test]
    fn common_keys() {
        let config = Config::parse(&pairs(&[("raise_after", "0")]), COMMON_KEYS).expect("valid");
        assert_eq!(
            config.common().expect_err("zero").to_string(),
            "raise_after: \"0\" must be at least 1"
        );
        let config = Config::parse(&[], COMMON_KEYS).expect("valid");
        assert_eq!(config.common().expect("defaults"), Common::default());
    }
}
