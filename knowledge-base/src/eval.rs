//! Evaluation: which rules an alarm reaches (through an index by key, area,
//! metric, module or node, not a scan of every rule), which of them match,
//! and which act.
//!
//! Order: rules are ranked by `priority` (higher first), then by file name,
//! then by position in the file. Evaluation walks the candidates in rank
//! order; the first that matches acts and ends the evaluation, unless it
//! says `continue = true`, in which case later matching rules act too (as
//! in Alertmanager's routes).

use crate::model::{Due, KeyPattern, Rule, Schedule, Transition, area_name, severity_name};
use crate::parse::Parsed;
use crate::state::{Lru, State, pair};
use crate::time::{Weekday, format_ms};
use agad_protocol::Area;
use agad_protocol::duration::format_duration_ms;
use agad_protocol::message::Alarm;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

/// A checked rule set, indexed for evaluation. Immutable: evaluation state
/// lives in a [`State`] the caller owns.
#[derive(Debug, Clone)]
pub struct KnowledgeBase {
    /// In evaluation order (rank).
    rules: Vec<Rule>,
    groups: BTreeMap<String, Vec<String>>,
    schedules: Vec<Schedule>,
    index: Index,
    /// Each rule's [`Quick`] conditions, by rank.
    quick: Vec<Quick>,
    /// Largest `repeat.count` and `repeat.within` of any rule: what each
    /// series has to remember. 0 when no rule counts repetitions.
    max_repeat: usize,
    max_repeat_window_ms: u64,
}

/// Rule ranks by what an alarm must have for them to be candidates, by the
/// first of the rule's conditions in this order: key, nodes, metric,
/// module, area. An alarm reaches a rule through exactly one list (a rule with a
/// node set is in the list of each of its nodes, and an alarm has one
/// node), and each list is in rank order.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Rules with an exact key.
    exact: HashMap<String, Vec<u32>>,
    /// Rules with a key family (`fs.used:*`), by the key's text before its
    /// first colon.
    family: HashMap<String, Vec<u32>>,
    /// Rules without a key, by each node of their node set.
    node: HashMap<String, Vec<u32>>,
    /// Rules with neither, by metric.
    metric: HashMap<String, Vec<u32>>,
    /// Rules with none of the above, by the module that raises the alarm.
    module: HashMap<String, Vec<u32>>,
    /// Rules with none of the above but an area.
    area: [Vec<u32>; 5],
    /// Rules with no indexed condition: every alarm's candidates.
    any: Vec<u32>,
}

/// The conditions of a rule that fit in a few bytes, checked first from a
/// dense array: a pass over thousands of candidates stays in the CPU cache,
/// and a rule's whole [`crate::model::Match`] is read only when these hold.
#[derive(Debug, Clone, Copy)]
struct Quick {
    area: Option<Area>,
    min_severity: Option<agad_protocol::message::Severity>,
    hours: Option<crate::time::Hours>,
    /// Whether the rule counts repetitions.
    counts: bool,
}

impl Quick {
    fn of(rule: &Rule) -> Quick {
        Quick {
            area: rule.when.area,
            min_severity: rule.when.min_severity,
            hours: rule.when.hours,
            counts: rule.when.repeat.is_some(),
        }
    }

    fn holds(self, alarm: &Alarm, now_ms: u64) -> bool {
        self.area.is_none_or(|area| area == alarm.area)
            && self.min_severity.is_none_or(|min| alarm.severity >= min)
            && self.hours.is_none_or(|hours| hours.contains(now_ms))
    }
}

fn area_slot(area: Area) -> usize {
    match area {
        Area::Fault => 0,
        Area::Configuration => 1,
        Area::Accounting => 2,
        Area::Performance => 3,
        Area::Security => 4,
    }
}

fn family(key: &str) -> &str {
    key.split_once(':').map_or(key, |(f, _)| f)
}

/// A rule that acts on an alarm, and why it matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<'kb> {
    pub rule: &'kb Rule,
    /// Each condition of the rule and how the alarm met it.
    pub why: Vec<String>,
}

/// Everything `agad kb test` shows about one alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation<'kb> {
    /// The alarm that was evaluated, in one line.
    pub alarm: String,
    /// When it was evaluated.
    pub now_ms: u64,
    pub decisions: Vec<Decision<'kb>>,
    /// The candidates the index gave, in rank order.
    pub considered: Vec<Considered<'kb>>,
    /// Rules the index ruled out without looking (another key, area,
    /// metric, module or node).
    pub not_considered: usize,
    /// Why nothing was considered at all, if so.
    pub note: Option<String>,
}

/// One candidate rule and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Considered<'kb> {
    pub rule: &'kb Rule,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It acts (it is in [`Explanation::decisions`]).
    Matched,
    /// It would match, but an earlier rule matched and did not `continue`.
    Shadowed { by: String },
    /// The first of its conditions that did not hold.
    Failed {
        condition: &'static str,
        detail: String,
    },
}

impl KnowledgeBase {
    /// A set without rules, groups or schedules (what a deployment has
    /// before its first `agad kb apply`).
    pub fn empty() -> KnowledgeBase {
        KnowledgeBase::build(Parsed {
            rules: Vec::new(),
            groups: Default::default(),
            schedules: Vec::new(),
        })
    }

