//! The gateway as an OpenID Connect relying party — of zt server or of any
//! provider: discovery, the authorization-code flow with PKCE (S256) and a
//! nonce, refresh, and RFC 8693 token exchange, the client authenticated with
//! its secret (`client_secret_basic`). Tokens are verified against the
//! provider's JWKS with `zt-authn`: ID tokens for the gateway's client, access
//! tokens (`at+jwt`, RFC 9068) for its audiences, logout tokens (`logout+jwt`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;
use zt_authn::{Issuer, Keys, Refused, Verified};

use crate::config::Oidc;
use crate::connect::Connector;

/// Largest answer read from the provider.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// How long one call to the provider may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 8693's token type of an access token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The event a back-channel logout token carries (OIDC Back-Channel Logout §2.4).
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Why a call to the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum RpError {
    /// It could not be reached, or answered something unreadable.
    #[error("the OpenID Provider {0}")]
    Unreachable(String),
    /// It refused, with an OAuth error.
    #[error("the OpenID Provider refused: {error}: {description}")]
    Refused {
        /// The OAuth `error` code.
        error: String,
        /// Its `error_description`.
        description: String,
    },
    /// A token it issued does not verify.
    #[error("a token from the OpenID Provider does not verify: {0}")]
    Token(#[from] Refused),
    /// The ID token is not for this sign-in.
    #[error("the ID token {0}")]
    IdToken(&'static str),
}

/// What the provider's discovery document says, the parts the gateway uses.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
}

/// Tokens from the token endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenAnswer {
    /// The access token.
    pub access_token: String,
    /// Seconds it lives.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// The (rotated) refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// The ID token (code flow).
    #[serde(default)]
    pub id_token: Option<String>,
}

/// The provider, discovered, and the gateway's client there.
pub struct RelyingParty {
    discovery: Discovery,
    client_id: String,
    secret: String,
    http: Client<Connector, Full<Bytes>>,
    id_tokens: Issuer,
    access_tokens: Issuer,
    logout_tokens: Issuer,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelyingParty({}, {})", self.discovery.issuer, self.client_id)
    }
}

impl RelyingParty {
    /// Discovers `oidc.issuer` (its document must name the same issuer) and
    /// starts following its keys.
    pub async fn discover(
        oidc: &Oidc,
        secret: String,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, RpError> {
        let http = Client::builder(TokioExecutor::new()).build(Connector::Web(tls.clone()));
        let url = format!(
            "{}/.well-known/openid-configuration",
            oidc.issuer.trim_end_matches('/')
        );
        let body = call(&http, get(&url)?).await?;
        let discovery: Discovery = serde_json::from_slice(&body)
            .map_err(|e| RpError::Unreachable(format!("{url}: not a discovery document: {e}")))?;
        if discovery.issuer != oidc.issuer {
            return Err(RpError::Unreachable(format!(
                "{url}: names the issuer {:?}, not {:?}",
                discovery.issuer, oidc.issuer
            )));
        }
        for endpoint in [
            &discovery.authorization_endpoint,
            &discovery.token_endpoint,
            &discovery.jwks_uri,
        ] {
            if !endpoint.starts_with("https://") {
                return Err(RpError::Unreachable(format!("{url}: {endpoint:?} is not https")));
            }
        }
        let keys = Keys::remote(discovery.jwks_uri.clone(), tls, Default::default());
        let issuer = |audiences: Vec<String>, types: Option<Vec<String>>| {
            let issuer = Issuer::new(discovery.issuer.clone(), audiences, keys.clone())
                .with_clock_skew(oidc.clock_skew.as_secs());
            match types {
                Some(types) => issuer.with_types(types),
                None => issuer,
            }
        };
        Ok(Self {
            id_tokens: issuer(vec![oidc.client_id.clone()], None),
            access_tokens: issuer(oidc.audiences.clone(), Some(vec!["at+jwt".into()])),
            logout_tokens: issuer(vec![oidc.client_id.clone()], Some(vec!["logout+jwt".into()])),
            client_id: oidc.client_id.clone(),
            secret,
            discovery,
            http,
        })
    }

    /// The provider's issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.discovery.issuer
    }

    /// Where a browser signs out at the provider, if it says.
    pub fn end_session_endpoint(&self) -> Option<&str> {
        self.discovery.end_session_endpoint.as_deref()
    }

