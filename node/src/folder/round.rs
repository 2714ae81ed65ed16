//! One folder's loop: scan, then pull, then wait for the next round.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::progress;
use crate::config::{FolderConfig, FolderType};
use crate::model::{FolderRuntime, FolderState, Node};
use crate::{pull, scan};
use daemon::sync::{MutexExt, RwLockExt};

/// Next scan-and-pull round after a round with errors or local changes.
const PULL_RETRY: Duration = Duration::from_secs(10);
/// Next round after a pull found local changes (or made conflict copies).
const RESCAN_SOON: Duration = Duration::from_secs(1);

/// Runs rounds until the folder leaves the configuration, its runtime is
/// dropped or the node stops (the owner drops this future then).
pub async fn run(node: Arc<Node>, folder: String, mut scan_rx: mpsc::Receiver<()>) {
    let mut watcher = None;
    loop {
        let Some(f) = node.folder_config(&folder) else {
            node.folders.write_locked().remove(&folder);
            return;
        };
        let Some(rt) = node.folder_runtime(&folder) else {
            return;
        };
        let scanned_ok = scan(&node, &f, &rt).await;
        // The watcher starts after the first successful scan (the folder
        // exists then) and lives as long as this loop.
        if watcher.is_none() && f.fs_watcher_enabled && scanned_ok {
            watcher = start_watcher(&node, &f, &rt);
        }
        // Then bring the folder to the global version (never for sendonly:
        // remote changes are not applied there).
        let retry_soon = if scanned_ok && !f.read_only() && !f.paused {
            pull_round(&node, &f, &rt).await
        } else {
            None
        };
        tokio::select! {
            r = scan_rx.recv() => if r.is_none() { return },
            _ = tokio::time::sleep(next_wait(&f, retry_soon)) => {}
        }
    }
}

/// Scans the folder on the blocking pool; true if the scan succeeded.
async fn scan(node: &Arc<Node>, f: &FolderConfig, rt: &Arc<FolderRuntime>) -> bool {
    let folder = &f.id;
    rt.set_state(&node.events, folder, FolderState::Scanning);
    let live = Arc::new(scan::Live::default());
    // Dropped when the scan ends, or with this future when the node stops:
    // then the blocking scan is told to stop too, not left running alone.
    let guard = ScanGuard {
        live: live.clone(),
        reporter: tokio::spawn(progress::report(node.clone(), folder.clone(), live.clone())),
    };
    let (node2, rt2, live2) = (node.clone(), rt.clone(), live.clone());
    let (fid, path) = (f.id.clone(), f.path.clone());
    let short = node.my_id.short().0;
    let receive_only = f.kind == FolderType::ReceiveOnly;
    let versions_dir = crate::versioning::in_folder_dir(f);
    let (perms, marker) = (f.perms(), f.marker_name.clone());
    let result = tokio::task::spawn_blocking(move || {
        let target = scan::Target {
            folder: &fid,
            root: &path,
            short_id: short,
            receive_only,
            versions_dir,
            perms,
            marker: &marker,
        };
        scan::scan_folder(
            &node2.db,
            &node2.events,
            target,
            &|seq| {
                rt2.sequence.send_replace(seq);
            },
            &live2,
        )
    })
    .await;
    drop(guard);
    progress::clear_line();
    let failure = match &result {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(e) => Some(format!("scan task failed: {e}")),
    };
    // A folder that cannot be scanned (path or marker missing: maybe an
    // unmounted disk) is in error, as Syncthing shows it; nothing is
    // pulled or announced as deleted until a scan succeeds again.
    let state = if failure.is_some() {
        FolderState::Error
    } else {
        FolderState::Idle
    };
    *rt.error.locked() = failure;
    rt.set_state(&node.events, folder, state);
    match result {
        Ok(Ok(stats)) => {
            log_scan(folder, &stats);
            node.metrics.hashed_files.inc_by(stats.hashed_files as u64);
            node.metrics.hashed_bytes.inc_by(stats.hashed_bytes);
            rt.sequence.send_replace(stats.sequence);
            true
        }
        Ok(Err(e)) => {
            tracing::error!(folder = %folder, error = %format!("{e:#}"), "scan failed");
            false
        }
        Err(e) => {
            tracing::error!(folder = %folder, error = %e, "scan task failed");
            false
        }
    }
}

