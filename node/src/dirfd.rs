//! Directory handles: every step of a pull that touches the disk is made
//! relative to an open directory, never through a path.
//!
//! A path is looked up again by the kernel at every call, so "checked, then
//! used" by path leaves a window in which a local user (or any process on
//! the NAS) can swap a directory inside the folder for a symlink to
//! somewhere else and redirect the write, rename, chmod or delete that
//! follows. A [`Dir`] is reached from the folder root without following any
//! symlink (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or one
//! `O_NOFOLLOW | O_DIRECTORY` component at a time where `openat2` is
//! missing), and everything below takes a single name inside it (`*at`
//! calls, `O_NOFOLLOW` on the last component): whatever happens to the
//! paths afterwards, the operation lands in the directory that was checked,
//! or fails.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

/// An open directory; names given to its methods are single path
/// components (no `/`), as checked by `proto::bep::names` for peer names.
#[derive(Debug)]
pub struct Dir(OwnedFd);

/// What a directory entry is, as its listing says (symlinks not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// How [`Dir::rename`] may treat an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rename {
    /// Replaces the target (`rename(2)`).
    Replace,
    /// Fails with `EEXIST` if the target exists.
    NoReplace,
    /// Swaps source and target atomically; both must exist.
    Exchange,
}

/// Whether an error says "a symlink or a non-directory was on the way"
/// (what [`Dir::open_beneath`] and [`Dir::child`] refuse to cross).
pub fn is_not_a_dir(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EXDEV)
    )
}

fn one_component(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single path component"),
        ));
    }
    Ok(name)
}

