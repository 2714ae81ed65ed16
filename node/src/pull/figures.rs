//! What the REST API and events ask of a folder's index: the global
//! state's totals, our own counts, a device's completion (cached per index
//! generation in [`crate::model::summaries`]), one name's global version
//! and the whole need list. Queries only: nothing here changes the folder.

use std::ops::ControlFlow;

use anyhow::Result;
use proto::bep::wire::FileInfo;
use proto::DeviceId;

use super::need::{self, Needed};
use crate::db::figures::LocalCounts;
use crate::db::Direction;
use crate::model::summaries::Figures;
use crate::model::Node;

/// The global-state counts of `folder` (`/rest/db/status`), reused until
/// the index changes (or briefly after: `summaries`).
pub fn need_totals(node: &Node, folder: &str) -> Result<Figures<need::Totals>> {
    node.summaries
        .need_totals
        .get_or_compute(folder.to_string(), node.db.generation(), || {
            let mut t = need::Totals::default();
            node.db
                .for_each_entry(folder, None, Direction::Ascending, |e| {
                    need::evaluate(e, &mut t);
                    ControlFlow::Continue(())
                })?;
            Ok(t)
        })
}

/// Counts of our own entries of `folder`; reused like the other summaries.
pub fn local_totals(node: &Node, folder: &str) -> Result<Figures<LocalCounts>> {
    node.summaries
        .local_counts
        .get_or_compute(folder.to_string(), node.db.generation(), || {
            node.db.local_totals(folder)
        })
}

/// How complete `device` (`None`: we) is for `folder`, against the global
/// state; reused until the index changes.
pub fn completion(
    node: &Node,
    folder: &str,
    device: Option<DeviceId>,
) -> Result<Figures<need::Completion>> {
    let device = device.filter(|d| *d != node.my_id);
    // Ours is kept under our own ID: no remote device has it.
    let key = (folder.to_string(), device.unwrap_or(node.my_id));
    node.summaries
        .completion
        .get_or_compute(key, node.db.generation(), || {
            let mut c = need::Completion::default();
            node.db
                .for_each_entry(folder, None, Direction::Ascending, |e| {
                    need::add_completion(&e, device.as_ref(), &mut c);
                    ControlFlow::Continue(())
                })?;
            Ok(c.finish())
        })
}

/// The global version of one name, in full.
pub struct GlobalFile {
    pub file: FileInfo,
    /// The devices announcing exactly that version.
    pub sources: Vec<DeviceId>,
}

pub fn global_file(node: &Node, folder: &str, name: &str) -> Result<Option<GlobalFile>> {
    let entry = node.db.entry(folder, name)?;
    let Some((from, g)) = need::global(&entry) else {
        return Ok(None);
    };
    let sources = need::sources(&entry, g);
    let full = match from {
        None => node.db.file(folder, name)?,
        Some(d) => node.db.remote_file(folder, &d, name)?,
    };
    Ok(full.map(|file| GlobalFile { file, sources }))
}

/// Every needed item of `folder` with our entry loaded in full (the global
/// one stays a summary), and the totals. Memory grows with what is needed:
/// for explicit operations (override), not for pulling.
pub fn need_list(node: &Node, folder: &str) -> Result<(Vec<Needed>, need::Totals)> {
    let mut need = Vec::new();
    let mut t = need::Totals::default();
    node.db
        .for_each_entry(folder, None, Direction::Ascending, |e| {
            need.extend(need::evaluate(e, &mut t));
            ControlFlow::Continue(())
        })?;
    for n in &mut need {
        n.local = node.db.file(folder, &n.global.name)?;
    }
    Ok((need, t))
}
