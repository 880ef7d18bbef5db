//! Inbound: mTLS in, plaintext HTTP to the local app.
//!
//! Every connection must complete a TLS handshake (1.3 unless 1.2 is asked for)
//! with a client X.509-SVID that verifies against the current bundle; the peer's
//! SPIFFE ID must be on the allow-list. Each request then goes to the app with
//! identity headers the client may have sent removed, and the verified identity
//! added as `x-forwarded-client-cert` (`By=…;Hash=…;URI=…`, as Envoy writes it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http_body_util::combinators::BoxBody;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use zt_tls::{PeerMatcher, TlsVersions};

use crate::admin::{Metrics, Status, Transport};
use crate::forward::{Peer, forward};
use crate::identity::{Identity, IdentityWatch, PeerSvid};
use crate::peers::AllowList;

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the inbound side runs.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Where the app listens (plaintext, loopback).
    pub app: SocketAddr,
    /// Who may connect.
    pub allow: AllowList,
    /// How request heads are made safe for the app: identity and routing
    /// headers, underscores, path parameters, upgrades.
    pub head: crate::head::HeadRules,
    /// What the app speaks.
    pub app_protocol: AppProtocol,
    /// Whether plaintext is accepted too.
    pub mode: Mode,
    /// Limits that protect the proxy and the app from one client.
    pub limits: Limits,
    /// Authorization policies deciding every request, if configured.
    pub authz: Option<Arc<crate::authz::Authorizer>>,
}

/// Limits per connection and request; a client that breaks one gets the HTTP
/// status for it, or its connection closed, and nobody else notices.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open inbound connections at most; more are closed at accept.
    pub max_connections: usize,
    /// Open inbound connections from one source address at most; more are
    /// closed at accept.
    pub max_connections_per_source: usize,
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
            max_connections_per_source: 1_000,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            max_body_bytes: None,
        }
    }
}

/// An inbound port of its own for an app port that speaks something other than
/// HTTP: `LISTEN,APP`, relayed as opaque TCP (`--tcp-inbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPort {
    /// The mTLS listener.
    pub listen: SocketAddr,
    /// The app's plaintext port.
    pub app: SocketAddr,
}

impl std::str::FromStr for TcpPort {
    type Err = String;

    /// `LISTEN,APP`, e.g. `0.0.0.0:15007,127.0.0.1:5432`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listen, app) = s
            .split_once(',')
            .ok_or_else(|| format!("{s:?}: expected LISTEN,APP"))?;
        let address = |part: &str| {
            part.parse::<SocketAddr>()
                .map_err(|_| format!("{s:?}: {part:?} is not IP:PORT"))
        };
        Ok(Self {
            listen: address(listen)?,
            app: address(app)?,
        })
    }
}

/// Istio's PeerAuthentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// mTLS only.
    #[default]
    Strict,
    /// mTLS, and plaintext on the same port (told apart by the first byte: a TLS
    /// handshake record starts with 0x16), counted and logged: the migration path,
    /// watch who still talks plaintext before turning strict on.
    Permissive,
}

/// The protocol between the proxy and the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// HTTP/1.1 (any caller's HTTP/2 is translated).
    #[default]
    Http1,
    /// HTTP/2 in cleartext, with prior knowledge: gRPC apps.
    H2c,
    /// Opaque TCP: after the handshake (and the allow-list), bytes are relayed
    /// as they are; no headers, so the app learns nothing of the caller.
    Tcp,
}

/// Errors of bodies in either direction.
type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type ProxyBody = BoxBody<Bytes, BodyError>;
pub(crate) type AppClient = Client<AppConnector, ProxyBody>;

/// Dials the app whatever a request's URI names: the URI's authority is the
/// caller's (an h2c app reads `:authority` as its host), the address is the
/// app's.
#[derive(Clone)]
pub(crate) struct AppConnector {
    app: SocketAddr,
}

impl tower_service::Service<http::Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let app = self.app;
        Box::pin(async move {
            let tcp = TcpStream::connect(app).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tcp))
        })
    }
}

/// Serves `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    identity: IdentityWatch,
    config: InboundConfig,
    versions: TlsVersions,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    let client: AppClient = Client::builder(TokioExecutor::new())
        .http2_only(config.app_protocol == AppProtocol::H2c)
        .build(AppConnector { app: config.app });
    let mut acceptors = Acceptors::new(identity, versions);
    // A socket address always forms a valid authority.
    let Ok(app) = http::uri::Authority::try_from(config.app.to_string()) else {
        tracing::error!(app = %config.app, "the app address is not a URI authority");
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections));
    let per_source = SourceSlots::new(config.limits.max_connections_per_source);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let (tcp, peer_addr) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "inbound accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refuse("connection_limit");
            continue;
        };
        let Some(source_slot) = per_source.acquire(peer_addr.ip()) else {
            metrics.refuse("source_connection_limit");
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
            app: app.clone(),
            client: client.clone(),
            metrics: metrics.clone(),
        });
        let updates = acceptors.identity.clone();
        tokio::spawn(async move {
            let _slots = (slot, source_slot);
            if let Err(reason) = connection(tcp, peer_addr, acceptor, updates, context).await {
                tracing::info!(peer = %peer_addr, reason, "inbound connection refused");
            }
        });
    }
}

/// Open connections per source address, each held by a [`SourceSlot`].
#[derive(Clone)]
struct SourceSlots {
    max: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl SourceSlots {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, unless it holds `max`.
    fn acquire(&self, ip: std::net::IpAddr) -> Option<SourceSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            slots: self.clone(),
            ip,
        })
    }
}

