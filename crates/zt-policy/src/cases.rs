//! Table tests of policies, for CI pipelines (`zt policy test DIR --cases FILE`):
//! a YAML (or JSON) list of cases, each a request in the public form and the
//! decision expected, optionally with the policy expected to decide.
//!
//! ```yaml
//! - name: payment-service may charge
//!   request:
//!     source: {principal: spiffe://cluster.local/ns/production/sa/payment-service}
//!     destination: {namespace: production, labels: {app: billing-service}}
//!     request: {method: POST, path: /api/v1/charges}
//!   decision: ALLOW
//!   policy: production/billing-service-policy
//! ```

use serde::Deserialize;

use crate::evaluate::{Decision, PolicySet, Verdict};
use crate::request::Request;

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it checks, for the report.
    pub name: String,
    /// The request.
    pub request: Request,
    /// The decision expected.
    pub decision: Verdict,
    /// The deciding policy expected (`namespace/name`); absent: not checked;
    /// `null`: none may decide (the default applied).
    #[serde(default, deserialize_with = "present")]
    pub policy: Option<Option<String>>,
}

/// Tells an explicit `policy: null` from an absent `policy`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// A case's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The case's name.
    pub name: String,
    /// What the policies decided.
    pub got: Decision,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// Reads a case file's text; the error names the line.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    Vec::<Case>::deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(|e| e.to_string())
}

/// Runs every case.
pub fn run(policies: &PolicySet, cases: &[Case]) -> Vec<Outcome> {
    cases
        .iter()
        .map(|case| {
            let got = policies.evaluate(&case.request);
            let mut failure = None;
            if got.decision != case.decision {
                failure = Some(format!(
                    "want {}, got {} ({})",
                    case.decision, got.decision, got.reason
                ));
            } else if let Some(want) = &case.policy
                && *want != got.policy
            {
                let show = |p: &Option<String>| p.clone().unwrap_or_else(|| "no policy".into());
                failure = Some(format!(
                    "want {} by {}, got it by {} ({})",
                    case.decision,
                    show(want),
                    show(&got.policy),
                    got.reason
                ));
            }
            Outcome {
                name: case.name.clone(),
                got,
                failure,
            }
        })
        .collect()
}
