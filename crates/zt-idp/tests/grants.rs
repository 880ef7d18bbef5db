//! The token endpoint's workload and delegation grants, driven through the
//! provider's router over a real datastore (SQLite in a temp dir), with the
//! keys of a real JWT authority: a mesh workload's JWT-SVID as its client
//! assertion (RFC 7523) and token exchange (RFC 8693).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;
use zt_identity::jwk::PublicKey;
use zt_identity::jwt::{JwtSigner, sign_jws};
use zt_identity::{Algorithm, Bundle, JwtSvidError, SpiffeId, TrustDomain, mint_jwt_svid};
use zt_idp::{IdpConfig, Keys, Peer, Provider};
use zt_store::{ClientKind, GrantType, NewClient, NewUser, SignIn, Store};

const ISSUER: &str = "https://idp.example.org:8443";
const WORKLOAD: &str = "spiffe://example.org/ns/orders/sa/api";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A trust domain's JWT authority, as zt server's authority manager has one.
struct Authority {
    signer: JwtSigner,
    bundle: Bundle,
}

impl Authority {
    fn new(trust_domain: &str) -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let signer = JwtSigner::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut bundle = Bundle::new(TrustDomain::parse(trust_domain).unwrap());
        bundle
            .add_jwt_authority(signer.kid(), signer.public_key().clone())
            .unwrap();
        Self { signer, bundle }
    }

    fn svid(&self, sub: &str, aud: &str, lifetime: u64) -> String {
        let now = now();
        mint_jwt_svid(
            &self.signer,
            &SpiffeId::parse(sub).unwrap(),
            &[aud.to_owned()],
            now,
            now + lifetime,
        )
        .unwrap()
    }
}

impl Keys for Authority {
    fn sign(&self, typ: &str, claims: &Value) -> Result<String, JwtSvidError> {
        sign_jws(&self.signer, typ, claims)
    }

    fn verification_keys(&self) -> Vec<(String, Algorithm, PublicKey)> {
        self.bundle
            .jwt_authorities()
            .map(|(kid, key)| (kid.to_owned(), Algorithm::for_key(key), key.clone()))
            .collect()
    }

    fn bundle(&self) -> Bundle {
        self.bundle.clone()
    }
}

fn now() -> u64 {
    zt_identity::clock::unix_seconds()
}

struct Fixture {
    provider: Provider,
    store: Store,
    authority: Arc<Authority>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("zt.db").to_str().unwrap())
        .await
        .unwrap();
    let authority = Arc::new(Authority::new("example.org"));
    let config = IdpConfig {
        issuer: ISSUER.into(),
        trust_domain: TrustDomain::parse("example.org").unwrap(),
        access_ttl: zt_idp::DEFAULT_ACCESS_TTL,
        session_ttl: zt_idp::DEFAULT_SESSION_TTL,
        refresh_grace: zt_idp::DEFAULT_REFRESH_GRACE,
        passwords: true,
        zones: vec![],
        aaguids: vec![],
        backchannel_ca: vec![],
    };
    let provider = Provider::new(config, store.clone(), authority.clone(), None).unwrap();
    Fixture {
        provider,
        store,
        authority,
        _dir: dir,
    }
}

impl Fixture {
    async fn client(&self, id: &str, kind: ClientKind, grants: &[GrantType]) -> Option<String> {
        let new = NewClient {
            client_id: id.into(),
            kind,
            jwks: None,
            redirect_uris: vec![],
            grant_types: grants.to_vec(),
            backchannel_logout_uri: None,
            backchannel_logout_session_required: false,
        };
        self.store.create_client(&new, now()).await.unwrap().secret
    }

