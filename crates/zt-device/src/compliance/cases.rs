//! Table tests of a compliance policy (`zt device policy test`): devices
//! described by their facts, the age of each, their attributes and their
//! last report, and the tier expected.
//!
//! ```yaml
//! cases:
//!   - name: compliant laptop with a TPM
//!     facts: { firewall.active: true, disk.root_encrypted: true, os.version_id: "12" }
//!     ages: { os.version_id: 40s }         # how long ago each fact was observed (default 0s)
//!     attributes: { device.key_type: tpm } # device.status defaults to active
//!     last_report: 2s                      # or `never`; default 0s
//!     expect: trusted
//!     reasons: ["rule firewall"]           # substrings each of which some reason contains
//! ```
//!
//! Every case is evaluated at the same fixed time, [`NOW_MS`]. A fact given
//! as `null` is reported with no value (unknown). Ages are whole seconds,
//! as facts carry their observation time in seconds.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{
    DeviceView, Evaluation, Policy, PolicyError, STATUS_ACTIVE, STATUS_ATTRIBUTE, key_lines, parse_yaml, read,
};
use crate::facts::{Facts, Observed};

/// The time every case is evaluated at (Unix ms; 2027-01-15T08:00:00Z).
pub const NOW_MS: u64 = 1_800_000_000_000;

/// A table of cases, checked as it is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    /// The cases, in order.
    pub cases: Vec<Case>,
}

/// One device and the tier it should get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it checks, for the report.
    pub name: String,
    /// The facts reported, by name; `null` is unknown.
    #[serde(default)]
    pub facts: BTreeMap<String, Value>,
    /// How long ago each fact was observed (whole seconds); default 0s.
    #[serde(default)]
    pub ages: BTreeMap<String, Age>,
    /// The server's attributes of the device; `device.status` is `active`
    /// unless given.
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
    /// When the last report came.
    #[serde(default)]
    pub last_report: LastReport,
    /// The tier expected.
    pub expect: String,
    /// Substrings each of which some reason must contain.
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// When a case's device last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastReport {
    /// This long before [`NOW_MS`]; the default is 0s, just now.
    Ago(Duration),
    /// Never (`never`).
    Never,
}

impl Default for LastReport {
    fn default() -> Self {
        LastReport::Ago(Duration::ZERO)
    }
}

impl<'de> Deserialize<'de> for LastReport {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::scalar(deserializer, "`never` or a duration", |text| {
            if text == "never" {
                return Ok(LastReport::Never);
            }
            super::parse_duration(text).map(LastReport::Ago).ok_or_else(|| {
                format!(
                    "invalid last_report {text:?} (want `never` or {})",
                    super::DURATION_FORMS
                )
            })
        })
    }
}

/// The age of a fact: whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age(pub Duration);

impl<'de> Deserialize<'de> for Age {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::scalar(
            deserializer,
            "an age in whole seconds (40s)",
            |text| match super::parse_duration(text) {
                Some(age) if age.subsec_nanos() == 0 => Ok(Age(age)),
                Some(_) => Err(format!(
                    "{text:?} is not whole seconds (facts are observed in seconds)"
                )),
                None => Err(format!("invalid age {text:?} (want e.g. 40s, 5m, 1h)")),
            },
        )
    }
}

/// A case's outcome.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Whether the tier, and every reason expected, were as expected.
    pub passed: bool,
    /// What the policy gave.
    pub got: Evaluation,
    /// The tier expected.
    pub want: String,
    /// Why it failed; empty when it passed.
    pub message: String,
}

impl Cases {
    /// Reads a case table from YAML; errors name `source`, the line and the key.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, PolicyError> {
        let cases: Cases = parse_yaml(text, source)?;
        for (i, case) in cases.cases.iter().enumerate() {
            if let Some(fact) = case.ages.keys().find(|fact| !case.facts.contains_key(*fact)) {
                return Err(PolicyError::Invalid {
                    file: source.to_owned(),
                    line: key_lines(text, "name", None).nth(i),
                    message: format!("cases[{i}].ages: {fact} is not in facts (case {:?})", case.name),
                });
            }
        }
        Ok(cases)
    }

    /// Reads a case file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = read(path)?;
        Self::from_yaml(&text, &path.display().to_string())
    }
}

impl Case {
    /// The device this case describes, as at [`NOW_MS`]: facts, attributes
    /// (with `device.status: active` unless given) and the last report.
    pub fn device(&self) -> (Facts, BTreeMap<String, Value>, Option<u64>) {
        let facts = self
            .facts
            .iter()
            .map(|(name, value)| {
                let age_ms = self.ages.get(name).map_or(0, |age| super::millis(age.0));
                let observed = Observed {
                    value: (!value.is_null()).then(|| value.clone()),
                    observed_at: NOW_MS.saturating_sub(age_ms) / 1000,
                };
                (name.clone(), observed)
            })
            .collect();
        let mut attributes = self.attributes.clone();
        attributes
            .entry(STATUS_ATTRIBUTE.to_owned())
            .or_insert_with(|| Value::String(STATUS_ACTIVE.to_owned()));
        let last_report_ms = match self.last_report {
            LastReport::Ago(ago) => Some(NOW_MS.saturating_sub(super::millis(ago))),
            LastReport::Never => None,
        };
        (facts, attributes, last_report_ms)
    }
}

/// Evaluates every case at [`NOW_MS`].
pub fn run(policy: &Policy, cases: &Cases) -> Vec<CaseResult> {
    cases
        .cases
        .iter()
        .map(|case| {
            let (facts, attributes, last_report_ms) = case.device();
            let view = DeviceView {
                facts: &facts,
                attributes: &attributes,
                last_report_ms,
            };
            let got = policy.evaluate(&view, NOW_MS);
            let mut problems = Vec::new();
            if !policy.tiers().contains(&case.expect) {
                problems.push(format!(
                    "expect: {:?} is not a tier (tiers: {})",
                    case.expect,
                    policy.tiers().join(", ")
                ));
            } else if got.tier != case.expect {
                problems.push(format!("got {}, want {}", got.tier, case.expect));
            }
            for wanted in &case.reasons {
                if !got.reasons.iter().any(|reason| reason.contains(wanted.as_str())) {
                    problems.push(format!("no reason contains {wanted:?}"));
                }
            }
            let message = if problems.is_empty() {
                String::new()
            } else if got.reasons.is_empty() {
                format!("{} (no reasons)", problems.join("; "))
            } else {
                format!("{} (reasons: {})", problems.join("; "), got.reasons.join("; "))
            };
            CaseResult {
                name: case.name.clone(),
                passed: problems.is_empty(),
                got,
                want: case.expect.clone(),
                message,
            }
        })
        .collect()
}
