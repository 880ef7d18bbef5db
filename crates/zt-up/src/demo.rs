//! The demo services' app: plain HTTP on loopback, reached only through its zt
//! proxy. It answers `/`, `/public` and `/internal` with who called, as the
//! proxy verified it (the `URI` of `x-forwarded-client-cert`), and any
//! `X-Client-CN` it received — which the proxy strips, so there never is one.
//! When the caller is the access gateway, the answer also names the person
//! the gateway verified (its `X-Zt-User` and `X-Zt-Groups`); from any other
//! caller these headers are not believed.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;

use crate::Error;
use crate::layout::GATEWAY_ID;

/// Binds the app of `service` on `addr`; serving starts with the returned future,
/// which ends only if serving fails.
pub async fn bind(
    service: &'static str,
    addr: SocketAddr,
) -> Result<impl Future<Output = std::io::Result<()>> + Send + 'static, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("{service}'s app on {addr}")))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", any(answer))
        .route("/public", any(answer))
        .route("/internal", any(answer))
        .fallback(not_found)
        .with_state(service);
    Ok(async move { axum::serve(listener, app).await })
}

async fn answer(State(service): State<&'static str>, request: Request) -> Response {
    let headers = request.headers();
    let caller = verified_caller(headers);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let person = (caller.as_deref() == Some(GATEWAY_ID)).then(|| {
        json!({
            "user": header("x-zt-user"),
            "groups": header("x-zt-groups"),
        })
    });
    let body = json!({
        "service": service,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "caller": caller,
        "person": person,
        "x_client_cn": header("x-client-cn"),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn not_found(State(service): State<&'static str>, request: Request) -> Response {
    let body = json!({"service": service, "error": format!("no {}", request.uri().path())});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// The caller's SPIFFE ID: the `URI` of the last (nearest) element of
/// `x-forwarded-client-cert`, which zt proxy sets after removing any the client sent.
fn verified_caller(headers: &HeaderMap) -> Option<String> {
    let xfcc = headers.get("x-forwarded-client-cert")?.to_str().ok()?;
    let nearest = xfcc.rsplit(',').next()?;
    nearest
        .split(';')
        .find_map(|field| field.trim().strip_prefix("URI="))
        .map(|uri| uri.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_is_the_nearest_uri() {
        let mut headers = HeaderMap::new();
        assert_eq!(verified_caller(&headers), None);
        headers.insert(
            "x-forwarded-client-cert",
            "By=spiffe://td/b;Hash=ab;URI=spiffe://td/far,By=spiffe://td/b;Hash=cd;URI=spiffe://td/near"
                .parse()
                .unwrap(),
        );
        assert_eq!(verified_caller(&headers).as_deref(), Some("spiffe://td/near"));
        headers.insert(
            "x-forwarded-client-cert",
            "By=spiffe://td/b;Hash=ab".parse().unwrap(),
        );
        assert_eq!(verified_caller(&headers), None, "By is the proxy, not the caller");
    }
}