    /// `POST /token` with a form (and Basic credentials when given).
    async fn token(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, Map<String, Value>) {
        let peer = Peer {
            addr: "127.0.0.1:40000".parse().unwrap(),
            certificate_sha256: None,
            spiffe_id: None,
        };
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = Request::post("/token").header("content-type", "application/x-www-form-urlencoded");
        if let Some((id, secret)) = basic {
            use base64::Engine as _;
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                encode(id),
                encode(secret)
            ));
            request = request.header("authorization", format!("Basic {credentials}"));
        }
        let response = self
            .provider
            .router()
            .layer(axum::Extension(peer))
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        (status, value.as_object().cloned().unwrap())
    }

    /// A person signed in with a passkey, and an access token of client
    /// `app` for them, got through the refresh-token grant.
    async fn user_token(&self, scope: &str) -> (String, String) {
        let user = self
            .store
            .create_user(
                &NewUser {
                    name: "alice".into(),
                    email: "alice@example.org".into(),
                    display_name: None,
                    groups: vec![],
                },
                now(),
            )
            .await
            .unwrap();
        let opened = self
            .store
            .create_session(
                &SignIn {
                    sub: user.sub.clone(),
                    expires_at: now() + 3600,
                    amr: vec!["hwk".into(), "user".into()],
                    acr: "urn:zt:acr:aal3".into(),
                    source_ip: "10.1.2.3".into(),
                },
                now(),
            )
            .await
            .unwrap();
        self.store
            .create_client(
                &NewClient {
                    client_id: "app".into(),
                    kind: ClientKind::Public,
                    jwks: None,
                    redirect_uris: vec![zt_store::RedirectUri::parse("https://app.example.org/cb").unwrap()],
                    grant_types: vec![],
                    backchannel_logout_uri: None,
                    backchannel_logout_session_required: false,
                },
                now(),
            )
            .await
            .unwrap();
        let family = self
            .store
            .start_refresh_family(&opened.session.id, "app", scope, None, now())
            .await
            .unwrap()
            .unwrap();
        let (status, body) = self
            .token(
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", "app"),
                    ("refresh_token", &family.token),
                ],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        (
            body["access_token"].as_str().unwrap().to_owned(),
            opened.session.id,
        )
    }
}

/// RFC 6749 Appendix B: form-urlencoding, as the Basic scheme's credentials need too.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn claims_of(token: &str) -> Map<String, Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn assertion_form<'a>(assertion: &'a str, grant: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", grant),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ]
}

#[tokio::test]
async fn a_workload_gets_a_token_with_its_jwt_svid() {
    let f = fixture().await;
    f.client(WORKLOAD, ClientKind::Spiffe, &[GrantType::ClientCredentials])
        .await;
    let token_endpoint = format!("{ISSUER}/token");
    for audience in [ISSUER, token_endpoint.as_str()] {
        let svid = f.authority.svid(WORKLOAD, audience, 300);
        let mut form = assertion_form(&svid, "client_credentials");
        form.push(("audience", "spiffe://example.org/ns/billing/sa/api"));
        let (status, body) = f.token(&form, None).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let claims = claims_of(body["access_token"].as_str().unwrap());
        assert_eq!(claims["sub"], WORKLOAD);
        assert_eq!(claims["client_id"], WORKLOAD);
        assert_eq!(claims["aud"], "spiffe://example.org/ns/billing/sa/api");
        f.provider
            .verify_access_token(body["access_token"].as_str().unwrap(), now())
            .unwrap();
    }
}

