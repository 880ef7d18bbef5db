//! Switching to enforce as a reviewed change: a dry-run policy is promoted
//! (its `istio.io/dry-run` annotation removed from its file) only when the
//! shadow decisions recorded while it was in force show that it would have
//! denied none of the requests the app was actually given; otherwise the
//! would-be denials are listed, with examples, and the policy stays in shadow.

use std::collections::BTreeMap;

use zt_policy::Policy;
use zt_policy::model::Action;

use crate::traffic::{Caller, Flow, Seen, Traffic};

/// Would-be denials listed per policy at most.
pub const MAX_EXAMPLES: usize = 5;

/// What the shadow decisions say of one dry-run policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// `namespace/name`.
    pub policy: String,
    /// Served requests to the workloads it selects that were evaluated with it
    /// in shadow.
    pub evidence: u64,
    /// Of those, the ones it would have denied.
    pub would_deny: u64,
    /// A few of them: the flow and how often it was seen.
    pub examples: Vec<(Flow, Seen)>,
    /// The verdict.
    pub verdict: Verdict,
}

/// Whether a dry-run policy may be enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No would-be denial in enough evidence: enforce it.
    Promote,
    /// It would have denied served requests.
    WouldDeny,
    /// Too few requests were evaluated with it in shadow to tell.
    TooLittleEvidence,
    /// Only ALLOW and DENY policies are weighed (AUDIT and CUSTOM are not).
    NotWeighed,
}

/// Weighs every dry-run policy of `policies` against the shadow decisions in
/// `traffic`; `min_evidence` served requests must have been evaluated with a
/// policy in shadow before it can be promoted.
pub fn review(
    policies: &[Policy],
    root_namespace: &str,
    traffic: &Traffic,
    min_evidence: u64,
) -> Vec<Review> {
    let flows = traffic.flows();
    let mut reviews = Vec::new();
    for policy in policies.iter().filter(|p| p.dry_run) {
        let id = policy.id();
        let mut review = Review {
            policy: id.clone(),
            evidence: 0,
            would_deny: 0,
            examples: Vec::new(),
            verdict: Verdict::NotWeighed,
        };
        if !matches!(policy.action, Action::Allow | Action::Deny) {
            reviews.push(review);
            continue;
        }
        for (flow, seen) in &flows {
            let Some(shadow) = &flow.shadow else { continue };
            if !flow.outcome.served() || !selects(policy, root_namespace, flow) {
                continue;
            }
            review.evidence += seen.count;
            let denies = !shadow.allow
                && match policy.action {
                    // No ALLOW policy, this one included, matched.
                    Action::Allow => shadow.policy.is_none(),
                    _ => shadow.policy.as_deref() == Some(id.as_str()),
                };
            if denies {
                review.would_deny += seen.count;
                if review.examples.len() < MAX_EXAMPLES {
                    review.examples.push((flow.clone(), *seen));
                }
            }
        }
        review.verdict = if review.would_deny > 0 {
            Verdict::WouldDeny
        } else if review.evidence < min_evidence.max(1) {
            Verdict::TooLittleEvidence
        } else {
            Verdict::Promote
        };
        reviews.push(review);
    }
    reviews
}

/// Whether `policy` applies to the flow's workload (its namespace, or the root
/// namespace, and its selector on the workload's `app` label).
fn selects(policy: &Policy, root_namespace: &str, flow: &Flow) -> bool {
    let (namespace, app) = flow.workload();
    if policy.namespace != namespace && policy.namespace != root_namespace {
        return false;
    }
    let labels: BTreeMap<String, String> = app
        .map(|app| BTreeMap::from([("app".to_owned(), app.to_owned())]))
        .unwrap_or_default();
    policy.selects(&labels)
}

/// A flow as one line: `GET /items/1 from spiffe://… to ns/app`.
pub fn describe(flow: &Flow) -> String {
    let caller = match &flow.caller {
        Caller::Principal(principal) => principal.clone(),
        Caller::Plaintext(address) => format!("plaintext {address} (no mTLS: move it to mTLS first)"),
    };
    let what = match (&flow.method, &flow.path) {
        (Some(method), Some(path)) => format!("{method} {path}"),
        _ => format!("TCP port {}", flow.port.map_or("?".into(), |p| p.to_string())),
    };
    format!("{what} from {caller} to {}", flow.destination)
}

