//! The agent API (`zt.agent.v1.Agent`, gRPC over TLS 1.3): node attestation with
//! join tokens, agent SVID renewal, the sync stream, and SVID signing for the
//! entries an agent is authorized for. Every refusal is audited.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use zt_api::agent::agent_server::Agent as AgentService;
use zt_api::agent::{
    AgentSvid, AttestJoinTokenRequest, Bundle as BundleMessage, Entry as EntryMessage, JwtSvid,
    MintJwtSvidRequest, RenewAgentRequest, RevokedId, ShipDecisionsRequest, ShipDecisionsResponse,
    SignX509SvidRequest, SyncRequest, SyncResponse, X509Svid,
};
use zt_identity::{SpiffeId, TrustDomain};
use zt_store::{Entry, Revoked, Selector, Store, StoreError};

use crate::authority::{Authorities, AuthorityManager};
use crate::entries::EntryCache;
use crate::metrics::Metrics;
use crate::now;
use crate::server_tls::PeerInfo;
use crate::signing::{SignError, Signer};
use crate::witness::Witness;

/// The agent API's state.
#[derive(Clone)]
pub struct AgentApi {
    pub(crate) store: Store,
    pub(crate) cache: Arc<EntryCache>,
    pub(crate) authorities: Arc<AuthorityManager>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) witness: Arc<Witness>,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) agent_ttl: Duration,
    /// Becomes true when the server stops: open sync streams end then.
    pub(crate) stop: tokio::sync::watch::Receiver<bool>,
}

/// A caller proven to be a current agent.
struct CallingAgent {
    id: SpiffeId,
    serial: String,
    not_before: u64,
    selectors: Vec<Selector>,
}

impl AgentApi {
    /// The calling agent: it presented a verified SVID whose serial is the one on
    /// record for an agent that is neither evicted nor banned.
    async fn calling_agent<T>(&self, request: &Request<T>) -> Result<CallingAgent, Status> {
        let peer = request.extensions().get::<PeerInfo>();
        let Some((peer, id, serial)) = peer.and_then(|p| Some((p, p.spiffe_id.clone()?, p.serial.clone()?)))
        else {
            return Err(Status::unauthenticated(
                "this call needs the agent's SVID as TLS client certificate",
            ));
        };
        let agent = self
            .store
            .current_agent(&id.to_string(), &serial, peer.not_before, now())
            .await
            .map_err(|e| self.internal(e))?;
        match agent {
            Some(agent) => Ok(CallingAgent {
                id,
                serial,
                not_before: peer.not_before,
                selectors: agent.selectors,
            }),
            None => {
                tracing::warn!(target: "zt::audit", agent = %id, serial, "refused: not a current agent SVID");
                Err(Status::permission_denied(format!(
                    "{id} is not an attested agent with this SVID (evicted, banned, revoked or renewed since)"
                )))
            }
        }
    }

    /// Whether the agent's record still names this SVID and it is not revoked;
    /// any datastore error counts as no.
    async fn still_current(&self, agent: &CallingAgent) -> bool {
        let current = self
            .store
            .current_agent(&agent.id.to_string(), &agent.serial, agent.not_before, now())
            .await;
        matches!(current, Ok(Some(_)))
    }

    /// Signs an SVID for `spiffe_id` (see [`Signer::sign`]).
    fn sign(
        &self,
        csr: &[u8],
        spiffe_id: &SpiffeId,
        ttl: Duration,
        dns_names: &[String],
    ) -> Result<X509Svid, Status> {
        let signer = Signer {
            authorities: &self.authorities,
            cache: &self.cache,
            metrics: &self.metrics,
        };
        let signed = signer.sign(csr, spiffe_id, ttl, dns_names).map_err(|e| match e {
            SignError::Revoked(_) => Status::permission_denied(e.to_string()),
            SignError::Invalid(_) => Status::invalid_argument(e.to_string()),
        })?;
        Ok(X509Svid {
            spiffe_id: spiffe_id.to_string(),
            cert_chain: signed.chain.iter().map(|c| c.to_vec()).collect(),
            expires_at: i64::try_from(signed.not_after).unwrap_or(i64::MAX),
        })
    }

    fn bundle_message(&self) -> Result<BundleMessage, Status> {
        let authorities = self.authorities.current();
        let jwks = authorities
            .bundle
            .to_jwks()
            .map_err(|e| Status::internal(format!("bundle: {e}")))?;
        Ok(BundleMessage {
            trust_domain: self.trust_domain.to_string(),
            jwks: jwks.into_bytes(),
            sequence: authorities.bundle.sequence().unwrap_or(0),
        })
    }

