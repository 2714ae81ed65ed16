//! Helpers for the connection tests (`tests/connect.rs`): the real
//! `stdiscosrv`, a tiny DNS server on loopback, a switchable TCP forwarder
//! (a direct address that becomes reachable later) and our node configured
//! over REST.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::DeviceId;
use serde_json::{json, Value};

use crate::discovery::{https, Reply};
use crate::node::Node;
use crate::{pick_port, require_program, wait, Proc};

/// The real stdiscosrv 1.19.2 on 127.0.0.1.
pub struct Stdiscosrv {
    pub proc: Proc,
    pub port: u16,
    pub id: DeviceId,
}

impl Stdiscosrv {
    pub fn start(dir: &Path) -> Stdiscosrv {
        std::fs::create_dir_all(dir).expect("stdiscosrv dir");
        let port = pick_port();
        let mut cmd = Command::new(require_program("stdiscosrv", "syncthing-discosrv"));
        cmd.arg(format!("-listen=127.0.0.1:{port}"))
            .arg(format!("-cert={}", dir.join("cert.pem").display()))
            .arg(format!("-key={}", dir.join("key.pem").display()))
            .arg(format!("-db-dir={}", dir.join("discovery.db").display()))
            .arg(format!("-replication-listen=127.0.0.1:{}", pick_port()))
            .arg("-debug");
        let mut proc = Proc::spawn("stdiscosrv", cmd, &dir.join("stdiscosrv.log"));
        assert!(
            wait::listening(port, Duration::from_secs(20)) && proc.alive(),
            "stdiscosrv did not start:\n{}",
            proc.log_tail(20)
        );
        let id = wait::until(Duration::from_secs(10), Duration::from_millis(50), || {
            proc.log()
                .lines()
                .find_map(|l| l.split("Server device ID is ").nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| panic!("no device ID printed:\n{}", proc.log_tail(20)));
        Stdiscosrv {
            proc,
            port,
            id: id.trim().parse().expect("server device ID"),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/?id={}", self.port, self.id)
    }
}

/// Looks `device` up on a discovery server on 127.0.0.1:`port`.
pub fn lookup(port: u16, server: DeviceId, device: &str) -> Reply {
    https(
        port,
        Some(server),
        None,
        "GET",
        &format!("/?device={device}"),
        &[],
        b"",
    )
}

/// Waits until a discovery server returns addresses for `device`.
pub fn wait_announced(port: u16, server: DeviceId, device: &str, limit: Duration) -> Vec<String> {
    wait::until(limit, Duration::from_millis(250), || {
        let r = lookup(port, server, device);
        (r.status == 200).then(|| r.addresses())
    })
    .unwrap_or_else(|| panic!("{device} never announced to the discovery server"))
}

/// Our node over REST: PATCH options.
pub fn set_node_options(node: &Node, options: Value) {
    node.send("PATCH", "/rest/config/options", &options)
        .expect("patch options");
}

/// Adds a device to our node over REST.
pub fn add_node_device(node: &Node, id: &str, addresses: &[&str]) {
    node.send(
        "POST",
        "/rest/config/devices",
        &json!({"deviceID": id, "name": id, "addresses": addresses}),
    )
    .expect("add device");
}

/// Shares a folder of our node with `peers` over REST.
pub fn add_node_folder(node: &Node, id: &str, path: &Path, peers: &[&str]) {
    std::fs::create_dir_all(path).expect("folder dir");
    let devices: Vec<Value> = peers.iter().map(|p| json!({ "deviceID": p })).collect();
    node.send(
        "POST",
        "/rest/config/folders",
        &json!({"id": id, "label": id, "path": path, "type": "sendreceive",
                "devices": devices, "rescanIntervalS": 3600}),
    )
    .expect("add folder");
}

/// Our node's connection to `id`: (type, address) once connected.
pub fn node_connection(node: &Node, id: &str) -> Option<(String, String)> {
    let c = node.get("/rest/system/connections").ok()?;
    let conn = c.get("connections")?.get(id)?;
    if conn.get("connected")?.as_bool()? {
        Some((
            conn.get("type")?.as_str()?.to_string(),
            conn.get("address")?.as_str()?.to_string(),
        ))
    } else {
        None
    }
}

/// A DNS server on 127.0.0.1 (UDP) answering A and SRV questions from a
/// table; everything else gets NXDOMAIN. Records every question.
pub struct DnsServer {
    pub port: u16,
    pub questions: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

/// One answer: an IPv4 address or an SRV target.
#[derive(Clone)]
pub enum Record {
    A(Ipv4Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

impl DnsServer {
    /// `records`: lower-case name without the final dot → answers.
    pub fn start(records: Vec<(String, Record)>) -> DnsServer {
        let port = pick_port();
        let sock = UdpSocket::bind(("127.0.0.1", port)).expect("bind DNS");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let questions = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (q2, s2) = (questions.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((reply, question)) = answer(&buf[..n], &records) {
                    q2.lock().unwrap().push(question);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        DnsServer {
            port,
            questions,
            stop,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// Builds the reply to one query (RFC 1035 layout, no compression).
fn answer(q: &[u8], records: &[(String, Record)]) -> Option<(Vec<u8>, String)> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_string());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".").to_ascii_lowercase();
    let matching: Vec<&Record> = records
        .iter()
        .filter(|(n, r)| {
            *n == name && matches!((r, qtype), (Record::A(_), 1) | (Record::Srv { .. }, 33))
        })
        .map(|(_, r)| r)
        .collect();
    let known = records.iter().any(|(n, _)| *n == name);
    let mut out = Vec::new();
    out.extend_from_slice(&q[0..2]);
    // QR, RD copied, RA; NXDOMAIN for unknown names.
    let rcode = if known { 0 } else { 3 };
    out.extend_from_slice(&[0x81 | (q[2] & 0x01), 0x80 | rcode]);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(matching.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q[12..question_end]);
    for r in matching {
        put_name(&mut out, &name);
        let mut rdata = Vec::new();
        let rtype: u16 = match r {
            Record::A(ip) => {
                rdata.extend_from_slice(&ip.octets());
                1
            }
            Record::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                rdata.extend_from_slice(&priority.to_be_bytes());
                rdata.extend_from_slice(&weight.to_be_bytes());
                rdata.extend_from_slice(&port.to_be_bytes());
                put_name(&mut rdata, target);
                33
            }
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&30u32.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some((out, format!("{name}/{qtype}")))
}

/// Forwards 127.0.0.1:`port` to 127.0.0.1:`target` once started; until
/// then nothing listens on `port` (connections are refused).
pub struct Forwarder {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    pub fn reserve() -> Forwarder {
        Forwarder {
            port: pick_port(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn start(&self, target: u16) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind forwarder");
        listener.set_nonblocking(true).unwrap();
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((a, _)) => {
                        let _ = a.set_nonblocking(false);
                        if let Ok(b) = TcpStream::connect(("127.0.0.1", target)) {
                            pipe(a, b, stop.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(a: TcpStream, b: TcpStream, stop: Arc<AtomicBool>) {
    for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// A TCP server on 127.0.0.1 that accepts and then says nothing, ever
/// (a hanging discovery server or relay). Connections are held until drop.
pub struct HangServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl HangServer {
    pub fn start() -> HangServer {
        let port = pick_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) if held.len() < 100 => held.push(c),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HangServer { port, stop }
    }
}

impl Drop for HangServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a hostile TLS server does with the `n`th connection (0-based).
pub type Behaviour =
    dyn Fn(usize, &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>) + Send + Sync;

/// A TLS server on 127.0.0.1 (its own certificate, `alpn`) handing each
/// connection to `behaviour`. Counts connections.
pub struct HostileTls {
    pub port: u16,
    pub id: DeviceId,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HostileTls {
    pub fn start(alpn: &[u8], behaviour: Box<Behaviour>) -> HostileTls {
        let identity =
            proto::Identity::generate("hostile", proto::KeyKind::Ed25519).expect("identity");
        let id = identity.device_id();
        let config = Arc::new(
            proto::tls::server_config(
                &identity,
                &[alpn],
                proto::tls::ClientCert::Optional,
                proto::tls::Versions::Tls12AndUp,
            )
            .expect("server config"),
        );
        let port = pick_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s2, c2) = (stop.clone(), connections.clone());
        let behaviour: Arc<Behaviour> = Arc::from(behaviour);
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let n = c2.fetch_add(1, Ordering::Relaxed);
                let (config, behaviour) = (config.clone(), behaviour.clone());
                std::thread::spawn(move || {
                    let _ = tcp.set_nonblocking(false);
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(15)));
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut s = rustls::StreamOwned::new(conn, tcp);
                    while s.conn.is_handshaking() {
                        if s.conn.complete_io(&mut s.sock).is_err() {
                            return;
                        }
                    }
                    behaviour(n, &mut s);
                    let _ = s.flush();
                });
            }
        });
        HostileTls {
            port,
            id,
            connections,
            stop,
        }
    }
}

impl Drop for HostileTls {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A private CA (`ca.pem`) and, in `dir`, `cert.pem`/`key.pem` it signed
/// for the host name `localhost` (made with openssl).
pub fn private_ca(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("ca dir");
    let openssl = require_program("openssl", "openssl");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Studio Test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    dir.join("ca.pem")
}
