//! Istio AuthorizationPolicies from observed traffic: one ALLOW policy per
//! destination workload (its namespace, its `app` label as the selector), one
//! rule per calling SPIFFE ID, with the methods and path templates it was
//! seen using, or the TCP ports it connected to. Only verified callers whose
//! requests were served become rules; everything else is reported, never
//! allowed. The output is the same for the same traffic (stable order and
//! names), and the policies are dry-run unless asked otherwise, so that they
//! are first evaluated in shadow (`promote`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::paths::{self, PathUse, Templating};
use crate::traffic::{Caller, Flow, Outcome, Seen, Traffic};

/// How policies are generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// A path template (or TCP port) of a rule seen fewer times than this is
    /// left out, and reported.
    pub min_count: u64,
    /// Identifier segments and `{**}` prefixes.
    pub templating: Templating,
    /// Mark the policies `istio.io/dry-run: "true"` (evaluated in shadow).
    pub dry_run: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            min_count: 1,
            templating: Templating::default(),
            dry_run: true,
        }
    }
}

/// One policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Where it goes, relative to the output directory: `NAMESPACE/APP.yaml`.
    pub path: PathBuf,
    /// Its YAML.
    pub text: String,
}

/// Requests left out of the policies, grouped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excluded {
    /// `(destination, caller's address)`: plaintext callers, which have no
    /// verified identity to allow.
    pub plaintext: BTreeMap<(String, String), Seen>,
    /// `(destination, caller, what)`: seen fewer than `min_count` times.
    pub below_min_count: BTreeMap<(String, String, String), Seen>,
    /// `(destination, caller, policy)`: denied by a DENY or CUSTOM policy.
    pub denied_by_policy: BTreeMap<(String, String, String), Seen>,
    /// `(destination, caller)`: refused because no ALLOW policy matched, in
    /// enforce mode (the app never got them).
    pub refused: BTreeMap<(String, String), Seen>,
    /// Destinations without an `app` label, or whose names cannot name a
    /// policy: no selector could pick exactly them.
    pub unselectable: BTreeMap<String, Seen>,
    /// `(destination, path, why)`: paths a policy cannot match as they are
    /// (and records without the port or path a rule would need).
    pub unusable_paths: BTreeMap<(String, String, &'static str), Seen>,
}

impl Excluded {
    /// Whether nothing was left out.
    pub fn is_empty(&self) -> bool {
        self.plaintext.is_empty()
            && self.below_min_count.is_empty()
            && self.denied_by_policy.is_empty()
            && self.refused.is_empty()
            && self.unselectable.is_empty()
            && self.unusable_paths.is_empty()
    }
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generated {
    /// One file per destination workload, in path order.
    pub files: Vec<File>,
    /// Rules written, over all files.
    pub rules: usize,
    /// Requests the rules were made from.
    pub covered: u64,
    /// What was left out.
    pub excluded: Excluded,
}

/// A rule's paths (by template) and TCP ports.
#[derive(Debug, Default)]
struct RuleUse {
    paths: BTreeMap<String, PathUse>,
    ports: BTreeMap<u16, Seen>,
}

impl RuleUse {
    /// Requests it covers.
    fn requests(&self) -> u64 {
        self.paths.values().map(|u| u.count).sum::<u64>() + self.ports.values().map(|s| s.count).sum::<u64>()
    }

