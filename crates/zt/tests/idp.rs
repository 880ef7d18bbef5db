//! zt server's OpenID Provider, end to end: a real `zt server --idp` per test
//! on loopback, real TLS (its certificate from the trust domain's CA, which the
//! clients here trust and nothing else), people and clients made with the real
//! `zt user` and `zt client` commands.
//!
//! Clients no one here wrote drive it (npm `openid-client`, Python `authlib`,
//! PyJWT; skipped loudly without them, failed under `ZT_REQUIRE_INTEROP=1`),
//! and the attack tests of issue 17 speak raw HTTP/1.1 over rustls, asserting
//! the exact OAuth error codes and that nothing was issued.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::*;
use zt_testkit::describe;

const REDIRECT: &str = "https://app.example/cb";
const PASSWORD: &str = "correct horse battery";

/// A `zt server` with its OpenID Provider, and what a client needs to reach it.
struct Idp {
    server: ServerProcess,
    addr: SocketAddr,
    issuer: String,
    /// The trust bundle (PEM): the CA of the provider's TLS certificate.
    ca: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    dir: tempfile::TempDir,
}

/// An HTTP answer.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The query parameters of the `Location` of a redirect.
    fn redirect_params(&self) -> Vec<(String, String)> {
        assert_eq!(self.status, 303, "not a redirect: {}", self.body);
        let location = self.header("location").unwrap();
        query_params(location.split_once('?').map_or("", |(_, q)| q))
    }

    /// An OAuth error response: the status and the `error` code.
    fn oauth_error(&self) -> (u16, String) {
        let body = self.json();
        assert!(body.get("access_token").is_none(), "{body}");
        assert!(body.get("refresh_token").is_none(), "{body}");
        (self.status, body["error"].as_str().unwrap_or_default().to_owned())
    }

    /// An error page shown to the person: HTML, no redirect.
    fn assert_error_page(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(self.header("location").is_none(), "{what}: redirected");
        assert!(
            self.header("content-type")
                .unwrap_or_default()
                .starts_with("text/html"),
            "{what}: {:?}",
            self.headers
        );
    }
}

/// `name=value` pairs of a query string, percent-decoded.
fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(n), decode(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `(verifier, S256 challenge)`.
fn pkce() -> (String, String) {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = sha256_b64(verifier.as_bytes());
    (verifier, challenge)
}

fn sha256_b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// The claims (or header, `part` 0) of a compact JWS, unverified.
fn jwt_part(token: &str, part: usize) -> Value {
    let text = token.split('.').nth(part).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).unwrap()).unwrap()
}

/// A client certificate and key (PEM files), for mTLS.
struct ClientCert {
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: PathBuf,
}

impl ClientCert {
    fn load(dir: &Path) -> Self {
        let chain =
            zt_identity::x509::certificates_from_pem(&std::fs::read(dir.join("svid.pem")).unwrap()).unwrap();
        Self {
            chain,
            key: dir.join("key.pem"),
        }
    }

    fn thumbprint(&self) -> String {
        sha256_b64(self.chain[0].as_ref())
    }
}

impl Idp {
    /// `zt server --idp … --idp-passwords EXTRA`; returns once the provider accepts connections.
    fn start(extra: &[&str]) -> Self {
        Self::start_on(None, extra)
    }

    /// The same on `datastore` (a PostgreSQL URL) when given.
    fn start_on(datastore: Option<&str>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let idp = addr.to_string();
        let mut args = vec!["--idp", idp.as_str(), "--idp-passwords"];
        args.extend_from_slice(extra);
        let mut server = ServerProcess::spawn_with(&data, datastore, &args);
        server.wait_ready();
        eventually("the OpenID Provider accepts connections", || {
            TcpStream::connect(addr).ok()
        });
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ok(&server, &["bundle", "show", "--format", "pem"])).unwrap();
        let tls = client_tls(&ca, None);
        Self {
            server,
            addr,
            issuer: format!("https://localhost:{}", addr.port()),
            ca,
            tls,
            dir,
        }
    }

    /// A user with the password [`PASSWORD`].
    fn user(&self, name: &str) {
        ok(
            &self.server,
            &["user", "add", name, "--email", &format!("{name}@example.org")],
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_zt"))
            .args(["user", "password", name, "--socket"])
            .arg(self.server.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "zt user password: {}", describe(&out));
    }

    /// A confidential client redirecting to [`REDIRECT`]; its secret.
    fn client(&self, id: &str, extra: &[&str]) -> String {
        let mut args = vec!["client", "add", id, "--redirect-uri", REDIRECT, "--secret"];
        args.extend_from_slice(extra);
        args.extend(["--output", "json"]);
        let created: Value = serde_json::from_str(&ok(&self.server, &args)).unwrap();
        created["secret"].as_str().unwrap().to_owned()
    }

    /// One HTTP/1.1 exchange over TLS (with a client certificate if `cert`).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        cert: Option<&ClientCert>,
    ) -> Reply {
        let tls = match cert {
            Some(cert) => client_tls(&self.ca, Some(cert)),
            None => self.tls.clone(),
        };
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(tls, name).unwrap();
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
        let content_type = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/x-www-form-urlencoded\r\n".to_owned()
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\n{content_type}{extra}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr.port(),
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof && !answer.is_empty() => break,
                Err(e) => panic!("{method} {path}: {e}"),
            }
        }
        parse_reply(&answer)
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers, "", None)
    }

    /// `POST /token` authenticated with `client_secret_basic`.
    fn token(&self, client: (&str, &str), pairs: &[(&str, &str)]) -> Reply {
        self.token_with(client, pairs, None)
    }

    fn token_with(
        &self,
        (id, secret): (&str, &str),
        pairs: &[(&str, &str)],
        cert: Option<&ClientCert>,
    ) -> Reply {
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
        );
        self.request("POST", "/token", &[("Authorization", &basic)], &form(pairs), cert)
    }

    /// `POST /introspect` by the client: `active`.
    fn active(&self, client: (&str, &str), token: &str) -> bool {
        let basic = format!("Basic {}", STANDARD.encode(format!("{}:{}", client.0, client.1)));
        let reply = self.request(
            "POST",
            "/introspect",
            &[("Authorization", &basic)],
            &form(&[("token", token)]),
            None,
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["active"].as_bool().unwrap()
    }

    /// `GET /userinfo` with a bearer token.
    fn userinfo(&self, token: &str, cert: Option<&ClientCert>) -> Reply {
        self.request(
            "GET",
            "/userinfo",
            &[("Authorization", &format!("Bearer {token}"))],
            "",
            cert,
        )
    }

    /// The path and query of an authorization request.
    fn authorize_path(&self, client: &str, challenge: &str, extra: &[(&str, &str)]) -> String {
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", client),
            ("redirect_uri", REDIRECT),
            ("scope", "openid profile offline_access"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("state", "st-1"),
            ("nonce", "n-1"),
        ];
        for (name, value) in extra {
            pairs.retain(|(n, _)| n != name);
            if !value.is_empty() {
                pairs.push((name, value));
            }
        }
        format!("/authorize?{}", form(&pairs))
    }

    /// The sign-in page of `path`: its `request` and `csrf` fields and the cookie it set.
    fn sign_in_page(&self, path: &str) -> SignInPage {
        let page = self.get(path, &[]);
        assert_eq!(page.status, 200, "{}", page.body);
        let field = |name: &str| {
            let marker = format!("name=\"{name}\" value=\"");
            let start = page.body.find(&marker).unwrap() + marker.len();
            let end = start + page.body[start..].find('"').unwrap();
            page.body[start..end].to_owned()
        };
        let cookie = page.header("set-cookie").unwrap();
        assert!(cookie.starts_with("__Host-zt-signin="), "{cookie}");
        for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        assert!(!cookie.contains("Domain"), "{cookie}");
        SignInPage {
            request: field("request"),
            csrf: field("csrf"),
            cookie: cookie.split(';').next().unwrap().to_owned(),
        }
    }

    /// Posts the password form of `page`.
    fn post_password(
        &self,
        page: &SignInPage,
        user: &str,
        password: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let body = form(&[
            ("request", &page.request),
            ("csrf", &page.csrf),
            ("username", user),
            ("password", password),
        ]);
        self.request("POST", "/signin/password", headers, &body, None)
    }

    fn origin(&self) -> String {
        self.issuer.clone()
    }

    /// Signs `user` in for `client`; the code and the PKCE verifier.
    fn code(&self, client: &str, user: &str) -> (String, String) {
        let (verifier, challenge) = pkce();
        let page = self.sign_in_page(&self.authorize_path(client, &challenge, &[]));
        let origin = self.origin();
        let reply = self.post_password(
            &page,
            user,
            PASSWORD,
            &[("Cookie", &page.cookie), ("Origin", &origin)],
        );
        let params = reply.redirect_params();
        assert!(reply.header("location").unwrap().starts_with(REDIRECT));
        assert_eq!(param(&params, "state"), Some("st-1"));
        assert_eq!(param(&params, "iss"), Some(self.issuer.as_str()));
        (param(&params, "code").unwrap().to_owned(), verifier)
    }

    /// The code flow to the end: the token response.
    fn tokens(&self, client: (&str, &str), user: &str) -> Value {
        self.tokens_with(client, user, None)
    }

    fn tokens_with(&self, client: (&str, &str), user: &str, cert: Option<&ClientCert>) -> Value {
        let (code, verifier) = self.code(client.0, user);
        let reply = self.token_with(client, &code_grant(&code, &verifier), cert);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        reply.json()
    }

    fn refresh(&self, client: (&str, &str), token: &str) -> Reply {
        self.token(
            client,
            &[("grant_type", "refresh_token"), ("refresh_token", token)],
        )
    }

    /// `zt x509 mint` for `path` in the trust domain, written to a directory.
    fn mint(&self, path: &str) -> ClientCert {
        let out = self.dir.path().join(path);
        std::fs::create_dir_all(&out).unwrap();
        let id = format!("spiffe://{TRUST_DOMAIN}/{path}");
        let args = [
            "x509",
            "mint",
            "--spiffe-id",
            &id,
            "--write",
            out.to_str().unwrap(),
        ];
        ok(&self.server, &args);
        ClientCert::load(&out)
    }

    fn jwks(&self) -> Vec<Value> {
        let reply = self.get("/jwks", &[]);
        assert_eq!(reply.status, 200);
        reply.json()["keys"].as_array().unwrap().clone()
    }
}

