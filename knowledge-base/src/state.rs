//! What evaluation remembers between alarms: when each (node, key) series
//! fired recently (for `repeat`) and when each rule last acted on each node
//! (for `after`). Memory is bounded: at most [`State::capacity`] series and
//! as many (rule, node) entries; past that, the entry updated longest ago
//! is forgotten (so a flood of distinct keys costs counts of old, quiet
//! series, never unbounded memory). Each series keeps at most the largest
//! `repeat.count` of the rule set, and nothing older than the longest
//! `repeat.within`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Series (and rule hits) tracked when the caller does not say.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Repetition and rule-hit memory, owned by the caller (the dispatcher
/// keeps one per domain manager; `agad kb test` a fresh one) and passed to
/// [`crate::KnowledgeBase::evaluate`]. Kept apart from the rule set so a new
/// rule set can be applied without forgetting the counts. Serializable, so
/// a dispatcher can keep the counts across its restarts (bincode or JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub(crate) series: Lru<VecDeque<u64>>,
    pub(crate) hits: Lru<u64>,
}

impl Default for State {
    fn default() -> Self {
        State::with_capacity(DEFAULT_CAPACITY)
    }
}

impl State {
    /// At most `capacity` (node, key) series and `capacity` (rule, node)
    /// last-acted times (at least 1 of each).
    pub fn with_capacity(capacity: usize) -> State {
        State {
            series: Lru::new(capacity.max(1)),
            hits: Lru::new(capacity.max(1)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.series.capacity
    }

    /// (node, key) series currently tracked.
    pub fn series_len(&self) -> usize {
        self.series.map.len()
    }

    /// Series forgotten so far to stay within the capacity.
    pub fn evicted(&self) -> u64 {
        self.series.evicted + self.hits.evicted
    }
}

/// One map key for a pair; `a` is a checked name (a node, a rule) that
/// cannot hold `\0`, so the first `\0` splits the pair and pairs never
/// collide whatever `b` holds.
pub(crate) fn pair(a: &str, b: &str) -> String {
    let mut key = String::with_capacity(a.len() + b.len() + 1);
    key.push_str(a);
    key.push('\0');
    key.push_str(b);
    key
}

/// A map that forgets the entry touched longest ago beyond `capacity`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Lru<V> {
    map: HashMap<String, (u64, V)>,
    /// Touch stamp → key, oldest first.
    order: BTreeMap<u64, String>,
    stamp: u64,
    capacity: usize,
    evicted: u64,
}

impl<V: Default> Lru<V> {
    fn new(capacity: usize) -> Lru<V> {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            stamp: 0,
            capacity,
            evicted: 0,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key).map(|(_, v)| v)
    }

    /// The entry for `key`, created empty if missing, now the most recent.
    pub(crate) fn touch(&mut self, key: String) -> &mut V {
        self.stamp += 1;
        let stamp = self.stamp;
        if let Some((old, _)) = self.map.get(&key) {
            self.order.remove(old);
        } else if self.map.len() >= self.capacity
            && let Some((_, oldest)) = self.order.pop_first()
        {
            self.map.remove(&oldest);
            self.evicted += 1;
        }
        self.order.insert(stamp, key.clone());
        let entry = self.map.entry(key).or_insert_with(|| (stamp, V::default()));
        entry.0 = stamp;
        &mut entry.1
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_touched_entry_goes_first() {
        let mut lru: Lru<u64> = Lru::new(2);
        *lru.touch("a".into()) = 1;
        *lru.touch("b".into()) = 2;
        // Touching `a` makes `b` the oldest.
        *lru.touch("a".into()) += 10;
        *lru.touch("c".into()) = 3;
        assert_eq!(lru.get("a"), Some(&11));
        assert_eq!(lru.get("b"), None);
        assert_eq!(lru.get("c"), Some(&3));
        assert_eq!(lru.map.len(), 2);
        assert_eq!(lru.order.len(), 2);
        assert_eq!(lru.evicted, 1);
    }

    #[test]
    fn state_survives_a_round_trip() {
        let mut state = State::with_capacity(3);
        state.series.touch(pair("n1", "k")).push_back(5);
        *state.hits.touch(pair("r", "n1")) = 7;
        let json = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.series.get(&pair("n1", "k")).unwrap(),
            &VecDeque::from([5])
        );
        assert_eq!(back.hits.get(&pair("r", "n1")), Some(&7));
        assert_eq!(back.capacity(), 3);
    }
}
