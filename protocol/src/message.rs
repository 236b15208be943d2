//! Alarms and consolidated reports as they leave a node.
//!
//! These mirror the WIT `types` interface, plus what the node adds: where the
//! message comes from, an id for deduplication, and when it happened.

use crate::manifest::Area;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warning,
    Minor,
    Major,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Comparison {
    Above,
    Below,
    Equal,
    NotEqual,
}

/// Which code produced an alarm or a summary: the signed identity of the
/// module that ran (its name travels beside it), so an operator can always
/// tell which version computed a number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// The manifest's semantic version.
    pub version: String,
    /// The manifest's sequence number (what a node's rollback check orders by).
    pub sequence: u64,
    /// SHA-256 of the module's wasm bytes, hex; empty for what the node
    /// runtime itself raises (module `agad`, whose version is the runtime's).
    pub sha256: String,
}

impl Provenance {
    /// The identity of the module `manifest` describes.
    pub fn of(manifest: &crate::Manifest) -> Provenance {
        Provenance {
            version: manifest.version.to_string(),
            sequence: manifest.sequence,
            sha256: manifest.sha256_hex(),
        }
    }

    /// The node runtime itself, version `version`.
    pub fn runtime(version: &str) -> Provenance {
        Provenance {
            version: version.to_owned(),
            sequence: 0,
            sha256: String::new(),
        }
    }

    /// `version (sequence, first 12 hex digits of the hash)`, for tables.
    pub fn short(&self) -> String {
        if self.sha256.is_empty() {
            return self.version.clone();
        }
        let hash = self.sha256.get(..12).unwrap_or(&self.sha256);
        format!("{} (#{}, {hash})", self.version, self.sequence)
    }

    /// Whether `filter` names this code: its version, or a prefix of its
    /// hash of at least 6 hex digits.
    pub fn matches(&self, filter: &str) -> bool {
        self.version == filter
            || (filter.len() >= 6 && !self.sha256.is_empty() && self.sha256.starts_with(filter))
    }
}

/// A condition that started (`raised`) or ended on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// `<node>/<module>/<counter>`: unique per node, used to deduplicate.
    pub id: String,
    pub node: String,
    pub module: String,
    /// The code of `module` that raised or cleared it.
    pub provenance: Provenance,
    pub area: Area,
    pub key: String,
    pub metric: String,
    pub subject: String,
    pub severity: Severity,
    pub raised: bool,
    pub value: f64,
    pub threshold: f64,
    pub comparison: Comparison,
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// Longest text an alarm's id, key, metric, subject or message may be.
pub const MAX_ALARM_TEXT: usize = 1024;

/// The module name of the alarms AGAD raises about an element itself (host
/// down, agent down, disk low, attestation failed): they belong to the
/// element, not to an assigned module.
pub const RUNTIME_MODULE: &str = "agad";

/// An alarm AGAD itself raises or clears — a node runtime or a manager,
/// never a module's code: [`RuntimeAlarm::alarm`] makes it.
#[derive(Debug, Clone)]
pub struct RuntimeAlarm<'a> {
    /// The element it is about; its id is in that element's id space,
    /// `<node>/<module>/<serial>`, so every manager above accepts it.
    pub node: &'a str,
    /// [`RUNTIME_MODULE`] for the element's own condition; a module's name
    /// for what the runtime says of that module (it refused or stopped it:
    /// the module's code never ran).
    pub module: &'a str,
    /// Unique per node and module, across restarts of whoever raises it.
    pub serial: &'a str,
    pub area: Area,
    pub key: &'a str,
    pub metric: &'a str,
    pub subject: &'a str,
    pub severity: Severity,
    pub message: &'a str,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl RuntimeAlarm<'_> {
    /// Its raise (`raised`) or clear: value 1 or 0 above a threshold of 0
    /// (see [`Alarm::measuring`] for a measured value), by the runtime of
    /// this build (every crate of the workspace shares its version), the
    /// message escaped and cut to fit [`MAX_ALARM_TEXT`].
    pub fn alarm(&self, raised: bool) -> Alarm {
        // Room for the excerpt's "…(+N bytes)" mark.
        const MARK: usize = 32;
        Alarm {
            id: format!("{}/{}/{}", self.node, self.module, self.serial),
            node: self.node.to_owned(),
            module: self.module.to_owned(),
            provenance: Provenance::runtime(env!("CARGO_PKG_VERSION")),
            area: self.area,
            key: self.key.to_owned(),
            metric: self.metric.to_owned(),
            subject: self.subject.to_owned(),
            severity: self.severity,
            raised,
            value: if raised { 1.0 } else { 0.0 },
            threshold: 0.0,
            comparison: Comparison::Above,
            message: crate::text::excerpt(self.message, MAX_ALARM_TEXT - MARK),
            time_ms: self.time_ms,
        }
    }
}

