//! The top manager's questions and answers: which alarms, which report
//! rows, what state the domains are in. Typed queries in, typed answers
//! out, executed against BIG through its indexes; the admin socket carries
//! them as they are, and the web API will too. Callers only parse, send
//! and print.
//!
//! What it is not for: changing anything (publishing, topology, enrollment
//! stay in the admin requests), and deciding what a domain's status is
//! (that is the session layer's, see [`crate::stations`]).

use crate::Mor;
use crate::bases::big::{AlarmIndex, ReportIndex};
use crate::bases::{BaseError, Bases};
use crate::stations::DomainStatus;
use agad_protocol::Area;
use agad_protocol::message::{Alarm, Provenance, Severity, Summary};
use agad_protocol::run::{Case, CaseState, RunOutcome};
use agad_protocol::status::Diagnosis;
use agad_protocol::wire::{Component, DomainReport, State};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;

/// Which alarms. Every field narrows; the default is every alarm event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlarmQuery {
    /// Only conditions still in force: for each (node, module, key) the
    /// latest event (by time, then id), kept if it is a raise.
    pub active_only: bool,
    /// Only nodes that the topology in force places in this domain.
    pub domain: Option<String>,
    pub node: Option<String>,
    pub module: Option<String>,
    /// Only alarms from this code of the module: a version, or a prefix of
    /// the module's hash (at least 6 hex digits).
    pub module_version: Option<String>,
    pub area: Option<Area>,
    /// This severity or worse.
    pub severity: Option<Severity>,
    /// Events at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Events before this time (milliseconds since the Unix epoch).
    pub until_ms: Option<u64>,
    /// At most this many: the newest.
    pub limit: Option<usize>,
}

/// The alarms a query found, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmList {
    pub alarms: Vec<Alarm>,
    /// The state of each node in `alarms` as its domain manager last
    /// reported it (a node that is down keeps its raised alarms); absent
    /// when unknown.
    pub nodes: BTreeMap<String, State>,
    /// Older matching alarms were left out because of the limit.
    pub truncated: bool,
    /// The knowledge base's cases of each alarm in `alarms` that has one
    /// (by alarm id): the rule chosen, the specialists' results, the state.
    #[serde(default)]
    pub cases: BTreeMap<String, Vec<Case>>,
    /// Operators' acknowledgements of alarms in `alarms` (by alarm id).
    #[serde(default)]
    pub acks: BTreeMap<String, crate::bases::big::Ack>,
}

/// How one knowledge-base rule did, over every case BIG holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStats {
    pub rule: String,
    /// Alarms it acted on.
    pub cases: u64,
    /// Cases ended with a diagnosis (no fix in the rule, or none needed).
    pub diagnosed: u64,
    /// Cases whose fix was confirmed by the alarm clearing.
    pub fixed: u64,
    /// Cases handed to a person.
    pub escalated: u64,
    /// Cases that ended without a result and nobody to tell.
    pub failed: u64,
    /// Runs that ran past their deadline.
    pub timed_out: u64,
    /// Runs a node's policy (or trust) refused.
    pub refused: u64,
    /// Cases still running or waiting for a confirmation.
    pub open: u64,
}

impl RuleStats {
    /// Cases it helped: diagnosed or fixed.
    pub fn helped(&self) -> u64 {
        self.diagnosed + self.fixed
    }

    /// Share of its finished cases that helped, 0 to 1.
    pub fn success_rate(&self) -> f64 {
        let finished = self.cases - self.open;
        if finished == 0 {
            0.0
        } else {
            self.helped() as f64 / finished as f64
        }
    }
}

/// Every rule that acted, most helpful first.
pub fn kb_stats(bases: &Bases) -> Result<Vec<RuleStats>, BaseError> {
    let mut by_rule: BTreeMap<String, RuleStats> = BTreeMap::new();
    bases.big.each_case(|case| {
        let stats = by_rule.entry(case.rule.clone()).or_default();
        stats.cases += 1;
        match case.state {
            CaseState::Diagnosed => stats.diagnosed += 1,
            CaseState::FixedConfirmed => stats.fixed += 1,
            CaseState::Escalated { .. } => stats.escalated += 1,
            CaseState::Failed { .. } => stats.failed += 1,
            CaseState::Running { .. } | CaseState::Confirming { .. } => stats.open += 1,
        }
        for (_, result) in &case.results {
            match result.outcome {
                RunOutcome::TimedOut { .. } => stats.timed_out += 1,
                RunOutcome::Refused { .. } => stats.refused += 1,
                _ => {}
            }
        }
    })?;
    let mut rows: Vec<RuleStats> = by_rule
        .into_iter()
        .map(|(rule, mut s)| {
            s.rule = rule;
            s
        })
        .collect();
    rows.sort_by(|a, b| {
        b.helped()
            .cmp(&a.helped())
            .then(b.success_rate().total_cmp(&a.success_rate()))
            .then_with(|| a.rule.cmp(&b.rule))
    });
    Ok(rows)
}

