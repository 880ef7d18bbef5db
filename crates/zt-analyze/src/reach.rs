//! Blast radius: which workloads (and which of their routes) each workload may
//! call under the policies in force, decided by reading the rules — not by
//! sampling requests.
//!
//! A caller A reaches a workload B when at least one request from A's
//! identity is allowed by B's policies (Istio's order):
//!
//! - B has no enforced ALLOW policy: every caller reaches it (Istio's
//!   allow-all), on any request;
//! - otherwise, some `from` source of an ALLOW rule admits A: its
//!   `principals` (exact, `prefix*`, `*suffix`, `*`) and `namespaces` match
//!   A's principal and the `/ns/NS/` of its SPIFFE ID, and its
//!   `notPrincipals`/`notNamespaces` do not; a rule without `from` admits
//!   everyone, plaintext callers included;
//! - and no enforced DENY rule refuses every request of A: one without `to`
//!   and `when` whose source surely matches A.
//!
//! The routes of B that A reaches are the `to` operations of the ALLOW rules
//! that admit A ("any request" for a rule without `to`).
//!
//! Deliberately an over-approximation — the safe direction for a blast
//! radius: `when` conditions, `ipBlocks`/`remoteIpBlocks` and
//! `requestPrincipals` are taken as satisfiable (a caller may send whatever
//! makes them hold); a DENY rule with `to` or `when` is taken as refusing only
//! some requests, so it never removes reach; CUSTOM (external) and AUDIT
//! policies decide nothing here; dry-run policies are not enforced, so they
//! are left out.
//!
//! *Direct* reach is what A's own identity may call. *Transitive* reach is the
//! closure: what an attacker reaches who compromises, in turn, every workload
//! it reaches (lateral movement, each hop a new compromise).

use std::collections::HashMap;
use std::sync::Arc;

use zt_policy::Policy;
use zt_policy::matching::{PathMatch, Segment, StringMatch};
use zt_policy::model::Action;
use zt_policy::policy::{Field, OperationMatch, Rule, SourceMatch};

use crate::workloads::Workload;

/// What every workload may call, directly and transitively.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// Each workload's `namespace/name`, in the order given.
    pub names: Vec<String>,
    /// Per caller: the workloads it may call (ascending, never itself) and,
    /// for each, the indices of the routes into [`Reach::routes`] of that
    /// workload.
    pub direct: Vec<Vec<(usize, Vec<usize>)>>,
    /// Per workload: its routes as named in reports (`GET,POST /api/*`,
    /// `port 5432`, `any request`).
    pub routes: Vec<Vec<String>>,
    /// Per caller: every workload reached through any chain of direct calls
    /// (ascending, never itself).
    pub transitive: Vec<Vec<usize>>,
    /// Per workload: no enforced ALLOW policy applies (every caller reaches it).
    pub open: Vec<bool>,
    /// Per workload: a caller without a verified identity (plaintext) is
    /// allowed some request by its policies.
    pub plaintext: Vec<bool>,
}

impl Reach {
    /// How many workloads.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Caller–target pairs of a flat network, where everyone reaches everyone
    /// else: n × (n − 1).
    pub fn flat_pairs(&self) -> usize {
        let n = self.len();
        n * n.saturating_sub(1)
    }

    /// Caller–target pairs allowed directly.
    pub fn direct_pairs(&self) -> usize {
        self.direct.iter().map(Vec::len).sum()
    }

    /// Caller–target pairs reached transitively.
    pub fn transitive_pairs(&self) -> usize {
        self.transitive.iter().map(Vec::len).sum()
    }
}

/// The policies that apply to each workload, found by namespace first.
struct ByNamespace<'a> {
    namespaces: HashMap<&'a str, Vec<&'a Policy>>,
    root: Vec<&'a Policy>,
}

impl<'a> ByNamespace<'a> {
    fn new(policies: &'a [Arc<Policy>], root_namespace: &str) -> Self {
        let mut namespaces: HashMap<&str, Vec<&Policy>> = HashMap::new();
        let mut root = Vec::new();
        for policy in policies.iter().filter(|p| !p.dry_run) {
            if policy.namespace == root_namespace {
                root.push(&**policy);
            } else {
                namespaces
                    .entry(policy.namespace.as_str())
                    .or_default()
                    .push(policy);
            }
        }
        Self { namespaces, root }
    }

