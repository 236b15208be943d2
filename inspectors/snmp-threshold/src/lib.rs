//! `snmp-threshold`: a generic performance inspector that watches one SNMP
//! OID against a threshold.
//!
//! Every tick it GETs the OID from one agent (a single varbind: the smallest
//! possible request), turns a counter into a per-second rate if asked, raises
//! an alarm when the value stays on the wrong side of the threshold for
//! `raise_after` ticks, clears it after `clear_after` ticks back, and sends
//! one summary of the value per report window. An agent that does not answer
//! raises one "agent unreachable" alarm, cleared by its next answer.
//!
//! Layout: [`Settings`], [`SnmpThreshold`] (pure decision logic fed with the
//! GET result), then the WIT glue.
//!
//! | config key    | default       | meaning                                         |
//! |---------------|---------------|-------------------------------------------------|
//! | `oid`         | required      | dotted-decimal OID of a scalar instance (`…​.0`) |
//! | `agent`       | node default  | agent name from the node's SNMP configuration   |
//! | `threshold`   | required      | number compared with the value (or rate)        |
//! | `comparison`  | `above`       | `above`, `below`, `equal`, `not-equal`          |
//! | `metric`      | the OID       | metric name in alarms and summaries             |
//! | `counter`     | false         | the OID is a counter: compare its rate per second |
//! | `severity`    | `major`       | `info` … `critical`                             |
//! | `unit`        | "" (`/s` for counters) | unit of summaries                      |
//! | `raise_after`, `clear_after`, `window_secs` | 3, 3, 60 | see `agad_sdk::Common` |

use agad_sdk::config::COMMON_KEYS;
use agad_sdk::snmp::{SnmpError, Varbind};
use agad_sdk::snmp_table::{agent_check, is_valid_oid, normalize_oid, observe_agent};
use agad_sdk::{
    Alarms, Check, Common, Comparison, Config, ConfigError, Output, Rate, Severity, Window,
};

pub const CONFIG_KEYS: &[&str] = &[
    "oid",
    "agent",
    "threshold",
    "comparison",
    "metric",
    "counter",
    "severity",
    "unit",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Normalised (no leading dot).
    pub oid: String,
    /// Empty: the node's default agent.
    pub agent: String,
    pub threshold: f64,
    pub comparison: Comparison,
    pub metric: String,
    /// Compare the rate per second of a counter rather than its value.
    pub counter: bool,
    pub severity: Severity,
    pub unit: String,
    pub common: Common,
}

impl Settings {
    pub fn from_config(pairs: &[(String, String)]) -> Result<Settings, ConfigError> {
        let known: Vec<&str> = CONFIG_KEYS.iter().chain(COMMON_KEYS).copied().collect();
        let config = Config::parse(pairs, &known)?;
        let oid: String = config.require("oid")?;
        if !is_valid_oid(&oid) {
            return Err(ConfigError::invalid(
                "oid",
                &oid,
                "is not a dotted-decimal OID",
            ));
        }
        let oid = normalize_oid(&oid).to_owned();
        let counter = config.get_or("counter", false)?;
        Ok(Settings {
            agent: config.get_or("agent", String::new())?,
            threshold: config.require("threshold")?,
            comparison: config.get_or("comparison", Comparison::Above)?,
            metric: config.get_or("metric", oid.clone())?,
            severity: config.get_or("severity", Severity::Major)?,
            unit: config.get_or(
                "unit",
                if counter {
                    "/s".to_owned()
                } else {
                    String::new()
                },
            )?,
            counter,
            oid,
            common: config.common()?,
        })
    }
}

#[derive(Debug)]
pub struct SnmpThreshold {
    settings: Settings,
    /// The agent's name as alarms and summaries show it.
    agent_label: String,
    pub alarms: Alarms,
    window: Window,
    rate: Rate<()>,
    /// Why the last tick produced no value, for the log (changes only).
    pub problem: Option<String>,
}

