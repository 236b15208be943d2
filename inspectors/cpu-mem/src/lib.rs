//! `cpu-mem`: the performance inspector for a host's CPU, memory, swap and
//! load average.
//!
//! Every tick it reads the `os` capability once, raises an alarm when a value
//! stays above its threshold for `raise_after` ticks (and clears it after
//! `clear_after` ticks below), and once per report window emits one summary
//! per metric. It sends nothing else: no raw samples, no per-core series.
//! Diagnosing *why* the CPU is busy is a specialist's job, not this one's.
//!
//! Layout: [`Settings`] (config), [`Sample`] (one reading), [`CpuMem`] (the
//! decision logic, pure and tested natively), and at the bottom the thin
//! WIT glue that reads the host and calls [`CpuMem::tick`].
//!
//! | config key      | default | meaning                                          |
//! |-----------------|---------|--------------------------------------------------|
//! | `threshold`     | 90      | CPU utilisation alarm, % of all cores            |
//! | `mem_percent`   | 90      | memory used alarm, %                             |
//! | `swap_percent`  | 80      | swap used alarm, % (ignored without swap)        |
//! | `load_per_core` | unset   | 1-minute load ÷ cores alarm; off when unset      |
//! | `raise_after`, `clear_after`, `window_secs` | 3, 3, 60 | see `agad_sdk::Common` |

use agad_sdk::config::COMMON_KEYS;
use agad_sdk::{Alarms, Check, Common, Comparison, Config, ConfigError, Output, Severity, Window};

/// Every key this inspector accepts besides the runtime's `period`.
pub const CONFIG_KEYS: &[&str] = &["threshold", "mem_percent", "swap_percent", "load_per_core"];

pub const METRIC_CPU: &str = "cpu.total-percent";
pub const METRIC_MEM: &str = "mem.used-percent";
pub const METRIC_SWAP: &str = "swap.used-percent";
pub const METRIC_LOAD: &str = "load.one";
pub const METRIC_LOAD_PER_CORE: &str = "load.per-core";

pub const KEY_CPU: &str = "cpu.total";
pub const KEY_MEM: &str = "mem.used";
pub const KEY_SWAP: &str = "swap.used";
pub const KEY_LOAD: &str = "load.per-core";

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// CPU utilisation threshold, percent of all cores.
    pub cpu_percent: f64,
    /// Memory used threshold, percent.
    pub mem_percent: f64,
    /// Swap used threshold, percent.
    pub swap_percent: f64,
    /// 1-minute load average per core threshold; no load alarm when `None`.
    pub load_per_core: Option<f64>,
    pub common: Common,
}

impl Settings {
    pub fn from_config(pairs: &[(String, String)]) -> Result<Settings, ConfigError> {
        let known: Vec<&str> = CONFIG_KEYS.iter().chain(COMMON_KEYS).copied().collect();
        let config = Config::parse(pairs, &known)?;
        Ok(Settings {
            cpu_percent: config.number_in("threshold", 90.0, 0.0, 100.0)?,
            mem_percent: config.number_in("mem_percent", 90.0, 0.0, 100.0)?,
            swap_percent: config.number_in("swap_percent", 80.0, 0.0, 100.0)?,
            load_per_core: config.optional_number_in("load_per_core", 0.0, 1_000.0)?,
            common: config.common()?,
        })
    }
}

/// One reading of the host, as the `os` capability gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub cpu_percent: f64,
    pub cores: u32,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub load_one: f64,
}

fn percent(part: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| part as f64 * 100.0 / total as f64)
}

#[derive(Debug)]
pub struct CpuMem {
    settings: Settings,
    pub alarms: Alarms,
    window: Window,
    /// When the previous tick read the CPU: `cpu()` reports utilisation
    /// since then. `None` before the first tick, whose reading covers only
    /// the moments since the module was loaded and is not a sample.
    cpu_since_ms: Option<u64>,
}

impl CpuMem {
    pub fn new(settings: Settings) -> CpuMem {
        CpuMem {
            alarms: Alarms::new(settings.common.raise_after, settings.common.clear_after),
            window: Window::new(settings.common.window_secs),
            cpu_since_ms: None,
            settings,
        }
    }