    /// The enforced policies that select `workload`.
    fn of<'s>(&'s self, workload: &'s Workload) -> impl Iterator<Item = &'a Policy> + 's {
        let own = self
            .namespaces
            .get(workload.namespace.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        own.iter()
            .chain(&self.root)
            .copied()
            .filter(|p| p.selects(&workload.labels))
    }
}

/// Who one workload's policies let in, ready to be asked about each caller.
struct Gate<'a> {
    /// No enforced ALLOW policy.
    open: bool,
    /// Each source of each ALLOW rule (`None`: a rule without `from`) and the
    /// routes of its rule.
    admits: Vec<(Option<&'a SourceMatch>, Vec<usize>)>,
    /// Admits whose principals are all exact, by principal.
    exact: HashMap<&'a str, Vec<usize>>,
    /// Admits every caller must be tested against.
    scan: Vec<usize>,
    /// Sources of DENY rules that refuse every request of a caller they match
    /// (`None`: a rule without `from`, which refuses everyone).
    deny_all: Vec<Option<&'a SourceMatch>>,
    /// The workload's routes.
    routes: Vec<String>,
}

impl<'a> Gate<'a> {
    fn new(policies: impl Iterator<Item = &'a Policy>) -> Self {
        let mut gate = Gate {
            open: true,
            admits: Vec::new(),
            exact: HashMap::new(),
            scan: Vec::new(),
            deny_all: Vec::new(),
            routes: Vec::new(),
        };
        let mut route_ids: HashMap<String, usize> = HashMap::new();
        for policy in policies {
            match policy.action {
                Action::Allow => {
                    gate.open = false;
                    for rule in policy.rules() {
                        let routes: Vec<usize> = describe_rule(rule)
                            .into_iter()
                            .map(|route| {
                                *route_ids.entry(route.clone()).or_insert_with(|| {
                                    gate.routes.push(route);
                                    gate.routes.len() - 1
                                })
                            })
                            .collect();
                        if rule.from().is_empty() {
                            gate.push(None, routes);
                        } else {
                            for source in rule.from() {
                                gate.push(Some(source), routes.clone());
                            }
                        }
                    }
                }
                Action::Deny => {
                    for rule in policy.rules() {
                        if !rule.to().is_empty() || rule.has_conditions() {
                            continue;
                        }
                        if rule.from().is_empty() {
                            gate.deny_all.push(None);
                        }
                        gate.deny_all
                            .extend(rule.from().iter().filter(|s| is_certain(s)).map(Some));
                    }
                }
                Action::Audit | Action::Custom => {}
            }
        }
        if gate.open {
            gate.routes.push("any request (no ALLOW policy applies)".into());
        }
        gate
    }

    fn push(&mut self, source: Option<&'a SourceMatch>, routes: Vec<usize>) {
        let position = self.admits.len();
        let exact: Option<Vec<&'a str>> = source.and_then(|s| {
            let any = s.principals().any();
            (!any.is_empty())
                .then(|| {
                    any.iter()
                        .map(|p| match p {
                            StringMatch::Exact(e) => Some(e.as_str()),
                            _ => None,
                        })
                        .collect()
                })
                .flatten()
        });
        match exact {
            Some(principals) => {
                for principal in principals {
                    let list = self.exact.entry(principal).or_default();
                    if list.last() != Some(&position) {
                        list.push(position);
                    }
                }
            }
            None => self.scan.push(position),
        }
        self.admits.push((source, routes));
    }

    /// The routes a caller with this principal and namespace (both `None`:
    /// plaintext) is allowed, sorted; `None` if it reaches nothing.
    fn routes_for(&self, principal: Option<&str>, namespace: Option<&str>) -> Option<Vec<usize>> {
        let refused = self
            .deny_all
            .iter()
            .any(|s| s.is_none_or(|s| admits(s, principal, namespace)));
        if refused {
            return None;
        }
        if self.open {
            return Some(vec![0]);
        }
        let by_principal = principal
            .and_then(|p| self.exact.get(p))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (mut admitted, mut routes) = (false, Vec::new());
        for &position in self.scan.iter().chain(by_principal) {
            if let Some((source, rule_routes)) = self.admits.get(position)
                && source.is_none_or(|s| admits(s, principal, namespace))
            {
                admitted = true;
                routes.extend_from_slice(rule_routes);
            }
        }
        if !admitted {
            return None;
        }
        routes.sort_unstable();
        routes.dedup();
        Some(routes)
    }
}