    pub(crate) fn build(parsed: Parsed) -> KnowledgeBase {
        let Parsed {
            mut rules,
            groups,
            schedules,
        } = parsed;
        // Stable: equal priorities keep file order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let mut index = Index::default();
        let mut max_repeat = 0;
        let mut max_repeat_window_ms = 0;
        for (rank, rule) in rules.iter().enumerate() {
            let rank = u32::try_from(rank).unwrap_or(u32::MAX);
            let m = &rule.when;
            let by = |map: &mut HashMap<String, Vec<u32>>, what: &str| {
                map.entry(what.to_owned()).or_default().push(rank)
            };
            // The most telling condition first: a key is one alarm of one
            // module, a node set a few nodes, an area a fifth of all alarms.
            match (&m.key, &m.nodes, &m.metric, &m.module, m.area) {
                (Some(KeyPattern::Exact(k)), ..) => by(&mut index.exact, k),
                (Some(KeyPattern::Prefix(p)), ..) => by(&mut index.family, family(p)),
                (None, Some(nodes), ..) => {
                    for node in &nodes.nodes {
                        by(&mut index.node, node);
                    }
                }
                (None, None, Some(metric), ..) => by(&mut index.metric, metric),
                (None, None, None, Some(module), _) => by(&mut index.module, module),
                (None, None, None, None, Some(area)) => index.area[area_slot(area)].push(rank),
                (None, None, None, None, None) => index.any.push(rank),
            }
            if let Some(r) = rule.when.repeat {
                max_repeat = max_repeat.max(r.count as usize);
                max_repeat_window_ms = max_repeat_window_ms.max(r.within_ms);
            }
        }
        KnowledgeBase {
            quick: rules.iter().map(Quick::of).collect(),
            rules,
            groups,
            schedules,
            index,
            max_repeat,
            max_repeat_window_ms,
        }
    }

    /// Rules in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Node groups by name, with their members.
    pub fn groups(&self) -> &BTreeMap<String, Vec<String>> {
        &self.groups
    }

    /// Scheduled starts and stops, in file order.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// The rules that act on `alarm` at `now_ms` (milliseconds since the
    /// Unix epoch, the evaluator's clock: every time condition uses it, not
    /// the alarm's own `time_ms`, which is the node's clock). Records the
    /// alarm in `state` for repetition counts, and the acting rules for
    /// `after`. Only raised alarms are matched; a clear returns nothing
    /// (confirming a fix is the dispatcher's work). Evaluate each alarm
    /// once: a redelivered alarm would be counted twice.
    pub fn evaluate(&self, state: &mut State, alarm: &Alarm, now_ms: u64) -> Vec<Decision<'_>> {
        self.run(state, alarm, now_ms, false).decisions
    }

    /// As [`KnowledgeBase::evaluate`] (with the same effect on `state`),
    /// also saying for every candidate rule why it did not act.
    pub fn explain(&self, state: &mut State, alarm: &Alarm, now_ms: u64) -> Explanation<'_> {
        self.run(state, alarm, now_ms, true)
    }

    /// The candidate ranks for `alarm`, in rank order: a merge of the
    /// (already sorted) index lists that can hold rules matching it.
    fn candidates(&self, alarm: &Alarm) -> std::borrow::Cow<'_, [u32]> {
        let index = &self.index;
        let mut lists: [&[u32]; 7] = [
            index.exact.get(&alarm.key).map_or(&[], Vec::as_slice),
            index
                .family
                .get(family(&alarm.key))
                .map_or(&[], Vec::as_slice),
            index.node.get(&alarm.node).map_or(&[], Vec::as_slice),
            index.metric.get(&alarm.metric).map_or(&[], Vec::as_slice),
            index.module.get(&alarm.module).map_or(&[], Vec::as_slice),
            &index.area[area_slot(alarm.area)],
            &index.any,
        ];
        // The non-empty lists first; one alone is the answer as it is.
        lists.sort_by_key(|l| l.is_empty());
        let lists = &lists[..lists.iter().take_while(|l| !l.is_empty()).count()];
        match lists {
            [] => return std::borrow::Cow::Borrowed(&[]),
            [one] => return std::borrow::Cow::Borrowed(one),
            _ => {}
        }
        let mut heads = [0usize; 7];
        let mut out = Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
        loop {
            let mut best: Option<(usize, u32)> = None;
            for (i, list) in lists.iter().enumerate() {
                if let Some(&rank) = list.get(heads[i])
                    && best.is_none_or(|(_, b)| rank < b)
                {
                    best = Some((i, rank));
                }
            }
            let Some((i, rank)) = best else { break };
            heads[i] += 1;
            out.push(rank);
        }
        std::borrow::Cow::Owned(out)
    }

    fn run(&self, state: &mut State, alarm: &Alarm, now_ms: u64, explain: bool) -> Explanation<'_> {
        let mut out = Explanation {
            // Only an explanation shows it: evaluation does not pay for it.
            alarm: if explain {
                describe(alarm)
            } else {
                String::new()
            },
            now_ms,
            decisions: Vec::new(),
            considered: Vec::new(),
            not_considered: 0,
            note: None,
        };
        if !alarm.raised {
            out.not_considered = self.rules.len();
            out.note = Some("a clear: rules act on raised alarms".to_owned());
            return out;
        }
        let State { series, hits } = state;
        let candidates = self.candidates(alarm);
        out.not_considered = self.rules.len() - candidates.len();
        // Only series some candidate counts are kept: candidates depend on
        // the alarm's key, area, metric, module and node, which are the same
        // for every alarm of a series (one node's key, raised by one module
        // about one metric), so the alarms of a series that a `repeat` rule
        // could match are all counted, and keys no rule counts cost no
        // memory.
        let counted = candidates
            .iter()
            .any(|rank| self.quick[*rank as usize].counts);
        let times = if counted {
            let times = series.touch(pair(&alarm.node, &alarm.key));
            times.push_back(now_ms);
            while times.len() > self.max_repeat
                || times
                    .front()
                    .is_some_and(|t| now_ms.saturating_sub(*t) >= self.max_repeat_window_ms)
            {
                times.pop_front();
            }
            Some(&*times)
        } else {
            None
        };
        let mut stopped_by: Option<&str> = None;
        for &rank in candidates.iter() {
            if !explain && !self.quick[rank as usize].holds(alarm, now_ms) {
                continue;
            }
            let rule = &self.rules[rank as usize];
            let verdict = match check(rule, alarm, now_ms, times, hits) {
                Err(_) if !explain => continue,
                Err(failed) => {
                    let (condition, detail) = detail(rule, alarm, now_ms, failed);
                    Verdict::Failed { condition, detail }
                }
                Ok(()) => match stopped_by {
                    Some(by) => Verdict::Shadowed { by: by.to_owned() },
                    None => {
                        out.decisions.push(Decision {
                            rule,
                            why: why(rule, alarm, now_ms, times),
                        });
                        *hits.touch(pair(&rule.name, &alarm.node)) = now_ms;
                        if !rule.continues {
                            stopped_by = Some(&rule.name);
                        }
                        Verdict::Matched
                    }
                },
            };
            if explain {
                out.considered.push(Considered { rule, verdict });
            } else if stopped_by.is_some() {
                break;
            }
        }
        out
    }

    /// Scheduled starts and stops due in `(after_ms, up_to_ms]`: the caller
    /// remembers up to when it has acted and asks for what came due since,
    /// so each is returned once however often it asks. In time order; at
    /// the same instant stops come before starts.
    pub fn due(&self, after_ms: u64, up_to_ms: u64) -> Vec<Due<'_>> {
        let mut due = Vec::new();
        for schedule in &self.schedules {
            for (at, transition) in [
                (schedule.start_ms, Transition::Start),
                (schedule.stop_ms, Transition::Stop),
            ] {
                if let Some(at_ms) = at
                    && after_ms < at_ms
                    && at_ms <= up_to_ms
                {
                    due.push(Due {
                        schedule,
                        transition,
                        at_ms,
                    });
                }
            }
        }
        due.sort_by_key(|d| (d.at_ms, d.transition == Transition::Start));
        due
    }

    /// Schedules whose module should be running at `now_ms` (started, not
    /// yet stopped): what a manager that just started (or took over) makes
    /// true before following [`KnowledgeBase::due`].
    pub fn active_schedules(&self, now_ms: u64) -> Vec<&Schedule> {
        self.schedules
            .iter()
            .filter(|s| s.active_at(now_ms))
            .collect()
    }
}

