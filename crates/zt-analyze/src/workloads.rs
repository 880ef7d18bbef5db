//! The workloads of a mesh: a name, a namespace, labels (what policies select)
//! and a SPIFFE ID (what policies' `principals` match).
//!
//! Two sources:
//!
//! - a file, YAML or JSON, a list of
//!   `{name, namespace, labels, spiffe_id, x509_ttl?, jwt_ttl?}` (TTLs in
//!   seconds, optional: they feed the credential lifetimes when no server is
//!   asked);
//! - zt server's registration entries: an entry whose SPIFFE ID has Istio's
//!   form `spiffe://TD/ns/NS/sa/SA` is the workload `NS/SA`, in namespace `NS`
//!   with the labels `{app: SA}` — the way `zt up` names its services and
//!   labels their proxies. Entries of another form (and node aliases) are no
//!   workload policies could select, and are listed as skipped.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use zt_identity::SpiffeId;

/// One workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its name within the namespace.
    pub name: String,
    /// The namespace policies are looked up in.
    pub namespace: String,
    /// The labels policies' selectors match.
    pub labels: BTreeMap<String, String>,
    /// Its identity.
    pub spiffe_id: SpiffeId,
    /// The X.509-SVID TTL, seconds, when known.
    pub x509_ttl: Option<u64>,
    /// The JWT-SVID TTL, seconds, when known.
    pub jwt_ttl: Option<u64>,
}

impl Workload {
    /// `namespace/name`: how reports name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its principal as policies write it: the SPIFFE ID without `spiffe://`.
    pub fn principal(&self) -> String {
        let id = self.spiffe_id.to_string();
        id.strip_prefix("spiffe://").map(str::to_owned).unwrap_or(id)
    }

    /// The namespace a receiving proxy sees for it: the `/ns/NS/` of its
    /// SPIFFE ID (Istio's `source.namespace`), which may differ from
    /// [`Workload::namespace`] if the file says otherwise.
    pub fn source_namespace(&self) -> Option<String> {
        zt_policy::request::namespace_of(&self.spiffe_id.to_string()).map(str::to_owned)
    }
}

/// Why a workloads file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadsError {
    /// Not a YAML/JSON list of workloads.
    #[error("{0}")]
    Syntax(String),
    /// A workload's field is wrong.
    #[error("workload {index} ({name}): {what}")]
    Field {
        /// Its position in the list, from 0.
        index: usize,
        /// Its name.
        name: String,
        /// What is wrong.
        what: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    spiffe_id: String,
    #[serde(default)]
    x509_ttl: Option<u64>,
    #[serde(default)]
    jwt_ttl: Option<u64>,
}

/// Reads a workloads file's text (YAML, of which JSON is a subset). Names
/// (`namespace/name`) must be unique and SPIFFE IDs valid.
pub fn parse(text: &str) -> Result<Vec<Workload>, WorkloadsError> {
    let raw: Vec<Raw> = serde_yaml_ng::from_str(text).map_err(|e| WorkloadsError::Syntax(e.to_string()))?;
    let mut seen = HashSet::new();
    let mut workloads = Vec::with_capacity(raw.len());
    for (index, raw) in raw.into_iter().enumerate() {
        let fail = |what: String| WorkloadsError::Field {
            index,
            name: raw.name.clone(),
            what,
        };
        if raw.name.is_empty() || raw.namespace.is_empty() {
            return Err(fail("name and namespace must not be empty".into()));
        }
        let spiffe_id = SpiffeId::parse(&raw.spiffe_id)
            .map_err(|e| fail(format!("spiffe_id {:?}: {e}", raw.spiffe_id)))?;
        let workload = Workload {
            name: raw.name.clone(),
            namespace: raw.namespace.clone(),
            labels: raw.labels,
            spiffe_id,
            x509_ttl: raw.x509_ttl,
            jwt_ttl: raw.jwt_ttl,
        };
        if !seen.insert(workload.key()) {
            return Err(fail(format!("{} is listed twice", workload.key())));
        }
        workloads.push(workload);
    }
    Ok(workloads)
}

