//! Our own accept loop: TCP, optional TLS (tokio-rustls), then HTTP/1.1 or
//! HTTP/2 (hyper-util's auto builder), so that the client certificate of
//! each connection reaches the request handler.

use std::net::SocketAddr;
use std::sync::Arc;
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

/// Serves until `shutdown` turns true, then lets open connections finish
/// (bounded) and returns.
pub async fn serve<S: Store>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App<S>>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let builder = Arc::new(builder());
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
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
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            app.metrics.connections.inc();
            connection(stream, peer, tls, app.clone(), &builder, shutdown).await;
            app.metrics.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    // Wait (bounded) for connections to drain.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
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
    shutdown: watch::Receiver<bool>,
) {
    match tls {
        None => {
            let info = ConnInfo { peer, device: None };
            http(stream, info, app, builder, shutdown).await
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
            http(tls_stream, info, app, builder, shutdown).await
        }
    }
}

async fn http<S: Store, I>(
    io: I,
    info: ConnInfo,
    app: Arc<App<S>>,
    builder: &auto::Builder<TokioExecutor>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let svc = service_fn(move |req| handlers::handle(app.clone(), info.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await;
        }
    }
}

#[cfg(test)]
mod tests;
