//! Building threshold alarms and tracking which of them are raised.
//!
//! [`Check`] describes one threshold condition; [`Alarms`] runs every
//! condition of a module through [`Hysteresis`] and remembers which alarms are
//! raised, with enough detail (metric, subject, severity) to clear them later.
//! That set is what a module persists through the `state` capability, so that
//! after a restart it neither raises again an alarm the manager already has
//! nor forgets to clear it.
//!
//! Persisted format (see [`Alarms::encode`]): one line per raised alarm,
//! `key TAB metric TAB subject TAB severity TAB comparison TAB threshold`, with
//! `%`, tab and newline in fields written as `%25`, `%09`, `%0A`.

use crate::hysteresis::{Hysteresis, Transition};
use crate::types::{Alarm, Comparison, Severity};
use std::collections::BTreeMap;

/// State key under which [`Alarms::restore_from_state`] and
/// [`Alarms::persist`] keep the raised set.
pub const ACTIVE_ALARMS_STATE_KEY: &str = "agad.active-alarms";

impl Severity {
    /// The lower-case word (`major`), as manifests and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

impl Comparison {
    /// The word configuration uses (`above`, `not-equal`).
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Above => "above",
            Comparison::Below => "below",
            Comparison::Equal => "equal",
            Comparison::NotEqual => "not-equal",
        }
    }

    /// Words for a message: "above", "below", "equal to", "not equal to".
    pub fn words(self) -> &'static str {
        match self {
            Comparison::Above => "above",
            Comparison::Below => "below",
            Comparison::Equal => "equal to",
            Comparison::NotEqual => "not equal to",
        }
    }

    /// Whether `value` breaches `threshold` under this comparison. Equality
    /// allows a relative error of one part in 10⁹ so that a gauge read as
    /// text or through a division still compares equal.
    pub fn breached(self, value: f64, threshold: f64) -> bool {
        let equal = (value - threshold).abs() <= 1e-9 * threshold.abs().max(1.0);
        match self {
            Comparison::Above => value > threshold,
            Comparison::Below => value < threshold,
            Comparison::Equal => equal,
            Comparison::NotEqual => !equal,
        }
    }
}

/// Starts an [`Alarm`] with the given key and metric; everything else has a
/// neutral default (no subject, major, above 0) until set.
pub fn alarm(key: impl Into<String>, metric: impl Into<String>) -> AlarmBuilder {
    AlarmBuilder {
        alarm: Alarm {
            key: key.into(),
            metric: metric.into(),
            subject: String::new(),
            severity: Severity::Major,
            raised: true,
            value: 0.0,
            threshold: 0.0,
            comparison: Comparison::Above,
            message: String::new(),
        },
    }
}

/// An [`Alarm`] being built by [`alarm()`]; finish with
/// [`AlarmBuilder::raised`], [`AlarmBuilder::cleared`] or [`AlarmBuilder::build`].
#[derive(Debug, Clone)]
pub struct AlarmBuilder {
    alarm: Alarm,
}

impl AlarmBuilder {
    /// What the alarm is about on the node (`/var`, `eth0`); empty for the host itself.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.alarm.subject = subject.into();
        self
    }
    /// How bad it is.
    pub fn severity(mut self, severity: Severity) -> Self {
        self.alarm.severity = severity;
        self
    }
    /// The value that crossed the threshold (or came back).
    pub fn value(mut self, value: f64) -> Self {
        self.alarm.value = value;
        self
    }
    /// What the value was compared with, and how.
    pub fn threshold(mut self, comparison: Comparison, threshold: f64) -> Self {
        self.alarm.comparison = comparison;
        self.alarm.threshold = threshold;
        self
    }
    /// The one line a person reads.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.alarm.message = message.into();
        self
    }
    /// The alarm, as the start of its condition.
    pub fn raised(mut self) -> Alarm {
        self.alarm.raised = true;
        self.alarm
    }
    /// The alarm, as the end of its condition.
    pub fn cleared(mut self) -> Alarm {
        self.alarm.raised = false;
        self.alarm
    }
    /// The alarm, raised or cleared as `raised` says.
    pub fn build(mut self, raised: bool) -> Alarm {
        self.alarm.raised = raised;
        self.alarm
    }
}