/// The condition that failed, with what the explanation needs and nothing
/// more: evaluation checks thousands of rules that fail and must not
/// format a sentence for each.
#[derive(Debug, Clone, Copy)]
enum Failed {
    Area,
    Key,
    Metric,
    Module,
    Severity,
    Nodes,
    Hours,
    Days,
    Repeat { fired: usize },
    After { last: Option<u64> },
}

/// Each condition in the order [`crate::Match`] lists them; the first that
/// fails.
fn check(
    rule: &Rule,
    alarm: &Alarm,
    now_ms: u64,
    times: Option<&VecDeque<u64>>,
    hits: &Lru<u64>,
) -> Result<(), Failed> {
    let m = &rule.when;
    if m.area.is_some_and(|area| area != alarm.area) {
        return Err(Failed::Area);
    }
    if m.key.as_ref().is_some_and(|key| !key.matches(&alarm.key)) {
        return Err(Failed::Key);
    }
    if m.metric
        .as_ref()
        .is_some_and(|metric| *metric != alarm.metric)
    {
        return Err(Failed::Metric);
    }
    if m.module
        .as_ref()
        .is_some_and(|module| *module != alarm.module)
    {
        return Err(Failed::Module);
    }
    if m.min_severity.is_some_and(|min| alarm.severity < min) {
        return Err(Failed::Severity);
    }
    if m.nodes
        .as_ref()
        .is_some_and(|nodes| !nodes.nodes.contains(&alarm.node))
    {
        return Err(Failed::Nodes);
    }
    if m.hours.is_some_and(|hours| !hours.contains(now_ms)) {
        return Err(Failed::Hours);
    }
    if m.days
        .is_some_and(|days| !days.contains(Weekday::of(now_ms)))
    {
        return Err(Failed::Days);
    }
    if let Some(repeat) = m.repeat {
        let fired = fired_within(times, now_ms, repeat.within_ms);
        if fired < repeat.count as usize {
            return Err(Failed::Repeat { fired });
        }
    }
    if let Some(after) = &m.after {
        let last = hits.get(&pair(&after.rule, &alarm.node)).copied();
        if last.is_none_or(|t| now_ms.saturating_sub(t) >= after.within_ms) {
            return Err(Failed::After { last });
        }
    }
    Ok(())
}