fn code_grant<'a>(code: &'a str, verifier: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ]
}

struct SignInPage {
    request: String,
    csrf: String,
    cookie: String,
}

fn client_tls(ca: &Path, cert: Option<&ClientCert>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in zt_identity::x509::certificates_from_pem(&std::fs::read(ca).unwrap()).unwrap() {
        roots.add(der).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = match cert {
        Some(cert) => {
            let key = zt_identity::x509::private_key_from_pem(&std::fs::read(&cert.key).unwrap()).unwrap();
            builder.with_client_auth_cert(cert.chain.clone(), key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

fn parse_reply(answer: &[u8]) -> Reply {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut body = answer[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
        body = decoded;
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Signs `header.claims` with a fresh P-256 key (not the provider's).
fn forge_es256(header: &Value, claims: &Value) -> String {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let input = signing_input(header, claims);
    let sig = key
        .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn forge_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let input = signing_input(header, claims);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// Runs an interop program; its stdout as JSON.
fn run_json(mut command: Command, what: &str) -> Value {
    let out = command.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{what}: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {}", describe(&out)))
}

/// What the RP scripts are given.
fn rp_args(idp: &Idp, client: &str, secret: &str, user: &str) -> String {
    json!({
        "issuer": idp.issuer,
        "client_id": client,
        "client_secret": secret,
        "ca": idp.ca,
        "redirect_uri": REDIRECT,
        "username": user,
        "password": PASSWORD,
    })
    .to_string()
}

// ---------------------------------------------------------------------------
// Clients no one here wrote.

#[test]
fn openid_client_runs_code_flow_refresh_reuse_detection_introspection_and_revocation() {
    let Some(node) = zt_testkit::node("openid_client_runs_code_flow") else {
        return;
    };
    // No grace: the reuse below comes within a second of the rotation.
    let idp = Idp::start(&["--idp-refresh-grace", "0s"]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let mut command = Command::new(node);
    command
        .arg(zt_testkit::interop_dir().join("oidc_rp.mjs"))
        .arg(rp_args(&idp, "web", &secret, "alice"));
    let summary = run_json(command, "oidc_rp.mjs");
    assert_eq!(summary["issuer"], idp.issuer.as_str(), "{summary}");
    assert_eq!(summary["id_token"]["iss"], idp.issuer.as_str(), "{summary}");
    assert_eq!(summary["id_token"]["aud"], "web", "{summary}");
    assert_eq!(summary["id_token"]["nonce_matches"], true, "{summary}");
    assert_eq!(summary["id_token"]["amr"], json!(["pwd"]), "{summary}");
    assert_eq!(summary["token_type"], "bearer", "{summary}");
    assert_eq!(summary["expires_in"], 900, "{summary}");
    assert_eq!(summary["access_token_typ"], "at+jwt", "{summary}");
    assert_eq!(summary["rotated"], true, "{summary}");
    assert_eq!(
        summary["introspection"],
        json!({ "active": true, "sub": true, "client_id": "web" }),
        "{summary}"
    );
    assert_eq!(summary["reuse"], "invalid_grant", "{summary}");
    assert_eq!(summary["after_reuse"], "invalid_grant", "{summary}");
    assert_eq!(summary["refresh_introspection_after_reuse"], false, "{summary}");
    assert_eq!(summary["after_access_revocation"], false, "{summary}");
    assert_eq!(summary["second_flow_signed_in_again"], false, "{summary}");
    assert_eq!(summary["before_refresh_revocation"], true, "{summary}");
    assert_eq!(summary["after_refresh_revocation"], false, "{summary}");
    assert_eq!(summary["refresh_after_revocation"], "invalid_grant", "{summary}");
}

#[test]
fn authlib_runs_code_flow_refresh_reuse_detection_introspection_and_revocation() {
    let Some(python) = zt_testkit::python("authlib_runs_code_flow") else {
        return;
    };
    let idp = Idp::start(&["--idp-refresh-grace", "0s"]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let mut command = Command::new(python);
    command
        .arg(zt_testkit::interop_dir().join("authlib_client.py"))
        .arg(rp_args(&idp, "web", &secret, "alice"));
    let summary = run_json(command, "authlib_client.py");
    assert_eq!(
        summary,
        json!({
            "iss_in_callback": true,
            "token_type": "Bearer",
            "has_id_token": true,
            "rotated": true,
            "introspection_active": true,
            "introspection_client_id": "web",
            "reuse": "invalid_grant",
            "after_reuse": "invalid_grant",
            "revocation_status": 200,
            "introspection_after_revocation": false,
        })
    );
}

#[test]
fn pyjwt_verifies_access_tokens_against_the_jwks() {
    let Some(python) = zt_testkit::python("pyjwt_verifies_access_tokens") else {
        return;
    };
    let idp = Idp::start(&[]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let tokens = idp.tokens(("web", &secret), "alice");
    let verify = |token: &str, audience: &str| {
        let mut command = Command::new(&python);
        command
            .arg(zt_testkit::interop_dir().join("pyjwt_verify.py"))
            .arg(
                json!({ "issuer": idp.issuer, "ca": idp.ca, "token": token, "audience": audience })
                    .to_string(),
            );
        command.stdin(Stdio::null()).output().unwrap()
    };
    let out = verify(tokens["access_token"].as_str().unwrap(), "web");
    assert!(out.status.success(), "{}", describe(&out));
    let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
    let claims = &verified["claims"];
    assert_eq!(claims["iss"], idp.issuer.as_str(), "{verified}");
    assert_eq!(claims["aud"], "web");
    assert_eq!(claims["client_id"], "web");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900,
        "the seeds' 15 minutes: {claims}"
    );
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["acr"], "urn:zt:acr:aal1");
    assert_eq!(claims["device_tier"], "unknown");
    assert!(
        verified["algorithms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a != "none" && a != "HS256"),
        "{verified}"
    );
    // The same library refuses what it must: another audience, and the ID
    // token, whose typ is JWT, where an access token is required.
    let out = verify(tokens["access_token"].as_str().unwrap(), "another-api");
    assert!(
        !out.status.success(),
        "another audience accepted: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("InvalidAudienceError"),
        "{}",
        describe(&out)
    );
    let out = verify(tokens["id_token"].as_str().unwrap(), "web");
    assert!(!out.status.success(), "an ID token accepted: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not at+jwt"),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------
// Attacks.

#[test]
fn a_reused_refresh_token_revokes_its_family_after_the_bounded_grace() {
    // The default grace (10s) lets a lost response be retried, at most twice.
    let idp = Idp::start(&[]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let client = ("web", secret.as_str());
    let tokens = idp.tokens(client, "alice");
    let first = tokens["refresh_token"].as_str().unwrap();
    let legit = idp.refresh(client, first);
    assert_eq!(legit.status, 200, "{}", legit.body);
    let legit_access = legit.json()["access_token"].as_str().unwrap().to_owned();
    let legit = legit.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(legit, first, "rotated");
    for retry in 0..2 {
        let reply = idp.refresh(client, first);
        assert_eq!(
            reply.status, 200,
            "retry {retry} inside the grace: {}",
            reply.body
        );
    }
    // The third presentation of the spent token is theft: the family goes.
    assert_eq!(
        idp.refresh(client, first).oauth_error(),
        (400, "invalid_grant".into())
    );
    assert_eq!(
        idp.refresh(client, &legit).oauth_error(),
        (400, "invalid_grant".into())
    );
    assert!(!idp.active(client, &legit));
    // And the access tokens the family issued.
    assert!(!idp.active(client, &legit_access));
    assert_eq!(idp.userinfo(&legit_access, None).status, 401);
    // Another client cannot use (or probe) alice's token either.
    let other = idp.client("other", &[]);
    let reply = idp.refresh(("other", &other), &legit);
    assert_eq!(reply.oauth_error(), (400, "invalid_grant".into()));
}

#[test]
fn without_grace_the_first_reuse_revokes_the_family() {
    let idp = Idp::start(&["--idp-refresh-grace", "0s"]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let client = ("web", secret.as_str());
    let tokens = idp.tokens(client, "alice");
    let first = tokens["refresh_token"].as_str().unwrap();
    let legit = idp.refresh(client, first).json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        idp.refresh(client, first).oauth_error(),
        (400, "invalid_grant".into())
    );
    assert_eq!(
        idp.refresh(client, &legit).oauth_error(),
        (400, "invalid_grant".into())
    );
}

#[test]
fn a_replayed_code_is_refused_and_revokes_the_refresh_tokens_it_issued() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let client = ("web", secret.as_str());
    let (code, verifier) = idp.code("web", "alice");
    let first = idp.token(client, &code_grant(&code, &verifier));
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    let refresh = first["refresh_token"].as_str().unwrap();
    let access = first["access_token"].as_str().unwrap();
    assert!(idp.active(client, access));
    let replay = idp.token(client, &code_grant(&code, &verifier));
    assert_eq!(replay.oauth_error(), (400, "invalid_grant".into()));
    assert_eq!(
        idp.refresh(client, refresh).oauth_error(),
        (400, "invalid_grant".into())
    );
    assert!(!idp.active(client, refresh));
    // The access token of the first redemption goes too (RFC 9700 §4.2.4).
    assert!(!idp.active(client, access));
    assert_eq!(idp.userinfo(access, None).status, 401);
    // A code for another client's redirect, or redeemed by another client, is spent too.
    let other = idp.client("other", &[]);
    let (code, verifier) = idp.code("web", "alice");
    let stolen = idp.token(("other", &other), &code_grant(&code, &verifier));
    assert_eq!(stolen.oauth_error(), (400, "invalid_grant".into()));
    let late = idp.token(client, &code_grant(&code, &verifier));
    assert_eq!(late.oauth_error(), (400, "invalid_grant".into()));
}

#[test]
fn pkce_is_required_and_s256_only() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let client = ("web", secret.as_str());
    let (verifier, challenge) = pkce();
    // Refused at /authorize, back to the client with state and iss (RFC 9207).
    for (what, extra) in [
        (
            "plain",
            vec![
                ("code_challenge", verifier.as_str()),
                ("code_challenge_method", "plain"),
            ],
        ),
        ("no challenge", vec![("code_challenge", "")]),
        ("no method", vec![("code_challenge_method", "")]),
    ] {
        let reply = idp.get(&idp.authorize_path("web", &challenge, &extra), &[]);
        let params = reply.redirect_params();
        assert!(reply.header("location").unwrap().starts_with(REDIRECT), "{what}");
        assert_eq!(
            param(&params, "error"),
            Some("invalid_request"),
            "{what}: {params:?}"
        );
        assert_eq!(param(&params, "state"), Some("st-1"), "{what}");
        assert_eq!(param(&params, "iss"), Some(idp.issuer.as_str()), "{what}");
        assert_eq!(param(&params, "code"), None, "{what}");
    }
    // Refused at /token: no verifier, then a wrong one (which spends the code).
    let (code, verifier) = idp.code("web", "alice");
    let missing = idp.token(
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ],
    );
    assert_eq!(missing.oauth_error(), (400, "invalid_grant".into()));
    let (wrong, _) = pkce();
    let reply = idp.token(client, &code_grant(&code, &wrong));
    assert_eq!(reply.oauth_error(), (400, "invalid_grant".into()));
    assert!(
        reply.body.contains("code_verifier does not match"),
        "{}",
        reply.body
    );
    let reply = idp.token(client, &code_grant(&code, &verifier));
    assert_eq!(
        reply.oauth_error(),
        (400, "invalid_grant".into()),
        "the code is spent"
    );
    // The verifier as the challenge (a "plain" downgrade at the token endpoint).
    let (code, _) = idp.code("web", "alice");
    let reply = idp.token(client, &code_grant(&code, &challenge));
    assert_eq!(reply.oauth_error(), (400, "invalid_grant".into()));
}

#[test]
fn redirect_uri_variants_get_an_error_page_never_a_redirect() {
    let idp = Idp::start(&[]);
    idp.client("web", &[]);
    let (_, challenge) = pkce();
    for variant in [
        "https://app.example/cb/",
        "https://app.example/cb/extra",
        "https://app.example:8443/cb",
        "https://app.example:443/cb",
        "https://user@app.example/cb",
        "https://app.example@evil.example/cb",
        "https://APP.example/cb",
        "https://app.example/CB",
        "https://app.example/cb?x=1",
        "https://app.example/cb#f",
        "http://app.example/cb",
        "https://app.example.evil.example/cb",
        "https://app.example/cb%2F..",
    ] {
        let reply = idp.get(
            &idp.authorize_path("web", &challenge, &[("redirect_uri", variant)]),
            &[],
        );
        reply.assert_error_page(400, variant);
        assert!(
            reply.body.contains("redirect_uri is not registered"),
            "{variant}: {}",
            reply.body
        );
    }
    let reply = idp.get(
        &idp.authorize_path("web", &challenge, &[("redirect_uri", "")]),
        &[],
    );
    reply.assert_error_page(400, "no redirect_uri");
    let reply = idp.get(&idp.authorize_path("nobody", &challenge, &[]), &[]);
    reply.assert_error_page(400, "unknown client");
    // The registered URI itself gets the sign-in page.
    assert_eq!(
        idp.get(&idp.authorize_path("web", &challenge, &[]), &[]).status,
        200
    );
}

#[test]
fn repeated_parameters_are_refused() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let (_, challenge) = pkce();
    let path = idp.authorize_path("web", &challenge, &[]);
    // A second redirect_uri: which one would be checked and which used?
    let twice = format!("{path}&redirect_uri={}", encode("https://evil.example/cb"));
    idp.get(&twice, &[]).assert_error_page(400, "redirect_uri twice");
    let twice = format!("{path}&client_id=web");
    idp.get(&twice, &[]).assert_error_page(400, "client_id twice");
    let (code, verifier) = idp.code("web", "alice");
    let mut pairs = code_grant(&code, &verifier).to_vec();
    pairs.push(("code", "another"));
    let reply = idp.token(("web", &secret), &pairs);
    assert_eq!(reply.oauth_error(), (400, "invalid_request".into()));
    // Nothing was spent: the code still works once.
    let reply = idp.token(("web", &secret), &code_grant(&code, &verifier));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn forged_access_tokens_are_refused_at_userinfo_and_introspection() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let client = ("web", secret.as_str());
    let tokens = idp.tokens(client, "alice");
    let genuine = tokens["access_token"].as_str().unwrap();
    assert_eq!(idp.userinfo(genuine, None).status, 200);
    assert!(idp.active(client, genuine));
    let header = jwt_part(genuine, 0);
    let claims = jwt_part(genuine, 1);
    let kid = header["kid"].as_str().unwrap();
    let jwks = idp.jwks();
    let jwk = jwks.iter().find(|k| k["kid"] == kid).unwrap();
    let now = now();
    let with = |changes: Value| {
        let mut c = claims.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let mut forged: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.",
                signing_input(&json!({ "alg": "none", "typ": "at+jwt", "kid": kid }), &claims)
            ),
        ),
        (
            "HS256 keyed with the JWK",
            forge_hs256(
                &json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid }),
                &claims,
                jwk.to_string().as_bytes(),
            ),
        ),
        (
            "typ JWT (our own ID token)",
            tokens["id_token"].as_str().unwrap().to_owned(),
        ),
        (
            "typ JWT, forged",
            forge_es256(&json!({ "alg": "ES256", "typ": "JWT", "kid": kid }), &claims),
        ),
        (
            "no typ",
            forge_es256(&json!({ "alg": "ES256", "kid": kid }), &claims),
        ),
        (
            "a kid not ours",
            forge_es256(
                &json!({ "alg": "ES256", "typ": "at+jwt", "kid": "not-ours" }),
                &claims,
            ),
        ),
        (
            "our kid, another key",
            forge_es256(&json!({ "alg": "ES256", "typ": "at+jwt", "kid": kid }), &claims),
        ),
        (
            "not yet valid",
            forge_es256(
                &json!({ "alg": "ES256", "typ": "at+jwt", "kid": kid }),
                &with(json!({ "nbf": now + 600, "iat": now, "exp": now + 900 })),
            ),
        ),
        (
            "an embedded key",
            forge_es256(
                &json!({ "alg": "ES256", "typ": "at+jwt", "kid": kid, "jwk": jwk }),
                &claims,
            ),
        ),
        ("the genuine token's signature on other claims", {
            let sig = genuine.rsplit('.').next().unwrap();
            let input = signing_input(&header, &with(json!({ "sub": "someone-else" })));
            format!("{input}.{sig}")
        }),
    ];
    // HS256 keyed with the public key as a verifier might hold it: the raw
    // coordinate (or modulus) bytes, and the whole JWK Set document.
    let hs256 = json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid });
    for field in ["x", "n"] {
        if let Some(raw) = jwk.get(field).and_then(Value::as_str) {
            let bytes = URL_SAFE_NO_PAD.decode(raw).unwrap();
            forged.push((
                "HS256 keyed with the raw public key",
                forge_hs256(&hs256, &claims, &bytes),
            ));
        }
    }
    let document = idp.get("/jwks", &[]).body;
    forged.push((
        "HS256 keyed with the JWKS document",
        forge_hs256(&hs256, &claims, document.as_bytes()),
    ));
    for (what, token) in &forged {
        let reply = idp.userinfo(token, None);
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_token", "{what}");
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .starts_with("Bearer error=\"invalid_token\""),
            "{what}"
        );
        assert!(!idp.active(client, token), "{what}: introspection said active");
    }
    assert_eq!(
        idp.userinfo(genuine, None).status,
        200,
        "the genuine token still works"
    );
}

#[test]
fn an_expired_access_token_is_refused() {
    let idp = Idp::start(&["--idp-access-ttl", "1s"]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let client = ("web", secret.as_str());
    let tokens = idp.tokens(client, "alice");
    let token = tokens["access_token"].as_str().unwrap();
    let claims = jwt_part(token, 1);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        1
    );
    // Real time must pass for a token to expire: poll until it has (a
    // second or two), then check every endpoint agrees.
    let start = std::time::Instant::now();
    while now() <= claims["exp"].as_u64().unwrap() {
        assert!(start.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(100));
    }
    let reply = idp.userinfo(token, None);
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply.body.contains("expired"), "{}", reply.body);
    assert!(!idp.active(client, token));
    // The refresh token outlives it, as it should.
    let reply = idp.refresh(client, tokens["refresh_token"].as_str().unwrap());
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn disabling_a_user_or_revoking_a_session_ends_its_tokens_at_once() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    idp.user("bob");
    let secret = idp.client("web", &[]);
    let client = ("web", secret.as_str());
    for (user, end) in [
        ("alice", vec!["user", "disable", "alice"]),
        ("bob", vec!["session", "revoke", "--user", "bob"]),
    ] {
        let tokens = idp.tokens(client, user);
        let access = tokens["access_token"].as_str().unwrap();
        let refresh = tokens["refresh_token"].as_str().unwrap();
        assert!(idp.active(client, access), "{user}");
        assert!(idp.active(client, refresh), "{user}");
        assert_eq!(idp.userinfo(access, None).status, 200);
        ok(&idp.server, &end);
        assert!(!idp.active(client, access), "{end:?}: the access token");
        assert!(!idp.active(client, refresh), "{end:?}: the refresh token");
        assert_eq!(idp.userinfo(access, None).status, 401, "{end:?}");
        assert_eq!(
            idp.refresh(client, refresh).oauth_error(),
            (400, "invalid_grant".into()),
            "{end:?}"
        );
    }
    // A disabled user cannot sign in again: the same answer as a wrong password.
    let (_, challenge) = pkce();
    let page = idp.sign_in_page(&idp.authorize_path("web", &challenge, &[]));
    let origin = idp.origin();
    let reply = idp.post_password(
        &page,
        "alice",
        PASSWORD,
        &[("Cookie", &page.cookie), ("Origin", &origin)],
    );
    assert_eq!(reply.status, 401, "{}", reply.body);
    // What the admins did is in the authentication events' log, by whom.
    let log = idp.server.data_dir.join("idp-decisions.log");
    let records = audit_query(&[log.to_str().unwrap()]);
    for (event, user) in [("idp/user_disabled", "alice"), ("idp/session_revoked", "bob")] {
        let record = records
            .iter()
            .find(|r| r["query"] == event)
            .unwrap_or_else(|| panic!("no {event} in the log"));
        assert_eq!(record["input"]["user"], user, "{record}");
        assert_eq!(record["input"]["by"], "admin", "{record}");
    }
}

#[test]
fn a_certificate_bound_token_is_refused_without_its_certificate() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    let web = idp.client("web", &[]);
    let svc = idp.client("svc", &["--grant", "client_credentials"]);
    let cert = idp.mint("svc");
    let other = idp.mint("other");

    // client_credentials over mTLS: the token carries the certificate's thumbprint.
    let reply = idp.token_with(
        ("svc", &svc),
        &[("grant_type", "client_credentials")],
        Some(&cert),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let bound = reply.json()["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_part(&bound, 1);
    assert_eq!(claims["cnf"]["x5t#S256"], cert.thumbprint().as_str(), "{claims}");
    assert_eq!(claims["sub"], "svc");
    // Introspection shows the binding for the resource server to check.
    let basic = format!("Basic {}", STANDARD.encode(format!("svc:{svc}")));
    let introspected = idp
        .request(
            "POST",
            "/introspect",
            &[("Authorization", &basic)],
            &form(&[("token", &bound)]),
            None,
        )
        .json();
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["cnf"]["x5t#S256"], cert.thumbprint().as_str());
    // At userinfo: without the certificate, or with another, refused for the
    // binding; with it, refused because no person is behind a client's token.
    for (what, presented) in [("no certificate", None), ("another certificate", Some(&other))] {
        let reply = idp.userinfo(&bound, presented);
        assert_eq!(reply.status, 401, "{what}");
        assert!(
            reply.body.contains("bound to a certificate"),
            "{what}: {}",
            reply.body
        );
    }
    let reply = idp.userinfo(&bound, Some(&cert));
    assert_eq!(reply.status, 401);
    assert!(reply.body.contains("issued to a client"), "{}", reply.body);
    // Without mTLS, no cnf.
    let reply = idp.token(("svc", &svc), &[("grant_type", "client_credentials")]);
    assert!(
        jwt_part(reply.json()["access_token"].as_str().unwrap(), 1)
            .get("cnf")
            .is_none()
    );

    // A person's token bound the same way: userinfo only with the certificate.
    let tokens = idp.tokens_with(("web", &web), "alice", Some(&cert));
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(jwt_part(access, 1)["cnf"]["x5t#S256"], cert.thumbprint().as_str());
    assert_eq!(idp.userinfo(access, Some(&cert)).status, 200);
    for (what, presented) in [("no certificate", None), ("another certificate", Some(&other))] {
        let reply = idp.userinfo(access, presented);
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        assert!(
            reply.body.contains("bound to a certificate"),
            "{what}: {}",
            reply.body
        );
    }
}

#[test]
fn sign_in_forms_are_protected_against_csrf() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    idp.client("web", &[]);
    let (_, challenge) = pkce();
    let page = idp.sign_in_page(&idp.authorize_path("web", &challenge, &[]));
    let origin = idp.origin();
    let wrong = SignInPage {
        request: page.request.clone(),
        csrf: "A".repeat(43),
        cookie: page.cookie.clone(),
    };
    let forged_cookie = format!("__Host-zt-signin={}", "A".repeat(43));
    let both_cookies = format!("{}; {forged_cookie}", page.cookie);
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let attempts: [(&str, &SignInPage, Headers<'_>); 5] = [
        ("no cookie", &page, vec![("Origin", &origin)]),
        (
            "a wrong csrf",
            &wrong,
            vec![("Cookie", &page.cookie), ("Origin", &origin)],
        ),
        (
            "a cookie and csrf of the attacker's",
            &wrong,
            vec![("Cookie", &forged_cookie), ("Origin", &origin)],
        ),
        (
            "a foreign origin",
            &page,
            vec![("Cookie", &page.cookie), ("Origin", "https://evil.example")],
        ),
        (
            "two cookies of the name",
            &page,
            vec![("Cookie", &both_cookies), ("Origin", &origin)],
        ),
    ];
    for (what, form, headers) in &attempts {
        let reply = idp.post_password(form, "alice", PASSWORD, headers);
        reply.assert_error_page(403, what);
        assert!(reply.header("set-cookie").is_none(), "{what}: a cookie was set");
    }
    let sessions = ok(&idp.server, &["session", "list", "--output", "json"]);
    assert!(!sessions.contains("\"id\""), "a session was opened: {sessions}");
    // The genuine form still works: the refusals did not spend it.
    let reply = idp.post_password(
        &page,
        "alice",
        PASSWORD,
        &[("Cookie", &page.cookie), ("Origin", &origin)],
    );
    assert_eq!(reply.status, 303, "{}", reply.body);
    let session = reply
        .headers
        .iter()
        .find(|(n, v)| n.eq_ignore_ascii_case("set-cookie") && v.starts_with("__Host-zt-session="))
        .unwrap();
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.1.contains(attribute), "{}", session.1);
    }
}

