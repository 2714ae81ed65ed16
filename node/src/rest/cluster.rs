//! `/rest/cluster/pending/devices|folders`: devices and folders offered
//! to us that are not configured.

use http::Method;
use serde_json::{json, Value};

use super::http_util::{json, not_found, rfc3339, Answer, Call};

pub async fn route(c: &Call) -> Answer {
    let node = &c.node;
    match c.path.as_str() {
        "/rest/cluster/pending/devices" => {
            c.allow(&[Method::GET])?;
            let mut out = serde_json::Map::new();
            for (id, p) in node.pending() {
                out.insert(
                    id.to_string(),
                    json!({"time": rfc3339(p.time), "name": p.name, "address": p.address.to_string()}),
                );
            }
            Ok(json(&Value::Object(out)))
        }
        "/rest/cluster/pending/folders" => {
            c.allow(&[Method::GET])?;
            let mut out = serde_json::Map::new();
            for (folder, offers) in node.pending_folders() {
                let mut by = serde_json::Map::new();
                for (id, (label, time)) in offers {
                    by.insert(
                        id.to_string(),
                        json!({"time": rfc3339(time), "label": label,
                               "receiveEncrypted": false, "remoteEncrypted": false}),
                    );
                }
                out.insert(folder, json!({"offeredBy": by}));
            }
            Ok(json(&Value::Object(out)))
        }
        _ => Err(not_found()),
    }
}
