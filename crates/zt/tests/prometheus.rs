//! The Prometheus alerting rules of `examples/prometheus/`: checked and unit
//! tested by `promtool`, then evaluated by a real Prometheus scraping a real
//! `zt proxy` that is sent plaintext, clients without a certificate,
//! requests its policies deny and a device's certificate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use zt_testkit::describe;

/// A child process killed on drop, its stderr in `log` (printed if the test fails).
struct Running {
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("{}:\n{text}", self.log.display());
        }
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/prometheus")
}

/// Runs `promtool ARGS` in `examples/prometheus` and asserts it succeeds.
fn promtool(promtool: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(examples())
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool {args:?}: {}", describe(&out));
}

#[test]
fn the_shipped_rules_and_configuration_pass_promtool_check() {
    let Some(tool) = zt_testkit::promtool("the_shipped_rules_and_configuration_pass_promtool_check") else {
        return;
    };
    promtool(&tool, &["check", "rules", "zt-alerts.yml"]);
    // Also checks the rule files it loads, found beside it.
    promtool(&tool, &["check", "config", "prometheus.yml"]);
}

#[test]
fn the_shipped_rules_pass_their_unit_tests() {
    let Some(tool) = zt_testkit::promtool("the_shipped_rules_pass_their_unit_tests") else {
        return;
    };
    promtool(&tool, &["test", "rules", "zt-alerts.test.yml"]);
}

/// The shipped rules with windows a test can wait out: every range of minutes
/// becomes 30 s and every `for` 0 s. The expressions are otherwise the shipped
/// ones; the day-long baseline of the deny rate is kept, so on a fresh
/// Prometheus it has no history and the floor alone decides, as for a new
/// workload.
fn shortened_rules() -> String {
    let shipped = fs::read_to_string(examples().join("zt-alerts.yml")).unwrap();
    let rules: String = shipped
        .lines()
        .map(|line| match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 0s\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    let rules = rules.replace("[5m]", "[30s]").replace("[15m]", "[30s]");
    assert!(
        !rules.contains("m]"),
        "a range this test does not shorten yet; add it to shortened_rules"
    );
    rules
}

/// `zt ca` in `dir`: a CA for example.org, a 5-minute SVID for the proxy
/// (it expires soon: ZtProxySvidExpiringSoon must fire), and one for a caller
/// no policy allows.
fn pki(dir: &Path) {
    let zt = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_zt"))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "zt {args:?}: {}", describe(&out));
    };
    zt(&["ca", "init", "--trust-domain", "example.org", "--dir", "ca"]);
    zt(&["ca", "bundle", "--ca", "ca", "--out", "bundle.pem"]);
    zt(&[
        "ca",
        "issue",
        "--ca",
        "ca",
        "--spiffe-id",
        "spiffe://example.org/ns/production/sa/billing",
        "--dns",
        "localhost",
        "--ttl",
        "5m",
        "--out",
        "proxy",
    ]);
    zt(&[
        "ca",
        "issue",
        "--ca",
        "ca",
        "--spiffe-id",
        "spiffe://example.org/ns/production/sa/intruder",
        "--out",
        "intruder",
    ]);
    // An enrolled device's ID (zt server would issue it at enrollment).
    zt(&[
        "ca",
        "issue",
        "--ca",
        "ca",
        "--spiffe-id",
        "spiffe://example.org/device/0a1b",
        "--out",
        "laptop",
    ]);
}

/// Only the payment service may call billing: anyone else is denied.
const POLICY: &str = "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: billing
  namespace: production
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"example.org/ns/production/sa/payment-service\"]
";

/// Starts `command`, its stderr to `log`, and waits until `path` on `addr`
/// answers 200.
fn start_ready(mut command: Command, log: &Path, addr: SocketAddr, path: &str) -> Running {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running {
        child,
        log: log.to_owned(),
    };
    eventually(&format!("{command:?} answering {path} on {addr}"), || {
        if let Some(status) = running.child.try_wait().unwrap() {
            panic!("{command:?} exited: {status}");
        }
        matches!(http_get(addr, path), Ok((200, _))).then_some(())
    });
    running
}

/// What Prometheus's HTTP API answers at `path`: its `data`. Asked in HTTP/1.0,
/// so that a long answer is not chunked.
fn api(prometheus: SocketAddr, path: &str) -> Value {
    let stream = TcpStream::connect_timeout(&prometheus, Duration::from_secs(1)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {prometheus}\r\n\r\n");
    let (status, body) = exchange(stream, request.as_bytes()).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "success", "{path}: {body}");
    answer["data"].clone()
}

