//! The device compliance policy: rules on posture facts → tiers, with a
//! maximum age per fact and a heartbeat after which a silent device drops.
//!
//! ```yaml
//! tiers: [trusted, basic, untrusted]   # best first; the last is the floor
//! heartbeat:
//!   window: 6s          # no report for this long: the device is silent
//!   silent_tier: basic  # the best tier a silent device keeps
//! rules:
//!   - name: firewall
//!     fact: firewall.active
//!     equals: true
//!     max_age: 30s
//!     required_for: trusted
//! ```
//!
//! # Tiers
//!
//! `required_for: X` reads "needed to be X or better". A failing rule
//! required for the tier at position `k` (0 = best) therefore caps the
//! device at position `k + 1`: one tier worse than the one it guards. The
//! device's tier is the worst of those caps, or the best tier when no rule
//! fails. A failing rule required for `basic` thus puts a device at
//! `untrusted` even when every rule for `trusted` passes: being `trusted`
//! implies being `basic`. A rule may not be required for the floor, which
//! every device has. A silent device is then capped at `silent_tier`; a
//! device that never reported, or whose `device.status` is not `active`, is
//! at the floor whatever its facts.
//!
//! # Facts and their age
//!
//! A rule's `fact` names a fact the device reports ([`crate::facts::names`]),
//! or, when it starts with `device.`, an attribute the server keeps about the
//! device (`device.key_type`, `device.status`): those are never taken from a
//! report and have no age. Unknown never passes a rule: a fact that is
//! missing, has no value, has a JSON type the rule cannot compare, was
//! observed `max_age` or longer before now, or was observed more than 5 s in
//! the future. A fact is fresh while younger than `max_age` (`[t, t +
//! max_age)`, as a JWT's `exp`), so it goes stale exactly at `t + max_age`.
//!
//! `max_age` defaults to the heartbeat window: a fact the agent has not
//! observed again within one window is as old as a silent device's. This
//! fails closed, and means a silent device keeps `silent_tier` only through
//! rules that set a `max_age` longer than the window.
//!
//! # Silence
//!
//! A device is silent once `window` has passed since its last accepted
//! report (at `last_report + window`, the same half-open convention).

mod cases;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

pub use cases::{Age, Case, CaseResult, Cases, LastReport, NOW_MS, run};

use crate::facts::Facts;

/// How far in the future a fact's observation time may be (clock skew)
/// before the fact counts as unknown.
pub const MAX_FUTURE_MS: u64 = 5_000;

/// The attribute that says whether a device is enrolled and usable.
pub const STATUS_ATTRIBUTE: &str = "device.status";

/// The only `device.status` that lets a device above the floor.
pub const STATUS_ACTIVE: &str = "active";

/// The event type of a CAEP device compliance change (CAEP 1.0).
pub const CAEP_DEVICE_COMPLIANCE_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/device-compliance-change";

/// A policy or case file that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy (or case table).
    #[error("{file}{}: {message}", at_line(.line))]
    Invalid {
        /// The file's name as given.
        file: String,
        /// The line (1-based), when it is known.
        line: Option<usize>,
        /// What is wrong, naming the key and the value.
        message: String,
    },
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

/// A compliance policy, valid by construction.
#[derive(Debug, Clone)]
pub struct Policy {
    tiers: Vec<String>,
    window: Duration,
    /// Position of the silent tier in `tiers`.
    silent_tier: usize,
    rules: Vec<Rule>,
    /// The first 16 hex digits of the SHA-256 of the policy's text.
    version: String,
}

/// One rule, checked.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    fact: String,
    test: Test,
    max_age_ms: u64,
    /// Position in `tiers` of the tier the rule is required for; never the floor.
    required_for: usize,
}

/// What a rule asks of its fact's value.
#[derive(Debug, Clone)]
enum Test {
    Equals(Value),
    In(Vec<Value>),
    AtMost(f64),
    AtLeast(f64),
    VersionAtLeast(Version),
}

/// A dotted numeric version (`12`, `6.1.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version(Vec<u64>);

impl Version {
    fn parse(text: &str) -> Option<Self> {
        text.split('.')
            .map(|part| {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    part.parse().ok()
                }
            })
            .collect::<Option<Vec<u64>>>()
            .map(Version)
    }

    /// Compares part by part, missing parts as 0 (`12` = `12.0`).
    fn at_least(&self, other: &Version) -> bool {
        let len = self.0.len().max(other.0.len());
        for i in 0..len {
            let a = self.0.get(i).copied().unwrap_or(0);
            let b = other.0.get(i).copied().unwrap_or(0);
            if a != b {
                return a > b;
            }
        }
        true
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{part}")?;
        }
        Ok(())
    }
}

