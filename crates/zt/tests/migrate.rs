//! The migration loop of issue 16, end to end, with real processes on loopback:
//! zt server, zt agent, four services (each a plain-HTTP app behind its zt
//! proxy) and an ingress gateway. The mesh runs in PERMISSIVE mTLS with no
//! AuthorizationPolicy (allow-all) while it is observed; policies are generated
//! from the decisions the proxies shipped to zt server, replayed, applied in
//! shadow, promoted where the shadow decisions show no would-be denial, and
//! mTLS is then made STRICT.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Instant;

use serde_json::{Value, json};
use support::*;

/// The namespace of every service (from its SPIFFE ID's `/ns/NS/`).
const NAMESPACE: &str = "shop";
/// The services, each an app behind a proxy that enforces policies from zt server.
const SERVICES: [&str; 4] = ["web", "orders", "users", "payments"];
/// The ingress gateway: a proxy with outbound routes only (no app, no policies).
const GATEWAY: &str = "gateway";

const ALICE: &str = "/users/4f9c2a7e-1b3d-4c5e-8f6a-9b0c1d2e3f40/profile";
/// Alice's account itself, which no one touched while the mesh was observed.
const ALICE_ACCOUNT: &str = "/users/4f9c2a7e-1b3d-4c5e-8f6a-9b0c1d2e3f40";
const BOB: &str = "/users/0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6/profile";
const RECEIPT: &str = "/payments/receipts/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// What the mesh does while it is observed, over mTLS: caller, destination,
/// method, path. Identifiers in paths (numbers, UUIDs, a SHA-256 digest) vary.
const OBSERVED: &[(&str, &str, &str, &str)] = &[
    ("gateway", "web", "GET", "/"),
    ("gateway", "web", "GET", "/account/orders"),
    ("gateway", "web", "POST", "/checkout"),
    ("web", "orders", "GET", "/orders/123"),
    ("web", "orders", "GET", "/orders/456"),
    ("web", "orders", "POST", "/orders"),
    ("web", "orders", "DELETE", "/orders/789"),
    ("payments", "orders", "POST", "/orders/123/paid"),
    ("web", "users", "GET", ALICE),
    ("web", "users", "GET", BOB),
    ("orders", "users", "GET", ALICE),
    ("orders", "payments", "POST", "/payments"),
    ("orders", "payments", "GET", RECEIPT),
];

/// A legacy batch job that calls users in plaintext (PERMISSIVE lets it).
const PLAINTEXT: (&str, &str) = ("users", BOB);

/// Requests the generated policies must deny: no one made them while the mesh
/// was observed (other callers, other methods, sibling paths), or the caller
/// has no identity to allow (`None`: the plaintext job).
const UNOBSERVED: &[(Option<&str>, &str, &str, &str)] = &[
    (Some("orders"), "web", "GET", "/"),
    (Some("gateway"), "web", "GET", "/admin"),
    (Some("web"), "orders", "PUT", "/orders/123"),
    (Some("web"), "orders", "GET", "/orders/123/secret"),
    (Some("payments"), "orders", "GET", "/orders/123"),
    (Some("payments"), "users", "GET", ALICE),
    (Some("web"), "users", "DELETE", ALICE_ACCOUNT),
    (Some("web"), "payments", "POST", "/payments"),
    (Some("orders"), "payments", "DELETE", RECEIPT),
    (None, "users", "GET", BOB),
];

/// Who calls whom: each caller's proxy gets an outbound route per destination.
fn destinations_of(caller: &str) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = OBSERVED
        .iter()
        .filter(|(from, ..)| *from == caller)
        .map(|(_, to, ..)| *to)
        .collect();
    found.dedup();
    found
}

fn spiffe_id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{name}")
}

/// A mesh-wide PeerAuthentication (the root namespace, no selector).
fn mesh_peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {}\nspec:\n  mtls:\n    mode: {mode}\n",
        zt_policy::DEFAULT_ROOT_NAMESPACE
    )
}

