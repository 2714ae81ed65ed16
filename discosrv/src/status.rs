//! The metrics listener: `/metrics` (Prometheus text format), `/healthz`
//! and `/status` (JSON: the allow-list in force), on their own address so
//! they need not be public.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use daemon::Shutdown;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::handlers::App;
use crate::server::{OwnedExecutor, DRAIN_TIMEOUT};
use crate::store::Store;

/// Serves until `tasks` is cancelled; each connection is a task of
/// `tasks` that closes once its request in progress is answered.
pub async fn serve<S: Store>(listener: TcpListener, app: Arc<App<S>>, tasks: Shutdown) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    crate::server::accept_failed(&app.metrics, "metrics", &e).await;
                    continue;
                }
            },
            _ = tasks.cancelled() => return,
        };
        let app = app.clone();
        let stop = tasks.clone();
        tasks.spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(answer(&app, &req).await) }
            });
            let builder = auto::Builder::new(OwnedExecutor(stop.clone()));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        });
    }
}

/// Copies the allow-list's state into its gauges, just before a scrape.
fn update_allowlist_gauges<S: Store>(app: &App<S>) {
    if let Some(st) = app.allow.status() {
        let m = &app.metrics;
        m.allowlist_devices.set(st.devices as i64);
        m.allowlist_loaded.set(st.loaded_at.map_or(0.0, unix_secs));
        m.allowlist_reload_failures.set(st.failures as i64);
    }
}

fn unix_secs(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn unix_nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `/status`: what an operator checks after editing the allow-list.
fn status_json<S: Store>(app: &App<S>) -> String {
    let allow = app.allow.status().map(|st| {
        serde_json::json!({
            "source": st.source,
            "devices": st.devices,
            "loadedAt": st.loaded_at.map(|t| crate::handlers::rfc3339(unix_nanos(t))),
            "reloads": st.reloads,
            "reloadFailures": st.failures,
        })
    });
    serde_json::json!({
        "allowList": allow,
        "pathPrefix": app.path_prefix.is_some(),
    })
    .to_string()
}

/// `/metrics`, `/healthz`, `/status`, or 404.
async fn answer<S: Store>(
    app: &App<S>,
    req: &http::Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/status" => {
            let mut r = Response::new(Full::new(Bytes::from(status_json(app))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/metrics" => {
            update_allowlist_gauges(app);
            let om = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            let (body, ctype) = if om {
                (
                    app.metrics.render_openmetrics(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                (
                    app.metrics.render_prometheus(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(ctype),
            );
            r
        }
        "/healthz" => {
            let ok = app.store.healthy().await;
            let mut r = Response::new(Full::new(Bytes::from(if ok {
                "OK\n"
            } else {
                "Store Unavailable\n"
            })));
            if !ok {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from("Not Found\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}
