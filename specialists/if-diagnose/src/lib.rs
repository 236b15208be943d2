//! `if-diagnose`: for an interface alarm, the interface's state and
//! counters over a short interval: errors, discards, speed and duplex, and
//! which way the traffic flows.
//!
//! Reads the interface twice, `sample` apart: from the node's SNMP agent
//! (IF-MIB `ifTable`/`ifXTable`, EtherLike-MIB's duplex) or, on a node
//! without one, from the kernel (the `os` capability; duplex from
//! `/sys/class/net/<if>/duplex`).
//!
//! | arg         | default  | meaning                                      |
//! |-------------|----------|----------------------------------------------|
//! | `interface` | required | ifName or ifDescr (SNMP), kernel name (OS)   |
//! | `sample`    | 2s       | interval, 100ms to 10s                       |
//! | `source`    | auto     | `auto` (SNMP when the node has an agent), `snmp`, `os` |
//! | `agent`     | first    | SNMP agent name                              |
//!
//! Facts: `cause` (`admin-down`, `link-down`, `errors`, `discards`,
//! `half-duplex`, `saturated`, `none`), `oper_state`, `admin_up`,
//! `speed_bps`, `duplex` (`full`, `half`, `unknown`), `in_bps`, `out_bps`,
//! `direction` (`in`, `out`, `both`, `idle`), `in_errors`, `out_errors`,
//! `in_discards`, `out_discards` (increases over the interval),
//! `source`, `if_index` (SNMP).

use agad_sdk::snmp::{self, SnmpError, Value};
use agad_sdk::{Config, Diagnosis, os};
use std::time::Duration;

pub const ARGS: &[&str] = &["interface", "sample", "source", "agent"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Auto,
    Snmp,
    Os,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub interface: String,
    pub sample: Duration,
    pub source: Source,
    pub agent: String,
}

pub fn parse_args(config: &Config) -> Result<Args, String> {
    let interface: String = config.require("interface")?;
    let sample: Duration = config.get_or("sample", Duration::from_secs(2))?;
    if sample < Duration::from_millis(100) || sample > Duration::from_secs(10) {
        return Err(format!(
            "sample: \"{}\" is not between 100ms and 10s",
            config.raw("sample").unwrap_or_default()
        ));
    }
    let source = match config.raw("source").unwrap_or("auto") {
        "auto" => Source::Auto,
        "snmp" => Source::Snmp,
        "os" => Source::Os,
        other => return Err(format!("source: \"{other}\" is not one of auto, snmp, os")),
    };
    Ok(Args {
        interface,
        sample,
        source,
        agent: config.raw("agent").unwrap_or_default().to_owned(),
    })
}

/// One reading of the interface.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    pub oper_state: String,
    pub admin_up: bool,
    pub speed_bps: Option<u64>,
    pub duplex: &'static str,
    pub in_octets: u64,
    pub out_octets: u64,
    pub in_errors: u64,
    pub out_errors: u64,
    pub in_discards: u64,
    pub out_discards: u64,
}

/// Share of the speed above which a direction counts as saturated.
pub const SATURATED: f64 = 0.9;
/// Below this many bits per second a direction counts as idle.
pub const IDLE_BPS: f64 = 1_000.0;

