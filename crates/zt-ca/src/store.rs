//! A CA kept in a directory: `ca.crt`, `ca.key` and `jwt.key`, keys readable by
//! the owner only, every file written whole or not at all.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use zt_identity::x509;

use crate::{Authority, CaError};

/// The CA certificate, PEM.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key, PKCS#8 PEM, mode 0600.
pub const CA_KEY_FILE: &str = "ca.key";
/// The JWT-SVID signing key, PKCS#8 PEM, mode 0600.
pub const JWT_KEY_FILE: &str = "jwt.key";

pub use zt_fs::{PRIVATE_MODE, PUBLIC_MODE, write_atomically};

/// Why a CA directory could not be written or read; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Writing a file, or a directory that is not this user's alone.
    #[error(transparent)]
    Fs(#[from] zt_fs::FsError),
    /// `init` without `force` on a directory that already holds a CA.
    #[error("{0}: a CA already exists here (use --force to replace it)")]
    Exists(PathBuf),
    /// A file that is not the PEM it should be.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The files parse but do not make a usable CA.
    #[error("{path}: {source}")]
    Ca {
        /// The directory or file at fault.
        path: PathBuf,
        /// The error.
        source: CaError,
    },
}

/// Writes `authority` into `dir`, creating it (mode 0700) if needed, or
/// tightening one of this user's to 0700. Refuses to replace an existing CA
/// unless `force`.
pub fn save(dir: &Path, authority: &Authority, force: bool) -> Result<(), StoreError> {
    if !force {
        for name in [CA_CERT_FILE, CA_KEY_FILE, JWT_KEY_FILE] {
            let path = dir.join(name);
            if path.exists() {
                return Err(StoreError::Exists(path));
            }
        }
    }
    zt_fs::private_dir(dir)?;
    Ok(write_atomically(&[
        (
            dir.join(CA_CERT_FILE),
            x509::to_pem(authority.certificate()).into_bytes(),
            PUBLIC_MODE,
        ),
        (
            dir.join(CA_KEY_FILE),
            authority.key_pem().into_bytes(),
            PRIVATE_MODE,
        ),
        (
            dir.join(JWT_KEY_FILE),
            authority.jwt_key_pem().into_bytes(),
            PRIVATE_MODE,
        ),
    ])?)
}

/// Loads the CA kept in `dir`.
pub fn load(dir: &Path) -> Result<Authority, StoreError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let cert = crate::single_certificate(&read(&cert_path)?).map_err(|reason| StoreError::Malformed {
        path: cert_path.clone(),
        reason,
    })?;
    let key = load_key(&dir.join(CA_KEY_FILE))?;
    let jwt_key = load_key(&dir.join(JWT_KEY_FILE))?;
    Authority::from_parts(cert, key, jwt_key).map_err(|source| {
        // A key mismatch is the key file's fault; anything else, the certificate's.
        let path = match source {
            CaError::KeyMismatch => dir.join(CA_KEY_FILE),
            _ => cert_path,
        };
        StoreError::Ca { path, source }
    })
}

fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    fs::read(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })
}

fn load_key(path: &Path) -> Result<KeyPair, StoreError> {
    crate::key_pair_from_pem(&read(path)?).map_err(|reason| StoreError::Malformed {
        path: path.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_CA_TTL, KeyType};
    use std::os::unix::fs::PermissionsExt as _;
    use zt_identity::TrustDomain;

    fn authority() -> Result<Authority, Box<dyn std::error::Error>> {
        Ok(Authority::generate(
            TrustDomain::parse("example.org")?,
            KeyType::EcP256,
            DEFAULT_CA_TTL,
            1_800_000_000,
        )?)
    }

    #[test]
    fn save_then_load() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("ca");
        let ca = authority()?;
        save(&dir, &ca, false)?;
        let loaded = load(&dir)?;
        assert_eq!(loaded.certificate(), ca.certificate());
        assert_eq!(loaded.jwt_key_id(), ca.jwt_key_id());
        for (name, mode) in [(CA_KEY_FILE, 0o600), (JWT_KEY_FILE, 0o600), (CA_CERT_FILE, 0o644)] {
            assert_eq!(
                fs::metadata(dir.join(name))?.permissions().mode() & 0o777,
                mode,
                "{name}"
            );
        }
        assert_eq!(fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir)?.count(), 3);
        Ok(())
    }

    #[test]
    fn refuses_to_overwrite_without_force() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let first = authority()?;
        save(tmp.path(), &first, false)?;
        let err = save(tmp.path(), &authority()?, false);
        assert!(
            matches!(err, Err(StoreError::Exists(ref p)) if p.ends_with(CA_CERT_FILE)),
            "{err:?}"
        );
        assert_eq!(load(tmp.path())?.certificate(), first.certificate());
        let second = authority()?;
        save(tmp.path(), &second, true)?;
        assert_eq!(load(tmp.path())?.certificate(), second.certificate());
        Ok(())
    }

    #[test]
    fn load_names_the_broken_file() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        save(tmp.path(), &authority()?, false)?;
        let other = tmp.path().join("other");
        save(&other, &authority()?, false)?;

        // A key from another CA.
        fs::copy(other.join(CA_KEY_FILE), tmp.path().join(CA_KEY_FILE))?;
        let err = load(tmp.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("ca.key") && err.contains("does not match"), "{err}");

        // Garbage instead of a certificate.
        fs::write(
            tmp.path().join(CA_CERT_FILE),
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        )?;
        let err = load(tmp.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("ca.crt"), "{err}");

        // A missing file.
        fs::remove_file(tmp.path().join(JWT_KEY_FILE))?;
        fs::copy(other.join(CA_CERT_FILE), tmp.path().join(CA_CERT_FILE))?;
        let err = load(tmp.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("jwt.key") && err.contains("No such file"), "{err}");
        Ok(())
    }
}
