//! The gateway's outgoing TLS connections, pooled by hyper's client: to the
//! OpenID Provider (web PKI: its host name against a CA bundle) and to each
//! upstream (mTLS with the gateway's own SVID, the upstream's SPIFFE ID
//! required, the configuration rebuilt when the SVID rotates).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use zt_identity::SpiffeId;
use zt_proxy::identity::{Identity, IdentityWatch};
use zt_tls::{PeerMatcher, TlsVersions};

/// How long connecting and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a connection goes and how it is secured.
#[derive(Clone)]
pub enum Connector {
    /// A web server named by the request's URI (`https://host:port`).
    Web(Arc<ClientConfig>),
    /// A mesh upstream at a fixed address, presenting `expect`.
    Mesh(Arc<MeshTarget>),
}

/// An upstream and the TLS configuration for its current SVID.
pub struct MeshTarget {
    addr: String,
    expect: SpiffeId,
    identity: IdentityWatch,
    /// The configuration for the identity it was built from.
    config: Mutex<Option<(Arc<Identity>, Arc<ClientConfig>)>>,
}

impl MeshTarget {
    /// `addr` must present `expect`; the gateway presents its SVID from `identity`.
    pub fn new(addr: String, expect: SpiffeId, identity: IdentityWatch) -> Self {
        Self {
            addr,
            expect,
            identity,
            config: Mutex::new(None),
        }
    }

    fn config(&self) -> std::io::Result<Arc<ClientConfig>> {
        let current = self
            .identity
            .borrow()
            .clone()
            .ok_or_else(|| std::io::Error::other("the gateway has no SVID yet"))?;
        let mut cached = self
            .config
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        if let Some((identity, config)) = cached.as_ref()
            && Arc::ptr_eq(identity, &current)
        {
            return Ok(config.clone());
        }
        let config = Arc::new(
            zt_tls::client_config(
                current.chain.clone(),
                current.key.clone_key(),
                current.bundles.clone(),
                PeerMatcher::OneOf(vec![self.expect.clone()]),
                TlsVersions::Tls13,
            )
            .map_err(std::io::Error::other)?,
        );
        *cached = Some((current, config.clone()));
        Ok(config)
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Tls>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (addr, name, config) = match &this {
                Connector::Web(config) => {
                    let host = uri
                        .host()
                        .ok_or_else(|| std::io::Error::other("no host in the URL"))?
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned();
                    let port = uri.port_u16().unwrap_or(443);
                    let name = ServerName::try_from(host.clone()).map_err(std::io::Error::other)?;
                    (format!("{host}:{port}"), name, config.clone())
                }
                Connector::Mesh(target) => {
                    // The name is not checked (the verifier checks the SPIFFE
                    // ID); it is sent as SNI.
                    let name = ServerName::try_from(target.expect.trust_domain().name().to_owned())
                        .map_err(std::io::Error::other)?;
                    (target.addr.clone(), name, target.config()?)
                }
            };
            let connect = async {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                TlsConnector::from(config).connect(name, tcp).await
            };
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{addr}: connect timed out"))
                })?
                .map_err(|e| {
                    std::io::Error::other(format!("{addr}: {}", zt_tls::handshake_error_text(&e)))
                })?;
            Ok(TokioIo::new(Tls(tls)))
        })
    }
}

/// A client TLS stream hyper's pool can hold.
pub struct Tls(TlsStream<TcpStream>);

impl Connection for Tls {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
