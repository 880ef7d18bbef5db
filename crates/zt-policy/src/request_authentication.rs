//! Istio's `RequestAuthentication` (`security.istio.io/v1` and `v1beta1`): which
//! issuers' JWTs a workload accepts, where a request carries its token, and
//! what of a verified token the app receives.
//!
//! Read as strictly as the other kinds (an unknown field is an error naming
//! its line). Selection is AuthorizationPolicy's: the policies of the
//! workload's namespace and of the root namespace whose `selector.matchLabels`
//! (none: every workload) the workload carries; the `jwtRules` of all of them
//! apply together, as Istio merges them. Verifying tokens is `zt-authn`'s
//! work; this module only describes the rules.
//!
//! Differences from Istio, refused at load rather than silently changed:
//! `targetRef(s)` (Gateway API), a rule with neither `jwks` nor `jwksUri`
//! (Istio would discover the keys from the issuer's OpenID configuration),
//! and `jwksUri` other than `https://`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::model::{ApiVersion, Kind, Metadata, Selector};
use crate::policy::Origin;

/// One `RequestAuthentication` document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document {
    /// `security.istio.io/v1` or `security.istio.io/v1beta1`.
    pub api_version: ApiVersion,
    /// `RequestAuthentication`.
    pub kind: Kind,
    /// Name and namespace.
    pub metadata: Metadata,
    /// Absent is the same as `{}` (no rules: no effect).
    #[serde(default)]
    pub spec: Spec,
    /// Written by Kubernetes; ignored.
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

/// `spec` of a RequestAuthentication.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Which workloads; absent (or no labels): every workload of the namespace.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// Gateway API targets: not supported.
    #[serde(default)]
    pub target_ref: Option<IgnoredAny>,
    /// As `target_ref`.
    #[serde(default)]
    pub target_refs: Option<IgnoredAny>,
    /// The issuers whose tokens are accepted.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRuleSpec>,
}

/// One `jwtRules` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRuleSpec {
    /// `iss` of the tokens; required.
    pub issuer: NonEmpty,
    /// Accepted `aud` values; empty: any.
    #[serde(default)]
    pub audiences: Vec<NonEmpty>,
    /// Where to fetch the JWK Set (`https://` only).
    #[serde(default)]
    pub jwks_uri: Option<JwksUri>,
    /// The JWK Set itself, as a JSON string.
    #[serde(default)]
    pub jwks: Option<String>,
    /// Headers carrying the token.
    #[serde(default)]
    pub from_headers: Vec<FromHeader>,
    /// Query parameters carrying the token.
    #[serde(default)]
    pub from_params: Vec<NonEmpty>,
    /// Cookies carrying the token.
    #[serde(default)]
    pub from_cookies: Vec<NonEmpty>,
    /// Whether the app receives the token; default false (removed).
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied to headers for the app.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
    /// A header for the app carrying the payload (base64url JSON).
    #[serde(default)]
    pub output_payload_to_header: Option<HeaderName>,
}

/// `fromHeaders` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromHeader {
    /// The header.
    pub name: HeaderName,
    /// What precedes the token in the header's value (`Bearer `).
    #[serde(default)]
    pub prefix: String,
}

/// `outputClaimToHeaders` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    /// The header set for the app.
    pub header: HeaderName,
    /// The claim; `a.b` names member `b` of claim `a`.
    pub claim: ClaimPath,
}

/// A string that must not be empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct NonEmpty(pub String);

impl TryFrom<String> for NonEmpty {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if value.is_empty() {
            return Err("an empty string is not allowed here".into());
        }
        Ok(Self(value))
    }
}

/// An HTTP header name, lower-cased; not one the proxy owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct HeaderName(pub String);

/// Headers a rule may not write: framing, routing, and the identity header
/// the proxy itself sets.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "x-forwarded-client-cert",
];

impl TryFrom<String> for HeaderName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        // RFC 9110 token characters.
        let token = !name.is_empty()
            && name.len() <= 256
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(format!("header name {name:?} is not an HTTP header name"));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(format!("header name {name:?} is a header the proxy owns"));
        }
        Ok(Self(lower))
    }
}

/// A claim name, or a path of member names separated by `.`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ClaimPath(pub Vec<String>);

impl TryFrom<String> for ClaimPath {
    type Error = String;