    /// The URL that starts a sign-in at the provider.
    pub fn authorization_url(&self, redirect_uri: &str, scope: &str, start: &SignInStart) -> String {
        let separator = if self.discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{separator}{}",
            self.discovery.authorization_endpoint,
            form(&[
                ("response_type", "code"),
                ("client_id", &self.client_id),
                ("redirect_uri", redirect_uri),
                ("scope", scope),
                ("state", &start.state),
                ("nonce", &start.nonce),
                ("code_challenge", &start.challenge),
                ("code_challenge_method", "S256"),
            ])
        )
    }

    /// Redeems a code; the ID token must verify, carry `nonce`, and name the
    /// same `sub` as the access token.
    pub async fn redeem(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<(TokenAnswer, Verified), RpError> {
        let answer = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", verifier),
                ("redirect_uri", redirect_uri),
            ])
            .await?;
        let id_token = answer.id_token.as_deref().ok_or(RpError::IdToken("is missing"))?;
        let id = self.id_tokens.verify(id_token).await?;
        if id.claims().get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(RpError::IdToken("is not for this sign-in (nonce)"));
        }
        let access = self.access_tokens.verify(&answer.access_token).await?;
        if access.claims().get("sub") != id.claims().get("sub") {
            return Err(RpError::IdToken("and the access token name different people"));
        }
        Ok((answer, access))
    }

    /// Refreshes a session's tokens.
    pub async fn refresh(&self, refresh_token: &str) -> Result<(TokenAnswer, Verified), RpError> {
        let answer = self
            .token(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)])
            .await?;
        let access = self.access_tokens.verify(&answer.access_token).await?;
        Ok((answer, access))
    }

    /// Exchanges a person's access token for one whose audience is `audience`.
    pub async fn exchange(&self, subject_token: &str, audience: &str) -> Result<TokenAnswer, RpError> {
        self.token(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", subject_token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("audience", audience),
        ])
        .await
    }

    /// Verifies a bearer access token presented to the gateway.
    pub async fn verify_access_token(&self, token: &str) -> Result<Verified, Refused> {
        self.access_tokens.verify(token).await
    }

    /// Verifies a back-channel logout token (§2.6): signed by the provider
    /// for this client, with the logout event, a `sid` or a `sub`, and no
    /// `nonce`.
    pub async fn verify_logout_token(&self, token: &str) -> Result<Logout, String> {
        let verified = self
            .logout_tokens
            .verify(token)
            .await
            .map_err(|e| e.to_string())?;
        let claims = verified.claims();
        if claims.contains_key("nonce") {
            return Err("a logout token carries no nonce".into());
        }
        if !claims
            .get("events")
            .and_then(Value::as_object)
            .is_some_and(|events| events.contains_key(LOGOUT_EVENT))
        {
            return Err(format!("no {LOGOUT_EVENT} event"));
        }
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let logout = Logout {
            sid: text("sid"),
            sub: text("sub"),
        };
        if logout.sid.is_none() && logout.sub.is_none() {
            return Err("neither sid nor sub".into());
        }
        Ok(logout)
    }

    async fn token(&self, params: &[(&str, &str)]) -> Result<TokenAnswer, RpError> {
        let credentials = format!("{}:{}", encode(&self.client_id), encode(&self.secret));
        let request = http::Request::post(&self.discovery.token_endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(credentials)),
            )
            .body(Full::new(Bytes::from(form(params))))
            .map_err(|e| RpError::Unreachable(e.to_string()))?;
        let body = call(&self.http, request).await?;
        serde_json::from_slice(&body)
            .map_err(|e| RpError::Unreachable(format!("token endpoint: not a token answer: {e}")))
    }
}

/// What a logout token ends: a session, or every session of a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    /// The provider's session.
    pub sid: Option<String>,
    /// The person.
    pub sub: Option<String>,
}

/// A sign-in's secrets: `state` (binds the answer to the request), the
/// `nonce` (binds the ID token to it) and the PKCE verifier and challenge.
#[derive(Debug, Clone)]
pub struct SignInStart {
    /// Sent and returned.
    pub state: String,
    /// Sent, and in the ID token.
    pub nonce: String,
    /// Kept, sent when redeeming.
    pub verifier: String,
    /// `BASE64URL(SHA-256(verifier))`.
    pub challenge: String,
}

impl SignInStart {
    /// Fresh random values.
    pub fn new() -> Option<Self> {
        let verifier = random_text()?;
        let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        Some(Self {
            state: random_text()?,
            nonce: random_text()?,
            verifier,
            challenge,
        })
    }
}

/// 256 random bits, base64url.
pub fn random_text() -> Option<String> {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut bytes = [0; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

fn get(url: &str) -> Result<http::Request<Full<Bytes>>, RpError> {
    http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| RpError::Unreachable(format!("{url}: {e}")))
}

/// Sends `request`; the body of a 2xx answer, or the OAuth error of another.
async fn call(
    http: &Client<Connector, Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
) -> Result<Bytes, RpError> {
    let url = request.uri().to_string();
    let exchange = async {
        let answer = http
            .request(request)
            .await
            .map_err(|e| RpError::Unreachable(format!("{url}: {}", error_chain(&e))))?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| RpError::Unreachable(format!("{url}: {e}")))?
            .to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        let error: Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = |name: &str| error.get(name).and_then(Value::as_str).map(str::to_owned);
        Err(match text("error") {
            Some(code) => RpError::Refused {
                error: code,
                description: text("error_description").unwrap_or_default(),
            },
            None => RpError::Unreachable(format!("{url}: answered {status}")),
        })
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| RpError::Unreachable(format!("{url}: no answer in {CALL_TIMEOUT:?}")))?
}

/// An error and its causes, on one line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// `application/x-www-form-urlencoded`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes all but RFC 3986's unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes one `application/x-www-form-urlencoded` value; `None` if it is
/// not UTF-8 or a `%` escape is broken.
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The value of `name` in a query or form body; `None` when absent or given
/// twice.
pub fn param(query: &str, name: &str) -> Option<String> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(key).as_deref() == Some(name) {
            if found.is_some() {
                return None;
            }
            found = Some(decode(value)?);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn forms_round_trip_and_parameters_are_unambiguous() {
        let body = form(&[("a", "x y/z?&="), ("b", "é")]);
        assert_eq!(body, "a=x%20y%2Fz%3F%26%3D&b=%C3%A9");
        assert_eq!(param(&body, "a").as_deref(), Some("x y/z?&="));
        assert_eq!(param(&body, "b").as_deref(), Some("é"));
        assert_eq!(param("a=1&a=2", "a"), None, "given twice");
        assert_eq!(param("a=%zz", "a"), None);
        assert_eq!(param("a=%4", "a"), None);
        assert_eq!(param("a=+", "a").as_deref(), Some(" "));
    }

    #[test]
    fn pkce_challenges_are_the_s256_of_the_verifier() {
        let start = SignInStart::new().unwrap();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, start.verifier.as_bytes());
        assert_eq!(start.challenge, URL_SAFE_NO_PAD.encode(digest));
        assert_ne!(start.state, start.nonce);
        assert_eq!(start.verifier.len(), 43);
    }
}
