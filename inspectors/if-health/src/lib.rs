//! `if-health`: the fault inspector for network interfaces.
//!
//! Every tick it reads the interface table, from an SNMP agent's IF-MIB (the
//! usual case for a proxy node watching routers and switches) or, when the
//! node has no agent or `source=os`, from the node's own OS counters. Then:
//! - an interface seen up that goes down (administratively up, operationally
//!   `down` or `lowerLayerDown`) raises a major alarm, cleared when it is up
//!   again or administratively shut; an administrative shutdown
//!   (`ifAdminStatus` down from SNMP, `ip link set DEV down` read from the
//!   OS) is never an alarm, whichever the source;
//! - error + discard rates per direction above `error_rate` per second raise
//!   a minor alarm;
//! - an agent that does not answer raises one major alarm, cleared by its
//!   next answer (the error is also logged, once per change).
//!
//! Once per report window it sends five summaries consolidated across the
//! watched interfaces (total bit rates, the worst error rate, how many are up
//! and down); `per_interface=true` adds four series per interface.
//!
//! SNMP traffic per tick: one GETBULK per ~25 interfaces for the eight
//! columns that change (status and counters) and the agent's `sysUpTime`,
//! and the names and speeds (`ifDescr`, `ifHighSpeed`) only when an
//! interface appears or once per report window. Agents without the 64-bit
//! `ifHC*` octet counters give no bit rates.
//!
//! Agents refresh their counters on their own schedule (net-snmp about every
//! 3 s), so a period shorter than that reads the same counters again: a
//! counter that repeats its value is not a new sample of that counter (it
//! would make a rate of 0, and the next one several times the truth), until
//! it has repeated for twice the agent's refresh interval (at most
//! [`MAX_REPEAT_MS`]): then it is idle and its rate of 0 is true. Errors and
//! discards of one direction are rated as one counter. Rates are over the
//! agent's own time between readings (`sysUpTime`, read in the same request
//! as the counters), and the module logs a warning once when it sees the
//! agent refresh more slowly than the module ticks.
//!
//! Layout: [`Settings`], [`Iface`] (one interface reading, source-neutral),
//! [`SnmpSource`] (IF-MIB reading through an injected GETBULK, tested against
//! a fake agent), [`IfHealth`] (pure decision logic), then the WIT glue.
//!
//! | config key      | default        | meaning                                          |
//! |-----------------|----------------|--------------------------------------------------|
//! | `source`        | `auto`         | `snmp`, `os`, or `auto` (SNMP if the node has an agent) |
//! | `agent`         | node default   | agent name from the node's SNMP configuration    |
//! | `error_rate`    | 1.0            | errors + discards per second, per direction      |
//! | `interfaces`    | all but loopback | comma list of interface names to watch         |
//! | `per_interface` | false          | also one series per interface                    |
//! | `raise_after`, `clear_after`, `window_secs` | 3, 3, 60 | see `agad_sdk::Common` |

use agad_sdk::config::COMMON_KEYS;
use agad_sdk::snmp::{SnmpError, Value, Varbind};
use agad_sdk::snmp_table::{AGENT_ALARM_KEY, Table, agent_check, bulk_columns, observe_agent};
use agad_sdk::{
    Alarms, Check, Common, Comparison, Config, ConfigError, CounterWidth, Measured, Output, Rate,
    Severity, Transition, Window,
};
use std::collections::{BTreeMap, BTreeSet};

pub const CONFIG_KEYS: &[&str] = &[
    "source",
    "agent",
    "error_rate",
    "interfaces",
    "per_interface",
];

pub const METRIC_IN_BPS: &str = "if.in-bps";
pub const METRIC_OUT_BPS: &str = "if.out-bps";
pub const METRIC_IN_ERRORS: &str = "if.in-error-rate";
pub const METRIC_OUT_ERRORS: &str = "if.out-error-rate";
/// Worst per-direction error + discard rate across interfaces (aggregate only).
pub const METRIC_ERRORS: &str = "if.error-rate";
pub const METRIC_UP: &str = "if.up-count";
pub const METRIC_DOWN: &str = "if.down-count";
/// Metric of link alarms: 1 up, 0 down.
pub const METRIC_OPER_UP: &str = "if.oper-up";

pub const KEY_LINK: &str = "if.link:";
pub const KEY_IN_ERRORS: &str = "if.in-errors:";
pub const KEY_OUT_ERRORS: &str = "if.out-errors:";

/// Where interface readings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// SNMP when the node has an agent, else the OS.
    Auto,
    Snmp,
    Os,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub source: Source,
    /// Empty: the node's default agent.
    pub agent: String,
    /// Errors + discards per second, per direction, before alarming.
    pub error_rate: f64,
    /// Interface names to watch; empty watches all but loopbacks.
    pub interfaces: Vec<String>,
    pub per_interface: bool,
    pub common: Common,
}

impl Settings {
    pub fn from_config(pairs: &[(String, String)]) -> Result<Settings, ConfigError> {
        let known: Vec<&str> = CONFIG_KEYS.iter().chain(COMMON_KEYS).copied().collect();
        let config = Config::parse(pairs, &known)?;
        let source = match config.raw("source").unwrap_or("auto") {
            "auto" => Source::Auto,
            "snmp" => Source::Snmp,
            "os" => Source::Os,
            other => {
                return Err(ConfigError::invalid(
                    "source",
                    other,
                    "is not one of auto, snmp, os",
                ));
            }
        };
        let agent: String = config.get_or("agent", String::new())?;
        if source == Source::Os && !agent.is_empty() {
            return Err(ConfigError::invalid(
                "agent",
                &agent,
                "is set but source is os",
            ));
        }
        Ok(Settings {
            source,
            agent,
            error_rate: config.number_in("error_rate", 1.0, 0.0, f64::MAX)?,
            interfaces: config.list("interfaces"),
            per_interface: config.get_or("per_interface", false)?,
            common: config.common()?,
        })
    }
}

/// Operational state, reduced to what the alarms need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oper {
    Up,
    /// `down` or `lowerLayerDown`.
    Down,
    /// Testing, dormant, unknown, not present: neither.
    Other,
}

/// A counter reading and its width.
pub type Counter = Option<(u64, CounterWidth)>;

/// One interface, whichever source it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Iface {
    pub name: String,
    pub oper: Oper,
    /// False when an operator shut it (`ifAdminStatus` down, or the OS's
    /// `IFF_UP` flag cleared by `ip link set DEV down`).
    pub admin_up: bool,
    pub in_octets: Counter,
    pub out_octets: Counter,
    pub in_errors: Counter,
    pub out_errors: Counter,
    pub in_discards: Counter,
    pub out_discards: Counter,
    pub speed_bps: Option<u64>,
}

