//! JWT-SVIDs: minting and verification per the JWT-SVID specification.
//!
//! JWS compact serialization is implemented here directly on aws-lc-rs so that
//! every rule of the specification is ours to enforce: the algorithm allow-list
//! (all nine RS/ES/PS algorithms, which no common JWT crate covers), `typ`,
//! headers that would let a token pick its own key, and the required claims.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::bundle::BundleSource;
use crate::jwk::{Curve, PublicKey};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Headers that would let the token choose its own verification key, or change
/// how it must be processed; a JWT-SVID never carries them.
const FORBIDDEN_HEADERS: &[&str] = &["jku", "jwk", "x5u", "x5c", "crit", "b64", "enc", "zip"];

/// Why a JWT-SVID could not be minted or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtSvidError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is {len} bytes, the limit is {MAX_TOKEN_LEN}")]
    TooLong {
        /// Length found.
        len: usize,
    },
    /// Not three base64url parts of JSON objects.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` outside RS/ES/PS 256/384/512 (`none`, HMAC, EdDSA…).
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    UnsupportedAlgorithm(String),
    /// `typ` other than `JWT` or `JOSE`.
    #[error("header typ {0:?} is not JWT or JOSE")]
    BadType(String),
    /// A header that lets a token choose its key or changes processing.
    #[error("header {0:?} is not allowed in a JWT-SVID")]
    ForbiddenHeader(String),
    /// A required claim is absent.
    #[error("claim {0:?} is missing")]
    MissingClaim(&'static str),
    /// A claim of the wrong type or value.
    #[error("claim {claim:?} is invalid: {reason}")]
    InvalidClaim {
        /// The claim.
        claim: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// `sub` is not a SPIFFE ID.
    #[error("subject is not a SPIFFE ID: {0}")]
    InvalidSubject(SpiffeIdError),
    /// No bundle for the subject's trust domain.
    #[error("no trust bundle for trust domain {0}")]
    NoBundle(TrustDomain),
    /// `kid` names no key of the bundle.
    #[error("no JWT authority with key ID {0:?} in the bundle of {1}")]
    UnknownKey(String, TrustDomain),
    /// The signature does not verify with any matching key.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is past.
    #[error("token expired at {exp} (unix), now is {now}")]
    Expired {
        /// `exp`.
        exp: u64,
        /// Validation time.
        now: u64,
    },
    /// The token lives longer than any issuer of short-lived tokens would make
    /// it: a forged-looking `exp` (year 9999), or an issuer misconfigured.
    #[error("token lifetime of {lifetime}s is over the maximum of {max}s")]
    LifetimeTooLong {
        /// From `iat` (or now, without one) to `exp`, seconds.
        lifetime: u64,
        /// The maximum accepted.
        max: u64,
    },
    /// `nbf` is in the future.
    #[error("token is not valid before {nbf} (unix), now is {now}")]
    NotYetValid {
        /// `nbf`.
        nbf: u64,
        /// Validation time.
        now: u64,
    },
    /// The expected audience is not among `aud`.
    #[error("audience {expected:?} is not in the token's audience {actual:?}")]
    AudienceMismatch {
        /// The audience the validator identifies with.
        expected: String,
        /// `aud`.
        actual: Vec<String>,
    },
    /// Minting: the key is of a type this code cannot sign with.
    #[error("signing key is not a PKCS#8 EC P-256/P-384/P-521 or RSA key")]
    UnsupportedSigningKey,
    /// Minting: nothing to put in `aud`, or an expiry not after issuance.
    #[error("cannot mint: {0}")]
    InvalidRequest(&'static str),
    /// The crypto library failed.
    #[error("signing failed")]
    SigningFailed,
}

/// The JWS algorithms the JWT-SVID specification allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs, reason = "the names are the RFC 7518 identifiers")]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
    ES512,
    PS256,
    PS384,
    PS512,
}

impl Algorithm {
    /// Every allowed algorithm.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::ES512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::ES512 => "ES512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
        }
    }

    /// The algorithm a [`JwtSigner`] with this key signs with: ES of the
    /// curve for EC keys, PS256 for RSA.
    pub fn for_key(key: &PublicKey) -> Self {
        match key {
            PublicKey::Ec {
                curve: Curve::P256, ..
            } => Algorithm::ES256,
            PublicKey::Ec {
                curve: Curve::P384, ..
            } => Algorithm::ES384,
            PublicKey::Ec {
                curve: Curve::P521, ..
            } => Algorithm::ES512,
            PublicKey::Rsa { .. } => Algorithm::PS256,
        }
    }

    /// Parses an `alg` value; case-sensitive, as RFC 7515 requires.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Verifies `signature` over `message` with `key`, if the key suits this algorithm.
    fn verify(self, key: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
        use signature as s;
        match (self, key) {
            (Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512, PublicKey::Ec { curve, .. }) => {
                let alg: &'static s::EcdsaVerificationAlgorithm = match (self, curve) {
                    (Algorithm::ES256, Curve::P256) => &s::ECDSA_P256_SHA256_FIXED,
                    (Algorithm::ES384, Curve::P384) => &s::ECDSA_P384_SHA384_FIXED,
                    (Algorithm::ES512, Curve::P521) => &s::ECDSA_P521_SHA512_FIXED,
                    _ => return false,
                };
                let Some(point) = key.uncompressed_point() else {
                    return false;
                };
                UnparsedPublicKey::new(alg, point).verify(message, sig).is_ok()
            }
            (_, PublicKey::Rsa { n, e }) => {
                let alg: &'static s::RsaParameters = match self {
                    Algorithm::RS256 => &s::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &s::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &s::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }.verify(alg, message, sig).is_ok()
            }
            _ => false,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A private key that signs JWT-SVIDs, with its key ID.
