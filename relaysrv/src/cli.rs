//! Command line. Flag names mirror strelaysrv's (`-listen` → `--listen`);
//! every flag can also be set through a `RELAYSRV_…` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use proto::{Identity, KeyKind, LoadedOrGenerated};

use crate::access::{load_list, load_tokens, TokenSet, WatchedList, WatchedTokens};
use crate::config::{
    CapacityConfig, DeviceAccess, ExternalAddress, ForwarderKind, JoinTokens, ProvidedBy,
    ServerConfig,
};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "relaysrv",
    version,
    about = "Syncthing-compatible relay server (relay protocol v1) for private networks.",
    long_about = "Syncthing-compatible relay server (relay protocol v1) for private networks.\n\n\
        Devices that cannot reach each other directly meet here: a listening device joins \
        with `relay://HOST:PORT/?id=RELAY-ID` as its listen address, other devices dial it \
        through the relay. Protocol (TLS) and data (plain TCP) connections share one port. \
        The relay never sees plaintext: devices run their own TLS through it.\n\n\
        Unlike strelaysrv, no public pool is joined unless --pools names one: this relay \
        is meant for private infrastructure."
)]
pub struct Cli {
    /// Protocol and data listen address (`:22067` = all interfaces).
    #[arg(long, env = "RELAYSRV_LISTEN", default_value = ":22067")]
    pub listen: String,

    /// Directory holding the relay's `cert.pem` and `key.pem` (created if
    /// both are missing). The relay's device ID, the `id=` of its URI, is
    /// derived from this certificate.
    #[arg(long, env = "RELAYSRV_KEYS", default_value = ".")]
    pub keys: PathBuf,

    /// Address to advertise instead of --listen (e.g. `relay.example.com:443`
    /// behind port forwarding). An IP here is also what invitations carry.
    #[arg(long, env = "RELAYSRV_EXT_ADDRESS", default_value = "")]
    pub ext_address: String,

    /// Interval of the relay's pings to joined devices; a connection that has
    /// not joined by the first ping is closed.
    #[arg(long, env = "RELAYSRV_PING_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A protocol connection silent for this long is closed; so is a pairing
    /// that moved no bytes for this long.
    #[arg(long, env = "RELAYSRV_NETWORK_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub network_timeout: Duration,

    /// Time allowed for both sides of a pairing to arrive, and for
    /// writing replies.
    #[arg(long, env = "RELAYSRV_MESSAGE_TIMEOUT", default_value = "1m", value_parser = parse_duration)]
    pub message_timeout: Duration,

    /// Time from accepting a connection to its TLS handshake being done
    /// and its JoinRelayRequest or ConnectRequest read (protocol
    /// connections), or its JoinSessionRequest read (data connections).
    /// Syncthing allows itself 10 s for the same steps; a connection that
    /// has shown nothing by then is closed (strelaysrv allows 60 s).
    #[arg(long, env = "RELAYSRV_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Rate limit of each pairing (both directions together), bytes/s; 0 = none.
    #[arg(long, env = "RELAYSRV_PER_SESSION_RATE", default_value_t = 0)]
    pub per_session_rate: u64,

    /// Rate limit of all pairings together, bytes/s; 0 = none.
    #[arg(long, env = "RELAYSRV_GLOBAL_RATE", default_value_t = 0)]
    pub global_rate: u64,

    /// Status HTTP listener (`/status` JSON as strelaysrv, `/metrics` for
    /// Prometheus); empty = off. Loopback only by default (strelaysrv
    /// listens on all interfaces): `:22070` exposes it as strelaysrv does,
    /// e.g. for Prometheus in another container. At most 32 connections
    /// are served at once; more are closed.
    #[arg(long, env = "RELAYSRV_STATUS_SRV", default_value = "127.0.0.1:22070")]
    pub status_srv: String,

    /// Comma-separated relay pool URLs to register with. EMPTY BY DEFAULT
    /// (strelaysrv defaults to the public pool): this relay is private unless
    /// you name a pool.
    #[arg(long, env = "RELAYSRV_POOLS", default_value = "")]
    pub pools: String,

    /// Free-text description for pools and status, at most 30 characters.
    #[arg(long, env = "RELAYSRV_PROVIDED_BY", default_value = "")]
    pub provided_by: String,

    /// Require this token in JoinRelayRequest (Syncthing ≥ 1.22.1 sends the
    /// `token=` of its relay URI). May be repeated: any of the tokens given
    /// (here and in --token-file) is accepted. Prefer --token-file or the
    /// environment variable (one token): a command line is visible to every
    /// local user. Tokens are never logged.
    #[arg(long, env = "RELAYSRV_TOKEN", hide_env_values = true)]
    pub token: Vec<String>,

