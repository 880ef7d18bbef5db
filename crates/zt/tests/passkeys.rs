//! Passkeys end to end: a real `zt server --idp` on loopback, driven over
//! HTTPS by `webauthn-authenticator-rs`'s soft passkey (an authenticator no
//! one here wrote) through the real enrollment and sign-in endpoints, then the
//! code redeemed at `/token`. The soft passkey keeps no resident keys, so a
//! thin wrapper makes it answer a discoverable request the way a platform
//! authenticator does (it offers its own credentials and returns the user handle).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use support::*;
use webauthn_authenticator_rs::AuthenticatorBackendHashedClientData;
use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, RequestChallengeResponse, Url, WebauthnAuthenticator as _, WebauthnCError,
};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs_proto::{
    AllowCredentials, PublicKeyCredential, PublicKeyCredentialCreationOptions,
    PublicKeyCredentialRequestOptions, RegisterPublicKeyCredential,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const REDIRECT: &str = "http://127.0.0.1:9/cb";

/// A soft passkey that answers discoverable requests: it offers every
/// credential it made for the RP ID asked and returns its user handle.
struct Discoverable {
    inner: SoftPasskey,
    made: Vec<(Vec<u8>, Vec<u8>, String)>,
}

impl AuthenticatorBackendHashedClientData for Discoverable {
    fn perform_register(
        &mut self,
        client_data_hash: Vec<u8>,
        mut options: PublicKeyCredentialCreationOptions,
        timeout_ms: u32,
    ) -> Result<RegisterPublicKeyCredential, WebauthnCError> {
        let selection = options.authenticator_selection.as_mut().unwrap();
        assert!(
            selection.require_resident_key,
            "the server asks for a discoverable credential"
        );
        // This wrapper keeps the user handle: the soft passkey need not.
        selection.require_resident_key = false;
        let (user, rp) = (options.user.id.clone(), options.rp.id.clone());
        let made = self
            .inner
            .perform_register(client_data_hash, options, timeout_ms)?;
        self.made.push((made.raw_id.clone(), user, rp));
        Ok(made)
    }

    fn perform_auth(
        &mut self,
        client_data_hash: Vec<u8>,
        mut options: PublicKeyCredentialRequestOptions,
        timeout_ms: u32,
    ) -> Result<PublicKeyCredential, WebauthnCError> {
        if options.allow_credentials.is_empty() {
            options.allow_credentials = self
                .made
                .iter()
                .map(|(id, _, _)| AllowCredentials {
                    type_: "public-key".into(),
                    id: id.clone(),
                    transports: None,
                })
                .collect();
        }
        let mut signed = self.inner.perform_auth(client_data_hash, options, timeout_ms)?;
        let user = self
            .made
            .iter()
            .find(|(id, _, _)| *id == signed.raw_id)
            .map(|(_, user, _)| user.clone());
        signed.response.user_handle = user;
        Ok(signed)
    }
}

/// One HTTPS exchange: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    /// `name=value` of a Set-Cookie.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .filter_map(|(_, v)| v.split(';').next())
            .find(|pair| pair.starts_with(&format!("{name}=")) && pair.len() > name.len() + 1)
            .map(str::to_owned)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }
}

/// A browser, as far as the IdP can tell: HTTPS to `localhost`, the CA trusted,
/// cookies kept, `Origin` sent with POSTs.
struct Browser {
    addr: SocketAddr,
    origin: String,
    tls: Arc<rustls::ClientConfig>,
    cookies: Vec<String>,
}

