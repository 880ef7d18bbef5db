//! Deciding a request, in Istio's order:
//!
//! 1. a matching DENY policy denies;
//! 2. if no ALLOW policy applies to the workload, the request is allowed;
//! 3. a matching ALLOW policy allows;
//! 4. otherwise it is denied.
//!
//! AUDIT policies mark what they match and decide nothing; dry-run policies
//! (`istio.io/dry-run: "true"`) are evaluated into a shadow decision that is
//! recorded, never enforced. A request that cannot be evaluated (a malformed
//! path, a lower-case method) is denied.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::Action;
use crate::policy::{Facts, Policy, PrincipalKey};
use crate::request::Request;

/// The namespace whose policies apply to every workload, unless configured.
pub const DEFAULT_ROOT_NAMESPACE: &str = "zt-system";

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// The request goes through.
    Allow,
    /// 403, or the connection closed.
    Deny,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
        })
    }
}

/// A decision: the public shape of `zt policy eval` (`decision`, `policy`,
/// `reason`), and what the decision log adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// ALLOW or DENY.
    pub decision: Verdict,
    /// `namespace/name` of the deciding policy; `null` when none decided.
    pub policy: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// The AUDIT policy that matched, if any.
    #[serde(skip)]
    pub audit: Option<String>,
    /// What the decision would be with the dry-run policies enforced, when the
    /// workload has any.
    #[serde(skip)]
    pub dry_run: Option<Box<Decision>>,
}

impl Decision {
    fn new(decision: Verdict, policy: Option<&Policy>, reason: String) -> Self {
        Self {
            decision,
            policy: policy.map(Policy::id),
            reason,
            audit: None,
            dry_run: None,
        }
    }
}

/// Every policy, by namespace; the root namespace's apply to all workloads.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Arc<Policy>>,
    root_namespace: String,
}

impl PolicySet {
    /// A set with `root_namespace` (normally [`DEFAULT_ROOT_NAMESPACE`]).
    pub fn new(policies: Vec<Policy>, root_namespace: &str) -> Self {
        Self {
            policies: policies.into_iter().map(Arc::new).collect(),
            root_namespace: root_namespace.to_owned(),
        }
    }

    /// All policies.
    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// The policies of one workload, chosen once (a proxy knows its workload).
    pub fn for_workload(&self, namespace: &str, labels: &BTreeMap<String, String>) -> WorkloadPolicies {
        let mut chosen = WorkloadPolicies::default();
        for policy in &self.policies {
            let in_scope = policy.namespace == namespace || policy.namespace == self.root_namespace;
            if !in_scope || !policy.selects(labels) {
                continue;
            }
            chosen.dry_run_present |= policy.dry_run;
            let list = match policy.action {
                Action::Deny => &mut chosen.deny,
                Action::Allow => &mut chosen.allow,
                Action::Audit => &mut chosen.audit,
                Action::Custom => &mut chosen.custom,
            };
            list.push(policy.clone());
        }
        chosen
    }

    /// Decides a request for the workload its `destination` names.
    pub fn evaluate(&self, request: &Request) -> Decision {
        self.for_workload(&request.destination.namespace, &request.destination.labels)
            .evaluate(request)
    }
}

/// An external authorizer of CUSTOM policies (a Rego rule, in zt proxy).
pub trait ExternalAuthorizer {
    /// Whether `provider` allows `request`; an error denies.
    fn check(&self, provider: &str, request: &Request) -> Result<bool, String>;
}

/// The policies that apply to one workload, by action, each list indexed by
/// the principal patterns its policies name.
#[derive(Debug, Clone, Default)]
pub struct WorkloadPolicies {
    custom: Indexed,
    deny: Indexed,
    allow: Indexed,
    audit: Indexed,
    dry_run_present: bool,
}

/// Policies in order, and which of them a principal can reach: a policy whose
/// rules all name their principals (exactly, `prefix*` or `*suffix`) is only
/// looked at for principals one of those patterns fits.
#[derive(Debug, Clone, Default)]
struct Indexed {
    policies: Vec<Arc<Policy>>,
    exact: HashMap<String, Vec<usize>>,
    /// `prefix*` patterns by their length, then by the prefix: a principal is
    /// looked up once per distinct length, by its first that many bytes.
    prefixes: BTreeMap<usize, HashMap<String, Vec<usize>>>,
    /// `*suffix` patterns, likewise by length, looked up by the principal's end.
    suffixes: BTreeMap<usize, HashMap<String, Vec<usize>>>,
    /// Positions of policies that may match any principal.
    unkeyed: Vec<usize>,
}

impl Indexed {
    fn push(&mut self, policy: Arc<Policy>) {
        let position = self.policies.len();
        match policy.principal_keys() {
            Some(keys) => {
                for key in keys {
                    let (map, text) = match key {
                        PrincipalKey::Exact(text) => (&mut self.exact, text),
                        PrincipalKey::Prefix(text) => (self.prefixes.entry(text.len()).or_default(), text),
                        PrincipalKey::Suffix(text) => (self.suffixes.entry(text.len()).or_default(), text),
                    };
                    let positions = map.entry(text.to_owned()).or_default();
                    if positions.last() != Some(&position) {
                        positions.push(position);
                    }
                }
            }
            None => self.unkeyed.push(position),
        }
        self.policies.push(policy);
    }

    fn len(&self) -> usize {
        self.policies.len()
    }

    fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies `principal` can match, in their order.
    fn candidates<'a>(&'a self, principal: Option<&str>) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        let found = |map: &'a HashMap<String, Vec<usize>>, key: Option<&str>| {
            key.and_then(|key| map.get(key)).map(Vec::as_slice)
        };
        let mut merge = Merge {
            lists: [&self.unkeyed, found(&self.exact, principal).unwrap_or_default()],
            // Allocated only when some policy names a pattern this principal fits.
            more: Vec::new(),
        };
        if let Some(principal) = principal {
            for (length, map) in &self.prefixes {
                merge.more.extend(found(map, principal.get(..*length)));
            }
            for (length, map) in &self.suffixes {
                let start = principal.len().checked_sub(*length);
                merge
                    .more
                    .extend(found(map, start.and_then(|start| principal.get(start..))));
            }
        }
        merge.map(|position| &self.policies[position])
    }
}

/// Ascending position lists, merged into one ascending list without repeats.
struct Merge<'a> {
    lists: [&'a [usize]; 2],
    more: Vec<&'a [usize]>,
}

impl Iterator for Merge<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let smallest = self
            .lists
            .iter()
            .chain(&self.more)
            .filter_map(|list| list.first())
            .min()
            .copied()?;
        // The same position in several lists is one policy.
        for list in self.lists.iter_mut().chain(&mut self.more) {
            if list.first() == Some(&smallest) {
                *list = &list[1..];
            }
        }
        Some(smallest)
    }
}

impl WorkloadPolicies {
    /// The `request.auth.claims[…]` paths these policies' conditions look at,
    /// each once: the claims a decision can turn on, which the decision log
    /// records beside the person.
    pub fn claims_named(&self) -> Vec<Vec<String>> {
        let mut paths: Vec<Vec<String>> = Vec::new();
        for indexed in [&self.custom, &self.deny, &self.allow, &self.audit] {
            for policy in &indexed.policies {
                for path in policy.rules().iter().flat_map(|rule| rule.claims_named()) {
                    if !paths.iter().any(|p| p == path) {
                        paths.push(path.to_vec());
                    }
                }
            }
        }
        paths
    }

    /// How many policies apply.
    pub fn len(&self) -> usize {
        self.custom.len() + self.deny.len() + self.allow.len() + self.audit.len()
    }

    /// Whether none applies (everything is allowed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every rule that matches `request`, of every policy that applies (CUSTOM,
    /// DENY, ALLOW, AUDIT; enforced and dry-run), as the policy and the rule's
    /// index — whether or not it decided. Tells which rules observed traffic
    /// uses; the error says why the request is malformed.
    pub fn matching_rules(&self, request: &Request) -> Result<Vec<(&Arc<Policy>, usize)>, String> {
        let facts = Facts::of(request)?;
        let mut found = Vec::new();
        for list in [&self.custom, &self.deny, &self.allow, &self.audit] {
            for policy in list.candidates(facts.principal) {
                found.extend(policy.matching_rules(&facts).map(|rule| (policy, rule)));
            }
        }
        Ok(found)
    }

    /// Decides one request; a CUSTOM policy that matches denies (there is no
    /// external authorizer to ask).
    pub fn evaluate(&self, request: &Request) -> Decision {
        self.evaluate_with(request, None)
    }

    /// Decides one request, asking `external` when a CUSTOM policy matches: its
    /// denial (or failure, or absence) denies; its allowance lets DENY and ALLOW
    /// policies decide, in Istio's order.
    pub fn evaluate_with(&self, request: &Request, external: Option<&dyn ExternalAuthorizer>) -> Decision {
        let facts = match Facts::of(request) {
            Ok(facts) => facts,
            Err(why) => return Decision::new(Verdict::Deny, None, format!("malformed request: {why}")),
        };
        for policy in self.custom.candidates(facts.principal).filter(|p| !p.dry_run) {
            if policy.matching_rule(&facts).is_none() {
                continue;
            }
            let provider = policy.provider.as_deref().unwrap_or_default();
            let refusal = match external.map(|e| e.check(provider, request)) {
                Some(Ok(true)) => continue,
                Some(Ok(false)) => format!("denied by provider {provider:?} (CUSTOM policy {})", policy.id()),
                Some(Err(e)) => format!(
                    "provider {provider:?} failed: {e} (CUSTOM policy {})",
                    policy.id()
                ),
                None => format!(
                    "CUSTOM policy {} needs provider {provider:?}, which is not available here",
                    policy.id()
                ),
            };
            return Decision::new(Verdict::Deny, Some(policy), refusal);
        }
        let mut decision = self.decide(&facts, false);
        decision.audit = self
            .audit
            .candidates(facts.principal)
            .find(|p| !p.dry_run && p.matching_rule(&facts).is_some())
            .map(|p| p.id());
        if self.dry_run_present {
            decision.dry_run = Some(Box::new(self.decide(&facts, true)));
        }
        decision
    }

    fn decide(&self, facts: &Facts<'_>, with_dry_run: bool) -> Decision {
        let enforced = |p: &&Arc<Policy>| with_dry_run || !p.dry_run;
        for policy in self.deny.candidates(facts.principal).filter(enforced) {
            if let Some(rule) = policy.matching_rule(facts) {
                let reason = format!("matched rule {rule} of DENY policy {}", policy.id());
                return Decision::new(Verdict::Deny, Some(policy), reason);
            }
        }
        let any_allow = if with_dry_run || !self.dry_run_present {
            !self.allow.is_empty()
        } else {
            self.allow.policies.iter().any(|p| !p.dry_run)
        };
        if !any_allow {
            return Decision::new(
                Verdict::Allow,
                None,
                "no ALLOW policy applies to the workload".into(),
            );
        }
        for policy in self.allow.candidates(facts.principal).filter(enforced) {
            if let Some(rule) = policy.matching_rule(facts) {
                let reason = format!("matched rule {rule} of ALLOW policy {}", policy.id());
                return Decision::new(Verdict::Allow, Some(policy), reason);
            }
        }
        Decision::new(Verdict::Deny, None, "no ALLOW policy matched".into())
    }
}
