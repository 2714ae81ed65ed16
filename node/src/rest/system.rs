//! `/rest/system/*` and `/rest/noauth/health`.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::Method;
use serde_json::{json, Value};

use super::http_util::{json, not_found, rfc3339, Answer, Call};
use crate::scan::{TOTAL_HASHED_BYTES, TOTAL_HASHED_FILES};

pub async fn route(c: &Call) -> Answer {
    let node = &c.node;
    match c.path.as_str() {
        "/rest/system/ping" => {
            c.allow(&[Method::GET, Method::POST])?;
            Ok(json(&json!({"ping": "pong"})))
        }
        "/rest/system/status" => {
            c.allow(&[Method::GET])?;
            let uptime = node.started.elapsed().map_or(0, |d| d.as_secs());
            let mut v = json!({
                "myID": node.my_id.to_string(),
                "uptime": uptime,
                "startTime": rfc3339(node.started),
                "hashedFiles": TOTAL_HASHED_FILES.load(Ordering::Relaxed),
                "hashedBytes": TOTAL_HASHED_BYTES.load(Ordering::Relaxed),
                "servedBytes": node.served_bytes.load(Ordering::Relaxed),
                "servedRequests": node.served_requests.load(Ordering::Relaxed),
                "pulledBytes": crate::pull::PULLED_BYTES.load(Ordering::Relaxed),
                "reusedBytes": crate::pull::REUSED_BYTES.load(Ordering::Relaxed),
            });
            // Listeners, dial results and discovery, as Syncthing reports them.
            if let serde_json::Value::Object(m) = &mut v {
                m.extend(crate::connect::status_fields(node));
            }
            Ok(json(&v))
        }
        "/rest/system/shutdown" => {
            c.allow(&[Method::POST])?;
            node.shutdown.send_replace(true);
            Ok(json(&json!({"ok": "shutting down"})))
        }
        "/rest/system/connections" => {
            c.allow(&[Method::GET])?;
            Ok(json(&connections(c)))
        }
        "/rest/system/discovery" => {
            c.allow(&[Method::GET])?;
            let mut out = serde_json::Map::new();
            for (id, addresses) in crate::discovery::snapshot() {
                out.insert(id.to_string(), json!({ "addresses": addresses }));
            }
            Ok(json(&Value::Object(out)))
        }
        "/rest/system/version" => {
            c.allow(&[Method::GET])?;
            Ok(json(&json!({
                "version": concat!("v", env!("CARGO_PKG_VERSION")),
                "longVersion": concat!("node v", env!("CARGO_PKG_VERSION"), " (Syncthing-compatible, BEP v1)"),
                "os": std::env::consts::OS, "arch": std::env::consts::ARCH,
            })))
        }
        _ => Err(not_found()),
    }
}

/// `/rest/noauth/*`: answered without credentials.
pub async fn noauth(c: &Call) -> Answer {
    match c.path.as_str() {
        "/rest/noauth/health" => {
            c.allow(&[Method::GET])?;
            Ok(json(&json!({"status": "OK"})))
        }
        _ => Err(not_found()),
    }
}

fn connections(c: &Call) -> Value {
    let node = &c.node;
    let mut conns = serde_json::Map::new();
    let live = node.connections();
    for d in node.config().devices {
        let Ok(id) = d.id() else { continue };
        let v = match live.get(&id) {
            Some(c) => json!({
                "connected": true,
                "type": c.kind,
                "address": c.address.to_string(),
                "clientVersion": c.client_version,
                "crypto": "TLS1.3",
                "inBytesTotal": c.in_bytes.load(Ordering::Relaxed),
                "outBytesTotal": c.out_bytes.load(Ordering::Relaxed),
                "startedAt": rfc3339(c.started),
                "paused": false,
            }),
            None => json!({"connected": false, "type": "", "address": "", "clientVersion": "",
                           "paused": false, "inBytesTotal": 0, "outBytesTotal": 0}),
        };
        conns.insert(id.to_string(), v);
    }
    let (mut tin, mut tout) = (0u64, 0u64);
    for c in live.values() {
        tin += c.in_bytes.load(Ordering::Relaxed);
        tout += c.out_bytes.load(Ordering::Relaxed);
    }
    json!({"connections": conns,
           "total": {"inBytesTotal": tin, "outBytesTotal": tout, "at": rfc3339(SystemTime::now())}})
}
