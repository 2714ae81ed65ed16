//! Certificate verifiers for peers identified by device ID.
//!
//! What is skipped, on purpose: chain building, CA trust, names and validity
//! dates (Syncthing skips them too, and devices' certificates are
//! self-signed). What is never skipped: the certificate must parse, there
//! must be exactly one, and the handshake signature must verify against its
//! public key with one of the provider's algorithms.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::ServerPin;
use crate::device_id::DeviceId;

/// Reason carried in [`CertificateError::Other`] so callers and logs can say
/// exactly why a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerCertError {
    #[error("peer sent {0} certificates; a device presents exactly one")]
    Chain(usize),
    #[error("peer is device {got}, expected {expected}")]
    WrongDevice { got: DeviceId, expected: DeviceId },
}

fn refuse(e: PeerCertError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// Parses the leaf and refuses chains; returns the leaf's device ID.
fn check_leaf(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<DeviceId, Error> {
    if !intermediates.is_empty() {
        return Err(refuse(PeerCertError::Chain(intermediates.len() + 1)));
    }
    // Same parser the signature check uses; refuses garbage early with a
    // clear error.
    rustls::server::ParsedCertificate::try_from(end_entity)?;
    Ok(DeviceId::from_der_cert(end_entity))
}

/// The three signature methods both verifier traits require, identical in
/// both: always the provider's real verification, never a stub.
macro_rules! handshake_signatures_checked_by_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Used by clients to accept a server's self-signed certificate.
#[derive(Debug)]
pub struct PeerCertVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    pin: ServerPin,
}

impl PeerCertVerifier {
    pub fn new(provider: &CryptoProvider, pin: ServerPin) -> Self {
        PeerCertVerifier {
            algorithms: provider.signature_verification_algorithms,
            pin,
        }
    }
}

impl ServerCertVerifier for PeerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let got = check_leaf(end_entity, intermediates)?;
        match self.pin {
            ServerPin::Device(expected) if expected != got => {
                Err(refuse(PeerCertError::WrongDevice { got, expected }))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    handshake_signatures_checked_by_provider!();
}

/// Used by servers to accept a client's self-signed certificate.
#[derive(Debug)]
pub struct PeerClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl PeerClientVerifier {
    pub fn new(provider: &CryptoProvider, mandatory: bool) -> Self {
        PeerClientVerifier {
            algorithms: provider.signature_verification_algorithms,
            mandatory,
        }
    }
}

impl ClientCertVerifier for PeerClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        check_leaf(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures_checked_by_provider!();
}

/// Our reason for refusing a peer's certificate, if `err` carries one; lets
/// logs say "peer is device X, expected Y" rather than rustls' debug text.
pub fn peer_cert_error(err: &Error) -> Option<&PeerCertError> {
    match err {
        Error::InvalidCertificate(CertificateError::Other(other)) => other.0.downcast_ref(),
        _ => None,
    }
}
