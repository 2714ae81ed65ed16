//! Keeping a file that a remote change is about to replace or delete.
//!
//! Replaced: the old file gets a second name in the versions folder (a
//! hard link, `linkat` on directory handles) *before* the puller renames
//! the new one over it; the puller's swap then leaves the old inode only
//! in the versions folder. A crash in between leaves the target as it
//! was and its version the same inode: the redo sees that the newest
//! version already is this file and adds none. Across filesystems (an
//! `fsPath` on another disk) the file is copied to a temp name there,
//! flushed, and renamed into its name; the redo then compares size,
//! mtime and bytes instead of the inode.
//!
//! Deleted: the file is renamed into the versions folder (across
//! filesystems: copied, flushed, then removed).
//!
//! Only regular files are kept (symlinks and directories are not, as in
//! Syncthing). Simple and staggered versioning then apply their rules to
//! that one file's versions; the trash can keeps one per name, the newest.

use std::io::{self, ErrorKind};
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use super::{external, select, store, tag, Error, Versioner};
use crate::config::Versioning;
use crate::dirfd::{Dir, Rename};

fn basename(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn dirname(name: &str) -> &str {
    name.rfind('/').map_or("", |i| &name[..i])
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The metadata of `name` (in `dir`) when it is a regular file: only
/// those are kept (symlinks and directories are not, as in Syncthing).
fn regular_file(dir: &Dir, name: &str) -> Option<std::fs::Metadata> {
    dir.stat(basename(name)).ok().filter(|m| m.is_file())
}

/// What is left to do once the new file is in place (see
/// [`Versioner::before_replace`]).
#[must_use]
pub struct Kept {
    vdir: Dir,
    vrel: String,
    vname: String,
    base: String,
}

impl Versioner {
    /// The versions-folder directory for `name` (made as needed, with
    /// the folder's modes) and the name its version gets at `now`.
    fn slot(
        &self,
        root: &Dir,
        name: &str,
        now: SystemTime,
    ) -> Result<(Dir, String, String), Error> {
        let loc = self.location()?;
        let path = loc.path(&self.folder_path);
        let map = |e: io::Error, what: String| {
            if is_disk_full(&e) {
                Error::DiskFull {
                    path: path.clone(),
                    source: e,
                }
            } else {
                Error::io(what, e)
            }
        };
        let vroot = loc
            .open(root, true)
            .map_err(|e| map(e, format!("open the versions folder {}", path.display())))?
            .ok_or_else(|| Error::Location(format!("{} cannot be created", path.display())))?;
        let vrel = dirname(name).to_string();
        let vdir = store::walk(&vroot, Some(root), &vrel, true)
            .map_err(|e| map(e, format!("make the directory {vrel:?} in the versions folder (a symlink or file there is not crossed)")))?
            .ok_or_else(|| Error::Location(format!("{} lost a directory", path.display())))?;
        let base = basename(name);
        let vname = match self.mode {
            Versioning::Trashcan { .. } => base.to_string(),
            _ => free_name(&vdir, base, now),
        };
        Ok((vdir, vrel, vname))
    }

    /// The versions of `base` in the versions directory `vrel` (open as
    /// `vdir`), oldest first; the directory is read once per versioner.
    fn versions_of(&self, vdir: &Dir, vrel: &str, base: &str) -> Vec<String> {
        if let Versioning::Trashcan { .. } = self.mode {
            return if vdir.exists(base) {
                vec![base.to_string()]
            } else {
                Vec::new()
            };
        }
        let mut listed = daemon::sync::MutexExt::locked(&self.listed);
        let dir = listed.entry(vrel.to_string()).or_insert_with(|| {
            let mut by_file: std::collections::HashMap<String, Vec<String>> = Default::default();
            if let Ok(entries) = vdir.entries() {
                for (n, kind) in entries {
                    let Some(n) = n.to_str() else { continue };
                    if kind != crate::dirfd::Kind::File {
                        continue;
                    }
                    if let Some((orig, _)) = tag::untag_filename(n) {
                        if tag::version_tag_of(n, &orig).is_some() {
                            by_file.entry(orig).or_default().push(n.to_string());
                        }
                    }
                }
            }
            by_file
        });
        let mut v = dir.get(base).cloned().unwrap_or_default();
        v.sort();
        v
    }

    fn note_version(&self, vrel: &str, base: &str, vname: &str, added: bool) {
        if let Versioning::Trashcan { .. } = self.mode {
            return;
        }
        let mut listed = daemon::sync::MutexExt::locked(&self.listed);
        if let Some(dir) = listed.get_mut(vrel) {
            let v = dir.entry(base.to_string()).or_default();
            v.retain(|n| n != vname);
            if added {
                v.push(vname.to_string());
            }
        }
    }

    /// Whether the newest version of `base` already is the file `meta`
    /// describes (`base` in `dir`): the same inode, or on another
    /// filesystem the same size, mtime and bytes. Then an archive
    /// interrupted by a crash is not repeated.
    fn already_kept(
        &self,
        vdir: &Dir,
        vrel: &str,
        dir: &Dir,
        base: &str,
        meta: &std::fs::Metadata,
    ) -> bool {
        let Some(newest) = self.versions_of(vdir, vrel, base).pop() else {
            return false;
        };
        let Ok(v) = vdir.stat(&newest) else {
            return false;
        };
        if v.dev() == meta.dev() && !self.copies() {
            return v.ino() == meta.ino();
        }
        v.is_file()
            && v.len() == meta.len()
            && v.mtime() == meta.mtime()
            && v.mtime_nsec() == meta.mtime_nsec()
            && store::same_bytes(vdir, &newest, dir, base).unwrap_or(false)
    }

    /// The external command for `name`; `Ok` when it succeeded and the
    /// file is gone.
    fn run_external(&self, dir: &Dir, name: &str) -> Result<(), Error> {
        let Versioning::External { command, timeout } = &self.mode else {
            return Ok(());
        };
        external::run(command, &self.folder_path, name, *timeout)
            .map_err(|e| self.failed(e.into()))?;
        if dir.stat(basename(name)).is_ok() {
            return Err(self.failed(external::ExternalError::NotRemoved.into()));
        }
        tracing::info!(folder = %self.folder, file = ?name, "external versioning command moved the file away");
        Ok(())
    }

    /// Keeps the regular file `name` (open parent `dir`, folder root
    /// `root`) before a newer version replaces it. `None` when there is
    /// nothing to keep (no regular file there) or the external command
    /// already moved it; otherwise [`Kept::finish`] is due once the new
    /// file is in place.
    pub fn before_replace(
        &self,
        root: &Dir,
        dir: &Dir,
        name: &str,
        now: SystemTime,
    ) -> Result<Option<Kept>, Error> {
        let Some(meta) = regular_file(dir, name) else {
            return Ok(None);
        };
        if let Versioning::External { .. } = self.mode {
            return self.run_external(dir, name).map(|()| None);
        }
        let r = self.link_version(root, dir, name, &meta, now);
        r.map(Some).map_err(|e| self.failed(e))
    }

    fn link_version(
        &self,
        root: &Dir,
        dir: &Dir,
        name: &str,
        meta: &std::fs::Metadata,
        now: SystemTime,
    ) -> Result<Kept, Error> {
        let base = basename(name);
        let (vdir, vrel, vname) = self.slot(root, name, now)?;
        let kept = |vdir: Dir, vname: String| Kept {
            vdir,
            vrel: vrel.clone(),
            vname,
            base: base.to_string(),
        };
        if self.already_kept(&vdir, &vrel, dir, base, meta) {
            tracing::debug!(folder = %self.folder, file = ?name, "old version already kept (an interrupted pull is redone)");
            let newest = self.versions_of(&vdir, &vrel, base).pop().unwrap_or(vname);
            return Ok(kept(vdir, newest));
        }
        let full = |e: io::Error| self.io_error(e, format!("keep {name:?} in the versions folder"));
        match self.link(dir, base, &vdir, &vname) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // The trash can's older entry, or a version of the same
                // second: replaced, as Syncthing's rename would.
                let temp = proto::bep::global::temp_basename(&vname);
                let _ = vdir.remove_file(&temp);
                dir.link(base, &vdir, &temp).map_err(full)?;
                vdir.rename(&temp, &vdir, &vname, Rename::Replace)
                    .map_err(full)?;
            }
            Err(e) if cannot_link(&e) => {
                store::copy_across(dir, base, &vdir, &vname).map_err(full)?;
            }
            Err(e) => return Err(full(e)),
        }
        self.note_version(&vrel, base, &vname, true);
        self.metrics.kept.inc();
        self.metrics.bytes.inc_by(meta.len() as i64);
        tracing::debug!(folder = %self.folder, file = ?name, version = ?vname, "old version kept");
        Ok(kept(vdir, vname))
    }

    /// Whether tests force the copy path.
    fn copies(&self) -> bool {
        #[cfg(test)]
        return self.force_copy;
        #[cfg(not(test))]
        false
    }

    fn link(&self, dir: &Dir, base: &str, vdir: &Dir, vname: &str) -> io::Result<()> {
        if self.copies() {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        dir.link(base, vdir, vname)
    }

    fn rename(&self, dir: &Dir, base: &str, vdir: &Dir, vname: &str) -> io::Result<()> {
        if self.copies() {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        dir.rename(base, vdir, vname, Rename::Replace)
    }

    fn io_error(&self, e: io::Error, what: String) -> Error {
        if is_disk_full(&e) {
            Error::DiskFull {
                path: self
                    .location()
                    .map(|l| l.path(&self.folder_path))
                    .unwrap_or_default(),
                source: e,
            }
        } else {
            Error::io(what, e)
        }
    }

    /// Moves the regular file `name` (in `dir`) into the versions folder
    /// instead of deleting it. `Ok(false)`: nothing there to keep (not a
    /// regular file: the caller removes it as without versioning).
    pub fn archive_deleted(
        &self,
        root: &Dir,
        dir: &Dir,
        name: &str,
        now: SystemTime,
    ) -> Result<bool, Error> {
        let Some(meta) = regular_file(dir, name) else {
            return Ok(false);
        };
        if let Versioning::External { .. } = self.mode {
            return self.run_external(dir, name).map(|()| true);
        }
        self.move_version(root, dir, name, &meta, now, true)
            .map(|()| true)
            .map_err(|e| self.failed(e))
    }

    /// The file a restore replaces, kept as a version (without applying
    /// the rules: they might drop the very version being restored).
    pub(crate) fn keep_current(
        &self,
        root: &Dir,
        dir: &Dir,
        name: &str,
        meta: &std::fs::Metadata,
        now: SystemTime,
    ) -> Result<(), Error> {
        self.move_version(root, dir, name, meta, now, false)
    }

    fn move_version(
        &self,
        root: &Dir,
        dir: &Dir,
        name: &str,
        meta: &std::fs::Metadata,
        now: SystemTime,
        rules: bool,
    ) -> Result<(), Error> {
        let base = basename(name);
        let (vdir, vrel, vname) = self.slot(root, name, now)?;
        let full =
            |e: io::Error| self.io_error(e, format!("move {name:?} into the versions folder"));
        if self.already_kept(&vdir, &vrel, dir, base, meta) {
            dir.remove_file(base).map_err(full)?;
        } else {
            match self.rename(dir, base, &vdir, &vname) {
                Ok(()) => {}
                Err(e) if cannot_link(&e) => {
                    store::copy_across(dir, base, &vdir, &vname).map_err(full)?;
                    dir.remove_file(base).map_err(full)?;
                }
                Err(e) => return Err(full(e)),
            }
            self.note_version(&vrel, base, &vname, true);
            self.metrics.kept.inc();
            self.metrics.bytes.inc_by(meta.len() as i64);
            tracing::debug!(folder = %self.folder, file = ?name, version = ?vname, "deleted file kept");
        }
        let kept = Kept {
            vdir,
            vrel,
            vname,
            base: base.to_string(),
        };
        if rules {
            kept.finish(self, now);
        } else if let Versioning::Trashcan { .. } = self.mode {
            let _ = kept.vdir.set_mtime(&kept.vname, now);
        }
        Ok(())
    }
}

/// Tags have whole seconds: a second version of the same file within one
/// second (or the file a restore replaces, archived in the second its
/// version was) would take an existing name, and Syncthing's rename would
/// destroy that version. The next free second is taken instead (a version
/// then shows at most a few seconds late; none is lost).
fn free_name(vdir: &Dir, base: &str, now: SystemTime) -> String {
    const LATEST: u64 = 60;
    for k in 0..LATEST {
        let name = tag::tag_filename(
            base,
            &tag::format_tag(now + std::time::Duration::from_secs(k)),
        );
        if !vdir.exists(&name) {
            return name;
        }
    }
    tag::tag_filename(
        base,
        &tag::format_tag(now + std::time::Duration::from_secs(LATEST)),
    )
}

/// Errors of link(2)/rename(2) that copying gets around: another
/// filesystem, or one without hard links.
fn cannot_link(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::EMLINK)
    )
}

