//! Rules files → checked [`Rule`]s, [`Schedule`]s and groups, or every
//! error found, each pointing at its text.
//!
//! Files are read with `toml` keeping the byte span of every value the
//! checks may complain about; a file TOML itself refuses contributes its one
//! parser error and the other files are still checked, so an operator sees
//! all that is wrong in one run.

use crate::catalog::Catalog;
use crate::model::{
    Action, After, Chain, FactCondition, Fix, KeyPattern, Match, NodeSet, Origin, Part, Repeat,
    Rule, Schedule, StartModule, Step, Targets, Template,
};
use crate::time::{Days, Hours, Weekday, datetime_ms};
use agad_protocol::manifest::{ConfigKey, ConfigType, PERIOD_KEY, ScalarText};
use agad_protocol::message::Severity;
use agad_protocol::source::{Source, SourceError};
use agad_protocol::{Area, parse_duration, text::is_name};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use toml::Spanned;

/// A diagnosis step's deadline when the rule sets none.
pub const DEFAULT_DIAGNOSE_DEADLINE_MS: u64 = 30_000;
/// A fix step's deadline when the rule sets none.
pub const DEFAULT_FIX_DEADLINE_MS: u64 = 60_000;
/// How long a fixed alarm has to clear when `[rule.confirm]` is left out.
pub const DEFAULT_CONFIRM_MS: u64 = 120_000;
/// Longest deadline of one specialist run.
pub const MAX_STEP_DEADLINE_MS: u64 = 3_600_000;
/// Longest window of `repeat`, `after` and `confirm` (a week): state for
/// longer would be memory kept for rules nobody can reason about.
pub const MAX_WINDOW_MS: u64 = 7 * 24 * 3_600_000;
/// Most repetitions a rule may count: each tracked series keeps up to this
/// many times.
pub const MAX_REPEAT_COUNT: i64 = 1000;

