//! `zt proxy`: the mTLS sidecar. It sits beside a workload so that every
//! connection to it is mutually authenticated, encrypted, and from an allowed
//! SPIFFE ID, without changing the workload.
//!
//! - [`identity`]: the proxy's own SVID and bundle (Workload API or files), hot;
//! - [`inbound`]: mTLS in, plaintext HTTP to the app, verified identity in XFCC;
//! - [`peers`]: the allow-list of SPIFFE IDs.

#![forbid(unsafe_code)]

pub mod admin;
pub mod forward;
pub mod identity;
pub mod inbound;
pub mod peers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use identity::IdentitySource;
pub use inbound::{AppProtocol, InboundConfig};

/// How `zt proxy` runs.
pub struct ProxyConfig {
    /// Where the identity comes from.
    pub identity: IdentitySource,
    /// The inbound mTLS listener.
    pub inbound: SocketAddr,
    /// The inbound side's settings.
    pub inbound_config: InboundConfig,
    /// The admin port: health, readiness, metrics.
    pub admin: SocketAddr,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The identity.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// A listener.
    #[error("{flag} {addr}: {source}")]
    Bind {
        /// The flag that named it.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the proxy until `shutdown` completes.
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
    let identity = config.identity.follow()?;
    let bind = |flag: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind { flag, addr, source })
    };
    let listener = bind("--inbound", config.inbound).await?;
    let admin_listener = bind("--admin", config.admin).await?;
    let metrics = Arc::new(admin::Metrics::new());
    let (stop, stop_rx) = watch::channel(false);
    tracing::info!(inbound = %config.inbound, app = %config.inbound_config.app, admin = %config.admin, "zt proxy started");
    let inbound = tokio::spawn(inbound::serve(
        listener,
        identity.clone(),
        config.inbound_config,
        metrics.clone(),
        stop_rx.clone(),
    ));
    let admin = tokio::spawn(admin::serve(admin_listener, identity, metrics, stop_rx));
    shutdown.await;
    stop.send_replace(true);
    let _ = tokio::join!(inbound, admin);
    Ok(())
}
