//! Rates a peer may impose: how fast its frames are served, how many log
//! lines it may cause, how often its requests are passed on.
//!
//! For: [`TokenBucket`] (a rate with a burst), used to pace one child's
//! frames (the session waits for a token instead of dropping: the child's
//! outbox keeps what is not read yet, and only the flooding child slows
//! down), and [`RateByKey`], token buckets keyed by who caused the work (a
//! certificate fingerprint, a source address), so that a peer that
//! reconnects in a loop or sends garbage costs a bounded number of log
//! lines (or relayed requests) per hour however fast it goes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `burst` tokens at most, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_sec: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_sec,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.at = now;
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token, going into debt if need be; returns how long to wait
    /// before what the token pays for (zero when one was there).
    pub fn take(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 || self.per_sec <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Whether to do what a peer caused (write its line, pass its request on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Do it; `suppressed` were left out since the last one allowed (a log
    /// line says so).
    Allowed { suppressed: u64 },
    /// Leave it out (it is counted).
    Limited,
}

struct Keyed {
    bucket: TokenBucket,
    suppressed: u64,
}

/// Events per key: a burst, then a steady trickle. Keys are bounded:
/// when `max_keys` peers are tracked, those whose bucket refilled are
/// forgotten, and if none has, unknown peers share one bucket.
pub struct RateByKey {
    keys: Mutex<HashMap<String, Keyed>>,
    burst: u32,
    per_sec: f64,
    max_keys: usize,
}

/// The shared key of peers beyond `max_keys`.
const OTHERS: &str = "\0others";

impl RateByKey {
    pub fn new(burst: u32, every: Duration, max_keys: usize) -> RateByKey {
        RateByKey {
            keys: Mutex::default(),
            burst,
            per_sec: 1.0 / every.as_secs_f64().max(1e-3),
            max_keys,
        }
    }

    /// Log lines per peer: 20 at once, then one every 10 s (at most ~380
    /// lines an hour each, well under 1 MB); 10,000 peers tracked.
    pub fn log_lines() -> RateByKey {
        RateByKey::new(20, Duration::from_secs(10), 10_000)
    }

    /// May `key` cause one more now?
    pub fn check(&self, key: &str) -> Verdict {
        let now = Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.contains_key(key) && keys.len() >= self.max_keys {
            keys.retain(|_, k| k.suppressed > 0 || !k.bucket.is_full(now));
        }
        let key = if keys.contains_key(key) || keys.len() < self.max_keys {
            key
        } else {
            OTHERS
        };
        let keyed = keys.entry(key.to_owned()).or_insert_with(|| Keyed {
            bucket: TokenBucket::new(self.burst, self.per_sec, now),
            suppressed: 0,
        });
        if keyed.bucket.try_take(now) {
            Verdict::Allowed {
                suppressed: std::mem::take(&mut keyed.suppressed),
            }
        } else {
            keyed.suppressed += 1;
            Verdict::Limited
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(3, 2.0, start);
        assert!((0..3).all(|_| b.try_take(start)));
        assert!(!b.try_take(start));
        assert!(b.try_take(start + Duration::from_millis(500)));
        assert!(!b.try_take(start + Duration::from_millis(500)));
        // Debt: the next token is due in half a second, the one after in one.
        assert_eq!(
            b.take(start + Duration::from_millis(500)),
            Duration::from_millis(500)
        );
        assert_eq!(
            b.take(start + Duration::from_millis(500)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_peer_gets_its_burst_and_then_is_counted_not_logged() {
        let limiter = RateByKey::new(5, Duration::from_secs(3600), 100);
        let verdicts: Vec<Verdict> = (0..1000).map(|_| limiter.check("attacker")).collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v != Verdict::Limited).count(),
            5
        );
        // Another peer is not silenced by the first.
        assert_eq!(limiter.check("node"), Verdict::Allowed { suppressed: 0 });
    }

    #[test]
    fn suppressed_lines_are_counted_in_the_next_one() {
        let limiter = RateByKey::new(1, Duration::from_millis(20), 100);
        assert_eq!(limiter.check("p"), Verdict::Allowed { suppressed: 0 });
        assert_eq!(limiter.check("p"), Verdict::Limited);
        assert_eq!(limiter.check("p"), Verdict::Limited);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(limiter.check("p"), Verdict::Allowed { suppressed: 2 });
    }

    #[test]
    fn many_peers_cannot_grow_the_table_past_its_bound() {
        let limiter = RateByKey::new(1, Duration::from_secs(3600), 10);
        for i in 0..10_000 {
            limiter.check(&format!("peer-{i}"));
        }
        assert!(limiter.keys.lock().unwrap().len() <= 11);
    }
}
