//! Istio's `AuthorizationPolicy` as YAML (`security.istio.io/v1` and `v1beta1`),
//! read strictly: an unknown field, a wrong type, a principal, CIDR, port,
//! method, path template or `when` key that does not parse is an error naming
//! the field and its line; values are checked as they are read, so a policy that
//! loads is one that can be evaluated.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::matching::{IpBlock, PathMatch, StringMatch};

/// One policy document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document {
    /// `security.istio.io/v1` or `security.istio.io/v1beta1`.
    pub api_version: ApiVersion,
    /// `AuthorizationPolicy`.
    pub kind: Kind,
    /// Name, namespace, annotations.
    pub metadata: Metadata,
    /// Absent is the same as `{}`.
    #[serde(default)]
    pub spec: Spec,
    /// Written by Kubernetes; ignored.
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

/// The API versions Istio serves this kind under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ApiVersion {
    /// `security.istio.io/v1`.
    #[serde(rename = "security.istio.io/v1")]
    V1,
    /// `security.istio.io/v1beta1`.
    #[serde(rename = "security.istio.io/v1beta1")]
    V1beta1,
}

/// The kinds a policy file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Kind {
    /// `AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `PeerAuthentication`, read by [`crate::peer_authentication`].
    PeerAuthentication,
    /// `RequestAuthentication`, read by [`crate::request_authentication`].
    RequestAuthentication,
}

/// Kubernetes object metadata: the fields zt uses, and the server-written ones
/// accepted and ignored (so that `kubectl get -o yaml` output loads).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Unique within the namespace.
    pub name: Name,
    /// Required: zt has no "current namespace" to fall back on.
    pub namespace: Name,
    /// Labels of the policy object itself.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `istio.io/dry-run: "true"` evaluates without enforcing.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, rename = "uid")]
    _uid: Option<IgnoredAny>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<IgnoredAny>,
    #[serde(default, rename = "generation")]
    _generation: Option<IgnoredAny>,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: Option<IgnoredAny>,
    #[serde(default, rename = "managedFields")]
    _managed_fields: Option<IgnoredAny>,
}

/// A Kubernetes name (DNS-1123 label: lower-case alphanumerics and `-`, at most 63).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Name(pub String);

impl TryFrom<String> for Name {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !name.starts_with(['-', '.'])
            && !name.ends_with(['-', '.']);
        if ok {
            Ok(Name(name))
        } else {
            Err(format!(
                "{name:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.', at most 63)"
            ))
        }
    }
}

/// The policy proper.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Which workloads of the namespace; absent: all of them.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// Gateway API targets: not supported (zt selects workloads by labels).
    #[serde(default)]
    pub target_ref: Option<IgnoredAny>,
    /// As `target_ref`.
    #[serde(default)]
    pub target_refs: Option<IgnoredAny>,
    /// ALLOW unless said otherwise.
    #[serde(default)]
    pub action: Action,
    /// For CUSTOM.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// No rules: an ALLOW matches nothing (deny all), a DENY nothing (no effect).
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// `selector.matchLabels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// All must be on the workload.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Needed for the request to pass, once any ALLOW policy applies.
    #[default]
    Allow,
    /// Refuses what it matches, before any ALLOW.
    Deny,
    /// Marks what it matches for the record; decides nothing.
    Audit,
    /// An external authorizer (the Rego engine, to come): refused for now.
    Custom,
}

/// `provider` of a CUSTOM policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// The extension provider's name.
    pub name: String,
}

/// One rule: every part present must match (`from` any of its sources, `to` any
/// of its operations, `when` all conditions).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Sources, any of which may match.
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations, any of which may match.
    #[serde(default)]
    pub to: Vec<To>,
    /// Conditions, all of which must match.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `from[].source`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// The source; absent matches any.
    #[serde(default)]
    pub source: Source,
}

/// Who sends the request; every field present must match.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Peer identities, Istio's form: `cluster.local/ns/NS/sa/SA`.
    #[serde(default)]
    pub principals: Vec<Principal>,
    /// Peer identities that must not match.
    #[serde(default)]
    pub not_principals: Vec<Principal>,
    /// Request (JWT) identities, `ISS/SUB`. HTTP only.
    #[serde(default)]
    pub request_principals: Vec<Pattern>,
    /// Request identities that must not match. HTTP only.
    #[serde(default)]
    pub not_request_principals: Vec<Pattern>,
    /// The peer's namespace (from its `/ns/NS/` SPIFFE ID).
    #[serde(default)]
    pub namespaces: Vec<Pattern>,
    /// Namespaces that must not match.
    #[serde(default)]
    pub not_namespaces: Vec<Pattern>,
    /// The connection's peer address.
    #[serde(default)]
    pub ip_blocks: Vec<IpBlock>,
    /// Peer addresses that must not match.
    #[serde(default)]
    pub not_ip_blocks: Vec<IpBlock>,
    /// The original client address (the peer's, as zt trusts no
    /// `X-Forwarded-For`).
    #[serde(default)]
    pub remote_ip_blocks: Vec<IpBlock>,
    /// Original client addresses that must not match.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<IpBlock>,
}

