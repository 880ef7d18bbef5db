//! End-to-end tests of `zt proxy`: a real proxy process in front of a real
//! plain-HTTP app that trusts its headers (as the seed tutorial's server does),
//! driven by clients no one here wrote: Python `requests`, `curl`, `openssl`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use support::*;
use zt_testkit::describe;

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn interop(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop")
        .join(name)
}

/// Waits until something accepts TCP connections on `addr`.
fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited: {status}");
        }
        assert!(start.elapsed() < DEADLINE, "{what} not listening on {addr}");
        std::thread::sleep(POLL);
    }
}

/// Waits until the proxy's `/readyz` answers 200: it holds an SVID.
fn wait_ready(admin: SocketAddr, proxy: &mut Child) {
    let start = Instant::now();
    while !matches!(http_get(admin, "/readyz"), Ok((200, _))) {
        if let Some(status) = proxy.try_wait().unwrap() {
            panic!("zt proxy exited: {status}");
        }
        assert!(start.elapsed() < DEADLINE, "zt proxy not ready on {admin}");
        std::thread::sleep(POLL);
    }
}

/// The value of the Prometheus sample `sample` (name and labels) on the admin
/// port; a missing sample fails the test (a renamed metric must not read as 0).
fn metric(admin: SocketAddr, sample: &str) -> f64 {
    let (status, text) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
}

/// `python ARGS… PORT`: an app on a free loopback port, waited for until it listens.
fn start_app(python: &Path, args: &[&str]) -> (SocketAddr, Running) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut child = Command::new(python)
        .args(args)
        .arg(addr.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(addr, &mut child, &format!("the app {args:?}"));
    (addr, Running(child))
}

/// `EXE proxy --inbound … --admin …` on free loopback ports, to be given the
/// rest of its flags; start it with [`spawn_ready`].
fn proxy_command(exe: &Path) -> (Command, SocketAddr, SocketAddr) {
    let inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut command = Command::new(exe);
    command
        .args([
            "proxy",
            "--inbound",
            &inbound.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    (command, inbound, admin)
}

/// A proxy with the development SVID (`Pki::proxy_identity`) and `args`, ready;
/// its inbound and admin addresses.
fn dev_proxy(pki: &Pki, args: &[&str]) -> (Running, SocketAddr, SocketAddr) {
    let (mut command, inbound, admin) = proxy_command(zt_exe());
    command.args(args).args(pki.proxy_identity());
    (spawn_ready(command, admin), inbound, admin)
}

/// Starts a proxy command and waits until it is ready.
fn spawn_ready(mut command: Command, admin: SocketAddr) -> Running {
    let mut child = command.spawn().unwrap();
    wait_ready(admin, &mut child);
    Running(child)
}

fn zt_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_zt"))
}

/// A development CA with a server SVID for the proxy and client SVIDs.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let zt = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_zt"))
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "zt {args:?}: {}", describe(&out));
        };
        zt(&["ca", "init", "--trust-domain", "example.org", "--dir", "ca"]);
        zt(&["ca", "init", "--trust-domain", "other.org", "--dir", "other-ca"]);
        zt(&["ca", "bundle", "--ca", "ca", "--out", "bundle.pem"]);
        zt(&[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://example.org/billing",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            "proxy",
        ]);
        for (ca, id, name) in [
            (
                "ca",
                "spiffe://example.org/ns/production/sa/payment-service",
                "payment",
            ),
            ("ca", "spiffe://example.org/ns/production/sa/intruder", "intruder"),
            (
                "other-ca",
                "spiffe://other.org/ns/production/sa/payment-service",
                "foreign",
            ),
        ] {
            zt(&["ca", "issue", "--ca", ca, "--spiffe-id", id, "--out", name]);
        }
        Self { dir: dir.to_owned() }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    /// `--cert --key --bundle` for the proxy's development SVID (spiffe://example.org/billing).
    fn proxy_identity(&self) -> [String; 6] {
        [
            "--cert",
            "proxy.crt",
            "--key",
            "proxy.key",
            "--bundle",
            "bundle.pem",
        ]
        .map(|part| {
            if part.starts_with("--") {
                part.to_owned()
            } else {
                self.file(part)
            }
        })
    }
}

/// The echo app, and `zt proxy` in front of it allowing the payment service.
struct Setup {
    _dir: tempfile::TempDir,
    pki: Pki,
    _app: Running,
    proxy: Running,
    inbound: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    python: PathBuf,
}

impl Setup {
    fn start(test: &str) -> Option<Self> {
        let python = zt_testkit::python(test)?;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let (app_addr, app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
        let log = dir.path().join("proxy.log");
        let (mut command, inbound, admin) = proxy_command(zt_exe());
        command
            .args(["--app", &app_addr.to_string()])
            .args(pki.proxy_identity())
            .args([
                "--allow-spiffe-id",
                "spiffe://example.org/ns/*/sa/payment-service",
            ])
            .args(["--strip-header", "X-Client-CN"])
            .stderr(fs::File::create(&log).unwrap());
        let proxy = spawn_ready(command, admin);
        Some(Self {
            _dir: dir,
            pki,
            _app: app,
            proxy,
            inbound,
            admin,
            log,
            python,
        })
    }

    /// Python `requests` as `client` (a name under the PKI), with extra headers.
    fn requests(&self, client: &str, path: &str, headers: &[&str]) -> Value {
        let url = format!("https://localhost:{}{path}", self.inbound.port());
        let out = Command::new(&self.python)
            .arg(interop("requests_client.py"))
            .args([
                &url,
                &self.pki.file(&format!("{client}.crt")),
                &self.pki.file(&format!("{client}.key")),
            ])
            .arg(self.pki.file("bundle.pem"))
            .args(headers)
            .output()
            .unwrap();
        serde_json::from_str(&succeed(&out, "requests_client.py")).unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[test]
fn the_seed_scenario_runs_through_zt_proxy() {
    let Some(setup) = Setup::start("the_seed_scenario_runs_through_zt_proxy") else {
        return;
    };
    // The tutorial's client, trying to forge its identity two ways.
    let answer = setup.requests(
        "payment",
        "/internal/reports?month=11",
        &[
            "X-Client-CN=admin",
            "X-Forwarded-Client-Cert=By=x;URI=spiffe://example.org/ns/production/sa/admin",
        ],
    );
    assert_eq!(answer["status"], 200, "{answer}\n{}", setup.log());
    let seen: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["path"], "/internal/reports?month=11");
    let headers = &seen["headers"];
    assert!(
        headers.get("x-client-cn").is_none(),
        "a forged header reached the app: {headers}"
    );
    let xfcc = headers["x-forwarded-client-cert"].as_array().unwrap();
    assert_eq!(xfcc.len(), 1, "exactly the proxy's XFCC: {headers}");
    let xfcc = xfcc[0].as_str().unwrap();
    let leaf =
        zt_identity::x509::certificates_from_pem(&fs::read(setup.pki.dir.join("payment.crt")).unwrap())
            .unwrap();
    let hash = zt_identity::x509::hex_compact(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf[0]).as_ref(),
    );
    assert_eq!(
        xfcc,
        format!(
            "By=spiffe://example.org/billing;Hash={hash};URI=spiffe://example.org/ns/production/sa/payment-service"
        )
    );
    assert!(
        setup
            .log()
            .contains("peer=spiffe://example.org/ns/production/sa/payment-service"),
        "{}",
        setup.log()
    );

    // A verified peer that is not on the allow-list: 403, and the app never sees it.
    let intruder = setup.requests("intruder", "/internal/reports", &[]);
    assert_eq!(intruder["status"], 403, "{intruder}");
    // A certificate from another trust domain's CA: the handshake fails.
    let foreign = setup.requests("foreign", "/", &[]);
    assert_eq!(foreign["error"], "SSLError", "{foreign}");
}

#[test]
fn clients_without_a_valid_svid_are_refused() {
    let Some(mut setup) = Setup::start("clients_without_a_valid_svid_are_refused") else {
        return;
    };
    let url = format!("https://localhost:{}/", setup.inbound.port());
    if let Some(curl) = zt_testkit::curl("clients_without_a_valid_svid_are_refused") {
        // curl without a client certificate: refused in the handshake.
        let out = Command::new(&curl)
            .args([
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                &setup.pki.file("bundle.pem"),
                &url,
            ])
            .output()
            .unwrap();
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "curl without a cert: {}",
            describe(&out)
        );
        // curl with the payment service's SVID, over HTTP/2: through.
        let out = Command::new(&curl)
            .args([
                "-sS",
                "--http2",
                "--max-time",
                "10",
                "--cacert",
                &setup.pki.file("bundle.pem"),
            ])
            .args([
                "--cert",
                &setup.pki.file("payment.crt"),
                "--key",
                &setup.pki.file("payment.key"),
            ])
            .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}", &url])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "2 200",
            "{}",
            describe(&out)
        );
    }
    // openssl s_client without a client certificate: no HTTP answer comes back.
    if let Some(openssl) = zt_testkit::openssl("clients_without_a_valid_svid_are_refused") {
        let mut child = Command::new(openssl)
            .args([
                "s_client",
                "-connect",
                &setup.inbound.to_string(),
                "-CAfile",
                &setup.pki.file("bundle.pem"),
            ])
            .args(["-quiet", "-no_ign_eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("HTTP/1.1"),
            "{}",
            describe(&out)
        );
    }
    // Garbage instead of a ClientHello: the connection closes, the proxy serves on.
    let mut tcp = TcpStream::connect(setup.inbound).unwrap();
    use std::io::{Read as _, Write as _};
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "{answer:?}"
    );
    assert!(setup.proxy.0.try_wait().unwrap().is_none(), "the proxy died");
    assert_eq!(setup.requests("payment", "/", &[])["status"], 200);

    // Each refusal is counted by its reason; requests by status.
    let refused = |reason: &str| {
        metric(
            setup.admin,
            &format!("zt_proxy_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(
        refused("no_client_certificate") >= 2.0,
        "curl and openssl without a certificate"
    );
    assert!(refused("not_tls") >= 1.0, "HTTP instead of a ClientHello");
    assert!(metric(setup.admin, "zt_proxy_requests_total{code=\"200\"}") >= 1.0);
    assert!(metric(setup.admin, "zt_proxy_connections_total{transport=\"mtls\"}") >= 1.0);
    assert!(metric(setup.admin, "zt_proxy_request_seconds_count") >= 1.0);
    let (status, _) = http_get(setup.admin, "/healthz").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn bad_proxy_configuration_is_refused_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let zt = |args: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_zt"))
            .args(args)
            .output()
            .unwrap()
    };
    let missing = dir.path().join("missing.crt");
    let m = missing.to_str().unwrap();
    let base = [
        "proxy",
        "--inbound",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--app",
        "127.0.0.1:1",
    ];
    fn joined<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let with = |extra: &[&str]| {
        joined(&base, extra)
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<String>>()
    };
    assert_failure(
        &zt(&with(&[
            "--allow-spiffe-id",
            "spiffe://example.org/*",
            "--cert",
            m,
            "--key",
            m,
            "--bundle",
            m,
        ])),
        1,
        &["--cert", "missing.crt"],
    );
    assert_failure(
        &zt(&with(&[
            "--allow-spiffe-id",
            "spiffe://*.org/web",
            "--cert",
            m,
            "--key",
            m,
            "--bundle",
            m,
        ])),
        1,
        &["--allow-spiffe-id", "spiffe://*.org/web"],
    );
    assert_failure(
        &zt(&with(&[
            "--allow-spiffe-id",
            "*",
            "--strip-header",
            "bad header",
            "--cert",
            m,
            "--key",
            m,
            "--bundle",
            m,
        ])),
        1,
        &["--strip-header", "bad header"],
    );
    // No allow-list at all is a usage error: the proxy would let nobody in.
    let out = zt(&with(&[]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-spiffe-id"));
    // A key that is not the certificate's.
    let pki = Pki::new(dir.path());
    let out = zt(&with(&[
        "--allow-spiffe-id",
        "*",
        "--cert",
        &pki.file("proxy.crt"),
        "--key",
        &pki.file("payment.key"),
        "--bundle",
        &pki.file("bundle.pem"),
    ]));
    assert_failure(&out, 1, &["--cert", "proxy.crt", "key does not belong"]);
    // A --tcp-inbound that is not LISTEN,APP: a usage error naming the value.
    for bad in ["127.0.0.1:0", "127.0.0.1:0,db:5432"] {
        let out = zt(&with(&["--allow-spiffe-id", "*", "--tcp-inbound", bad]));
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--tcp-inbound") && stderr.contains(bad),
            "{stderr}"
        );
    }
}

/// A hard link (or copy) of the zt binary at `path`, so that the agent tells
/// processes apart by `unix:path`.
/// This process's effective uid, as `unix:uid` selectors name it.
fn own_uid() -> String {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|ids| ids.split_whitespace().nth(1).unwrap().to_owned())
        })
        .unwrap()
}

/// Registers `exe` (run by this uid) as the workload `spiffe_id` under the agent.
fn register(server: &ServerProcess, agent_id: &str, spiffe_id: &str, exe: &Path, extra: &[&str]) {
    let uid = format!("unix:uid:{}", own_uid());
    let path = format!("unix:path:{}", exe.display());
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        spiffe_id,
        "--parent-id",
        agent_id,
    ];
    args.extend(["--selector", &uid, "--selector", &path]);
    args.extend(extra);
    ok(server, &args);
}

fn zt_at_path(path: &Path) -> PathBuf {
    let original = Path::new(env!("CARGO_BIN_EXE_zt"));
    if fs::hard_link(original, path).is_err() {
        fs::copy(original, path).unwrap();
    }
    path.to_owned()
}

