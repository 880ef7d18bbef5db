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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use zt_policy::{PolicySet, Request, Verdict, WorkloadPolicies};

use crate::admin::{AuthzLabels, Metrics};
use crate::identity::IdentityWatch;

/// How often the policy directory is checked for changes.
const POLL: Duration = Duration::from_secs(1);
/// Backoff between attempts to reach zt agent.
const AGENT_RETRY_MIN: Duration = Duration::from_millis(200);
const AGENT_RETRY_MAX: Duration = Duration::from_secs(10);
/// Decisions waiting for the log writer; requests wait when it is full, so no
/// decision is ever dropped.
const LOG_BACKLOG: usize = 4096;

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
}

/// CUSTOM policies' external authorizers, evaluated in process: each provider
/// name is a Rego rule, given OPA-Envoy's input shape.
pub struct RegoProviders {
    /// The Rego modules.
    pub policies: zt_policy::rego::RegoPolicies,
    /// Provider name → the rule's path (`envoy/authz/allow`).
    pub rules: BTreeMap<String, String>,
}

impl std::fmt::Debug for RegoProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegoProviders({:?})", self.rules)
    }
}

impl zt_policy::ExternalAuthorizer for RegoProviders {
    fn check(&self, provider: &str, request: &Request) -> Result<bool, String> {
        let rule = self
            .rules
            .get(provider)
            .ok_or_else(|| format!("no provider {provider:?} (--custom-provider NAME=RULE)"))?;
        let path: Vec<&str> = rule.split('/').filter(|s| !s.is_empty()).collect();
        let input = envoy_input(request);
        let result = self
            .policies
            .query(&path, Some(&input))
            .map_err(|e| e.to_string())?;
        Ok(zt_policy::rego::allows(result.as_ref()))
    }
}

