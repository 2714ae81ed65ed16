//! The global state of a folder: for every name, the global version among
//! our entry and what each remote device announced; what we need to pull;
//! how complete a device is; and the counts `/rest/db/status` reports.
//! Pure functions of one name's entries ([`Entry`]), fed by the database's
//! stream, so nothing here holds more than one name at a time.

use proto::bep::global::{have, wins_over};
use proto::bep::vector::{compare, Ordering};
use proto::bep::wire::{FileInfo, FileInfoType};
use proto::DeviceId;

pub use crate::db::figures::{Completion, Totals};
use crate::db::Entry;

/// One name we lack in its global version.
#[derive(Debug, Clone)]
pub struct Needed {
    /// The global entry (a summary until loaded in full for pulling).
    pub global: FileInfo,
    /// The device whose entry is the global one.
    pub from: DeviceId,
    /// Our entry for the name, if any (a summary until loaded in full).
    pub local: Option<FileInfo>,
    /// Devices announcing exactly the global version (valid, not deleted).
    pub sources: Vec<DeviceId>,
}

fn is_dir(f: &FileInfo) -> bool {
    f.r#type == FileInfoType::Directory as i32
}

fn is_file(f: &FileInfo) -> bool {
    f.r#type == FileInfoType::File as i32
}

/// The global entry of a name and who announces it (`None`: we do). Like
/// 1.19.2, an invalid entry or one without a version is never global
/// enough to be needed or counted: `None` then too.
pub fn global(entry: &Entry) -> Option<(Option<DeviceId>, &FileInfo)> {
    let mut best: Option<(Option<DeviceId>, &FileInfo)> = entry.local.as_ref().map(|l| (None, l));
    for (d, r) in &entry.remotes {
        if best.is_none_or(|(_, g)| wins_over(r, g)) {
            best = Some((Some(*d), r));
        }
    }
    let (who, g) = best?;
    let unversioned = g.version.as_ref().is_none_or(|v| v.counters.is_empty());
    if g.invalid || unversioned {
        return None;
    }
    Some((who, g))
}

/// Adds one name to the totals; returns what we must do for it, if
/// anything.
pub fn evaluate(entry: Entry, t: &mut Totals) -> Option<Needed> {
    let (from, global) = global(&entry)?;
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
    let local = entry.local.as_ref();
    let needed = match local {
        None => !global.deleted,
        Some(l) => !have(l, global),
    };
    // `from` is None only when our entry is the global one: never needed.
    let (true, Some(from)) = (needed, from) else {
        return None;
    };
    let local_live = local.is_some_and(|l| !l.deleted);
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
    let sources = sources(&entry, global);
    let global = global.clone();
    Some(Needed {
        global,
        from,
        local: entry.local,
        sources,
    })
}

/// The devices announcing exactly `global`'s version, valid and present
/// (where its blocks can be requested).
pub fn sources(entry: &Entry, global: &FileInfo) -> Vec<DeviceId> {
    let gv = global.version.clone().unwrap_or_default();
    entry
        .remotes
        .iter()
        .filter(|(_, r)| {
            !r.invalid
                && !r.deleted
                && compare(&r.version.clone().unwrap_or_default(), &gv) == Ordering::Equal
        })
        .map(|(d, _)| *d)
        .collect()
}

/// Adds one name to the completion of `device` (`None`: ours).
pub fn add_completion(entry: &Entry, device: Option<&DeviceId>, c: &mut Completion) {
    let Some((_, global)) = global(entry) else {
        return;
    };
    let theirs = match device {
        None => entry.local.as_ref(),
        Some(d) => entry.remotes.iter().find(|(r, _)| r == d).map(|(_, f)| f),
    };
    // An invalid entry (ignored, receive-only change) does not have it.
    let has = theirs.is_some_and(|f| !f.invalid && have(f, global));
    if global.deleted {
        if theirs.is_some_and(|f| !f.deleted) && !has {
            c.need_deletes += 1;
        }
        return;
    }
    let size = if is_file(global) {
        global.size.max(0) as u64
    } else {
        0
    };
    c.global_items += 1;
    c.global_bytes += size;
    if !has {
        c.need_items += 1;
        c.need_bytes += size;
    }
}

/// Every name's need, in the order given (tests and small folders).
#[cfg(test)]
pub fn compute(entries: impl IntoIterator<Item = Entry>) -> (Vec<Needed>, Totals) {
    let mut t = Totals::default();
    let need = entries
        .into_iter()
        .filter_map(|e| evaluate(e, &mut t))
        .collect();
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
        let mut by_name: std::collections::BTreeMap<String, Entry> = Default::default();
        for f in local {
            let e = by_name.entry(f.name.clone()).or_default();
            e.name = f.name.clone();
            e.local = Some(f);
        }
        for (d, f) in remote {
            let e = by_name.entry(f.name.clone()).or_default();
            e.name = f.name.clone();
            e.remotes.push((d, f));
        }
        let (need, t) = compute(by_name.into_values());
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
