//! The policy decision point: OPA's REST API (same paths, bodies and status
//! codes) over Rego policies evaluated in process, so that clients written for
//! OPA — `requests.post(".../v1/data/authz/allow", json={"input": …})`,
//! opa-python-client — work unchanged.
//!
//! - `POST /v1/data/{path}` with `{"input": …}` → `{"result": …}` (no `result`
//!   when the document is undefined); `GET /v1/data/{path}` without input;
//! - `POST /v0/data/{path}` with the input itself as the body → the value, or
//!   404 when undefined;
//! - `PUT|GET|DELETE /v1/policies/{id}`, `GET /v1/policies`;
//! - `GET /health`.
//!
//! Every `/v1` answer carries a `decision_id`. Errors have OPA's shape:
//! `{"code": "invalid_parameter" | "internal_error" | …, "message": …}`; an
//! evaluation that passes the time or memory limit is a 500 `internal_error`
//! (see `zt_policy::rego`). Policy writes are refused unless enabled, and a
//! bearer token can be required ([`access`]).

#![forbid(unsafe_code)]

pub mod access;
pub mod data;
pub mod ext_authz;

use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use zt_policy::rego::{ModuleError, RegoPolicies};

/// Largest request body, in bytes.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Most bytes of Rego text the PDP holds, all modules together (files and
/// PUTs): without it, PUTs under new ids would grow the set without end.
pub const MAX_MODULES_BYTES: usize = 64 << 20;

/// The policies being served; replaced whole on every policy change.
#[derive(Clone)]
pub struct Pdp {
    policies: Arc<RwLock<Arc<RegoPolicies>>>,
    /// Held while a change is compiled and swapped in: two PUTs at once both land.
    changing: Arc<Mutex<()>>,
    /// Every decision is appended here, if set (a failed write fails the query).
    log: Option<Arc<Mutex<zt_audit::Writer>>>,
    /// The bundle revisions served, for the log.
    revision: Option<String>,
    /// Who may do what through the API.
    access: access::Access,
}

impl std::fmt::Debug for Pdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pdp")
    }
}

impl Pdp {
    /// Serves `policies`.
    pub fn new(policies: RegoPolicies) -> Self {
        Self {
            policies: Arc::new(RwLock::new(Arc::new(policies))),
            changing: Arc::new(Mutex::new(())),
            log: None,
            revision: None,
            access: access::Access::default(),
        }
    }

    /// Lets the API do what `access` says (by default: no policy writes, no token).
    pub fn with_access(mut self, access: access::Access) -> Self {
        self.access = access;
        self
    }

    /// Records every decision in a hash-chained log, masked by the policies'
    /// `data.system.log.mask` (JSON pointers such as `/input/password`).
    pub fn with_decision_log(mut self, writer: zt_audit::Writer, revision: Option<String>) -> Self {
        self.log = Some(Arc::new(Mutex::new(writer)));
        self.revision = revision;
        self
    }

    /// Appends one decision to the log, if there is one.
    fn record(
        &self,
        policies: &RegoPolicies,
        id: &str,
        path: &str,
        input: Option<&Value>,
        result: Option<&Value>,
        eval_ns: u64,
    ) -> Result<(), ApiError> {
        let decision = match result {
            Some(Value::Bool(true)) => "ALLOW",
            Some(Value::Bool(false)) | None => "DENY",
            Some(_) => "RESULT",
        };
        let logged = Logged {
            id,
            query: path,
            input,
            result,
            decision,
            eval_ns,
        };
        self.record_with(policies, &logged, |_| {})
    }