/// A device as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceView<'a> {
    /// The facts of its last accepted report (`observed_at` in Unix seconds).
    pub facts: &'a Facts,
    /// What the server knows of it (`device.key_type`, `device.status`).
    pub attributes: &'a BTreeMap<String, Value>,
    /// When its last accepted report arrived (Unix ms); `None`: never.
    pub last_report_ms: Option<u64>,
}

/// The result of evaluating a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The device's tier.
    pub tier: String,
    /// Why the device is not in a better tier: one line per failing rule,
    /// then silence; or why it is at the floor (`never reported`,
    /// `device.status is revoked (want active)`).
    pub reasons: Vec<String>,
    /// The earliest time (Unix ms) at which the tier or the set of failing
    /// rules changes with no new report: a passing fact reaching its
    /// `max_age`, a future fact coming within the allowed skew, or the
    /// heartbeat window running out. `None` if never.
    pub changes_at_ms: Option<u64>,
}

impl Policy {
    /// Reads a policy from YAML; errors name `source`, the line and the key.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy = parse_yaml(text, source)?;
        let invalid = |line: Option<usize>, message: String| PolicyError::Invalid {
            file: source.to_owned(),
            line,
            message,
        };
        let tiers_line = locate(text, "tiers", None);
        if raw.tiers.len() < 2 {
            return Err(invalid(
                tiers_line,
                format!(
                    "tiers: {} given, at least 2 needed (the last is the floor)",
                    raw.tiers.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for tier in &raw.tiers {
            if tier.trim().is_empty() {
                return Err(invalid(tiers_line, "tiers: an empty tier name".to_owned()));
            }
            if !seen.insert(tier.as_str()) {
                return Err(invalid(tiers_line, format!("tiers: {tier:?} appears twice")));
            }
        }
        let position = |name: &str| raw.tiers.iter().position(|t| t == name);
        let tier_list = raw.tiers.join(", ");

        if raw.heartbeat.window.is_zero() {
            return Err(invalid(
                locate(text, "window", None),
                "heartbeat.window: must be longer than 0".to_owned(),
            ));
        }
        let window_ms = millis(raw.heartbeat.window);
        let silent_tier = position(&raw.heartbeat.silent_tier).ok_or_else(|| {
            invalid(
                locate(text, "silent_tier", Some(&raw.heartbeat.silent_tier)),
                format!(
                    "heartbeat.silent_tier: {:?} is not a tier (tiers: {tier_list})",
                    raw.heartbeat.silent_tier
                ),
            )
        })?;

        let floor = raw.tiers.len() - 1;
        let mut names = BTreeSet::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, rule) in raw.rules.into_iter().enumerate() {
            // Rules are the only mappings with a `name`: the i-th is rule i's.
            let here = key_lines(text, "name", None).nth(i);
            // A key of this rule: the first at or after its name.
            let field = |key: &str, value: Option<&str>| {
                key_lines(text, key, value).find(|&l| Some(l) >= here).or(here)
            };
            let key = |field: &str| format!("rules[{i}].{field}");
            if rule.name.trim().is_empty() {
                return Err(invalid(here, format!("{}: empty", key("name"))));
            }
            if !names.insert(rule.name.clone()) {
                return Err(invalid(
                    here,
                    format!("{}: {:?} names two rules", key("name"), rule.name),
                ));
            }
            if rule.fact.trim().is_empty() {
                return Err(invalid(
                    field("fact", Some(&rule.fact)),
                    format!("{}: empty (rule {})", key("fact"), rule.name),
                ));
            }
            let required_for = match position(&rule.required_for) {
                Some(p) if p < floor => p,
                Some(_) => {
                    return Err(invalid(
                        field("required_for", Some(&rule.required_for)),
                        format!(
                            "{}: {:?} is the floor, which every device has (rule {})",
                            key("required_for"),
                            rule.required_for,
                            rule.name
                        ),
                    ));
                }
                None => {
                    return Err(invalid(
                        field("required_for", Some(&rule.required_for)),
                        format!(
                            "{}: {:?} is not a tier (tiers: {tier_list})",
                            key("required_for"),
                            rule.required_for
                        ),
                    ));
                }
            };
            let max_age_ms = match rule.max_age {
                Some(age) if age.is_zero() => {
                    return Err(invalid(
                        field("max_age", None),
                        format!("{}: must be longer than 0 (rule {})", key("max_age"), rule.name),
                    ));
                }
                Some(age) => millis(age),
                None => window_ms,
            };
            let mut tests = Vec::new();
            if let Some(value) = rule.equals {
                if value.is_null() {
                    return Err(invalid(
                        field("equals", None),
                        format!(
                            "{}: null (unknown never passes; rule {})",
                            key("equals"),
                            rule.name
                        ),
                    ));
                }
                tests.push(Test::Equals(value));
            }
            if let Some(values) = rule.in_ {
                if values.is_empty() || values.iter().any(Value::is_null) {
                    return Err(invalid(
                        field("in", None),
                        format!("{}: must list values, none null (rule {})", key("in"), rule.name),
                    ));
                }
                tests.push(Test::In(values));
            }
            for (name, bound, make) in [
                ("at_most", rule.at_most, Test::AtMost as fn(f64) -> Test),
                ("at_least", rule.at_least, Test::AtLeast),
            ] {
                if let Some(bound) = bound {
                    if !bound.is_finite() {
                        return Err(invalid(
                            field(name, None),
                            format!(
                                "{}: {bound} is not a finite number (rule {})",
                                key(name),
                                rule.name
                            ),
                        ));
                    }
                    tests.push(make(bound));
                }
            }
            if let Some(version) = rule.version_at_least {
                tests.push(Test::VersionAtLeast(version));
            }
            let test = match (tests.pop(), tests.is_empty()) {
                (Some(test), true) => test,
                _ => {
                    return Err(invalid(
                        here,
                        format!(
                            "rules[{i}]: rule {} needs exactly one of equals, in, at_most, at_least, version_at_least",
                            rule.name
                        ),
                    ));
                }
            };
            rules.push(Rule {
                name: rule.name,
                fact: rule.fact,
                test,
                max_age_ms,
                required_for,
            });
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        Ok(Policy {
            tiers: raw.tiers,
            window: raw.heartbeat.window,
            silent_tier,
            rules,
            version: hex(digest.as_ref().get(..8).unwrap_or_default()),
        })
    }

    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = read(path)?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Which policy this is: the first 16 hex digits of its text's SHA-256.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The tiers, best first.
    pub fn tiers(&self) -> &[String] {
        &self.tiers
    }

    /// The last tier, where every device falls.
    pub fn floor(&self) -> &str {
        self.tiers.last().map_or("", String::as_str)
    }

    /// How long a device may go without reporting before it is silent.
    pub fn heartbeat_window(&self) -> Duration {
        self.window
    }

    /// Evaluates a device at `now_ms` (Unix milliseconds).
    pub fn evaluate(&self, device: &DeviceView<'_>, now_ms: u64) -> Evaluation {
        let floor = self.tiers.len().saturating_sub(1);
        let status = device.attributes.get(STATUS_ATTRIBUTE);
        if status.and_then(Value::as_str) != Some(STATUS_ACTIVE) {
            let reason = match status {
                None | Some(Value::Null) => format!("{STATUS_ATTRIBUTE} is unknown (want {STATUS_ACTIVE})"),
                Some(Value::String(s)) => format!("{STATUS_ATTRIBUTE} is {s} (want {STATUS_ACTIVE})"),
                Some(other) => format!("{STATUS_ATTRIBUTE} is {other} (want {STATUS_ACTIVE})"),
            };
            return self.at(floor, vec![reason], None);
        }
        let Some(last_report_ms) = device.last_report_ms else {
            return self.at(floor, vec!["never reported".to_owned()], None);
        };

        let mut tier = 0;
        let mut reasons = Vec::new();
        let mut changes_at: Option<u64> = None;
        let mut change_at = |t: u64| changes_at = Some(changes_at.map_or(t, |c| c.min(t)));
        for rule in &self.rules {
            let (check, change) = rule.check(device, now_ms);
            if let Some(t) = change {
                change_at(t);
            }
            if let Err(why) = check {
                tier = tier.max(rule.required_for + 1);
                reasons.push(format!("rule {}: {why}", rule.name));
            }
        }
        let deadline = last_report_ms.saturating_add(millis(self.window));
        if now_ms >= deadline {
            tier = tier.max(self.silent_tier);
            reasons.push(format!(
                "silent: no report for {} (heartbeat window {})",
                show_ms(now_ms.saturating_sub(last_report_ms)),
                show_ms(millis(self.window))
            ));
        } else {
            change_at(deadline);
        }
        self.at(tier.min(floor), reasons, changes_at)
    }

    fn at(&self, tier: usize, reasons: Vec<String>, changes_at_ms: Option<u64>) -> Evaluation {
        let tier = self
            .tiers
            .get(tier)
            .map_or_else(|| self.floor().to_owned(), Clone::clone);
        Evaluation {
            tier,
            reasons,
            changes_at_ms,
        }
    }
}

impl Rule {
    /// Whether the rule passes (or why not), and when that changes by
    /// itself: when a passing fact goes stale, or a future fact comes within
    /// the allowed skew.
    fn check(&self, device: &DeviceView<'_>, now_ms: u64) -> (Result<(), String>, Option<u64>) {
        let fact = self.fact.as_str();
        let (value, expires) = if fact.starts_with("device.") {
            (device.attributes.get(fact), None)
        } else {
            let Some(observed) = device.facts.get(fact) else {
                return (Err(format!("{fact} is unknown")), None);
            };
            let at_ms = observed.observed_at.saturating_mul(1000);
            if at_ms > now_ms.saturating_add(MAX_FUTURE_MS) {
                return (
                    Err(format!(
                        "{fact} observed {} in the future",
                        show_ms(at_ms.saturating_sub(now_ms))
                    )),
                    Some(at_ms.saturating_sub(MAX_FUTURE_MS)),
                );
            }
            let age = now_ms.saturating_sub(at_ms);
            if age >= self.max_age_ms {
                let relation = if age == self.max_age_ms {
                    "reaching"
                } else {
                    "older than"
                };
                return (
                    Err(format!(
                        "{fact} observed {} ago, {relation} max_age {}",
                        show_ms(age),
                        show_ms(self.max_age_ms)
                    )),
                    None,
                );
            }
            (
                observed.value.as_ref(),
                Some(at_ms.saturating_add(self.max_age_ms)),
            )
        };
        let result = match value {
            None | Some(Value::Null) => Err(format!("{fact} is unknown")),
            Some(value) => self.test.check(fact, value),
        };
        // A failing fact going stale leaves the rule failing: no change.
        let change = if result.is_ok() { expires } else { None };
        (result, change)
    }
}

impl Test {
    fn check(&self, fact: &str, value: &Value) -> Result<(), String> {
        match self {
            Test::Equals(want) => match same(value, want) {
                Some(true) => Ok(()),
                Some(false) => Err(format!("{fact} is {} (want {})", show(value), show(want))),
                None => Err(wrong_type(fact, value, type_name(want))),
            },
            Test::In(wants) => {
                let results: Vec<Option<bool>> = wants.iter().map(|w| same(value, w)).collect();
                if results.contains(&Some(true)) {
                    Ok(())
                } else if results.contains(&Some(false)) {
                    let list: Vec<String> = wants.iter().map(show).collect();
                    Err(format!(
                        "{fact} is {} (want one of [{}])",
                        show(value),
                        list.join(", ")
                    ))
                } else {
                    Err(wrong_type(fact, value, "a value of the listed types"))
                }
            }
            Test::AtMost(bound) | Test::AtLeast(bound) => {
                let Some(number) = value.as_f64() else {
                    return Err(wrong_type(fact, value, "a number"));
                };
                let (ok, word) = match self {
                    Test::AtMost(_) => (number <= *bound, "at most"),
                    _ => (number >= *bound, "at least"),
                };
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "{fact} is {} (want {word} {})",
                        show(value),
                        show_number(*bound)
                    ))
                }
            }
            Test::VersionAtLeast(want) => {
                let Some(text) = value.as_str() else {
                    return Err(wrong_type(fact, value, "a version string"));
                };
                match Version::parse(text) {
                    Some(have) if have.at_least(want) => Ok(()),
                    Some(_) => Err(format!(
                        "{fact} is {} (want version {want} or later)",
                        show(value)
                    )),
                    None => Err(format!(
                        "{fact} is unknown ({} is not a dotted numeric version)",
                        show(value)
                    )),
                }
            }
        }
    }
}

