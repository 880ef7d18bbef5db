//! zt server's OpenID Provider as its clients drive it: a real server in
//! this process with `--idp` on loopback (SQLite in a temp dir, the decision
//! log on), a person signed in with a password through the sign-in page,
//! then concurrent clients over TLS on keep-alive connections, each request
//! timed: the refresh-token grant (each worker rotating its own family), the
//! client-credentials grant with a workload's JWT-SVID as assertion (a fresh
//! `jti` each, signed by the trust domain's authority as an agent would), the
//! same with `client_secret_basic` (argon2id), and introspection; and access
//! token verification in process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zt_identity::jwk::PublicKey;
use zt_identity::{Algorithm, Bundle, JwtSvidError, TrustDomain};
use zt_store::{ClientKind, GrantType, NewClient, NewUser, RedirectUri, Store};

use crate::server::InProcessServer;
use crate::{Error, Figure, Samples, measure, now};

/// What [`run`] measures.
#[derive(Debug, Clone)]
pub struct TokensBench {
    /// Length of each run.
    pub window: Duration,
    /// Concurrent clients, each on its own keep-alive connection.
    pub concurrency: usize,
    /// A `postgres://` URL for the datastore; SQLite in a temporary directory without.
    pub datastore: Option<String>,
}

const APP: &str = "bench-app";
const SERVICE: &str = "bench-service";
const WORKLOAD: &str = "spiffe://example.org/ns/bench/sa/client";
const REDIRECT_URI: &str = "http://127.0.0.1:9/cb";
const USER: &str = "bench";
const PASSWORD: &str = "correct horse battery staple";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Runs the bench: [`Figure::Requests`] per grant and for introspection,
/// [`Figure::Calls`] for verification in process.
pub async fn run(bench: TokensBench, mut report: impl FnMut(Figure)) -> Result<(), Error> {
    let td = TrustDomain::parse("example.org")?;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let location = match &bench.datastore {
        Some(url) => url.clone(),
        None => dir.path().join("zt.db").to_string_lossy().into_owned(),
    };
    let idp_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let issuer = format!("https://localhost:{}", idp_addr.port());
    let config = zt_idp::IdpConfig {
        issuer: issuer.clone(),
        trust_domain: td.clone(),
        access_ttl: zt_idp::DEFAULT_ACCESS_TTL,
        session_ttl: zt_idp::DEFAULT_SESSION_TTL,
        refresh_grace: zt_idp::DEFAULT_REFRESH_GRACE,
        passwords: true,
        zones: vec![],
        aaguids: vec![],
        backchannel_ca: vec![],
    };
    let log = dir.path().join("idp-decisions.log");
    let key = zt_audit::signed::load_or_create_key(&zt_audit::signed::default_key_path(&log))?;
    let decision_log =
        zt_audit::Writer::open_signed(&log, key, zt_audit::signed::CheckpointPolicy::default())?;
    let idp = zt_server::IdpSettings {
        addr: idp_addr,
        config: config.clone(),
        certificate: None,
        decision_log: Some(decision_log),
    };
    let server = InProcessServer::start_with(data_dir, location.clone(), &td, Some(idp)).await?;
    let admin = &server.admin;

    // A person with a password, and the clients.
    admin
        .create_user(&NewUser {
            name: USER.into(),
            email: "bench@example.org".into(),
            display_name: None,
            groups: vec![],
        })
        .await?;
    admin.set_password(USER, Some(PASSWORD)).await?;
    let client = |id: &str, kind, grants: Vec<GrantType>, redirect: bool| NewClient {
        client_id: id.into(),
        kind,
        jwks: None,
        redirect_uris: if redirect {
            RedirectUri::parse(REDIRECT_URI).into_iter().collect()
        } else {
            vec![]
        },
        grant_types: grants,
        backchannel_logout_uri: None,
        backchannel_logout_session_required: false,
    };
    admin
        .create_client(&client(
            APP,
            ClientKind::Public,
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
            true,
        ))
        .await?;
    let secret = admin
        .create_client(&client(
            SERVICE,
            ClientKind::Secret,
            vec![GrantType::ClientCredentials],
            false,
        ))
        .await?
        .secret
        .ok_or_else(|| Error::Failed("a secret client was made without a secret".into()))?;
    admin
        .create_client(&client(
            WORKLOAD,
            ClientKind::Spiffe,
            vec![GrantType::ClientCredentials],
            false,
        ))
        .await?;

    // The trust domain's active JWT authority, which signs workloads' JWT-SVIDs.
    let bundle = Bundle::parse(
        admin.bundle(zt_server::api::BundleFormat::Jwks).await?.as_bytes(),
        Some(td.clone()),
    )?;
    let store = Store::open(&location).await?;
    let authority = store
        .authorities(now())
        .await?
        .into_iter()
        .filter(|a| a.activated_at.is_some())
        .max_by_key(|a| a.activation)
        .ok_or_else(|| Error::Failed("zt server has no active authority".into()))?;
    let signer = Arc::new(zt_ca::Authority::from_pem(
        &authority.ca_cert_pem,
        &authority.ca_key_pem,
        &authority.jwt_key_pem,
    )?);

    let tls = tls_connector(&bundle)?;
    let connect = || Conn::connect(idp_addr, tls.clone());
    let concurrency = bench.concurrency.max(1);
    let window = bench.window.max(Duration::from_secs(1));

    // Sign in once with a password; then one refresh-token family per worker.
    let mut browser = connect().await?;
    let session = browser.password_sign_in().await?;
    let mut families = Vec::new();
    for _ in 0..concurrency {
        families.push(browser.code_flow(&session).await?);
    }
    let access_token = {
        let body = browser
            .form(
                "/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", APP),
                    ("refresh_token", &families.pop().unwrap_or_default()),
                ],
                None,
            )
            .await?;
        families.push(text(&body, "refresh_token")?);
        text(&body, "access_token")?
    };

    // refresh_token: each worker rotates its own family.
    let figure = timed(
        "refresh_token (public client, rotated)",
        window,
        families,
        connect,
        |conn, token: &mut String| {
            Box::pin(async move {
                let body = conn
                    .form(
                        "/token",
                        &[
                            ("grant_type", "refresh_token"),
                            ("client_id", APP),
                            ("refresh_token", token),
                        ],
                        None,
                    )
                    .await?;
                *token = text(&body, "refresh_token")?;
                Ok(())
            })
        },
    )
    .await?;
    report(figure);

    // client_credentials with a JWT-SVID, a fresh jti each.
    let token_endpoint = format!("{issuer}/token");
    let assertion = {
        let (signer, aud) = (signer.clone(), token_endpoint.clone());
        move |n: &mut u64| -> Result<String, Error> {
            *n += 1;
            let now = now();
            let claims = json!({ "sub": WORKLOAD, "aud": aud, "iat": now, "exp": now + 60,
                "jti": format!("{}-{n}", random_hex()) });
            zt_identity::jwt::sign_jws(signer.jwt_signer(), "JWT", &claims)
                .map_err(|e| Error::Failed(e.to_string()))
        }
    };
    let figure = {
        let assertion = assertion.clone();
        timed(
            "client_credentials (JWT-SVID assertion)",
            window,
            vec![0u64; concurrency],
            connect,
            move |conn, n: &mut u64| {
                let assertion = assertion(n);
                Box::pin(async move {
                    let body = conn
                        .form(
                            "/token",
                            &[
                                ("grant_type", "client_credentials"),
                                ("client_assertion_type", JWT_BEARER),
                                ("client_assertion", &assertion?),
                            ],
                            None,
                        )
                        .await?;
                    text(&body, "access_token").map(drop)
                })
            },
        )
        .await?
    };
    report(figure);

    // client_credentials with client_secret_basic: argon2id on the first request, then the remembered verification.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{SERVICE}:{secret}"));
    let figure = timed(
        "client_credentials (client_secret_basic; argon2id once per 5 min)",
        window,
        vec![(); concurrency],
        connect,
        move |conn, (): &mut ()| {
            let basic = basic.clone();
            Box::pin(async move {
                let body = conn
                    .form("/token", &[("grant_type", "client_credentials")], Some(&basic))
                    .await?;
                text(&body, "access_token").map(drop)
            })
        },
    )
    .await?;
    report(figure);

    // Introspection of a person's access token, the caller a workload.
    let subject = access_token.clone();
    let figure = timed(
        "introspection (JWT-SVID assertion)",
        window,
        vec![0u64; concurrency],
        connect,
        move |conn, n: &mut u64| {
            let assertion = assertion(n);
            let token = subject.clone();
            Box::pin(async move {
                let body = conn
                    .form(
                        "/introspect",
                        &[
                            ("token", &token),
                            ("client_assertion_type", JWT_BEARER),
                            ("client_assertion", &assertion?),
                        ],
                        None,
                    )
                    .await?;
                match body.get("active") {
                    Some(Value::Bool(true)) => Ok(()),
                    _ => Err(Error::Failed(format!("introspection answered {body}"))),
                }
            })
        },
    )
    .await?;
    report(figure);

    // Verification in process, as a resource server of this provider does it.
    let keys = Arc::new(AuthorityKeys { signer, bundle });
    let provider =
        zt_idp::Provider::new(config, store, keys, None).map_err(|e| Error::Failed(e.to_string()))?;
    let mut failed = None;
    let samples = measure(20_000, || {
        if let Err(e) = provider.verify_access_token(&access_token, now()) {
            failed = Some(e.to_string());
        }
    });
    if let Some(why) = failed {
        return Err(Error::Failed(format!("an access token did not verify: {why}")));
    }
    report(Figure::Calls {
        name: "access token verification (in process)".into(),
        samples,
    });

    server.stop().await
}