/// The explanation of `failed`: the condition's name and what the alarm
/// had instead.
fn detail(rule: &Rule, alarm: &Alarm, now_ms: u64, failed: Failed) -> (&'static str, String) {
    let m = &rule.when;
    let text = |value: Option<String>| value.unwrap_or_default();
    match failed {
        Failed::Area => (
            "area",
            text(
                m.area
                    .map(|a| format!("`{}` is not `{}`", area_name(alarm.area), area_name(a))),
            ),
        ),
        Failed::Key => (
            "key",
            text(
                m.key
                    .as_ref()
                    .map(|k| format!("`{}` is not `{k}`", alarm.key)),
            ),
        ),
        Failed::Metric => (
            "metric",
            text(
                m.metric
                    .as_ref()
                    .map(|x| format!("`{}` is not `{x}`", alarm.metric)),
            ),
        ),
        Failed::Module => (
            "module",
            text(
                m.module
                    .as_ref()
                    .map(|x| format!("`{}` is not `{x}`", alarm.module)),
            ),
        ),
        Failed::Severity => (
            "severity",
            text(m.min_severity.map(|min| {
                format!(
                    "`{}` is below `{}`",
                    severity_name(alarm.severity),
                    severity_name(min)
                )
            })),
        ),
        Failed::Nodes => (
            "nodes",
            text(
                m.nodes
                    .as_ref()
                    .map(|n| format!("`{}` is not in {}", alarm.node, n.label)),
            ),
        ),
        Failed::Hours => (
            "hours",
            text(
                m.hours
                    .map(|h| format!("{} UTC is outside {h}", clock(now_ms))),
            ),
        ),
        Failed::Days => (
            "days",
            text(
                m.days
                    .map(|d| format!("{} is not one of {d}", Weekday::of(now_ms).name())),
            ),
        ),
        Failed::Repeat { fired } => (
            "repeat",
            text(m.repeat.map(|r| {
                format!(
                    "fired {fired} time(s) within {} on `{}`; needs {}",
                    format_duration_ms(r.within_ms),
                    alarm.node,
                    r.count
                )
            })),
        ),
        Failed::After { last } => (
            "after",
            text(m.after.as_ref().map(|a| {
                let when = last.map_or(String::new(), |t| format!(" (last at {})", format_ms(t)));
                format!(
                    "rule `{}` has not acted on `{}` within {}{when}",
                    a.rule,
                    alarm.node,
                    format_duration_ms(a.within_ms)
                )
            })),
        ),
    }
}

/// Alarms of the series less than `within_ms` old at `now_ms`.
fn fired_within(times: Option<&VecDeque<u64>>, now_ms: u64, within_ms: u64) -> usize {
    times.map_or(0, |times| {
        times
            .iter()
            .rev()
            .take_while(|t| now_ms.saturating_sub(**t) < within_ms)
            .count()
    })
}

/// How `alarm` met each of `rule`'s conditions (it matched).
fn why(rule: &Rule, alarm: &Alarm, now_ms: u64, times: Option<&VecDeque<u64>>) -> Vec<String> {
    let m = &rule.when;
    let mut why = Vec::new();
    if let Some(area) = m.area {
        why.push(format!("area is `{}`", area_name(area)));
    }
    if let Some(key) = &m.key {
        why.push(format!("key `{}` is `{key}`", alarm.key));
    }
    if let Some(metric) = &m.metric {
        why.push(format!("metric is `{metric}`"));
    }
    if let Some(module) = &m.module {
        why.push(format!("module is `{module}`"));
    }
    if let Some(min) = m.min_severity {
        why.push(format!(
            "severity `{}` is at least `{}`",
            severity_name(alarm.severity),
            severity_name(min)
        ));
    }
    if let Some(nodes) = &m.nodes {
        why.push(format!("node `{}` is in {}", alarm.node, nodes.label));
    }
    if let Some(hours) = m.hours {
        why.push(format!("{} UTC is within {hours}", clock(now_ms)));
    }
    if let Some(days) = m.days {
        why.push(format!("{} is one of {days}", Weekday::of(now_ms).name()));
    }
    if let Some(repeat) = m.repeat {
        why.push(format!(
            "fired {} time(s) within {} (needs {})",
            fired_within(times, now_ms, repeat.within_ms),
            format_duration_ms(repeat.within_ms),
            repeat.count
        ));
    }
    if let Some(after) = &m.after {
        why.push(format!(
            "rule `{}` acted on `{}` within {}",
            after.rule,
            alarm.node,
            format_duration_ms(after.within_ms)
        ));
    }
    if why.is_empty() {
        why.push("the rule has no condition: every raised alarm matches".to_owned());
    }
    why
}