/// Why a manager refuses an alarm a child sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlarmRefused {
    #[error("an alarm about another node ({0} bytes of name)")]
    OtherNode(usize),
    #[error("an alarm id that is not `<its node>/<its module>/<sequence>` ({0} bytes)")]
    ForeignId(usize),
    #[error("an alarm whose {field} has {len} bytes (at most {MAX_ALARM_TEXT})")]
    TooLong { field: &'static str, len: usize },
}

impl Alarm {
    /// The same alarm, carrying a measured `value` compared with
    /// `threshold`.
    pub fn measuring(mut self, value: f64, threshold: f64, comparison: Comparison) -> Alarm {
        self.value = value;
        self.threshold = threshold;
        self.comparison = comparison;
        self
    }

    /// Whether this alarm may come from `node` (a child's authenticated
    /// name, or a node in the subtree a relaying manager serves): it is
    /// about `node`, its id is `<node>/<module>/<sequence>` with its own
    /// module — so the id receivers deduplicate by is bound to its origin,
    /// and no node can claim, and so silence, another's — and no text is
    /// longer than [`MAX_ALARM_TEXT`].
    pub fn check_origin(&self, node: &str) -> Result<(), AlarmRefused> {
        if self.node != node {
            return Err(AlarmRefused::OtherNode(self.node.len()));
        }
        for (field, text) in [
            ("id", &self.id),
            ("module", &self.module),
            ("key", &self.key),
            ("metric", &self.metric),
            ("subject", &self.subject),
            ("message", &self.message),
        ] {
            if text.len() > MAX_ALARM_TEXT {
                return Err(AlarmRefused::TooLong {
                    field,
                    len: text.len(),
                });
            }
        }
        let sequence = self
            .id
            .strip_prefix(node)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_prefix(self.module.as_str()))
            .and_then(|rest| rest.strip_prefix('/'));
        match sequence {
            Some(seq)
                if crate::text::is_name(&self.module)
                    && !seq.is_empty()
                    && seq.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Ok(())
            }
            _ => Err(AlarmRefused::ForeignId(self.id.len())),
        }
    }
}

/// Marks the id of an alarm event the top manager wrote to close a raise
/// whose module, node or domain left the topology (`<node>/<module>/closed…`).
const CLOSING: &str = "closed";

impl Alarm {
    /// The event that closes this raise for good because it can never
    /// clear on its own (its module was unassigned, its node moved or was
    /// removed): a clear of the same condition, `reason` in its message,
    /// written by `by` (the top manager's own code) at `time_ms`, the
    /// `n`-th closing of that moment.
    pub fn closing(&self, reason: &str, time_ms: u64, n: usize, by: Provenance) -> Alarm {
        Alarm {
            id: format!("{}/{}/{CLOSING}{time_ms}n{n}", self.node, self.module),
            provenance: by,
            raised: false,
            message: format!("closed: {reason}"),
            // After the raise, whatever the clocks: the condition's latest
            // event is decided by time.
            time_ms: time_ms.max(self.time_ms + 1),
            ..self.clone()
        }
    }

    /// Whether this event closed a raise (see [`Alarm::closing`]) rather
    /// than the module clearing it.
    pub fn is_closing(&self) -> bool {
        self.id
            .rsplit('/')
            .next()
            .is_some_and(|seq| seq.starts_with(CLOSING))
    }
}

/// Consolidation of one metric over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub metric: String,
    pub subject: String,
    pub unit: String,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub last: f64,
    /// Samples measured in the window.
    pub count: u32,
    /// Share of the window, 0 to 1, covered by the intervals the samples
    /// stand for (see `wit/types.wit`): 1 when the series was read all
    /// through it.
    pub coverage: f64,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
}

impl Summary {
    /// Two summaries of the same series as one (weighted mean, latest `last`).
    ///
    /// Coverage: two windows that do not overlap (one node's consecutive
    /// windows) cover their covered time together, out of the merged window's
    /// length, so a window missing in between counts as uncovered; overlapping
    /// windows (one window on several nodes) give the mean coverage per sample.
    pub fn merged(&self, b: &Summary) -> Summary {
        let a = self;
        let count = a.count + b.count;
        let mean = if count == 0 {
            0.0
        } else {
            (a.mean * f64::from(a.count) + b.mean * f64::from(b.count)) / f64::from(count)
        };
        let length = |s: &Summary| s.window_end_ms.saturating_sub(s.window_start_ms) as f64;
        let start = a.window_start_ms.min(b.window_start_ms);
        let end = a.window_end_ms.max(b.window_end_ms);
        let apart = a.window_end_ms <= b.window_start_ms || b.window_end_ms <= a.window_start_ms;
        let coverage = if apart && end > start {
            (a.coverage * length(a) + b.coverage * length(b)) / (end - start) as f64
        } else if count > 0 {
            (a.coverage * f64::from(a.count) + b.coverage * f64::from(b.count)) / f64::from(count)
        } else {
            a.coverage.max(b.coverage)
        };
        let last = if b.window_end_ms >= a.window_end_ms {
            b.last
        } else {
            a.last
        };
        Summary {
            metric: a.metric.clone(),
            subject: a.subject.clone(),
            unit: a.unit.clone(),
            min: a.min.min(b.min),
            max: a.max.max(b.max),
            mean,
            last,
            count,
            coverage: coverage.clamp(0.0, 1.0),
            window_start_ms: start,
            window_end_ms: end,
        }
    }
}