/// Whether a source admits a caller (`None`s: plaintext), taking the fields
/// that depend on the request (addresses, JWTs) as satisfiable.
pub fn admits(source: &SourceMatch, principal: Option<&str>, namespace: Option<&str>) -> bool {
    field_admits(source.principals(), principal) && field_admits(source.namespaces(), namespace)
}

fn field_admits(field: &Field<StringMatch>, value: Option<&str>) -> bool {
    let hit = |pattern: &StringMatch| value.is_some_and(|v| pattern.matches(v));
    (field.any().is_empty() || field.any().iter().any(hit)) && !field.none().iter().any(hit)
}

/// Whether a source's match depends only on who the caller is.
fn is_certain(source: &SourceMatch) -> bool {
    !source.names_addresses() && !source.request_principals().is_set()
}

/// Every workload's reach under `policies` (`root_namespace`'s apply to all).
pub fn analyze(policies: &[Arc<Policy>], root_namespace: &str, workloads: &[Workload]) -> Reach {
    let by_namespace = ByNamespace::new(policies, root_namespace);
    let callers: Vec<(String, Option<String>)> = workloads
        .iter()
        .map(|w| (w.principal(), w.source_namespace()))
        .collect();
    let n = workloads.len();
    let mut reach = Reach {
        names: workloads.iter().map(Workload::key).collect(),
        direct: vec![Vec::new(); n],
        routes: Vec::with_capacity(n),
        transitive: Vec::new(),
        open: Vec::with_capacity(n),
        plaintext: Vec::with_capacity(n),
    };
    for (target, workload) in workloads.iter().enumerate() {
        let gate = Gate::new(by_namespace.of(workload));
        for (caller, (principal, namespace)) in callers.iter().enumerate() {
            if caller == target {
                continue;
            }
            if let Some(routes) = gate.routes_for(Some(principal), namespace.as_deref())
                && let Some(list) = reach.direct.get_mut(caller)
            {
                list.push((target, routes));
            }
        }
        reach.open.push(gate.open);
        reach.plaintext.push(gate.routes_for(None, None).is_some());
        reach.routes.push(gate.routes);
    }
    reach.transitive = closure(&reach.direct);
    reach
}

/// The transitive closure of the direct graph (Warshall's algorithm on bit
/// sets: n² word-wide unions at most), self excluded.
fn closure(direct: &[Vec<(usize, Vec<usize>)>]) -> Vec<Vec<usize>> {
    let n = direct.len();
    let words = n.div_ceil(64);
    let mut rows: Vec<Vec<u64>> = direct
        .iter()
        .map(|targets| {
            let mut row = vec![0u64; words];
            for (target, _) in targets {
                if let Some(word) = row.get_mut(target / 64) {
                    *word |= 1 << (target % 64);
                }
            }
            row
        })
        .collect();
    for k in 0..n {
        let Some(via) = rows.get(k).cloned() else { continue };
        for row in &mut rows {
            let has = row.get(k / 64).is_some_and(|w| w & (1 << (k % 64)) != 0);
            if has {
                for (word, add) in row.iter_mut().zip(&via) {
                    *word |= add;
                }
            }
        }
    }
    rows.iter()
        .enumerate()
        .map(|(me, row)| {
            (0..n)
                .filter(|&j| j != me && row.get(j / 64).is_some_and(|w| w & (1 << (j % 64)) != 0))
                .collect()
        })
        .collect()
}

/// A rule's routes as reports name them: one per `to` operation, `any
/// request` without `to`; `(when …)` marks a rule with conditions.
fn describe_rule(rule: &Rule) -> Vec<String> {
    let when = if rule.has_conditions() {
        " (when conditions hold)"
    } else {
        ""
    };
    if rule.to().is_empty() {
        return vec![format!("any request{when}")];
    }
    rule.to()
        .iter()
        .map(|operation| format!("{}{when}", describe_operation(operation)))
        .collect()
}

