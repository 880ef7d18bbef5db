//! The authorization endpoint (OpenID Connect Core §3.1.2, RFC 9700): the
//! code flow only, PKCE with S256 only, redirect URIs matched byte for byte
//! (an unknown client or redirect URI is told to the person, never sent
//! anywhere), `state` returned and `iss` added (RFC 9207).
//!
//! A browser with an open session gets a code at once; otherwise the request
//! waits here ([`Pending`]) while the person signs in on the sign-in page.
//! Every form posted back carries a CSRF token bound to the pending request
//! and to a `__Host-` cookie, and must come from the issuer's origin.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use zt_store::{GrantType, NewCode, Session, SignIn, User};

use crate::events::Event;
use crate::pages;
use crate::params::Params;
use crate::tokens::Assurance;
use crate::{CODE_TTL, OAuthError, Peer, Provider, now, random_token, secrets_equal};

/// The browser session cookie.
pub const SESSION_COOKIE: &str = "__Host-zt-session";
/// The cookie that binds a sign-in page's forms to the browser that loaded it.
pub const SIGN_IN_COOKIE: &str = "__Host-zt-signin";
/// How long a person has to sign in.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Most authorization requests waiting for a sign-in at once.
const MAX_PENDING: usize = 10_000;
/// Longest `state` or `nonce` accepted, in bytes.
const MAX_STATE_LEN: usize = 512;
/// The scopes this provider knows; others are dropped from the grant.
pub const SCOPES: &[&str] = &["openid", "profile", "email", "groups", "offline_access"];

/// A checked authorization request.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    /// The client.
    pub client_id: String,
    /// Where the response goes: one of the client's registered URIs, verbatim.
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The scopes granted (the known ones asked for).
    pub scope: String,
    /// `state`, returned as given.
    pub state: Option<String>,
    /// `nonce`, for the ID token.
    pub nonce: Option<String>,
    /// For a device's request (RFC 8628), its user code: signing in approves
    /// it instead of redirecting with a code.
    pub device_user_code: Option<String>,
}

/// Authorization requests waiting for the person to sign in, by ID.
#[derive(Default)]
pub struct Pending(Mutex<HashMap<String, (AuthorizationRequest, String, Instant)>>);

impl Pending {
    /// Keeps a request; returns its ID and the CSRF token of its forms.
    fn insert(&self, request: AuthorizationRequest) -> Result<(String, String), OAuthError> {
        let id = random_token()?;
        let csrf = random_token()?;
        let mut pending = self
            .0
            .lock()
            .map_err(|_| OAuthError::server_error("pending requests", "lock poisoned"))?;
        if pending.len() >= MAX_PENDING {
            pending.retain(|_, (_, _, at)| at.elapsed() < PENDING_TTL);
            if pending.len() >= MAX_PENDING {
                return Err(OAuthError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "too many sign-ins in progress",
                ));
            }
        }
        pending.insert(id.clone(), (request, csrf.clone(), Instant::now()));
        Ok((id, csrf))
    }

    /// The request `id` if `csrf` is its token (compared in constant time).
    pub(crate) fn check(&self, id: &str, csrf: &str) -> Option<AuthorizationRequest> {
        let pending = self.0.lock().ok()?;
        let (request, token, at) = pending.get(id)?;
        (at.elapsed() < PENDING_TTL && secrets_equal(token.as_bytes(), csrf.as_bytes()))
            .then(|| request.clone())
    }

    /// Takes the request `id` out: it is answered.
    pub(crate) fn remove(&self, id: &str) {
        if let Ok(mut pending) = self.0.lock() {
            pending.remove(id);
        }
    }
}

