//! End-to-end tests of `zt up`: the command runs as a subprocess, exactly as a
//! newcomer runs it, and the seed's scenario is driven against it with clients
//! no one here wrote — Python `requests` (through `examples/client.py`) and
//! `curl` — then a policy is changed, the decision logs are checked, and Ctrl-C
//! (SIGINT) must stop everything, leaving no process behind.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zt_testkit::describe;

const SERVICE_ONE: &str = "spiffe://cluster.local/ns/default/sa/service-one";
const SERVICE_TWO: &str = "spiffe://cluster.local/ns/default/sa/service-two";
const GATEWAY: &str = "spiffe://cluster.local/ns/edge/sa/gateway";

/// How long `zt up` may take to be ready: a debug build on a loaded machine.
const READY_DEADLINE: Duration = Duration::from_secs(120);

fn zt() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zt"));
    command.env_remove("ZT_ADMIN_SOCKET").stdin(Stdio::null());
    command
}

/// A port base whose 83 ports are all free now (below the ephemeral range, so
/// other tests' listeners do not take them meanwhile), and which no other test
/// of this process was given: tests run side by side, and a block looks free to
/// the second until the first's zt up binds it.
///
/// A port is free if nothing listens on it: a connection is refused. Binding it
/// to find out would not do, as tests here spawn processes side by side: a child
/// forked while the probe's listener is open holds a copy of it until it execs,
/// and the next bind of that port fails.
fn free_port_base() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let start = (std::process::id() % 50) as u16;
    let base = (0..50)
        .map(|i| 20_000 + (start + i) % 50 * 200)
        .filter(|base| !given.contains(base))
        .find(|base| {
            (1..=zt_up::layout::MAX_PORT_OFFSET).all(|offset| {
                std::net::TcpStream::connect(("127.0.0.1", base + offset))
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
        })
        .expect("no block of 83 free ports between 20000 and 30000");
    given.push(base);
    base
}

/// A running `zt up`; killed (and with it, through their standard input, its
/// children) if a test fails before stopping it.
struct Up {
    child: Child,
    dir: PathBuf,
    stdout: PathBuf,
}

impl Up {
    fn start(dir: &Path, base: u16) -> Self {
        Self::start_with(zt(), dir, base)
    }

    /// Like [`Up::start`], with `command` (zt, perhaps run some other way) as zt.
    fn start_with(mut command: Command, dir: &Path, base: u16) -> Self {
        let stdout = unique(dir);
        let child = command
            .args(["up", "--dir"])
            .arg(dir)
            .args(["--port-base", &base.to_string()])
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(stdout.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        let mut up = Self {
            child,
            dir: dir.canonicalize().unwrap_or_else(|_| dir.to_owned()),
            stdout,
        };
        up.wait_ready();
        up
    }

    /// Ready is what `zt status` says: exit 0 once every part is healthy.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("zt up exited ({status}) before it was ready:\n{}", self.output());
            }
            if self.dir.exists() && self.status().status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "zt up not ready after {READY_DEADLINE:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(&self) -> Output {
        zt().args(["status", "--dir"]).arg(&self.dir).output().unwrap()
    }

    fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "stdout:\n{}\nstderr:\n{}",
            read(&self.stdout),
            read(&self.stdout.with_extension("err"))
        )
    }

    fn certs(&self, service: &str) -> PathBuf {
        self.dir.join("clients").join(service)
    }

    fn admin_socket(&self) -> PathBuf {
        self.dir.join("server/admin.sock")
    }

    /// Sends `signal` (INT is what a terminal's Ctrl-C sends) and waits for the exit.
    fn stop_with(&mut self, signal: &str) -> ExitStatus {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
        self.wait(&format!("SIG{signal}"))
    }

    /// The pid of each component `up.json` names (the demo apps' is zt up's own).
    fn pids(&self) -> Vec<u64> {
        let state = json(&std::fs::read_to_string(self.dir.join("up.json")).unwrap());
        state["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["pid"].as_u64().unwrap())
            .collect()
    }

    /// Its exit status, once it has exited after `what`.
    fn wait(&mut self, what: &str) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "zt up still running 60 s after {what}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DIR.N.out`, for the first N not yet taken: each run's output is kept.
fn unique(dir: &Path) -> PathBuf {
    let mut n = 0;
    loop {
        let candidate = dir.with_extension(format!("{n}.out"));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// Whether process `pid` exists (and is not a zombie).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        })
        .unwrap_or(false)
}

/// `curl ARGS…`: the status code and the body.
fn curl(curl: &Path, args: &[&str]) -> (u16, String) {
    let out = Command::new(curl)
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

/// `curl` with the certificates zt up minted for `service`.
fn curl_as(curl_path: &Path, up: &Up, service: &str, extra: &[&str], url: &str) -> (u16, String) {
    let certs = up.certs(service);
    let path = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let (bundle, svid, key) = (path("bundle.pem"), path("svid.pem"), path("key.pem"));
    let mut args = vec!["--cacert", &bundle, "--cert", &svid, "--key", &key];
    args.extend(extra);
    args.push(url);
    curl(curl_path, &args)
}

/// `examples/client.py CERTS URL ARGS…` (Python requests): status and body.
fn client_py(python: &Path, up: &Up, service: &str, url: &str, extra: &[&str]) -> (u16, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(up.certs(service))
        .arg(url)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, body) = text
        .trim_end()
        .split_once(' ')
        .unwrap_or_else(|| panic!("client.py {url}: {}", describe(&out)));
    let code: u16 = code
        .parse()
        .unwrap_or_else(|_| panic!("client.py {url}: {}", describe(&out)));
    assert_eq!(
        out.status.success(),
        (200..300).contains(&code),
        "exit status vs {code}: {}",
        describe(&out)
    );
    (code, body.to_owned())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// Polls `probe` until it returns true; policy changes reach proxies asynchronously.
fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn succeed(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", describe(out));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn audit_query(args: &[&str], source: &[&std::ffi::OsStr]) -> Vec<Value> {
    let out = zt()
        .args(["audit", "query"])
        .args(source)
        .args(args)
        .output()
        .unwrap();
    succeed(&out, "zt audit query")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

const INTERNAL_FOR_BOTH: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: internal
  namespace: default
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/service-one
        - cluster.local/ns/default/sa/service-two
    to:
    - operation:
        methods: ["GET"]
        paths: ["/internal"]
"#;

#[test]
fn zt_up_runs_the_seed_scenario_end_to_end() {
    const TEST: &str = "zt_up_runs_the_seed_scenario_end_to_end";
    let (Some(python), Some(curl_path)) = (zt_testkit::python(TEST), zt_testkit::curl(TEST)) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("up");
    let base = free_port_base();
    let mut up = Up::start(&dir, base);
    let pids = up.pids();
    assert_eq!(
        pids.len(),
        8,
        "server, agent, two apps, two proxies, gateway, device agent: {pids:?}"
    );

    let status = up.status();
    let text = succeed(&status, "zt status");
    assert_eq!(text.matches(" healthy ").count(), 8, "{text}");
    // This machine is enrolled as the demo's device and reports; its tier is
    // whatever its posture earns under zt-up/device-compliance.yaml.
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("device/last-report.json")).unwrap()).unwrap();
    assert!(
        last["tier"].is_string() && last["seq"].as_u64().is_some(),
        "{last}"
    );
    // The gateway follows the device states (zt server names it a
    // --device-state-reader): it holds this machine's.
    let gateway_admin = std::net::SocketAddr::from(([127, 0, 0, 1], base + 23));
    support::eventually("the gateway holds the device's state", || {
        support::sample(gateway_admin, "zt_gateway_device_states").filter(|n| *n >= 1.0)
    });
    let again = zt().args(["up", "--dir"]).arg(&up.dir).output().unwrap();
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already running"),
        "a second zt up on the same directory: {}",
        describe(&again)
    );

    // Inside the mesh: each app calls the other through its own sidecar.
    let one_to_two = |path: &str| format!("http://127.0.0.1:{}{path}", base + 11);
    let two_to_one = |path: &str| format!("http://127.0.0.1:{}{path}", base + 12);
    let (code, body) = curl(&curl_path, &[&one_to_two("/internal")]);
    assert_eq!(code, 200, "service-one GET /internal on service-two: {body}");
    assert_eq!(json(&body)["caller"], SERVICE_ONE, "{body}");
    assert_eq!(json(&body)["service"], "service-two", "{body}");
    let (code, body) = curl(&curl_path, &[&two_to_one("/internal")]);
    assert_eq!(
        (code, body.trim()),
        (403, "RBAC: access denied"),
        "service-two GET /internal"
    );
    let (code, body) = curl(&curl_path, &[&two_to_one("/public")]);
    assert_eq!(code, 200, "service-two GET /public: {body}");
    assert_eq!(json(&body)["caller"], SERVICE_TWO, "{body}");
    let (code, _) = curl(&curl_path, &["-X", "POST", &one_to_two("/internal")]);
    assert_eq!(code, 403, "POST /internal is not GET");
    let (code, _) = curl(&curl_path, &[&one_to_two("/admin")]);
    assert_eq!(code, 403, "no policy allows /admin");

    // From outside the mesh, the seed's way: Python requests with certificates.
    let service_one_url = |path: &str| format!("https://localhost:{}{path}", base + 1);
    let service_two_url = |path: &str| format!("https://localhost:{}{path}", base + 2);
    let (code, body) = client_py(&python, &up, "service-one", &service_two_url("/internal"), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["caller"], SERVICE_ONE, "{body}");
    let forged = ["--header", "X-Client-CN: service-one"];
    let (code, body) = client_py(
        &python,
        &up,
        "service-two",
        &service_one_url("/internal"),
        &forged,
    );
    assert_eq!(
        code, 403,
        "a forged X-Client-CN must not make service-two service-one: {body}"
    );
    let (code, body) = client_py(&python, &up, "service-two", &service_one_url("/public"), &forged);
    assert_eq!(code, 200, "{body}");
    let answer = json(&body);
    assert_eq!(
        answer["caller"], SERVICE_TWO,
        "the caller is what the certificate says: {body}"
    );
    assert_eq!(
        answer["x_client_cn"],
        Value::Null,
        "the forged header reached the app: {body}"
    );
    let (code, _) = client_py(
        &python,
        &up,
        "service-one",
        &service_two_url("/internal"),
        &["--method", "DELETE"],
    );
    assert_eq!(code, 403, "DELETE /internal");

    // And with curl.
    let (code, body) = curl_as(
        &curl_path,
        &up,
        "service-one",
        &["-H", "X-Client-CN: someone-else"],
        &service_two_url("/internal"),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["caller"], SERVICE_ONE, "{body}");
    assert_eq!(json(&body)["x_client_cn"], Value::Null, "{body}");
    let (code, _) = curl_as(
        &curl_path,
        &up,
        "service-two",
        &["-H", "X-Client-CN: service-one"],
        &service_one_url("/internal"),
    );
    assert_eq!(code, 403, "curl as service-two with a forged X-Client-CN");
    let no_cert = Command::new(&curl_path)
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(up.certs("service-one").join("bundle.pem"))
        .arg(service_two_url("/public"))
        .output()
        .unwrap();
    assert!(
        !no_cert.status.success(),
        "no client certificate, and an answer: {}",
        describe(&no_cert)
    );

    gateway_sends_people_to_sign_in(&curl_path, &up, base);
    // service-two claims to bring a person to service-one's app: not believed,
    // as it is not the gateway.
    let (code, body) = curl(&curl_path, &["-H", "X-Zt-User: demo", &two_to_one("/public")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["caller"], SERVICE_TWO, "{body}");
    assert_eq!(json(&body)["person"], Value::Null, "{body}");

    // Change a policy; see it take effect without restarting anything.
    let policies = up.dir.join("policies");
    std::fs::write(policies.join("internal.yaml"), INTERNAL_FOR_BOTH).unwrap();
    let apply = zt()
        .args(["policy", "apply"])
        .arg(&policies)
        .arg("--socket")
        .arg(up.admin_socket())
        .output()
        .unwrap();
    let said = succeed(&apply, "zt policy apply");
    assert!(said.contains("applied version 2"), "{said}");
    eventually("service-two allowed GET /internal after the change", || {
        curl(&curl_path, &[&two_to_one("/internal")]).0 == 200
    });
    let (code, _) = client_py(
        &python,
        &up,
        "service-two",
        &service_one_url("/internal"),
        &forged,
    );
    assert_eq!(code, 200, "service-two, now allowed");
    let (code, _) = curl(&curl_path, &["-X", "POST", &two_to_one("/internal")]);
    assert_eq!(code, 403, "still GET only");

    // The decision log: a verified chain holding each decision, and its copy at zt server.
    let one_log = up.dir.join("decisions/service-one.log");
    succeed(
        &zt().args(["audit", "verify"]).arg(&one_log).output().unwrap(),
        "zt audit verify",
    );
    let local: [&std::ffi::OsStr; 1] = [one_log.as_os_str()];
    let denied = audit_query(&["--decision", "DENY", "--principal", SERVICE_TWO], &local);
    assert!(
        denied
            .iter()
            .any(|r| r["path"] == "/internal" && r["policy_version"] == "v1" && r["method"] == "GET"),
        "service-two's denied GET /internal is not in the log: {denied:?}"
    );
    assert!(
        denied.iter().all(|r| r["source_principal"] == SERVICE_TWO),
        "the forged header changed a recorded caller: {denied:?}"
    );
    let allowed = audit_query(&["--decision", "ALLOW", "--principal", SERVICE_TWO], &local);
    assert!(
        allowed.iter().any(|r| r["path"] == "/internal"
            && r["policy_version"] == "v2"
            && r["policy"] == "default/internal"),
        "the allowed GET /internal under version 2 is not in the log: {allowed:?}"
    );
    let socket = up.admin_socket();
    let server: [&std::ffi::OsStr; 3] = ["--server".as_ref(), "--socket".as_ref(), socket.as_os_str()];
    eventually("the decisions shipped to zt server", || {
        audit_query(&["--decision", "ALLOW", "--principal", SERVICE_TWO], &server)
            .iter()
            .any(|r| r["path"] == "/internal" && r["policy_version"] == "v2")
    });
    succeed(
        &zt().args(["audit", "verify"]).args(server).output().unwrap(),
        "zt audit verify --server",
    );

    // Ctrl-C stops everything, and nothing is left running.
    let exit = up.stop_with("INT");
    assert!(exit.success(), "zt up after SIGINT: {exit}\n{}", up.output());
    let output = up.output();
    for name in [
        "zt gateway",
        "service-two proxy",
        "service-one proxy",
        "zt agent",
        "zt server",
    ] {
        assert!(
            output.contains(&format!("stopped {name} (pid")),
            "{name} not stopped:\n{output}"
        );
    }
    for pid in &pids {
        assert!(
            !alive(*pid),
            "pid {pid} still runs after zt up stopped:\n{output}"
        );
    }
    assert!(!up.dir.join("up.json").exists(), "up.json left behind");
    assert!(
        !up.status().status.success(),
        "zt status says it runs after the stop"
    );
    // The proxies stopped cleanly: a checkpoint signed by each log's key covers
    // every record.
    let key = zt()
        .args(["audit", "key", "show"])
        .arg(one_log.with_extension("log.key"))
        .output()
        .unwrap();
    let key = succeed(&key, "zt audit key show");
    let verified = zt()
        .args(["audit", "verify"])
        .arg(&one_log)
        .args(["--key", key.trim()])
        .output()
        .unwrap();
    let verified = succeed(&verified, "zt audit verify --key");
    assert!(verified.contains("every record is covered"), "{verified}");

    // Again on the same directory: the datastore, the agent's SVID and the edited policy are reused.
    // (The gateway's HTTPS certificate is minted anew.)
    let gateway_cert = dir.join("gateway/tls/svid.pem");
    let earlier_cert = std::fs::read(&gateway_cert).unwrap();
    drop(up);
    let mut up = Up::start(&dir, base);
    assert_ne!(
        std::fs::read(&gateway_cert).unwrap(),
        earlier_cert,
        "the gateway's certificate is minted at every start"
    );
    let output = up.output();
    assert!(output.contains("reusing"), "{output}");
    assert!(output.contains("no change from version 2"), "{output}");
    assert!(
        output.contains("OAuth client zt-gateway, config"),
        "the gateway's client and secret are kept: {output}"
    );
    let (code, _) = curl(&curl_path, &[&two_to_one("/internal")]);
    assert_eq!(code, 200, "the edited policy was kept");
    let status = zt().args(["up", "--status", "--dir"]).arg(&dir).output().unwrap();
    assert!(status.status.success(), "zt up --status: {}", describe(&status));

    // A part that dies takes the rest down, with a message saying which and why.
    let state = json(&std::fs::read_to_string(up.dir.join("up.json")).unwrap());
    let components = state["components"].as_array().unwrap();
    let pid_of = |name: &str| {
        components
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["pid"].as_u64())
            .unwrap_or_else(|| panic!("no {name} in {state}"))
    };
    let agent = pid_of("zt agent");
    let killed = Command::new("kill")
        .args(["-KILL", &agent.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = up.wait("its agent died");
    let output = up.output();
    assert_eq!(exit.code(), Some(1), "{output}");
    assert!(output.contains("zt agent exited (signal 9)"), "{output}");
    for name in [
        "zt server",
        "service-one proxy",
        "service-two proxy",
        "zt gateway",
    ] {
        assert!(
            !alive(pid_of(name)),
            "{name} still runs after zt up gave up:\n{output}"
        );
    }
    drop(up);

    // zt up killed outright (no chance to stop anything): its children stop on their own,
    // as their standard input, its pipe, closes. (And the gateway's client
    // secret is gone: its client is made again, with a new one.)
    std::fs::remove_file(dir.join("gateway/client-secret")).unwrap();
    let mut up = Up::start(&dir, base);
    assert!(
        up.output().contains("OAuth client zt-gateway (new secret)"),
        "{}",
        up.output()
    );
    gateway_sends_people_to_sign_in(&curl_path, &up, base);
    let children: Vec<u64> = up
        .pids()
        .into_iter()
        .filter(|pid| *pid != u64::from(up.child.id()))
        .collect();
    assert_eq!(
        children.len(),
        6,
        "server, agent, two proxies, the gateway and the device agent: {children:?}"
    );
    assert_eq!(up.stop_with("KILL").code(), None, "zt up survived SIGKILL");
    eventually("zt up's children stopping after it was killed", || {
        children.iter().all(|pid| !alive(*pid))
    });
    let status = up.status();
    assert_eq!(status.status.code(), Some(1), "{}", describe(&status));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("did not stop cleanly"),
        "zt status after zt up was killed: {}",
        describe(&status)
    );
    drop(up);

    // zt down, from another terminal, stops it as Ctrl-C does, and waits until it has.
    let mut up = Up::start(&dir, base);
    let pids = up.pids();
    let down = zt().args(["down", "--dir"]).arg(&dir).output().unwrap();
    let said = succeed(&down, "zt down");
    assert!(said.contains("has stopped"), "{said}");
    let exit = up.wait("zt down");
    assert!(exit.success(), "zt up after zt down: {exit}\n{}", up.output());
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still runs after zt down");
    }
    assert!(!up.dir.join("up.json").exists(), "up.json left behind by zt down");
    let again = zt().args(["down", "--dir"]).arg(&dir).output().unwrap();
    assert!(
        succeed(&again, "zt down with nothing running").contains("nothing to stop"),
        "{}",
        describe(&again)
    );
    drop(up);

    // A policy that does not load stops zt up before it says ready, naming file and line.
    std::fs::write(policies.join("internal.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: default}\nspec: {action: PERMIT}\n").unwrap();
    let out = zt()
        .args(["up", "--dir"])
        .arg(&dir)
        .args(["--port-base", &base.to_string()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("internal.yaml:4") && text.contains("PERMIT"),
        "{text}"
    );
    assert!(text.contains("stopped zt server"), "{text}");
}

/// The access gateway on BASE+83 answers HTTPS with a certificate for
/// `localhost` from zt server's CA; it tells an API client without a token
/// to bring one (401, `WWW-Authenticate: Bearer`), and sends a browser to sign
/// in at zt server's OpenID Provider as its client, with PKCE (S256).
fn gateway_sends_people_to_sign_in(curl_path: &Path, up: &Up, base: u16) {
    let ca = up.dir.join("agent/server-bundle.pem");
    let ca = ca.to_str().unwrap();
    let gateway = format!("https://localhost:{}", base + 83);
    let issuer = format!("https://localhost:{}", base + 82);
    // curl checks the name: localhost, from the server's CA alone.
    let (code, answer) = curl(curl_path, &["-i", "--cacert", ca, &format!("{gateway}/")]);
    assert_eq!(code, 401, "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("www-authenticate: bearer realm=\"{issuer}\"")),
        "{answer}"
    );
    let (code, answer) = curl(
        curl_path,
        &[
            "-i",
            "--cacert",
            ca,
            "-H",
            "Accept: text/html",
            &format!("{gateway}/internal"),
        ],
    );
    assert_eq!(code, 303, "{answer}");
    let location = answer
        .lines()
        .find_map(|line| {
            line.split_once(':')
                .filter(|(name, _)| name.eq_ignore_ascii_case("location"))
                .map(|(_, value)| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Location: {answer}"));
    let query = location
        .strip_prefix(&format!("{issuer}/authorize?"))
        .unwrap_or_else(|| panic!("not the provider's /authorize: {location}"));
    let params: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {location}"))
    };
    assert_eq!(param("client_id"), "zt-gateway", "{location}");
    assert_eq!(param("response_type"), "code", "{location}");
    assert_eq!(param("code_challenge_method"), "S256", "{location}");
    assert_eq!(param("code_challenge").len(), 43, "{location}");
    assert_eq!(
        param("redirect_uri"),
        format!("https%3A%2F%2Flocalhost%3A{}%2F.zt%2Fcallback", base + 83),
        "{location}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("set-cookie: __host-zt-sign-in="),
        "the sign-in is bound to this browser: {answer}"
    );
}

/// What `zt up` cannot run is refused before anything starts, saying why.
#[test]
fn zt_up_refuses_what_it_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |args: &[&std::ffi::OsStr], needles: &[&str]| {
        let out = zt().arg("up").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1) && needles.iter().all(|n| stderr.contains(n)),
            "zt up {args:?} should fail naming {needles:?}: {}",
            describe(&out)
        );
    };
    let dir = tmp.path().join("up");

    let base = free_port_base();
    let holder = TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let port = (base + 1).to_string();
    let base_arg = base.to_string();
    refused(
        &[
            "--dir".as_ref(),
            dir.as_os_str(),
            "--port-base".as_ref(),
            base_arg.as_ref(),
        ],
        &[
            &format!("port {port} (service-one's mTLS inbound)"),
            "--port-base",
        ],
    );
    drop(holder);
    // Refused before anything started, and the directory it made is gone.
    assert!(!dir.exists(), "a refused first run left {}", dir.display());
    std::fs::create_dir(&dir).unwrap();

    refused(
        &[
            "--dir".as_ref(),
            dir.as_os_str(),
            "--port-base".as_ref(),
            "65500".as_ref(),
        ],
        &["--port-base 65500"],
    );
    let deep = tmp.path().join("d".repeat(100));
    refused(&["--dir".as_ref(), deep.as_os_str()], &["choose a shorter --dir"]);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    refused(&["--dir".as_ref(), file.as_os_str()], &["--dir", "a-file"]);

    // `zt COMMAND --dir DIR` exits 1 saying `needle`.
    let fails_on_dir = |command: &str, needle: &str| {
        let out = zt().args([command, "--dir"]).arg(&dir).output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.code() == Some(1) && said.contains(needle),
            "zt {command} should fail saying {needle:?}: {}",
            describe(&out)
        );
    };
    fails_on_dir("status", "not running");

    // While some zt up holds the directory's lock (as one does from its start),
    // a second is refused, zt status says it is starting, not absent, and zt down
    // (with no pid to signal yet) asks to try again.
    let lock = std::fs::File::create(dir.join("up.lock")).unwrap();
    lock.try_lock().unwrap();
    refused(&["--dir".as_ref(), dir.as_os_str()], &["already running"]);
    fails_on_dir("down", "has not written its pid yet");
    fails_on_dir("status", "starting");
}

