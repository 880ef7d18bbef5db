//! The proxy's admin port: `/healthz` (the process runs), `/readyz` (it holds an
//! SVID, so it can accept mTLS) and `/metrics` (Prometheus text format).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::identity::{Identity, IdentityWatch};

/// A connection's transport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transport {
    /// `mtls`, or `plaintext` (in PERMISSIVE or DISABLE mode).
    pub transport: &'static str,
}

/// Why a connection or request was refused: one of
/// [`crate::refusal::Refusal::LABELS`] (inbound), or why an outbound
/// connection failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// The label.
    pub reason: &'static str,
}

/// A response's status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    /// The code, e.g. `200`.
    pub code: u16,
}

/// An authorization decision, and whether it was enforced.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `ALLOW` or `DENY`.
    pub decision: &'static str,
    /// `enforce` or `permissive`.
    pub mode: &'static str,
}

/// A request authentication's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthnLabels {
    /// `valid`, `missing` or `invalid`.
    pub result: &'static str,
    /// For `invalid`, why (`expired`, `wrong_issuer`, `multiple_tokens`, …); else empty.
    pub reason: &'static str,
}

/// An inbound port and an mTLS mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MtlsLabels {
    /// The inbound listener's port.
    pub port: u16,
    /// `STRICT`, `PERMISSIVE` or `DISABLE`.
    pub mode: &'static str,
}

/// Every metric of the proxy, registered under `zt_proxy_`.
pub struct Metrics {
    registry: Registry,
    /// Connections that completed the handshake, by transport.
    pub connections: Family<Transport, Counter>,
    /// Connections and requests refused, by reason.
    pub refused: Family<Reason, Counter>,
    /// Responses, by status code.
    pub requests: Family<Status, Counter>,
    /// Time from a request's arrival to its response's headers, seconds.
    pub request_seconds: Histogram,
    /// Open connections closed because the peer's SVID was revoked.
    pub revoked_connections: Counter,
    /// Outbound mTLS connections established.
    pub outbound_connections: Counter,
    /// Outbound connections that failed, by reason.
    pub outbound_failed: Family<Reason, Counter>,
    /// Authorization decisions, by decision and mode.
    pub authz_decisions: Family<AuthzLabels, Counter>,
    /// Requests that met RequestAuthentication rules, by result and reason.
    pub request_authentication: Family<AuthnLabels, Counter>,
    /// Policy reloads that failed (the last good set stays in force).
    pub policy_reload_failures: Counter,
    /// The zt server policy version in force (`--policies-from-agent`); 0 before the first.
    pub policy_version: Gauge,
    /// Decision-log writes that failed.
    pub decision_log_failures: Counter,
    /// 1 while the workload's namespace is not known (no `--namespace`, and no
    /// `/ns/NS/` in the SPIFFE ID): no policy can be chosen, everything is denied.
    pub policy_namespace_unknown: Gauge,
    /// 1 for the mTLS mode in force on each inbound port, 0 for the others.
    pub mtls_mode: Family<MtlsLabels, Gauge>,
    /// Decisions logged here and not yet stored by zt server.
    pub decisions_unshipped: Gauge,
    /// Attempts to ship decisions to zt server that failed.
    pub decision_ship_failures: Counter,
    /// Times the unshipped backlog grew past its bound (nothing is dropped: it
    /// stays in the local log).
    pub decision_backlog_over_bound: Counter,
    /// The notBefore of the SVID in use, unix seconds; 0 while there is none.
    /// Read from the identity at each scrape.
    pub svid_not_before: Gauge,
    /// Its notAfter: with notBefore, tells an SVID that is not being rotated
    /// (past half its life) from one about to expire.
    pub svid_not_after: Gauge,
    /// The supervised background tasks.
    tasks: zt_task::Tasks,
}

impl Metrics {
    /// Creates and registers every metric, the supervised `tasks`' included.
    pub fn new(tasks: zt_task::Tasks) -> Self {
        Self::with_more(tasks, |_| {})
    }

