//! The accept loop and the HTTP layers with real clients: hyper's HTTP/2
//! client over TLS with ALPN h2, as curl and newer Syncthing versions use.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use daemon::Shutdown;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::IpNet;
use proto::discovery::CertHeader;
use proto::tls::{alpn, ClientCert, ServerPin, Versions};
use proto::{Identity, KeyKind};
use tokio::net::TcpStream;

use crate::handlers::App;
use crate::metrics::Metrics;
use crate::retry::NotFoundTracker;
use crate::store::memory::MemoryStore;

pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub app: Arc<App<MemoryStore>>,
    tasks: Shutdown,
}

pub(crate) fn test_app() -> App<MemoryStore> {
    App {
        store: MemoryStore::new(None),
        metrics: Metrics::new(),
        limiter: None,
        new_device_limiter: None,
        seen_tracker: NotFoundTracker::new(1000.0),
        unseen_tracker: NotFoundTracker::new(1000.0),
        http_mode: false,
        trusted_proxies: Vec::<IpNet>::new(),
        cert_header: CertHeader::Nginx,
        allow: crate::allow::Allow::Open,
        refusal_log: crate::allow::refusal_log(),
        path_prefix: None,
    }
}

impl TestServer {
    /// A TLS discovery server on 127.0.0.1 with `app`.
    pub async fn start(app: App<MemoryStore>, limits: super::Limits) -> TestServer {
        let identity = Identity::generate("stdiscosrv", KeyKind::Ed25519).unwrap();
        let config = proto::tls::server_config(
            &identity,
            &[alpn::H2, alpn::HTTP_1_1],
            ClientCert::Optional,
            Versions::Tls12AndUp,
        )
        .unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(app);
        let tasks = Shutdown::new();
        let serve = super::serve(listener, Some(tls), app.clone(), limits, tasks.clone());
        tasks.spawn(serve);
        TestServer { addr, app, tasks }
    }

    /// Stops the accept loop and waits for every connection to close.
    pub async fn stop(self) {
        self.tasks
            .stop(std::time::Duration::from_secs(30))
            .await
            .unwrap();
    }
}

pub(crate) fn limits(max: usize, per_ip: usize, idle_secs: u64) -> super::Limits {
    super::Limits {
        max_connections: max,
        per_ip,
        idle_timeout: std::time::Duration::from_secs(idle_secs),
        exempt: Vec::new(),
    }
}

/// An HTTP/2 connection over TLS (ALPN h2), with `who`'s certificate.
pub(crate) async fn h2_client(
    addr: SocketAddr,
    who: Option<&Identity>,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let config =
        proto::tls::client_config(who, &[alpn::H2], ServerPin::Any, Versions::Tls12AndUp).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(proto::tls::server_name(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn::H2));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// POSTs `body` and returns the status and reply text, or the stream
/// error that replaced them.
async fn post(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    body: Vec<u8>,
) -> Result<(u16, String), hyper::Error> {
    let req = http::Request::post("https://127.0.0.1/")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let text = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

/// Issue 14: over HTTP/2 a refusal sent before the upload ended was lost
/// to a stream reset; each status must reach the client intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_clients_get_403_and_413_intact() {
    let srv = TestServer::start(test_app(), limits(100, 0, 60)).await;
    let dev = Identity::generate("syncthing", KeyKind::EcdsaP384).unwrap();
    let mut anon = h2_client(srv.addr, None).await;
    let mut with_cert = h2_client(srv.addr, Some(&dev)).await;
    for size in [40usize, 70_000, 300_000, 3_000_000] {
        let body = vec![b' '; size];
        let r = post(&mut anon, body.clone()).await;
        assert!(
            matches!(&r, Ok((403, _))),
            "no certificate, {size} bytes: {r:?}"
        );
        if size > 60_000 {
            let r = post(&mut with_cert, body).await;
            assert!(matches!(&r, Ok((413, _))), "{size} bytes: {r:?}");
        }
    }
    // Both connections are still usable.
    let ok = br#"{"addresses":["tcp://h2.example:22000"]}"#.to_vec();
    assert!(matches!(post(&mut with_cert, ok).await, Ok((204, _))));
    assert!(matches!(
        post(&mut anon, b"{}".to_vec()).await,
        Ok((403, _))
    ));
    let m = srv.app.metrics.render_prometheus();
    assert!(m.contains("type=\"POST\",result=\"413\"} 3"), "{m}");
    srv.stop().await;
}

#[test]
fn per_ip_slots_aggregate_ipv6_by_64_and_are_given_back() {
    let table = Arc::new(super::PerIp::default());
    let a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
    let s1 = table.take(a, 2).unwrap();
    let s2 = table.take(b, 2).unwrap();
    assert!(table.take(a, 2).is_none(), "same /64 shares two slots");
    assert!(table.take(c, 2).is_some(), "another /64 is another client");
    let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let _v = table.take(v4, 1).unwrap();
    assert!(table.take(v4, 1).is_none());
    assert!(table.take("192.0.2.2".parse().unwrap(), 1).is_some());
    drop(s1);
    assert!(
        table.take(b, 2).is_some(),
        "a closed connection gives its slot back"
    );
    drop(s2);
}

/// A silent HTTP/2 connection (pings answered, no request) is closed
/// after the idle timeout instead of holding its slot forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connection_is_closed() {
    let srv = TestServer::start(test_app(), limits(100, 0, 1)).await;
    let mut send = h2_client(srv.addr, None).await;
    // One request, then silence.
    let req = http::Request::get("https://127.0.0.1/ping")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 204);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if send.is_closed() || send.ready().await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection still open after 30 s");
    srv.stop().await;
}