pub struct JwtSigner {
    kid: String,
    algorithm: Algorithm,
    key: SigningKey,
    public_key: PublicKey,
}

enum SigningKey {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        write!(f, "JwtSigner(kid {}, {})", self.kid, self.algorithm)
    }
}

impl JwtSigner {
    /// Loads a PKCS#8 private key. EC keys sign with the ES algorithm of their curve,
    /// RSA keys with PS256. The key ID is the key's RFC 7638 thumbprint.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, JwtSvidError> {
        use signature as s;
        let ec: [(&'static s::EcdsaSigningAlgorithm, Curve, Algorithm); 3] = [
            (&s::ECDSA_P256_SHA256_FIXED_SIGNING, Curve::P256, Algorithm::ES256),
            (&s::ECDSA_P384_SHA384_FIXED_SIGNING, Curve::P384, Algorithm::ES384),
            (&s::ECDSA_P521_SHA512_FIXED_SIGNING, Curve::P521, Algorithm::ES512),
        ];
        for (alg, curve, algorithm) in ec {
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(alg, der) {
                let public_key = PublicKey::from_uncompressed_point(curve, pair.public_key().as_ref())
                    .map_err(|_| JwtSvidError::UnsupportedSigningKey)?;
                return Ok(Self::new(SigningKey::Ec(pair), algorithm, public_key));
            }
        }
        let pair = RsaKeyPair::from_pkcs8(der).map_err(|_| JwtSvidError::UnsupportedSigningKey)?;
        let public_key = PublicKey::Rsa {
            n: pair
                .public_key()
                .modulus()
                .big_endian_without_leading_zero()
                .to_vec(),
            e: pair
                .public_key()
                .exponent()
                .big_endian_without_leading_zero()
                .to_vec(),
        };
        Ok(Self::new(SigningKey::Rsa(pair), Algorithm::PS256, public_key))
    }

    fn new(key: SigningKey, algorithm: Algorithm, public_key: PublicKey) -> Self {
        Self {
            kid: public_key.thumbprint(),
            algorithm,
            key,
            public_key,
        }
    }

    /// Signs RSA tokens with `algorithm` (RS*/PS*) instead of PS256.
    pub fn with_rsa_algorithm(mut self, algorithm: Algorithm) -> Result<Self, JwtSvidError> {
        let is_rsa_alg = !matches!(algorithm, Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512);
        match self.key {
            SigningKey::Rsa(_) if is_rsa_alg => {
                self.algorithm = algorithm;
                Ok(self)
            }
            _ => Err(JwtSvidError::InvalidRequest("algorithm does not suit the key")),
        }
    }

    /// The key ID put in the `kid` header and in the bundle.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this signer uses.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public half, for the trust bundle.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, JwtSvidError> {
        let rng = SystemRandom::new();
        match &self.key {
            SigningKey::Ec(pair) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JwtSvidError::SigningFailed),
            SigningKey::Rsa(pair) => {
                let padding: &'static dyn signature::RsaEncoding = match self.algorithm {
                    Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PSS_SHA256,
                };
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &rng, message, &mut sig)
                    .map_err(|_| JwtSvidError::SigningFailed)?;
                Ok(sig)
            }
        }
    }
}

