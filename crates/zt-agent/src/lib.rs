//! `zt agent`: one per node. It attests to `zt server` with a join token, keeps an
//! X.509-SVID for every entry it may issue, and serves them to local workloads
//! over the SPIFFE Workload API on a Unix socket, attesting each caller from the
//! kernel's peer credentials.
//!
//! - [`node`]: attestation, renewal and the sync stream with the server;
//! - [`cache`]: the entries, SVIDs, bundle and revocations held, and the snapshots
//!   the Workload API serves;
//! - [`attest`]: Unix workload attestation;
//! - [`workload_api`]: the Workload API service (its client is `zt-workload`'s);
//! - [`sds`]: Envoy's Secret Discovery Service, on the same socket.

#![forbid(unsafe_code)]

pub mod attest;
pub mod cache;
pub mod jwt;
pub mod node;
pub mod sds;
pub mod uds;
pub mod workload_api;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::task::TaskTracker;
use zt_api::agent::workload_decisions_server::WorkloadDecisionsServer;
use zt_api::agent::workload_policies_server::WorkloadPoliciesServer;
use zt_api::agent::workload_revocations_server::WorkloadRevocationsServer;
use zt_api::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use zt_identity::{Bundle, SpiffeId};

pub use node::NodeConfig;
pub use zt_workload::location::{SYSTEM_SOCKET, default_data_dir, default_socket};

/// How long calls in flight may take to finish once the agent stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// How `zt agent` runs.
pub struct AgentConfig {
    /// Server, join tokens and data dir.
    pub node: NodeConfig,
    /// The bundle that authenticates the server before the agent has its own.
    pub trust_bundle: Bundle,
    /// The Workload API socket.
    pub socket: PathBuf,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The Workload API socket.
    #[error("socket {path}: {reason}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The data directory or a file in it.
    #[error("data dir: {0}")]
    DataDir(String),
    /// Serving failed.
    #[error("workload API: {0}")]
    Serve(String),
    /// The node loop (attestation, sync, signing) ended while the agent ran.
    #[error("the node loop {0}")]
    Node(String),
}

/// The ID `zt server` presents on its agent API in `trust_bundle`'s trust domain.
pub fn server_id(trust_bundle: &Bundle) -> Result<SpiffeId, zt_identity::SpiffeIdError> {
    SpiffeId::from_parts(trust_bundle.trust_domain(), "/zt/server")
}

