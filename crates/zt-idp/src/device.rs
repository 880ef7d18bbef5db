//! The device authorization grant (RFC 8628), for CLIs and devices without a
//! browser: the device asks at `/device_authorization` and polls the token
//! endpoint with its device code; the person opens `/device` elsewhere,
//! types the user code, signs in (the sign-in pages of [`crate::authorize`],
//! whose pending request approves the code instead of redirecting) or, when
//! already signed in, approves or denies it on a page that names the client.

use std::time::Duration;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use zt_store::{GrantType, Session, User};

use crate::authorize::{AuthorizationRequest, SCOPES, SESSION_COOKIE, cookie};
use crate::events::Event;
use crate::pages::{document, error, escape};
use crate::params::Params;
use crate::{OAuthError, Peer, Provider, now, secrets_equal, sha256_b64};

/// How long a device code lives (`expires_in`).
pub const DEVICE_CODE_TTL: Duration = Duration::from_secs(600);
/// The polling interval a device starts with (`interval`), seconds.
pub const POLL_INTERVAL: u64 = 5;

/// `POST /device_authorization` (RFC 8628 §3.1–3.2).
pub async fn device_authorization(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let answer = async {
        let params = Params::from_pairs(pairs)?;
        let endpoint = provider.config().url("/device_authorization");
        let client = provider.authenticate_client(&headers, &params, &endpoint).await?;
        if !client.client.grant_types.contains(&GrantType::DeviceCode) {
            return Err(OAuthError::unauthorized_client(
                "this client may not use the device authorization grant",
            ));
        }
        let scope = known_scopes(params.get("scope").unwrap_or_default());
        let now = now();
        let code = provider
            .store()
            .create_device_code(
                &client.client.client_id,
                &scope,
                now + DEVICE_CODE_TTL.as_secs(),
                POLL_INTERVAL,
                now,
            )
            .await?;
        let verification_uri = provider.config().url("/device");
        Ok(axum::Json(json!({
            "device_code": code.device_code,
            "user_code": code.user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": format!("{verification_uri}?user_code={}", code.user_code),
            "expires_in": DEVICE_CODE_TTL.as_secs(),
            "interval": POLL_INTERVAL,
        })))
    };
    provider.client_endpoint(&peer, answer).await
}

/// The scopes of `asked` this provider knows, as the authorization endpoint keeps them.
fn known_scopes(asked: &str) -> String {
    asked
        .split(' ')
        .filter(|scope| SCOPES.contains(scope))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `GET /device[?user_code=…]`: asks for the user code; with one, signs the
/// person in to approve it, or asks a signed-in person to approve or deny.
pub async fn verification(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let params = match Params::from_pairs(pairs) {
        Ok(params) => params,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.description()),
    };
    let Some(user_code) = params.get("user_code") else {
        return code_page(None);
    };
    let ip = peer.addr.ip().to_string();
    // A user code is short: guesses are failures, limited per address.
    if let Err(wait) = provider.limits().sign_in_ip.check(&ip) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("too many wrong codes: try again in {}s", wait.as_secs().max(1)),
        );
    }
    let now = now();
    let request = match provider.store().device_request(user_code, now).await {
        Ok(Some(request)) => request,
        Ok(None) => {
            provider.limits().sign_in_ip.charge(&ip);
            return code_page(Some("That code is unknown or has expired: check your device."));
        }
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let signed_in = match cookie(&headers, SESSION_COOKIE) {
        Some(secret) => match provider.store().session_by_secret(secret, now).await {
            Ok(found) => found.map(|(session, _)| (session, secret)),
            Err(e) => return OAuthError::from(e).into_response(),
        },
        None => None,
    };
    match signed_in {
        Some((_, secret)) => {
            let body = format!(
                "<h1>Sign in on a device?</h1>\n\
                 <p id=\"message\"><strong>{client}</strong> asks to act as you (scope: {scope}) with code \
                 <code id=\"user-code\">{code}</code>. Approve only if you started this on your own device.</p>\n\
                 <form method=\"post\" action=\"/device\">\
                 <input type=\"hidden\" name=\"user_code\" value=\"{code}\">\
                 <input type=\"hidden\" name=\"confirm\" value=\"{confirm}\">\
                 <button type=\"submit\" name=\"action\" value=\"approve\" id=\"approve\">Approve</button> \
                 <button type=\"submit\" name=\"action\" value=\"deny\" id=\"deny\">Deny</button></form>",
                client = escape(&request.client_id),
                scope = escape(if request.scope.is_empty() {
                    "none"
                } else {
                    &request.scope
                }),
                code = escape(user_code),
                confirm = escape(&confirmation(secret, user_code)),
            );
            document("Sign in on a device", &body, StatusCode::OK)
        }
        None => provider.sign_in_page(
            AuthorizationRequest {
                client_id: request.client_id,
                redirect_uri: String::new(),
                code_challenge: String::new(),
                scope: request.scope,
                state: None,
                nonce: None,
                device_user_code: Some(user_code.to_owned()),
            },
            &peer,
        ),
    }
}

