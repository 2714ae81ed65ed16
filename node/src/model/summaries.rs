//! Folder summaries (`db/status` counts, `db/completion` per device) kept
//! until the index changes: tools poll them every second or so, and each
//! computation streams the whole folder. While the index changes all the
//! time (a pull of many small files records a batch every few
//! milliseconds) a summary is served for ten times what it cost to compute
//! before it is computed again: the streaming never takes more than a tenth
//! of the time, and the figures lag only where they are costly (about 3 s
//! at 100,000 files; a few milliseconds for small folders).
//!
//! One [`Cache`] per figure, each with its own key type, so that asking
//! for a folder's totals can only ever return totals.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::DeviceId;

use crate::db::figures::{Completion, LocalCounts, Totals};
use daemon::sync::MutexExt;

/// The folder figures the node keeps, one cache per kind.
#[derive(Default)]
pub struct Summaries {
    /// Global-state and need counts per folder (`db/status`).
    pub need_totals: Cache<String, Totals>,
    /// Completion per (folder, device), ours under our own device ID
    /// (`db/completion`, `FolderCompletion`).
    pub completion: Cache<(String, DeviceId), Completion>,
    /// Counts of our own entries per folder (`db/status`).
    pub local_counts: Cache<String, LocalCounts>,
}

/// Figures of the index and the index generation they were computed from:
/// older than the current one when a costly summary is reused, so that a
/// reader who must not miss the final figures (the event service) knows
/// to look again.
#[derive(Debug, Clone)]
pub struct Figures<T> {
    pub value: T,
    pub generation: u64,
}

struct Cached<V> {
    generation: u64,
    value: V,
    at: Instant,
    cost: Duration,
}

/// Figures of one kind, keyed by `K`, each stored with the index
/// generation it was computed from. A few entries per folder.
pub struct Cache<K, V> {
    map: Mutex<HashMap<K, Cached<V>>>,
}

// By hand: a derive would ask `K` and `V` to be `Default` too.
impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Cache {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// A figure of an older generation is served for this many times its cost.
const COST_FACTOR: u32 = 10;

/// More keys than this (folders, or folders × devices) in one cache and
/// that cache starts over: keys of removed folders and devices never
/// pile up.
const MAX_ENTRIES: usize = 4096;

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    /// The figures for `key` if they are of `generation`, or recent enough
    /// (see the module), with the generation they were computed from;
    /// otherwise `compute`s them (timed, and stored as of `generation`).
    pub fn get_or_compute(
        &self,
        key: K,
        generation: u64,
        compute: impl FnOnce() -> anyhow::Result<V>,
    ) -> anyhow::Result<Figures<V>> {
        if let Some(hit) = self.get(&key, generation) {
            return Ok(hit);
        }
        let started = Instant::now();
        let value = compute()?;
        self.put(key, generation, value.clone(), started.elapsed());
        Ok(Figures { value, generation })
    }

    fn get(&self, key: &K, generation: u64) -> Option<Figures<V>> {
        let map = self.map.locked();
        map.get(key)
            .filter(|c| c.generation == generation || c.at.elapsed() < c.cost * COST_FACTOR)
            .map(|c| Figures {
                value: c.value.clone(),
                generation: c.generation,
            })
    }

    /// Stores figures computed from `generation`, which took `cost`.
    fn put(&self, key: K, generation: u64, value: V, cost: Duration) {
        let mut map = self.map.locked();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let at = Instant::now();
        map.insert(
            key,
            Cached {
                generation,
                value,
                at,
                cost,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.locked().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(n: u64) -> Totals {
        Totals {
            need_files: n,
            ..Default::default()
        }
    }

    #[test]
    fn older_generations_are_served_only_briefly() {
        let c: Cache<String, Totals> = Cache::default();
        let key = "f".to_string();
        c.put(key.clone(), 1, totals(5), Duration::ZERO);
        assert!(matches!(c.get(&key, 1),
                         Some(Figures { value: x, generation: 1 }) if x.need_files == 5));
        // A newer index: a cheap figure is computed again at once…
        assert!(c.get(&key, 2).is_none());
        // …a costly one is kept ten times its cost, and says how old it is.
        c.put(key.clone(), 1, totals(5), Duration::from_secs(100));
        assert!(matches!(
            c.get(&key, 3),
            Some(Figures { generation: 1, .. })
        ));
        let again = c.get_or_compute(key.clone(), 3, || panic!("served from the cache"));
        assert_eq!(again.unwrap().generation, 1);
        // Nothing for another key.
        assert!(c.get(&"g".to_string(), 1).is_none());
    }

    /// Each of the node's caches: a hit within a generation, a fresh
    /// computation after it changes, and never more than `MAX_ENTRIES`.
    #[test]
    fn each_cache_follows_the_generation_and_stays_bounded() {
        fn check<K: Eq + Hash + Clone, V: Clone + PartialEq + std::fmt::Debug>(
            cache: &Cache<K, V>,
            key: impl Fn(usize) -> K,
            first: V,
            second: V,
        ) {
            // Stored as free to compute: how long `compute` took on a busy
            // machine must not decide what the test sees.
            cache.put(key(0), 1, first.clone(), Duration::ZERO);
            let f = cache
                .get_or_compute(key(0), 1, || panic!("computed twice in one generation"))
                .unwrap();
            assert_eq!((f.value, f.generation), (first.clone(), 1));
            // The index changed: cheap figures are computed again.
            let f = cache
                .get_or_compute(key(0), 2, || Ok(second.clone()))
                .unwrap();
            assert_eq!((f.value, f.generation), (second.clone(), 2));
            for i in 0..3 * MAX_ENTRIES {
                cache.put(key(i), 2, first.clone(), Duration::ZERO);
                assert!(cache.len() <= MAX_ENTRIES);
            }
        }
        let s = Summaries::default();
        check(&s.need_totals, |i| format!("f{i}"), totals(1), totals(2));
        let device = |i: usize| DeviceId::from_der_cert(&i.to_le_bytes());
        check(
            &s.completion,
            |i| ("f".to_string(), device(i)),
            Completion::default().finish(),
            Completion {
                need_items: 1,
                ..Default::default()
            }
            .finish(),
        );
        check(
            &s.local_counts,
            |i| format!("f{i}"),
            LocalCounts::default(),
            LocalCounts {
                files: 1,
                ..Default::default()
            },
        );
    }
}
