//! Answering a peer's Request from disk: the name is checked, the file is
//! opened one path component at a time without following any symlink (so a
//! request can never read outside the folder, even if the tree changes
//! under us), the data is read and checked against the requested hash.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proto::bep::limits::MAX_REQUEST_SIZE;
use proto::bep::names;
use proto::bep::wire::{ErrorCode, Request};
use sha2::{Digest, Sha256};

/// Outcome of serving a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    Data(Vec<u8>),
    Error(ErrorCode),
    /// The data on disk does not match the requested hash: NO_SUCH_FILE to
    /// the peer, and the file must be rescanned.
    Stale,
}

/// Serves `req` from the folder at `root` (already checked to be shared
/// with the requester and not paused).
pub fn serve(root: &Path, req: &Request) -> Served {
    if req.size < 0 || req.offset < 0 {
        return Served::Error(ErrorCode::InvalidFile);
    }
    let size = req.size as usize;
    if size > MAX_REQUEST_SIZE {
        return Served::Error(ErrorCode::InvalidFile);
    }
    if names::validate(&req.name).is_err() {
        return Served::Error(ErrorCode::Generic);
    }
    if names::is_reserved(&req.name) {
        return Served::Error(ErrorCode::InvalidFile);
    }
    let file = match open_beneath(root, &req.name) {
        Ok(f) => f,
        Err(code) => return Served::Error(code),
    };
    let mut data = vec![0u8; size];
    let mut n = 0;
    while n < size {
        match file.read_at(&mut data[n..], req.offset as u64 + n as u64) {
            Ok(0) => break, // EOF: the bytes available
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Served::Error(ErrorCode::Generic),
        }
    }
    data.truncate(n);
    // Like Syncthing 2.x: what we read must be the block asked for
    // (SHA-256; 2.x dropped the weak hash a 1.x requester still sends, and
    // we ignore it too). A Request without a hash never gets here: the
    // connection refuses it (2.1.2's rule).
    if Sha256::digest(&data)[..] != req.hash[..] {
        return Served::Stale;
    }
    Served::Data(data)
}

/// Opens `name` (validated: relative, no `.`/`..`) below `root`, refusing
/// symlinks at every component and anything but a regular file at the end.
fn open_beneath(root: &Path, name: &str) -> Result<File, ErrorCode> {
    let root_c = CString::new(root.as_os_str().as_bytes()).map_err(|_| ErrorCode::Generic)?;
    // SAFETY: plain open(2) of a NUL-terminated path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            root_c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(ErrorCode::Generic);
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let parts: Vec<&str> = name.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let c = CString::new(*part).map_err(|_| ErrorCode::Generic)?;
        let flags = libc::O_RDONLY
            | libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | if last {
                libc::O_NONBLOCK
            } else {
                libc::O_DIRECTORY
            };
        // SAFETY: openat(2) relative to a directory fd we own.
        let fd = unsafe { libc::openat(std::os::fd::AsRawFd::as_raw_fd(&dir), c.as_ptr(), flags) };
        if fd < 0 {
            // ELOOP / ENOTDIR: a symlink or a non-directory on the way.
            return Err(ErrorCode::NoSuchFile);
        }
        // SAFETY: as above.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    let file = File::from(dir);
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        _ => Err(ErrorCode::NoSuchFile),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, offset: i64, size: i32, data: &[u8]) -> Request {
        Request {
            name: name.into(),
            offset,
            size,
            hash: Sha256::digest(data).to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn serves_only_regular_files_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("f");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join(".stfolder")).unwrap();
        std::fs::write(root.join("sub/a.txt"), b"hello world\n").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("link")).unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("subl")).unwrap();

        let ok = serve(&root, &req("sub/a.txt", 0, 12, b"hello world\n"));
        assert_eq!(ok, Served::Data(b"hello world\n".to_vec()));
        // Past EOF: what is there.
        assert_eq!(
            serve(&root, &req("sub/a.txt", 6, 100, b"world\n")),
            Served::Data(b"world\n".to_vec())
        );
        assert_eq!(
            serve(&root, &req("sub/a.txt", 0, 12, b"other")),
            Served::Stale
        );
        let secret = b"secret";
        for (name, code) in [
            ("../secret", ErrorCode::Generic),
            ("/etc/passwd", ErrorCode::Generic),
            ("sub/../../secret", ErrorCode::Generic),
            ("link", ErrorCode::NoSuchFile),
            ("up/secret", ErrorCode::NoSuchFile),
            ("subl/a.txt", ErrorCode::NoSuchFile),
            ("sub", ErrorCode::NoSuchFile),
            ("missing", ErrorCode::NoSuchFile),
            (".stfolder", ErrorCode::InvalidFile),
        ] {
            assert_eq!(
                serve(&root, &req(name, 0, 6, secret)),
                Served::Error(code),
                "{name}"
            );
        }
        assert_eq!(
            serve(&root, &req("sub/a.txt", -1, 6, secret)),
            Served::Error(ErrorCode::InvalidFile)
        );
        assert_eq!(
            serve(&root, &req("sub/a.txt", 0, i32::MAX, secret)),
            Served::Error(ErrorCode::InvalidFile)
        );
    }
}
