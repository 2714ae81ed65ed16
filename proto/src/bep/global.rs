//! Which copy of a file is the global one, whether a local copy must step
//! aside as a conflict copy, and the names of temporary and conflict files
//! (Syncthing 2.x rules where they differ from 1.19.2's; see the BEP
//! reference §7.5, §8 and ARCHITECTURE.md, "Conflicts").

use sha2::{Digest, Sha256};

use super::names::TEMP_PREFIX_UNIX;
use super::vector::{compare, Ordering};
use super::wire::FileInfo;

/// Whether `a` should be preferred over `b` as the global version of a
/// name. Valid beats invalid; newer vectors win; for concurrent ones the
/// newer mtime, then the vector that compares `ConcurrentGreater`.
///
/// A deletion is an ordinary version here, as in 2.x (its mtime is when
/// it was seen gone). 1.19.2 let any modification beat a concurrent
/// deletion; a mixed cluster can therefore disagree on such a name (see
/// ARCHITECTURE.md, "Conflicts").
pub fn wins_over(a: &FileInfo, b: &FileInfo) -> bool {
    let va = a.version.clone().unwrap_or_default();
    let vb = b.version.clone().unwrap_or_default();
    // An invalid entry never beats a valid one, whatever its version.
    if a.invalid != b.invalid {
        return !a.invalid;
    }
    match compare(&va, &vb) {
        Ordering::Greater => true,
        Ordering::Lesser | Ordering::Equal => false,
        o => {
            let ta = (a.modified_s, a.modified_ns);
            let tb = (b.modified_s, b.modified_ns);
            if ta != tb {
                return ta > tb;
            }
            o == Ordering::ConcurrentGreater
        }
    }
}

/// Whether our local copy has what `global` announces: same or newer
/// version.
pub fn have(local: &FileInfo, global: &FileInfo) -> bool {
    let vl = local.version.clone().unwrap_or_default();
    let vg = global.version.clone().unwrap_or_default();
    matches!(compare(&vl, &vg), Ordering::Equal | Ordering::Greater)
}

/// Whether replacing `local` by `incoming` would lose a change of ours, so
/// `local` must be kept as a conflict copy (2.x's rule): not when
/// `incoming` is newer than or equal to `local`; otherwise, when
/// `incoming` says which content it replaced (`previous_blocks_hash`) and
/// that is `local`'s content, it is a plain update of what we have (the
/// vectors only look concurrent, e.g. a device that lost its index);
/// anything else is a conflict, including a deletion or a type change
/// (no `blocks_hash`) and a 1.x change (no `previous_blocks_hash`).
pub fn is_conflict(local: &FileInfo, incoming: &FileInfo) -> bool {
    let vl = local.version.clone().unwrap_or_default();
    let vi = incoming.version.clone().unwrap_or_default();
    if matches!(compare(&vi, &vl), Ordering::Greater | Ordering::Equal) {
        return false;
    }
    if incoming.previous_blocks_hash.is_empty() || incoming.blocks_hash.is_empty() {
        return true;
    }
    incoming.previous_blocks_hash != local.blocks_hash
}

/// Longest basename kept verbatim in a temp name (160 − prefix − ".tmp"
/// = 145 in 1.19.2's lib/fs/tempname.go).
const MAX_TEMP_BASE: usize = 160 - TEMP_PREFIX_UNIX.len() - 4;

