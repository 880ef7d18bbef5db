//! Findings, worst first: what a zero-trust programme would fix before
//! anything else.
//!
//! | severity | kind | what |
//! |---|---|---|
//! | critical | `no-allow-policy` | a workload no enforced ALLOW policy applies to: Istio allows every request, plaintext callers included |
//! | critical | `rule-without-from` | an enforced ALLOW rule without `from`: any caller, plaintext included |
//! | critical | `plaintext-allowed` | a workload with ALLOW policies, one of whose sources requires neither principals nor namespaces: plaintext callers get through |
//! | critical | `plaintext-observed` | a workload that served plaintext requests in the window (decision logs) |
//! | high | `wildcard-principal` | an enforced ALLOW rule with `principals: ["*"]`: any identity the trust bundle verifies |
//! | high | `x509-ttl-over-limit`, `jwt-ttl-over-limit` | a registration entry whose SVIDs live longer than 1 h (X.509) or 15 min (JWT) |
//! | medium | `namespace-without-deny` | a namespace with workloads and ALLOW policies of its own, but no enforced DENY policy in it or in the root namespace: nothing refuses explicitly, so one broad ALLOW added later opens the namespace with no guardrail |
//! | low | `unused-rule` | an ALLOW rule no request of the window matched |

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use zt_policy::Policy;
use zt_policy::matching::StringMatch;
use zt_policy::model::Action;

use crate::coverage::Coverage;
use crate::lifetimes::{Lifetimes, Stats};
use crate::reach::Reach;
use crate::unused::UnusedRules;
use crate::workloads::Workload;

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fix first: the mesh is open somewhere.
    Critical,
    /// Broad trust or long-lived credentials.
    High,
    /// Defence in depth missing.
    Medium,
    /// Hygiene.
    Low,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Critical => "CRITICAL",
            Severity::High => "HIGH",
            Severity::Medium => "MEDIUM",
            Severity::Low => "LOW",
        })
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What kind (see the module's table).
    pub kind: &'static str,
    /// What it is about: a workload `namespace/name`, a policy rule
    /// `namespace/name rule N`, a namespace, a SPIFFE ID.
    pub subject: String,
    /// Why, in words.
    pub detail: String,
}

/// What the findings are drawn from; the observed parts are optional.
pub struct Evidence<'a> {
    /// The policies analysed.
    pub policies: &'a [Arc<Policy>],
    /// The namespace whose policies apply to every workload.
    pub root_namespace: &'a str,
    /// The workloads.
    pub workloads: &'a [Workload],
    /// Their reach.
    pub reach: &'a Reach,
    /// Observed traffic's coverage.
    pub coverage: Option<&'a Coverage>,
    /// Credential lifetimes.
    pub lifetimes: Option<&'a Lifetimes>,
    /// Unused rules.
    pub unused: Option<&'a UnusedRules>,
}

