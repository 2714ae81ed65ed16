//! Relay helpers: start our `relaysrv` or the real `strelaysrv` on
//! loopback, and a small blocking relay-protocol client built on
//! `proto::relay` and `proto::tls`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
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
        let config = proto::tls::client_config(
            Some(identity),
            &[alpn::RELAY],
            ServerPin::Device(relay),
            Versions::Tls12AndUp,
        )
        .map_err(io::Error::other)?;
        let conn = rustls::ClientConnection::new(Arc::new(config), proto::tls::server_name())
            .map_err(io::Error::other)?;
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
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
