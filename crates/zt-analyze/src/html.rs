//! The report as one self-contained HTML page: inline CSS and inline SVG, no
//! script, no external asset — it can be mailed, archived and opened offline.
//!
//! The graph of who can reach whom draws workloads on a circle and allowed
//! calls as arrows; the compromised-workload view highlights, for the worst
//! workload (and, in small meshes, for each one), what it reaches directly
//! and what only through other compromised workloads.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::fmt::Write as _;

use crate::findings::duration;
use crate::report::{BlastRadius, Report};

/// More allowed calls than this are not drawn (the page would be too large
/// to open); the tables still list them.
pub const MAX_EDGES: usize = 20_000;
/// Meshes up to this size get one compromised-workload view per workload.
pub const VIEWS_PER_WORKLOAD_UP_TO: usize = 24;
/// Meshes up to this size get names beside their nodes (others in tooltips).
const LABELS_UP_TO: usize = 60;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#1d232a;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d5dae0;padding-bottom:.2em}
.inputs{color:#56606b}
.figures{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}
.figure{border:1px solid #d5dae0;border-radius:6px;padding:.6em 1em;min-width:150px}
.figure .value{display:block;font-size:1.7em;font-weight:600}.figure .label{color:#56606b;font-size:.9em}
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #eceff2;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.sev{font-weight:600;border-radius:3px;padding:0 .4em;font-size:.85em}
.sev-critical{background:#b3261e;color:#fff}.sev-high{background:#e8710a;color:#fff}.sev-medium{background:#f4c20d}.sev-low{background:#d5dae0}
svg{display:block;margin:.5em 0;max-width:100%;height:auto}
.edge{stroke:#8a96a3;stroke-width:1;opacity:.55}.edge.hot{stroke:#b3261e;stroke-width:1.6;opacity:.9}.edge.faint{opacity:.12}
.node circle{fill:#3c78d8;stroke:#fff;stroke-width:1.5}.node.open circle{fill:#b3261e}.node.plaintext circle{fill:#e8710a}
.node.compromised circle{fill:#5c0a06;stroke:#000;stroke-width:2}.node.direct circle{fill:#d93025}.node.transitive circle{fill:#f29900}.node.safe circle{fill:#c4ccd4}
.node text{font-size:11px;fill:#1d232a}
.legend span{margin-right:1.2em}.legend i{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.3em;vertical-align:-.05em}
.views{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:1em}.views figure{margin:0;border:1px solid #eceff2;border-radius:6px;padding:.4em}
figcaption{font-size:.9em;color:#56606b}
";

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_page(&mut out, report);
    out
}

fn write_page(out: &mut String, report: &Report) -> std::fmt::Result {
    let radius = &report.blast_radius;
    let inputs = &report.inputs;
    writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>zt analyze — {}</title><style>{STYLE}</style></head><body>",
        escape(&inputs.policies)
    )?;
    writeln!(out, "<h1>zt analyze</h1>")?;
    writeln!(
        out,
        "<p class=\"inputs\">{} workloads ({}), {} policies ({}){}. Report schema version {}.</p>",
        inputs.workload_count,
        escape(&inputs.workloads),
        inputs.policy_count,
        escape(&inputs.policies),
        inputs
            .decisions
            .as_ref()
            .map(|d| format!(", {} decisions in the window", d.in_window))
            .unwrap_or_default(),
        report.schema_version
    )?;

    let critical = report
        .findings
        .iter()
        .filter(|f| f.severity == crate::findings::Severity::Critical)
        .count();
    writeln!(out, "<div class=\"figures\">")?;
    let figure = |out: &mut String, id: &str, value: String, label: &str| {
        writeln!(
            out,
            "<div class=\"figure\" id=\"{id}\"><span class=\"value\">{}</span><span class=\"label\">{label}</span></div>",
            escape(&value)
        )
    };
    figure(
        out,
        "critical-findings",
        critical.to_string(),
        "critical findings",
    )?;
    figure(
        out,
        "direct-reduction",
        format!("{:.1}%", radius.direct_reduction_pct),
        "direct reach reduction vs flat",
    )?;
    figure(
        out,
        "transitive-reduction",
        format!("{:.1}%", radius.transitive_reduction_pct),
        "transitive reach reduction vs flat",
    )?;
    figure(
        out,
        "direct-pairs",
        format!("{} / {}", radius.direct_pairs, radius.flat_pairs),
        "allowed caller→target pairs / flat",
    )?;
    if let Some(coverage) = &report.mtls {
        figure(
            out,
            "mtls-share",
            coverage
                .total
                .mtls_pct
                .map_or_else(|| "—".to_owned(), |p| format!("{p:.1}%")),
            "of decisions over mTLS",
        )?;
    }
    writeln!(out, "</div>")?;

    writeln!(out, "<section id=\"findings\"><h2>Findings, worst first</h2>")?;
    if report.findings.is_empty() {
        writeln!(out, "<p>None.</p>")?;
    } else {
        writeln!(
            out,
            "<table><tr><th>severity</th><th>kind</th><th>subject</th><th>detail</th></tr>"
        )?;
        for f in &report.findings {
            let severity = serde_json::to_value(f.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            writeln!(
                out,
                "<tr class=\"finding\"><td><span class=\"sev sev-{severity}\">{severity}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(f.kind),
                escape(&f.subject),
                escape(&f.detail)
            )?;
        }
        writeln!(out, "</table>")?;
    }
    writeln!(out, "</section>")?;

    writeln!(out, "<section id=\"graph\"><h2>Who can reach whom</h2>")?;
    writeln!(
        out,
        "<p class=\"legend\"><span><i style=\"background:#3c78d8\"></i>workload</span><span><i style=\"background:#b3261e\"></i>no ALLOW policy (allow-all)</span><span><i style=\"background:#e8710a\"></i>plaintext allowed</span> An arrow A → B: A's identity is allowed some request to B.</p>"
    )?;
    graph(out, radius, "reach-graph", 720.0, None)?;
    writeln!(out, "</section>")?;

    if let Some(worst) = radius.worst() {
        let index = radius
            .per_workload
            .iter()
            .position(|w| w.workload == worst.workload);
        writeln!(
            out,
            "<section id=\"compromised\"><h2>If {} is compromised</h2>",
            escape(&worst.workload)
        )?;
        writeln!(
            out,
            "<p>The workload whose compromise reaches most: {} workloads directly, {} through workloads it reaches (of {}).</p>",
            worst.direct.len(),
            worst.transitive.len(),
            worst.flat
        )?;
        writeln!(
            out,
            "<p class=\"legend\"><span><i style=\"background:#5c0a06\"></i>compromised</span><span><i style=\"background:#d93025\"></i>reached directly</span><span><i style=\"background:#f29900\"></i>reached through other compromised workloads</span><span><i style=\"background:#c4ccd4\"></i>out of reach</span></p>"
        )?;
        graph(out, radius, "compromised-graph", 720.0, index)?;
        if radius.per_workload.len() <= VIEWS_PER_WORKLOAD_UP_TO {
            writeln!(out, "<h3>Each workload compromised</h3><div class=\"views\">")?;
            for (i, w) in radius.per_workload.iter().enumerate() {
                writeln!(
                    out,
                    "<figure class=\"compromised-view\"><figcaption>{}: {} direct, {} transitive</figcaption>",
                    escape(&w.workload),
                    w.direct.len(),
                    w.transitive.len()
                )?;
                graph(out, radius, &format!("compromised-{i}"), 250.0, Some(i))?;
                writeln!(out, "</figure>")?;
            }
            writeln!(out, "</div>")?;
        }
        writeln!(out, "</section>")?;
    }

    writeln!(
        out,
        "<section id=\"blast-radius\"><h2>Blast radius per workload</h2>"
    )?;
    writeln!(
        out,
        "<p>Direct: what the workload's own identity may call. Transitive: what an attacker reaches by compromising, in turn, every workload reached. Reduction against a flat network, where every workload reaches the other {}.</p>",
        radius.workloads.saturating_sub(1)
    )?;
    blast_table(out, radius)?;
    writeln!(out, "</section>")?;

    if let Some(against) = &report.against {
        let (other, diff) = (&against.blast_radius, &against.difference);
        writeln!(
            out,
            "<section id=\"against\"><h2>Against {}</h2>",
            escape(&other.policies)
        )?;
        writeln!(
            out,
            "<p>Direct reduction {:.1}% → <span id=\"against-direct-reduction\">{:.1}%</span> ({:+.1} points, {:+} pairs); transitive {:.1}% → <span id=\"against-transitive-reduction\">{:.1}%</span> ({:+.1} points, {:+} pairs).</p>",
            radius.direct_reduction_pct,
            other.direct_reduction_pct,
            diff.direct_reduction_pct,
            diff.direct_pairs,
            radius.transitive_reduction_pct,
            other.transitive_reduction_pct,
            diff.transitive_reduction_pct,
            diff.transitive_pairs
        )?;
        if !diff.per_workload.is_empty() {
            writeln!(
                out,
                "<table><tr><th>workload</th><th>gains</th><th>loses</th></tr>"
            )?;
            for change in &diff.per_workload {
                writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&change.workload),
                    escape(&change.gained.join(", ")),
                    escape(&change.lost.join(", "))
                )?;
            }
            writeln!(out, "</table>")?;
        }
        writeln!(out, "</section>")?;
    }

    if let Some(coverage) = &report.mtls {
        let pct = |p: Option<f64>| p.map_or_else(|| "—".to_owned(), |p| format!("{p:.1}%"));
        writeln!(
            out,
            "<section id=\"mtls\"><h2>mTLS coverage</h2><p>Decisions logged by proxies: one per HTTP request, one per TCP connection.</p>"
        )?;
        writeln!(
            out,
            "<table><tr><th>workload</th><th class=\"num\">mTLS</th><th class=\"num\">plaintext</th><th class=\"num\">plaintext served</th><th class=\"num\">mTLS share</th></tr>"
        )?;
        for w in &coverage.per_workload {
            writeln!(
                out,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&w.workload),
                w.counts.mtls,
                w.counts.plaintext,
                w.counts.plaintext_served,
                pct(w.counts.mtls_pct)
            )?;
        }
        writeln!(
            out,
            "<tr><th>mesh</th><th class=\"num\">{}</th><th class=\"num\">{}</th><th class=\"num\">{}</th><th class=\"num\">{}</th></tr></table></section>",
            coverage.total.mtls,
            coverage.total.plaintext,
            coverage.total.plaintext_served,
            pct(coverage.total.mtls_pct)
        )?;
    }

    if let Some(lifetimes) = &report.credentials {
        writeln!(
            out,
            "<section id=\"credentials\"><h2>Credential lifetimes</h2><p>{} identities with TTLs.</p><table><tr><th>credential</th><th>longest</th><th>median</th><th>over the limit</th></tr>",
            lifetimes.entries
        )?;
        for (what, stats) in [("X.509-SVID", &lifetimes.x509), ("JWT-SVID", &lifetimes.jwt)] {
            match stats {
                Some(s) => writeln!(
                    out,
                    "<tr><td>{what}</td><td>{} ({})</td><td>{}</td><td>{} over {}</td></tr>",
                    duration(s.longest_secs),
                    escape(&s.longest),
                    duration(s.median_secs),
                    s.over_limit.len(),
                    duration(s.limit_secs)
                )?,
                None => writeln!(out, "<tr><td>{what}</td><td colspan=\"3\">no TTL known</td></tr>")?,
            }
        }
        for ca in &lifetimes.ca {
            writeln!(
                out,
                "<tr><td>CA {}</td><td colspan=\"3\">valid {} (until {})</td></tr>",
                escape(&ca.subject),
                duration(u64::try_from(ca.lifetime_secs).unwrap_or_default()),
                zt_observe::generate::rfc3339(
                    u64::try_from(ca.not_after)
                        .unwrap_or_default()
                        .saturating_mul(1000)
                )
            )?;
        }
        writeln!(out, "</table></section>")?;
    }

    if let Some(unused) = &report.unused_rules {
        writeln!(
            out,
            "<section id=\"unused\"><h2>Unused rules</h2><p>{} of {} ALLOW rules matched no request in the window: candidates to tighten.</p>",
            unused.unused.len(),
            unused.allow_rules
        )?;
        if !unused.unused.is_empty() {
            writeln!(out, "<table><tr><th>policy</th><th>rule</th><th>file</th></tr>")?;
            for rule in &unused.unused {
                writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}:{}</td></tr>",
                    escape(&rule.policy),
                    rule.rule,
                    escape(&rule.file),
                    rule.line
                )?;
            }
            writeln!(out, "</table>")?;
        }
        writeln!(out, "</section>")?;
    }
    writeln!(out, "</body></html>")
}

fn blast_table(out: &mut String, radius: &BlastRadius) -> std::fmt::Result {
    writeln!(
        out,
        "<table id=\"blast-table\"><tr><th>workload</th><th class=\"num\">direct</th><th class=\"num\">transitive</th><th class=\"num\">direct reduction</th><th class=\"num\">transitive reduction</th><th>reaches directly (routes)</th></tr>"
    )?;
    for w in &radius.per_workload {
        let targets: Vec<String> = w
            .direct
            .iter()
            .map(|t| format!("{}: {}", escape(&t.workload), escape(&t.routes.join("; "))))
            .collect();
        writeln!(
            out,
            "<tr class=\"workload-row\"><td>{}</td><td class=\"num\">{}/{}</td><td class=\"num\">{}/{}</td><td class=\"num\">{:.1}%</td><td class=\"num\">{:.1}%</td><td>{}</td></tr>",
            escape(&w.workload),
            w.direct.len(),
            w.flat,
            w.transitive.len(),
            w.flat,
            w.direct_reduction_pct,
            w.transitive_reduction_pct,
            targets.join("<br>")
        )?;
    }
    writeln!(
        out,
        "<tr><th>mesh</th><th class=\"num\">{}/{}</th><th class=\"num\">{}/{}</th><th class=\"num\">{:.1}%</th><th class=\"num\">{:.1}%</th><th></th></tr></table>",
        radius.direct_pairs,
        radius.flat_pairs,
        radius.transitive_pairs,
        radius.flat_pairs,
        radius.direct_reduction_pct,
        radius.transitive_reduction_pct
    )
}

/// One SVG of the mesh: workloads on a circle, allowed calls as arrows. With
/// `focus`, that workload is the compromised one and the others are coloured
/// by how it reaches them.
fn graph(
    out: &mut String,
    radius: &BlastRadius,
    id: &str,
    size: f64,
    focus: Option<usize>,
) -> std::fmt::Result {
    let workloads = &radius.per_workload;
    let n = workloads.len();
    let labels = n <= LABELS_UP_TO && size >= 500.0;
    let margin = if labels { 130.0 } else { 16.0 };
    let ring = (size / 2.0 - margin).max(10.0);
    let node = (ring * PI / n.max(1) as f64 * 0.6).clamp(2.5, 12.0);
    let centre = size / 2.0;
    let at = |i: usize| {
        let angle = 2.0 * PI * i as f64 / n.max(1) as f64 - PI / 2.0;
        (centre + ring * angle.cos(), centre + ring * angle.sin())
    };
    let index: HashMap<&str, usize> = workloads
        .iter()
        .enumerate()
        .map(|(i, w)| (w.workload.as_str(), i))
        .collect();
    writeln!(
        out,
        "<svg id=\"{id}\" class=\"reach-graph\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{size:.0}\" height=\"{size:.0}\" viewBox=\"0 0 {size:.0} {size:.0}\" role=\"img\" aria-label=\"who can reach whom\">"
    )?;
    writeln!(
        out,
        "<defs><marker id=\"{id}-arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" fill=\"#6b7785\"/></marker></defs>"
    )?;
    let edges = radius.direct_pairs;
    if edges <= MAX_EDGES {
        writeln!(out, "<g class=\"edges\">")?;
        for (from, w) in workloads.iter().enumerate() {
            for target in &w.direct {
                let Some(&to) = index.get(target.workload.as_str()) else {
                    continue;
                };
                let ((x1, y1), (x2, y2)) = (at(from), at(to));
                let (dx, dy) = (x2 - x1, y2 - y1);
                let length = (dx * dx + dy * dy).sqrt().max(1.0);
                let (ux, uy) = (dx / length, dy / length);
                let class = match focus {
                    None => "edge",
                    Some(f) if f == from => "edge hot",
                    Some(_) => "edge faint",
                };
                writeln!(
                    out,
                    "<line class=\"{class}\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" marker-end=\"url(#{id}-arrow)\"><title>{} → {}</title></line>",
                    x1 + ux * node,
                    y1 + uy * node,
                    x2 - ux * (node + 1.5),
                    y2 - uy * (node + 1.5),
                    escape(&w.workload),
                    escape(&target.workload)
                )?;
            }
        }
        writeln!(out, "</g>")?;
    } else {
        writeln!(
            out,
            "<text x=\"10\" y=\"20\" font-size=\"12\">{edges} allowed calls: too many to draw (over {MAX_EDGES}); see the table</text>"
        )?;
    }
    let focus_reach = focus.and_then(|f| workloads.get(f)).map(|w| {
        let direct: Vec<&str> = w.direct.iter().map(|t| t.workload.as_str()).collect();
        let transitive: Vec<&str> = w.transitive.iter().map(String::as_str).collect();
        (direct, transitive)
    });
    writeln!(out, "<g class=\"nodes\">")?;
    for (i, w) in workloads.iter().enumerate() {
        let (x, y) = at(i);
        let class = match (&focus_reach, focus) {
            (Some(_), Some(f)) if f == i => " compromised",
            (Some((direct, _)), _) if direct.contains(&w.workload.as_str()) => " direct",
            (Some((_, transitive)), _) if transitive.contains(&w.workload.as_str()) => " transitive",
            (Some(_), _) => " safe",
            (None, _) if w.open => " open",
            (None, _) if w.plaintext_allowed => " plaintext",
            (None, _) => "",
        };
        write!(
            out,
            "<g class=\"node{class}\" data-workload=\"{}\"><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{node:.1}\"/><title>{}: reaches {} directly, {} transitively</title>",
            escape(&w.workload),
            escape(&w.workload),
            w.direct.len(),
            w.transitive.len()
        )?;
        if labels {
            let angle = 2.0 * PI * i as f64 / n.max(1) as f64 - PI / 2.0;
            let (lx, ly) = (
                centre + (ring + node + 6.0) * angle.cos(),
                centre + (ring + node + 6.0) * angle.sin(),
            );
            let anchor = if angle.cos() < -0.1 {
                "end"
            } else if angle.cos() > 0.1 {
                "start"
            } else {
                "middle"
            };
            write!(
                out,
                "<text x=\"{lx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
                ly + 4.0,
                escape(&w.workload)
            )?;
        }
        writeln!(out, "</g>")?;
    }
    writeln!(out, "</g></svg>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reach::tests::{policies, workload};

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: n}\nspec:\n  selector: {matchLabels: {app: b}}\n  rules:\n  - from: [{source: {principals: [td/ns/n/sa/a]}}]\n    to: [{operation: {paths: [\"/x<y>\"]}}]\n";
        let policies = policies(yaml);
        let set = zt_policy::PolicySet::new(policies.iter().map(|p| (**p).clone()).collect(), "zt-system");
        let workloads = vec![workload("n", "a"), workload("n", "b"), workload("n", "c")];
        let report = crate::analyze(crate::Input {
            policies: crate::Policies {
                set: &set,
                from: "<dir>".into(),
            },
            root_namespace: "zt-system",
            workloads: &workloads,
            workloads_from: "test".into(),
            skipped_ids: Vec::new(),
            traffic: None,
            credentials: Vec::new(),
            ca: Vec::new(),
            against: None,
        });
        let page = render(&report);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains("<script"));
        assert!(
            !page.contains("src=") && !page.contains("<link"),
            "no external asset"
        );
        assert!(page.contains("&lt;dir&gt;") && !page.contains("<dir>"));
        assert!(page.contains("/x&lt;y&gt;"));
        // Three nodes in the main graph; a view per workload.
        let main = page.split("id=\"reach-graph\"").nth(1).unwrap_or_default();
        let main = main.split("</svg>").next().unwrap_or_default();
        assert_eq!(main.matches(" data-workload=").count(), 3);
        // a → b by policy; a and c, without ALLOW policies, from everyone.
        assert_eq!(main.matches("<line").count(), 5);
        assert_eq!(page.matches("class=\"compromised-view\"").count(), 3);
        assert!(page.contains("<g class=\"node open\" data-workload=\"n/a\""));
    }
}