/// Every finding, worst first (then by kind and subject).
pub fn find(evidence: &Evidence<'_>) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut add = |severity, kind, subject: String, detail: String| {
        found.push(Finding {
            severity,
            kind,
            subject,
            detail,
        })
    };
    let reach = evidence.reach;
    for (i, name) in reach.names.iter().enumerate() {
        if reach.open.get(i).copied().unwrap_or_default() {
            add(
                Severity::Critical,
                "no-allow-policy",
                name.clone(),
                "no ALLOW policy applies: every request is allowed (Istio's allow-all), from any caller, plaintext included".into(),
            );
        } else if reach.plaintext.get(i).copied().unwrap_or_default() {
            add(
                Severity::Critical,
                "plaintext-allowed",
                name.clone(),
                "an ALLOW rule requires no principal or namespace: callers without a verified identity get through".into(),
            );
        }
    }
    for policy in evidence
        .policies
        .iter()
        .filter(|p| p.action == Action::Allow && !p.dry_run)
    {
        for (i, rule) in policy.rules().iter().enumerate() {
            let subject = format!("{} rule {i}", policy.id());
            if rule.from().is_empty() {
                add(
                    Severity::Critical,
                    "rule-without-from",
                    subject,
                    format!(
                        "no from: any caller, plaintext included ({}:{})",
                        policy.origin.file.display(),
                        policy.origin.line
                    ),
                );
                continue;
            }
            let wildcard = rule
                .from()
                .iter()
                .any(|s| s.principals().any().contains(&StringMatch::Present));
            if wildcard {
                add(
                    Severity::High,
                    "wildcard-principal",
                    subject,
                    format!(
                        "principals [\"*\"]: any identity the trust bundle verifies ({}:{})",
                        policy.origin.file.display(),
                        policy.origin.line
                    ),
                );
            }
        }
    }
    if let Some(coverage) = evidence.coverage {
        for workload in coverage
            .per_workload
            .iter()
            .filter(|w| w.counts.plaintext_served > 0)
        {
            let callers: Vec<&str> = workload.plaintext_callers.iter().map(String::as_str).collect();
            add(
                Severity::Critical,
                "plaintext-observed",
                workload.workload.clone(),
                format!(
                    "served {} plaintext request(s) in the window, from {}",
                    workload.counts.plaintext_served,
                    callers.join(", ")
                ),
            );
        }
    }
    if let Some(lifetimes) = evidence.lifetimes {
        let mut over = |stats: &Option<Stats>, kind, what| {
            for (id, ttl) in stats.iter().flat_map(|s| &s.over_limit) {
                let limit = stats.as_ref().map(|s| s.limit_secs).unwrap_or_default();
                add(
                    Severity::High,
                    kind,
                    id.clone(),
                    format!("{what} TTL {} is over {}", duration(*ttl), duration(limit)),
                );
            }
        };
        over(&lifetimes.x509, "x509-ttl-over-limit", "X.509-SVID");
        over(&lifetimes.jwt, "jwt-ttl-over-limit", "JWT-SVID");
    }
    for namespace in namespaces_without_deny(evidence) {
        add(
            Severity::Medium,
            "namespace-without-deny",
            namespace,
            format!(
                "workloads and ALLOW policies, but no enforced DENY policy here or in {}: nothing refuses explicitly",
                evidence.root_namespace
            ),
        );
    }
    if let Some(unused) = evidence.unused {
        for rule in &unused.unused {
            add(
                Severity::Low,
                "unused-rule",
                format!("{} rule {}", rule.policy, rule.rule),
                format!(
                    "matched no request in the window: a candidate to tighten or remove ({}:{}{})",
                    rule.file,
                    rule.line,
                    if rule.dry_run { ", dry-run" } else { "" }
                ),
            );
        }
    }
    found.sort_by(|a, b| (a.severity, a.kind, &a.subject).cmp(&(b.severity, b.kind, &b.subject)));
    found
}

/// Namespaces with at least one workload and an enforced ALLOW policy of
/// their own, and no enforced DENY policy in them or in the root namespace.
fn namespaces_without_deny(evidence: &Evidence<'_>) -> BTreeSet<String> {
    let enforced = |action: Action| {
        evidence
            .policies
            .iter()
            .filter(move |p| p.action == action && !p.dry_run)
    };
    let root_denies = enforced(Action::Deny).any(|p| p.namespace == evidence.root_namespace);
    if root_denies {
        return BTreeSet::new();
    }
    let with_deny: BTreeSet<&str> = enforced(Action::Deny).map(|p| p.namespace.as_str()).collect();
    let with_allow: BTreeSet<&str> = enforced(Action::Allow).map(|p| p.namespace.as_str()).collect();
    evidence
        .workloads
        .iter()
        .map(|w| w.namespace.as_str())
        .filter(|ns| with_allow.contains(ns) && !with_deny.contains(ns))
        .map(str::to_owned)
        .collect()
}

/// Seconds as the largest whole unit that divides them (`1h`, `15m`, `90s`),
/// or, past a day, in days and the rest (`1d 10s`).
pub fn duration(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 86_400 => format!("{}d {}", s / 86_400, duration(s % 86_400)),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reach::tests::{policies, workload};

    #[test]
    fn findings_come_worst_first() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: ["*"]}}]
  - to: [{operation: {paths: [/health]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: data}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: guard, namespace: data}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: [data, shop]}}]
"#;
        let policies = policies(yaml);
        let workloads = vec![
            workload("shop", "api"),
            workload("shop", "web"),
            workload("data", "db"),
        ];
        let reach = crate::reach::analyze(&policies, "zt-system", &workloads);
        let found = find(&Evidence {
            policies: &policies,
            root_namespace: "zt-system",
            workloads: &workloads,
            reach: &reach,
            coverage: None,
            lifetimes: None,
            unused: None,
        });
        let kinds: Vec<(Severity, &str, &str)> = found
            .iter()
            .map(|f| (f.severity, f.kind, f.subject.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Severity::Critical, "no-allow-policy", "shop/web"),
                (Severity::Critical, "plaintext-allowed", "shop/api"),
                (Severity::Critical, "rule-without-from", "shop/api rule 1"),
                (Severity::High, "wildcard-principal", "shop/api rule 0"),
                (Severity::Medium, "namespace-without-deny", "shop"),
            ]
        );
        // data/db's ALLOW takes any address, but the DENY of every namespace
        // but two refuses callers without one: plaintext.
        assert!(!reach.plaintext[2]);
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(900), "15m");
        assert_eq!(duration(90), "90s");
        assert_eq!(duration(86_410), "1d 10s");
        assert_eq!(duration(2 * 86_400 + 3600), "2d 1h");
    }
}