/// Directories only, close-on-exec, never following a final symlink.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Dir {
    /// Opens the folder root. The configured path itself may go through
    /// symlinks (the operator chose it); nothing below it will.
    pub fn open(root: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir(fd))
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir(self.0.try_clone()?))
    }

    /// The directory at `rel` (`a/b/c`, validated: no `.`, `..` or empty
    /// component) below this one; `""` is this one. Fails with `ELOOP`,
    /// `ENOTDIR` or `EXDEV` ([`is_not_a_dir`]) when a component is a
    /// symlink or not a directory, `ENOENT` when one is missing.
    pub fn open_beneath(&self, rel: &str) -> io::Result<Dir> {
        if rel.is_empty() {
            return self.try_clone();
        }
        for part in rel.split('/') {
            one_component(part)?;
        }
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        for _ in 0..3 {
            match rustix::fs::openat2(&self.0, rel, dir_flags(), Mode::empty(), resolve) {
                Ok(fd) => return Ok(Dir(fd)),
                // The kernel could not rule out a concurrent rename: again.
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                // Before Linux 5.6, or a seccomp filter that does not know
                // openat2 (container runtimes answer ENOSYS or EPERM).
                Err(Errno::NOSYS) | Err(Errno::PERM) => return self.walk(rel),
                Err(e) => return Err(e.into()),
            }
        }
        self.walk(rel)
    }

    /// [`Dir::open_beneath`] one component at a time: each step is an
    /// `openat(O_NOFOLLOW | O_DIRECTORY)` relative to the previous one.
    pub fn walk(&self, rel: &str) -> io::Result<Dir> {
        let mut dir = self.try_clone()?;
        for part in rel.split('/') {
            dir = dir.child(part)?;
        }
        Ok(dir)
    }

    /// The subdirectory `name`; a symlink there fails with `ELOOP`, a
    /// non-directory with `ENOTDIR`.
    pub fn child(&self, name: &str) -> io::Result<Dir> {
        let fd = rustix::fs::openat(&self.0, one_component(name)?, dir_flags(), Mode::empty())?;
        Ok(Dir(fd))
    }

    /// `mkdirat`: a new directory `name` (the umask applies).
    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<()> {
        rustix::fs::mkdirat(&self.0, one_component(name)?, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// What is at `name`, the entry itself (a symlink is not followed).
    pub fn stat(&self, name: &str) -> io::Result<Metadata> {
        // An O_PATH descriptor opens nothing (no FIFO wait, no device
        // side effect) and gives std's Metadata, which the scanner's
        // comparisons take.
        let fd = rustix::fs::openat(
            &self.0,
            one_component(name)?,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        File::from(fd).metadata()
    }

    /// Whether something (anything) is at `name`.
    pub fn exists(&self, name: &str) -> bool {
        self.stat(name).is_ok()
    }

    /// Opens the regular file `name` read-only; a symlink, FIFO or device
    /// there fails.
    pub fn open_read(&self, name: &str) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.0,
            one_component(name)?,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        regular(File::from(fd))
    }

    /// Opens the regular file `name` read-write, creating it with `mode`
    /// if absent (`O_CREAT | O_EXCL`: never through a symlink, never an
    /// entry someone else created in between).
    pub fn open_or_create(&self, name: &str, mode: u32) -> io::Result<File> {
        let name = one_component(name)?;
        loop {
            match rustix::fs::openat(
                &self.0,
                name,
                OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => return regular(File::from(fd)),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            match self.create_new(name, mode) {
                // Created by someone else since: open that one (checked).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                r => return r,
            }
        }
    }

    /// Creates the regular file `name`, failing if anything is there.
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.0,
            one_component(name)?,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// `renameat2(self, from, to_dir, to)`.
    pub fn rename(&self, from: &str, to_dir: &Dir, to: &str, how: Rename) -> io::Result<()> {
        let flags = match how {
            Rename::Replace => RenameFlags::empty(),
            Rename::NoReplace => RenameFlags::NOREPLACE,
            Rename::Exchange => RenameFlags::EXCHANGE,
        };
        rustix::fs::renameat_with(
            &self.0,
            one_component(from)?,
            &to_dir.0,
            one_component(to)?,
            flags,
        )?;
        Ok(())
    }

    /// `linkat(self, from, to_dir, to)` without `AT_SYMLINK_FOLLOW`: a
    /// second name for the entry `from` itself (a symlink there is linked
    /// as a symlink, never its target). Fails with `EEXIST` if `to` exists
    /// and `EXDEV` across filesystems.
    pub fn link(&self, from: &str, to_dir: &Dir, to: &str) -> io::Result<()> {
        rustix::fs::linkat(
            &self.0,
            one_component(from)?,
            &to_dir.0,
            one_component(to)?,
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Sets the modification (and access) time of the entry `name`
    /// itself (`utimensat` with `AT_SYMLINK_NOFOLLOW`).
    pub fn set_mtime(&self, name: &str, mtime: std::time::SystemTime) -> io::Result<()> {
        let d = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let t = rustix::fs::Timespec {
            tv_sec: d.as_secs() as _,
            tv_nsec: d.subsec_nanos() as _,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(
            &self.0,
            one_component(name)?,
            &times,
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// `unlinkat`: removes the non-directory `name` (a symlink itself,
    /// never its target).
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.0, one_component(name)?, AtFlags::empty())?;
        Ok(())
    }

    /// `unlinkat(AT_REMOVEDIR)`: removes the empty directory `name`.
    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.0, one_component(name)?, AtFlags::REMOVEDIR)?;
        Ok(())
    }

    /// `symlinkat`: a symlink `name` pointing at `target` (not resolved).
    pub fn symlink(&self, target: &[u8], name: &str) -> io::Result<()> {
        rustix::fs::symlinkat(OsStr::from_bytes(target), &self.0, one_component(name)?)?;
        Ok(())
    }

    /// Sets this directory's permission bits (`fchmod` on the held
    /// descriptor: chmod by path would follow a symlink put there in the
    /// meantime).
    pub fn set_permissions(&self, mode: u32) -> io::Result<()> {
        rustix::fs::fchmod(&self.0, Mode::from_raw_mode(mode & 0o7777))?;
        Ok(())
    }

    /// This directory's owner and group (uid, gid).
    pub fn owner(&self) -> io::Result<(u32, u32)> {
        let st = rustix::fs::fstat(&self.0)?;
        Ok((st.st_uid, st.st_gid))
    }

    /// Gives the entry `name` (not following a symlink) this directory's
    /// owner and group: Syncthing's `copyOwnershipFromParent`.
    pub fn give_own_owner(&self, name: &str) -> io::Result<()> {
        let name = one_component(name)?;
        let (uid, gid) = self.owner()?;
        rustix::fs::chownat(
            &self.0,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Makes renames and removals in this directory durable.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.0)?;
        Ok(())
    }

    /// (available to us, total) bytes of the filesystem holding this
    /// directory.
    pub fn free_space(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstatvfs(&self.0)?;
        Ok((
            st.f_bavail.saturating_mul(st.f_frsize),
            st.f_blocks.saturating_mul(st.f_frsize),
        ))
    }

    /// The entries of this directory (not `.` and `..`), read as they come
    /// (a directory may be huge): name and kind.
    pub fn entries(&self) -> io::Result<Entries<'_>> {
        Ok(Entries {
            dir: self,
            inner: rustix::fs::Dir::read_from(&self.0)?,
        })
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

fn regular(f: File) -> io::Result<File> {
    if f.metadata()?.is_file() {
        Ok(f)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

/// Iterator over a directory's entries; unreadable entries are skipped.
pub struct Entries<'a> {
    dir: &'a Dir,
    inner: rustix::fs::Dir,
}

impl Iterator for Entries<'_> {
    type Item = (OsString, Kind);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let e = match self.inner.next()? {
                Ok(e) => e,
                // A failing read ends the listing (like std's read_dir
                // users here, which skip errors).
                Err(_) => return None,
            };
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from_vec(name.to_vec());
            use rustix::fs::FileType as T;
            let kind = match e.file_type() {
                T::Directory => Kind::Dir,
                T::RegularFile => Kind::File,
                T::Symlink => Kind::Symlink,
                // Some filesystems do not fill in the type: ask.
                T::Unknown => match rustix::fs::statat(
                    &self.dir.0,
                    name.as_os_str(),
                    AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) => match T::from_raw_mode(st.st_mode) {
                        T::Directory => Kind::Dir,
                        T::RegularFile => Kind::File,
                        T::Symlink => Kind::Symlink,
                        _ => Kind::Other,
                    },
                    Err(_) => continue,
                },
                _ => Kind::Other,
            };
            return Some((name, kind));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("f");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::fs::set_permissions(
            tmp.path().join("outside"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::fs::write(tmp.path().join("outside/victim"), b"keep").unwrap();
        std::fs::set_permissions(
            tmp.path().join("outside/victim"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let dir = Dir::open(&root).unwrap();
        (tmp, dir)
    }

    fn outside_untouched(tmp: &Path) {
        let o = tmp.join("outside");
        let names: Vec<_> = std::fs::read_dir(&o)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from("victim")]);
        assert_eq!(std::fs::read(o.join("victim")).unwrap(), b"keep");
        let mode = std::fs::metadata(o.join("victim"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(&o).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
    }

    #[test]
    fn symlinks_are_never_crossed_by_either_lookup() {
        let (tmp, root) = setup();
        let f = tmp.path().join("f");
        std::os::unix::fs::symlink(tmp.path().join("outside"), f.join("link")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), f.join("a/link")).unwrap();
        std::fs::write(f.join("file"), b"x").unwrap();
        for lookup in [Dir::open_beneath, Dir::walk] {
            assert!(lookup(&root, "a/b").is_ok());
            for bad in ["link", "a/link", "file", "file/x"] {
                let e = lookup(&root, bad).unwrap_err();
                assert!(is_not_a_dir(&e), "{bad}: {e}");
            }
            assert_eq!(
                lookup(&root, "missing/x").unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
            for bad in ["..", "a/../..", "/etc", "a//b", "."] {
                assert!(lookup(&root, bad).is_err(), "{bad}");
            }
        }
        assert!(root.child("link").is_err_and(|e| is_not_a_dir(&e)));
        outside_untouched(tmp.path());
    }

    /// The attack: a directory is checked and held, then replaced by a
    /// symlink to the outside. Everything through the held handle stays in
    /// the real (moved) directory; every new lookup through the symlink
    /// fails instead of following it.
    #[test]
    fn a_parent_swapped_for_a_symlink_is_not_followed() {
        let (tmp, root) = setup();
        let f = tmp.path().join("f");
        let held = root.open_beneath("a").unwrap();
        let mut keep = held.create_new(".syncthing.x.tmp", 0o600).unwrap();
        keep.write_all(b"pulled").unwrap();
        std::fs::write(f.join("a/victim"), b"inside").unwrap();
        // Swap: "a" now points outside.
        std::fs::rename(f.join("a"), tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), f.join("a")).unwrap();

        // New lookups refuse the symlink, with openat2 and by walking.
        assert!(root.open_beneath("a").is_err_and(|e| is_not_a_dir(&e)));
        assert!(root.walk("a").is_err_and(|e| is_not_a_dir(&e)));
        assert!(root.child("a").is_err_and(|e| is_not_a_dir(&e)));
        // The held handle still means the directory that was checked.
        held.rename(".syncthing.x.tmp", &held, "victim", Rename::Replace)
            .unwrap();
        let f = held.open_read("victim").unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(0o777))
            .unwrap();
        held.symlink(b"/etc/passwd", "l").unwrap();
        held.mkdir("sub", 0o777).unwrap();
        held.child("sub").unwrap().set_permissions(0o700).unwrap();
        assert_eq!(
            held.stat("sub").unwrap().permissions().mode() & 0o777,
            0o700
        );
        held.remove_dir("sub").unwrap();
        held.remove_file("l").unwrap();
        let moved = tmp.path().join("moved");
        assert_eq!(std::fs::read(moved.join("victim")).unwrap(), b"pulled");
        // Removing "a" itself removes the symlink, not what it points to.
        root.remove_file("a").unwrap();
        outside_untouched(tmp.path());
    }

    #[test]
    fn final_components_are_not_followed() {
        let (tmp, root) = setup();
        let a = root.child("a").unwrap();
        let victim = tmp.path().join("outside/victim");
        std::os::unix::fs::symlink(&victim, tmp.path().join("f/a/l")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), tmp.path().join("f/a/d")).unwrap();
        assert!(a.open_read("l").is_err());
        assert!(a.open_or_create("l", 0o600).is_err());
        assert!(a.create_new("l", 0o600).is_err());
        assert!(a.child("d").is_err_and(|e| is_not_a_dir(&e)));
        assert!(a.stat("l").unwrap().file_type().is_symlink());
        assert!(a.mkdir("l", 0o777).is_err());
        assert!(a.remove_dir("d").is_err());
        a.remove_file("l").unwrap();
        // Rename onto a symlink replaces the link itself.
        a.create_new("t", 0o600).unwrap();
        a.rename("t", &a, "d", Rename::Replace).unwrap();
        assert!(a.stat("d").unwrap().is_file());
        outside_untouched(tmp.path());
        // Exchange and no-replace.
        a.create_new("x", 0o600).unwrap().write_all(b"x").unwrap();
        assert_eq!(
            a.rename("x", &a, "d", Rename::NoReplace)
                .unwrap_err()
                .kind(),
            io::ErrorKind::AlreadyExists
        );
        a.rename("x", &a, "d", Rename::Exchange).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("f/a/d")).unwrap(), b"x");
        assert!(a.exists("x"));
        let mut listed: Vec<_> = a.entries().unwrap().collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                (OsString::from("b"), Kind::Dir),
                (OsString::from("d"), Kind::File),
                (OsString::from("x"), Kind::File),
            ]
        );
        let (avail, total) = a.free_space().unwrap();
        assert!(total > 0 && avail <= total);
        a.sync().unwrap();
        // Reuse: an existing regular file is opened, not replaced.
        let f = a.open_or_create("d", 0o600).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1);
        for bad in ["", ".", "..", "a/b", "nul\0"] {
            assert!(a.stat(bad).is_err(), "{bad:?}");
            assert!(a.remove_file(bad).is_err(), "{bad:?}");
        }
    }
}
