//! Crash loops: a module restarted with back-off is one thing, a module
//! that keeps failing is another an operator must hear about. After
//! [`CrashLoopPolicy::restarts`] restarts within [`CrashLoopPolicy::window`]
//! the node raises `agad.module-crash-loop` for that module (area fault,
//! major); it clears once the module has ticked without a fault for
//! [`CrashLoopPolicy::clean`]. The raised state is kept with the node's
//! other runtime alarms ([`crate::refusals`]), so a node restarted, or a
//! module redeployed with a new configuration, still clears it.

use crate::refusals::AlarmSpec;
use agad_protocol::Area;
use agad_protocol::message::Severity;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The alarm of a crash-looping module.
pub const CRASH_LOOP: AlarmSpec = AlarmSpec {
    tree: "crash-loop-alarms",
    key: CRASH_LOOP_KEY,
    metric: "module.restarts",
    area: Area::Fault,
    severity: Severity::Major,
    raised: "is crash-looping",
    cleared: "runs cleanly again",
};

pub const CRASH_LOOP_KEY: &str = "agad.module-crash-loop";

/// When a module counts as crash-looping, and as healthy again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoopPolicy {
    /// Restarts within `window` that raise the alarm.
    pub restarts: u32,
    pub window: Duration,
    /// Fault-free running that clears it.
    pub clean: Duration,
}

impl Default for CrashLoopPolicy {
    fn default() -> Self {
        CrashLoopPolicy {
            restarts: 3,
            window: Duration::from_secs(600),
            clean: Duration::from_secs(300),
        }
    }
}

/// What one module's restarts say.
#[derive(Debug)]
pub struct CrashLoop {
    policy: CrashLoopPolicy,
    /// Restarts within the window, oldest first.
    restarts: VecDeque<Instant>,
    /// Since when the module has been looping (the alarm is raised), and
    /// its last fault.
    looping: Option<Instant>,
    last_fault: Option<Instant>,
}

/// A change of the alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Raise, with why (for the alarm's text).
    Raise(String),
    Clear,
}

impl CrashLoop {
    /// `raised`: the alarm is already raised for this module (an earlier
    /// supervisor or run raised it); it then needs a clean period from now.
    pub fn new(policy: CrashLoopPolicy, raised: bool, now: Instant) -> CrashLoop {
        CrashLoop {
            policy,
            restarts: VecDeque::new(),
            looping: raised.then_some(now),
            last_fault: raised.then_some(now),
        }
    }

    /// A fault that costs the module a restart.
    pub fn restarted(&mut self, now: Instant) -> Option<Change> {
        self.last_fault = Some(now);
        self.restarts.push_back(now);
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.policy.window)
        {
            self.restarts.pop_front();
        }
        if self.looping.is_none() && self.restarts.len() as u32 >= self.policy.restarts.max(1) {
            self.looping = Some(now);
            return Some(Change::Raise(format!(
                "{} restarts within {} s",
                self.restarts.len(),
                self.policy.window.as_secs()
            )));
        }
        None
    }

    /// A tick that went well.
    pub fn ticked(&mut self, now: Instant) -> Option<Change> {
        let last = self.last_fault?;
        if self.looping.is_some() && now.saturating_duration_since(last) >= self.policy.clean {
            self.looping = None;
            self.restarts.clear();
            return Some(Change::Clear);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CrashLoopPolicy = CrashLoopPolicy {
        restarts: 3,
        window: Duration::from_secs(60),
        clean: Duration::from_secs(10),
    };

    #[test]
    fn raised_at_the_nth_restart_in_the_window_and_cleared_after_a_clean_period() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut c = CrashLoop::new(POLICY, false, t0);
        assert_eq!(c.restarted(s(0)), None);
        assert_eq!(c.restarted(s(5)), None);
        assert!(matches!(c.restarted(s(9)), Some(Change::Raise(_))));
        // Raised once, not at every further restart.
        assert_eq!(c.restarted(s(12)), None);
        // A clean tick too soon after the last fault clears nothing.
        assert_eq!(c.ticked(s(15)), None);
        assert_eq!(c.ticked(s(22)), Some(Change::Clear));
        assert_eq!(c.ticked(s(30)), None);
    }

    #[test]
    fn restarts_spread_wider_than_the_window_raise_nothing() {
        let t0 = Instant::now();
        let mut c = CrashLoop::new(POLICY, false, t0);
        for i in 0..10 {
            assert_eq!(c.restarted(t0 + Duration::from_secs(40 * i)), None);
        }
    }

    #[test]
    fn an_alarm_raised_before_is_cleared_after_a_clean_period() {
        let t0 = Instant::now();
        let mut c = CrashLoop::new(POLICY, true, t0);
        assert_eq!(c.ticked(t0 + Duration::from_secs(1)), None);
        assert_eq!(c.ticked(t0 + Duration::from_secs(10)), Some(Change::Clear));
    }
}
