//! BIG, the top manager's history: every alarm and every domain report the
//! stations delivered, the indexes that let a query read only the range it
//! asks for, and the retention prune.
//!
//! Trees (times are 8-byte big-endian milliseconds, so key order is time
//! order; `lp(s)` is `s` after its 4-byte big-endian length, so one name is
//! never mistaken for the start of another):
//! - `big-alarms`: id → alarm. The primary copy, one per id.
//! - `big-alarms-by-time`: time ‖ id → ().
//! - `big-alarms-by-node`: lp(node) ‖ time ‖ id → ().
//! - `big-alarm-conditions`: lp(node) ‖ lp(module) ‖ lp(key) → the latest
//!   event of that condition (time, id, raised). Never pruned: it is what
//!   keeps a late copy of an old raise from reviving a cleared condition,
//!   and it holds one small entry per condition, not per event.
//! - `big-alarms-active`: lp(node) ‖ time ‖ id → () for every condition
//!   whose latest event is a raise.
//! - `big-reports`: window start ‖ id → domain report. The primary copy,
//!   one per id (the key layout predates the indexes and is unchanged).
//! - `big-reports-by-domain`: lp(domain) ‖ window start ‖ id → ().
//! - `big-reports-by-node`: lp(node) ‖ window start ‖ id → () for every node
//!   with a row in the report.
//! - `big-cases`: `<alarm id>#<rule>` → the knowledge base's case for
//!   that alarm and rule, its highest revision.
//! - `big-acks`: alarm id → [`Ack`], an operator's acknowledgement.
//! - `big-meta`: which index layout the trees hold.
//!
//! Index entries are written after the primary copy and written again when
//! a sender delivers the same alarm or report twice. A sender repeats until
//! it is acknowledged and we acknowledge only after the write returns, so a
//! crash between the primary copy and its index entries is repaired by the
//! retry; readers skip an index entry whose primary copy is gone. A data
//! directory from before the indexes gets them built at open.

use super::{Result, decode};
use agad_protocol::message::Alarm;
use agad_protocol::run::Case;
use agad_protocol::wire::{self, DomainReport};
use agad_storage::{Database, Tree};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

const INDEX_VERSION: &[u8] = b"index-version";
/// Raise it when the index layout changes: open rebuilds older indexes.
const CURRENT_INDEX: u64 = 1;
/// Entries read from the engine at a time.
const PAGE: usize = 256;
/// How often the prune runs at most (and at least once per retention / 10).
const PRUNE_PERIOD_MAX: Duration = Duration::from_secs(3600);

/// An operator's acknowledgement of an alarm: someone is on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ack {
    /// The login that acknowledged it.
    pub by: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub comment: String,
}

#[derive(Clone, Debug)]
pub struct Big {
    db: Database,
    alarms: Tree,
    alarms_by_time: Tree,
    alarms_by_node: Tree,
    conditions: Tree,
    active: Tree,
    reports: Tree,
    reports_by_domain: Tree,
    reports_by_node: Tree,
    cases: Tree,
    acks: Tree,
    meta: Tree,
    /// Serialises the read-modify-write of a condition's latest event (two
    /// stations may relay one node's alarms during a take-over) against
    /// itself and against the prune's "is it active?" check, and that of a
    /// window's report (a later consolidation replaces an earlier one).
    conditions_lock: Arc<Mutex<()>>,
}

/// The latest event of one condition (node, module, key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Latest {
    time_ms: u64,
    id: String,
    raised: bool,
}

impl Latest {
    fn of(alarm: &Alarm) -> Latest {
        Latest {
            time_ms: alarm.time_ms,
            id: alarm.id.clone(),
            raised: alarm.raised,
        }
    }

    /// Later time wins; at equal times the greater id (the order `agad
    /// alarms --active` has always used).
    fn is_after(&self, other: &Latest) -> bool {
        (self.time_ms, &self.id) > (other.time_ms, &other.id)
    }
}

