//! Consolidation of samples into one [`Summary`] per series per report window.
//!
//! Windows are contiguous and half-open: a window that started at `s` takes
//! every sample recorded before `s + window`; the first sample at or after
//! that closes it (its summaries become ready, with `window-end-ms` set to
//! that instant) and opens the next one. The caller may record first and ask
//! for due summaries afterwards, or the other way round: the result is the
//! same.

use crate::types::Summary;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
struct Series {
    unit: String,
    min: f64,
    max: f64,
    sum: f64,
    last: f64,
    count: u32,
}

#[derive(Debug, Clone)]
pub struct Window {
    length_ms: u64,
    start_ms: Option<u64>,
    /// Keyed by (metric, subject); ordered so summaries come out stably.
    series: BTreeMap<(String, String), Series>,
    ready: Vec<Summary>,
}

impl Window {
    /// `window_secs` of 0 is treated as 1.
    pub fn new(window_secs: u64) -> Self {
        Window {
            length_ms: window_secs.max(1).saturating_mul(1000),
            start_ms: None,
            series: BTreeMap::new(),
            ready: Vec::new(),
        }
    }

    pub fn length_ms(&self) -> u64 {
        self.length_ms
    }

    /// When the current window started (wall clock, ms), if one is open.
    pub fn start_ms(&self) -> Option<u64> {
        self.start_ms
    }

    /// Adds one sample to the series (`metric`, `subject`). Non-finite values
    /// are ignored: they would poison min/max/mean.
    pub fn record(&mut self, now_ms: u64, metric: &str, subject: &str, unit: &str, value: f64) {
        self.roll(now_ms);
        if !value.is_finite() {
            return;
        }
        match self
            .series
            .get_mut(&(metric.to_owned(), subject.to_owned()))
        {
            Some(series) => {
                series.min = series.min.min(value);
                series.max = series.max.max(value);
                series.sum += value;
                series.last = value;
                series.count = series.count.saturating_add(1);
            }
            None => {
                self.series.insert(
                    (metric.to_owned(), subject.to_owned()),
                    Series {
                        unit: unit.to_owned(),
                        min: value,
                        max: value,
                        sum: value,
                        last: value,
                        count: 1,
                    },
                );
            }
        }
    }

    /// Summaries of every window that has closed by `now_ms`, oldest first;
    /// empty while the current window is still open.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Summary> {
        self.roll(now_ms);
        std::mem::take(&mut self.ready)
    }

    /// Closes the current window at `now_ms` whether or not it is due (e.g.
    /// before a planned shutdown) and returns everything not yet taken.
    pub fn flush(&mut self, now_ms: u64) -> Vec<Summary> {
        if let Some(start) = self.start_ms {
            self.close(start, now_ms.max(start));
            self.start_ms = Some(now_ms);
        }
        std::mem::take(&mut self.ready)
    }

    fn roll(&mut self, now_ms: u64) {
        match self.start_ms {
            None => self.start_ms = Some(now_ms),
            Some(start) if now_ms >= start.saturating_add(self.length_ms) => {
                // Windows stay on a fixed grid from the first sample: starting
                // the next one at `now_ms` would let a tick that comes a few
                // milliseconds early stretch every window by one period.
                let end = start.saturating_add(self.length_ms);
                self.close(start, end);
                let skipped = (now_ms - start) / self.length_ms.max(1);
                self.start_ms = Some(start.saturating_add(skipped.saturating_mul(self.length_ms)));
            }
            // The wall clock stepped back: restart the window there rather
            // than keep it open until the clock catches up again.
            Some(start) if now_ms < start => self.start_ms = Some(now_ms),
            Some(_) => {}
        }
    }

    fn close(&mut self, start_ms: u64, end_ms: u64) {
        let series = std::mem::take(&mut self.series);
        self.ready
            .extend(series.into_iter().map(|((metric, subject), s)| Summary {
                metric,
                subject,
                unit: s.unit,
                min: s.min,
                max: s.max,
                mean: s.sum / f64::from(s.count.max(1)),
                last: s.last,
                count: s.count,
                window_start_ms: start_ms,
                window_end_ms: end_ms,
            }));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_summary_per_series_per_window() {
        let mut w = Window::new(60);
        for (i, value) in [10.0, 30.0, 20.0, 40.0, 50.0, 30.0].into_iter().enumerate() {
            let now = 1_000 + i as u64 * 10_000;
            w.record(now, "cpu", "", "%", value);
            w.record(now, "fs", "/", "%", 5.0);
            assert!(w.take_due(now).is_empty(), "window still open at {now}");
        }
        // 60 s after the first sample: the window closes, this sample opens the next.
        w.record(61_000, "cpu", "", "%", 99.0);
        let summaries = w.take_due(61_000);
        assert_eq!(summaries.len(), 2);
        let cpu = &summaries[0];
        assert_eq!(
            (cpu.metric.as_str(), cpu.subject.as_str(), cpu.unit.as_str()),
            ("cpu", "", "%")
        );
        assert_eq!(
            (cpu.min, cpu.max, cpu.mean, cpu.last, cpu.count),
            (10.0, 50.0, 30.0, 30.0, 6)
        );
        assert_eq!((cpu.window_start_ms, cpu.window_end_ms), (1_000, 61_000));
        assert_eq!(summaries[1].subject, "/");

        let next = w.take_due(121_000);
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].count, next[0].last, next[0].window_start_ms),
            (1, 99.0, 61_000)
        );
    }

    #[test]
    fn windows_keep_their_length_when_ticks_jitter() {
        // 1 s ticks that arrive a few ms early or late; 6 s windows.
        let mut w = Window::new(6);
        let mut closed = Vec::new();
        let mut times = Vec::new();
        for i in 0..60u64 {
            let jitter = [3, 0, 1, 2, 4, 0][(i % 6) as usize];
            let now = 1_000_000 + i * 1_000 - jitter;
            times.push(now);
            w.record(now, "m", "", "", 1.0);
            closed.extend(w.take_due(now));
        }
        assert_eq!(
            closed.len(),
            9,
            "ten windows' time closes nine, the tenth is open"
        );
        for (n, s) in closed.iter().enumerate() {
            assert_eq!(s.window_end_ms - s.window_start_ms, 6_000);
            assert_eq!(
                s.window_start_ms,
                times[0] + n as u64 * 6_000,
                "on the grid of the first sample"
            );
        }
        let counts: u32 = closed.iter().map(|s| s.count).sum();
        let before_open_window = times.iter().filter(|&&t| t < times[0] + 9 * 6_000).count();
        assert_eq!(
            counts as usize, before_open_window,
            "every sample lands in exactly one window"
        );
    }

    #[test]
    fn order_of_record_and_take_does_not_matter() {
        let mut w = Window::new(1);
        w.record(0, "m", "", "", 1.0);
        assert_eq!(w.take_due(1_000).len(), 1);
        w.record(1_500, "m", "", "", 2.0);
        assert!(w.take_due(1_500).is_empty());
        assert_eq!(w.take_due(2_000)[0].last, 2.0);
    }

    #[test]
    fn empty_windows_and_bad_values_emit_nothing() {
        let mut w = Window::new(10);
        w.record(0, "m", "", "", f64::NAN);
        assert!(w.take_due(20_000).is_empty());
        w.record(20_000, "m", "", "", 1.0);
        let flushed = w.flush(25_000);
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].window_end_ms, 25_000);
    }
}