fn is_loopback(name: &str) -> bool {
    name == "lo" || name == "lo0" || name.to_ascii_lowercase().starts_with("loopback")
}

// IF-MIB columns (RFC 2863).
pub const IF_DESCR: &str = "1.3.6.1.2.1.2.2.1.2";
pub const IF_ADMIN_STATUS: &str = "1.3.6.1.2.1.2.2.1.7";
pub const IF_OPER_STATUS: &str = "1.3.6.1.2.1.2.2.1.8";
pub const IF_IN_DISCARDS: &str = "1.3.6.1.2.1.2.2.1.13";
pub const IF_IN_ERRORS: &str = "1.3.6.1.2.1.2.2.1.14";
pub const IF_OUT_DISCARDS: &str = "1.3.6.1.2.1.2.2.1.19";
pub const IF_OUT_ERRORS: &str = "1.3.6.1.2.1.2.2.1.20";
pub const IF_HC_IN_OCTETS: &str = "1.3.6.1.2.1.31.1.1.1.6";
pub const IF_HC_OUT_OCTETS: &str = "1.3.6.1.2.1.31.1.1.1.10";
pub const IF_HIGH_SPEED: &str = "1.3.6.1.2.1.31.1.1.1.15";

/// Columns read every tick, in this order.
const STATUS_COLUMNS: [&str; 8] = [
    IF_ADMIN_STATUS,
    IF_OPER_STATUS,
    IF_IN_DISCARDS,
    IF_IN_ERRORS,
    IF_OUT_DISCARDS,
    IF_OUT_ERRORS,
    IF_HC_IN_OCTETS,
    IF_HC_OUT_OCTETS,
];
/// Columns read when the interface set changes or once per refresh period.
const NAME_COLUMNS: [&str; 2] = [IF_DESCR, IF_HIGH_SPEED];

/// `sysUpTime`: GETNEXT of this gives `sysUpTime.0`.
pub const SYS_UP_TIME: &str = "1.3.6.1.2.1.1.3";
/// How long identical counters are taken as the agent's cached copy; after
/// that the interfaces are idle and the reading is a sample again.
pub const MAX_REPEAT_MS: u64 = 30_000;

/// GETBULK repetitions stay within what an agent answers in one datagram.
const MIN_REPETITIONS: u32 = 8;
const MAX_REPETITIONS: u32 = 25;

/// Reads IF-MIB through a GETBULK function, caching what rarely changes.
#[derive(Debug, Clone)]
pub struct SnmpSource {
    /// Index → (name, speed in bit/s).
    names: BTreeMap<Vec<u32>, (String, Option<u64>)>,
    names_read_at_ms: Option<u64>,
    refresh_ms: u64,
    /// Rows seen last time, to size the next GETBULK so that one request
    /// usually covers the whole table.
    last_rows: u32,
    /// Counters of the previous reading, to tell the agent's cached copy.
    last_counters: Option<Vec<(String, [Counter; 6])>>,
    /// Agent time (or module time, without `sysUpTime`) of the latest
    /// fresh reading, and the module's time of the latest reading.
    fresh_at_ms: Option<u64>,
    read_at_ms: Option<u64>,
    /// Readings that repeated the previous counters since the last fresh one.
    repeated: u32,
    /// Set once, when the agent was seen refreshing more slowly than the
    /// module ticks: (refresh interval, period), in ms.
    slow_agent: Option<(u64, u64)>,
    slow_agent_told: bool,
}

/// One reading of the interface table.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub ifaces: Vec<Iface>,
    /// The agent's clock when it answered (`sysUpTime`, in ms), if it has one.
    pub agent_ms: Option<u64>,
    /// False when the counters repeat the previous reading's (the agent's
    /// cached copy): not a new sample for rates.
    pub fresh: bool,
    /// For a source with cached counters: how long one counter may repeat
    /// its value before it counts as idle (a rate of 0); until then a
    /// repeated value is not a sample of that counter, even when others in
    /// the reading moved (an agent may refresh its tables apart). `None`:
    /// every value is a sample (the OS).
    pub idle_after_ms: Option<u64>,
}

impl Reading {
    /// A reading with a clock of the module's own (the OS): always fresh.
    pub fn of(ifaces: Vec<Iface>) -> Reading {
        Reading {
            ifaces,
            agent_ms: None,
            fresh: true,
            idle_after_ms: None,
        }
    }
}

impl SnmpSource {
    /// Names and speeds are re-read every `refresh_ms` (the report window).
    pub fn new(refresh_ms: u64) -> SnmpSource {
        SnmpSource {
            names: BTreeMap::new(),
            names_read_at_ms: None,
            refresh_ms,
            last_rows: 0,
            last_counters: None,
            fresh_at_ms: None,
            read_at_ms: None,
            repeated: 0,
            slow_agent: None,
            slow_agent_told: false,
        }
    }

    /// A warning for the log, once: the agent refreshes its counters more
    /// slowly than the module ticks.
    pub fn take_warning(&mut self) -> Option<String> {
        let (refresh_ms, period_ms) = self.slow_agent?;
        if std::mem::replace(&mut self.slow_agent_told, true) {
            return None;
        }
        Some(format!(
            "the agent refreshes its interface counters about every {:.1} s, more slowly than \
             this module's period ({:.1} s): readings in between repeat the last counters and \
             are not samples; a period of at least {:.0} s asks the agent less for the same data",
            refresh_ms as f64 / 1000.0,
            period_ms as f64 / 1000.0,
            (refresh_ms as f64 / 1000.0).ceil(),
        ))
    }

    fn repetitions(&self) -> u32 {
        (self.last_rows + 1).clamp(MIN_REPETITIONS, MAX_REPETITIONS)
    }

