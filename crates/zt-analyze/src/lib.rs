//! The security metrics a zero-trust programme tracks, computed for one mesh
//! from the policies in force, its workloads and the traffic its proxies
//! logged (`zt analyze`):
//!
//! - [`workloads`]: the workloads, from a file or from registration entries;
//! - [`reach`]: blast radius — what each workload may call, directly and
//!   through chains of compromised workloads, read from the rules;
//! - [`findings`]: what to fix first, worst first;
//! - [`coverage`]: the share of observed decisions made over mTLS;
//! - [`lifetimes`]: X.509-SVID and JWT-SVID TTLs, CA lifetimes;
//! - [`unused`]: ALLOW rules no request of the window matched;
//! - [`report`]: all of it as text or JSON; [`html`]: as a self-contained page.
//!
//! # JSON (`zt analyze --output json`), `schema_version` 1
//!
//! Fields are only ever added within a version; a removal or a change of
//! meaning raises it. Percentages are floats in 0–100, durations seconds,
//! times Unix seconds (certificates) or milliseconds (decision records).
//!
//! ```text
//! {
//!   "schema_version": 1,
//!   "inputs": {"policies": "DIR" | "zt server version N", "policy_count": n,
//!              "root_namespace": "zt-system", "workloads": "FILE" | "zt server entries",
//!              "workload_count": n, "skipped_ids": ["spiffe://…"],
//!              "decisions": null | {"sources": ["LOG"…], "records": n, "in_window": n,
//!                                   "since_ms": t | null, "until_ms": t | null}},
//!   "findings": [{"severity": "critical"|"high"|"medium"|"low", "kind": "no-allow-policy"|…,
//!                 "subject": "…", "detail": "…"}],
//!   "blast_radius": {
//!     "policies": "…", "workloads": n, "flat_pairs": n*(n-1),
//!     "direct_pairs": n, "transitive_pairs": n,
//!     "direct_reduction_pct": 100*(1-direct_pairs/flat_pairs), "transitive_reduction_pct": …,
//!     "per_workload": [{"workload": "ns/name", "spiffe_id": "…", "open": bool,
//!                       "plaintext_allowed": bool,
//!                       "direct": [{"workload": "ns/name", "routes": ["GET /x", …]}],
//!                       "transitive": ["ns/name", …], "flat": n-1,
//!                       "direct_reduction_pct": …, "transitive_reduction_pct": …}]},
//!   "against": null | {"blast_radius": {…as above…},
//!                      "difference": {"direct_pairs": ±n, "transitive_pairs": ±n,
//!                                     "direct_reduction_pct": ±points, "transitive_reduction_pct": ±points,
//!                                     "per_workload": [{"workload": "…", "gained": […], "lost": […]}]}},
//!   "mtls": null | {"total": {"mtls": n, "plaintext": n, "plaintext_served": n, "mtls_pct": p | null},
//!                   "per_workload": [{"workload": "…", "known": bool, "mtls": n, "plaintext": n,
//!                                     "plaintext_served": n, "mtls_pct": p | null,
//!                                     "plaintext_callers": ["10.0.0.9"]}]},
//!   "credentials": null | {"entries": n,
//!                          "x509": null | {"entries": n, "longest_secs": s, "longest": "spiffe://…",
//!                                          "median_secs": s, "limit_secs": 3600,
//!                                          "over_limit": [["spiffe://…", s]]},
//!                          "jwt": null | {… "limit_secs": 900 …},
//!                          "ca": [{"subject": "…", "not_before": t, "not_after": t, "lifetime_secs": s}]},
//!   "unused_rules": null | {"allow_rules": n, "undecidable_flows": n,
//!                           "unused": [{"policy": "ns/name", "rule": i, "file": "…", "line": n,
//!                                       "dry_run": bool}]}
//! }
//! ```

#![forbid(unsafe_code)]

pub mod coverage;
pub mod findings;
pub mod html;
pub mod lifetimes;
pub mod reach;
pub mod report;
pub mod unused;
pub mod workloads;

use zt_observe::{Flow, Seen, Traffic};
use zt_policy::PolicySet;

pub use report::{Report, SCHEMA_VERSION};
pub use workloads::Workload;

/// One set of policies and where it came from.
pub struct Policies<'a> {
    /// The set.
    pub set: &'a PolicySet,
    /// A directory, or zt server's version: how reports name it.
    pub from: String,
}

/// What `zt analyze` is given.
pub struct Input<'a> {
    /// The policies analysed.
    pub policies: Policies<'a>,
    /// The namespace whose policies apply to every workload.
    pub root_namespace: &'a str,
    /// The workloads.
    pub workloads: &'a [Workload],
    /// Where they came from.
    pub workloads_from: String,
    /// Registration entries' IDs that are no workload.
    pub skipped_ids: Vec<String>,
    /// Observed traffic, and where it was read from.
    pub traffic: Option<(&'a Traffic, Vec<String>)>,
    /// The registration entries' TTLs (or the workloads file's).
    pub credentials: Vec<lifetimes::Credential>,
    /// The trust bundle's CA certificates.
    pub ca: Vec<lifetimes::CaLifetime>,
    /// Other policies to compare with.
    pub against: Option<Policies<'a>>,
}

/// Computes every figure.
pub fn analyze(input: Input<'_>) -> Report {
    let reach = reach::analyze(
        input.policies.set.policies(),
        input.root_namespace,
        input.workloads,
    );
    let blast_radius = report::BlastRadius::new(&reach, input.workloads, &input.policies.from);
    let against = input.against.as_ref().map(|other| {
        let other_reach = reach::analyze(other.set.policies(), input.root_namespace, input.workloads);
        report::Comparison::new(
            &blast_radius,
            report::BlastRadius::new(&other_reach, input.workloads, &other.from),
        )
    });
    let by_destination = workloads::ByDestination::new(input.workloads);
    let owned = input.traffic.as_ref().map(|(traffic, _)| traffic.flows());
    let flows: Option<Vec<(&Flow, &Seen)>> = owned
        .as_ref()
        .map(|flows| flows.iter().map(|(flow, seen)| (flow, seen)).collect());
    let mtls = flows
        .as_deref()
        .map(|flows| coverage::compute(flows, input.workloads, &by_destination));
    let unused_rules = flows
        .as_deref()
        .map(|flows| unused::compute(input.policies.set, flows, input.workloads, &by_destination));
    let credentials = (!input.credentials.is_empty() || !input.ca.is_empty())
        .then(|| lifetimes::compute(&input.credentials, input.ca.clone()));
    let findings = findings::find(&findings::Evidence {
        policies: input.policies.set.policies(),
        root_namespace: input.root_namespace,
        workloads: input.workloads,
        reach: &reach,
        coverage: mtls.as_ref(),
        lifetimes: credentials.as_ref(),
        unused: unused_rules.as_ref(),
    });
    let decisions = input
        .traffic
        .as_ref()
        .map(|(traffic, sources)| report::Decisions {
            sources: sources.clone(),
            records: traffic.records,
            in_window: traffic.in_window,
            since_ms: traffic.window().since_ms,
            until_ms: traffic.window().until_ms,
        });
    Report {
        schema_version: SCHEMA_VERSION,
        inputs: report::Inputs {
            policies: input.policies.from.clone(),
            policy_count: input.policies.set.policies().len(),
            root_namespace: input.root_namespace.to_owned(),
            workloads: input.workloads_from.clone(),
            workload_count: input.workloads.len(),
            skipped_ids: input.skipped_ids.clone(),
            decisions,
        },
        findings,
        blast_radius,
        against,
        mtls,
        credentials,
        unused_rules,
    }
}