/// `to[].operation`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// The operation; absent matches any.
    #[serde(default)]
    pub operation: Operation,
}

/// What the request does; every field present must match.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// `Host`/`:authority`, case-insensitive. HTTP only.
    #[serde(default)]
    pub hosts: Vec<Host>,
    /// Hosts that must not match. HTTP only.
    #[serde(default)]
    pub not_hosts: Vec<Host>,
    /// The destination port.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Ports that must not match.
    #[serde(default)]
    pub not_ports: Vec<Port>,
    /// Upper case. HTTP only.
    #[serde(default)]
    pub methods: Vec<Method>,
    /// Methods that must not match. HTTP only.
    #[serde(default)]
    pub not_methods: Vec<Method>,
    /// Normalized paths, without the query; `{*}`/`{**}` templates. HTTP only.
    #[serde(default)]
    pub paths: Vec<Path>,
    /// Paths that must not match. HTTP only.
    #[serde(default)]
    pub not_paths: Vec<Path>,
}

/// `when[]`: a key and the values it must (not) have, parsed for the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawCondition")]
pub struct Condition {
    /// What is looked at.
    pub key: WhenKey,
    /// Any of `values` must match, none of `notValues` may.
    pub values: ConditionValues,
}

/// A condition's values, typed by its key.
#[derive(Debug, Clone)]
pub enum ConditionValues {
    /// Patterns.
    Strings(Vec<StringMatch>, Vec<StringMatch>),
    /// Addresses and blocks (`source.ip`, `remote.ip`, `destination.ip`).
    Ips(Vec<IpBlock>, Vec<IpBlock>),
    /// Ports (`destination.port`).
    Ports(Vec<u16>, Vec<u16>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCondition {
    key: WhenKey,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

impl TryFrom<RawCondition> for Condition {
    type Error = String;

    fn try_from(raw: RawCondition) -> Result<Self, String> {
        if raw.values.is_empty() && raw.not_values.is_empty() {
            return Err("a condition needs values or notValues".into());
        }
        fn both<T>(
            raw: &RawCondition,
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<(Vec<T>, Vec<T>), String> {
            let each = |list: &[String], field: &str| {
                list.iter()
                    .enumerate()
                    .map(|(i, v)| parse(v).map_err(|e| format!("{field}[{i}]: {e}")))
                    .collect::<Result<Vec<T>, String>>()
            };
            Ok((each(&raw.values, "values")?, each(&raw.not_values, "notValues")?))
        }
        let values = match &raw.key {
            WhenKey::SourceIp | WhenKey::RemoteIp | WhenKey::DestinationIp => {
                let (any, none) = both(&raw, IpBlock::parse)?;
                ConditionValues::Ips(any, none)
            }
            WhenKey::DestinationPort => {
                let (any, none) = both(&raw, |v| {
                    v.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("{v:?} is not a port (1-65535)"))
                })?;
                ConditionValues::Ports(any, none)
            }
            WhenKey::SourcePrincipal => {
                let (any, none) = both(&raw, |v| Principal::try_from(v.to_owned()).map(|p| p.0))?;
                ConditionValues::Strings(any, none)
            }
            _ => {
                let (any, none) = both(&raw, |v| {
                    check_pattern(v)?;
                    Ok(StringMatch::parse(v, false))
                })?;
                ConditionValues::Strings(any, none)
            }
        };
        Ok(Condition { key: raw.key, values })
    }
}

/// The attributes a `when` condition may look at (Istio's condition keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhenKey {
    /// `request.headers[NAME]` (lower-cased). HTTP only.
    RequestHeader(String),
    /// `source.ip`.
    SourceIp,
    /// `remote.ip`.
    RemoteIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `request.auth.principal`. HTTP only.
    AuthPrincipal,
    /// `request.auth.audiences`. HTTP only.
    AuthAudiences,
    /// `request.auth.presenter`. HTTP only.
    AuthPresenter,
    /// `request.auth.claims[A][B]…`. HTTP only.
    AuthClaim(Vec<String>),
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `connection.sni`.
    ConnectionSni,
}

impl WhenKey {
    /// Whether only HTTP requests have it.
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            WhenKey::RequestHeader(_)
                | WhenKey::AuthPrincipal
                | WhenKey::AuthAudiences
                | WhenKey::AuthPresenter
                | WhenKey::AuthClaim(_)
        )
    }
}

impl<'de> Deserialize<'de> for WhenKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let key = String::deserialize(deserializer)?;
        parse_when_key(&key).map_err(serde::de::Error::custom)
    }
}

