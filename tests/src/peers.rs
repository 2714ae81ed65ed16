//! The versions of real Syncthing the end-to-end tests run against.
//!
//! * **1.19.2** — Debian's packages (`syncthing`, `stdiscosrv`,
//!   `strelaysrv` on PATH), installed by `scripts/test`.
//! * **1.30.0** and **2.1.3** — built from the Go module proxy by
//!   `scripts/build-go-peers` under versioned names (`syncthing-2.1.3`, …)
//!   in `$E2E_PEERS_DIR/bin` (default `$HOME/.cache/node-e2e/peers/bin`),
//!   linked into `/usr/local/bin` when built as root.
//!
//! 1.19.2 and 1.30.0 are required: a test that needs one fails when it is
//! missing. 2.1.3 is what users run, but the module proxy has been seen
//! refusing it; a test case for 2.1.3 then prints a `SKIPPED` line with
//! the proxy's answer (written by `scripts/build-go-peers`) instead of
//! failing, and runs whenever the binaries are there.

use std::path::{Path, PathBuf};

/// A Syncthing release the tests know how to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerVersion {
    /// Debian's packages: what the first wave was built against.
    V1_19_2,
    /// The last 1.x: multiple connections, Hello timestamps, join tokens.
    V1_30_0,
    /// What studios run in 2026.
    V2_1_3,
}

/// The Syncthing programs the tests start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerProgram {
    Syncthing,
    Discosrv,
    Relaysrv,
}

impl PeerProgram {
    fn base_name(self) -> &'static str {
        match self {
            PeerProgram::Syncthing => "syncthing",
            PeerProgram::Discosrv => "stdiscosrv",
            PeerProgram::Relaysrv => "strelaysrv",
        }
    }

    fn debian_package(self) -> &'static str {
        match self {
            PeerProgram::Syncthing => "syncthing",
            PeerProgram::Discosrv => "syncthing-discosrv",
            PeerProgram::Relaysrv => "syncthing-relaysrv",
        }
    }
}

impl PeerVersion {
    /// Every version, oldest first: the matrix of the interop tests.
    pub const ALL: [PeerVersion; 3] = [
        PeerVersion::V1_19_2,
        PeerVersion::V1_30_0,
        PeerVersion::V2_1_3,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PeerVersion::V1_19_2 => "1.19.2",
            PeerVersion::V1_30_0 => "1.30.0",
            PeerVersion::V2_1_3 => "2.1.3",
        }
    }

    /// Syncthing 2.x: new command line, SQLite database, slog lines.
    pub fn is_v2(self) -> bool {
        matches!(self, PeerVersion::V2_1_3)
    }

    /// Speaks multiple connections per device pair (since 1.25).
    pub fn has_multiple_connections(self) -> bool {
        !matches!(self, PeerVersion::V1_19_2)
    }

    /// The newest Syncthing that is built here, for tests that need one
    /// real device and no matrix: 2.1.3 (what users run) when its binary
    /// exists, else 1.30.0 (CI, where the module proxy refuses 2.1.3), else
    /// Debian's 1.19.2. Prints which one (once) when it is not 2.1.3,
    /// so a run that fell back says so.
    pub fn newest_available() -> PeerVersion {
        static NEWEST: std::sync::OnceLock<PeerVersion> = std::sync::OnceLock::new();
        *NEWEST.get_or_init(Self::find_newest)
    }

    fn find_newest() -> PeerVersion {
        let mut why_not = Vec::new();
        for v in [PeerVersion::V2_1_3, PeerVersion::V1_30_0] {
            match v.locate(PeerProgram::Syncthing) {
                Ok(_) => {
                    if !why_not.is_empty() {
                        eprintln!("newest Syncthing available is {v}: {}", why_not.join("; "));
                    }
                    return v;
                }
                Err(why) => why_not.push(why),
            }
        }
        eprintln!(
            "newest Syncthing available is 1.19.2: {}",
            why_not.join("; ")
        );
        PeerVersion::V1_19_2
    }

    /// Where `program` of this version is, or why it is not there.
    pub fn locate(self, program: PeerProgram) -> Result<PathBuf, String> {
        let base = program.base_name();
        if self == PeerVersion::V1_19_2 {
            return find_on_path(base).ok_or_else(|| {
                format!(
                    "`{base}` (Syncthing 1.19.2) is not installed; install Debian's package `{}` \
                     (scripts/test does)",
                    program.debian_package()
                )
            });
        }
        let name = format!("{base}-{}", self.label());
        let in_cache = peers_bin_dir().join(&name);
        if is_executable(&in_cache) {
            return Ok(in_cache);
        }
        if let Some(found) = find_on_path(&name) {
            return Ok(found);
        }
        let answer =
            std::fs::read_to_string(peers_bin_dir().join(format!("UNAVAILABLE-{}", self.label())))
                .map(|a| format!("; the Go module proxy answered: {}", a.trim()))
                .unwrap_or_default();
        Err(format!(
            "`{name}` (Syncthing {}) is not built in {} nor on PATH{answer}; \
             scripts/build-go-peers builds it",
            self.label(),
            peers_bin_dir().display()
        ))
    }

    /// `program` of this version, or a failure saying how to get it; for
    /// the versions a test cannot do without (1.19.2 and 1.30.0).
    pub fn require(self, program: PeerProgram) -> PathBuf {
        self.locate(program).unwrap_or_else(|why| panic!("{why}"))
    }
}

