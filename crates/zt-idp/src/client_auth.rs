//! How a client proves who it is at the token, introspection and revocation
//! endpoints: `client_secret_basic` or `client_secret_post` (argon2id-hashed
//! secrets), `private_key_jwt` (RFC 7523 assertions signed with a key of the
//! client's registered JWK Set, each `jti` used once), a mesh workload's
//! JWT-SVID for a `spiffe` client (RFC 7523 too: no secret), or nothing for a
//! public client, which PKCE protects instead. One method per request: a
//! request that offers two is refused.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use base64::Engine as _;
use serde_json::{Map, Value};
use zt_identity::VerifiedJwtSvid;
use zt_identity::jwt::{Jws, check_times, verify_jwt_svid_within};
use zt_store::{Client, ClientKind};

use crate::params::Params;
use crate::{OAuthError, Provider, now};

/// `client_assertion_type` of RFC 7523.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest lifetime of a client assertion, seconds.
pub(crate) const MAX_ASSERTION_LIFETIME: u64 = 300;
/// Most assertion IDs remembered (each only until its `exp`).
const MAX_SEEN_ASSERTIONS: usize = 100_000;

/// A client that proved who it is (or a public client that named itself).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The client.
    pub client: Client,
    /// How: `client_secret_basic`, `client_secret_post`, `private_key_jwt`,
    /// `jwt_svid` or `none`.
    pub method: &'static str,
}

/// Assertion IDs already used, until they expire.
#[derive(Default)]
pub struct SeenAssertions(Mutex<HashMap<String, u64>>);

impl SeenAssertions {
    /// Records `jti` (of `client`) until `exp`; `false` if it was seen before.
    fn first_use(&self, client: &str, jti: &str, exp: u64, now: u64) -> bool {
        let Ok(mut seen) = self.0.lock() else { return false };
        if seen.len() >= MAX_SEEN_ASSERTIONS {
            seen.retain(|_, until| *until > now);
            if seen.len() >= MAX_SEEN_ASSERTIONS {
                // Full of live IDs: refuse rather than forget one.
                return false;
            }
        }
        seen.insert(format!("{client}\u{0}{jti}"), exp).is_none()
    }
}

/// Client secrets argon2id verified lately, so that a busy service does not
/// pay 19 MiB and tens of milliseconds on every token request. Each is kept
/// as SHA-256 of the client, its creation time and the secret — a secret is
/// 256 random bits made by the server, which no one can search from its
/// SHA-256 — for [`SECRET_CACHE_TTL`]; a client deleted and made again under
/// the same ID has another creation time, so its old secret does not match.
/// A wrong secret always goes to argon2id.
#[derive(Default)]
pub struct VerifiedSecrets(Mutex<HashMap<String, (String, std::time::Instant)>>);

/// How long a verified secret is remembered.
pub const SECRET_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// Most secrets remembered.
const MAX_VERIFIED_SECRETS: usize = 10_000;

impl VerifiedSecrets {
    fn digest(client: &Client, secret: &str) -> String {
        crate::sha256_b64(format!("{}\u{0}{}\u{0}{secret}", client.client_id, client.created_at).as_bytes())
    }

    /// Whether `secret` of `client` was verified within the TTL.
    fn holds(&self, client: &Client, secret: &str) -> bool {
        let Ok(verified) = self.0.lock() else { return false };
        verified.get(&client.client_id).is_some_and(|(digest, at)| {
            at.elapsed() < SECRET_CACHE_TTL
                && crate::secrets_equal(digest.as_bytes(), Self::digest(client, secret).as_bytes())
        })
    }

    /// Remembers a secret argon2id just verified.
    fn remember(&self, client: &Client, secret: &str) {
        let Ok(mut verified) = self.0.lock() else { return };
        if verified.len() >= MAX_VERIFIED_SECRETS {
            verified.retain(|_, (_, at)| at.elapsed() < SECRET_CACHE_TTL);
            if verified.len() >= MAX_VERIFIED_SECRETS {
                return;
            }
        }
        verified.insert(
            client.client_id.clone(),
            (Self::digest(client, secret), std::time::Instant::now()),
        );
    }
}

