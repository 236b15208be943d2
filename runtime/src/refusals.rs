//! The alarm a node raises for a module it was told to run but could not
//! start: its `init` refused the configuration, the node's policy refused a
//! capability it needs, or its bundle did not verify. Without it such a
//! module is only a log line on the node and a name in a keep-alive; with
//! it the operator sees the reason in `agad alarms`, and the alarm clears
//! once the module runs (or is no longer assigned).
//!
//! Which modules have the alarm raised is kept in the node's database, so a
//! restarted node still clears what it raised before.
//!
//! The same bookkeeping serves the node's other per-module alarms raised by
//! the runtime rather than the module (an [`AlarmSpec`] each): a module
//! quarantined for altered code ([`crate::integrity`]) and a crash-looping
//! module ([`crate::crashloop`]).

use crate::host::clock::now_ms;
use agad_protocol::Area;
use agad_protocol::message::{Alarm, RuntimeAlarm, Severity};
use agad_storage::{Database, StorageError, Tree};
use std::collections::HashMap;

/// Key of the alarm, one per module.
pub const REFUSED_KEY: &str = "agad.module-refused";
/// Metric of the alarm: 1 refused, 0 running.
pub const REFUSED_METRIC: &str = "module.refused";

/// One kind of per-module alarm the runtime raises.
#[derive(Debug)]
pub struct AlarmSpec {
    /// The database tree of the modules it is raised for.
    pub tree: &'static str,
    pub key: &'static str,
    pub metric: &'static str,
    pub area: Area,
    pub severity: Severity,
    /// "module X {raised}: {reason}".
    pub raised: &'static str,
    /// "module X {cleared} (was: {reason})".
    pub cleared: &'static str,
}

/// A module the node could not start.
pub const REFUSED: AlarmSpec = AlarmSpec {
    tree: "refusal-alarms",
    key: REFUSED_KEY,
    metric: REFUSED_METRIC,
    area: Area::Fault,
    severity: Severity::Major,
    raised: "refused on this node",
    cleared: "no longer refused",
};

/// The raised alarms of one kind ([`REFUSED`] unless opened with
/// [`RefusalAlarms::open_as`]) of one node.
pub struct RefusalAlarms {
    node: String,
    db: Database,
    spec: &'static AlarmSpec,
    /// Module name → the reason its alarm was raised with.
    raised: Tree,
}

impl RefusalAlarms {
    pub fn open(node: &str, db: &Database) -> Result<RefusalAlarms, StorageError> {
        RefusalAlarms::open_as(node, db, &REFUSED)
    }

    pub fn open_as(
        node: &str,
        db: &Database,
        spec: &'static AlarmSpec,
    ) -> Result<RefusalAlarms, StorageError> {
        Ok(RefusalAlarms {
            node: node.to_owned(),
            db: db.clone(),
            spec,
            raised: db.tree(spec.tree)?,
        })
    }

    /// Whether the alarm is raised for `module`.
    pub fn is_raised(&self, module: &str) -> bool {
        self.raised.get(module.as_bytes()).ok().flatten().is_some()
    }

    /// The raise for `module`, unless it is already raised.
    pub fn raise(&self, module: &str, reason: &str) -> Result<Option<Alarm>, StorageError> {
        if self.is_raised(module) {
            return Ok(None);
        }
        let alarm = self.alarm(
            module,
            true,
            format!("module {module} {}: {reason}", self.spec.raised),
        )?;
        self.raised.insert(module.as_bytes(), reason.as_bytes())?;
        self.raised.flush()?;
        Ok(Some(alarm))
    }

    /// The clear for `module`, if its alarm is raised.
    pub fn clear(&self, module: &str) -> Result<Option<Alarm>, StorageError> {
        let Some(before) = self.raised.get(module.as_bytes())? else {
            return Ok(None);
        };
        let before = String::from_utf8_lossy(&before);
        let alarm = self.alarm(
            module,
            false,
            format!("module {module} {} (was: {before})", self.spec.cleared),
        )?;
        self.raised.remove(module.as_bytes())?;
        self.raised.flush()?;
        Ok(Some(alarm))
    }