/// Why a policy's document could not be promoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    /// The document has no `istio.io/dry-run` line of its own to remove (it is
    /// written in a form this edit does not change, e.g. a flow mapping).
    #[error(
        "line {line}: the document has no {} annotation line of its own",
        zt_policy::policy::DRY_RUN_ANNOTATION
    )]
    NoAnnotationLine {
        /// The line the document starts on.
        line: usize,
    },
}

/// The file's text with the dry-run annotation removed from each document
/// starting on one of `lines`, last document first (so that earlier lines keep
/// their numbers).
pub fn remove_dry_runs(text: &str, lines: &[usize]) -> Result<String, PromoteError> {
    let mut lines = lines.to_vec();
    lines.sort_unstable_by(|a, b| b.cmp(a));
    lines.dedup();
    lines
        .into_iter()
        .try_fold(text.to_owned(), |text, line| remove_dry_run(&text, line))
}

/// The file's text with the dry-run annotation removed from the document that
/// starts on line `line` (1-based, as [`zt_policy::policy::Origin`] counts),
/// and `annotations:` too if nothing else is left under it. An error when the
/// document has no such annotation as a plain line of its own.
pub fn remove_dry_run(text: &str, line: usize) -> Result<String, PromoteError> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start = line.saturating_sub(1);
    let end = lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .find(|(_, l)| l.trim_end() == "---")
        .map_or(lines.len(), |(i, _)| i);
    let key_of = |l: &str| {
        let trimmed = l.trim_start();
        let key = trimmed.split_once(':').map(|(k, _)| k.trim())?;
        Some(key.trim_matches(['"', '\'']).to_owned())
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let at = (start..end)
        .find(|&i| key_of(lines[i]).as_deref() == Some(zt_policy::policy::DRY_RUN_ANNOTATION))
        .ok_or(PromoteError::NoAnnotationLine { line })?;
    let mut remove = vec![at];
    // The generator's note that the policy is dry-run goes with the annotation.
    remove.extend((start..end).filter(|&i| lines[i].trim_end() == crate::generate::DRY_RUN_COMMENT));
    // `annotations:` left empty: the line before the annotation, if it is
    // `annotations:`, and no line after the annotation is indented under it.
    if at > start && key_of(lines[at - 1]).as_deref() == Some("annotations") {
        let parent = indent(lines[at - 1]);
        let more = lines
            .get(at + 1..end)
            .unwrap_or_default()
            .iter()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .is_some_and(|next| indent(next) > parent);
        if !more {
            remove.push(at - 1);
        }
    }
    Ok(lines
        .iter()
        .enumerate()
        .filter(|(i, _)| !remove.contains(i))
        .map(|(_, l)| *l)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{Options, generate};
    use crate::traffic::Window;
    use crate::traffic::tests::record;

    const FRONTEND: &str = "spiffe://td/ns/web/sa/frontend";

    fn load(text: &str) -> Vec<Policy> {
        zt_policy::load::parse(&[zt_policy::load::Source {
            name: "p.yaml".into(),
            text: text.to_owned(),
        }])
        .unwrap()
    }

    #[test]
    fn a_policy_is_promoted_only_without_would_be_denials() {
        let mut seen = Traffic::new(Window::default());
        seen.add(&record(1, Some(FRONTEND), "shop/cart", "GET", "/items/1"));
        let generated = generate(&seen, &Options::default());
        let policies = load(&generated.files[0].text);

        // Nothing evaluated in shadow yet.
        let reviews = review(&policies, "zt-system", &seen, 1);
        assert_eq!(reviews[0].verdict, Verdict::TooLittleEvidence);

        // Shadow-allowed traffic only: promote.
        let mut shadowed = Traffic::new(Window::default());
        let mut allowed = record(2, Some(FRONTEND), "shop/cart", "GET", "/items/2");
        allowed.dry_run = Some("ALLOW shop/cart-observed".into());
        shadowed.add(&allowed);
        let reviews = review(&policies, "zt-system", &shadowed, 1);
        assert_eq!(
            (reviews[0].verdict.clone(), reviews[0].evidence),
            (Verdict::Promote, 1)
        );
        assert_eq!(
            review(&policies, "zt-system", &shadowed, 2)[0].verdict,
            Verdict::TooLittleEvidence
        );

        // A served request it would have denied keeps it in shadow, with the example.
        let mut denied = record(3, Some(FRONTEND), "shop/cart", "DELETE", "/items/2");
        denied.dry_run = Some("DENY (no policy)".into());
        shadowed.add(&denied);
        // Another workload's denials are not its own.
        let mut elsewhere = denied.clone();
        elsewhere.destination = "shop/orders".into();
        shadowed.add(&elsewhere);
        let reviews = review(&policies, "zt-system", &shadowed, 1);
        assert_eq!(reviews[0].verdict, Verdict::WouldDeny);
        assert_eq!((reviews[0].evidence, reviews[0].would_deny), (2, 1));
        assert_eq!(
            describe(&reviews[0].examples[0].0),
            "DELETE /items/2 from spiffe://td/ns/web/sa/frontend to shop/cart"
        );
    }

    #[test]
    fn promotion_removes_the_generators_dry_run_note_too() {
        let mut seen = Traffic::new(Window::default());
        seen.add(&record(1, Some(FRONTEND), "shop/cart", "GET", "/items/1"));
        let text = generate(&seen, &Options::default()).files[0].text.clone();
        assert!(text.contains(crate::generate::DRY_RUN_COMMENT));
        let promoted = remove_dry_run(&text, 1).unwrap();
        assert!(!promoted.contains("ry-run"), "{promoted}");
        assert!(!load(&promoted)[0].dry_run);
    }

    #[test]
    fn requests_refused_anyway_are_no_evidence_against_a_policy() {
        let policies = load(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: shop\n  annotations:\n    istio.io/dry-run: \"true\"\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"td/ns/web/sa/frontend\"]\n",
        );
        let mut traffic = Traffic::new(Window::default());
        let mut refused = record(1, Some("spiffe://td/ns/x/sa/y"), "shop/cart", "GET", "/");
        refused.decision = "DENY".into();
        refused.mode = "enforce".into();
        refused.dry_run = Some("DENY (no policy)".into());
        traffic.add(&refused);
        assert_eq!(
            review(&policies, "zt-system", &traffic, 1)[0].verdict,
            Verdict::TooLittleEvidence
        );
    }

    #[test]
    fn the_annotation_is_removed_from_its_document_only() {
        let text = "# a comment\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\n  namespace: shop\n  annotations:\n    istio.io/dry-run: \"true\"\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin\"]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: b\n  namespace: shop\n  annotations:\n    \"istio.io/dry-run\": \"true\"\n    owner: team-a\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/debug\"]\n";
        let policies = load(text);
        let b = policies.iter().find(|p| p.name == "b").unwrap();
        let promoted = remove_dry_run(text, b.origin.line).unwrap();
        let after = load(&promoted);
        let dry = |name: &str| after.iter().find(|p| p.name == name).unwrap().dry_run;
        assert!(dry("a") && !dry("b"));
        assert!(promoted.contains("    owner: team-a\n") && promoted.contains("  annotations:\n"));
        let a = policies.iter().find(|p| p.name == "a").unwrap();
        let both = remove_dry_runs(text, &[a.origin.line, b.origin.line]).unwrap();
        assert!(!load(&both).iter().any(|p| p.dry_run), "both, in any order");
        let promoted = remove_dry_run(&promoted, a.origin.line).unwrap();
        assert_eq!(promoted, both);
        assert!(!load(&promoted).iter().any(|p| p.dry_run));
        assert!(promoted.starts_with("# a comment\n"));
        assert_eq!(
            promoted.matches("annotations:").count(),
            1,
            "a's emptied annotations are gone:\n{promoted}"
        );
        assert!(remove_dry_run(&promoted, a.origin.line).is_err());
    }
}
