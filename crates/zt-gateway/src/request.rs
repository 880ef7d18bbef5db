//! One request through the gateway, stage by stage:
//!
//! 1. the gateway's own paths (`/.zt/…`: sign-in, callback, sign-out,
//!    back-channel logout) are answered here;
//! 2. the head is made what the upstream will receive, once (zt proxy's
//!    normalization: one authority, the path normalized, forged identity and
//!    routing headers removed in every spelling);
//! 3. the route is chosen by host and the longest path prefix;
//! 4. the person is authenticated: a bearer token (verified against the
//!    provider's keys) or a session cookie (sealed, naming an open session),
//!    never both; a browser without either is sent to sign in, an API client
//!    gets a 401 that says why;
//! 5. the policies decide on that head and that person (`request.auth.*`,
//!    `source.ip`), and the decision is recorded;
//! 6. the upstream gets the head with the person's token exchanged for its
//!    audience and the identity headers set from the verified claims, over
//!    mTLS with the gateway's SVID.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use serde_json::{Map, Value};
use zt_authn::Verified;
use zt_proxy::refusal::Refusal;

use crate::Gateway;
use crate::config::TokenMode;
use crate::cookie;
use crate::oidc;
use crate::pages;
use crate::paths;
use crate::routes::Upstream;
use crate::sessions::{Pending, Tokens};

/// Errors of bodies in either direction.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// A body on its way through the gateway.
pub type Body = BoxBody<Bytes, BodyError>;

/// The largest bearer token read: a bigger one is refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// The largest body of a back-channel logout.
const MAX_LOGOUT_BODY: usize = 64 * 1024;

/// The certificate a client presented on its connection (a device's), if any.
#[derive(Debug, Default)]
pub struct ClientCertificate {
    /// Its verified SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// SHA-256 of its DER, base64url: RFC 8705's `x5t#S256`.
    pub sha256: Option<String>,
}

impl ClientCertificate {
    /// The certificate of a completed handshake (the verifier has checked it).
    pub fn of(connection: &rustls::ServerConnection) -> Self {
        let Some(leaf) = connection.peer_certificates().and_then(|certs| certs.first()) else {
            return Self::default();
        };
        Self {
            spiffe_id: zt_tls::peer_spiffe_id(connection).map(|id| id.to_string()),
            sha256: Some(zt_identity::x509::x5t_s256(leaf)),
        }
    }
}

/// Who is asking, once authenticated.
pub(crate) struct Person {
    /// The verified access token's claims.
    pub(crate) verified: Arc<Verified>,
    /// The token itself (to exchange).
    pub(crate) token: String,
}

