//! The embedded store: all records in memory, sharded, snapshotted to one
//! file under `--db-dir`.
//!
//! Each device costs one heap block (see `record.rs`) plus a 16-byte slot in
//! a hash set whose elements hash by the device ID they start with. The
//! snapshot is written to a temporary file, fsynced and renamed over the
//! previous one, so a crash leaves either the old or the new snapshot.

use std::borrow::Borrow;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use proto::discovery::ADDRESS_LIFETIME_SECS;
use proto::DeviceId;

use super::record::{self, View};
use super::{Announced, Found, Lookup, Now, Store, StoreError};

const SHARDS: usize = 64;

/// Foldhash, seeded at random per set: several times cheaper than SipHash
/// over a 32-byte key, and the stored keys are SHA-256 outputs that no one
/// chooses, hashed with a seed no one knows.
type IdSet = std::collections::HashSet<Entry, foldhash::fast::RandomState>;
const MAGIC: &[u8; 16] = b"DISCOSRV-SNAP-2\n";
const SNAPSHOT: &str = "records.bin";
/// Records without a current address are remembered this long after their
/// last announcement, so lookups of offline devices count as "seen before".
pub const FORGET_AFTER_SECS: i64 = 7 * 24 * 3600;
/// Largest record accepted from a snapshot.
const MAX_RECORD_BYTES: usize = 256 * 1024;

/// One device's record; hashes and compares by its device ID.
struct Entry(Box<[u8]>);

impl Entry {
    fn key(&self) -> &[u8; 32] {
        self.0.first_chunk::<32>().unwrap_or(&[0; 32])
    }
    fn view(&self) -> Option<View<'_>> {
        // Entries are only built by `record::encode` (snapshot bytes are
        // checked and re-encoded), so no need to check them again.
        Some(View::trusted(&self.0))
    }
}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Entry {}
impl Borrow<[u8; 32]> for Entry {
    fn borrow(&self) -> &[u8; 32] {
        self.key()
    }
}

pub struct MemoryStore {
    shards: Box<[RwLock<IdSet>]>,
    dir: Option<PathBuf>,
    /// Announcements since the last snapshot (skip writing when idle).
    changes: AtomicU64,
    /// Records held and their cost in bytes ([`cost`]), kept up to date
    /// under each shard's write lock; read against the budget before a
    /// new device is added (concurrent writers may overshoot by a few).
    records: AtomicU64,
    bytes: AtomicU64,
    budget: Budget,
}

/// The most the store holds; past it, new devices are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub max_records: u64,
    pub max_bytes: u64,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        max_records: u64::MAX,
        max_bytes: u64::MAX,
    };
}

/// What a record costs in memory: its heap block, the set's slot and the
/// allocator's bookkeeping, roughly.
fn cost(record_len: usize) -> u64 {
    record_len as u64 + 48
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |error| SnapshotError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What loading a snapshot found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: u64,
    pub dropped_expired: u64,
    /// Set when the file was damaged; it was moved aside to this path.
    pub damaged_moved_to: Option<PathBuf>,
}

