//! Forwarding one request to the app: identity headers a client could forge are
//! removed and the verified one added (`x-forwarded-client-cert`), hop-by-hop
//! headers dropped, bodies limited, HTTP/1.1 upgrades spliced.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

use crate::admin::Metrics;
use crate::inbound::{AppClient, AppProtocol, InboundConfig, ProxyBody, Revocation};

/// The header the app reads the caller's identity from.
pub const XFCC: &str = "x-forwarded-client-cert";

/// The caller on one connection.
pub(crate) struct Peer {
    /// How it appears in logs: its verified SPIFFE ID, or `plaintext`.
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    /// The address it connected to (the destination of policies).
    pub(crate) local: SocketAddr,
    /// Whether it may reach the app.
    pub(crate) allowed: bool,
    /// The XFCC the app gets; none for a plaintext caller.
    pub(crate) xfcc: Option<HeaderValue>,
    /// Ends upgraded connections when its SVID is revoked.
    pub(crate) revocation: Option<Revocation>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Sends one request to the app and its answer back.
pub(crate) async fn forward(
    mut request: Request<Incoming>,
    peer: &Peer,
    config: &InboundConfig,
    app: &http::uri::Authority,
    client: &AppClient,
) -> Response<ProxyBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if !peer.allowed {
        tracing::info!(target: "zt::access", peer = %peer.name, addr = %peer.addr, %method, path, status = 403, "denied: not on the allow-list");
        return plain(
            StatusCode::FORBIDDEN,
            "zt proxy: the caller's SPIFFE ID is not allowed\n",
        );
    }
    // Authorization: the request normalized, decided by the policies, and the
    // normalized path is what the app receives.
    let mut normalized = None;
    if let Some(authz) = &config.authz {
        let target = match authorization_target(&request) {
            Ok(target) => target,
            Err(why) => {
                tracing::info!(target: "zt::access", peer = %peer.name, %method, path, status = 400, reason = %why, "malformed request refused");
                return plain(StatusCode::BAD_REQUEST, "zt proxy: malformed request\n");
            }
        };
        // The query rides along for CUSTOM providers; policies match the path only.
        let policy_request = policy_request(&request, peer, &target.path_and_query());
        if !authz.authorize(&policy_request).await {
            return plain(StatusCode::FORBIDDEN, "RBAC: access denied\n");
        }
        // The app gets the path the policies matched, or nothing at all.
        match http::uri::PathAndQuery::try_from(target.path_and_query()) {
            Ok(path_and_query) => normalized = Some(path_and_query),
            Err(_) => return plain(StatusCode::BAD_REQUEST, "zt proxy: malformed request\n"),
        }
    }
    // An HTTP/1.1 upgrade (WebSocket, …): the Upgrade and Connection headers go to
    // the app, and after its 101 the two connections are spliced.
    let upgrade = upgrade_protocol(&request);
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().cloned();
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTP);
    target.authority = Some(app.clone());
    target.path_and_query = Some(normalized.unwrap_or_else(|| {
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
    }));
    parts.uri = match Uri::from_parts(target) {
        Ok(uri) => uri,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "zt proxy: bad request target\n"),
    };
    // An HTTP/2 caller's :authority becomes Host for an HTTP/1.1 app.
    parts.version = match config.app_protocol {
        AppProtocol::H2c => http::Version::HTTP_2,
        // Opaque TCP never gets here.
        AppProtocol::Http1 | AppProtocol::Tcp => http::Version::HTTP_11,
    };
    if let Some(authority) = authority
        && !parts.headers.contains_key(http::header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(http::header::HOST, host);
    }
    strip_identity_headers(&mut parts.headers, &config.strip_headers);
    remove_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(http::header::UPGRADE, protocol.clone());
    }
    if let Some(xfcc) = &peer.xfcc {
        parts.headers.insert(XFCC, xfcc.clone());
    }
    let body = match config.limits.max_body_bytes {
        Some(max) => {
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|len| len > max) {
                tracing::info!(target: "zt::access", peer = %peer.name, %method, path, status = 413, "body over the limit");
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "zt proxy: request body too large\n",
                );
            }
            let limit = usize::try_from(max).unwrap_or(usize::MAX);
            http_body_util::Limited::new(body, limit).boxed()
        }
        None => body.map_err(Into::into).boxed(),
    };
    let response = client.request(Request::from_parts(parts, body)).await;
    match response {
        Ok(mut response) => {
            let status = response.status();
            tracing::info!(target: "zt::access", peer = %peer.name, addr = %peer.addr, %method, path, status = status.as_u16());
            let switching = status == StatusCode::SWITCHING_PROTOCOLS;
            let app_upgrade = response.headers().get(http::header::UPGRADE).cloned();
            if let (true, Some(client_side)) = (switching, client_side) {
                let app_side = hyper::upgrade::on(&mut response);
                tokio::spawn(splice(
                    client_side,
                    app_side,
                    peer.name.clone(),
                    peer.revocation.clone(),
                    peer.metrics.clone(),
                ));
            }
            let (mut parts, body) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            if let (true, Some(protocol)) = (switching, app_upgrade) {
                parts
                    .headers
                    .insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(http::header::UPGRADE, protocol);
            }
            Response::from_parts(parts, body.map_err(Into::into).boxed())
        }
        Err(e) => {
            tracing::warn!(target: "zt::access", peer = %peer.name, %method, path, status = 502, error = %e, "app unreachable");
            plain(StatusCode::BAD_GATEWAY, "zt proxy: the app did not answer\n")
        }
    }
}