/// One threshold condition of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Alarm key, unique within the module (`fs.used:/var`).
    pub key: String,
    /// The series compared (`fs.used-percent`), as summaries name it.
    pub metric: String,
    /// What on the node (`/var`); empty for the host itself.
    pub subject: String,
    /// Severity of the alarm it raises.
    pub severity: Severity,
    /// How the value is compared with [`Check::threshold`](Check#structfield.threshold).
    pub comparison: Comparison,
    /// The limit.
    pub threshold: f64,
    /// Unit appended to values in generated messages (`%`, `/s`).
    pub unit: String,
    /// Per-check hysteresis counts; `None` uses the tracker's.
    pub raise_after: Option<u32>,
    /// Per-check clear count; `None` uses the tracker's.
    pub clear_after: Option<u32>,
}

impl Check {
    /// An `above 0`, major condition on the host itself until refined.
    pub fn new(key: impl Into<String>, metric: impl Into<String>) -> Check {
        Check {
            key: key.into(),
            metric: metric.into(),
            subject: String::new(),
            severity: Severity::Major,
            comparison: Comparison::Above,
            threshold: 0.0,
            unit: String::new(),
            raise_after: None,
            clear_after: None,
        }
    }
    /// Sets [`Check::subject`](Check#structfield.subject).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }
    /// Sets the severity (default major).
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
    /// Sets the condition: breached when `value <comparison> threshold`.
    pub fn threshold(mut self, comparison: Comparison, threshold: f64) -> Self {
        self.comparison = comparison;
        self.threshold = threshold;
        self
    }
    /// Sets the unit shown after values in messages (`%`).
    pub fn unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = unit.into();
        self
    }
    /// Overrides the tracker's raise/clear counts for this check only.
    pub fn counts(mut self, raise_after: u32, clear_after: u32) -> Self {
        self.raise_after = Some(raise_after);
        self.clear_after = Some(clear_after);
        self
    }

    /// The default one-line message: `cpu.total-percent 95.00% above 90%` /
    /// `cpu.total-percent back to 40.00% (threshold: above 90%)`.
    pub fn message(&self, transition: Transition, value: f64) -> String {
        let what = if self.subject.is_empty() {
            self.metric.clone()
        } else {
            format!("{} on {}", self.metric, self.subject)
        };
        let unit = &self.unit;
        match transition {
            Transition::Raised => format!(
                "{what} {value:.2}{unit} {} {}{unit}",
                self.comparison.words(),
                self.threshold
            ),
            Transition::Cleared => format!(
                "{what} back to {value:.2}{unit} (threshold: {} {}{unit})",
                self.comparison.words(),
                self.threshold
            ),
        }
    }

    fn alarm(&self, raised: bool, value: f64, message: String) -> Alarm {
        alarm(self.key.clone(), self.metric.clone())
            .subject(self.subject.clone())
            .severity(self.severity)
            .threshold(self.comparison, self.threshold)
            .value(value)
            .message(message)
            .build(raised)
    }
}

/// What is remembered of a raised alarm so it can be cleared without the
/// check that raised it (after a restart, or when its subject vanished).
#[derive(Debug, Clone, PartialEq)]
struct Raised {
    metric: String,
    subject: String,
    severity: Severity,
    comparison: Comparison,
    threshold: f64,
}

/// Runs checks through hysteresis and keeps the set of raised alarms.
#[derive(Debug, Clone)]
pub struct Alarms {
    raise_after: u32,
    clear_after: u32,
    hysteresis: Hysteresis<String>,
    raised: BTreeMap<String, Raised>,
    /// Subjects of every key seen since start, for [`Alarms::retain_subjects`].
    subjects: BTreeMap<String, String>,
    changed: bool,
}

impl Alarms {
    /// A tracker raising after `raise_after` consecutive breaching samples and
    /// clearing after `clear_after` normal ones (0 counts as 1): usually
    /// [`Common`](crate::Common)'s counts.
    pub fn new(raise_after: u32, clear_after: u32) -> Self {
        Alarms {
            raise_after: raise_after.max(1),
            clear_after: clear_after.max(1),
            hysteresis: Hysteresis::new(1, 1),
            raised: BTreeMap::new(),
            subjects: BTreeMap::new(),
            changed: false,
        }
    }

    /// Compares `value` with the check's threshold; returns the alarm to send
    /// when the condition has just been raised or cleared.
    pub fn check(&mut self, check: &Check, value: f64) -> Option<Alarm> {
        let breached = check.comparison.breached(value, check.threshold);
        self.observe(check, value, breached, |t| check.message(t, value))
    }

