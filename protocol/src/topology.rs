//! The topology bases: BTPG (the whole network, as applied from an
//! operator's file) and BTPD (one domain's slice of it, replicated to the
//! domain's manager).
//!
//! The operator keeps the network in a TOML file under version control
//! (`[[domain]]`, `[[node]]`, `[[link]]`, `[[assign]]`); [`parse`] reads and
//! validates it as a whole, [`Topology::diff`] shows what applying it would
//! change, and [`Topology::slice`] cuts the part one domain manager needs.
//! A file is accepted or refused as a whole: a half-applied topology would
//! leave domain managers disagreeing about which inspectors run where.

use crate::duration::{format_duration_ms, parse_duration};
use crate::manifest::{ConfigKey, PERIOD_KEY, ScalarText};
use crate::source::{Source, SourceError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

/// Report window of a domain whose file entry sets none.
pub const DEFAULT_REPORT_WINDOW_MS: u64 = 60_000;

/// Longest domain, station, node or module name.
pub const MAX_NAME_LEN: usize = 64;

/// BTPG: domains, nodes, links and which inspectors run where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub domains: Vec<Domain>,
    pub nodes: Vec<NodeEntry>,
    pub links: Vec<Link>,
    pub assignments: Vec<Assignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    /// A sub-domain names the domain whose manager is its parent.
    pub parent: Option<String>,
    /// Candidate stations (certificate names of `agad dominio` processes),
    /// in priority order: the first healthy one serves the domain.
    pub stations: Vec<String>,
    /// How often the domain manager sends its consolidation upward.
    pub report_window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Certificate name of the node's runtime.
    pub name: String,
    pub domain: String,
    /// Where the host answers (for liveness confirmation); informative here.
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub a: String,
    pub b: String,
}

/// An inspector with its configuration, for every node of a domain and/or
/// for named nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub module: String,
    pub domain: Option<String>,
    pub nodes: Vec<String>,
    pub config: Vec<(String, String)>,
}

/// BTPD: what one domain manager needs to know of the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainTopology {
    pub domain: Domain,
    pub nodes: Vec<NodeEntry>,
    /// Links with at least one end in the domain.
    pub links: Vec<Link>,
    /// Assignments resolved per node, in file order.
    pub assignments: Vec<NodeAssignment>,
    /// Domains whose `parent` is this one.
    pub subdomains: Vec<Domain>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAssignment {
    pub node: String,
    pub module: String,
    pub config: Vec<(String, String)>,
}

/// Why a topology file was refused, pointing at the offending value (the
/// same error type as every other operator file: [`crate::source`]).
pub type TopologyError = SourceError;

// The file as written. Every value the checks may complain about keeps its
// byte range, so an error can point at it rather than at the whole entry.
type Text = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    domain: Vec<RawDomain>,
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    link: Vec<RawLink>,
    #[serde(default)]
    assign: Vec<RawAssign>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    name: Text,
    stations: Spanned<Vec<Text>>,
    report_window: Option<Text>,
    parent: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Text,
    domain: Text,
    address: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    between: Spanned<Vec<Text>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssign {
    module: Text,
    domain: Option<Text>,
    nodes: Option<Vec<Text>>,
    // A BTreeMap so the kept configuration comes out sorted by key.
    #[serde(default)]
    config: BTreeMap<Text, Spanned<ScalarText>>,
}

/// Reads and checks a topology file. `file` only labels errors;
/// `published(module)` gives the configuration keys of the module as BGC
/// holds it (its signed manifest's), or `None` when BGC does not hold it:
/// assigning a module no node could ever receive, or a configuration the
/// module would refuse, is a mistake better caught here than on every node.
pub fn parse<'m>(
    text: &str,
    file: &str,
    published: &dyn Fn(&str) -> Option<&'m [ConfigKey]>,
) -> Result<Topology, TopologyError> {
    let checker = Checker {
        source: Source::new(file, text),
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| checker.source.toml_error(&e))?;
    checker.check(raw, published)
}

struct Checker<'a> {
    source: Source<'a>,
}