/// The alerts firing now, as `name` or `name{reason}`, with their `job` and
/// `instance`.
fn firing(prometheus: SocketAddr) -> BTreeSet<(String, String, String)> {
    let alerts = api(prometheus, "/api/v1/alerts")["alerts"].clone();
    alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|alert| alert["state"] == "firing")
        .map(|alert| {
            let labels = &alert["labels"];
            let text = |key: &str| labels[key].as_str().unwrap_or_default().to_owned();
            let name = match labels["reason"].as_str() {
                Some(reason) => format!("{}{{{reason}}}", text("alertname")),
                None => text("alertname"),
            };
            (name, text("job"), text("instance"))
        })
        .collect()
}

/// Sends what the alerts look for: plaintext to the strict inbound port, a
/// client without a certificate, a request the policies deny, a device's
/// certificate.
fn misbehave(curl: &Path, dir: &Path, inbound: SocketAddr) {
    let mut tcp = TcpStream::connect(inbound).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: billing\r\n\r\n").unwrap();
    let _ = tcp.read_to_end(&mut Vec::new());

    let url = format!("https://localhost:{}/api/v1/charges", inbound.port());
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let curl = |extra: &[String]| {
        Command::new(curl)
            .args(["-sS", "--max-time", "5", "--cacert", &file("bundle.pem")])
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let out = curl(&[]);
    assert!(
        !out.status.success(),
        "curl without a certificate: {}",
        describe(&out)
    );
    let out = curl(&[
        "--cert".into(),
        file("intruder.crt"),
        "--key".into(),
        file("intruder.key"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{}", describe(&out));
    let out = curl(&[
        "--cert".into(),
        file("laptop.crt"),
        "--key".into(),
        file("laptop.key"),
    ]);
    assert!(
        !out.status.success(),
        "curl with a device's certificate: {}",
        describe(&out)
    );
}

#[test]
fn a_real_prometheus_fires_the_shipped_alerts_at_a_real_proxy() {
    let test = "a_real_prometheus_fires_the_shipped_alerts_at_a_real_proxy";
    let (Some(prometheus), Some(curl)) = (zt_testkit::prometheus(test), zt_testkit::curl(test)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    pki(dir);
    fs::create_dir(dir.join("policies")).unwrap();
    fs::write(dir.join("policies/billing.yaml"), POLICY).unwrap();

    // The proxy: strict mTLS (the default), policies from the directory. Its
    // app is never reached: every request here is denied or refused first.
    let inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let app: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut command = Command::new(env!("CARGO_BIN_EXE_zt"));
    command
        .arg("proxy")
        .args(["--inbound", &inbound.to_string(), "--admin", &admin.to_string()])
        .args(["--app", &app.to_string()])
        .arg("--cert")
        .arg(dir.join("proxy.crt"))
        .arg("--key")
        .arg(dir.join("proxy.key"))
        .arg("--bundle")
        .arg(dir.join("bundle.pem"))
        .arg("--policy-dir")
        .arg(dir.join("policies"));
    let _proxy = start_ready(command, &dir.join("proxy.log"), admin, "/readyz");

    // Prometheus on loopback: the proxy scraped and the rules evaluated every second.
    fs::write(dir.join("zt-alerts.yml"), shortened_rules()).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [zt-alerts.yml]\n\
         scrape_configs:\n  - job_name: zt-proxy\n    static_configs:\n      - targets: ['{admin}']\n"
    );
    fs::write(dir.join("prometheus.yml"), config).unwrap();
    let web: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut command = Command::new(&prometheus);
    command
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={web}"));
    let _prometheus = start_ready(command, &dir.join("prometheus.log"), web, "/-/ready");

    // Counters are compared with their last scrape: wait for a first one.
    eventually("Prometheus scraping the proxy", || {
        let up = api(web, "/api/v1/query?query=up")["result"].clone();
        (up[0]["value"][1] == "1").then_some(())
    });

    let job = "zt-proxy".to_owned();
    let instance = admin.to_string();
    let expected: BTreeSet<_> = [
        "ZtProxyPlaintextOnStrictPort{not_tls}",
        "ZtProxyHandshakeFailures{no_client_certificate}",
        "ZtProxyDenyRateAboveBaseline",
        "ZtProxySvidExpiringSoon",
        "ZtProxyDeviceCertificate{device_certificate}",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), job.clone(), instance.clone()))
    .collect();
    // Misbehave a few times a second until every expected alert fires.
    let mut last = None::<Instant>;
    let mut seen = BTreeSet::new();
    let fired = eventually("the expected alerts firing", || {
        if last.is_none_or(|at| at.elapsed() >= Duration::from_millis(250)) {
            misbehave(&curl, dir, inbound);
            last = Some(Instant::now());
        }
        let now = firing(web);
        if now != seen {
            eprintln!("firing: {now:?}");
            seen.clone_from(&now);
        }
        expected.is_subset(&now).then_some(now)
    });
    // And nothing else: the proxy holds an SVID, runs every task, knows its
    // namespace, writes no decision log, saw no revoked peer; Prometheus reaches it.
    let unexpected: Vec<_> = fired.difference(&expected).collect();
    assert!(unexpected.is_empty(), "unexpected alerts: {unexpected:?}");
}
