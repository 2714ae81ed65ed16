//! The global state of a folder: for every name, the global version among
//! our entry and what each remote device announced; what we need to pull;
//! and the counts `/rest/db/status` reports.

use std::collections::BTreeMap;

use proto::bep::global::{have, wins_over};
use proto::bep::vector::{compare, Ordering};
use proto::bep::wire::{FileInfo, FileInfoType};
use proto::DeviceId;

/// One name we lack in its global version.
#[derive(Debug, Clone)]
pub struct Needed {
    pub global: FileInfo,
    /// Our entry for the name, if any.
    pub local: Option<FileInfo>,
    /// Devices announcing exactly the global version (valid, not deleted).
    pub sources: Vec<DeviceId>,
}

/// Counts of the global state and of what we need.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub global_files: u64,
    pub global_dirs: u64,
    pub global_symlinks: u64,
    pub global_deleted: u64,
    pub global_bytes: u64,
    pub need_files: u64,
    pub need_dirs: u64,
    pub need_symlinks: u64,
    pub need_deletes: u64,
    pub need_bytes: u64,
}

impl Totals {
    pub fn need_items(&self) -> u64 {
        self.need_files + self.need_dirs + self.need_symlinks + self.need_deletes
    }
}

fn is_dir(f: &FileInfo) -> bool {
    f.r#type == FileInfoType::Directory as i32
}

fn is_file(f: &FileInfo) -> bool {
    f.r#type == FileInfoType::File as i32
}

/// Computes the global state from our entries and the remote ones.
pub fn compute(local: Vec<FileInfo>, remote: Vec<(DeviceId, FileInfo)>) -> (Vec<Needed>, Totals) {
    type Entry = (Option<FileInfo>, Vec<(DeviceId, FileInfo)>);
    let mut by_name: BTreeMap<String, Entry> = BTreeMap::new();
    for f in local {
        let name = f.name.clone();
        by_name.entry(name).or_default().0 = Some(f);
    }
    for (d, f) in remote {
        let name = f.name.clone();
        by_name.entry(name).or_default().1.push((d, f));
    }
    let mut need = Vec::new();
    let mut t = Totals::default();
    for (_, (local, remotes)) in by_name {
        let mut global: Option<&FileInfo> = local.as_ref();
        for (_, r) in &remotes {
            if global.is_none_or(|g| wins_over(r, g)) {
                global = Some(r);
            }
        }
        let Some(global) = global else { continue };
        // Like 1.19.2: an invalid entry or one without a version is never
        // needed (nor counted).
        let unversioned = global
            .version
            .as_ref()
            .is_none_or(|v| v.counters.is_empty());
        if global.invalid || unversioned {
            continue;
        }
        if global.deleted {
            t.global_deleted += 1;
        } else if is_dir(global) {
            t.global_dirs += 1;
        } else if is_file(global) {
            t.global_files += 1;
            t.global_bytes += global.size.max(0) as u64;
        } else {
            t.global_symlinks += 1;
        }
        let needed = match &local {
            None => !global.deleted,
            Some(l) => !have(l, global),
        };
        if !needed {
            continue;
        }
        let local_live = local.as_ref().is_some_and(|l| !l.deleted);
        if global.deleted {
            if local_live {
                t.need_deletes += 1;
            }
        } else if is_dir(global) {
            t.need_dirs += 1;
        } else if is_file(global) {
            t.need_files += 1;
            t.need_bytes += global.size.max(0) as u64;
        } else {
            t.need_symlinks += 1;
        }
        let gv = global.version.clone().unwrap_or_default();
        let sources = remotes
            .iter()
            .filter(|(_, r)| {
                !r.invalid
                    && !r.deleted
                    && compare(&r.version.clone().unwrap_or_default(), &gv) == Ordering::Equal
            })
            .map(|(d, _)| *d)
            .collect();
        need.push(Needed {
            global: global.clone(),
            local: local.clone(),
            sources,
        });
    }
    (need, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::bep::wire::{Counter, Vector};

    fn fi(name: &str, id: u64, v: u64, deleted: bool, size: i64) -> FileInfo {
        FileInfo {
            name: name.into(),
            size,
            deleted,
            version: Some(Vector {
                counters: vec![Counter { id, value: v }],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn need_follows_global_versions() {
        let (a, b) = (DeviceId::from_der_cert(b"a"), DeviceId::from_der_cert(b"b"));
        let local = vec![
            fi("same", 1, 1, false, 10),
            fi("old", 1, 1, false, 10),
            fi("gone", 1, 1, false, 10),
            fi("mine", 1, 5, false, 7),
        ];
        let remote = vec![
            (a, fi("same", 1, 1, false, 10)),
            (a, fi("old", 1, 2, false, 20)),
            (b, fi("old", 1, 2, false, 20)),
            (a, fi("gone", 1, 2, true, 0)),
            (b, fi("new", 2, 1, false, 30)),
            (a, fi("deleted-only", 2, 1, true, 0)),
            (a, fi("mine", 1, 4, false, 7)),
        ];
        let (need, t) = compute(local, remote);
        let names: Vec<_> = need.iter().map(|n| n.global.name.as_str()).collect();
        assert_eq!(names, ["gone", "new", "old"]);
        assert_eq!(need[2].sources, vec![a, b]);
        assert!(need[0].sources.is_empty());
        assert_eq!((t.need_files, t.need_deletes, t.need_bytes), (2, 1, 50));
        assert_eq!(
            (t.global_files, t.global_bytes, t.global_deleted),
            (4, 67, 2)
        );
    }
}
