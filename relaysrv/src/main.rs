//! `relaysrv`: a Syncthing-compatible relay server (relay protocol v1) for
//! private networks. See `--help` and the README.

mod cli;
mod limits;
mod listener;
mod metrics;
mod pairing;
mod pool;
mod protocol;
mod splice;
mod state;
mod status;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use proto::relay::{format_go_duration, RelayUri};
use proto::tls::{alpn, ClientCert, Versions};
use proto::{Identity, KeyKind, LoadedOrGenerated};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::Cli;
use crate::limits::{Capacity, CapacityConfig, PerIpLimiter};
use crate::splice::ForwarderKind;
use crate::state::{Relay, Settings};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    daemon::run_main(run(cli))
}

fn load_identity(cli: &Cli) -> anyhow::Result<Identity> {
    std::fs::create_dir_all(&cli.keys)
        .with_context(|| format!("cannot create --keys directory {}", cli.keys.display()))?;
    let (cert, key) = (cli.keys.join("cert.pem"), cli.keys.join("key.pem"));
    let loaded = Identity::load_or_generate(&cert, &key, "strelaysrv", KeyKind::Ed25519)
        .context("relay certificate")?;
    if let LoadedOrGenerated::Generated(_) = &loaded {
        tracing::info!(cert = %cert.display(), "generated a new relay certificate");
    }
    Ok(loaded.into_identity())
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = cli.token()?;
    if cli.provided_by.chars().count() > 30 {
        bail!("--provided-by is limited to 30 characters");
    }
    if cli.connect_requires_token && token.is_none() {
        bail!(
            "--connect-requires-token needs a join token (--token, --token-file or RELAYSRV_TOKEN)"
        );
    }
    let forwarder = ForwarderKind::choose(cli.forwarder)?;
    let identity = load_identity(&cli)?;
    let tls = proto::tls::server_config(
        &identity,
        &[alpn::RELAY],
        ClientCert::Required,
        Versions::Tls12AndUp,
    )
    .context("TLS configuration")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listen = cli::listen_addr(&cli.listen)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen); is the port in use?"))?;
    let bound = listener.local_addr().context("listener address")?;
    let ext = if cli.ext_address.is_empty() {
        None
    } else {
        let full = if cli.ext_address.starts_with(':') {
            format!("0.0.0.0{}", cli.ext_address)
        } else {
            cli.ext_address.clone()
        };
        Some(
            full.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| {
                    format!(
                        "bad --ext-address {:?} (expected HOST:PORT)",
                        cli.ext_address
                    )
                })?,
        )
    };
    let (invitation_address, invitation_port) = invitation_target(ext, bound);

    let status_listener = if cli.status_srv.is_empty() {
        None
    } else {
        let addr = cli::listen_addr(&cli.status_srv)?;
        Some(TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} (--status-srv); give another address or \"\" to disable"
            )
        })?)
    };
    let status_addr = status_listener.as_ref().and_then(|l| l.local_addr().ok());

    let pools: Vec<String> = cli
        .pools
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let settings = Settings {
        ping_interval: cli.ping_interval,
        network_timeout: cli.network_timeout,
        message_timeout: cli.message_timeout,
        handshake_timeout: cli.handshake_timeout,
        per_session_rate: cli.per_session_rate,
        global_rate: cli.global_rate,
        token,
        connect_requires_token: cli.connect_requires_token,
        invitation_rate: cli.invitation_rate,
        invitation_burst: cli.invitation_burst,
        network_buffer: cli.network_buffer as usize,
        forwarder,
        invitation_address,
        invitation_port,
        pools: pools.clone(),
        provided_by: cli.provided_by.clone(),
    };
    let shutdown = CancellationToken::new();
    let capacity = Capacity::new(CapacityConfig {
        max_clients: cli.max_clients,
        max_pending: cli.max_pending,
        max_pairings: cli.max_pairings,
        max_sockets: cli.max_sockets,
        per_source_sockets: cli.per_ip_max_conns,
        per_source_pending: cli.per_ip_max_pending,
    });
    tracing::info!(
        open_sockets_limit = capacity.max_sockets,
        per_source_sockets = capacity.per_source_sockets,
        per_source_pending = capacity.per_source_pending,
        invitation_rate = cli.invitation_rate,
        handshake_timeout = ?cli.handshake_timeout,
        ?forwarder,
        "limits"
    );
    let relay = Relay::new(settings, capacity, shutdown.clone());

    // The URI devices use. The host is what was advertised or bound; an
    // unspecified one must be replaced by a reachable name.
    let ext_host = match ext {
        Some(_) => cli.ext_address.rsplit_once(':').map_or("", |(h, _)| h),
        None => "",
    };
    let host = if ext_host.is_empty() && !bound.ip().is_unspecified() {
        bound.ip().to_string()
    } else {
        ext_host.to_owned()
    };
    let s = &relay.settings;
    let mut uri = RelayUri::new(
        &host,
        ext.map_or(bound.port(), |e| e.port()),
        Some(identity.device_id()),
    )
    .with_param("pingInterval", format_go_duration(s.ping_interval))
    .with_param("networkTimeout", format_go_duration(s.network_timeout));
    if s.per_session_rate > 0 {
        uri = uri.with_param("sessionLimitBps", s.per_session_rate.to_string());
    }
    if s.global_rate > 0 {
        uri = uri.with_param("globalLimitBps", s.global_rate.to_string());
    }
    if let Some(a) = status_addr {
        uri = uri.with_param("statusAddr", a.to_string());
    }
    if !s.provided_by.is_empty() {
        uri = uri.with_param("providedBy", s.provided_by.clone());
    }
    tracing::info!(device_id = %identity.device_id(), listen = %bound, "relay started");
    tracing::info!("URI: {uri}");
    println!("{uri}");
    if host.is_empty() {
        tracing::warn!("listening on all interfaces: replace the empty host in the URI with this machine's address, or set --ext-address");
    }
    if relay.settings.token.is_some() {
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
    if let Some(a) = status_addr {
        tracing::info!("status: http://{a}/status, metrics: http://{a}/metrics");
    }

    let per_ip = Arc::new(PerIpLimiter::new(
        cli.per_ip_conn_rate,
        cli.per_ip_conn_burst,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    if !pools.is_empty() && relay.settings.token.is_some() {
        // As the newest strelaysrv: a relay that requires a token is not
        // advertised to anyone.
        tracing::warn!(?pools, "a join token is set: not registering with any pool");
    } else {
        for pool in pools {
            tracing::info!(%pool, "registering with relay pool");
            tasks.spawn(pool::register_loop(
                relay.clone(),
                pool,
                uri.to_string(),
                identity.clone(),
            ));
        }
    }
    tasks.spawn(listener::accept_loop(
        relay.clone(),
        listener,
        acceptor,
        per_ip.clone(),
    ));
    tasks.spawn(pairing::sweep(relay.clone()));
    let history = Arc::new(status::RateHistory::default());
    tasks.spawn(status::sample_rates(relay.clone(), history.clone()));
    if let Some(l) = status_listener {
        tasks.spawn(status::serve(relay.clone(), l, history));
    }
    {
        let relay = relay.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        per_ip.forget_idle();
                        if let Some(l) = &relay.invitations {
                            l.forget_idle();
                        }
                    }
                    _ = relay.shutdown.cancelled() => return,
                }
            }
        });
    }

    daemon::shutdown::signal().await;
    shutdown.cancel();
    relay.pending.clear(&relay);
    // Connections see the cancellation and close; give them a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline
        && (relay.active_count() > 0 || relay.metrics.protocol_connections.get() > 0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tasks.shutdown().await;
    tracing::info!("relay stopped");
    Ok(())
}