/// Mints a JWT-SVID for `subject`, valid for `audience`, from `issued_at` until `expires_at`
/// (unix seconds).
pub fn mint_jwt_svid(
    signer: &JwtSigner,
    subject: &SpiffeId,
    audience: &[String],
    issued_at: u64,
    expires_at: u64,
) -> Result<String, JwtSvidError> {
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(JwtSvidError::InvalidRequest(
            "at least one non-empty audience is required",
        ));
    }
    if expires_at <= issued_at {
        return Err(JwtSvidError::InvalidRequest("expiry must be after issuance"));
    }
    if subject.is_root() {
        return Err(JwtSvidError::InvalidRequest("the subject needs a path"));
    }
    let aud = match audience {
        [one] => json!(one),
        many => json!(many),
    };
    let claims = json!({ "sub": subject.to_string(), "aud": aud, "exp": expires_at, "iat": issued_at });
    sign_jws(signer, "JWT", &claims)
}

/// A JWT-SVID whose signature, expiry and audience were verified.
///
/// Only [`verify_jwt_svid`] makes one.
#[derive(Clone, PartialEq)]
pub struct VerifiedJwtSvid {
    spiffe_id: SpiffeId,
    audience: Vec<String>,
    expiry: u64,
    claims: Map<String, Value>,
}

impl VerifiedJwtSvid {
    /// The verified subject.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// Every `aud` value.
    pub fn audience(&self) -> &[String] {
        &self.audience
    }

    /// `exp`, unix seconds.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// All claims, for callers that need more than the above (e.g. the Workload API).
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }
}

impl fmt::Debug for VerifiedJwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifiedJwtSvid({}, aud {:?})", self.spiffe_id, self.audience)
    }
}

/// The longest JWT-SVID lifetime accepted by default: a day, zt server's
/// default CA lifetime, which no JWT-SVID it signs outlives (SPIRE's default
/// JWT-SVID TTL is five minutes).
pub const DEFAULT_MAX_LIFETIME: u64 = 24 * 3600;

/// Verifies a JWT-SVID: allowed `alg` and `typ`, signature by a JWT authority of the
/// subject's trust domain, `exp` after `now` and at most [`DEFAULT_MAX_LIFETIME`]
/// after `iat` (or `now`), `nbf` (if any) not after `now`, and `audience` among
/// `aud`.
pub fn verify_jwt_svid(
    token: &str,
    bundles: &impl BundleSource,
    audience: &str,
    now: u64,
) -> Result<VerifiedJwtSvid, JwtSvidError> {
    verify_jwt_svid_within(token, bundles, audience, now, DEFAULT_MAX_LIFETIME)
}

/// [`verify_jwt_svid`] with the longest lifetime accepted, in seconds.
pub fn verify_jwt_svid_within(
    token: &str,
    bundles: &impl BundleSource,
    audience: &str,
    now: u64,
    max_lifetime: u64,
) -> Result<VerifiedJwtSvid, JwtSvidError> {
    let jws = Jws::decode(token, &["JWT", "JOSE"], true)?;
    let claims = &jws.claims;
    let spiffe_id = match claims.get("sub") {
        Some(Value::String(sub)) => SpiffeId::parse(sub).map_err(JwtSvidError::InvalidSubject)?,
        Some(_) => {
            return Err(JwtSvidError::InvalidClaim {
                claim: "sub",
                reason: "not a string",
            });
        }
        None => return Err(JwtSvidError::MissingClaim("sub")),
    };
    if spiffe_id.is_root() {
        return Err(JwtSvidError::InvalidClaim {
            claim: "sub",
            reason: "a workload ID needs a path",
        });
    }
    let td = spiffe_id.trust_domain();
    let bundle = bundles
        .bundle_for(td)
        .ok_or_else(|| JwtSvidError::NoBundle(td.clone()))?;

    let verified = match jws.kid() {
        Some(kid) => {
            let key = bundle
                .jwt_authority(kid)
                .ok_or_else(|| JwtSvidError::UnknownKey(kid.to_owned(), td.clone()))?;
            jws.verify(key)
        }
        // `kid` is optional in a JWT-SVID: try each key of the trust domain.
        None => bundle.jwt_authorities().any(|(_, key)| jws.verify(key)),
    };
    if !verified {
        return Err(JwtSvidError::BadSignature);
    }
    let expiry = check_times(claims, now, max_lifetime)?;
    let aud = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) if !many.is_empty() => many
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtSvidError::InvalidClaim {
                claim: "aud",
                reason: "not a string or array of strings",
            })?,
        Some(Value::Array(_)) => {
            return Err(JwtSvidError::InvalidClaim {
                claim: "aud",
                reason: "empty",
            });
        }
        Some(_) => {
            return Err(JwtSvidError::InvalidClaim {
                claim: "aud",
                reason: "not a string or array of strings",
            });
        }
        None => return Err(JwtSvidError::MissingClaim("aud")),
    };
    if !aud.iter().any(|a| a == audience) {
        return Err(JwtSvidError::AudienceMismatch {
            expected: audience.to_owned(),
            actual: aud,
        });
    }
    Ok(VerifiedJwtSvid {
        spiffe_id,
        audience: aud,
        expiry,
        claims: jws.claims,
    })
}

