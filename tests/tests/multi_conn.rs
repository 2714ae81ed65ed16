//! Multiple BEP connections per device pair, as Syncthing 2.x makes them,
//! between our node and real Syncthing 1.30.0 and 2.1.3: three
//! connections come up, index traffic stays on the primary, our block
//! requests go over the secondaries, and when the primary's socket is
//! cut a secondary is promoted and the transfer finishes.
//!
//! The peer dials our node through a small TCP proxy of this test, so the
//! test can cut one connection's socket (both sides see it drop, no BEP
//! Close). 1.30.0 must be there; 2.1.3 prints a `SKIPPED` line when it is
//! missing (tests/src/peers.rs).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e::node::{Node, NodeHome};
use e2e::peers::{self, PeerProgram, PeerVersion};
use e2e::syncthing::start_tcp_version;
use e2e::{pick_port, tree, wait};
use serde_json::{json, Value};

const FOLDER: &str = "multi";
const LIMIT: Duration = Duration::from_secs(60);

// ---- a TCP proxy whose connections the test can cut ---------------------

/// Forwards connections on its port to 127.0.0.1:`target`; remembers each
/// (the peer's side, our node's side) so one can be cut.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<(TcpStream, TcpStream)>>>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let port = pick_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let conns: Arc<Mutex<Vec<(TcpStream, TcpStream)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, s, t) = (conns.clone(), stop.clone(), threads.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    })
                };
                let mut t = t.lock().unwrap();
                t.push(pipe(down.try_clone().unwrap(), up.try_clone().unwrap()));
                t.push(pipe(up.try_clone().unwrap(), down.try_clone().unwrap()));
                c.lock().unwrap().push((down, up));
            }
        });
        Proxy {
            port,
            conns,
            stop,
            threads,
            accept: Some(accept),
        }
    }

    fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Cuts the connection our node sees as coming from `address` (the
    /// proxy's own end towards it); returns whether there was one.
    fn cut(&self, address: &str) -> bool {
        let conns = self.conns.lock().unwrap();
        for (down, up) in conns.iter() {
            if up.local_addr().is_ok_and(|a| a.to_string() == address) {
                let _ = down.shutdown(Shutdown::Both);
                let _ = up.shutdown(Shutdown::Both);
                return true;
            }
        }
        false
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (down, up) in self.conns.lock().unwrap().iter() {
            let _ = down.shutdown(Shutdown::Both);
            let _ = up.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

// ---- what our node reports ----------------------------------------------

/// One series of our `/metrics` per connection: (role, connection ID) →
/// value.
fn per_connection(node: &Node, metric: &str) -> BTreeMap<(String, String), u64> {
    let url = format!("http://127.0.0.1:{}/metrics", node.home.gui_port);
    let mut text = String::new();
    if let Ok(r) = ureq::get(&url).set("X-API-Key", &node.home.api_key).call() {
        let _ = r.into_reader().read_to_string(&mut text);
    }
    let label = |line: &str, k: &str| {
        let start = line.find(&format!("{k}=\""))? + k.len() + 2;
        Some(line[start..].split('"').next()?.to_string())
    };
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter_map(|l| {
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some(((label(l, "role")?, label(l, "connection")?), value))
        })
        .collect()
}

/// Sum over the primary and each secondary's value.
fn split(m: &BTreeMap<(String, String), u64>) -> (u64, Vec<u64>) {
    let primary = m
        .iter()
        .filter(|((r, _), _)| r == "primary")
        .map(|(_, v)| v)
        .sum();
    let secondaries = m
        .iter()
        .filter(|((r, _), _)| r == "secondary")
        .map(|(_, v)| *v)
        .collect();
    (primary, secondaries)
}

/// Our `/rest/system/connections` entry for `id`.
fn connection(node: &Node, id: &str) -> Value {
    node.get("/rest/system/connections")
        .map(|c| c["connections"][id].clone())
        .unwrap_or(Value::Null)
}

fn addresses(v: &Value) -> (String, Vec<String>) {
    let s = |v: &Value| v["address"].as_str().unwrap_or_default().to_string();
    let secondaries = v["secondary"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    (s(&v["primary"]), secondaries)
}

/// Waits until our node holds `files` files and needs nothing.
fn wait_synced(node: &Node, files: u64) {
    let mut last = Value::Null;
    let ok = wait::until(LIMIT, Duration::from_millis(200), || {
        let s = node.get(&format!("/rest/db/status?folder={FOLDER}")).ok()?;
        last = s.clone();
        let n = |k: &str| s.get(k).and_then(Value::as_u64);
        (n("globalFiles") == Some(files)
            && n("needTotalItems") == Some(0)
            && n("needBytes") == Some(0))
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "our node not synced: {last}\n{}",
        node.proc.log_tail(30)
    );
}

/// The whole scenario against one peer program.
fn three_connections_with(version: PeerVersion) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let home = NodeHome::generate(&dir.path().join("ours"), "ours");
    let (peer, _) = start_tcp_version(&dir.path().join("peer"), version);
    let proxy = Proxy::start(home.listen_port);

    // Our node waits to be dialed (no address for the peer); it holds one
    // file, so it has an index to send.
    let ours = dir.path().join("ours-folder");
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::write(ours.join("ours.txt"), b"from our node\n").unwrap();
    home.add_device(peer.id(), &[]);
    home.add_folder(FOLDER, &ours, "sendreceive", &[peer.id()]);
    let node = home.start();
    // numConnections is a device setting of ours too, through REST as in
    // Syncthing (0, the default, means 3).
    let ours_for_peer = format!("/rest/config/devices/{}", peer.id());
    assert_eq!(node.get(&ours_for_peer).unwrap()["numConnections"], 0);
    node.send("PATCH", &ours_for_peer, &json!({"numConnections": 3}))
        .unwrap();
    assert_eq!(node.get(&ours_for_peer).unwrap()["numConnections"], 3);

    // The peer dials our node through the proxy, with numConnections 3
    // on its device entry for us.
    let theirs = dir.path().join("peer-folder");
    std::fs::create_dir_all(&theirs).unwrap();
    peer.add_device(&home.id, &[&proxy.address()]);
    peer.send(
        "PATCH",
        &format!("/rest/config/devices/{}", home.id),
        &json!({"numConnections": 3}),
    )
    .expect("numConnections 3 on the peer");
    peer.share_folder(FOLDER, &theirs, "sendreceive", &[&home.id]);

    let three = wait::until(LIMIT, Duration::from_millis(200), || {
        let c = connection(&node, peer.id());
        (c["connected"] == true && addresses(&c).1.len() == 2).then_some(c)
    });
    let c = three.unwrap_or_else(|| {
        panic!(
            "{version}: three connections did not come up: {}\n{}",
            connection(&node, peer.id()),
            node.proc.log_tail(30)
        )
    });
    println!(
        "{version}: three connections after {:?}: {c}",
        started.elapsed()
    );
    assert_eq!(
        c["type"], c["primary"]["type"],
        "flat fields mirror the primary"
    );
    assert_eq!(c["address"], c["primary"]["address"]);

    // 24 MiB to serve: 192 blocks of 128 KiB.
    tree::write_mib_file(&theirs.join("plate.exr"), 24, 1);
    peer.scan(FOLDER);
    wait_synced(&node, 2);
    assert_eq!(
        std::fs::read(ours.join("plate.exr")).unwrap(),
        std::fs::read(theirs.join("plate.exr")).unwrap()
    );
    let requests = split(&per_connection(&node, "node_connection_requests"));
    let sent = split(&per_connection(&node, "node_connection_index_sent"));
    let received = split(&per_connection(&node, "node_connection_index_received"));
    println!("{version}: requests (primary, secondaries) {requests:?}; index messages sent {sent:?}, received {received:?}");
    assert_eq!(requests.0, 0, "{version}: no block request on the primary");
    assert_eq!(requests.1.len(), 2);
    assert!(
        requests.1.iter().sum::<u64>() >= 192,
        "{version}: every block requested"
    );
    assert!(
        requests.1.iter().all(|n| *n > 0),
        "{version}: requests on both secondaries"
    );
    assert!(
        sent.0 > 0 && received.0 > 0,
        "{version}: index traffic on the primary"
    );
    assert!(
        sent.1.iter().chain(&received.1).all(|n| *n == 0),
        "{version}: no index traffic on the secondaries"
    );

    // A larger file; once its blocks are on the way, the primary's socket
    // is cut at the proxy.
    let before = requests.1.iter().sum::<u64>();
    tree::write_mib_file(&theirs.join("comp.exr"), 64, 100);
    peer.scan(FOLDER);
    let (old_primary, old_secondaries) = addresses(&connection(&node, peer.id()));
    let moving = wait::until(LIMIT, Duration::from_millis(50), || {
        let n: u64 = split(&per_connection(&node, "node_connection_requests"))
            .1
            .iter()
            .sum();
        (n > before).then_some(n)
    });
    assert!(moving.is_some(), "{version}: comp.exr not requested");
    assert!(
        proxy.cut(&old_primary),
        "{version}: primary {old_primary} not found at the proxy"
    );
    let cut_at = Instant::now();
    let promoted = wait::until(LIMIT, Duration::from_millis(100), || {
        let (p, _) = addresses(&connection(&node, peer.id()));
        (!p.is_empty() && p != old_primary).then_some(p)
    })
    .unwrap_or_else(|| panic!("{version}: no new primary\n{}", node.proc.log_tail(30)));
    assert!(
        old_secondaries.contains(&promoted),
        "{version}: the new primary {promoted} was a secondary ({old_secondaries:?})"
    );
    wait_synced(&node, 3);
    assert_eq!(
        std::fs::read(ours.join("comp.exr")).unwrap(),
        std::fs::read(theirs.join("comp.exr")).unwrap()
    );
    println!(
        "{version}: promoted {promoted}; comp.exr complete {:?} after the cut",
        cut_at.elapsed()
    );

    // Index traffic goes on over the promoted primary, both ways.
    std::fs::write(theirs.join("after.txt"), b"after the promotion\n").unwrap();
    peer.scan(FOLDER);
    wait_synced(&node, 4);
    std::fs::write(ours.join("ours2.txt"), b"ours, after the promotion\n").unwrap();
    node.post(&format!("/rest/db/scan?folder={FOLDER}"))
        .unwrap();
    peer.wait_synced(FOLDER, 5, LIMIT)
        .unwrap_or_else(|e| panic!("{version}: peer: {e}"));
    let received = split(&per_connection(&node, "node_connection_index_received"));
    assert!(
        received.0 > 0,
        "{version}: index received on the promoted primary"
    );

    let log = peer.proc.log();
    assert!(
        !log.to_lowercase().contains("protocol error"),
        "{version}: the peer saw a protocol error:\n{log}"
    );
    println!("{version}: whole scenario {:?}", started.elapsed());
    node.stop();
    peer.shutdown();
    drop(proxy);
}

#[test]
fn three_connections_with_syncthing_1_30_0() {
    three_connections_with(PeerVersion::V1_30_0);
}

#[test]
fn three_connections_with_syncthing_2_1_3() {
    let test = "three_connections_with_syncthing_2_1_3";
    if peers::available(PeerVersion::V2_1_3, test, PeerProgram::Syncthing) {
        three_connections_with(PeerVersion::V2_1_3);
    }
}