    /// Decides what one reading taken at `now_ms` sends upward.
    pub fn tick(&mut self, now_ms: u64, sample: &Sample) -> Output {
        let mut out = Output::default();
        let s = &self.settings;

        if let Some(since_ms) = self.cpu_since_ms.filter(|&since| since < now_ms) {
            let cpu = sample.cpu_percent.clamp(0.0, 100.0);
            let cpu_check = Check::new(KEY_CPU, METRIC_CPU)
                .threshold(Comparison::Above, s.cpu_percent)
                .unit("%");
            out.alarms.extend(self.alarms.check(&cpu_check, cpu));
            self.window
                .record_over(since_ms, now_ms, METRIC_CPU, "", "%", cpu);
        }
        self.cpu_since_ms = Some(now_ms);

        if let Some(mem) = percent(sample.mem_used_bytes, sample.mem_total_bytes) {
            let check = Check::new(KEY_MEM, METRIC_MEM)
                .threshold(Comparison::Above, s.mem_percent)
                .unit("%");
            out.alarms.extend(self.alarms.check(&check, mem));
            self.window.record(now_ms, METRIC_MEM, "", "%", mem);
        }

        // A host without swap has nothing to report, rather than "0 % used".
        if let Some(swap) = percent(sample.swap_used_bytes, sample.swap_total_bytes) {
            let check = Check::new(KEY_SWAP, METRIC_SWAP)
                .severity(Severity::Minor)
                .threshold(Comparison::Above, s.swap_percent)
                .unit("%");
            out.alarms.extend(self.alarms.check(&check, swap));
            self.window.record(now_ms, METRIC_SWAP, "", "%", swap);
        }

        self.window
            .record(now_ms, METRIC_LOAD, "", "", sample.load_one);
        if let Some(limit) = s.load_per_core {
            let per_core = sample.load_one / f64::from(sample.cores.max(1));
            let check = Check::new(KEY_LOAD, METRIC_LOAD_PER_CORE)
                .severity(Severity::Minor)
                .threshold(Comparison::Above, limit);
            out.alarms.extend(self.alarms.check(&check, per_core));
        }

        out.summaries = self.window.take_due(now_ms);
        out
    }
}

/// The WIT glue: host reads in, [`CpuMem::tick`] out.
mod guest {
    use super::{CpuMem, Sample, Settings};
    use agad_sdk::types::Output;
    use agad_sdk::{Alarms, Inspector, inspector, log, os};

    impl Inspector for CpuMem {
        fn configure(config: &[(String, String)]) -> Result<Self, String> {
            let settings = Settings::from_config(config)?;
            log::log(
                log::Level::Info,
                &format!("cpu-mem configured: {settings:?}"),
            );
            Ok(CpuMem::new(settings))
        }

        fn poll(&mut self, now_ms: u64) -> Output {
            let cpu = os::cpu();
            let memory = os::memory();
            let load = os::load_average();
            let sample = Sample {
                cpu_percent: f64::from(cpu.total_percent),
                cores: u32::try_from(cpu.per_core_percent.len()).unwrap_or(u32::MAX),
                mem_total_bytes: memory.total_bytes,
                mem_used_bytes: memory.used_bytes,
                swap_total_bytes: memory.swap_total_bytes,
                swap_used_bytes: memory.swap_used_bytes,
                load_one: load.one,
            };
            self.tick(now_ms, &sample)
        }

        fn alarms(&mut self) -> &mut Alarms {
            &mut self.alarms
        }
    }

    inspector!(CpuMem);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use agad_sdk::config::pairs;

    fn settings(items: &[(&str, &str)]) -> Settings {
        Settings::from_config(&pairs(items)).expect("valid config")
    }

    fn sample(cpu: f64) -> Sample {
        Sample {
            cpu_percent: cpu,
            cores: 4,
            mem_total_bytes: 1000,
            mem_used_bytes: 500,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            load_one: 1.0,
        }
    }

