//! Per-second rates from monotonically increasing counters (octets, errors).
//!
//! A counter that goes down either wrapped (a 32-bit SNMP `Counter32` passes
//! 2³² every few seconds on a busy gigabit link) or was reset (agent or
//! interface restarted). A decrease is read as a wrap only for 32-bit
//! counters and only when the wrapped delta is under half the counter's range
//! and, if the caller knows one, under a plausible maximum rate; otherwise it
//! is a reset and that sample yields no rate (the next one will).

use std::borrow::Borrow;
use std::collections::BTreeMap;

/// How wide a counter is, which decides whether a decrease can be a wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterWidth {
    /// `Counter32`: wraps at 2³².
    Bits32,
    /// `Counter64` and OS counters: a decrease is always a reset.
    Bits64,
}

/// A rate and the interval it was measured over (between two readings), for
/// [`crate::Window::record_over`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Increase per second.
    pub per_sec: f64,
    /// Time of the previous reading.
    pub from_ms: u64,
    /// Time of this reading.
    pub to_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Previous {
    value: u64,
    at_ms: u64,
}

/// Per-key counter readings turned into per-second rates.
#[derive(Debug, Clone)]
pub struct Rate<K> {
    previous: BTreeMap<K, Previous>,
    /// [`Rate::measure_changed`]: the first value read of a key, whose age
    /// is unknown (a cached counter may have been read by the agent long
    /// before), until it changes.
    unconfirmed: BTreeMap<K, Previous>,
}

impl<K: Ord + Clone> Default for Rate<K> {
    fn default() -> Self {
        Rate::new()
    }
}

impl<K: Ord + Clone> Rate<K> {
    /// No reading yet.
    pub fn new() -> Self {
        Rate {
            previous: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
        }
    }