    /// The entry `id`, if `agent` may issue it; refusals are audited. An entry the
    /// cache does not know yet (created a moment ago, maybe through another server)
    /// is looked for again after catching up with the change feed.
    async fn authorized_entry(&self, agent: &CallingAgent, id: &str) -> Result<Entry, Status> {
        let lookup = || {
            self.cache
                .authorized_entry(id, &agent.id, &agent.selectors, now())
        };
        let mut found = lookup();
        if found.is_none() {
            self.cache.catch_up().await.map_err(|e| self.internal(e))?;
            found = lookup();
        }
        found.ok_or_else(|| {
            tracing::warn!(target: "zt::audit", agent = %agent.id, entry = id, "refused: agent not authorized for entry");
            Status::permission_denied(format!("{} is not authorized for entry {id:?}", agent.id))
        })
    }

    fn internal(&self, e: StoreError) -> Status {
        if matches!(e, StoreError::Database(_)) {
            self.metrics.datastore_errors.inc();
        }
        tracing::error!(error = %e, "agent API datastore error");
        Status::unavailable(e.to_string())
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn attest_join_token(
        &self,
        request: Request<AttestJoinTokenRequest>,
    ) -> Result<Response<AgentSvid>, Status> {
        let request = request.into_inner();
        let now = now();
        // A request that could not be signed must not use up the token.
        zt_ca::check_csr(&request.csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let grant = match self.store.consume_join_token(&request.token, now).await {
            Ok(grant) => grant,
            Err(StoreError::JoinToken(problem)) => {
                tracing::warn!(target: "zt::audit", %problem, "refused: join token");
                return Err(Status::permission_denied(format!("join token is {problem}")));
            }
            Err(e) => return Err(self.internal(e)),
        };
        let token_id = zt_store::token_id(&request.token);
        let agent_id = match grant.spiffe_id {
            Some(id) => id,
            None => SpiffeId::from_parts(&self.trust_domain, &format!("/zt/agent/join_token/{token_id}"))
                .map_err(|e| Status::internal(e.to_string()))?,
        };
        let svid = self.sign(&request.csr, &agent_id, self.agent_ttl, &[])?;
        let selectors = [format!("spiffe_id:{agent_id}"), format!("join_token:{token_id}")]
            .iter()
            .map(|s| Selector::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(e.to_string()))?;
        let serial = serial_of(&svid)?;
        let not_after = u64::try_from(svid.expires_at).unwrap_or(0);
        match self
            .store
            .attest_agent(&agent_id, &serial, not_after, &selectors, now)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Banned(id)) => {
                tracing::warn!(target: "zt::audit", agent = %id, "refused: banned agent attested");
                return Err(Status::permission_denied(format!("agent {id} is banned")));
            }
            Err(e) => return Err(self.internal(e)),
        }
        tracing::info!(target: "zt::audit", agent = %agent_id, serial, "agent attested with a join token");
        Ok(Response::new(AgentSvid {
            svid: Some(svid),
            bundle: Some(self.bundle_message()?),
        }))
    }

    async fn renew_agent(&self, request: Request<RenewAgentRequest>) -> Result<Response<AgentSvid>, Status> {
        let agent = self.calling_agent(&request).await?;
        let svid = self.sign(&request.get_ref().csr, &agent.id, self.agent_ttl, &[])?;
        let serial = serial_of(&svid)?;
        let not_after = u64::try_from(svid.expires_at).unwrap_or(0);
        self.store
            .renew_agent(&agent.id.to_string(), &agent.serial, &serial, not_after, now())
            .await
            .map_err(|e| match e {
                StoreError::UnknownAgent(id) => {
                    Status::permission_denied(format!("agent {id} is no longer attested"))
                }
                other => self.internal(other),
            })?;
        tracing::info!(agent = %agent.id, serial, "agent SVID renewed");
        Ok(Response::new(AgentSvid {
            svid: Some(svid),
            bundle: Some(self.bundle_message()?),
        }))
    }

