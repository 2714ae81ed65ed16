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
use proto::bep::wire::{BlockInfo, FileInfo};
use sha2::{Digest, Sha256};

use crate::db::Db;
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
    if names::is_internal(name) {
        bail!("internal name (.stfolder, .stignore, .stversions) not accepted from a peer");
    }
    if names::is_temporary(name) {
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
pub fn parent_dir(root: &Path, name: &str, create: bool) -> Result<Option<PathBuf>> {
    let mut dir = root.to_path_buf();
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    for part in parts {
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
    Ok(Some(dir))
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

pub fn block_matches(data: &[u8], b: &BlockInfo) -> bool {
    data.len() == b.size.max(0) as usize && Sha256::digest(data)[..] == b.hash[..]
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
/// the device whose change won (`incoming.modified_by`). A name that is
/// already a conflict copy is not copied again.
pub fn move_to_conflict(dir: &Path, name: &str, target: &Path, incoming: &FileInfo) -> Result<()> {
    if name.contains(".sync-conflict-") {
        return Ok(());
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
    tracing::warn!(file = %name, conflict_copy = %cpath.display(), "conflicting local change kept as a conflict copy");
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
