//! `app-watch`: the fault inspector that checks named processes are running
//! (the "checkApp" system service).
//!
//! Every tick it asks the `os` capability for the processes with the watched
//! names. A name with fewer than `min_count` live processes (zombies do not
//! count) for `raise_after` ticks raises a critical alarm, cleared after
//! `clear_after` ticks back at strength. Once per report window it sends,
//! per watched name, the process count, their total resident memory and
//! their total CPU share. Restarting the process, or finding why it died, is
//! a specialist's job.
//!
//! Layout: [`Settings`], [`Proc`] (one process reading), [`AppWatch`] (the
//! pure decision logic), then the WIT glue.
//!
//! | config key  | default  | meaning                                            |
//! |-------------|----------|----------------------------------------------------|
//! | `processes` | required | comma list of process names (`sshd,cron`)          |
//! | `min_count` | 1        | fewest live processes per name before alarming     |
//! | `raise_after`, `clear_after`, `window_secs` | 3, 3, 60 | see `agad_sdk::Common` |

use agad_sdk::config::COMMON_KEYS;
use agad_sdk::{
    Alarms, Check, Common, Comparison, Config, ConfigError, Output, Severity, Transition, Window,
};

pub const CONFIG_KEYS: &[&str] = &["processes", "min_count"];

pub const METRIC_COUNT: &str = "proc.count";
pub const METRIC_RSS: &str = "proc.rss-bytes";
pub const METRIC_CPU: &str = "proc.cpu-percent";
/// Alarm keys are `proc.running:<name>`.
pub const KEY_PREFIX: &str = "proc.running:";

/// The kernel keeps at most this many bytes of a process name.
const COMM_MAX: usize = 15;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Process names to watch, without duplicates.
    pub processes: Vec<String>,
    /// Fewest live processes per name before the alarm.
    pub min_count: u32,
    pub common: Common,
}

impl Settings {
    pub fn from_config(pairs: &[(String, String)]) -> Result<Settings, ConfigError> {
        let known: Vec<&str> = CONFIG_KEYS.iter().chain(COMMON_KEYS).copied().collect();
        let config = Config::parse(pairs, &known)?;
        let mut processes = config.list("processes");
        if processes.is_empty() {
            return Err(ConfigError::Missing {
                key: "processes".into(),
            });
        }
        if let Some(bad) = processes.iter().find(|p| p.contains('/')) {
            return Err(ConfigError::invalid(
                "processes",
                bad,
                "is a path, not a process name",
            ));
        }
        processes.sort();
        processes.dedup();
        Ok(Settings {
            processes,
            min_count: config.count_at_least("min_count", 1, 1)?,
            common: config.common()?,
        })
    }
}

/// One process as the `os` capability reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proc {
    pub name: String,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub state: String,
}

impl Proc {
    fn is_live(&self) -> bool {
        !matches!(self.state.as_str(), "zombie" | "dead")
    }

    /// Whether this process is an instance of `watched`, allowing for a
    /// name the kernel cut to 15 bytes.
    fn is(&self, watched: &str) -> bool {
        self.name == watched || (self.name.len() == COMM_MAX && watched.starts_with(&self.name))
    }
}

#[derive(Debug)]
pub struct AppWatch {
    settings: Settings,
    pub alarms: Alarms,
    window: Window,
    /// When the previous tick listed the processes: their CPU share is
    /// since then. `None` before the first tick, whose shares are 0 (no
    /// earlier listing) and are not a sample.
    cpu_since_ms: Option<u64>,
}

impl AppWatch {
    pub fn new(settings: Settings) -> AppWatch {
        AppWatch {
            alarms: Alarms::new(settings.common.raise_after, settings.common.clear_after),
            window: Window::new(settings.common.window_secs),
            cpu_since_ms: None,
            settings,
        }
    }

    /// The names to ask the host for.
    pub fn names(&self) -> &[String] {
        &self.settings.processes
    }