    /// Reads the interface table; `get_bulk` is called with the OIDs, the
    /// non-repeaters and the max-repetitions.
    pub fn read(
        &mut self,
        now_ms: u64,
        mut get_bulk: impl FnMut(&[String], u32, u32) -> Result<Vec<Varbind>, SnmpError>,
    ) -> Result<Reading, SnmpError> {
        let reps = self.repetitions();
        let mut uptime_ms = None;
        // `sysUpTime` rides along as a non-repeater of each status request:
        // the agent's clock at the moment it answered with these counters.
        let status = bulk_columns(&STATUS_COLUMNS, reps, |oids, reps| {
            let mut request = Vec::with_capacity(oids.len() + 1);
            request.push(SYS_UP_TIME.to_owned());
            request.extend_from_slice(oids);
            let mut varbinds = get_bulk(&request, 1, reps)?;
            if varbinds.is_empty() {
                return Ok(varbinds);
            }
            let uptime = varbinds.remove(0);
            if let (None, Value::Timeticks(ticks)) = (uptime_ms, &uptime.value) {
                uptime_ms = Some(u64::from(*ticks) * 10);
            }
            Ok(varbinds)
        })?;
        self.last_rows = u32::try_from(status.rows.len()).unwrap_or(u32::MAX);
        let stale = self
            .names_read_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= self.refresh_ms || now_ms < at);
        let unknown = status
            .rows
            .keys()
            .any(|index| !self.names.contains_key(index));
        if stale || unknown {
            let names = bulk_columns(&NAME_COLUMNS, reps, |oids, reps| get_bulk(oids, 0, reps))?;
            self.names = names_by_index(&names);
            self.names_read_at_ms = Some(now_ms);
        }
        let ifaces = self.ifaces(&status);
        let fresh = self.observe(now_ms, uptime_ms, &ifaces);
        // Twice the agent's refresh once known: an active counter repeats
        // for one refresh interval at most.
        let idle_after_ms = self.slow_agent.map_or(MAX_REPEAT_MS, |(refresh, _)| {
            (refresh * 2).min(MAX_REPEAT_MS)
        });
        Ok(Reading {
            ifaces,
            agent_ms: uptime_ms,
            fresh,
            idle_after_ms: Some(idle_after_ms),
        })
    }

    /// Whether a reading at `now_ms` (agent time `agent_ms`) is fresh, and
    /// what it tells about the agent's refresh interval.
    fn observe(&mut self, now_ms: u64, agent_ms: Option<u64>, ifaces: &[Iface]) -> bool {
        let counters: Vec<(String, [Counter; 6])> = ifaces
            .iter()
            .map(|i| {
                let c = [
                    i.in_octets,
                    i.out_octets,
                    i.in_errors,
                    i.out_errors,
                    i.in_discards,
                    i.out_discards,
                ];
                (i.name.clone(), c)
            })
            .collect();
        let clock = agent_ms.unwrap_or(now_ms);
        let repeated = self.last_counters.as_ref() == Some(&counters);
        let idle = self
            .fresh_at_ms
            .is_none_or(|at| clock < at || clock - at >= MAX_REPEAT_MS);
        let fresh = !repeated || idle;
        if fresh {
            if !repeated && self.repeated > 0 && self.slow_agent.is_none() {
                let refresh = self.fresh_at_ms.map(|at| clock.saturating_sub(at));
                let period = self.read_at_ms.map(|at| now_ms.saturating_sub(at));
                if let (Some(refresh), Some(period)) = (refresh, period)
                    && period > 0
                    && refresh > period
                {
                    self.slow_agent = Some((refresh, period));
                }
            }
            self.fresh_at_ms = Some(clock);
            self.repeated = 0;
        } else {
            self.repeated = self.repeated.saturating_add(1);
        }
        self.last_counters = Some(counters);
        self.read_at_ms = Some(now_ms);
        fresh
    }

    fn ifaces(&self, status: &Table) -> Vec<Iface> {
        status
            .rows
            .iter()
            .map(|(index, row)| {
                let (name, speed_bps) = self
                    .names
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| (format!("ifIndex.{}", join_index(index)), None));
                let integer = |col: usize| match row[col] {
                    Some(Value::Integer(v)) => Some(v),
                    _ => None,
                };
                let counter = |col: usize| row[col].as_ref().and_then(Value::as_counter);
                Iface {
                    name,
                    oper: match integer(1) {
                        Some(1) => Oper::Up,
                        Some(2 | 7) => Oper::Down,
                        _ => Oper::Other,
                    },
                    // Unknown admin status counts as up: better one alarm
                    // too many than a silent dead link.
                    admin_up: integer(0) != Some(2),
                    in_discards: counter(2),
                    in_errors: counter(3),
                    out_discards: counter(4),
                    out_errors: counter(5),
                    in_octets: counter(6),
                    out_octets: counter(7),
                    speed_bps,
                }
            })
            .collect()
    }
}

fn join_index(index: &[u32]) -> String {
    index
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// `ifDescr` per index (made unique with `#index` when an agent repeats one)
/// and `ifHighSpeed` in bit/s.
fn names_by_index(table: &Table) -> BTreeMap<Vec<u32>, (String, Option<u64>)> {
    let descr = |row: &[Option<Value>]| {
        row[0]
            .as_ref()
            .and_then(Value::as_text)
            .filter(|d| !d.is_empty())
    };
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for row in table.rows.values() {
        if let Some(d) = descr(row) {
            *seen.entry(d).or_default() += 1;
        }
    }
    table
        .rows
        .iter()
        .map(|(index, row)| {
            let name = match descr(row) {
                Some(d) if seen.get(&d).copied().unwrap_or(0) > 1 => {
                    format!("{d}#{}", join_index(index))
                }
                Some(d) => d,
                None => format!("ifIndex.{}", join_index(index)),
            };
            let speed = match row[1] {
                Some(Value::Unsigned32(mbps) | Value::Counter32(mbps)) if mbps > 0 => {
                    Some(u64::from(mbps) * 1_000_000)
                }
                Some(Value::Integer(mbps)) if mbps > 0 => {
                    u64::try_from(mbps).ok().map(|m| m * 1_000_000)
                }
                _ => None,
            };
            (index.clone(), (name, speed))
        })
        .collect()
}

/// Counters per interface that become rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CounterKind {
    InOctets,
    OutOctets,
    /// Errors + discards, as one counter: a reading where only one of the
    /// two is a sample must not make a rate of the other's absence.
    InFaults,
    OutFaults,
}

/// Errors + discards of one direction as one counter (either alone when
/// the agent has only one).
fn faults(errors: Counter, discards: Counter) -> Counter {
    match (errors, discards) {
        (Some((e, ew)), Some((d, dw))) => {
            let width = if ew == CounterWidth::Bits64 && dw == CounterWidth::Bits64 {
                CounterWidth::Bits64
            } else {
                CounterWidth::Bits32
            };
            Some((e.saturating_add(d), width))
        }
        (one, other) => one.or(other),
    }
}

#[derive(Debug)]
pub struct IfHealth {
    settings: Settings,
    /// How alarms and summaries name the agent; empty for the OS source.
    agent_label: String,
    pub alarms: Alarms,
    window: Window,
    rates: Rate<(String, CounterKind)>,
    /// Interfaces seen up since start: only those can "go down".
    seen_up: BTreeSet<String>,
    /// The latest fresh reading: its clock (the agent's) and the module's
    /// time then, where the next rates' intervals start on the module's
    /// clock.
    fresh_at: Option<(u64, u64)>,
    /// The current reading's `idle_after_ms`.
    idle_after_ms: Option<u64>,
    /// Why the last tick read nothing, for the log (changes only).
    pub problem: Option<String>,
}