/// Which index an alarm scan reads.
#[derive(Debug, Clone, Copy)]
pub enum AlarmIndex<'a> {
    /// Every alarm event, by time.
    Time,
    /// One node's alarm events, by time.
    Node(&'a str),
    /// The raises still in force, of one node or of every node.
    Active(Option<&'a str>),
}

/// Which index a report scan reads.
#[derive(Debug, Clone, Copy)]
pub enum ReportIndex<'a> {
    /// Every domain report, by window start.
    Time,
    /// One domain's reports.
    Domain(&'a str),
    /// The reports with rows of one node.
    Node(&'a str),
}

/// What one prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub alarms: usize,
    pub reports: usize,
}

fn lp(name: &str) -> Vec<u8> {
    let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out
}

fn time_id(time_ms: u64, id: &str) -> Vec<u8> {
    let mut out = time_ms.to_be_bytes().to_vec();
    out.extend_from_slice(id.as_bytes());
    out
}

fn under(prefix: &[u8], time_id: &[u8]) -> Vec<u8> {
    [prefix, time_id].concat()
}

/// The time and id of a `time ‖ id` key suffix.
fn split_time_id(rest: &[u8]) -> Option<(u64, &[u8])> {
    let time = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((time, &rest[8..]))
}

fn condition(alarm: &Alarm) -> Vec<u8> {
    [lp(&alarm.node), lp(&alarm.module), lp(&alarm.key)].concat()
}

/// Visits the entries of `tree` whose key is `prefix ‖ time ‖ id` with a
/// time in `[since_ms, until_ms)`, newest first, passing `time ‖ id` and
/// the value, until `visit` breaks.
fn newest_first(
    tree: &Tree,
    prefix: &[u8],
    since_ms: u64,
    until_ms: u64,
    mut visit: impl FnMut(&[u8], Vec<u8>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut before = prefix.to_vec();
    if until_ms == u64::MAX {
        // Above every id too: ids are UTF-8, which never has a 0xff byte.
        before.extend_from_slice(&[0xff; 9]);
    } else {
        before.extend_from_slice(&until_ms.to_be_bytes());
    }
    loop {
        let page = tree.entries_before(&before, PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        before = last.clone();
        for (key, value) in page {
            let Some(rest) = key.strip_prefix(prefix) else {
                return Ok(());
            };
            let Some((time, _)) = split_time_id(rest) else {
                continue;
            };
            if time < since_ms {
                return Ok(());
            }
            if visit(rest, value)?.is_break() {
                return Ok(());
            }
        }
    }
}

/// Visits every entry of `tree`, in key order, one page at a time, until
/// `visit` breaks.
fn all_entries(
    tree: &Tree,
    mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut after = Vec::new();
    loop {
        let page = tree.entries_after(&after, PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = last.clone();
        for (key, value) in page {
            if visit(key, value)?.is_break() {
                return Ok(());
            }
        }
    }
}

impl Big {
    /// Opens BIG, building its indexes if the data directory predates them.
    pub fn open(db: &Database) -> Result<Big> {
        let big = Big {
            db: db.clone(),
            alarms: db.tree("big-alarms")?,
            alarms_by_time: db.tree("big-alarms-by-time")?,
            alarms_by_node: db.tree("big-alarms-by-node")?,
            conditions: db.tree("big-alarm-conditions")?,
            active: db.tree("big-alarms-active")?,
            reports: db.tree("big-reports")?,
            reports_by_domain: db.tree("big-reports-by-domain")?,
            reports_by_node: db.tree("big-reports-by-node")?,
            cases: db.tree("big-cases")?,
            acks: db.tree("big-acks")?,
            meta: db.tree("big-meta")?,
            conditions_lock: Arc::default(),
        };
        let held = big
            .meta
            .get(INDEX_VERSION)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        if held < CURRENT_INDEX {
            // Every index entry is derived from a primary copy and writing
            // one twice is harmless, so a rebuild cut short by a crash is
            // simply done again.
            let (alarms, reports) = big.rebuild()?;
            big.meta
                .insert(INDEX_VERSION, &CURRENT_INDEX.to_be_bytes())?;
            big.db.flush()?;
            tracing::info!(alarms, reports, "BIG indexes built");
        }
        Ok(big)
    }

    fn rebuild(&self) -> Result<(usize, usize)> {
        let (mut alarms, mut reports) = (0, 0);
        all_entries(&self.alarms, |_, value| {
            self.index_alarm(&decode("alarm", &value)?)?;
            alarms += 1;
            Ok(ControlFlow::Continue(()))
        })?;
        all_entries(&self.reports, |key, value| {
            self.index_report(&key, &decode("report", &value)?)?;
            reports += 1;
            Ok(ControlFlow::Continue(()))
        })?;
        Ok((alarms, reports))
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.conditions_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an alarm once per id, durably; false if already there.
    pub fn record_alarm(&self, alarm: &Alarm) -> Result<bool> {
        let new = self
            .alarms
            .insert_new(alarm.id.as_bytes(), &wire::encode_value(alarm))?;
        if new {
            self.index_alarm(alarm)?;
        } else if let Some(stored) = self.alarm(alarm.id.as_bytes())? {
            // Index what we hold, not what the repeat claims.
            self.index_alarm(&stored)?;
        }
        self.db.flush()?;
        Ok(new)
    }

    /// Stores a case if it is newer than the one held (by revision);
    /// false if not. Durable.
    pub fn record_case(&self, case: &Case) -> Result<bool> {
        let key = case.key();
        let _guard = self.lock();
        let held: Option<Case> = self
            .cases
            .get(key.as_bytes())?
            .map(|v| decode("case", &v))
            .transpose()?;
        if held.is_some_and(|h| !case.supersedes(&h)) {
            return Ok(false);
        }
        self.cases
            .insert(key.as_bytes(), &wire::encode_value(case))?;
        self.db.flush()?;
        Ok(true)
    }

    /// Records `ack` of alarm `id`, replacing an earlier one; false if BIG
    /// has no such alarm. Durable.
    pub fn record_ack(&self, id: &str, ack: &Ack) -> Result<bool> {
        let _guard = self.lock();
        if self.alarm(id.as_bytes())?.is_none() {
            return Ok(false);
        }
        self.acks.insert(id.as_bytes(), &wire::encode_value(ack))?;
        self.db.flush()?;
        Ok(true)
    }

    /// The acknowledgement of alarm `id`, if any.
    pub fn ack_of(&self, id: &str) -> Result<Option<Ack>> {
        self.acks
            .get(id.as_bytes())?
            .map(|v| decode("acknowledgement", &v))
            .transpose()
    }

    /// The cases of one alarm (one per rule that acted on it).
    pub fn cases_of(&self, alarm_id: &str) -> Result<Vec<Case>> {
        self.cases
            .scan_prefix(format!("{alarm_id}#").as_bytes())?
            .into_iter()
            .map(|(_, v)| decode("case", &v))
            .collect()
    }

    /// Visits every case, in key order.
    pub fn each_case(&self, mut visit: impl FnMut(Case)) -> Result<()> {
        all_entries(&self.cases, |_, value| {
            visit(decode("case", &value)?);
            Ok(ControlFlow::Continue(()))
        })
    }

    fn index_alarm(&self, alarm: &Alarm) -> Result<()> {
        let key = time_id(alarm.time_ms, &alarm.id);
        self.alarms_by_time.insert(&key, &[])?;
        let node = lp(&alarm.node);
        self.alarms_by_node.insert(&under(&node, &key), &[])?;

        let _guard = self.lock();
        let cond = condition(alarm);
        let this = Latest::of(alarm);
        let latest: Option<Latest> = self
            .conditions
            .get(&cond)?
            .map(|v| decode("alarm condition", &v))
            .transpose()?;
        match &latest {
            // An older event: history only, the condition stays as it is.
            Some(l) if l.is_after(&this) => return Ok(()),
            Some(l) if l.raised && *l != this => {
                let was = time_id(l.time_ms, &l.id);
                self.active.remove(&under(&node, &was))?;
            }
            _ => {}
        }
        // Active entry before the condition: a crash in between leaves the
        // condition behind, and the sender's retry finishes the update.
        if this.raised {
            self.active.insert(&under(&node, &key), &[])?;
        }
        if latest.as_ref() != Some(&this) {
            self.conditions.insert(&cond, &wire::encode_value(&this))?;
        }
        Ok(())
    }

    /// Stores a domain report once per id, durably; false if already there.
    /// A later consolidation of the same window (`consolidated_ms`: the
    /// station sent it again with late reports merged in) replaces the
    /// stored one and counts as new; an earlier or equal one is a repeat.
    pub fn record_report(&self, report: &DomainReport) -> Result<bool> {
        let key = time_id(report.window_start_ms, &report.id);
        let _guard = self.lock();
        let stored: Option<DomainReport> = self
            .reports
            .get(&key)?
            .map(|v| decode("report", &v))
            .transpose()?;
        let new = match &stored {
            Some(s) if s.consolidated_ms >= report.consolidated_ms => {
                // Index what we hold, not what the repeat claims.
                self.index_report(&key, s)?;
                false
            }
            _ => {
                self.reports.insert(&key, &wire::encode_value(report))?;
                self.index_report(&key, report)?;
                true
            }
        };
        self.db.flush()?;
        Ok(new)
    }

    fn index_report(&self, key: &[u8], report: &DomainReport) -> Result<()> {
        self.reports_by_domain
            .insert(&under(&lp(&report.domain), key), &[])?;
        for node in report_nodes(report) {
            self.reports_by_node.insert(&under(&lp(node), key), &[])?;
        }
        Ok(())
    }

    fn alarm(&self, id: &[u8]) -> Result<Option<Alarm>> {
        self.alarms
            .get(id)?
            .map(|v| decode("alarm", &v))
            .transpose()
    }

    /// Whether `alarm` is the latest event of its condition and a raise.
    fn is_active(&self, alarm: &Alarm) -> Result<bool> {
        Ok(match self.conditions.get(&condition(alarm))? {
            Some(v) => {
                let l: Latest = decode("alarm condition", &v)?;
                l.raised && l.id == alarm.id
            }
            None => false,
        })
    }

    /// Visits the alarms of `index` with a time in `[since_ms, until_ms)`,
    /// newest first, until `visit` breaks.
    pub fn alarms_newest_first(
        &self,
        index: AlarmIndex<'_>,
        since_ms: u64,
        until_ms: u64,
        mut visit: impl FnMut(Alarm) -> ControlFlow<()>,
    ) -> Result<()> {
        let (tree, prefix) = match index {
            AlarmIndex::Time => (&self.alarms_by_time, Vec::new()),
            AlarmIndex::Node(node) => (&self.alarms_by_node, lp(node)),
            AlarmIndex::Active(Some(node)) => (&self.active, lp(node)),
            AlarmIndex::Active(None) => return self.all_active(since_ms, until_ms, visit),
        };
        let active = matches!(index, AlarmIndex::Active(_));
        newest_first(tree, &prefix, since_ms, until_ms, |rest, _| {
            let Some((_, id)) = split_time_id(rest) else {
                return Ok(ControlFlow::Continue(()));
            };
            match self.alarm(id)? {
                // The active index is checked against the condition, so a
                // crash between their writes never shows a cleared alarm.
                Some(a) if !active || self.is_active(&a)? => Ok(visit(a)),
                _ => Ok(ControlFlow::Continue(())),
            }
        })
    }

    /// The active index is ordered by node first; it is small (one entry
    /// per condition in force), so every node's part is read and sorted.
    fn all_active(
        &self,
        since_ms: u64,
        until_ms: u64,
        mut visit: impl FnMut(Alarm) -> ControlFlow<()>,
    ) -> Result<()> {
        let mut found = Vec::new();
        all_entries(&self.active, |key, _| {
            let id = key
                .get(..4)
                .and_then(|l| l.try_into().ok())
                .map(|l| u32::from_be_bytes(l) as usize + 4)
                .and_then(|start| key.get(start..))
                .and_then(split_time_id);
            if let Some((time, id)) = id
                && (since_ms..until_ms).contains(&time)
                && let Some(a) = self.alarm(id)?
                && self.is_active(&a)?
            {
                found.push(a);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        found.sort_by(|a, b| (b.time_ms, &b.id).cmp(&(a.time_ms, &a.id)));
        for a in found {
            if visit(a).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Visits the domain reports of `index` whose window starts in
    /// `[since_ms, until_ms)`, newest first, until `visit` breaks.
    pub fn reports_newest_first(
        &self,
        index: ReportIndex<'_>,
        since_ms: u64,
        until_ms: u64,
        mut visit: impl FnMut(DomainReport) -> ControlFlow<()>,
    ) -> Result<()> {
        let (tree, prefix) = match index {
            ReportIndex::Time => {
                return newest_first(&self.reports, &[], since_ms, until_ms, |_, value| {
                    Ok(visit(decode("report", &value)?))
                });
            }
            ReportIndex::Domain(domain) => (&self.reports_by_domain, lp(domain)),
            ReportIndex::Node(node) => (&self.reports_by_node, lp(node)),
        };
        newest_first(tree, &prefix, since_ms, until_ms, |rest, _| {
            match self.reports.get(rest)? {
                Some(value) => Ok(visit(decode("report", &value)?)),
                None => Ok(ControlFlow::Continue(())),
            }
        })
    }

    /// Removes alarms and reports from before `cutoff_ms`, except the
    /// alarms still active (the latest event of their condition is a raise).
    pub fn prune(&self, cutoff_ms: u64) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        all_entries(&self.alarms_by_time, |key, _| {
            let Some((time, id)) = split_time_id(&key) else {
                return Ok(ControlFlow::Continue(()));
            };
            if time >= cutoff_ms {
                return Ok(ControlFlow::Break(()));
            }
            let _guard = self.lock();
            match self.alarm(id)? {
                Some(a) if self.is_active(&a)? => return Ok(ControlFlow::Continue(())),
                Some(a) => {
                    // Node entry, then the primary copy, then the time
                    // entry that leads here: a crash in between leaves
                    // something the next prune still finds.
                    self.alarms_by_node.remove(&under(&lp(&a.node), &key))?;
                    // Its knowledge-base cases go with it.
                    for (case, _) in self.cases.scan_prefix(format!("{}#", a.id).as_bytes())? {
                        self.cases.remove(&case)?;
                    }
                    self.acks.remove(a.id.as_bytes())?;
                    self.alarms.remove(id)?;
                    pruned.alarms += 1;
                }
                None => {}
            }
            self.alarms_by_time.remove(&key)?;
            Ok(ControlFlow::Continue(()))
        })?;
        all_entries(&self.reports, |key, value| {
            let Some((time, _)) = split_time_id(&key) else {
                return Ok(ControlFlow::Continue(()));
            };
            if time >= cutoff_ms {
                return Ok(ControlFlow::Break(()));
            }
            let report: DomainReport = decode("report", &value)?;
            self.reports_by_domain
                .remove(&under(&lp(&report.domain), &key))?;
            for node in report_nodes(&report) {
                self.reports_by_node.remove(&under(&lp(node), &key))?;
            }
            self.reports.remove(&key)?;
            pruned.reports += 1;
            Ok(ControlFlow::Continue(()))
        })?;
        self.db.flush()?;
        Ok(pruned)
    }
}

/// The nodes with a row in `report`, each once.
fn report_nodes(report: &DomainReport) -> BTreeSet<&str> {
    report.nodes.iter().map(|n| n.node.as_str()).collect()
}

/// Prunes BIG of everything older than `retention` now and then, until
/// `shutdown`. The prune runs on a blocking thread: it reads and deletes
/// many entries and ends with an fsync.
pub async fn prune_periodically(
    big: Big,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = (retention / 10).clamp(Duration::from_secs(1), PRUNE_PERIOD_MAX);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let cutoff_ms = now_ms().saturating_sub(retention.as_millis() as u64);
        let big = big.clone();
        match tokio::task::spawn_blocking(move || big.prune(cutoff_ms)).await {
            Ok(Ok(p)) if p != Pruned::default() => {
                tracing::info!(alarms = p.alarms, reports = p.reports, "BIG pruned")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("BIG prune failed: {e}"),
            Err(e) => tracing::error!("BIG prune stopped: {e}"),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use agad_protocol::message::{Comparison, Severity, Summary};
    use agad_protocol::wire::NodeSummary;

    pub(crate) fn alarm(node: &str, key: &str, n: u64, raised: bool, time_ms: u64) -> Alarm {
        Alarm {
            id: format!("{node}/m/{n}"),
            node: node.into(),
            module: "m".into(),
            provenance: Default::default(),
            area: agad_protocol::Area::Fault,
            key: key.into(),
            metric: "x".into(),
            subject: String::new(),
            severity: Severity::Major,
            raised,
            value: 1.0,
            threshold: 0.0,
            comparison: Comparison::Above,
            message: String::new(),
            time_ms,
        }
    }

    pub(crate) fn report(domain: &str, start: u64, nodes: &[&str]) -> DomainReport {
        let row = |node: &str, metric: &str| NodeSummary {
            node: node.into(),
            module: "m".into(),
            provenance: Default::default(),
            summary: Summary {
                metric: metric.into(),
                subject: String::new(),
                unit: String::new(),
                min: 0.0,
                max: 1.0,
                mean: 0.5,
                last: 1.0,
                count: 2,
                coverage: 1.0,
                window_start_ms: start,
                window_end_ms: start + 10,
            },
        };
        DomainReport {
            id: format!("{domain}/{start}"),
            domain: domain.into(),
            window_start_ms: start,
            window_end_ms: start + 10,
            consolidated_ms: start + 20,
            nodes: nodes
                .iter()
                .flat_map(|n| [row(n, "x"), row(n, "y")])
                .collect(),
            domain_summaries: vec![row(domain, "x")],
        }
    }

    fn ids(big: &Big, index: AlarmIndex<'_>) -> Vec<String> {
        let mut out = Vec::new();
        big.alarms_newest_first(index, 0, u64::MAX, |a| {
            out.push(a.id);
            ControlFlow::Continue(())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_later_consolidation_of_a_window_replaces_the_stored_one() {
        let big = Big::open(&Database::temporary().unwrap()).unwrap();
        let first = report("d", 100, &["n1"]);
        assert!(big.record_report(&first).unwrap());
        // Sent again with a late node merged in.
        let mut later = report("d", 100, &["n1", "n2"]);
        later.consolidated_ms = first.consolidated_ms + 5;
        assert!(big.record_report(&later).unwrap());
        // A repeat of the first (still in some outbox) changes nothing.
        assert!(!big.record_report(&first).unwrap());
        assert_eq!(big.reports.len(), 1);
        let mut seen = Vec::new();
        big.reports_newest_first(ReportIndex::Node("n2"), 0, u64::MAX, |r| {
            seen.push(r.nodes.len());
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![4],
            "the window as consolidated last, found by its new node"
        );
    }

    #[test]
    fn each_alarm_and_report_is_kept_once() {
        let big = Big::open(&Database::temporary().unwrap()).unwrap();
        let a = alarm("n1", "k", 1, true, 5);
        assert!(big.record_alarm(&a).unwrap());
        assert!(!big.record_alarm(&a).unwrap());
        assert_eq!(ids(&big, AlarmIndex::Time), vec!["n1/m/1"]);
        assert_eq!(ids(&big, AlarmIndex::Node("n1")), vec!["n1/m/1"]);
        assert!(big.record_report(&report("d", 100, &["n1"])).unwrap());
        assert!(!big.record_report(&report("d", 100, &["n1"])).unwrap());
        assert_eq!(big.reports.len(), 1);
    }

    #[test]
    fn a_late_copy_of_an_old_raise_does_not_revive_a_cleared_condition() {
        let big = Big::open(&Database::temporary().unwrap()).unwrap();
        let raise = alarm("n1", "k", 1, true, 10);
        big.record_alarm(&raise).unwrap();
        assert_eq!(ids(&big, AlarmIndex::Active(None)), vec!["n1/m/1"]);
        big.record_alarm(&alarm("n1", "k", 2, false, 20)).unwrap();
        assert!(ids(&big, AlarmIndex::Active(None)).is_empty());
        // Pruned, then delivered again by a sender that never saw the ack.
        big.prune(15).unwrap();
        assert_eq!(ids(&big, AlarmIndex::Time), vec!["n1/m/2"]);
        big.record_alarm(&raise).unwrap();
        assert!(ids(&big, AlarmIndex::Active(Some("n1"))).is_empty());
        assert!(ids(&big, AlarmIndex::Active(None)).is_empty());
    }

    #[test]
    fn indexes_are_built_for_a_data_directory_that_predates_them() {
        let db = Database::temporary().unwrap();
        // What an older top manager left: the primary trees only.
        let a = alarm("n1", "k", 1, true, 5);
        db.tree("big-alarms")
            .unwrap()
            .insert(a.id.as_bytes(), &wire::encode_value(&a))
            .unwrap();
        let r = report("d", 100, &["n1", "n2"]);
        db.tree("big-reports")
            .unwrap()
            .insert(&time_id(100, &r.id), &wire::encode_value(&r))
            .unwrap();
        let big = Big::open(&db).unwrap();
        assert_eq!(ids(&big, AlarmIndex::Node("n1")), vec!["n1/m/1"]);
        assert_eq!(ids(&big, AlarmIndex::Active(Some("n1"))), vec!["n1/m/1"]);
        let mut found = Vec::new();
        big.reports_newest_first(ReportIndex::Node("n2"), 0, u64::MAX, |r| {
            found.push(r.id);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(found, vec!["d/100"]);
        assert_eq!(
            big.meta.get(INDEX_VERSION).unwrap(),
            Some(CURRENT_INDEX.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn the_prune_keeps_active_alarms_and_recent_history() {
        let big = Big::open(&Database::temporary().unwrap()).unwrap();
        big.record_alarm(&alarm("n1", "old-active", 1, true, 10))
            .unwrap();
        big.record_alarm(&alarm("n1", "cleared", 2, true, 11))
            .unwrap();
        big.record_alarm(&alarm("n1", "cleared", 3, false, 12))
            .unwrap();
        big.record_alarm(&alarm("n2", "recent", 1, false, 1000))
            .unwrap();
        for start in [0, 500, 1000] {
            big.record_report(&report("d", start, &["n1"])).unwrap();
        }
        let case = |alarm_id: &str| Case {
            alarm_id: alarm_id.into(),
            node: "n1".into(),
            key: "k".into(),
            rule: "r".into(),
            steps: vec![],
            results: vec![],
            state: agad_protocol::run::CaseState::Diagnosed,
            cleared_ms: None,
            generation: 2,
            revision: 1,
            opened_ms: 10,
            updated_ms: 10,
        };
        // A case of the active raise and one of the cleared one.
        assert!(big.record_case(&case("n1/m/1")).unwrap());
        assert!(big.record_case(&case("n1/m/2")).unwrap());
        assert!(!big.record_case(&case("n1/m/2")).unwrap(), "same revision");
        // What the station before a fail-over still writes loses, whatever
        // its revision.
        let stale = Case {
            generation: 1,
            revision: 7,
            ..case("n1/m/1")
        };
        assert!(!big.record_case(&stale).unwrap(), "an earlier activation's");
        let taken_over = Case {
            generation: 3,
            ..case("n1/m/1")
        };
        assert!(
            big.record_case(&taken_over).unwrap(),
            "a later activation's"
        );
        let pruned = big.prune(600).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                alarms: 2,
                reports: 2
            }
        );
        assert_eq!(ids(&big, AlarmIndex::Time), vec!["n2/m/1", "n1/m/1"]);
        assert_eq!(ids(&big, AlarmIndex::Node("n1")), vec!["n1/m/1"]);
        assert_eq!(big.alarms_by_node.len(), 2, "no index entry left behind");
        assert_eq!(big.reports_by_domain.len(), 1);
        assert_eq!(big.reports_by_node.len(), 1);
        assert_eq!(big.cases_of("n1/m/1").unwrap().len(), 1);
        assert!(
            big.cases_of("n1/m/2").unwrap().is_empty(),
            "pruned with its alarm"
        );
        assert_eq!(big.prune(600).unwrap(), Pruned::default());
    }
}
