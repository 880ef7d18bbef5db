//! `zt policy generate|promote` on decision logs written by zt's own log
//! writer (chain and signed checkpoints, as a proxy writes them): what the
//! generated policies allow and deny, what is reported instead of allowed,
//! and refusals of tampered evidence and of bad input, each in one line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use zt_audit::Record;
use zt_testkit::{assert_cli_failure as assert_failure, describe};

const FRONTEND: &str = "spiffe://example.org/ns/web/sa/frontend";
const BILLING: &str = "spiffe://example.org/ns/shop/sa/billing";
const T0: u64 = 1_790_000_000_000;

fn zt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = zt(args);
    assert!(out.status.success(), "zt {args:?}: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A record as zt proxy writes it (the writer fills in seq, prev and hash).
fn decision(time_ms: u64, caller: Option<&str>, destination: &str, method: &str, path: &str) -> Record {
    serde_json::from_value(json!({
        "seq": 0, "time_ms": time_ms, "id": format!("{time_ms:032x}"),
        "source_principal": caller, "source_ip": "10.1.2.3",
        "destination": destination, "port": 15006, "protocol": "http",
        "method": method, "host": "svc", "path": path,
        "decision": "ALLOW", "mode": "permissive", "policy": null,
        "reason": "no ALLOW policy applies to the workload", "policy_version": "v1",
        "eval_ns": 100, "dry_run": null, "audit": null, "prev": "", "hash": ""
    }))
    .unwrap()
}

/// Writes `records` to a signed log at `path`, a checkpoint every 4 records.
fn write_log(path: &Path, records: Vec<Record>) {
    let key = zt_audit::note::SigningKey::generate("example.org/decisions/test").unwrap();
    let policy = zt_audit::CheckpointPolicy {
        every: 4,
        ..Default::default()
    };
    let mut writer = zt_audit::Writer::open_signed(path, key, policy).unwrap();
    writer.append(records).unwrap();
    writer.checkpoint().unwrap();
}

/// Traffic of a small shop: the frontend reads items by ID and posts orders,
/// billing reads orders, one plaintext caller, one request denied by a DENY
/// policy, and static files under one prefix.
fn shop_traffic() -> Vec<Record> {
    let mut records = Vec::new();
    let mut t = T0;
    let mut at = |caller, destination, method, path: &str| {
        t += 1_000;
        decision(t, caller, destination, method, path)
    };
    for id in [17, 42, 99, 1234] {
        records.push(at(Some(FRONTEND), "shop/cart", "GET", &format!("/items/{id}")));
    }
    records.push(at(Some(FRONTEND), "shop/cart", "POST", "/orders"));
    records.push(at(
        Some(BILLING),
        "shop/cart",
        "GET",
        "/orders/123e4567-e89b-12d3-a456-426614174000",
    ));
    for file in ["app.js", "app.css", "logo.svg", "font.woff"] {
        records.push(at(Some(FRONTEND), "shop/cart", "GET", &format!("/static/{file}")));
    }
    records.push(at(None, "shop/cart", "GET", "/items/17"));
    let mut denied = at(Some(BILLING), "shop/cart", "DELETE", "/items/17");
    denied.decision = "DENY".into();
    denied.policy = Some("shop/no-deletes".into());
    records.push(denied);
    records.push(at(Some(BILLING), "shop/ledger", "PUT", "/entries/7"));
    records
}

fn request(caller: Option<&str>, app: &str, method: &str, path: &str) -> String {
    json!({
        "source": {"principal": caller},
        "destination": {"namespace": "shop", "labels": {"app": app}, "port": 15006},
        "request": {"method": method, "path": path},
    })
    .to_string()
}

fn eval(dir: &Path, request: &str) -> String {
    let out = ok(&[
        "policy",
        "eval",
        "--policies",
        dir.to_str().unwrap(),
        "--request",
        request,
    ]);
    let decision: serde_json::Value = serde_json::from_str(&out).unwrap();
    decision["decision"].as_str().unwrap().to_owned()
}

#[test]
fn generated_policies_allow_what_was_observed_and_deny_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    write_log(&log, shop_traffic());
    let out = dir.path().join("generated");
    let report = ok(&[
        "policy",
        "generate",
        "--log",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--collapse-after",
        "4",
        "--enforce",
    ]);
    assert!(report.contains("2 policies (3 rules)"), "{report}");
    assert!(
        report.contains("10.1.2.3 → shop/cart: 1 request"),
        "plaintext callers are listed:\n{report}"
    );
    assert!(report.contains("denied by shop/no-deletes"), "{report}");
    let cart = fs::read_to_string(out.join("shop/cart.yaml")).unwrap();
    assert!(cart.contains("\"/items/{*}\""), "{cart}");
    assert!(cart.contains("\"/orders/{*}\""), "{cart}");
    assert!(cart.contains("\"/static/{**}\""), "{cart}");
    assert!(
        cart.contains(
            "# spiffe://example.org/ns/web/sa/frontend: 9 requests, 9 distinct paths, last seen 2026-09-21T"
        ),
        "{cart}"
    );
    assert!(!cart.contains("dry-run"), "--enforce: {cart}");
    ok(&["policy", "lint", out.to_str().unwrap()]);

    // Every observed request of a verified caller that was served is allowed…
    for record in shop_traffic() {
        let (Some(caller), "ALLOW") = (record.source_principal.as_deref(), record.decision.as_str()) else {
            continue;
        };
        let app = record.destination.split_once('/').unwrap().1;
        let request = request(
            Some(caller),
            app,
            record.method.as_deref().unwrap(),
            record.path.as_deref().unwrap(),
        );
        assert_eq!(eval(&out, &request), "ALLOW", "{request}");
    }
    // …and what was not observed is denied: other callers, methods, siblings, plaintext.
    for (caller, app, method, path) in [
        (Some(BILLING), "cart", "GET", "/items/17"),
        (Some(FRONTEND), "cart", "DELETE", "/items/17"),
        (Some(FRONTEND), "cart", "GET", "/items/17/secrets"),
        (Some(FRONTEND), "cart", "GET", "/admin"),
        (
            Some(FRONTEND),
            "cart",
            "GET",
            "/orders/123e4567-e89b-12d3-a456-426614174000",
        ),
        (Some(BILLING), "ledger", "GET", "/entries/7"),
        (None, "cart", "GET", "/items/17"),
    ] {
        let request = request(caller, app, method, path);
        assert_eq!(eval(&out, &request), "DENY", "{request}");
    }

    // The same traffic gives the same files.
    let again = dir.path().join("again");
    ok(&[
        "policy",
        "generate",
        "--log",
        log.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "--collapse-after",
        "4",
        "--enforce",
    ]);
    assert_eq!(fs::read_to_string(again.join("shop/cart.yaml")).unwrap(), cart);
}