    /// When it was first and last seen.
    fn span_ms(&self) -> (u64, u64) {
        let spans = self
            .paths
            .values()
            .map(|u| (u.first_ms, u.last_ms))
            .chain(self.ports.values().map(|s| (s.first_ms, s.last_ms)));
        spans.fold((u64::MAX, 0), |(first, last), (f, l)| (first.min(f), last.max(l)))
    }
}

/// A destination's rules, by calling SPIFFE ID.
type Rules = BTreeMap<String, RuleUse>;

/// Generates the policies that allow what `traffic` shows verified callers
/// doing, and reports the rest.
pub fn generate(traffic: &Traffic, options: &Options) -> Generated {
    let mut excluded = Excluded::default();
    let mut destinations: BTreeMap<(String, String), Rules> = BTreeMap::new();
    for (flow, seen) in traffic.each_flow() {
        let (flow, seen) = (&flow, &seen);
        let caller = match &flow.caller {
            Caller::Principal(principal) => principal,
            Caller::Plaintext(address) => {
                merge(
                    &mut excluded.plaintext,
                    (flow.destination.clone(), address.clone()),
                    seen,
                );
                continue;
            }
        };
        match &flow.outcome {
            Outcome::Allowed | Outcome::LetThrough => {}
            Outcome::DeniedBy(policy) => {
                let key = (flow.destination.clone(), caller.clone(), policy.clone());
                merge(&mut excluded.denied_by_policy, key, seen);
                continue;
            }
            Outcome::Refused => {
                merge(
                    &mut excluded.refused,
                    (flow.destination.clone(), caller.clone()),
                    seen,
                );
                continue;
            }
        }
        let Some(workload) = selectable(flow) else {
            merge(&mut excluded.unselectable, flow.destination.clone(), seen);
            continue;
        };
        let rule = destinations
            .entry(workload)
            .or_default()
            .entry(caller.clone())
            .or_default();
        if !flow.http {
            match flow.port {
                Some(port) => merge(&mut rule.ports, port, seen),
                None => {
                    let key = (
                        flow.destination.clone(),
                        "(TCP)".to_owned(),
                        "a connection without a port",
                    );
                    merge(&mut excluded.unusable_paths, key, seen);
                }
            }
            continue;
        }
        let (Some(method), Some(path)) = (&flow.method, &flow.path) else {
            let key = (
                flow.destination.clone(),
                "(HTTP)".to_owned(),
                "a request without a method or path",
            );
            merge(&mut excluded.unusable_paths, key, seen);
            continue;
        };
        if let Some(why) = paths::unusable(path) {
            let key = (flow.destination.clone(), path.clone(), why);
            merge(&mut excluded.unusable_paths, key, seen);
            continue;
        }
        let used = PathUse {
            methods: BTreeSet::from([method.clone()]),
            count: seen.count,
            distinct: 1,
            first_ms: seen.first_ms,
            last_ms: seen.last_ms,
        };
        rule.paths
            .entry(paths::template(path, &options.templating))
            .and_modify(|u| u.merge(&used))
            .or_insert(used);
    }

    let mut generated = Generated::default();
    for ((namespace, app), rules) in destinations {
        let destination = format!("{namespace}/{app}");
        let mut written = Vec::new();
        for (caller, rule) in rules {
            let rule = keep_frequent(rule, options, &destination, &caller, &mut excluded);
            if !rule.paths.is_empty() || !rule.ports.is_empty() {
                written.push((caller, rule));
            }
        }
        if written.is_empty() {
            continue;
        }
        generated.rules += written.len();
        generated.covered += written.iter().map(|(_, rule)| rule.requests()).sum::<u64>();
        generated.files.push(File {
            path: PathBuf::from(&namespace).join(format!("{app}.yaml")),
            text: render(&namespace, &app, &written, options),
        });
    }
    generated.excluded = excluded;
    generated
}

/// Why generated policies fail their own check: either is a bug in the
/// generator, never a property of the traffic.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The generated text does not load.
    #[error("the generated policies do not load: {0}")]
    Unloadable(zt_policy::LoadError),
    /// A request a rule was made from is not allowed by the policies.
    #[error("the generated policies do not allow an observed request ({0})")]
    NotAllowed(String),
}

