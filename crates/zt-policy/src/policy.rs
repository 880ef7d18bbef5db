//! A policy compiled for evaluation: every value already parsed, every rule
//! knowing whether it needs HTTP.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::matching::{IpBlock, PathMatch, StringMatch};
use crate::model::{self, Action, ConditionValues, Document, WhenKey};
use crate::request::Request;

/// Where a policy was read from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// The line its document starts on.
    pub line: usize,
}

/// The annotation that makes a policy evaluated but not enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// One AuthorizationPolicy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// ALLOW, DENY or AUDIT.
    pub action: Action,
    /// `selector.matchLabels`; `None`: every workload in scope.
    pub selector: Option<BTreeMap<String, String>>,
    /// `istio.io/dry-run: "true"`.
    pub dry_run: bool,
    /// The external authorizer a CUSTOM policy sends matching requests to.
    pub provider: Option<String>,
    /// Where it was read from.
    pub origin: Origin,
    rules: Vec<Rule>,
}

/// One compiled rule, read-only (for analysis: what it lets through, without
/// a request to decide).
#[derive(Debug, Clone)]
pub struct Rule {
    from: Vec<SourceMatch>,
    to: Vec<OperationMatch>,
    when: Vec<ConditionMatch>,
    /// It has a field only HTTP requests have.
    http_only: bool,
}

/// A list of patterns and a list that must not match, as every field has.
#[derive(Debug, Clone)]
pub struct Field<T> {
    any: Vec<T>,
    none: Vec<T>,
}

impl<T> Field<T> {
    fn new(any: Vec<T>, none: Vec<T>) -> Self {
        Self { any, none }
    }

    /// Whether the rule names this field at all (absent matches anything).
    pub fn is_set(&self) -> bool {
        !self.any.is_empty() || !self.none.is_empty()
    }

    /// The patterns one of which must match (empty: any value).
    pub fn any(&self) -> &[T] {
        &self.any
    }

    /// The patterns none of which may match (`not…`).
    pub fn none(&self) -> &[T] {
        &self.none
    }

    /// `test` says whether the request's value matches one pattern; an absent
    /// value matches no pattern (so `not…` fields accept it).
    fn matches(&self, test: impl Fn(&T) -> bool) -> bool {
        (self.any.is_empty() || self.any.iter().any(&test)) && !self.none.iter().any(&test)
    }
}

/// One `from[].source` of a rule.
#[derive(Debug, Clone)]
pub struct SourceMatch {
    principals: Field<StringMatch>,
    request_principals: Field<StringMatch>,
    namespaces: Field<StringMatch>,
    ip_blocks: Field<IpBlock>,
    remote_ip_blocks: Field<IpBlock>,
}

/// One `to[].operation` of a rule.
#[derive(Debug, Clone)]
pub struct OperationMatch {
    hosts: Field<StringMatch>,
    ports: Field<u16>,
    methods: Field<StringMatch>,
    paths: Field<PathMatch>,
}

#[derive(Debug, Clone)]
struct ConditionMatch {
    key: WhenKey,
    values: Values,
}

#[derive(Debug, Clone)]
enum Values {
    Strings(Field<StringMatch>),
    Ips(Field<IpBlock>),
    Ports(Field<u16>),
}

/// What a request looks like to the matchers, normalized once.
pub(crate) struct Facts<'a> {
    pub(crate) request: &'a Request,
    pub(crate) principal: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) http: Option<HttpFacts<'a>>,
}

pub(crate) struct HttpFacts<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: String,
    pub(crate) host: String,
    pub(crate) http: &'a crate::request::Http,
}

impl<'a> Facts<'a> {
    /// Normalizes the request; the error is why it is malformed.
    pub(crate) fn of(request: &'a Request) -> Result<Self, String> {
        let http = match (&request.request, request.protocol) {
            (Some(http), crate::request::Protocol::Http) => {
                crate::normalize::method(&http.method)?;
                Some(HttpFacts {
                    method: &http.method,
                    path: crate::normalize::target(&http.path)?.path,
                    host: crate::normalize::host(&http.host),
                    http,
                })
            }
            (None, crate::request::Protocol::Http) => {
                return Err("an http request needs its \"request\" part".into());
            }
            (_, crate::request::Protocol::Tcp) => None,
        };
        Ok(Self {
            request,
            principal: request.source.istio_principal(),
            namespace: request.source.namespace(),
            http,
        })
    }
}

