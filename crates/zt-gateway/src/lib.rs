//! `zt gateway`: the edge people reach mesh services through — an
//! identity-aware reverse proxy. Browsers sign in with the OpenID Provider
//! (zt server's, or any) and carry a sealed session cookie; API clients and
//! CLIs send a bearer token. Every request is authorized by Istio
//! AuthorizationPolicies on the person's verified claims (`requestPrincipals`,
//! `request.auth.claims[…]`, `source.ip`, the route's paths and methods), and
//! goes on over mTLS with the gateway's SVID, carrying the person's token
//! exchanged for the upstream's audience and, for apps that read no JWT,
//! identity headers set from it.
//!
//! - [`config`]: the YAML configuration, checked;
//! - [`request`]: one request's stages;
//! - [`oidc`]: the relying party (code flow with PKCE, refresh, exchange,
//!   back-channel logout);
//! - [`sessions`]: sign-ins in progress, sessions, logouts, exchanged tokens;
//! - [`cookie`]: sealed `__Host-` cookies;
//! - [`devices`]: the live tier of the device behind each request;
//! - [`routes`]: host and path prefix → upstream;
//! - [`connect`]: TLS to the provider, mTLS to upstreams;
//! - [`pages`]: redirects, 401/403 pages and JSON;
//! - [`paths`]: the gateway's own paths under `/.zt/`.
//!
//! The policies, the decision log, the head normalization, the SVID
//! following and the admin endpoint are zt proxy's, shared, not copied.

#![forbid(unsafe_code)]

pub mod config;
pub mod connect;
pub mod cookie;
pub mod devices;
pub mod oidc;
pub mod pages;
pub mod paths;
pub mod request;
pub mod routes;
pub mod sessions;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use zt_proxy::authz::{Authorizer, AuthzConfig, PolicyMode, PolicySource};
use zt_proxy::identity::{IdentitySource, IdentityWatch};
use zt_proxy::request::normalize::HeadRules;
use zt_task::files::Stamp;

