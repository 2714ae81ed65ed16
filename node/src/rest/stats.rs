//! `/rest/stats/device` and `/rest/stats/folder` (kept since this start;
//! Syncthing keeps them in its database across restarts).

use http::Method;
use serde_json::{json, Value};

use super::http_util::{json, not_found, rfc3339, Answer, Call};

/// Go's zero time, what Syncthing shows for "never".
const NEVER: &str = "1970-01-01T00:00:00Z";

pub async fn route(c: &Call) -> Answer {
    let node = &c.node;
    match c.path.as_str() {
        "/rest/stats/device" => {
            c.allow(&[Method::GET])?;
            let mut out = serde_json::Map::new();
            let mut ids: Vec<String> = node
                .config()
                .devices
                .iter()
                .map(|d| d.device_id.to_string())
                .collect();
            ids.push(node.my_id.to_string());
            for id in ids {
                let s = node.events.records.device_stats(&id);
                out.insert(
                    id,
                    json!({
                        "lastSeen": s.last_seen.map_or(NEVER.to_string(), rfc3339),
                        "lastConnectionDurationS": s.last_duration_s,
                    }),
                );
            }
            Ok(json(&Value::Object(out)))
        }
        "/rest/stats/folder" => {
            c.allow(&[Method::GET])?;
            let mut out = serde_json::Map::new();
            for f in node.config().folders.iter() {
                let s = node.events.records.folder_stats(&f.id);
                let last_file = match s.last_file {
                    Some((at, name, deleted)) => {
                        json!({"at": rfc3339(at), "filename": name, "deleted": deleted})
                    }
                    None => json!({"at": NEVER, "filename": "", "deleted": false}),
                };
                out.insert(
                    f.id.clone(),
                    json!({
                        "lastScan": s.last_scan.map_or(NEVER.to_string(), rfc3339),
                        "lastFile": last_file,
                    }),
                );
            }
            Ok(json(&Value::Object(out)))
        }
        _ => Err(not_found()),
    }
}