/// How the request failed to authenticate.
enum Unauthenticated {
    /// No credential at all.
    Missing,
    /// A credential that does not hold, and why (logged; the client gets the
    /// standard error code).
    Invalid(&'static str, String),
}

impl Gateway {
    /// Answers one request from `client`.
    pub async fn handle(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        client: SocketAddr,
        certificate: &ClientCertificate,
    ) -> Response<Body> {
        let now = zt_identity::clock::unix_seconds();
        let browser = pages::is_browser(&request);
        let head = match zt_proxy::request::normalize::admit(&mut request, &self.head_rules) {
            Ok(head) => head,
            Err(refusal) => return self.refused(&refusal, browser),
        };
        // On the normalized path: `/./.zt/…` and `/%2Ezt/…` are the gateway's
        // too, never an upstream's.
        if head.target.path.starts_with(paths::PREFIX) {
            return self.own(request, &head, client, now).await;
        }
        let Some(upstream) = self.routes.choose(&head.host, &head.target.path) else {
            return pages::not_found(browser);
        };
        let person = match self.authenticate(&request, now).await {
            Ok(person) => person,
            Err(Unauthenticated::Missing) if browser => {
                return self.start_sign_in(head.path_and_query.as_str(), now);
            }
            Err(why) => return self.unauthenticated(&why, client),
        };
        // A token bound to a certificate (RFC 8705) is good only with it.
        if let Some(bound) = bound_certificate(&person.verified)
            && !certificate.sha256.as_deref().is_some_and(|presented| {
                aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), bound.as_bytes())
                    .is_ok()
            })
        {
            return self.unauthenticated(
                &Unauthenticated::Invalid(
                    "wrong_certificate",
                    "the token is bound to a certificate this connection did not present".into(),
                ),
                client,
            );
        }
        let device = self.devices.as_ref().map(|devices| {
            devices.lookup(
                certificate.spiffe_id.as_deref(),
                zt_identity::clock::unix_millis(),
            )
        });
        let decision = match self
            .authorize(&request, &head, &person, device.as_ref(), client)
            .await
        {
            Ok(decision) => decision,
            Err(refusal) => {
                tracing::info!(target: "zt::access", user = %person.verified.principal(), path = %head.target.path, reason = %refusal, device = ?device, "gateway: denied");
                return match refusal {
                    Refusal::DeniedByPolicy { policy, reason } => {
                        let reason = match &device {
                            Some(device) if !device.reasons.is_empty() => {
                                format!("{reason}; {}", device.explanation())
                            }
                            _ => reason,
                        };
                        pages::forbidden(browser, &person.verified, policy.as_deref(), &reason)
                    }
                    other => self.refused(&other, browser),
                };
            }
        };
        drop(decision);
        match self
            .forward(request, &head, upstream, &person, device.as_ref(), now)
            .await
        {
            Ok(response) => response,
            Err(Forwarding::Exchange(e)) => {
                tracing::warn!(user = %person.verified.principal(), audience = %upstream.route.audience, error = %e, "token exchange failed");
                self.unauthenticated(
                    &Unauthenticated::Invalid("exchange_refused", e.to_string()),
                    client,
                )
            }
            Err(Forwarding::Refused(refusal)) => self.refused(&refusal, browser),
        }
    }

    /// A bearer token or a session cookie, never both.
    async fn authenticate<B>(&self, request: &Request<B>, now: u64) -> Result<Person, Unauthenticated> {
        let bearer = bearer_token(request.headers())?;
        let sealed = cookie::find(request.headers(), cookie::SESSION);
        match (bearer, sealed) {
            (Some(_), Some(_)) => Err(Unauthenticated::Invalid(
                "two_credentials",
                "both a bearer token and a session cookie".into(),
            )),
            (Some(token), None) => {
                let verified = match self.sessions.verified(token, now) {
                    Some(verified) => verified,
                    None => {
                        let verified = Arc::new(
                            self.rp
                                .verify_access_token(token)
                                .await
                                .map_err(|e| Unauthenticated::Invalid(e.reason(), e.to_string()))?,
                        );
                        self.sessions.keep_verified(token, verified.clone(), now);
                        verified
                    }
                };
                if self.sessions.token_logged_out(&verified) {
                    return Err(Unauthenticated::Invalid(
                        "logged_out",
                        "the provider ended this token's session".into(),
                    ));
                }
                Ok(Person {
                    verified,
                    token: token.to_owned(),
                })
            }
            (None, Some(sealed)) => {
                let session = self
                    .cookie_key
                    .open(cookie::SESSION, sealed, now)
                    .and_then(|id| self.sessions.get(&id, now))
                    .ok_or(Unauthenticated::Missing)?;
                let mut tokens = session.tokens().ok_or(Unauthenticated::Missing)?;
                if tokens.access_expires <= now {
                    tokens = self
                        .refresh(&session, now)
                        .await
                        .ok_or(Unauthenticated::Missing)?;
                }
                Ok(Person {
                    verified: tokens.verified,
                    token: tokens.access,
                })
            }
            (None, None) => Err(Unauthenticated::Missing),
        }
    }

    /// Refreshes `session`'s tokens, one refresh at a time (requests that
    /// wait get the tokens it brought); `None` (and the session ended) when
    /// the provider refuses: its session is over.
    pub(crate) async fn refresh(&self, session: &crate::sessions::Session, now: u64) -> Option<Tokens> {
        let seen = session.tokens()?.access;
        let _one_at_a_time = session.refreshing.lock().await;
        let current = session.tokens()?;
        if current.access != seen {
            // Refreshed while this request waited: use those.
            return Some(current);
        }
        let refresh = current.refresh.as_deref()?;
        match self.rp.refresh(refresh).await {
            Ok((answer, verified)) => {
                let tokens = Tokens {
                    access_expires: expiry(&verified, answer.expires_in, now),
                    access: answer.access_token,
                    verified: Arc::new(verified),
                    refresh: answer.refresh_token.or(current.refresh),
                };
                session.set_tokens(tokens.clone());
                Some(tokens)
            }
            Err(oidc::RpError::Refused { error, description }) => {
                tracing::info!(target: "zt::audit", sub = %session.sub, error = %error, description = %description, "gateway session ended: the provider refused its refresh");
                self.sessions.end(&session.id);
                None
            }
            Err(e) => {
                tracing::warn!(sub = %session.sub, error = %e, "refreshing a session failed; trying again");
                (current.access_expires > now).then_some(current)
            }
        }
    }

    async fn authorize<B>(
        &self,
        request: &Request<B>,
        head: &zt_proxy::request::normalize::Admitted,
        person: &Person,
        device: Option<&crate::devices::RequestDevice>,
        client: SocketAddr,
    ) -> Result<zt_proxy::authz::Decision, Refusal> {
        let mut auth = person.verified.to_auth();
        // The device's live tier, not the one written in the token when it
        // was issued: the device behind this connection's certificate (the
        // upstream gets the same, `claims_with_device`).
        if let Some(device) = device {
            auth.claims.extend(device.claims());
        }
        let headers = zt_proxy::request::authorize::policy_headers(
            request.headers(),
            &[http::header::AUTHORIZATION, http::header::COOKIE],
        );
        let policy_request = zt_policy::Request {
            source: zt_policy::request::Source {
                principal: None,
                namespace: None,
                ip: Some(client.ip()),
            },
            destination: zt_policy::request::Destination {
                namespace: self.config.policy.namespace.clone(),
                labels: self.config.policy.labels.clone(),
                port: Some(self.config.listen.port()),
                ip: Some(self.config.listen.ip()),
            },
            request: Some(zt_policy::request::Http {
                method: request.method().as_str().to_owned(),
                path: head.path_and_query.as_str().to_owned(),
                host: head.host.clone(),
                headers,
                auth: Some(auth),
            }),
            protocol: zt_policy::request::Protocol::Http,
            connection: None,
        };
        self.authorizer.authorize(&policy_request).await
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        head: &zt_proxy::request::normalize::Admitted,
        upstream: &Upstream,
        person: &Person,
        device: Option<&crate::devices::RequestDevice>,
        now: u64,
    ) -> Result<Response<Body>, Forwarding> {
        let token = match upstream.route.token {
            TokenMode::Exchange => Some(
                self.exchanged(person, &upstream.route.audience, device, now)
                    .await?,
            ),
            TokenMode::None => None,
        };
        let (mut parts, body) = request.into_parts();
        let mut target = http::uri::Parts::default();
        target.scheme = Some(http::uri::Scheme::HTTP);
        target.authority = Some(upstream.authority.clone());
        target.path_and_query = Some(head.path_and_query.clone());
        parts.uri = http::Uri::from_parts(target)
            .map_err(|e| Forwarding::Refused(Refusal::Malformed(format!("request target: {e}"))))?;
        parts.version = http::Version::HTTP_11;
        zt_proxy::request::rewrite::remove_hop_by_hop(&mut parts.headers);
        parts.headers.remove(http::header::AUTHORIZATION);
        without_gateway_cookies(&mut parts.headers);
        if let Some(token) = token {
            let value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| Forwarding::Refused(Refusal::Malformed("exchanged token".into())))?;
            parts.headers.insert(http::header::AUTHORIZATION, value);
        }
        if !upstream.headers.is_empty() {
            let claims = claims_with_device(&person.verified, device);
            for (name, value) in self.identity_headers(upstream, &claims) {
                parts.headers.insert(name, value);
            }
        }
        let streamed =
            !hyper::body::Body::is_end_stream(&body) && hyper::body::Body::size_hint(&body).exact().is_none();
        if streamed {
            parts.headers.insert(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        let body = body.map_err(Into::into).boxed();
        let response = upstream
            .client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| Forwarding::Refused(Refusal::AppUnreachable(oidc::error_chain(&e))))?;
        let (mut parts, body) = response.into_parts();
        zt_proxy::request::rewrite::remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.map_err(Into::into).boxed()))
    }

    /// The person's token for `audience`, exchanged once and reused while it
    /// lives and the device's live tier stays what it was (the provider
    /// writes the tier of the moment of the exchange).
    async fn exchanged(
        &self,
        person: &Person,
        audience: &str,
        device: Option<&crate::devices::RequestDevice>,
        now: u64,
    ) -> Result<String, Forwarding> {
        let key = match device {
            Some(device) => format!("{audience}\n{}", device.tier),
            None => audience.to_owned(),
        };
        if let Some(token) = self.sessions.exchanged(&person.token, &key, now) {
            return Ok(token);
        }
        let answer = self
            .rp
            .exchange(&person.token, audience)
            .await
            .map_err(Forwarding::Exchange)?;
        let expires = now + answer.expires_in.unwrap_or(60);
        self.sessions
            .keep_exchanged(&person.token, &key, answer.access_token.clone(), expires, now);
        Ok(answer.access_token)
    }

    /// The identity headers of `upstream`, from the claims the policy decided
    /// on, written as RequestAuthentication's `outputClaimToHeaders` writes
    /// them; claims the token lacks (or objects) give no header.
    fn identity_headers(
        &self,
        upstream: &Upstream,
        claims: &Map<String, Value>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        upstream
            .headers
            .iter()
            .filter_map(|(name, claim)| {
                let value = zt_authn::request::claim_text(claim.find(claims)?)?;
                Some((name.clone(), HeaderValue::from_str(&value).ok()?))
            })
            .collect()
    }

    /// Sends a browser to the provider, remembering where it was going.
    fn start_sign_in(&self, return_to: &str, now: u64) -> Response<Body> {
        let Some(start) = oidc::SignInStart::new() else {
            return pages::unavailable("no randomness");
        };
        let Some(binding) = oidc::random_text() else {
            return pages::unavailable("no randomness");
        };
        let pending = Pending {
            return_to: safe_return(return_to).unwrap_or("/").to_owned(),
            browser: sha256(binding.as_bytes()),
            created: now,
            start: start.clone(),
        };
        if !self.sessions.start_sign_in(pending, now) {
            return pages::unavailable("too many sign-ins in progress");
        }
        let location = self.rp.authorization_url(
            &self.config.redirect_uri(),
            &self.config.oidc.scopes.join(" "),
            &start,
        );
        pages::redirect(
            &location,
            Some(cookie::set(
                cookie::SIGN_IN,
                &binding,
                crate::sessions::PENDING_TTL,
            )),
        )
    }

    /// The gateway's own paths.
    async fn own(
        self: &Arc<Self>,
        request: Request<Incoming>,
        head: &zt_proxy::request::normalize::Admitted,
        client: SocketAddr,
        now: u64,
    ) -> Response<Body> {
        let query = head.target.query.clone().unwrap_or_default();
        match (request.method(), head.target.path.as_str()) {
            (&Method::GET, paths::CALLBACK) => self.callback(&request, &query, now).await,
            (&Method::GET, paths::SIGN_IN) => match oidc::param(&query, "return") {
                Some(to) if safe_return(&to).is_some() => self.start_sign_in(&to, now),
                Some(_) => pages::bad_request("return: only a path on this gateway"),
                None => self.start_sign_in("/", now),
            },
            (&Method::POST, paths::SIGN_OUT) => self.sign_out(&request, now),
            (&Method::POST, paths::BACKCHANNEL_LOGOUT) => self.backchannel_logout(request, client, now).await,
            (&Method::GET, paths::WHOAMI) => match self.authenticate(&request, now).await {
                Ok(person) => pages::json(StatusCode::OK, &person.verified.claims().clone().into()),
                Err(why) => self.unauthenticated(&why, client),
            },
            _ => pages::not_found(pages::is_browser(&request)),
        }
    }

    /// The provider sends the browser back: the state must name a sign-in
    /// this browser started, the code must redeem, the ID token must carry
    /// its nonce; then a session, a cookie, and the way back.
    async fn callback<B>(&self, request: &Request<B>, query: &str, now: u64) -> Response<Body> {
        let binding = cookie::find(request.headers(), cookie::SIGN_IN).map(|v| sha256(v.as_bytes()));
        let Some(state) = oidc::param(query, "state") else {
            return pages::bad_request("the sign-in answer has no state");
        };
        let Some(pending) = self.sessions.finish_sign_in(&state, now) else {
            return pages::bad_request("this sign-in is unknown or expired: start again");
        };
        if binding
            .is_none_or(|b| aws_lc_rs::constant_time::verify_slices_are_equal(&b, &pending.browser).is_err())
        {
            tracing::warn!(target: "zt::audit", "gateway sign-in refused: the callback came to another browser than the one that started it");
            return pages::bad_request("this sign-in was started in another browser");
        }
        if oidc::param(query, "iss").is_some_and(|iss| iss != self.rp.issuer()) {
            return pages::bad_request("the answer names another issuer");
        }
        if let Some(error) = oidc::param(query, "error") {
            let description = oidc::param(query, "error_description").unwrap_or_default();
            return pages::bad_request(&format!(
                "the provider refused the sign-in: {error}: {description}"
            ));
        }
        let Some(code) = oidc::param(query, "code") else {
            return pages::bad_request("the sign-in answer has no code");
        };
        let redeemed = self
            .rp
            .redeem(
                &code,
                &pending.start.verifier,
                &self.config.redirect_uri(),
                &pending.start.nonce,
            )
            .await;
        let (answer, verified) = match redeemed {
            Ok(redeemed) => redeemed,
            Err(e) => {
                tracing::warn!(target: "zt::audit", error = %e, "gateway sign-in failed");
                return pages::bad_request("the sign-in could not be completed");
            }
        };
        let sid = verified
            .claims()
            .get("sid")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let expires = now + self.config.session.ttl.as_secs();
        let tokens = Tokens {
            access_expires: expiry(&verified, answer.expires_in, now),
            access: answer.access_token,
            verified: Arc::new(verified),
            refresh: answer.refresh_token,
        };
        let principal = tokens.verified.principal();
        let Some(id) = self.cookie_key.new_session_id() else {
            return pages::unavailable("no randomness");
        };
        if self.sessions.open(id, sid, expires, tokens, now).is_none() {
            return pages::unavailable("the session could not be opened");
        }
        let Some(sealed) = self.cookie_key.seal(cookie::SESSION, &id, expires) else {
            return pages::unavailable("no randomness");
        };
        tracing::info!(target: "zt::audit", user = %principal, "gateway session opened");
        self.metrics.sign_ins.inc();
        let mut response = pages::redirect(
            &pending.return_to,
            Some(cookie::set(
                cookie::SESSION,
                &sealed,
                self.config.session.ttl.as_secs(),
            )),
        );
        if let Ok(clear) = HeaderValue::try_from(cookie::clear(cookie::SIGN_IN)) {
            response.headers_mut().append(http::header::SET_COOKIE, clear);
        }
        response
    }

    fn sign_out<B>(&self, request: &Request<B>, now: u64) -> Response<Body> {
        if let Some(id) = cookie::find(request.headers(), cookie::SESSION)
            .and_then(|sealed| self.cookie_key.open(cookie::SESSION, sealed, now))
            && let Some(session) = self.sessions.end(&id)
        {
            tracing::info!(target: "zt::audit", sub = %session.sub, "gateway session ended: signed out");
        }
        let to = self.rp.end_session_endpoint().unwrap_or("/");
        pages::redirect(to, Some(cookie::clear(cookie::SESSION)))
    }

    /// OpenID Connect Back-Channel Logout: the provider says a session (or a
    /// person's every session) ended; the gateway's sessions from it end now.
    async fn backchannel_logout(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        now: u64,
    ) -> Response<Body> {
        let body = match http_body_util::Limited::new(request.into_body(), MAX_LOGOUT_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => return pages::json_error(StatusCode::BAD_REQUEST, "invalid_request", "body too large"),
        };
        let Some(token) = std::str::from_utf8(&body)
            .ok()
            .and_then(|b| oidc::param(b, "logout_token"))
        else {
            return pages::json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "logout_token is required",
            );
        };
        match self.rp.verify_logout_token(&token).await {
            Ok(logout) => {
                let ended = self
                    .sessions
                    .logout(logout.sid.as_deref(), logout.sub.as_deref(), now);
                tracing::info!(target: "zt::audit", sid = logout.sid.as_deref(), sub = logout.sub.as_deref(), ended, "back-channel logout");
                self.metrics.logouts.inc();
                pages::empty(StatusCode::OK)
            }
            Err(why) => {
                tracing::warn!(target: "zt::audit", peer = %client, reason = %why, "back-channel logout token refused");
                pages::json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the logout token does not verify",
                )
            }
        }
    }

    fn unauthenticated(&self, why: &Unauthenticated, client: SocketAddr) -> Response<Body> {
        let (reason, detail) = match why {
            Unauthenticated::Missing => ("missing", String::new()),
            Unauthenticated::Invalid(reason, detail) => (*reason, detail.clone()),
        };
        self.metrics.unauthenticated(reason);
        if !detail.is_empty() {
            tracing::info!(target: "zt::access", peer = %client, reason, detail = %detail, "gateway: unauthenticated");
        }
        pages::unauthorized(self.rp.issuer(), reason)
    }

    fn refused(&self, refusal: &Refusal, browser: bool) -> Response<Body> {
        self.proxy_metrics.refuse(refusal.label());
        let (status, text) = refusal.answer();
        pages::error(status, text, browser)
    }
}

