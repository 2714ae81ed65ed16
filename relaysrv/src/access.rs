//! Who may use the relay: device allow-lists for joining and for dialing
//! (`--allow-devices`, `--allow-join`, `--allow-connect`) and the join
//! tokens (`--token`, `--token-file`), files reloaded while the relay runs.
//!
//! A list given is deny-by-default: a device not on it is refused, and
//! refused exactly as an outsider without the token would be (join: code 3
//! "wrong token"; dial: code 1 "not found", the answer for a device that is
//! not there), so the relay tells an outsider nothing about who is listed.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::{RefusalLog, Shutdown, WatchedFile};
use proto::{AllowList, DeviceId};
use serde_json::{json, Value};

use crate::metrics::{Metrics, Reject};

/// A list file beyond this is refused: `proto::allowlist::MAX_DEVICES`
/// IDs in their longest form with room for comments.
pub const MAX_LIST_BYTES: u64 = 128 << 20;
/// A token file beyond this is refused; one token is at most
/// [`MAX_TOKEN_BYTES`], a rotation holds a few.
pub const MAX_TOKENS_FILE_BYTES: u64 = 64 << 10;
/// A token travels in one relay message, whose payload is at most 1024
/// bytes.
pub const MAX_TOKEN_BYTES: usize = 1000;
/// One log line per device and reason per this interval: a device retrying
/// every few seconds must not flood the log.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Devices remembered for rate-limiting refusal log lines; beyond it, new
/// refused devices are counted but not logged until old entries expire
/// (a flood of fresh certificates cannot grow the map).
const REFUSAL_LOG_DEVICES: usize = 10_000;

/// An allow-list file, reloaded when it changes.
pub type WatchedList = Arc<WatchedFile<AllowList>>;

/// Loads an allow-list file (the relay refuses to start on a bad one).
pub fn load_list(path: &Path) -> Result<WatchedList, daemon::watched::WatchError> {
    WatchedFile::load(path, MAX_LIST_BYTES, |text| {
        AllowList::parse(text).map_err(|e| e.to_string())
    })
}

/// The join tokens of a token file: one per line, surrounding whitespace
/// ignored, blank lines and lines starting with `#` skipped. Several lines
/// = several tokens accepted at once, for rotation without downtime.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenSet(Vec<String>);

/// Never the tokens themselves: configurations are debug-printed.
impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSet({} tokens)", self.0.len())
    }
}

/// Why a token (or a token file) was refused. Never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("line {line}: a join token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong { line: usize },
    #[error("a join token given with --token is empty")]
    Empty,
}

impl TokenSet {
    pub fn parse(text: &str) -> Result<TokenSet, TokenError> {
        let mut tokens = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() > MAX_TOKEN_BYTES {
                return Err(TokenError::TooLong { line: i + 1 });
            }
            tokens.push(line.to_owned());
        }
        Ok(TokenSet(tokens))
    }

    /// Tokens given one by one (`--token`, repeatable).
    pub fn from_tokens(tokens: Vec<String>) -> Result<TokenSet, TokenError> {
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(TokenError::Empty);
            }
            if t.len() > MAX_TOKEN_BYTES {
                return Err(TokenError::TooLong { line: i + 1 });
            }
        }
        Ok(TokenSet(tokens))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `given` is one of the tokens. Every token is compared in
    /// full, so the time taken says nothing about which one came close.
    pub fn accepts(&self, given: &[u8]) -> bool {
        self.0.iter().fold(false, |found, t| {
            found | constant_time_eq(t.as_bytes(), given)
        })
    }
}

/// A token file, reloaded when it changes.
pub type WatchedTokens = Arc<WatchedFile<TokenSet>>;

