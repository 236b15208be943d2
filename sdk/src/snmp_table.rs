//! Reading SNMP values and tables without extra round trips.
//!
//! [`bulk_columns`] fetches several columns of one table together with
//! GETBULK (one request returns `max_repetitions` rows of every column), so a
//! table of N rows and C columns costs about ⌈N / max_repetitions⌉ requests
//! instead of one walk per column. The request function is a parameter so the
//! logic is tested natively against a fake agent; in a module it is
//! `|oids, reps| snmp::get_bulk(agent, oids, 0, reps)`.

use crate::alarm::{Alarms, Check};
use crate::hysteresis::Transition;
use crate::rate::CounterWidth;
use crate::snmp::{SnmpError, Value, Varbind};
use crate::types::{Alarm, Comparison, Severity};
use std::cmp::Ordering;
use std::collections::BTreeMap;

impl Value {
    /// The value as a number: integers, gauges, counters and timeticks, and
    /// octet strings holding a decimal number (as UCD-SNMP's `laLoad`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Integer(v) => Some(*v as f64),
            Value::Counter32(v) | Value::Unsigned32(v) | Value::Timeticks(v) => Some(f64::from(*v)),
            Value::Counter64(v) => Some(*v as f64),
            Value::Boolean(v) => Some(if *v { 1.0 } else { 0.0 }),
            Value::OctetString(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite()),
            _ => None,
        }
    }

    /// The value as a counter reading with its width; gauges and
    /// non-negative integers count as 64-bit (they never wrap on purpose).
    pub fn as_counter(&self) -> Option<(u64, CounterWidth)> {
        match self {
            Value::Counter32(v) | Value::Unsigned32(v) | Value::Timeticks(v) => {
                Some((u64::from(*v), CounterWidth::Bits32))
            }
            Value::Counter64(v) => Some((*v, CounterWidth::Bits64)),
            Value::Integer(v) => u64::try_from(*v).ok().map(|v| (v, CounterWidth::Bits64)),
            _ => None,
        }
    }

    /// Octet strings as text (lossy), other scalars formatted.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::OctetString(bytes) => Some(
                String::from_utf8_lossy(bytes)
                    .trim_end_matches('\0')
                    .to_owned(),
            ),
            Value::ObjectId(oid) => Some(oid.clone()),
            other => other.as_f64().map(|v| v.to_string()),
        }
    }

    /// The SMI name of the value's type (`Counter32`, `noSuchObject`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Integer(_) => "INTEGER",
            Value::OctetString(_) => "OCTET STRING",
            Value::ObjectId(_) => "OBJECT IDENTIFIER",
            Value::IpAddress(_) => "IpAddress",
            Value::Counter32(_) => "Counter32",
            Value::Unsigned32(_) => "Unsigned32",
            Value::Timeticks(_) => "TimeTicks",
            Value::Counter64(_) => "Counter64",
            Value::Opaque(_) => "Opaque",
            Value::Boolean(_) => "BOOLEAN",
            Value::Null => "NULL",
            Value::NoSuchObject => "noSuchObject",
            Value::NoSuchInstance => "noSuchInstance",
            Value::EndOfMibView => "endOfMibView",
        }
    }

    /// `noSuchObject`, `noSuchInstance` or `endOfMibView`: no value there.
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            Value::NoSuchObject | Value::NoSuchInstance | Value::EndOfMibView
        )
    }
}

impl SnmpError {
    /// One line for a person (the generated `Display` is the debug form).
    pub fn message(&self) -> String {
        match self {
            SnmpError::UnknownAgent(agent) => format!("unknown SNMP agent \"{agent}\""),
            SnmpError::InvalidOid(oid) => format!("invalid OID \"{oid}\""),
            SnmpError::Timeout => "SNMP agent did not answer".to_owned(),
            SnmpError::AgentError(status) => format!("SNMP agent error: {status}"),
            SnmpError::Transport(reason) => format!("SNMP transport error: {reason}"),
        }
    }
}

/// The OID without a leading dot.
pub fn normalize_oid(oid: &str) -> &str {
    oid.trim().trim_start_matches('.')
}

