//! Handshakes driven in memory: no sockets, both ends in one thread.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConnection, Connection, ServerConnection, SignatureScheme};

use super::*;
use crate::identity::KeyKind;

fn identity(kind: KeyKind) -> Identity {
    Identity::generate("syncthing", kind).unwrap()
}

/// Moves TLS records between the two ends until both finish the handshake
/// or one fails. Returns the first error and which side raised it.
fn handshake(
    client: &mut Connection,
    server: &mut Connection,
) -> Result<(), (&'static str, rustls::Error)> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets().map_err(|e| ("server", e))?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().map_err(|e| ("client", e))?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

/// A client builder for hand-made client configurations (one TLS version,
/// any server), to present what our own `client_config` never would.
fn unpinned_client(
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
    let provider = provider();
    ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerCertVerifier::new(
            &provider,
            ServerPin::Any,
        )))
}

fn pair(client: ClientConfig, server: ServerConfig) -> (Connection, Connection) {
    let c = ClientConnection::new(Arc::new(client), server_name()).unwrap();
    let s = ServerConnection::new(Arc::new(server)).unwrap();
    (c.into(), s.into())
}

#[test]
fn mutual_bep_handshake_reveals_both_device_ids() {
    for (ck, sk) in [
        (KeyKind::Ed25519, KeyKind::Ed25519),
        (KeyKind::EcdsaP384, KeyKind::Ed25519),
        (KeyKind::Ed25519, KeyKind::EcdsaP384),
        (KeyKind::EcdsaP384, KeyKind::EcdsaP384),
    ] {
        let (a, b) = (identity(ck), identity(sk));
        let client = client_config(
            Some(&a),
            &[alpn::BEP],
            ServerPin::Device(b.device_id()),
            Versions::Tls13Only,
        )
        .unwrap();
        let server =
            server_config(&b, &[alpn::BEP], ClientCert::Required, Versions::Tls13Only).unwrap();
        let (mut c, mut s) = pair(client, server);
        handshake(&mut c, &mut s).unwrap();
        assert_eq!(peer_device_id(&c), Some(b.device_id()));
        assert_eq!(peer_device_id(&s), Some(a.device_id()));
        assert_eq!(c.alpn_protocol(), Some(alpn::BEP));
        assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    }
}

#[test]
fn pinned_server_with_another_id_is_refused() {
    let (a, b, other) = (
        identity(KeyKind::Ed25519),
        identity(KeyKind::Ed25519),
        identity(KeyKind::Ed25519),
    );
    let client = client_config(
        Some(&a),
        &[alpn::RELAY],
        ServerPin::Device(other.device_id()),
        Versions::Tls13Only,
    )
    .unwrap();
    let server = server_config(
        &b,
        &[alpn::RELAY],
        ClientCert::Required,
        Versions::Tls13Only,
    )
    .unwrap();
    let (mut c, mut s) = pair(client, server);
    let (side, err) = handshake(&mut c, &mut s).unwrap_err();
    assert_eq!(side, "client");
    match peer_cert_error(&err) {
        Some(verify::PeerCertError::WrongDevice { got, expected }) => {
            assert_eq!((*got, *expected), (b.device_id(), other.device_id()));
        }
        e => panic!("{e:?} / {err:?}"),
    }
}

#[test]
fn required_client_certificate_is_enforced() {
    let b = identity(KeyKind::Ed25519);
    let client = client_config(None, &[alpn::BEP], ServerPin::Any, Versions::Tls13Only).unwrap();
    let server =
        server_config(&b, &[alpn::BEP], ClientCert::Required, Versions::Tls13Only).unwrap();
    let (mut c, mut s) = pair(client, server);
    let (side, _) = handshake(&mut c, &mut s).unwrap_err();
    assert_eq!(side, "server");
}

#[test]
fn optional_client_certificate_allows_anonymous_lookups() {
    let b = identity(KeyKind::Ed25519);
    let client = client_config(
        None,
        &[alpn::H2, alpn::HTTP_1_1],
        ServerPin::Any,
        Versions::Tls12AndUp,
    )
    .unwrap();
    let server = server_config(
        &b,
        &[alpn::H2, alpn::HTTP_1_1],
        ClientCert::Optional,
        Versions::Tls12AndUp,
    )
    .unwrap();
    let (mut c, mut s) = pair(client, server);
    handshake(&mut c, &mut s).unwrap();
    assert_eq!(peer_device_id(&s), None);
    assert_eq!(c.alpn_protocol(), Some(alpn::H2));
}

#[test]
fn tls12_client_is_refused_by_bep_server() {
    let (a, b) = (identity(KeyKind::EcdsaP384), identity(KeyKind::EcdsaP384));
    let client = unpinned_client(&rustls::version::TLS12)
        .with_client_auth_cert(vec![a.cert_der().clone()], a.key_der())
        .unwrap();
    let server =
        server_config(&b, &[alpn::BEP], ClientCert::Required, Versions::Tls13Only).unwrap();
    let (mut c, mut s) = pair(client, server);
    assert!(handshake(&mut c, &mut s).is_err());
}

/// Presents one device's certificate with another device's key: the
/// signature check must catch the impostor.
#[derive(Debug)]
struct Impostor(Arc<CertifiedKey>);

impl ResolvesClientCert for Impostor {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[test]
fn stolen_certificate_without_its_key_fails_the_signature_check() {
    for kind in [KeyKind::Ed25519, KeyKind::EcdsaP384] {
        let (victim, thief, server_id) =
            (identity(kind), identity(kind), identity(KeyKind::Ed25519));
        let forged = CertifiedKey::new(
            vec![victim.cert_der().clone()],
            thief.certified_key().key.clone(),
        );
        let client = unpinned_client(&rustls::version::TLS13)
            .with_client_cert_resolver(Arc::new(Impostor(Arc::new(forged))));
        let server = server_config(
            &server_id,
            &[alpn::BEP],
            ClientCert::Required,
            Versions::Tls13Only,
        )
        .unwrap();
        let (mut c, mut s) = pair(client, server);
        let (side, err) = handshake(&mut c, &mut s).unwrap_err();
        assert_eq!(side, "server");
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
            ),
            "{err:?}"
        );
    }
}

#[test]
fn certificate_chains_are_refused() {
    let (a, b) = (identity(KeyKind::Ed25519), identity(KeyKind::Ed25519));
    let client = unpinned_client(&rustls::version::TLS13)
        .with_client_auth_cert(
            vec![a.cert_der().clone(), b.cert_der().clone()],
            a.key_der(),
        )
        .unwrap();
    let server =
        server_config(&b, &[alpn::BEP], ClientCert::Required, Versions::Tls13Only).unwrap();
    let (mut c, mut s) = pair(client, server);
    let (side, err) = handshake(&mut c, &mut s).unwrap_err();
    assert_eq!(side, "server");
    assert!(
        matches!(peer_cert_error(&err), Some(verify::PeerCertError::Chain(2))),
        "{err:?}"
    );
    assert!(peer_cert_error(&err)
        .unwrap()
        .to_string()
        .contains("exactly one"));
}