impl Checker<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        self.source.line(span)
    }

    fn error(&self, span: Range<usize>, reason: impl Into<String>) -> TopologyError {
        self.source.error(span, reason)
    }

    fn name(&self, what: &str, name: &Text) -> Result<String, TopologyError> {
        let value = name.get_ref();
        let refuse = |reason: String| Err(self.error(name.span(), reason));
        if value.is_empty() {
            return refuse(format!("empty {what} name"));
        }
        if let Some(c) = value.chars().find(|c| !is_name_char(*c)) {
            return refuse(format!(
                "invalid {what} name `{}`: {c:?} is not allowed (use A-Z, a-z, 0-9, `.`, `_`, `-`)",
                value.escape_debug()
            ));
        }
        if value.len() > MAX_NAME_LEN {
            return refuse(format!(
                "{what} name `{value}` is {} characters long; the limit is {MAX_NAME_LEN}",
                value.len()
            ));
        }
        Ok(value.clone())
    }

    /// Whole, positive milliseconds, or the reason why not.
    fn duration_ms(&self, value: &Text, what: &str) -> Result<u64, TopologyError> {
        parse_duration(value.get_ref())
            .filter(|d| !d.is_zero())
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .ok_or_else(|| {
                self.error(
                    value.span(),
                    format!(
                        "{what} `{}` is not a positive duration (use e.g. 500ms, 10s, 2m, 1h)",
                        value.get_ref().escape_debug()
                    ),
                )
            })
    }

    fn check<'m>(
        &self,
        raw: RawFile,
        published: &dyn Fn(&str) -> Option<&'m [ConfigKey]>,
    ) -> Result<Topology, TopologyError> {
        let mut topology = Topology::default();

        // Domains first: nodes, parents and assignments refer to them, and
        // the file may name a domain before defining it.
        let mut domain_spans: HashMap<String, Range<usize>> = HashMap::new();
        let mut station_owner: HashMap<String, (String, Range<usize>)> = HashMap::new();
        for d in &raw.domain {
            let name = self.name("domain", &d.name)?;
            if let Some(first) = domain_spans.get(&name) {
                return Err(self.error(
                    d.name.span(),
                    format!(
                        "domain `{name}` is defined twice (first at line {})",
                        self.line(first)
                    ),
                ));
            }
            if d.stations.get_ref().is_empty() {
                return Err(self.error(
                    d.stations.span(),
                    format!(
                        "domain `{name}` lists no stations; name at least one candidate station"
                    ),
                ));
            }
            let mut stations = Vec::new();
            for s in d.stations.get_ref() {
                let station = self.name("station", s)?;
                if let Some((owner, first)) = station_owner.get(&station) {
                    let reason = if *owner == name {
                        format!("station `{station}` is listed twice for domain `{name}`")
                    } else {
                        format!(
                            "station `{station}` already serves domain `{owner}` (line {}); a station manages one domain",
                            self.line(first)
                        )
                    };
                    return Err(self.error(s.span(), reason));
                }
                station_owner.insert(station.clone(), (name.clone(), s.span()));
                stations.push(station);
            }
            let report_window_ms = match &d.report_window {
                None => DEFAULT_REPORT_WINDOW_MS,
                Some(w) => self.duration_ms(w, &format!("domain `{name}`: report_window"))?,
            };
            domain_spans.insert(name.clone(), d.name.span());
            topology.domains.push(Domain {
                name,
                parent: d.parent.as_ref().map(|p| p.get_ref().clone()),
                stations,
                report_window_ms,
            });
        }
        self.check_parents(&raw.domain, &topology.domains, &domain_spans)?;

        let mut node_spans: HashMap<String, Range<usize>> = HashMap::new();
        for n in &raw.node {
            let name = self.name("node", &n.name)?;
            if let Some(first) = node_spans.get(&name) {
                return Err(self.error(
                    n.name.span(),
                    format!(
                        "node `{name}` is defined twice (first at line {})",
                        self.line(first)
                    ),
                ));
            }
            let domain = n.domain.get_ref();
            if !domain_spans.contains_key(domain) {
                return Err(self.error(
                    n.domain.span(),
                    format!(
                        "node `{name}`: domain `{}` is not defined",
                        domain.escape_debug()
                    ),
                ));
            }
            node_spans.insert(name.clone(), n.name.span());
            topology.nodes.push(NodeEntry {
                name,
                domain: domain.clone(),
                address: n.address.as_ref().map(|a| a.get_ref().clone()),
            });
        }

        let mut link_spans: HashMap<(String, String), Range<usize>> = HashMap::new();
        for l in &raw.link {
            let [a, b] = l.between.get_ref().as_slice() else {
                return Err(self.error(
                    l.between.span(),
                    format!(
                        "a link joins exactly two nodes; `between` lists {}",
                        l.between.get_ref().len()
                    ),
                ));
            };
            for end in [a, b] {
                if !node_spans.contains_key(end.get_ref()) {
                    return Err(self.error(
                        end.span(),
                        format!(
                            "link names node `{}`, which is not defined",
                            end.get_ref().escape_debug()
                        ),
                    ));
                }
            }
            let link = Link {
                a: a.get_ref().clone(),
                b: b.get_ref().clone(),
            };
            if link.a == link.b {
                return Err(self.error(b.span(), format!("link from node `{}` to itself", link.a)));
            }
            if let Some(first) = link_spans.get(&link.key()) {
                return Err(self.error(
                    l.between.span(),
                    format!(
                        "link {link} is defined twice (first at line {})",
                        self.line(first)
                    ),
                ));
            }
            link_spans.insert(link.key(), l.between.span());
            topology.links.push(link);
        }

        // (node, module) → where it was first assigned, to refuse a module
        // running twice on one node with two configurations.
        let mut assigned: HashMap<(String, String), Range<usize>> = HashMap::new();
        for a in &raw.assign {
            let module = self.name("module", &a.module)?;
            let Some(keys) = published(&module) else {
                return Err(self.error(
                    a.module.span(),
                    format!("module `{module}` is not published in BGC; publish it with `agad module publish`"),
                ));
            };
            let mut targets: Vec<(String, Range<usize>)> = Vec::new();
            if let Some(domain) = &a.domain {
                if !domain_spans.contains_key(domain.get_ref()) {
                    return Err(self.error(
                        domain.span(),
                        format!(
                            "assign `{module}`: domain `{}` is not defined",
                            domain.get_ref().escape_debug()
                        ),
                    ));
                }
                targets.extend(
                    topology
                        .nodes
                        .iter()
                        .filter(|n| n.domain == *domain.get_ref())
                        .map(|n| (n.name.clone(), domain.span())),
                );
            }
            let nodes = a.nodes.as_deref().unwrap_or_default();
            for node in nodes {
                if !node_spans.contains_key(node.get_ref()) {
                    return Err(self.error(
                        node.span(),
                        format!(
                            "assign `{module}`: node `{}` is not defined",
                            node.get_ref().escape_debug()
                        ),
                    ));
                }
                targets.push((node.get_ref().clone(), node.span()));
            }
            if a.domain.is_none() && nodes.is_empty() {
                return Err(self.error(
                    a.module.span(),
                    format!(
                        "assign `{module}` names neither `domain` nor `nodes`; say where it runs"
                    ),
                ));
            }
            for (node, span) in targets {
                let key = (node, module.clone());
                if let Some(first) = assigned.get(&key) {
                    return Err(self.error(
                        span,
                        format!(
                            "module `{module}` is assigned twice to node `{}` (first at line {})",
                            key.0,
                            self.line(first)
                        ),
                    ));
                }
                assigned.insert(key, span);
            }
            let mut config = Vec::new();
            for (key, value) in &a.config {
                let value_text = Spanned::new(value.span(), value.get_ref().0.clone());
                if key.get_ref() == PERIOD_KEY {
                    self.duration_ms(&value_text, &format!("assign `{module}`: period"))?;
                } else {
                    self.config_value(&module, keys, key, &value_text)?;
                }
                config.push((key.get_ref().clone(), value_text.into_inner()));
            }
            for key in keys.iter().filter(|k| k.required) {
                // An empty value means "the module's default" to the SDK,
                // so for a required key it is as good as missing.
                let set = config
                    .iter()
                    .any(|(k, v)| *k == key.name && !v.trim().is_empty());
                if !set {
                    return Err(self.error(
                        a.module.span(),
                        format!(
                            "assign `{module}`: required config key `{}` is not set ({}: {})",
                            key.name.escape_debug(),
                            key.kind,
                            // Checked at signing; a manifest signed by other
                            // means still reaches no terminal raw.
                            key.description.replace(char::is_control, " ")
                        ),
                    ));
                }
            }
            topology.assignments.push(Assignment {
                module,
                domain: a.domain.as_ref().map(|d| d.get_ref().clone()),
                nodes: nodes.iter().map(|n| n.get_ref().clone()).collect(),
                config,
            });
        }
        Ok(topology)
    }

    /// A key the module declares, with a value of its type.
    fn config_value(
        &self,
        module: &str,
        keys: &[ConfigKey],
        key: &Text,
        value: &Text,
    ) -> Result<(), TopologyError> {
        let name = key.get_ref();
        let Some(declared) = keys.iter().find(|k| k.name == *name) else {
            let hint = match closest(name, keys.iter().map(|k| k.name.as_str())) {
                Some(close) => format!("; did you mean `{}`?", close.escape_debug()),
                None if keys.is_empty() => {
                    "; it takes no configuration besides `period`".to_owned()
                }
                None => format!(
                    "; its keys are {}",
                    keys.iter()
                        .map(|k| format!("`{}`", k.name.escape_debug()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(self.error(
                key.span(),
                format!(
                    "assign `{module}`: unknown config key `{}`{hint}",
                    name.escape_debug()
                ),
            ));
        };
        // Empty means "the module's default" (the SDK treats it as unset).
        if value.get_ref().trim().is_empty() {
            return Ok(());
        }
        declared.kind.check(value.get_ref()).map_err(|reason| {
            self.error(
                value.span(),
                format!(
                    "assign `{module}`: `{name}` is {} {}: {reason}",
                    article(declared.kind.name()),
                    declared.kind
                ),
            )
        })
    }

    fn check_parents(
        &self,
        raw: &[RawDomain],
        domains: &[Domain],
        spans: &HashMap<String, Range<usize>>,
    ) -> Result<(), TopologyError> {
        let parent_of: HashMap<&str, &str> = domains
            .iter()
            .filter_map(|d| Some((d.name.as_str(), d.parent.as_deref()?)))
            .collect();
        for (r, d) in raw.iter().zip(domains) {
            let (Some(parent_text), Some(parent)) = (&r.parent, &d.parent) else {
                continue;
            };
            if !spans.contains_key(parent) {
                return Err(self.error(
                    parent_text.span(),
                    format!(
                        "domain `{}`: parent `{}` is not defined",
                        d.name,
                        parent.escape_debug()
                    ),
                ));
            }
            // Follow the parents until the chain ends, comes back here (a
            // cycle through this domain), or enters a cycle elsewhere, which
            // is reported when the loop reaches a domain on it.
            let mut path = vec![d.name.as_str()];
            let mut seen = HashSet::from([d.name.as_str()]);
            let mut at = parent.as_str();
            loop {
                path.push(at);
                if at == d.name {
                    return Err(self.error(
                        parent_text.span(),
                        format!("domain `{}`: parent cycle {}", d.name, path.join(" -> ")),
                    ));
                }
                if !seen.insert(at) {
                    break;
                }
                match parent_of.get(at) {
                    Some(next) => at = next,
                    None => break,
                }
            }
        }
        Ok(())
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The candidate nearest to `word` if it is close enough to be the one
/// meant: at most a third of its characters off (at least one), counting a
/// swap of two neighbours as one edit (`min_cuont` → `min_count`).
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let budget = (word.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and transpositions of adjacent characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl Link {
    /// The same link whichever end is written first.
    fn key(&self) -> (String, String) {
        if self.a <= self.b {
            (self.a.clone(), self.b.clone())
        } else {
            (self.b.clone(), self.a.clone())
        }
    }

    pub fn touches(&self, node: &str) -> bool {
        self.a == node || self.b == node
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -- {}", self.a, self.b)
    }
}

/// One difference between two topologies, as a person reads it in
/// `agad topology diff` (one line each, `+` added, `-` removed, `~` changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    DomainAdded(Domain),
    DomainRemoved(Domain),
    DomainChanged {
        old: Domain,
        new: Domain,
    },
    NodeAdded(NodeEntry),
    NodeRemoved(NodeEntry),
    NodeChanged {
        old: NodeEntry,
        new: NodeEntry,
    },
    LinkAdded(Link),
    LinkRemoved(Link),
    /// Assignments are compared per (node, module) after resolution, so a
    /// module moved from a domain-wide entry to a per-node one is no change.
    AssignAdded(NodeAssignment),
    AssignRemoved(NodeAssignment),
    AssignChanged {
        old: NodeAssignment,
        new: NodeAssignment,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::DomainAdded(d) => {
                write!(f, "+ domain {} (stations {}", d.name, list(&d.stations))?;
                if let Some(parent) = &d.parent {
                    write!(f, ", parent {parent}")?;
                }
                write!(
                    f,
                    ", report window {})",
                    format_duration_ms(d.report_window_ms)
                )
            }
            Change::DomainRemoved(d) => write!(f, "- domain {}", d.name),
            Change::DomainChanged { old, new } => {
                let mut parts = Vec::new();
                if old.stations != new.stations {
                    parts.push(format!(
                        "stations {} -> {}",
                        list(&old.stations),
                        list(&new.stations)
                    ));
                }
                if old.parent != new.parent {
                    parts.push(format!(
                        "parent {} -> {}",
                        or_none(&old.parent),
                        or_none(&new.parent)
                    ));
                }
                if old.report_window_ms != new.report_window_ms {
                    parts.push(format!(
                        "report window {} -> {}",
                        format_duration_ms(old.report_window_ms),
                        format_duration_ms(new.report_window_ms)
                    ));
                }
                write!(f, "~ domain {}: {}", new.name, parts.join("; "))
            }
            Change::NodeAdded(n) => {
                write!(f, "+ node {} (domain {}", n.name, n.domain)?;
                if let Some(address) = &n.address {
                    write!(f, ", address {address}")?;
                }
                f.write_str(")")
            }
            Change::NodeRemoved(n) => write!(f, "- node {} (domain {})", n.name, n.domain),
            Change::NodeChanged { old, new } => {
                let mut parts = Vec::new();
                if old.domain != new.domain {
                    parts.push(format!("domain {} -> {}", old.domain, new.domain));
                }
                if old.address != new.address {
                    parts.push(format!(
                        "address {} -> {}",
                        or_none(&old.address),
                        or_none(&new.address)
                    ));
                }
                write!(f, "~ node {}: {}", new.name, parts.join("; "))
            }
            Change::LinkAdded(l) => write!(f, "+ link {l}"),
            Change::LinkRemoved(l) => write!(f, "- link {l}"),
            Change::AssignAdded(a) => {
                write!(f, "+ assign {} on {}", a.module, a.node)?;
                if !a.config.is_empty() {
                    let pairs: Vec<String> =
                        a.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, " ({})", pairs.join(", "))?;
                }
                Ok(())
            }
            Change::AssignRemoved(a) => write!(f, "- assign {} on {}", a.module, a.node),
            Change::AssignChanged { old, new } => {
                // Only the keys that differ: the rest is noise to the reader.
                let old_map: BTreeMap<&str, &str> = old
                    .config
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let new_map: BTreeMap<&str, &str> = new
                    .config
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let keys: BTreeSet<&str> = old_map.keys().chain(new_map.keys()).copied().collect();
                let side = |map: &BTreeMap<&str, &str>| -> String {
                    keys.iter()
                        .filter(|k| old_map.get(*k) != new_map.get(*k))
                        .map(|k| match map.get(k) {
                            Some(v) => format!("{k}={v}"),
                            None => format!("{k} unset"),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                write!(
                    f,
                    "~ assign {} on {}: {} -> {}",
                    new.module,
                    new.node,
                    side(&old_map),
                    side(&new_map)
                )
            }
        }
    }
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

fn or_none(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("none")
}

impl Topology {
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.iter().find(|d| d.name == name)
    }

    pub fn domain_of(&self, node: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.domain.as_str())
    }

    /// Every module an assignment names (what BGC must hold for this
    /// topology to be deployable).
    pub fn modules(&self) -> BTreeSet<String> {
        self.assignments.iter().map(|a| a.module.clone()).collect()
    }

    /// Assignments expanded to one entry per (node, module): in file order
    /// of the assignments, and within one, in the file order of the nodes.
    pub fn resolved(&self) -> Vec<NodeAssignment> {
        let mut out = Vec::new();
        for a in &self.assignments {
            for n in &self.nodes {
                if a.domain.as_deref() == Some(n.domain.as_str()) || a.nodes.contains(&n.name) {
                    out.push(NodeAssignment {
                        node: n.name.clone(),
                        module: a.module.clone(),
                        config: a.config.clone(),
                    });
                }
            }
        }
        out
    }

    /// BTPD for `domain`, or `None` if no such domain.
    pub fn slice(&self, domain: &str) -> Option<DomainTopology> {
        let this = self.domain(domain)?.clone();
        let nodes: Vec<NodeEntry> = self
            .nodes
            .iter()
            .filter(|n| n.domain == domain)
            .cloned()
            .collect();
        let names: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let links = self
            .links
            .iter()
            .filter(|l| names.contains(l.a.as_str()) || names.contains(l.b.as_str()))
            .cloned()
            .collect();
        let assignments = self
            .resolved()
            .into_iter()
            .filter(|a| names.contains(a.node.as_str()))
            .collect();
        let subdomains = self
            .domains
            .iter()
            .filter(|d| d.parent.as_deref() == Some(domain))
            .cloned()
            .collect();
        Some(DomainTopology {
            domain: this,
            nodes,
            links,
            assignments,
            subdomains,
        })
    }

    /// What applying `new` over `self` changes: domains, then nodes, links
    /// and resolved assignments; within each, removals and changes in the
    /// old order, then additions in the new order. Empty when identical.
    pub fn diff(&self, new: &Topology) -> Vec<Change> {
        let mut changes = Vec::new();

        diff_by(
            &self.domains,
            &new.domains,
            |d| d.name.clone(),
            &mut changes,
            Change::DomainAdded,
            Change::DomainRemoved,
            |old, new| Some(Change::DomainChanged { old, new }),
        );
        diff_by(
            &self.nodes,
            &new.nodes,
            |n| n.name.clone(),
            &mut changes,
            Change::NodeAdded,
            Change::NodeRemoved,
            |old, new| Some(Change::NodeChanged { old, new }),
        );
        // A link has nothing but its ends, so a "changed" link is a removed
        // one plus an added one; `a -- b` and `b -- a` are the same link.
        diff_by(
            &self.links,
            &new.links,
            Link::key,
            &mut changes,
            Change::LinkAdded,
            Change::LinkRemoved,
            |_, _| None,
        );
        diff_by(
            &self.resolved(),
            &new.resolved(),
            |a| (a.node.clone(), a.module.clone()),
            &mut changes,
            Change::AssignAdded,
            Change::AssignRemoved,
            |old, new| Some(Change::AssignChanged { old, new }),
        );
        changes
    }

    /// Domains whose BTPD differs between `self` and `new`, added and
    /// removed ones included: the domains that need a new replica.
    pub fn changed_domains(&self, new: &Topology) -> Vec<String> {
        let mut names: Vec<&str> = self.domains.iter().map(|d| d.name.as_str()).collect();
        for d in &new.domains {
            if !names.contains(&d.name.as_str()) {
                names.push(&d.name);
            }
        }
        names
            .into_iter()
            .filter(|name| self.slice(name) != new.slice(name))
            .map(str::to_owned)
            .collect()
    }

    /// The topology in the file format [`parse`] reads (for
    /// `agad topology show`); parsing the result gives back `self`.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for d in &self.domains {
            section(&mut out, "[[domain]]");
            field(&mut out, "name", &quote(&d.name));
            field(&mut out, "stations", &quote_list(&d.stations));
            field(
                &mut out,
                "report_window",
                &quote(&format_duration_ms(d.report_window_ms)),
            );
            if let Some(parent) = &d.parent {
                field(&mut out, "parent", &quote(parent));
            }
        }
        for n in &self.nodes {
            section(&mut out, "[[node]]");
            field(&mut out, "name", &quote(&n.name));
            field(&mut out, "domain", &quote(&n.domain));
            if let Some(address) = &n.address {
                field(&mut out, "address", &quote(address));
            }
        }
        for l in &self.links {
            section(&mut out, "[[link]]");
            field(
                &mut out,
                "between",
                &quote_list(&[l.a.clone(), l.b.clone()]),
            );
        }
        for a in &self.assignments {
            section(&mut out, "[[assign]]");
            field(&mut out, "module", &quote(&a.module));
            if let Some(domain) = &a.domain {
                field(&mut out, "domain", &quote(domain));
            }
            if !a.nodes.is_empty() {
                field(&mut out, "nodes", &quote_list(&a.nodes));
            }
            if !a.config.is_empty() {
                out.push_str("[assign.config]\n");
                for (key, value) in &a.config {
                    field(&mut out, &toml_key(key), &config_value(value));
                }
            }
        }
        out
    }
}

/// Walks `old` for removals and changes, then `new` for additions, matching
/// items by `key`. `changed` may decline (`None`) when items that differ
/// mean the same, such as a link written the other way round.
fn diff_by<T: Clone + PartialEq, K: Eq + std::hash::Hash>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
    changes: &mut Vec<Change>,
    added: impl Fn(T) -> Change,
    removed: impl Fn(T) -> Change,
    changed: impl Fn(T, T) -> Option<Change>,
) {
    let new_by_key: HashMap<K, &T> = new.iter().map(|item| (key(item), item)).collect();
    let old_keys: HashSet<K> = old.iter().map(&key).collect();
    for item in old {
        match new_by_key.get(&key(item)) {
            None => changes.push(removed(item.clone())),
            Some(now) if *now != item => changes.extend(changed(item.clone(), (*now).clone())),
            Some(_) => {}
        }
    }
    for item in new {
        if !old_keys.contains(&key(item)) {
            changes.push(added(item.clone()));
        }
    }
}

fn section(out: &mut String, header: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(header);
    out.push('\n');
}

fn field(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str(" = ");
    out.push_str(value);
    out.push('\n');
}

fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        quote(key)
    }
}

