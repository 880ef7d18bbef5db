//! TLS for the server's listeners (the agent API, the OpenID Provider): a
//! certificate from the trust domain's CA (an SVID such as
//! `spiffe://<td>/zt/server`, renewed at half its life and whenever the
//! authorities change) or one given in files; client SVIDs, when presented,
//! verified against the current bundle; a handshake timeout; and the verified
//! peer handed to each call as [`PeerInfo`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use zt_ca::SvidRequest;
use zt_identity::{BundleSet, SpiffeId, TrustDomain};
use zt_tls::{PeerMatcher, TlsVersions};

use crate::authority::AuthorityManager;
use crate::now;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of the server's own SVID.
const SERVER_SVID_TTL: Duration = Duration::from_secs(3600);

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The verified SPIFFE ID of the client certificate, if one was presented.
    pub spiffe_id: Option<SpiffeId>,
    /// Its serial, hex without separators.
    pub serial: Option<String>,
    /// Its notBefore, unix seconds (for revocations by SPIFFE ID).
    pub not_before: u64,
    /// The TCP peer.
    pub addr: Option<SocketAddr>,
    /// SHA-256 of the client certificate (DER), base64url: RFC 8705's
    /// `x5t#S256`, to bind tokens to it.
    pub certificate_sha256: Option<String>,
}

/// A TLS connection and who is on the other end.
pub struct TlsConn {
    /// The stream.
    pub stream: TlsStream<TcpStream>,
    /// The peer.
    pub peer: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The certificate a listener presents.
#[derive(Clone)]
pub enum ServerCertificate {
    /// An SVID from the active authority, for this path in the trust domain,
    /// with these DNS names and IP addresses.
    FromCa {
        /// The SPIFFE ID's path (`/zt/server`).
        path: &'static str,
        /// DNS names.
        dns_names: Vec<String>,
        /// IP addresses.
        ips: Vec<IpAddr>,
    },
    /// A chain and key given by the operator.
    Given {
        /// The chain, leaf first.
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        /// The key.
        key: Arc<rustls::pki_types::PrivateKeyDer<'static>>,
    },
}

/// The current TLS configuration of a listener, swapped on renewal: new
/// handshakes use the new one, established connections keep theirs.
pub struct ServerTls {
    name: &'static str,
    authorities: Arc<AuthorityManager>,
    trust_domain: TrustDomain,
    certificate: ServerCertificate,
    config: RwLock<Arc<ServerConfig>>,
    /// Issuance and expiry of the certificate in `config`.
    expires: RwLock<(u64, u64)>,
}

impl ServerTls {
    /// Builds the first configuration of the listener `name` (for logs).
    pub fn new(
        name: &'static str,
        authorities: Arc<AuthorityManager>,
        trust_domain: TrustDomain,
        certificate: ServerCertificate,
    ) -> Result<Arc<Self>, String> {
        let (config, validity) = build_config(&authorities, &trust_domain, &certificate)?;
        Ok(Arc::new(Self {
            name,
            authorities,
            trust_domain,
            certificate,
            config: RwLock::new(Arc::new(config)),
            expires: RwLock::new(validity),
        }))
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn refresh(&self) {
        match build_config(&self.authorities, &self.trust_domain, &self.certificate) {
            Ok((config, validity)) => {
                if let Ok(mut current) = self.config.write() {
                    *current = Arc::new(config);
                }
                if let Ok(mut expires) = self.expires.write() {
                    *expires = validity;
                }
            }
            Err(e) => {
                tracing::error!(listener = self.name, error = %e, "could not renew the TLS configuration")
            }
        }
    }

    /// Renews the certificate at half its life, and the trusted bundle when the
    /// authorities change, until `stop`.
    pub async fn maintain(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut authorities = self.authorities.watch();
        loop {
            let (issued, expires) = self.expires.read().map(|e| *e).unwrap_or((0, 0));
            let renew_at = issued + (expires.saturating_sub(issued)) / 2;
            let wait = Duration::from_secs(renew_at.saturating_sub(now()).max(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = authorities.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|stop| *stop) => return,
            }
            self.refresh();
        }
    }

    /// Accepts connections on `listener`, completing handshakes off the accept loop.
    pub fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        mut stop: watch::Receiver<bool>,
    ) -> mpsc::Receiver<io::Result<TlsConn>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.wait_for(|stop| *stop) => return,
                };
                let (tcp, addr) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(listener = self.name, error = %e, "accept failed");
                        continue;
                    }
                };
                // Small messages (a sync update, a signed SVID, a token) must not
                // wait for Nagle's algorithm to meet the peer's delayed ACK (~40 ms).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(listener = self.name, error = %e, "TCP_NODELAY not set");
                }
                let name = self.name;
                let acceptor = TlsAcceptor::from(self.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let peer = peer_info(&stream, addr);
                            let _ = tx.send(Ok(TlsConn { stream, peer })).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(listener = name, peer = %addr, error = %e, "handshake failed")
                        }
                        Err(_) => tracing::info!(listener = name, peer = %addr, "handshake timed out"),
                    }
                });
            }
        });
        rx
    }
}

fn peer_info(stream: &TlsStream<TcpStream>, addr: SocketAddr) -> PeerInfo {
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().and_then(|certs| certs.first());
    let summary = leaf.and_then(|leaf| zt_identity::x509::summarize(leaf).ok());
    PeerInfo {
        spiffe_id: summary.as_ref().and_then(|s| s.spiffe_id.clone().ok()),
        not_before: summary.as_ref().map_or(0, |s| s.not_before),
        serial: summary.map(|s| serial_hex(&s.serial)),
        addr: Some(addr),
        certificate_sha256: leaf.map(|leaf| zt_identity::x509::x5t_s256(leaf)),
    }
}

/// A serial as lowercase hex without separators.
pub fn serial_hex(serial: &[u8]) -> String {
    zt_identity::x509::hex_compact(serial)
}

/// The listener's certificate (a fresh SVID, or the given one) and a config
/// trusting the current bundle; with the certificate's validity.
fn build_config(
    authorities: &AuthorityManager,
    trust_domain: &TrustDomain,
    certificate: &ServerCertificate,
) -> Result<(ServerConfig, (u64, u64)), String> {
    let current = authorities.current();
    let now = now();
    let (chain, key, validity) = match certificate {
        ServerCertificate::FromCa { path, dns_names, ips } => {
            let remaining = current.active.not_after().saturating_sub(now);
            let request = SvidRequest {
                spiffe_id: SpiffeId::from_parts(trust_domain, path).map_err(|e| e.to_string())?,
                dns_names: dns_names.clone(),
                ip_addresses: ips.clone(),
                ttl: SERVER_SVID_TTL.min(Duration::from_secs(remaining)),
            };
            let svid = current
                .active
                .issue_x509_svid(&request, now)
                .map_err(|e| e.to_string())?;
            let key = zt_identity::x509::private_key_from_pem(svid.private_key_pem.as_bytes())?;
            (svid.chain, key, (now, svid.not_after))
        }
        // Nothing to renew: only the bundle, when the authorities change.
        ServerCertificate::Given { chain, key } => (chain.clone(), key.clone_key(), (now, u64::MAX / 2)),
    };
    let mut bundles = BundleSet::default();
    bundles.insert(current.bundle.clone());
    let config = zt_tls::server_config_client_optional(
        chain,
        key,
        Arc::new(bundles),
        PeerMatcher::MemberOf(trust_domain.clone()),
        TlsVersions::Tls13,
    )
    .map_err(|e| e.to_string())?;
    Ok((config, validity))
}
