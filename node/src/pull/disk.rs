//! Safe filesystem steps of pulling: finding (and creating) the directory
//! that holds a name without ever passing through a symlink, checking that
//! what is on disk is still what our index says (so a local change is
//! never overwritten), temp files, conflict copies.
//!
//! Every step goes through a [`Dir`] (`dirfd.rs`): the directory holding a
//! name is opened from the folder root without crossing a symlink and held
//! open, and the name inside it is created, renamed, chmodded or removed
//! with `*at` calls relative to that descriptor, never by a path that a
//! local process could redirect between the check and the operation.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use proto::bep::names;
use proto::bep::wire::FileInfo;
use sha2::{Digest, Sha256};

use crate::config::{MaxConflicts, Perms};
use crate::db::{Change, Db};
use crate::dirfd::{self, Dir, Kind, Rename};
use crate::ignore::Ignores;
use crate::scan;

/// Marks a name whose disk state differs from our index: it changed
/// locally since the last scan, so it is rescanned, not overwritten.
#[derive(Debug)]
pub struct LocallyChanged;

impl std::fmt::Display for LocallyChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("changed locally since the last scan; rescanning instead of overwriting")
    }
}

impl std::error::Error for LocallyChanged {}

/// Checks a name from a peer before it touches the disk.
pub fn check_name(name: &str) -> Result<()> {
    names::validate(name)?;
    // Any case: on a case-insensitive filesystem `.STIGNORE` would
    // overwrite our `.stignore`.
    if names::is_internal(name) {
        bail!("internal name (.stfolder, .stignore, .stversions, in any case) not accepted from a peer");
    }
    if names::is_temporary_any_case(name) {
        bail!("temporary-file name not accepted from a peer");
    }
    if name.split('/').any(|c| c.len() > 255) {
        bail!("a path component is longer than 255 bytes");
    }
    Ok(())
}

pub fn basename(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The folder-relative directory of `name` (`""` at the top).
pub fn dirname(name: &str) -> &str {
    name.rfind('/').map_or("", |i| &name[..i])
}

/// The directory holding `name` below `root`, held open. Every component
/// on the way must be a real directory (a symlink or file there is
/// refused, also when it appears while we look); missing ones are created
/// when `create`, otherwise `None` is returned.
///
/// On a case-insensitive filesystem every component, the last one
/// included, must also exist in exactly the given case (1.19.2's case
/// check): "a/foo" never overwrites or lands in a local "A/Foo".
pub fn parent_dir(root: &Dir, name: &str, create: bool) -> Result<Option<Dir>> {
    let insensitive = case_insensitive(root);
    let parent = dirname(name);
    if !insensitive {
        // The common case in one call: the whole parent exists.
        match root.open_beneath(parent) {
            Ok(d) => return Ok(Some(d)),
            Err(e) if e.kind() == ErrorKind::NotFound && !create => return Ok(None),
            // Missing parts are created below; a symlink or file on the
            // way is named by the walk.
            Err(e) if e.kind() == ErrorKind::NotFound || dirfd::is_not_a_dir(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open the directory {parent:?}"))
            }
        }
    }
    let mut dir = root.try_clone().context("cannot open the folder")?;
    let mut done = 0;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        done += part.len() + 1;
        let shown = &name[..done - 1];
        if insensitive {
            check_case(&dir, part, shown)?;
        }
        dir = match dir.child(part) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                match dir.mkdir(part, 0o777) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e).with_context(|| format!("cannot create {shown:?}")),
                }
                dir.child(part).map_err(|e| refused(e, shown))?
            }
            Err(e) => return Err(refused(e, shown)),
        };
    }
    if insensitive {
        check_case(&dir, basename(name), name)?;
    }
    Ok(Some(dir))
}

/// A directory on the way to a name is a symlink or a file (one was put
/// there, or swapped in while we worked): nothing is written through it.
/// The puller counts these (`node_pull_refused_total`).
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a directory (a symlink or file); not writing through it")]
pub struct NotADirectory(String);

