//! Filesystem watcher: inotify (via `notify`) on a folder, debounced, so a
//! change is scanned and announced within seconds instead of at the next
//! periodic rescan.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Watches `root`; after a change, waits `delay` for more changes to settle,
/// then asks for a scan on `scan_now`. The returned watcher must be kept;
/// the task that debounces ends when it is dropped or `tasks` stop.
pub fn start(
    root: &Path,
    delay: Duration,
    scan_now: mpsc::Sender<()>,
    tasks: &daemon::Shutdown,
) -> Result<notify::RecommendedWatcher> {
    let (dirty_tx, mut dirty_rx) = mpsc::channel::<()>(1);
    let root_owned = root.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // Overflowed queue or similar: a scan finds whatever we missed.
            let _ = dirty_tx.try_send(());
            return;
        };
        if event.kind.is_access() {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            let rel = p.strip_prefix(&root_owned).unwrap_or(p);
            let name = rel.to_string_lossy();
            // An edited .stignore is applied by a scan right away.
            name == crate::ignore::FILE
                || !(proto::bep::names::is_internal(&name)
                    || proto::bep::names::is_temporary(&name))
        });
        if relevant || event.paths.is_empty() {
            // A full channel already means "dirty".
            let _ = dirty_tx.try_send(());
        }
    })
    .context("cannot start the filesystem watcher")?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", root.display()))?;
    tasks.spawn_until_cancelled(async move {
        while dirty_rx.recv().await.is_some() {
            tokio::time::sleep(delay).await;
            // Changes during the delay are part of this scan.
            while dirty_rx.try_recv().is_ok() {}
            if scan_now.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}