/// Checks `generated` against the traffic it was made from: every served
/// request of a verified caller that went into a rule must be allowed by the
/// generated policies alone (their shadow decision: they may be dry-run).
/// Callers left out because one of their paths was too rare are not checked.
pub fn check(generated: &Generated, traffic: &Traffic) -> Result<(), CheckError> {
    let sources: Vec<zt_policy::load::Source> = generated
        .files
        .iter()
        .map(|f| zt_policy::load::Source {
            name: f.path.clone(),
            text: f.text.clone(),
        })
        .collect();
    let set = zt_policy::PolicySet::new(
        zt_policy::load::parse(&sources).map_err(CheckError::Unloadable)?,
        zt_policy::DEFAULT_ROOT_NAMESPACE,
    );
    let excluded = &generated.excluded;
    let rare: std::collections::HashSet<(&str, &str)> = excluded
        .below_min_count
        .keys()
        .map(|(destination, caller, _)| (destination.as_str(), caller.as_str()))
        .collect();
    // The policies of each destination, chosen once.
    let mut by_destination: std::collections::HashMap<String, zt_policy::WorkloadPolicies> =
        std::collections::HashMap::new();
    for (flow, _) in traffic.each_flow() {
        let Caller::Principal(caller) = &flow.caller else {
            continue;
        };
        let left_out = !flow.outcome.served()
            || excluded.unselectable.contains_key(&flow.destination)
            || flow.path.as_deref().is_some_and(|p| paths::unusable(p).is_some())
            || rare.contains(&(flow.destination.as_str(), caller.as_str()));
        if left_out {
            continue;
        }
        let request = flow.request();
        let policies = by_destination
            .entry(flow.destination.clone())
            .or_insert_with(|| set.for_workload(&request.destination.namespace, &request.destination.labels));
        let decision = policies.evaluate(&request);
        if decision.dry_run.map_or(decision.decision, |d| d.decision) != zt_policy::Verdict::Allow {
            return Err(CheckError::NotAllowed(crate::promote::describe(&flow)));
        }
    }
    Ok(())
}

/// The rule without what was seen too rarely (reported), its paths collapsed.
fn keep_frequent(
    rule: RuleUse,
    options: &Options,
    destination: &str,
    caller: &str,
    excluded: &mut Excluded,
) -> RuleUse {
    let mut kept = RuleUse::default();
    for (path, used) in paths::collapse(rule.paths, options.templating.collapse_after) {
        if used.count < options.min_count {
            let methods: Vec<&str> = used.methods.iter().map(String::as_str).collect();
            let what = format!("{} {path}", methods.join(","));
            let seen = Seen {
                count: used.count,
                first_ms: used.first_ms,
                last_ms: used.last_ms,
            };
            merge(
                &mut excluded.below_min_count,
                (destination.into(), caller.into(), what),
                &seen,
            );
        } else {
            kept.paths.insert(path, used);
        }
    }
    for (port, seen) in rule.ports {
        if seen.count < options.min_count {
            let key = (destination.into(), caller.into(), format!("TCP port {port}"));
            merge(&mut excluded.below_min_count, key, &seen);
        } else {
            kept.ports.insert(port, seen);
        }
    }
    kept
}

/// The destination's namespace and `app` label, if a policy can select it.
fn selectable(flow: &Flow) -> Option<(String, String)> {
    let (namespace, app) = flow.workload();
    let app = app?;
    let name_ok = |name: &str| zt_policy::model::Name::try_from(name.to_owned()).is_ok();
    let label_ok = !app.is_empty()
        && app.len() <= 63
        && app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (name_ok(namespace) && label_ok).then(|| (namespace.to_owned(), app.to_owned()))
}

fn merge<K: Ord>(map: &mut BTreeMap<K, Seen>, key: K, seen: &Seen) {
    map.entry(key).and_modify(|s| s.merge(seen)).or_insert(*seen);
}

/// The policy's name: `APP-observed`, made a Kubernetes name.
pub fn policy_name(app: &str) -> String {
    let mut name: String = app
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    name.truncate(63 - "-observed".len());
    let name = name.trim_matches(['-', '.']);
    if name.is_empty() {
        "observed".to_owned()
    } else {
        format!("{name}-observed")
    }
}

/// The comment above a generated policy while it is dry-run; `promote`
/// removes it with the annotation.
pub const DRY_RUN_COMMENT: &str =
    "# Dry-run: evaluated in shadow until `zt policy promote` finds no would-be denial.";

/// `1 request`, `2 requests`.
pub fn requests(count: u64) -> String {
    if count == 1 {
        "1 request".to_owned()
    } else {
        format!("{count} requests")
    }
}

