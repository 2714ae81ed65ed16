//! Host names in device, discovery and relay addresses, resolved with
//! hickory-resolver: either through the DNS servers named in the option
//! `dnsServers` (`IP[:PORT]`, so a site can point the node at its own DNS,
//! and tests at one on loopback) or through the system configuration
//! (`/etc/resolv.conf`, `/etc/hosts`). Also the SRV lookup behind
//! `dns-srv://NAME` device addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use daemon::sync::MutexExt;

/// A whole lookup (all servers, retries) gives up after this.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most addresses or SRV targets taken from one answer.
const MAX_ANSWERS: usize = 32;

/// One SRV target: where a device behind `dns-srv://NAME` listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    pub host: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

/// The resolver in effect; rebuilt when `dnsServers` changes.
pub struct Resolver {
    current: Mutex<Option<(Vec<String>, TokioResolver)>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            current: Mutex::new(None),
        }
    }
}

/// `IP` or `IP:PORT` (port 53 by default), IPv6 in brackets with a port.
pub fn parse_dns_server(s: &str) -> Result<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let ip: IpAddr = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("DNS server {s:?} is not IP or IP:PORT"))?;
    Ok(SocketAddr::new(ip, 53))
}

fn build(servers: &[String]) -> Result<TokioResolver> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder(provider).context("cannot read the system DNS configuration")?
    } else {
        let mut config = ResolverConfig::from_name_servers(Vec::new());
        for s in servers {
            let addr = parse_dns_server(s)?;
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            config.add_name_server(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
        }
        TokioResolver::builder_with_config(config, provider)
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.cache_size = 1024;
    builder
        .build()
        .map_err(|e| anyhow!("cannot build the DNS resolver: {e}"))
}

/// An IPv6 zone: an interface index or name (`%25` URL-escaped or not).
fn zone_index(zone: &str) -> Result<u32> {
    if let Ok(n) = zone.parse::<u32>() {
        return Ok(n);
    }
    let name = zone
        .strip_prefix("25")
        .filter(|z| !z.is_empty())
        .unwrap_or(zone);
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface {name:?}");
    }
    Ok(idx)
}

/// Names that never go to DNS (RFC 6761): `localhost` and `*.localhost`.
fn is_localhost(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

impl Resolver {
    fn resolver(&self, servers: &[String]) -> Result<TokioResolver> {
        let mut cur = self.current.locked();
        if let Some((s, r)) = cur.as_ref() {
            if s == servers {
                return Ok(r.clone());
            }
        }
        let r = build(servers)?;
        *cur = Some((servers.to_vec(), r.clone()));
        Ok(r)
    }

    /// `host` (a name or an IP literal, IPv6 with or without brackets) and
    /// `port` → socket addresses to try.
    pub async fn resolve(
        &self,
        servers: &[String],
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some((ip, zone)) = bare.split_once('%') {
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| anyhow!("{host:?} is not an IPv6 address with a zone"))?;
            let scope = zone_index(zone).with_context(|| format!("zone of {host:?}"))?;
            return Ok(vec![SocketAddr::V6(std::net::SocketAddrV6::new(
                ip, port, 0, scope,
            ))]);
        }
        if bare.is_empty() || bare.len() > 253 {
            bail!("host name {host:?} is not valid");
        }
        if is_localhost(bare) {
            return Ok(vec![
                SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
                SocketAddr::new(IpAddr::from(std::net::Ipv6Addr::LOCALHOST), port),
            ]);
        }
        let r = self.resolver(servers)?;
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, r.lookup_ip(bare))
            .await
            .map_err(|_| anyhow!("DNS lookup of {bare} timed out"))?
            .map_err(|e| anyhow!("DNS lookup of {bare}: {e}"))?;
        let out: Vec<SocketAddr> = answer
            .iter()
            .take(MAX_ANSWERS)
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if out.is_empty() {
            bail!("DNS lookup of {bare}: no addresses");
        }
        Ok(out)
    }

    /// SRV records of `_syncthing._tcp.NAME`, best first (lowest
    /// priority, then highest weight).
    pub async fn srv(&self, servers: &[String], name: &str) -> Result<Vec<SrvTarget>> {
        let name = name.trim_end_matches('.');
        if name.is_empty() || name.len() > 230 {
            bail!("dns-srv name {name:?} is not valid");
        }
        let query = format!("_syncthing._tcp.{name}.");
        let r = self.resolver(servers)?;
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, r.srv_lookup(query.as_str()))
            .await
            .map_err(|_| anyhow!("SRV lookup of {query} timed out"))?
            .map_err(|e| anyhow!("SRV lookup of {query}: {e}"))?;
        let mut out: Vec<SrvTarget> = answer
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::SRV(srv) => Some(SrvTarget {
                    host: srv.target.to_utf8().trim_end_matches('.').to_string(),
                    port: srv.port,
                    priority: srv.priority,
                    weight: srv.weight,
                }),
                _ => None,
            })
            .filter(|t| t.port != 0 && !t.host.is_empty())
            .take(MAX_ANSWERS)
            .collect();
        out.sort_by_key(|t| (t.priority, std::cmp::Reverse(t.weight)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_server_forms() {
        assert_eq!(
            parse_dns_server("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(parse_dns_server("10.0.0.1").unwrap().port(), 53);
        assert_eq!(parse_dns_server("[::1]:53").unwrap().port(), 53);
        assert!(parse_dns_server("dns.example").is_err());
        assert!(is_localhost("localhost."));
        assert!(is_localhost("a.LOCALHOST"));
        assert!(!is_localhost("localhost.example"));
    }
}
