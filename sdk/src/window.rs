//! Consolidation of samples into one [`Summary`] per series per report window.
//!
//! Windows are aligned on the wall clock: with a window of `L` ms they are
//! `[k·L, (k+1)·L)`, the same on every node, and a sample belongs to the
//! window of its measurement time, whenever the tick that took it ran. So two
//! nodes' windows line up for consolidation, and a module's start or a late
//! tick moves no boundary.
//!
//! Every sample also stands for an interval of time: a value measured over
//! an interval (a rate, a utilisation; see [`Window::record_over`]) for that
//! interval, which ends at its measurement time; a reading of a gauge
//! ([`Window::record`]) from its measurement time until the next reading of
//! its series (the latest reading holds until then). That interval is what
//! makes a summary independent of tick jitter:
//! - `mean` is the time-weighted mean of the values over the part of their
//!   intervals inside the window (for a rate, exactly the counter's increase
//!   over the covered time, however many ticks fell in the window); the plain
//!   mean of the window's samples when none of them stands for any time yet;
//! - `coverage` is the share of the window those intervals cover, from 0 to
//!   1: 1 when the series was read all through the window, less when the
//!   module started, or its source stopped answering, within it;
//! - `min` and `max` are over every value that held during the window (a
//!   rate whose interval crosses the window's start, a gauge reading that
//!   held into it, count in both windows); `count` and `last` are over the
//!   samples measured in it.
//!
//! A window's summaries are ready ([`Window::take_due`]) once it has ended
//! and every series in it is covered up to its end, or one window length
//! after its end whatever the coverage. Record every sample of an instant
//! before asking for due summaries.

use crate::types::Summary;
use std::collections::BTreeMap;

type Key = (String, String);

#[derive(Debug, Clone, PartialEq)]
struct Series {
    unit: String,
    min: f64,
    max: f64,
    /// Samples measured in the window, and their plain sum.
    count: u32,
    sum: f64,
    last: f64,
    /// Σ value × covered ms, and the covered ms.
    weighted: f64,
    covered_ms: u64,
}

impl Series {
    fn new(unit: &str) -> Series {
        Series {
            unit: unit.to_owned(),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            count: 0,
            sum: 0.0,
            last: f64::NAN,
            weighted: 0.0,
            covered_ms: 0,
        }
    }

    /// `value` held for `covered_ms` of the window.
    fn held(&mut self, value: f64, covered_ms: u64) {
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.weighted += value * covered_ms as f64;
        self.covered_ms = self.covered_ms.saturating_add(covered_ms);
    }
}

/// A gauge reading whose holding interval is still open.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    at_ms: u64,
    value: f64,
}

/// Consolidates samples into one [`Summary`] per series (metric, subject)
/// per report window; see the module documentation.
#[derive(Debug, Clone)]
pub struct Window {
    length_ms: u64,
    /// Windows with samples whose summaries are not yet taken, by start;
    /// within one, series keyed by (metric, subject), ordered so summaries
    /// come out stably.
    open: BTreeMap<u64, BTreeMap<Key, Series>>,
    /// Each gauge series' latest reading: it holds until the next one.
    held: BTreeMap<Key, Held>,
    /// How far each series' time is covered, so intervals never count twice.
    covered_until: BTreeMap<Key, u64>,
    ready: Vec<Summary>,
}

impl Window {
    /// `window_secs` of 0 is treated as 1.
    pub fn new(window_secs: u64) -> Self {
        Window {
            length_ms: window_secs.max(1).saturating_mul(1000),
            open: BTreeMap::new(),
            held: BTreeMap::new(),
            covered_until: BTreeMap::new(),
            ready: Vec::new(),
        }
    }

    /// Length of one window, in milliseconds.
    pub fn length_ms(&self) -> u64 {
        self.length_ms
    }

    /// Start of the window that holds instant `at_ms`.
    pub fn start_of(&self, at_ms: u64) -> u64 {
        at_ms - at_ms % self.length_ms
    }

    /// Adds one reading of a gauge, taken at `now_ms`, to the series
    /// (`metric`, `subject`); it holds until the series' next reading.
    /// Non-finite values are ignored: they would poison min/max/mean.
    pub fn record(&mut self, now_ms: u64, metric: &str, subject: &str, unit: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        let key = (metric.to_owned(), subject.to_owned());
        self.open.entry(self.start_of(now_ms)).or_default();
        if let Some(previous) = self.held.get(&key).cloned()
            && previous.at_ms <= now_ms
        {
            self.cover(&key, previous.at_ms, now_ms, unit, previous.value);
        }
        self.held.insert(
            key.clone(),
            Held {
                at_ms: now_ms,
                value,
            },
        );
        self.count(key, now_ms, unit, value);
    }

