//! `discosrv`: a global discovery server (protocol v3) for private
//! Syncthing networks, as a library.
//!
//! [`ServerConfig`] → [`Server::spawn`] → [`Server::shutdown`]: the binary
//! builds the configuration from flags ([`cli::Cli::into_config`]) and calls
//! [`run`]; tests and tools spawn a server in-process, on port 0.
//!
//! Every task of a server (accept loops, connections, hyper's HTTP/2
//! streams, timers) belongs to one [`daemon::Shutdown`]; stopping awaits
//! them all, then writes the embedded store's final snapshot.

mod allow;
pub mod cli;
pub mod config;
mod handlers;
mod metrics;
mod ratelimit;
mod retry;
mod server;
mod status;
mod store;
mod timers;

/// Not an API: what the fuzz targets in `fuzz/` must reach of the embedded
/// store, whose modules are private (the snapshot parser reads a file that
/// may be damaged; records are read back from it).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::store::record::{encode, merge, Addr, View, MAX_ADDRESSES};
    use crate::store::{memory::MemoryStore, Now};

    /// What loading a snapshot's bytes into an empty store left.
    #[derive(Debug)]
    pub struct SnapshotLoad {
        pub complete: bool,
        pub records: u64,
        pub dropped_expired: u64,
        /// The store's own count of records and bytes.
        pub usage: (u64, u64),
        /// Every record held, as stored.
        pub held: Vec<Vec<u8>>,
    }

    /// Loads `bytes` as the content of a snapshot file at `now_ns`.
    pub fn load_snapshot(bytes: &[u8], now_ns: i64) -> SnapshotLoad {
        let store = MemoryStore::new(None);
        let (complete, loaded) = store.load_snapshot_bytes(bytes, Now(now_ns));
        let mut held = Vec::new();
        store.for_each_record(|r| held.push(r.to_vec()));
        SnapshotLoad {
            complete,
            records: loaded.records,
            dropped_expired: loaded.dropped_expired,
            usage: store.usage(),
            held,
        }
    }
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use daemon::Shutdown;
use proto::tls::{alpn, ClientCert, Versions};
use proto::DeviceId;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::allow::{Allow, RedisAllow};
pub use crate::config::{
    AllowConfig, AllowSource, Budget, ConnectionLimits, PathPrefix, RateLimits, ServerConfig,
    StoreConfig, Transport,
};
use crate::handlers::App;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;
use crate::retry::NotFoundTracker;
use crate::store::memory::{MemoryStore, SnapshotError};
use crate::store::redis::RedisStore;
use crate::store::{Now, Store, StoreError};

/// How long a stop waits for the server's tasks: connections get
/// [`server::DRAIN_TIMEOUT`] to finish their requests, and a moment more
/// to close.
const STOP_DEADLINE: Duration = Duration::from_secs(server::DRAIN_TIMEOUT.as_secs() + 1);