    fn try_from(claim: String) -> Result<Self, String> {
        let parts: Vec<String> = claim.split('.').map(str::to_owned).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!("claim {claim:?} is not a claim name or a.b path"));
        }
        Ok(Self(parts))
    }
}

impl ClaimPath {
    /// The claim's value in `claims`, following the path.
    pub fn find<'a>(
        &self,
        claims: &'a serde_json::Map<String, serde_json::Value>,
    ) -> Option<&'a serde_json::Value> {
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(first)?;
        for part in rest {
            value = value.as_object()?.get(part)?;
        }
        Some(value)
    }
}

/// A `jwksUri`: `https://` and a host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct JwksUri(pub String);

impl TryFrom<String> for JwksUri {
    type Error = String;

    fn try_from(uri: String) -> Result<Self, String> {
        let host = uri
            .strip_prefix("https://")
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
        match host {
            Some(host) if !host.is_empty() && !host.contains('@') && !uri.contains(char::is_whitespace) => {
                Ok(Self(uri))
            }
            _ => Err(format!(
                "jwksUri {uri:?} is not an https:// URL with a host (zt fetches keys over HTTPS only)"
            )),
        }
    }
}

/// Where a request may carry a token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TokenLocation {
    /// A header (name lower-cased), its value starting with `prefix`.
    Header {
        /// The header.
        name: String,
        /// What precedes the token.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl TokenLocation {
    /// Istio's defaults: `Authorization: Bearer …` and `?access_token=…`.
    pub fn defaults() -> Vec<TokenLocation> {
        vec![
            TokenLocation::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            },
            TokenLocation::Param("access_token".into()),
        ]
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched from this `https://` URL.
    Uri(String),
    /// This JWK Set document, checked at load.
    Inline(String),
}

/// A claim copied to a header for the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// The header (lower case).
    pub header: String,
    /// The claim's path.
    pub claim: ClaimPath,
}

/// One `jwtRules` entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRule {
    /// `iss` of the tokens.
    pub issuer: String,
    /// Accepted audiences; empty: any.
    pub audiences: Vec<String>,
    /// The keys.
    pub jwks: JwksSource,
    /// Where the token is looked for (never empty: Istio's defaults when none is given).
    pub locations: Vec<TokenLocation>,
    /// Whether the app receives the token.
    pub forward_original_token: bool,
    /// Claims copied to headers.
    pub claim_headers: Vec<ClaimHeader>,
    /// The header carrying the payload, if any.
    pub payload_header: Option<String>,
}

impl JwtRule {
    /// Every header name this rule sets for the app: the client's own headers
    /// of these names must never reach it.
    pub fn output_headers(&self) -> impl Iterator<Item = &str> {
        self.claim_headers
            .iter()
            .map(|c| c.header.as_str())
            .chain(self.payload_header.as_deref())
    }
}

/// One RequestAuthentication, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuthentication {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `selector.matchLabels`; `None`: every workload of the namespace.
    pub selector: Option<BTreeMap<String, String>>,
    /// The rules.
    pub rules: Vec<JwtRule>,
    /// Where it was read from.
    pub origin: Origin,
}