    /// Appends one decision to the log, if there is one, masked by the
    /// policies' `data.system.log.mask`; `fill` adds what the caller knows of
    /// the request (ext_authz: principal, method, host, path).
    pub(crate) fn record_with(
        &self,
        policies: &RegoPolicies,
        logged: &Logged<'_>,
        fill: impl FnOnce(&mut zt_audit::Record),
    ) -> Result<(), ApiError> {
        let Some(log) = &self.log else { return Ok(()) };
        let Logged {
            id,
            query: path,
            input,
            result,
            decision,
            eval_ns,
        } = *logged;
        let mut logged_input = input.cloned();
        let mut logged_result = result.cloned();
        mask(policies, path, id, &mut logged_input, &mut logged_result);
        let mut record = zt_audit::Record {
            seq: 0,
            time_ms: zt_identity::clock::unix_millis(),
            id: id.to_owned(),
            source_principal: None,
            source_ip: None,
            destination: "pdp".into(),
            port: None,
            protocol: "http".into(),
            method: None,
            host: None,
            path: None,
            decision: decision.into(),
            mode: "pdp".into(),
            policy: None,
            reason: String::new(),
            policy_version: self.revision.clone().unwrap_or_default(),
            eval_ns,
            dry_run: None,
            audit: None,
            query: Some(path.to_owned()),
            input: logged_input,
            result: logged_result,
            revision: self.revision.clone(),
            request_principal: None,
            prev: String::new(),
            hash: String::new(),
        };
        fill(&mut record);
        let mut writer = log
            .lock()
            .map_err(|_| ApiError::internal("decision log lock poisoned".into()))?;
        writer.append([record]).map_err(|e| {
            tracing::error!(error = %e, "decision log write failed: the decision is refused");
            ApiError::internal("the decision could not be logged".into())
        })
    }

    pub(crate) fn current(&self) -> Result<Arc<RegoPolicies>, ApiError> {
        self.policies
            .read()
            .map(|p| p.clone())
            .map_err(|_| ApiError::internal("policy store lock poisoned".into()))
    }

    fn replace(&self, policies: RegoPolicies) -> Result<(), ApiError> {
        let mut current = self
            .policies
            .write()
            .map_err(|_| ApiError::internal("policy store lock poisoned".into()))?;
        *current = Arc::new(policies);
        Ok(())
    }

    /// OPA's REST API. `/health` answers anyone; every other route needs the
    /// token if one is set, and the policy writes need them enabled.
    pub fn router(self) -> Router {
        let writes = middleware::from_fn_with_state(self.clone(), access::writes);
        Router::new()
            .route("/v1/data", post(post_data_root).get(get_data_root))
            .route("/v1/data/", post(post_data_root).get(get_data_root))
            .route("/v1/data/{*path}", post(post_data).get(get_data))
            .route("/v0/data/{*path}", post(post_data_v0))
            .route("/v1/policies", get(list_policies))
            .route("/v1/policies/", get(list_policies))
            .route(
                "/v1/policies/{*id}",
                get(get_policy).merge(put(put_policy).delete(delete_policy).route_layer(writes)),
            )
            .route_layer(middleware::from_fn_with_state(self.clone(), access::authenticate))
            .route("/health", get(|| async { axum::Json(json!({})) }))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self)
    }
}

/// One decision, as the log records it.
pub(crate) struct Logged<'a> {
    /// The decision id given to the caller.
    pub id: &'a str,
    /// The rule asked, `a/b/c`.
    pub query: &'a str,
    pub input: Option<&'a Value>,
    pub result: Option<&'a Value>,
    /// `ALLOW`, `DENY` or `RESULT`.
    pub decision: &'static str,
    pub eval_ns: u64,
}

/// Where and how `serve` listens.
pub struct Listeners {
    /// OPA's REST API.
    pub http: std::net::SocketAddr,
    /// Envoy's ext_authz gRPC service, and the decision path it asks.
    pub ext_authz: Option<(std::net::SocketAddr, String)>,
    /// The decision log, and the bundle revisions to record in it.
    pub decision_log: Option<(zt_audit::Writer, Option<String>)>,
    /// Who may do what through the REST API.
    pub access: access::Access,
}