/// Under `umask 000`, in a directory whose parts already exist with mode 0755
/// (zt server's data directory among them), every secret and record `zt up`
/// and its children write is 0600 and every directory holding them 0700: the
/// datastore and its WAL and SHM files, the admin socket, locks, the join
/// token, the agent's key, the client certificates' keys, decision logs and
/// their shipping cursors, the logs and the state file; `zt x509 mint --write`
/// likewise.
#[test]
fn zt_up_keeps_secrets_private_under_umask_000() {
    use std::os::unix::fs::PermissionsExt as _;
    use zt_testkit::mode_of;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("up");
    for sub in ["server", "agent/data", "clients/service-one", "decisions", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for sub in [
        "",
        "server",
        "agent",
        "agent/data",
        "clients",
        "clients/service-one",
        "decisions",
        "logs",
    ] {
        std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let base = free_port_base();
    let zt_path = Path::new(env!("CARGO_BIN_EXE_zt"));
    let mut command = zt_testkit::under_umask_000(zt_path);
    command.env_remove("ZT_ADMIN_SOCKET").stdin(Stdio::null());
    let mut up = Up::start_with(command, &dir, base);
    let dir = up.dir.clone();

    // One decision each way, shipped to zt server: the logs and their cursors exist.
    for port in [base + 11, base + 12] {
        let (status, body) = support::http_get(([127, 0, 0, 1], port).into(), "/public").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    for service in ["service-one", "service-two"] {
        let cursor = dir.join(format!("decisions/{service}.shipped"));
        eventually(&format!("{} written", cursor.display()), || cursor.exists());
    }
    let minted = tmp.path().join("minted");
    std::fs::create_dir(&minted).unwrap();
    std::fs::set_permissions(&minted, std::fs::Permissions::from_mode(0o755)).unwrap();
    succeed(
        &zt_testkit::under_umask_000(zt_path)
            .args(["x509", "mint", "--spiffe-id", SERVICE_ONE, "--write"])
            .arg(&minted)
            .arg("--socket")
            .arg(dir.join("server/admin.sock"))
            .output()
            .unwrap(),
        "zt x509 mint --write",
    );

    let mut expected: Vec<(PathBuf, u32)> = vec![(minted.clone(), 0o700), (minted.join("key.pem"), 0o600)];
    for sub in [
        "",
        "server",
        "agent",
        "agent/data",
        "bin",
        "clients",
        "clients/service-one",
        "clients/service-two",
        "decisions",
        "gateway",
        "gateway/tls",
        "logs",
    ] {
        expected.push((dir.join(sub), 0o700));
    }
    for file in [
        "server/datastore.sqlite3",
        "server/datastore.sqlite3-wal",
        "server/datastore.sqlite3-shm",
        "server/server.lock",
        "server/admin.sock",
        "agent/join-token",
        "agent/data/agent.key",
        "clients/service-one/key.pem",
        "clients/service-two/key.pem",
        "gateway/client-secret",
        "gateway/session.key",
        "gateway/tls/key.pem",
        "decisions/service-one.log",
        "decisions/service-one.shipped",
        "decisions/service-two.log",
        "decisions/service-two.shipped",
        "up.json",
        "up.lock",
    ] {
        expected.push((dir.join(file), 0o600));
    }
    for log in std::fs::read_dir(dir.join("logs")).unwrap() {
        expected.push((log.unwrap().path(), 0o600));
    }
    assert!(expected.len() > 30, "every component's log is there");
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(path, mode)| mode_of(path) != *mode)
        .map(|(path, mode)| format!("{} is {:o}, not {mode:o}", path.display(), mode_of(path)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The Workload API socket is open to every local user by design: attestation decides.
    assert_eq!(mode_of(&dir.join("agent/api.sock")), 0o777);
    assert!(up.stop_with("INT").success(), "{}", up.output());
}

/// The README's people walk: a device flow started with curl; zt up's demo user
/// registers a passkey from the link zt up printed (in Chromium, with a virtual
/// authenticator) and approves the device by signing in with it; curl gets the
/// tokens.
#[test]
fn zt_up_demo_user_registers_a_passkey_and_gets_a_token_with_the_device_flow() {
    const TEST: &str = "zt_up_demo_user_registers_a_passkey_and_gets_a_token_with_the_device_flow";
    let (Some(curl_path), Some(node), Some(_)) = (
        zt_testkit::curl(TEST),
        zt_testkit::node(TEST),
        zt_testkit::chromium(TEST),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let up = Up::start(&tmp.path().join("up"), base);
    let printed = std::fs::read_to_string(&up.stdout).unwrap();
    let issuer = format!("https://localhost:{}", base + 82);
    let invite = printed
        .split_whitespace()
        .find(|word| word.starts_with(&format!("{issuer}/enroll?invite=")))
        .unwrap_or_else(|| panic!("no invite link in zt up's output:\n{printed}"))
        .to_owned();
    let ca = up.dir.join("agent/server-bundle.pem");
    assert!(
        printed.contains(ca.to_str().unwrap()),
        "the CA to trust is named:\n{printed}"
    );
    let ca = ca.to_str().unwrap().to_owned();

    let (status, body) = curl(
        &curl_path,
        &[
            "--cacert",
            &ca,
            "-d",
            "client_id=zt-demo",
            "-d",
            "scope=openid profile groups",
            &format!("{issuer}/device_authorization"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let device = json(&body);
    let poll = || {
        curl(
            &curl_path,
            &[
                "--cacert",
                &ca,
                "-d",
                "grant_type=urn:ietf:params:oauth:grant-type:device_code",
                "-d",
                "client_id=zt-demo",
                "-d",
                &format!("device_code={}", device["device_code"].as_str().unwrap()),
                &format!("{issuer}/token"),
            ],
        )
    };
    let script = serde_json::json!({
        "ca": ca,
        "steps": [
            ["goto", invite],
            ["click", "#enroll-passkey"],
            ["waitForSelector", "#enroll-done"],
            ["goto", device["verification_uri_complete"]],
            ["click", "#passkey-sign-in"],
            ["waitForURL", {"prefix": format!("{issuer}/device/done")}],
            ["text", "main"],
        ],
    });
    let out = Command::new(&node)
        .arg(zt_testkit::interop_dir().join("browser.mjs"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.to_string().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let said = succeed(&out, "browser.mjs");
    assert!(said.contains("Device signed in"), "{said}");

    // The first poll, after the person approved (pending and slow_down are
    // crates/zt-idp/tests/grants.rs's).
    let (status, body) = poll();
    assert_eq!(status, 200, "{body}");
    let tokens = json(&body);
    assert_eq!(tokens["expires_in"], 900, "{tokens}");
    assert!(
        tokens["refresh_token"].is_string() && tokens["id_token"].is_string(),
        "{tokens}"
    );
    let payload = tokens["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["amr"],
        serde_json::json!(["hwk", "user", "mfa"]),
        "{claims}"
    );
    assert_eq!(claims["groups"], serde_json::json!(["staff"]), "{claims}");
    assert_eq!(claims["client_id"], "zt-demo");
}

/// The README's gateway walk: the demo user registers a passkey from the link
/// zt up printed, opens the gateway's /internal in Chromium, is sent to sign
/// in, signs in with the passkey and lands on service-one's /internal, whose
/// app names the person the gateway verified. A second user, signed in with a
/// passkey too but not in the group, reaches / and gets the 403 page at
/// /internal.
#[test]
fn zt_up_gateway_lets_the_demo_user_in_with_a_passkey() {
    const TEST: &str = "zt_up_gateway_lets_the_demo_user_in_with_a_passkey";
    let (Some(node), Some(_)) = (zt_testkit::node(TEST), zt_testkit::chromium(TEST)) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let up = Up::start(&tmp.path().join("up"), base);
    let printed = std::fs::read_to_string(&up.stdout).unwrap();
    let issuer = format!("https://localhost:{}", base + 82);
    let gateway = format!("https://localhost:{}", base + 83);
    assert!(
        printed.contains(&format!("open {gateway}/")),
        "the gateway's URL is printed:\n{printed}"
    );
    let invite = printed
        .split_whitespace()
        .find(|word| word.starts_with(&format!("{issuer}/enroll?invite=")))
        .unwrap_or_else(|| panic!("no invite link in zt up's output:\n{printed}"))
        .to_owned();
    let admin = |args: &[&str]| {
        let out = zt()
            .args(args)
            .arg("--socket")
            .arg(up.admin_socket())
            .output()
            .unwrap();
        succeed(&out, &format!("zt {args:?}"))
    };
    admin(&["user", "add", "visitor", "--email", "visitor@example.org"]);
    let visitor_invite = json(&admin(&["user", "invite", "visitor", "--output", "json"]))["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let internal = format!("{gateway}/internal");
    let script = serde_json::json!({
        "ca": up.dir.join("agent/server-bundle.pem"),
        "timeout": 20000,
        "steps": [
            ["goto", invite],
            ["click", "#enroll-passkey"],
            ["waitForSelector", "#enroll-done"],
            ["goto", internal],
            ["waitForURL", {"prefix": issuer}],
            ["click", "#passkey-sign-in"],
            ["waitForURL", {"prefix": internal}],
            ["text", "body"],
            // Someone else, signed in with a passkey, not in the group.
            ["clearCookies"],
            ["removeCredentials"],
            ["goto", visitor_invite],
            ["click", "#enroll-passkey"],
            ["waitForSelector", "#enroll-done"],
            ["goto", format!("{gateway}/")],
            ["waitForURL", {"prefix": issuer}],
            ["click", "#passkey-sign-in"],
            ["waitForURL", {"prefix": format!("{gateway}/")}],
            ["text", "body"],
            ["goto", internal],
            ["text", "#user"],
        ],
    });
    let out = Command::new(&node)
        .arg(zt_testkit::interop_dir().join("browser.mjs"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.to_string().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let said = succeed(&out, "browser.mjs");
    let gateway_log = || std::fs::read_to_string(up.dir.join("logs/gateway.log")).unwrap_or_default();
    let results = json(&said)["results"].as_array().unwrap().clone();
    let demo = json(results[0]["value"].as_str().unwrap());
    assert_eq!(demo["service"], "service-one", "{demo}\n{}", gateway_log());
    assert_eq!(demo["path"], "/internal", "{demo}");
    assert_eq!(demo["caller"], GATEWAY, "the gateway called, over mTLS: {demo}");
    assert_eq!(demo["person"]["user"], "demo", "{demo}");
    assert_eq!(demo["person"]["groups"], "staff", "{demo}");
    let visitor = json(results[1]["value"].as_str().unwrap());
    assert_eq!(visitor["path"], "/", "{visitor}");
    assert_eq!(visitor["person"]["user"], "visitor", "{visitor}");
    assert_eq!(
        results[2]["value"], "visitor",
        "the 403 page names who was refused: {results:?}"
    );
}