/// Why forwarding failed.
enum Forwarding {
    /// The provider would not exchange the token.
    Exchange(oidc::RpError),
    /// The upstream could not be reached, or the request not rewritten.
    Refused(Refusal),
}

/// The token of `Authorization: Bearer …`: `Ok(None)` when there is no
/// Authorization header; refused when there are two, the scheme is another,
/// or it is too big.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, Unauthenticated> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |reason: &'static str, detail: &str| Unauthenticated::Invalid(reason, detail.to_owned());
    if values.next().is_some() {
        return Err(invalid("two_credentials", "two Authorization headers"));
    }
    if value.len() > MAX_TOKEN_BYTES + 7 {
        return Err(invalid("too_large", "a token over 64 KiB"));
    }
    let value = value.to_str().map_err(|_| invalid("malformed", "not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| invalid("malformed", "no scheme"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(invalid("malformed", "not a Bearer token"));
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(invalid("malformed", "not one token"));
    }
    Ok(Some(token))
}

/// Removes the gateway's own cookies from what the upstream gets.
fn without_gateway_cookies(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !pair.is_empty() && name != cookie::SESSION && name != cookie::SIGN_IN
        })
        .map(str::to_owned)
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::try_from(kept.join("; "))
    {
        headers.insert(http::header::COOKIE, value);
    }
}

