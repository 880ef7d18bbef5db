//! OpenID Connect Back-Channel Logout 1.0, the provider's side: when a
//! session ends — revoked by an admin, its user disabled, signed out at
//! `/logout` — every client that holds tokens from it and registered a
//! `backchannel_logout_uri` is sent a logout token; when a refresh family is
//! revoked for theft (a spent refresh token or a used code came back), its
//! client is.
//!
//! The provider follows the datastore's change feed, so that it does not
//! matter which process or request ended the session: the admin call returns
//! at once, and of several servers only the one that claims a notice in the
//! datastore sends it. Notices wait in a bounded queue; each is posted over
//! TLS 1.3 trusting the trust domain's bundle (and `--idp-backchannel-ca`),
//! 2 s per attempt, three attempts with backoff, redirects not followed and
//! answers read no further than [`MAX_ANSWER_BYTES`]. Every delivery is an
//! `idp/backchannel_logout` event in the decision log and counted in
//! `zt_server_idp_backchannel_logout_total{result}`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::header;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, Semaphore, mpsc, watch};
use zt_store::{BackchannelLogoutUri, LogoutNotice};

use crate::Provider;
use crate::events::Event;

/// The `typ` of a logout token (§2.4).
pub const LOGOUT_TOKEN_TYPE: &str = "logout+jwt";
/// The event a logout token carries.
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How long a logout token is valid.
pub const LOGOUT_TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long one attempt may take: connection, TLS, request and answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per notice.
pub const ATTEMPTS: u32 = 3;
/// Notices waiting to be sent; more are dropped, logged and counted.
pub const QUEUE: usize = 1024;
/// Deliveries in flight at once.
const CONCURRENT: usize = 16;
/// Largest answer read from a relying party.
pub const MAX_ANSWER_BYTES: usize = 4096;
/// The change feed is read at least this often, whatever the wake-ups say.
const POLL: Duration = Duration::from_secs(5);
/// Changes read per query.
const FEED_PAGE: u32 = 500;
/// Not yet positioned in the change feed.
const UNSET: u64 = u64::MAX;

/// A logout token on its way.
#[derive(Debug)]
pub(crate) struct Delivery {
    notice: LogoutNotice,
    token: String,
}

/// The queue, the feed position and the TLS roots of deliveries.
pub(crate) struct Backchannel {
    queue: mpsc::Sender<Delivery>,
    waiting: Mutex<mpsc::Receiver<Delivery>>,
    position: AtomicU64,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl Backchannel {
    pub(crate) fn new(extra_roots: Vec<CertificateDer<'static>>) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        Self {
            queue,
            waiting: Mutex::new(waiting),
            position: AtomicU64::new(UNSET),
            extra_roots,
        }
    }
}

