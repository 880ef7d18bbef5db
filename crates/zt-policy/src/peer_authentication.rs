//! Istio's `PeerAuthentication` (`security.istio.io/v1` and `v1beta1`): whether
//! a workload's inbound port takes mTLS only, mTLS and plaintext, or plaintext
//! only.
//!
//! Read as strictly as AuthorizationPolicies (an unknown field or mode is an
//! error naming its line), from the same files. For one workload the mode is
//! resolved as Istio does: the mesh-wide policy (root namespace, no selector),
//! overridden by the namespace's (no selector), overridden by a workload
//! policy (`selector.matchLabels` in the workload's namespace); `UNSET` at a
//! level inherits the level above; `portLevelMtls` of the workload policy
//! overrides the result for one port (`UNSET` there inherits the workload's
//! mode). Nothing set at any level leaves the mode to the proxy (`--mode`).
//!
//! Where Istio lets the oldest policy win, zt has no creation time to go by:
//! two namespace-wide policies in one namespace, or two workload policies with
//! the same selector, are a load error naming both files
//! ([`conflicts`]); workload policies whose different selectors both match a
//! workload are resolved by name (the first wins) and the others reported as
//! shadowed. Istio ignores a workload policy in the root namespace; so does zt
//! (`zt policy lint` warns about one).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::model::{ApiVersion, Kind, Metadata, Port, Selector};
use crate::policy::Origin;

/// One `PeerAuthentication` document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document {
    /// `security.istio.io/v1` or `security.istio.io/v1beta1`.
    pub api_version: ApiVersion,
    /// `PeerAuthentication`.
    pub kind: Kind,
    /// Name and namespace.
    pub metadata: Metadata,
    /// Absent is the same as `{}` (every mode UNSET).
    #[serde(default)]
    pub spec: Spec,
    /// Written by Kubernetes; ignored.
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

/// `spec` of a PeerAuthentication.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Which workloads of the namespace; absent (or no labels): all of them.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// The workload's mode; absent: UNSET.
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Modes for single ports, overriding `mtls`; only with a selector.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<Port, MutualTls>,
}

/// `mtls` and the values of `portLevelMtls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    /// Absent: UNSET.
    #[serde(default)]
    pub mode: ModeSetting,
}

/// A mode as written, `UNSET` included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ModeSetting {
    /// Inherit from the level above.
    #[default]
    #[serde(rename = "UNSET")]
    Unset,
    /// Plaintext only.
    #[serde(rename = "DISABLE")]
    Disable,
    /// mTLS and plaintext.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// mTLS only.
    #[serde(rename = "STRICT")]
    Strict,
}

impl ModeSetting {
    fn mode(self) -> Option<MtlsMode> {
        match self {
            ModeSetting::Unset => None,
            ModeSetting::Disable => Some(MtlsMode::Disable),
            ModeSetting::Permissive => Some(MtlsMode::Permissive),
            ModeSetting::Strict => Some(MtlsMode::Strict),
        }
    }
}

/// A mode in force: never UNSET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MtlsMode {
    /// Plaintext only: the proxy terminates no TLS.
    Disable,
    /// mTLS, and plaintext on the same port.
    Permissive,
    /// mTLS only.
    Strict,
}

impl MtlsMode {
    /// Every mode, for metrics that show each.
    pub const ALL: [MtlsMode; 3] = [MtlsMode::Disable, MtlsMode::Permissive, MtlsMode::Strict];