/// `target` if it is a path on this gateway: one leading `/`, no scheme, no
/// authority, no backslash, no control characters, also once decoded.
pub fn safe_return(target: &str) -> Option<&str> {
    let decoded = oidc::decode(target)?;
    for candidate in [target, decoded.as_str()] {
        let mut chars = candidate.chars();
        let first_ok = chars.next() == Some('/');
        let second = chars.next();
        if !first_ok
            || matches!(second, Some('/' | '\\'))
            || candidate.contains('\\')
            || candidate.chars().any(char::is_control)
            || candidate.starts_with(paths::PREFIX)
        {
            return None;
        }
    }
    // A second decoding must not turn it into something else either.
    if decoded.contains('%') && safe_return(&decoded).is_none() {
        return None;
    }
    Some(target)
}

/// When an access token expires: its `exp`, or `expires_in` from now.
fn expiry(verified: &Verified, expires_in: Option<u64>, now: u64) -> u64 {
    verified
        .claims()
        .get("exp")
        .and_then(Value::as_u64)
        .or(expires_in.map(|s| now + s))
        .unwrap_or(now)
}

/// The person's claims as the policy sees them and the upstream receives
/// them: with a device behind the connection, its live `device_id` and
/// `device_tier` in place of what the token was issued with.
fn claims_with_device<'a>(
    verified: &'a Verified,
    device: Option<&crate::devices::RequestDevice>,
) -> std::borrow::Cow<'a, Map<String, Value>> {
    match device {
        Some(device) => {
            let mut claims = verified.claims().clone();
            claims.extend(device.claims());
            std::borrow::Cow::Owned(claims)
        }
        None => std::borrow::Cow::Borrowed(verified.claims()),
    }
}

