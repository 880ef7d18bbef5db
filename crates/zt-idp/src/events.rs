//! Every authentication event — a sign-in that succeeded or failed (with the
//! factor and the reason), a token issued, refreshed or revoked, a refresh
//! token reused, a code replayed — appended to the hash-chained decision log
//! (`query: "idp/EVENT"`, the details in `input`) and counted in metrics.
//!
//! An event that cannot be logged fails what it records: a token the log
//! does not show is not issued (fail closed, as the PDP does).

use std::net::IpAddr;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Map, Value, json};

use crate::OAuthError;

/// Labels: what happened and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EventLabels {
    /// The event (`sign_in`, `token`, `refresh_reuse`, …).
    pub event: String,
    /// `success` or the OAuth error / failure reason code.
    pub result: String,
}

/// Label: how a back-channel logout delivery ended (`delivered`, `refused`,
/// `failed`, `queue_full`, `sign_error`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The outcome.
    pub result: String,
}

/// Label: how a person signed in (`passkey`, `password`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FactorLabels {
    /// The factor.
    pub factor: String,
}

fn sign_in_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// One authentication event.
#[derive(Debug, Clone)]
pub struct Event {
    /// `sign_in`, `token`, `revoke`, `refresh_reuse`, `code_replay`, …
    pub kind: &'static str,
    /// Whether it succeeded.
    pub allowed: bool,
    /// A short result code: `success`, or why not (`invalid_grant`, `bad_password`…).
    pub result: String,
    /// What a person reads in the log.
    pub reason: String,
    /// The source address.
    pub ip: Option<IpAddr>,
    /// The user's `sub`, the client, the session, the factor…
    pub details: Map<String, Value>,
}

impl Event {
    /// A successful event.
    pub fn success(kind: &'static str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            allowed: true,
            result: "success".into(),
            reason: reason.into(),
            ip: None,
            details: Map::new(),
        }
    }

    /// A refused or failed event.
    pub fn failure(kind: &'static str, result: &str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            allowed: false,
            result: result.into(),
            reason: reason.into(),
            ip: None,
            details: Map::new(),
        }
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// Sets the source address.
    pub fn from_ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }
}

/// The log and the counters.
pub struct Events {
    log: Option<Mutex<zt_audit::Writer>>,
    events: Family<EventLabels, Counter>,
    /// Time to answer the token endpoint, seconds.
    pub token_seconds: Histogram,
    /// Server time of a sign-in's last step (the assertion or password
    /// checked, the session opened, the request answered), by factor.
    sign_in_seconds: Family<FactorLabels, Histogram, fn() -> Histogram>,
    /// Logout tokens sent to clients (OpenID Connect Back-Channel Logout), by outcome.
    backchannel: Family<DeliveryLabels, Counter>,
}

impl Events {
    pub(crate) fn new(log: Option<zt_audit::Writer>) -> Self {
        Self {
            log: log.map(Mutex::new),
            events: Family::default(),
            token_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            sign_in_seconds: Family::new_with_constructor(sign_in_histogram),
            backchannel: Family::default(),
        }
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "events",
            "Authentication events (sign-ins, tokens issued, refreshed and revoked, reuse detected) by result",
            self.events.clone(),
        );
        registry.register(
            "token_seconds",
            "Time to answer a token request",
            self.token_seconds.clone(),
        );
        registry.register(
            "sign_in_seconds",
            "Server time of a sign-in's last step (assertion or password checked, session opened, request answered), by factor",
            self.sign_in_seconds.clone(),
        );
        registry.register(
            "backchannel_logout",
            "Logout tokens sent to clients' back-channel logout URIs, by outcome",
            self.backchannel.clone(),
        );
    }

    /// Counts one back-channel logout delivery's outcome.
    pub(crate) fn count_backchannel(&self, result: &str) {
        self.backchannel
            .get_or_create(&DeliveryLabels {
                result: result.into(),
            })
            .inc();
    }

    /// How many back-channel logout deliveries ended with `result` (for tests).
    pub fn backchannel_count(&self, result: &str) -> u64 {
        self.backchannel
            .get_or_create(&DeliveryLabels {
                result: result.into(),
            })
            .get()
    }

    /// Times one sign-in's last step with `factor`.
    pub fn observe_sign_in(&self, factor: &str, started: std::time::Instant) {
        self.sign_in_seconds
            .get_or_create(&FactorLabels {
                factor: factor.into(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// How many events of `kind` ended with `result` (for tests and `zt bench`).
    pub fn count(&self, kind: &str, result: &str) -> u64 {
        self.events
            .get_or_create(&EventLabels {
                event: kind.into(),
                result: result.into(),
            })
            .get()
    }

    /// Counts and logs an event. Fails only if the log cannot be written.
    pub fn record(&self, event: Event) -> Result<(), OAuthError> {
        self.events
            .get_or_create(&EventLabels {
                event: event.kind.into(),
                result: event.result.clone(),
            })
            .inc();
        let details = Value::Object(event.details.clone());
        if event.allowed {
            tracing::info!(event = event.kind, reason = %event.reason, %details, "idp");
        } else {
            tracing::warn!(event = event.kind, result = %event.result, reason = %event.reason, %details, "idp");
        }
        let Some(log) = &self.log else { return Ok(()) };
        let principal = event
            .details
            .get("sub")
            .or_else(|| event.details.get("client_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let record = zt_audit::Record {
            seq: 0,
            time_ms: zt_identity::clock::unix_millis(),
            id: crate::random_token()?,
            source_principal: principal,
            source_ip: event.ip.map(|ip| ip.to_string()),
            destination: "idp".into(),
            port: None,
            protocol: "oidc".into(),
            method: None,
            host: None,
            path: None,
            decision: if event.allowed { "ALLOW" } else { "DENY" }.into(),
            mode: "idp".into(),
            policy: None,
            reason: event.reason,
            policy_version: String::new(),
            eval_ns: 0,
            dry_run: None,
            audit: None,
            query: Some(format!("idp/{}", event.kind)),
            input: Some(Value::Object(event.details)),
            result: Some(json!(event.result)),
            revision: None,
            request_principal: None,
            prev: String::new(),
            hash: String::new(),
        };
        let mut writer = log
            .lock()
            .map_err(|_| OAuthError::server_error("decision log", "lock poisoned"))?;
        writer
            .append([record])
            .map_err(|e| OAuthError::server_error("writing the decision log", e))
    }

    /// Signs a checkpoint of the log if one is due (a timer calls this).
    pub fn checkpoint_if_due(&self) {
        if let Some(log) = &self.log
            && let Ok(mut writer) = log.lock()
            && let Err(e) = writer.checkpoint_if_due()
        {
            tracing::error!(error = %e, "signing a decision log checkpoint failed");
        }
    }
}
