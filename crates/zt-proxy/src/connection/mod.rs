//! An inbound connection, stage by stage: **accept** → **limits** (open
//! connections in all and per source) → **handshake** (mTLS with the current
//! SVID; plaintext too in permissive mode, plaintext only in DISABLE — the
//! port's mode read per connection, [`InboundConfig::mode_for`]) → **peer identity** (the verified
//! SPIFFE ID, the allow-list, the identity headers) → **revocation watch**
//! (a revoked SVID cuts the connection) → HTTP, each request through
//! [`crate::request`], or opaque TCP ([`tcp`]). Each connection runs in a
//! tracing span that carries its peer's address and SPIFFE ID; a refused one
//! is counted and logged once, here.

mod handshake;
pub mod limits;
mod peer;
mod revocation;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;
use zt_tls::TlsVersions;

pub(crate) use self::peer::Peer;
pub use self::peer::{Field, IdentityHeader, XFCC};
pub(crate) use self::revocation::Revocation;
use crate::admin::{Metrics, Transport};
use crate::identity::{Identity, IdentityWatch, PeerSvid};
use crate::inbound::{AppProtocol, InboundConfig, Mode};
use crate::refusal::Refusal;
use crate::request::send::App;

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What every connection of one listener shares.
pub(crate) struct Context {
    pub(crate) config: InboundConfig,
    /// The app, and the client that reaches it.
    pub(crate) app: App,
    pub(crate) metrics: Arc<Metrics>,
}

/// The connection limits of one inbound address, shared by every thread
/// that accepts on it.
pub(crate) type Slots = Arc<limits::Slots>;

/// The connection slots for `config`'s limits.
pub(crate) fn slots(config: &InboundConfig) -> Slots {
    Arc::new(limits::Slots::new(
        config.limits.max_connections,
        config.limits.max_connections_per_source,
    ))
}

/// Serves `listener` until `stop`: the connections it accepts, their requests
/// and their app connections all on the calling runtime.
pub(crate) async fn serve(
    listener: TcpListener,
    identity: IdentityWatch,
    config: InboundConfig,
    versions: TlsVersions,
    metrics: Arc<Metrics>,
    slots: Slots,
    mut stop: watch::Receiver<bool>,
) {
    let context = Arc::new(Context {
        app: App::new(config.app, config.app_protocol),
        config,
        metrics,
    });
    let mut acceptors = handshake::Acceptors::new(identity, versions);
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
        let admitted = slots
            .acquire(peer_addr.ip())
            .and_then(|held| Ok((held, acceptors.current()?)));
        let (held, (acceptor, own)) = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => {
                refused(&context.metrics, peer_addr, &refusal);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (updates, context) = (acceptors.identity.clone(), context.clone());
        let span = tracing::info_span!("connection", peer = %peer_addr, spiffe_id = tracing::field::Empty);
        tokio::spawn(
            async move {
                let _held = held;
                if let Err(refusal) = connection(tcp, peer_addr, acceptor, own, updates, &context).await {
                    refused(&context.metrics, peer_addr, &refusal);
                }
            }
            .instrument(span),
        );
    }
}

/// Counts and logs a refused connection.
fn refused(metrics: &Metrics, peer: SocketAddr, refusal: &Refusal) {
    metrics.refuse(refusal.label());
    tracing::info!(%peer, reason = %refusal, "inbound connection refused");
}

/// [`refused`] for a connection still open, called before it is closed so
/// that a client that sees the close can already read why in the metrics;
/// `Ok`: the refusal is recorded.
fn refused_open(metrics: &Metrics, peer: SocketAddr, refusal: &Refusal) -> Result<(), Refusal> {
    refused(metrics, peer, refusal);
    Ok(())
}