/// The error for a directory on the way that could not be opened.
fn refused(e: std::io::Error, shown: &str) -> anyhow::Error {
    if dirfd::is_not_a_dir(&e) {
        anyhow::Error::new(NotADirectory(shown.to_string()))
    } else {
        anyhow::Error::from(e).context(format!("cannot open the directory {shown:?}"))
    }
}

/// Whether the folder's filesystem folds case: the marker is found under
/// another case. (Then a lookup of "foo" may land on "Foo".)
fn case_insensitive(root: &Dir) -> bool {
    let upper = scan::MARKER.to_uppercase();
    root.exists(scan::MARKER)
        && root.exists(&upper)
        && root
            .entries()
            .is_ok_and(|mut entries| !entries.any(|(n, _)| n.to_str() == Some(&upper)))
}

/// A name that differs only in case from the local `base` in `dir`.
#[derive(Debug)]
pub struct CaseConflict {
    pub given: String,
    pub real: String,
}

impl std::fmt::Display for CaseConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "remote {:?} uses different upper or lowercase characters than local {:?}; change the casing on either side to match the other",
            self.given, self.real
        )
    }
}

impl std::error::Error for CaseConflict {}

/// The local entry of `dir` equal to `base` except for case, when there is
/// one and none spelled exactly `base`.
pub fn differently_cased(dir: &Dir, base: &str) -> Option<String> {
    let lower = base.to_lowercase();
    let mut found = None;
    for (n, _) in dir.entries().ok()? {
        let Some(n) = n.to_str() else { continue };
        if n == base {
            return None;
        }
        if found.is_none() && n.to_lowercase() == lower {
            found = Some(n.to_string());
        }
    }
    found
}

/// Fails when `dir/base` exists only under another case. `shown` is the
/// folder-relative name for the message.
fn check_case(dir: &Dir, base: &str, shown: &str) -> Result<()> {
    if !dir.exists(base) {
        return Ok(());
    }
    if let Some(real) = differently_cased(dir, base) {
        let real = match shown.rfind('/') {
            Some(i) => format!("{}/{real}", &shown[..i]),
            None => real,
        };
        return Err(CaseConflict {
            given: shown.to_string(),
            real,
        }
        .into());
    }
    Ok(())
}

/// Our index entry for a needed name that is ignored here: the global
/// entry without content, flagged invalid (1.19.2's SetIgnored), so the
/// name is no longer needed and the other devices see we do not have it.
pub fn ignored_entry(global: &FileInfo) -> Change {
    Change {
        info: FileInfo {
            invalid: true,
            blocks: Vec::new(),
            ..global.clone()
        },
        inode: 0,
    }
}

/// Entries deeper than this below a directory being deleted are not
/// looked at (the directory is then left alone).
const MAX_DELETE_DEPTH: usize = 64;

/// Before directory `name` (open as `dir`) is removed: removes what
/// inside may go — our temp files and entries ignored with `(?d)` — and
/// fails if an ignored entry remains (ignored files are never deleted, so
/// neither is their directory: 1.19.2's "contains ignored files"). Other
/// entries are left for the caller's removal to fail on. Symlinks are
/// never followed: subdirectories are opened from their parent's
/// descriptor with `O_NOFOLLOW`.
pub fn clear_dir_for_delete(dir: &Dir, name: &str, ignores: &Ignores) -> Result<()> {
    let mut has_ignored = None;
    clear_below(dir, name, ignores, 0, &mut has_ignored)?;
    if let Some(kept) = has_ignored {
        bail!(
            "directory {name:?} contains ignored files (e.g. {kept:?}); not deleted. Prefix the pattern with (?d) in .stignore to allow deleting them"
        );
    }
    Ok(())
}

