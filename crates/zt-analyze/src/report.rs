//! The report: every figure in one value, printed as text (critical findings
//! first) or as JSON (the schema in the crate's documentation).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::coverage::Coverage;
use crate::findings::{Finding, Severity, duration};
use crate::lifetimes::Lifetimes;
use crate::reach::Reach;
use crate::unused::UnusedRules;
use crate::workloads::Workload;

/// The version of the JSON shape; raised on any change that is not an added
/// field.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything `zt analyze` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// What was analysed.
    pub inputs: Inputs,
    /// Worst first.
    pub findings: Vec<Finding>,
    /// Under the policies analysed.
    pub blast_radius: BlastRadius,
    /// Under the `--against` policies, and the difference.
    pub against: Option<Comparison>,
    /// From decision logs; `null` without them.
    pub mtls: Option<Coverage>,
    /// From registration entries (or the workloads file's TTLs) and the trust
    /// bundle; `null` without either.
    pub credentials: Option<Lifetimes>,
    /// From decision logs; `null` without them.
    pub unused_rules: Option<UnusedRules>,
}

/// What was analysed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inputs {
    /// Where the policies came from (a directory, or zt server's version).
    pub policies: String,
    /// How many.
    pub policy_count: usize,
    /// The namespace whose policies apply to every workload.
    pub root_namespace: String,
    /// Where the workloads came from.
    pub workloads: String,
    /// How many.
    pub workload_count: usize,
    /// Registration entries' SPIFFE IDs that are not of the form
    /// `spiffe://TD/ns/NS/sa/SA`, so no workload.
    pub skipped_ids: Vec<String>,
    /// The decision records read; `null` without decision logs.
    pub decisions: Option<Decisions>,
}

/// The decision records read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Decisions {
    /// Where from.
    pub sources: Vec<String>,
    /// Records read.
    pub records: u64,
    /// Proxies' decisions in the window.
    pub in_window: u64,
    /// The window's start, Unix milliseconds; `null`: open.
    pub since_ms: Option<u64>,
    /// The window's end (excluded); `null`: open.
    pub until_ms: Option<u64>,
}

/// Reach under one set of policies, for the mesh and per workload.
#[derive(Debug, Clone, Serialize)]
pub struct BlastRadius {
    /// Where the policies came from.
    pub policies: String,
    /// How many workloads.
    pub workloads: usize,
    /// n × (n − 1): every workload reaching every other.
    pub flat_pairs: usize,
    /// Pairs (caller, target) where the caller's own identity is allowed a request.
    pub direct_pairs: usize,
    /// Pairs reached through chains of compromised workloads.
    pub transitive_pairs: usize,
    /// 100 × (1 − direct_pairs / flat_pairs); 0 with fewer than two workloads.
    pub direct_reduction_pct: f64,
    /// 100 × (1 − transitive_pairs / flat_pairs).
    pub transitive_reduction_pct: f64,
    /// Per workload, in the order given.
    pub per_workload: Vec<WorkloadReach>,
}

/// One workload as a compromised caller.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReach {
    /// `namespace/name`.
    pub workload: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// No enforced ALLOW policy applies to it.
    pub open: bool,
    /// Its policies let plaintext callers in.
    pub plaintext_allowed: bool,
    /// What its identity may call, and which routes.
    pub direct: Vec<Target>,
    /// What it reaches through chains of compromised workloads (includes `direct`).
    pub transitive: Vec<String>,
    /// n − 1.
    pub flat: usize,
    /// 100 × (1 − |direct| / flat).
    pub direct_reduction_pct: f64,
    /// 100 × (1 − |transitive| / flat).
    pub transitive_reduction_pct: f64,
}

/// A workload reached, and how.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// `namespace/name`.
    pub workload: String,
    /// Its routes the caller is allowed.
    pub routes: Vec<String>,
}

/// Another set of policies against the analysed one.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Reach under the other policies.
    pub blast_radius: BlastRadius,
    /// Other minus analysed.
    pub difference: Difference,
}

