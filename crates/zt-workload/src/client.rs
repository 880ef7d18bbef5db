//! A client of the SPIFFE Workload API and of zt agent's own services on the
//! same socket (revocations, policies, decision shipping). Speaks to any
//! conforming server, SPIRE's included.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};
use zt_api::agent::workload_decisions_client::WorkloadDecisionsClient;
use zt_api::agent::workload_policies_client::WorkloadPoliciesClient;
use zt_api::agent::workload_revocations_client::WorkloadRevocationsClient;
use zt_api::agent::{
    PolicySet, RevokedIds, ShipDecisionsRequest, ShipDecisionsResponse, WatchPoliciesRequest,
    WatchRevokedIdsRequest,
};
use zt_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use zt_api::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
};

use crate::SECURITY_HEADER;

/// The environment variable naming the Workload API endpoint.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

type WithHeader = InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>;

/// A Workload API client over a Unix socket.
#[derive(Clone)]
pub struct WorkloadClient {
    inner: SpiffeWorkloadApiClient<WithHeader>,
    /// zt agent's revocations feed, on the same connection.
    revocations: WorkloadRevocationsClient<WithHeader>,
    /// zt agent's policies feed, on the same connection.
    policies: WorkloadPoliciesClient<WithHeader>,
    /// zt agent's decision forwarding, on the same connection.
    decisions: WorkloadDecisionsClient<WithHeader>,
}

/// The socket path of a `SPIFFE_ENDPOINT_SOCKET` value: `unix:///path` or `unix:/path`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or_else(|| format!("{endpoint:?}: expected unix:///path/to/socket"))?;
    if !path.starts_with('/') {
        return Err(format!(
            "{endpoint:?}: the socket path must be absolute (unix:///path)"
        ));
    }
    if path.contains(['?', '#']) {
        return Err(format!("{endpoint:?}: no query or fragment allowed"));
    }
    Ok(PathBuf::from(path))
}

/// A socket given on the command line: a path, or the forms
/// `SPIFFE_ENDPOINT_SOCKET` takes (`unix:///path`, `unix:/path`).
pub fn parse_socket(value: &str) -> Result<PathBuf, String> {
    if value.starts_with("unix:") {
        return socket_path(value);
    }
    if value.is_empty() {
        return Err("expected a socket path or unix:///path/to/socket".into());
    }
    Ok(PathBuf::from(value))
}

/// The Workload API socket a client talks to: `flag` if given, else
/// `SPIFFE_ENDPOINT_SOCKET`, else a root agent's socket if there is one, else
/// the socket an agent run by this user would serve by default.
pub fn endpoint(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = flag {
        return Ok(path);
    }
    if let Some(value) = std::env::var_os(ENDPOINT_ENV) {
        let value = value
            .into_string()
            .map_err(|v| format!("{ENDPOINT_ENV}: {v:?}: not UTF-8"))?;
        return socket_path(&value).map_err(|e| format!("{ENDPOINT_ENV}: {e}"));
    }
    let system = Path::new(crate::location::SYSTEM_SOCKET);
    if system.exists() {
        return Ok(system.to_owned());
    }
    Ok(crate::location::default_socket())
}

/// Refuses a socket path that someone other than root, this user or a user
/// root gave the directory to (the agent's) could have swapped; the error
/// names the directory or entry at fault.
pub fn check_socket(path: &Path) -> Result<(), String> {
    zt_fs::check_path(path, zt_fs::Owners::GrantedByRoot)
        .map_err(|e| format!("not trusting this socket: {e}"))
}

fn security_header(mut request: Request<()>) -> Result<Request<()>, Status> {
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, MetadataValue::from_static("true"));
    Ok(request)
}

