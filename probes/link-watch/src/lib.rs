//! `link-watch`: a probe — a resident module that measures the network
//! from the node. Every tick it sends a few echoes to each target (the
//! `probe` capability: ICMP where the node may, else TCP connect to `port`)
//! and raises `link.loss:<target>` when too many go unanswered, cleared
//! once they come back; once per report window it sends each target's loss
//! and round-trip time. Finding where the loss is (the path, a change of
//! route) is the `link-probe` specialist's job.
//!
//! Layout: [`Settings`], [`Sample`] (one tick's echoes to one target),
//! [`LinkWatch`] (the pure decision logic), then the WIT glue.
//!
//! | config key     | default  | meaning                                          |
//! |----------------|----------|--------------------------------------------------|
//! | `targets`      | required | comma list of host names or addresses            |
//! | `count`        | 5        | echoes per target per tick (1 to 20)             |
//! | `timeout`      | 500ms    | wait for each answer (1ms to 2s)                 |
//! | `port`         | none     | TCP port for the fallback where ICMP is refused  |
//! | `loss_percent` | 20       | loss at or above which a tick breaches (1–100)   |
//! | `raise_after`, `clear_after`, `window_secs` | 3, 3, 60 | see `agad_sdk::Common` |

use agad_sdk::config::COMMON_KEYS;
use agad_sdk::{
    Alarms, Check, Common, Comparison, Config, ConfigError, Output, Severity, Transition, Window,
};
use std::time::Duration;

pub const CONFIG_KEYS: &[&str] = &["targets", "count", "timeout", "port", "loss_percent"];

pub const METRIC_LOSS: &str = "link.loss-percent";
pub const METRIC_RTT: &str = "link.rtt-ms";
/// Alarm keys are `link.loss:<target>`.
pub const KEY_PREFIX: &str = "link.loss:";

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Targets to probe, without duplicates.
    pub targets: Vec<String>,
    pub count: u32,
    pub timeout: Duration,
    pub port: Option<u16>,
    pub loss_percent: f64,
    pub common: Common,
}

impl Settings {
    pub fn from_config(pairs: &[(String, String)]) -> Result<Settings, ConfigError> {
        let known: Vec<&str> = CONFIG_KEYS.iter().chain(COMMON_KEYS).copied().collect();
        let config = Config::parse(pairs, &known)?;
        let mut targets = config.list("targets");
        if targets.is_empty() {
            return Err(ConfigError::Missing {
                key: "targets".into(),
            });
        }
        targets.sort();
        targets.dedup();
        let count = config.count_at_least("count", 5, 1)?;
        if count > 20 {
            return Err(ConfigError::invalid(
                "count",
                &count.to_string(),
                "must be at most 20",
            ));
        }
        let timeout: Duration = config.get_or("timeout", Duration::from_millis(500))?;
        if timeout.is_zero() || timeout > Duration::from_secs(2) {
            return Err(ConfigError::invalid(
                "timeout",
                config.raw("timeout").unwrap_or_default(),
                "must be between 1ms and 2s",
            ));
        }
        // TCP connects (the fallback) go one after another, a lost one
        // costing `timeout`: the whole tick must fit in the manifest's 15 s
        // call budget even then.
        if timeout * count * targets.len() as u32 > Duration::from_secs(10) {
            return Err(ConfigError::invalid(
                "count",
                &count.to_string(),
                format!(
                    "{count} echoes × {} ms × {} target(s) could take more than 10 s per tick",
                    timeout.as_millis(),
                    targets.len()
                ),
            ));
        }
        Ok(Settings {
            targets,
            count,
            timeout,
            port: config
                .get::<u32>("port")?
                .map(|p| {
                    u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                        ConfigError::invalid("port", &p.to_string(), "must be 1 to 65535")
                    })
                })
                .transpose()?,
            loss_percent: config.number_in("loss_percent", 20.0, 1.0, 100.0)?,
            common: config.common()?,
        })
    }
}

/// One tick's echoes to one target.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Answered {
        sent: u32,
        received: u32,
        /// Round trips of the answered echoes, in microseconds.
        rtts_us: Vec<u64>,
    },
    /// The probe could not be sent (the name does not resolve, no socket
    /// the node may use): counted as total loss, with the reason.
    Failed(String),
}

impl Sample {
    fn loss_percent(&self) -> f64 {
        match self {
            Sample::Answered { sent, received, .. } if *sent > 0 => {
                100.0 * f64::from(sent.saturating_sub(*received)) / f64::from(*sent)
            }
            _ => 100.0,
        }
    }
}

#[derive(Debug)]
pub struct LinkWatch {
    settings: Settings,
    pub alarms: Alarms,
    window: Window,
}

