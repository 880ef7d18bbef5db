//! Forwarding one request to the app: its head made safe ([`head`]), decided by
//! the policies, the verified identity added (`x-forwarded-client-cert`),
//! hop-by-hop headers dropped, bodies limited, allowed upgrades spliced.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper_util::rt::TokioIo;

use crate::admin::Metrics;
use crate::head;
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
    // The head as the app will get it; the policies decide on exactly that.
    let admitted = match head::admit(&mut request, &config.head) {
        Ok(admitted) => admitted,
        Err(refused) => {
            tracing::info!(target: "zt::access", peer = %peer.name, %method, path, status = refused.status.as_u16(), reason = %refused.reason, "malformed request refused");
            peer.metrics.refuse(refusal_label(refused.status));
            return plain(refused.status, "zt proxy: malformed request\n");
        }
    };
    // Authorization: the request normalized, decided by the policies, and the
    // normalized path is what the app receives.
    let mut normalized = None;
    if let Some(authz) = &config.authz {
        let target = match authorization_target(&request, config.head.path_params) {
            Ok(target) => target,
            Err(why) => {
                tracing::info!(target: "zt::access", peer = %peer.name, %method, path, status = 400, reason = %why, "malformed request refused");
                peer.metrics.refuse("malformed_request");
                return plain(StatusCode::BAD_REQUEST, "zt proxy: malformed request\n");
            }
        };
        // The query rides along for CUSTOM providers; policies match the path only.
        let policy_request = policy_request(&request, peer, &admitted.host, &target.path_and_query());
        if !authz.authorize(&policy_request).await {
            return plain(StatusCode::FORBIDDEN, "RBAC: access denied\n");
        }
        // The app gets the path the policies matched, or nothing at all.
        match http::uri::PathAndQuery::try_from(target.path_and_query()) {
            Ok(path_and_query) => normalized = Some(path_and_query),
            Err(_) => return plain(StatusCode::BAD_REQUEST, "zt proxy: malformed request\n"),
        }
    }
    // An HTTP/1.1 upgrade the head allows (WebSocket): the Upgrade and
    // Connection headers go to the app, and after its 101 the two connections
    // are spliced.
    let upgrade = admitted.upgrade;
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTP);
    // An HTTP/1.1 app reads the host from Host (set by admit); an h2c app from
    // :authority, which is then the host and the only one.
    target.authority = match config.app_protocol {
        AppProtocol::H2c => {
            parts.headers.remove(http::header::HOST);
            http::uri::Authority::try_from(admitted.host.as_str()).ok()
        }
        AppProtocol::Http1 | AppProtocol::Tcp => Some(app.clone()),
    };
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
    // An HTTP/2 caller's :authority is the Host an HTTP/1.1 app gets (admit
    // set it).
    parts.version = match config.app_protocol {
        AppProtocol::H2c => http::Version::HTTP_2,
        // Opaque TCP never gets here.
        AppProtocol::Http1 | AppProtocol::Tcp => http::Version::HTTP_11,
    };
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
    // A body of unknown length is sent chunked whatever the method: left to
    // itself, the client would drop a GET's body without a word.
    if parts.version == http::Version::HTTP_11 && !body.is_end_stream() && body.size_hint().exact().is_none()
    {
        parts.headers.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
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
            let switching = status == StatusCode::SWITCHING_PROTOCOLS;
            if switching && client_side.is_none() {
                // The app switched protocols it was never asked to: nothing
                // authorized what would follow.
                tracing::warn!(target: "zt::access", peer = %peer.name, %method, path, status = 502, "the app answered 101 to a request that asked no upgrade");
                return plain(StatusCode::BAD_GATEWAY, "zt proxy: the app did not answer\n");
            }
            tracing::info!(target: "zt::access", peer = %peer.name, addr = %peer.addr, %method, path, status = status.as_u16());
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
        Err(e) if is_over_body_limit(&e) => {
            // The app saw a chunked body cut short, never its last chunk: it
            // cannot take it for a whole one.
            tracing::info!(target: "zt::access", peer = %peer.name, %method, path, status = 413, "body over the limit");
            plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "zt proxy: request body too large\n",
            )
        }
        Err(e) => {
            tracing::warn!(target: "zt::access", peer = %peer.name, %method, path, status = 502, error = %e, "app unreachable");
            plain(StatusCode::BAD_GATEWAY, "zt proxy: the app did not answer\n")
        }
    }
}

/// Whether a failed exchange with the app was the request body going over
/// `--max-request-body`.
fn is_over_body_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The refusal metric's label for a status `head::admit` answered with.
fn refusal_label(status: StatusCode) -> &'static str {
    match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        _ => "malformed_request",
    }
}

/// The request's method checked and its target normalized, or why it is refused.
fn authorization_target(
    request: &Request<Incoming>,
    params: zt_policy::normalize::PathParams,
) -> Result<zt_policy::normalize::Target, String> {
    zt_policy::normalize::method(request.method().as_str())?;
    let raw = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    zt_policy::normalize::target_with(raw, params)
}

/// The request as policies see it: the head the app gets.
fn policy_request(request: &Request<Incoming>, peer: &Peer, host: &str, path: &str) -> zt_policy::Request {
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
        host: host.to_owned(),
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
    fn hop_by_hop_headers_do_not_reach_the_app() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-secret-hop") && !headers.contains_key("connection"));
        assert!(headers.contains_key("accept"));
    }
}
