//! The SPIFFE Workload API, served on a Unix socket.
//!
//! Every call must carry the `workload.spiffe.io: true` metadata (so that a
//! browser or proxy tricked into calling the socket cannot); every caller is
//! attested from the kernel's peer credentials, and gets only the identities of
//! the entries whose selectors it all has. Streams send the caller's full view
//! first and again whenever it changes.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use zt_api::agent::agent_client::AgentClient;
use zt_api::agent::workload_decisions_server::WorkloadDecisions;
use zt_api::agent::workload_policies_server::WorkloadPolicies;
use zt_api::agent::workload_revocations_server::WorkloadRevocations;
use zt_api::agent::{
    PolicySet, RevokedIds, ShipDecisionsRequest, ShipDecisionsResponse, WatchPoliciesRequest,
    WatchRevokedIdsRequest,
};
use zt_api::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use zt_api::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest, WitsvidResponse,
    X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest, X509svidResponse,
};
use zt_identity::{Bundle, SpiffeId};

use crate::attest::{PeerCredentials, UnixAttestor, Workload};
use crate::cache::{Identity, Snapshot, Status as ServeStatus};
use crate::jwt::JwtSvids;
use crate::{now, stopped};

pub use zt_workload::SECURITY_HEADER;

/// The Workload API's state.
#[derive(Clone)]
pub struct WorkloadApi {
    pub(crate) snapshots: watch::Receiver<Snapshot>,
    attestor: Arc<UnixAttestor>,
    jwt: Arc<JwtSvids>,
    /// The connection to zt server, when there is one (decisions are forwarded on it).
    link: watch::Receiver<Option<AgentClient<Channel>>>,
    /// Becomes true when the agent stops: open streams end then.
    pub(crate) stop: watch::Receiver<bool>,
}

/// What a caller is to be told now.
pub(crate) enum View<T> {
    /// Nothing yet (starting, or its SVIDs are being signed): wait for a change.
    Wait,
    /// It has no identity here.
    Denied(&'static str),
    Ready(T),
}

pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl WorkloadApi {
    /// Serves what the node loop publishes in `snapshots` until `stop`.
    pub fn new(
        snapshots: watch::Receiver<Snapshot>,
        attestor: Arc<UnixAttestor>,
        jwt: Arc<JwtSvids>,
        link: watch::Receiver<Option<AgentClient<Channel>>>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            snapshots,
            attestor,
            jwt,
            link,
            stop,
        }
    }

    /// Checks the security header and attests the caller.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Workload, Status> {
        let mut values = request.metadata().get_all(SECURITY_HEADER).iter();
        match (values.next(), values.next()) {
            (Some(value), None) if value == "true" => {}
            _ => return Err(Status::invalid_argument("security header missing from request")),
        }
        self.attest(request).await
    }

    /// Attests the caller from the kernel's peer credentials.
    pub(crate) async fn attest<T>(&self, request: &Request<T>) -> Result<Workload, Status> {
        let Some(credentials) = request.extensions().get::<PeerCredentials>().copied() else {
            return Err(Status::permission_denied(
                "the caller could not be attested: no peer credentials",
            ));
        };
        let attestor = self.attestor.clone();
        let attested = tokio::task::spawn_blocking(move || attestor.attest(credentials))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        attested.map_err(|e| {
            tracing::warn!(target: "zt::audit", uid = credentials.uid, pid = credentials.pid, error = %e, "workload attestation failed");
            Status::permission_denied(format!("the caller could not be attested: {e}"))
        })
    }

    /// A stream of `view` of every snapshot, each sent only when it differs from
    /// the last; ends with the error of a `Denied`.
    fn stream<T, F>(&self, workload: Workload, view: F) -> ResponseStream<T>
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(&Snapshot, &Workload) -> View<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        let mut snapshots = self.snapshots.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            loop {
                let snapshot = snapshots.borrow_and_update().clone();
                match view(&snapshot, &workload) {
                    View::Wait => {}
                    View::Denied(why) => {
                        let _ = tx.send(Err(Status::permission_denied(why))).await;
                        return;
                    }
                    View::Ready(response) => {
                        if last.as_ref() != Some(&response) {
                            if tx.send(Ok(response.clone())).await.is_err() {
                                return;
                            }
                            last = Some(response);
                        }
                    }
                }
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() {
                        let _ = tx.send(Err(Status::unavailable("the agent is stopping"))).await;
                        return;
                    },
                    _ = tx.closed() => return,
                    () = stopped(&mut stop) => {
                        let _ = tx.send(Err(Status::unavailable("the agent is stopping"))).await;
                        return;
                    }
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// The current snapshot, once the agent is past starting (unary calls wait a little).
    async fn settled_snapshot(&self) -> Result<Snapshot, Status> {
        let mut snapshots = self.snapshots.clone();
        let wait = snapshots.wait_for(|s| s.status != ServeStatus::Starting);
        match tokio::time::timeout(std::time::Duration::from_secs(5), wait).await {
            Ok(Ok(snapshot)) => Ok(snapshot.clone()),
            _ => Err(Status::unavailable("the agent has not synced with zt server yet")),
        }
    }
}

