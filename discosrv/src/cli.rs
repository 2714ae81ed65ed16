//! Command line: GNU-style long flags mirroring stdiscosrv's, each also
//! settable through a `DISCOSRV_…` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipnet::IpNet;
use proto::discovery::CertHeader;
use proto::Identity;

use crate::config::{
    AllowConfig, AllowSource, Budget, ConnectionLimits, PathPrefix, RateLimits, ServerConfig,
    StoreConfig, Transport,
};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "discosrv",
    version,
    about = "Global discovery server (protocol v3) for private Syncthing networks",
    long_about = "Global discovery server (protocol v3) for private Syncthing networks.\n\n\
        Devices announce their addresses over HTTPS with their device certificate \
        (POST /) and look each other up (GET /?device=ID). Point Syncthing at it with \
        globalAnnounceServers = https://HOST:PORT/?id=<the server device ID printed at start>.\n\n\
        Announcements are kept in memory and snapshotted under --db-dir (the default), \
        or in Redis (--redis-url) so several replicas can share them."
)]
pub struct Cli {
    /// Address to serve discovery on; ":PORT" means every interface.
    #[arg(long, env = "DISCOSRV_LISTEN", default_value = ":8443", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Server certificate (PEM); generated together with --key if both are missing.
    #[arg(long, env = "DISCOSRV_CERT", default_value = "./cert.pem")]
    pub cert: PathBuf,

    /// Server private key (PEM).
    #[arg(long, env = "DISCOSRV_KEY", default_value = "./key.pem")]
    pub key: PathBuf,

    /// Key type of a newly generated server certificate. Clients pin the
    /// server by device ID, not by key type; Ed25519 makes handshakes cheapest.
    #[arg(long, env = "DISCOSRV_KEY_TYPE", default_value = "ed25519")]
    pub key_type: proto::KeyKind,

    /// Serve plain HTTP behind a TLS-terminating reverse proxy that forwards
    /// the client certificate (see --client-cert-header) and address
    /// (X-Forwarded-For, X-Client-Port).
    #[arg(long, env = "DISCOSRV_HTTP")]
    pub http: bool,

