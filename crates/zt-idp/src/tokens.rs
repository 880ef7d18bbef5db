//! The tokens the provider signs: RFC 9068 access tokens (`typ: at+jwt`) and
//! OpenID Connect ID tokens (`typ: JWT`), and the verification of access
//! tokens presented back (userinfo, introspection, revocation): the
//! algorithm allow-list of [`zt_identity::jwt::Jws`], the explicit `typ`,
//! a key of the provider, its issuer and lifetimes.

use serde_json::{Map, Value, json};
use zt_identity::jwt::{Jws, check_times};
use zt_store::{Session, User};

use crate::{MAX_ACCESS_TTL, OAuthError, Provider, random_token};

/// `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// `typ` of an ID token.
pub const ID_TOKEN_TYPE: &str = "JWT";

/// How strong an authentication was: ordered, so that policies can compare
/// (`acr >= "zt:aal2"`… by rank). Names follow NIST SP 800-63B's levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Assurance {
    /// One factor: a password.
    Aal1,
    /// A passkey with user verification (something held and a PIN or
    /// biometric), or a password and a second factor.
    Aal2,
    /// A hardware-bound, non-syncable key with user verification.
    Aal3,
}

impl Assurance {
    /// The `acr` value.
    pub fn acr(self) -> &'static str {
        match self {
            Assurance::Aal1 => "urn:zt:acr:aal1",
            Assurance::Aal2 => "urn:zt:acr:aal2",
            Assurance::Aal3 => "urn:zt:acr:aal3",
        }
    }

    /// The level an `acr` value names, if it is one of ours.
    pub fn from_acr(acr: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.acr() == acr)
    }

    /// Every level, weakest first.
    pub const ALL: [Assurance; 3] = [Assurance::Aal1, Assurance::Aal2, Assurance::Aal3];
}

/// The claims about a person and how they signed in that every access token
/// of their session carries, and that a token exchanged for one keeps.
pub const PERSON_CLAIMS: [&str; 9] = [
    "auth_time",
    "acr",
    "amr",
    "sid",
    "groups",
    "ip",
    "zone",
    "device_id",
    "device_tier",
];

/// The standard claims naming a person that an access token carries when its
/// scope releases them (RFC 9068 §2.2.1), so that a service, or a gateway
/// setting identity headers, knows who without calling userinfo; a token
/// exchanged for one keeps them.
pub const PROFILE_CLAIMS: [&str; 3] = ["name", "preferred_username", "email"];

/// Who a token is for and what it carries beyond the session.
pub struct Grant<'a> {
    /// The client it is issued to.
    pub client_id: &'a str,
    /// The scope, space-separated.
    pub scope: &'a str,
    /// The audience (a resource indicator), default the client.
    pub audience: Option<&'a str>,
    /// RFC 8705: the client certificate's `x5t#S256`, to bind the token to it.
    pub certificate_sha256: Option<&'a str>,
    /// The SPIFFE ID of that certificate (an enrolled device's, for the
    /// `device_*` claims).
    pub peer_spiffe_id: Option<&'a str>,
}

/// An access token just signed.
pub struct Issued {
    /// The compact JWS.
    pub token: String,
    /// `jti`.
    pub jti: String,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
}