fn clear_below(
    dir: &Dir,
    name: &str,
    ignores: &Ignores,
    depth: usize,
    has_ignored: &mut Option<String>,
) -> Result<()> {
    if depth > MAX_DELETE_DEPTH {
        bail!("directory {name:?} is nested too deeply to be deleted safely");
    }
    let Ok(entries) = dir.entries() else {
        return Ok(());
    };
    for (os, kind) in entries {
        let Some(base) = os.to_str() else { continue };
        let child = format!("{name}/{base}");
        let is_dir = kind == Kind::Dir;
        let verdict = ignores.check(&child);
        if verdict.deletable {
            if is_dir {
                // Everything below a (?d) directory matches it too, except
                // what a `!` pattern keeps.
                if let Ok(sub) = dir.child(base) {
                    clear_below(&sub, &child, ignores, depth + 1, has_ignored)?;
                }
                if has_ignored.is_none() {
                    dir.remove_dir(base).with_context(|| {
                        format!("cannot remove the ignored directory {child:?}")
                    })?;
                }
            } else {
                dir.remove_file(base)
                    .with_context(|| format!("cannot remove the ignored file {child:?}"))?;
            }
        } else if verdict.ignored {
            has_ignored.get_or_insert(child);
        } else if names::is_temporary(base) && !is_dir {
            let _ = dir.remove_file(base);
        } else if is_dir {
            // A subdirectory replaced by a symlink meanwhile is not
            // entered; the caller's removal then fails on it.
            if let Ok(sub) = dir.child(base) {
                clear_below(&sub, &child, ignores, depth + 1, has_ignored)?;
            }
        }
    }
    Ok(())
}

/// Free bytes Syncthing keeps on a folder's filesystem (its default
/// `minDiskFree` of 1 %).
const MIN_FREE_PERCENT: u64 = 1;

/// Refuses to start a file of `size` bytes in `dir` when the filesystem
/// cannot hold it (beyond what its temp file `temp` already holds) and
/// still keep 1 % free, like 1.19.2's CheckAvailableSpace: nothing is
/// written that would fill the disk. `folder` is for the message.
pub fn check_space(dir: &Dir, size: u64, temp: &str, folder: &Path) -> Result<()> {
    let Ok((avail, total)) = dir.free_space() else {
        return Ok(());
    };
    let have = dir
        .stat(temp)
        .map_or(0, |m| if m.is_file() { m.len() } else { 0 });
    let need = size.saturating_sub(have);
    let reserve = total / 100 * MIN_FREE_PERCENT;
    if avail < need.saturating_add(reserve) {
        bail!(
            "insufficient space in folder {}: {need} bytes needed, {avail} available (1 % kept free); free some space and it resumes",
            folder.display()
        );
    }
    Ok(())
}

