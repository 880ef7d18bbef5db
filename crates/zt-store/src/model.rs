//! What the datastore keeps, as types that are valid by construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zt_identity::SpiffeId;
use zt_identity::x509::is_dns_name;

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 1024;
/// Most selectors on one entry.
pub const MAX_SELECTORS: usize = 64;
/// Most DNS names on one entry.
pub const MAX_DNS_NAMES: usize = 32;
/// Longest SVID TTL an entry may ask for: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
/// Longest Workload API hint.
pub const MAX_HINT_LEN: usize = 1024;

/// Why an entry or selector is invalid; each names the field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A hint that is empty, too long, or has control characters.
    #[error("hint {0:?}: must be 1 to 1024 characters, none of them control characters")]
    Hint(String),
    /// A selector not of the form `type:value`.
    #[error("selector {0:?}: expected type:value, e.g. unix:uid:1000 or k8s:ns:production")]
    SelectorFormat(String),
    /// A selector type outside `[a-z0-9_-]`.
    #[error("selector {0:?}: the type may only contain lowercase letters, digits, '-' and '_'")]
    SelectorType(String),
    /// A selector with control characters or over the size limit.
    #[error("selector {0:?}: the value must be at most {MAX_SELECTOR_LEN} bytes of printable text")]
    SelectorValue(String),
    /// An entry without selectors.
    #[error("selectors: at least one is required")]
    NoSelectors,
    /// Too many selectors or DNS names.
    #[error("{field}: at most {max} allowed, got {got}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// The limit.
        max: usize,
        /// What was given.
        got: usize,
    },
    /// A TTL of zero or over [`MAX_TTL_SECS`].
    #[error("{field}: {value}s is not between 1s and {MAX_TTL_SECS}s")]
    Ttl {
        /// `x509_ttl` or `jwt_ttl`.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// A workload entry whose SPIFFE ID has no path.
    #[error("spiffe_id {0}: a registration entry needs a path")]
    RootId(SpiffeId),
    /// Parent and entry in different trust domains.
    #[error("parent_id {parent}: not in the trust domain of {id}")]
    ForeignParent {
        /// The parent.
        parent: SpiffeId,
        /// The entry's ID.
        id: SpiffeId,
    },
    /// An invalid DNS name.
    #[error("dns_names: {0:?} is not a DNS name")]
    DnsName(String),
}

/// A workload or node property an entry matches on, `type:value` (`unix:uid:1000`).
/// Any type is accepted and stored; attestors decide which they produce.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Selector {
    kind: String,
    value: String,
}