    /// Istio's name: `DISABLE`, `PERMISSIVE` or `STRICT`.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

impl std::fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One PeerAuthentication, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthentication {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `selector.matchLabels`; `None`: namespace-wide (no selector, or one
    /// without labels, as Istio reads it).
    pub selector: Option<BTreeMap<String, String>>,
    /// `mtls.mode`; `None`: UNSET.
    pub mode: Option<MtlsMode>,
    /// `portLevelMtls`; `None`: UNSET (the workload's mode).
    pub ports: BTreeMap<u16, Option<MtlsMode>>,
    /// Where it was read from.
    pub origin: Origin,
}

impl PeerAuthentication {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks what the YAML reader could not (across fields). The error is the
    /// offending key's line within `text` (0-based, the document's text) and
    /// `field: what is wrong`.
    pub fn compile(document: Document, origin: Origin, text: &str) -> Result<Self, (usize, String)> {
        if document.kind != Kind::PeerAuthentication {
            return Err((line_of(text, "kind"), "kind: expected PeerAuthentication".into()));
        }
        let spec = document.spec;
        let selector = spec
            .selector
            .map(|s| s.match_labels)
            .filter(|labels| !labels.is_empty());
        if selector.is_none() && !spec.port_level_mtls.is_empty() {
            return Err((
                line_of(text, "portLevelMtls"),
                "spec.portLevelMtls: needs spec.selector.matchLabels (Istio applies port-level modes to selected workloads only); select the workload, or give the whole namespace one mode with mtls".into(),
            ));
        }
        Ok(Self {
            namespace: document.metadata.namespace.0,
            name: document.metadata.name.0,
            selector,
            mode: spec.mtls.unwrap_or_default().mode.mode(),
            ports: spec
                .port_level_mtls
                .into_iter()
                .map(|(port, mtls)| (port.0, mtls.mode.mode()))
                .collect(),
            origin,
        })
    }