/// Puts the finished temp file `temp` in place of `target` (both in
/// `dir`) atomically, and closes the gap between the last "unchanged
/// locally" check and the rename: the two are swapped (`RENAME_EXCHANGE`),
/// then what was swapped out is checked against the index once more. If
/// the user wrote the file in that gap, their version is kept as a
/// conflict copy instead of being lost. Falls back to a plain rename where
/// the filesystem cannot swap.
pub fn swap_into_place(
    db: &Db,
    folder: &str,
    name: &str,
    dir: &Dir,
    (temp, target): (&str, &str),
    incoming: &FileInfo,
    (max_conflicts, perms): (MaxConflicts, Perms),
) -> Result<()> {
    let failed =
        |e: std::io::Error| anyhow::Error::from(e).context(format!("cannot rename into {name:?}"));
    for _ in 0..3 {
        match dir.rename(temp, dir, target, Rename::Exchange) {
            Ok(()) => {
                // `temp` now holds what was in place.
                if local_unchanged(db, folder, name, dir, temp, perms).unwrap_or(false) {
                    let _ = dir.remove_file(temp);
                } else {
                    keep_raced(dir, name, temp, incoming, max_conflicts)?;
                }
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match dir.rename(temp, dir, target, Rename::NoReplace) {
                    Ok(()) => return Ok(()),
                    // Created in between: swap it out and check it.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                    // Neither swap nor no-replace here (FUSE volumes such
                    // as fusefat): a plain rename, as on any filesystem
                    // that offers nothing better.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                    Err(e) => return Err(failed(e)),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(failed(e)),
        }
    }
    dir.rename(temp, dir, target, Rename::Replace)
        .map_err(failed)
}

/// `name` with its last component replaced by `base`, for messages.
fn sibling(name: &str, base: &str) -> String {
    match dirname(name) {
        "" => base.to_string(),
        d => format!("{d}/{base}"),
    }
}

/// Keeps a local version that is about to be replaced (`swapped_out` in
/// `dir`) as a conflict copy under a name not yet taken (even for a name
/// that is itself a conflict copy), within `max_conflicts`.
fn keep_raced(
    dir: &Dir,
    name: &str,
    swapped_out: &str,
    incoming: &FileInfo,
    max_conflicts: MaxConflicts,
) -> Result<()> {
    if max_conflicts == MaxConflicts::Discard {
        return discard_losing_version(dir, name, swapped_out);
    }
    let short = proto::ShortId(incoming.modified_by).to_string();
    let stamp = conflict_stamp();
    for k in 0..100 {
        let stamp = if k == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{k}")
        };
        let cname = proto::bep::global::conflict_name(basename(name), &stamp, &short);
        if dir
            .rename(swapped_out, dir, &cname, Rename::NoReplace)
            .is_ok()
        {
            tracing::warn!(file = ?name, conflict_copy = ?sibling(name, &cname),
                "local version kept as a conflict copy");
            prune_conflict_copies(dir, name, max_conflicts);
            return Ok(());
        }
    }
    bail!(
        "cannot keep the local version of {name} written while it was replaced (left in {:?})",
        sibling(name, swapped_out)
    )
}

/// Removes the temp file of `name` (never through a symlinked parent).
pub fn remove_temp(root: &Dir, name: &str) {
    if let Ok(Some(dir)) = parent_dir(root, name, false) {
        let temp = proto::bep::global::temp_basename(basename(name));
        if dir.stat(&temp).is_ok_and(|m| m.is_file()) {
            let _ = dir.remove_file(&temp);
        }
    }
}

/// Whether an error chain ends in "no space left on device" (or quota).
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
    })
}

/// Whether `base` in `dir` (for `name`) is as our index last recorded it:
/// absent when the index has no live entry, unchanged otherwise (a live
/// entry gone from disk is a local deletion, which loses against any new
/// version, so it also counts as unchanged).
pub fn local_unchanged(
    db: &Db,
    folder: &str,
    name: &str,
    dir: &Dir,
    base: &str,
    perms: Perms,
) -> Result<bool> {
    let known = db
        .local_meta(folder, &[name])?
        .remove(name)
        .filter(|k| !k.deleted);
    match (known, dir.stat(base)) {
        (_, Err(e)) if e.kind() == ErrorKind::NotFound => Ok(true),
        (_, Err(e)) => Err(e).with_context(|| format!("cannot stat {:?}", sibling(name, base))),
        (None, Ok(_)) => Ok(false),
        (Some(k), Ok(m)) => Ok(scan::unchanged(&k, &scan::disk_meta(&m), perms)),
    }
}

/// Opens (creating if needed) the temp file `temp` in `dir` for writing
/// without following a symlink; it must be a regular file. An existing one
/// (an interrupted pull) is reused.
pub fn open_temp(dir: &Dir, temp: &str) -> Result<File> {
    match dir.open_or_create(temp, 0o600) {
        Ok(f) => Ok(f),
        // A leftover we cannot write (read-only mode already applied, or a
        // symlink's temp) is ours to replace: temp names are never synced.
        Err(_) if dir.stat(temp).is_ok_and(|m| !m.is_dir()) => {
            dir.remove_file(temp)
                .with_context(|| format!("cannot remove the stale temporary file {temp:?}"))?;
            dir.create_new(temp, 0o600)
                .with_context(|| format!("cannot open the temporary file {temp:?}"))
        }
        Err(e) => Err(e).with_context(|| format!("cannot open the temporary file {temp:?}")),
    }
}

