//! The library's life cycle, in-process: spawn on port 0, serve, stop.
//! Stopping must await every task (none left running), let a request in
//! progress finish, close idle and half-open connections at once, and
//! write the final snapshot after the last announcement.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discosrv::{Server, ServerConfig, StoreConfig};
use proto::tls::{alpn, ServerPin, Versions};
use proto::{DeviceId, Identity, KeyKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Far above what a stop takes (the drain is bounded at a few seconds),
/// so a loaded machine does not fail the test; a hang still does.
const PATIENCE: Duration = Duration::from_secs(30);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(db: Option<&std::path::Path>) -> ServerConfig {
    let identity = Identity::generate("stdiscosrv", KeyKind::Ed25519).unwrap();
    let mut config = ServerConfig::for_tests(localhost(), identity);
    config.metrics_listen = Some(localhost());
    if let StoreConfig::Memory { dir, .. } = &mut config.store {
        *dir = db.map(|d| d.to_path_buf());
    }
    config
}

/// A TLS connection speaking HTTP/1.1, pinned to `server`, as `who`.
async fn connect(
    addr: SocketAddr,
    server: DeviceId,
    who: Option<&Identity>,
) -> TlsStream<TcpStream> {
    let config = proto::tls::client_config(
        who,
        &[alpn::HTTP_1_1],
        ServerPin::Device(server),
        Versions::Tls12AndUp,
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(proto::tls::server_name(), tcp)
        .await
        .unwrap()
}

/// Reads a whole `Connection: close` reply; returns its status.
async fn status_of(stream: &mut TlsStream<TcpStream>) -> u16 {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP reply: {text:?}"))
}

fn announce_head(len: usize) -> String {
    format!("POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n")
}

async fn request(srv: &Server, who: Option<&Identity>, head: &str, body: &[u8]) -> u16 {
    let mut s = connect(srv.local_addr(), srv.device_id().unwrap(), who).await;
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    status_of(&mut s).await
}

async fn lookup(srv: &Server, device: DeviceId) -> u16 {
    let head = format!("GET /?device={device} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    request(srv, None, &head, b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_awaits_every_task_and_lets_a_request_in_progress_finish() {
    let db = tempfile::tempdir().unwrap();
    let srv = Server::spawn(config(Some(db.path()))).await.unwrap();
    assert_ne!(srv.local_addr().port(), 0);
    let (addr, id) = (srv.local_addr(), srv.device_id().unwrap());
    let dev = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let body = br#"{"addresses":["tcp://192.0.2.7:22000"]}"#;

    assert_eq!(
        request(&srv, Some(&dev), &announce_head(body.len()), body).await,
        204
    );
    assert_eq!(lookup(&srv, dev.device_id()).await, 200);

    // In progress at the stop: the server is reading the body, as its
    // "100 Continue" proves, and half of it has been sent.
    let mut slow = connect(addr, id, Some(&dev)).await;
    let head = announce_head(body.len()).replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.flush().await.unwrap();
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(PATIENCE, slow.read(&mut byte)).await;
        assert!(matches!(n, Ok(Ok(1))), "no 100 Continue: {n:?}");
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{interim:?}");
    slow.write_all(&body[..10]).await.unwrap();
    slow.flush().await.unwrap();
    // Idle ones: a kept-alive TLS connection, and a TCP connection that
    // never starts its handshake.
    let mut idle = connect(addr, id, None).await;
    let mut half_open = TcpStream::connect(addr).await.unwrap();

    let tasks = srv.tasks().clone();
    assert!(tasks.running() > 0);
    let started = Instant::now();
    let stop = tokio::spawn(srv.shutdown());
    // The rest of the body arrives after the stop was asked: answered.
    slow.write_all(&body[10..]).await.unwrap();
    assert_eq!(status_of(&mut slow).await, 204);
    // Idle connections are closed without waiting for their timeouts.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, idle.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    let n = tokio::time::timeout(PATIENCE, half_open.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");

    tokio::time::timeout(PATIENCE, stop)
        .await
        .expect("shutdown hangs")
        .unwrap()
        .unwrap();
    eprintln!("shutdown took {:?}", started.elapsed());
    assert_eq!(tasks.running(), 0, "tasks left after shutdown()");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");

    // The final snapshot holds the announcement made during the stop.
    let mut again = config(Some(db.path()));
    again.metrics_listen = None;
    let srv = Server::spawn(again).await.unwrap();
    assert_eq!(lookup(&srv, dev.device_id()).await, 200);
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_server_can_be_joined_and_reports_bind_errors() {
    let srv = Server::spawn(config(None)).await.unwrap();
    let metrics = srv.metrics_addr().unwrap();
    // The metrics listener answers before the stop.
    let mut s = TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // A second server on the same port fails to start, naming the flag.
    let mut clash = config(None);
    clash.listen = srv.local_addr();
    let err = Server::spawn(clash).await.err().expect("port in use");
    assert!(err.to_string().contains("--listen"), "{err}");

    let tasks = srv.tasks().clone();
    tasks.cancel();
    tokio::time::timeout(PATIENCE, srv.join())
        .await
        .expect("join hangs")
        .unwrap();
    assert_eq!(tasks.running(), 0);
    assert!(TcpStream::connect(metrics).await.is_err());
}
