//! What connected devices tell us they are downloading (BEP
//! `DownloadProgress`, sent by 1.x and 2.x alike to peers that did not
//! disable temporary indexes): per device, folder and file, the blocks of
//! which version they already hold in their temporary file. Syncthing
//! shows it in the `RemoteDownloadProgress` event (block counts per file)
//! and subtracts it from the device's `needBytes` in `/rest/db/completion`;
//! so do we.
//!
//! A peer decides how much it announces, so what we keep is bounded per
//! connection ([`MAX_FILES`] files, [`MAX_BLOCKS`] block indexes); updates
//! past the bound are dropped (counted, logged once per connection). All
//! of a connection's state goes when it ends.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::bep::wire::{DownloadProgress, FileDownloadProgressUpdateType, Vector};
use proto::DeviceId;

/// Files in progress kept per connection (over all its folders).
pub const MAX_FILES: usize = 10_000;
/// Block indexes kept per connection: 4 bytes each, so 4 MB at most.
pub const MAX_BLOCKS: usize = 1_000_000;
/// The block size assumed when a (pre-1.4.1) peer sends none, as Syncthing.
const FALLBACK_BLOCK_SIZE: u64 = 128 << 10;

#[derive(Debug, Clone, PartialEq)]
struct FileState {
    version: Vector,
    blocks: Vec<i32>,
    block_size: i32,
}

/// One connection's announcements.
#[derive(Debug, Default)]
struct DeviceState {
    /// The connection that sent them (a newer one replaces them).
    serial: u64,
    folders: HashMap<String, HashMap<String, FileState>>,
    files: usize,
    blocks: usize,
    dropped: u64,
}

/// What applying one DownloadProgress did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// Updates dropped for the bounds (the first for this connection is
    /// worth a log line).
    pub dropped: usize,
    pub first_drop: bool,
}

/// Every connected device's download progress.
#[derive(Debug, Default)]
pub struct RemoteDownloads {
    devices: Mutex<HashMap<DeviceId, DeviceState>>,
}

impl RemoteDownloads {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, DeviceState>> {
        // The state is plain data, valid after any panic elsewhere.
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `p` from `device`'s connection `serial`, as Syncthing does:
    /// APPEND adds block indexes to a file's version (a different version
    /// starts over), FORGET drops a file when the version matches.
    pub fn apply(&self, device: DeviceId, serial: u64, p: &DownloadProgress) -> Applied {
        let mut all = self.locked();
        let st = all.entry(device).or_default();
        if st.serial != serial {
            *st = DeviceState {
                serial,
                ..DeviceState::default()
            };
        }
        let mut applied = Applied::default();
        let folder = st.folders.entry(p.folder.clone()).or_default();
        for u in &p.updates {
            let version = u.version.clone().unwrap_or_default();
            if u.update_type == FileDownloadProgressUpdateType::Forget as i32 {
                if folder.get(&u.name).is_some_and(|f| f.version == version) {
                    if let Some(f) = folder.remove(&u.name) {
                        st.files -= 1;
                        st.blocks -= f.blocks.len();
                    }
                }
                continue;
            }
            if u.update_type != FileDownloadProgressUpdateType::Append as i32 {
                continue; // unknown kind: nothing to keep
            }
            let existing = folder.get(&u.name).map(|f| f.version == version);
            let (new_file, kept) = match existing {
                None => (true, 0),
                Some(true) => (false, folder[&u.name].blocks.len()),
                Some(false) => (false, 0),
            };
            let released = match existing {
                Some(false) => folder[&u.name].blocks.len(),
                _ => 0,
            };
            let blocks_after = st.blocks - released + u.block_indexes.len();
            if (new_file && st.files >= MAX_FILES) || blocks_after > MAX_BLOCKS {
                applied.dropped += 1;
                continue;
            }
            let entry = folder.entry(u.name.clone()).or_insert_with(|| FileState {
                version: version.clone(),
                blocks: Vec::new(),
                block_size: u.block_size,
            });
            if kept == 0 {
                entry.blocks.clear();
            }
            entry.version = version;
            entry.block_size = u.block_size;
            entry.blocks.extend_from_slice(&u.block_indexes);
            st.blocks = blocks_after;
            if new_file {
                st.files += 1;
            }
        }
        if folder.is_empty() {
            st.folders.remove(&p.folder);
        }
        if applied.dropped > 0 {
            applied.first_drop = st.dropped == 0;
            st.dropped += applied.dropped as u64;
        }
        applied
    }

    /// A received index announces `names` in these versions: the device
    /// finished (or gave up) those downloads, as 2.x reads it.
    pub fn finished<'a>(
        &self,
        device: &DeviceId,
        folder: &str,
        files: impl IntoIterator<Item = (&'a str, &'a Vector)>,
    ) {
        let mut all = self.locked();
        let Some(st) = all.get_mut(device) else {
            return;
        };
        let Some(f) = st.folders.get_mut(folder) else {
            return;
        };
        for (name, version) in files {
            if f.get(name).is_some_and(|s| s.version == *version) {
                if let Some(s) = f.remove(name) {
                    st.files -= 1;
                    st.blocks -= s.blocks.len();
                }
            }
        }
    }

