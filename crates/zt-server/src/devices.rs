//! Device trust in the server: enrollment, device certificates, posture
//! reports and the compliance tiers they lead to.
//!
//! Every device's live state is held here in memory: its key, the sequence
//! number of its last accepted report, its facts and its tier. A report is
//! verified (mTLS with the device certificate, the device key's signature, a
//! sequence number above the last, a send time within [`MAX_CLOCK_SKEW_MS`],
//! no fact from the future) and evaluated at once; and every device is
//! evaluated again at the moment its result could change without a report
//! (a fact reaching its maximum age, the heartbeat window running out), so
//! a device that goes silent drops within milliseconds of its window. A tier
//! change is written to the datastore (an event with the CAEP payload, on
//! the change feed), to the hash-chained decision log, counted, and pushed to
//! whoever follows the device states (the gateway). Accepted reports are
//! saved in batches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use zt_ca::SvidRequest;
use zt_device::compliance::{self, DeviceView, Policy};
use zt_device::facts::Facts;
use zt_device::report::{self, CERTIFICATE_TYPE, ENROLL_TYPE, REPORT_TYPE, Report};
use zt_identity::jwk::PublicKey;
use zt_identity::spiffe_id::DEVICE_PATH;
use zt_identity::{SpiffeId, TrustDomain};
use zt_store::{Device, DeviceStatus, NewDevice, SavedPosture, Store, StoreError};

use crate::authority::AuthorityManager;
use crate::server_tls::{PeerInfo, ServerTls};

/// How far a report's send time may be from the server's clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;
/// How far in the future a fact's observation time may be (clock skew).
const FUTURE_FACT_SLACK_SECS: u64 = 5;
/// How far an enrollment or certificate request's `iat` may be from now.
const REQUEST_WINDOW_SECS: u64 = 60;
/// How often accepted reports are written to the datastore.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest a follower's long poll is held open.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Refused reports recorded per device (events and the decision log) in
/// each [`REFUSALS_WINDOW_MS`]; more are only counted, so that a device
/// sending garbage cannot fill the datastore.
const REFUSALS_RECORDED: u32 = 20;
const REFUSALS_WINDOW_MS: u64 = 10_000;
/// The largest request body.
const MAX_BODY_BYTES: usize = report::MAX_SIGNED_BYTES + 1024;

/// How device trust is set up.
pub struct DeviceSettings {
    /// The device API's TLS address.
    pub addr: SocketAddr,
    /// The compliance policy; `None`: every device is at the floor (fail closed).
    pub policy: Option<Policy>,
    /// The file the policy was read from: followed, and read again whenever it
    /// changes ([`Devices::follow_policy`]).
    pub policy_path: Option<std::path::PathBuf>,
    /// Lifetime of device certificates.
    pub cert_ttl: Duration,
    /// Where tier changes and refused reports are recorded.
    pub decision_log: Option<zt_audit::Writer>,
    /// The workloads (SPIFFE IDs) that may follow every device's state on
    /// `GET /v1/states`: the gateways. No one else may.
    pub state_readers: BTreeSet<String>,
}

impl std::fmt::Debug for DeviceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceSettings({})", self.addr)
    }
}

/// One device as the server holds it.
struct Live {
    owner: String,
    status: DeviceStatus,
    key: PublicKey,
    key_type: String,
    test_mode: bool,
    seq: u64,
    last_report_ms: Option<u64>,
    facts: Facts,
    tier: String,
    reasons: Vec<String>,
    /// The [`Devices::version`] at which the tier, reasons or status last changed.
    changed: u64,
    /// When the result could next change with no report (Unix ms).
    deadline: Option<u64>,
}

/// A device's state as followers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device's ID.
    pub id: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The person it is issued to.
    pub owner: String,
    /// `pending`, `active` or `revoked`; a deleted device is `deleted`.
    pub status: String,
    /// Its tier now.
    pub tier: String,
    /// Why it is not in a better one.
    pub reasons: Vec<String>,
    /// Its last accepted report, Unix ms.
    pub last_report_ms: Option<u64>,
}

/// `GET /v1/states` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStates {
    /// Pass as `after` to wait for what changes next.
    pub version: u64,
    /// The devices changed after `after` (every device when `after` is 0).
    pub devices: Vec<DeviceState>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    from: String,
    to: String,
}

/// Device trust's metrics, under `zt_server_device_`.
#[derive(Default, Clone)]
pub struct DeviceMetrics {
    reports: Family<ResultLabels, Counter>,
    tier_changes: Family<TierLabels, Counter>,
    enrollments: Family<ResultLabels, Counter>,
    policy_loads: Family<ResultLabels, Counter>,
}

impl DeviceMetrics {
    /// Registers every metric.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "device_reports",
            "Posture reports, by result (accepted, or why refused)",
            self.reports.clone(),
        );
        registry.register(
            "device_tier_changes",
            "Device tier changes, by previous and new tier",
            self.tier_changes.clone(),
        );
        registry.register(
            "device_enrollments",
            "Device enrollments, by result",
            self.enrollments.clone(),
        );
        registry.register(
            "device_policy_loads",
            "Compliance policy files read again after a change, by result (loaded, refused)",
            self.policy_loads.clone(),
        );
    }
}

/// Why a device request was refused: an HTTP status and one line.
#[derive(Debug)]
pub struct Refused {
    status: StatusCode,
    /// A short name for metrics and events.
    kind: &'static str,
    message: String,
}

impl Refused {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({ "error": self.message, "reason": self.kind })),
        )
            .into_response()
    }
}

