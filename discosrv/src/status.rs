//! The metrics listener: `/metrics` (Prometheus text format) and
//! `/healthz`, on their own address so they need not be public.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::handlers::App;
use crate::store::Store;

pub async fn serve<S: Store>(
    listener: TcpListener,
    app: Arc<App<S>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    crate::server::accept_failed(&app.metrics, "metrics", &e).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => {
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
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
