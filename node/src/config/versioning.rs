//! A folder's `versioning` setting: Syncthing's JSON shape (`type`,
//! `params` as strings, `cleanupIntervalS`, `fsPath`, `fsType`) read once
//! into [`Versioning`], so the rest of the node never looks at a
//! parameter string again. What the user wrote is kept as written and
//! shown back (a tool reads what it wrote).
//!
//! Syncthing silently falls back to a default when a parameter does not
//! parse (`keep: "five"` keeps 5); here such a value is refused with the
//! key in the message, because a typo in a protection setting should not
//! look like it worked.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Seconds in a day (cleanoutDays).
const DAY_S: u64 = 24 * 60 * 60;
/// Syncthing's default `maxAge` of staggered versioning (365 days).
pub const DEFAULT_STAGGERED_MAX_AGE_S: u64 = 31_536_000;
/// Syncthing's default `keep` of simple versioning.
pub const DEFAULT_SIMPLE_KEEP: usize = 5;
/// How long an external command may run before it is killed and the
/// file's pull fails (Syncthing has no limit; a hung script would stall
/// the folder forever). The `timeoutS` parameter overrides it.
pub const DEFAULT_EXTERNAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Syncthing's default `cleanupIntervalS`.
pub const DEFAULT_CLEANUP_INTERVAL_S: u64 = 3600;

/// The typed versioner of a folder.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Versioning {
    /// No versioning: replaced and deleted files are gone.
    #[default]
    None,
    /// Replaced/deleted files keep their name in the versions folder, the
    /// newest replacing the older; removed after `cleanout_days` (0: never).
    Trashcan { cleanout_days: u32 },
    /// Up to `keep` tagged versions per file; older than `cleanout_days`
    /// (0: no age limit) removed.
    Simple { keep: usize, cleanout_days: u32 },
    /// One version per interval bucket, nothing older than `max_age_s`
    /// (0: no age limit).
    Staggered { max_age_s: u64 },
    /// A command that moves the file away itself, run without a shell.
    External { command: String, timeout: Duration },
}

impl Versioning {
    /// The `cleanoutDays` cut-off, if any.
    pub fn cleanout(days: u32) -> Option<Duration> {
        (days > 0).then(|| Duration::from_secs(u64::from(days) * DAY_S))
    }
}

/// The setting as Syncthing shapes it, kept as written plus the parsed
/// [`Versioning`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Raw", into = "Raw")]
pub struct VersioningConfig {
    raw: Raw,
    mode: Versioning,
}

impl Default for VersioningConfig {
    fn default() -> Self {
        VersioningConfig {
            raw: Raw::default(),
            mode: Versioning::None,
        }
    }
}

impl VersioningConfig {
    /// Parses the Syncthing-shaped fields.
    pub fn new(
        kind: &str,
        params: BTreeMap<String, String>,
    ) -> Result<VersioningConfig, VersioningError> {
        Raw {
            kind: kind.to_string(),
            params,
            ..Raw::default()
        }
        .try_into()
    }

    pub fn mode(&self) -> &Versioning {
        &self.mode
    }

    pub fn kind(&self) -> &str {
        &self.raw.kind
    }

    /// Seconds between cleanups (0: never, only on demand).
    pub fn cleanup_interval_s(&self) -> u64 {
        self.raw.cleanup_interval_s
    }

    /// `fsPath` as written (`""`: `.stversions` in the folder).
    pub fn fs_path(&self) -> &str {
        &self.raw.fs_path
    }

    pub fn with_fs_path(mut self, path: &str) -> VersioningConfig {
        self.raw.fs_path = path.to_string();
        self
    }

    pub fn with_cleanup_interval_s(mut self, s: u64) -> VersioningConfig {
        self.raw.cleanup_interval_s = s;
        self
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersioningError {
    #[error(
        "type {0:?} is not one of \"\", \"trashcan\", \"simple\", \"staggered\", \"external\""
    )]
    UnknownType(String),
    #[error("params.{key}: {value:?} is not a whole number (0 or more)")]
    NotANumber { key: &'static str, value: String },
    #[error("params.keep: must be at least 1 (0 would delete every version at once)")]
    KeepZero,
    #[error("params.command: an external versioner needs a command")]
    NoCommand,
    #[error("fsType: {0:?} is not supported (only \"basic\")")]
    FsType(String),
    #[error("cleanupIntervalS: {0} is more than {max} seconds", max = super::MAX_INTERVAL_S)]
    Interval(u64),
}

/// What the file and the REST API hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default, deserialize_with = "params")]
    params: BTreeMap<String, String>,
    #[serde(default = "default_cleanup", rename = "cleanupIntervalS")]
    cleanup_interval_s: u64,
    #[serde(default)]
    fs_path: String,
    #[serde(default = "default_fs_type")]
    fs_type: String,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            kind: String::new(),
            params: BTreeMap::new(),
            cleanup_interval_s: DEFAULT_CLEANUP_INTERVAL_S,
            fs_path: String::new(),
            fs_type: default_fs_type(),
        }
    }
}

fn default_cleanup() -> u64 {
    DEFAULT_CLEANUP_INTERVAL_S
}

fn default_fs_type() -> String {
    "basic".into()
}

/// Parameter values are strings in Syncthing's JSON; a TOML file may
/// write `keep = 5`, which means the same.
fn params<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        S(String),
        I(i64),
        B(bool),
    }
    let m = BTreeMap::<String, Value>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::S(s) => s,
                Value::I(i) => i.to_string(),
                Value::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// A whole-number parameter; absent or empty (what Syncthing's GUI sends