    /// Adds a value measured over `[from_ms, to_ms]` (a rate over the
    /// interval between two counter readings, a utilisation since the
    /// previous reading): it belongs to the window of `to_ms` and stands for
    /// that whole interval.
    pub fn record_over(
        &mut self,
        from_ms: u64,
        to_ms: u64,
        metric: &str,
        subject: &str,
        unit: &str,
        value: f64,
    ) {
        if !value.is_finite() {
            return;
        }
        let key = (metric.to_owned(), subject.to_owned());
        self.open.entry(self.start_of(to_ms)).or_default();
        self.cover(&key, from_ms.min(to_ms), to_ms, unit, value);
        self.count(key, to_ms, unit, value);
    }

    /// A sample measured at `at_ms`, in its window.
    fn count(&mut self, key: Key, at_ms: u64, unit: &str, value: f64) {
        let home = self.start_of(at_ms);
        let s = self
            .open
            .entry(home)
            .or_default()
            .entry(key)
            .or_insert_with(|| Series::new(unit));
        s.min = s.min.min(value);
        s.max = s.max.max(value);
        s.count = s.count.saturating_add(1);
        s.sum += value;
        s.last = value;
    }

    /// `value` held over `[from_ms, to_ms)`: each open window takes the
    /// part inside it. A series' time counts once: after a clock step back,
    /// or for an interval already covered, only the new part counts.
    fn cover(&mut self, key: &Key, from_ms: u64, to_ms: u64, unit: &str, value: f64) {
        let from_ms = match self.covered_until.get(key) {
            Some(&until) if until <= to_ms => from_ms.max(until),
            _ => from_ms,
        };
        self.covered_until.insert(key.clone(), to_ms);
        for (&start, series) in self.open.range_mut(..=to_ms) {
            let end = start.saturating_add(self.length_ms);
            let overlap = to_ms.min(end).saturating_sub(from_ms.max(start));
            if overlap == 0 {
                continue;
            }
            // A window where the series has no sample of its own is not
            // reported for it (see `close`).
            series
                .entry(key.clone())
                .or_insert_with(|| Series::new(unit))
                .held(value, overlap);
        }
    }

