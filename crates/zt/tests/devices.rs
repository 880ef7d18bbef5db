//! Device trust end to end: enrollment (software keys, and a key in swtpm),
//! posture reports and the attacks on them, tiers that drop by themselves
//! when a device goes silent or out of compliance, and the gateway taking a
//! route away within the heartbeat window and giving it back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test crate: a panic is how a test fails"
)]

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use zt_testkit::describe;

use zt_device::agent::{Client, DeviceDir};
use zt_device::facts::{Facts, Observed};
use zt_device::key::{DeviceKey, TpmLocation};
use zt_device::report::Report;

const GATEWAY_ID: &str = "spiffe://example.org/ns/edge/sa/gateway";
const SERVICE_ONE: &str = "spiffe://example.org/ns/demo/sa/service-one";
/// The policy's heartbeat window.
const WINDOW: Duration = Duration::from_secs(2);

/// Four tiers: a hardware key earns `hardware`; a firewall, `trusted`; the
/// required processes, `basic`. A silent device keeps at most `basic`.
const POLICY: &str = "tiers: [hardware, trusted, basic, untrusted]
heartbeat: {window: 2s, silent_tier: basic}
rules:
  - {name: edr, fact: processes.required_running, equals: true, max_age: 1h, required_for: basic}
  - {name: firewall, fact: firewall.active, equals: true, max_age: 1h, required_for: trusted}
  - {name: hardware-key, fact: device.key_type, equals: tpm, required_for: hardware}
";

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

/// zt server with the device API (and the provider), its policy and bundle.
struct Devices {
    dir: tempfile::TempDir,
    server: ServerProcess,
    api: SocketAddr,
    idp: SocketAddr,
    bundle: PathBuf,
}

impl Devices {
    fn start() -> Self {
        Self::start_with(Some(POLICY))
    }

    /// With this compliance policy, or none.
    fn start_with(policy: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let idp: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let (api_arg, idp_arg) = (api.to_string(), idp.to_string());
        let mut args = vec![
            "--devices",
            &api_arg,
            "--idp",
            &idp_arg,
            "--device-state-reader",
            GATEWAY_ID,
        ];
        let path = dir.path().join("compliance.yaml");
        if let Some(policy) = policy {
            std::fs::write(&path, policy).unwrap();
            args.extend(["--device-policy", path.to_str().unwrap()]);
        }
        let mut server = ServerProcess::spawn_with(&dir.path().join("data"), None, &args);
        server.wait_ready();
        eventually("the device API listens", || TcpStream::connect(api).ok());
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, ok(&server, &["bundle", "show", "--format", "pem"])).unwrap();
        Self {
            dir,
            server,
            api,
            idp,
            bundle,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api.port())
    }

    fn token(&self, extra: &[&str]) -> String {
        let out = zt(
            &self.server,
            &[&["device", "token", "create", "--owner", "alice"], extra].concat(),
        );
        assert!(out.status.success(), "zt device token create: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `zt device enroll`; its output.
    fn enroll(&self, token: &str, dir: &Path, key: &str, env: &[(&str, String)]) -> std::process::Output {
        Command::new(zt_exe())
            .args([
                "device",
                "enroll",
                "--token",
                token,
                "--server",
                &self.url(),
                "--key",
                key,
            ])
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--dir")
            .arg(dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Enrolls a software device in test mode; its directory and ID.
    fn software_device(&self, name: &str) -> (PathBuf, String) {
        let dir = self.dir.path().join(name);
        let token = self.token(&["--test-mode"]);
        let out = self.enroll(&token, &dir, "software", &[]);
        assert!(out.status.success(), "zt device enroll: {}", describe(&out));
        (dir, String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }

    /// `zt device agent` for `dir` with `facts` from an override file.
    fn agent(&self, dir: &Path, facts: &Path, env: &[(&str, String)]) -> Running {
        let child = Command::new(zt_exe())
            .args(["device", "agent", "--interval", "1s", "--collect-interval", "1h"])
            .arg("--dir")
            .arg(dir)
            .arg("--facts-override")
            .arg(facts)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.with_extension("agent.log")).unwrap())
            .spawn()
            .unwrap();
        Running(child)
    }

    fn show(&self, id: &str) -> Value {
        serde_json::from_str(&ok(&self.server, &["device", "show", id, "--output", "json"])).unwrap()
    }

    fn wait_for_tier(&self, id: &str, tier: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let shown = self.show(id);
            if shown["tier"] == tier {
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "device {id} did not reach {tier}: {shown}\n{}\n{}",
                self.agent_logs(),
                self.server.stderr()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Every agent's log.
    fn agent_logs(&self) -> String {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".agent.log"))
            .map(|e| {
                format!(
                    "{}:\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                )
            })
            .collect()
    }
}

fn write_facts(path: &Path, firewall: bool) {
    std::fs::write(
        path,
        json!({ "firewall.active": firewall, "processes.required_running": true }).to_string(),
    )
    .unwrap();
}

/// A report from `device`, signed with `key`.
fn report(device: &str, seq: u64, key: &DeviceKey, facts: Facts) -> String {
    Report {
        device_id: device.to_owned(),
        seq,
        sent_ms: zt_identity::clock::unix_millis(),
        facts,
        overridden: Vec::new(),
    }
    .sign(|input| key.sign(input).map_err(|e| e.to_string()))
    .unwrap()
}

fn good_facts() -> Facts {
    let now = zt_identity::clock::unix_seconds();
    [("firewall.active", true), ("processes.required_running", true)]
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_owned(),
                Observed {
                    value: Some(json!(value)),
                    observed_at: now,
                },
            )
        })
        .collect()
}