impl Provider {
    /// Follows the change feed and sends logout tokens until `stop`. Starts
    /// at the feed's end the first time (sessions ended before the server
    /// started are not announced), where it left off when restarted.
    pub async fn follow_logouts(self, mut stop: watch::Receiver<bool>) {
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stopped);
        let backchannel = &self.inner.backchannel;
        let Ok(mut waiting) = backchannel.waiting.try_lock() else {
            tracing::error!("back-channel logout: another follower is running");
            stopped.await;
            return;
        };
        let mut changes = self.store().watch_changes();
        let slots = Arc::new(Semaphore::new(CONCURRENT));
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                () = &mut stopped => return,
                Ok(()) = changes.changed() => self.read_feed().await,
                _ = poll.tick() => self.read_feed().await,
                Some(delivery) = waiting.recv() => {
                    let Ok(slot) = slots.clone().acquire_owned().await else { return };
                    let provider = self.clone();
                    tokio::spawn(async move {
                        provider.deliver(delivery).await;
                        drop(slot);
                    });
                }
            }
        }
    }

    /// Reads the feed from the last position and queues the notices its
    /// session changes call for.
    async fn read_feed(&self) {
        let backchannel = &self.inner.backchannel;
        let mut position = backchannel.position.load(Ordering::Acquire);
        if position == UNSET {
            match self.store().latest_change().await {
                Ok(latest) => position = latest,
                Err(e) => {
                    tracing::warn!(error = %e, "back-channel logout: reading the change feed failed");
                    return;
                }
            }
        }
        loop {
            let changes = match self.store().changes_since(position, FEED_PAGE).await {
                Ok(changes) => changes,
                Err(e) => {
                    tracing::warn!(error = %e, "back-channel logout: reading the change feed failed");
                    break;
                }
            };
            let Some(last) = changes.last().map(|c| c.seq) else {
                break;
            };
            let sessions: BTreeSet<&str> = changes
                .iter()
                .filter(|c| c.kind == "session")
                .map(|c| c.subject.as_str())
                .collect();
            for session in sessions {
                if let Err(e) = self.queue_logouts(session).await {
                    // Not claimed: the next wake-up tries again.
                    tracing::warn!(session, error = %e, "back-channel logout: claiming notices failed");
                    backchannel.position.store(position, Ordering::Release);
                    return;
                }
            }
            position = last;
            if changes.len() < FEED_PAGE as usize {
                break;
            }
        }
        backchannel.position.store(position, Ordering::Release);
    }

    /// Claims the notices of one session's change and queues their tokens.
    async fn queue_logouts(&self, session: &str) -> Result<(), zt_store::StoreError> {
        let now = crate::now();
        for notice in self.store().claim_logout_notices(session, now).await? {
            let token = match self.logout_token(&notice, now) {
                Ok(token) => token,
                Err(e) => {
                    self.record_delivery(&notice, "sign_error", &e, 0);
                    continue;
                }
            };
            if self
                .inner
                .backchannel
                .queue
                .try_send(Delivery {
                    notice: notice.clone(),
                    token,
                })
                .is_err()
            {
                self.record_delivery(&notice, "queue_full", "the back-channel logout queue is full", 0);
            }
        }
        Ok(())
    }

    /// The logout token for a notice (§2.4): `iss`, `aud`, `iat`, `exp`,
    /// `jti`, `events`, `sid`, `sub`; never `nonce`.
    pub(crate) fn logout_token(&self, notice: &LogoutNotice, now: u64) -> Result<String, String> {
        let jti = crate::random_token().map_err(|e| e.description().to_owned())?;
        let claims = json!({
            "iss": self.config().issuer,
            "aud": notice.client_id,
            "iat": now,
            "exp": now + LOGOUT_TOKEN_TTL.as_secs(),
            "jti": jti,
            "events": { LOGOUT_EVENT: {} },
            "sid": notice.session_id,
            "sub": notice.sub,
        });
        self.keys()
            .sign(LOGOUT_TOKEN_TYPE, &claims)
            .map_err(|e| format!("signing the logout token: {e}"))
    }

    /// Posts one logout token, retrying a failure to reach the client (not
    /// a refusal), and records the outcome.
    async fn deliver(&self, delivery: Delivery) {
        let Delivery { notice, token } = delivery;
        let uri = match BackchannelLogoutUri::parse(&notice.uri) {
            Ok(uri) => uri,
            Err(e) => {
                self.record_delivery(&notice, "failed", &e.to_string(), 0);
                return;
            }
        };
        let body = format!("logout_token={token}");
        let mut backoff = Duration::from_millis(250);
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            let sent = tokio::time::timeout(ATTEMPT_TIMEOUT, self.post(&uri, body.clone())).await;
            match sent {
                Ok(Ok(status)) if status.is_success() => {
                    self.record_delivery(&notice, "delivered", &format!("answered {status}"), attempt);
                    return;
                }
                Ok(Ok(status)) if status.is_client_error() || status.is_redirection() => {
                    let why = format!("answered {status}");
                    self.record_delivery(&notice, "refused", &why, attempt);
                    return;
                }
                Ok(Ok(status)) => last_error = format!("answered {status}"),
                Ok(Err(e)) => last_error = e,
                Err(_) => last_error = format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        self.record_delivery(&notice, "failed", &last_error, ATTEMPTS);
    }

    /// One `POST` of the form; the answer's status, its body read no
    /// further than [`MAX_ANSWER_BYTES`].
    async fn post(&self, uri: &BackchannelLogoutUri, body: String) -> Result<hyper::StatusCode, String> {
        let (host, port, path) = uri.parts();
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let authority = match (host.contains(':'), uri.is_https(), port) {
            (true, https, port) if (https && port == 443) || (!https && port == 80) => format!("[{host}]"),
            (true, _, port) => format!("[{host}]:{port}"),
            (false, true, 443) | (false, false, 80) => host.to_owned(),
            (false, _, port) => format!("{host}:{port}"),
        };
        if !uri.is_https() {
            return send(tcp, &authority, path, body).await;
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("server name {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.client_tls()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
        send(tls, &authority, path, body).await
    }

    /// TLS 1.3, trusting the trust domain's X.509 authorities and `--idp-backchannel-ca`.
    fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        let bundle = self.keys().bundle();
        for root in bundle
            .x509_authorities()
            .iter()
            .chain(&self.inner.backchannel.extra_roots)
        {
            roots
                .add(root.clone())
                .map_err(|e| format!("trust anchor: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// Logs and counts a delivery's outcome.
    fn record_delivery(&self, notice: &LogoutNotice, result: &str, why: &str, attempts: u32) {
        self.events().count_backchannel(result);
        let event = if result == "delivered" {
            Event::success("backchannel_logout", format!("logout token delivered: {why}"))
        } else {
            Event::failure(
                "backchannel_logout",
                result,
                format!("logout token not delivered: {why}"),
            )
        };
        let event = event
            .with("client_id", notice.client_id.as_str())
            .with("sub", notice.sub.as_str())
            .with("sid", notice.session_id.as_str())
            .with("uri", notice.uri.as_str())
            .with("cause", notice.cause.as_str())
            .with("attempts", attempts);
        if let Err(e) = self.events().record(event) {
            tracing::error!(
                error = e.description(),
                "back-channel logout: recording the delivery failed"
            );
        }
    }
}

/// HTTP/1.1 `POST` of a form on `io`; redirects are answers, not followed.
async fn send<S>(io: S, authority: &str, path: &str, body: String) -> Result<hyper::StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = answer.status();
    // Read what is bounded, then close: the body says nothing we act on.
    let _ = Limited::new(answer.into_body(), MAX_ANSWER_BYTES).collect().await;
    connection.abort();
    Ok(status)
}
