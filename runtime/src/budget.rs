//! What a module may send upward: per-module rate and size budgets for its
//! alarms and reports, so that a module emitting a million alarms in a tick
//! or a 100 MB message costs the node and its managers no more than a
//! well-behaved one.
//!
//! Excess is dropped and counted, never queued. The node tells its managers
//! once per episode, with one alarm of the module's own (key
//! [`NOTICE_KEY`]): raised at the first drop, cleared after a whole
//! [`QUIET_FOR`] without one, the clear carrying how many were dropped.
//! The notice itself is outside the budget: it is at most two alarms per
//! episode.

use std::time::{Duration, Instant};

/// Key of the node's own alarm about a module over its output budget.
pub const NOTICE_KEY: &str = "agad.output-dropped";
/// Metric of that alarm: alarms and reports dropped in the episode.
pub const NOTICE_METRIC: &str = "agad.dropped-outputs";
/// An episode ends after this long without a drop.
pub const QUIET_FOR: Duration = Duration::from_secs(60);

/// A module's output budget, as the node's policy sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Alarms one module may send per minute: a burst of this many, then
    /// refilled evenly over the minute.
    pub alarms_per_minute: u32,
    /// Reports one module may send per minute, likewise.
    pub reports_per_minute: u32,
    /// Largest alarm accepted (its strings plus a fixed part), in bytes.
    pub max_alarm_bytes: usize,
    /// Largest report accepted (its summaries' strings plus a fixed part
    /// per summary), in bytes.
    pub max_report_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            alarms_per_minute: 120,
            reports_per_minute: 120,
            max_alarm_bytes: 4 * 1024,
            max_report_bytes: 256 * 1024,
        }
    }
}

/// Fixed part of an alarm's or a summary's size: its numbers and enums.
pub const FIXED_ITEM_BYTES: usize = 64;

/// A token bucket refilled evenly, `per_minute` tokens a minute.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: u32, now: Instant) -> Bucket {
        let capacity = f64::from(per_minute);
        Bucket {
            capacity,
            tokens: capacity,
            per_sec: capacity / 60.0,
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Alarms and reports dropped in one episode, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub alarms_over_rate: u64,
    pub alarms_too_large: u64,
    pub reports_over_rate: u64,
    pub reports_too_large: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.alarms_over_rate
            + self.alarms_too_large
            + self.reports_over_rate
            + self.reports_too_large
    }

    /// One line for people: what was dropped, and why.
    pub fn describe(&self, limits: &OutputLimits) -> String {
        let mut parts = Vec::new();
        if self.alarms_over_rate > 0 {
            parts.push(format!(
                "{} alarms over {}/min",
                self.alarms_over_rate, limits.alarms_per_minute
            ));
        }
        if self.alarms_too_large > 0 {
            parts.push(format!(
                "{} alarms over {} bytes",
                self.alarms_too_large, limits.max_alarm_bytes
            ));
        }
        if self.reports_over_rate > 0 {
            parts.push(format!(
                "{} reports over {}/min",
                self.reports_over_rate, limits.reports_per_minute
            ));
        }
        if self.reports_too_large > 0 {
            parts.push(format!(
                "{} reports over {} bytes",
                self.reports_too_large, limits.max_report_bytes
            ));
        }
        parts.join(", ")
    }
}

/// What the node should tell its managers after a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Drops began: raise the notice alarm (counts so far in this episode).
    Raise(Dropped),
    /// A whole [`QUIET_FOR`] without drops: clear it (the episode's counts).
    Clear(Dropped),
}

/// One module's budget; lives as long as its supervisor (across restarts).
#[derive(Debug)]
pub struct OutputBudget {
    limits: OutputLimits,
    alarms: Bucket,
    reports: Bucket,
    episode: Dropped,
    raised: bool,
    last_drop: Option<Instant>,
}

impl OutputBudget {
    pub fn new(limits: OutputLimits, now: Instant) -> OutputBudget {
        OutputBudget {
            limits,
            alarms: Bucket::new(limits.alarms_per_minute, now),
            reports: Bucket::new(limits.reports_per_minute, now),
            episode: Dropped::default(),
            raised: false,
            last_drop: None,
        }
    }

