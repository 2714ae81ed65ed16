//! Finding devices whose address is `dynamic`: the global discovery
//! servers of `globalAnnounceServers` (announce + lookup, `global.rs`) and
//! local discovery on the LAN (`local.rs`). Lookups merge both sources.

pub mod global;
pub mod local;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::DeviceId;

use crate::model::Node;
use daemon::sync::MutexExt;
use global::ServerUrl;

/// How often the announcer looks at the configuration and our addresses.
const TICK: Duration = Duration::from_secs(1);

/// Addresses of `device` known to discovery: global servers (cached) and
/// local announcements, merged without duplicates.
pub async fn lookup(node: &Arc<Node>, device: DeviceId) -> Vec<String> {
    let config = node.config();
    let options = &config.options;
    let mut out: Vec<String> = Vec::new();
    if options.local_announce_enabled {
        out.extend(node.discovery.local.get(&device));
    }
    if options.global_announce_enabled {
        let servers: Vec<ServerUrl> = options
            .global_announce_servers
            .iter()
            .filter(|s| !s.trim().is_empty())
            .filter_map(|s| ServerUrl::parse(s).ok())
            .filter(|s| !s.no_lookup)
            .collect();
        let lookups = servers
            .iter()
            .map(|s| lookup_one(node, s, device, &options.dns_servers));
        for addrs in futures_util::future::join_all(lookups).await {
            out.extend(addrs);
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|a| seen.insert(a.clone()));
    out
}

async fn lookup_one(
    node: &Arc<Node>,
    server: &ServerUrl,
    device: DeviceId,
    dns: &[String],
) -> Vec<String> {
    let d = &node.discovery;
    if let Some(cached) = d.cache.get(&server.text, &device) {
        return cached.unwrap_or_default();
    }
    let addrs = match node
        .connect
        .resolver
        .resolve(dns, &server.host, server.port)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(server = %server.text, error = %format!("{e:#}"), "discovery server not resolved");
            d.cache
                .put(&server.text, device, Duration::from_secs(60), None);
            return Vec::new();
        }
    };
    let path = format!("{}?device={device}", server.path);
    // Lookups carry no client certificate, as Syncthing 1.19.2.
    let result = global::request(server, &addrs, None, http::Method::GET, &path, Vec::new()).await;
    let (ttl, answer, error) = global::lookup_outcome(&result);
    if let Some(e) = error {
        tracing::info!(server = %server.text, device = %device, error = %e, retry_s = ttl.as_secs(), "discovery lookup failed");
    } else {
        tracing::debug!(server = %server.text, device = %device, addresses = ?answer, "discovery lookup");
    }
    d.cache.put(&server.text, device, ttl, answer.clone());
    answer.unwrap_or_default()
}

/// Per server: when to announce next and what was last sent.
struct ServerState {
    next: Instant,
    sent: Vec<String>,
}

/// Announces our addresses to every announce-enabled server, as long as
/// `globalAnnounceEnabled` is on: when due (Reannounce-After, Retry-After),
/// and as soon as our addresses change.
pub async fn announce_loop(node: Arc<Node>) {
    let mut state: HashMap<String, ServerState> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let config = node.config();
        let options = &config.options;
        if !options.global_announce_enabled {
            state.clear();
            continue;
        }
        let ours = node.connect.announced_addresses();
        let servers: Vec<ServerUrl> = options
            .global_announce_servers
            .iter()
            .filter(|s| !s.trim().is_empty())
            .filter_map(|s| match ServerUrl::parse(s) {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "discovery server ignored");
                    None
                }
            })
            .filter(|s| !s.no_announce)
            .collect();
        state.retain(|k, _| servers.iter().any(|s| &s.text == k));
        if ours.is_empty() {
            continue;
        }
        let now = Instant::now();
        let due: Vec<&ServerUrl> = servers
            .iter()
            .filter(|s| {
                state
                    .get(&s.text)
                    .is_none_or(|st| now >= st.next || st.sent != ours)
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        let body = global::announcement_body(&ours);
        let jobs = due.iter().map(|s| {
            let node = node.clone();
            let body = body.clone();
            let dns = options.dns_servers.clone();
            async move {
                let result = match node.connect.resolver.resolve(&dns, &s.host, s.port).await {
                    Ok(addrs) => {
                        global::request(
                            s,
                            &addrs,
                            Some(&node.identity),
                            http::Method::POST,
                            &s.path,
                            body,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                (s.text.clone(), global::announce_outcome(&result))
            }
        });
        for (server, (delay, error)) in futures_util::future::join_all(jobs).await {
            match &error {
                None => {
                    tracing::info!(server = %server, addresses = ?ours, next_s = delay.as_secs(), "announced")
                }
                Some(e) => {
                    tracing::warn!(server = %server, error = %e, retry_s = delay.as_secs(), "announcement failed")
                }
            }
            node.discovery.status.locked().insert(server.clone(), error);
            state.insert(
                server,
                ServerState {
                    next: Instant::now() + delay,
                    sent: ours.clone(),
                },
            );
        }
    }
}