/// A JWS in compact serialization whose header passed the checks every token
/// zt accepts must pass; its signature is not verified yet.
#[derive(Debug, Clone)]
pub struct Jws {
    /// The protected header.
    pub header: Map<String, Value>,
    /// The payload, a JSON object.
    pub claims: Map<String, Value>,
    algorithm: Algorithm,
    signing_input_len: usize,
    token: String,
    signature: Vec<u8>,
}

impl Jws {
    /// Decodes `token`: at most [`MAX_TOKEN_LEN`] bytes, three base64url parts
    /// of JSON objects without duplicate members at any depth, an allowed `alg` (never
    /// `none` or HMAC), no header that picks its own key or changes
    /// processing, and a `typ` among `types` (compared without case and
    /// without an `application/` prefix, RFC 7515 §4.1.9), or absent where
    /// `typ_optional`.
    pub fn decode(token: &str, types: &[&str], typ_optional: bool) -> Result<Self, JwtSvidError> {
        Self::decode_within(token, MAX_TOKEN_LEN, Some(types), typ_optional)
    }

    /// [`Jws::decode`] with another length limit, and `types: None` for a
    /// token whose `typ` may be anything or absent (the tokens of other
    /// issuers: Istio's RequestAuthentication does not check `typ`).
    /// [`JwtSvidError::TooLong`] still reports the limit of [`MAX_TOKEN_LEN`]'s
    /// message; callers that pass their own limit report it themselves.
    pub fn decode_within(
        token: &str,
        max_len: usize,
        types: Option<&[&str]>,
        typ_optional: bool,
    ) -> Result<Self, JwtSvidError> {
        if token.len() > max_len {
            return Err(JwtSvidError::TooLong { len: token.len() });
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtSvidError::Malformed(
                "a JWS compact token has exactly three parts",
            ));
        };
        let header = decode_object(header_b64, "header is not base64url JSON")?;
        let algorithm = match header.get("alg") {
            Some(Value::String(alg)) => {
                Algorithm::from_name(alg).ok_or_else(|| JwtSvidError::UnsupportedAlgorithm(alg.clone()))?
            }
            Some(_) => return Err(JwtSvidError::Malformed("alg is not a string")),
            None => return Err(JwtSvidError::Malformed("alg header is missing")),
        };
        match (header.get("typ"), types) {
            (None | Some(Value::String(_)), None) => {}
            (None, Some(_)) if typ_optional => {}
            (Some(Value::String(t)), Some(types)) if types.iter().any(|want| media_type_is(t, want)) => {}
            (None, _) => return Err(JwtSvidError::BadType(String::new())),
            (Some(other), _) => return Err(JwtSvidError::BadType(value_text(other))),
        }
        if let Some(name) = FORBIDDEN_HEADERS.iter().find(|h| header.contains_key(**h)) {
            return Err(JwtSvidError::ForbiddenHeader((*name).to_owned()));
        }
        if header.get("kid").is_some_and(|kid| !kid.is_string()) {
            return Err(JwtSvidError::Malformed("kid is not a string"));
        }
        let claims = decode_object(claims_b64, "claims are not base64url JSON")?;
        let signature = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| JwtSvidError::Malformed("signature is not base64url"))?;
        Ok(Self {
            header,
            claims,
            algorithm,
            signing_input_len: header_b64.len() + 1 + claims_b64.len(),
            token: token.to_owned(),
            signature,
        })
    }

    /// The `kid` header.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// The `alg` header.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `key` made the signature, with the header's algorithm.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let input = &self.token.as_bytes()[..self.signing_input_len];
        self.algorithm.verify(key, input, &self.signature)
    }
}

/// Whether a `typ` value names the media type `want` (`at+jwt` matches
/// `at+jwt`, `AT+JWT` and `application/at+jwt`).
fn media_type_is(typ: &str, want: &str) -> bool {
    let bare = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    bare.eq_ignore_ascii_case(want)
}

