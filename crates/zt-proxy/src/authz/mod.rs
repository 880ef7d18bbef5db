//! Authorization of every request (and every TCP connection) by Istio
//! AuthorizationPolicies — from a directory reloaded when it changes, or from
//! zt server through zt agent — with every decision recorded in the
//! hash-chained decision log, which is shipped to zt server when there is one.
//!
//! The workload's namespace comes from `--namespace`, or else from the proxy's
//! own Istio-style SPIFFE ID (`/ns/NS/sa/SA`); its labels from `--label`. Until
//! both the policies and the namespace are known, every request is denied. A
//! set that does not load keeps the last good one in force. In `permissive`
//! mode a DENY is recorded and let through: observe first, enforce later.
//!
//! The same sets carry PeerAuthentications: the mTLS mode they give each
//! inbound port is resolved with the rest, once per change, and read by every
//! new connection ([`Authorizer::mtls_mode`]); and RequestAuthentications:
//! the JWT rules of the workload, ready to verify ([`Authorizer::authentication`]).

pub(crate) mod authn;
mod decision_log;
mod policies;
mod providers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use zt_policy::{Request, Verdict};
use zt_task::Tasks;

pub use self::providers::RegoProviders;
use crate::admin::{AuthzLabels, Metrics};
use crate::identity::IdentityWatch;
use crate::refusal::Refusal;

/// Istio's migration modes for authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyMode {
    /// A DENY is a 403 (HTTP) or a closed connection (TCP).
    #[default]
    Enforce,
    /// Everything is evaluated and recorded; a DENY is let through.
    Permissive,
}

impl PolicyMode {
    fn label(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Permissive => "permissive",
        }
    }
}

/// Where the policies come from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A directory of policy files, polled for changes (standalone, no server).
    Dir(PathBuf),
    /// zt agent on this Workload API socket, which has them from zt server
    /// (`zt policy apply`); until the first version arrives, everything is denied.
    Agent(PathBuf),
}

/// How authorization is set up.
#[derive(Debug, Clone)]
pub struct AuthzConfig {
    /// Where the policies come from.
    pub source: PolicySource,
    /// Enforce or only record.
    pub mode: PolicyMode,
    /// The workload's namespace; `None`: from the SPIFFE ID.
    pub namespace: Option<String>,
    /// The workload's labels.
    pub labels: BTreeMap<String, String>,
    /// Policies in this namespace apply to every workload.
    pub root_namespace: String,
    /// The hash-chained decision log, if any.
    pub decision_log: Option<PathBuf>,
    /// The key that signs the log's checkpoints; `None`: `LOG.key`, created on
    /// first use.
    pub decision_log_key: Option<PathBuf>,
    /// When the log's checkpoints are signed.
    pub checkpoints: zt_audit::CheckpointPolicy,
    /// Rego rules that decide for CUSTOM policies, by provider name.
    pub providers: Option<Arc<RegoProviders>>,
    /// Roots trusted for RequestAuthentication `jwksUri` fetches besides the
    /// SPIFFE trust bundles (`--jwks-ca`).
    pub jwks_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Why authorization could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// The policies do not load: every problem, one per line.
    #[error("--policy-dir {dir}:\n{problems}")]
    Policies {
        /// The directory.
        dir: String,
        /// `file:line: field: problem` lines.
        problems: String,
    },
    /// The decision log cannot be opened or does not verify.
    #[error("--decision-log: {0}")]
    Log(#[from] zt_audit::AuditError),
}

/// Decides requests; shared by every connection of a listener.
pub struct Authorizer {
    in_force: policies::InForceWatch,
    mode: PolicyMode,
    providers: Option<Arc<RegoProviders>>,
    log: Option<mpsc::Sender<zt_audit::Record>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authorizer({:?})", self.mode)
    }
}

/// One request decided: what the policies said, and whether it may pass.
#[derive(Debug)]
pub struct Decision {
    /// What the policies said.
    pub verdict: zt_policy::Decision,
    /// Whether the request may pass: an ALLOW, or a DENY in permissive mode.
    pub passes: bool,
    /// The policy version that decided (`v3`, `dir:…`, `none`).
    version: Arc<str>,
    /// The workload decided for (`ns/app`).
    destination: Arc<str>,
    /// How long evaluation took.
    eval_ns: u64,
}

impl Decision {
    /// The refusal, when the request may not pass.
    pub fn refusal(&self) -> Option<Refusal> {
        (!self.passes).then(|| Refusal::DeniedByPolicy {
            policy: self.verdict.policy.clone(),
            reason: self.verdict.reason.clone(),
        })
    }
}