/// Why a presented access token is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Its shape, header, signature or times.
    #[error("{0}")]
    Jws(#[from] zt_identity::JwtSvidError),
    /// No key of this provider has its `kid`.
    #[error("the token is not signed by a key of this issuer")]
    UnknownKey,
    /// Another issuer's token.
    #[error("the token's issuer is not this provider")]
    WrongIssuer,
    /// A required claim is missing or of the wrong type.
    #[error("claim {0:?} is missing or invalid")]
    Claim(&'static str),
}

impl Provider {
    /// Signs an access token for a person's session.
    pub(crate) fn access_token(
        &self,
        session: &Session,
        user: &User,
        grant: &Grant<'_>,
        now: u64,
    ) -> Result<Issued, OAuthError> {
        let mut claims = self.base_access_claims(&user.sub, grant, now)?;
        let device = self.device(grant.peer_spiffe_id);
        claims.extend(self.person_claims(session, user, device));
        profile_claims(&mut claims, user, grant.scope);
        self.sign_access(claims)
    }

    /// The [`PERSON_CLAIMS`] of a session's tokens.
    /// `device` is the device (ID, live tier) whose certificate the client
    /// presented; without one, the device is honestly unknown.
    fn person_claims(
        &self,
        session: &Session,
        user: &User,
        device: Option<(String, String)>,
    ) -> Map<String, Value> {
        let zone = session
            .source_ip
            .parse()
            .map_or("external", |ip| self.config().zone_of(ip));
        let claims = json!({
            "auth_time": session.auth_time,
            "acr": session.acr,
            "amr": session.amr,
            "sid": session.id,
            "groups": user.groups,
            "ip": session.source_ip,
            "zone": zone,
            "device_id": device.as_ref().map(|(id, _)| id.clone()),
            "device_tier": device.map_or_else(|| "unknown".to_owned(), |(_, tier)| tier),
        });
        let Value::Object(claims) = claims else {
            return Map::new();
        };
        claims
    }

    /// Signs an access token for a call made on a person's behalf (RFC 8693
    /// §2.2.1): `subject` holds the verified claims of the access token
    /// exchanged, whose `sub` and [`PERSON_CLAIMS`] are copied (but for
    /// `device_tier`, the device's live tier when devices are followed); `act` names
    /// `actor` with the subject token's own `act`, if any, nested inside it
    /// (§4.1); and the new token lives no longer than the one it came from.
    pub(crate) fn exchanged_token(
        &self,
        subject: &Map<String, Value>,
        grant: &Grant<'_>,
        actor: &str,
        now: u64,
    ) -> Result<Issued, OAuthError> {
        let sub = subject
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| OAuthError::invalid_request("subject_token has no sub"))?;
        let mut claims = self.base_access_claims(sub, grant, now)?;
        for name in PERSON_CLAIMS.iter().chain(&PROFILE_CLAIMS) {
            if let Some(value) = subject.get(*name) {
                claims.insert((*name).into(), value.clone());
            }
        }
        // The device's tier now, not the one the subject token was issued
        // with up to its lifetime ago.
        if let Some(tier) = subject
            .get("device_id")
            .and_then(Value::as_str)
            .and_then(|id| self.device_tier(id))
        {
            claims.insert("device_tier".into(), json!(tier));
        }
        let mut act = Map::new();
        act.insert("sub".into(), json!(actor));
        if let Some(prior) = subject.get("act") {
            act.insert("act".into(), prior.clone());
        }
        claims.insert("act".into(), Value::Object(act));
        if let Some(subject_exp) = subject.get("exp").and_then(Value::as_u64)
            && claims
                .get("exp")
                .and_then(Value::as_u64)
                .is_none_or(|exp| exp > subject_exp)
        {
            claims.insert("exp".into(), json!(subject_exp));
        }
        self.sign_access(claims)
    }

    /// Signs an access token for a client acting as itself (`sub` is the client).
    pub(crate) fn client_access_token(&self, grant: &Grant<'_>, now: u64) -> Result<Issued, OAuthError> {
        let claims = self.base_access_claims(grant.client_id, grant, now)?;
        self.sign_access(claims)
    }

    fn base_access_claims(
        &self,
        sub: &str,
        grant: &Grant<'_>,
        now: u64,
    ) -> Result<Map<String, Value>, OAuthError> {
        let jti = random_token()?;
        let exp = now + self.config().access_ttl.as_secs();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.config().issuer));
        claims.insert("sub".into(), json!(sub));
        claims.insert("aud".into(), json!(grant.audience.unwrap_or(grant.client_id)));
        claims.insert("client_id".into(), json!(grant.client_id));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(exp));
        claims.insert("jti".into(), json!(jti));
        claims.insert("scope".into(), json!(grant.scope));
        if let Some(thumbprint) = grant.certificate_sha256 {
            claims.insert("cnf".into(), json!({ "x5t#S256": thumbprint }));
        }
        Ok(claims)
    }

    fn sign_access(&self, claims: Map<String, Value>) -> Result<Issued, OAuthError> {
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or_default();
        let token = self
            .keys()
            .sign(ACCESS_TOKEN_TYPE, &Value::Object(claims))
            .map_err(|e| OAuthError::server_error("signing an access token", e))?;
        Ok(Issued {
            token,
            jti,
            expires_at,
        })
    }

    /// Signs an ID token (OpenID Connect Core §2) for the client, with the
    /// profile claims its scope asks for.
    pub(crate) fn id_token(
        &self,
        session: &Session,
        user: &User,
        client_id: &str,
        scope: &str,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<String, OAuthError> {
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.config().issuer));
        claims.insert("sub".into(), json!(user.sub));
        claims.insert("aud".into(), json!(client_id));
        claims.insert("azp".into(), json!(client_id));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + self.config().access_ttl.as_secs()));
        claims.insert("auth_time".into(), json!(session.auth_time));
        claims.insert("acr".into(), json!(session.acr));
        claims.insert("amr".into(), json!(session.amr));
        claims.insert("sid".into(), json!(session.id));
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        profile_claims(&mut claims, user, scope);
        self.keys()
            .sign(ID_TOKEN_TYPE, &Value::Object(claims))
            .map_err(|e| OAuthError::server_error("signing an ID token", e))
    }

    /// Verifies an access token this provider issued: `typ: at+jwt`, an
    /// allowed algorithm, a signature by one of its keys, its issuer, `exp`
    /// (at most [`MAX_ACCESS_TTL`] after `iat`), `nbf`, and the claims every
    /// token of ours has. Revocation and session state are the caller's.
    pub fn verify_access_token(&self, token: &str, now: u64) -> Result<Map<String, Value>, TokenError> {
        let jws = Jws::decode(token, &[ACCESS_TOKEN_TYPE], false)?;
        let kid = jws.kid().ok_or(TokenError::UnknownKey)?;
        let verified = self
            .keys()
            .verification_keys()
            .iter()
            .any(|(id, _, key)| id == kid && jws.verify(key));
        if !verified {
            return Err(
                if self.keys().verification_keys().iter().any(|(id, ..)| id == kid) {
                    TokenError::Jws(zt_identity::JwtSvidError::BadSignature)
                } else {
                    TokenError::UnknownKey
                },
            );
        }
        let claims = jws.claims;
        if claims.get("iss").and_then(Value::as_str) != Some(self.config().issuer.as_str()) {
            return Err(TokenError::WrongIssuer);
        }
        check_times(&claims, now, MAX_ACCESS_TTL.as_secs())?;
        for claim in ["sub", "client_id", "jti"] {
            if !claims.get(claim).is_some_and(Value::is_string) {
                return Err(TokenError::Claim(claim));
            }
        }
        Ok(claims)
    }
}

/// The OpenID Connect standard claims a scope releases: `profile` the names,
/// `email` the address, `groups` the groups.
pub(crate) fn profile_claims(claims: &mut Map<String, Value>, user: &User, scope: &str) {
    let has = |s: &str| scope.split(' ').any(|granted| granted == s);
    if has("profile") {
        claims.insert("name".into(), json!(user.display_name));
        claims.insert("preferred_username".into(), json!(user.name));
    }
    if has("email") {
        claims.insert("email".into(), json!(user.email));
    }
    if has("groups") {
        claims.insert("groups".into(), json!(user.groups));
    }
}
