//! `DownloadProgress`: the files being pulled right now, with their blocks
//! reused, copied and pulled so far (Syncthing's `pullerProgress` shape),
//! emitted every few seconds while something changes. Only files in
//! flight are held, so the registry stays small.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::bep::wire::FileInfo;
use serde_json::{json, Value};

use daemon::sync::MutexExt;

/// Where a block of a file being pulled came from.
#[derive(Clone, Copy)]
pub enum Source {
    /// Already in the temp file of an interrupted pull.
    Reused,
    /// Copied from a local file (the old version or another file).
    Copied,
    /// Requested from a device.
    Pulled,
}

#[derive(Default)]
struct FileProgress {
    total: u64,
    reused: u64,
    copied: u64,
    pulled: u64,
    bytes_done: u64,
    bytes_total: u64,
}

struct Registry {
    files: HashMap<String, HashMap<String, FileProgress>>,
    changed: bool,
}

/// The files one node is pulling (see the module documentation).
pub struct Progress(Mutex<Registry>);

impl Default for Progress {
    fn default() -> Self {
        Progress(Mutex::new(Registry {
            files: HashMap::new(),
            changed: false,
        }))
    }
}

impl Progress {
    fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.0.locked())
    }

    pub(super) fn start(&self, folder: &str, f: &FileInfo) {
        if f.r#type != 0 || f.deleted || f.blocks.is_empty() {
            return;
        }
        self.with(|r| {
            r.files.entry(folder.to_string()).or_default().insert(
                f.name.clone(),
                FileProgress {
                    total: f.blocks.len() as u64,
                    bytes_total: f.size.max(0) as u64,
                    ..Default::default()
                },
            );
            r.changed = true;
        });
    }

    pub(super) fn finish(&self, folder: &str, name: &str) {
        self.with(|r| {
            if let Some(m) = r.files.get_mut(folder) {
                if m.remove(name).is_some() {
                    r.changed = true;
                }
                if m.is_empty() {
                    r.files.remove(folder);
                }
            }
        });
    }

    /// One block of `name` is in place.
    pub fn block(&self, folder: &str, name: &str, bytes: usize, source: Source) {
        self.with(|r| {
            let Some(p) = r.files.get_mut(folder).and_then(|m| m.get_mut(name)) else {
                return;
            };
            match source {
                Source::Reused => p.reused += 1,
                Source::Copied => p.copied += 1,
                Source::Pulled => p.pulled += 1,
            }
            p.bytes_done += bytes as u64;
            r.changed = true;
        });
    }

    /// The event data if anything changed since the last call.
    pub fn take_changes(&self) -> Option<Value> {
        self.with(|r| {
            if !r.changed {
                return None;
            }
            r.changed = false;
            let mut out = serde_json::Map::new();
            for (folder, files) in &r.files {
                let mut fm = serde_json::Map::new();
                for (name, p) in files {
                    fm.insert(
                        name.clone(),
                        json!({"total": p.total, "reused": p.reused, "copiedFromOrigin": p.copied,
                           "copiedFromOriginShifted": 0, "copiedFromElsewhere": 0,
                           "pulled": p.pulled, "pulling": 0,
                           "bytesDone": p.bytes_done, "bytesTotal": p.bytes_total}),
                    );
                }
                out.insert(folder.clone(), Value::Object(fm));
            }
            Some(Value::Object(out))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_files_in_flight_only() {
        let f = FileInfo {
            name: "progress-test.bin".into(),
            size: 300,
            blocks: vec![Default::default(); 3],
            ..Default::default()
        };
        let progress = Progress::default();
        progress.start("pt", &f);
        progress.block("pt", "progress-test.bin", 100, Source::Pulled);
        progress.block("pt", "progress-test.bin", 100, Source::Copied);
        let v = progress.take_changes().unwrap();
        let p = &v["pt"]["progress-test.bin"];
        assert_eq!(
            (
                p["pulled"].as_u64(),
                p["bytesDone"].as_u64(),
                p["total"].as_u64()
            ),
            (Some(1), Some(200), Some(3))
        );
        progress.finish("pt", "progress-test.bin");
        let v = progress.take_changes().unwrap();
        assert!(v.get("pt").is_none());
    }
}