impl Kept {
    /// Once the new file is in place: the trash can's entry gets the
    /// archive time as its mtime (its cleanout counts from there, as in
    /// Syncthing; done now, since before the swap the inode was still the
    /// folder's file), and simple or staggered versioning drop what their
    /// rules no longer keep of this file's versions.
    pub fn finish(self, v: &Versioner, now: SystemTime) {
        match v.mode {
            Versioning::Trashcan { .. } => {
                let _ = self.vdir.set_mtime(&self.vname, now);
            }
            Versioning::Simple {
                keep,
                cleanout_days,
            } => {
                let list = v.versions_of(&self.vdir, &self.vrel, &self.base);
                let gone = select::simple(&list, keep, Versioning::cleanout(cleanout_days), now);
                self.remove(v, gone);
            }
            Versioning::Staggered { max_age_s } => {
                let list = v.versions_of(&self.vdir, &self.vrel, &self.base);
                let gone = select::staggered(&list, max_age_s, now);
                self.remove(v, gone);
            }
            Versioning::None | Versioning::External { .. } => {}
        }
    }

    fn remove(&self, v: &Versioner, gone: Vec<String>) {
        for name in gone {
            let size = self.vdir.stat(&name).map_or(0, |m| m.len());
            match self.vdir.remove_file(&name) {
                Ok(()) => {
                    v.metrics.kept.dec();
                    v.metrics.bytes.dec_by(size as i64);
                    tracing::debug!(folder = %v.folder, version = ?join(&self.vrel, &name), "old version removed by the versioning rules");
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(folder = %v.folder, version = ?join(&self.vrel, &name), error = %e, "cannot remove an old version");
                }
            }
            v.note_version(&self.vrel, &self.base, &name, false);
        }
    }
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}
