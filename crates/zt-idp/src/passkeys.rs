//! Phishing-resistant sign-in with WebAuthn: passkeys and security keys.
//!
//! The relying party ID is the issuer's host and the only origin accepted is
//! the issuer's origin, so an assertion made for another site (or another
//! port) never verifies here. User verification is required.
//!
//! - **Enrollment** from an invite: `GET /enroll?invite=TOKEN` shows a page;
//!   `POST /enroll/begin` checks the invite and returns creation options;
//!   `POST /enroll/finish` verifies the new credential and stores it while
//!   using the invite, in one transaction (an invite enrolls once, even when
//!   two registrations race). The user handle is the user's random `sub`, never
//!   the e-mail address. Optionally only authenticator models on an AAGUID
//!   allow-list may register (`--idp-aaguid`; without attestation the AAGUID
//!   is what the authenticator says it is).
//! - **Sign-in** with a discoverable credential (no user name typed):
//!   `POST /signin/passkey/begin` and `/signin/passkey/finish`, bound to the
//!   pending authorization request and its CSRF token.
//!
//! Ceremony states stay on the server ([`Ceremonies`]): keyed by a random ID,
//! usable once, for [`CEREMONY_TTL`], at most [`MAX_CEREMONIES`] at a time. A
//! challenge is therefore never accepted twice. A signature counter that went
//! backwards (and is not zero) refuses the sign-in and records
//! `credential_cloned`.
//!
//! What a sign-in asserts (RFC 8176 `amr`, and the `acr` level):
//!
//! | credential | `amr` | `acr` |
//! |---|---|---|
//! | device-bound (not backup-eligible), user verified | `hwk`, `user`, `mfa` | AAL3 |
//! | synced passkey (backup-eligible), user verified | `swk`, `user`, `mfa` | AAL2 |

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use webauthn_rs::prelude::{
    CreationChallengeResponse, DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid, Webauthn, WebauthnBuilder,
    WebauthnError,
};
use zt_store::{CredentialUse, NewCredential, StoreError, User};

use crate::authorize::{Reply, clear_cookie, cookie, set_cookie};
use crate::events::Event;
use crate::tokens::Assurance;
use crate::{ConfigError, IdpConfig, OAuthError, Peer, Provider, now, pages, random_token, secrets_equal};

/// How long a ceremony may take.
pub const CEREMONY_TTL: Duration = Duration::from_secs(300);
/// Most ceremonies in progress at once.
pub const MAX_CEREMONIES: usize = 10_000;
/// The cookie that binds an enrollment page's requests to the browser that loaded it.
pub const ENROLL_COOKIE: &str = "__Host-zt-enroll";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The relying party, the AAGUID allow-list and the ceremonies in progress.
pub struct Passkeys {
    webauthn: Webauthn,
    aaguids: Vec<Uuid>,
    ceremonies: Ceremonies,
}

impl Passkeys {
    /// The relying party of `config`'s issuer.
    pub(crate) fn new(config: &IdpConfig) -> Result<Self, ConfigError> {
        let bad = |e: WebauthnError| ConfigError::Issuer(config.issuer.clone(), webauthn_reason(&e));
        let origin = Url::parse(config.origin())
            .map_err(|_| ConfigError::Issuer(config.issuer.clone(), "is not a URL"))?;
        let webauthn = WebauthnBuilder::new(config.host(), &origin)
            .map_err(bad)?
            .rp_name("zt")
            .timeout(CEREMONY_TTL)
            .build()
            .map_err(bad)?;
        let aaguids = config
            .aaguids
            .iter()
            .map(|text| Uuid::parse_str(text).map_err(|_| ConfigError::Aaguid(text.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            webauthn,
            aaguids,
            ceremonies: Ceremonies::default(),
        })
    }
}

fn webauthn_reason(_: &WebauthnError) -> &'static str {
    "cannot be a WebAuthn relying party (its host must be a domain name the origin is in)"
}

/// A ceremony's server-side state.
enum Ceremony {
    Enroll {
        state: PasskeyRegistration,
        invite: String,
        sub: String,
        csrf: String,
    },
    SignIn {
        state: DiscoverableAuthentication,
        request: String,
    },
}