/// Whether two values are equal, numbers by value (`1` = `1.0`); `None`
/// when their JSON types differ (the fact is then unknown to the rule).
fn same(value: &Value, want: &Value) -> Option<bool> {
    match (value, want) {
        (Value::Number(a), Value::Number(b)) => Some(a.as_f64() == b.as_f64()),
        (Value::Bool(_), Value::Bool(_))
        | (Value::String(_), Value::String(_))
        | (Value::Array(_), Value::Array(_))
        | (Value::Object(_), Value::Object(_)) => Some(value == want),
        _ => None,
    }
}

fn wrong_type(fact: &str, value: &Value, want: &str) -> String {
    format!(
        "{fact} is unknown ({} is {}, want {want})",
        show(value),
        type_name(value)
    )
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A value as it would be written in JSON (strings quoted).
fn show(value: &Value) -> String {
    value.to_string()
}

fn show_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{n:.0}")
    } else {
        n.to_string()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration in milliseconds as people write it: `500ms`, `45s`, `7.2s`,
/// `5m`, `2h` (tenths of a second, truncated, when not whole).
pub(crate) fn show_ms(ms: u64) -> String {
    match ms {
        0 => "0s".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ if ms < 1_000 => format!("{ms}ms"),
        _ => format!("{}.{}s", ms / 1_000, (ms % 1_000) / 100),
    }
}

/// Reads `500ms`, `6s`, `5m`, `1h`: a whole number and a unit.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return None;
    }
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3_600).map(Duration::from_secs),
        _ => None,
    }
}