pub use config::GatewayConfig;

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read (a 64 KiB token, cookies and the rest).
const MAX_HEAD_BYTES: usize = 96 * 1024;
/// Sessions refreshed at once by the background refresher.
const REFRESH_PARALLEL: usize = 16;
/// How long the provider may take to answer discovery at start.
const DISCOVERY_PATIENCE: Duration = Duration::from_secs(30);

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A file named by the configuration.
    #[error("{0}")]
    Config(String),
    /// The SVID.
    #[error(transparent)]
    Identity(#[from] zt_proxy::identity::IdentityError),
    /// The policies do not load: every problem, one per line.
    #[error("policy.dir {dir}:\n{problems}")]
    Policies {
        /// The directory.
        dir: String,
        /// `file:line: field: problem` lines.
        problems: String,
    },
    /// The decision log cannot be opened or does not verify.
    #[error("policy.decision_log: {0}")]
    DecisionLog(zt_audit::AuditError),
    /// The listener's certificate or key.
    #[error("{setting} {path}: {reason}")]
    Certificate {
        /// `tls.cert` or `tls.key`.
        setting: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The provider.
    #[error("oidc.issuer: {0}")]
    Provider(#[from] oidc::RpError),
    /// A listener.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// `listen` or `admin`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A reason label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: &'static str,
}

/// The gateway's own metrics, under `zt_gateway_`, beside zt proxy's.
#[derive(Default)]
pub struct GatewayMetrics {
    /// Requests refused before authorization, by reason (`missing`, `expired`…).
    pub unauthenticated_by: Family<ReasonLabel, Counter>,
    /// Back-channel logouts taken.
    pub logouts: Counter,
    /// Sessions open.
    pub sessions: Gauge,
    /// Sessions opened.
    pub sign_ins: Counter,
    /// Devices whose live state the gateway holds.
    pub device_states: Gauge,
    /// Polls of zt server's device states that failed.
    pub device_state_failures: Counter,
}

/// zt proxy's authorization errors, named by the gateway's configuration keys.
impl From<zt_proxy::authz::AuthzError> for GatewayError {
    fn from(error: zt_proxy::authz::AuthzError) -> Self {
        match error {
            zt_proxy::authz::AuthzError::Policies { dir, problems } => Self::Policies { dir, problems },
            zt_proxy::authz::AuthzError::Log(e) => Self::DecisionLog(e),
        }
    }
}

impl GatewayMetrics {
    fn register(&self, root: &mut Registry) {
        let registry = root.sub_registry_with_prefix("zt_gateway");
        registry.register(
            "unauthenticated",
            "Requests refused before authorization (401, or a browser sent to sign in), by reason",
            self.unauthenticated_by.clone(),
        );
        registry.register(
            "backchannel_logouts",
            "Back-channel logouts taken",
            self.logouts.clone(),
        );
        registry.register("sessions", "Sessions open", self.sessions.clone());
        registry.register("sign_ins", "Sessions opened", self.sign_ins.clone());
        registry.register(
            "device_states",
            "Devices whose live state the gateway holds, from zt server's device states",
            self.device_states.clone(),
        );
        registry.register(
            "device_state_failures",
            "Polls of zt server's device states that failed (refused, unreachable)",
            self.device_state_failures.clone(),
        );
    }

    fn unauthenticated(&self, reason: &'static str) {
        self.unauthenticated_by
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The gateway, shared by every connection.
pub struct Gateway {
    config: GatewayConfig,
    rp: oidc::RelyingParty,
    sessions: sessions::Sessions,
    cookie_key: cookie::CookieKey,
    authorizer: Authorizer,
    routes: routes::Routes,
    head_rules: HeadRules,
    metrics: Arc<GatewayMetrics>,
    proxy_metrics: Arc<zt_proxy::admin::Metrics>,
    devices: Option<Arc<devices::Devices>>,
}

/// Runs the gateway until `shutdown` completes.
pub async fn run(config: GatewayConfig, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    let (stop, stop_rx) = watch::channel(false);
    let served = serve(config, shutdown, stop_rx).await;
    stop.send_replace(true);
    served
}

async fn serve(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
    stop: watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    let tasks = zt_task::Tasks::new();
    let source = match &config.identity {
        config::Identity::WorkloadApi(socket) => IdentitySource::WorkloadApi(socket.clone()),
        config::Identity::Files { cert, key, bundle } => IdentitySource::Files {
            cert: cert.clone(),
            key: key.clone(),
            bundle: bundle.clone(),
        },
    };
    let identity = source.follow(&tasks, stop.clone())?;
    let metrics = Arc::new(GatewayMetrics::default());
    let proxy_metrics = Arc::new(zt_proxy::admin::Metrics::with_more(tasks.clone(), |r| {
        metrics.register(r)
    }));
    let policy_source = match (&config.policy.dir, &config.identity) {
        (Some(dir), _) => PolicySource::Dir(dir.clone()),
        (None, config::Identity::WorkloadApi(socket)) => PolicySource::Agent(socket.clone()),
        (None, config::Identity::Files { .. }) => {
            return Err(GatewayError::Config(
                "policy.agent: needs identity.workload_api".into(),
            ));
        }
    };
    let authorizer = Authorizer::start(
        AuthzConfig {
            source: policy_source,
            mode: PolicyMode::Enforce,
            namespace: Some(config.policy.namespace.clone()),
            labels: config.policy.labels.clone(),
            root_namespace: zt_policy::DEFAULT_ROOT_NAMESPACE.to_owned(),
            decision_log: config.policy.decision_log.clone(),
            decision_log_key: None,
            checkpoints: zt_audit::CheckpointPolicy::default(),
            providers: None,
            // The gateway authenticates people itself; RequestAuthentications
            // do not select it.
            jwks_ca: Vec::new(),
        },
        identity.clone(),
        proxy_metrics.clone(),
        &tasks,
        &stop,
    )?;
    let secret = std::fs::read_to_string(&config.oidc.client_secret_file)
        .map_err(|e| {
            GatewayError::Config(format!(
                "oidc.client_secret_file {}: {e}",
                config.oidc.client_secret_file.display()
            ))
        })?
        .trim()
        .to_owned();
    if secret.is_empty() {
        return Err(GatewayError::Config(format!(
            "oidc.client_secret_file {}: empty",
            config.oidc.client_secret_file.display()
        )));
    }
    let provider_tls = Arc::new(provider_tls(&config.oidc.ca)?);
    let rp = discover(&config, secret, provider_tls).await?;
    let cookie_key = cookie::CookieKey::load_or_create(&config.session.key_file)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let routes =
        routes::Routes::new(&config.routes, &config.headers, &identity).map_err(GatewayError::Config)?;
    let mut strip: Vec<http::HeaderName> = Vec::new();
    for name in config
        .headers
        .keys()
        .chain(config.routes.iter().flat_map(|r| r.headers.keys()))
    {
        if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes())
            && !strip.contains(&name)
        {
            strip.push(name);
        }
    }
    let head_rules = HeadRules {
        strip,
        ..HeadRules::default()
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| GatewayError::Bind {
            what: "listen",
            addr: config.listen,
            source,
        })?;
    // With device trust, a client may present a device certificate of the
    // trust domain (verified against its bundle as it is now: the listener
    // follows the bundle's rotations); it never has to. Until the gateway
    // holds its first SVID, no client certificate is asked for, so every
    // device is unknown.
    let device_bundles = config.devices.as_ref().map(|_| identity.clone());
    let tls = Arc::new(ServerTls::load(
        &config.tls.cert,
        &config.tls.key,
        bundles_now(device_bundles.as_ref()),
    )?);
    {
        let (tls, cert, key) = (tls.clone(), config.tls.cert.clone(), config.tls.key.clone());
        tasks.spawn_until_stop("tls_certificate", stop.clone(), move || {
            let (tls, cert, key, bundles) = (tls.clone(), cert.clone(), key.clone(), device_bundles.clone());
            async move { tls.follow(&cert, &key, bundles).await }
        });
    }
    let devices = match &config.devices {
        Some(settings) => {
            let devices = Arc::new(devices::Devices::new(settings.stale_after).with_metrics(
                metrics.device_states.clone(),
                metrics.device_state_failures.clone(),
            ));
            let (follower, settings, identity) = (devices.clone(), settings.clone(), identity.clone());
            tasks.spawn_until_stop("device_states", stop.clone(), move || {
                follower.clone().follow(settings.clone(), identity.clone())
            });
            Some(devices)
        }
        None => None,
    };
    if let Some(admin) = config.admin {
        let admin_listener = TcpListener::bind(admin)
            .await
            .map_err(|source| GatewayError::Bind {
                what: "admin",
                addr: admin,
                source,
            })?;
        tokio::spawn(zt_proxy::admin::serve(
            admin_listener,
            identity.clone(),
            proxy_metrics.clone(),
            stop.clone(),
        ));
    }
    let gateway = Arc::new(Gateway {
        config,
        rp,
        sessions: sessions::Sessions::default(),
        cookie_key,
        authorizer,
        routes,
        head_rules,
        metrics,
        proxy_metrics,
        devices,
    });
    {
        let gateway = gateway.clone();
        tasks.spawn_until_stop("session_refresh", stop.clone(), move || {
            let gateway = gateway.clone();
            async move { gateway.keep_sessions_fresh().await }
        });
    }
    tracing::info!(
        listen = %gateway.config.listen,
        url = %gateway.config.url,
        issuer = %gateway.rp.issuer(),
        routes = gateway.config.routes.len(),
        "zt gateway started"
    );
    tokio::select! {
        () = shutdown => Ok(()),
        () = accept(listener, tls, gateway, stop.clone()) => Ok(()),
    }
}

/// Discovers the provider, waiting for it a little (it may start with the gateway).
async fn discover(
    config: &GatewayConfig,
    secret: String,
    tls: Arc<rustls::ClientConfig>,
) -> Result<oidc::RelyingParty, GatewayError> {
    let deadline = tokio::time::Instant::now() + DISCOVERY_PATIENCE;
    let mut wait = Duration::from_millis(100);
    loop {
        match oidc::RelyingParty::discover(&config.oidc, secret.clone(), tls.clone()).await {
            Ok(rp) => return Ok(rp),
            Err(oidc::RpError::Unreachable(why)) if tokio::time::Instant::now() + wait < deadline => {
                tracing::info!(issuer = %config.oidc.issuer, error = %why, "waiting for the OpenID Provider");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The TLS client configuration for the provider: its CA bundle.
fn provider_tls(ca: &Path) -> Result<rustls::ClientConfig, GatewayError> {
    let fail = |why: String| GatewayError::Config(format!("oidc.ca {}: {why}", ca.display()));
    let pem = std::fs::read(ca).map_err(|e| fail(e.to_string()))?;
    let roots = zt_identity::x509::certificates_from_pem(&pem).map_err(|e| fail(e.to_string()))?;
    zt_tls::web_client_config(&roots, zt_tls::TlsVersions::Tls13).map_err(|e| fail(e.to_string()))
}

/// The listener's certificate, swapped when its files change: new
/// handshakes get the new one.
struct ServerTls(RwLock<Arc<rustls::ServerConfig>>);

impl ServerTls {
    fn load(
        cert: &Path,
        key: &Path,
        device_roots: Option<Arc<zt_identity::BundleSet>>,
    ) -> Result<Self, GatewayError> {
        Ok(Self(RwLock::new(Arc::new(server_config(
            cert,
            key,
            device_roots,
        )?))))
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0
            .read()
            .map_or_else(|p| p.into_inner().clone(), |c| c.clone())
    }

    /// Builds the configuration again whenever the certificate's files
    /// change or, with device trust, the trust bundle devices are verified
    /// against (`bundles`: the gateway's identity) does. Never returns.
    async fn follow(&self, cert: &Path, key: &Path, bundles: Option<IdentityWatch>) {
        let mut files = Stamp::of(&[cert, key]);
        let mut roots = bundles_now(bundles.as_ref());
        loop {
            tokio::time::sleep(zt_task::files::FILE_POLL).await;
            let files_now = Stamp::of(&[cert, key]);
            let roots_now = bundles_now(bundles.as_ref());
            let same_roots = match (&roots, &roots_now) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if files_now == files && same_roots {
                continue;
            }
            match server_config(cert, key, roots_now.clone()) {
                Ok(config) => {
                    if let Ok(mut current) = self.0.write() {
                        *current = Arc::new(config);
                    }
                    tracing::info!(cert = %cert.display(), device_roots = roots_now.is_some(), "gateway TLS configuration reloaded");
                    (files, roots) = (files_now, roots_now);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the gateway certificate changed but does not load; keeping the previous one");
                    files = files_now;
                }
            }
        }
    }
}

/// The trust bundle as the gateway's identity holds it now, if it holds one.
fn bundles_now(identity: Option<&IdentityWatch>) -> Option<Arc<zt_identity::BundleSet>> {
    identity?
        .borrow()
        .as_ref()
        .map(|identity| identity.bundles.clone())
}

fn server_config(
    cert: &Path,
    key: &Path,
    device_roots: Option<Arc<zt_identity::BundleSet>>,
) -> Result<rustls::ServerConfig, GatewayError> {
    let fail = |setting: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |reason: String| GatewayError::Certificate {
            setting,
            path,
            reason,
        }
    };
    let chain_pem = std::fs::read(cert).map_err(|e| fail("tls.cert", cert)(e.to_string()))?;
    let chain = zt_identity::x509::certificates_from_pem(&chain_pem)
        .map_err(|e| fail("tls.cert", cert)(e.to_string()))?;
    let key_pem = std::fs::read(key).map_err(|e| fail("tls.key", key)(e.to_string()))?;
    let key =
        zt_identity::x509::private_key_from_pem(&key_pem).map_err(|e| fail("tls.key", key)(e.to_string()))?;
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    match device_roots {
        None => zt_tls::web_server_config(chain, key, zt_tls::TlsVersions::Tls13, alpn),
        Some(roots) => {
            zt_tls::web_server_config_client_optional(chain, key, roots, zt_tls::TlsVersions::Tls13, alpn)
        }
    }
    .map_err(|e| fail("tls.cert", cert)(e.to_string()))
}

/// What the gateway holds any one client to: zt proxy's limits, with room
/// in the head for a 64 KiB token beside the cookies and the rest.
fn limits() -> zt_proxy::inbound::Limits {
    zt_proxy::inbound::Limits {
        max_header_bytes: MAX_HEAD_BYTES,
        ..zt_proxy::inbound::Limits::default()
    }
}

async fn accept(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    gateway: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = limits();
    let slots = Arc::new(zt_proxy::connection::limits::Slots::new(
        limits.max_connections,
        limits.max_connections_per_source,
    ));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let (tcp, client) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let held = match slots.acquire(client.ip()) {
            Ok(held) => held,
            Err(refusal) => {
                gateway.proxy_metrics.refuse(refusal.label());
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let _held = held;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %client, error = %e, "handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let peer = Arc::new(request::ClientCertificate::of(stream.get_ref().1));
            let service = hyper::service::service_fn(move |request| {
                let (gateway, peer) = (gateway.clone(), peer.clone());
                async move {
                    let started = std::time::Instant::now();
                    let response = gateway.handle(request, client, &peer).await;
                    gateway
                        .proxy_metrics
                        .requests
                        .get_or_create(&zt_proxy::admin::Status {
                            code: response.status().as_u16(),
                        })
                        .inc();
                    gateway
                        .proxy_metrics
                        .request_seconds
                        .observe(started.elapsed().as_secs_f64());
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            if let Err(e) = zt_proxy::connection::http_server(&limits)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(peer = %client, error = %e, "connection ended with an error");
            }
        });
    }
}

impl Gateway {
    /// Refreshes access tokens before they expire and prunes what has, every
    /// [`sessions::REFRESH_TICK`]. A refresh the provider refuses ends the
    /// session: this is how a revoked session ends even without a
    /// back-channel logout.
    async fn keep_sessions_fresh(self: Arc<Self>) {
        loop {
            tokio::time::sleep(sessions::REFRESH_TICK).await;
            let now = zt_identity::clock::unix_seconds();
            // A few at a time, so that many sessions due together neither wait
            // in one line nor flood the provider.
            let mut due = self.sessions.due_for_refresh(now).into_iter();
            loop {
                let batch: Vec<_> = due.by_ref().take(REFRESH_PARALLEL).collect();
                if batch.is_empty() {
                    break;
                }
                let mut refreshing = tokio::task::JoinSet::new();
                for session in batch {
                    let gateway = self.clone();
                    refreshing.spawn(async move { gateway.refresh(&session, now).await });
                }
                while refreshing.join_next().await.is_some() {}
            }
            self.sessions.prune(now);
            self.metrics
                .sessions
                .set(i64::try_from(self.sessions.open_count()).unwrap_or(i64::MAX));
        }
    }
}