/// Ceremonies in progress, by random ID: each is taken out when finished.
#[derive(Default)]
pub struct Ceremonies(Mutex<HashMap<String, (Ceremony, Instant)>>);

impl Ceremonies {
    fn insert(&self, ceremony: Ceremony) -> Result<String, OAuthError> {
        let id = random_token()?;
        let mut ceremonies = self
            .0
            .lock()
            .map_err(|_| OAuthError::server_error("ceremonies", "lock poisoned"))?;
        if ceremonies.len() >= MAX_CEREMONIES {
            ceremonies.retain(|_, (_, at)| at.elapsed() < CEREMONY_TTL);
            if ceremonies.len() >= MAX_CEREMONIES {
                return Err(OAuthError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "too many passkey ceremonies in progress",
                ));
            }
        }
        ceremonies.insert(id.clone(), (ceremony, Instant::now()));
        Ok(id)
    }

    /// Takes ceremony `id` out, if it is still fresh: it can be finished once.
    fn take(&self, id: &str) -> Option<Ceremony> {
        let (ceremony, at) = self.0.lock().ok()?.remove(id)?;
        (at.elapsed() < CEREMONY_TTL).then_some(ceremony)
    }
}

/// The user handle (WebAuthn `user.id`): the 128 random bits of the `sub`.
fn user_handle(sub: &str) -> Option<Uuid> {
    if sub.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(sub.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Uuid::from_bytes(bytes))
}

/// A JSON refusal the page's script shows as it is.
fn refuse(status: StatusCode, error: &'static str, why: &str) -> Response {
    OAuthError::new(status, error, why).into_response()
}

/// CSRF protection of the JSON endpoints: `Origin` must be present and be the issuer's.
fn same_origin(provider: &Provider, headers: &HeaderMap) -> Result<(), Box<Response>> {
    match headers.get(header::ORIGIN) {
        Some(origin) if origin.as_bytes() == provider.config().origin().as_bytes() => Ok(()),
        _ => Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "invalid_request",
            "cross-origin request refused",
        ))),
    }
}

/// `?invite=` of the enrollment page.
#[derive(Debug, Deserialize)]
pub struct EnrollQuery {
    invite: String,
}

const BAD_INVITE: &str =
    "this invite link cannot be used: it may have expired or been used already; ask for a new one";