/// What the other policies change (other − analysed).
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// Change in direct pairs.
    pub direct_pairs: i64,
    /// Change in transitive pairs.
    pub transitive_pairs: i64,
    /// Change in the mesh's direct reduction, percentage points.
    pub direct_reduction_pct: f64,
    /// Change in the mesh's transitive reduction, percentage points.
    pub transitive_reduction_pct: f64,
    /// The workloads whose direct reach changes.
    pub per_workload: Vec<Change>,
}

/// One workload's direct reach, changed.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// `namespace/name`.
    pub workload: String,
    /// Reached under the other policies only.
    pub gained: Vec<String>,
    /// Reached under the analysed policies only.
    pub lost: Vec<String>,
}

fn reduction(reached: usize, flat: usize) -> f64 {
    if flat == 0 {
        0.0
    } else {
        100.0 * (1.0 - reached as f64 / flat as f64)
    }
}

impl BlastRadius {
    /// The figures of `reach`, for `workloads` (the same, in the same order).
    pub fn new(reach: &Reach, workloads: &[Workload], policies: &str) -> Self {
        let flat = reach.len().saturating_sub(1);
        let name = |i: &usize| reach.names.get(*i).cloned().unwrap_or_default();
        let per_workload = workloads
            .iter()
            .enumerate()
            .map(|(i, workload)| {
                let direct = reach.direct.get(i).map(Vec::as_slice).unwrap_or_default();
                let transitive = reach.transitive.get(i).map(Vec::as_slice).unwrap_or_default();
                WorkloadReach {
                    workload: workload.key(),
                    spiffe_id: workload.spiffe_id.to_string(),
                    open: reach.open.get(i).copied().unwrap_or_default(),
                    plaintext_allowed: reach.plaintext.get(i).copied().unwrap_or_default(),
                    direct: direct
                        .iter()
                        .map(|(target, routes)| Target {
                            workload: name(target),
                            routes: routes
                                .iter()
                                .filter_map(|r| {
                                    reach.routes.get(*target).and_then(|all| all.get(*r)).cloned()
                                })
                                .collect(),
                        })
                        .collect(),
                    transitive: transitive.iter().map(name).collect(),
                    flat,
                    direct_reduction_pct: reduction(direct.len(), flat),
                    transitive_reduction_pct: reduction(transitive.len(), flat),
                }
            })
            .collect();
        Self {
            policies: policies.to_owned(),
            workloads: reach.len(),
            flat_pairs: reach.flat_pairs(),
            direct_pairs: reach.direct_pairs(),
            transitive_pairs: reach.transitive_pairs(),
            direct_reduction_pct: reduction(reach.direct_pairs(), reach.flat_pairs()),
            transitive_reduction_pct: reduction(reach.transitive_pairs(), reach.flat_pairs()),
            per_workload,
        }
    }

    /// The workload whose compromise reaches most (transitively, then
    /// directly); the first such.
    pub fn worst(&self) -> Option<&WorkloadReach> {
        self.per_workload.iter().reduce(|best, w| {
            let key = |w: &WorkloadReach| (w.transitive.len(), w.direct.len());
            if key(w) > key(best) { w } else { best }
        })
    }
}

impl Comparison {
    /// `other` against `base` (the same workloads).
    pub fn new(base: &BlastRadius, other: BlastRadius) -> Self {
        let signed = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let per_workload = base
            .per_workload
            .iter()
            .zip(&other.per_workload)
            .filter_map(|(before, after)| {
                let set = |w: &WorkloadReach| {
                    w.direct
                        .iter()
                        .map(|t| t.workload.clone())
                        .collect::<BTreeSet<_>>()
                };
                let (before_set, after_set) = (set(before), set(after));
                let gained: Vec<String> = after_set.difference(&before_set).cloned().collect();
                let lost: Vec<String> = before_set.difference(&after_set).cloned().collect();
                (!gained.is_empty() || !lost.is_empty()).then(|| Change {
                    workload: before.workload.clone(),
                    gained,
                    lost,
                })
            })
            .collect();
        let difference = Difference {
            direct_pairs: signed(other.direct_pairs) - signed(base.direct_pairs),
            transitive_pairs: signed(other.transitive_pairs) - signed(base.transitive_pairs),
            direct_reduction_pct: other.direct_reduction_pct - base.direct_reduction_pct,
            transitive_reduction_pct: other.transitive_reduction_pct - base.transitive_reduction_pct,
            per_workload,
        };
        Self {
            blast_radius: other,
            difference,
        }
    }
}

