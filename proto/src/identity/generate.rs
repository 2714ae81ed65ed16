//! New certificates, with the fields Syncthing's own certificates carry.
//!
//! Peers never validate chains, but a Syncthing 1.19.2 peer compares the
//! certificate's CN (or DNS SAN) with the device's configured `certName`,
//! `syncthing` by default, so these fields are part of interoperability.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime, Time};

use super::{Identity, IdentityError};

/// The CN Syncthing devices use, and peers expect by default.
pub const COMMON_NAME_SYNCTHING: &str = "syncthing";

/// Validity of a device certificate, as Syncthing: 20 × 365 days.
const LIFETIME_DAYS: i64 = 7300;

/// Key algorithm of a new identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyKind {
    /// What Syncthing 2.x generates; accepted by 1.19.2 over TLS 1.3. Small
    /// and the fastest to sign and verify.
    #[default]
    Ed25519,
    /// What Syncthing 1.x generates.
    EcdsaP384,
    /// What Syncthing generates for its GUI's HTTPS certificate (browsers
    /// support it everywhere). Not offered for device identities.
    EcdsaP256,
}

impl std::str::FromStr for KeyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(KeyKind::Ed25519),
            "ecdsa-p384" | "p384" | "p-384" | "ecdsa" => Ok(KeyKind::EcdsaP384),
            _ => Err(format!(
                "unknown key type {s:?}; use \"ed25519\" or \"ecdsa-p384\""
            )),
        }
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::EcdsaP384 => "ecdsa-p384",
            KeyKind::EcdsaP256 => "ecdsa-p256",
        })
    }
}

impl Identity {
    /// A new self-signed identity: `O=Syncthing, OU=Automatically Generated,
    /// CN=<common_name>`, DNS SAN `<common_name>`, valid from today 00:00 UTC
    /// for 7300 days, digitalSignature + keyEncipherment, serverAuth +
    /// clientAuth, CA:FALSE, random 64-bit serial.
    pub fn generate(common_name: &str, kind: KeyKind) -> Result<Self, IdentityError> {
        Self::generate_valid_for(common_name, kind, LIFETIME_DAYS)
    }

    /// [`Identity::generate`] with another validity, in days (Syncthing's
    /// GUI certificate: 820, under the 825 days browsers accept).
    pub fn generate_valid_for(
        common_name: &str,
        kind: KeyKind,
        lifetime_days: i64,
    ) -> Result<Self, IdentityError> {
        let gen_err = |e: rcgen::Error| IdentityError::Generate(e.to_string());
        let algorithm = match kind {
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let key_pair = KeyPair::generate_for(algorithm).map_err(gen_err)?;

        let mut params = CertificateParams::new(vec![common_name.to_string()]).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Syncthing");
        dn.push(DnType::OrganizationalUnitName, "Automatically Generated");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let not_before = OffsetDateTime::now_utc().replace_time(Time::MIDNIGHT);
        params.not_before = not_before;
        params.not_after = not_before + Duration::days(lifetime_days);
        // Positive and never zero: the top bit is cleared so no sign padding
        // is needed, and the low bit set.
        let serial = (rand::random::<u64>() >> 1) | 1;
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = false;

        let cert = params.self_signed(&key_pair).map_err(gen_err)?;
        let cert_der = CertificateDer::from(cert.der().to_vec());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        Identity::from_der(cert_der, key_der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::*;

    #[test]
    fn fields_match_syncthing_template() {
        for kind in [KeyKind::Ed25519, KeyKind::EcdsaP384] {
            let id = Identity::generate(COMMON_NAME_SYNCTHING, kind).unwrap();
            let (rest, cert) = parse_x509_certificate(id.cert_der()).unwrap();
            assert!(rest.is_empty());
            assert_eq!(
                cert.subject().to_string(),
                "O=Syncthing, OU=Automatically Generated, CN=syncthing"
            );
            assert_eq!(cert.subject(), cert.issuer());
            let validity = cert.validity();
            let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86400;
            assert_eq!(days, LIFETIME_DAYS);
            assert_eq!(validity.not_before.timestamp() % 86400, 0);
            assert!(cert.tbs_certificate.serial.bits() <= 64);
            let mut seen = 0;
            for ext in cert.extensions() {
                match ext.parsed_extension() {
                    ParsedExtension::KeyUsage(ku) => {
                        assert!(ext.critical);
                        assert!(ku.digital_signature() && ku.key_encipherment());
                        assert!(!ku.key_cert_sign());
                        seen += 1;
                    }
                    ParsedExtension::ExtendedKeyUsage(eku) => {
                        assert!(eku.server_auth && eku.client_auth);
                        seen += 1;
                    }
                    ParsedExtension::BasicConstraints(bc) => {
                        assert!(ext.critical);
                        assert!(!bc.ca);
                        seen += 1;
                    }
                    ParsedExtension::SubjectAlternativeName(san) => {
                        assert_eq!(san.general_names.len(), 1);
                        assert!(matches!(
                            san.general_names[0],
                            GeneralName::DNSName("syncthing")
                        ));
                        seen += 1;
                    }
                    _ => {}
                }
            }
            assert_eq!(seen, 4, "{kind}");
        }
    }

    #[test]
    fn every_identity_is_new() {
        let a = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
        let b = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
        assert_ne!(a.device_id(), b.device_id());
    }

    #[test]
    fn key_kind_parses() {
        assert_eq!("Ed25519".parse(), Ok(KeyKind::Ed25519));
        assert_eq!("ecdsa-p384".parse(), Ok(KeyKind::EcdsaP384));
        assert!("rsa".parse::<KeyKind>().is_err());
    }
}