/// `GET /authorize`.
pub async fn authorize(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let params = match Params::from_pairs(pairs) {
        Ok(params) => params,
        Err(e) => return pages::error(StatusCode::BAD_REQUEST, e.description()),
    };
    // Until the client and redirect URI are known good, errors are shown here.
    let request = match provider.check_client_and_redirect(&params).await {
        Ok(request) => request,
        Err(Refusal::Page(status, why)) => return pages::error(status, &why),
        Err(Refusal::Redirect(..)) => return pages::error(StatusCode::BAD_REQUEST, "invalid request"),
    };
    let request = match provider.check_request(&params, request) {
        Ok(request) => request,
        Err(Refusal::Redirect(request, error, why)) => return provider.redirect_error(&request, error, &why),
        Err(Refusal::Page(status, why)) => return pages::error(status, &why),
    };
    let prompt = params.get("prompt").unwrap_or_default();
    let signed_in = match cookie(&headers, SESSION_COOKIE) {
        Some(secret) => match provider.store().session_by_secret(secret, now()).await {
            Ok(found) => found,
            Err(e) => return OAuthError::from(e).into_response(),
        },
        None => None,
    };
    // A session too old for `max_age`, or weaker than an `acr_values` level
    // asked for, must sign in again (step-up).
    let max_age = match params.get("max_age").map(str::parse::<u64>) {
        None => None,
        Some(Ok(seconds)) => Some(seconds),
        Some(Err(_)) => {
            return provider.redirect_error(
                &request,
                "invalid_request",
                "max_age is not a number of seconds",
            );
        }
    };
    let wanted = params
        .get("acr_values")
        .unwrap_or_default()
        .split(' ')
        .filter_map(Assurance::from_acr)
        .min();
    let signed_in = signed_in.filter(|(session, _)| {
        let fresh = max_age.is_none_or(|max| now().saturating_sub(session.auth_time) <= max);
        let strong =
            wanted.is_none_or(|level| Assurance::from_acr(&session.acr).is_some_and(|have| have >= level));
        fresh && strong
    });
    match (signed_in, prompt) {
        (Some((session, user)), "" | "none" | "consent") => {
            provider.answer(&request, &session, &user, &peer).await
        }
        (None, "none") => provider.redirect_error(
            &request,
            "login_required",
            "no one is signed in, or not recently or strongly enough",
        ),
        _ => provider.sign_in_page(request, &peer),
    }
}

/// Why an authorization request is refused: on a page (the client or the
/// redirect URI cannot be trusted) or back to the client.
enum Refusal {
    Page(StatusCode, String),
    Redirect(Box<AuthorizationRequest>, &'static str, String),
}

impl Provider {
    async fn check_client_and_redirect(&self, params: &Params) -> Result<AuthorizationRequest, Refusal> {
        let bad = |why: &str| Refusal::Page(StatusCode::BAD_REQUEST, why.to_owned());
        let client_id = params
            .get("client_id")
            .ok_or_else(|| bad("client_id is missing"))?;
        let client = match self.store().client(client_id).await {
            Ok(client) => client,
            Err(zt_store::StoreError::Missing { .. }) => return Err(bad("unknown client")),
            Err(e) => {
                tracing::error!(error = %e, "datastore");
                return Err(Refusal::Page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "datastore error".into(),
                ));
            }
        };
        let redirect_uri = params
            .get("redirect_uri")
            .ok_or_else(|| bad("redirect_uri is missing"))?;
        // RFC 9700 §4.1.3: exact string comparison, no normalisation.
        if !client
            .redirect_uris
            .iter()
            .any(|registered| registered == redirect_uri)
        {
            return Err(bad("redirect_uri is not registered for this client"));
        }
        Ok(AuthorizationRequest {
            client_id: client.client_id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            code_challenge: String::new(),
            scope: String::new(),
            state: params.get("state").map(str::to_owned),
            nonce: None,
            device_user_code: None,
        })
        .and_then(|request| {
            if client.grant_types.contains(&GrantType::AuthorizationCode) {
                Ok(request)
            } else {
                Err(Refusal::Redirect(
                    Box::new(request),
                    "unauthorized_client",
                    "this client may not use the authorization code flow".into(),
                ))
            }
        })
    }