impl Report {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as text for a terminal: findings first, then the figures.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        let inputs = &self.inputs;
        write!(
            out,
            "zt analyze: {} workloads ({}), {} policies ({})",
            inputs.workload_count, inputs.workloads, inputs.policy_count, inputs.policies
        )?;
        if let Some(decisions) = &inputs.decisions {
            write!(out, ", {} decisions in the window", decisions.in_window)?;
        }
        writeln!(out)?;
        if !inputs.skipped_ids.is_empty() {
            writeln!(
                out,
                "  {} SPIFFE ID(s) not of the form spiffe://TD/ns/NS/sa/SA are no workload: {}",
                inputs.skipped_ids.len(),
                inputs.skipped_ids.join(", ")
            )?;
        }

        writeln!(out)?;
        let count = |s: Severity| self.findings.iter().filter(|f| f.severity == s).count();
        writeln!(
            out,
            "Findings: {} critical, {} high, {} medium, {} low",
            count(Severity::Critical),
            count(Severity::High),
            count(Severity::Medium),
            count(Severity::Low)
        )?;
        for finding in &self.findings {
            writeln!(
                out,
                "  {:<8} {:<22} {}: {}",
                finding.severity.to_string(),
                finding.kind,
                finding.subject,
                finding.detail
            )?;
        }

        writeln!(out)?;
        writeln!(
            out,
            "Blast radius — direct: what the workload's own identity may call; transitive: what an attacker reaches by \
             compromising, in turn, every workload reached. Reduction: against a flat network, where each workload reaches \
             the other {}.",
            self.blast_radius.workloads.saturating_sub(1)
        )?;
        write_blast_radius(out, &self.blast_radius)?;

        if let Some(against) = &self.against {
            let (base, other, diff) = (&self.blast_radius, &against.blast_radius, &against.difference);
            writeln!(out)?;
            writeln!(out, "Against {}:", other.policies)?;
            writeln!(
                out,
                "  direct reduction {:.1}% → {:.1}% ({:+.1} points, {:+} pairs); transitive {:.1}% → {:.1}% ({:+.1} points, {:+} pairs)",
                base.direct_reduction_pct,
                other.direct_reduction_pct,
                diff.direct_reduction_pct,
                diff.direct_pairs,
                base.transitive_reduction_pct,
                other.transitive_reduction_pct,
                diff.transitive_reduction_pct,
                diff.transitive_pairs
            )?;
            for change in &diff.per_workload {
                let list = |l: &[String]| {
                    if l.is_empty() {
                        "—".to_owned()
                    } else {
                        l.join(", ")
                    }
                };
                writeln!(
                    out,
                    "  {}: gains {}; loses {}",
                    change.workload,
                    list(&change.gained),
                    list(&change.lost)
                )?;
            }
        }

        if let Some(coverage) = &self.mtls {
            writeln!(out)?;
            writeln!(
                out,
                "mTLS coverage (decisions: one per HTTP request, one per TCP connection):"
            )?;
            writeln!(
                out,
                "  {:<32} {:>10} {:>10} {:>8}",
                "workload", "mTLS", "plaintext", "mTLS %"
            )?;
            let pct = |p: Option<f64>| p.map_or_else(|| "—".to_owned(), |p| format!("{p:.1}%"));
            for w in &coverage.per_workload {
                writeln!(
                    out,
                    "  {:<32} {:>10} {:>10} {:>8}",
                    w.workload,
                    w.counts.mtls,
                    w.counts.plaintext,
                    pct(w.counts.mtls_pct)
                )?;
            }
            writeln!(
                out,
                "  {:<32} {:>10} {:>10} {:>8}",
                "mesh",
                coverage.total.mtls,
                coverage.total.plaintext,
                pct(coverage.total.mtls_pct)
            )?;
        }

