//! What the node remembers for `/rest/system/log`, `/rest/system/error`
//! and `/rest/stats/*`, fed by the same calls that emit events: recent
//! log lines and errors (bounded rings), when each device was last seen,
//! when each folder was last scanned and its last changed file. Runtime
//! only: they start empty after a restart.
//!
//! The log lines come from the process's `tracing` subscriber, which
//! exists before the node does: the program makes the [`Records`] first,
//! hands the subscriber a closure holding an `Arc` of it, then gives the
//! same `Arc` to the node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::ring::Ring;
use daemon::sync::MutexExt;

/// Log lines kept (Syncthing keeps 250).
const LOG_LINES: usize = 250;
/// Errors kept for `/rest/system/error`.
const ERRORS: usize = 100;

pub struct Line {
    pub when: SystemTime,
    /// Syncthing's levels: 1 debug, 2 info, 3 warning, 4 error.
    pub level: u8,
    pub message: String,
}

#[derive(Default, Clone)]
pub struct DeviceStats {
    pub last_seen: Option<SystemTime>,
    pub connected_since: Option<SystemTime>,
    pub last_duration_s: f64,
}

#[derive(Default, Clone)]
pub struct FolderStats {
    pub last_scan: Option<SystemTime>,
    /// (when, name, deleted)
    pub last_file: Option<(SystemTime, String, bool)>,
}

struct Inner {
    log: Ring<Line>,
    errors: Ring<Line>,
    devices: HashMap<String, DeviceStats>,
    folders: HashMap<String, FolderStats>,
}

/// One node's records (see the module documentation).
pub struct Records(Mutex<Inner>);

impl Default for Records {
    fn default() -> Self {
        Records(Mutex::new(Inner {
            log: Ring::new(LOG_LINES),
            errors: Ring::new(ERRORS),
            devices: HashMap::new(),
            folders: HashMap::new(),
        }))
    }
}

impl Records {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.locked())
    }

    pub fn log(&self, level: u8, message: String) {
        let line = Line {
            when: SystemTime::now(),
            level,
            message,
        };
        self.with(|r| r.log.push(line));
    }

    /// An error shown by `/rest/system/error` (and logged).
    pub fn error(&self, message: String) {
        self.log(4, message.clone());
        let line = Line {
            when: SystemTime::now(),
            level: 4,
            message,
        };
        self.with(|r| r.errors.push(line));
    }

    pub fn clear_errors(&self) {
        self.with(|r| r.errors = Ring::new(ERRORS));
    }

    /// (when, level, message) of the kept lines after `since`.
    pub fn log_lines(&self, since: Option<SystemTime>) -> Vec<(SystemTime, u8, String)> {
        self.with(|r| {
            r.log
                .iter()
                .filter(|l| since.is_none_or(|s| l.when > s))
                .map(|l| (l.when, l.level, l.message.clone()))
                .collect()
        })
    }

    pub fn errors(&self) -> Vec<(SystemTime, u8, String)> {
        self.with(|r| {
            r.errors
                .iter()
                .map(|l| (l.when, l.level, l.message.clone()))
                .collect()
        })
    }

    pub fn device_up(&self, id: &str) {
        let now = SystemTime::now();
        self.with(|r| {
            let d = r.devices.entry(id.to_string()).or_default();
            d.last_seen = Some(now);
            d.connected_since = Some(now);
        });
    }

    pub fn device_down(&self, id: &str) {
        let now = SystemTime::now();
        self.with(|r| {
            let d = r.devices.entry(id.to_string()).or_default();
            d.last_seen = Some(now);
            if let Some(since) = d.connected_since.take() {
                d.last_duration_s = now.duration_since(since).unwrap_or_default().as_secs_f64();
            }
        });
    }

    pub fn device_stats(&self, id: &str) -> DeviceStats {
        self.with(|r| {
            let mut d = r.devices.get(id).cloned().unwrap_or_default();
            // While connected, "last seen" is now.
            if d.connected_since.is_some() {
                d.last_seen = Some(SystemTime::now());
            }
            d
        })
    }

    pub fn folder_scanned(&self, folder: &str) {
        let now = SystemTime::now();
        self.with(|r| r.folders.entry(folder.to_string()).or_default().last_scan = Some(now));
    }

    pub fn folder_file(&self, folder: &str, name: &str, deleted: bool) {
        let now = SystemTime::now();
        self.with(|r| {
            r.folders.entry(folder.to_string()).or_default().last_file =
                Some((now, name.to_string(), deleted));
        });
    }

    pub fn folder_stats(&self, folder: &str) -> FolderStats {
        self.with(|r| r.folders.get(folder).cloned().unwrap_or_default())
    }

    /// A line the logger wrote (see `daemon::LogArgs::init_with_copy`): kept
    /// for `/rest/system/log` without colours or the timestamp (the entry has
    /// its own), with Syncthing's level numbers.
    pub fn log_line(&self, text: &str) {
        let mut plain = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // Skip a CSI sequence: ESC [ … final byte.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
                continue;
            }
            plain.push(c);
        }
        let line = plain.trim();
        if line.is_empty() {
            return;
        }
        let level = if line.contains("ERROR") {
            4
        } else if line.contains("WARN") {
            3
        } else if line.contains("DEBUG") || line.contains("TRACE") {
            1
        } else {
            2
        };
        // `2026-01-02T03:04:05.123456Z  INFO target: message` → `INFO target: message`.
        let message = match line.split_once(char::is_whitespace) {
            Some((first, rest)) if first.starts_with(|c: char| c.is_ascii_digit()) => {
                rest.trim_start()
            }
            _ => line,
        };
        self.log(level, message.to_string());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_lose_colours_and_timestamps() {
        let records = super::Records::default();
        records.log_line(
            "\u{1b}[2m2026-01-02T03:04:05Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m node::x: disk low\n",
        );
        let lines = records.log_lines(None);
        let (_, level, msg) = lines.last().unwrap();
        assert_eq!((*level, msg.as_str()), (3, "WARN node::x: disk low"));
    }
}
