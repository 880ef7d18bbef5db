//! SPIFFE trust bundles: the X.509 authorities and JWT keys of one trust domain,
//! read from and written to the SPIFFE JWKS format or PEM.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::jwk::{Jwk, JwkError, PublicKey};
use crate::spiffe_id::TrustDomain;
use crate::x509::{self, X509SvidError};

/// Largest bundle document accepted, in bytes.
pub const MAX_BUNDLE_BYTES: usize = 1 << 20;

/// `use` of JWKs that are X.509-SVID authorities.
const USE_X509_SVID: &str = "x509-svid";
/// `use` of JWKs that verify JWT-SVIDs.
const USE_JWT_SVID: &str = "jwt-svid";

/// Why a bundle could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The document is larger than [`MAX_BUNDLE_BYTES`].
    #[error("bundle is {len} bytes, the limit is {MAX_BUNDLE_BYTES}")]
    TooLarge {
        /// Size found.
        len: usize,
    },
    /// Not a JSON JWK Set.
    #[error("bundle is not a JWK set: {0}")]
    Json(String),
    /// PEM that could not be read.
    #[error("bundle PEM is malformed: {0}")]
    Pem(String),
    /// A document with neither PEM certificates nor a JWK set.
    #[error("no CERTIFICATE block found (expected PEM certificates or a SPIFFE JWK set)")]
    Empty,
    /// One key of the set is wrong.
    #[error("keys[{index}]: {reason}")]
    Key {
        /// Position in `keys`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An X.509 authority that is not a CA certificate.
    #[error("authority certificate: {0}")]
    Authority(#[from] X509SvidError),
    /// Two JWT keys with one key ID.
    #[error("duplicate JWT key ID {0:?}")]
    DuplicateKeyId(String),
    /// The trust domain could not be told from the bundle's authorities.
    #[error(
        "cannot tell which trust domain the bundle is for: its authorities carry no SPIFFE ID (give the trust domain explicitly)"
    )]
    UnknownTrustDomain,
    /// Authorities of several trust domains in one bundle.
    #[error("bundle authorities belong to different trust domains: {0} and {1}")]
    MixedTrustDomains(TrustDomain, TrustDomain),
}

/// The trust bundle of one trust domain.
#[derive(Debug, Clone)]
pub struct Bundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    jwt_authorities: BTreeMap<String, PublicKey>,
    sequence: Option<u64>,
    refresh_hint: Option<u64>,
}

/// Where verifiers look up the bundle of a trust domain.
pub trait BundleSource {
    /// The bundle for `trust_domain`, if this source trusts it at all.
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&Bundle>;
}

impl BundleSource for Bundle {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&Bundle> {
        (self.trust_domain == *trust_domain).then_some(self)
    }
}

/// Bundles of several trust domains (one's own and federated ones).
#[derive(Debug, Clone, Default)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, Bundle>,
}

impl BundleSet {
    /// Adds or replaces the bundle of its trust domain.
    pub fn insert(&mut self, bundle: Bundle) {
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
    }

    /// Every bundle, ordered by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = &Bundle> {
        self.bundles.values()
    }
}

impl BundleSource for BundleSet {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&Bundle> {
        self.bundles.get(trust_domain)
    }
}

/// The JWK Set document of a SPIFFE bundle.
#[derive(Serialize, Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

