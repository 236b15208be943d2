//! The state of an element's components as data: what a keep-alive carries
//! upward and what `agad status --json` prints. The guardian and the
//! dashboard match on these variants; nothing parses strings such as
//! `node:<name>`.

use serde::{Deserialize, Serialize};

/// One component of an element and how it is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub component: Component,
    pub state: State,
    /// Since when it is in this state (ms since the Unix epoch), if known.
    pub since_ms: Option<u64>,
}

/// What the component is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
// Externally tagged: bincode cannot decode internally tagged enums.
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// An inspector or specialist running on a node.
    Module { name: String },
    /// The domain a manager serves (or waits to be assigned).
    Domain {
        name: Option<String>,
        replica_version: u64,
    },
    /// A manager's store (BICD): what it holds and what waits to go up.
    Store {
        alarms: u64,
        reports: u64,
        outbox: u64,
    },
    /// A node of the domain, as its manager sees it.
    Node { name: String },
    /// A sub-domain, as its parent's manager sees it.
    Subdomain { domain: String },
    /// The last attestation of a child's code (a node's modules, a
    /// station's BC), as its parent sees it.
    Attestation { element: String },
    /// A module on a node of the domain, as the node last told its domain
    /// manager (state and since when), relayed to the top manager.
    NodeModule { node: String, module: String },
}

/// How the component is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Running,
    /// Failed recently and is being restarted with back-off.
    Restarting {
        last_fault: String,
        fault_at_ms: u64,
    },
    /// Will not run: its bundle or configuration was refused.
    Refused {
        reason: String,
    },
    /// Its code failed an integrity check and is kept from running.
    Quarantined {
        reason: String,
    },
    /// Has nothing to do yet (no domain assigned, no replica).
    Waiting {
        reason: String,
    },
    /// A child connected and keeping alive; `failing` names its unhealthy
    /// components; `served_by` is the station serving a sub-domain.
    Connected {
        served_by: Option<String>,
        failing: Vec<String>,
    },
    /// A child whose keep-alives stopped while its connection stayed open.
    Stale {
        silent_ms: u64,
    },
    NotConnected,
    /// The guardian confirmed a silent child failed: `diagnosis` from
    /// probing its host, since `since_ms` (Unix ms), `reason` what the
    /// probe saw.
    Failed {
        diagnosis: Diagnosis,
        since_ms: u64,
        reason: String,
    },
    /// The last attestation proved `modules` modules intact, at `at_ms`.
    Attested {
        at_ms: u64,
        modules: u64,
    },
    /// The last attestation failed (a proof mismatch, a quarantine, no
    /// answer in time), at `at_ms`.
    AttestationFailed {
        at_ms: u64,
        reason: String,
    },
}

/// What the guardian found when it probed a silent element's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Diagnosis {
    /// The host answered neither ICMP echo nor TCP: it (or its link) is down.
    HostDown,
    /// The host answers but the element does not: its process failed.
    AgentDown,
}

impl Diagnosis {
    pub fn as_str(self) -> &'static str {
        match self {
            Diagnosis::HostDown => "host down",
            Diagnosis::AgentDown => "agent down",
        }
    }
}

impl ComponentStatus {
    pub fn new(component: Component, state: State) -> ComponentStatus {
        ComponentStatus {
            component,
            state,
            since_ms: None,
        }
    }

    /// The same, in this state since `ms` (Unix ms).
    pub fn since(mut self, ms: Option<u64>) -> ComponentStatus {
        self.since_ms = ms;
        self
    }

    pub fn healthy(&self) -> bool {
        match &self.state {
            State::Running | State::Attested { .. } => true,
            State::Connected { failing, .. } => failing.is_empty(),
            _ => false,
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Module { name } => write!(f, "module {name}"),
            Component::Domain { name: Some(n), .. } => write!(f, "domain {n}"),
            Component::Domain { name: None, .. } => f.write_str("domain"),
            Component::Store { .. } => f.write_str("store"),
            Component::Node { name } => write!(f, "node {name}"),
            Component::Subdomain { domain } => write!(f, "sub-domain {domain}"),
            Component::Attestation { element } => write!(f, "attestation {element}"),
            Component::NodeModule { node, module } => write!(f, "module {module} on {node}"),
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Running => f.write_str("running"),
            State::Restarting { last_fault, .. } => write!(f, "restarting: {last_fault}"),
            State::Refused { reason } => write!(f, "refused: {reason}"),
            State::Quarantined { reason } => write!(f, "quarantined: {reason}"),
            State::Waiting { reason } => write!(f, "waiting: {reason}"),
            State::Connected { served_by, failing } => {
                f.write_str("connected")?;
                if let Some(s) = served_by {
                    write!(f, " (served by {s})")?;
                }
                if !failing.is_empty() {
                    write!(f, "; failing: {}", failing.join(", "))?;
                }
                Ok(())
            }
            State::Stale { silent_ms } => write!(f, "stale: silent for {} s", silent_ms / 1000),
            State::NotConnected => f.write_str("not connected"),
            State::Failed {
                diagnosis, reason, ..
            } => write!(f, "failed, {}: {reason}", diagnosis.as_str()),
            State::Attested { at_ms, modules } => {
                write!(f, "{modules} modules intact{}", ago(*at_ms))
            }
            State::AttestationFailed { at_ms, reason } => {
                write!(f, "attestation failed{}: {reason}", ago(*at_ms))
            }
        }
    }
}

/// ", N s ago" for a time in ms since the epoch (nothing if in the future).
fn ago(at_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match now.checked_sub(at_ms) {
        Some(ms) => format!(", {:.1} s ago", ms as f64 / 1000.0),
        None => String::new(),
    }
}