fn store_refusal(e: StoreError) -> Refused {
    match e {
        StoreError::DeviceToken(problem) => Refused::new(
            StatusCode::UNAUTHORIZED,
            "enrollment_token",
            format!("device enrollment token is {problem}"),
        ),
        other => {
            tracing::error!(error = %other, "device datastore operation failed");
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "datastore",
                "datastore unavailable",
            )
        }
    }
}

/// The device service: shared by the device API, the admin API and the
/// OpenID Provider (for the `device_*` claims of tokens).
pub struct Devices {
    store: Store,
    trust_domain: TrustDomain,
    authorities: Arc<AuthorityManager>,
    /// The policy in force; replaced when its file changes.
    policy: std::sync::RwLock<Option<Arc<Policy>>>,
    cert_ttl: Duration,
    state_readers: BTreeSet<String>,
    live: Mutex<HashMap<String, Live>>,
    /// (deadline ms, device ID), earliest first.
    deadlines: Mutex<BTreeSet<(u64, String)>>,
    deadline_changed: Notify,
    unsaved: Mutex<HashMap<String, SavedPosture>>,
    /// Per device: the start of its refusal window and refusals recorded in it.
    refusals: Mutex<HashMap<String, (u64, u32)>>,
    /// Deleted devices, with the version at which they went.
    deleted: Mutex<HashMap<String, u64>>,
    version: AtomicU64,
    changed: watch::Sender<u64>,
    log: Option<Mutex<zt_audit::Writer>>,
    metrics: DeviceMetrics,
    /// Tier changes on their way to the datastore and the log: recorded by a
    /// task of their own, so that a request cancelled half way (its client
    /// gone) cannot lose one.
    tier_changes: tokio::sync::mpsc::UnboundedSender<TierChange>,
}

/// A tier change to record.
struct TierChange {
    id: String,
    previous: String,
    tier: String,
    reasons: Vec<String>,
    at_ms: u64,
}

