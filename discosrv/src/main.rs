//! `discosrv`: a global discovery server (protocol v3) for private
//! Syncthing networks. See `--help`.

mod cli;
mod handlers;
mod metrics;
mod ratelimit;
mod retry;
mod server;
mod status;
mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use proto::tls::{alpn, ClientCert, Versions};
use proto::Identity;
use tokio::sync::watch;

use crate::cli::Cli;
use crate::handlers::App;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;
use crate::retry::NotFoundTracker;
use crate::store::memory::{Budget, MemoryStore};
use crate::store::redis::RedisStore;
use crate::store::{Now, Store};

/// Not-found trackers adjust once per this interval.
const TRACKER_TICK: Duration = Duration::from_secs(1);
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
const LIMITER_SWEEP: Duration = Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    daemon::run_main(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tls = if cli.http {
        if cli.trusted_proxies.is_empty() {
            tracing::warn!("--http without --trusted-proxy: forwarded client certificates and addresses are ignored, so every announcement will be refused");
        }
        None
    } else {
        let identity = Identity::load_or_generate(&cli.cert, &cli.key, "stdiscosrv", cli.key_type)
            .with_context(|| {
                format!(
                    "loading the server certificate {} / key {} (both are generated when both are missing)",
                    cli.cert.display(),
                    cli.key.display()
                )
            })?
            .into_identity();
        println!("Server device ID is {}", identity.device_id());
        tracing::info!(device_id = %identity.device_id(), "server identity");
        let config = proto::tls::server_config(
            &identity,
            &[alpn::H2, alpn::HTTP_1_1],
            ClientCert::Optional,
            Versions::Tls12AndUp,
        )
        .context("building the TLS configuration")?;
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    };

    let listener = server::bind(cli.listen)
        .with_context(|| format!("cannot listen on {} (--listen)", cli.listen))?;
    tracing::info!(listen = %cli.listen, mode = if cli.http { "http" } else { "https" }, "discovery API listening");

    if cli.redis_url.is_empty() {
        let store = MemoryStore::new(Some(cli.db_dir.clone())).with_budget(Budget {
            max_records: cli.max_records,
            max_bytes: cli.max_store_bytes,
        });
        let t = std::time::Instant::now();
        let loaded = store
            .load_snapshot(Now::system())
            .context("loading the snapshot in --db-dir")?;
        if let Some(aside) = &loaded.damaged_moved_to {
            tracing::error!(moved_to = %aside.display(), kept = loaded.records, "snapshot was damaged; kept what was readable and moved the file aside");
        }
        tracing::info!(records = loaded.records, expired = loaded.dropped_expired, ms = t.elapsed().as_millis() as u64, dir = %cli.db_dir.display(), "embedded store loaded");
        let app = Arc::new(new_app(&cli, store));
        let (tx, rx) = watch::channel(false);
        let maint = tokio::spawn(memory_maintenance(
            app.clone(),
            cli.db_flush_interval,
            rx.clone(),
        ));
        serve(&cli, listener, tls, app.clone(), tx, rx).await?;
        maint.abort();
        let _ = maint.await;
        let store_app = app.clone();
        let written = tokio::task::spawn_blocking(move || store_app.store.write_snapshot(true))
            .await
            .context("snapshot task")?
            .context("writing the final snapshot")?;
        tracing::info!(records = written.unwrap_or(0), "final snapshot written");
    } else {
        let store = RedisStore::connect(&cli.redis_url, cli.redis_cluster, &cli.redis_prefix)
            .await
            .context("connecting to Redis (--redis-url)")?;
        let app = Arc::new(new_app(&cli, store));
        let (tx, rx) = watch::channel(false);
        serve(&cli, listener, tls, app, tx, rx).await?;
    }
    tracing::info!("stopped");
    Ok(())
}

