//! `zt analyze` on the fixture mesh of `tests/fixtures/analyze`: blast-radius
//! figures against a hand computation, findings, `--against`, decision logs,
//! and the HTML report rendered by a real browser (headless Chromium).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zt_testkit::describe;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/analyze")
        .join(name)
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn zt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(args)
        .output()
        .unwrap()
}

/// `zt analyze` on the fixture, with `more` arguments, as JSON.
fn analyze(more: &[&str]) -> Value {
    let (policies, workloads) = (fixture("policies"), fixture("workloads.yaml"));
    let mut args = vec![
        "analyze",
        "--policies",
        arg(&policies),
        "--workloads",
        arg(&workloads),
        "--output",
        "json",
    ];
    args.extend_from_slice(more);
    let out = zt(&args);
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

/// The direct calls the fixture's policies allow, worked out by hand from the
/// rules (the comments say which rule):
fn fixture_edges() -> Vec<(&'static str, &'static str)> {
    vec![
        // shop/cart: from web only. data/orders-db: principals cluster.local/ns/shop/*.
        // data/legacy: no ALLOW policy, and data's DENY spares namespaces data and shop.
        ("shop/web", "shop/cart"),
        ("shop/web", "data/orders-db"),
        ("shop/web", "data/legacy"),
        // shop/web: principals ["*"] admits every mesh identity. shop/payments: from cart.
        ("shop/cart", "shop/web"),
        ("shop/cart", "shop/payments"),
        ("shop/cart", "data/orders-db"),
        ("shop/cart", "data/legacy"),
        ("shop/payments", "shop/web"),
        ("shop/payments", "data/orders-db"),
        ("shop/payments", "data/legacy"),
        // orders-db is in data: not a shop principal, but legacy is open to it.
        ("data/orders-db", "shop/web"),
        ("data/orders-db", "data/legacy"),
        ("data/legacy", "shop/web"),
        // shop's "metrics" policy (no selector) admits the monitor on every shop
        // workload; data's DENY refuses namespace ops. Nobody reaches ops/monitor.
        ("ops/monitor", "shop/web"),
        ("ops/monitor", "shop/cart"),
        ("ops/monitor", "shop/payments"),
    ]
}

/// The same edges under `policies-tightened`: web takes /public from the
/// ingress gateway only, legacy gets an ALLOW for orders-db only.
fn tightened_edges() -> Vec<(&'static str, &'static str)> {
    vec![
        ("shop/web", "shop/cart"),
        ("shop/web", "data/orders-db"),
        ("shop/cart", "shop/payments"),
        ("shop/cart", "data/orders-db"),
        ("shop/payments", "data/orders-db"),
        ("data/orders-db", "data/legacy"),
        ("ops/monitor", "shop/web"),
        ("ops/monitor", "shop/cart"),
        ("ops/monitor", "shop/payments"),
    ]
}

const WORKLOADS: [&str; 6] = [
    "shop/web",
    "shop/cart",
    "shop/payments",
    "data/orders-db",
    "data/legacy",
    "ops/monitor",
];

/// Direct and transitive reach sets from edges, the closure by a plain search.
fn by_hand(edges: &[(&str, &str)]) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let mut direct: BTreeMap<String, BTreeSet<String>> = WORKLOADS
        .iter()
        .map(|w| (w.to_string(), BTreeSet::new()))
        .collect();
    for (from, to) in edges {
        direct.get_mut(*from).unwrap().insert(to.to_string());
    }
    let mut out = BTreeMap::new();
    for w in WORKLOADS {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = direct[w].iter().cloned().collect();
        while let Some(next) = stack.pop() {
            if next != w && seen.insert(next.clone()) {
                stack.extend(direct[&next].iter().cloned());
            }
        }
        out.insert(w.to_string(), (direct[w].clone(), seen));
    }
    out
}

