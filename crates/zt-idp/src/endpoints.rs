//! Discovery (OpenID Connect Discovery 1.0, RFC 8414), the JWK Set, userinfo,
//! introspection (RFC 7662), revocation (RFC 7009) and RP-initiated logout.
//!
//! An access token is only as good as its session and its grant: userinfo
//! and introspection answer from their current state, so a disabled user, a
//! revoked session or a revoked refresh family (reuse detected, a code
//! replayed) is refused at once, not when the token expires.
//! A token bound to a certificate (RFC 8705 `cnf`) is refused on a
//! connection that did not present it.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use zt_identity::Algorithm;
use zt_store::GrantType;

use crate::authorize::{SCOPES, SESSION_COOKIE, clear_cookie, cookie};
use crate::events::Event;
use crate::params::Params;
use crate::tokens::{Assurance, ID_TOKEN_TYPE};
use crate::{OAuthError, Peer, Provider, no_store, now, secrets_equal, sha256_b64};

/// `GET /.well-known/openid-configuration` (and `oauth-authorization-server`).
pub async fn discovery(State(provider): State<Provider>) -> Response {
    let config = provider.config();
    let url = |path: &str| config.url(path);
    let mut signing: Vec<&str> = provider
        .keys()
        .verification_keys()
        .iter()
        .map(|(_, alg, _)| alg.name())
        .collect();
    signing.sort_unstable();
    signing.dedup();
    let assertion_algs: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    let grants: Vec<&str> = [
        GrantType::AuthorizationCode,
        GrantType::RefreshToken,
        GrantType::ClientCredentials,
        GrantType::TokenExchange,
        GrantType::DeviceCode,
    ]
    .iter()
    .map(|g| g.as_str())
    .collect();
    let acr: Vec<&str> = Assurance::ALL.iter().map(|a| a.acr()).collect();
    let body = json!({
        "issuer": config.issuer,
        "authorization_endpoint": url("/authorize"),
        "token_endpoint": url("/token"),
        "device_authorization_endpoint": url("/device_authorization"),
        "userinfo_endpoint": url("/userinfo"),
        "jwks_uri": url("/jwks"),
        "introspection_endpoint": url("/introspect"),
        "revocation_endpoint": url("/revoke"),
        "end_session_endpoint": url("/logout"),
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": grants,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": signing,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": SCOPES,
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "amr", "sid", "nonce",
            "name", "preferred_username", "email", "groups", "ip", "zone", "device_id", "device_tier", "cnf", "act"],
        "acr_values_supported": acr,
        "authorization_response_iss_parameter_supported": true,
        "tls_client_certificate_bound_access_tokens": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
    });
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// `GET /jwks`: every key a token of this provider may be signed with — the
/// active authority's, the next one's and the previous one's while they overlap.
pub async fn jwks(State(provider): State<Provider>) -> Response {
    let keys: Vec<Value> = provider
        .keys()
        .verification_keys()
        .iter()
        .map(|(kid, alg, key)| key.to_signing_jwk(kid, alg.name()))
        .collect();
    let mut response = axum::Json(json!({ "keys": keys })).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

/// Why a bearer token is refused at userinfo (RFC 6750 §3.1).
fn invalid_token(description: &str) -> Response {
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        description.replace(['"', '\\'], "'")
    );
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({ "error": "invalid_token", "error_description": description })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    no_store(&mut response);
    response
}

