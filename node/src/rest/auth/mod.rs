//! Who may call the API. Syncthing's rules, closed where they left the
//! key-only setup open:
//!
//! - `OPTIONS` (CORS preflight) gets 204 and the allowed methods/headers,
//!   nothing else; the real request must still authenticate.
//! - Host check against DNS rebinding: while the API listens on a loopback
//!   address, the `Host` header must name a loopback host too (Syncthing's
//!   rule). Elsewhere, with no GUI user configured, a request without the
//!   key must name the host by an IP address, a loopback name or the
//!   listen address's own host: a rebinding page reaches us only through
//!   a DNS name of its own.
//! - `/rest/noauth/*` needs nothing more.
//! - A valid `X-API-Key` (or `Authorization: Bearer KEY`) passes everything.
//!   Browsers never attach these on their own, so another origin's page
//!   cannot forge them.
//! - With a GUI user and bcrypt password, HTTP basic auth (then a session
//!   cookie) is required for every path, `/metrics` included, and every
//!   `/rest/` call must also carry the CSRF token header
//!   `X-CSRF-Token-XXXXX` whose value the node handed out as a cookie on
//!   an authenticated non-`/rest` request. A cross-origin page cannot read
//!   that cookie, so it cannot drive the API with the user's cached
//!   credentials.
//! - With only an API key, nothing but the key opens any path: no cookie
//!   stands in for it (a CSRF cookie handed to anyone asking for `/` used
//!   to open all of `/rest`).
//! - With no credential at all (allowed on loopback only, see
//!   `check_listen_address`), Syncthing's CSRF cookie flow applies; were
//!   the address non-loopback (a later configuration change), everything
//!   but `/rest/noauth/*` is refused.

mod login;
mod tokens;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderValue, Method, StatusCode};

use super::http_util::{same, text, Reply};
use crate::config::Gui;
use crate::metrics::RefusalReason;
use crate::model::Node;
use daemon::sync::MutexExt;
use login::{Login, Logins};
use tokens::Tokens;

/// CSRF tokens remembered (most recently used first), as Syncthing.
const MAX_CSRF_TOKENS: usize = 25;
/// Sessions remembered; the least recently used is forgotten beyond this.
const MAX_SESSIONS: usize = 1000;
/// A session (and a CSRF token) unused this long must log in again; the
/// browser resends its cached basic credentials, so users see nothing.
const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// A session is never kept longer than this, however busy.
const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why a request was refused: the `reason` label of
/// `node_rest_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    HostCheck,
    NoCredentials,
    WrongKey,
    WrongPassword,
    LoginThrottled,
    Csrf,
    NotLoopback,
    ConnectionLimit,
}

impl crate::metrics::RefusalReason for Refusal {
    const ALL: &'static [Refusal] = &[
        Refusal::HostCheck,
        Refusal::NoCredentials,
        Refusal::WrongKey,
        Refusal::WrongPassword,
        Refusal::LoginThrottled,
        Refusal::Csrf,
        Refusal::NotLoopback,
        Refusal::ConnectionLimit,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Refusal::HostCheck => "host_check",
            Refusal::NoCredentials => "no_credentials",
            Refusal::WrongKey => "wrong_api_key",
            Refusal::WrongPassword => "wrong_password",
            Refusal::LoginThrottled => "login_throttled",
            Refusal::Csrf => "csrf",
            Refusal::NotLoopback => "no_credential_configured",
            Refusal::ConnectionLimit => "connection_limit",
        }
    }
}

/// The refusal counters by [`Refusal`].
pub type Refusals = crate::metrics::Refusals<Refusal>;