/// `GET /enroll?invite=TOKEN`: the page that registers a first passkey.
pub async fn enroll_page(State(provider): State<Provider>, Query(query): Query<EnrollQuery>) -> Response {
    let user = match provider.store().invite_user(&query.invite, now()).await {
        Ok(user) => user,
        Err(StoreError::Invite(_) | StoreError::Disabled(_) | StoreError::Missing { .. }) => {
            return pages::error(StatusCode::NOT_FOUND, BAD_INVITE);
        }
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let csrf = match random_token() {
        Ok(csrf) => csrf,
        Err(e) => return e.into_response(),
    };
    let body = format!(
        r#"<h1>Register a passkey</h1>
<p>For <strong>{name}</strong>. Your device will ask you to unlock it (a PIN, a fingerprint or your face).</p>
<div id="enroll" data-invite="{invite}" data-csrf="{csrf}">
  <button type="button" id="enroll-passkey">Register a passkey</button>
  <p class="error" id="enroll-error" role="alert" hidden></p>
  <p id="enroll-done" role="status" hidden>Your passkey is registered. You can close this page and sign in.</p>
</div>"#,
        name = pages::escape(&user.name),
        invite = pages::escape(&query.invite),
        csrf = pages::escape(&csrf),
    );
    let mut response = pages::document("Register a passkey", &body, StatusCode::OK);
    set_cookie(
        &mut response,
        ENROLL_COOKIE,
        &csrf,
        CEREMONY_TTL.as_secs() * 2,
        "Strict",
    );
    response
}

/// `POST /enroll/begin`.
#[derive(Debug, Deserialize)]
pub struct EnrollBegin {
    invite: String,
    csrf: String,
}

/// `POST /enroll/begin`: checks the invite, returns creation options.
pub async fn enroll_begin(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Json(body): Json<EnrollBegin>,
) -> Response {
    if let Err(response) = check_enroll_csrf(&provider, &headers, &body.csrf, &peer) {
        return *response;
    }
    let store = provider.store();
    let user = match store.invite_user(&body.invite, now()).await {
        Ok(user) => user,
        Err(StoreError::Invite(_) | StoreError::Disabled(_) | StoreError::Missing { .. }) => {
            return enroll_failure(&provider, &peer, "invalid_invite", BAD_INVITE);
        }
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let existing = match store.credentials(&user.name).await {
        Ok(existing) => existing,
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let exclude = existing
        .iter()
        .filter(|c| c.revoked_at.is_none())
        .filter_map(|c| B64.decode(&c.id).ok())
        .collect::<Vec<_>>();
    let Some(handle) = user_handle(&user.sub) else {
        return OAuthError::server_error("passkey registration", "a user's sub is not 128 bits of hex")
            .into_response();
    };
    let passkeys = provider.passkeys();
    let started = passkeys.webauthn.start_passkey_registration(
        handle,
        &user.name,
        &user.display_name,
        (!exclude.is_empty()).then_some(exclude),
    );
    let (options, state): (CreationChallengeResponse, _) = match started {
        Ok(started) => started,
        Err(e) => return OAuthError::server_error("passkey registration", e).into_response(),
    };
    // A discoverable credential, so that signing in needs no user name.
    let mut options = match serde_json::to_value(&options) {
        Ok(options) => options,
        Err(e) => return OAuthError::server_error("passkey registration", e).into_response(),
    };
    if let Some(selection) = options
        .get_mut("publicKey")
        .and_then(|o| o.get_mut("authenticatorSelection"))
        .and_then(|o| o.as_object_mut())
    {
        selection.insert("residentKey".into(), json!("required"));
        selection.insert("requireResidentKey".into(), json!(true));
    }
    let ceremony = Ceremony::Enroll {
        state,
        invite: body.invite,
        sub: user.sub,
        csrf: body.csrf,
    };
    match passkeys.ceremonies.insert(ceremony) {
        Ok(id) => no_store_json(json!({ "ceremony": id, "options": options })),
        Err(e) => e.into_response(),
    }
}

/// `POST /enroll/finish`.
#[derive(Debug, Deserialize)]
pub struct EnrollFinish {
    ceremony: String,
    csrf: String,
    credential: RegisterPublicKeyCredential,
}

/// `POST /enroll/finish`: verifies the new credential, stores it, uses the invite.
pub async fn enroll_finish(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Json(body): Json<EnrollFinish>,
) -> Response {
    if let Err(response) = check_enroll_csrf(&provider, &headers, &body.csrf, &peer) {
        return *response;
    }
    let ip = peer.addr.ip();
    let fail = |result: &str, why: &str| enroll_failure(&provider, &peer, result, why);
    let passkeys = provider.passkeys();
    let (state, invite, sub) = match passkeys.ceremonies.take(&body.ceremony) {
        Some(Ceremony::Enroll {
            state,
            invite,
            sub,
            csrf,
        }) if secrets_equal(csrf.as_bytes(), body.csrf.as_bytes()) => (state, invite, sub),
        _ => return fail("unknown_ceremony", "this registration has expired: start again"),
    };
    let passkey = match passkeys
        .webauthn
        .finish_passkey_registration(&body.credential, &state)
    {
        Ok(passkey) => passkey,
        Err(e) => {
            tracing::info!(error = %e, "passkey registration refused");
            return fail("verification_failed", "the new passkey could not be verified");
        }
    };
    let Some(data) = AuthenticatorData::of_attestation(&body.credential.response.attestation_object) else {
        return fail("verification_failed", "the new passkey could not be verified");
    };
    if !passkeys.aaguids.is_empty() && !passkeys.aaguids.contains(&data.aaguid) {
        return fail(
            "aaguid_refused",
            &format!(
                "this kind of authenticator (AAGUID {}) is not allowed here: use one your organisation approved",
                data.aaguid
            ),
        );
    }
    let public_key = match serde_json::to_string(&passkey) {
        Ok(json) => json,
        Err(e) => return OAuthError::server_error("passkey registration", e).into_response(),
    };
    let credential = NewCredential {
        id: B64.encode(passkey.cred_id()),
        sub,
        public_key,
        aaguid: data.aaguid.to_string(),
        sign_count: u64::from(data.sign_count),
        backup_eligible: data.backup_eligible,
        backed_up: data.backed_up,
    };
    let stored = match provider
        .store()
        .enroll_credential(&invite, &credential, now())
        .await
    {
        Ok(stored) => stored,
        Err(StoreError::Invite(_) | StoreError::Disabled(_) | StoreError::Missing { .. }) => {
            return fail("invalid_invite", BAD_INVITE);
        }
        Err(StoreError::Duplicate { .. }) => return fail("duplicate", "this passkey is registered already"),
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let event = Event::success("credential_registered", "passkey registered from an invite")
        .from_ip(ip)
        .with("sub", credential.sub.as_str())
        .with("user", stored.user.as_str())
        .with("credential", stored.id.as_str())
        .with("aaguid", stored.aaguid.as_str())
        .with("backup_eligible", stored.backup_eligible);
    if let Err(e) = provider.events().record(event) {
        return e.into_response();
    }
    let mut response = no_store_json(json!({ "registered": true, "user": stored.user }));
    clear_cookie(&mut response, ENROLL_COOKIE);
    response
}

/// A refused registration: recorded, charged to the source address's sign-in
/// limit (invites are bearer tokens worth guessing), told to the page.
fn enroll_failure(provider: &Provider, peer: &Peer, result: &str, why: &str) -> Response {
    let ip = peer.addr.ip();
    provider.limits().sign_in_ip.charge(&ip.to_string());
    let event = Event::failure("credential_registered", result, why)
        .from_ip(ip)
        .with("factor", "passkey");
    if let Err(e) = provider.events().record(event) {
        return e.into_response();
    }
    refuse(StatusCode::FORBIDDEN, "invalid_grant", why)
}

fn check_enroll_csrf(
    provider: &Provider,
    headers: &HeaderMap,
    csrf: &str,
    peer: &Peer,
) -> Result<(), Box<Response>> {
    same_origin(provider, headers)?;
    if let Err(wait) = provider.limits().sign_in_ip.check(&peer.addr.ip().to_string()) {
        return Err(Box::new(OAuthError::too_many(wait).into_response()));
    }
    match cookie(headers, ENROLL_COOKIE) {
        Some(bound) if secrets_equal(bound.as_bytes(), csrf.as_bytes()) => Ok(()),
        _ => Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "invalid_request",
            "this page has expired or was not opened in this browser: open the invite link again",
        ))),
    }
}

/// `POST /signin/passkey/begin`.
#[derive(Debug, Deserialize)]
pub struct SignInBegin {
    request: String,
    csrf: String,
}

/// `POST /signin/passkey/begin`: request options for any discoverable credential.
pub async fn sign_in_begin(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Json(body): Json<SignInBegin>,
) -> Response {
    if let Err(response) = check_sign_in(&provider, &headers, &peer, &body.request, &body.csrf) {
        return *response;
    }
    let passkeys = provider.passkeys();
    let (mut options, state): (RequestChallengeResponse, _) =
        match passkeys.webauthn.start_discoverable_authentication() {
            Ok(started) => started,
            Err(e) => return OAuthError::server_error("passkey sign-in", e).into_response(),
        };
    // A button press, not conditional (autofill) mediation.
    options.mediation = None;
    let ceremony = Ceremony::SignIn {
        state,
        request: body.request,
    };
    match passkeys.ceremonies.insert(ceremony) {
        Ok(id) => no_store_json(json!({ "ceremony": id, "options": options })),
        Err(e) => e.into_response(),
    }
}

/// `POST /signin/passkey/finish`.
#[derive(Debug, Deserialize)]
pub struct SignInFinish {
    request: String,
    csrf: String,
    ceremony: String,
    credential: PublicKeyCredential,
}

/// `POST /signin/passkey/finish`: verifies the assertion, opens the session,
/// answers the authorization request: `{"redirect": URL}`.
pub async fn sign_in_finish(
    State(provider): State<Provider>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Json(body): Json<SignInFinish>,
) -> Response {
    let started = Instant::now();
    let response = finish_sign_in(&provider, &peer, &headers, &body).await;
    provider.events().observe_sign_in("passkey", started);
    response
}

async fn finish_sign_in(
    provider: &Provider,
    peer: &Peer,
    headers: &HeaderMap,
    body: &SignInFinish,
) -> Response {
    let request = match check_sign_in(provider, headers, peer, &body.request, &body.csrf) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let outcome = verify(provider, body).await;
    let ip = peer.addr.ip();
    let (user, amr, assurance) = match outcome {
        Ok(signed_in) => signed_in,
        Err(Failure::Server(response)) => return response,
        Err(Failure::Refused { result, why, detail }) => {
            let limits = provider.limits();
            limits.sign_in_ip.charge(&ip.to_string());
            let mut event = Event::failure("sign_in", result, why)
                .from_ip(ip)
                .with("factor", "passkey");
            if let Some((key, value)) = detail {
                event = event.with(key, value);
            }
            if let Err(e) = provider.events().record(event) {
                return e.into_response();
            }
            // The same answer whatever went wrong: nothing to enumerate.
            return refuse(
                StatusCode::UNAUTHORIZED,
                "access_denied",
                "this passkey cannot sign in here: try another, or ask for a new invite",
            );
        }
    };
    provider
        .complete_sign_in(
            &body.request,
            &request,
            &user,
            amr,
            assurance,
            "passkey",
            peer,
            Reply::Json,
        )
        .await
}

/// Why a passkey sign-in ended.
enum Failure {
    Server(Response),
    Refused {
        result: &'static str,
        why: &'static str,
        detail: Option<(&'static str, String)>,
    },
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Server(OAuthError::from(e).into_response())
    }
}

fn refused(result: &'static str, why: &'static str) -> Failure {
    Failure::Refused {
        result,
        why,
        detail: None,
    }
}

async fn verify(provider: &Provider, body: &SignInFinish) -> Result<(User, Vec<String>, Assurance), Failure> {
    let passkeys = provider.passkeys();
    let state = match passkeys.ceremonies.take(&body.ceremony) {
        Some(Ceremony::SignIn { state, request }) if request == body.request => state,
        _ => {
            return Err(refused(
                "unknown_ceremony",
                "no such passkey ceremony, or it expired or was used",
            ));
        }
    };
    let (handle, credential_id) = passkeys
        .webauthn
        .identify_discoverable_authentication(&body.credential)
        .map_err(|_| refused("no_user_handle", "the assertion names no user"))?;
    let credential_id = B64.encode(credential_id);
    let store = provider.store();
    let Some(stored) = store.credential_by_id(&credential_id).await? else {
        return Err(refused("unknown_credential", "no such credential"));
    };
    let detail = Some(("credential", credential_id.clone()));
    if stored.credential.revoked_at.is_some() {
        return Err(Failure::Refused {
            result: "revoked_credential",
            why: "the credential is revoked",
            detail,
        });
    }
    if user_handle(&stored.sub) != Some(handle) {
        return Err(Failure::Refused {
            result: "wrong_user_handle",
            why: "the user handle is not the credential's user",
            detail,
        });
    }
    let user = store.user(&stored.credential.user).await?;
    if user.disabled {
        return Err(Failure::Refused {
            result: "disabled",
            why: "the user is disabled",
            detail,
        });
    }
    let mut passkey: Passkey = serde_json::from_str(&stored.public_key)
        .map_err(|e| Failure::Server(OAuthError::server_error("stored passkey", e).into_response()))?;
    let result =
        match passkeys
            .webauthn
            .finish_discoverable_authentication_v2(&body.credential, state, &passkey)
        {
            Ok(result) => result,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                let event = Event::failure(
                    "credential_cloned",
                    "sign_count_regression",
                    "the signature counter went backwards: the authenticator may have been cloned",
                )
                .with("sub", user.sub.as_str())
                .with("user", user.name.as_str())
                .with("credential", credential_id.as_str())
                .with("stored_sign_count", stored.credential.sign_count);
                provider
                    .events()
                    .record(event)
                    .map_err(|e| Failure::Server(e.into_response()))?;
                return Err(Failure::Refused {
                    result: "credential_cloned",
                    why: "the signature counter went backwards",
                    detail,
                });
            }
            Err(e) => {
                tracing::info!(error = %e, credential = %credential_id, "passkey assertion refused");
                return Err(Failure::Refused {
                    result: "verification_failed",
                    why: "the assertion did not verify",
                    detail,
                });
            }
        };
    if !result.user_verified() {
        return Err(Failure::Refused {
            result: "not_user_verified",
            why: "the authenticator did not verify the user",
            detail,
        });
    }
    passkey.update_credential(&result);
    let public_key = serde_json::to_string(&passkey)
        .map_err(|e| Failure::Server(OAuthError::server_error("stored passkey", e).into_response()))?;
    let used = CredentialUse {
        sign_count: u64::from(result.counter()),
        backed_up: result.backup_state(),
        public_key,
    };
    match store.record_credential_use(&credential_id, &used, now()).await {
        Ok(()) => {}
        // Revoked meanwhile.
        Err(StoreError::Missing { .. }) => {
            return Err(refused("revoked_credential", "the credential is revoked"));
        }
        Err(e) => return Err(e.into()),
    }
    let (kind, assurance) = if result.backup_eligible() {
        ("swk", Assurance::Aal2)
    } else {
        ("hwk", Assurance::Aal3)
    };
    let amr = [kind, "user", "mfa"].map(str::to_owned).to_vec();
    Ok((user, amr, assurance))
}