fn clock(now_ms: u64) -> String {
    let minute = now_ms % 86_400_000 / 60_000;
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn describe(alarm: &Alarm) -> String {
    format!(
        "{} {} on `{}`: key `{}`, metric `{}`, subject `{}`, value {}, module `{}`, area `{}`",
        severity_name(alarm.severity),
        if alarm.raised { "raise" } else { "clear" },
        alarm.node,
        alarm.key,
        alarm.metric,
        alarm.subject,
        alarm.value,
        alarm.module,
        area_name(alarm.area)
    )
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "alarm: {}", self.alarm)?;
        writeln!(f, "at:    {}", format_ms(self.now_ms))?;
        if let Some(note) = &self.note {
            writeln!(f, "{note}")?;
        }
        match self.decisions.as_slice() {
            [] => writeln!(f, "no rule matches")?,
            decisions => {
                for d in decisions {
                    writeln!(
                        f,
                        "MATCH {} ({}): {}",
                        d.rule.name,
                        d.rule.origin,
                        crate::action_summary(&d.rule.action)
                    )?;
                    for reason in &d.why {
                        writeln!(f, "  - {reason}")?;
                    }
                }
            }
        }
        writeln!(
            f,
            "considered {} rule(s); {} other(s) name another key, area, metric, module or node",
            self.considered.len(),
            self.not_considered
        )?;
        for c in &self.considered {
            match &c.verdict {
                Verdict::Matched => writeln!(f, "  {} ({}): matched", c.rule.name, c.rule.origin)?,
                Verdict::Shadowed { by } => writeln!(
                    f,
                    "  {} ({}): would match, but `{by}` matched first",
                    c.rule.name, c.rule.origin
                )?,
                Verdict::Failed { condition, detail } => writeln!(
                    f,
                    "  {} ({}): {condition}: {detail}",
                    c.rule.name, c.rule.origin
                )?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{alarm, at, kb};
    use crate::model::Action;
    use agad_protocol::message::Severity;

    const MIN: u64 = 60_000;

    fn names<'a>(decisions: &[Decision<'a>]) -> Vec<&'a str> {
        decisions.iter().map(|d| d.rule.name.as_str()).collect()
    }

    /// The condition that failed for `rule` in `e`, or "matched"/"shadowed".
    fn verdict(e: &Explanation<'_>, rule: &str) -> String {
        let c = e
            .considered
            .iter()
            .find(|c| c.rule.name == rule)
            .unwrap_or_else(|| panic!("`{rule}` was not considered:\n{e}"));
        match &c.verdict {
            Verdict::Matched => "matched".into(),
            Verdict::Shadowed { by } => format!("shadowed by {by}"),
            Verdict::Failed { condition, detail } => format!("{condition}: {detail}"),
        }
    }

    fn one(matcher: &str) -> KnowledgeBase {
        kb(&format!(
            "[[group]]\nname = \"web\"\nnodes = [\"web-1\", \"web-2\"]\n\
             [[rule]]\nname = \"r\"\n[rule.match]\n{matcher}\n[rule.diagnose]\nspecialist = \"top-cpu\"\n"
        ))
    }

    /// Whether rule `r` of `one(matcher)` acts on `alarm` at `now`; else
    /// the condition that failed.
    fn try_match(matcher: &str, alarm: &Alarm, now: u64) -> String {
        let kb = one(matcher);
        let e = kb.explain(&mut State::default(), alarm, now);
        if e.considered.is_empty() {
            return "not considered".into();
        }
        verdict(&e, "r")
    }

    #[test]
    fn each_matcher() {
        let a = alarm();
        let noon = at("2026-11-27T12:00:00Z"); // a Friday
        for (matcher, expected) in [
            ("", "matched"),
            ("area = \"performance\"", "matched"),
            ("area = \"fault\"", "not considered"),
            ("key = \"cpu.total\"", "matched"),
            ("key = \"load.per-core\"", "not considered"),
            (
                "key = \"cpu.total\"\narea = \"fault\"",
                "area: `performance` is not `fault`",
            ),
            ("metric = \"cpu.total-percent\"", "matched"),
            // Indexed by metric: another metric's rules are not looked at.
            ("metric = \"fs.used-percent\"", "not considered"),
            (
                "key = \"cpu.total\"\nmetric = \"fs.used-percent\"",
                "metric: `cpu.total-percent` is not `fs.used-percent`",
            ),
            ("module = \"cpu-mem\"", "matched"),
            ("module = \"disk-space\"", "not considered"),
            (
                "key = \"cpu.total\"\nmodule = \"disk-space\"",
                "module: `cpu-mem` is not `disk-space`",
            ),
            ("severity = \"major\"", "matched"),
            ("severity = \"minor\"", "matched"),
            (
                "severity = \"critical\"",
                "severity: `major` is below `critical`",
            ),
            ("group = \"web\"", "matched"),
            ("nodes = [\"db-1\"]", "not considered"),
            (
                "key = \"cpu.total\"\nnodes = [\"db-1\"]",
                "nodes: `web-1` is not in nodes db-1",
            ),
            ("nodes = [\"db-1\"]\ngroup = \"web\"", "matched"),
            (
                "area = \"fault\"\ngroup = \"web\"",
                "area: `performance` is not `fault`",
            ),
            ("hours = \"08:00-18:00\"", "matched"),
            (
                "hours = \"13:00-11:00\"",
                "hours: 12:00 UTC is outside 13:00-11:00",
            ),
            ("days = [\"fri\"]", "matched"),
            (
                "days = [\"sat\", \"sun\"]",
                "days: fri is not one of sat,sun",
            ),
        ] {
            assert_eq!(try_match(matcher, &a, noon), expected, "{matcher}");
        }
        // Key families.
        let mut disk = alarm();
        disk.key = "fs.used:/var".into();
        assert_eq!(try_match("key = \"fs.used:*\"", &disk, noon), "matched");
        assert_eq!(try_match("key = \"fs.used:/var\"", &disk, noon), "matched");
        assert_eq!(
            try_match("key = \"fs.used:/home\"", &disk, noon),
            "not considered"
        );
        disk.key = "fs.usedx".into();
        assert_eq!(
            try_match("key = \"fs.used:*\"", &disk, noon),
            "not considered"
        );
        // Severity order: every level at or above the minimum.
        let kb = one("severity = \"minor\"");
        for (severity, acts) in [
            (Severity::Info, false),
            (Severity::Warning, false),
            (Severity::Minor, true),
            (Severity::Major, true),
            (Severity::Critical, true),
        ] {
            let a = Alarm {
                severity,
                ..alarm()
            };
            assert_eq!(
                !kb.evaluate(&mut State::default(), &a, noon).is_empty(),
                acts,
                "{severity:?}"
            );
        }
    }

    #[test]
    fn clears_never_match() {
        let kb = one("");
        let clear = Alarm {
            raised: false,
            ..alarm()
        };
        let e = kb.explain(&mut State::default(), &clear, 0);
        assert!(e.decisions.is_empty());
        assert_eq!(
            e.note.as_deref(),
            Some("a clear: rules act on raised alarms")
        );
    }

    #[test]
    fn time_of_day_and_days_follow_the_test_clock_in_utc() {
        let kb = one("hours = \"22:00-06:00\"\ndays = [\"sat\"]");
        let fires = |t: &str| {
            !kb.evaluate(&mut State::default(), &alarm(), at(t))
                .is_empty()
        };
        // 2026-11-28 is a Saturday.
        assert!(!fires("2026-11-28T21:59:59Z"));
        assert!(fires("2026-11-28T22:00:00Z"));
        assert!(fires("2026-11-28T23:59:59Z"));
        // After midnight it is Sunday: the day condition is the day of the moment.
        assert!(!fires("2026-11-29T00:00:00Z"));
        assert!(fires("2026-11-28T05:59:59Z"));
        assert!(!fires("2026-11-28T06:00:00Z"));
        assert!(!fires("2026-11-27T23:00:00Z"));
    }

    #[test]
    fn repetition_fires_at_the_nth_alarm_within_the_window() {
        let kb = one("repeat = { count = 3, within = \"10m\" }");
        let mut state = State::default();
        let t0 = at("2026-11-27T12:00:00Z");
        let mut fire = |node: &str, key: &str, t: u64| {
            let a = Alarm {
                node: node.into(),
                key: key.into(),
                ..alarm()
            };
            !kb.evaluate(&mut state, &a, t).is_empty()
        };
        assert!(!fire("web-1", "cpu.total", t0));
        assert!(!fire("web-1", "cpu.total", t0 + 4 * MIN));
        // Another node and another key count apart.
        assert!(!fire("web-2", "cpu.total", t0 + 5 * MIN));
        assert!(!fire("web-1", "load.per-core", t0 + 5 * MIN));
        // The third within 10 minutes, not the second.
        assert!(fire("web-1", "cpu.total", t0 + 9 * MIN));
        // t0 is exactly 10 minutes old: out of the window; t0+4, t0+9, now.
        assert!(fire("web-1", "cpu.total", t0 + 10 * MIN));
        // Much later: only the ones within the window count again.
        assert!(!fire("web-1", "cpu.total", t0 + 30 * MIN));
        assert!(!fire("web-1", "cpu.total", t0 + 39 * MIN + 59_999));
        assert!(fire("web-1", "cpu.total", t0 + 40 * MIN - 1));
        // Older alarms fall out: 30m and 40m-1ms are 10m+ old at 50m.
        assert!(!fire("web-1", "cpu.total", t0 + 50 * MIN));
    }

    #[test]
    fn repetition_memory_is_bounded_and_says_what_failed() {
        let kb = one("repeat = { count = 2, within = \"1h\" }");
        let mut state = State::with_capacity(2);
        let t = at("2026-11-27T12:00:00Z");
        let on = |node: &str| Alarm {
            node: node.into(),
            ..alarm()
        };
        assert!(kb.evaluate(&mut state, &on("n1"), t).is_empty());
        assert!(kb.evaluate(&mut state, &on("n2"), t).is_empty());
        // A third series evicts the oldest (n1), whose count starts over.
        assert!(kb.evaluate(&mut state, &on("n3"), t).is_empty());
        assert_eq!(state.series_len(), 2);
        assert_eq!(state.evicted(), 1);
        let e = kb.explain(&mut state, &on("n1"), t + 1);
        assert_eq!(
            verdict(&e, "r"),
            "repeat: fired 1 time(s) within 1h on `n1`; needs 2"
        );
        // n3 was kept: its second alarm fires.
        let d = kb.evaluate(&mut state, &on("n3"), t + 2);
        assert_eq!(d[0].why, ["fired 2 time(s) within 1h (needs 2)"]);
        // Keys no `repeat` rule can match are not tracked.
        let kb = one("key = \"load.per-core\"\nrepeat = { count = 2, within = \"1h\" }");
        let mut state = State::default();
        kb.evaluate(&mut state, &alarm(), t);
        assert_eq!(state.series_len(), 0);
        let load = Alarm {
            key: "load.per-core".into(),
            ..alarm()
        };
        kb.evaluate(&mut state, &load, t);
        assert_eq!(state.series_len(), 1);
    }

    const CHAIN: &str = "[rule.diagnose]\nspecialist = \"top-cpu\"\n";

    #[test]
    fn first_match_by_priority_then_order_and_continue() {
        let kb = kb(&format!(
            "[[rule]]\nname = \"late\"\n[rule.match]\n{CHAIN}\
             [[rule]]\nname = \"watch\"\ncontinue = true\npriority = 5\n[rule.match]\nkey = \"cpu.total\"\n\
             [rule.start]\nmodule = \"cpu-mem\"\n\
             [[rule]]\nname = \"cpu\"\n[rule.match]\nkey = \"cpu.total\"\n{CHAIN}\
             [[rule]]\nname = \"critical-only\"\npriority = 9\n[rule.match]\nseverity = \"critical\"\n{CHAIN}"
        ));
        let order: Vec<&str> = kb.rules().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(order, ["critical-only", "watch", "late", "cpu"]);
        let mut state = State::default();
        let e = kb.explain(&mut state, &alarm(), 0);
        assert_eq!(names(&e.decisions), ["watch", "late"]);
        assert_eq!(
            verdict(&e, "critical-only"),
            "severity: `major` is below `critical`"
        );
        assert_eq!(verdict(&e, "cpu"), "shadowed by late");
        assert_eq!(e.not_considered, 0);
        // `evaluate` stops at the first match that does not continue.
        assert_eq!(
            names(&kb.evaluate(&mut state, &alarm(), 0)),
            ["watch", "late"]
        );
        let critical = Alarm {
            severity: Severity::Critical,
            ..alarm()
        };
        assert_eq!(
            names(&kb.evaluate(&mut state, &critical, 0)),
            ["critical-only"]
        );
        let text = e.to_string();
        assert!(text.contains("MATCH watch (rules.toml:"), "{text}");
        assert!(text.contains("cpu (rules.toml:"), "{text}");
        assert!(
            text.contains("would match, but `late` matched first"),
            "{text}"
        );
    }

    #[test]
    fn after_another_rule_acted_on_the_same_node() {
        let kb = kb(&format!(
            "[[rule]]\nname = \"first\"\n[rule.match]\nkey = \"cpu.total\"\n{CHAIN}\
             [[rule]]\nname = \"then\"\n[rule.match]\nkey = \"load.per-core\"\nafter = {{ rule = \"first\", within = \"10m\" }}\n{CHAIN}"
        ));
        let mut state = State::default();
        let t0 = at("2026-11-27T12:00:00Z");
        let load = |node: &str| Alarm {
            key: "load.per-core".into(),
            node: node.into(),
            ..alarm()
        };
        let e = kb.explain(&mut state, &load("web-1"), t0);
        assert_eq!(
            verdict(&e, "then"),
            "after: rule `first` has not acted on `web-1` within 10m"
        );
        assert_eq!(names(&kb.evaluate(&mut state, &alarm(), t0)), ["first"]);
        assert!(kb.evaluate(&mut state, &load("web-2"), t0 + MIN).is_empty());
        assert_eq!(
            names(&kb.evaluate(&mut state, &load("web-1"), t0 + 10 * MIN - 1)),
            ["then"]
        );
        let e = kb.explain(&mut state, &load("web-1"), t0 + 10 * MIN);
        assert_eq!(
            verdict(&e, "then"),
            "after: rule `first` has not acted on `web-1` within 10m (last at 2026-11-27T12:00:00Z)"
        );
    }

    #[test]
    fn a_conditional_rule_starts_an_inspector_at_the_fifth_alarm() {
        let kb = kb(&format!(
            "[[rule]]\nname = \"watch-closer\"\ncontinue = true\n[rule.match]\nkey = \"cpu.total\"\n\
             repeat = {{ count = 5, within = \"1h\" }}\n\
             [rule.start]\nmodule = \"cpu-mem\"\nconfig = {{ period = \"5s\", threshold = \"{{threshold}}\" }}\nfor = \"30m\"\n\
             [[rule]]\nname = \"diagnose\"\n[rule.match]\nkey = \"cpu.total\"\n{CHAIN}"
        ));
        let mut state = State::default();
        let t0 = at("2026-11-27T12:00:00Z");
        for i in 0..4 {
            assert_eq!(
                names(&kb.evaluate(&mut state, &alarm(), t0 + i * MIN)),
                ["diagnose"],
                "alarm {i}"
            );
        }
        let d = kb.evaluate(&mut state, &alarm(), t0 + 4 * MIN);
        assert_eq!(names(&d), ["watch-closer", "diagnose"]);
        let Action::Start(start) = &d[0].rule.action else {
            panic!()
        };
        assert_eq!(start.module, "cpu-mem");
        assert_eq!(start.for_ms, Some(30 * MIN));
        let config: Vec<(String, String)> = start
            .config
            .iter()
            .map(|(k, t)| (k.clone(), t.render(&alarm(), &[]).unwrap()))
            .collect();
        assert_eq!(
            config,
            [
                ("period".to_owned(), "5s".to_owned()),
                ("threshold".to_owned(), "90".to_owned())
            ]
        );
    }

    #[test]
    fn a_decision_carries_the_arguments_for_the_dispatcher() {
        let kb = kb(
            "[[rule]]\nname = \"disk\"\n[rule.match]\nkey = \"fs.used:*\"\n\
             [rule.diagnose]\nspecialist = \"disk-usage\"\nargs = { path = \"{subject}\" }\n\
             [rule.fix]\nspecialist = \"service-restart\"\nif_fact = \"cause\"\nequals = \"log\"\nargs = { service = \"{fact.service}\" }\n\
             [rule.escalate]\nto = \"ops\"\n",
        );
        let disk = Alarm {
            key: "fs.used:/var".into(),
            subject: "/var".into(),
            ..alarm()
        };
        let d = kb.evaluate(&mut State::default(), &disk, 0);
        let Action::Chain(chain) = &d[0].rule.action else {
            panic!()
        };
        assert_eq!(
            chain.diagnose.render_args(&disk, &[]).unwrap(),
            [("path".to_owned(), "/var".to_owned())]
        );
        let fix = chain.fix.as_ref().unwrap();
        let facts = [
            ("cause".to_owned(), "log".to_owned()),
            ("service".to_owned(), "rsyslog".to_owned()),
        ];
        assert!(fix.condition.as_ref().unwrap().holds(&facts));
        assert_eq!(
            fix.step.render_args(&disk, &facts).unwrap(),
            [("service".to_owned(), "rsyslog".to_owned())]
        );
        assert_eq!(chain.escalate.as_deref(), Some("ops"));
    }

    #[test]
    fn the_index_skips_rules_for_other_keys() {
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!(
                "[[rule]]\nname = \"load-{i}\"\n[rule.match]\nkey = \"load.per-core\"\n{CHAIN}"
            ));
        }
        text.push_str(&format!(
            "[[rule]]\nname = \"disk\"\n[rule.match]\nkey = \"fs.used:*\"\n{CHAIN}"
        ));
        text.push_str(&format!("[[rule]]\nname = \"perf\"\n[rule.match]\narea = \"performance\"\nseverity = \"critical\"\n{CHAIN}"));
        text.push_str(&format!(
            "[[rule]]\nname = \"fault\"\n[rule.match]\narea = \"fault\"\n{CHAIN}"
        ));
        let kb = kb(&text);
        let e = kb.explain(&mut State::default(), &alarm(), 0);
        assert_eq!(e.considered.len(), 1);
        assert_eq!(e.not_considered, 52);
        let disk = Alarm {
            key: "fs.used:/".into(),
            ..alarm()
        };
        let e = kb.explain(&mut State::default(), &disk, 0);
        let considered: Vec<&str> = e.considered.iter().map(|c| c.rule.name.as_str()).collect();
        assert_eq!(considered, ["disk", "perf"]);
        assert_eq!(names(&e.decisions), ["disk"]);
    }

    #[test]
    fn rules_without_a_key_are_indexed_by_node_metric_or_module() {
        let mut text = String::from("[[group]]\nname = \"web\"\nnodes = [\"web-1\", \"web-2\"]\n");
        // A rule per node, as a site with per-node rules writes them: an
        // alarm looks at its own node's rules only.
        for i in 0..100 {
            text.push_str(&format!(
                "[[rule]]\nname = \"node-{i}\"\n[rule.match]\nnodes = [\"n{i}\"]\n{CHAIN}"
            ));
        }
        text.push_str(&format!(
            "[[rule]]\nname = \"web\"\n[rule.match]\ngroup = \"web\"\nseverity = \"critical\"\n{CHAIN}\
             [[rule]]\nname = \"fs\"\n[rule.match]\nmetric = \"fs.used-percent\"\n{CHAIN}\
             [[rule]]\nname = \"cpu-mem\"\n[rule.match]\nmodule = \"cpu-mem\"\nseverity = \"critical\"\n{CHAIN}\
             [[rule]]\nname = \"major\"\n[rule.match]\nseverity = \"major\"\n{CHAIN}"
        ));
        let kb = kb(&text);
        let considered = |alarm: &Alarm| -> Vec<String> {
            let e = kb.explain(&mut State::default(), alarm, 0);
            assert_eq!(e.considered.len() + e.not_considered, kb.rules().len());
            e.considered.iter().map(|c| c.rule.name.clone()).collect()
        };
        // web-1 is in group web; `cpu-mem` is indexed by module, `major` by nothing.
        assert_eq!(considered(&alarm()), ["web", "cpu-mem", "major"]);
        let n1 = Alarm {
            node: "n1".into(),
            ..alarm()
        };
        assert_eq!(considered(&n1), ["node-1", "cpu-mem", "major"]);
        // The same decisions as a scan: the conditions a rule is not indexed
        // by still hold (`web` and `cpu-mem` want a critical alarm).
        assert_eq!(
            names(&kb.evaluate(&mut State::default(), &alarm(), 0)),
            ["major"]
        );
        assert_eq!(
            names(&kb.evaluate(&mut State::default(), &n1, 0)),
            ["node-1"]
        );
        let fs = Alarm {
            node: "n7".into(),
            module: "disk-space".into(),
            metric: "fs.used-percent".into(),
            ..alarm()
        };
        assert_eq!(considered(&fs), ["node-7", "fs", "major"]);
    }

    #[test]
    fn schedules_are_due_exactly_at_their_dates() {
        let kb = kb(
            "[[schedule]]\nname = \"window\"\nmodule = \"link-watch\"\nconfig = { target = \"core-1\" }\n\
             nodes = [\"core-1\"]\nstart = 2026-12-05T22:00:00Z\nstop = 2026-12-06T04:00:00Z\n\
             [[schedule]]\nname = \"retire\"\nmodule = \"cpu-mem\"\ndomain = \"lab\"\nstop = 2026-12-06T04:00:00Z\n\
             [[schedule]]\nname = \"begin\"\nmodule = \"cpu-mem\"\nnodes = [\"web-1\"]\nstart = 2026-12-06T04:00:00Z\n",
        );
        let start = at("2026-12-05T22:00:00Z");
        let stop = at("2026-12-06T04:00:00Z");
        let due = |a: u64, b: u64| -> Vec<(String, Transition, u64)> {
            kb.due(a, b)
                .iter()
                .map(|d| (d.schedule.name.clone(), d.transition, d.at_ms))
                .collect()
        };
        // Not a millisecond early; due when the clock reaches it; once.
        assert!(due(0, start - 1).is_empty());
        assert_eq!(
            due(start - 1, start),
            [("window".to_owned(), Transition::Start, start)]
        );
        assert!(due(start, start + 1000).is_empty());
        // At the same instant, stops before starts.
        let at_stop = due(start, stop);
        assert_eq!(
            at_stop,
            [
                ("window".to_owned(), Transition::Stop, stop),
                ("retire".to_owned(), Transition::Stop, stop),
                ("begin".to_owned(), Transition::Start, stop),
            ]
        );
        assert_eq!(due(0, u64::MAX).len(), 4);
        let active = |t: u64| -> Vec<&str> {
            kb.active_schedules(t)
                .iter()
                .map(|s| s.name.as_str())
                .collect()
        };
        assert!(active(start - 1).is_empty());
        assert_eq!(active(start), ["window"]);
        assert_eq!(active(stop - 1), ["window"]);
        assert_eq!(active(stop), ["begin"]);
        assert_eq!(
            kb.schedules()[1].targets,
            crate::Targets::Domain("lab".into())
        );
    }
}
