//! Test trees: deterministic file contents, building a folder of many
//! kinds of entries, and a comparable description of a tree.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A file of `mib` MiB of [`bytes`], each MiB seeded `seed + its index`.
pub fn write_mib_file(path: &Path, mib: u64, seed: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in 0..mib {
        f.write_all(&bytes(seed + chunk, 1 << 20)).unwrap();
    }
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    proto::bep::blocks::hash_block(0, data).hash
}

/// Builds the test tree; returns the number of regular files.
pub fn build_tree(root: &Path, small_files: usize, big_mib: usize) -> u64 {
    std::fs::create_dir_all(root).unwrap();
    let mut files = 0;
    for i in 0..small_files {
        let dir = root.join(format!("dir{}/sub{}", i % 7, i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("file {i}.dat")),
            bytes(i as u64, (i * 37) % 6000),
        )
        .unwrap();
        files += 1;
    }
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("name with spaces.txt"), b"spaces\n").unwrap();
    std::fs::write(root.join("ünïcødé ファイル.txt"), "non-ASCII\n").unwrap();
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    let script = root.join("run.sh");
    std::fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    write_mib_file(&root.join("big.bin"), big_mib as u64, 1000);
    std::os::unix::fs::symlink("dir0/sub0/file 0.dat", root.join("link")).unwrap();
    files + 5
}

/// Every entry below `root` (without `.stfolder` and temp files): kind,
/// mode, content hash.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let base = e.file_name().to_string_lossy().into_owned();
            if rel == ".stfolder" || base.starts_with(".syncthing.") {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let v = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(root, &p, out);
                format!("dir {:o}", m.permissions().mode() & 0o777)
            } else {
                let data = std::fs::read(&p).unwrap_or_default();
                format!(
                    "file {:o} {} {:?}",
                    m.permissions().mode() & 0o777,
                    data.len(),
                    sha256(&data)
                )
            };
            out.insert(rel, v);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `renameat2(from, to, flags)`: a rename with `RENAME_EXCHANGE` or
/// `RENAME_NOREPLACE`, which std does not offer (tests swap entries under
/// a running node with it).
pub fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let a = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(invalid)?;
    let b = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(invalid)?;
    // SAFETY: two valid NUL-terminated paths, only read by the kernel.
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
