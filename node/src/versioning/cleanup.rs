//! Cleaning the versions folder, every `cleanupIntervalS` and on demand
//! (`POST /rest/folder/versions/cleanup`): the trash can drops entries
//! older than `cleanoutDays`; simple and staggered versioning apply their
//! rules to every file's versions; then directories left without any file
//! below them are removed (deepest first), the versions folder itself
//! kept. Each removal is logged at debug, the total at info.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::time::SystemTime;

use super::list::walk_tree;
use super::{select, store, tag, Error, Versioner};
use crate::config::Versioning;
use crate::dirfd::Dir;

/// What a cleanup did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub removed: usize,
    pub removed_dirs: usize,
    /// Versions left, and their bytes.
    pub kept: usize,
    pub bytes: u64,
}

fn split(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

impl Versioner {
    /// Cleans the versions folder at `now` (the folder root open as
    /// `root`).
    pub fn cleanup(&self, root: &Dir, now: SystemTime) -> Result<Cleaned, Error> {
        let gone = |files: &[super::list::Entry]| -> Vec<String> {
            match self.mode {
                Versioning::Trashcan { cleanout_days } => match Versioning::cleanout(cleanout_days)
                {
                    Some(max) => {
                        let cutoff = now.checked_sub(max).unwrap_or(std::time::UNIX_EPOCH);
                        files
                            .iter()
                            .filter(|f| tag::from_secs(f.mtime) < cutoff)
                            .map(|f| f.rel.clone())
                            .collect()
                    }
                    None => Vec::new(),
                },
                Versioning::Simple { .. } | Versioning::Staggered { .. } => {
                    let mut by_file: HashMap<String, Vec<String>> = HashMap::new();
                    for f in files {
                        if let Some((orig, _)) = tag::untag_filename(&f.rel) {
                            by_file.entry(orig).or_default().push(f.rel.clone());
                        }
                    }
                    let mut out = Vec::new();
                    for versions in by_file.values() {
                        out.extend(match self.mode {
                            Versioning::Simple {
                                keep,
                                cleanout_days,
                            } => select::simple(
                                versions,
                                keep,
                                Versioning::cleanout(cleanout_days),
                                now,
                            ),
                            Versioning::Staggered { max_age_s } => {
                                select::staggered(versions, max_age_s, now)
                            }
                            _ => Vec::new(),
                        });
                    }
                    out
                }
                Versioning::None | Versioning::External { .. } => Vec::new(),
            }
        };
        if matches!(self.mode, Versioning::None | Versioning::External { .. }) {
            return Ok(Cleaned::default());
        }
        let Some(vroot) = self.open_existing(root)? else {
            return Ok(Cleaned::default());
        };
        let (files, dirs) = walk_tree(&vroot);
        let mut remove = gone(&files);
        remove.sort();
        let mut done = Cleaned::default();
        let mut removed: std::collections::HashSet<String> = Default::default();
        for rel in &remove {
            let (parent, base) = split(rel);
            let Ok(Some(d)) = store::walk(&vroot, None, parent, false) else {
                continue;
            };
            match d.remove_file(base) {
                Ok(()) => {
                    done.removed += 1;
                    removed.insert(rel.clone());
                    tracing::debug!(folder = %self.folder, version = ?rel, "cleanup removed an old version");
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(folder = %self.folder, version = ?rel, error = %e, "cleanup cannot remove an old version");
                }
            }
        }
        // Directories with a file left anywhere below stay.
        let mut keep_dirs: std::collections::HashSet<&str> = Default::default();
        for f in files.iter().filter(|f| !removed.contains(&f.rel)) {
            done.kept += 1;
            done.bytes += f.size;
            let mut p = f.rel.as_str();
            while let Some(i) = p.rfind('/') {
                p = &p[..i];
                keep_dirs.insert(p);
            }
        }
        let mut empty: Vec<&String> = dirs
            .iter()
            .filter(|d| !keep_dirs.contains(d.as_str()))
            .collect();
        empty.sort_by(|a, b| b.cmp(a));
        for rel in empty {
            let (parent, base) = split(rel);
            let Ok(Some(d)) = store::walk(&vroot, None, parent, false) else {
                continue;
            };
            if d.remove_dir(base).is_ok() {
                done.removed_dirs += 1;
                tracing::debug!(folder = %self.folder, dir = ?rel, "cleanup removed an empty directory");
            }
        }
        self.metrics.kept.set(done.kept as i64);
        self.metrics.bytes.set(done.bytes as i64);
        if done.removed > 0 || done.removed_dirs > 0 {
            tracing::info!(folder = %self.folder, removed = done.removed, removed_dirs = done.removed_dirs,
                kept = done.kept, "versions cleanup done");
        }
        Ok(done)
    }
}
