//! What one node's discovery knows (`node.discovery`): lookup answers of
//! the global servers, local announcements heard on the LAN, and how our
//! announcements went. The state only; `discovery/` announces and looks up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::DeviceId;

use daemon::sync::MutexExt;

/// What one node's discovery knows (`node.discovery`).
#[derive(Default)]
pub struct Discovery {
    pub cache: LookupCache,
    pub local: LocalCache,
    /// Server → last announcement error (`None` = announced fine).
    pub status: Mutex<HashMap<String, Option<String>>>,
}

impl Discovery {
    /// What discovery currently knows (global cache and local
    /// announcements), for `/rest/system/discovery`.
    pub fn snapshot(&self) -> HashMap<DeviceId, Vec<String>> {
        let mut all = self.cache.snapshot();
        for (id, addrs) in self.local.snapshot() {
            all.entry(id).or_default().extend(addrs);
        }
        for v in all.values_mut() {
            v.sort();
            v.dedup();
        }
        all
    }
}

/// Lookup answers per (server, device): addresses until a time, or a
/// negative answer until a time.
#[derive(Default)]
pub struct LookupCache {
    entries: Mutex<HashMap<(String, DeviceId), CacheEntry>>,
}

/// Fresh until, and the addresses (`None`: a negative answer).
type CacheEntry = (Instant, Option<Vec<String>>);

/// Most cached answers kept (devices × servers).
const MAX_CACHE_ENTRIES: usize = 10_000;

impl LookupCache {
    /// `Some(answer)` while a cached answer (positive or negative) is fresh.
    pub fn get(&self, server: &str, device: &DeviceId) -> Option<Option<Vec<String>>> {
        let mut m = self.entries.locked();
        let key = (server.to_string(), *device);
        match m.get(&key) {
            Some((until, v)) if Instant::now() < *until => Some(v.clone()),
            Some(_) => {
                m.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, server: &str, device: DeviceId, ttl: Duration, v: Option<Vec<String>>) {
        let mut m = self.entries.locked();
        if m.len() >= MAX_CACHE_ENTRIES {
            let now = Instant::now();
            m.retain(|_, (until, _)| *until > now);
            if m.len() >= MAX_CACHE_ENTRIES {
                m.clear();
            }
        }
        m.insert((server.to_string(), device), (Instant::now() + ttl, v));
    }

    /// Every fresh positive answer, for `/rest/system/discovery`.
    pub fn snapshot(&self) -> HashMap<DeviceId, Vec<String>> {
        let m = self.entries.locked();
        let now = Instant::now();
        let mut out: HashMap<DeviceId, Vec<String>> = HashMap::new();
        for ((_, d), (until, v)) in m.iter() {
            if let (true, Some(v)) = (*until > now, v) {
                out.entry(*d).or_default().extend(v.iter().cloned());
            }
        }
        out
    }
}

/// How long a local announcement is believed.
pub const LOCAL_CACHE_LIFETIME: Duration = Duration::from_secs(90);
/// Devices heard on the LAN remembered at most (a LAN full of spoofed IDs
/// stays bounded).
const MAX_LOCAL_DEVICES: usize = 1000;

struct Entry {
    addresses: Vec<String>,
    instance: i64,
    at: Instant,
}

#[derive(Default)]
pub struct LocalCache {
    /// Keyed by device and by IPv6 or not: the two announcers of a
    /// device are independent (own instance IDs), as in Syncthing.
    m: Mutex<HashMap<(DeviceId, bool), Entry>>,
}

impl LocalCache {
    pub fn get(&self, device: &DeviceId) -> Vec<String> {
        let m = self.m.locked();
        let mut out = Vec::new();
        for v6 in [false, true] {
            if let Some(e) = m.get(&(*device, v6)) {
                if e.at.elapsed() < LOCAL_CACHE_LIFETIME {
                    out.extend(e.addresses.iter().cloned());
                }
            }
        }
        out
    }

    /// Every fresh entry.
    pub fn snapshot(&self) -> HashMap<DeviceId, Vec<String>> {
        let m = self.m.locked();
        let mut out: HashMap<DeviceId, Vec<String>> = HashMap::new();
        for ((id, _), e) in m.iter() {
            if e.at.elapsed() < LOCAL_CACHE_LIFETIME {
                out.entry(*id)
                    .or_default()
                    .extend(e.addresses.iter().cloned());
            }
        }
        out
    }

    /// Records an announcement; true when the device is new, its entry had
    /// expired or it restarted (then we announce back at once).
    pub fn put(&self, device: DeviceId, v6: bool, addresses: Vec<String>, instance: i64) -> bool {
        let device = (device, v6);
        let mut m = self.m.locked();
        let fresh = match m.get(&device) {
            Some(e) => e.at.elapsed() >= LOCAL_CACHE_LIFETIME || e.instance != instance,
            None => true,
        };
        if m.len() >= MAX_LOCAL_DEVICES && !m.contains_key(&device) {
            m.retain(|_, e| e.at.elapsed() < LOCAL_CACHE_LIFETIME);
            if m.len() >= MAX_LOCAL_DEVICES {
                return false;
            }
        }
        m.insert(
            device,
            Entry {
                addresses,
                instance,
                at: Instant::now(),
            },
        );
        fresh
    }
}
