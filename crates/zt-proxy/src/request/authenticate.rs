//! The authentication stage: the request's JWT, where the RequestAuthentications
//! in force look for it, verified as Istio does.
//!
//! - Headers a rule sets for the app (`outputClaimToHeaders`,
//!   `outputPayloadToHeader`) are first removed from the client's request in
//!   every spelling an app stack could read as the same name (any case, `_`
//!   for `-`), however many times they come.
//! - No token anywhere a rule looks: the request passes unauthenticated
//!   (`request.auth` absent), and a policy naming `requestPrincipals` denies it.
//! - A token: valid for some rule whose location it was found in, or the
//!   request is refused with 401 (`WWW-Authenticate: Bearer
//!   error="invalid_token"`); two different tokens are ambiguous: 401 too.
//! - Valid: unless the rule forwards it, the token is removed from where it
//!   was found; the rule's output headers are set from the verified token.

use http::Request;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use zt_authn::{Refused, Verified};
use zt_policy::request_authentication::TokenLocation;

use super::normalize::Admitted;
use crate::admin::{AuthnLabels, Metrics};
use crate::authz::authn::Rules;
use crate::refusal::Refusal;

/// Authenticates `request` by `rules`: `Ok(None)` without a token, the
/// verified token, or the refusal (401).
pub(crate) async fn check<B>(
    rules: &Rules,
    request: &mut Request<B>,
    head: &mut Admitted,
    metrics: &Metrics,
) -> Result<Option<Verified>, Refusal> {
    strip_output_headers(request.headers_mut(), &rules.output_headers);
    if rules.is_empty() {
        return Ok(None);
    }
    let outcome = authenticate(rules, request, head).await;
    let (result, reason) = match &outcome {
        Ok(None) => ("missing", ""),
        Ok(Some(_)) => ("valid", ""),
        Err(Refusal::Unauthenticated(reason)) => ("invalid", *reason),
        Err(_) => ("invalid", "other"),
    };
    metrics
        .request_authentication
        .get_or_create(&AuthnLabels { result, reason })
        .inc();
    outcome
}

async fn authenticate<B>(
    rules: &Rules,
    request: &mut Request<B>,
    head: &mut Admitted,
) -> Result<Option<Verified>, Refusal> {
    // Every (rule, location, token) found.
    let mut found: Vec<(usize, &TokenLocation, String)> = Vec::new();
    for (index, rule) in rules.rules.iter().enumerate() {
        for location in &rule.spec.locations {
            for token in tokens_at(request, head, location) {
                found.push((index, location, token));
            }
        }
    }
    let Some((_, _, token)) = found.first() else {
        return Ok(None);
    };
    let token = token.clone();
    if found.iter().any(|(_, _, other)| *other != token) {
        return Err(Refusal::Unauthenticated("multiple_tokens"));
    }
    let mut refused: Option<Refused> = None;
    let mut tried = Vec::new();
    for (index, _, _) in &found {
        if tried.contains(index) {
            continue;
        }
        tried.push(*index);
        let Some(rule) = rules.rules.get(*index) else {
            continue;
        };
        match rule.issuer.verify(&token).await {
            Ok(verified) => {
                let locations: Vec<&TokenLocation> = found
                    .iter()
                    .filter(|(i, _, _)| i == index)
                    .map(|(_, location, _)| *location)
                    .collect();
                if !rule.spec.forward_original_token {
                    for location in locations {
                        remove_token(request, head, location)?;
                    }
                }
                set_output_headers(request.headers_mut(), rule, &verified, &token);
                return Ok(Some(verified));
            }
            // The most telling reason: one from a rule of the token's issuer.
            Err(why) => match refused {
                Some(Refused::WrongIssuer) | None => refused = Some(why),
                Some(_) => {}
            },
        }
    }
    Err(Refusal::Unauthenticated(
        refused.map_or("invalid", |why| why.reason()),
    ))
}