impl SnmpThreshold {
    /// `agent_label` names the agent in alarms and summaries (the configured
    /// one, or the node's default agent's name).
    pub fn new(settings: Settings, agent_label: String) -> SnmpThreshold {
        SnmpThreshold {
            alarms: Alarms::new(settings.common.raise_after, settings.common.clear_after),
            window: Window::new(settings.common.window_secs),
            rate: Rate::new(),
            problem: None,
            agent_label,
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Decides what the answer to this tick's GET sends upward.
    pub fn tick(&mut self, now_ms: u64, answer: Result<Vec<Varbind>, SnmpError>) -> Output {
        let mut out = Output::default();
        let agent = agent_check(&self.agent_label, self.settings.common.raise_after);
        let varbinds = match answer {
            Ok(varbinds) => {
                out.alarms
                    .extend(observe_agent(&mut self.alarms, &agent, None));
                varbinds
            }
            Err(error) => {
                self.problem = Some(error.message());
                out.alarms
                    .extend(observe_agent(&mut self.alarms, &agent, Some(&error)));
                out.summaries = self.window.take_due(now_ms);
                return out;
            }
        };
        // Alarms restored from a previous configuration (another OID, metric
        // or agent) are no longer this module's to keep raised.
        let own_key = self.settings.metric.as_str();
        out.alarms.extend(self.alarms.retain_subjects(
            |key, _| key == own_key || key == agent.key,
            "no longer watched by this configuration",
        ));
        match self.value_of(now_ms, &varbinds) {
            Ok(Some((value, over))) => {
                self.problem = None;
                let s = &self.settings;
                let check = Check::new(s.metric.clone(), s.metric.clone())
                    .subject(self.agent_label.clone())
                    .severity(s.severity)
                    .threshold(s.comparison, s.threshold)
                    .unit(s.unit.clone());
                out.alarms.extend(self.alarms.check(&check, value));
                match over {
                    // A rate stands for the interval between its readings.
                    Some(from_ms) => self.window.record_over(
                        from_ms,
                        now_ms,
                        &s.metric,
                        &self.agent_label,
                        &s.unit,
                        value,
                    ),
                    None => {
                        self.window
                            .record(now_ms, &s.metric, &self.agent_label, &s.unit, value)
                    }
                }
            }
            // First counter reading, or a counter reset: nothing to compare yet.
            Ok(None) => self.problem = None,
            Err(problem) => self.problem = Some(problem),
        }
        out.summaries = self.window.take_due(now_ms);
        out
    }

    /// The value to compare, and for a rate when its interval started.
    fn value_of(
        &mut self,
        now_ms: u64,
        varbinds: &[Varbind],
    ) -> Result<Option<(f64, Option<u64>)>, String> {
        let oid = &self.settings.oid;
        let value = varbinds
            .iter()
            .find(|vb| normalize_oid(&vb.oid) == oid)
            .map(|vb| &vb.value)
            .ok_or_else(|| format!("agent answered without {oid}"))?;
        if value.is_missing() {
            return Err(format!("{oid}: {} on the agent", value.type_name()));
        }
        if self.settings.counter {
            let (reading, width) = value
                .as_counter()
                .ok_or_else(|| format!("{oid}: {} is not a counter", value.type_name()))?;
            return Ok(self
                .rate
                .measure(&(), reading, width, now_ms, None)
                .map(|m| (m.per_sec, Some(m.from_ms))));
        }
        value
            .as_f64()
            .map(|v| Some((v, None)))
            .ok_or_else(|| format!("{oid}: {} is not a number", value.type_name()))
    }
}

/// The WIT glue: one GET in, [`SnmpThreshold::tick`] out.
mod guest {
    use super::{Settings, SnmpThreshold};
    use agad_sdk::snmp_table::{log_problem_change, resolve_agent};
    use agad_sdk::types::Output;
    use agad_sdk::{Alarms, Inspector, inspector, log, snmp};

    impl Inspector for SnmpThreshold {
        fn configure(config: &[(String, String)]) -> Result<Self, String> {
            let settings = Settings::from_config(config)?;
            let agent =
                resolve_agent(&settings.agent)?.ok_or("this node has no SNMP agent configured")?;
            log::log(
                log::Level::Info,
                &format!("snmp-threshold configured on agent {agent}: {settings:?}"),
            );
            Ok(SnmpThreshold::new(settings, agent))
        }

        fn poll(&mut self, now_ms: u64) -> Output {
            let settings = self.settings();
            let answer = snmp::get(&settings.agent, std::slice::from_ref(&settings.oid));
            let before = self.problem.clone();
            let out = self.tick(now_ms, answer);
            log_problem_change(&before, &self.problem, "values are readable again");
            out
        }

        fn alarms(&mut self) -> &mut Alarms {
            &mut self.alarms
        }
    }

    inspector!(SnmpThreshold);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_sdk::Alarm;
    use agad_sdk::snmp::Value;
    use agad_sdk::snmp_table::AGENT_ALARM_KEY;

    const OID: &str = "1.3.6.1.4.1.2021.10.1.5.1";

    use agad_sdk::config::pairs;

    fn settings(items: &[(&str, &str)]) -> Settings {
        let mut all = vec![("oid", OID), ("threshold", "100")];
        all.extend_from_slice(items);
        Settings::from_config(&pairs(&all)).expect("valid config")
    }

    fn answer(value: Value) -> Result<Vec<Varbind>, SnmpError> {
        Ok(vec![Varbind {
            oid: OID.into(),
            value,
        }])
    }

    #[test]
    fn config() {
        let s = settings(&[]);
        assert_eq!(
            (
                s.metric.as_str(),
                s.comparison,
                s.severity,
                s.counter,
                s.unit.as_str()
            ),
            (OID, Comparison::Above, Severity::Major, false, "")
        );
        let s = settings(&[
            ("counter", "true"),
            ("metric", "ups.load"),
            ("comparison", "below"),
            ("severity", "critical"),
        ]);
        assert_eq!(
            (s.metric.as_str(), s.comparison, s.severity, s.unit.as_str()),
            ("ups.load", Comparison::Below, Severity::Critical, "/s")
        );
        assert_eq!(
            settings(&[]).oid,
            Settings::from_config(&pairs(&[("oid", &format!(".{OID}")), ("threshold", "1")]))
                .expect("valid")
                .oid
        );
        let err = |items: &[(&str, &str)]| {
            Settings::from_config(&pairs(items))
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(err(&[("threshold", "1")]), "oid: required but not set");
        assert_eq!(err(&[("oid", OID)]), "threshold: required but not set");
        assert_eq!(
            err(&[("oid", "sysUpTime.0"), ("threshold", "1")]),
            "oid: \"sysUpTime.0\" is not a dotted-decimal OID"
        );
        assert_eq!(
            err(&[("oid", OID), ("threshold", "abc")]),
            "threshold: \"abc\" is not a number"
        );
        assert_eq!(
            err(&[("oid", OID), ("threshold", "1"), ("comparison", "over")]),
            "comparison: \"over\" is not one of above, below, equal, not-equal"
        );
    }

    #[test]
    fn gauge_alarm_raised_once_cleared_once_no_flood() {
        let mut inspector =
            SnmpThreshold::new(settings(&[("window_secs", "100000")]), "ups".into());
        let values = [150, 90, 150, 90, 150, 150, 150, 150, 50, 150, 50, 50, 50];
        let alarms: Vec<Alarm> = values
            .iter()
            .enumerate()
            .flat_map(|(i, &v)| {
                inspector
                    .tick(i as u64 * 10_000, answer(Value::Integer(v)))
                    .alarms
            })
            .collect();
        assert_eq!(alarms.len(), 2, "{alarms:?}");
        assert!(alarms[0].raised && !alarms[1].raised);
        assert_eq!(
            (alarms[0].key.as_str(), alarms[0].subject.as_str()),
            (OID, "ups")
        );
        assert_eq!((alarms[0].value, alarms[0].threshold), (150.0, 100.0));
    }

    #[test]
    fn counter_becomes_a_rate_with_wrap() {
        let mut inspector = SnmpThreshold::new(
            settings(&[
                ("counter", "true"),
                ("raise_after", "1"),
                ("window_secs", "30"),
            ]),
            "r1".into(),
        );
        let top = u32::MAX - 499;
        assert!(
            inspector
                .tick(0, answer(Value::Counter32(top)))
                .alarms
                .is_empty(),
            "first reading has no rate"
        );
        // 500 to wrap + 1500 = 2000 in 10 s = 200/s, above 100.
        let out = inspector.tick(10_000, answer(Value::Counter32(1_500)));
        assert_eq!(out.alarms.len(), 1);
        assert_eq!(out.alarms[0].value, 200.0);
        inspector.tick(20_000, answer(Value::Counter32(2_500)));
        let summaries = inspector
            .tick(30_000, answer(Value::Counter32(2_600)))
            .summaries;
        assert_eq!(summaries.len(), 1);
        let s = &summaries[0];
        // Rates over 0–10 s, 10–20 s (measured in the window) and 20–30 s
        // (measured at its end, all of its interval inside it).
        assert_eq!(
            (s.count, s.min, s.max, s.coverage, s.unit.as_str()),
            (2, 10.0, 200.0, 1.0, "/s")
        );
        assert!((s.mean - 310.0 / 3.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn text_numbers_and_missing_objects() {
        let mut inspector = SnmpThreshold::new(settings(&[("raise_after", "1")]), "h".into());
        let out = inspector.tick(0, answer(Value::OctetString(b"123.5".to_vec())));
        assert_eq!(out.alarms.len(), 1);
        assert_eq!(inspector.problem, None);
        inspector.tick(10_000, answer(Value::NoSuchObject));
        assert_eq!(
            inspector.problem.as_deref(),
            Some("1.3.6.1.4.1.2021.10.1.5.1: noSuchObject on the agent")
        );
        inspector.tick(20_000, answer(Value::ObjectId("1.3".into())));
        assert!(
            inspector
                .problem
                .as_deref()
                .is_some_and(|p| p.ends_with("OBJECT IDENTIFIER is not a number"))
        );
    }

    #[test]
    fn unreachable_agent_is_one_alarm_until_it_answers() {
        let mut inspector = SnmpThreshold::new(settings(&[]), "router1".into());
        let mut alarms = Vec::new();
        for i in 0..10u64 {
            alarms.extend(inspector.tick(i * 10_000, Err(SnmpError::Timeout)).alarms);
        }
        assert_eq!(alarms.len(), 1);
        assert!(alarms[0].raised && alarms[0].key == format!("{AGENT_ALARM_KEY}router1"));
        assert_eq!(
            inspector.problem.as_deref(),
            Some("SNMP agent did not answer")
        );
        let out = inspector.tick(100_000, answer(Value::Integer(1)));
        assert_eq!(out.alarms.len(), 1);
        assert!(!out.alarms[0].raised && out.alarms[0].key == "snmp.agent:router1");
    }

    #[test]
    fn alarms_of_a_previous_configuration_are_cleared_not_confused() {
        let mut before = SnmpThreshold::new(
            settings(&[("raise_after", "1"), ("metric", "old")]),
            "dead".into(),
        );
        before.tick(0, Err(SnmpError::Timeout));
        before.tick(1, Ok(Vec::new()));
        before.tick(2, Err(SnmpError::Timeout));
        let persisted = before.alarms.take_changed().expect("changed");
        assert!(before.alarms.is_raised("snmp.agent:dead"));

        let mut after = SnmpThreshold::new(settings(&[("raise_after", "1")]), "alive".into());
        after.alarms.restore(&persisted);
        let out = after.tick(10, answer(Value::Integer(1)));
        assert_eq!(out.alarms.len(), 1, "{:?}", out.alarms);
        assert_eq!(
            (out.alarms[0].key.as_str(), out.alarms[0].raised),
            ("snmp.agent:dead", false)
        );
        assert!(
            out.alarms[0]
                .message
                .ends_with("cleared: no longer watched by this configuration")
        );
    }

    #[test]
    fn comparisons_below_and_equal() {
        let mut below = SnmpThreshold::new(
            settings(&[("comparison", "below"), ("raise_after", "1")]),
            "a".into(),
        );
        assert!(
            below
                .tick(0, answer(Value::Unsigned32(99)))
                .alarms
                .first()
                .is_some_and(|a| a.raised)
        );
        let mut equal = SnmpThreshold::new(
            settings(&[("comparison", "equal"), ("raise_after", "1")]),
            "a".into(),
        );
        assert!(equal.tick(0, answer(Value::Integer(99))).alarms.is_empty());
        assert!(
            equal
                .tick(1, answer(Value::Integer(100)))
                .alarms
                .first()
                .is_some_and(|a| a.raised)
        );
    }
}
