//! `/rest/svc/*`: small services for scripts and the GUI.

use http::Method;
use serde_json::json;

use super::http_util::{json, not_found, Answer, Call};

/// Longest random string handed out.
const MAX_RANDOM: u64 = 1024;

pub async fn route(c: &Call) -> Answer {
    match c.path.as_str() {
        "/rest/svc/deviceid" => {
            c.allow(&[Method::GET])?;
            // Syncthing answers 200 either way, with `id` or `error`.
            let raw = c.q("id").unwrap_or("");
            Ok(json(&match raw.parse::<proto::DeviceId>() {
                Ok(id) => json!({"id": id.to_string()}),
                Err(e) => json!({"error": format!("{raw:?}: device ID invalid: {e}")}),
            }))
        }
        "/rest/svc/random/string" => {
            c.allow(&[Method::GET])?;
            let n = c.num("length", 32)?.clamp(1, MAX_RANDOM);
            let s: String = (0..n)
                .map(|_| {
                    char::from(
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
                            [rand::random_range(0..63)],
                    )
                })
                .collect();
            Ok(json(&json!({"random": s})))
        }
        "/rest/svc/lang" => {
            c.allow(&[Method::GET])?;
            Ok(json(&json!(["en"])))
        }
        _ => Err(not_found()),
    }
}
