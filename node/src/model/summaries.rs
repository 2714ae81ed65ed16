//! Folder summaries (`db/status` counts, `db/completion` per device) kept
//! until the index changes: tools poll them every second or so, and each
//! computation streams the whole folder. While the index changes all the
//! time (a pull of many small files records a batch every few
//! milliseconds) a summary is served for ten times what it cost to compute
//! before it is computed again: the streaming never takes more than a tenth
//! of the time, and the figures lag only where they are costly (about 3 s
//! at 100,000 files; a few milliseconds for small folders).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::DeviceId;

use crate::db::figures::{Completion, Totals};
use daemon::sync::MutexExt;

/// What is cached: the folder's totals, or a device's completion.
#[derive(Debug, Clone)]
pub enum Summary {
    Totals(Totals),
    Completion(Completion),
    Local(LocalCounts),
}

/// Our own entries: (files, directories, symlinks, deleted, bytes).
pub type LocalCounts = (u64, u64, u64, u64, u64);

/// (folder, device: `None` for the folder's totals and our own counts,
/// told apart by the [`Summary`] variant asked for).
pub type Key = (String, Option<DeviceId>, &'static str);

/// Figures of the index and the index generation they were computed from:
/// older than the current one when a costly summary is reused, so that a
/// reader who must not miss the final figures (the event service) knows
/// to look again.
#[derive(Debug, Clone)]
pub struct Figures<T> {
    pub value: T,
    pub generation: u64,
}

impl Figures<Summary> {
    /// The figures of one kind of summary, if that is what they are.
    pub fn pick<T>(self, kind: impl FnOnce(Summary) -> Option<T>) -> Option<Figures<T>> {
        let generation = self.generation;
        kind(self.value).map(|value| Figures { value, generation })
    }
}

struct Cached {
    generation: u64,
    summary: Summary,
    at: Instant,
    cost: Duration,
}

/// A few entries per folder.
#[derive(Default)]
pub struct Summaries {
    map: Mutex<HashMap<Key, Cached>>,
}

/// A summary of an older generation is served for this many times its cost.
const COST_FACTOR: u32 = 10;

/// More keys than this (folders × devices) and the cache starts over.
const MAX_ENTRIES: usize = 4096;

impl Summaries {
    /// The summary for `key` if it is of `generation`, or recent enough
    /// (see the module), with the generation it was computed from;
    /// otherwise `compute`s it (timed, and stored as of `generation`).
    pub fn get_or_compute(
        &self,
        key: Key,
        generation: u64,
        compute: impl FnOnce() -> anyhow::Result<Summary>,
    ) -> anyhow::Result<Figures<Summary>> {
        if let Some(hit) = self.get(&key, generation) {
            return Ok(hit);
        }
        let started = Instant::now();
        let summary = compute()?;
        self.put(key, generation, summary.clone(), started.elapsed());
        Ok(Figures {
            value: summary,
            generation,
        })
    }

    fn get(&self, key: &Key, generation: u64) -> Option<Figures<Summary>> {
        let map = self.map.locked();
        map.get(key)
            .filter(|c| c.generation == generation || c.at.elapsed() < c.cost * COST_FACTOR)
            .map(|c| Figures {
                value: c.summary.clone(),
                generation: c.generation,
            })
    }

    /// Stores a summary computed from `generation`, which took `cost`.
    fn put(&self, key: Key, generation: u64, summary: Summary, cost: Duration) {
        let mut map = self.map.locked();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let at = Instant::now();
        map.insert(
            key,
            Cached {
                generation,
                summary,
                at,
                cost,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_generations_are_served_only_briefly() {
        let s = Summaries::default();
        let key = ("f".to_string(), None, "totals");
        let t = |n| {
            Summary::Totals(Totals {
                need_files: n,
                ..Default::default()
            })
        };
        s.put(key.clone(), 1, t(5), Duration::ZERO);
        assert!(matches!(s.get(&key, 1),
                         Some(Figures { value: Summary::Totals(x), generation: 1 }) if x.need_files == 5));
        // A newer index: a cheap figure is computed again at once…
        assert!(s.get(&key, 2).is_none());
        // …a costly one is kept ten times its cost, and says how old it is.
        s.put(key.clone(), 1, t(5), Duration::from_secs(100));
        assert!(matches!(
            s.get(&key, 3),
            Some(Figures { generation: 1, .. })
        ));
        let again = s.get_or_compute(key.clone(), 3, || panic!("served from the cache"));
        assert_eq!(again.unwrap().generation, 1);
        // Nothing for another key.
        assert!(s.get(&("g".to_string(), None, "totals"), 1).is_none());
    }
}
