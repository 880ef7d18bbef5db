//! `zt pdp run` as OPA's drop-in: the seed's `ask_opa()` (Python `requests`)
//! against the seed's v0 policy, and OPA's REST API paths, bodies and codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zt_testkit::describe;

const DEADLINE: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `zt pdp run`, killed on drop.
struct Pdp {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Pdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ([127, 0, 0, 1], port).into()
}

fn start(files: &[&Path]) -> Pdp {
    start_with(&[], files)
}

fn start_with(extra: &[&str], files: &[&Path]) -> Pdp {
    start_from(Command::new(env!("CARGO_BIN_EXE_zt")), extra, files)
}

/// Like [`start_with`], with `command` (zt, perhaps run some other way) as zt.
fn start_from(mut command: Command, extra: &[&str], files: &[&Path]) -> Pdp {
    let addr = free_addr();
    let child = command
        .args(["pdp", "run", "--addr", &addr.to_string()])
        .args(extra)
        .args(files)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pdp = Pdp { child, addr };
    let start = Instant::now();
    while http(addr, "GET", "/health", "").0 != 200 {
        assert!(pdp.child.try_wait().unwrap().is_none(), "zt pdp run exited");
        assert!(start.elapsed() < DEADLINE, "zt pdp run never became healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
    pdp
}

/// One HTTP/1.1 exchange: status and body (0 if nothing answered).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    support::http_request(addr, method, path, &[], body).unwrap_or((0, String::new()))
}

fn json_of(answer: &(u16, String)) -> Value {
    serde_json::from_str(&answer.1).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

const PAYMENT: &str = "spiffe://cluster.local/ns/production/sa/payment-service";

#[test]
fn the_seeds_ask_opa_gets_correct_answers_from_zt_pdp() {
    let Some(python) = zt_testkit::python("the_seeds_ask_opa_gets_correct_answers_from_zt_pdp") else {
        return;
    };
    let policy = repo().join("examples/rego/allow.rego");
    let pdp = start(&[&policy]);
    let ask = |principal: &str, method: &str, path: &str| -> bool {
        let out = Command::new(&python)
            .arg(repo().join("tests/interop/ask_opa.py"))
            .arg(format!("http://{}", pdp.addr))
            .args([principal, method, path])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["allow"]
            .as_bool()
            .unwrap()
    };
    assert!(ask(PAYMENT, "POST", "/api/v1/charges"));
    assert!(ask(PAYMENT, "POST", "/api/v1/refunds"));
    assert!(!ask(PAYMENT, "GET", "/api/v1/charges"));
    assert!(!ask(PAYMENT, "POST", "/api/v1/admin"));
    assert!(!ask(
        "spiffe://cluster.local/ns/production/sa/orders",
        "POST",
        "/api/v1/charges"
    ));
}

#[test]
fn opas_rest_api_paths_bodies_and_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("roles.json");
    std::fs::write(&data, r#"{"roles": {"alice": ["admin"]}}"#).unwrap();
    let policy = repo().join("examples/rego/allow.rego");
    let pdp = start_with(&["--allow-policy-writes"], &[&policy, &data]);
    let addr = pdp.addr;

    // POST /v1/data: a result and a decision id; undefined: no result.
    let allowed = json_of(&http(
        addr,
        "POST",
        "/v1/data/authz/allow",
        &json!({"input": {"principal": PAYMENT, "method": "POST", "path": "/api/v1/charges"}}).to_string(),
    ));
    assert_eq!(allowed["result"], true);
    assert_eq!(allowed["decision_id"].as_str().unwrap().len(), 36);
    let undefined = http(addr, "POST", "/v1/data/authz/nothing", r#"{"input": {}}"#);
    assert_eq!(undefined.0, 200);
    assert!(json_of(&undefined).get("result").is_none(), "{undefined:?}");
    // GET, a whole package, data documents, and the /v0 form.
    assert_eq!(
        json_of(&http(addr, "GET", "/v1/data/roles/alice", ""))["result"],
        json!(["admin"])
    );
    assert_eq!(
        json_of(&http(addr, "POST", "/v1/data/authz", "{}"))["result"]["allow"],
        false
    );
    let v0 = http(
        addr,
        "POST",
        "/v0/data/authz/allow",
        &json!({"principal": PAYMENT, "method": "POST", "path": "/api/v1/refunds"}).to_string(),
    );
    assert_eq!((v0.0, v0.1.trim()), (200, "true"));
    let v0_missing = http(addr, "POST", "/v0/data/authz/nothing", "{}");
    assert_eq!(v0_missing.0, 404);
    assert_eq!(json_of(&v0_missing)["code"], "undefined_document");

    // Bad input: OPA's codes and shapes; the server keeps serving.
    let not_json = http(addr, "POST", "/v1/data/authz/allow", "not json");
    assert_eq!(not_json.0, 400);
    assert_eq!(json_of(&not_json)["code"], "invalid_parameter");
    let too_big = http(
        addr,
        "POST",
        "/v1/data/authz/allow",
        &format!("{{\"input\": \"{}\"}}", "x".repeat(9 << 20)),
    );
    assert_eq!(too_big.0, 413);
    assert_eq!(json_of(&too_big)["code"], "invalid_parameter");

    // Policies: PUT (a parse error is a 400 naming the module), GET, list, DELETE.
    let bad = http(addr, "PUT", "/v1/policies/bad.rego", "package bad\nallow if {");
    assert_eq!(bad.0, 400);
    let bad = json_of(&bad);
    assert_eq!(bad["code"], "invalid_parameter");
    assert_eq!(bad["errors"][0]["code"], "rego_parse_error");
    assert_eq!(bad["errors"][0]["location"]["file"], "bad.rego");
    let put = http(
        addr,
        "PUT",
        "/v1/policies/extra.rego",
        "package extra\nanswer := 42\n",
    );
    assert_eq!(put.0, 200, "{put:?}");
    assert_eq!(
        json_of(&http(addr, "GET", "/v1/data/extra/answer", ""))["result"],
        42
    );
    assert_eq!(
        json_of(&http(addr, "GET", "/v1/policies/extra.rego", ""))["result"]["raw"],
        "package extra\nanswer := 42\n"
    );
    assert_eq!(
        json_of(&http(addr, "GET", "/v1/policies", ""))["result"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(http(addr, "DELETE", "/v1/policies/extra.rego", "").0, 200);
    assert!(
        json_of(&http(addr, "GET", "/v1/data/extra/answer", ""))
            .get("result")
            .is_none()
    );
    let missing = http(addr, "DELETE", "/v1/policies/extra.rego", "");
    assert_eq!(missing.0, 404);
    assert_eq!(json_of(&missing)["code"], "resource_not_found");
    assert_eq!(json_of(&allowed_again(addr))["result"], true);
}

fn allowed_again(addr: SocketAddr) -> (u16, String) {
    http(
        addr,
        "POST",
        "/v1/data/authz/allow",
        &json!({"input": {"principal": PAYMENT, "method": "POST", "path": "/api/v1/charges"}}).to_string(),
    )
}

#[test]
fn files_that_do_not_load_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.rego");
    std::fs::write(&broken, "package broken\nallow if {").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["pdp", "run"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.rego"),
        "{}",
        describe(&out)
    );
    let text = dir.path().join("policy.txt");
    std::fs::write(&text, "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["pdp", "run"])
        .arg(&text)
        .output()
        .unwrap();
    zt_testkit::assert_cli_failure(&out, 1, &["policy.txt", "expected a .rego policy"]);
}

#[test]
fn rego_cases_in_opas_conformance_format_pass_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let placeholder = dir.path().join("placeholder.rego");
    std::fs::write(&placeholder, "package placeholder\n").unwrap();
    let pdp = start_with(&["--allow-policy-writes"], &[&placeholder]);
    let text = std::fs::read_to_string(repo().join("tests/conformance/rego-cases.yaml")).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let note = case["note"].as_str().unwrap();
        let ids: Vec<String> = (0..case["modules"].as_array().unwrap().len())
            .map(|j| format!("case-{i}-{j}.rego"))
            .collect();
        for (id, module) in ids.iter().zip(case["modules"].as_array().unwrap()) {
            let put = http(
                pdp.addr,
                "PUT",
                &format!("/v1/policies/{id}"),
                module.as_str().unwrap(),
            );
            assert_eq!(put.0, 200, "{note}: PUT {id}: {put:?}");
        }
        // `data.a.b = x` reads the document data/a/b.
        let query = case["query"].as_str().unwrap();
        let (reference, variable) = query.split_once(" = ").unwrap();
        let path = reference.strip_prefix("data.").unwrap().replace('.', "/");
        let body = json!({"input": case.get("input").cloned().unwrap_or(json!({}))});
        let answer = json_of(&http(
            pdp.addr,
            "POST",
            &format!("/v1/data/{path}"),
            &body.to_string(),
        ));
        let want = case["want_result"]
            .as_array()
            .unwrap()
            .first()
            .map(|r| r[variable].clone());
        let got = answer.get("result").cloned();
        if got != want {
            failures.push(format!("{note}: want {want:?}, got {got:?}"));
        }
        for id in &ids {
            assert_eq!(http(pdp.addr, "DELETE", &format!("/v1/policies/{id}"), "").0, 200);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn envoy_ext_authz_check_allows_and_denies_with_opa_envoys_input() {
    use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

    let grpc = free_addr();
    let policy = repo().join("examples/rego/envoy.rego");
    let _pdp = start_with(&["--ext-authz-addr", &grpc.to_string()], &[&policy]);
    let check = |principal: &str, method: &str, path: &str| CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "billing".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let allowed = client
            .check(check(PAYMENT, "POST", "/api/v1/charges?receipt=1"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(allowed.status.unwrap().code, 0);
        assert!(matches!(allowed.http_response, Some(HttpResponse::OkResponse(_))));
        let public = client
            .check(check("", "GET", "/public/index.html"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(public.status.unwrap().code, 0);
        let denied = client
            .check(check(
                "spiffe://cluster.local/ns/production/sa/orders",
                "POST",
                "/api/v1/charges",
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(denied.status.unwrap().code, 7, "PERMISSION_DENIED");
        match denied.http_response {
            Some(HttpResponse::DeniedResponse(response)) => {
                assert_eq!(response.status.unwrap().code, 403);
                assert_eq!(response.body, "denied by zt: not allowed");
            }
            other => panic!("not a denial: {other:?}"),
        }
    });
}

#[test]
fn an_opa_bundle_made_by_python_tarfile_is_served() {
    let Some(python) = zt_testkit::python("an_opa_bundle_made_by_python_tarfile_is_served") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.tar.gz");
    let script = r#"
import io, json, sys, tarfile
files = {
    ".manifest": json.dumps({"revision": "2026-11-22", "roots": ["authz", "roles"]}),
    "authz/policy.rego": "package authz\ndefault allow := false\nallow if input.user in data.roles.admins\n",
    "roles/data.json": json.dumps({"admins": ["alice"]}),
}
with tarfile.open(sys.argv[1], "w:gz") as tar:
    for name, text in files.items():
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let pdp = start(&[&bundle]);
    let ask = |user: &str| {
        json_of(&http(
            pdp.addr,
            "POST",
            "/v1/data/authz/allow",
            &json!({"input": {"user": user}}).to_string(),
        ))["result"]
            .clone()
    };
    assert_eq!(ask("alice"), json!(true));
    assert_eq!(ask("mallory"), json!(false));
    assert_eq!(
        json_of(&http(pdp.addr, "GET", "/v1/data/roles/admins", ""))["result"],
        json!(["alice"])
    );
}

#[test]
fn the_pypi_opa_python_client_works_against_zt_pdp() {
    let Some(python) = zt_testkit::python("the_pypi_opa_python_client_works_against_zt_pdp") else {
        return;
    };
    // As OPA with `--authentication=token`: the client sends the token.
    let dir = tempfile::tempdir().unwrap();
    let token = "opa-python-client-token";
    let file = token_file(dir.path(), token);
    let pdp = start_with(
        &[
            "--allow-policy-writes",
            "--api-token-file",
            file.to_str().unwrap(),
        ],
        &[&repo().join("examples/rego/allow.rego")],
    );
    let out = Command::new(&python)
        .arg(repo().join("tests/interop/opa_python_client.py"))
        .arg(pdp.addr.port().to_string())
        .arg(token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["connected"], true);
    assert_eq!(got["without_token"], "refused");
    assert_eq!(got["allowed"]["result"], true);
    assert_eq!(got["denied"]["result"], false);
    assert_eq!(got["updated"], true);
    assert_eq!(got["extra"]["result"], 42);
    assert!(
        got["info"]["extra"]["path"]
            .as_str()
            .unwrap()
            .ends_with("/v1/data/extra"),
        "{got}"
    );
    assert_eq!(got["deleted"], true);
}

#[test]
fn decisions_are_logged_with_masked_inputs_in_a_verifiable_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("mask.rego");
    std::fs::write(&mask, "package system.log\n\nmask contains \"/input/password\"\n").unwrap();
    let log = dir.path().join("decisions.log");
    let pdp = start_with(
        &["--decision-log", log.to_str().unwrap()],
        &[&repo().join("examples/rego/allow.rego"), &mask],
    );
    let input =
        json!({"principal": PAYMENT, "method": "POST", "path": "/api/v1/charges", "password": "hunter2"});
    let answer = json_of(&http(
        pdp.addr,
        "POST",
        "/v1/data/authz/allow",
        &json!({"input": input}).to_string(),
    ));
    assert_eq!(answer["result"], true);
    let denied = json_of(&http(
        pdp.addr,
        "POST",
        "/v1/data/authz/allow",
        r#"{"input": {"password": "x"}}"#,
    ));
    assert_eq!(denied["result"], false);

    let records = support::audit_query(&[log.to_str().unwrap()]);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["id"], answer["decision_id"]);
    assert_eq!(records[0]["query"], "authz/allow");
    assert_eq!(records[0]["result"], true);
    assert_eq!(records[0]["decision"], "ALLOW");
    assert_eq!(records[0]["input"]["principal"], PAYMENT);
    assert!(records[0]["input"].get("password").is_none(), "{}", records[0]);
    assert!(!std::fs::read_to_string(&log).unwrap().contains("hunter2"));
    assert_eq!(records[1]["decision"], "DENY");
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["audit", "verify", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 records, chain intact"),
        "{}",
        describe(&out)
    );
}

/// `zt pdp run` with a decision log whose checkpoints are signed after every
/// `every` records, and `count` decisions made through it (ALLOW and DENY in
/// turn); stopped cleanly (SIGTERM), which signs the last checkpoint.
fn signed_log(dir: &Path, every: &str, count: usize) -> PathBuf {
    let log = dir.join("decisions.log");
    let mut pdp = start_with(
        &[
            "--decision-log",
            log.to_str().unwrap(),
            "--decision-log-checkpoint-every",
            every,
        ],
        &[&repo().join("examples/rego/allow.rego")],
    );
    for i in 0..count {
        let method = if i % 2 == 0 { "POST" } else { "GET" };
        let input = json!({"input": {"principal": PAYMENT, "method": method, "path": "/api/v1/charges"}});
        let answer = json_of(&http(
            pdp.addr,
            "POST",
            "/v1/data/authz/allow",
            &input.to_string(),
        ));
        assert_eq!(answer["result"], i % 2 == 0, "{answer}");
    }
    let sent = Command::new("kill")
        .args(["-TERM", &pdp.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = support::wait_with_deadline(&mut pdp.child).expect("zt pdp run still running after SIGTERM");
    assert!(status.success(), "zt pdp run: {status}");
    log
}

/// `zt audit verify LOG ARGS…`.
fn audit_verify(log: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["audit", "verify", log.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

/// Fails unless `zt audit verify` refused, saying `expected` on stderr.
fn refused(out: &std::process::Output, expected: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(expected),
        "wanted {expected:?}\n{}",
        describe(out)
    );
}

/// What an attacker who can write the log does: change one record, then
/// recompute every `prev` and `hash` after it so that the chain holds.
fn rewrite(log: &Path, index: usize, change: impl FnOnce(&mut zt_audit::Record)) -> Vec<zt_audit::Record> {
    let mut records: Vec<zt_audit::Record> = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    change(&mut records[index]);
    for i in index..records.len() {
        if i > 0 {
            records[i].prev = records[i - 1].hash.clone();
        }
        records[i].hash = records[i].compute_hash();
    }
    let text: String = records
        .iter()
        .map(|r| format!("{}\n", serde_json::to_string(r).unwrap()))
        .collect();
    std::fs::write(log, text).unwrap();
    records
}

/// The notes of a checkpoints file, each with the blank line that follows it.
fn notes(checkpoints: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(checkpoints).unwrap();
    let blocks: Vec<&str> = text.split("\n\n").collect();
    blocks
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| format!("{}\n\n{}\n\n", pair[0], pair[1]))
        .collect()
}

#[test]
fn a_decision_log_rewritten_with_its_chain_fails_at_the_first_signed_checkpoint_covering_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let log = signed_log(dir.path(), "4", 10);
    let checkpoints = dir.path().join("decisions.log.checkpoints");
    let key_file = dir.path().join("decisions.log.key");
    for file in [&log, &checkpoints, &key_file] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let shown = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["audit", "key", "show", key_file.to_str().unwrap()])
        .output()
        .unwrap();
    let key = support::succeed(&shown, "zt audit key show").trim().to_owned();
    assert!(key.starts_with("zt/decision-log/"), "{key}");
    let pinned = ["--key", key.as_str()];

    // Checkpoints at 4 and 8 records, and at 10 when it stopped.
    let out = audit_verify(&log, &pinned);
    let stdout = support::succeed(&out, "zt audit verify --key");
    assert!(stdout.contains("10 records, chain intact"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "3 signed checkpoints verified with key {key}; every record is covered"
        )),
        "{stdout}"
    );
    // A key given in a file is the same; a private key there is refused, not used.
    let pin = dir.path().join("pinned.vkey");
    std::fs::write(&pin, format!("{key}\n")).unwrap();
    support::succeed(
        &audit_verify(&log, &["--key-file", pin.to_str().unwrap()]),
        "--key-file",
    );
    refused(
        &audit_verify(&log, &["--key-file", key_file.to_str().unwrap()]),
        "holds a private signing key; give its public half",
    );
    // Without a key, it says plainly what a chain is worth.
    let stdout = support::succeed(&audit_verify(&log, &[]), "zt audit verify");
    assert!(
        stdout.contains("not verified: a hash chain proves nothing against someone who can write the file"),
        "{stdout}"
    );

    // An outside implementation of the specs accepts the same checkpoints.
    if let Some(python) = zt_testkit::python("signed checkpoints verified by Python's cryptography") {
        let out = Command::new(python)
            .arg(repo().join("tests/interop/verify_checkpoint.py"))
            .arg(&key)
            .arg(&log)
            .output()
            .unwrap();
        assert_eq!(
            support::succeed(&out, "verify_checkpoint.py"),
            "4 ok\n8 ok\n10 ok\n"
        );
    }

    // RFC 9162 proofs, checked against the roots the pinned key signed: record 6
    // is in the tree of 8 records, and that tree is a prefix of the tree of 10.
    use base64::Engine as _;
    let b64 = |v: &Value| -> [u8; 32] {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let verifier = zt_audit::note::VerifierKey::parse(&key).unwrap();
    let signed_root = |size: u64| {
        notes(&checkpoints)
            .iter()
            .map(|note| {
                let note = note.strip_suffix('\n').unwrap();
                zt_audit::note::Checkpoint::parse(verifier.verify(note).unwrap()).unwrap()
            })
            .find(|checkpoint| checkpoint.size == size)
            .unwrap()
            .root
    };
    let prove = |args: &[&str]| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_zt"))
            .args(["audit", "prove", log.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        serde_json::from_str(&support::succeed(&out, "zt audit prove")).unwrap()
    };
    let records: Vec<zt_audit::Record> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let leaf = zt_audit::merkle::leaf_hash(&records[5].leaf().unwrap());
    let inclusion = prove(&["--inclusion", "6", "--size", "8"]);
    let path: Vec<[u8; 32]> = inclusion["inclusion_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(b64)
        .collect();
    assert_eq!(b64(&inclusion["leaf_hash"]), leaf);
    assert!(
        zt_audit::merkle::verify_inclusion(5, 8, &leaf, &path, &signed_root(8)),
        "{inclusion}"
    );
    assert!(!zt_audit::merkle::verify_inclusion(
        4,
        8,
        &leaf,
        &path,
        &signed_root(8)
    ));
    let consistency = prove(&["--consistency", "4", "10"]);
    let path: Vec<[u8; 32]> = consistency["consistency_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(b64)
        .collect();
    assert!(
        zt_audit::merkle::verify_consistency(4, 10, &signed_root(4), &signed_root(10), &path),
        "{consistency}"
    );
    // Without --size, the tree of the last checkpoint: record 11 is not in it.
    assert_eq!(prove(&["--inclusion", "10"])["tree_size"], 10);
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["audit", "prove", log.to_str().unwrap(), "--inclusion", "11"])
        .output()
        .unwrap();
    refused(&out, "--inclusion 11: not in a tree of 10 records");

    let original = std::fs::read(&log).unwrap();
    let original_checkpoints = std::fs::read(&checkpoints).unwrap();
    let restore = || {
        std::fs::write(&log, &original).unwrap();
        std::fs::write(&checkpoints, &original_checkpoints).unwrap();
    };

    // The finding: record 6 flipped from DENY to ALLOW, the chain recomputed.
    // The checkpoints' roots expose it, signed or not…
    rewrite(&log, 5, |record| {
        assert_eq!(record.decision, "DENY");
        record.decision = "ALLOW".into();
    });
    let at_checkpoint_2 = "decisions.log.checkpoints:7: checkpoint 2: its root hash is not the one of the log's first 8 records";
    refused(&audit_verify(&log, &pinned), at_checkpoint_2);
    refused(&audit_verify(&log, &[]), at_checkpoint_2);
    // …so the attacker deletes them: the chain holds, and only the pinned key
    // tells that nothing vouches for it.
    std::fs::remove_file(&checkpoints).unwrap();
    let stdout = support::succeed(&audit_verify(&log, &[]), "the rewritten chain");
    assert!(stdout.contains("10 records, chain intact"), "{stdout}");
    assert!(
        stdout.contains("not verified: a hash chain proves nothing"),
        "{stdout}"
    );
    refused(
        &audit_verify(&log, &pinned),
        "decisions.log.checkpoints is missing): the log's integrity cannot be established",
    );
    // A record after the last checkpoint but one: the last checkpoint names it.
    restore();
    rewrite(&log, 8, |record| record.path = Some("/elsewhere".into()));
    refused(
        &audit_verify(&log, &pinned),
        ":13: checkpoint 3: its root hash is not the one of the log's first 10",
    );

    // And with checkpoints re-signed for the rewritten log by a key of the same
    // name: not the pinned key.
    restore();
    let forged = rewrite(&log, 5, |record| record.decision = "ALLOW".into());
    let name = key.split('+').next().unwrap();
    let attacker = zt_audit::note::SigningKey::generate(name).unwrap();
    let mut tree = zt_audit::merkle::Frontier::default();
    let mut resigned = String::new();
    for record in &forged {
        tree.push(&record.leaf().unwrap());
        if [4, 8, 10].contains(&tree.size()) {
            let checkpoint = zt_audit::note::Checkpoint {
                origin: name.to_owned(),
                size: tree.size(),
                root: tree.root(),
            };
            resigned.push_str(&format!("{}\n", attacker.sign(&checkpoint.text())));
        }
    }
    std::fs::write(&checkpoints, resigned).unwrap();
    let out = audit_verify(&log, &["--key", &attacker.verifier().to_string()]);
    support::succeed(&out, "the attacker's own key accepts the attacker's checkpoints");
    refused(
        &audit_verify(&log, &pinned),
        &format!(
            "decisions.log.checkpoints:1: checkpoint 1: not signed by {}",
            // NAME+KEYID (the key's base64 may hold '+' too)
            key.splitn(3, '+').take(2).collect::<Vec<_>>().join("+")
        ),
    );

    // Records cut off the end, under a checkpoint.
    restore();
    let lines: Vec<&str> = std::str::from_utf8(&original).unwrap().lines().collect();
    std::fs::write(&log, format!("{}\n", lines[..7].join("\n"))).unwrap();
    refused(
        &audit_verify(&log, &pinned),
        "checkpoint 2: covers 8 records, but the log holds 7: records were cut off its end",
    );
    // A record appended after the last checkpoint: the log is whole, and the
    // report says what no checkpoint covers yet.
    restore();
    let mut extra: zt_audit::Record = serde_json::from_str(lines[9]).unwrap();
    extra.seq = 11;
    extra.prev = extra.hash.clone();
    extra.hash = extra.compute_hash();
    let mut grown = original.clone();
    grown.extend_from_slice(format!("{}\n", serde_json::to_string(&extra).unwrap()).as_bytes());
    std::fs::write(&log, grown).unwrap();
    let stdout = support::succeed(&audit_verify(&log, &pinned), "a record after the last checkpoint");
    assert!(
        stdout.contains("the last 1 records (after record 10) are not yet covered by a checkpoint"),
        "{stdout}"
    );

    // Checkpoints reordered.
    restore();
    let mut shuffled = notes(&checkpoints);
    assert_eq!(shuffled.len(), 3);
    shuffled.swap(0, 1);
    std::fs::write(&checkpoints, shuffled.concat()).unwrap();
    refused(
        &audit_verify(&log, &pinned),
        "checkpoint 2: covers 4 records, after a checkpoint of 8: checkpoints out of order",
    );

    // No checkpoints at all: nothing establishes the log.
    restore();
    std::fs::remove_file(&checkpoints).unwrap();
    refused(
        &audit_verify(&log, &pinned),
        "decisions.log.checkpoints is missing): the log's integrity cannot be established",
    );
    std::fs::write(&checkpoints, "").unwrap();
    refused(
        &audit_verify(&log, &pinned),
        "decisions.log.checkpoints holds none)",
    );
}

#[test]
fn a_quiet_decision_log_is_checkpointed_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    let pdp = start_with(
        &[
            "--decision-log",
            log.to_str().unwrap(),
            "--decision-log-checkpoint-interval",
            "1s",
        ],
        &[&repo().join("examples/rego/allow.rego")],
    );
    let input = json!({"input": {"principal": PAYMENT, "method": "POST", "path": "/api/v1/charges"}});
    assert_eq!(
        json_of(&http(
            pdp.addr,
            "POST",
            "/v1/data/authz/allow",
            &input.to_string()
        ))["result"],
        true
    );
    // One decision, far below the default 1000 records: the interval signs it
    // while the PDP runs.
    let shown = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["audit", "key", "show"])
        .arg(dir.path().join("decisions.log.key"))
        .output()
        .unwrap();
    let key = support::succeed(&shown, "zt audit key show").trim().to_owned();
    let start = Instant::now();
    while !String::from_utf8_lossy(&audit_verify(&log, &["--key", &key]).stdout)
        .contains("1 signed checkpoints verified with key")
    {
        assert!(
            start.elapsed() < DEADLINE,
            "no checkpoint signed within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(pdp);
}

#[test]
fn zt_server_serves_the_pdp_beside_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let policy = repo().join("examples/rego/allow.rego");
    let mut server = support::ServerProcess::spawn_with(
        &dir.path().join("server"),
        None,
        &["--pdp", policy.to_str().unwrap()],
    );
    server.wait_ready();
    let allowed = json_of(&http(
        server.http,
        "POST",
        "/v1/data/authz/allow",
        &json!({"input": {"principal": PAYMENT, "method": "POST", "path": "/api/v1/charges"}}).to_string(),
    ));
    assert_eq!(allowed["result"], true);
    assert_eq!(http(server.http, "GET", "/health", "").0, 200);
    assert_eq!(http(server.http, "GET", "/healthz", "").0, 200);
    // Policy writes are off unless --allow-policy-writes.
    let put = http(
        server.http,
        "PUT",
        "/v1/policies/extra.rego",
        "package extra\nanswer := 42\n",
    );
    assert_eq!(
        (put.0, json_of(&put)["code"].clone()),
        (401, json!("unauthorized")),
        "{put:?}"
    );
    // A policy that does not load stops the server at start, naming the flag and file.
    let broken = dir.path().join("broken.rego");
    std::fs::write(&broken, "package broken\nallow if {").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["server", "--trust-domain", "example.org", "--data-dir"])
        .arg(dir.path().join("other"))
        .arg("--pdp")
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--pdp") && stderr.contains("broken.rego"),
        "{stderr}"
    );
}

/// `zt pdp run --decision-log` under `umask 000`: a new log is made 0600, and an
/// existing one left open to others is tightened to 0600 before it grows.
#[test]
fn decision_logs_are_private_under_umask_000() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let policy = repo().join("examples/rego/allow.rego");
    let fresh = dir.path().join("fresh.log");
    let existing = dir.path().join("existing.log");
    std::fs::write(&existing, "").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o666)).unwrap();
    for log in [&fresh, &existing] {
        let pdp = start_from(
            zt_testkit::under_umask_000(Path::new(env!("CARGO_BIN_EXE_zt"))),
            &["--decision-log", log.to_str().unwrap()],
            &[&policy],
        );
        let answer = http(pdp.addr, "POST", "/v1/data/authz/allow", r#"{"input": {}}"#);
        assert_eq!(answer.0, 200, "{answer:?}");
        assert_eq!(support::audit_query(&[log.to_str().unwrap()]).len(), 1);
        assert_eq!(zt_testkit::mode_of(log), 0o600, "{}", log.display());
    }
}

/// 64 KiB of input for the bombs to copy, and a list of 1 KiB strings to
/// multiply (7 MiB: under the API's 8 MiB body limit).
fn bomb_input() -> Value {
    json!({"input": {"pad": "x".repeat(64 << 10), "items": vec!["y".repeat(1 << 10); 7000]}})
}

/// Memory bombs, each a module (package `bomb.NAME`) whose rules stop at the
/// memory limit: OPA's answer to an evaluation error.
const REGO_BOMBS: &[(&str, &str, &[&str])] = &[
    (
        "example",
        "x := count([i | some i in numbers.range(1, 1e9)])\n",
        &["x"],
    ),
    (
        "ranges",
        "huge := count(numbers.range(1, 1e12))\nstepped := count(numbers.range_step(1, 1e15, 3))\n",
        &["huge", "stepped"],
    ),
    (
        "comprehensions",
        "array := count([concat(\"\", [input.pad, format_int(i, 10)]) | some i in numbers.range(1, 1000000)])\n\
         set := count({concat(\"\", [input.pad, format_int(i, 10)]) | some i in numbers.range(1, 1000000)})\n\
         object := count({format_int(i, 10): concat(\"\", [input.pad, format_int(i, 10)]) | some i in numbers.range(1, 1000000)})\n\
         row(i) := [concat(\"\", [input.pad, format_int(i, 10), format_int(j, 10)]) | some j in numbers.range(1, 100)]\n\
         nested := count([row(i) | some i in numbers.range(1, 1000000)])\n",
        &["array", "set", "object", "nested"],
    ),
    (
        "input",
        "pairs := count([concat(\"\", [a, b]) | some a in input.items; some b in input.items])\n",
        &["pairs"],
    ),
    (
        "padding",
        "zeros := sprintf(\"%04000000000d\", [1])\nwide := sprintf(\"%0900000000d%0900000000d\", [1, 2])\n",
        &["zeros", "wide"],
    ),
];

/// Strings doubled through a chain of rules (concat, sprintf; strings.replace_n
/// multiplies by 16, which a debug build gets through faster), and doubling
/// through nested comprehensions.
fn doubling_bomb() -> String {
    let mut module = String::from(
        "package bomb.doubling\nc0 := input.pad\ns0 := input.pad\nr0 := input.pad\nd0 := [input.pad]\n",
    );
    for i in 1..=30 {
        let p = i - 1;
        module.push_str(&format!(
            "c{i} := concat(\"\", [c{p}, c{p}])\ns{i} := sprintf(\"%s%s\", [s{p}, s{p}])\n\
             r{i} := strings.replace_n({{\"x\": \"xxxxxxxxxxxxxxxx\"}}, r{p})\n\
             d{i} := [concat(\"\", [x, y]) | some x in d{p}; some y in [\"a\", \"b\"]]\n"
        ));
    }
    module
}

/// A PDP API answer is OPA's 500 for an evaluation that passed the memory limit.
fn assert_memory_error(answer: &(u16, String), what: &str) {
    assert_eq!(answer.0, 500, "{what}: {answer:?}");
    let body = json_of(answer);
    assert_eq!(body["code"], "internal_error", "{what}: {answer:?}");
    assert!(
        body["message"].as_str().unwrap().contains("memory limit"),
        "{what}: {answer:?}"
    );
}

/// After a bomb: a normal decision, and `/health`.
fn assert_still_serving(addr: SocketAddr, what: &str) {
    let allowed = allowed_again(addr);
    assert_eq!(
        (allowed.0, json_of(&allowed)["result"].clone()),
        (200, json!(true)),
        "after {what}: {allowed:?}"
    );
    assert_eq!(http(addr, "GET", "/health", "").0, 200, "after {what}");
}

/// Flags for a bomb-proof PDP: writes on, a memory limit low enough for a
/// debug build to reach it fast, and a time limit long enough that only the
/// memory limit can stop a bomb.
const BOMB_FLAGS: &[&str] = &[
    "--allow-policy-writes",
    "--rego-max-memory",
    "128MiB",
    "--rego-timeout",
    "120s",
];

#[test]
fn rego_memory_bomb_answers_500_and_zt_pdp_keeps_serving() {
    let pdp = start_with(BOMB_FLAGS, &[&repo().join("examples/rego/allow.rego")]);
    let input = bomb_input().to_string();
    let mut modules: Vec<(String, String, Vec<&str>)> = REGO_BOMBS
        .iter()
        .map(|(name, rules, queries)| {
            (
                name.to_string(),
                format!("package bomb.{name}\n{rules}"),
                queries.to_vec(),
            )
        })
        .collect();
    modules.push((
        "doubling".into(),
        doubling_bomb(),
        vec!["c30", "s30", "r30", "d30"],
    ));
    for (name, module, queries) in &modules {
        let put = http(pdp.addr, "PUT", &format!("/v1/policies/{name}.rego"), module);
        assert_eq!(put.0, 200, "PUT {name}: {put:?}");
        for rule in queries {
            let what = format!("bomb.{name}.{rule}");
            assert_memory_error(
                &http(pdp.addr, "POST", &format!("/v1/data/bomb/{name}/{rule}"), &input),
                &what,
            );
            assert_still_serving(pdp.addr, &what);
        }
    }
    // The issue's example through every way of asking: GET, /v0, a whole package.
    for (method, path, body) in [
        ("GET", "/v1/data/bomb/example/x", ""),
        ("POST", "/v0/data/bomb/example/x", "{}"),
        ("POST", "/v1/data/bomb/example", "{}"),
    ] {
        assert_memory_error(&http(pdp.addr, method, path, body), path);
        assert_still_serving(pdp.addr, path);
    }
}

#[test]
fn rego_memory_bomb_denies_through_ext_authz_and_zt_pdp_keeps_serving() {
    use envoy_types::ext_authz::v3::pb::CheckRequest;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("envoy.rego");
    std::fs::write(
        &policy,
        "package envoy.authz\n\
         default allow := false\n\
         allow if input.attributes.request.http.path == \"/ok\"\n\
         allow if {\n  input.attributes.request.http.path == \"/bomb\"\n  count([i | some i in numbers.range(1, 1e12)]) > 0\n}\n",
    )
    .unwrap();
    let grpc = free_addr();
    let mut flags = BOMB_FLAGS.to_vec();
    let grpc_text = grpc.to_string();
    flags.extend(["--ext-authz-addr", &grpc_text]);
    let pdp = start_with(&flags, &[&policy]);
    let check = |path: &str| CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        for _ in 0..2 {
            let bomb = client.check(check("/bomb")).await.unwrap().into_inner();
            assert_eq!(bomb.status.unwrap().code, 7, "PERMISSION_DENIED");
            let ok = client.check(check("/ok")).await.unwrap().into_inner();
            assert_eq!(ok.status.unwrap().code, 0);
        }
    });
    assert_eq!(http(pdp.addr, "GET", "/health", "").0, 200);
}

#[test]
fn rego_time_limit_still_applies_beside_the_memory_limit() {
    let pdp = start_with(
        &["--allow-policy-writes", "--rego-timeout", "1s"],
        &[&repo().join("examples/rego/allow.rego")],
    );
    // Much work, little memory.
    let slow = "package slow\nn := count([1 | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); i == j + 1000000])\n";
    assert_eq!(http(pdp.addr, "PUT", "/v1/policies/slow.rego", slow).0, 200);
    let answer = http(pdp.addr, "GET", "/v1/data/slow/n", "");
    assert_eq!(answer.0, 500, "{answer:?}");
    assert_eq!(json_of(&answer)["code"], "internal_error");
    assert!(
        json_of(&answer)["message"]
            .as_str()
            .unwrap()
            .contains("time limit"),
        "{answer:?}"
    );
    assert_still_serving(pdp.addr, "the slow query");
}

#[test]
fn rego_limit_flags_are_checked_and_named() {
    for (args, flag, value) in [
        (
            vec!["pdp", "run", "--rego-max-memory", "1XB", "p.rego"],
            "--rego-max-memory",
            "1XB",
        ),
        (
            vec!["pdp", "run", "--rego-max-memory", "0", "p.rego"],
            "--rego-max-memory",
            "0",
        ),
        (
            vec!["pdp", "run", "--rego-timeout", "0s", "p.rego"],
            "--rego-timeout",
            "0s",
        ),
        (
            vec![
                "server",
                "--trust-domain",
                "example.org",
                "--rego-max-memory",
                "lots",
            ],
            "--rego-max-memory",
            "lots",
        ),
        (
            vec!["proxy", "--rego-max-memory", "1.5GiB"],
            "--rego-max-memory",
            "1.5GiB",
        ),
        (
            vec!["policy", "test", ".", "--rego-max-memory", "1QB"],
            "--rego-max-memory",
            "1QB",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_zt"))
            .args(&args)
            .output()
            .unwrap();
        zt_testkit::assert_cli_failure(&out, 2, &[flag, value]);
    }
}

#[test]
fn policy_writes_are_refused_unless_enabled() {
    let policy = repo().join("examples/rego/allow.rego");
    let pdp = start(&[&policy]);
    for (method, path, body) in [
        ("PUT", "/v1/policies/extra.rego", "package extra\nanswer := 42\n"),
        ("PUT", "/v1/policies/allow.rego", "package authz\nallow := true\n"),
        ("DELETE", "/v1/policies/allow.rego", ""),
    ] {
        let answer = http(pdp.addr, method, path, body);
        assert_eq!(answer.0, 401, "{method} {path}: {answer:?}");
        let body = json_of(&answer);
        assert_eq!(body["code"], "unauthorized");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("request rejected by administrative policy")
                && message.contains("--allow-policy-writes"),
            "{message}"
        );
    }
    // Nothing changed: the policy decides as before, and reads still work.
    let denied = http(
        pdp.addr,
        "POST",
        "/v1/data/authz/allow",
        &json!({"input": {"principal": "spiffe://cluster.local/ns/production/sa/orders", "method": "POST", "path": "/api/v1/charges"}}).to_string(),
    );
    assert_eq!(json_of(&denied)["result"], false);
    assert_eq!(json_of(&allowed_again(pdp.addr))["result"], true);
    let list = json_of(&http(pdp.addr, "GET", "/v1/policies", ""));
    assert_eq!(list["result"].as_array().unwrap().len(), 1, "{list}");
    assert!(
        json_of(&http(pdp.addr, "GET", "/v1/data/extra/answer", ""))
            .get("result")
            .is_none()
    );
}

/// A token file of mode 0600 in `dir`.
fn token_file(dir: &Path, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("api-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn the_api_token_is_required_on_every_call_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let token = "t0ken-0f-the-pdp-api";
    let file = token_file(dir.path(), token);
    let pdp = start_with(
        &[
            "--allow-policy-writes",
            "--api-token-file",
            file.to_str().unwrap(),
        ],
        &[&repo().join("examples/rego/allow.rego")],
    );
    let bearer = format!("Bearer {token}");
    let input =
        json!({"input": {"principal": PAYMENT, "method": "POST", "path": "/api/v1/charges"}}).to_string();
    let calls: &[(&str, &str, &str)] = &[
        ("POST", "/v1/data/authz/allow", &input),
        ("GET", "/v1/data/authz", ""),
        ("POST", "/v1/data", "{}"),
        ("POST", "/v0/data/authz/allow", "{}"),
        ("GET", "/v1/policies", ""),
        ("GET", "/v1/policies/allow.rego", ""),
        ("PUT", "/v1/policies/extra.rego", "package extra\nanswer := 42\n"),
        ("DELETE", "/v1/policies/extra.rego", ""),
    ];
    for (headers, why) in [
        (vec![], "a bearer token is required"),
        (vec![("Authorization", "Bearer wrong")], "invalid bearer token"),
        (
            vec![("Authorization", "Bearer t0ken-0f-the-pdp-ap")],
            "invalid bearer token",
        ),
        (vec![("Authorization", token)], "a bearer token is required"),
        (
            vec![("Authorization", "Basic dXNlcjpwYXNz")],
            "a bearer token is required",
        ),
    ] {
        for (method, path, body) in calls {
            let answer = support::http_request(pdp.addr, method, path, &headers, body).unwrap();
            assert_eq!(answer.0, 401, "{method} {path} {headers:?}: {answer:?}");
            let body = json_of(&answer);
            assert_eq!(body["code"], "unauthorized");
            let message = body["message"].as_str().unwrap();
            assert!(
                message.starts_with(&format!("request rejected by administrative policy: {why}")),
                "{method} {path} {headers:?}: {message}"
            );
        }
    }
    // /health answers anyone; the right token gets everything.
    assert_eq!(http(pdp.addr, "GET", "/health", "").0, 200);
    let with = |method: &str, path: &str, body: &str| {
        support::http_request(pdp.addr, method, path, &[("Authorization", &bearer)], body).unwrap()
    };
    assert_eq!(
        json_of(&with("POST", "/v1/data/authz/allow", &input))["result"],
        true
    );
    assert_eq!(
        with("PUT", "/v1/policies/extra.rego", "package extra\nanswer := 42\n").0,
        200
    );
    assert_eq!(json_of(&with("GET", "/v1/data/extra/answer", ""))["result"], 42);
    assert_eq!(with("DELETE", "/v1/policies/extra.rego", "").0, 200);
}

#[test]
fn token_files_that_others_can_read_are_refused_at_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), "s3cret-value");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let policy = repo().join("examples/rego/allow.rego");
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["pdp", "run", "--api-token-file"])
        .arg(&file)
        .arg(&policy)
        .output()
        .unwrap();
    zt_testkit::assert_cli_failure(
        &out,
        1,
        &["--api-token-file", "api-token", "mode 0644", "chmod 600"],
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("s3cret"),
        "{}",
        describe(&out)
    );
    std::fs::write(&file, "\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["pdp", "run", "--api-token-file"])
        .arg(&file)
        .arg(&policy)
        .output()
        .unwrap();
    zt_testkit::assert_cli_failure(&out, 1, &["--api-token-file", "empty: no token in it"]);
}
