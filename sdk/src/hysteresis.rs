//! Debouncing of a boolean condition per key (filesystem, interface, ...).
//!
//! A condition is raised after `raise_after` consecutive breaching samples
//! and cleared after `clear_after` consecutive normal ones; only the change of
//! state is reported, so a value that flaps around its threshold produces at
//! most one raise and one clear per full streak instead of one per tick.

use std::borrow::Borrow;
use std::collections::BTreeMap;

/// A change of a key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The condition held long enough: raise.
    Raised,
    /// It was normal long enough: clear.
    Cleared,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct KeyState {
    active: bool,
    /// Consecutive samples that disagree with `active`.
    streak: u32,
}

/// Per-key raise/clear debouncing: a key becomes active after `raise_after`
/// consecutive breaching samples, inactive after `clear_after` normal ones,
/// so a value flapping around its threshold raises nothing.
#[derive(Debug, Clone)]
pub struct Hysteresis<K> {
    raise_after: u32,
    clear_after: u32,
    keys: BTreeMap<K, KeyState>,
}

impl<K: Ord + Clone> Hysteresis<K> {
    /// Counts of 0 are treated as 1 (act on the first sample).
    pub fn new(raise_after: u32, clear_after: u32) -> Self {
        Hysteresis {
            raise_after: raise_after.max(1),
            clear_after: clear_after.max(1),
            keys: BTreeMap::new(),
        }
    }

    /// Feeds one sample for `key`; returns a transition only when the state
    /// changes.
    pub fn observe<Q>(&mut self, key: &Q, breached: bool) -> Option<Transition>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        self.observe_counts(key, breached, self.raise_after, self.clear_after)
    }

    /// Like [`Hysteresis::observe`] with counts for this key only (e.g. an
    /// agent that answers again is cleared at once).
    pub fn observe_counts<Q>(
        &mut self,
        key: &Q,
        breached: bool,
        raise_after: u32,
        clear_after: u32,
    ) -> Option<Transition>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        let state = match self.keys.get_mut(key) {
            Some(state) => state,
            None => self.keys.entry(key.to_owned()).or_default(),
        };
        if breached == state.active {
            state.streak = 0;
            return None;
        }
        state.streak += 1;
        let needed = if state.active {
            clear_after.max(1)
        } else {
            raise_after.max(1)
        };
        if state.streak < needed {
            return None;
        }
        state.active = breached;
        state.streak = 0;
        Some(if breached {
            Transition::Raised
        } else {
            Transition::Cleared
        })
    }

    /// Whether `key` is raised.
    pub fn is_active<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.keys.get(key).is_some_and(|state| state.active)
    }

    /// Marks `key` as already raised, e.g. restored from persisted state after
    /// a restart, so that a condition that still holds is not raised again.
    pub fn set_active(&mut self, key: K) {
        self.keys.insert(
            key,
            KeyState {
                active: true,
                streak: 0,
            },
        );
    }

    /// Keys currently raised, in order.
    pub fn active_keys(&self) -> impl Iterator<Item = &K> {
        self.keys
            .iter()
            .filter(|(_, state)| state.active)
            .map(|(key, _)| key)
    }

    /// Forgets every key for which `keep` is false and returns those of them
    /// that were raised, so the caller can clear them (a filesystem that was
    /// unmounted, an interface that disappeared).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) -> Vec<K> {
        let mut dropped_active = Vec::new();
        self.keys.retain(|key, state| {
            let kept = keep(key);
            if !kept && state.active {
                dropped_active.push(key.clone());
            }
            kept
        });
        dropped_active
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(h: &mut Hysteresis<String>, samples: &[bool]) -> Vec<(usize, Transition)> {
        samples
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| h.observe("k", b).map(|t| (i, t)))
            .collect()
    }

    #[test]
    fn raises_after_n_and_clears_after_m() {
        let mut h = Hysteresis::<String>::new(3, 2);
        let transitions = run(
            &mut h,
            &[true, true, true, true, true, false, false, false, false],
        );
        assert_eq!(
            transitions,
            vec![(2, Transition::Raised), (6, Transition::Cleared)]
        );
    }

    #[test]
    fn flapping_never_floods() {
        let mut h = Hysteresis::<String>::new(3, 3);
        let flapping: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        assert!(run(&mut h, &flapping).is_empty());
        // Raised, then flapping again: stays raised, no clear.
        let mut samples = vec![true; 3];
        samples.extend(flapping);
        let mut h = Hysteresis::<String>::new(3, 3);
        assert_eq!(run(&mut h, &samples), vec![(2, Transition::Raised)]);
    }

    #[test]
    fn keys_are_independent_and_restorable() {
        let mut h = Hysteresis::<String>::new(1, 1);
        assert_eq!(h.observe("a", true), Some(Transition::Raised));
        assert_eq!(h.observe("b", false), None);
        assert!(h.is_active("a") && !h.is_active("b"));
        h.set_active("c".to_owned());
        assert_eq!(
            h.observe("c", true),
            None,
            "restored key is not raised again"
        );
        assert_eq!(h.active_keys().cloned().collect::<Vec<_>>(), vec!["a", "c"]);
        assert_eq!(h.retain(|k| k != "a" && k != "b"), vec!["a".to_owned()]);
        assert!(!h.is_active("a"));
    }

    #[test]
    fn zero_counts_act_on_first_sample() {
        let mut h = Hysteresis::<u32>::new(0, 0);
        assert_eq!(h.observe(&7, true), Some(Transition::Raised));
        assert_eq!(h.observe(&7, false), Some(Transition::Cleared));
    }
}