pub struct Guard {
    /// First five characters of the device ID, in cookie/header names.
    unique: String,
    csrf: Tokens,
    sessions: Tokens,
    logins: Logins,
    /// The password hash the live sessions were opened with: a changed
    /// password (or user) ends them all.
    sessions_for: std::sync::Mutex<(String, String)>,
    pub refusals: Arc<Refusals>,
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

impl Verdict {
    fn pass() -> Verdict {
        Verdict::Pass {
            cookies: vec![],
            any_origin: false,
        }
    }
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

/// Splits `host[:port]` (`[v6]:port`, a bare IPv6 address) into its host,
/// without brackets, lower-case.
fn host_part(addr: &str) -> String {
    let host = match addr.rsplit_once(':') {
        // `[::1]:8384`, `host:8384`; a bare IPv6 address has many colons.
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => {
            if h.contains(':') && !h.starts_with('[') {
                addr
            } else {
                h
            }
        }
        _ => addr,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Whether a `host[:port]` names this machine's loopback (Syncthing's
/// `addressIsLocalhost`).
pub fn is_localhost(addr: &str) -> bool {
    let host = host_part(addr);
    if host == "localhost" || host == "localhost." || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The Host check for a non-loopback listener without a GUI user: an IP
/// literal, a loopback name, or the host part of the listen address.
fn host_allowed_off_loopback(host: &str, listen: &str) -> bool {
    let h = host_part(host);
    is_localhost(host) || h.parse::<IpAddr>().is_ok() || (!h.is_empty() && h == host_part(listen))
}

pub fn auth_enabled(gui: &Gui) -> bool {
    !gui.user.is_empty() && !gui.password.is_empty()
}

/// Refuses to expose the API beyond this machine without any credential:
/// the address and key in effect (command line included), the user and
/// password of the file.
pub fn check_listen_address(node: &Node) -> anyhow::Result<()> {
    check_gui(&effective_gui(node))
}

/// The key and credentials in effect: the file's, with command-line
/// overrides (`node.gui`) winning for address and key.
fn effective_gui(node: &Node) -> Gui {
    let mut gui = node.config().gui.clone();
    gui.address.clone_from(&node.gui.address);
    gui.api_key.clone_from(&node.gui.api_key);
    gui
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

fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let v = parts.headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let b64 = v.strip_prefix(b"Basic ")?.trim_ascii();
    if b64.len() > 4096 {
        return None;
    }
    let raw = data_encoding::BASE64.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn refuse(status: StatusCode, msg: &str) -> Verdict {
    Verdict::Reply(text(status, msg))
}

impl Guard {
    pub fn new(node: &Node) -> Guard {
        Guard {
            unique: node.my_id.to_string().chars().take(5).collect(),
            csrf: Tokens::new(MAX_CSRF_TOKENS, SESSION_IDLE, SESSION_LIFETIME),
            sessions: Tokens::new(MAX_SESSIONS, SESSION_IDLE, SESSION_LIFETIME),
            logins: Logins::default(),
            sessions_for: Default::default(),
            refusals: Arc::new(Refusals::registered(&node.metrics.rest_refused)),
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

    fn refused(&self, why: Refusal, peer: IpAddr, path: &str, verdict: Verdict) -> Verdict {
        self.refusals.count(why);
        // The path is the client's: logged escaped, bounded.
        let path: String = path.chars().take(128).collect();
        tracing::info!(%peer, path = %path.escape_debug(), reason = why.label(), "REST request refused");
        verdict
    }

    /// Ends every session and CSRF token when the user or password hash
    /// changed since they were issued.
    fn sessions_follow(&self, gui: &Gui) {
        let mut g = self.sessions_for.locked();
        if g.0 != gui.user || g.1 != gui.password {
            *g = (gui.user.clone(), gui.password.clone());
            self.sessions.clear();
            self.csrf.clear();
        }
    }

    pub async fn check(&self, node: &Node, parts: &Parts, peer: IpAddr) -> Verdict {
        let gui = effective_gui(node);
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

        let key_ok = Self::api_key_ok(&gui, parts);
        let basic = auth_enabled(&gui);
        let loopback = is_localhost(&gui.address);
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let host_ok = if loopback {
            is_localhost(host)
        } else {
            basic || key_ok || host_allowed_off_loopback(host, &gui.address)
        };
        if !host_ok {
            let v = refuse(StatusCode::FORBIDDEN, "Host check error");
            return self.refused(Refusal::HostCheck, peer, path, v);
        }

        if path.starts_with("/rest/noauth/") {
            return Verdict::pass();
        }
        if key_ok {
            // As Syncthing: a page holding the key may call from any origin.
            return Verdict::Pass {
                cookies: vec![],
                any_origin: true,
            };
        }

        let mut cookies = Vec::new();
        if basic {
            self.sessions_follow(&gui);
            let session_name = format!("sessionid-{}", self.unique);
            let in_session = cookie(parts, &session_name).is_some_and(|s| self.sessions.check(s));
            if !in_session {
                let Some((user, password)) = basic_credentials(parts) else {
                    let v = Verdict::Reply(unauthorized());
                    return self.refused(Refusal::NoCredentials, peer, path, v);
                };
                let configured = (gui.user.as_str(), gui.password.as_str());
                match self
                    .logins
                    .attempt(peer, configured, (&user, &password))
                    .await
                {
                    Login::Ok => {}
                    Login::Wrong => {
                        let v = Verdict::Reply(unauthorized());
                        return self.refused(Refusal::WrongPassword, peer, path, v);
                    }
                    Login::Throttled(wait) => {
                        let mut r = text(
                            StatusCode::TOO_MANY_REQUESTS,
                            "Too many failed logins; try again later",
                        );
                        r.headers_mut()
                            .insert(http::header::RETRY_AFTER, (wait.as_secs() + 1).into());
                        return self.refused(
                            Refusal::LoginThrottled,
                            peer,
                            path,
                            Verdict::Reply(r),
                        );
                    }
                }
                let session = self.sessions.issue();
                cookies.push(format!(
                    "{session_name}={session}; Path=/; HttpOnly; SameSite=Strict"
                ));
            }
        } else if !gui.api_key.is_empty() {
            // Key only: nothing but the key opens anything.
            let v = refuse(
                StatusCode::FORBIDDEN,
                "Forbidden: missing or wrong X-API-Key",
            );
            return self.refused(Refusal::WrongKey, peer, path, v);
        } else if !loopback {
            let v = refuse(
                StatusCode::FORBIDDEN,
                "Forbidden: no API key or GUI user is configured, so the API answers on a loopback address only",
            );
            return self.refused(Refusal::NotLoopback, peer, path, v);
        }

        let csrf_name = format!("CSRF-Token-{}", self.unique);
        if !path.starts_with("/rest") {
            if !cookie(parts, &csrf_name).is_some_and(|t| self.csrf.check(t)) {
                let token = self.csrf.issue();
                // The GUI's script reads this one, so it is not HttpOnly.
                cookies.push(format!("{csrf_name}={token}; Path=/; SameSite=Strict"));
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
        if token.is_some_and(|t| self.csrf.check(t)) {
            return Verdict::Pass {
                cookies,
                any_origin: false,
            };
        }
        self.refused(
            Refusal::Csrf,
            peer,
            path,
            refuse(StatusCode::FORBIDDEN, "CSRF Error"),
        )
    }
}

fn unauthorized() -> Reply {
    let mut r = text(StatusCode::UNAUTHORIZED, "Not Authorized");
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Authorization Required\""),
    );
    r
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
    fn host_check_off_loopback() {
        let listen = "0.0.0.0:8384";
        for h in [
            "10.0.0.5:8384",
            "[fd00::1]:8384",
            "localhost:8384",
            "127.0.0.1",
        ] {
            assert!(host_allowed_off_loopback(h, listen), "{h}");
        }
        for h in ["evil.example", "evil.example:8384", "nas.local:8384", ""] {
            assert!(!host_allowed_off_loopback(h, listen), "{h}");
        }
        assert!(host_allowed_off_loopback(
            "NAS.studio:8384",
            "nas.studio:8384"
        ));
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