impl IfHealth {
    /// `agent_label` is the agent's name for the SNMP source, empty for OS.
    pub fn new(settings: Settings, agent_label: String) -> IfHealth {
        IfHealth {
            alarms: Alarms::new(settings.common.raise_after, settings.common.clear_after),
            window: Window::new(settings.common.window_secs),
            rates: Rate::new(),
            seen_up: BTreeSet::new(),
            fresh_at: None,
            idle_after_ms: None,
            problem: None,
            agent_label,
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn watched(&self, iface: &Iface) -> bool {
        if self.settings.interfaces.is_empty() {
            !is_loopback(&iface.name)
        } else {
            self.settings.interfaces.contains(&iface.name)
        }
    }

    /// Decides what one reading of the interface table, taken with the
    /// module's clock (the OS), sends upward; `Err` is an SNMP failure.
    pub fn tick(&mut self, now_ms: u64, reading: Result<Vec<Iface>, SnmpError>) -> Output {
        self.tick_reading(now_ms, reading.map(Reading::of))
    }

    /// Decides what one reading sends upward: link states always; rates
    /// only from a fresh reading, over the reading's own clock.
    pub fn tick_reading(&mut self, now_ms: u64, reading: Result<Reading, SnmpError>) -> Output {
        let mut out = Output::default();
        let snmp = !self.agent_label.is_empty();
        let agent = agent_check(&self.agent_label, self.settings.common.raise_after);
        let Reading {
            ifaces,
            agent_ms,
            fresh,
            idle_after_ms,
        } = match reading {
            Ok(reading) => {
                self.problem = None;
                if snmp {
                    out.alarms
                        .extend(observe_agent(&mut self.alarms, &agent, None));
                }
                reading
            }
            Err(error) => {
                self.problem = Some(error.message());
                out.alarms
                    .extend(observe_agent(&mut self.alarms, &agent, Some(&error)));
                out.summaries = self.window.take_due(now_ms);
                return out;
            }
        };

        let watched: Vec<&Iface> = ifaces.iter().filter(|i| self.watched(i)).collect();
        // Rates are over the agent's clock when it has one; the window
        // takes them back on the module's, ending now.
        let clock = agent_ms.unwrap_or(now_ms);
        self.idle_after_ms = idle_after_ms;
        let (mut in_bps_total, mut out_bps_total, mut worst_errors) =
            (None::<Measured>, None::<Measured>, None::<Measured>);
        let (mut up, mut down) = (0u32, 0u32);
        for iface in &watched {
            let name = iface.name.as_str();
            match iface.oper {
                Oper::Up => {
                    up += 1;
                    self.seen_up.insert(name.to_owned());
                }
                Oper::Down => down += 1,
                Oper::Other => {}
            }
            out.alarms.extend(self.link(iface));

            if !fresh {
                continue;
            }
            let octet_limit = iface.speed_bps.map(|bps| bps as f64 / 8.0 * 2.0);
            let bits = |m: Measured| Measured {
                per_sec: m.per_sec * 8.0,
                ..m
            };
            let in_bps = self
                .rate(
                    name,
                    CounterKind::InOctets,
                    iface.in_octets,
                    clock,
                    octet_limit,
                )
                .map(bits);
            let out_bps = self
                .rate(
                    name,
                    CounterKind::OutOctets,
                    iface.out_octets,
                    clock,
                    octet_limit,
                )
                .map(bits);
            let in_errors = self.rate(
                name,
                CounterKind::InFaults,
                faults(iface.in_errors, iface.in_discards),
                clock,
                None,
            );
            let out_errors = self.rate(
                name,
                CounterKind::OutFaults,
                faults(iface.out_errors, iface.out_discards),
                clock,
                None,
            );
            for (prefix, metric, rate) in [
                (KEY_IN_ERRORS, METRIC_IN_ERRORS, in_errors),
                (KEY_OUT_ERRORS, METRIC_OUT_ERRORS, out_errors),
            ] {
                let Some(rate) = rate else { continue };
                let check = Check::new(format!("{prefix}{name}"), metric)
                    .subject(name)
                    .severity(Severity::Minor)
                    .threshold(Comparison::Above, self.settings.error_rate)
                    .unit("/s");
                out.alarms.extend(self.alarms.check(&check, rate.per_sec));
                worst_errors = combine(worst_errors, Some(rate), f64::max);
            }
            in_bps_total = combine(in_bps_total, in_bps, |a, b| a + b);
            out_bps_total = combine(out_bps_total, out_bps, |a, b| a + b);
            if self.settings.per_interface {
                for (metric, unit, value) in [
                    (METRIC_IN_BPS, "bit/s", in_bps),
                    (METRIC_OUT_BPS, "bit/s", out_bps),
                    (METRIC_IN_ERRORS, "/s", in_errors),
                    (METRIC_OUT_ERRORS, "/s", out_errors),
                ] {
                    if let Some(m) = value {
                        record_rate(
                            &mut self.window,
                            self.fresh_at,
                            now_ms,
                            metric,
                            name,
                            unit,
                            m,
                        );
                    }
                }
            }
        }
        for (metric, unit, value) in [
            (METRIC_IN_BPS, "bit/s", in_bps_total),
            (METRIC_OUT_BPS, "bit/s", out_bps_total),
            (METRIC_ERRORS, "/s", worst_errors),
        ] {
            if let Some(m) = value {
                record_rate(&mut self.window, self.fresh_at, now_ms, metric, "", unit, m);
            }
        }
        if fresh {
            self.fresh_at = Some((clock, now_ms));
        }
        self.window.record(now_ms, METRIC_UP, "", "", f64::from(up));
        self.window
            .record(now_ms, METRIC_DOWN, "", "", f64::from(down));

        // Interfaces that vanished (unplugged USB NIC, deleted VLAN, changed
        // filter): clear their alarms and forget their counters.
        let present: BTreeSet<String> = watched.iter().map(|i| i.name.clone()).collect();
        out.alarms.extend(self.alarms.retain_subjects(
            |key, subject| {
                if key.starts_with(AGENT_ALARM_KEY) {
                    key == agent.key
                } else {
                    present.contains(subject)
                }
            },
            "no longer present or watched",
        ));
        self.rates.retain(|(name, _)| present.contains(name));
        self.seen_up.retain(|name| present.contains(name));

        out.summaries = self.window.take_due(now_ms);
        out
    }

    fn link(&mut self, iface: &Iface) -> Option<agad_sdk::Alarm> {
        let name = iface.name.as_str();
        let key = format!("{KEY_LINK}{name}");
        // Only a link once seen up (or already alarmed before a restart) can
        // go down: unused switch ports are down from the start.
        let known = self.seen_up.contains(name) || self.alarms.is_raised(&key);
        let down = iface.admin_up && iface.oper == Oper::Down && known;
        let check = Check::new(key, METRIC_OPER_UP)
            .subject(name)
            .severity(Severity::Major)
            .threshold(Comparison::Below, 1.0);
        let value = if iface.oper == Oper::Up { 1.0 } else { 0.0 };
        let admin_up = iface.admin_up;
        self.alarms.observe(&check, value, down, |t| match t {
            Transition::Raised => format!("interface {name} down"),
            Transition::Cleared if !admin_up => {
                format!("interface {name} shut down by an operator")
            }
            Transition::Cleared => format!("interface {name} up again"),
        })
    }

    /// The rate of one counter since its previous fresh reading, `clock`
    /// being the reading's time (the agent's, when it has one).
    fn rate(
        &mut self,
        name: &str,
        kind: CounterKind,
        counter: Counter,
        clock: u64,
        limit: Option<f64>,
    ) -> Option<Measured> {
        let (value, width) = counter?;
        let key = (name.to_owned(), kind);
        match self.idle_after_ms {
            Some(idle) => self
                .rates
                .measure_changed(&key, value, width, clock, limit, idle),
            None => self.rates.measure(&key, value, width, clock, limit),
        }
    }
}

/// Two rates of one reading as one (`op` on the values, the shorter interval).
fn combine(
    a: Option<Measured>,
    b: Option<Measured>,
    op: impl Fn(f64, f64) -> f64,
) -> Option<Measured> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Measured {
            per_sec: op(a.per_sec, b.per_sec),
            from_ms: a.from_ms.max(b.from_ms),
            to_ms: a.to_ms.max(b.to_ms),
        }),
        (a, b) => a.or(b),
    }
}

