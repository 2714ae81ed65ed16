//! The request as handlers see it, replies shaped like Syncthing's
//! (indented JSON, plain-text errors), and small parsing helpers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use crate::model::Node;

pub type Reply = Response<Full<Bytes>>;
/// `Err` carries an error reply, so handlers can use `?` on checks.
pub type Answer = Result<Reply, Reply>;

/// One REST request, body already read (bounded by `MAX_BODY`).
pub struct Call {
    pub node: Arc<Node>,
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call {
    /// 405 unless the method is one of `allowed` (Syncthing's router
    /// answers the same for a known path with another method).
    pub fn allow(&self, allowed: &[Method]) -> Result<(), Reply> {
        if allowed.contains(&self.method) {
            return Ok(());
        }
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        if let Ok(v) = http::HeaderValue::from_str(&list.join(", ")) {
            r.headers_mut().insert(http::header::ALLOW, v);
        }
        Err(r)
    }

    pub fn q(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    /// A required query parameter, or a 400 naming it.
    pub fn need(&self, key: &str) -> Result<&str, Reply> {
        self.q(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("{key} parameter missing")))
    }

    /// An optional non-negative integer parameter (400 if malformed).
    pub fn num(&self, key: &str, default: u64) -> Result<u64, Reply> {
        match self.q(key).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| bad(format!("{key}: {v:?} is not a number"))),
        }
    }

    /// The body as JSON (400 with the parser's message if malformed).
    pub fn json(&self) -> Result<Value, Reply> {
        serde_json::from_slice(&self.body).map_err(|e| bad(format!("invalid JSON: {e}")))
    }

    /// The folder named by `folder=` if it is configured (400/404 otherwise).
    pub fn folder(&self) -> Result<crate::config::FolderConfig, Reply> {
        let id = self.need("folder")?;
        self.node
            .config()
            .folders
            .iter()
            .find(|f| f.id == id)
            .cloned()
            .ok_or_else(|| text(StatusCode::NOT_FOUND, &format!("no such folder: {id}")))
    }

    /// `device=` parsed as a device ID (400 if malformed), if present.
    pub fn device(&self) -> Result<Option<proto::DeviceId>, Reply> {
        match self.q("device").filter(|d| !d.is_empty()) {
            None => Ok(None),
            Some(d) => d
                .parse()
                .map(Some)
                .map_err(|e| bad(format!("invalid device ID {d:?}: {e}"))),
        }
    }
}

/// Pretty JSON like Syncthing's `sendJSON` (two-space indent, newline).
pub fn json(v: &Value) -> Reply {
    json_status(StatusCode::OK, v)
}

pub fn json_status(status: StatusCode, v: &Value) -> Reply {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// A plain-text reply, as Go's `http.Error` writes it.
pub fn text(status: StatusCode, msg: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An empty 200 (what Syncthing answers to most POSTs).
pub fn ok() -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::OK;
    r
}

pub fn bad(msg: impl AsRef<str>) -> Reply {
    text(StatusCode::BAD_REQUEST, msg.as_ref())
}

pub fn not_found() -> Reply {
    text(StatusCode::NOT_FOUND, "404 page not found")
}

pub fn internal(e: impl std::fmt::Display) -> Reply {
    text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
}

pub use crate::timefmt::{rfc3339, time_fmt, time_fmt_nanos};

pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for kv in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        out.entry(percent_decode(k))
            .or_insert_with(|| percent_decode(v));
    }
    out
}

/// Decodes `%XX` escapes and `+` of a query value.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Constant-time comparison, so a key cannot be guessed byte by byte.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Page `page` (1-based) of `perpage` items, Syncthing's paging.
pub fn page<T: Clone>(items: &[T], page: u64, perpage: u64) -> Vec<T> {
    let perpage = perpage.max(1) as usize;
    let start = (page.max(1) as usize - 1).saturating_mul(perpage);
    items.iter().skip(start).take(perpage).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("a%20b+c%C3%BC%"), "a b cü%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        let q = parse_query(Some("a=1&b=x%2Fy&a=2&c"));
        assert_eq!(q["a"], "1");
        assert_eq!(q["b"], "x/y");
        assert_eq!(q["c"], "");
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(time_fmt(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_fmt(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(time_fmt_nanos(0, 120_000_000), "1970-01-01T00:00:00.12Z");
    }

    #[test]
    fn pages() {
        let v: Vec<u32> = (0..10).collect();
        assert_eq!(page(&v, 2, 4), vec![4, 5, 6, 7]);
        assert_eq!(page(&v, 4, 4), Vec::<u32>::new());
    }
}
