//! relaysrv (issue 4): real Syncthing 1.19.2 through our relay, tokens,
//! failure paths, limits, status and metrics.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::relay::{invitation, join_session, pair, ProtocolClient, RelayServer};
use e2e::{wait, SyncthingHome};
use proto::relay::{Message, Response};
use proto::tls::{alpn, ClientCert, Versions};
use proto::{DeviceId, Identity, KeyKind};
use serde_json::{json, Value};

fn identity() -> Identity {
    Identity::generate("syncthing", KeyKind::Ed25519).unwrap()
}

fn response(code: i32) -> Message {
    Message::Response(Response::with_code(code))
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {k} in {v}"))
}

fn write_file(path: &Path, len: usize, seed: u8) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect();
    std::fs::write(path, data).unwrap();
}

/// Starts a real node listening only on `listen` (or nothing), relays on.
fn node(dir: &Path, listen: &[String]) -> e2e::Syncthing {
    let st = SyncthingHome::init(dir, listen).start();
    st.set_options(json!({ "relaysEnabled": true }));
    st
}

#[test]
fn two_real_syncthing_nodes_connect_and_sync_only_through_our_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayServer::start(&dir.path().join("relay"), &["--provided-by", "e2e relay"]);
    let n1 = node(&dir.path().join("n1"), &[relay.uri()]);
    let n2 = node(&dir.path().join("n2"), &[]);

    // Node 1 holds its permanent protocol connection.
    relay.wait_status("node 1 joins", Duration::from_secs(30), |s| {
        n(s, "numConnections") >= 1
    });

    n1.add_device(n2.id(), &["dynamic"]);
    n2.add_device(n1.id(), &[&relay.uri()]);
    let (d1, d2) = (dir.path().join("d1"), dir.path().join("d2"));
    n1.share_folder("relayed", &d1, "sendreceive", &[n2.id()]);
    n2.share_folder("relayed", &d2, "sendreceive", &[n1.id()]);

    let t2 = n2.wait_connected(n1.id(), Duration::from_secs(60));
    let t1 = n1.wait_connected(n2.id(), Duration::from_secs(10));
    assert_eq!(
        (t2.as_deref(), t1.as_deref()),
        (Some("relay-client"), Some("relay-server")),
        "node logs:\n{}\n{}\nrelay:\n{}",
        n2.proc.log_tail(40),
        n1.proc.log_tail(20),
        relay.proc.log_tail(20)
    );

    std::fs::create_dir_all(d1.join("sub")).unwrap();
    for i in 0..10 {
        write_file(
            &d1.join(format!("sub/small{i}.bin")),
            1000 + 731 * i,
            i as u8,
        );
    }
    write_file(&d1.join("big.bin"), 8 << 20, 7);
    n1.scan("relayed");
    n2.wait_synced("relayed", 11, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", n2.proc.log_tail(30)));
    for rel in
        std::iter::once("big.bin".to_string()).chain((0..10).map(|i| format!("sub/small{i}.bin")))
    {
        assert!(
            std::fs::read(d1.join(&rel)).unwrap() == std::fs::read(d2.join(&rel)).unwrap(),
            "{rel} differs"
        );
    }
    assert_eq!(
        n2.wait_connected(n1.id(), Duration::from_secs(1))
            .as_deref(),
        Some("relay-client")
    );
    let st = relay.status();
    assert_eq!(n(&st, "numActiveSessions"), 1, "{st}");
    assert_eq!(n(&st, "numProxies"), 2, "{st}");
    assert!(n(&st, "bytesProxied") >= 8 << 20, "{st}");
    assert_eq!(st["options"]["provided-by"], "e2e relay");
    assert!(relay.metric("relaysrv_proxied_bytes_total") >= (8 << 20) as f64);

    n2.shutdown();
    n1.shutdown();
    relay.wait_status(
        "pairing gone after nodes stop",
        Duration::from_secs(15),
        |s| {
            n(s, "numActiveSessions") == 0
                && n(s, "numConnections") == 0
                && n(s, "numPendingSessionKeys") == 0
        },
    );
}