impl Devices {
    /// Loads every device from the datastore and evaluates it.
    pub async fn load(
        store: Store,
        trust_domain: TrustDomain,
        authorities: Arc<AuthorityManager>,
        settings: &mut DeviceSettings,
        metrics: DeviceMetrics,
    ) -> Result<Arc<Self>, StoreError> {
        let (tier_changes, mut changes) = tokio::sync::mpsc::unbounded_channel::<TierChange>();
        let devices = Arc::new(Self {
            store: store.clone(),
            trust_domain,
            authorities,
            policy: std::sync::RwLock::new(settings.policy.take().map(Arc::new)),
            cert_ttl: settings.cert_ttl,
            state_readers: std::mem::take(&mut settings.state_readers),
            live: Mutex::new(HashMap::new()),
            deadlines: Mutex::new(BTreeSet::new()),
            deadline_changed: Notify::new(),
            unsaved: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
            deleted: Mutex::new(HashMap::new()),
            version: AtomicU64::new(1),
            changed: watch::channel(1).0,
            log: settings.decision_log.take().map(Mutex::new),
            metrics,
            tier_changes,
        });
        let recorder = Arc::downgrade(&devices);
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let Some(devices) = recorder.upgrade() else { return };
                devices
                    .record_tier_change(
                        &change.id,
                        &change.previous,
                        &change.tier,
                        &change.reasons,
                        change.at_ms,
                    )
                    .await;
            }
        });
        for device in store.list_devices().await? {
            devices.insert(&device);
        }
        let now = now_ms();
        let ids: Vec<String> = lock(&devices.live).keys().cloned().collect();
        for id in ids {
            devices.evaluate(&id, now).await;
        }
        Ok(devices)
    }

    /// The policy in force, if there is one.
    fn policy(&self) -> Option<Arc<Policy>> {
        self.policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The policy's floor: the tier of a device nothing is known of.
    pub fn floor(&self) -> String {
        floor_of(self.policy().as_deref())
    }

    /// Follows the compliance policy's file: whenever it changes, it is read
    /// again ([`Self::reload_policy`]). Never returns.
    pub async fn follow_policy(self: Arc<Self>, path: std::path::PathBuf) {
        let mut last = zt_task::files::Stamp::of(&[&path]);
        loop {
            tokio::time::sleep(zt_task::files::FILE_POLL).await;
            let now = zt_task::files::Stamp::of(&[&path]);
            if now != last {
                last = now;
                self.reload_policy(&path).await;
            }
        }
    }

    /// Reads the compliance policy again. A policy that loads replaces the
    /// one in force and every device is evaluated under it at once (its tier
    /// changes recorded as any other); one that does not is logged, counted
    /// and recorded, and the policy in force stays (a half-written file
    /// never drops every device to the floor).
    pub async fn reload_policy(&self, path: &std::path::Path) {
        let previous = self
            .policy()
            .map_or_else(|| "none".to_owned(), |p| p.version().to_owned());
        let loaded = Policy::load(path);
        let result = if loaded.is_ok() { "loaded" } else { "refused" };
        self.metrics
            .policy_loads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        let policy = match loaded {
            Ok(policy) => policy,
            Err(e) => {
                tracing::error!(error = %e, version = previous, "the changed compliance policy is refused: the policy in force stays");
                self.audit(
                    None,
                    "policy",
                    false,
                    &format!("{e}; policy {previous} stays"),
                    None,
                );
                return;
            }
        };
        let version = policy.version().to_owned();
        if version == previous {
            return;
        }
        tracing::info!(path = %path.display(), version, previous, "compliance policy loaded");
        *self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(policy));
        self.audit(
            None,
            "policy",
            true,
            &format!("policy {previous} -> {version} from {}", path.display()),
            None,
        );
        let now = now_ms();
        let ids: Vec<String> = lock(&self.live).keys().cloned().collect();
        for id in ids {
            self.evaluate(&id, now).await;
        }
    }

    /// The SPIFFE ID of a device.
    pub fn spiffe_id(&self, id: &str) -> String {
        format!("spiffe://{}{DEVICE_PATH}{id}", self.trust_domain)
    }

    /// The device a SPIFFE ID names, if it is a device of this trust domain.
    pub fn device_id_of(&self, spiffe_id: &str) -> Option<String> {
        let id = SpiffeId::parse(spiffe_id).ok()?;
        if id.trust_domain() != &self.trust_domain {
            return None;
        }
        id.path().strip_prefix(DEVICE_PATH).map(str::to_owned)
    }

    /// A device's current state, if it exists.
    pub fn state(&self, id: &str) -> Option<DeviceState> {
        lock(&self.live).get(id).map(|live| self.state_of(id, live))
    }

    fn state_of(&self, id: &str, live: &Live) -> DeviceState {
        DeviceState {
            id: id.to_owned(),
            spiffe_id: self.spiffe_id(id),
            owner: live.owner.clone(),
            status: live.status.to_string(),
            tier: live.tier.clone(),
            reasons: live.reasons.clone(),
            last_report_ms: live.last_report_ms,
        }
    }

    fn insert(&self, device: &Device) {
        let key = base64::engine::general_purpose::STANDARD
            .decode(&device.public_key)
            .ok()
            .and_then(|spki| report::p256_key(&spki).ok());
        let Some(key) = key else {
            tracing::error!(device = %device.id, "device key in the datastore is not a P-256 key: device ignored");
            return;
        };
        let facts: Facts = serde_json::from_value(device.facts.clone()).unwrap_or_default();
        let live = Live {
            owner: device.owner.clone(),
            status: device.status,
            key,
            key_type: device.key_type.clone(),
            test_mode: device.test_mode,
            seq: device.report_seq,
            // A restarted server has not heard from anyone yet: the heartbeat
            // counts from the last report it saved.
            last_report_ms: device.last_seen.map(|s| s * 1000),
            facts,
            tier: device.tier.clone(),
            reasons: device.tier_reasons.clone(),
            changed: self.bump(),
            deadline: None,
        };
        lock(&self.live).insert(device.id.clone(), live);
    }

    fn bump(&self) -> u64 {
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.send_replace(version);
        version
    }

    /// Evaluates a device at `now`, records a tier change, and schedules the
    /// next evaluation.
    async fn evaluate(&self, id: &str, now: u64) {
        let change = {
            let mut live = lock(&self.live);
            let Some(device) = live.get_mut(id) else { return };
            let (tier, reasons, deadline) = self.judge(device, now);
            let old_deadline = std::mem::replace(&mut device.deadline, deadline);
            {
                let mut deadlines = lock(&self.deadlines);
                if let Some(old) = old_deadline {
                    deadlines.remove(&(old, id.to_owned()));
                }
                if let Some(at) = deadline {
                    deadlines.insert((at, id.to_owned()));
                }
            }
            if deadline.is_some() {
                self.deadline_changed.notify_one();
            }
            if tier == device.tier && reasons == device.reasons {
                None
            } else {
                let previous = std::mem::replace(&mut device.tier, tier.clone());
                device.reasons = reasons.clone();
                device.changed = self.bump();
                Some((previous, tier, reasons))
            }
        };
        if let Some((previous, tier, reasons)) = change
            && previous != tier
        {
            let change = TierChange {
                id: id.to_owned(),
                previous,
                tier,
                reasons,
                at_ms: now,
            };
            if self.tier_changes.send(change).is_err() {
                tracing::error!(device = %id, "the tier change recorder is gone: a tier change is not recorded");
            }
        }
    }

    /// The tier, reasons and next deadline of a device at `now`; fails
    /// closed to the floor.
    fn judge(&self, device: &Live, now: u64) -> (String, Vec<String>, Option<u64>) {
        let policy = self.policy();
        let floor = floor_of(policy.as_deref());
        match device.status {
            DeviceStatus::Active => {}
            other => return (floor, vec![format!("the device is {other}")], None),
        }
        let Some(policy) = policy else {
            return (
                floor,
                vec!["no compliance policy: every device is at the floor".into()],
                None,
            );
        };
        let attributes: BTreeMap<String, Value> = [
            ("device.key_type".to_owned(), json!(device.key_type)),
            ("device.status".to_owned(), json!(device.status.as_str())),
        ]
        .into();
        let evaluation = policy.evaluate(
            &DeviceView {
                facts: &device.facts,
                attributes: &attributes,
                last_report_ms: device.last_report_ms,
            },
            now,
        );
        (evaluation.tier, evaluation.reasons, evaluation.changes_at_ms)
    }

    async fn record_tier_change(&self, id: &str, previous: &str, tier: &str, reasons: &[String], now: u64) {
        self.metrics
            .tier_changes
            .get_or_create(&TierLabels {
                from: previous.to_owned(),
                to: tier.to_owned(),
            })
            .inc();
        let spiffe_id = self.spiffe_id(id);
        let event = compliance::caep_event(
            &format!("spiffe://{}", self.trust_domain),
            id,
            &spiffe_id,
            previous,
            tier,
            &self.floor(),
            reasons,
            now / 1000,
        );
        tracing::info!(device = %id, from = previous, to = tier, reasons = ?reasons, "device tier changed");
        if let Err(e) = self.store.set_device_tier(id, tier, reasons, &event, now).await {
            tracing::error!(device = %id, error = %e, "recording a tier change failed");
        }
        self.audit(
            Some(self.spiffe_id(id)),
            "tier",
            true,
            &format!("{previous} -> {tier}: {}", reasons.join("; ")),
            Some(event),
        );
    }

    /// Writes a record to the decision log, if there is one: about the
    /// device `principal` (its SPIFFE ID), or the service itself (`None`),
    /// under the policy in force.
    fn audit(
        &self,
        principal: Option<String>,
        kind: &str,
        allowed: bool,
        reason: &str,
        input: Option<Value>,
    ) {
        let Some(log) = &self.log else { return };
        let record = zt_audit::Record {
            seq: 0,
            time_ms: now_ms(),
            id: zt_store::random_id().unwrap_or_default(),
            source_principal: principal,
            source_ip: None,
            destination: "devices".into(),
            port: None,
            protocol: "device".into(),
            method: None,
            host: None,
            path: None,
            decision: if allowed { "ALLOW" } else { "DENY" }.into(),
            mode: "devices".into(),
            policy: None,
            reason: reason.to_owned(),
            policy_version: self.policy().map(|p| p.version().to_owned()).unwrap_or_default(),
            eval_ns: 0,
            dry_run: None,
            audit: None,
            query: Some(format!("device/{kind}")),
            input,
            result: None,
            revision: None,
            request_principal: None,
            request_claims: None,
            prev: String::new(),
            hash: String::new(),
        };
        if let Err(e) = lock(log).append([record]) {
            tracing::error!(error = %e, "writing the device decision log failed");
        }
    }

    /// Re-evaluates every device whose deadline has come, forever.
    pub async fn watch_deadlines(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let now = now_ms();
            let due: Vec<String> = {
                let mut deadlines = lock(&self.deadlines);
                let mut due = Vec::new();
                while let Some(first) = deadlines.first() {
                    if first.0 > now {
                        break;
                    }
                    if let Some((_, id)) = deadlines.pop_first() {
                        due.push(id);
                    }
                }
                due
            };
            for id in &due {
                if let Some(device) = lock(&self.live).get_mut(id) {
                    device.deadline = None;
                }
                self.evaluate(id, now).await;
            }
            let next = lock(&self.deadlines).first().map(|(at, _)| *at);
            let sleep = next.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(now_ms()))
            });
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.deadline_changed.notified() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Writes accepted reports to the datastore every [`SAVE_INTERVAL`].
    pub async fn save_reports(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SAVE_INTERVAL);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.wait_for(|stop| *stop) => true,
            };
            let batch: Vec<SavedPosture> = lock(&self.unsaved).drain().map(|(_, p)| p).collect();
            if let Err(e) = self.store.save_device_postures(&batch).await {
                // Kept for the next round rather than lost.
                let mut unsaved = lock(&self.unsaved);
                for posture in batch {
                    unsaved.entry(posture.id.clone()).or_insert(posture);
                }
                tracing::warn!(error = %e, "saving device reports failed: retrying");
            }
            if stopping {
                return;
            }
        }
    }

    /// Follows the change feed for devices enrolled, approved, revoked or
    /// deleted through any server (the admin API, another replica).
    pub async fn follow(self: Arc<Self>, stop: watch::Receiver<bool>) {
        if let Err(e) = self.follow_changes(stop).await {
            tracing::error!(error = %e, "device states could not follow the change feed");
        }
    }

    async fn follow_changes(&self, mut stop: watch::Receiver<bool>) -> Result<(), String> {
        let mut changes = self.store.watch_changes();
        let mut seq = self.store.latest_change().await.map_err(|e| e.to_string())?;
        loop {
            let batch = self
                .store
                .changes_since(seq, 500)
                .await
                .map_err(|e| e.to_string())?;
            for change in &batch {
                seq = change.seq;
                if change.kind == "device" {
                    self.reload(&change.subject).await.map_err(|e| e.to_string())?;
                }
            }
            if batch.len() == 500 {
                continue;
            }
            tokio::select! {
                changed = changes.changed() => changed.map_err(|e| e.to_string())?,
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            }
        }
    }

    /// Reads one device again after an administrative change.
    pub(crate) async fn reload(&self, id: &str) -> Result<(), StoreError> {
        match self.store.device(id).await? {
            Some(device) => {
                let changed = {
                    let mut live = lock(&self.live);
                    match live.get_mut(id) {
                        Some(existing) if existing.status != device.status => {
                            existing.status = device.status;
                            true
                        }
                        Some(_) => false,
                        None => {
                            drop(live);
                            self.insert(&device);
                            true
                        }
                    }
                };
                if changed {
                    self.evaluate(id, now_ms()).await;
                }
            }
            None => {
                lock(&self.refusals).remove(id);
                let removed = lock(&self.live).remove(id);
                if let Some(device) = removed {
                    if let Some(at) = device.deadline {
                        lock(&self.deadlines).remove(&(at, id.to_owned()));
                    }
                    self.bump();
                    lock(&self.deleted).insert(id.to_owned(), self.version.load(Ordering::SeqCst));
                }
            }
        }
        Ok(())
    }

    /// The states changed after `after` (all when 0), and the version to wait on.
    pub fn states_since(&self, after: u64) -> DeviceStates {
        let version = self.version.load(Ordering::SeqCst);
        let live = lock(&self.live);
        let mut devices: Vec<DeviceState> = live
            .iter()
            .filter(|(_, device)| after == 0 || device.changed > after)
            .map(|(id, device)| self.state_of(id, device))
            .collect();
        devices.extend(
            lock(&self.deleted)
                .iter()
                .filter(|(_, at)| after != 0 && **at > after)
                .map(|(id, _)| DeviceState {
                    id: id.clone(),
                    spiffe_id: self.spiffe_id(id),
                    owner: String::new(),
                    status: "deleted".into(),
                    tier: self.floor(),
                    reasons: vec!["the device was deleted".into()],
                    last_report_ms: None,
                }),
        );
        DeviceStates { version, devices }
    }

    /// Enrolls a device from a signed enrollment request.
    pub async fn enroll(&self, body: &str) -> Result<Value, Refused> {
        let result = self.enroll_inner(body).await;
        let label = match &result {
            Ok(_) => "enrolled",
            Err(refused) => refused.kind,
        };
        self.metrics
            .enrollments
            .get_or_create(&ResultLabels { result: label.into() })
            .inc();
        result
    }

    async fn enroll_inner(&self, body: &str) -> Result<Value, Refused> {
        let bad = |message: String| Refused::new(StatusCode::BAD_REQUEST, "malformed", message);
        let jws = report::decode(body, ENROLL_TYPE).map_err(|e| bad(e.to_string()))?;
        let text = |name: &str| -> Result<String, Refused> {
            jws.claims
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("enrollment request: {name} is missing or not a string")))
        };
        let token = text("token")?;
        let public_key = text("public_key")?;
        let key_type = text("key_type")?;
        if key_type != "tpm" && key_type != "software" {
            return Err(bad(format!(
                "enrollment request: key_type {key_type:?}: expected tpm or software"
            )));
        }
        check_iat(&jws.claims, "enrollment request")?;
        let hardware: BTreeMap<String, String> = match jws.claims.get("hardware") {
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|e| bad(format!("enrollment request: hardware: {e}")))?,
            None => BTreeMap::new(),
        };
        if hardware.len() > 32 || hardware.iter().any(|(k, v)| k.len() > 64 || v.len() > 256) {
            return Err(bad(
                "enrollment request: hardware: at most 32 facts of 256 bytes".into()
            ));
        }
        let spki = base64::engine::general_purpose::STANDARD
            .decode(&public_key)
            .map_err(|_| bad("enrollment request: public_key is not base64".into()))?;
        let key = report::p256_key(&spki).map_err(|e| bad(format!("enrollment request: {e}")))?;
        // Proof of possession: the request is signed by the key it enrolls.
        report::verified(jws, ENROLL_TYPE, &key)
            .map_err(|e| Refused::new(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string()))?;
        let device = self
            .store
            .enroll_device(
                &token,
                NewDevice {
                    key_type,
                    public_key,
                    hardware,
                    tier: self.floor(),
                },
                now_ms(),
            )
            .await
            .map_err(store_refusal)?;
        self.insert(&device);
        self.evaluate(&device.id, now_ms()).await;
        tracing::info!(device = %device.id, owner = %device.owner, key_type = %device.key_type, status = %device.status, "device enrolled");
        Ok(json!({
            "device_id": device.id,
            "spiffe_id": self.spiffe_id(&device.id),
            "owner": device.owner,
            "status": device.status,
        }))
    }

    /// Issues a certificate to an active device for its enrolled key, on a
    /// request signed by that key.
    pub async fn certificate(&self, body: &str) -> Result<Value, Refused> {
        let bad = |message: String| Refused::new(StatusCode::BAD_REQUEST, "malformed", message);
        let jws = report::decode(body, CERTIFICATE_TYPE).map_err(|e| bad(e.to_string()))?;
        let id = jws
            .kid()
            .map(str::to_owned)
            .ok_or_else(|| bad("certificate request: kid is missing".into()))?;
        let (key, status) = {
            let live = lock(&self.live);
            let device = live.get(&id).ok_or_else(|| {
                Refused::new(
                    StatusCode::NOT_FOUND,
                    "unknown_device",
                    format!("device {id} is not enrolled"),
                )
            })?;
            (device.key.clone(), device.status)
        };
        let claims = report::verified(jws, CERTIFICATE_TYPE, &key)
            .map_err(|e| Refused::new(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string()))?;
        check_iat(&claims, "certificate request")?;
        match status {
            DeviceStatus::Active => {}
            DeviceStatus::Pending => {
                return Err(Refused::new(
                    StatusCode::FORBIDDEN,
                    "pending",
                    format!("device {id} waits for an administrator's approval (zt device approve {id})"),
                ));
            }
            DeviceStatus::Revoked => {
                return Err(Refused::new(
                    StatusCode::FORBIDDEN,
                    "revoked",
                    format!("device {id} is revoked"),
                ));
            }
        }
        let device = self
            .store
            .device(&id)
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| {
                Refused::new(
                    StatusCode::NOT_FOUND,
                    "unknown_device",
                    format!("device {id} is not enrolled"),
                )
            })?;
        let spki = base64::engine::general_purpose::STANDARD
            .decode(&device.public_key)
            .map_err(|_| {
                Refused::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "corrupt",
                    "stored key unreadable",
                )
            })?;
        let spiffe_id = SpiffeId::parse(&self.spiffe_id(&id))
            .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, "malformed", e.to_string()))?;
        let authorities = self.authorities.current();
        let now = now_ms() / 1000;
        let remaining = authorities.active.not_after().saturating_sub(now);
        let request = SvidRequest {
            spiffe_id,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            ttl: self.cert_ttl.min(Duration::from_secs(remaining)),
        };
        let signed = authorities
            .active
            .sign_x509_svid_for_key(&spki, &request, now)
            .map_err(|e| Refused::new(StatusCode::INTERNAL_SERVER_ERROR, "signing", e.to_string()))?;
        let serial = zt_identity::x509::hex_compact(&signed.serial);
        if let Err(e) = self
            .store
            .device_certificate_issued(&id, &serial, signed.not_after, now_ms())
            .await
        {
            tracing::warn!(device = %id, error = %e, "recording a device certificate failed");
        }
        let chain_pem: String = signed.chain.iter().map(zt_identity::x509::to_pem).collect();
        let bundle_pem: String = authorities
            .bundle
            .x509_authorities()
            .iter()
            .map(zt_identity::x509::to_pem)
            .collect();
        Ok(json!({
            "device_id": id,
            "spiffe_id": self.spiffe_id(&id),
            "chain_pem": chain_pem,
            "bundle_pem": bundle_pem,
            "serial": serial,
            "expires_at": signed.not_after,
        }))
    }

    /// Accepts a posture report from the device whose certificate the
    /// connection presented.
    pub async fn report(&self, peer: &PeerInfo, body: &str) -> Result<Value, Refused> {
        let device_id = peer
            .spiffe_id
            .as_ref()
            .and_then(|id| self.device_id_of(&id.to_string()));
        let result = self.report_inner(device_id.as_deref(), body).await;
        let label = match &result {
            Ok(_) => "accepted",
            Err(refused) => refused.kind,
        };
        self.metrics
            .reports
            .get_or_create(&ResultLabels { result: label.into() })
            .inc();
        if let (Err(refused), Some(id)) = (&result, &device_id) {
            tracing::warn!(device = %id, reason = refused.kind, error = %refused.message, "posture report refused");
            let detail = json!({ "reason": refused.kind, "error": refused.message });
            if lock(&self.live).contains_key(id.as_str()) && self.may_record_refusal(id) {
                if let Err(e) = self
                    .store
                    .record_device_event(id, "refused", &detail, now_ms())
                    .await
                {
                    tracing::warn!(device = %id, error = %e, "recording a refused report failed");
                }
                self.audit(
                    Some(self.spiffe_id(id)),
                    "report",
                    false,
                    &refused.message,
                    Some(detail),
                );
            }
        }
        result
    }

    /// Whether another refusal of `id` may be recorded in this window.
    fn may_record_refusal(&self, id: &str) -> bool {
        let now = now_ms();
        let mut refusals = lock(&self.refusals);
        let (since, count) = refusals.entry(id.to_owned()).or_insert((now, 0));
        if now.saturating_sub(*since) >= REFUSALS_WINDOW_MS {
            (*since, *count) = (now, 0);
        }
        *count += 1;
        *count <= REFUSALS_RECORDED
    }

    async fn report_inner(&self, device_id: Option<&str>, body: &str) -> Result<Value, Refused> {
        let Some(id) = device_id else {
            return Err(Refused::new(
                StatusCode::UNAUTHORIZED,
                "no_device_certificate",
                "posture reports come over mTLS with the device's certificate",
            ));
        };
        let bad = |message: String| Refused::new(StatusCode::BAD_REQUEST, "malformed", message);
        let jws = report::decode(body, REPORT_TYPE).map_err(|e| bad(e.to_string()))?;
        if jws.kid() != Some(id) {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                "other_device",
                format!(
                    "the report names device {:?}, the certificate {id}",
                    jws.kid().unwrap_or_default()
                ),
            ));
        }
        let (key, status, test_mode) = {
            let live = lock(&self.live);
            let device = live.get(id).ok_or_else(|| {
                Refused::new(
                    StatusCode::NOT_FOUND,
                    "unknown_device",
                    format!("device {id} is not enrolled"),
                )
            })?;
            (device.key.clone(), device.status, device.test_mode)
        };
        if status != DeviceStatus::Active {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                if status == DeviceStatus::Revoked {
                    "revoked"
                } else {
                    "pending"
                },
                format!("device {id} is {status}"),
            ));
        }
        let claims = report::verified(jws, REPORT_TYPE, &key)
            .map_err(|e| Refused::new(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string()))?;
        let report = Report::from_claims(claims).map_err(|e| bad(e.to_string()))?;
        if report.device_id != id {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                "other_device",
                format!(
                    "the report is for device {:?}, the certificate {id}",
                    report.device_id
                ),
            ));
        }
        let now = now_ms();
        if report.sent_ms.abs_diff(now) > MAX_CLOCK_SKEW_MS {
            return Err(Refused::new(
                StatusCode::BAD_REQUEST,
                "stale",
                format!(
                    "the report was sent {} ms from the server's clock (at most {MAX_CLOCK_SKEW_MS})",
                    report.sent_ms.abs_diff(now)
                ),
            ));
        }
        if let Some((name, fact)) = report
            .facts
            .iter()
            .find(|(_, fact)| fact.observed_at > now / 1000 + FUTURE_FACT_SLACK_SECS)
        {
            return Err(Refused::new(
                StatusCode::BAD_REQUEST,
                "future_fact",
                format!(
                    "fact {name} was observed at {}, {} s in the future",
                    fact.observed_at,
                    fact.observed_at - now / 1000
                ),
            ));
        }
        if !report.overridden.is_empty() && !test_mode {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                "override",
                format!(
                    "facts {} come from an override file: device {id} was not enrolled in test mode",
                    report.overridden.join(", ")
                ),
            ));
        }
        {
            let mut live = lock(&self.live);
            let device = live.get_mut(id).ok_or_else(|| {
                Refused::new(
                    StatusCode::NOT_FOUND,
                    "unknown_device",
                    format!("device {id} is not enrolled"),
                )
            })?;
            if report.seq <= device.seq {
                return Err(Refused::new(
                    StatusCode::CONFLICT,
                    "replayed",
                    format!(
                        "sequence number {} is not above the last accepted, {}: a replayed or re-ordered report",
                        report.seq, device.seq
                    ),
                ));
            }
            device.seq = report.seq;
            device.last_report_ms = Some(now);
            device.facts = report.facts.clone();
        }
        lock(&self.unsaved).insert(
            id.to_owned(),
            SavedPosture {
                id: id.to_owned(),
                seq: report.seq,
                seen: now / 1000,
                facts: serde_json::to_value(&report.facts).unwrap_or(Value::Null),
            },
        );
        self.evaluate(id, now).await;
        let state = self.state(id);
        Ok(json!({
            "seq": report.seq,
            "tier": state.as_ref().map(|s| s.tier.clone()),
            "reasons": state.map(|s| s.reasons).unwrap_or_default(),
        }))
    }

    /// Waits until a state changes after `after`, for at most `wait`.
    pub async fn wait_for_change(&self, after: u64, wait: Duration) {
        let mut changed = self.changed.subscribe();
        let _ = tokio::time::timeout(wait.min(MAX_WAIT), changed.wait_for(|version| *version > after)).await;
    }
}