/// A YAML scalar: always double-quoted (JSON's escapes are YAML's).
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Unix milliseconds as RFC 3339, to the second, UTC.
pub fn rfc3339(ms: u64) -> String {
    let seconds = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{seconds}"))
}

fn render(namespace: &str, app: &str, rules: &[(String, RuleUse)], options: &Options) -> String {
    let mut out = String::new();
    let total: u64 = rules.iter().map(|(_, rule)| rule.requests()).sum();
    let (first, last) = rules
        .iter()
        .map(|(_, rule)| rule.span_ms())
        .fold((u64::MAX, 0), |(first, last), (f, l)| (first.min(f), last.max(l)));
    let window = format!("between {} and {}", rfc3339(first), rfc3339(last));
    let _ = writeln!(
        out,
        "# Generated by `zt policy generate` from {} to {namespace}/{app}\n\
         # observed {window}. Review and tighten it: it allows only what verified callers did.",
        requests(total)
    );
    if options.dry_run {
        let _ = writeln!(out, "{}", DRY_RUN_COMMENT);
    }
    let _ = writeln!(out, "apiVersion: security.istio.io/v1");
    let _ = writeln!(out, "kind: AuthorizationPolicy");
    let _ = writeln!(out, "metadata:");
    let _ = writeln!(out, "  name: {}", policy_name(app));
    let _ = writeln!(out, "  namespace: {namespace}");
    if options.dry_run {
        let _ = writeln!(out, "  annotations:");
        let _ = writeln!(out, "    {}: \"true\"", zt_policy::policy::DRY_RUN_ANNOTATION);
    }
    let _ = writeln!(out, "spec:");
    let _ = writeln!(out, "  selector:");
    let _ = writeln!(out, "    matchLabels:");
    let _ = writeln!(out, "      app: {}", quoted(app));
    let _ = writeln!(out, "  action: ALLOW");
    let _ = writeln!(out, "  rules:");
    for (caller, rule) in rules {
        let count = rule.requests();
        let distinct: u64 = rule.paths.values().map(|u| u.distinct).sum();
        let (_, last) = rule.span_ms();
        let mut what = requests(count);
        if distinct > 0 {
            let _ = write!(what, ", {distinct} distinct paths");
        }
        if !rule.ports.is_empty() {
            let _ = write!(what, ", {} TCP ports", rule.ports.len());
        }
        let _ = writeln!(out, "  # {caller}: {what}, last seen {}", rfc3339(last));
        let principal = caller.strip_prefix("spiffe://").unwrap_or(caller);
        let _ = writeln!(out, "  - from:");
        let _ = writeln!(out, "    - source:");
        let _ = writeln!(out, "        principals: [{}]", quoted(principal));
        let _ = writeln!(out, "    to:");
        // Paths with the same methods share an operation: the product of its
        // methods and paths is what was seen, no more.
        let mut by_methods: BTreeMap<Vec<&str>, Vec<(&String, &PathUse)>> = BTreeMap::new();
        for (path, used) in &rule.paths {
            by_methods
                .entry(used.methods.iter().map(String::as_str).collect())
                .or_default()
                .push((path, used));
        }
        for (methods, paths) in by_methods {
            let methods: Vec<String> = methods.iter().map(|m| quoted(m)).collect();
            let _ = writeln!(out, "    - operation:");
            let _ = writeln!(out, "        methods: [{}]", methods.join(", "));
            let _ = writeln!(out, "        paths:");
            for (path, used) in paths {
                let mut note = requests(used.count);
                if used.distinct > 1 {
                    let _ = write!(note, ", {} distinct paths", used.distinct);
                }
                let _ = writeln!(out, "        - {}  # {note}", quoted(path));
            }
        }
        if !rule.ports.is_empty() {
            let ports: Vec<String> = rule.ports.keys().map(|p| quoted(&p.to_string())).collect();
            let _ = writeln!(out, "    - operation:");
            let _ = writeln!(out, "        ports: [{}]", ports.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Window;
    use crate::traffic::tests::record;

    const FRONTEND: &str = "spiffe://td/ns/web/sa/frontend";
    const ADMIN: &str = "spiffe://td/ns/ops/sa/admin";

    fn traffic(records: &[zt_audit::Record]) -> Traffic {
        let mut traffic = Traffic::new(Window::default());
        for record in records {
            traffic.add(record);
        }
        traffic
    }

    fn policies(generated: &Generated) -> zt_policy::PolicySet {
        let sources: Vec<zt_policy::load::Source> = generated
            .files
            .iter()
            .map(|f| zt_policy::load::Source {
                name: f.path.clone(),
                text: f.text.clone(),
            })
            .collect();
        let parsed = zt_policy::load::parse(&sources);
        assert!(parsed.is_ok(), "{:?}\n{}", parsed.err(), generated.files[0].text);
        zt_policy::PolicySet::new(parsed.unwrap_or_default(), zt_policy::DEFAULT_ROOT_NAMESPACE)
    }

    fn decide(
        set: &zt_policy::PolicySet,
        caller: Option<&str>,
        method: &str,
        path: &str,
    ) -> zt_policy::Verdict {
        let flow = Traffic::flow_of(&record(1, caller, "shop/cart", method, path)).unwrap();
        let decision = set.evaluate(&flow.request());
        decision.dry_run.map_or(decision.decision, |d| d.decision)
    }

    #[test]
    fn observed_requests_are_allowed_and_nothing_else() {
        let mut records = Vec::new();
        for id in 1..=5 {
            records.push(record(
                1_000 * id,
                Some(FRONTEND),
                "shop/cart",
                "GET",
                &format!("/items/{id}"),
            ));
        }
        records.push(record(9_000, Some(FRONTEND), "shop/cart", "POST", "/items"));
        records.push(record(9_500, Some(ADMIN), "shop/cart", "DELETE", "/items/7"));
        records.push(record(9_600, None, "shop/cart", "GET", "/items/1"));
        let generated = generate(&traffic(&records), &Options::default());
        assert_eq!(generated.files.len(), 1);
        assert_eq!(generated.files[0].path, PathBuf::from("shop/cart.yaml"));
        assert_eq!((generated.rules, generated.covered), (2, 7));
        check(&generated, &traffic(&records)).unwrap();
        let text = &generated.files[0].text;
        assert!(text.contains("istio.io/dry-run: \"true\""), "{text}");
        assert!(text.contains("# spiffe://td/ns/web/sa/frontend: 6 requests, 6 distinct paths, last seen 1970-01-01T00:00:09Z"), "{text}");
        assert!(
            text.contains("- \"/items/{*}\"  # 5 requests, 5 distinct paths"),
            "{text}"
        );

        let set = policies(&generated);
        use zt_policy::Verdict::{Allow, Deny};
        for record in &records[..7] {
            let flow = Traffic::flow_of(record).unwrap();
            let (method, path) = (
                flow.method.clone().unwrap_or_default(),
                flow.path.clone().unwrap_or_default(),
            );
            let caller = record.source_principal.as_deref();
            assert_eq!(decide(&set, caller, &method, &path), Allow, "{method} {path}");
        }
        // Unobserved: another caller, another method, a sibling path, plaintext.
        assert_eq!(
            decide(&set, Some("spiffe://td/ns/web/sa/other"), "GET", "/items/1"),
            Deny
        );
        assert_eq!(decide(&set, Some(FRONTEND), "DELETE", "/items/1"), Deny);
        assert_eq!(decide(&set, Some(FRONTEND), "GET", "/orders/1"), Deny);
        assert_eq!(decide(&set, Some(FRONTEND), "GET", "/items/1/raw"), Deny);
        assert_eq!(decide(&set, Some(ADMIN), "GET", "/items/7"), Deny);
        assert_eq!(decide(&set, None, "GET", "/items/1"), Deny);

        assert_eq!(generated.excluded.plaintext.len(), 1);
        assert_eq!(
            generated.excluded.plaintext.values().next().map(|s| s.count),
            Some(1)
        );
    }

    #[test]
    fn output_is_stable_and_grows_by_small_diffs() {
        let mut records: Vec<_> = (1..=3)
            .map(|id| record(id, Some(FRONTEND), "shop/cart", "GET", &format!("/items/{id}")))
            .collect();
        let first = generate(&traffic(&records), &Options::default());
        assert_eq!(first, generate(&traffic(&records), &Options::default()));
        records.push(record(4, Some(FRONTEND), "shop/cart", "PUT", "/items/4"));
        let second = generate(&traffic(&records), &Options::default());
        let (a, b) = (&first.files[0].text, &second.files[0].text);
        let changed = b.lines().filter(|line| !a.lines().any(|l| l == *line)).count();
        assert!(changed <= 6, "a small diff:\n{a}\n---\n{b}");
    }

    #[test]
    fn what_cannot_be_allowed_is_reported_not_allowed() {
        let mut denied = record(1, Some(FRONTEND), "shop/cart", "GET", "/admin");
        denied.decision = "DENY".into();
        denied.policy = Some("shop/deny-admin".into());
        let mut refused = record(1, Some(ADMIN), "shop/cart", "GET", "/x");
        refused.decision = "DENY".into();
        refused.mode = "enforce".into();
        let mut portless = record(1, Some(FRONTEND), "shop/cart", "", "");
        portless.protocol = "tcp".into();
        portless.port = None;
        let records = vec![
            denied,
            refused,
            portless,
            record(1, Some(FRONTEND), "shop", "GET", "/no-app-label"),
            record(1, Some(FRONTEND), "shop/cart", "GET", "/a{b}"),
            record(1, Some(FRONTEND), "shop/cart", "GET", "/rare"),
            record(1, Some(FRONTEND), "shop/cart", "GET", "/often"),
            record(2, Some(FRONTEND), "shop/cart", "GET", "/often"),
        ];
        let options = Options {
            min_count: 2,
            ..Options::default()
        };
        let generated = generate(&traffic(&records), &options);
        let excluded = &generated.excluded;
        assert_eq!(excluded.denied_by_policy.len(), 1);
        assert_eq!(excluded.refused.len(), 1);
        assert_eq!(excluded.unselectable.keys().collect::<Vec<_>>(), ["shop"]);
        assert_eq!(excluded.unusable_paths.len(), 2, "{:?}", excluded.unusable_paths);
        assert!(
            excluded
                .unusable_paths
                .keys()
                .any(|k| k.2 == "a connection without a port")
        );
        assert_eq!(
            excluded
                .below_min_count
                .keys()
                .map(|k| k.2.as_str())
                .collect::<Vec<_>>(),
            ["GET /rare"]
        );
        assert_eq!(generated.covered, 2);
        let text = &generated.files[0].text;
        assert!(
            !text.contains("/rare") && !text.contains("/admin") && !text.contains("/x\""),
            "{text}"
        );
    }

    #[test]
    fn tcp_flows_become_port_rules() {
        let mut tcp = record(1, Some(FRONTEND), "data/postgres", "", "");
        tcp.protocol = "tcp".into();
        tcp.port = Some(5432);
        let generated = generate(&traffic(&[tcp.clone()]), &Options::default());
        assert!(
            generated.files[0].text.contains("ports: [\"5432\"]"),
            "{}",
            generated.files[0].text
        );
        let set = policies(&generated);
        let flow = Traffic::flow_of(&tcp).unwrap();
        let decision = set.evaluate(&flow.request());
        assert_eq!(
            decision.dry_run.map(|d| d.decision),
            Some(zt_policy::Verdict::Allow)
        );
        let mut other_port = flow.request();
        other_port.destination.port = Some(5433);
        assert_eq!(
            set.evaluate(&other_port).dry_run.map(|d| d.decision),
            Some(zt_policy::Verdict::Deny)
        );
    }

    #[test]
    fn policy_names_are_kubernetes_names() {
        assert_eq!(policy_name("cart"), "cart-observed");
        assert_eq!(policy_name("My_App"), "my-app-observed");
        assert_eq!(policy_name("_"), "observed");
        assert!(policy_name(&"a".repeat(80)).len() <= 63);
    }
}
