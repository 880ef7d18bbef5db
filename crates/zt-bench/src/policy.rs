//! AuthorizationPolicy evaluation in process, with 1 to 10 000 policies.

use std::hint::black_box;

use crate::{Error, Figure, measure};

/// For sets of 1, 100, 1 000 and 10 000 policies, laid out three ways, times
/// `iterations` decisions of an allowed request and of a denied one; reports a
/// [`Figure::Calls`] named `LAYOUT — allowed|denied` for each.
pub fn run(iterations: usize, mut report: impl FnMut(Figure)) -> Result<(), Error> {
    let n = iterations.max(1);
    for size in [1usize, 100, 1_000, 10_000] {
        // Realistic: ten policies per namespace, each selecting one app.
        let spread = policy_set(size, |i| (format!("ns-{}", i / 10), Some(format!("app-{i}"))))?;
        let workload = spread.for_workload("ns-0", &[("app".to_owned(), "app-0".to_owned())].into());
        bench_requests(
            &format!("{size} (10 per namespace)"),
            &workload,
            0,
            n,
            &mut report,
        )?;
        // Every policy applies to the one workload: found through the index of
        // the principals policies name, exact...
        let all = policy_set(size, |_| ("ns-0".to_owned(), None))?;
        let workload = all.for_workload("ns-0", &Default::default());
        bench_requests(
            &format!("{size} (all on one workload)"),
            &workload,
            size - 1,
            n,
            &mut report,
        )?;
        // ...or patterns (`*/ns/…/sa/…`, indexed by suffix).
        let patterns = policy_set(size, |_| ("ns-0".to_owned(), Some("*".to_owned())))?;
        let workload = patterns.for_workload("ns-0", &Default::default());
        bench_requests(
            &format!("{size} (all on one workload, patterns)"),
            &workload,
            size - 1,
            n,
            &mut report,
        )?;
    }
    Ok(())
}

/// `size` ALLOW policies, the `i`th placed by `place` (namespace, app selector;
/// an app of `*` means no selector and a principal pattern instead of an exact
/// one), each allowing one caller to POST two paths.
fn policy_set(
    size: usize,
    place: impl Fn(usize) -> (String, Option<String>),
) -> Result<zt_policy::PolicySet, Error> {
    let mut yaml = String::new();
    for i in 0..size {
        let (namespace, app) = place(i);
        let pattern = app.as_deref() == Some("*");
        let selector = app
            .filter(|_| !pattern)
            .map(|app| format!("  selector:\n    matchLabels:\n      app: {app}\n"))
            .unwrap_or_default();
        let principal = if pattern {
            format!("*/ns/{namespace}/sa/caller-{i}")
        } else {
            format!("cluster.local/ns/{namespace}/sa/caller-{i}")
        };
        yaml.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p-{i}\n  namespace: {namespace}\nspec:\n{selector}  rules:\n  - from:\n    - source:\n        principals: [\"{principal}\"]\n    to:\n    - operation:\n        methods: [\"POST\"]\n        paths: [\"/api/v1/charges\", \"/api/v1/refunds/*\"]\n---\n"
        ));
    }
    let sources = [zt_policy::load::Source {
        name: "bench.yaml".into(),
        text: yaml,
    }];
    let policies = zt_policy::load::parse(&sources).map_err(Error::Policies)?;
    Ok(zt_policy::PolicySet::new(
        policies,
        zt_policy::DEFAULT_ROOT_NAMESPACE,
    ))
}

/// Times an allowed request (by policy `allowed_by`) and a denied one.
fn bench_requests(
    layout: &str,
    workload: &zt_policy::WorkloadPolicies,
    allowed_by: usize,
    n: usize,
    report: &mut impl FnMut(Figure),
) -> Result<(), Error> {
    let request = |caller: &str| -> zt_policy::Request {
        zt_policy::Request {
            source: zt_policy::request::Source {
                principal: Some(format!("spiffe://cluster.local/ns/ns-0/sa/{caller}")),
                namespace: None,
                ip: Some(std::net::IpAddr::from([10, 0, 0, 7])),
            },
            destination: zt_policy::request::Destination {
                namespace: "ns-0".into(),
                port: Some(8080),
                ..Default::default()
            },
            request: Some(zt_policy::request::Http {
                method: "POST".into(),
                path: "/api/v1/refunds/7?full=1".into(),
                host: "billing.ns-0.svc".into(),
                headers: [("content-type".to_owned(), "application/json".to_owned())].into(),
                auth: None,
            }),
            protocol: zt_policy::request::Protocol::Http,
            connection: None,
        }
    };
    let allowed = request(&format!("caller-{allowed_by}"));
    let denied = request("intruder");
    expect_decision(workload, &allowed, zt_policy::Verdict::Allow)?;
    expect_decision(workload, &denied, zt_policy::Verdict::Deny)?;
    for (what, request) in [("allowed", &allowed), ("denied", &denied)] {
        let samples = measure(n, || {
            black_box(workload.evaluate(black_box(request)));
        });
        report(Figure::Calls {
            name: format!("{layout} — {what}"),
            samples,
        });
    }
    Ok(())
}

/// A benchmark that measures the wrong thing is worse than none.
fn expect_decision(
    workload: &zt_policy::WorkloadPolicies,
    request: &zt_policy::Request,
    want: zt_policy::Verdict,
) -> Result<(), Error> {
    let got = workload.evaluate(request);
    if got.decision != want {
        return Err(Error::Decision {
            want,
            got: got.decision,
            reason: got.reason,
        });
    }
    Ok(())
}