#[test]
fn failed_sign_ins_are_rate_limited_per_user_without_telling_who_exists() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    idp.client("web", &[]);
    let (_, challenge) = pkce();
    let page = idp.sign_in_page(&idp.authorize_path("web", &challenge, &[]));
    let origin = idp.origin();
    let headers = [("Cookie", page.cookie.as_str()), ("Origin", origin.as_str())];
    // No enumeration: an unknown name and a wrong password get the same answer.
    let unknown = idp.post_password(&page, "mallory", "wrong", &headers);
    let wrong = idp.post_password(&page, "alice", "wrong", &headers);
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(wrong.body, unknown.body, "the pages differ");
    // The burst is 5 failures per user: 4 more, then 429 even for the right password.
    for _ in 0..4 {
        assert_eq!(idp.post_password(&page, "alice", "wrong", &headers).status, 401);
    }
    let limited = idp.post_password(&page, "alice", "wrong", &headers);
    assert_eq!(limited.status, 429, "{}", limited.body);
    let right = idp.post_password(&page, "alice", PASSWORD, &headers);
    assert_eq!(
        right.status, 429,
        "the right password inside the limit: {}",
        right.body
    );
    assert!(right.header("location").is_none());
    // The limit is per user name (case-insensitive), not for everyone.
    assert_eq!(idp.post_password(&page, "ALICE", PASSWORD, &headers).status, 429);
    idp.user("bob");
    assert_eq!(idp.post_password(&page, "bob", PASSWORD, &headers).status, 303);
}

