//! The device key: one ECDSA P-256 key per enrolled device, in a TPM 2.0 when
//! there is one, otherwise in software.
//!
//! A TPM key is created inside the TPM with `fixedTPM` and `fixedParent`, so the
//! TPM refuses to duplicate or export it; on disk there is only its private
//! part wrapped (encrypted and integrity-protected) by the TPM's storage key,
//! which never leaves that TPM. A software key is a PKCS#8 file (mode 0600):
//! anyone who can read it can be the device, which is why its kind is recorded
//! and reported as the weaker one.
//!
//! Files in the key directory:
//!
//! | file | what |
//! | --- | --- |
//! | `device-key.json` | the kind (`{"kind":"tpm"}` or `{"kind":"software"}`) |
//! | `device-key.pk8` | software keys: the PKCS#8 private key |
//! | `device-key.tpm` | TPM keys: the public area and the TPM-wrapped private blob |

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::{SignatureAlgorithm, SignatureScheme};
use serde::{Deserialize, Serialize};

/// The file recording the key's kind.
pub const META_FILE: &str = "device-key.json";
/// The software key's PKCS#8 file.
pub const SOFTWARE_FILE: &str = "device-key.pk8";
/// The TPM key's public area and wrapped private blob.
pub const TPM_FILE: &str = "device-key.tpm";

/// The environment variable naming the TPM's TCTI (`device:/dev/tpmrm0`,
/// `swtpm:host=127.0.0.1,port=2321`).
pub const TCTI_ENV: &str = "ZT_TPM_TCTI";
/// The kernel's TPM resource manager, used when [`TCTI_ENV`] is unset.
pub const TPM_DEVICE: &str = "/dev/tpmrm0";

/// Where a device key lives; reported with the device so that policy can
/// tell a non-exportable key from a copyable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// In a TPM 2.0, not exportable.
    Tpm,
    /// A PKCS#8 file: weaker, anyone who reads the file has the key.
    Software,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tpm => "tpm",
            Self::Software => "software",
        })
    }
}

/// Which kind of key to create (`zt device enroll --key auto|tpm|software`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyChoice {
    /// A TPM key when this build has TPM support and a TPM is found, otherwise software.
    #[default]
    Auto,
    /// A TPM key or an error.
    Tpm,
    /// A software key, even with a TPM present.
    Software,
}

impl std::str::FromStr for KeyChoice {
    type Err = String;

    /// `auto`, `tpm` or `software`, as `--key` takes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "tpm" => Ok(Self::Tpm),
            "software" => Ok(Self::Software),
            other => Err(format!(
                "unknown device key choice {other:?}: expected auto, tpm or software"
            )),
        }
    }
}

impl fmt::Display for KeyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Tpm => "tpm",
            Self::Software => "software",
        })
    }
}

/// Where the TPM is, as a TCTI string, or that there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmLocation {
    tcti: Option<String>,
}

impl TpmLocation {
    /// [`TCTI_ENV`] when set and not empty; otherwise [`TPM_DEVICE`] if it
    /// exists; otherwise none.
    pub fn from_env() -> Self {
        match std::env::var(TCTI_ENV) {
            Ok(tcti) if !tcti.trim().is_empty() => Self::tcti(tcti.trim().to_owned()),
            _ if Path::new(TPM_DEVICE).exists() => Self::tcti(format!("device:{TPM_DEVICE}")),
            _ => Self::none(),
        }
    }

    /// The TPM reached through `tcti` (`swtpm:host=127.0.0.1,port=2321`).
    pub fn tcti(tcti: String) -> Self {
        Self { tcti: Some(tcti) }
    }

    /// No TPM.
    pub fn none() -> Self {
        Self { tcti: None }
    }

    /// The TCTI string, if there is a TPM.
    pub fn tcti_str(&self) -> Option<&str> {
        self.tcti.as_deref()
    }
}