impl MemoryStore {
    /// A store snapshotting to `dir` (None: memory only, for tests).
    pub fn new(dir: Option<PathBuf>) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| RwLock::new(IdSet::default())).collect(),
            dir,
            changes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            budget: Budget::UNLIMITED,
        }
    }

    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Records held and their cost in bytes.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn added(&self, len: usize) {
        self.records.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(cost(len), Ordering::Relaxed);
    }

    fn removed(&self, len: usize) {
        self.records.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(cost(len), Ordering::Relaxed);
    }

    fn shard(&self, id: &[u8; 32]) -> &RwLock<IdSet> {
        // Device IDs are SHA-256 outputs: any byte is uniform.
        &self.shards[usize::from(id[31]) % SHARDS]
    }

    pub fn snapshot_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(SNAPSHOT))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|s| s.len()).unwrap_or(0))
            .sum()
    }

    pub fn announce_sync(&self, id: DeviceId, addresses: &[String], now: Now) -> Announced {
        let now_s = clamp_secs(now.secs());
        let expires = clamp_secs(now.secs() + ADDRESS_LIFETIME_SECS as i64);
        let key = id.as_bytes();
        let mut shard = match self.shard(key).write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let merged = match shard.get(key).and_then(Entry::view) {
            Some(v) => record::merge(v.addrs(), addresses, expires, now_s),
            None => {
                let (records, bytes) = self.usage();
                if records >= self.budget.max_records || bytes >= self.budget.max_bytes {
                    return Announced::Full;
                }
                record::merge(std::iter::empty(), addresses, expires, now_s)
            }
        };
        let blob = record::encode(key, now.0, &merged);
        let len = blob.len();
        if let Some(old) = shard.replace(Entry(blob)) {
            self.removed(old.0.len());
        }
        self.added(len);
        drop(shard);
        self.changes.fetch_add(1, Ordering::Relaxed);
        Announced::Stored
    }

    /// Whether a record of `id` is held.
    pub fn contains(&self, id: &DeviceId) -> bool {
        let shard = match self.shard(id.as_bytes()).read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        shard.contains(id.as_bytes())
    }

    pub fn lookup_sync(&self, id: &DeviceId, now: Now) -> Lookup {
        let now_s = clamp_secs(now.secs());
        let shard = match self.shard(id.as_bytes()).read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(view) = shard.get(id.as_bytes()).and_then(Entry::view) else {
            return Lookup::NotFound { seen_before: false };
        };
        let addresses: Vec<String> = view
            .addrs()
            .filter(|a| a.expires > now_s)
            .map(|a| a.url)
            .collect();
        if addresses.is_empty() {
            Lookup::NotFound { seen_before: true }
        } else {
            Lookup::Found(Found {
                seen_unix_ns: view.seen_ns(),
                addresses,
            })
        }
    }

    /// Drops expired addresses, and records without a current address whose
    /// last announcement is older than [`FORGET_AFTER_SECS`]. Returns the
    /// number of devices with a current address.
    pub fn expire(&self, now: Now) -> u64 {
        let now_s = clamp_secs(now.secs());
        let forget_before = now.0.saturating_sub(FORGET_AFTER_SECS * 1_000_000_000);
        let mut current = 0u64;
        for shard in self.shards.iter() {
            let mut shard = match shard.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let mut rewrite = Vec::new();
            let mut gone = (0u64, 0u64);
            shard.retain(|e| {
                let Some(v) = e.view() else { return false };
                let mut live = 0usize;
                let mut total = 0usize;
                for a in v.addrs() {
                    total += 1;
                    if a.expires > now_s {
                        live += 1;
                    }
                }
                if live > 0 {
                    current += 1;
                }
                if live < total {
                    rewrite.push((v.id(), v.seen_ns()));
                }
                let keep = live > 0 || v.seen_ns() >= forget_before;
                if !keep {
                    gone.0 += 1;
                    gone.1 += cost(e.0.len());
                }
                keep
            });
            self.records.fetch_sub(gone.0, Ordering::Relaxed);
            self.bytes.fetch_sub(gone.1, Ordering::Relaxed);
            for (id, seen) in rewrite {
                if let Some(e) = shard.get(&id) {
                    if let Some(v) = e.view() {
                        let kept: Vec<_> = v.addrs().filter(|a| a.expires > now_s).collect();
                        let blob = record::encode(&id, seen, &kept);
                        let len = blob.len();
                        if let Some(old) = shard.replace(Entry(blob)) {
                            self.removed(old.0.len());
                        }
                        self.added(len);
                    }
                }
            }
            shard.shrink_to_fit();
        }
        current
    }

    /// Writes the snapshot if anything changed since the last one (or
    /// `force`). Blocking: run it off the async threads.
    pub fn write_snapshot(&self, force: bool) -> Result<Option<u64>, SnapshotError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let changes = self.changes.swap(0, Ordering::AcqRel);
        if changes == 0 && !force {
            return Ok(None);
        }
        let result = self.write_snapshot_to(dir);
        if result.is_err() {
            // Not written: count the changes again so the next pass retries.
            self.changes.fetch_add(changes.max(1), Ordering::AcqRel);
        }
        result.map(Some)
    }

    fn write_snapshot_to(&self, dir: &Path) -> Result<u64, SnapshotError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(SNAPSHOT);
        let tmp = dir.join(format!("{SNAPSHOT}.tmp"));
        let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(MAGIC).map_err(io_err(&tmp))?;
        let mut count = 0u64;
        let mut buf = Vec::new();
        for shard in self.shards.iter() {
            // Copy out under the lock, write without it.
            buf.clear();
            {
                let shard = match shard.read() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                for e in shard.iter() {
                    buf.extend_from_slice(&(e.0.len() as u32).to_le_bytes());
                    buf.extend_from_slice(&e.0);
                    count += 1;
                }
            }
            w.write_all(&buf).map_err(io_err(&tmp))?;
        }
        w.write_all(&0u32.to_le_bytes()).map_err(io_err(&tmp))?;
        w.write_all(&count.to_le_bytes()).map_err(io_err(&tmp))?;
        let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(count)
    }

    /// Loads the snapshot, if there is one. Expired addresses are dropped. A
    /// damaged file is moved aside (never overwritten) and what could be
    /// read is kept.
    pub fn load_snapshot(&self, now: Now) -> Result<Loaded, SnapshotError> {
        let Some(path) = self.snapshot_path() else {
            return Ok(Loaded::default());
        };
        let mut bytes = Vec::new();
        match fs::File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io_err(&path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(e) => return Err(io_err(&path)(e)),
        }
        let (complete, mut loaded) = self.load_snapshot_bytes(&bytes, now);
        if !complete {
            let aside = path.with_extension(format!("damaged-{}", now.secs()));
            fs::rename(&path, &aside).map_err(io_err(&path))?;
            loaded.damaged_moved_to = Some(aside);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(loaded)
    }

    /// Loads a snapshot file's content (what [`MemoryStore::load_snapshot`]
    /// read) and says whether all of it was valid. Separate from the file
    /// handling so the fuzz targets can feed it damaged files.
    pub(crate) fn load_snapshot_bytes(&self, bytes: &[u8], now: Now) -> (bool, Loaded) {
        let mut loaded = Loaded::default();
        let now_s = clamp_secs(now.secs());
        let forget_before = now.0.saturating_sub(FORGET_AFTER_SECS * 1_000_000_000);
        let complete = self.parse_snapshot(bytes, now_s, forget_before, &mut loaded);
        (complete, loaded)
    }

    /// Calls `f` with every record's bytes (the fuzz targets check each).
    pub(crate) fn for_each_record(&self, mut f: impl FnMut(&[u8])) {
        for shard in self.shards.iter() {
            let g = match shard.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            g.iter().for_each(|e| f(&e.0));
        }
    }

    /// Returns whether the whole file was valid.
    fn parse_snapshot(
        &self,
        bytes: &[u8],
        now_s: u32,
        forget_before: i64,
        loaded: &mut Loaded,
    ) -> bool {
        let Some(mut rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
            return false;
        };
        // Room for most records up front, rather than growing each table ten
        // times over a million inserts. Records are ~72 bytes with their
        // length; counting 96 errs towards too little (one growth at the
        // end), never towards tables far larger than the records need.
        let expected = bytes.len() / 96 / SHARDS;
        for shard in self.shards.iter() {
            match shard.write() {
                Ok(mut g) => g.reserve(expected),
                Err(p) => p.into_inner().reserve(expected),
            }
        }
        let mut seen = 0u64;
        loop {
            let Some((len, after)) = rest.split_first_chunk::<4>() else {
                return false;
            };
            let len = u32::from_le_bytes(*len) as usize;
            if len == 0 {
                let count = after.first_chunk::<8>().map(|c| u64::from_le_bytes(*c));
                return count == Some(seen) && after.len() == 8;
            }
            if len > MAX_RECORD_BYTES || after.len() < len {
                return false;
            }
            let (blob, next) = after.split_at(len);
            rest = next;
            let Ok(view) = View::new(blob) else {
                return false;
            };
            seen += 1;
            let id = view.id();
            // Usually every address is still live (a restart takes
            // seconds): the checked bytes are the record as they are,
            // without decoding and encoding each address again.
            let as_stored = view.count() > 0
                && view.count() <= record::MAX_ADDRESSES
                && view.expiries().all(|e| e > now_s);
            let entry = if as_stored {
                Entry(blob.into())
            } else {
                let live: Vec<_> = view.addrs().filter(|a| a.expires > now_s).collect();
                if live.is_empty() && view.seen_ns() < forget_before {
                    loaded.dropped_expired += 1;
                    continue;
                }
                Entry(record::encode(&id, view.seen_ns(), &live))
            };
            let mut shard = match self.shard(&id).write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let len = entry.0.len();
            if let Some(old) = shard.replace(entry) {
                self.removed(old.0.len());
            }
            self.added(len);
            loaded.records += 1;
        }
    }
}

