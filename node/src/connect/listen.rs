//! Listeners for `listenAddresses`: `tcp://HOST:PORT` sockets and
//! `relay://…` relays we stay joined to (with `relaysEnabled`). Added and
//! removed live as the configuration changes; each knows the address it
//! makes us reachable at, which discovery announces.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use proto::tls::{self, alpn, ClientCert, Versions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::guard::Refusal;
use crate::model::connect::{shown, Listener};
use crate::model::{ConnectionKind, Node};
use daemon::sync::MutexExt;

/// Lines about connections that failed before the peer was known: anyone
/// can cause them, so they are rate-limited.
/// How often the listeners are compared with the configuration.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// The listen addresses that should be running now.
fn wanted(node: &Node) -> Vec<String> {
    let config = node.config();
    let options = &config.options;
    options
        .listen_addresses
        .iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .filter(|a| !a.starts_with("relay://") || options.relays_enabled)
        .collect()
}

pub async fn supervise(node: Arc<Node>) {
    loop {
        tokio::time::sleep(RECONCILE_EVERY).await;
        if let Err(e) = reconcile(&node, false).await {
            tracing::debug!(error = %format!("{e:#}"), "listener not started");
        }
    }
}

/// Starts missing listeners and stops unwanted ones. With `strict`, a TCP
/// address that cannot be bound is an error (start-up).
pub async fn reconcile(node: &Arc<Node>, strict: bool) -> Result<()> {
    let this = &node.connect.listeners;
    let _one = this.reconciling.lock().await;
    let want = wanted(node);
    {
        this.running.locked().retain(|k, _| want.contains(k));
        this.failures.locked().retain(|k, _| want.contains(k));
    }
    let mut first_error = None;
    for uri in want {
        if this.running.locked().contains_key(&uri) {
            continue;
        }
        match start_one(node, &uri).await {
            Ok(listener) => {
                this.failures.locked().remove(&uri);
                this.running.locked().insert(uri, listener);
            }
            Err(e) => {
                tracing::warn!(address = %shown(&uri), error = %format!("{e:#}"), "cannot listen");
                this.failures.locked().insert(uri.clone(), format!("{e:#}"));
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if strict => Err(e),
        _ => Ok(()),
    }
}

async fn start_one(node: &Arc<Node>, uri: &str) -> Result<Listener> {
    if uri.starts_with("relay://") {
        let (tx, rx) = watch::channel(None);
        let task = node
            .shutdown
            .spawn_until_cancelled(crate::relay_client::listen_loop(
                node.clone(),
                uri.to_string(),
                tx,
            ));
        return Ok(Listener {
            task,
            reachable: rx,
        });
    }
    let Some(hp) = crate::config::tcp_host_port(uri) else {
        bail!("listen address {uri:?}: only tcp://HOST:PORT and relay://… are supported");
    };
    // A listener just removed for this one (same port, other host) closes
    // its socket when its task is next polled: give it a moment.
    let mut tries = 0;
    let listener = loop {
        match TcpListener::bind(hp).await {
            Ok(l) => break l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {uri}")),
        }
    };
    let local = listener.local_addr()?;
    eprintln!("Listening on tcp://{local}");
    tracing::info!(address = %format!("tcp://{local}"), "listening");
    // Announce what was configured (a host name stays a name: discovery
    // servers drop loopback IPs but keep names), with the real port.
    let scheme = uri.split("://").next().unwrap_or("tcp");
    let host = hp.rsplit_once(':').map_or(hp, |(h, _)| h);
    let reachable = format!("{scheme}://{host}:{}", local.port());
    let tls_server = Arc::new(tls::server_config(
        &node.identity,
        &[alpn::BEP],
        ClientCert::Required,
        Versions::Tls13Only,
    )?);
    let (tx, rx) = watch::channel(Some(reachable));
    let node = node.clone();
    let task = node.clone().shutdown.spawn_until_cancelled(async move {
        // The sender lives as long as the listener.
        let _tx = tx;
        accept_loop(node, listener, tls_server).await
    });
    Ok(Listener {
        task,
        reachable: rx,
    })
}

async fn accept_loop(node: Arc<Node>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Unauthenticated connections are bounded per source and in time;
        // a full table cuts its oldest handshake (see `admission`).
        let Some(ticket) = node.admission.admit(addr) else {
            if let Some(suppressed) = node.handshake_log.allow() {
                tracing::warn!(%addr, suppressed,
                    "too many handshakes in progress from this source; connection closed");
            }
            continue;
        };
        let node = node.clone();
        let acceptor = acceptor.clone();
        // Owned by the node, not cut at its stop: the connection sends its
        // Close first (conn::run watches the stop).
        node.clone().shutdown.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = tokio::time::timeout_at(ticket.deadline, acceptor.accept(tcp));
            let tls = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        if let Some(suppressed) = node.handshake_log.allow() {
                            tracing::info!(%addr, error = %e, suppressed, "TLS handshake failed");
                        }
                        return;
                    }
                    Err(_) => {
                        node.refusals.count(Refusal::HandshakeTimeout);
                        if let Some(suppressed) = node.handshake_log.allow() {
                            tracing::info!(%addr, suppressed, "TLS handshake timed out");
                        }
                        return;
                    }
                },
                _ = node.shutdown.cancelled() => return,
                _ = ticket.evicted() => {
                    if let Some(suppressed) = node.handshake_log.allow() {
                        tracing::info!(%addr, suppressed,
                            "TLS handshake cut: all handshake slots taken, this one was the oldest");
                    }
                    return;
                }
            };
            let Some(peer) = tls::peer_device_id(tls.get_ref().1) else {
                if let Some(suppressed) = node.handshake_log.allow() {
                    tracing::info!(%addr, suppressed, "peer sent no certificate");
                }
                return;
            };
            if let Err(e) = crate::conn::run(
                node.clone(),
                tls,
                peer,
                addr,
                ConnectionKind::TcpServer,
                Some(ticket),
            )
            .await
            {
                // Only connections that never got past the Hello end here.
                if let Some(suppressed) = node.handshake_log.allow() {
                    tracing::info!(%addr, device = %peer, error = %format!("{e:#}"), suppressed,
                        "connection ended");
                }
            }
        });
    }
}