/// Runs a discovery server until SIGTERM or SIGINT, then stops it: the
/// binary's whole life.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    if let Some(id) = config.transport.device_id() {
        // On stdout before the port opens: scripts read the ID from there.
        println!("Server device ID is {id}");
        tracing::info!(device_id = %id, "server identity");
    }
    // Before the port opens: a SIGTERM from then on stops the server
    // cleanly (a test may send it as soon as the port answers).
    let mut signals = daemon::shutdown::Signals::install();
    let server = Server::spawn(config).await?;
    signals.recv().await;
    server.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Why a server could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("building the TLS configuration")]
    Tls(#[source] proto::tls::TlsError),
    #[error("cannot listen on {addr} ({flag})")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the snapshot in --db-dir")]
    LoadSnapshot(#[source] SnapshotError),
    #[error("writing the final snapshot")]
    FinalSnapshot(#[source] SnapshotError),
    #[error("connecting to Redis (--redis-url)")]
    Redis(#[source] StoreError),
    #[error("loading the allow-list (--allow-devices)")]
    AllowList(#[source] daemon::watched::WatchError),
    #[error("--allow-devices-redis needs the Redis store (--redis-url)")]
    AllowRedisWithoutRedis,
    #[error("a server task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A running discovery server. Dropping it asks it to stop without
/// waiting; [`Server::shutdown`] stops it and waits.
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    device_id: Option<DeviceId>,
    tasks: Shutdown,
    /// Waits for a stop, stops every task, writes the final snapshot.
    /// Taken by [`Server::join`].
    closer: Option<JoinHandle<Result<(), ServerError>>>,
}

/// What is left to do once every task has ended.
enum Closing {
    Nothing,
    FinalSnapshot(Arc<App<MemoryStore>>),
}

impl Server {
    /// Binds the listeners, opens the store and starts serving.
    pub async fn spawn(config: ServerConfig) -> Result<Server, ServerError> {
        let tls = tls_acceptor(&config.transport)?;
        let listener = bind("--listen", config.listen)?;
        let local_addr = listener.local_addr().unwrap_or(config.listen);
        let mode = if tls.is_some() { "https" } else { "http" };
        tracing::info!(listen = %local_addr, mode, "discovery API listening");
        let tasks = Shutdown::new();
        let api = Api {
            listener,
            tls,
            limits: api_limits(&config),
        };
        // Bound together with the API, before the store opens (which can
        // take a while): a port taken fails at once, and once the API port
        // accepts, so does the metrics port.
        let metrics = match config.metrics_listen {
            Some(addr) => Some(bind("--metrics-listen", addr)?),
            None => None,
        };
        let (metrics_addr, closing) = match &config.store {
            StoreConfig::Memory {
                dir,
                flush_interval,
                budget,
            } => {
                let allow = match allow_from_file(&config, &tasks)? {
                    Some(allow) => allow,
                    None => return Err(ServerError::AllowRedisWithoutRedis),
                };
                let store = open_memory(dir.clone(), *budget)?;
                let app = Arc::new(new_app(&config, store, allow));
                let metrics_addr = start(&tasks, &app, api, metrics);
                let maintenance =
                    timers::memory_maintenance(app.clone(), *flush_interval, tasks.clone());
                tasks.spawn(maintenance);
                (metrics_addr, Closing::FinalSnapshot(app))
            }
            StoreConfig::Redis {
                urls,
                cluster,
                prefix,
            } => {
                let store = Arc::new(
                    RedisStore::connect(urls, *cluster, prefix)
                        .await
                        .map_err(ServerError::Redis)?,
                );
                let allow = match (allow_from_file(&config, &tasks)?, &config.allow) {
                    (Some(allow), _) => allow,
                    (
                        None,
                        Some(AllowConfig {
                            source: AllowSource::Redis { key },
                            reload_interval,
                        }),
                    ) => {
                        let list = RedisAllow::load(key.clone(), &store).await;
                        list.spawn_polling(store.clone(), *reload_interval, &tasks);
                        Allow::Redis(list)
                    }
                    (None, _) => Allow::Open,
                };
                let app = Arc::new(new_app(&config, store, allow));
                let metrics_addr = start(&tasks, &app, api, metrics);
                (metrics_addr, Closing::Nothing)
            }
        };
        let closer = tokio::spawn(close_when_stopped(tasks.clone(), closing));
        Ok(Server {
            local_addr,
            metrics_addr,
            device_id: config.transport.device_id(),
            tasks,
            closer: Some(closer),
        })
    }

    /// The discovery API's address (the port chosen, given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The metrics and health listener's address, if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The device ID clients pin (TLS mode).
    pub fn device_id(&self) -> Option<DeviceId> {
        self.device_id
    }

    /// The tasks of this server: cancel it to stop the server from
    /// elsewhere (then [`Server::join`]); `running()` counts them.
    pub fn tasks(&self) -> &Shutdown {
        &self.tasks
    }

    /// Stops serving: open connections finish their requests in progress
    /// (bounded), every task is awaited, the final snapshot is written.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.tasks.cancel();
        self.join().await
    }

    /// Waits until the server has stopped (after a cancel of
    /// [`Server::tasks`]) and everything is closed.
    pub async fn join(mut self) -> Result<(), ServerError> {
        match self.closer.take() {
            Some(closer) => closer.await.map_err(ServerError::Task)?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Not joined: a forgotten handle must not leave a server running.
        if self.closer.is_some() {
            self.tasks.cancel();
        }
    }
}

/// The discovery API listener and how it serves.
struct Api {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: server::Limits,
}

/// Starts the tasks every store has: the API, the metrics listener (if
/// any) and the timers. Returns the metrics listener's address.
fn start<S: Store>(
    tasks: &Shutdown,
    app: &Arc<App<S>>,
    api: Api,
    metrics: Option<TcpListener>,
) -> Option<SocketAddr> {
    let metrics_addr = metrics.map(|l| {
        let bound = l.local_addr().ok();
        if let Some(bound) = bound {
            tracing::info!(listen = %bound, "metrics listening");
        }
        tasks.spawn(status::serve(l, app.clone(), tasks.clone()));
        bound
    });
    tasks.spawn(timers::periodic(app.clone(), tasks.clone()));
    tasks.spawn(server::serve(
        api.listener,
        api.tls,
        app.clone(),
        api.limits,
        tasks.clone(),
    ));
    metrics_addr.flatten()
}

/// Once `tasks` is cancelled: waits for every task, then does what is
/// left (the final snapshot), so nothing writes the store after it.
async fn close_when_stopped(tasks: Shutdown, closing: Closing) -> Result<(), ServerError> {
    tasks.cancelled().await;
    if let Err(e) = tasks.stop(STOP_DEADLINE).await {
        // Only tasks stuck in a store call can be left; they end with the
        // runtime.
        tracing::warn!(error = %e, "server tasks did not all end in time");
    }
    match closing {
        Closing::Nothing => Ok(()),
        Closing::FinalSnapshot(app) => {
            let written = tokio::task::spawn_blocking(move || app.store.write_snapshot(true))
                .await
                .map_err(ServerError::Task)?
                .map_err(ServerError::FinalSnapshot)?;
            tracing::info!(records = written.unwrap_or(0), "final snapshot written");
            Ok(())
        }
    }
}

fn tls_acceptor(transport: &Transport) -> Result<Option<tokio_rustls::TlsAcceptor>, ServerError> {
    let Transport::Tls(identity) = transport else {
        return Ok(None);
    };
    let config = proto::tls::server_config(
        identity,
        &[alpn::H2, alpn::HTTP_1_1],
        ClientCert::Optional,
        Versions::Tls12AndUp,
    )
    .map_err(ServerError::Tls)?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    server::bind(addr).map_err(|source| ServerError::Bind { flag, addr, source })
}

/// The embedded store, with its snapshot loaded.
fn open_memory(dir: Option<PathBuf>, budget: Budget) -> Result<MemoryStore, ServerError> {
    let shown = dir.as_ref().map(|d| d.display().to_string());
    let store = MemoryStore::new(dir).with_budget(budget);
    let t = std::time::Instant::now();
    let loaded = store
        .load_snapshot(Now::system())
        .map_err(ServerError::LoadSnapshot)?;
    if let Some(aside) = &loaded.damaged_moved_to {
        tracing::error!(moved_to = %aside.display(), kept = loaded.records, "snapshot was damaged; kept what was readable and moved the file aside");
    }
    tracing::info!(
        records = loaded.records,
        expired = loaded.dropped_expired,
        ms = t.elapsed().as_millis() as u64,
        dir = shown.as_deref().unwrap_or("(memory only)"),
        "embedded store loaded"
    );
    Ok(store)
}

fn api_limits(config: &ServerConfig) -> server::Limits {
    let c = &config.connections;
    server::Limits {
        max_connections: c.max_connections,
        per_ip: c.per_ip,
        idle_timeout: c.idle_timeout,
        exempt: match &config.transport {
            Transport::Http {
                trusted_proxies, ..
            } => trusted_proxies.clone(),
            Transport::Tls(_) => Vec::new(),
        },
    }
}

/// The allow-list of every store but a Redis set: open, or a watched
/// file. `None` when the list is a Redis set (only a Redis store has one).
fn allow_from_file(config: &ServerConfig, tasks: &Shutdown) -> Result<Option<Allow>, ServerError> {
    match &config.allow {
        None => Ok(Some(Allow::Open)),
        Some(AllowConfig {
            source: AllowSource::File(path),
            reload_interval,
        }) => watch_file(path, *reload_interval, tasks).map(Some),
        Some(AllowConfig {
            source: AllowSource::Redis { .. },
            ..
        }) => Ok(None),
    }
}

/// `--allow-devices FILE`, loaded now (a bad file refuses the start) and
/// checked every `every` under `tasks`.
fn watch_file(path: &Path, every: Duration, tasks: &Shutdown) -> Result<Allow, ServerError> {
    let allow = Allow::load_file(path).map_err(ServerError::AllowList)?;
    if let Allow::File(file) = &allow {
        file.spawn_polling("allow-list", every, tasks);
    }
    Ok(allow)
}

fn new_app<S: Store>(config: &ServerConfig, store: S, allow: Allow) -> App<S> {
    let r = &config.rates;
    let (http_mode, trusted_proxies, cert_header) = match &config.transport {
        Transport::Http {
            trusted_proxies,
            cert_header,
        } => (true, trusted_proxies.clone(), *cert_header),
        Transport::Tls(_) => (false, Vec::new(), Default::default()),
    };
    let mut metrics = Metrics::new();
    if !allow.is_open() {
        metrics.register_allowlist();
    }
    App {
        store,
        metrics,
        limiter: RateLimit::new(r.per_client, r.per_client_burst, r.max_clients),
        new_device_limiter: RateLimit::per_minute(
            r.new_devices_per_minute,
            r.new_device_burst,
            r.max_clients,
        ),
        seen_tracker: NotFoundTracker::new(r.seen_not_found),
        unseen_tracker: NotFoundTracker::new(r.unseen_not_found),
        http_mode,
        trusted_proxies,
        cert_header,
        allow,
        refusal_log: allow::refusal_log(),
        path_prefix: config.path_prefix.clone(),
    }
}
