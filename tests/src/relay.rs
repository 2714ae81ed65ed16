//! Relay helpers: start our `relaysrv` or the real `strelaysrv` on
//! loopback, and a small blocking relay-protocol client built on
//! `proto::relay` and `proto::tls`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use proto::relay::{
    ConnectRequest, Header, JoinRelayRequest, JoinSessionRequest, Message, SessionInvitation,
    ShortBytes, HEADER_LEN,
};
use proto::tls::{alpn, ServerPin, Versions};
use proto::{DeviceId, Identity};
use serde_json::Value;

use crate::{pick_port, wait, Proc};

/// A relay server process on 127.0.0.1.
pub struct RelayServer {
    pub proc: Proc,
    pub port: u16,
    pub status_port: u16,
    pub id: DeviceId,
}

impl RelayServer {
    /// Our `relaysrv` with keys in `dir` and `extra` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> RelayServer {
        let (port, status_port) = (pick_port(), pick_port());
        let mut cmd = Command::new(crate::our_binary("relaysrv"));
        cmd.arg("--keys")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--status-srv", &format!("127.0.0.1:{status_port}")])
            .args(["--log-level", "info,relaysrv=debug"])
            .args(extra)
            .env_remove("RELAYSRV_TOKEN");
        Self::launch("relaysrv", cmd, dir, port, status_port)
    }

    /// The real strelaysrv 1.19.2, private (no pool).
    pub fn start_strelaysrv(dir: &Path, extra: &[&str]) -> RelayServer {
        let (port, status_port) = (pick_port(), pick_port());
        let mut cmd = Command::new(crate::require_program("strelaysrv", "syncthing-relaysrv"));
        cmd.arg("-keys")
            .arg(dir)
            .args(["-listen", &format!("127.0.0.1:{port}")])
            .args(["-status-srv", &format!("127.0.0.1:{status_port}")])
            .args(["-pools=", "-nat=false", "-protocol", "tcp4"])
            .args(extra);
        Self::launch("strelaysrv", cmd, dir, port, status_port)
    }

    fn launch(name: &str, cmd: Command, dir: &Path, port: u16, status_port: u16) -> RelayServer {
        std::fs::create_dir_all(dir).expect("relay dir");
        let proc = Proc::spawn(name, cmd, &dir.join(format!("{name}.log")));
        assert!(
            wait::listening(port, Duration::from_secs(20))
                && wait::listening(status_port, Duration::from_secs(5)),
            "{name} did not start:\n{}",
            proc.log_tail(30)
        );
        let cert = Identity::load_certificate(&dir.join("cert.pem")).expect("relay cert");
        RelayServer {
            proc,
            port,
            status_port,
            id: DeviceId::from_der_cert(&cert),
        }
    }

    /// `relay://127.0.0.1:PORT/?id=ID`, what a device needs.
    pub fn uri(&self) -> String {
        format!("relay://127.0.0.1:{}/?id={}", self.port, self.id)
    }

    /// [`RelayServer::uri`] with a join token, what a device listening on
    /// a private relay is configured with (Syncthing since 1.22.1).
    pub fn uri_with_token(&self, token: &str) -> String {
        format!("{}&token={token}", self.uri())
    }

    fn http(&self, path: &str) -> Result<String, String> {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build()
            .get(&format!("http://127.0.0.1:{}{path}", self.status_port))
            .call()
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|e| e.to_string())
    }

    pub fn status(&self) -> Value {
        let body = self.http("/status").expect("status");
        serde_json::from_str(&body).expect("status JSON")
    }

    pub fn metrics(&self) -> String {
        self.http("/metrics").expect("metrics")
    }

    /// Value of one sample line of `/metrics` (e.g. `relaysrv_open_sockets`).
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }

    /// Like [`RelayServer::metric`], `default` when the sample is absent
    /// (a labelled counter appears only once counted).
    pub fn metric_or(&self, sample: &str, default: f64) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(default)
    }

    /// Waits until `f(status)` holds; panics with the last status otherwise.
    pub fn wait_status(&self, what: &str, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let ok = wait::until(limit, Duration::from_millis(50), || {
            last = self.status();
            f(&last).then_some(())
        });
        assert!(ok.is_some(), "{what}: last status {last}");
        last
    }
}

/// Reads one relay frame from a blocking stream.
pub fn read_message(r: &mut impl Read) -> io::Result<Message> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head)?;
    let header = Header::decode(&head).map_err(io::Error::other)?;
    let mut payload = vec![0u8; header.length];
    r.read_exact(&mut payload)?;
    Message::decode(header.kind, &payload).map_err(io::Error::other)
}