#[test]
fn authentication_events_are_logged_hash_chained_and_counted() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    let secret = idp.client("web", &[]);
    let client = ("web", secret.as_str());
    let tokens = idp.tokens(client, "alice");
    let first = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(idp.refresh(client, first).status, 200);
    for _ in 0..2 {
        assert_eq!(idp.refresh(client, first).status, 200, "inside the grace");
    }
    assert_eq!(
        idp.refresh(client, first).oauth_error(),
        (400, "invalid_grant".into())
    );

    let log = idp.server.data_dir.join("idp-decisions.log");
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "zt audit verify: {}", describe(&out));
    let records = audit_query(&[log.to_str().unwrap()]);
    let queries: Vec<&str> = records.iter().filter_map(|r| r["query"].as_str()).collect();
    for wanted in ["idp/sign_in", "idp/authorize", "idp/token", "idp/refresh_reuse"] {
        assert!(queries.contains(&wanted), "{wanted} not in {queries:?}");
    }
    let reuse = records
        .iter()
        .find(|r| r["query"] == "idp/refresh_reuse")
        .unwrap();
    assert_eq!(reuse["decision"], "DENY", "{reuse}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(first), "a refresh token in the log");
    assert!(!text.contains(&secret), "a client secret in the log");
    assert!(!text.contains(PASSWORD), "a password in the log");

    for (labels, at_least) in [
        ("event=\"sign_in\",result=\"success\"", 1.0),
        ("event=\"token\",result=\"success\"", 4.0),
        ("event=\"token\",result=\"invalid_grant\"", 1.0),
        ("event=\"refresh_reuse\",result=\"invalid_grant\"", 1.0),
    ] {
        let value = sample(
            idp.server.http,
            &format!("zt_server_idp_events_total{{{labels}}}"),
        );
        assert!(value.is_some_and(|v| v >= at_least), "{labels}: {value:?}");
    }
    let timed = sample(
        idp.server.http,
        "zt_server_idp_sign_in_seconds_count{factor=\"password\"}",
    );
    assert!(timed.is_some_and(|n| n >= 1.0), "sign-ins timed: {timed:?}");
}

