//! `/rest/db/need`, `/remoteneed`, `/localchanged` (paged lists),
//! `/rest/db/browse` (the global tree) and `/rest/db/ignores`. Each walks
//! the folder's index once in name order and keeps only the page asked
//! for, so memory stays bounded whatever the folder's size.

use std::ops::ControlFlow;

use anyhow::Context;
use http::{Method, StatusCode};
use proto::bep::wire::FileInfo;
use serde_json::{json, Value};

use super::file_json::file_json;
use super::http_util::{bad, internal, json, not_found, ok, text, time_fmt, Answer, Call};
use crate::db::global::{Direction, Entry};
use crate::pull::need;

/// Syncthing's default page size (all of it, in practice).
const DEFAULT_PERPAGE: u64 = 1 << 16;
/// Entries `/rest/db/browse` returns at most.
const BROWSE_MAX: usize = 100_000;

pub async fn route(c: &Call) -> Answer {
    match c.path.as_str() {
        "/rest/db/need" => {
            c.allow(&[Method::GET])?;
            let (page, perpage) = paging(c);
            let folder = c.folder()?.id;
            let me = c.node.my_id;
            let files = collect(c, &folder, page, perpage, move |e| needs(e, None, &me))?;
            Ok(json(&json!({"progress": [], "queued": [], "rest": files,
                            "page": page, "perpage": perpage})))
        }
        "/rest/db/remoteneed" => {
            c.allow(&[Method::GET])?;
            let (page, perpage) = paging(c);
            let folder = c.folder()?.id;
            let Some(device) = c.device()? else {
                return Err(bad("device parameter missing"));
            };
            let me = c.node.my_id;
            let files = collect(c, &folder, page, perpage, move |e| {
                needs(e, Some(device), &me)
            })?;
            Ok(json(
                &json!({"files": files, "page": page, "perpage": perpage}),
            ))
        }
        "/rest/db/localchanged" => {
            c.allow(&[Method::GET])?;
            let (page, perpage) = paging(c);
            let folder = c.folder()?.id;
            // Local changes of a receive-only folder are recorded invalid.
            let files = collect(c, &folder, page, perpage, |e| {
                e.local.as_ref().filter(|l| l.invalid).cloned()
            })?;
            Ok(json(
                &json!({"files": files, "page": page, "perpage": perpage}),
            ))
        }
        "/rest/db/browse" => {
            c.allow(&[Method::GET])?;
            browse(c)
        }
        "/rest/db/ignores" => {
            c.allow(&[Method::GET, Method::POST])?;
            ignores(c)
        }
        "/rest/folder/versions" | "/rest/folder/versions/cleanup" => {
            super::versions::route(c).await
        }
        "/rest/db/prio" => {
            c.allow(&[Method::POST])?;
            Err(bad(
                "this node pulls in name order and cannot move a file to the front",
            ))
        }
        _ => Err(not_found()),
    }
}

fn paging(c: &Call) -> (u64, u64) {
    // Like Syncthing, a missing or malformed value means the default.
    let n = |k: &str, d: u64| {
        c.q(k)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v >= 1)
            .unwrap_or(d)
    };
    (n("page", 1), n("perpage", DEFAULT_PERPAGE))
}

/// The global entry if `device` (`None`: we) does not have its version.
fn needs(e: &Entry, device: Option<proto::DeviceId>, me: &proto::DeviceId) -> Option<FileInfo> {
    let (_, global) = need::global(e)?;
    if global.invalid {
        return None;
    }
    let theirs = match device.filter(|d| d != me) {
        None => e.local.as_ref(),
        Some(d) => e.remotes.iter().find(|(r, _)| *r == d).map(|(_, f)| f),
    };
    match theirs {
        None if global.deleted => None,
        Some(t) if t.version == global.version && !t.invalid => None,
        _ => Some(global.clone()),
    }
}

