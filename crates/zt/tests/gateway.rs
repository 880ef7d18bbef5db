//! `zt gateway` end to end, with real processes on loopback: `zt server --idp`
//! (the OpenID Provider), `zt gateway` in front of `zt proxy` in front of the
//! echo app, every hop TLS (the browser to the gateway, the gateway to the
//! provider, mTLS from the gateway to the sidecar with its SVID).
//!
//! Headless Chromium with a DevTools virtual authenticator signs in with a
//! passkey through the gateway (skipped loudly without Chromium and the npm
//! packages, failed under `ZT_REQUIRE_INTEROP=1`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use support::*;
use zt_testkit::describe;

const SERVICE_ONE: &str = "spiffe://example.org/ns/demo/sa/service-one";
const GATEWAY_ID: &str = "spiffe://example.org/ns/edge/sa/gateway";
const FRONTEND: &str = "spiffe://example.org/ns/demo/sa/frontend";
const BACKEND: &str = "spiffe://example.org/ns/demo/sa/backend";

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn zt_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_zt"))
}

/// Runs `zt ARGS` in `dir`; its standard output.
fn zt_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(zt_exe())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    succeed(&out, &format!("zt {args:?}"))
}

/// A development CA for the mesh in `root` (`ca/`, `mesh.pem`) and the
/// gateway's SVID from it ([`issue_gateway_svid`]).
fn mesh_ca(root: &Path) {
    zt_in(
        root,
        &["ca", "init", "--trust-domain", "example.org", "--dir", "ca"],
    );
    zt_in(root, &["ca", "bundle", "--ca", "ca", "--out", "mesh.pem"]);
    issue_gateway_svid(root);
}

/// `gateway.crt`/`gateway.key`: the gateway's SVID, also its HTTPS
/// certificate (for localhost), a new one at each call.
fn issue_gateway_svid(root: &Path) {
    zt_in(
        root,
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            GATEWAY_ID,
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            "gateway",
        ],
    );
}

/// Everything a gateway test runs: the provider, the sidecar and its app,
/// the gateway; and the files a client needs.
struct Stack {
    dir: tempfile::TempDir,
    server: ServerProcess,
    idp: SocketAddr,
    gateway: SocketAddr,
    gateway_admin: SocketAddr,
    /// The provider's CA and the test CA, PEM, for browsers and clients.
    roots: PathBuf,
    _app: Running,
    _proxy: Running,
    chain: Chain,
    _gateway: Running,
}

impl Stack {
    fn start(python: &Path) -> Self {
        Self::start_with(python, &[])
    }

