//! Accrual failure detection over frame arrivals, used both ways on every
//! link: a manager watching each child, a child watching its parent.
//!
//! For: turning "when did this peer last send anything" into a suspicion
//! level φ (phi accrual, Hayashibara et al. 2004, as Akka and Cassandra use
//! it) and a verdict against a threshold. Not for: deciding what to do with
//! a silent peer (the session layer closes it, the guardian diagnoses it).
//!
//! Every peer sends at least one frame per keep-alive interval (a keep-alive
//! when it has nothing else to say), so the expected gap is at most that
//! interval. φ = −log₁₀(1 − F(t)) where F is the normal distribution of the
//! recent gaps, with three guards that keep a healthy peer from being
//! accused:
//! - the mean is never below the configured interval (a burst of alarms must
//!   not make the next quiet interval look late);
//! - the standard deviation is never below a fifth of the interval (a very
//!   regular peer must not be accused for a few milliseconds of jitter),
//!   and never above a quarter of it, so a silent peer is always declared
//!   stale within 2.8 intervals of its last frame whatever its history;
//! - the history starts with a few gaps of exactly the interval the peer
//!   promised, and the first real gap (from the hello to the next frame,
//!   registration rather than cadence) is not counted;
//! - an acceptable pause of half an interval is granted before suspicion
//!   grows.
//!
//! With the default threshold φ = 8 a silent peer is declared stale 2.5 to
//! 2.8 intervals after its last frame.
//!
//! The watcher also weighs its own timeliness (the idea of HashiCorp's
//! Lifeguard): a watcher whose timer fires late was itself starved (CPU,
//! disk), and that lateness is granted to every peer before accusing it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A parent writes to each child at least once every this many of the
/// child's keep-alive intervals: it answers a keep-alive only when it has
/// sent that child nothing else for most of that time. Every answer costs
/// a record and the child's acknowledgement of it on the wire, and a
/// parent's acknowledgements of reports and alarms, commands and
/// attestation challenges usually come more often; a gone parent host is
/// found by TCP (unacknowledged keep-alives), a stuck parent by what it
/// does not acknowledge.
pub const PARENT_EVERY: u32 = 6;

/// How a link judges silence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessConfig {
    /// The peer's keep-alive interval: the longest expected gap between frames.
    pub interval: Duration,
    /// Suspicion level at which the peer is declared stale (φ = 8: the odds
    /// that a healthy peer is this late are about one in 10⁸).
    pub threshold: f64,
}

impl LivenessConfig {
    pub fn new(interval: Duration) -> LivenessConfig {
        LivenessConfig {
            interval,
            threshold: 8.0,
        }
    }

    /// The same threshold for a peer with another interval.
    pub fn with_interval(self, interval: Duration) -> LivenessConfig {
        LivenessConfig { interval, ..self }
    }

    /// How often a watcher looks at its peers: a tenth of the interval,
    /// between 20 ms and 1 s.
    pub fn check_every(&self) -> Duration {
        (self.interval / 10).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}

/// Gaps remembered per peer.
const WINDOW: usize = 100;
/// Gaps of exactly the promised interval the history starts with.
const PRIOR: usize = 4;

/// The arrival history of one peer.
#[derive(Debug, Clone)]
pub struct Detector {
    config: LivenessConfig,
    last: Instant,
    gaps_ms: VecDeque<f64>,
    /// Running sums of the gaps and their squares: φ is O(1), so one
    /// watcher can check tens of thousands of children several times a second.
    sum: f64,
    sum_sq: f64,
    /// False until the first frame after the one that created the detector.
    started: bool,
}

impl Detector {
    /// A detector whose peer was heard from at `now`.
    pub fn new(config: LivenessConfig, now: Instant) -> Detector {
        let mut d = Detector {
            config,
            last: now,
            gaps_ms: VecDeque::with_capacity(WINDOW),
            sum: 0.0,
            sum_sq: 0.0,
            started: false,
        };
        let promised = config.interval.as_secs_f64() * 1000.0;
        for _ in 0..PRIOR {
            d.push(promised);
        }
        d
    }

    fn push(&mut self, gap_ms: f64) {
        if self.gaps_ms.len() == WINDOW
            && let Some(old) = self.gaps_ms.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.gaps_ms.push_back(gap_ms);
        self.sum += gap_ms;
        self.sum_sq += gap_ms * gap_ms;
    }

    /// A frame arrived at `now`.
    pub fn heard(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last);
        self.last = now;
        if std::mem::replace(&mut self.started, true) {
            self.push(gap.as_secs_f64() * 1000.0);
        }
    }

    /// The suspicion at which the peer is stale.
    pub fn threshold(&self) -> f64 {
        self.config.threshold
    }

    /// The interval the peer promised.
    pub fn interval(&self) -> Duration {
        self.config.interval
    }

    pub fn last_heard(&self) -> Instant {
        self.last
    }

    /// Suspicion at `now`; `own_lag` is how late the watcher itself has been
    /// lately, granted to the peer.
    pub fn phi(&self, now: Instant, own_lag: Duration) -> f64 {
        let interval_ms = self.config.interval.as_secs_f64() * 1000.0;
        let silent_ms = now
            .saturating_duration_since(self.last)
            .saturating_sub(own_lag)
            .as_secs_f64()
            * 1000.0;
        let n = self.gaps_ms.len().max(1) as f64;
        let mean = self.sum / n;
        let std = (self.sum_sq / n - mean * mean).max(0.0).sqrt();
        let mean = mean.max(interval_ms) + interval_ms / 2.0;
        let std = std.clamp(interval_ms / 5.0, interval_ms / 4.0);
        phi(silent_ms, mean, std)
    }

