//! Inbound: mTLS in, plaintext HTTP to the local app.
//!
//! Every connection must complete a TLS handshake (1.3 unless 1.2 is asked for)
//! with a client X.509-SVID that verifies against the current bundle; the peer's
//! SPIFFE ID must be on the allow-list. Each request then goes to the app with
//! identity headers the client may have sent removed, and the verified identity
//! added as `x-forwarded-client-cert` (`By=…;Hash=…;URI=…`, as Envoy writes it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use zt_identity::SpiffeId;
use zt_tls::{PeerMatcher, TlsVersions};

use crate::admin::{Metrics, Status, Transport};
use crate::identity::{Identity, IdentityWatch};
use crate::peers::AllowList;

/// The header the app reads the caller's identity from.
pub const XFCC: &str = "x-forwarded-client-cert";
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the inbound side runs.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Where the app listens (plaintext, loopback).
    pub app: SocketAddr,
    /// Who may connect.
    pub allow: AllowList,
    /// Headers removed from every request before the app sees it, besides XFCC.
    pub strip_headers: Vec<HeaderName>,
    /// TLS 1.3 only, or 1.2 as well.
    pub versions: TlsVersions,
    /// What the app speaks.
    pub app_protocol: AppProtocol,
    /// Limits that protect the proxy and the app from one client.
    pub limits: Limits,
}

/// Limits per connection and request; a client that breaks one gets the HTTP
/// status for it, or its connection closed, and nobody else notices.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open inbound connections at most; more are closed at accept.
    pub max_connections: usize,
    /// Request headers at most (HTTP/1.1), else 431.
    pub max_headers: usize,
    /// Bytes of request head at most, else 431.
    pub max_header_bytes: usize,
    /// A request's head must arrive within this (slowloris; also the idle
    /// keep-alive limit between requests), else the connection is closed.
    pub header_timeout: Duration,
    /// Request body bytes at most, if set, else 413.
    pub max_body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            max_body_bytes: None,
        }
    }
}

/// The protocol between the proxy and the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// HTTP/1.1 (any caller's HTTP/2 is translated).
    #[default]
    Http1,
    /// HTTP/2 in cleartext, with prior knowledge: gRPC apps.
    H2c,
}

/// Errors of bodies in either direction.
type BodyError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BodyError>;
type AppClient = Client<HttpConnector, ProxyBody>;

/// Serves `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    identity: IdentityWatch,
    config: InboundConfig,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    let client: AppClient = Client::builder(TokioExecutor::new())
        .http2_only(config.app_protocol == AppProtocol::H2c)
        .build_http();
    let mut acceptors = Acceptors::new(identity, config.versions);
    let slots = Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let (tcp, peer_addr) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "inbound accept failed");
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refuse("connection_limit");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Some((acceptor, own)) = acceptors.current() else {
            tracing::warn!(peer = %peer_addr, "refused: no SVID yet");
            metrics.refuse("no_svid_yet");
            continue;
        };
        let context = Arc::new(Context {
            own,
            config: config.clone(),
            client: client.clone(),
            metrics: metrics.clone(),
        });
        let updates = acceptors.identity.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(reason) = connection(tcp, peer_addr, acceptor, updates, context).await {
                tracing::info!(peer = %peer_addr, reason, "inbound connection refused");
            }
        });
    }
}

/// The TLS acceptor of the current identity, rebuilt when it changes.
struct Acceptors {
    identity: IdentityWatch,
    versions: TlsVersions,
    current: Option<(TlsAcceptor, Arc<Identity>)>,
}

impl Acceptors {
    fn new(identity: IdentityWatch, versions: TlsVersions) -> Self {
        Self {
            identity,
            versions,
            current: None,
        }
    }

    fn current(&mut self) -> Option<(TlsAcceptor, Arc<Identity>)> {
        if self.identity.has_changed().unwrap_or(false) || self.current.is_none() {
            let identity = self.identity.borrow_and_update().clone()?;
            match build_acceptor(&identity, self.versions) {
                Ok(acceptor) => self.current = Some((acceptor, identity)),
                Err(e) => tracing::error!(error = %e, "could not build the TLS configuration"),
            }
        }
        self.current.clone()
    }
}