    /// Join tokens, one per line (blank lines and lines starting with `#`
    /// skipped), any of them accepted. Re-read when the file changes
    /// (checked every --allow-reload-interval): rotate by adding the new
    /// token, moving devices over, then removing the old one. Removing a
    /// token refuses new joins with it; devices joined with it stay
    /// joined. A file with no token refuses every join (unless --token
    /// gives one).
    #[arg(long, visible_alias = "tokens-file", env = "RELAYSRV_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Devices allowed to join (listen through the relay) AND to dial
    /// through it: a file of device IDs, one per line in any form Syncthing
    /// accepts, `#` comments. Once given, every device not listed is
    /// refused (a file listing nobody refuses everyone): a join as with a
    /// wrong token (code 3), a dial as "not found" (code 1, no invitation
    /// sent). --allow-join and --allow-connect, when given, replace this
    /// list for their action. Re-read when it changes; a file that does
    /// not parse leaves the previous list in force. A joined device
    /// removed from the join list is dropped at its next ping
    /// (--ping-interval), with its pairings.
    #[arg(long, env = "RELAYSRV_ALLOW_DEVICES")]
    pub allow_devices: Option<PathBuf>,

    /// Devices allowed to join, as --allow-devices; overrides it for joins.
    #[arg(long, env = "RELAYSRV_ALLOW_JOIN")]
    pub allow_join: Option<PathBuf>,

    /// Devices allowed to dial joined devices (ConnectRequest), as
    /// --allow-devices; overrides it for dials. E.g. contractors who may
    /// reach the studio's NAS through the relay but not listen on it.
    #[arg(long, env = "RELAYSRV_ALLOW_CONNECT")]
    pub allow_connect: Option<PathBuf>,

    /// How often the allow-list files and --token-file are checked for
    /// changes (metadata only; read again when changed).
    #[arg(long, env = "RELAYSRV_ALLOW_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub allow_reload_interval: Duration,

    /// With a token: answer a ConnectRequest only when the dialing device
    /// is itself joined (which took the token) on another connection, so
    /// devices without the token cannot make joined devices open
    /// connections. Syncthing's ConnectRequest has no token field, so
    /// every dialing device must also list this relay (with the token) as
    /// a listen address. Others get code 3 (wrong token).
    #[arg(long, env = "RELAYSRV_CONNECT_REQUIRES_TOKEN")]
    pub connect_requires_token: bool,

    /// Bytes moved per step of a pairing direction: the kernel pipe size
    /// when splicing (pipes are taken from a small pool only while bytes
    /// flow), the buffer size of the copy forwarder. Nothing is held while
    /// a pairing is idle.
    #[arg(long, env = "RELAYSRV_NETWORK_BUFFER", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u32).range(4096..=16_777_216))]
    pub network_buffer: u32,

    /// Most devices joined at once; 0 = limited only by open files. Beyond
    /// it, JoinRelayRequest gets RelayFull.
    #[arg(long, env = "RELAYSRV_MAX_CLIENTS", default_value_t = 0)]
    pub max_clients: usize,

    /// Most pairings waiting for their data connections; beyond it a
    /// ConnectRequest gets RelayFull.
    #[arg(long, env = "RELAYSRV_MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: usize,

    /// Most pairings waiting for their data connections that were asked
    /// for from one source (IPv4 address or IPv6 /64); beyond it its
    /// ConnectRequests get RelayFull. Pairings normally complete within
    /// milliseconds, so only a flood reaches this. 0 = no limit.
    #[arg(long, env = "RELAYSRV_PER_IP_MAX_PENDING", default_value_t = 100)]
    pub per_ip_max_pending: usize,

    /// Invitations per second one joined device receives from one source
    /// (sustained); excess ConnectRequests get code 429 and no invitation.
    /// From all sources together a device receives at most four times
    /// this rate and burst. 0 = no limit.
    #[arg(long, env = "RELAYSRV_INVITATION_RATE", default_value_t = 10)]
    pub invitation_rate: u32,

    /// Burst of invitations one joined device receives from one source.
    #[arg(long, env = "RELAYSRV_INVITATION_BURST", default_value_t = 50)]
    pub invitation_burst: u32,

    /// Most active pairings; 0 = limited only by open files. Beyond it a
    /// ConnectRequest gets RelayFull.
    #[arg(long, env = "RELAYSRV_MAX_PAIRINGS", default_value_t = 0)]
    pub max_pairings: usize,

    /// New connections per second accepted from one source: an IPv4
    /// address or an IPv6 /64 (sustained); excess connections are closed
    /// at once. 0 = no limit.
    #[arg(long, env = "RELAYSRV_PER_IP_CONN_RATE", default_value_t = 100)]
    pub per_ip_conn_rate: u32,

    /// Burst of new connections allowed from one source.
    #[arg(long, env = "RELAYSRV_PER_IP_CONN_BURST", default_value_t = 1000)]
    pub per_ip_conn_burst: u32,