fn refused(result: Result<Value, zt_device::agent::AgentError>, status: u16, words: &str) {
    match result {
        Err(zt_device::agent::AgentError::Refused {
            status: got, message, ..
        }) => {
            assert_eq!(got, status, "{message}");
            assert!(message.contains(words), "{message:?} should say {words:?}");
        }
        other => panic!("expected a refusal ({status}, {words}), got {other:?}"),
    }
}

#[test]
fn devices_enroll_and_every_forged_replayed_or_stale_report_is_refused_and_recorded() {
    let devices = Devices::start();
    let (a_dir, a) = devices.software_device("a");
    let (b_dir, b) = devices.software_device("b");
    let facts = devices.dir.path().join("facts.json");
    write_facts(&facts, true);

    // Inventory: owner, key type, status; never reported yet.
    let shown = devices.show(&a);
    assert_eq!(shown["owner"], "alice");
    assert_eq!(shown["key_type"], "software");
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["tier"], "untrusted");
    assert_eq!(shown["spiffe_id"], format!("spiffe://example.org/device/{a}"));
    assert!(
        !shown["hardware"]["arch"].as_str().unwrap_or_default().is_empty(),
        "{shown}"
    );

    // A software key with every fact good is trusted, never hardware.
    {
        let _agent = devices.agent(&a_dir, &facts, &[]);
        let shown = devices.wait_for_tier(&a, "trusted");
        let reasons = shown["tier_reasons"].to_string();
        assert!(reasons.contains("hardware-key"), "{reasons}");
    }

    let tpm = TpmLocation::none();
    let device_a = DeviceDir::open(&a_dir, &tpm).unwrap();
    let device_b = DeviceDir::open(&b_dir, &tpm).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut over_a = Client::new(&devices.url(), device_a.client_config().unwrap()).unwrap();
    let post = |client: &mut Client, body: String| runtime.block_on(client.post("/v1/report", body));

    // Replayed and re-ordered reports.
    let seq = zt_identity::clock::unix_millis() * 10;
    let first = report(&a, seq, device_a.key(), good_facts());
    post(&mut over_a, first.clone()).unwrap();
    refused(post(&mut over_a, first), 409, "replayed or re-ordered");
    refused(
        post(&mut over_a, report(&a, seq - 1, device_a.key(), good_facts())),
        409,
        "not above the last accepted",
    );
    // Signed by another device's key.
    refused(
        post(&mut over_a, report(&a, seq + 1, device_b.key(), good_facts())),
        401,
        "not signed by the device's key",
    );
    // For another device, over this device's certificate.
    refused(
        post(&mut over_a, report(&b, seq + 2, device_a.key(), good_facts())),
        403,
        "names device",
    );
    // Facts from the future.
    let mut future = good_facts();
    future.get_mut("firewall.active").unwrap().observed_at += 3600;
    refused(
        post(&mut over_a, report(&a, seq + 3, device_a.key(), future)),
        400,
        "in the future",
    );
    // Sent long ago.
    let stale = Report {
        device_id: a.clone(),
        seq: seq + 4,
        sent_ms: zt_identity::clock::unix_millis() - 120_000,
        facts: good_facts(),
        overridden: Vec::new(),
    }
    .sign(|input| device_a.key().sign(input).map_err(|e| e.to_string()))
    .unwrap();
    refused(post(&mut over_a, stale), 400, "from the server's clock");
    // Malformed and oversized.
    refused(
        post(&mut over_a, "not a report".into()),
        400,
        "malformed posture report",
    );
    let oversized = post(&mut over_a, "a".repeat(70 * 1024));
    assert!(
        matches!(
            &oversized,
            Err(zt_device::agent::AgentError::Refused {
                status: 400 | 413,
                ..
            })
        ),
        "{oversized:?}"
    );
    // Without a device certificate at all.
    let anonymous = {
        let mut config = device_a.client_config().unwrap();
        config.client_auth_cert_resolver = std::sync::Arc::new(Never);
        config
    };
    let mut no_cert = Client::new(&devices.url(), anonymous).unwrap();
    refused(
        post(&mut no_cert, report(&a, seq + 5, device_a.key(), good_facts())),
        401,
        "over mTLS with the device's certificate",
    );
    // A's certificate presented with B's key (A's certificate copied to
    // another machine, without A's key): the handshake fails.
    let stolen = {
        let chain = device_a.certificate().unwrap().unwrap();
        let key = device_b.key().rustls_key();
        let identity = std::sync::Arc::new(rustls::sign::CertifiedKey::new(chain, key));
        let mut config = device_b.client_config().unwrap();
        config.client_auth_cert_resolver = std::sync::Arc::new(Always(identity));
        config
    };
    let mut thief = Client::new(&devices.url(), stolen).unwrap();
    match post(&mut thief, report(&a, seq + 6, device_a.key(), good_facts())) {
        Err(zt_device::agent::AgentError::Call { .. }) => {}
        other => panic!("a certificate without its key must not get through: {other:?}"),
    }
    // Overridden facts from a device not enrolled in test mode.
    let c_dir = devices.dir.path().join("c");
    let out = devices.enroll(&devices.token(&[]), &c_dir, "software", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let c = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let device_c = DeviceDir::open(&c_dir, &tpm).unwrap();
    let mut over_c = Client::new(&devices.url(), device_c.client_config().unwrap()).unwrap();
    let overridden = Report {
        device_id: c.clone(),
        seq: 1,
        sent_ms: zt_identity::clock::unix_millis(),
        facts: good_facts(),
        overridden: vec!["firewall.active".into()],
    }
    .sign(|input| device_c.key().sign(input).map_err(|e| e.to_string()))
    .unwrap();
    refused(
        post(&mut over_c, overridden),
        403,
        "was not enrolled in test mode",
    );
    assert_eq!(
        devices.show(&c)["tier"],
        "untrusted",
        "a refused report raises nothing"
    );

    // A revoked device: its reports and its certificate are refused.
    ok(&devices.server, &["device", "revoke", &b]);
    let mut over_b = Client::new(&devices.url(), device_b.client_config().unwrap()).unwrap();
    refused(
        post(&mut over_b, report(&b, seq, device_b.key(), good_facts())),
        403,
        "is revoked",
    );
    let renewal = runtime.block_on(device_b.renew_certificate());
    assert!(
        matches!(&renewal, Err(zt_device::agent::AgentError::Refused { status: 403, message, .. }) if message.contains("revoked")),
        "{renewal:?}"
    );
    assert_eq!(devices.show(&b)["tier"], "untrusted");

    // Every refusal is recorded with its reason, and counted.
    let events = devices.show(&a)["events"].clone();
    let reasons: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "refused")
        .map(|e| e["detail"]["reason"].as_str().unwrap())
        .collect();
    for reason in [
        "replayed",
        "bad_signature",
        "other_device",
        "future_fact",
        "stale",
        "malformed",
    ] {
        assert!(reasons.contains(&reason), "{reason} not recorded: {reasons:?}");
    }
    let replayed = sample(
        devices.server.http,
        "zt_server_device_reports_total{result=\"replayed\"}",
    )
    .unwrap();
    assert!(replayed >= 2.0, "{replayed}");
    // The tier changes are in the hash-chained decision log.
    // (recorded by the server's own task, just after the tier changes)
    eventually("the tier change is in the decision log", || {
        let log = std::fs::read_to_string(devices.dir.path().join("data/device-decisions.log")).unwrap();
        (log.contains("device/tier") && log.contains(&a)).then_some(())
    });

    // Enrollment tokens: one use, and not after expiry.
    let token = devices.token(&[]);
    let out = devices.enroll(&token, &devices.dir.path().join("d1"), "software", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let again = devices.enroll(&token, &devices.dir.path().join("d2"), "software", &[]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("device enrollment token is already used"),
        "{}",
        describe(&again)
    );
    let created: Value = serde_json::from_str(&ok(
        &devices.server,
        &[
            "device", "token", "create", "--owner", "alice", "--ttl", "1s", "--output", "json",
        ],
    ))
    .unwrap();
    let short = created["token"].as_str().unwrap().to_owned();
    let expires_at = created["expires_at"].as_u64().unwrap();
    // The clock, not the server, decides when this token is past its life.
    while zt_identity::clock::unix_seconds() <= expires_at {
        std::thread::sleep(Duration::from_millis(100));
    }
    let expired = devices.enroll(&short, &devices.dir.path().join("d3"), "software", &[]);
    assert!(
        String::from_utf8_lossy(&expired.stderr).contains("device enrollment token is expired"),
        "{}",
        describe(&expired)
    );
    assert!(!expired.status.success());

    // A token that needs approval: no certificate until zt device approve.
    let pending_dir = devices.dir.path().join("p");
    let out = devices.enroll(
        &devices.token(&["--approval", "--test-mode"]),
        &pending_dir,
        "software",
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("zt device approve"),
        "{}",
        describe(&out)
    );
    let p = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let pending = DeviceDir::open(&pending_dir, &tpm).unwrap();
    let early = runtime.block_on(pending.renew_certificate());
    assert!(
        matches!(
            &early,
            Err(zt_device::agent::AgentError::Refused { status: 403, .. })
        ),
        "{early:?}"
    );
    ok(&devices.server, &["device", "approve", &p]);
    runtime.block_on(pending.renew_certificate()).unwrap();

    // Delete: gone from the inventory.
    ok(&devices.server, &["device", "delete", &c]);
    let list: Value =
        serde_json::from_str(&ok(&devices.server, &["device", "list", "--output", "json"])).unwrap();
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&c.as_str()) && ids.contains(&a.as_str()), "{ids:?}");
}