fn build_acceptor(identity: &Identity, versions: TlsVersions) -> Result<TlsAcceptor, zt_tls::TlsConfigError> {
    let mut config = zt_tls::server_config(
        identity.chain.clone(),
        identity.key.clone_key(),
        identity.bundles.clone(),
        PeerMatcher::Any,
        versions,
    )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What every connection of one listener shares.
struct Context {
    own: Arc<Identity>,
    config: Arc<InboundConfig>,
    client: AppClient,
    metrics: Arc<Metrics>,
}

/// One inbound connection: handshake, revocation check, then HTTP until either
/// side closes or the peer's SVID is revoked.
async fn connection(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    acceptor: TlsAcceptor,
    updates: IdentityWatch,
    context: Arc<Context>,
) -> Result<(), String> {
    let metrics = &context.metrics;
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics.refuse(handshake_failure(&e));
            return Err(format!("TLS handshake: {e}"));
        }
        Err(_) => {
            metrics.refuse("timeout");
            return Err("TLS handshake timed out".into());
        }
    };
    let (_, session) = tls.get_ref();
    let peer_id = zt_tls::peer_spiffe_id(session).ok_or("no verified peer SPIFFE ID")?;
    let leaf = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or("no peer certificate")?;
    let leaf_hash =
        zt_identity::x509::hex_compact(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf).as_ref());
    let serial = zt_identity::x509::summarize(leaf)
        .map_err(|e| e.to_string())?
        .serial;
    let mut revocation = Revocation {
        updates,
        serial: Arc::new(serial),
    };
    if revocation.is_revoked() {
        metrics.refuse("revoked");
        return Err(format!("{peer_id} presented a revoked SVID"));
    }
    metrics
        .connections
        .get_or_create(&Transport { transport: "mtls" })
        .inc();
    let allowed = context.config.allow.allows(&peer_id);
    let xfcc = HeaderValue::from_str(&format!(
        "By={};Hash={leaf_hash};URI={peer_id}",
        context.own.spiffe_id
    ))
    .map_err(|e| e.to_string())?;
    let peer = Arc::new(Peer {
        id: peer_id.clone(),
        addr: peer_addr,
        allowed,
        xfcc,
        revocation: revocation.clone(),
        metrics: metrics.clone(),
    });
    let service = {
        let context = context.clone();
        hyper::service::service_fn(move |request| {
            let (peer, context) = (peer.clone(), context.clone());
            async move {
                let started = std::time::Instant::now();
                let response = forward(request, &peer, &context.config, &context.client).await;
                let metrics = &context.metrics;
                metrics.request_seconds.observe(started.elapsed().as_secs_f64());
                metrics
                    .requests
                    .get_or_create(&Status {
                        code: response.status().as_u16(),
                    })
                    .inc();
                Ok::<_, hyper::Error>(response)
            }
        })
    };
    let limits = context.config.limits;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let served = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(served);
    tokio::select! {
        result = &mut served => result.map_err(|e| format!("HTTP: {e}")),
        () = revocation.revoked() => {
            // Dropping the connection closes it, in-flight requests included.
            metrics.revoked_connections.inc();
            Err(format!("{peer_id}'s SVID was revoked: connection closed"))
        }
    }
}

/// Watches for the revocation of one peer's SVID.
#[derive(Clone)]
struct Revocation {
    updates: IdentityWatch,
    serial: Arc<Vec<u8>>,
}

impl Revocation {
    fn is_revoked(&self) -> bool {
        self.updates
            .borrow()
            .as_ref()
            .is_some_and(|i| i.is_revoked(&self.serial))
    }

    /// Completes when the serial is revoked; never, once updates have ended
    /// (the proxy is stopping and serves its connections out).
    async fn revoked(&mut self) {
        loop {
            if self.updates.changed().await.is_err() {
                return std::future::pending().await;
            }
            if self.is_revoked() {
                return;
            }
        }
    }
}

/// The metric label of a failed handshake.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "invalid_certificate",
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. },
        ) => "not_tls",
        Some(rustls::Error::AlertReceived(_)) => "peer_alert",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        _ if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        _ => "other",
    }
}

/// A verified caller.
struct Peer {
    id: SpiffeId,
    addr: SocketAddr,
    allowed: bool,
    xfcc: HeaderValue,
    revocation: Revocation,
    metrics: Arc<Metrics>,
}

async fn forward(
    mut request: Request<Incoming>,
    peer: &Peer,
    config: &InboundConfig,
    client: &AppClient,
) -> Response<ProxyBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if !peer.allowed {
        tracing::info!(target: "zt::access", peer = %peer.id, addr = %peer.addr, %method, path, status = 403, "denied: not on the allow-list");
        return plain(
            StatusCode::FORBIDDEN,
            "zt proxy: the caller's SPIFFE ID is not allowed\n",
        );
    }
    // An HTTP/1.1 upgrade (WebSocket, …): the Upgrade and Connection headers go to
    // the app, and after its 101 the two connections are spliced.
    let upgrade = upgrade_protocol(&request);
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().map(|a| a.to_string());
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(config.app.to_string())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(uri) => uri,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "zt proxy: bad request target\n"),
    };
    // An HTTP/2 caller's :authority becomes Host for an HTTP/1.1 app.
    parts.version = match config.app_protocol {
        AppProtocol::Http1 => http::Version::HTTP_11,
        AppProtocol::H2c => http::Version::HTTP_2,
    };
    if let Some(authority) = authority
        && !parts.headers.contains_key(http::header::HOST)
        && let Ok(host) = HeaderValue::from_str(&authority)
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
    parts.headers.insert(XFCC, peer.xfcc.clone());
    let body = match config.limits.max_body_bytes {
        Some(max) => {
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|len| len > max) {
                tracing::info!(target: "zt::access", peer = %peer.id, %method, path, status = 413, "body over the limit");
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
            tracing::info!(target: "zt::access", peer = %peer.id, addr = %peer.addr, %method, path, status = status.as_u16());
            let switching = status == StatusCode::SWITCHING_PROTOCOLS;
            let app_upgrade = response.headers().get(http::header::UPGRADE).cloned();
            if let (true, Some(client_side)) = (switching, client_side) {
                let app_side = hyper::upgrade::on(&mut response);
                tokio::spawn(splice(
                    client_side,
                    app_side,
                    peer.id.clone(),
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
            tracing::warn!(target: "zt::access", peer = %peer.id, %method, path, status = 502, error = %e, "app unreachable");
            plain(StatusCode::BAD_GATEWAY, "zt proxy: the app did not answer\n")
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
    peer: SpiffeId,
    mut revocation: Revocation,
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
        () = revocation.revoked() => {
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

fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
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
