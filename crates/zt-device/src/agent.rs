//! The device's side: enrollment, its certificate, and `zt device agent`'s
//! reports, over HTTPS to zt server's device API.
//!
//! The device's directory holds the key ([`crate::key`]), `device.json` (who
//! it is and where its server is), `bundle.pem` (the trust domain's
//! authorities, to verify the server and to hand to clients) and
//! `device.pem` (its certificate, renewed at half its life by a request
//! signed with the key). Every file is written atomically, mode 0600.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::facts::{Collector, Facts, Observed, read_override};
use crate::key::{DeviceKey, KeyChoice, KeyError, TpmLocation};
use crate::report::{self, CERTIFICATE_TYPE, ENROLL_TYPE, Report};

/// The device's identity file.
pub const DEVICE_FILE: &str = "device.json";
/// The trust bundle file.
pub const BUNDLE_FILE: &str = "bundle.pem";
/// The certificate chain file.
pub const CERTIFICATE_FILE: &str = "device.pem";
/// What the server said of the last accepted report (`zt up`'s probe, and
/// for people: when, and the tier it earned).
pub const LAST_REPORT_FILE: &str = "last-report.json";
/// The largest answer read from the server.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// How long one call to the server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The device key.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// A file of the device's directory.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing the device's files.
    #[error("{0}")]
    Fs(#[from] zt_fs::FsError),
    /// `--server`.
    #[error("--server {url:?}: {reason}")]
    Server {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached, or answered nonsense.
    #[error("{url}: {reason}")]
    Call {
        /// What was called.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused.
    #[error("{url}: refused ({status}): {message}")]
    Refused {
        /// What was called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's reason.
        message: String,
    },
    /// Signing.
    #[error("{0}")]
    Signed(#[from] report::SignedError),
}

/// Who the device is, as `device.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdentity {
    /// Its ID.
    pub device_id: String,
    /// `spiffe://TD/device/ID`.
    pub spiffe_id: String,
    /// The person it is issued to.
    pub owner: String,
    /// The device API, `https://host:port`.
    pub server: String,
}

/// The device's directory and what is in it.
pub struct DeviceDir {
    dir: PathBuf,
    key: Arc<DeviceKey>,
    identity: DeviceIdentity,
}

impl DeviceDir {
    /// Opens an enrolled device's directory.
    pub fn open(dir: &Path, tpm: &TpmLocation) -> Result<Self, AgentError> {
        let path = dir.join(DEVICE_FILE);
        let text = std::fs::read(&path).map_err(|e| AgentError::File {
            path: path.clone(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "not found: enroll the device first (zt device enroll)".into()
            } else {
                e.to_string()
            },
        })?;
        let identity: DeviceIdentity = serde_json::from_slice(&text).map_err(|e| AgentError::File {
            path,
            reason: e.to_string(),
        })?;
        let key = Arc::new(DeviceKey::load(dir, tpm)?);
        Ok(Self {
            dir: dir.to_owned(),
            key,
            identity,
        })
    }

    /// Who the device is.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// The device key.
    pub fn key(&self) -> &Arc<DeviceKey> {
        &self.key
    }

    /// The certificate chain, if one was issued.
    pub fn certificate(&self) -> Result<Option<Vec<CertificateDer<'static>>>, AgentError> {
        let path = self.dir.join(CERTIFICATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        read_pem_certs(&path).map(Some)
    }

    /// When the certificate is due for renewal: half way through its life
    /// (0 when there is none).
    pub fn renewal_due(&self) -> Result<u64, AgentError> {
        let Some(chain) = self.certificate()? else {
            return Ok(0);
        };
        let Some(summary) = chain
            .first()
            .and_then(|leaf| zt_identity::x509::summarize(leaf).ok())
        else {
            return Ok(0);
        };
        Ok(summary.not_before + summary.not_after.saturating_sub(summary.not_before) / 2)
    }

    /// The certificate's notAfter, Unix seconds.
    pub fn certificate_expiry(&self) -> Result<Option<u64>, AgentError> {
        let Some(chain) = self.certificate()? else {
            return Ok(None);
        };
        let leaf = chain.first().ok_or_else(|| AgentError::File {
            path: self.dir.join(CERTIFICATE_FILE),
            reason: "no certificate in it".into(),
        })?;
        let summary = zt_identity::x509::summarize(leaf).map_err(|e| AgentError::File {
            path: self.dir.join(CERTIFICATE_FILE),
            reason: e.to_string(),
        })?;
        Ok(Some(summary.not_after))
    }

    /// A TLS client configuration presenting the device certificate (when
    /// there is one) and trusting the bundle.
    pub fn client_config(&self) -> Result<ClientConfig, AgentError> {
        let roots = read_pem_certs(&self.dir.join(BUNDLE_FILE))?;
        let identity = self
            .certificate()?
            .map(|chain| Arc::new(CertifiedKey::new(chain, self.key.rustls_key())));
        client_config(&roots, identity).map_err(|reason| AgentError::File {
            path: self.dir.join(BUNDLE_FILE),
            reason,
        })
    }

    /// Has the server issue (or renew) the device certificate, proving
    /// possession of the key; writes `device.pem` and `bundle.pem`.
    pub async fn renew_certificate(&self) -> Result<u64, AgentError> {
        let claims = json!({ "device_id": self.identity.device_id, "iat": now_secs() });
        let key = self.key.clone();
        let signed = report::sign(CERTIFICATE_TYPE, &self.identity.device_id, &claims, |input| {
            key.sign(input).map_err(|e| e.to_string())
        })?;
        let mut client = Client::new(&self.identity.server, self.client_config()?)?;
        let answer = client.post("/v1/certificate", signed).await?;
        let field = |name: &str| {
            answer
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| AgentError::Call {
                    url: client.url("/v1/certificate"),
                    reason: format!("answer has no {name}"),
                })
        };
        let chain = field("chain_pem")?;
        let bundle = field("bundle_pem")?;
        zt_fs::write_atomically(&[
            (
                self.dir.join(CERTIFICATE_FILE),
                chain.into_bytes(),
                zt_fs::PRIVATE_MODE,
            ),
            (
                self.dir.join(BUNDLE_FILE),
                bundle.into_bytes(),
                zt_fs::PRIVATE_MODE,
            ),
        ])?;
        Ok(answer
            .get("expires_at")
            .and_then(Value::as_u64)
            .unwrap_or_default())
    }
}

/// What `zt device enroll` does.
pub struct Enrollment<'a> {
    /// The device's directory (created 0700).
    pub dir: &'a Path,
    /// The device API, `https://host:port`.
    pub server: &'a str,
    /// The trust bundle (PEM) to verify the server with.
    pub bundle_pem: &'a [u8],
    /// The one-time token.
    pub token: &'a str,
    /// Where the key goes.
    pub key: KeyChoice,
    /// The TPM, if any.
    pub tpm: &'a TpmLocation,
    /// Hardware facts for the inventory.
    pub hardware: std::collections::BTreeMap<String, String>,
}

