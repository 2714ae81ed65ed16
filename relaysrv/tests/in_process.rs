//! The relay started in-process through its library API, on port 0: no
//! binary, no fixed port. A joined device, a pairing moving bytes and a
//! half-open connection are all closed by `Server::shutdown`, which
//! returns once every task of the relay has.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::relay::{
    ConnectRequest, JoinRelayRequest, JoinSessionRequest, Message, Response, SessionInvitation,
    ShortBytes,
};
use proto::tls::{alpn, ServerPin, Versions};
use proto::{DeviceId, Identity, KeyKind};
use relaysrv::{Server, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: the machine running the tests may be loaded.
const PATIENCE: Duration = Duration::from_secs(20);

fn identity() -> Identity {
    Identity::generate("syncthing", KeyKind::Ed25519).unwrap()
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) {
    w.write_all(&msg.encode().unwrap()).await.unwrap();
    w.flush().await.unwrap();
}

/// The next message other than Ping; `None` once the relay closed.
async fn recv<R: AsyncRead + Unpin>(r: &mut R) -> Option<Message> {
    let mut buf = Vec::new();
    loop {
        if let Some((msg, used)) = Message::decode_frame(&buf).unwrap() {
            buf.drain(..used);
            if msg != Message::Ping {
                return Some(msg);
            }
            continue;
        }
        let mut chunk = [0u8; 2048];
        let n = tokio::time::timeout(PATIENCE, r.read(&mut chunk))
            .await
            .expect("relay answered in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn protocol_connection(addr: SocketAddr, me: &Identity, relay: DeviceId) -> Tls {
    let config = proto::tls::client_config(
        Some(me),
        &[alpn::RELAY],
        ServerPin::Device(relay),
        Versions::Tls12AndUp,
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(proto::tls::server_name(), tcp)
        .await
        .unwrap()
}

async fn join_session(addr: SocketAddr, inv: &SessionInvitation) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let key = ShortBytes::new(inv.key.as_slice()).unwrap();
    send(
        &mut tcp,
        &Message::JoinSessionRequest(JoinSessionRequest { key }),
    )
    .await;
    assert_eq!(
        recv(&mut tcp).await,
        Some(Message::Response(Response::with_code(0)))
    );
    tcp
}

fn invitation(msg: Option<Message>) -> SessionInvitation {
    match msg {
        Some(Message::SessionInvitation(i)) => i,
        other => panic!("expected an invitation, got {other:?}"),
    }
}

/// True once the peer has closed (EOF or reset), reading whatever comes.
async fn closed<R: AsyncRead + Unpin>(r: &mut R) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    let drain = async {
        while let Ok(n) = r.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(PATIENCE, drain).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_joined_devices_pairings_and_handshakes_and_returns_promptly() {
    let relay_identity = identity();
    let relay_id = relay_identity.device_id();
    let mut config = ServerConfig::new(relay_identity, "127.0.0.1:0".parse().unwrap());
    config.status_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::spawn(config).await.unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    assert!(server.status_addr().is_some_and(|a| a.port() != 0));
    assert_eq!(server.device_id(), Some(relay_id));
    assert_eq!(server.uri().port, addr.port());

    // A joined device.
    let listener_dev = identity();
    let mut joined = protocol_connection(addr, &listener_dev, relay_id).await;
    let join = Message::JoinRelayRequest(JoinRelayRequest { token: None });
    send(&mut joined, &join).await;
    assert_eq!(
        recv(&mut joined).await,
        Some(Message::Response(Response::with_code(0)))
    );

    // A pairing through it, with bytes in flight.
    let mut dialer = protocol_connection(addr, &identity(), relay_id).await;
    let target = ShortBytes::from_array(*listener_dev.device_id().as_bytes());
    send(
        &mut dialer,
        &Message::ConnectRequest(ConnectRequest { id: target }),
    )
    .await;
    let mine = invitation(recv(&mut dialer).await);
    let theirs = invitation(recv(&mut joined).await);
    let mut a = join_session(addr, &theirs).await;
    let mut b = join_session(addr, &mine).await;
    a.write_all(b"through the relay").await.unwrap();
    let mut got = [0u8; 17];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"through the relay");
    // A writer that keeps the pairing busy until the relay cuts it.
    let (_b_read, mut b_write) = b.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        while b_write.write_all(&chunk).await.is_ok() {}
    });

    // A half-open handshake: connected, nothing sent.
    let mut silent = TcpStream::connect(addr).await.unwrap();

    let started = Instant::now();
    tokio::time::timeout(PATIENCE, server.shutdown())
        .await
        .expect("shutdown returned")
        .expect("every task of the relay returned");
    let took = started.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");

    // Every socket of the relay is closed, the port too.
    assert!(closed(&mut joined).await, "joined device still connected");
    assert!(closed(&mut a).await, "pairing still open");
    assert!(closed(&mut silent).await, "half-open connection still open");
    tokio::time::timeout(PATIENCE, writer)
        .await
        .expect("the writer saw the pairing end")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_relay() {
    let config = ServerConfig::new(identity(), "127.0.0.1:0".parse().unwrap());
    let server = Server::spawn(config).await.unwrap();
    let addr = server.local_addr();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    drop(server);
    assert!(closed(&mut silent).await);
}

#[tokio::test]
async fn join_waits_for_a_stop_asked_through_the_parent_shutdown() {
    let parent = daemon::Shutdown::new();
    let config = ServerConfig::new(identity(), "127.0.0.1:0".parse().unwrap());
    let server = Server::spawn_in(config, parent.child()).await.unwrap();
    let addr = server.local_addr();
    parent.cancel();
    tokio::time::timeout(PATIENCE, server.join())
        .await
        .expect("the relay's tasks returned");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}
