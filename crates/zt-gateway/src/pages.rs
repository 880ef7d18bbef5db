//! What the gateway answers itself: redirects, and errors as a page for a
//! browser or JSON for an API client. Pages are static HTML with every value
//! escaped, no script, and a CSP that allows none.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use zt_authn::Verified;

use crate::request::Body;

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Whether the client is a browser navigating (it gets pages and redirects),
/// not an API client (it gets JSON and 401s): a GET or HEAD that accepts
/// HTML and carries no `Authorization`.
pub fn is_browser<B>(request: &Request<B>) -> bool {
    matches!(*request.method(), http::Method::GET | http::Method::HEAD)
        && !request.headers().contains_key(http::header::AUTHORIZATION)
        && request
            .headers()
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/html"))
}

fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

fn respond(status: StatusCode, content_type: &'static str, text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(body(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if content_type.starts_with("text/html") {
        headers.insert("content-security-policy", HeaderValue::from_static(CSP));
        headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    }
    response
}

/// A 303 to `location`, setting `cookie` if any.
pub fn redirect(location: &str, cookie: Option<String>) -> Response<Body> {
    let mut response = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    match HeaderValue::try_from(location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
        }
        Err(_) => return error(StatusCode::BAD_GATEWAY, "bad redirect", false),
    }
    if let Some(value) = cookie.and_then(|c| HeaderValue::try_from(c).ok()) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// JSON.
pub fn json(status: StatusCode, value: &Value) -> Response<Body> {
    respond(status, "application/json", value.to_string())
}

/// An OAuth-style JSON error.
pub fn json_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}

/// An empty answer.
pub fn empty(status: StatusCode) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", "")
}

/// 401 with RFC 6750's `WWW-Authenticate`: no error code when no
/// credential was sent (§3.1), `invalid_token` (and why, in words any
/// client may show) when one was, `invalid_request` when two were.
pub fn unauthorized(realm: &str, reason: &str) -> Response<Body> {
    let (challenge, body) = match reason {
        "missing" => (
            format!("Bearer realm=\"{}\"", quoted(realm)),
            json!({"error": "unauthorized", "error_description": "sign in, or send Authorization: Bearer TOKEN"}),
        ),
        "two_credentials" | "malformed" => (
            format!(
                "Bearer realm=\"{}\", error=\"invalid_request\", error_description=\"{}\"",
                quoted(realm),
                describe(reason)
            ),
            json!({"error": "invalid_request", "error_description": describe(reason)}),
        ),
        _ => (
            format!(
                "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted(realm),
                describe(reason)
            ),
            json!({"error": "invalid_token", "error_description": describe(reason)}),
        ),
    };
    let mut response = json(StatusCode::UNAUTHORIZED, &body);
    if let Ok(value) = HeaderValue::try_from(challenge) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    response
}

/// The words a client sees for a refusal reason: enough to act on (sign in
/// again, get a new token), nothing about keys or the provider.
fn describe(reason: &str) -> &'static str {
    match reason {
        "expired" => "the token expired",
        "not_yet_valid" => "the token is not valid yet",
        "two_credentials" => "send one credential: a bearer token or a session cookie",
        "malformed" | "too_large" => "the token is malformed",
        "logged_out" | "exchange_refused" => "the session ended: sign in again",
        "wrong_audience" => "the token is not for this gateway",
        _ => "the token does not verify",
    }
}

fn quoted(text: &str) -> String {
    text.replace(['"', '\\'], "")
}

/// 403: a page naming who was refused and by which policy, or JSON.
pub fn forbidden(browser: bool, who: &Verified, policy: Option<&str>, reason: &str) -> Response<Body> {
    let user = who
        .claims()
        .get("preferred_username")
        .and_then(Value::as_str)
        .unwrap_or(who.subject());
    if !browser {
        return json(
            StatusCode::FORBIDDEN,
            &json!({"error": "access_denied", "error_description": reason, "policy": policy, "user": user}),
        );
    }
    let page = format!(
        "<!doctype html><html lang=en><meta charset=utf-8><title>Access denied</title>\
         <style>body{{font:16px system-ui;max-width:40em;margin:4em auto}}</style>\
         <h1>Access denied</h1><p>You are signed in as <b id=user>{}</b>, and this page is not for you.</p>\
         <p id=reason>{}</p><p>Policy: <code id=policy>{}</code></p>\
         <form method=post action=/.zt/sign-out><button>Sign out</button></form></html>",
        escape(user),
        escape(reason),
        escape(policy.unwrap_or("none")),
    );
    respond(StatusCode::FORBIDDEN, "text/html; charset=utf-8", page)
}

/// 404.
pub fn not_found(browser: bool) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "no route", browser)
}

/// 400, with the reason a person can act on.
pub fn bad_request(reason: &str) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, reason, true)
}

/// 503.
pub fn unavailable(reason: &str) -> Response<Body> {
    error(StatusCode::SERVICE_UNAVAILABLE, reason, false)
}

/// An error as a small page or as JSON.
pub fn error(status: StatusCode, reason: &str, browser: bool) -> Response<Body> {
    if browser {
        let page = format!(
            "<!doctype html><html lang=en><meta charset=utf-8><title>{status}</title><h1>{status}</h1><p id=reason>{}</p></html>",
            escape(reason)
        );
        return respond(status, "text/html; charset=utf-8", page);
    }
    json_error(status, status.canonical_reason().unwrap_or("error"), reason)
}

/// HTML-escapes `text`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn challenges_follow_rfc_6750() {
        let none = unauthorized("https://idp", "missing");
        assert_eq!(none.headers()[WWW_AUTHENTICATE], "Bearer realm=\"https://idp\"");
        let expired = unauthorized("https://idp", "expired");
        assert_eq!(
            expired.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"https://idp\", error=\"invalid_token\", error_description=\"the token expired\""
        );
        let two = unauthorized("https://idp", "two_credentials");
        assert!(
            two.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("invalid_request")
        );
    }

    #[test]
    fn browsers_are_told_from_api_clients() {
        let browser = Request::get("/")
            .header("accept", "text/html,*/*")
            .body(())
            .unwrap();
        assert!(is_browser(&browser));
        let api = Request::get("/")
            .header("accept", "application/json")
            .body(())
            .unwrap();
        assert!(!is_browser(&api));
        let bearer = Request::get("/")
            .header("accept", "text/html")
            .header("authorization", "Bearer x")
            .body(())
            .unwrap();
        assert!(!is_browser(&bearer));
        let post = Request::post("/").header("accept", "text/html").body(()).unwrap();
        assert!(!is_browser(&post));
        assert_eq!(escape("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }
}
