//! Listing the versions folder (`GET /rest/folder/versions`) and
//! restoring versions (`POST`), as Syncthing 2.1.3 answers them.
//!
//! A listing is keyed by the original folder-relative path; each entry
//! has the time its tag stands for (`versionTime`; for an untagged trash
//! can entry, its mtime), its mtime truncated to the second (`modTime`)
//! and its size, ordered by the version's file name (tags sort in time
//! order). A name whose tag is not a valid time is left out, as Syncthing
//! does; so are symlinks and our own temp files.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use super::archive::join;
use super::{store, tag, Error, Versioner};
use crate::config::Versioning;
use crate::dirfd::{Dir, Kind, Rename};

/// Directories deeper than this in the versions folder are not read.
const MAX_DEPTH: usize = 256;

/// One version as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    pub version_time: SystemTime,
    pub mod_time: SystemTime,
    pub size: u64,
}

impl FileVersion {
    /// Syncthing's JSON object for it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "versionTime": tag::rfc3339_local(self.version_time),
            "modTime": tag::rfc3339_local(self.mod_time),
            "size": self.size,
        })
    }
}

/// A file of the versions folder.
pub(crate) struct Entry {
    /// Relative to the versions folder.
    pub rel: String,
    pub size: u64,
    /// Whole seconds.
    pub mtime: i64,
}