    /// Like [`Metrics::new`], with `more` registering a component's own
    /// metrics (zt gateway's) in the same registry, under its own prefix.
    pub fn with_more(tasks: zt_task::Tasks, more: impl FnOnce(&mut Registry)) -> Self {
        let mut root = Registry::default();
        more(&mut root);
        let registry = root.sub_registry_with_prefix("zt_proxy");
        let metrics = Self {
            connections: Family::default(),
            refused: Family::default(),
            requests: Family::default(),
            request_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            revoked_connections: Counter::default(),
            outbound_connections: Counter::default(),
            outbound_failed: Family::default(),
            authz_decisions: Family::default(),
            request_authentication: Family::default(),
            policy_reload_failures: Counter::default(),
            policy_version: Gauge::default(),
            decision_log_failures: Counter::default(),
            policy_namespace_unknown: Gauge::default(),
            mtls_mode: Family::default(),
            decisions_unshipped: Gauge::default(),
            decision_ship_failures: Counter::default(),
            decision_backlog_over_bound: Counter::default(),
            svid_not_before: Gauge::default(),
            svid_not_after: Gauge::default(),
            tasks,
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Inbound connections that completed the handshake",
            metrics.connections.clone(),
        );
        // Every reason exposed from the start, at 0: the first refusal of a kind
        // then shows as an increase, which alerts (`increase(…) > 0`) look for.
        for reason in crate::refusal::Refusal::LABELS {
            let _ = metrics.refused.get_or_create(&Reason { reason });
        }
        registry.register(
            "refused",
            "Inbound connections and requests refused, by reason",
            metrics.refused.clone(),
        );
        registry.register("requests", "Responses, by status code", metrics.requests.clone());
        registry.register(
            "request_seconds",
            "Time from a request to its response headers",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "revoked_connections",
            "Open connections closed because the peer's SVID was revoked",
            metrics.revoked_connections.clone(),
        );
        registry.register(
            "outbound_connections",
            "Outbound mTLS connections established",
            metrics.outbound_connections.clone(),
        );
        registry.register(
            "outbound_failed",
            "Outbound connections that failed, by reason",
            metrics.outbound_failed.clone(),
        );
        registry.register(
            "authz_decisions",
            "Authorization decisions, by decision and mode",
            metrics.authz_decisions.clone(),
        );
        registry.register(
            "request_authentication",
            "Requests that met RequestAuthentication rules, by result (valid, missing, invalid) and reason",
            metrics.request_authentication.clone(),
        );
        registry.register(
            "policy_reload_failures",
            "Policy reloads that failed; the last good set stays in force",
            metrics.policy_reload_failures.clone(),
        );
        registry.register(
            "policy_version",
            "The zt server policy version in force (with --policies-from-agent); 0 before the first",
            metrics.policy_version.clone(),
        );
        registry.register(
            "decision_log_failures",
            "Decision-log writes that failed",
            metrics.decision_log_failures.clone(),
        );
        registry.register(
            "policy_namespace_unknown",
            "1 while the workload's namespace is not known (set --namespace): every request is denied",
            metrics.policy_namespace_unknown.clone(),
        );
        registry.register(
            "mtls_mode",
            "1 for the mTLS mode in force on each inbound port (PeerAuthentication, else --mode)",
            metrics.mtls_mode.clone(),
        );
        registry.register(
            "decisions_unshipped",
            "Decisions logged here and not yet stored by zt server",
            metrics.decisions_unshipped.clone(),
        );
        registry.register(
            "decision_ship_failures",
            "Attempts to ship decisions to zt server that failed",
            metrics.decision_ship_failures.clone(),
        );
        registry.register(
            "decision_backlog_over_bound",
            "Times the unshipped backlog grew past its bound (kept in the local log)",
            metrics.decision_backlog_over_bound.clone(),
        );
        registry.register(
            "svid_not_before_timestamp_seconds",
            "The notBefore of the proxy's SVID, unix seconds; 0 while it holds none",
            metrics.svid_not_before.clone(),
        );
        registry.register(
            "svid_not_after_timestamp_seconds",
            "The notAfter of the proxy's SVID, unix seconds; 0 while it holds none",
            metrics.svid_not_after.clone(),
        );
        metrics.tasks.register(registry);
        Self {
            registry: root,
            ..metrics
        }
    }