/// Dotted decimal with at least two arcs, each a number (`1.3.6.1.2.1.1.3.0`).
pub fn is_valid_oid(oid: &str) -> bool {
    let oid = normalize_oid(oid);
    let arcs: Vec<&str> = oid.split('.').collect();
    arcs.len() >= 2
        && arcs.iter().all(|arc| {
            !arc.is_empty()
                && arc.len() <= 10
                && arc.bytes().all(|b| b.is_ascii_digit())
                && arc.parse::<u32>().is_ok()
        })
}

/// Compares OIDs arc by arc, numerically (`1.10` comes after `1.9`).
pub fn compare_oids(a: &str, b: &str) -> Ordering {
    let arcs = |oid: &str| -> Vec<u64> {
        normalize_oid(oid)
            .split('.')
            .map(|arc| arc.parse::<u64>().unwrap_or(u64::MAX))
            .collect()
    };
    arcs(a).cmp(&arcs(b))
}

/// The index arcs of `oid` under `column` (`1.3.6.1.2.1.2.2.1.8.3` under
/// `1.3.6.1.2.1.2.2.1.8` is `[3]`); `None` when it is not under it.
pub fn index_under(oid: &str, column: &str) -> Option<Vec<u32>> {
    let rest = normalize_oid(oid)
        .strip_prefix(normalize_oid(column))?
        .strip_prefix('.')?;
    rest.split('.').map(|arc| arc.parse::<u32>().ok()).collect()
}

/// Rows of a table by index; each row has one slot per requested column,
/// `None` where the agent had no value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Row index (the OID suffix) to the row's values, column by column.
    pub rows: BTreeMap<Vec<u32>, Vec<Option<Value>>>,
    /// Requests it took, for keeping an eye on traffic.
    pub requests: u32,
}

/// Upper bound on requests for one table, so that an agent that never ends a
/// column cannot hold the module until its deadline.
pub const MAX_TABLE_REQUESTS: u32 = 64;

/// Fetches `columns` (OIDs of table columns) with GETBULK through `fetch`
/// (called with the current OIDs and `max_repetitions`), following every
/// column until it leaves its subtree.
pub fn bulk_columns(
    columns: &[&str],
    max_repetitions: u32,
    mut fetch: impl FnMut(&[String], u32) -> Result<Vec<Varbind>, SnmpError>,
) -> Result<Table, SnmpError> {
    let max_repetitions = max_repetitions.max(1);
    let mut table = Table::default();
    // Where each column continues from; None once it is finished.
    let mut cursors: Vec<Option<String>> = columns
        .iter()
        .map(|c| Some(normalize_oid(c).to_owned()))
        .collect();
    while table.requests < MAX_TABLE_REQUESTS {
        let open: Vec<usize> = (0..columns.len())
            .filter(|&c| cursors[c].is_some())
            .collect();
        if open.is_empty() {
            break;
        }
        let oids: Vec<String> = open.iter().filter_map(|&c| cursors[c].clone()).collect();
        let varbinds = fetch(&oids, max_repetitions)?;
        table.requests += 1;
        if varbinds.is_empty() {
            break;
        }
        let mut progressed = false;
        // GETBULK answers repetition by repetition, each with one varbind per
        // requested OID in request order.
        for (i, varbind) in varbinds.into_iter().enumerate() {
            let column = open[i % open.len()];
            let Some(cursor) = cursors[column].as_deref() else {
                continue;
            };
            let index = index_under(&varbind.oid, columns[column]);
            let advances = compare_oids(&varbind.oid, cursor) == Ordering::Greater;
            match index {
                Some(index) if advances && !matches!(varbind.value, Value::EndOfMibView) => {
                    cursors[column] = Some(normalize_oid(&varbind.oid).to_owned());
                    let row = table
                        .rows
                        .entry(index)
                        .or_insert_with(|| vec![None; columns.len()]);
                    row[column] = (!varbind.value.is_missing()).then_some(varbind.value);
                    progressed = true;
                }
                // Past the column (or an agent going backwards): done.
                _ => cursors[column] = None,
            }
        }
        if !progressed {
            break;
        }
    }
    Ok(table)
}

/// Alarm keys of [`agent_check`] are this prefix and the agent's name.
pub const AGENT_ALARM_KEY: &str = "snmp.agent:";
/// Metric of [`agent_check`]: 1 while the agent answers, 0 while it does not.
pub const AGENT_METRIC: &str = "snmp.reachable";