    /// The alarms that make the raised set equal to `refused` (module →
    /// why it could not start): a raise for each module newly refused or
    /// refused for another reason, a clear for each one that is no longer
    /// refused. Module names must be valid (`validate_module_name`).
    pub fn reconcile(&self, refused: &HashMap<String, String>) -> Result<Vec<Alarm>, StorageError> {
        let mut alarms = Vec::new();
        for (key, value) in self.raised.scan_prefix(b"")? {
            let module = String::from_utf8_lossy(&key).into_owned();
            if !refused.contains_key(&module) {
                let before = String::from_utf8_lossy(&value);
                alarms.push(self.alarm(
                    &module,
                    false,
                    format!("module {module} {} (was: {before})", self.spec.cleared),
                )?);
                self.raised.remove(&key)?;
            }
        }
        let mut newly: Vec<(&String, &String)> = refused
            .iter()
            .filter(|(module, reason)| {
                self.raised
                    .get(module.as_bytes())
                    .ok()
                    .flatten()
                    .is_none_or(|before| before != reason.as_bytes())
            })
            .collect();
        newly.sort();
        for (module, reason) in newly {
            alarms.push(self.alarm(
                module,
                true,
                format!("module {module} {}: {reason}", self.spec.raised),
            )?);
            self.raised.insert(module.as_bytes(), reason.as_bytes())?;
        }
        Ok(alarms)
    }

    fn alarm(&self, module: &str, raised: bool, message: String) -> Result<Alarm, StorageError> {
        let time_ms = now_ms();
        // The runtime raises it: the module's code never ran.
        Ok(RuntimeAlarm {
            node: &self.node,
            module,
            serial: &self.db.next_id()?.to_string(),
            area: self.spec.area,
            key: self.spec.key,
            metric: self.spec.metric,
            subject: module,
            severity: self.spec.severity,
            message: &message,
            time_ms,
        }
        .alarm(raised))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::message::MAX_ALARM_TEXT;

    fn refused(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(m, r)| (m.to_string(), r.to_string()))
            .collect()
    }

    #[test]
    fn raised_once_per_reason_and_cleared_when_running_again() {
        let db = Database::temporary().unwrap();
        let alarms = RefusalAlarms::open("n1", &db).unwrap();
        let bad = refused(&[("app-watch", "min_count: \"two\" is not a whole number")]);
        let raised = alarms.reconcile(&bad).unwrap();
        assert_eq!(raised.len(), 1);
        let a = &raised[0];
        assert!(a.raised);
        assert_eq!(a.check_origin("n1"), Ok(()));
        assert_eq!(
            (a.module.as_str(), a.key.as_str()),
            ("app-watch", REFUSED_KEY)
        );
        assert!(a.message.contains("is not a whole number"), "{}", a.message);

        // The same refusal again (a redeploy) raises nothing new.
        assert!(alarms.reconcile(&bad).unwrap().is_empty());
        // Another reason raises again, with it.
        let other = refused(&[("app-watch", "processes: required but not set")]);
        let again = alarms.reconcile(&other).unwrap();
        assert_eq!(again.len(), 1);
        assert!(again[0].raised && again[0].message.contains("required"));
        assert_ne!(again[0].id, a.id);

        // Reopened (a node restart), it still knows to clear.
        drop(alarms);
        let alarms = RefusalAlarms::open("n1", &db).unwrap();
        let cleared = alarms.reconcile(&HashMap::new()).unwrap();
        assert_eq!(cleared.len(), 1);
        assert!(!cleared[0].raised);
        assert_eq!(cleared[0].check_origin("n1"), Ok(()));
        assert!(alarms.reconcile(&HashMap::new()).unwrap().is_empty());
    }

    #[test]
    fn long_reasons_are_cut_to_what_a_manager_accepts() {
        let db = Database::temporary().unwrap();
        let alarms = RefusalAlarms::open("n1", &db).unwrap();
        let long = "é".repeat(2 * MAX_ALARM_TEXT);
        let raised = alarms.reconcile(&refused(&[("m", &long)])).unwrap();
        assert!(raised[0].message.len() <= MAX_ALARM_TEXT);
        assert_eq!(raised[0].check_origin("n1"), Ok(()));
    }
}
