//! Specialist runs and the cases the knowledge base opens for alarms.
//!
//! A domain manager whose knowledge base (BCN) matches an alarm opens a
//! [`Case`] for (alarm, rule) and asks the alarm's node to run a specialist
//! ([`RunRequest`]); the node answers through its outbox with a
//! [`RunResult`]. Every run has an id derived from (alarm, rule, step), so a
//! node that already ran it refuses a second run, whoever asks: a manager
//! that restarted, or its standby. The case, with every result, travels up
//! to the top manager (BIG) each time it changes.

use crate::Bundle;
use crate::message::{Alarm, AlarmRefused, MAX_ALARM_TEXT, Provenance};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which step of a rule's chain a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Diagnose,
    Fix,
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepKind::Diagnose => "diagnose",
            StepKind::Fix => "fix",
        })
    }
}

/// The id of the run of `step` of `rule` for the alarm `alarm_id`
/// (`<node>/<module>/<seq>#<rule>#<step>`): in the alarm's node's id space,
/// so the node's results are bound to their origin like its alarms.
pub fn run_id(alarm_id: &str, rule: &str, step: StepKind) -> String {
    format!("{alarm_id}#{rule}#{step}")
}

/// The rule and step of run `id` for the alarm `alarm_id`: `None` when the
/// id is not one [`run_id`] makes for that alarm.
pub fn run_of<'a>(id: &'a str, alarm_id: &str) -> Option<(&'a str, StepKind)> {
    let (rule, step) = id
        .strip_prefix(alarm_id)?
        .strip_prefix('#')?
        .rsplit_once('#')?;
    let step = match step {
        "diagnose" => StepKind::Diagnose,
        "fix" => StepKind::Fix,
        _ => return None,
    };
    (!rule.is_empty()).then_some((rule, step))
}

/// Parent → node: run this specialist once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// See [`run_id`]; the node runs each id at most once.
    pub id: String,
    /// The specialist, with its bytes only when the node lacks that hash.
    pub module: Bundle,
    pub args: Vec<(String, String)>,
    /// The rule's deadline for the whole run (the module's own
    /// `max_time_per_call_ms` still applies).
    pub deadline_ms: u64,
    /// The alarm the run answers. The node gives it back with the result,
    /// so a station that takes the domain over in the middle of a run
    /// (fail-over) can take the case over too.
    pub alarm: Alarm,
}

impl RunRequest {
    /// Whether `node` may run this: the alarm is the node's own, and the
    /// id is a run of it. The parent's words go into the node's log, its
    /// database and its result; anything else would make a result the
    /// parent refuses at every resend.
    pub fn check_for(&self, node: &str) -> Result<(), ResultRefused> {
        check_run(&self.id, &self.alarm, node)
    }
}

fn check_run(id: &str, alarm: &Alarm, node: &str) -> Result<(), ResultRefused> {
    alarm.check_origin(node).map_err(ResultRefused::Alarm)?;
    if id.len() > MAX_ALARM_TEXT || run_of(id, &alarm.id).is_none() {
        return Err(ResultRefused::ForeignId(id.len()));
    }
    Ok(())
}

/// How a run ended. (Externally tagged, as every enum on the wire: bincode
/// cannot read internally tagged ones.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// The specialist returned a diagnosis.
    Diagnosed {
        summary: String,
        facts: Vec<(String, String)>,
    },
    /// The specialist returned an error, trapped, or could not be loaded.
    Failed { reason: String },
    /// It ran past its deadline and was stopped.
    TimedOut { reason: String },
    /// The node would not run it: its policy refuses a capability, or the
    /// module is not a specialist, or its signature is refused.
    Refused { reason: String },
    /// The node had already run this id: the result went up then.
    AlreadyRan,
}

impl RunOutcome {
    /// The outcome cut to what a manager accepts ([`RunResult::check_origin`]):
    /// at most [`MAX_FACTS`] facts, every text escaped and cut to fit. A
    /// node applies it to what a module returned before queuing it, so a
    /// buggy specialist cannot make a result its manager refuses — which
    /// would close the node's session at every resend.
    pub fn bounded(self) -> RunOutcome {
        // Room for the excerpt's "…(+N bytes)" mark.
        let cut = |text: String| crate::text::excerpt(&text, MAX_ALARM_TEXT - 32);
        match self {
            RunOutcome::Diagnosed { summary, facts } => RunOutcome::Diagnosed {
                summary: cut(summary),
                facts: facts
                    .into_iter()
                    .take(MAX_FACTS)
                    .map(|(k, v)| (cut(k), cut(v)))
                    .collect(),
            },
            RunOutcome::Failed { reason } => RunOutcome::Failed {
                reason: cut(reason),
            },
            RunOutcome::TimedOut { reason } => RunOutcome::TimedOut {
                reason: cut(reason),
            },
            RunOutcome::Refused { reason } => RunOutcome::Refused {
                reason: cut(reason),
            },
            RunOutcome::AlreadyRan => RunOutcome::AlreadyRan,
        }
    }

