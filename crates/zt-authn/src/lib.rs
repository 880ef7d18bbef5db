//! Request authentication: JWTs verified against an issuer's keys.
//!
//! An [`Issuer`] is one trusted token issuer (Istio's `jwtRules` entry): its
//! `iss`, the audiences it must be for, and its [`Keys`]. [`Issuer::verify`]
//! checks a bearer token and returns [`Verified`], which only it can make, or
//! why it [`Refused`] the token. Only asymmetric algorithms verify (RS*, PS*,
//! ES*): `none` and HMAC are refused, so a public key can never be used as an
//! HMAC secret. [`request`] applies Istio's RequestAuthentication rules to a
//! whole request (where tokens are, which rule accepts one).

#![forbid(unsafe_code)]

pub mod keys;
pub mod request;

use serde_json::{Map, Value};
use zt_identity::JwtSvidError;
use zt_identity::jwt::{Jws, check_times_within};

pub use keys::{Keys, KeysError, RemoteSettings};

/// Longest token accepted, in bytes; longer ones are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Why a token was refused. The messages carry nothing from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is over {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    /// Not a JWS of JSON objects, or a required claim missing or of the wrong type.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is not an asymmetric algorithm zt verifies (`none`, HMAC, …).
    #[error("token algorithm is not allowed")]
    Algorithm,
    /// `typ` is not among the issuer's allowed types.
    #[error("token type is not allowed")]
    Type,
    /// A header that lets the token pick its own key or changes processing (`jwk`, `jku`, `crit`, …).
    #[error("token carries a forbidden header")]
    ForbiddenHeader,
    /// `iss` is not this issuer.
    #[error("token issuer is not the expected one")]
    WrongIssuer,
    /// No key of the issuer's set has the token's `kid` (or the token has none and the set several keys).
    #[error("token key is not among the issuer's keys")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` is past (beyond the allowed skew).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the allowed skew).
    #[error("token is not valid yet")]
    NotYetValid,
    /// None of the token's audiences is one the issuer's rule names.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// The issuer's keys could not be fetched, or the last good ones are too old: fail closed.
    #[error("issuer keys are unavailable")]
    KeysUnavailable,
}

impl Refused {
    /// A snake_case label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::TooLarge => "too_large",
            Refused::Malformed(_) => "malformed",
            Refused::Algorithm => "algorithm",
            Refused::Type => "type",
            Refused::ForbiddenHeader => "forbidden_header",
            Refused::WrongIssuer => "wrong_issuer",
            Refused::UnknownKey => "unknown_key",
            Refused::BadSignature => "bad_signature",
            Refused::Expired => "expired",
            Refused::NotYetValid => "not_yet_valid",
            Refused::WrongAudience => "wrong_audience",
            Refused::KeysUnavailable => "keys_unavailable",
        }
    }
}

impl From<JwtSvidError> for Refused {
    fn from(error: JwtSvidError) -> Self {
        match error {
            JwtSvidError::TooLong { .. } => Refused::TooLarge,
            JwtSvidError::UnsupportedAlgorithm(_) => Refused::Algorithm,
            JwtSvidError::BadType(_) => Refused::Type,
            JwtSvidError::ForbiddenHeader(_) => Refused::ForbiddenHeader,
            JwtSvidError::Expired { .. } => Refused::Expired,
            JwtSvidError::NotYetValid { .. } => Refused::NotYetValid,
            JwtSvidError::BadSignature => Refused::BadSignature,
            JwtSvidError::MissingClaim("exp") => Refused::Malformed("claim exp is missing"),
            JwtSvidError::InvalidClaim { .. } => Refused::Malformed("a time claim is not a number"),
            JwtSvidError::Malformed(what) => Refused::Malformed(what),
            _ => Refused::Malformed("token is invalid"),
        }
    }
}

/// One trusted issuer: its `iss`, the audiences its tokens must name (none:
/// any, as Istio), its keys, and the `typ` values allowed (none: any).
#[derive(Debug, Clone)]
pub struct Issuer {
    issuer: String,
    audiences: Vec<String>,
    keys: Keys,
    types: Option<Vec<String>>,
    clock_skew: u64,
}

