//! zt server's OpenID Provider: people sign in (passkeys; a password where a
//! deployment enables it) and clients get short-lived tokens, by the
//! standards any OAuth 2.0 / OpenID Connect library speaks.
//!
//! - [`authorize`]: the authorization endpoint (code flow, PKCE S256 only,
//!   exact redirect URIs, `iss` in the response) and the sign-in pages;
//! - [`grants`]: the token endpoint (`authorization_code`, `refresh_token`
//!   rotated with reuse detection, `client_credentials`, token exchange, device code);
//! - [`client_auth`]: how clients prove who they are there (a secret, a
//!   `private_key_jwt` assertion, a workload's JWT-SVID);
//! - [`device`]: the device authorization grant's endpoint and page (RFC 8628);
//! - [`tokens`]: RFC 9068 access tokens and ID tokens, issued and verified;
//! - [`endpoints`]: discovery, JWKS, userinfo, introspection, revocation, logout;
//! - [`backchannel`]: logout tokens posted to clients when a session ends
//!   (OpenID Connect Back-Channel Logout 1.0);
//! - [`events`]: every authentication event in the decision log and metrics;
//! - [`passkeys`]: WebAuthn enrollment from an invite and passkey sign-in;
//! - [`limits`]: rate limits per user and per source address.
//!
//! The datastore holds people, sessions, codes and refresh tokens (hashes
//! only); signing keys are the trust domain's JWT authorities, published with
//! their rotation overlap at `jwks_uri`.

#![forbid(unsafe_code)]

pub mod authorize;
pub mod backchannel;
pub mod client_auth;
pub mod device;
pub mod endpoints;
pub mod events;
pub mod grants;
pub mod limits;
pub mod passkeys;
pub mod tokens;

mod pages;
mod params;
mod rotation;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use zt_identity::jwk::PublicKey;
use zt_identity::{Algorithm, Bundle, JwtSvidError, TrustDomain};
use zt_policy::matching::IpBlock;
use zt_store::Store;

/// Default access-token lifetime: the seeds' 15 minutes.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest access-token lifetime the server allows.
pub const MAX_ACCESS_TTL: Duration = Duration::from_secs(3600);
/// Default absolute session lifetime, which no refresh token outlives: 4 hours.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(4 * 3600);
/// Longest session the server allows.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of an authorization code.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Default window in which a spent refresh token may be retried.
pub const DEFAULT_REFRESH_GRACE: Duration = Duration::from_secs(10);
/// Longest retry window the server allows.
pub const MAX_REFRESH_GRACE: Duration = Duration::from_secs(60);
/// Largest request body read (forms and JSON), in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A network zone: a name for the addresses of a set of CIDR blocks, put in
/// tokens as `zone` so that policies can tell the office from elsewhere.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The zone's name (`office`).
    pub name: String,
    /// Its blocks.
    pub blocks: Vec<IpBlock>,
}

/// How the OpenID Provider is set up.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    /// The issuer: an `https` URL without query or fragment, as clients
    /// compare it byte for byte (`https://localhost:8443`).
    pub issuer: String,
    /// The trust domain, whose workloads may authenticate as clients with a JWT-SVID.
    pub trust_domain: TrustDomain,
    /// Access-token lifetime (at most [`MAX_ACCESS_TTL`]).
    pub access_ttl: Duration,
    /// Absolute session lifetime (at most [`MAX_SESSION_TTL`]).
    pub session_ttl: Duration,
    /// How long after its first use a refresh token may be retried.
    pub refresh_grace: Duration,
    /// Whether people may sign in with a password (a weaker factor than a passkey).
    pub passwords: bool,
    /// Network zones, first match wins; addresses in none are `external`.
    pub zones: Vec<Zone>,
    /// AAGUIDs of the authenticator models that may register a passkey; empty: any.
    pub aaguids: Vec<String>,
    /// Trust anchors for clients' back-channel logout URIs besides the trust
    /// domain's own authorities (`--idp-backchannel-ca`).
    pub backchannel_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The issuer is not an https URL of the accepted shape.
    #[error("--idp-issuer {0:?}: {1}")]
    Issuer(String, &'static str),
    /// An `--idp-aaguid` that is not a UUID.
    #[error("--idp-aaguid {0:?}: not a UUID (like 08987058-cadc-4b81-b6e1-30de50dcbe96)")]
    Aaguid(String),
    /// A lifetime beyond the server's cap, or zero.
    #[error("{flag} {value:?}: {reason}")]
    Lifetime {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why.
        reason: String,
    },
}