#[test]
fn a_revoked_peer_is_cut_off_and_refused() {
    let Some(python) = zt_testkit::python("a_revoked_peer_is_cut_off_and_refused") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), None);
    let agent_dir = dir.path().join("agent");
    fs::create_dir(&agent_dir).unwrap();
    let agent_id = "spiffe://example.org/agent/node-1";
    let agent = AgentProcess::start(&server, &agent_dir, agent_id);
    let proxy_exe = zt_at_path(&dir.path().join("zt-proxy"));
    let client_exe = zt_at_path(&dir.path().join("client"));
    register(
        &server,
        agent_id,
        "spiffe://example.org/billing",
        &proxy_exe,
        &["--dns", "localhost"],
    );
    register(
        &server,
        agent_id,
        "spiffe://example.org/payment",
        &client_exe,
        &[],
    );

    // The client's SVID, fetched as the client executable into `dir`, once its
    // serial differs from `previous`: after a revocation the agent re-signs.
    let fetch_client_svid = |dir: &Path, previous: Option<&str>| -> String {
        let start = Instant::now();
        loop {
            let out = Command::new(&client_exe)
                .args([
                    "agent",
                    "api",
                    "fetch",
                    "x509",
                    "--write",
                    dir.to_str().unwrap(),
                    "--socket",
                ])
                .arg(&agent.socket)
                .output()
                .unwrap();
            if out.status.success() {
                let leaf =
                    zt_identity::x509::certificates_from_pem(&fs::read(dir.join("svid.0.pem")).unwrap())
                        .unwrap();
                let serial =
                    zt_identity::x509::hex_compact(&zt_identity::x509::summarize(&leaf[0]).unwrap().serial);
                if previous != Some(serial.as_str()) {
                    return serial;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no new client SVID: {}",
                describe(&out)
            );
            std::thread::sleep(POLL);
        }
    };
    let svid_files = |dir: &Path| {
        ["svid.0.pem", "svid.0.key", "bundle.0.pem"].map(|name| dir.join(name).to_str().unwrap().to_owned())
    };

    // The app, and the proxy with its identity from the Workload API.
    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let log = dir.path().join("proxy.log");
    let (mut command, inbound, admin) = proxy_command(&proxy_exe);
    command
        .args(["--app", &app_addr.to_string()])
        .args(["--allow-spiffe-id", "spiffe://example.org/payment", "--socket"])
        .arg(&agent.socket)
        // Idle connections stay open: only a revocation may close them here.
        .args(["--request-header-timeout", "10m"])
        .stderr(fs::File::create(&log).unwrap());
    // Not ready until the Workload API gave the proxy its SVID.
    let _proxy = spawn_ready(command, admin);
    let request = |files: &[String; 3]| {
        let out = Command::new(&python)
            .arg(interop("requests_client.py"))
            .arg(format!("https://localhost:{}/", inbound.port()))
            .args(files)
            .output()
            .unwrap();
        serde_json::from_str::<Value>(&succeed(&out, "requests_client.py")).unwrap()
    };
    // A client holding a keep-alive connection with `files` has it closed when
    // `revoke` runs; a new handshake with the same SVID then gets no answer.
    let cut_off = |files: &[String; 3], revoke: &[&str]| {
        assert_eq!(
            request(files)["status"],
            200,
            "{}",
            fs::read_to_string(&log).unwrap()
        );
        let mut holder = Command::new(&python)
            .arg(interop("hold_connection.py"))
            .args(["localhost", &inbound.port().to_string()])
            .args(files)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(holder.stdout.take().unwrap()));
        let ready = lines.next().unwrap().unwrap();
        assert_eq!(ready, "ready HTTP/1.1 200 OK");
        let revoked_at = Instant::now();
        ok(&server, revoke);
        let closed = lines.next().unwrap().unwrap();
        let elapsed = revoked_at.elapsed();
        assert_eq!(closed, "closed", "after zt {revoke:?}");
        eprintln!("zt {revoke:?} → open connection closed in {elapsed:?}");
        assert!(wait_with_deadline(&mut holder).is_some());
        let again = request(files);
        assert!(
            again.get("status").is_none(),
            "a revoked SVID was served after zt {revoke:?}: {again}"
        );
    };

    // Revoked by serial: the CRL the Workload API carries.
    let first = dir.path().join("svid-1");
    let first_serial = fetch_client_svid(&first, None);
    cut_off(
        &svid_files(&first),
        &["revoke", "--serial", &first_serial, "--reason", "compromised"],
    );
    let log_text = fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("SVID was revoked: connection closed"),
        "{log_text}"
    );

    // Revoked by SPIFFE ID: every SVID of the ID issued so far, serials unknown
    // to the proxy; zt agent's revocations feed carries it.
    let second = dir.path().join("svid-2");
    let second_serial = fetch_client_svid(&second, Some(&first_serial));
    cut_off(
        &svid_files(&second),
        &[
            "revoke",
            "--spiffe-id",
            "spiffe://example.org/payment",
            "--reason",
            "key compromise",
        ],
    );
    // The SVID the agent signs after the revocation is accepted again.
    let third = dir.path().join("svid-3");
    fetch_client_svid(&third, Some(&second_serial));
    assert_eq!(request(&svid_files(&third))["status"], 200);

    assert_eq!(metric(admin, "zt_proxy_revoked_connections_total"), 2.0);
    assert!(metric(admin, "zt_proxy_refused_total{reason=\"revoked\"}") >= 2.0);
}

#[test]
fn the_svid_rotates_under_load_without_a_failed_request() {
    let Some(setup) = Setup::start("the_svid_rotates_under_load_without_a_failed_request") else {
        return;
    };
    let mut load = Command::new(&setup.python)
        .arg(interop("load.py"))
        .args(["localhost", &setup.inbound.port().to_string()])
        .args([
            setup.pki.file("payment.crt"),
            setup.pki.file("payment.key"),
            setup.pki.file("bundle.pem"),
        ])
        .arg("4")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the load runs, a new SVID replaces the files: key, then certificate,
    // each renamed into place (the pair is checked before use).
    let mut stdout = std::io::BufReader::new(load.stdout.take().unwrap());
    let mut running = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut running).unwrap();
    assert_eq!(running, "running\n");
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args([
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://example.org/billing",
        ])
        .args(["--dns", "localhost", "--out", "rotated"])
        .current_dir(&setup.pki.dir)
        .output()
        .unwrap();
    succeed(&out, "zt ca issue rotated");
    fs::rename(setup.pki.dir.join("rotated.key"), setup.pki.dir.join("proxy.key")).unwrap();
    fs::rename(setup.pki.dir.join("rotated.crt"), setup.pki.dir.join("proxy.crt")).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = load.wait().unwrap();
    assert!(status.success(), "load.py: {status}");
    let report: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(report["failed"], 0, "{report}\n{}", setup.log());
    let serials = report["serials"].as_array().unwrap();
    assert_eq!(
        serials.len(),
        2,
        "new handshakes moved to the new SVID exactly once: {report}"
    );
    assert!(
        setup.log().contains("identity reloaded from files"),
        "{}",
        setup.log()
    );
}

#[test]
fn without_an_svid_the_proxy_is_alive_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let proxy = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args([
            "proxy",
            "--inbound",
            &inbound.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args(["--app", "127.0.0.1:1", "--allow-spiffe-id", "*", "--socket"])
        .arg(dir.path().join("no-agent.sock"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut proxy = Running(proxy);
    let start = Instant::now();
    while !matches!(http_get(admin, "/healthz"), Ok((200, _))) {
        assert!(proxy.0.try_wait().unwrap().is_none(), "zt proxy exited");
        assert!(start.elapsed() < DEADLINE, "no /healthz");
        std::thread::sleep(POLL);
    }
    let (status, body) = http_get(admin, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no SVID"), "{body}");
    // A connection is closed at once, and counted.
    let mut tcp = TcpStream::connect(inbound).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut tcp, &mut buf).unwrap_or(0), 0);
    assert_eq!(
        metric(admin, "zt_proxy_refused_total{reason=\"no_svid_yet\"}"),
        1.0
    );
}

#[test]
fn http_upgrades_are_spliced_through() {
    let Some(python) = zt_testkit::python("http_upgrades_are_spliced_through") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (app_addr, _app) = start_app(&python, &[interop("upgrade_app.py").to_str().unwrap()]);
    let (_proxy, inbound, _) = dev_proxy(
        &pki,
        &[
            "--app",
            &app_addr.to_string(),
            "--allow-spiffe-id",
            "spiffe://example.org/*",
        ],
    );
    let out = Command::new(&python)
        .arg(interop("upgrade_client.py"))
        .args(["localhost", &inbound.port().to_string()])
        .args([
            pki.file("payment.crt"),
            pki.file("payment.key"),
            pki.file("bundle.pem"),
        ])
        .output()
        .unwrap();
    let text = succeed(&out, "upgrade_client.py");
    assert_eq!(
        text,
        "HTTP/1.1 101 Switching Protocols\n\
         hello spiffe://example.org/ns/production/sa/payment-service\n\
         ping over the upgraded connection\n"
    );
}

#[test]
fn grpc_reaches_an_h2c_app_with_status_and_trailers() {
    let Some(python) = zt_testkit::python("grpc_reaches_an_h2c_app_with_status_and_trailers") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (app_addr, _app) = start_app(&python, &[interop("grpc_app.py").to_str().unwrap()]);

    let (_proxy, inbound, _) = dev_proxy(
        &pki,
        &[
            "--app",
            &app_addr.to_string(),
            "--app-protocol",
            "h2c",
            "--allow-spiffe-id",
            "spiffe://example.org/ns/production/sa/payment-service",
        ],
    );
    let out = Command::new(&python)
        .arg(interop("grpc_client.py"))
        .arg(format!("localhost:{}", inbound.port()))
        .args([
            pki.file("payment.crt"),
            pki.file("payment.key"),
            pki.file("bundle.pem"),
        ])
        .output()
        .unwrap();
    let result: Value = serde_json::from_str(&succeed(&out, "grpc_client.py")).unwrap();
    let hello = result["hello"].as_str().unwrap();
    assert!(
        hello.starts_with("hello from By=spiffe://example.org/billing;Hash="),
        "{result}"
    );
    assert!(
        hello.ends_with(";URI=spiffe://example.org/ns/production/sa/payment-service"),
        "{result}"
    );
    assert_eq!(result["fail"], "PERMISSION_DENIED: the app says no");
}

/// A TLS client presenting `client`'s SVID (rustls, through zt-tls).
fn tls_connect(
    pki: &Pki,
    client: &str,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    tls_handshake(pki, client, TcpStream::connect(addr).unwrap())
}

/// The client TLS configuration of `client`'s SVID, TLS 1.3.
fn client_tls_config(pki: &Pki, client: &str) -> rustls::ClientConfig {
    use std::sync::Arc;
    let chain =
        zt_identity::x509::certificates_from_pem(&fs::read(pki.file(&format!("{client}.crt"))).unwrap())
            .unwrap();
    let key = zt_identity::x509::private_key_from_pem(&fs::read(pki.file(&format!("{client}.key"))).unwrap())
        .unwrap();
    let mut bundles = zt_identity::BundleSet::default();
    bundles.insert(zt_identity::Bundle::parse(&fs::read(pki.file("bundle.pem")).unwrap(), None).unwrap());
    zt_tls::client_config(
        chain,
        key,
        Arc::new(bundles),
        zt_tls::PeerMatcher::Any,
        zt_tls::TlsVersions::Tls13,
    )
    .unwrap()
}

/// A TLS handshake as `client` on `tcp`; a refused handshake shows as a
/// connection still handshaking.
fn tls_handshake(
    pki: &Pki,
    client: &str,
    tcp: TcpStream,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = client_tls_config(pki, client);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Finish the handshake now: a refused handshake shows as an error here.
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            break;
        }
    }
    tls
}

/// Sends `raw` on a fresh mTLS connection as the payment service and returns the
/// status line of the answer; "closed" if the proxy ended the stream without
/// one, "timeout" if it was still open when the client gave up.
fn raw_exchange(pki: &Pki, addr: SocketAddr, raw: &[u8]) -> String {
    let answer = raw_answer(pki, addr, raw);
    answer.lines().next().unwrap_or_default().to_owned()
}

