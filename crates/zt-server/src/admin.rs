//! The admin API: HTTP/1.1 + JSON on a Unix socket in the data directory. The
//! socket's file permissions (0600, in a 0700 directory) are the access control,
//! as with SPIRE's private socket.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use zt_identity::{SpiffeId, TrustDomain};
use zt_store::{EntrySpec, Store, StoreError};

use crate::api::{
    AgentList, AppliedPolicies, ApplyPolicies, BundleFormat, BundleQuery, Count, CreateJoinToken,
    DecisionList, DecisionPage, EntryFilter, EntryList, ErrorBody, ForgetSourceKey, ForgottenSourceKey,
    JoinToken, MintX509Svid, MintedX509Svid, RevocationList, Revoke, Rotated, ShippedDecision, UpdateEntry,
    WitnessKey,
};
use crate::authority::{AuthorityError, AuthorityManager};
use crate::entries::EntryCache;
use crate::metrics::Metrics;
use crate::signing::{SignError, Signer};
use crate::witness::Witness;
use crate::{ServerError, now};

/// Largest request body accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest policy set accepted, in bytes of JSON.
pub const MAX_POLICY_BYTES: usize = 16 << 20;

/// Longest lifetime of a minted SVID: one day (the authority's own life cuts it shorter).
const MAX_MINT_TTL: u64 = 24 * 3600;

/// Longest join token validity accepted: one day.
const MAX_JOIN_TOKEN_TTL: u64 = 24 * 3600;

/// What every admin handler needs.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub store: Store,
    pub trust_domain: TrustDomain,
    pub metrics: Arc<Metrics>,
    pub authorities: Arc<AuthorityManager>,
    pub cache: Arc<EntryCache>,
    pub witness: Arc<Witness>,
    /// The OpenID Provider, when it runs: its issuer (for enrollment links)
    /// and its authentication-event log (for what admins do to people).
    pub idp: Option<zt_idp::Provider>,
    /// Device trust, when it runs: the live tiers.
    pub devices: Option<Arc<crate::devices::Devices>>,
}

/// The admin API's routes.
pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/entries", post(create_entry).get(list_entries))
        .route("/v1/entries/count", get(count_entries))
        .route(
            "/v1/entries/{id}",
            get(show_entry).put(update_entry).delete(delete_entry),
        )
        .route("/v1/join-tokens", post(create_join_token))
        .route("/v1/svids/x509", post(mint_x509_svid))
        .route("/v1/bundle", get(show_bundle))
        .route("/v1/revocations", post(revoke).get(list_revocations))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", get(show_agent))
        .route("/v1/agents/{id}/evict", post(evict_agent))
        .route("/v1/agents/{id}/ban", post(ban_agent))
        .route("/v1/ca/rotate", post(rotate_ca))
        .route("/v1/decisions", get(list_decisions))
        .route("/v1/witness/key", get(show_witness_key))
        .route("/v1/witness/forget", post(forget_source_key))
        .merge(crate::people::routes())
        .merge(crate::devices::admin_routes())
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .merge(
            Router::new()
                .route(
                    "/v1/policies",
                    axum::routing::put(apply_policies).get(show_policies),
                )
                .layer(DefaultBodyLimit::max(MAX_POLICY_BYTES)),
        )
        .with_state(state)
}