    #[test]
    fn defaults_and_config_errors() {
        let s = settings(&[("period", "10")]);
        assert_eq!(
            (
                s.cpu_percent,
                s.mem_percent,
                s.swap_percent,
                s.load_per_core
            ),
            (90.0, 90.0, 80.0, None)
        );
        assert_eq!(s.common, Common::default());
        let err = |items| {
            Settings::from_config(&pairs(items))
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(
            err(&[("threshold", "abc")]),
            "threshold: \"abc\" is not a number"
        );
        assert_eq!(
            err(&[("mem_percent", "101")]),
            "mem_percent: \"101\" is not between 0 and 100"
        );
        assert!(err(&[("cpu", "1")]).starts_with("unknown config key \"cpu\""));
        assert_eq!(
            err(&[("clear_after", "0")]),
            "clear_after: \"0\" must be at least 1"
        );
    }

    #[test]
    fn cpu_alarm_raised_once_cleared_once() {
        let mut inspector = CpuMem::new(settings(&[("window_secs", "3600")]));
        // The first reading is over the moments since the module loaded.
        let cpu = [0.0, 95.0, 95.0, 95.0, 99.0, 99.0, 50.0, 50.0, 50.0, 50.0];
        let alarms: Vec<_> = cpu
            .iter()
            .enumerate()
            .flat_map(|(i, &c)| inspector.tick(i as u64 * 10_000, &sample(c)).alarms)
            .collect();
        assert_eq!(alarms.len(), 2, "{alarms:?}");
        assert!(alarms[0].raised && alarms[0].key == KEY_CPU && alarms[0].metric == METRIC_CPU);
        assert_eq!((alarms[0].value, alarms[0].threshold), (95.0, 90.0));
        assert_eq!(alarms[0].severity, Severity::Major);
        assert!(!alarms[1].raised && alarms[1].key == KEY_CPU);
    }

    #[test]
    fn the_first_cpu_reading_is_not_a_sample() {
        let mut inspector = CpuMem::new(settings(&[("raise_after", "1"), ("window_secs", "10")]));
        assert!(inspector.tick(0, &sample(100.0)).alarms.is_empty());
        inspector.tick(4_000, &sample(20.0));
        let summaries = inspector.tick(10_000, &sample(30.0)).summaries;
        let cpu = summaries.iter().find(|s| s.metric == METRIC_CPU).unwrap();
        assert_eq!((cpu.count, cpu.max), (1, 30.0));
        assert!((cpu.mean - (20.0 * 4.0 + 30.0 * 6.0) / 10.0).abs() < 1e-9);
        assert_eq!(cpu.coverage, 1.0);
    }

    #[test]
    fn flapping_cpu_never_floods() {
        let mut inspector = CpuMem::new(settings(&[]));
        let count: usize = (0..200)
            .map(|i| {
                let cpu = if i % 2 == 0 { 99.0 } else { 10.0 };
                inspector.tick(i * 10_000, &sample(cpu)).alarms.len()
            })
            .sum();
        assert_eq!(count, 0);
    }

    #[test]
    fn memory_swap_and_load_alarms() {
        let mut inspector = CpuMem::new(settings(&[("raise_after", "1"), ("load_per_core", "2")]));
        let busy = Sample {
            cpu_percent: 10.0,
            cores: 2,
            mem_total_bytes: 100,
            mem_used_bytes: 95,
            swap_total_bytes: 100,
            swap_used_bytes: 81,
            load_one: 5.0,
        };
        let out = inspector.tick(0, &busy);
        let keys: Vec<&str> = out.alarms.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, vec![KEY_MEM, KEY_SWAP, KEY_LOAD]);
        assert_eq!(out.alarms[2].value, 2.5);
        assert_eq!(out.alarms[1].severity, Severity::Minor);
    }

    #[test]
    fn one_summary_per_metric_per_window() {
        let mut inspector = CpuMem::new(settings(&[]));
        let mut summaries = Vec::new();
        for i in 0..=6u64 {
            let mut s = sample(10.0 * i as f64);
            s.swap_total_bytes = 200;
            s.swap_used_bytes = 50;
            summaries.extend(inspector.tick(i * 10_000, &s).summaries);
        }
        let metrics: Vec<&str> = summaries.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(
            metrics,
            vec![METRIC_CPU, METRIC_LOAD, METRIC_MEM, METRIC_SWAP]
        );
        let cpu = &summaries[0];
        // The first reading (0 %) is no sample; 10..50 % at 10..50 s, each
        // over the 10 s before it, and 60 % held over the window's last 10 s.
        assert_eq!(
            (
                cpu.min,
                cpu.max,
                cpu.mean,
                cpu.last,
                cpu.count,
                cpu.coverage
            ),
            (10.0, 60.0, 35.0, 50.0, 5, 1.0)
        );
        assert_eq!((cpu.window_start_ms, cpu.window_end_ms), (0, 60_000));
        assert_eq!(summaries[3].last, 25.0);
    }

    #[test]
    fn no_swap_means_no_swap_series() {
        let mut inspector = CpuMem::new(settings(&[("window_secs", "1")]));
        inspector.tick(0, &sample(1.0));
        let out = inspector.tick(1_000, &sample(1.0));
        assert!(out.summaries.iter().all(|s| s.metric != METRIC_SWAP));
    }

    #[test]
    fn restart_does_not_raise_again() {
        let mut first = CpuMem::new(settings(&[("raise_after", "1")]));
        first.tick(0, &sample(99.0));
        assert_eq!(first.tick(10_000, &sample(99.0)).alarms.len(), 1);
        let persisted = first.alarms.take_changed().expect("raised set changed");

        let mut restarted = CpuMem::new(settings(&[("raise_after", "1"), ("clear_after", "1")]));
        restarted.alarms.restore(&persisted);
        assert!(restarted.tick(10_000, &sample(99.0)).alarms.is_empty());
        let out = restarted.tick(20_000, &sample(5.0));
        assert_eq!(out.alarms.len(), 1);
        assert!(!out.alarms[0].raised);
    }
}
