//! Our own accept loop: TCP, optional TLS (tokio-rustls), then HTTP/1.1 or
//! HTTP/2 (hyper-util's auto builder), so that the client certificate of
//! each connection reaches the request handler.

use daemon::sync::MutexExt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daemon::Shutdown;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::handlers::{self, App, ConnInfo};
use crate::store::Store;

/// Time allowed for a TLS handshake, and for request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections get this long to finish their requests at shutdown. Short
/// enough that the whole program stops within 5 s of SIGTERM even when a
/// client is in the middle of a slow upload; a normal request takes
/// milliseconds.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

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

fn builder(tasks: &Shutdown) -> auto::Builder<OwnedExecutor> {
    let mut b = auto::Builder::new(OwnedExecutor(tasks.clone()));
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
        let mut map = self.0.locked();
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
        let mut map = self.table.0.locked();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Serves until `tasks` is cancelled, then returns at once. Every
/// connection (and every task hyper starts for one) is a task of `tasks`,
/// so whoever stops `tasks` waits for the open connections: each finishes
/// its requests in progress within [`DRAIN_TIMEOUT`] and closes.
///
/// Every connection is accepted: over a limit it is closed at once and
/// counted, rather than left in the listen queue where, once the queue is
/// full, it would lock out every other client too.
pub async fn serve<S: Store>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App<S>>,
    limits: Limits,
    tasks: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let builder = Arc::new(builder(&tasks));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_failed(&app.metrics, "api", &e).await;
                    continue;
                }
            },
            _ = tasks.cancelled() => break,
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
        let conn = Conn {
            peer,
            tls: tls.clone(),
            app: app.clone(),
            builder: builder.clone(),
            idle: limits.idle_timeout,
            tasks: tasks.clone(),
        };
        tasks.spawn(async move {
            conn.app.metrics.connections.inc();
            let app = conn.app.clone();
            conn.run(stream).await;
            app.metrics.connections.dec();
            drop(ip_slot);
            drop(permit);
        });
    }
}

/// Runs hyper's own tasks (one per HTTP/2 stream) as tasks of a
/// [`Shutdown`], so that stopping it waits for them too.
#[derive(Clone)]
pub(crate) struct OwnedExecutor(pub(crate) Shutdown);

impl<F> hyper::rt::Executor<F> for OwnedExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// One accepted connection and what serving it needs.
struct Conn<S> {
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Arc<App<S>>,
    builder: Arc<auto::Builder<OwnedExecutor>>,
    idle: Duration,
    tasks: Shutdown,
}

impl<S: Store> Conn<S> {
    async fn run(self, stream: TcpStream) {
        let peer = self.peer;
        let Some(acceptor) = self.tls.clone() else {
            let info = ConnInfo { peer, device: None };
            return self.http(stream, info).await;
        };
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
        let tls_stream = tokio::select! {
            r = handshake => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            // No request is in progress yet: nothing to let finish.
            _ = self.tasks.cancelled() => return,
        };
        let device = proto::tls::peer_device_id(tls_stream.get_ref().1);
        let info = ConnInfo { peer, device };
        self.http(tls_stream, info).await
    }

    async fn http<I>(self, io: I, info: ConnInfo)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = Arc::new(info);
        // Requests started and finished on this connection: two uncontended
        // atomic additions per request, read by the idle watchdog below.
        let activity = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let act = activity.clone();
        // An Arc, not the Shutdown itself: cloning a cancellation token
        // takes a lock, and this runs once per request.
        let (app, tasks) = (self.app.clone(), Arc::new(self.tasks.clone()));
        let svc = service_fn(move |req| {
            let (app, info, act, tasks) = (app.clone(), info.clone(), act.clone(), tasks.clone());
            act.0.fetch_add(1, Ordering::Relaxed);
            async move {
                let r = handlers::handle(app, info, req, &tasks).await;
                act.1.fetch_add(1, Ordering::Relaxed);
                r
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        // Keep-alive pings keep a silent HTTP/2 peer alive forever; a
        // connection is idle when no request started during a whole tick and
        // none is running, so it lives between `idle` and twice that.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + self.idle, self.idle);
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
                _ = self.tasks.cancelled() => break,
            }
        }
        // Requests in progress are answered; idle connections close now.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await;
    }
}

#[cfg(test)]
mod tests;
