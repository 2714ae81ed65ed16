//! Prometheus metrics. Names follow stdiscosrv's `syncthing_discovery_*`
//! where it has one; its summaries are histograms here (the Rust client has
//! no summaries).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label sets of static strings: no allocation per request.
type L1 = [(&'static str, &'static str); 1];
type L2 = [(&'static str, &'static str); 2];
type ApiLabels = L2;

pub struct Metrics {
    registry: Registry,
    api_requests: Family<ApiLabels, Counter>,
    api_seconds: Family<L1, Histogram>,
    lookups: Family<L1, Counter>,
    announcements: Family<L1, Counter>,
    store_ops: Family<L2, Counter>,
    store_seconds: Family<L1, Histogram>,
    pub store_errors: Counter,
    pub rate_limited: Counter,
    pub database_keys: Family<L1, Gauge>,
    pub last_written: Gauge<f64, AtomicU64>,
    pub write_seconds: Gauge<f64, AtomicU64>,
    pub retry_after: Family<L1, Gauge<f64, AtomicU64>>,
    pub connections: Gauge,
    pub rate_limiter_clients: Gauge,
    pub store_bytes: Gauge,
    /// Devices in the allow-list in force; its read time (Unix seconds).
    pub allowlist_devices: Gauge,
    pub allowlist_loaded: Gauge<f64, AtomicU64>,
    pub allowlist_reload_failures: Gauge,
    refused: Family<L1, Counter>,
    accept_errors: Family<L1, Counter>,
    hot: Hot,
}

/// Handles of the series every successful request touches, resolved once:
/// the hot path is then a few atomic operations, no label hashing.
struct Hot {
    get_200: Counter,
    /// A real server answers as many lookups with 404 (offline and
    /// never-seen devices) as with 200: their series are hot too.
    get_404: Counter,
    lookup_not_found_recent: Counter,
    lookup_not_found_ever: Counter,
    get_not_found: Counter,
    post_204: Counter,
    get_seconds: Histogram,
    post_seconds: Histogram,
    lookup_success: Counter,
    announce_success: Counter,
    get_success: Counter,
    merge_success: Counter,
    get_op_seconds: Histogram,
    merge_op_seconds: Histogram,
    /// Refusals an outsider can cause at the rate of lookups.
    refused_not_allowed: Counter,
    refused_bad_path: Counter,
}

