//! The TLS handshake of an inbound connection, with the proxy's current SVID:
//! TLS 1.3 (1.2 only when asked), a client SVID that verifies against the
//! bundle of its trust domain, ALPN h2 or http/1.1.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use zt_tls::{PeerMatcher, TlsVersions};

use crate::identity::{Identity, IdentityWatch};
use crate::refusal::{HandshakeFailure, Refusal};

/// How long a TLS handshake (or, in permissive mode, the first byte) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS acceptor of the current identity, rebuilt when it changes.
pub(super) struct Acceptors {
    pub(super) identity: IdentityWatch,
    versions: TlsVersions,
    current: Option<(TlsAcceptor, Arc<Identity>)>,
}

impl Acceptors {
    pub(super) fn new(identity: IdentityWatch, versions: TlsVersions) -> Self {
        Self {
            identity,
            versions,
            current: None,
        }
    }

    /// The acceptor and identity new connections get.
    pub(super) fn current(&mut self) -> Result<(TlsAcceptor, Arc<Identity>), Refusal> {
        if self.identity.has_changed().unwrap_or(false) || self.current.is_none() {
            let identity = self
                .identity
                .borrow_and_update()
                .clone()
                .ok_or(Refusal::NoSvidYet)?;
            match build(&identity, self.versions) {
                Ok(acceptor) => self.current = Some((acceptor, identity)),
                Err(e) => tracing::error!(error = %e, "could not build the TLS configuration"),
            }
        }
        self.current.clone().ok_or(Refusal::NoSvidYet)
    }
}

fn build(identity: &Identity, versions: TlsVersions) -> Result<TlsAcceptor, zt_tls::TlsConfigError> {
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

/// Completes the handshake within [`HANDSHAKE_TIMEOUT`].
pub(super) async fn accept(acceptor: &TlsAcceptor, tcp: TcpStream) -> Result<TlsStream<TcpStream>, Refusal> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(Refusal::Handshake(
            HandshakeFailure::of(&e),
            zt_tls::handshake_error_text(&e),
        )),
        Err(_) => Err(Refusal::Timeout),
    }
}

/// Whether the client's first byte opens a TLS handshake record (0x16), for
/// permissive mode; `Ok(None)` when it closed before sending anything.
pub(super) async fn starts_with_tls(tcp: &TcpStream) -> Result<Option<bool>, Refusal> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) => Ok(Some(first[0] == 0x16)),
        Ok(Err(e)) => Err(Refusal::Handshake(HandshakeFailure::Eof, e.to_string())),
        Err(_) => Err(Refusal::Timeout),
    }
}