    pub fn tick(&mut self, now_ms: u64, processes: &[Proc]) -> Output {
        let mut out = Output::default();
        let min_count = self.settings.min_count;
        for name in &self.settings.processes {
            let live: Vec<&Proc> = processes
                .iter()
                .filter(|p| p.is(name) && p.is_live())
                .collect();
            let count = live.len();
            let check = Check::new(format!("{KEY_PREFIX}{name}"), METRIC_COUNT)
                .subject(name.clone())
                .severity(Severity::Critical)
                .threshold(Comparison::Below, f64::from(min_count));
            let breached = count < min_count as usize;
            out.alarms.extend(
                self.alarms
                    .observe(&check, count as f64, breached, |t| match t {
                        Transition::Raised if count == 0 => format!("process {name} not running"),
                        Transition::Raised => {
                            format!("process {name}: {count} running, fewer than {min_count}")
                        }
                        Transition::Cleared => format!("process {name} running again ({count})"),
                    }),
            );
            self.window
                .record(now_ms, METRIC_COUNT, name, "", count as f64);
            let rss: u64 = live.iter().map(|p| p.rss_bytes).sum();
            self.window
                .record(now_ms, METRIC_RSS, name, "B", rss as f64);
            // A fold from +0.0: `Sum` for floats starts at -0.0, which would
            // report "-0" for a name with no process.
            let cpu = live.iter().fold(0.0, |total, p| total + p.cpu_percent);
            if let Some(since_ms) = self.cpu_since_ms.filter(|&since| since < now_ms) {
                self.window
                    .record_over(since_ms, now_ms, METRIC_CPU, name, "%", cpu);
            }
        }
        self.cpu_since_ms = Some(now_ms);
        let watched = &self.settings.processes;
        out.alarms.extend(self.alarms.retain_subjects(
            |_, subject| watched.iter().any(|w| w == subject),
            "no longer watched",
        ));
        out.summaries = self.window.take_due(now_ms);
        out
    }
}

/// The WIT glue: host reads in, [`AppWatch::tick`] out.
mod guest {
    use super::{AppWatch, Proc, Settings};
    use agad_sdk::types::Output;
    use agad_sdk::{Alarms, Inspector, inspector, log, os};

    impl Inspector for AppWatch {
        fn configure(config: &[(String, String)]) -> Result<Self, String> {
            let settings = Settings::from_config(config)?;
            log::log(
                log::Level::Info,
                &format!("app-watch configured: {settings:?}"),
            );
            Ok(AppWatch::new(settings))
        }

        fn poll(&mut self, now_ms: u64) -> Output {
            let processes: Vec<Proc> = os::processes(self.names())
                .into_iter()
                .map(|p| Proc {
                    name: p.name,
                    cpu_percent: f64::from(p.cpu_percent),
                    rss_bytes: p.rss_bytes,
                    state: p.state,
                })
                .collect();
            self.tick(now_ms, &processes)
        }

        fn alarms(&mut self) -> &mut Alarms {
            &mut self.alarms
        }
    }

    inspector!(AppWatch);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_sdk::Alarm;

    use agad_sdk::config::pairs;

    fn settings(items: &[(&str, &str)]) -> Settings {
        Settings::from_config(&pairs(items)).expect("valid config")
    }

    fn proc(name: &str, cpu: f64, rss: u64) -> Proc {
        Proc {
            name: name.into(),
            cpu_percent: cpu,
            rss_bytes: rss,
            state: "sleep".into(),
        }
    }

