//! TLS for the agent API: the server's own SVID (`spiffe://<td>/zt/server`),
//! renewed at half its life and whenever the authorities change; client SVIDs
//! verified against the current bundle; a handshake timeout; and the verified
//! peer handed to each gRPC call as [`PeerInfo`].

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

/// Who is on the other end of an agent API connection.
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
}

/// A TLS connection of the agent API.
pub struct AgentConn {
    stream: TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for AgentConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for AgentConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentConn {
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

/// The current TLS configuration of the agent API, swapped on renewal: new
/// handshakes use the new one, established connections keep theirs.
pub struct AgentTls {
    authorities: Arc<AuthorityManager>,
    trust_domain: TrustDomain,
    listen_ip: IpAddr,
    config: RwLock<Arc<ServerConfig>>,
    /// notAfter of the server SVID in `config`.
    expires: RwLock<(u64, u64)>,
}

impl AgentTls {
    /// Builds the first configuration.
    pub fn new(
        authorities: Arc<AuthorityManager>,
        trust_domain: TrustDomain,
        listen_ip: IpAddr,
    ) -> Result<Arc<Self>, String> {
        let (config, validity) = build_config(&authorities, &trust_domain, listen_ip)?;
        Ok(Arc::new(Self {
            authorities,
            trust_domain,
            listen_ip,
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
        match build_config(&self.authorities, &self.trust_domain, self.listen_ip) {
            Ok((config, validity)) => {
                if let Ok(mut current) = self.config.write() {
                    *current = Arc::new(config);
                }
                if let Ok(mut expires) = self.expires.write() {
                    *expires = validity;
                }
            }
            Err(e) => tracing::error!(error = %e, "could not renew the server SVID"),
        }
    }

    /// Renews the server SVID at half its life and when the authorities change, until `stop`.
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
    ) -> mpsc::Receiver<io::Result<AgentConn>> {
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
                        tracing::warn!(error = %e, "agent API accept failed");
                        continue;
                    }
                };
                // Small gRPC messages (a sync update, a signed SVID) must not wait for
                // Nagle's algorithm to meet the peer's delayed ACK (~40 ms).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "agent API: TCP_NODELAY not set");
                }
                let acceptor = TlsAcceptor::from(self.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let peer = peer_info(&stream, addr);
                            let _ = tx.send(Ok(AgentConn { stream, peer })).await;
                        }
                        Ok(Err(e)) => tracing::info!(peer = %addr, error = %e, "agent API handshake failed"),
                        Err(_) => tracing::info!(peer = %addr, "agent API handshake timed out"),
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
    }
}

/// A serial as lowercase hex without separators.
pub fn serial_hex(serial: &[u8]) -> String {
    zt_identity::x509::hex_compact(serial)
}

/// A server SVID from the active authority and a config trusting the current bundle.
fn build_config(
    authorities: &AuthorityManager,
    trust_domain: &TrustDomain,
    listen_ip: IpAddr,
) -> Result<(ServerConfig, (u64, u64)), String> {
    let current = authorities.current();
    let now = now();
    let remaining = current.active.not_after().saturating_sub(now);
    let request = SvidRequest {
        spiffe_id: SpiffeId::from_parts(trust_domain, "/zt/server").map_err(|e| e.to_string())?,
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![listen_ip],
        ttl: SERVER_SVID_TTL.min(Duration::from_secs(remaining)),
    };
    let svid = current
        .active
        .issue_x509_svid(&request, now)
        .map_err(|e| e.to_string())?;
    let key = zt_identity::x509::private_key_from_pem(svid.private_key_pem.as_bytes())?;
    let mut bundles = BundleSet::default();
    bundles.insert(current.bundle.clone());
    let config = zt_tls::server_config_client_optional(
        svid.chain,
        key,
        Arc::new(bundles),
        PeerMatcher::MemberOf(trust_domain.clone()),
        TlsVersions::Tls13,
    )
    .map_err(|e| e.to_string())?;
    Ok((config, (now, svid.not_after)))
}