fn check_sign_in(
    provider: &Provider,
    headers: &HeaderMap,
    peer: &Peer,
    request: &str,
    csrf: &str,
) -> Result<crate::authorize::AuthorizationRequest, Box<Response>> {
    same_origin(provider, headers)?;
    let checked = provider.check_form(headers, request, csrf).map_err(|_| {
        Box::new(refuse(
            StatusCode::FORBIDDEN,
            "invalid_request",
            "this sign-in page has expired or was not opened in this browser: start again from the application",
        ))
    })?;
    let ip = peer.addr.ip();
    if let Err(wait) = provider.limits().sign_in_ip.check(&ip.to_string()) {
        let _ = provider.events().record(
            Event::failure("sign_in", "rate_limited", "too many failed sign-ins")
                .from_ip(ip)
                .with("factor", "passkey"),
        );
        return Err(Box::new(OAuthError::too_many(wait).into_response()));
    }
    Ok(checked)
}

fn no_store_json(value: serde_json::Value) -> Response {
    let mut response = Json(value).into_response();
    crate::no_store(&mut response);
    response
}

/// What the registration's authenticator data says (WebAuthn §6.1): read from
/// the attestation object the library verified.
struct AuthenticatorData {
    aaguid: Uuid,
    sign_count: u32,
    backup_eligible: bool,
    backed_up: bool,
}