impl Provider {
    /// Authenticates the client of a request to `endpoint` (its URL is an
    /// acceptable assertion audience, as is the issuer).
    pub(crate) async fn authenticate_client(
        &self,
        headers: &HeaderMap,
        params: &Params,
        endpoint: &str,
    ) -> Result<Authenticated, OAuthError> {
        let basic = basic_credentials(headers)?;
        let post = params.get("client_secret");
        let assertion = params.get("client_assertion");
        let offered =
            usize::from(basic.is_some()) + usize::from(post.is_some()) + usize::from(assertion.is_some());
        if offered > 1 {
            return Err(OAuthError::invalid_request(
                "more than one client authentication method in one request",
            ));
        }
        if let Some((id, secret)) = basic {
            if params.get("client_id").is_some_and(|named| named != id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the client of the Authorization header",
                ));
            }
            return self.secret_client(&id, &secret, "client_secret_basic").await;
        }
        if let Some(secret) = post {
            let id = params.required("client_id")?;
            return self.secret_client(id, secret, "client_secret_post").await;
        }
        if let Some(assertion) = assertion {
            if params.get("client_assertion_type") != Some(JWT_BEARER) {
                return Err(OAuthError::invalid_request(format!(
                    "client_assertion_type must be {JWT_BEARER}"
                )));
            }
            return self
                .assertion_client(assertion, params.get("client_id"), endpoint)
                .await;
        }
        let id = params.required("client_id")?;
        let client = self.known_client(id).await?;
        if client.kind != ClientKind::Public {
            return Err(OAuthError::invalid_client(format!(
                "client {id:?} must authenticate"
            )));
        }
        Ok(Authenticated {
            client,
            method: "none",
        })
    }

    async fn known_client(&self, id: &str) -> Result<Client, OAuthError> {
        match self.store().client(id).await {
            Ok(client) => Ok(client),
            Err(zt_store::StoreError::Missing { .. }) => {
                Err(OAuthError::invalid_client("client authentication failed"))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn secret_client(
        &self,
        id: &str,
        secret: &str,
        method: &'static str,
    ) -> Result<Authenticated, OAuthError> {
        let client = match self.store().client(id).await {
            Ok(client) => Some(client),
            Err(zt_store::StoreError::Missing { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(client) = &client
            && self.verified_secrets().holds(client, secret)
        {
            return Ok(Authenticated {
                client: client.clone(),
                method,
            });
        }
        // The same answer, as slowly, for an unknown client and a wrong secret.
        let (true, Some(client)) = (self.store().verify_client_secret(id, secret).await?, client) else {
            return Err(OAuthError::invalid_client("client authentication failed"));
        };
        self.verified_secrets().remember(&client, secret);
        Ok(Authenticated { client, method })
    }

    /// RFC 7523 §3: `sub` is the client, `aud` names this provider, `exp`
    /// soon, `jti` never seen. What signs it depends on the client's kind: a
    /// key of its JWK Set (`private_key_jwt`, where `iss` is the client too
    /// and `jti` is required), or for a [`ClientKind::Spiffe`] client a JWT
    /// authority of the trust domain, the assertion being the workload's
    /// JWT-SVID (its `jti` used once when it has one).
    async fn assertion_client(
        &self,
        assertion: &str,
        named: Option<&str>,
        endpoint: &str,
    ) -> Result<Authenticated, OAuthError> {
        let failed = |why: &str| OAuthError::invalid_client(format!("client assertion: {why}"));
        let jws = Jws::decode(assertion, &["JWT", "JOSE", "client-authentication+jwt"], true)
            .map_err(|e| failed(&e.to_string()))?;
        let claims = &jws.claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let sub = text("sub").ok_or_else(|| failed("sub is required"))?;
        if text("iss").is_some_and(|iss| iss != sub) || named.is_some_and(|named| named != sub) {
            return Err(failed("iss, sub and client_id must all be the client"));
        }
        self.our_audience(claims, endpoint).map_err(failed)?;
        let client = self.known_client(sub).await?;
        let now = now();
        let (exp, method) = match client.kind {
            ClientKind::PrivateKeyJwt => {
                if text("iss").is_none() {
                    return Err(failed("iss is required"));
                }
                // `JOSE` is a JWT-SVID's type, not a client's assertion's.
                Jws::decode(assertion, &["JWT", "client-authentication+jwt"], true)
                    .map_err(|e| failed(&e.to_string()))?;
                let keys = zt_identity::jwk::parse_jwk_set(client.jwks.as_deref().unwrap_or_default())
                    .map_err(|e| OAuthError::server_error("the client's stored JWK Set", e))?;
                let verified = keys
                    .iter()
                    .filter(|(kid, _)| jws.kid().is_none() || kid.as_deref() == jws.kid())
                    .any(|(_, key)| jws.verify(key));
                if !verified {
                    return Err(failed("signature does not verify with the client's keys"));
                }
                if text("jti").is_none() {
                    return Err(failed("jti is required"));
                }
                let exp =
                    check_times(claims, now, MAX_ASSERTION_LIFETIME).map_err(|e| failed(&e.to_string()))?;
                (exp, "private_key_jwt")
            }
            ClientKind::Spiffe => {
                let svid = self
                    .verify_workload_svid(assertion, endpoint, now)
                    .map_err(|e| failed(&e.to_string()))?;
                if svid.spiffe_id().to_string() != client.client_id {
                    return Err(failed("the JWT-SVID is not the client's"));
                }
                (svid.expiry(), "jwt_svid")
            }
            ClientKind::Secret | ClientKind::Public => {
                return Err(failed("this client does not authenticate with an assertion"));
            }
        };
        if let Some(jti) = text("jti")
            && !self.seen_assertions().first_use(sub, jti, exp, now)
        {
            return Err(failed("this assertion was already used"));
        }
        Ok(Authenticated { client, method })
    }
}

impl Provider {
    /// The `aud` of `claims` that names this provider: its issuer, the
    /// token endpoint, or `endpoint` (the one the token is presented to).
    fn our_audience<'c>(
        &self,
        claims: &'c Map<String, Value>,
        endpoint: &str,
    ) -> Result<&'c str, &'static str> {
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => return Err("aud is required"),
        };
        let config = self.config();
        let token_endpoint = config.url("/token");
        audiences
            .into_iter()
            .find(|aud| *aud == config.issuer || *aud == endpoint || *aud == token_endpoint)
            .ok_or("aud does not name this provider")
    }

    /// Verifies a JWT-SVID of a workload of this trust domain presented to
    /// `endpoint`: signed by one of the trust domain's JWT authorities, its
    /// `aud` naming this provider, living at most five minutes. `Err` says why not.
    pub(crate) fn verify_workload_svid(
        &self,
        token: &str,
        endpoint: &str,
        now: u64,
    ) -> Result<VerifiedJwtSvid, SvidRefused> {
        let unverified = Jws::decode(token, &["JWT", "JOSE"], true)?;
        let audience = self
            .our_audience(&unverified.claims, endpoint)
            .map_err(SvidRefused::Audience)?;
        let svid = verify_jwt_svid_within(
            token,
            &self.keys().bundle(),
            audience,
            now,
            MAX_ASSERTION_LIFETIME,
        )?;
        // The bundle is this trust domain's only; checked again all the same.
        if svid.spiffe_id().trust_domain() != &self.config().trust_domain {
            return Err(SvidRefused::ForeignTrustDomain);
        }
        Ok(svid)
    }
}

/// Why a workload's JWT-SVID is refused as a client assertion or actor token.
#[derive(Debug, thiserror::Error)]
pub enum SvidRefused {
    /// Its shape, signature or times.
    #[error("JWT-SVID: {0}")]
    Jwt(#[from] zt_identity::JwtSvidError),
    /// Its `aud` does not name this provider.
    #[error("JWT-SVID: {0}")]
    Audience(&'static str),
    /// Of another trust domain.
    #[error("JWT-SVID: not of this trust domain")]
    ForeignTrustDomain,
}

/// `Authorization: Basic` credentials, form-urlencoded inside (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(OAuthError::invalid_request("more than one Authorization header"));
    }
    let malformed = || OAuthError::invalid_client("malformed Basic credentials");
    let text = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = text.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        // A Bearer token here is not client authentication.
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok(Some((
        form_decode(id).ok_or_else(malformed)?,
        form_decode(secret).ok_or_else(malformed)?,
    )))
}

/// Decodes `application/x-www-form-urlencoded` text.
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%3Aclient:s%2Bcr+t");
        headers.insert("authorization", format!("Basic {encoded}").parse().unwrap());
        assert_eq!(
            basic_credentials(&headers).unwrap(),
            Some(("my:client".to_owned(), "s+cr t".to_owned()))
        );
        headers.insert("authorization", "Basic !!!".parse().unwrap());
        assert!(basic_credentials(&headers).is_err());
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(basic_credentials(&headers).unwrap(), None);
    }

    #[test]
    fn a_verified_secret_is_remembered_for_its_client_only() {
        let client = |id: &str, created_at| Client {
            client_id: id.into(),
            kind: ClientKind::Secret,
            jwks: None,
            redirect_uris: vec![],
            grant_types: vec![],
            backchannel_logout_uri: None,
            backchannel_logout_session_required: false,
            created_at,
        };
        let verified = VerifiedSecrets::default();
        assert!(!verified.holds(&client("svc", 1), "s3cret"));
        verified.remember(&client("svc", 1), "s3cret");
        assert!(verified.holds(&client("svc", 1), "s3cret"));
        assert!(!verified.holds(&client("svc", 1), "s3creT"), "another secret");
        assert!(!verified.holds(&client("other", 1), "s3cret"), "another client");
        assert!(
            !verified.holds(&client("svc", 2), "s3cret"),
            "the same ID made again"
        );
    }

    #[test]
    fn an_assertion_id_is_used_once() {
        let seen = SeenAssertions::default();
        assert!(seen.first_use("a", "1", 100, 10));
        assert!(!seen.first_use("a", "1", 100, 11));
        assert!(seen.first_use("b", "1", 100, 11), "per client");
    }
}