    type SyncStream = SyncStream;

    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncStream>, Status> {
        let agent = self.calling_agent(&request).await?;
        let api = self.clone();
        let mut entries = self.cache.watch();
        let mut authorities = self.authorities.watch();
        let mut stop = self.stop.clone();
        let stream = async_stream(move |tx| async move {
            let mut last: Option<SyncResponse> = None;
            let mut crls = Crls::default();
            let mut policies_sent: Option<u64> = None;
            loop {
                // An agent evicted, banned or revoked meanwhile is cut off.
                if !api.still_current(&agent).await {
                    let _ = tx
                        .send(Err(Status::permission_denied(format!(
                            "agent {} is no longer attested",
                            agent.id
                        ))))
                        .await;
                    return;
                }
                let Ok(revocations) = api.store.revocations(now()).await else {
                    let _ = tx.send(Err(Status::unavailable("datastore unavailable"))).await;
                    return;
                };
                let mut state = SyncResponse {
                    entries: api
                        .cache
                        .authorized_for(&agent.id, &agent.selectors, now())
                        .iter()
                        .map(entry_message)
                        .collect(),
                    bundle: api.bundle_message().ok(),
                    ..SyncResponse::default()
                };
                let mut serials = Vec::new();
                for revocation in revocations {
                    match revocation.revoked {
                        Revoked::Serial(serial) => {
                            serials.push((serial.clone(), revocation.revoked_at));
                            state.revoked_serials.push(serial);
                        }
                        Revoked::SpiffeId {
                            spiffe_id,
                            issued_before,
                        } => state.revoked_ids.push(RevokedId {
                            spiffe_id,
                            issued_before: i64::try_from(issued_before).unwrap_or(i64::MAX),
                        }),
                    }
                }
                state.crls = crls.signed(&api.authorities.current(), serials);
                // Policies go only when they changed since this stream last sent them.
                let policies = api.cache.policies();
                let policy_version = policies.as_ref().map(|p| p.version);
                if last.as_ref() != Some(&state) || policy_version != policies_sent {
                    let mut message = state.clone();
                    if policy_version != policies_sent {
                        message.policies = policies.as_deref().map(policy_message);
                    }
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                    last = Some(state);
                    policies_sent = policy_version;
                }
                let (go_on, stopping) = tokio::select! {
                    changed = entries.changed() => (changed.is_ok(), false),
                    changed = authorities.changed() => (changed.is_ok(), false),
                    stopping = stop.wait_for(|stop| *stop) => (false, stopping.is_ok()),
                };
                if stopping {
                    let _ = tx.send(Err(Status::unavailable("zt server is stopping"))).await;
                }
                if !go_on {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn sign_x509_svid(
        &self,
        request: Request<SignX509SvidRequest>,
    ) -> Result<Response<X509Svid>, Status> {
        let agent = self.calling_agent(&request).await?;
        let request = request.into_inner();
        let entry = self.authorized_entry(&agent, &request.entry_id).await?;
        let svid = self.sign(
            &request.csr,
            &entry.spec.spiffe_id,
            Duration::from_secs(entry.spec.x509_ttl),
            &entry.spec.dns_names,
        )?;
        Ok(Response::new(svid))
    }

    async fn mint_jwt_svid(&self, request: Request<MintJwtSvidRequest>) -> Result<Response<JwtSvid>, Status> {
        let agent = self.calling_agent(&request).await?;
        let request = request.into_inner();
        let entry = self.authorized_entry(&agent, &request.entry_id).await?;
        let authorities = self.authorities.current();
        let now = now();
        let remaining = authorities.active.not_after().saturating_sub(now);
        let ttl = Duration::from_secs(entry.spec.jwt_ttl.min(remaining));
        let token = authorities
            .active
            .mint_jwt_svid(&entry.spec.spiffe_id, &request.audience, ttl, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(JwtSvid {
            token,
            expires_at: i64::try_from(now + ttl.as_secs()).unwrap_or(i64::MAX),
        }))
    }

    async fn ship_decisions(
        &self,
        request: Request<ShipDecisionsRequest>,
    ) -> Result<Response<ShipDecisionsResponse>, Status> {
        let agent = self.calling_agent(&request).await?;
        let request = request.into_inner();
        if request.records.len() > MAX_SHIPPED_RECORDS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_SHIPPED_RECORDS} records per batch"
            )));
        }
        // An agent ships only for workloads it may issue identities to.
        let authorized = self
            .cache
            .authorized_for(&agent.id, &agent.selectors, now())
            .iter()
            .any(|entry| entry.spec.spiffe_id.to_string() == request.source);
        if !authorized {
            tracing::warn!(target: "zt::audit", agent = %agent.id, source = %request.source, "refused: decisions of a workload the agent does not serve");
            return Err(Status::permission_denied(format!(
                "{} does not serve {}",
                agent.id, request.source
            )));
        }
        // The log key first: a source presenting another than the one pinned
        // ships nothing.
        let pinned = match (request.verifier_key.is_empty(), request.checkpoint.is_empty()) {
            (true, true) => None,
            (true, false) => {
                return Err(Status::invalid_argument(
                    "a checkpoint needs the writer's verifier_key",
                ));
            }
            (false, _) => Some(
                self.witness
                    .pin(&request.source, &request.verifier_key)
                    .await
                    .map_err(|e| self.witness.refusal(e))?,
            ),
        };
        let stored_through = match self
            .store
            .append_decisions(&request.source, &request.records)
            .await
        {
            Ok(stored_through) => stored_through,
            Err(e @ StoreError::BrokenChain { .. }) => {
                tracing::error!(target: "zt::audit", source = %request.source, error = %e, "refused shipped decisions that break their chain");
                return Err(Status::failed_precondition(e.to_string()));
            }
            Err(e) => return Err(self.internal(e)),
        };
        let mut cosignatures = Vec::new();
        if let Some(pinned) = pinned.filter(|_| !request.checkpoint.is_empty()) {
            cosignatures.push(
                self.witness
                    .cosign(
                        &request.source,
                        &pinned,
                        &request.checkpoint,
                        stored_through,
                        now(),
                    )
                    .await
                    .map_err(|e| self.witness.refusal(e))?,
            );
        }
        Ok(Response::new(ShipDecisionsResponse {
            stored_through,
            cosignatures,
        }))
    }
}