    /// In --http mode, the one header the proxy writes the client certificate
    /// to: X-SSL-Cert (nginx), X-Tls-Client-Cert-Der-Base64 (caddy) or
    /// X-Forwarded-Tls-Client-Cert (traefik); the proxy's name works too. An
    /// announcement carrying either of the other two is refused (403): a
    /// proxy passes a client's copy of them through, so it must remove them.
    #[arg(
        long,
        env = "DISCOSRV_CLIENT_CERT_HEADER",
        default_value = "X-SSL-Cert",
        value_parser = clap::value_parser!(CertHeader)
    )]
    pub client_cert_header: CertHeader,

    /// Peers whose forwarding headers are believed, in --http mode (CIDR, repeatable
    /// or comma-separated). Headers from anyone else are ignored. The client is
    /// the rightmost X-Forwarded-For address outside these networks.
    #[arg(
        long = "trusted-proxy",
        env = "DISCOSRV_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// Directory of the embedded store's snapshot (created if missing).
    #[arg(long, env = "DISCOSRV_DB_DIR", default_value = "./discovery.db")]
    pub db_dir: PathBuf,

    /// How often the embedded store is written to --db-dir (also at shutdown).
    #[arg(long, env = "DISCOSRV_DB_FLUSH_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub db_flush_interval: Duration,

    /// Keep announcements in Redis instead (redis://[:password@]host:port[/db],
    /// rediss:// for TLS). With --redis-cluster, repeat it for each seed node.
    /// Its value may hold a password, so --help never shows it.
    #[arg(
        long,
        env = "DISCOSRV_REDIS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_url: Vec<String>,

    /// The --redis-url nodes form a Redis Cluster.
    #[arg(long, env = "DISCOSRV_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Prefix of every Redis key, to share a Redis with other programs.
    #[arg(long, env = "DISCOSRV_REDIS_PREFIX", default_value = "discosrv:")]
    pub redis_prefix: String,

    /// Serve Prometheus metrics (/metrics) and health (/healthz) on this address.
    #[arg(long, env = "DISCOSRV_METRICS_LISTEN", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// Requests per second allowed per client IP (IPv6: per /64); 0 turns rate
    /// limiting off.
    #[arg(long, env = "DISCOSRV_RATE_LIMIT", default_value_t = 20)]
    pub rate_limit: u32,

    /// Requests a client IP may send in a burst above --rate-limit.
    #[arg(long, env = "DISCOSRV_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,

    /// Announcements of devices the store does not hold yet, per client IP
    /// (IPv6: per /64) and minute, after --new-device-burst; more get 429.
    /// Known devices are not counted. 0 turns this limit off.
    #[arg(long, env = "DISCOSRV_NEW_DEVICE_RATE", default_value_t = 60)]
    pub new_device_rate: u32,

    /// New devices one client IP may announce at once (a site's devices
    /// behind one NAT on their first start).
    #[arg(long, env = "DISCOSRV_NEW_DEVICE_BURST", default_value_t = 256)]
    pub new_device_burst: u32,

    /// Most devices the embedded store holds; past it, announcements of new
    /// devices get 503 with Retry-After (known ones still update).
    #[arg(long, env = "DISCOSRV_MAX_RECORDS", default_value_t = 2_000_000)]
    pub max_records: u64,

    /// Most bytes the embedded store's records may take (about 116 bytes
    /// for a device with three IPv4 addresses, at most 8 KiB of addresses
    /// per device); past it, as --max-records.
    #[arg(long, env = "DISCOSRV_MAX_STORE_BYTES", default_value_t = 1 << 30)]
    pub max_store_bytes: u64,

    /// Most client IPs the rate limiter remembers; idle ones are forgotten first.
    #[arg(
        long,
        env = "DISCOSRV_RATE_LIMIT_MAX_CLIENTS",
        default_value_t = 1_000_000
    )]
    pub rate_limit_max_clients: usize,

    /// Target rate of not-found replies (per second) for devices seen before;
    /// their Retry-After grows (60 s to 1 h) to keep near it.
    #[arg(long, env = "DISCOSRV_SEEN_RATE", default_value_t = 1000.0)]
    pub desired_seen_not_found_rate: f64,

    /// Same for devices never seen.
    #[arg(long, env = "DISCOSRV_UNSEEN_RATE", default_value_t = 1000.0)]
    pub desired_unseen_not_found_rate: f64,

    /// Most simultaneous client connections; one more is accepted and
    /// closed at once (so the listen queue never fills), and counted.
    #[arg(long, env = "DISCOSRV_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Most simultaneous connections from one client IP (IPv6: one /64);
    /// more are closed at once and counted. A studio's devices behind one NAT
    /// share an address, hence the room. --trusted-proxy peers in --http
    /// mode are not limited. 0 turns the limit off.
    #[arg(long, env = "DISCOSRV_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// A connection with no request for this long is closed (HTTP/2:
    /// GOAWAY), whatever keep-alive pings say.
    #[arg(long, env = "DISCOSRV_IDLE_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Only the devices in this file may announce, and lookups find only
    /// them (others get 404, as unknown devices). One device ID per line,
    /// `#` comments. Re-read when it changes (see --allow-reload-interval);
    /// a file that does not parse keeps the previous list. Absent: open.
    #[arg(
        long,
        env = "DISCOSRV_ALLOW_DEVICES",
        conflicts_with = "allow_devices_redis"
    )]
    pub allow_devices: Option<PathBuf>,

    /// As --allow-devices, from this Redis set of device IDs (SADD KEY ID)
    /// in the --redis-url store, so replicas share one list. The key is
    /// used as given (no --redis-prefix).
    #[arg(long, env = "DISCOSRV_ALLOW_DEVICES_REDIS", requires = "redis_url")]
    pub allow_devices_redis: Option<String>,

    /// How often the allow-list file or Redis set is checked for changes.
    #[arg(long, env = "DISCOSRV_ALLOW_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub allow_reload_interval: Duration,

    /// Answer only under this secret path (clients use
    /// https://HOST:PORT/PREFIX/?id=...); every other path, /ping and
    /// /healthz included, gets the same plain 404. /healthz on
    /// --metrics-listen is unaffected.
    #[arg(long, env = "DISCOSRV_PATH_PREFIX", hide_env_values = true)]
    pub path_prefix: Option<PathPrefix>,

    #[command(flatten)]
    pub log: daemon::LogArgs,
}