/// The bearer token of `Authorization`, if exactly one is given.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Why an access token is not active.
#[derive(Debug, thiserror::Error)]
pub enum Inactive {
    /// Its shape, signature, issuer or times.
    #[error("{0}")]
    Token(#[from] crate::tokens::TokenError),
    /// Revoked by its client (RFC 7009).
    #[error("the token was revoked")]
    Revoked,
    /// Its session was revoked or reached its end.
    #[error("the token's session has ended")]
    SessionEnded,
    /// Its user is disabled.
    #[error("the user is disabled")]
    UserDisabled,
    /// The refresh tokens of the grant it came from were revoked since.
    #[error("the refresh tokens of the grant this token came from were revoked")]
    GrantRevoked,
    /// Bound to a certificate (RFC 8705) the connection did not present.
    #[error("the token is bound to a certificate this connection did not present")]
    WrongCertificate,
    /// The datastore could not say: not active either (fail closed).
    #[error("datastore: {0}")]
    Store(#[from] zt_store::StoreError),
}

impl Provider {
    /// An access token's claims if it is active now: valid, not revoked, its
    /// session open and its user enabled, and presented with its certificate
    /// if bound to one. `Err` says why not.
    pub(crate) async fn active_access_token(
        &self,
        token: &str,
        peer: Option<&Peer>,
    ) -> Result<Map<String, Value>, Inactive> {
        let now = now();
        let claims = self.verify_access_token(token, now)?;
        let jti = claims.get("jti").and_then(Value::as_str).unwrap_or_default();
        if self.store().is_access_token_revoked(jti).await? {
            return Err(Inactive::Revoked);
        }
        if let Some(sid) = claims.get("sid").and_then(Value::as_str) {
            let (session, user) = self.store().session(sid).await?;
            if !session.is_open(now) {
                return Err(Inactive::SessionEnded);
            }
            if user.disabled {
                return Err(Inactive::UserDisabled);
            }
            // A refresh family of this client in this session revoked since
            // the token was issued (reuse detected, its code replayed,
            // revoked by the client) takes along the access tokens issued
            // while it lived (RFC 9700 §4.2.4 and §4.14.2, RFC 7009 §2.1).
            // Tokens do not name their family, so every such token of the
            // client in the session goes: failing closed, as after a theft.
            let client_id = claims.get("client_id").and_then(Value::as_str);
            let iat = claims.get("iat").and_then(Value::as_u64).unwrap_or_default();
            let families = self.store().refresh_families(sid).await?;
            if families.iter().any(|family| {
                Some(family.client_id.as_str()) == client_id
                    && family.created_at <= iat
                    && family.revoked_at.is_some_and(|revoked| revoked >= iat)
            }) {
                return Err(Inactive::GrantRevoked);
            }
        }
        if let Some(peer) = peer
            && let Some(bound) = claims
                .get("cnf")
                .and_then(|c| c.get("x5t#S256"))
                .and_then(Value::as_str)
            && !peer
                .certificate_sha256
                .as_deref()
                .is_some_and(|presented| secrets_equal(presented.as_bytes(), bound.as_bytes()))
        {
            return Err(Inactive::WrongCertificate);
        }
        Ok(claims)
    }
}

/// `GET` or `POST /userinfo` (OpenID Connect Core §5.3).
pub async fn userinfo(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = bearer(&headers) else {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    let claims = match provider.active_access_token(token, Some(&peer)).await {
        Ok(claims) => claims,
        Err(Inactive::Store(e)) => return OAuthError::from(e).into_response(),
        Err(why) => return invalid_token(&why.to_string()),
    };
    let Some(sid) = claims.get("sid").and_then(Value::as_str) else {
        return invalid_token("the token was issued to a client, not to a person");
    };
    let user = match provider.store().session(sid).await {
        Ok((_, user)) => user,
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let scope = claims.get("scope").and_then(Value::as_str).unwrap_or_default();
    let mut body = Map::new();
    body.insert("sub".into(), json!(user.sub));
    crate::tokens::profile_claims(&mut body, &user, scope);
    let mut response = axum::Json(Value::Object(body)).into_response();
    no_store(&mut response);
    response
}

/// `POST /introspect` (RFC 7662): for authenticated confidential clients.
/// Failures drain the source address's token-endpoint limit, and an empty
/// one refuses: client authentication here is as costly and as guessable
/// as at the token endpoint.
pub async fn introspect(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let answer = async {
        let params = Params::from_pairs(pairs)?;
        let client = provider
            .authenticate_client(&headers, &params, &provider.config().url("/introspect"))
            .await?;
        if client.method == "none" {
            return Err(OAuthError::invalid_client(
                "introspection needs an authenticated client",
            ));
        }
        let token = params.required("token")?;
        let inactive = json!({ "active": false });
        if params.get("token_type_hint") != Some("refresh_token") && token.matches('.').count() == 2 {
            return Ok(match provider.active_access_token(token, None).await {
                Ok(claims) => {
                    let mut body = claims;
                    body.insert("active".into(), json!(true));
                    body.insert("token_type".into(), json!("Bearer"));
                    body
                }
                Err(Inactive::Store(e)) => return Err(e.into()),
                Err(_) => inactive.as_object().cloned().unwrap_or_default(),
            });
        }
        let Some((family, spent, session, user)) = provider
            .store()
            .refresh_token_state(token, &client.client.client_id)
            .await?
        else {
            return Ok(inactive.as_object().cloned().unwrap_or_default());
        };
        let now = now();
        if spent || family.revoked_at.is_some() || !session.is_open(now) || user.disabled {
            return Ok(inactive.as_object().cloned().unwrap_or_default());
        }
        let body = json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": family.client_id,
            "scope": family.scope,
            "sub": user.sub,
            "username": user.name,
            "sid": session.id,
            "iss": provider.config().issuer,
            "iat": family.created_at,
            "exp": session.expires_at,
        });
        Ok(body.as_object().cloned().unwrap_or_default())
    };
    let answer = async { answer.await.map(|body| axum::Json(Value::Object(body))) };
    provider.client_endpoint(&peer, answer).await
}

/// `POST /revoke` (RFC 7009): a refresh token revokes its family; an access
/// token is remembered as revoked until it expires. Unknown tokens are not
/// an error (§2.2). Rate limited as introspection is.
pub async fn revoke(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let answer = async {
        let params = Params::from_pairs(pairs)?;
        let client = provider
            .authenticate_client(&headers, &params, &provider.config().url("/revoke"))
            .await?;
        let client_id = client.client.client_id.as_str();
        let token = params.required("token")?;
        let now = now();
        if params.get("token_type_hint") != Some("refresh_token")
            && token.matches('.').count() == 2
            && let Ok(claims) = provider.verify_access_token(token, now)
        {
            if claims.get("client_id").and_then(Value::as_str) == Some(client_id) {
                let jti = claims.get("jti").and_then(Value::as_str).unwrap_or_default();
                let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
                provider.store().revoke_access_token(jti, exp, now).await?;
                provider.events().record(
                    Event::success("revoke", "access token revoked")
                        .from_ip(peer.addr.ip())
                        .with("client_id", client_id)
                        .with("jti", jti),
                )?;
            }
            return Ok(StatusCode::OK);
        }
        if let Some(family) = provider
            .store()
            .revoke_refresh_token(token, client_id, now)
            .await?
        {
            provider.events().record(
                Event::success("revoke", "refresh token family revoked")
                    .from_ip(peer.addr.ip())
                    .with("client_id", client_id)
                    .with("family", family.id.as_str())
                    .with("session", family.session_id.as_str()),
            )?;
        }
        Ok::<_, OAuthError>(StatusCode::OK)
    };
    provider.client_endpoint(&peer, answer).await
}

/// `GET` or `POST /logout` (OpenID Connect RP-Initiated Logout 1.0). With an
/// `id_token_hint` of the browser's own session, or a confirmation posted
/// from the page this shows otherwise, the session ends (its refresh
/// families with it); then back to a registered redirect URI of the client,
/// if one was asked for.
pub async fn logout(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    sign_out(provider, peer, headers, query).await
}

/// `POST /logout`: the same, from a form.
pub async fn logout_form(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    sign_out(provider, peer, headers, form).await
}

async fn sign_out(
    provider: Provider,
    peer: Peer,
    headers: HeaderMap,
    pairs: Vec<(String, String)>,
) -> Response {
    let params = match Params::from_pairs(pairs) {
        Ok(params) => params,
        Err(e) => return crate::pages::error(StatusCode::BAD_REQUEST, e.description()),
    };
    let now = now();
    let Some(secret) = cookie(&headers, SESSION_COOKIE) else {
        return crate::pages::document(
            "Signed out",
            "<h1>Signed out</h1>\n<p id=\"message\">No one is signed in here.</p>",
            StatusCode::OK,
        );
    };
    let session = match provider.store().session_by_secret(secret, now).await {
        Ok(found) => found.map(|(session, _)| session),
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let confirmation = sha256_b64(format!("logout\u{0}{secret}").as_bytes());
    let hint = params
        .get("id_token_hint")
        .and_then(|hint| provider.id_token_hint(hint));
    let hinted_session = hint
        .as_ref()
        .and_then(|claims| claims.get("sid"))
        .and_then(Value::as_str);
    let confirmed = params
        .get("confirm")
        .is_some_and(|given| secrets_equal(given.as_bytes(), confirmation.as_bytes()));
    let Some(session) = session else {
        let mut response = crate::pages::document(
            "Signed out",
            "<h1>Signed out</h1>\n<p id=\"message\">Your session had already ended.</p>",
            StatusCode::OK,
        );
        clear_cookie(&mut response, SESSION_COOKIE);
        return response;
    };
    if hinted_session != Some(session.id.as_str()) && !confirmed {
        let body = format!(
            "<h1>Sign out?</h1>\n<form method=\"post\" action=\"/logout\">\
             <input type=\"hidden\" name=\"confirm\" value=\"{}\">\
             <button type=\"submit\" id=\"confirm-logout\">Sign out</button></form>",
            crate::pages::escape(&confirmation)
        );
        return crate::pages::document("Sign out", &body, StatusCode::OK);
    }
    if let Err(e) = provider
        .store()
        .revoke_session(&session.id, "signed out", now)
        .await
    {
        return OAuthError::from(e).into_response();
    }
    if let Err(e) = provider.events().record(
        Event::success(
            "logout",
            "signed out: the session and its refresh tokens are revoked",
        )
        .from_ip(peer.addr.ip())
        .with("session", session.id.as_str()),
    ) {
        return e.into_response();
    }
    let client_id = hint
        .as_ref()
        .and_then(|claims| claims.get("aud"))
        .and_then(Value::as_str)
        .or(params.get("client_id"));
    let target = match (params.get("post_logout_redirect_uri"), client_id) {
        (Some(uri), Some(client_id)) => match provider.store().client(client_id).await {
            Ok(client) if client.redirect_uris.iter().any(|r| r == uri) => Some(uri.to_owned()),
            _ => None,
        },
        _ => None,
    };
    let mut response = match target {
        Some(uri) => {
            let state = params
                .get("state")
                .map(|s| {
                    format!(
                        "{}state={}",
                        if uri.contains('?') { '&' } else { '?' },
                        crate::authorize::percent_encode(s)
                    )
                })
                .unwrap_or_default();
            axum::response::Redirect::to(&format!("{uri}{state}")).into_response()
        }
        None => crate::pages::document(
            "Signed out",
            "<h1>Signed out</h1>\n<p id=\"message\">You are signed out.</p>",
            StatusCode::OK,
        ),
    };
    clear_cookie(&mut response, SESSION_COOKIE);
    response
}

impl Provider {
    /// The claims of an ID token this provider signed (expired or not, as
    /// logout allows), or `None`.
    fn id_token_hint(&self, token: &str) -> Option<Map<String, Value>> {
        let jws = zt_identity::jwt::Jws::decode(token, &[ID_TOKEN_TYPE], false).ok()?;
        let kid = jws.kid()?;
        let signed = self
            .keys()
            .verification_keys()
            .iter()
            .any(|(id, _, key)| id == kid && jws.verify(key));
        let ours = jws.claims.get("iss").and_then(Value::as_str) == Some(self.config().issuer.as_str());
        (signed && ours).then_some(jws.claims)
    }
}
