//! Our own accept loop: TCP, optional TLS (tokio-rustls), then HTTP/1.1 or
//! HTTP/2 (hyper-util's auto builder), so that the client certificate of
//! each connection reaches the request handler.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::handlers::{self, App, ConnInfo};
use crate::store::Store;

/// Time allowed for a TLS handshake, and for request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections get this long to finish their requests at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr`; `[::]` also accepts IPv4 (dual stack).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Pause after a failed `accept`. Out of file descriptors (EMFILE/ENFILE)
/// the pending connection stays queued and `accept` fails again at once:
/// retrying without a pause spins a core and starves everything else.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Counts and logs a failed `accept`, then pauses.
pub async fn accept_failed(
    metrics: &crate::metrics::Metrics,
    listener: &'static str,
    e: &std::io::Error,
) {
    metrics.accept_error(listener);
    // At most ten lines a second per listener, thanks to the pause.
    tracing::warn!(listener, error = %e, "accept failed; pausing");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(16 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Connection limits of [`serve`].
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// Per client IP (IPv6 per /64); 0 is no limit.
    pub per_ip: usize,
    /// A connection without a request for this long is closed.
    pub idle_timeout: Duration,
    /// Peers never limited per IP (trusted proxies in `--http` mode: all
    /// clients arrive through them).
    pub exempt: Vec<ipnet::IpNet>,
}

/// Open connections per client IP (IPv6 /64). Touched once when a
/// connection opens and once when it closes, never per request.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    /// A slot for `ip`, or None when it already has `max`.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let key = crate::ratelimit::key(ip);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            key,
        })
    }
}

struct IpSlot {
    table: Arc<PerIp>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Serves until `shutdown` turns true, then lets open connections finish
/// (bounded) and returns.
///
/// Every connection is accepted: over a limit it is closed at once and
/// counted, rather than left in the listen queue where, once the queue is
/// full, it would lock out every other client too.
pub async fn serve<S: Store>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App<S>>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let builder = Arc::new(builder());
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_failed(&app.metrics, "api", &e).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            app.metrics.refused("max_connections");
            tracing::debug!(%peer, "connection refused: --max-connections reached");
            drop(stream);
            continue;
        };
        let ip = peer.ip().to_canonical();
        let ip_slot = if limits.per_ip == 0 || limits.exempt.iter().any(|n| n.contains(&ip)) {
            None
        } else {
            match per_ip.take(ip, limits.per_ip) {
                Some(s) => Some(s),
                None => {
                    app.metrics.refused("max_connections_per_ip");
                    tracing::debug!(%peer, "connection refused: --max-connections-per-ip reached");
                    drop(stream);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            app.metrics.connections.inc();
            connection(stream, peer, tls, app.clone(), &builder, idle, shutdown).await;
            app.metrics.connections.dec();
            drop(ip_slot);
            drop(permit);
        });
    }
    drop(listener);
    // Wait (bounded) for connections to drain.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        DRAIN_TIMEOUT + Duration::from_secs(1),
        slots.acquire_many(all),
    )
    .await;
}

async fn connection<S: Store>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Arc<App<S>>,
    builder: &auto::Builder<TokioExecutor>,
    idle: Duration,
    shutdown: watch::Receiver<bool>,
) {
    match tls {
        None => {
            let info = ConnInfo { peer, device: None };
            http(stream, info, app, builder, idle, shutdown).await
        }
        Some(acceptor) => {
            let tls_stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let device = proto::tls::peer_device_id(tls_stream.get_ref().1);
            let info = ConnInfo { peer, device };
            http(tls_stream, info, app, builder, idle, shutdown).await
        }
    }
}

async fn http<S: Store, I>(
    io: I,
    info: ConnInfo,
    app: Arc<App<S>>,
    builder: &auto::Builder<TokioExecutor>,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    // Requests started and finished on this connection: two uncontended
    // atomic additions per request, read by the idle watchdog below.
    let activity = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let act = activity.clone();
    let svc = service_fn(move |req| {
        let (app, info, act) = (app.clone(), info.clone(), act.clone());
        act.0.fetch_add(1, Ordering::Relaxed);
        async move {
            let r = handlers::handle(app, info, req).await;
            act.1.fetch_add(1, Ordering::Relaxed);
            r
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Keep-alive pings keep a silent HTTP/2 peer alive forever; a
    // connection is idle when no request started during a whole tick and
    // none is running, so it lives between `idle` and twice that.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
    let mut seen = 0u64;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick() => {
                let started = activity.0.load(Ordering::Relaxed);
                let finished = activity.1.load(Ordering::Relaxed);
                if started == seen && started == finished {
                    break;
                }
                seen = started;
            }
            _ = shutdown.changed() => break,
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await;
}

#[cfg(test)]
mod tests;
