//! A request authenticated by RequestAuthentication rules, as Istio does it —
//! the one implementation behind `zt proxy` and `zt policy test|eval`:
//!
//! - the token is looked for where each rule says ([`TokenLocation`]);
//! - none anywhere: [`Outcome::Missing`] (the request goes on unauthenticated);
//! - two different tokens: ambiguous, [`Outcome::Invalid`];
//! - one token: valid for some rule whose location it was found in
//!   ([`Outcome::Valid`]), else [`Outcome::Invalid`] with the most telling reason.

use zt_policy::request_authentication::{JwtRule, TokenLocation};

use crate::{Issuer, Keys, Refused, Verified};

/// Where a request keeps what tokens are taken from.
pub trait Carrier {
    /// Every value of the header `name` (lower case), as sent.
    fn header_values(&self, name: &str) -> Vec<&str>;
    /// The query string, without `?`.
    fn query(&self) -> Option<&str>;
}

/// One `jwtRules` entry with its issuer's keys.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as written.
    pub spec: JwtRule,
    /// Its issuer and keys.
    pub issuer: Issuer,
}

impl Rule {
    /// The rule `spec`, verified with `keys`.
    pub fn new(spec: JwtRule, keys: Keys) -> Self {
        Self {
            issuer: Issuer::new(spec.issuer.clone(), spec.audiences.clone(), keys),
            spec,
        }
    }

    /// The headers the rule sets for the app from a verified token: each
    /// `outputClaimToHeaders` claim present (strings as they are, numbers and
    /// booleans written out, arrays of those joined with `,`), and
    /// `outputPayloadToHeader` (the token's base64url payload).
    pub fn output_headers(&self, verified: &Verified, token: &str) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .spec
            .claim_headers
            .iter()
            .filter_map(|output| {
                let value = output.claim.find(verified.claims()).and_then(claim_text)?;
                Some((output.header.clone(), value))
            })
            .collect();
        if let Some(header) = &self.spec.payload_header
            && let Some(payload) = token.split('.').nth(1)
        {
            headers.push((header.clone(), payload.to_owned()));
        }
        headers
    }
}

/// What authentication found.
#[derive(Debug)]
pub enum Outcome {
    /// No token where any rule looks.
    Missing,
    /// A token some rule verified.
    Valid {
        /// The index of that rule.
        rule: usize,
        /// The token, verified.
        verified: Verified,
        /// The token as sent.
        token: String,
        /// Where that rule found it (to remove it unless the rule forwards it).
        locations: Vec<TokenLocation>,
    },
    /// A token no rule that found it accepts, or two tokens: the reason label
    /// ([`Refused::reason`], or `multiple_tokens`).
    Invalid(&'static str),
}

/// Authenticates the request `carrier` holds by `rules` (verified at `now`,
/// Unix seconds; `None`: the clock).
pub async fn authenticate(rules: &[Rule], carrier: &impl Carrier, now: Option<u64>) -> Outcome {
    let mut found: Vec<(usize, &TokenLocation, String)> = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        for location in &rule.spec.locations {
            for token in tokens_at(carrier, location) {
                found.push((index, location, token));
            }
        }
    }
    let Some((_, _, token)) = found.first() else {
        return Outcome::Missing;
    };
    let token = token.clone();
    if found.iter().any(|(_, _, other)| *other != token) {
        return Outcome::Invalid("multiple_tokens");
    }
    let mut refused: Option<Refused> = None;
    let mut tried: Vec<usize> = Vec::new();
    for (index, _, _) in &found {
        if tried.contains(index) {
            continue;
        }
        tried.push(*index);
        let Some(rule) = rules.get(*index) else {
            continue;
        };
        let result = match now {
            Some(now) => rule.issuer.verify_at(&token, now).await,
            None => rule.issuer.verify(&token).await,
        };
        match result {
            Ok(verified) => {
                let locations = found
                    .iter()
                    .filter(|(i, _, _)| i == index)
                    .map(|(_, location, _)| (*location).clone())
                    .collect();
                return Outcome::Valid {
                    rule: *index,
                    verified,
                    token,
                    locations,
                };
            }
            // The most telling reason: one from a rule of the token's issuer.
            Err(why) => match refused {
                Some(Refused::WrongIssuer) | None => refused = Some(why),
                Some(_) => {}
            },
        }
    }
    Outcome::Invalid(refused.map_or("invalid", |why| why.reason()))
}