/// The entries that match `workload`, or why it gets nothing.
pub(crate) fn matching<'a>(snapshot: &'a Snapshot, workload: &Workload) -> View<Vec<&'a Identity>> {
    let view = matching_entries(snapshot, workload);
    if let View::Denied(why) = &view {
        tracing::debug!(pid = workload.pid, selectors = ?workload.selectors, why, "no identity for the caller");
    }
    view
}

fn matching_entries<'a>(snapshot: &'a Snapshot, workload: &Workload) -> View<Vec<&'a Identity>> {
    match snapshot.status {
        ServeStatus::Starting => View::Wait,
        ServeStatus::NotAttested => View::Denied("the agent is not attested: it serves no identities"),
        ServeStatus::Serving => {
            let matched: Vec<&Identity> = snapshot
                .identities
                .iter()
                .filter(|identity| workload.matches(&identity.entry.selectors))
                .collect();
            if matched.is_empty() {
                View::Denied("no identity issued")
            } else {
                View::Ready(matched)
            }
        }
    }
}

fn x509_svid_view(snapshot: &Snapshot, workload: &Workload) -> View<X509svidResponse> {
    let matched = match matching(snapshot, workload) {
        View::Ready(matched) => matched,
        View::Wait => return View::Wait,
        View::Denied(why) => return View::Denied(why),
    };
    let Some(bundle) = &snapshot.bundle else {
        return View::Wait;
    };
    let now = now();
    let svids: Vec<X509svid> = matched
        .iter()
        .filter_map(|identity| Some((identity.svid.as_ref()?, &identity.entry.hint)))
        .filter(|(svid, _)| now < svid.not_after)
        .map(|(svid, hint)| X509svid {
            spiffe_id: svid.spiffe_id.clone(),
            x509_svid: svid.chain.iter().flat_map(|c| c.iter().copied()).collect(),
            x509_svid_key: svid.key_pkcs8.clone(),
            bundle: bundle.x509_authorities_der(),
            hint: hint.clone(),
        })
        .collect();
    if svids.is_empty() {
        // Entries match, but their SVIDs are still being signed.
        return View::Wait;
    }
    View::Ready(X509svidResponse {
        svids,
        crl: snapshot.crls.to_vec(),
        federated_bundles: Default::default(),
    })
}

fn x509_bundles_view(snapshot: &Snapshot, workload: &Workload) -> View<X509BundlesResponse> {
    with_bundle(snapshot, workload, |bundle| X509BundlesResponse {
        crl: snapshot.crls.to_vec(),
        bundles: [(
            bundle.trust_domain().id().to_string(),
            bundle.x509_authorities_der(),
        )]
        .into(),
    })
}

fn jwt_bundles_view(snapshot: &Snapshot, workload: &Workload) -> View<JwtBundlesResponse> {
    with_bundle(snapshot, workload, |bundle| JwtBundlesResponse {
        bundles: [(
            bundle.trust_domain().id().to_string(),
            bundle.to_jwt_jwks().unwrap_or_default().into_bytes(),
        )]
        .into(),
    })
}

fn revoked_ids_view(snapshot: &Snapshot, workload: &Workload) -> View<RevokedIds> {
    with_bundle(snapshot, workload, |_| RevokedIds {
        revoked_ids: snapshot.revoked_ids.to_vec(),
    })
}

/// The policies, once the agent has any, to callers with an identity here.
fn policies_view(snapshot: &Snapshot, workload: &Workload) -> View<PolicySet> {
    match (with_bundle(snapshot, workload, |_| ()), &snapshot.policies) {
        (View::Ready(()), Some(policies)) => View::Ready(PolicySet::clone(policies)),
        (View::Denied(why), _) => View::Denied(why),
        _ => View::Wait,
    }
}

/// Bundles go to callers that have an identity here, as SPIRE does by default.
fn with_bundle<T>(snapshot: &Snapshot, workload: &Workload, build: impl Fn(&Bundle) -> T) -> View<T> {
    match (matching(snapshot, workload), &snapshot.bundle) {
        (View::Ready(_), Some(bundle)) => View::Ready(build(bundle)),
        (View::Denied(why), _) => View::Denied(why),
        _ => View::Wait,
    }
}

