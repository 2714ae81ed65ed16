//! The relay as a value: [`ServerConfig`] → [`Server::spawn`] → a
//! [`Server`] handle whose [`Server::shutdown`] cancels every task of the
//! relay and awaits them. `main.rs` and the tests start it the same way.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use daemon::shutdown::StopTimedOut;
use daemon::Shutdown;
use proto::relay::{format_go_duration, RelayUri};
use proto::tls::{alpn, ClientCert, Versions};
use proto::DeviceId;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::access::{Access, TokenSet};
use crate::config::ServerConfig;
use crate::limits::{Capacity, PerIpLimiter};
use crate::state::{Relay, Settings};

/// How long [`Server::shutdown`] waits for the tasks once cancelled. They
/// all watch the cancellation at every await, so this is only reached by
/// a bug; it stays well below the 5 s orchestrators usually allow.
pub const STOP_DEADLINE: Duration = Duration::from_secs(3);

/// Why a relay did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("TLS configuration")]
    Tls(#[source] proto::tls::TlsError),
    #[error("cannot listen on {addr} (--listen); is the port in use?")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr} (--status-srv); give another address or \"\" to disable")]
    StatusListen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listener address")]
    LocalAddr(#[source] io::Error),
}

/// A running relay. Dropping it asks the relay to stop without waiting;
/// [`Server::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct Server {
    shutdown: Shutdown,
    local_addr: SocketAddr,
    status_addr: Option<SocketAddr>,
    uri: RelayUri,
}

impl Server {
    /// Binds the listeners and starts the relay's tasks.
    pub async fn spawn(config: ServerConfig) -> Result<Server, SpawnError> {
        Self::spawn_in(config, Shutdown::new()).await
    }

    /// [`Server::spawn`] with every task owned by `shutdown` (a child of a
    /// program's own, say): cancelling it stops the relay too.
    pub async fn spawn_in(config: ServerConfig, shutdown: Shutdown) -> Result<Server, SpawnError> {
        let tls = proto::tls::server_config(
            &config.identity,
            &[alpn::RELAY],
            ClientCert::Required,
            Versions::Tls12AndUp,
        )
        .map_err(SpawnError::Tls)?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listeners = Listeners::bind(&config).await?;
        let relay = Relay::new(
            settings(&config, listeners.local),
            access(&config),
            capacity(&config),
            shutdown.clone(),
        );
        let uri = relay_uri(&config, &relay.settings, &listeners);
        log_start(&config, &relay, &listeners, &uri);
        let (local_addr, status_addr) = (listeners.local, listeners.status_addr());
        spawn_tasks(&relay, &config, listeners, acceptor, &uri);
        Ok(Server {
            shutdown,
            local_addr,
            status_addr,
            uri,
        })
    }

    /// The bound protocol and data address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound status listener, if any.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status_addr
    }

    /// The URI devices use (`relay://HOST:PORT/?id=…&pingInterval=…`).
    pub fn uri(&self) -> &RelayUri {
        &self.uri
    }

    pub fn device_id(&self) -> Option<DeviceId> {
        self.uri.id
    }

    /// Asks every task to stop and waits for them (at most
    /// [`STOP_DEADLINE`]): every socket of the relay is closed on return.
    pub async fn shutdown(self) -> Result<(), StopTimedOut> {
        self.shutdown.stop(STOP_DEADLINE).await
    }

    /// Waits until the relay's tasks have returned, once its [`Shutdown`]
    /// (see [`Server::spawn_in`]) was cancelled elsewhere.
    pub async fn join(self) {
        self.shutdown.wait().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A relay nobody holds cannot be stopped any more: stop it now.
        self.shutdown.cancel();
    }
}

/// The sockets a relay listens on.
struct Listeners {
    main: TcpListener,
    local: SocketAddr,
    status: Option<TcpListener>,
}