/// Loads a token file (the relay refuses to start on a bad one).
pub fn load_tokens(path: &Path) -> Result<WatchedTokens, daemon::watched::WatchError> {
    WatchedFile::load(path, MAX_TOKENS_FILE_BYTES, |text| {
        TokenSet::parse(text).map_err(|e| e.to_string())
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the relay checks, built from the configuration at start.
pub struct Access {
    /// Devices that may join; `None` = any device.
    join: Option<WatchedList>,
    /// Devices that may send a ConnectRequest; `None` = any device.
    connect: Option<WatchedList>,
    /// Tokens from --token, fixed.
    fixed_tokens: TokenSet,
    /// Tokens from --token-file, reloaded.
    token_file: Option<WatchedTokens>,
    reload_interval: Duration,
    /// When a refusal per (device, reason) was last logged.
    logged: RefusalLog<(DeviceId, Reject)>,
}

impl Access {
    pub fn new(
        join: Option<WatchedList>,
        connect: Option<WatchedList>,
        fixed_tokens: TokenSet,
        token_file: Option<WatchedTokens>,
        reload_interval: Duration,
    ) -> Access {
        Access {
            join,
            connect,
            fixed_tokens,
            token_file,
            reload_interval,
            logged: RefusalLog::new(REFUSAL_LOG_EVERY, REFUSAL_LOG_DEVICES),
        }
    }

    /// Whether joining needs a token at all.
    pub fn token_required(&self) -> bool {
        !self.fixed_tokens.is_empty() || self.token_file.is_some()
    }

    /// Whether `given` is accepted as a join token (any token when none
    /// is required).
    pub fn token_accepted(&self, given: Option<&str>) -> bool {
        if !self.token_required() {
            return true;
        }
        let given = given.unwrap_or("").as_bytes();
        let fixed = self.fixed_tokens.accepts(given);
        let from_file = self
            .token_file
            .as_ref()
            .is_some_and(|f| f.get().accepts(given));
        fixed | from_file
    }

    pub fn may_join(&self, id: &DeviceId) -> bool {
        self.join.as_ref().is_none_or(|l| l.get().contains(id))
    }

    pub fn may_connect(&self, id: &DeviceId) -> bool {
        self.connect.as_ref().is_none_or(|l| l.get().contains(id))
    }

    /// Counts a refusal of `id` and logs it, at most once per device and
    /// reason per [`REFUSAL_LOG_EVERY`]. The full device ID is logged: it
    /// is what an operator adds to a list.
    pub fn refused(
        &self,
        metrics: &Metrics,
        id: &DeviceId,
        source: std::net::IpAddr,
        reason: Reject,
    ) {
        metrics.reject(reason);
        let log = self.logged.should_log((*id, reason), Instant::now());
        if log {
            tracing::info!(device = %id, %source, ?reason, "refused (logged at most once a minute per device)");
        }
    }

    /// The distinct files to watch and the name each has in logs.
    fn files(&self) -> Vec<(&'static str, Watched<'_>)> {
        let mut out = Vec::new();
        match (&self.join, &self.connect) {
            (Some(j), Some(c)) if Arc::ptr_eq(j, c) => {
                out.push(("allow-devices", Watched::List(j)))
            }
            (j, c) => {
                if let Some(j) = j {
                    out.push(("allow-join", Watched::List(j)));
                }
                if let Some(c) = c {
                    out.push(("allow-connect", Watched::List(c)));
                }
            }
        }
        if let Some(t) = &self.token_file {
            out.push(("token-file", Watched::Tokens(t)));
        }
        out
    }

    /// Starts polling every file for changes, under the relay's `shutdown`.
    pub fn spawn_reloading(&self, shutdown: &Shutdown) {
        for (what, file) in self.files() {
            match file {
                Watched::List(l) => l.spawn_polling(what, self.reload_interval, shutdown),
                Watched::Tokens(t) => t.spawn_polling(what, self.reload_interval, shutdown),
            }
        }
    }

    /// Start-up log lines: what is enforced, and lists that refuse everyone.
    pub fn log_start(&self) {
        for (what, file) in self.files() {
            let (path, len) = match file {
                Watched::List(l) => (l.path(), l.get().len()),
                Watched::Tokens(t) => (t.path(), t.get().len()),
            };
            tracing::info!(what, file = %path.display(), entries = len, every = ?self.reload_interval, "access file loaded; reloaded when it changes");
            // An empty token file still leaves the --token ones.
            let others_admit = what == "token-file" && !self.fixed_tokens.is_empty();
            if len == 0 && !others_admit {
                tracing::warn!(what, file = %path.display(), "the file lists nothing: every device is refused until it does");
            }
        }
    }

    /// Sizes and reload counts for `/metrics`, set when scraped.
    pub fn update_metrics(&self, metrics: &Metrics) {
        let set = |list: &'static str, len: usize, at: std::time::SystemTime, failures: u64| {
            let labels = crate::metrics::ListLabels { list };
            metrics.list_entries.get_or_create(&labels).set(len as i64);
            let secs = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            metrics.list_loaded.get_or_create(&labels).set(secs as i64);
            metrics
                .list_failures
                .get_or_create(&labels)
                .set(failures as i64);
        };
        for (what, file) in self.files() {
            match file {
                Watched::List(l) => set(what, l.get().len(), l.loaded_at(), l.failures()),
                Watched::Tokens(t) => set(what, t.get().len(), t.loaded_at(), t.failures()),
            }
        }
    }

    /// `/status`'s `accessFiles`, `None` when nothing is configured (the
    /// document then has exactly strelaysrv's keys). Token counts, never
    /// tokens.
    pub fn status(&self) -> Option<Value> {
        let files = self.files();
        if files.is_empty() && self.fixed_tokens.is_empty() {
            return None;
        }
        let entry = |path: &Path, len: usize, at, reloads: u64, failures: u64| {
            json!({
                "file": path.display().to_string(),
                "entries": len,
                "loadedAt": humantime::format_rfc3339_seconds(at).to_string(),
                "reloads": reloads,
                "reloadFailures": failures,
            })
        };
        let mut doc = serde_json::Map::new();
        for (what, file) in files {
            let v = match file {
                Watched::List(l) => entry(
                    l.path(),
                    l.get().len(),
                    l.loaded_at(),
                    l.reloads(),
                    l.failures(),
                ),
                Watched::Tokens(t) => entry(
                    t.path(),
                    t.get().len(),
                    t.loaded_at(),
                    t.reloads(),
                    t.failures(),
                ),
            };
            doc.insert(what.to_owned(), v);
        }
        doc.insert("fixedTokens".into(), json!(self.fixed_tokens.len()));
        doc.insert(
            "reloadIntervalSeconds".into(),
            json!(self.reload_interval.as_secs_f64()),
        );
        Some(Value::Object(doc))
    }
}

enum Watched<'a> {
    List(&'a WatchedList),
    Tokens(&'a WatchedTokens),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines_comments_and_limits() {
        let set = TokenSet::parse("# rotation 2026-12\n  old-token \n\nnew-token\n").unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.accepts(b"old-token"));
        assert!(set.accepts(b"new-token"));
        assert!(!set.accepts(b"new-toke"));
        assert!(!set.accepts(b""));
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            TokenSet::parse(&format!("ok\n{long}\n")),
            Err(TokenError::TooLong { line: 2 })
        );
        assert_eq!(
            TokenSet::from_tokens(vec![String::new()]),
            Err(TokenError::Empty)
        );
        // Never printed.
        assert!(!format!("{set:?}").contains("token\""));
        assert!(!format!("{set:?}").contains("old"));
    }

    #[test]
    fn no_lists_and_no_tokens_means_open() {
        let a = Access::new(
            None,
            None,
            TokenSet::default(),
            None,
            Duration::from_secs(5),
        );
        let id = DeviceId::from_der_cert(b"x");
        assert!(a.may_join(&id) && a.may_connect(&id));
        assert!(a.token_accepted(None));
        assert!(a.status().is_none());
    }

    #[test]
    fn fixed_tokens_all_accepted() {
        let fixed = TokenSet::from_tokens(vec!["a1".into(), "b2".into()]).unwrap();
        let a = Access::new(None, None, fixed, None, Duration::from_secs(5));
        assert!(a.token_accepted(Some("a1")) && a.token_accepted(Some("b2")));
        assert!(!a.token_accepted(Some("c3")) && !a.token_accepted(None));
    }

    #[test]
    fn lists_are_deny_by_default_and_reload() {
        let dir = std::env::temp_dir().join(format!("relaysrv-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a_id, b_id) = (DeviceId::from_der_cert(b"a"), DeviceId::from_der_cert(b"b"));
        let join = dir.join("join");
        std::fs::write(&join, format!("# studio\n{a_id}\n")).unwrap();
        let connect = dir.join("connect");
        std::fs::write(&connect, "").unwrap();
        let access = Access::new(
            Some(load_list(&join).unwrap()),
            Some(load_list(&connect).unwrap()),
            TokenSet::default(),
            None,
            Duration::from_secs(5),
        );
        assert!(access.may_join(&a_id) && !access.may_join(&b_id));
        assert!(!access.may_connect(&a_id), "an empty list refuses everyone");
        std::fs::write(&join, format!("{a_id}\n{b_id}\n# more\n")).unwrap();
        access.join.as_ref().unwrap().check().unwrap();
        assert!(access.may_join(&b_id));
        let status = access.status().unwrap();
        assert_eq!(status["allow-join"]["entries"], 2);
        assert_eq!(status["allow-connect"]["entries"], 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refusal_log_is_rate_limited_but_every_refusal_counted() {
        let m = Metrics::new();
        let a = Access::new(
            None,
            None,
            TokenSet::default(),
            None,
            Duration::from_secs(5),
        );
        let id = DeviceId::from_der_cert(b"x");
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        for _ in 0..3 {
            a.refused(&m, &id, ip, Reject::JoinNotAllowed);
        }
        assert_eq!(a.logged.len(), 1);
        let text = m.encode_classic();
        assert!(
            text.contains("relaysrv_rejects_total{reason=\"JoinNotAllowed\"} 3"),
            "{text}"
        );
    }
}