/// One inbound connection: handshake, the peer's identity and revocation
/// check, then its protocol until either side closes or the peer's SVID is
/// revoked.
async fn connection(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    acceptor: TlsAcceptor,
    own: Arc<Identity>,
    updates: IdentityWatch,
    context: &Arc<Context>,
) -> Result<(), Refusal> {
    let metrics = &context.metrics;
    let local = tcp
        .local_addr()
        .map_err(|e| Refusal::Handshake(crate::refusal::HandshakeFailure::Other, e.to_string()))?;
    match context.config.mode_for(local.port()) {
        Mode::Strict => {}
        Mode::Permissive => match handshake::starts_with_tls(&tcp).await? {
            None => return Ok(()),
            Some(true) => {}
            Some(false) => return plaintext(tcp, peer_addr, local, Mode::Permissive, context).await,
        },
        // No TLS here: a ClientHello is just bytes to the app's protocol.
        Mode::Disable => return plaintext(tcp, peer_addr, local, Mode::Disable, context).await,
    }
    let tls = handshake::accept(&acceptor, tcp).await?;
    let (_, session) = tls.get_ref();
    let unverified =
        |what: &str| Refusal::Handshake(crate::refusal::HandshakeFailure::InvalidCertificate, what.into());
    let peer_id = zt_tls::peer_spiffe_id(session).ok_or_else(|| unverified("no verified peer SPIFFE ID"))?;
    tracing::Span::current().record("spiffe_id", tracing::field::display(&peer_id));
    let leaf = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| unverified("no peer certificate"))?;
    let summary = zt_identity::x509::summarize(leaf).map_err(|e| unverified(&e.to_string()))?;
    let revocation = Revocation::new(
        updates,
        PeerSvid {
            serial: summary.serial,
            spiffe_id: peer_id.to_string(),
            not_before: summary.not_before,
        },
    );
    if revocation.is_revoked() {
        return refused_open(&context.metrics, peer_addr, &Refusal::Revoked);
    }
    // A device of the trust domain holds an SVID from the same CA, yet it is
    // a person's machine: it reaches services through zt gateway, where the
    // person and the device's live tier are checked, never directly.
    if peer_id.trust_domain() == own.spiffe_id.trust_domain() && peer_id.is_device() {
        return refused_open(&context.metrics, peer_addr, &Refusal::DeviceCertificate);
    }
    metrics
        .connections
        .get_or_create(&Transport { transport: "mtls" })
        .inc();
    let leaf_hash =
        zt_identity::x509::hex_compact(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf).as_ref());
    let peer = Peer {
        name: peer_id.to_string(),
        verified: true,
        addr: peer_addr,
        local,
        allowed: context.config.allow.allows(&peer_id),
        identity_headers: peer::identity_headers(
            &own.spiffe_id,
            &peer_id,
            &leaf_hash,
            &context.config.identity_headers,
        ),
        revocation: Some(revocation),
    };
    serve_protocol(tls, Arc::new(peer), context).await
}

/// A plaintext connection (PERMISSIVE or DISABLE), counted and logged; its
/// peer has no identity.
async fn plaintext(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    local: SocketAddr,
    mode: Mode,
    context: &Arc<Context>,
) -> Result<(), Refusal> {
    context
        .metrics
        .connections
        .get_or_create(&Transport {
            transport: "plaintext",
        })
        .inc();
    tracing::warn!(target: "zt::access", peer = %peer_addr, port = local.port(), mode = mode.as_str(), "plaintext connection accepted");
    let peer = Peer {
        name: "plaintext".into(),
        verified: false,
        addr: peer_addr,
        local,
        allowed: true,
        identity_headers: Vec::new(),
        revocation: None,
    };
    serve_protocol(tcp, Arc::new(peer), context).await
}

/// The app's protocol decides: HTTP, or opaque TCP; either ends when the
/// peer's SVID is revoked.
async fn serve_protocol<IO>(io: IO, peer: Arc<Peer>, context: &Arc<Context>) -> Result<(), Refusal>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let revoked = Revocation::of(peer.revocation.clone());
    let served = async {
        match context.config.app_protocol {
            AppProtocol::Tcp => {
                let mut io = io;
                match tcp::relay(&mut io, &peer, context).await {
                    Err(refusal) => refused_open(&context.metrics, peer.addr, &refusal),
                    relayed => relayed,
                }
            }
            AppProtocol::Http1 | AppProtocol::H2c => {
                serve_http(TokioIo::new(io), peer.clone(), context.clone()).await;
                Ok(())
            }
        }
    };
    tokio::select! {
        served = served => served,
        () = revoked => {
            // Dropping the connection closes it, in-flight requests included.
            context.metrics.revoked_connections.inc();
            tracing::info!(peer = %peer.name, "SVID was revoked: connection closed");
            Ok(())
        }
    }
}

/// An HTTP/1.1 and h2 server held to `limits`: the head's size and header
/// count, the time it may take to arrive (slowloris, idle keep-alive), h2
/// pings to find dead peers. zt gateway serves people with the same.
pub fn http_server(
    limits: &crate::inbound::Limits,
) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
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
    builder
}

/// HTTP on an established connection, each request through the request
/// stages, until either side closes.
async fn serve_http<IO>(io: TokioIo<IO>, peer: Arc<Peer>, context: Arc<Context>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = context.config.limits;
    let service = hyper::service::service_fn(move |request| {
        let (peer, context) = (peer.clone(), context.clone());
        async move { Ok::<_, hyper::Error>(crate::request::handle(request, &peer, &context).await) }
    });
    if let Err(e) = http_server(&limits)
        .serve_connection_with_upgrades(io, service)
        .await
    {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}