/// Most decision records in one shipped batch.
const MAX_SHIPPED_RECORDS: usize = 1000;

/// Revoked serials (hex) with when they were revoked.
type RevokedSerials = Vec<(String, u64)>;

/// A policy version as the sync stream carries it.
fn policy_message(version: &zt_store::PolicyVersion) -> zt_api::agent::PolicySet {
    zt_api::agent::PolicySet {
        version: version.version,
        digest: version.digest.clone(),
        files: version
            .files
            .iter()
            .map(|f| zt_api::agent::PolicyFile {
                name: f.name.clone(),
                text: f.text.clone(),
            })
            .collect(),
    }
}

/// The revocation lists of one sync stream, signed again only when the revoked
/// serials or the authorities change.
#[derive(Default)]
struct Crls {
    /// The serials (with when they were revoked) and authorities last signed for.
    signed_for: Option<(RevokedSerials, Arc<Authorities>)>,
    crls: Vec<Vec<u8>>,
}

impl Crls {
    /// One CRL per authority listing every revoked serial (a serial names one
    /// certificate whichever authority issued it, so listing all in each is exact);
    /// none while nothing is revoked.
    fn signed(&mut self, authorities: &Arc<Authorities>, serials: Vec<(String, u64)>) -> Vec<Vec<u8>> {
        if let Some((prev, prev_authorities)) = &self.signed_for
            && *prev == serials
            && Arc::ptr_eq(prev_authorities, authorities)
        {
            return self.crls.clone();
        }
        let now = now();
        let der: Vec<(Vec<u8>, u64)> = serials
            .iter()
            .filter_map(|(hex, at)| Some((decode_hex(hex)?, *at)))
            .collect();
        self.crls = if der.is_empty() {
            Vec::new()
        } else {
            authorities
                .all
                .iter()
                // Numbered by the time of signing: increasing, as CRL numbers must be.
                .filter_map(|authority| match authority.sign_crl(&der, now, now) {
                    Ok(crl) => Some(crl),
                    Err(e) => {
                        tracing::error!(error = %e, "could not sign a revocation list");
                        None
                    }
                })
                .collect()
        };
        self.signed_for = Some((serials, authorities.clone()));
        self.crls.clone()
    }
}

/// Bytes of a lowercase hex string, as revocation serials are stored.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn entry_message(entry: &Entry) -> EntryMessage {
    let spec = &entry.spec;
    EntryMessage {
        id: entry.id.clone(),
        spiffe_id: spec.spiffe_id.to_string(),
        parent_id: spec.parent_id.to_string(),
        selectors: spec.selectors.iter().map(ToString::to_string).collect(),
        x509_ttl: i64::try_from(spec.x509_ttl).unwrap_or(i64::MAX),
        jwt_ttl: i64::try_from(spec.jwt_ttl).unwrap_or(i64::MAX),
        dns_names: spec.dns_names.clone(),
        revision: entry.revision,
        admin: spec.admin,
        hint: spec.hint.clone().unwrap_or_default(),
    }
}

/// The serial of a freshly signed SVID, as hex without separators.
fn serial_of(svid: &X509Svid) -> Result<String, Status> {
    let leaf = svid
        .cert_chain
        .first()
        .ok_or_else(|| Status::internal("signed an empty chain"))?;
    let summary =
        zt_identity::x509::summarize(&leaf.clone().into()).map_err(|e| Status::internal(e.to_string()))?;
    Ok(crate::server_tls::serial_hex(&summary.serial))
}

/// A stream fed by `produce` through a small channel.
fn async_stream<F, Fut>(produce: F) -> SyncStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<SyncResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
