//! What a rule set may name: specialists and their arguments, resident
//! modules (inspectors, probes) and their configuration, alarm keys and
//! metrics. The caller fills it — the top manager from BGC, `agad kb check`
//! from a catalog file — and [`crate::KnowledgeBase::parse`] checks every
//! rule against it, so a rule naming something no node could run is refused
//! when it is written, not when an alarm finally reaches it.

use agad_protocol::manifest::{ConfigKey, Emits, Kind, Manifest};
use agad_protocol::message::RUNTIME_MODULE;
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
    /// Accept any alarm key, metric and matched module (`[rule.match]`)
    /// without checking them: for a domain manager parsing a set the top
    /// manager already checked against every published module, when its
    /// replica holds only its own domain's modules. Specialists and the
    /// modules rules start or stop are still checked (their arguments and
    /// configuration have types), and they travel in every replica.
    #[serde(default)]
    pub trust_alarm_names: bool,
}

/// The alarm keys the runtime and the managers raise themselves (module
/// [`RUNTIME_MODULE`], or the module concerned for the per-module ones),
/// which no manifest declares: a node's disk, a module refused, crashing,
/// tampered with, over its state quota or output budget, a station failing
/// attestation, a host or agent down.
pub const RUNTIME_KEYS: &[&str] = &[
    "agad.agent-down",
    "agad.attestation-failed",
    "agad.disk-low",
    "agad.host-down",
    "agad.module-crash-loop",
    "agad.module-refused",
    "agad.module-tampered",
    "agad.output-dropped",
    "agad.state-quota",
];

/// The metrics of those alarms.
pub const RUNTIME_METRICS: &[&str] = &[
    "agad.dropped-outputs",
    "attestation.failed",
    "element.down-seconds",
    "fs.available-bytes",
    "module.refused",
    "module.restarts",
    "module.tampered",
    "state.used-bytes",
];

impl Catalog {
    /// A catalog holding only what the runtime itself raises
    /// ([`RUNTIME_KEYS`], [`RUNTIME_METRICS`]).
    pub fn with_runtime() -> Catalog {
        let mut catalog = Catalog::default();
        catalog
            .keys
            .extend(RUNTIME_KEYS.iter().map(|k| (*k).to_owned()));
        catalog
            .metrics
            .extend(RUNTIME_METRICS.iter().map(|m| (*m).to_owned()));
        catalog
    }

    /// Adds a signed module: a specialist's arguments or a resident
    /// module's configuration, and the alarm keys and metrics it declares.
    pub fn add_manifest(&mut self, manifest: &Manifest) {
        self.add_module(
            &manifest.name,
            manifest.kind,
            manifest.config.clone(),
            &manifest.emits,
        );
    }

    /// [`Catalog::add_manifest`] from its parts (an author's manifest
    /// before signing: `agad kb check` and the built-in inspectors).
    pub fn add_module(&mut self, name: &str, kind: Kind, config: Vec<ConfigKey>, emits: &Emits) {
        match kind {
            Kind::Specialist => self.specialists.insert(name.to_owned(), config),
            Kind::Inspector => self.modules.insert(name.to_owned(), config),
        };
        self.keys.extend(emits.keys.iter().cloned());
        self.metrics.extend(emits.metrics.iter().cloned());
    }

    /// Adds the alarm keys and metrics an assignment's configuration makes
    /// (`emits.from_config` of its module's manifest: snmp-threshold's
    /// `metric = "ups.load"` raises `ups.load`).
    pub fn add_assignment(&mut self, emits: &Emits, config: &[(String, String)]) {
        for (key, value) in config {
            if emits.from_config.contains(key) && !value.trim().is_empty() {
                self.keys.insert(value.trim().to_owned());
                self.metrics.insert(value.trim().to_owned());
            }
        }
    }

    /// Whether a rule may match alarms of `module`: a resident module, or
    /// the runtime itself (its own alarms carry [`RUNTIME_MODULE`]).
    pub fn knows_alarm_module(&self, module: &str) -> bool {
        self.trust_alarm_names || module == RUNTIME_MODULE || self.modules.contains_key(module)
    }

    /// Whether a rule may match alarms measuring `metric`.
    pub fn knows_metric(&self, metric: &str) -> bool {
        self.trust_alarm_names || self.metrics.contains(metric)
    }

    /// Whether an alarm key pattern as a rule writes it (`cpu.total`,
    /// `fs.used:/var`, `fs.used:*`) names a key inspectors raise.
    pub fn knows_key(&self, pattern: &str) -> bool {
        if self.trust_alarm_names || self.keys.contains(pattern) {
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

    fn manifest(name: &str, kind: Kind, extra: &str) -> Manifest {
        let spec = agad_protocol::ManifestSpec::from_toml(&format!(
            "name = \"{name}\"\nversion = \"0.1.0\"\nsequence = 1\nkind = \"{}\"\narea = \"fault\"\n{extra}",
            if kind == Kind::Specialist { "specialist" } else { "inspector" }
        ))
        .unwrap();
        agad_protocol::Bundle::sign(
            spec,
            b"w".to_vec(),
            &agad_protocol::SecretKey::generate(),
            1,
        )
        .manifest
    }

    #[test]
    fn manifests_bring_their_arguments_keys_and_metrics() {
        let mut catalog = Catalog::with_runtime();
        assert!(catalog.knows_key("agad.module-crash-loop"));
        assert!(catalog.metrics.contains("module.restarts"));
        assert!(catalog.knows_alarm_module("agad"));
        assert!(!catalog.knows_alarm_module("disk-space"));
        catalog.add_manifest(&manifest(
            "disk-space",
            Kind::Inspector,
            "[emits]\nkeys = [\"fs.used:*\"]\nmetrics = [\"fs.used-percent\"]\n",
        ));
        catalog.add_manifest(&manifest(
            "disk-usage",
            Kind::Specialist,
            "[config.path]\ntype = \"string\"\nrequired = true\ndescription = \"where\"\n",
        ));
        assert!(catalog.knows_alarm_module("disk-space"));
        assert!(catalog.knows_key("fs.used:/var"));
        assert!(catalog.metrics.contains("fs.used-percent"));
        assert_eq!(catalog.specialists["disk-usage"][0].name, "path");
        assert!(!catalog.modules.contains_key("disk-usage"));
        // An assignment's `metric` names its alarm when the manifest says so.
        let snmp = manifest(
            "snmp-threshold",
            Kind::Inspector,
            "[emits]\nfrom_config = [\"metric\"]\n[config.metric]\ntype = \"string\"\ndescription = \"m\"\n",
        );
        catalog.add_manifest(&snmp);
        catalog.add_assignment(
            &snmp.emits,
            &[
                ("metric".into(), "ups.load".into()),
                ("oid".into(), "1.3.6".into()),
            ],
        );
        assert!(catalog.knows_key("ups.load") && catalog.metrics.contains("ups.load"));
        assert!(!catalog.knows_key("1.3.6"));
        assert!(!catalog.knows_metric("if.oper-up") && !catalog.knows_alarm_module("if-health"));
        // A domain manager trusts the top manager's check of alarm names.
        catalog.trust_alarm_names = true;
        assert!(catalog.knows_key("if.link:eth0") && catalog.knows_metric("if.oper-up"));
        assert!(catalog.knows_alarm_module("if-health"));
    }
}
