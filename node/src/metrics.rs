//! The node's Prometheus metrics, one [`Metrics`] per [`Node`](crate::model::Node):
//! counters the scanner, puller, block server and guards bump as they
//! work, and gauges `/metrics` fills in from the node's state when it is
//! scraped (`rest/metrics.rs`). Names and labels are an interface: the
//! dashboards and alerts in `deploy/` query them.

use daemon::sync::MutexExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A `reason` label (or any one label with a fixed value).
pub type Reason = [(&'static str, &'static str); 1];
/// A label whose value comes from the configuration (folder ID, device).
type Named<const N: usize> = [(&'static str, String); N];

pub struct Metrics {
    registry: Registry,
    pub hashed_files: Counter,
    pub hashed_bytes: Counter,
    /// Bytes of file data sent in Responses.
    pub served_bytes: Counter,
    /// Requests answered with data.
    pub served_requests: Counter,
    pub pulled_bytes: Counter,
    pub reused_bytes: Counter,
    /// Pulls refused because a directory on the way to the name was a
    /// symlink or a file.
    pub pull_refused_not_a_dir: Counter,
    /// Live BEP connections (set when scraped).
    pub connections: Gauge,
    /// Per folder (set when scraped).
    pub folder_need_bytes: Family<Named<1>, Gauge>,
    pub folder_pull_errors: Family<Named<1>, Gauge>,
    /// Per configured device (set when scraped).
    pub device_connected: Family<Named<2>, Gauge>,
    /// Per live connection (device, connection ID, role; set when
    /// scraped): block requests we sent on it and the data bytes of
    /// their Responses, to see requests spread over the secondaries.
    pub connection_requests: Family<Named<3>, Gauge>,
    pub connection_response_bytes: Family<Named<3>, Gauge>,
    /// Index and IndexUpdate messages sent and received per live
    /// connection (set when scraped): index traffic is the primary's.
    pub connection_index_sent: Family<Named<3>, Gauge>,
    pub connection_index_received: Family<Named<3>, Gauge>,
    /// REST requests and connections refused, by reason (counted
    /// through `rest::auth::Refusals`, which registers every reason).
    pub rest_refused: Family<Reason, Counter>,
    /// Strangers' and peers' excesses refused, by reason (counted through
    /// `guard::Refusals`, which registers every reason).
    pub refused: Family<Reason, Counter>,
    /// Versions kept in each folder's versions folder, and their bytes
    /// (set by archives, listings and cleanups).
    pub versions_kept: Family<Named<1>, Gauge>,
    pub versions_bytes: Family<Named<1>, Gauge>,
    /// Failures to keep, restore or clean versions, per folder and kind.
    pub versioning_errors: Family<Named<2>, Counter>,
    /// Bandwidth limits in effect, bytes a second (0: unlimited), by
    /// direction and scope (`global`, or `device` with its ID; set when
    /// scraped).
    pub bandwidth_limit: Family<Named<3>, Gauge>,
    /// Seconds connections spent waiting for the limits, and BEP bytes
    /// moved, per configured device and direction.
    pub bandwidth_throttled: Family<Named<2>, Counter<f64, AtomicU64>>,
    pub device_bytes: Family<Named<2>, Counter>,
    /// Held while the scraped gauges are filled in and the text written,
    /// so two scrapes at once never interleave their clear-and-set.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let hashed_files = Counter::default();
        let hashed_bytes = Counter::default();
        let served_bytes = Counter::default();
        let served_requests = Counter::default();
        let pulled_bytes = Counter::default();
        let reused_bytes = Counter::default();
        let pull_refused = Family::<Reason, Counter>::default();
        let connections = Gauge::default();
        let folder_need_bytes = Family::<Named<1>, Gauge>::default();
        let folder_pull_errors = Family::<Named<1>, Gauge>::default();
        let device_connected = Family::<Named<2>, Gauge>::default();
        let connection_requests = Family::<Named<3>, Gauge>::default();
        let connection_response_bytes = Family::<Named<3>, Gauge>::default();
        let connection_index_sent = Family::<Named<3>, Gauge>::default();
        let connection_index_received = Family::<Named<3>, Gauge>::default();
        let rest_refused = Family::<Reason, Counter>::default();
        let refused = Family::<Reason, Counter>::default();
        let versions_kept = Family::<Named<1>, Gauge>::default();
        let versions_bytes = Family::<Named<1>, Gauge>::default();
        let versioning_errors = Family::<Named<2>, Counter>::default();
        let bandwidth_limit = Family::<Named<3>, Gauge>::default();
        let bandwidth_throttled = Family::<Named<2>, Counter<f64, AtomicU64>>::default();
        let device_bytes = Family::<Named<2>, Counter>::default();
        // The order of the exposition, kept from the hand-written text.
        registry.register(
            "node_hashed_files",
            "Files hashed by scans",
            hashed_files.clone(),
        );
        registry.register(
            "node_hashed_bytes",
            "Bytes hashed by scans",
            hashed_bytes.clone(),
        );
        registry.register(
            "node_served_bytes",
            "Bytes of file data sent to devices in Responses",
            served_bytes.clone(),
        );
        registry.register(
            "node_pulled_bytes",
            "Bytes of blocks pulled from devices",
            pulled_bytes.clone(),
        );
        registry.register(
            "node_reused_bytes",
            "Bytes of blocks found locally instead of pulled (temp file or local copy)",
            reused_bytes.clone(),
        );
        registry.register(
            "node_pull_refused",
            "Pulls refused because a directory on the way was a symlink or a file.",
            pull_refused.clone(),
        );
        registry.register(
            "node_connections",
            "Live BEP connections",
            connections.clone(),
        );
        registry.register(
            "node_folder_need_bytes",
            "Bytes this node still needs to be in sync, per folder",
            folder_need_bytes.clone(),
        );
        registry.register(
            "node_folder_pull_errors",
            "Items the last pull round could not apply, per folder",
            folder_pull_errors.clone(),
        );
        registry.register(
            "node_device_connected",
            "1 if the configured device is connected, else 0",
            device_connected.clone(),
        );
        registry.register(
            "node_rest_refused",
            "REST requests or connections refused, by reason.",
            rest_refused.clone(),
        );
        registry.register(
            "node_refused",
            "Connections, handshakes, pending entries and log lines refused or dropped, by reason",
            refused.clone(),
        );
        registry.register(
            "node_served_requests",
            "Block requests answered with data",
            served_requests.clone(),
        );
        registry.register(
            "node_connection_requests",
            "Block requests sent on each live connection (role primary or secondary)",
            connection_requests.clone(),
        );
        registry.register(
            "node_connection_response_bytes",
            "Data bytes received in Responses on each live connection",
            connection_response_bytes.clone(),
        );
        registry.register(
            "node_connection_index_sent",
            "Index and IndexUpdate messages sent on each live connection",
            connection_index_sent.clone(),
        );
        registry.register(
            "node_connection_index_received",
            "Index and IndexUpdate messages received on each live connection",
            connection_index_received.clone(),
        );
        registry.register(
            "node_folder_versions",
            "Versions kept in the folder's versions folder",
            versions_kept.clone(),
        );
        registry.register(
            "node_folder_versions_bytes",
            "Bytes of the versions kept in the folder's versions folder",
            versions_bytes.clone(),
        );
        registry.register(
            "node_versioning_errors",
            "Failures to keep, restore or clean up versions, per folder and kind",
            versioning_errors.clone(),
        );
        registry.register(
            "node_bandwidth_limit_bytes_per_second",
            "Bandwidth limit in effect (0: unlimited), by direction and scope (global or device)",
            bandwidth_limit.clone(),
        );
        registry.register(
            "node_bandwidth_throttled_seconds",
            "Seconds connections to the device waited for the bandwidth limits, by direction",
            bandwidth_throttled.clone(),
        );
        registry.register(
            "node_device_bytes",
            "BEP bytes sent to and received from the device (after TLS), by direction",
            device_bytes.clone(),
        );
        let pull_refused_not_a_dir = counter(&pull_refused, [("reason", "not_a_directory")]);
        Metrics {
            registry,
            hashed_files,
            hashed_bytes,
            served_bytes,
            served_requests,
            pulled_bytes,
            reused_bytes,
            pull_refused_not_a_dir,
            connections,
            folder_need_bytes,
            folder_pull_errors,
            device_connected,
            connection_requests,
            connection_response_bytes,
            connection_index_sent,
            connection_index_received,
            rest_refused,
            refused,
            versions_kept,
            versions_bytes,
            versioning_errors,
            bandwidth_limit,
            bandwidth_throttled,
            device_bytes,
            scrape: Mutex::new(()),
        }
    }

    /// Taken by a scrape while it fills in the gauges and encodes.
    pub fn scrape(&self) -> MutexGuard<'_, ()> {
        self.scrape.locked()
    }

    /// Every series in OpenMetrics text (see `daemon::metrics` for the
    /// classic format).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The counter of one label set, resolved once: callers then bump an
/// atomic, and the series shows (at 0) before its first event.
pub fn counter(family: &Family<Reason, Counter>, labels: Reason) -> Counter {
    family.get_or_create(&labels).clone()
}

/// Why something was refused: the `reason` label of one counter family
/// (`guard::Refusal` for `node_refused_total`, `rest::auth::Refusal` for
/// `node_rest_refused_total`).
pub trait RefusalReason: Copy + 'static {
    /// Every reason, in the order of [`RefusalReason::index`].
    const ALL: &'static [Self];
    fn label(self) -> &'static str;
    /// Its place in [`RefusalReason::ALL`].
    fn index(self) -> usize;
}