/// Serves OPA's REST API (and, if asked, Envoy's ext_authz) for `policies`
/// until `shutdown`. The error names the address that could not be bound.
pub async fn serve(
    listeners: Listeners,
    policies: RegoPolicies,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), (std::net::SocketAddr, std::io::Error)> {
    let mut pdp = Pdp::new(policies).with_access(listeners.access);
    if let Some((writer, revision)) = listeners.decision_log {
        let interval = writer.checkpoint_interval();
        if let Some(key) = writer.verifier() {
            tracing::info!(%key, "decision log checkpoints signed (zt audit verify --key)");
        }
        if writer.found_uncovered() > 0 {
            tracing::warn!(
                records = writer.found_uncovered(),
                "decision log records no checkpoint covers (a crash, or checkpoints removed): the next checkpoint signs them as found"
            );
        }
        pdp = pdp.with_decision_log(writer, revision);
        if let (Some(log), Some(interval)) = (&pdp.log, interval) {
            tokio::spawn(sign_checkpoints(Arc::downgrade(log), interval));
        }
    }
    let http = tokio::net::TcpListener::bind(listeners.http)
        .await
        .map_err(|e| (listeners.http, e))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let grpc = match &listeners.ext_authz {
        Some((addr, path)) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| (*addr, e))?;
            tracing::info!(%addr, %path, "serving Envoy's ext_authz");
            let service = envoy_types::ext_authz::v3::pb::AuthorizationServer::new(ext_authz::ExtAuthz::new(
                pdp.clone(),
                path,
            ));
            let mut stopped = stopped.clone();
            let addr = *addr;
            Some(tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                if let Err(e) = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
                {
                    tracing::error!(%addr, error = %e, "ext_authz server failed");
                }
            }))
        }
        None => None,
    };
    tracing::info!(addr = %listeners.http, "serving OPA's REST API");
    let served = axum::serve(http, pdp.router())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| (listeners.http, e));
    stop.send_replace(true);
    if let Some(grpc) = grpc {
        let _ = grpc.await;
    }
    served
}

/// Signs a checkpoint of the decision log once records have waited
/// `interval`, until the log is closed (its writer's drop signs the last).
async fn sign_checkpoints(log: std::sync::Weak<Mutex<zt_audit::Writer>>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval((interval / 4).max(std::time::Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(log) = log.upgrade() else { return };
        let Ok(mut writer) = log.lock() else { return };
        if let Err(e) = writer.checkpoint_if_due() {
            // The next decision's append fails too, and is refused.
            tracing::error!(error = %e, "signing a decision log checkpoint failed");
        }
    }
}

/// An error answer in OPA's shape.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: String) -> Self {
        Self {
            status,
            body: json!({"code": code, "message": message}),
        }
    }

    /// A body that could not be read: too large, say.
    fn body(rejection: BytesRejection) -> Self {
        Self::new(rejection.status(), "invalid_parameter", rejection.body_text())
    }

    fn invalid(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }

    fn internal(message: String) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// A module that does not parse: OPA's 400 with one error per problem.
    fn compile(errors: Vec<ModuleError>) -> Self {
        let errors: Vec<Value> = errors
            .into_iter()
            .map(|e| json!({"code": "rego_parse_error", "message": e.message, "location": {"file": e.id}}))
            .collect();
        Self {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "code": "invalid_parameter",
                "message": "error(s) occurred while compiling module(s)",
                "errors": errors,
            }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// 128 random bits in UUID form, as OPA's decision ids.
pub(crate) fn decision_id() -> String {
    let mut b = [0u8; 16];
    // The system RNG does not fail on Linux.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The input of a `/v1` request body: `{"input": …}`, or nothing.
fn v1_input(body: &Bytes) -> Result<Option<Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let mut request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("body contains malformed input document: {e}")))?;
    match request.as_object_mut() {
        Some(object) => Ok(object.remove("input")),
        None => Err(ApiError::invalid("body must be a JSON object".into())),
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Removes from the logged input and result what `data.system.log.mask` names
/// (JSON pointers under `/input` or `/result`). If the mask rule fails, the
/// whole input is erased: a secret never reaches the log by mistake.
fn mask(
    policies: &RegoPolicies,
    path: &str,
    id: &str,
    input: &mut Option<Value>,
    result: &mut Option<Value>,
) {
    let event = json!({"input": input, "result": result, "path": path, "decision_id": id});
    let pointers = match policies.query(&["system", "log", "mask"], Some(&event)) {
        Ok(None) => return,
        Ok(Some(Value::Array(pointers))) => pointers,
        Ok(Some(other)) => {
            tracing::warn!(mask = %other, "data.system.log.mask is not a set of JSON pointers: input erased");
            *input = Some(Value::String("(erased: invalid mask)".into()));
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "data.system.log.mask failed: input erased");
            *input = Some(Value::String("(erased: mask failed)".into()));
            return;
        }
    };
    for pointer in pointers.iter().filter_map(Value::as_str) {
        let (target, rest) = match (pointer.strip_prefix("/input"), pointer.strip_prefix("/result")) {
            (Some(rest), _) if rest.is_empty() || rest.starts_with('/') => (&mut *input, rest),
            (_, Some(rest)) if rest.is_empty() || rest.starts_with('/') => (&mut *result, rest),
            _ => continue,
        };
        let Some(value) = target.as_mut() else { continue };
        let Some((parent, last)) = rest.rsplit_once('/') else {
            *target = None;
            continue;
        };
        match value.pointer_mut(parent) {
            Some(Value::Object(object)) => {
                object.remove(&last.replace("~1", "/").replace("~0", "~"));
            }
            // Nothing there: nothing to hide.
            None => {}
            // Inside an array, say: it cannot be cut out, so all of it goes.
            Some(_) => *target = Some(Value::String("(erased: masked)".into())),
        }
    }
}

