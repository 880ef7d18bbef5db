//! mTLS coverage from observed traffic: of the decisions proxies logged (one
//! per HTTP request, one per TCP connection), how many came over mTLS — the
//! caller had a verified SPIFFE ID — and how many in plaintext (permissive
//! mode), per destination workload and for the mesh.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use zt_observe::{Caller, Flow, Seen};

use crate::workloads::{ByDestination, Workload};

/// Decisions by transport.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Over mTLS.
    pub mtls: u64,
    /// In plaintext.
    pub plaintext: u64,
    /// Plaintext ones the app was given (allowed, or let through).
    pub plaintext_served: u64,
    /// `mtls` of all, in percent; `null` when there were none.
    pub mtls_pct: Option<f64>,
}

impl Counts {
    fn add(&mut self, flow: &Flow, seen: &Seen) {
        match flow.caller {
            Caller::Principal(_) => self.mtls += seen.count,
            Caller::Plaintext(_) => {
                self.plaintext += seen.count;
                if flow.outcome.served() {
                    self.plaintext_served += seen.count;
                }
            }
        }
    }

    fn finish(&mut self) {
        let all = self.mtls + self.plaintext;
        self.mtls_pct = (all > 0).then(|| 100.0 * self.mtls as f64 / all as f64);
    }
}

/// One destination's coverage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkloadCoverage {
    /// `namespace/name` of a known workload, else the record's destination.
    pub workload: String,
    /// Whether it is one of the workloads analysed.
    pub known: bool,
    /// Its decisions.
    #[serde(flatten)]
    pub counts: Counts,
    /// The addresses plaintext callers came from.
    pub plaintext_callers: BTreeSet<String>,
}

/// The mesh's coverage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Coverage {
    /// Every decision in the window.
    pub total: Counts,
    /// By destination, by name.
    pub per_workload: Vec<WorkloadCoverage>,
}

/// The coverage of `flows`; destinations are matched to `workloads`.
pub fn compute(flows: &[(&Flow, &Seen)], workloads: &[Workload], by: &ByDestination) -> Coverage {
    let mut per: BTreeMap<String, WorkloadCoverage> = BTreeMap::new();
    let mut total = Counts::default();
    for (flow, seen) in flows {
        let known = by.find(&flow.destination).and_then(|i| workloads.get(i));
        let name = known.map_or_else(|| flow.destination.clone(), Workload::key);
        let entry = per.entry(name.clone()).or_insert_with(|| WorkloadCoverage {
            workload: name,
            known: known.is_some(),
            ..Default::default()
        });
        entry.counts.add(flow, seen);
        if let Caller::Plaintext(address) = &flow.caller {
            entry.plaintext_callers.insert(address.clone());
        }
        total.add(flow, seen);
    }
    total.finish();
    let per_workload = per
        .into_values()
        .map(|mut w| {
            w.counts.finish();
            w
        })
        .collect();
    Coverage { total, per_workload }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reach::tests::workload;
    use zt_observe::Outcome;

    fn flow(destination: &str, caller: Caller, outcome: Outcome) -> Flow {
        Flow {
            destination: destination.into(),
            port: Some(15006),
            http: true,
            caller,
            method: Some("GET".into()),
            path: Some("/".into()),
            outcome,
            shadow: None,
        }
    }

    #[test]
    fn shares_per_workload_and_mesh() {
        let workloads = vec![workload("shop", "web"), workload("shop", "db")];
        let by = ByDestination::new(&workloads);
        let seen = |count| Seen {
            count,
            first_ms: 1,
            last_ms: 2,
        };
        let flows = [
            (
                flow(
                    "shop/web",
                    Caller::Principal("spiffe://td/x".into()),
                    Outcome::Allowed,
                ),
                seen(3),
            ),
            (
                flow(
                    "shop/web",
                    Caller::Plaintext("10.0.0.9".into()),
                    Outcome::LetThrough,
                ),
                seen(1),
            ),
            (
                flow("shop/db", Caller::Plaintext("10.0.0.8".into()), Outcome::Refused),
                seen(4),
            ),
            (
                flow(
                    "other/x",
                    Caller::Principal("spiffe://td/y".into()),
                    Outcome::Allowed,
                ),
                seen(2),
            ),
        ];
        let refs: Vec<(&Flow, &Seen)> = flows.iter().map(|(f, s)| (f, s)).collect();
        let coverage = compute(&refs, &workloads, &by);
        assert_eq!((coverage.total.mtls, coverage.total.plaintext), (5, 5));
        assert_eq!(coverage.total.plaintext_served, 1);
        assert_eq!(coverage.total.mtls_pct, Some(50.0));
        let names: Vec<&str> = coverage
            .per_workload
            .iter()
            .map(|w| w.workload.as_str())
            .collect();
        assert_eq!(names, vec!["other/x", "shop/db", "shop/web"]);
        let web = &coverage.per_workload[2];
        assert_eq!(web.counts.mtls_pct, Some(75.0));
        assert!(web.known && !coverage.per_workload[0].known);
        assert_eq!(coverage.per_workload[1].counts.plaintext_served, 0);
        assert!(web.plaintext_callers.contains("10.0.0.9"));
    }
}
