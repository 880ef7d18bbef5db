//! `zt policy lint|eval|test` as a CI pipeline runs them: exit codes, output
//! shapes, and problems named by file and line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use zt_testkit::{assert_cli_failure as assert_failure, describe};

fn zt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(args)
        .output()
        .unwrap()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn the_example_policies_lint_and_pass_their_cases() {
    let policies = examples().join("policies");
    let out = zt(&["policy", "lint", arg(&policies)]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(
        "1 policies, no problems (production: 1); 2 PeerAuthentications (production: 1, zt-system: 1)"
    ));
    let cases = examples().join("policy-cases.yaml");
    passes(
        &["policy", "test", arg(&policies), "--cases", arg(&cases)],
        "6 tests: 6 passed, 0 failed",
    );
}

/// RequestAuthentication in table tests: raw tokens verified with zt proxy's
/// code against the inline keys, 401 as an expectation, claims given directly.
#[test]
fn request_authentication_cases_verify_tokens_as_the_proxy_does() {
    let dir = examples().join("request-authentication");
    let policies = dir.join("policies");
    let out = zt(&["policy", "lint", arg(&policies)]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("; 1 RequestAuthentications (production: 1)"),
        "{}",
        describe(&out)
    );
    passes(
        &[
            "policy",
            "test",
            arg(&policies),
            "--cases",
            arg(&dir.join("cases.yaml")),
        ],
        "9 tests: 9 passed, 0 failed",
    );
    // A case expecting ALLOW for a refused token fails, saying why.
    let cases = fs::read_to_string(dir.join("cases.yaml")).unwrap();
    let wrong = cases.replacen("decision: UNAUTHENTICATED", "decision: ALLOW", 1);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cases.yaml");
    fs::write(&file, wrong).unwrap();
    let out = zt(&["policy", "test", arg(&policies), "--cases", arg(&file)]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL  an expired token is refused before any policy: want ALLOW, got UNAUTHENTICATED (unauthenticated: expired)"),
        "{stdout}"
    );
    // eval: the 401 as JSON.
    let request = json!({
        "destination": {"namespace": "production", "labels": {"app": "reports"}},
        "request": {"method": "GET", "path": "/reports/x", "headers": {"authorization": "Bearer not.a.token"}},
    });
    let out = zt(&[
        "policy",
        "eval",
        "--policies",
        arg(&policies),
        "--request",
        &request.to_string(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer,
        json!({"decision": "UNAUTHENTICATED", "status": 401, "reason": "malformed"})
    );
}

/// zt up's policies (which it embeds) and their Rego variant decide alike, by
/// their tests (the Rego variant models the two services' policies, not the
/// gateway's).
#[test]
fn the_mesh_examples_pass_their_cases_in_yaml_and_rego() {
    let mesh = examples().join("mesh");
    let (policies, cases) = (mesh.join("policies"), mesh.join("policy-cases.yaml"));
    passes(
        &["policy", "test", arg(&policies), "--cases", arg(&cases)],
        "18 tests: 18 passed, 0 failed",
    );
    passes(
        &["policy", "test", arg(&mesh.join("rego"))],
        "7 tests: 7 passed, 0 failed",
    );
}

/// Runs `zt ARGS`, which must succeed and print `summary`.
fn passes(args: &[&str], summary: &str) {
    let out = zt(args);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(summary), "{stdout}");
}

#[test]
fn eval_prints_the_public_decision_shape() {
    let policies = examples().join("policies");
    let eval = |request: Value| {
        let out = zt(&[
            "policy",
            "eval",
            "--policies",
            arg(&policies),
            "--request",
            &request.to_string(),
        ]);
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let request = |principal: &str, method: &str| {
        json!({
            "source": {"principal": principal, "ip": "10.0.0.7"},
            "destination": {"namespace": "production", "labels": {"app": "billing-service"}, "port": 8080},
            "request": {"method": method, "path": "/api/v1/charges", "host": "billing", "headers": {}},
            "protocol": "http"
        })
    };
    let allowed = eval(request(
        "spiffe://cluster.local/ns/production/sa/payment-service",
        "POST",
    ));
    assert_eq!(
        allowed,
        json!({
            "decision": "ALLOW",
            "policy": "production/billing-service-policy",
            "reason": "matched rule 0 of ALLOW policy production/billing-service-policy"
        })
    );
    let denied = eval(request(
        "spiffe://cluster.local/ns/production/sa/payment-service",
        "GET",
    ));
    assert_eq!(denied["decision"], "DENY");
    assert_eq!(denied["policy"], Value::Null);
    assert_eq!(denied.as_object().unwrap().len(), 3, "{denied}");

    // The request from a file and from standard input.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    fs::write(
        &file,
        request("spiffe://cluster.local/ns/production/sa/orders", "POST").to_string(),
    )
    .unwrap();
    let out = zt(&[
        "policy",
        "eval",
        "--policies",
        arg(&policies),
        "--request",
        &format!("@{}", arg(&file)),
    ]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["decision"],
        "DENY"
    );

    // A request that is not the contract's shape: refused, naming the field.
    let out = zt(&[
        "policy",
        "eval",
        "--policies",
        arg(&policies),
        "--request",
        r#"{"destination":{"namespace":"x"},"protocl":"tcp"}"#,
    ]);
    assert_failure(&out, 1, &["--request", "unknown field `protocl`"]);
    let out = zt(&[
        "policy",
        "eval",
        "--policies",
        arg(&policies),
        "--request",
        "not json",
    ]);
    assert_failure(&out, 1, &["--request"]);
}

#[test]
fn problems_are_named_by_file_and_line_and_nothing_is_used() {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        examples().join("policies/billing-service.yaml"),
        dir.path().join("a-good.yaml"),
    )
    .unwrap();
    fs::create_dir(dir.path().join("team")).unwrap();
    fs::write(
        dir.path().join("team/bad.yml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad\n  namespace: team\nspec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/33\"]\n",
    )
    .unwrap();
    fs::write(dir.path().join("README.md"), "not a policy").unwrap();
    let out = zt(&["policy", "lint", arg(dir.path())]);
    assert_failure(&out, 1, &["team/bad.yml:", "ipBlocks", "10.0.0.0/33"]);
    // eval and test refuse a broken set rather than evaluate part of it.
    let out = zt(&[
        "policy",
        "eval",
        "--policies",
        arg(dir.path()),
        "--request",
        r#"{"destination":{"namespace":"production"},"request":{"method":"GET","path":"/"}}"#,
    ]);
    assert_failure(&out, 1, &["team/bad.yml:"]);
    let out = zt(&["policy", "lint", "/nonexistent-policies"]);
    assert_failure(&out, 1, &["/nonexistent-policies"]);
}

#[test]
fn peer_authentications_are_linted_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let head = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n";
    fs::write(
        dir.path().join("ports.yaml"),
        format!("{head}  name: ports\n  namespace: production\nspec:\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n"),
    )
    .unwrap();
    fs::write(
        dir.path().join("mode.yaml"),
        format!("{head}  name: mode\n  namespace: staging\nspec:\n  mtls:\n    mode: STRICTER\n"),
    )
    .unwrap();
    let out = zt(&["policy", "lint", arg(dir.path())]);
    assert_failure(
        &out,
        1,
        &[
            "ports.yaml:7: spec.portLevelMtls: needs spec.selector.matchLabels",
            "mode.yaml:8: spec.mtls.mode: unknown variant `STRICTER`",
        ],
    );

    // A workload PeerAuthentication in the root namespace is ignored, as in
    // Istio: lint passes and says so.
    fs::remove_file(dir.path().join("mode.yaml")).unwrap();
    fs::write(
        dir.path().join("ports.yaml"),
        format!("{head}  name: ports\n  namespace: zt-system\nspec:\n  selector:\n    matchLabels: {{app: a}}\n  mtls:\n    mode: DISABLE\n"),
    )
    .unwrap();
    let out = zt(&["policy", "lint", arg(dir.path())]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("0 policies, no problems (); 1 PeerAuthentications (zt-system: 1)"),
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: ") && stderr.contains("ports.yaml:1: spec.selector: zt-system/ports"),
        "{stderr}"
    );
}

