//! Safe filesystem steps of pulling: finding (and creating) the directory
//! that holds a name without ever passing through a symlink, checking that
//! what is on disk is still what our index says (so a local change is
//! never overwritten), temp files, conflict copies.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use proto::bep::names;
use proto::bep::wire::FileInfo;
use sha2::{Digest, Sha256};

use crate::db::{Change, Db};
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

/// The directory holding `name` below `root`. Every component on the way
/// must be a real directory (a symlink or file there is refused); missing
/// ones are created when `create`, otherwise `None` is returned.
///
/// On a case-insensitive filesystem every component, the last one
/// included, must also exist in exactly the given case (1.19.2's case
/// check): "a/foo" never overwrites or lands in a local "A/Foo".
pub fn parent_dir(root: &Path, name: &str, create: bool) -> Result<Option<PathBuf>> {
    let insensitive = case_insensitive(root);
    let mut dir = root.to_path_buf();
    let mut parts: Vec<&str> = name.split('/').collect();
    let last = parts.pop().unwrap_or_default();
    let mut done = 0;
    for part in parts {
        done += part.len() + 1;
        if insensitive {
            check_case(&dir, part, &name[..done - 1])?;
        }
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "{} is not a directory (a symlink or file); not writing through it",
                dir.display()
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                match fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                            bail!("{} appeared as a non-directory", dir.display());
                        }
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot create {}", dir.display()))
                    }
                }
            }
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", dir.display())),
        }
    }
    if insensitive {
        check_case(&dir, last, name)?;
    }
    Ok(Some(dir))
}

