//! Istio's AuthorizationPolicy semantics, rule by rule, and the bypasses request
//! normalization closes: each case a policy set, a request and the decision.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use serde_json::json;
use zt_policy::load::{Source, parse};
use zt_policy::{PolicySet, Request, Verdict};

/// The policies of `yaml` (one file), or the problems.
fn policies(yaml: &str) -> PolicySet {
    let sources = [Source {
        name: "test.yaml".into(),
        text: yaml.to_owned(),
    }];
    PolicySet::new(parse(&sources).unwrap_or_else(|e| panic!("{e}")), "zt-system")
}

fn problems(yaml: &str) -> String {
    let sources = [Source {
        name: "bad.yaml".into(),
        text: yaml.to_owned(),
    }];
    match parse(&sources) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e.to_string(),
    }
}

/// A request to the billing workload from `principal` (None: plaintext).
fn http(principal: Option<&str>, method: &str, path: &str) -> Request {
    let mut value = json!({
        "source": {"ip": "10.0.0.7"},
        "destination": {"namespace": "production", "labels": {"app": "billing-service"}, "port": 8080},
        "request": {"method": method, "path": path, "host": "billing.production.svc"},
        "protocol": "http"
    });
    if let Some(p) = principal {
        value["source"]["principal"] = json!(p);
    }
    serde_json::from_value(value).unwrap()
}

fn tcp(principal: Option<&str>, port: u16) -> Request {
    let mut request = http(principal, "GET", "/");
    request.request = None;
    request.protocol = zt_policy::request::Protocol::Tcp;
    request.destination.port = Some(port);
    request
}

const PAYMENT: &str = "spiffe://cluster.local/ns/production/sa/payment-service";
const ORDERS: &str = "spiffe://cluster.local/ns/production/sa/orders";
const INTRUDER: &str = "spiffe://cluster.local/ns/sandbox/sa/intruder";

fn verdict(set: &PolicySet, request: &Request) -> Verdict {
    set.evaluate(request).decision
}

fn assert_decides(set: &PolicySet, cases: &[(&str, Request, Verdict)]) {
    for (name, request, want) in cases {
        let got = set.evaluate(request);
        assert_eq!(got.decision, *want, "{name}: {}", got.reason);
    }
}

#[test]
fn the_seed_policy_lets_payment_service_charge_and_refund_only() {
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/policies/billing-service.yaml"
    ))
    .unwrap();
    let set = policies(&seed);
    let allowed = set.evaluate(&http(Some(PAYMENT), "POST", "/api/v1/charges"));
    assert_eq!(allowed.decision, Verdict::Allow);
    assert_eq!(
        allowed.policy.as_deref(),
        Some("production/billing-service-policy")
    );
    use Verdict::{Allow, Deny};
    assert_decides(
        &set,
        &[
            ("refunds", http(Some(PAYMENT), "POST", "/api/v1/refunds"), Allow),
            (
                "query string",
                http(Some(PAYMENT), "POST", "/api/v1/charges?id=7"),
                Allow,
            ),
            ("GET", http(Some(PAYMENT), "GET", "/api/v1/charges"), Deny),
            ("DELETE", http(Some(PAYMENT), "DELETE", "/api/v1/charges"), Deny),
            ("other path", http(Some(PAYMENT), "POST", "/api/v1/admin"), Deny),
            ("sub-path", http(Some(PAYMENT), "POST", "/api/v1/charges/7"), Deny),
            (
                "other caller",
                http(Some(ORDERS), "POST", "/api/v1/charges"),
                Deny,
            ),
            ("plaintext", http(None, "POST", "/api/v1/charges"), Deny),
        ],
    );
    let denied = set.evaluate(&http(Some(ORDERS), "POST", "/api/v1/charges"));
    assert_eq!(denied.policy, None);
    assert_eq!(denied.reason, "no ALLOW policy matched");
    // Another workload in the namespace has no ALLOW policy: allowed.
    let mut other = http(Some(ORDERS), "GET", "/");
    other.destination.labels = [("app".to_owned(), "orders".to_owned())].into();
    assert_eq!(verdict(&set, &other), Allow);
    assert_eq!(
        set.evaluate(&other).reason,
        "no ALLOW policy applies to the workload"
    );
}

const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

/// A policy document in `namespace` with `spec` (indented YAML under `spec:`).
fn doc(name: &str, namespace: &str, spec: &str) -> String {
    format!("{HEAD}metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}\n---\n")
}