/// Why a device key could not be created, loaded or used; each message names
/// the file, directory or TPM concerned.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key directory or one of its files could not be created, opened or written.
    #[error("device key: {0}")]
    Fs(#[from] zt_fs::FsError),
    /// A key file could not be read.
    #[error("device key: reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `dir` holds no device key.
    #[error("device key: {dir} holds no device key ({META_FILE} absent): enroll the device first")]
    Missing {
        /// The key directory.
        dir: PathBuf,
    },
    /// `dir` holds a device key already; creating one would lose it.
    #[error("device key: {path} exists: this directory holds a device key already, not replacing it")]
    Exists {
        /// The existing key's file.
        path: PathBuf,
    },
    /// A key file is not what it should be.
    #[error("device key: {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A software-key operation failed in the crypto library.
    #[error("device key: software key: {what} failed")]
    Software {
        /// The operation.
        what: &'static str,
    },
    /// A TPM key was asked of (or found by) a build without the `tpm` feature.
    #[error("this zt was built without TPM support: build it with --features tpm")]
    TpmUnsupported,
    /// A TPM key was asked for and no TPM was found.
    #[error("no TPM found ({TPM_DEVICE} absent and {TCTI_ENV} unset)")]
    NoTpm,
    /// A TPM command failed.
    #[error("device key: TPM {tcti}: {what}: {detail}")]
    Tpm {
        /// The TCTI of the TPM.
        tcti: String,
        /// What was being done.
        what: &'static str,
        /// The TPM's or the TSS's error.
        detail: String,
    },
}

/// What `device-key.json` records.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    kind: KeyKind,
}

/// The device's key; [`DeviceKey::sign`] may be called from any thread.
pub struct DeviceKey {
    inner: Inner,
    /// SubjectPublicKeyInfo, DER.
    spki: Vec<u8>,
}

enum Inner {
    Software(EcdsaKeyPair),
    #[cfg(feature = "tpm")]
    Tpm(Box<tpm::TpmKey>),
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material; the public key is enough to tell keys apart.
        f.debug_struct("DeviceKey")
            .field("kind", &self.kind())
            .field("spki_len", &self.spki.len())
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// Creates a new key in `dir` (made mode 0700), its files mode 0600; refuses
    /// a directory that holds a key already.
    pub fn create(dir: &Path, choice: KeyChoice, tpm: &TpmLocation) -> Result<Self, KeyError> {
        let kind = match choice {
            KeyChoice::Software => KeyKind::Software,
            KeyChoice::Tpm if !cfg!(feature = "tpm") => return Err(KeyError::TpmUnsupported),
            KeyChoice::Tpm if tpm.tcti.is_none() => return Err(KeyError::NoTpm),
            KeyChoice::Tpm => KeyKind::Tpm,
            KeyChoice::Auto if cfg!(feature = "tpm") && tpm.tcti.is_some() => KeyKind::Tpm,
            KeyChoice::Auto => KeyKind::Software,
        };
        zt_fs::private_dir(dir)?;
        for name in [META_FILE, SOFTWARE_FILE, TPM_FILE] {
            let path = dir.join(name);
            if path.exists() {
                return Err(KeyError::Exists { path });
            }
        }
        let meta = serde_json::to_vec(&Meta { kind }).map_err(|e| KeyError::Corrupt {
            path: dir.join(META_FILE),
            reason: e.to_string(),
        })?;
        match kind {
            KeyKind::Software => {
                let rng = SystemRandom::new();
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                    .map_err(|_| KeyError::Software { what: "generating" })?;
                let key = software_from_pkcs8(&dir.join(SOFTWARE_FILE), pkcs8.as_ref())?;
                // The key file first: a directory with the meta file always has its key.
                zt_fs::write_atomically(&[(
                    dir.join(SOFTWARE_FILE),
                    pkcs8.as_ref().to_vec(),
                    zt_fs::PRIVATE_MODE,
                )])?;
                zt_fs::write_atomically(&[(dir.join(META_FILE), meta, zt_fs::PRIVATE_MODE)])?;
                Ok(key)
            }
            KeyKind::Tpm => create_tpm(dir, tpm, meta),
        }
    }

