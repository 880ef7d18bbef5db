//! `zt server`: the control plane. Holds registration entries and join tokens in
//! the datastore and serves the admin API (Unix socket) and health and metrics
//! (HTTP). Node attestation, the agent API, SVID signing, CA rotation and
//! revocation come next (see ARCHITECTURE.md).

#![forbid(unsafe_code)]

pub mod agent_api;
pub mod api;
pub mod authority;
pub mod client;
pub mod devices;
pub mod entries;
pub mod idp;
pub mod metrics;
pub mod server_tls;
pub mod witness;

mod admin;
mod people;
mod signing;

pub use people::MAX_INVITE_TTL;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zt_identity::TrustDomain;
use zt_store::{Store, StoreError};

pub use admin::MAX_REQUEST_BYTES;

/// The admin socket's file name in the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// The embedded datastore's file name in the data directory.
pub const SQLITE_FILE: &str = "datastore.sqlite3";
/// How long a stopping server waits for open connections.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Held (flock) while a server uses the data directory.
const LOCK_FILE: &str = "server.lock";

/// How a server is set up.
#[derive(Debug)]
pub struct ServerConfig {
    /// Where the admin socket, the lock and the embedded datastore live.
    pub data_dir: PathBuf,
    /// A `postgres://` URL; `None` for SQLite in the data directory.
    pub datastore: Option<String>,
    /// The trust domain this server is the authority of.
    pub trust_domain: TrustDomain,
    /// Health and metrics endpoint.
    pub http_addr: SocketAddr,
    /// Lifetime of each signing authority (CA certificate and JWT key).
    pub ca_ttl: std::time::Duration,
    /// Key algorithm of new signing authorities.
    pub ca_key_type: zt_ca::KeyType,
    /// Agent API (gRPC over TLS) address.
    pub agent_addr: SocketAddr,
    /// Lifetime of agent SVIDs.
    pub agent_ttl: std::time::Duration,
    /// The policy decision point served on the HTTP port beside health and
    /// metrics (OPA's REST API), if any.
    pub pdp: Option<zt_pdp::Pdp>,
    /// The OpenID Provider, if enabled.
    pub idp: Option<IdpSettings>,
    /// Device trust (enrollment, posture, tiers), if enabled.
    pub devices: Option<devices::DeviceSettings>,
}

/// The OpenID Provider's listener and set-up.
pub struct IdpSettings {
    /// Its TLS address.
    pub addr: SocketAddr,
    /// The provider's configuration.
    pub config: zt_idp::IdpConfig,
    /// A certificate chain and key to serve instead of one from the CA.
    pub certificate: Option<server_tls::ServerCertificate>,
    /// Where authentication events are recorded.
    pub decision_log: Option<zt_audit::Writer>,
}