    pub fn limits(&self) -> &OutputLimits {
        &self.limits
    }

    /// Whether an alarm of `bytes` may go; counts it if not.
    pub fn admit_alarm(&mut self, bytes: usize, now: Instant) -> bool {
        if bytes > self.limits.max_alarm_bytes {
            self.episode.alarms_too_large += 1;
        } else if !self.alarms.take(now) {
            self.episode.alarms_over_rate += 1;
        } else {
            return true;
        }
        self.last_drop = Some(now);
        false
    }

    /// Whether a report of `bytes` may go; counts it if not.
    pub fn admit_report(&mut self, bytes: usize, now: Instant) -> bool {
        if bytes > self.limits.max_report_bytes {
            self.episode.reports_too_large += 1;
        } else if !self.reports.take(now) {
            self.episode.reports_over_rate += 1;
        } else {
            return true;
        }
        self.last_drop = Some(now);
        false
    }

    /// Called after each tick: at most one raise and one clear per episode.
    pub fn notice(&mut self, now: Instant) -> Option<Notice> {
        let last_drop = self.last_drop?;
        if !self.raised {
            self.raised = true;
            return Some(Notice::Raise(self.episode));
        }
        if now.saturating_duration_since(last_drop) >= QUIET_FOR {
            let episode = std::mem::take(&mut self.episode);
            self.raised = false;
            self.last_drop = None;
            return Some(Notice::Clear(episode));
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits() -> OutputLimits {
        OutputLimits {
            alarms_per_minute: 10,
            reports_per_minute: 2,
            max_alarm_bytes: 100,
            max_report_bytes: 1000,
        }
    }

    #[test]
    fn a_burst_then_an_even_refill() {
        let t0 = Instant::now();
        let mut b = OutputBudget::new(limits(), t0);
        let admitted = (0..1_000_000).filter(|_| b.admit_alarm(10, t0)).count();
        assert_eq!(admitted, 10);
        // 10 a minute: one more every 6 s.
        assert!(!b.admit_alarm(10, t0 + Duration::from_secs(5)));
        assert!(b.admit_alarm(10, t0 + Duration::from_secs(7)));
        assert_eq!(b.episode.alarms_over_rate, 1_000_000 - 10 + 1);
    }

    #[test]
    fn oversize_items_are_dropped_without_spending_the_rate() {
        let t0 = Instant::now();
        let mut b = OutputBudget::new(limits(), t0);
        assert!(!b.admit_alarm(101, t0));
        assert!(!b.admit_report(1001, t0));
        assert!(b.admit_report(1000, t0));
        assert!(b.admit_report(1000, t0));
        assert!(!b.admit_report(1000, t0));
        assert_eq!(
            b.episode,
            Dropped {
                alarms_over_rate: 0,
                alarms_too_large: 1,
                reports_over_rate: 1,
                reports_too_large: 1,
            }
        );
    }

    #[test]
    fn one_raise_and_one_clear_per_episode() {
        let t0 = Instant::now();
        let mut b = OutputBudget::new(limits(), t0);
        assert_eq!(b.notice(t0), None, "nothing dropped, nothing to say");
        for _ in 0..20 {
            b.admit_alarm(10, t0);
        }
        assert!(matches!(b.notice(t0), Some(Notice::Raise(d)) if d.alarms_over_rate == 10));
        for _ in 0..20 {
            b.admit_alarm(10, t0);
        }
        assert_eq!(b.notice(t0), None, "raised once, not per drop");
        let later = t0 + QUIET_FOR;
        assert!(matches!(b.notice(later), Some(Notice::Clear(d)) if d.alarms_over_rate == 30));
        assert_eq!(b.notice(later), None);
        b.admit_alarm(1000, later);
        assert!(matches!(b.notice(later), Some(Notice::Raise(d)) if d.total() == 1));
    }
}