/// `POST /device`: a signed-in person's answer, with the confirmation of
/// the page [`verification`] showed them (bound to their session cookie and
/// the code, so no other site can post it).
pub async fn verification_form(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let params = match Params::from_pairs(pairs) {
        Ok(params) => params,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.description()),
    };
    if let Some(origin) = headers.get(header::ORIGIN)
        && origin.as_bytes() != provider.config().origin().as_bytes()
    {
        return error(StatusCode::FORBIDDEN, "cross-origin form refused");
    }
    let (Some(user_code), Some(given), Some(secret)) = (
        params.get("user_code"),
        params.get("confirm"),
        cookie(&headers, SESSION_COOKIE),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "this form is incomplete: start again from /device",
        );
    };
    if !secrets_equal(given.as_bytes(), confirmation(secret, user_code).as_bytes()) {
        return error(
            StatusCode::FORBIDDEN,
            "this form was not shown to this browser: start again from /device",
        );
    }
    let now = now();
    let (session, user) = match provider.store().session_by_secret(secret, now).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return error(
                StatusCode::FORBIDDEN,
                "your session has ended: start again from /device",
            );
        }
        Err(e) => return OAuthError::from(e).into_response(),
    };
    match params.get("action") {
        Some("approve") => provider.approve_device(user_code, &session, &user, &peer).await,
        Some("deny") => {
            match provider.store().answer_device_request(user_code, None, now).await {
                Ok(true) => {}
                Ok(false) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "that code is unknown, expired or answered already",
                    );
                }
                Err(e) => return OAuthError::from(e).into_response(),
            }
            if let Err(e) = provider.events().record(
                Event::failure("device", "access_denied", "a device's sign-in was denied")
                    .from_ip(peer.addr.ip())
                    .with("sub", user.sub.as_str())
                    .with("session", session.id.as_str()),
            ) {
                return e.into_response();
            }
            document(
                "Denied",
                "<h1>Denied</h1>\n<p id=\"message\">The device was not signed in.</p>",
                StatusCode::OK,
            )
        }
        _ => error(StatusCode::BAD_REQUEST, "approve or deny"),
    }
}

/// What the approval form must carry: bound to the browser's session secret and the code.
fn confirmation(session_secret: &str, user_code: &str) -> String {
    let code: String = user_code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    sha256_b64(format!("device\u{0}{session_secret}\u{0}{code}").as_bytes())
}

/// The page asking for the code.
fn code_page(message: Option<&str>) -> Response {
    let message = message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>\n", escape(m)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in on a device</h1>\n{message}<form method=\"get\" action=\"/device\">\
         <label>Code shown on your device <input name=\"user_code\" id=\"user_code\" \
         autocomplete=\"off\" autocapitalize=\"characters\" required></label> \
         <button type=\"submit\">Continue</button></form>"
    );
    let status = if message.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    document("Sign in on a device", &body, status)
}

impl Provider {
    /// A person signed in in `session` approves the device request of
    /// `user_code`: the device's next poll gets tokens of this session.
    pub(crate) async fn approve_device(
        &self,
        user_code: &str,
        session: &Session,
        user: &User,
        peer: &Peer,
    ) -> Response {
        match self
            .store()
            .answer_device_request(user_code, Some(&session.id), now())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "that code is unknown, expired or answered already: start again on your device",
                );
            }
            Err(e) => return OAuthError::from(e).into_response(),
        }
        if let Err(e) = self.events().record(
            Event::success("device", "a device's sign-in was approved")
                .from_ip(peer.addr.ip())
                .with("sub", user.sub.as_str())
                .with("user", user.name.as_str())
                .with("session", session.id.as_str()),
        ) {
            return e.into_response();
        }
        // A 303 like the code flow's, so that a form and a passkey's script
        // (which navigates to the redirect it is given) end on the same page.
        let mut response = axum::response::Redirect::to("/device/done").into_response();
        crate::no_store(&mut response);
        response
    }
}

/// `GET /device/done`: what a person sees once a device's sign-in is approved.
pub async fn done() -> Response {
    document(
        "Device signed in",
        "<h1>Device signed in</h1>\n<p id=\"message\">You can return to your device.</p>",
        StatusCode::OK,
    )
}
