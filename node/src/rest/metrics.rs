//! `/metrics`: the node's [`Metrics`](crate::metrics::Metrics) for
//! scrapers (with the API key or a Bearer token), in OpenMetrics when the
//! scraper asks for it, else in the classic Prometheus text format.

use bytes::Bytes;
use daemon::sync::MutexExt;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method};
use http_body_util::Full;

use super::http_util::{Answer, Call};
use std::sync::atomic::Ordering;

use crate::config::Kbps;
use crate::model::{Node, Role};

pub async fn route(c: &Call) -> Answer {
    c.allow(&[Method::GET])?;
    let node = &c.node;
    let open_metrics = {
        let _scrape = node.metrics.scrape();
        set_gauges(node);
        node.metrics.encode()
    };
    let accept = c.headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let (body, content_type) = if daemon::metrics::wants_openmetrics(accept) {
        (open_metrics, daemon::metrics::OPENMETRICS_CONTENT_TYPE)
    } else {
        (
            daemon::metrics::classic_text(&open_metrics),
            daemon::metrics::CLASSIC_CONTENT_TYPE,
        )
    };
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(r)
}

/// The gauges read off the node's state at scrape time: live connections
/// (and the requests each carried),
/// per-folder sync state and per-device connection state (what the alerts
/// in deploy/prometheus watch: out of sync too long, files that fail to
/// sync, a peer disconnected). Series of folders and devices no longer
/// configured go away.
fn set_gauges(node: &Node) {
    let m = &node.metrics;
    let all = node.all_connections();
    m.connections
        .set(all.values().map(|d| d.conns.len()).sum::<usize>() as i64);
    m.connection_requests.clear();
    m.connection_response_bytes.clear();
    m.connection_index_sent.clear();
    m.connection_index_received.clear();
    for (id, d) in &all {
        for (i, c) in d.conns.iter().enumerate() {
            let role = if i == 0 {
                Role::Primary
            } else {
                Role::Secondary
            };
            let labels = [
                ("device", id.to_string()),
                ("connection", c.id.to_string()),
                ("role", role.as_str().to_string()),
            ];
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            m.connection_requests
                .get_or_create(&labels)
                .set(gauge(c.requester.sent()));
            m.connection_response_bytes
                .get_or_create(&labels)
                .set(gauge(c.requester.received_bytes()));
            let load = |a: &std::sync::atomic::AtomicU64| gauge(a.load(Ordering::Relaxed));
            m.connection_index_sent
                .get_or_create(&labels)
                .set(load(&c.counters.index_sent));
            m.connection_index_received
                .get_or_create(&labels)
                .set(load(&c.counters.index_received));
        }
    }
    let config = node.config();
    m.folder_need_bytes.clear();
    m.folder_pull_errors.clear();
    for f in &config.folders {
        let Some(rt) = node.folder_runtime(&f.id) else {
            continue;
        };
        let label = [("folder", f.id.clone())];
        if let Ok(totals) = crate::pull::figures::need_totals(node, &f.id) {
            m.folder_need_bytes
                .get_or_create(&label)
                .set(i64::try_from(totals.value.need_bytes).unwrap_or(i64::MAX));
        }
        let errors = rt.pull_errors.locked().len();
        m.folder_pull_errors
            .get_or_create(&label)
            .set(errors as i64);
    }
    m.bandwidth_limit.clear();
    let limit = |scope: &str, device: String, send: Kbps, recv: Kbps| {
        for (direction, k) in [("send", send), ("recv", recv)] {
            let labels = [
                ("direction", direction.to_string()),
                ("scope", scope.to_string()),
                ("device", device.clone()),
            ];
            let bps = k.bytes_per_second().unwrap_or(0);
            m.bandwidth_limit
                .get_or_create(&labels)
                .set(i64::try_from(bps).unwrap_or(i64::MAX));
        }
    };
    let o = &config.options;
    limit("global", String::new(), o.max_send_kbps, o.max_recv_kbps);
    for d in config.devices.iter().filter(|d| d.device_id != node.my_id) {
        limit(
            "device",
            d.device_id.to_string(),
            d.max_send_kbps,
            d.max_recv_kbps,
        );
        // Shown at 0 before the device's first connection counts them.
        for direction in ["send", "recv"] {
            let labels = [
                ("device", d.device_id.to_string()),
                ("direction", direction.to_string()),
            ];
            drop(m.device_bytes.get_or_create(&labels));
            drop(m.bandwidth_throttled.get_or_create(&labels));
        }
    }
    m.device_connected.clear();
    for d in &config.devices {
        let id = d.device_id;
        if id == node.my_id {
            continue;
        }
        m.device_connected
            .get_or_create(&[("device", id.to_string()), ("name", d.name.clone())])
            .set(i64::from(all.contains_key(&id)));
    }
}
