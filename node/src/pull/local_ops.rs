//! REST actions on a folder that differs from the global state on purpose:
//! revert (receive-only: drop local changes, take the global version back)
//! and override (send-only: make our version the global one).

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use proto::bep::vector;
use proto::bep::wire::{FileInfo, Vector};

use crate::db::Change;
use crate::model::Node;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn commit(node: &Node, folder: &str, changes: Vec<Change>) -> Result<usize> {
    let n = changes.len();
    if n > 0 {
        let seq = node.db.apply(folder, changes)?;
        if let Some(rt) = node.folder_runtime(folder) {
            rt.sequence.send_replace(seq);
        }
    }
    if let Some(rt) = node.folder_runtime(folder) {
        let _ = rt.scan_now.try_send(());
    }
    Ok(n)
}

/// Receive-only folder: every local change to a name another device
/// announces loses its flag and its version, so the next pull brings the
/// global version back (a copy that conflicts is kept as a conflict copy).
/// Files that exist only here are left alone (never deleted by a revert).
/// Returns the number of entries reverted.
pub fn revert(node: &Node, folder: &str) -> Result<usize> {
    let remote = node.db.remote_infos(folder)?;
    let known: HashSet<String> = remote
        .into_iter()
        .filter(|(_, f)| !f.invalid)
        .map(|(_, f)| f.name)
        .collect();
    let changed: Vec<FileInfo> = node
        .db
        .local_infos(folder)?
        .into_iter()
        .filter(|l| l.invalid && known.contains(&l.name))
        .collect();
    let names: Vec<&str> = changed.iter().map(|l| l.name.as_str()).collect();
    let metas = node.db.local_meta(folder, &names)?;
    let changes = changed
        .iter()
        .map(|l| Change {
            info: FileInfo {
                invalid: false,
                version: Some(Vector::default()),
                ..l.clone()
            },
            inode: metas.get(&l.name).map_or(0, |m| m.inode),
        })
        .collect();
    commit(node, folder, changes)
}

/// Send-only folder: every name where the global version is not ours gets
/// our entry (or a deletion, where we have none) with a version newer than
/// every other device's, so the other devices take ours.
pub fn override_remote(node: &Node, folder: &str) -> Result<usize> {
    let (need, _) = super::figures::need_list(node, folder)?;
    let ignores = match node.config().folders.iter().find(|f| f.id == folder) {
        Some(f) => crate::ignore::Ignores::load(&f.path)
            .context("not overriding until the folder's .stignore is fixed")?,
        None => crate::ignore::Ignores::default(),
    };
    // Like 1.19.2: names we ignore and entries in a bad state (ignored,
    // receive-only changes) are left alone — overriding a name we do not
    // have would announce its deletion everywhere.
    let need: Vec<_> = need
        .into_iter()
        .filter(|n| {
            !n.local.as_ref().is_some_and(|l| l.invalid) && !ignores.is_ignored(&n.global.name)
        })
        .collect();
    let my = node.my_id.short().0;
    let now = now();
    let names: Vec<&str> = need.iter().map(|n| n.global.name.as_str()).collect();
    let metas = node.db.local_meta(folder, &names)?;
    let mut changes = Vec::with_capacity(need.len());
    for n in &need {
        let base = n
            .local
            .as_ref()
            .and_then(|l| l.version.clone())
            .unwrap_or_default();
        let mut v = vector::merge(&base, &n.global.version.clone().unwrap_or_default());
        vector::update(&mut v, my, now);
        let info = match &n.local {
            Some(l) => FileInfo {
                version: Some(v),
                modified_by: my,
                invalid: false,
                ..l.clone()
            },
            None => FileInfo {
                name: n.global.name.clone(),
                r#type: n.global.r#type,
                deleted: true,
                modified_s: now as i64,
                version: Some(v),
                modified_by: my,
                ..Default::default()
            },
        };
        changes.push(Change {
            info,
            inode: metas.get(&n.global.name).map_or(0, |m| m.inode),
        });
    }
    commit(node, folder, changes)
}