    fn check_request(
        &self,
        params: &Params,
        mut request: AuthorizationRequest,
    ) -> Result<AuthorizationRequest, Refusal> {
        let refuse = |request: &AuthorizationRequest, error, why: &str| {
            Err(Refusal::Redirect(
                Box::new(request.clone()),
                error,
                why.to_owned(),
            ))
        };
        if request.state.as_ref().is_some_and(|s| s.len() > MAX_STATE_LEN) {
            request.state = None;
            return refuse(&request, "invalid_request", "state is too long");
        }
        if params.get("request").is_some() || params.get("request_uri").is_some() {
            return refuse(
                &request,
                "request_not_supported",
                "request objects are not supported",
            );
        }
        match params.get("response_type") {
            Some("code") => {}
            Some(_) => {
                return refuse(
                    &request,
                    "unsupported_response_type",
                    "only response_type=code is supported",
                );
            }
            None => return refuse(&request, "invalid_request", "response_type is missing"),
        }
        if let Some(mode) = params.get("response_mode")
            && mode != "query"
        {
            return refuse(
                &request,
                "invalid_request",
                "only response_mode=query is supported",
            );
        }
        match (params.get("code_challenge"), params.get("code_challenge_method")) {
            (Some(challenge), Some("S256")) if is_s256_challenge(challenge) => {
                request.code_challenge = challenge.to_owned();
            }
            (Some(_), Some("S256")) => {
                return refuse(
                    &request,
                    "invalid_request",
                    "code_challenge is not a base64url SHA-256",
                );
            }
            (None, _) => {
                return refuse(
                    &request,
                    "invalid_request",
                    "PKCE is required: code_challenge is missing",
                );
            }
            (Some(_), _) => {
                return refuse(&request, "invalid_request", "code_challenge_method must be S256");
            }
        }
        if let Some(nonce) = params.get("nonce") {
            if nonce.len() > MAX_STATE_LEN {
                return refuse(&request, "invalid_request", "nonce is too long");
            }
            request.nonce = Some(nonce.to_owned());
        }
        request.scope = params
            .get("scope")
            .unwrap_or_default()
            .split(' ')
            .filter(|scope| SCOPES.contains(scope))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(request)
    }

    /// Sends an error back to the client (RFC 6749 §4.1.2.1), with `iss`.
    fn redirect_error(&self, request: &AuthorizationRequest, error: &str, description: &str) -> Response {
        let mut query = vec![("error", error), ("error_description", description)];
        if let Some(state) = &request.state {
            query.push(("state", state));
        }
        query.push(("iss", &self.config().issuer));
        redirect(&request.redirect_uri, &query)
    }

    /// Issues a code for a signed-in session and sends the browser back.
    async fn answer(
        &self,
        request: &AuthorizationRequest,
        session: &Session,
        user: &User,
        peer: &Peer,
    ) -> Response {
        if let Some(user_code) = &request.device_user_code {
            return self.approve_device(user_code, session, user, peer).await;
        }
        let now = now();
        let code = NewCode {
            client_id: request.client_id.clone(),
            session_id: session.id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            code_challenge: request.code_challenge.clone(),
            scope: request.scope.clone(),
            nonce: request.nonce.clone(),
            expires_at: now + CODE_TTL.as_secs(),
        };
        let code = match self.store().create_code(&code, now).await {
            Ok(code) => code,
            Err(e) => return OAuthError::from(e).into_response(),
        };
        let event = Event::success("authorize", "authorization code issued")
            .from_ip(peer.addr.ip())
            .with("sub", user.sub.as_str())
            .with("user", user.name.as_str())
            .with("client_id", request.client_id.as_str())
            .with("session", session.id.as_str());
        if let Err(e) = self.events().record(event) {
            return e.into_response();
        }
        let mut query = vec![("code", code.as_str())];
        if let Some(state) = &request.state {
            query.push(("state", state));
        }
        query.push(("iss", &self.config().issuer));
        redirect(&request.redirect_uri, &query)
    }