/// Checks `exp` (required, after `now`), the lifetime from `iat` (or `now`)
/// to `exp` (at most `max_lifetime`) and `nbf` (not after `now`); returns `exp`.
pub fn check_times(claims: &Map<String, Value>, now: u64, max_lifetime: u64) -> Result<u64, JwtSvidError> {
    check_times_within(claims, now, Some(max_lifetime), 0)
}

/// [`check_times`] for tokens of other issuers: `max_lifetime: None` accepts
/// any lifetime, and `leeway` seconds of clock skew are allowed on `exp` and
/// `nbf` (never on the lifetime).
pub fn check_times_within(
    claims: &Map<String, Value>,
    now: u64,
    max_lifetime: Option<u64>,
    leeway: u64,
) -> Result<u64, JwtSvidError> {
    let expiry = numeric_date(claims, "exp")?.ok_or(JwtSvidError::MissingClaim("exp"))? as u64;
    if expiry.saturating_add(leeway) <= now {
        return Err(JwtSvidError::Expired { exp: expiry, now });
    }
    // Counted from issuance when the token says so (an `iat` in the future
    // counts as now), else from now.
    let issued = numeric_date(claims, "iat")?.map_or(now, |iat| (iat.max(0.0) as u64).min(now));
    let lifetime = expiry.saturating_sub(issued);
    if let Some(max) = max_lifetime
        && lifetime > max
    {
        return Err(JwtSvidError::LifetimeTooLong { lifetime, max });
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?.map(|nbf| nbf.ceil())
        && nbf > now.saturating_add(leeway) as f64
    {
        return Err(JwtSvidError::NotYetValid { nbf: nbf as u64, now });
    }
    Ok(expiry)
}

/// Signs `claims` as a compact JWS with `signer`'s key, `alg` and `kid`, and `typ`.
pub fn sign_jws(signer: &JwtSigner, typ: &str, claims: &Value) -> Result<String, JwtSvidError> {
    let header = json!({ "alg": signer.algorithm.name(), "kid": signer.kid, "typ": typ });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = signer.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Decodes a base64url JSON object, refusing duplicate member names at any
/// depth: parsers that keep the first and the last of
/// `{"alg":"none","alg":"ES256"}`, or of `{"cnf":{"x5t#S256":A,"x5t#S256":B}}`,
/// would disagree.
fn decode_object(part: &str, what: &'static str) -> Result<Map<String, Value>, JwtSvidError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtSvidError::Malformed(what))?;
    match serde_json::from_slice::<Unique>(&bytes) {
        Ok(Unique(Value::Object(map))) => Ok(map),
        _ => Err(JwtSvidError::Malformed(what)),
    }
}

/// A JSON value whose objects, at every depth, have unique member names
/// (serde_json's own recursion limit bounds the depth).
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Unique;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON whose objects have unique member names")
            }

            fn visit_bool<E>(self, v: bool) -> Result<Unique, E> {
                Ok(Unique(Value::Bool(v)))
            }

            fn visit_i64<E>(self, v: i64) -> Result<Unique, E> {
                Ok(Unique(Value::from(v)))
            }

            fn visit_u64<E>(self, v: u64) -> Result<Unique, E> {
                Ok(Unique(Value::from(v)))
            }

            fn visit_f64<E>(self, v: f64) -> Result<Unique, E> {
                Ok(Unique(Value::from(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Unique, E> {
                Ok(Unique(Value::String(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Unique, E> {
                Ok(Unique(Value::String(v)))
            }

            fn visit_unit<E>(self) -> Result<Unique, E> {
                Ok(Unique(Value::Null))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut access: A) -> Result<Unique, A::Error> {
                let mut items = Vec::new();
                while let Some(Unique(item)) = access.next_element::<Unique>()? {
                    items.push(item);
                }
                Ok(Unique(Value::Array(items)))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Unique, A::Error> {
                let mut map = Map::new();
                while let Some((key, Unique(value))) = access.next_entry::<String, Unique>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate member {key:?}")));
                    }
                    map.insert(key, value);
                }
                Ok(Unique(Value::Object(map)))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// Reads a NumericDate claim (RFC 7519 §2): seconds, possibly fractional, never negative.
/// Callers round towards the safe side (down for `exp`, up for `nbf`).
fn numeric_date(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<f64>, JwtSvidError> {
    match claims.get(claim).map(Value::as_f64) {
        None => Ok(None),
        Some(Some(secs)) if secs.is_finite() && secs >= 0.0 && secs < u64::MAX as f64 => Ok(Some(secs)),
        Some(_) => Err(JwtSvidError::InvalidClaim {
            claim,
            reason: "not a non-negative number",
        }),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
