//! BCN at the top manager: the knowledge-base rule set in force, kept in
//! BTPG next to the topology and covered by the same version (an apply
//! bumps it, so every domain's replica carries the new set and is pushed
//! and acknowledged like any other change), and the [`Catalog`] a set is
//! checked against before it is stored.
//!
//! The catalog is what this deployment can actually run: every module
//! published in BGC (specialists with their arguments, inspectors with
//! their configuration keys and the alarm keys and metrics their signed
//! manifests declare), the runtime's own alarms, the keys an assignment's
//! configuration makes (`emits.from_config`), and the topology's nodes and
//! domains. A rule naming anything else is refused at `agad kb apply`,
//! not when an alarm finally reaches it.

use super::{BaseError, Bases, Result, decode};
use agad_knowledge_base::{
    Catalog, KnowledgeBase, MAX_FILE_BYTES, MAX_FILES, MAX_SET_BYTES, SourceError,
};
use agad_protocol::Bundle;
use agad_protocol::topology::Topology;
use agad_protocol::wire;
use serde::{Deserialize, Serialize};

const RULES: &[u8] = b"rules";

/// Longest rules file name accepted (a name, not a path).
pub const MAX_FILE_NAME_CHARS: usize = 128;

/// The rule set in force, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSet {
    /// The bases version its apply made: a domain whose acknowledged
    /// replica version is at least this one holds the set.
    pub version: u64,
    /// (file name, text) as the operator wrote them, sorted by name: what
    /// replicas carry (`Replica::rules`).
    pub files: Vec<(String, String)>,
    /// The specialists its rules run: their bundles travel with every
    /// domain's replica.
    pub specialists: Vec<String>,
    /// The resident modules its rules and schedules start or stop: their
    /// bundles travel with every domain's replica too.
    pub modules: Vec<String>,
    pub rules: usize,
    pub schedules: usize,
    pub groups: usize,
}