/// Evaluates and answers in `/v1` form.
fn v1_answer(pdp: &Pdp, path: &str, input: Option<Value>) -> ApiResult {
    let policies = pdp.current()?;
    let id = decision_id();
    let started = std::time::Instant::now();
    let result = policies
        .query(&segments(path), input.as_ref())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let eval_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    pdp.record(&policies, &id, path, input.as_ref(), result.as_ref(), eval_ns)?;
    let body = match result {
        Some(result) => json!({"result": result, "decision_id": id}),
        None => json!({"decision_id": id}),
    };
    Ok(axum::Json(body).into_response())
}

async fn post_data(
    State(pdp): State<Pdp>,
    Path(path): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(ApiError::body)?;
    v1_answer(&pdp, &path, v1_input(&body)?)
}

async fn get_data(State(pdp): State<Pdp>, Path(path): Path<String>) -> ApiResult {
    v1_answer(&pdp, &path, None)
}

async fn post_data_root(State(pdp): State<Pdp>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = body.map_err(ApiError::body)?;
    v1_answer(&pdp, "", v1_input(&body)?)
}

async fn get_data_root(State(pdp): State<Pdp>) -> ApiResult {
    v1_answer(&pdp, "", None)
}

/// `/v0`: the body is the input; the answer is the value itself.
async fn post_data_v0(
    State(pdp): State<Pdp>,
    Path(path): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(ApiError::body)?;
    let input: Option<Value> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::invalid(format!("body contains malformed input document: {e}")))?,
        )
    };
    let policies = pdp.current()?;
    match policies
        .query(&segments(&path), input.as_ref())
        .map_err(|e| ApiError::internal(e.to_string()))?
    {
        Some(value) => Ok(axum::Json(value).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "undefined_document",
            format!("document missing: data/{path}"),
        )),
    }
}

/// A policy as OPA lists it: its id, its text, and the package path of its AST
/// (clients build data URLs from it).
fn policy_json(policies: &RegoPolicies, id: &str, raw: &str) -> Value {
    let path: Vec<Value> = policies
        .package_of(id)
        .unwrap_or("data")
        .split('.')
        .enumerate()
        .map(|(i, part)| json!({"type": if i == 0 { "var" } else { "string" }, "value": part}))
        .collect();
    json!({"id": id, "raw": raw, "ast": {"package": {"path": path}}})
}