#[test]
fn token_introspection_and_revocation_failures_are_rate_limited_per_address() {
    // The address's bucket is shared by the three endpoints: each one in
    // turn, on a server of its own, must drain it and then refuse them all.
    for (endpoint, path) in [
        ("token", "/token"),
        ("introspection", "/introspect"),
        ("revocation", "/revoke"),
    ] {
        let idp = Idp::start(&[]);
        let secret = idp.client("svc", &["--grant", "client_credentials"]);
        let client = ("svc", secret.as_str());
        let token = idp.token(client, &[("grant_type", "client_credentials")]).json();
        let token = token["access_token"].as_str().unwrap();
        let basic = format!("Basic {}", STANDARD.encode(format!("svc:{secret}")));
        let post =
            |path: &str, body: &str| idp.request("POST", path, &[("Authorization", &basic)], body, None);
        // Cheap failures (a repeated parameter, refused before any secret is
        // checked) drain it: the burst is 50.
        let repeated = form(&[("token", "a"), ("token", "b")]);
        let mut failures = 0;
        loop {
            let reply = post(path, &repeated);
            if reply.status == 429 {
                assert_eq!(reply.json()["error"], "rate_limited", "{endpoint}");
                break;
            }
            assert_eq!(reply.oauth_error(), (400, "invalid_request".into()), "{endpoint}");
            failures += 1;
            assert!(failures < 500, "{endpoint}: never limited");
        }
        assert!(failures >= 50, "{endpoint}: limited after {failures}");
        // While it is empty, good requests are refused too, at every endpoint.
        // (It refills with time: a refill between two requests lets a good
        // one through, and the next failure empties it again.)
        let limited = (0..20).any(|_| {
            let answers = [
                idp.token(client, &[("grant_type", "client_credentials")]).status,
                post("/introspect", &form(&[("token", token)])).status,
                post("/revoke", &form(&[("token", "x")])).status,
            ];
            let _ = post(path, &repeated);
            answers == [429, 429, 429]
        });
        assert!(limited, "{endpoint}: good requests went through an empty bucket");
    }
}

// ---------------------------------------------------------------------------
// Back-channel logout (OpenID Connect Back-Channel Logout 1.0).

/// A relying party's back-channel logout endpoint: plain HTTP on loopback,
/// every form it receives handed to the test with the time it came.
struct LogoutReceiver {
    uri: String,
    received: std::sync::mpsc::Receiver<(String, std::time::Instant)>,
}

impl LogoutReceiver {
    fn start(host: &str) -> Self {
        Self::serve(host, None, 200)
    }

