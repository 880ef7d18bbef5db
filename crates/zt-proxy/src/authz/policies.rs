//! The policies in force for this workload, kept current: a directory
//! reloaded when it changes, or zt agent's policy stream (from zt server),
//! combined with the workload's namespace and labels — the
//! AuthorizationPolicies that decide its requests, the mTLS modes its
//! PeerAuthentications give its ports, and its RequestAuthentications' JWT rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use zt_policy::{
    MtlsMode, PeerAuthentications, PolicySet, RequestAuthentications, WorkloadMtls, WorkloadPolicies,
};

use super::AuthzConfig;
use crate::admin::Metrics;
use crate::follow;
use crate::identity::IdentityWatch;

/// A loaded policy directory and its version.
struct Loaded {
    set: PolicySet,
    mtls: PeerAuthentications,
    authn: RequestAuthentications,
    version: String,
    /// The zt server version, for a set from zt agent.
    server_version: Option<u64>,
}

/// Compiles a set of policy files; the version names it in decision records.
fn compile(
    sources: &[zt_policy::load::Source],
    version: String,
    root_namespace: &str,
) -> Result<Loaded, String> {
    let loaded = zt_policy::load::parse_all(sources).map_err(|e| e.to_string())?;
    Ok(Loaded {
        set: PolicySet::new(loaded.policies, root_namespace),
        mtls: PeerAuthentications::new(loaded.peer_authentications, root_namespace),
        authn: RequestAuthentications::new(loaded.request_authentications, root_namespace),
        version,
        server_version: None,
    })
}

/// A policy directory; its version is a digest of its files.
fn load_dir(dir: &Path, root_namespace: &str) -> Result<Loaded, String> {
    let sources = zt_policy::load::read_dir(dir).map_err(|e| e.to_string())?;
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for source in &sources {
        digest.update(source.name.to_string_lossy().as_bytes());
        digest.update(&[0]);
        digest.update(source.text.as_bytes());
        digest.update(&[0]);
    }
    let version = format!(
        "dir:{}",
        zt_identity::x509::hex_compact(&digest.finish().as_ref()[..6])
    );
    compile(&sources, version, root_namespace)
}

/// The policies in force for this workload.
pub(super) struct InForce {
    pub(super) policies: WorkloadPolicies,
    /// The ports' mTLS modes (`None`: `--mode`).
    pub(super) mtls: WorkloadMtls,
    /// The JWT rules (RequestAuthentications), ready to verify.
    pub(super) authn: Arc<super::authn::Rules>,
    pub(super) version: Arc<str>,
    pub(super) destination: Arc<str>,
    /// The claim paths the policies' conditions look at (for the decision log).
    pub(super) claims: Arc<[Vec<String>]>,
}

/// The policies in force, kept current.
pub(super) type InForceWatch = watch::Receiver<Option<Arc<InForce>>>;

/// The mTLS modes of the policies in force, followed as they change.
pub(crate) struct MtlsChanges(pub(super) InForceWatch);

impl MtlsChanges {
    /// The modes in force now (none set while no policies are in force).
    pub(crate) fn current(&mut self) -> WorkloadMtls {
        self.0
            .borrow_and_update()
            .as_ref()
            .map(|in_force| in_force.mtls.clone())
            .unwrap_or_default()
    }

