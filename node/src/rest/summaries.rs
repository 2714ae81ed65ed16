//! `FolderSummary` and `FolderCompletion` events: the folder's status and
//! each connected device's completion, emitted when they change (checked
//! every second, as Syncthing's summary service batches them). The
//! figures come from the same functions as `/rest/db/status|completion`,
//! which are cached until the index changes, so an idle check is cheap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::events::Kind;
use crate::model::summaries::Figures;
use crate::model::Node;
use daemon::sync::MutexExt;

const EVERY: Duration = Duration::from_secs(1);
/// `DownloadProgress` every 5 s (Syncthing's default interval).
const PROGRESS_EVERY_TICKS: u64 = 5;

pub async fn run(node: Arc<Node>) {
    let mut last: HashMap<(String, Option<String>), Value> = HashMap::new();
    let mut last_print = String::new();
    let mut tick = tokio::time::interval(EVERY);
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        ticks += 1;
        // Syncthing's default progressUpdateIntervalS.
        if ticks.is_multiple_of(PROGRESS_EVERY_TICKS) {
            if let Some(p) = node.events.progress.take_changes() {
                node.events.emit(Kind::DownloadProgress, p);
            }
        }
        // Nothing changed (index, folder states, connections): the figures
        // are the same, and computing them would scan the local table.
        let (generation, print) = fingerprint(&node);
        if print == last_print {
            continue;
        }
        let n2 = node.clone();
        let seen = std::mem::take(&mut last);
        // The figures read the database: off the async threads.
        match tokio::task::spawn_blocking(move || check(&n2, seen)).await {
            Ok((next, oldest)) => {
                last = next;
                // Figures reused from an older index (costly ones are, for a
                // while) are looked at again next time: otherwise the last
                // change before a quiet spell, such as the completion
                // reaching 100 %, would never be told.
                if oldest >= generation {
                    last_print = print;
                }
            }
            Err(e) => tracing::warn!(error = %e, "folder summary task failed"),
        }
    }
}

type Seen = HashMap<(String, Option<String>), Value>;

/// What the summaries depend on, cheaply: the index generation (also
/// returned apart), each folder's state and error count, the connected
/// devices.
fn fingerprint(node: &Node) -> (u64, String) {
    let generation = node.db.generation();
    let mut out = generation.to_string();
    for f in node.config().folders.iter() {
        if let Some(rt) = node.folder_runtime(&f.id) {
            let state = *rt.state.locked();
            let errors = rt.pull_errors.locked().len();
            out.push_str(&format!(
                "|{}:{state}:{errors}:{}",
                f.id,
                *rt.sequence.borrow()
            ));
        }
    }
    let mut conns: Vec<String> = node.connections().keys().map(|d| d.to_string()).collect();
    conns.sort();
    out.push_str(&conns.join(","));
    (generation, out)
}

/// Emits what changed since `last`; returns what was seen and the oldest
/// index generation the figures came from.
fn check(node: &Node, mut last: Seen) -> (Seen, u64) {
    let mut next = HashMap::new();
    let mut oldest = u64::MAX;
    for f in node.config().folders.iter() {
        let Ok(Some(Figures {
            value: summary,
            generation,
        })) = crate::rest::db::status_json(node, &f.id)
        else {
            continue;
        };
        oldest = oldest.min(generation);
        let key = (f.id.clone(), None);
        if last.remove(&key).as_ref() != Some(&summary) {
            node.events.emit(
                Kind::FolderSummary,
                json!({"folder": f.id, "summary": summary}),
            );
        }
        next.insert(key, summary);
        for d in f.device_ids() {
            if d == node.my_id || !node.connected(&d) {
                continue;
            }
            let Ok(Figures {
                value: mut comp,
                generation,
            }) = crate::rest::db::completion_json(node, &f.id, Some(d))
            else {
                continue;
            };
            oldest = oldest.min(generation);
            let key = (f.id.clone(), Some(d.to_string()));
            if last.remove(&key).as_ref() != Some(&comp) {
                let mut ev = comp.clone();
                ev["folder"] = json!(f.id);
                // With `remoteState`, as 2.x (1.19.2 had none).
                ev["device"] = json!(d.to_string());
                node.events.emit(Kind::FolderCompletion, ev);
            }
            next.insert(key, std::mem::take(&mut comp));
        }
    }
    (next, oldest)
}