/// Ends a scan's progress reporter, and the scan itself if still running.
struct ScanGuard {
    live: Arc<scan::Live>,
    reporter: tokio::task::JoinHandle<()>,
}

impl Drop for ScanGuard {
    fn drop(&mut self) {
        self.live.stop.store(true, Ordering::Relaxed);
        self.reporter.abort();
    }
}

fn log_scan(folder: &str, stats: &scan::ScanStats) {
    let rate = stats.hashed_bytes as f64 / 1e6 / stats.seconds.max(1e-9);
    eprintln!(
        "Scanned folder {folder}: {} entries, {} hashed ({:.1} MB, {:.0} MB/s), {} unchanged, {} deleted, sequence {} in {:.2} s",
        stats.entries,
        stats.hashed_files,
        stats.hashed_bytes as f64 / 1e6,
        rate,
        stats.unchanged,
        stats.deleted,
        stats.sequence,
        stats.seconds
    );
    tracing::info!(folder = %folder, entries = stats.entries, hashed_files = stats.hashed_files,
        hashed_bytes = stats.hashed_bytes, unchanged = stats.unchanged, deleted = stats.deleted,
        sequence = stats.sequence, seconds = stats.seconds, "scan complete");
}

fn start_watcher(
    node: &Node,
    f: &FolderConfig,
    rt: &FolderRuntime,
) -> Option<notify::RecommendedWatcher> {
    let delay = Duration::from_secs(f.fs_watcher_delay_s.min(crate::config::MAX_INTERVAL_S));
    match crate::watch::start(&f.path, delay, rt.scan_now.clone(), &node.shutdown) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(folder = %f.id, error = %format!("{e:#}"),
                "no filesystem watcher; changes are found by periodic rescans");
            None
        }
    }
}

/// One pull round; when the next round should come sooner than the
/// rescan interval.
async fn pull_round(node: &Arc<Node>, f: &FolderConfig, rt: &FolderRuntime) -> Option<Duration> {
    let folder = &f.id;
    rt.set_state(&node.events, folder, FolderState::Syncing);
    let mut retry_soon = None;
    match pull::round(node, f).await {
        Ok(stats) => {
            if stats.applied > 0 || !stats.errors.is_empty() {
                tracing::info!(folder = %folder, applied = stats.applied,
                    errors = stats.errors.len(), "pull round done");
            }
            // Something changed locally under us (scan it, then pull
            // again), or items failed (a device may be back soon): go
            // again soon.
            if stats.rescan {
                retry_soon = Some(RESCAN_SOON);
            } else if !stats.errors.is_empty() {
                retry_soon = Some(PULL_RETRY);
            }
            node.events.folder_errors(folder, &stats.errors);
            *rt.pull_errors.locked() = stats.errors;
        }
        Err(e) => {
            tracing::error!(folder = %folder, error = %format!("{e:#}"), "pull failed");
            retry_soon = Some(PULL_RETRY);
        }
    }
    rt.set_state(&node.events, folder, FolderState::Idle);
    retry_soon
}

/// The rescan interval, jittered (±25 %) so many folders do not scan
/// together, or `retry_soon` if sooner.
fn next_wait(f: &FolderConfig, retry_soon: Option<Duration>) -> Duration {
    // Validation caps the setting; the clamp keeps the arithmetic below
    // from ever overflowing a Duration.
    let base = f.rescan_interval_s.clamp(1, crate::config::MAX_INTERVAL_S) as f64;
    let wait = Duration::from_secs_f64(base * (0.75 + rand::random::<f64>() * 0.5));
    match retry_soon {
        Some(soon) => wait.min(soon),
        None => wait,
    }
}