impl Policy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks what the YAML reader could not (across fields) and compiles.
    /// Errors name the field.
    pub fn compile(document: Document, origin: Origin) -> Result<Policy, String> {
        if document.kind != model::Kind::AuthorizationPolicy {
            return Err("kind: expected AuthorizationPolicy".into());
        }
        let spec = document.spec;
        if spec.target_ref.is_some() || spec.target_refs.is_some() {
            return Err("spec.targetRef(s): zt selects workloads by spec.selector.matchLabels; Gateway API targets are not supported".into());
        }
        let provider = match (spec.action, &spec.provider) {
            (Action::Custom, Some(provider)) if !provider.name.is_empty() => Some(provider.name.clone()),
            (Action::Custom, _) => {
                return Err("spec.provider.name: a CUSTOM policy names its external authorizer".into());
            }
            (_, Some(_)) => return Err("spec.provider: only a CUSTOM policy has a provider".into()),
            _ => None,
        };
        let dry_run = match document
            .metadata
            .annotations
            .get(DRY_RUN_ANNOTATION)
            .map(String::as_str)
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(format!(
                    "metadata.annotations[{DRY_RUN_ANNOTATION}]: {other:?} is neither \"true\" nor \"false\""
                ));
            }
        };
        let rules = spec
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| compile_rule(rule).map_err(|e| format!("spec.rules[{i}].{e}")))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            namespace: document.metadata.namespace.0,
            name: document.metadata.name.0,
            action: spec.action,
            selector: spec.selector.map(|s| s.match_labels),
            dry_run,
            provider,
            origin,
            rules,
        })
    }

    /// Whether it selects a workload with these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|wanted| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    /// What a peer principal must look like for it to match: every principal
    /// pattern its rules name (exact, `prefix*` or `*suffix`), as index keys.
    /// `None`: it may match any principal (a rule without principals, or `*`).
    pub(crate) fn principal_keys(&self) -> Option<Vec<PrincipalKey<'_>>> {
        let mut keys = Vec::new();
        // No rules: matches nothing, so no key is needed and no request reaches it.
        for rule in &self.rules {
            if rule.from.is_empty() {
                return None;
            }
            for source in &rule.from {
                if source.principals.any.is_empty() {
                    return None;
                }
                for principal in &source.principals.any {
                    keys.push(match principal {
                        StringMatch::Exact(exact) => PrincipalKey::Exact(exact),
                        StringMatch::Prefix(prefix) => PrincipalKey::Prefix(prefix),
                        StringMatch::Suffix(suffix) => PrincipalKey::Suffix(suffix),
                        StringMatch::Present => return None,
                    });
                }
            }
        }
        Some(keys)
    }

    /// Its rules, in order (a rule's index is its position here).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The index of the first rule that matches.
    pub(crate) fn matching_rule(&self, facts: &Facts<'_>) -> Option<usize> {
        self.matching_rules(facts).next()
    }

    /// The index of every rule that matches, in order.
    pub(crate) fn matching_rules<'a>(&'a self, facts: &'a Facts<'_>) -> impl Iterator<Item = usize> + 'a {
        let tcp = facts.http.is_none();
        // On TCP, a rule with HTTP-only fields cannot match for ALLOW and AUDIT
        // (narrower); for DENY those fields are ignored (wider). Istio's rule.
        let lenient = self.action == Action::Deny;
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, rule)| !(tcp && rule.http_only && !lenient) && rule.matches(facts))
            .map(|(i, _)| i)
    }
}