/// Enrolled: who the device is and whether it waits for approval.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Who it is.
    pub identity: DeviceIdentity,
    /// `active` or `pending`.
    pub status: String,
    /// `tpm` or `software`.
    pub key_type: String,
}

/// Creates the device key, enrolls it with the token, and (unless it waits
/// for approval) gets its first certificate.
pub async fn enroll(request: Enrollment<'_>) -> Result<Enrolled, AgentError> {
    let roots = parse_pem_certs(request.bundle_pem).map_err(|reason| AgentError::Server {
        url: request.server.to_owned(),
        reason: format!("trust bundle: {reason}"),
    })?;
    let config = client_config(&roots, None).map_err(|reason| AgentError::Server {
        url: request.server.to_owned(),
        reason,
    })?;
    let mut client = Client::new(request.server, config)?;
    if request.dir.join(DEVICE_FILE).exists() {
        return Err(AgentError::File {
            path: request.dir.join(DEVICE_FILE),
            reason: "this directory holds an enrolled device already".into(),
        });
    }
    let key = Arc::new(DeviceKey::create(request.dir, request.key, request.tpm)?);
    let claims = json!({
        "token": request.token,
        "public_key": report::spki_text(&key.public_key_der()),
        "key_type": key.kind().to_string(),
        "hardware": request.hardware,
        "iat": now_secs(),
    });
    let signed = report::sign(ENROLL_TYPE, "enroll", &claims, |input| {
        key.sign(input).map_err(|e| e.to_string())
    })?;
    let answer = client.post("/v1/enroll", signed).await?;
    let text = |name: &str| {
        answer
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let identity = DeviceIdentity {
        device_id: text("device_id"),
        spiffe_id: text("spiffe_id"),
        owner: text("owner"),
        server: request.server.to_owned(),
    };
    let identity_json = serde_json::to_vec_pretty(&identity).map_err(|e| AgentError::Call {
        url: client.url("/v1/enroll"),
        reason: e.to_string(),
    })?;
    zt_fs::write_atomically(&[
        (
            request.dir.join(BUNDLE_FILE),
            request.bundle_pem.to_vec(),
            zt_fs::PRIVATE_MODE,
        ),
        (request.dir.join(DEVICE_FILE), identity_json, zt_fs::PRIVATE_MODE),
    ])?;
    let status = text("status");
    if status == "active" {
        let device = DeviceDir {
            dir: request.dir.to_owned(),
            key: key.clone(),
            identity: identity.clone(),
        };
        device.renew_certificate().await?;
    }
    Ok(Enrolled {
        identity,
        status,
        key_type: key.kind().to_string(),
    })
}

/// How `zt device agent` runs.
pub struct AgentSettings {
    /// How often a report is sent (the heartbeat).
    pub interval: Duration,
    /// How often facts are collected again (each keeps when it was observed).
    pub collect_interval: Duration,
    /// What to collect.
    pub collector: Collector,
    /// Facts read from this file instead of observed (tests only: the
    /// server refuses them unless the device was enrolled in test mode).
    pub facts_override: Option<PathBuf>,
}

/// What one report got.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportAnswer {
    /// The sequence number accepted.
    pub seq: u64,
    /// The device's tier now.
    pub tier: Option<String>,
    /// Why not better.
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// The device agent: renews the certificate at half its life, collects
/// facts, and reports every interval, until `stop` completes.
pub async fn run(
    device: DeviceDir,
    settings: AgentSettings,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    tokio::pin!(stop);
    let facts: Arc<Mutex<Facts>> = Arc::new(Mutex::new(Facts::new()));
    let collector = Arc::new(settings.collector);
    // Collection can be slow (apt takes seconds): it runs beside the reports,
    // which always carry the latest facts with when each was observed.
    let collecting = {
        let (facts, collector, every) = (facts.clone(), collector.clone(), settings.collect_interval);
        tokio::spawn(async move {
            loop {
                let collector = collector.clone();
                if let Ok(collected) =
                    tokio::task::spawn_blocking(move || collector.collect(now_secs())).await
                {
                    *facts.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = collected;
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    let mut seq = now_millis();
    let mut client: Option<Client> = None;
    // A certificate still in the first half of its life is kept: a token
    // bound to it (cnf) stays good until the renewal.
    let mut renew_at = device.renewal_due()?;
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => break Ok(()),
        }
        let now = now_secs();
        if now >= renew_at {
            match device.renew_certificate().await {
                Ok(expires_at) => {
                    renew_at = now + expires_at.saturating_sub(now) / 2;
                    client = None;
                    tracing::info!(device = %device.identity.device_id, expires_at, "device certificate renewed");
                }
                Err(e) => {
                    tracing::warn!(device = %device.identity.device_id, error = %e, "renewing the device certificate failed");
                    renew_at = now + 5;
                    if device.certificate()?.is_none() {
                        continue;
                    }
                }
            }
        }
        let mut current = facts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut overridden = Vec::new();
        if let Some(path) = &settings.facts_override {
            match read_override(path) {
                Ok(values) => {
                    for (name, value) in values {
                        current.insert(
                            name.clone(),
                            Observed {
                                value,
                                observed_at: now,
                            },
                        );
                        overridden.push(name);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "facts override not read"),
            }
        }
        seq = seq.max(now_millis()).saturating_add(1);
        let report = Report {
            device_id: device.identity.device_id.clone(),
            seq,
            sent_ms: now_millis(),
            facts: current,
            overridden,
        };
        let key = device.key.clone();
        let signed = report.sign(|input| key.sign(input).map_err(|e| e.to_string()))?;
        if client.is_none() {
            client = Some(Client::new(&device.identity.server, device.client_config()?)?);
        }
        let Some(connection) = client.as_mut() else {
            continue;
        };
        match connection.post("/v1/report", signed).await {
            Ok(answer) => match serde_json::from_value::<ReportAnswer>(answer) {
                Ok(answer) => {
                    tracing::debug!(seq = answer.seq, tier = ?answer.tier, reasons = ?answer.reasons, "report accepted");
                    let status = json!({
                        "at_ms": now_millis(),
                        "seq": answer.seq,
                        "tier": answer.tier,
                        "reasons": answer.reasons,
                    });
                    let written = zt_fs::write_atomically(&[(
                        device.dir.join(LAST_REPORT_FILE),
                        status.to_string().into_bytes(),
                        zt_fs::PRIVATE_MODE,
                    )]);
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "the last report's status not written");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "report answer unreadable"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "report not accepted");
                client = None;
            }
        }
    };
    collecting.abort();
    result
}

/// One keep-alive HTTPS connection to the device API.
pub struct Client {
    base: String,
    authority: String,
    host: String,
    port: u16,
    connector: TlsConnector,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client of `server` (`https://host:port`) with `config`.
    pub fn new(server: &str, config: ClientConfig) -> Result<Self, AgentError> {
        let bad = |reason: &str| AgentError::Server {
            url: server.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = server.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("expected https://host:port"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            base: server.trim_end_matches('/').to_owned(),
            authority: authority.to_string(),
            host,
            port: authority.port_u16().unwrap_or(443),
            connector: TlsConnector::from(Arc::new(config)),
            sender: None,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn connect(&mut self) -> Result<(), AgentError> {
        let call = |reason: String| AgentError::Call {
            url: self.base.clone(),
            reason,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| call(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.host.clone()).map_err(|e| call(e.to_string()))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| call(zt_tls::handshake_error_text(&e)))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| call(e.to_string()))?;
        tokio::spawn(connection);
        self.sender = Some(sender);
        Ok(())
    }

    /// POSTs `body` (a signed document) to `path`; the JSON answer.
    pub async fn post(&mut self, path: &str, body: String) -> Result<Value, AgentError> {
        let url = self.url(path);
        let call = |reason: String| AgentError::Call {
            url: url.clone(),
            reason,
        };
        tokio::time::timeout(CALL_TIMEOUT, async {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                self.connect().await?;
            }
            let sender = self.sender.as_mut().ok_or_else(|| call("not connected".into()))?;
            sender.ready().await.map_err(|e| call(e.to_string()))?;
            let request = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(http::header::HOST, &self.authority)
                .header(http::header::CONTENT_TYPE, "application/jose")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| call(e.to_string()))?;
            let response = sender.send_request(request).await.map_err(|e| {
                self.sender = None;
                call(e.to_string())
            })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| call(e.to_string()))?
                .to_bytes();
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status != StatusCode::OK {
                return Err(AgentError::Refused {
                    url: url.clone(),
                    status: status.as_u16(),
                    message: answer
                        .get("error")
                        .and_then(Value::as_str)
                        .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_owned),
                });
            }
            Ok(answer)
        })
        .await
        .map_err(|_| call(format!("no answer within {CALL_TIMEOUT:?}")))?
    }
}

/// A client config trusting `roots`, presenting `identity` if given.
fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<Arc<CertifiedKey>>,
) -> Result<ClientConfig, String> {
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots.iter().cloned());
    if added == 0 {
        return Err("no CA certificate in the trust bundle".into());
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(store);
    Ok(match identity {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(Presents(identity))),
        None => builder.with_no_client_auth(),
    })
}

/// Always presents the device certificate.
#[derive(Debug)]
struct Presents(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.key.choose_scheme(schemes).map(|_| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let text = std::fs::read(path).map_err(|e| AgentError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    parse_pem_certs(&text).map_err(|reason| AgentError::File {
        path: path.to_owned(),
        reason,
    })
}

fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

fn now_secs() -> u64 {
    zt_identity::clock::unix_seconds()
}

fn now_millis() -> u64 {
    zt_identity::clock::unix_millis()
}