pub fn diagnose(
    args: &Args,
    source: &str,
    before: &Reading,
    after: &Reading,
    elapsed: Duration,
) -> Diagnosis {
    let secs = elapsed.as_secs_f64().max(0.001);
    // A counter that went backwards was reset (or wrapped, for a 32-bit
    // one): the interval says nothing, so it counts as no change.
    let delta = |a: u64, b: u64| b.saturating_sub(a);
    let in_bps = delta(before.in_octets, after.in_octets) as f64 * 8.0 / secs;
    let out_bps = delta(before.out_octets, after.out_octets) as f64 * 8.0 / secs;
    let in_errors = delta(before.in_errors, after.in_errors);
    let out_errors = delta(before.out_errors, after.out_errors);
    let in_discards = delta(before.in_discards, after.in_discards);
    let out_discards = delta(before.out_discards, after.out_discards);
    let direction = match (in_bps >= IDLE_BPS, out_bps >= IDLE_BPS) {
        (true, true) if in_bps >= 4.0 * out_bps => "in",
        (true, true) if out_bps >= 4.0 * in_bps => "out",
        (true, true) => "both",
        (true, false) => "in",
        (false, true) => "out",
        (false, false) => "idle",
    };
    let saturated = after
        .speed_bps
        .filter(|s| *s > 0)
        .is_some_and(|s| in_bps.max(out_bps) >= SATURATED * s as f64);
    let cause = if !after.admin_up {
        "admin-down"
    } else if matches!(
        after.oper_state.as_str(),
        "down" | "lower-layer-down" | "not-present"
    ) {
        // `unknown` is what the kernel reports for loopback and many
        // virtual interfaces that carry traffic all the same.
        "link-down"
    } else if in_errors + out_errors > 0 {
        "errors"
    } else if in_discards + out_discards > 0 {
        "discards"
    } else if after.duplex == "half" {
        "half-duplex"
    } else if saturated {
        "saturated"
    } else {
        "none"
    };
    Diagnosis::new(format!(
        "{} is {} (admin {}), {}, {} duplex; in {:.0} bit/s, out {:.0} bit/s; {} errors, {} discards in {} ms",
        args.interface,
        after.oper_state,
        if after.admin_up { "up" } else { "down" },
        after
            .speed_bps
            .map(|s| format!("{s} bit/s"))
            .unwrap_or_else(|| "speed unknown".into()),
        after.duplex,
        in_bps,
        out_bps,
        in_errors + out_errors,
        in_discards + out_discards,
        elapsed.as_millis()
    ))
    .fact("cause", cause)
    .fact("oper_state", &after.oper_state)
    .fact("admin_up", after.admin_up)
    .fact(
        "speed_bps",
        after.speed_bps.map(|s| s.to_string()).unwrap_or_default(),
    )
    .fact("duplex", after.duplex)
    .fact("in_bps", format!("{in_bps:.0}"))
    .fact("out_bps", format!("{out_bps:.0}"))
    .fact("direction", direction)
    .fact("in_errors", in_errors)
    .fact("out_errors", out_errors)
    .fact("in_discards", in_discards)
    .fact("out_discards", out_discards)
    .fact("source", source)
}

fn oper_name(state: os::OperState) -> &'static str {
    match state {
        os::OperState::Up => "up",
        os::OperState::Down => "down",
        os::OperState::Unknown => "unknown",
        os::OperState::Dormant => "dormant",
        os::OperState::LowerLayerDown => "lower-layer-down",
        os::OperState::NotPresent => "not-present",
        os::OperState::Testing => "testing",
    }
}

