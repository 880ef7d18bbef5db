//! The token endpoint (RFC 6749 §3.2): `authorization_code` (PKCE verified,
//! the code single-use, its redirect URI repeated), `refresh_token` (rotated
//! on every use; reuse revokes the family) and `client_credentials` (a
//! service acting as itself, which may be a mesh workload authenticated by
//! its JWT-SVID) and token exchange (RFC 8693, a service acting for a
//! person). No implicit and no password grant exist here.
//!
//! Every answer is `no-store`; every outcome is an [`Event`]; failures drain
//! the rate limits of the client and of the source address.

use std::time::Instant;

use axum::Form;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value, json};
use zt_store::{ClientKind, DevicePoll, GrantError, GrantType, IssuedRefresh, Session, User};

use crate::client_auth::Authenticated;
use crate::events::Event;
use crate::params::Params;
use crate::tokens::Grant;
use crate::{OAuthError, Peer, Provider, now, secrets_equal, sha256_b64};

/// `POST /token`.
pub async fn token(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let started = Instant::now();
    let response = provider
        .client_endpoint(&peer, async {
            let body = provider.token_request(&headers, pairs, &peer).await?;
            Ok(axum::Json(Value::Object(body)))
        })
        .await;
    provider
        .events()
        .token_seconds
        .observe(started.elapsed().as_secs_f64());
    response
}

impl Provider {
    async fn token_request(
        &self,
        headers: &HeaderMap,
        pairs: Vec<(String, String)>,
        peer: &Peer,
    ) -> Result<Map<String, Value>, OAuthError> {
        let params = Params::from_pairs(pairs)?;
        let grant_type = params.required("grant_type")?.to_owned();
        let endpoint = self.config().url("/token");
        let client = match self.authenticate_client(headers, &params, &endpoint).await {
            Ok(client) => client,
            Err(e) => {
                self.events().record(
                    Event::failure("token", e.code(), e.description())
                        .from_ip(peer.addr.ip())
                        .with("grant_type", grant_type.as_str())
                        .with("client_id", params.get("client_id").unwrap_or_default()),
                )?;
                return Err(e);
            }
        };
        let client_id = client.client.client_id.clone();
        if let Err(wait) = self.limits().token_client.check(&client_id) {
            return Err(OAuthError::too_many(wait));
        }
        let result = self.grant(&grant_type, &params, &client, peer).await;
        let event = match &result {
            Ok(_) => Event::success("token", format!("{grant_type} token issued")),
            // A device polling as it should: neither an event nor a failure.
            Err(e) if e.code() == "authorization_pending" => return result,
            Err(e) => {
                self.limits().token_client.charge(&client_id);
                Event::failure("token", e.code(), e.description())
            }
        };
        self.events().record(
            event
                .from_ip(peer.addr.ip())
                .with("grant_type", grant_type.as_str())
                .with("client_id", client_id.as_str())
                .with("client_auth", client.method),
        )?;
        result
    }

