//! The status listener: `/status` with strelaysrv's JSON fields (so
//! existing relay dashboards keep working) and `/metrics` for Prometheus.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::state::Relay;
use daemon::sync::MutexExt;

/// Status connections served at once; more are closed at once, so a
/// flood of them cannot take file descriptors from devices.
const MAX_STATUS_CONNECTIONS: usize = 32;

/// One sample of `bytesProxied` every 10 s, an hour of them.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SAMPLES: usize = 361;

#[derive(Default)]
pub struct RateHistory {
    samples: Mutex<VecDeque<u64>>,
}

impl RateHistory {
    fn push(&self, bytes: u64) {
        let mut s = self.samples.locked();
        if s.len() == SAMPLES {
            s.pop_front();
        }
        s.push_back(bytes);
    }

    /// Average kbit/s over 10 s, 1, 5, 15, 30 and 60 min (as far back as
    /// samples exist).
    fn kbps(&self) -> [u64; 6] {
        let s = self.samples.locked();
        let mut out = [0u64; 6];
        let Some(&last) = s.back() else { return out };
        for (i, w) in [1usize, 6, 30, 90, 180, 360].into_iter().enumerate() {
            let w = w.min(s.len().saturating_sub(1));
            if w == 0 {
                continue;
            }
            let then = s[s.len() - 1 - w];
            let secs = w as u64 * SAMPLE_EVERY.as_secs();
            out[i] = last.saturating_sub(then) * 8 / 1000 / secs;
        }
        out
    }
}

pub async fn sample_rates(relay: Arc<Relay>, history: Arc<RateHistory>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => history.push(relay.metrics.bytes_proxied.get()),
            _ = relay.shutdown.cancelled() => return,
        }
    }
}

pub async fn serve(relay: Arc<Relay>, listener: TcpListener, history: Arc<RateHistory>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_STATUS_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = relay.shutdown.cancelled() => return,
        };
        let Ok((tcp, peer)) = accepted else {
            // Out of descriptors: back off instead of spinning.
            let pause = tokio::time::sleep(Duration::from_millis(100));
            if relay.unless_stopping(pause).await.is_none() {
                return;
            }
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            relay.metrics.reject(crate::metrics::Reject::StatusBusy);
            tracing::debug!(%peer, "status listener at its connection cap: closed");
            continue;
        };
        relay
            .shutdown
            .spawn(serve_connection(relay.clone(), tcp, history.clone(), slot));
    }
}

/// One status request (keep-alive is off), at most 30 s, cut short when the
/// relay stops. `slot` is held until then.
async fn serve_connection(
    relay: Arc<Relay>,
    tcp: tokio::net::TcpStream,
    history: Arc<RateHistory>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let handler = relay.clone();
    let svc = hyper::service::service_fn(move |req| {
        let relay = handler.clone();
        let history = history.clone();
        async move { Ok::<_, Infallible>(route(&relay, &history, req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .header_read_timeout(Duration::from_secs(15))
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(tcp), svc);
    let _ = relay
        .unless_stopping(tokio::time::timeout(Duration::from_secs(30), conn))
        .await;
    drop(slot);
}

fn route(relay: &Relay, history: &RateHistory, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let build = |status, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, ctype)
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match req.uri().path() {
        "/status" => build(
            StatusCode::OK,
            "application/json",
            status_json(relay, history),
        ),
        "/metrics" => {
            relay
                .metrics
                .open_sockets
                .set(relay.capacity.open_sockets() as i64);
            relay.access.update_metrics(&relay.metrics);
            let open_metrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            if open_metrics {
                build(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    relay.metrics.encode(),
                )
            } else {
                build(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    relay.metrics.encode_classic(),
                )
            }
        }
        _ => build(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found\n".into(),
        ),
    }
}

/// strelaysrv's status document: same keys, sorted, 4-space indent.
pub fn status_json(relay: &Relay, history: &RateHistory) -> String {
    let s = &relay.settings;
    let m = &relay.metrics;
    let active = relay.active_count() as u64;
    let pools: Vec<&str> = if s.pools.is_empty() {
        vec![""]
    } else {
        s.pools.iter().map(String::as_str).collect()
    };
    let workers = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(1);
    let tasks = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_alive_tasks())
        .unwrap_or(0);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    let doc = json!({
        "version": concat!("v", env!("CARGO_PKG_VERSION")),
        "buildHost": "",
        "buildUser": "",
        "buildDate": "",
        "startTime": humantime::format_rfc3339_nanos(relay.start_time).to_string(),
        "uptimeSeconds": relay.started.elapsed().as_secs(),
        "numPendingSessionKeys": relay.pending.key_count(),
        "numActiveSessions": active,
        "numConnections": m.protocol_connections.get(),
        "numProxies": 2 * active,
        "bytesProxied": m.bytes_proxied.get(),
        "goVersion": "rust",
        "goOS": std::env::consts::OS,
        "goArch": arch,
        "goMaxProcs": workers,
        "goNumRoutine": tasks,
        "kbps10s1m5m15m30m60m": history.kbps(),
        "options": {
            "network-timeout": s.network_timeout.as_secs(),
            "ping-interval": s.ping_interval.as_secs(),
            "message-timeout": s.message_timeout.as_secs(),
            "per-session-rate": s.per_session_rate,
            "global-rate": s.global_rate,
            "pools": pools,
            "provided-by": s.provided_by,
        },
    });
    // Only when configured: without allow-lists or tokens the document
    // keeps exactly strelaysrv's keys.
    let mut doc = doc;
    if let (Some(access), Some(obj)) = (relay.access.status(), doc.as_object_mut()) {
        obj.insert("accessFiles".into(), access);
    }
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    if serde::Serialize::serialize(&doc, &mut ser).is_err() {
        return "{}".into();
    }
    String::from_utf8(out).unwrap_or_default()
}