impl std::fmt::Debug for IdpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdpSettings({} at {})", self.config.issuer, self.addr)
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// I/O on a file or socket.
    #[error("{path}: {source}")]
    Io {
        /// The file or socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The data directory or a file in it is not this user's alone.
    #[error("{0}")]
    Fs(#[from] zt_fs::FsError),
    /// Another server holds the data directory.
    #[error("{0}: another zt server is using this data directory")]
    Busy(PathBuf),
    /// A listener could not bind, or failed.
    #[error("{flag} {addr}: {source}")]
    Bind {
        /// The flag that named it (`--http`, `--agent-api`).
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The datastore.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The signing authorities.
    #[error("{0}")]
    Authority(#[from] authority::AuthorityError),
    /// The agent API's TLS configuration.
    #[error("agent API TLS: {0}")]
    Tls(String),
    /// The agent API server failed.
    #[error("agent API: {0}")]
    AgentApi(String),
    /// The OpenID Provider's configuration.
    #[error("{0}")]
    Idp(#[from] zt_idp::ConfigError),
}

/// Runs the server until `shutdown` completes.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let _lock = lock_data_dir(&config.data_dir)?;
    let location = match &config.datastore {
        Some(url) => url.clone(),
        None => config.data_dir.join(SQLITE_FILE).to_string_lossy().into_owned(),
    };
    // Every long-lived task reports here: restarts are counted in
    // `zt_server_task_restarts_total` and a task that is down makes `/readyz` fail.
    let tasks = zt_task::Tasks::new();
    let store = Store::open_supervised(&location, &tasks).await?;
    let authorities = authority::AuthorityManager::start(
        store.clone(),
        config.trust_domain.clone(),
        config.ca_ttl,
        config.ca_key_type,
    )
    .await?;

    let idp = match config.idp {
        Some(settings) => {
            let keys = Arc::new(idp::AuthorityKeys(authorities.clone()));
            let provider =
                zt_idp::Provider::new(settings.config, store.clone(), keys, settings.decision_log)?;
            let certificate = settings.certificate.unwrap_or_else(|| {
                let host = provider
                    .config()
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let (dns_names, mut ips) = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => (Vec::new(), vec![ip]),
                    Err(_) => (vec![host], Vec::new()),
                };
                if !settings.addr.ip().is_unspecified() && !ips.contains(&settings.addr.ip()) {
                    ips.push(settings.addr.ip());
                }
                server_tls::ServerCertificate::FromCa {
                    path: "/zt/idp",
                    dns_names,
                    ips,
                }
            });
            let tls = server_tls::ServerTls::new(
                "OpenID Provider",
                authorities.clone(),
                config.trust_domain.clone(),
                certificate,
            )
            .map_err(ServerError::Tls)?;
            let listener = tokio::net::TcpListener::bind(settings.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    flag: "--idp",
                    addr: settings.addr,
                    source,
                })?;
            tracing::info!(issuer = %provider.config().issuer, addr = %settings.addr, "OpenID Provider enabled");
            Some((provider, tls, listener))
        }
        None => None,
    };
    let device_metrics = devices::DeviceMetrics::default();
    let device_service = match config.devices {
        Some(mut settings) => {
            let service = devices::Devices::load(
                store.clone(),
                config.trust_domain.clone(),
                authorities.clone(),
                &mut settings,
                device_metrics.clone(),
            )
            .await?;
            let tls = server_tls::ServerTls::new(
                "device API",
                authorities.clone(),
                config.trust_domain.clone(),
                server_tls::ServerCertificate::FromCa {
                    path: "/zt/devices",
                    dns_names: vec!["localhost".into()],
                    ips: vec![settings.addr.ip()],
                },
            )
            .map_err(ServerError::Tls)?;
            let listener = tokio::net::TcpListener::bind(settings.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    flag: "--devices",
                    addr: settings.addr,
                    source,
                })?;
            tracing::info!(addr = %settings.addr, floor = service.floor(), "device API enabled");
            Some((service, tls, listener, settings.policy_path))
        }
        None => None,
    };
    if let (Some((provider, ..)), Some((service, ..))) = (&idp, &device_service) {
        provider.set_devices(service.clone());
    }
    let metrics = Arc::new(metrics::Metrics::new(&tasks, |registry| {
        if let Some((provider, ..)) = &idp {
            provider.register_metrics(registry);
        }
        if device_service.is_some() {
            device_metrics.register(registry);
        }
    }));
    let witness =
        Arc::new(witness::Witness::load(store.clone(), &config.trust_domain, metrics.clone()).await?);
    let cache = entries::EntryCache::load(store.clone()).await?;
    let agent_tls = server_tls::ServerTls::new(
        "agent API",
        authorities.clone(),
        config.trust_domain.clone(),
        server_tls::ServerCertificate::FromCa {
            path: "/zt/server",
            dns_names: vec!["localhost".into()],
            ips: vec![config.agent_addr.ip()],
        },
    )
    .map_err(ServerError::Tls)?;
    let agent_listener = tokio::net::TcpListener::bind(config.agent_addr)
        .await
        .map_err(|source| ServerError::Bind {
            flag: "--agent-api",
            addr: config.agent_addr,
            source,
        })?;

    let socket_path = config.data_dir.join(ADMIN_SOCKET);
    let admin_listener = admin::bind(&socket_path)?;
    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| ServerError::Bind {
            flag: "--http",
            addr: config.http_addr,
            source,
        })?;
    tracing::info!(
        trust_domain = %config.trust_domain,
        data_dir = %config.data_dir.display(),
        datastore = ?store.backend(),
        admin_socket = %socket_path.display(),
        http = %config.http_addr,
        agent_api = %config.agent_addr,
        entries = cache.len(),
        witness_key = %witness.verifier(),
        ca_ttl_secs = config.ca_ttl.as_secs(),
        "zt server started"
    );

    let admin = admin::router(admin::AdminState {
        store: store.clone(),
        trust_domain: config.trust_domain.clone(),
        metrics: metrics.clone(),
        authorities: authorities.clone(),
        cache: cache.clone(),
        witness: witness.clone(),
        idp: idp.as_ref().map(|(provider, ..)| provider.clone()),
        devices: device_service.as_ref().map(|(service, ..)| service.clone()),
    });
    let health = metrics::router(metrics::HealthState {
        store: store.clone(),
        metrics: metrics.clone(),
        tasks: tasks.clone(),
        authorities: authorities.clone(),
    });
    let health = match config.pdp {
        Some(pdp) => health.merge(pdp.router()),
        None => health,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    {
        let (authorities, cache, agent_tls, stop) = (
            authorities.clone(),
            cache.clone(),
            agent_tls.clone(),
            stop_rx.clone(),
        );
        tasks.spawn("authorities", stop_rx.clone(), move || {
            authorities.clone().run(stop.clone())
        });
        let stop = stop_rx.clone();
        tasks.spawn("entry_cache", stop_rx.clone(), move || {
            cache.clone().follow(stop.clone())
        });
        let stop = stop_rx.clone();
        tasks.spawn("server_svid", stop_rx.clone(), move || {
            agent_tls.clone().maintain(stop.clone())
        });
    }
    if let Some((provider, tls, listener)) = idp {
        let stop = stop_rx.clone();
        let maintain = tls.clone();
        tasks.spawn("idp_svid", stop_rx.clone(), move || {
            maintain.clone().maintain(stop.clone())
        });
        let (logouts, stop) = (provider.clone(), stop_rx.clone());
        tasks.spawn("idp_backchannel_logout", stop_rx.clone(), move || {
            logouts.clone().follow_logouts(stop.clone())
        });
        tokio::spawn(idp::serve(provider, tls, listener, stop_rx.clone()));
    }
    if let Some((service, tls, listener, policy_path)) = device_service {
        let stop = stop_rx.clone();
        let maintain = tls.clone();
        tasks.spawn("devices_svid", stop_rx.clone(), move || {
            maintain.clone().maintain(stop.clone())
        });
        let (deadlines, stop) = (service.clone(), stop_rx.clone());
        tasks.spawn("device_deadlines", stop_rx.clone(), move || {
            deadlines.clone().watch_deadlines(stop.clone())
        });
        let (saver, stop) = (service.clone(), stop_rx.clone());
        tasks.spawn("device_reports", stop_rx.clone(), move || {
            saver.clone().save_reports(stop.clone())
        });
        let (follower, stop) = (service.clone(), stop_rx.clone());
        tasks.spawn("device_changes", stop_rx.clone(), move || {
            follower.clone().follow(stop.clone())
        });
        if let Some(path) = policy_path {
            let reader = service.clone();
            tasks.spawn("device_policy", stop_rx.clone(), move || {
                reader.clone().follow_policy(path.clone())
            });
        }
        tokio::spawn(devices::serve(service, tls, listener, stop_rx.clone()));
    }
    let api = agent_api::AgentApi {
        store: store.clone(),
        cache,
        authorities: authorities.clone(),
        metrics: metrics.clone(),
        witness,
        trust_domain: config.trust_domain.clone(),
        agent_ttl: config.agent_ttl,
        stop: stop_rx.clone(),
    };
    let incoming =
        tokio_stream::wrappers::ReceiverStream::new(agent_tls.accept(agent_listener, stop_rx.clone()));
    let agent_server = tonic::transport::Server::builder()
        .add_service(
            zt_api::agent::agent_server::AgentServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let admin_server = axum::serve(admin_listener, admin).with_graceful_shutdown(stopped(stop_rx.clone()));
    let http_server = axum::serve(http_listener, health).with_graceful_shutdown(stopped(stop_rx.clone()));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // Graceful: in-flight calls finish and sync streams end; but a peer that keeps a
    // connection open cannot hold the server up for more than SHUTDOWN_GRACE.
    let servers = async { tokio::join!(admin_server, http_server, agent_server) };
    let mut stopping = stop_rx.clone();
    let (admin_result, http_result, agent_result) = tokio::select! {
        results = servers => results,
        _ = async {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}: stopping anyway");
            (Ok(()), Ok(()), Ok(()))
        }
    };
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("zt server stopped");
    agent_result.map_err(|e| ServerError::AgentApi(e.to_string()))?;
    admin_result.map_err(|source| ServerError::Io {
        path: socket_path,
        source,
    })?;
    http_result.map_err(|source| ServerError::Bind {
        flag: "--http",
        addr: config.http_addr,
        source,
    })
}

/// Creates the data directory (0700) and takes its lock for the life of the
/// server. It holds the admin socket and the SQLite datastore (CA and JWT keys):
/// an existing one of this user's is tightened to 0700, another user's refused.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ServerError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ServerError::Io { path, source }
    };
    if let Some(old) = zt_fs::private_dir(dir)? {
        tracing::warn!(dir = %dir.display(), old_mode = format!("{old:o}"), "data directory was open to others: now 0700");
    }
    let lock_path = dir.join(LOCK_FILE);
    let file = zt_fs::open_private(
        &lock_path,
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true),
    )?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::Busy(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&lock_path)(e)),
    }
}

/// Seconds since the Unix epoch.
pub(crate) use zt_identity::clock::unix_seconds as now;