impl RequestAuthentication {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks what the YAML reader could not (across fields). The error is the
    /// offending key's line within `text` (0-based) and `field: what is wrong`.
    pub fn compile(document: Document, origin: Origin, text: &str) -> Result<Self, (usize, String)> {
        if document.kind != Kind::RequestAuthentication {
            return Err((
                line_of(text, "kind"),
                "kind: expected RequestAuthentication".into(),
            ));
        }
        let spec = document.spec;
        if spec.target_ref.is_some() || spec.target_refs.is_some() {
            let key = if spec.target_ref.is_some() {
                "targetRef"
            } else {
                "targetRefs"
            };
            return Err((
                line_of(text, key),
                "spec.targetRef(s): zt selects workloads by spec.selector.matchLabels; Gateway API targets are not supported".into(),
            ));
        }
        let selector = spec
            .selector
            .map(|s| s.match_labels)
            .filter(|labels| !labels.is_empty());
        let mut rules = Vec::with_capacity(spec.jwt_rules.len());
        for (index, rule) in spec.jwt_rules.into_iter().enumerate() {
            let field = |name: &str| format!("spec.jwtRules[{index}].{name}");
            let at = |key: &str| rule_line(text, index, key);
            let jwks = match (rule.jwks_uri, rule.jwks) {
                (Some(uri), None) => JwksSource::Uri(uri.0),
                (None, Some(jwks)) => {
                    zt_identity::jwk::parse_jwk_set(&jwks)
                        .map_err(|e| (at("jwks"), format!("{}: {e}", field("jwks"))))
                        .and_then(|keys| match keys.is_empty() {
                            true => Err((at("jwks"), format!("{}: holds no signing key", field("jwks")))),
                            false => Ok(()),
                        })?;
                    JwksSource::Inline(jwks)
                }
                (Some(_), Some(_)) => {
                    return Err((
                        at("jwks"),
                        format!("{}: give jwksUri or jwks, not both", field("jwks")),
                    ));
                }
                (None, None) => {
                    return Err((
                        rule_line(text, index, "issuer"),
                        format!(
                            "{}: needs jwksUri or jwks (zt does not discover keys from the issuer's OpenID configuration)",
                            field("jwksUri")
                        ),
                    ));
                }
            };
            let mut locations: Vec<TokenLocation> = rule
                .from_headers
                .into_iter()
                .map(|h| TokenLocation::Header {
                    name: h.name.0,
                    prefix: h.prefix,
                })
                .chain(rule.from_params.into_iter().map(|p| TokenLocation::Param(p.0)))
                .chain(rule.from_cookies.into_iter().map(|c| TokenLocation::Cookie(c.0)))
                .collect();
            if locations.is_empty() {
                locations = TokenLocation::defaults();
            }
            let claim_headers: Vec<ClaimHeader> = rule
                .output_claim_to_headers
                .into_iter()
                .map(|c| ClaimHeader {
                    header: c.header.0,
                    claim: c.claim,
                })
                .collect();
            let payload_header = rule.output_payload_to_header.map(|h| h.0);
            let mut outputs: Vec<&str> = claim_headers.iter().map(|c| c.header.as_str()).collect();
            outputs.extend(payload_header.as_deref());
            outputs.sort_unstable();
            if let Some(pair) = outputs.windows(2).find(|w| w[0] == w[1]) {
                return Err((
                    at("outputClaimToHeaders"),
                    format!(
                        "{}: header {:?} is set twice",
                        field("outputClaimToHeaders"),
                        pair[0]
                    ),
                ));
            }
            let token_headers = locations.iter().filter_map(|l| match l {
                TokenLocation::Header { name, .. } => Some(name.as_str()),
                _ => None,
            });
            for name in token_headers {
                if outputs.contains(&name) {
                    return Err((
                        at("outputClaimToHeaders"),
                        format!(
                            "{}: header {name:?} also carries the token",
                            field("outputClaimToHeaders")
                        ),
                    ));
                }
            }
            rules.push(JwtRule {
                issuer: rule.issuer.0,
                audiences: rule.audiences.into_iter().map(|a| a.0).collect(),
                jwks,
                locations,
                forward_original_token: rule.forward_original_token,
                claim_headers,
                payload_header,
            });
        }
        Ok(Self {
            namespace: document.metadata.namespace.0,
            name: document.metadata.name.0,
            selector,
            rules,
            origin,
        })
    }

    /// Whether it selects a workload with these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|wanted| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// Whether `line` is the key `key` (possibly as a sequence item's first key).
fn is_key(line: &str, key: &str) -> bool {
    line.trim_start()
        .trim_start_matches("- ")
        .strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with(':'))
}

/// The line (0-based) of the first `key:` in `text`, else 0.
fn line_of(text: &str, key: &str) -> usize {
    text.lines().position(|line| is_key(line, key)).unwrap_or(0)
}

/// The line (0-based) of `key` within the `index`-th item of `jwtRules`, else
/// of that item, else of `jwtRules`, else 0.
fn rule_line(text: &str, index: usize, key: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|line| is_key(line, "jwtRules")) else {
        return 0;
    };
    let indent_of = |line: &str| line.len() - line.trim_start().len();
    let rules_indent = lines.get(start).map_or(0, |line| indent_of(line));
    let mut items = Vec::new();
    let mut item_indent = None;
    for (n, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = indent_of(line);
        let item = trimmed.starts_with('-');
        if indent < rules_indent || (indent == rules_indent && !item) {
            break;
        }
        if item && item_indent.is_none_or(|i| i == indent) {
            item_indent = Some(indent);
            items.push(n);
        }
    }
    let Some(&first) = items.get(index) else {
        return start;
    };
    let end = items.get(index + 1).copied().unwrap_or(lines.len());
    (first..end)
        .find(|&n| lines.get(n).is_some_and(|line| is_key(line, key)))
        .unwrap_or(first)
}