    /// Like [`Alarms::check`] for conditions that are not a plain comparison
    /// (a link that went down, an agent that stopped answering): the caller
    /// says whether it holds and writes the message.
    pub fn observe(
        &mut self,
        check: &Check,
        value: f64,
        breached: bool,
        message: impl FnOnce(Transition) -> String,
    ) -> Option<Alarm> {
        self.subjects
            .entry(check.key.clone())
            .or_insert_with(|| check.subject.clone());
        let transition = self.hysteresis.observe_counts(
            check.key.as_str(),
            breached,
            check.raise_after.unwrap_or(self.raise_after),
            check.clear_after.unwrap_or(self.clear_after),
        )?;
        self.changed = true;
        match transition {
            Transition::Raised => {
                self.raised.insert(
                    check.key.clone(),
                    Raised {
                        metric: check.metric.clone(),
                        subject: check.subject.clone(),
                        severity: check.severity,
                        comparison: check.comparison,
                        threshold: check.threshold,
                    },
                );
            }
            Transition::Cleared => {
                self.raised.remove(&check.key);
            }
        }
        Some(check.alarm(transition == Transition::Raised, value, message(transition)))
    }

    /// Whether alarm `key` is raised.
    pub fn is_raised(&self, key: &str) -> bool {
        self.raised.contains_key(key)
    }

    /// Keys of the raised alarms, in order.
    pub fn raised_keys(&self) -> impl Iterator<Item = &str> {
        self.raised.keys().map(String::as_str)
    }

    /// Clears every raised alarm whose (key, subject) `keep` rejects, e.g.
    /// because its filesystem was unmounted or it is no longer configured,
    /// and forgets all state of rejected keys. `why` ends the message.
    pub fn retain_subjects(
        &mut self,
        mut keep: impl FnMut(&str, &str) -> bool,
        why: &str,
    ) -> Vec<Alarm> {
        let mut cleared = Vec::new();
        let raised = std::mem::take(&mut self.raised);
        for (key, entry) in raised {
            if keep(&key, &entry.subject) {
                self.raised.insert(key, entry);
                continue;
            }
            let what = if entry.subject.is_empty() {
                entry.metric.clone()
            } else {
                format!("{} on {}", entry.metric, entry.subject)
            };
            cleared.push(
                alarm(key.clone(), entry.metric)
                    .subject(entry.subject)
                    .severity(entry.severity)
                    .threshold(entry.comparison, entry.threshold)
                    .message(format!("{what} cleared: {why}"))
                    .cleared(),
            );
            self.changed = true;
        }
        let subjects = &self.subjects;
        let raised = &self.raised;
        self.hysteresis.retain(|key| {
            raised.contains_key(key) || subjects.get(key).is_some_and(|subject| keep(key, subject))
        });
        self.subjects.retain(|key, subject| keep(key, subject));
        cleared
    }

    /// The raised set in the persisted format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for (key, entry) in &self.raised {
            let fields = [
                escape(key),
                escape(&entry.metric),
                escape(&entry.subject),
                entry.severity.as_str().to_owned(),
                entry.comparison.as_str().to_owned(),
                entry.threshold.to_string(),
            ];
            out.push_str(&fields.join("\t"));
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Marks the alarms in `bytes` (from [`Alarms::encode`]) as raised.
    /// Malformed lines are skipped: a corrupt entry must not stop the module.
    pub fn restore(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            let [key, metric, subject, severity, comparison, threshold] = fields[..] else {
                continue;
            };
            let (Ok(severity), Ok(comparison), Ok(threshold)) = (
                <Severity as crate::config::FromConfig>::from_config(severity),
                <Comparison as crate::config::FromConfig>::from_config(comparison),
                threshold.parse::<f64>(),
            ) else {
                continue;
            };
            let key = unescape(key);
            let subject = unescape(subject);
            self.hysteresis.set_active(key.clone());
            self.subjects.insert(key.clone(), subject.clone());
            self.raised.insert(
                key,
                Raised {
                    metric: unescape(metric),
                    subject,
                    severity,
                    comparison,
                    threshold,
                },
            );
        }
    }

    /// The encoded raised set if it changed since the last call.
    pub fn take_changed(&mut self) -> Option<Vec<u8>> {
        std::mem::take(&mut self.changed).then(|| self.encode())
    }

    /// Host call: restores the raised set kept by the `state` capability.
    pub fn restore_from_state(&mut self) {
        if let Some(bytes) = crate::state::get(ACTIVE_ALARMS_STATE_KEY) {
            self.restore(&bytes);
        }
    }

    /// Host call: writes the raised set through the `state` capability when
    /// it changed since the last write; a write the node refused (quota,
    /// full disk) is tried again on the next call.
    pub fn persist(&mut self) {
        if let Some(bytes) = self.take_changed()
            && crate::state::set(ACTIVE_ALARMS_STATE_KEY, &bytes).is_err()
        {
            self.changed = true;
        }
    }
}