/// Binds the admin socket at `path` (replacing a stale one) with mode 0600.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        // A socket left by a server that died; a live server would still hold it,
        // which the caller checks with its data-dir lock before getting here.
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// An error answer: status and one line.
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn store_error(metrics: &Metrics, e: StoreError) -> ApiError {
    let status = match &e {
        StoreError::Invalid(_)
        | StoreError::JoinToken(_)
        | StoreError::DeviceToken(_)
        | StoreError::InvalidSerial(_)
        | StoreError::BrokenChain { .. }
        | StoreError::InvalidValue { .. }
        | StoreError::Invite(_) => StatusCode::BAD_REQUEST,
        StoreError::NotFound(_) | StoreError::UnknownAgent(_) | StoreError::Missing { .. } => {
            StatusCode::NOT_FOUND
        }
        StoreError::Banned(_) => StatusCode::FORBIDDEN,
        StoreError::AlreadyExists { .. }
        | StoreError::StaleRevision { .. }
        | StoreError::Duplicate { .. }
        | StoreError::Disabled(_) => StatusCode::CONFLICT,
        StoreError::Database(_) => {
            metrics.datastore_errors.inc();
            tracing::error!(error = %e, "datastore error");
            StatusCode::SERVICE_UNAVAILABLE
        }
        StoreError::Location(_)
        | StoreError::File(_)
        | StoreError::SchemaTooNew { .. }
        | StoreError::Corrupt { .. }
        | StoreError::Hash(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(status, e.to_string())
}

/// Parses a JSON body, with serde's message (field, line, column) on failure.
pub(crate) fn json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

fn parse_id(field: &str, value: &str) -> ApiResult<SpiffeId> {
    SpiffeId::parse(value).map_err(|e| ApiError::bad_request(format!("{field} {value:?}: {e}")))
}

/// Entries are for this server's trust domain only, and never name an ID
/// zt reserves.
fn check_trust_domain(state: &AdminState, spec: &EntrySpec) -> ApiResult<()> {
    if spec.spiffe_id.trust_domain() != &state.trust_domain {
        return Err(ApiError::bad_request(format!(
            "spiffe_id {}: not in this server's trust domain {}",
            spec.spiffe_id, state.trust_domain
        )));
    }
    check_not_reserved(&spec.spiffe_id)
}

/// Refuses an ID zt gives only to its own parts or to enrolled devices: a
/// workload holding one could pass for zt server, or for a person's device.
fn check_not_reserved(id: &SpiffeId) -> ApiResult<()> {
    match id.reserved_for() {
        Some(whom) => Err(ApiError::bad_request(format!(
            "spiffe_id {id}: reserved for {whom}"
        ))),
        None => Ok(()),
    }
}

async fn create_entry(State(state): State<AdminState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: EntrySpec = json(&body)?;
    check_trust_domain(&state, &spec)?;
    let entry = state
        .store
        .create_entry(spec, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", entry = %entry.id, spiffe_id = %entry.spec.spiffe_id, "entry created");
    Ok((StatusCode::CREATED, axum::Json(entry)))
}

async fn list_entries(
    State(state): State<AdminState>,
    Query(filter): Query<EntryFilter>,
) -> ApiResult<axum::Json<EntryList>> {
    let spiffe_id = filter
        .spiffe_id
        .as_deref()
        .map(|v| parse_id("spiffe_id", v))
        .transpose()?;
    let parent_id = filter
        .parent_id
        .as_deref()
        .map(|v| parse_id("parent_id", v))
        .transpose()?;
    let entries = state
        .store
        .list_entries(spiffe_id.as_ref(), parent_id.as_ref())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(EntryList { entries }))
}

async fn count_entries(State(state): State<AdminState>) -> ApiResult<axum::Json<Count>> {
    let count = state
        .store
        .count_entries()
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(Count { count }))
}

async fn show_entry(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    match state
        .store
        .entry(&id)
        .await
        .map_err(|e| store_error(&state.metrics, e))?
    {
        Some(entry) => Ok(axum::Json(entry)),
        None => Err(store_error(&state.metrics, StoreError::NotFound(id))),
    }
}

async fn update_entry(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let update: UpdateEntry = json(&body)?;
    check_trust_domain(&state, &update.spec)?;
    let entry = state
        .store
        .update_entry(&id, update.revision, update.spec, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", entry = %entry.id, revision = entry.revision, "entry updated");
    Ok(axum::Json(entry))
}

async fn delete_entry(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    let entry = state
        .store
        .delete_entry(&id, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", entry = %entry.id, "entry deleted");
    Ok(axum::Json(entry))
}

async fn create_join_token(State(state): State<AdminState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let request: CreateJoinToken = json(&body)?;
    if request.ttl_secs == 0 || request.ttl_secs > MAX_JOIN_TOKEN_TTL {
        return Err(ApiError::bad_request(format!(
            "ttl {}s is not between 1s and {MAX_JOIN_TOKEN_TTL}s ({}h)",
            request.ttl_secs,
            MAX_JOIN_TOKEN_TTL / 3600
        )));
    }
    let spiffe_id = request
        .spiffe_id
        .as_deref()
        .map(|v| parse_id("spiffe_id", v))
        .transpose()?;
    if let Some(id) = &spiffe_id
        && (id.trust_domain() != &state.trust_domain || id.is_root())
    {
        return Err(ApiError::bad_request(format!(
            "spiffe_id {id}: an agent ID needs a path in trust domain {}",
            state.trust_domain
        )));
    }
    // Agents may be named under /zt/agent/, as zt names them by default.
    if let Some(id) = &spiffe_id
        && !id.path().starts_with("/zt/agent/")
    {
        check_not_reserved(id)?;
    }
    let now = now();
    let token = state
        .store
        .create_join_token(spiffe_id.as_ref(), Duration::from_secs(request.ttl_secs), now)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    let agent = spiffe_id.map(|id| id.to_string()).unwrap_or_default();
    tracing::info!(target: "zt::audit", agent, "join token created");
    Ok((
        StatusCode::CREATED,
        axum::Json(JoinToken {
            token,
            expires_at: now + request.ttl_secs,
        }),
    ))
}

async fn mint_x509_svid(
    State(state): State<AdminState>,
    body: Bytes,
) -> ApiResult<(StatusCode, axum::Json<MintedX509Svid>)> {
    use base64::Engine as _;
    let request: MintX509Svid = json(&body)?;
    let spiffe_id = parse_id("spiffe_id", &request.spiffe_id)?;
    if spiffe_id.trust_domain() != &state.trust_domain {
        return Err(ApiError::bad_request(format!(
            "spiffe_id {spiffe_id}: not in this server's trust domain {}",
            state.trust_domain
        )));
    }
    if spiffe_id.is_root() {
        return Err(ApiError::bad_request(format!(
            "spiffe_id {spiffe_id}: an SVID needs a path"
        )));
    }
    check_not_reserved(&spiffe_id)?;
    if request.ttl_secs == 0 || request.ttl_secs > MAX_MINT_TTL {
        return Err(ApiError::bad_request(format!(
            "ttl {}s is not between 1s and {MAX_MINT_TTL}s ({}h)",
            request.ttl_secs,
            MAX_MINT_TTL / 3600
        )));
    }
    let csr = base64::engine::general_purpose::STANDARD
        .decode(request.csr.trim())
        .map_err(|e| ApiError::bad_request(format!("csr: not base64: {e}")))?;
    let signer = Signer {
        authorities: &state.authorities,
        cache: &state.cache,
        metrics: &state.metrics,
    };
    let signed = signer
        .sign(
            &csr,
            &spiffe_id,
            Duration::from_secs(request.ttl_secs),
            &request.dns_names,
        )
        .map_err(|e| match e {
            SignError::Revoked(_) => ApiError(StatusCode::FORBIDDEN, e.to_string()),
            SignError::Invalid(_) => ApiError::bad_request(e.to_string()),
        })?;
    let leaf = signed
        .chain
        .first()
        .ok_or_else(|| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "signed an empty chain".into()))?;
    let summary = zt_identity::x509::summarize(leaf)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let serial = crate::server_tls::serial_hex(&summary.serial);
    tracing::info!(target: "zt::audit", spiffe_id = %spiffe_id, %serial, "X.509-SVID minted");
    Ok((
        StatusCode::CREATED,
        axum::Json(MintedX509Svid {
            chain_pem: signed.chain.iter().map(zt_identity::x509::to_pem).collect(),
            bundle_pem: state.authorities.current().bundle.to_pem(),
            serial,
            expires_at: signed.not_after,
        }),
    ))
}

async fn show_bundle(
    State(state): State<AdminState>,
    Query(query): Query<BundleQuery>,
) -> ApiResult<Response> {
    let bundle = &state.authorities.current().bundle;
    match query.format.unwrap_or_default() {
        BundleFormat::Pem => Ok(bundle.to_pem().into_response()),
        BundleFormat::Jwks => {
            let jwks = bundle
                .to_jwks()
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok((
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                jwks + "\n",
            )
                .into_response())
        }
    }
}

async fn rotate_ca(State(state): State<AdminState>) -> ApiResult<axum::Json<Rotated>> {
    state.authorities.rotate_now().await.map_err(|e| match e {
        AuthorityError::Store(e) => store_error(&state.metrics, e),
        other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    let current = state.authorities.current();
    let summary = zt_identity::x509::summarize(current.active.certificate())
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(Rotated {
        serial: zt_identity::x509::hex_compact(&summary.serial),
        not_after: summary.not_after,
        authorities: current.bundle.x509_authorities().len(),
    }))
}

/// How long an ID revocation is kept: longer than any SVID of that ID can live.
const ID_REVOCATION_LIFE: u64 = zt_store::model::MAX_TTL_SECS;

async fn revoke(State(state): State<AdminState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let request: Revoke = json(&body)?;
    let now = now();
    let revocation = match (&request.serial, &request.spiffe_id) {
        (Some(serial), None) => {
            state
                .store
                .revoke_serial(serial, now + ID_REVOCATION_LIFE, &request.reason, now)
                .await
        }
        (None, Some(id)) => {
            let id = parse_id("spiffe_id", id)?;
            state
                .store
                .revoke_spiffe_id(&id, now + ID_REVOCATION_LIFE, &request.reason, now)
                .await
        }
        _ => return Err(ApiError::bad_request("give exactly one of serial and spiffe_id")),
    }
    .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", revoked = ?revocation.revoked, reason = %revocation.reason, "revoked");
    Ok((StatusCode::CREATED, axum::Json(revocation)))
}

/// Checks the set as `zt policy lint` does (nothing invalid is ever stored, so
/// no agent is ever handed it) and stores it as the next version.
async fn apply_policies(State(state): State<AdminState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let request: ApplyPolicies = json(&body)?;
    let sources: Vec<zt_policy::load::Source> = request
        .files
        .iter()
        .map(|f| zt_policy::load::Source {
            name: f.name.clone().into(),
            text: f.text.clone(),
        })
        .collect();
    zt_policy::load::parse(&sources).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (version, changed) = state
        .store
        .store_policies(request.files, now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    if changed {
        tracing::info!(target: "zt::audit", version = version.version, digest = %version.digest, files = version.files.len(), "policies applied");
    }
    let status = if changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(AppliedPolicies {
            version: version.version,
            digest: version.digest,
            changed,
        }),
    ))
}

async fn show_policies(State(state): State<AdminState>) -> ApiResult<axum::Json<zt_store::PolicyVersion>> {
    match state.store.latest_policies().await {
        Ok(Some(version)) => Ok(axum::Json(version)),
        Ok(None) => Err(ApiError(StatusCode::NOT_FOUND, "no policies applied yet".into())),
        Err(e) => Err(store_error(&state.metrics, e)),
    }
}

async fn list_decisions(
    State(state): State<AdminState>,
    Query(page): Query<DecisionPage>,
) -> ApiResult<axum::Json<DecisionList>> {
    let rows = state
        .store
        .decisions((&page.after_source, page.after_seq), zt_store::MAX_DECISIONS_PAGE)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(DecisionList {
        decisions: rows
            .into_iter()
            .map(|(source, record)| ShippedDecision { source, record })
            .collect(),
    }))
}

async fn show_witness_key(State(state): State<AdminState>) -> axum::Json<WitnessKey> {
    axum::Json(WitnessKey {
        verifier_key: state.witness.verifier().to_string(),
    })
}

/// Forgets the log key pinned for a source: its next key is pinned on first use.
async fn forget_source_key(
    State(state): State<AdminState>,
    body: Bytes,
) -> ApiResult<axum::Json<ForgottenSourceKey>> {
    let request: ForgetSourceKey = json(&body)?;
    let forgotten = state
        .store
        .forget_source_key(&request.source)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    match forgotten {
        Some(verifier_key) => {
            tracing::warn!(target: "zt::audit", source = %request.source, verifier_key, "decision log key forgotten: the next one this source presents is pinned");
            Ok(axum::Json(ForgottenSourceKey {
                source: request.source,
                verifier_key,
            }))
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no decision log key is pinned for {:?}", request.source),
        )),
    }
}

