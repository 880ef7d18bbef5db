//! `zt proxy`: the mTLS sidecar. It sits beside a workload so that every
//! connection to it is mutually authenticated, encrypted, and from an allowed
//! SPIFFE ID, without changing the workload.
//!
//! - [`connection`]: an inbound connection's stages: accept, limits, mTLS
//!   handshake, the peer's identity, revocation; then HTTP or opaque TCP;
//! - [`request`]: one HTTP request's stages: allow-list, normalize, authorize,
//!   rewrite, send, respond, record; a span per request when tracing is on;
//! - [`refusal`]: every way a connection or request is turned away, with its
//!   status, metric label and logged reason;
//! - [`inbound`]: what an inbound listener is configured with;
//! - [`identity`]: the proxy's own SVID and bundle (Workload API or files), hot;
//! - [`authz`]: AuthorizationPolicies kept current, decisions, the decision log;
//! - [`outbound`]: plaintext from the app, mTLS to an upstream with an expected ID;
//! - [`admin`]: health, readiness, metrics;
//! - [`otlp`]: the export of request spans with OTLP/gRPC (`--otlp-endpoint`).
//!
//! Every long-lived task (the identity and policy followers, the decision-log
//! shipper) is supervised: one that ends is logged, counted
//! (`zt_proxy_task_restarts_total`), turns `/readyz` red and is restarted.

#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod connection;
pub mod follow;
pub mod identity;
pub mod inbound;
pub mod otlp;
pub mod outbound;
pub mod refusal;
pub mod request;
mod workers;

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
    /// Threads serving each inbound address, each with its own runtime and
    /// `SO_REUSEPORT` socket (one per core is the default).
    pub workers: usize,
    /// Authorization policies for every inbound request, if any.
    pub authz: Option<authz::AuthzConfig>,
    /// Where request spans are exported (OTLP/gRPC), if tracing is on.
    pub otlp: Option<otlp::Endpoint>,
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
    /// The span exporter.
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
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
    // Created first, so that every task started below stops with the proxy,
    // including when it fails to start.
    let (stop, stop_rx) = watch::channel(false);
    let mut export = None;
    let served = serve(config, shutdown, stop_rx, &mut export).await;
    stop.send_replace(true);
    // Last, so that the spans of the requests answered until now are sent.
    if let Some(export) = export {
        export.shutdown().await;
    }
    served
}

async fn serve(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()>,
    stop: watch::Receiver<bool>,
    export: &mut Option<otlp::Export>,
) -> Result<(), ProxyError> {
    let tasks = zt_task::Tasks::new();
    let identity = config.identity.follow(&tasks, stop.clone())?;
    let tracer = match &config.otlp {
        Some(endpoint) => {
            let own = identity.borrow().as_ref().map(|own| own.spiffe_id.clone());
            let (started, tracer) = otlp::Export::start(endpoint, own.as_ref())?;
            *export = Some(started);
            tracing::info!(otlp = %endpoint, "exporting a span per request");
            Some(tracer)
        }
        None => None,
    };
    let admin_listener = TcpListener::bind(config.admin)
        .await
        .map_err(|source| ProxyError::Bind {
            flag: "--admin",
            addr: config.admin,
            source,
        })?;
    let metrics = Arc::new(admin::Metrics::new(tasks.clone()));
    let authorizer = match config.authz {
        Some(authz) => Some(Arc::new(authz::Authorizer::start(
            authz,
            identity.clone(),
            metrics.clone(),
            &tasks,
            &stop,
        )?)),
        None => None,
    };
    let ports: Vec<(u16, inbound::Mode)> = config
        .inbound
        .iter()
        .map(|(_, addr, inbound)| (addr.port(), inbound.mode))
        .collect();
    if !ports.is_empty() {
        let (authorizer, metrics) = (authorizer.clone(), metrics.clone());
        tasks.spawn_until_stop("mtls_modes", stop.clone(), move || {
            inbound::follow_modes(ports.clone(), authorizer.clone(), metrics.clone())
        });
    }
    let mut listeners = tokio::task::JoinSet::new();
    for (flag, addr, mut inbound_config) in config.inbound {
        inbound_config.authz.clone_from(&authorizer);
        inbound_config.tracer.clone_from(&tracer);
        let sockets =
            workers::bind(addr, config.workers).map_err(|source| ProxyError::Bind { flag, addr, source })?;
        tracing::info!(inbound = %addr, app = %inbound_config.app, protocol = ?inbound_config.app_protocol, threads = sockets.len(), "serving inbound mTLS");
        let slots = connection::slots(&inbound_config);
        let (identity, metrics, stop) = (identity.clone(), metrics.clone(), stop.clone());
        let versions = config.versions;
        let threads = workers::spawn("zt-inbound", sockets, move |listener| {
            connection::serve(
                listener,
                identity.clone(),
                inbound_config.clone(),
                versions,
                metrics.clone(),
                slots.clone(),
                stop.clone(),
            )
        })
        .map_err(|source| ProxyError::Bind { flag, addr, source })?;
        for thread in threads {
            listeners.spawn(async move {
                let _ = thread.await;
                ("inbound", ())
            });
        }
    }
    for upstream in config.outbound {
        let addr = upstream.listen;
        let flag = "--upstream";
        let sockets =
            workers::bind(addr, config.workers).map_err(|source| ProxyError::Bind { flag, addr, source })?;
        tracing::info!(listen = %addr, target = %upstream.target, expect = %upstream.expect, threads = sockets.len(), "serving outbound");
        let (identity, metrics, stop) = (identity.clone(), metrics.clone(), stop.clone());
        let versions = config.versions;
        let threads = workers::spawn("zt-outbound", sockets, move |listener| {
            outbound::serve(
                listener,
                upstream.clone(),
                identity.clone(),
                versions,
                metrics.clone(),
                stop.clone(),
            )
        })
        .map_err(|source| ProxyError::Bind { flag, addr, source })?;
        for thread in threads {
            listeners.spawn(async move {
                let _ = thread.await;
                ("outbound", ())
            });
        }
    }
    let serving = admin::serve(admin_listener, identity, metrics, stop.clone());
    listeners.spawn(async move { ("admin", serving.await) });
    tracing::info!(admin = %config.admin, "zt proxy started");
    // Listeners run until `stop`; one that ends before (a panic) stops the proxy
    // with an error rather than leaving it half-serving.
    tokio::select! {
        () = shutdown => Ok(()),
        Some(ended) = listeners.join_next() => {
            let (listener, how) = match ended {
                Ok((listener, ())) => (listener, "ended".to_owned()),
                Err(e) => ("listener", e.to_string()),
            };
            tracing::error!(listener, "a listener {how} while the proxy runs: stopping the proxy");
            Err(ProxyError::TaskEnded)
        }
    }
}
