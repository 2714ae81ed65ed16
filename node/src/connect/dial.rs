//! One dial loop per configured device. Candidates come from the device's
//! addresses: `tcp://HOST:PORT` (names resolved with hickory), `relay://…`
//! (with `relaysEnabled`), `dns-srv://NAME` (SRV `_syncthing._tcp.NAME`)
//! and `dynamic` (global and local discovery). Direct candidates are tried
//! before relays; while a device is connected through a relay, direct
//! candidates keep being tried and a working one replaces the relay. While
//! a device has fewer direct connections than negotiated (Syncthing 2.x's
//! multiple connections), direct candidates are dialed for more — both
//! sides do, as 2.x does; relays carry one connection only, as in 2.x.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use proto::discovery::address::{AnnouncedAddress, Host};
use proto::relay::RelayUri;
use proto::tls::{self, alpn, ServerPin, Versions};
use proto::DeviceId;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::model::{ConnectionKind, Node};
use daemon::sync::MutexExt;

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait after a round where nothing worked; doubles up to
/// `reconnectionIntervalS`.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// How long a dialed connection gets to register (Hello exchange).
const REGISTER_WAIT: Duration = Duration::from_secs(25);
/// Most candidates tried in one round.
const MAX_CANDIDATES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    Direct {
        uri: String,
        host: String,
        port: u16,
    },
    Relay(RelayUri),
}

impl Candidate {
    fn is_direct(&self) -> bool {
        matches!(self, Candidate::Direct { .. })
    }

    /// For logs: the address without a relay token.
    fn label(&self) -> String {
        match self {
            Candidate::Direct { uri, .. } => uri.clone(),
            Candidate::Relay(r) => crate::config::relay_uri::announceable(r),
        }
    }
}

/// A dialable address, or `None` (unsupported scheme, unspecified host,
/// port 0, malformed).
pub fn parse_candidate(s: &str) -> Option<Candidate> {
    let s = s.trim();
    if s.starts_with("relay://") {
        return s.parse::<RelayUri>().ok().map(Candidate::Relay);
    }
    let a = AnnouncedAddress::parse(s).ok()?;
    if !matches!(a.scheme.as_str(), "tcp" | "tcp4" | "tcp6") || a.port == 0 {
        return None;
    }
    let host = match a.host {
        Host::Ip(ip) if ip.is_unspecified() || ip.is_multicast() => return None,
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.to_string(),
        // Link-local with its zone (`fe80::1%2`, `fe80::1%25eth0`).
        Host::ScopedIpv6(h) => h.to_string(),
        Host::Empty => return None,
    };
    Some(Candidate::Direct {
        uri: s.to_string(),
        host,
        port: a.port,
    })
}

/// Every candidate for a device, direct ones first, duplicates removed.
async fn candidates(node: &Arc<Node>, device: DeviceId, addresses: &[String]) -> Vec<Candidate> {
    let config = node.config();
    let options = &config.options;
    let mut texts: Vec<String> = Vec::new();
    for a in addresses {
        let a = a.trim();
        if a == "dynamic" {
            texts.extend(crate::discovery::lookup(node, device).await);
        } else if let Some(name) = a.strip_prefix("dns-srv://") {
            match node
                .connect
                .resolver
                .srv(&options.dns_servers, name.trim_end_matches('/'))
                .await
            {
                Ok(targets) => texts.extend(
                    targets
                        .into_iter()
                        .map(|t| format!("tcp://{}:{}", t.host, t.port)),
                ),
                Err(e) => {
                    tracing::info!(device = %device, address = %a, error = %format!("{e:#}"), "SRV lookup failed")
                }
            }
        } else {
            texts.push(a.to_string());
        }
    }
    let mut out: Vec<Candidate> = Vec::new();
    for t in texts {
        match parse_candidate(&t) {
            Some(Candidate::Relay(_)) if !options.relays_enabled => {}
            Some(c) if !out.contains(&c) => out.push(c),
            _ => {}
        }
    }
    // Stable: configured order within each kind.
    out.sort_by_key(|c| !c.is_direct());
    out.truncate(MAX_CANDIDATES);
    out
}