    /// Summaries of every window that is complete by `now_ms`, oldest
    /// first: a window that has ended once every series in it is covered up
    /// to its end (the interval of a sample measured after it reaches back
    /// into it), or in any case one window length after its end (a series
    /// that stopped). So a rate whose interval crosses the end, measured a
    /// few ticks later (an agent that refreshes its counters every few
    /// seconds), still counts in the window it covers.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Summary> {
        let length = self.length_ms;
        let due: Vec<u64> = self
            .open
            .iter()
            .filter(|(start, series)| {
                let end = start.saturating_add(length);
                let covered = series
                    .keys()
                    .all(|key| self.covered_until.get(key).is_some_and(|&u| u >= end));
                end <= now_ms && (covered || end.saturating_add(length) <= now_ms)
            })
            .map(|(start, _)| *start)
            .collect();
        for start in due {
            self.close(start);
        }
        // Forget series not read for ten windows (a vanished interface):
        // their next reading, if any, starts afresh.
        let horizon = now_ms.saturating_sub(self.length_ms.saturating_mul(10));
        self.held.retain(|_, h| h.at_ms >= horizon);
        self.covered_until.retain(|_, until| *until >= horizon);
        std::mem::take(&mut self.ready)
    }

    /// Closes every open window whether or not it is due (e.g. before a
    /// planned shutdown) and returns everything not yet taken. Its coverage
    /// then only counts up to the last sample.
    pub fn flush(&mut self, _now_ms: u64) -> Vec<Summary> {
        let starts: Vec<u64> = self.open.keys().copied().collect();
        for start in starts {
            self.close(start);
        }
        std::mem::take(&mut self.ready)
    }

    fn close(&mut self, start_ms: u64) {
        let Some(series) = self.open.remove(&start_ms) else {
            return;
        };
        let end_ms = start_ms.saturating_add(self.length_ms);
        let length = self.length_ms as f64;
        self.ready.extend(
            series
                .into_iter()
                // Only a series with a sample measured in the window reports.
                .filter(|(_, s)| s.count > 0)
                .map(|((metric, subject), s)| Summary {
                    metric,
                    subject,
                    unit: s.unit,
                    min: s.min,
                    max: s.max,
                    // Clamped: summing value × time rounds, and a mean
                    // outside [min, max] would look like a bug downstream.
                    mean: if s.covered_ms > 0 {
                        s.weighted / s.covered_ms as f64
                    } else {
                        s.sum / f64::from(s.count)
                    }
                    .clamp(s.min, s.max),
                    last: s.last,
                    count: s.count,
                    coverage: (s.covered_ms as f64 / length).min(1.0),
                    window_start_ms: start_ms,
                    window_end_ms: end_ms,
                }),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: u64 = 1_699_999_980_000; // a multiple of 10 s and of 60 s

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn windows_are_aligned_on_the_wall_clock() {
        let mut w = Window::new(60);
        // The module starts 7 s into a window and ticks every 10 s.
        for (i, value) in [10.0, 30.0, 20.0, 40.0, 50.0, 30.0].into_iter().enumerate() {
            let now = T0 + 7_000 + i as u64 * 10_000;
            w.record(now, "cpu", "", "%", value);
            w.record(now, "fs", "/", "%", 5.0);
            assert!(w.take_due(now).is_empty(), "window still open at {now}");
        }
        w.record(T0 + 67_000, "cpu", "", "%", 99.0);
        assert!(
            w.take_due(T0 + 67_000).is_empty(),
            "the fs series is not covered to the end yet"
        );
        // One window length after its end, the window closes anyway.
        let summaries = w.take_due(T0 + 120_000);
        assert_eq!(summaries.len(), 2);
        let cpu = &summaries[0];
        assert_eq!(
            (cpu.metric.as_str(), cpu.subject.as_str(), cpu.unit.as_str()),
            ("cpu", "", "%")
        );
        assert_eq!((cpu.window_start_ms, cpu.window_end_ms), (T0, T0 + 60_000));
        assert_eq!(
            (cpu.min, cpu.max, cpu.last, cpu.count),
            (10.0, 50.0, 30.0, 6)
        );
        // Covered from the first reading (7 s) to the end: the reading at
        // 57 s held until the one at 67 s, 3 s of it in this window.
        assert!(close(cpu.coverage, 53.0 / 60.0), "{cpu:?}");
        let weighted = (10.0 + 30.0 + 20.0 + 40.0 + 50.0) * 10.0 + 30.0 * 3.0;
        assert!(close(cpu.mean, weighted / 53.0), "{cpu:?}");
        // The fs series was not read at 67 s: covered up to its last reading.
        assert!(close(summaries[1].coverage, 50.0 / 60.0));

        let next = w.take_due(T0 + 180_000);
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].count, next[0].last, next[0].window_start_ms),
            (1, 99.0, T0 + 60_000)
        );
        // 30 % held from 60 s to 67 s; 99 % is still holding.
        assert_eq!((next[0].min, next[0].max), (30.0, 99.0));
        assert!(close(next[0].coverage, 7.0 / 60.0));
    }

    /// 1 s ticks, a few ms early or late, right on the window boundaries
    /// (the worst phase): a 10 s window holds 9, 10 or 11 samples, but
    /// every full window covers exactly its length and a constant rate's
    /// mean is exact.
    #[test]
    fn jittered_ticks_change_neither_coverage_nor_mean() {
        let mut w = Window::new(10);
        let mut counter = crate::Rate::<String>::new();
        let mut closed = Vec::new();
        let jitter = [3i64, -2, 0, 4, -4, 1, -1, 2, -3, 0, 5, -5];
        let mut times = Vec::new();
        for i in 0..100u64 {
            let now = (T0 + i * 1_000).saturating_add_signed(jitter[i as usize % 12]);
            times.push(now);
            // 1000 octets per second, read from a counter at each tick.
            let octets = (now - T0) + 5_000;
            if let Some(m) = counter.measure("eth0", octets, crate::CounterWidth::Bits64, now, None)
            {
                w.record_over(m.from_ms, m.to_ms, "in", "eth0", "B/s", m.per_sec);
            }
            w.record(now, "gauge", "", "", 1.0);
            closed.extend(w.take_due(now));
        }
        let rates: Vec<&Summary> = closed.iter().filter(|s| s.metric == "in").collect();
        assert_eq!(rates.len(), 9, "windows 0..9 closed, the tenth is open");
        let counts: Vec<u32> = rates.iter().map(|s| s.count).collect();
        assert!(
            counts.iter().any(|&c| c != 10),
            "the jitter moves samples across boundaries: {counts:?}"
        );
        for (n, s) in rates.iter().enumerate() {
            assert_eq!(s.window_start_ms, T0 + n as u64 * 10_000);
            assert_eq!(s.window_end_ms - s.window_start_ms, 10_000);
            assert!(close(s.mean, 1_000.0), "{s:?}");
            if n > 0 {
                assert!(close(s.coverage, 1.0), "full window: {s:?}");
            }
        }
        // The first window starts with the first reading (3 ms in), which
        // gave no rate: covered from there.
        assert!(close(rates[0].coverage, (10_000.0 - 3.0) / 10_000.0));
        let total: u32 = rates.iter().map(|s| s.count).sum();
        let in_closed = times[1..].iter().filter(|&&t| t < T0 + 90_000).count();
        assert_eq!(total as usize, in_closed, "each rate in exactly one window");
        for s in closed.iter().filter(|s| s.metric == "gauge").skip(1) {
            assert!(close(s.coverage, 1.0), "{s:?}");
        }
    }

    #[test]
    fn a_value_over_a_long_interval_covers_its_part_of_each_open_window() {
        let mut w = Window::new(10);
        w.record_over(T0 + 1_000, T0 + 8_000, "r", "", "", 2.0);
        // 8 s → 14 s: 2 s in the first window, 4 s in the second.
        w.record_over(T0 + 8_000, T0 + 14_000, "r", "", "", 5.0);
        let first = w.take_due(T0 + 14_000);
        assert_eq!(first.len(), 1);
        assert!(close(first[0].coverage, 0.9));
        assert!(close(first[0].mean, (2.0 * 7.0 + 5.0 * 2.0) / 9.0));
        assert_eq!((first[0].count, first[0].max), (1, 5.0));
        let second = w.flush(T0 + 15_000);
        assert_eq!((second[0].count, second[0].min), (1, 5.0));
        assert!(close(second[0].coverage, 0.4));
    }

    #[test]
    fn a_window_waits_for_the_sample_that_covers_its_end() {
        let mut w = Window::new(10);
        w.record_over(T0 + 1_000, T0 + 4_000, "rate", "", "", 1.0);
        w.record_over(T0 + 4_000, T0 + 7_000, "rate", "", "", 2.0);
        // Ticks at 10 s and 11 s read the agent's cached counters: no sample.
        assert!(w.take_due(T0 + 10_000).is_empty());
        assert!(w.take_due(T0 + 11_000).is_empty());
        // The next fresh reading covers 7 s → 13 s, 3 s of it in the window.
        w.record_over(T0 + 7_000, T0 + 13_000, "rate", "", "", 4.0);
        let due = w.take_due(T0 + 13_000);
        assert_eq!(due.len(), 1);
        assert!(close(due[0].coverage, 0.9));
        assert!(close(due[0].mean, (3.0 + 6.0 + 12.0) / 9.0));
        assert_eq!((due[0].count, due[0].last, due[0].max), (2, 2.0, 4.0));
    }

    #[test]
    fn order_of_record_and_take_does_not_lose_samples() {
        let mut w = Window::new(1);
        w.record(T0, "m", "", "", 1.0);
        assert!(w.take_due(T0 + 1_000).is_empty(), "not covered to its end");
        w.record(T0 + 1_500, "m", "", "", 2.0);
        assert_eq!(w.take_due(T0 + 1_500).len(), 1);
        assert_eq!(w.take_due(T0 + 3_000)[0].last, 2.0);
    }

    #[test]
    fn empty_windows_and_bad_values_emit_nothing() {
        let mut w = Window::new(10);
        w.record(T0, "m", "", "", f64::NAN);
        assert!(w.take_due(T0 + 20_000).is_empty());
        w.record(T0 + 20_000, "m", "", "", 1.0);
        let flushed = w.flush(T0 + 25_000);
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].window_end_ms, T0 + 30_000);
        assert_eq!((flushed[0].count, flushed[0].coverage), (1, 0.0));
    }

    #[test]
    fn a_clock_step_back_opens_the_earlier_window() {
        let mut w = Window::new(10);
        w.record(T0 + 15_000, "m", "", "", 1.0);
        w.record(T0 + 5_000, "m", "", "", 2.0);
        let due = w.take_due(T0 + 30_000);
        let starts: Vec<u64> = due.iter().map(|s| s.window_start_ms).collect();
        assert_eq!(starts, vec![T0, T0 + 10_000]);
    }
}
