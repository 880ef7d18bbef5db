//! Device trust at the gateway: the live tier of every enrolled device,
//! pushed by zt server (a long poll on its device API, with the gateway's
//! SVID), and the device behind each request — the device certificate the
//! client presented on its connection, never what a token says. A token
//! bound to a certificate (`cnf`) must come with that certificate. Without
//! an answer from the server for `stale_after`, every device is unknown:
//! the gateway fails closed rather than trust a tier it can no longer see.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{Request, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::{Value, json};
use zt_proxy::identity::IdentityWatch;

use crate::config;

/// The tier of a request with no device, or whose device is not known.
pub const UNKNOWN: &str = "unknown";
/// How long the server holds a long poll open.
const WAIT_SECS: u64 = 5;
/// The largest states answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A device's state as zt server pushes it.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceState {
    /// Its ID.
    pub id: String,
    /// `active`, `pending`, `revoked` or `deleted`.
    pub status: String,
    /// Its tier now.
    pub tier: String,
    /// Why not better.
    #[serde(default)]
    pub reasons: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct States {
    version: u64,
    devices: Vec<DeviceState>,
}

/// The device of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDevice {
    /// Its ID, when the client presented a device certificate.
    pub id: Option<String>,
    /// Its live tier, or [`UNKNOWN`].
    pub tier: String,
    /// Why it is not in a better tier.
    pub reasons: Vec<String>,
}

impl RequestDevice {
    /// No device certificate on the connection.
    pub fn none() -> Self {
        Self {
            id: None,
            tier: UNKNOWN.into(),
            reasons: vec!["no device certificate was presented".into()],
        }
    }

    /// The claims policies see in place of the token's `device_id` and `device_tier`.
    pub fn claims(&self) -> [(String, Value); 2] {
        [
            ("device_id".into(), json!(self.id)),
            ("device_tier".into(), json!(self.tier)),
        ]
    }

    /// What a person is told when a route is refused.
    pub fn explanation(&self) -> String {
        match &self.id {
            Some(id) => format!("device {id} is {}: {}", self.tier, self.reasons.join("; ")),
            None => format!("device {}: {}", self.tier, self.reasons.join("; ")),
        }
    }
}

/// Every device's live state.
pub struct Devices {
    states: RwLock<HashMap<String, DeviceState>>,
    /// When the server last answered, Unix ms.
    answered_ms: AtomicU64,
    stale_after: Duration,
    /// `spiffe://TD/device/`, once the gateway knows its trust domain (from
    /// its first SVID); until then no certificate names a known device.
    trust_domain_prefix: std::sync::OnceLock<String>,
    /// Devices held (a metric).
    held: Gauge,
    /// Polls of the server that failed (a metric).
    failures: Counter,
}