    /// Whether it selects a workload with these labels (a namespace-wide
    /// policy selects every one).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|wanted| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// The line (0-based) of the first `key:` in `text`, else 0.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .unwrap_or(0)
}

/// What makes a set ambiguous where Istio would pick the oldest policy: two
/// namespace-wide policies in one namespace, two workload policies with the
/// same selector in one namespace, or one name used twice. One line each,
/// `file:line: metadata: …`, naming the other file.
pub fn conflicts(all: &[PeerAuthentication]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(&str, &str), &PeerAuthentication> = BTreeMap::new();
    // By namespace and selector (`None`: namespace-wide).
    type Scope<'a> = (&'a str, Option<&'a BTreeMap<String, String>>);
    let mut scopes: BTreeMap<Scope<'_>, &PeerAuthentication> = BTreeMap::new();
    for policy in all {
        let at =
            |other: &PeerAuthentication| format!("{}:{}", other.origin.file.display(), other.origin.line);
        let here = at(policy);
        if let Some(first) = seen.insert((&policy.namespace, &policy.name), policy) {
            problems.push(format!(
                "{here}: metadata: PeerAuthentication {} is already defined at {}",
                policy.id(),
                at(first)
            ));
            continue;
        }
        if let Some(first) = scopes.insert((&policy.namespace, policy.selector.as_ref()), policy) {
            let scope = match &policy.selector {
                None => format!(
                    "namespace {} already has a namespace-wide PeerAuthentication",
                    policy.namespace
                ),
                Some(labels) => format!(
                    "namespace {} already has a PeerAuthentication selecting {}",
                    policy.namespace,
                    labels_text(labels)
                ),
            };
            problems.push(format!(
                "{here}: spec.selector: {scope}, {} at {}; Istio would apply the older one, zt refuses to guess: merge them",
                first.id(),
                at(first)
            ));
        }
    }
    problems
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// Every PeerAuthentication of a set, resolved per workload.
#[derive(Debug, Clone, Default)]
pub struct PeerAuthentications {
    /// In `namespace/name` order, so that resolution does not depend on file order.
    all: Vec<Arc<PeerAuthentication>>,
    root_namespace: String,
}

impl PeerAuthentications {
    /// A set with `root_namespace` (normally [`crate::DEFAULT_ROOT_NAMESPACE`]),
    /// whose namespace-wide policy is the mesh's.
    pub fn new(mut all: Vec<PeerAuthentication>, root_namespace: &str) -> Self {
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Self {
            all: all.into_iter().map(Arc::new).collect(),
            root_namespace: root_namespace.to_owned(),
        }
    }

    /// All of them, in `namespace/name` order.
    pub fn all(&self) -> &[Arc<PeerAuthentication>] {
        &self.all
    }

    /// Workload policies in the root namespace, which Istio (and zt) ignore.
    pub fn ignored(&self) -> impl Iterator<Item = &PeerAuthentication> {
        self.all
            .iter()
            .filter(|p| p.namespace == self.root_namespace && p.selector.is_some())
            .map(|p| &**p)
    }

    /// The modes of one workload, resolved once (a proxy knows its workload).
    pub fn for_workload(&self, namespace: &str, labels: &BTreeMap<String, String>) -> WorkloadMtls {
        let wide = |ns: &str| {
            self.all
                .iter()
                .find(|p| p.namespace == ns && p.selector.is_none())
        };
        let mesh = wide(&self.root_namespace);
        let namespace_wide = wide(namespace);
        let mut selecting = self.all.iter().filter(|p| {
            p.namespace == namespace
                && namespace != self.root_namespace
                && p.selector.is_some()
                && p.selects(labels)
        });
        let workload = selecting.next();
        let mut resolved = WorkloadMtls {
            shadowed: selecting.map(|p| p.id()).collect(),
            ..WorkloadMtls::default()
        };
        for level in [mesh, namespace_wide, workload].into_iter().flatten() {
            if let Some(mode) = level.mode {
                resolved.mode = Some(mode);
                resolved.decided_by = Some(level.id());
            }
        }
        if let Some(workload) = workload {
            for (port, mode) in &workload.ports {
                if let Some(mode) = mode.or(resolved.mode) {
                    resolved.ports.insert(*port, mode);
                }
            }
            if !workload.ports.is_empty() {
                resolved.ports_by = Some(workload.id());
            }
        }
        resolved
    }
}

/// The mTLS modes in force for one workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadMtls {
    /// The mode of every port without one of its own; `None`: no policy sets
    /// one, the proxy's own default applies.
    pub mode: Option<MtlsMode>,
    /// Ports with a mode of their own (`portLevelMtls`).
    pub ports: BTreeMap<u16, MtlsMode>,
    /// `namespace/name` of the policy whose mode is `mode`.
    pub decided_by: Option<String>,
    /// `namespace/name` of the workload policy whose `portLevelMtls` is `ports`.
    pub ports_by: Option<String>,
    /// Workload policies that select the workload too but lost to the first
    /// by name.
    pub shadowed: Vec<String>,
}

impl WorkloadMtls {
    /// The mode of `port`; `None`: the proxy's default.
    pub fn mode(&self, port: u16) -> Option<MtlsMode> {
        self.ports.get(&port).copied().or(self.mode)
    }

    /// `namespace/name` of the policy that sets `port`'s mode, if one does.
    pub fn policy_for(&self, port: u16) -> Option<&str> {
        match self.ports.contains_key(&port) {
            true => self.ports_by.as_deref(),
            false => self.decided_by.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
    use super::*;
    use crate::load::{Source, parse_all};

    fn load(files: &[(&str, &str)]) -> Result<Vec<PeerAuthentication>, Vec<String>> {
        let sources: Vec<Source> = files
            .iter()
            .map(|(name, text)| Source {
                name: (*name).into(),
                text: (*text).into(),
            })
            .collect();
        parse_all(&sources)
            .map(|loaded| loaded.peer_authentications)
            .map_err(|e| e.problems)
    }

    fn doc(namespace: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"
        )
    }

    fn one_problem(text: &str) -> String {
        let problems = load(&[("p.yaml", text)]).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems[0].clone()
    }

    #[test]
    fn every_form_loads() {
        let text = [
            doc("zt-system", "default", "  mtls:\n    mode: STRICT\n"),
            "---\n".into(),
            doc("production", "default", "  mtls: {}\n").replace("/v1\n", "/v1beta1\n"),
            "---\n".into(),
            doc(
                "production",
                "billing",
                "  selector:\n    matchLabels:\n      app: billing\n  mtls:\n    mode: PERMISSIVE\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n    \"9090\":\n      mode: UNSET\n",
            ),
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: empty, namespace: staging}\n".into(),
        ]
        .concat();
        let all = load(&[("p.yaml", &text)]).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].mode, Some(MtlsMode::Strict));
        assert_eq!(all[0].selector, None);
        assert_eq!(all[1].mode, None);
        assert_eq!(
            all[2].ports,
            BTreeMap::from([(8080, Some(MtlsMode::Disable)), (9090, None)])
        );
        assert_eq!(all[2].origin.line, 18);
        assert_eq!((all[3].mode, all[3].ports.len()), (None, 0));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let problem = one_problem(&doc("production", "a", "  mtls:\n    mode: STRCT\n"));
        assert!(
            problem.starts_with("p.yaml:8: spec.mtls.mode: unknown variant `STRCT`"),
            "{problem}"
        );
        let problem = one_problem(&doc("production", "a", "  mtls:\n    mode: strict\n"));
        assert!(problem.starts_with("p.yaml:8: spec.mtls.mode:"), "{problem}");