/// A plain-HTTP app on a free loopback port, in this process: every request
/// is answered 200 with `SERVICE METHOD PATH CALLER`, CALLER being the `URI` of
/// the `x-forwarded-client-cert` its proxy set (`-` without one).
fn start_app(service: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve(service, stream));
        }
    });
    addr
}

/// Serves the requests of one connection until the client closes it.
fn serve(service: &str, stream: TcpStream) {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reader = BufReader::new(&stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("-").to_owned(),
            parts.next().unwrap_or("-").to_owned(),
        );
        let (mut length, mut caller) = (0usize, "-".to_owned());
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "x-forwarded-client-cert" => {
                    caller = value
                        .split(';')
                        .find_map(|field| field.trim().strip_prefix("URI="))
                        .unwrap_or("-")
                        .to_owned();
                }
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = format!("{service} {method} {path} {caller}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if (&stream).write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// One workload's `zt proxy`; killed on drop.
struct Proxy {
    child: Child,
    stderr: PathBuf,
    admin: SocketAddr,
    /// The inbound (mTLS or, as PeerAuthentication says, plaintext) port of a service.
    inbound: Option<SocketAddr>,
    /// Outbound routes: destination → the plaintext port its app would call.
    routes: BTreeMap<&'static str, SocketAddr>,
}

impl Proxy {
    fn metric(&self, sample: &str) -> Option<f64> {
        support::sample(self.admin, sample)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let text = fs::read_to_string(&self.stderr).unwrap_or_default();
            eprintln!("proxy stderr ({}):\n{text}", self.stderr.display());
        }
    }
}

/// The running mesh.
struct Mesh {
    // Dropped in this order: the proxies before the agent, the agent before the server.
    proxies: BTreeMap<&'static str, Proxy>,
    /// Serves the proxies' SVIDs and policies, and ships their decisions.
    _agent: AgentProcess,
    server: ServerProcess,
    /// Requests that reached a service's proxy, each one decision record.
    decisions: Cell<usize>,
}

impl Mesh {
    fn start(dir: &Path) -> Self {
        let server = ServerProcess::start(&dir.join("server"), None);
        let agent_dir = dir.join("agent");
        fs::create_dir(&agent_dir).unwrap();
        let agent_id = format!("spiffe://{TRUST_DOMAIN}/agent/node-1");
        let agent = AgentProcess::start(&server, &agent_dir, &agent_id);

        // Every port first: callers' routes name their destinations' inbound ports.
        let loopback = || -> SocketAddr { ([127, 0, 0, 1], free_port()).into() };
        let inbound: BTreeMap<&str, SocketAddr> = SERVICES.iter().map(|s| (*s, loopback())).collect();
        let mut proxies = BTreeMap::new();
        for name in SERVICES.into_iter().chain([GATEWAY]) {
            // A workload is told apart by its executable's path (unix:path).
            let exe = dir.join(format!("{name}-proxy"));
            fs::hard_link(env!("CARGO_BIN_EXE_zt"), &exe)
                .or_else(|_| fs::copy(env!("CARGO_BIN_EXE_zt"), &exe).map(|_| ()))
                .unwrap();
            ok(
                &server,
                &[
                    "entry",
                    "create",
                    "--spiffe-id",
                    &spiffe_id(name),
                    "--parent-id",
                    &agent_id,
                    "--selector",
                    &format!("unix:uid:{}", my_uid()),
                    "--selector",
                    &format!("unix:path:{}", exe.display()),
                ],
            );
            let admin = loopback();
            let stderr = dir.join(format!("{name}-proxy.log"));
            let mut command = Command::new(&exe);
            command
                .args(["proxy", "--admin", &admin.to_string()])
                .arg("--socket")
                .arg(&agent.socket);
            let own_inbound = inbound.get(name).copied();
            if let Some(listen) = own_inbound {
                command
                    .args(["--inbound", &listen.to_string()])
                    .args(["--app", &start_app(name).to_string()])
                    .args(["--policies-from-agent", "--label", &format!("app={name}")])
                    .arg("--decision-log")
                    .arg(dir.join(format!("{name}-decisions.log")));
            }
            let mut routes = BTreeMap::new();
            for destination in destinations_of(name) {
                let listen = loopback();
                command.arg("--upstream").arg(format!(
                    "{listen},{},{}",
                    inbound[destination],
                    spiffe_id(destination)
                ));
                routes.insert(destination, listen);
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&stderr).unwrap())
                .spawn()
                .unwrap();
            let mut proxy = Proxy {
                child,
                stderr,
                admin,
                inbound: own_inbound,
                routes,
            };
            eventually(&format!("the {name} proxy ready (holding its SVID)"), || {
                if let Some(status) = proxy.child.try_wait().unwrap() {
                    panic!("the {name} proxy exited: {status}");
                }
                matches!(http_get(admin, "/readyz"), Ok((200, _))).then_some(())
            });
            proxies.insert(name, proxy);
        }
        Self {
            proxies,
            _agent: agent,
            server,
            decisions: Cell::new(0),
        }
    }

    fn proxy(&self, name: &str) -> &Proxy {
        &self.proxies[name]
    }

    /// `method path` from `caller`'s app, through its proxy's outbound route and
    /// mTLS, to `destination`'s proxy and app: the status and the app's answer.
    fn call(&self, caller: &str, destination: &str, method: &str, path: &str) -> (u16, String) {
        let route = self.proxy(caller).routes[destination];
        let body = if method == "POST" { "{}" } else { "" };
        let answer = http_request(route, method, path, &[], body)
            .unwrap_or_else(|e| panic!("{method} {path} from {caller} to {destination}: {e}"));
        self.decisions.set(self.decisions.get() + 1);
        answer
    }

    /// `GET path` in plaintext straight to `destination`'s inbound port.
    fn plaintext(&self, destination: &str, path: &str) -> std::io::Result<(u16, String)> {
        let answer = http_request(self.proxy(destination).inbound.unwrap(), "GET", path, &[], "")?;
        self.decisions.set(self.decisions.get() + 1);
        Ok(answer)
    }

    /// Every [`OBSERVED`] request, each answered 200 by the right app, which
    /// was told the caller's verified SPIFFE ID.
    fn drive_observed(&self) {
        for (caller, destination, method, path) in OBSERVED {
            let (status, body) = self.call(caller, destination, method, path);
            assert_eq!(
                (status, body.trim_end()),
                (
                    200,
                    format!("{destination} {method} {path} {}", spiffe_id(caller)).as_str()
                ),
                "{method} {path} from {caller} to {destination}"
            );
        }
    }

    /// `zt policy apply DIR`: the version stored.
    fn apply(&self, dir: &Path) -> u64 {
        let out = ok(&self.server, &["policy", "apply", dir.to_str().unwrap()]);
        out.lines()
            .find_map(|l| {
                l.split("applied version ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("zt policy apply printed no version: {out}"))
    }

    /// Waits until every service's proxy has policy `version` in force and
    /// its inbound port in mTLS `mode`.
    fn wait_for(&self, version: u64, mode: &str) {
        let started = Instant::now();
        for name in SERVICES {
            let proxy = self.proxy(name);
            let port = proxy.inbound.unwrap().port();
            eventually(
                &format!("version {version} and {mode} in force on the {name} proxy"),
                || {
                    let in_force = proxy.metric("zt_proxy_policy_version") == Some(version as f64)
                        && proxy.metric(&format!("zt_proxy_mtls_mode{{port=\"{port}\",mode=\"{mode}\"}}"))
                            == Some(1.0);
                    in_force.then_some(())
                },
            );
        }
        eprintln!(
            "version {version} ({mode}) on every proxy in {:?}",
            started.elapsed()
        );
    }

    /// The records zt server holds (`zt audit query --server`), once they are
    /// all the decisions made so far.
    fn shipped(&self) -> Vec<Value> {
        let socket = self.server.socket();
        let args = ["--server", "--socket", socket.to_str().unwrap()];
        let started = Instant::now();
        let records = eventually(
            &format!("{} decisions shipped to zt server", self.decisions.get()),
            || Some(audit_query(&args)).filter(|r| r.len() == self.decisions.get()),
        );
        eprintln!("{} decisions shipped in {:?}", records.len(), started.elapsed());
        records
    }
}

fn zt_cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(args)
        .env_remove("ZT_ADMIN_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    succeed(&out, &format!("zt {args:?}"))
}

/// `zt policy eval --policies DIR --request REQUEST`: the decision printed.
fn eval(dir: &Path, request: &Value) -> Value {
    let out = zt_cli(&[
        "policy",
        "eval",
        "--policies",
        dir.to_str().unwrap(),
        "--request",
        &request.to_string(),
    ]);
    serde_json::from_str(&out).unwrap()
}

/// A request as `zt policy eval` reads it.
fn request(principal: Option<&str>, destination: &str, port: u16, method: &str, path: &str) -> Value {
    let (namespace, app) = destination.split_once('/').unwrap();
    json!({
        "source": {"principal": principal, "ip": "127.0.0.1"},
        "destination": {"namespace": namespace, "labels": {"app": app}, "port": port},
        "request": {"method": method, "path": path, "headers": {}},
        "protocol": "http"
    })
}

/// Now, as RFC 3339 to the nanosecond (`--since`).
fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn observed_traffic_becomes_policies_that_are_replayed_promoted_and_enforced_under_strict_mtls() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start(dir.path());
    eprintln!("mesh up in {:?}", started.elapsed());

    // 1. PERMISSIVE mesh-wide, and no AuthorizationPolicy: everything is allowed
    //    and recorded.
    let initial = dir.path().join("initial");
    let peer_authentication = Path::new(zt_policy::DEFAULT_ROOT_NAMESPACE).join("peer-authentication.yaml");
    fs::create_dir_all(initial.join(zt_policy::DEFAULT_ROOT_NAMESPACE)).unwrap();
    fs::write(
        initial.join(&peer_authentication),
        mesh_peer_authentication("PERMISSIVE"),
    )
    .unwrap();
    assert_eq!(mesh.apply(&initial), 1);
    mesh.wait_for(1, "PERMISSIVE");

    // 2. The mesh at work: every observed request twice (mTLS), and the legacy
    //    job twice in plaintext.
    for _ in 0..2 {
        mesh.drive_observed();
        let (destination, path) = PLAINTEXT;
        let (status, body) = mesh.plaintext(destination, path).unwrap();
        assert_eq!(
            (status, body.trim_end()),
            (200, format!("users GET {path} -").as_str())
        );
    }

    // 3. Policies from what the proxies shipped to zt server, once all of it is there.
    let observed = mesh.shipped();
    let plaintext_records = observed
        .iter()
        .filter(|r| r["source_principal"].is_null())
        .count();
    assert_eq!(plaintext_records, 2, "{observed:?}");
    let socket = mesh.server.socket();
    let socket = socket.to_str().unwrap();
    let generated = dir.path().join("generated");
    let enforced = dir.path().join("generated-enforced");
    let report = zt_cli(&[
        "policy",
        "generate",
        "--server",
        "--socket",
        socket,
        "--out",
        generated.to_str().unwrap(),
    ]);
    eprintln!("{report}");
    let total = observed.len();
    let mtls = total - plaintext_records;
    assert!(
        report.starts_with(&format!(
            "4 policies (6 rules) written to {} from {mtls} of {total} observed requests",
            generated.display()
        )),
        "{report}"
    );
    let (_, without_mtls) = report
        .split_once("callers still without mTLS")
        .unwrap_or_else(|| panic!("no plaintext caller reported: {report}"));
    let first = without_mtls.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("  127.0.0.1 → shop/users: 2 requests, last seen "),
        "{report}"
    );
    // The proxies' own logs (--log) say the same as the copies zt server holds.
    let from_logs = dir.path().join("generated-from-logs");
    let mut args = vec!["policy", "generate", "--out", from_logs.to_str().unwrap()];
    let logs: Vec<String> = SERVICES
        .iter()
        .map(|s| {
            dir.path()
                .join(format!("{s}-decisions.log"))
                .display()
                .to_string()
        })
        .collect();
    for log in &logs {
        args.extend(["--log", log.as_str()]);
    }
    assert_eq!(
        zt_cli(&args).replace(&*from_logs.to_string_lossy(), "OUT"),
        report.replace(&*generated.to_string_lossy(), "OUT")
    );
    for service in SERVICES {
        let file = Path::new(NAMESPACE).join(format!("{service}.yaml"));
        assert_eq!(
            fs::read_to_string(from_logs.join(&file)).unwrap(),
            fs::read_to_string(generated.join(&file)).unwrap()
        );
    }
    // The same policies, enforcing, for the replay (zt policy eval prints the
    // enforced decision only).
    zt_cli(&[
        "policy",
        "generate",
        "--server",
        "--socket",
        socket,
        "--out",
        enforced.to_str().unwrap(),
        "--enforce",
    ]);
    for service in SERVICES {
        let file = Path::new(NAMESPACE).join(format!("{service}.yaml"));
        let shadow = fs::read_to_string(generated.join(&file)).unwrap();
        assert!(shadow.contains("istio.io/dry-run: \"true\""), "{shadow}");
        let without_dry_run: String = shadow
            .lines()
            .filter(|l| !l.contains("dry-run") && !l.contains("Dry-run") && l.trim() != "annotations:")
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(fs::read_to_string(enforced.join(&file)).unwrap(), without_dry_run);
    }

    // 4. Every observed request of a verified caller, replayed, is allowed;
    //    nothing else is.
    let replay_started = Instant::now();
    let mut replayed = 0;
    for record in observed.iter().filter(|r| !r["source_principal"].is_null()) {
        assert_eq!(record["decision"], "ALLOW", "{record}");
        let mut replay = request(
            record["source_principal"].as_str(),
            record["destination"].as_str().unwrap(),
            u16::try_from(record["port"].as_u64().unwrap()).unwrap(),
            record["method"].as_str().unwrap(),
            record["path"].as_str().unwrap(),
        );
        replay["source"]["ip"] = record["source_ip"].clone();
        replay["request"]["host"] = record["host"].clone();
        let decision = eval(&enforced, &replay);
        let (namespace, app) = record["destination"].as_str().unwrap().split_once('/').unwrap();
        assert_eq!(
            (&decision["decision"], decision["policy"].as_str()),
            (
                &json!("ALLOW"),
                Some(format!("{namespace}/{app}-observed").as_str())
            ),
            "{record}\n→ {decision}"
        );
        replayed += 1;
    }
    assert_eq!(replayed, 2 * OBSERVED.len());
    for (caller, destination, method, path) in UNOBSERVED {
        let port = mesh.proxy(destination).inbound.unwrap().port();
        let principal = caller.map(spiffe_id);
        let unobserved = request(
            principal.as_deref(),
            &format!("{NAMESPACE}/{destination}"),
            port,
            method,
            path,
        );
        let decision = eval(&enforced, &unobserved);
        assert_eq!(decision["decision"], "DENY", "{unobserved}\n→ {decision}");
        assert_eq!(decision["policy"], Value::Null, "{decision}");
    }
    eprintln!(
        "{replayed} observed requests allowed, {} unobserved denied, in {:?}",
        UNOBSERVED.len(),
        replay_started.elapsed()
    );

    // 5. The generated set in shadow, with the PeerAuthentication; the same
    //    traffic again, and for users a request its policy would deny (a
    //    method and path never seen) plus the plaintext job. Promote: all but
    //    users' policy.
    fs::create_dir_all(generated.join(zt_policy::DEFAULT_ROOT_NAMESPACE)).unwrap();
    fs::write(
        generated.join(&peer_authentication),
        mesh_peer_authentication("PERMISSIVE"),
    )
    .unwrap();
    assert_eq!(mesh.apply(&generated), 2);
    mesh.wait_for(2, "PERMISSIVE");
    let since = rfc3339_now();
    mesh.drive_observed();
    let (status, _) = mesh.call("web", "users", "DELETE", ALICE_ACCOUNT);
    assert_eq!(status, 200, "a dry-run policy denies nothing");
    assert_eq!(mesh.plaintext(PLAINTEXT.0, PLAINTEXT.1).unwrap().0, 200);
    let shadowed = mesh.shipped();
    let would_deny: Vec<&Value> = shadowed
        .iter()
        .filter(|r| r["policy_version"] == "v2" && r["dry_run"] == "DENY (no policy)")
        .collect();
    assert_eq!(would_deny.len(), 2, "{would_deny:?}");
    assert!(
        would_deny
            .iter()
            .all(|r| r["destination"] == "shop/users" && r["decision"] == "ALLOW")
    );

    let promote = zt_cli(&[
        "policy",
        "promote",
        generated.to_str().unwrap(),
        "--server",
        "--socket",
        socket,
        "--since",
        &since,
    ]);
    eprintln!("{promote}");
    // The evidence: one pass of the observed traffic to each, users' two more.
    let served_to = |service: &str| OBSERVED.iter().filter(|(_, to, ..)| *to == service).count();
    for service in ["web", "orders", "payments"] {
        let verdict = format!(
            "promote  shop/{service}-observed ({}:1): {} served requests evaluated in shadow, none would have been denied",
            generated
                .join(NAMESPACE)
                .join(format!("{service}.yaml"))
                .display(),
            served_to(service)
        );
        assert!(promote.contains(&verdict), "{verdict}: {promote}");
    }
    let verdict = format!(
        "keep     shop/users-observed ({}:1): would have denied 2 of {} served requests, e.g.:",
        generated.join(NAMESPACE).join("users.yaml").display(),
        served_to("users") + 2
    );
    assert!(promote.contains(&verdict), "{verdict}: {promote}");
    let examples = [
        format!(
            "DELETE {ALICE_ACCOUNT} from {} to shop/users (1×)",
            spiffe_id("web")
        ),
        format!("GET {BOB} from plaintext 127.0.0.1 (no mTLS: move it to mTLS first) to shop/users (1×)"),
    ];
    for example in examples {
        assert!(promote.contains(&example), "{example}: {promote}");
    }
    assert!(
        promote.contains("3 of 4 dry-run policies promoted to enforce"),
        "{promote}"
    );
    for service in SERVICES {
        let text = fs::read_to_string(generated.join(NAMESPACE).join(format!("{service}.yaml"))).unwrap();
        assert_eq!(
            text.contains("istio.io/dry-run"),
            service == "users",
            "{service}.yaml after promote:\n{text}"
        );
    }

    // 6. STRICT: the plaintext job is refused at the TLS handshake; mTLS callers
    //    keep their promoted routes, and only those.
    let not_tls = "zt_proxy_refused_total{reason=\"not_tls\"}";
    let users = mesh.proxy("users");
    assert_eq!(users.metric(not_tls), Some(0.0));
    fs::write(
        generated.join(&peer_authentication),
        mesh_peer_authentication("STRICT"),
    )
    .unwrap();
    assert_eq!(mesh.apply(&generated), 3);
    mesh.wait_for(3, "STRICT");
    let refused = mesh.plaintext(PLAINTEXT.0, PLAINTEXT.1);
    assert!(refused.is_err(), "plaintext under STRICT: {refused:?}");
    eventually("the plaintext connection counted as not TLS", || {
        (users.metric(not_tls) == Some(1.0)).then_some(())
    });
    mesh.drive_observed();
    assert_eq!(mesh.call("web", "orders", "GET", "/orders/123/secret").0, 403);
    assert_eq!(mesh.call("payments", "orders", "GET", "/orders/123").0, 403);
    assert_eq!(
        mesh.call("web", "users", "DELETE", ALICE_ACCOUNT).0,
        200,
        "users' policy is still in shadow"
    );
    eprintln!("the migration loop ran in {:?}", started.elapsed());
}
