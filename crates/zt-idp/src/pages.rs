//! The pages people see: server-rendered HTML, no external assets, one small
//! script (served from this origin, so that the Content-Security-Policy
//! allows no inline script at all). Every value written into a page is
//! HTML-escaped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// What the sign-in page shows.
pub struct SignInPage<'a> {
    /// The pending authorization request's ID.
    pub request: &'a str,
    /// Its CSRF token.
    pub csrf: &'a str,
    /// The client asking.
    pub client: &'a str,
    /// Whether to offer the password form.
    pub passwords: bool,
    /// A message from the last attempt.
    pub error: Option<&'a str>,
}

/// The script of the sign-in and enrollment pages.
pub const SCRIPT: &str = include_str!("../assets/zt.js");
/// The style sheet.
pub const STYLE: &str = include_str!("../assets/zt.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The sign-in page.
pub fn sign_in(page: &SignInPage<'_>) -> Response {
    let error = page
        .error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let password = if page.passwords {
        format!(
            r#"<form method="post" action="/signin/password" id="password-form">
  <input type="hidden" name="request" value="{request}">
  <input type="hidden" name="csrf" value="{csrf}">
  <label>User name <input name="username" id="username" autocomplete="username" required></label>
  <label>Password <input name="password" id="password" type="password" autocomplete="current-password" required></label>
  <button type="submit" id="password-submit">Sign in with a password</button>
</form>"#,
            request = escape(page.request),
            csrf = escape(page.csrf),
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"<h1>Sign in</h1>
<p><strong>{client}</strong> asks who you are.</p>
{error}
<div id="passkey" data-request="{request}" data-csrf="{csrf}">
  <button type="button" id="passkey-sign-in">Sign in with a passkey</button>
  <p class="error" id="passkey-error" role="alert" hidden></p>
</div>
{password}"#,
        client = escape(page.client),
        request = escape(page.request),
        csrf = escape(page.csrf),
    );
    document("Sign in", &body, StatusCode::OK)
}

/// A page that explains an error to a person (never a redirect to a client
/// that could not be trusted).
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>Cannot continue</h1>\n<p class=\"error\" id=\"message\">{}</p>",
        escape(message)
    );
    document("Error", &body, status)
}

/// A whole document with the headers every page carries.
pub fn document(title: &str, body: &str, status: StatusCode) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · zt</title><link rel=\"stylesheet\" href=\"/assets/zt.css\">\
         <script src=\"/assets/zt.js\" defer></script></head>\n<body><main>\n{body}\n</main></body></html>\n",
        escape(title)
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    crate::no_store(&mut response);
    response
}

/// `GET /assets/zt.js`.
pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /assets/zt.css`.
pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// Escapes text for HTML content and attribute values.
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
    use super::*;

    #[test]
    fn values_are_escaped() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