/// Names used twice: one line each, `file:line: metadata: …`.
pub fn conflicts(all: &[RequestAuthentication]) -> Vec<String> {
    let mut seen: BTreeMap<(&str, &str), &RequestAuthentication> = BTreeMap::new();
    let mut problems = Vec::new();
    for policy in all {
        if let Some(first) = seen.insert((&policy.namespace, &policy.name), policy) {
            problems.push(format!(
                "{}:{}: metadata: RequestAuthentication {} is already defined at {}:{}",
                policy.origin.file.display(),
                policy.origin.line,
                policy.id(),
                first.origin.file.display(),
                first.origin.line
            ));
        }
    }
    problems
}

/// Every RequestAuthentication of a set, selected per workload.
#[derive(Debug, Clone, Default)]
pub struct RequestAuthentications {
    /// In `namespace/name` order.
    all: Vec<Arc<RequestAuthentication>>,
    root_namespace: String,
}

impl RequestAuthentications {
    /// A set with `root_namespace` (normally [`crate::DEFAULT_ROOT_NAMESPACE`]).
    pub fn new(mut all: Vec<RequestAuthentication>, root_namespace: &str) -> Self {
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Self {
            all: all.into_iter().map(Arc::new).collect(),
            root_namespace: root_namespace.to_owned(),
        }
    }

    /// All of them, in `namespace/name` order.
    pub fn all(&self) -> &[Arc<RequestAuthentication>] {
        &self.all
    }

    /// Those that apply to one workload: of its namespace or the root
    /// namespace, selecting its labels (as AuthorizationPolicies are chosen).
    pub fn for_workload(&self, namespace: &str, labels: &BTreeMap<String, String>) -> WorkloadAuthentication {
        WorkloadAuthentication {
            policies: self
                .all
                .iter()
                .filter(|p| {
                    (p.namespace == namespace || p.namespace == self.root_namespace) && p.selects(labels)
                })
                .cloned()
                .collect(),
        }
    }
}

/// The RequestAuthentications of one workload.
#[derive(Debug, Clone, Default)]
pub struct WorkloadAuthentication {
    /// In `namespace/name` order.
    pub policies: Vec<Arc<RequestAuthentication>>,
}

impl WorkloadAuthentication {
    /// Every rule, with the policy it comes from.
    pub fn rules(&self) -> impl Iterator<Item = (&RequestAuthentication, &JwtRule)> {
        self.policies
            .iter()
            .flat_map(|p| p.rules.iter().map(move |r| (&**p, r)))
    }

    /// Whether no rule applies (authentication has nothing to do).
    pub fn is_empty(&self) -> bool {
        self.rules().next().is_none()
    }

    /// Every header name some rule sets for the app, lower case, without repeats.
    pub fn output_headers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rules()
            .flat_map(|(_, r)| r.output_headers().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Source, parse_all};

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn load(text: &str) -> Result<Vec<RequestAuthentication>, Vec<String>> {
        parse_all(&[Source {
            name: "ra.yaml".into(),
            text: text.into(),
        }])
        .map(|loaded| loaded.request_authentications)
        .map_err(|e| e.problems)
    }