    /// Whether the peer is stale at `now`.
    pub fn is_stale(&self, now: Instant, own_lag: Duration) -> bool {
        self.phi(now, own_lag) >= self.config.threshold
    }
}

/// −log₁₀ of the probability that a gap drawn from N(mean, std) exceeds
/// `t`, with the logistic approximation of the normal CDF that Akka uses
/// (error below 10⁻⁴), computed so that it stays finite far in the tail.
fn phi(t: f64, mean: f64, std: f64) -> f64 {
    let y = (t - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if t > mean {
        // 1 − F = e / (1 + e); for large y, e underflows: use its log.
        let ln_e = -y * (1.5976 + 0.070566 * y * y);
        -(ln_e - (1.0 + e).ln()) / std::f64::consts::LN_10
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// How late a watcher's own timer has been: the lateness of each tick,
/// remembered over a few intervals (Lifeguard's "local health").
#[derive(Debug)]
pub struct OwnLag {
    memory: Duration,
    /// Lateness below this is ordinary timer slack, not starvation.
    slack: Duration,
    ticks: VecDeque<(Instant, Duration)>,
}

impl OwnLag {
    /// Remembers lateness above `slack` for `memory` (a few intervals).
    pub fn new(memory: Duration, slack: Duration) -> OwnLag {
        OwnLag {
            memory,
            slack,
            ticks: VecDeque::new(),
        }
    }

    /// A tick that should have fired at `due` fired at `now`; returns the
    /// lateness accumulated over the remembered period.
    pub fn tick(&mut self, due: Instant, now: Instant) -> Duration {
        let late = now.saturating_duration_since(due);
        if late > self.slack {
            self.ticks.push_back((now, late));
        }
        while self
            .ticks
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.memory)
        {
            self.ticks.pop_front();
        }
        self.ticks.iter().map(|(_, l)| *l).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn regular(config: LivenessConfig, beats: u32, jitter_ms: u64) -> (Detector, Instant) {
        let start = Instant::now();
        let mut d = Detector::new(config, start);
        let mut at = start;
        for i in 0..beats {
            // Deterministic jitter: alternately early and late.
            let j = Duration::from_millis(jitter_ms * u64::from(i % 3));
            at += SECOND - Duration::from_millis(jitter_ms) + j;
            d.heard(at);
        }
        (d, at)
    }

    #[test]
    fn a_peer_on_time_is_not_suspected() {
        let config = LivenessConfig::new(SECOND);
        let (d, last) = regular(config, 50, 50);
        // Up to one and a half intervals late: still healthy.
        for ms in [0, 500, 1000, 1500] {
            let now = last + Duration::from_millis(ms);
            assert!(!d.is_stale(now, Duration::ZERO), "stale after {ms} ms");
        }
    }

    #[test]
    fn a_silent_peer_is_stale_within_three_intervals() {
        let config = LivenessConfig::new(SECOND);
        let (d, last) = regular(config, 50, 50);
        let first_stale = (0..100)
            .map(|tenth| Duration::from_millis(100 * tenth))
            .find(|after| d.is_stale(last + *after, Duration::ZERO))
            .unwrap();
        assert!(
            first_stale >= Duration::from_millis(2000) && first_stale < 3 * SECOND,
            "{first_stale:?}"
        );
    }

    #[test]
    fn an_irregular_history_never_delays_the_verdict_past_three_intervals() {
        let config = LivenessConfig::new(SECOND);
        let start = Instant::now();
        let mut d = Detector::new(config, start);
        let mut at = start;
        for ms in [50, 300, 1900, 100, 1000, 2200] {
            at += Duration::from_millis(ms);
            d.heard(at);
        }
        assert!(d.is_stale(at + Duration::from_millis(2900), Duration::ZERO));
        // Nor does it make the peer suspect early.
        assert!(!d.is_stale(at + Duration::from_millis(1500), Duration::ZERO));
    }

    #[test]
    fn suspicion_grows_with_silence_and_stays_finite() {
        let config = LivenessConfig::new(SECOND);
        let (d, last) = regular(config, 10, 0);
        let mut previous = -1.0;
        for s in [0, 1, 2, 3, 10, 100, 10_000] {
            let p = d.phi(last + SECOND * s, Duration::ZERO);
            assert!(p.is_finite() && p >= previous, "phi {p} after {s} s");
            previous = p;
        }
    }

    #[test]
    fn a_burst_of_frames_does_not_shorten_the_patience() {
        let config = LivenessConfig::new(SECOND);
        let start = Instant::now();
        let mut d = Detector::new(config, start);
        let mut at = start;
        for _ in 0..100 {
            at += Duration::from_millis(10);
            d.heard(at);
        }
        // Then a normal quiet interval, a little late.
        assert!(!d.is_stale(at + Duration::from_millis(1400), Duration::ZERO));
    }

    #[test]
    fn the_watchers_own_lateness_is_granted_to_the_peer() {
        let config = LivenessConfig::new(SECOND);
        let (d, last) = regular(config, 20, 0);
        let now = last + 4 * SECOND;
        assert!(d.is_stale(now, Duration::ZERO));
        assert!(!d.is_stale(now, 3 * SECOND));
    }

    #[test]
    fn own_lag_forgets_old_lateness() {
        let mut lag = OwnLag::new(3 * SECOND, Duration::from_millis(10));
        let t0 = Instant::now();
        assert_eq!(lag.tick(t0, t0 + SECOND), SECOND);
        assert_eq!(lag.tick(t0 + 2 * SECOND, t0 + 2 * SECOND), SECOND);
        assert_eq!(lag.tick(t0 + 5 * SECOND, t0 + 5 * SECOND), Duration::ZERO);
    }
}
