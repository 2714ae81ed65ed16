//! Syncthing's REST API (same paths, methods, JSON field names, status
//! codes and authentication), so tools written for Syncthing drive this
//! node unchanged.
//!
//! The router: `route` picks an area by path prefix and each area module
//! matches its own paths; a known path with another method answers 405
//! (`Call::allow`), an unknown one 404. To add an endpoint, add a match
//! arm in the area's `route`.

// Error replies are the rare path and the size of a `Response`; boxing
// them would only add an allocation to every early return.
#![allow(clippy::result_large_err)]

pub mod auth;
mod cluster;
pub(crate) mod config;
mod config_shape;
pub(crate) mod db;
mod db_lists;
mod events;
mod file_json;
pub mod http_util;
mod metrics;
mod source;
mod stats;
mod summaries;
mod svc;
mod system;
pub mod tls;
mod versions;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

pub use auth::check_listen_address;
use http_util::{parse_query, text, Answer, Call, Reply};

use crate::model::Node;

/// Largest request body accepted (a whole configuration).
const MAX_BODY: usize = 4 << 20;
/// How much of a too-large body is read and dropped before the 413.
const DRAIN_BYTES: usize = 1 << 20;
/// Time a client has to send a request's headers, counted from the first
/// byte of the request — and, between requests on a kept-alive
/// connection, from the end of the previous answer (hyper starts it when
/// it waits for a head). A slowloris client holds its slot this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a request body may take to arrive in full.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most REST connections served at once; more are accepted and closed
/// straight away, so the kernel's backlog never fills.
const MAX_CONNECTIONS: usize = 256;
/// Most of those from one source (an IPv4 address, an IPv6 /64), so one
/// client cannot take every slot.
const MAX_CONNECTIONS_PER_SOURCE: usize = 64;

/// Serves the REST API on `listener`; with `https`, a connection that
/// starts with a TLS handshake is served over TLS (see [`tls`]).
pub async fn serve(node: Arc<Node>, listener: TcpListener, https: Option<TlsAcceptor>) {
    let guard = Arc::new(auth::Guard::new(&node));
    node.shutdown
        .spawn_until_cancelled(summaries::run(node.clone()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source = Arc::new(source::PerSource::new(MAX_CONNECTIONS_PER_SOURCE));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait for a descriptor to be freed
                // instead of spinning on the error.
                tracing::warn!(error = %e, "REST API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer_ip = peer.ip().to_canonical();
        let (Ok(slot), Some(source_slot)) =
            (slots.clone().try_acquire_owned(), per_source.enter(peer_ip))
        else {
            guard.refusals.count(auth::Refusal::ConnectionLimit);
            tracing::debug!(%peer, "REST API: connection limit reached; closing");
            drop(tcp);
            continue;
        };
        let stop = node.shutdown.clone();
        let node = node.clone();
        let guard = guard.clone();
        let https = https.clone();
        // Owned by the node: a stop lets the answer being written (a
        // shutdown's own "ok") leave, then closes the connection.
        stop.clone().spawn(async move {
            let _slots = (slot, source_slot);
            // The first byte says which protocol; it must come within the
            // time a request's headers get.
            let mut first = [0u8; 1];
            let is_tls = tokio::select! {
                r = tokio::time::timeout(HEADER_TIMEOUT, tcp.peek(&mut first)) => match r {
                    Ok(Ok(1)) => first[0] == tls::HANDSHAKE_RECORD,
                    _ => return,
                },
                _ = stop.cancelled() => return,
            };
            let secure = is_tls && https.is_some();
            let can_redirect = https.is_some();
            let svc = service_fn(move |req| {
                let node = node.clone();
                let guard = guard.clone();
                async move {
                    Ok::<_, Infallible>(
                        handle(node, &guard, peer_ip, secure, can_redirect, req).await,
                    )
                }
            });
            match https.filter(|_| is_tls) {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "REST API: TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        },
                        _ = stop.cancelled() => return,
                    };
                    serve_connection(stream, svc, &stop).await
                }
                None => serve_connection(tcp, svc, &stop).await,
            }
        });
    }
}

/// HTTP/1.1 on one connection, plain or TLS, until it ends or the node
/// stops.
async fn serve_connection<I, S>(io: I, svc: S, stop: &daemon::Shutdown)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = http_body_util::Full<bytes::Bytes>> + Send,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 << 10)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            // A long poll (/rest/events) would hold the stop; it gets a
            // moment, not its full timeout.
            let _ = tokio::time::timeout(DRAIN_AT_STOP, conn).await;
        }
    }
}