/// Which report rows. Every field narrows; the default is every per-node
/// row of every window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportQuery {
    pub domain: Option<String>,
    /// Only rows of this node (with `per_domain`, rows are named after
    /// their domain, so this matches the domain's name).
    pub node: Option<String>,
    pub module: Option<String>,
    /// Only rows computed by this code of the module: a version, or a
    /// prefix of the module's hash (at least 6 hex digits).
    pub module_version: Option<String>,
    pub metric: Option<String>,
    /// Windows starting at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Windows starting before this time (ms since the Unix epoch).
    pub until_ms: Option<u64>,
    /// Per-domain rows (every node merged) instead of per-node rows.
    pub per_domain: bool,
    /// At most this many rows: the newest.
    pub limit: Option<usize>,
}

/// One summary of one window: a node's, or with `per_domain` the domain's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    pub domain: String,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    /// The node, or the domain's name for a per-domain row.
    pub node: String,
    pub module: String,
    /// Which code of `module` computed it.
    pub provenance: Provenance,
    pub summary: Summary,
}

/// The rows a query found, oldest window first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRows {
    pub rows: Vec<ReportRow>,
    /// Older matching rows were left out because of the limit.
    pub truncated: bool,
}

/// What `agad status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The version of the replicated bases (BGC, BTPG, enrollment).
    pub version: u64,
    /// `name version (seq n)` of every module in BGC.
    pub modules: Vec<String>,
    pub domains: Vec<DomainStatus>,
    /// BTPG's links and whether each is failed.
    pub links: Vec<LinkStatus>,
    /// Every node of the topology, its state and its modules.
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
    /// How far the bases in force are deployed to the nodes.
    pub deployment: Deployment,
}

/// How far the deployment of the bases version in force has come, over the
/// domains the top manager activates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The bases version in force.
    pub version: u64,
    /// Nodes of those domains.
    pub nodes: u64,
    /// Running this version's modules without a problem.
    pub running: u64,
    /// Acknowledged it with problems (`problems` says which).
    pub failed: u64,
    /// Not connected to their domain's manager, or in a domain without
    /// one: they get the deployment when they connect.
    pub not_connected: u64,
    /// Nodes of sub-domains, whose progress their parent's manager keeps.
    pub not_tracked: u64,
    /// Domains whose manager does not deploy this version yet (its
    /// replica is on the way): their nodes count as pending.
    pub domains_behind: Vec<String>,
    /// `node: problem`, the first few of each domain.
    pub problems: Vec<String>,
}

impl Deployment {
    /// Connected nodes that have not acknowledged this version yet.
    pub fn pending(&self) -> u64 {
        self.nodes
            .saturating_sub(self.running)
            .saturating_sub(self.failed)
            .saturating_sub(self.not_connected)
    }

    /// Every node that can be reached runs this version or said why not.
    pub fn complete(&self) -> bool {
        self.domains_behind.is_empty() && self.pending() == 0
    }
}

/// One node of the topology as `agad status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub domain: String,
    /// As its domain manager last reported it; `None` when no serving
    /// station has mentioned it.
    pub state: Option<State>,
    /// In this state since (Unix ms), where known.
    pub since_ms: Option<u64>,
    /// The modules the topology assigns it, by name.
    pub modules: Vec<ModuleStatus>,
}

/// One module assigned to a node, as far as the top manager can tell.
///
/// The node reports each module's state, and since when, to its domain
/// manager, which relays it in its keep-alive: a module is running,
/// failing (`detail` says how), or unknown (its node is not connected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStatus {
    pub name: String,
    pub state: ModuleState,
    /// In this state since (Unix ms), as its node said.
    pub since_ms: Option<u64>,
    /// What is wrong, when failing: restarting after a fault, refused,
    /// quarantined, with the node's reason.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleState {
    Running,
    /// Its node names it among its failing components (restarting,
    /// refused, quarantined: `agad alarms --node` says which and why).
    Failing,
    /// Its node is not connected: nothing known.
    Unknown,
}

impl ModuleState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleState::Running => "running",
            ModuleState::Failing => "failing",
            ModuleState::Unknown => "unknown",
        }
    }
}

/// One link of the topology as `agad status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    pub a: String,
    pub b: String,
    /// Why it is failed (an end's host is down), if it is.
    pub failed: Option<String>,
}