#[test]
fn without_a_compliance_policy_every_device_stays_at_the_floor() {
    let devices = Devices::start_with(None);
    let (dir, id) = devices.software_device("laptop");
    let facts = devices.dir.path().join("facts.json");
    write_facts(&facts, true);
    let _agent = devices.agent(&dir, &facts, &[]);
    let shown = eventually("the device reports", || {
        let shown = devices.show(&id);
        shown["last_seen"].is_u64().then_some(shown)
    });
    assert_eq!(shown["tier"], "untrusted", "{shown}");
    assert!(
        shown["tier_reasons"].to_string().contains("no compliance policy"),
        "{shown}"
    );
}

#[test]
fn a_changed_policy_applies_at_once_and_a_broken_one_changes_nothing() {
    let devices = Devices::start();
    let policy = devices.dir.path().join("compliance.yaml");
    // Replaced whole, as an editor or a deployment does.
    let replace = |text: &str| {
        let next = devices.dir.path().join("compliance.yaml.next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &policy).unwrap();
    };
    let (dir, id) = devices.software_device("laptop");
    let facts = devices.dir.path().join("facts.json");
    write_facts(&facts, true);
    let _agent = devices.agent(&dir, &facts, &[]);
    devices.wait_for_tier(&id, "trusted");

    // A stricter policy: a firewall is no longer enough for `trusted`.
    let stricter = POLICY.replace(
        "fact: firewall.active, equals: true",
        "fact: firewall.active, equals: false",
    );
    replace(&stricter);
    let shown = devices.wait_for_tier(&id, "basic");
    assert!(shown["tier_reasons"].to_string().contains("firewall"), "{shown}");

    // A broken policy is refused; the one in force stays, and no device
    // falls to the floor.
    replace("tiers: [hardware, trusted\nrules: {");
    eventually("the broken policy is refused", || {
        sample(
            devices.server.http,
            "zt_server_device_policy_loads_total{result=\"refused\"}",
        )
        .filter(|n| *n >= 1.0)
    });
    assert_eq!(devices.show(&id)["tier"], "basic", "the policy in force stays");
    assert!(
        devices.server.stderr().contains("the policy in force stays"),
        "{}",
        devices.server.stderr()
    );

    // Back to the first policy: trusted again.
    replace(POLICY);
    devices.wait_for_tier(&id, "trusted");
    assert!(
        sample(
            devices.server.http,
            "zt_server_device_policy_loads_total{result=\"loaded\"}"
        )
        .unwrap()
            >= 2.0
    );
    // Each load and refusal is in the hash-chained decision log, and tier
    // changes name the policy version they were decided under.
    let log = std::fs::read_to_string(devices.dir.path().join("data/device-decisions.log")).unwrap();
    let records: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let policy_records: Vec<&Value> = records.iter().filter(|r| r["query"] == "device/policy").collect();
    assert!(
        policy_records.iter().any(|r| r["decision"] == "DENY")
            && policy_records.iter().filter(|r| r["decision"] == "ALLOW").count() >= 2,
        "{policy_records:?}"
    );
    let versions: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| r["query"] == "device/tier")
        .filter_map(|r| r["policy_version"].as_str())
        .collect();
    assert!(versions.len() >= 2, "{versions:?}");
}

