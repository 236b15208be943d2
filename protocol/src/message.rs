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

/// A condition that started (`raised`) or ended on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// `<node>/<module>/<counter>`: unique per node, used to deduplicate.
    pub id: String,
    pub node: String,
    pub module: String,
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
    pub count: u32,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
}

/// The summaries one module produced in one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    pub module: String,
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
