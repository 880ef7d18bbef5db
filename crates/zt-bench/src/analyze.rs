//! `zt analyze` on a synthetic mesh: 1 000 workloads and 10 000
//! AuthorizationPolicies by default, timed in its stages.

use std::hint::black_box;

use crate::{Error, Figure, measure};

/// A synthetic mesh: workloads in namespaces of ten, and ALLOW policies that
/// each let one caller (exact principal, a principal prefix, or a namespace)
/// reach one workload; one namespace in ten also has a DENY of plaintext, and
/// one workload in a hundred has no ALLOW policy at all.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The workloads file (YAML).
    pub workloads: String,
    /// The policies, one YAML text per namespace: (file name, text).
    pub policies: Vec<(String, String)>,
}

/// The mesh of `workloads` workloads and `policies` policies.
pub fn mesh(workloads: usize, policies: usize) -> Mesh {
    let namespace = |i: usize| format!("ns-{}", i / 10);
    let mut list = String::new();
    for i in 0..workloads {
        list.push_str(&format!(
            "- {{name: app-{i}, namespace: {ns}, labels: {{app: app-{i}}}, spiffe_id: \"spiffe://cluster.local/ns/{ns}/sa/app-{i}\", x509_ttl: 3600, jwt_ttl: 300}}\n",
            ns = namespace(i)
        ));
    }
    let mut files: Vec<(String, String)> = Vec::new();
    // One DENY per hundred workloads; the ALLOWs spread evenly over the
    // workloads that have any, so that the set has `policies` in all.
    let denies = workloads.div_ceil(100);
    let with_allow = (workloads - workloads / 100).max(1);
    let allows = policies.saturating_sub(denies);
    let mut k = 0;
    for i in 0..workloads {
        let ns = namespace(i);
        if i % 10 == 0 {
            files.push((format!("{ns}.yaml"), String::new()));
        }
        let Some((_, text)) = files.last_mut() else {
            continue;
        };
        if i % 10 == 0 && i % 100 == 0 {
            text.push_str(&format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-plaintext, namespace: {ns}}}\nspec:\n  action: DENY\n  rules:\n  - from: [{{source: {{notPrincipals: [\"*\"]}}}}]\n---\n"
            ));
        }
        if i % 100 == 99 {
            continue; // no ALLOW policy: open to every caller
        }
        let per_workload = allows / with_allow + usize::from(k < allows % with_allow);
        k += 1;
        for j in 0..per_workload {
            let caller = (i * 7 + j * 131 + 1) % workloads;
            let source = match j % 10 {
                // A principal prefix: every workload of the caller's namespace.
                0 => format!("principals: [\"cluster.local/ns/{}/*\"]", namespace(caller)),
                // A namespace.
                1 => format!("namespaces: [\"{}\"]", namespace(caller)),
                _ => format!(
                    "principals: [\"cluster.local/ns/{}/sa/app-{caller}\"]",
                    namespace(caller)
                ),
            };
            text.push_str(&format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: app-{i}-{j}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  rules:\n  - from: [{{source: {{{source}}}}}]\n    to: [{{operation: {{methods: [GET, POST], paths: [\"/api/v{j}/*\"]}}}}]\n---\n"
            ));
        }
    }
    Mesh {
        workloads: list,
        policies: files,
    }
}

/// Times `zt analyze`'s stages on [`mesh`]`(workloads, policies)`, `runs`
/// times each: reading the policies (YAML), the blast radius (reach read from
/// the rules and its transitive closure), the whole report (findings
/// included) with its JSON and HTML.
pub fn run(
    workloads: usize,
    policies: usize,
    runs: usize,
    mut report: impl FnMut(Figure),
) -> Result<(), Error> {
    let mesh = mesh(workloads, policies);
    let sources: Vec<zt_policy::load::Source> = mesh
        .policies
        .iter()
        .map(|(name, text)| zt_policy::load::Source {
            name: name.into(),
            text: text.clone(),
        })
        .collect();
    let list = zt_analyze::workloads::parse(&mesh.workloads).map_err(|e| Error::Failed(e.to_string()))?;
    let loaded = zt_policy::load::parse(&sources).map_err(Error::Policies)?;
    let count = loaded.len();
    let set = zt_policy::PolicySet::new(loaded, zt_policy::DEFAULT_ROOT_NAMESPACE);
    let label = format!("{} workloads, {count} policies", list.len());
    let n = runs.max(1);

    let samples = measure(n, || {
        black_box(zt_policy::load::parse(black_box(&sources)).ok());
    });
    report(Figure::Calls {
        name: format!("read the policies (YAML) — {label}"),
        samples,
    });
    let samples = measure(n, || {
        black_box(zt_analyze::reach::analyze(
            set.policies(),
            zt_policy::DEFAULT_ROOT_NAMESPACE,
            black_box(&list),
        ));
    });
    report(Figure::Calls {
        name: format!("blast radius — {label}"),
        samples,
    });
    let samples = measure(n, || {
        let analysed = zt_analyze::analyze(zt_analyze::Input {
            policies: zt_analyze::Policies {
                set: &set,
                from: "bench".into(),
            },
            root_namespace: zt_policy::DEFAULT_ROOT_NAMESPACE,
            workloads: &list,
            workloads_from: "bench".into(),
            skipped_ids: Vec::new(),
            traffic: None,
            credentials: Vec::new(),
            ca: Vec::new(),
            against: None,
        });
        black_box((analysed.to_json(), zt_analyze::html::render(&analysed)));
    });
    report(Figure::Calls {
        name: format!("whole report, JSON and HTML — {label}"),
        samples,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn the_mesh_loads_and_has_what_it_says() {
        let mesh = mesh(100, 1000);
        let sources: Vec<zt_policy::load::Source> = mesh
            .policies
            .iter()
            .map(|(name, text)| zt_policy::load::Source {
                name: name.into(),
                text: text.clone(),
            })
            .collect();
        let policies = zt_policy::load::parse(&sources).unwrap();
        // One DENY; 999 ALLOWs over the 99 workloads that have any.
        assert_eq!(policies.len(), 1000);
        assert_eq!(zt_analyze::workloads::parse(&mesh.workloads).unwrap().len(), 100);
        let mut figures = 0;
        run(20, 100, 1, |_| figures += 1).unwrap();
        assert_eq!(figures, 3);
    }
}
