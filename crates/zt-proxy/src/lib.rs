//! `zt proxy`: the mTLS sidecar. It sits beside a workload so that every
//! connection to it is mutually authenticated, encrypted, and from an allowed
//! SPIFFE ID, without changing the workload.
//!
//! - [`identity`]: the proxy's own SVID and bundle (Workload API or files), hot;
//! - [`inbound`]: mTLS in (plaintext too in permissive mode), limits, revocation;
//! - [`head`]: the request head the app gets, made once before authorization;
//! - [`forward`]: one request to the app, verified identity in XFCC;
//! - [`outbound`]: plaintext from the app, mTLS to an upstream with an expected ID;
//! - [`authz`]: AuthorizationPolicies on every request, the decision log;
//! - [`admin`]: health, readiness, metrics;
//! - [`peers`]: the allow-list of SPIFFE IDs.

#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod forward;
pub mod head;
pub mod identity;
pub mod inbound;
pub mod outbound;
pub mod peers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use identity::IdentitySource;
pub use inbound::{AppProtocol, InboundConfig, TcpPort};
pub use outbound::Upstream;
use zt_tls::TlsVersions;

/// How `zt proxy` runs.
pub struct ProxyConfig {
    /// Where the identity comes from.
    pub identity: IdentitySource,
    /// The inbound mTLS listeners (the flag that named each, its address, its
    /// settings), if the proxy fronts an app.
    pub inbound: Vec<(&'static str, SocketAddr, InboundConfig)>,
    /// Outbound routes from local plaintext ports to mTLS upstreams.
    pub outbound: Vec<Upstream>,
    /// TLS 1.3 only, or 1.2 as well, both ways.
    pub versions: TlsVersions,
    /// The admin port: health, readiness, metrics.
    pub admin: SocketAddr,
    /// Authorization policies for every inbound request, if any.
    pub authz: Option<authz::AuthzConfig>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The identity.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// Authorization.
    #[error(transparent)]
    Authz(#[from] authz::AuthzError),
    /// A listener ended while the proxy ran.
    #[error("a listener ended while the proxy ran (see the log)")]
    TaskEnded,
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
    let admin_listener = bind("--admin", config.admin).await?;
    let metrics = Arc::new(admin::Metrics::new());
    let authorizer = match config.authz {
        Some(authz) => Some(Arc::new(authz::Authorizer::start(
            authz,
            identity.clone(),
            metrics.clone(),
        )?)),
        None => None,
    };
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (flag, addr, mut inbound_config) in config.inbound {
        inbound_config.authz.clone_from(&authorizer);
        let listener = bind(flag, addr).await?;
        tracing::info!(inbound = %addr, app = %inbound_config.app, protocol = ?inbound_config.app_protocol, "serving inbound mTLS");
        tasks.push((
            "inbound",
            tokio::spawn(inbound::serve(
                listener,
                identity.clone(),
                inbound_config,
                config.versions,
                metrics.clone(),
                stop_rx.clone(),
            )),
        ));
    }
    for upstream in config.outbound {
        let listener = bind("--upstream", upstream.listen).await?;
        tracing::info!(listen = %upstream.listen, target = %upstream.target, expect = %upstream.expect, "serving outbound");
        tasks.push((
            "outbound",
            tokio::spawn(outbound::serve(
                listener,
                upstream,
                identity.clone(),
                config.versions,
                metrics.clone(),
                stop_rx.clone(),
            )),
        ));
    }
    tasks.push((
        "admin",
        tokio::spawn(admin::serve(admin_listener, identity, metrics, stop_rx)),
    ));
    tracing::info!(admin = %config.admin, "zt proxy started");
    // Listeners run until `stop`; one that ends before (a panic) stops the proxy
    // with an error rather than leaving it half-serving.
    let mut tasks: tokio::task::JoinSet<(&str, String)> = tasks
        .into_iter()
        .map(|(name, task)| async move {
            let how = match task.await {
                Ok(()) => "ended".to_owned(),
                Err(e) => e.to_string(),
            };
            (name, how)
        })
        .collect();
    let ended = tokio::select! {
        () = shutdown => false,
        Some(ended) = tasks.join_next() => {
            let (task, how) = ended.unwrap_or(("listener", "was lost".to_owned()));
            tracing::error!(task, "a listener {how} while the proxy runs: stopping the proxy");
            true
        }
    };
    stop.send_replace(true);
    while tasks.join_next().await.is_some() {}
    if ended {
        return Err(ProxyError::TaskEnded);
    }
    Ok(())
}