    /// Serves HTTPS with `cert` (from the test's zt CA, for `localhost`) if
    /// given, answering every request with `status`.
    fn serve(host: &str, cert: Option<&ClientCert>, status: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = cert.map(|cert| {
            let key = zt_identity::x509::private_key_from_pem(&std::fs::read(&cert.key).unwrap()).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(cert.chain.clone(), key)
            .unwrap();
            Arc::new(config)
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (send, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(tcp) = stream else { return };
                tcp.set_read_timeout(Some(DEADLINE)).unwrap();
                let body = match &tls {
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                        Self::answer(rustls::StreamOwned::new(conn, tcp), status)
                    }
                    None => Self::answer(tcp, status),
                };
                if let Some(body) = body
                    && send.send((body, std::time::Instant::now())).is_err()
                {
                    return;
                }
            }
        });
        Self {
            uri: format!("{scheme}://{host}:{port}/backchannel-logout"),
            received,
        }
    }

    /// Reads one request, answers `status`; the body.
    fn answer(mut stream: impl std::io::Read + std::io::Write, status: u16) -> Option<String> {
        let mut request = Vec::new();
        let mut buf = [0u8; 8192];
        let body = loop {
            let n = stream.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break None;
            }
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).into_owned();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let head = text[..end].to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if request.len() >= end + 4 + length {
                assert!(head.starts_with("post /backchannel-logout http/1.1"), "{head}");
                assert!(
                    head.contains("content-type: application/x-www-form-urlencoded"),
                    "{head}"
                );
                break Some(text[end + 4..end + 4 + length].to_owned());
            }
        };
        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(answer.as_bytes());
        let _ = stream.flush();
        body
    }

    /// The next logout token, within `within`.
    fn token(&self, within: Duration) -> (String, std::time::Instant) {
        let (body, at) = self
            .received
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no logout token at {} within {within:?}", self.uri));
        let pairs = query_params(&body);
        assert_eq!(pairs.len(), 1, "{body}");
        assert_eq!(pairs[0].0, "logout_token", "{body}");
        (pairs[0].1.clone(), at)
    }

    /// Nothing more arrives within `within`.
    fn assert_quiet(&self, within: Duration) {
        if let Ok((body, _)) = self.received.recv_timeout(within) {
            panic!("unexpected logout token at {}: {body}", self.uri);
        }
    }
}

impl Idp {
    /// Checks a logout token as a relying party must (§2.6): with PyJWT
    /// against the JWKS when the interop venv is there, and always its
    /// header and claims here. Returns the claims.
    fn verify_logout_token(&self, token: &str, audience: &str) -> Value {
        let header = jwt_part(token, 0);
        assert_eq!(header["typ"], "logout+jwt", "{header}");
        let kid = header["kid"].as_str().unwrap();
        let key = self
            .jwks()
            .into_iter()
            .find(|k| k["kid"] == kid)
            .unwrap_or_else(|| panic!("kid {kid} is not in the JWKS"));
        assert_eq!(header["alg"], key["alg"], "{header}");
        let claims = jwt_part(token, 1);
        assert_eq!(claims["iss"], self.issuer.as_str(), "{claims}");
        assert_eq!(claims["aud"], audience, "{claims}");
        assert_eq!(
            claims["events"],
            json!({ "http://schemas.openid.net/event/backchannel-logout": {} }),
            "{claims}"
        );
        let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
        assert!(iat <= now() + 1 && exp == iat + 120, "{claims}");
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 32), "{claims}");
        assert!(claims.get("nonce").is_none(), "{claims}");
        if let Some(python) = zt_testkit::python("pyjwt_verifies_logout_tokens") {
            let out = Command::new(&python)
                .arg(zt_testkit::interop_dir().join("pyjwt_verify_logout.py"))
                .arg(
                    json!({ "issuer": self.issuer, "ca": self.ca, "token": token, "audience": audience })
                        .to_string(),
                )
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(out.status.success(), "PyJWT: {}", describe(&out));
            let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(verified["claims"], claims);
            // The same library refuses it for another client.
            let out = Command::new(&python)
                .arg(zt_testkit::interop_dir().join("pyjwt_verify_logout.py"))
                .arg(
                    json!({ "issuer": self.issuer, "ca": self.ca, "token": token, "audience": "another" })
                        .to_string(),
                )
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "another audience accepted: {}",
                describe(&out)
            );
        }
        claims
    }
}