/// Numbers and booleans are written bare, as an operator would, but only
/// when reading them back yields the same string; anything else is quoted.
fn config_value(value: &str) -> String {
    let bare = value == "true"
        || value == "false"
        || value.parse::<i64>().is_ok_and(|n| n.to_string() == value)
        || (value.contains('.')
            && value
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e'))
            && value
                .parse::<f64>()
                .is_ok_and(|x| format!("{x:?}") == value));
    if bare { value.to_owned() } else { quote(value) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::manifest::ConfigType;
    use std::sync::LazyLock;

    const FULL: &str = r#"
[[domain]]
name = "campus"
stations = ["station-campus"]
report_window = "5m"

[[domain]]
name = "lab"
stations = ["station-lab-1", "station-lab-2"]
parent = "campus"

[[node]]
name = "web-1"
domain = "lab"
address = "127.0.0.1"

[[node]]
name = "db-1"
domain = "lab"

[[node]]
name = "core-1"
domain = "campus"

[[link]]
between = ["web-1", "db-1"]

[[link]]
between = ["core-1", "web-1"]

[[assign]]
module = "cpu-mem"
domain = "lab"
[assign.config]
threshold = 90
period = "10s"
ratio = 0.5
strict = true
name = "x"

[[assign]]
module = "disk-space"
nodes = ["web-1", "core-1"]
"#;

    fn key(name: &str, kind: ConfigType, required: bool) -> ConfigKey {
        ConfigKey {
            name: name.into(),
            kind,
            required,
            default: None,
            description: format!("what {name} does"),
        }
    }

    /// What BGC holds in these tests: `cpu-mem` and `app-watch` with a
    /// schema, `disk-space` taking the odd keys of the round-trip test,
    /// every other module but `unpublished` taking nothing but `period`.
    static SCHEMAS: LazyLock<Vec<(&str, Vec<ConfigKey>)>> = LazyLock::new(|| {
        use ConfigType::*;
        vec![
            (
                "cpu-mem",
                vec![
                    key("threshold", Number, false),
                    key("ratio", Number, false),
                    key("strict", Boolean, false),
                    key("name", String, false),
                    key("window", Duration, false),
                ],
            ),
            (
                "app-watch",
                vec![
                    key("processes", List, true),
                    key("min_count", Integer, false),
                    key("raise_after", Integer, false),
                ],
            ),
            (
                "disk-space",
                ["a key", "big", "lead", "neg", "yes"]
                    .iter()
                    .map(|k| key(k, String, false))
                    .collect(),
            ),
        ]
    });

    fn published(module: &str) -> Option<&'static [ConfigKey]> {
        if module == "unpublished" {
            return None;
        }
        Some(
            SCHEMAS
                .iter()
                .find(|(m, _)| *m == module)
                .map_or(&[][..], |(_, keys)| keys.as_slice()),
        )
    }

    fn ok(text: &str) -> Topology {
        parse(text, "net.toml", &published).unwrap()
    }

    /// Parses `text`, which must be refused where the last `marker` starts,
    /// with a reason containing `reason`.
    fn refused(text: &str, marker: &str, reason: &str) -> TopologyError {
        let at = text
            .rfind(marker)
            .unwrap_or_else(|| panic!("marker `{marker}` not in the text"));
        let line = text[..at].matches('\n').count() + 1;
        let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        refused_at(text, (line, column), reason)
    }

    fn refused_at(text: &str, at: (usize, usize), reason: &str) -> TopologyError {
        let err = parse(text, "net.toml", &published).unwrap_err();
        assert_eq!((err.line, err.column), at, "{err}");
        assert!(
            err.reason.contains(reason),
            "`{}` lacks `{reason}`",
            err.reason
        );
        err
    }

    /// A minimal valid file followed by `extra`, which starts on line 13.
    fn with(extra: &str) -> String {
        format!(
            "[[domain]]\nname = \"lab\"\nstations = [\"s1\"]\n\n\
             [[node]]\nname = \"web-1\"\ndomain = \"lab\"\n\n\
             [[node]]\nname = \"db-1\"\ndomain = \"lab\"\n\n{extra}"
        )
    }

    fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn full_file_parses() {
        let t = ok(FULL);
        assert_eq!(t.domains.len(), 2);
        assert_eq!(t.domains[0].report_window_ms, 300_000);
        assert_eq!(t.domains[1].report_window_ms, DEFAULT_REPORT_WINDOW_MS);
        assert_eq!(t.domains[1].parent.as_deref(), Some("campus"));
        assert_eq!(t.domains[1].stations, ["station-lab-1", "station-lab-2"]);
        assert_eq!(t.nodes[0].address.as_deref(), Some("127.0.0.1"));
        assert_eq!(t.nodes[1].address, None);
        assert_eq!(
            t.assignments[0].config,
            cfg(&[
                ("name", "x"),
                ("period", "10s"),
                ("ratio", "0.5"),
                ("strict", "true"),
                ("threshold", "90")
            ])
        );
        assert_eq!(t.assignments[1].nodes, ["web-1", "core-1"]);
        assert_eq!(t.domain_of("core-1"), Some("campus"));
        assert_eq!(t.domain_of("nobody"), None);
        assert_eq!(
            t.modules().into_iter().collect::<Vec<_>>(),
            ["cpu-mem", "disk-space"]
        );
    }

    #[test]
    fn empty_file_is_an_empty_topology() {
        assert_eq!(ok(""), Topology::default());
    }

    #[test]
    fn slice_holds_what_the_domain_manager_needs() {
        let t = ok(FULL);
        let lab = t.slice("lab").unwrap();
        assert_eq!(lab.domain.name, "lab");
        let nodes: Vec<&str> = lab.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes, ["web-1", "db-1"]);
        // The link to core-1 has one end here, so the lab manager sees it.
        assert_eq!(lab.links.len(), 2);
        let assigned: Vec<(&str, &str)> = lab
            .assignments
            .iter()
            .map(|a| (a.node.as_str(), a.module.as_str()))
            .collect();
        assert_eq!(
            assigned,
            [
                ("web-1", "cpu-mem"),
                ("db-1", "cpu-mem"),
                ("web-1", "disk-space")
            ]
        );
        assert!(lab.subdomains.is_empty());

        let campus = t.slice("campus").unwrap();
        assert_eq!(campus.subdomains.len(), 1);
        assert_eq!(campus.subdomains[0].name, "lab");
        assert_eq!(
            campus.links,
            [Link {
                a: "core-1".into(),
                b: "web-1".into()
            }]
        );
        assert_eq!(campus.assignments.len(), 1);
        assert_eq!(campus.assignments[0].config, Vec::new());

        assert_eq!(t.slice("nowhere"), None);
    }

    #[test]
    fn error_display_names_file_line_and_column() {
        let err = refused(
            &with("[[link]]\nbetween = [\"web-1\", \"nobody\"]\n"),
            "\"nobody\"",
            "nobody",
        );
        assert_eq!(
            err.to_string(),
            "net.toml:14:21: link names node `nobody`, which is not defined"
        );
    }

    #[test]
    fn toml_errors_point_at_the_value() {
        // An unterminated string is noticed at the end of its line.
        refused_at(
            "[[domain]]\nname = \"lab\nstations = []\n",
            (2, 12),
            "invalid basic string",
        );
        refused(
            "[[domain]]\nname = \"lab\"\nstations = [\"s\"]\ncolour = \"red\"\n",
            "colour",
            "unknown field `colour`",
        );
        refused(
            "[[domains]]\nname = \"lab\"\n",
            "domains",
            "unknown field `domains`",
        );
        refused(
            "[[domain]]\nname = 5\nstations = [\"s\"]\n",
            "5",
            "expected a string",
        );
        refused(
            &with(
                "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nlist = [1, 2]\n",
            ),
            "[1, 2]",
            "a string, integer, float or boolean",
        );
    }

    #[test]
    fn bad_names_are_refused() {
        refused(
            "[[domain]]\nname = \"\"\nstations = [\"s\"]\n",
            "\"\"",
            "empty domain name",
        );
        refused(
            "[[domain]]\nname = \"my lab\"\nstations = [\"s\"]\n",
            "\"my lab\"",
            "invalid domain name `my lab`",
        );
        let long = "x".repeat(65);
        refused(
            &format!("[[domain]]\nname = \"{long}\"\nstations = [\"s\"]\n"),
            &format!("\"{long}"),
            "65 characters long",
        );
        refused(
            &with("[[node]]\nname = \"web/2\"\ndomain = \"lab\"\n"),
            "\"web/2\"",
            "invalid node name",
        );
        refused(
            "[[domain]]\nname = \"lab\"\nstations = [\"ok\", \"st ation\"]\n",
            "\"st ation\"",
            "invalid station name",
        );
        // The longest allowed name, with every kind of character, is fine.
        let name = format!("A-z_0.{}", "9".repeat(MAX_NAME_LEN - 6));
        ok(&format!(
            "[[domain]]\nname = \"{name}\"\nstations = [\"s\"]\n"
        ));
    }

    #[test]
    fn domain_problems_are_refused() {
        let err = refused(
            "[[domain]]\nname = \"lab\"\nstations = [\"a\"]\n[[domain]]\nname = \"lab\"\nstations = [\"b\"]\n",
            "\"lab\"",
            "",
        );
        assert_eq!(
            err.reason,
            "domain `lab` is defined twice (first at line 2)"
        );

        refused(
            "[[domain]]\nname = \"lab\"\nstations = []\n",
            "[]",
            "domain `lab` lists no stations",
        );
        refused(
            "[[domain]]\nname = \"a\"\nstations = [\"s1\"]\n[[domain]]\nname = \"b\"\nstations = [\"s2\", \"s1\"]\n",
            "\"s1\"]",
            "station `s1` already serves domain `a` (line 3)",
        );
        refused(
            "[[domain]]\nname = \"a\"\nstations = [\"s1\", \"s1\"]\n",
            "\"s1\"]",
            "station `s1` is listed twice for domain `a`",
        );
        refused(
            "[[domain]]\nname = \"a\"\nstations = [\"s\"]\nreport_window = \"0s\"\n",
            "\"0s\"",
            "report_window `0s` is not a positive duration",
        );
        refused(
            "[[domain]]\nname = \"a\"\nstations = [\"s\"]\nreport_window = \"soon\"\n",
            "\"soon\"",
            "domain `a`: report_window `soon`",
        );
        refused(
            "[[domain]]\nname = \"a\"\nstations = [\"s\"]\nparent = \"nope\"\n",
            "\"nope\"",
            "domain `a`: parent `nope` is not defined",
        );
    }

    #[test]
    fn parent_cycles_are_refused() {
        refused(
            "[[domain]]\nname = \"a\"\nstations = [\"s\"]\nparent = \"a\"\n",
            "\"a\"",
            "domain `a`: parent cycle a -> a",
        );
        let text = "[[domain]]\nname = \"top\"\nstations = [\"s0\"]\n\
                    [[domain]]\nname = \"x\"\nstations = [\"s1\"]\nparent = \"a\"\n\
                    [[domain]]\nname = \"a\"\nstations = [\"s2\"]\nparent = \"b\"\n\
                    [[domain]]\nname = \"b\"\nstations = [\"s3\"]\nparent = \"a\"\n";
        // `x` only leads into the cycle; `a` is the first domain on it.
        refused_at(text, (11, 10), "domain `a`: parent cycle a -> b -> a");
        // A proper tree three levels deep is fine.
        ok(
            "[[domain]]\nname = \"a\"\nstations = [\"s1\"]\nparent = \"b\"\n\
            [[domain]]\nname = \"b\"\nstations = [\"s2\"]\nparent = \"c\"\n\
            [[domain]]\nname = \"c\"\nstations = [\"s3\"]\n",
        );
    }

    #[test]
    fn node_problems_are_refused() {
        let err = refused(
            &with("[[node]]\nname = \"web-1\"\ndomain = \"lab\"\n"),
            "\"web-1\"",
            "",
        );
        assert_eq!(
            err.reason,
            "node `web-1` is defined twice (first at line 6)"
        );
        refused(
            &with("[[node]]\nname = \"web-2\"\ndomain = \"labs\"\n"),
            "\"labs\"",
            "node `web-2`: domain `labs` is not defined",
        );
    }

    #[test]
    fn link_problems_are_refused() {
        refused(
            &with("[[link]]\nbetween = [\"web-1\", \"ghost\"]\n"),
            "\"ghost\"",
            "node `ghost`",
        );
        refused(
            &with("[[link]]\nbetween = [\"web-1\", \"web-1\"]\n"),
            "\"web-1\"]",
            "link from node `web-1` to itself",
        );
        refused(
            &with("[[link]]\nbetween = [\"web-1\"]\n"),
            "[\"web-1\"]",
            "exactly two nodes; `between` lists 1",
        );
        refused(
            &with(
                "[[link]]\nbetween = [\"web-1\", \"db-1\"]\n[[link]]\nbetween = [\"db-1\", \"web-1\"]\n",
            ),
            "[\"db-1\", \"web-1\"]",
            "link db-1 -- web-1 is defined twice (first at line 14)",
        );
    }

    #[test]
    fn assign_problems_are_refused() {
        refused(
            &with("[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"labs\"\n"),
            "\"labs\"",
            "assign `cpu-mem`: domain `labs` is not defined",
        );
        refused(
            &with("[[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"web-1\", \"web-9\"]\n"),
            "\"web-9\"",
            "assign `cpu-mem`: node `web-9` is not defined",
        );
        refused(
            &with("[[assign]]\nmodule = \"cpu-mem\"\n"),
            "\"cpu-mem\"",
            "names neither `domain` nor `nodes`",
        );
        refused(
            &with("[[assign]]\nmodule = \"cpu-mem\"\nnodes = []\n"),
            "\"cpu-mem\"",
            "names neither `domain` nor `nodes`",
        );
        let err = refused(
            &with("[[assign]]\nmodule = \"unpublished\"\ndomain = \"lab\"\n"),
            "\"unpublished\"",
            "",
        );
        assert_eq!(
            err.reason,
            "module `unpublished` is not published in BGC; publish it with `agad module publish`"
        );
        refused(
            &with("[[assign]]\nmodule = \"cpu mem\"\ndomain = \"lab\"\n"),
            "\"cpu mem\"",
            "invalid module name",
        );
        // Twice through the domain and a named node of it, then across entries.
        refused(
            &with("[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\nnodes = [\"db-1\"]\n"),
            "\"db-1\"]",
            "module `cpu-mem` is assigned twice to node `db-1` (first at line 15)",
        );
        refused(
            &with(
                "[[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"web-1\"]\n[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n",
            ),
            "\"lab\"",
            "module `cpu-mem` is assigned twice to node `web-1` (first at line 15)",
        );
        // Different modules on one node are fine.
        ok(&with(
            "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[[assign]]\nmodule = \"disk\"\nnodes = [\"web-1\"]\n",
        ));
    }

    #[test]
    fn config_is_checked_against_the_module_schema() {
        let assign = |config: &str| {
            with(&format!(
                "[[assign]]\nmodule = \"app-watch\"\ndomain = \"lab\"\n[assign.config]\n{config}"
            ))
        };
        // A misspelt key, with the key it was meant to be.
        let err = refused(
            &assign("processes = \"sshd\"\nmin_cuont = 2\n"),
            "min_cuont",
            "",
        );
        assert_eq!(
            err.to_string(),
            "net.toml:18:1: assign `app-watch`: unknown config key `min_cuont`; did you mean `min_count`?"
        );
        // Nothing close: the keys it has.
        refused(
            &assign("processes = \"sshd\"\ncolour = 2\n"),
            "colour",
            "unknown config key `colour`; its keys are `processes`, `min_count`, `raise_after`",
        );
        // A module without configuration.
        refused(
            &with("[[assign]]\nmodule = \"if-health\"\ndomain = \"lab\"\n[assign.config]\nx = 1\n"),
            "x = 1",
            "unknown config key `x`; it takes no configuration besides `period`",
        );
        // A value of the wrong type, pointed at.
        let err = refused(
            &assign("processes = \"sshd\"\nmin_count = \"two\"\n"),
            "\"two\"",
            "",
        );
        assert_eq!(
            err.reason,
            "assign `app-watch`: `min_count` is an integer: `two` is not a whole number (0 or more)"
        );
        refused(
            &assign("processes = \"sshd\"\nmin_count = -1\n"),
            "-1",
            "`-1` is not a whole number",
        );
        refused(
            &with(
                "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nstrict = \"maybe\"\n",
            ),
            "\"maybe\"",
            "`strict` is a boolean: `maybe` is not true or false",
        );
        refused(
            &with(
                "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nthreshold = \"high\"\n",
            ),
            "\"high\"",
            "`threshold` is a number: `high` is not a finite number",
        );
        refused(
            &with(
                "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nwindow = 10\n",
            ),
            "10",
            "`window` is a duration: `10` is not a positive duration",
        );
        // A required key left out, or left empty, is refused at the module.
        let err = refused(&assign("min_count = 2\n"), "\"app-watch\"", "");
        assert_eq!(
            err.reason,
            "assign `app-watch`: required config key `processes` is not set (list: what processes does)"
        );
        refused(
            &assign("processes = \" \"\n"),
            "\"app-watch\"",
            "required config key `processes` is not set",
        );
        refused(
            &with("[[assign]]\nmodule = \"app-watch\"\nnodes = [\"web-1\"]\n"),
            "\"app-watch\"",
            "required config key `processes` is not set",
        );
        // Right: strings that read as the type, numbers written bare, an
        // empty optional value (the module's default), and `period`.
        let t = ok(&assign(
            "processes = \"sshd, cron\"\nmin_count = \" 2 \"\nraise_after = \"\"\nperiod = \"5s\"\n",
        ));
        assert_eq!(
            t.assignments[0].config,
            cfg(&[
                ("min_count", " 2 "),
                ("period", "5s"),
                ("processes", "sshd, cron"),
                ("raise_after", "")
            ])
        );
        ok(&with(
            "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nthreshold = 85.5\nstrict = \"YES\"\nwindow = \"2m\"\n",
        ));
    }

    #[test]
    fn closest_key_suggestions() {
        let keys = ["min_count", "processes", "raise_after", "clear_after"];
        let near = |w: &str| closest(w, keys.iter().copied());
        assert_eq!(near("min_cuont"), Some("min_count"));
        assert_eq!(near("MIN_COUNT"), Some("min_count"));
        assert_eq!(near("proceses"), Some("processes"));
        assert_eq!(near("clear-after"), Some("clear_after"));
        assert_eq!(near("threshold"), None);
        assert_eq!(near("x"), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn bad_period_is_refused() {
        refused(
            &with(
                "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nperiod = \"10 s\"\n",
            ),
            "\"10 s\"",
            "assign `cpu-mem`: period `10 s` is not a positive duration",
        );
        refused(
            &with(
                "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nperiod = 10\n",
            ),
            "10",
            "period `10`",
        );
    }

    #[test]
    fn identical_topologies_have_no_diff() {
        let t = ok(FULL);
        assert!(t.diff(&t.clone()).is_empty());
        assert!(t.changed_domains(&t.clone()).is_empty());
        // The same link written the other way round is the same link.
        let mut flipped = t.clone();
        flipped.links[0] = Link {
            a: "db-1".into(),
            b: "web-1".into(),
        };
        assert!(t.diff(&flipped).is_empty());
    }

    #[test]
    fn diff_lines_read_as_changes() {
        let old = ok(FULL);
        let new = ok(&(FULL
            .replace(
                "stations = [\"station-lab-1\", \"station-lab-2\"]",
                "stations = [\"station-lab-2\"]\nreport_window = \"30s\"",
            )
            .replace("address = \"127.0.0.1\"", "address = \"10.0.0.1\"")
            .replace("[[link]]\nbetween = [\"web-1\", \"db-1\"]\n", "")
            .replace("threshold = 90", "threshold = 80")
            .replace("nodes = [\"web-1\", \"core-1\"]", "nodes = [\"core-1\"]")
            + "\n[[domain]]\nname = \"dmz\"\nstations = [\"station-dmz\"]\nparent = \"campus\"\n\
               [[node]]\nname = \"web-3\"\ndomain = \"dmz\"\n\
               [[link]]\nbetween = [\"web-3\", \"core-1\"]\n\
               [[assign]]\nmodule = \"if-health\"\nnodes = [\"web-3\"]\n[assign.config]\nperiod = \"1m\"\n"));
        let lines: Vec<String> = old.diff(&new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "~ domain lab: stations [station-lab-1, station-lab-2] -> [station-lab-2]; report window 1m -> 30s",
                "+ domain dmz (stations [station-dmz], parent campus, report window 1m)",
                "~ node web-1: address 127.0.0.1 -> 10.0.0.1",
                "+ node web-3 (domain dmz)",
                "- link web-1 -- db-1",
                "+ link web-3 -- core-1",
                "~ assign cpu-mem on web-1: threshold=90 -> threshold=80",
                "~ assign cpu-mem on db-1: threshold=90 -> threshold=80",
                "- assign disk-space on web-1",
                "+ assign if-health on web-3 (period=1m)",
            ]
        );
        assert_eq!(old.changed_domains(&new), ["campus", "lab", "dmz"]);

        // And back: removals mirror the additions.
        let back: Vec<String> = new.diff(&old).iter().map(ToString::to_string).collect();
        assert!(back.contains(&"- domain dmz".to_string()), "{back:?}");
        assert!(
            back.contains(&"- node web-3 (domain dmz)".to_string()),
            "{back:?}"
        );
        assert!(
            back.contains(&"+ assign disk-space on web-1".to_string()),
            "{back:?}"
        );
        assert_eq!(new.changed_domains(&old), ["campus", "lab", "dmz"]);
    }

    #[test]
    fn diff_compares_assignments_after_resolution() {
        // Moving a module from a domain-wide entry to named nodes (and adding
        // a key) shows only the effective difference.
        let old = ok(&with(
            "[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"lab\"\n[assign.config]\nthreshold = 90\n",
        ));
        let new = ok(&with(
            "[[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"web-1\", \"db-1\"]\n[assign.config]\nthreshold = 90\n",
        ));
        assert!(old.diff(&new).is_empty());
        assert!(old.changed_domains(&new).is_empty());

        let newer = ok(&with(
            "[[assign]]\nmodule = \"cpu-mem\"\nnodes = [\"web-1\", \"db-1\"]\n[assign.config]\nperiod = \"5s\"\n",
        ));
        let lines: Vec<String> = new.diff(&newer).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines[0],
            "~ assign cpu-mem on web-1: period unset, threshold=90 -> period=5s, threshold unset"
        );
    }

    #[test]
    fn node_moving_domain_changes_both() {
        let old = ok(FULL);
        let new = ok(&FULL.replace(
            "name = \"db-1\"\ndomain = \"lab\"",
            "name = \"db-1\"\ndomain = \"campus\"",
        ));
        let lines: Vec<String> = old.diff(&new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "~ node db-1: domain lab -> campus",
                "- assign cpu-mem on db-1"
            ]
        );
        assert_eq!(old.changed_domains(&new), ["campus", "lab"]);
    }

    #[test]
    fn to_toml_round_trips() {
        let t = ok(FULL);
        let text = t.to_toml();
        assert_eq!(ok(&text), t, "{text}");
        assert!(text.contains("threshold = 90\n"), "{text}");
        assert!(text.contains("ratio = 0.5\n"), "{text}");
        assert!(text.contains("report_window = \"5m\"\n"), "{text}");

        // Values and keys that need quoting survive too.
        let mut odd = t.clone();
        odd.nodes[0].address = Some("fe80::1%eth0 \"quoted\"".into());
        odd.assignments[1].config = cfg(&[
            ("a key", "line\nbreak"),
            ("big", "1e20"),
            ("lead", "007"),
            ("neg", "-5"),
            ("yes", "True"),
        ]);
        assert_eq!(ok(&odd.to_toml()), odd, "{}", odd.to_toml());
        assert_eq!(ok(&Topology::default().to_toml()), Topology::default());
    }
}