        if let Some(lifetimes) = &self.credentials {
            writeln!(out)?;
            writeln!(
                out,
                "Credential lifetimes ({} identities with TTLs):",
                lifetimes.entries
            )?;
            for (what, stats) in [("X.509-SVID", &lifetimes.x509), ("JWT-SVID", &lifetimes.jwt)] {
                match stats {
                    Some(s) => writeln!(
                        out,
                        "  {what:<10} longest {} ({}), median {}; {} over {}",
                        duration(s.longest_secs),
                        s.longest,
                        duration(s.median_secs),
                        s.over_limit.len(),
                        duration(s.limit_secs)
                    )?,
                    None => writeln!(out, "  {what:<10} no TTL known")?,
                }
            }
            for ca in &lifetimes.ca {
                writeln!(
                    out,
                    "  CA         {}: valid {} (until {})",
                    ca.subject,
                    duration(u64::try_from(ca.lifetime_secs).unwrap_or_default()),
                    zt_observe::generate::rfc3339(
                        u64::try_from(ca.not_after)
                            .unwrap_or_default()
                            .saturating_mul(1000)
                    )
                )?;
            }
        }

        if let Some(unused) = &self.unused_rules {
            writeln!(out)?;
            writeln!(
                out,
                "Unused rules: {} of {} ALLOW rules matched no request in the window (candidates to tighten){}",
                unused.unused.len(),
                unused.allow_rules,
                if unused.undecidable_flows > 0 {
                    format!("; {} flows could not be decided again", unused.undecidable_flows)
                } else {
                    String::new()
                }
            )?;
            for rule in &unused.unused {
                writeln!(
                    out,
                    "  {} rule {} ({}:{})",
                    rule.policy, rule.rule, rule.file, rule.line
                )?;
            }
        }
        Ok(())
    }
}

/// Workloads printed with their routes in the text report (the worst first);
/// JSON has them all.
const ROUTES_SHOWN: usize = 5;

fn write_blast_radius(out: &mut String, radius: &BlastRadius) -> std::fmt::Result {
    writeln!(
        out,
        "  {:<32} {:>12} {:>12} {:>18}",
        "workload", "direct", "transitive", "reduction d / t"
    )?;
    for w in &radius.per_workload {
        let flags = match (w.open, w.plaintext_allowed) {
            (true, _) => "  (no ALLOW policy)",
            (false, true) => "  (plaintext allowed)",
            _ => "",
        };
        writeln!(
            out,
            "  {:<32} {:>12} {:>12} {:>8.1}% / {:>5.1}%{flags}",
            w.workload,
            format!("{}/{}", w.direct.len(), w.flat),
            format!("{}/{}", w.transitive.len(), w.flat),
            w.direct_reduction_pct,
            w.transitive_reduction_pct
        )?;
    }
    writeln!(
        out,
        "  {:<32} {:>12} {:>12} {:>8.1}% / {:>5.1}%",
        "mesh",
        format!("{}/{}", radius.direct_pairs, radius.flat_pairs),
        format!("{}/{}", radius.transitive_pairs, radius.flat_pairs),
        radius.direct_reduction_pct,
        radius.transitive_reduction_pct
    )?;
    let mut worst: Vec<&WorkloadReach> = radius
        .per_workload
        .iter()
        .filter(|w| !w.direct.is_empty())
        .collect();
    worst.sort_by_key(|w| std::cmp::Reverse((w.transitive.len(), w.direct.len())));
    for w in worst.iter().take(ROUTES_SHOWN) {
        writeln!(out, "  if {} is compromised, it may call:", w.workload)?;
        for target in &w.direct {
            writeln!(out, "    → {}: {}", target.workload, target.routes.join("; "))?;
        }
        let beyond = w.transitive.len().saturating_sub(w.direct.len());
        if beyond > 0 {
            writeln!(out, "    and {beyond} more through workloads it reaches")?;
        }
    }
    if worst.len() > ROUTES_SHOWN {
        writeln!(
            out,
            "  (routes of {} more callers: --output json)",
            worst.len() - ROUTES_SHOWN
        )?;
    }
    Ok(())
}
