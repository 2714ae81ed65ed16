//! `/metrics`: Prometheus text for scrapers (with the API key or a
//! Bearer token).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;

use super::http_util::{Answer, Call};
use crate::scan::{TOTAL_HASHED_BYTES, TOTAL_HASHED_FILES};
use crate::sync::MutexExt;

pub async fn route(c: &Call) -> Answer {
    c.allow(&[Method::GET])?;
    let node = &c.node;
    let text = format!(
        "# TYPE node_hashed_files_total counter\nnode_hashed_files_total {}\n\
         # TYPE node_hashed_bytes_total counter\nnode_hashed_bytes_total {}\n\
         # TYPE node_served_bytes_total counter\nnode_served_bytes_total {}\n\
         # TYPE node_pulled_bytes_total counter\nnode_pulled_bytes_total {}\n\
         # TYPE node_reused_bytes_total counter\nnode_reused_bytes_total {}\n\
         # HELP node_pull_refused_total Pulls refused because a directory on the way was a symlink or a file.\n\
         # TYPE node_pull_refused_total counter\nnode_pull_refused_total{{reason=\"not_a_directory\"}} {}\n\
         # TYPE node_connections gauge\nnode_connections {}\n",
        TOTAL_HASHED_FILES.load(Ordering::Relaxed),
        TOTAL_HASHED_BYTES.load(Ordering::Relaxed),
        node.served_bytes.load(Ordering::Relaxed),
        crate::pull::PULLED_BYTES.load(Ordering::Relaxed),
        crate::pull::REUSED_BYTES.load(Ordering::Relaxed),
        node.pull_refused_not_a_dir.load(Ordering::Relaxed),
        node.connections().len(),
    );
    let text = text
        + &folder_and_device_metrics(node)
        + &refusal_metrics(&c.refusals)
        + &node.refusals.metrics_text();
    Ok(http::Response::new(Full::new(Bytes::from(text))))
}

/// REST requests and connections refused, by reason (wrong key, Host
/// check, throttled logins, connection limits, …).
fn refusal_metrics(r: &super::auth::Refusals) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "# HELP node_rest_refused_total REST requests or connections refused, by reason.\n\
         # TYPE node_rest_refused_total counter\n",
    );
    for why in super::auth::Refusal::ALL {
        let _ = writeln!(
            out,
            "node_rest_refused_total{{reason=\"{}\"}} {}",
            why.label(),
            r.get(why)
        );
    }
    out
}

/// Per-folder sync state and per-device connection state: what the alerts
/// in deploy/prometheus watch (out of sync too long, files that fail to
/// sync, a peer disconnected).
fn folder_and_device_metrics(node: &crate::model::Node) -> String {
    use std::fmt::Write;
    let config = node.config();
    let mut need = String::from("# TYPE node_folder_need_bytes gauge\n");
    let mut errors = String::from("# TYPE node_folder_pull_errors gauge\n");
    for f in &config.folders {
        let Some(rt) = node.folder_runtime(&f.id) else {
            continue;
        };
        let folder = label_value(&f.id);
        if let Ok(totals) = crate::pull::need_totals(node, &f.id) {
            let _ = writeln!(
                need,
                "node_folder_need_bytes{{folder=\"{folder}\"}} {}",
                totals.value.need_bytes
            );
        }
        let n = rt.pull_errors.locked().len();
        let _ = writeln!(errors, "node_folder_pull_errors{{folder=\"{folder}\"}} {n}");
    }
    let live = node.connections();
    let mut devices = String::from("# TYPE node_device_connected gauge\n");
    for d in &config.devices {
        let id = d.device_id;
        if id == node.my_id {
            continue;
        }
        let _ = writeln!(
            devices,
            "node_device_connected{{device=\"{id}\",name=\"{}\"}} {}",
            label_value(&d.name),
            u8::from(live.contains_key(&id))
        );
    }
    need + &errors + &devices
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