impl Cli {
    /// The server these flags describe. Loads (or creates) the server
    /// certificate in TLS mode, so the device ID is known before serving.
    pub fn into_config(self) -> anyhow::Result<ServerConfig> {
        let transport = if self.http {
            if self.trusted_proxies.is_empty() {
                tracing::warn!("--http without --trusted-proxy: forwarded client certificates and addresses are ignored, so every announcement will be refused");
            }
            Transport::Http {
                trusted_proxies: self.trusted_proxies,
                cert_header: self.client_cert_header,
            }
        } else {
            let identity =
                Identity::load_or_generate(&self.cert, &self.key, "stdiscosrv", self.key_type)
                    .with_context(|| {
                        format!(
                    "loading the server certificate {} / key {} (both are generated when both are missing)",
                    self.cert.display(),
                    self.key.display()
                )
                    })?
                    .into_identity();
            Transport::Tls(Box::new(identity))
        };
        let store = if self.redis_url.is_empty() {
            StoreConfig::Memory {
                dir: Some(self.db_dir),
                flush_interval: self.db_flush_interval,
                budget: Budget {
                    max_records: self.max_records,
                    max_bytes: self.max_store_bytes,
                },
            }
        } else {
            StoreConfig::Redis {
                urls: self.redis_url,
                cluster: self.redis_cluster,
                prefix: self.redis_prefix,
            }
        };
        let allow = match (self.allow_devices, self.allow_devices_redis) {
            (Some(path), _) => Some(AllowSource::File(path)),
            (None, Some(key)) => Some(AllowSource::Redis { key }),
            (None, None) => None,
        }
        .map(|source| AllowConfig {
            source,
            reload_interval: self.allow_reload_interval,
        });
        Ok(ServerConfig {
            allow,
            path_prefix: self.path_prefix,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            transport,
            store,
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                per_ip: self.max_connections_per_ip,
                idle_timeout: self.idle_timeout,
            },
            rates: RateLimits {
                per_client: self.rate_limit,
                per_client_burst: self.rate_limit_burst,
                new_devices_per_minute: self.new_device_rate,
                new_device_burst: self.new_device_burst,
                max_clients: self.rate_limit_max_clients,
                seen_not_found: self.desired_seen_not_found_rate,
                unseen_not_found: self.desired_unseen_not_found_rate,
            },
        })
    }
}

/// `HOST:PORT`, `[V6]:PORT` or `:PORT` (all interfaces, IPv6 and IPv4).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: port must be a number from 0 to 65535"))?;
        return Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
    }
    if let Ok(sa) = s.parse() {
        return Ok(sa);
    }
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?}: not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{s:?}: name has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen(":8443").unwrap().to_string(), "[::]:8443");
        assert_eq!(
            parse_listen("127.0.0.1:1").unwrap().to_string(),
            "127.0.0.1:1"
        );
        assert!(parse_listen(":x").is_err());
    }

    #[test]
    fn private_server_flags() {
        let cli = Cli::try_parse_from([
            "discosrv",
            "--allow-devices",
            "/etc/discosrv/allow",
            "--allow-reload-interval",
            "2s",
            "--path-prefix",
            "studio",
        ])
        .unwrap();
        assert_eq!(cli.allow_reload_interval, Duration::from_secs(2));
        assert_eq!(cli.path_prefix.as_ref().unwrap().as_str(), "/studio/");
        let both = Cli::try_parse_from([
            "discosrv",
            "--redis-url",
            "redis://r/",
            "--allow-devices",
            "f",
            "--allow-devices-redis",
            "k",
        ]);
        assert!(both.is_err(), "a file and a Redis set at once");
        let no_redis = Cli::try_parse_from(["discosrv", "--allow-devices-redis", "k"]);
        assert!(no_redis.is_err(), "a Redis set without --redis-url");
        assert!(Cli::try_parse_from(["discosrv", "--path-prefix", "/a b/"]).is_err());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "discosrv",
            "--http",
            "--trusted-proxy",
            "127.0.0.1/32",
            "--trusted-proxy",
            "10.0.0.0/8,::1/128",
        ])
        .unwrap();
        assert_eq!(cli.trusted_proxies.len(), 3);
        assert_eq!(cli.client_cert_header, CertHeader::Nginx);
        for (value, want) in [
            ("caddy", CertHeader::Caddy),
            ("X-Tls-Client-Cert-Der-Base64", CertHeader::Caddy),
            ("x-forwarded-tls-client-cert", CertHeader::Traefik),
            ("nginx", CertHeader::Nginx),
        ] {
            let cli = Cli::try_parse_from(["discosrv", "--client-cert-header", value]).unwrap();
            assert_eq!(cli.client_cert_header, want, "{value}");
        }
        assert!(Cli::try_parse_from(["discosrv", "--client-cert-header", "x-cert"]).is_err());
        Cli::command_for_tests().debug_assert();
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