/// The workload of a registration entry's SPIFFE ID: `spiffe://TD/ns/NS/sa/SA`
/// → `NS/SA`, labels `{app: SA}`; `None` for IDs of another form.
pub fn from_spiffe_id(id: &SpiffeId) -> Option<Workload> {
    let segments: Vec<&str> = id.segments().collect();
    let [ns_key, namespace, sa_key, account] = segments.as_slice() else {
        return None;
    };
    if *ns_key != "ns" || *sa_key != "sa" {
        return None;
    }
    Some(Workload {
        name: (*account).to_owned(),
        namespace: (*namespace).to_owned(),
        labels: BTreeMap::from([("app".to_owned(), (*account).to_owned())]),
        spiffe_id: id.clone(),
        x509_ttl: None,
        jwt_ttl: None,
    })
}

/// The workloads of registration entries' SPIFFE IDs, once each (several
/// entries may share an ID), and the IDs that are not of Istio's form.
pub fn from_spiffe_ids<'a>(ids: impl IntoIterator<Item = &'a SpiffeId>) -> (Vec<Workload>, Vec<String>) {
    let (mut workloads, mut skipped) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id.to_string()) {
            continue;
        }
        match from_spiffe_id(id) {
            Some(workload) => workloads.push(workload),
            None => skipped.push(id.to_string()),
        }
    }
    (workloads, skipped)
}

/// Finds workloads by the name decision records give their destination
/// (`namespace/app`, or `namespace` for a workload without an `app` label).
#[derive(Debug, Default)]
pub struct ByDestination {
    index: std::collections::HashMap<String, usize>,
}

impl ByDestination {
    /// Indexes `workloads` by namespace and `app` label.
    pub fn new(workloads: &[Workload]) -> Self {
        let mut index = std::collections::HashMap::new();
        for (i, w) in workloads.iter().enumerate() {
            let name = match w.labels.get("app") {
                Some(app) => format!("{}/{app}", w.namespace),
                None => w.namespace.clone(),
            };
            index.entry(name).or_insert(i);
        }
        Self { index }
    }

    /// The workload a record's destination names, if known.
    pub fn find(&self, destination: &str) -> Option<usize> {
        self.index.get(destination).copied()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_file_lists_workloads() {
        let text = r#"
- {name: web, namespace: shop, labels: {app: web}, spiffe_id: "spiffe://cluster.local/ns/shop/sa/web", x509_ttl: 3600}
- name: db
  namespace: data
  spiffe_id: spiffe://cluster.local/ns/data/sa/db
"#;
        let workloads = parse(text).unwrap();
        assert_eq!(workloads.len(), 2);
        assert_eq!(workloads[0].key(), "shop/web");
        assert_eq!(workloads[0].principal(), "cluster.local/ns/shop/sa/web");
        assert_eq!(workloads[0].source_namespace().as_deref(), Some("shop"));
        assert_eq!(workloads[0].x509_ttl, Some(3600));
        assert!(workloads[1].labels.is_empty());

        let twice = "- {name: a, namespace: n, spiffe_id: spiffe://td/a}\n- {name: a, namespace: n, spiffe_id: spiffe://td/b}";
        assert!(
            parse(twice)
                .unwrap_err()
                .to_string()
                .contains("n/a is listed twice")
        );
        let bad_id = "- {name: a, namespace: n, spiffe_id: \"spiffe://TD/a\"}";
        assert!(
            parse(bad_id)
                .unwrap_err()
                .to_string()
                .starts_with("workload 0 (a): spiffe_id")
        );
        assert!(parse("- {name: a, namespace: n, spiffe_id: spiffe://td/a, role: x}").is_err());
    }

    #[test]
    fn entries_of_istios_form_are_workloads() {
        let ids: Vec<SpiffeId> = [
            "spiffe://cluster.local/ns/default/sa/service-one",
            "spiffe://cluster.local/ns/default/sa/service-one",
            "spiffe://cluster.local/agent/zt-up",
        ]
        .iter()
        .map(|id| SpiffeId::parse(id).unwrap())
        .collect();
        let (workloads, skipped) = from_spiffe_ids(&ids);
        assert_eq!(workloads.len(), 1);
        assert_eq!(workloads[0].key(), "default/service-one");
        assert_eq!(
            workloads[0].labels.get("app").map(String::as_str),
            Some("service-one")
        );
        assert_eq!(skipped, vec!["spiffe://cluster.local/agent/zt-up"]);
        let by = ByDestination::new(&workloads);
        assert_eq!(by.find("default/service-one"), Some(0));
        assert_eq!(by.find("default/other"), None);
    }
}