/// Deserializes a scalar through `parse`, inside the YAML scalar's own
/// deserialization so that an error names its key and line (an error made
/// after `String::deserialize` returns names the enclosing mapping only).
/// Numbers are read as their text.
pub(crate) fn scalar<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Scalar<F>(F, &'static str);
    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> serde::de::Visitor<'de> for Scalar<F> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
            self.visit_str(&v.to_string())
        }
    }
    deserializer.deserialize_str(Scalar(parse, expecting))
}

const DURATION_FORMS: &str = "a whole number and ms, s, m or h: 500ms, 6s, 5m, 1h";

/// Deserializes a duration (`6s`).
pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    scalar(deserializer, "a duration (6s)", |text| {
        parse_duration(text).ok_or_else(|| format!("invalid duration {text:?} (want {DURATION_FORMS})"))
    })
}

fn optional_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// Keeps an explicit `null` (`Some(Null)`) apart from an absent key (`None`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// A version bound, written as a string (`"12"`) or a number (`12`); quote
/// it, as YAML reads `12.10` as the number 12.1.
fn version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Version>, D::Error> {
    scalar(deserializer, "a dotted numeric version (\"12\")", |text| {
        Version::parse(text)
            .map(Some)
            .ok_or_else(|| format!("{text:?} is not a dotted numeric version"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    tiers: Vec<String>,
    heartbeat: RawHeartbeat,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    #[serde(deserialize_with = "duration")]
    window: Duration,
    silent_tier: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    fact: String,
    #[serde(default, deserialize_with = "present")]
    equals: Option<Value>,
    #[serde(default, rename = "in")]
    in_: Option<Vec<Value>>,
    #[serde(default)]
    at_most: Option<f64>,
    #[serde(default)]
    at_least: Option<f64>,
    #[serde(default, deserialize_with = "version")]
    version_at_least: Option<Version>,
    #[serde(default, deserialize_with = "optional_duration")]
    max_age: Option<Duration>,
    required_for: String,
}

/// Reads a file as text.
pub(crate) fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Deserializes YAML strictly; the error names `source`, the line, and the
/// key path serde_yaml_ng gives (`rules[1].equals: …`).
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, source: &str) -> Result<T, PolicyError> {
    T::deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(|e| {
        let message = e.to_string();
        let (line, message) = match e.location() {
            Some(location) => {
                let suffix = format!(" at line {} column {}", location.line(), location.column());
                let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
                // An error at the end of the input names the last line that exists.
                let last = text.lines().count().max(1);
                (Some(location.line().clamp(1, last)), message)
            }
            None => (None, message),
        };
        PolicyError::Invalid {
            file: source.to_owned(),
            line,
            message,
        }
    })
}

/// The lines (1-based) where `key:` is written, with `value` when given, in
/// block or flow style (`{key: value}`): the position of errors found after
/// deserializing, which carry none.
pub(crate) fn key_lines<'t>(
    text: &'t str,
    key: &'t str,
    value: Option<&'t str>,
) -> impl Iterator<Item = usize> + 't {
    text.lines()
        .enumerate()
        .filter(move |(_, line)| {
            // Outside quotes, a `#` after a space (or first) starts a comment.
            let line = match line.find(" #") {
                Some(end) if !line.trim_start().starts_with('#') => line.get(..end).unwrap_or(line),
                _ if line.trim_start().starts_with('#') => "",
                _ => line,
            };
            line.match_indices(key).any(|(at, _)| {
                let before = line.get(..at).and_then(|b| b.chars().next_back());
                if !matches!(before, None | Some(' ' | '{' | ',' | '-')) {
                    return false;
                }
                let Some(rest) = line
                    .get(at + key.len()..)
                    .and_then(|r| r.trim_start().strip_prefix(':'))
                    .filter(|r| r.is_empty() || r.starts_with(' '))
                else {
                    return false;
                };
                let Some(value) = value else { return true };
                let token = rest.split([',', '}']).next().unwrap_or("").trim();
                let unquoted = token
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .or_else(|| token.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')))
                    .unwrap_or(token);
                unquoted == value
            })
        })
        .map(|(index, _)| index + 1)
}

/// The first line where `key:` is written (with `value`, when given).
pub(crate) fn locate(text: &str, key: &str, value: Option<&str>) -> Option<usize> {
    key_lines(text, key, value).next()
}

/// A CAEP 1.0 `device-compliance-change` event in a Security Event Token
/// payload (RFC 8417), for the caller to sign. CAEP knows two statuses: the
/// floor tier is `not-compliant`, every other tier `compliant`; our tier
/// names ride along as `zt_previous_tier` and `zt_current_tier`. The
/// subject is a complex subject identifier (RFC 9493) whose device is the
/// device's opaque id; its SPIFFE ID is carried as `zt_spiffe_id`.
#[expect(
    clippy::too_many_arguments,
    reason = "the event's fields, named at the call site"
)]
pub fn caep_event(
    issuer: &str,
    device_id: &str,
    spiffe_id: &str,
    previous_tier: &str,
    current_tier: &str,
    floor: &str,
    reasons: &[String],
    at_secs: u64,
) -> Value {
    let status = |tier: &str| {
        if tier == floor {
            "not-compliant"
        } else {
            "compliant"
        }
    };
    let (previous_status, current_status) = (status(previous_tier), status(current_tier));
    let reason_admin = if reasons.is_empty() {
        format!("device tier {previous_tier} -> {current_tier}")
    } else {
        format!(
            "device tier {previous_tier} -> {current_tier}: {}",
            reasons.join("; ")
        )
    };
    let reason_user = match (previous_status, current_status) {
        ("compliant", "not-compliant") => "Your device no longer meets the security policy.",
        ("not-compliant", "compliant") => "Your device meets the security policy again.",
        _ => "Your device's access level has changed.",
    };
    let event = serde_json::json!({
        "previous_status": previous_status,
        "current_status": current_status,
        "event_timestamp": at_secs,
        "initiating_entity": "policy",
        "reason_admin": { "en": reason_admin },
        "reason_user": { "en": reason_user },
        "zt_previous_tier": previous_tier,
        "zt_current_tier": current_tier,
        "zt_spiffe_id": spiffe_id,
    });
    serde_json::json!({
        "iss": issuer,
        "jti": jti(device_id, previous_tier, current_tier, at_secs),
        "iat": at_secs,
        "sub_id": {
            "format": "complex",
            "device": { "format": "opaque", "id": device_id },
        },
        "events": { CAEP_DEVICE_COMPLIANCE_CHANGE: event },
    })
}

/// 128 random bits in hex; should the system generator fail, a digest of
/// the change itself, which is still unique per device, change and second.
fn jti(device_id: &str, previous: &str, current: &str, at_secs: u64) -> String {
    let mut bytes = [0u8; 16];
    let digest;
    let bytes: &[u8] = if aws_lc_rs::rand::fill(&mut bytes).is_ok() {
        &bytes
    } else {
        let input = format!("{device_id}\n{previous}\n{current}\n{at_secs}");
        digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input.as_bytes());
        digest.as_ref().get(..16).unwrap_or(digest.as_ref())
    };
    hex(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

#[cfg(test)]
mod tests;
