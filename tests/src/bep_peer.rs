//! A hand-driven BEP peer for tests: it sends exactly the frames a test
//! wants (including malformed ones) and reads what our node answers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::bep::wire::{self, Hello};
use proto::bep::{
    decode_frame, decode_hello, encode_frame, encode_hello, Compress, Decoded, Message,
};
use proto::tls::{self, alpn, ServerPin, Versions};
use proto::{DeviceId, Identity};

/// A ClusterConfig sharing `folder` between `devices` (no index IDs: a
/// peer with no index yet).
pub fn cluster_config(folder: &str, devices: &[DeviceId]) -> Message {
    Message::ClusterConfig(wire::ClusterConfig {
        folders: vec![wire::Folder {
            id: folder.into(),
            devices: devices
                .iter()
                .map(|d| wire::Device {
                    id: d.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        secondary: false,
    })
}

/// A TCP connection to `127.0.0.1:port` from the loopback address
/// `source` (Linux routes all of 127.0.0.0/8 to `lo`).
pub fn tcp_from(source: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into(),
        Duration::from_secs(10),
    )?;
    Ok(socket.into())
}

/// Completes the TLS handshake with generous timeouts before the caller's
/// short ones apply: a handshake cut by a short read timeout (a loaded
/// machine) would lose the Hello written with it, and the node would read
/// the next frame as one.
fn handshake(
    mut conn: rustls::ClientConnection,
    mut tcp: TcpStream,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(20)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

pub struct RawPeer {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl RawPeer {
    /// Connects with TLS 1.3 / `bep/1.0` as `identity`; every read waits at
    /// most `read_timeout`.
    pub fn connect(identity: &Identity, port: u16, read_timeout: Duration) -> RawPeer {
        let config = tls::client_config(
            Some(identity),
            &[alpn::BEP],
            ServerPin::Any,
            Versions::Tls13Only,
        )
        .unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), tls::server_name()).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let tls = handshake(conn, tcp).expect("TLS handshake with the node");
        tls.sock.set_read_timeout(Some(read_timeout)).unwrap();
        RawPeer {
            tls,
            buf: Vec::new(),
        }
    }

    /// `connect`, from the loopback address `source` (any of 127/8), so
    /// a test can play many hosts.
    pub fn connect_from(
        identity: &Identity,
        source: Ipv4Addr,
        port: u16,
        read_timeout: Duration,
    ) -> std::io::Result<RawPeer> {
        let config = tls::client_config(
            Some(identity),
            &[alpn::BEP],
            ServerPin::Any,
            Versions::Tls13Only,
        )
        .unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), tls::server_name()).unwrap();
        let tcp = tcp_from(source, port)?;
        let tls = handshake(conn, tcp)?;
        tls.sock.set_read_timeout(Some(read_timeout))?;
        tls.sock.set_write_timeout(Some(read_timeout))?;
        Ok(RawPeer {
            tls,
            buf: Vec::new(),
        })
    }

    /// Sends our Hello and waits (up to 20 s) for the node's.
    pub fn hello(&mut self) {
        self.hello_as("raw");
    }

    /// `hello` with the device name `name`.
    pub fn hello_as(&mut self, name: &str) {
        let hello = Hello {
            device_name: name.into(),
            client_name: "syncthing".into(),
            client_version: "v1.19.2".into(),
            ..Default::default()
        };
        self.send_raw(&encode_hello(&hello).unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((_, used)) = decode_hello(&self.buf).unwrap() {
                self.buf.drain(..used);
                return;
            }
            if !self.fill() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no Hello from the node");
    }

    /// Writes bytes as they are; errors are ignored (the node may have
    /// closed on purpose).
    pub fn send_raw(&mut self, data: &[u8]) {
        let _ = self.tls.write_all(data);
        let _ = self.tls.flush();
    }

    pub fn send(&mut self, m: &Message) {
        self.send_raw(&encode_frame(m, Compress::Metadata).unwrap());
    }

    /// Reads what is there; false on EOF, error or timeout.
    pub fn fill(&mut self) -> bool {
        let mut b = [0u8; 65536];
        match self.tls.read(&mut b) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
        }
    }

    /// The next message, or None when the node closed the connection or
    /// nothing arrived within the read timeout.
    pub fn next_message(&mut self) -> Option<Message> {
        loop {
            if let Ok(Decoded::Frame { message, consumed }) = decode_frame(&self.buf) {
                self.buf.drain(..consumed);
                return Some(message);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads until the node closes; true if it did (a Close, EOF or reset).
    pub fn closed_by_node(&mut self) -> bool {
        for _ in 0..1000 {
            match self.next_message() {
                None | Some(Message::Close(_)) => return true,
                Some(_) => {}
            }
        }
        false
    }

    /// The Response to request `id`, skipping other messages.
    pub fn response(&mut self, id: i32) -> wire::Response {
        for _ in 0..1000 {
            match self.next_message() {
                Some(Message::Response(r)) if r.id == id => return r,
                Some(_) => {}
                None => panic!("closed while waiting for response {id}"),
            }
        }
        panic!("no response {id}");
    }
}