/// Runs the agent until `shutdown` completes.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    create_private_dir(&config.node.data_dir)?;
    let listener = bind(&config.socket)?;
    let (snapshots, snapshot_rx) = watch::channel(cache::Snapshot::default());
    let (link, link_rx) = watch::channel(None);
    // Stopping ends the node loop and every open stream; then the server finishes
    // the calls in flight, for at most SHUTDOWN_GRACE.
    let (stop, stop_rx) = watch::channel(false);
    let stop = Arc::new(stop);
    let flushing = TaskTracker::new();
    let node = node::Node::new(config.node, config.trust_bundle, snapshots, link, stop_rx.clone())?;
    // The node loop runs until `stop` by construction (every error is retried with
    // backoff); should it end otherwise (a panic), the agent must not go on serving
    // what it last had as if nothing happened: it stops, with an error.
    let (node_failed, mut node_failure) = watch::channel(None::<String>);
    let node = {
        let node = tokio::spawn(node.run());
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let ended = node.await;
            if !*stop_rx.borrow() {
                let how = match ended {
                    Ok(()) => "ended".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(
                    task = "node",
                    "the node loop {how} while the agent runs: stopping the agent"
                );
                node_failed.send_replace(Some(how));
            }
        })
    };
    let node_failed = node_failure.clone();

    let api = workload_api::WorkloadApi::new(
        snapshot_rx,
        Arc::new(attest::UnixAttestor::default()),
        Arc::new(jwt::JwtSvids::new(link_rx.clone())),
        link_rx,
        stop_rx.clone(),
    );
    tracing::info!(socket = %config.socket.display(), "serving the SPIFFE Workload API and Envoy's SDS");
    let stopping = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                _ = node_failure.wait_for(Option::is_some) => {}
            }
            tracing::info!("stopping: ending Workload API streams");
            stop.send_replace(true);
        }
    };
    let serve = tonic::transport::Server::builder()
        .add_service(WorkloadRevocationsServer::new(api.clone()))
        .add_service(WorkloadPoliciesServer::new(api.clone()))
        .add_service(WorkloadDecisionsServer::new(api.clone()))
        .add_service(SecretDiscoveryServiceServer::new(api.clone()))
        .add_service(SpiffeWorkloadApiServer::new(api))
        .serve_with_incoming_shutdown(incoming(listener, flushing.clone()), stopping);
    let mut stop_rx = stop_rx;
    let grace = async {
        stopped(&mut stop_rx).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::pin!(grace);
    let served = tokio::select! {
        served = serve => {
            // The calls are done, but their last bytes may still be on their way
            // to the clients: let them go out (within the grace) before the
            // process exits.
            stop.send_replace(true);
            flushing.close();
            tokio::select! {
                () = flushing.wait() => {}
                () = &mut grace => {}
            }
            served
        }
        () = &mut grace => {
            tracing::warn!("Workload API calls still open after {SHUTDOWN_GRACE:?}: closing them");
            Ok(())
        }
    };
    stop.send_replace(true);
    let _ = node.await;
    let _ = std::fs::remove_file(&config.socket);
    if let Some(how) = node_failed.borrow().clone() {
        return Err(AgentError::Node(how));
    }
    served.map_err(|e| AgentError::Serve(e.to_string()))
}

/// Accepted connections with their peer credentials; failed accepts are logged
/// and skipped, never fatal.
fn incoming(
    listener: UnixListener,
    flushing: TaskTracker,
) -> impl tokio_stream::Stream<Item = std::io::Result<uds::WorkloadConn>> {
    use tokio_stream::StreamExt as _;
    UnixListenerStream::new(listener).filter_map(move |accepted| match accepted {
        Ok(socket) => uds::WorkloadConn::accept(socket, &flushing).map(Ok),
        Err(e) => {
            tracing::warn!(error = %e, "accepting a Workload API connection failed");
            None
        }
    })
}

/// Binds the socket, replacing a stale one, and lets every local user connect:
/// who gets what is decided by attestation, not by file permissions. Missing
/// directories are made 0755 (workloads of other users must reach the socket);
/// every directory from `/` down must be one no one but root and the agent's
/// user can change, or someone else could swap the socket for their own.
fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let fail = |reason: String| AgentError::Socket {
        path: path.to_owned(),
        reason,
    };
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| fail(format!("creating its directory: {e}")))?;
    }
    zt_fs::check_path(path, zt_fs::Owners::RootAndSelf).map_err(|e| fail(e.to_string()))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another agent is serving on it".into()));
            }
            std::fs::remove_file(path).map_err(|e| fail(format!("removing the stale socket: {e}")))?;
        }
        Ok(_) => return Err(fail("exists and is not a socket; not replacing it".into())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| fail(e.to_string()))?;
    Ok(listener)
}

/// The data directory holds the agent's key: 0700 (an existing one of the
/// agent's user is tightened, another user's refused), on a path no one else
/// can swap.
fn create_private_dir(dir: &Path) -> Result<(), AgentError> {
    let fail = |e: zt_fs::FsError| AgentError::DataDir(e.to_string());
    if let Some(old) = zt_fs::private_dir(dir).map_err(fail)? {
        tracing::warn!(dir = %dir.display(), old_mode = format!("{old:o}"), "data directory was open to others: now 0700");
    }
    zt_fs::check_path(dir, zt_fs::Owners::RootAndSelf).map_err(fail)
}

/// Completes when `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Now, in unix seconds.
pub(crate) use zt_identity::clock::unix_seconds as now;