    /// Counts a refused connection.
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }

    /// Why the proxy, though it holds an SVID, would deny every request, or
    /// serve stale identity or policies.
    pub fn not_ready(&self) -> Option<String> {
        let down = self.tasks.down();
        if self.decision_log_failures.get() > 0 {
            Some(
                "the decision log cannot be written: every request is denied until the proxy restarts".into(),
            )
        } else if self.policy_namespace_unknown.get() > 0 {
            Some(
                "the workload's namespace is not known (its SPIFFE ID has no /ns/NS/): no policy applies and every request is denied; set --namespace".into(),
            )
        } else if !down.is_empty() {
            Some(format!(
                "background task(s) down, restarting: {}",
                down.join(", ")
            ))
        } else {
            None
        }
    }

    /// Counts a failed outbound connection.
    pub fn refuse_outbound(&self, reason: &'static str) {
        self.outbound_failed.get_or_create(&Reason { reason }).inc();
    }

    /// Sets the SVID gauges from the identity in use (both 0 without one).
    pub fn observe_identity(&self, identity: Option<&Identity>) {
        let seconds = |at: u64| i64::try_from(at).unwrap_or(i64::MAX);
        let (not_before, not_after) = identity.map_or((0, 0), |own| (own.not_before, own.not_after));
        self.svid_not_before.set(seconds(not_before));
        self.svid_not_after.set(seconds(not_after));
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Serves the admin endpoints on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    identity: IdentityWatch,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let (identity, metrics) = (identity.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let answer = answer(request.uri().path(), &identity, &metrics);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer(path: &str, identity: &IdentityWatch, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match (identity.borrow().as_ref(), metrics.not_ready()) {
            (Some(identity), None) => (StatusCode::OK, format!("ready: {}\n", identity.spiffe_id)),
            (Some(_), Some(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
            (None, _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no SVID yet\n".to_owned(),
            ),
        },
        "/metrics" => {
            metrics.observe_identity(identity.borrow().as_deref());
            match metrics.encode() {
                Ok(text) => (StatusCode::OK, text),
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n".to_owned()),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let content_type = if path == "/metrics" {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    /// The value of the sample named `name` (no labels) in the exposition.
    fn sample(metrics: &Metrics, name: &str) -> i64 {
        let text = metrics.encode().unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap()
    }

    #[test]
    fn the_svid_gauges_follow_the_identity_in_use() {
        let now = zt_identity::clock::unix_seconds();
        let hour = std::time::Duration::from_secs(3600);
        let ca = zt_ca::Authority::generate(
            zt_identity::TrustDomain::parse("example.org").unwrap(),
            zt_ca::KeyType::default(),
            hour,
            now,
        )
        .unwrap();
        let request = zt_ca::SvidRequest {
            spiffe_id: zt_identity::SpiffeId::parse("spiffe://example.org/billing").unwrap(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            ttl: hour,
        };
        let issued = ca.issue_x509_svid(&request, now).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, bundle) = (dir.path().join("c"), dir.path().join("k"), dir.path().join("b"));
        let chain: String = issued.chain.iter().map(zt_identity::x509::to_pem).collect();
        std::fs::write(&cert, chain).unwrap();
        std::fs::write(&key, &issued.private_key_pem).unwrap();
        std::fs::write(&bundle, ca.certificate_pem()).unwrap();
        let identity = crate::identity::load_files(&cert, &key, &bundle).unwrap();
        assert_eq!(identity.not_after, issued.not_after);

        let metrics = Metrics::new(zt_task::Tasks::new());
        metrics.observe_identity(None);
        assert_eq!(sample(&metrics, "zt_proxy_svid_not_after_timestamp_seconds"), 0);
        assert_eq!(sample(&metrics, "zt_proxy_svid_not_before_timestamp_seconds"), 0);
        metrics.observe_identity(Some(&identity));
        let not_after = sample(&metrics, "zt_proxy_svid_not_after_timestamp_seconds");
        let not_before = sample(&metrics, "zt_proxy_svid_not_before_timestamp_seconds");
        assert_eq!(u64::try_from(not_after).unwrap(), issued.not_after);
        assert!(not_before <= i64::try_from(now).unwrap() && not_after - not_before >= 3600);
    }
}