impl IdpConfig {
    /// Checks the issuer's shape and that lifetimes are within the caps.
    pub fn check(&self) -> Result<(), ConfigError> {
        let issuer = &self.issuer;
        let bad = |why| Err(ConfigError::Issuer(issuer.clone(), why));
        let Some(rest) = issuer.strip_prefix("https://") else {
            return bad("must start with https://");
        };
        if rest.is_empty() || rest.starts_with('/') {
            return bad("has no host");
        }
        if rest.contains(['?', '#', '@']) || rest.chars().any(|c| !c.is_ascii_graphic()) {
            return bad("may not have a query, fragment, userinfo, whitespace or non-ASCII characters");
        }
        if issuer.ends_with('/') {
            return bad("must not end with '/'");
        }
        let capped = |flag: &'static str, value: Duration, max: Duration| {
            if value.is_zero() || value > max {
                return Err(ConfigError::Lifetime {
                    flag,
                    value: format!("{}s", value.as_secs()),
                    reason: format!("must be between 1s and {}s", max.as_secs()),
                });
            }
            Ok(())
        };
        capped("--idp-access-ttl", self.access_ttl, MAX_ACCESS_TTL)?;
        capped("--idp-session-ttl", self.session_ttl, MAX_SESSION_TTL)?;
        if self.refresh_grace > MAX_REFRESH_GRACE {
            return Err(ConfigError::Lifetime {
                flag: "--idp-refresh-grace",
                value: format!("{}s", self.refresh_grace.as_secs()),
                reason: format!("must be at most {}s", MAX_REFRESH_GRACE.as_secs()),
            });
        }
        Ok(())
    }

    /// The origin of the issuer (scheme, host and port), which browsers send
    /// as `Origin` and WebAuthn checks.
    pub fn origin(&self) -> &str {
        let after_scheme = "https://".len();
        match self.issuer[after_scheme..].find('/') {
            Some(slash) => &self.issuer[..after_scheme + slash],
            None => &self.issuer,
        }
    }

    /// The issuer's host, without port: the WebAuthn relying party ID.
    pub fn host(&self) -> &str {
        let authority = &self.origin()["https://".len()..];
        match authority.rfind(':') {
            Some(colon) if !authority.ends_with(']') => &authority[..colon],
            _ => authority,
        }
    }

    /// The zone an address is in.
    pub fn zone_of(&self, ip: IpAddr) -> &str {
        self.zones
            .iter()
            .find(|zone| zone.blocks.iter().any(|block| block.contains(ip)))
            .map_or("external", |zone| zone.name.as_str())
    }

    /// `issuer` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }
}

/// The keys tokens are signed with: the trust domain's JWT authorities,
/// which rotate with an overlap. The server implements this.
pub trait Keys: Send + Sync + 'static {
    /// Signs `claims` as a compact JWS of type `typ` with the active key.
    fn sign(&self, typ: &str, claims: &Value) -> Result<String, JwtSvidError>;
    /// Every key a token signed now or recently may name: key ID, algorithm, key.
    fn verification_keys(&self) -> Vec<(String, Algorithm, PublicKey)>;
    /// The trust domain's bundle, to verify JWT-SVID client assertions.
    fn bundle(&self) -> Bundle;
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// SHA-256 of the client certificate, base64url (`x5t#S256`), when one was presented.
    pub certificate_sha256: Option<String>,
    /// The client certificate's verified SPIFFE ID, if any.
    pub spiffe_id: Option<String>,
}

/// The OpenID Provider: shared state of every endpoint.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    config: IdpConfig,
    store: Store,
    keys: Arc<dyn Keys>,
    events: events::Events,
    limits: limits::Limits,
    pending: authorize::Pending,
    seen_assertions: client_auth::SeenAssertions,
    verified_secrets: client_auth::VerifiedSecrets,
    rotations: rotation::Rotations,
    passkeys: passkeys::Passkeys,
    backchannel: backchannel::Backchannel,
    devices: std::sync::OnceLock<Arc<dyn DeviceDirectory>>,
}

