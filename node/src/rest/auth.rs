//! Who may call the API, with Syncthing's rules:
//!
//! - `OPTIONS` (CORS preflight) gets 204 and the allowed methods/headers,
//!   nothing else; the real request must still authenticate.
//! - While the API listens on a loopback address, the `Host` header must
//!   name a loopback host too ("Host check error"): a DNS-rebinding page
//!   cannot reach it through a name of its own.
//! - A valid `X-API-Key` (or `Authorization: Bearer KEY`) passes everything.
//!   Browsers never attach these on their own, so another origin's page
//!   cannot forge them.
//! - Otherwise, when a GUI user and bcrypt password are configured, HTTP
//!   basic auth (then a session cookie) is required, and every `/rest/`
//!   call must also carry the CSRF token header `X-CSRF-Token-XXXXX` whose
//!   value the node handed out as a cookie on a non-`/rest` request. A
//!   cross-origin page cannot read that cookie, so it cannot drive the API
//!   with the user's cached credentials.
//! - `/rest/noauth/health` needs nothing.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;

use http::request::Parts;
use http::{HeaderValue, Method, StatusCode};

use super::http_util::{same, text, Reply};
use crate::config::Gui;
use crate::model::Node;

/// CSRF tokens remembered (most recently used first), as Syncthing.
const MAX_CSRF_TOKENS: usize = 25;
/// Sessions remembered; the oldest is forgotten beyond this.
const MAX_SESSIONS: usize = 1000;

pub struct Guard {
    /// First five characters of the device ID, in cookie/header names.
    unique: String,
    csrf: Mutex<VecDeque<String>>,
    sessions: Mutex<VecDeque<String>>,
}

pub enum Verdict {
    /// Answered here (preflight, refusal).
    Reply(Reply),
    /// Go on; add these `Set-Cookie` values to the reply, and
    /// `Access-Control-Allow-Origin: *` if `any_origin`.
    Pass {
        cookies: Vec<String>,
        any_origin: bool,
    },
}

fn random_token() -> String {
    (0..32)
        .map(|_| {
            char::from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                    [rand::random_range(0..62)],
            )
        })
        .collect()
}

fn remember(list: &Mutex<VecDeque<String>>, token: String, max: usize) {
    let mut l = list.lock().unwrap_or_else(|p| p.into_inner());
    l.push_front(token);
    l.truncate(max);
}

fn known(list: &Mutex<VecDeque<String>>, token: &str) -> bool {
    let l = list.lock().unwrap_or_else(|p| p.into_inner());
    l.iter().any(|t| same(t.as_bytes(), token.as_bytes()))
}

fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Whether a `host[:port]` names this machine's loopback (Syncthing's
/// `addressIsLocalhost`).
pub fn is_localhost(addr: &str) -> bool {
    let host = match addr.rsplit_once(':') {
        // `[::1]:8384`, `host:8384`; a bare IPv6 address has many colons.
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => addr,
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host == "localhost" || host == "localhost." || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub fn auth_enabled(gui: &Gui) -> bool {
    !gui.user.is_empty() && !gui.password.is_empty()
}

/// Refuses to expose the API beyond this machine without any credential:
/// the address and key in effect (command line included), the user and
/// password of the file.
pub fn check_listen_address(node: &Node) -> anyhow::Result<()> {
    let mut gui = node.config().gui;
    gui.address.clone_from(&node.gui.address);
    gui.api_key.clone_from(&node.gui.api_key);
    check_gui(&gui)
}

fn check_gui(gui: &Gui) -> anyhow::Result<()> {
    if gui.address.is_empty() || is_localhost(&gui.address) {
        return Ok(());
    }
    if gui.api_key.is_empty() && !auth_enabled(gui) {
        anyhow::bail!(
            "refusing to serve the REST API on {} (not a loopback address) without an API key \
             or a GUI user and password; set gui.apiKey (or --gui-apikey), or listen on 127.0.0.1",
            gui.address
        );
    }
    Ok(())
}

/// Checks a password against the configured bcrypt hash. A plain-text
/// value (not `$2…`) is never accepted: the file must not hold passwords.
fn password_ok(hash: &str, given: &str) -> bool {
    hash.starts_with("$2") && bcrypt::verify(given, hash).unwrap_or(false)
}

fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let v = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64_decode(b64.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

impl Guard {
    pub fn new(node: &Node) -> Guard {
        Guard {
            unique: node.my_id.to_string().chars().take(5).collect(),
            csrf: Mutex::new(VecDeque::new()),
            sessions: Mutex::new(VecDeque::new()),
        }
    }

    fn api_key_ok(gui: &Gui, parts: &Parts) -> bool {
        if gui.api_key.is_empty() {
            return false;
        }
        let h = &parts.headers;
        let given = h.get("X-API-Key").map(HeaderValue::as_bytes).or_else(|| {
            h.get(http::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        });
        given.is_some_and(|g| same(g, gui.api_key.as_bytes()))
    }

    pub fn check(&self, node: &Node, parts: &Parts) -> Verdict {
        // The key and credentials in effect: the file's, with command-line
        // overrides (node.gui) winning for address and key.
        let mut gui = node.config().gui;
        gui.address.clone_from(&node.gui.address);
        gui.api_key.clone_from(&node.gui.api_key);
        let path = parts.uri.path();

        if parts.method == Method::OPTIONS {
            let mut r = text(StatusCode::NO_CONTENT, "");
            *r.body_mut() = Default::default();
            let h = r.headers_mut();
            h.insert("Access-Control-Allow-Origin", HeaderValue::from_static("*"));
            h.insert(
                "Access-Control-Allow-Methods",
                HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            h.insert(
                "Access-Control-Allow-Headers",
                HeaderValue::from_static("Content-Type, X-API-Key"),
            );
            h.insert("Access-Control-Max-Age", HeaderValue::from_static("600"));
            return Verdict::Reply(r);
        }

        if is_localhost(&gui.address) {
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !is_localhost(host) {
                return Verdict::Reply(text(StatusCode::FORBIDDEN, "Host check error"));
            }
        }

        if path.starts_with("/rest/noauth/") {
            return Verdict::Pass {
                cookies: vec![],
                any_origin: false,
            };
        }
        if Self::api_key_ok(&gui, parts) {
            // As Syncthing: a page holding the key may call from any origin.
            return Verdict::Pass {
                cookies: vec![],
                any_origin: true,
            };
        }

        let mut cookies = Vec::new();
        if auth_enabled(&gui) {
            let session_name = format!("sessionid-{}", self.unique);
            let in_session = cookie(parts, &session_name).is_some_and(|s| known(&self.sessions, s));
            if !in_session {
                let ok = basic_credentials(parts)
                    .is_some_and(|(u, p)| u == gui.user && password_ok(&gui.password, &p));
                if !ok {
                    tracing::info!("wrong or missing credentials on a REST call");
                    let mut r = text(StatusCode::UNAUTHORIZED, "Not Authorized");
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"Authorization Required\""),
                    );
                    return Verdict::Reply(r);
                }
                let session = random_token();
                cookies.push(format!("{session_name}={session}; Path=/; HttpOnly"));
                remember(&self.sessions, session, MAX_SESSIONS);
            }
        }

        let csrf_name = format!("CSRF-Token-{}", self.unique);
        if !path.starts_with("/rest") {
            if !cookie(parts, &csrf_name).is_some_and(|t| known(&self.csrf, t)) {
                let token = random_token();
                cookies.push(format!("{csrf_name}={token}; Path=/"));
                remember(&self.csrf, token, MAX_CSRF_TOKENS);
            }
            return Verdict::Pass {
                cookies,
                any_origin: false,
            };
        }
        let header = format!("X-CSRF-Token-{}", self.unique);
        let token = parts
            .headers
            .get(header.as_str())
            .and_then(|v| v.to_str().ok());
        if token.is_some_and(|t| known(&self.csrf, t)) {
            return Verdict::Pass {
                cookies,
                any_origin: false,
            };
        }
        // No key, no CSRF token. Syncthing says "CSRF Error" here; say
        // what a script most likely lacks.
        let msg = if gui.api_key.is_empty() {
            "CSRF Error"
        } else {
            "CSRF Error: missing or wrong X-API-Key"
        };
        Verdict::Reply(text(StatusCode::FORBIDDEN, msg))
    }
}

/// Headers Syncthing puts on every answer.
pub fn common_headers(r: &mut Reply) {
    let h = r.headers_mut();
    h.insert(
        "Cache-Control",
        HeaderValue::from_static("max-age=0, no-cache, no-store"),
    );
    h.insert("X-Frame-Options", HeaderValue::from_static("SAMEORIGIN"));
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(concat!("v", env!("CARGO_PKG_VERSION"))) {
        h.insert("X-Syncthing-Version", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_names() {
        for a in [
            "127.0.0.1:8384",
            "localhost:1",
            "[::1]:8384",
            "::1",
            "a.localhost",
            "127.1.2.3",
        ] {
            assert!(is_localhost(a), "{a}");
        }
        for a in [
            "0.0.0.0:8384",
            "10.0.0.1:8384",
            "example.com",
            "[::]:8384",
            "evil.com:8384",
        ] {
            assert!(!is_localhost(a), "{a}");
        }
    }

    #[test]
    fn base64_and_bcrypt() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        let hash = bcrypt::hash("pw", 4).unwrap();
        assert!(password_ok(&hash, "pw"));
        assert!(!password_ok(&hash, "px"));
        assert!(!password_ok("pw", "pw"), "plain text is never accepted");
    }

    #[test]
    fn public_address_needs_a_credential() {
        let mut g = Gui {
            address: "0.0.0.0:8384".into(),
            ..Default::default()
        };
        assert!(check_gui(&g).is_err());
        g.api_key = "k".into();
        assert!(check_gui(&g).is_ok());
        g.address = "127.0.0.1:8384".into();
        g.api_key.clear();
        assert!(check_gui(&g).is_ok());
    }
}