/// One open connection from a source; released on drop.
struct SourceSlot {
    slots: SourceSlots,
    ip: std::net::IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let std::collections::hash_map::Entry::Occupied(mut entry) = open.entry(self.ip) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
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
    /// The app's address as a URI authority, made once.
    app: http::uri::Authority,
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
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    if context.config.mode == Mode::Permissive && !starts_with_tls(&tcp, metrics).await? {
        metrics
            .connections
            .get_or_create(&Transport {
                transport: "plaintext",
            })
            .inc();
        tracing::warn!(target: "zt::access", peer = %peer_addr, "plaintext connection accepted (permissive mode)");
        let peer = Arc::new(Peer {
            name: "plaintext".into(),
            addr: peer_addr,
            local,
            allowed: true,
            xfcc: None,
            revocation: None,
            metrics: metrics.clone(),
        });
        return serve_connection(tcp, peer, context, None).await;
    }
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics.refuse(handshake_failure(&e));
            return Err(format!("TLS handshake: {}", zt_tls::handshake_error_text(&e)));
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
    let summary = zt_identity::x509::summarize(leaf).map_err(|e| e.to_string())?;
    let revocation = Revocation {
        updates,
        peer: Arc::new(PeerSvid {
            serial: summary.serial,
            spiffe_id: peer_id.to_string(),
            not_before: summary.not_before,
        }),
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
        name: peer_id.to_string(),
        addr: peer_addr,
        local,
        allowed,
        xfcc: Some(xfcc),
        revocation: Some(revocation.clone()),
        metrics: metrics.clone(),
    });
    serve_connection(tls, peer, context, Some(revocation)).await
}

/// The app's protocol decides: HTTP, or opaque TCP.
async fn serve_connection<IO>(
    io: IO,
    peer: Arc<Peer>,
    context: Arc<Context>,
    revocation: Option<Revocation>,
) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match context.config.app_protocol {
        AppProtocol::Tcp => serve_tcp(io, peer, context, revocation).await,
        AppProtocol::Http1 | AppProtocol::H2c => {
            serve_http(TokioIo::new(io), peer, context, revocation).await
        }
    }
}

/// Opaque TCP: an allowed peer's bytes go to the app and back until either side
/// closes or, for an mTLS peer, its SVID is revoked.
async fn serve_tcp<IO>(
    mut io: IO,
    peer: Arc<Peer>,
    context: Arc<Context>,
    revocation: Option<Revocation>,
) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let metrics = &context.metrics;
    if !peer.allowed {
        metrics.refuse("not_allowed");
        tracing::info!(target: "zt::access", peer = %peer.name, addr = %peer.addr, "denied: not on the allow-list (tcp)");
        return Err(format!("{} is not on the allow-list", peer.name));
    }
    if let Some(authz) = &context.config.authz
        && !authz.authorize(&peer.policy_request(None)).await
    {
        metrics.refuse("denied_by_policy");
        return Err(format!("{}: denied by policy (tcp)", peer.name));
    }
    let mut app = TcpStream::connect(context.config.app)
        .await
        .map_err(|e| format!("app {}: {e}", context.config.app))?;
    let _ = app.set_nodelay(true);
    tracing::info!(target: "zt::access", peer = %peer.name, addr = %peer.addr, "tcp connection to the app");
    let relay = tokio::io::copy_bidirectional(&mut io, &mut app);
    let revoked = async {
        match revocation {
            Some(mut revocation) => revocation.revoked().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        copied = relay => copied.map(drop).map_err(|e| format!("tcp relay: {e}")),
        () = revoked => {
            metrics.revoked_connections.inc();
            Err(format!("{}'s SVID was revoked: connection closed", peer.name))
        }
    }
}

/// Whether the client's first byte opens a TLS handshake record.
async fn starts_with_tls(tcp: &TcpStream, metrics: &Metrics) -> Result<bool, String> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(0)) => Err("closed before sending anything".into()),
        Ok(Ok(_)) => Ok(first[0] == 0x16),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            metrics.refuse("timeout");
            Err("sent nothing".into())
        }
    }
}

/// HTTP on an established connection until either side closes or, for an mTLS
/// peer, its SVID is revoked.
async fn serve_http<IO>(
    io: TokioIo<IO>,
    peer: Arc<Peer>,
    context: Arc<Context>,
    revocation: Option<Revocation>,
) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let name = peer.name.clone();
    let service = {
        let context = context.clone();
        hyper::service::service_fn(move |request| {
            let (peer, context) = (peer.clone(), context.clone());
            async move {
                let started = std::time::Instant::now();
                let response = forward(request, &peer, &context.config, &context.app, &context.client).await;
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
    let served = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(served);
    let Some(mut revocation) = revocation else {
        return served.await.map_err(|e| format!("HTTP: {e}"));
    };
    tokio::select! {
        result = &mut served => result.map_err(|e| format!("HTTP: {e}")),
        () = revocation.revoked() => {
            // Dropping the connection closes it, in-flight requests included.
            context.metrics.revoked_connections.inc();
            Err(format!("{name}'s SVID was revoked: connection closed"))
        }
    }
}

/// Watches for the revocation of one peer's SVID.
#[derive(Clone)]
pub(crate) struct Revocation {
    updates: IdentityWatch,
    peer: Arc<PeerSvid>,
}

impl Revocation {
    fn is_revoked(&self) -> bool {
        self.updates
            .borrow()
            .as_ref()
            .is_some_and(|i| i.is_revoked(&self.peer))
    }

    /// Completes when the serial is revoked; never, once updates have ended
    /// (the proxy is stopping and serves its connections out).
    pub(crate) async fn revoked(&mut self) {
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