/// Every regular file (and every directory) below `top`, never crossing
/// a symlink; our temp files are left out.
pub(crate) fn walk_tree(top: &Dir) -> (Vec<Entry>, Vec<String>) {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut stack: Vec<(String, Dir, usize)> = match top.try_clone() {
        Ok(d) => vec![(String::new(), d, 0)],
        Err(_) => return (files, dirs),
    };
    while let Some((rel, dir, depth)) = stack.pop() {
        let Ok(entries) = dir.entries() else { continue };
        for (name, kind) in entries {
            let Some(name) = name.to_str() else { continue };
            let child = join(&rel, name);
            match kind {
                Kind::Dir if depth < MAX_DEPTH => {
                    if let Ok(d) = dir.child(name) {
                        dirs.push(child.clone());
                        stack.push((child, d, depth + 1));
                    }
                }
                Kind::File if !proto::bep::names::is_temporary(name) => {
                    if let Ok(m) = dir.stat(name) {
                        files.push(Entry {
                            rel: child,
                            size: m.len(),
                            mtime: m.mtime(),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    (files, dirs)
}

impl Versioner {
    /// Every version, by original path.
    pub fn list(&self, root: &Dir) -> Result<BTreeMap<String, Vec<FileVersion>>, Error> {
        if let Versioning::External { .. } = self.mode {
            return Err(Error::NotSupported);
        }
        let Some(vroot) = self.open_existing(root)? else {
            self.metrics.kept.set(0);
            self.metrics.bytes.set(0);
            return Ok(BTreeMap::new());
        };
        let (mut files, _) = walk_tree(&vroot);
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        let mut out: BTreeMap<String, Vec<FileVersion>> = BTreeMap::new();
        let (mut kept, mut bytes) = (0i64, 0i64);
        for f in files {
            kept += 1;
            bytes += f.size as i64;
            let mod_time = tag::from_secs(f.mtime);
            let (name, version_time) = match tag::untag_filename(&f.rel) {
                Some((name, t)) => match tag::parse_tag(t) {
                    Some(vt) => (name, vt),
                    None => continue,
                },
                None => (f.rel.clone(), mod_time),
            };
            out.entry(name).or_default().push(FileVersion {
                version_time,
                mod_time,
                size: f.size,
            });
        }
        self.metrics.kept.set(kept);
        self.metrics.bytes.set(bytes);
        Ok(out)
    }

    /// Puts the version of `name` from `version_time` back in the folder
    /// with its bytes and mtime. The file it replaces, if any, is kept as
    /// a version first (a symlink there is removed; a directory refuses).
    /// Unlike Syncthing, the version is looked up before anything is
    /// moved, so a restore of a version that is not there changes nothing.
    pub fn restore(
        &self,
        root: &Dir,
        name: &str,
        version_time: SystemTime,
        now: SystemTime,
    ) -> Result<(), Error> {
        self.restore_inner(root, name, version_time, now)
            .map_err(|e| self.failed(e))
    }

    fn restore_inner(
        &self,
        root: &Dir,
        name: &str,
        version_time: SystemTime,
        now: SystemTime,
    ) -> Result<(), Error> {
        if let Versioning::External { .. } = self.mode {
            return Err(Error::NotSupported);
        }
        if proto::bep::names::validate(name).is_err() || proto::bep::names::is_internal(name) {
            return Err(Error::NotFound);
        }
        let (parent, base) = match name.rfind('/') {
            Some(i) => (&name[..i], &name[i + 1..]),
            None => ("", name),
        };
        let loc = self.location()?;
        let io = |what: &str| {
            let what = format!("{what} {name:?}");
            move |e| Error::io(what, e)
        };
        let vroot = loc
            .open(root, false)
            .map_err(io("open the versions folder for"))?
            .ok_or(Error::NotFound)?;
        let vdir = store::walk(&vroot, None, parent, false)
            .map_err(io("open the versions of"))?
            .ok_or(Error::NotFound)?;
        let secs = |t: SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let tagged = match self.mode {
            Versioning::Trashcan { .. } => base.to_string(),
            _ => tag::tag_filename(base, &tag::format_tag(version_time)),
        };
        let source = match vdir.stat(&tagged) {
            Ok(m) if m.is_file() => tagged,
            _ => match vdir.stat(base) {
                Ok(m) if m.is_file() && m.mtime() as u64 == secs(version_time) => base.to_string(),
                _ => return Err(Error::NotFound),
            },
        };
        let tdir = store::walk(root, None, parent, true)
            .map_err(io("open the folder's directory of"))?
            .ok_or(Error::NotFound)?;
        // The trash can keeps one entry per name: the file being replaced
        // waits under a temp name until the restored one has left.
        let mut parked = None;
        match tdir.stat(base) {
            Ok(m) if m.is_dir() => return Err(Error::Directory),
            Ok(m) if m.file_type().is_symlink() => {
                tdir.remove_file(base).map_err(io("remove the symlink"))?
            }
            Ok(m) if m.is_file() => {
                if let Versioning::Trashcan { .. } = self.mode {
                    let temp = proto::bep::global::temp_basename(base);
                    match tdir.rename(base, &vdir, &temp, Rename::Replace) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                            store::copy_across(&tdir, base, &vdir, &temp)
                                .map_err(io("keep the current"))?;
                            tdir.remove_file(base).map_err(io("keep the current"))?;
                        }
                        Err(e) => return Err(io("keep the current")(e)),
                    }
                    parked = Some(temp);
                } else {
                    self.keep_current(root, &tdir, name, &m, now)?;
                }
            }
            Ok(_) => {
                return Err(Error::io(
                    format!("restore {name:?}"),
                    std::io::Error::new(ErrorKind::InvalidInput, "a special file is in the way"),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("look at the current")(e)),
        }
        match vdir.rename(&source, &tdir, base, Rename::NoReplace) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                store::copy_across(&vdir, &source, &tdir, base).map_err(io("copy back"))?;
                vdir.remove_file(&source)
                    .map_err(io("remove the restored version of"))?;
            }
            Err(e) => return Err(io("move back")(e)),
        }
        let _ = tdir.sync();
        if let Some(temp) = parked {
            vdir.rename(&temp, &vdir, base, Rename::Replace)
                .map_err(io("keep the replaced"))?;
            let _ = vdir.set_mtime(base, now);
        }
        tracing::info!(folder = %self.folder, file = ?name, "version restored");
        Ok(())
    }
}