/// Where the provider learns the live state of an enrolled device (zt
/// server's device service), for the `device_id` and `device_tier` claims
/// of tokens requested over mTLS with a device certificate.
pub trait DeviceDirectory: Send + Sync {
    /// The device's ID and current tier, if `spiffe_id` names an enrolled device.
    fn device(&self, spiffe_id: &str) -> Option<(String, String)>;

    /// The current tier of the enrolled device `id`, if it exists.
    fn tier(&self, id: &str) -> Option<String>;
}

impl Provider {
    /// Sets the provider up; `log` receives every authentication event.
    pub fn new(
        config: IdpConfig,
        store: Store,
        keys: Arc<dyn Keys>,
        log: Option<zt_audit::Writer>,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let passkeys = passkeys::Passkeys::new(&config)?;
        let rotations = rotation::Rotations::new(store.clone(), config.refresh_grace.as_secs());
        let backchannel = backchannel::Backchannel::new(config.backchannel_ca.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                backchannel,
                devices: std::sync::OnceLock::new(),
                passkeys,
                rotations,
                config,
                store,
                keys,
                events: events::Events::new(log),
                limits: limits::Limits::default(),
                pending: authorize::Pending::default(),
                seen_assertions: client_auth::SeenAssertions::default(),
                verified_secrets: client_auth::VerifiedSecrets::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IdpConfig {
        &self.inner.config
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn keys(&self) -> &dyn Keys {
        self.inner.keys.as_ref()
    }

    pub(crate) fn events(&self) -> &events::Events {
        &self.inner.events
    }

    pub(crate) fn limits(&self) -> &limits::Limits {
        &self.inner.limits
    }

    pub(crate) fn pending(&self) -> &authorize::Pending {
        &self.inner.pending
    }

    pub(crate) fn passkeys(&self) -> &passkeys::Passkeys {
        &self.inner.passkeys
    }

    pub(crate) fn seen_assertions(&self) -> &client_auth::SeenAssertions {
        &self.inner.seen_assertions
    }

    pub(crate) fn verified_secrets(&self) -> &client_auth::VerifiedSecrets {
        &self.inner.verified_secrets
    }

    pub(crate) fn rotations(&self) -> &rotation::Rotations {
        &self.inner.rotations
    }

    /// The authentication events: their decision log and `zt_server_idp_events_total`.
    pub fn auth_events(&self) -> &events::Events {
        &self.inner.events
    }

    /// Lets tokens carry the live state of the device whose certificate a
    /// client presents (set once, at start).
    pub fn set_devices(&self, devices: Arc<dyn DeviceDirectory>) {
        let _ = self.inner.devices.set(devices);
    }

    /// The device (ID, tier) behind a client certificate's SPIFFE ID.
    pub(crate) fn device(&self, spiffe_id: Option<&str>) -> Option<(String, String)> {
        self.inner.devices.get()?.device(spiffe_id?)
    }

    /// The live tier of device `id` (`unknown` for a device that no longer
    /// exists); `None` when the provider follows no devices.
    pub(crate) fn device_tier(&self, id: &str) -> Option<String> {
        let directory = self.inner.devices.get()?;
        Some(directory.tier(id).unwrap_or_else(|| "unknown".to_owned()))
    }

    /// Registers the provider's metrics under the caller's prefix (`zt_server_idp_…`).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner
            .events
            .register(registry.sub_registry_with_prefix("idp"));
    }

    /// Deletes codes and refresh tokens no one can use any more (kept an hour
    /// past their end, for the replay and reuse checks' sake).
    pub async fn prune(&self, now: u64) -> Result<u64, zt_store::StoreError> {
        self.inner.store.prune_grants(3600, now).await
    }

    /// Answers a request to an endpoint where clients authenticate (token,
    /// introspection, revocation, device authorization): refused while the
    /// source address's failure bucket is empty, a failure drains it (but not
    /// a device still waiting for its person), and no answer is cached.
    pub(crate) async fn client_endpoint<T: IntoResponse>(
        &self,
        peer: &Peer,
        handle: impl std::future::Future<Output = Result<T, OAuthError>>,
    ) -> Response {
        let ip = peer.addr.ip().to_string();
        let result = match self.limits().token_ip.check(&ip) {
            Err(wait) => Err(OAuthError::too_many(wait)),
            Ok(()) => handle.await,
        };
        match result {
            Ok(answer) => {
                let mut response = answer.into_response();
                no_store(&mut response);
                response
            }
            Err(error) => {
                if !matches!(
                    error.code(),
                    "rate_limited" | "authorization_pending" | "slow_down"
                ) {
                    self.limits().token_ip.charge(&ip);
                }
                error.into_response()
            }
        }
    }

    /// Every endpoint.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(endpoints::discovery))
            .route(
                "/.well-known/oauth-authorization-server",
                get(endpoints::discovery),
            )
            .route("/jwks", get(endpoints::jwks))
            .route("/authorize", get(authorize::authorize))
            .route("/signin/password", post(authorize::password_sign_in))
            .route("/token", post(grants::token))
            // The workload and device grants (RFC 8628).
            .route("/device_authorization", post(device::device_authorization))
            .route(
                "/device",
                get(device::verification).post(device::verification_form),
            )
            .route("/device/done", get(device::done))
            .route("/userinfo", get(endpoints::userinfo).post(endpoints::userinfo))
            .route("/introspect", post(endpoints::introspect))
            .route("/revoke", post(endpoints::revoke))
            .route("/logout", get(endpoints::logout).post(endpoints::logout_form))
            // Passkeys: enrollment from an invite, sign-in.
            .route("/enroll", get(passkeys::enroll_page))
            .route("/enroll/begin", post(passkeys::enroll_begin))
            .route("/enroll/finish", post(passkeys::enroll_finish))
            .route("/signin/passkey/begin", post(passkeys::sign_in_begin))
            .route("/signin/passkey/finish", post(passkeys::sign_in_finish))
            .route("/assets/zt.js", get(pages::script))
            .route("/assets/zt.css", get(pages::style))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Serves HTTP/1.1 on one (TLS) connection until it closes.
    pub async fn serve_connection<S>(&self, stream: S, peer: Peer, router: Router)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        use tower::ServiceExt as _;
        let app = router.layer(axum::Extension(peer.clone()));
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        let served = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size(MAX_BODY_BYTES)
            .serve_connection(io, service)
            .await;
        if let Err(e) = served {
            tracing::debug!(peer = %peer.addr, error = %e, "OpenID Provider connection ended");
        }
    }
}

/// An OAuth error response (RFC 6749 §5.2): `{"error", "error_description"}`,
/// never cached.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    /// An error with its RFC code and a description for people.
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 400 `invalid_grant`.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// 400 `unauthorized_client`: the client may not do this.
    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", description)
    }

    /// 400 `invalid_scope`.
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    /// 401 `invalid_client`.
    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    /// 500 `server_error`: the details go to the log, not to the client.
    pub fn server_error(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("{context}: see the server's log"),
        )
    }

    /// 429 `slow_down`-style refusal of a rate limit.
    pub fn too_many(retry_after: Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many attempts: retry in {}s", retry_after.as_secs().max(1)),
        )
    }

    /// The RFC error code.
    pub fn code(&self) -> &'static str {
        self.error
    }

    /// The description.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl From<zt_store::StoreError> for OAuthError {
    fn from(e: zt_store::StoreError) -> Self {
        OAuthError::server_error("datastore", e)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "error_description": self.description });
        let mut response = (self.status, axum::Json(body)).into_response();
        no_store(&mut response);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"zt\""),
            );
        }
        response
    }
}

/// Marks a response as never to be cached (tokens, errors, pages with secrets).
pub(crate) fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    zt_identity::clock::unix_seconds()
}

/// 256 random bits, base64url.
pub(crate) fn random_token() -> Result<String, OAuthError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| OAuthError::server_error("random", "generator failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256, base64url (PKCE S256, `x5t#S256`).
pub(crate) fn sha256_b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Constant-time equality of two secrets' bytes.
pub(crate) fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