    /// Sockets (protocol and data) one source (IPv4 address or IPv6 /64)
    /// may hold open at once; more are closed at once. A joined device
    /// holds one, plus one per pairing. 0 = no limit.
    #[arg(long, env = "RELAYSRV_PER_IP_MAX_CONNS", default_value_t = 2000)]
    pub per_ip_max_conns: usize,

    /// Most accepted sockets at once; 0 = 80 % of the open-file limit
    /// (never more than that). At the limit, the oldest connection that
    /// has not joined (or shown a session key) is closed for a newcomer;
    /// joined devices and pairings are never dropped for one.
    #[arg(long, env = "RELAYSRV_MAX_SOCKETS", default_value_t = 0)]
    pub max_sockets: usize,

    /// How pairings move bytes: `splice` (zero-copy, Linux), `copy`
    /// (portable user-space copy), `auto` (splice where available).
    #[arg(long, env = "RELAYSRV_FORWARDER", value_enum, default_value_t = Forwarder::Auto)]
    pub forwarder: Forwarder,

    #[command(flatten)]
    pub log: daemon::LogArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Forwarder {
    Auto,
    Splice,
    Copy,
}

impl Forwarder {
    /// What the flag means on this platform.
    pub fn kind(self) -> anyhow::Result<ForwarderKind> {
        match self {
            Forwarder::Copy => Ok(ForwarderKind::Copy),
            Forwarder::Splice if !cfg!(target_os = "linux") => {
                anyhow::bail!("--forwarder splice needs Linux; use auto or copy")
            }
            Forwarder::Splice => Ok(ForwarderKind::Splice),
            Forwarder::Auto => Ok(ForwarderKind::default_for_platform()),
        }
    }
}

/// Accepts humantime (`90s`, `1m 30s`) and Go (`1m30s`, `1m0s`) durations.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(d)
}

impl Cli {
    /// The relay these flags describe. Reads the token file and the keys
    /// (generating them on first start) and resolves --ext-address.
    pub fn config(&self) -> anyhow::Result<ServerConfig> {
        let token = self.token()?;
        let provided_by = ProvidedBy::new(self.provided_by.clone())?;
        if self.connect_requires_token && token.is_none() {
            bail!(
                "--connect-requires-token needs a join token (--token, --token-file or RELAYSRV_TOKEN)"
            );
        }
        let access = self.access()?;
        let forwarder = self.forwarder.kind()?;
        let identity = self.identity()?;
        let status_listen = match self.status_srv.as_str() {
            "" => None,
            s => Some(listen_addr(s)?),
        };
        Ok(ServerConfig {
            identity,
            listen: listen_addr(&self.listen)?,
            status_listen,
            external: self.external_address()?,
            ping_interval: self.ping_interval,
            network_timeout: self.network_timeout,
            message_timeout: self.message_timeout,
            handshake_timeout: self.handshake_timeout,
            per_session_rate: self.per_session_rate,
            global_rate: self.global_rate,
            token: token.map(|(fixed, file)| JoinTokens {
                fixed,
                file,
                connect_requires_token: self.connect_requires_token,
            }),
            access,
            invitation_rate: self.invitation_rate,
            invitation_burst: self.invitation_burst,
            network_buffer: self.network_buffer as usize,
            forwarder,
            pools: self
                .pools
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            provided_by,
            capacity: CapacityConfig {
                max_clients: self.max_clients,
                max_pending: self.max_pending,
                max_pairings: self.max_pairings,
                max_sockets: self.max_sockets,
                per_source_sockets: self.per_ip_max_conns,
                per_source_pending: self.per_ip_max_pending,
            },
            per_ip_conn_rate: self.per_ip_conn_rate,
            per_ip_conn_burst: self.per_ip_conn_burst,
        })
    }

    /// The relay's certificate from --keys, generated when both files are
    /// missing.
    fn identity(&self) -> anyhow::Result<Identity> {
        std::fs::create_dir_all(&self.keys)
            .with_context(|| format!("cannot create --keys directory {}", self.keys.display()))?;
        let (cert, key) = (self.keys.join("cert.pem"), self.keys.join("key.pem"));
        let loaded = Identity::load_or_generate(&cert, &key, "strelaysrv", KeyKind::Ed25519)
            .context("relay certificate")?;
        if let LoadedOrGenerated::Generated(_) = &loaded {
            tracing::info!(cert = %cert.display(), "generated a new relay certificate");
        }
        Ok(loaded.into_identity())
    }