    async fn grant(
        &self,
        grant_type: &str,
        params: &Params,
        client: &Authenticated,
        peer: &Peer,
    ) -> Result<Map<String, Value>, OAuthError> {
        let Some(grant) = GrantType::parse(grant_type).filter(|g| g.as_str() == grant_type) else {
            return Err(OAuthError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {grant_type:?} is not supported"),
            ));
        };
        if !client.client.grant_types.contains(&grant) {
            return Err(OAuthError::unauthorized_client(format!(
                "this client may not use {grant_type}"
            )));
        }
        match grant {
            GrantType::AuthorizationCode => self.code_grant(params, client, peer).await,
            GrantType::RefreshToken => self.refresh_grant(params, client, peer).await,
            GrantType::ClientCredentials => self.client_credentials_grant(params, client, peer),
            GrantType::TokenExchange => self.token_exchange_grant(params, client, peer).await,
            GrantType::DeviceCode => self.device_code_grant(params, client, peer).await,
        }
    }

    /// RFC 6749 §4.1.3 with RFC 7636 §4.6.
    async fn code_grant(
        &self,
        params: &Params,
        client: &Authenticated,
        peer: &Peer,
    ) -> Result<Map<String, Value>, OAuthError> {
        let code = params.required("code")?;
        let redirect_uri = params.required("redirect_uri")?;
        let verifier = params
            .get("code_verifier")
            .ok_or_else(|| OAuthError::invalid_grant("PKCE: code_verifier is missing"))?;
        if !is_code_verifier(verifier) {
            return Err(OAuthError::invalid_grant(
                "PKCE: code_verifier must be 43 to 128 unreserved characters",
            ));
        }
        let now = now();
        let redeemed = match self.store().redeem_code(code, now).await? {
            Ok(redeemed) => redeemed,
            Err(e) => {
                if let GrantError::Token {
                    problem: zt_store::TokenProblem::Used,
                    ..
                } = e
                {
                    self.events().record(
                        Event::failure(
                            "code_replay",
                            "invalid_grant",
                            "an authorization code was presented again: what it issued is revoked",
                        )
                        .from_ip(peer.addr.ip())
                        .with("client_id", client.client.client_id.as_str()),
                    )?;
                }
                return Err(OAuthError::invalid_grant(e.to_string()));
            }
        };
        // The code is spent whatever happens next: a mismatch below is an attack or a bug.
        if redeemed.client_id != client.client.client_id {
            return Err(OAuthError::invalid_grant("the code was issued to another client"));
        }
        if redeemed.redirect_uri != redirect_uri {
            return Err(OAuthError::invalid_grant(
                "redirect_uri differs from the authorization request's",
            ));
        }
        if !secrets_equal(
            sha256_b64(verifier.as_bytes()).as_bytes(),
            redeemed.code_challenge.as_bytes(),
        ) {
            return Err(OAuthError::invalid_grant(
                "PKCE: code_verifier does not match code_challenge",
            ));
        }
        let session = &redeemed.session;
        let (_, user) = self.store().session(&session.id).await?;
        let issued = SessionGrant {
            scope: &redeemed.scope,
            nonce: redeemed.nonce.as_deref(),
            code: Some(code),
        };
        self.session_tokens(session, &user, client, &issued, peer, now)
            .await
    }

    /// The tokens of a session just granted to `client`: a refresh-token
    /// family (if the client may refresh), an access token, and an ID token
    /// if `openid` is in the scope.
    async fn session_tokens(
        &self,
        session: &Session,
        user: &User,
        client: &Authenticated,
        issued: &SessionGrant<'_>,
        peer: &Peer,
        now: u64,
    ) -> Result<Map<String, Value>, OAuthError> {
        let mut body = Map::new();
        // A family is started even for a client that gets no refresh token:
        // it records what this grant issued, so that a replay of the code
        // revokes it (and the access tokens with it).
        let family = self
            .store()
            .start_refresh_family(
                &session.id,
                &client.client.client_id,
                issued.scope,
                issued.code,
                now,
            )
            .await?
            .map_err(|e| OAuthError::invalid_grant(e.to_string()))?;
        if client.client.grant_types.contains(&GrantType::RefreshToken) {
            body.insert("refresh_token".into(), json!(family.token));
        }
        let grant = Grant {
            client_id: &client.client.client_id,
            scope: issued.scope,
            audience: None,
            certificate_sha256: peer.certificate_sha256.as_deref(),
            peer_spiffe_id: peer.spiffe_id.as_deref(),
        };
        let access = self.access_token(session, user, &grant, now)?;
        if issued.scope.split(' ').any(|s| s == "openid") {
            let id_token = self.id_token(
                session,
                user,
                &client.client.client_id,
                issued.scope,
                issued.nonce,
                now,
            )?;
            body.insert("id_token".into(), json!(id_token));
        }
        Ok(token_response(
            body,
            &access,
            issued.scope,
            self.config().access_ttl.as_secs(),
        ))
    }

    /// RFC 8628 §3.4–3.5: a device polls with its device code until a person
    /// approves or denies it, or it expires.
    async fn device_code_grant(
        &self,
        params: &Params,
        client: &Authenticated,
        peer: &Peer,
    ) -> Result<Map<String, Value>, OAuthError> {
        let device_code = params.required("device_code")?;
        let now = now();
        let refused =
            |error: &'static str, why: &str| OAuthError::new(axum::http::StatusCode::BAD_REQUEST, error, why);
        match self
            .store()
            .poll_device_code(device_code, &client.client.client_id, now)
            .await?
        {
            DevicePoll::Pending => Err(refused(
                "authorization_pending",
                "the person has not answered yet",
            )),
            DevicePoll::SlowDown => Err(refused(
                "slow_down",
                "polled sooner than the interval: wait 5s longer from now on",
            )),
            DevicePoll::Expired => Err(refused("expired_token", "the device code has expired")),
            DevicePoll::Denied => Err(refused(
                "access_denied",
                "the person denied it, or their session has ended",
            )),
            DevicePoll::Invalid => Err(OAuthError::invalid_grant(
                "the device code is unknown, another client's, or used",
            )),
            DevicePoll::Approved { scope, session, user } => {
                let issued = SessionGrant {
                    scope: &scope,
                    nonce: None,
                    code: None,
                };
                self.session_tokens(&session, &user, client, &issued, peer, now)
                    .await
            }
        }
    }

    /// RFC 6749 §6, rotated (RFC 9700 §4.14.2).
    async fn refresh_grant(
        &self,
        params: &Params,
        client: &Authenticated,
        peer: &Peer,
    ) -> Result<Map<String, Value>, OAuthError> {
        let token = params.required("refresh_token")?;
        let now = now();
        let IssuedRefresh {
            token: next,
            family,
            session,
            user,
            retried,
        } = match self
            .rotations()
            .rotate(token, &client.client.client_id, params.get("scope"))
            .await?
        {
            Ok(issued) => issued,
            Err(e) => {
                if let GrantError::Reused {
                    family_id,
                    session_id,
                } = &e
                {
                    self.events().record(
                        Event::failure(
                            "refresh_reuse",
                            "invalid_grant",
                            "a spent refresh token was presented: its family is revoked",
                        )
                        .from_ip(peer.addr.ip())
                        .with("client_id", client.client.client_id.as_str())
                        .with("family", family_id.as_str())
                        .with("session", session_id.as_str()),
                    )?;
                }
                if e == GrantError::WiderScope {
                    return Err(OAuthError::invalid_scope(e.to_string()));
                }
                return Err(OAuthError::invalid_grant(e.to_string()));
            }
        };
        if retried {
            tracing::info!(family = %family.id, "refresh token retried inside the grace");
        }
        let scope = params.get("scope").unwrap_or(&family.scope).to_owned();
        let grant = Grant {
            client_id: &client.client.client_id,
            scope: &scope,
            audience: None,
            certificate_sha256: peer.certificate_sha256.as_deref(),
            peer_spiffe_id: peer.spiffe_id.as_deref(),
        };
        let access = self.access_token(&session, &user, &grant, now)?;
        let mut body = Map::new();
        body.insert("refresh_token".into(), json!(next));
        if scope.split(' ').any(|s| s == "openid") {
            let id_token = self.id_token(&session, &user, &client.client.client_id, &scope, None, now)?;
            body.insert("id_token".into(), json!(id_token));
        }
        Ok(token_response(
            body,
            &access,
            &scope,
            self.config().access_ttl.as_secs(),
        ))
    }

    /// RFC 6749 §4.4: confidential clients only.
    fn client_credentials_grant(
        &self,
        params: &Params,
        client: &Authenticated,
        peer: &Peer,
    ) -> Result<Map<String, Value>, OAuthError> {
        if client.client.kind == ClientKind::Public {
            return Err(OAuthError::unauthorized_client(
                "a public client cannot use client_credentials",
            ));
        }
        let scope = params.get("scope").unwrap_or_default();
        let audience = params.get("resource").or_else(|| params.get("audience"));
        let grant = Grant {
            client_id: &client.client.client_id,
            scope,
            audience,
            certificate_sha256: peer.certificate_sha256.as_deref(),
            peer_spiffe_id: peer.spiffe_id.as_deref(),
        };
        let access = self.client_access_token(&grant, now())?;
        Ok(token_response(
            Map::new(),
            &access,
            scope,
            self.config().access_ttl.as_secs(),
        ))
    }
}

