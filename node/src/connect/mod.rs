//! Connection management: our listeners (TCP and relays) and the
//! addresses they make us reachable at, and one dial loop per configured
//! device that tries every known address — static, `dns-srv://`, and
//! `dynamic` via discovery — preferring direct over relayed, upgrading a
//! relayed connection when a direct one works, backing off in between.
//!
//! * `listen.rs` — listeners reconciled with `listenAddresses`.
//! * `dial.rs` — address candidates and the per-device loop.

mod dial;
mod listen;

use std::sync::Arc;

use anyhow::Result;

use crate::model::Node;
use daemon::sync::MutexExt;

pub use dial::ensure_dialers;

/// Starts listening (failing when a configured TCP address cannot be
/// bound: an operator wants to know at once), then keeps the listeners in
/// line with the configuration, announces to discovery and runs local
/// discovery. Dial loops start with [`ensure_dialers`].
pub async fn start(node: &Arc<Node>) -> Result<()> {
    listen::reconcile(node, true).await?;
    let tasks = &node.shutdown;
    tasks.spawn_until_cancelled(listen::supervise(node.clone()));
    tasks.spawn_until_cancelled(crate::discovery::announce_loop(node.clone()));
    tasks.spawn_until_cancelled(crate::discovery::local::run(node.clone()));
    Ok(())
}

/// The connection and discovery fields of Syncthing's
/// `/rest/system/status`: `connectionServiceStatus`, `lastDialStatus`,
/// `discoveryEnabled`, `discoveryMethods`, `discoveryStatus`,
/// `discoveryErrors`.
pub fn status_fields(node: &Node) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::{json, Value};
    let rfc3339 = crate::timefmt::rfc3339;
    let mut out = serde_json::Map::new();
    out.insert(
        "connectionServiceStatus".into(),
        Value::Object(node.connect.listeners.service_status()),
    );
    let mut dials = serde_json::Map::new();
    for (address, (when, error)) in node.connect.dials.snapshot() {
        dials.insert(address, json!({"when": rfc3339(when), "error": error}));
    }
    out.insert("lastDialStatus".into(), Value::Object(dials));
    let config = node.config();
    let options = &config.options;
    let mut status = serde_json::Map::new();
    let mut errors = serde_json::Map::new();
    if options.global_announce_enabled {
        let known = node.discovery.status.locked().clone();
        for s in options
            .global_announce_servers
            .iter()
            .filter(|s| !s.trim().is_empty())
        {
            // As Syncthing: the URL without its query (no pins in keys).
            let key = format!("global@{}", s.split('?').next().unwrap_or(s));
            let error = match known.get(s) {
                Some(e) => e.clone(),
                None => Some("not announced".to_string()),
            };
            if let Some(e) = &error {
                errors.insert(key.clone(), json!(e));
            }
            status.insert(key, json!({ "error": error }));
        }
    }
    if options.local_announce_enabled {
        // Syncthing 1.19.2's names for its two local finders.
        status.insert("IPv4 local".into(), json!({"error": null}));
        status.insert("IPv6 local".into(), json!({"error": null}));
    }
    out.insert(
        "discoveryEnabled".into(),
        json!(options.global_announce_enabled || options.local_announce_enabled),
    );
    out.insert("discoveryMethods".into(), json!(status.len()));
    out.insert("discoveryStatus".into(), Value::Object(status));
    out.insert("discoveryErrors".into(), Value::Object(errors));
    out
}
