//! `/rest/cluster/pending/devices|folders`: devices and folders offered
//! to us that are not configured.

use http::Method;
use serde_json::{json, Value};

use super::http_util::{bad, json, not_found, ok, rfc3339, Answer, Call};
use daemon::sync::MutexExt;

pub async fn route(c: &Call) -> Answer {
    let node = &c.node;
    match c.path.as_str() {
        "/rest/cluster/pending/devices" => {
            c.allow(&[Method::GET, Method::DELETE])?;
            if c.method == Method::DELETE {
                let Some(id) = c.device()? else {
                    return Err(bad("device parameter missing"));
                };
                let removed = node.pending.locked().remove(&id).is_some();
                if removed {
                    node.events.emit(
                        crate::events::Kind::PendingDevicesChanged,
                        json!({"removed": [{"deviceID": id.to_string()}]}),
                    );
                }
                return Ok(ok());
            }
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
            c.allow(&[Method::GET, Method::DELETE])?;
            if c.method == Method::DELETE {
                let folder = c.need("folder")?.to_string();
                let device = c.device()?;
                let mut removed = Vec::new();
                let mut all = node.pending_folders.locked();
                if let Some(offers) = all.get_mut(&folder) {
                    offers.retain(|d, _| {
                        let drop = device.is_none_or(|x| x == *d);
                        if drop {
                            removed.push(json!({"folderID": folder, "deviceID": d.to_string()}));
                        }
                        !drop
                    });
                    if offers.is_empty() {
                        all.remove(&folder);
                    }
                }
                drop(all);
                if !removed.is_empty() {
                    node.events.emit(
                        crate::events::Kind::PendingFoldersChanged,
                        json!({"removed": removed}),
                    );
                }
                return Ok(ok());
            }
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
