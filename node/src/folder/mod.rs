//! A folder's life while the node runs: its runtime state and the loop
//! that scans it, pulls what the cluster has that it lacks, and waits for
//! the next round (a timer, the filesystem watcher or a REST request).
//!
//! Invariant: one loop per configured folder; it ends when the folder
//! leaves the configuration or the node stops.

mod cleanup;
mod progress;
mod round;

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::{mpsc, watch};

use crate::model::{FolderRuntime, FolderState, Node};
use daemon::sync::RwLockExt;

/// Gives every configured folder without one its runtime state and loop.
pub fn start_missing(node: &Arc<Node>) -> Result<()> {
    let config = node.config();
    for f in &config.folders {
        if node.folder_runtime(&f.id).is_some() {
            continue;
        }
        let (_, seq) = node.db.folder_state(&f.id)?;
        if seq == 0 {
            // Nothing of this folder in the index: a new folder, whose
            // path and marker are created as Syncthing creates them. A
            // failure is logged; the scan then reports the folder in error.
            if let Err(e) = crate::scan::create_new_folder(&f.path, &f.id, f.paused, &f.marker_name)
            {
                tracing::error!(folder = %f.id, error = %format!("{e:#}"), "cannot create the new folder");
            }
        }
        // The folder's versioning series show (at 0) from the start, so
        // alerts on them work before the first archive.
        let _ = crate::versioning::Metrics::of(&node.metrics, &f.id);
        let (scan_tx, scan_rx) = mpsc::channel(1);
        let rt = Arc::new(FolderRuntime {
            sequence: watch::channel(seq).0,
            state: std::sync::Mutex::new(FolderState::ScanWaiting),
            scan_now: scan_tx,
            pull_errors: std::sync::Mutex::new(Vec::new()),
            error: std::sync::Mutex::new(None),
            config_changed: Default::default(),
        });
        node.folders.write_locked().insert(f.id.clone(), rt.clone());
        node.shutdown
            .spawn_until_cancelled(round::run(node.clone(), f.id.clone(), scan_rx));
        node.shutdown
            .spawn_until_cancelled(cleanup::run(node.clone(), f.id.clone(), rt));
    }
    Ok(())
}