/// Opens an existing regular file `base` of `dir` for reading without
/// following a symlink.
pub fn open_existing(dir: &Dir, base: &str) -> Option<File> {
    dir.open_read(base).ok()
}

/// Reads `size` bytes at `offset` and returns them if they hash to `hash`.
pub fn read_verified(file: &File, offset: u64, size: usize, hash: &[u8]) -> Option<Vec<u8>> {
    let mut data = vec![0u8; size];
    file.read_exact_at(&mut data, offset).ok()?;
    (Sha256::digest(&data)[..] == hash[..]).then_some(data)
}

/// Asks the kernel to start writing `file`'s dirty pages to disk without
/// waiting for them: the fsync that follows has less left to do. Only a
/// hint; errors are for that fsync to report.
pub fn start_writeback(file: &File) {
    // SAFETY: sync_file_range(2) on a descriptor we hold open; offset 0 and
    // length 0 mean the whole file.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(file),
            0,
            0,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// `YYYYMMDD-HHMMSS` in local time, for conflict names.
pub fn conflict_stamp() -> String {
    // The same stamp as a version's tag.
    crate::versioning::tag::format_tag(std::time::SystemTime::now())
}

/// Moves the local file `base` of `dir` aside as a conflict copy, named
/// after the device whose change won (`incoming.modified_by`).
///
/// 1.19.2 deletes a losing copy whose name is already a conflict copy.
/// But conflict names only hold the second and the winner, so two devices
/// resolving against the same winner at the same moment make copies with
/// the same name and different contents (seen in the convergence test):
/// deleting ours would lose an edit. Ours is kept once more instead.
///
/// With `maxConflicts` 0 the local version is discarded instead
/// ([`discard_losing_version`]); otherwise the oldest copies beyond the
/// limit go ([`prune_conflict_copies`]).
pub fn move_to_conflict(
    dir: &Dir,
    name: &str,
    base: &str,
    incoming: &FileInfo,
    max_conflicts: MaxConflicts,
) -> Result<()> {
    if proto::bep::global::is_conflict_copy(name) {
        return keep_raced(dir, name, base, incoming, max_conflicts);
    }
    if max_conflicts == MaxConflicts::Discard {
        return discard_losing_version(dir, name, base);
    }
    let short = proto::ShortId(incoming.modified_by).to_string();
    let cname = proto::bep::global::conflict_name(basename(name), &conflict_stamp(), &short);
    let shown = sibling(name, &cname);
    if dir.exists(&cname) {
        bail!("conflict copy {shown:?} already exists");
    }
    let moved = match dir.rename(base, dir, &cname, Rename::NoReplace) {
        // A filesystem without RENAME_NOREPLACE: checked just above.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            dir.rename(base, dir, &cname, Rename::Replace)
        }
        r => r,
    };
    moved.with_context(|| format!("cannot move the conflicting local copy to {shown:?}"))?;
    tracing::warn!(file = ?name, conflict_copy = ?shown, "conflicting local change kept as a conflict copy");
    prune_conflict_copies(dir, name, max_conflicts);
    Ok(())
}