/// Rules files as a client sends them: names without folders (`cpu.toml`),
/// unique, at most [`MAX_FILES`] of at most [`MAX_FILE_BYTES`] each and
/// [`MAX_SET_BYTES`] together (the set travels in every replica). Names
/// are stored, replicated and shown in errors, so they stay plain.
pub fn check_files(files: &[(String, String)]) -> Result<()> {
    let refuse = |reason: String| Err(BaseError::Refused(reason));
    if files.is_empty() {
        return refuse("no rules files".to_owned());
    }
    if files.len() > MAX_FILES {
        return refuse(format!(
            "{} rules files; a rule set has at most {MAX_FILES}",
            files.len()
        ));
    }
    let total: u64 = files.iter().map(|(_, text)| text.len() as u64).sum();
    if total > MAX_SET_BYTES {
        return refuse(format!(
            "{total} bytes of rules; a rule set is at most {MAX_SET_BYTES}"
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, text) in files {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !name.ends_with(".toml")
            || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !name.chars().all(plain)
            || name.len() > MAX_FILE_NAME_CHARS
        {
            return refuse(format!(
                "rules file name `{}`: a file name (no folder) of ASCII letters, digits, `.`, `-` and `_`, ending in `.toml`, at most {MAX_FILE_NAME_CHARS}",
                name.escape_debug()
            ));
        }
        if !seen.insert(name) {
            return refuse(format!("rules file `{name}` is given twice"));
        }
        if text.len() as u64 > MAX_FILE_BYTES {
            return refuse(format!(
                "rules file `{name}`: {} bytes; a rules file is at most {MAX_FILE_BYTES}",
                text.len()
            ));
        }
    }
    Ok(())
}

impl Bases {
    /// The rule set in force, if one was ever applied.
    pub fn rules(&self) -> Result<Option<RuleSet>> {
        self.btpg
            .get(RULES)?
            .map(|bytes| decode("rule set", &bytes))
            .transpose()
    }

    /// What rules may name now: BGC, the runtime's own alarms, the
    /// topology's assignments, nodes and domains.
    pub fn catalog(&self) -> Result<Catalog> {
        self.catalog_for(&self.topology()?)
    }

    /// [`Bases::catalog`] under `topology` instead of the one in force.
    pub fn catalog_for(&self, topology: &Topology) -> Result<Catalog> {
        self.catalog_of(self.bundles()?, topology)
    }

    fn catalog_of(&self, bundles: Vec<Bundle>, topology: &Topology) -> Result<Catalog> {
        let mut catalog = Catalog::with_runtime();
        for bundle in &bundles {
            catalog.add_manifest(&bundle.manifest);
        }
        for assignment in &topology.assignments {
            if let Some(bundle) = bundles
                .iter()
                .find(|b| b.manifest.name == assignment.module)
            {
                catalog.add_assignment(&bundle.manifest.emits, &assignment.config);
            }
        }
        catalog.nodes = Some(topology.nodes.iter().map(|n| n.name.clone()).collect());
        catalog.domains = Some(topology.domains.iter().map(|d| d.name.clone()).collect());
        Ok(catalog)
    }

    /// Checks `files` against [`Bases::catalog`]: the parsed set, or every
    /// error (`file:line:column: reason`).
    pub fn check_rules(
        &self,
        files: &[(String, String)],
    ) -> Result<std::result::Result<KnowledgeBase, Vec<SourceError>>> {
        check_files(files)?;
        Ok(KnowledgeBase::parse(files, &self.catalog()?))
    }

    /// How many errors the rule set in force would have under `topology`
    /// (a topology that removes a node or domain the rules name): 0 when
    /// there is no set.
    pub fn rules_errors_under(&self, topology: &Topology) -> Result<usize> {
        let Some(set) = self.rules()? else {
            return Ok(0);
        };
        let catalog = self.catalog_for(topology)?;
        Ok(KnowledgeBase::parse(&set.files, &catalog)
            .err()
            .map_or(0, |errors| errors.len()))
    }

    /// The errors the rule set in force would have if `bundle` replaced the
    /// published module of its name (a specialist that drops an argument
    /// the rules pass, an inspector that no longer raises a key they
    /// match): none when there is no set.
    pub fn rules_errors_if_published(&self, bundle: &Bundle) -> Result<Vec<SourceError>> {
        let Some(set) = self.rules()? else {
            return Ok(Vec::new());
        };
        let mut bundles = self.bundles()?;
        bundles.retain(|b| b.manifest.name != bundle.manifest.name);
        bundles.push(bundle.clone());
        let catalog = self.catalog_of(bundles, &self.topology()?)?;
        Ok(KnowledgeBase::parse(&set.files, &catalog)
            .err()
            .unwrap_or_default())
    }

    /// Stores a checked set as the one in force (one key: all or nothing)
    /// and bumps the version, so every domain's replica carries it.
    pub fn apply_rules(&self, files: &[(String, String)], kb: &KnowledgeBase) -> Result<u64> {
        let mut files = files.to_vec();
        files.sort();
        let version = self.bump()?;
        let set = RuleSet {
            version,
            files,
            specialists: kb.specialists().into_iter().map(str::to_owned).collect(),
            modules: kb
                .started_modules()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            rules: kb.rules().len(),
            schedules: kb.schedules().len(),
            groups: kb.groups().len(),
        };
        self.btpg.insert(RULES, &wire::encode_value(&set))?;
        self.db.flush()?;
        Ok(version)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::{Bundle, ManifestSpec, SecretKey};
    use agad_storage::Database;

    fn publish(b: &Bases, key: &SecretKey, toml: &str) {
        let spec = ManifestSpec::from_toml(toml).unwrap();
        let bundle = Bundle::sign(spec, b"wasm".to_vec(), key, crate::now_secs());
        b.publish(&bundle, &[key.public()], crate::now_secs())
            .unwrap();
    }

    const RULE: &str = "[[rule]]\nname = \"disk\"\n[rule.match]\nkey = \"fs.used:*\"\nnodes = [\"n1\"]\n[rule.diagnose]\nspecialist = \"disk-usage\"\nargs = { path = \"{subject}\" }\n";

    #[test]
    fn a_set_is_checked_against_bgc_and_btpg_and_stored_with_a_new_version() {
        let b = Bases::open(&Database::temporary().unwrap()).unwrap();
        let key = SecretKey::generate();
        let files = vec![("disk.toml".to_owned(), RULE.to_owned())];
        // Nothing published, no topology: the specialist, the key and the
        // node are all unknown, each at its position.
        let errors = b.check_rules(&files).unwrap().unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|e| e.starts_with("disk.toml:4:7: unknown alarm key")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("disk.toml:7:14: unknown specialist")),
            "{text:?}"
        );
        assert!(text.iter().any(|e| e.contains("`n1`")), "{text:?}");

        publish(
            &b,
            &key,
            "name = \"disk-space\"\nversion = \"0.1.0\"\nsequence = 1\nkind = \"inspector\"\narea = \"fault\"\n[emits]\nkeys = [\"fs.used:*\"]\nmetrics = [\"fs.used-percent\"]\n",
        );
        publish(
            &b,
            &key,
            "name = \"disk-usage\"\nversion = \"0.1.0\"\nsequence = 1\nkind = \"specialist\"\narea = \"fault\"\n[config.path]\ntype = \"string\"\nrequired = true\ndescription = \"where\"\n",
        );
        let topology = agad_protocol::topology::parse(
            "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n[[node]]\nname = \"n1\"\ndomain = \"d1\"\n",
            "t.toml",
            &|_: &str| None,
        )
        .unwrap();
        b.apply_topology(&topology).unwrap();
        assert_eq!(b.rules().unwrap(), None);
        let kb = b.check_rules(&files).unwrap().unwrap();
        let before = b.version().unwrap();
        let version = b.apply_rules(&files, &kb).unwrap();
        assert_eq!(version, before + 1);
        let stored = b.rules().unwrap().unwrap();
        assert_eq!(stored.version, version);
        assert_eq!(stored.files, files);
        assert_eq!(stored.specialists, ["disk-usage"]);
        assert!(stored.modules.is_empty());
        assert_eq!((stored.rules, stored.schedules, stored.groups), (1, 0, 0));
    }

    #[test]
    fn file_names_are_plain_unique_and_bounded() {
        let ok = |name: &str| check_files(&[(name.to_owned(), String::new())]).is_ok();
        assert!(ok("cpu.toml") && ok("10-disk_full.toml"));
        for bad in [
            "",
            "cpu",
            "../cpu.toml",
            "a/b.toml",
            ".hidden.toml",
            "red\u{1b}[31m.toml",
            "sp ace.toml",
        ] {
            assert!(!ok(bad), "{bad:?}");
        }
        assert!(!ok(&format!("{}.toml", "a".repeat(MAX_FILE_NAME_CHARS))));
        let twice = vec![("a.toml".to_owned(), String::new()); 2];
        assert!(check_files(&twice).is_err());
        assert!(check_files(&[]).is_err());
        let big = "#".repeat(MAX_FILE_BYTES as usize + 1);
        assert!(check_files(&[("a.toml".to_owned(), big)]).is_err());
        let part = "#".repeat(MAX_FILE_BYTES as usize);
        let too_much: Vec<(String, String)> = (0..=MAX_SET_BYTES / MAX_FILE_BYTES)
            .map(|i| (format!("{i}.toml"), part.clone()))
            .collect();
        let err = check_files(&too_much).unwrap_err().to_string();
        assert!(err.contains("a rule set is at most"), "{err}");
    }
}