/// `subject_token_type` and `issued_token_type` of an access token (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE_URN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `actor_token_type` of a JWT: here, a workload's JWT-SVID.
pub const JWT_TYPE_URN: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Most actors nested in one token's `act` claim.
const MAX_ACTORS: usize = 8;

impl Provider {
    /// RFC 8693: a service trades a person's access token for one to call
    /// `audience` on their behalf. The subject token must be active (its
    /// session open, its user enabled); the new token carries the person's
    /// claims, a scope no wider, the service (or the `actor_token`'s
    /// subject) in `act`, and lives no longer than the subject token.
    async fn token_exchange_grant(
        &self,
        params: &Params,
        client: &Authenticated,
        peer: &Peer,
    ) -> Result<Map<String, Value>, OAuthError> {
        if client.client.kind == ClientKind::Public {
            return Err(OAuthError::unauthorized_client(
                "a public client cannot exchange tokens",
            ));
        }
        let subject_token = params.required("subject_token")?;
        if params.required("subject_token_type")? != ACCESS_TOKEN_TYPE_URN {
            return Err(OAuthError::invalid_request(format!(
                "subject_token_type must be {ACCESS_TOKEN_TYPE_URN}"
            )));
        }
        if params
            .get("requested_token_type")
            .is_some_and(|t| t != ACCESS_TOKEN_TYPE_URN)
        {
            return Err(OAuthError::invalid_request(format!(
                "requested_token_type can only be {ACCESS_TOKEN_TYPE_URN}"
            )));
        }
        let audience = match (params.get("audience"), params.get("resource")) {
            (Some(audience), Some(resource)) if audience != resource => {
                return Err(OAuthError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "audience and resource name different services: ask for one",
                ));
            }
            (Some(target), _) | (None, Some(target)) => target,
            (None, None) => {
                return Err(OAuthError::invalid_request(
                    "audience (or resource) is required: the service the token is for",
                ));
            }
        };
        // A subject token bound to a client certificate (a device's, `cnf`)
        // is checked against it by the actor, which received it over that
        // certificate's connection (zt gateway does); the actor, a
        // confidential client acting for the person, never holds the
        // person's key, so the provider does not ask for it here.
        let subject = self
            .active_access_token(subject_token, None)
            .await
            .map_err(|why| OAuthError::invalid_request(format!("subject_token: {why}")))?;
        if !subject.get("sid").is_some_and(Value::is_string) {
            return Err(OAuthError::invalid_request(
                "subject_token: a token of a client acting as itself has no one to act for",
            ));
        }
        if depth_of(subject.get("act")) >= MAX_ACTORS {
            return Err(OAuthError::invalid_request(format!(
                "subject_token: already {MAX_ACTORS} actors deep"
            )));
        }
        let granted = subject.get("scope").and_then(Value::as_str).unwrap_or_default();
        let scope = match params.get("scope") {
            Some(asked) if asked.split(' ').any(|s| !granted.split(' ').any(|g| g == s)) => {
                return Err(OAuthError::invalid_scope(
                    "an exchange cannot widen the subject token's scope",
                ));
            }
            Some(asked) => asked,
            None => granted,
        };
        let actor = match (params.get("actor_token"), params.get("actor_token_type")) {
            (None, None) => client.client.client_id.clone(),
            (Some(_), None) | (None, Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "actor_token and actor_token_type go together",
                ));
            }
            (Some(token), Some(ACCESS_TOKEN_TYPE_URN)) => {
                let claims = self
                    .active_access_token(token, None)
                    .await
                    .map_err(|why| OAuthError::invalid_request(format!("actor_token: {why}")))?;
                claims
                    .get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            }
            (Some(token), Some(JWT_TYPE_URN)) => self
                .verify_workload_svid(token, &self.config().url("/token"), now())
                .map_err(|why| OAuthError::invalid_request(format!("actor_token: {why}")))?
                .spiffe_id()
                .to_string(),
            (Some(_), Some(other)) => {
                return Err(OAuthError::invalid_request(format!(
                    "actor_token_type {other:?}: expected {ACCESS_TOKEN_TYPE_URN} or {JWT_TYPE_URN}"
                )));
            }
        };
        let grant = Grant {
            client_id: &client.client.client_id,
            scope,
            audience: Some(audience),
            certificate_sha256: peer.certificate_sha256.as_deref(),
            peer_spiffe_id: peer.spiffe_id.as_deref(),
        };
        let now = now();
        let access = self.exchanged_token(&subject, &grant, &actor, now)?;
        // The exchanging client now holds a token of the session: it hears of
        // the session's end (back-channel logout) as its own clients do.
        if let Some(sid) = subject.get("sid").and_then(Value::as_str) {
            self.store()
                .record_exchange(sid, &client.client.client_id, now)
                .await
                .map_err(|e| OAuthError::server_error("recording a token exchange", e))?;
        }
        let mut body = Map::new();
        body.insert("issued_token_type".into(), json!(ACCESS_TOKEN_TYPE_URN));
        Ok(token_response(
            body,
            &access,
            scope,
            access.expires_at.saturating_sub(now),
        ))
    }
}

/// How many actors an `act` claim nests.
fn depth_of(act: Option<&Value>) -> usize {
    let mut depth = 0;
    let mut next = act;
    while let Some(act) = next {
        depth += 1;
        next = act.get("act");
    }
    depth
}

/// What a person's session is granted to a client: the scope, the `nonce`
/// for the ID token, the authorization code redeemed (if any: a replay of it
/// revokes the refresh family).
struct SessionGrant<'a> {
    scope: &'a str,
    nonce: Option<&'a str>,
    code: Option<&'a str>,
}

fn token_response(
    mut body: Map<String, Value>,
    access: &crate::tokens::Issued,
    scope: &str,
    expires_in: u64,
) -> Map<String, Value> {
    body.insert("access_token".into(), json!(access.token));
    body.insert("token_type".into(), json!("Bearer"));
    body.insert("expires_in".into(), json!(expires_in));
    if !scope.is_empty() {
        body.insert("scope".into(), json!(scope));
    }
    body
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn is_code_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}