#[test]
fn back_channel_logout_tokens_reach_the_clients_of_a_session_that_ends() {
    let idp = Idp::start(&[]);
    idp.user("alice");
    idp.user("bob");
    let web_rp = LogoutReceiver::start("localhost");
    let app_rp = LogoutReceiver::start("127.0.0.1");
    let web = idp.client(
        "web",
        &[
            "--backchannel-logout-uri",
            &web_rp.uri,
            "--backchannel-logout-session-required",
        ],
    );
    let app = idp.client("app", &["--backchannel-logout-uri", &app_rp.uri]);
    let plain = idp.client("plain", &[]);
    // What the clients registered is shown, and discovery says it is supported.
    let shown: Value =
        serde_json::from_str(&ok(&idp.server, &["client", "show", "web", "--output", "json"])).unwrap();
    assert_eq!(shown["backchannel_logout_uri"], web_rp.uri.as_str(), "{shown}");
    assert_eq!(shown["backchannel_logout_session_required"], true, "{shown}");
    let text = ok(&idp.server, &["client", "list"]);
    assert!(
        text.contains(&format!(
            "Logout URI    : {} (back-channel, sid required)",
            web_rp.uri
        )),
        "{text}"
    );
    let discovery = idp.get("/.well-known/openid-configuration", &[]).json();
    assert_eq!(discovery["backchannel_logout_supported"], true);
    assert_eq!(discovery["backchannel_logout_session_supported"], true);
    // An http URI elsewhere than loopback is refused, naming the flag.
    let out = zt(
        &idp.server,
        &[
            "client",
            "add",
            "bad",
            "--redirect-uri",
            REDIRECT,
            "--backchannel-logout-uri",
            "http://rp.example/logout",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--backchannel-logout-uri") && stderr.contains("loopback"),
        "{stderr}"
    );

    // alice signs in to web and to plain, bob to app.
    let alice = idp.tokens(("web", &web), "alice");
    let sid = jwt_part(alice["id_token"].as_str().unwrap(), 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let alice_plain = idp.tokens(("plain", &plain), "alice");
    let bob = idp.tokens(("app", &app), "bob");
    let bob_sid = jwt_part(bob["id_token"].as_str().unwrap(), 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();

    // zt session revoke: web hears of alice's session within a second; app,
    // whose session is another, hears nothing; plain has no URI.
    let revoked = std::time::Instant::now();
    ok(&idp.server, &["session", "revoke", &sid]);
    let (token, arrived) = web_rp.token(Duration::from_secs(5));
    let latency = arrived - revoked;
    assert!(
        latency < Duration::from_secs(1),
        "the logout token took {latency:?}"
    );
    let claims = idp.verify_logout_token(&token, "web");
    assert_eq!(claims["sid"], sid.as_str(), "{claims}");
    let alice_sub = jwt_part(alice["id_token"].as_str().unwrap(), 1)["sub"].clone();
    assert_eq!(claims["sub"], alice_sub, "{claims}");
    web_rp.assert_quiet(Duration::from_millis(500));
    app_rp.assert_quiet(Duration::from_millis(10));
    drop(alice_plain);

    // zt user disable: app hears of bob's session; web hears nothing.
    let disabled = std::time::Instant::now();
    ok(&idp.server, &["user", "disable", "bob"]);
    let (token, arrived) = app_rp.token(Duration::from_secs(5));
    assert!(
        arrived - disabled < Duration::from_secs(1),
        "took {:?}",
        arrived - disabled
    );
    let claims = idp.verify_logout_token(&token, "app");
    assert_eq!(claims["sid"], bob_sid.as_str(), "{claims}");
    app_rp.assert_quiet(Duration::from_millis(500));
    web_rp.assert_quiet(Duration::from_millis(10));

    // Each delivery is counted and in the authentication events' log.
    let delivered = eventually("two deliveries counted", || {
        sample(
            idp.server.http,
            "zt_server_idp_backchannel_logout_total{result=\"delivered\"}",
        )
        .filter(|n| *n >= 2.0)
    });
    assert_eq!(delivered, 2.0);
    let log = idp.server.data_dir.join("idp-decisions.log");
    let records = audit_query(&[log.to_str().unwrap()]);
    let deliveries: Vec<_> = records
        .iter()
        .filter(|r| r["query"] == "idp/backchannel_logout")
        .collect();
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert_eq!(deliveries[0]["input"]["client_id"], "web");
    assert_eq!(deliveries[0]["input"]["sid"], sid.as_str());
    assert_eq!(deliveries[0]["input"]["cause"], "session_revoked");
    assert_eq!(deliveries[0]["result"], "success");
    assert_eq!(deliveries[1]["input"]["client_id"], "app");

    // Signing out at /logout (RP-initiated, the ID token as hint) tells web too.
    let (verifier, challenge) = pkce();
    let page = idp.sign_in_page(&idp.authorize_path("web", &challenge, &[]));
    let origin = idp.origin();
    let reply = idp.post_password(
        &page,
        "alice",
        PASSWORD,
        &[("Cookie", &page.cookie), ("Origin", &origin)],
    );
    let cookie = reply
        .headers
        .iter()
        .find(|(n, v)| n.eq_ignore_ascii_case("set-cookie") && v.starts_with("__Host-zt-session="))
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .unwrap();
    let code = param(&reply.redirect_params(), "code").unwrap().to_owned();
    let tokens = idp.token(("web", &web), &code_grant(&code, &verifier)).json();
    let id_token = tokens["id_token"].as_str().unwrap();
    let sid = jwt_part(id_token, 1)["sid"].as_str().unwrap().to_owned();
    let signed_out = idp.get(
        &format!("/logout?id_token_hint={id_token}"),
        &[("Cookie", &cookie)],
    );
    assert_eq!(signed_out.status, 200, "{}", signed_out.body);
    let (token, _) = web_rp.token(Duration::from_secs(5));
    let claims = idp.verify_logout_token(&token, "web");
    assert_eq!(claims["sid"], sid.as_str(), "{claims}");
}

#[test]
fn back_channel_logout_over_tls_on_refresh_token_theft_with_retries() {
    let idp = Idp::start(&["--idp-refresh-grace", "0s"]);
    idp.user("alice");
    // The relying party's certificate comes from the trust domain's CA.
    let rp_dir = idp.dir.path().join("rp-tls");
    std::fs::create_dir_all(&rp_dir).unwrap();
    ok(
        &idp.server,
        &[
            "x509",
            "mint",
            "--spiffe-id",
            &format!("spiffe://{TRUST_DOMAIN}/ns/rp/sa/tls"),
            "--dns",
            "localhost",
            "--write",
            rp_dir.to_str().unwrap(),
        ],
    );
    let tls_rp = LogoutReceiver::serve("localhost", Some(&ClientCert::load(&rp_dir)), 204);
    assert!(tls_rp.uri.starts_with("https://localhost:"), "{}", tls_rp.uri);
    let web = idp.client("web", &["--backchannel-logout-uri", &tls_rp.uri]);
    let client = ("web", web.as_str());

    // A spent refresh token comes back: its family is revoked, and its client
    // told, over TLS, though the session lives on.
    let tokens = idp.tokens(client, "alice");
    let sid = jwt_part(tokens["id_token"].as_str().unwrap(), 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(idp.refresh(client, refresh).status, 200);
    assert_eq!(
        idp.refresh(client, refresh).oauth_error(),
        (400, "invalid_grant".into())
    );
    let (token, _) = tls_rp.token(Duration::from_secs(5));
    let claims = idp.verify_logout_token(&token, "web");
    assert_eq!(claims["sid"], sid.as_str());
    // Revoking the session later tells it again, once.
    ok(&idp.server, &["session", "revoke", &sid]);
    let (again, _) = tls_rp.token(Duration::from_secs(5));
    assert_ne!(again, token, "a new token: its own jti");
    tls_rp.assert_quiet(Duration::from_millis(500));

    // A relying party that fails is tried three times, then given up on.
    let failing = LogoutReceiver::serve("127.0.0.1", None, 503);
    let flaky = idp.client("flaky", &["--backchannel-logout-uri", &failing.uri]);
    let tokens = idp.tokens(("flaky", &flaky), "alice");
    let sid = jwt_part(tokens["id_token"].as_str().unwrap(), 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&idp.server, &["session", "revoke", &sid]);
    let (first, at) = failing.token(Duration::from_secs(5));
    for _ in 0..2 {
        let (retry, _) = failing.token(Duration::from_secs(5));
        assert_eq!(retry, first, "a retry sends the same token");
    }
    failing.assert_quiet(Duration::from_secs(1));
    assert!(at.elapsed() < Duration::from_secs(5));
    let failed = eventually("a failed delivery counted", || {
        sample(
            idp.server.http,
            "zt_server_idp_backchannel_logout_total{result=\"failed\"}",
        )
        .filter(|n| *n >= 1.0)
    });
    assert_eq!(failed, 1.0);

    // A redirect is an answer, not followed and not retried.
    let redirecting = LogoutReceiver::serve("127.0.0.1", None, 302);
    let moved = idp.client("moved", &["--backchannel-logout-uri", &redirecting.uri]);
    let tokens = idp.tokens(("moved", &moved), "alice");
    let sid = jwt_part(tokens["id_token"].as_str().unwrap(), 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&idp.server, &["session", "revoke", &sid]);
    redirecting.token(Duration::from_secs(5));
    redirecting.assert_quiet(Duration::from_secs(1));
    let refused = eventually("a refused delivery counted", || {
        sample(
            idp.server.http,
            "zt_server_idp_backchannel_logout_total{result=\"refused\"}",
        )
        .filter(|n| *n >= 1.0)
    });
    assert_eq!(refused, 1.0);
    let log = idp.server.data_dir.join("idp-decisions.log");
    let records = audit_query(&[log.to_str().unwrap()]);
    let causes: Vec<_> = records
        .iter()
        .filter(|r| r["query"] == "idp/backchannel_logout")
        .map(|r| {
            (
                r["input"]["client_id"].clone(),
                r["input"]["cause"].clone(),
                r["result"].clone(),
            )
        })
        .collect();
    assert_eq!(
        causes,
        vec![
            (json!("web"), json!("family_revoked"), json!("success")),
            (json!("web"), json!("session_revoked"), json!("success")),
            (json!("flaky"), json!("session_revoked"), json!("failed")),
            (json!("moved"), json!("session_revoked"), json!("refused")),
        ]
    );
}

// ---------------------------------------------------------------------------
// zt login: the device flow at a terminal.

/// `zt login ARGS` with the test's config directory.
fn zt_login(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The one login file under `config`, and its contents.
fn login_file(config: &Path) -> (PathBuf, Value) {
    let dir = config.join("zt/login");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let json = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    (files[0].clone(), json)
}

#[test]
fn zt_login_gets_tokens_with_the_device_flow_and_hands_them_out_refreshed() {
    use std::io::BufRead as _;
    // Access tokens of 62 s: fresh enough for --print-token just after login,
    // due for a refresh (less than 60 s left) a few seconds later.
    let idp = Idp::start(&["--idp-access-ttl", "62s"]);
    idp.user("alice");
    ok(
        &idp.server,
        &[
            "client",
            "add",
            "zt-cli",
            "--public",
            "--grant",
            "device_code",
            "--grant",
            "refresh_token",
        ],
    );
    let config = idp.dir.path().join("config");
    let ca = idp.ca.to_str().unwrap().to_owned();
    let issuer_args = ["--issuer", idp.issuer.as_str(), "--ca", ca.as_str()];

    // Before any login, --print-token says what to do.
    let mut print = vec!["login", "--print-token"];
    print.extend(issuer_args);
    let out = zt_login(&config, &print);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "not logged in to {} (client zt-cli): run zt login --issuer {}",
            idp.issuer, idp.issuer
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    // zt login, under umask 000: the person approves the code it prints.
    let mut child = zt_testkit::under_umask_000(Path::new(env!("CARGO_BIN_EXE_zt")))
        .arg("login")
        .args(issuer_args)
        .env("XDG_CONFIG_HOME", &config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut shown = String::new();
    let user_code = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "zt login ended: {shown}"
        );
        shown.push_str(&line);
        if let Some(code) = line.trim().strip_prefix("and enter the code ") {
            break code.to_owned();
        }
    };
    assert!(
        shown.contains(&format!("To sign in, open {}/device", idp.issuer)),
        "{shown}"
    );
    let page = idp.sign_in_page(&format!("/device?user_code={user_code}"));
    let origin = idp.origin();
    let approved = idp.post_password(
        &page,
        "alice",
        PASSWORD,
        &[("Cookie", &page.cookie), ("Origin", &origin)],
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    let status = wait_with_deadline(&mut child).expect("zt login did not finish");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{shown}{rest}");
    assert!(rest.contains("Logged in to"), "{rest}");

    // The tokens are the user's alone.
    let (path, stored) = login_file(&config);
    assert_eq!(zt_testkit::mode_of(&path), 0o600);
    assert_eq!(zt_testkit::mode_of(path.parent().unwrap()), 0o700);
    assert_eq!(stored["issuer"], idp.issuer.as_str());
    assert_eq!(stored["client_id"], "zt-cli");
    let first_refresh = stored["refresh_token"].as_str().unwrap().to_owned();
    let sid = jwt_part(stored["id_token"].as_str().unwrap(), 1)["sid"]
        .as_str()
        .unwrap()
        .to_owned();

    // --print-token prints the token and nothing else; userinfo takes it.
    let out = zt_login(&config, &print);
    assert!(out.status.success(), "{}", describe(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim_end().lines().count(), 1, "{token}");
    let token = token.trim_end().to_owned();
    let info = idp.userinfo(&token, None);
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(info.json()["preferred_username"], "alice");

    // curl and Python's requests, as the README shows.
    let userinfo = format!("{}/userinfo", idp.issuer);
    if let Some(curl) = zt_testkit::curl("zt_login_with_curl") {
        let out = Command::new("sh")
            .args([
                "-c",
                "\"$CURL\" -sS --fail --cacert \"$CA\" -H \"Authorization: Bearer $(\"$ZT\" login --print-token --issuer \"$ISSUER\" --ca \"$CA\")\" \"$URL\"",
            ])
            .env("CURL", curl)
            .env("ZT", env!("CARGO_BIN_EXE_zt"))
            .env("CA", &ca)
            .env("ISSUER", &idp.issuer)
            .env("URL", &userinfo)
            .env("XDG_CONFIG_HOME", &config)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl: {}", describe(&out));
        let body: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["preferred_username"], "alice", "{body}");
    }
    if let Some(python) = zt_testkit::python("zt_login_with_requests") {
        let script = "import os, subprocess, sys, requests\n\
            token = subprocess.run([os.environ['ZT'], 'login', '--print-token', '--issuer', os.environ['ISSUER'],\n\
                '--ca', os.environ['CA']], check=True, capture_output=True, text=True).stdout.strip()\n\
            r = requests.get(os.environ['URL'], headers={'Authorization': 'Bearer ' + token}, verify=os.environ['CA'], timeout=20)\n\
            r.raise_for_status()\n\
            print(r.json()['preferred_username'])\n";
        let out = Command::new(python)
            .args(["-c", script])
            .env("ZT", env!("CARGO_BIN_EXE_zt"))
            .env("CA", &ca)
            .env("ISSUER", &idp.issuer)
            .env("URL", &userinfo)
            .env("XDG_CONFIG_HOME", &config)
            .output()
            .unwrap();
        assert!(out.status.success(), "requests: {}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");
    }

    // Once the token has less than a minute left, --print-token refreshes it
    // and keeps the rotated refresh token.
    let due = |stored: &Value| stored["expires_at"].as_u64().unwrap() < now() + 60;
    eventually("the access token is due for a refresh", || {
        due(&login_file(&config).1).then_some(())
    });
    let out = zt_login(&config, &print);
    assert!(out.status.success(), "{}", describe(&out));
    let refreshed = String::from_utf8(out.stdout).unwrap().trim_end().to_owned();
    assert_ne!(refreshed, token);
    assert_eq!(idp.userinfo(&refreshed, None).status, 200);
    let (_, stored) = login_file(&config);
    assert_ne!(
        stored["refresh_token"].as_str().unwrap(),
        first_refresh,
        "rotated"
    );
    assert_eq!(stored["access_token"].as_str().unwrap(), refreshed);
    assert_eq!(zt_testkit::mode_of(&path), 0o600, "still 0600 after the rewrite");

    // The session is revoked: once the token is due again, --print-token fails
    // and says how to log in again.
    ok(&idp.server, &["session", "revoke", &sid]);
    eventually("the access token is due for a refresh", || {
        due(&login_file(&config).1).then_some(())
    });
    let out = zt_login(&config, &print);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the access token for {} (client zt-cli) expired",
            idp.issuer
        )) && stderr.contains("the refresh was refused (invalid_grant")
            && stderr.contains(&format!("run zt login --issuer {}", idp.issuer)),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    // zt logout forgets the login.
    let mut logout = vec!["logout"];
    logout.extend(issuer_args);
    let out = zt_login(&config, &logout);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!path.exists());
    let out = zt_login(&config, &print);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not logged in"),
        "{}",
        describe(&out)
    );
}

#[test]
fn zt_login_loopback_runs_the_code_flow_with_pkce_through_the_browser() {
    use std::io::BufRead as _;
    let idp = Idp::start(&[]);
    idp.user("alice");
    let port = free_port().to_string();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    ok(
        &idp.server,
        &[
            "client",
            "add",
            "zt-cli",
            "--public",
            "--redirect-uri",
            &redirect,
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
        ],
    );
    let config = idp.dir.path().join("config");
    let ca = idp.ca.to_str().unwrap().to_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args([
            "login",
            "--loopback",
            "--redirect-port",
            &port,
            "--issuer",
            &idp.issuer,
            "--ca",
            &ca,
        ])
        .env("XDG_CONFIG_HOME", &config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "zt login ended");
        if let Some(path) = line.trim().strip_prefix(&format!("{}/authorize?", idp.issuer)) {
            break format!("/authorize?{path}");
        }
    };
    let params = query_params(url.split_once('?').unwrap().1);
    assert_eq!(param(&params, "code_challenge_method"), Some("S256"));
    assert_eq!(param(&params, "redirect_uri"), Some(redirect.as_str()));
    // The browser: sign in, then follow the redirect to zt login's listener.
    let page = idp.sign_in_page(&url);
    let origin = idp.origin();
    let reply = idp.post_password(
        &page,
        "alice",
        PASSWORD,
        &[("Cookie", &page.cookie), ("Origin", &origin)],
    );
    let location = reply.header("location").unwrap().to_owned();
    assert!(location.starts_with(&redirect), "{location}");
    // A request with another state is not the answer: zt login waits on.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, _) = http_get(addr, "/callback?code=x&state=forged").unwrap();
    assert_eq!(status, 400);
    let (status, body) = http_get(
        addr,
        location
            .strip_prefix(&format!("http://127.0.0.1:{port}"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Signed in"), "{body}");
    let status = wait_with_deadline(&mut child).expect("zt login did not finish");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{rest}");
    let (path, stored) = login_file(&config);
    assert_eq!(zt_testkit::mode_of(&path), 0o600);
    assert!(stored["refresh_token"].is_string(), "{stored}");
    let out = zt_login(&config, &["login", "--print-token", "--issuer", &idp.issuer]);
    assert!(out.status.success(), "{}", describe(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(idp.userinfo(token.trim_end(), None).status, 200);
}

#[test]
fn replicas_on_one_database_send_each_logout_token_once() {
    let Some(url) = postgres_database("replicas_on_one_database_send_each_logout_token_once") else {
        return;
    };
    let a = Idp::start_on(Some(&url), &[]);
    // A second replica of the provider, on the same database.
    let b_data = a.dir.path().join("b");
    std::fs::create_dir(&b_data).unwrap();
    let b_idp = format!("127.0.0.1:{}", free_port());
    let mut b = ServerProcess::spawn_with(
        &b_data,
        Some(&url),
        &["--idp", &b_idp, "--idp-passwords", "--idp-issuer", &a.issuer],
    );
    b.wait_ready();
    a.user("alice");
    let rp = LogoutReceiver::start("127.0.0.1");
    let web = a.client("web", &["--backchannel-logout-uri", &rp.uri]);
    let total = |server: &ServerProcess| {
        sample(
            server.http,
            "zt_server_idp_backchannel_logout_total{result=\"delivered\"}",
        )
        .unwrap_or(0.0)
    };
    for round in 0..3 {
        let tokens = a.tokens(("web", &web), "alice");
        let sid = jwt_part(tokens["id_token"].as_str().unwrap(), 1)["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        // Revoked through the other replica: both follow the feed, one sends.
        let revoked = std::time::Instant::now();
        ok(&b, &["session", "revoke", &sid]);
        let (token, arrived) = rp.token(Duration::from_secs(5));
        eprintln!("round {round}: the logout token came in {:?}", arrived - revoked);
        assert_eq!(a.verify_logout_token(&token, "web")["sid"], sid.as_str());
        rp.assert_quiet(Duration::from_millis(1500));
        let delivered = eventually("the delivery counted", || {
            let sum = total(&a.server) + total(&b);
            (sum >= f64::from(round + 1)).then_some(sum)
        });
        assert_eq!(delivered, f64::from(round + 1), "round {round}");
    }
}
