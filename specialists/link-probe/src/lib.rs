//! `link-probe`: latency, jitter and loss to a target, and the route path,
//! reporting a change against the last path seen (kept in the module's
//! `state`, per target).
//!
//! Echoes go by ICMP where the node may send it, else by TCP connect to
//! `port` (the `probe` capability decides, or `method` forces one). The
//! path is traced with one ICMP echo per time to live; a node that may not
//! send raw ICMP gives no path (fact `path_error`), the rest still holds.
//!
//! | arg       | default  | meaning                                        |
//! |-----------|----------|------------------------------------------------|
//! | `target`  | required | host name or IP address                        |
//! | `port`    | unset    | TCP port for the fallback (or `method = tcp`)  |
//! | `count`   | 5        | echoes, 1 to 100                               |
//! | `method`  | auto     | `auto`, `icmp` or `tcp`                        |
//! | `timeout` | 1s       | wait for each answer, up to 5s                 |
//! | `hops`    | 16       | most hops traced, 0 (no path) to 30            |
//!
//! `count` × `timeout` and `hops` × `timeout` must each stay within 25 s
//! (what they take when nothing answers), so both fit the deadline.
//!
//! Facts: `cause` (`unreachable`, `loss`, `path-changed` or `none`),
//! `loss_percent`, `rtt_avg_ms`, `rtt_min_ms`, `rtt_max_ms`, `jitter_ms`
//! (mean difference between consecutive round trips, as RFC 3550's
//! interarrival jitter without its smoothing), `method`, `address`,
//! `sent`, `received`, `path` (hop addresses, `*` for a silent hop),
//! `path_changed`, `previous_path`.

use agad_sdk::probe::{self, Method, PingOptions, ProbeError};
use agad_sdk::{Config, Diagnosis};
use std::time::Duration;

pub const ARGS: &[&str] = &["target", "port", "count", "method", "timeout", "hops"];

/// Longest the echoes, and the path, may take when nothing answers (ICMP
/// echoes are not waited for one by one, TCP connects and hops are).
pub const MAX_PHASE: Duration = Duration::from_secs(25);
/// Time between echoes: spaced enough to sample jitter rather than one
/// burst's queueing, short enough that 8 echoes take a sixth of a second.
pub const ECHO_INTERVAL_MS: u32 = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub target: String,
    pub port: Option<u16>,
    pub count: u32,
    pub method: Method,
    pub timeout: Duration,
    pub hops: u32,
}

pub fn parse_args(config: &Config) -> Result<Args, String> {
    let target: String = config.require("target")?;
    if target.len() > 253 || target.contains(char::is_whitespace) {
        return Err(format!(
            "target: \"{target}\" is not a host name or address"
        ));
    }
    let port = match config.get::<u32>("port")? {
        None => None,
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        Some(p) => return Err(format!("port: \"{p}\" is not between 1 and 65535")),
    };
    let count: u32 = config.get_or("count", 5)?;
    if !(1..=100).contains(&count) {
        return Err(format!("count: \"{count}\" is not between 1 and 100"));
    }
    let method = match config.raw("method").unwrap_or("auto") {
        "auto" => Method::Auto,
        "icmp" => Method::Icmp,
        "tcp" => Method::Tcp,
        other => return Err(format!("method: \"{other}\" is not one of auto, icmp, tcp")),
    };
    if method == Method::Tcp && port.is_none() {
        return Err("port: required with method = tcp".into());
    }
    let timeout: Duration = config.get_or("timeout", Duration::from_secs(1))?;
    if timeout.is_zero() || timeout > Duration::from_secs(5) {
        return Err(format!(
            "timeout: \"{}\" is not between 1ms and 5s",
            config.raw("timeout").unwrap_or_default()
        ));
    }
    let hops: u32 = config.get_or("hops", 16)?;
    if hops > 30 {
        return Err(format!("hops: \"{hops}\" is not between 0 and 30"));
    }
    // Echoes and the path each fit in half the module's deadline (60 s),
    // whatever goes unanswered.
    for (what, n) in [("count", count), ("hops", hops)] {
        let worst = timeout.saturating_mul(n);
        if worst > MAX_PHASE {
            return Err(format!(
                "{what} × timeout may take {} s unanswered; keep it within {} s",
                worst.as_secs(),
                MAX_PHASE.as_secs()
            ));
        }
    }
    Ok(Args {
        target,
        port,
        count,
        method,
        timeout,
        hops,
    })
}