/// One page of the items `pick` selects, as truncated file JSON.
fn collect(
    c: &Call,
    folder: &str,
    page: u64,
    perpage: u64,
    pick: impl Fn(&Entry) -> Option<FileInfo>,
) -> Result<Vec<Value>, super::http_util::Reply> {
    let skip = (page - 1).saturating_mul(perpage);
    let mut seen = 0u64;
    let mut out = Vec::new();
    c.node
        .db
        .for_each_entry(folder, None, Direction::Ascending, |e| {
            if let Some(f) = pick(&e) {
                if seen >= skip {
                    let mut v = file_json(&f);
                    // Summaries carry no blocks: unknown, as Syncthing says.
                    v["numBlocks"] = Value::Null;
                    out.push(v);
                }
                seen += 1;
                if out.len() as u64 >= perpage {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| internal(format!("{e:#}")))?;
    Ok(out)
}

fn browse(c: &Call) -> Answer {
    let folder = c.folder()?.id;
    let mut prefix = c.q("prefix").unwrap_or("").trim_matches('/').to_string();
    if !prefix.is_empty() {
        prefix.push('/');
    }
    let levels: i64 = c.q("levels").and_then(|v| v.parse().ok()).unwrap_or(-1);
    let dirs_only = c.q("dirsonly").is_some_and(|v| !v.is_empty());
    // Collected flat (name → entry) in name order, parents first.
    let mut items: Vec<(String, Value, bool)> = Vec::new();
    c.node
        .db
        .for_each_entry(&folder, None, Direction::Ascending, |e| {
            if items.len() >= BROWSE_MAX {
                return ControlFlow::Break(());
            }
            let Some((_, g)) = need::global(&e) else {
                return ControlFlow::Continue(());
            };
            if g.deleted || g.invalid {
                return ControlFlow::Continue(());
            }
            let Some(rel) = e.name.strip_prefix(prefix.as_str()) else {
                return ControlFlow::Continue(());
            };
            if rel.is_empty() || (levels > -1 && rel.matches('/').count() as i64 > levels) {
                return ControlFlow::Continue(());
            }
            let is_dir = g.r#type == 1;
            if dirs_only && !is_dir {
                return ControlFlow::Continue(());
            }
            let v = json!({
                "name": rel.rsplit('/').next().unwrap_or(rel),
                "modTime": time_fmt(g.modified_s),
                "size": g.size,
                "type": match g.r#type { 1 => "FILE_INFO_TYPE_DIRECTORY", 4 => "FILE_INFO_TYPE_SYMLINK", _ => "FILE_INFO_TYPE_FILE" },
            });
            items.push((rel.to_string(), v, is_dir));
            ControlFlow::Continue(())
        })
        .map_err(|e| internal(format!("{e:#}")))?;
    Ok(json(&Value::Array(tree(&items, ""))))
}

/// Nests the flat list: the children of `parent` (`""`: the root).
fn tree(items: &[(String, Value, bool)], parent: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, v, is_dir) in items {
        let (dir, _) = name.rsplit_once('/').unwrap_or(("", name));
        if dir != parent {
            continue;
        }
        let mut v = v.clone();
        if *is_dir {
            let children = tree(items, name);
            if !children.is_empty() {
                v["children"] = Value::Array(children);
            }
        }
        out.push(v);
    }
    out
}

fn ignores(c: &Call) -> Answer {
    let f = c.folder()?;
    let path = f.path.join(".stignore");
    if c.method == Method::POST {
        let body = c.json()?;
        let Some(lines) = body.get("ignore").and_then(Value::as_array) else {
            return Err(bad("expected {\"ignore\": [lines]}"));
        };
        let mut text = String::new();
        for l in lines {
            let Some(s) = l.as_str() else {
                return Err(bad("ignore: every line must be a string"));
            };
            text.push_str(s);
            text.push('\n');
        }
        // Refuse what the scanner could not use: the old file comes back.
        let before = std::fs::read(&path).ok();
        write_atomic(&path, text.as_bytes()).map_err(|e| internal(format!("{e:#}")))?;
        if let Err(e) = crate::ignore::Ignores::load(&f.path) {
            let restored = match &before {
                Some(old) => write_atomic(&path, old),
                None => std::fs::remove_file(&path).map_err(Into::into),
            };
            if let Err(r) = restored {
                return Err(internal(format!(
                    "{e:#}; and restoring the old file failed: {r:#}"
                )));
            }
            return Err(bad(format!("ignore: {e:#}")));
        }
        if let Some(rt) = c.node.folder_runtime(&f.id) {
            let _ = rt.scan_now.try_send(());
        }
        return Ok(ok());
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let error = crate::ignore::Ignores::load(&f.path)
                .err()
                .map(|e| format!("{e:#}"));
            // Patterns as written (this node does not expand them apart).
            let expanded: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("//") && !l.starts_with('#'))
                .collect();
            Ok(json(
                &json!({"ignore": lines, "expanded": expanded, "error": error}),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json(
            &json!({"ignore": null, "expanded": null, "error": null}),
        )),
        Err(e) => Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read {}: {e}", path.display()),
        )),
    }
}

fn write_atomic(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp-rest");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