/// A request in OPA-Envoy's input shape (the fields the proxy knows).
fn envoy_input(request: &Request) -> serde_json::Value {
    let http = request.request.as_ref();
    let target = http.map_or("", |h| h.path.as_str());
    let (parsed_path, parsed_query) = zt_policy::rego::parsed_path_and_query(target);
    let query = target.split_once('?').map_or("", |(_, q)| q);
    serde_json::json!({
        "attributes": {
            "source": {
                "principal": request.source.principal.clone().unwrap_or_default(),
                "address": {"socketAddress": {"address": request.source.ip.map(|ip| ip.to_string())}},
            },
            "destination": {
                "address": {"socketAddress": {"portValue": request.destination.port}},
            },
            "request": {"http": http.map(|h| serde_json::json!({
                "method": h.method,
                "path": target,
                "host": h.host,
                "headers": h.headers,
                "query": query,
            }))},
        },
        "parsed_path": parsed_path,
        "parsed_query": parsed_query,
    })
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

/// The policies in force for this workload.
struct InForce {
    policies: WorkloadPolicies,
    version: String,
    destination: String,
}

/// Decides requests; shared by every connection of a listener.
pub struct Authorizer {
    current: watch::Receiver<Option<Arc<InForce>>>,
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

/// A loaded policy directory and its version.
struct Loaded {
    set: PolicySet,
    version: String,
}

/// Compiles a set of policy files; the version names it in decision records.
fn compile(
    sources: &[zt_policy::load::Source],
    version: String,
    root_namespace: &str,
) -> Result<Loaded, String> {
    let policies = zt_policy::load::parse(sources).map_err(|e| e.to_string())?;
    Ok(Loaded {
        set: PolicySet::new(policies, root_namespace),
        version,
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

impl Authorizer {
    /// Loads a policy directory now (a broken set fails the start) or starts
    /// following zt agent, opens the log, and follows the identity.
    pub fn start(
        config: AuthzConfig,
        identity: IdentityWatch,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuthzError> {
        let (loaded_tx, loaded) = watch::channel(None);
        match &config.source {
            PolicySource::Dir(dir) => {
                let first =
                    load_dir(dir, &config.root_namespace).map_err(|problems| AuthzError::Policies {
                        dir: dir.display().to_string(),
                        problems,
                    })?;
                loaded_tx.send_replace(Some(Arc::new(first)));
                tokio::spawn(poll_dir(
                    dir.clone(),
                    config.root_namespace.clone(),
                    loaded_tx,
                    metrics.clone(),
                ));
            }
            PolicySource::Agent(socket) => {
                tokio::spawn(follow_agent(
                    socket.clone(),
                    config.root_namespace.clone(),
                    loaded_tx,
                    metrics.clone(),
                ));
            }
        }
        let log = match &config.decision_log {
            Some(path) => {
                let key_path = config
                    .decision_log_key
                    .clone()
                    .unwrap_or_else(|| zt_audit::signed::default_key_path(path));
                let key = zt_audit::signed::load_or_create_key(&key_path)?;
                tracing::info!(log = %path.display(), key = %key.verifier(), "decision log checkpoints signed (zt audit verify --key)");
                let writer = zt_audit::Writer::open_signed(path, key, config.checkpoints)?;
                if writer.found_uncovered() > 0 {
                    tracing::warn!(log = %path.display(), records = writer.found_uncovered(), "decision log records no checkpoint covers (a crash, or checkpoints removed): the next checkpoint signs them as found");
                }
                let (written_tx, written) = watch::channel(Written::of(&writer));
                let verifier_key = writer.verifier().map(ToString::to_string).unwrap_or_default();
                let (tx, rx) = mpsc::channel(LOG_BACKLOG);
                tokio::spawn(write_log(
                    writer,
                    rx,
                    written_tx,
                    config.checkpoints.interval,
                    metrics.clone(),
                ));
                // With zt server behind the agent, the log is also shipped there.
                if let PolicySource::Agent(socket) = &config.source {
                    tokio::spawn(ship(
                        path.clone(),
                        socket.clone(),
                        written,
                        verifier_key,
                        metrics.clone(),
                    ));
                }
                Some(tx)
            }
            None => None,
        };
        let (tx, current) = watch::channel(None);
        tokio::spawn(combine(config.clone(), loaded, identity, tx, metrics.clone()));
        Ok(Self {
            current,
            mode: config.mode,
            providers: config.providers.clone(),
            log,
            metrics,
        })
    }

    /// Decides `request`, records the decision, and says whether it may pass
    /// (a DENY passes in permissive mode).
    pub async fn authorize(&self, request: &Request) -> bool {
        let started = Instant::now();
        let in_force = self.current.borrow().clone();
        let (decision, version, destination) = match &in_force {
            Some(in_force) => (
                in_force.policies.evaluate_with(
                    request,
                    self.providers
                        .as_deref()
                        .map(|p| p as &dyn zt_policy::ExternalAuthorizer),
                ),
                in_force.version.as_str(),
                in_force.destination.as_str(),
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
                "none",
                "unknown",
            ),
        };
        let eval_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let allowed = decision.decision == Verdict::Allow || self.mode == PolicyMode::Permissive;
        let verdict = match decision.decision {
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
        let http = request.request.as_ref();
        if decision.decision == Verdict::Deny {
            tracing::info!(
                target: "zt::access",
                peer = request.source.principal.as_deref().unwrap_or("plaintext"),
                method = http.map(|h| h.method.as_str()),
                path = http.map(|h| without_query(&h.path)),
                policy = decision.policy.as_deref(),
                reason = %decision.reason,
                enforced = !allowed,
                "authorization: DENY"
            );
        }
        if let Some(log) = &self.log {
            let record = zt_audit::Record {
                seq: 0,
                time_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0),
                id: decision_id(),
                source_principal: request.source.principal.clone(),
                source_ip: request.source.ip.map(|ip| ip.to_string()),
                destination: destination.to_owned(),
                port: request.destination.port,
                protocol: match request.protocol {
                    zt_policy::request::Protocol::Http => "http".into(),
                    zt_policy::request::Protocol::Tcp => "tcp".into(),
                },
                method: http.map(|h| h.method.clone()),
                host: http.map(|h| h.host.clone()),
                path: http.map(|h| without_query(&h.path).to_owned()),
                decision: verdict.into(),
                mode: self.mode.label().into(),
                policy: decision.policy.clone(),
                reason: decision.reason.clone(),
                policy_version: version.to_owned(),
                eval_ns,
                dry_run: decision
                    .dry_run
                    .as_ref()
                    .map(|d| format!("{} {}", d.decision, d.policy.as_deref().unwrap_or("(no policy)"))),
                audit: decision.audit.clone(),
                query: None,
                input: None,
                result: None,
                revision: None,
                prev: String::new(),
                hash: String::new(),
            };
            if log.send(record).await.is_err() {
                // The writer is gone (its file failed): fail closed.
                self.metrics.decision_log_failures.inc();
                return false;
            }
        }
        allowed
    }
}

/// A request target without its query: logs record the path only (a query may
/// carry a token).
fn without_query(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

/// 128 random bits, hex.
fn decision_id() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG does not fail on Linux; an all-zero id would still be logged.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    zt_identity::x509::hex_compact(&bytes)
}

/// How far the log is written and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    /// The last sequence number written.
    records: u64,
    /// Records the last signed checkpoint covers.
    covered: u64,
}

impl Written {
    fn of(writer: &zt_audit::Writer) -> Self {
        Self {
            records: writer.head().records,
            covered: writer.covered(),
        }
    }
}

/// Appends decisions in batches until every sender is gone; publishes the
/// last sequence number written and the last checkpoint's size. While decisions are few, a checkpoint is
/// signed once records have waited `interval`; the writer's drop signs the
/// last one.
async fn write_log(
    mut writer: zt_audit::Writer,
    mut rx: mpsc::Receiver<zt_audit::Record>,
    written: watch::Sender<Written>,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(256);
    let interval = interval.max(Duration::from_millis(10));
    loop {
        let appended = match tokio::time::timeout(interval, rx.recv_many(&mut batch, 256)).await {
            Ok(0) => return,
            Ok(_) => writer.append(batch.drain(..)),
            Err(_) => Ok(()),
        };
        if let Err(e) = appended.and_then(|()| writer.checkpoint_if_due()) {
            metrics.decision_log_failures.inc();
            tracing::error!(error = %e, "decision log write failed: requests are denied until the proxy is restarted");
            return;
        }
        written.send_replace(Written::of(&writer));
    }
}

/// Records per shipped batch.
const SHIP_BATCH: usize = 500;
/// Unshipped records above which the backlog is reported (they stay in the
/// local log, which is the buffer: nothing is dropped).
const SHIP_BACKLOG_BOUND: u64 = 100_000;

/// Ships the decision log to zt server through zt agent, in order, in
/// acknowledged batches; what the server holds is remembered in `LOG.shipped`,
/// so a restart resumes there. While the server is unreachable the local log
/// is the buffer. Each batch carries the latest signed checkpoint it completes
/// (with the log's verifier key) for zt server to witness; its cosigned copy
/// is kept in `LOG.cosigned`, always the latest.
async fn ship(
    log: PathBuf,
    socket: PathBuf,
    mut written: watch::Receiver<Written>,
    verifier_key: String,
    metrics: Arc<Metrics>,
) {
    let cursor = log.with_extension("shipped");
    let mut shipped: u64 = std::fs::read_to_string(&cursor)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let cosigned = zt_audit::signed::cosigned_path(&log);
    // The size of the last checkpoint cosigned.
    let mut witnessed = std::fs::read_to_string(&cosigned)
        .ok()
        .and_then(|note| checkpoint_size(&note))
        .unwrap_or(0);
    let client = match zt_agent::client::WorkloadClient::new(&socket) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(socket = %socket.display(), error = %e, "decisions cannot be shipped");
            return;
        }
    };
    // Byte offset of the first line not known to be stored.
    let mut offset = 0u64;
    let mut retry = AGENT_RETRY_MIN;
    let mut over_bound = false;
    loop {
        let now = *written.borrow_and_update();
        let backlog = now.records.saturating_sub(shipped);
        metrics
            .decisions_unshipped
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        if backlog > SHIP_BACKLOG_BOUND && !over_bound {
            metrics.decision_backlog_over_bound.inc();
            tracing::warn!(backlog, bound = SHIP_BACKLOG_BOUND, log = %log.display(), "decisions not yet on zt server passed the bound; they stay in the local log");
        }
        over_bound = backlog > SHIP_BACKLOG_BOUND;
        let witness_due = !verifier_key.is_empty() && now.covered > witnessed;
        if backlog == 0 && !witness_due {
            if written.changed().await.is_err() {
                return;
            }
            continue;
        }
        let batch = if backlog == 0 {
            Vec::new()
        } else {
            match read_batch(&log, &mut offset, shipped) {
                Ok(batch) if batch.is_empty() => {
                    // The log holds less than its head says (a record being written, or
                    // a file replaced under the proxy): look again later, not in a loop.
                    tokio::time::sleep(AGENT_RETRY_MIN).await;
                    continue;
                }
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(log = %log.display(), error = %e, "reading the decision log to ship it");
                    tokio::time::sleep(AGENT_RETRY_MAX).await;
                    continue;
                }
            }
        };
        // Records are consecutive: after this batch the server holds through here.
        let through = shipped + batch.len() as u64;
        let checkpoint = if witness_due {
            latest_checkpoint(&log, through)
                .unwrap_or_else(|e| {
                    tracing::warn!(log = %log.display(), error = %e, "reading the decision log's checkpoints to have them witnessed");
                    None
                })
                .filter(|(size, _)| *size > witnessed)
        } else {
            None
        };
        if batch.is_empty() && checkpoint.is_none() {
            if written.changed().await.is_err() {
                return;
            }
            continue;
        }
        let sent = checkpoint
            .as_ref()
            .map(|(_, note)| note.clone())
            .unwrap_or_default();
        match client.ship_decisions(batch, sent, verifier_key.clone()).await {
            Ok(answer) => {
                let through = answer.stored_through;
                if through < shipped {
                    // The server holds less than we thought: ship again from there.
                    offset = 0;
                }
                shipped = through;
                retry = AGENT_RETRY_MIN;
                if let Err(e) = zt_fs::write_atomically(&[(
                    cursor.clone(),
                    format!("{shipped}\n").into_bytes(),
                    zt_fs::PRIVATE_MODE,
                )]) {
                    tracing::warn!(cursor = %cursor.display(), error = %e, "remembering what was shipped");
                }
                if let Some((size, note)) = checkpoint.filter(|_| !answer.cosignatures.is_empty()) {
                    let whole = format!("{note}{}", answer.cosignatures.concat());
                    match zt_fs::write_atomically(&[(
                        cosigned.clone(),
                        whole.into_bytes(),
                        zt_fs::PRIVATE_MODE,
                    )]) {
                        Ok(()) => {
                            witnessed = size;
                            tracing::debug!(size, "decision log checkpoint witnessed by zt server");
                        }
                        Err(e) => {
                            tracing::warn!(file = %cosigned.display(), error = %e, "keeping the checkpoint zt server cosigned");
                        }
                    }
                }
            }
            Err(status) => {
                metrics.decision_ship_failures.inc();
                tracing::warn!(error = %status.message(), retry_in = ?retry, "shipping decisions to zt server");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(AGENT_RETRY_MAX);
            }
        }
    }
}

/// The size of a checkpoint note's tree, if it parses.
fn checkpoint_size(note: &str) -> Option<u64> {
    let parsed = zt_audit::note::Note::parse(note).ok()?;
    Some(zt_audit::note::Checkpoint::parse(parsed.text).ok()?.size)
}

/// The latest signed checkpoint (its size and whole note) that covers no more
/// than `limit` records.
fn latest_checkpoint(log: &Path, limit: u64) -> Result<Option<(u64, String)>, zt_audit::AuditError> {
    let notes = zt_audit::signed::read_checkpoints(&zt_audit::signed::checkpoints_path(log))?;
    Ok(notes.unwrap_or_default().into_iter().rev().find_map(|stored| {
        let size = checkpoint_size(&stored.note)?;
        (size <= limit).then_some((size, stored.note))
    }))
}

/// The next lines after `shipped` (at most [`SHIP_BATCH`]), reading from
/// `offset`, which moves past the lines already shipped.
fn read_batch(log: &Path, offset: &mut u64, shipped: u64) -> std::io::Result<Vec<String>> {
    use std::io::{BufRead as _, Seek as _};
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let mut file = std::fs::File::open(log)?;
    file.seek(std::io::SeekFrom::Start(*offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut batch = Vec::new();
    let mut line = String::new();
    while batch.len() < SHIP_BATCH {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        let seq = serde_json::from_str::<Seq>(&line)
            .map_err(std::io::Error::other)?
            .seq;
        if seq <= shipped {
            *offset += read as u64;
        } else {
            batch.push(line.trim_end().to_owned());
        }
    }
    Ok(batch)
}

/// Publishes the policies in force for the workload whenever the loaded set
/// or the identity (which may give the namespace) changes.
async fn combine(
    config: AuthzConfig,
    mut loaded: watch::Receiver<Option<Arc<Loaded>>>,
    mut identity: IdentityWatch,
    tx: watch::Sender<Option<Arc<InForce>>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let own_id = identity.borrow().as_ref().map(|i| i.spiffe_id.to_string());
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
        let in_force = match (namespace, current) {
            (Some(namespace), Some(current)) => {
                let policies = current.set.for_workload(&namespace, &config.labels);
                tracing::info!(%namespace, version = %current.version, policies = policies.len(), "policies in force");
                let destination = match config.labels.get("app") {
                    Some(app) => format!("{namespace}/{app}"),
                    None => namespace,
                };
                Some(Arc::new(InForce {
                    policies,
                    version: current.version.clone(),
                    destination,
                }))
            }
            _ => None,
        };
        tx.send_replace(in_force);
        tokio::select! {
            changed = loaded.changed() => if changed.is_err() { return },
            changed = identity.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// Reloads a policy directory when it changes; a set that does not load is
/// counted and logged, and the last good one stays in force.
async fn poll_dir(
    dir: PathBuf,
    root_namespace: String,
    tx: watch::Sender<Option<Arc<Loaded>>>,
    metrics: Arc<Metrics>,
) {
    let mut last = directory_stamp(&dir);
    loop {
        tokio::time::sleep(POLL).await;
        if tx.is_closed() {
            return;
        }
        let now = directory_stamp(&dir);
        if now == last {
            continue;
        }
        last = now;
        match load_dir(&dir, &root_namespace) {
            Ok(fresh) => {
                tx.send_replace(Some(Arc::new(fresh)));
            }
            Err(problems) => {
                metrics.policy_reload_failures.inc();
                tracing::error!(dir = %dir.display(), %problems, "policies changed but do not load; the last good set stays in force");
            }
        }
    }
}

/// Follows zt agent's policy stream, reconnecting with backoff; the last good
/// set stays in force meanwhile.
async fn follow_agent(
    socket: PathBuf,
    root_namespace: String,
    tx: watch::Sender<Option<Arc<Loaded>>>,
    metrics: Arc<Metrics>,
) {
    let mut retry = AGENT_RETRY_MIN;
    loop {
        if tx.is_closed() {
            return;
        }
        match stream_policies(&socket, &root_namespace, &tx, &metrics).await {
            Ok(()) => retry = AGENT_RETRY_MIN,
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, retry_in = ?retry, "policies from zt agent")
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(AGENT_RETRY_MAX);
    }
}

async fn stream_policies(
    socket: &Path,
    root_namespace: &str,
    tx: &watch::Sender<Option<Arc<Loaded>>>,
    metrics: &Metrics,
) -> Result<(), String> {
    let client = zt_agent::client::WorkloadClient::new(socket)?;
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
            Ok(loaded) => {
                tracing::info!(version = set.version, "policies from zt server");
                tx.send_replace(Some(Arc::new(loaded)));
                metrics
                    .policy_version
                    .set(i64::try_from(set.version).unwrap_or(i64::MAX));
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

/// Names, sizes and modification times of everything under `dir`.
fn directory_stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut stamp = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(path),
                Ok(meta) => stamp.push((path, meta.len(), meta.modified().ok())),
                Err(_) => {}
            }
        }
    }
    stamp.sort();
    stamp
}