/// Temp name (basename only) for a file's basename: `.syncthing.<base>.tmp`,
/// or the SHA-256 hex of a long basename.
pub fn temp_basename(base: &str) -> String {
    if base.len() > MAX_TEMP_BASE {
        let hex: String = Sha256::digest(base.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{TEMP_PREFIX_UNIX}{hex}.tmp")
    } else {
        format!("{TEMP_PREFIX_UNIX}{base}.tmp")
    }
}

/// Conflict-copy name: `<stem>.sync-conflict-<stamp>-<shortid><ext>`, where
/// `stamp` is `YYYYMMDD-HHMMSS` local time and `ext` the final extension
/// of the basename (with its dot, possibly empty).
pub fn conflict_name(name: &str, stamp: &str, short_id: &str) -> String {
    let (dir, base) = match name.rfind('/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    let (stem, ext) = match base.rfind('.') {
        Some(i) if i > 0 => (&base[..i], &base[i..]),
        _ => (base, ""),
    };
    format!("{dir}{stem}.sync-conflict-{stamp}-{short_id}{ext}")
}

/// Whether `candidate` (a basename) is a conflict copy of the file named
/// `base` (a basename), for keeping at most `maxConflicts` of them: the
/// stem, `.sync-conflict-`, a `YYYYMMDD-HHMMSS` stamp, then `-` and a part
/// without dots (the short device ID, perhaps after a counter), then the
/// extension. The stem and extension are split as [`conflict_name`] splits
/// them.
///
/// Syncthing globs `stem.sync-conflict-????????-??????*ext`, whose `*`
/// also lets the copies of `a.txt` pass for copies of `a`: pruning `a`'s
/// copies would then delete another file's. The part between stamp and
/// extension is therefore held to what conflict names actually contain.
pub fn is_conflict_copy_of(base: &str, candidate: &str) -> bool {
    let (stem, ext) = match base.rfind('.') {
        Some(i) if i > 0 => (&base[..i], &base[i..]),
        _ => (base, ""),
    };
    let Some(rest) = candidate
        .strip_prefix(stem)
        .and_then(|r| r.strip_prefix(".sync-conflict-"))
        .and_then(|r| r.strip_suffix(ext))
    else {
        return false;
    };
    let b = rest.as_bytes();
    let stamp_ok = b.len() > 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-';
    stamp_ok && !rest[16..].contains(['.', '/'])
}

/// Whether a name is a conflict copy (its basename holds the marker, as
/// 1.19.2 tests it).
pub fn is_conflict_copy(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.contains(".sync-conflict-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bep::wire::{Counter, Vector};

    #[test]
    fn conflict_copies_of_a_name_are_found_as_syncthing_globs_them() {
        let made = conflict_name("a.txt", "20260102-030405", "ABCDEFG");
        assert!(is_conflict_copy_of("a.txt", &made));
        assert!(is_conflict_copy_of(
            "a.txt",
            "a.sync-conflict-20260102-030405-1-ABCDEFG.txt"
        ));
        assert!(is_conflict_copy_of(
            "a",
            "a.sync-conflict-20260102-030405-X"
        ));
        for other in [
            "a.txt",
            "b.sync-conflict-20260102-030405-ABCDEFG.txt",
            "a.sync-conflict-20260102-030405-ABCDEFG.doc",
            "a.sync-conflict-2026010-030405-ABCDEFG.txt",
            "a.sync-conflict-20260102_030405-ABCDEFG.txt",
            "a.sync-conflict-20260102-03040.txt",
            "ab.sync-conflict-20260102-030405-ABCDEFG.txt",
        ] {
            assert!(!is_conflict_copy_of("a.txt", other), "{other}");
        }
        // Another file's copies never pass for these: `a.txt`'s are not
        // `a`'s, nor `a.tar.gz`'s `a.tar`'s.
        assert!(!is_conflict_copy_of("a", &made));
        let gz = conflict_name("a.tar.gz", "20260102-030405", "ABCDEFG");
        assert!(is_conflict_copy_of("a.tar.gz", &gz));
        assert!(!is_conflict_copy_of("a.tar", &gz));
        assert!(!is_conflict_copy_of("a", &gz));
    }

    fn fi(counters: &[(u64, u64)], deleted: bool, mtime: i64) -> FileInfo {
        FileInfo {
            name: "a".into(),
            deleted,
            modified_s: mtime,
            version: Some(Vector {
                counters: counters
                    .iter()
                    .map(|&(id, value)| Counter { id, value })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn global_choice_follows_2_x() {
        assert!(wins_over(
            &fi(&[(1, 2)], false, 0),
            &fi(&[(1, 1)], false, 9)
        ));
        assert!(!wins_over(
            &fi(&[(1, 1)], false, 9),
            &fi(&[(1, 2)], false, 0)
        ));
        // Concurrent: a deletion is an ordinary version; the newer one
        // wins (1.19.2 preferred the modification whatever the times).
        let edit = fi(&[(1, 2)], false, 1);
        let del = fi(&[(2, 2)], true, 5);
        assert!(wins_over(&del, &edit) && !wins_over(&edit, &del));
        let late_edit = fi(&[(1, 2)], false, 6);
        assert!(wins_over(&late_edit, &del) && !wins_over(&del, &late_edit));
        // Concurrent: newer mtime, then ConcurrentGreater.
        assert!(wins_over(
            &fi(&[(2, 1)], false, 5),
            &fi(&[(1, 1)], false, 4)
        ));
        let a = fi(&[(1, 2), (2, 1)], false, 3);
        let b = fi(&[(1, 1), (2, 2)], false, 3);
        assert!(wins_over(&a, &b) && !wins_over(&b, &a));
        let mut inv = fi(&[(1, 9)], false, 9);
        inv.invalid = true;
        assert!(!wins_over(&inv, &fi(&[(1, 1)], false, 0)));
    }

    #[test]
    fn conflicts_and_names() {
        let mut local = fi(&[(1, 5)], false, 0);
        local.blocks_hash = vec![7; 32];
        // Newer or equal: an update.
        assert!(!is_conflict(&local, &fi(&[(1, 5), (2, 1)], false, 0)));
        assert!(!is_conflict(&local, &fi(&[(1, 6)], false, 0)));
        assert!(!is_conflict(&local, &local.clone()));
        // Concurrent without previous_blocks_hash (1.x): a conflict.
        let mut other = fi(&[(2, 1)], false, 0);
        other.blocks_hash = vec![8; 32];
        assert!(is_conflict(&local, &other));
        // Concurrent but made from the content we hold: an update.
        other.previous_blocks_hash = local.blocks_hash.clone();
        assert!(!is_conflict(&local, &other));
        // ... from other content: a conflict.
        other.previous_blocks_hash = vec![9; 32];
        assert!(is_conflict(&local, &other));
        // A concurrent deletion has no blocks_hash: a conflict.
        let mut del = fi(&[(2, 1)], true, 0);
        del.previous_blocks_hash = local.blocks_hash.clone();
        assert!(is_conflict(&local, &del));
        assert_eq!(
            conflict_name("d/hello.txt", "20261122-141013", "YI3UNUN"),
            "d/hello.sync-conflict-20261122-141013-YI3UNUN.txt"
        );
        assert_eq!(
            conflict_name(".bashrc", "20261122-141013", "ABCDEFG"),
            ".bashrc.sync-conflict-20261122-141013-ABCDEFG"
        );
        assert_eq!(temp_basename("a b.txt"), ".syncthing.a b.txt.tmp");
        // 1.19.2: basenames above 160 - 11 - 4 = 145 bytes are hashed.
        let long = "x".repeat(146);
        assert_eq!(temp_basename(&long).len(), ".syncthing.".len() + 64 + 4);
        assert_eq!(temp_basename(&"x".repeat(145)).len(), 145 + 15);
    }
}