/// Starts a dial loop for every configured device that has none, and
/// brings the listeners in line with the configuration now (rather than
/// at the next periodic check). Called after every configuration change.
pub fn ensure_dialers(node: &Arc<Node>) {
    let n = node.clone();
    node.shutdown.spawn_until_cancelled(async move {
        if let Err(e) = super::listen::reconcile(&n, false).await {
            tracing::debug!(error = %format!("{e:#}"), "listener not started");
        }
    });
    let config = node.config();
    for d in &config.devices {
        let id = d.device_id;
        if id == node.my_id {
            continue;
        }
        let mut dialers = node.dialers.locked();
        if dialers.insert(id) {
            node.shutdown
                .spawn_until_cancelled(device_loop(node.clone(), id));
        }
    }
}

fn current_kind(node: &Node, device: &DeviceId) -> Option<ConnectionKind> {
    node.connections()
        .get(device)
        .filter(|c| !c.close.is_closed())
        .map(|c| c.kind)
}

async fn device_loop(node: Arc<Node>, device: DeviceId) {
    let mut backoff = BACKOFF_MIN;
    let mut next_upgrade = Instant::now();
    // The last round's failure, logged (at info) only when it changes.
    let mut last_failure = String::new();
    loop {
        let config = node.config();
        let Some(d) = config.device(&device).cloned() else {
            node.dialers.locked().remove(&device);
            return;
        };
        if node.shutdown.is_cancelled() {
            return;
        }
        if d.paused {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let max = Duration::from_secs(
            config
                .options
                .reconnection_interval_s
                .clamp(1, crate::config::MAX_INTERVAL_S),
        );
        let kind = current_kind(&node, &device).filter(|_| node.connected(&device));
        let relayed = kind.is_some_and(ConnectionKind::relayed);
        let (have, want) = node.connection_count(&device);
        // Connected directly, with fewer connections than negotiated.
        let more = kind.is_some() && !relayed && have < want;
        if kind.is_some() && !more && (!relayed || Instant::now() < next_upgrade) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let mut list = candidates(&node, device, &d.addresses).await;
        if relayed {
            // Only something better than what we have.
            list.retain(Candidate::is_direct);
            next_upgrade = Instant::now() + max;
        }
        if more {
            // Relays carry one connection per device (as in Syncthing 2.x).
            list.retain(Candidate::is_direct);
        }
        // Enough: a direct connection for a relayed one, the negotiated
        // number for more, any connection otherwise.
        let enough = || {
            let (have, want) = node.connection_count(&device);
            match current_kind(&node, &device) {
                Some(k) if relayed => !k.relayed(),
                Some(_) if more => have >= want,
                k => k.is_some(),
            }
        };
        let mut connected = false;
        let mut failure = if list.is_empty() {
            "no address known".to_string()
        } else {
            String::new()
        };
        for c in &list {
            if enough() {
                connected = true;
                break;
            }
            let result = try_candidate(&node, device, c).await;
            // An extra connection the peer (or we) did not keep, because
            // one it dialed at the same time came first, is no dial error.
            if !more || result.is_ok() {
                node.connect
                    .dials
                    .record(c.label(), result.as_ref().err().map(|e| format!("{e:#}")));
            }
            match result {
                Ok(()) => {
                    connected = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(device = %device, candidate = %c.label(), error = %format!("{e:#}"), "dial failed");
                    if !failure.is_empty() {
                        failure.push_str("; ");
                    }
                    failure.push_str(&format!("{}: {e:#}", c.label()));
                }
            }
        }
        if connected {
            backoff = BACKOFF_MIN;
            last_failure.clear();
            // A peer that accepts and drops at once is not redialed in a
            // tight loop.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if more {
            tracing::debug!(device = %device, error = %failure, "no additional connection");
        } else if failure != last_failure && !relayed {
            tracing::info!(device = %device, error = %failure, "cannot reach device");
            last_failure = failure;
        }
        if relayed && !more {
            continue;
        }
        tokio::time::sleep(backoff.min(max)).await;
        backoff = (backoff * 2).min(max);
    }
}

/// Dials one candidate; on a working TLS connection starts BEP on it and
/// waits until it is registered (or fails).
async fn try_candidate(node: &Arc<Node>, device: DeviceId, c: &Candidate) -> Result<()> {
    // The connection dialed now is one that was not there before.
    let before = node.serials(&device);
    let config = node.config();
    let allowed = config
        .device(&device)
        .map(|d| d.allowed_networks.clone())
        .unwrap_or_default();
    let (task, kind) = match c {
        Candidate::Direct { host, port, .. } => {
            let mut addrs = node
                .connect
                .resolver
                .resolve(&config.options.dns_servers, host, *port)
                .await?;
            // As Syncthing: an address outside the device's networks is
            // never dialed.
            addrs.retain(|a| allowed.allows(a.ip()));
            if addrs.is_empty() {
                bail!("network disallowed: {host} is outside the device's allowedNetworks");
            }
            let mut last = anyhow!("no address");
            let mut started = None;
            for addr in addrs {
                match dial_tcp(node, device, addr).await {
                    Ok(t) => {
                        started = Some(t);
                        break;
                    }
                    Err(e) => last = e.context(addr.to_string()),
                }
            }
            (started.ok_or(last)?, ConnectionKind::TcpClient)
        }
        Candidate::Relay(uri) => {
            // Syncthing judges a relayed dial by the relay's host.
            if !allowed.is_empty() {
                let relay_addrs = node
                    .connect
                    .resolver
                    .resolve(&config.options.dns_servers, &uri.host, uri.port)
                    .await?;
                if !relay_addrs.iter().any(|a| allowed.allows(a.ip())) {
                    bail!(
                        "network disallowed: relay {} is outside the device's allowedNetworks",
                        uri.host
                    );
                }
            }
            let (tls, relay) = crate::relay_client::dial(node, uri, device).await?;
            let node2 = node.clone();
            // Not cut at the node's stop: the connection sends its Close.
            let task = node.shutdown.spawn(async move {
                if let Err(e) =
                    crate::conn::run(node2, tls, device, relay, ConnectionKind::RelayClient, None)
                        .await
                {
                    tracing::info!(device = %device, %relay, error = %format!("{e:#}"), "relayed connection ended");
                }
            });
            (task, ConnectionKind::RelayClient)
        }
    };
    let deadline = Instant::now() + REGISTER_WAIT;
    while Instant::now() < deadline {
        if node.all_connections().get(&device).is_some_and(|d| {
            d.conns
                .iter()
                .any(|c| c.kind == kind && !before.contains(&c.serial))
        }) {
            return Ok(());
        }
        if task.is_finished() {
            bail!("connection ended before it was established");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("connection not established in time")
}

async fn dial_tcp(
    node: &Arc<Node>,
    device: DeviceId,
    addr: SocketAddr,
) -> Result<tokio::task::JoinHandle<()>> {
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("dial timed out")??;
    let _ = tcp.set_nodelay(true);
    let config = tls::client_config(
        Some(&node.identity),
        &[alpn::BEP],
        ServerPin::Device(device),
        Versions::Tls13Only,
    )?;
    let tls = tokio::time::timeout(
        TLS_HANDSHAKE_TIMEOUT,
        TlsConnector::from(Arc::new(config)).connect(tls::server_name(), tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    let peer = tls::peer_device_id(tls.get_ref().1).context("server sent no certificate")?;
    let node = node.clone();
    // Not cut at the node's stop: the connection sends its Close.
    Ok(node.clone().shutdown.spawn(async move {
        if let Err(e) =
            crate::conn::run(node, tls, peer, addr, ConnectionKind::TcpClient, None).await
        {
            tracing::info!(device = %peer, %addr, error = %format!("{e:#}"), "connection ended");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_parse() {
        assert!(matches!(
            parse_candidate("tcp://localhost:22000"),
            Some(Candidate::Direct { port: 22000, .. })
        ));
        assert!(matches!(
            parse_candidate("tcp6://[::1]:1"),
            Some(Candidate::Direct { .. })
        ));
        assert_eq!(parse_candidate("tcp://0.0.0.0:22000"), None);
        assert_eq!(parse_candidate("tcp://h:0"), None);
        assert_eq!(parse_candidate("quic://h:1"), None);
        assert_eq!(parse_candidate("dynamic"), None);
        assert!(matches!(
            parse_candidate(
                "relay://127.0.0.1:22067/?id=LYXKCHX-VI3NYZR-ALCJBHF-WMZYSPK-QG6QJA3-MPFYMSO-U56GTUK-NA2MIAW"
            ),
            Some(Candidate::Relay(_))
        ));
    }
}