impl AuthenticatorData {
    fn of_attestation(attestation_object: &[u8]) -> Option<Self> {
        let auth_data = cbor::map_bytes(attestation_object, "authData")?;
        // rpIdHash (32), flags (1), signCount (4), then attested credential data: AAGUID (16).
        let flags = *auth_data.get(32)?;
        let sign_count = u32::from_be_bytes(auth_data.get(33..37)?.try_into().ok()?);
        let aaguid = Uuid::from_bytes(auth_data.get(37..53)?.try_into().ok()?);
        Some(Self {
            aaguid,
            sign_count,
            backup_eligible: flags & 0x08 != 0,
            backed_up: flags & 0x10 != 0,
        })
    }
}

/// Just enough CBOR (RFC 8949) to find a byte string in the attestation
/// object's top-level map; bounded by the input, no recursion past [`cbor::MAX_DEPTH`].
mod cbor {
    pub(super) const MAX_DEPTH: usize = 8;

    /// The byte string at text key `key` of the top-level map.
    pub(super) fn map_bytes<'a>(input: &'a [u8], key: &str) -> Option<&'a [u8]> {
        let (major, count, mut rest) = head(input)?;
        if major != 5 {
            return None;
        }
        for _ in 0..count {
            let (k_major, k_len, after_key) = head(rest)?;
            let is_key = k_major == 3 && after_key.get(..usize::try_from(k_len).ok()?)? == key.as_bytes();
            let after_key = skip(rest, 0)?;
            if is_key {
                let (v_major, v_len, value) = head(after_key)?;
                return (v_major == 2)
                    .then(|| value.get(..usize::try_from(v_len).ok()?))
                    .flatten();
            }
            rest = skip(after_key, 0)?;
        }
        None
    }

    /// Major type, argument, and what follows the head.
    fn head(input: &[u8]) -> Option<(u8, u64, &[u8])> {
        let (&first, rest) = input.split_first()?;
        let (major, info) = (first >> 5, first & 0x1f);
        let (argument, rest) = match info {
            0..=23 => (u64::from(info), rest),
            24 => (u64::from(*rest.first()?), rest.get(1..)?),
            25 => (
                u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
                rest.get(2..)?,
            ),
            26 => (
                u64::from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)),
                rest.get(4..)?,
            ),
            27 => (
                u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
                rest.get(8..)?,
            ),
            _ => return None, // indefinite lengths and reserved values: not in attestation objects
        };
        Some((major, argument, rest))
    }

    /// What follows one whole item.
    fn skip(input: &[u8], depth: usize) -> Option<&[u8]> {
        if depth > MAX_DEPTH {
            return None;
        }
        let (major, argument, rest) = head(input)?;
        match major {
            0 | 1 | 7 => Some(rest),
            2 | 3 => rest.get(usize::try_from(argument).ok()?..),
            4 | 5 => {
                let items = if major == 5 {
                    argument.checked_mul(2)?
                } else {
                    argument
                };
                let mut rest = rest;
                for _ in 0..items {
                    rest = skip(rest, depth + 1)?;
                }
                Some(rest)
            }
            6 => skip(rest, depth + 1),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_handle_is_the_sub() {
        let sub = "00112233445566778899aabbccddeeff";
        assert_eq!(user_handle(sub).unwrap().as_bytes()[..2], [0x00, 0x11]);
        assert!(user_handle("alice@example.org").is_none());
        assert!(user_handle("zz112233445566778899aabbccddeeff").is_none());
    }

    #[test]
    fn authenticator_data_is_found_in_an_attestation_object() {
        // {"fmt": "none", "attStmt": {}, "authData": h'…'}
        let mut auth_data = vec![0u8; 32];
        auth_data.push(0x45 | 0x08); // UP, UV, AT, BE
        auth_data.extend(7u32.to_be_bytes());
        auth_data.extend([0xab; 16]);
        let mut object = vec![0xa3, 0x63];
        object.extend(b"fmt");
        object.push(0x64);
        object.extend(b"none");
        object.push(0x67);
        object.extend(b"attStmt");
        object.push(0xa0);
        object.push(0x68);
        object.extend(b"authData");
        object.push(0x58);
        object.push(u8::try_from(auth_data.len()).unwrap());
        object.extend(&auth_data);
        let data = AuthenticatorData::of_attestation(&object).unwrap();
        assert_eq!(data.sign_count, 7);
        assert!(data.backup_eligible && !data.backed_up);
        assert_eq!(data.aaguid, Uuid::from_bytes([0xab; 16]));
        assert!(AuthenticatorData::of_attestation(&object[..object.len() - 1]).is_none());
        assert!(AuthenticatorData::of_attestation(&[0xbf]).is_none());
    }
}