impl Browser {
    fn new(addr: SocketAddr, ca_pem: &str) -> Self {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            addr,
            origin: format!("https://localhost:{}", addr.port()),
            tls: Arc::new(tls),
            cookies: Vec::new(),
        }
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
        origin: Option<&str>,
    ) -> Answer {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).unwrap();
        let tcp = TcpStream::connect(self.addr).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr.port(),
            body.len()
        );
        if !content_type.is_empty() {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        if let Some(origin) = origin {
            head.push_str(&format!("Origin: {origin}\r\n"));
        }
        if !self.cookies.is_empty() {
            head.push_str(&format!("Cookie: {}\r\n", self.cookies.join("; ")));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked { dechunk(body) } else { body.to_owned() };
        let answer = Answer {
            status,
            headers,
            body,
        };
        for (n, v) in &answer.headers {
            if n != "set-cookie" {
                continue;
            }
            let pair = v.split(';').next().unwrap().to_owned();
            let key = pair.split('=').next().unwrap().to_owned();
            self.cookies.retain(|c| !c.starts_with(&format!("{key}=")));
            if !v.contains("Max-Age=0") {
                self.cookies.push(pair);
            }
        }
        answer
    }

    fn get(&mut self, path: &str) -> Answer {
        self.request("GET", path, "", "", None)
    }

    fn post_json(&mut self, path: &str, body: &Value) -> Answer {
        let origin = self.origin.clone();
        self.request("POST", path, "application/json", &body.to_string(), Some(&origin))
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// `data-NAME="VALUE"` in a page.
fn attribute(page: &str, name: &str) -> String {
    let start = page
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + name.len()
        + 2;
    page[start..].split('"').next().unwrap().to_owned()
}

struct Idp {
    server: ServerProcess,
    addr: SocketAddr,
    ca: String,
}

fn start_idp(dir: &tempfile::TempDir, redirect: &str) -> Idp {
    start_idp_with(dir, redirect, &[])
}

fn start_idp_with(dir: &tempfile::TempDir, redirect: &str, extra: &[&str]) -> Idp {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let data = dir.path().join("data");
    let addr_arg = addr.to_string();
    let mut args = vec!["--idp", &addr_arg];
    args.extend(extra);
    let mut server = ServerProcess::spawn_with(&data, None, &args);
    server.wait_ready();
    ok(&server, &["user", "add", "alice", "--email", "alice@example.org"]);
    ok(
        &server,
        &["client", "add", "web", "--public", "--redirect-uri", redirect],
    );
    let ca = ok(&server, &["bundle", "show", "--format", "pem"]);
    // The IdP answers once its listener is up.
    eventually("the IdP listens", || TcpStream::connect(addr).ok());
    Idp { server, addr, ca }
}

fn invite(idp: &Idp) -> String {
    let out = json_of(&ok(&idp.server, &["user", "invite", "alice", "--output", "json"]));
    let token = out["token"].as_str().unwrap().to_owned();
    let url = format!("https://localhost:{}/enroll?invite={token}", idp.addr.port());
    assert_eq!(out["url"], url, "the enrollment link: {out}");
    let text = ok(&idp.server, &["user", "invite", "alice"]);
    assert!(text.contains("Enroll: https://localhost:"), "{text}");
    token
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Registers a passkey from `token` in `browser` with `key`; the finish answer.
fn enroll(browser: &mut Browser, key: &mut Discoverable, token: &str, origin: &str) -> Answer {
    let page = browser.get(&format!("/enroll?invite={token}"));
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = attribute(&page.body, "data-csrf");
    let begun = browser.post_json("/enroll/begin", &json!({ "invite": token, "csrf": csrf }));
    assert_eq!(begun.status, 200, "{}", begun.body);
    let begun = begun.json();
    let options: CreationChallengeResponse = serde_json::from_value(begun["options"].clone()).unwrap();
    assert_eq!(options.public_key.rp.id, "localhost");
    assert_ne!(
        options.public_key.user.id,
        b"alice@example.org".to_vec(),
        "the user handle is never the e-mail"
    );
    assert_eq!(options.public_key.user.id.len(), 16, "the sub's 128 bits");
    let credential = key.do_registration(Url::parse(origin).unwrap(), options).unwrap();
    browser.post_json(
        "/enroll/finish",
        &json!({ "ceremony": begun["ceremony"], "csrf": csrf, "credential": credential }),
    )
}

/// `/authorize?…` for client `web` (code flow, PKCE S256 of `[7; 32]`), signing in again.
fn authorize_path(redirect: &str, state: &str) -> String {
    let verifier = B64.encode([7u8; 32]);
    let challenge = B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    format!(
        "/authorize?response_type=code&client_id=web&redirect_uri={}&scope=openid&prompt=login&state={state}&code_challenge={challenge}&code_challenge_method=S256",
        redirect.replace(':', "%3A").replace('/', "%2F"),
    )
}

/// An authorization request waiting for sign-in: (request, csrf, verifier).
fn authorize(browser: &mut Browser) -> (String, String, String) {
    let verifier = B64.encode([7u8; 32]);
    let page = browser.get(&authorize_path(REDIRECT, "s1"));
    assert_eq!(page.status, 200, "{:?} {}", page.headers, page.body);
    (
        attribute(&page.body, "data-request"),
        attribute(&page.body, "data-csrf"),
        verifier,
    )
}

/// Begins a passkey sign-in: (ceremony, options).
fn begin_sign_in(browser: &mut Browser, request: &str, csrf: &str) -> (Value, RequestChallengeResponse) {
    let begun = browser.post_json(
        "/signin/passkey/begin",
        &json!({ "request": request, "csrf": csrf }),
    );
    assert_eq!(begun.status, 200, "{}", begun.body);
    let begun = begun.json();
    (
        begun["ceremony"].clone(),
        serde_json::from_value(begun["options"].clone()).unwrap(),
    )
}

fn finish_sign_in(
    browser: &mut Browser,
    request: &str,
    csrf: &str,
    ceremony: &Value,
    credential: &PublicKeyCredential,
) -> Answer {
    browser.post_json(
        "/signin/passkey/finish",
        &json!({ "request": request, "csrf": csrf, "ceremony": ceremony, "credential": credential }),
    )
}

/// A whole sign-in with `key` from `origin`; the finish answer.
fn sign_in(browser: &mut Browser, key: &mut Discoverable, origin: &str) -> Answer {
    let (request, csrf, _) = authorize(browser);
    let (ceremony, options) = begin_sign_in(browser, &request, &csrf);
    let credential = key
        .do_authentication(Url::parse(origin).unwrap(), options)
        .unwrap();
    finish_sign_in(browser, &request, &csrf, &ceremony, &credential)
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url.split_once('?')?
        .1
        .split('&')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .map(str::to_owned)
}

/// Redeems `code` at `/token`; the access token's claims.
fn redeem(browser: &mut Browser, code: &str, redirect: &str) -> Value {
    let verifier = B64.encode([7u8; 32]);
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&client_id=web&code_verifier={verifier}",
        redirect.replace(':', "%3A").replace('/', "%2F"),
    );
    let answer = browser.request("POST", "/token", "application/x-www-form-urlencoded", &form, None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    jwt_claims(answer.json()["access_token"].as_str().unwrap())
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

#[test]
fn passkeys_enroll_from_an_invite_and_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let idp = start_idp(&dir, REDIRECT);
    let origin = format!("https://localhost:{}", idp.addr.port());
    let mut key = Discoverable {
        inner: SoftPasskey::new(true),
        made: Vec::new(),
    };

    // Registration from an invite; the invite works once.
    let token = invite(&idp);
    let mut browser = Browser::new(idp.addr, &idp.ca);
    let finished = enroll(&mut browser, &mut key, &token, &origin);
    assert_eq!(finished.status, 200, "{}", finished.body);
    assert_eq!(finished.json()["user"], "alice");
    let credentials = json_of(&ok(
        &idp.server,
        &["user", "credentials", "alice", "--output", "json"],
    ));
    let credentials = credentials["credentials"].as_array().unwrap();
    assert_eq!(credentials.len(), 1, "{credentials:?}");
    let credential_id = credentials[0]["id"].as_str().unwrap().to_owned();

    let mut again = Browser::new(idp.addr, &idp.ca);
    let reused = again.get(&format!("/enroll?invite={token}"));
    assert_eq!(reused.status, 404, "a used invite shows no enrollment page");
    let begun = again.post_json("/enroll/begin", &json!({ "invite": token, "csrf": "x" }));
    assert_eq!(begun.status, 403, "{}", begun.body);

    // Sign-in: a session, a code, and a token saying how.
    let done = sign_in(&mut browser, &mut key, &origin);
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.cookie("__Host-zt-session").is_some(), "{:?}", done.headers);
    let redirect = done.json()["redirect"].as_str().unwrap().to_owned();
    assert!(redirect.starts_with(REDIRECT), "{redirect}");
    assert_eq!(query_param(&redirect, "state").as_deref(), Some("s1"));
    assert!(query_param(&redirect, "iss").is_some(), "{redirect}");
    let code = query_param(&redirect, "code").unwrap();
    let claims = redeem(&mut browser, &code, REDIRECT);
    // The soft passkey is not backup-eligible: a device-bound key.
    assert_eq!(claims["amr"], json!(["hwk", "user", "mfa"]), "{claims}");
    assert_eq!(claims["acr"], "urn:zt:acr:aal3", "{claims}");
    let used = json_of(&ok(
        &idp.server,
        &["user", "credentials", "alice", "--output", "json"],
    ));
    assert!(used["credentials"][0]["last_used_at"].is_u64(), "{used}");

    // Another origin (here another port), or another RP ID: refused.
    let mut other = Browser::new(idp.addr, &idp.ca);
    let refused = sign_in(&mut other, &mut key, "https://localhost:1");
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.cookie("__Host-zt-session").is_none());
    let (request, csrf, _) = authorize(&mut other);
    let (ceremony, mut options) = begin_sign_in(&mut other, &request, &csrf);
    options.public_key.rp_id = "example.com".into();
    let foreign = key
        .do_authentication(Url::parse("https://example.com").unwrap(), options)
        .unwrap();
    let refused = finish_sign_in(&mut other, &request, &csrf, &ceremony, &foreign);
    assert_eq!(refused.status, 401, "{}", refused.body);

    // A ceremony (and so its challenge) is used once; an old assertion does
    // not answer a new challenge.
    let (request, csrf, _) = authorize(&mut other);
    let (ceremony, options) = begin_sign_in(&mut other, &request, &csrf);
    let signed = key
        .do_authentication(Url::parse(&origin).unwrap(), options)
        .unwrap();
    let first = finish_sign_in(&mut other, &request, &csrf, &ceremony, &signed);
    assert_eq!(first.status, 200, "{}", first.body);
    let (request, csrf, _) = authorize(&mut other);
    let replayed = finish_sign_in(&mut other, &request, &csrf, &ceremony, &signed);
    assert_eq!(replayed.status, 401, "a finished ceremony: {}", replayed.body);
    let (fresh, _) = begin_sign_in(&mut other, &request, &csrf);
    let replayed = finish_sign_in(&mut other, &request, &csrf, &fresh, &signed);
    assert_eq!(replayed.status, 401, "an old challenge: {}", replayed.body);

    // A signature counter that went backwards: refused and recorded.
    let location = idp.server.data_dir.join(zt_server::SQLITE_FILE);
    block_on(async {
        let store = zt_store::Store::open(location.to_str().unwrap()).await.unwrap();
        let stored = store.credential_by_id(&credential_id).await.unwrap().unwrap();
        let mut passkey: Value = serde_json::from_str(&stored.public_key).unwrap();
        passkey["cred"]["counter"] = json!(1_000_000);
        let used = zt_store::CredentialUse {
            sign_count: 1_000_000,
            backed_up: false,
            public_key: passkey.to_string(),
        };
        store
            .record_credential_use(&credential_id, &used, now())
            .await
            .unwrap();
    });
    let cloned = sign_in(&mut other, &mut key, &origin);
    assert_eq!(cloned.status, 401, "{}", cloned.body);
    let log = std::fs::read_to_string(idp.server.data_dir.join("idp-decisions.log")).unwrap();
    assert!(log.contains("idp/credential_cloned"), "{log}");

    // A revoked credential: refused, with the same answer.
    ok(&idp.server, &["user", "credential", "revoke", &credential_id]);
    let revoked = sign_in(&mut other, &mut key, &origin);
    assert_eq!(revoked.status, 401, "{}", revoked.body);
    assert_eq!(
        revoked.json()["error_description"],
        cloned.json()["error_description"]
    );
    assert!(log.contains("\"factor\":\"passkey\""), "{log}");
}

#[test]
fn only_allowed_authenticator_models_register() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = "08987058-cadc-4b81-b6e1-30de50dcbe96";
    let idp = start_idp_with(&dir, REDIRECT, &["--idp-aaguid", allowed]);
    let origin = format!("https://localhost:{}", idp.addr.port());
    let mut key = Discoverable {
        inner: SoftPasskey::new(true),
        made: Vec::new(),
    };
    let token = invite(&idp);
    let mut browser = Browser::new(idp.addr, &idp.ca);
    let refused = enroll(&mut browser, &mut key, &token, &origin);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let why = refused.json()["error_description"].as_str().unwrap().to_owned();
    assert!(why.contains("AAGUID") && why.contains("not allowed"), "{why}");
    let listed = json_of(&ok(
        &idp.server,
        &["user", "credentials", "alice", "--output", "json"],
    ));
    assert_eq!(listed["credentials"], json!([]), "{listed}");

    let out = zt_testkit::describe(
        &std::process::Command::new(env!("CARGO_BIN_EXE_zt"))
            .args([
                "server",
                "--trust-domain",
                "example.org",
                "--idp",
                "127.0.0.1:0",
                "--idp-aaguid",
                "not-a-uuid",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("other"))
            .output()
            .unwrap(),
    );
    assert!(out.contains("--idp-aaguid \"not-a-uuid\": not a UUID"), "{out}");
}

/// A loopback "application" for the redirect URI: answers every request 200.
fn application() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    addr
}