    /// --ext-address resolved once, at start (`:PORT` keeps the host empty).
    fn external_address(&self) -> anyhow::Result<Option<ExternalAddress>> {
        let given = &self.ext_address;
        if given.is_empty() {
            return Ok(None);
        }
        let full = if given.starts_with(':') {
            format!("0.0.0.0{given}")
        } else {
            given.clone()
        };
        use std::net::ToSocketAddrs;
        let addr = full
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .with_context(|| format!("bad --ext-address {given:?} (expected HOST:PORT)"))?;
        let host = given.rsplit_once(':').map_or("", |(h, _)| h).to_owned();
        Ok(Some(ExternalAddress { host, addr }))
    }

    /// The join tokens from --token (or the environment) and
    /// --token-file (loaded now: a bad file stops the start); `None` when
    /// neither is given.
    pub fn token(&self) -> anyhow::Result<Option<(TokenSet, Option<WatchedTokens>)>> {
        if self.token.is_empty() && self.token_file.is_none() {
            return Ok(None);
        }
        let fixed = TokenSet::from_tokens(self.token.clone())
            .context("the join token is empty; remove --token/--token-file to run without one")?;
        let file = match &self.token_file {
            None => None,
            Some(path) => Some(
                load_tokens(path)
                    .with_context(|| format!("cannot use --token-file {}", path.display()))?,
            ),
        };
        Ok(Some((fixed, file)))
    }

    /// The allow-lists, loaded now (a bad file stops the start). The
    /// specific lists override --allow-devices for their action; one file
    /// named twice is loaded (and watched) once.
    fn access(&self) -> anyhow::Result<DeviceAccess> {
        let load = |flag: &str, path: &Option<PathBuf>| -> anyhow::Result<Option<WatchedList>> {
            path.as_ref()
                .map(|p| load_list(p).with_context(|| format!("cannot use {flag} {}", p.display())))
                .transpose()
        };
        let general = load("--allow-devices", &self.allow_devices)?;
        let join = match &self.allow_join {
            Some(_) => load("--allow-join", &self.allow_join)?,
            None => general.clone(),
        };
        let connect = match &self.allow_connect {
            Some(_) => load("--allow-connect", &self.allow_connect)?,
            None => general,
        };
        Ok(DeviceAccess {
            join,
            connect,
            reload_interval: self.allow_reload_interval,
        })
    }
}

/// Go-style `host:port` where an empty host means all interfaces.
pub fn listen_addr(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    let full = if s.starts_with(':') {
        format!("[::]{s}")
    } else {
        s.to_owned()
    };
    use std::net::ToSocketAddrs;
    full.to_socket_addrs()
        .with_context(|| format!("bad listen address {s:?} (expected HOST:PORT or :PORT)"))?
        .next()
        .with_context(|| format!("listen address {s:?} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ServerConfig::new` documents itself as the command line's defaults:
    /// keep the two from drifting apart.
    #[test]
    fn server_config_defaults_are_the_flag_defaults() {
        if std::env::vars().any(|(k, _)| k.starts_with("RELAYSRV_")) {
            eprintln!("skipped: RELAYSRV_* variables set");
            return;
        }
        let keys = std::env::temp_dir().join(format!("relaysrv-cli-test-{}", std::process::id()));
        let keys_arg = keys.to_str().unwrap();
        let cli =
            Cli::try_parse_from(["relaysrv", "--keys", keys_arg, "--status-srv", ""]).unwrap();
        let from_flags = cli.config().unwrap();
        let _ = std::fs::remove_dir_all(&keys);
        let d = ServerConfig::new(from_flags.identity.clone(), from_flags.listen);
        let f = &from_flags;
        assert_eq!(f.listen, listen_addr(":22067").unwrap());
        assert_eq!(f.status_listen, d.status_listen);
        assert_eq!(f.external, d.external);
        assert_eq!(
            (
                f.ping_interval,
                f.network_timeout,
                f.message_timeout,
                f.handshake_timeout
            ),
            (
                d.ping_interval,
                d.network_timeout,
                d.message_timeout,
                d.handshake_timeout
            )
        );
        assert_eq!(
            (
                f.per_session_rate,
                f.global_rate,
                f.invitation_rate,
                f.invitation_burst
            ),
            (
                d.per_session_rate,
                d.global_rate,
                d.invitation_rate,
                d.invitation_burst
            )
        );
        assert!(f.token.is_none() && d.token.is_none());
        assert!(f.access.join.is_none() && f.access.connect.is_none());
        assert_eq!(f.access.reload_interval, d.access.reload_interval);
        assert_eq!((&f.pools, &f.provided_by), (&d.pools, &d.provided_by));
        assert_eq!(
            (f.network_buffer, f.forwarder),
            (d.network_buffer, d.forwarder)
        );
        assert_eq!(f.capacity, d.capacity);
        assert_eq!(
            (f.per_ip_conn_rate, f.per_ip_conn_burst),
            (d.per_ip_conn_rate, d.per_ip_conn_burst)
        );
    }
}
