//! The versions folder: where it is (Syncthing's rules for `fsPath`),
//! reaching it and the directories inside it without crossing a symlink,
//! and the three ways a file gets in (hard link, rename, copy).

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::dirfd::Dir;

/// Syncthing's versions folder in the folder root.
pub const DEFAULT_DIR: &str = ".stversions";

/// Where a folder's versions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory inside the folder (`.stversions`, or a relative or
    /// absolute `fsPath` that lands inside it): reached from the folder
    /// root's handle, component by component, never through a symlink.
    InFolder(String),
    /// Elsewhere (another disk): the configured path is opened as the
    /// operator wrote it (like the folder path); nothing below it is
    /// reached through a symlink.
    Outside(PathBuf),
}

impl Location {
    /// Syncthing's resolution: `""` is `.stversions` in the folder; `~`
    /// is the home directory; a relative path is relative to the folder.
    pub fn resolve(folder: &Path, fs_path: &str) -> Result<Location, String> {
        if fs_path.is_empty() {
            return Ok(Location::InFolder(DEFAULT_DIR.into()));
        }
        let expanded = match fs_path.strip_prefix('~') {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                let home =
                    std::env::var_os("HOME").ok_or("fsPath starts with ~ but HOME is not set")?;
                PathBuf::from(home).join(rest.trim_start_matches('/'))
            }
            _ => PathBuf::from(fs_path),
        };
        let full = crate::config::lexical(&folder.join(expanded));
        let folder = crate::config::lexical(folder);
        match full.strip_prefix(&folder) {
            Ok(rel) if rel.as_os_str().is_empty() => {
                Err("fsPath is the folder itself; versions need a directory of their own".into())
            }
            Ok(rel) => rel
                .to_str()
                .map(|r| Location::InFolder(r.to_string()))
                .ok_or_else(|| "fsPath is not valid UTF-8".to_string()),
            Err(_) => Ok(Location::Outside(full)),
        }
    }

    /// The top directory's folder-relative name when it is in the folder
    /// (what scans must skip).
    pub fn in_folder(&self) -> Option<&str> {
        match self {
            Location::InFolder(rel) => Some(rel),
            Location::Outside(_) => None,
        }
    }

    /// The path, for messages and the external command.
    pub fn path(&self, folder: &Path) -> PathBuf {
        match self {
            Location::InFolder(rel) => folder.join(rel),
            Location::Outside(p) => p.clone(),
        }
    }

    /// Opens the versions folder; missing: created (parents too) when
    /// `create`, else `None`.
    pub fn open(&self, folder_root: &Dir, create: bool) -> io::Result<Option<Dir>> {
        match self {
            Location::InFolder(rel) => walk(folder_root, None, rel, create),
            Location::Outside(p) => match Dir::open(p) {
                Ok(d) => Ok(Some(d)),
                Err(e) if e.kind() == ErrorKind::NotFound && create => {
                    std::fs::create_dir_all(p)?;
                    Dir::open(p).map(Some)
                }
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }
}

/// The directory `rel` (`a/b`, `""` for `top` itself) below `top`, each
/// component opened without following a symlink; a missing one is made
/// when `create` (with the mode of the same directory in `mirror_of`, the
/// folder, plus owner rwx, as Syncthing does), else `None`.
pub fn walk(
    top: &Dir,
    mirror_of: Option<&Dir>,
    rel: &str,
    create: bool,
) -> io::Result<Option<Dir>> {
    let mut dir = top.try_clone()?;
    let mut src = mirror_of.map(Dir::try_clone).transpose()?;
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        let mode = src
            .as_ref()
            .and_then(|s| s.stat(part).ok())
            .map_or(0o755, |m| m.mode() & 0o777)
            | 0o700;
        src = src.and_then(|s| s.child(part).ok());
        dir = match dir.child(part) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                match dir.mkdir(part, mode) {
                    Ok(()) => {
                        let d = dir.child(part)?;
                        // mkdir's mode went through the umask.
                        let _ = d.set_permissions(mode);
                        d
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => dir.child(part)?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
    }
    Ok(Some(dir))
}

/// Copies the regular file `from` (in `src`) to `to` in `dst` through a
/// temp name there, flushed to disk before it takes its final name
/// (replacing what had it), with `from`'s mtime: used when the two are on
/// different filesystems (no link, no rename). The temp file is removed
/// on failure.
pub fn copy_across(src: &Dir, from: &str, dst: &Dir, to: &str) -> io::Result<()> {
    let mut input = src.open_read(from)?;
    let meta = input.metadata()?;
    let temp = proto::bep::global::temp_basename(to);
    match dst.stat(&temp) {
        Ok(m) if !m.is_dir() => dst.remove_file(&temp)?,
        _ => {}
    }
    let result = (|| -> io::Result<()> {
        let mut out: File = dst.create_new(&temp, meta.mode() & 0o777)?;
        io::copy(&mut input, &mut out)?;
        out.set_modified(meta.modified()?)?;
        out.sync_all()?;
        drop(out);
        dst.rename(&temp, dst, to, crate::dirfd::Rename::Replace)?;
        dst.sync()
    })();
    if result.is_err() {
        let _ = dst.remove_file(&temp);
    }
    result
}

/// Whether two regular files hold the same bytes.
pub fn same_bytes(a: &Dir, an: &str, b: &Dir, bn: &str) -> io::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (a.open_read(an)?, b.open_read(bn)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_path_is_resolved_as_syncthing_does() {
        let f = Path::new("/srv/f");
        assert_eq!(
            Location::resolve(f, "").unwrap(),
            Location::InFolder(".stversions".into())
        );
        assert_eq!(
            Location::resolve(f, "old/versions").unwrap(),
            Location::InFolder("old/versions".into())
        );
        assert_eq!(
            Location::resolve(f, "/srv/f/v").unwrap(),
            Location::InFolder("v".into())
        );
        assert_eq!(
            Location::resolve(f, "../v").unwrap(),
            Location::Outside("/srv/v".into())
        );
        assert_eq!(
            Location::resolve(f, "/mnt/disk2/v").unwrap(),
            Location::Outside("/mnt/disk2/v".into())
        );
        assert!(Location::resolve(f, ".").is_err());
        assert!(Location::resolve(f, "/srv/f/").is_err());
    }

    #[test]
    fn walking_creates_but_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("f");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("link")).unwrap();
        let r = Dir::open(&root).unwrap();
        assert!(walk(&r, None, "x/y", false).unwrap().is_none());
        walk(&r, Some(&r), "a/b", true).unwrap().unwrap();
        let made = walk(&r, None, ".stversions/deep/er", true)
            .unwrap()
            .unwrap();
        made.create_new("v", 0o600).unwrap();
        assert!(root.join(".stversions/deep/er/v").is_file());
        for bad in ["link", "link/x", ".stversions/deep/er/v/x"] {
            let e = walk(&r, None, bad, true).unwrap_err();
            assert!(crate::dirfd::is_not_a_dir(&e), "{bad}: {e}");
        }
        assert_eq!(
            std::fs::read_dir(tmp.path().join("outside"))
                .unwrap()
                .count(),
            0
        );
    }
}