/// Checks a `blast_radius` object against reach sets computed by hand.
fn assert_blast_radius(radius: &Value, edges: &[(&str, &str)]) {
    let expected = by_hand(edges);
    let n = WORKLOADS.len();
    let flat = n * (n - 1);
    let close = |got: &Value, want: f64, what: &str| {
        let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
        assert!((got - want).abs() < 1e-9, "{what}: got {got}, want {want}");
    };
    let (mut direct_pairs, mut transitive_pairs) = (0, 0);
    let per_workload = radius["per_workload"].as_array().unwrap();
    assert_eq!(per_workload.len(), n);
    for w in per_workload {
        let name = w["workload"].as_str().unwrap();
        let (direct, transitive) = &expected[name];
        let got_direct: BTreeSet<String> = w["direct"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["workload"].as_str().unwrap().to_owned())
            .collect();
        let got_transitive: BTreeSet<String> = w["transitive"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(&got_direct, direct, "{name}: direct");
        assert_eq!(&got_transitive, transitive, "{name}: transitive");
        close(
            &w["direct_reduction_pct"],
            100.0 * (1.0 - direct.len() as f64 / (n - 1) as f64),
            name,
        );
        close(
            &w["transitive_reduction_pct"],
            100.0 * (1.0 - transitive.len() as f64 / (n - 1) as f64),
            name,
        );
        direct_pairs += direct.len();
        transitive_pairs += transitive.len();
    }
    assert_eq!(radius["flat_pairs"], json!(flat));
    assert_eq!(radius["direct_pairs"], json!(direct_pairs));
    assert_eq!(radius["transitive_pairs"], json!(transitive_pairs));
    close(
        &radius["direct_reduction_pct"],
        100.0 * (1.0 - direct_pairs as f64 / flat as f64),
        "mesh direct",
    );
    close(
        &radius["transitive_reduction_pct"],
        100.0 * (1.0 - transitive_pairs as f64 / flat as f64),
        "mesh transitive",
    );
}

#[test]
fn blast_radius_matches_a_hand_computation_and_the_open_workload_comes_first() {
    let report = analyze(&[]);
    assert_eq!(report["schema_version"], json!(1));
    assert_blast_radius(&report["blast_radius"], &fixture_edges());
    // 16 of 30 pairs directly, 25 transitively (worked out in by_hand).
    assert_eq!(report["blast_radius"]["direct_pairs"], json!(16));
    assert_eq!(report["blast_radius"]["transitive_pairs"], json!(25));

    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings[0]["severity"], "critical");
    assert_eq!(findings[0]["kind"], "no-allow-policy");
    assert_eq!(findings[0]["subject"], "data/legacy");
    let critical: Vec<&Value> = findings.iter().filter(|f| f["severity"] == "critical").collect();
    assert_eq!(critical.len(), 1, "{findings:#?}");
    let kinds: BTreeSet<(&str, &str)> = findings
        .iter()
        .map(|f| (f["kind"].as_str().unwrap(), f["subject"].as_str().unwrap()))
        .collect();
    for want in [
        ("wildcard-principal", "shop/web rule 0"),
        ("x509-ttl-over-limit", "spiffe://cluster.local/ns/shop/sa/cart"),
        ("jwt-ttl-over-limit", "spiffe://cluster.local/ns/shop/sa/cart"),
        ("namespace-without-deny", "shop"),
        ("namespace-without-deny", "ops"),
    ] {
        assert!(kinds.contains(&want), "{want:?} missing from {kinds:?}");
    }
    assert!(
        !kinds.contains(&("namespace-without-deny", "data")),
        "data has a DENY"
    );
    let legacy = &report["blast_radius"]["per_workload"][4];
    assert_eq!(legacy["open"], json!(true));
    assert_eq!(
        legacy["plaintext_allowed"],
        json!(false),
        "data's DENY of other namespaces refuses plaintext"
    );
    let web = &report["blast_radius"]["per_workload"][0];
    assert_eq!(
        web["direct"][0],
        json!({"workload": "shop/cart", "routes": ["GET,POST /cart/*"]})
    );

    let x509 = &report["credentials"]["x509"];
    assert_eq!(
        (x509["longest_secs"].as_u64(), x509["median_secs"].as_u64()),
        (Some(86_400), Some(3600))
    );
    assert_eq!(report["mtls"], Value::Null);
    assert_eq!(report["unused_rules"], Value::Null);
}