impl Listeners {
    async fn bind(config: &ServerConfig) -> Result<Listeners, SpawnError> {
        let addr = config.listen;
        let main = TcpListener::bind(addr)
            .await
            .map_err(|source| SpawnError::Listen { addr, source })?;
        let local = main.local_addr().map_err(SpawnError::LocalAddr)?;
        let status = match config.status_listen {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| SpawnError::StatusListen { addr, source })?,
            ),
        };
        Ok(Listeners {
            main,
            local,
            status,
        })
    }

    fn status_addr(&self) -> Option<SocketAddr> {
        self.status.as_ref().and_then(|l| l.local_addr().ok())
    }
}

fn settings(config: &ServerConfig, bound: SocketAddr) -> Settings {
    let (invitation_address, invitation_port) =
        invitation_target(config.external.as_ref().map(|e| e.addr), bound);
    Settings {
        ping_interval: config.ping_interval,
        network_timeout: config.network_timeout,
        message_timeout: config.message_timeout,
        handshake_timeout: config.handshake_timeout,
        per_session_rate: config.per_session_rate,
        global_rate: config.global_rate,
        connect_requires_token: config
            .token
            .as_ref()
            .is_some_and(|t| t.connect_requires_token),
        invitation_rate: config.invitation_rate,
        invitation_burst: config.invitation_burst,
        network_buffer: config.network_buffer,
        forwarder: config.forwarder,
        invitation_address,
        invitation_port,
        pools: config.pools.clone(),
        provided_by: config.provided_by.as_str().to_owned(),
    }
}

fn access(config: &ServerConfig) -> Access {
    let (fixed, file) = match &config.token {
        Some(t) => (t.fixed.clone(), t.file.clone()),
        None => (TokenSet::default(), None),
    };
    let a = &config.access;
    Access::new(
        a.join.clone(),
        a.connect.clone(),
        fixed,
        file,
        a.reload_interval,
    )
}

fn capacity(config: &ServerConfig) -> Capacity {
    let capacity = Capacity::new(config.capacity.clone());
    tracing::info!(
        open_sockets_limit = capacity.max_sockets,
        per_source_sockets = capacity.limits.per_source_sockets,
        per_source_pending = capacity.limits.per_source_pending,
        invitation_rate = config.invitation_rate,
        handshake_timeout = ?config.handshake_timeout,
        forwarder = ?config.forwarder,
        "limits"
    );
    capacity
}

/// Where invitations send data connections: the advertised IP (empty when
/// unspecified, so clients reuse the relay address they dialed) and port.
fn invitation_target(ext: Option<SocketAddr>, bound: SocketAddr) -> (Vec<u8>, u16) {
    let addr = ext.unwrap_or(bound);
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => Vec::new(),
        // strelaysrv sends the 16-byte IPv4-mapped form.
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    (ip, addr.port())
}

/// The URI devices use. The host is what was advertised or bound; an
/// unspecified one must be replaced by a reachable name (empty here).
fn relay_uri(config: &ServerConfig, s: &Settings, listeners: &Listeners) -> RelayUri {
    let bound = listeners.local;
    let ext_host = config.external.as_ref().map_or("", |e| e.host.as_str());
    let host = if ext_host.is_empty() && !bound.ip().is_unspecified() {
        bound.ip().to_string()
    } else {
        ext_host.to_owned()
    };
    let port = config
        .external
        .as_ref()
        .map_or(bound.port(), |e| e.addr.port());
    let mut uri = RelayUri::new(&host, port, Some(config.identity.device_id()))
        .with_param("pingInterval", format_go_duration(s.ping_interval))
        .with_param("networkTimeout", format_go_duration(s.network_timeout));
    if s.per_session_rate > 0 {
        uri = uri.with_param("sessionLimitBps", s.per_session_rate.to_string());
    }
    if s.global_rate > 0 {
        uri = uri.with_param("globalLimitBps", s.global_rate.to_string());
    }
    if let Some(a) = listeners.status_addr() {
        uri = uri.with_param("statusAddr", a.to_string());
    }
    if !s.provided_by.is_empty() {
        uri = uri.with_param("providedBy", s.provided_by.clone());
    }
    uri
}