    pub(crate) fn sign_in_page(&self, request: AuthorizationRequest, _peer: &Peer) -> Response {
        let client = request.client_id.clone();
        let (id, csrf) = match self.pending().insert(request) {
            Ok(pending) => pending,
            Err(e) => return e.into_response(),
        };
        let mut response = pages::sign_in(&pages::SignInPage {
            request: &id,
            csrf: &csrf,
            client: &client,
            passwords: self.config().passwords,
            error: None,
        });
        set_cookie(
            &mut response,
            SIGN_IN_COOKIE,
            &csrf,
            PENDING_TTL.as_secs(),
            "Strict",
        );
        response
    }

    /// Opens a session for a person who just proved who they are, answers the
    /// pending request `pending_id` with a code, and sets the session cookie;
    /// `reply` says whether the browser is redirected (a form) or told where
    /// to go (a script's `fetch`).
    #[expect(clippy::too_many_arguments, reason = "one sign-in's facts, each needed")]
    pub(crate) async fn complete_sign_in(
        &self,
        pending_id: &str,
        request: &AuthorizationRequest,
        user: &User,
        amr: Vec<String>,
        assurance: Assurance,
        factor: &'static str,
        peer: &Peer,
        reply: Reply,
    ) -> Response {
        let now = now();
        let sign_in = SignIn {
            sub: user.sub.clone(),
            expires_at: now + self.config().session_ttl.as_secs(),
            amr: amr.clone(),
            acr: assurance.acr().to_owned(),
            source_ip: peer.addr.ip().to_string(),
        };
        let opened = match self.store().create_session(&sign_in, now).await {
            Ok(opened) => opened,
            Err(zt_store::StoreError::Disabled(_)) => {
                return pages::error(StatusCode::FORBIDDEN, "this account is disabled");
            }
            Err(e) => return OAuthError::from(e).into_response(),
        };
        let event = Event::success("sign_in", "signed in")
            .from_ip(peer.addr.ip())
            .with("sub", user.sub.as_str())
            .with("user", user.name.as_str())
            .with("factor", factor)
            .with("amr", amr)
            .with("acr", assurance.acr())
            .with("session", opened.session.id.as_str());
        if let Err(e) = self.events().record(event) {
            return e.into_response();
        }
        self.pending().remove(pending_id);
        let mut response = self.answer(request, &opened.session, user, peer).await;
        set_cookie(
            &mut response,
            SESSION_COOKIE,
            &opened.secret,
            self.config().session_ttl.as_secs(),
            "Lax",
        );
        clear_cookie(&mut response, SIGN_IN_COOKIE);
        match reply {
            Reply::Redirect => response,
            Reply::Json => redirect_as_json(response),
        }
    }

    /// Checks a sign-in form's CSRF protection: the issuer's origin, the
    /// cookie and the pending request's token all agree.
    pub(crate) fn check_form(
        &self,
        headers: &HeaderMap,
        pending_id: &str,
        csrf: &str,
    ) -> Result<AuthorizationRequest, Box<Response>> {
        if let Some(origin) = headers.get(header::ORIGIN)
            && origin.as_bytes() != self.config().origin().as_bytes()
        {
            return Err(Box::new(pages::error(
                StatusCode::FORBIDDEN,
                "cross-origin form refused",
            )));
        }
        let cookie_ok =
            cookie(headers, SIGN_IN_COOKIE).is_some_and(|c| secrets_equal(c.as_bytes(), csrf.as_bytes()));
        match self.pending().check(pending_id, csrf) {
            Some(request) if cookie_ok => Ok(request),
            _ => Err(Box::new(pages::error(
                StatusCode::FORBIDDEN,
                "this sign-in page has expired or was not opened in this browser: start again from the application",
            ))),
        }
    }
}

/// How a finished sign-in answers the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A 303 to the client (a form was posted).
    Redirect,
    /// `{"redirect": URL}` with the same cookies (a script called `fetch`,
    /// which would follow a redirect itself instead of navigating).
    Json,
}