/// Presents no certificate.
#[derive(Debug)]
struct Never;

impl rustls::client::ResolvesClientCert for Never {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// Presents one certificate, whatever it is.
#[derive(Debug)]
struct Always(std::sync::Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Always {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(feature = "tpm")]
#[test]
fn a_device_key_in_the_tpm_never_touches_the_disk_and_ranks_above_a_software_key() {
    let devices = Devices::start();
    let swtpm = zt_testkit::swtpm::Swtpm::start();
    let env = [("ZT_TPM_TCTI", swtpm.tcti())];
    let dir = devices.dir.path().join("tpm-device");
    let out = devices.enroll(&devices.token(&["--test-mode"]), &dir, "tpm", &env);
    assert!(
        out.status.success(),
        "zt device enroll --key tpm: {}",
        describe(&out)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Only the TPM-wrapped blob is on disk: no private key file, nothing
    // that parses as one.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bundle.pem",
            "device-key.json",
            "device-key.tpm",
            "device.json",
            "device.pem"
        ]
    );
    for name in &names {
        let out = Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} reads as a private key");
    }
    let (sw_dir, sw) = devices.software_device("software-device");
    let facts = devices.dir.path().join("facts.json");
    write_facts(&facts, true);
    let _tpm_agent = devices.agent(&dir, &facts, &env);
    let _sw_agent = devices.agent(&sw_dir, &facts, &[]);
    let shown = devices.wait_for_tier(&id, "hardware");
    assert_eq!(shown["key_type"], "tpm");
    let software = devices.wait_for_tier(&sw, "trusted");
    assert_eq!(software["key_type"], "software");
    assert!(
        software["tier_reasons"].to_string().contains("device.key_type"),
        "{software}"
    );
}