/// `maxConflicts` 0: the local version of `name` that lost a conflict
/// (`losing`, in `dir`: the file itself or what a swap took out of place)
/// is removed, as Syncthing 2.1.3 removes it (`moveForConflict`), without
/// archiving it.
///
/// The one place a losing local version is destroyed (`maxConflicts` 0,
/// as Syncthing). With versioning on the puller never comes here: it keeps
/// that version in the versions folder, or as a conflict copy when caught
/// in the last moment (`Ctx::keep_losing`, `Ctx::raced_conflicts`).
fn discard_losing_version(dir: &Dir, name: &str, losing: &str) -> Result<()> {
    match dir.remove_file(losing) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot remove the losing local version of {name:?} (maxConflicts 0)")
            })
        }
    }
    tracing::warn!(file = ?name, "conflicting local change discarded (maxConflicts is 0)");
    Ok(())
}

/// Keeps at most `max` conflict copies of `name` in `dir`: the copies are
/// found by name as Syncthing finds them (`name.sync-conflict-*-*.ext`)
/// and, sorted by name (their stamp, oldest first), all but the newest
/// `max` are removed. Best effort, as in Syncthing: a copy that cannot be
/// removed is logged and left.
fn prune_conflict_copies(dir: &Dir, name: &str, max: MaxConflicts) {
    let MaxConflicts::Keep(max) = max else {
        return;
    };
    let base = basename(name);
    let Ok(entries) = dir.entries() else {
        return;
    };
    let mut copies: Vec<String> = entries
        .filter(|(_, kind)| *kind != Kind::Dir)
        .filter_map(|(n, _)| n.into_string().ok())
        .filter(|n| proto::bep::global::is_conflict_copy_of(base, n))
        .collect();
    if copies.len() <= max as usize {
        return;
    }
    // Newest first: the stamp (YYYYMMDD-HHMMSS) orders the names.
    copies.sort_unstable_by(|a, b| b.cmp(a));
    for old in &copies[max as usize..] {
        match dir.remove_file(old) {
            Ok(()) => {
                tracing::info!(file = ?name, removed = ?sibling(name, old),
                    "oldest conflict copy removed (maxConflicts {max})")
            }
            Err(e) => {
                tracing::warn!(file = ?name, copy = ?sibling(name, old), error = %e,
                    "cannot remove an extra conflict copy")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn conflict_copies_beyond_max_conflicts_go_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let copies = [
            "a.sync-conflict-20200101-000004-XYZ.txt",
            "a.sync-conflict-20200101-000001-XYZ.txt",
            "a.sync-conflict-20191231-235959-XYZ.txt",
            "a.sync-conflict-20200101-000003-XYZ.txt",
        ];
        let others = ["a.txt", "b.sync-conflict-20190101-000000-XYZ.txt", "a.doc"];
        for n in copies.iter().chain(&others) {
            fs::write(d.path().join(n), n).unwrap();
        }
        let dir = Dir::open(d.path()).unwrap();
        prune_conflict_copies(&dir, "sub/a.txt", MaxConflicts::Keep(2));
        let mut left: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![copies[0], copies[3]];
        want.extend(others);
        want.sort();
        assert_eq!(left, want);
        prune_conflict_copies(&dir, "a.txt", MaxConflicts::Unlimited);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), want.len());

        // maxConflicts 0: no copy, the losing version is gone.
        let incoming = FileInfo {
            modified_by: 7,
            ..Default::default()
        };
        move_to_conflict(&dir, "a.txt", "a.txt", &incoming, MaxConflicts::Discard).unwrap();
        assert!(!d.path().join("a.txt").exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), want.len() - 1);
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            ".stfolder",
            ".stignore",
            "a/.syncthing.b.tmp",
            "",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        check_name("dir with space/ü.txt").unwrap();
    }

    /// The inode of what `dir` holds open.
    fn ino(dir: &Dir) -> u64 {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        File::from(dir.as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    #[test]
    fn parents_never_go_through_symlinks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("f");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();
        let r = Dir::open(&root).unwrap();
        for bad in ["link/evil", "link/sub/evil", "file/evil"] {
            let e = parent_dir(&r, bad, true).unwrap_err();
            assert!(format!("{e:#}").contains("not a directory"), "{e:#}");
            assert!(e.downcast_ref::<NotADirectory>().is_some(), "{e:#}");
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(parent_dir(&r, "a/b/c", false).unwrap().is_none());
        let made = parent_dir(&r, "a/b/c", true).unwrap().unwrap();
        assert_eq!(ino(&made), fs::metadata(root.join("a/b")).unwrap().ino());
        let top = parent_dir(&r, "top", false).unwrap().unwrap();
        assert_eq!(ino(&top), fs::metadata(&root).unwrap().ino());
    }

    #[test]
    fn case_only_differences_are_found() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Foo.txt"), b"x").unwrap();
        let d = Dir::open(dir.path()).unwrap();
        assert_eq!(differently_cased(&d, "foo.TXT").as_deref(), Some("Foo.txt"));
        assert_eq!(differently_cased(&d, "Foo.txt"), None);
        assert_eq!(differently_cased(&d, "bar"), None);
        fs::write(dir.path().join("ÄB"), b"x").unwrap();
        assert_eq!(differently_cased(&d, "äb").as_deref(), Some("ÄB"));
        let e = CaseConflict {
            given: "d/foo.txt".into(),
            real: "d/Foo.txt".into(),
        };
        assert!(e.to_string().contains("different upper or lowercase"));
        // This filesystem is case-sensitive: like 1.19.2 there, "foo.txt"
        // and "Foo.txt" are two files and no conflict.
        assert!(!case_insensitive(&d));
        fs::create_dir(dir.path().join(scan::MARKER)).unwrap();
        assert!(!case_insensitive(&d));
        parent_dir(&d, "foo.txt", false).unwrap();
    }

    #[test]
    fn deleting_a_directory_keeps_ignored_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join(".DS_Store"), b"x").unwrap();
        fs::write(d.join("sub/.DS_Store"), b"x").unwrap();
        fs::write(d.join(".syncthing.a.tmp"), b"x").unwrap();
        let ign = Ignores::parse("(?d).DS_Store\n*.keep").unwrap();
        let held = Dir::open(&d).unwrap();
        clear_dir_for_delete(&held, "d", &ign).unwrap();
        assert!(!d.join(".DS_Store").exists() && !d.join("sub/.DS_Store").exists());
        assert!(!d.join(".syncthing.a.tmp").exists());
        assert!(d.join("sub").is_dir(), "not ignored: left to the caller");
        fs::write(d.join("sub/x.keep"), b"precious").unwrap();
        let e = clear_dir_for_delete(&held, "d", &ign).unwrap_err();
        assert!(format!("{e:#}").contains("contains ignored files"), "{e:#}");
        assert_eq!(fs::read(d.join("sub/x.keep")).unwrap(), b"precious");
        // A (?d) directory goes whole.
        let ign = Ignores::parse("(?d)cache").unwrap();
        fs::remove_file(d.join("sub/x.keep")).unwrap();
        fs::create_dir_all(d.join("cache/deep")).unwrap();
        fs::write(d.join("cache/deep/f"), b"x").unwrap();
        // A symlink to the outside inside is removed, never entered.
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("cache")).unwrap();
        fs::write(outside.join("cache/f"), b"x").unwrap();
        fs::write(outside.join(".syncthing.a.tmp"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("sub/link")).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("cache/deep/link")).unwrap();
        clear_dir_for_delete(&held, "d", &ign).unwrap();
        assert!(!d.join("cache").exists());
        assert!(fs::symlink_metadata(d.join("sub/link")).is_ok());
        assert!(outside.join("cache/f").exists() && outside.join(".syncthing.a.tmp").exists());
    }

    #[test]
    fn a_file_written_in_the_last_moment_is_kept_as_a_conflict_copy() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let root = dir.path().join("f");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("a"), b"indexed").unwrap();
        let live = crate::scan::Live::default();
        crate::scan::scan(&db, "f", &root, 1, &|_| {}, &live).unwrap();
        let incoming = FileInfo {
            name: "a".into(),
            modified_by: 7,
            ..Default::default()
        };
        let r = Dir::open(&root).unwrap();
        let swap = |name: &str| {
            let t = proto::bep::global::temp_basename(name);
            swap_into_place(
                &db,
                "f",
                name,
                &r,
                (&t, name),
                &incoming,
                (MaxConflicts::DEFAULT, Perms::Honour),
            )
        };
        // Unchanged since the index: replaced, nothing kept.
        let temp = root.join(".syncthing.a.tmp");
        fs::write(&temp, b"pulled 1").unwrap();
        swap("a").unwrap();
        assert_eq!(fs::read(root.join("a")).unwrap(), b"pulled 1");
        assert!(!temp.exists());
        assert_eq!(fs::read_dir(&root).unwrap().count(), 2); // a, .stfolder
                                                             // Written after the last check: kept as a conflict copy.
        fs::write(&temp, b"pulled 2").unwrap();
        swap("a").unwrap();
        assert_eq!(fs::read(root.join("a")).unwrap(), b"pulled 2");
        let kept: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| n.starts_with("a.sync-conflict-"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(fs::read(root.join(&kept[0])).unwrap(), b"pulled 1");
        // A new name created in between is kept too.
        fs::write(root.join(".syncthing.new.tmp"), b"pulled 3").unwrap();
        fs::write(root.join("new"), b"user's").unwrap();
        swap("new").unwrap();
        assert_eq!(fs::read(root.join("new")).unwrap(), b"pulled 3");
        assert!(fs::read_dir(&root).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("new.sync-conflict-")));
    }

    #[test]
    fn space_is_checked_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let temp = ".syncthing.x.tmp";
        check_space(&d, 1, temp, dir.path()).unwrap();
        let e = check_space(&d, u64::MAX / 2, temp, dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("insufficient space"));
        let full = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("cannot write");
        assert!(is_disk_full(&full));
        assert!(!is_disk_full(&anyhow::anyhow!("other")));
    }

    #[test]
    fn temp_files_never_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"keep").unwrap();
        let temp = dir.path().join(".syncthing.x.tmp");
        std::os::unix::fs::symlink(&secret, &temp).unwrap();
        let d = Dir::open(dir.path()).unwrap();
        // The symlink is replaced by a fresh file; the target is untouched.
        let f = open_temp(&d, ".syncthing.x.tmp").unwrap();
        f.write_all_at(b"new", 0).unwrap();
        assert_eq!(fs::read(&secret).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&temp).unwrap().is_file());
        // An interrupted pull's temp file is reused, a read-only one
        // replaced.
        drop(f);
        let f = open_temp(&d, ".syncthing.x.tmp").unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3);
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o400)).unwrap();
        let f = open_temp(&d, ".syncthing.x.tmp").unwrap();
        f.write_all_at(b"ok", 0).unwrap();
        assert!(open_temp(&d, ".stfolder-missing/x").is_err());
    }

    #[test]
    fn local_changes_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let root = dir.path().join("f");
        fs::create_dir_all(&root).unwrap();
        let r = Dir::open(&root).unwrap();
        // Unknown to the index and absent: fine; present: a local change.
        assert!(local_unchanged(&db, "f", "a", &r, "a", Perms::Honour).unwrap());
        fs::write(root.join("a"), b"data").unwrap();
        assert!(!local_unchanged(&db, "f", "a", &r, "a", Perms::Honour).unwrap());
        let live = crate::scan::Live::default();
        crate::scan::scan(&db, "f", &root, 1, &|_| {}, &live).unwrap();
        assert!(local_unchanged(&db, "f", "a", &r, "a", Perms::Honour).unwrap());
        fs::write(root.join("a"), b"other data").unwrap();
        assert!(!local_unchanged(&db, "f", "a", &r, "a", Perms::Honour).unwrap());
    }
}
