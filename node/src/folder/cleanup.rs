//! A folder's versions cleanup: every `cleanupIntervalS` (0: never; only
//! on demand through REST), for the versioners that have rules to apply.
//! The timer restarts whenever the configuration changes; the task ends
//! with its folder (or the node).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::Versioning;
use crate::dirfd::Dir;
use crate::model::{FolderRuntime, Node};
use crate::versioning::{self, Versioner};

pub async fn run(node: Arc<Node>, folder: String, rt: Arc<FolderRuntime>) {
    loop {
        let Some(f) = node.folder_config(&folder) else {
            return;
        };
        // A folder removed and added again has a new runtime (and task).
        if !node
            .folder_runtime(&folder)
            .is_some_and(|r| Arc::ptr_eq(&r, &rt))
        {
            return;
        }
        let interval = f
            .versioning
            .cleanup_interval_s()
            .min(crate::config::MAX_INTERVAL_S);
        let has_rules = !matches!(
            f.versioning.mode(),
            Versioning::None | Versioning::External { .. }
        );
        if interval == 0 || !has_rules {
            rt.config_changed.notified().await;
            continue;
        }
        tokio::select! {
            _ = rt.config_changed.notified() => continue,
            _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
        }
        if f.paused {
            continue;
        }
        let metrics = versioning::Metrics::of(&node.metrics, &f.id);
        let Some(v) = Versioner::for_folder(&f, metrics) else {
            continue;
        };
        let done = tokio::task::spawn_blocking(move || {
            let root = Dir::open(&f.path).map_err(|e| e.to_string())?;
            v.cleanup(&root, SystemTime::now())
                .map_err(|e| e.to_string())
        })
        .await;
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(folder = %folder, error = %e, "versions cleanup failed"),
            Err(e) => tracing::warn!(folder = %folder, error = %e, "versions cleanup task failed"),
        }
    }
}
