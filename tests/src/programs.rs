//! Where the programs under test are.

use std::path::{Path, PathBuf};

/// Path of a program of a real peer (e.g. `syncthing`), or a failure naming
/// the Debian package that provides it.
pub fn require_program(program: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    });
    match found {
        Some(path) => path,
        None => panic!(
            "`{program}` is not installed; this test needs the real peer from Debian's package \
             `{package}` (as root: apt-get install -y {package}; scripts/test installs it)"
        ),
    }
}

/// Path of one of this workspace's binaries, built next to the test
/// executable (`target/<profile>/<name>`); `E2E_BIN_DIR` overrides the folder.
pub fn our_binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/<test-exe>
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .expect("test executable lives in target/<profile>/deps")
        }
    };
    let path = dir.join(name);
    assert!(
        is_executable(&path),
        "{} is missing: build the workspace first (cargo build --workspace, which scripts/test does)",
        path.display()
    );
    path
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