    /// Waits for the policies in force to change; `false` once they never will.
    pub(crate) async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// The mTLS mode the policies in force give `port`, if they give one.
pub(super) fn mtls_mode(in_force: &InForceWatch, port: u16) -> Option<MtlsMode> {
    in_force.borrow().as_ref()?.mtls.mode(port)
}

/// Loads a policy directory now (a broken set fails the start) or starts
/// following zt agent, as the supervised task `policies`; and combines what
/// is loaded with the workload's namespace, as the task `policies_in_force`.
pub(super) fn follow(
    config: &AuthzConfig,
    identity: IdentityWatch,
    metrics: &Arc<Metrics>,
    tasks: &zt_task::Tasks,
    stop: &watch::Receiver<bool>,
) -> Result<InForceWatch, super::AuthzError> {
    let (loaded_tx, loaded) = watch::channel(None);
    let loaded_tx = Arc::new(loaded_tx);
    let root_namespace = config.root_namespace.clone();
    let metrics_ = metrics.clone();
    match &config.source {
        super::PolicySource::Dir(dir) => {
            let first = load_dir(dir, &root_namespace).map_err(|problems| super::AuthzError::Policies {
                dir: dir.display().to_string(),
                problems,
            })?;
            loaded_tx.send_replace(Some(Arc::new(first)));
            let dir = dir.clone();
            tasks.spawn_until_stop("policies", stop.clone(), move || {
                poll_dir(
                    dir.clone(),
                    root_namespace.clone(),
                    loaded_tx.clone(),
                    metrics_.clone(),
                )
            });
        }
        super::PolicySource::Agent(socket) => {
            let socket = socket.clone();
            tasks.spawn_until_stop("policies", stop.clone(), move || {
                let (socket, root_namespace, tx, metrics) = (
                    socket.clone(),
                    root_namespace.clone(),
                    loaded_tx.clone(),
                    metrics_.clone(),
                );
                async move {
                    follow::reconnecting("policies from zt agent", &socket, || {
                        stream_policies(&socket, &root_namespace, &tx, &metrics)
                    })
                    .await;
                }
            });
        }
    }
    let (tx, in_force) = watch::channel(None);
    let tx = Arc::new(tx);
    let (config, metrics) = (config.clone(), metrics.clone());
    tasks.spawn_until_stop("policies_in_force", stop.clone(), move || {
        combine(
            config.clone(),
            loaded.clone(),
            identity.clone(),
            tx.clone(),
            metrics.clone(),
        )
    });
    Ok(in_force)
}

/// Publishes the policies in force for the workload whenever the loaded set
/// or the identity (which may give the namespace) changes; then, and not
/// before, `zt_proxy_policy_version` says which zt server version is in force,
/// so that whoever waits for it sees requests decided by that version.
async fn combine(
    config: AuthzConfig,
    mut loaded: watch::Receiver<Option<Arc<Loaded>>>,
    mut identity: IdentityWatch,
    tx: Arc<watch::Sender<Option<Arc<InForce>>>>,
    metrics: Arc<Metrics>,
) {
    let mut keys = super::authn::KeysCache::default();
    loop {
        let own = identity.borrow().clone();
        let own_id = own.as_ref().map(|i| i.spiffe_id.to_string());
        let namespace = config
            .namespace
            .clone()
            .or_else(|| zt_policy::request::namespace_of(own_id.as_deref()?).map(str::to_owned));
        let unknown = namespace.is_none() && own_id.is_some();
        if unknown && metrics.policy_namespace_unknown.get() == 0 {
            tracing::warn!(
                spiffe_id = own_id.as_deref().unwrap_or_default(),
                "the workload's namespace is not known: its SPIFFE ID has no /ns/NS/, so no policy applies and every request is denied; set --namespace"
            );
        }
        metrics.policy_namespace_unknown.set(i64::from(unknown));
        let current = loaded.borrow_and_update().clone();
        let server_version = current.as_ref().and_then(|c| c.server_version);
        let in_force = match (namespace, current) {
            (Some(namespace), Some(current)) => {
                let policies = current.set.for_workload(&namespace, &config.labels);
                let mtls = current.mtls.for_workload(&namespace, &config.labels);
                let authn = keys.build(
                    &current.authn.for_workload(&namespace, &config.labels),
                    own.as_deref(),
                    &config.jwks_ca,
                );
                tracing::info!(%namespace, version = %current.version, policies = policies.len(), jwt_rules = authn.rules.len(), "policies in force");
                if !mtls.shadowed.is_empty() {
                    tracing::warn!(
                        chosen = mtls.decided_by.as_deref().unwrap_or_default(),
                        shadowed = ?mtls.shadowed,
                        "several workload PeerAuthentications select this workload; the first by name applies"
                    );
                }
                let destination = match config.labels.get("app") {
                    Some(app) => format!("{namespace}/{app}"),
                    None => namespace,
                };
                Some(Arc::new(InForce {
                    claims: policies.claims_named().into(),
                    policies,
                    mtls,
                    authn: Arc::new(authn),
                    version: current.version.as_str().into(),
                    destination: destination.into(),
                }))
            }
            _ => None,
        };
        let published = in_force.is_some();
        tx.send_replace(in_force);
        if published && let Some(version) = server_version {
            metrics
                .policy_version
                .set(i64::try_from(version).unwrap_or(i64::MAX));
        }
        tokio::select! {
            changed = loaded.changed() => if changed.is_err() { return },
            changed = identity.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// Reloads a policy directory when it changes; a set that does not load is
/// counted and logged, and the last good one stays in force.
async fn poll_dir(dir: PathBuf, root_namespace: String, tx: Publisher, metrics: Arc<Metrics>) {
    zt_task::files::on_change(&[&dir], || {
        match load_dir(&dir, &root_namespace) {
            Ok(fresh) => {
                tx.send_replace(Some(Arc::new(fresh)));
            }
            Err(problems) => {
                metrics.policy_reload_failures.inc();
                tracing::error!(dir = %dir.display(), %problems, "policies changed but do not load; the last good set stays in force");
            }
        }
        // A broken set is not loaded again until the directory changes again.
        true
    })
    .await;
}

/// Publishes loaded policy sets.
type Publisher = Arc<watch::Sender<Option<Arc<Loaded>>>>;

async fn stream_policies(
    socket: &Path,
    root_namespace: &str,
    tx: &Publisher,
    metrics: &Metrics,
) -> Result<(), String> {
    let client = zt_workload::WorkloadClient::new(socket)?;
    let mut stream = client.policies().await.map_err(|s| s.message().to_owned())?;
    while let Some(set) = stream.message().await.map_err(|s| s.message().to_owned())? {
        let sources: Vec<zt_policy::load::Source> = set
            .files
            .into_iter()
            .map(|f| zt_policy::load::Source {
                name: f.name.into(),
                text: f.text,
            })
            .collect();
        match compile(&sources, format!("v{}", set.version), root_namespace) {
            Ok(mut loaded) => {
                tracing::info!(version = set.version, "policies from zt server");
                loaded.server_version = Some(set.version);
                // The version is in force once `combine` has published it.
                tx.send_replace(Some(Arc::new(loaded)));
            }
            Err(problems) => {
                // zt server checks every set it stores; this proxy may be older.
                metrics.policy_reload_failures.inc();
                tracing::error!(version = set.version, %problems, "policies from zt server do not load here; the last good set stays in force");
            }
        }
    }
    Err("zt agent ended the policy stream".into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::authz::{PolicyMode, PolicySource};

    /// Version `version` of zt server's policies (an empty set).
    fn from_server(version: u64) -> Option<Arc<Loaded>> {
        let mut loaded = compile(&[], format!("v{version}"), zt_policy::DEFAULT_ROOT_NAMESPACE).unwrap();
        loaded.server_version = Some(version);
        Some(Arc::new(loaded))
    }

    /// `combine` running for a workload, and what a test drives and reads of it.
    struct Combined {
        loaded: watch::Sender<Option<Arc<Loaded>>>,
        in_force: InForceWatch,
        metrics: Arc<Metrics>,
        /// Kept open: `combine` stops when the identity's sender is gone.
        _identity: watch::Sender<Option<Arc<crate::identity::Identity>>>,
    }

    /// `combine` for a workload of `namespace` (`None`: from an SVID it has not got).
    fn start(namespace: Option<&str>) -> Combined {
        let config = AuthzConfig {
            source: PolicySource::Agent(PathBuf::from("/nonexistent/api.sock")),
            mode: PolicyMode::Enforce,
            namespace: namespace.map(str::to_owned),
            labels: BTreeMap::from([("app".to_owned(), "orders".to_owned())]),
            root_namespace: zt_policy::DEFAULT_ROOT_NAMESPACE.to_owned(),
            decision_log: None,
            decision_log_key: None,
            checkpoints: zt_audit::CheckpointPolicy::default(),
            providers: None,
            jwks_ca: Vec::new(),
        };
        let metrics = Arc::new(Metrics::new(zt_task::Tasks::new()));
        let (loaded_tx, loaded) = watch::channel(None);
        let (identity_tx, identity) = watch::channel(None);
        let (tx, in_force) = watch::channel(None);
        tokio::spawn(combine(config, loaded, identity, Arc::new(tx), metrics.clone()));
        Combined {
            loaded: loaded_tx,
            in_force,
            metrics,
            _identity: identity_tx,
        }
    }

    /// A set from zt server (`zt policy apply`, through zt agent) carries
    /// RequestAuthentications: their rules are in force with the rest.
    #[tokio::test]
    async fn sets_from_the_server_carry_request_authentications() {
        let Combined {
            loaded,
            mut in_force,
            _identity,
            ..
        } = start(Some("shop"));
        in_force.changed().await.unwrap();
        let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: orders}}}}\n  jwtRules:\n  - issuer: https://idp.example\n    jwks: '{jwks}'\n    outputClaimToHeaders: [{{header: x-user, claim: sub}}]\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: other, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  jwtRules:\n  - issuer: https://other.example\n    jwks: '{jwks}'\n"
        );
        let sources = [zt_policy::load::Source {
            name: "authn.yaml".into(),
            text,
        }];
        let mut set = compile(&sources, "v7".into(), zt_policy::DEFAULT_ROOT_NAMESPACE).unwrap();
        set.server_version = Some(7);
        loaded.send_replace(Some(Arc::new(set)));
        in_force.changed().await.unwrap();
        let current = in_force.borrow_and_update().clone().unwrap();
        // Only the one selecting app=orders applies.
        assert_eq!(current.authn.rules.len(), 1);
        assert_eq!(current.authn.rules[0].issuer.issuer(), "https://idp.example");
        assert_eq!(current.authn.output_headers, ["x-user"]);
    }