    /// One word, for tables and statistics.
    pub fn label(&self) -> &'static str {
        match self {
            RunOutcome::Diagnosed { .. } => "diagnosed",
            RunOutcome::Failed { .. } => "failed",
            RunOutcome::TimedOut { .. } => "timed-out",
            RunOutcome::Refused { .. } => "refused",
            RunOutcome::AlreadyRan => "already-ran",
        }
    }

    /// One line for a person.
    pub fn text(&self) -> String {
        match self {
            RunOutcome::Diagnosed { summary, .. } => summary.clone(),
            RunOutcome::Failed { reason }
            | RunOutcome::TimedOut { reason }
            | RunOutcome::Refused { reason } => reason.clone(),
            RunOutcome::AlreadyRan => "already ran on this node".to_owned(),
        }
    }
}

/// Most facts a result keeps, and the longest text of any of its strings.
pub const MAX_FACTS: usize = 64;

/// Node → parent (through the outbox): how one run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The [`RunRequest::id`].
    pub id: String,
    pub node: String,
    pub specialist: String,
    /// The code that ran (empty when it could not be loaded).
    pub provenance: Provenance,
    pub outcome: RunOutcome,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub finished_ms: u64,
    /// The alarm the run answered ([`RunRequest::alarm`]).
    pub alarm: Alarm,
}

/// Why a manager refuses a run result a child sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultRefused {
    #[error("a run result about another node ({0} bytes of name)")]
    OtherNode(usize),
    #[error("a run id that is not a run of its alarm ({0} bytes)")]
    ForeignId(usize),
    #[error("a run about an alarm that is not the node's: {0}")]
    Alarm(AlarmRefused),
    #[error("a run result with {0} facts (at most {MAX_FACTS})")]
    TooManyFacts(usize),
    #[error("a run result whose {field} has {len} bytes (at most {MAX_ALARM_TEXT})")]
    TooLong { field: &'static str, len: usize },
}

impl RunResult {
    /// Whether this result may come from `node`: about it, a run of one of
    /// its alarms, and every text bounded.
    pub fn check_origin(&self, node: &str) -> Result<(), ResultRefused> {
        if self.node != node {
            return Err(ResultRefused::OtherNode(self.node.len()));
        }
        check_run(&self.id, &self.alarm, node)?;
        let long = |field: &'static str, text: &str| {
            if text.len() > MAX_ALARM_TEXT {
                Err(ResultRefused::TooLong {
                    field,
                    len: text.len(),
                })
            } else {
                Ok(())
            }
        };
        long("id", &self.id)?;
        long("specialist", &self.specialist)?;
        match &self.outcome {
            RunOutcome::Diagnosed { summary, facts } => {
                long("summary", summary)?;
                if facts.len() > MAX_FACTS {
                    return Err(ResultRefused::TooManyFacts(facts.len()));
                }
                for (k, v) in facts {
                    long("fact", k)?;
                    long("fact", v)?;
                }
            }
            RunOutcome::Failed { reason }
            | RunOutcome::TimedOut { reason }
            | RunOutcome::Refused { reason } => long("reason", reason)?,
            RunOutcome::AlreadyRan => {}
        }
        Ok(())
    }
}

/// Where a case stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaseState {
    /// A specialist was asked to run (`step`), no result yet.
    Running { step: StepKind },
    /// Diagnosed; nothing more to do.
    Diagnosed,
    /// Fixed; waiting for the alarm to clear until `until_ms`.
    Confirming { until_ms: u64 },
    /// Fixed, and the alarm cleared.
    FixedConfirmed,
    /// The chain ended without a confirmed fix and a person was told.
    Escalated { to: String, reason: String },
    /// The chain ended without a confirmed fix, nobody to tell.
    Failed { reason: String },
}

