//! HTTPS on the REST/GUI port, as Syncthing serves its GUI: the port
//! speaks both (the first byte of a connection tells: a TLS handshake
//! starts with 0x16), with the certificate `https-cert.pem` /
//! `https-key.pem` of the home directory, generated on first start as
//! Syncthing generates it (ECDSA P-256, 820 days, `O=Syncthing,
//! OU=Automatically Generated`, CN and DNS SAN the host name or
//! `syncthing`). `gui.useTLS` makes plain HTTP requests get a redirect to
//! HTTPS (`mod.rs`), which is why changing it needs no restart.
//!
//! An operator's own certificate: replace the two files (PEM, the key
//! unencrypted) and restart. Only a certificate that looks generated is
//! replaced when it nears its end, as Syncthing does.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use proto::identity::COMMON_NAME_SYNCTHING;
use proto::{Identity, KeyKind};
use tokio_rustls::TlsAcceptor;

pub const CERT_FILE: &str = "https-cert.pem";
pub const KEY_FILE: &str = "https-key.pem";
/// Validity of a generated certificate (Syncthing's: under the 825 days
/// browsers accept).
const LIFETIME_DAYS: i64 = 820;
/// A generated certificate this close to its end is replaced at start.
const RENEW_BEFORE_S: i64 = 30 * 24 * 3600;

/// The first byte of a TLS connection (a handshake record).
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// The acceptor for the HTTPS side of the REST port, with the home's
/// certificate (loaded, or generated and saved).
pub fn acceptor(home: &Path) -> Result<TlsAcceptor> {
    let identity = load_or_generate(&home.join(CERT_FILE), &home.join(KEY_FILE))?;
    let config =
        proto::tls::web_server_config(&identity, &[b"http/1.1"]).context("HTTPS configuration")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load_or_generate(cert: &Path, key: &Path) -> Result<Identity> {
    let (has_cert, has_key) = (cert.exists(), key.exists());
    if has_cert && has_key {
        let loaded = Identity::load(cert, key)
            .with_context(|| format!("cannot load the HTTPS certificate {}", cert.display()))?;
        if !renew(&loaded) {
            return Ok(loaded);
        }
        tracing::info!(cert = %cert.display(), "HTTPS certificate expires soon; generating a new one");
    } else if has_cert || has_key {
        anyhow::bail!(
            "only one of {} and {} exists; remove it or add the other",
            cert.display(),
            key.display()
        );
    } else {
        tracing::info!(cert = %cert.display(), "creating the HTTPS certificate");
    }
    let identity = Identity::generate_valid_for(&common_name(), KeyKind::EcdsaP256, LIFETIME_DAYS)
        .context("generating the HTTPS certificate")?;
    identity
        .save(cert, key)
        .context("saving the HTTPS certificate")?;
    Ok(identity)
}

fn renew(identity: &Identity) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    identity.is_auto_generated()
        && identity
            .not_after_unix()
            .is_some_and(|end| end - now < RENEW_BEFORE_S)
}

/// The host name as Syncthing puts it in the certificate: ASCII letters,
/// digits, `.` and `-`, no leading or trailing `.`/`-`; `syncthing` if
/// nothing is left.
fn common_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    sanitized(&raw).unwrap_or_else(|| COMMON_NAME_SYNCTHING.to_string())
}

fn sanitized(name: &str) -> Option<String> {
    let kept: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    let trimmed = kept.trim_matches(|c| c == '.' || c == '-');
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_cleaned_as_syncthing_does() {
        assert_eq!(
            sanitized("studio-nas.lan\n").as_deref(),
            Some("studio-nas.lan")
        );
        assert_eq!(sanitized("-.ça va.-").as_deref(), Some("ava"));
        assert_eq!(sanitized("..."), None);
    }

    #[test]
    fn generated_once_then_loaded_and_half_pairs_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join(CERT_FILE), dir.path().join(KEY_FILE));
        let first = load_or_generate(&cert, &key).unwrap();
        assert!(first.is_auto_generated());
        let days = (first.not_after_unix().unwrap()
            - std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64)
            / 86400;
        assert!((818..=820).contains(&days), "{days}");
        let again = load_or_generate(&cert, &key).unwrap();
        assert_eq!(first.cert_der(), again.cert_der(), "loaded, not replaced");
        assert!(acceptor(dir.path()).is_ok());
        std::fs::remove_file(&key).unwrap();
        let err = format!("{:#}", load_or_generate(&cert, &key).unwrap_err());
        assert!(err.contains("only one of"), "{err}");
    }

    #[test]
    fn a_generated_certificate_near_its_end_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join(CERT_FILE), dir.path().join(KEY_FILE));
        let old = Identity::generate_valid_for("syncthing", KeyKind::EcdsaP256, 10).unwrap();
        old.save(&cert, &key).unwrap();
        let now = load_or_generate(&cert, &key).unwrap();
        assert_ne!(now.cert_der(), old.cert_der());
        assert_eq!(
            Identity::load(&cert, &key).unwrap().cert_der(),
            now.cert_der(),
            "the new one is saved"
        );
    }
}