    /// Loads the key created earlier in `dir`.
    pub fn load(dir: &Path, tpm: &TpmLocation) -> Result<Self, KeyError> {
        let meta_path = dir.join(META_FILE);
        let meta = match read_private(&meta_path) {
            Err(KeyError::Fs(zt_fs::FsError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(KeyError::Missing { dir: dir.to_owned() });
            }
            other => other?,
        };
        let meta: Meta = serde_json::from_slice(&meta).map_err(|e| KeyError::Corrupt {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        match meta.kind {
            KeyKind::Software => {
                let path = dir.join(SOFTWARE_FILE);
                software_from_pkcs8(&path, &read_private(&path)?)
            }
            KeyKind::Tpm => load_tpm(dir, tpm),
        }
    }

    /// Where the key lives.
    pub fn kind(&self) -> KeyKind {
        match self.inner {
            Inner::Software(_) => KeyKind::Software,
            #[cfg(feature = "tpm")]
            Inner::Tpm(_) => KeyKind::Tpm,
        }
    }

    /// SubjectPublicKeyInfo, DER (P-256).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// ECDSA P-256 with SHA-256 over `message`; the signature ASN.1 DER encoded
    /// (as X.509 and TLS want it).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.inner {
            Inner::Software(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| KeyError::Software { what: "signing" }),
            #[cfg(feature = "tpm")]
            Inner::Tpm(key) => key.sign(message),
        }
    }

    /// A rustls signing key (ECDSA_NISTP256_SHA256) backed by this key, for
    /// mTLS client certificates.
    pub fn rustls_key(self: &Arc<Self>) -> Arc<dyn rustls::sign::SigningKey> {
        Arc::new(RustlsKey(Arc::clone(self)))
    }
}

fn software_from_pkcs8(path: &Path, pkcs8: &[u8]) -> Result<DeviceKey, KeyError> {
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8).map_err(|e| KeyError::Corrupt {
            path: path.to_owned(),
            reason: format!("not a PKCS#8 ECDSA P-256 private key ({e})"),
        })?;
    let spki = p256_spki(pair.public_key().as_ref()).ok_or_else(|| KeyError::Corrupt {
        path: path.to_owned(),
        reason: "the public key is not an uncompressed P-256 point".to_owned(),
    })?;
    Ok(DeviceKey {
        inner: Inner::Software(pair),
        spki,
    })
}

/// Reads a key file, refusing one of another user's and tightening a looser mode.
fn read_private(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut file = zt_fs::open_private(path, OpenOptions::new().read(true))?;
    let mut contents = Vec::new();
    file.read_to_end(&mut contents).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(contents)
}

/// The DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1,
/// a 66-byte BIT STRING), before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The SubjectPublicKeyInfo of an uncompressed P-256 point (`04 || x || y`).
fn p256_spki(point: &[u8]) -> Option<Vec<u8>> {
    if point.len() != 65 || point.first() != Some(&0x04) {
        return None;
    }
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(point);
    Some(spki)
}

/// The uncompressed point (`04 || x || y`) in a P-256 SubjectPublicKeyInfo as
/// [`DeviceKey::public_key_der`] gives it: what aws-lc-rs's `UnparsedPublicKey`
/// verifies signatures with.
pub fn p256_point(spki: &[u8]) -> Option<&[u8]> {
    spki.strip_prefix(&P256_SPKI_PREFIX[..])
        .filter(|point| point.len() == 65)
}