impl Issuer {
    /// An issuer whose tokens carry `iss` equal to `issuer`, for one of
    /// `audiences` (empty: any audience), signed by one of `keys`.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>, keys: Keys) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            keys,
            types: None,
            clock_skew: CLOCK_SKEW_SECS,
        }
    }

    /// Tolerates `seconds` of clock skew on `exp` and `nbf` instead of
    /// [`CLOCK_SKEW_SECS`] (when the issuer's clock is this machine's, or
    /// known to be close).
    pub fn with_clock_skew(mut self, seconds: u64) -> Self {
        self.clock_skew = seconds;
        self
    }

    /// Accepts only tokens whose `typ` is one of `types` (compared without case
    /// and without an `application/` prefix); by default any `typ` or none.
    pub fn with_types(mut self, types: Vec<String>) -> Self {
        self.types = Some(types);
        self
    }

    /// The `iss` this issuer's tokens carry.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Verifies `token` now.
    pub async fn verify(&self, token: &str) -> Result<Verified, Refused> {
        self.verify_at(token, zt_identity::clock::unix_seconds()).await
    }

    /// Verifies `token` at `now` (Unix seconds): size, form and algorithm,
    /// issuer, key, signature, then times and audience.
    pub async fn verify_at(&self, token: &str, now: u64) -> Result<Verified, Refused> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Refused::TooLarge);
        }
        let types: Option<Vec<&str>> = self
            .types
            .as_ref()
            .map(|t| t.iter().map(String::as_str).collect());
        let jws = Jws::decode_within(token, MAX_TOKEN_LEN, types.as_deref(), false)?;
        if jws.claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(Refused::WrongIssuer);
        }
        let set = self.keys.for_kid(jws.kid()).await?;
        if !set.candidates(jws.kid()).any(|key| jws.verify(key)) {
            return Err(Refused::BadSignature);
        }
        // Signed by the issuer from here on.
        let claims = jws.claims;
        check_times_within(&claims, now, None, self.clock_skew)?;
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) => sub.clone(),
            _ => return Err(Refused::Malformed("claim sub is missing or not a string")),
        };
        let audiences = match claims.get("aud") {
            None => Vec::new(),
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(auds)) => auds
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(Refused::Malformed("claim aud is not a string or strings"))?,
            Some(_) => return Err(Refused::Malformed("claim aud is not a string or strings")),
        };
        if !self.audiences.is_empty() && !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(Refused::WrongAudience);
        }
        let presenter = match claims.get("azp") {
            None => None,
            Some(Value::String(azp)) => Some(azp.clone()),
            Some(_) => return Err(Refused::Malformed("claim azp is not a string")),
        };
        Ok(Verified {
            issuer: self.issuer.clone(),
            subject,
            audiences,
            presenter,
            claims,
        })
    }
}

/// A token whose signature, issuer, audience and times were checked; only
/// [`Issuer::verify`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    issuer: String,
    subject: String,
    audiences: Vec<String>,
    presenter: Option<String>,
    claims: Map<String, Value>,
}

impl Verified {
    /// `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `sub`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// `aud`, as a list.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// `azp`, the authorized presenter.
    pub fn presenter(&self) -> Option<&str> {
        self.presenter.as_deref()
    }