#[test]
fn token_gates_joins_but_a_real_device_can_still_dial_a_token_joined_device() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let relay = RelayServer::start(
        &dir.path().join("relay"),
        &["--token-file", token_file.to_str().unwrap()],
    );
    let (port, rid) = (relay.port, relay.id);

    for bad in [None, Some(""), Some("wrong"), Some("s3cret-token-plus")] {
        let mut c = ProtocolClient::connect(port, &identity(), rid).unwrap();
        assert_eq!(
            c.join(bad).unwrap(),
            response(Response::WRONG_TOKEN),
            "token {bad:?}"
        );
        let mut rest = [0u8; 1];
        assert_eq!(
            c.stream.sock.read(&mut rest).unwrap_or(0),
            0,
            "closed after code 3"
        );
    }
    let device = identity();
    let mut listener = ProtocolClient::connect(port, &device, rid).unwrap();
    assert_eq!(listener.join(Some("s3cret-token")).unwrap(), response(0));
    assert!(relay.metric("relaysrv_rejects_total{reason=\"WrongToken\"}") >= 4.0);

    // A real 1.19.2 node (which cannot send a token) dials that device.
    let n2 = node(&dir.path().join("n2"), &[]);
    n2.add_device(&device.device_id().to_string(), &[&relay.uri()]);
    listener.set_timeout(Duration::from_secs(30));
    let inv = invitation(listener.recv().unwrap());
    assert!(inv.server_socket);
    assert_eq!(
        inv.from.as_slice(),
        n2.id().parse::<DeviceId>().unwrap().as_bytes()
    );
    let (tcp, reply) = join_session(port, inv.key.as_slice()).unwrap();
    assert_eq!(reply, response(0));

    // We are the TLS server of the pipe: the real node completes a BEP TLS
    // handshake with us through the relay.
    let config = proto::tls::server_config(
        &device,
        &[alpn::BEP],
        ClientCert::Required,
        Versions::Tls13Only,
    )
    .unwrap();
    let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("TLS handshake with the real node through the relay");
    }
    let peer = proto::tls::peer_device_id(&tls.conn).unwrap();
    assert_eq!(peer.to_string(), n2.id());
    // Its BEP Hello follows (magic 0x2EA7D90B).
    let mut magic = [0u8; 4];
    tls.read_exact(&mut magic).unwrap();
    assert_eq!(magic, [0x2e, 0xa7, 0xd9, 0x0b]);
    n2.shutdown();
}

#[test]
fn token_from_the_environment_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("relay");
    let port = e2e::pick_port();
    let mut cmd = std::process::Command::new(e2e::our_binary("relaysrv"));
    cmd.args([
        "--keys",
        keys.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--status-srv",
        "",
    ])
    .env("RELAYSRV_TOKEN", "from-env");
    let _p = e2e::Proc::spawn("relaysrv", cmd, &dir.path().join("log"));
    assert!(wait::listening(port, Duration::from_secs(20)));
    let rid = DeviceId::from_der_cert(&Identity::load_certificate(&keys.join("cert.pem")).unwrap());
    let mut c = ProtocolClient::connect(port, &identity(), rid).unwrap();
    assert_eq!(c.join(Some("from-env")).unwrap(), response(0));

    // Both sources at once is refused with a message, not a panic.
    let out = std::process::Command::new(e2e::our_binary("relaysrv"))
        .args([
            "--token",
            "a",
            "--token-file",
            "/nonexistent",
            "--status-srv",
            "",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn pairing_forwards_both_ways_and_a_vanishing_peer_closes_the_other_side() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayServer::start(&dir.path().join("relay"), &[]);
    let (port, rid) = (relay.port, relay.id);
    let server_dev = identity();
    let mut listener = ProtocolClient::connect(port, &server_dev, rid).unwrap();
    assert_eq!(listener.join(None).unwrap(), response(0));

    for round in 0..2u32 {
        let (mut a, mut b) = pair(
            port,
            rid,
            &mut listener,
            &identity(),
            server_dev.device_id(),
        );
        let st = relay.status();
        assert_eq!(
            (
                n(&st, "numActiveSessions"),
                n(&st, "numProxies"),
                n(&st, "numPendingSessionKeys")
            ),
            (1, 2, 0),
            "{st}"
        );
        // Bytes both ways, bigger than any buffer, concurrently.
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + round) as u8).collect();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        let p1 = payload.clone();
        let writer = std::thread::spawn(move || a2.write_all(&p1).unwrap());
        let p2 = payload.clone();
        let writer2 = std::thread::spawn(move || b2.write_all(&p2).unwrap());
        let mut got = vec![0u8; payload.len()];
        b.read_exact(&mut got).unwrap();
        assert!(got == payload, "a→b corrupted");
        a.read_exact(&mut got).unwrap();
        assert!(got == payload, "b→a corrupted");
        writer.join().unwrap();
        writer2.join().unwrap();

        // Mid-transfer, one side vanishes: the other is closed.
        a.write_all(&payload[..100_000]).unwrap();
        drop(a);
        let started = Instant::now();
        let mut sink = Vec::new();
        let _ = b.read_to_end(&mut sink);
        assert!(started.elapsed() < Duration::from_secs(5));
        relay.wait_status("pairing gone", Duration::from_secs(5), |s| {
            n(s, "numActiveSessions") == 0
                && n(s, "numProxies") == 0
                && n(s, "numPendingSessionKeys") == 0
        });
    }
    // Only the listener's protocol connection is left open.
    assert_eq!(relay.metric("relaysrv_open_sockets"), 1.0);
    assert_eq!(relay.metric("relaysrv_active_pairings"), 0.0);

    // The listening device going away ends its pairings too.
    let (_a, mut b) = pair(
        port,
        rid,
        &mut listener,
        &identity(),
        server_dev.device_id(),
    );
    drop(listener);
    let mut sink = Vec::new();
    let _ = b.read_to_end(&mut sink);
    relay.wait_status("device and pairing gone", Duration::from_secs(5), |s| {
        n(s, "numActiveSessions") == 0 && n(s, "numConnections") == 0
    });
    drop(_a);
    drop(b);
    wait::until(Duration::from_secs(5), Duration::from_millis(50), || {
        (relay.metric("relaysrv_open_sockets") == 0.0).then_some(())
    })
    .expect("all sockets closed");
}