impl Authorizer {
    /// Starts following the policies (a policy directory must load now),
    /// opens the decision log, and ships it when the policies come from zt
    /// agent; every task supervised in `tasks`.
    pub fn start(
        config: AuthzConfig,
        identity: IdentityWatch,
        metrics: Arc<Metrics>,
        tasks: &Tasks,
        stop: &watch::Receiver<bool>,
    ) -> Result<Self, AuthzError> {
        let in_force = policies::follow(&config, identity, &metrics, tasks, stop)?;
        let log = match &config.decision_log {
            Some(path) => Some(decision_log::start(&config, path, &metrics, tasks, stop)?),
            None => None,
        };
        Ok(Self {
            in_force,
            mode: config.mode,
            providers: config.providers.clone(),
            log,
            metrics,
        })
    }

    /// The mTLS mode the PeerAuthentications in force give the inbound
    /// `port`; `None`: none applies (or none is in force yet), `--mode` does.
    pub fn mtls_mode(&self, port: u16) -> Option<zt_policy::MtlsMode> {
        policies::mtls_mode(&self.in_force, port)
    }

    /// The RequestAuthentication rules in force for the workload; `None`
    /// while no policies are.
    pub(crate) fn authentication(&self) -> Option<Arc<authn::Rules>> {
        self.in_force
            .borrow()
            .as_ref()
            .map(|in_force| in_force.authn.clone())
    }

    /// The mTLS modes in force, to follow as they change.
    pub(crate) fn mtls_changes(&self) -> policies::MtlsChanges {
        policies::MtlsChanges(self.in_force.clone())
    }

    /// Decides `request` by the policies in force (everything is denied
    /// until there are some).
    pub fn decide(&self, request: &Request) -> Decision {
        let started = Instant::now();
        let in_force = self.in_force.borrow().clone();
        let (verdict, version, destination) = match &in_force {
            Some(in_force) => (
                in_force.policies.evaluate_with(
                    request,
                    self.providers
                        .as_deref()
                        .map(|p| p as &dyn zt_policy::ExternalAuthorizer),
                ),
                in_force.version.clone(),
                in_force.destination.clone(),
            ),
            None => (
                zt_policy::Decision {
                    decision: Verdict::Deny,
                    policy: None,
                    reason:
                        "no policies in force yet (none received, or the workload's namespace is not known)"
                            .into(),
                    audit: None,
                    dry_run: None,
                },
                Arc::from("none"),
                Arc::from("unknown"),
            ),
        };
        let passes = verdict.decision == Verdict::Allow || self.mode == PolicyMode::Permissive;
        Decision {
            verdict,
            passes,
            version,
            destination,
            eval_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Records `decision`: counted, and appended to the decision log (waiting
    /// when the writer is behind, so no decision is dropped). A log that
    /// cannot be written refuses the request: fail closed.
    pub async fn record(&self, request: &Request, decision: &Decision) -> Result<(), Refusal> {
        let verdict = match decision.verdict.decision {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
        };
        self.metrics
            .authz_decisions
            .get_or_create(&AuthzLabels {
                decision: verdict,
                mode: self.mode.label(),
            })
            .inc();
        let Some(log) = &self.log else {
            return Ok(());
        };
        if log
            .send(decision_log::record(
                request,
                decision,
                verdict,
                self.mode.label(),
            ))
            .await
            .is_err()
        {
            // The writer is gone (its file failed).
            self.metrics.decision_log_failures.inc();
            return Err(Refusal::DecisionLogFailed);
        }
        Ok(())
    }

    /// Decides and records `request`: `Ok` when it may pass.
    pub async fn authorize(&self, request: &Request) -> Result<Decision, Refusal> {
        let decision = self.decide(request);
        self.record(request, &decision).await?;
        if let Some(refusal) = decision.refusal() {
            return Err(refusal);
        }
        if decision.verdict.decision == Verdict::Deny {
            let http = request.request.as_ref();
            tracing::info!(
                target: "zt::access",
                peer = request.source.principal.as_deref().unwrap_or("plaintext"),
                method = http.map(|h| h.method.as_str()),
                path = http.map(|h| decision_log::without_query(&h.path)),
                policy = decision.verdict.policy.as_deref(),
                reason = %decision.verdict.reason,
                "authorization: DENY, let through (permissive mode)"
            );
        }
        Ok(decision)
    }
}