fn seconds_histogram() -> Histogram {
    // 25 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000025, 2.5, 14))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let api_requests = Family::<ApiLabels, Counter>::default();
        let api_seconds =
            Family::<L1, Histogram>::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let lookups = Family::<L1, Counter>::default();
        let announcements = Family::<L1, Counter>::default();
        let store_ops = Family::<L2, Counter>::default();
        let store_seconds =
            Family::<L1, Histogram>::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let store_errors = Counter::default();
        let rate_limited = Counter::default();
        let database_keys = Family::<L1, Gauge>::default();
        let last_written = Gauge::<f64, AtomicU64>::default();
        let write_seconds = Gauge::<f64, AtomicU64>::default();
        let retry_after = Family::<L1, Gauge<f64, AtomicU64>>::default();
        let connections = Gauge::default();
        let rate_limiter_clients = Gauge::default();
        let refused = Family::<L1, Counter>::default();
        let accept_errors = Family::<L1, Counter>::default();
        let store_bytes = Gauge::default();
        let allowlist_devices = Gauge::default();
        let allowlist_loaded = Gauge::<f64, AtomicU64>::default();
        let allowlist_reload_failures = Gauge::default();
        registry.register(
            "syncthing_discovery_database_bytes",
            "Estimated memory of the embedded store's records (see --max-store-bytes)",
            store_bytes.clone(),
        );
        registry.register(
            "syncthing_discovery_accept_errors",
            "Failed accepts (out of file descriptors and the like) by listener; each is followed by a pause",
            accept_errors.clone(),
        );
        registry.register(
            "syncthing_discovery_refused",
            "Requests and connections refused for a reason other than the rate limit, by reason",
            refused.clone(),
        );
        registry.register(
            "syncthing_discovery_api_requests",
            "API requests by HTTP method (type) and status code (result)",
            api_requests.clone(),
        );
        registry.register(
            "syncthing_discovery_api_requests_seconds",
            "API request latency by HTTP method",
            api_seconds.clone(),
        );
        registry.register(
            "syncthing_discovery_lookup_requests",
            "Lookups by result",
            lookups.clone(),
        );
        registry.register(
            "syncthing_discovery_announcement_requests",
            "Announcements by result",
            announcements.clone(),
        );
        registry.register(
            "syncthing_discovery_database_operations",
            "Store operations by operation and result",
            store_ops.clone(),
        );
        registry.register(
            "syncthing_discovery_database_operation_seconds",
            "Store operation latency",
            store_seconds.clone(),
        );
        registry.register(
            "syncthing_discovery_store_errors",
            "Store (Redis) errors, each answered with 503",
            store_errors.clone(),
        );
        registry.register(
            "syncthing_discovery_rate_limited_requests",
            "Requests refused with 429 by the per-IP rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "syncthing_discovery_database_keys",
            "Devices in the store by category (current: with an unexpired address)",
            database_keys.clone(),
        );
        registry.register(
            "syncthing_discovery_database_last_written",
            "Unix time of the last successful snapshot",
            last_written.clone(),
        );
        registry.register(
            "syncthing_discovery_database_write_seconds",
            "Duration of the last snapshot",
            write_seconds.clone(),
        );
        registry.register(
            "syncthing_discovery_retry_after_seconds",
            "Current not-found Retry-After delay by tracker",
            retry_after.clone(),
        );
        registry.register(
            "syncthing_discovery_connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "syncthing_discovery_rate_limiter_clients",
            "Client IPs remembered by the rate limiter",
            rate_limiter_clients.clone(),
        );
        // One statement per handle: a family's read guard lives until the
        // end of its statement, and the next new series needs its write lock.
        let get_200 = counter(&api_requests, [("type", "GET"), ("result", "200")]);
        let post_204 = counter(&api_requests, [("type", "POST"), ("result", "204")]);
        let get_404 = counter(&api_requests, [("type", "GET"), ("result", "404")]);
        let lookup_not_found_recent = counter(&lookups, [("result", "not_found_recent")]);
        let lookup_not_found_ever = counter(&lookups, [("result", "not_found_ever")]);
        let get_not_found = counter(&store_ops, [("operation", "get"), ("result", "not_found")]);
        let get_seconds = histogram(&api_seconds, [("type", "GET")]);
        let post_seconds = histogram(&api_seconds, [("type", "POST")]);
        let lookup_success = counter(&lookups, [("result", "success")]);
        let announce_success = counter(&announcements, [("result", "success")]);
        let get_success = counter(&store_ops, [("operation", "get"), ("result", "success")]);
        let merge_success = counter(&store_ops, [("operation", "merge"), ("result", "success")]);
        let get_op_seconds = histogram(&store_seconds, [("operation", "get")]);
        let merge_op_seconds = histogram(&store_seconds, [("operation", "merge")]);
        let refused_not_allowed = counter(&refused, [("reason", "not_allowed")]);
        let refused_bad_path = counter(&refused, [("reason", "bad_path")]);
        let hot = Hot {
            get_200,
            get_404,
            lookup_not_found_recent,
            lookup_not_found_ever,
            get_not_found,
            post_204,
            get_seconds,
            post_seconds,
            lookup_success,
            announce_success,
            get_success,
            merge_success,
            get_op_seconds,
            merge_op_seconds,
            refused_not_allowed,
            refused_bad_path,
        };
        Metrics {
            hot,
            registry,
            api_requests,
            api_seconds,
            lookups,
            announcements,
            store_ops,
            store_seconds,
            store_errors,
            rate_limited,
            database_keys,
            last_written,
            write_seconds,
            retry_after,
            connections,
            rate_limiter_clients,
            refused,
            accept_errors,
            store_bytes,
            allowlist_devices,
            allowlist_loaded,
            allowlist_reload_failures,
        }
    }

    /// Adds the allow-list's series: only a server with a list has them,
    /// so a dashboard can tell "no list" from "an empty list".
    pub fn register_allowlist(&mut self) {
        self.registry.register(
            "syncthing_discovery_allowlist_devices",
            "Devices in the allow-list in force",
            self.allowlist_devices.clone(),
        );
        self.registry.register(
            "syncthing_discovery_allowlist_loaded_time_seconds",
            "Unix time the allow-list in force was read (0: never read, every device refused)",
            self.allowlist_loaded.clone(),
        );
        self.registry.register(
            "syncthing_discovery_allowlist_reload_failures",
            "Reloads of the allow-list refused since start (unreadable file or Redis, a bad ID); the previous list stays",
            self.allowlist_reload_failures.clone(),
        );
    }

    /// An announcement or lookup of a device not in the allow-list.
    pub fn refused_not_allowed(&self) {
        self.hot.refused_not_allowed.inc();
    }

    /// A request outside `--path-prefix`.
    pub fn refused_bad_path(&self) {
        self.hot.refused_bad_path.inc();
    }

    /// A failed `accept` on `listener` ("api" or "metrics").
    pub fn accept_error(&self, listener: &'static str) {
        self.accept_errors
            .get_or_create(&[("listener", listener)])
            .inc();
    }

    /// One refusal; `reason` is a fixed label (never client data).
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn request(&self, method: &http::Method, status: u16, elapsed: Duration) {
        let m = method_label(method);
        let secs = elapsed.as_secs_f64();
        match m {
            "GET" => self.hot.get_seconds.observe(secs),
            "POST" => self.hot.post_seconds.observe(secs),
            _ => self.api_seconds.get_or_create(&[("type", m)]).observe(secs),
        }
        match (m, status) {
            ("GET", 200) => {
                self.hot.get_200.inc();
            }
            ("GET", 404) => {
                self.hot.get_404.inc();
            }
            ("POST", 204) => {
                self.hot.post_204.inc();
            }
            _ => {
                self.api_requests
                    .get_or_create(&[("type", m), ("result", status_label(status))])
                    .inc();
            }
        }
    }

    pub fn lookup(&self, result: &'static str) {
        match result {
            "success" => {
                self.hot.lookup_success.inc();
            }
            "not_found_recent" => {
                self.hot.lookup_not_found_recent.inc();
            }
            "not_found_ever" => {
                self.hot.lookup_not_found_ever.inc();
            }
            _ => {
                self.lookups.get_or_create(&[("result", result)]).inc();
            }
        }
    }

    pub fn announcement(&self, result: &'static str) {
        if result == "success" {
            self.hot.announce_success.inc();
        } else {
            self.announcements
                .get_or_create(&[("result", result)])
                .inc();
        }
    }

    pub fn store_op(&self, operation: &'static str, result: &'static str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        match operation {
            "get" => self.hot.get_op_seconds.observe(secs),
            "merge" => self.hot.merge_op_seconds.observe(secs),
            _ => self
                .store_seconds
                .get_or_create(&[("operation", operation)])
                .observe(secs),
        }
        match (operation, result) {
            ("get", "success") => {
                self.hot.get_success.inc();
            }
            ("get", "not_found") => {
                self.hot.get_not_found.inc();
            }
            ("merge", "success") => {
                self.hot.merge_success.inc();
            }
            _ => {
                self.store_ops
                    .get_or_create(&[("operation", operation), ("result", result)])
                    .inc();
            }
        }
    }

    /// OpenMetrics text, as the Rust client writes it.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Prometheus text format 0.0.4, which every scraper and `promtool
    /// check metrics` read.
    pub fn render_prometheus(&self) -> String {
        daemon::metrics::classic_text(&self.render_openmetrics())
    }
}