/// The summaries one module produced in one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    pub module: String,
    /// The code of `module` that computed every summary here.
    pub provenance: Provenance,
    pub area: Area,
    pub summaries: Vec<Summary>,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// Why a module stopped running on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A call ran past the manifest's `max_time_per_call_ms`.
    Timeout,
    /// The module tried to grow memory past `max_memory_bytes`.
    MemoryLimit,
    /// The module trapped (a panic, `unreachable`, a bad access...).
    Trap,
    /// `init` refused its configuration after a restart.
    InitFailed,
}

/// A module failed on a node and is being restarted with back-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleFault {
    pub node: String,
    pub module: String,
    pub kind: FaultKind,
    pub message: String,
    /// Failures since the module last ran cleanly.
    pub consecutive: u32,
    /// When the next attempt is made.
    pub restart_in_ms: u64,
    pub time_ms: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn alarm(node: &str, module: &str, id: &str) -> Alarm {
        Alarm {
            id: id.into(),
            node: node.into(),
            module: module.into(),
            provenance: Provenance::default(),
            area: Area::Performance,
            key: "k".into(),
            metric: "cpu".into(),
            subject: String::new(),
            severity: Severity::Major,
            raised: true,
            value: 1.0,
            threshold: 0.5,
            comparison: Comparison::Above,
            message: "m".into(),
            time_ms: 0,
        }
    }

    #[test]
    fn an_alarm_id_is_bound_to_its_node_and_module() {
        assert_eq!(
            alarm("n1", "cpu-mem", "n1/cpu-mem/7").check_origin("n1"),
            Ok(())
        );
        assert_eq!(
            alarm("n1", "cpu-mem", "n1/cpu-mem/t1700000000000").check_origin("n1"),
            Ok(())
        );
        // Another node's id, or a sender that is not the alarm's node.
        assert!(matches!(
            alarm("n1", "cpu-mem", "n2/cpu-mem/7").check_origin("n1"),
            Err(AlarmRefused::ForeignId(_))
        ));
        assert!(matches!(
            alarm("n2", "cpu-mem", "n2/cpu-mem/7").check_origin("n1"),
            Err(AlarmRefused::OtherNode(_))
        ));
        // A module name that reaches into another node's ids ("n1" claiming
        // node "n1/x"'s), and ids with anything after the sequence.
        for (module, id) in [
            ("x/m", "n1/x/m/1"),
            ("cpu-mem", "n1/cpu-mem/7/8"),
            ("cpu-mem", "n1/cpu-mem/"),
            ("cpu-mem", "n1/cpu-mem/7\n"),
        ] {
            assert!(
                alarm("n1", module, id).check_origin("n1").is_err(),
                "{id:?}"
            );
        }
        let mut long = alarm("n1", "cpu-mem", "n1/cpu-mem/1");
        long.message = "x".repeat(MAX_ALARM_TEXT + 1);
        assert!(matches!(
            long.check_origin("n1"),
            Err(AlarmRefused::TooLong {
                field: "message",
                ..
            })
        ));
    }

    #[test]
    fn a_runtime_alarm_is_in_its_elements_id_space_and_fits_what_managers_accept() {
        let long = "é\n".repeat(MAX_ALARM_TEXT);
        let condition = RuntimeAlarm {
            node: "n1",
            module: RUNTIME_MODULE,
            serial: "a5n1",
            area: Area::Fault,
            key: "agad.disk-low",
            metric: "fs.available-bytes",
            subject: "/data",
            severity: Severity::Major,
            message: &long,
            time_ms: 5,
        };
        let raised = condition.alarm(true);
        assert_eq!(raised.id, "n1/agad/a5n1");
        assert_eq!(raised.check_origin("n1"), Ok(()));
        assert!(raised.message.len() <= MAX_ALARM_TEXT);
        assert!(!raised.message.contains('\n'), "escaped");
        assert_eq!(
            raised.provenance,
            Provenance::runtime(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!((raised.value, raised.threshold), (1.0, 0.0));
        assert_eq!(raised.comparison, Comparison::Above);
        let cleared = condition
            .alarm(false)
            .measuring(2048.0, 1024.0, Comparison::Below);
        assert!(!cleared.raised);
        assert_eq!(
            (cleared.value, cleared.threshold, cleared.comparison),
            (2048.0, 1024.0, Comparison::Below)
        );
    }
}
