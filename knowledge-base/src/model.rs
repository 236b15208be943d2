//! The rule set once parsed and checked: what a rule matches, what it
//! does, and what is scheduled. Plain data with no I/O; the dispatcher reads
//! these to act on a [`crate::Decision`].

use crate::time::{Days, Hours};
use agad_protocol::Area;
use agad_protocol::message::{Alarm, Severity};
use std::collections::BTreeSet;
use std::fmt;

/// Where a rule, group or schedule was written (for explanations and
/// statistics: `rules/cpu.toml:12`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One `[[rule]]`: conditions on an alarm and what to do when they hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique across the rule set.
    pub name: String,
    pub origin: Origin,
    /// Higher first; equal priorities keep file order (files by name).
    pub priority: i64,
    /// Whether evaluation goes on to later rules after this one matched
    /// (`continue = true`); by default the first match is the only one.
    pub continues: bool,
    pub description: Option<String>,
    pub when: Match,
    pub action: Action,
}

/// The conditions of a rule; every one that is set must hold. Checked in
/// the order of the fields, so an explanation names the first that failed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Match {
    pub area: Option<Area>,
    pub key: Option<KeyPattern>,
    pub metric: Option<String>,
    /// The module that raised the alarm.
    pub module: Option<String>,
    /// The alarm's severity is at least this.
    pub min_severity: Option<Severity>,
    pub nodes: Option<NodeSet>,
    /// UTC time of day of the evaluation.
    pub hours: Option<Hours>,
    /// UTC day of the week of the evaluation.
    pub days: Option<Days>,
    pub repeat: Option<Repeat>,
    pub after: Option<After>,
}

/// An alarm key as a rule names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPattern {
    /// This key only (`cpu.total`, `fs.used:/var`).
    Exact(String),
    /// Every key that starts with this prefix, which ends in a colon
    /// (`fs.used:*` is `Prefix("fs.used:")`).
    Prefix(String),
}

impl KeyPattern {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyPattern::Exact(k) => k == key,
            KeyPattern::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPattern::Exact(k) => f.write_str(k),
            KeyPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Nodes a rule applies to: listed by name, a group's members, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSet {
    /// How the rule wrote it (`group web`, `nodes web-1, web-2`).
    pub label: String,
    pub nodes: BTreeSet<String>,
}

/// Fired at least `count` times within `within_ms` on the same node with
/// the same key, this alarm included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    pub count: u32,
    pub within_ms: u64,
}

/// Only if rule `rule` acted (produced a decision) on the same node within
/// `within_ms` before this evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub rule: String,
    pub within_ms: u64,
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Diagnose, maybe fix, confirm, escalate.
    Chain(Chain),
    /// Start a resident module on the alarm's node (a conditional rule:
    /// "when X fired 5 times, start inspector Y there").
    Start(StartModule),
    /// Stop a resident module on the alarm's node.
    Stop { module: String },
}

/// diagnose → if the diagnosis says so, fix → wait for the inspector to
/// clear the alarm → escalate to a person when it was not confirmed fixed.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    pub diagnose: Step,
    pub fix: Option<Fix>,
    /// How long after the fix the alarm must have cleared (a clear of the
    /// same node and key); set whenever `fix` is.
    pub confirm_within_ms: Option<u64>,
    /// Who is told when the chain ends without a confirmed fix: the
    /// diagnosis failed or timed out, no fix applied, the fix failed, or
    /// the alarm did not clear in time. `None`: the outcome is only
    /// recorded with the alarm.
    pub escalate: Option<String>,
}

/// One specialist run.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub specialist: String,
    /// Sorted by argument name.
    pub args: Vec<(String, Template)>,
    pub deadline_ms: u64,
}

impl Step {
    /// The arguments for `alarm` (and the diagnosis' facts, for a fix).
    pub fn render_args(
        &self,
        alarm: &Alarm,
        facts: &[(String, String)],
    ) -> Result<Vec<(String, String)>, MissingFact> {
        self.args
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.render(alarm, facts)?)))
            .collect()
    }
}

/// A fixing specialist and when to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    pub step: Step,
    /// `None`: whenever the diagnosis succeeded.
    pub condition: Option<FactCondition>,
}

/// A condition on the diagnosis' facts (WIT `diagnosis.facts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactCondition {
    pub fact: String,
    /// `None`: the fact is present and true (`true`, `yes`, `1`).
    pub equals: Option<String>,
}

impl FactCondition {
    pub fn holds(&self, facts: &[(String, String)]) -> bool {
        let Some((_, value)) = facts.iter().find(|(k, _)| *k == self.fact) else {
            return false;
        };
        match &self.equals {
            Some(expected) => value == expected,
            None => matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "true" | "yes" | "1"
            ),
        }
    }
}

impl fmt::Display for FactCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.equals {
            Some(v) => write!(f, "fact `{}` = `{v}`", self.fact),
            None => write!(f, "fact `{}` is true", self.fact),
        }
    }
}