/// HTTP methods as static labels; anything unusual is `OTHER` so clients
/// cannot grow the label space.
fn method_label(m: &http::Method) -> &'static str {
    use http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

fn counter<const N: usize>(
    family: &Family<[(&'static str, &'static str); N], Counter>,
    labels: [(&'static str, &'static str); N],
) -> Counter {
    let guard = family.get_or_create(&labels);
    let c = guard.clone();
    drop(guard);
    c
}

fn histogram(family: &Family<L1, Histogram>, labels: L1) -> Histogram {
    let guard = family.get_or_create(&labels);
    let h = guard.clone();
    drop(guard);
    h
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        204 => "204",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let m = Metrics::new();
        m.request(&http::Method::GET, 200, Duration::from_millis(1));
        let text = m.render_prometheus();
        assert!(text.contains("# TYPE syncthing_discovery_api_requests_total counter\n"));
        assert!(text.contains("# HELP syncthing_discovery_api_requests_total API requests"));
        assert!(text
            .contains("syncthing_discovery_api_requests_total{type=\"GET\",result=\"200\"} 1\n"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn hot_series_are_the_labelled_ones() {
        // The handles held for the usual answers must count in the same
        // series that a labelled lookup would find.
        let m = Metrics::new();
        let ms = Duration::from_millis(1);
        m.request(&http::Method::GET, 404, ms);
        m.request(&http::Method::GET, 404, ms);
        m.request(&http::Method::GET, 400, ms);
        m.request(&http::Method::POST, 204, ms);
        m.request(&http::Method::PUT, 405, ms);
        m.lookup("not_found_recent");
        m.lookup("not_found_ever");
        m.lookup("not_found_ever");
        m.lookup("bad_request");
        m.store_op("get", "not_found", ms);
        m.store_op("get", "error", ms);
        m.store_op("merge", "success", ms);
        let text = m.render_prometheus();
        for want in [
            "syncthing_discovery_api_requests_total{type=\"GET\",result=\"404\"} 2\n",
            "syncthing_discovery_api_requests_total{type=\"GET\",result=\"400\"} 1\n",
            "syncthing_discovery_api_requests_total{type=\"POST\",result=\"204\"} 1\n",
            "syncthing_discovery_api_requests_total{type=\"PUT\",result=\"405\"} 1\n",
            "syncthing_discovery_api_requests_seconds_count{type=\"GET\"} 3\n",
            "syncthing_discovery_api_requests_seconds_count{type=\"PUT\"} 1\n",
            "syncthing_discovery_lookup_requests_total{result=\"not_found_recent\"} 1\n",
            "syncthing_discovery_lookup_requests_total{result=\"not_found_ever\"} 2\n",
            "syncthing_discovery_lookup_requests_total{result=\"bad_request\"} 1\n",
            "{operation=\"get\",result=\"not_found\"} 1\n",
            "{operation=\"get\",result=\"error\"} 1\n",
            "{operation=\"merge\",result=\"success\"} 1\n",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
