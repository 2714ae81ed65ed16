//! What a discovery server is started with: [`ServerConfig`], built from
//! flags by [`crate::cli::Cli::into_config`] or directly by tests and tools.
//!
//! The choices that exclude each other are enums, so a configuration cannot
//! hold, say, trusted proxies for a server that terminates TLS itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use proto::discovery::CertHeader;
use proto::{DeviceId, Identity};

pub use crate::store::memory::Budget;

/// Everything [`crate::Server::spawn`] needs.
#[derive(Clone)]
pub struct ServerConfig {
    /// The discovery API; port 0 picks a free one ([`crate::Server::local_addr`]).
    pub listen: SocketAddr,
    /// `/metrics` and `/healthz`, when wanted.
    pub metrics_listen: Option<SocketAddr>,
    pub transport: Transport,
    pub store: StoreConfig,
    pub connections: ConnectionLimits,
    pub rates: RateLimits,
    /// Which devices may announce and be found (None: everyone).
    pub allow: Option<AllowConfig>,
    /// `--path-prefix`: the only path the API answers under.
    pub path_prefix: Option<PathPrefix>,
}

/// Where the device allow-list comes from, and how often it is re-read.
#[derive(Clone, Debug)]
pub struct AllowConfig {
    pub source: AllowSource,
    pub reload_interval: Duration,
}

#[derive(Clone, Debug)]
pub enum AllowSource {
    /// `--allow-devices FILE`.
    File(PathBuf),
    /// `--allow-devices-redis KEY`: a set in the store's Redis (only with
    /// [`StoreConfig::Redis`]).
    Redis { key: String },
}

/// A secret path prefix: starts and ends with `/`, holds at least one
/// other character, only URL characters that need no escaping and no
/// empty segment — so the path a client sends matches it byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPrefix(String);

#[derive(Debug, thiserror::Error)]
#[error("{0:?}: a path prefix is /SEGMENT/... of letters, digits and -._~ (e.g. /k3J9x-secret/)")]
pub struct PathPrefixError(String);

impl std::str::FromStr for PathPrefix {
    type Err = PathPrefixError;

    /// A missing leading or trailing `/` is added: `SECRET` and `/SECRET`
    /// both mean `/SECRET/`.
    fn from_str(s: &str) -> Result<PathPrefix, PathPrefixError> {
        let inner = s.trim_start_matches('/').trim_end_matches('/');
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "-._~/".contains(c);
        if inner.is_empty()
            || !inner.chars().all(ok_char)
            || inner
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            || s.starts_with("//")
            || s.ends_with("//")
        {
            return Err(PathPrefixError(s.to_string()));
        }
        Ok(PathPrefix(format!("/{inner}/")))
    }
}

impl PathPrefix {
    /// `/SECRET/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path below the prefix, keeping its leading `/` (`/SECRET/` →
    /// `/`, `/SECRET/ping` → `/ping`), or None outside it.
    pub fn strip<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(&self.0[..self.0.len() - 1])
            .filter(|rest| rest.starts_with('/'))
    }
}

/// How clients reach the API.
#[derive(Clone)]
pub enum Transport {
    /// HTTPS with this server certificate; clients prove their device
    /// with their TLS client certificate.
    Tls(Box<Identity>),
    /// Plain HTTP behind a TLS-terminating reverse proxy (`--http`).
    Http {
        /// Peers whose forwarding headers are believed; they are also
        /// exempt from the per-IP connection limit (every client arrives
        /// through them).
        trusted_proxies: Vec<IpNet>,
        /// The one header the proxy writes the client certificate to.
        cert_header: CertHeader,
    },
}

impl Transport {
    /// The server's device ID, which clients pin (TLS only).
    pub fn device_id(&self) -> Option<DeviceId> {
        match self {
            Transport::Tls(identity) => Some(identity.device_id()),
            Transport::Http { .. } => None,
        }
    }
}

/// Where announcements are kept.
#[derive(Clone)]
pub enum StoreConfig {
    /// In memory, snapshotted under `dir` every `flush_interval` and at
    /// shutdown (`dir` None: memory only).
    Memory {
        dir: Option<PathBuf>,
        flush_interval: Duration,
        budget: Budget,
    },
    /// Redis (one URL) or a Redis Cluster (its seed nodes). The URLs may
    /// hold passwords, hence no `Debug` on the configuration.
    Redis {
        urls: Vec<String>,
        cluster: bool,
        prefix: String,
    },
}

/// Limits on client connections (see the `--max-connections…` and
/// `--idle-timeout` flags).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Per client IP (IPv6: per /64); 0 is no limit.
    pub per_ip: usize,
    /// A connection without a request for this long is closed.
    pub idle_timeout: Duration,
}

/// Request rates (see the `--rate-limit…`, `--new-device…` and
/// `--…-not-found-rate` flags); a rate of 0 turns its limit off.
#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    /// Requests per second per client IP.
    pub per_client: u32,
    pub per_client_burst: u32,
    /// Announcements of unknown devices per client IP and minute.
    pub new_devices_per_minute: u32,
    pub new_device_burst: u32,
    /// Most client IPs the limiters remember.
    pub max_clients: usize,
    /// Target not-found replies per second, for devices seen before and never.
    pub seen_not_found: f64,
    pub unseen_not_found: f64,
}

impl ServerConfig {
    /// A TLS server on `listen` with the flags' defaults, a memory-only
    /// store and no rate limits: what in-process tests start.
    pub fn for_tests(listen: SocketAddr, identity: Identity) -> ServerConfig {
        ServerConfig {
            listen,
            metrics_listen: None,
            transport: Transport::Tls(Box::new(identity)),
            store: StoreConfig::Memory {
                dir: None,
                flush_interval: Duration::from_secs(300),
                budget: Budget::UNLIMITED,
            },
            connections: ConnectionLimits {
                max_connections: 20_000,
                per_ip: 0,
                idle_timeout: Duration::from_secs(120),
            },
            rates: RateLimits {
                per_client: 0,
                per_client_burst: 0,
                new_devices_per_minute: 0,
                new_device_burst: 0,
                max_clients: 1_000_000,
                seen_not_found: 1000.0,
                unseen_not_found: 1000.0,
            },
            allow: None,
            path_prefix: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes_are_normalised_and_checked() {
        let p: PathPrefix = "SECRET".parse().unwrap();
        assert_eq!(p.as_str(), "/SECRET/");
        assert_eq!(
            "/a-b.c~d/e/".parse::<PathPrefix>().unwrap().as_str(),
            "/a-b.c~d/e/"
        );
        for bad in [
            "", "/", "//", "/a b/", "/a%2F/", "/a//b/", "/../", "/a?b/", "//a/",
        ] {
            assert!(bad.parse::<PathPrefix>().is_err(), "{bad:?}");
        }
        assert_eq!(p.strip("/SECRET/"), Some("/"));
        assert_eq!(p.strip("/SECRET/ping"), Some("/ping"));
        assert_eq!(p.strip("/SECRET"), None);
        assert_eq!(p.strip("/SECRETX/"), None);
        assert_eq!(p.strip("/"), None);
        assert_eq!(p.strip("/secret/"), None);
    }
}
