//! Helpers for the discovery server tests: start our `discosrv` (and a
//! real `redis-server`), and a small blocking HTTP/1.1 client, over TLS
//! with an optional client certificate or in plain text.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use proto::tls::{self, alpn, ServerPin, Versions};
use proto::{DeviceId, Identity};

use crate::process::Proc;
use crate::programs::{our_binary, require_program};
use crate::{pick_port, wait};

/// A running `discosrv` of ours.
pub struct Discosrv {
    pub proc: Proc,
    pub port: u16,
    pub metrics_port: u16,
    /// None in `--http` mode (no certificate).
    pub id: Option<DeviceId>,
    pub dir: PathBuf,
}

impl Discosrv {
    /// Starts `discosrv` with its certificate and `--db-dir` in `dir`, on
    /// 127.0.0.1 ports of its own, plus `extra` arguments.
    pub fn start(dir: &Path, extra: &[&str]) -> Discosrv {
        Self::start_on(dir, pick_port(), pick_port(), extra)
    }

    pub fn start_on(dir: &Path, port: u16, metrics_port: u16, extra: &[&str]) -> Discosrv {
        Self::start_with(dir, port, metrics_port, extra, |_| {})
    }

    /// [`Discosrv::start_on`] with a last change to the command (e.g. a
    /// `pre_exec` lowering a limit).
    pub fn start_with(
        dir: &Path,
        port: u16,
        metrics_port: u16,
        extra: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Discosrv {
        std::fs::create_dir_all(dir).expect("create discosrv dir");
        let mut cmd = Command::new(our_binary("discosrv"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"))
            .arg("--db-dir")
            .arg(dir.join("db"))
            .arg("--log-level")
            .arg("info,discosrv=debug")
            .args(extra);
        for (k, _) in std::env::vars() {
            if k.starts_with("DISCOSRV_") {
                cmd.env_remove(k);
            }
        }
        tweak(&mut cmd);
        let mut proc = Proc::spawn("discosrv", cmd, &dir.join("discosrv.log"));
        // Both ports: a test may talk to either first.
        let up = wait::listening(port, Duration::from_secs(20))
            && wait::listening(metrics_port, Duration::from_secs(20));
        assert!(
            up && proc.alive(),
            "discosrv did not start:\n{}",
            proc.log_tail(30)
        );
        let http = extra.contains(&"--http");
        let id = (!http).then(|| {
            let log = proc.log();
            let id = log
                .lines()
                .rev()
                .find_map(|l| l.split("Server device ID is ").nth(1))
                .unwrap_or_else(|| panic!("no server device ID printed:\n{log}"));
            id.trim().parse().expect("printed device ID parses")
        });
        Discosrv {
            proc,
            port,
            metrics_port,
            id,
            dir: dir.to_path_buf(),
        }
    }

    /// The URL Syncthing is configured with (pinned by device ID).
    pub fn url(&self) -> String {
        let id = self.id.expect("TLS mode");
        format!("https://127.0.0.1:{}/?id={id}", self.port)
    }

    pub fn request(
        &self,
        who: Option<&Identity>,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> Reply {
        https(self.port, self.id, who, method, target, &[], body)
    }

    pub fn announce(&self, who: &Identity, addresses: &[&str]) -> Reply {
        let body = serde_json::json!({ "addresses": addresses }).to_string();
        self.request(Some(who), "POST", "/", body.as_bytes())
    }

    pub fn lookup(&self, device: &str) -> Reply {
        self.request(None, "GET", &format!("/?device={device}"), b"")
    }

    pub fn metrics(&self) -> String {
        let r = plain(self.metrics_port, "GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        r.text()
    }

    /// SIGTERM and wait; panics if it does not stop cleanly in time.
    pub fn stop(mut self) -> Proc {
        let status = self.proc.stop(Duration::from_secs(15));
        assert!(
            status.is_some_and(|s| s.success()),
            "discosrv did not stop cleanly ({status:?}):\n{}",
            self.proc.log_tail(30)
        );
        self.proc
    }
}

/// An HTTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An integer header such as `Retry-After`.
    pub fn secs(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.parse().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// The `addresses` of a lookup reply.
    pub fn addresses(&self) -> Vec<String> {
        self.json()["addresses"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 request over TLS to 127.0.0.1:`port`, pinning the server's
/// device ID when given, with `who`'s certificate when given.
pub fn https(
    port: u16,
    server: Option<DeviceId>,
    who: Option<&Identity>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    https_from(None, port, server, who, method, target, headers, body)
}

/// [`https`] from a chosen loopback source address (127.0.0.2, …), to be
/// another client than 127.0.0.1 for per-source limits.
#[allow(clippy::too_many_arguments)]
pub fn https_from(
    source: Option<std::net::IpAddr>,
    port: u16,
    server: Option<DeviceId>,
    who: Option<&Identity>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let pin = server.map(ServerPin::Device).unwrap_or(ServerPin::Any);
    let config = tls::client_config(who, &[alpn::HTTP_1_1], pin, Versions::Tls12AndUp)
        .expect("client config");
    let conn =
        rustls::ClientConnection::new(Arc::new(config), tls::server_name()).expect("client conn");
    let sock = connect_from(source, port);
    let mut stream = rustls::StreamOwned::new(conn, sock);
    exchange(&mut stream, method, target, headers, body)
}

/// A TLS connection speaking HTTP/2 (ALPN h2, preface and SETTINGS sent)
/// that then stays silent, from `source` when given; None when the server
/// closes or refuses it.
pub fn idle_h2(
    port: u16,
    source: Option<std::net::IpAddr>,
) -> Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let config = tls::client_config(None, &[alpn::H2], ServerPin::Any, Versions::Tls12AndUp)
        .expect("client config");
    let conn =
        rustls::ClientConnection::new(Arc::new(config), tls::server_name()).expect("client conn");
    let sock = connect_from(source, port);
    let mut stream = rustls::StreamOwned::new(conn, sock);
    // Preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).ok()?;
    stream.flush().ok()?;
    // The server's SETTINGS arrive on an accepted connection.
    let mut first = [0u8; 9];
    stream.read_exact(&mut first).ok()?;
    Some(stream)
}

/// A kept-alive HTTP/1.1 connection over TLS to 127.0.0.1, for load:
/// requests one after the other, every failure returned (the server may
/// close it at any time), never a panic.
pub struct KeepAlive {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    /// Bytes read past the last reply.
    buf: Vec<u8>,
}

impl KeepAlive {
    /// Connects and completes the TLS handshake, with `who`'s certificate
    /// when given, pinning `server` when given.
    pub fn connect(
        port: u16,
        server: Option<DeviceId>,
        who: Option<&Identity>,
    ) -> std::io::Result<KeepAlive> {
        let pin = server.map(ServerPin::Device).unwrap_or(ServerPin::Any);
        let config = tls::client_config(who, &[alpn::HTTP_1_1], pin, Versions::Tls12AndUp)
            .map_err(std::io::Error::other)?;
        let conn = rustls::ClientConnection::new(Arc::new(config), tls::server_name())
            .map_err(std::io::Error::other)?;
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(15)))?;
        sock.set_write_timeout(Some(Duration::from_secs(15)))?;
        let mut stream = rustls::StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(KeepAlive {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends bytes as they are (a partial request, for slow clients).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// One request on the connection; the reply's status.
    pub fn request(&mut self, method: &str, target: &str, body: &[u8]) -> std::io::Result<u16> {
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.send_raw(&req)?;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, head.clone());
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        // The server's bodies all have a known length.
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .map_or(Ok(0), |(_, v)| v.trim().parse().map_err(|_| bad()))?;
        while self.buf.len() < end + len {
            self.fill()?;
        }
        self.buf.drain(..end + len);
        Ok(status)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// One HTTP/1.1 request in plain text.
pub fn plain(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut sock = connect(port);
    exchange(&mut sock, method, target, headers, body)
}

fn connect(port: u16) -> TcpStream {
    connect_from(None, port)
}

/// A TCP connection to 127.0.0.1:`port`, from `source` when given (any
/// 127.0.0.0/8 address works on Linux without configuration).
pub fn connect_from(source: Option<std::net::IpAddr>, port: u16) -> TcpStream {
    let sock = match source {
        None => TcpStream::connect(("127.0.0.1", port)).expect("connect"),
        Some(ip) => {
            use socket2::{Domain, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            s.bind(&std::net::SocketAddr::new(ip, 0).into())
                .expect("bind the source address");
            s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
                .expect("connect");
            s.into()
        }
    };
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    sock
}

fn exchange(
    s: &mut impl ReadWrite,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    // A caller-given Content-Length (or chunked encoding) wins, to test
    // what the server does with a declared size.
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if !framed {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send request");
    // The server may answer (e.g. 413) before reading a large body.
    let _ = s.write_all(body);
    let _ = s.flush();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

/// A real `redis-server` on 127.0.0.1, no persistence.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        Self::start_on(dir, pick_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Redis {
        std::fs::create_dir_all(dir).expect("redis dir");
        let mut cmd = Command::new(require_program("redis-server", "redis-server"));
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir);
        let mut proc = Proc::spawn("redis-server", cmd, &dir.join(format!("redis-{port}.log")));
        assert!(
            wait::listening(port, Duration::from_secs(20)) && proc.alive(),
            "redis-server did not start:\n{}",
            proc.log_tail(20)
        );
        Redis {
            proc,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it hard (SIGKILL), as a crash would.
    pub fn kill(mut self) -> (PathBuf, u16) {
        self.proc.signal(libc::SIGKILL);
        let _ = self.proc.wait_exit(Duration::from_secs(10));
        (self.dir.clone(), self.port)
    }
}

/// A real nginx terminating TLS on 127.0.0.1 in front of a `--http`
/// discosrv, forwarding the client certificate and address the way the
/// discosrv documentation tells operators to.
pub struct Nginx {
    pub proc: Proc,
    pub port: u16,
    /// Device ID of nginx's certificate, which clients pin with `?id=`.
    pub id: DeviceId,
}

/// The lines of the README's nginx snippet that remove the other proxies'
/// certificate headers a client may send itself.
pub const NGINX_CLEAR_OTHER_CERT_HEADERS: &str = r#"proxy_set_header X-Tls-Client-Cert-Der-Base64 "";
            proxy_set_header X-Forwarded-Tls-Client-Cert "";"#;

impl Nginx {
    /// nginx with the documented configuration.
    pub fn start(dir: &Path, upstream_port: u16) -> Nginx {
        Self::start_with(
            dir,
            upstream_port,
            "$remote_addr",
            NGINX_CLEAR_OTHER_CERT_HEADERS,
        )
    }

    /// nginx with `xff` as the value of X-Forwarded-For (e.g.
    /// `$proxy_add_x_forwarded_for`, which appends to the client's) and
    /// `extra` directives in its `location` in place of the lines clearing
    /// the other certificate headers (e.g. "" for the configuration
    /// documented before issue 14).
    pub fn start_with(dir: &Path, upstream_port: u16, xff: &str, extra: &str) -> Nginx {
        let nginx = require_program("nginx", "nginx-light");
        std::fs::create_dir_all(dir).expect("nginx dir");
        let identity =
            Identity::generate("syncthing", proto::KeyKind::EcdsaP384).expect("nginx cert");
        identity
            .save(&dir.join("cert.pem"), &dir.join("key.pem"))
            .expect("save nginx cert");
        let port = pick_port();
        let d = dir.display();
        let conf = format!(
            r#"worker_processes 1;
daemon off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_verify_client optional_no_ca;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_set_header X-Forwarded-For {xff};
            proxy_set_header X-Client-Port $remote_port;
            proxy_set_header X-SSL-Cert $ssl_client_escaped_cert;
            {extra}
        }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut cmd = Command::new(nginx);
        cmd.arg("-p").arg(dir).arg("-c").arg(&conf_path);
        let mut proc = Proc::spawn("nginx", cmd, &dir.join("nginx.out"));
        assert!(
            wait::listening(port, Duration::from_secs(20)) && proc.alive(),
            "nginx did not start:\n{}\n{}",
            proc.log_tail(20),
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Nginx {
            proc,
            port,
            id: identity.device_id(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/?id={}", self.port, self.id)
    }
}
