//! Folder summaries (`db/status` counts, `db/completion` per device) kept
//! until the index changes: tools poll them every second or so, and each
//! computation streams the whole folder.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::DeviceId;

use super::need::{Completion, Totals};

/// What is cached: the folder's totals, or a device's completion.
#[derive(Debug, Clone)]
pub enum Summary {
    Totals(Totals),
    Completion(Completion),
}

/// (folder, device: `None` for the folder's totals).
pub type Key = (String, Option<DeviceId>);

/// Entries are valid for one database generation; a few per folder.
#[derive(Default)]
pub struct Summaries {
    map: Mutex<HashMap<Key, (u64, Summary)>>,
}

/// More keys than this (folders × devices) and the cache starts over.
const MAX_ENTRIES: usize = 4096;

impl Summaries {
    pub fn get(&self, key: &Key, generation: u64) -> Option<Summary> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(g, _)| *g == generation)
            .map(|(_, s)| s.clone())
    }

    pub fn put(&self, key: Key, generation: u64, summary: Summary) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(key, (generation, summary));
    }
}
