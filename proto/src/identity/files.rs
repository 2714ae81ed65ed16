//! `cert.pem` / `key.pem` on disk.
//!
//! Writes are atomic (temporary file, fsync, rename, fsync of the directory)
//! so a crash never leaves half a key behind, and the key file is created
//! with mode 0600 from the start rather than tightened afterwards. An
//! existing identity that fails to load is an error, never a reason to make
//! a new one: a new identity silently changes the device ID.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Identity, IdentityError, KeyKind};

/// Largest PEM file read; real ones are under 4 KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// What [`Identity::load_or_generate`] did.
#[derive(Debug)]
pub enum LoadedOrGenerated {
    Loaded(Identity),
    Generated(Identity),
}

impl LoadedOrGenerated {
    pub fn identity(&self) -> &Identity {
        match self {
            LoadedOrGenerated::Loaded(id) | LoadedOrGenerated::Generated(id) => id,
        }
    }

    pub fn into_identity(self) -> Identity {
        match self {
            LoadedOrGenerated::Loaded(id) | LoadedOrGenerated::Generated(id) => id,
        }
    }
}

impl Identity {
    /// Reads an identity from a certificate file and a key file, for example
    /// the `cert.pem` / `key.pem` made by `syncthing generate`.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let cert_pem = read_bounded(cert_path)?;
        let key_pem = read_bounded(key_path)?;
        let cert = super::cert_from_pem(&cert_pem).map_err(|e| in_file(cert_path, e))?;
        let key = super::key_from_pem(&key_pem).map_err(|e| in_file(key_path, e))?;
        Identity::from_der(cert, key).map_err(|e| match e {
            IdentityError::KeyMismatch | IdentityError::UnsupportedKey(_) => in_file(key_path, e),
            e => in_file(cert_path, e),
        })
    }

    /// Reads only a certificate (no key needed), e.g. to print a device ID.
    pub fn load_certificate(
        cert_path: &Path,
    ) -> Result<rustls_pki_types::CertificateDer<'static>, IdentityError> {
        let pem = read_bounded(cert_path)?;
        let der = super::cert_from_pem(&pem).map_err(|e| in_file(cert_path, e))?;
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| in_file(cert_path, IdentityError::BadCertificate(e.to_string())))?;
        Ok(der)
    }

    /// Writes `cert_path` (mode 0644) and `key_path` (mode 0600) atomically.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), IdentityError> {
        write_atomic(key_path, self.key_pem().as_bytes(), 0o600)?;
        write_atomic(cert_path, self.cert_pem().as_bytes(), 0o644)
    }

    /// Loads the pair if both files exist, creates and saves a new identity
    /// if neither does, and refuses when only one of them is there.
    pub fn load_or_generate(
        cert_path: &Path,
        key_path: &Path,
        common_name: &str,
        kind: KeyKind,
    ) -> Result<LoadedOrGenerated, IdentityError> {
        match (exists(cert_path)?, exists(key_path)?) {
            (true, true) => Identity::load(cert_path, key_path).map(LoadedOrGenerated::Loaded),
            (false, false) => {
                let identity = Identity::generate(common_name, kind)?;
                identity.save(cert_path, key_path)?;
                Ok(LoadedOrGenerated::Generated(identity))
            }
            _ => Err(IdentityError::HalfPresent {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            }),
        }
    }
}

fn in_file(path: &Path, error: IdentityError) -> IdentityError {
    IdentityError::InFile {
        path: path.to_path_buf(),
        error: Box::new(error),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |error| IdentityError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    path.try_exists().map_err(io_err(path))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, IdentityError> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(in_file(
            path,
            IdentityError::BadCertificate(format!(
                "file is larger than {MAX_PEM_BYTES} bytes; not a PEM certificate or key"
            )),
        ));
    }
    Ok(buf)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Identity::load_or_generate(&cert, &key, "syncthing", KeyKind::Ed25519).unwrap();
        assert!(matches!(made, LoadedOrGenerated::Generated(_)));
        let again = Identity::load_or_generate(&cert, &key, "syncthing", KeyKind::Ed25519).unwrap();
        assert!(matches!(again, LoadedOrGenerated::Loaded(_)));
        assert_eq!(made.identity().device_id(), again.identity().device_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn syncthing_generated_files_load() {
        // Vector 1 of the device-ID spec has no key; pair it with its own
        // format check only.
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        fs::write(&cert, super::super::tests::SYNCTHING_CERT).unwrap();
        let key = dir.path().join("key.pem");
        let other = Identity::generate("syncthing", KeyKind::EcdsaP384).unwrap();
        fs::write(&key, other.key_pem()).unwrap();
        let err = Identity::load(&cert, &key).unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn half_present_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        fs::write(&cert, "x").unwrap();
        let err =
            Identity::load_or_generate(&cert, &key, "syncthing", KeyKind::Ed25519).unwrap_err();
        assert!(matches!(err, IdentityError::HalfPresent { .. }));
        // The lone certificate is untouched.
        assert_eq!(fs::read(&cert).unwrap(), b"x");
    }

    #[test]
    fn unreadable_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = Identity::load(&missing, &missing).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        fs::write(&big, vec![b'A'; (MAX_PEM_BYTES + 10) as usize]).unwrap();
        let err = Identity::load(&big, &big).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}
