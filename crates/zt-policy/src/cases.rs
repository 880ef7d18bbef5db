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
//!
//! A case may carry a raw token (`request.request.headers.authorization:
//! Bearer …`, or `?access_token=` in the path): where a RequestAuthentication
//! selects the destination, the caller authenticates it first
//! ([`run_with`]; `zt policy test` does it with zt proxy's code), and a case
//! may expect `UNAUTHENTICATED` (or `401`): the token was refused. Cases that
//! give `request.auth` directly, without a token, are decided as given.

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
    /// The outcome expected.
    pub decision: Expected,
    /// The deciding policy expected (`namespace/name`); absent: not checked;
    /// `null`: none may decide (the default applied).
    #[serde(default, deserialize_with = "present")]
    pub policy: Option<Option<String>>,
}

/// The outcome a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The policies allow it.
    Allow,
    /// The policies deny it (403).
    Deny,
    /// Its token is refused before any policy decides (401).
    Unauthenticated,
}

impl<'de> Deserialize<'de> for Expected {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Status(u16),
        }
        match Written::deserialize(deserializer)? {
            Written::Text(t) if t == "ALLOW" => Ok(Expected::Allow),
            Written::Text(t) if t == "DENY" => Ok(Expected::Deny),
            Written::Text(t) if t.eq_ignore_ascii_case("unauthenticated") || t == "401" => {
                Ok(Expected::Unauthenticated)
            }
            Written::Status(401) => Ok(Expected::Unauthenticated),
            _ => Err(serde::de::Error::custom(
                "expected ALLOW, DENY or UNAUTHENTICATED (401)",
            )),
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Expected::Allow => "ALLOW",
            Expected::Deny => "DENY",
            Expected::Unauthenticated => "UNAUTHENTICATED",
        })
    }
}

/// What authenticating a case's request gave.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// No rule applies: the request as given.
    Unchanged,
    /// The request as the app would get it (`request.auth` from a verified
    /// token, the rules' headers set, the token removed), or without a token.
    Changed(Box<Request>),
    /// The token was refused (401): why.
    Unauthenticated(String),
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
    /// What the policies decided (a DENY naming no policy when the request
    /// was not authenticated).
    pub got: Decision,
    /// Why the request's token was refused, if it was (401).
    pub unauthenticated: Option<String>,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// Reads a case file's text; the error names the line.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    Vec::<Case>::deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(|e| e.to_string())
}

/// Runs every case, as given (no authentication).
pub fn run(policies: &PolicySet, cases: &[Case]) -> Vec<Outcome> {
    run_with(policies, cases, |_| Authentication::Unchanged)
}

/// Runs every case, authenticating each request with `authenticate` first.
pub fn run_with(
    policies: &PolicySet,
    cases: &[Case],
    mut authenticate: impl FnMut(&Request) -> Authentication,
) -> Vec<Outcome> {
    cases
        .iter()
        .map(|case| {
            let (got, unauthenticated) = match authenticate(&case.request) {
                Authentication::Unchanged => (policies.evaluate(&case.request), None),
                Authentication::Changed(request) => (policies.evaluate(&request), None),
                Authentication::Unauthenticated(reason) => (
                    Decision {
                        decision: Verdict::Deny,
                        policy: None,
                        reason: format!("unauthenticated: {reason}"),
                        audit: None,
                        dry_run: None,
                    },
                    Some(reason),
                ),
            };
            let outcome = match (&unauthenticated, got.decision) {
                (Some(_), _) => Expected::Unauthenticated,
                (None, Verdict::Allow) => Expected::Allow,
                (None, Verdict::Deny) => Expected::Deny,
            };
            let mut failure = None;
            if outcome != case.decision {
                failure = Some(format!("want {}, got {outcome} ({})", case.decision, got.reason));
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
                unauthenticated,
                failure,
            }
        })
        .collect()
}