    // On the test's single thread, `combine` runs from a publication to its
    // next wait without yielding: once the test sees a change, the gauge has
    // been set if it is going to be.
    #[tokio::test]
    async fn the_version_gauge_says_which_set_is_in_force_not_which_was_received() {
        let Combined {
            loaded,
            mut in_force,
            metrics,
            _identity,
        } = start(Some("shop"));
        in_force.changed().await.unwrap();
        assert_eq!(metrics.policy_version.get(), 0, "nothing received yet");
        for version in [1, 2] {
            loaded.send_replace(from_server(version));
            in_force.changed().await.unwrap();
            let version_in_force = in_force
                .borrow_and_update()
                .as_ref()
                .map(|f| f.version.to_string());
            assert_eq!(version_in_force.as_deref(), Some(format!("v{version}").as_str()));
            assert_eq!(metrics.policy_version.get(), i64::try_from(version).unwrap());
        }

        // No namespace (no SVID yet): version 1 was received, none is in force.
        let Combined {
            loaded,
            mut in_force,
            metrics,
            _identity,
        } = start(None);
        loaded.send_replace(from_server(1));
        in_force.changed().await.unwrap();
        assert!(in_force.borrow_and_update().is_none());
        assert_eq!(metrics.policy_version.get(), 0);
    }
}
