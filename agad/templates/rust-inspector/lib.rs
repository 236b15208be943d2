//! `{{name}}`: an AGAD inspector.
//!
//! Raises `mem.high` when memory use stays above `threshold` percent for
//! `raise_after` ticks (and clears it after `clear_after` ticks below), and
//! sends one summary of `mem.used-percent` per report window. Replace the
//! check with yours: the decision logic ([`Module::observe`]) is plain Rust
//! tested natively; the glue at the bottom reads the host.
//!
//! | config key    | default | meaning                                         |
//! |---------------|---------|-------------------------------------------------|
//! | `threshold`   | 90      | memory used alarm, % (0-100)                    |
//! | `raise_after`, `clear_after`, `window_secs` | 3, 3, 60 | the SDK's common keys |
//!
//! Build and sign: `agad module build --key publisher.secret`; try it:
//! `agad node run --bundle {{name}}.agad --trust publisher.pub --config threshold=1`.

use agad_sdk::{Alarms, Check, Comparison, Config, ConfigError, Output, Window};

/// The module's own configuration keys (the common ones come with the SDK).
pub const CONFIG_KEYS: &[&str] = &["threshold"];
/// The alarm's key and its metric (declared in manifest.toml's `[emits]`).
pub const KEY: &str = "mem.high";
pub const METRIC: &str = "mem.used-percent";

/// The inspector: its settings, raised alarms and report window.
#[derive(Debug)]
pub struct Module {
    check: Check,
    alarms: Alarms,
    window: Window,
}

impl Module {
    /// Validates the configuration (unknown keys and bad values refused).
    pub fn from_config(pairs: &[(String, String)]) -> Result<Module, ConfigError> {
        let config = Config::parse(pairs, CONFIG_KEYS)?;
        let threshold = config.number_in("threshold", 90.0, 0.0, 100.0)?;
        let common = config.common()?;
        Ok(Module {
            check: Check::new(KEY, METRIC)
                .threshold(Comparison::Above, threshold)
                .unit("%"),
            alarms: Alarms::new(common.raise_after, common.clear_after),
            window: Window::new(common.window_secs),
        })
    }

    /// What one reading (`used_percent` at `now_ms`) sends upward.
    pub fn observe(&mut self, now_ms: u64, used_percent: f64) -> Output {
        let alarms = self.alarms.check(&self.check, used_percent).into_iter().collect();
        self.window.record(now_ms, METRIC, "", "%", used_percent);
        Output {
            alarms,
            summaries: self.window.take_due(now_ms),
        }
    }
}

/// The WIT glue: `inspector!` exports `init` and `tick`, keeping the raised
/// alarms in the `state` capability and the time from `clock`.
mod guest {
    use super::Module;
    use agad_sdk::{Alarms, Inspector, Output, inspector, os};

    impl Inspector for Module {
        fn configure(config: &[(String, String)]) -> Result<Self, String> {
            Ok(Module::from_config(config)?)
        }

        fn poll(&mut self, now_ms: u64) -> Output {
            let memory = os::memory();
            if memory.total_bytes == 0 {
                return Output::default();
            }
            let used = memory.used_bytes as f64 * 100.0 / memory.total_bytes as f64;
            self.observe(now_ms, used)
        }

        fn alarms(&mut self) -> &mut Alarms {
            &mut self.alarms
        }
    }

    inspector!(Module);
}

#[cfg(test)]
mod tests {
    use super::*;
    use agad_sdk::config::pairs;

    #[test]
    fn raised_once_after_raise_after_and_cleared_once() {
        let mut module =
            Module::from_config(&pairs(&[("threshold", "80"), ("raise_after", "2")])).expect("valid");
        let sent: Vec<(usize, bool)> = [90.0, 95.0, 99.0, 50.0, 50.0, 50.0]
            .iter()
            .enumerate()
            .flat_map(|(i, &v)| {
                module
                    .observe(i as u64 * 1000, v)
                    .alarms
                    .into_iter()
                    .map(move |a| (i, a.raised))
            })
            .collect();
        assert_eq!(sent, vec![(1, true), (5, false)]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let err = |items| Module::from_config(&pairs(items)).expect_err("refused").to_string();
        assert!(err(&[("treshold", "1")]).starts_with("unknown config key \"treshold\""));
        assert_eq!(err(&[("threshold", "101")]), "threshold: \"101\" is not between 0 and 100");
    }

    #[test]
    fn one_summary_per_window() {
        let mut module = Module::from_config(&pairs(&[("window_secs", "10")])).expect("valid");
        module.observe(0, 10.0);
        module.observe(5_000, 30.0);
        let summaries = module.observe(10_000, 20.0).summaries;
        assert_eq!(summaries.len(), 1);
        assert_eq!((summaries[0].min, summaries[0].max, summaries[0].mean), (10.0, 30.0, 20.0));
    }
}
