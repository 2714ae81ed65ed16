//! `/metrics`: Prometheus text for scrapers (with the API key or a
//! Bearer token).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;

use super::http_util::{Answer, Call};
use crate::scan::{TOTAL_HASHED_BYTES, TOTAL_HASHED_FILES};

pub async fn route(c: &Call) -> Answer {
    c.allow(&[Method::GET])?;
    let node = &c.node;
    let text = format!(
        "# TYPE node_hashed_files_total counter\nnode_hashed_files_total {}\n\
         # TYPE node_hashed_bytes_total counter\nnode_hashed_bytes_total {}\n\
         # TYPE node_served_bytes_total counter\nnode_served_bytes_total {}\n\
         # TYPE node_pulled_bytes_total counter\nnode_pulled_bytes_total {}\n\
         # TYPE node_reused_bytes_total counter\nnode_reused_bytes_total {}\n\
         # TYPE node_connections gauge\nnode_connections {}\n",
        TOTAL_HASHED_FILES.load(Ordering::Relaxed),
        TOTAL_HASHED_BYTES.load(Ordering::Relaxed),
        node.served_bytes.load(Ordering::Relaxed),
        crate::pull::PULLED_BYTES.load(Ordering::Relaxed),
        crate::pull::REUSED_BYTES.load(Ordering::Relaxed),
        node.connections().len(),
    );
    Ok(http::Response::new(Full::new(Bytes::from(text))))
}
