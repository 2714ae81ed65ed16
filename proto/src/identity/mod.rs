//! A device's identity: its certificate and private key.
//!
//! The certificate is self-signed and only serves to carry a public key; peers
//! pin it by [`DeviceId`] (its SHA-256), never through a certificate
//! authority. Identities are generated with [`Identity::generate`], read from
//! PEM with [`Identity::from_pem`], and kept in `cert.pem`/`key.pem` by
//! [`Identity::load`] / [`Identity::save`] (see `files.rs`).

mod files;
mod generate;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::device_id::DeviceId;

pub use files::LoadedOrGenerated;
pub use generate::{KeyKind, COMMON_NAME_SYNCTHING};

/// Why an identity could not be generated, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    // The inner errors are part of the message rather than `source()`, so
    // printing the chain does not say the same thing twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    InFile {
        path: PathBuf,
        error: Box<IdentityError>,
    },
    #[error("no PEM \"CERTIFICATE\" block found; is this a certificate file?")]
    NoCertificate,
    #[error("not a valid X.509 certificate: {0}")]
    BadCertificate(String),
    #[error("no PEM private key block found (\"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\"); is this a key file?")]
    NoPrivateKey,
    #[error(
        "unsupported private key (a device key must be ECDSA P-256/P-384, Ed25519 or RSA): {0}"
    )]
    UnsupportedKey(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("{cert} exists but {key} does not (or the reverse); restore the missing file, or move both away to create a new identity (a new identity changes the device ID)")]
    HalfPresent { cert: PathBuf, key: PathBuf },
    #[error("generating a certificate failed: {0}")]
    Generate(String),
}

/// A certificate and the private key that belongs to it, checked to match.
#[derive(Clone, Debug)]
pub struct Identity {
    cert_der: CertificateDer<'static>,
    /// PKCS#8, SEC1 or PKCS#1 as read; re-encoded only by `to_pem`.
    key_der: Arc<PrivateKeyDer<'static>>,
    certified: Arc<CertifiedKey>,
    device_id: DeviceId,
}

impl Identity {
    /// Builds an identity from DER parts, checking that the certificate parses
    /// and that the key is supported and matches the certificate.
    pub fn from_der(
        cert_der: CertificateDer<'static>,
        key_der: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let signing_key = crate::crypto::provider()
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|e| IdentityError::UnsupportedKey(e.to_string()))?;
        let certified = CertifiedKey::new(vec![cert_der.clone()], signing_key);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(IdentityError::KeyMismatch)
            }
            Err(e) => return Err(IdentityError::BadCertificate(e.to_string())),
        }
        let device_id = DeviceId::from_der_cert(&cert_der);
        Ok(Identity {
            cert_der,
            key_der: Arc::new(key_der),
            certified: Arc::new(certified),
            device_id,
        })
    }

    /// From the contents of `cert.pem` and `key.pem`. The first certificate
    /// in the file is the device's; keys may be PKCS#8 (`PRIVATE KEY`), SEC1
    /// (`EC PRIVATE KEY`, as Syncthing 1.x writes) or PKCS#1.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        let cert_der = cert_from_pem(cert_pem)?;
        let key_der = key_from_pem(key_pem)?;
        Self::from_der(cert_der, key_der)
    }

    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key_der.clone_key()
    }

    /// The certificate and signing key, ready for a rustls resolver.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The subject common name, if the certificate has one. Syncthing compares
    /// it with a device's configured `certName` (default `syncthing`).
    pub fn common_name(&self) -> Option<String> {
        common_name(&self.cert_der)
    }

    /// When the certificate stops being valid (Unix seconds), if it parses.
    pub fn not_after_unix(&self) -> Option<i64> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// Whether the certificate looks like one Syncthing (or this project)
    /// generated: self-signed, `OU=Automatically Generated`. Such a
    /// certificate may be replaced when it expires; one an operator put in
    /// place never is.
    pub fn is_auto_generated(&self) -> bool {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(&self.cert_der) else {
            return false;
        };
        cert.subject() == cert.issuer()
            && cert
                .subject()
                .iter_organizational_unit()
                .any(|ou| ou.as_str() == Ok("Automatically Generated"))
    }

    pub fn cert_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.cert_der)
    }

    pub fn key_pem(&self) -> String {
        let label = match &*self.key_der {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        to_pem(label, self.key_der.secret_der())
    }
}

/// The subject CN of a DER certificate, if it parses and has one.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn cert_from_pem(pem: &[u8]) -> Result<CertificateDer<'static>, IdentityError> {
    match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(cert)) => Ok(cert),
        Some(Err(e)) => Err(IdentityError::BadCertificate(e.to_string())),
        None => Err(IdentityError::NoCertificate),
    }
}

fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, IdentityError> {
    use rustls_pki_types::pem::Error as PemError;
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(PemError::NoItemsFound) => Err(IdentityError::NoPrivateKey),
        Err(e) => Err(IdentityError::UnsupportedKey(e.to_string())),
    }
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SYNCTHING_CERT: &str = "-----BEGIN CERTIFICATE-----
MIICHjCCAaOgAwIBAgIJAOVjTf3MWrVZMAoGCCqGSM49BAMCMEoxEjAQBgNVBAoT
CVN5bmN0aGluZzEgMB4GA1UECxMXQXV0b21hdGljYWxseSBHZW5lcmF0ZWQxEjAQ
BgNVBAMTCXN5bmN0aGluZzAeFw0yNjExMjIwMDAwMDBaFw00NjExMTcwMDAwMDBa
MEoxEjAQBgNVBAoTCVN5bmN0aGluZzEgMB4GA1UECxMXQXV0b21hdGljYWxseSBH
ZW5lcmF0ZWQxEjAQBgNVBAMTCXN5bmN0aGluZzB2MBAGByqGSM49AgEGBSuBBAAi
A2IABOx8Y1A7kilZYyxuDbzgEpY5pgUetE1fnjqZHq3uJ+IoVufouCmQIZVMZAg8
TbtvNoe4eqL/Gp8VgJctSo/ctJUi28j7fonO+2v4F1JckXCIiWbldCoVa/EsU7Xd
H6PWBaNVMFMwDgYDVR0PAQH/BAQDAgWgMB0GA1UdJQQWMBQGCCsGAQUFBwMBBggr
BgEFBQcDAjAMBgNVHRMBAf8EAjAAMBQGA1UdEQQNMAuCCXN5bmN0aGluZzAKBggq
hkjOPQQDAgNpADBmAjEA8I3BIonDCkUOFOwqy1qrMQUjB3WZUjXCHjoSRjQVCqXW
8iNcqIzXr0DsYNkLJxQZAjEA2AgfT8G7Ck2c2vTrT558X13r+UCLesnDvHUdTdr1
ZN84XkTiQ0/3IwS1ZLnIdYMM
-----END CERTIFICATE-----
";

    #[test]
    fn pem_round_trip_keeps_device_id() {
        for kind in [KeyKind::Ed25519, KeyKind::EcdsaP384] {
            let id = Identity::generate(COMMON_NAME_SYNCTHING, kind).unwrap();
            let again =
                Identity::from_pem(id.cert_pem().as_bytes(), id.key_pem().as_bytes()).unwrap();
            assert_eq!(again.device_id(), id.device_id());
            assert_eq!(again.common_name().as_deref(), Some("syncthing"));
        }
    }

    #[test]
    fn malformed_pem_is_a_clear_error() {
        let id = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
        let key = id.key_pem();
        let cases: [(&[u8], &[u8]); 5] = [
            (b"", key.as_bytes()),
            (b"hello world", key.as_bytes()),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                key.as_bytes(),
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                key.as_bytes(),
            ),
            // Truncated: the END line is missing.
            (
                &SYNCTHING_CERT.as_bytes()[..SYNCTHING_CERT.len() - 30],
                key.as_bytes(),
            ),
        ];
        for (cert, key) in cases {
            let err = Identity::from_pem(cert, key).unwrap_err();
            assert!(
                matches!(
                    err,
                    IdentityError::NoCertificate | IdentityError::BadCertificate(_)
                ),
                "{err:?}"
            );
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn wrong_or_missing_key_is_a_clear_error() {
        let a = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
        let b = Identity::generate("syncthing", KeyKind::EcdsaP384).unwrap();
        let c = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
        // A key of another type than the certificate's.
        let err = Identity::from_pem(a.cert_pem().as_bytes(), b.key_pem().as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch), "{err:?}");
        // A key of the same type that belongs to another certificate.
        let err = Identity::from_pem(a.cert_pem().as_bytes(), c.key_pem().as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch), "{err:?}");
        // The certificate given as key.
        let err = Identity::from_pem(a.cert_pem().as_bytes(), a.cert_pem().as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::NoPrivateKey), "{err:?}");
        // A key block with garbage inside.
        let err = Identity::from_pem(
            a.cert_pem().as_bytes(),
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::UnsupportedKey(_)), "{err:?}");
        // A DSA key: a type no device uses.
        let dsa = "-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n";
        let err = Identity::from_pem(a.cert_pem().as_bytes(), dsa.as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::NoPrivateKey), "{err:?}");
    }

    #[test]
    fn pem_lines_are_64_wide() {
        let id = Identity::generate("syncthing", KeyKind::EcdsaP384).unwrap();
        for line in id.cert_pem().lines() {
            assert!(line.len() <= 64 || line.starts_with("-----"), "{line}");
        }
    }
}