/// Round-trip statistics, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub loss_percent: f64,
    pub avg_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub jitter_ms: f64,
}

pub fn stats(sent: u32, rtts_us: &[u64]) -> Stats {
    let ms: Vec<f64> = rtts_us.iter().map(|us| *us as f64 / 1000.0).collect();
    let loss_percent = if sent == 0 {
        100.0
    } else {
        100.0 * f64::from(sent.saturating_sub(ms.len() as u32)) / f64::from(sent)
    };
    let (avg_ms, min_ms, max_ms) = if ms.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            ms.iter().sum::<f64>() / ms.len() as f64,
            ms.iter().copied().fold(f64::INFINITY, f64::min),
            ms.iter().copied().fold(0.0, f64::max),
        )
    };
    let jitter_ms = if ms.len() < 2 {
        0.0
    } else {
        ms.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (ms.len() - 1) as f64
    };
    Stats {
        loss_percent,
        avg_ms,
        min_ms,
        max_ms,
        jitter_ms,
    }
}

/// A path as one line: hop addresses, `*` for a hop that did not answer.
pub fn path_line(hops: &[probe::Hop]) -> String {
    hops.iter()
        .map(|h| h.address.clone().unwrap_or_else(|| "*".into()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the run found, before it becomes a diagnosis.
#[derive(Debug, Clone, PartialEq)]
pub struct Findings {
    pub address: String,
    pub method: Method,
    pub sent: u32,
    pub received: u32,
    pub stats: Stats,
    /// The path, or why there is none.
    pub path: Result<String, String>,
    pub previous_path: Option<String>,
}

pub fn diagnose(args: &Args, f: &Findings) -> Diagnosis {
    let changed = matches!((&f.path, &f.previous_path), (Ok(now), Some(before)) if now != before);
    let cause = if f.received == 0 {
        "unreachable"
    } else if f.received < f.sent {
        "loss"
    } else if changed {
        "path-changed"
    } else {
        "none"
    };
    let method = match f.method {
        Method::Tcp => "tcp",
        _ => "icmp",
    };
    let mut d = Diagnosis::new(format!(
        "{} ({}, {method}): {:.0}% loss, rtt {:.3} ms avg, jitter {:.3} ms{}",
        args.target,
        f.address,
        f.stats.loss_percent,
        f.stats.avg_ms,
        f.stats.jitter_ms,
        if changed {
            "; the route path changed"
        } else {
            ""
        }
    ))
    .fact("cause", cause)
    .fact("loss_percent", format!("{:.1}", f.stats.loss_percent))
    .fact("rtt_avg_ms", format!("{:.3}", f.stats.avg_ms))
    .fact("rtt_min_ms", format!("{:.3}", f.stats.min_ms))
    .fact("rtt_max_ms", format!("{:.3}", f.stats.max_ms))
    .fact("jitter_ms", format!("{:.3}", f.stats.jitter_ms))
    .fact("method", method)
    .fact("address", &f.address)
    .fact("sent", f.sent)
    .fact("received", f.received);
    d = match &f.path {
        Ok(path) => d.fact("path", path),
        Err(why) => d.fact("path_error", why),
    };
    d = d.fact("path_changed", changed);
    if let Some(before) = &f.previous_path {
        d = d.fact("previous_path", before);
    }
    d
}

fn probe_error(e: ProbeError) -> String {
    match e {
        ProbeError::BadRequest(why) => format!("bad request: {why}"),
        ProbeError::Resolve(why) => format!("target: {why}"),
        ProbeError::NotPermitted(why) => format!("refused: {why}"),
        ProbeError::Io(why) => format!("probe failed: {why}"),
    }
}

fn state_key(target: &str) -> String {
    format!("path:{target}")
}

pub struct LinkProbe;

impl agad_sdk::Specialist for LinkProbe {
    const ARGS: &'static [&'static str] = ARGS;

    fn run(config: &Config) -> Result<Diagnosis, String> {
        let args = parse_args(config)?;
        let timeout_ms = args.timeout.as_millis() as u32;
        let ping = probe::ping(
            &args.target,
            PingOptions {
                count: args.count,
                interval_ms: ECHO_INTERVAL_MS,
                timeout_ms,
                tcp_port: args.port,
                method: args.method,
            },
        )
        .map_err(probe_error)?;
        let path = if args.hops == 0 {
            Err("not traced (hops = 0)".to_owned())
        } else {
            probe::trace_path(&args.target, args.hops, timeout_ms)
                .map(|hops| path_line(&hops))
                .map_err(probe_error)
        };
        let key = state_key(&args.target);
        let previous_path =
            agad_sdk::state::get(&key).map(|b| String::from_utf8_lossy(&b).into_owned());
        if let Ok(now) = &path {
            // A full state only loses the comparison next time.
            let _ = agad_sdk::state::set(&key, now.as_bytes());
        }
        let findings = Findings {
            stats: stats(ping.sent, &ping.rtts_us),
            address: ping.address,
            method: ping.method,
            sent: ping.sent,
            received: ping.received,
            path,
            previous_path,
        };
        Ok(diagnose(&args, &findings))
    }
}

agad_sdk::specialist!(LinkProbe);

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
        assert!(args(&[]).unwrap_err().contains("target: required"));
        let a = args(&[("target", "10.0.0.1")]).unwrap();
        assert_eq!(
            (a.count, a.method, a.hops, a.port),
            (5, Method::Auto, 16, None)
        );
        assert!(args(&[("target", "x"), ("port", "70000")]).is_err());
        assert!(
            args(&[("target", "x"), ("method", "udp")])
                .unwrap_err()
                .contains("method")
        );
        assert!(
            args(&[("target", "x"), ("method", "tcp")])
                .unwrap_err()
                .contains("port")
        );
        assert!(args(&[("target", "x"), ("timeout", "9s")]).is_err());
        assert!(args(&[("target", "x"), ("hops", "31")]).is_err());
        assert!(args(&[("target", "a b")]).is_err());
        let slow = args(&[("target", "x"), ("count", "100"), ("timeout", "1s")]).unwrap_err();
        assert!(slow.contains("count × timeout"), "{slow}");
        assert!(args(&[("target", "x"), ("count", "20"), ("timeout", "1s")]).is_ok());
    }

    #[test]
    fn loss_jitter_and_averages() {
        let s = stats(4, &[1000, 3000, 2000]);
        assert_eq!(s.loss_percent, 25.0);
        assert_eq!(s.avg_ms, 2.0);
        assert_eq!((s.min_ms, s.max_ms), (1.0, 3.0));
        assert_eq!(s.jitter_ms, 1.5);
        assert_eq!(stats(3, &[]).loss_percent, 100.0);
    }

    #[test]
    fn a_changed_path_is_the_cause_when_nothing_is_lost() {
        let a = args(&[("target", "h")]).unwrap();
        let mut f = Findings {
            address: "10.0.0.1".into(),
            method: Method::Icmp,
            sent: 3,
            received: 3,
            stats: stats(3, &[1, 2, 3]),
            path: Ok("10.0.0.254 10.0.0.1".into()),
            previous_path: Some("10.0.0.253 10.0.0.1".into()),
        };
        let d = diagnose(&a, &f);
        assert_eq!(d.get("cause"), Some("path-changed"));
        assert_eq!(d.get("path_changed"), Some("true"));
        f.previous_path = f.path.clone().ok();
        assert_eq!(diagnose(&a, &f).get("cause"), Some("none"));
        f.received = 0;
        assert_eq!(diagnose(&a, &f).get("cause"), Some("unreachable"));
    }
}