/// The "agent unreachable" condition SNMP inspectors share: raised after
/// `raise_after` failed ticks in a row, cleared by the first answer. The key
/// names the agent, so that after a configuration change the alarm of the
/// old agent is not taken for the new one's.
pub fn agent_check(agent: &str, raise_after: u32) -> Check {
    Check::new(format!("{AGENT_ALARM_KEY}{agent}"), AGENT_METRIC)
        .subject(agent)
        .severity(Severity::Major)
        .threshold(Comparison::Below, 1.0)
        .counts(raise_after, 1)
}

/// Feeds one tick's outcome of talking to the agent (`None`: it answered).
pub fn observe_agent(
    alarms: &mut Alarms,
    check: &Check,
    error: Option<&SnmpError>,
) -> Option<Alarm> {
    let agent = if check.subject.is_empty() {
        "(default)"
    } else {
        check.subject.as_str()
    };
    let value = if error.is_some() { 0.0 } else { 1.0 };
    alarms.observe(check, value, error.is_some(), |transition| {
        match (transition, error) {
            (Transition::Raised, Some(error)) => {
                format!("SNMP agent {agent} unreachable: {}", error.message())
            }
            (Transition::Raised, None) => format!("SNMP agent {agent} unreachable"),
            (Transition::Cleared, _) => format!("SNMP agent {agent} answers again"),
        }
    })
}

/// Host call: the agent an inspector should query — `requested` if the node
/// has it, the node's default agent when `requested` is empty; `None` when
/// the node has no agent at all and none was requested.
pub fn resolve_agent(requested: &str) -> Result<Option<String>, String> {
    let agents = crate::snmp::agents();
    if requested.is_empty() {
        return Ok(agents.first().cloned());
    }
    if agents.iter().any(|a| a == requested) {
        Ok(Some(requested.to_owned()))
    } else {
        Err(format!(
            "agent: \"{requested}\" is not an SNMP agent of this node (known: {})",
            agents.join(", ")
        ))
    }
}