        let problem = one_problem(&doc(
            "production",
            "a",
            "  mtls:\n    mode: STRICT\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n",
        ));
        assert!(
            problem.starts_with("p.yaml:9: spec.portLevelMtls: needs spec.selector.matchLabels"),
            "{problem}"
        );
        // A selector without labels is namespace-wide, as Istio reads it.
        let problem = one_problem(&doc(
            "production",
            "a",
            "  selector: {}\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n",
        ));
        assert!(problem.starts_with("p.yaml:8: spec.portLevelMtls:"), "{problem}");

        for bad in ["0", "65536", "\"http\"", "-1"] {
            let problem = one_problem(&doc(
                "production",
                "a",
                &format!(
                    "  selector:\n    matchLabels: {{app: a}}\n  portLevelMtls:\n    {bad}:\n      mode: STRICT\n"
                ),
            ));
            assert!(
                problem.starts_with("p.yaml:10: spec.portLevelMtls:"),
                "{bad}: {problem}"
            );
            assert!(problem.contains("is not a port (1-65535)"), "{bad}: {problem}");
        }

        let problem = one_problem(&doc(
            "production",
            "a",
            "  mtls:\n    mode: STRICT\n  mtlsMode: STRICT\n",
        ));
        assert!(
            problem.starts_with("p.yaml:9: spec: unknown field `mtlsMode`"),
            "{problem}"
        );
        let problem = one_problem(&doc(
            "production",
            "a",
            "  mtls:\n    mode: STRICT\n    ports: [1]\n",
        ));
        assert!(
            problem.starts_with("p.yaml:9: spec.mtls: unknown field `ports`"),
            "{problem}"
        );
        let problem =
            one_problem(&doc("production", "a", "  mtls:\n    mode: STRICT\n").replace("/v1\n", "/v2\n"));
        assert!(problem.starts_with("p.yaml:1: apiVersion:"), "{problem}");
        let problem = one_problem(
            &doc("production", "a", "  mtls:\n    mode: STRICT\n").replace("PeerAuthentication", "PeerAuthn"),
        );
        assert!(
            problem.starts_with("p.yaml:2: kind: unknown variant `PeerAuthn`")
                && problem.contains("PeerAuthentication"),
            "{problem}"
        );
    }

    #[test]
    fn ambiguity_is_refused_naming_both_files() {
        let strict = doc("production", "a", "  mtls:\n    mode: STRICT\n");
        let permissive = doc("production", "b", "  mtls:\n    mode: PERMISSIVE\n");
        let problems = load(&[("one.yaml", &strict), ("two.yaml", &permissive)]).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("two.yaml:1: spec.selector: namespace production already has a namespace-wide PeerAuthentication, production/a at one.yaml:1"),
            "{problems:?}"
        );

