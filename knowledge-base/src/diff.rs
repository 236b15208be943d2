//! What applying a new rule set would change, by name: for `agad kb apply
//! --dry-run` and for the log line of an applied set. Positions in the
//! files do not count (moving a rule down a file changes nothing), its
//! rank among the rules does (it decides which rule acts first).

use crate::KnowledgeBase;
use crate::model::{Rule, Schedule};
use std::collections::BTreeMap;
use std::fmt;

/// Names added, removed and changed, per kind of entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    fn of<T>(
        old: &BTreeMap<&str, T>,
        new: &BTreeMap<&str, T>,
        same: impl Fn(&T, &T) -> bool,
    ) -> Changes {
        let mut changes = Changes::default();
        for (name, entry) in new {
            match old.get(name) {
                None => changes.added.push((*name).to_owned()),
                Some(before) if !same(before, entry) => changes.changed.push((*name).to_owned()),
                Some(_) => {}
            }
        }
        changes.removed = old
            .keys()
            .filter(|name| !new.contains_key(*name))
            .map(|name| (*name).to_owned())
            .collect();
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The difference between two rule sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub rules: Changes,
    /// Rules in both sets whose relative evaluation order differs.
    pub reordered: bool,
    pub groups: Changes,
    pub schedules: Changes,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && !self.reordered
            && self.groups.is_empty()
            && self.schedules.is_empty()
    }
}

fn same_rule(a: &Rule, b: &Rule) -> bool {
    a.priority == b.priority
        && a.continues == b.continues
        && a.description == b.description
        && a.when == b.when
        && a.action == b.action
}

fn same_schedule(a: &Schedule, b: &Schedule) -> bool {
    a.module == b.module
        && a.config == b.config
        && a.targets == b.targets
        && a.start_ms == b.start_ms
        && a.stop_ms == b.stop_ms
}

fn rules(kb: &KnowledgeBase) -> BTreeMap<&str, &Rule> {
    kb.rules().iter().map(|r| (r.name.as_str(), r)).collect()
}

fn schedules(kb: &KnowledgeBase) -> BTreeMap<&str, &Schedule> {
    kb.schedules()
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect()
}

fn groups(kb: &KnowledgeBase) -> BTreeMap<&str, &Vec<String>> {
    kb.groups().iter().map(|(k, v)| (k.as_str(), v)).collect()
}

impl KnowledgeBase {
    /// What replacing `self` by `new` changes.
    pub fn diff(&self, new: &KnowledgeBase) -> Diff {
        let (old_rules, new_rules) = (rules(self), rules(new));
        let kept = |kb: &KnowledgeBase, other: &BTreeMap<&str, &Rule>| -> Vec<String> {
            kb.rules()
                .iter()
                .filter(|r| other.contains_key(r.name.as_str()))
                .map(|r| r.name.clone())
                .collect()
        };
        Diff {
            rules: Changes::of(&old_rules, &new_rules, |a, b| same_rule(a, b)),
            reordered: kept(self, &new_rules) != kept(new, &old_rules),
            groups: Changes::of(&groups(self), &groups(new), |a, b| a == b),
            schedules: Changes::of(&schedules(self), &schedules(new), |a, b| {
                same_schedule(a, b)
            }),
        }
    }
}

impl fmt::Display for Diff {
    /// One line per change (`+ rule disk-full`, `~ group web`, `- schedule x`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no change");
        }
        for (kind, changes) in [
            ("group", &self.groups),
            ("rule", &self.rules),
            ("schedule", &self.schedules),
        ] {
            for name in &changes.added {
                writeln!(f, "+ {kind} {name}")?;
            }
            for name in &changes.changed {
                writeln!(f, "~ {kind} {name}")?;
            }
            for name in &changes.removed {
                writeln!(f, "- {kind} {name}")?;
            }
        }
        if self.reordered {
            writeln!(f, "~ the order in which rules are tried")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::fixtures::kb;

    const DIAG: &str = "[rule.diagnose]\nspecialist = \"top-cpu\"\n";

    fn rule(name: &str, matcher: &str) -> String {
        format!("[[rule]]\nname = \"{name}\"\n[rule.match]\n{matcher}\n{DIAG}")
    }

    #[test]
    fn changes_are_named_and_moves_within_a_file_are_not_changes() {
        let old = kb(&format!(
            "[[group]]\nname = \"web\"\nnodes = [\"web-1\"]\n{}{}{}",
            rule("a", "key = \"cpu.total\""),
            rule("b", "severity = \"major\""),
            rule("gone", "")
        ));
        assert!(old.diff(&old).is_empty());
        assert_eq!(old.diff(&old).to_string(), "no change\n");
        // Blank lines before: every line number moves, nothing changes.
        let moved = kb(&format!(
            "\n\n[[group]]\nname = \"web\"\nnodes = [\"web-1\"]\n{}{}{}",
            rule("a", "key = \"cpu.total\""),
            rule("b", "severity = \"major\""),
            rule("gone", "")
        ));
        assert!(old.diff(&moved).is_empty());
        let new = kb(&format!(
            "[[group]]\nname = \"web\"\nnodes = [\"web-1\", \"web-2\"]\n{}{}{}",
            rule("b", "severity = \"major\""),
            rule("a", "key = \"cpu.total\"\nseverity = \"minor\""),
            rule("new", "")
        ));
        let diff = old.diff(&new);
        assert_eq!(diff.rules.added, ["new"]);
        assert_eq!(diff.rules.removed, ["gone"]);
        assert_eq!(diff.rules.changed, ["a"]);
        assert_eq!(diff.groups.changed, ["web"]);
        assert!(diff.reordered);
        assert_eq!(
            diff.to_string(),
            "~ group web\n+ rule new\n~ rule a\n- rule gone\n~ the order in which rules are tried\n"
        );
    }
}