#[tonic::async_trait]
impl WorkloadRevocations for WorkloadApi {
    type WatchRevokedIdsStream = ResponseStream<RevokedIds>;

    async fn watch_revoked_ids(
        &self,
        request: Request<WatchRevokedIdsRequest>,
    ) -> Result<Response<Self::WatchRevokedIdsStream>, Status> {
        let workload = self.caller(&request).await?;
        Ok(Response::new(self.stream(workload, revoked_ids_view)))
    }
}

#[tonic::async_trait]
impl WorkloadDecisions for WorkloadApi {
    /// Forwards a workload's decision records under its attested SPIFFE ID (the
    /// first of its identities here), never the one it names itself.
    async fn ship(
        &self,
        request: Request<ShipDecisionsRequest>,
    ) -> Result<Response<ShipDecisionsResponse>, Status> {
        let workload = self.caller(&request).await?;
        let snapshot = self.settled_snapshot().await?;
        let source = match matching(&snapshot, &workload) {
            View::Ready(identities) => identities
                .first()
                .map(|identity| identity.entry.spiffe_id.clone())
                .ok_or_else(|| Status::permission_denied("no identity issued"))?,
            View::Denied(why) => return Err(Status::permission_denied(why)),
            View::Wait => return Err(Status::unavailable("the agent has not synced with zt server yet")),
        };
        let Some(mut server) = self.link.borrow().clone() else {
            return Err(Status::unavailable("no connection to zt server"));
        };
        let mut forwarded = request.into_inner();
        forwarded.source = source;
        server.ship_decisions(forwarded).await
    }
}

#[tonic::async_trait]
impl WorkloadPolicies for WorkloadApi {
    type WatchPoliciesStream = ResponseStream<PolicySet>;

    async fn watch_policies(
        &self,
        request: Request<WatchPoliciesRequest>,
    ) -> Result<Response<Self::WatchPoliciesStream>, Status> {
        let workload = self.caller(&request).await?;
        Ok(Response::new(self.stream(workload, policies_view)))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = ResponseStream<WitsvidResponse>;
    type FetchWITBundlesStream = ResponseStream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let workload = self.caller(&request).await?;
        Ok(Response::new(self.stream(workload, x509_svid_view)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let workload = self.caller(&request).await?;
        Ok(Response::new(self.stream(workload, x509_bundles_view)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let workload = self.caller(&request).await?;
        let request = request.into_inner();
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let wanted = match request.spiffe_id.as_str() {
            "" => None,
            id => Some(
                SpiffeId::parse(id)
                    .map_err(|e| Status::invalid_argument(format!("invalid requested SPIFFE ID: {e}")))?,
            ),
        };
        let snapshot = self.settled_snapshot().await?;
        let matched = match matching(&snapshot, &workload) {
            View::Ready(matched) => matched,
            View::Denied(why) => return Err(Status::permission_denied(why)),
            View::Wait => return Err(Status::unavailable("the agent has not synced with zt server yet")),
        };
        let mut svids = Vec::new();
        for identity in matched {
            let id = &identity.entry.spiffe_id;
            if wanted.as_ref().is_some_and(|w| w.to_string() != *id)
                || svids.iter().any(|s: &Jwtsvid| s.spiffe_id == *id)
            {
                continue;
            }
            let token = self.jwt.fetch(&identity.entry, &request.audience).await?;
            svids.push(Jwtsvid {
                spiffe_id: id.clone(),
                svid: token,
                hint: identity.entry.hint.clone(),
            });
        }
        if svids.is_empty() {
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let workload = self.caller(&request).await?;
        Ok(Response::new(self.stream(workload, jwt_bundles_view)))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.caller(&request).await?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snapshot = self.settled_snapshot().await?;
        let bundle = snapshot
            .bundle
            .as_ref()
            .ok_or_else(|| Status::unavailable("the agent holds no bundle yet"))?;
        let verified = zt_identity::verify_jwt_svid(&request.svid, bundle.as_ref(), &request.audience, now())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let claims = verified
            .claims()
            .iter()
            .map(|(name, value)| (name.clone(), to_proto_value(value)))
            .collect();
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: verified.spiffe_id().to_string(),
            claims: Some(prost_types::Struct { fields: claims }),
        }))
    }

    async fn fetch_witsvid(
        &self,
        _request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("WIT-SVIDs are not supported by this agent"))
    }

    async fn fetch_wit_bundles(
        &self,
        _request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("WIT-SVIDs are not supported by this agent"))
    }
}

/// A JSON value as a protobuf `Value`.
fn to_proto_value(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_proto_value).collect(),
        }),
        serde_json::Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.clone(), to_proto_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