impl CaseState {
    pub fn label(&self) -> &'static str {
        match self {
            CaseState::Running {
                step: StepKind::Diagnose,
            } => "diagnosing",
            CaseState::Running {
                step: StepKind::Fix,
            } => "fixing",
            CaseState::Diagnosed => "diagnosed",
            CaseState::Confirming { .. } => "confirming",
            CaseState::FixedConfirmed => "fixed",
            CaseState::Escalated { .. } => "escalated",
            CaseState::Failed { .. } => "failed",
        }
    }

    /// Whether the case is over.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            CaseState::Running { .. } | CaseState::Confirming { .. }
        )
    }
}

/// One rule acting on one alarm, with every run so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// The alarm's id (`<node>/<module>/<seq>`).
    pub alarm_id: String,
    pub node: String,
    /// The alarm's key: a clear of the same node and key confirms a fix.
    pub key: String,
    pub rule: String,
    /// Specialist of each step, in order: diagnose, then fix.
    pub steps: Vec<(StepKind, String)>,
    pub results: Vec<(StepKind, RunResult)>,
    pub state: CaseState,
    /// When the alarm cleared while its fix was running (its result not
    /// in yet): the fix is confirmed as soon as it succeeds.
    pub cleared_ms: Option<u64>,
    /// The activation generation of the station that wrote this revision:
    /// after a fail-over the station serving the domain takes over the
    /// cases whose runs answer to it, and what the one before it still
    /// writes about them loses ([`Case::supersedes`]).
    pub generation: u64,
    /// Increases with every change a station makes.
    pub revision: u64,
    pub opened_ms: u64,
    pub updated_ms: u64,
}

impl Case {
    /// `<alarm id>#<rule>`: one case per (alarm, rule).
    pub fn key(&self) -> String {
        format!("{}#{}", self.alarm_id, self.rule)
    }

    /// Whether a receiver holding `held` keeps this one instead: a later
    /// activation's, or a later revision of the same activation's.
    pub fn supersedes(&self, held: &Case) -> bool {
        (self.generation, self.revision) > (held.generation, held.revision)
    }

    /// Whether a case may come from a station whose subtree holds `node`:
    /// its runs are that node's, and its texts are bounded.
    pub fn check_origin(&self) -> Result<(), ResultRefused> {
        let node = &self.node;
        if !self
            .alarm_id
            .strip_prefix(node.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return Err(ResultRefused::ForeignId(self.alarm_id.len()));
        }
        if self.results.len() > 2 || self.steps.len() > 2 {
            return Err(ResultRefused::TooManyFacts(self.results.len()));
        }
        for text in [&self.alarm_id, &self.rule, &self.key] {
            if text.len() > MAX_ALARM_TEXT {
                return Err(ResultRefused::TooLong {
                    field: "case",
                    len: text.len(),
                });
            }
        }
        for (_, r) in &self.results {
            r.check_origin(node)?;
        }
        Ok(())
    }