#[tokio::test]
async fn a_jwt_svid_assertion_is_refused_unless_everything_holds() {
    let f = fixture().await;
    f.client(WORKLOAD, ClientKind::Spiffe, &[GrantType::ClientCredentials])
        .await;
    let refused = |why: &'static str| {
        move |(status, body): (StatusCode, Map<String, Value>)| {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body:?}");
            assert_eq!(body["error"], "invalid_client", "{why}: {body:?}");
            body["error_description"].as_str().unwrap().to_owned()
        }
    };

    let wrong_audience = f
        .authority
        .svid(WORKLOAD, "spiffe://example.org/ns/other/sa/x", 300);
    let why = refused("audience")(
        f.token(&assertion_form(&wrong_audience, "client_credentials"), None)
            .await,
    );
    assert!(why.contains("aud"), "{why}");

    let too_long = f.authority.svid(WORKLOAD, ISSUER, 3600);
    let why = refused("lifetime")(
        f.token(&assertion_form(&too_long, "client_credentials"), None)
            .await,
    );
    assert!(why.contains("lifetime"), "{why}");

    let issued = now() - 120;
    let expired = mint_jwt_svid(
        &f.authority.signer,
        &SpiffeId::parse(WORKLOAD).unwrap(),
        &[ISSUER.to_owned()],
        issued,
        issued + 60,
    )
    .unwrap();
    let why = refused("expired")(
        f.token(&assertion_form(&expired, "client_credentials"), None)
            .await,
    );
    assert!(why.contains("expired"), "{why}");

    let unregistered = f
        .authority
        .svid("spiffe://example.org/ns/orders/sa/worker", ISSUER, 300);
    refused("unregistered")(
        f.token(&assertion_form(&unregistered, "client_credentials"), None)
            .await,
    );

    // Another trust domain's authority, and its workload of the same path.
    let foreign = Authority::new("evil.example");
    let svid = foreign.svid("spiffe://evil.example/ns/orders/sa/api", ISSUER, 300);
    refused("foreign")(f.token(&assertion_form(&svid, "client_credentials"), None).await);
    // Another authority's signature over our workload's name.
    let forged = foreign_signed(&foreign, WORKLOAD);
    let why = refused("forged")(
        f.token(&assertion_form(&forged, "client_credentials"), None)
            .await,
    );
    assert!(why.contains("JWT-SVID"), "{why}");

    // A jti is single-use.
    let claims = json!({ "sub": WORKLOAD, "aud": ISSUER, "iat": now(), "exp": now() + 60, "jti": "once" });
    let once = sign_jws(&f.authority.signer, "JWT", &claims).unwrap();
    let (status, body) = f.token(&assertion_form(&once, "client_credentials"), None).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let why = refused("replay")(f.token(&assertion_form(&once, "client_credentials"), None).await);
    assert!(why.contains("already used"), "{why}");

    // client_id, when given, must be the SVID's subject.
    let svid = f.authority.svid(WORKLOAD, ISSUER, 300);
    let mut form = assertion_form(&svid, "client_credentials");
    form.push(("client_id", "spiffe://example.org/ns/orders/sa/worker"));
    refused("client_id")(f.token(&form, None).await);
}

/// A token shaped as `sub`'s JWT-SVID but signed by `authority`.
fn foreign_signed(authority: &Authority, sub: &str) -> String {
    let claims = json!({ "sub": sub, "aud": ISSUER, "iat": now(), "exp": now() + 60 });
    sign_jws(&authority.signer, "JWT", &claims).unwrap()
}