    #[test]
    fn config() {
        let s = settings(&[("processes", "sshd, cron,sshd")]);
        assert_eq!(
            (s.processes.clone(), s.min_count),
            (vec!["cron".to_owned(), "sshd".to_owned()], 1)
        );
        let err = |items| {
            Settings::from_config(&pairs(items))
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(err(&[]), "processes: required but not set");
        assert_eq!(
            err(&[("processes", "sshd"), ("min_count", "0")]),
            "min_count: \"0\" must be at least 1"
        );
        assert_eq!(
            err(&[("processes", "sshd"), ("min_count", "two")])
                .split(" is")
                .next(),
            Some("min_count: \"two\"")
        );
        assert_eq!(
            err(&[("processes", "/usr/sbin/sshd")]),
            "processes: \"/usr/sbin/sshd\" is a path, not a process name"
        );
    }

    #[test]
    fn missing_process_raised_once_cleared_once() {
        let mut inspector = AppWatch::new(settings(&[
            ("processes", "sshd,cron"),
            ("window_secs", "100000"),
        ]));
        let up = vec![proc("sshd", 1.0, 100), proc("cron", 0.0, 50)];
        let sshd_down = vec![proc("cron", 0.0, 50)];
        let timeline = [
            &up, &sshd_down, &sshd_down, &sshd_down, &sshd_down, &up, &up, &up, &up,
        ];
        let alarms: Vec<Alarm> = timeline
            .iter()
            .enumerate()
            .flat_map(|(i, procs)| inspector.tick(i as u64 * 10_000, procs).alarms)
            .collect();
        assert_eq!(alarms.len(), 2, "{alarms:?}");
        assert!(alarms[0].raised);
        assert_eq!(alarms[0].key, "proc.running:sshd");
        assert_eq!(alarms[0].severity, Severity::Critical);
        assert_eq!(alarms[0].message, "process sshd not running");
        assert_eq!(
            (alarms[0].value, alarms[0].threshold, alarms[0].comparison),
            (0.0, 1.0, Comparison::Below)
        );
        assert!(!alarms[1].raised);
        assert_eq!(alarms[1].message, "process sshd running again (1)");
    }

    #[test]
    fn flapping_process_never_floods() {
        let mut inspector = AppWatch::new(settings(&[("processes", "sshd")]));
        let up = vec![proc("sshd", 1.0, 100)];
        let total: usize = (0..100u64)
            .map(|i| {
                inspector
                    .tick(i * 10_000, if i % 2 == 0 { &up } else { &[] })
                    .alarms
                    .len()
            })
            .sum();
        assert_eq!(total, 0);
    }

    #[test]
    fn zombies_and_min_count() {
        let mut inspector = AppWatch::new(settings(&[
            ("processes", "nginx"),
            ("min_count", "2"),
            ("raise_after", "1"),
        ]));
        let mut zombie = proc("nginx", 0.0, 0);
        zombie.state = "zombie".into();
        let out = inspector.tick(0, &[proc("nginx", 1.0, 10), zombie]);
        assert_eq!(out.alarms.len(), 1);
        assert_eq!(
            out.alarms[0].message,
            "process nginx: 1 running, fewer than 2"
        );
    }

    #[test]
    fn truncated_names_match() {
        let mut inspector = AppWatch::new(settings(&[
            ("processes", "systemd-resolved"),
            ("raise_after", "1"),
        ]));
        assert!(
            inspector
                .tick(0, &[proc("systemd-resolve", 0.0, 1)])
                .alarms
                .is_empty()
        );
    }

    #[test]
    fn summaries_per_watched_name() {
        let mut inspector =
            AppWatch::new(settings(&[("processes", "sshd"), ("window_secs", "20")]));
        inspector.tick(0, &[proc("sshd", 1.0, 100), proc("sshd", 2.0, 200)]);
        inspector.tick(10_000, &[proc("sshd", 3.0, 300)]);
        let summaries = inspector.tick(20_000, &[]).summaries;
        let by_metric: Vec<(&str, f64, f64, f64, u32)> = summaries
            .iter()
            .map(|s| (s.metric.as_str(), s.min, s.max, s.mean, s.count))
            .collect();
        // The first listing's CPU shares (over no earlier listing) are no
        // sample; the share at 10 s is over 0–10 s, the one at 20 s (no
        // process, 0 %) over 10–20 s, inside the window too.
        assert_eq!(
            by_metric,
            vec![
                (METRIC_COUNT, 1.0, 2.0, 1.5, 2),
                (METRIC_CPU, 0.0, 3.0, 1.5, 1),
                (METRIC_RSS, 300.0, 300.0, 300.0, 2)
            ]
        );
        assert!(summaries.iter().all(|s| s.subject == "sshd"));
    }

    #[test]
    fn restored_alarm_for_a_name_no_longer_watched_is_cleared() {
        let mut before = AppWatch::new(settings(&[("processes", "cron"), ("raise_after", "1")]));
        assert_eq!(before.tick(0, &[]).alarms.len(), 1);
        let persisted = before.alarms.take_changed().expect("changed");
        let mut after = AppWatch::new(settings(&[("processes", "sshd")]));
        after.alarms.restore(&persisted);
        let out = after.tick(10_000, &[proc("sshd", 0.0, 1)]);
        assert_eq!(out.alarms.len(), 1);
        assert!(!out.alarms[0].raised && out.alarms[0].key == "proc.running:cron");
    }
}