fn read_os(name: &str) -> Result<Reading, String> {
    let all = os::interfaces();
    let i = all.iter().find(|i| i.name == name).ok_or_else(|| {
        format!(
            "interface: \"{name}\" is not an interface of this node (it has: {})",
            all.iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    Ok(Reading {
        oper_state: oper_name(i.oper_state).to_owned(),
        admin_up: i.admin_up,
        speed_bps: i.speed_bps,
        duplex: match i.duplex {
            os::Duplex::Full => "full",
            os::Duplex::Half => "half",
            os::Duplex::Unknown => "unknown",
        },
        in_octets: i.in_octets,
        out_octets: i.out_octets,
        in_errors: i.in_errors,
        out_errors: i.out_errors,
        in_discards: i.in_drops,
        out_discards: i.out_drops,
    })
}

const IF_DESCR: &str = "1.3.6.1.2.1.2.2.1.2";
const IF_NAME: &str = "1.3.6.1.2.1.31.1.1.1.1";

fn snmp_error(e: SnmpError) -> String {
    match e {
        SnmpError::UnknownAgent(a) => format!("agent: \"{a}\" is not an agent of this node"),
        SnmpError::InvalidOid(o) => format!("invalid OID {o}"),
        SnmpError::Timeout => "the SNMP agent did not answer".into(),
        SnmpError::AgentError(e) => format!("the SNMP agent answered with an error: {e}"),
        SnmpError::Transport(e) => format!("SNMP transport: {e}"),
    }
}

/// The ifIndex of the interface whose ifName or ifDescr is `name`.
fn if_index(agent: &str, name: &str) -> Result<u32, String> {
    for column in [IF_NAME, IF_DESCR] {
        let rows = match snmp::walk(agent, column) {
            Ok(rows) => rows,
            // ifXTable is optional: fall through to ifDescr.
            Err(SnmpError::AgentError(_)) if column == IF_NAME => continue,
            Err(e) => return Err(snmp_error(e)),
        };
        for row in rows {
            if row.value.as_text().as_deref() == Some(name)
                && let Some(index) = agad_sdk::snmp_table::index_under(&row.oid, column)
                && let [index] = index.as_slice()
            {
                return Ok(*index);
            }
        }
    }
    Err(format!(
        "interface: \"{name}\" is neither an ifName nor an ifDescr of the agent"
    ))
}

/// Column OIDs read per sample, in [`read_snmp`]'s order.
const COLUMNS: [&str; 10] = [
    "1.3.6.1.2.1.2.2.1.8",     // ifOperStatus
    "1.3.6.1.2.1.2.2.1.7",     // ifAdminStatus
    "1.3.6.1.2.1.31.1.1.1.15", // ifHighSpeed (Mbit/s)
    "1.3.6.1.2.1.31.1.1.1.6",  // ifHCInOctets
    "1.3.6.1.2.1.31.1.1.1.10", // ifHCOutOctets
    "1.3.6.1.2.1.2.2.1.14",    // ifInErrors
    "1.3.6.1.2.1.2.2.1.20",    // ifOutErrors
    "1.3.6.1.2.1.2.2.1.13",    // ifInDiscards
    "1.3.6.1.2.1.2.2.1.19",    // ifOutDiscards
    "1.3.6.1.2.1.10.7.2.1.19", // dot3StatsDuplexStatus
];

/// A reading from SNMP values in [`COLUMNS`] order (missing ones read as 0
/// or unknown).
pub fn reading_from_values(values: &[Value]) -> Reading {
    let num = |i: usize| values.get(i).and_then(Value::as_f64);
    let count = |i: usize| {
        values
            .get(i)
            .and_then(Value::as_counter)
            .map_or(0, |(v, _)| v)
    };
    let oper_state = match num(0).map(|v| v as i64) {
        Some(1) => "up",
        Some(2) => "down",
        Some(3) => "testing",
        Some(5) => "dormant",
        Some(6) => "not-present",
        Some(7) => "lower-layer-down",
        _ => "unknown",
    };
    Reading {
        oper_state: oper_state.to_owned(),
        // Unknown admin status counts as up, as the inspectors read it.
        admin_up: num(1).is_none_or(|v| v as i64 != 2),
        speed_bps: num(2)
            .filter(|v| *v > 0.0)
            .map(|mbps| mbps as u64 * 1_000_000),
        duplex: match num(9).map(|v| v as i64) {
            Some(2) => "half",
            Some(3) => "full",
            _ => "unknown",
        },
        in_octets: count(3),
        out_octets: count(4),
        in_errors: count(5),
        out_errors: count(6),
        in_discards: count(7),
        out_discards: count(8),
    }
}

fn read_snmp(agent: &str, index: u32) -> Result<Reading, String> {
    let oids: Vec<String> = COLUMNS.iter().map(|c| format!("{c}.{index}")).collect();
    let varbinds = snmp::get(agent, &oids).map_err(snmp_error)?;
    let values: Vec<Value> = varbinds.into_iter().map(|v| v.value).collect();
    Ok(reading_from_values(&values))
}

pub struct IfDiagnose;

impl agad_sdk::Specialist for IfDiagnose {
    const ARGS: &'static [&'static str] = ARGS;

    fn run(config: &Config) -> Result<Diagnosis, String> {
        let args = parse_args(config)?;
        let use_snmp = match args.source {
            Source::Snmp => true,
            Source::Os => false,
            Source::Auto => !snmp::agents().is_empty(),
        };
        // WASI's monotonic clock, which every module has: the interval
        // between the two readings, whatever the sleep really took.
        if use_snmp {
            let index = if_index(&args.agent, &args.interface)?;
            let before = read_snmp(&args.agent, index)?;
            let start = std::time::Instant::now();
            std::thread::sleep(args.sample);
            let after = read_snmp(&args.agent, index)?;
            let elapsed = start.elapsed();
            Ok(diagnose(&args, "snmp", &before, &after, elapsed).fact("if_index", index))
        } else {
            let before = read_os(&args.interface)?;
            let start = std::time::Instant::now();
            std::thread::sleep(args.sample);
            let after = read_os(&args.interface)?;
            let elapsed = start.elapsed();
            Ok(diagnose(&args, "os", &before, &after, elapsed))
        }
    }
}

agad_sdk::specialist!(IfDiagnose);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_sdk::config::pairs;

    fn args(items: &[(&str, &str)]) -> Result<Args, String> {
        let config = Config::parse_strict(&pairs(items), ARGS).map_err(String::from)?;
        parse_args(&config)
    }

    #[test]
    fn arguments_are_checked() {
        assert!(args(&[]).unwrap_err().contains("interface: required"));
        let a = args(&[("interface", "eth0")]).unwrap();
        assert_eq!((a.sample, a.source), (Duration::from_secs(2), Source::Auto));
        assert!(args(&[("interface", "eth0"), ("sample", "1m")]).is_err());
        assert!(args(&[("interface", "eth0"), ("source", "netflow")]).is_err());
    }

    fn up() -> Reading {
        Reading {
            oper_state: "up".into(),
            admin_up: true,
            speed_bps: Some(1_000_000),
            duplex: "full",
            ..Reading::default()
        }
    }

    #[test]
    fn causes_in_order_of_what_an_operator_checks_first() {
        let a = args(&[("interface", "eth0")]).unwrap();
        let s = Duration::from_secs(1);
        let d = diagnose(&a, "os", &up(), &up(), s);
        assert_eq!(
            (d.get("cause"), d.get("direction")),
            (Some("none"), Some("idle"))
        );
        let mut after = up();
        after.in_errors = 3;
        after.in_octets = 125_000; // 1 Mbit/s in: saturated too, but errors come first
        let d = diagnose(&a, "os", &up(), &after, s);
        assert_eq!(d.get("cause"), Some("errors"));
        assert_eq!(d.get("direction"), Some("in"));
        assert_eq!(d.get("in_errors"), Some("3"));
        after.in_errors = 0;
        assert_eq!(
            diagnose(&a, "os", &up(), &after, s).get("cause"),
            Some("saturated")
        );
        after.oper_state = "down".into();
        assert_eq!(
            diagnose(&a, "os", &up(), &after, s).get("cause"),
            Some("link-down")
        );
        after.admin_up = false;
        assert_eq!(
            diagnose(&a, "os", &up(), &after, s).get("cause"),
            Some("admin-down")
        );
    }

    #[test]
    fn snmp_values_map_to_a_reading() {
        let r = reading_from_values(&[
            Value::Integer(1),
            Value::Integer(1),
            Value::Unsigned32(100),
            Value::Counter64(10),
            Value::Counter64(20),
            Value::Counter32(1),
            Value::Counter32(2),
            Value::Counter32(3),
            Value::Counter32(4),
            Value::Integer(2),
        ]);
        assert_eq!(r.oper_state, "up");
        assert_eq!(r.speed_bps, Some(100_000_000));
        assert_eq!(r.duplex, "half");
        assert_eq!((r.in_octets, r.out_discards), (10, 4));
        let missing = reading_from_values(&[Value::NoSuchInstance]);
        assert_eq!(
            (missing.oper_state.as_str(), missing.duplex),
            ("unknown", "unknown")
        );
    }
}