/// One counter per reason: handles on a family's series, every reason
/// registered (shown at 0) from the start.
pub struct Refusals<R> {
    counters: Vec<Counter>,
    reasons: std::marker::PhantomData<R>,
}

impl<R: RefusalReason> Default for Refusals<R> {
    /// Counters registered nowhere (for tests of a guard alone).
    fn default() -> Self {
        Refusals {
            counters: R::ALL.iter().map(|_| Counter::default()).collect(),
            reasons: std::marker::PhantomData,
        }
    }
}

impl<R: RefusalReason> Refusals<R> {
    pub fn registered(family: &Family<Reason, Counter>) -> Refusals<R> {
        Refusals {
            counters: R::ALL
                .iter()
                .map(|r| counter(family, [("reason", r.label())]))
                .collect(),
            reasons: std::marker::PhantomData,
        }
    }

    pub fn count(&self, r: R) {
        self.counters[r.index()].inc();
    }

    pub fn get(&self, r: R) -> u64 {
        self.counters[r.index()].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_of_the_old_text_is_there() {
        let m = Metrics::new();
        // As the node and its REST API do: every reason shows from the start.
        let _node = crate::guard::Refusals::registered(&m.refused);
        let _rest = crate::rest::auth::Refusals::registered(&m.rest_refused);
        m.hashed_files.inc_by(3);
        m.folder_need_bytes
            .get_or_create(&[("folder", "a\"b".to_string())])
            .set(7);
        let text = daemon::metrics::classic_text(&m.encode());
        for line in [
            "# TYPE node_hashed_files_total counter",
            "node_hashed_files_total 3",
            "node_hashed_bytes_total 0",
            "node_served_bytes_total 0",
            "node_pulled_bytes_total 0",
            "node_reused_bytes_total 0",
            "node_pull_refused_total{reason=\"not_a_directory\"} 0",
            "# TYPE node_connections gauge",
            "node_connections 0",
            "node_folder_need_bytes{folder=\"a\\\"b\"} 7",
            "node_rest_refused_total{reason=\"wrong_api_key\"} 0",
            "node_refused_total{reason=\"pending_device_evicted\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }
}