#[test]
fn policies_are_dry_run_until_promoted_by_shadow_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    write_log(&log, shop_traffic());
    let out = dir.path().join("generated");
    ok(&[
        "policy",
        "generate",
        "--log",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let cart = fs::read_to_string(out.join("shop/cart.yaml")).unwrap();
    assert!(cart.contains("istio.io/dry-run: \"true\""), "{cart}");

    // Shadow decisions, as proxies record them once the dry-run set is applied:
    // the ledger's policy allowed everything; the cart's would have denied a
    // served request.
    let mut shadow = Vec::new();
    let mut ledger = decision(T0 + 100_000, Some(BILLING), "shop/ledger", "PUT", "/entries/8");
    ledger.dry_run = Some("ALLOW shop/ledger-observed".into());
    shadow.push(ledger);
    let mut cart_ok = decision(T0 + 101_000, Some(FRONTEND), "shop/cart", "GET", "/items/5");
    cart_ok.dry_run = Some("ALLOW shop/cart-observed".into());
    shadow.push(cart_ok);
    let mut cart_denied = decision(T0 + 102_000, Some(FRONTEND), "shop/cart", "PATCH", "/items/5");
    cart_denied.dry_run = Some("DENY (no policy)".into());
    shadow.push(cart_denied);
    let shadow_log = dir.path().join("shadow.log");
    write_log(&shadow_log, shadow);

    let verdicts = ok(&[
        "policy",
        "promote",
        out.to_str().unwrap(),
        "--log",
        shadow_log.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(verdicts.contains("promote  shop/ledger-observed"), "{verdicts}");
    assert!(verdicts.contains("keep     shop/cart-observed"), "{verdicts}");
    assert!(
        verdicts.contains("PATCH /items/5 from spiffe://example.org/ns/web/sa/frontend to shop/cart (1×)"),
        "{verdicts}"
    );
    assert_eq!(
        fs::read_to_string(out.join("shop/cart.yaml")).unwrap(),
        cart,
        "--dry-run changes nothing"
    );

    let promoted = ok(&[
        "policy",
        "promote",
        out.to_str().unwrap(),
        "--log",
        shadow_log.to_str().unwrap(),
    ]);
    assert!(
        promoted.contains("1 of 2 dry-run policies promoted"),
        "{promoted}"
    );
    let ledger = fs::read_to_string(out.join("shop/ledger.yaml")).unwrap();
    assert!(!ledger.contains("istio.io/dry-run:"), "{ledger}");
    assert!(
        fs::read_to_string(out.join("shop/cart.yaml"))
            .unwrap()
            .contains("istio.io/dry-run: \"true\"")
    );
    ok(&["policy", "lint", out.to_str().unwrap()]);
    // Enforced now: the ledger's unobserved requests are denied.
    let unobserved = request(Some(FRONTEND), "ledger", "PUT", "/entries/8");
    assert_eq!(eval(&out, &unobserved), "DENY");
}

#[test]
fn tampered_or_cut_logs_are_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    write_log(&log, shop_traffic());
    let out = dir.path().join("generated");
    let out = out.to_str().unwrap();
    let text = fs::read_to_string(&log).unwrap();

    // An edited record: the chain breaks at its line.
    let edited = dir.path().join("edited.log");
    fs::write(&edited, text.replacen("/items/42", "/items/43", 1)).unwrap();
    fs::copy(
        zt_audit::signed::checkpoints_path(&log),
        zt_audit::signed::checkpoints_path(&edited),
    )
    .unwrap();
    let failed = zt(&[
        "policy",
        "generate",
        "--log",
        edited.to_str().unwrap(),
        "--out",
        out,
    ]);
    assert_failure(&failed, 1, &[&format!("{}:2: ", edited.display()), "edited"]);

    // Cut after a checkpoint: the checkpoint covers records that are gone.
    let cut = dir.path().join("cut.log");
    let lines: Vec<&str> = text.lines().collect();
    fs::write(&cut, lines[..lines.len() - 3].join("\n") + "\n").unwrap();
    fs::copy(
        zt_audit::signed::checkpoints_path(&log),
        zt_audit::signed::checkpoints_path(&cut),
    )
    .unwrap();
    let failed = zt(&["policy", "generate", "--log", cut.to_str().unwrap(), "--out", out]);
    assert_failure(&failed, 1, &["cut off its end"]);
    assert!(
        !Path::new(out).exists(),
        "nothing is generated from tampered evidence"
    );

    // An unknown record shape (another version): refused by line.
    let unknown = dir.path().join("unknown.log");
    fs::write(&unknown, text.replacen("\"seq\":1,", "\"seq\":1,\"v\":9,", 1)).unwrap();
    let failed = zt(&[
        "policy",
        "generate",
        "--log",
        unknown.to_str().unwrap(),
        "--out",
        out,
    ]);
    assert_failure(
        &failed,
        1,
        &[&format!("{}:1: ", unknown.display()), "unknown field"],
    );
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    write_log(&log, shop_traffic());
    let (log, out) = (log.to_str().unwrap(), dir.path().join("out"));
    let out = out.to_str().unwrap();
    // A window without traffic.
    let failed = zt(&[
        "policy",
        "generate",
        "--log",
        log,
        "--out",
        out,
        "--until",
        "2000-01-01T00:00:00Z",
    ]);
    assert_failure(
        &failed,
        1,
        &[
            "no proxy decisions in the window --until 2000-01-01T00:00:00Z",
            "13 records read",
        ],
    );
    let failed = zt(&[
        "policy", "generate", "--log", log, "--out", out, "--since", "2h", "--until", "3h",
    ]);
    assert_failure(&failed, 1, &["--since 2h is not before --until 3h"]);
    let failed = zt(&[
        "policy",
        "generate",
        "--log",
        log,
        "--out",
        out,
        "--since",
        "yesterday",
    ]);
    assert_failure(&failed, 1, &["--since \"yesterday\""]);
    let failed = zt(&[
        "policy",
        "generate",
        "--log",
        log,
        "--out",
        out,
        "--max-flows",
        "3",
    ]);
    assert_failure(
        &failed,
        1,
        &["more than --max-flows 3 distinct flows", "--since/--until"],
    );
    let failed = zt(&["policy", "generate", "--log", "/nonexistent.log", "--out", out]);
    assert_failure(&failed, 1, &["/nonexistent.log"]);
    let failed = zt(&["policy", "generate", "--out", out]);
    assert_failure(&failed, 2, &["<--log <FILE>|--server>"]);
    // Generated into a directory of other policies: they are not the generator's
    // concern (a DENY there is fine), but a name they already use is refused.
    let mixed = dir.path().join("mixed");
    fs::create_dir_all(mixed.join("shop")).unwrap();
    fs::write(mixed.join("deny.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: no-items\n  namespace: shop\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/items/{*}\"]\n").unwrap();
    ok(&[
        "policy",
        "generate",
        "--log",
        log,
        "--out",
        mixed.to_str().unwrap(),
    ]);
    fs::write(mixed.join("taken.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: cart-observed\n  namespace: shop\nspec: {}\n").unwrap();
    let failed = zt(&[
        "policy",
        "generate",
        "--log",
        log,
        "--out",
        mixed.to_str().unwrap(),
    ]);
    assert_failure(
        &failed,
        1,
        &[
            "the directory does not lint with the generated files",
            "taken.yaml",
        ],
    );
    // A policy directory that does not lint is not promoted.
    let broken = dir.path().join("broken");
    fs::create_dir(&broken).unwrap();
    fs::write(broken.join("p.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: x\n  namespace: shop\nspec:\n  action: MAYBE\n").unwrap();
    let failed = zt(&["policy", "promote", broken.to_str().unwrap(), "--log", log]);
    assert_failure(&failed, 1, &["p.yaml:7"]);
    // Destinations without labels and unusable paths are reported, not allowed.
    let odd = dir.path().join("odd.log");
    write_log(
        &odd,
        vec![
            decision(T0, Some(FRONTEND), "shop", "GET", "/x"),
            decision(T0 + 1, Some(FRONTEND), "shop/cart", "GET", "/a{b}"),
            decision(T0 + 2, Some(FRONTEND), "shop/cart", "GET", "/ok"),
        ],
    );
    let report = ok(&["policy", "generate", "--log", odd.to_str().unwrap(), "--out", out]);
    assert!(
        report.contains("shop (1 request): give its proxy --label app=NAME"),
        "{report}"
    );
    assert!(
        report.contains("shop/cart \"/a{b}\": contains { or }"),
        "{report}"
    );
    let cart = fs::read_to_string(Path::new(out).join("shop/cart.yaml")).unwrap();
    assert!(cart.contains("\"/ok\"") && !cart.contains("/a{b}"), "{cart}");
}
