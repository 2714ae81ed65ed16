//! `/rest/db/*` and `/rest/folder/*`: the index as Syncthing shows it.

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::file_json::file_json;
use super::http_util::{internal, json, ok, rfc3339, text, Answer, Call};
use crate::config::FolderType;
use crate::model::summaries::Figures;
use crate::model::Node;
use daemon::sync::MutexExt;

pub async fn route(c: &Call) -> Answer {
    match c.path.as_str() {
        "/rest/db/status" => {
            c.allow(&[Method::GET])?;
            status(c)
        }
        "/rest/db/completion" => {
            c.allow(&[Method::GET])?;
            completion(c)
        }
        "/rest/db/scan" => {
            c.allow(&[Method::POST])?;
            let f = c.folder()?;
            match c.node.folder_runtime(&f.id) {
                Some(rt) => {
                    let _ = rt.scan_now.try_send(());
                    Ok(ok())
                }
                None => Err(text(StatusCode::NOT_FOUND, "folder is not running")),
            }
        }
        "/rest/db/revert" | "/rest/db/override" => {
            c.allow(&[Method::POST])?;
            revert_or_override(c).await
        }
        "/rest/db/file" => {
            c.allow(&[Method::GET])?;
            let f = c.folder()?;
            let name = c.need("file")?;
            let local = c.node.db.file(&f.id, name);
            let global = crate::pull::figures::global_file(&c.node, &f.id, name);
            match (local, global) {
                (Ok(None), Ok(None)) => {
                    Err(text(StatusCode::NOT_FOUND, "no such object in the index"))
                }
                (Ok(local), Ok(global)) => {
                    // As 1.19.2: the connected devices that have the global
                    // version.
                    let connected = c.node.connections();
                    let availability: Vec<Value> = global
                        .as_ref()
                        .map(|g| g.sources.as_slice())
                        .unwrap_or_default()
                        .iter()
                        .filter(|d| connected.contains_key(*d))
                        .map(|d| json!({"id": d.to_string(), "fromTemporary": false}))
                        .collect();
                    let global = global.map(|g| g.file).or_else(|| local.clone());
                    // No `mtime` mapping object: 2.x dropped it (and the
                    // node writes real modification times, so it had
                    // nothing to say).
                    Ok(json(&json!({"local": local.as_ref().map(file_json),
                                    "global": global.as_ref().map(file_json),
                                    "availability": availability})))
                }
                (Err(e), _) | (_, Err(e)) => Err(internal(format!("{e:#}"))),
            }
        }
        "/rest/folder/errors" | "/rest/folder/pullerrors" => {
            c.allow(&[Method::GET])?;
            let f = c.folder()?;
            let errors: Vec<Value> = c
                .node
                .folder_runtime(&f.id)
                .map(|rt| {
                    rt.pull_errors
                        .locked()
                        .iter()
                        .map(|(path, error)| json!({"path": path, "error": error}))
                        .collect()
                })
                .unwrap_or_default();
            let page = c.num("page", 1)?;
            let perpage = c.num("perpage", 65536)?;
            let shown = super::http_util::page(&errors, page, perpage);
            Ok(json(
                // Always a list ([] when empty, where Syncthing says null): every
                // client iterates it either way, and a list never needs a check.
                &json!({"folder": f.id, "errors": shown, "page": page, "perpage": perpage}),
            ))
        }
        _ => super::db_lists::route(c).await,
    }
}

fn status(c: &Call) -> Answer {
    let folder = c.folder()?.id;
    match status_json(&c.node, &folder) {
        Ok(Some(v)) => Ok(json(&v.value)),
        Ok(None) => Err(text(StatusCode::NOT_FOUND, "folder is not running")),
        Err(e) => Err(internal(format!("{e:#}"))),
    }
}