/// One principal pattern of a policy, as an index key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrincipalKey<'a> {
    /// The whole principal.
    Exact(&'a str),
    /// `abc*`: principals that start with `abc`.
    Prefix(&'a str),
    /// `*abc`: principals that end with `abc`.
    Suffix(&'a str),
}

fn compile_rule(rule: model::Rule) -> Result<Rule, String> {
    let from: Vec<SourceMatch> = rule.from.into_iter().map(|f| compile_source(f.source)).collect();
    let to: Vec<OperationMatch> = rule
        .to
        .into_iter()
        .map(|t| compile_operation(t.operation))
        .collect();
    let when: Vec<ConditionMatch> = rule.when.into_iter().map(compile_condition).collect();
    let http_only = from.iter().any(|s| s.request_principals.is_set())
        || to
            .iter()
            .any(|o| o.hosts.is_set() || o.methods.is_set() || o.paths.is_set())
        || when.iter().any(|c| c.key.http_only());
    Ok(Rule {
        from,
        to,
        when,
        http_only,
    })
}

fn compile_source(source: model::Source) -> SourceMatch {
    let patterns = |v: Vec<model::Pattern>| v.into_iter().map(|p| p.0).collect();
    let principals = |v: Vec<model::Principal>| v.into_iter().map(|p| p.0).collect();
    SourceMatch {
        principals: Field::new(principals(source.principals), principals(source.not_principals)),
        request_principals: Field::new(
            patterns(source.request_principals),
            patterns(source.not_request_principals),
        ),
        namespaces: Field::new(patterns(source.namespaces), patterns(source.not_namespaces)),
        ip_blocks: Field::new(source.ip_blocks, source.not_ip_blocks),
        remote_ip_blocks: Field::new(source.remote_ip_blocks, source.not_remote_ip_blocks),
    }
}

fn compile_operation(operation: model::Operation) -> OperationMatch {
    let hosts = |v: Vec<model::Host>| v.into_iter().map(|h| h.0).collect();
    let ports = |v: Vec<model::Port>| v.into_iter().map(|p| p.0).collect();
    let methods = |v: Vec<model::Method>| v.into_iter().map(|m| m.0).collect();
    let paths = |v: Vec<model::Path>| v.into_iter().map(|p| p.0).collect();
    OperationMatch {
        hosts: Field::new(hosts(operation.hosts), hosts(operation.not_hosts)),
        ports: Field::new(ports(operation.ports), ports(operation.not_ports)),
        methods: Field::new(methods(operation.methods), methods(operation.not_methods)),
        paths: Field::new(paths(operation.paths), paths(operation.not_paths)),
    }
}

fn compile_condition(condition: model::Condition) -> ConditionMatch {
    let values = match condition.values {
        ConditionValues::Strings(any, none) => Values::Strings(Field::new(any, none)),
        ConditionValues::Ips(any, none) => Values::Ips(Field::new(any, none)),
        ConditionValues::Ports(any, none) => Values::Ports(Field::new(any, none)),
    };
    ConditionMatch {
        key: condition.key,
        values,
    }
}

impl Rule {
    /// Its sources (`from`); empty: any source.
    pub fn from(&self) -> &[SourceMatch] {
        &self.from
    }

    /// Its operations (`to`); empty: any operation.
    pub fn to(&self) -> &[OperationMatch] {
        &self.to
    }

    /// The `request.auth.claims[…]` paths its `when` conditions look at.
    pub fn claims_named(&self) -> impl Iterator<Item = &[String]> {
        self.when.iter().filter_map(|c| match &c.key {
            WhenKey::AuthClaim(path) => Some(path.as_slice()),
            _ => None,
        })
    }

    /// Whether it has `when` conditions.
    pub fn has_conditions(&self) -> bool {
        !self.when.is_empty()
    }

    /// Whether it names a field only HTTP requests have (so it never allows a
    /// TCP connection).
    pub fn http_only(&self) -> bool {
        self.http_only
    }

    fn matches(&self, facts: &Facts<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(facts)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(facts)))
            && self.when.iter().all(|c| c.matches(facts))
    }
}

fn string_field(field: &Field<StringMatch>, value: Option<&str>) -> bool {
    field.matches(|pattern| value.is_some_and(|v| pattern.matches(v)))
}

fn ip_field(field: &Field<IpBlock>, value: Option<IpAddr>) -> bool {
    field.matches(|block| value.is_some_and(|ip| block.contains(ip)))
}

impl SourceMatch {
    /// `principals` and `notPrincipals` (Istio's form, without `spiffe://`).
    pub fn principals(&self) -> &Field<StringMatch> {
        &self.principals
    }

    /// `namespaces` and `notNamespaces`.
    pub fn namespaces(&self) -> &Field<StringMatch> {
        &self.namespaces
    }

    /// `requestPrincipals` and `notRequestPrincipals` (JWT identities).
    pub fn request_principals(&self) -> &Field<StringMatch> {
        &self.request_principals
    }

