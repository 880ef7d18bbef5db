//! Unused rules: ALLOW rules that no request of the window matched —
//! candidates to tighten or remove. Each observed flow is decided again by the
//! policies analysed (not those in force when it was recorded), and every rule
//! that matches it counts as used, whether or not it decided.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use zt_observe::{Flow, Seen};
use zt_policy::model::Action;
use zt_policy::{PolicySet, WorkloadPolicies};

use crate::workloads::{ByDestination, Workload};

/// One ALLOW rule no request matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnusedRule {
    /// `namespace/name` of its policy.
    pub policy: String,
    /// Its index in `spec.rules`, from 0.
    pub rule: usize,
    /// The file its policy was read from.
    pub file: String,
    /// The line its policy starts on.
    pub line: usize,
    /// Whether the policy is dry-run (not enforced).
    pub dry_run: bool,
}

/// What the traffic said about the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnusedRules {
    /// ALLOW rules looked at.
    pub allow_rules: usize,
    /// Those no request matched.
    pub unused: Vec<UnusedRule>,
    /// Flows that could not be decided again (a malformed request).
    pub undecidable_flows: usize,
}

/// The ALLOW rules of `set` that none of `flows` matches. A flow's destination
/// gets the labels of the workload it names, when known (else `{app: …}`).
pub fn compute(
    set: &PolicySet,
    flows: &[(&Flow, &Seen)],
    workloads: &[Workload],
    by: &ByDestination,
) -> UnusedRules {
    let mut used: HashSet<(String, usize)> = HashSet::new();
    let mut chosen: HashMap<&str, WorkloadPolicies> = HashMap::new();
    let mut undecidable_flows = 0;
    for (flow, _) in flows {
        let mut request = flow.request();
        if let Some(workload) = by.find(&flow.destination).and_then(|i| workloads.get(i)) {
            request.destination.namespace.clone_from(&workload.namespace);
            request.destination.labels.clone_from(&workload.labels);
        }
        let policies = chosen
            .entry(flow.destination.as_str())
            .or_insert_with(|| set.for_workload(&request.destination.namespace, &request.destination.labels));
        match policies.matching_rules(&request) {
            Ok(matches) => used.extend(matches.into_iter().map(|(policy, rule)| (policy.id(), rule))),
            Err(_) => undecidable_flows += 1,
        }
    }
    let mut report = UnusedRules {
        undecidable_flows,
        ..Default::default()
    };
    for policy in set.policies().iter().filter(|p| p.action == Action::Allow) {
        let id = policy.id();
        for rule in 0..policy.rules().len() {
            report.allow_rules += 1;
            if !used.contains(&(id.clone(), rule)) {
                report.unused.push(UnusedRule {
                    policy: id.clone(),
                    rule,
                    file: policy.origin.file.display().to_string(),
                    line: policy.origin.line,
                    dry_run: policy.dry_run,
                });
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::reach::tests::workload;
    use zt_observe::{Caller, Outcome};

    #[test]
    fn rules_no_flow_matches_are_unused() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: [td/ns/shop/sa/web]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {principals: [td/ns/shop/sa/web]}}]
    to: [{operation: {methods: [DELETE]}}]
  - from: [{source: {principals: ["*"]}}]
    to: [{operation: {paths: [/health]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
"#;
        let sources = [zt_policy::load::Source {
            name: "p.yaml".into(),
            text: yaml.into(),
        }];
        let set = PolicySet::new(zt_policy::load::parse(&sources).unwrap(), "zt-system");
        let workloads = vec![workload("shop", "api"), workload("shop", "web")];
        let by = ByDestination::new(&workloads);
        let flow = |method: &str, path: &str| Flow {
            destination: "shop/api".into(),
            port: Some(15006),
            http: true,
            caller: Caller::Principal("spiffe://td/ns/shop/sa/web".into()),
            method: Some(method.into()),
            path: Some(path.into()),
            outcome: Outcome::Allowed,
            shadow: None,
        };
        let seen = Seen {
            count: 1,
            first_ms: 1,
            last_ms: 1,
        };
        // GET /health matches rules 0 and 2: both used, though rule 0 decided.
        let flows = [flow("GET", "/health"), flow("get", "/")];
        let refs: Vec<(&Flow, &Seen)> = flows.iter().map(|f| (f, &seen)).collect();
        let report = compute(&set, &refs, &workloads, &by);
        assert_eq!(report.allow_rules, 3);
        assert_eq!(report.undecidable_flows, 1, "a lower-case method is malformed");
        let unused: Vec<(&str, usize)> = report
            .unused
            .iter()
            .map(|u| (u.policy.as_str(), u.rule))
            .collect();
        assert_eq!(unused, vec![("shop/api", 1)]);
        assert_eq!(
            (report.unused[0].file.as_str(), report.unused[0].line),
            ("p.yaml", 1)
        );
    }
}
