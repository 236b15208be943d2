//! Mean and percentiles of measured durations, and human-readable numbers.

use std::time::Duration;

/// Summary of a set of timings.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub count: usize,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Timings {
    /// `None` for an empty set.
    pub fn of(samples: &[Duration]) -> Option<Timings> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        let pick = |q: f64| {
            // Nearest-rank percentile.
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Some(Timings {
            count: sorted.len(),
            mean: total / u32::try_from(sorted.len()).unwrap_or(u32::MAX),
            p50: pick(0.50),
            p99: pick(0.99),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// `label: p50 … (… intervals), p99 … (… intervals), max … — goal p99 ≤
/// `goal` intervals: met` for durations measured against a keep-alive
/// `interval`; `None` for no samples.
pub fn in_intervals(
    label: &str,
    samples: &[Duration],
    interval: Duration,
    goal: f64,
) -> Option<String> {
    let t = Timings::of(samples)?;
    let k = |d: Duration| d.as_secs_f64() / interval.as_secs_f64();
    Some(format!(
        "{label}: p50 {} ({:.2} intervals), p99 {} ({:.2} intervals), max {} — goal p99 ≤ {goal} intervals: {}",
        duration(t.p50),
        k(t.p50),
        duration(t.p99),
        k(t.p99),
        duration(t.max),
        if k(t.p99) <= goal { "met" } else { "NOT met" }
    ))
}

/// `12.3 µs`, `4.56 ms`, `1.20 s`.
pub fn duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// `812 B`, `12.3 KiB`, `4.56 MiB`.
pub fn bytes(n: f64) -> String {
    if n < 1024.0 {
        format!("{n:.0} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let t = Timings::of(&samples).expect("non-empty");
        assert_eq!(t.p50, Duration::from_micros(50));
        assert_eq!(t.p99, Duration::from_micros(99));
        assert_eq!(t.max, Duration::from_micros(100));
        assert_eq!(t.count, 100);
        assert!(Timings::of(&[]).is_none());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(duration(Duration::from_micros(1500)), "1.50 ms");
        assert_eq!(bytes(2048.0), "2.0 KiB");
    }
}