impl Selector {
    /// Parses `type:value`.
    pub fn parse(input: &str) -> Result<Self, ModelError> {
        let (kind, value) = input
            .split_once(':')
            .ok_or_else(|| ModelError::SelectorFormat(input.to_owned()))?;
        if kind.is_empty() || value.is_empty() {
            return Err(ModelError::SelectorFormat(input.to_owned()));
        }
        if !kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(ModelError::SelectorType(input.to_owned()));
        }
        if input.len() > MAX_SELECTOR_LEN || value.chars().any(char::is_control) {
            return Err(ModelError::SelectorValue(input.chars().take(64).collect()));
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The type, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Selector {
    type Error = ModelError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Selector> for String {
    fn from(s: Selector) -> String {
        s.to_string()
    }
}

/// What a registration entry says: who (`spiffe_id`) may be issued to workloads
/// matching `selectors` under `parent_id` (an agent, or a node alias).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySpec {
    /// The identity to issue.
    #[serde(with = "spiffe_id_text")]
    pub spiffe_id: SpiffeId,
    /// The agent or node alias the workload runs under.
    #[serde(with = "spiffe_id_text")]
    pub parent_id: SpiffeId,
    /// All must match, sorted and without duplicates.
    pub selectors: Vec<Selector>,
    /// Lifetime of X.509-SVIDs, seconds.
    pub x509_ttl: u64,
    /// Lifetime of JWT-SVIDs, seconds.
    pub jwt_ttl: u64,
    /// DNS SANs for the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Whether SVIDs of this entry may use the admin API.
    pub admin: bool,
    /// A node alias entry: agents matching the selectors are grouped under `spiffe_id`.
    pub node: bool,
    /// After this time (unix seconds) the entry no longer issues.
    pub expires_at: Option<u64>,
    /// The Workload API's `hint` on this entry's SVIDs, for workloads that hold
    /// several identities to pick one by (SPIRE: `-hint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl EntrySpec {
    /// Sorts and de-duplicates selectors and DNS names, then checks every field.
    pub fn normalize(mut self) -> Result<Self, ModelError> {
        self.selectors.sort();
        self.selectors.dedup();
        self.dns_names.sort();
        self.dns_names.dedup();
        if self.selectors.is_empty() {
            return Err(ModelError::NoSelectors);
        }
        let too_many = |field, max, got| ModelError::TooMany { field, max, got };
        if self.selectors.len() > MAX_SELECTORS {
            return Err(too_many("selectors", MAX_SELECTORS, self.selectors.len()));
        }
        if self.dns_names.len() > MAX_DNS_NAMES {
            return Err(too_many("dns_names", MAX_DNS_NAMES, self.dns_names.len()));
        }
        for (field, value) in [("x509_ttl", self.x509_ttl), ("jwt_ttl", self.jwt_ttl)] {
            if value == 0 || value > MAX_TTL_SECS {
                return Err(ModelError::Ttl { field, value });
            }
        }
        if self.spiffe_id.is_root() {
            return Err(ModelError::RootId(self.spiffe_id));
        }
        if self.parent_id.trust_domain() != self.spiffe_id.trust_domain() {
            return Err(ModelError::ForeignParent {
                parent: self.parent_id,
                id: self.spiffe_id,
            });
        }
        if let Some(bad) = self.dns_names.iter().find(|d| !is_dns_name(d)) {
            return Err(ModelError::DnsName(bad.clone()));
        }
        if let Some(hint) = &self.hint
            && (hint.is_empty() || hint.len() > MAX_HINT_LEN || hint.chars().any(char::is_control))
        {
            return Err(ModelError::Hint(hint.chars().take(64).collect()));
        }
        Ok(self)
    }

    /// The selectors as one canonical string, the uniqueness key with the two IDs.
    pub(crate) fn selector_key(&self) -> String {
        self.selectors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A stored registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Server-assigned ID.
    pub id: String,
    /// What the entry says.
    #[serde(flatten)]
    pub spec: EntrySpec,
    /// Increases by one on every update; updates must name the revision they change.
    pub revision: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
}

/// SPIFFE IDs as their text in JSON.
mod spiffe_id_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use zt_identity::SpiffeId;

    pub fn serialize<S: Serializer>(id: &SpiffeId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SpiffeId, D::Error> {
        let text = String::deserialize(d)?;
        SpiffeId::parse(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        for ok in [
            "unix:uid:1000",
            "k8s:ns:production",
            "k8s:sa:payment-service",
            "a:b",
            "docker:label:x=y",
        ] {
            assert_eq!(
                Selector::parse(ok).map(|s| s.to_string()),
                Ok(ok.to_owned()),
                "{ok}"
            );
        }
        assert_eq!(
            Selector::parse("unix:uid:1000").map(|s| s.kind().to_owned()),
            Ok("unix".into())
        );
        for (bad, want) in [
            ("nocolon", ModelError::SelectorFormat("nocolon".into())),
            (":value", ModelError::SelectorFormat(":value".into())),
            ("type:", ModelError::SelectorFormat("type:".into())),
            ("Unix:uid:1", ModelError::SelectorType("Unix:uid:1".into())),
            ("un ix:uid:1", ModelError::SelectorType("un ix:uid:1".into())),
            ("unix:uid\n1", ModelError::SelectorValue("unix:uid\n1".into())),
        ] {
            assert_eq!(Selector::parse(bad), Err(want), "{bad:?}");
        }
        assert!(Selector::parse(&format!("a:{}", "b".repeat(MAX_SELECTOR_LEN))).is_err());
    }

    fn spec() -> EntrySpec {
        EntrySpec {
            spiffe_id: SpiffeId::parse("spiffe://example.org/payment").unwrap(),
            parent_id: SpiffeId::parse("spiffe://example.org/k8s-node").unwrap(),
            selectors: vec![
                Selector::parse("k8s:sa:payment-service").unwrap(),
                Selector::parse("k8s:ns:production").unwrap(),
                Selector::parse("k8s:ns:production").unwrap(),
            ],
            x509_ttl: 3600,
            jwt_ttl: 300,
            dns_names: vec![],
            admin: false,
            node: false,
            expires_at: None,
            hint: None,
        }
    }

    #[test]
    fn normalize_sorts_dedups_and_checks() {
        let spec = spec().normalize().unwrap();
        assert_eq!(spec.selector_key(), "k8s:ns:production\nk8s:sa:payment-service");
        let with = |f: fn(&mut EntrySpec)| {
            let mut s = spec.clone();
            f(&mut s);
            s.normalize().err()
        };
        assert_eq!(with(|s| s.selectors.clear()), Some(ModelError::NoSelectors));
        assert_eq!(
            with(|s| s.x509_ttl = 0),
            Some(ModelError::Ttl {
                field: "x509_ttl",
                value: 0
            })
        );
        assert!(matches!(
            with(|s| s.jwt_ttl = MAX_TTL_SECS + 1),
            Some(ModelError::Ttl { field: "jwt_ttl", .. })
        ));
        assert!(matches!(
            with(|s| s.spiffe_id = SpiffeId::parse("spiffe://example.org").unwrap()),
            Some(ModelError::RootId(_))
        ));
        assert!(matches!(
            with(|s| s.parent_id = SpiffeId::parse("spiffe://other.org/node").unwrap()),
            Some(ModelError::ForeignParent { .. })
        ));
        assert_eq!(
            with(|s| s.dns_names = vec!["bad name".into()]),
            Some(ModelError::DnsName("bad name".into()))
        );
    }

    #[test]
    fn entry_json_round_trip() {
        let entry = Entry {
            id: "e1".into(),
            spec: spec().normalize().unwrap(),
            revision: 3,
            created_at: 1,
            updated_at: 2,
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert!(
            json.contains(r#""spiffe_id":"spiffe://example.org/payment""#),
            "{json}"
        );
        assert!(
            json.contains(r#""selectors":["k8s:ns:production","k8s:sa:payment-service"]"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), entry);
        let bad = json.replace("spiffe://example.org/payment", "spiffe://Bad/x");
        assert!(
            serde_json::from_str::<Entry>(&bad)
                .unwrap_err()
                .to_string()
                .contains("spiffe://Bad/x")
        );
    }
}
