//! `/rest/folder/versions`: the folder's versions (`GET`), restoring some
//! (`POST` with `{"path": "versionTime as listed"}`), both as Syncthing
//! 2.1.3 answers; and our addition `POST /rest/folder/versions/cleanup`,
//! a cleanup now (`{"removed": N}`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use http::Method;
use serde_json::{json, Map, Value};

use super::http_util::{internal, json, Answer, Call};
use crate::config::FolderConfig;
use crate::dirfd::Dir;
use crate::model::Node;
use crate::versioning::{self, tag, Versioner};

pub async fn route(c: &Call) -> Answer {
    match c.path.as_str() {
        "/rest/folder/versions" => {
            c.allow(&[Method::GET, Method::POST])?;
            let f = c.folder()?;
            if c.method == Method::GET {
                let list = blocking(&c.node, f, "get versions", |v, root| v.list(&root)).await?;
                let out: Map<String, Value> = list
                    .into_iter()
                    .map(|(name, versions)| {
                        (
                            name,
                            Value::Array(versions.iter().map(|v| v.to_json()).collect()),
                        )
                    })
                    .collect();
                return Ok(json(&Value::Object(out)));
            }
            // Go decodes the body as map[string]time.Time: a malformed
            // body or time fails the whole request with a 500.
            let body: BTreeMap<String, String> = serde_json::from_slice(&c.body)
                .map_err(|e| internal(format!("invalid JSON: {e}")))?;
            let mut wanted = Vec::with_capacity(body.len());
            for (path, t) in body {
                let Some(at) = tag::parse_rfc3339(&t) else {
                    return Err(internal(format!("parsing time {t:?}: not RFC 3339")));
                };
                wanted.push((path, at));
            }
            let id = f.id.clone();
            let errors = blocking(&c.node, f, "restore", move |v, root| {
                let now = SystemTime::now();
                let mut errors = Map::new();
                for (path, at) in wanted {
                    if let Err(e) = v.restore(&root, &path, at, now) {
                        errors.insert(path, json!(described(v, "restore", &e)));
                    }
                }
                Ok(errors)
            })
            .await?;
            // Rescanned so the restored files reach the other devices.
            if let Some(rt) = c.node.folder_runtime(&id) {
                let _ = rt.scan_now.try_send(());
            }
            Ok(json(&Value::Object(errors)))
        }
        "/rest/folder/versions/cleanup" => {
            c.allow(&[Method::POST])?;
            let f = c.folder()?;
            let done = blocking(&c.node, f, "clean", |v, root| {
                v.cleanup(&root, SystemTime::now())
            })
            .await?;
            Ok(json(&json!({"removed": done.removed})))
        }
        _ => Err(super::http_util::not_found()),
    }
}

/// Syncthing's error text: `"<type> versioner: <op>: <error>"`.
fn described(v: &Versioner, op: &str, e: &versioning::Error) -> String {
    let kind = match v.mode {
        crate::config::Versioning::Trashcan { .. } => "trashcan",
        crate::config::Versioning::Simple { .. } => "simple",
        crate::config::Versioning::Staggered { .. } => "staggered",
        crate::config::Versioning::External { .. } => "external",
        crate::config::Versioning::None => "",
    };
    let mut text = format!("{kind} versioner: {op}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Runs `work` with the folder's versioner and root on the blocking pool;
/// the errors Syncthing answers with a 500 (no versioner, paused folder,
/// the operation failed as a whole).
async fn blocking<T: Send + 'static>(
    node: &std::sync::Arc<Node>,
    f: FolderConfig,
    op: &'static str,
    work: impl FnOnce(&Versioner, Dir) -> Result<T, versioning::Error> + Send + 'static,
) -> Result<T, super::http_util::Reply> {
    if f.paused {
        return Err(internal("folder is paused"));
    }
    let Some(v) = Versioner::for_folder(&f, versioning::Metrics::of(&node.metrics, &f.id)) else {
        return Err(internal(versioning::Error::NoVersioner));
    };
    tokio::task::spawn_blocking(move || {
        let root = Dir::open(&f.path)
            .map_err(|e| format!("cannot open the folder {}: {e}", f.path.display()))?;
        work(&v, root).map_err(|e| described(&v, op, &e))
    })
    .await
    .map_err(internal)?
    .map_err(internal)
}