/// The request's method checked and its target normalized, or why it is refused.
fn authorization_target(request: &Request<Incoming>) -> Result<zt_policy::normalize::Target, String> {
    zt_policy::normalize::method(request.method().as_str())?;
    let raw = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    zt_policy::normalize::target(raw)
}

/// The request as policies see it.
fn policy_request(request: &Request<Incoming>, peer: &Peer, path: &str) -> zt_policy::Request {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut headers = std::collections::BTreeMap::new();
    for (name, value) in request.headers() {
        if let Ok(value) = value.to_str() {
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v: &mut String| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_owned());
        }
    }
    peer.policy_request(Some(zt_policy::request::Http {
        method: request.method().as_str().to_owned(),
        path: path.to_owned(),
        host,
        headers,
        auth: None,
    }))
}

impl Peer {
    /// A request (or, without `http`, a TCP connection) from this peer as
    /// policies see it. The destination's namespace and labels are the proxy's
    /// own, applied when its policies were chosen.
    pub(crate) fn policy_request(&self, http: Option<zt_policy::request::Http>) -> zt_policy::Request {
        zt_policy::Request {
            source: zt_policy::request::Source {
                principal: self.xfcc.is_some().then(|| self.name.clone()),
                namespace: None,
                ip: Some(self.addr.ip()),
            },
            destination: zt_policy::request::Destination {
                namespace: String::new(),
                labels: Default::default(),
                port: Some(self.local.port()),
                ip: Some(self.local.ip()),
            },
            protocol: match http {
                Some(_) => zt_policy::request::Protocol::Http,
                None => zt_policy::request::Protocol::Tcp,
            },
            request: http,
            connection: None,
        }
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to: `Connection: upgrade`
/// and an `Upgrade` header.
fn upgrade_protocol(request: &Request<Incoming>) -> Option<HeaderValue> {
    let asks = request
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = request.headers().get(http::header::UPGRADE)?;
    (asks && request.version() == http::Version::HTTP_11).then(|| protocol.clone())
}

/// Copies bytes both ways between the upgraded client and app connections, until
/// either closes or the peer's SVID is revoked.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    app: hyper::upgrade::OnUpgrade,
    peer: String,
    revocation: Option<Revocation>,
    metrics: Arc<Metrics>,
) {
    let (client, app) = match tokio::try_join!(client, app) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut app) => {
            if let Err(e) = copied {
                tracing::debug!(%peer, error = %e, "upgraded connection ended");
            }
        }
        () = async {
            match revocation {
                Some(mut revocation) => revocation.revoked().await,
                None => std::future::pending().await,
            }
        } => {
            metrics.revoked_connections.inc();
            tracing::info!(%peer, "SVID revoked: upgraded connection closed");
        }
    }
}

/// Removes every header a client could use to claim an identity: XFCC itself and
/// the configured ones (`X-Client-CN`, …), each in all its occurrences.
pub fn strip_identity_headers(headers: &mut HeaderMap, configured: &[HeaderName]) {
    headers.remove(XFCC);
    for name in configured {
        headers.remove(name);
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the Connection header names
/// apply to one connection only: they are not forwarded. `TE: trailers` is kept:
/// it says the client takes trailers, which gRPC needs end to end.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let trailers = headers.get(http::header::TE).is_some_and(|te| te == "trailers");
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    if trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_hop_by_hop_headers_do_not_reach_the_app() {
        let mut headers = HeaderMap::new();
        headers.append(XFCC, HeaderValue::from_static("URI=spiffe://example.org/admin"));
        headers.append(XFCC, HeaderValue::from_static("URI=spiffe://example.org/root"));
        headers.insert("x-client-cn", HeaderValue::from_static("admin"));
        headers.insert("connection", HeaderValue::from_static("keep-alive, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_identity_headers(&mut headers, &[HeaderName::from_static("x-client-cn")]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("accept"));
    }
}