/// Host call: logs when an inspector's reading problem starts, changes or
/// ends, so the node's log gets one line per change rather than one per tick.
pub fn log_problem_change(before: &Option<String>, after: &Option<String>, recovered: &str) {
    if before != after {
        match after {
            Some(problem) => crate::log::log(crate::log::Level::Warn, problem),
            None => crate::log::log(crate::log::Level::Info, recovered),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn agent_alarm_raised_once_and_cleared_by_first_answer() {
        let mut alarms = Alarms::new(2, 3);
        let check = agent_check("router1", 2);
        let timeout = SnmpError::Timeout;
        let outcomes = [
            Some(&timeout),
            Some(&timeout),
            Some(&timeout),
            None,
            Some(&timeout),
            None,
        ];
        let out: Vec<Alarm> = outcomes
            .iter()
            .filter_map(|e| observe_agent(&mut alarms, &check, *e))
            .collect();
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].raised);
        assert_eq!(
            out[0].message,
            "SNMP agent router1 unreachable: SNMP agent did not answer"
        );
        assert_eq!(
            (out[0].key.as_str(), out[0].subject.as_str()),
            ("snmp.agent:router1", "router1")
        );
        assert!(!out[1].raised);
    }

    /// A fake agent holding a sorted MIB, answering GETBULK like RFC 3416.
    struct FakeAgent {
        mib: Vec<(String, Value)>,
        requests: Vec<Vec<String>>,
    }

    impl FakeAgent {
        fn new(mut mib: Vec<(String, Value)>) -> Self {
            mib.sort_by(|a, b| compare_oids(&a.0, &b.0));
            FakeAgent {
                mib,
                requests: Vec::new(),
            }
        }

        fn get_bulk(&mut self, oids: &[String], reps: u32) -> Result<Vec<Varbind>, SnmpError> {
            self.requests.push(oids.to_vec());
            let mut cursors: Vec<String> = oids.to_vec();
            let mut out = Vec::new();
            for _ in 0..reps {
                for cursor in cursors.iter_mut() {
                    let next = self
                        .mib
                        .iter()
                        .find(|(oid, _)| compare_oids(oid, cursor) == Ordering::Greater);
                    match next {
                        Some((oid, value)) => {
                            out.push(Varbind {
                                oid: oid.clone(),
                                value: value.clone(),
                            });
                            *cursor = oid.clone();
                        }
                        None => out.push(Varbind {
                            oid: cursor.clone(),
                            value: Value::EndOfMibView,
                        }),
                    }
                }
            }
            Ok(out)
        }
    }

    fn if_table(rows: u32) -> Vec<(String, Value)> {
        let mut mib = vec![("1.3.6.1.2.1.1.3.0".to_owned(), Value::Timeticks(5))];
        for i in 1..=rows {
            mib.push((
                format!("1.3.6.1.2.1.2.2.1.2.{i}"),
                Value::OctetString(format!("eth{i}").into_bytes()),
            ));
            mib.push((format!("1.3.6.1.2.1.2.2.1.8.{i}"), Value::Integer(1)));
        }
        mib.push(("1.3.6.1.2.1.4.1.0".to_owned(), Value::Integer(2)));
        mib
    }

    #[test]
    fn columns_fetched_together_in_few_requests() {
        let mut agent = FakeAgent::new(if_table(12));
        let table = bulk_columns(
            &["1.3.6.1.2.1.2.2.1.2", ".1.3.6.1.2.1.2.2.1.8"],
            5,
            |oids, reps| agent.get_bulk(oids, reps),
        )
        .expect("fake agent answers");
        assert_eq!(table.rows.len(), 12);
        assert_eq!(table.requests, 3, "12 rows at 5 per request");
        let row = &table.rows[&vec![10]];
        assert_eq!(
            row[0].as_ref().and_then(Value::as_text).as_deref(),
            Some("eth10")
        );
        assert_eq!(row[1], Some(Value::Integer(1)));
    }

    #[test]
    fn end_of_mib_and_empty_tables() {
        let mut agent = FakeAgent::new(vec![(
            "1.3.6.1.2.1.2.2.1.2.1".to_owned(),
            Value::Integer(3),
        )]);
        let table = bulk_columns(
            &["1.3.6.1.2.1.2.2.1.2", "1.3.6.1.2.1.2.2.1.9"],
            10,
            |oids, reps| agent.get_bulk(oids, reps),
        )
        .expect("answers");
        assert_eq!(table.rows.len(), 1);
        assert_eq!(table.requests, 1);
        assert_eq!(table.rows[&vec![1]][1], None);
    }

    #[test]
    fn errors_propagate() {
        let result = bulk_columns(&["1.3.6.1"], 10, |_, _| Err(SnmpError::Timeout));
        assert_eq!(
            result.map_err(|e| e.message()),
            Err("SNMP agent did not answer".to_owned())
        );
    }

    #[test]
    fn an_agent_that_never_ends_is_bounded() {
        let mut n = 0u32;
        let table = bulk_columns(&["1.3.6.1.2.1.2.2.1.2"], 1, |_, _| {
            n += 1;
            Ok(vec![Varbind {
                oid: format!("1.3.6.1.2.1.2.2.1.2.{n}"),
                value: Value::Integer(1),
            }])
        })
        .expect("answers");
        assert_eq!(table.requests, MAX_TABLE_REQUESTS);
    }

    #[test]
    fn oids_and_values() {
        assert!(is_valid_oid("1.3.6.1.2.1.1.3.0") && is_valid_oid(".1.3.6"));
        assert!(
            !is_valid_oid("1.3.x")
                && !is_valid_oid("1")
                && !is_valid_oid("1..3")
                && !is_valid_oid("")
        );
        assert_eq!(compare_oids("1.3.10", "1.3.9"), Ordering::Greater);
        assert_eq!(
            index_under("1.3.6.1.2.1.2.2.1.8.3", "1.3.6.1.2.1.2.2.1.8"),
            Some(vec![3])
        );
        assert_eq!(
            index_under("1.3.6.1.2.1.2.2.1.80.3", "1.3.6.1.2.1.2.2.1.8"),
            None
        );
        assert_eq!(Value::OctetString(b" 0.15".to_vec()).as_f64(), Some(0.15));
        assert_eq!(
            Value::Counter32(7).as_counter(),
            Some((7, CounterWidth::Bits32))
        );
        assert_eq!(Value::Integer(-1).as_counter(), None);
        assert!(Value::NoSuchInstance.is_missing());
        assert_eq!(Value::NoSuchObject.type_name(), "noSuchObject");
    }
}
