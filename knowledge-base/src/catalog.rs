//! What a rule set may name: specialists and their arguments, resident
//! modules (inspectors, probes) and their configuration, alarm keys and
//! metrics. The caller fills it — the top manager from BGC, `agad kb check`
//! from a catalog file — and [`crate::KnowledgeBase::parse`] checks every
//! rule against it, so a rule naming something no node could run is refused
//! when it is written, not when an alarm finally reaches it.

use agad_protocol::manifest::{ConfigKey, Kind, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Everything rules may refer to. Plain data: build it by hand, from
/// manifests ([`Catalog::add_manifest`]) or from a TOML file (serde).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// On-demand modules (manifest kind `specialist`) by name, with the
    /// arguments they accept (a signed manifest's `config` keys: name,
    /// type, required).
    #[serde(default)]
    pub specialists: BTreeMap<String, Vec<ConfigKey>>,
    /// Resident modules (inspectors and probes) by name, with their
    /// configuration keys; `period` is always allowed (the node reads it).
    #[serde(default)]
    pub modules: BTreeMap<String, Vec<ConfigKey>>,
    /// Alarm keys inspectors raise: exact (`cpu.total`) or a family whose
    /// instances follow a colon (`fs.used:*` covers `fs.used:/var`).
    #[serde(default)]
    pub keys: BTreeSet<String>,
    /// Metric names inspectors measure (`cpu.total-percent`).
    #[serde(default)]
    pub metrics: BTreeSet<String>,
    /// Nodes rules and groups may name; `None`: not checked (the topology
    /// is not at hand).
    #[serde(default)]
    pub nodes: Option<BTreeSet<String>>,
    /// Domains schedules may target; `None`: not checked.
    #[serde(default)]
    pub domains: Option<BTreeSet<String>>,
    /// Names (specialists, modules, keys, metrics) are not checked, and
    /// arguments of unknown modules are taken as text: for a domain
    /// manager re-reading a rule set its publisher checked against the
    /// whole catalog, holding only its own domain's modules. Syntax,
    /// templates and durations are still checked.
    #[serde(skip)]
    pub trusting: bool,
}

impl Catalog {
    /// A catalog that checks no name (see [`Catalog::trusting`]).
    pub fn trusting() -> Catalog {
        Catalog {
            trusting: true,
            ..Catalog::default()
        }
    }

    /// Adds a signed module: a specialist's arguments or a resident
    /// module's configuration.
    pub fn add_manifest(&mut self, manifest: &Manifest) {
        let keys = manifest.config.clone();
        match manifest.kind {
            Kind::Specialist => self.specialists.insert(manifest.name.clone(), keys),
            Kind::Inspector => self.modules.insert(manifest.name.clone(), keys),
        };
    }

    /// Whether an alarm key pattern as a rule writes it (`cpu.total`,
    /// `fs.used:/var`, `fs.used:*`) names a key inspectors raise.
    pub fn knows_key(&self, pattern: &str) -> bool {
        if self.keys.contains(pattern) {
            return true;
        }
        // An instance of a known family: `fs.used:/var` under `fs.used:*`.
        pattern
            .find(':')
            .is_some_and(|colon| self.keys.contains(&format!("{}*", &pattern[..=colon])))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_families_cover_their_instances() {
        let catalog = Catalog {
            keys: ["cpu.total".to_owned(), "fs.used:*".to_owned()].into(),
            ..Catalog::default()
        };
        assert!(catalog.knows_key("cpu.total"));
        assert!(catalog.knows_key("fs.used:*"));
        assert!(catalog.knows_key("fs.used:/var"));
        assert!(!catalog.knows_key("fs.used"));
        assert!(!catalog.knows_key("cpu.total:x"));
        assert!(!catalog.knows_key("if.link:*"));
    }

    #[test]
    fn a_trusting_catalog_checks_syntax_but_no_name() {
        let rules = r#"
[[rule]]
name = "disk-full"
[rule.match]
key = "fs.used:*"
metric = "fs.used-percent"
[rule.diagnose]
specialist = "disk-usage"
args = { path = "{subject}", depth = 2 }
"#;
        let files = [("r.toml".to_owned(), rules.to_owned())];
        assert!(crate::KnowledgeBase::parse(&files, &Catalog::default()).is_err());
        let kb = crate::KnowledgeBase::parse(&files, &Catalog::trusting()).unwrap();
        assert_eq!(kb.rules().len(), 1);
        // A bad placeholder is still an error.
        let bad = [("r.toml".to_owned(), rules.replace("{subject}", "{subjct}"))];
        let errors = crate::KnowledgeBase::parse(&bad, &Catalog::trusting()).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
