//! `GET /rest/events` (long poll: `since`, `limit`, `timeout`, `events=`)
//! and `GET /rest/events/disk` (local and remote change events only).

use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::http_util::{json, not_found, Answer, Call};
use crate::events::Mask;

/// Syncthing's default long-poll timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait accepted (a proxy would cut longer requests anyway).
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

pub async fn route(c: &Call) -> Answer {
    let mask = match c.path.as_str() {
        "/rest/events" => Mask::parse(c.q("events")),
        "/rest/events/disk" => Mask::Disk,
        _ => return Err(not_found()),
    };
    c.allow(&[Method::GET])?;
    // Like Syncthing, malformed numbers count as absent.
    let since: u64 = c.q("since").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = c.q("limit").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = c
        .q("timeout")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
        .min(MAX_TIMEOUT);
    let mut events = c.node.events.bus.wait(since, &mask, timeout).await;
    // `limit` keeps the newest events, as Syncthing does.
    if limit > 0 && limit < events.len() {
        events.drain(..events.len() - limit);
    }
    let list: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
    Ok(json(&Value::Array(list)))
}