/// A service behind zt proxy, the gateway in front of it with two routes:
/// `/trusted` for devices at `trusted` or better, `/basic` for `basic` or
/// better; a client presenting its device certificate and a token bound to it.
#[test]
fn the_gateway_takes_a_trusted_route_away_within_the_heartbeat_window_and_gives_it_back() {
    const TEST: &str = "the_gateway_takes_a_trusted_route_away_within_the_heartbeat_window_and_gives_it_back";
    let (Some(python), Some(curl), Some(node), Some(_)) = (
        zt_testkit::python(TEST),
        zt_testkit::curl(TEST),
        zt_testkit::node(TEST),
        zt_testkit::chromium(TEST),
    ) else {
        return;
    };
    let devices = Devices::start();
    let root = devices.dir.path();
    let mint = |id: &str, name: &str| {
        ok(
            &devices.server,
            &[
                "x509",
                "mint",
                "--spiffe-id",
                id,
                "--dns",
                "localhost",
                "--ttl",
                "1h",
                "--write",
                root.join(name).to_str().unwrap(),
            ],
        );
    };
    mint(GATEWAY_ID, "gateway");
    mint(SERVICE_ONE, "service-one");

    // The app behind its sidecar, which lets only the gateway in.
    let app: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _app = Running(
        Command::new(&python)
            .arg(zt_testkit::interop_dir().join("echo_app.py"))
            .arg(app.port().to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the app listens", || TcpStream::connect(app).ok());
    let inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let file = |path: &str| root.join(path).to_str().unwrap().to_owned();
    let _sidecar = Running(
        Command::new(zt_exe())
            .args([
                "proxy",
                "--inbound",
                &inbound.to_string(),
                "--app",
                &app.to_string(),
            ])
            .args([
                "--cert",
                &file("service-one/svid.pem"),
                "--key",
                &file("service-one/key.pem"),
            ])
            .args([
                "--bundle",
                &file("service-one/bundle.pem"),
                "--allow-spiffe-id",
                GATEWAY_ID,
            ])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(root.join("sidecar.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    eventually("the sidecar listens", || TcpStream::connect(inbound).ok());

    // A client of the provider that gets tokens for the gateway; over mTLS
    // with a device certificate they are bound to it (cnf).
    let created: Value = serde_json::from_str(&ok(
        &devices.server,
        &[
            "client",
            "add",
            "laptop-cli",
            "--secret",
            "--grant",
            "client_credentials",
            "--output",
            "json",
        ],
    ))
    .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    // The gateway's client: it signs no one in here, but exchanges tokens.
    let gateway_client: Value = serde_json::from_str(&ok(
        &devices.server,
        &[
            "client",
            "add",
            "zt-gateway",
            "--secret",
            "--redirect-uri",
            "https://localhost:1/.zt/callback",
            "--grant",
            "authorization_code",
            "--grant",
            "token_exchange",
            "--output",
            "json",
        ],
    ))
    .unwrap();
    std::fs::write(
        root.join("gateway.secret"),
        gateway_client["secret"].as_str().unwrap(),
    )
    .unwrap();
    let issuer = format!("https://localhost:{}", devices.idp.port());
    std::fs::create_dir(root.join("policies")).unwrap();
    std::fs::write(
        root.join("policies/edge.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: devices, namespace: edge}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: [\"{issuer}/*\"]}}}}]
    to: [{{operation: {{paths: [\"/basic\", \"/basic/*\"]}}}}]
    when: [{{key: \"request.auth.claims[device_tier]\", values: [hardware, trusted, basic]}}]
  - from: [{{source: {{requestPrincipals: [\"{issuer}/*\"]}}}}]
    to: [{{operation: {{paths: [\"/trusted\", \"/trusted/*\"]}}}}]
    when: [{{key: \"request.auth.claims[device_tier]\", values: [hardware, trusted]}}]
"
        ),
    )
    .unwrap();
    let gateway: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    std::fs::write(
        root.join("gateway.yaml"),
        format!(
            "listen: {gateway}
url: https://localhost:{port}
tls: {{cert: gateway/svid.pem, key: gateway/key.pem}}
oidc: {{issuer: \"{issuer}\", client_id: zt-gateway, client_secret_file: gateway.secret, ca: gateway/bundle.pem, audiences: [zt-gateway, zt-cli]}}
session: {{key_file: cookie.key}}
identity: {{cert: gateway/svid.pem, key: gateway/key.pem, bundle: gateway/bundle.pem}}
policy: {{dir: policies, namespace: edge}}
devices: {{server: \"{server}\"}}
headers: {{X-Device-Tier: device_tier}}
routes:
  - {{path: /, upstream: \"{inbound}\", spiffe_id: \"{SERVICE_ONE}\", token: none}}
  - {{path: /basic/exchanged, upstream: \"{inbound}\", spiffe_id: \"{SERVICE_ONE}\"}}
",
            port = gateway.port(),
            server = devices.url(),
        ),
    )
    .unwrap();
    let mut gateway_process = Running(
        Command::new(zt_exe())
            .args(["gateway", "--config", root.join("gateway.yaml").to_str().unwrap()])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(root.join("gateway.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let gateway_log = || std::fs::read_to_string(root.join("gateway.log")).unwrap_or_default();
    eventually("the gateway listens", || {
        if let Some(status) = gateway_process.0.try_wait().unwrap() {
            panic!("zt gateway exited ({status}): {}", gateway_log());
        }
        TcpStream::connect(gateway).ok()
    });

    // The laptop: enrolled, its agent reporting a firewall.
    let (laptop, id) = devices.software_device("laptop");
    let key_pem = root.join("laptop-key.pem");
    let converted = Command::new("openssl")
        .args(["pkey", "-inform", "DER", "-in"])
        .arg(laptop.join("device-key.pk8"))
        .arg("-out")
        .arg(&key_pem)
        .output()
        .unwrap();
    assert!(converted.status.success(), "{}", describe(&converted));
    let facts = root.join("laptop-facts.json");
    write_facts(&facts, true);
    let mut agent = devices.agent(&laptop, &facts, &[]);
    devices.wait_for_tier(&id, "trusted");

    // A token bound to the laptop's certificate.
    let token_out = Command::new(&curl)
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(&devices.bundle)
        .arg("--cert")
        .arg(laptop.join("device.pem"))
        .arg("--key")
        .arg(&key_pem)
        .args([
            "-u",
            &format!("laptop-cli:{secret}"),
            "-d",
            "grant_type=client_credentials",
            "-d",
            "audience=zt-gateway",
        ])
        .arg(format!("{issuer}/token"))
        .output()
        .unwrap();
    let answer: Value = serde_json::from_str(&succeed(&token_out, "curl /token")).unwrap();
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&token);
    assert!(claims["cnf"]["x5t#S256"].is_string(), "{claims}");

    let call_with = |token: &str, path: &str, with_cert: bool| -> (u16, String) {
        let mut command = Command::new(&curl);
        command
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(&devices.bundle)
            .args([
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-H",
                "Accept: application/json",
            ]);
        if with_cert {
            command
                .arg("--cert")
                .arg(laptop.join("device.pem"))
                .arg("--key")
                .arg(&key_pem);
        }
        let out = command
            .arg(format!("https://localhost:{}{path}", gateway.port()))
            .output()
            .unwrap();
        let text = succeed(&out, &format!("curl {path}\n{}", gateway_log()));
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), body.to_owned())
    };
    let call = |path: &str, with_cert: bool| call_with(&token, path, with_cert);
    eventually("the gateway sees the laptop trusted", || {
        (call("/trusted/report", true).0 == 200).then_some(())
    });
    assert_eq!(call("/basic/page", true).0, 200);

    // Every device's state is for the gateway alone: not for another
    // workload of the trust domain, not for a device.
    let states = |cert: &Path, key: &Path| -> (u16, String) {
        let out = Command::new(&curl)
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(&devices.bundle)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg(format!("{}/v1/states", devices.url()))
            .output()
            .unwrap();
        let text = succeed(&out, "curl /v1/states");
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), body.to_owned())
    };
    let (status, body) = states(&root.join("gateway/svid.pem"), &root.join("gateway/key.pem"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id), "{body}");
    let (status, body) = states(
        &root.join("service-one/svid.pem"),
        &root.join("service-one/key.pem"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("--device-state-reader") && !body.contains(&id),
        "{body}"
    );
    let (status, body) = states(&laptop.join("device.pem"), &key_pem);
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("tier"), "{body}");

    // The laptop's certificate comes from the trust domain's CA, yet a
    // device is no workload: a sidecar that lets every SPIFFE ID in refuses
    // it at the connection; the gateway's SVID passes.
    let open: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let open_admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _open_sidecar = Running(
        Command::new(zt_exe())
            .args(["proxy", "--inbound", &open.to_string(), "--app", &app.to_string()])
            .args(["--admin", &open_admin.to_string()])
            .args([
                "--cert",
                &file("service-one/svid.pem"),
                "--key",
                &file("service-one/key.pem"),
            ])
            .args([
                "--bundle",
                &file("service-one/bundle.pem"),
                "--allow-spiffe-id",
                "*",
            ])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(root.join("open-sidecar.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    eventually("the open sidecar listens", || TcpStream::connect(open).ok());
    let direct = |cert: &Path, key: &Path| {
        Command::new(&curl)
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
            ])
            .arg(&devices.bundle)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg(format!("https://localhost:{}/report", open.port()))
            .output()
            .unwrap()
    };
    let workload = direct(&root.join("gateway/svid.pem"), &root.join("gateway/key.pem"));
    assert_eq!(
        succeed(&workload, "curl to the open sidecar as the gateway"),
        "200"
    );
    let device = direct(&laptop.join("device.pem"), &key_pem);
    assert!(
        !device.status.success() && !String::from_utf8_lossy(&device.stdout).starts_with('2'),
        "a device reached a workload directly: {}",
        describe(&device)
    );
    assert_eq!(
        sample(
            open_admin,
            "zt_proxy_refused_total{reason=\"device_certificate\"}"
        ),
        Some(1.0)
    );

    // The bound token without its certificate: refused, whatever the route.
    let (status, _) = call("/basic/page", false);
    assert_eq!(status, 401, "a bound token without its certificate");

    // The agent stops: within the window plus a second, /trusted is gone,
    // with the device named; /basic stays.
    drop(agent);
    let stopped = Instant::now();
    let (status, body) = eventually("the trusted route is refused", || {
        let (status, body) = call("/trusted/report", true);
        (status == 403).then_some((status, body))
    });
    let lost_after = stopped.elapsed();
    assert_eq!(status, 403);
    assert!(
        lost_after <= WINDOW + Duration::from_secs(1),
        "access lasted {lost_after:?} after the agent stopped (window {WINDOW:?} + 1 s)"
    );
    assert!(
        body.contains(&id) && body.contains("no report"),
        "the 403 says why: {body}"
    );
    assert_eq!(
        call("/basic/page", true).0,
        200,
        "basic still works for a silent device"
    );

    // It comes back.
    agent = devices.agent(&laptop, &facts, &[]);
    eventually("the trusted route comes back", || {
        (call("/trusted/report", true).0 == 200).then_some(())
    });

    // The firewall goes off: trusted lost, basic kept; on again: back.
    write_facts(&facts, false);
    let body = eventually("a device without a firewall loses /trusted", || {
        let (status, body) = call("/trusted/report", true);
        (status == 403).then_some(body)
    });
    assert!(body.contains("firewall"), "{body}");
    assert_eq!(call("/basic/page", true).0, 200);
    write_facts(&facts, true);
    eventually("the firewall is back", || {
        (call("/trusted/report", true).0 == 200).then_some(())
    });

    // A person at a terminal: `zt login --device-dir` signs in with the
    // device flow (approved in Chromium with a passkey), presenting the
    // laptop's certificate to the provider: the token carries the device's
    // live tier, is bound to the certificate, and reaches /trusted with it.
    ok(
        &devices.server,
        &["user", "add", "alice", "--email", "alice@example.org"],
    );
    ok(
        &devices.server,
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
    let invite: Value = serde_json::from_str(&ok(
        &devices.server,
        &["user", "invite", "alice", "--output", "json"],
    ))
    .unwrap();
    let login_args = [
        "--issuer",
        issuer.as_str(),
        "--client-id",
        "zt-cli",
        "--ca",
        devices.bundle.to_str().unwrap(),
        "--device-dir",
        laptop.to_str().unwrap(),
    ];
    let config = root.join("config");
    let mut login = Command::new(zt_exe())
        .arg("login")
        .args(login_args)
        .env("XDG_CONFIG_HOME", &config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let user_code = {
        use std::io::BufRead as _;
        let mut said = std::io::BufReader::new(login.stderr.take().unwrap());
        loop {
            let mut line = String::new();
            assert!(said.read_line(&mut line).unwrap() > 0, "zt login ended");
            if let Some(code) = line.trim().strip_prefix("and enter the code ") {
                break code.to_owned();
            }
        }
    };
    browse(
        &node,
        root,
        &json!({
            "ca": devices.bundle,
            "timeout": 20000,
            "steps": [
                ["goto", invite["url"]],
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
    let person = succeed(&out, "zt login --print-token").trim().to_owned();
    let claims = jwt_claims(&person);
    assert_eq!(claims["device_id"], json!(id), "{claims}");
    assert_eq!(claims["device_tier"], "trusted", "{claims}");
    assert!(claims["cnf"]["x5t#S256"].is_string(), "{claims}");
    assert_eq!(call_with(&person, "/trusted/report", true).0, 200);
    assert_eq!(
        call_with(&person, "/trusted/report", false).0,
        401,
        "the person's token is bound to the laptop's certificate"
    );

    // What the upstream receives follows the live tier as the decision did:
    // the identity header, and the token the gateway exchanged for it (a
    // bound token is exchanged: the gateway checked its certificate).
    let upstream_sees = |token: &str| -> (String, String) {
        let (status, body) = call_with(token, "/basic/exchanged/page", true);
        assert_eq!(status, 200, "{body}\n{}", gateway_log());
        let echoed: Value = serde_json::from_str(&body).unwrap();
        let header = echoed["headers"]["x-device-tier"][0].as_str().unwrap().to_owned();
        let bearer = echoed["headers"]["authorization"][0].as_str().unwrap();
        let exchanged = jwt_claims(bearer.strip_prefix("Bearer ").unwrap());
        assert_eq!(exchanged["device_id"], json!(id), "{exchanged}");
        (header, exchanged["device_tier"].as_str().unwrap().to_owned())
    };
    assert_eq!(upstream_sees(&person), ("trusted".into(), "trusted".into()));
    drop(agent);
    eventually("the person loses /trusted", || {
        (call_with(&person, "/trusted/report", true).0 == 403).then_some(())
    });
    assert_eq!(
        upstream_sees(&person),
        ("basic".into(), "basic".into()),
        "the token issued at trusted is exchanged again at the live tier"
    );
    agent = devices.agent(&laptop, &facts, &[]);

    // The device certificate is renewed (same key, new certificate): the
    // token bound to the old one is refused with the new one, and `zt login
    // --print-token` hands out a token bound to the new one, not the kept one.
    let renewed = tokio::runtime::Runtime::new().unwrap().block_on(
        DeviceDir::open(&laptop, &TpmLocation::none())
            .unwrap()
            .renew_certificate(),
    );
    assert!(renewed.is_ok(), "{renewed:?}");
    assert_eq!(
        call_with(&person, "/trusted/report", true).0,
        401,
        "a token bound to the certificate before the renewal"
    );
    let out = Command::new(zt_exe())
        .args(["login", "--print-token"])
        .args(login_args)
        .env("XDG_CONFIG_HOME", &config)
        .output()
        .unwrap();
    let rebound = succeed(&out, "zt login --print-token after the renewal")
        .trim()
        .to_owned();
    assert_ne!(rebound, person, "the kept token is bound to the old certificate");
    assert_ne!(
        jwt_claims(&rebound)["cnf"]["x5t#S256"],
        jwt_claims(&person)["cnf"]["x5t#S256"]
    );
    eventually("the rebound token reaches /trusted", || {
        (call_with(&rebound, "/trusted/report", true).0 == 200).then_some(())
    });

    // Revoked: every route that needs a tier is gone at once.
    ok(&devices.server, &["device", "revoke", &id]);
    eventually("a revoked device loses /basic", || {
        (call_with(&rebound, "/basic/page", true).0 == 403).then_some(())
    });
    drop(agent);
}

/// A gateway with device trust whose SVID comes from a Workload API that
/// has not answered yet starts anyway (not ready, every device unknown)
/// rather than exiting: it asks for client certificates once it holds the
/// trust bundle, and follows that bundle's rotations.
#[test]
fn a_gateway_with_device_trust_starts_before_its_first_svid() {
    let devices = Devices::start();
    let root = devices.dir.path();
    ok(
        &devices.server,
        &[
            "x509",
            "mint",
            "--spiffe-id",
            GATEWAY_ID,
            "--dns",
            "localhost",
            "--ttl",
            "1h",
            "--write",
            root.join("gateway").to_str().unwrap(),
        ],
    );
    std::fs::write(root.join("gateway.secret"), "not-used-here").unwrap();
    std::fs::create_dir(root.join("policies")).unwrap();
    let gateway: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    std::fs::write(
        root.join("gateway.yaml"),
        format!(
            "listen: {gateway}
url: https://localhost:{port}
admin: {admin}
tls: {{cert: gateway/svid.pem, key: gateway/key.pem}}
oidc: {{issuer: \"https://localhost:{idp}\", client_id: zt-gateway, client_secret_file: gateway.secret, ca: gateway/bundle.pem, audiences: [zt-gateway]}}
session: {{key_file: cookie.key}}
identity: {{workload_api: no-agent-yet.sock}}
policy: {{dir: policies, namespace: edge}}
devices: {{server: \"{server}\"}}
routes:
  - {{path: /, upstream: \"127.0.0.1:1\", spiffe_id: \"{SERVICE_ONE}\", token: none}}
",
            port = gateway.port(),
            idp = devices.idp.port(),
            server = devices.url(),
        ),
    )
    .unwrap();
    let mut process = Running(
        Command::new(zt_exe())
            .args(["gateway", "--config", "gateway.yaml"])
            .current_dir(root)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(root.join("gateway.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(root.join("gateway.log")).unwrap_or_default();
    let (status, body) = eventually("the gateway's admin port answers", || {
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!("zt gateway exited ({status}) without its first SVID: {}", log());
        }
        http_get(admin, "/readyz").ok()
    });
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}
