//! Alarms that can never clear on their own: the raise of a module that is
//! no longer assigned to its node, of a node that moved to another domain
//! (its modules start afresh there) or that left the topology with its
//! domain or alone. The top manager closes each with a closing event
//! ([`Alarm::closing`]) that says why, when a topology is applied and, in
//! case it stopped in between, when it starts.
//!
//! What is not an orphan: the alarms of a node that is down. The node is
//! still in the topology; its alarms stay raised, shown with its state.

use agad_protocol::message::Alarm;
use agad_protocol::topology::Topology;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The runtime's own alarms (`agad.disk-low`, ...) belong to the node, not
/// to an assigned module.
const RUNTIME_MODULE: &str = "agad";

/// A node's last move between domains, kept in BTPG: alarms raised before
/// it are closed, and the old domain's manager redirects the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub from: String,
    pub to: String,
    /// When the topology that moved it was applied (ms since the epoch).
    pub at_ms: u64,
}

/// The moves a change from `old` to `new` makes, at `now_ms`.
pub fn moves(old: &Topology, new: &Topology, now_ms: u64) -> BTreeMap<String, Move> {
    let was: HashMap<&str, &str> = old
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.domain.as_str()))
        .collect();
    new.nodes
        .iter()
        .filter_map(|n| {
            let from = *was.get(n.name.as_str())?;
            (from != n.domain).then(|| {
                (
                    n.name.clone(),
                    Move {
                        from: from.to_owned(),
                        to: n.domain.clone(),
                        at_ms: now_ms,
                    },
                )
            })
        })
        .collect()
}

/// Decides which raises can never clear once `new` is in force.
pub struct Orphans<'a> {
    old: Option<&'a Topology>,
    new: &'a Topology,
    moves: &'a BTreeMap<String, Move>,
    /// (node, module) of every assignment of `new`.
    assigned: BTreeSet<(String, String)>,
    /// Each node of `new` and its domain (looked up once per raise).
    domain_of: HashMap<&'a str, &'a str>,
    /// The candidate stations of `new`'s domains: the guardian raises
    /// alarms about them (host down, agent down) under the runtime's name.
    stations: BTreeSet<&'a str>,
}

impl<'a> Orphans<'a> {
    /// `old` is the topology `new` replaces (`None` at start, when only
    /// `new` and the moves are known); `moves` are the nodes' last moves.
    pub fn new(
        old: Option<&'a Topology>,
        new: &'a Topology,
        moves: &'a BTreeMap<String, Move>,
    ) -> Orphans<'a> {
        let assigned = new
            .resolved()
            .into_iter()
            .map(|a| (a.node, a.module))
            .collect();
        let domain_of = new
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.domain.as_str()))
            .collect();
        let stations = new
            .domains
            .iter()
            .flat_map(|d| d.stations.iter().map(String::as_str))
            .collect();
        Orphans {
            old,
            new,
            moves,
            assigned,
            domain_of,
            stations,
        }
    }

    /// Why the raise `alarm` can never clear, if so.
    pub fn reason(&self, alarm: &Alarm) -> Option<String> {
        let node = &alarm.node;
        // The top manager's own alarms about a station (the guardian's host
        // or agent down, a BC that failed attestation) clear when the
        // station is back or proves its code intact again.
        if alarm.module == RUNTIME_MODULE
            && !self.domain_of.contains_key(node.as_str())
            && self.stations.contains(node.as_str())
        {
            return None;
        }
        let Some(&domain) = self.domain_of.get(node.as_str()) else {
            let removed_domain = self
                .old
                .and_then(|o| o.domain_of(node))
                .filter(|d| self.new.domain(d).is_none());
            return Some(match removed_domain {
                Some(d) => format!("domain `{d}` of node `{node}` was removed from the topology"),
                None => format!("node `{node}` was removed from the topology"),
            });
        };
        if let Some(m) = self.moves.get(node)
            && m.to == domain
            && alarm.time_ms < m.at_ms
        {
            return Some(format!(
                "node `{node}` moved from domain `{}` to `{}`",
                m.from, m.to
            ));
        }
        if alarm.module != RUNTIME_MODULE
            && !self
                .assigned
                .contains(&(node.clone(), alarm.module.clone()))
        {
            return Some(format!(
                "module `{}` is no longer assigned to node `{node}`",
                alarm.module
            ));
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::topology;

    fn topology(text: &str) -> Topology {
        topology::parse(text, "t.toml", &|_| Some(&[])).unwrap()
    }

    const OLD: &str = "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n\
        [[domain]]\nname = \"d2\"\nstations = [\"s2\"]\n\n\
        [[node]]\nname = \"n1\"\ndomain = \"d1\"\n\n\
        [[node]]\nname = \"n2\"\ndomain = \"d1\"\n\n\
        [[node]]\nname = \"n3\"\ndomain = \"d2\"\n\n\
        [[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d1\"\n\n\
        [[assign]]\nmodule = \"disk-space\"\nnodes = [\"n1\"]\n";

    fn raised(node: &str, module: &str, time_ms: u64) -> Alarm {
        let mut a = crate::bases::big::tests::alarm(node, "k", 1, true, time_ms);
        a.module = module.into();
        a
    }

    #[test]
    fn each_way_an_alarm_is_orphaned_has_its_reason_and_a_down_node_has_none() {
        let old = topology(OLD);
        // n1 loses disk-space, n2 moves to d2, n3 is removed alone.
        let new = topology(
            "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n\
             [[domain]]\nname = \"d2\"\nstations = [\"s2\"]\n\n\
             [[node]]\nname = \"n1\"\ndomain = \"d1\"\n\n\
             [[node]]\nname = \"n2\"\ndomain = \"d2\"\n\n\
             [[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d1\"\n\n\
             [[assign]]\nmodule = \"cpu-mem\"\ndomain = \"d2\"\n",
        );
        let moves = moves(&old, &new, 1000);
        assert_eq!(moves.keys().collect::<Vec<_>>(), vec!["n2"]);
        let orphans = Orphans::new(Some(&old), &new, &moves);
        let why = |a: &Alarm| orphans.reason(a);
        assert_eq!(why(&raised("n1", "cpu-mem", 10)), None, "still assigned");
        assert_eq!(
            why(&raised("n1", "agad", 10)),
            None,
            "the runtime's own alarm"
        );
        assert_eq!(
            why(&raised("n1", "disk-space", 10)).unwrap(),
            "module `disk-space` is no longer assigned to node `n1`"
        );
        assert_eq!(
            why(&raised("n2", "cpu-mem", 10)).unwrap(),
            "node `n2` moved from domain `d1` to `d2`"
        );
        assert_eq!(
            why(&raised("n2", "cpu-mem", 2000)),
            None,
            "raised in its new domain, after the move"
        );
        assert_eq!(
            why(&raised("n3", "cpu-mem", 10)).unwrap(),
            "node `n3` was removed from the topology"
        );
        // Without the old topology (at start) the move is still known.
        let at_start = Orphans::new(None, &new, &moves);
        assert!(at_start.reason(&raised("n2", "cpu-mem", 10)).is_some());

        // A whole domain removed with its nodes.
        let without_d2 = topology(
            "[[domain]]\nname = \"d1\"\nstations = [\"s1\"]\n\n\
             [[node]]\nname = \"n1\"\ndomain = \"d1\"\n",
        );
        let no_moves = BTreeMap::new();
        assert_eq!(
            Orphans::new(Some(&old), &without_d2, &no_moves)
                .reason(&raised("n3", "cpu-mem", 10))
                .unwrap(),
            "domain `d2` of node `n3` was removed from the topology"
        );
    }
}