impl Devices {
    /// Empty until the server first answers.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            states: RwLock::new(HashMap::new()),
            answered_ms: AtomicU64::new(0),
            stale_after,
            trust_domain_prefix: std::sync::OnceLock::new(),
            held: Gauge::default(),
            failures: Counter::default(),
        }
    }

    /// The trust domain whose devices these are (the first one set stays).
    pub fn set_trust_domain(&self, trust_domain: &zt_identity::TrustDomain) {
        let _ = self.trust_domain_prefix.set(format!(
            "spiffe://{trust_domain}{}",
            zt_identity::spiffe_id::DEVICE_PATH
        ));
    }

    /// The same, counting into `held` (devices whose state is held) and
    /// `failures` (polls of the server that failed).
    #[must_use]
    pub fn with_metrics(self, held: Gauge, failures: Counter) -> Self {
        Self {
            held,
            failures,
            ..self
        }
    }

    /// The device behind a client certificate's SPIFFE ID, at `now_ms`.
    pub fn lookup(&self, spiffe_id: Option<&str>, now_ms: u64) -> RequestDevice {
        let prefix = self.trust_domain_prefix.get();
        let Some(id) = spiffe_id
            .zip(prefix)
            .and_then(|(s, prefix)| s.strip_prefix(prefix.as_str()))
        else {
            return RequestDevice::none();
        };
        let answered = self.answered_ms.load(Ordering::Acquire);
        if now_ms.saturating_sub(answered) > self.stale_after.as_millis() as u64 {
            return RequestDevice {
                id: Some(id.to_owned()),
                tier: UNKNOWN.into(),
                reasons: vec![format!(
                    "device states from zt server are older than {:?}",
                    self.stale_after
                )],
            };
        }
        let states = self
            .states
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match states.get(id) {
            Some(state) if state.status == "active" => RequestDevice {
                id: Some(id.to_owned()),
                tier: state.tier.clone(),
                reasons: state.reasons.clone(),
            },
            Some(state) => RequestDevice {
                id: Some(id.to_owned()),
                tier: UNKNOWN.into(),
                reasons: vec![format!("the device is {}", state.status)],
            },
            None => RequestDevice {
                id: Some(id.to_owned()),
                tier: UNKNOWN.into(),
                reasons: vec!["the device is not enrolled".into()],
            },
        }
    }

    /// Takes `states` as every device there is, answered now (what the first
    /// long poll does; also for benchmarks).
    pub fn replace_all(&self, states: Vec<DeviceState>) {
        self.apply(
            States {
                version: 0,
                devices: states,
            },
            true,
        );
    }

    /// Applies an answer; `full` when it holds every device (`after` 0).
    fn apply(&self, states: States, full: bool) -> u64 {
        let mut map = self
            .states
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if full {
            map.clear();
        }
        for state in states.devices {
            if state.status == "deleted" {
                map.remove(&state.id);
            } else {
                map.insert(state.id.clone(), state);
            }
        }
        self.held.set(i64::try_from(map.len()).unwrap_or(i64::MAX));
        self.answered_ms
            .store(zt_identity::clock::unix_millis(), Ordering::Release);
        states.version
    }

    /// Follows zt server's device states, forever (reconnecting with a backoff).
    pub async fn follow(self: Arc<Self>, settings: config::Devices, identity: IdentityWatch) {
        let mut version = 0;
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.poll(&settings, &identity, version).await {
                Ok(next) => {
                    // A server that restarted counts from 1 again: take everything.
                    version = if next < version { 0 } else { next };
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    self.failures.inc();
                    tracing::warn!(server = %settings.server, error = %e, "device states: no answer");
                    version = 0;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn poll(
        &self,
        settings: &config::Devices,
        identity: &IdentityWatch,
        after: u64,
    ) -> Result<u64, String> {
        let identity = identity.borrow().clone().ok_or("the gateway has no SVID yet")?;
        self.set_trust_domain(identity.spiffe_id.trust_domain());
        let config = zt_tls::client_config(
            identity.chain.clone(),
            identity.key.clone_key(),
            identity.bundles.clone(),
            zt_tls::PeerMatcher::MemberOf(identity.spiffe_id.trust_domain().clone()),
            zt_tls::TlsVersions::Tls13,
        )
        .map_err(|e| e.to_string())?;
        let uri: Uri = settings
            .server
            .parse()
            .map_err(|_| "devices.server is not a URL".to_owned())?;
        let authority = uri.authority().ok_or("devices.server has no host")?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tcp = tokio::net::TcpStream::connect((host.as_str(), authority.port_u16().unwrap_or(443)))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| zt_tls::handshake_error_text(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut after = after;
        // One connection for many polls; a new one when it fails.
        loop {
            // The previous answer must be done with before the next request.
            sender.ready().await.map_err(|e| e.to_string())?;
            let request = Request::get(format!("/v1/states?after={after}&wait={WAIT_SECS}"))
                .header(http::header::HOST, authority.as_str())
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let answer =
                tokio::time::timeout(Duration::from_secs(WAIT_SECS + 10), sender.send_request(request))
                    .await
                    .map_err(|_| "no answer".to_owned())?
                    .map_err(|e| e.to_string())?;
            let status = answer.status();
            let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            let states: States = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let next = self.apply(states, after == 0);
            if next < after {
                return Ok(next);
            }
            after = next;
        }
    }
}