    /// The connection `serial` of `device` ended: its announcements go.
    pub fn forget(&self, device: &DeviceId, serial: u64) {
        let mut all = self.locked();
        if all.get(device).is_some_and(|s| s.serial == serial) {
            all.remove(device);
        }
    }

    /// Blocks held per file of `folder` (the `state` of the
    /// `RemoteDownloadProgress` event).
    pub fn block_counts(&self, device: &DeviceId, folder: &str) -> HashMap<String, usize> {
        let all = self.locked();
        all.get(device)
            .and_then(|s| s.folders.get(folder))
            .map(|f| f.iter().map(|(n, s)| (n.clone(), s.blocks.len())).collect())
            .unwrap_or_default()
    }

    /// Bytes `device` already holds of what it needs in `folder`.
    pub fn bytes(&self, device: &DeviceId, folder: &str) -> u64 {
        let all = self.locked();
        all.get(device)
            .and_then(|s| s.folders.get(folder))
            .map_or(0, |f| {
                f.values()
                    .map(|s| {
                        let bs = u64::try_from(s.block_size)
                            .ok()
                            .filter(|b| *b > 0)
                            .unwrap_or(FALLBACK_BLOCK_SIZE);
                        s.blocks.len() as u64 * bs
                    })
                    .sum()
            })
    }

    /// Files and block indexes kept for `device` (for tests and figures).
    pub fn held(&self, device: &DeviceId) -> (usize, usize) {
        self.locked()
            .get(device)
            .map_or((0, 0), |s| (s.files, s.blocks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::bep::wire::{Counter, FileDownloadProgressUpdate};

    fn v(n: u64) -> Vector {
        Vector {
            counters: vec![Counter { id: 1, value: n }],
        }
    }

    fn append(name: &str, version: u64, blocks: &[i32]) -> FileDownloadProgressUpdate {
        FileDownloadProgressUpdate {
            update_type: FileDownloadProgressUpdateType::Append as i32,
            name: name.into(),
            version: Some(v(version)),
            block_indexes: blocks.to_vec(),
            block_size: 1 << 20,
        }
    }

    fn progress(updates: Vec<FileDownloadProgressUpdate>) -> DownloadProgress {
        DownloadProgress {
            folder: "f".into(),
            updates,
        }
    }

    #[test]
    fn appends_forgets_and_follows_versions() {
        let d = RemoteDownloads::default();
        let dev = DeviceId::from_der_cert(b"peer");
        d.apply(dev, 1, &progress(vec![append("a", 1, &[0, 1])]));
        d.apply(dev, 1, &progress(vec![append("a", 1, &[2])]));
        assert_eq!(d.block_counts(&dev, "f")["a"], 3);
        assert_eq!(d.bytes(&dev, "f"), 3 << 20);
        // A new version starts over.
        d.apply(dev, 1, &progress(vec![append("a", 2, &[5])]));
        assert_eq!(d.block_counts(&dev, "f")["a"], 1);
        assert_eq!(d.held(&dev), (1, 1));
        // FORGET of another version does nothing; of this one drops it.
        let mut forget = append("a", 1, &[]);
        forget.update_type = FileDownloadProgressUpdateType::Forget as i32;
        d.apply(dev, 1, &progress(vec![forget.clone()]));
        assert_eq!(d.held(&dev), (1, 1));
        forget.version = Some(v(2));
        d.apply(dev, 1, &progress(vec![forget]));
        assert_eq!(d.held(&dev), (0, 0));
        // An index announcing the file finishes it too.
        d.apply(dev, 1, &progress(vec![append("b", 3, &[0])]));
        d.finished(&dev, "f", [("b", &v(3))]);
        assert_eq!(d.held(&dev), (0, 0));
    }

    #[test]
    fn bounded_per_connection_and_dropped_with_it() {
        let d = RemoteDownloads::default();
        let dev = DeviceId::from_der_cert(b"peer");
        let many: Vec<_> = (0..MAX_FILES + 10)
            .map(|i| append(&format!("f{i}"), 1, &[0]))
            .collect();
        let applied = d.apply(dev, 7, &progress(many));
        assert_eq!(applied.dropped, 10);
        assert!(applied.first_drop);
        assert_eq!(d.held(&dev), (MAX_FILES, MAX_FILES));
        // Too many block indexes for one file: refused whole.
        let huge = vec![0; MAX_BLOCKS];
        let again = d.apply(dev, 7, &progress(vec![append("f0", 1, &huge)]));
        assert_eq!(again.dropped, 1);
        assert!(!again.first_drop);
        assert_eq!(d.held(&dev), (MAX_FILES, MAX_FILES));
        // An older connection's end leaves a newer one's state alone.
        d.forget(&dev, 6);
        assert_eq!(d.held(&dev).0, MAX_FILES);
        d.forget(&dev, 7);
        assert_eq!(d.held(&dev), (0, 0));
        assert_eq!(d.bytes(&dev, "f"), 0);
    }
}