/// The `x5t#S256` a token is bound to, if any.
fn bound_certificate(verified: &Verified) -> Option<&str> {
    verified.claims().get("cnf")?.get("x5t#S256")?.as_str()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn only_local_paths_are_return_targets() {
        for good in ["/", "/app?x=1", "/a/b#c", "/%41"] {
            assert_eq!(safe_return(good), Some(good), "{good}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2fevil.example",
            "/%2Fevil.example",
            "/%5cevil.example",
            "%2f%2fevil.example",
            "/%252f%252fevil.example",
            "evil.example",
            "javascript:alert(1)",
            "/\tevil",
            "/%09/evil",
            "/.zt/sign-out",
            "",
        ] {
            assert_eq!(safe_return(bad), None, "{bad}");
        }
    }

    #[test]
    fn bearer_tokens_are_one_token_of_one_header() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(http::header::AUTHORIZATION, v.parse().unwrap());
            }
            map
        };
        assert_eq!(bearer_token(&headers(&[])).ok().flatten(), None);
        assert_eq!(
            bearer_token(&headers(&["Bearer abc"])).ok().flatten(),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&["bearer abc"])).ok().flatten(),
            Some("abc")
        );
        for bad in [
            &["Bearer a", "Bearer b"][..],
            &["Basic YTpi"],
            &["Bearer"],
            &["Bearer a b"],
        ] {
            assert!(bearer_token(&headers(bad)).is_err(), "{bad:?}");
        }
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(matches!(
            bearer_token(&headers(&[&big])),
            Err(Unauthenticated::Invalid("too_large", _))
        ));
    }

    #[test]
    fn upstreams_never_see_the_gateways_cookies() {
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            "a=1; __Host-zt-session=v1.x; b=2".parse().unwrap(),
        );
        headers.append(http::header::COOKIE, "__Host-zt-sign-in=y".parse().unwrap());
        without_gateway_cookies(&mut headers);
        assert_eq!(headers.get_all(http::header::COOKIE).iter().count(), 1);
        assert_eq!(headers[http::header::COOKIE], "a=1; b=2");
        let mut only = HeaderMap::new();
        only.append(http::header::COOKIE, "__Host-zt-session=v1.x".parse().unwrap());
        without_gateway_cookies(&mut only);
        assert!(only.get(http::header::COOKIE).is_none());
    }
}