    /// The latest result, in one line: `top-cpu: diagnosed: pid 4242 ...`.
    pub fn latest(&self) -> Option<String> {
        self.results.last().map(|(_, r)| {
            format!(
                "{}: {}: {}",
                r.specialist,
                r.outcome.label(),
                crate::text::excerpt(&r.outcome.text(), 200)
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::message::{RuntimeAlarm, Severity};

    /// A raised alarm of `node` with the id `id` (`<node>/<module>/<n>`).
    pub(crate) fn alarm(node: &str, id: &str) -> Alarm {
        let mut parts = id.splitn(3, '/').skip(1);
        let (module, serial) = (parts.next().unwrap(), parts.next().unwrap());
        RuntimeAlarm {
            node,
            module,
            serial,
            area: crate::manifest::Area::Performance,
            key: "cpu.total",
            metric: "cpu.total-percent",
            subject: "",
            severity: Severity::Major,
            message: "CPU high",
            time_ms: 1,
        }
        .alarm(true)
    }

    fn result(node: &str, id: &str) -> RunResult {
        let alarm_id = id.split_once('#').map_or(id, |(a, _)| a);
        RunResult {
            alarm: alarm(node, alarm_id),
            id: id.into(),
            node: node.into(),
            specialist: "top-cpu".into(),
            provenance: Provenance::default(),
            outcome: RunOutcome::Diagnosed {
                summary: "pid 42 uses 99% CPU".into(),
                facts: vec![("pid".into(), "42".into())],
            },
            started_ms: 1,
            finished_ms: 2,
        }
    }

    #[test]
    fn a_result_is_bound_to_its_node() {
        let id = run_id("n1/cpu-mem/7", "web-cpu", StepKind::Diagnose);
        assert_eq!(id, "n1/cpu-mem/7#web-cpu#diagnose");
        assert_eq!(result("n1", &id).check_origin("n1"), Ok(()));
        assert!(matches!(
            result("n1", &id).check_origin("n2"),
            Err(ResultRefused::OtherNode(_))
        ));
        // Another node's alarm, or an id that is not a run of the alarm.
        assert!(matches!(
            result("n10", "n10/cpu-mem/7#r#diagnose").check_origin("n10"),
            Ok(())
        ));
        let mut foreign = result("n1", &id);
        foreign.alarm = alarm("n10", "n10/cpu-mem/7");
        assert!(matches!(
            foreign.check_origin("n1"),
            Err(ResultRefused::Alarm(_))
        ));
        for id in [
            "n1/cpu-mem/8#web-cpu#diagnose",
            "n1/cpu-mem/7#web-cpu#cure",
            "n1/cpu-mem/7##diagnose",
            "n1/cpu-mem/7",
        ] {
            let mut other = result("n1", id);
            other.alarm = alarm("n1", "n1/cpu-mem/7");
            assert!(
                matches!(other.check_origin("n1"), Err(ResultRefused::ForeignId(_))),
                "{id}"
            );
        }
        assert_eq!(
            run_of("n1/cpu-mem/7#a#b#fix", "n1/cpu-mem/7"),
            Some(("a#b", StepKind::Fix))
        );
        let mut many = result("n1", &id);
        many.outcome = RunOutcome::Diagnosed {
            summary: String::new(),
            facts: vec![("k".into(), "v".into()); MAX_FACTS + 1],
        };
        assert!(matches!(
            many.check_origin("n1"),
            Err(ResultRefused::TooManyFacts(_))
        ));
        // Too many facts, and texts too long, as a buggy module returns them.
        many.outcome = RunOutcome::Diagnosed {
            summary: "s\n".repeat(MAX_ALARM_TEXT),
            facts: vec![("k".into(), "v".repeat(MAX_ALARM_TEXT + 1)); MAX_FACTS + 1],
        };
        assert!(many.check_origin("n1").is_err());
        // What a node queues after bounding it is accepted.
        many.outcome = many.outcome.bounded();
        assert_eq!(many.check_origin("n1"), Ok(()));
        let RunOutcome::Diagnosed { summary, facts } = &many.outcome else {
            unreachable!()
        };
        assert_eq!(facts.len(), MAX_FACTS);
        assert!(!summary.contains('\n'), "escaped");
    }

    #[test]
    fn a_case_is_checked_with_its_results() {
        let id = run_id("n1/cpu-mem/7", "web-cpu", StepKind::Diagnose);
        let mut case = Case {
            alarm_id: "n1/cpu-mem/7".into(),
            node: "n1".into(),
            key: "cpu.total".into(),
            rule: "web-cpu".into(),
            steps: vec![(StepKind::Diagnose, "top-cpu".into())],
            results: vec![(StepKind::Diagnose, result("n1", &id))],
            state: CaseState::Diagnosed,
            cleared_ms: None,
            generation: 3,
            revision: 2,
            opened_ms: 1,
            updated_ms: 2,
        };
        assert_eq!(case.check_origin(), Ok(()));
        // A later activation's case wins over any revision of an earlier one.
        let older = Case {
            generation: 2,
            revision: 9,
            ..case.clone()
        };
        assert!(case.supersedes(&older) && !older.supersedes(&case));
        assert!(!case.supersedes(&case));
        assert_eq!(case.key(), "n1/cpu-mem/7#web-cpu");
        assert_eq!(
            case.latest().as_deref(),
            Some("top-cpu: diagnosed: pid 42 uses 99% CPU")
        );
        // Both travel in bincode: every variant must decode.
        for state in [
            CaseState::Running {
                step: StepKind::Fix,
            },
            CaseState::Diagnosed,
            CaseState::Confirming { until_ms: 9 },
            CaseState::FixedConfirmed,
            CaseState::Escalated {
                to: "ops".into(),
                reason: "r".into(),
            },
            CaseState::Failed { reason: "r".into() },
        ] {
            let mut c = case.clone();
            c.state = state;
            let bytes = crate::wire::encode_value(&crate::wire::Upward::Case(c.clone()));
            let back: crate::wire::Upward = crate::wire::decode_value(&bytes).unwrap();
            assert_eq!(back, crate::wire::Upward::Case(c));
        }
        case.results[0].1.node = "n2".into();
        assert!(case.check_origin().is_err());
    }
}
