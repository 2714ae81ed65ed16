//! HTTPS for the REST test clients: a ureq TLS connector that trusts
//! exactly one certificate — the node's `https-cert.pem`, read when a
//! connection is made (the node generates it at its first start) — so
//! the REST suites run unchanged over HTTPS.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use proto::tls::{self, ServerPin, Versions};
use proto::{DeviceId, Identity};

/// Where a REST client connects: 127.0.0.1:`port`, plain or HTTPS.
#[derive(Clone)]
pub struct Endpoint {
    pub port: u16,
    pub https: Option<Arc<PinnedCert>>,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.https.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// A ureq agent for this endpoint.
    pub fn agent(&self, builder: ureq::AgentBuilder) -> ureq::Agent {
        match &self.https {
            Some(pin) => builder.tls_connector(pin.clone()).build(),
            None => builder.build(),
        }
    }
}

impl From<u16> for Endpoint {
    fn from(port: u16) -> Endpoint {
        Endpoint { port, https: None }
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(e: &Endpoint) -> Endpoint {
        e.clone()
    }
}

/// Trusts the certificate in `cert` (a PEM file), whatever its names.
pub struct PinnedCert {
    pub cert: PathBuf,
}

impl ureq::TlsConnector for PinnedCert {
    fn connect(
        &self,
        _dns_name: &str,
        mut io: Box<dyn ureq::ReadWrite>,
    ) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let fail = |e: String| io::Error::other(e);
        let der = Identity::load_certificate(&self.cert).map_err(|e| fail(e.to_string()))?;
        // A pin on the certificate's hash (its "device ID"): the one
        // certificate, no CA, no name check.
        let config = tls::client_config(
            None,
            &[b"http/1.1"],
            ServerPin::Device(DeviceId::from_der_cert(&der)),
            Versions::Tls12AndUp,
        )
        .map_err(|e| fail(e.to_string()))?;
        let mut conn = rustls::ClientConnection::new(Arc::new(config), tls::server_name())
            .map_err(|e| fail(e.to_string()))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut io)?;
        }
        Ok(Box::new(TlsStream(rustls::StreamOwned::new(conn, io))))
    }
}

struct TlsStream(rustls::StreamOwned<rustls::ClientConnection, Box<dyn ureq::ReadWrite>>);

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsStream")
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl ureq::ReadWrite for TlsStream {
    fn socket(&self) -> Option<&TcpStream> {
        self.0.sock.socket()
    }
}