/// Most rows one answer carries, whatever the query asks: an answer is
/// built in memory and sent whole, so a base of millions of alarms is read
/// page by page (`--limit`, `--until`), never at once.
pub const MAX_ROWS: usize = 10_000;

/// Collects what a newest-first scan finds, up to one more than its limit
/// (which is how it knows more was there).
struct Newest<T> {
    found: Vec<T>,
    limit: usize,
}

impl<T> Newest<T> {
    /// At most `limit` rows, and never more than [`MAX_ROWS`].
    fn new(limit: Option<usize>) -> Self {
        Newest {
            found: Vec::new(),
            limit: limit.unwrap_or(MAX_ROWS).min(MAX_ROWS),
        }
    }

    fn push(&mut self, item: T) -> ControlFlow<()> {
        self.found.push(item);
        if self.found.len() > self.limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Oldest first, and whether the limit left some out.
    fn finish(mut self) -> (Vec<T>, bool) {
        let truncated = self.found.len() > self.limit;
        self.found.truncate(self.limit);
        self.found.reverse();
        (self.found, truncated)
    }
}

/// The alarms `query` asks for, with the state of their nodes.
pub fn alarms(mor: &Mor, query: &AlarmQuery) -> Result<AlarmList, BaseError> {
    let mut list = alarm_events(&mor.bases, query)?;
    for a in &list.alarms {
        let cases = mor.bases.big.cases_of(&a.id)?;
        if !cases.is_empty() {
            list.cases.insert(a.id.clone(), cases);
        }
        if let Some(ack) = mor.bases.big.ack_of(&a.id)? {
            list.acks.insert(a.id.clone(), ack);
        }
    }
    let mut states = mor.node_states();
    list.nodes = list
        .alarms
        .iter()
        .filter_map(|a| Some((a.node.clone(), states.remove(&a.node)?)))
        .collect();
    Ok(list)
}

/// The alarms `query` asks for (node states left empty).
fn alarm_events(bases: &Bases, query: &AlarmQuery) -> Result<AlarmList, BaseError> {
    let since = query.since_ms.unwrap_or(0);
    let until = query.until_ms.unwrap_or(u64::MAX);
    let in_domain: Option<BTreeSet<String>> = match &query.domain {
        Some(d) => Some(
            bases
                .topology()?
                .nodes
                .into_iter()
                .filter(|n| n.domain == *d)
                .map(|n| n.name)
                .collect(),
        ),
        None => None,
    };
    let wanted = |a: &Alarm| {
        query.node.as_ref().is_none_or(|n| *n == a.node)
            && in_domain.as_ref().is_none_or(|d| d.contains(&a.node))
            && query.module.as_ref().is_none_or(|m| *m == a.module)
            && query
                .module_version
                .as_ref()
                .is_none_or(|v| a.provenance.matches(v))
            && query.area.is_none_or(|x| x == a.area)
            && query.severity.is_none_or(|s| a.severity >= s)
            && (since..until).contains(&a.time_ms)
    };
    // One node, the domain's nodes, or everyone: the narrowest index.
    let nodes: Option<Vec<&str>> = match (&query.node, &in_domain) {
        (Some(n), _) => Some(vec![n.as_str()]),
        (None, Some(d)) => Some(d.iter().map(String::as_str).collect()),
        (None, None) => None,
    };
    let indexes: Vec<AlarmIndex> = match (nodes, query.active_only) {
        (Some(nodes), true) => nodes
            .into_iter()
            .map(|n| AlarmIndex::Active(Some(n)))
            .collect(),
        (Some(nodes), false) => nodes.into_iter().map(AlarmIndex::Node).collect(),
        (None, true) => vec![AlarmIndex::Active(None)],
        (None, false) => vec![AlarmIndex::Time],
    };
    let mut found = Vec::new();
    for index in indexes {
        let mut newest = Newest::new(query.limit);
        bases.big.alarms_newest_first(index, since, until, |a| {
            if wanted(&a) {
                newest.push(a)
            } else {
                ControlFlow::Continue(())
            }
        })?;
        found.append(&mut newest.found);
    }
    // Several nodes' scans are merged here; one scan is already in order.
    found.sort_by(|a, b| (b.time_ms, &b.id).cmp(&(a.time_ms, &a.id)));
    let mut newest = Newest::new(query.limit);
    for a in found {
        if newest.push(a).is_break() {
            break;
        }
    }
    let (alarms, truncated) = newest.finish();
    known(
        bases,
        query.domain.as_deref(),
        query.node.as_deref(),
        !alarms.is_empty(),
    )?;
    Ok(AlarmList {
        alarms,
        nodes: BTreeMap::new(),
        truncated,
        cases: BTreeMap::new(),
        acks: BTreeMap::new(),
    })
}

/// Refuses a domain or node the topology in force does not name, when
/// nothing was found for it either (a node or domain removed from the
/// topology keeps its history): a typo gets an error, not an empty table.
fn known(
    bases: &Bases,
    domain: Option<&str>,
    node: Option<&str>,
    found: bool,
) -> Result<(), BaseError> {
    if found || (domain.is_none() && node.is_none()) {
        return Ok(());
    }
    let topology = bases.topology()?;
    let list = |names: Vec<&str>| {
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    if let Some(d) = domain
        && topology.domain(d).is_none()
    {
        return Err(BaseError::Unknown(format!(
            "no domain `{d}` in the topology, and nothing recorded matches it (domains: {})",
            list(topology.domains.iter().map(|d| d.name.as_str()).collect())
        )));
    }
    if let Some(n) = node
        && !topology.nodes.iter().any(|x| x.name == n)
    {
        let mut names: Vec<&str> = topology.nodes.iter().map(|x| x.name.as_str()).collect();
        let more = names.len().saturating_sub(20);
        names.truncate(20);
        let mut known = list(names);
        if more > 0 {
            known.push_str(&format!(" and {more} more"));
        }
        return Err(BaseError::Unknown(format!(
            "no node `{n}` in the topology, and nothing recorded matches it (nodes: {known})"
        )));
    }
    Ok(())
}

/// The report rows `query` asks for.
pub fn reports(bases: &Bases, query: &ReportQuery) -> Result<ReportRows, BaseError> {
    let since = query.since_ms.unwrap_or(0);
    let until = query.until_ms.unwrap_or(u64::MAX);
    let index = match (&query.domain, &query.node) {
        (Some(d), _) => ReportIndex::Domain(d),
        // Per-domain rows carry the domain's name, not the node's.
        (None, Some(n)) if !query.per_domain => ReportIndex::Node(n),
        _ => ReportIndex::Time,
    };
    let mut newest = Newest::new(query.limit);
    bases.big.reports_newest_first(index, since, until, |r| {
        if query.domain.as_ref().is_some_and(|d| *d != r.domain) {
            return ControlFlow::Continue(());
        }
        rows_of(query, r, &mut newest)
    })?;
    let (rows, truncated) = newest.finish();
    // Per-domain rows are named after their domain: `--node` matches it.
    let node = query.node.as_deref().filter(|_| !query.per_domain);
    let domain = query
        .domain
        .as_deref()
        .or(query.node.as_deref().filter(|_| query.per_domain));
    known(bases, domain, node, !rows.is_empty())?;
    Ok(ReportRows {
        rows: merge_stations(rows),
        truncated,
    })
}

/// One row per window and series: across a fail-over, the old and the new
/// domain manager each consolidated their part of a window (BIG keeps one
/// consolidation per window and station); their rows are merged here.
fn merge_stations(rows: Vec<ReportRow>) -> Vec<ReportRow> {
    type Key = (String, u64, u64, String, String, Provenance, String, String);
    let mut out: Vec<ReportRow> = Vec::with_capacity(rows.len());
    let mut at: HashMap<Key, usize> = HashMap::new();
    for r in rows {
        let key = (
            r.domain.clone(),
            r.window_start_ms,
            r.window_end_ms,
            r.node.clone(),
            r.module.clone(),
            r.provenance.clone(),
            r.summary.metric.clone(),
            r.summary.subject.clone(),
        );
        match at.get(&key) {
            Some(&i) => out[i].summary = out[i].summary.merged(&r.summary),
            None => {
                at.insert(key, out.len());
                out.push(r);
            }
        }
    }
    out
}

/// Adds the rows of one report that `query` wants, last row first (the
/// scan runs newest first and is reversed at the end).
fn rows_of(
    query: &ReportQuery,
    r: DomainReport,
    newest: &mut Newest<ReportRow>,
) -> ControlFlow<()> {
    let rows = if query.per_domain {
        r.domain_summaries
    } else {
        r.nodes
    };
    for row in rows.into_iter().rev() {
        if query.node.as_ref().is_some_and(|n| *n != row.node)
            || query.module.as_ref().is_some_and(|m| *m != row.module)
            || query
                .module_version
                .as_ref()
                .is_some_and(|v| !row.provenance.matches(v))
            || query
                .metric
                .as_ref()
                .is_some_and(|m| *m != row.summary.metric)
        {
            continue;
        }
        newest.push(ReportRow {
            domain: r.domain.clone(),
            window_start_ms: r.window_start_ms,
            window_end_ms: r.window_end_ms,
            node: row.node,
            module: row.module,
            provenance: row.provenance,
            summary: row.summary,
        })?;
    }
    ControlFlow::Continue(())
}

/// The bases' version, the modules in BGC and each domain's manager,
/// replica and components.
pub fn status(mor: &Mor) -> Result<Status, BaseError> {
    let b = &mor.bases;
    Ok(Status {
        version: b.version()?,
        modules: b
            .bundles()?
            .iter()
            .map(|x| {
                format!(
                    "{} {} (seq {})",
                    x.manifest.name, x.manifest.version, x.manifest.sequence
                )
            })
            .collect(),
        domains: mor.domain_status(),
        links: link_status(mor)?,
        nodes: node_status(mor)?,
        deployment: Deployment::default(),
    })
    .and_then(|mut status| {
        status.deployment = deployment(&mor.bases.topology()?, &status);
        Ok(status)
    })
}

/// Adds up what each domain's manager said of its nodes' deployment; a
/// domain counts only once its manager holds the replica of `status.version`
/// (or found it unchanged) and deploys it.
fn deployment(topology: &agad_protocol::topology::Topology, status: &Status) -> Deployment {
    let version = status.version;
    let mut out = Deployment {
        version,
        ..Deployment::default()
    };
    for d in &status.domains {
        let nodes = topology
            .nodes
            .iter()
            .filter(|n| n.domain == d.domain)
            .count() as u64;
        if d.parent.is_some() {
            out.not_tracked += nodes;
            continue;
        }
        out.nodes += nodes;
        if d.station.is_none() {
            out.not_connected += nodes;
            continue;
        }
        let current = d.replica_checked.is_some_and(|c| c >= version)
            && d.replica_sent.is_some()
            && d.replica_acked >= d.replica_sent;
        match &d.deployment {
            Some(p) if current && Some(p.version) == d.replica_sent => {
                // The station counts the nodes its replica lists: the same
                // topology, so the same number.
                out.running += p.running.min(nodes);
                out.failed += p.failed;
                out.not_connected += p.not_connected;
                out.problems.extend(p.problems.iter().cloned());
            }
            _ => out.domains_behind.push(d.domain.clone()),
        }
    }
    out
}

/// Every node of BTPG with the state its domain manager reported and the
/// modules BTPG assigns it.
fn node_status(mor: &Mor) -> Result<Vec<NodeStatus>, BaseError> {
    let topology = mor.bases.topology()?;
    let mut reported: HashMap<String, (State, Option<u64>)> = HashMap::new();
    let mut modules_reported: HashMap<(String, String), (State, Option<u64>)> = HashMap::new();
    for c in mor.domain_status().into_iter().flat_map(|d| d.components) {
        match c.component {
            Component::Node { name } => {
                reported.insert(name, (c.state, c.since_ms));
            }
            Component::NodeModule { node, module } => {
                modules_reported.insert((node, module), (c.state, c.since_ms));
            }
            _ => {}
        }
    }
    let mut assigned: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let resolved = topology.resolved();
    for a in &resolved {
        assigned
            .entry(a.node.as_str())
            .or_default()
            .push(a.module.clone());
    }
    Ok(topology
        .nodes
        .iter()
        .map(|n| {
            let (state, since_ms) = match reported.get(&n.name) {
                Some((state, since)) => (Some(state.clone()), *since),
                None => (None, None),
            };
            let modules = assigned
                .get(n.name.as_str())
                .into_iter()
                .flatten()
                .map(|m| {
                    module_status(
                        state.as_ref(),
                        m,
                        modules_reported.get(&(n.name.clone(), m.clone())),
                    )
                })
                .collect();
            NodeStatus {
                name: n.name.clone(),
                domain: n.domain.clone(),
                state,
                since_ms,
                modules,
            }
        })
        .collect())
}

/// A module's state: as its node reported it through its domain manager,
/// or, before that report, failing when the node names it among its
/// failing components; unknown while the node is not connected.
fn module_status(
    node: Option<&State>,
    module: &str,
    reported: Option<&(State, Option<u64>)>,
) -> ModuleStatus {
    let (state, since_ms, detail) = match (node, reported) {
        (Some(State::Connected { .. }), Some((State::Running, since))) => {
            (ModuleState::Running, *since, None)
        }
        (Some(State::Connected { .. }), Some((other, since))) => {
            (ModuleState::Failing, *since, Some(other.to_string()))
        }
        (Some(State::Connected { failing, .. }), None) => {
            let me = Component::Module {
                name: module.to_owned(),
            }
            .to_string();
            if failing.contains(&me) {
                (ModuleState::Failing, None, None)
            } else {
                (ModuleState::Running, None, None)
            }
        }
        _ => (ModuleState::Unknown, None, None),
    };
    ModuleStatus {
        name: module.to_owned(),
        state,
        since_ms,
        detail,
    }
}

/// Every link of BTPG, failed when an end is a host the guardian found down
/// (the AGAD GUI's "node and the links to it in red").
fn link_status(mor: &Mor) -> Result<Vec<LinkStatus>, BaseError> {
    let topology = mor.bases.topology()?;
    let mut down: BTreeMap<String, String> = mor
        .node_states()
        .into_iter()
        .filter_map(|(node, state)| match state {
            State::Failed {
                diagnosis: Diagnosis::HostDown,
                reason,
                ..
            } => Some((node, reason)),
            _ => None,
        })
        .collect();
    for (station, f) in mor.guardian.failures() {
        if f.diagnosis == Diagnosis::HostDown {
            down.insert(station, f.reason);
        }
    }
    Ok(topology
        .links
        .iter()
        .map(|l| {
            let failed = [&l.a, &l.b]
                .into_iter()
                .find_map(|end| down.get(end).map(|why| format!("{end}: host down ({why})")));
            LinkStatus {
                a: l.a.clone(),
                b: l.b.clone(),
                failed,
            }
        })
        .collect())
}

/// A module published in BGC, as the page and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleInfo {
    pub name: String,
    pub version: String,
    pub sequence: u64,
    pub kind: agad_protocol::manifest::Kind,
    pub area: Area,
    pub capabilities: Vec<agad_protocol::manifest::Capability>,
    /// SHA-256 of the wasm bytes, hex.
    pub sha256: String,
    /// The id (hex) of the key that signed it.
    pub signer: String,
    /// Milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    pub bytes: usize,
}

/// Every module BGC holds, by name.
pub fn modules(bases: &Bases) -> Result<Vec<ModuleInfo>, BaseError> {
    let mut all: Vec<ModuleInfo> = bases
        .bundles()?
        .into_iter()
        .map(|b| {
            let m = &b.manifest;
            ModuleInfo {
                name: m.name.clone(),
                version: m.version.to_string(),
                sequence: m.sequence,
                kind: m.kind,
                area: m.area,
                capabilities: m.capabilities.clone(),
                sha256: m.sha256_hex(),
                signer: m.signer.to_string(),
                issued_at_ms: m.issued_at.saturating_mul(1000),
                expires_at_ms: m.expires_at.saturating_mul(1000),
                bytes: b.wasm.len(),
            }
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::bases::big::tests::{alarm, report};
    use agad_protocol::topology;
    use agad_storage::Database;

    fn bases() -> Bases {
        let b = Bases::open(&Database::temporary().unwrap()).unwrap();
        let text = "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n\
            [[domain]]\nname = \"d2\"\nstations = [\"s2\"]\n\n\
            [[node]]\nname = \"n1\"\ndomain = \"d1\"\n\n\
            [[node]]\nname = \"n2\"\ndomain = \"d1\"\n\n\
            [[node]]\nname = \"n3\"\ndomain = \"d2\"\n";
        b.apply_topology(&topology::parse(text, "t.toml", &|_| Some(&[])).unwrap())
            .unwrap();
        b
    }

    fn alarm_ids(b: &Bases, q: AlarmQuery) -> Vec<String> {
        alarm_events(b, &q)
            .unwrap()
            .alarms
            .into_iter()
            .map(|a| a.id)
            .collect()
    }

    /// How `agad alarms --active` decided before the query module: every
    /// event sorted by time (stable, over id order), the last one of each
    /// (node, module, key), kept if raised.
    fn active_as_the_cli_did(all: &[Alarm]) -> Vec<String> {
        let mut all = all.to_vec();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.sort_by_key(|a| a.time_ms);
        let mut latest = std::collections::BTreeMap::new();
        for a in all {
            latest.insert((a.node.clone(), a.module.clone(), a.key.clone()), a);
        }
        let mut active: Vec<Alarm> = latest.into_values().filter(|a| a.raised).collect();
        active.sort_by(|a, b| (a.time_ms, &a.id).cmp(&(b.time_ms, &b.id)));
        active.into_iter().map(|a| a.id).collect()
    }

    #[test]
    fn active_alarms_keep_the_semantics_of_the_cli() {
        let b = bases();
        let mut sent = Vec::new();
        // A fixed pseudo-random stream: three nodes, three keys, raises and
        // clears in any order, equal times, repeats.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for n in 0..400u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let node = ["n1", "n2", "n3"][(x % 3) as usize];
            let key = ["a", "b", "c"][((x >> 8) % 3) as usize];
            let a = alarm(node, key, n, (x >> 16).is_multiple_of(2), (x >> 24) % 50);
            b.record_alarm(&a).unwrap();
            if (x >> 32).is_multiple_of(5) {
                b.record_alarm(&a).unwrap();
            }
            sent.push(a);
        }
        let active = alarm_ids(
            &b,
            AlarmQuery {
                active_only: true,
                ..Default::default()
            },
        );
        assert!(!active.is_empty());
        assert_eq!(active, active_as_the_cli_did(&sent));
        let of_n2: Vec<Alarm> = sent.iter().filter(|a| a.node == "n2").cloned().collect();
        assert_eq!(
            alarm_ids(
                &b,
                AlarmQuery {
                    active_only: true,
                    node: Some("n2".into()),
                    ..Default::default()
                }
            ),
            active_as_the_cli_did(&of_n2)
        );
        assert_eq!(
            alarm_events(&b, &AlarmQuery::default())
                .unwrap()
                .alarms
                .len(),
            400,
            "every event once"
        );
    }

    #[test]
    fn alarm_filters_ranges_and_limit() {
        let b = bases();
        let mut critical = alarm("n3", "k", 1, true, 30);
        critical.severity = Severity::Critical;
        let mut info = alarm("n2", "k", 1, true, 20);
        info.severity = Severity::Info;
        info.area = Area::Performance;
        for a in [alarm("n1", "k", 1, true, 10), info, critical] {
            b.record_alarm(&a).unwrap();
        }
        b.record_alarm(&alarm("n1", "k", 2, false, 40)).unwrap();
        let q = |f: fn(&mut AlarmQuery)| {
            let mut q = AlarmQuery::default();
            f(&mut q);
            alarm_ids(&b, q)
        };
        assert_eq!(q(|_| {}), ["n1/m/1", "n2/m/1", "n3/m/1", "n1/m/2"]);
        assert_eq!(
            q(|q| q.domain = Some("d1".into())),
            ["n1/m/1", "n2/m/1", "n1/m/2"]
        );
        let typo = |q: AlarmQuery| alarm_events(&b, &q).unwrap_err().to_string();
        let err = typo(AlarmQuery {
            domain: Some("nowhere".into()),
            ..Default::default()
        });
        assert!(
            err.contains("no domain `nowhere`") && err.contains("d1, d2"),
            "{err}"
        );
        let err = typo(AlarmQuery {
            node: Some("n9".into()),
            ..Default::default()
        });
        assert!(
            err.contains("no node `n9`") && err.contains("n1, n2, n3"),
            "{err}"
        );
        assert_eq!(q(|q| q.node = Some("n2".into())), ["n2/m/1"]);
        assert_eq!(
            q(|q| {
                q.node = Some("n2".into());
                q.severity = Some(Severity::Critical);
            }),
            Vec::<String>::new(),
            "a known node with nothing matching is an empty answer"
        );
        assert_eq!(
            q(|q| {
                q.domain = Some("d2".into());
                q.node = Some("n1".into());
            }),
            Vec::<String>::new(),
            "a node outside the domain"
        );
        assert_eq!(
            q(|q| q.severity = Some(Severity::Major)),
            ["n1/m/1", "n3/m/1", "n1/m/2"]
        );
        assert_eq!(q(|q| q.area = Some(Area::Performance)), ["n2/m/1"]);
        assert_eq!(
            q(|q| {
                q.since_ms = Some(20);
                q.until_ms = Some(40);
            }),
            ["n2/m/1", "n3/m/1"]
        );
        assert_eq!(
            q(|q| {
                q.active_only = true;
                q.domain = Some("d1".into());
            }),
            ["n2/m/1"]
        );
        let newest = alarm_events(
            &b,
            &AlarmQuery {
                limit: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(newest.truncated);
        let ids: Vec<_> = newest.alarms.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["n3/m/1", "n1/m/2"], "the newest, oldest first");
        let all = alarm_events(
            &b,
            &AlarmQuery {
                limit: Some(4),
                domain: Some("d1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!all.truncated);
        assert_eq!(all.alarms.len(), 3);
    }

    #[test]
    fn report_rows_by_node_domain_module_metric_and_window() {
        let b = bases();
        for start in [100, 200, 300] {
            b.record_report(&report("d1", start, &["n1", "n2"]))
                .unwrap();
            b.record_report(&report("d2", start, &["n3"])).unwrap();
        }
        let rows = |q: ReportQuery| reports(&b, &q).unwrap().rows;
        let key = |r: &ReportRow| {
            format!(
                "{}:{}:{}:{}",
                r.window_start_ms, r.domain, r.node, r.summary.metric
            )
        };
        let all = rows(ReportQuery::default());
        assert_eq!(all.len(), 18);
        assert!(
            all.windows(2)
                .all(|w| w[0].window_start_ms <= w[1].window_start_ms)
        );
        let n1: Vec<String> = rows(ReportQuery {
            node: Some("n1".into()),
            metric: Some("y".into()),
            since_ms: Some(150),
            ..Default::default()
        })
        .iter()
        .map(key)
        .collect();
        assert_eq!(n1, ["200:d1:n1:y", "300:d1:n1:y"]);
        let d2: Vec<String> = rows(ReportQuery {
            domain: Some("d2".into()),
            until_ms: Some(300),
            ..Default::default()
        })
        .iter()
        .map(key)
        .collect();
        assert_eq!(
            d2,
            ["100:d2:n3:x", "100:d2:n3:y", "200:d2:n3:x", "200:d2:n3:y"]
        );
        let per_domain: Vec<String> = rows(ReportQuery {
            per_domain: true,
            domain: Some("d1".into()),
            ..Default::default()
        })
        .iter()
        .map(key)
        .collect();
        assert_eq!(per_domain, ["100:d1:d1:x", "200:d1:d1:x", "300:d1:d1:x"]);
        assert!(
            rows(ReportQuery {
                module: Some("other".into()),
                ..Default::default()
            })
            .is_empty()
        );
        for typo in [
            ReportQuery {
                domain: Some("d3".into()),
                ..Default::default()
            },
            ReportQuery {
                node: Some("n9".into()),
                ..Default::default()
            },
            ReportQuery {
                node: Some("n1".into()),
                per_domain: true,
                ..Default::default()
            },
        ] {
            let err = reports(&b, &typo).unwrap_err();
            assert!(matches!(err, BaseError::Unknown(_)), "{typo:?}: {err}");
        }
        assert!(
            rows(ReportQuery {
                node: Some("n1".into()),
                module: Some("other".into()),
                ..Default::default()
            })
            .is_empty(),
            "a known node with nothing matching is an empty answer"
        );
        let newest = reports(
            &b,
            &ReportQuery {
                domain: Some("d1".into()),
                limit: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(newest.truncated);
        let keys: Vec<String> = newest.rows.iter().map(key).collect();
        assert_eq!(keys, ["300:d1:n1:y", "300:d1:n2:x", "300:d1:n2:y"]);
    }

    #[test]
    fn a_module_is_as_its_node_reported_it_or_failing_when_its_node_names_it() {
        let connected = |failing: &[&str]| State::Connected {
            served_by: None,
            failing: failing.iter().map(|f| f.to_string()).collect(),
        };
        let state = |node: Option<&State>, reported: Option<&(State, Option<u64>)>| {
            let m = module_status(node, "cpu-mem", reported);
            (m.state, m.since_ms, m.detail)
        };
        // Reported by the node, through its domain manager: since when, and how.
        assert_eq!(
            state(
                Some(&connected(&[])),
                Some(&(State::Running, Some(1_700_000_000_000)))
            ),
            (ModuleState::Running, Some(1_700_000_000_000), None)
        );
        let restarting = State::Restarting {
            last_fault: "trap: out of fuel".into(),
            fault_at_ms: 1_700_000_000_000,
        };
        assert_eq!(
            state(
                Some(&connected(&["module cpu-mem"])),
                Some(&(restarting, Some(1_700_000_000_000)))
            ),
            (
                ModuleState::Failing,
                Some(1_700_000_000_000),
                Some("restarting: trap: out of fuel".into())
            )
        );
        // Not reported yet: from the node's failing names.
        assert_eq!(
            state(Some(&connected(&[])), None),
            (ModuleState::Running, None, None)
        );
        assert_eq!(
            state(Some(&connected(&["module cpu-mem"])), None),
            (ModuleState::Failing, None, None)
        );
        assert_eq!(
            state(Some(&connected(&["module cpu-mem-2"])), None),
            (ModuleState::Running, None, None)
        );
        // A node not connected: nothing known, whatever was reported before.
        assert_eq!(
            state(Some(&State::NotConnected), Some(&(State::Running, Some(1)))),
            (ModuleState::Unknown, None, None)
        );
        assert_eq!(state(None, None), (ModuleState::Unknown, None, None));
    }

    #[test]
    fn queries_travel_as_json_with_every_field_optional() {
        let q: AlarmQuery = serde_json::from_str(r#"{"active_only":true}"#).unwrap();
        assert!(q.active_only && q.node.is_none());
        let r: crate::admin::Request =
            serde_json::from_str(r#"{"op":"reports","node":"n1","limit":5}"#).unwrap();
        assert!(matches!(
            r,
            crate::admin::Request::Reports(ReportQuery { node: Some(ref n), limit: Some(5), .. }) if n == "n1"
        ));
        let a: crate::admin::Request = serde_json::from_str(r#"{"op":"alarms"}"#).unwrap();
        assert!(matches!(a, crate::admin::Request::Alarms(ref q) if *q == AlarmQuery::default()));
    }
}
