//! rustls configurations for devices that authenticate each other by device
//! ID rather than through a certificate authority.
//!
//! Both sides present a self-signed certificate. The verifiers in `verify.rs`
//! accept any well-formed single certificate, but the handshake signature is
//! always checked with rustls' own algorithms, so a peer proves it holds the
//! private key of the certificate whose hash becomes its [`DeviceId`]. The
//! caller pins that ID: after the handshake with [`peer_device_id`], or
//! during it with [`ServerPin::Device`].

mod verify;

use std::sync::Arc;

use rustls::{ClientConfig, CommonState, ServerConfig, SupportedProtocolVersion};

use crate::device_id::DeviceId;
use crate::identity::Identity;

pub use verify::{peer_cert_error, PeerCertError, PeerCertVerifier, PeerClientVerifier};

/// ALPN protocol names of the Syncthing protocols.
pub mod alpn {
    /// Block Exchange Protocol between devices.
    pub const BEP: &[u8] = b"bep/1.0";
    /// Relay protocol mode (not data mode, which is plain TCP).
    pub const RELAY: &[u8] = b"bep-relay";
    pub const H2: &[u8] = b"h2";
    pub const HTTP_1_1: &[u8] = b"http/1.1";
}

/// Whether a server insists on a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert {
    /// BEP and the relay's protocol mode: no certificate, no connection.
    Required,
    /// Global discovery: lookups come without a certificate, announcements
    /// with one.
    Optional,
}

/// TLS versions offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// BEP: Syncthing 1.19.2 refuses TLS 1.2 by default, newer ones always.
    Tls13Only,
    /// HTTPS services (discovery), where older clients may still use 1.2.
    Tls12AndUp,
}

/// What a client requires of the server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerPin {
    /// Any certificate; the caller checks [`peer_device_id`] afterwards.
    Any,
    /// Fail the handshake unless the server's device ID is this one (the
    /// `?id=` of a discovery or relay URL).
    Device(DeviceId),
}

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub use crate::crypto::provider;

fn versions(v: Versions) -> &'static [&'static SupportedProtocolVersion] {
    static TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static TLS12_UP: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    match v {
        Versions::Tls13Only => &TLS13,
        Versions::Tls12AndUp => &TLS12_UP,
    }
}

/// A server configuration presenting `identity`, asking clients for their
/// certificate, and negotiating one of `alpn` when the client offers ALPN.
pub fn server_config(
    identity: &Identity,
    alpn: &[&[u8]],
    client_cert: ClientCert,
    tls_versions: Versions,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier = PeerClientVerifier::new(&provider, client_cert == ClientCert::Required);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls_versions))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![identity.cert_der().clone()], identity.key_der())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Syncthing disables resumption; a resumed session would also have to
    // carry the client's certificate for the device ID.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A server configuration for a web service (the node's GUI/REST port):
/// presents `identity`, asks clients for no certificate (a browser would
/// prompt for one), TLS 1.2 and 1.3 as browsers and tools speak them.
pub fn web_server_config(identity: &Identity, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(Versions::Tls12AndUp))?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert_der().clone()], identity.key_der())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration presenting `identity` (if any), offering `alpn`.
pub fn client_config(
    identity: Option<&Identity>,
    alpn: &[&[u8]],
    pin: ServerPin,
    tls_versions: Versions,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PeerCertVerifier::new(&provider, pin);
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls_versions))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(vec![id.cert_der().clone()], id.key_der())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The device ID of the peer's certificate, once the handshake is done; None
/// when the peer sent no certificate.
pub fn peer_device_id(state: &CommonState) -> Option<DeviceId> {
    state
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| DeviceId::from_der_cert(cert))
}

/// Where TLS connections are made: the server name to send. Peers are
/// identified by device ID, so the name only has to be syntactically valid.
pub fn server_name() -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::DnsName(
        rustls_pki_types::DnsName::try_from("syncthing").unwrap_or_else(|_| unreachable!()),
    )
}

#[cfg(test)]
mod tests;