fn describe_operation(operation: &OperationMatch) -> String {
    let mut parts = Vec::new();
    let strings = |field: &Field<StringMatch>, name: &str, parts: &mut Vec<String>| {
        let list = |items: &[StringMatch]| items.iter().map(pattern).collect::<Vec<_>>().join(",");
        if !field.any().is_empty() {
            parts.push(format!("{name}{}", list(field.any())));
        }
        if !field.none().is_empty() {
            parts.push(format!("{name}not {}", list(field.none())));
        }
    };
    strings(operation.methods(), "", &mut parts);
    let paths = |items: &[PathMatch]| items.iter().map(path_pattern).collect::<Vec<_>>().join(",");
    if !operation.paths().any().is_empty() {
        parts.push(paths(operation.paths().any()));
    }
    if !operation.paths().none().is_empty() {
        parts.push(format!("not {}", paths(operation.paths().none())));
    }
    let ports = |items: &[u16]| items.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    if !operation.ports().any().is_empty() {
        parts.push(format!("port {}", ports(operation.ports().any())));
    }
    if !operation.ports().none().is_empty() {
        parts.push(format!("port not {}", ports(operation.ports().none())));
    }
    strings(operation.hosts(), "host ", &mut parts);
    if parts.is_empty() {
        "any request".into()
    } else {
        parts.join(" ")
    }
}

fn pattern(p: &StringMatch) -> String {
    match p {
        StringMatch::Exact(e) => e.clone(),
        StringMatch::Prefix(prefix) => format!("{prefix}*"),
        StringMatch::Suffix(suffix) => format!("*{suffix}"),
        StringMatch::Present => "*".into(),
    }
}