/// Refuses a request whose `iat` is missing or more than
/// [`REQUEST_WINDOW_SECS`] from now.
fn check_iat(claims: &serde_json::Map<String, Value>, what: &str) -> Result<(), Refused> {
    let iat = claims.get("iat").and_then(Value::as_u64).ok_or_else(|| {
        Refused::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("{what}: iat is missing"),
        )
    })?;
    let now = now_ms() / 1000;
    if iat.abs_diff(now) > REQUEST_WINDOW_SECS {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "stale",
            format!(
                "{what}: iat is {} s from the server's clock (at most {REQUEST_WINDOW_SECS})",
                iat.abs_diff(now)
            ),
        ));
    }
    Ok(())
}

/// The tier of a device nothing is known of: the policy's last, `untrusted`
/// without one.
fn floor_of(policy: Option<&Policy>) -> String {
    policy.map_or("untrusted", Policy::floor).to_owned()
}

fn now_ms() -> u64 {
    zt_identity::clock::unix_millis()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `GET /v1/states` query.
#[derive(Debug, Deserialize)]
struct StatesQuery {
    #[serde(default)]
    after: u64,
    /// Seconds to wait for a change when there is none yet.
    #[serde(default)]
    wait: u64,
}

/// The device API's routes.
fn router(devices: Arc<Devices>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll))
        .route("/v1/certificate", post(certificate))
        .route("/v1/report", post(report_route))
        .route("/v1/states", get(states))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(devices)
}