type Text = Spanned<String>;
type Values = BTreeMap<Text, Spanned<ScalarText>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    schedule: Vec<RawSchedule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Text,
    nodes: Spanned<Vec<Text>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Text,
    description: Option<String>,
    priority: Option<Spanned<i64>>,
    #[serde(rename = "continue", default)]
    continues: bool,
    #[serde(rename = "match")]
    when: Option<RawMatch>,
    diagnose: Option<Spanned<RawStep>>,
    fix: Option<Spanned<RawFix>>,
    confirm: Option<Spanned<RawConfirm>>,
    escalate: Option<Spanned<RawEscalate>>,
    start: Option<Spanned<RawStart>>,
    stop: Option<Spanned<RawStop>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    area: Option<Text>,
    key: Option<Text>,
    metric: Option<Text>,
    module: Option<Text>,
    severity: Option<Text>,
    nodes: Option<Spanned<Vec<Text>>>,
    group: Option<Text>,
    hours: Option<Text>,
    days: Option<Spanned<Vec<Text>>>,
    repeat: Option<Spanned<RawRepeat>>,
    after: Option<Spanned<RawAfter>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepeat {
    count: Spanned<i64>,
    within: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAfter {
    rule: Text,
    within: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    specialist: Text,
    #[serde(default)]
    args: Values,
    deadline: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFix {
    specialist: Text,
    #[serde(default)]
    args: Values,
    deadline: Option<Text>,
    if_fact: Option<Text>,
    equals: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfirm {
    within: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscalate {
    to: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStart {
    module: Text,
    #[serde(default)]
    config: Values,
    #[serde(rename = "for")]
    for_: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStop {
    module: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: Text,
    module: Text,
    #[serde(default)]
    config: Values,
    nodes: Option<Spanned<Vec<Text>>>,
    group: Option<Text>,
    domain: Option<Text>,
    start: Option<Spanned<toml::value::Datetime>>,
    stop: Option<Spanned<toml::value::Datetime>>,
}

/// What a whole rule set parses into.
pub(crate) struct Parsed {
    /// In file order (files by name); the caller orders them for evaluation.
    pub rules: Vec<Rule>,
    pub groups: BTreeMap<String, Vec<String>>,
    pub schedules: Vec<Schedule>,
}

/// Parses and checks `files` (name, text) as one rule set.
pub(crate) fn parse(
    files: &[(String, String)],
    catalog: &Catalog,
) -> Result<Parsed, Vec<SourceError>> {
    let mut checker = Checker {
        catalog,
        errors: Vec::new(),
    };
    let mut raws = Vec::new();
    for (name, text) in files {
        let source = Source::new(name, text);
        match toml::from_str::<RawFile>(text) {
            Ok(raw) => raws.push((source, raw)),
            Err(e) => checker.errors.push(source.toml_error(&e)),
        }
    }

    // Groups and rule names first: any rule may name a group or another
    // rule defined later or in another file.
    let mut groups: BTreeMap<String, (Vec<String>, Origin)> = BTreeMap::new();
    let mut group_names: HashMap<&str, Origin> = HashMap::new();
    for (source, raw) in &raws {
        for g in &raw.group {
            let name = g.name.get_ref();
            if let Some(first) = group_names.get(name.as_str()) {
                checker.error(
                    source,
                    g.name.span(),
                    format!(
                        "group `{}` is defined twice (first at {first})",
                        name.escape_debug()
                    ),
                );
                continue;
            }
            group_names.insert(name, origin(source, &g.name));
            if let Some(nodes) = checker.group(source, g) {
                groups.insert(name.clone(), (nodes, origin(source, &g.name)));
            }
        }
    }
    let mut rule_names: HashMap<&str, Origin> = HashMap::new();
    for (source, raw) in &raws {
        for r in &raw.rule {
            let name = r.name.get_ref();
            if let Some(first) = rule_names.get(name.as_str()) {
                checker.error(
                    source,
                    r.name.span(),
                    format!(
                        "rule `{}` is defined twice (first at {first}); rule names are unique",
                        name.escape_debug()
                    ),
                );
            } else {
                rule_names.insert(name, origin(source, &r.name));
            }
        }
    }

    let mut rules = Vec::new();
    let mut schedules = Vec::new();
    let mut schedule_names: HashMap<&str, Origin> = HashMap::new();
    for (source, raw) in &raws {
        for r in &raw.rule {
            if let Some(rule) = checker.rule(source, r, &groups, &rule_names) {
                rules.push(rule);
            }
        }
        for s in &raw.schedule {
            let name = s.name.get_ref();
            if let Some(first) = schedule_names.get(name.as_str()) {
                checker.error(
                    source,
                    s.name.span(),
                    format!(
                        "schedule `{}` is defined twice (first at {first})",
                        name.escape_debug()
                    ),
                );
                continue;
            }
            schedule_names.insert(name, origin(source, &s.name));
            if let Some(schedule) = checker.schedule(source, s, &groups) {
                schedules.push(schedule);
            }
        }
    }
    if checker.errors.is_empty() {
        return Ok(Parsed {
            rules,
            groups: groups
                .into_iter()
                .map(|(k, (nodes, _))| (k, nodes))
                .collect(),
            schedules,
        });
    }
    // In reading order: by file (sorted by name), then position.
    let file_order: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.as_str(), i))
        .collect();
    checker
        .errors
        .sort_by_key(|e| (file_order.get(e.file.as_str()).copied(), e.line, e.column));
    Err(checker.errors)
}

fn origin(source: &Source<'_>, at: &Text) -> Origin {
    Origin {
        file: source.file.to_owned(),
        line: source.line(&at.span()),
    }
}

struct Checker<'c> {
    catalog: &'c Catalog,
    errors: Vec<SourceError>,
}

/// Close to the limit of what one line of an error should list.
const MAX_LISTED: usize = 12;

fn listing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&String> = names.collect();
    if names.is_empty() {
        return "none".to_owned();
    }
    let mut shown: Vec<String> = names
        .iter()
        .take(MAX_LISTED)
        .map(|n| format!("`{n}`"))
        .collect();
    if names.len() > MAX_LISTED {
        shown.push(format!("and {} more", names.len() - MAX_LISTED));
    }
    shown.join(", ")
}

impl<'c> Checker<'c> {
    fn error(&mut self, source: &Source<'_>, span: Range<usize>, reason: impl Into<String>) {
        self.errors.push(source.error(span, reason));
    }

    /// `Some(value)` or an error recorded and `None`.
    fn ok<T>(
        &mut self,
        source: &Source<'_>,
        span: Range<usize>,
        result: Result<T, String>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(reason) => {
                self.error(source, span, reason);
                None
            }
        }
    }

    fn name(&mut self, source: &Source<'_>, what: &str, name: &Text) -> Option<String> {
        let value = name.get_ref();
        let result = if is_name(value) {
            Ok(value.clone())
        } else {
            Err(format!(
                "`{}` is not a valid {what} name; expected 1 to 64 of A-Z, a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit",
                value.escape_debug()
            ))
        };
        self.ok(source, name.span(), result)
    }

    fn node(&mut self, source: &Source<'_>, node: &Text) -> Option<String> {
        let name = self.name(source, "node", node)?;
        if let Some(known) = &self.catalog.nodes
            && !known.contains(&name)
        {
            self.error(
                source,
                node.span(),
                format!("unknown node `{name}`; it is not in the topology"),
            );
            return None;
        }
        Some(name)
    }

    fn duration(
        &mut self,
        source: &Source<'_>,
        value: &Text,
        what: &str,
        max_ms: u64,
    ) -> Option<u64> {
        let text = value.get_ref();
        let ms = parse_duration(text)
            .filter(|d| !d.is_zero())
            .and_then(|d| u64::try_from(d.as_millis()).ok());
        let result = match ms {
            None => Err(format!(
                "{what} `{}` is not a positive duration; expected e.g. 500ms, 30s, 10m, 2h",
                text.escape_debug()
            )),
            Some(ms) if ms > max_ms => Err(format!(
                "{what} `{text}` is longer than the limit of {}",
                agad_protocol::duration::format_duration_ms(max_ms)
            )),
            Some(ms) => Ok(ms),
        };
        self.ok(source, value.span(), result)
    }

    fn group(&mut self, source: &Source<'_>, g: &RawGroup) -> Option<Vec<String>> {
        let name = self.name(source, "group", &g.name)?;
        if g.nodes.get_ref().is_empty() {
            self.error(
                source,
                g.nodes.span(),
                format!("group `{name}` lists no nodes; expected at least one node name"),
            );
            return None;
        }
        let mut nodes = Vec::new();
        let mut ok = true;
        for n in g.nodes.get_ref() {
            match self.node(source, n) {
                Some(node) if nodes.contains(&node) => {
                    self.error(
                        source,
                        n.span(),
                        format!("node `{node}` is listed twice in group `{name}`"),
                    );
                    ok = false;
                }
                Some(node) => nodes.push(node),
                None => ok = false,
            }
        }
        ok.then_some(nodes)
    }

    fn targets(
        &mut self,
        source: &Source<'_>,
        nodes: Option<&Spanned<Vec<Text>>>,
        group: Option<&Text>,
        groups: &BTreeMap<String, (Vec<String>, Origin)>,
    ) -> Result<Option<NodeSet>, ()> {
        let mut set = BTreeSet::new();
        let mut labels = Vec::new();
        let mut ok = true;
        if let Some(list) = nodes {
            if list.get_ref().is_empty() {
                self.error(
                    source,
                    list.span(),
                    "`nodes` is empty; expected node names (or leave it out)",
                );
                ok = false;
            }
            for n in list.get_ref() {
                match self.node(source, n) {
                    Some(node) => {
                        set.insert(node);
                    }
                    None => ok = false,
                }
            }
            labels.push(format!(
                "nodes {}",
                list.get_ref()
                    .iter()
                    .map(|n| n.get_ref().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(g) = group {
            match groups.get(g.get_ref()) {
                Some((members, _)) => {
                    set.extend(members.iter().cloned());
                    labels.push(format!("group {}", g.get_ref()));
                }
                None => {
                    let known = listing(groups.keys());
                    self.error(
                        source,
                        g.span(),
                        format!(
                            "unknown group `{}`; defined groups: {known}",
                            g.get_ref().escape_debug()
                        ),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return Err(());
        }
        Ok((!labels.is_empty()).then(|| NodeSet {
            label: labels.join(" + "),
            nodes: set,
        }))
    }

    fn rule(
        &mut self,
        source: &Source<'_>,
        r: &RawRule,
        groups: &BTreeMap<String, (Vec<String>, Origin)>,
        rule_names: &HashMap<&str, Origin>,
    ) -> Option<Rule> {
        let before = self.errors.len();
        let name = self.name(source, "rule", &r.name);
        let empty = RawMatch::default();
        let when = match &r.when {
            Some(m) => self.matcher(source, r, m, groups, rule_names),
            None => {
                self.error(
                    source,
                    r.name.span(),
                    format!(
                        "rule `{}` has no `[rule.match]` table; expected the conditions it matches alarms by (an empty table matches every alarm)",
                        r.name.get_ref().escape_debug()
                    ),
                );
                self.matcher(source, r, &empty, groups, rule_names)
            }
        };
        let action = self.action(source, r);
        if self.errors.len() > before {
            return None;
        }
        Some(Rule {
            name: name?,
            origin: origin(source, &r.name),
            priority: r.priority.as_ref().map_or(0, |p| *p.get_ref()),
            continues: r.continues,
            description: r.description.clone(),
            when: when?,
            action: action?,
        })
    }

    fn matcher(
        &mut self,
        source: &Source<'_>,
        r: &RawRule,
        m: &RawMatch,
        groups: &BTreeMap<String, (Vec<String>, Origin)>,
        rule_names: &HashMap<&str, Origin>,
    ) -> Option<Match> {
        let before = self.errors.len();
        let mut when = Match::default();
        if let Some(area) = &m.area {
            when.area = self.ok(source, area.span(), parse_area(area.get_ref()));
        }
        if let Some(key) = &m.key {
            let pattern = self.ok(source, key.span(), parse_key(key.get_ref()));
            if pattern.is_some() && !self.catalog.knows_key(key.get_ref()) {
                let known = listing(self.catalog.keys.iter());
                self.error(
                    source,
                    key.span(),
                    format!(
                        "unknown alarm key `{}`; known keys: {known}",
                        key.get_ref().escape_debug()
                    ),
                );
            }
            when.key = pattern;
        }
        if let Some(metric) = &m.metric {
            if self.catalog.knows_metric(metric.get_ref()) {
                when.metric = Some(metric.get_ref().clone());
            } else {
                let known = listing(self.catalog.metrics.iter());
                self.error(
                    source,
                    metric.span(),
                    format!(
                        "unknown metric `{}`; known metrics: {known}",
                        metric.get_ref().escape_debug()
                    ),
                );
            }
        }
        if let Some(module) = &m.module {
            if self.catalog.knows_alarm_module(module.get_ref()) {
                when.module = Some(module.get_ref().clone());
            } else {
                let known = listing(self.catalog.modules.keys());
                self.error(
                    source,
                    module.span(),
                    format!(
                        "unknown module `{}`; known inspectors: {known}",
                        module.get_ref().escape_debug()
                    ),
                );
            }
        }
        if let Some(severity) = &m.severity {
            when.min_severity =
                self.ok(source, severity.span(), parse_severity(severity.get_ref()));
        }
        if let Ok(nodes) = self.targets(source, m.nodes.as_ref(), m.group.as_ref(), groups) {
            when.nodes = nodes;
        }
        if let Some(hours) = &m.hours {
            when.hours = self.ok(
                source,
                hours.span(),
                Hours::parse(hours.get_ref()).map_err(|e| format!("hours {e}")),
            );
        }
        if let Some(days) = &m.days {
            let mut set = Days::default();
            if days.get_ref().is_empty() {
                self.error(
                    source,
                    days.span(),
                    "`days` is empty; expected days such as [\"mon\", \"tue\"] (or leave it out)",
                );
            }
            for d in days.get_ref() {
                match Weekday::parse(d.get_ref()) {
                    Some(day) => set.insert(day),
                    None => self.error(
                        source,
                        d.span(),
                        format!(
                            "`{}` is not a day of the week; expected mon, tue, wed, thu, fri, sat or sun",
                            d.get_ref().escape_debug()
                        ),
                    ),
                }
            }
            when.days = Some(set);
        }
        if let Some(repeat) = &m.repeat {
            let raw = repeat.get_ref();
            let count = *raw.count.get_ref();
            if !(1..=MAX_REPEAT_COUNT).contains(&count) {
                self.error(
                    source,
                    raw.count.span(),
                    format!(
                        "repeat count {count} is out of range; expected 1 to {MAX_REPEAT_COUNT}"
                    ),
                );
            }
            let within = self.duration(source, &raw.within, "repeat within", MAX_WINDOW_MS);
            if let (Some(within_ms), Ok(count)) = (within, u32::try_from(count)) {
                when.repeat = Some(Repeat { count, within_ms });
            }
        }
        if let Some(after) = &m.after {
            let raw = after.get_ref();
            let other = raw.rule.get_ref();
            if other == r.name.get_ref() {
                self.error(
                    source,
                    raw.rule.span(),
                    "a rule cannot wait for itself; expected another rule's name",
                );
            } else if !rule_names.contains_key(other.as_str()) {
                self.error(
                    source,
                    raw.rule.span(),
                    format!(
                        "unknown rule `{}`; `after` names a rule of this rule set",
                        other.escape_debug()
                    ),
                );
            }
            if let Some(within_ms) =
                self.duration(source, &raw.within, "after within", MAX_WINDOW_MS)
            {
                when.after = Some(After {
                    rule: other.clone(),
                    within_ms,
                });
            }
        }
        (self.errors.len() == before).then_some(when)
    }

    fn action(&mut self, source: &Source<'_>, r: &RawRule) -> Option<Action> {
        let rule = r.name.get_ref().escape_debug().to_string();
        let kinds = [r.diagnose.is_some(), r.start.is_some(), r.stop.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.error(
                source,
                r.name.span(),
                format!(
                    "rule `{rule}` needs exactly one action; expected one of `[rule.diagnose]` (with optional `fix`, `confirm`, `escalate`), `[rule.start]` or `[rule.stop]`"
                ),
            );
            return None;
        }
        if r.diagnose.is_none() {
            let extra = [
                r.fix.as_ref().map(|s| ("fix", s.span())),
                r.confirm.as_ref().map(|s| ("confirm", s.span())),
                r.escalate.as_ref().map(|s| ("escalate", s.span())),
            ];
            let mut bad = false;
            for (what, span) in extra.into_iter().flatten() {
                self.error(
                    source,
                    span,
                    format!("`{what}` belongs to a chain that starts with `[rule.diagnose]`"),
                );
                bad = true;
            }
            if bad {
                return None;
            }
        }
        if let Some(start) = &r.start {
            let raw = start.get_ref();
            let module = self.resident_module(source, &raw.module)?;
            let config = self.values(source, &raw.config, module.1, ValuesOf::Module, &raw.module);
            let for_ms = match &raw.for_ {
                Some(d) => Some(self.duration(source, d, "for", MAX_WINDOW_MS)?),
                None => None,
            };
            return Some(Action::Start(StartModule {
                module: module.0,
                config: config?,
                for_ms,
            }));
        }
        if let Some(stop) = &r.stop {
            let module = self.resident_module(source, &stop.get_ref().module)?;
            return Some(Action::Stop { module: module.0 });
        }
        let diagnose = r.diagnose.as_ref()?.get_ref();
        let first = self.step(
            source,
            &diagnose.specialist,
            &diagnose.args,
            diagnose.deadline.as_ref(),
            DEFAULT_DIAGNOSE_DEADLINE_MS,
            false,
        );
        let fix = r.fix.as_ref().map(|f| {
            let raw = f.get_ref();
            let step = self.step(
                source,
                &raw.specialist,
                &raw.args,
                raw.deadline.as_ref(),
                DEFAULT_FIX_DEADLINE_MS,
                true,
            );
            let condition = match (&raw.if_fact, &raw.equals) {
                (None, None) => Some(None),
                (Some(fact), equals) => Some(Some(FactCondition {
                    fact: fact.get_ref().clone(),
                    equals: equals.as_ref().map(|e| e.get_ref().clone()),
                })),
                (None, Some(equals)) => {
                    self.error(
                        source,
                        equals.span(),
                        "`equals` compares a fact; expected `if_fact` beside it",
                    );
                    None
                }
            };
            step.zip(condition)
                .map(|(step, condition)| Fix { step, condition })
        });
        let confirm_within_ms = match (&r.confirm, &r.fix) {
            (Some(c), Some(_)) => {
                self.duration(source, &c.get_ref().within, "confirm within", MAX_WINDOW_MS)
            }
            (Some(c), None) => {
                self.error(source, c.span(), "`confirm` waits for a fix to clear the alarm; expected a `[rule.fix]` before it");
                None
            }
            (None, Some(_)) => Some(DEFAULT_CONFIRM_MS),
            (None, None) => None,
        };
        let escalate = match &r.escalate {
            Some(e) => {
                let to = e.get_ref().to.get_ref();
                if to.trim().is_empty() || to.contains(char::is_control) || to.len() > 256 {
                    self.error(
                        source,
                        e.get_ref().to.span(),
                        "`to` is who is told; expected one line of text (a team, an address), at most 256 bytes",
                    );
                    None
                } else {
                    Some(Some(to.clone()))
                }
            }
            None => Some(None),
        };
        let fix = match fix {
            Some(Some(fix)) => Some(fix),
            Some(None) => return None,
            None => None,
        };
        if r.confirm.is_some() && confirm_within_ms.is_none() {
            return None;
        }
        Some(Action::Chain(Chain {
            diagnose: first?,
            fix,
            confirm_within_ms,
            escalate: escalate?,
        }))
    }

    fn resident_module(
        &mut self,
        source: &Source<'_>,
        module: &Text,
    ) -> Option<(String, &'c [ConfigKey])> {
        let catalog: &'c Catalog = self.catalog;
        match catalog.modules.get(module.get_ref()) {
            Some(keys) => Some((module.get_ref().clone(), keys.as_slice())),
            None => {
                let known = listing(catalog.modules.keys());
                let hint = if catalog.specialists.contains_key(module.get_ref()) {
                    " (it is a specialist: run it from `[rule.diagnose]`)"
                } else {
                    ""
                };
                self.error(
                    source,
                    module.span(),
                    format!(
                        "unknown module `{}`{hint}; known inspectors and probes: {known}",
                        module.get_ref().escape_debug()
                    ),
                );
                None
            }
        }
    }

    fn step(
        &mut self,
        source: &Source<'_>,
        specialist: &Text,
        args: &Values,
        deadline: Option<&Text>,
        default_deadline_ms: u64,
        is_fix: bool,
    ) -> Option<Step> {
        let catalog = self.catalog;
        let name = specialist.get_ref();
        let Some(keys) = catalog.specialists.get(name) else {
            let known = listing(catalog.specialists.keys());
            let hint = if catalog.modules.contains_key(name) {
                " (it is a resident module: use `[rule.start]`)"
            } else {
                ""
            };
            self.error(
                source,
                specialist.span(),
                format!(
                    "unknown specialist `{}`{hint}; known specialists: {known}",
                    name.escape_debug()
                ),
            );
            return None;
        };
        let args = self.values(
            source,
            args,
            keys,
            ValuesOf::Specialist { is_fix },
            specialist,
        );
        let deadline_ms = match deadline {
            Some(d) => self.duration(source, d, "deadline", MAX_STEP_DEADLINE_MS)?,
            None => default_deadline_ms,
        };
        Some(Step {
            specialist: name.clone(),
            args: args?,
            deadline_ms,
        })
    }

    /// Arguments of a specialist or configuration of a module, checked
    /// against what it declares: known names, required ones present, types.
    fn values(
        &mut self,
        source: &Source<'_>,
        values: &Values,
        keys: &[ConfigKey],
        of: ValuesOf,
        owner: &Text,
    ) -> Option<Vec<(String, Template)>> {
        let before = self.errors.len();
        let (what, noun) = match of {
            ValuesOf::Specialist { .. } => ("specialist", "argument"),
            ValuesOf::Module | ValuesOf::Scheduled => ("module", "configuration key"),
        };
        let allows_period = !matches!(of, ValuesOf::Specialist { .. });
        let owner_name = owner.get_ref();
        let mut out = Vec::new();
        for (name, value) in values {
            let kind = if allows_period && name.get_ref() == PERIOD_KEY {
                Some(ConfigType::Duration)
            } else {
                keys.iter()
                    .find(|k| k.name == *name.get_ref())
                    .map(|k| k.kind)
            };
            let Some(kind) = kind else {
                let names: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{} ({})", k.name, k.kind))
                    .collect();
                let takes = if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                };
                self.error(
                    source,
                    name.span(),
                    format!(
                        "{what} `{owner_name}` has no {noun} `{}`; it takes: {takes}",
                        name.get_ref().escape_debug()
                    ),
                );
                continue;
            };
            let text = &value.get_ref().0;
            let is_fix = matches!(of, ValuesOf::Specialist { is_fix: true });
            let template = match Template::parse(text, is_fix) {
                Ok(t) => t,
                Err(reason) => {
                    self.error(
                        source,
                        value.span(),
                        format!("{noun} `{}`: {reason}", name.get_ref()),
                    );
                    continue;
                }
            };
            if matches!(of, ValuesOf::Scheduled) && template.as_literal().is_none() {
                self.error(
                    source,
                    value.span(),
                    format!("{noun} `{}`: a schedule has no alarm to take `{{...}}` values from; expected a plain value", name.get_ref()),
                );
                continue;
            }
            if let Err(reason) = check_type(&template, kind) {
                self.error(
                    source,
                    value.span(),
                    format!("{noun} `{}`: {reason}", name.get_ref()),
                );
                continue;
            }
            out.push((name.get_ref().clone(), template));
        }
        for key in keys.iter().filter(|k| k.required) {
            if !values.keys().any(|n| *n.get_ref() == key.name) {
                self.error(
                    source,
                    owner.span(),
                    format!(
                        "{what} `{owner_name}` needs {noun} `{}` ({}): {}",
                        key.name, key.kind, key.description
                    ),
                );
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    fn schedule(
        &mut self,
        source: &Source<'_>,
        s: &RawSchedule,
        groups: &BTreeMap<String, (Vec<String>, Origin)>,
    ) -> Option<Schedule> {
        let before = self.errors.len();
        let name = self.name(source, "schedule", &s.name);
        let module = self.resident_module(source, &s.module);
        let config = module.as_ref().and_then(|(_, keys)| {
            self.values(source, &s.config, keys, ValuesOf::Scheduled, &s.module)
        });
        let chosen = [s.nodes.is_some() || s.group.is_some(), s.domain.is_some()];
        let targets = if chosen == [false, false] || chosen == [true, true] {
            self.error(
                source,
                s.name.span(),
                format!(
                    "schedule `{}` needs its targets; expected `nodes` and/or `group`, or `domain` alone",
                    s.name.get_ref().escape_debug()
                ),
            );
            None
        } else if let Some(domain) = &s.domain {
            match &self.catalog.domains {
                Some(known) if !known.contains(domain.get_ref()) => {
                    let known = listing(known.iter());
                    self.error(
                        source,
                        domain.span(),
                        format!(
                            "unknown domain `{}`; known domains: {known}",
                            domain.get_ref().escape_debug()
                        ),
                    );
                    None
                }
                _ => self.name(source, "domain", domain).map(Targets::Domain),
            }
        } else {
            match (
                self.targets(source, s.nodes.as_ref(), s.group.as_ref(), groups),
                &s.group,
                &s.nodes,
            ) {
                (Ok(Some(set)), Some(g), None) => Some(Targets::Group {
                    name: g.get_ref().clone(),
                    nodes: set.nodes.into_iter().collect(),
                }),
                // Nodes, or nodes and a group: the union, as for rules.
                (Ok(Some(set)), _, _) => Some(Targets::Nodes(set.nodes.into_iter().collect())),
                _ => None,
            }
        };
        let mut when =
            |d: &Option<Spanned<toml::value::Datetime>>, what: &str| -> Option<Option<u64>> {
                match d {
                    None => Some(None),
                    Some(d) => {
                        let r = datetime_ms(d.get_ref()).map_err(|e| format!("{what}: {e}"));
                        self.ok(source, d.span(), r).map(Some)
                    }
                }
            };
        let start_ms = when(&s.start, "start");
        let stop_ms = when(&s.stop, "stop");
        match (start_ms, stop_ms) {
            (Some(None), Some(None)) => self.error(
                source,
                s.name.span(),
                format!(
                    "schedule `{}` has no date; expected `start`, `stop` or both (e.g. start = 2026-12-01T08:00:00Z)",
                    s.name.get_ref().escape_debug()
                ),
            ),
            (Some(Some(a)), Some(Some(b))) if b <= a => {
                if let Some(stop) = &s.stop {
                    self.error(source, stop.span(), "`stop` is not after `start`; expected a later date");
                }
            }
            _ => {}
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Schedule {
            name: name?,
            origin: origin(source, &s.name),
            module: module?.0,
            config: config?
                .into_iter()
                .map(|(k, t)| (k, t.as_literal().unwrap_or_default().to_owned()))
                .collect(),
            targets: targets?,
            start_ms: start_ms?,
            stop_ms: stop_ms?,
        })
    }
}

#[derive(Clone, Copy)]
enum ValuesOf {
    Specialist { is_fix: bool },
    Module,
    Scheduled,
}

/// Whether a value can be of `kind`: literal text is checked now; a
/// placeholder can only stand for a whole value of its own type (a facts'
/// types are unknown until the diagnosis: the dispatcher checks those).
fn check_type(template: &Template, kind: ConfigType) -> Result<(), String> {
    if let Some(text) = template.as_literal() {
        return kind
            .check(text)
            .map_err(|reason| format!("{reason} (expected {kind})"));
    }
    if matches!(kind, ConfigType::String | ConfigType::List) {
        return Ok(());
    }
    match template.parts.as_slice() {
        [Part::Fact(_)] => Ok(()),
        [Part::Field(field)] => match (field.numeric(), kind) {
            (Some(ConfigType::Integer), ConfigType::Integer | ConfigType::Number) => Ok(()),
            (Some(ConfigType::Number), ConfigType::Number) => Ok(()),
            (Some(have), _) => Err(format!(
                "`{{{}}}` is a {have}; expected {kind}",
                field.name()
            )),
            (None, _) => Err(format!("`{{{}}}` is text; expected {kind}", field.name())),
        },
        _ => Err(format!(
            "`{template}` mixes text and placeholders; expected {kind}"
        )),
    }
}

fn parse_key(text: &str) -> Result<KeyPattern, String> {
    let expected = "expected an alarm key (`cpu.total`, `fs.used:/var`) or a key family ending in `:*` (`fs.used:*`)";
    if text.is_empty() || text.contains(char::is_control) {
        return Err(format!(
            "`{}` is not an alarm key; {expected}",
            text.escape_debug()
        ));
    }
    match text.strip_suffix('*') {
        Some(prefix) if prefix.ends_with(':') && !prefix.contains('*') && prefix.len() > 1 => {
            Ok(KeyPattern::Prefix(prefix.to_owned()))
        }
        None if !text.contains('*') => Ok(KeyPattern::Exact(text.to_owned())),
        _ => Err(format!(
            "`{}`: `*` may only end a key family after a colon; {expected}",
            text.escape_debug()
        )),
    }
}

fn parse_area(text: &str) -> Result<Area, String> {
    const AREAS: [(&str, Area); 5] = [
        ("fault", Area::Fault),
        ("configuration", Area::Configuration),
        ("accounting", Area::Accounting),
        ("performance", Area::Performance),
        ("security", Area::Security),
    ];
    AREAS.iter().find(|(n, _)| *n == text).map(|(_, a)| *a).ok_or_else(|| {
        format!(
            "`{}` is not an area; expected fault, configuration, accounting, performance or security",
            text.escape_debug()
        )
    })
}

fn parse_severity(text: &str) -> Result<Severity, String> {
    const SEVERITIES: [(&str, Severity); 5] = [
        ("info", Severity::Info),
        ("warning", Severity::Warning),
        ("minor", Severity::Minor),
        ("major", Severity::Major),
        ("critical", Severity::Critical),
    ];
    SEVERITIES.iter().find(|(n, _)| *n == text).map(|(_, s)| *s).ok_or_else(|| {
        format!(
            "`{}` is not a severity; expected info, warning, minor, major or critical (the least severe that matches)",
            text.escape_debug()
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{catalog, errors, kb, refused};
    use crate::{KbError, KnowledgeBase};

    /// Where the last `marker` starts in `text`: (line, column), 1-based.
    fn pos(text: &str, marker: &str) -> (usize, usize) {
        let at = text
            .rfind(marker)
            .unwrap_or_else(|| panic!("`{marker}` not in the text"));
        agad_protocol::source::line_column(text, at)
    }

    const CPU: &str = "[[rule]]\nname = \"cpu\"\n[rule.match]\nkey = \"cpu.total\"\n";

    fn rule(matcher: &str, action: &str) -> String {
        format!("[[rule]]\nname = \"r\"\n[rule.match]\n{matcher}\n{action}")
    }

    const DIAG: &str = "[rule.diagnose]\nspecialist = \"top-cpu\"\n";

    #[test]
    fn a_full_rule_parses_into_the_model() {
        let kb = kb(&format!(
            "[[group]]\nname = \"web\"\nnodes = [\"web-1\", \"web-2\"]\n\n\
             [[rule]]\nname = \"disk\"\npriority = 5\ndescription = \"d\"\n\
             [rule.match]\nkey = \"fs.used:*\"\nmetric = \"fs.used-percent\"\nmodule = \"disk-space\"\n\
             severity = \"major\"\ngroup = \"web\"\nnodes = [\"db-1\"]\nhours = \"22:00-06:00\"\ndays = [\"sat\", \"Sunday\"]\n\
             repeat = {{ count = 3, within = \"10m\" }}\nafter = {{ rule = \"{}\", within = \"1h\" }}\n\
             [rule.diagnose]\nspecialist = \"disk-usage\"\nargs = {{ path = \"{{subject}}\" }}\n\
             [rule.fix]\nspecialist = \"service-restart\"\nif_fact = \"fixable\"\nargs = {{ service = \"{{fact.service}}\", limit = \"{{value}}\" }}\ndeadline = \"2m\"\n\
             [rule.escalate]\nto = \"ops\"\n\n{CPU}{DIAG}",
            "cpu"
        ));
        let r = kb.rule("disk").unwrap();
        assert_eq!(r.priority, 5);
        assert_eq!(r.origin.to_string(), "rules.toml:6");
        assert_eq!(r.when.key, Some(KeyPattern::Prefix("fs.used:".into())));
        assert_eq!(r.when.min_severity, Some(Severity::Major));
        let nodes = r.when.nodes.as_ref().unwrap();
        assert_eq!(
            nodes.nodes.iter().collect::<Vec<_>>(),
            ["db-1", "web-1", "web-2"]
        );
        assert_eq!(nodes.label, "nodes db-1 + group web");
        assert_eq!(r.when.hours.unwrap().to_string(), "22:00-06:00");
        assert_eq!(r.when.days.unwrap().to_string(), "sat,sun");
        assert_eq!(
            r.when.repeat,
            Some(Repeat {
                count: 3,
                within_ms: 600_000
            })
        );
        let Action::Chain(chain) = &r.action else {
            panic!("{:?}", r.action)
        };
        assert_eq!(chain.diagnose.deadline_ms, DEFAULT_DIAGNOSE_DEADLINE_MS);
        let fix = chain.fix.as_ref().unwrap();
        assert_eq!(fix.step.deadline_ms, 120_000);
        assert_eq!(
            fix.condition.as_ref().unwrap().to_string(),
            "fact `fixable` is true"
        );
        assert_eq!(chain.confirm_within_ms, Some(DEFAULT_CONFIRM_MS));
        assert_eq!(chain.escalate.as_deref(), Some("ops"));
        assert_eq!(
            crate::action_summary(&r.action),
            "diagnose disk-usage(path={subject}) within 30s → if fact `fixable` is true, fix \
             service-restart(limit={value}, service={fact.service}) within 2m → confirm cleared within 2m → else escalate to ops"
        );
        // Higher priority first.
        assert_eq!(kb.rules()[0].name, "disk");
        assert_eq!(kb.groups()["web"], ["web-1", "web-2"]);
    }

    #[test]
    fn toml_syntax_errors_have_line_and_column() {
        // An unterminated string is noticed at the end of its line.
        let e = refused(
            "[[rule]]\nname = \"cpu\n[rule.match]\n",
            (2, 12),
            "invalid basic string",
        );
        assert_eq!(e.file, "rules.toml");
        assert!(e.to_string().starts_with("rules.toml:2:12: "), "{e}");
        // An unknown field points at its name and lists what was expected.
        let text = format!("{CPU}colour = \"red\"\n{DIAG}");
        let e = refused(&text, (5, 1), "unknown field `colour`");
        assert!(e.reason.contains("expected one of"), "{e}");
    }

    #[test]
    fn unknown_names_point_at_their_text() {
        for (matcher, marker, reason) in [
            (
                "key = \"cpu.totl\"",
                "\"cpu.totl\"",
                "unknown alarm key `cpu.totl`; known keys: `cpu.total`, `fs.used:*`, `load.per-core`",
            ),
            (
                "key = \"fs.*\"",
                "\"fs.*\"",
                "`*` may only end a key family after a colon",
            ),
            (
                "metric = \"cpu\"",
                "\"cpu\"",
                "unknown metric `cpu`; known metrics:",
            ),
            (
                "module = \"cpu-men\"",
                "\"cpu-men\"",
                "unknown module `cpu-men`; known inspectors: `cpu-mem`",
            ),
            (
                "area = \"perf\"",
                "\"perf\"",
                "expected fault, configuration, accounting, performance or security",
            ),
            (
                "severity = \"high\"",
                "\"high\"",
                "`high` is not a severity; expected info, warning",
            ),
            (
                "group = \"db\"",
                "\"db\"",
                "unknown group `db`; defined groups: none",
            ),
            (
                "nodes = [\"web 1\"]",
                "\"web 1\"",
                "is not a valid node name",
            ),
            ("hours = \"8-18\"", "\"8-18\"", "write `HH:MM-HH:MM` in UTC"),
            (
                "days = [\"mon\", \"fry\"]",
                "\"fry\"",
                "`fry` is not a day of the week",
            ),
            (
                "repeat = { count = 0, within = \"1m\" }",
                "0,",
                "repeat count 0 is out of range; expected 1 to 1000",
            ),
            (
                "repeat = { count = 2, within = \"1\" }",
                "\"1\"",
                "repeat within `1` is not a positive duration",
            ),
            (
                "after = { rule = \"nope\", within = \"1m\" }",
                "\"nope\"",
                "unknown rule `nope`",
            ),
            (
                "after = { rule = \"r\", within = \"1m\" }",
                "\"r\",",
                "a rule cannot wait for itself",
            ),
        ] {
            let text = rule(matcher, DIAG);
            refused(&text, pos(&text, marker), reason);
        }
    }

    #[test]
    fn specialists_and_their_arguments_are_checked_against_the_catalog() {
        for (action, marker, reason) in [
            (
                "[rule.diagnose]\nspecialist = \"top-cpus\"\n",
                "\"top-cpus\"",
                "unknown specialist `top-cpus`; known specialists: `disk-usage`, `service-restart`, `top-cpu`",
            ),
            (
                "[rule.diagnose]\nspecialist = \"cpu-mem\"\n",
                "\"cpu-mem\"",
                "(it is a resident module: use `[rule.start]`)",
            ),
            // Missing required argument: at the specialist's name.
            (
                "[rule.diagnose]\nspecialist = \"disk-usage\"\n",
                "\"disk-usage\"",
                "specialist `disk-usage` needs argument `path` (string): the path",
            ),
            (
                "[rule.diagnose]\nspecialist = \"top-cpu\"\nargs = { smaple = \"2s\" }\n",
                "smaple",
                "specialist `top-cpu` has no argument `smaple`; it takes: sample (duration), count (integer)",
            ),
            (
                "[rule.diagnose]\nspecialist = \"top-cpu\"\nargs = { count = \"five\" }\n",
                "\"five\"",
                "argument `count`: `five` is not a whole number (0 or more) (expected integer)",
            ),
            (
                "[rule.diagnose]\nspecialist = \"top-cpu\"\nargs = { count = -1 }\n",
                "-1",
                "`-1` is not a whole number",
            ),
            (
                "[rule.diagnose]\nspecialist = \"top-cpu\"\nargs = { sample = \"soon\" }\n",
                "\"soon\"",
                "(expected duration)",
            ),
            (
                "[rule.diagnose]\nspecialist = \"top-cpu\"\ndeadline = \"2d\"\n",
                "\"2d\"",
                "deadline `2d` is not a positive duration",
            ),
            (
                "[rule.diagnose]\nspecialist = \"top-cpu\"\ndeadline = \"2h\"\n",
                "\"2h\"",
                "deadline `2h` is longer than the limit of 1h",
            ),
            (
                "[rule.start]\nmodule = \"top-cpu\"\n",
                "\"top-cpu\"",
                "(it is a specialist: run it from `[rule.diagnose]`)",
            ),
            (
                "[rule.start]\nmodule = \"link-watch\"\n",
                "\"link-watch\"",
                "module `link-watch` needs configuration key `target`",
            ),
            (
                "[rule.start]\nmodule = \"cpu-mem\"\nconfig = { period = \"often\" }\n",
                "\"often\"",
                "configuration key `period`: `often` is not a positive duration",
            ),
            (
                "[rule.stop]\nmodule = \"cpu\"\n",
                "\"cpu\"",
                "unknown module `cpu`",
            ),
        ] {
            let text = rule("key = \"cpu.total\"", action);
            refused(&text, pos(&text, marker), reason);
        }
    }

    #[test]
    fn placeholders_are_checked_when_the_rule_is_written() {
        for (args, marker, reason) in [
            (
                "{ path = \"{subjct}\" }",
                "\"{subjct}\"",
                "argument `path`: unknown placeholder `{subjct}`; expected one of {id}, {node}, {module}, {area}, {key}, {metric}, {subject}, {severity}, {value}, {threshold}, {message}, {time_ms}",
            ),
            (
                "{ path = \"{fact.dir}\" }",
                "\"{fact.dir}\"",
                "facts of a diagnosis are only known to a `fix` step",
            ),
            (
                "{ path = \"/var/{node\" }",
                "\"/var/{node\"",
                "`{` without its `}`",
            ),
        ] {
            let text = rule(
                "key = \"cpu.total\"",
                &format!("[rule.diagnose]\nspecialist = \"disk-usage\"\nargs = {args}\n"),
            );
            refused(&text, pos(&text, marker), reason);
        }
        // Types: a number field fills a number, not an integer; text fills
        // neither; a fact's type is only known at run time.
        let fix = |args: &str| {
            rule(
                "key = \"cpu.total\"",
                &format!(
                    "{DIAG}[rule.fix]\nspecialist = \"service-restart\"\nargs = {{ service = \"x\", {args} }}\n"
                ),
            )
        };
        kb(&fix("limit = \"{value}\""));
        kb(&fix("limit = \"{fact.limit}\""));
        kb(&fix("limit = \"{time_ms}\""));
        let text = fix("limit = \"{node}\"");
        refused(
            &text,
            pos(&text, "\"{node}\""),
            "argument `limit`: `{node}` is text; expected number",
        );
        let text = fix("limit = \"{value}%\"");
        refused(
            &text,
            pos(&text, "\"{value}%\""),
            "mixes text and placeholders; expected number",
        );
        let text = rule(
            "key = \"cpu.total\"",
            "[rule.diagnose]\nspecialist = \"top-cpu\"\nargs = { count = \"{value}\" }\n",
        );
        refused(
            &text,
            pos(&text, "\"{value}\""),
            "`{value}` is a number; expected integer",
        );
        // A placeholder in a string argument and an escaped brace are fine.
        kb(&rule(
            "key = \"cpu.total\"",
            "[rule.diagnose]\nspecialist = \"disk-usage\"\nargs = { path = \"{{x}} {node}:{subject}\" }\n",
        ));
    }

    #[test]
    fn actions_must_be_whole_and_single() {
        let text = rule("key = \"cpu.total\"", "");
        refused(&text, (2, 8), "needs exactly one action");
        let text = rule(
            "key = \"cpu.total\"",
            &format!("{DIAG}[rule.stop]\nmodule = \"cpu-mem\"\n"),
        );
        refused(&text, (2, 8), "needs exactly one action");
        let text = rule(
            "key = \"cpu.total\"",
            "[rule.stop]\nmodule = \"cpu-mem\"\n[rule.escalate]\nto = \"x\"\n",
        );
        // A misplaced table is pointed at by its header.
        let e = refused(
            &text,
            pos(&text, "[rule.escalate]"),
            "`escalate` belongs to a chain",
        );
        assert_eq!(e.line, 7);
        let text = rule(
            "key = \"cpu.total\"",
            &format!("{DIAG}[rule.confirm]\nwithin = \"1m\"\n"),
        );
        refused(
            &text,
            pos(&text, "[rule.confirm]"),
            "`confirm` waits for a fix",
        );
        let text = rule(
            "key = \"cpu.total\"",
            &format!(
                "{DIAG}[rule.fix]\nspecialist = \"service-restart\"\nequals = \"x\"\nargs = {{ service = \"a\" }}\n"
            ),
        );
        refused(
            &text,
            pos(&text, "\"x\""),
            "`equals` compares a fact; expected `if_fact`",
        );
        let text = rule(
            "key = \"cpu.total\"",
            &format!("{DIAG}[rule.escalate]\nto = \"a\\nb\"\n"),
        );
        refused(&text, pos(&text, "\"a\\nb\""), "expected one line of text");
        let text = "[[rule]]\nname = \"r\"\n[rule.diagnose]\nspecialist = \"top-cpu\"\n";
        refused(text, (2, 8), "has no `[rule.match]` table");
    }

    #[test]
    fn names_are_unique_across_files_and_groups_checked() {
        let files = [
            ("a.toml".to_owned(), format!("{CPU}{DIAG}")),
            ("b.toml".to_owned(), format!("\n{CPU}{DIAG}")),
        ];
        let dup = KnowledgeBase::parse(&files, &catalog()).unwrap_err();
        assert_eq!(dup.len(), 1);
        assert_eq!(
            dup[0].to_string(),
            "b.toml:3:8: rule `cpu` is defined twice (first at a.toml:2); rule names are unique"
        );
        let text = "[[group]]\nname = \"g\"\nnodes = []\n[[group]]\nname = \"h\"\nnodes = [\"a\", \"a\"]\n[[group]]\nname = \"h\"\nnodes = [\"b\"]\n";
        let found = errors(text);
        let got: Vec<(usize, usize)> = found.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(
            got,
            [(3, 9), (6, 15), (8, 8)],
            "{}",
            KbError::Invalid(found.clone())
        );
        assert!(
            found[2]
                .reason
                .contains("group `h` is defined twice (first at rules.toml:5)")
        );
        // A topology at hand: nodes it does not know are refused.
        let mut known = catalog();
        known.nodes = Some(["web-1".to_owned()].into());
        let text = rule("nodes = [\"web-1\", \"web-9\"]", DIAG);
        let found = KnowledgeBase::parse(&[("r.toml".into(), text.clone())], &known).unwrap_err();
        assert_eq!(
            found[0].to_string(),
            format!(
                "r.toml:{}:{}: unknown node `web-9`; it is not in the topology",
                pos(&text, "\"web-9\"").0,
                pos(&text, "\"web-9\"").1
            )
        );
    }

    #[test]
    fn one_error_refuses_the_whole_set_and_every_error_is_reported() {
        let good = format!("{CPU}{DIAG}");
        let files = [
            ("1-good.toml".to_owned(), good.clone()),
            (
                "2-bad.toml".to_owned(),
                rule(
                    "metric = \"nope\"\nseverity = \"loud\"",
                    "[rule.diagnose]\nspecialist = \"disk-usage\"\nargs = { path = \"{nod}\" }\n",
                ),
            ),
            ("3-broken.toml".to_owned(), "[[rule]\n".to_owned()),
            (
                "4-good.toml".to_owned(),
                good.replace("\"cpu\"", "\"cpu2\""),
            ),
        ];
        let all = KnowledgeBase::parse(&files, &catalog()).unwrap_err();
        let lines: Vec<String> = all
            .iter()
            .map(|e| format!("{}:{}:{}", e.file, e.line, e.column))
            .collect();
        assert_eq!(
            lines,
            [
                "2-bad.toml:4:10",
                "2-bad.toml:5:12",
                "2-bad.toml:8:17",
                "3-broken.toml:1:8"
            ],
            "{}",
            KbError::Invalid(all.clone())
        );
        // Without the broken files the rest is accepted.
        let kb = KnowledgeBase::parse(&[files[0].clone(), files[3].clone()], &catalog()).unwrap();
        assert_eq!(kb.rules().len(), 2);
    }

    #[test]
    fn schedules_are_checked() {
        let s = |body: &str| {
            format!(
                "[[group]]\nname = \"core\"\nnodes = [\"core-1\"]\n[[schedule]]\nname = \"s\"\nmodule = \"link-watch\"\nconfig = {{ target = \"x\" }}\n{body}"
            )
        };
        let kb = kb(&s(
            "group = \"core\"\nstart = 2026-12-05T22:00:00Z\nstop = 2026-12-06\n",
        ));
        let sched = &kb.schedules()[0];
        assert_eq!(
            sched.targets,
            Targets::Group {
                name: "core".into(),
                nodes: vec!["core-1".into()]
            }
        );
        assert_eq!(sched.config, [("target".to_owned(), "x".to_owned())]);
        assert_eq!(
            sched.start_ms,
            Some(crate::fixtures::at("2026-12-05T22:00:00Z"))
        );
        assert_eq!(
            sched.stop_ms,
            Some(crate::fixtures::at("2026-12-06T00:00:00Z"))
        );
        let both = crate::fixtures::kb(&s(
            "group = \"core\"\nnodes = [\"web-1\"]\nstart = 2026-12-05\n",
        ));
        assert_eq!(
            both.schedules()[0].targets,
            Targets::Nodes(vec!["core-1".into(), "web-1".into()])
        );
        for (body, marker, reason) in [
            (
                "domain = \"lab\"\n",
                "name = \"s\"",
                "has no date; expected `start`, `stop` or both",
            ),
            (
                "nodes = [\"a\"]\nstart = 2026-12-05T22:00:00\n",
                "2026-12-05T22",
                "start: `2026-12-05T22:00:00` has no offset; add `Z` for UTC",
            ),
            (
                "nodes = [\"a\"]\nstart = 2026-12-05\nstop = 2026-12-05\n",
                "stop =",
                "`stop` is not after `start`",
            ),
            ("start = 2026-12-05\n", "name = \"s\"", "needs its targets"),
            (
                "domain = \"lab\"\ngroup = \"core\"\nstart = 2026-12-05\n",
                "name = \"s\"",
                "needs its targets",
            ),
            (
                "nodes = [\"a\"]\nconfig = { target = \"{node}\" }\nstart = 2026-12-05\n",
                "\"{node}\"",
                "a schedule has no alarm",
            ),
        ] {
            let text = s(body);
            let mut at = pos(&text, marker);
            if marker.starts_with("name") {
                at.1 += 7;
            }
            if marker == "stop =" {
                at.1 += 7;
            }
            if marker.starts_with("\"{node}") {
                // `config` is given twice in that text: the TOML parser refuses it first.
                let found = errors(&text);
                assert!(found[0].reason.contains("duplicate key"), "{found:?}");
                continue;
            }
            refused(&text, at, reason);
        }
    }
}