/// Start a resident module.
#[derive(Debug, Clone, PartialEq)]
pub struct StartModule {
    pub module: String,
    /// Sorted by key.
    pub config: Vec<(String, Template)>,
    /// Stop it again after this long; `None`: it stays.
    pub for_ms: Option<u64>,
}

/// An alarm field a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Id,
    Node,
    Module,
    Area,
    Key,
    Metric,
    Subject,
    Severity,
    Value,
    Threshold,
    Message,
    TimeMs,
}

impl Field {
    pub const ALL: [Field; 12] = [
        Field::Id,
        Field::Node,
        Field::Module,
        Field::Area,
        Field::Key,
        Field::Metric,
        Field::Subject,
        Field::Severity,
        Field::Value,
        Field::Threshold,
        Field::Message,
        Field::TimeMs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Node => "node",
            Field::Module => "module",
            Field::Area => "area",
            Field::Key => "key",
            Field::Metric => "metric",
            Field::Subject => "subject",
            Field::Severity => "severity",
            Field::Value => "value",
            Field::Threshold => "threshold",
            Field::Message => "message",
            Field::TimeMs => "time_ms",
        }
    }

    pub fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether the field is always a number (`value`, `threshold`,
    /// `time_ms`), so an argument of a numeric type may take it whole.
    pub fn numeric(self) -> Option<agad_protocol::ConfigType> {
        use agad_protocol::ConfigType;
        match self {
            Field::Value | Field::Threshold => Some(ConfigType::Number),
            Field::TimeMs => Some(ConfigType::Integer),
            _ => None,
        }
    }

    fn value(self, alarm: &Alarm) -> String {
        match self {
            Field::Id => alarm.id.clone(),
            Field::Node => alarm.node.clone(),
            Field::Module => alarm.module.clone(),
            Field::Area => area_name(alarm.area).to_owned(),
            Field::Key => alarm.key.clone(),
            Field::Metric => alarm.metric.clone(),
            Field::Subject => alarm.subject.clone(),
            Field::Severity => severity_name(alarm.severity).to_owned(),
            Field::Value => alarm.value.to_string(),
            Field::Threshold => alarm.threshold.to_string(),
            Field::Message => alarm.message.clone(),
            Field::TimeMs => alarm.time_ms.to_string(),
        }
    }
}

/// A piece of an argument value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `{node}`, `{value}`...
    Field(Field),
    /// `{fact.NAME}`: a fact of the diagnosis (fix steps only).
    Fact(String),
}

/// An argument value with `{placeholders}`; `{{` and `}}` are literal
/// braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

/// A fix argument names a fact the diagnosis did not report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the diagnosis has no fact `{0}`")]
pub struct MissingFact(pub String);

impl Template {
    /// Text without placeholders.
    pub fn literal(text: &str) -> Template {
        Template {
            parts: vec![Part::Text(text.to_owned())],
        }
    }

    /// Splits `text` into parts; the error completes "argument ...". Facts
    /// are refused unless `facts_allowed` (only a fix has a diagnosis).
    pub fn parse(text: &str, facts_allowed: bool) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let brace = &rest[at..];
            if let Some(after) = brace.strip_prefix("{{") {
                literal.push('{');
                rest = after;
                continue;
            }
            if let Some(after) = brace.strip_prefix("}}") {
                literal.push('}');
                rest = after;
                continue;
            }
            if brace.starts_with('}') {
                return Err(format!(
                    "`{}`: a lone `}}` (write `}}}}` for a literal brace)",
                    text.escape_debug()
                ));
            }
            let Some(end) = brace.find('}') else {
                return Err(format!(
                    "`{}`: `{{` without its `}}` (write `{{{{` for a literal brace)",
                    text.escape_debug()
                ));
            };
            let name = &brace[1..end];
            let part = if let Some(fact) = name.strip_prefix("fact.") {
                if !facts_allowed {
                    return Err(format!(
                        "`{{{name}}}`: facts of a diagnosis are only known to a `fix` step"
                    ));
                }
                if fact.is_empty() {
                    return Err("`{fact.}` names no fact".to_owned());
                }
                Part::Fact(fact.to_owned())
            } else if let Some(field) = Field::parse(name) {
                Part::Field(field)
            } else {
                let known: Vec<String> = Field::ALL
                    .iter()
                    .map(|f| format!("{{{}}}", f.name()))
                    .collect();
                let facts = if facts_allowed { ", {fact.NAME}" } else { "" };
                return Err(format!(
                    "unknown placeholder `{{{}}}`; expected one of {}{facts}",
                    name.escape_debug(),
                    known.join(", ")
                ));
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &brace[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() || parts.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// The value for `alarm`, with `facts` from the diagnosis (empty for a
    /// diagnosis step, which has none).
    pub fn render(&self, alarm: &Alarm, facts: &[(String, String)]) -> Result<String, MissingFact> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(&f.value(alarm)),
                Part::Fact(name) => {
                    let (_, v) = facts
                        .iter()
                        .find(|(k, _)| k == name)
                        .ok_or_else(|| MissingFact(name.clone()))?;
                    out.push_str(v);
                }
            }
        }
        Ok(out)
    }

    /// The text itself, when there is no placeholder.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => f.write_str(&t.replace('{', "{{").replace('}', "}}"))?,
                Part::Field(field) => write!(f, "{{{}}}", field.name())?,
                Part::Fact(name) => write!(f, "{{fact.{name}}}")?,
            }
        }
        Ok(())
    }
}