    /// With `server_args` for zt server.
    fn start_with(python: &Path, server_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A development CA for the mesh: the gateway's SVID (also its HTTPS
        // certificate, for localhost, which the provider trusts for its
        // back-channel logouts) and service-one's.
        mesh_ca(root);
        zt_in(
            root,
            &[
                "ca",
                "issue",
                "--ca",
                "ca",
                "--spiffe-id",
                SERVICE_ONE,
                "--out",
                "service-one",
            ],
        );
        for (id, name) in [(FRONTEND, "frontend"), (BACKEND, "backend")] {
            zt_in(
                root,
                &["ca", "issue", "--ca", "ca", "--spiffe-id", id, "--out", name],
            );
        }
        // The provider.
        let idp: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let idp_arg = idp.to_string();
        let mesh_ca = root.join("mesh.pem");
        let mut server = ServerProcess::spawn_with(
            &root.join("data"),
            None,
            &[
                &[
                    "--idp",
                    &idp_arg,
                    "--idp-backchannel-ca",
                    mesh_ca.to_str().unwrap(),
                ],
                server_args,
            ]
            .concat(),
        );
        server.wait_ready();
        eventually("the OpenID Provider listens", || TcpStream::connect(idp).ok());
        for user in ["alice", "bob"] {
            ok(
                &server,
                &["user", "add", user, "--email", &format!("{user}@example.org")],
            );
        }
        ok(&server, &["group", "add", "staff"]);
        ok(&server, &["group", "add-member", "staff", "alice"]);
        // For people at a terminal: zt login's device flow.
        ok(
            &server,
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
        let gateway: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let url = format!("https://localhost:{}", gateway.port());
        let created: Value = serde_json::from_str(&ok(
            &server,
            &[
                "client",
                "add",
                "zt-gateway",
                "--secret",
                "--redirect-uri",
                &format!("{url}/.zt/callback"),
                "--grant",
                "authorization_code",
                "--grant",
                "refresh_token",
                "--grant",
                "token_exchange",
                "--backchannel-logout-uri",
                &format!("{url}/.zt/backchannel-logout"),
                "--output",
                "json",
            ],
        ))
        .unwrap();
        std::fs::write(root.join("gateway.secret"), created["secret"].as_str().unwrap()).unwrap();

        let provider_ca = ok(&server, &["bundle", "show", "--format", "pem"]);
        std::fs::write(root.join("provider.pem"), &provider_ca).unwrap();
        let roots = root.join("roots.pem");
        std::fs::write(
            &roots,
            format!(
                "{provider_ca}{}",
                std::fs::read_to_string(root.join("mesh.pem")).unwrap()
            ),
        )
        .unwrap();

        // The echo app behind zt proxy, which lets only the gateway in.
        let (app, app_child) = start_app(python, "echo_app.py", &[]);
        let (proxy, inbound, _) = sidecar(root, "service-one", app, &["--allow-spiffe-id", GATEWAY_ID]);
        let issuer = format!("https://localhost:{}", idp.port());
        let chain = Chain::start(root, python, &issuer);

        // The gateway: /internal for staff signed in with a device-bound
        // passkey (amr hwk), / for anyone signed in.
        std::fs::create_dir(root.join("policies")).unwrap();
        std::fs::write(
            root.join("policies/edge.yaml"),
            format!(
                "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: people, namespace: edge}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: [\"{issuer}/*\"]}}}}]
    to: [{{operation: {{notPaths: [\"/internal\", \"/internal/*\"]}}}}]
  - from: [{{source: {{requestPrincipals: [\"{issuer}/*\"]}}}}]
    to: [{{operation: {{paths: [\"/internal\", \"/internal/*\"]}}}}]
    when:
    - {{key: \"request.auth.claims[groups]\", values: [staff]}}
    - {{key: \"request.auth.claims[amr]\", values: [hwk]}}
"
            ),
        )
        .unwrap();
        let gateway_admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        std::fs::write(
            root.join("gateway.yaml"),
            format!(
                "listen: {gateway}
url: {url}
admin: {gateway_admin}
tls: {{cert: gateway.crt, key: gateway.key}}
oidc: {{issuer: \"{issuer}\", client_id: zt-gateway, client_secret_file: gateway.secret, ca: provider.pem, clock_skew: 1s,
        audiences: [zt-gateway, zt-cli]}}
session: {{key_file: cookie.key}}
identity: {{cert: gateway.crt, key: gateway.key, bundle: mesh.pem}}
policy: {{dir: policies, namespace: edge, decision_log: decisions.log}}
headers: {{X-Zt-User: preferred_username, X-Zt-Groups: groups, X-Zt-Amr: amr}}
routes:
  - {{path: /, upstream: \"{inbound}\", spiffe_id: \"{SERVICE_ONE}\"}}
  - {{path: /api, upstream: \"{inbound}\", spiffe_id: \"{SERVICE_ONE}\", token: none}}
  - {{path: /chain, upstream: \"{frontend}\", spiffe_id: \"{FRONTEND}\"}}
",
                frontend = chain.frontend,
            ),
        )
        .unwrap();
        let gateway_process = Command::new(zt_exe())
            .args(["gateway", "--config", root.join("gateway.yaml").to_str().unwrap()])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(root.join("gateway.log")).unwrap())
            .spawn()
            .unwrap();
        let mut gateway_process = Running(gateway_process);
        eventually("the gateway listens", || {
            if let Some(status) = gateway_process.0.try_wait().unwrap() {
                panic!(
                    "zt gateway exited ({status}): {}",
                    std::fs::read_to_string(root.join("gateway.log")).unwrap_or_default()
                );
            }
            TcpStream::connect(gateway).ok()
        });
        Self {
            dir,
            server,
            idp,
            gateway,
            gateway_admin,
            roots,
            _app: app_child,
            _proxy: proxy,
            chain,
            _gateway: gateway_process,
        }
    }

    fn origin(&self) -> String {
        format!("https://localhost:{}", self.gateway.port())
    }

    fn idp_origin(&self) -> String {
        format!("https://localhost:{}", self.idp.port())
    }

    fn invite(&self, user: &str) -> String {
        let out: Value =
            serde_json::from_str(&ok(&self.server, &["user", "invite", user, "--output", "json"])).unwrap();
        out["url"].as_str().unwrap().to_owned()
    }

    /// curl (trusting the provider's and the mesh's CAs) to the gateway:
    /// the status, the headers (lower-case names) and the body.
    fn curl(&self, path: &str, args: &[&str]) -> (u16, Vec<(String, String)>, String) {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "20", "--cacert"])
            .arg(&self.roots)
            .args(args)
            .arg(format!("{}{path}", self.origin()))
            .output()
            .unwrap();
        let text = succeed(&out, &format!("curl {path}\n{}", self.log()));
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        (status, headers, body.to_owned())
    }

    /// curl to the provider: status, headers, body.
    fn curl_idp(&self, path: &str) -> (u16, Vec<(String, String)>, String) {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&self.roots)
            .arg(format!("{}{path}", self.idp_origin()))
            .output()
            .unwrap();
        (200, Vec::new(), succeed(&out, "curl"))
    }

    /// A token from the provider's token endpoint for client `id` acting as
    /// itself, for `audience`.
    fn client_token(&self, id: &str, secret: &str, audience: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(&self.roots)
            .args([
                "-u",
                &format!("{id}:{secret}"),
                "-d",
                "grant_type=client_credentials",
            ])
            .args(["-d", &format!("audience={audience}")])
            .arg(format!("{}/token", self.idp_origin()))
            .output()
            .unwrap();
        let answer: Value = serde_json::from_str(&succeed(&out, "curl /token")).unwrap();
        answer["access_token"].as_str().unwrap().to_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

/// `python tests/interop/SCRIPT PORT ARGS…` on a free port, listening.
fn start_app(python: &Path, script: &str, args: &[&str]) -> (SocketAddr, Running) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut child = Command::new(python)
        .arg(zt_testkit::interop_dir().join(script))
        .arg(addr.port().to_string())
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually(&format!("{script} listens"), || {
        assert!(child.try_wait().unwrap().is_none(), "{script} exited");
        TcpStream::connect(addr).ok()
    });
    (addr, Running(child))
}

/// `zt proxy` with the SVID `NAME.crt` in front of `app`, ready: the process,
/// its inbound address, its log file.
fn sidecar(root: &Path, name: &str, app: SocketAddr, args: &[&str]) -> (Running, SocketAddr, PathBuf) {
    let inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let file = |name: &str| root.join(name).to_str().unwrap().to_owned();
    let log = root.join(format!("{name}.log"));
    let mut child = Command::new(zt_exe())
        .args([
            "proxy",
            "--inbound",
            &inbound.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args(["--app", &app.to_string()])
        .args([
            "--cert",
            &file(&format!("{name}.crt")),
            "--key",
            &file(&format!("{name}.key")),
        ])
        .args(["--bundle", &file("mesh.pem")])
        .args(args)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    eventually(&format!("{name}'s sidecar is ready"), || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{name}'s sidecar exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        matches!(http_get(admin, "/readyz"), Ok((200, _))).then_some(())
    });
    (Running(child), inbound, log)
}

/// Two services behind the gateway's /chain: the frontend (the relay app)
/// calls the backend (the echo app) through its sidecar, passing the
/// person's token on. Both sidecars authenticate it (RequestAuthentication
/// against the provider's JWKS) and log their decisions. The backend lets in
/// only the frontend's SPIFFE ID, and only for staff.
struct Chain {
    frontend: SocketAddr,
    /// The two hops' decision logs.
    logs: [PathBuf; 2],
    _running: Vec<Running>,
}

impl Chain {
    fn start(root: &Path, python: &Path, issuer: &str) -> Self {
        let request_authentication = |name: &str, audiences: &str| {
            format!(
                "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: people, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  jwtRules:
  - issuer: \"{issuer}\"
    jwksUri: \"{issuer}/jwks\"
    audiences: {audiences}
    forwardOriginalToken: true
---
"
            )
        };
        let frontend_policies = root.join("frontend-policies");
        std::fs::create_dir(&frontend_policies).unwrap();
        std::fs::write(
            frontend_policies.join("frontend.yaml"),
            format!(
                "{}apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: frontend, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: frontend}}}}
  rules:
  - from: [{{source: {{principals: [\"example.org/ns/edge/sa/gateway\"], requestPrincipals: [\"{issuer}/*\"]}}}}]
",
                request_authentication("frontend", &format!("[\"{FRONTEND}\"]"))
            ),
        )
        .unwrap();
        let backend_policies = root.join("backend-policies");
        std::fs::create_dir(&backend_policies).unwrap();
        // The frontend passes the person's token on as it came (its audience
        // is the frontend's): the backend takes it only from the frontend's
        // SVID, and decides on both.
        std::fs::write(
            backend_policies.join("backend.yaml"),
            format!(
                "{}apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: backend, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  rules:
  - from: [{{source: {{principals: [\"example.org/ns/demo/sa/frontend\"], requestPrincipals: [\"{issuer}/*\"]}}}}]
    when:
    - {{key: \"request.auth.claims[groups]\", values: [staff]}}
",
                request_authentication("backend", &format!("[\"{FRONTEND}\", \"{BACKEND}\"]"))
            ),
        )
        .unwrap();
        let provider_ca = root.join("provider.pem");
        let provider_ca = provider_ca.to_str().unwrap();
        let (echo, echo_process) = start_app(python, "echo_app.py", &[]);
        let backend_log = root.join("backend-decisions.log");
        let (backend_proxy, backend, _) = sidecar(
            root,
            "backend",
            echo,
            &[
                "--allow-spiffe-id",
                FRONTEND,
                "--policy-dir",
                backend_policies.to_str().unwrap(),
                "--namespace",
                "demo",
                "--label",
                "app=backend",
                "--jwks-ca",
                provider_ca,
                "--decision-log",
                backend_log.to_str().unwrap(),
            ],
        );
        let outbound = free_port();
        let (relay, relay_process) = start_app(python, "relay_app.py", &[&outbound.to_string()]);
        let frontend_log = root.join("frontend-decisions.log");
        let (frontend_proxy, frontend, _) = sidecar(
            root,
            "frontend",
            relay,
            &[
                "--allow-spiffe-id",
                GATEWAY_ID,
                "--policy-dir",
                frontend_policies.to_str().unwrap(),
                "--namespace",
                "demo",
                "--label",
                "app=frontend",
                "--jwks-ca",
                provider_ca,
                "--decision-log",
                frontend_log.to_str().unwrap(),
                "--upstream",
                &format!("127.0.0.1:{outbound},{backend},{BACKEND}"),
            ],
        );
        Self {
            frontend,
            logs: [frontend_log, backend_log],
            _running: vec![echo_process, backend_proxy, relay_process, frontend_proxy],
        }
    }

    /// The request principals and decisions of hop `n`'s decision log, in order.
    fn decisions(&self, n: usize) -> Vec<(Option<String>, String, String)> {
        std::fs::read_to_string(&self.logs[n])
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|record| record.get("decision").is_some())
            .map(|record| {
                (
                    record["request_principal"].as_str().map(str::to_owned),
                    record["decision"].as_str().unwrap().to_owned(),
                    record["path"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

/// Headless Chromium opens /internal through the gateway, is sent to sign in,
/// signs in with a passkey and lands on the app, which sees the verified
/// person (identity headers and an exchanged token for its audience, never
/// the gateway's cookie). After `zt session revoke`, the next request goes
/// back to sign in, within a second. Bob, signed in but not staff, gets the
/// 403 page. Access tokens live 4 s here: the session outlives them,
/// refreshed.
///
/// Two hops: /chain goes to a frontend that calls a backend on the person's
/// behalf; the backend's sidecar authenticates the person's token and lets
/// the call in only for staff coming through the frontend's SVID: alice's
/// call passes, the same call without her token and bob's are denied, and
/// both hops' decision logs name the same person.
#[test]
fn a_browser_signs_in_with_a_passkey_through_the_gateway_and_loses_access_when_revoked() {
    const TEST: &str = "a_browser_signs_in_with_a_passkey_through_the_gateway_and_loses_access_when_revoked";
    let (Some(node), Some(_), Some(python)) = (
        zt_testkit::node(TEST),
        zt_testkit::chromium(TEST),
        zt_testkit::python(TEST),
    ) else {
        return;
    };
    // Access tokens of 4 s: the session outlives several, refreshed.
    let stack = Stack::start_with(&python, &["--idp-access-ttl", "4s"]);
    let (origin, idp) = (stack.origin(), stack.idp_origin());
    let internal = format!("{origin}/internal/report?q=1");
    let socket = stack.server.socket();
    let revoke = json!([
        zt_exe(),
        "session",
        "revoke",
        "--user",
        "alice",
        "--socket",
        socket
    ]);
    let script = json!({
        "ca": stack.roots,
        "timeout": 20000,
        "steps": [
            ["goto", stack.invite("alice")],
            ["click", "#enroll-passkey"],
            ["waitForSelector", "#enroll-done"],
            ["goto", internal],
            ["waitForURL", { "prefix": idp }],
            ["click", "#passkey-sign-in"],
            ["waitForURL", { "prefix": internal }],
            ["text", "body"],
            ["goto", format!("{origin}/chain/report")],
            ["text", "body"],
            ["goto", format!("{origin}/chain/no-token")],
            ["text", "body"],
            // Past the first access token's life: the session goes on.
            ["run", ["sleep", "5"]],
            // Ten requests at once, as a page's assets come: the refresh is
            // done once, and every one passes.
            ["evaluate", "Promise.all(Array.from({length: 10}, () => fetch('/internal/report').then(r => r.status)))"],
            ["goto", internal],
            ["text", "body"],
            ["run", revoke],
            ["now"],
            ["gotoUntil", internal, idp],
            ["now"],
            // Bob: signed in, not staff.
            ["clearCookies"],
            ["removeCredentials"],
            ["goto", stack.invite("bob")],
            ["click", "#enroll-passkey"],
            ["waitForSelector", "#enroll-done"],
            ["goto", format!("{origin}/")],
            ["waitForURL", { "prefix": idp }],
            ["click", "#passkey-sign-in"],
            ["waitForURL", { "prefix": format!("{origin}/") }],
            ["goto", internal],
            ["text", "#user"],
            ["text", "#policy"],
            ["goto", format!("{origin}/chain/report")],
            ["text", "body"],
        ],
    });
    let results = browse(&node, stack.dir.path(), &script);
    let echoed: Value = serde_json::from_str(results[0]["value"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {results:?}\n{}", stack.log()));
    let headers = &echoed["headers"];
    let header = |name: &str| {
        headers
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| {
                let values: Vec<&str> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                values.join(",")
            })
    };
    assert_eq!(header("x-zt-user").as_deref(), Some("alice"), "{echoed}");
    assert_eq!(header("x-zt-groups").as_deref(), Some("staff"));
    assert!(header("x-zt-amr").unwrap().contains("hwk"));
    assert!(
        header("cookie").is_none_or(|c| !c.contains("__Host-zt")),
        "{echoed}"
    );
    let token = header("authorization").unwrap();
    let claims = jwt_claims(token.strip_prefix("Bearer ").unwrap());
    assert_eq!(claims["aud"], SERVICE_ONE, "exchanged for the upstream: {claims}");
    assert_eq!(claims["act"]["sub"], "zt-gateway", "the gateway acts: {claims}");
    assert_eq!(
        claims["preferred_username"], "alice",
        "the person's claims travel: {claims}"
    );
    assert_eq!(claims["groups"], json!(["staff"]));
    assert_eq!(echoed["path"], "/internal/report?q=1");

    // Two hops: the backend let alice's call through the frontend in, on
    // her claims; without her token, or with bob's, it refused.
    let hop = |n: usize| -> Value { serde_json::from_str(results[n]["value"].as_str().unwrap()).unwrap() };
    let through = hop(1);
    assert_eq!(through["status"], 200, "{through}");
    let backend_saw: Value = serde_json::from_str(through["next"].as_str().unwrap()).unwrap();
    assert_eq!(backend_saw["path"], "/chain/report");
    let no_token = hop(2);
    assert_eq!(no_token["status"], 403, "without the person's token: {no_token}");

    // Refreshed: the same person, a new token (exchanged from a new access token).
    assert_eq!(results[3]["value"], json!(vec![200; 10]), "{}", stack.log());
    let later: Value = serde_json::from_str(results[4]["value"].as_str().unwrap()).unwrap();
    assert_eq!(later["headers"]["x-zt-user"], json!(["alice"]), "{later}");
    let later_token = later["headers"]["authorization"][0].as_str().unwrap();
    let later_claims = jwt_claims(later_token.strip_prefix("Bearer ").unwrap());
    assert_ne!(
        later_claims["jti"], claims["jti"],
        "a fresh token after the first expired"
    );
    assert!(later_claims["exp"].as_u64() > claims["exp"].as_u64());

    // Revoked: back to the provider within a second of `zt session revoke`
    // returning (the back-channel logout is asynchronous: the loads before it
    // arrives still pass, and are counted).
    let (before, after) = (
        results[5]["value"].as_u64().unwrap(),
        results[7]["value"].as_u64().unwrap(),
    );
    assert!(
        after - before < 1000,
        "sent to sign in {} ms after the revocation ({} loads)\n{}",
        after - before,
        results[6]["value"],
        stack.log()
    );

    assert_eq!(results[8]["value"], "bob", "the 403 page names who was refused");
    let policy = results[9]["value"].as_str().unwrap();
    assert!(!policy.is_empty(), "the 403 page names the policy");
    let bobs = hop(10);
    assert_eq!(bobs["status"], 403, "bob is not staff: {bobs}");

    // Both hops' decision logs name the same person for the same call.
    let alice = format!("{idp}/{}", claims["sub"].as_str().unwrap());
    let frontend = stack.chain.decisions(0);
    let backend = stack.chain.decisions(1);
    let of = |log: &[(Option<String>, String, String)], path: &str| -> Vec<(Option<String>, String)> {
        log.iter()
            .filter(|(_, _, p)| p == path)
            .map(|(who, d, _)| (who.clone(), d.clone()))
            .collect()
    };
    assert_eq!(
        of(&frontend, "/chain/report")[0],
        (Some(alice.clone()), "ALLOW".into()),
        "{frontend:?}"
    );
    assert_eq!(
        of(&backend, "/chain/report")[0],
        (Some(alice.clone()), "ALLOW".into()),
        "{backend:?}"
    );
    assert_eq!(of(&frontend, "/chain/no-token")[0], (Some(alice), "ALLOW".into()));
    assert_eq!(of(&backend, "/chain/no-token")[0], (None, "DENY".into()));
    // The claims the decisions turned on are recorded with them.
    let records = |path: &Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    };
    let allowed = records(&stack.chain.logs[1])
        .into_iter()
        .find(|r| r["path"] == "/chain/report" && r["decision"] == "ALLOW")
        .unwrap();
    assert_eq!(
        allowed["request_claims"],
        json!({"groups": ["staff"]}),
        "{allowed}"
    );
    let at_gateway = records(&stack.dir.path().join("decisions.log"));
    let denied = at_gateway
        .iter()
        .find(|r| r["path"] == "/internal/report" && r["decision"] == "DENY")
        .unwrap();
    assert_eq!(
        denied["request_claims"]["groups"],
        json!([]),
        "bob's groups: {denied}"
    );
    assert!(
        denied["request_claims"]["amr"]
            .as_array()
            .unwrap()
            .contains(&json!("hwk")),
        "{denied}"
    );
    assert!(denied["request_principal"].as_str().unwrap().starts_with(&idp));
    let bob_at_backend = &of(&backend, "/chain/report")[1];
    assert_eq!(bob_at_backend.1, "DENY");
    assert!(
        bob_at_backend
            .0
            .as_deref()
            .is_some_and(|who| who.starts_with(&idp)),
        "{bob_at_backend:?}"
    );
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// A person at a terminal: `zt login` (the device flow, approved in Chromium
/// with a passkey), then curl and Python `requests` through the gateway with
/// `zt login --print-token`: alice reaches /internal and the two-hop /chain;
/// after `zt session revoke` the same token gets a 401 whose challenge says
/// to sign in again.
#[test]
fn zt_login_tokens_reach_services_through_the_gateway_with_curl_and_requests() {
    use std::io::BufRead as _;
    const TEST: &str = "zt_login_tokens_reach_services_through_the_gateway_with_curl_and_requests";
    let (Some(node), Some(_), Some(python)) = (
        zt_testkit::node(TEST),
        zt_testkit::chromium(TEST),
        zt_testkit::python(TEST),
    ) else {
        return;
    };
    let stack = Stack::start(&python);
    let issuer = stack.idp_origin();
    let config = stack.dir.path().join("config");
    let provider_ca = stack.dir.path().join("provider.pem");
    let login_args = [
        "--issuer",
        issuer.as_str(),
        "--client-id",
        "zt-cli",
        "--ca",
        provider_ca.to_str().unwrap(),
    ];
    let mut login = Command::new(zt_exe())
        .arg("login")
        .args(login_args)
        .env("XDG_CONFIG_HOME", &config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(login.stderr.take().unwrap());
    let user_code = loop {
        let mut line = String::new();
        assert!(said.read_line(&mut line).unwrap() > 0, "zt login ended");
        if let Some(code) = line.trim().strip_prefix("and enter the code ") {
            break code.to_owned();
        }
    };
    browse(
        &node,
        stack.dir.path(),
        &json!({
            "ca": stack.roots,
            "timeout": 20000,
            "steps": [
                ["goto", stack.invite("alice")],
                ["click", "#enroll-passkey"],
                ["waitForSelector", "#enroll-done"],
                ["goto", format!("{issuer}/device?user_code={user_code}")],
                ["click", "#passkey-sign-in"],
                ["waitForURL", { "prefix": format!("{issuer}/device/done") }],
            ],
        }),
    );
    assert!(wait_with_deadline(&mut login).is_some_and(|s| s.success()));
    let out = Command::new(zt_exe())
        .args(["login", "--print-token"])
        .args(login_args)
        .env("XDG_CONFIG_HOME", &config)
        .output()
        .unwrap();
    let token = succeed(&out, "zt login --print-token").trim().to_owned();

    // curl, to /internal (staff with a device-bound passkey).
    let (status, _, body) = stack.curl(
        "/internal/report",
        &["-H", &format!("Authorization: Bearer {token}")],
    );
    assert_eq!(status, 200, "{body}\n{}", stack.log());
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-zt-user"], json!(["alice"]));
    // Who the gateway takes the caller for.
    let (status, _, body) = stack.curl("/.zt/whoami", &["-H", &format!("Authorization: Bearer {token}")]);
    assert_eq!(status, 200, "{body}");
    let whoami: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(whoami["preferred_username"], "alice");
    assert_eq!(whoami["aud"], "zt-cli");
    // Python requests, through both hops.
    let script = "import requests, sys\n\
        r = requests.get(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]}, verify=sys.argv[3], timeout=20)\n\
        print(r.status_code)\nprint(r.text)";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(format!("{}/chain/report", stack.origin()))
        .arg(&token)
        .arg(&stack.roots)
        .output()
        .unwrap();
    let text = succeed(&out, "requests");
    let (status, body) = text.split_once('\n').unwrap();
    assert_eq!(status, "200", "{body}");
    let hop: Value = serde_json::from_str(body).unwrap();
    assert_eq!(hop["status"], 200, "the backend let alice in: {hop}");

    // Revoked at the provider: the gateway refuses the token at once, and
    // its challenge says what to do.
    ok(&stack.server, &["session", "revoke", "--user", "alice"]);
    let challenge = eventually("the gateway refuses the revoked session's token", || {
        let (status, headers, _) = stack.curl(
            "/internal/report",
            &["-H", &format!("Authorization: Bearer {token}")],
        );
        (status == 401).then(|| {
            headers
                .into_iter()
                .find(|(n, _)| n == "www-authenticate")
                .unwrap()
                .1
        })
    });
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{issuer}\", error=\"invalid_token\", error_description=\"the session ended: sign in again\""
        )
    );
}

/// A token signed by a key of our own (`kid` as given), with these claims.
fn forged(kid: Option<&str>, claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let signer = zt_identity::jwt::JwtSigner::from_pkcs8(pkcs8.as_ref()).unwrap();
    let token = zt_identity::jwt::sign_jws(&signer, "at+jwt", claims).unwrap();
    let Some(kid) = kid else { return token };
    // Same signature scheme, the header's kid replaced (and so re-signed).
    let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
    )
    .unwrap();
    let header = b64.encode(json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}).to_string());
    let payload = token.split('.').nth(1).unwrap();
    let input = format!("{header}.{payload}");
    let signature = key.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", b64.encode(signature.as_ref()))
}

/// API clients (curl): no credential is a 401 with RFC 6750's challenge and
/// never a redirect; a browser gets a PKCE sign-in redirect; every bad token
/// (malformed, oversized, alg none, HS256, unknown kid, a real kid with our
/// signature, another audience, expired) is a 401 that never reaches the app;
/// a good one passes with the identity headers a client sent stripped; the
/// sign-in return URL takes local paths only; a cookie the gateway did not
/// seal is no session; a new certificate in the files is served without a
/// restart.
#[test]
fn api_clients_get_401s_that_say_why_and_bad_tokens_never_reach_the_app() {
    const TEST: &str = "api_clients_get_401s_that_say_why_and_bad_tokens_never_reach_the_app";
    let Some(python) = zt_testkit::python(TEST) else {
        return;
    };
    // Access tokens live 3 s here, to watch one expire.
    let stack = Stack::start_with(&python, &["--idp-access-ttl", "3s"]);
    let issuer = stack.idp_origin();
    let header = |headers: &[(String, String)], name: &str| {
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    };

    let (status, headers, body) = stack.curl("/api/x", &["-H", "Accept: application/json"]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        header(&headers, "www-authenticate"),
        Some(format!("Bearer realm=\"{issuer}\""))
    );
    assert!(header(&headers, "location").is_none());

    let (status, headers, _) = stack.curl("/internal?a=1", &["-H", "Accept: text/html"]);
    assert_eq!(status, 303);
    let location = header(&headers, "location").unwrap();
    assert!(
        location.starts_with(&format!("{issuer}/authorize?")),
        "{location}"
    );
    for part in [
        "response_type=code",
        "client_id=zt-gateway",
        "code_challenge_method=S256",
        "code_challenge=",
        "nonce=",
        "state=",
    ] {
        assert!(location.contains(part), "{part}: {location}");
    }
    let cookie = header(&headers, "set-cookie").unwrap();
    assert!(cookie.starts_with("__Host-zt-sign-in="), "{cookie}");
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }

    // Open redirects through the sign-in's return URL.
    for bad in [
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "/%5cevil.example",
        "%2f%2fevil.example",
        "/%2f%2fevil.example",
        "/%252f%252fevil.example",
        "http:evil.example",
    ] {
        let (status, _, body) = stack.curl(
            &format!(
                "/.zt/sign-in?return={}",
                bad.replace('%', "%25").replace('/', "%2F").replace('\\', "%5C")
            ),
            &[],
        );
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _, _) = stack.curl("/.zt/sign-in?return=%2Fapi%2Fok", &[]);
    assert_eq!(status, 303);
    // The gateway's own paths are its own however they are spelled: never
    // passed to an upstream.
    for spelled in [
        "/./.zt/sign-in?return=%2F%2Fevil",
        "/api/../.zt/sign-in?return=%2F%2Fevil",
        "/%2Ezt/sign-in?return=%2F%2Fevil",
    ] {
        let (status, _, body) = stack.curl(spelled, &["--path-as-is"]);
        assert_eq!(status, 400, "{spelled}: {body}");
    }

    // Tokens that must not pass.
    let (_, _, jwks) = stack.curl_idp("/jwks");
    let idp_kid = serde_json::from_str::<Value>(&jwks).unwrap()["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = json!({"iss": issuer, "sub": "mallory", "aud": "zt-gateway", "iat": now(), "exp": now() + 300,
                        "jti": "x", "client_id": "zt-gateway"});
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let unsigned = format!(
        "{}.{}.",
        b64.encode(json!({"alg": "none", "typ": "at+jwt"}).to_string()),
        b64.encode(claims.to_string())
    );
    let hs256 = {
        let header = b64.encode(json!({"alg": "HS256", "typ": "at+jwt", "kid": idp_kid}).to_string());
        let input = format!("{header}.{}", b64.encode(claims.to_string()));
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, jwks.as_bytes());
        format!(
            "{input}.{}",
            b64.encode(aws_lc_rs::hmac::sign(&key, input.as_bytes()).as_ref())
        )
    };
    let secret = {
        let created: Value = serde_json::from_str(&ok(
            &stack.server,
            &[
                "client",
                "add",
                "svc",
                "--secret",
                "--grant",
                "client_credentials",
                "--output",
                "json",
            ],
        ))
        .unwrap();
        created["secret"].as_str().unwrap().to_owned()
    };
    let other_audience = stack.client_token("svc", &secret, "someone-else");
    for (token, what) in [
        ("abc.def".to_owned(), "the token is malformed"),
        ("a".repeat(70 * 1024), "the token is malformed"),
        (unsigned, "the token does not verify"),
        (hs256, "the token does not verify"),
        (forged(None, &claims), "the token does not verify"),
        (forged(Some("unknown"), &claims), "the token does not verify"),
        (forged(Some(&idp_kid), &claims), "the token does not verify"),
        (other_audience, "the token is not for this gateway"),
        (
            forged(
                Some(&idp_kid),
                &json!({"iss": "https://evil.example", "sub": "mallory", "aud": "zt-gateway",
                                           "iat": now(), "exp": now() + 300}),
            ),
            "the token does not verify",
        ),
    ] {
        // HTTP/1.1: curl's HTTP/2 library (nghttp2) will not send a header
        // block over 64 KiB, so the 70 KiB token would never leave curl.
        let (status, headers, body) = stack.curl(
            "/api/x",
            &["--http1.1", "-H", &format!("Authorization: Bearer {token}")],
        );
        assert_eq!(status, 401, "{what}: {body}");
        let challenge = header(&headers, "www-authenticate").unwrap();
        assert!(
            challenge.contains("error=\"invalid_token\"") || challenge.contains("error=\"invalid_request\""),
            "{challenge}"
        );
        assert!(challenge.contains(what), "{what}: {challenge}");
        assert!(
            !body.contains("kid") && !body.contains("signature"),
            "no detail beyond the standard error: {body}"
        );
    }

    // A good token passes; identity headers a client sends never reach the app.
    let good = stack.client_token("svc", &secret, "zt-gateway");
    let (status, _, body) = stack.curl(
        "/api/x",
        &[
            "-H",
            &format!("Authorization: Bearer {good}"),
            "-H",
            "X-Zt-User: admin",
            "-H",
            "x-zt-user: root",
            "-H",
            "X_Zt_User: admin",
            "-H",
            "X-Zt-Groups: staff",
        ],
    );
    assert_eq!(status, 200, "{body}\n{}", stack.log());
    let echoed: Value = serde_json::from_str(&body).unwrap();
    let seen: Vec<String> = echoed["headers"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.to_ascii_lowercase())
        .collect();
    for forged in ["x-zt-user", "x_zt_user", "x-zt-groups", "authorization", "cookie"] {
        assert!(
            !seen.contains(&forged.to_owned()),
            "{forged} reached the app: {seen:?}"
        );
    }
    // Two credentials are one too many; a cookie the gateway did not seal is no session.
    let (status, headers, _) = stack.curl(
        "/api/x",
        &[
            "-H",
            &format!("Authorization: Bearer {good}"),
            "-H",
            "Cookie: __Host-zt-session=v1.AAAA",
        ],
    );
    assert_eq!(status, 401);
    assert!(
        header(&headers, "www-authenticate")
            .unwrap()
            .contains("invalid_request")
    );
    let (status, _, _) = stack.curl("/api/x", &["-H", "Cookie: __Host-zt-session=v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
    assert_eq!(status, 401);
    // A cookie well sealed, by another instance's key, opens nothing here.
    let other = zt_gateway::cookie::CookieKey::from_bytes(&[7; 32]).unwrap();
    let sealed = other
        .seal(
            zt_gateway::cookie::SESSION,
            &other.new_session_id().unwrap(),
            now() + 3600,
        )
        .unwrap();
    let (status, _, _) = stack.curl("/api/x", &["-H", &format!("Cookie: __Host-zt-session={sealed}")]);
    assert_eq!(status, 401);
    // A person the policy does not let in gets JSON, not a page: this
    // client's token has no staff group.
    let (status, headers, body) =
        stack.curl("/internal/x", &["-H", &format!("Authorization: Bearer {good}")]);
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        header(&headers, "content-type").as_deref(),
        Some("application/json")
    );
    let denied: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(denied["error"], "access_denied", "{denied}");

    // Expiry: the challenge tells the client to get a new token.
    let challenge = eventually("the token expires", || {
        let (status, headers, _) = stack.curl("/api/x", &["-H", &format!("Authorization: Bearer {good}")]);
        (status == 401).then(|| header(&headers, "www-authenticate").unwrap())
    });
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{issuer}\", error=\"invalid_token\", error_description=\"the token expired\""
        )
    );
    // A new certificate in the files is served to new connections.
    issue_gateway_svid(stack.dir.path());
    let pem = std::fs::read_to_string(stack.dir.path().join("gateway.crt")).unwrap();
    let leaf: String = pem
        .split("-----END CERTIFICATE-----")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    eventually("the gateway serves the new certificate", || {
        let out = Command::new(&python)
            .args([
                "-c",
                "import ssl, sys; print(ssl.get_server_certificate(('127.0.0.1', int(sys.argv[1]))))",
            ])
            .arg(stack.gateway.port().to_string())
            .output()
            .unwrap();
        let served: String = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        (served == leaf).then_some(())
    });
    // Each refusal counted by reason, at the gateway's admin port.
    for reason in [
        "missing",
        "malformed",
        "too_large",
        "expired",
        "wrong_audience",
        "two_credentials",
    ] {
        let count = sample(
            stack.gateway_admin,
            &format!("zt_gateway_unauthenticated_total{{reason=\"{reason}\"}}"),
        );
        assert!(count.is_some_and(|c| c >= 1.0), "{reason}: {count:?}");
    }
}

/// `zt gateway` refuses a bad configuration at start with one line naming
/// the file, the key and the value, and bad policies with `file:line`.
#[test]
fn bad_configuration_and_policies_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mesh_ca(root);
    std::fs::create_dir(root.join("policies")).unwrap();
    let config = |routes: &str| {
        format!(
            "listen: 127.0.0.1:{}
url: https://localhost
tls: {{cert: gateway.crt, key: gateway.key}}
oidc: {{issuer: \"https://localhost:1\", client_id: gw, client_secret_file: secret, ca: mesh.pem}}
session: {{key_file: cookie.key}}
identity: {{cert: gateway.crt, key: gateway.key, bundle: mesh.pem}}
policy: {{dir: policies, namespace: edge}}
routes:
{routes}",
            free_port()
        )
    };
    let run = |text: &str| {
        let path = root.join("gateway.yaml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(zt_exe())
            .args(["gateway", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = run(&config(
        "  - {path: /app, upstream: \"127.0.0.1:1\", spiffe_id: \"spiffe://Example.org/x\"}\n",
    ));
    assert!(
        said.contains("gateway.yaml: routes[0].spiffe_id: \"spiffe://Example.org/x\""),
        "{said}"
    );
    let said = run(&config(
        "  - {path: /app, upstream: \"127.0.0.1:1\", spiffe_id: \"spiffe://example.org/x\", token: forward}\n",
    ));
    assert!(said.contains("routes[0].token: \"forward\""), "{said}");
    // The configuration is good; a policy is not.
    std::fs::write(
        root.join("policies/bad.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: edge}\nspec:\n  bogus: 1\n",
    )
    .unwrap();
    let said = run(&config(
        "  - {path: /app, upstream: \"127.0.0.1:1\", spiffe_id: \"spiffe://example.org/x\"}\n",
    ));
    assert!(
        said.contains("policy.dir ") && said.contains("bad.yaml:5"),
        "{said}"
    );
    assert!(
        !said.contains("--policy-dir"),
        "the gateway's own key, not the proxy's flag: {said}"
    );
}