async fn list_policies(State(pdp): State<Pdp>) -> ApiResult {
    let policies = pdp.current()?;
    let list: Vec<Value> = policies
        .modules()
        .iter()
        .map(|(id, raw)| policy_json(&policies, id, raw))
        .collect();
    Ok(axum::Json(json!({"result": list})).into_response())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "resource_not_found",
        format!("storage_policy_not_found_error: policy id \"{id}\""),
    )
}

async fn get_policy(State(pdp): State<Pdp>, Path(id): Path<String>) -> ApiResult {
    let policies = pdp.current()?;
    let raw = policies.modules().get(&id).ok_or_else(|| not_found(&id))?;
    Ok(axum::Json(json!({"result": policy_json(&policies, &id, raw)})).into_response())
}

async fn put_policy(
    State(pdp): State<Pdp>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(ApiError::body)?;
    let text =
        std::str::from_utf8(&body).map_err(|e| ApiError::invalid(format!("policy is not UTF-8: {e}")))?;
    let _changing = pdp
        .changing
        .lock()
        .map_err(|_| ApiError::internal("policy store lock poisoned".into()))?;
    let policies = pdp.current()?;
    let held: usize = policies
        .modules()
        .iter()
        .filter(|(held, _)| **held != id)
        .map(|(_, text)| text.len())
        .sum();
    if held.saturating_add(text.len()) > MAX_MODULES_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_parameter",
            format!(
                "policies would hold {} bytes of Rego, more than the {MAX_MODULES_BYTES} the PDP keeps",
                held.saturating_add(text.len())
            ),
        ));
    }
    let updated = policies.with_module(&id, text).map_err(ApiError::compile)?;
    pdp.replace(updated)?;
    tracing::info!(target: "zt::audit", policy = %id, "Rego policy stored");
    Ok(axum::Json(json!({})).into_response())
}

async fn delete_policy(State(pdp): State<Pdp>, Path(id): Path<String>) -> ApiResult {
    let _changing = pdp
        .changing
        .lock()
        .map_err(|_| ApiError::internal("policy store lock poisoned".into()))?;
    let policies = pdp.current()?;
    let updated = policies
        .without_module(&id)
        .ok_or_else(|| not_found(&id))?
        .map_err(ApiError::compile)?;
    pdp.replace(updated)?;
    tracing::info!(target: "zt::audit", policy = %id, "Rego policy deleted");
    Ok(axum::Json(json!({})).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn masking(pointers: &str) -> RegoPolicies {
        RegoPolicies::compile(
            [(
                "mask.rego".to_owned(),
                format!("package system.log\n\nmask := {pointers}\n"),
            )]
            .into(),
            Value::Null,
            zt_policy::rego::DEFAULT_EVAL_LIMIT,
        )
        .unwrap()
    }

    #[test]
    fn masks_remove_fields_and_erase_what_they_cannot_cut() {
        let input = json!({"user": "alice", "password": "p", "inputs": 1, "cards": [{"number": "4111"}], "nested": {"token": "t"}});
        let run = |pointers: &str| {
            let (mut i, mut r) = (Some(input.clone()), Some(json!({"allow": true, "secret": 1})));
            mask(&masking(pointers), "authz/allow", "id", &mut i, &mut r);
            (i, r)
        };
        let (i, r) = run(r#"["/input/password", "/input/nested/token", "/result/secret", "/input/absent"]"#);
        assert_eq!(
            i,
            Some(json!({"user": "alice", "inputs": 1, "cards": [{"number": "4111"}], "nested": {}}))
        );
        assert_eq!(r, Some(json!({"allow": true})));
        // `/inputs` is not under `/input`.
        assert_eq!(run(r#"["/inputs"]"#).0, Some(input.clone()));
        // An array element cannot be cut out: the whole input goes.
        let (i, _) = run(r#"["/input/cards/0"]"#);
        assert_eq!(i, Some(json!("(erased: masked)")));
        assert_eq!(run(r#"["/input"]"#).0, None);
        // A mask that is not a set of pointers erases the input.
        assert_eq!(run(r#""oops""#).0, Some(json!("(erased: invalid mask)")));
    }
}