/// Headless Chromium with a DevTools virtual authenticator (tests/interop/browser.mjs)
/// opens an invite link, registers a passkey, signs in to a code flow and lands on
/// the redirect URI with `code`, `state` and `iss`; a credential for another RP ID
/// cannot sign in.
#[test]
fn a_real_browser_registers_a_passkey_and_signs_in() {
    const TEST: &str = "a_real_browser_registers_a_passkey_and_signs_in";
    let (Some(node), Some(_)) = (zt_testkit::node(TEST), zt_testkit::chromium(TEST)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let redirect = format!("http://{}/cb", application());
    let idp = start_idp(&dir, &redirect);
    let origin = format!("https://localhost:{}", idp.addr.port());
    let token = invite(&idp);
    let synced = invite(&idp);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &idp.ca).unwrap();

    // Another site's credential, in the authenticator for the negative case.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .unwrap();
    let std64 = base64::engine::general_purpose::STANDARD;
    let foreign = json!({
        "credentialId": std64.encode([9u8; 32]),
        "isResidentCredential": true,
        "rpId": "example.com",
        "privateKey": std64.encode(pkcs8.as_ref()),
        "userHandle": std64.encode([1u8; 16]),
        "signCount": 0,
    });
    let script = json!({
        "ca": ca,
        "timeout": 20000,
        "steps": [
            ["goto", format!("{origin}/enroll?invite={token}")],
            ["click", "#enroll-passkey"],
            ["waitForSelector", "#enroll-done"],
            ["credentials"],
            ["goto", format!("{origin}{}", authorize_path(&redirect, "b1"))],
            ["click", "#passkey-sign-in"],
            ["waitForURL", { "prefix": redirect }],
            ["url"],
            ["removeCredentials"],
            ["addCredential", foreign],
            ["goto", format!("{origin}{}", authorize_path(&redirect, "b2"))],
            ["click", "#passkey-sign-in"],
            ["waitForSelector", "#passkey-error"],
            ["url"],
            // A synced passkey (backup-eligible) on another device.
            ["removeAuthenticator", 0],
            ["addAuthenticator", { "defaultBackupEligibility": true, "defaultBackupState": true }],
            ["goto", format!("{origin}/enroll?invite={synced}")],
            ["click", "#enroll-passkey"],
            ["waitForSelector", "#enroll-done"],
            ["goto", format!("{origin}{}", authorize_path(&redirect, "b3"))],
            ["click", "#passkey-sign-in"],
            ["waitForURL", { "prefix": redirect }],
            ["url"],
        ],
    });
    let path = dir.path().join("script.json");
    std::fs::write(&path, script.to_string()).unwrap();
    let out = std::process::Command::new(node)
        .arg(zt_testkit::interop_dir().join("browser.mjs"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser.mjs: {}",
        zt_testkit::describe(&out)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = answer["results"].as_array().unwrap();
    let credentials = results[0]["value"].as_array().unwrap();
    assert_eq!(credentials.len(), 1, "one passkey registered: {answer}");
    assert_eq!(credentials[0]["rpId"], "localhost");
    assert_eq!(
        credentials[0]["isResidentCredential"], true,
        "a discoverable credential"
    );

    let landed = results[1]["value"].as_str().unwrap();
    assert!(landed.starts_with(&format!("{redirect}?")), "{landed}");
    assert_eq!(query_param(landed, "state").as_deref(), Some("b1"));
    assert_eq!(
        query_param(landed, "iss").as_deref(),
        Some(origin.replace(':', "%3A").replace('/', "%2F").as_str())
    );
    let code = query_param(landed, "code").unwrap();
    let mut browser = Browser::new(idp.addr, &idp.ca);
    let claims = redeem(&mut browser, &code, &redirect);
    assert_eq!(claims["amr"], json!(["hwk", "user", "mfa"]), "{claims}");

    // The other site's credential: no sign-in, still on the sign-in page.
    let stayed = results[2]["value"].as_str().unwrap();
    assert!(stayed.starts_with(&format!("{origin}/authorize?")), "{stayed}");

    // The synced passkey: swk and AAL2, and its flags stored.
    let landed = results[4]["value"].as_str().unwrap();
    assert_eq!(query_param(landed, "state").as_deref(), Some("b3"), "{landed}");
    let claims = redeem(&mut browser, &query_param(landed, "code").unwrap(), &redirect);
    assert_eq!(claims["amr"], json!(["swk", "user", "mfa"]), "{claims}");
    assert_eq!(claims["acr"], "urn:zt:acr:aal2", "{claims}");
    let listed = json_of(&ok(
        &idp.server,
        &["user", "credentials", "alice", "--output", "json"],
    ));
    // Both may be registered in the same second: compared in any order.
    let mut flags: Vec<(bool, bool)> = listed["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["backup_eligible"].as_bool().unwrap(),
                c["backed_up"].as_bool().unwrap(),
            )
        })
        .collect();
    flags.sort_unstable();
    assert_eq!(flags, [(false, false), (true, true)], "{listed}");
    // Two sign-ins, two sessions: the other site's credential opened none.
    let sessions = json_of(&ok(&idp.server, &["session", "list", "--output", "json"]));
    assert_eq!(
        sessions["sessions"].as_array().map(Vec::len),
        Some(2),
        "{sessions}"
    );
}