/// Records a rate measured over an interval of the reading's clock as an
/// interval of the module's clock ending at `now_ms`: from the previous
/// fresh reading's time when the rate starts there (so consecutive rates
/// cover the module's time without gaps), else of the same length.
fn record_rate(
    window: &mut Window,
    previous: Option<(u64, u64)>,
    now_ms: u64,
    metric: &str,
    subject: &str,
    unit: &str,
    m: Measured,
) {
    let from_ms = match previous {
        Some((clock, wall)) if clock == m.from_ms && wall <= now_ms => wall,
        _ => now_ms.saturating_sub(m.to_ms.saturating_sub(m.from_ms)),
    };
    window.record_over(from_ms, now_ms, metric, subject, unit, m.per_sec);
}

/// The WIT glue: IF-MIB (or the OS) in, [`IfHealth::tick`] out.
mod guest {
    use super::{Counter, IfHealth, Iface, Oper, Reading, Settings, SnmpSource, Source};
    use agad_sdk::snmp_table::{log_problem_change, resolve_agent};
    use agad_sdk::types::Output;
    use agad_sdk::{Alarms, CounterWidth, Inspector, inspector, log, os, snmp};

    struct Module {
        inspector: IfHealth,
        /// `None` reads the OS.
        snmp: Option<SnmpSource>,
    }

    impl Inspector for Module {
        fn configure(config: &[(String, String)]) -> Result<Self, String> {
            let settings = Settings::from_config(config)?;
            let agent = match settings.source {
                Source::Os => None,
                Source::Auto => resolve_agent(&settings.agent)?,
                Source::Snmp => Some(
                    resolve_agent(&settings.agent)?
                        .ok_or("source: \"snmp\" but this node has no SNMP agent configured")?,
                ),
            };
            log::log(
                log::Level::Info,
                &format!(
                    "if-health reading {}: {settings:?}",
                    agent
                        .as_deref()
                        .map_or("the OS".to_owned(), |a| format!("SNMP agent {a}"))
                ),
            );
            let window_ms = settings.common.window_secs.saturating_mul(1000);
            Ok(Module {
                snmp: agent.is_some().then(|| SnmpSource::new(window_ms)),
                inspector: IfHealth::new(settings, agent.unwrap_or_default()),
            })
        }

        fn poll(&mut self, now_ms: u64) -> Output {
            let reading = match &mut self.snmp {
                Some(source) => {
                    let agent = self.inspector.settings().agent.clone();
                    let reading = source.read(now_ms, |oids, non_repeaters, reps| {
                        snmp::get_bulk(&agent, oids, non_repeaters, reps)
                    });
                    if let Some(warning) = source.take_warning() {
                        log::log(log::Level::Warn, &warning);
                    }
                    reading
                }
                None => Ok(Reading::of(
                    os::interfaces().into_iter().map(from_os).collect(),
                )),
            };
            let before = self.inspector.problem.clone();
            let out = self.inspector.tick_reading(now_ms, reading);
            log_problem_change(&before, &self.inspector.problem, "SNMP agent answers again");
            out
        }

        fn alarms(&mut self) -> &mut Alarms {
            &mut self.inspector.alarms
        }
    }

    fn from_os(i: os::NetInterface) -> Iface {
        let counter = |v: u64| -> Counter { Some((v, CounterWidth::Bits64)) };
        Iface {
            oper: match i.oper_state {
                os::OperState::Up => Oper::Up,
                os::OperState::Down | os::OperState::LowerLayerDown => Oper::Down,
                _ => Oper::Other,
            },
            admin_up: i.admin_up,
            in_octets: counter(i.in_octets),
            out_octets: counter(i.out_octets),
            in_errors: counter(i.in_errors),
            out_errors: counter(i.out_errors),
            in_discards: counter(i.in_drops),
            out_discards: counter(i.out_drops),
            speed_bps: i.speed_bps.filter(|s| *s > 0),
            name: i.name,
        }
    }

    inspector!(Module);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_sdk::Alarm;
    use agad_sdk::snmp_table::compare_oids;
    use std::cmp::Ordering;

    use agad_sdk::config::pairs;

    fn settings(items: &[(&str, &str)]) -> Settings {
        Settings::from_config(&pairs(items)).expect("valid config")
    }

    fn c64(v: u64) -> Counter {
        Some((v, CounterWidth::Bits64))
    }

    fn iface(name: &str, oper: Oper, octets: u64, errors: u64) -> Iface {
        Iface {
            name: name.into(),
            oper,
            admin_up: true,
            in_octets: c64(octets),
            out_octets: c64(octets / 2),
            in_errors: c64(errors),
            out_errors: c64(0),
            in_discards: c64(0),
            out_discards: c64(0),
            speed_bps: Some(1_000_000_000),
        }
    }