/// One `[[schedule]]`: a resident module started and/or stopped at dates.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub origin: Origin,
    pub module: String,
    /// Sorted by key; literal values (there is no alarm to take them from).
    pub config: Vec<(String, String)>,
    pub targets: Targets,
    /// Milliseconds since the Unix epoch.
    pub start_ms: Option<u64>,
    pub stop_ms: Option<u64>,
}

impl Schedule {
    /// Whether the module should be running at `now_ms` by this schedule:
    /// its start date has come and its stop date (if any) has not. A
    /// schedule with only a stop date says nothing about running, so it is
    /// never active.
    pub fn active_at(&self, now_ms: u64) -> bool {
        self.start_ms.is_some_and(|s| s <= now_ms) && self.stop_ms.is_none_or(|s| now_ms < s)
    }
}

/// Where a schedule applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    Nodes(Vec<String>),
    /// A group of the rule set, resolved to its members.
    Group {
        name: String,
        nodes: Vec<String>,
    },
    /// Every node of a domain (resolved by the domain's manager).
    Domain(String),
}

/// Start or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start,
    Stop,
}

/// A scheduled start or stop that has come due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Due<'kb> {
    pub schedule: &'kb Schedule,
    pub transition: Transition,
    /// When it was due (milliseconds since the Unix epoch).
    pub at_ms: u64,
}

pub fn area_name(area: Area) -> &'static str {
    match area {
        Area::Fault => "fault",
        Area::Configuration => "configuration",
        Area::Accounting => "accounting",
        Area::Performance => "performance",
        Area::Security => "security",
    }
}

pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Minor => "minor",
        Severity::Major => "major",
        Severity::Critical => "critical",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::message::{Comparison, Provenance};

    pub(crate) fn alarm() -> Alarm {
        Alarm {
            id: "web-1/disk-space/7".into(),
            node: "web-1".into(),
            module: "disk-space".into(),
            provenance: Provenance::default(),
            area: Area::Performance,
            key: "fs.used:/var".into(),
            metric: "fs.used-percent".into(),
            subject: "/var".into(),
            severity: Severity::Major,
            raised: true,
            value: 97.5,
            threshold: 90.0,
            comparison: Comparison::Above,
            message: "full".into(),
            time_ms: 1000,
        }
    }

    #[test]
    fn templates_render_alarm_fields_and_facts() {
        let t = Template::parse("{node}:{subject} at {value}% {{literal}}", false).unwrap();
        assert_eq!(
            t.render(&alarm(), &[]).unwrap(),
            "web-1:/var at 97.5% {literal}"
        );
        assert_eq!(t.to_string(), "{node}:{subject} at {value}% {{literal}}");
        let fix = Template::parse("restart {fact.service}", true).unwrap();
        let facts = [("service".to_owned(), "nginx".to_owned())];
        assert_eq!(fix.render(&alarm(), &facts).unwrap(), "restart nginx");
        assert_eq!(
            fix.render(&alarm(), &[]),
            Err(MissingFact("service".into()))
        );
        assert_eq!(Template::parse("", false).unwrap().as_literal(), Some(""));
        assert_eq!(
            Template::parse("plain", false).unwrap().as_literal(),
            Some("plain")
        );
    }

    #[test]
    fn bad_placeholders_are_refused() {
        let err = Template::parse("{nodes}", false).unwrap_err();
        assert!(
            err.starts_with("unknown placeholder `{nodes}`; expected one of {id}, {node}"),
            "{err}"
        );
        assert!(
            Template::parse("{fact.x}", false)
                .unwrap_err()
                .contains("only known to a `fix`")
        );
        assert!(
            Template::parse("{node", false)
                .unwrap_err()
                .contains("without its")
        );
        assert!(Template::parse("a}b", false).unwrap_err().contains("lone"));
        assert!(Template::parse("{fact.}", true).is_err());
    }

    #[test]
    fn fact_conditions() {
        let facts = [
            ("fixable".to_owned(), "yes".to_owned()),
            ("cause".to_owned(), "log-growth".to_owned()),
        ];
        let truthy = |f: &str| FactCondition {
            fact: f.into(),
            equals: None,
        };
        assert!(truthy("fixable").holds(&facts));
        assert!(!truthy("cause").holds(&facts));
        assert!(!truthy("absent").holds(&facts));
        let eq = FactCondition {
            fact: "cause".into(),
            equals: Some("log-growth".into()),
        };
        assert!(eq.holds(&facts));
        assert!(
            !FactCondition {
                equals: Some("other".into()),
                ..eq
            }
            .holds(&facts)
        );
    }
}
