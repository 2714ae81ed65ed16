//! Prometheus metrics. The same atomics feed `/status`, so both views
//! always agree.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Why a connection or request was refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Reject {
    /// JoinRelayRequest with a missing or wrong token (code 3).
    WrongToken,
    /// A device ID already joined (code 2).
    AlreadyJoined,
    /// ConnectRequest for a device that is not joined (code 1).
    TargetNotFound,
    /// JoinSessionRequest with an unknown, used or expired key (code 1).
    UnknownKey,
    /// Capacity reached: RelayFull.
    Full,
    /// Over the per-IP connection rate: closed before any reply.
    IpRate,
    /// Undecodable bytes (bad magic, length, type): closed.
    Malformed,
    /// A known message where it does not belong (code 100).
    Unexpected,
    /// TLS handshake failed or timed out, or no single client certificate.
    Tls,
    /// Nothing (or not enough) arrived in time.
    Timeout,
    /// The source (IPv4 address or IPv6 /64) holds --per-ip-max-conns
    /// sockets: closed before any reply.
    SourceConnections,
    /// ConnectRequest while its source has --per-ip-max-pending unanswered
    /// pairings: RelayFull.
    SourcePending,
    /// ConnectRequest over the target's invitation rate: code 429, no
    /// invitation.
    InvitationRate,
    /// ConnectRequest from a device not joined with the token while
    /// --connect-requires-token is on (code 3).
    ConnectToken,
    /// An unjoined socket (TLS, pre-join, data connection without a key)
    /// closed to make room for a newcomer when sockets ran out.
    Evicted,
    /// Out of sockets and nothing unjoined to evict: the newcomer is
    /// closed; joined devices are never dropped for it.
    SocketsExhausted,
    /// The status listener is at its connection cap.
    StatusBusy,
    /// JoinRelayRequest from a device not on the join list (--allow-join
    /// or --allow-devices): code 3, as a wrong token.
    JoinNotAllowed,
    /// ConnectRequest from a device not on the connect list
    /// (--allow-connect or --allow-devices): code 1, no invitation.
    ConnectNotAllowed,
    /// A joined device found off the join list at its next ping: dropped
    /// with its pairings.
    JoinRevoked,
}

/// Which access file a sample describes: `allow-devices`, `allow-join`,
/// `allow-connect` or `token-file`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListLabels {
    pub list: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: Reject,
}

pub struct Metrics {
    pub registry: Registry,
    pub bytes_proxied: Counter,
    pub pairings_total: Counter,
    pub active: Gauge,
    pub pending: Gauge,
    pub protocol_connections: Gauge,
    pub joined: Gauge,
    pub open_sockets: Gauge,
    pub rejects: Family<RejectLabels, Counter>,
    pub setup_seconds: Histogram,
    pub lifetime_seconds: Histogram,
    /// Entries (devices or tokens) of each access file in force.
    pub list_entries: Family<ListLabels, Gauge>,
    /// When each access file in force was read (Unix seconds).
    pub list_loaded: Family<ListLabels, Gauge>,
    /// Reloads of each access file refused (the previous version stayed).
    pub list_failures: Family<ListLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("relaysrv");
        let m = Metrics {
            bytes_proxied: Counter::default(),
            pairings_total: Counter::default(),
            active: Gauge::default(),
            pending: Gauge::default(),
            protocol_connections: Gauge::default(),
            joined: Gauge::default(),
            open_sockets: Gauge::default(),
            rejects: Family::default(),
            setup_seconds: Histogram::new(exponential_buckets(0.0005, 4.0, 10)),
            lifetime_seconds: Histogram::new(exponential_buckets(0.1, 4.0, 12)),
            list_entries: Family::default(),
            list_loaded: Family::default(),
            list_failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "proxied_bytes",
            "Bytes forwarded between paired devices",
            m.bytes_proxied.clone(),
        );
        registry.register(
            "pairings",
            "Pairings completed (both data connections joined)",
            m.pairings_total.clone(),
        );
        registry.register(
            "active_pairings",
            "Pairings currently forwarding",
            m.active.clone(),
        );
        registry.register(
            "pending_pairings",
            "Pairings invited but not yet joined by both devices",
            m.pending.clone(),
        );
        registry.register(
            "protocol_connections",
            "Open protocol (TLS) connections",
            m.protocol_connections.clone(),
        );
        registry.register(
            "joined_devices",
            "Devices joined and reachable through the relay",
            m.joined.clone(),
        );
        registry.register(
            "open_sockets",
            "Accepted sockets currently open (protocol and data)",
            m.open_sockets.clone(),
        );
        registry.register(
            "rejects",
            "Connections or requests refused, by reason",
            m.rejects.clone(),
        );
        registry.register(
            "pairing_setup_seconds",
            "Time from ConnectRequest to both data connections joined",
            m.setup_seconds.clone(),
        );
        registry.register(
            "pairing_duration_seconds",
            "Lifetime of completed pairings",
            m.lifetime_seconds.clone(),
        );
        registry.register(
            "access_list_entries",
            "Entries (devices, or tokens) of each access file in force",
            m.list_entries.clone(),
        );
        registry.register(
            "access_list_loaded_timestamp_seconds",
            "When each access file in force was read",
            m.list_loaded.clone(),
        );
        registry.register(
            "access_list_reload_failures",
            "Reloads of each access file refused since start (the previous version stays)",
            m.list_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn reject(&self, reason: Reject) {
        self.rejects.get_or_create(&RejectLabels { reason }).inc();
    }

    /// OpenMetrics text, what Prometheus asks for.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (0.0.4) for clients that do not
    /// ask for OpenMetrics (curl, `promtool check metrics`): counter
    /// families are named with their `_total` suffix and there is no `# EOF`.
    pub fn encode_classic(&self) -> String {
        daemon::metrics::classic_text(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format_names_counters_with_total() {
        let m = Metrics::new();
        m.bytes_proxied.inc_by(5);
        m.reject(Reject::WrongToken);
        let text = m.encode_classic();
        assert!(
            text.contains("# TYPE relaysrv_proxied_bytes_total counter"),
            "{text}"
        );
        assert!(text.contains("relaysrv_proxied_bytes_total 5"), "{text}");
        assert!(
            text.contains("relaysrv_rejects_total{reason=\"WrongToken\"} 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