    fn doc(namespace: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"
        )
    }

    #[test]
    fn a_full_document_loads_as_written() {
        let spec = format!(
            "  selector:\n    matchLabels: {{app: api}}\n  jwtRules:\n  - issuer: https://idp.example\n    audiences: [api, web]\n    jwks: '{JWKS}'\n    fromHeaders:\n    - name: X-Jwt\n      prefix: \"Token \"\n    fromParams: [tok]\n    fromCookies: [session]\n    forwardOriginalToken: true\n    outputClaimToHeaders:\n    - header: X-User\n      claim: sub\n    - header: x-team\n      claim: org.team\n    outputPayloadToHeader: x-jwt-payload\n  - issuer: other\n    jwksUri: https://other.example:8443/keys?v=1\n"
        );
        let all = load(&doc("shop", "jwt", &spec)).unwrap();
        let ra = &all[0];
        assert_eq!(ra.selector, Some(BTreeMap::from([("app".into(), "api".into())])));
        let first = &ra.rules[0];
        assert_eq!(first.audiences, ["api", "web"]);
        assert_eq!(first.jwks, JwksSource::Inline(JWKS.into()));
        assert_eq!(
            first.locations,
            [
                TokenLocation::Header {
                    name: "x-jwt".into(),
                    prefix: "Token ".into()
                },
                TokenLocation::Param("tok".into()),
                TokenLocation::Cookie("session".into()),
            ]
        );
        assert!(first.forward_original_token);
        assert_eq!(first.claim_headers[0].header, "x-user");
        assert_eq!(
            first.claim_headers[1].claim,
            ClaimPath(vec!["org".into(), "team".into()])
        );
        assert_eq!(
            first.output_headers().collect::<Vec<_>>(),
            ["x-user", "x-team", "x-jwt-payload"]
        );
        let second = &ra.rules[1];
        assert_eq!(
            second.jwks,
            JwksSource::Uri("https://other.example:8443/keys?v=1".into())
        );
        assert_eq!(second.locations, TokenLocation::defaults());
        assert!(!second.forward_original_token);
        // No spec: no rules, no effect.
        let empty = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: e, namespace: shop}\n";
        assert!(load(empty).unwrap()[0].rules.is_empty());
    }

    #[test]
    fn every_bad_field_is_named_with_its_line() {
        let rule = |extra: &str| {
            doc(
                "shop",
                "jwt",
                &format!("  jwtRules:\n  - issuer: https://idp.example\n{extra}"),
            )
        };
        let uri = "    jwksUri: https://idp.example/jwks\n";
        let cases: &[(String, &str, &str)] = &[
            (
                rule("    jwksUri: http://idp.example/jwks\n"),
                "ra.yaml:8",
                "https://",
            ),
            (rule("    jwksUri: https://\n"), "ra.yaml:8", "https://"),
            (
                rule("    jwks: '{\"keys\": 1}'\n"),
                "ra.yaml:9",
                "spec.jwtRules[0].jwks",
            ),
            (
                rule("    jwks: '{\"keys\": []}'\n"),
                "ra.yaml:9",
                "no signing key",
            ),
            (
                rule(&format!("{uri}    jwks: '{JWKS}'\n")),
                "ra.yaml:10",
                "not both",
            ),
            (rule(""), "ra.yaml:8", "needs jwksUri or jwks"),
            (rule(&format!("{uri}    bogus: 1\n")), "ra.yaml:10", "bogus"),
            (
                rule(&format!("{uri}    audiences: [\"\"]\n")),
                "ra.yaml:10",
                "empty",
            ),
            (
                rule(&format!("{uri}    fromHeaders:\n    - name: \"bad header\"\n")),
                "ra.yaml:11",
                "not an HTTP header name",
            ),
            (
                rule(&format!("{uri}    fromHeaders:\n    - prefix: x\n")),
                "ra.yaml:11",
                "name",
            ),
            (
                rule(&format!("{uri}    fromParams: [\"\"]\n")),
                "ra.yaml:10",
                "empty",
            ),
            (
                rule(&format!(
                    "{uri}    outputClaimToHeaders:\n    - header: host\n      claim: sub\n"
                )),
                "ra.yaml:11",
                "proxy owns",
            ),
            (
                rule(&format!(
                    "{uri}    outputClaimToHeaders:\n    - header: x-forwarded-client-cert\n      claim: sub\n"
                )),
                "ra.yaml:11",
                "proxy owns",
            ),
            (
                rule(&format!(
                    "{uri}    outputClaimToHeaders:\n    - header: x-a\n      claim: a..b\n"
                )),
                "ra.yaml:11",
                "claim name",
            ),
            (
                rule(&format!(
                    "{uri}    outputClaimToHeaders:\n    - header: x-a\n      claim: sub\n    outputPayloadToHeader: X-A\n"
                )),
                "ra.yaml:10",
                "set twice",
            ),
            (
                rule(&format!(
                    "{uri}    outputClaimToHeaders:\n    - header: authorization\n      claim: sub\n"
                )),
                "ra.yaml:10",
                "carries the token",
            ),
            (
                rule(&format!("{uri}    outputPayloadToHeader: \"a:b\"\n")),
                "ra.yaml:8",
                "not an HTTP header name",
            ),
            (
                rule(&format!("{uri}    forwardOriginalToken: maybe\n")),
                "ra.yaml:10",
                "forwardOriginalToken",
            ),
            (
                doc(
                    "shop",
                    "jwt",
                    "  jwtRules:\n  - audiences: [a]\n    jwksUri: https://a.example/k\n",
                ),
                "ra.yaml:8",
                "issuer",
            ),
            (
                doc("shop", "jwt", "  targetRef:\n    kind: Gateway\n    name: gw\n"),
                "ra.yaml:7",
                "targetRef",
            ),
            (doc("shop", "jwt", "  targetRefs: []\n"), "ra.yaml:7", "targetRef"),
            (doc("Shop", "jwt", "  jwtRules: []\n"), "ra.yaml:4", "Shop"),
        ];
        let mut wrong = Vec::new();
        for (text, at, what) in cases {
            let problems = load(text).expect_err(text);
            let got = problems.join("\n");
            if !(got.starts_with(&format!("{at}:")) && got.contains(what)) {
                wrong.push(format!("{:?}\n→ {got}", text.lines().skip(7).collect::<Vec<_>>()));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // A problem in the second rule is named at its line, not the first's.
        let two = doc(
            "shop",
            "jwt",
            &format!(
                "  jwtRules:\n  - issuer: a\n    jwks: '{JWKS}'\n  - issuer: b\n    jwksUri: https://b.example/k\n    jwks: '{JWKS}'\n"
            ),
        );
        let got = load(&two).unwrap_err().join("\n");
        assert!(
            got.starts_with("ra.yaml:12: spec.jwtRules[1].jwks: give jwksUri or jwks, not both"),
            "{got}"
        );
        let flow = doc("shop", "jwt", "  jwtRules: [{issuer: a}]\n");
        let got = load(&flow).unwrap_err().join("\n");
        assert!(
            got.starts_with("ra.yaml:7: spec.jwtRules[0].jwksUri: needs jwksUri or jwks"),
            "{got}"
        );
        // One name twice.
        let ok = doc("shop", "jwt", "  jwtRules: []\n");
        let got = load(&format!("{ok}---\n{ok}")).unwrap_err().join("\n");
        assert!(got.contains("already defined at ra.yaml:1"), "{got}");
    }

    #[test]
    fn selection_is_authorization_policys() {
        let spec =
            |labels: &str| format!("  {labels}jwtRules:\n  - issuer: i\n    jwksUri: https://i.example/k\n");
        let texts = [
            doc("zt-system", "mesh", &spec("")),
            doc(
                "zt-system",
                "mesh-api",
                &spec("selector: {matchLabels: {app: api}}\n  "),
            ),
            doc("shop", "ns", &spec("")),
            doc("shop", "api", &spec("selector: {matchLabels: {app: api}}\n  ")),
            doc("shop", "web", &spec("selector: {matchLabels: {app: web}}\n  ")),
            doc("bank", "other", &spec("")),
        ]
        .join("---\n");
        let set = RequestAuthentications::new(load(&texts).unwrap(), crate::DEFAULT_ROOT_NAMESPACE);
        let names = |ns: &str, app: &str| -> Vec<String> {
            let labels = BTreeMap::from([("app".to_owned(), app.to_owned())]);
            set.for_workload(ns, &labels)
                .policies
                .iter()
                .map(|p| p.id())
                .collect()
        };
        assert_eq!(
            names("shop", "api"),
            ["shop/api", "shop/ns", "zt-system/mesh", "zt-system/mesh-api"]
        );
        assert_eq!(names("shop", "db"), ["shop/ns", "zt-system/mesh"]);
        assert_eq!(
            names("bank", "api"),
            ["bank/other", "zt-system/mesh", "zt-system/mesh-api"]
        );
        assert!(
            RequestAuthentications::default()
                .for_workload("shop", &BTreeMap::new())
                .is_empty()
        );
    }

    #[test]
    fn claim_paths_follow_objects() {
        let claims = serde_json::json!({"sub": "a", "org": {"team": "red", "n": 1}});
        let claims = claims.as_object().unwrap();
        let path = |s: &str| ClaimPath::try_from(s.to_owned()).unwrap();
        assert_eq!(path("sub").find(claims), Some(&serde_json::json!("a")));
        assert_eq!(path("org.team").find(claims), Some(&serde_json::json!("red")));
        assert_eq!(path("sub.x").find(claims), None);
        assert_eq!(path("missing").find(claims), None);
    }
}