fn path_pattern(p: &PathMatch) -> String {
    match p {
        PathMatch::Plain(plain) => pattern(plain),
        PathMatch::Template(segments) => segments.iter().fold(String::new(), |mut out, segment| {
            out.push('/');
            out.push_str(match segment {
                Segment::Literal(literal) => literal,
                Segment::One => "{*}",
                Segment::OneOrMore => "{**}",
            });
            out
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use super::*;

    /// Policies from YAML text (one file).
    pub(crate) fn policies(yaml: &str) -> Vec<Arc<Policy>> {
        let sources = [zt_policy::load::Source {
            name: "test.yaml".into(),
            text: yaml.to_owned(),
        }];
        let loaded = zt_policy::load::parse(&sources).unwrap_or_else(|e| panic!("{e}"));
        zt_policy::PolicySet::new(loaded, "zt-system").policies().to_vec()
    }

    /// A workload `ns/name` with `app: name` and the ID `spiffe://td/ns/NS/sa/NAME`.
    pub(crate) fn workload(namespace: &str, name: &str) -> Workload {
        let id = zt_identity::SpiffeId::parse(&format!("spiffe://td/ns/{namespace}/sa/{name}")).unwrap();
        crate::workloads::from_spiffe_id(&id).unwrap()
    }

    fn allow(namespace: &str, app: &str, from: &str, to: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {app}-{}, namespace: {namespace}}}\nspec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  rules:\n  - {from}{to}\n---\n",
            from.len() + to.len()
        )
    }

    fn targets(reach: &Reach, caller: usize) -> Vec<&str> {
        reach.direct[caller]
            .iter()
            .map(|(t, _)| reach.names[*t].as_str())
            .collect()
    }

    #[test]
    fn principal_patterns_decide_who_reaches_whom() {
        let workloads = vec![
            workload("a", "one"),
            workload("a", "two"),
            workload("b", "three"),
            workload("b", "db"),
        ];
        let yaml = [
            // exact
            allow(
                "a",
                "two",
                "from: [{source: {principals: [\"td/ns/a/sa/one\"]}}]",
                "",
            ),
            // prefix, with a notPrincipals exception
            allow(
                "b",
                "three",
                "from: [{source: {principals: [\"td/ns/a/*\"], notPrincipals: [\"td/ns/a/sa/two\"]}}]",
                "\n    to: [{operation: {methods: [GET], paths: [\"/x/*\"]}}]",
            ),
            // suffix, and a namespace rule
            allow(
                "b",
                "db",
                "from: [{source: {principals: [\"*/sa/three\"]}}, {source: {namespaces: [a]}}]",
                "\n    to: [{operation: {ports: [5432]}}]",
            ),
            // `a/one` has an ALLOW that admits nobody in the mesh
            allow(
                "a",
                "one",
                "from: [{source: {principals: [\"other/ns/x/sa/y\"]}}]",
                "",
            ),
        ]
        .concat();
        let reach = analyze(&policies(&yaml), "zt-system", &workloads);
        assert_eq!(targets(&reach, 0), vec!["a/two", "b/three", "b/db"]);
        assert_eq!(
            targets(&reach, 1),
            vec!["b/db"],
            "notPrincipals excludes a/two from b/three"
        );
        assert_eq!(targets(&reach, 2), vec!["b/db"]);
        assert!(targets(&reach, 3).is_empty());
        let (three, routes) = &reach.direct[0][1];
        assert_eq!(reach.routes[*three][routes[0]], "GET /x/*");
        let (db, routes) = &reach.direct[2][0];
        assert_eq!(reach.routes[*db][routes[0]], "port 5432");
        assert!(!reach.open.iter().any(|o| *o));
        assert!(!reach.plaintext.iter().any(|p| *p));
        assert_eq!((reach.flat_pairs(), reach.direct_pairs()), (12, 5));
    }

    #[test]
    fn transitive_reach_is_the_closure_and_direct_is_not() {
        // a → b → c → d, and d → b: a reaches b directly, c and d only through
        // compromised b and c.
        let workloads = vec![
            workload("n", "a"),
            workload("n", "b"),
            workload("n", "c"),
            workload("n", "d"),
        ];
        let yaml = [
            allow(
                "n",
                "b",
                "from: [{source: {principals: [td/ns/n/sa/a, td/ns/n/sa/d]}}]",
                "",
            ),
            allow("n", "c", "from: [{source: {principals: [td/ns/n/sa/b]}}]", ""),
            allow("n", "d", "from: [{source: {principals: [td/ns/n/sa/c]}}]", ""),
            allow(
                "n",
                "a",
                "from: [{source: {principals: [td/ns/n/sa/nobody]}}]",
                "",
            ),
        ]
        .concat();
        let reach = analyze(&policies(&yaml), "zt-system", &workloads);
        assert_eq!(targets(&reach, 0), vec!["n/b"]);
        let names = |list: &[usize]| list.iter().map(|i| reach.names[*i].clone()).collect::<Vec<_>>();
        assert_eq!(names(&reach.transitive[0]), vec!["n/b", "n/c", "n/d"]);
        // b reaches c, d, and itself again through d: self is not counted.
        assert_eq!(names(&reach.transitive[1]), vec!["n/c", "n/d"]);
        assert!(reach.transitive[0].len() > reach.direct[0].len());
        assert_eq!(
            (reach.direct_pairs(), reach.transitive_pairs()),
            (4, 3 + 2 + 2 + 2)
        );
    }

    #[test]
    fn no_allow_policy_opens_a_workload_and_deny_all_closes_it() {
        let workloads = vec![workload("n", "a"), workload("n", "open"), workload("m", "c")];
        let yaml = [
            allow("n", "a", "from: [{source: {principals: [\"*\"]}}]", ""),
            allow("m", "c", "{}", ""),
            // DENY everything from namespace m, for every workload of n.
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-m, namespace: n}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [m]}}]\n---\n".into(),
            // A partial DENY (with `to`) removes no reach.
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: m}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n---\n".into(),
        ]
        .concat();
        let reach = analyze(&policies(&yaml), "zt-system", &workloads);
        assert_eq!(reach.open, vec![false, true, false]);
        assert_eq!(targets(&reach, 0), vec!["n/open", "m/c"]);
        assert_eq!(
            targets(&reach, 2),
            Vec::<&str>::new(),
            "m/c is refused by n's DENY"
        );
        assert_eq!(targets(&reach, 1), vec!["n/a", "m/c"]);
        assert_eq!(reach.routes[1], vec!["any request (no ALLOW policy applies)"]);
        // `*` needs an identity; `from: {}`-less rule and the open workload take plaintext.
        assert_eq!(reach.plaintext, vec![false, true, true]);
    }

    #[test]
    fn routes_are_named_from_operations() {
        let yaml = allow(
            "n",
            "a",
            "from: [{source: {principals: [\"*\"]}}]",
            "\n    to: [{operation: {methods: [GET, POST], paths: [\"/api/{*}/items\"], notPaths: [/api/admin]}}, {operation: {ports: [8080], hosts: [\"*.svc\"]}}]\n    when: [{key: source.ip, values: [10.0.0.0/8]}]",
        );
        let policies = policies(&yaml);
        let routes = describe_rule(&policies[0].rules()[0]);
        assert_eq!(
            routes,
            vec![
                "GET,POST /api/{*}/items not /api/admin (when conditions hold)",
                "port 8080 host *.svc (when conditions hold)"
            ]
        );
    }
}