/// Sends `raw` on a fresh mTLS connection as the payment service and returns
/// everything the proxy answered until it ended the stream; "closed" if it
/// ended it without a byte, "timeout" if it was still open when the client
/// gave up (20 s).
fn raw_answer(pki: &Pki, addr: SocketAddr, raw: &[u8]) -> String {
    use std::io::{Read as _, Write as _};
    let mut tls = tls_connect(pki, "payment", addr);
    let _ = tls.write_all(raw);
    let _ = tls.flush();
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // A TCP end without TLS's close_notify is an end of stream too.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return "timeout".into();
        }
        Err(e) if answer.is_empty() => return format!("error: {e}"),
        Err(_) => {}
    }
    if answer.is_empty() {
        return "closed".into();
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn limits_and_smuggling_attempts_are_refused_and_others_served() {
    let Some(python) = zt_testkit::python("limits_and_smuggling_attempts_are_refused_and_others_served")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let (_proxy, inbound, _) = dev_proxy(
        &pki,
        &[
            "--app",
            &app_addr.to_string(),
            "--allow-spiffe-id",
            "spiffe://example.org/*",
            "--max-request-headers",
            "20",
            "--max-header-bytes",
            "8192",
            "--request-header-timeout",
            "1s",
            "--max-request-body",
            "1000",
        ],
    );
    let good = || {
        raw_exchange(
            &pki,
            inbound,
            b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
    };
    assert_eq!(good(), "HTTP/1.1 200 OK");

    let many_headers: String = (0..30).map(|i| format!("X-Filler-{i}: x\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "a".repeat(10_000));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "Transfer-Encoding that is not chunked",
            "POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nabc".into(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "two different Content-Lengths",
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde".into(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "too many headers",
            format!("GET / HTTP/1.1\r\nHost: localhost\r\n{many_headers}Connection: close\r\n\r\n"),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            "a header over the size limit",
            format!("GET / HTTP/1.1\r\nHost: localhost\r\n{big_header}Connection: close\r\n\r\n"),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            "a body over the limit",
            format!("POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}", "b".repeat(5000)),
            "HTTP/1.1 413 Payload Too Large",
        ),
        (
            "a head that never ends (slowloris)",
            "GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".into(),
            "closed",
        ),
    ];
    for (what, raw, expected) in &cases {
        assert_eq!(raw_exchange(&pki, inbound, raw.as_bytes()), *expected, "{what}");
        assert_eq!(good(), "HTTP/1.1 200 OK", "a good client after: {what}");
    }

    // Content-Length with Transfer-Encoding, then a smuggled request on the same
    // connection: the body is read as chunked (RFC 9112 §6.1), the Content-Length
    // dropped, and the connection closed after the one answer, so the smuggled
    // request is never read, let alone sent to the app.
    {
        use std::io::{Read as _, Write as _};
        let mut tls = tls_connect(&pki, "payment", inbound);
        tls.write_all(
            b"GET /first HTTP/1.1\r\nHost: localhost\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
        assert!(
            answer.contains("\"path\": \"/first\"") && !answer.contains("smuggled"),
            "{answer}"
        );
        assert!(
            !answer.contains("content-length\": [\"44"),
            "the app saw the Content-Length: {answer}"
        );
    }
}

/// Runs sslyze (with the payment service's client SVID) against `addr`; returns
/// its scan result.
fn sslyze(python: &Path, pki: &Pki, addr: SocketAddr, dir: &Path) -> Value {
    let sslyze = python.with_file_name("sslyze");
    let report = dir.join(format!("sslyze-{}.json", addr.port()));
    let out = Command::new(&sslyze)
        .args([
            "--cert",
            &pki.file("payment.crt"),
            "--key",
            &pki.file("payment.key"),
        ])
        .args(["--mozilla_config", "disable", "--quiet"])
        .args([
            "--sslv2",
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--reneg",
        ])
        .arg(format!("--json_out={}", report.display()))
        .arg(format!("localhost:{}", addr.port()))
        .output()
        .unwrap();
    assert!(out.status.success(), "sslyze: {}", describe(&out));
    let doc: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let server = &doc["server_scan_results"][0];
    assert_eq!(server["scan_status"], "COMPLETED", "{server}");
    server["scan_result"].clone()
}

fn accepted_suites(scan: &Value, protocol: &str) -> Vec<String> {
    let result = &scan[protocol];
    assert_eq!(result["status"], "COMPLETED", "{protocol}: {result}");
    result["result"]["accepted_cipher_suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cipher_suite"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn sslyze_finds_nothing_below_tls_1_2_and_no_weak_cipher() {
    let Some(python) = zt_testkit::python("sslyze_finds_nothing_below_tls_1_2_and_no_weak_cipher") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // The default (TLS 1.3 only) and --tls12.
    for extra in [&[][..], &["--tls12"][..]] {
        let (mut command, inbound, admin) = proxy_command(zt_exe());
        command
            .args(["--app", "127.0.0.1:1", "--allow-spiffe-id", "*"])
            .args(pki.proxy_identity())
            .args(extra);
        let _proxy = spawn_ready(command, admin);
        let scan = sslyze(&python, &pki, inbound, dir.path());
        for old in [
            "ssl_2_0_cipher_suites",
            "ssl_3_0_cipher_suites",
            "tls_1_0_cipher_suites",
            "tls_1_1_cipher_suites",
        ] {
            assert!(
                accepted_suites(&scan, old).is_empty(),
                "{extra:?}: {old} accepted"
            );
        }
        let tls13 = accepted_suites(&scan, "tls_1_3_cipher_suites");
        assert!(!tls13.is_empty(), "{extra:?}: no TLS 1.3");
        let tls12 = accepted_suites(&scan, "tls_1_2_cipher_suites");
        if extra.is_empty() {
            assert!(tls12.is_empty(), "TLS 1.2 accepted without --tls12: {tls12:?}");
        } else {
            assert!(!tls12.is_empty(), "--tls12 accepted no TLS 1.2 suite");
        }
        // Strong only: forward secrecy (ECDHE) and AEAD, in both versions.
        for suite in tls12.iter().chain(&tls13) {
            let strong = suite.starts_with("TLS_AES_")
                || suite.starts_with("TLS_CHACHA20_")
                || (suite.starts_with("TLS_ECDHE_")
                    && (suite.contains("_GCM_") || suite.contains("CHACHA20_POLY1305")));
            assert!(strong, "{extra:?}: weak suite {suite}");
        }
        let renegotiation = &scan["session_renegotiation"]["result"];
        assert_eq!(
            renegotiation["is_vulnerable_to_client_renegotiation_dos"], false,
            "{renegotiation}"
        );
        assert_eq!(
            renegotiation["client_renegotiations_success_count"], 0,
            "{renegotiation}"
        );
    }
}

#[test]
fn permissive_mode_accepts_plaintext_on_the_same_port_and_counts_it() {
    let Some(python) = zt_testkit::python("permissive_mode_accepts_plaintext_on_the_same_port_and_counts_it")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let (_proxy, inbound, admin) = dev_proxy(
        &pki,
        &[
            "--app",
            &app_addr.to_string(),
            "--mode",
            "permissive",
            "--allow-spiffe-id",
            "spiffe://example.org/ns/production/sa/payment-service",
        ],
    );

    // Plaintext, from Python requests, with a forged XFCC: served, without any XFCC.
    let script = "import requests, sys; r = requests.get(sys.argv[1], headers={'X-Forwarded-Client-Cert': 'URI=spiffe://example.org/admin'}, timeout=10); print(r.status_code); print(r.text)";
    let out = Command::new(&python)
        .args([
            "-c",
            script,
            &format!("http://127.0.0.1:{}/legacy", inbound.port()),
        ])
        .output()
        .unwrap();
    let text = succeed(&out, "plaintext request");
    let (status, body) = text.split_once('\n').unwrap();
    assert_eq!(status, "200");
    let seen: Value = serde_json::from_str(body.trim()).unwrap();
    assert!(seen["headers"].get("x-forwarded-client-cert").is_none(), "{seen}");

    // mTLS on the same port still carries the verified identity.
    let url = format!("https://localhost:{}/", inbound.port());
    let out = Command::new(&python)
        .arg(interop("requests_client.py"))
        .args([
            &url,
            &pki.file("payment.crt"),
            &pki.file("payment.key"),
            &pki.file("bundle.pem"),
        ])
        .output()
        .unwrap();
    let answer: Value = serde_json::from_str(&succeed(&out, "requests_client.py")).unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(
        answer["body"]
            .as_str()
            .unwrap()
            .contains("URI=spiffe://example.org/ns/production/sa/payment-service")
    );

    assert_eq!(
        metric(admin, "zt_proxy_connections_total{transport=\"plaintext\"}"),
        1.0
    );
    assert_eq!(
        metric(admin, "zt_proxy_connections_total{transport=\"mtls\"}"),
        1.0
    );
}

#[test]
fn outbound_originates_mtls_and_checks_the_upstream_id() {
    let Some(setup) = Setup::start("outbound_originates_mtls_and_checks_the_upstream_id") else {
        return;
    };
    let pki = &setup.pki;
    let good: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let wrong: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let target = format!("localhost:{}", setup.inbound.port());
    // The payment service's sidecar: outbound only (no --app, so no inbound listener).
    let (mut command, _, admin) = proxy_command(zt_exe());
    command
        .args([
            "--upstream",
            &format!("{good},{target},spiffe://example.org/billing"),
        ])
        .args([
            "--upstream",
            &format!("{wrong},{target},spiffe://example.org/not-billing"),
        ])
        .args([
            "--cert",
            &pki.file("payment.crt"),
            "--key",
            &pki.file("payment.key"),
        ])
        .args(["--bundle", &pki.file("bundle.pem")]);
    let _proxy = spawn_ready(command, admin);

    // The app speaks plaintext HTTP to its sidecar; billing's app sees who called.
    let get = |addr: SocketAddr| {
        let script = "import requests, sys\ntry:\n  r = requests.get(sys.argv[1], timeout=10); print(r.status_code); print(r.text)\nexcept requests.exceptions.RequestException as e:\n  print('error'); print(type(e).__name__)";
        let out = Command::new(&setup.python)
            .args(["-c", script, &format!("http://{addr}/via-sidecar")])
            .output()
            .unwrap();
        succeed(&out, "plaintext request to the sidecar")
    };
    let answer = get(good);
    let (status, body) = answer.split_once('\n').unwrap();
    assert_eq!(status, "200", "{answer}");
    let seen: Value = serde_json::from_str(body.trim()).unwrap();
    let xfcc = seen["headers"]["x-forwarded-client-cert"][0].as_str().unwrap();
    assert!(
        xfcc.ends_with("URI=spiffe://example.org/ns/production/sa/payment-service"),
        "{xfcc}"
    );
    assert_eq!(metric(admin, "zt_proxy_outbound_connections_total"), 1.0);

    // An upstream that does not present the expected SPIFFE ID gets nothing.
    let refused = get(wrong);
    assert!(refused.starts_with("error"), "{refused}");
    assert!(metric(admin, "zt_proxy_outbound_failed_total{reason=\"handshake\"}") >= 1.0);
}

#[test]
fn opaque_tcp_is_relayed_for_allowed_peers_only_on_its_own_port() {
    use std::io::{Read as _, Write as _};
    let Some(python) = zt_testkit::python("opaque_tcp_is_relayed_for_allowed_peers_only_on_its_own_port")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let echo = "import socket, sys, threading\n\
                def serve(c):\n  with c:\n    while d := c.recv(4096): c.sendall(d.upper())\n\
                s = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n\
                while True: threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()";
    let (echo_addr, _echo) = start_app(&python, &["-c", echo]);
    // The HTTP app on --inbound, the TCP one on a port of its own.
    let (http_addr, _http_app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let tcp_inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (_proxy, inbound, admin) = dev_proxy(
        &pki,
        &[
            "--app",
            &http_addr.to_string(),
            "--tcp-inbound",
            &format!("{tcp_inbound},{echo_addr}"),
            "--allow-spiffe-id",
            "spiffe://example.org/ns/production/sa/payment-service",
        ],
    );

    let mut http = tls_connect(&pki, "payment", inbound);
    http.write_all(b"GET /over-http HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("/over-http"), "{answer}");

    let inbound = tcp_inbound;
    let mut allowed = tls_connect(&pki, "payment", inbound);
    allowed.write_all(b"any protocol at all\n").unwrap();
    let mut answer = [0u8; 20];
    allowed.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"ANY PROTOCOL AT ALL\n");

    let mut denied = tls_connect(&pki, "intruder", inbound);
    let _ = denied.write_all(b"let me in\n");
    let mut buf = Vec::new();
    let _ = denied.read_to_end(&mut buf);
    assert!(buf.is_empty(), "the app answered an intruder: {buf:?}");
    assert_eq!(
        metric(admin, "zt_proxy_refused_total{reason=\"not_allowed\"}"),
        1.0
    );
}

/// Client certificates that are not acceptable SVIDs, signed by the trusted CA's
/// own key (so only the SVID rules can refuse them), written next to the PKI as
/// `<name>.crt` / `<name>.key`.
fn write_bad_svids(pki: &Pki) -> Vec<&'static str> {
    use rcgen::{CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
    let ca_key = KeyPair::from_pem(&fs::read_to_string(pki.dir.join("ca/ca.key")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&fs::read_to_string(pki.dir.join("ca/ca.crt")).unwrap(), ca_key)
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let base = || {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::OrganizationName, "bad");
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/ns/production/sa/payment-service"
                .try_into()
                .unwrap(),
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::hours(1);
        params
    };
    let mut cases: Vec<(&'static str, CertificateParams)> = Vec::new();
    let mut expired = base();
    expired.not_before = now - time::Duration::hours(3);
    expired.not_after = now - time::Duration::hours(2);
    cases.push(("expired", expired));
    let mut early = base();
    early.not_before = now + time::Duration::hours(2);
    early.not_after = now + time::Duration::hours(3);
    cases.push(("not-yet-valid", early));
    let mut ca_flag = base();
    ca_flag.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_flag.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    cases.push(("ca-flagged", ca_flag));
    let mut two_ids = base();
    two_ids.subject_alt_names.push(SanType::URI(
        "spiffe://example.org/ns/production/sa/admin".try_into().unwrap(),
    ));
    cases.push(("two-uri-sans", two_ids));
    cases
        .into_iter()
        .map(|(name, params)| {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            fs::write(pki.dir.join(format!("{name}.crt")), cert.pem()).unwrap();
            fs::write(pki.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
            name
        })
        .collect()
}

#[test]
fn certificates_that_are_not_valid_svids_are_refused_and_counted() {
    use std::io::{Read as _, Write as _};
    let Some(setup) = Setup::start("certificates_that_are_not_valid_svids_are_refused_and_counted") else {
        return;
    };
    let bad = write_bad_svids(&setup.pki);
    for name in &bad {
        let mut tls = tls_connect(&setup.pki, name, setup.inbound);
        let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer);
        assert!(
            answer.is_empty(),
            "{name}: answered {}",
            String::from_utf8_lossy(&answer)
        );
        // Python requests agrees: no answer, an SSL error.
        let answer = setup.requests(name, "/", &[]);
        assert!(answer.get("status").is_none(), "{name}: {answer}");
    }
    let refused = metric(
        setup.admin,
        "zt_proxy_refused_total{reason=\"invalid_certificate\"}",
    );
    assert_eq!(
        refused,
        (2 * bad.len()) as f64,
        "each attempt counted as invalid_certificate"
    );
    assert!(setup.log().contains("TLS handshake"), "{}", setup.log());
    assert_eq!(
        setup.requests("payment", "/", &[])["status"],
        200,
        "the proxy serves on"
    );
}

/// One request over mTLS as `client`; the status code and the body.
fn request_as(pki: &Pki, client: &str, addr: SocketAddr, method: &str, target: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut tls = tls_connect(pki, client, addr);
    let raw = format!(
        "{method} {target} HTTP/1.1\r\nHost: billing\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(raw.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {target}: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

const BILLING_POLICY: &str = "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: billing-service-policy
  namespace: production
spec:
  selector:
    matchLabels:
      app: billing-service
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"example.org/ns/production/sa/payment-service\"]
    to:
    - operation:
        methods: [\"POST\"]
        paths: [\"/api/v1/charges\", \"/api/v1/refunds\"]
";

#[test]
fn policies_decide_every_request_change_live_and_are_logged_in_a_verifiable_chain() {
    let Some(python) =
        zt_testkit::python("policies_decide_every_request_change_live_and_are_logged_in_a_verifiable_chain")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(policies.join("billing.yaml"), BILLING_POLICY).unwrap();
    let log = dir.path().join("decisions.log");
    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let (_proxy, inbound, admin) = dev_proxy(
        &pki,
        &[
            "--app",
            &app_addr.to_string(),
            "--policy-dir",
            policies.to_str().unwrap(),
            "--namespace",
            "production",
            "--label",
            "app=billing-service",
            "--decision-log",
            log.to_str().unwrap(),
            "--decision-log-checkpoint-interval",
            "1s",
        ],
    );

    // The seed's rule: payment-service may POST charges and refunds, nothing else.
    let (status, body) = request_as(&pki, "payment", inbound, "POST", "/api/v1/charges");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        request_as(&pki, "payment", inbound, "POST", "/api/v1/refunds").0,
        200
    );
    let (status, body) = request_as(&pki, "payment", inbound, "GET", "/api/v1/charges");
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied\n"));
    assert_eq!(
        request_as(&pki, "intruder", inbound, "POST", "/api/v1/charges").0,
        403
    );
    assert_eq!(
        request_as(&pki, "payment", inbound, "POST", "/api/v1/admin").0,
        403
    );
    // Each policy denial is a refusal, counted once under its own reason.
    assert_eq!(
        metric(admin, "zt_proxy_refused_total{reason=\"denied_by_policy\"}"),
        3.0
    );
    // The followers run supervised: up, never restarted.
    for task in ["identity", "policies", "policies_in_force"] {
        assert_eq!(
            metric(admin, &format!("zt_proxy_task_up{{task=\"{task}\"}}")),
            1.0,
            "{task}"
        );
        assert_eq!(
            metric(admin, &format!("zt_proxy_task_restarts_total{{task=\"{task}\"}}")),
            0.0,
            "{task}"
        );
    }
    // The normalized path is the one matched and the one the app receives.
    let (status, body) = request_as(
        &pki,
        "payment",
        inbound,
        "POST",
        "/api/v1/refunds/..%2Fcharges?id=7",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["path"],
        "/api/v1/charges?id=7"
    );
    assert_eq!(
        request_as(&pki, "payment", inbound, "POST", "/api/v1/charges%00").0,
        400
    );
    assert_eq!(
        request_as(&pki, "payment", inbound, "post", "/api/v1/charges").0,
        400
    );
    assert_eq!(
        metric(
            admin,
            "zt_proxy_authz_decisions_total{decision=\"DENY\",mode=\"enforce\"}"
        ),
        3.0
    );

    // A policy change takes effect without a restart.
    fs::write(
        policies.join("billing.yaml"),
        BILLING_POLICY.replace("methods: [\"POST\"]", "methods: [\"POST\", \"GET\"]"),
    )
    .unwrap();
    let start = Instant::now();
    while request_as(&pki, "payment", inbound, "GET", "/api/v1/charges").0 != 200 {
        assert!(start.elapsed() < DEADLINE, "the changed policy never took effect");
        std::thread::sleep(POLL);
    }
    // A broken change is refused; the last good set stays in force.
    fs::write(policies.join("broken.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: production}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/99\"]\n").unwrap();
    let start = Instant::now();
    while metric(admin, "zt_proxy_policy_reload_failures_total") < 1.0 {
        assert!(start.elapsed() < DEADLINE, "the broken policy was not noticed");
        std::thread::sleep(POLL);
    }
    assert_eq!(
        request_as(&pki, "payment", inbound, "GET", "/api/v1/charges").0,
        200
    );
    assert_eq!(
        request_as(&pki, "intruder", inbound, "GET", "/api/v1/charges").0,
        403
    );

    // Every decision is in the log, the chain verifies, and a checkpoint signed
    // by the proxy's log key (LOG.key, created at start) covers every record.
    let zt = |args: &[&str]| Command::new(zt_exe()).args(args).output().unwrap();
    let key_file = dir.path().join("decisions.log.key");
    let key = String::from_utf8(zt(&["audit", "key", "show", key_file.to_str().unwrap()]).stdout).unwrap();
    let start = Instant::now();
    let verified = loop {
        let out = zt(&["audit", "verify", log.to_str().unwrap(), "--key", key.trim()]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && !text.contains(" 0 records")
            && text.contains("chain intact")
            && text.contains("every record is covered")
        {
            let count: u64 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
            if count >= 9 {
                break text;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the decision log is incomplete: {}",
            describe(&out)
        );
        std::thread::sleep(POLL);
    };
    assert!(verified.contains("chain intact"), "{verified}");
    let denials = audit_query(&[log.to_str().unwrap(), "--decision", "DENY"]);
    assert!(denials.len() >= 4, "{denials:?}");
    let first = &denials[0];
    assert_eq!(
        first["source_principal"],
        "spiffe://example.org/ns/production/sa/payment-service"
    );
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/api/v1/charges");
    assert_eq!(first["destination"], "production/billing-service");
    assert_eq!(first["mode"], "enforce");
    assert_eq!(first["policy"], Value::Null);
    assert_eq!(first["reason"], "no ALLOW policy matched");
    let intruder = audit_query(&[
        log.to_str().unwrap(),
        "--principal",
        "*/sa/intruder",
        "--decision",
        "DENY",
    ]);
    assert_eq!(intruder.len(), 2, "{intruder:?}");

    // Paths are logged without their query (a query may carry a token).
    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.contains("id=7"), "a query reached the decision log");
    // An edited record is found.
    let tampered = text.replacen("\"decision\":\"DENY\"", "\"decision\":\"ALLOW\"", 1);
    fs::write(&log, tampered).unwrap();
    let out = zt(&["audit", "verify", log.to_str().unwrap()]);
    assert_failure(&out, 1, &["decisions.log:", "does not match its hash"]);
}

#[test]
fn permissive_policy_mode_records_denials_and_lets_them_through() {
    let Some(python) = zt_testkit::python("permissive_policy_mode_records_denials_and_lets_them_through")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(policies.join("billing.yaml"), BILLING_POLICY).unwrap();
    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let (_proxy, inbound, admin) = dev_proxy(
        &pki,
        &[
            "--app",
            &app_addr.to_string(),
            "--policy-dir",
            policies.to_str().unwrap(),
            "--policy-mode",
            "permissive",
            "--namespace",
            "production",
            "--label",
            "app=billing-service",
        ],
    );
    // The seed's policy denies this; permissive records the DENY and lets it through.
    assert_eq!(request_as(&pki, "intruder", inbound, "GET", "/x").0, 200);
    assert_eq!(
        request_as(&pki, "payment", inbound, "POST", "/api/v1/charges").0,
        200
    );
    assert_eq!(
        metric(
            admin,
            "zt_proxy_authz_decisions_total{decision=\"DENY\",mode=\"permissive\"}"
        ),
        1.0
    );
}

/// A plaintext `GET` to `addr`: the answer's status, or `None` when the answer
/// is not HTTP (the connection was refused: a TLS alert, or closed).
fn plaintext_status(addr: SocketAddr) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(b"GET /plain HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()
}

/// A `GET` over mTLS as the payment service: the answer's status, or `None`
/// when the handshake fails.
fn mtls_status(pki: &Pki, addr: SocketAddr) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut tls = tls_connect(pki, "payment", addr);
    if tls.conn.is_handshaking() {
        return None;
    }
    tls.write_all(b"GET /mtls HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()
}

const ALLOW_ALL_POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-all
  namespace: production
spec:
  rules:
  - {}
";

/// A namespace-wide PeerAuthentication for `production`.
fn namespace_peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: production\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

#[test]
fn peer_authentication_sets_the_mtls_mode_live_and_per_port() {
    let Some(python) = zt_testkit::python("peer_authentication_sets_the_mtls_mode_live_and_per_port") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(policies.join("allow.yaml"), ALLOW_ALL_POLICY).unwrap();
    let peer = policies.join("peer.yaml");
    fs::write(&peer, namespace_peer_authentication("PERMISSIVE")).unwrap();
    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    // A second inbound port, opaque TCP to the same app, for the port-level case.
    let tcp_inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (_proxy, inbound, admin) = dev_proxy(
        &pki,
        &[
            "--app",
            &app_addr.to_string(),
            "--tcp-inbound",
            &format!("{tcp_inbound},{app_addr}"),
            "--mode",
            "permissive",
            "--policy-dir",
            policies.to_str().unwrap(),
            "--namespace",
            "production",
            "--label",
            "app=billing-service",
        ],
    );
    let mode = |port: u16, mode: &str| {
        metric(
            admin,
            &format!("zt_proxy_mtls_mode{{port=\"{port}\",mode=\"{mode}\"}}"),
        )
    };

    // PERMISSIVE: plaintext reaches the app, and so does mTLS.
    assert_eq!(plaintext_status(inbound), Some(200));
    assert_eq!(mtls_status(&pki, inbound), Some(200));
    assert_eq!(mode(inbound.port(), "PERMISSIVE"), 1.0);

    // STRICT, written in place: new plaintext connections are refused as
    // not TLS, mTLS still succeeds, without a restart.
    fs::write(&peer, namespace_peer_authentication("STRICT")).unwrap();
    eventually("plaintext refused under STRICT", || {
        plaintext_status(inbound).is_none().then_some(())
    });
    assert_eq!(mtls_status(&pki, inbound), Some(200));
    assert!(metric(admin, "zt_proxy_refused_total{reason=\"not_tls\"}") >= 1.0);
    assert_eq!(mode(inbound.port(), "STRICT"), 1.0);
    assert_eq!(mode(inbound.port(), "PERMISSIVE"), 0.0);
    assert_eq!(mode(tcp_inbound.port(), "STRICT"), 1.0);

    // Port level: the workload's policy leaves its mode UNSET (the namespace's
    // STRICT) and disables mTLS on the HTTP port only. There plaintext is
    // served and a ClientHello is just bytes the HTTP parser refuses; the
    // other port stays STRICT.
    let workload = format!(
        "{}---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: billing\n  namespace: production\nspec:\n  selector:\n    matchLabels:\n      app: billing-service\n  portLevelMtls:\n    {}:\n      mode: DISABLE\n",
        namespace_peer_authentication("STRICT"),
        inbound.port()
    );
    fs::write(&peer, workload).unwrap();
    eventually("plaintext served on the DISABLE port", || {
        (plaintext_status(inbound) == Some(200)).then_some(())
    });
    assert_eq!(mtls_status(&pki, inbound), None);
    assert_eq!(mode(inbound.port(), "DISABLE"), 1.0);
    assert_eq!(plaintext_status(tcp_inbound), None);
    assert_eq!(mtls_status(&pki, tcp_inbound), Some(200));
    assert_eq!(mode(tcp_inbound.port(), "STRICT"), 1.0);

    // No PeerAuthentication left: --mode (permissive) applies again.
    fs::remove_file(&peer).unwrap();
    eventually("--mode back in force", || {
        (mode(tcp_inbound.port(), "PERMISSIVE") == 1.0).then_some(())
    });
    assert_eq!(plaintext_status(tcp_inbound), Some(200));
    assert_eq!(mtls_status(&pki, inbound), Some(200));
}

#[test]
fn policies_applied_on_the_server_reach_the_proxies_and_change_live() {
    let Some(python) = zt_testkit::python("policies_applied_on_the_server_reach_the_proxies_and_change_live")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), None);
    let agent_dir = dir.path().join("agent");
    fs::create_dir(&agent_dir).unwrap();
    let agent_id = "spiffe://example.org/agent/node-1";
    let agent = AgentProcess::start(&server, &agent_dir, agent_id);
    // Three workloads on the node: billing (the app behind a policy-enforcing
    // proxy), and two callers whose proxies originate mTLS to it.
    let billing_exe = zt_at_path(&dir.path().join("billing-proxy"));
    let payment_exe = zt_at_path(&dir.path().join("payment-proxy"));
    let orders_exe = zt_at_path(&dir.path().join("orders-proxy"));
    let billing_id = "spiffe://example.org/ns/production/sa/billing-service";
    register(
        &server,
        agent_id,
        billing_id,
        &billing_exe,
        &["--dns", "localhost"],
    );
    register(
        &server,
        agent_id,
        "spiffe://example.org/ns/production/sa/payment-service",
        &payment_exe,
        &[],
    );
    register(
        &server,
        agent_id,
        "spiffe://example.org/ns/production/sa/orders",
        &orders_exe,
        &[],
    );

    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let log = dir.path().join("billing-decisions.log");
    let (mut command, billing_inbound, billing_admin) = proxy_command(&billing_exe);
    command
        .args([
            "--app",
            &app_addr.to_string(),
            "--policies-from-agent",
            "--label",
            "app=billing-service",
        ])
        .arg("--decision-log")
        .arg(&log)
        .arg("--socket")
        .arg(&agent.socket);
    let _billing = spawn_ready(command, billing_admin);
    let caller = |exe: &Path| {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let (mut command, _, admin) = proxy_command(exe);
        command
            .arg("--upstream")
            .arg(format!(
                "{listen},localhost:{},{billing_id}",
                billing_inbound.port()
            ))
            .arg("--socket")
            .arg(&agent.socket);
        (spawn_ready(command, admin), listen)
    };
    let (_payment, payment) = caller(&payment_exe);
    let (_orders, orders) = caller(&orders_exe);
    // Plain HTTP from each caller's app side, through its proxy, to billing.
    let status = |via: SocketAddr, method: &str| -> u16 {
        use std::io::{Read as _, Write as _};
        let mut tcp = TcpStream::connect(via).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let raw = format!(
            "{method} /api/v1/charges HTTP/1.1\r\nHost: billing\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(raw.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };

    // Enforcing, and no policy ever received: everything is denied.
    assert_eq!(status(payment, "POST"), 403);

    // The seed's policy, applied on the server.
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(policies.join("billing.yaml"), BILLING_POLICY).unwrap();
    let dry = ok(
        &server,
        &["policy", "apply", policies.to_str().unwrap(), "--dry-run"],
    );
    assert!(
        dry.contains("+++ billing.yaml (new)") && dry.contains("nothing applied"),
        "{dry}"
    );
    let applied_at = Instant::now();
    let applied = ok(&server, &["policy", "apply", policies.to_str().unwrap()]);
    assert!(
        applied.contains("applied version 1 (1 file(s) changed from nothing applied yet)"),
        "{applied}"
    );
    while status(payment, "POST") != 200 {
        assert!(
            applied_at.elapsed() < DEADLINE,
            "version 1 never reached the billing proxy"
        );
        std::thread::sleep(POLL);
    }
    eprintln!(
        "zt policy apply → enforced by the proxy in {:?}",
        applied_at.elapsed()
    );
    assert_eq!(status(payment, "GET"), 403);
    assert_eq!(status(orders, "POST"), 403);
    let unchanged = ok(&server, &["policy", "apply", policies.to_str().unwrap()]);
    assert!(unchanged.starts_with("no change from version 1"), "{unchanged}");

    // A change: orders may POST too. It takes effect without a restart.
    fs::write(
        policies.join("billing.yaml"),
        BILLING_POLICY.replace(
            "principals: [\"example.org/ns/production/sa/payment-service\"]",
            "principals: [\"example.org/ns/production/sa/payment-service\", \"example.org/ns/production/sa/orders\"]",
        ),
    )
    .unwrap();
    let diff = ok(&server, &["policy", "apply", policies.to_str().unwrap()]);
    assert!(
        diff.contains("*** billing.yaml") && diff.contains("applied version 2"),
        "{diff}"
    );
    let changed_at = Instant::now();
    while status(orders, "POST") != 200 {
        assert!(
            changed_at.elapsed() < DEADLINE,
            "version 2 never reached the billing proxy"
        );
        std::thread::sleep(POLL);
    }
    eprintln!("policy change → enforced in {:?}", changed_at.elapsed());
    // A PeerAuthentication travels the same way: checked on apply (two
    // namespace-wide ones are refused, naming both files), stored, carried by
    // the agent, and obeyed by the billing proxy: its port now takes plaintext,
    // which the AuthorizationPolicy (no principal) then denies.
    assert_eq!(plaintext_status(billing_inbound), None);
    let apply = |server: &ServerProcess| zt(server, &["policy", "apply", policies.to_str().unwrap()]);
    fs::write(
        policies.join("peer.yaml"),
        namespace_peer_authentication("PERMISSIVE"),
    )
    .unwrap();
    fs::write(
        policies.join("peer-too.yaml"),
        namespace_peer_authentication("STRICT").replace("name: default", "name: too"),
    )
    .unwrap();
    assert_failure(
        &apply(&server),
        1,
        &[
            "peer-too.yaml:1",
            "namespace-wide PeerAuthentication",
            "peer.yaml:1",
        ],
    );
    fs::remove_file(policies.join("peer-too.yaml")).unwrap();
    let out = apply(&server);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("applied version 3"),
        "{}",
        describe(&out)
    );
    eventually("PERMISSIVE from zt server in force", || {
        (plaintext_status(billing_inbound) == Some(403)).then_some(())
    });
    assert_eq!(status(payment, "POST"), 200);
    // A set the server refuses is never stored or pushed.
    fs::write(policies.join("broken.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: production}\nspec:\n  actoin: DENY\n").unwrap();
    let out = zt(&server, &["policy", "apply", policies.to_str().unwrap()]);
    assert_failure(&out, 1, &["broken.yaml:5", "actoin"]);
    assert_eq!(status(orders, "POST"), 200);

    // The billing proxy's decisions, with the version that made each, verify.
    let start = Instant::now();
    let records: Vec<Value> = loop {
        let records = audit_query(&[log.to_str().unwrap()]);
        if records.iter().any(|r| r["policy_version"] == "v2") {
            break records;
        }
        assert!(start.elapsed() < DEADLINE, "no v2 decision logged: {records:?}");
        std::thread::sleep(POLL);
    };
    assert_eq!(records[0]["policy_version"], "none");
    assert_eq!(records[0]["decision"], "DENY");
    assert!(
        records
            .iter()
            .any(|r| r["policy_version"] == "v1" && r["decision"] == "ALLOW")
    );
    let out = Command::new(zt_exe())
        .args(["audit", "verify", log.to_str().unwrap()])
        .output()
        .unwrap();
    let local = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(local.contains("chain intact"), "{}", describe(&out));

    // The proxy ships its log to zt server through the agent: the server's copy
    // of the billing workload's chain reaches the same head as the file.
    let local_head = local.split_whitespace().last().unwrap().to_owned();
    let start = Instant::now();
    loop {
        let server_view = ok(&server, &["audit", "verify", "--server"]);
        if server_view.contains(&format!("{billing_id}: ")) && server_view.contains(&local_head) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the server's copy never caught up: {server_view} vs {local}"
        );
        std::thread::sleep(POLL);
    }
    let denied_on_server = ok(&server, &["audit", "query", "--server", "--decision", "DENY"]);
    assert!(denied_on_server.lines().count() >= 3, "{denied_on_server}");
    assert_eq!(
        metric(billing_admin, "zt_proxy_decision_ship_failures_total"),
        0.0
    );

    // zt server down: the proxy keeps deciding with the last version, the
    // decisions wait in its log, and reach the server once it is back.
    let mut server = server;
    server.kill();
    for _ in 0..5 {
        assert_eq!(status(payment, "POST"), 200);
    }
    let start = Instant::now();
    while metric(billing_admin, "zt_proxy_decisions_unshipped") < 5.0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the decisions made during the outage are not counted as unshipped"
        );
        std::thread::sleep(POLL);
    }
    let server = server.restart();
    let start = Instant::now();
    while metric(billing_admin, "zt_proxy_decisions_unshipped") > 0.0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the backlog never reached the restarted server"
        );
        std::thread::sleep(POLL);
    }
    let after = ok(&server, &["audit", "verify", "--server"]);
    let out = Command::new(zt_exe())
        .args(["audit", "verify", log.to_str().unwrap()])
        .output()
        .unwrap();
    let local_head = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    assert!(after.contains(&local_head), "{after}");
}

#[test]
fn custom_policies_are_decided_by_rego_in_the_proxy() {
    let Some(python) = zt_testkit::python("custom_policies_are_decided_by_rego_in_the_proxy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(
        policies.join("custom.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: production}\nspec:\n  action: CUSTOM\n  provider: {name: zt-rego}\n  rules:\n  - to:\n    - operation:\n        paths: [\"/api/*\"]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-delete, namespace: production}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [\"DELETE\"]\n",
    )
    .unwrap();
    let rego = dir.path().join("ext.rego");
    fs::write(
        &rego,
        "package ext\n\ndefault allow := false\n\nallow if {\n\tinput.attributes.source.principal == \"spiffe://example.org/ns/production/sa/payment-service\"\n\tinput.parsed_path == [\"api\", \"v1\", \"charges\"]\n\tinput.parsed_query.receipt == [\"1\"]\n}\n",
    )
    .unwrap();
    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let (_proxy, inbound, _) = dev_proxy(
        &pki,
        &[
            "--app",
            &app_addr.to_string(),
            "--policy-dir",
            policies.to_str().unwrap(),
            "--namespace",
            "production",
            "--rego",
            rego.to_str().unwrap(),
            "--custom-provider",
            "zt-rego=ext/allow",
        ],
    );
    // Rego decides where the CUSTOM policy matches (with the query in its input)…
    assert_eq!(
        request_as(&pki, "payment", inbound, "POST", "/api/v1/charges?receipt=1").0,
        200
    );
    assert_eq!(
        request_as(&pki, "payment", inbound, "POST", "/api/v1/charges").0,
        403
    );
    assert_eq!(
        request_as(&pki, "intruder", inbound, "POST", "/api/v1/charges?receipt=1").0,
        403
    );
    // …its allowance does not override a DENY policy, and elsewhere it is not asked.
    assert_eq!(
        request_as(&pki, "payment", inbound, "DELETE", "/api/v1/charges?receipt=1").0,
        403
    );
    assert_eq!(request_as(&pki, "intruder", inbound, "GET", "/health").0, 200);
}

/// The attacks of the hardening pass, each a class: the policy and the app
/// disagreeing on the request (authority, path parameters, routing headers,
/// header spellings, upgrades, bodies), and one client holding every slot.
/// `cargo test -p zt --test proxy attacks::` runs them alone.
mod attacks {
    use super::*;

    const DENY_ADMIN_HOST: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin-host
  namespace: production
spec:
  action: DENY
  rules:
  - to:
    - operation:
        hosts: [\"admin.example.com\"]
";

    const DENY_INTERNAL: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-internal
  namespace: production
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/internal\", \"/internal/*\"]
";

    /// The echo app behind a proxy whose policies deny the host
    /// admin.example.com and the paths under /internal, and allow the rest.
    struct Guarded {
        _dir: tempfile::TempDir,
        pki: Pki,
        _app: Running,
        _proxy: Running,
        inbound: SocketAddr,
        admin: SocketAddr,
        log: PathBuf,
    }

    impl Guarded {
        fn start(test: &str, extra: &[&str]) -> Option<Self> {
            Self::with_app(test, "echo_app.py", extra)
        }

        fn with_app(test: &str, app: &str, extra: &[&str]) -> Option<Self> {
            let python = zt_testkit::python(test)?;
            let dir = tempfile::tempdir().unwrap();
            let pki = Pki::new(dir.path());
            let policies = dir.path().join("policies");
            fs::create_dir(&policies).unwrap();
            fs::write(policies.join("deny-admin-host.yaml"), DENY_ADMIN_HOST).unwrap();
            fs::write(policies.join("deny-internal.yaml"), DENY_INTERNAL).unwrap();
            let (app_addr, app) = start_app(&python, &[interop(app).to_str().unwrap()]);
            let log = dir.path().join("decisions.log");
            let (_proxy, inbound, admin) = dev_proxy(
                &pki,
                &[
                    &[
                        "--app",
                        &app_addr.to_string(),
                        "--policy-dir",
                        policies.to_str().unwrap(),
                        "--namespace",
                        "production",
                        "--label",
                        "app=billing",
                        "--decision-log",
                        log.to_str().unwrap(),
                        "--strip-header",
                        "X-Client-CN",
                    ][..],
                    extra,
                ]
                .concat(),
            );
            Some(Self {
                _dir: dir,
                pki,
                _app: app,
                _proxy,
                inbound,
                admin,
                log,
            })
        }

        /// The status of the answer to `raw`, and what the app received when
        /// it answered (the echo app's JSON).
        fn send(&self, raw: &str) -> (u16, Value) {
            let answer = raw_answer(&self.pki, self.inbound, raw.as_bytes());
            let status = answer
                .strip_prefix("HTTP/1.")
                .and_then(|rest| rest.get(2..5)?.parse().ok())
                .unwrap_or_else(|| panic!("no HTTP answer to {raw:?}: {answer:?}"));
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            (status, serde_json::from_str(body).unwrap_or(Value::Null))
        }

        /// Decision records, as the log holds them.
        fn decisions(&self) -> Vec<Value> {
            fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        }
    }

    fn get(target: &str, headers: &str) -> String {
        format!("GET {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n")
    }

    #[test]
    fn the_policy_decides_on_the_authority_the_app_receives() {
        let Some(g) = Guarded::start("the_policy_decides_on_the_authority_the_app_receives", &[]) else {
            return;
        };
        // Allowed: the app gets the host the policy saw, normalized.
        for (host, seen) in [
            ("public.example.com", "public.example.com"),
            ("Public.Example.COM.", "public.example.com"),
        ] {
            let (status, app) = g.send(&get("/public", &format!("Host: {host}\r\n")));
            assert_eq!(status, 200, "Host: {host}");
            assert_eq!(app["headers"]["host"], serde_json::json!([seen]), "Host: {host}");
            assert_eq!(app["path"], "/public");
        }
        let (status, app) = g.send(&get(
            "http://public.example.com/public",
            "Host: public.example.com\r\n",
        ));
        assert_eq!(
            (status, &app["path"]),
            (200, &Value::from("/public")),
            "absolute form"
        );
        assert_eq!(app["headers"]["host"], serde_json::json!(["public.example.com"]));

        let denied = [
            ("a trailing dot", get("/public", "Host: admin.example.com.\r\n")),
            (
                "upper case and a trailing dot",
                get("/public", "Host: ADMIN.Example.com.\r\n"),
            ),
            (
                "absolute form naming the Host",
                get("http://admin.example.com/public", "Host: admin.example.com\r\n"),
            ),
        ];
        for (what, raw) in &denied {
            assert_eq!(g.send(raw).0, 403, "{what}");
        }
        let malformed = [
            (
                "absolute form and another Host",
                get("http://admin.example.com/public", "Host: public.example.com\r\n"),
            ),
            (
                "absolute form and another Host, reversed",
                get("http://public.example.com/public", "Host: admin.example.com\r\n"),
            ),
            (
                "absolute form with a trailing dot and another Host",
                get("http://admin.example.com./public", "Host: public.example.com\r\n"),
            ),
            (
                "two Host headers",
                get(
                    "/public",
                    "Host: public.example.com\r\nHost: admin.example.com\r\n",
                ),
            ),
            (
                "two Host headers, reversed",
                get(
                    "/public",
                    "Host: admin.example.com\r\nHost: public.example.com\r\n",
                ),
            ),
            (
                "two hosts in one Host",
                get("/public", "Host: public.example.com, admin.example.com\r\n"),
            ),
            ("no Host", get("/public", "")),
            ("an empty Host", get("/public", "Host: \r\n")),
            (
                "user info",
                get("/public", "Host: public.example.com@admin.example.com\r\n"),
            ),
            ("no Host, HTTP/1.0", "GET /public HTTP/1.0\r\n\r\n".to_owned()),
            (
                "absolute form without Host",
                "GET http://public.example.com/public HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
            ),
        ];
        for (what, raw) in &malformed {
            assert_eq!(g.send(raw).0, 400, "{what}");
        }
        // The log has each denial with the host the app would have got.
        let denials: Vec<Value> = g
            .decisions()
            .into_iter()
            .filter(|d| d["decision"] == "DENY")
            .collect();
        assert_eq!(denials.len(), denied.len(), "{denials:?}");
        assert!(
            denials.iter().all(|d| d["host"] == "admin.example.com"),
            "{denials:?}"
        );
        assert_eq!(
            metric(g.admin, "zt_proxy_refused_total{reason=\"malformed_request\"}"),
            malformed.len() as f64
        );
    }

    #[test]
    fn path_parameters_are_refused_by_default_and_stripped_when_asked() {
        let Some(g) = Guarded::start(
            "path_parameters_are_refused_by_default_and_stripped_when_asked",
            &[],
        ) else {
            return;
        };
        let host = "Host: public.example.com\r\n";
        for target in [
            "/internal;x",
            "/internal;jsessionid=0",
            "/;x/internal",
            "/public/..;/internal",
            "/public;x",
            "/%2e%2e;/internal",
        ] {
            assert_eq!(g.send(&get(target, host)).0, 400, "{target}");
        }
        assert_eq!(g.send(&get("/internal", host)).0, 403);
        assert_eq!(g.send(&get("/public?a=1;b=2", host)).0, 200, "a ';' in the query");

        let Some(g) = Guarded::start(
            "path_parameters_are_refused_by_default_and_stripped_when_asked",
            &["--path-params", "strip"],
        ) else {
            return;
        };
        for target in [
            "/internal;x",
            "/internal/;x",
            "/;x/internal",
            "/public/..;/internal",
            "/internal;/a",
        ] {
            assert_eq!(g.send(&get(target, host)).0, 403, "{target}");
        }
        for (target, seen) in [
            ("/public;jsessionid=1", "/public"),
            ("/a;x/public;y?q=1;2", "/a/public?q=1;2"),
        ] {
            let (status, app) = g.send(&get(target, host));
            assert_eq!((status, &app["path"]), (200, &Value::from(seen)), "{target}");
        }
    }

    #[test]
    fn identity_and_routing_headers_never_reach_the_app_in_any_spelling() {
        let Some(g) = Guarded::start(
            "identity_and_routing_headers_never_reach_the_app_in_any_spelling",
            &[],
        ) else {
            return;
        };
        let forged = "Host: public.example.com\r\n\
            X-Client-CN: admin\r\n\
            X_Client_CN: admin\r\n\
            x_client-cn: admin\r\n\
            X-Forwarded-Client-Cert: URI=spiffe://example.org/admin\r\n\
            X_Forwarded_Client_Cert: URI=spiffe://example.org/admin\r\n\
            X-Original-URL: /internal\r\n\
            X_Original_URL: /internal\r\n\
            X-Rewrite-URL: /internal\r\n\
            X-Forwarded-Host: admin.example.com\r\n\
            X-HTTP-Method-Override: DELETE\r\n\
            X-Method-Override: DELETE\r\n\
            Forwarded: host=admin.example.com\r\n\
            X_Anything: 1\r\n\
            Accept: application/json\r\n";
        let (status, app) = g.send(&get("/public", forged));
        assert_eq!(status, 200);
        let mut names: Vec<&str> = app["headers"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "host", "x-forwarded-client-cert"], "{app}");
        assert_eq!(
            app["headers"]["x-forwarded-client-cert"][0]
                .as_str()
                .unwrap()
                .rsplit("URI=")
                .next(),
            Some("spiffe://example.org/ns/production/sa/payment-service")
        );
        // Refused instead of dropped, when asked.
        let Some(g) = Guarded::start(
            "identity_and_routing_headers_never_reach_the_app_in_any_spelling",
            &[
                "--headers-with-underscores",
                "reject",
                "--trust-header",
                "x-forwarded-host",
            ],
        ) else {
            return;
        };
        assert_eq!(
            g.send(&get(
                "/public",
                "Host: public.example.com\r\nX_Client_CN: admin\r\n"
            ))
            .0,
            400
        );
        let (status, app) = g.send(&get(
            "/public",
            "Host: public.example.com\r\nX-Forwarded-Host: gw.example.com\r\nX-Original-URL: /internal\r\n",
        ));
        assert_eq!(status, 200);
        assert_eq!(
            app["headers"]["x-forwarded-host"],
            serde_json::json!(["gw.example.com"])
        );
        assert!(app["headers"].get("x-original-url").is_none(), "{app}");
    }

    #[test]
    fn only_websocket_upgrades_are_spliced() {
        let Some(g) = Guarded::start("only_websocket_upgrades_are_spliced", &[]) else {
            return;
        };
        // An h2c upgrade is served as an ordinary request: the app never sees
        // the Upgrade, so it cannot switch.
        let (status, app) = g.send(&get(
            "/public",
            "Host: public.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        ));
        assert_eq!(status, 200);
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                app["headers"].get(name).is_none(),
                "{name} reached the app: {app}"
            );
        }
        // A WebSocket handshake to a denied path is denied like any request.
        assert_eq!(
            g.send(&get(
                "/internal",
                "Host: public.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            ))
            .0,
            403
        );

        // A lenient backend that switches protocols anyway, then serves
        // whatever comes next: the proxy answers 502 and keeps speaking
        // HTTP/1.1, so the request smuggled behind is authorized (and denied).
        let Some(g) = Guarded::with_app("only_websocket_upgrades_are_spliced", "upgrade_app.py", &[]) else {
            return;
        };
        let answer = raw_answer(
            &g.pki,
            g.inbound,
            b"GET /lenient HTTP/1.1\r\nHost: public.example.com\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\
              GET /internal HTTP/1.1\r\nHost: public.example.com\r\nConnection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
        assert!(answer.contains("HTTP/1.1 403 "), "{answer}");
        assert!(
            !answer.contains("served"),
            "a tunnelled request was served: {answer}"
        );
    }

    #[test]
    fn bodies_are_forwarded_whole_or_refused_never_cut_silently() {
        let Some(g) = Guarded::start(
            "bodies_are_forwarded_whole_or_refused_never_cut_silently",
            &["--max-request-body", "64"],
        ) else {
            return;
        };
        let chunked = |method: &str, path: &str, chunks: &[&str]| {
            let body: String = chunks
                .iter()
                .map(|c| format!("{:x}\r\n{c}\r\n", c.len()))
                .chain(["0\r\n\r\n".to_owned()])
                .collect();
            format!(
                "{method} {path} HTTP/1.1\r\nHost: public.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
            )
        };
        // A chunked GET body reaches the app whole.
        let (status, app) = g.send(&chunked("GET", "/public/get", &["hello, ", "app"]));
        assert_eq!(status, 200);
        assert_eq!(
            (&app["method"], &app["body"]),
            (&Value::from("GET"), &Value::from("hello, app"))
        );
        let (status, app) = g.send(&chunked("POST", "/public/post", &["within", " the limit"]));
        assert_eq!((status, &app["body"]), (200, &Value::from("within the limit")));
        // Over the limit: 413, and the app never took the cut body for a whole one.
        let big = "x".repeat(50);
        assert_eq!(
            g.send(&chunked("POST", "/public/too-big", &[&big, &big, &big])).0,
            413
        );
        assert_eq!(
            g.send(&chunked("GET", "/public/too-big-get", &[&big, &big])).0,
            413
        );
        let (status, completed) = g.send(&get("/__completed", "Host: public.example.com\r\n"));
        assert_eq!(status, 200);
        assert_eq!(
            completed,
            serde_json::json!(["/public/get", "/public/post"]),
            "the app answered a request whose body was cut"
        );
    }

    #[test]
    fn one_source_cannot_hold_every_connection() {
        let Some(python) = zt_testkit::python("one_source_cannot_hold_every_connection") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
        let (_proxy, inbound, admin) = dev_proxy(
            &pki,
            &[
                "--app",
                &app_addr.to_string(),
                "--allow-spiffe-id",
                "spiffe://example.org/*",
                "--max-connections",
                "3",
                "--max-connections-per-source",
                "2",
                // Idle connections stay open: only the caps may close them here.
                "--request-header-timeout",
                "10m",
            ],
        );
        let served =
            |tls: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>| !tls.conn.is_handshaking();
        let held: Vec<_> = (0..2)
            .map(|_| tls_connect_from(&pki, [127, 0, 0, 1], inbound))
            .collect();
        assert!(held.iter().all(served));
        // A third from the same source is closed before its handshake.
        assert!(!served(&tls_connect_from(&pki, [127, 0, 0, 1], inbound)));
        assert_eq!(
            metric(
                admin,
                "zt_proxy_refused_total{reason=\"source_connection_limit\"}"
            ),
            1.0
        );
        // Another source still gets in, up to the total.
        let other = tls_connect_from(&pki, [127, 0, 0, 2], inbound);
        assert!(served(&other));
        assert!(!served(&tls_connect_from(&pki, [127, 0, 0, 3], inbound)));
        assert_eq!(
            metric(admin, "zt_proxy_refused_total{reason=\"connection_limit\"}"),
            1.0
        );
        // Slots come back when connections close.
        drop(held);
        let start = Instant::now();
        while !served(&tls_connect_from(&pki, [127, 0, 0, 1], inbound)) {
            assert!(start.elapsed() < DEADLINE, "connections never freed");
            std::thread::sleep(POLL);
        }
    }

    /// `tls_connect` as the payment service, from the loopback address `source`.
    fn tls_connect_from(
        pki: &Pki,
        source: [u8; 4],
        addr: SocketAddr,
    ) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tcp = runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind((source, 0).into()).unwrap();
            socket.connect(addr).await.unwrap().into_std().unwrap()
        });
        tcp.set_nonblocking(false).unwrap();
        tls_handshake(pki, "payment", tcp)
    }

    #[test]
    fn a_failed_decision_log_denies_everything_and_says_not_ready() {
        let Some(python) = zt_testkit::python("a_failed_decision_log_denies_everything_and_says_not_ready")
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let policies = dir.path().join("policies");
        fs::create_dir(&policies).unwrap();
        fs::write(policies.join("deny-internal.yaml"), DENY_INTERNAL).unwrap();
        let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
        let log = dir.path().join("decisions.log");
        let (command, inbound, admin) = proxy_command(zt_exe());
        // The log may grow to 4 KiB (ulimit -f counts 512-byte blocks); past
        // that a write fails (EFBIG, with SIGXFSZ ignored), as on a full disk.
        let mut args: Vec<String> = command
            .get_args()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect();
        args.extend(pki.proxy_identity());
        args.extend(
            [
                "--app",
                &app_addr.to_string(),
                "--policy-dir",
                policies.to_str().unwrap(),
                "--namespace",
                "production",
                "--decision-log",
                log.to_str().unwrap(),
            ]
            .map(str::to_owned),
        );
        let mut command = Command::new("sh");
        command
            .args(["-c", "trap '' XFSZ; ulimit -f 8; exec \"$0\" \"$@\""])
            .arg(zt_exe())
            .args(&args)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        let _proxy = spawn_ready(command, admin);
        let mut statuses = Vec::new();
        let start = Instant::now();
        loop {
            let (status, _) = request_as(&pki, "payment", inbound, "GET", "/public");
            statuses.push(status);
            if status != 200 {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "the log never failed: {statuses:?}");
        }
        assert_eq!(statuses.last(), Some(&403), "{statuses:?}");
        assert!(
            statuses.len() > 1,
            "the first request already failed: {statuses:?}"
        );
        // Every request after is denied, and the proxy says why it is not ready.
        assert_eq!(request_as(&pki, "payment", inbound, "GET", "/public").0, 403);
        let (status, why) = http_get(admin, "/readyz").unwrap();
        assert_eq!(status, 503, "{why}");
        assert!(why.contains("decision log"), "{why}");
        assert!(metric(admin, "zt_proxy_decision_log_failures_total") >= 1.0);
        // What was written still verifies.
        let out = Command::new(zt_exe())
            .args(["audit", "verify"])
            .arg(&log)
            .output()
            .unwrap();
        succeed(&out, "zt audit verify");
    }

    #[test]
    fn a_workload_without_a_namespace_is_not_ready_and_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let policies = dir.path().join("policies");
        fs::create_dir(&policies).unwrap();
        fs::write(policies.join("deny-internal.yaml"), DENY_INTERNAL).unwrap();
        let app: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        // The proxy's SVID is spiffe://example.org/billing: no /ns/NS/.
        let (mut command, inbound, admin) = proxy_command(zt_exe());
        command
            .args([
                "--app",
                &app.to_string(),
                "--policy-dir",
                policies.to_str().unwrap(),
            ])
            .args(pki.proxy_identity());
        let mut proxy = Running(command.spawn().unwrap());
        let start = Instant::now();
        let why = loop {
            if let Ok((status, body)) = http_get(admin, "/readyz")
                && body.contains("namespace")
            {
                assert_eq!(status, 503, "{body}");
                break body;
            }
            assert!(proxy.0.try_wait().unwrap().is_none(), "zt proxy exited");
            assert!(start.elapsed() < DEADLINE, "no reason on /readyz");
            std::thread::sleep(POLL);
        };
        assert!(why.contains("--namespace"), "{why}");
        assert_eq!(metric(admin, "zt_proxy_policy_namespace_unknown"), 1.0);
        assert_eq!(request_as(&pki, "payment", inbound, "GET", "/public").0, 403);
    }

    #[test]
    fn http2_authority_and_forged_headers_are_held_to_the_same_rules() {
        let Some(g) = Guarded::start(
            "http2_authority_and_forged_headers_are_held_to_the_same_rules",
            &[],
        ) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let send = |authority: &'static str, headers: &'static [(&'static str, &'static str)]| {
                h2_request(&g.pki, g.inbound, authority, headers)
            };
            let (status, app) = send("public.example.com", &[]).await;
            assert_eq!(status, 200);
            assert_eq!(app["headers"]["host"], serde_json::json!(["public.example.com"]));
            assert_eq!(send("admin.example.com", &[]).await.0, 403);
            assert_eq!(send("admin.example.com.", &[]).await.0, 403);
            assert_eq!(
                send("admin.example.com", &[("host", "public.example.com")])
                    .await
                    .0,
                400
            );
            assert_eq!(
                send("public.example.com", &[("host", "admin.example.com")])
                    .await
                    .0,
                400
            );
            let (status, app) = send(
                "public.example.com",
                &[
                    ("x-client-cn", "admin"),
                    ("x_client_cn", "admin"),
                    ("x-forwarded-client-cert", "URI=spiffe://example.org/admin"),
                    ("x_forwarded_client_cert", "URI=spiffe://example.org/admin"),
                    ("x-original-url", "/internal"),
                ],
            )
            .await;
            assert_eq!(status, 200);
            let mut names: Vec<&str> = app["headers"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            names.sort_unstable();
            assert_eq!(names, ["host", "x-forwarded-client-cert"], "{app}");
            assert!(
                app["headers"]["x-forwarded-client-cert"][0]
                    .as_str()
                    .unwrap()
                    .ends_with("URI=spiffe://example.org/ns/production/sa/payment-service"),
                "{app}"
            );
        });
    }

    /// One HTTP/2 GET /public as the payment service with `:authority` and
    /// extra headers; its status and the app's JSON.
    async fn h2_request(
        pki: &Pki,
        addr: SocketAddr,
        authority: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        use http_body_util::BodyExt as _;
        let mut config = client_tls_config(pki, "payment");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let mut request = http::Request::get(format!("https://{authority}/public"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(
                request
                    .body(http_body_util::Empty::<hyper::body::Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

#[test]
fn rego_memory_bomb_in_a_custom_provider_denies_and_the_proxy_keeps_serving() {
    let Some(python) =
        zt_testkit::python("rego_memory_bomb_in_a_custom_provider_denies_and_the_proxy_keeps_serving")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(
        policies.join("custom.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: production}\nspec:\n  action: CUSTOM\n  provider: {name: zt-rego}\n  rules:\n  - to:\n    - operation:\n        paths: [\"/api/*\"]\n",
    )
    .unwrap();
    let mut rego = String::from(
        "package ext\n\ndefault allow := false\n\n\
         allow if input.parsed_path == [\"api\", \"ok\"]\n\
         allow if {\n\tinput.parsed_path == [\"api\", \"range\"]\n\tcount([i | some i in numbers.range(1, 1e12)]) > 0\n}\n\
         allow if {\n\tinput.parsed_path == [\"api\", \"fill\"]\n\tcount([concat(\"\", [p12, format_int(i, 10)]) | some i in numbers.range(1, 1000000)]) > 0\n}\n\
         p0 := \"0123456789abcdef\"\n",
    );
    for i in 1..=12 {
        rego.push_str(&format!("p{i} := concat(\"\", [p{}, p{}])\n", i - 1, i - 1));
    }
    let rego_file = dir.path().join("ext.rego");
    fs::write(&rego_file, rego).unwrap();
    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let (mut proxy, inbound, _) = dev_proxy(
        &pki,
        &[
            "--app",
            &app_addr.to_string(),
            "--policy-dir",
            policies.to_str().unwrap(),
            "--namespace",
            "production",
            "--rego",
            rego_file.to_str().unwrap(),
            "--custom-provider",
            "zt-rego=ext/allow",
            "--rego-max-memory",
            "128MiB",
            "--rego-timeout",
            "120s",
        ],
    );
    for bomb in ["/api/range", "/api/fill", "/api/range"] {
        assert_eq!(request_as(&pki, "payment", inbound, "GET", bomb).0, 403, "{bomb}");
        assert_eq!(
            request_as(&pki, "payment", inbound, "GET", "/api/ok").0,
            200,
            "after {bomb}"
        );
    }
    assert!(proxy.0.try_wait().unwrap().is_none(), "zt proxy exited");
}

/// The seed tutorial's own code, unchanged, behind zt proxy: its FastAPI
/// service trusts `X-Client-CN`, which the proxy sets from the verified
/// SVID (`--identity-header X-Client-CN={sa}`) after removing any copy the
/// caller sent; its `requests` client calls through mTLS.
mod seed_tutorial {
    use super::*;

    fn seed(name: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/seed-tutorial")
            .join(name)
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// The tutorial's client.py as `client`: its two printed lines, `STATUS BODY`.
    fn tutorial_client(python: &Path, pki: &Pki, inbound: SocketAddr, client: &str) -> Vec<String> {
        let out = Command::new(python)
            .arg(seed("client.py"))
            .arg(format!("https://localhost:{}", inbound.port()))
            .args([
                pki.file(&format!("{client}.crt")),
                pki.file(&format!("{client}.key")),
                pki.file("bundle.pem"),
            ])
            .output()
            .unwrap();
        succeed(&out, "the tutorial's client.py")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_tutorials_service_and_client_run_unchanged_behind_zt_proxy() {
        let Some(python) = zt_testkit::python("seed tutorial") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        for (id, name) in [
            ("spiffe://example.org/ns/default/sa/service-one", "service-one"),
            ("spiffe://example.org/ns/default/sa/service-two", "service-two"),
            ("spiffe://example.org/web", "web"),
        ] {
            let out = Command::new(zt_exe())
                .args(["ca", "issue", "--ca", "ca", "--spiffe-id", id, "--out", name])
                .current_dir(dir.path())
                .output()
                .unwrap();
            succeed(&out, "zt ca issue");
        }
        let (app, _app) = start_app(&python, &[&seed("server_main.py"), &seed("simple_policy.json")]);
        let (_proxy, inbound, admin) = dev_proxy(
            &pki,
            &[
                "--app",
                &app.to_string(),
                "--allow-spiffe-id",
                "spiffe://example.org/*",
                "--identity-header",
                "X-Client-CN={sa}",
            ],
        );

        let one = tutorial_client(&python, &pki, inbound, "service-one");
        assert_eq!(one.len(), 2, "{one:?}");
        assert!(one[0].starts_with("200 "), "{one:?}");
        assert_eq!(
            one[1], r#"200 {"message":"Access granted","client":"service-one"}"#,
            "service-one is allowed /internal by the tutorial's JSON policy"
        );
        let two = tutorial_client(&python, &pki, inbound, "service-two");
        assert!(two[0].starts_with("200 "), "{two:?}");
        assert_eq!(two[1], r#"403 {"detail":"Denied by policy"}"#, "{two:?}");

        // service-two forging service-one's name, in the spellings app stacks
        // merge: the app still hears service-two.
        let setup_requests = |client: &str, headers: &[&str]| -> Value {
            let out = Command::new(&python)
                .arg(interop("requests_client.py"))
                .arg(format!("https://localhost:{}/internal", inbound.port()))
                .args([
                    pki.file(&format!("{client}.crt")),
                    pki.file(&format!("{client}.key")),
                    pki.file("bundle.pem"),
                ])
                .args(headers)
                .output()
                .unwrap();
            serde_json::from_str(&succeed(&out, "requests_client.py")).unwrap()
        };
        for forged in [
            "X-Client-CN=service-one",
            "x-client-cn=service-one",
            "X_Client_CN=service-one",
        ] {
            let answer = setup_requests("service-two", &[forged]);
            assert_eq!(answer["status"], 403, "{forged}: {answer}");
            assert!(
                answer["body"].as_str().unwrap().contains("Denied by policy"),
                "{answer}"
            );
        }
        // A caller whose SPIFFE ID has no service account gets no header at
        // all, not an empty one: the app hears nobody.
        let answer = setup_requests("web", &["X-Client-CN=service-one"]);
        assert_eq!(answer["status"], 403, "{answer}");
        // The allowed call with a forged header: the verified name wins.
        let answer = setup_requests("service-one", &["X-Client-CN=service-two"]);
        assert_eq!(answer["status"], 200, "{answer}");
        assert!(
            answer["body"]
                .as_str()
                .unwrap()
                .contains("\"client\":\"service-one\""),
            "{answer}"
        );
        assert!(metric(admin, "zt_proxy_requests_total{code=\"403\"}") >= 5.0);
    }
}

/// The size of the checkpoint in a cosigned (or signed) note file, if any.
fn checkpoint_size_in(path: &Path) -> Option<u64> {
    let note = fs::read_to_string(path).ok()?;
    let parsed = zt_audit::note::Note::parse(&note).ok()?;
    Some(zt_audit::note::Checkpoint::parse(parsed.text).ok()?.size)
}

/// Rewrites `from`'s records into a new log at `to` with record 2's decision
/// flipped, chained and checkpointed again with the writer's own key (`key`).
fn rewrite_log(from: &Path, to: &Path, key: &Path) {
    let records: Vec<zt_audit::Record> = fs::read_to_string(from)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let signer = zt_audit::signed::load_key(key).unwrap();
    let policy = zt_audit::CheckpointPolicy {
        every: 1000,
        interval: std::time::Duration::from_secs(3600),
    };
    let mut writer = zt_audit::Writer::open_signed(to, signer, policy).unwrap();
    let mut flipped = records;
    flipped[1].decision = if flipped[1].decision == "DENY" {
        "ALLOW"
    } else {
        "DENY"
    }
    .into();
    writer.append(flipped).unwrap();
    // Dropped: the last checkpoint covers every record.
}

#[test]
fn zt_server_witnesses_shipped_checkpoints_and_a_rewritten_log_is_caught() {
    let Some(python) =
        zt_testkit::python("zt_server_witnesses_shipped_checkpoints_and_a_rewritten_log_is_caught")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), None);
    let agent_dir = dir.path().join("agent");
    fs::create_dir(&agent_dir).unwrap();
    let agent_id = "spiffe://example.org/agent/node-1";
    let agent = AgentProcess::start(&server, &agent_dir, agent_id);
    let billing_exe = zt_at_path(&dir.path().join("billing-proxy"));
    let billing_id = "spiffe://example.org/ns/production/sa/billing-service";
    register(&server, agent_id, billing_id, &billing_exe, &[]);
    let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
    let log = dir.path().join("billing-decisions.log");
    let key_file = zt_audit::signed::default_key_path(&log);
    let cosigned = zt_audit::signed::cosigned_path(&log);
    // Plaintext accepted (--mode permissive); no policy yet, so each request is
    // a recorded DENY. A checkpoint every 3 records, and soon after the last.
    let start_billing = || {
        let (mut command, inbound, admin) = proxy_command(&billing_exe);
        command
            .args([
                "--app",
                &app_addr.to_string(),
                "--mode",
                "permissive",
                "--policies-from-agent",
                "--decision-log-checkpoint-every",
                "3",
                "--decision-log-checkpoint-interval",
                "1s",
            ])
            .arg("--decision-log")
            .arg(&log)
            .arg("--socket")
            .arg(&agent.socket);
        (spawn_ready(command, admin), inbound, admin)
    };
    let (billing, inbound, _) = start_billing();
    for i in 0..5 {
        assert_eq!(http_get(inbound, &format!("/r{i}")).unwrap().0, 403);
    }

    // The last checkpoint (5 records) comes back cosigned, kept 0600 beside the log.
    let start = Instant::now();
    while checkpoint_size_in(&cosigned) != Some(5) {
        assert!(
            start.elapsed() < DEADLINE,
            "no checkpoint of 5 records cosigned: {:?}\n{}",
            fs::read_to_string(&cosigned),
            server.stderr()
        );
        std::thread::sleep(POLL);
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(&cosigned).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let witness_key = ok(&server, &["audit", "witness-key"]).trim().to_owned();
    assert!(
        witness_key.starts_with("example.org/zt-server/witness+"),
        "{witness_key}"
    );
    let shown = Command::new(zt_exe())
        .args(["audit", "key", "show", key_file.to_str().unwrap()])
        .output()
        .unwrap();
    let key = succeed(&shown, "zt audit key show").trim().to_owned();
    let verify = |log: &Path, extra: &[&str]| {
        Command::new(zt_exe())
            .args(["audit", "verify", log.to_str().unwrap(), "--key", &key])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = verify(&log, &["--witness-key", &witness_key]);
    let stdout = succeed(&out, "zt audit verify --witness-key");
    assert!(
        stdout.contains(&format!("witnessed by {witness_key} up to record 5"))
            && stdout.contains("every record is witnessed"),
        "{stdout}"
    );
    assert!(sample(server.http, "zt_server_checkpoints_cosigned_total").unwrap() >= 1.0);
    // An implementation of the specs no one here wrote accepts the cosignature.
    let out = Command::new(&python)
        .arg(interop("verify_checkpoint.py"))
        .arg(&key)
        .arg(&log)
        .arg(&witness_key)
        .output()
        .unwrap();
    let checked = succeed(&out, "verify_checkpoint.py");
    assert!(checked.ends_with("cosigned 5 ok\n"), "{checked}");

    // The writer rewrites record 2 and signs its chain and checkpoints again:
    // its own key cannot tell, zt server's cosignature can.
    let forged_dir = dir.path().join("forged");
    fs::create_dir(&forged_dir).unwrap();
    let forged = forged_dir.join("billing-decisions.log");
    rewrite_log(&log, &forged, &key_file);
    fs::copy(&cosigned, zt_audit::signed::cosigned_path(&forged)).unwrap();
    succeed(
        &verify(&forged, &[]),
        "the rewritten log, with the writer's key only",
    );
    let out = verify(&forged, &["--witness-key", &witness_key]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("--witness-key {witness_key}: "))
            && stderr.contains("forged/billing-decisions.log.cosigned: the root hash")
            && stderr.contains("the log was rewritten after zt server witnessed it"),
        "{stderr}"
    );

    // The writer's key is no witness key: the error names the flag and value.
    let out = verify(&log, &["--witness-key", &key]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "--witness-key {key:?}: public key: signature type 0x01, not 0x04"
        )),
        "{stderr}"
    );

    // The proxy restarted on the rewritten log offers its new checkpoint to be
    // witnessed: its root is not that of the records zt server holds, refused.
    drop(billing);
    for suffix in ["", ".checkpoints"] {
        fs::copy(
            format!("{}{suffix}", forged.display()),
            format!("{}{suffix}", log.display()),
        )
        .unwrap();
    }
    fs::remove_file(&cosigned).unwrap();
    let (billing, _, billing_admin) = start_billing();
    eventually("the rewritten checkpoint refused", || {
        (sample(server.http, "zt_server_witness_checkpoint_refusals_total").unwrap_or(0.0) >= 1.0)
            .then_some(())
    });
    assert!(
        server.stderr().contains(&format!(
            "checkpoint from {billing_id}: its root hash is not the one of the 5 records zt server holds"
        )),
        "{}",
        server.stderr()
    );
    assert!(metric(billing_admin, "zt_proxy_decision_ship_failures_total") >= 1.0);
    assert!(!cosigned.exists(), "a refused checkpoint was kept as cosigned");

    // A fresh log under a new key for the same workload: refused, naming it.
    drop(billing);
    for suffix in ["", ".checkpoints", ".key"] {
        fs::remove_file(format!("{}{suffix}", log.display())).unwrap();
    }
    fs::remove_file(log.with_extension("shipped")).unwrap();
    let (_billing, inbound, _) = start_billing();
    assert_eq!(http_get(inbound, "/fresh").unwrap().0, 403);
    eventually("the new key refused", || {
        (sample(server.http, "zt_server_witness_key_refusals_total").unwrap_or(0.0) >= 1.0).then_some(())
    });
    assert!(
        server.stderr().contains(&format!(
            "decisions from {billing_id}: verifier key zt/decision-log/"
        )) && server
            .stderr()
            .contains(&format!("is not {key}, the key pinned for this source")),
        "{}",
        server.stderr()
    );
    // Replacing the pinned key is an operator's act.
    let forgot = ok(&server, &["audit", "forget-key", billing_id]);
    assert!(
        forgot.contains(&format!("{billing_id}: forgot decision log key {key}")),
        "{forgot}"
    );
}

/// W3C trace context and a span per request exported with OTLP/gRPC
/// (`--otlp-endpoint`), received by OpenTelemetry's own protos served with grpcio
/// (`tests/interop/otlp_collector.py`).
mod tracing_otlp {
    use super::*;

    /// The caller's trace and span, as in the W3C Trace Context spec's examples.
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const SPAN: &str = "b7ad6b7169203331";

    /// The echo app behind a proxy allowing the payment service, with spans
    /// exported to a collector if `traced`.
    struct Traced {
        _dir: tempfile::TempDir,
        pki: Pki,
        app: Option<Running>,
        _collector: Option<Running>,
        proxy: Running,
        inbound: SocketAddr,
        spans: PathBuf,
        log: PathBuf,
        python: PathBuf,
    }

    impl Traced {
        /// Spans sent within 100 ms of their end, if `traced`.
        fn start(test: &str, traced: bool) -> Option<Self> {
            Self::start_with(test, traced.then_some("100"))
        }

        /// Spans sent in batches every `delay` milliseconds (`OTEL_BSP_SCHEDULE_DELAY`),
        /// if given.
        fn start_with(test: &str, delay: Option<&str>) -> Option<Self> {
            let python = zt_testkit::python(test)?;
            let dir = tempfile::tempdir().unwrap();
            let pki = Pki::new(dir.path());
            let (app_addr, app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
            let spans = dir.path().join("spans.jsonl");
            let log = dir.path().join("proxy.log");
            let (mut command, inbound, admin) = proxy_command(zt_exe());
            command
                .args(["--app", &app_addr.to_string()])
                .args(pki.proxy_identity())
                .args([
                    "--allow-spiffe-id",
                    "spiffe://example.org/ns/*/sa/payment-service",
                ])
                .stderr(fs::File::create(&log).unwrap());
            let collector = delay.map(|delay| {
                let collector = interop("otlp_collector.py");
                let (addr, collector) =
                    start_app(&python, &[collector.to_str().unwrap(), spans.to_str().unwrap()]);
                command
                    .args(["--otlp-endpoint", &format!("http://{addr}")])
                    // The batch processor's standard knob.
                    .env("OTEL_BSP_SCHEDULE_DELAY", delay);
                collector
            });
            let proxy = spawn_ready(command, admin);
            Some(Self {
                _dir: dir,
                pki,
                app: Some(app),
                _collector: collector,
                proxy,
                inbound,
                spans,
                log,
                python,
            })
        }

        /// Python `requests` as `client` with `headers` (NAME=VALUE): the status,
        /// and the headers the app received (an empty object if it received none).
        fn get(&self, client: &str, path: &str, headers: &[&str]) -> (u64, Value) {
            let url = format!("https://localhost:{}{path}", self.inbound.port());
            let out = Command::new(&self.python)
                .arg(interop("requests_client.py"))
                .args([
                    &url,
                    &self.pki.file(&format!("{client}.crt")),
                    &self.pki.file(&format!("{client}.key")),
                    &self.pki.file("bundle.pem"),
                ])
                .args(headers)
                .output()
                .unwrap();
            let answer: Value = serde_json::from_str(&succeed(&out, "requests_client.py")).unwrap();
            let status = answer["status"].as_u64().unwrap_or_else(|| panic!("{answer}"));
            let seen = serde_json::from_str::<Value>(answer["body"].as_str().unwrap())
                .map(|seen| seen["headers"].clone())
                .unwrap_or_else(|_| Value::Object(Default::default()));
            (status, seen)
        }

        /// The span the collector received that `wanted` picks, waited for.
        fn span(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
            let start = Instant::now();
            loop {
                let received = fs::read_to_string(&self.spans).unwrap_or_default();
                let found = received
                    .lines()
                    .map(|line| serde_json::from_str::<Value>(line).unwrap())
                    .find(|span| wanted(span));
                if let Some(span) = found {
                    return span;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "no span {what} in:\n{received}\nproxy log:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
                std::thread::sleep(POLL);
            }
        }
    }

    /// The one value of `name` the app received.
    fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
        let values = headers.get(name)?.as_array().unwrap();
        assert_eq!(values.len(), 1, "{name}: {headers}");
        values[0].as_str()
    }

    /// A version-00 traceparent's trace id, span id and flags.
    fn parts(traceparent: &str) -> (String, String, String) {
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert!(
            parts.len() == 4
                && parts[0] == "00"
                && parts[1].len() == 32
                && parts[2].len() == 16
                && parts[3].len() == 2
                && traceparent
                    .chars()
                    .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "not a version-00 traceparent: {traceparent:?}"
        );
        (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
    }

    #[test]
    fn a_callers_trace_is_continued_and_every_request_is_exported_as_a_span() {
        let Some(traced) = Traced::start(
            "a_callers_trace_is_continued_and_every_request_is_exported_as_a_span",
            true,
        ) else {
            return;
        };
        let caller = format!("traceparent=00-{TRACE}-{SPAN}-01");

        // A caller's trace: the app's traceparent continues it from the proxy's span.
        let (status, seen) = traced.get(
            "payment",
            "/orders/7?card=4111111111111111",
            &[&caller, "tracestate=congo=t61rcWkgMzE"],
        );
        assert_eq!(status, 200, "{seen}");
        let (trace, span_id, flags) = parts(header(&seen, "traceparent").unwrap());
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"), "{seen}");
        assert_ne!(span_id, SPAN, "the app's parent is the proxy's span: {seen}");
        assert_eq!(header(&seen, "tracestate"), Some("congo=t61rcWkgMzE"));
        let span = traced.span("continuing the caller's", |s| s["span_id"] == span_id.as_str());
        assert_eq!(span["trace_id"], TRACE, "{span}");
        assert_eq!(span["parent_span_id"], SPAN, "{span}");
        assert_eq!(span["trace_state"], "congo=t61rcWkgMzE", "{span}");
        assert_eq!(span["name"], "GET", "{span}");
        assert_eq!(span["kind"], "SPAN_KIND_SERVER", "{span}");
        assert_eq!(span["status"]["code"], "STATUS_CODE_UNSET", "{span}");
        let attributes = &span["attributes"];
        assert_eq!(attributes["http.request.method"], "GET", "{span}");
        assert_eq!(attributes["url.path"], "/orders/7", "{span}");
        assert_eq!(attributes["url.scheme"], "https", "{span}");
        assert_eq!(attributes["http.response.status_code"], 200, "{span}");
        assert_eq!(attributes["server.address"], "localhost", "{span}");
        assert_eq!(attributes["server.port"], traced.inbound.port(), "{span}");
        assert_eq!(attributes["client.address"], "127.0.0.1", "{span}");
        assert_eq!(
            attributes["zt.peer.spiffe_id"], "spiffe://example.org/ns/production/sa/payment-service",
            "{span}"
        );
        assert!(attributes.get("zt.refusal.reason").is_none(), "{span}");
        assert!(
            !span.to_string().contains("4111"),
            "a query reached the span: {span}"
        );
        assert_eq!(span["resource"]["service.name"], "zt-proxy", "{span}");
        assert_eq!(
            span["resource"]["zt.spiffe_id"], "spiffe://example.org/billing",
            "{span}"
        );

        // No traceparent: a new trace, the proxy's span its root.
        let (status, seen) = traced.get("payment", "/fresh", &[]);
        assert_eq!(status, 200, "{seen}");
        let (trace, span_id, _) = parts(header(&seen, "traceparent").unwrap());
        assert_ne!(trace, TRACE);
        let span = traced.span("starting a trace", |s| s["span_id"] == span_id.as_str());
        assert_eq!(
            (span["trace_id"].as_str(), span["parent_span_id"].as_str()),
            (Some(trace.as_str()), Some(""))
        );
        assert_eq!(span["attributes"]["url.path"], "/fresh", "{span}");

        // A malformed traceparent (uppercase hex) is dropped with its tracestate,
        // never forwarded: a new trace starts.
        let upper = format!("00-{}-{SPAN}-01", TRACE.to_uppercase());
        let (status, seen) = traced.get(
            "payment",
            "/malformed",
            &[&format!("traceparent={upper}"), "tracestate=congo=t61rcWkgMzE"],
        );
        assert_eq!(status, 200, "{seen}");
        let forwarded = header(&seen, "traceparent").unwrap();
        assert_ne!(forwarded, upper);
        let (trace, span_id, _) = parts(forwarded);
        assert_ne!(trace, TRACE, "{seen}");
        assert!(seen.get("tracestate").is_none(), "{seen}");
        let span = traced.span("for the malformed traceparent", |s| {
            s["span_id"] == span_id.as_str()
        });
        assert_eq!(span["parent_span_id"], "", "{span}");

        // Refused by the proxy (two Hosts: 400): a span with the refusal's label,
        // in the caller's trace; a 4xx is not the server's error.
        let refused_parent = "00-11111111111111111111111111111111-2222222222222222-01";
        let answer = raw_exchange(
            &traced.pki,
            traced.inbound,
            format!(
                "GET /refused?token=secret HTTP/1.1\r\nHost: a\r\nHost: b\r\ntraceparent: {refused_parent}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let span = traced.span("for the refused request", |s| {
            s["trace_id"] == "11111111111111111111111111111111"
        });
        assert_eq!(span["parent_span_id"], "2222222222222222", "{span}");
        assert_eq!(
            span["attributes"]["zt.refusal.reason"], "malformed_request",
            "{span}"
        );
        assert_eq!(span["attributes"]["http.response.status_code"], 400, "{span}");
        assert_eq!(span["attributes"]["url.path"], "/refused", "{span}");
        assert_eq!(span["status"]["code"], "STATUS_CODE_UNSET", "{span}");
        assert!(!span.to_string().contains("secret"), "{span}");

        // A caller not on the allow-list: 403, labelled, the app never reached.
        let (status, seen) = traced.get("intruder", "/internal", &[&caller]);
        assert_eq!(status, 403, "{seen}");
        let span = traced.span("for the intruder", |s| s["attributes"]["url.path"] == "/internal");
        assert_eq!(span["attributes"]["zt.refusal.reason"], "not_allowed", "{span}");
        assert_eq!(
            span["attributes"]["zt.peer.spiffe_id"], "spiffe://example.org/ns/production/sa/intruder",
            "{span}"
        );
        assert_eq!(span["trace_id"], TRACE, "{span}");
    }

    #[test]
    fn a_5xx_is_an_error_span() {
        let Some(mut traced) = Traced::start("a_5xx_is_an_error_span", true) else {
            return;
        };
        // The app is gone: 502, app_unreachable, status Error.
        drop(traced.app.take());
        let (status, _) = traced.get("payment", "/gone", &[]);
        assert_eq!(status, 502);
        let span = traced.span("for the unreachable app", |s| {
            s["attributes"]["url.path"] == "/gone"
        });
        assert_eq!(span["status"]["code"], "STATUS_CODE_ERROR", "{span}");
        assert_eq!(span["attributes"]["error.type"], "app_unreachable", "{span}");
        assert_eq!(
            span["attributes"]["zt.refusal.reason"], "app_unreachable",
            "{span}"
        );
    }

    #[test]
    fn spans_still_queued_are_sent_when_the_proxy_stops() {
        // Batches every ten minutes: only the flush at stop can send this span.
        let Some(mut traced) =
            Traced::start_with("spans_still_queued_are_sent_when_the_proxy_stops", Some("600000"))
        else {
            return;
        };
        let (status, seen) = traced.get("payment", "/queued", &[]);
        assert_eq!(status, 200, "{seen}");
        let sent = Command::new("kill")
            .args(["-TERM", &traced.proxy.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let stopped = wait_with_deadline(&mut traced.proxy.0).expect("zt proxy still running after SIGTERM");
        assert!(stopped.success(), "zt proxy: {stopped}");
        let span = traced.span("flushed at stop", |s| s["attributes"]["url.path"] == "/queued");
        assert_eq!(span["attributes"]["http.response.status_code"], 200, "{span}");
    }

    #[test]
    fn without_an_endpoint_trace_headers_pass_through_untouched() {
        let Some(plain) = Traced::start("without_an_endpoint_trace_headers_pass_through_untouched", false)
        else {
            return;
        };
        let caller = format!("00-{TRACE}-{SPAN}-01");
        let malformed = format!("00-{}-{SPAN}-01", TRACE.to_uppercase());
        for traceparent in [&caller, &malformed] {
            let (status, seen) = plain.get(
                "payment",
                "/",
                &[
                    &format!("traceparent={traceparent}"),
                    "tracestate=congo=t61rcWkgMzE",
                ],
            );
            assert_eq!(status, 200, "{seen}");
            assert_eq!(header(&seen, "traceparent"), Some(traceparent.as_str()), "{seen}");
            assert_eq!(header(&seen, "tracestate"), Some("congo=t61rcWkgMzE"), "{seen}");
        }
        let (_, seen) = plain.get("payment", "/", &[]);
        assert!(seen.get("traceparent").is_none(), "no trace is started: {seen}");
    }
}

/// RequestAuthentication end to end: Istio's documented behaviour through a
/// real proxy, with inline keys and keys from a `jwksUri` served over HTTPS.
mod request_authentication {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use serde_json::json;
    use zt_identity::JwtSigner;
    use zt_identity::jwt::sign_jws;

    use super::*;

    const LOCAL: &str = "https://idp.example";
    const REMOTE: &str = "https://remote.example";

    fn signer() -> JwtSigner {
        let key = rcgen::KeyPair::generate().unwrap();
        JwtSigner::from_pkcs8(&key.serialize_der()).unwrap()
    }

    fn jwks(signers: &[&JwtSigner]) -> String {
        let keys: Vec<Value> = signers
            .iter()
            .map(|s| s.public_key().to_signing_jwk(s.kid(), s.algorithm().name()))
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn token(
        signer: &JwtSigner,
        iss: &str,
        sub: &str,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> String {
        let now = now();
        let mut claims = json!({
            "iss": iss, "sub": sub, "aud": "billing", "exp": now + 600, "iat": now,
            "groups": if sub == "bob" { json!(["admins"]) } else { json!(["dev"]) },
            "org": {"team": "red"},
        });
        if let Value::Object(map) = &mut claims {
            edit(map);
        }
        sign_jws(signer, "JWT", &claims).unwrap()
    }

    /// An HTTPS server of one JWK Set at `/jwks.json`, with a certificate from
    /// the test CA (which the proxy trusts through its bundle); answers 503
    /// while `down`.
    struct JwksServer {
        addr: SocketAddr,
        down: Arc<AtomicBool>,
    }

    fn serve_jwks(pki: &Pki, body: String) -> JwksServer {
        use std::io::{Read as _, Write as _};
        let out = Command::new(zt_exe())
            .args([
                "ca",
                "issue",
                "--ca",
                "ca",
                "--spiffe-id",
                "spiffe://example.org/jwks",
            ])
            .args(["--dns", "localhost", "--ip", "127.0.0.1", "--out", "jwks"])
            .current_dir(&pki.dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let chain =
            zt_identity::x509::certificates_from_pem(&fs::read(pki.file("jwks.crt")).unwrap()).unwrap();
        let key = zt_identity::x509::private_key_from_pem(&fs::read(pki.file("jwks.key")).unwrap()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let flag = down.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let (config, flag, body) = (config.clone(), flag.clone(), body.clone());
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = if flag.load(Ordering::SeqCst) {
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_owned()
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let _ = tls.write_all(answer.as_bytes());
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        JwksServer { addr, down }
    }

    /// `GET target` over mTLS as the payment service with `headers`: the
    /// status, the answer's head, and what the echo app saw (headers by name).
    fn get(pki: &Pki, inbound: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (u16, String, Value) {
        let mut raw = format!("GET {target} HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n");
        for (name, value) in headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("\r\n");
        let answer = raw_answer(pki, inbound, raw.as_bytes());
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer to {target}: {answer:?}"));
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let seen = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("headers").cloned())
            .unwrap_or(Value::Null);
        (status, head.to_owned(), seen)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn istio_request_authentication_end_to_end() {
        let Some(python) = zt_testkit::python("istio_request_authentication_end_to_end") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let (local, remote, rotated, stranger) = (signer(), signer(), signer(), signer());
        let server = serve_jwks(&pki, jwks(&[&remote]));
        let policies = dir.path().join("policies");
        fs::create_dir(&policies).unwrap();
        let authn = format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: production
spec:
  selector:
    matchLabels:
      app: billing-service
  jwtRules:
  - issuer: {LOCAL}
    audiences: [billing]
    jwks: '{}'
    outputClaimToHeaders:
    - header: x-user
      claim: sub
    - header: X-Team
      claim: org.team
    outputPayloadToHeader: x-jwt-payload
  - issuer: {REMOTE}
    jwksUri: https://localhost:{}/jwks.json
    forwardOriginalToken: true
    outputClaimToHeaders:
    - header: x-user
      claim: sub
",
            jwks(&[&local]),
            server.addr.port()
        );
        fs::write(policies.join("authn.yaml"), authn).unwrap();
        fs::write(
            policies.join("allow.yaml"),
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: users-only
  namespace: production
spec:
  selector:
    matchLabels:
      app: billing-service
  rules:
  - from:
    - source:
        requestPrincipals: [\"*\"]
    to:
    - operation:
        paths: [\"/api/*\"]
  - from:
    - source:
        requestPrincipals: [\"*\"]
    to:
    - operation:
        paths: [\"/admin\"]
    when:
    - key: request.auth.claims[groups]
      values: [\"admins\"]
",
        )
        .unwrap();
        let log = dir.path().join("decisions.log");
        let (app_addr, _app) = start_app(&python, &[interop("echo_app.py").to_str().unwrap()]);
        let (_proxy, inbound, admin) = dev_proxy(
            &pki,
            &[
                "--app",
                &app_addr.to_string(),
                "--policy-dir",
                policies.to_str().unwrap(),
                "--namespace",
                "production",
                "--label",
                "app=billing-service",
                "--decision-log",
                log.to_str().unwrap(),
            ],
        );

        // No token: authenticated by nothing, so the ALLOW naming requestPrincipals denies.
        assert_eq!(get(&pki, inbound, "/api/none", &[]).0, 403);

        // Valid: 200; the app sees the claim headers from the token and none of
        // the client's copies, whatever their spelling; the token is not forwarded.
        let alice = token(&local, LOCAL, "alice", |_| {});
        let (status, _, seen) = get(
            &pki,
            inbound,
            "/api/orders",
            &[
                ("Authorization", &bearer(&alice)),
                ("X-User", "mallory"),
                ("x-user", "mallory2"),
                ("X_USER", "mallory3"),
                ("x_team", "blue"),
                ("X-TEAM", "blue"),
                ("X-Jwt-Payload", "e30"),
            ],
        );
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["x-user"], json!(["alice"]), "{seen}");
        assert_eq!(seen["x-team"], json!(["red"]), "{seen}");
        assert_eq!(
            seen["x-jwt-payload"],
            json!([alice.split('.').nth(1).unwrap()]),
            "{seen}"
        );
        assert!(
            seen.get("authorization").is_none(),
            "forwardOriginalToken false removes it: {seen}"
        );
        assert!(
            seen.get("x_user").is_none() && seen.get("x_team").is_none(),
            "{seen}"
        );
        // The same token as ?access_token= is taken, and removed from the query.
        let (status, _, _) = get(&pki, inbound, &format!("/api/q?a=1&access_token={alice}"), &[]);
        assert_eq!(status, 200);

        // A claim in `when`: bob (admins) may, alice (dev) may not.
        let bob = token(&local, LOCAL, "bob", |_| {});
        assert_eq!(
            get(&pki, inbound, "/admin", &[("authorization", &bearer(&bob))]).0,
            200
        );
        assert_eq!(
            get(&pki, inbound, "/admin", &[("authorization", &bearer(&alice))]).0,
            403
        );

        // Invalid tokens: 401 with Istio's challenge, never reaching the app.
        let invalid = [
            (
                "expired",
                token(&local, LOCAL, "alice", |c| {
                    c.insert("exp".into(), json!(now() - 120));
                }),
            ),
            (
                "not_yet_valid",
                token(&local, LOCAL, "alice", |c| {
                    c.insert("nbf".into(), json!(now() + 600));
                }),
            ),
            (
                "wrong_issuer",
                token(&local, "https://evil.example", "alice", |_| {}),
            ),
            (
                "wrong_audience",
                token(&local, LOCAL, "alice", |c| {
                    c.insert("aud".into(), json!("other"));
                }),
            ),
            ("unknown_key", token(&stranger, LOCAL, "alice", |_| {})),
            ("algorithm", {
                let parts: Vec<&str> = alice.split('.').collect();
                use base64::Engine as _;
                let header =
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
                format!("{header}.{}.", parts[1])
            }),
            ("bad_signature", {
                let forged = token(&local, LOCAL, "root", |_| {});
                let (a, f): (Vec<&str>, Vec<&str>) =
                    (alice.split('.').collect(), forged.split('.').collect());
                format!("{}.{}.{}", a[0], f[1], a[2])
            }),
            ("malformed", "not-a-jwt".to_owned()),
        ];
        for (reason, bad) in &invalid {
            let path = format!("/api/invalid-{reason}");
            let (status, head, _) = get(&pki, inbound, &path, &[("authorization", &bearer(bad))]);
            assert_eq!(status, 401, "{reason}: {head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer error=\"invalid_token\""),
                "{reason}: {head}"
            );
            let sample =
                format!("zt_proxy_request_authentication_total{{result=\"invalid\",reason=\"{reason}\"}}");
            assert_eq!(metric(admin, &sample), 1.0, "{reason}");
        }
        // Two different tokens: ambiguous, 401.
        let (status, _, _) = get(
            &pki,
            inbound,
            &format!("/api/invalid-two?access_token={bob}"),
            &[("authorization", &bearer(&alice))],
        );
        assert_eq!(status, 401);
        // Over 64 KiB: refused before it is parsed (the head limit is 64 KiB too).
        let huge = format!("{}.{}.x", "a".repeat(40_000), "b".repeat(40_000));
        let (status, _, _) = get(
            &pki,
            inbound,
            "/api/invalid-huge",
            &[("authorization", &bearer(&huge))],
        );
        assert!(matches!(status, 400 | 401 | 431), "{status}");
        let (_, completed) = http_get(app_addr, "/__completed").unwrap();
        assert!(
            !completed.contains("invalid"),
            "an invalid token reached the app: {completed}"
        );

        // Keys from a jwksUri over HTTPS; this rule forwards the token.
        let carol = token(&remote, REMOTE, "carol", |c| {
            c.remove("aud");
        });
        let (status, _, seen) = get(
            &pki,
            inbound,
            "/api/remote",
            &[("authorization", &bearer(&carol))],
        );
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["x-user"], json!(["carol"]));
        assert_eq!(
            seen["authorization"],
            json!([bearer(&carol)]),
            "forwardOriginalToken true keeps it"
        );
        // The endpoint goes down: the last good keys still verify; a key it
        // never served cannot be fetched, so its tokens are refused.
        server.down.store(true, Ordering::SeqCst);
        assert_eq!(
            get(
                &pki,
                inbound,
                "/api/remote2",
                &[("authorization", &bearer(&carol))]
            )
            .0,
            200
        );
        let rotated_token = token(&rotated, REMOTE, "carol", |_| {});
        assert_eq!(
            get(
                &pki,
                inbound,
                "/api/invalid-rotated",
                &[("authorization", &bearer(&rotated_token))]
            )
            .0,
            401
        );

        assert!(
            metric(
                admin,
                "zt_proxy_request_authentication_total{result=\"valid\",reason=\"\"}"
            ) >= 5.0
        );
        assert_eq!(
            metric(
                admin,
                "zt_proxy_request_authentication_total{result=\"missing\",reason=\"\"}"
            ),
            1.0
        );

        // The decision log names the request principal of authenticated requests.
        let records: Vec<Value> = fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let principals: Vec<&str> = records
            .iter()
            .filter_map(|r| r.get("request_principal").and_then(Value::as_str))
            .collect();
        assert!(
            principals.contains(&"https://idp.example/alice"),
            "{principals:?}"
        );
        assert!(
            principals.contains(&"https://remote.example/carol"),
            "{principals:?}"
        );
        let unauthenticated = records.iter().find(|r| r["path"] == "/api/none").unwrap();
        assert!(unauthenticated.get("request_principal").is_none());
        let out = Command::new(zt_exe())
            .args(["audit", "verify", log.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }
}