impl WorkloadClient {
    /// A client of the socket at `path` (connected lazily, and again after
    /// failures). The path is checked now and before every connection: every
    /// directory on the way must be one no untrusted user can change.
    pub fn new(path: &Path) -> Result<Self, String> {
        check_socket(path)?;
        let path = path.to_owned();
        let connector = tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                check_socket(&path)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
                Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
            }
        });
        let channel = Endpoint::from_static("http://workload-api").connect_with_connector_lazy(connector);
        let interceptor: fn(Request<()>) -> Result<Request<()>, Status> = security_header;
        Ok(Self {
            inner: SpiffeWorkloadApiClient::with_interceptor(channel.clone(), interceptor),
            revocations: WorkloadRevocationsClient::with_interceptor(channel.clone(), interceptor),
            policies: WorkloadPoliciesClient::with_interceptor(channel.clone(), interceptor),
            decisions: WorkloadDecisionsClient::with_interceptor(channel, interceptor),
        })
    }

    /// Ships decision records (JSON lines, in order) to zt server through zt
    /// agent, with the writer's verifier key (pinned by the server on first
    /// use) and its latest checkpoint (a signed note) when there is one to
    /// witness (empty strings: none); the answer says what the server holds
    /// and carries its cosignatures of the checkpoint.
    pub async fn ship_decisions(
        &self,
        records: Vec<String>,
        checkpoint: String,
        verifier_key: String,
    ) -> Result<ShipDecisionsResponse, Status> {
        Ok(self
            .decisions
            .clone()
            .ship(ShipDecisionsRequest {
                source: String::new(),
                records,
                checkpoint,
                verifier_key,
            })
            .await?
            .into_inner())
    }

    /// zt agent's stream of authorization policy versions.
    pub async fn policies(&self) -> Result<Streaming<PolicySet>, Status> {
        Ok(self
            .policies
            .clone()
            .watch_policies(WatchPoliciesRequest {})
            .await?
            .into_inner())
    }

    /// zt agent's stream of revoked SPIFFE IDs (`Unimplemented` from other agents).
    pub async fn revoked_ids(&self) -> Result<Streaming<RevokedIds>, Status> {
        Ok(self
            .revocations
            .clone()
            .watch_revoked_ids(WatchRevokedIdsRequest {})
            .await?
            .into_inner())
    }

    /// The X.509-SVID stream.
    pub async fn x509_svids(&self) -> Result<Streaming<X509svidResponse>, Status> {
        Ok(self
            .inner
            .clone()
            .fetch_x509svid(X509svidRequest {})
            .await?
            .into_inner())
    }

    /// The first X.509-SVID response.
    pub async fn fetch_x509_svids(&self) -> Result<X509svidResponse, Status> {
        first(self.x509_svids().await?).await
    }

    /// The first X.509 bundles response.
    pub async fn fetch_x509_bundles(&self) -> Result<X509BundlesResponse, Status> {
        first(
            self.inner
                .clone()
                .fetch_x509_bundles(X509BundlesRequest {})
                .await?
                .into_inner(),
        )
        .await
    }

    /// JWT-SVIDs for `audience`, only of `spiffe_id` if given.
    pub async fn fetch_jwt_svids(
        &self,
        audience: Vec<String>,
        spiffe_id: Option<String>,
    ) -> Result<JwtsvidResponse, Status> {
        let request = JwtsvidRequest {
            audience,
            spiffe_id: spiffe_id.unwrap_or_default(),
        };
        Ok(self.inner.clone().fetch_jwtsvid(request).await?.into_inner())
    }

    /// The first JWT bundles response.
    pub async fn fetch_jwt_bundles(&self) -> Result<JwtBundlesResponse, Status> {
        first(
            self.inner
                .clone()
                .fetch_jwt_bundles(JwtBundlesRequest {})
                .await?
                .into_inner(),
        )
        .await
    }

    /// Validates `token` for `audience`.
    pub async fn validate_jwt_svid(
        &self,
        audience: &str,
        token: &str,
    ) -> Result<ValidateJwtsvidResponse, Status> {
        let request = ValidateJwtsvidRequest {
            audience: audience.to_owned(),
            svid: token.to_owned(),
        };
        Ok(self.inner.clone().validate_jwtsvid(request).await?.into_inner())
    }
}

async fn first<T>(mut stream: Streaming<T>) -> Result<T, Status> {
    stream
        .message()
        .await?
        .ok_or_else(|| Status::unavailable("the stream ended without a response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            socket_path("unix:///tmp/a.sock").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(
            socket_path("unix:/tmp/a.sock").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        for bad in [
            "/tmp/a.sock",
            "tcp://127.0.0.1:1",
            "unix://host/a",
            "unix:a.sock",
            "unix:///a?x=1",
        ] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_flag_takes_a_path_or_an_endpoint() {
        for (flag, path) in [
            ("/run/a.sock", "/run/a.sock"),
            ("rel/a.sock", "rel/a.sock"),
            ("unix:///run/a.sock", "/run/a.sock"),
            ("unix:/run/a.sock", "/run/a.sock"),
        ] {
            assert_eq!(parse_socket(flag).unwrap(), PathBuf::from(path), "{flag}");
        }
        for bad in ["", "unix:a.sock", "unix://host/a"] {
            assert!(parse_socket(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn default_socket_is_not_a_fixed_name_under_tmp() {
        let socket = crate::location::default_socket();
        let data = crate::location::default_data_dir();
        if zt_fs::euid().unwrap() == 0 {
            assert_eq!(socket, PathBuf::from("/run/zt-agent/public/api.sock"));
            assert_eq!(data, PathBuf::from("/var/lib/zt-agent"));
        } else {
            assert!(!socket.starts_with("/tmp/zt-agent/"), "{}", socket.display());
            assert_eq!(socket.parent().unwrap().parent(), data.parent());
        }
    }
}