fn parse_when_key(key: &str) -> Result<WhenKey, String> {
    let bracketed = |rest: &str| -> Result<Vec<String>, String> {
        let mut parts = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            let inner = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .ok_or_else(|| format!("when key {key:?}: expected [NAME]"))?;
            if inner.0.is_empty() {
                return Err(format!("when key {key:?}: empty [ ]"));
            }
            parts.push(inner.0.to_owned());
            rest = inner.1;
        }
        Ok(parts)
    };
    Ok(match key {
        "source.ip" => WhenKey::SourceIp,
        "remote.ip" => WhenKey::RemoteIp,
        "source.namespace" => WhenKey::SourceNamespace,
        "source.principal" => WhenKey::SourcePrincipal,
        "request.auth.principal" => WhenKey::AuthPrincipal,
        "request.auth.audiences" => WhenKey::AuthAudiences,
        "request.auth.presenter" => WhenKey::AuthPresenter,
        "destination.ip" => WhenKey::DestinationIp,
        "destination.port" => WhenKey::DestinationPort,
        "connection.sni" => WhenKey::ConnectionSni,
        _ => {
            if let Some(rest) = key.strip_prefix("request.headers") {
                match bracketed(rest)?.as_slice() {
                    [name] => WhenKey::RequestHeader(name.to_ascii_lowercase()),
                    _ => return Err(format!("when key {key:?}: expected request.headers[NAME]")),
                }
            } else if let Some(rest) = key.strip_prefix("request.auth.claims")
                && let path = bracketed(rest)?
                && !path.is_empty()
            {
                WhenKey::AuthClaim(path)
            } else {
                return Err(format!(
                    "unknown when key {key:?} (known: request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni)"
                ));
            }
        }
    })
}

/// A string pattern: exact, `prefix*`, `*suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Pattern(pub StringMatch);

impl TryFrom<String> for Pattern {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        check_pattern(&value)?;
        Ok(Pattern(StringMatch::parse(&value, false)))
    }
}

/// Istio allows `*` only as a whole value, a prefix or a suffix.
fn check_pattern(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("an empty value matches nothing; remove it".into());
    }
    if value == "*" {
        return Ok(());
    }
    let core = value
        .strip_prefix('*')
        .or_else(|| value.strip_suffix('*'))
        .unwrap_or(value);
    if core.is_empty() || core.contains('*') {
        return Err(format!(
            "{value:?}: '*' may only be the whole value, a prefix or a suffix"
        ));
    }
    Ok(())
}

/// A peer principal pattern, Istio's form (`TRUST_DOMAIN/PATH`, no `spiffe://`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Principal(pub StringMatch);

impl TryFrom<String> for Principal {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if let Some(rest) = value.strip_prefix("spiffe://") {
            return Err(format!(
                "principal {value:?}: write it without spiffe://, as Istio does: {rest:?}"
            ));
        }
        check_pattern(&value)?;
        if !value.contains('*') {
            zt_identity::SpiffeId::parse(&format!("spiffe://{value}"))
                .map_err(|e| format!("principal {value:?} is not TRUST_DOMAIN/PATH: {e}"))?;
        }
        Ok(Principal(StringMatch::parse(&value, false)))
    }
}

/// A host pattern, compared in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Host(pub StringMatch);

impl TryFrom<String> for Host {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        check_pattern(&value)?;
        Ok(Host(StringMatch::parse(&value, true)))
    }
}

/// An HTTP method pattern, upper case.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Method(pub StringMatch);

impl TryFrom<String> for Method {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        check_pattern(&value)?;
        if value.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(format!(
                "method {value:?}: methods are upper case ({:?}); requests with lower-case methods are refused",
                value.to_ascii_uppercase()
            ));
        }
        Ok(Method(StringMatch::parse(&value, false)))
    }
}

/// A path pattern or template.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Path(pub PathMatch);

impl TryFrom<String> for Path {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if !value.contains(['{', '}']) {
            check_pattern(&value)?;
        }
        if value.contains(['?', '#']) {
            return Err(format!(
                "path {value:?}: paths are matched without query or fragment"
            ));
        }
        Ok(Path(PathMatch::parse(&value)?))
    }
}

/// A port: a number or a string of one (Istio writes strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let raw = Raw::deserialize(deserializer)?;
        let text = match raw {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        match text.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Port(port)),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not a port (1-65535)"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for IpBlock {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        IpBlock::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn patterns_allow_star_only_at_the_ends() {
        for ok in ["*", "abc", "abc*", "*abc"] {
            assert!(check_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a*c", "*abc*", "**", "a**"] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn when_keys() {
        assert_eq!(
            parse_when_key("request.headers[X-Token]").unwrap(),
            WhenKey::RequestHeader("x-token".into())
        );
        assert_eq!(
            parse_when_key("request.auth.claims[groups][0]").unwrap(),
            WhenKey::AuthClaim(vec!["groups".into(), "0".into()])
        );
        for bad in [
            "request.headers",
            "request.headers[]",
            "request.headers[a][b]",
            "request.auth.claims",
            "request.auth.claims[a",
            "source.ips",
            "experimental.envoy.filters.network.mysql_proxy[db.table]",
        ] {
            assert!(parse_when_key(bad).is_err(), "{bad}");
        }
    }
}