impl LinkWatch {
    pub fn new(settings: Settings) -> LinkWatch {
        LinkWatch {
            alarms: Alarms::new(settings.common.raise_after, settings.common.clear_after),
            window: Window::new(settings.common.window_secs),
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// One tick: `samples` has one entry per target, in `targets` order.
    pub fn tick(&mut self, now_ms: u64, samples: &[(String, Sample)]) -> Output {
        let mut out = Output::default();
        let limit = self.settings.loss_percent;
        for (target, sample) in samples {
            let loss = sample.loss_percent();
            let check = Check::new(format!("{KEY_PREFIX}{target}"), METRIC_LOSS)
                .subject(target.clone())
                .severity(Severity::Major)
                .threshold(Comparison::Above, limit);
            out.alarms
                .extend(
                    self.alarms
                        .observe(&check, loss, loss >= limit, |t| match (t, sample) {
                            (Transition::Raised, Sample::Failed(why)) => {
                                format!("{target} cannot be probed: {why}")
                            }
                            (Transition::Raised, _) => {
                                format!("{loss:.0}% of the echoes to {target} lost")
                            }
                            (Transition::Cleared, _) => {
                                format!("echoes to {target} answered again ({loss:.0}% lost)")
                            }
                        }),
                );
            self.window.record(now_ms, METRIC_LOSS, target, "%", loss);
            if let Sample::Answered { rtts_us, .. } = sample
                && !rtts_us.is_empty()
            {
                let mean_ms = rtts_us.iter().sum::<u64>() as f64 / rtts_us.len() as f64 / 1000.0;
                self.window
                    .record(now_ms, METRIC_RTT, target, "ms", mean_ms);
            }
        }
        out.summaries = self.window.take_due(now_ms);
        out
    }
}

/// The WIT glue: echoes out, [`LinkWatch::tick`] in.
mod guest {
    use super::{LinkWatch, Sample, Settings};
    use agad_sdk::probe::{self, Method, PingOptions, ProbeError};
    use agad_sdk::types::Output;
    use agad_sdk::{Alarms, Inspector, inspector, log};

    impl Inspector for LinkWatch {
        fn configure(config: &[(String, String)]) -> Result<Self, String> {
            let settings = Settings::from_config(config)?;
            log::log(
                log::Level::Info,
                &format!("link-watch configured: {settings:?}"),
            );
            Ok(LinkWatch::new(settings))
        }

        fn poll(&mut self, now_ms: u64) -> Output {
            let s = self.settings();
            // All at once, answers matched as they come: a tick lasts at
            // most `timeout`, however many echoes are lost.
            let options = || PingOptions {
                count: s.count,
                interval_ms: 0,
                timeout_ms: u32::try_from(s.timeout.as_millis()).unwrap_or(2000),
                tcp_port: s.port,
                method: Method::Auto,
            };
            let samples: Vec<(String, Sample)> = s
                .targets
                .iter()
                .map(|target| {
                    let sample = match probe::ping(target, options()) {
                        Ok(r) => Sample::Answered {
                            sent: r.sent,
                            received: r.received,
                            rtts_us: r.rtts_us,
                        },
                        Err(e) => Sample::Failed(match e {
                            ProbeError::BadRequest(why)
                            | ProbeError::Resolve(why)
                            | ProbeError::NotPermitted(why)
                            | ProbeError::Io(why) => why,
                        }),
                    };
                    (target.clone(), sample)
                })
                .collect();
            self.tick(now_ms, &samples)
        }

        fn alarms(&mut self) -> &mut Alarms {
            &mut self.alarms
        }
    }

    inspector!(LinkWatch);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_sdk::config::pairs;

    fn settings(items: &[(&str, &str)]) -> Result<Settings, String> {
        Settings::from_config(&pairs(items)).map_err(|e| e.to_string())
    }

    #[test]
    fn configuration_is_checked() {
        assert!(settings(&[]).unwrap_err().contains("targets"));
        let s = settings(&[("targets", "b, a, b")]).unwrap();
        assert_eq!(s.targets, ["a", "b"]);
        assert_eq!((s.count, s.loss_percent), (5, 20.0));
        assert!(settings(&[("targets", "a"), ("count", "21")]).is_err());
        assert!(settings(&[("targets", "a"), ("timeout", "3s")]).is_err());
        assert!(settings(&[("targets", "a"), ("loss_percent", "0")]).is_err());
        assert!(settings(&[("targets", "a"), ("port", "70000")]).is_err());
    }

    #[test]
    fn loss_raises_after_the_configured_ticks_and_clears() {
        let s = settings(&[
            ("targets", "10.0.0.1"),
            ("raise_after", "2"),
            ("clear_after", "1"),
        ]);
        let mut w = LinkWatch::new(s.unwrap());
        let lossy = Sample::Answered {
            sent: 5,
            received: 2,
            rtts_us: vec![900, 1100],
        };
        let target = "10.0.0.1".to_owned();
        let ok = Sample::Answered {
            sent: 5,
            received: 5,
            rtts_us: vec![1000; 5],
        };
        assert!(
            w.tick(1000, &[(target.clone(), lossy.clone())])
                .alarms
                .is_empty()
        );
        let raised = w.tick(2000, &[(target.clone(), lossy)]).alarms;
        assert_eq!(raised.len(), 1);
        assert!(raised[0].raised && raised[0].key == "link.loss:10.0.0.1");
        assert_eq!(raised[0].value, 60.0);
        assert_eq!(raised[0].subject, "10.0.0.1");
        let cleared = w.tick(3000, &[(target.clone(), ok)]).alarms;
        assert!(cleared.len() == 1 && !cleared[0].raised);
        // A target that cannot be probed is total loss, with the reason.
        let failed = Sample::Failed("no such host".into());
        w.tick(4000, &[(target.clone(), failed.clone())]);
        let raised = w.tick(5000, &[(target, failed)]).alarms;
        assert!(raised[0].message.contains("no such host"), "{raised:?}");
    }
}