/// Turns a 303 into `{"redirect": URL}`, keeping its cookies; any other
/// response (an error page) is returned as it is.
fn redirect_as_json(response: Response) -> Response {
    if response.status() != StatusCode::SEE_OTHER {
        return response;
    }
    let (parts, _) = response.into_parts();
    let location = parts
        .headers
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default();
    let mut json = axum::Json(serde_json::json!({ "redirect": location })).into_response();
    for cookie in parts.headers.get_all(header::SET_COOKIE) {
        json.headers_mut().append(header::SET_COOKIE, cookie.clone());
    }
    crate::no_store(&mut json);
    json
}

/// The password sign-in form.
#[derive(Debug, serde::Deserialize)]
pub struct PasswordForm {
    request: String,
    csrf: String,
    username: String,
    password: String,
}

/// `POST /signin/password`, where a deployment enables passwords.
pub async fn password_sign_in(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let started = std::time::Instant::now();
    let response = check_password(&provider, &peer, &headers, form).await;
    provider.events().observe_sign_in("password", started);
    response
}

async fn check_password(
    provider: &Provider,
    peer: &Peer,
    headers: &HeaderMap,
    form: PasswordForm,
) -> Response {
    if !provider.config().passwords {
        return pages::error(StatusCode::NOT_FOUND, "password sign-in is not enabled here");
    }
    let request = match provider.check_form(headers, &form.request, &form.csrf) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let ip = peer.addr.ip();
    let limits = provider.limits();
    let user_key = form.username.to_ascii_lowercase();
    if let Err(wait) = limits
        .sign_in_user
        .check(&user_key)
        .and_then(|()| limits.sign_in_ip.check(&ip.to_string()))
    {
        let _ = provider.events().record(
            Event::failure("sign_in", "rate_limited", "too many failed sign-ins")
                .from_ip(ip)
                .with("factor", "pwd"),
        );
        return pages::error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many failed sign-ins: try again in {}s",
                wait.as_secs().max(1)
            ),
        );
    }
    let user = match provider
        .store()
        .check_password(&form.username, &form.password)
        .await
    {
        Ok(user) => user,
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let Some(user) = user else {
        limits.sign_in_user.charge(&user_key);
        limits.sign_in_ip.charge(&ip.to_string());
        // The same answer for an unknown name, a wrong password, a disabled
        // user and one without a password: nothing to enumerate.
        if let Err(e) = provider.events().record(
            Event::failure("sign_in", "bad_credentials", "wrong user name or password")
                .from_ip(ip)
                .with("factor", "pwd"),
        ) {
            return e.into_response();
        }
        let mut response = pages::sign_in(&pages::SignInPage {
            request: &form.request,
            csrf: &form.csrf,
            client: &request.client_id,
            passwords: true,
            error: Some("Wrong user name or password."),
        });
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    };
    provider
        .complete_sign_in(
            &form.request,
            &request,
            &user,
            vec!["pwd".into()],
            Assurance::Aal1,
            "pwd",
            peer,
            Reply::Redirect,
        )
        .await
}

/// A PKCE S256 challenge: 43 base64url characters (32 bytes).
fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A 303 to `base` with `query` appended (after an existing query, if any).
fn redirect(base: &str, query: &[(&str, &str)]) -> Response {
    let mut url = base.to_owned();
    let mut separator = if base.contains('?') { '&' } else { '?' };
    for (name, value) in query {
        url.push(separator);
        url.push_str(name);
        url.push('=');
        url.push_str(&percent_encode(value));
        separator = '&';
    }
    let mut response = Redirect::to(&url).into_response();
    crate::no_store(&mut response);
    response
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A cookie's value, if the request carries it exactly once.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for header in headers.get_all(header::COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=')
                && key == name
            {
                if found.is_some() {
                    // Two cookies of one name: one may have been planted.
                    return None;
                }
                found = Some(value);
            }
        }
    }
    found
}

/// Sets a `__Host-` cookie: Secure, HttpOnly, Path=/, no Domain.
pub(crate) fn set_cookie(response: &mut Response, name: &str, value: &str, max_age: u64, same_site: &str) {
    let text = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age={max_age}");
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Removes a cookie.
pub(crate) fn clear_cookie(response: &mut Response, name: &str) {
    set_cookie(response, name, "", 0, "Lax");
}
