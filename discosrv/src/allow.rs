//! The device allow-list: which devices may announce, and whose records
//! a lookup may return (`--allow-devices FILE` or `--allow-devices-redis
//! KEY`). No list means open, as stdiscosrv; a list given means deny by
//! default.
//!
//! The list is always held in memory and swapped whole on a reload, so a
//! request asks one hash set, never the file or Redis: an announcement or
//! a lookup costs the same with ten thousand listed devices as without.
//! The Redis set is re-read every `--allow-reload-interval` rather than
//! asked per request: a per-request `SISMEMBER` would add a round trip to
//! every lookup (doubling Redis' load, since lookups outnumber
//! announcements), and a small per-request cache would still have to be
//! as stale as the interval to save anything. Polling bounds the
//! staleness by the same interval as the file, for every replica alike.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use daemon::sync::{MutexExt, RwLockExt};
use daemon::{Shutdown, WatchedFile};
use proto::{AllowList, DeviceId};

use crate::store::redis::RedisStore;

/// Largest allow-list file read: a million IDs of 63 characters with
/// comments fit; a larger file is a wrong file.
pub const MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;

/// Who may use the server.
pub enum Allow {
    /// No list: everyone, as stdiscosrv.
    Open,
    /// `--allow-devices FILE`, reloaded when it changes.
    File(Arc<WatchedFile<AllowList>>),
    /// `--allow-devices-redis KEY`, re-read every interval.
    Redis(Arc<RedisAllow>),
}

/// What `/status` and the metrics show of the list in force.
pub struct AllowStatus {
    pub source: &'static str,
    pub devices: usize,
    /// When the list in force was read (None: never read, all refused).
    pub loaded_at: Option<SystemTime>,
    pub reloads: u64,
    pub failures: u64,
}

impl Allow {
    /// Loads `--allow-devices FILE`; a file that cannot be read or parsed
    /// refuses the start (a typo must not open the server).
    pub fn load_file(path: &Path) -> Result<Allow, daemon::watched::WatchError> {
        let file = WatchedFile::load(path, MAX_FILE_BYTES, |text| {
            AllowList::parse(text).map_err(|e| e.to_string())
        })?;
        let n = file.get().len();
        if n == 0 {
            tracing::warn!(file = %path.display(), "the allow-list holds no device: every announcement is refused and every lookup answers 404");
        } else {
            tracing::info!(file = %path.display(), devices = n, "allow-list loaded");
        }
        Ok(Allow::File(file))
    }

    /// Whether `id` may announce and be found.
    #[inline]
    pub fn permits(&self, id: &DeviceId) -> bool {
        match self {
            Allow::Open => true,
            Allow::File(file) => file.get().contains(id),
            Allow::Redis(redis) => redis.current.read_locked().contains(id),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Allow::Open)
    }

    pub fn status(&self) -> Option<AllowStatus> {
        match self {
            Allow::Open => None,
            Allow::File(file) => Some(AllowStatus {
                source: "file",
                devices: file.get().len(),
                loaded_at: Some(file.loaded_at()),
                reloads: file.reloads(),
                failures: file.failures(),
            }),
            Allow::Redis(redis) => Some(AllowStatus {
                source: "redis",
                devices: redis.current.read_locked().len(),
                loaded_at: *redis.loaded_at.locked(),
                reloads: redis.reloads.load(Ordering::Relaxed),
                failures: redis.failures.load(Ordering::Relaxed),
            }),
        }
    }
}

/// The allow-list kept in a Redis set, one device ID per member.
pub struct RedisAllow {
    key: String,
    current: RwLock<Arc<AllowList>>,
    loaded_at: Mutex<Option<SystemTime>>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

impl RedisAllow {
    /// Reads the set once. Redis being down at start does not stop the
    /// server (its store answers 503 meanwhile anyway): the list starts
    /// empty, refusing everyone, until a read succeeds.
    pub async fn load(key: String, store: &RedisStore) -> Arc<RedisAllow> {
        let me = Arc::new(RedisAllow {
            key,
            current: RwLock::new(Arc::new(AllowList::default())),
            loaded_at: Mutex::new(None),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        match me.refresh(store).await {
            Ok(_) => {
                let n = me.current.read_locked().len();
                if n == 0 {
                    tracing::warn!(key = %me.key, "the Redis allow-list set is empty or missing: every announcement is refused and every lookup answers 404");
                } else {
                    tracing::info!(key = %me.key, devices = n, "allow-list loaded from Redis");
                }
            }
            Err(e) => {
                tracing::error!(key = %me.key, error = %e, "cannot read the Redis allow-list; refusing every device until it can be read");
            }
        }
        me
    }

    /// Reads the set again: `Ok(true)` when the list changed. A member
    /// that is not a device ID refuses the whole set (the previous list
    /// stays), as a bad line refuses a file.
    async fn refresh(&self, store: &RedisStore) -> Result<bool, String> {
        let read = store
            .set_members(&self.key)
            .await
            .map_err(|e| e.to_string())
            .and_then(|members| {
                AllowList::parse(&members.join("\n")).map_err(|e| format!("member {e}"))
            });
        let list = match read {
            Ok(list) => list,
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let first = self.loaded_at.locked().is_none();
        let changed = **self.current.read_locked() != list;
        if changed || first {
            *self.current.write_locked() = Arc::new(list);
            *self.loaded_at.locked() = Some(SystemTime::now());
            if !first {
                self.reloads.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(changed && !first)
    }

    /// Re-reads the set every `every` until `tasks` stops.
    pub fn spawn_polling(
        self: &Arc<Self>,
        store: Arc<RedisStore>,
        every: Duration,
        tasks: &Shutdown,
    ) {
        let me = self.clone();
        let stop = tasks.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            // Logged once per outage (and when its reason changes), not
            // once per interval.
            let mut failing: Option<String> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match me.refresh(&store).await {
                    Ok(changed) => {
                        if changed {
                            let devices = me.current.read_locked().len();
                            tracing::info!(key = %me.key, devices, "allow-list reloaded from Redis");
                        }
                        failing = None;
                    }
                    Err(e) if failing.as_ref() != Some(&e) => {
                        tracing::error!(key = %me.key, error = %e, "allow-list not reloaded from Redis; the previous version stays in force");
                        failing = Some(e);
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

/// Says when a refusal of a device is worth a log line: at most one per
/// device per [`REFUSAL_LOG_EVERY`], so a refused device retrying every
/// few minutes, or many of them, cannot flood the log; at most
/// [`REFUSAL_LOG_DEVICES`] devices remembered (see [`daemon::RefusalLog`]).
pub type RefusalLog = daemon::RefusalLog<DeviceId>;
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(600);
pub const REFUSAL_LOG_DEVICES: usize = 4096;

pub fn refusal_log() -> RefusalLog {
    RefusalLog::new(REFUSAL_LOG_EVERY, REFUSAL_LOG_DEVICES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_list_permits_only_its_devices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allow");
        let (a, b) = (DeviceId::from_bytes([1; 32]), DeviceId::from_bytes([2; 32]));
        std::fs::write(&path, format!("# studio\n{a}\n")).unwrap();
        let allow = Allow::load_file(&path).unwrap();
        assert!(allow.permits(&a));
        assert!(!allow.permits(&b));
        assert_eq!(allow.status().unwrap().devices, 1);
        assert!(Allow::Open.permits(&b));
        std::fs::write(&path, "not an id\n").unwrap();
        assert!(
            Allow::load_file(&path).is_err(),
            "a bad file must refuse the start"
        );
    }
}