/// Whether the folder's filesystem folds case: the marker is found under
/// another case. (Then a lookup of "foo" may land on "Foo".)
fn case_insensitive(root: &Path) -> bool {
    let upper = root.join(scan::MARKER.to_uppercase());
    fs::symlink_metadata(root.join(scan::MARKER)).is_ok()
        && fs::symlink_metadata(&upper).is_ok()
        && fs::read_dir(root).is_ok_and(|entries| {
            !entries
                .flatten()
                .any(|e| e.file_name().to_str() == Some(&scan::MARKER.to_uppercase()))
        })
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
pub fn differently_cased(dir: &Path, base: &str) -> Option<String> {
    let lower = base.to_lowercase();
    let mut found = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let n = e.file_name();
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
fn check_case(dir: &Path, base: &str, shown: &str) -> Result<()> {
    if fs::symlink_metadata(dir.join(base)).is_err() {
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

/// Before directory `name` (at `path`) is removed: removes what inside may
/// go — our temp files and entries ignored with `(?d)` — and fails if an
/// ignored entry remains (ignored files are never deleted, so neither is
/// their directory: 1.19.2's "contains ignored files"). Other entries are
/// left for the caller's removal to fail on. Symlinks are never followed.
pub fn clear_dir_for_delete(path: &Path, name: &str, ignores: &Ignores) -> Result<()> {
    let mut has_ignored = None;
    clear_below(path, name, ignores, 0, &mut has_ignored)?;
    if let Some(kept) = has_ignored {
        bail!(
            "directory {name:?} contains ignored files (e.g. {kept:?}); not deleted. Prefix the pattern with (?d) in .stignore to allow deleting them"
        );
    }
    Ok(())
}

fn clear_below(
    path: &Path,
    name: &str,
    ignores: &Ignores,
    depth: usize,
    has_ignored: &mut Option<String>,
) -> Result<()> {
    if depth > MAX_DELETE_DEPTH {
        bail!("directory {name:?} is nested too deeply to be deleted safely");
    }
    let Ok(entries) = fs::read_dir(path) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let os = e.file_name();
        let Some(base) = os.to_str() else { continue };
        let child = format!("{name}/{base}");
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let verdict = ignores.check(&child);
        if verdict.deletable {
            if is_dir {
                // Everything below a (?d) directory matches it too, except
                // what a `!` pattern keeps.
                clear_below(&e.path(), &child, ignores, depth + 1, has_ignored)?;
                if has_ignored.is_none() {
                    fs::remove_dir(e.path()).with_context(|| {
                        format!("cannot remove the ignored directory {child:?}")
                    })?;
                }
            } else {
                fs::remove_file(e.path())
                    .with_context(|| format!("cannot remove the ignored file {child:?}"))?;
            }
        } else if verdict.ignored {
            has_ignored.get_or_insert(child);
        } else if names::is_temporary(base) && !is_dir {
            let _ = fs::remove_file(e.path());
        } else if is_dir {
            clear_below(&e.path(), &child, ignores, depth + 1, has_ignored)?;
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
/// written that would fill the disk.
pub fn check_space(dir: &Path, size: u64, temp: &Path) -> Result<()> {
    let Some((avail, total)) = free_space(dir) else {
        return Ok(());
    };
    let have = fs::symlink_metadata(temp).map_or(0, |m| if m.is_file() { m.len() } else { 0 });
    let need = size.saturating_sub(have);
    let reserve = total / 100 * MIN_FREE_PERCENT;
    if avail < need.saturating_add(reserve) {
        bail!(
            "insufficient space in folder {}: {need} bytes needed, {avail} available (1 % kept free); free some space and it resumes",
            dir.display()
        );
    }
    Ok(())
}

/// (available to us, total) bytes of the filesystem holding `dir`.
fn free_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid
    // NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some((
        (st.f_bavail as u64).saturating_mul(unit),
        (st.f_blocks as u64).saturating_mul(unit),
    ))
}

fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bad = |_| std::io::Error::from(ErrorKind::InvalidInput);
    let a = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(bad)?;
    let b = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(bad)?;
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Puts the finished temp file in place of `target` atomically, and
/// closes the gap between the last "unchanged locally" check and the
/// rename: the two are swapped (`RENAME_EXCHANGE`), then what was swapped
/// out is checked against the index once more. If the user wrote the file
/// in that gap, their version is kept as a conflict copy instead of being
/// lost. Falls back to a plain rename where the filesystem cannot swap.
pub fn swap_into_place(
    db: &Db,
    folder: &str,
    name: &str,
    temp: &Path,
    target: &Path,
    incoming: &FileInfo,
) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    for _ in 0..3 {
        match rename2(temp, target, libc::RENAME_EXCHANGE) {
            Ok(()) => {
                // `temp` now holds what was in place.
                if local_unchanged(db, folder, name, temp).unwrap_or(false) {
                    let _ = fs::remove_file(temp);
                } else {
                    keep_raced(dir, name, temp, incoming)?;
                }
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match rename2(temp, target, libc::RENAME_NOREPLACE) {
                    Ok(()) => return Ok(()),
                    // Created in between: swap it out and check it.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot rename into {}", target.display()))
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot rename into {}", target.display()))
            }
        }
    }
    fs::rename(temp, target).with_context(|| format!("cannot rename into {}", target.display()))
}

/// Keeps a local version that is about to be replaced as a conflict copy
/// under a name not yet taken (even for a name that is itself a conflict
/// copy).
fn keep_raced(dir: &Path, name: &str, swapped_out: &Path, incoming: &FileInfo) -> Result<()> {
    let short = proto::ShortId(incoming.modified_by).to_string();
    let stamp = conflict_stamp();
    for k in 0..100 {
        let stamp = if k == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{k}")
        };
        let cname = proto::bep::global::conflict_name(basename(name), &stamp, &short);
        let cpath = dir.join(&cname);
        if rename2(swapped_out, &cpath, libc::RENAME_NOREPLACE).is_ok() {
            tracing::warn!(file = ?name, conflict_copy = ?cpath,
                "local version kept as a conflict copy");
            return Ok(());
        }
    }
    bail!(
        "cannot keep the local version of {name} written while it was replaced (left in {})",
        swapped_out.display()
    )
}

/// Removes the temp file of `name` (never through a symlinked parent).
pub fn remove_temp(root: &Path, name: &str) {
    if let Ok(Some(dir)) = parent_dir(root, name, false) {
        let temp = dir.join(proto::bep::global::temp_basename(basename(name)));
        if fs::symlink_metadata(&temp).is_ok_and(|m| m.is_file()) {
            let _ = fs::remove_file(&temp);
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

/// Whether `path` (for `name`) is as our index last recorded it: absent
/// when the index has no live entry, unchanged otherwise (a live entry
/// gone from disk is a local deletion, which loses against any new
/// version, so it also counts as unchanged).
pub fn local_unchanged(db: &Db, folder: &str, name: &str, path: &Path) -> Result<bool> {
    let known = db
        .local_meta(folder, &[name])?
        .remove(name)
        .filter(|k| !k.deleted);
    match (known, fs::symlink_metadata(path)) {
        (_, Err(e)) if e.kind() == ErrorKind::NotFound => Ok(true),
        (_, Err(e)) => Err(e).with_context(|| format!("cannot stat {}", path.display())),
        (None, Ok(_)) => Ok(false),
        (Some(k), Ok(m)) => Ok(scan::unchanged(&k, &scan::disk_meta(&m))),
    }
}

/// Opens (creating if needed) a temp file for writing without following a
/// symlink; it must be a regular file.
pub fn open_temp(path: &Path) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    // A leftover we cannot write (read-only mode already applied, or a
    // symlink's temp) is ours to replace: temp names are never synced.
    let file = match open() {
        Ok(f) => f,
        Err(_) if fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) => {
            fs::remove_file(path).with_context(|| {
                format!("cannot remove the stale temporary file {}", path.display())
            })?;
            let reopened = open();
            reopened
                .with_context(|| format!("cannot open the temporary file {}", path.display()))?
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot open the temporary file {}", path.display()))
        }
    };
    if !file.metadata()?.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(file)
}

/// Opens an existing regular file for reading without following a symlink.
pub fn open_existing(path: &Path) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
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

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `YYYYMMDD-HHMMSS` in local time, for conflict names.
pub fn conflict_stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: localtime_r writes into the zeroed struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if !ok {
        return "00000000-000000".into();
    }
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Moves the local file at `target` aside as a conflict copy, named after
/// the device whose change won (`incoming.modified_by`).
///
/// 1.19.2 deletes a losing copy whose name is already a conflict copy.
/// But conflict names only hold the second and the winner, so two devices
/// resolving against the same winner at the same moment make copies with
/// the same name and different contents (seen in the convergence test):
/// deleting ours would lose an edit. Ours is kept once more instead.
pub fn move_to_conflict(dir: &Path, name: &str, target: &Path, incoming: &FileInfo) -> Result<()> {
    if proto::bep::global::is_conflict_copy(name) {
        return keep_raced(dir, name, target, incoming);
    }
    let short = proto::ShortId(incoming.modified_by).to_string();
    let cname = proto::bep::global::conflict_name(basename(name), &conflict_stamp(), &short);
    let cpath = dir.join(&cname);
    if fs::symlink_metadata(&cpath).is_ok() {
        bail!("conflict copy {} already exists", cpath.display());
    }
    fs::rename(target, &cpath).with_context(|| {
        format!(
            "cannot move the conflicting local copy to {}",
            cpath.display()
        )
    })?;
    tracing::warn!(file = ?name, conflict_copy = ?cpath, "conflicting local change kept as a conflict copy");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn parents_never_go_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("f");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();
        assert!(parent_dir(&root, "link/evil", true).is_err());
        assert!(parent_dir(&root, "link/sub/evil", true).is_err());
        assert!(parent_dir(&root, "file/evil", true).is_err());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(parent_dir(&root, "a/b/c", false).unwrap(), None);
        let made = parent_dir(&root, "a/b/c", true).unwrap().unwrap();
        assert_eq!(made, root.join("a/b"));
        assert!(made.is_dir());
        assert_eq!(parent_dir(&root, "top", false).unwrap(), Some(root.clone()));
    }

    #[test]
    fn case_only_differences_are_found() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Foo.txt"), b"x").unwrap();
        assert_eq!(
            differently_cased(dir.path(), "foo.TXT").as_deref(),
            Some("Foo.txt")
        );
        assert_eq!(differently_cased(dir.path(), "Foo.txt"), None);
        assert_eq!(differently_cased(dir.path(), "bar"), None);
        fs::write(dir.path().join("ÄB"), b"x").unwrap();
        assert_eq!(differently_cased(dir.path(), "äb").as_deref(), Some("ÄB"));
        let e = CaseConflict {
            given: "d/foo.txt".into(),
            real: "d/Foo.txt".into(),
        };
        assert!(e.to_string().contains("different upper or lowercase"));
        // This filesystem is case-sensitive: like 1.19.2 there, "foo.txt"
        // and "Foo.txt" are two files and no conflict.
        assert!(!case_insensitive(dir.path()));
        fs::create_dir(dir.path().join(scan::MARKER)).unwrap();
        assert!(!case_insensitive(dir.path()));
        parent_dir(dir.path(), "foo.txt", false).unwrap();
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
        clear_dir_for_delete(&d, "d", &ign).unwrap();
        assert!(!d.join(".DS_Store").exists() && !d.join("sub/.DS_Store").exists());
        assert!(!d.join(".syncthing.a.tmp").exists());
        assert!(d.join("sub").is_dir(), "not ignored: left to the caller");
        fs::write(d.join("sub/x.keep"), b"precious").unwrap();
        let e = clear_dir_for_delete(&d, "d", &ign).unwrap_err();
        assert!(format!("{e:#}").contains("contains ignored files"), "{e:#}");
        assert_eq!(fs::read(d.join("sub/x.keep")).unwrap(), b"precious");
        // A (?d) directory goes whole.
        let ign = Ignores::parse("(?d)cache").unwrap();
        fs::remove_file(d.join("sub/x.keep")).unwrap();
        fs::create_dir_all(d.join("cache/deep")).unwrap();
        fs::write(d.join("cache/deep/f"), b"x").unwrap();
        clear_dir_for_delete(&d, "d", &ign).unwrap();
        assert!(!d.join("cache").exists());
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
        // Unchanged since the index: replaced, nothing kept.
        let temp = root.join(".syncthing.a.tmp");
        fs::write(&temp, b"pulled 1").unwrap();
        swap_into_place(&db, "f", "a", &temp, &root.join("a"), &incoming).unwrap();
        assert_eq!(fs::read(root.join("a")).unwrap(), b"pulled 1");
        assert!(!temp.exists());
        assert_eq!(fs::read_dir(&root).unwrap().count(), 2); // a, .stfolder
                                                             // Written after the last check: kept as a conflict copy.
        fs::write(&temp, b"pulled 2").unwrap();
        swap_into_place(&db, "f", "a", &temp, &root.join("a"), &incoming).unwrap();
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
        fs::write(&temp, b"pulled 3").unwrap();
        fs::write(root.join("new"), b"user's").unwrap();
        swap_into_place(&db, "f", "new", &temp, &root.join("new"), &incoming).unwrap();
        assert_eq!(fs::read(root.join("new")).unwrap(), b"pulled 3");
        assert!(fs::read_dir(&root).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("new.sync-conflict-")));
    }

    #[test]
    fn space_is_checked_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join(".syncthing.x.tmp");
        check_space(dir.path(), 1, &temp).unwrap();
        let e = check_space(dir.path(), u64::MAX / 2, &temp).unwrap_err();
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
        // The symlink is replaced by a fresh file; the target is untouched.
        let f = open_temp(&temp).unwrap();
        f.write_all_at(b"new", 0).unwrap();
        assert_eq!(fs::read(&secret).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&temp).unwrap().is_file());
    }

    #[test]
    fn local_changes_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let root = dir.path().join("f");
        fs::create_dir_all(&root).unwrap();
        // Unknown to the index and absent: fine; present: a local change.
        assert!(local_unchanged(&db, "f", "a", &root.join("a")).unwrap());
        fs::write(root.join("a"), b"data").unwrap();
        assert!(!local_unchanged(&db, "f", "a", &root.join("a")).unwrap());
        let live = crate::scan::Live::default();
        crate::scan::scan(&db, "f", &root, 1, &|_| {}, &live).unwrap();
        assert!(local_unchanged(&db, "f", "a", &root.join("a")).unwrap());
        fs::write(root.join("a"), b"other data").unwrap();
        assert!(!local_unchanged(&db, "f", "a", &root.join("a")).unwrap());
    }
}