#[test]
fn against_reports_both_and_the_reduction_gained() {
    let tightened = fixture("policies-tightened");
    let report = analyze(&["--against", arg(&tightened)]);
    assert_blast_radius(&report["blast_radius"], &fixture_edges());
    let against = &report["against"];
    assert_blast_radius(&against["blast_radius"], &tightened_edges());
    let diff = &against["difference"];
    // 16 → 9 direct pairs, 25 → 15 transitive, of 30.
    assert_eq!(diff["direct_pairs"], json!(-7));
    assert_eq!(diff["transitive_pairs"], json!(-10));
    let points = diff["direct_reduction_pct"].as_f64().unwrap();
    assert!((points - 100.0 * 7.0 / 30.0).abs() < 1e-9, "{points}");
    let cart = diff["per_workload"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["workload"] == "shop/cart")
        .unwrap();
    assert_eq!(cart["lost"], json!(["data/legacy", "shop/web"]));
    assert_eq!(cart["gained"], json!([]));

    let text = zt(&[
        "analyze",
        "--policies",
        arg(&fixture("policies")),
        "--workloads",
        arg(&fixture("workloads.yaml")),
        "--against",
        arg(&tightened),
    ]);
    assert!(text.status.success(), "{}", describe(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    let critical = text.find("CRITICAL no-allow-policy").unwrap();
    assert!(
        critical < text.find("HIGH").unwrap(),
        "critical findings first:\n{text}"
    );
    assert!(
        text.contains("mesh                                    16/30        25/30"),
        "{text}"
    );
    assert!(
        text.contains("direct reduction 46.7% → 70.0% (+23.3 points, -7 pairs)"),
        "{text}"
    );
}

/// A decision record of a proxy, as JSON (the writer fills the chain).
fn record(
    time_ms: u64,
    caller: Option<&str>,
    ip: &str,
    destination: &str,
    method: &str,
    path: &str,
) -> zt_audit::Record {
    serde_json::from_value(json!({
        "seq": 0, "time_ms": time_ms, "id": "", "source_principal": caller, "source_ip": ip,
        "destination": destination, "port": 15006, "protocol": "http", "method": method,
        "host": "svc", "path": path, "decision": "ALLOW", "mode": "permissive", "policy": null,
        "reason": "", "policy_version": "1", "eval_ns": 0, "dry_run": null, "audit": null,
        "prev": "", "hash": ""
    }))
    .unwrap()
}

#[test]
fn decision_logs_give_mtls_coverage_plaintext_served_and_unused_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("web.log"), dir.path().join("legacy.log"));
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let monitor = "spiffe://cluster.local/ns/ops/sa/monitor";
    let mut writer = zt_audit::Writer::open(&first).unwrap();
    writer
        .append([
            record(1_000, Some(web), "10.0.0.1", "shop/cart", "GET", "/cart/items"),
            record(2_000, Some(web), "10.0.0.1", "shop/cart", "GET", "/cart/items"),
            record(3_000, Some(monitor), "10.0.0.5", "shop/web", "GET", "/metrics"),
            // Outside --until: not counted.
            record(90_000, Some(web), "10.0.0.1", "shop/payments", "POST", "/charge"),
        ])
        .unwrap();
    drop(writer);
    let mut writer = zt_audit::Writer::open(&second).unwrap();
    writer
        .append([
            record(4_000, None, "192.0.2.7", "data/legacy", "GET", "/"),
            record(5_000, None, "192.0.2.7", "data/legacy", "GET", "/"),
            record(6_000, Some(web), "10.0.0.1", "data/legacy", "GET", "/"),
        ])
        .unwrap();
    drop(writer);

    let report = analyze(&["--log", arg(&first), "--log", arg(&second), "--until", "60"]);
    assert_eq!(report["inputs"]["decisions"]["records"], json!(7));
    assert_eq!(report["inputs"]["decisions"]["in_window"], json!(6));
    let total = &report["mtls"]["total"];
    assert_eq!(
        (total["mtls"].as_u64(), total["plaintext"].as_u64()),
        (Some(4), Some(2))
    );
    assert!((total["mtls_pct"].as_f64().unwrap() - 100.0 * 4.0 / 6.0).abs() < 1e-9);
    let legacy = report["mtls"]["per_workload"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workload"] == "data/legacy")
        .unwrap()
        .clone();
    assert_eq!(legacy["plaintext_served"], json!(2));
    assert_eq!(legacy["plaintext_callers"], json!(["192.0.2.7"]));

    let findings = report["findings"].as_array().unwrap();
    let observed = findings
        .iter()
        .find(|f| f["kind"] == "plaintext-observed")
        .unwrap();
    assert_eq!(
        (observed["severity"].as_str(), observed["subject"].as_str()),
        (Some("critical"), Some("data/legacy"))
    );

    // Used: shop/cart's rule (web GETs /cart/items) and shop/metrics' (the
    // monitor's GET /metrics); the payments call is outside the window.
    let unused: BTreeSet<&str> = report["unused_rules"]["unused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        unused,
        BTreeSet::from(["shop/payments", "shop/web", "data/orders-db", "ops/monitor"])
    );
    assert_eq!(report["unused_rules"]["allow_rules"], json!(6));
    assert!(
        findings
            .iter()
            .any(|f| f["kind"] == "unused-rule" && f["subject"] == "shop/payments rule 0")
    );

    // A log whose chain is broken is refused, named.
    let text = std::fs::read_to_string(&second)
        .unwrap()
        .replace("192.0.2.7", "192.0.2.8");
    std::fs::write(&second, text).unwrap();
    let out = zt(&[
        "analyze",
        "--policies",
        arg(&fixture("policies")),
        "--workloads",
        arg(&fixture("workloads.yaml")),
        "--log",
        arg(&second),
    ]);
    zt_testkit::assert_cli_failure(&out, 1, &["--log", "legacy.log"]);
}

#[test]
fn without_a_policy_source_or_workloads_it_says_what_is_missing() {
    let out = zt(&["analyze", "--workloads", arg(&fixture("workloads.yaml"))]);
    zt_testkit::assert_cli_failure(&out, 2, &["--policies"]);
    let out = zt(&["analyze", "--policies", arg(&fixture("policies"))]);
    zt_testkit::assert_cli_failure(&out, 1, &["--workloads FILE is needed without --server"]);
}

/// Runs a command, killing it after a minute; its output.
fn run_bounded(command: &mut Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A headless Chromium of its own profile: `chromium --headless ARGS URL`.
fn chromium(program: &Path, profile: &Path, args: &[&str], url: &str) -> Output {
    run_bounded(
        Command::new(program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                &format!("--user-data-dir={}", profile.display()),
            ])
            .args(args)
            .arg(url),
    )
}

/// The width and height in a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn the_html_report_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let tightened = fixture("policies-tightened");
    let out = zt(&[
        "analyze",
        "--policies",
        arg(&fixture("policies")),
        "--workloads",
        arg(&fixture("workloads.yaml")),
        "--against",
        arg(&tightened),
        "--html",
        arg(&page),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(zt_testkit::mode_of(&page) & 0o777, 0o644);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("src="));

    let Some(program) = zt_testkit::chromium("the_html_report_renders_in_headless_chromium") else {
        return;
    };
    let url = format!("file://{}", page.display());
    let profile = dir.path().join("profile");

    // The DOM as the browser built it: the graph's nodes and edges, the numbers.
    let dom = chromium(&program, &profile, &["--dump-dom"], &url);
    assert!(dom.status.success(), "{}", describe(&dom));
    let dom = String::from_utf8_lossy(&dom.stdout);
    let graph = dom.split("id=\"reach-graph\"").nth(1).expect("the reach graph");
    let graph = graph.split("</svg>").next().unwrap();
    assert_eq!(graph.matches(" data-workload=").count(), 6, "{graph}");
    for w in WORKLOADS {
        assert!(
            graph.contains(&format!("data-workload=\"{w}\"")),
            "{w} is not in the graph"
        );
    }
    assert_eq!(graph.matches("<line ").count(), 16, "one arrow per allowed call");
    assert!(dom.contains("<g class=\"node open\" data-workload=\"data/legacy\""));
    assert!(dom.contains("id=\"compromised-graph\""));
    assert_eq!(dom.matches("class=\"compromised-view\"").count(), 6);
    assert!(dom.contains("<div class=\"figure\" id=\"direct-reduction\"><span class=\"value\">46.7%</span>"));
    assert!(
        dom.contains("<div class=\"figure\" id=\"transitive-reduction\"><span class=\"value\">16.7%</span>")
    );
    assert!(dom.contains("<div class=\"figure\" id=\"critical-findings\"><span class=\"value\">1</span>"));
    assert!(dom.contains("<span id=\"against-direct-reduction\">70.0%</span>"));
    assert!(dom.contains("If ops/monitor is compromised"));

    // A screenshot of the expected size that is not blank: far larger than
    // the same browser's screenshot of an empty page.
    let (shot, blank) = (dir.path().join("report.png"), dir.path().join("blank.png"));
    for (file, url) in [(&shot, url.as_str()), (&blank, "about:blank")] {
        let out = chromium(
            &program,
            &profile,
            &[
                &format!("--screenshot={}", file.display()),
                "--window-size=1200,1600",
            ],
            url,
        );
        assert!(out.status.success(), "{}", describe(&out));
    }
    let (shot, blank) = (std::fs::read(&shot).unwrap(), std::fs::read(&blank).unwrap());
    assert_eq!(png_size(&shot), (1200, 1600));
    assert_eq!(png_size(&blank), (1200, 1600));
    assert!(
        shot.len() > 4 * blank.len() && shot.len() > 40_000,
        "the report's screenshot ({} bytes) looks blank (an empty page: {} bytes)",
        shot.len(),
        blank.len()
    );
}

/// With `--server`: the policy version `zt policy apply` stored, the
/// registration entries as workloads (`spiffe://TD/ns/NS/sa/SA` → `NS/SA`,
/// `app: SA`) and their TTLs, the trust bundle's CA, the shipped decisions.
#[test]
fn from_zt_server_policies_entries_bundle_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let server = support::ServerProcess::start(&dir.path().join("data"), None);
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("cart.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: cart, namespace: shop}\nspec:\n  selector: {matchLabels: {app: cart}}\n  rules:\n  - from: [{source: {principals: [example.org/ns/shop/sa/web]}}]\n",
    )
    .unwrap();
    support::ok(&server, &["policy", "apply", arg(&policies)]);
    for (id, ttl) in [
        ("spiffe://example.org/ns/shop/sa/web", "3600"),
        ("spiffe://example.org/ns/shop/sa/cart", "7200"),
        ("spiffe://example.org/ns/shop/sa/payments", "1800"),
        ("spiffe://example.org/batch/reports", "600"),
    ] {
        support::ok(
            &server,
            &[
                "entry",
                "create",
                "--spiffe-id",
                id,
                "--parent-id",
                "spiffe://example.org/node",
                "--selector",
                "unix:uid:1000",
                "--x509-ttl",
                ttl,
            ],
        );
    }
    let out = support::zt(&server, &["analyze", "--server", "--output", "json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["inputs"]["policies"], "zt server's policy version 1");
    assert_eq!(report["inputs"]["workload_count"], json!(3));
    assert_eq!(
        report["inputs"]["skipped_ids"],
        json!(["spiffe://example.org/batch/reports"])
    );
    // cart takes web only; web and payments have no ALLOW policy: 5 of 6 pairs.
    let radius = &report["blast_radius"];
    assert_eq!(
        (radius["direct_pairs"].as_u64(), radius["flat_pairs"].as_u64()),
        (Some(5), Some(6))
    );
    let open: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "no-allow-policy")
        .map(|f| f["subject"].as_str().unwrap())
        .collect();
    assert_eq!(open, vec!["shop/payments", "shop/web"]);
    let credentials = &report["credentials"];
    assert_eq!(
        credentials["entries"],
        json!(4),
        "every entry's TTLs count, workload or not"
    );
    assert_eq!(credentials["x509"]["longest_secs"], json!(7200));
    assert!(
        !credentials["ca"].as_array().unwrap().is_empty(),
        "the server's CA"
    );
    assert_eq!(report["inputs"]["decisions"]["records"], json!(0));
}

/// `--fail-on` gates CI: the report is printed either way, and the exit code
/// says whether a finding is at least that severe.
#[test]
fn fail_on_turns_findings_into_an_exit_code() {
    let (policies, workloads) = (fixture("policies"), fixture("workloads.yaml"));
    let base = [
        "analyze",
        "--policies",
        arg(&policies),
        "--workloads",
        arg(&workloads),
    ];
    let failed = zt(&[&base[..], &["--fail-on", "critical"]].concat());
    assert_eq!(failed.status.code(), Some(1), "{}", describe(&failed));
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert!(
        stdout.contains("CRITICAL"),
        "the report is printed: {}",
        describe(&failed)
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("at CRITICAL or worse (--fail-on)"),
        "{}",
        describe(&failed)
    );
    // The tightened set has no critical finding, but two high ones.
    let tightened = fixture("policies-tightened");
    let gate = |level: &str| {
        zt(&[
            "analyze",
            "--policies",
            arg(&tightened),
            "--workloads",
            arg(&workloads),
            "--fail-on",
            level,
        ])
    };
    let passed = gate("critical");
    assert!(passed.status.success(), "{}", describe(&passed));
    let failed = gate("high");
    assert_eq!(failed.status.code(), Some(1), "{}", describe(&failed));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("2 finding(s) at HIGH or worse"));
    let bad = zt(&[&base[..], &["--fail-on", "severe"]].concat());
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}
