//! The topology bases: BTPG (the whole network, as applied from an
//! operator's file) and BTPD (one domain's slice of it, replicated to the
//! domain's manager).

use serde::{Deserialize, Serialize};

/// BTPG: domains, nodes, links and which inspectors run where.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub domains: Vec<Domain>,
    pub nodes: Vec<NodeEntry>,
    pub links: Vec<Link>,
    pub assignments: Vec<Assignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    /// A sub-domain names the domain whose manager is its parent.
    pub parent: Option<String>,
    /// Candidate stations (certificate names of `agad dominio` processes),
    /// in priority order: the first healthy one serves the domain.
    pub stations: Vec<String>,
    /// How often the domain manager sends its consolidation upward.
    pub report_window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Certificate name of the node's runtime.
    pub name: String,
    pub domain: String,
    /// Where the host answers (for liveness confirmation); informative here.
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub a: String,
    pub b: String,
}

/// An inspector with its configuration, for every node of a domain and/or
/// for named nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub module: String,
    pub domain: Option<String>,
    pub nodes: Vec<String>,
    pub config: Vec<(String, String)>,
}

/// BTPD: what one domain manager needs to know of the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainTopology {
    pub domain: Domain,
    pub nodes: Vec<NodeEntry>,
    /// Links with at least one end in the domain.
    pub links: Vec<Link>,
    /// Assignments resolved per node, in file order.
    pub assignments: Vec<NodeAssignment>,
    /// Domains whose `parent` is this one.
    pub subdomains: Vec<Domain>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAssignment {
    pub node: String,
    pub module: String,
    pub config: Vec<(String, String)>,
}
