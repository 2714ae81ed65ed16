//! Helpers for the REST API tests: raw HTTP calls (any method, headers and
//! body, the status kept), a JSON "shape" comparison (keys and types, not
//! values) and an event reader that follows `/rest/events` with `since`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::https::Endpoint;

/// One HTTP answer: status, headers (lower-case names) and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request to 127.0.0.1:`port` (a port number: plain HTTP; or an
/// [`Endpoint`], maybe HTTPS), with exactly the headers given.
pub fn call(
    port: impl Into<Endpoint>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let endpoint = port.into();
    let agent = endpoint.agent(
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(90))
            .redirects(0),
    );
    let mut req = agent.request(method, &endpoint.url(path));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let r = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .flat_map(|n| {
            resp.all(&n)
                .into_iter()
                .map(|v| (n.to_ascii_lowercase(), v.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    let body = resp.into_string().unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

/// A call with the API key.
pub fn keyed(
    port: impl Into<Endpoint>,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Answer {
    call(port, method, path, &[("X-API-Key", key)], body)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether an object's keys are data (device or folder IDs, paths) rather
/// than field names: such maps are compared by their values' shapes.
fn keyed_by_data(o: &serde_json::Map<String, Value>) -> bool {
    !o.is_empty()
        && o.keys().all(|k| {
            (k.len() == 63 && k.matches('-').count() == 7)
                || k.contains("://")
                || k.starts_with('/')
                || k.starts_with("folder-")
        })
}

/// The differences in keys and types between `theirs` (Syncthing) and
/// `ours`, as `path: what` lines. Arrays compare their first elements;
/// maps keyed by IDs compare their first values.
pub fn shape_diff(theirs: &Value, ours: &Value, path: &str, out: &mut Vec<String>) {
    match (theirs, ours) {
        (Value::Object(t), Value::Object(o)) => {
            if keyed_by_data(t) || keyed_by_data(o) {
                if let (Some(tv), Some(ov)) = (t.values().next(), o.values().next()) {
                    shape_diff(tv, ov, &format!("{path}.<id>"), out);
                }
                return;
            }
            let tk: BTreeSet<&String> = t.keys().collect();
            let ok: BTreeSet<&String> = o.keys().collect();
            for k in tk.difference(&ok) {
                out.push(format!("{path}.{k}: missing in ours"));
            }
            for k in ok.difference(&tk) {
                out.push(format!("{path}.{k}: extra in ours"));
            }
            for k in tk.intersection(&ok) {
                shape_diff(&t[*k], &o[*k], &format!("{path}.{k}"), out);
            }
        }
        (Value::Array(t), Value::Array(o)) => {
            if let (Some(tv), Some(ov)) = (t.first(), o.first()) {
                shape_diff(tv, ov, &format!("{path}[0]"), out);
            }
        }
        (t, o) if kind(t) != kind(o) => {
            out.push(format!(
                "{path}: {} in Syncthing, {} in ours",
                kind(t),
                kind(o)
            ));
        }
        _ => {}
    }
}

/// Follows `/rest/events` (or `/rest/events/disk`) with `since`, keeping
/// every event seen, in order.
pub struct EventReader {
    pub port: u16,
    pub key: String,
    pub path: String,
    pub since: u64,
    pub seen: Vec<Value>,
}

impl EventReader {
    pub fn new(port: u16, key: &str, path: &str) -> EventReader {
        EventReader {
            port,
            key: key.to_string(),
            path: path.to_string(),
            since: 0,
            seen: Vec::new(),
        }
    }

    /// One long poll (up to `timeout_s`); returns the new events.
    pub fn poll(&mut self, timeout_s: u64) -> Vec<Value> {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        let path = format!("{}{sep}since={}&timeout={timeout_s}", self.path, self.since);
        let a = keyed(self.port, &self.key, "GET", &path, None);
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        let evs = a.json().as_array().cloned().unwrap_or_default();
        for e in &evs {
            let id = e["id"].as_u64().expect("event id");
            assert!(
                id > self.since,
                "event {id} repeated after since={}",
                self.since
            );
            self.since = id;
        }
        self.seen.extend(evs.iter().cloned());
        evs
    }

    /// Polls until `want` matches an event seen (or `limit` passes);
    /// returns the event and when it arrived.
    pub fn until(
        &mut self,
        limit: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Option<(Value, Instant)> {
        if let Some(e) = self.seen.iter().find(|e| want(e)) {
            return Some((e.clone(), Instant::now()));
        }
        let end = Instant::now() + limit;
        while Instant::now() < end {
            let left = end
                .saturating_duration_since(Instant::now())
                .as_secs()
                .clamp(1, 10);
            for e in self.poll(left) {
                if want(&e) {
                    return Some((e, Instant::now()));
                }
            }
        }
        None
    }
}

/// An `Authorization` value for HTTP basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!("Basic {}", data_encoding::BASE64.encode(raw.as_bytes()))
}