fn new_app<S: Store>(cli: &Cli, store: S) -> App<S> {
    App {
        store,
        metrics: Metrics::new(),
        limiter: RateLimit::new(
            cli.rate_limit,
            cli.rate_limit_burst,
            cli.rate_limit_max_clients,
        ),
        new_device_limiter: RateLimit::per_minute(
            cli.new_device_rate,
            cli.new_device_burst,
            cli.rate_limit_max_clients,
        ),
        seen_tracker: NotFoundTracker::new(cli.desired_seen_not_found_rate),
        unseen_tracker: NotFoundTracker::new(cli.desired_unseen_not_found_rate),
        http_mode: cli.http,
        trusted_proxies: cli.trusted_proxies.clone(),
        cert_header: cli.client_cert_header,
    }
}

/// Runs the API (and metrics) until SIGTERM/SIGINT.
async fn serve<S: Store>(
    cli: &Cli,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Arc<App<S>>,
    tx: watch::Sender<bool>,
    rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if let Some(addr) = cli.metrics_listen {
        let l = server::bind(addr)
            .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
        tracing::info!(listen = %addr, "metrics listening");
        tokio::spawn(status::serve(l, app.clone(), rx.clone()));
    }
    tokio::spawn(periodic(app.clone(), rx.clone()));
    let limits = server::Limits {
        max_connections: cli.max_connections,
        per_ip: cli.max_connections_per_ip,
        idle_timeout: cli.idle_timeout,
        exempt: if cli.http {
            cli.trusted_proxies.clone()
        } else {
            Vec::new()
        },
    };
    let api = tokio::spawn(server::serve(listener, tls, app, limits, rx));
    daemon::shutdown::signal().await;
    let _ = tx.send(true);
    api.await.context("API server task")?;
    Ok(())
}

/// Timers every store needs: not-found trackers and the rate limiter sweep.
async fn periodic<S: Store>(app: Arc<App<S>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TRACKER_TICK);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        for (name, t) in [
            ("seenTracker", &app.seen_tracker),
            ("notSeenTracker", &app.unseen_tracker),
        ] {
            t.tick(TRACKER_TICK.as_secs_f64());
            app.metrics
                .retry_after
                .get_or_create(&[("name", name)])
                .set(t.delay());
        }
        if n.is_multiple_of(LIMITER_SWEEP.as_secs()) {
            if let Some(l) = &app.limiter {
                app.metrics.rate_limiter_clients.set(l.sweep() as i64);
            }
            if let Some(l) = &app.new_device_limiter {
                l.sweep();
            }
        }
        if let Some(current) = app.store.current_devices() {
            if n.is_multiple_of(10) {
                app.metrics
                    .database_keys
                    .get_or_create(&[("category", "current")])
                    .set(current as i64);
            }
        }
    }
}

/// Expiry and snapshots of the embedded store.
async fn memory_maintenance(
    app: Arc<App<MemoryStore>>,
    flush_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut expiry = tokio::time::interval(EXPIRY_INTERVAL);
    let mut flush = tokio::time::interval(flush_every.max(Duration::from_secs(1)));
    flush.tick().await;
    loop {
        tokio::select! {
            _ = expiry.tick() => {
                let a = app.clone();
                if let Ok(current) = tokio::task::spawn_blocking(move || a.store.expire(Now::system())).await {
                    app.metrics.database_keys.get_or_create(&[("category", "current")]).set(current as i64);
                    let (records, bytes) = app.store.usage();
                    app.metrics.database_keys.get_or_create(&[("category", "all")]).set(records as i64);
                    app.metrics.store_bytes.set(bytes as i64);
                }
            }
            _ = flush.tick() => {
                let a = app.clone();
                let t = std::time::Instant::now();
                match tokio::task::spawn_blocking(move || a.store.write_snapshot(false)).await {
                    Ok(Ok(Some(n))) => {
                        app.metrics.write_seconds.set(t.elapsed().as_secs_f64());
                        app.metrics.last_written.set(Now::system().secs() as f64);
                        tracing::debug!(records = n, "snapshot written");
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot write the snapshot; will retry"),
                    Err(e) => tracing::error!(error = %e, "snapshot task failed"),
                }
            }
            _ = stop.changed() => return,
        }
    }
}
