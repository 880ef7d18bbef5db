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
use zt_authn::Verified;
use zt_authn::request::Outcome;
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
    let carrier = Carried {
        request: &*request,
        head: &*head,
    };
    match zt_authn::request::authenticate(&rules.rules, &carrier, None).await {
        Outcome::Missing => Ok(None),
        Outcome::Invalid(reason) => Err(Refusal::Unauthenticated(reason)),
        Outcome::Valid {
            rule,
            verified,
            token,
            locations,
        } => {
            let Some(rule) = rules.rules.get(rule) else {
                return Err(Refusal::Unauthenticated("invalid"));
            };
            if !rule.spec.forward_original_token {
                for location in &locations {
                    remove_token(request, head, location)?;
                }
            }
            for (name, value) in rule.output_headers(&verified, &token) {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    request.headers_mut().insert(name, value);
                }
            }
            Ok(Some(verified))
        }
    }
}

/// The request as zt-authn reads it: its headers, and the query of its head.
struct Carried<'a, B> {
    request: &'a Request<B>,
    head: &'a Admitted,
}

impl<B> zt_authn::request::Carrier for Carried<'_, B> {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect()
    }

    fn query(&self) -> Option<&str> {
        self.head.target.query.as_deref()
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
}