/// What an operator needs to know once the relay listens.
fn log_start(config: &ServerConfig, relay: &Relay, listeners: &Listeners, uri: &RelayUri) {
    let device_id = config.identity.device_id();
    tracing::info!(%device_id, listen = %listeners.local, "relay started");
    tracing::info!("URI: {uri}");
    if uri.host.is_empty() {
        tracing::warn!("listening on all interfaces: replace the empty host in the URI with this machine's address, or set --ext-address");
    }
    relay.access.log_start();
    if relay.access.token_required() {
        tracing::info!(
            "join token required: devices add &token=… to the URI above (Syncthing ≥ 1.22.1)"
        );
        if relay.settings.connect_requires_token {
            tracing::info!("connect requests only from devices joined with the token");
        } else {
            tracing::info!(
                "any device may dial a joined device (--connect-requires-token to restrict)"
            );
        }
    }
    if let Some(a) = listeners.status_addr() {
        tracing::info!("status: http://{a}/status, metrics: http://{a}/metrics");
    }
}

/// Starts the relay's long-lived tasks, each owned by its Shutdown: pool
/// registrations, the listener (which spawns one task per connection),
/// the pairing sweeper, the status listener and the limiter sweeps.
fn spawn_tasks(
    relay: &Arc<Relay>,
    config: &ServerConfig,
    listeners: Listeners,
    acceptor: TlsAcceptor,
    uri: &RelayUri,
) {
    let tasks = &relay.shutdown;
    relay.access.spawn_reloading(tasks);
    register_with_pools(relay, config, uri);
    let per_ip = Arc::new(PerIpLimiter::new(
        config.per_ip_conn_rate,
        config.per_ip_conn_burst,
    ));
    tasks.spawn(crate::listener::accept_loop(
        relay.clone(),
        listeners.main,
        acceptor,
        per_ip.clone(),
    ));
    tasks.spawn(crate::pairing::sweep(relay.clone()));
    let history = Arc::new(crate::status::RateHistory::default());
    tasks.spawn(crate::status::sample_rates(relay.clone(), history.clone()));
    if let Some(l) = listeners.status {
        tasks.spawn(crate::status::serve(relay.clone(), l, history));
    }
    tasks.spawn(forget_idle_sources(relay.clone(), per_ip));
}

fn register_with_pools(relay: &Arc<Relay>, config: &ServerConfig, uri: &RelayUri) {
    let pools = &config.pools;
    if !pools.is_empty() && (config.token.is_some() || config.access.join.is_some()) {
        // As the newest strelaysrv: a relay that requires a token is not
        // advertised to anyone.
        tracing::warn!(
            ?pools,
            "a join token or join allow-list is set: not registering with any pool"
        );
        return;
    }
    for pool in pools {
        tracing::info!(%pool, "registering with relay pool");
        relay.shutdown.spawn(crate::pool::register_loop(
            relay.clone(),
            pool.clone(),
            uri.to_string(),
            config.identity.clone(),
        ));
    }
}

/// Every minute, drops the rate-limiter state of sources that went quiet,
/// so the maps do not grow with every address ever seen.
async fn forget_idle_sources(relay: Arc<Relay>, per_ip: Arc<PerIpLimiter>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    while relay.unless_stopping(tick.tick()).await.is_some() {
        per_ip.forget_idle();
        if let Some(l) = &relay.invitations {
            l.forget_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invitations_carry_the_advertised_ip_in_mapped_form_or_nothing() {
        let bound: SocketAddr = "0.0.0.0:22067".parse().unwrap();
        assert_eq!(invitation_target(None, bound), (Vec::new(), 22067));
        let ext: SocketAddr = "10.1.2.3:443".parse().unwrap();
        let (ip, port) = invitation_target(Some(ext), bound);
        assert_eq!(port, 443);
        assert_eq!(ip.len(), 16);
        assert_eq!(&ip[12..], &[10, 1, 2, 3]);
    }
}
