//! Prometheus metrics of the control plane, and the HTTP endpoints for health.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use zt_store::Store;

use crate::authority::AuthorityManager;

/// Every metric of the server, registered under `zt_server_`.
pub struct Metrics {
    registry: Registry,
    /// Registration entries, refreshed on each scrape.
    pub entries: Gauge,
    /// Attested agents, refreshed on each scrape.
    pub agents: Gauge,
    /// Datastore operations that failed.
    pub datastore_errors: Counter,
    /// X.509-SVIDs signed.
    pub svids_signed: Counter,
    /// Time to sign one SVID, seconds.
    pub signing_seconds: Histogram,
    /// Decision-log checkpoints cosigned as their witness.
    pub checkpoints_cosigned: Counter,
    /// Shipments refused because the source presented a log key other than the
    /// one pinned for it.
    pub witness_key_refusals: Counter,
    /// Checkpoints refused: a bad signature or origin, a size beyond the records
    /// held or below the one witnessed, a root the records do not give.
    pub witness_checkpoint_refusals: Counter,
}

impl Metrics {
    /// Creates and registers every metric, with those of the background
    /// `tasks` and whatever `more` registers (the OpenID Provider's).
    pub fn new(tasks: &zt_task::Tasks, more: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::with_prefix("zt_server");
        tasks.register(&mut registry);
        more(&mut registry);
        let entries = Gauge::default();
        let agents = Gauge::default();
        let datastore_errors = Counter::default();
        let svids_signed = Counter::default();
        let signing_seconds = Histogram::new(exponential_buckets(0.000_01, 2.0, 16));
        let checkpoints_cosigned = Counter::default();
        let witness_key_refusals = Counter::default();
        let witness_checkpoint_refusals = Counter::default();
        registry.register(
            "checkpoints_cosigned",
            "Decision-log checkpoints cosigned as their witness",
            checkpoints_cosigned.clone(),
        );
        registry.register(
            "witness_key_refusals",
            "Shipped decisions refused: the source's log key is not the one pinned for it",
            witness_key_refusals.clone(),
        );
        registry.register(
            "witness_checkpoint_refusals",
            "Decision-log checkpoints refused by the witness (signature, origin, size or root)",
            witness_checkpoint_refusals.clone(),
        );
        registry.register("entries", "Registration entries", entries.clone());
        registry.register("agents", "Attested agents (banned ones included)", agents.clone());
        registry.register(
            "datastore_errors",
            "Datastore operations that failed",
            datastore_errors.clone(),
        );
        registry.register("svids_signed", "X.509-SVIDs signed", svids_signed.clone());
        registry.register(
            "signing_seconds",
            "Time to sign one X.509-SVID",
            signing_seconds.clone(),
        );
        Self {
            registry,
            entries,
            agents,
            datastore_errors,
            svids_signed,
            signing_seconds,
            checkpoints_cosigned,
            witness_key_refusals,
            witness_checkpoint_refusals,
        }
    }
}

/// What the health endpoints look at.
#[derive(Clone)]
pub(crate) struct HealthState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub tasks: zt_task::Tasks,
    pub authorities: Arc<AuthorityManager>,
}

/// `/healthz` (the process answers), `/readyz` (see [`ready`]) and `/metrics`.
pub(crate) fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .with_state(state)
}

/// Ready when the datastore answers, every background task runs (the change feed
/// included: a server that cannot hear the others' changes is not ready), and the
/// authorities served are those stored — re-read first if they are not, so that
/// every ready replica serves the same bundle.
async fn ready(State(state): State<HealthState>) -> impl IntoResponse {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"));
    if let Err(e) = state.store.count_entries().await {
        state.metrics.datastore_errors.inc();
        return unavailable(e.to_string());
    }
    let down = state.tasks.down();
    if !down.is_empty() {
        return unavailable(format!("background task down: {}", down.join(", ")));
    }
    let current = match state.authorities.is_current().await {
        Ok(true) => Ok(()),
        Ok(false) => state.authorities.tick().await,
        Err(e) => Err(e),
    };
    match current {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => unavailable(format!("signing authorities: {e}")),
    }
}

async fn scrape(State(state): State<HealthState>) -> impl IntoResponse {
    match (
        state.store.count_entries().await,
        state.store.count_agents().await,
    ) {
        (Ok(entries), Ok(agents)) => {
            state
                .metrics
                .entries
                .set(i64::try_from(entries).unwrap_or(i64::MAX));
            state
                .metrics
                .agents
                .set(i64::try_from(agents).unwrap_or(i64::MAX));
        }
        _ => {
            state.metrics.datastore_errors.inc();
        }
    }
    let mut text = String::new();
    match encode(&mut text, &state.metrics.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics encoding failed\n".to_owned(),
        ),
    }
}