fn body_text(body: &Bytes) -> Result<&str, Refused> {
    std::str::from_utf8(body)
        .map(str::trim)
        .map_err(|_| Refused::new(StatusCode::BAD_REQUEST, "malformed", "the body is not UTF-8"))
}

async fn enroll(State(devices): State<Arc<Devices>>, body: Bytes) -> Response {
    match body_text(&body) {
        Ok(text) => devices.enroll(text).await.map(axum::Json).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn certificate(State(devices): State<Arc<Devices>>, body: Bytes) -> Response {
    match body_text(&body) {
        Ok(text) => devices.certificate(text).await.map(axum::Json).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn report_route(
    State(devices): State<Arc<Devices>>,
    axum::Extension(peer): axum::Extension<PeerInfo>,
    body: Bytes,
) -> Response {
    match body_text(&body) {
        Ok(text) => devices.report(&peer, text).await.map(axum::Json).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// Device states, for the gateway: a long poll, open only to the workloads
/// named by `--device-state-reader` (every device's tier and the reasons for
/// it are not for every workload of the trust domain, nor for devices).
async fn states(
    State(devices): State<Arc<Devices>>,
    axum::Extension(peer): axum::Extension<PeerInfo>,
    Query(query): Query<StatesQuery>,
) -> Response {
    let Some(caller) = &peer.spiffe_id else {
        return Refused::new(
            StatusCode::UNAUTHORIZED,
            "no_certificate",
            "device states are for workloads with an SVID",
        )
        .into_response();
    };
    let caller = caller.to_string();
    if !devices.state_readers.contains(&caller) {
        tracing::warn!(caller, "device states refused: not a --device-state-reader");
        return Refused::new(
            StatusCode::FORBIDDEN,
            "not_a_state_reader",
            format!("{caller} may not read device states (zt server --device-state-reader names who may)"),
        )
        .into_response();
    }
    if query.after != 0 && devices.version.load(Ordering::SeqCst) <= query.after {
        devices
            .wait_for_change(query.after, Duration::from_secs(query.wait))
            .await;
    }
    axum::Json(devices.states_since(query.after)).into_response()
}

/// Serves the device API on `listener` until `stop`.
pub async fn serve(
    devices: Arc<Devices>,
    tls: Arc<ServerTls>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let router = router(devices);
    let mut connections = tls.accept(listener, stop.clone());
    loop {
        tokio::select! {
            conn = connections.recv() => {
                let Some(Ok(conn)) = conn else { return };
                let router = router.clone();
                tokio::spawn(serve_connection(conn.stream, conn.peer, router));
            }
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

async fn serve_connection<S>(stream: S, peer: PeerInfo, router: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;
    let addr = peer.addr;
    let app = router.layer(axum::Extension(peer));
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(MAX_BODY_BYTES)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(peer = ?addr, error = %e, "device API connection ended");
    }
}

/// The admin API's routes for devices, merged into the admin router.
pub(crate) fn admin_routes() -> Router<crate::admin::AdminState> {
    use axum::routing::delete;
    Router::new()
        .route("/v1/devices/tokens", post(create_token))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", get(show_device).merge(delete(delete_device)))
        .route("/v1/devices/{id}/approve", post(approve_device))
        .route("/v1/devices/{id}/revoke", post(revoke_device))
}

/// The longest a device enrollment token may live: one day (15 minutes by default).
pub const MAX_DEVICE_TOKEN_TTL: u64 = 24 * 3600;

use crate::admin::{AdminState, ApiError, ApiResult, json as json_body, store_error};
use crate::api::{CreateDeviceToken, DeviceInfo, DeviceList, DeviceToken};

fn service(state: &AdminState) -> ApiResult<&Arc<Devices>> {
    state
        .devices
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("device trust is off: start zt server with --devices"))
}

fn info(state: &AdminState, device: Device, events: Vec<zt_store::DeviceEvent>) -> DeviceInfo {
    let spiffe_id = format!("spiffe://{}{DEVICE_PATH}{}", state.trust_domain, device.id);
    let mut device = device;
    if let Some(live) = state
        .devices
        .as_ref()
        .and_then(|service| service.state(&device.id))
    {
        device.tier = live.tier;
        device.tier_reasons = live.reasons;
        device.last_seen = live.last_report_ms.map(|ms| ms / 1000).or(device.last_seen);
    }
    DeviceInfo {
        device,
        spiffe_id,
        events,
    }
}

async fn create_token(State(state): State<AdminState>, body: Bytes) -> ApiResult<axum::Json<DeviceToken>> {
    service(&state)?;
    let request: CreateDeviceToken = json_body(&body)?;
    if request.ttl_secs == 0 || request.ttl_secs > MAX_DEVICE_TOKEN_TTL {
        return Err(ApiError::bad_request(format!(
            "ttl: {} s: a device enrollment token lives 1 s to {MAX_DEVICE_TOKEN_TTL} s",
            request.ttl_secs
        )));
    }
    let now = now_ms() / 1000;
    let grant = zt_store::DeviceTokenGrant {
        owner: request.owner.clone(),
        approval: request.approval,
        test_mode: request.test_mode,
    };
    let token = state
        .store
        .create_device_token(&grant, request.ttl_secs, now)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", owner = %request.owner, approval = request.approval, test_mode = request.test_mode, "device enrollment token created");
    Ok(axum::Json(DeviceToken {
        token,
        expires_at: now + request.ttl_secs,
    }))
}

async fn list_devices(State(state): State<AdminState>) -> ApiResult<axum::Json<DeviceList>> {
    let devices = state
        .store
        .list_devices()
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    let devices = devices.into_iter().map(|d| info(&state, d, Vec::new())).collect();
    Ok(axum::Json(DeviceList { devices }))
}

async fn show_device(
    State(state): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<axum::Json<DeviceInfo>> {
    let device = state
        .store
        .device(&id)
        .await
        .map_err(|e| store_error(&state.metrics, e))?
        .ok_or_else(|| {
            store_error(
                &state.metrics,
                StoreError::Missing {
                    what: "device",
                    key: id.clone(),
                },
            )
        })?;
    let events = state
        .store
        .device_events(&id, 20)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    Ok(axum::Json(info(&state, device, events)))
}

async fn set_status(state: &AdminState, id: &str, status: DeviceStatus) -> ApiResult<axum::Json<DeviceInfo>> {
    let device = state
        .store
        .set_device_status(id, status, now_ms())
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", device = %id, status = %status, "device status set");
    if let Some(service) = &state.devices {
        // This server sees the change at once; others through the change feed.
        if let Err(e) = service.reload(id).await {
            tracing::warn!(device = %id, error = %e, "reloading a device failed");
        }
    }
    Ok(axum::Json(info(state, device, Vec::new())))
}

async fn approve_device(
    State(state): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<axum::Json<DeviceInfo>> {
    set_status(&state, &id, DeviceStatus::Active).await
}

async fn revoke_device(
    State(state): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<axum::Json<DeviceInfo>> {
    set_status(&state, &id, DeviceStatus::Revoked).await
}

async fn delete_device(
    State(state): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<axum::Json<DeviceInfo>> {
    let device = state
        .store
        .delete_device(&id, now_ms() / 1000)
        .await
        .map_err(|e| store_error(&state.metrics, e))?;
    tracing::info!(target: "zt::audit", device = %id, "device deleted");
    if let Some(service) = &state.devices
        && let Err(e) = service.reload(&id).await
    {
        tracing::warn!(device = %id, error = %e, "forgetting a device failed");
    }
    Ok(axum::Json(info(&state, device, Vec::new())))
}

impl zt_idp::DeviceDirectory for Devices {
    fn device(&self, spiffe_id: &str) -> Option<(String, String)> {
        let id = self.device_id_of(spiffe_id)?;
        let tier = self.tier(&id)?;
        Some((id, tier))
    }

    fn tier(&self, id: &str) -> Option<String> {
        lock(&self.live).get(id).map(|live| live.tier.clone())
    }
}