/// Answered over plain HTTP even with `useTLS` (see `handle`).
const HEALTH_PATH: &str = "/rest/noauth/health";

/// How long a REST connection may finish its request once the node stops.
const DRAIN_AT_STOP: Duration = Duration::from_secs(1);

async fn handle(
    node: Arc<Node>,
    guard: &auth::Guard,
    peer: IpAddr,
    secure: bool,
    can_redirect: bool,
    req: Request<Incoming>,
) -> Reply {
    let (parts, body) = req.into_parts();
    // `useTLS`: plain HTTP is sent to HTTPS before anything else is looked
    // at (credentials in clear are never examined), as Syncthing does —
    // except the health check, which carries and answers nothing secret
    // and is what the images' plain-HTTP probes call.
    if !secure && can_redirect && node.config().gui.use_tls && parts.uri.path() != HEALTH_PATH {
        let mut reply = redirect_to_https(&node, &parts);
        auth::common_headers(&mut reply);
        return reply;
    }
    let mut reply = match guard.check(&node, &parts, peer).await {
        auth::Verdict::Reply(r) => r,
        auth::Verdict::Pass {
            cookies,
            any_origin,
        } => {
            let read = daemon::body::read_limited(body, MAX_BODY, DRAIN_BYTES);
            let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
                Ok(Ok(b)) => b,
                Ok(Err(daemon::body::BodyError::TooLarge)) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("request body larger than {MAX_BODY} bytes"),
                    )
                }
                Ok(Err(daemon::body::BodyError::Failed(e))) => {
                    return text(StatusCode::BAD_REQUEST, &format!("request body: {e}"))
                }
                Err(_) => {
                    let mut r = text(
                        StatusCode::REQUEST_TIMEOUT,
                        &format!("request body not received within {BODY_TIMEOUT:?}"),
                    );
                    r.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                    return r;
                }
            };
            let call = Call {
                node,
                method: parts.method,
                path: parts.uri.path().to_string(),
                query: parse_query(parts.uri.query()),
                headers: parts.headers,
                body,
            };
            let mut r = match route(&call).await {
                Ok(r) | Err(r) => r,
            };
            if any_origin {
                r.headers_mut().insert(
                    "Access-Control-Allow-Origin",
                    http::HeaderValue::from_static("*"),
                );
            }
            for c in cookies {
                if let Ok(v) = http::HeaderValue::from_str(&c) {
                    r.headers_mut().append(http::header::SET_COOKIE, v);
                }
            }
            r
        }
    };
    auth::common_headers(&mut reply);
    reply
}

/// A 307 to the same URL over HTTPS (the method and body are kept).
fn redirect_to_https(node: &Node, parts: &http::request::Parts) -> Reply {
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .map_or_else(|| node.gui.address.clone(), str::to_string);
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = format!("https://{host}{target}");
    let mut r = text(StatusCode::TEMPORARY_REDIRECT, "use HTTPS");
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

async fn route(c: &Call) -> Answer {
    let p = c.path.as_str();
    let area = p
        .strip_prefix("/rest/")
        .map(|r| r.split('/').next().unwrap_or(""));
    match area {
        Some("system") => system::route(c).await,
        Some("config") => config::route(c).await,
        Some("db") | Some("folder") => db::route(c).await,
        Some("cluster") => cluster::route(c).await,
        Some("events") => events::route(c).await,
        Some("stats") => stats::route(c).await,
        Some("svc") => svc::route(c).await,
        Some("noauth") => system::noauth(c).await,
        // The debug endpoints 2.x still has (Go profiles, its support
        // bundle, its database's view of a file) exist nowhere here: they
        // are refused as disabled; the others 2.x removed (such as 1.x's
        // peerCompletion) are unknown paths, as there.
        Some("debug") => match p {
            "/rest/debug/cpuprof"
            | "/rest/debug/heapprof"
            | "/rest/debug/support"
            | "/rest/debug/file" => Err(text(StatusCode::FORBIDDEN, "Debugging disabled")),
            _ => Err(http_util::not_found()),
        },
        Some(_) => Err(http_util::not_found()),
        None if p == "/metrics" => metrics::route(c).await,
        // The GUI's place: a short page (Syncthing hands out the CSRF
        // cookie on such requests; see auth).
        None if p == "/" => Ok(text(
            StatusCode::OK,
            "This node has no web GUI; use its REST API (/rest/...).",
        )),
        None => Err(http_util::not_found()),
    }
}