/// The tokens `location` holds: a header's values that start with its prefix
/// (compared without case), a query parameter's values, a cookie's values.
pub fn tokens_at(carrier: &impl Carrier, location: &TokenLocation) -> Vec<String> {
    match location {
        TokenLocation::Header { name, prefix } => carrier
            .header_values(name)
            .into_iter()
            .filter_map(|value| {
                let value = value.trim();
                let rest = match value.get(..prefix.len()) {
                    Some(start) if start.eq_ignore_ascii_case(prefix) => value.get(prefix.len()..)?,
                    _ => return None,
                };
                let token = rest.trim();
                (!token.is_empty()).then(|| token.to_owned())
            })
            .collect(),
        TokenLocation::Param(param) => carrier
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, value)| key == param && !value.is_empty())
            .map(|(_, value)| value.to_owned())
            .collect(),
        TokenLocation::Cookie(cookie) => carrier
            .header_values("cookie")
            .into_iter()
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(key, value)| key == cookie && !value.is_empty())
            .map(|(_, value)| value.trim_matches('"').to_owned())
            .collect(),
    }
}

/// A request in policies' JSON form (`zt policy test` and `eval` cases)
/// authenticated as zt proxy authenticates a live one, and rewritten as the
/// proxy rewrites it: the client's copies of `outputs` (the rules' output
/// headers, compared in lower case with `_` as `-`) removed, then, for a valid
/// token, the token removed from where it was found unless the rule forwards
/// it, the output headers set, and `auth` filled in. `Invalid` leaves `http`
/// as it was; the caller refuses it.
pub async fn authenticate_http(
    rules: &[Rule],
    outputs: &[String],
    http: &mut zt_policy::request::Http,
) -> Outcome {
    struct Carried<'a>(&'a zt_policy::request::Http);
    impl Carrier for Carried<'_> {
        fn header_values(&self, name: &str) -> Vec<&str> {
            self.0
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        }
        fn query(&self) -> Option<&str> {
            self.0.path.split_once('?').map(|(_, query)| query)
        }
    }

    http.headers
        .retain(|name, _| !outputs.contains(&name.to_ascii_lowercase().replace('_', "-")));
    let outcome = authenticate(rules, &Carried(http), None).await;
    if let Outcome::Valid {
        rule,
        verified,
        token,
        locations,
    } = &outcome
        && let Some(rule) = rules.get(*rule)
    {
        if !rule.spec.forward_original_token {
            for location in locations {
                match location {
                    TokenLocation::Header { name, .. } => {
                        http.headers.retain(|n, _| !n.eq_ignore_ascii_case(name))
                    }
                    TokenLocation::Param(param) => {
                        if let Some((path, query)) = http.path.split_once('?') {
                            let kept: Vec<&str> = query
                                .split('&')
                                .filter(|pair| pair.split_once('=').is_none_or(|(key, _)| key != param))
                                .collect();
                            http.path = match kept.is_empty() {
                                true => path.to_owned(),
                                false => format!("{path}?{}", kept.join("&")),
                            };
                        }
                    }
                    TokenLocation::Cookie(_) => {}
                }
            }
        }
        for (name, value) in rule.output_headers(verified, token) {
            http.headers.insert(name, value);
        }
        http.auth = Some(verified.to_auth());
    }
    outcome
}