#[test]
fn deny_first_then_allow_then_default_deny() {
    let set = policies(&format!(
        "{}{}",
        doc(
            "allow-payment",
            "production",
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/production/*\"]"
        ),
        doc(
            "deny-admin",
            "production",
            "  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin*\"]"
        ),
    ));
    let admin = set.evaluate(&http(Some(PAYMENT), "GET", "/admin/users"));
    assert_eq!(admin.decision, Verdict::Deny);
    assert_eq!(admin.policy.as_deref(), Some("production/deny-admin"));
    assert_eq!(
        verdict(&set, &http(Some(PAYMENT), "GET", "/data")),
        Verdict::Allow
    );
    assert_eq!(
        verdict(&set, &http(Some(INTRUDER), "GET", "/data")),
        Verdict::Deny
    );
}

#[test]
fn empty_specs_and_empty_rules_as_istio() {
    let allow_nothing = policies(&doc("allow-nothing", "production", "  {}"));
    assert_eq!(
        verdict(&allow_nothing, &http(Some(PAYMENT), "GET", "/")),
        Verdict::Deny
    );
    let allow_all = policies(&doc("allow-all", "production", "  rules:\n  - {}"));
    assert_eq!(verdict(&allow_all, &http(None, "GET", "/")), Verdict::Allow);
    let deny_without_rules = policies(&doc("deny", "production", "  action: DENY"));
    assert_eq!(
        verdict(&deny_without_rules, &http(None, "GET", "/")),
        Verdict::Allow
    );
    let deny_all = policies(&doc("deny-all", "production", "  action: DENY\n  rules:\n  - {}"));
    assert_eq!(
        verdict(&deny_all, &http(Some(PAYMENT), "GET", "/")),
        Verdict::Deny
    );
    // A document without spec is `spec: {}`.
    let no_spec = policies(&format!(
        "{HEAD}metadata:\n  name: bare\n  namespace: production\n"
    ));
    assert_eq!(verdict(&no_spec, &http(Some(PAYMENT), "GET", "/")), Verdict::Deny);
}

#[test]
fn audit_policies_mark_and_decide_nothing() {
    let set = policies(&doc(
        "audit-writes",
        "production",
        "  action: AUDIT\n  rules:\n  - to:\n    - operation:\n        methods: [\"POST\"]",
    ));
    let post = set.evaluate(&http(Some(PAYMENT), "POST", "/x"));
    assert_eq!(post.decision, Verdict::Allow);
    assert_eq!(post.audit.as_deref(), Some("production/audit-writes"));
    assert_eq!(set.evaluate(&http(Some(PAYMENT), "GET", "/x")).audit, None);
}

#[test]
fn scope_is_namespace_selector_and_root_namespace() {
    let set = policies(&format!(
        "{}{}{}",
        doc("elsewhere", "sandbox", "  {}"),
        doc(
            "other-app",
            "production",
            "  selector:\n    matchLabels:\n      app: orders\n  action: DENY\n  rules:\n  - {}"
        ),
        doc(
            "mesh-wide",
            "zt-system",
            "  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"sandbox\"]"
        ),
    ));
    // sandbox's deny-all and orders' deny do not reach billing-service...
    assert_eq!(verdict(&set, &http(Some(PAYMENT), "GET", "/")), Verdict::Allow);
    // ...the root namespace's policy does.
    let from_sandbox = set.evaluate(&http(Some(INTRUDER), "GET", "/"));
    assert_eq!(from_sandbox.decision, Verdict::Deny);
    assert_eq!(from_sandbox.policy.as_deref(), Some("zt-system/mesh-wide"));
    let mut orders = http(Some(PAYMENT), "GET", "/");
    orders.destination.labels = [
        ("app".to_owned(), "orders".to_owned()),
        ("v".to_owned(), "2".to_owned()),
    ]
    .into();
    assert_eq!(verdict(&set, &orders), Verdict::Deny);
}

/// An ALLOW policy whose one rule is `rule` (YAML under `- `, indented 4).
fn allow_rule(rule: &str) -> PolicySet {
    policies(&doc("p", "production", &format!("  rules:\n  - {rule}")))
}

#[test]
fn source_fields_and_their_negations() {
    use Verdict::{Allow, Deny};
    let principals = allow_rule("from:\n    - source:\n        principals: [\"*/sa/payment-service\"]");
    assert_decides(
        &principals,
        &[
            ("suffix", http(Some(PAYMENT), "GET", "/"), Allow),
            ("other", http(Some(ORDERS), "GET", "/"), Deny),
        ],
    );
    let present = allow_rule("from:\n    - source:\n        principals: [\"*\"]");
    assert_decides(
        &present,
        &[
            ("any mTLS peer", http(Some(INTRUDER), "GET", "/"), Allow),
            ("plaintext has no principal", http(None, "GET", "/"), Deny),
        ],
    );
    let not_principals = allow_rule("from:\n    - source:\n        notPrincipals: [\"*\"]");
    assert_decides(
        &not_principals,
        &[
            ("plaintext", http(None, "GET", "/"), Allow),
            ("mTLS", http(Some(PAYMENT), "GET", "/"), Deny),
        ],
    );
    let namespaces = allow_rule(
        "from:\n    - source:\n        namespaces: [\"production\"]\n        notPrincipals: [\"cluster.local/ns/production/sa/orders\"]",
    );
    assert_decides(
        &namespaces,
        &[
            (
                "namespace from the SPIFFE ID",
                http(Some(PAYMENT), "GET", "/"),
                Allow,
            ),
            ("excluded principal", http(Some(ORDERS), "GET", "/"), Deny),
            ("other namespace", http(Some(INTRUDER), "GET", "/"), Deny),
        ],
    );
    let not_namespaces = allow_rule("from:\n    - source:\n        notNamespaces: [\"sandbox\"]");
    assert_eq!(verdict(&not_namespaces, &http(Some(INTRUDER), "GET", "/")), Deny);
    assert_eq!(verdict(&not_namespaces, &http(Some(PAYMENT), "GET", "/")), Allow);
    let ips = allow_rule(
        "from:\n    - source:\n        ipBlocks: [\"10.0.0.0/24\"]\n        notIpBlocks: [\"10.0.0.9\"]",
    );
    let from = |ip: &str| {
        let mut r = http(Some(PAYMENT), "GET", "/");
        r.source.ip = Some(ip.parse().unwrap());
        r
    };
    assert_decides(
        &ips,
        &[
            ("inside", from("10.0.0.7"), Allow),
            ("excluded", from("10.0.0.9"), Deny),
            ("outside", from("10.0.1.7"), Deny),
        ],
    );
    let remote = allow_rule("from:\n    - source:\n        remoteIpBlocks: [\"10.0.0.0/8\"]");
    assert_eq!(verdict(&remote, &from("10.1.2.3")), Allow);
    assert_eq!(verdict(&remote, &from("192.0.2.1")), Deny);
    let not_remote = allow_rule("from:\n    - source:\n        notRemoteIpBlocks: [\"10.0.0.0/8\"]");
    assert_eq!(verdict(&not_remote, &from("10.1.2.3")), Deny);
    // Sources are ORed, fields within one ANDed.
    let either = allow_rule(
        "from:\n    - source:\n        principals: [\"cluster.local/ns/production/sa/orders\"]\n    - source:\n        ipBlocks: [\"192.0.2.0/24\"]",
    );
    assert_eq!(verdict(&either, &http(Some(ORDERS), "GET", "/")), Allow);
    assert_eq!(verdict(&either, &from("192.0.2.4")), Allow);
    assert_eq!(verdict(&either, &from("10.0.0.1")), Deny);
}

#[test]
fn request_principals_and_claims() {
    let set = allow_rule(
        "from:\n    - source:\n        requestPrincipals: [\"https://issuer.example/*\"]\n    when:\n    - key: request.auth.claims[groups]\n      values: [\"admins\"]\n    - key: request.auth.claims[org][tier]\n      notValues: [\"free\"]",
    );
    let with_auth = |principal: &str, claims: serde_json::Value| {
        let mut r = http(None, "GET", "/");
        r.request.as_mut().unwrap().auth =
            Some(serde_json::from_value(json!({"principal": principal, "claims": claims})).unwrap());
        r
    };
    use Verdict::{Allow, Deny};
    assert_decides(
        &set,
        &[
            (
                "member of a list claim",
                with_auth(
                    "https://issuer.example/alice",
                    json!({"groups": ["dev", "admins"], "org": {"tier": "paid"}}),
                ),
                Allow,
            ),
            (
                "nested claim excluded",
                with_auth(
                    "https://issuer.example/alice",
                    json!({"groups": "admins", "org": {"tier": "free"}}),
                ),
                Deny,
            ),
            (
                "not in the group",
                with_auth("https://issuer.example/bob", json!({"groups": ["dev"]})),
                Deny,
            ),
            (
                "other issuer",
                with_auth("https://evil.example/alice", json!({"groups": ["admins"]})),
                Deny,
            ),
            ("no token", http(Some(PAYMENT), "GET", "/"), Deny),
        ],
    );
}

#[test]
fn operation_fields_and_their_negations() {
    use Verdict::{Allow, Deny};
    let hosts = allow_rule(
        "to:\n    - operation:\n        hosts: [\"Billing.Production.svc\", \"*.example.com\"]\n        notHosts: [\"admin.example.com\"]",
    );
    let host = |h: &str| {
        let mut r = http(Some(PAYMENT), "GET", "/");
        r.request.as_mut().unwrap().host = h.to_owned();
        r
    };
    assert_decides(
        &hosts,
        &[
            ("case-insensitive", host("BILLING.production.SVC"), Allow),
            ("suffix", host("api.EXAMPLE.com"), Allow),
            ("excluded", host("ADMIN.example.com"), Deny),
            ("other", host("billing.staging.svc"), Deny),
        ],
    );
    let ports =
        allow_rule("to:\n    - operation:\n        ports: [\"8080\", 9090]\n        notPorts: [\"9091\"]");
    let port = |p: u16| {
        let mut r = http(Some(PAYMENT), "GET", "/");
        r.destination.port = Some(p);
        r
    };
    assert_decides(
        &ports,
        &[
            ("8080", port(8080), Allow),
            ("9090", port(9090), Allow),
            ("8443", port(8443), Deny),
        ],
    );
    let methods = allow_rule("to:\n    - operation:\n        notMethods: [\"DELETE\", \"PUT\"]");
    assert_decides(
        &methods,
        &[
            ("GET", http(Some(PAYMENT), "GET", "/"), Allow),
            ("DELETE", http(Some(PAYMENT), "DELETE", "/"), Deny),
        ],
    );
    let paths = allow_rule(
        "to:\n    - operation:\n        paths: [\"/public/*\", \"*.css\", \"/users/{*}/orders\", \"/files/{**}\", \"/exact\"]\n        notPaths: [\"/public/secret\"]",
    );
    let get = |p: &str| http(Some(PAYMENT), "GET", p);
    assert_decides(
        &paths,
        &[
            ("prefix", get("/public/a/b"), Allow),
            ("suffix", get("/theme/site.css"), Allow),
            ("template one segment", get("/users/42/orders"), Allow),
            ("template two segments", get("/users/4/2/orders"), Deny),
            ("template many", get("/files/a/b/c.txt"), Allow),
            ("exact", get("/exact"), Allow),
            ("exact is exact", get("/exact/more"), Deny),
            ("excluded", get("/public/secret"), Deny),
            ("elsewhere", get("/private"), Deny),
        ],
    );
}

#[test]
fn when_conditions() {
    use Verdict::{Allow, Deny};
    let set = allow_rule(
        "when:\n    - key: request.headers[X-Env]\n      values: [\"prod*\"]\n    - key: source.ip\n      values: [\"10.0.0.0/16\"]\n    - key: source.namespace\n      notValues: [\"sandbox\"]\n    - key: source.principal\n      values: [\"cluster.local/ns/production/*\"]\n    - key: destination.port\n      values: [\"8080\"]",
    );
    let with_env = |env: Option<&str>| {
        let mut r = http(Some(PAYMENT), "GET", "/");
        if let Some(env) = env {
            r.request
                .as_mut()
                .unwrap()
                .headers
                .insert("x-env".into(), env.into());
        }
        r
    };
    assert_decides(
        &set,
        &[
            ("all hold", with_env(Some("production")), Allow),
            ("header value", with_env(Some("staging")), Deny),
            ("header absent", with_env(None), Deny),
        ],
    );
    let mut other_port = with_env(Some("prod"));
    other_port.destination.port = Some(9090);
    assert_eq!(verdict(&set, &other_port), Deny);
    let sni = allow_rule("when:\n    - key: connection.sni\n      values: [\"billing.example.org\"]");
    let mut with_sni = http(Some(PAYMENT), "GET", "/");
    with_sni.connection = Some(serde_json::from_value(json!({"sni": "billing.example.org"})).unwrap());
    assert_eq!(verdict(&sni, &with_sni), Allow);
    assert_eq!(verdict(&sni, &http(Some(PAYMENT), "GET", "/")), Deny);
}

#[test]
fn http_only_fields_on_tcp_narrow_allow_and_widen_deny() {
    use Verdict::{Allow, Deny};
    // ALLOW: the rule with an HTTP-only field never matches TCP.
    let allow = policies(&doc(
        "allow",
        "production",
        "  rules:\n  - from:\n    - source:\n        principals: [\"*\"]\n    to:\n    - operation:\n        methods: [\"GET\"]\n  - to:\n    - operation:\n        ports: [\"5432\"]",
    ));
    assert_decides(
        &allow,
        &[
            ("HTTP GET", http(Some(PAYMENT), "GET", "/"), Allow),
            ("TCP: the methods rule is skipped", tcp(Some(PAYMENT), 8080), Deny),
            ("TCP: the ports rule applies", tcp(Some(PAYMENT), 5432), Allow),
        ],
    );
    // DENY: the HTTP-only fields are ignored, so the rule matches more.
    let deny = policies(&doc(
        "deny",
        "production",
        "  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"sandbox\"]\n    to:\n    - operation:\n        methods: [\"DELETE\"]\n    when:\n    - key: request.headers[x-debug]\n      values: [\"1\"]",
    ));
    assert_decides(
        &deny,
        &[
            ("HTTP GET from sandbox", http(Some(INTRUDER), "GET", "/"), Allow),
            ("TCP from sandbox", tcp(Some(INTRUDER), 8080), Deny),
            ("TCP from production", tcp(Some(PAYMENT), 8080), Allow),
        ],
    );
}

#[test]
fn dry_run_policies_are_evaluated_not_enforced() {
    let set = policies(&format!(
        "{HEAD}metadata:\n  name: would-deny\n  namespace: production\n  annotations:\n    istio.io/dry-run: \"true\"\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [\"DELETE\"]\n"
    ));
    let decision = set.evaluate(&http(Some(PAYMENT), "DELETE", "/x"));
    assert_eq!(decision.decision, Verdict::Allow);
    let shadow = decision.dry_run.expect("a dry-run decision");
    assert_eq!(shadow.decision, Verdict::Deny);
    assert_eq!(shadow.policy.as_deref(), Some("production/would-deny"));
}

#[test]
fn normalization_closes_the_known_bypasses() {
    use Verdict::{Allow, Deny};
    let deny_admin = policies(&format!(
        "{}{}",
        doc(
            "deny-admin",
            "production",
            "  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin\", \"/admin/*\"]\n  - to:\n    - operation:\n        hosts: [\"internal.example.com\"]\n  - to:\n    - operation:\n        methods: [\"DELETE\"]"
        ),
        doc("allow-rest", "production", "  rules:\n  - {}"),
    ));
    let get = |p: &str| http(Some(PAYMENT), "GET", p);
    assert_decides(
        &deny_admin,
        &[
            ("plain", get("/admin"), Deny),
            ("CVE-2019-9901 dot segments", get("/public/../admin"), Deny),
            ("encoded dots", get("/public/%2e%2e/admin"), Deny),
            ("single dot", get("/./admin/users"), Deny),
            ("merged slashes", get("//admin//users"), Deny),
            ("CVE-2021-31920 %2F", get("/admin%2Fusers"), Deny),
            ("CVE-2021-31920 %2f lower", get("/admin%2fusers"), Deny),
            ("CVE-2021-31920 %5C", get("/admin%5Cusers"), Deny),
            ("backslash", get("/admin\\users"), Deny),
            ("unreserved escape", get("/%61dmin"), Deny),
            ("CVE-2021-39156 fragment", get("/admin#/public"), Deny),
            ("query is not path", get("/admin?x=/public"), Deny),
            ("%00", get("/public%00/../admin"), Deny),
            ("malformed escape", get("/public/%zz"), Deny),
            (
                "lower-case method",
                http(Some(PAYMENT), "delete", "/public"),
                Deny,
            ),
            (
                "mixed-case method",
                http(Some(PAYMENT), "Delete", "/public"),
                Deny,
            ),
            ("public", get("/public/admin-guide"), Allow),
        ],
    );
    let mut host = get("/public");
    host.request.as_mut().unwrap().host = "INTERNAL.Example.COM".into();
    let decision = deny_admin.evaluate(&host);
    assert_eq!(
        decision.decision, Deny,
        "CVE-2021-39155 host case: {}",
        decision.reason
    );
    let malformed = deny_admin.evaluate(&get("/a%00b"));
    assert!(
        malformed.reason.starts_with("malformed request"),
        "{}",
        malformed.reason
    );

    // An allow-list is not escaped by traversal either.
    let allow_public = allow_rule("to:\n    - operation:\n        paths: [\"/public/*\"]");
    assert_eq!(verdict(&allow_public, &get("/public/..%2Fadmin")), Deny);
    assert_eq!(verdict(&allow_public, &get("/public/../admin")), Deny);
    assert_eq!(verdict(&allow_public, &get("/public/x")), Allow);
}

#[test]
fn bad_policies_are_refused_with_file_line_and_field() {
    let head = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: production\nspec:\n";
    let cases: &[(&str, &[&str])] = &[
        ("  rulez: []\n", &["bad.yaml:7", "unknown field `rulez`"]),
        (
            "  rules:\n  - to:\n    - operation:\n        method: [GET]\n",
            &["bad.yaml:10", "unknown field `method`"],
        ),
        ("  rules: {}\n", &["bad.yaml:7", "rules"]),
        ("  action: MAYBE\n", &["bad.yaml:7", "MAYBE"]),
        (
            "  rules:\n  - from:\n    - source:\n        principals: [\"spiffe://cluster.local/ns/a/sa/b\"]\n",
            &["bad.yaml:", "principals", "without spiffe://"],
        ),
        (
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/*/sa/b\"]\n",
            &["bad.yaml:", "principals", "'*' may only be"],
        ),
        (
            "  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.300/8\"]\n",
            &["bad.yaml:", "ipBlocks", "10.0.0.300/8"],
        ),
        (
            "  rules:\n  - when:\n    - key: request.header[x]\n      values: [a]\n",
            &["bad.yaml:", "unknown when key \"request.header[x]\""],
        ),
        (
            "  rules:\n  - when:\n    - key: source.ip\n      values: [\"not-an-ip\"]\n",
            &["bad.yaml:9", "spec.rules[0].when", "values[0]", "not-an-ip"],
        ),
        (
            "  rules:\n  - when:\n    - key: source.ip\n",
            &["bad.yaml:9", "needs values or notValues"],
        ),
        (
            "  rules:\n  - to:\n    - operation:\n        methods: [\"get\"]\n",
            &["bad.yaml:", "methods", "upper case"],
        ),
        (
            "  rules:\n  - to:\n    - operation:\n        ports: [\"http\"]\n",
            &["bad.yaml:", "ports", "not a port"],
        ),
        (
            "  rules:\n  - to:\n    - operation:\n        paths: [\"/a/{**}/b\"]\n",
            &["bad.yaml:", "paths", "{**} must be the last"],
        ),
        (
            "  action: CUSTOM\n",
            &["bad.yaml:1", "spec.provider.name", "CUSTOM"],
        ),
        (
            "  targetRef:\n    kind: Gateway\n    name: gw\n",
            &["bad.yaml:1", "targetRef"],
        ),
    ];
    for (spec, wants) in cases {
        let got = problems(&format!("{head}{spec}"));
        for want in *wants {
            assert!(got.contains(want), "{spec:?}: {want:?} not in {got:?}");
        }
    }
    // Metadata: a missing namespace, a bad name, a wrong apiVersion or kind.
    let got = problems("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n");
    assert!(got.contains("bad.yaml:4") && got.contains("namespace"), "{got}");
    let got = problems(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: Bad_Name\n  namespace: x\n",
    );
    assert!(got.contains("Bad_Name"), "{got}");
    let got = problems(
        "apiVersion: networking.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: x}\n",
    );
    assert!(
        got.contains("bad.yaml:1") && got.contains("networking.istio.io/v1"),
        "{got}"
    );
    // Another kind zt does not read is named with the ones it does.
    let got =
        problems("apiVersion: security.istio.io/v1\nkind: Sidecar\nmetadata: {name: p, namespace: x}\n");
    assert!(
        got.contains("bad.yaml:2") && got.contains("Sidecar") && got.contains("RequestAuthentication"),
        "{got}"
    );
    // A RequestAuthentication loads (its own tests are in request_authentication.rs).
    let ra = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: p, namespace: x}\nspec:\n  jwtRules:\n  - issuer: https://idp.example\n    jwksUri: https://idp.example/jwks\n";
    let loaded = zt_policy::load::parse_all(&[Source {
        name: "ok.yaml".into(),
        text: ra.into(),
    }])
    .unwrap();
    assert_eq!(loaded.request_authentications.len(), 1);
    // Every problem of every document is reported, each with its own line; and
    // a duplicate name points at the first definition.
    let ok =
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: x}\n";
    let got = problems(&format!("{ok}---\n{ok}---\n{ok}spec:\n  bogus: 1\n"));
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    assert!(
        lines[0].starts_with("bad.yaml:5:") && lines[0].contains("already defined at bad.yaml:1"),
        "{got}"
    );
    assert!(
        lines[1].starts_with("bad.yaml:13:") && lines[1].contains("bogus"),
        "{got}"
    );
}

#[test]
fn the_principal_index_keeps_policy_order_and_decisions() {
    // Policies keyed by an exact principal and by a prefix mixed: the decision
    // names the first matching policy in file order, as a scan would.
    let set = policies(&format!(
        "{}{}{}{}",
        doc(
            "a-exact",
            "production",
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/production/sa/orders\"]\n    to:\n    - operation:\n        paths: [\"/a\"]"
        ),
        doc(
            "b-pattern",
            "production",
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/production/*\"]"
        ),
        doc(
            "c-exact",
            "production",
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/production/sa/orders\", \"cluster.local/ns/sandbox/sa/intruder\"]"
        ),
        doc(
            "d-deny-exact",
            "production",
            "  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/sandbox/sa/intruder\"]\n    to:\n    - operation:\n        paths: [\"/secret\"]"
        ),
    ));
    let by = |principal: &str, path: &str| {
        let d = set.evaluate(&http(Some(principal), "GET", path));
        (d.decision, d.policy)
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(by(ORDERS, "/a"), (Verdict::Allow, some("production/a-exact")));
    assert_eq!(by(ORDERS, "/b"), (Verdict::Allow, some("production/b-pattern")));
    assert_eq!(by(PAYMENT, "/a"), (Verdict::Allow, some("production/b-pattern")));
    assert_eq!(by(INTRUDER, "/x"), (Verdict::Allow, some("production/c-exact")));
    assert_eq!(
        by(INTRUDER, "/secret"),
        (Verdict::Deny, some("production/d-deny-exact"))
    );
    assert_eq!(
        by(ORDERS, "/secret"),
        (Verdict::Allow, some("production/b-pattern"))
    );
    let plaintext = set.evaluate(&http(None, "GET", "/a"));
    assert_eq!((plaintext.decision, plaintext.policy), (Verdict::Deny, None));
}

#[test]
fn yaml_alias_bombs_are_not_expanded() {
    // Eleven levels of ten aliases each: 10^11 strings if expanded.
    let mut anchors = vec!["  a0: &a0 [x, x, x, x, x, x, x, x, x, x]".to_owned()];
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        anchors.push(format!("  a{i}: &a{i} [{refs}]"));
    }
    let head =
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: y}\n";
    // Ignored (status): skipped, not walked.
    let set = policies(&format!("{head}status:\n{}\n", anchors.join("\n")));
    assert_eq!(set.policies().len(), 1);
    // In a typed field: refused at the first value of the wrong type.
    let got = problems(&format!(
        "{head}status:\n{}\nspec:\n  rules:\n  - from:\n    - source:\n        principals: *a11\n",
        anchors.join("\n")
    ));
    assert!(got.contains("bad.yaml:") && got.contains("principals"), "{got}");
    assert!(!got.contains("anchor"), "{got}");
}

/// An external authorizer that allows what `allows` says, and records calls.
struct Fake {
    allows: fn(&Request) -> Result<bool, String>,
    calls: std::cell::Cell<usize>,
}

impl zt_policy::ExternalAuthorizer for Fake {
    fn check(&self, provider: &str, request: &Request) -> Result<bool, String> {
        assert_eq!(provider, "rego");
        self.calls.set(self.calls.get() + 1);
        (self.allows)(request)
    }
}

#[test]
fn custom_policies_ask_the_provider_first_then_deny_and_allow_apply() {
    let set = policies(&format!(
        "{}{}{}",
        doc(
            "ext",
            "production",
            "  action: CUSTOM\n  provider:\n    name: rego\n  rules:\n  - to:\n    - operation:\n        paths: [\"/api/*\"]"
        ),
        doc(
            "deny-delete",
            "production",
            "  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [\"DELETE\"]"
        ),
        doc("allow-all", "production", "  rules:\n  - {}"),
    ));
    let workload = set.for_workload(
        "production",
        &[("app".to_owned(), "billing-service".to_owned())].into(),
    );
    let only_payment = Fake {
        allows: |r| Ok(r.source.principal.as_deref() == Some(PAYMENT)),
        calls: std::cell::Cell::new(0),
    };
    let decide = |principal: &str, method: &str, path: &str, external: &Fake| {
        let d = workload.evaluate_with(&http(Some(principal), method, path), Some(external));
        (d.decision, d.policy)
    };
    let some = |s: &str| Some(s.to_owned());
    // The provider is asked only where the CUSTOM policy matches.
    assert_eq!(
        decide(ORDERS, "GET", "/health", &only_payment),
        (Verdict::Allow, some("production/allow-all"))
    );
    assert_eq!(only_payment.calls.get(), 0);
    assert_eq!(
        decide(PAYMENT, "GET", "/api/x", &only_payment),
        (Verdict::Allow, some("production/allow-all"))
    );
    assert_eq!(
        decide(ORDERS, "GET", "/api/x", &only_payment),
        (Verdict::Deny, some("production/ext"))
    );
    // Its allowance does not override a DENY policy.
    assert_eq!(
        decide(PAYMENT, "DELETE", "/api/x", &only_payment),
        (Verdict::Deny, some("production/deny-delete"))
    );
    assert_eq!(only_payment.calls.get(), 3);
    // A failing provider, or none at all, denies.
    let failing = Fake {
        allows: |_| Err("timeout".into()),
        calls: std::cell::Cell::new(0),
    };
    let failed = workload.evaluate_with(&http(Some(PAYMENT), "GET", "/api/x"), Some(&failing));
    assert_eq!(failed.decision, Verdict::Deny);
    assert!(failed.reason.contains("failed: timeout"), "{}", failed.reason);
    let none = workload.evaluate(&http(Some(PAYMENT), "GET", "/api/x"));
    assert_eq!(none.decision, Verdict::Deny);
    assert!(none.reason.contains("not available"), "{}", none.reason);
}

/// Policies are looked up through an index of the principal patterns they name
/// (exact, `prefix*`, `*suffix`); whatever the mix, the decision must name the
/// first policy in order that matches, as a scan of every policy would. The
/// oracle here is Istio's pattern rule, written out.
#[test]
fn the_principal_index_finds_the_first_matching_policy_whatever_its_patterns() {
    let patterns: &[&[&str]] = &[
        &["cluster.local/ns/production/sa/orders"],
        &["*/sa/payment-service"],
        &["cluster.local/ns/sandbox/*"],
        &["*"],
        &["cluster.local/ns/production/sa/payment-service", "*/sa/orders"],
        &["other.td/*", "*/ns/production/sa/orders"],
        &["cluster.local/ns/production/sa/payment-service"],
        &["cluster.local/*"],
        &["*/intruder"],
        &[],
    ];
    let fits = |pattern: &str, principal: &str| match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(""), _) => !principal.is_empty(),
        (Some(suffix), _) => principal.ends_with(suffix),
        (None, Some(prefix)) => principal.starts_with(prefix),
        (None, None) => pattern == principal,
    };
    // Policy i allows GET /p{i % 3}; the last one names no principal at all.
    let mut yaml = String::new();
    for (i, names) in patterns.iter().enumerate() {
        let to = format!("to:\n    - operation:\n        paths: [\"/p{}\"]", i % 3);
        let rule = if names.is_empty() {
            format!("  - {to}")
        } else {
            format!("  - from:\n    - source:\n        principals: {names:?}\n    {to}")
        };
        yaml.push_str(&doc(
            &format!("p-{i:02}"),
            "production",
            &format!("  action: ALLOW\n  rules:\n{rule}"),
        ));
    }
    let set = policies(&yaml);
    let principals = [
        PAYMENT,
        ORDERS,
        INTRUDER,
        "spiffe://other.td/ns/x/sa/y",
        "spiffe://cluster.local/ns/production/sa/nobody",
    ];
    for principal in principals {
        let istio = principal.strip_prefix("spiffe://").unwrap();
        for path in ["/p0", "/p1", "/p2"] {
            let expected = patterns.iter().enumerate().find(|(i, names)| {
                format!("/p{}", i % 3) == path
                    && (names.is_empty() || names.iter().any(|pattern| fits(pattern, istio)))
            });
            let decision = set.evaluate(&http(Some(principal), "GET", path));
            let expected_policy = expected.map(|(i, _)| format!("production/p-{i:02}"));
            assert_eq!(
                decision.policy, expected_policy,
                "{principal} GET {path}: {decision:?}"
            );
        }
    }
}

/// Every matching rule is listed, not only the deciding one; TCP skips the
/// ALLOW rules with HTTP-only fields, as evaluation does. The compiled rules
/// read back what the YAML said.
#[test]
fn matching_rules_lists_every_rule_that_matches() {
    let set = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: billing, namespace: production}
spec:
  selector: {matchLabels: {app: billing-service}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/production/sa/payment-service"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/invoices/*"]}}]
  - from: [{source: {principals: ["*/sa/payment-service"], notPrincipals: ["x/ns/a/sa/b"]}}]
  - from: [{source: {namespaces: ["sandbox"]}}]
    when: [{key: "request.headers[x-debug]", values: ["1"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: production}
spec:
  action: AUDIT
  rules: [{}]
"#,
    );
    let workload = set.for_workload("production", &[("app".into(), "billing-service".into())].into());
    let found = |request: &Request| -> Vec<(String, usize)> {
        let mut found: Vec<_> = workload
            .matching_rules(request)
            .unwrap()
            .into_iter()
            .map(|(p, rule)| (p.id(), rule))
            .collect();
        found.sort();
        found
    };
    let billing = "production/billing".to_owned();
    let audit = "production/audit-all".to_owned();
    assert_eq!(
        found(&http(Some(PAYMENT), "GET", "/invoices/7")),
        vec![(audit.clone(), 0), (billing.clone(), 0), (billing.clone(), 1)]
    );
    assert_eq!(
        found(&tcp(Some(PAYMENT), 8080)),
        vec![(audit.clone(), 0), (billing.clone(), 1)]
    );
    assert_eq!(found(&http(Some(INTRUDER), "GET", "/")), vec![(audit, 0)]);
    assert!(workload.matching_rules(&http(Some(PAYMENT), "get", "/")).is_err());

    let policy = set.policies().iter().find(|p| p.name == "billing").unwrap();
    let rules = policy.rules();
    assert_eq!(rules.len(), 3);
    assert!(rules[0].http_only() && !rules[1].http_only() && rules[2].has_conditions());
    let source = &rules[1].from()[0];
    assert_eq!(
        source.principals().any(),
        &[zt_policy::matching::StringMatch::Suffix(
            "/sa/payment-service".into()
        )]
    );
    assert_eq!(source.principals().none().len(), 1);
    assert!(!source.namespaces().is_set() && !source.names_addresses());
    assert_eq!(rules[0].to()[0].methods().any().len(), 1);
    assert!(rules[1].to().is_empty() && !rules[0].to()[0].ports().is_set());
}