    /// Every claim of the token.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// `ISS/SUB`: Istio's `request.auth.principal`, what `requestPrincipals` match.
    pub fn principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }

    /// The request credential authorization policies see.
    pub fn to_auth(&self) -> zt_policy::request::Auth {
        zt_policy::request::Auth {
            principal: Some(self.principal()),
            audiences: self.audiences.clone(),
            presenter: self.presenter.clone(),
            claims: self.claims.clone(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;
    use zt_identity::JwtSigner;
    use zt_identity::jwt::sign_jws;

    pub(crate) const ISS: &str = "https://issuer.example";
    pub(crate) const NOW: u64 = 1_800_000_000;

    pub(crate) fn signer() -> JwtSigner {
        let key = rcgen::KeyPair::generate().unwrap();
        JwtSigner::from_pkcs8(&key.serialize_der()).unwrap()
    }

    pub(crate) fn jwks(signers: &[&JwtSigner]) -> String {
        let keys: Vec<Value> = signers
            .iter()
            .map(|s| s.public_key().to_signing_jwk(s.kid(), s.algorithm().name()))
            .collect();
        json!({ "keys": keys }).to_string()
    }

    pub(crate) fn claims() -> Value {
        json!({ "iss": ISS, "sub": "alice", "aud": ["api"], "exp": NOW + 600, "iat": NOW, "azp": "cli", "groups": ["dev"] })
    }

    fn issuer(signer: &JwtSigner) -> Issuer {
        Issuer::new(ISS, vec!["api".into()], Keys::inline(&jwks(&[signer])).unwrap())
    }

    fn with(claims: Value, edit: impl FnOnce(&mut Map<String, Value>)) -> Value {
        let mut claims = claims;
        if let Value::Object(map) = &mut claims {
            edit(map);
        }
        claims
    }

    /// A token with a hand-made header and signature.
    fn raw(header: &Value, claims: &Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    async fn refusal(issuer: &Issuer, token: &str) -> Refused {
        issuer.verify_at(token, NOW).await.expect_err("refused")
    }

    #[tokio::test]
    async fn valid_token_gives_principal_and_auth() {
        let s = signer();
        let token = sign_jws(&s, "JWT", &claims()).unwrap();
        let verified = issuer(&s).verify_at(&token, NOW).await.unwrap();
        assert_eq!(verified.principal(), "https://issuer.example/alice");
        assert_eq!(verified.audiences(), ["api"]);
        assert_eq!(verified.presenter(), Some("cli"));
        let auth = verified.to_auth();
        assert_eq!(auth.principal.as_deref(), Some("https://issuer.example/alice"));
        assert_eq!(auth.claims.get("groups"), Some(&json!(["dev"])));
        // Any audience when the rule names none; skew tolerated both ways.
        let any = Issuer::new(ISS, vec![], Keys::inline(&jwks(&[&s])).unwrap());
        let token = sign_jws(
            &s,
            "at+jwt",
            &with(claims(), |c| {
                c.remove("aud");
            }),
        )
        .unwrap();
        assert!(any.verify_at(&token, NOW + 600 + 30).await.is_ok());
        let token = sign_jws(
            &s,
            "JWT",
            &with(claims(), |c| {
                c.insert("nbf".into(), json!(NOW + 30));
            }),
        )
        .unwrap();
        assert!(any.verify_at(&token, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn every_refusal() {
        let s = signer();
        let other = signer();
        let iss = issuer(&s);
        let sign = |c: Value| sign_jws(&s, "JWT", &c).unwrap();

        assert_eq!(
            refusal(&iss, "not a token").await,
            Refused::Malformed("a JWS compact token has exactly three parts")
        );
        assert_eq!(refusal(&iss, "e30.e30.").await.reason(), "malformed");
        let huge = format!("{}.{}.x", "a".repeat(MAX_TOKEN_LEN), "b");
        assert_eq!(refusal(&iss, &huge).await, Refused::TooLarge);
        // Just under the limit is parsed (and fails for what it is, not its size).
        let big = sign(with(claims(), |c| {
            c.insert("pad".into(), json!("x".repeat(40_000)));
        }));
        assert!(big.len() > 16 * 1024 && big.len() < MAX_TOKEN_LEN);
        assert!(iss.verify_at(&big, NOW).await.is_ok());

        let expired = sign(with(claims(), |c| {
            c.insert("exp".into(), json!(NOW - 61));
        }));
        assert_eq!(refusal(&iss, &expired).await, Refused::Expired);
        let no_exp = sign(with(claims(), |c| {
            c.remove("exp");
        }));
        assert_eq!(refusal(&iss, &no_exp).await.reason(), "malformed");
        let early = sign(with(claims(), |c| {
            c.insert("nbf".into(), json!(NOW + 61));
        }));
        assert_eq!(refusal(&iss, &early).await, Refused::NotYetValid);
        let foreign = sign(with(claims(), |c| {
            c.insert("iss".into(), json!("https://evil.example"));
        }));
        assert_eq!(refusal(&iss, &foreign).await, Refused::WrongIssuer);
        let no_iss = sign(with(claims(), |c| {
            c.remove("iss");
        }));
        assert_eq!(refusal(&iss, &no_iss).await, Refused::WrongIssuer);
        let elsewhere = sign(with(claims(), |c| {
            c.insert("aud".into(), json!("other"));
        }));
        assert_eq!(refusal(&iss, &elsewhere).await, Refused::WrongAudience);
        let no_aud = sign(with(claims(), |c| {
            c.remove("aud");
        }));
        assert_eq!(refusal(&iss, &no_aud).await, Refused::WrongAudience);
        let no_sub = sign(with(claims(), |c| {
            c.remove("sub");
        }));
        assert_eq!(refusal(&iss, &no_sub).await.reason(), "malformed");

        // alg none, and HS256 keyed with the public key's bytes (key confusion).
        let none = raw(&json!({"alg": "none", "typ": "JWT"}), &claims(), b"");
        assert_eq!(refusal(&iss, &none).await, Refused::Algorithm);
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": s.kid()});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        );
        let secret = jwks(&[&s]);
        let mac = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes()),
            input.as_bytes(),
        );
        let hs256 = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
        assert_eq!(refusal(&iss, &hs256).await, Refused::Algorithm);

        // Another key: its kid is unknown; under our kid, the signature fails.
        let by_other = sign_jws(&other, "JWT", &claims()).unwrap();
        assert_eq!(refusal(&iss, &by_other).await, Refused::UnknownKey);
        let mut parts: Vec<&str> = by_other.split('.').collect();
        let ours = sign(claims());
        let ours_header = ours.split('.').next().unwrap();
        parts[0] = ours_header;
        assert_eq!(refusal(&iss, &parts.join(".")).await, Refused::BadSignature);
        // A flipped payload under a good header and signature.
        let tampered = sign(with(claims(), |c| {
            c.insert("sub".into(), json!("mallory"));
        }));
        let good = sign(claims());
        let (t, g): (Vec<&str>, Vec<&str>) = (tampered.split('.').collect(), good.split('.').collect());
        assert_eq!(
            refusal(&iss, &format!("{}.{}.{}", g[0], t[1], g[2])).await,
            Refused::BadSignature
        );
        // A header that picks its own key.
        let jwk_header = raw(&json!({"alg": "ES256", "jwk": {}}), &claims(), b"sig");
        assert_eq!(refusal(&iss, &jwk_header).await, Refused::ForbiddenHeader);
    }

    #[tokio::test]
    async fn kid_rules() {
        let (a, b) = (signer(), signer());
        // Without kid: the only key of a set of one, never a choice among several.
        let no_kid = |s: &JwtSigner| {
            let token = sign_jws(s, "JWT", &claims()).unwrap();
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            let header = json!({"alg": s.algorithm().name()});
            parts[0] = URL_SAFE_NO_PAD.encode(header.to_string());
            // Re-sign: the header is part of the signing input.
            let input = format!("{}.{}", parts[0], parts[1]);
            (input, token)
        };
        let one = Issuer::new(ISS, vec![], Keys::inline(&jwks(&[&a])).unwrap());
        let two = Issuer::new(ISS, vec![], Keys::inline(&jwks(&[&a, &b])).unwrap());
        let token_b = sign_jws(&b, "JWT", &claims()).unwrap();
        assert!(two.verify_at(&token_b, NOW).await.is_ok());
        assert_eq!(refusal(&one, &token_b).await, Refused::UnknownKey);
        let (input, _) = no_kid(&a);
        let unsigned = format!("{input}.AAAA");
        assert_eq!(refusal(&one, &unsigned).await, Refused::BadSignature);
        assert_eq!(refusal(&two, &unsigned).await, Refused::UnknownKey);
        // Allowed types, when the issuer names them.
        let typed =
            Issuer::new(ISS, vec![], Keys::inline(&jwks(&[&a])).unwrap()).with_types(vec!["at+jwt".into()]);
        assert_eq!(
            refusal(&typed, &sign_jws(&a, "JWT", &claims()).unwrap()).await,
            Refused::Type
        );
        assert!(
            typed
                .verify_at(&sign_jws(&a, "application/at+jwt", &claims()).unwrap(), NOW)
                .await
                .is_ok()
        );
    }

    #[test]
    fn inline_sets_must_hold_keys() {
        assert_eq!(Keys::inline(r#"{"keys":[]}"#).map(|_| ()), Err(KeysError::Empty));
        assert!(Keys::inline("{").is_err());
    }
}