/// A claim as a header value: strings as they are, numbers and booleans
/// written out, arrays of those joined with `,`; objects are not copied.
pub fn claim_text(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(_) | Value::Object(_) | Value::Null => None,
                other => claim_text(other),
            })
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(",")),
        Value::Object(_) | Value::Null => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use zt_identity::jwt::sign_jws;
    use zt_policy::request_authentication::{ClaimHeader, ClaimPath, JwksSource};

    use super::*;
    use crate::tests::{ISS, NOW, claims, jwks, signer};

    struct Req {
        headers: Vec<(&'static str, String)>,
        query: Option<String>,
    }

    impl Carrier for Req {
        fn header_values(&self, name: &str) -> Vec<&str> {
            self.headers
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        }
        fn query(&self) -> Option<&str> {
            self.query.as_deref()
        }
    }

    fn rule(iss: &str, jwks_json: &str, locations: Vec<TokenLocation>) -> Rule {
        let spec = JwtRule {
            issuer: iss.into(),
            audiences: vec![],
            jwks: JwksSource::Inline(jwks_json.into()),
            locations,
            forward_original_token: false,
            claim_headers: vec![ClaimHeader {
                header: "x-groups".into(),
                claim: ClaimPath(vec!["groups".into()]),
            }],
            payload_header: Some("x-payload".into()),
        };
        Rule::new(spec, Keys::inline(jwks_json).unwrap())
    }

    #[tokio::test]
    async fn istio_outcomes() {
        let (a, b) = (signer(), signer());
        let token_a = sign_jws(&a, "JWT", &claims()).unwrap();
        let mut other = claims();
        other["iss"] = json!("https://other.example");
        let token_b = sign_jws(&b, "JWT", &other).unwrap();
        let rules = [
            rule(ISS, &jwks(&[&a]), TokenLocation::defaults()),
            rule("https://other.example", &jwks(&[&b]), TokenLocation::defaults()),
        ];
        let req = |headers: Vec<(&'static str, String)>, query: Option<&str>| Req {
            headers,
            query: query.map(str::to_owned),
        };
        let outcome = |r: Req| {
            let rules = &rules;
            async move { authenticate(rules, &r, Some(NOW)).await }
        };
        assert!(matches!(outcome(req(vec![], None)).await, Outcome::Missing));
        // Another scheme is no token.
        assert!(matches!(
            outcome(req(vec![("authorization", "Basic eDp5".into())], None)).await,
            Outcome::Missing
        ));
        // Either issuer's token, by either rule, in either default location.
        match outcome(req(vec![("authorization", format!("bearer {token_b}"))], None)).await {
            Outcome::Valid {
                rule: 1,
                verified,
                token,
                locations,
            } => {
                assert_eq!(verified.principal(), "https://other.example/alice");
                assert_eq!(token, token_b);
                assert_eq!(locations, [TokenLocation::defaults()[0].clone()]);
                let headers = rules[1].output_headers(&verified, &token);
                assert_eq!(headers[0], ("x-groups".to_owned(), "dev".to_owned()));
                assert_eq!(headers[1].0, "x-payload");
            }
            other => panic!("{other:?}"),
        }
        let query = format!("x=1&access_token={token_a}");
        assert!(matches!(
            outcome(req(vec![], Some(&query))).await,
            Outcome::Valid { rule: 0, .. }
        ));
        // The same token twice is one token; two tokens are ambiguous.
        let both = req(vec![("authorization", format!("Bearer {token_a}"))], Some(&query));
        assert!(matches!(outcome(both).await, Outcome::Valid { .. }));
        let two = req(vec![("authorization", format!("Bearer {token_b}"))], Some(&query));
        assert!(matches!(outcome(two).await, Outcome::Invalid("multiple_tokens")));
        // Invalid for every rule: the reason of the rule of its issuer.
        let expired = {
            let mut c = claims();
            c["exp"] = json!(NOW - 3600);
            sign_jws(&a, "JWT", &c).unwrap()
        };
        let r = req(vec![("authorization", format!("Bearer {expired}"))], None);
        assert!(matches!(outcome(r).await, Outcome::Invalid("expired")));
        // A cookie location.
        let cookie_rule = [rule(
            ISS,
            &jwks(&[&a]),
            vec![TokenLocation::Cookie("session".into())],
        )];
        let r = req(vec![("cookie", format!("a=b; session={token_a}"))], None);
        assert!(matches!(
            authenticate(&cookie_rule, &r, Some(NOW)).await,
            Outcome::Valid { .. }
        ));
    }

    #[test]
    fn claims_as_header_values() {
        assert_eq!(claim_text(&json!("a")), Some("a".into()));
        assert_eq!(claim_text(&json!(3)), Some("3".into()));
        assert_eq!(claim_text(&json!(["a", "b", true])), Some("a,b,true".into()));
        assert_eq!(claim_text(&json!({"a": 1})), None);
        assert_eq!(claim_text(&json!([{"a": 1}])), None);
    }
}