    /// Records `value` read at `now_ms` and returns the rate per second since
    /// the previous reading of `key`; `None` for the first reading, after a
    /// reset, or when no time passed.
    pub fn update<Q>(
        &mut self,
        key: &Q,
        value: u64,
        width: CounterWidth,
        now_ms: u64,
    ) -> Option<f64>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        self.update_bounded(key, value, width, now_ms, None)
    }

    /// Like [`Rate::update`], with the highest plausible rate per second
    /// (e.g. an interface's speed in octets/s): a faster apparent rate after
    /// a decrease is taken as a reset, not a wrap.
    pub fn update_bounded<Q>(
        &mut self,
        key: &Q,
        value: u64,
        width: CounterWidth,
        now_ms: u64,
        max_per_sec: Option<f64>,
    ) -> Option<f64>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        self.measure(key, value, width, now_ms, max_per_sec)
            .map(|m| m.per_sec)
    }

    /// Like [`Rate::update_bounded`], with the interval the rate is over. A
    /// rate is only ever over a whole interval between two readings of the
    /// counter: the first reading of a key (and the first after a reset)
    /// gives none.
    pub fn measure<Q>(
        &mut self,
        key: &Q,
        value: u64,
        width: CounterWidth,
        now_ms: u64,
        max_per_sec: Option<f64>,
    ) -> Option<Measured>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        let current = Previous {
            value,
            at_ms: now_ms,
        };
        let Some(previous) = self.previous.get_mut(key) else {
            self.previous.insert(key.to_owned(), current);
            return None;
        };
        if now_ms <= previous.at_ms {
            // Same instant or the clock went back: keep the older reading so
            // the next sample still gets a rate over a real interval.
            if now_ms < previous.at_ms {
                *previous = current;
            }
            return None;
        }
        let seconds = (now_ms - previous.at_ms) as f64 / 1000.0;
        let delta = if value >= previous.value {
            Some(value - previous.value)
        } else {
            match width {
                CounterWidth::Bits64 => None,
                CounterWidth::Bits32
                    if previous.value <= u64::from(u32::MAX) && value <= u64::from(u32::MAX) =>
                {
                    let wrapped = (1u64 << 32) - previous.value + value;
                    let plausible = wrapped < (1u64 << 31)
                        && max_per_sec.is_none_or(|max| wrapped as f64 / seconds <= max);
                    plausible.then_some(wrapped)
                }
                CounterWidth::Bits32 => None,
            }
        };
        let from_ms = previous.at_ms;
        *previous = current;
        delta.map(|delta| Measured {
            per_sec: delta as f64 / seconds,
            from_ms,
            to_ms: now_ms,
        })
    }

    /// Like [`Rate::measure`] for a source that serves cached counters (an
    /// SNMP agent): a value equal to the previous reading of `key` is not a
    /// new sample (it gives no rate and the previous reading is kept), until
    /// it has stayed so for `idle_after_ms` (then the counter is idle, and
    /// the rate of 0 is true). The first value read of a key is not even a
    /// starting point until it changes: the agent may have read it long
    /// before it was asked, and a rate from it would be over a time too short.
    pub fn measure_changed<Q>(
        &mut self,
        key: &Q,
        value: u64,
        width: CounterWidth,
        now_ms: u64,
        max_per_sec: Option<f64>,
        idle_after_ms: u64,
    ) -> Option<Measured>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        let unchanged = |p: &Previous| {
            p.value == value && now_ms >= p.at_ms && now_ms - p.at_ms < idle_after_ms
        };
        if !self.previous.contains_key(key) {
            match self.unconfirmed.get(key) {
                Some(first) if unchanged(first) => {}
                // Changed (or idle long enough): a reading whose time is
                // known, the starting point of the first rate.
                Some(_) => {
                    self.unconfirmed.remove(key);
                    self.measure(key, value, width, now_ms, max_per_sec);
                }
                None => {
                    let first = Previous {
                        value,
                        at_ms: now_ms,
                    };
                    self.unconfirmed.insert(key.to_owned(), first);
                }
            }
            return None;
        }
        if self.previous.get(key).is_some_and(unchanged) {
            return None;
        }
        self.measure(key, value, width, now_ms, max_per_sec)
    }

    /// Drops the reading of `key` (its counter is known to have been reset).
    pub fn forget<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.previous.remove(key);
        self.unconfirmed.remove(key);
    }

    /// Keeps only the keys for which `keep` is true (drops vanished series).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.previous.retain(|key, _| keep(key));
        self.unconfirmed.retain(|key, _| keep(key));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rate_per_second() {
        let mut r = Rate::<String>::new();
        assert_eq!(r.update("eth0", 1_000, CounterWidth::Bits64, 0), None);
        assert_eq!(
            r.update("eth0", 3_000, CounterWidth::Bits64, 10_000),
            Some(200.0)
        );
        assert_eq!(
            r.update("eth0", 3_000, CounterWidth::Bits64, 10_000),
            None,
            "no time passed"
        );
        assert_eq!(
            r.update("eth0", 3_500, CounterWidth::Bits64, 15_000),
            Some(100.0)
        );
    }

    #[test]
    fn a_rate_is_over_the_whole_interval_between_readings() {
        let mut r = Rate::<String>::new();
        assert_eq!(r.measure("c", 10, CounterWidth::Bits64, 5_000, None), None);
        assert_eq!(
            r.measure("c", 40, CounterWidth::Bits64, 8_000, None),
            Some(Measured {
                per_sec: 10.0,
                from_ms: 5_000,
                to_ms: 8_000
            })
        );
    }

    #[test]
    fn a_repeated_value_is_no_sample_until_idle() {
        let mut r = Rate::<String>::new();
        let w = CounterWidth::Bits64;
        // The first value may have been cached long before it was read: not
        // a starting point until it changes.
        assert_eq!(r.measure_changed("c", 0, w, 0, None, 10_000), None);
        assert_eq!(r.measure_changed("c", 0, w, 1_000, None, 10_000), None);
        assert_eq!(r.measure_changed("c", 300, w, 2_000, None, 10_000), None);
        assert_eq!(r.measure_changed("c", 300, w, 3_000, None, 10_000), None);
        assert_eq!(r.measure_changed("c", 300, w, 4_000, None, 10_000), None);
        let m = r.measure_changed("c", 600, w, 5_000, None, 10_000).unwrap();
        assert_eq!((m.per_sec, m.from_ms), (100.0, 2_000));
        let idle = r
            .measure_changed("c", 600, w, 15_000, None, 10_000)
            .unwrap();
        assert_eq!((idle.per_sec, idle.from_ms), (0.0, 5_000));
    }

    #[test]
    fn counter32_wrap_gives_a_rate() {
        let mut r = Rate::<String>::new();
        let near_top = u64::from(u32::MAX) - 99;
        r.update("c", near_top, CounterWidth::Bits32, 0);
        // 100 to reach 2^32, then 900 more: 1000 in 1 s.
        assert_eq!(
            r.update("c", 900, CounterWidth::Bits32, 1_000),
            Some(1000.0)
        );
    }

    #[test]
    fn resets_give_no_rate_for_that_sample() {
        let mut r = Rate::<String>::new();
        r.update("c64", 5_000_000, CounterWidth::Bits64, 0);
        assert_eq!(r.update("c64", 10, CounterWidth::Bits64, 1_000), None);
        assert_eq!(r.update("c64", 20, CounterWidth::Bits64, 2_000), Some(10.0));

        // A 32-bit counter that drops from the middle of its range restarted.
        r.update("c32", 2_000_000_000, CounterWidth::Bits32, 0);
        assert_eq!(r.update("c32", 5, CounterWidth::Bits32, 1_000), None);
        assert_eq!(r.update("c32", 15, CounterWidth::Bits32, 2_000), Some(10.0));

        // Implausibly fast for the link: a reset, not a wrap.
        r.update(
            "slow",
            u64::from(u32::MAX) - 1_000_000,
            CounterWidth::Bits32,
            0,
        );
        assert_eq!(
            r.update_bounded(
                "slow",
                1_000_000,
                CounterWidth::Bits32,
                1_000,
                Some(1_000.0)
            ),
            None
        );
    }

    #[test]
    fn forget_and_retain() {
        let mut r = Rate::<String>::new();
        r.update("a", 1, CounterWidth::Bits64, 0);
        r.update("b", 1, CounterWidth::Bits64, 0);
        r.forget("a");
        r.retain(|k| k != "b");
        assert_eq!(r.update("a", 2, CounterWidth::Bits64, 1_000), None);
        assert_eq!(r.update("b", 2, CounterWidth::Bits64, 1_000), None);
    }
}