/// The folder summary (`/rest/db/status`, `FolderSummary` events); None
/// if the folder is not running.
pub(crate) fn status_json(node: &Node, folder: &str) -> anyhow::Result<Option<Figures<Value>>> {
    let Some(rt) = node.folder_runtime(folder) else {
        return Ok(None);
    };
    let state = *rt.state.locked();
    let folder_error = rt.error.locked().clone().unwrap_or_default();
    let pull_errors = rt.pull_errors.locked().len();
    let local = crate::pull::figures::local_totals(node, folder)?;
    let g = crate::pull::figures::need_totals(node, folder)?;
    // The figures are as old as the older of the two.
    let generation = local.generation.min(g.generation);
    let local = local.value;
    let g = g.value;
    let seq = *rt.sequence.borrow();
    let folder_cfg = node.folder_config(folder);
    // As 2.x: the highest sequence stored of each other device's index
    // of the folder (devices whose index we have not seen are left out).
    let mut remote_sequence = serde_json::Map::new();
    for d in folder_cfg.iter().flat_map(|f| f.devices.iter()) {
        if d.device_id == node.my_id {
            continue;
        }
        let (index_id, max_seq) = node.db.remote(folder, &d.device_id)?;
        if index_id != 0 || max_seq != 0 {
            remote_sequence.insert(d.device_id.to_string(), json!(max_seq));
        }
    }
    // ignoreDelete: deletions are not needed (2.x's folder summary zeroes
    // them; `db/completion` still counts them, as 2.x does).
    let mut g = g;
    if folder_cfg.as_ref().is_some_and(|f| f.ignore_delete) {
        g.need_deletes = 0;
    }
    let v = json!({
        "state": state,
        "stateChanged": rfc3339(node.started),
        "sequence": seq, "version": seq,
        "remoteSequence": remote_sequence,
        "invalid": "",
        // Why the folder cannot scan (state "error"), as 2.x gives it;
        // the watcher's failures are logged, not kept: empty, the key
        // there because 2.x always gives it.
        "error": folder_error, "watchError": "",
        "ignorePatterns": folder_cfg.as_ref()
            .is_some_and(|f| f.path.join(".stignore").exists()),
        "localFiles": local.files, "localDirectories": local.dirs,
        "localSymlinks": local.symlinks,
        "localDeleted": local.deleted, "localBytes": local.bytes,
        "localTotalItems": local.items(),
        "globalFiles": g.global_files, "globalDirectories": g.global_dirs,
        "globalSymlinks": g.global_symlinks,
        "globalDeleted": g.global_deleted, "globalBytes": g.global_bytes,
        "globalTotalItems": g.global_files + g.global_dirs + g.global_symlinks + g.global_deleted,
        "needFiles": g.need_files, "needDirectories": g.need_dirs,
        "needSymlinks": g.need_symlinks, "needBytes": g.need_bytes,
        "needDeletes": g.need_deletes, "needTotalItems": g.need_items(),
        "inSyncFiles": g.global_files.saturating_sub(g.need_files),
        "inSyncBytes": g.global_bytes.saturating_sub(g.need_bytes),
        "pullErrors": pull_errors, "errors": pull_errors,
        // Every folder, as 2.x (1.19.2 gave them for receive-only folders
        // only). Locally changed items are not counted apart yet: zero.
        "receiveOnlyChangedFiles": 0, "receiveOnlyChangedDirectories": 0,
        "receiveOnlyChangedSymlinks": 0, "receiveOnlyChangedDeletes": 0,
        "receiveOnlyChangedBytes": 0, "receiveOnlyTotalItems": 0,
    });
    Ok(Some(Figures {
        value: v,
        generation,
    }))
}

fn completion(c: &Call) -> Answer {
    let folder = c.folder()?.id;
    let device = c.device()?;
    completion_json(&c.node, &folder, device)
        .map(|v| json(&v.value))
        .map_err(|e| internal(format!("{e:#}")))
}

/// `/rest/db/completion` (and `FolderCompletion` events) for `device`
/// (`None`: we), against the global state.
pub(crate) fn completion_json(
    node: &Node,
    folder: &str,
    device: Option<proto::DeviceId>,
) -> anyhow::Result<Figures<Value>> {
    let device = device.filter(|d| *d != node.my_id);
    let (sequence, state) = match device {
        None => (
            node.folder_runtime(folder)
                .map_or(0, |r| *r.sequence.borrow()),
            "valid",
        ),
        Some(d) => (
            node.db.remote(folder, &d).map_or(0, |r| r.1),
            if node.connected(&d) {
                "valid"
            } else {
                "unknown"
            },
        ),
    };
    let Figures {
        value: mut c,
        generation,
    } = crate::pull::figures::completion(node, folder, device)?;
    // What the device said it already holds in temporary files is not
    // needed any more (Syncthing subtracts it the same way).
    if let Some(d) = device {
        let downloaded = node.remote_downloads.bytes(&d, folder);
        if downloaded > 0 {
            c.need_bytes = c.need_bytes.saturating_sub(downloaded);
            c = c.finish();
        }
    }
    Ok(Figures {
        value: json!({
            "completion": c.completion, "globalBytes": c.global_bytes,
            "globalItems": c.global_items, "needBytes": c.need_bytes,
            "needDeletes": c.need_deletes, "needItems": c.need_items,
            "remoteState": state,
            "sequence": sequence,
        }),
        generation,
    })
}

async fn revert_or_override(c: &Call) -> Answer {
    let f = c.folder()?;
    let revert = c.path == "/rest/db/revert";
    let fits = if revert {
        f.kind == FolderType::ReceiveOnly
    } else {
        f.read_only()
    };
    if !fits {
        let want = if revert {
            FolderType::ReceiveOnly
        } else {
            FolderType::SendOnly
        }
        .as_str();
        return Err(super::http_util::bad(format!(
            "folder {:?} is not {want}",
            f.id
        )));
    }
    let n2 = c.node.clone();
    let folder = f.id.clone();
    let done = tokio::task::spawn_blocking(move || {
        if revert {
            crate::pull::local_ops::revert(&n2, &folder)
        } else {
            crate::pull::local_ops::override_remote(&n2, &folder)
        }
    })
    .await;
    match done {
        Ok(Ok(_)) => Ok(ok()),
        Ok(Err(e)) => Err(internal(format!("{e:#}"))),
        Err(e) => Err(internal(e)),
    }
}
