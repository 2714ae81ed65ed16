//! A FAT filesystem for tests that need one: no permissions, no owners,
//! case-insensitive names (the SMB/NAS volumes studios sync).

use std::time::Duration;

use crate::wait;

/// A FAT image mounted with `fusefat` (FUSE: no kernel vfat module
/// needed) at `mount`; unmounted when dropped. None, with the reason
/// printed, where this cannot work (not root: /dev/fuse is root's).
pub struct FatMount {
    pub mount: std::path::PathBuf,
    proc: Option<crate::Proc>,
}

impl FatMount {
    pub fn new(dir: &std::path::Path) -> Option<FatMount> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run this test as root: mounting a FAT image needs it"
            );
            eprintln!("SKIPPED: mounting a FAT image needs root (CI runs as root)");
            return None;
        }
        if !std::path::Path::new("/dev/fuse").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "no /dev/fuse on this CI machine: the FAT mount tests cannot run"
            );
            eprintln!("SKIPPED: no /dev/fuse on this machine");
            return None;
        }
        let mkfs = crate::require_program("mkfs.vfat", "dosfstools");
        let fusefat = crate::require_program("fusefat", "fusefat");
        crate::require_program("fusermount", "fuse3");
        let image = dir.join("fat.img");
        let mount = dir.join("fat");
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let out = std::process::Command::new(mkfs)
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs.vfat: {out:?}");
        let mut cmd = std::process::Command::new(fusefat);
        cmd.args(["-f", "-o", "rw+"]).arg(&image).arg(&mount);
        let proc = crate::Proc::spawn("fusefat", cmd, &dir.join("fusefat.log"));
        let mounted = wait::until(Duration::from_secs(10), Duration::from_millis(50), || {
            let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
            mounts
                .contains(&format!(" {} ", mount.display()))
                .then_some(())
        });
        assert!(mounted.is_some(), "fusefat did not mount: {}", proc.log());
        Some(FatMount {
            mount,
            proc: Some(proc),
        })
    }
}

impl Drop for FatMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fusermount")
            .arg("-u")
            .arg(&self.mount)
            .status();
        if let Some(mut p) = self.proc.take() {
            if p.wait_exit(Duration::from_secs(5)).is_none() {
                p.stop(Duration::from_secs(2));
            }
        }
    }
}