#[test]
fn failing_cases_fail_the_run_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    fs::write(
        &cases,
        "- name: wrongly expected\n  request:\n    source: {principal: spiffe://cluster.local/ns/production/sa/orders}\n    destination: {namespace: production, labels: {app: billing-service}}\n    request: {method: POST, path: /api/v1/charges}\n  decision: ALLOW\n- name: right\n  request:\n    destination: {namespace: production, labels: {app: billing-service}}\n    request: {method: POST, path: /api/v1/charges}\n  decision: DENY\n",
    )
    .unwrap();
    let out = zt(&[
        "policy",
        "test",
        arg(&examples().join("policies")),
        "--cases",
        arg(&cases),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL  wrongly expected: want ALLOW, got DENY (no ALLOW policy matched)"),
        "{stdout}"
    );
    assert!(stdout.contains("PASS  right"), "{stdout}");
    assert!(stdout.contains("2 tests: 1 passed, 1 failed"), "{stdout}");
    fs::write(&cases, "- name: x\n  decision: MAYBE\n").unwrap();
    let out = zt(&[
        "policy",
        "test",
        arg(&examples().join("policies")),
        "--cases",
        arg(&cases),
    ]);
    assert_failure(&out, 1, &["--cases", "cases.yaml"]);
}

#[test]
fn rego_test_rules_run_like_opa_test() {
    let out = zt(&["policy", "test", arg(&examples().join("rego"))]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("PASS  data.authz.test_payment_service_may_create_a_charge"),
        "{stdout}"
    );
    assert!(stdout.contains("3 tests: 3 passed, 0 failed"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    fs::copy(examples().join("rego/allow.rego"), dir.path().join("allow.rego")).unwrap();
    fs::write(
        dir.path().join("wrong_test.rego"),
        "package authz\n\ntest_everyone_may_charge if allow with input as {\"principal\": \"x\", \"method\": \"POST\", \"path\": \"/api/v1/charges\"}\n",
    )
    .unwrap();
    let out = zt(&["policy", "test", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL  data.authz.test_everyone_may_charge"),
        "{stdout}"
    );

    // Nothing to test is an error, not a silent pass.
    let empty = tempfile::tempdir().unwrap();
    let out = zt(&["policy", "test", arg(empty.path())]);
    assert_failure(&out, 1, &["nothing to test"]);
}

#[test]
fn rego_memory_bomb_in_a_test_rule_is_an_error_and_the_rest_run() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("bomb_test.rego"),
        format!("package bomb\n\n\
         test_range if count(numbers.range(1, 1e12)) > 0\n\
         test_fill if count([concat(\"\", [p12, format_int(i, 10)]) | some i in numbers.range(1, 1000000)]) > 0\n\
         test_sane if count(numbers.range(1, 10)) == 10\n\
         p0 := \"0123456789abcdef\"\n{}",
        (1..=12)
            .map(|i| format!("p{i} := concat(\"\", [p{}, p{}])\n", i - 1, i - 1))
            .collect::<String>()
        ),
    )
    .unwrap();
    let out = zt(&[
        "policy",
        "test",
        arg(dir.path()),
        "--rego-max-memory",
        "64MiB",
        "--rego-timeout",
        "300s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for test in ["test_range", "test_fill"] {
        // The error's report runs over several lines, up to the next outcome.
        let start = stdout
            .find(&format!("ERROR data.bomb.{test} "))
            .unwrap_or_else(|| panic!("no ERROR for {test} in {stdout}"));
        let report = &stdout[start..];
        let end = ["\nPASS", "\nFAIL", "\nERROR"]
            .iter()
            .filter_map(|next| report.find(next))
            .min()
            .unwrap_or(report.len());
        assert!(report[..end].contains("memory limit"), "{}", &report[..end]);
    }
    assert!(stdout.contains("PASS  data.bomb.test_sane"), "{stdout}");
}