#[tokio::test]
async fn an_assertion_authenticates_only_the_kinds_of_client_that_use_one() {
    let f = fixture().await;
    // An assertion for a client with a secret is refused, whoever signed it.
    let secret = f
        .client("batch", ClientKind::Secret, &[GrantType::ClientCredentials])
        .await
        .unwrap();
    let claims =
        json!({ "iss": "batch", "sub": "batch", "aud": ISSUER, "iat": now(), "exp": now() + 60, "jti": "x" });
    let assertion = sign_jws(&f.authority.signer, "JWT", &claims).unwrap();
    let (status, body) = f
        .token(&assertion_form(&assertion, "client_credentials"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body:?}");
    let (status, body) = f
        .token(&[("grant_type", "client_credentials")], Some(("batch", &secret)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

const ORDERS: &str = "spiffe://example.org/ns/shop/sa/orders";
const BILLING: &str = "spiffe://example.org/ns/shop/sa/billing";

impl Fixture {
    /// `POST /token` as workload `id`, authenticated by a fresh JWT-SVID.
    async fn as_workload(&self, id: &str, form: &[(&str, &str)]) -> (StatusCode, Map<String, Value>) {
        let svid = self.authority.svid(id, ISSUER, 60);
        let mut form = form.to_vec();
        form.extend(assertion_form(&svid, TOKEN_EXCHANGE).into_iter().skip(1));
        self.token(&form, None).await
    }
}

fn exchange<'a>(subject: &'a str, audience: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("audience", audience),
    ]
}

#[tokio::test]
async fn a_service_exchanges_a_persons_token_to_call_another_on_their_behalf() {
    let f = fixture().await;
    for workload in [ORDERS, BILLING] {
        f.client(workload, ClientKind::Spiffe, &[GrantType::TokenExchange])
            .await;
    }
    let (subject, sid) = f.user_token("openid orders:read orders:write").await;
    let subject_claims = claims_of(&subject);
    // Every claim of the person's token beyond the token's own is a person claim.
    for name in subject_claims.keys() {
        let own = ["iss", "sub", "aud", "client_id", "iat", "exp", "jti", "scope"];
        assert!(
            own.contains(&name.as_str()) || zt_idp::tokens::PERSON_CLAIMS.contains(&name.as_str()),
            "{name} is neither the token's own claim nor a person claim: an exchange would drop it"
        );
    }
    // Later than the subject token: the exchanged one must not outlive it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let mut form = exchange(&subject, BILLING);
    form.push(("scope", "orders:read"));
    let (status, body) = f.as_workload(ORDERS, &form).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "orders:read");
    let first = body["access_token"].as_str().unwrap().to_owned();
    let claims = f.provider.verify_access_token(&first, now()).unwrap();
    assert_eq!(claims["sub"], subject_claims["sub"]);
    assert_eq!(claims["sid"], json!(sid));
    for name in zt_idp::tokens::PERSON_CLAIMS {
        assert_eq!(claims.get(name), subject_claims.get(name), "{name}");
        assert!(claims.contains_key(name), "{name}");
    }
    assert_eq!(claims["aud"], BILLING);
    assert_eq!(claims["client_id"], ORDERS);
    assert_eq!(claims["act"], json!({ "sub": ORDERS }));
    assert_eq!(
        claims["exp"], subject_claims["exp"],
        "no longer than the subject token's life"
    );
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(expires_in < 900, "{expires_in}");

    // Billing passes it on: the actors nest, the latest outermost (RFC 8693 §4.1).
    let (status, body) = f
        .as_workload(
            BILLING,
            &exchange(&first, "spiffe://example.org/ns/shop/sa/ledger"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["act"], json!({ "sub": BILLING, "act": { "sub": ORDERS } }));
    assert_eq!(claims["scope"], "orders:read", "the narrowed scope carries on");

    // An actor token names the actor: a workload's JWT-SVID here.
    let actor = f
        .authority
        .svid("spiffe://example.org/ns/shop/sa/frontend", ISSUER, 60);
    let mut form = exchange(&subject, BILLING);
    form.extend([
        ("actor_token", actor.as_str()),
        ("actor_token_type", JWT_TOKEN_TYPE),
    ]);
    let (status, body) = f.as_workload(ORDERS, &form).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(
        claims["act"],
        json!({ "sub": "spiffe://example.org/ns/shop/sa/frontend" })
    );
}

#[tokio::test]
async fn token_exchange_is_refused_unless_everything_holds() {
    let f = fixture().await;
    f.client(ORDERS, ClientKind::Spiffe, &[GrantType::TokenExchange])
        .await;
    f.client(BILLING, ClientKind::Spiffe, &[GrantType::ClientCredentials])
        .await;
    let (subject, sid) = f.user_token("openid orders:read").await;
    let refused = |(status, body): (StatusCode, Map<String, Value>), error: &str, needle: &str| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(body["error"], error, "{body:?}");
        let why = body["error_description"].as_str().unwrap();
        assert!(why.contains(needle), "{needle:?} not in {why:?}");
    };

    let mut wider = exchange(&subject, BILLING);
    wider.push(("scope", "orders:read orders:write"));
    refused(f.as_workload(ORDERS, &wider).await, "invalid_scope", "widen");

    let mut no_audience = exchange(&subject, BILLING);
    no_audience.pop();
    refused(
        f.as_workload(ORDERS, &no_audience).await,
        "invalid_request",
        "audience",
    );

    let mut wrong_type = exchange(&subject, BILLING);
    wrong_type[2].1 = JWT_TOKEN_TYPE;
    refused(
        f.as_workload(ORDERS, &wrong_type).await,
        "invalid_request",
        "subject_token_type",
    );

    refused(
        f.as_workload(BILLING, &exchange(&subject, ORDERS)).await,
        "unauthorized_client",
        "may not use",
    );

    refused(
        f.as_workload(ORDERS, &exchange("not.a.token", BILLING)).await,
        "invalid_request",
        "subject_token",
    );

    // A client's own token has no person to act for.
    let svid = f.authority.svid(BILLING, ISSUER, 60);
    let (_, body) = f.token(&assertion_form(&svid, "client_credentials"), None).await;
    let own = body["access_token"].as_str().unwrap();
    refused(
        f.as_workload(ORDERS, &exchange(own, BILLING)).await,
        "invalid_request",
        "acting as itself",
    );

    // An actor token of another trust domain.
    let foreign = Authority::new("evil.example").svid("spiffe://evil.example/x", ISSUER, 60);
    let mut form = exchange(&subject, BILLING);
    form.extend([
        ("actor_token", foreign.as_str()),
        ("actor_token_type", JWT_TOKEN_TYPE),
    ]);
    refused(
        f.as_workload(ORDERS, &form).await,
        "invalid_request",
        "actor_token",
    );

    // Once the person's session is revoked, their token buys nothing.
    let (status, body) = f.as_workload(ORDERS, &exchange(&subject, BILLING)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    f.store.revoke_session(&sid, "test", now()).await.unwrap();
    refused(
        f.as_workload(ORDERS, &exchange(&subject, BILLING)).await,
        "invalid_request",
        "session has ended",
    );
}

const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An answer: status, `Set-Cookie` values (name=value), `Location`, body.
struct Answer {
    status: StatusCode,
    cookies: Vec<String>,
    location: Option<String>,
    body: String,
}

impl Fixture {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        cookie: Option<&str>,
        form: Option<&[(&str, &str)]>,
    ) -> Answer {
        let peer = Peer {
            addr: "127.0.0.1:40001".parse().unwrap(),
            certificate_sha256: None,
            spiffe_id: None,
        };
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let body = match form {
            Some(form) => {
                request = request.header("content-type", "application/x-www-form-urlencoded");
                form.iter()
                    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            }
            None => String::new(),
        };
        let response = self
            .provider
            .router()
            .layer(axum::Extension(peer))
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let cookies = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
            .collect();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        Answer {
            status,
            cookies,
            location,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn device_authorization(&self, client: &str) -> Map<String, Value> {
        let answer = self
            .send(
                "POST",
                "/device_authorization",
                None,
                Some(&[("client_id", client), ("scope", "openid offline_access unknown")]),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    }

    async fn poll(&self, device_code: &str) -> (StatusCode, Map<String, Value>) {
        self.token(
            &[
                ("grant_type", DEVICE_CODE),
                ("client_id", "cli"),
                ("device_code", device_code),
            ],
            None,
        )
        .await
    }
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn a_device_is_signed_in_by_a_person_elsewhere() {
    let f = fixture().await;
    f.client(
        "cli",
        ClientKind::Public,
        &[GrantType::DeviceCode, GrantType::RefreshToken],
    )
    .await;
    f.store
        .create_user(
            &NewUser {
                name: "bob".into(),
                email: "bob@example.org".into(),
                display_name: None,
                groups: vec![],
            },
            now(),
        )
        .await
        .unwrap();
    f.store
        .set_password("bob", Some("correct horse battery staple"), now())
        .await
        .unwrap();

    // The device asks, then polls: too early, then too fast.
    let first = f.device_authorization("cli").await;
    let user_code = first["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9, "{user_code}");
    assert!(
        user_code
            .chars()
            .all(|c| c == '-' || "BCDFGHJKLMNPQRSTVWXZ".contains(c)),
        "{user_code}"
    );
    assert_eq!(first["expires_in"], 600);
    assert_eq!(first["interval"], 5);
    assert_eq!(first["verification_uri"], format!("{ISSUER}/device"));
    assert_eq!(
        first["verification_uri_complete"],
        format!("{ISSUER}/device?user_code={user_code}")
    );
    let device_code = first["device_code"].as_str().unwrap();
    let (status, body) = f.poll(device_code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("authorization_pending"))
    );
    let (_, body) = f.poll(device_code).await;
    assert_eq!(body["error"], "slow_down");

    // The person types the code, signs in, and the device's next poll gets tokens.
    let second = f.device_authorization("cli").await;
    let user_code = second["user_code"].as_str().unwrap().to_lowercase();
    let page = f
        .send("GET", &format!("/device?user_code={user_code}"), None, None)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let sign_in_cookie = page
        .cookies
        .iter()
        .find(|c| c.starts_with("__Host-zt-signin="))
        .unwrap();
    let signed_in = f
        .send(
            "POST",
            "/signin/password",
            Some(sign_in_cookie),
            Some(&[
                ("request", &hidden(&page.body, "request")),
                ("csrf", &hidden(&page.body, "csrf")),
                ("username", "bob"),
                ("password", "correct horse battery staple"),
            ]),
        )
        .await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "{}", signed_in.body);
    assert_eq!(signed_in.location.as_deref(), Some("/device/done"));
    let done = f.send("GET", "/device/done", None, None).await;
    assert!(done.body.contains("Device signed in"), "{}", done.body);
    let session = signed_in
        .cookies
        .iter()
        .find(|c| c.starts_with("__Host-zt-session="))
        .unwrap()
        .clone();
    let (status, body) = f.poll(second["device_code"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(body["scope"], "openid offline_access", "unknown scopes dropped");
    assert!(
        body["refresh_token"].is_string() && body["id_token"].is_string(),
        "{body:?}"
    );
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["client_id"], "cli");
    let (_, body) = f.poll(second["device_code"].as_str().unwrap()).await;
    assert_eq!(body["error"], "invalid_grant", "redeemed once");

    // Signed in already: the person approves or denies, on a form bound to their session.
    let third = f.device_authorization("cli").await;
    let user_code = third["user_code"].as_str().unwrap();
    let page = f
        .send(
            "GET",
            &format!("/device?user_code={user_code}"),
            Some(&session),
            None,
        )
        .await;
    assert!(page.body.contains("id=\"deny\""), "{}", page.body);
    let confirm = hidden(&page.body, "confirm");
    let forged = f
        .send(
            "POST",
            "/device",
            Some(&session),
            Some(&[
                ("user_code", user_code),
                ("confirm", "forged"),
                ("action", "approve"),
            ]),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let denied = f
        .send(
            "POST",
            "/device",
            Some(&session),
            Some(&[
                ("user_code", user_code),
                ("confirm", &confirm),
                ("action", "deny"),
            ]),
        )
        .await;
    assert_eq!(denied.status, StatusCode::OK, "{}", denied.body);
    let (_, body) = f.poll(third["device_code"].as_str().unwrap()).await;
    assert_eq!(body["error"], "access_denied");

    // An unknown code; a client without the grant.
    let unknown = f.send("GET", "/device?user_code=BCDF-GHJK", None, None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    f.client("web-only", ClientKind::Public, &[GrantType::RefreshToken])
        .await;
    let refused = f
        .send(
            "POST",
            "/device_authorization",
            None,
            Some(&[("client_id", "web-only")]),
        )
        .await;
    assert!(refused.body.contains("unauthorized_client"), "{}", refused.body);
}