        let selected = |name: &str| {
            doc(
                "production",
                name,
                "  selector:\n    matchLabels: {app: billing}\n",
            )
        };
        let problems = load(&[("one.yaml", &selected("a")), ("two.yaml", &selected("b"))]).unwrap_err();
        assert!(
            problems[0].contains("selecting app=billing, production/a at one.yaml:1"),
            "{problems:?}"
        );

        let problems = load(&[("one.yaml", &strict), ("two.yaml", &strict)]).unwrap_err();
        assert!(
            problems[0].starts_with(
                "two.yaml:1: metadata: PeerAuthentication production/a is already defined at one.yaml:1"
            ),
            "{problems:?}"
        );

        // Other namespaces, other selectors, and an AuthorizationPolicy of the
        // same name are no conflict.
        let elsewhere = doc("staging", "a", "  mtls:\n    mode: STRICT\n");
        let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: production}\n";
        let other = doc("production", "c", "  selector:\n    matchLabels: {app: orders}\n");
        let all = load(&[
            ("1.yaml", &strict),
            ("2.yaml", &elsewhere),
            ("3.yaml", policy),
            ("4.yaml", &selected("b")),
            ("5.yaml", &other),
        ])
        .unwrap();
        assert_eq!(all.len(), 4);
    }

    fn set(docs: &[String]) -> PeerAuthentications {
        let text = docs.join("---\n");
        PeerAuthentications::new(load(&[("p.yaml", &text)]).unwrap(), "zt-system")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn the_most_specific_level_that_sets_a_mode_wins() {
        use MtlsMode::{Disable, Permissive, Strict};
        let mesh = doc("zt-system", "mesh", "  mtls:\n    mode: STRICT\n");
        let ns_permissive = doc("production", "ns", "  mtls:\n    mode: PERMISSIVE\n");
        let ns_unset = doc("production", "ns", "  mtls:\n    mode: UNSET\n");
        let billing = |mode: &str| {
            doc(
                "production",
                "billing",
                &format!("  selector:\n    matchLabels: {{app: billing}}\n  mtls:\n    mode: {mode}\n"),
            )
        };
        let billing_labels = labels(&[("app", "billing"), ("version", "v1")]);
        let orders_labels = labels(&[("app", "orders")]);
        // Name, policies, the workload's labels, the mode and the policy that sets it.
        type Case<'a> = (
            &'a str,
            Vec<String>,
            &'a BTreeMap<String, String>,
            Option<MtlsMode>,
            Option<&'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            ("nothing", vec![], &billing_labels, None, None),
            (
                "mesh only",
                vec![mesh.clone()],
                &billing_labels,
                Some(Strict),
                Some("zt-system/mesh"),
            ),
            (
                "namespace over mesh",
                vec![mesh.clone(), ns_permissive.clone()],
                &billing_labels,
                Some(Permissive),
                Some("production/ns"),
            ),
            (
                "namespace UNSET inherits the mesh",
                vec![mesh.clone(), ns_unset.clone()],
                &billing_labels,
                Some(Strict),
                Some("zt-system/mesh"),
            ),
            (
                "workload over namespace",
                vec![mesh.clone(), ns_permissive.clone(), billing("DISABLE")],
                &billing_labels,
                Some(Disable),
                Some("production/billing"),
            ),
            (
                "workload UNSET inherits the namespace",
                vec![mesh.clone(), ns_permissive.clone(), billing("UNSET")],
                &billing_labels,
                Some(Permissive),
                Some("production/ns"),
            ),
            (
                "every level UNSET inherits the mesh",
                vec![mesh.clone(), ns_unset.clone(), billing("UNSET")],
                &billing_labels,
                Some(Strict),
                Some("zt-system/mesh"),
            ),
            (
                "a workload not selected",
                vec![mesh.clone(), ns_permissive.clone(), billing("DISABLE")],
                &orders_labels,
                Some(Permissive),
                Some("production/ns"),
            ),
            (
                "another namespace's policy does not apply",
                vec![doc("staging", "ns", "  mtls:\n    mode: DISABLE\n")],
                &billing_labels,
                None,
                None,
            ),
            (
                "a workload policy in the root namespace is ignored",
                vec![doc(
                    "zt-system",
                    "w",
                    "  selector:\n    matchLabels: {app: billing}\n  mtls:\n    mode: DISABLE\n",
                )],
                &billing_labels,
                None,
                None,
            ),
        ];
        for (name, docs, labels, want, by) in cases {
            let resolved = set(&docs).for_workload("production", labels);
            assert_eq!(resolved.mode, want, "{name}");
            assert_eq!(resolved.decided_by.as_deref(), by, "{name}");
            assert_eq!(resolved.mode(8080), want, "{name}");
        }
        // In the root namespace itself, its namespace-wide policy is both levels.
        let resolved = set(&[mesh]).for_workload("zt-system", &orders_labels);
        assert_eq!(resolved.mode, Some(Strict));
    }

    #[test]
    fn port_level_modes_override_the_workloads() {
        use MtlsMode::{Disable, Permissive, Strict};
        let ns = doc("production", "ns", "  mtls:\n    mode: STRICT\n");
        let billing = doc(
            "production",
            "billing",
            "  selector:\n    matchLabels: {app: billing}\n  mtls:\n    mode: PERMISSIVE\n  portLevelMtls:\n    15006:\n      mode: STRICT\n    15007:\n      mode: DISABLE\n    15008:\n      mode: UNSET\n    15009: {}\n",
        );
        let resolved = set(&[ns.clone(), billing]).for_workload("production", &labels(&[("app", "billing")]));
        assert_eq!(resolved.mode, Some(Permissive));
        assert_eq!(resolved.mode(15006), Some(Strict));
        assert_eq!(resolved.mode(15007), Some(Disable));
        // UNSET on a port inherits the workload's resolved mode.
        assert_eq!(resolved.mode(15008), Some(Permissive));
        assert_eq!(resolved.mode(15009), Some(Permissive));
        assert_eq!(resolved.mode(1), Some(Permissive));
        assert_eq!(resolved.policy_for(15007), Some("production/billing"));
        assert_eq!(resolved.policy_for(1), Some("production/billing"));

        // Port-level only, workload mode UNSET: the port's mode, and the
        // namespace's elsewhere; with nothing above, only the port is set.
        let ports_only = doc(
            "production",
            "billing",
            "  selector:\n    matchLabels: {app: billing}\n  portLevelMtls:\n    15006:\n      mode: PERMISSIVE\n    15008:\n      mode: UNSET\n",
        );
        let resolved =
            set(&[ns, ports_only.clone()]).for_workload("production", &labels(&[("app", "billing")]));
        assert_eq!(
            (resolved.mode(15006), resolved.mode(15007), resolved.mode(15008)),
            (Some(Permissive), Some(Strict), Some(Strict))
        );
        assert_eq!(resolved.policy_for(15007), Some("production/ns"));
        let resolved = set(&[ports_only]).for_workload("production", &labels(&[("app", "billing")]));
        assert_eq!(
            (resolved.mode(15006), resolved.mode(15007), resolved.mode(15008)),
            (Some(Permissive), None, None)
        );
    }

    #[test]
    fn overlapping_workload_policies_resolve_by_name() {
        let by_app = doc(
            "production",
            "b-by-app",
            "  selector:\n    matchLabels: {app: billing}\n  mtls:\n    mode: DISABLE\n",
        );
        let by_version = doc(
            "production",
            "a-by-version",
            "  selector:\n    matchLabels: {version: v1}\n  mtls:\n    mode: STRICT\n",
        );
        let resolved = set(&[by_app, by_version])
            .for_workload("production", &labels(&[("app", "billing"), ("version", "v1")]));
        assert_eq!(resolved.mode, Some(MtlsMode::Strict));
        assert_eq!(resolved.decided_by.as_deref(), Some("production/a-by-version"));
        assert_eq!(resolved.shadowed, vec!["production/b-by-app".to_owned()]);
    }
}