    fn run(inspector: &mut IfHealth, ticks: &[Vec<Iface>]) -> Vec<Alarm> {
        ticks
            .iter()
            .enumerate()
            .flat_map(|(i, t)| inspector.tick(i as u64 * 10_000, Ok(t.clone())).alarms)
            .collect()
    }

    #[test]
    fn config() {
        let s = settings(&[]);
        assert_eq!(
            (
                s.source,
                s.error_rate,
                s.per_interface,
                s.interfaces.is_empty()
            ),
            (Source::Auto, 1.0, false, true)
        );
        let err = |items| {
            Settings::from_config(&pairs(items))
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(
            err(&[("source", "ipfix")]),
            "source: \"ipfix\" is not one of auto, snmp, os"
        );
        assert_eq!(
            err(&[("error_rate", "-1")]).split(" is").next(),
            Some("error_rate: \"-1\"")
        );
        assert_eq!(
            err(&[("source", "os"), ("agent", "r1")]),
            "agent: \"r1\" is set but source is os"
        );
        assert!(err(&[("agnt", "r1")]).starts_with("unknown config key \"agnt\""));
    }

    #[test]
    fn link_down_raised_once_and_cleared_once() {
        let mut inspector = IfHealth::new(settings(&[("window_secs", "100000")]), String::new());
        let up = vec![iface("eth0", Oper::Up, 0, 0), iface("lo", Oper::Up, 0, 0)];
        let down = vec![
            iface("eth0", Oper::Down, 0, 0),
            iface("lo", Oper::Down, 0, 0),
        ];
        let ticks = [
            &up, &down, &up, &down, &down, &down, &down, &up, &down, &up, &up, &up,
        ]
        .map(|t| t.clone());
        let alarms = run(&mut inspector, &ticks);
        assert_eq!(alarms.len(), 2, "{alarms:?}");
        assert!(alarms[0].raised);
        assert_eq!(
            (alarms[0].key.as_str(), alarms[0].severity),
            ("if.link:eth0", Severity::Major)
        );
        assert_eq!(alarms[0].message, "interface eth0 down");
        assert!(!alarms[1].raised);
        assert_eq!(alarms[1].message, "interface eth0 up again");
    }

    #[test]
    fn never_up_or_admin_down_does_not_alarm() {
        let mut inspector = IfHealth::new(settings(&[("raise_after", "1")]), String::new());
        let mut shut = iface("eth1", Oper::Down, 0, 0);
        assert!(
            run(
                &mut inspector,
                &vec![vec![iface("eth0", Oper::Down, 0, 0)]; 5]
            )
            .is_empty()
        );
        shut.admin_up = false;
        let ticks = vec![
            vec![iface("eth1", Oper::Up, 0, 0)],
            vec![shut.clone()],
            vec![shut],
        ];
        assert!(run(&mut inspector, &ticks).is_empty());
    }

    #[test]
    fn error_rate_alarm_and_no_flood() {
        let mut inspector = IfHealth::new(settings(&[("error_rate", "1")]), String::new());
        // 50 errors per 10 s = 5/s for 4 intervals, then flat.
        let errors = [0, 50, 100, 150, 200, 200, 200, 200, 200];
        let ticks: Vec<Vec<Iface>> = errors
            .iter()
            .map(|&e| vec![iface("eth0", Oper::Up, 0, e)])
            .collect();
        let alarms = run(&mut inspector, &ticks);
        assert_eq!(alarms.len(), 2, "{alarms:?}");
        assert_eq!(
            (
                alarms[0].key.as_str(),
                alarms[0].metric.as_str(),
                alarms[0].value
            ),
            ("if.in-errors:eth0", METRIC_IN_ERRORS, 5.0)
        );
        assert!(!alarms[1].raised);

        let mut flapping = IfHealth::new(settings(&[]), String::new());
        let mut total = 0;
        let ticks: Vec<Vec<Iface>> = (0..60u64)
            .map(|i| vec![iface("eth0", Oper::Up, 0, (i / 2) * 100 + (i % 2))])
            .collect();
        total += run(&mut flapping, &ticks).len();
        assert_eq!(total, 0);
    }

    #[test]
    fn summaries_are_aggregated_and_per_interface_on_request() {
        let ticks = |n: u64| -> Vec<Vec<Iface>> {
            (0..n)
                .map(|i| {
                    vec![
                        iface("eth0", Oper::Up, i * 1_000, 0),
                        iface("eth1", Oper::Down, i * 3_000, 0),
                        iface("lo", Oper::Up, i * 1_000_000, 0),
                    ]
                })
                .collect()
        };
        let mut inspector = IfHealth::new(settings(&[("window_secs", "30")]), String::new());
        for (i, t) in ticks(3).into_iter().enumerate() {
            assert!(
                inspector
                    .tick(i as u64 * 10_000, Ok(t))
                    .summaries
                    .is_empty()
            );
        }
        let summaries = inspector.tick(30_000, Ok(ticks(4).remove(3))).summaries;
        let got: Vec<(&str, &str, f64, u32)> = summaries
            .iter()
            .map(|s| (s.metric.as_str(), s.subject.as_str(), s.last, s.count))
            .collect();
        // Octets grow 1000 + 3000 per 10 s: 400 B/s = 3200 bit/s in, half that out; lo excluded.
        assert_eq!(
            got,
            vec![
                (METRIC_DOWN, "", 1.0, 3),
                (METRIC_ERRORS, "", 0.0, 2),
                (METRIC_IN_BPS, "", 3200.0, 2),
                (METRIC_OUT_BPS, "", 1600.0, 2),
                (METRIC_UP, "", 1.0, 3),
            ]
        );

        let mut detailed = IfHealth::new(
            settings(&[("window_secs", "30"), ("per_interface", "true")]),
            String::new(),
        );
        for (i, t) in ticks(4).into_iter().enumerate() {
            let summaries = detailed.tick(i as u64 * 10_000, Ok(t)).summaries;
            if i == 3 {
                assert_eq!(summaries.len(), 5 + 2 * 4);
                assert!(
                    summaries.iter().any(|s| s.metric == METRIC_IN_BPS
                        && s.subject == "eth1"
                        && s.last == 2400.0)
                );
            }
        }
    }

    #[test]
    fn agent_failure_is_one_alarm_cleared_on_answer() {
        let mut inspector = IfHealth::new(settings(&[]), "sw1".into());
        let mut alarms = Vec::new();
        for i in 0..10u64 {
            alarms.extend(
                inspector
                    .tick(i, Err(SnmpError::Transport("connection refused".into())))
                    .alarms,
            );
        }
        assert_eq!(alarms.len(), 1);
        assert_eq!(
            alarms[0].message,
            "SNMP agent sw1 unreachable: SNMP transport error: connection refused"
        );
        assert!(inspector.problem.is_some());
        let out = inspector.tick(10, Ok(vec![iface("eth0", Oper::Up, 0, 0)]));
        assert_eq!(out.alarms.len(), 1);
        assert!(!out.alarms[0].raised && out.alarms[0].key == "snmp.agent:sw1");
        assert!(inspector.problem.is_none());
    }

    #[test]
    fn vanished_interface_clears_its_alarm() {
        let mut inspector = IfHealth::new(settings(&[("raise_after", "1")]), String::new());
        let ticks = vec![
            vec![iface("eth0", Oper::Up, 0, 0)],
            vec![iface("eth0", Oper::Down, 0, 0)],
            vec![],
        ];
        let alarms = run(&mut inspector, &ticks);
        assert_eq!(alarms.len(), 2);
        assert!(alarms[0].raised && !alarms[1].raised);
    }

    #[test]
    fn restored_link_alarm_stays_until_the_link_is_up() {
        let mut before = IfHealth::new(settings(&[("raise_after", "1")]), String::new());
        run(
            &mut before,
            &[
                vec![iface("eth0", Oper::Up, 0, 0)],
                vec![iface("eth0", Oper::Down, 0, 0)],
            ],
        );
        let persisted = before.alarms.take_changed().expect("changed");
        let mut after = IfHealth::new(settings(&[("clear_after", "1")]), String::new());
        after.alarms.restore(&persisted);
        assert!(run(&mut after, &vec![vec![iface("eth0", Oper::Down, 0, 0)]; 5]).is_empty());
        let alarms = run(&mut after, &[vec![iface("eth0", Oper::Up, 0, 0)]]);
        assert_eq!(alarms.len(), 1);
        assert!(!alarms[0].raised);
    }

    /// An IF-MIB agent for [`SnmpSource`], counting requests.
    struct FakeAgent {
        mib: Vec<(String, Value)>,
        requests: Vec<(Vec<String>, u32)>,
    }

    impl FakeAgent {
        fn set(&mut self, oid: &str, value: Value) {
            let slot = self.mib.iter_mut().find(|(o, _)| o == oid).unwrap();
            slot.1 = value;
        }
    }

    impl FakeAgent {
        fn new(interfaces: u32, octets: u64) -> FakeAgent {
            let mut mib = Vec::new();
            for i in 1..=interfaces {
                let name = if i == 3 {
                    "eth1".to_owned()
                } else {
                    format!("eth{i}")
                };
                mib.push((
                    format!("{IF_DESCR}.{i}"),
                    Value::OctetString(name.into_bytes()),
                ));
                mib.push((
                    format!("{IF_ADMIN_STATUS}.{i}"),
                    Value::Integer(if i == 2 { 2 } else { 1 }),
                ));
                mib.push((
                    format!("{IF_OPER_STATUS}.{i}"),
                    Value::Integer(if i == 2 { 2 } else { 1 }),
                ));
                for col in [IF_IN_DISCARDS, IF_IN_ERRORS, IF_OUT_DISCARDS, IF_OUT_ERRORS] {
                    mib.push((format!("{col}.{i}"), Value::Counter32(7)));
                }
                mib.push((format!("{IF_HC_IN_OCTETS}.{i}"), Value::Counter64(octets)));
                mib.push((format!("{IF_HC_OUT_OCTETS}.{i}"), Value::Counter64(octets)));
                mib.push((format!("{IF_HIGH_SPEED}.{i}"), Value::Unsigned32(1000)));
            }
            mib.push(("1.3.6.1.2.1.4.1.0".into(), Value::Integer(1)));
            mib.push((format!("{SYS_UP_TIME}.0"), Value::Timeticks(100)));
            mib.sort_by(|a, b| compare_oids(&a.0, &b.0));
            FakeAgent {
                mib,
                requests: Vec::new(),
            }
        }

        fn get_bulk(
            &mut self,
            oids: &[String],
            non_repeaters: u32,
            reps: u32,
        ) -> Result<Vec<Varbind>, SnmpError> {
            self.requests.push((oids.to_vec(), reps));
            let next = |mib: &[(String, Value)], cursor: &str| match mib
                .iter()
                .find(|(oid, _)| compare_oids(oid, cursor) == Ordering::Greater)
            {
                Some((oid, value)) => Varbind {
                    oid: oid.clone(),
                    value: value.clone(),
                },
                None => Varbind {
                    oid: cursor.to_owned(),
                    value: Value::EndOfMibView,
                },
            };
            let n = non_repeaters as usize;
            let mut out: Vec<Varbind> = oids[..n].iter().map(|o| next(&self.mib, o)).collect();
            let mut cursors = oids[n..].to_vec();
            for _ in 0..reps {
                for cursor in cursors.iter_mut() {
                    let vb = next(&self.mib, cursor);
                    if vb.value != Value::EndOfMibView {
                        cursor.clone_from(&vb.oid);
                    }
                    out.push(vb);
                }
            }
            Ok(out)
        }
    }

    #[test]
    fn snmp_source_reads_if_mib_with_few_requests() {
        let mut source = SnmpSource::new(60_000);
        let mut agent = FakeAgent::new(4, 1_000);
        let ifaces = source
            .read(0, |oids, n, reps| agent.get_bulk(oids, n, reps))
            .expect("answers")
            .ifaces;
        assert_eq!(ifaces.len(), 4);
        assert_eq!(ifaces[0].name, "eth1#1", "duplicate ifDescr made unique");
        assert_eq!(ifaces[1].name, "eth2");
        assert!(!ifaces[1].admin_up && ifaces[1].oper == Oper::Down);
        assert_eq!(ifaces[3].in_octets, Some((1_000, CounterWidth::Bits64)));
        assert_eq!(ifaces[3].in_errors, Some((7, CounterWidth::Bits32)));
        assert_eq!(ifaces[3].speed_bps, Some(1_000_000_000));
        // First tick: one GETBULK for sysUpTime and the 8 status columns,
        // one for names.
        assert_eq!(agent.requests.len(), 2);
        assert_eq!(agent.requests[0].0.len(), 9);
        assert_eq!(agent.requests[0].0[0], SYS_UP_TIME);
        assert_eq!(
            agent.requests[1].0,
            vec![IF_DESCR.to_owned(), IF_HIGH_SPEED.to_owned()]
        );

        // Next tick within the window: status only, sized to the table.
        agent.requests.clear();
        source
            .read(10_000, |oids, n, reps| agent.get_bulk(oids, n, reps))
            .expect("answers");
        assert_eq!(agent.requests.len(), 1);
        assert_eq!(agent.requests[0].1, MIN_REPETITIONS);

        // A new window re-reads the names.
        agent.requests.clear();
        source
            .read(60_000, |oids, n, reps| agent.get_bulk(oids, n, reps))
            .expect("answers");
        assert_eq!(agent.requests.len(), 2);
    }

    /// An agent that serves its cached counters for 3 s, read every 1 s:
    /// the repeats are not samples, rates are over the agent's clock, and
    /// the module is told once that it ticks faster than the agent.
    #[test]
    fn repeated_counters_are_not_samples_and_rates_use_agent_time() {
        let mut source = SnmpSource::new(600_000);
        let mut agent = FakeAgent::new(1, 0);
        let mut inspector = IfHealth::new(
            settings(&[("window_secs", "600"), ("error_rate", "10")]),
            "r1".into(),
        );
        let in_octets = format!("{IF_HC_IN_OCTETS}.1");
        let discards = format!("{IF_IN_DISCARDS}.1");
        let uptime = format!("{SYS_UP_TIME}.0");
        let mut alarms = Vec::new();
        let mut fresh = 0;
        // 1000 B/s and 50 discards/s; the agent reloads at 0, 3, 6, ... s
        // (agent time = module time + 20 s, answering 40 ms late).
        for second in 0..31u64 {
            let loaded = second / 3 * 3;
            agent.set(&in_octets, Value::Counter64(loaded * 1_000));
            agent.set(&discards, Value::Counter32((loaded * 50) as u32));
            agent.set(&uptime, Value::Timeticks(((20 + loaded) * 100) as u32));
            let now = 1_000_000 + second * 1_000 + 40;
            let reading = source
                .read(now, |oids, n, reps| agent.get_bulk(oids, n, reps))
                .unwrap();
            fresh += usize::from(reading.fresh);
            alarms.extend(inspector.tick_reading(now, Ok(reading)).alarms);
        }
        assert_eq!(fresh, 11, "one fresh reading per agent refresh");
        let raised: Vec<_> = alarms.iter().filter(|a| a.raised).collect();
        assert_eq!(raised.len(), 1, "{alarms:?}");
        assert_eq!(raised[0].key, "if.in-errors:eth1");
        assert_eq!(raised[0].value, 50.0, "every rate is the true one");
        let warning = source.take_warning().expect("warned");
        assert!(warning.contains("about every 3.0 s"), "{warning}");
        assert!(warning.contains("period (1.0 s)"), "{warning}");
        assert_eq!(source.take_warning(), None, "once");
        let summaries = inspector.window.flush(0);
        let in_bps = summaries
            .iter()
            .find(|s| s.metric == METRIC_IN_BPS)
            .unwrap();
        assert_eq!(
            (in_bps.min, in_bps.max, in_bps.mean),
            (8_000.0, 8_000.0, 8_000.0)
        );
    }

    /// Octets and discards refreshed at different moments (tables an agent
    /// caches apart): a reading where only one moved is no sample of the
    /// other.
    #[test]
    fn counters_refreshed_apart_give_true_rates() {
        let mut source = SnmpSource::new(600_000);
        let mut agent = FakeAgent::new(1, 0);
        let mut inspector = IfHealth::new(
            settings(&[("window_secs", "600"), ("per_interface", "true")]),
            "r1".into(),
        );
        let in_octets = format!("{IF_HC_IN_OCTETS}.1");
        let discards = format!("{IF_IN_DISCARDS}.1");
        let uptime = format!("{SYS_UP_TIME}.0");
        // Octets load at 0, 3, 6 ... s, discards at 1, 4, 7 ... s.
        for second in 1..30u64 {
            let octets_loaded = second / 3 * 3;
            let discards_loaded = (second - 1) / 3 * 3 + 1;
            agent.set(&in_octets, Value::Counter64(octets_loaded * 1_000));
            agent.set(&discards, Value::Counter32((discards_loaded * 5) as u32));
            agent.set(&uptime, Value::Timeticks((second * 100) as u32));
            let now = 1_000_000 + second * 1_000;
            let reading = source
                .read(now, |oids, n, reps| agent.get_bulk(oids, n, reps))
                .unwrap();
            inspector.tick_reading(now, Ok(reading));
        }
        let summaries = inspector.window.flush(0);
        let in_bps = summaries
            .iter()
            .find(|s| s.metric == METRIC_IN_BPS && s.subject == "eth1")
            .unwrap();
        // No rate of 0 and none 3× the truth (the readings where only the
        // discards moved); the first rate is over a load seen 1 s late.
        assert_eq!((in_bps.min, in_bps.last), (8_000.0, 8_000.0), "{in_bps:?}");
        assert!(in_bps.max <= 12_000.0, "{in_bps:?}");
        let errors = summaries
            .iter()
            .find(|s| s.metric == METRIC_IN_ERRORS && s.subject == "eth1")
            .unwrap();
        assert_eq!((errors.min, errors.last), (5.0, 5.0), "{errors:?}");
        assert!(errors.max <= 7.5, "{errors:?}");
    }

    #[test]
    fn idle_counters_become_samples_again() {
        let mut source = SnmpSource::new(600_000);
        let mut agent = FakeAgent::new(1, 5);
        let mut fresh = Vec::new();
        for second in 0..40u64 {
            let uptime = format!("{SYS_UP_TIME}.0");
            agent.set(&uptime, Value::Timeticks((second * 100) as u32));
            let reading = source
                .read(second * 1_000, |oids, n, reps| {
                    agent.get_bulk(oids, n, reps)
                })
                .unwrap();
            fresh.push(reading.fresh);
        }
        let fresh_at: Vec<usize> = (0..40).filter(|&i| fresh[i]).collect();
        assert_eq!(fresh_at, vec![0, 30]);
        assert_eq!(
            source.take_warning(),
            None,
            "nothing changed: nothing learnt"
        );
    }

    #[test]
    fn snmp_source_large_table_and_errors() {
        let mut source = SnmpSource::new(60_000);
        let mut agent = FakeAgent::new(48, 5);
        let ifaces = source
            .read(0, |oids, n, reps| agent.get_bulk(oids, n, reps))
            .expect("answers")
            .ifaces;
        assert_eq!(ifaces.len(), 48);
        agent.requests.clear();
        source
            .read(1, |oids, n, reps| agent.get_bulk(oids, n, reps))
            .expect("answers");
        assert_eq!(agent.requests.len(), 2, "48 rows at 25 per request");
        assert_eq!(
            source
                .read(2, |_, _, _| Err(SnmpError::Timeout))
                .expect_err("fails"),
            SnmpError::Timeout
        );
    }
}