/// for a field left blank) is the default.
fn number(
    p: &BTreeMap<String, String>,
    key: &'static str,
    default: u64,
) -> Result<u64, VersioningError> {
    match p.get(key).map(|v| v.trim()) {
        None | Some("") => Ok(default),
        Some(v) => v.parse().map_err(|_| VersioningError::NotANumber {
            key,
            value: v.to_string(),
        }),
    }
}

fn days(p: &BTreeMap<String, String>) -> Result<u32, VersioningError> {
    let d = number(p, "cleanoutDays", 0)?;
    u32::try_from(d).map_err(|_| VersioningError::NotANumber {
        key: "cleanoutDays",
        value: d.to_string(),
    })
}

impl TryFrom<Raw> for VersioningConfig {
    type Error = VersioningError;

    fn try_from(raw: Raw) -> Result<Self, Self::Error> {
        let p = &raw.params;
        let mode = match raw.kind.as_str() {
            "" => Versioning::None,
            "trashcan" => Versioning::Trashcan {
                cleanout_days: days(p)?,
            },
            "simple" => {
                let keep = number(p, "keep", DEFAULT_SIMPLE_KEEP as u64)?;
                if keep == 0 {
                    return Err(VersioningError::KeepZero);
                }
                Versioning::Simple {
                    keep: keep.min(usize::MAX as u64) as usize,
                    cleanout_days: days(p)?,
                }
            }
            // `cleanInterval` (1.x) is legacy: cleanup follows
            // cleanupIntervalS, as in 2.x. It is kept as written.
            "staggered" => Versioning::Staggered {
                max_age_s: number(p, "maxAge", DEFAULT_STAGGERED_MAX_AGE_S)?,
            },
            "external" => {
                let command = p.get("command").map(|c| c.trim()).unwrap_or("");
                if command.is_empty() {
                    return Err(VersioningError::NoCommand);
                }
                let t = number(p, "timeoutS", DEFAULT_EXTERNAL_TIMEOUT.as_secs())?;
                Versioning::External {
                    command: command.to_string(),
                    timeout: Duration::from_secs(t.max(1)),
                }
            }
            other => return Err(VersioningError::UnknownType(other.to_string())),
        };
        if raw.fs_type != "basic" {
            return Err(VersioningError::FsType(raw.fs_type));
        }
        if raw.cleanup_interval_s > super::MAX_INTERVAL_S {
            return Err(VersioningError::Interval(raw.cleanup_interval_s));
        }
        Ok(VersioningConfig { raw, mode })
    }
}

impl From<VersioningConfig> for Raw {
    fn from(v: VersioningConfig) -> Raw {
        v.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<VersioningConfig, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn syncthing_shapes_are_typed_once() {
        let v = parse(
            json!({"type": "simple", "params": {"keep": "3", "cleanoutDays": "7"},
            "cleanupIntervalS": 60, "fsPath": "/v", "fsType": "basic"}),
        )
        .unwrap();
        assert_eq!(
            v.mode(),
            &Versioning::Simple {
                keep: 3,
                cleanout_days: 7
            }
        );
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            json!({"type": "simple", "params": {"keep": "3", "cleanoutDays": "7"},
                "cleanupIntervalS": 60, "fsPath": "/v", "fsType": "basic"})
        );
        // Defaults, as Syncthing's.
        let d = parse(json!({})).unwrap();
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"type": "", "params": {}, "cleanupIntervalS": 3600, "fsPath": "", "fsType": "basic"})
        );
        assert_eq!(
            parse(json!({"type": "simple", "params": {"keep": ""}}))
                .unwrap()
                .mode(),
            &Versioning::Simple {
                keep: 5,
                cleanout_days: 0
            }
        );
        assert_eq!(
            parse(json!({"type": "staggered", "params": {"cleanInterval": "3600"}}))
                .unwrap()
                .mode(),
            &Versioning::Staggered {
                max_age_s: 31_536_000
            }
        );
        assert_eq!(
            parse(json!({"type": "external", "params": {"command": "mv %FILE_PATH% /x", "timeoutS": "2"}}))
                .unwrap()
                .mode(),
            &Versioning::External {
                command: "mv %FILE_PATH% /x".into(),
                timeout: Duration::from_secs(2)
            }
        );
        // A number in a TOML file means the same as its string.
        let t: VersioningConfig =
            toml::from_str("type = \"trashcan\"\nparams = { cleanoutDays = 2 }").unwrap();
        assert_eq!(t.mode(), &Versioning::Trashcan { cleanout_days: 2 });
    }

    #[test]
    fn bad_settings_are_refused_with_the_key() {
        for (v, want) in [
            (json!({"type": "simpel"}), "\"simpel\""),
            (
                json!({"type": "simple", "params": {"keep": "five"}}),
                "params.keep",
            ),
            (
                json!({"type": "simple", "params": {"keep": "0"}}),
                "at least 1",
            ),
            (
                json!({"type": "trashcan", "params": {"cleanoutDays": "-1"}}),
                "params.cleanoutDays",
            ),
            (
                json!({"type": "staggered", "params": {"maxAge": "1y"}}),
                "params.maxAge",
            ),
            (json!({"type": "external"}), "needs a command"),
            (json!({"type": "simple", "fsType": "fake"}), "fsType"),
        ] {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
