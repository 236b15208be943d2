//! `top-cpu`: which processes use the most CPU and memory right now.
//!
//! Lists every process twice, `sample` apart (the `os` capability reports
//! each process's CPU share since this module last listed it), and ranks
//! them by CPU share over that interval and by resident memory.
//!
//! | arg      | default | meaning                                   |
//! |----------|---------|-------------------------------------------|
//! | `sample` | 1s      | measuring interval, 100ms to 5s           |
//! | `count`  | 5       | processes listed per ranking, 1 to 50     |
//!
//! Facts, most important first: `pid`, `name`, `cpu_percent` (the top CPU
//! user), `cause` (`cpu-hog` when one process uses at least half a core,
//! else `spread`), `rss_bytes`, `memory_pid`, `memory_name`,
//! `memory_rss_bytes` (the largest resident process), then `cpu.<rank>`
//! and `memory.<rank>` lines (`pid name value`).

use agad_sdk::os::Process;
use agad_sdk::{Config, Diagnosis};
use std::time::Duration;

pub const ARGS: &[&str] = &["sample", "count"];

/// A process using at least this share of one core is named as the cause.
pub const HOG_PERCENT: f32 = 50.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args {
    pub sample: Duration,
    pub count: usize,
}

pub fn parse_args(config: &Config) -> Result<Args, String> {
    let sample: Duration = config.get_or("sample", Duration::from_secs(1))?;
    if sample < Duration::from_millis(100) || sample > Duration::from_secs(5) {
        return Err(format!(
            "sample: \"{}\" is not between 100ms and 5s",
            config.raw("sample").unwrap_or_default()
        ));
    }
    let count: u32 = config.get_or("count", 5)?;
    if !(1..=50).contains(&count) {
        return Err(format!("count: \"{count}\" is not between 1 and 50"));
    }
    Ok(Args {
        sample,
        count: count as usize,
    })
}

/// The diagnosis from the second listing (CPU shares over the interval).
pub fn diagnose(mut processes: Vec<Process>, args: Args) -> Result<Diagnosis, String> {
    if processes.is_empty() {
        return Err("the node listed no process".into());
    }
    processes.sort_by(|a, b| {
        b.cpu_percent
            .total_cmp(&a.cpu_percent)
            .then(a.pid.cmp(&b.pid))
    });
    let by_cpu: Vec<Process> = processes.iter().take(args.count).cloned().collect();
    processes.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
    let by_memory: Vec<Process> = processes.iter().take(args.count).cloned().collect();
    let top = &by_cpu[0];
    let big = &by_memory[0];
    let cause = if top.cpu_percent >= HOG_PERCENT {
        "cpu-hog"
    } else {
        "spread"
    };
    let mut d = Diagnosis::new(format!(
        "pid {} ({}) uses {:.1}% of a core over {} ms; largest in memory: pid {} ({}) with {} MiB",
        top.pid,
        top.name,
        top.cpu_percent,
        args.sample.as_millis(),
        big.pid,
        big.name,
        big.rss_bytes / (1024 * 1024)
    ))
    .fact("pid", top.pid)
    .fact("name", &top.name)
    .fact("cpu_percent", format!("{:.1}", top.cpu_percent))
    .fact("cause", cause)
    .fact("rss_bytes", top.rss_bytes)
    .fact("memory_pid", big.pid)
    .fact("memory_name", &big.name)
    .fact("memory_rss_bytes", big.rss_bytes)
    .fact("sample_ms", args.sample.as_millis());
    for (rank, p) in by_cpu.iter().enumerate() {
        d = d.fact(
            &format!("cpu.{}", rank + 1),
            format!("{} {} {:.1}", p.pid, p.name, p.cpu_percent),
        );
    }
    for (rank, p) in by_memory.iter().enumerate() {
        d = d.fact(
            &format!("memory.{}", rank + 1),
            format!("{} {} {}", p.pid, p.name, p.rss_bytes),
        );
    }
    Ok(d)
}

pub struct TopCpu;

impl agad_sdk::Specialist for TopCpu {
    const ARGS: &'static [&'static str] = ARGS;

    fn run(config: &Config) -> Result<Diagnosis, String> {
        let args = parse_args(config)?;
        // The first listing is the baseline: every share in it is 0.
        let _ = agad_sdk::os::processes(&[]);
        std::thread::sleep(args.sample);
        diagnose(agad_sdk::os::processes(&[]), args)
    }
}

agad_sdk::specialist!(TopCpu);

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
    fn arguments_default_and_are_checked() {
        assert_eq!(
            args(&[]).unwrap(),
            Args {
                sample: Duration::from_secs(1),
                count: 5
            }
        );
        assert_eq!(
            args(&[("sample", "2s")]).unwrap().sample,
            Duration::from_secs(2)
        );
        assert!(args(&[("sample", "10s")]).unwrap_err().contains("between"));
        assert!(
            args(&[("sample", "2")])
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(args(&[("count", "0")]).is_err());
        assert!(args(&[("count", "many")]).is_err());
        assert!(args(&[("pid", "1")]).unwrap_err().contains("unknown"));
    }

    fn process(pid: u32, name: &str, cpu: f32, rss: u64) -> Process {
        Process {
            pid,
            name: name.into(),
            cmdline: String::new(),
            cpu_percent: cpu,
            rss_bytes: rss,
            state: "run".into(),
        }
    }

    #[test]
    fn the_hog_is_named_and_the_largest_process_too() {
        let args = Args {
            sample: Duration::from_secs(1),
            count: 2,
        };
        let d = diagnose(
            vec![
                process(10, "idle", 0.5, 900),
                process(42, "hog", 99.0, 100),
                process(7, "db", 3.0, 5_000),
            ],
            args,
        )
        .unwrap();
        assert_eq!(d.get("pid"), Some("42"));
        assert_eq!(d.get("name"), Some("hog"));
        assert_eq!(d.get("cause"), Some("cpu-hog"));
        assert_eq!(d.get("memory_pid"), Some("7"));
        assert_eq!(d.get("cpu.2"), Some("7 db 3.0"));
        assert_eq!(d.get("cpu.3"), None);
        assert!(diagnose(Vec::new(), args).is_err());
    }
}