pub fn write_message(w: &mut impl Write, msg: &Message) -> io::Result<()> {
    w.write_all(&msg.encode().map_err(io::Error::other)?)?;
    w.flush()
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A protocol-mode (TLS) connection to a relay.
pub struct ProtocolClient {
    pub stream: TlsStream,
}

impl ProtocolClient {
    /// TLS to 127.0.0.1:`port` as `identity`, pinning the relay's ID.
    pub fn connect(port: u16, identity: &Identity, relay: DeviceId) -> io::Result<ProtocolClient> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        Self::over(tcp, identity, relay)
    }

    /// The same from local address `from` (e.g. 127.0.0.2: one test
    /// plays several sources).
    pub fn connect_from(
        from: IpAddr,
        port: u16,
        identity: &Identity,
        relay: DeviceId,
    ) -> io::Result<ProtocolClient> {
        let tcp = tcp_from(from, SocketAddr::from(([127, 0, 0, 1], port)))?;
        Self::over(tcp, identity, relay)
    }

    /// TLS over an established connection to the relay.
    pub fn over(
        tcp: TcpStream,
        identity: &Identity,
        relay: DeviceId,
    ) -> io::Result<ProtocolClient> {
        let config = proto::tls::client_config(
            Some(identity),
            &[alpn::RELAY],
            ServerPin::Device(relay),
            Versions::Tls12AndUp,
        )
        .map_err(io::Error::other)?;
        let conn = rustls::ClientConnection::new(Arc::new(config), proto::tls::server_name())
            .map_err(io::Error::other)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(ProtocolClient { stream })
    }

    pub fn send(&mut self, msg: &Message) -> io::Result<()> {
        write_message(&mut self.stream, msg)
    }

    /// Next message other than Ping (answered with Pong).
    pub fn recv(&mut self) -> io::Result<Message> {
        loop {
            match read_message(&mut self.stream)? {
                Message::Ping => self.send(&Message::Pong)?,
                m => return Ok(m),
            }
        }
    }

    pub fn set_timeout(&mut self, t: Duration) {
        let _ = self.stream.sock.set_read_timeout(Some(t));
    }

    /// JoinRelayRequest (`None` = the 1.19.2 form without token); the reply.
    pub fn join(&mut self, token: Option<&str>) -> io::Result<Message> {
        self.send(&Message::JoinRelayRequest(JoinRelayRequest {
            token: token.map(str::to_owned),
        }))?;
        self.recv()
    }

    /// ConnectRequest; the reply (an invitation or a Response).
    pub fn connect_to(&mut self, target: DeviceId) -> io::Result<Message> {
        self.send(&Message::ConnectRequest(ConnectRequest {
            id: ShortBytes::from_array(*target.as_bytes()),
        }))?;
        self.recv()
    }
}

/// Opens the data connection of an invitation; returns the socket and the
/// relay's reply.
pub fn join_session(port: u16, key: &[u8]) -> io::Result<(TcpStream, Message)> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    write_message(
        &mut tcp,
        &Message::JoinSessionRequest(JoinSessionRequest {
            key: ShortBytes::new(key).map_err(io::Error::other)?,
        }),
    )?;
    let reply = read_message(&mut tcp)?;
    Ok((tcp, reply))
}

/// The invitation inside a message, or a panic naming what came instead.
pub fn invitation(msg: Message) -> SessionInvitation {
    match msg {
        Message::SessionInvitation(i) => i,
        other => panic!("expected a SessionInvitation, got {other:?}"),
    }
}

/// A complete pairing through the relay between a joined device and a
/// dialer: (listener's data socket, dialer's data socket).
pub fn pair(
    port: u16,
    relay: DeviceId,
    listener: &mut ProtocolClient,
    dialer: &Identity,
    target: DeviceId,
) -> (TcpStream, TcpStream) {
    let mut d = ProtocolClient::connect(port, dialer, relay).expect("dialer connects");
    let mine = invitation(d.connect_to(target).expect("connect request"));
    let theirs = invitation(listener.recv().expect("server invitation"));
    assert!(!mine.server_socket && theirs.server_socket);
    let (a, ra) = join_session(port, theirs.key.as_slice()).expect("listener joins");
    let (b, rb) = join_session(port, mine.key.as_slice()).expect("dialer joins");
    assert_eq!(ra, Message::Response(proto::relay::Response::with_code(0)));
    assert_eq!(rb, Message::Response(proto::relay::Response::with_code(0)));
    (a, b)
}

/// A TCP connection to `to` from local address `from` (any port). The
/// standard library cannot bind before connecting; binding 127.0.0.x or an
/// address added to a namespace's `lo` lets one test be several sources.
pub fn tcp_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let (domain, local, local_len) = sockaddr(SocketAddr::new(from, 0));
    let (_, remote, remote_len) = sockaddr(to);
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr
    // buffers live across the calls and their lengths match their family.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Owned from here: closed on every error path.
        let tcp = TcpStream::from_raw_fd(fd);
        let raw = tcp.as_raw_fd();
        if libc::bind(raw, (&raw const local).cast(), local_len) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::connect(raw, (&raw const remote).cast(), remote_len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(tcp)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::c_int, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            (libc::AF_INET, storage, len)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            (libc::AF_INET6, storage, len)
        }
    }
}