/// The tokens `location` holds in `request`.
fn tokens_at<B>(request: &Request<B>, head: &Admitted, location: &TokenLocation) -> Vec<String> {
    match location {
        TokenLocation::Header { name, prefix } => request
            .headers()
            .get_all(name.as_str())
            .iter()
            .filter_map(|value| {
                let value = value.to_str().ok()?.trim();
                let rest = match value.get(..prefix.len()) {
                    Some(start) if start.eq_ignore_ascii_case(prefix) => value.get(prefix.len()..)?,
                    _ => return None,
                };
                let token = rest.trim();
                (!token.is_empty()).then(|| token.to_owned())
            })
            .collect(),
        TokenLocation::Param(param) => head
            .target
            .query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, value)| key == param && !value.is_empty())
            .map(|(_, value)| value.to_owned())
            .collect(),
        TokenLocation::Cookie(cookie) => request
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(key, value)| key == cookie && !value.is_empty())
            .map(|(_, value)| value.trim_matches('"').to_owned())
            .collect(),
    }
}

/// Removes the token at `location` from what the app receives.
fn remove_token<B>(
    request: &mut Request<B>,
    head: &mut Admitted,
    location: &TokenLocation,
) -> Result<(), Refusal> {
    match location {
        TokenLocation::Header { name, .. } => {
            request.headers_mut().remove(name.as_str());
        }
        TokenLocation::Param(param) => {
            let kept: Vec<&str> = head
                .target
                .query
                .as_deref()
                .unwrap_or_default()
                .split('&')
                .filter(|pair| pair.split_once('=').is_none_or(|(key, _)| key != param))
                .collect();
            let kept = kept.join("&");
            head.target.query = (!kept.is_empty()).then_some(kept);
            head.path_and_query = PathAndQuery::try_from(head.target.path_and_query())
                .map_err(|_| Refusal::Malformed("the target without its token".into()))?;
        }
        TokenLocation::Cookie(cookie) => {
            let values: Vec<String> = request
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(';'))
                .map(str::trim)
                .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(key, _)| key != cookie))
                .map(str::to_owned)
                .collect();
            request.headers_mut().remove(http::header::COOKIE);
            if !values.is_empty()
                && let Ok(value) = HeaderValue::from_str(&values.join("; "))
            {
                request.headers_mut().insert(http::header::COOKIE, value);
            }
        }
    }
    Ok(())
}

/// Removes every header whose name, as an app stack reads it (lower case,
/// `_` as `-`), is one of `names`.
fn strip_output_headers(headers: &mut http::HeaderMap, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let text = name.as_str();
            let spelled = text.replace('_', "-");
            names.contains(&spelled)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Sets the rule's output headers from the verified token.
fn set_output_headers(
    headers: &mut http::HeaderMap,
    rule: &crate::authz::authn::Rule,
    verified: &Verified,
    token: &str,
) {
    for output in &rule.spec.claim_headers {
        let Some(value) = output.claim.find(verified.claims()).and_then(claim_text) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(output.header.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    if let Some(header) = &rule.spec.payload_header
        && let Some(payload) = token.split('.').nth(1)
        && let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.as_bytes()),
            HeaderValue::from_str(payload),
        )
    {
        headers.insert(name, value);
    }
}

/// A claim as a header value: strings as they are, numbers and booleans
/// written out, arrays of those joined with `,`; objects are not copied.
fn claim_text(value: &serde_json::Value) -> Option<String> {
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
    use super::*;

    #[test]
    fn output_headers_are_stripped_in_every_spelling() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("X-User", "a"),
            ("x-user", "b"),
            ("x_user", "c"),
            ("X_USER", "d"),
            ("x-user-agent", "kept"),
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        strip_output_headers(&mut headers, &["x-user".into()]);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-user-agent"));
    }

    #[test]
    fn claims_as_header_values() {
        use serde_json::json;
        assert_eq!(claim_text(&json!("a")), Some("a".into()));
        assert_eq!(claim_text(&json!(3)), Some("3".into()));
        assert_eq!(claim_text(&json!(["a", "b", true])), Some("a,b,true".into()));
        assert_eq!(claim_text(&json!({"a": 1})), None);
        assert_eq!(claim_text(&json!([{"a": 1}])), None);
    }
}