fn escape(field: &str) -> String {
    field
        .replace('%', "%25")
        .replace('\t', "%09")
        .replace('\n', "%0A")
}

fn unescape(field: &str) -> String {
    field
        .replace("%0A", "\n")
        .replace("%09", "\t")
        .replace("%25", "%")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cpu_check() -> Check {
        Check::new("cpu.total", "cpu.total-percent")
            .threshold(Comparison::Above, 90.0)
            .unit("%")
    }

    #[test]
    fn comparisons() {
        assert!(Comparison::Above.breached(91.0, 90.0));
        assert!(!Comparison::Above.breached(90.0, 90.0));
        assert!(Comparison::Below.breached(1.0, 2.0));
        assert!(Comparison::Equal.breached(0.1 + 0.2, 0.3));
        assert!(Comparison::NotEqual.breached(2.0, 1.0));
        assert!(!Comparison::NotEqual.breached(1.0, 1.0));
    }

    #[test]
    fn builder_fills_every_field() {
        let a = alarm("k", "m")
            .subject("/var")
            .severity(Severity::Critical)
            .value(3.0)
            .threshold(Comparison::Below, 5.0)
            .message("low")
            .cleared();
        assert_eq!(
            (
                a.key.as_str(),
                a.metric.as_str(),
                a.subject.as_str(),
                a.severity,
                a.raised
            ),
            ("k", "m", "/var", Severity::Critical, false)
        );
        assert_eq!(
            (a.value, a.threshold, a.comparison, a.message.as_str()),
            (3.0, 5.0, Comparison::Below, "low")
        );
    }

    #[test]
    fn raised_once_cleared_once_with_messages() {
        let mut alarms = Alarms::new(2, 2);
        let check = cpu_check();
        let values = [95.0, 96.0, 97.0, 10.0, 99.0, 10.0, 10.0, 10.0];
        let out: Vec<Alarm> = values
            .iter()
            .filter_map(|&v| alarms.check(&check, v))
            .collect();
        assert_eq!(out.len(), 2);
        assert!(out[0].raised);
        assert_eq!(out[0].value, 96.0);
        assert_eq!(out[0].message, "cpu.total-percent 96.00% above 90%");
        assert!(!out[1].raised);
        assert_eq!(
            out[1].message,
            "cpu.total-percent back to 10.00% (threshold: above 90%)"
        );
        assert!(alarms.raised_keys().next().is_none());
    }

    #[test]
    fn per_check_counts_override_the_default() {
        let mut alarms = Alarms::new(3, 3);
        let check = Check::new("agent", "snmp.reachable").counts(1, 1);
        assert!(
            alarms
                .observe(&check, 0.0, true, |_| "down".into())
                .is_some()
        );
        assert!(
            alarms
                .observe(&check, 1.0, false, |_| "up".into())
                .is_some()
        );
    }

    #[test]
    fn persisted_set_survives_a_restart() {
        let mut before = Alarms::new(1, 1);
        let check = cpu_check().subject("odd\tname%");
        before.check(&check, 99.0).expect("raised");
        let bytes = before.take_changed().expect("changed");
        assert_eq!(before.take_changed(), None, "unchanged since last take");

        let mut after = Alarms::new(1, 1);
        after.restore(&bytes);
        after.restore(b"garbage line\n");
        assert!(after.is_raised("cpu.total"));
        assert_eq!(after.check(&check, 99.0), None, "not raised again");
        let clear = after.check(&check, 1.0).expect("cleared");
        assert!(!clear.raised);
        assert_eq!(clear.subject, "odd\tname%");
        assert_eq!(after.encode(), b"");
    }

    #[test]
    fn vanished_subjects_are_cleared() {
        let mut alarms = Alarms::new(1, 1);
        let var = Check::new("fs.used:/var", "fs.used-percent")
            .subject("/var")
            .threshold(Comparison::Above, 90.0);
        let home = Check::new("fs.used:/home", "fs.used-percent")
            .subject("/home")
            .threshold(Comparison::Above, 90.0);
        alarms.check(&var, 95.0);
        alarms.check(&home, 95.0);
        let cleared = alarms.retain_subjects(|_, subject| subject != "/var", "no longer mounted");
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].key, "fs.used:/var");
        assert!(!cleared[0].raised);
        assert_eq!(
            cleared[0].message,
            "fs.used-percent on /var cleared: no longer mounted"
        );
        assert!(alarms.is_raised("fs.used:/home"));
        // Coming back starts from scratch.
        assert!(alarms.check(&var, 95.0).is_some_and(|a| a.raised));
    }
}