fn clamp_secs(s: i64) -> u32 {
    u32::try_from(s.max(0)).unwrap_or(u32::MAX)
}

impl Store for MemoryStore {
    async fn announce(
        &self,
        id: DeviceId,
        addresses: Vec<String>,
        now: Now,
    ) -> Result<Announced, StoreError> {
        Ok(self.announce_sync(id, &addresses, now))
    }

    async fn lookup(&self, id: DeviceId, now: Now) -> Result<Lookup, StoreError> {
        Ok(self.lookup_sync(&id, now))
    }

    async fn healthy(&self) -> bool {
        true
    }

    fn current_devices(&self) -> Option<u64> {
        None
    }

    fn knows(&self, id: &DeviceId) -> Option<bool> {
        Some(self.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    fn id(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 32])
    }

    #[test]
    fn announce_lookup_merge_expire() {
        let s = MemoryStore::new(None);
        let t0 = Now(1_800_000_000 * SEC);
        assert_eq!(
            s.lookup_sync(&id(1), t0),
            Lookup::NotFound { seen_before: false }
        );
        s.announce_sync(id(1), &["tcp://192.0.2.1:1".into()], t0);
        let t1 = Now(t0.0 + 3600 * SEC);
        s.announce_sync(id(1), &["tcp://192.0.2.2:1".into()], t1);
        match s.lookup_sync(&id(1), t1) {
            Lookup::Found(f) => {
                assert_eq!(f.seen_unix_ns, t1.0);
                assert_eq!(f.addresses, ["tcp://192.0.2.1:1", "tcp://192.0.2.2:1"]);
            }
            other => panic!("{other:?}"),
        }
        // The first address expires 2 h after t0, the second 2 h after t1.
        let t2 = Now(t0.0 + 7201 * SEC);
        match s.lookup_sync(&id(1), t2) {
            Lookup::Found(f) => assert_eq!(f.addresses, ["tcp://192.0.2.2:1"]),
            other => panic!("{other:?}"),
        }
        let t3 = Now(t1.0 + 7201 * SEC);
        assert_eq!(
            s.lookup_sync(&id(1), t3),
            Lookup::NotFound { seen_before: true }
        );
        assert_eq!(s.expire(t3), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.expire(Now(t1.0 + FORGET_AFTER_SECS * SEC + SEC)), 0);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn snapshot_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let s = MemoryStore::new(Some(dir.path().to_path_buf()));
        let t0 = Now(1_800_000_000 * SEC);
        for n in 0..200u8 {
            s.announce_sync(
                id(n),
                &[format!("tcp://192.0.2.{n}:22000"), "tcp://h:1".into()],
                t0,
            );
        }
        assert_eq!(s.write_snapshot(false).unwrap(), Some(200));
        assert_eq!(s.write_snapshot(false).unwrap(), None, "nothing changed");

        let s2 = MemoryStore::new(Some(dir.path().to_path_buf()));
        let loaded = s2.load_snapshot(t0).unwrap();
        assert_eq!(loaded.records, 200);
        assert!(loaded.damaged_moved_to.is_none());
        assert_eq!(s2.lookup_sync(&id(7), t0), s.lookup_sync(&id(7), t0));
        // Records whose addresses are all live are taken as stored: the
        // same bytes that decoding and encoding them again gives.
        for shard in s2.shards.iter() {
            for e in shard.read().unwrap().iter() {
                let v = View::new(&e.0).unwrap();
                let again = record::encode(&v.id(), v.seen_ns(), &v.addrs().collect::<Vec<_>>());
                assert_eq!(e.0, again);
            }
        }
        // Later, with the first address of some records expired: those are
        // re-encoded without it.
        s.announce_sync(
            id(1),
            &["tcp://192.0.2.99:1".into()],
            Now(t0.0 + 3600 * SEC),
        );
        s.write_snapshot(true).unwrap();
        let later = Now(t0.0 + 7201 * SEC);
        let s4 = MemoryStore::new(Some(dir.path().to_path_buf()));
        assert_eq!(s4.load_snapshot(later).unwrap().records, 200);
        match s4.lookup_sync(&id(1), later) {
            Lookup::Found(f) => assert_eq!(f.addresses, ["tcp://192.0.2.99:1"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s4.lookup_sync(&id(2), later),
            Lookup::NotFound { seen_before: true }
        );

        // Truncated: moved aside, the readable part kept.
        let path = s.snapshot_path().unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let s3 = MemoryStore::new(Some(dir.path().to_path_buf()));
        let loaded = s3.load_snapshot(t0).unwrap();
        assert!(loaded.records > 50 && loaded.records < 200);
        assert!(loaded.damaged_moved_to.unwrap().exists());
        assert!(!path.exists());
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    /// Issue 14, H3: fresh device IDs could fill memory without bound.
    #[test]
    fn new_devices_are_refused_past_the_budget_known_ones_still_update() {
        let s = MemoryStore::new(None).with_budget(Budget {
            max_records: 3,
            max_bytes: u64::MAX,
        });
        let now = Now(1_800_000_000 * 1_000_000_000);
        let addrs = vec!["tcp://192.0.2.1:22000".to_string()];
        for n in 0..3u8 {
            let id = DeviceId::from_bytes([n; 32]);
            assert_eq!(s.announce_sync(id, &addrs, now), Announced::Stored);
        }
        let late = DeviceId::from_bytes([9; 32]);
        assert_eq!(s.announce_sync(late, &addrs, now), Announced::Full);
        assert!(!s.contains(&late));
        let more = vec!["tcp://192.0.2.2:22000".to_string()];
        let known = DeviceId::from_bytes([1; 32]);
        assert_eq!(s.announce_sync(known, &more, now), Announced::Stored);
        assert_eq!(s.usage().0, 3);

        // Bytes too; and expiry gives the room back.
        let s = MemoryStore::new(None).with_budget(Budget {
            max_records: u64::MAX,
            max_bytes: 1000,
        });
        let mut stored = 0;
        for n in 0..100u8 {
            if s.announce_sync(DeviceId::from_bytes([n; 32]), &addrs, now) == Announced::Stored {
                stored += 1;
            }
        }
        let (records, bytes) = s.usage();
        assert_eq!(records, stored);
        assert!(
            stored < 100 && bytes < 1000 + cost(200),
            "{stored} records, {bytes} bytes"
        );
        let later = Now(now.0 + (FORGET_AFTER_SECS + 3 * 3600) * 1_000_000_000);
        s.expire(later);
        assert_eq!(s.usage(), (0, 0));
        assert_eq!(s.announce_sync(late, &addrs, later), Announced::Stored);
    }
}
