//! `allowedNetworks` with real Syncthing devices (the newest available):
//! two devices share a folder with our node, each allowed only from
//! 127.0.0.3. Device A lives at 127.0.0.2 (it listens there, and its dials
//! reach our node from that address through a forwarder bound to it);
//! device B lives at 127.0.0.3 the same way. A is refused both ways — its
//! incoming connections before any Hello, and our node never dials its
//! address — while B connects and its file arrives. Then A's list is
//! emptied over REST and A's file arrives too; a list with a bad entry is
//! a 400.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use e2e::node::{Node, NodeHome};
use e2e::peers::PeerVersion;
use e2e::rest_api::keyed;
use e2e::syncthing::SyncthingHome;
use e2e::{pick_port, wait, Syncthing};
use serde_json::json;

/// Accepts on 127.0.0.1 and forwards each connection to `to`, dialed from
/// `from` (a loopback address): to the node at `to`, the connections come
/// from `from`.
struct Forwarder {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(from: Ipv4Addr, to: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = dial_from(from, to) else {
                    continue;
                };
                pipe(client, server);
            }
        });
        Forwarder {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dial_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

/// Copies both ways until either side closes; the threads end with the
/// connection (the processes on both ends are stopped by the test).
fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        copy(a, b2);
        copy(b, a2);
    }
}

/// A real device listening at `ip`, sharing folder `f` (send-only, with
/// one file named `file`) with our node, which it dials through `via`.
fn device(dir: &Path, ip: &str, file: &str, ours: &str, via: &Forwarder) -> (Syncthing, String) {
    let v = PeerVersion::newest_available();
    let listen = format!("tcp://{ip}:{}", pick_port());
    let st = SyncthingHome::init_version(dir, std::slice::from_ref(&listen), v).start();
    st.add_device(ours, &[&via.address()]);
    let folder = dir.join("f");
    st.share_folder("f", &folder, "sendonly", &[ours]);
    std::fs::write(folder.join(file), file.as_bytes()).unwrap();
    st.scan("f");
    (st, listen)
}

fn dial_error(node: &Node, address: &str) -> Option<String> {
    let s = node.get("/rest/system/status").ok()?;
    s["lastDialStatus"][address]["error"]
        .as_str()
        .map(str::to_string)
}

fn refused_by_network(node: &Node) -> u64 {
    let m = keyed(
        node.home.endpoint(),
        &node.home.api_key,
        "GET",
        "/metrics",
        None,
    )
    .body;
    m.lines()
        .find(|l| l.starts_with("node_refused_total") && l.contains("network_not_allowed"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[test]
fn a_device_outside_its_allowed_networks_is_refused_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let home = NodeHome::generate(&tmp.path().join("node"), "rust");
    let ours_at: SocketAddr = ([127, 0, 0, 1], home.listen_port).into();
    let via_a = Forwarder::start(Ipv4Addr::new(127, 0, 0, 2), ours_at);
    let via_b = Forwarder::start(Ipv4Addr::new(127, 0, 0, 3), ours_at);
    let (a, a_listen) = device(
        &tmp.path().join("a"),
        "127.0.0.2",
        "from-a",
        &home.id,
        &via_a,
    );
    let (b, b_listen) = device(
        &tmp.path().join("b"),
        "127.0.0.3",
        "from-b",
        &home.id,
        &via_b,
    );

    home.add_device(a.id(), &[&a_listen]);
    home.add_device(b.id(), &[&b_listen]);
    let mut c = home.config();
    for d in c["devices"].as_array_mut().unwrap() {
        d["allowedNetworks"] = json!(["127.0.0.3/32"]);
    }
    home.set_config(&c);
    let ours = tmp.path().join("ours");
    home.add_folder("f", &ours, "sendreceive", &[a.id(), b.id()]);
    let node = home.start();

    // B, inside its networks, connects and its file arrives.
    let got_b = wait::until(Duration::from_secs(45), Duration::from_millis(200), || {
        (std::fs::read(ours.join("from-b")).ok()? == b"from-b").then_some(())
    });
    assert!(
        got_b.is_some(),
        "B's file did not arrive:\n{}",
        node.proc.log_tail(30)
    );
    let conns = node.get("/rest/system/connections").unwrap();
    let b_addr = conns["connections"][b.id()]["address"]
        .as_str()
        .unwrap_or("");
    assert!(
        b_addr.starts_with("127.0.0.3:"),
        "B connected from {b_addr:?}"
    );

    // A, outside: its dials are refused before any Hello, ours to it are
    // never made; both with their reason.
    let refused = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        let dial = dial_error(&node, &a_listen)?;
        (refused_by_network(&node) >= 1 && dial.contains("network disallowed")).then_some(dial)
    });
    assert!(
        refused.is_some(),
        "A not refused both ways (forwarded: {}, dial: {:?}):\n{}",
        via_a.accepted.load(Ordering::SeqCst),
        dial_error(&node, &a_listen),
        node.proc.log_tail(30)
    );
    assert!(!node.connected(a.id()));
    assert!(!ours.join("from-a").exists());
    assert!(
        node.proc
            .log()
            .contains("outside the device's allowedNetworks"),
        "the refusal is logged with its reason"
    );
    assert!(a.pending_devices().is_empty());

    // A bad entry is a 400 naming the problem; nothing changes.
    let (ep, key) = (node.home.endpoint(), node.home.api_key.clone());
    let path = format!("/rest/config/devices/{}", a.id());
    let bad = keyed(
        &ep,
        &key,
        "PATCH",
        &path,
        Some(r#"{"allowedNetworks": ["10.0.0.0/33"]}"#),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("CIDR"), "{}", bad.body);
    let shown = keyed(&ep, &key, "GET", &path, None).json();
    assert_eq!(shown["allowedNetworks"], json!(["127.0.0.3/32"]));

    // Emptied over REST: any address again, at the next connection.
    let ok = keyed(
        &ep,
        &key,
        "PATCH",
        &path,
        Some(r#"{"allowedNetworks": []}"#),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let got_a = wait::until(Duration::from_secs(45), Duration::from_millis(200), || {
        (std::fs::read(ours.join("from-a")).ok()? == b"from-a").then_some(())
    });
    assert!(
        got_a.is_some(),
        "A's file did not arrive once allowed:\n{}",
        node.proc.log_tail(30)
    );

    node.stop();
    a.shutdown();
    b.shutdown();
}