/// An ECDSA signature's `(r, s)`, big-endian unsigned, as the DER
/// `SEQUENCE { r INTEGER, s INTEGER }` that X.509 and TLS carry.
#[cfg_attr(not(feature = "tpm"), allow(dead_code))]
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, value: &[u8]) {
        let first = value.iter().position(|&b| b != 0).unwrap_or(value.len());
        let value = value.get(first..).unwrap_or_default();
        // A positive INTEGER whose top bit is set takes a leading zero byte.
        let pad = value.first().is_none_or(|&b| b & 0x80 != 0);
        out.push(0x02);
        // P-256 values are at most 33 bytes: the short form of the length.
        out.push((value.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(value);
    }
    let mut body = Vec::with_capacity(72);
    integer(&mut body, r);
    integer(&mut body, s);
    let mut der = Vec::with_capacity(body.len() + 2);
    der.push(0x30);
    der.push(body.len() as u8);
    der.extend_from_slice(&body);
    der
}

#[cfg(not(feature = "tpm"))]
fn create_tpm(_dir: &Path, _tpm: &TpmLocation, _meta: Vec<u8>) -> Result<DeviceKey, KeyError> {
    Err(KeyError::TpmUnsupported)
}

#[cfg(not(feature = "tpm"))]
fn load_tpm(_dir: &Path, _tpm: &TpmLocation) -> Result<DeviceKey, KeyError> {
    Err(KeyError::TpmUnsupported)
}

#[cfg(feature = "tpm")]
fn create_tpm(dir: &Path, location: &TpmLocation, meta: Vec<u8>) -> Result<DeviceKey, KeyError> {
    let path = dir.join(TPM_FILE);
    let (key, blob) = tpm::TpmKey::create(location)?;
    let spki = key.spki(&path)?;
    let encoded = blob.encode().map_err(|e| KeyError::Corrupt {
        path: path.clone(),
        reason: format!("encoding the TPM's public area: {e}"),
    })?;
    zt_fs::write_atomically(&[(path, encoded, zt_fs::PRIVATE_MODE)])?;
    zt_fs::write_atomically(&[(dir.join(META_FILE), meta, zt_fs::PRIVATE_MODE)])?;
    Ok(DeviceKey {
        inner: Inner::Tpm(Box::new(key)),
        spki,
    })
}

#[cfg(feature = "tpm")]
fn load_tpm(dir: &Path, location: &TpmLocation) -> Result<DeviceKey, KeyError> {
    let path = dir.join(TPM_FILE);
    let blob = tpm::KeyBlob::decode(&path, &read_private(&path)?)?;
    let key = tpm::TpmKey::load(location, &path, blob)?;
    let spki = key.spki(&path)?;
    Ok(DeviceKey {
        inner: Inner::Tpm(Box::new(key)),
        spki,
    })
}

/// The device key as rustls's signing key.
#[derive(Debug)]
struct RustlsKey(Arc<DeviceKey>);

impl rustls::sign::SigningKey for RustlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(RustlsSigner(Arc::clone(&self.0))) as Box<dyn rustls::sign::Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.0.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct RustlsSigner(Arc<DeviceKey>);

impl rustls::sign::Signer for RustlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign(message)
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// TPM 2.0 keys through tss-esapi. Public so that tests (and `zt device
/// status`) can look at what the TPM holds: the storage key's template and
/// the key file's contents.
#[cfg(feature = "tpm")]
pub mod tpm {
    use std::path::Path;
    use std::str::FromStr as _;
    use std::sync::Mutex;

    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
    use tss_esapi::handles::{KeyHandle, ObjectHandle};
    use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::{
        Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket, Private, Public,
        PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme, SymmetricDefinitionObject,
    };
    use tss_esapi::traits::{Marshall as _, UnMarshall as _};
    use tss_esapi::tss2_esys::{TPM2B_DIGEST, TPMT_TK_HASHCHECK};
    use tss_esapi::{Context, TctiNameConf};

    use super::{KeyError, TpmLocation, ecdsa_der, p256_spki};

    /// The first bytes of `device-key.tpm`.
    const MAGIC: &[u8; 8] = b"zt-tpm1\n";

    /// The storage key under which device keys are created: the TCG's ECC
    /// P-256 storage root key template (owner hierarchy, restricted decrypt,
    /// AES-128-CFB, zero `unique`). The same template under the same owner
    /// seed gives the same key, so it is re-created on load, never persisted.
    pub fn storage_key_template() -> Result<Public, tss_esapi::Error> {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_restricted(true)
            .with_decrypt(true)
            .with_sign_encrypt(false)
            .build()?;
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_restricted_decryption_key(
                    SymmetricDefinitionObject::AES_128_CFB,
                    EccCurve::NistP256,
                )
                .build()?,
            )
            .with_ecc_unique_identifier(EccPoint::new(
                EccParameter::try_from(vec![0; 32])?,
                EccParameter::try_from(vec![0; 32])?,
            ))
            .build()
    }

    /// The device key's template: ECDSA P-256 with SHA-256, unrestricted, sign
    /// only, and fixedTPM | fixedParent | sensitiveDataOrigin so that the TPM
    /// generated it and will never duplicate it.
    pub fn device_key_template() -> Result<Public, tss_esapi::Error> {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .with_decrypt(false)
            .with_restricted(false)
            .build()?;
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    EccCurve::NistP256,
                )
                .build()?,
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
    }

    /// What `device-key.tpm` holds: the key's public area and its private
    /// part as the TPM wrapped it under the storage key (TPM2B_PRIVATE).
    #[derive(Debug, Clone)]
    pub struct KeyBlob {
        /// The public area (TPMT_PUBLIC).
        pub public: Public,
        /// The wrapped private part: opaque outside the TPM that made it.
        pub private: Private,
    }

    impl KeyBlob {
        /// The file's bytes: [`MAGIC`], then the marshalled public area and
        /// the private blob, each after its length (two bytes, big-endian).
        pub fn encode(&self) -> Result<Vec<u8>, tss_esapi::Error> {
            let public = self.public.marshall()?;
            let mut out = MAGIC.to_vec();
            for part in [public.as_slice(), self.private.value()] {
                // Both are TPM2B contents, whose sizes are 16 bits by definition.
                out.extend_from_slice(&(part.len() as u16).to_be_bytes());
                out.extend_from_slice(part);
            }
            Ok(out)
        }

        /// Parses `path`'s contents as [`encode`](Self::encode) wrote them.
        pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, KeyError> {
            let corrupt = |reason: &str| KeyError::Corrupt {
                path: path.to_owned(),
                reason: reason.to_owned(),
            };
            let mut rest = bytes
                .strip_prefix(&MAGIC[..])
                .ok_or_else(|| corrupt("not a zt TPM key file (bad magic)"))?;
            let mut part = |what: &str| -> Result<&[u8], KeyError> {
                let (len, tail) = rest
                    .split_first_chunk::<2>()
                    .ok_or_else(|| corrupt(&format!("truncated before the {what}")))?;
                let len = usize::from(u16::from_be_bytes(*len));
                let (value, tail) = tail
                    .split_at_checked(len)
                    .ok_or_else(|| corrupt(&format!("truncated in the {what}")))?;
                rest = tail;
                Ok(value)
            };
            let public = part("public area")?;
            let private = part("private blob")?;
            if !rest.is_empty() {
                return Err(corrupt("trailing bytes after the private blob"));
            }
            Ok(Self {
                public: Public::unmarshall(public).map_err(|e| corrupt(&format!("bad public area: {e}")))?,
                private: Private::try_from(private.to_vec())
                    .map_err(|e| corrupt(&format!("bad private blob: {e}")))?,
            })
        }
    }

    /// A device key loaded in a TPM: one ESAPI context, behind a mutex, and
    /// the key's transient handle (its parent is flushed once it is loaded).
    pub(super) struct TpmKey {
        context: Mutex<Context>,
        handle: KeyHandle,
        public: Public,
        tcti: String,
    }

    impl TpmKey {
        /// Creates a key under the storage key and loads it.
        pub(super) fn create(location: &TpmLocation) -> Result<(Self, KeyBlob), KeyError> {
            let (mut context, tcti) = open(location)?;
            let primary = storage_key(&mut context, &tcti)?;
            let created = device_key_template()
                .map_err(tpm_error(&tcti, "building the device key template"))
                .and_then(|template| {
                    context
                        .create(primary, template, None, None, None, None)
                        .map_err(tpm_error(&tcti, "creating the device key (TPM2_Create)"))
                });
            let created = match created {
                Ok(created) => created,
                Err(e) => {
                    flush(&mut context, primary.into());
                    return Err(e);
                }
            };
            let blob = KeyBlob {
                public: created.out_public,
                private: created.out_private,
            };
            let key = Self::load_under(context, primary, tcti, blob.clone())?;
            Ok((key, blob))
        }

        /// Loads the key in `blob` (read from `path`) under the storage key.
        pub(super) fn load(location: &TpmLocation, path: &Path, blob: KeyBlob) -> Result<Self, KeyError> {
            let (mut context, tcti) = open(location)?;
            let primary = storage_key(&mut context, &tcti)?;
            Self::load_under(context, primary, tcti, blob).map_err(|e| match e {
                KeyError::Tpm { tcti, what, detail } => KeyError::Tpm {
                    detail: format!(
                        "{detail} ({} was not made by this TPM, or its owner hierarchy was cleared since)",
                        path.display()
                    ),
                    tcti,
                    what,
                },
                other => other,
            })
        }

        fn load_under(
            mut context: Context,
            primary: KeyHandle,
            tcti: String,
            blob: KeyBlob,
        ) -> Result<Self, KeyError> {
            let loaded = context.load(primary, blob.private, blob.public.clone());
            flush(&mut context, primary.into());
            let handle = loaded.map_err(tpm_error(&tcti, "loading the device key (TPM2_Load)"))?;
            Ok(Self {
                context: Mutex::new(context),
                handle,
                public: blob.public,
                tcti,
            })
        }

        /// The SubjectPublicKeyInfo of the key's public area (from `path`).
        pub(super) fn spki(&self, path: &Path) -> Result<Vec<u8>, KeyError> {
            let corrupt = |reason: &str| KeyError::Corrupt {
                path: path.to_owned(),
                reason: reason.to_owned(),
            };
            let Public::Ecc { unique, .. } = &self.public else {
                return Err(corrupt("the public area is not an ECC key"));
            };
            let mut point = vec![0x04];
            for coordinate in [unique.x().value(), unique.y().value()] {
                let pad = 32_usize
                    .checked_sub(coordinate.len())
                    .ok_or_else(|| corrupt("the public area is not a P-256 point"))?;
                point.extend(std::iter::repeat_n(0, pad));
                point.extend_from_slice(coordinate);
            }
            p256_spki(&point).ok_or_else(|| corrupt("the public area is not a P-256 point"))
        }

        /// SHA-256 in software, then TPM2_Sign over the digest.
        pub(super) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
            let err = |what| tpm_error(&self.tcti, what);
            let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
            let digest = Digest::try_from(hash.as_ref().to_vec()).map_err(err("building the digest"))?;
            // A null ticket: the key is not restricted, so the TPM need not
            // have hashed the message itself.
            let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
                tag: TPM2_ST_HASHCHECK,
                hierarchy: TPM2_RH_NULL,
                digest: TPM2B_DIGEST::default(),
            })
            .map_err(err("building the null hashcheck ticket"))?;
            let scheme = SignatureScheme::EcDsa {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
            };
            let mut context = self.context.lock().map_err(|_| KeyError::Tpm {
                tcti: self.tcti.clone(),
                what: "signing",
                detail: "the TPM context's lock was poisoned by an earlier panic".to_owned(),
            })?;
            let signature = context
                .sign(self.handle, digest, scheme, ticket)
                .map_err(err("signing (TPM2_Sign)"))?;
            match signature {
                Signature::EcDsa(ecc) => Ok(ecdsa_der(ecc.signature_r().value(), ecc.signature_s().value())),
                other => Err(KeyError::Tpm {
                    tcti: self.tcti.clone(),
                    what: "signing (TPM2_Sign)",
                    detail: format!("the TPM returned a {:?} signature, not ECDSA", other.algorithm()),
                }),
            }
        }
    }

    impl Drop for TpmKey {
        fn drop(&mut self) {
            if let Ok(context) = self.context.get_mut() {
                flush(context, self.handle.into());
            }
        }
    }

    fn open(location: &TpmLocation) -> Result<(Context, String), KeyError> {
        let tcti = location.tcti.clone().ok_or(KeyError::NoTpm)?;
        let conf = TctiNameConf::from_str(&tcti).map_err(tpm_error(&tcti, "parsing the TCTI"))?;
        let mut context = Context::new(conf).map_err(tpm_error(&tcti, "connecting"))?;
        // Every object here has an empty auth value: a password session
        // carries it.
        context.set_sessions((Some(AuthSession::Password), None, None));
        Ok((context, tcti))
    }

    fn storage_key(context: &mut Context, tcti: &str) -> Result<KeyHandle, KeyError> {
        let err = |what| tpm_error(tcti, what);
        let template = storage_key_template().map_err(err("building the storage key template"))?;
        context
            .create_primary(Hierarchy::Owner, template, None, None, None, None)
            .map(|primary| primary.key_handle)
            .map_err(err("creating the storage key (TPM2_CreatePrimary)"))
    }

    /// Frees a transient object's slot; a failure only leaves it to the
    /// resource manager (or to the TPM's reset).
    fn flush(context: &mut Context, handle: ObjectHandle) {
        if let Err(e) = context.flush_context(handle) {
            tracing::debug!(error = %e, "flushing a transient TPM object failed");
        }
    }

    fn tpm_error(tcti: &str, what: &'static str) -> impl FnOnce(tss_esapi::Error) -> KeyError {
        let tcti = tcti.to_owned();
        move |e| KeyError::Tpm {
            tcti,
            what,
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

    use super::*;

    fn verify(spki: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let point = p256_point(spki).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(message, signature)
            .is_ok()
    }

    #[test]
    fn software_key_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join("key");
        let created = DeviceKey::create(&dir, KeyChoice::Software, &TpmLocation::none()).unwrap();
        assert_eq!(created.kind(), KeyKind::Software);
        let loaded = DeviceKey::load(&dir, &TpmLocation::none()).unwrap();
        assert_eq!(loaded.kind(), KeyKind::Software);
        assert_eq!(loaded.public_key_der(), created.public_key_der());

        let signature = loaded.sign(b"posture report").unwrap();
        assert!(verify(&created.public_key_der(), b"posture report", &signature));
        assert!(!verify(&created.public_key_der(), b"another report", &signature));

        let meta = std::fs::read_to_string(dir.join(META_FILE)).unwrap();
        assert_eq!(meta, r#"{"kind":"software"}"#);
    }

    #[test]
    fn auto_without_tpm_is_software() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::create(dir.path(), KeyChoice::Auto, &TpmLocation::none()).unwrap();
        assert_eq!(key.kind(), KeyKind::Software);
    }

    #[test]
    fn spki_is_p256_der() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::create(dir.path(), KeyChoice::Software, &TpmLocation::none()).unwrap();
        let spki = key.public_key_der();
        // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING 04||x||y }.
        assert_eq!(spki.len(), 91);
        assert_eq!(&spki[..2], &[0x30, 0x59]);
        assert_eq!(p256_point(&spki).unwrap().first(), Some(&0x04));
        assert!(p256_point(&spki[..90]).is_none());
    }

    #[test]
    fn key_files_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let key_dir = dir.path().join("key");
        DeviceKey::create(&key_dir, KeyChoice::Software, &TpmLocation::none()).unwrap();
        for name in [SOFTWARE_FILE, META_FILE] {
            let mode = std::fs::metadata(key_dir.join(name)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        assert_eq!(std::fs::metadata(&key_dir).unwrap().mode() & 0o777, 0o700);

        // As if written under umask 0: load tightens the file back to 0600.
        let pk8 = key_dir.join(SOFTWARE_FILE);
        std::fs::set_permissions(&pk8, std::fs::Permissions::from_mode(0o666)).unwrap();
        DeviceKey::load(&key_dir, &TpmLocation::none()).unwrap();
        assert_eq!(std::fs::metadata(&pk8).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn rustls_key_signs_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(DeviceKey::create(dir.path(), KeyChoice::Software, &TpmLocation::none()).unwrap());
        let signing = key.rustls_key();
        assert_eq!(signing.algorithm(), SignatureAlgorithm::ECDSA);
        assert!(
            signing
                .choose_scheme(&[SignatureScheme::ED25519, SignatureScheme::RSA_PSS_SHA256])
                .is_none()
        );
        let signer = signing
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        assert_eq!(signer.scheme(), SignatureScheme::ECDSA_NISTP256_SHA256);
        let signature = signer.sign(b"tls 1.3 certificate verify").unwrap();
        assert!(verify(
            &key.public_key_der(),
            b"tls 1.3 certificate verify",
            &signature
        ));
        assert_eq!(
            signing.public_key().unwrap().as_ref(),
            key.public_key_der().as_slice()
        );
    }

    #[test]
    fn create_refuses_an_existing_key() {
        let dir = tempfile::tempdir().unwrap();
        DeviceKey::create(dir.path(), KeyChoice::Software, &TpmLocation::none()).unwrap();
        let err = DeviceKey::create(dir.path(), KeyChoice::Software, &TpmLocation::none()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, KeyError::Exists { .. }), "{message}");
        assert!(
            message.contains(&dir.path().join(META_FILE).display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = DeviceKey::load(dir.path(), &TpmLocation::none()).unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }), "{err}");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );

        DeviceKey::create(dir.path(), KeyChoice::Software, &TpmLocation::none()).unwrap();
        let pk8 = dir.path().join(SOFTWARE_FILE);
        std::fs::write(&pk8, b"not a key").unwrap();
        let err = DeviceKey::load(dir.path(), &TpmLocation::none()).unwrap_err();
        assert!(err.to_string().contains(&pk8.display().to_string()), "{err}");
        assert!(err.to_string().contains("PKCS#8"), "{err}");

        let meta = dir.path().join(META_FILE);
        std::fs::write(&meta, br#"{"kind":"hsm"}"#).unwrap();
        let err = DeviceKey::load(dir.path(), &TpmLocation::none()).unwrap_err();
        assert!(err.to_string().contains(&meta.display().to_string()), "{err}");
    }

    #[test]
    fn tpm_asked_without_a_tpm() {
        let dir = tempfile::tempdir().unwrap();
        let err = DeviceKey::create(dir.path(), KeyChoice::Tpm, &TpmLocation::none()).unwrap_err();
        let expected = if cfg!(feature = "tpm") {
            "no TPM found (/dev/tpmrm0 absent and ZT_TPM_TCTI unset)"
        } else {
            "this zt was built without TPM support: build it with --features tpm"
        };
        assert_eq!(err.to_string(), expected);
        assert!(!dir.path().join(META_FILE).exists());
    }

    #[cfg(not(feature = "tpm"))]
    #[test]
    fn tpm_asked_of_a_build_without_the_feature() {
        let dir = tempfile::tempdir().unwrap();
        let tpm = TpmLocation::tcti("swtpm:host=127.0.0.1,port=2321".to_owned());
        let err = DeviceKey::create(dir.path(), KeyChoice::Tpm, &tpm).unwrap_err();
        assert!(matches!(err, KeyError::TpmUnsupported), "{err}");
        assert_eq!(
            err.to_string(),
            "this zt was built without TPM support: build it with --features tpm"
        );
        // Auto falls back to software when the build cannot use the TPM.
        let key = DeviceKey::create(dir.path(), KeyChoice::Auto, &tpm).unwrap();
        assert_eq!(key.kind(), KeyKind::Software);
    }

    #[test]
    fn kind_serde_and_display() {
        for (kind, name) in [(KeyKind::Tpm, "tpm"), (KeyKind::Software, "software")] {
            assert_eq!(kind.to_string(), name);
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<KeyKind>(&format!("\"{name}\"")).unwrap(),
                kind
            );
        }
    }

    #[test]
    fn key_choice_parses_what_the_cli_takes() {
        for choice in [KeyChoice::Auto, KeyChoice::Tpm, KeyChoice::Software] {
            assert_eq!(choice.to_string().parse::<KeyChoice>().unwrap(), choice);
        }
        let err = "hsm".parse::<KeyChoice>().unwrap_err();
        assert_eq!(
            err,
            r#"unknown device key choice "hsm": expected auto, tpm or software"#
        );
    }

    #[test]
    fn ecdsa_der_encodes_integers_minimally() {
        // r with its top bit set takes a zero byte; s with leading zeros loses them.
        let r = [0x80; 32];
        let mut s = [0x01; 32];
        s[0] = 0;
        s[1] = 0;
        let der = ecdsa_der(&r, &s);
        assert_eq!(der[0], 0x30);
        assert_eq!(usize::from(der[1]), der.len() - 2);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert_eq!(&der[5..37], &r);
        assert_eq!(&der[37..39], &[0x02, 30]);
        assert_eq!(&der[39..], &s[2..]);
    }

    #[test]
    fn device_key_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<DeviceKey>();
    }
}
