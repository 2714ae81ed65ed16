//! Putting a configuration in effect: what runs follows what is saved.
//! Called once at start and after every configuration change (REST); it is
//! the one place that knows every part a change may concern.

use std::sync::Arc;

use anyhow::Result;

use crate::model::Node;
use daemon::sync::RwLockExt;

/// Puts the current configuration in effect: folders get their runtime
/// state and loop, devices a dial loop, and every connection is told to
/// send a new ClusterConfig. Called at start and after every REST change.
/// (Listeners follow the configuration on their own, see `connect`.)
pub fn apply_config(node: &Arc<Node>) -> Result<()> {
    let config = node.config();
    node.events.bus.set_labels(&config);
    // Versions cleanups follow their folder's new settings (or end with
    // their folder).
    for rt in node.folders.read_locked().values() {
        rt.config_changed.notify_one();
    }
    crate::folder::start_missing(node)?;
    crate::connect::ensure_dialers(node);
    // Every connection: the primary sends our ClusterConfig, and any that
    // exchanges indexes re-applies the peer's. A device no longer
    // configured (removed over REST or by its introducer) is disconnected,
    // as Syncthing does.
    for (device, conns) in node.all_connections() {
        let removed = config.device(&device).is_none();
        for c in conns.conns {
            if removed {
                let _ = c.close.try_send("device removed".into());
            } else {
                let _ = c.config_changed.try_send(());
            }
        }
    }
    Ok(())
}
