//! File versioning as Syncthing 2.1.3 has it: what a *remote* change
//! replaces or deletes is kept aside in the versions folder (`.stversions`
//! in the folder, or `fsPath`), then listed, restored and cleaned up.
//!
//! * [`tag`] — version names (`name~YYYYMMDD-HHMMSS.ext`, local time).
//! * [`select`] — which versions a cleanup removes (simple, staggered),
//!   pure functions of the names and `now`.
//! * [`store`] — where the versions folder is, reaching directories in it
//!   without crossing a symlink, copying across filesystems.
//! * [`archive`] — keeping a file that is about to be replaced or deleted.
//! * [`list`] — `GET/POST /rest/folder/versions`: listing and restoring.
//! * [`cleanup`] — the periodic and on-demand cleanup.
//! * [`external`] — the external versioner's command.
//!
//! Invariants (see ARCHITECTURE.md): a replaced file is hard-linked into
//! the versions folder *before* the new one is renamed over it, so a crash
//! in between leaves the old file in place and its version the same
//! inode, and the redo recognises it and makes no second copy; every step
//! goes through directory handles (`crate::dirfd`) opened without
//! following symlinks; a failure to keep a version fails that file's pull
//! and leaves the file as it was.

pub mod archive;
pub mod cleanup;
pub mod external;
pub mod list;
pub mod select;
pub mod store;
pub mod tag;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{FolderConfig, Versioning};
use store::Location;

/// Why keeping, listing, restoring or cleaning versions failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the versions folder {0}")]
    Location(String),
    #[error("cannot keep the old version in the versions folder {path}: the disk is full; the file was left as it was")]
    DiskFull {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    External(#[from] external::ExternalError),
    #[error("version not found")]
    NotFound,
    #[error("cannot restore on top of a directory")]
    Directory,
    #[error("version restoration not supported with the current versioner")]
    NotSupported,
    #[error("folder has no versioner")]
    NoVersioner,
}

impl Error {
    /// The `kind` label of `node_versioning_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Location(_) => "location",
            Error::DiskFull { .. } => "disk_full",
            Error::Io { .. } => "io",
            Error::External(_) => "external",
            Error::NotFound | Error::Directory | Error::NotSupported | Error::NoVersioner => {
                "restore"
            }
        }
    }

    fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The gauges and counters of one folder's versions (see
/// `crate::metrics::Metrics::versioning`).
#[derive(Clone, Default)]
pub struct Metrics {
    /// Versions kept (files in the versions folder), set by listings and
    /// cleanups and moved by archives in between.
    pub kept: Gauge,
    pub bytes: Gauge,
    /// Errors by kind (`Error::kind`).
    pub errors: Vec<(&'static str, Counter)>,
}

impl Metrics {
    /// The series of `folder` in the node's metrics (every error kind
    /// registered, so it shows at 0).
    pub fn of(m: &crate::metrics::Metrics, folder: &str) -> Metrics {
        let f = || ("folder", folder.to_string());
        Metrics {
            kept: m.versions_kept.get_or_create(&[f()]).clone(),
            bytes: m.versions_bytes.get_or_create(&[f()]).clone(),
            errors: ERROR_KINDS
                .iter()
                .map(|k| {
                    let c = m
                        .versioning_errors
                        .get_or_create(&[f(), ("kind", k.to_string())])
                        .clone();
                    (*k, c)
                })
                .collect(),
        }
    }

    fn error(&self, e: &Error) {
        if let Some((_, c)) = self.errors.iter().find(|(k, _)| *k == e.kind()) {
            c.inc();
        }
    }
}

/// Every `Error::kind`, for registering the series up front.
pub const ERROR_KINDS: &[&str] = &["location", "disk_full", "io", "external", "restore"];

/// One folder's versioner: its settings, where its versions are, and
/// (for a pull round) what it learnt of the versions folder's directories.
pub struct Versioner {
    pub folder: String,
    pub folder_path: PathBuf,
    pub mode: Versioning,
    location: Result<Location, String>,
    metrics: Metrics,
    /// Versions per original base name, per versions-folder directory,
    /// read once per directory (the first time a file there is archived):
    /// per-file cleanup after an archive then never lists a directory
    /// again, however many of its files a round replaces.
    listed: Mutex<HashMap<String, HashMap<String, Vec<String>>>>,
    /// Tests: behave as if the versions folder were on another
    /// filesystem (the copy path).
    #[cfg(test)]
    pub force_copy: bool,
}

impl Versioner {
    /// The folder's versioner; `None` when versioning is off.
    pub fn for_folder(f: &FolderConfig, metrics: Metrics) -> Option<Versioner> {
        let mode = f.versioning.mode().clone();
        if mode == Versioning::None {
            return None;
        }
        Some(Versioner {
            folder: f.id.clone(),
            folder_path: f.path.clone(),
            mode,
            location: Location::resolve(&f.path, f.versioning.fs_path()),
            metrics,
            listed: Mutex::new(HashMap::new()),
            #[cfg(test)]
            force_copy: false,
        })
    }

    pub fn location(&self) -> Result<&Location, Error> {
        self.location
            .as_ref()
            .map_err(|e| Error::Location(e.clone()))
    }

    /// The versions folder, opened without creating it: `None` when it
    /// does not exist yet (nothing kept).
    fn open_existing(&self, root: &crate::dirfd::Dir) -> Result<Option<crate::dirfd::Dir>, Error> {
        let loc = self.location()?;
        loc.open(root, false).map_err(|e| {
            self.failed(Error::io(
                format!(
                    "open the versions folder {}",
                    loc.path(&self.folder_path).display()
                ),
                e,
            ))
        })
    }

    /// Counts `e` and hands it back.
    fn failed(&self, e: Error) -> Error {
        self.metrics.error(&e);
        e
    }
}

/// The versions folder inside `f`'s folder, if it is inside (what the
/// scanner must never look at besides `.stversions`).
pub fn in_folder_dir(f: &FolderConfig) -> Option<String> {
    match Location::resolve(&f.path, f.versioning.fs_path()) {
        Ok(Location::InFolder(rel)) => Some(rel),
        _ => None,
    }
}
