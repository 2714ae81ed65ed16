//! A Syncthing-compatible subset of the REST API (same paths, JSON field
//! names and `X-API-Key` authentication), so tools written for Syncthing
//! can drive this node.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::model::Node;
use crate::scan::{TOTAL_HASHED_BYTES, TOTAL_HASHED_FILES};

pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(handle(&node, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn rfc3339(t: SystemTime) -> String {
    // Seconds precision is enough for the fields that use it.
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    time_fmt(secs)
}

fn time_fmt(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` of a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A FileInfo as Syncthing's `/rest/db/file` shows it (the main fields).
fn file_json(f: &proto::bep::wire::FileInfo) -> Value {
    let version: Vec<String> = f
        .version
        .iter()
        .flat_map(|v| v.counters.iter())
        .map(|c| format!("{}:{}", proto::ShortId(c.id), c.value))
        .collect();
    json!({
        "name": f.name, "type": match f.r#type { 1 => "FILE_INFO_TYPE_DIRECTORY", 4 => "FILE_INFO_TYPE_SYMLINK", _ => "FILE_INFO_TYPE_FILE" },
        "size": f.size, "permissions": format!("{:o}", f.permissions), "deleted": f.deleted,
        "invalid": f.invalid, "noPermissions": f.no_permissions, "sequence": f.sequence,
        "modified": time_fmt(f.modified_s), "modifiedBy": proto::ShortId(f.modified_by).to_string(),
        "numBlocks": f.blocks.len(), "blockSize": f.block_size, "version": version,
    })
}

/// Constant-time comparison, so the key cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Largest request body accepted (a configuration object).
const MAX_BODY: usize = 1 << 20;

async fn body_json(req: Request<Incoming>) -> Result<Value, Response<Full<Bytes>>> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = http_body_util::BodyExt::collect(limited)
        .await
        .map_err(|e| {
            reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("body: {e}")}),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("JSON: {e}")}),
        )
    })
}

/// Overlays the keys of `patch` on `base` (one level, like Syncthing's PATCH).
fn merge(base: &mut Value, patch: Value) {
    if let (Some(b), Value::Object(p)) = (base.as_object_mut(), patch) {
        for (k, v) in p {
            b.insert(k, v);
        }
    }
}

/// Applies a configuration change, then puts it in effect.
fn change_config(
    node: &Arc<Node>,
    change: impl FnOnce(&mut crate::config::Config) -> anyhow::Result<()>,
) -> Response<Full<Bytes>> {
    match node.update_config(change) {
        Ok(_) => match crate::serve::apply_config(node) {
            Ok(()) => reply(StatusCode::OK, Value::Null),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": format!("{e:#}")}),
            ),
        },
        Err(e) => reply(StatusCode::BAD_REQUEST, json!({"error": format!("{e:#}")})),
    }
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

async fn handle_config(
    node: &Arc<Node>,
    method: Method,
    path: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    use crate::config::{DeviceConfig, FolderConfig, Options};
    let body = match method {
        Method::POST | Method::PUT | Method::PATCH => match body_json(req).await {
            Ok(v) => v,
            Err(r) => return r,
        },
        _ => Value::Null,
    };
    let config = node.config();
    let rest = path.trim_start_matches("/rest/config/");
    let (section, item) = rest.split_once('/').unwrap_or((rest, ""));
    match (method, section, item) {
        (Method::GET, "options", "") => reply(
            StatusCode::OK,
            serde_json::to_value(config.options).unwrap_or_default(),
        ),
        (Method::PATCH | Method::PUT, "options", "") => change_config(node, |c| {
            let mut v = serde_json::to_value(&c.options)?;
            merge(&mut v, body);
            c.options = from_value::<Options>(v)?;
            Ok(())
        }),
        (Method::GET, "devices", "") => reply(
            StatusCode::OK,
            serde_json::to_value(config.devices).unwrap_or_default(),
        ),
        (Method::GET, "devices", id) => match config.devices.iter().find(|d| d.device_id == id) {
            Some(d) => reply(StatusCode::OK, serde_json::to_value(d).unwrap_or_default()),
            None => reply(StatusCode::NOT_FOUND, json!({"error": "no such device"})),
        },
        (Method::POST | Method::PUT, "devices", "") => change_config(node, |c| {
            let list = match body {
                Value::Array(a) => a,
                one => vec![one],
            };
            for v in list {
                let d: DeviceConfig = from_value(v)?;
                let id = d.id()?;
                c.devices.retain(|x| x.id().ok() != Some(id));
                c.devices.push(d);
            }
            Ok(())
        }),
        (Method::DELETE, "devices", id) => change_config(node, |c| {
            c.devices.retain(|x| x.device_id != id);
            Ok(())
        }),
        (Method::GET, "folders", "") => reply(
            StatusCode::OK,
            serde_json::to_value(config.folders).unwrap_or_default(),
        ),
        (Method::GET, "folders", id) => match config.folders.iter().find(|f| f.id == id) {
            Some(f) => reply(StatusCode::OK, serde_json::to_value(f).unwrap_or_default()),
            None => reply(StatusCode::NOT_FOUND, json!({"error": "no such folder"})),
        },
        (Method::POST | Method::PUT, "folders", "") => change_config(node, |c| {
            let list = match body {
                Value::Array(a) => a,
                one => vec![one],
            };
            for v in list {
                let f: FolderConfig = from_value(v)?;
                c.folders.retain(|x| x.id != f.id);
                c.folders.push(f);
            }
            Ok(())
        }),
        (Method::PATCH | Method::PUT, "folders", id) => {
            if !config.folders.iter().any(|f| f.id == id) {
                return reply(StatusCode::NOT_FOUND, json!({"error": "no such folder"}));
            }
            let id = id.to_string();
            change_config(node, move |c| {
                for f in c.folders.iter_mut().filter(|f| f.id == id) {
                    let mut v = serde_json::to_value(&*f)?;
                    merge(&mut v, body.clone());
                    let mut next: FolderConfig = from_value(v)?;
                    next.id = id.clone();
                    *f = next;
                }
                Ok(())
            })
        }
        (Method::DELETE, "folders", id) => change_config(node, |c| {
            c.folders.retain(|f| f.id != id);
            Ok(())
        }),
        (Method::GET, "restart-required", "") => {
            reply(StatusCode::OK, json!({"requiresRestart": false}))
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let key = node.gui.api_key.clone();
    // `X-API-Key: KEY`, or `Authorization: Bearer KEY` (what Prometheus
    // and other scrapers can send); both accepted by Syncthing too.
    let headers = req.headers();
    let given = headers
        .get("X-API-Key")
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .map(<[u8]>::to_vec)
        })
        .unwrap_or_default();
    if key.is_empty() || !same(&given, key.as_bytes()) {
        return reply(
            StatusCode::FORBIDDEN,
            json!({"error": "missing or wrong X-API-Key"}),
        );
    }
    let path = req.uri().path().to_string();
    if path.starts_with("/rest/config/") {
        let method = req.method().clone();
        return handle_config(node, method, &path, req).await;
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/rest/system/ping") | (Method::POST, "/rest/system/ping") => {
            reply(StatusCode::OK, json!({"ping": "pong"}))
        }
        (Method::GET, "/rest/system/status") => {
            let uptime = node.started.elapsed().map_or(0, |d| d.as_secs());
            reply(
                StatusCode::OK,
                json!({
                    "myID": node.my_id.to_string(),
                    "uptime": uptime,
                    "startTime": rfc3339(node.started),
                    "hashedFiles": TOTAL_HASHED_FILES.load(Ordering::Relaxed),
                    "hashedBytes": TOTAL_HASHED_BYTES.load(Ordering::Relaxed),
                    "servedBytes": node.served_bytes.load(Ordering::Relaxed),
                    "servedRequests": node.served_requests.load(Ordering::Relaxed),
                    "pulledBytes": crate::pull::PULLED_BYTES.load(Ordering::Relaxed),
                    "reusedBytes": crate::pull::REUSED_BYTES.load(Ordering::Relaxed),
                }),
            )
        }
        (Method::POST, "/rest/system/shutdown") => {
            node.shutdown.send_replace(true);
            reply(StatusCode::OK, json!({"ok": "shutting down"}))
        }
        (Method::GET, "/rest/system/connections") => {
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
                    None => {
                        json!({"connected": false, "type": "", "address": "", "clientVersion": "", "paused": false,
                                   "inBytesTotal": 0, "outBytesTotal": 0})
                    }
                };
                conns.insert(id.to_string(), v);
            }
            let (mut tin, mut tout) = (0u64, 0u64);
            for c in live.values() {
                tin += c.in_bytes.load(Ordering::Relaxed);
                tout += c.out_bytes.load(Ordering::Relaxed);
            }
            reply(
                StatusCode::OK,
                json!({"connections": conns,
                       "total": {"inBytesTotal": tin, "outBytesTotal": tout, "at": rfc3339(SystemTime::now())}}),
            )
        }
        (Method::GET, "/rest/cluster/pending/folders") => {
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
            reply(StatusCode::OK, Value::Object(out))
        }
        (Method::GET, "/rest/cluster/pending/devices") => {
            let mut out = serde_json::Map::new();
            for (id, p) in node.pending() {
                out.insert(
                    id.to_string(),
                    json!({"time": rfc3339(p.time), "name": p.name, "address": p.address.to_string()}),
                );
            }
            reply(StatusCode::OK, Value::Object(out))
        }
        (Method::GET, "/rest/db/status") => {
            let Some(folder) = query(&req, "folder") else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "folder parameter missing"}),
                );
            };
            let Some(rt) = node.folder_runtime(&folder) else {
                return reply(StatusCode::NOT_FOUND, json!({"error": "no such folder"}));
            };
            let state = *rt.state.lock().unwrap_or_else(|p| p.into_inner());
            let pull_errors = rt
                .pull_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len();
            let totals = node
                .db
                .local_totals(&folder)
                .and_then(|l| Ok((l, crate::pull::need_list(node, &folder)?.1)));
            match totals {
                Ok(((files, dirs, links, deleted, bytes), g)) => {
                    let seq = *rt.sequence.borrow();
                    reply(
                        StatusCode::OK,
                        json!({
                            "state": state,
                            "sequence": seq,
                            "localFiles": files, "localDirectories": dirs, "localSymlinks": links,
                            "localDeleted": deleted, "localBytes": bytes,
                            "globalFiles": g.global_files, "globalDirectories": g.global_dirs,
                            "globalSymlinks": g.global_symlinks,
                            "globalDeleted": g.global_deleted, "globalBytes": g.global_bytes,
                            "needFiles": g.need_files, "needDirectories": g.need_dirs,
                            "needSymlinks": g.need_symlinks, "needBytes": g.need_bytes,
                            "needDeletes": g.need_deletes, "needTotalItems": g.need_items(),
                            "inSyncFiles": g.global_files.saturating_sub(g.need_files),
                            "inSyncBytes": g.global_bytes.saturating_sub(g.need_bytes),
                            "pullErrors": pull_errors, "errors": pull_errors,
                        }),
                    )
                }
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": format!("{e:#}")}),
                ),
            }
        }
        (Method::POST, "/rest/db/revert") | (Method::POST, "/rest/db/override") => {
            let Some(folder) = query(&req, "folder") else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "folder parameter missing"}),
                );
            };
            let Some(f) = node.config().folders.into_iter().find(|f| f.id == folder) else {
                return reply(StatusCode::NOT_FOUND, json!({"error": "no such folder"}));
            };
            let revert = path == "/rest/db/revert";
            let fits = if revert {
                f.kind == "receiveonly"
            } else {
                f.read_only()
            };
            if !fits {
                let want = if revert { "receiveonly" } else { "sendonly" };
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("folder {folder:?} is not {want}")}),
                );
            }
            let n2 = node.clone();
            let done = tokio::task::spawn_blocking(move || {
                if revert {
                    crate::pull::local_ops::revert(&n2, &folder)
                } else {
                    crate::pull::local_ops::override_remote(&n2, &folder)
                }
            })
            .await;
            match done {
                Ok(Ok(_)) => reply(StatusCode::OK, Value::Null),
                Ok(Err(e)) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": format!("{e:#}")}),
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                ),
            }
        }
        (Method::GET, "/rest/folder/errors") => {
            let Some(folder) = query(&req, "folder") else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "folder parameter missing"}),
                );
            };
            let Some(rt) = node.folder_runtime(&folder) else {
                return reply(StatusCode::NOT_FOUND, json!({"error": "no such folder"}));
            };
            let errors: Vec<Value> = rt
                .pull_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(path, error)| json!({"path": path, "error": error}))
                .collect();
            reply(
                StatusCode::OK,
                json!({"folder": folder, "errors": errors, "page": 1, "perpage": errors.len().max(1)}),
            )
        }
        (Method::GET, "/rest/system/version") => reply(
            StatusCode::OK,
            json!({"version": concat!("v", env!("CARGO_PKG_VERSION")), "longVersion":
                   concat!("node v", env!("CARGO_PKG_VERSION"), " (Syncthing-compatible, BEP v1)"),
                   "os": std::env::consts::OS, "arch": std::env::consts::ARCH}),
        ),
        (Method::GET, "/rest/db/file") => {
            let (Some(folder), Some(name)) = (query(&req, "folder"), query(&req, "file")) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "folder and file parameters required"}),
                );
            };
            match node.db.file(&folder, &name) {
                Ok(Some(f)) => reply(
                    StatusCode::OK,
                    json!({"local": file_json(&f), "global": file_json(&f)}),
                ),
                Ok(None) => reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": "no such object in the index"}),
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": format!("{e:#}")}),
                ),
            }
        }
        (Method::GET, "/rest/db/completion") => {
            let Some(folder) = query(&req, "folder") else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "folder parameter missing"}),
                );
            };
            if node.folder_runtime(&folder).is_none() {
                return reply(StatusCode::NOT_FOUND, json!({"error": "no such folder"}));
            }
            let device = match query(&req, "device").filter(|d| !d.is_empty()) {
                None => None,
                Some(d) => match d.parse::<proto::DeviceId>() {
                    Ok(id) => Some(id),
                    Err(e) => {
                        return reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}))
                    }
                },
            };
            let Some(device) = device else {
                // Our own completion, against the global state.
                let g = crate::pull::need_list(node, &folder)
                    .map(|(_, t)| t)
                    .unwrap_or_default();
                let global_items = g.global_files + g.global_dirs + g.global_symlinks;
                let completion = if g.need_items() == 0 {
                    100.0
                } else if g.global_bytes == 0 || g.need_bytes == 0 {
                    95.0
                } else {
                    100.0 * (1.0 - g.need_bytes as f64 / g.global_bytes as f64)
                };
                return reply(
                    StatusCode::OK,
                    json!({"completion": completion, "globalBytes": g.global_bytes,
                           "globalItems": global_items, "needBytes": g.need_bytes,
                           "needDeletes": g.need_deletes, "needItems": g.need_items(),
                           "sequence": node.folder_runtime(&folder).map_or(0, |r| *r.sequence.borrow())}),
                );
            };
            match node.db.completion(&folder, &device) {
                Ok(c) => reply(
                    StatusCode::OK,
                    json!({"completion": c.completion, "globalBytes": c.global_bytes,
                           "globalItems": c.global_items, "needBytes": c.need_bytes,
                           "needDeletes": c.need_deletes, "needItems": c.need_items,
                           "sequence": c.remote_sequence}),
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": format!("{e:#}")}),
                ),
            }
        }
        (Method::POST, "/rest/db/scan") => {
            let Some(folder) = query(&req, "folder") else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "folder parameter missing"}),
                );
            };
            match node.folder_runtime(&folder) {
                Some(rt) => {
                    let _ = rt.scan_now.try_send(());
                    reply(StatusCode::OK, Value::Null)
                }
                None => reply(StatusCode::NOT_FOUND, json!({"error": "no such folder"})),
            }
        }
        (Method::GET, "/metrics") => {
            let text = format!(
                "# TYPE node_hashed_files_total counter\nnode_hashed_files_total {}\n\
                 # TYPE node_hashed_bytes_total counter\nnode_hashed_bytes_total {}\n\
                 # TYPE node_served_bytes_total counter\nnode_served_bytes_total {}\n\
                 # TYPE node_pulled_bytes_total counter\nnode_pulled_bytes_total {}\n\
                 # TYPE node_reused_bytes_total counter\nnode_reused_bytes_total {}\n\
                 # TYPE node_connections gauge\nnode_connections {}\n",
                TOTAL_HASHED_FILES.load(Ordering::Relaxed),
                TOTAL_HASHED_BYTES.load(Ordering::Relaxed),
                node.served_bytes.load(Ordering::Relaxed),
                crate::pull::PULLED_BYTES.load(Ordering::Relaxed),
                crate::pull::REUSED_BYTES.load(Ordering::Relaxed),
                node.connections().len(),
            );
            Response::new(Full::new(Bytes::from(text)))
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_query_values() {
        assert_eq!(super::percent_decode("a%20b+c%C3%BC%"), "a b cü%");
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(super::time_fmt(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time_fmt(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