    /// Whether it names peer or remote addresses (`ipBlocks`, `remoteIpBlocks`
    /// or their `not…`).
    pub fn names_addresses(&self) -> bool {
        self.ip_blocks.is_set() || self.remote_ip_blocks.is_set()
    }

    fn matches(&self, facts: &Facts<'_>) -> bool {
        let source = &facts.request.source;
        string_field(&self.principals, facts.principal)
            && string_field(&self.namespaces, facts.namespace)
            && ip_field(&self.ip_blocks, source.ip)
            && ip_field(&self.remote_ip_blocks, source.ip)
            && match &facts.http {
                Some(http) => string_field(
                    &self.request_principals,
                    http.http.auth.as_ref().and_then(|a| a.principal.as_deref()),
                ),
                None => true,
            }
    }
}

impl OperationMatch {
    /// `hosts` and `notHosts` (lower case).
    pub fn hosts(&self) -> &Field<StringMatch> {
        &self.hosts
    }

    /// `ports` and `notPorts`.
    pub fn ports(&self) -> &Field<u16> {
        &self.ports
    }

    /// `methods` and `notMethods`.
    pub fn methods(&self) -> &Field<StringMatch> {
        &self.methods
    }

    /// `paths` and `notPaths`.
    pub fn paths(&self) -> &Field<PathMatch> {
        &self.paths
    }

    fn matches(&self, facts: &Facts<'_>) -> bool {
        let port = facts.request.destination.port;
        self.ports.matches(|p| port == Some(*p))
            && match &facts.http {
                Some(http) => {
                    string_field(&self.hosts, Some(&http.host))
                        && string_field(&self.methods, Some(http.method))
                        && self.paths.matches(|p| p.matches(&http.path))
                }
                None => true,
            }
    }
}

impl ConditionMatch {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        let request = facts.request;
        match &self.values {
            Values::Ips(field) => {
                let ip = match self.key {
                    WhenKey::DestinationIp => request.destination.ip,
                    _ => request.source.ip,
                };
                ip_field(field, ip)
            }
            Values::Ports(field) => field.matches(|p| request.destination.port == Some(*p)),
            Values::Strings(field) => {
                let Some(strings) = self.strings(facts) else {
                    // An HTTP-only key on TCP: only DENY rules get here, and
                    // ignore it.
                    return true;
                };
                field.matches(|pattern| strings.iter().any(|v| pattern.matches(v)))
            }
        }
    }

    /// The request's values for a string key (several for lists); `None` for an
    /// HTTP-only key on TCP.
    fn strings(&self, facts: &Facts<'_>) -> Option<Vec<String>> {
        let request = facts.request;
        let auth = || facts.http.as_ref().and_then(|h| h.http.auth.as_ref());
        let one = |v: Option<&str>| v.map(|s| vec![s.to_owned()]).unwrap_or_default();
        if self.key.http_only() && facts.http.is_none() {
            return None;
        }
        Some(match &self.key {
            WhenKey::SourceNamespace => one(facts.namespace),
            WhenKey::SourcePrincipal => one(facts.principal),
            WhenKey::ConnectionSni => one(request.connection.as_ref().and_then(|c| c.sni.as_deref())),
            WhenKey::RequestHeader(name) => one(facts.http.as_ref().and_then(|h| {
                h.http
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            })),
            WhenKey::AuthPrincipal => one(auth().and_then(|a| a.principal.as_deref())),
            WhenKey::AuthPresenter => one(auth().and_then(|a| a.presenter.as_deref())),
            WhenKey::AuthAudiences => auth().map(|a| a.audiences.clone()).unwrap_or_default(),
            WhenKey::AuthClaim(path) => auth().map(|a| claim(&a.claims, path)).unwrap_or_default(),
            WhenKey::SourceIp | WhenKey::RemoteIp | WhenKey::DestinationIp | WhenKey::DestinationPort => {
                Vec::new()
            }
        })
    }
}

/// The string values of a (nested) claim: a string, or each string of a list;
/// numbers and booleans as written.
fn claim(claims: &serde_json::Map<String, serde_json::Value>, path: &[String]) -> Vec<String> {
    let Some((first, rest)) = path.split_first() else {
        return Vec::new();
    };
    let mut value = claims.get(first);
    for key in rest {
        value = value.and_then(|v| v.get(key));
    }
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => Vec::new(),
    }
}