impl Bundle {
    /// An empty bundle for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: BTreeMap::new(),
            sequence: None,
            refresh_hint: None,
        }
    }

    /// The trust domain this bundle is for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Adds a CA certificate that X.509-SVIDs of this trust domain chain to.
    /// It must be a signing certificate (`cA=true`, keyCertSign); adding one twice does nothing.
    pub fn add_x509_authority(&mut self, der: CertificateDer<'static>) -> Result<(), BundleError> {
        x509::check_signing_certificate(&der)?;
        if !self.x509_authorities.contains(&der) {
            self.x509_authorities.push(der);
        }
        Ok(())
    }

    /// Adds a JWT-SVID signing key under its key ID.
    pub fn add_jwt_authority(&mut self, kid: &str, key: PublicKey) -> Result<(), BundleError> {
        if kid.is_empty() {
            return Err(BundleError::Key {
                index: self.jwt_authorities.len(),
                reason: "JWT key ID is empty".into(),
            });
        }
        if self.jwt_authorities.contains_key(kid) {
            return Err(BundleError::DuplicateKeyId(kid.to_owned()));
        }
        self.jwt_authorities.insert(kid.to_owned(), key);
        Ok(())
    }

    /// The X.509 authorities, in the order they were added.
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    /// The JWT key with ID `kid`.
    pub fn jwt_authority(&self, kid: &str) -> Option<&PublicKey> {
        self.jwt_authorities.get(kid)
    }

    /// Every JWT key with its ID.
    pub fn jwt_authorities(&self) -> impl Iterator<Item = (&str, &PublicKey)> {
        self.jwt_authorities.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `spiffe_sequence`: changes whenever the content changes.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// Sets `spiffe_sequence`.
    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = Some(sequence);
    }

    /// `spiffe_refresh_hint`, in seconds.
    pub fn refresh_hint(&self) -> Option<u64> {
        self.refresh_hint
    }

    /// Sets `spiffe_refresh_hint`, in seconds.
    pub fn set_refresh_hint(&mut self, seconds: u64) {
        self.refresh_hint = Some(seconds);
    }

    /// Reads a bundle in either format (JWKS if it starts with `{`, PEM otherwise).
    /// Without `trust_domain`, it is taken from the SPIFFE IDs of the X.509 authorities.
    pub fn parse(bytes: &[u8], trust_domain: Option<TrustDomain>) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { len: bytes.len() });
        }
        // Without a name, read under a provisional one and take the authorities' own;
        // the provisional name never leaves this function.
        let td = trust_domain.clone().unwrap_or_else(TrustDomain::provisional);
        let is_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let mut bundle = if is_json {
            Self::parse_jwks(td, bytes)?
        } else {
            Self::parse_pem(td, bytes)?
        };
        if trust_domain.is_none() {
            bundle.trust_domain = bundle.authorities_trust_domain()?;
        }
        Ok(bundle)
    }

    /// Reads a SPIFFE bundle (JWK Set) for `trust_domain`.
    ///
    /// Keys of unknown `use` or key type are ignored, as are `x509-svid` keys
    /// without `x5c`, as the specifications require; anything else malformed is an error.
    pub fn parse_jwks(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { len: bytes.len() });
        }
        let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut bundle = Self::new(trust_domain);
        bundle.sequence = set.spiffe_sequence;
        bundle.refresh_hint = set.spiffe_refresh_hint;
        for (index, value) in set.keys.into_iter().enumerate() {
            let key_error = |reason: String| BundleError::Key { index, reason };
            let jwk: Jwk = serde_json::from_value(value).map_err(|e| key_error(e.to_string()))?;
            match jwk.use_.as_deref() {
                None => return Err(key_error("\"use\" is missing".into())),
                Some(USE_X509_SVID) => {
                    let Some(first) = jwk.x5c.as_ref().and_then(|c| c.first()) else {
                        continue;
                    };
                    let der = STANDARD
                        .decode(first)
                        .map_err(|_| key_error("x5c[0] is not base64".into()))?;
                    bundle
                        .add_x509_authority(CertificateDer::from(der))
                        .map_err(|e| key_error(e.to_string()))?;
                }
                Some(USE_JWT_SVID) => {
                    let kid = match jwk.kid.as_deref() {
                        Some(kid) if !kid.is_empty() => kid.to_owned(),
                        _ => return Err(key_error("a jwt-svid key must have a \"kid\"".into())),
                    };
                    let key = match PublicKey::read_from(&jwk) {
                        Ok(key) => key,
                        Err(JwkError::UnsupportedKeyType(_)) => continue,
                        Err(e) => return Err(key_error(e.to_string())),
                    };
                    match bundle.add_jwt_authority(&kid, key) {
                        Err(BundleError::DuplicateKeyId(kid)) => {
                            return Err(key_error(format!("duplicate kid {kid:?}")));
                        }
                        other => other?,
                    }
                }
                Some(_) => continue,
            }
        }
        Ok(bundle)
    }

    /// Reads PEM CA certificates as the X.509 authorities of `trust_domain`.
    pub fn parse_pem(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { len: bytes.len() });
        }
        let mut bundle = Self::new(trust_domain);
        for cert in CertificateDer::pem_slice_iter(bytes) {
            let cert = cert.map_err(|e| BundleError::Pem(x509::pem_error(e)))?;
            bundle.add_x509_authority(cert)?;
        }
        if bundle.x509_authorities.is_empty() {
            return Err(BundleError::Empty);
        }
        Ok(bundle)
    }

    /// The bundle as a SPIFFE JWK Set document.
    pub fn to_jwks(&self) -> Result<String, BundleError> {
        self.jwks(true)
    }

    /// Only the JWT authorities, as a JWK Set: the JWT bundle of the Workload API,
    /// where every key must carry a `kid`.
    pub fn to_jwt_jwks(&self) -> Result<String, BundleError> {
        self.jwks(false)
    }

    /// The X.509 authorities as concatenated DER, as the Workload API carries them.
    pub fn x509_authorities_der(&self) -> Vec<u8> {
        self.x509_authorities
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect()
    }

    fn jwks(&self, with_x509: bool) -> Result<String, BundleError> {
        let mut keys = Vec::new();
        for der in self.x509_authorities.iter().filter(|_| with_x509) {
            let mut jwk = Jwk {
                use_: Some(USE_X509_SVID.into()),
                x5c: Some(vec![STANDARD.encode(der.as_ref())]),
                ..Jwk::default()
            };
            x509::authority_public_key(der)?.write_to(&mut jwk);
            keys.push(jwk);
        }
        for (kid, key) in &self.jwt_authorities {
            let mut jwk = Jwk {
                use_: Some(USE_JWT_SVID.into()),
                kid: Some(kid.clone()),
                ..Jwk::default()
            };
            key.write_to(&mut jwk);
            keys.push(jwk);
        }
        let keys = keys
            .into_iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Json(e.to_string()))?;
        let set = JwkSet {
            keys,
            spiffe_sequence: self.sequence,
            spiffe_refresh_hint: self.refresh_hint,
        };
        serde_json::to_string_pretty(&set).map_err(|e| BundleError::Json(e.to_string()))
    }

    /// The X.509 authorities as concatenated PEM certificates.
    pub fn to_pem(&self) -> String {
        self.x509_authorities.iter().map(|c| x509::to_pem(c)).collect()
    }

    /// The trust domain named by the authorities' SPIFFE IDs; they must all agree.
    fn authorities_trust_domain(&self) -> Result<TrustDomain, BundleError> {
        let mut found: Option<TrustDomain> = None;
        for der in &self.x509_authorities {
            let Some(td) = x509::authority_trust_domain(der)? else {
                continue;
            };
            match &found {
                Some(prev) if *prev != td => return Err(BundleError::MixedTrustDomains(prev.clone(), td)),
                _ => found = Some(td),
            }
        }
        found.ok_or(BundleError::UnknownTrustDomain)
    }
}