async fn list_revocations(State(state): State<AdminState>) -> ApiResult<axum::Json<RevocationList>> {
    let revocations = state
        .store
        .revocations(now())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(RevocationList { revocations }))
}

async fn list_agents(State(state): State<AdminState>) -> ApiResult<axum::Json<AgentList>> {
    let agents = state
        .store
        .list_agents()
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(AgentList { agents }))
}

async fn show_agent(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    match state
        .store
        .agent(&id)
        .await
        .map_err(|e| store_error(&state.metrics, e))?
    {
        Some(agent) => Ok(axum::Json(agent)),
        None => Err(store_error(&state.metrics, StoreError::UnknownAgent(id))),
    }
}

async fn evict_agent(state: State<AdminState>, id: UrlPath<String>) -> ApiResult<impl IntoResponse> {
    remove_agent(state, id, false).await
}

async fn ban_agent(state: State<AdminState>, id: UrlPath<String>) -> ApiResult<impl IntoResponse> {
    remove_agent(state, id, true).await
}

/// Evicts (and with `ban`, bans) an agent and revokes its current SVID at once.
async fn remove_agent(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
    ban: bool,
) -> ApiResult<impl IntoResponse> {
    let now = now();
    let agent = state
        .store
        .evict_agent(&id, ban, now)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    if !agent.serial.is_empty() {
        state
            .store
            .revoke_serial(
                &agent.serial,
                agent.not_after.max(now + 1),
                if ban { "agent banned" } else { "agent evicted" },
                now,
            )
            .await
            .map_err(|e| store_error(&state.metrics, e))?;
    }
    tracing::info!(target: "zt::audit", agent = %id, ban, "agent evicted and its SVID revoked");
    Ok(axum::Json(agent))
}