type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send + 'a>>;

/// `states.len()` workers, each on its own connection, calling `step` with
/// their state until `window` has passed; each call timed.
async fn timed<S, C, F>(
    name: &str,
    window: Duration,
    states: Vec<S>,
    connect: impl Fn() -> C,
    step: F,
) -> Result<Figure, Error>
where
    S: Send + 'static,
    C: std::future::Future<Output = Result<Conn, Error>>,
    F: for<'a> Fn(&'a mut Conn, &'a mut S) -> Step<'a> + Clone + Send + Sync + 'static,
{
    let callers = states.len();
    let mut conns = Vec::with_capacity(callers);
    for _ in 0..callers {
        conns.push(connect().await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut conn, mut state) in conns.into_iter().zip(states) {
        let step = step.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < window {
                let at = Instant::now();
                step(&mut conn, &mut state).await?;
                latencies.push(at.elapsed());
            }
            Ok::<_, Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(Figure::Requests {
        name: name.into(),
        samples: Samples::new(all),
        callers,
        elapsed: started.elapsed(),
    })
}

fn text(body: &Value, name: &str) -> Result<String, Error> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Failed(format!("no {name} in {body}")))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The provider's keys for verification in process: the authority's.
struct AuthorityKeys {
    signer: Arc<zt_ca::Authority>,
    bundle: Bundle,
}

impl zt_idp::Keys for AuthorityKeys {
    fn sign(&self, typ: &str, claims: &Value) -> Result<String, JwtSvidError> {
        zt_identity::jwt::sign_jws(self.signer.jwt_signer(), typ, claims)
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

fn tls_connector(bundle: &Bundle) -> Result<tokio_rustls::TlsConnector, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for der in bundle.x509_authorities() {
        roots
            .add(der.clone())
            .map_err(|e| Error::Failed(format!("the trust bundle's CA: {e}")))?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Failed(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One keep-alive HTTP/1.1 connection over TLS: just enough of a client for
/// the provider's answers, which always carry a `Content-Length`.
struct Conn {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buffer: Vec<u8>,
}

/// An answer: status, headers (names lowercase), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Most bytes of one answer's head or body.
const MAX_ANSWER: usize = 1 << 20;

impl Conn {
    async fn connect(addr: std::net::SocketAddr, tls: tokio_rustls::TlsConnector) -> Result<Self, Error> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name =
            rustls_pki_types::ServerName::try_from("localhost").map_err(|e| Error::Failed(e.to_string()))?;
        let stream = tls.connect(name, tcp).await?;
        Ok(Self {
            stream,
            buffer: Vec::new(),
        })
    }

    async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, Error> {
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).await?;
        self.stream.flush().await?;
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| Error::Failed(format!("not an HTTP answer: {head}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if length > MAX_ANSWER {
            return Err(Error::Failed(format!("an answer of {length} bytes")));
        }
        let body_start = head_end + 4;
        while self.buffer.len() < body_start + length {
            self.fill().await?;
        }
        let body = self.buffer[body_start..body_start + length].to_vec();
        self.buffer.drain(..body_start + length);
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn fill(&mut self) -> Result<(), Error> {
        if self.buffer.len() > MAX_ANSWER {
            return Err(Error::Failed("an answer's head is too long".into()));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::Failed("the server closed the connection".into()));
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// POSTs a form; the JSON answer if it is a 200.
    async fn form(&mut self, path: &str, form: &[(&str, &str)], basic: Option<&str>) -> Result<Value, Error> {
        let body = encode_form(form);
        let authorization = basic.map(|b| format!("Basic {b}"));
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization));
        }
        let answer = self.send("POST", path, &headers, body.as_bytes()).await?;
        if answer.status != 200 {
            return Err(Error::Failed(format!(
                "POST {path}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )));
        }
        serde_json::from_slice(&answer.body).map_err(|e| Error::Failed(format!("POST {path}: {e}")))
    }

    /// Signs in with the password on the sign-in page an authorization
    /// request shows; the session cookie.
    async fn password_sign_in(&mut self) -> Result<String, Error> {
        let (verifier, target) = authorize_target();
        let page = self.send("GET", &target, &[], b"").await?;
        let html = String::from_utf8_lossy(&page.body).into_owned();
        let request = hidden(&html, "request")?;
        let csrf = hidden(&html, "csrf")?;
        let cookie = page
            .header("set-cookie")
            .find_map(|c| c.split(';').next().filter(|c| c.starts_with("__Host-zt-signin=")))
            .ok_or_else(|| Error::Failed("the sign-in page set no sign-in cookie".into()))?
            .to_owned();
        let form = encode_form(&[
            ("request", &request),
            ("csrf", &csrf),
            ("username", USER),
            ("password", PASSWORD),
        ]);
        let signed_in = self
            .send(
                "POST",
                "/signin/password",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("cookie", &cookie),
                ],
                form.as_bytes(),
            )
            .await?;
        let session = signed_in
            .header("set-cookie")
            .find_map(|c| {
                c.split(';')
                    .next()
                    .filter(|c| c.starts_with("__Host-zt-session="))
            })
            .ok_or_else(|| {
                Error::Failed(format!(
                    "password sign-in: {} {}",
                    signed_in.status,
                    String::from_utf8_lossy(&signed_in.body)
                ))
            })?
            .to_owned();
        self.redeem(&signed_in, &verifier).await?;
        Ok(session)
    }

    /// An authorization code for the signed-in `session`, redeemed: its refresh token.
    async fn code_flow(&mut self, session: &str) -> Result<String, Error> {
        let (verifier, target) = authorize_target();
        let answer = self.send("GET", &target, &[("cookie", session)], b"").await?;
        self.redeem(&answer, &verifier).await
    }

    async fn redeem(&mut self, redirect: &Answer, verifier: &str) -> Result<String, Error> {
        let location = redirect
            .header("location")
            .next()
            .ok_or_else(|| Error::Failed(format!("no redirect from /authorize: {}", redirect.status)))?;
        let code = location
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("code="))
            .ok_or_else(|| Error::Failed(format!("no code in {location}")))?
            .to_owned();
        let body = self
            .form(
                "/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", APP),
                    ("code", &code),
                    ("redirect_uri", REDIRECT_URI),
                    ("code_verifier", verifier),
                ],
                None,
            )
            .await?;
        text(&body, "refresh_token")
    }
}

/// A PKCE verifier and the `/authorize` request for it.
fn authorize_target() -> (String, String) {
    let verifier = format!("{}{}", random_hex(), random_hex());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    let target = format!(
        "/authorize?{}",
        encode_form(&[
            ("response_type", "code"),
            ("client_id", APP),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "openid offline_access"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", "bench"),
        ])
    );
    (verifier, target)
}

/// The value of the hidden input `name` of a page.
fn hidden(html: &str, name: &str) -> Result<String, Error> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .map(|at| at + marker.len())
        .ok_or_else(|| Error::Failed(format!("no {name} on the sign-in page")))?;
    let end = html[start..]
        .find('"')
        .ok_or_else(|| Error::Failed(format!("no {name} on the sign-in page")))?;
    Ok(html[start..start + end].replace("&amp;", "&"))
}

fn encode_form(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_figure_is_measured_against_a_real_server() {
        let bench = TokensBench {
            window: Duration::from_secs(1),
            concurrency: 2,
            datastore: None,
        };
        let mut figures = Vec::new();
        run(bench, |figure| figures.push(figure)).await.unwrap();
        let names: Vec<String> = figures
            .iter()
            .map(|figure| match figure {
                Figure::Requests { name, samples, .. } | Figure::Calls { name, samples } => {
                    assert!(!samples.is_empty(), "{name}: nothing measured");
                    name.clone()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names.len(), 5, "{names:?}");
    }
}