impl std::fmt::Display for PeerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The versions `test` runs against for `program`: 1.19.2 and 1.30.0 must
/// be there (else the test fails); 2.1.3 is included when it is built,
/// else a `SKIPPED` line says why.
pub fn matrix(test: &str, program: PeerProgram) -> Vec<PeerVersion> {
    PeerVersion::ALL
        .into_iter()
        .filter(|v| available(*v, test, program))
        .collect()
}

/// Whether `version` of `program` can run for `test`; panics for a
/// required version that is missing, prints a `SKIPPED` line for a
/// missing 2.1.3.
pub fn available(version: PeerVersion, test: &str, program: PeerProgram) -> bool {
    match version.locate(program) {
        Ok(_) => true,
        Err(why) if version == PeerVersion::V2_1_3 => {
            eprintln!("SKIPPED {test} against Syncthing {version}: {why}");
            false
        }
        Err(why) => panic!("{test}: {why}"),
    }
}

/// `$E2E_PEERS_DIR/bin`, default `$HOME/.cache/node-e2e/peers/bin`.
pub fn peers_bin_dir() -> PathBuf {
    match std::env::var_os("E2E_PEERS_DIR") {
        Some(dir) => PathBuf::from(dir).join("bin"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/node-e2e/peers/bin")
        }
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The versions a benchmark compares against: `$BENCH_PEERS` (a comma
/// list such as `1.19.2,2.1.3`), default 1.19.2 and 2.1.3 — the first
/// wave's reference and what users run now. A version that is not built
/// is left out with a `SKIPPED` line.
pub fn bench_versions(bench: &str) -> Vec<PeerVersion> {
    let wanted = std::env::var("BENCH_PEERS").unwrap_or_else(|_| "1.19.2,2.1.3".into());
    wanted
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            PeerVersion::ALL
                .into_iter()
                .find(|v| v.label() == w)
                .unwrap_or_else(|| panic!("BENCH_PEERS: unknown Syncthing version {w:?}"))
        })
        .filter(|v| match v.locate(PeerProgram::Syncthing) {
            Ok(_) => true,
            Err(why) => {
                eprintln!("SKIPPED {bench} against Syncthing {v}: {why}");
                println!("BENCH SKIPPED Syncthing {v}: {why}");
                false
            }
        })
        .collect()
}

/// One `#[test]` function per Syncthing version for a scenario
/// `fn case(version: PeerVersion)`, so the harness runs them in parallel
/// and a failure names the version; a missing 2.1.3 prints `SKIPPED` with
/// the reason ([`available`]), a missing 1.19.2 or 1.30.0 fails.
///
/// ```ignore
/// e2e::per_version!(serve_tree:
///     serves_a_tree_to_1_30_0 => PeerVersion::V1_30_0,
///     serves_a_tree_to_2_1_3 => PeerVersion::V2_1_3,
/// );
/// ```
#[macro_export]
macro_rules! per_version {
    ($case:ident: $($name:ident => $version:expr),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let version: $crate::peers::PeerVersion = $version;
                if $crate::peers::available(
                    version,
                    stringify!($name),
                    $crate::peers::PeerProgram::Syncthing,
                ) {
                    $case(version);
                }
            }
        )+
    };
}
